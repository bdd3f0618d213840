//! filter-native's hand-written ABI binding checked against the pinned Envoy binary
//! (`.envoy-version`), symbol by symbol:
//!
//! - every callback the module imports (`envoy_dynamic_module_callback_*`, its undefined dynamic
//!   symbols) is exported by that Envoy: a callback renamed or removed there fails here with its
//!   name, instead of as a load error in production;
//! - every hook the module exports (`envoy_dynamic_module_on_*`) is a name that Envoy looks up
//!   (the names it resolves with `dlsym` are strings in the binary);
//! - the module's ABI version is the one that Envoy was built with.
//!
//! The C signatures themselves are checked by running every hook and callback through real Envoy
//! (the golden replay and `native_e2e`); this check needs no header.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn nm(file: &Path, args: &[&str]) -> BTreeSet<String> {
    let out = Command::new("nm")
        .args(["-D", "--format=posix"])
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("nm {}: {e} (binutils is needed)", file.display()));
    assert!(
        out.status.success(),
        "nm {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| s.starts_with("envoy_dynamic_module_"))
        .map(str::to_string)
        .collect()
}

/// The printable strings of a binary that look like dynamic-module names.
fn names_in(file: &Path) -> BTreeSet<String> {
    let bytes = std::fs::read(file).unwrap();
    let mut out = BTreeSet::new();
    for run in bytes.split(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')) {
        if let Ok(s) = std::str::from_utf8(run) {
            if s.starts_with("envoy_dynamic_module_") || (s.starts_with('v') && s.len() <= 12) {
                out.insert(s.to_string());
            }
        }
    }
    out
}

#[test]
fn the_module_binding_matches_the_pinned_envoy_symbol_by_symbol() {
    let envoy = testbed::envoy::binary().unwrap();
    let module = testbed::native::module_dir()
        .unwrap()
        .join("libtransparent_cache.so");
    let exported_by_envoy = nm(&envoy, &["--defined-only"]);
    assert!(
        exported_by_envoy.len() > 100,
        "{}: no dynamic-module callbacks exported",
        envoy.display()
    );
    let imported = nm(&module, &["--undefined-only"]);
    let imported: BTreeSet<_> = imported
        .into_iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_callback_"))
        .collect();
    assert!(imported.len() >= 15, "callbacks imported: {imported:?}");
    let missing: Vec<_> = imported.difference(&exported_by_envoy).collect();
    assert!(
        missing.is_empty(),
        "the module calls callbacks this Envoy does not export: {missing:?}"
    );

    let looked_up = names_in(&envoy);
    let hooks: BTreeSet<_> = nm(&module, &["--defined-only"])
        .into_iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_on_"))
        .collect();
    assert!(hooks.len() >= 20, "hooks exported: {hooks:?}");
    let unknown: Vec<_> = hooks.iter().filter(|h| !looked_up.contains(*h)).collect();
    assert!(
        unknown.is_empty(),
        "the module exports hooks this Envoy never looks up: {unknown:?}"
    );
    // Hooks of the HTTP filter this Envoy looks up that the module does not export (Envoy 1.40
    // refuses a filter config when a required one is missing; optional ones are listed here so a
    // new required hook shows up by name).
    let not_exported: Vec<_> = looked_up
        .iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_on_http_filter_") && !hooks.contains(*s))
        .collect();
    eprintln!(
        "HTTP-filter hooks this Envoy knows and the module does not export: {not_exported:?}"
    );

    let version = filter_native_abi_version();
    assert!(
        looked_up.contains(&version),
        "the module declares ABI version {version}, which this Envoy does not carry"
    );
}

/// `filter_native::abi::ABI_VERSION`, read from its source (the module is a cdylib, not a
/// dependency here).
fn filter_native_abi_version() -> String {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../filter-native/src/abi.rs"),
    )
    .unwrap();
    let line = src
        .lines()
        .find(|l| l.starts_with("pub const ABI_VERSION: &str = \""))
        .expect("ABI_VERSION in filter-native/src/abi.rs");
    line.split('"').nth(1).unwrap().to_string()
}
