//! Offline checks of the Istio 1.18 deployment in `istio/` (see `docs/istio.md`).
//!
//! - [`yaml_docs`]: every manifest parses (a YAML stream of documents);
//! - [`IstioApi`]: each Istio resource uses only fields of the Istio 1.18 API, written down per kind
//!   in `fields/istio-1.18.yaml`;
//! - [`EnvoyFields`]: each EnvoyFilter patch uses only Envoy 1.26 fields (`fields/envoy-1.26.txt`);
//! - [`bootstrap_for`]: the patches of an EnvoyFilter assembled into an Envoy bootstrap, for
//!   `envoy --mode validate`.
//!
//! The tests in `tests/` run these over the files and add the publish path (a local S3 server and
//! Envoy's remote wasm loading) and the tracing tags through real Envoy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the repository root")
        .to_path_buf()
}

/// The placeholders `make publish` fills in when it renders `istio/` into `dist/istio/`, with the
/// stand-in values the offline checks use.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    (
        "__WASM_URL__",
        "https://wasm.example.com/transparent-cache/filter-wasm/0.1.0/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef/filter_wasm.wasm",
    ),
    (
        "__WASM_SHA256__",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ),
    ("__WASM_HOST__", "wasm.example.com"),
    ("__SOFTPROBE_API_KEY__", "pk_test_example"),
    ("__BACKEND_INGEST_KEY__", "0123456789abcdef0123456789abcdef"),
];

/// `text` with every placeholder replaced by its stand-in value.
pub fn fill_placeholders(text: &str) -> String {
    PLACEHOLDERS
        .iter()
        .fold(text.to_string(), |t, (k, v)| t.replace(k, v))
}

/// Every `__NAME__` token in `text` (upper case, digits, underscores).
pub fn placeholder_tokens(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'_' && b[i + 1] == b'_' {
            let start = i;
            let mut j = i + 2;
            while j < b.len()
                && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_')
            {
                j += 1;
            }
            let tok = &text[start..j];
            if tok.len() > 4
                && tok.ends_with("__")
                && tok[2..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_uppercase())
            {
                out.insert(tok.to_string());
                i = j;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// Every `.yaml` file under `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The documents of a YAML stream as JSON values (empty documents skipped).
pub fn yaml_docs(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| anyhow!("invalid YAML: {e}"))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Istio 1.18 field trees

/// The Istio 1.18 field trees of `fields/istio-1.18.yaml`.
pub struct IstioApi {
    kinds: Map<String, Value>,
}

impl IstioApi {
    /// Loads `fields/istio-1.18.yaml`.
    pub fn load() -> Result<IstioApi> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fields/istio-1.18.yaml");
        let text = std::fs::read_to_string(&path)?;
        let doc = yaml_docs(&text)?
            .pop()
            .ok_or_else(|| anyhow!("empty {}", path.display()))?;
        let Value::Object(kinds) = doc else {
            bail!("{}: expected a mapping of kinds", path.display());
        };
        Ok(IstioApi { kinds })
    }

    /// The kinds described.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    /// The apiVersion of `kind` in Istio 1.18.
    pub fn api_version(&self, kind: &str) -> Option<&str> {
        self.kinds.get(kind)?.get("apiVersion")?.as_str()
    }

    /// Every way `spec` of a `kind` resource leaves the Istio 1.18 API (empty = fine).
    pub fn check_spec(&self, kind: &str, spec: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        let Some(k) = self.kinds.get(kind) else {
            return vec![format!(
                "kind {kind} is not an Istio 1.18 kind known to the check"
            )];
        };
        let defs = k.get("definitions").cloned().unwrap_or(json!({}));
        let tree = &k["spec"];
        check_node(tree, spec, "spec", &defs, &mut errs);
        errs
    }
}

fn check_node(node: &Value, v: &Value, path: &str, defs: &Value, errs: &mut Vec<String>) {
    match node {
        Value::String(s) if s.starts_with('$') => match defs.get(&s[1..]) {
            Some(d) => check_node(d, v, path, defs, errs),
            None => errs.push(format!("{path}: the field list has no definition {s}")),
        },
        Value::String(s) if s == "struct" => {}
        Value::String(s) if s == "scalar" => {
            if v.is_object() || v.is_array() {
                errs.push(format!("{path}: expected a scalar, got {v}"));
            }
        }
        Value::String(s) if s == "map<scalar>" => match v.as_object() {
            Some(m) => {
                for (k, x) in m {
                    if x.is_object() || x.is_array() {
                        errs.push(format!("{path}.{k}: expected a scalar map value"));
                    }
                }
            }
            None => errs.push(format!("{path}: expected a map")),
        },
        Value::String(s) if s.starts_with("enum ") => {
            let allowed: Vec<&str> = s[5..].split_whitespace().collect();
            match v.as_str() {
                Some(x) if allowed.contains(&x) => {}
                _ => errs.push(format!("{path}: {v} is not one of {}", allowed.join(", "))),
            }
        }
        Value::Object(fields) => {
            let Some(obj) = v.as_object() else {
                errs.push(format!("{path}: expected a mapping, got {v}"));
                return;
            };
            for (k, x) in obj {
                if let Some(sub) = fields.get(k) {
                    check_node(sub, x, &format!("{path}.{k}"), defs, errs);
                } else if let Some(sub) = fields.get(&format!("{k}[]")) {
                    match x.as_array() {
                        Some(items) => {
                            for (i, it) in items.iter().enumerate() {
                                check_node(sub, it, &format!("{path}.{k}[{i}]"), defs, errs);
                            }
                        }
                        None => errs.push(format!("{path}.{k}: expected a list")),
                    }
                } else if let Some(sub) = fields.get(&format!("{k}{{}}")) {
                    match x.as_object() {
                        Some(m) => {
                            for (mk, mv) in m {
                                check_node(sub, mv, &format!("{path}.{k}.{mk}"), defs, errs);
                            }
                        }
                        None => errs.push(format!("{path}.{k}: expected a map")),
                    }
                } else {
                    errs.push(format!("{path}.{k}: not a field of the Istio 1.18 API"));
                }
            }
        }
        other => errs.push(format!("{path}: bad field-list node {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy 1.26 fields

/// The type of one listed Envoy field.
#[derive(Debug, Clone)]
pub struct FieldType {
    pub repeated: bool,
    pub map: bool,
    /// A message name, `Any`, or a lower-case scalar type.
    pub ty: String,
}

/// The Envoy 1.26 fields of `fields/envoy-1.26.txt`.
pub struct EnvoyFields {
    messages: BTreeMap<String, BTreeMap<String, FieldType>>,
}

impl EnvoyFields {
    /// Loads `fields/envoy-1.26.txt`.
    pub fn load() -> Result<EnvoyFields> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fields/envoy-1.26.txt");
        let mut messages: BTreeMap<String, BTreeMap<String, FieldType>> = BTreeMap::new();
        for (n, line) in std::fs::read_to_string(&path)?.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                [msg] => {
                    messages.entry((*msg).to_string()).or_default();
                }
                [path, ty] => {
                    let (msg, field) = path
                        .rsplit_once('.')
                        .ok_or_else(|| anyhow!("line {}: no message in {path}", n + 1))?;
                    let mut t = *ty;
                    let repeated = t.starts_with("[]");
                    if repeated {
                        t = &t[2..];
                    }
                    let map = t.starts_with("map<");
                    if map {
                        t = t.trim_start_matches("map<").trim_end_matches('>');
                    }
                    messages.entry(msg.to_string()).or_default().insert(
                        field.to_string(),
                        FieldType {
                            repeated,
                            map,
                            ty: t.to_string(),
                        },
                    );
                }
                _ => bail!("line {}: expected `Message.field type`", n + 1),
            }
        }
        Ok(EnvoyFields { messages })
    }

    /// Every listed `Message.field`.
    pub fn all_fields(&self) -> Vec<String> {
        self.messages
            .iter()
            .flat_map(|(m, fs)| fs.keys().map(move |f| format!("{m}.{f}")))
            .collect()
    }

    /// Every way `v`, a `msg`, uses a field not listed (empty = fine). `used` collects each
    /// `Message.field` met.
    pub fn check(
        &self,
        msg: &str,
        v: &Value,
        path: &str,
        used: &mut BTreeSet<String>,
    ) -> Vec<String> {
        let mut errs = Vec::new();
        self.check_msg(msg, v, path, used, &mut errs);
        errs
    }

    fn check_msg(
        &self,
        msg: &str,
        v: &Value,
        path: &str,
        used: &mut BTreeSet<String>,
        errs: &mut Vec<String>,
    ) {
        let Some(fields) = self.messages.get(msg) else {
            errs.push(format!(
                "{path}: message {msg} is not in the Envoy 1.26 field list"
            ));
            return;
        };
        let Some(obj) = v.as_object() else {
            errs.push(format!("{path}: {msg} must be a mapping, got {v}"));
            return;
        };
        for (k, x) in obj {
            if k == "@type" {
                continue;
            }
            let Some(ft) = fields.get(k) else {
                errs.push(format!(
                    "{path}.{k}: {msg}.{k} is not in the Envoy 1.26 field list"
                ));
                continue;
            };
            used.insert(format!("{msg}.{k}"));
            let p = format!("{path}.{k}");
            if ft.map {
                match x.as_object() {
                    Some(m) => {
                        for (mk, mv) in m {
                            self.check_value(&ft.ty, mv, &format!("{p}.{mk}"), used, errs);
                        }
                    }
                    None => errs.push(format!("{p}: expected a map")),
                }
            } else if ft.repeated {
                match x.as_array() {
                    Some(items) => {
                        for (i, it) in items.iter().enumerate() {
                            self.check_value(&ft.ty, it, &format!("{p}[{i}]"), used, errs);
                        }
                    }
                    None => errs.push(format!("{p}: expected a list")),
                }
            } else {
                self.check_value(&ft.ty, x, &p, used, errs);
            }
        }
    }

    fn check_value(
        &self,
        ty: &str,
        v: &Value,
        path: &str,
        used: &mut BTreeSet<String>,
        errs: &mut Vec<String>,
    ) {
        if ty == "Any" {
            let Some(url) = v.get("@type").and_then(Value::as_str) else {
                errs.push(format!("{path}: an Any without @type"));
                return;
            };
            let Some(msg) = url.strip_prefix("type.googleapis.com/") else {
                errs.push(format!(
                    "{path}: @type {url} is not a type.googleapis.com URL"
                ));
                return;
            };
            used.insert(format!("@type {msg}"));
            self.check_msg(msg, v, path, used, errs);
        } else if ty.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && !ty.contains('.') {
            if v.is_object() || v.is_array() {
                errs.push(format!("{path}: expected a {ty}, got {v}"));
            }
        } else {
            self.check_msg(ty, v, path, used, errs);
        }
    }
}

/// The root Envoy message of an EnvoyFilter patch value, by `applyTo`.
pub fn patch_root(apply_to: &str) -> Option<&'static str> {
    match apply_to {
        "CLUSTER" => Some("envoy.config.cluster.v3.Cluster"),
        "HTTP_FILTER" => {
            Some("envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter")
        }
        "NETWORK_FILTER" => Some("envoy.config.listener.v3.Filter"),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Bootstrap assembly

const HCM: &str = "envoy.filters.network.http_connection_manager";
const ROUTER: &str = "envoy.filters.http.router";

/// `b` merged into `a` like Istio's MERGE (protobuf merge: mappings merge, lists append,
/// scalars replace).
pub fn merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(am), Value::Object(bm)) => {
            for (k, bv) in bm {
                match am.get_mut(k) {
                    Some(av) => merge(av, bv),
                    None => {
                        am.insert(k.clone(), bv.clone());
                    }
                }
            }
        }
        (Value::Array(aa), Value::Array(ba)) => aa.extend(ba.iter().cloned()),
        (a, b) => *a = b.clone(),
    }
}

/// A static Envoy bootstrap that holds what an EnvoyFilter's patches add to a sidecar's
/// SIDECAR_OUTBOUND config: one outbound HTTP listener on 127.0.0.1 (port 0) whose connection
/// manager gets the HTTP_FILTER and NETWORK_FILTER patches, plus the CLUSTER patches. Only the
/// operations the manifests use are supported (anything else is an error, so a new kind of patch
/// can't slip past the check).
pub fn bootstrap_for(envoy_filter: &Value, upstream_port: u16) -> Result<Value> {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "outbound_0.0.0.0_80",
        "route_config": {
            "name": "80",
            "virtual_hosts": [{
                "name": "allow_any",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster", "timeout": "0s"}}]
            }]
        },
        "http_filters": [
            {"name": ROUTER, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
        ]
    });
    let mut clusters = vec![json!({
        "name": "PassthroughCluster",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "PassthroughCluster",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}}]}]
        }
    })];
    let patches = envoy_filter["spec"]["configPatches"]
        .as_array()
        .ok_or_else(|| anyhow!("spec.configPatches is not a list"))?;
    for (i, p) in patches.iter().enumerate() {
        let apply_to = p["applyTo"].as_str().unwrap_or_default();
        let op = p["patch"]["operation"].as_str().unwrap_or_default();
        let value = &p["patch"]["value"];
        let ctx = p["match"]["context"].as_str().unwrap_or("ANY");
        if ctx != "SIDECAR_OUTBOUND" {
            bail!("configPatches[{i}]: context {ctx}: the check assembles SIDECAR_OUTBOUND only");
        }
        match (apply_to, op) {
            ("CLUSTER", "ADD") => clusters.push(value.clone()),
            ("HTTP_FILTER", "INSERT_BEFORE") => {
                let m = &p["match"]["listener"]["filterChain"]["filter"];
                if m["name"] != HCM || m["subFilter"]["name"] != ROUTER {
                    bail!("configPatches[{i}]: INSERT_BEFORE must match the router of the HTTP connection manager");
                }
                let filters = hcm["http_filters"].as_array_mut().expect("a list");
                let at = filters
                    .iter()
                    .position(|f| f["name"] == ROUTER)
                    .expect("router");
                filters.insert(at, value.clone());
            }
            ("NETWORK_FILTER", "MERGE") => {
                if p["match"]["listener"]["filterChain"]["filter"]["name"] != HCM
                    || value["name"] != HCM
                {
                    bail!("configPatches[{i}]: MERGE is supported on the HTTP connection manager only");
                }
                merge(&mut hcm, &value["typed_config"]);
            }
            _ => bail!("configPatches[{i}]: {apply_to}/{op} is not assembled by the check"),
        }
    }
    Ok(json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "0.0.0.0_80",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{"name": HCM, "typed_config": hcm}]}]
            }],
            "clusters": clusters
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_placeholder_tokens() {
        let t = placeholder_tokens("a __WASM_URL__ b __x__ __SOFTPROBE_API_KEY__\n____");
        assert_eq!(
            t.into_iter().collect::<Vec<_>>(),
            vec![
                "__SOFTPROBE_API_KEY__".to_string(),
                "__WASM_URL__".to_string()
            ]
        );
    }

    #[test]
    fn merge_appends_lists_and_merges_maps() {
        let mut a = json!({"t": {"custom_tags": [1], "x": 1}, "s": "a"});
        merge(&mut a, &json!({"t": {"custom_tags": [2]}, "s": "b"}));
        assert_eq!(a, json!({"t": {"custom_tags": [1, 2], "x": 1}, "s": "b"}));
    }

    #[test]
    fn istio_check_rejects_fields_added_after_1_18() {
        let api = IstioApi::load().unwrap();
        let spec = json!({"url": "https://x", "failStrategy": "FAIL_OPEN", "type": "HTTP",
                          "targetRef": {"kind": "Gateway"}, "match": [{"mode": "CLIENT"}]});
        let errs = api.check_spec("WasmPlugin", &spec);
        assert_eq!(errs.len(), 3, "{errs:?}");
        let bad_enum = api.check_spec("WasmPlugin", &json!({"match": [{"mode": "OUTBOUND"}]}));
        assert_eq!(bad_enum.len(), 1, "{bad_enum:?}");
    }

    #[test]
    fn envoy_check_rejects_fields_added_after_1_26() {
        let f = EnvoyFields::load().unwrap();
        let v = json!({"name": "x", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "failure_mode_allow": true, "allow_mode_override": true}});
        let mut used = BTreeSet::new();
        let errs = f.check(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
            &v,
            "v",
            &mut used,
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("allow_mode_override"));
    }
}
