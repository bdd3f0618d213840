//! Finding the testbed's own binaries (`demo-upstream`, `fake-backend`) from
//! any test, building them with cargo when they are not there yet.

use crate::artifact::{cargo_build, target_and_profile};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Path of testbed binary `name`.
///
/// Order: env `TESTBED_BIN_DIR/<name>`; runtime env `CARGO_BIN_EXE_<name>`;
/// next to the current test executable's profile dir (`target/<profile>/`,
/// where cargo puts them for this crate's own tests); the private build dir
/// `target/testbed-bins/<profile>/`. If none exists, runs
/// `cargo build -p testbed --bins` into that private dir (a separate target
/// dir, so it never waits on the lock of the `cargo test` that runs us).
pub fn locate(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TESTBED_BIN_DIR") {
        let p = Path::new(&dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
        bail!("TESTBED_BIN_DIR is set but {} does not exist", p.display());
    }
    if let Some(p) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    let (target_dir, profile) = target_and_profile()?;
    let beside = target_dir.join(&profile).join(name);
    if beside.is_file() {
        return Ok(beside);
    }
    let private = target_dir.join("testbed-bins");
    let built = private.join(&profile).join(name);
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !built.is_file() {
        build(&private, &profile)?;
    }
    if !built.is_file() {
        bail!("cargo build succeeded but {} is missing", built.display());
    }
    Ok(built)
}

/// Rebuilds the testbed binaries into the private dir (useful in a test
/// harness set-up when the testbed sources changed).
pub fn build_bins() -> Result<PathBuf> {
    let (target_dir, profile) = target_and_profile()?;
    let private = target_dir.join("testbed-bins");
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    build(&private, &profile)?;
    Ok(private.join(profile))
}

fn build(target_dir: &Path, profile: &str) -> Result<()> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut args = vec!["-p", "testbed", "--bins"];
    match profile {
        "debug" => {}
        "release" => args.push("--release"),
        other => args.extend(["--profile", other]),
    }
    cargo_build(&manifest, &args, target_dir)
}
