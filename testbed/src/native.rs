//! The native filter (`filter-native`, an Envoy dynamic module) for end-to-end tests: the shared
//! object is built once per process with `cargo build -p filter-native` into a private target dir
//! (`<target>/testbed-native`, so the build never waits on the lock of the `cargo test` that runs
//! us), or taken from `TRANSPARENT_CACHE_NATIVE_DIR` (a folder holding `libtransparent_cache.so`).

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The environment variable Envoy 1.40 reads to find `lib<name>.so` for
/// `dynamic_module_config.name`.
pub const SEARCH_PATH_VAR: &str = "ENVOY_DYNAMIC_MODULES_SEARCH_PATH";
/// `dynamic_module_config.name` (the file is `lib<name>.so`).
pub const MODULE_NAME: &str = "transparent_cache";
/// `dynamic_module_config.metrics_namespace`: the filter's counters are `<namespace>.<name>`.
pub const METRICS_NAMESPACE: &str = "transparent_cache";
/// What Envoy logs when the module returns the ABI version Envoy was built with; any other
/// version only gets a warning, so tests assert this line to notice an ABI change.
pub const ABI_MATCHED_LOG: &str = "Dynamic module ABI version v0.2.0 matched.";

static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The folder holding `libtransparent_cache.so`, building it the first time in this process.
pub fn module_dir() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TRANSPARENT_CACHE_NATIVE_DIR") {
        let p = PathBuf::from(p);
        if !p.join(format!("lib{MODULE_NAME}.so")).is_file() {
            bail!(
                "TRANSPARENT_CACHE_NATIVE_DIR={} holds no lib{MODULE_NAME}.so",
                p.display()
            );
        }
        return Ok(p);
    }
    let mut cached = DIR.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cached.as_ref() {
        return Ok(p.clone());
    }
    let dir = build(&private_target_dir()?)?;
    *cached = Some(dir.clone());
    Ok(dir)
}

/// `<target>/testbed-native`, `<target>` found from the running executable.
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
    Ok(target.join("testbed-native"))
}

/// `cargo build -p filter-native` (dev profile) into `target_dir`; returns the folder of the
/// shared object.
pub fn build(target_dir: &Path) -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "-p", "filter-native", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .context("run cargo build -p filter-native")?;
    if !out.status.success() {
        bail!(
            "cargo build -p filter-native failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = target_dir.join("debug");
    if !dir.join(format!("lib{MODULE_NAME}.so")).is_file() {
        bail!("no lib{MODULE_NAME}.so in {}", dir.display());
    }
    Ok(dir)
}

/// The HTTP filter snippet (one YAML mapping at column 0) running the module with `config_json`.
pub fn http_filter(config_json: &str) -> Result<String> {
    Ok(format!(
        r#"name: envoy.filters.http.dynamic_modules
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
  dynamic_module_config:
    name: {MODULE_NAME}
    metrics_namespace: {METRICS_NAMESPACE}
  filter_name: {MODULE_NAME}
  filter_config:
    "@type": type.googleapis.com/google.protobuf.StringValue
    value: {value}
"#,
        value = serde_json::to_string(config_json)?,
    ))
}

/// The module's counters from Envoy stats (`transparent_cache.<name>`), by engine counter name.
pub fn counters(stats: &HashMap<String, u64>) -> BTreeMap<String, u64> {
    let prefix = format!("{METRICS_NAMESPACE}.");
    stats
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|n| (n.to_string(), *v)))
        .collect()
}
