//! What the wasm VM, the sidecar hop and body buffering cost, measured against Envoy without the
//! filter. See `bench/README.md` for the commands, the results and what they mean.
//!
//! - [`guest`]: the engine compiled to wasm32 (crate `bench-guest`) run in-process under wasmtime;
//! - [`servers`]: a lean upstream and backend (answers fixed in advance, nothing stored), so the
//!   numbers measure Envoy and the filter rather than the testbed's recording servers;
//! - [`hosts`]: the setups (no filter, the filter's hosts) as testbed [`testbed::Shape`]s, each run
//!   in a real Envoy;
//! - [`load`]: a fixed-concurrency load driver with HDR histograms and `/proc` readings;
//! - [`report`]: machine facts, the tables written into `bench/README.md`, and the plot.

pub mod guest;
pub mod hosts;
pub mod load;
pub mod plot;
pub mod report;
pub mod servers;

pub use bench_guest::{body, hit_answer, SIZES};

/// True when `BENCH_SMOKE` is set (and not `0`): CI's seconds-long runs that only prove the benches
/// still work; nothing is written to `bench/README.md`.
pub fn smoke() -> bool {
    std::env::var("BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Which way a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Lookup 404, upstream 200, record sent.
    Miss,
    /// Lookup 200: the recorded response is served, the upstream is not contacted.
    Hit,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Miss => "miss",
            Path::Hit => "hit",
        }
    }
}

/// A body size for humans: `0 B`, `1 KiB`, `64 KiB`, `1 MiB`.
pub fn size_name(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

/// The cargo target directory the running executable was built in
/// (`<target>/<profile>/deps/<name>-<hash>` or `<target>/<profile>/<name>`).
pub fn target_dir() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().context("exe has no parent")?.to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir.parent().context("no target dir")?.to_path_buf())
}

/// The repository root (this crate's parent).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

/// Makes glibc's malloc keep freed memory the way Envoy's tcmalloc does (no trimming of the heap
/// top, no fresh `mmap` per large buffer), so the engine bench times the engine rather than the
/// kernel re-faulting the same pages on every megabyte-sized request. No-op elsewhere.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only tunes the allocator; called before the benches allocate much.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        }
    }
}
