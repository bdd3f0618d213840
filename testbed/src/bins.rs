//! Finding the testbed's own binaries (`demo-upstream`, `fake-backend`) from
//! any test, building them with cargo when they are not there yet.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
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

/// `(target dir, profile dir name)` from the current executable, which cargo
/// places at `<target>/<profile>/deps/<test>-<hash>` or `<target>/<profile>/<bin>`.
fn target_and_profile() -> Result<(PathBuf, String)> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().context("exe has no parent")?.to_path_buf();
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.pop();
    }
    let profile = dir
        .file_name()
        .context("no profile dir")?
        .to_string_lossy()
        .into_owned();
    let target = dir.parent().context("no target dir")?.to_path_buf();
    Ok((target, profile))
}

fn build(target_dir: &Path, profile: &str) -> Result<()> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["-p", "testbed", "--bins", "--quiet", "--target-dir"])
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
