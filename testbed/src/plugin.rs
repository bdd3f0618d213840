//! The wasm plugin artifact for end-to-end tests: built once per process with
//! `scripts/build-wasm.sh` into a private target dir (`<target>/testbed-wasm`, so the build never
//! waits on the lock of the `cargo test` that runs us), or taken from `TRANSPARENT_CACHE_WASM`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static ARTIFACT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Path of the plugin (`filter_wasm.wasm`), building it the first time in this process.
pub fn wasm_artifact() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TRANSPARENT_CACHE_WASM") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("TRANSPARENT_CACHE_WASM={} does not exist", p.display());
        }
        return Ok(p);
    }
    let mut cached = ARTIFACT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cached.as_ref() {
        return Ok(p.clone());
    }
    let path = build(&private_target_dir()?)?;
    *cached = Some(path.clone());
    Ok(path)
}

/// `<target>/testbed-wasm`, `<target>` found from the running executable
/// (`<target>/<profile>/deps/<test>` or `<target>/<profile>/<bin>`).
fn private_target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().context("exe has no parent")?.to_path_buf();
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.pop();
    }
    let target = dir.parent().context("no target dir")?;
    Ok(target.join("testbed-wasm"))
}

/// Runs `scripts/build-wasm.sh --quiet` with `CARGO_TARGET_DIR=target_dir`; returns the artifact.
pub fn build(target_dir: &Path) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-wasm.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--quiet")
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.is_file() {
        bail!("build-wasm.sh printed {path:?}, which is not a file");
    }
    Ok(path)
}
