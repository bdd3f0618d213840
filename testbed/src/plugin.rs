//! The wasm plugin artifact for end-to-end tests: built once per process with
//! `scripts/build-wasm.sh` into a private target dir (`<target>/testbed-wasm`, so the build never
//! waits on the lock of the `cargo test` that runs us), or taken from `TRANSPARENT_CACHE_WASM`.

use crate::artifact::{private_target_dir, script_file, Artifact};
use anyhow::Result;
use std::path::{Path, PathBuf};

static ARTIFACT: Artifact = Artifact::new("TRANSPARENT_CACHE_WASM");

/// Path of the plugin (`filter_wasm.wasm`), building it the first time in this process.
pub fn wasm_artifact() -> Result<PathBuf> {
    ARTIFACT.file(|| build(&private_target_dir("testbed-wasm")?))
}

/// Runs `scripts/build-wasm.sh --quiet` with `CARGO_TARGET_DIR=target_dir`; returns the artifact.
pub fn build(target_dir: &Path) -> Result<PathBuf> {
    script_file(
        "build-wasm.sh",
        &["--quiet"],
        &[("CARGO_TARGET_DIR", target_dir)],
    )
}
