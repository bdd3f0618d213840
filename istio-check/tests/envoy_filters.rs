//! Each EnvoyFilter's patches use only Envoy 1.26 fields, and assembled into a bootstrap they are
//! accepted by the pinned Envoy (1.40) in `--mode validate`.

use std::collections::BTreeSet;
use std::process::Command;

use istio_check::{
    bootstrap_for, fill_placeholders, patch_root, repo_root, yaml_docs, yaml_files, EnvoyFields,
};
use serde_json::Value;

fn envoy_filters() -> Vec<(String, Value)> {
    let root = repo_root();
    let mut out = Vec::new();
    for f in yaml_files(&root.join("istio")).unwrap() {
        let text = fill_placeholders(&std::fs::read_to_string(&f).unwrap());
        for d in yaml_docs(&text).unwrap() {
            if d["kind"] == "EnvoyFilter" {
                out.push((f.strip_prefix(&root).unwrap().display().to_string(), d));
            }
        }
    }
    assert!(
        out.len() >= 3,
        "expected the fail-open, ext_proc and tracing EnvoyFilters"
    );
    out
}

#[test]
fn patches_use_only_envoy_1_26_fields() {
    let fields = EnvoyFields::load().unwrap();
    let mut used = BTreeSet::new();
    for (file, ef) in envoy_filters() {
        for (i, p) in ef["spec"]["configPatches"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let apply_to = p["applyTo"].as_str().unwrap();
            let root = patch_root(apply_to)
                .unwrap_or_else(|| panic!("{file}: no root type for {apply_to}"));
            let errs = fields.check(
                root,
                &p["patch"]["value"],
                &format!("configPatches[{i}].patch.value"),
                &mut used,
            );
            assert!(errs.is_empty(), "{file}:\n  {}", errs.join("\n  "));
        }
    }
    // The list holds no field the patches don't use, so it stays a description of them.
    let unused: Vec<String> = fields
        .all_fields()
        .into_iter()
        .filter(|f| !used.contains(f))
        .collect();
    assert!(unused.is_empty(), "listed but unused: {unused:?}");
}

#[test]
fn assembled_bootstraps_pass_envoy_validate() {
    let envoy = testbed::envoy::binary().unwrap();
    for (file, ef) in envoy_filters() {
        let bootstrap = bootstrap_for(&ef, 1).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&bootstrap).unwrap()).unwrap();
        let out = Command::new(&envoy)
            .args(["--mode", "validate", "--log-level", "warn", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{file}: envoy --mode validate failed:\n{text}"
        );
        assert!(
            text.contains("configuration") && text.contains("OK"),
            "{file}: {text}"
        );
    }
}

#[test]
fn validate_rejects_a_broken_patch() {
    // The validate step is not vacuous: a typo in a patch makes Envoy refuse the bootstrap.
    let envoy = testbed::envoy::binary().unwrap();
    let (_, mut ef) = envoy_filters()
        .into_iter()
        .find(|(f, _)| f.contains("ext-proc"))
        .unwrap();
    let p = ef["spec"]["configPatches"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["applyTo"] == "HTTP_FILTER")
        .unwrap();
    p["patch"]["value"]["typed_config"]["failure_mode_alow"] = Value::Bool(true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&bootstrap_for(&ef, 1).unwrap()).unwrap(),
    )
    .unwrap();
    let out = Command::new(&envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
