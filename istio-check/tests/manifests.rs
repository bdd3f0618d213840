//! Every manifest in istio/ parses, has the right kind and apiVersion, uses only Istio 1.18 fields,
//! carries a plugin config the engine accepts, and every kustomization points at files that exist.

use std::collections::BTreeSet;
use std::path::Path;

use istio_check::{
    fill_placeholders, placeholder_tokens, repo_root, yaml_docs, yaml_files, IstioApi, PLACEHOLDERS,
};
use serde_json::Value;

/// Non-Istio kinds the manifests may hold, with their apiVersion.
const K8S_KINDS: &[(&str, &str)] = &[
    ("Kustomization", "kustomize.config.k8s.io/v1beta1"),
    ("Namespace", "v1"),
    ("ConfigMap", "v1"),
    ("Service", "v1"),
    ("PersistentVolumeClaim", "v1"),
    ("Deployment", "apps/v1"),
];

fn docs() -> Vec<(String, Value)> {
    let root = repo_root();
    let mut out = Vec::new();
    for f in yaml_files(&root.join("istio")).unwrap() {
        let rel = f.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let docs = yaml_docs(&text).unwrap_or_else(|e| panic!("{rel}: {e:#}"));
        assert!(!docs.is_empty(), "{rel}: no document");
        for d in docs {
            out.push((rel.clone(), d));
        }
    }
    out
}

#[test]
fn every_manifest_has_a_known_kind_and_api_version() {
    let api = IstioApi::load().unwrap();
    let docs = docs();
    assert!(docs.len() >= 15, "only {} documents", docs.len());
    let mut kinds = BTreeSet::new();
    for (file, d) in &docs {
        let kind = d["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no kind"));
        let av = d["apiVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no apiVersion"));
        let want = api
            .api_version(kind)
            .or_else(|| K8S_KINDS.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v))
            .unwrap_or_else(|| panic!("{file}: unexpected kind {kind}"));
        assert_eq!(av, want, "{file}: {kind}");
        if kind != "Kustomization" {
            let md = d["metadata"]
                .as_object()
                .unwrap_or_else(|| panic!("{file}: no metadata"));
            assert!(
                md.get("name").and_then(Value::as_str).is_some(),
                "{file}: no metadata.name"
            );
            for k in md.keys() {
                assert!(
                    ["name", "namespace", "labels", "annotations"].contains(&k.as_str()),
                    "{file}: metadata.{k}"
                );
            }
        }
        kinds.insert(kind.to_string());
    }
    for k in [
        "WasmPlugin",
        "ServiceEntry",
        "DestinationRule",
        "EnvoyFilter",
        "Telemetry",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "ConfigMap",
    ] {
        assert!(kinds.contains(k), "no {k} among the manifests");
    }
}

#[test]
fn istio_resources_use_only_istio_1_18_fields() {
    let api = IstioApi::load().unwrap();
    let istio_kinds: Vec<&str> = api.kinds().collect();
    let mut checked = 0;
    for (file, d) in docs() {
        let kind = d["kind"].as_str().unwrap();
        if !istio_kinds.contains(&kind) {
            continue;
        }
        for k in d.as_object().unwrap().keys() {
            assert!(
                ["apiVersion", "kind", "metadata", "spec"].contains(&k.as_str()),
                "{file}: top-level {k}"
            );
        }
        let errs = api.check_spec(kind, &d["spec"]);
        assert!(
            errs.is_empty(),
            "{file} ({kind}) leaves the Istio 1.18 API:\n  {}",
            errs.join("\n  ")
        );
        checked += 1;
    }
    assert!(checked >= 8, "checked only {checked} Istio resources");
}

#[test]
fn the_field_check_catches_fields_of_later_istio_versions() {
    let api = IstioApi::load().unwrap();
    let (_, wp) = docs()
        .into_iter()
        .find(|(_, d)| d["kind"] == "WasmPlugin" && d["spec"]["url"].is_string())
        .unwrap();
    for (field, value) in [("failStrategy", "FAIL_OPEN"), ("type", "HTTP")] {
        let mut spec = wp["spec"].clone();
        spec[field] = Value::String(value.into());
        assert_eq!(
            api.check_spec("WasmPlugin", &spec).len(),
            1,
            "{field} not caught"
        );
    }
    let mut spec = wp["spec"].clone();
    spec["targetRef"] = serde_json::json!({"kind": "Gateway", "name": "gw"});
    assert_eq!(api.check_spec("WasmPlugin", &spec).len(), 1);
}

/// Every JSON plugin config (WasmPlugin pluginConfig, the wasm filter's configuration string, the
/// sidecar's config file) is accepted by the engine's own config parser.
#[test]
fn plugin_configs_are_accepted_by_the_engine() {
    let (mut n, mut inbound) = (0, 0);
    for (file, d) in docs() {
        let mut configs: Vec<(String, Value)> = Vec::new();
        match d["kind"].as_str().unwrap() {
            "WasmPlugin"
                if d["spec"]["pluginConfig"].is_object() && d["spec"]["url"].is_string() =>
            {
                configs.push(("pluginConfig".into(), d["spec"]["pluginConfig"].clone()));
            }
            "EnvoyFilter" => {
                for p in d["spec"]["configPatches"].as_array().unwrap() {
                    let c = &p["patch"]["value"]["typed_config"]["config"]["configuration"];
                    if let Some(s) = c["value"].as_str() {
                        assert_eq!(
                            c["@type"], "type.googleapis.com/google.protobuf.StringValue",
                            "{file}"
                        );
                        configs.push((
                            "wasm configuration".into(),
                            serde_json::from_str(s).unwrap_or_else(|e| panic!("{file}: {e}")),
                        ));
                    }
                }
            }
            "ConfigMap" => {
                let s = d["data"]["config.json"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{file}: no config.json"));
                let mut v: Value =
                    serde_json::from_str(s).unwrap_or_else(|e| panic!("{file}: {e}"));
                // The keys of filter-sidecar's `sidecar` section (filter-sidecar/src/config.rs).
                let sidecar = v
                    .as_object_mut()
                    .unwrap()
                    .remove("sidecar")
                    .expect("a sidecar section");
                for k in sidecar.as_object().unwrap().keys() {
                    assert!(
                        [
                            "backend_url",
                            "listen",
                            "metrics_listen",
                            "record_queue_capacity",
                            "record_concurrency",
                            "drain_timeout_ms"
                        ]
                        .contains(&k.as_str()),
                        "{file}: sidecar.{k}"
                    );
                }
                configs.push(("sidecar config.json".into(), v));
            }
            _ => {}
        }
        for (what, c) in configs {
            let filled: Value = serde_json::from_str(&fill_placeholders(&c.to_string())).unwrap();
            let cfg = filter_core::Config::from_value(&filled)
                .unwrap_or_else(|e| panic!("{file} {what}: {e}"));
            assert_eq!(
                filled["request_mode"].as_str().unwrap_or("stream_headers"),
                "stream_headers",
                "{file}: 1.26 needs stream_headers"
            );
            if cfg.mode() == filter_core::Mode::PropagateOnly {
                // The inbound piece: it only carries the session on, so it calls no backend.
                assert_eq!(
                    cfg.traffic_direction(),
                    filter_core::Direction::Inbound,
                    "{file}"
                );
                assert!(cfg.propagate_session(), "{file}");
                inbound += 1;
            } else {
                // The hosted runtime decides per session: no round trip without one.
                assert!(cfg.require_session(), "{file} {what}: require_session");
                assert_eq!(
                    cfg.backend().auth_header(),
                    "authorization",
                    "{file}: Bearer auth"
                );
            }
            n += 1;
        }
    }
    assert_eq!(
        (n, inbound),
        (4, 1),
        "expected the WasmPlugin and its inbound piece, the fail-open EnvoyFilter and the sidecar configs"
    );
}

/// The hosted-backend configs call the cluster Istio generates for the ServiceEntry (or the
/// EnvoyFilter's own cluster), and the local-backend overlay the Service's cluster.
#[test]
fn callout_clusters_exist() {
    let docs = docs();
    let se = docs
        .iter()
        .find(|(_, d)| d["kind"] == "ServiceEntry")
        .unwrap();
    let host = se.1["spec"]["hosts"][0].as_str().unwrap();
    let ports: Vec<u64> = se.1["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["number"].as_u64().unwrap())
        .collect();
    let dr = docs
        .iter()
        .find(|(_, d)| d["kind"] == "DestinationRule")
        .unwrap();
    assert_eq!(dr.1["spec"]["host"], host);
    assert_eq!(dr.1["spec"]["trafficPolicy"]["tls"]["mode"], "SIMPLE");
    assert_eq!(dr.1["spec"]["trafficPolicy"]["tls"]["sni"], host);
    for (file, d) in &docs {
        if d["kind"] == "WasmPlugin" && d["spec"]["pluginConfig"]["mode"] == "propagate_only" {
            // The inbound piece calls no backend.
            assert!(d["spec"]["pluginConfig"]["backend"].is_null(), "{file}");
            continue;
        }
        if d["kind"] == "WasmPlugin" {
            let cluster = d["spec"]["pluginConfig"]["backend"]["cluster"]
                .as_str()
                .unwrap();
            let authority = d["spec"]["pluginConfig"]["backend"]["authority"]
                .as_str()
                .unwrap();
            if file.contains("local-backend") {
                let svc = docs.iter().find(|(_, d)| d["kind"] == "Service").unwrap();
                let fqdn = format!(
                    "{}.{}.svc.cluster.local",
                    svc.1["metadata"]["name"].as_str().unwrap(),
                    svc.1["metadata"]["namespace"].as_str().unwrap()
                );
                assert_eq!(
                    cluster,
                    format!("outbound|{}||{fqdn}", svc.1["spec"]["ports"][0]["port"])
                );
                assert_eq!(authority, fqdn);
            } else {
                assert!(
                    ports
                        .iter()
                        .any(|p| cluster == format!("outbound|{p}||{host}")),
                    "{file}: {cluster}"
                );
                assert_eq!(authority, host);
            }
        }
    }
}

#[test]
fn kustomizations_reference_existing_files() {
    let root = repo_root();
    for (file, d) in docs() {
        if d["kind"] != "Kustomization" {
            continue;
        }
        let dir = root.join(&file);
        let dir = dir.parent().unwrap();
        let mut refs: Vec<String> = d["resources"]
            .as_array()
            .map(|a| a.iter().map(|r| r.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        for p in d["patches"].as_array().into_iter().flatten() {
            refs.push(p["path"].as_str().unwrap().to_string());
        }
        assert!(!refs.is_empty(), "{file}: empty");
        for r in refs {
            let p = dir.join(&r);
            if p.is_dir() {
                assert!(
                    p.join("kustomization.yaml").is_file(),
                    "{file}: {r} has no kustomization.yaml"
                );
            } else {
                assert!(p.is_file(), "{file}: {r} does not exist");
            }
        }
    }
}

/// `make publish` fills in exactly these placeholders; nothing else may look like one.
#[test]
fn placeholders_are_the_ones_publish_fills() {
    let known: BTreeSet<String> = PLACEHOLDERS.iter().map(|(k, _)| k.to_string()).collect();
    let script = std::fs::read_to_string(repo_root().join("scripts/publish.sh")).unwrap();
    for k in &known {
        assert!(
            script.contains(k.as_str()),
            "scripts/publish.sh does not fill {k}"
        );
    }
    for f in yaml_files(&repo_root().join("istio")).unwrap() {
        let text = std::fs::read_to_string(&f).unwrap();
        for t in placeholder_tokens(&text) {
            assert!(
                known.contains(&t),
                "{}: unknown placeholder {t}",
                f.display()
            );
        }
    }
    assert!(Path::new(&repo_root().join("istio/overlays/wasmplugin/wasmplugin.yaml")).is_file());
}
