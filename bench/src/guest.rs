//! The engine as a wasm32 module (crate `bench-guest`) under wasmtime with Cranelift: the closest
//! embeddable runtime to Envoy's V8. Inputs are copied into the VM's memory and outputs out of it,
//! as Envoy does for a proxy-wasm plugin.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use wasmtime::{Instance, Memory, Module, Store, TypedFunc};

fn w<T>(r: wasmtime::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow!("{e:?}"))
}

/// Builds `bench-guest` for wasm32 with the plugin's own profile (`wasm-release`: size-optimized,
/// LTO, abort on panic), into `<target>/testbed-wasm` (where the testbed builds the plugin, so
/// filter-core's wasm build is shared, and never behind the lock of the `cargo bench` that runs
/// us); `BENCH_GUEST_WASM` names a prebuilt module instead.
pub fn build() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BENCH_GUEST_WASM") {
        return Ok(PathBuf::from(p));
    }
    let target = crate::target_dir()?.join("testbed-wasm");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = crate::repo_root().join("Cargo.toml");
    let out = Command::new(cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args([
            "-p",
            "bench-guest",
            "--quiet",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .args(["--profile", "wasm-release", "--target-dir"])
        .arg(&target)
        .output()
        .context("run cargo build -p bench-guest")?;
    if !out.status.success() {
        bail!(
            "building bench-guest for wasm32 failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = target.join("wasm32-unknown-unknown/wasm-release/bench_guest.wasm");
    if !path.is_file() {
        bail!("{} is missing after the build", path.display());
    }
    Ok(path)
}

/// One instance of the guest: a [`bench_guest::Session`] inside wasmtime.
pub struct WasmSession {
    store: Store<()>,
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    request: TypedFunc<(u32, u32), u64>,
    answer: TypedFunc<(u32, u32, u32), u64>,
    response: TypedFunc<(u32, u32), u64>,
}

impl WasmSession {
    /// Compiles the module at `path` with Cranelift and instantiates it.
    pub fn load(path: &Path) -> Result<WasmSession> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let engine = wasmtime::Engine::default();
        let module = w(Module::new(&engine, &bytes))?;
        let mut store = Store::new(&engine, ());
        let instance = w(Instance::new(&mut store, &module, &[]))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .context("the guest exports no memory")?;
        Ok(WasmSession {
            alloc: w(instance.get_typed_func(&mut store, "guest_alloc"))?,
            request: w(instance.get_typed_func(&mut store, "guest_request"))?,
            answer: w(instance.get_typed_func(&mut store, "guest_answer"))?,
            response: w(instance.get_typed_func(&mut store, "guest_response"))?,
            memory,
            store,
        })
    }

    /// Copies `data` into guest memory (what `proxy_get_buffer_bytes` does).
    fn copy_in(&mut self, data: &[u8]) -> Result<(u32, u32)> {
        let len = u32::try_from(data.len())?;
        if len == 0 {
            return Ok((0, 0));
        }
        let ptr = w(self.alloc.call(&mut self.store, len))?;
        self.memory
            .write(&mut self.store, ptr as usize, data)
            .map_err(|e| anyhow!("{e}"))?;
        Ok((ptr, len))
    }

    /// Copies a step's output out of guest memory (what a callout or a local reply does).
    fn copy_out(&self, packed: u64) -> Result<Vec<u8>> {
        let ptr = (packed >> 32) as usize;
        let len = (packed & 0xffff_ffff) as usize;
        self.memory
            .data(&self.store)
            .get(ptr..ptr + len)
            .map(<[u8]>::to_vec)
            .context("guest output out of bounds")
    }

    /// [`bench_guest::Session::request`] in the VM.
    pub fn request(&mut self, body: &[u8]) -> Result<Vec<u8>> {
        let (p, n) = self.copy_in(body)?;
        let out = w(self.request.call(&mut self.store, (p, n)))?;
        self.copy_out(out)
    }

    /// [`bench_guest::Session::answer`] in the VM.
    pub fn answer(&mut self, status: u16, answer: &[u8]) -> Result<Vec<u8>> {
        let (p, n) = self.copy_in(answer)?;
        let out = w(self.answer.call(&mut self.store, (u32::from(status), p, n)))?;
        self.copy_out(out)
    }

    /// [`bench_guest::Session::response`] in the VM.
    pub fn response(&mut self, body: &[u8]) -> Result<Vec<u8>> {
        let (p, n) = self.copy_in(body)?;
        let out = w(self.response.call(&mut self.store, (p, n)))?;
        self.copy_out(out)
    }

    /// The guest's linear memory size in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.memory.data_size(&self.store)
    }
}
