//! The native filter (`filter-native`, an Envoy dynamic module) for end-to-end tests: the shared
//! object is built once per process with `cargo build -p filter-native` into a private target dir
//! (`<target>/testbed-native`, so the build never waits on the lock of the `cargo test` that runs
//! us), or taken from `TRANSPARENT_CACHE_NATIVE_DIR` (a folder holding `libtransparent_cache.so`).

use crate::artifact::{cargo_build, private_target_dir, workspace_manifest, Artifact};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

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

static DIR: Artifact = Artifact::new("TRANSPARENT_CACHE_NATIVE_DIR");

/// The folder holding `libtransparent_cache.so`, building it the first time in this process.
pub fn module_dir() -> Result<PathBuf> {
    DIR.get(
        |p| {
            if !p.join(format!("lib{MODULE_NAME}.so")).is_file() {
                bail!(
                    "TRANSPARENT_CACHE_NATIVE_DIR={} holds no lib{MODULE_NAME}.so",
                    p.display()
                );
            }
            Ok(())
        },
        || build(&private_target_dir("testbed-native")?),
    )
}

/// `cargo build -p filter-native` (dev profile) into `target_dir`; returns the folder of the
/// shared object.
pub fn build(target_dir: &Path) -> Result<PathBuf> {
    cargo_build(&workspace_manifest(), &["-p", "filter-native"], target_dir)?;
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
