//! What the testbed runs but does not ship (the wasm plugin, the native module, the sidecar, its
//! own binaries, Envoy): taken from an environment override, else built or fetched once per
//! process, with cargo builds going to a private target dir next to the running executable's
//! (`<target>/testbed-*`, so a build never waits on the lock of the `cargo test` that runs us).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// A path found once per process, or taken from an environment variable.
pub(crate) struct Artifact {
    /// The override: when set, its value is used (and checked) instead of `find`.
    env: &'static str,
    cached: Mutex<Option<PathBuf>>,
}

impl Artifact {
    pub(crate) const fn new(env: &'static str) -> Artifact {
        Artifact {
            env,
            cached: Mutex::new(None),
        }
    }

    /// `$env` if set (`check` says why it is not usable), else what `find` returned the first
    /// time it succeeded in this process.
    pub(crate) fn get(
        &self,
        check: impl FnOnce(&Path) -> Result<()>,
        find: impl FnOnce() -> Result<PathBuf>,
    ) -> Result<PathBuf> {
        if let Some(p) = std::env::var_os(self.env) {
            let p = PathBuf::from(p);
            check(&p)?;
            return Ok(p);
        }
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cached.as_ref() {
            return Ok(p.clone());
        }
        let path = find()?;
        *cached = Some(path.clone());
        Ok(path)
    }

    /// [`Artifact::get`] for a file: `$env` must name an existing file.
    pub(crate) fn file(&self, find: impl FnOnce() -> Result<PathBuf>) -> Result<PathBuf> {
        let env = self.env;
        self.get(
            |p| {
                if !p.is_file() {
                    bail!("{env}={} does not exist", p.display());
                }
                Ok(())
            },
            find,
        )
    }
}

/// `(target dir, profile dir name)` from the current executable, which cargo places at
/// `<target>/<profile>/deps/<test>-<hash>` or `<target>/<profile>/<bin>`.
pub(crate) fn target_and_profile() -> Result<(PathBuf, String)> {
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

/// `<target>/<name>`, `<target>` found from the running executable.
pub(crate) fn private_target_dir(name: &str) -> Result<PathBuf> {
    let (target, _) = target_and_profile()?;
    Ok(target.join(name))
}

/// The workspace's `Cargo.toml`.
pub(crate) fn workspace_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml")
}

/// `cargo build --manifest-path <manifest> <args> --quiet --target-dir <target_dir>` (cargo from
/// `$CARGO`, else `cargo`).
pub(crate) fn cargo_build(manifest: &Path, args: &[&str], target_dir: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(manifest)
        .args(args)
        .arg("--quiet")
        .arg("--target-dir")
        .arg(target_dir);
    let what = format!("{cmd:?}");
    run(&mut cmd, &what)?;
    Ok(())
}

/// Runs `cmd`; an error names it `what` and carries its stderr when it fails.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs `bash scripts/<name> <args>` of the workspace with `env`; the script prints the path of
/// a file, which is returned.
pub(crate) fn script_file(name: &str, args: &[&str], env: &[(&str, &Path)]) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let mut cmd = Command::new("bash");
    cmd.arg(&script).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, &script.display().to_string())?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.is_file() {
        bail!("{name} printed {path:?}, which is not a file");
    }
    Ok(path)
}
