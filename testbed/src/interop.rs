//! The interop corpus (`interop/corpus/`, a copy of the shared corpus): the exact POST bodies the
//! two real Softprobe agents sent for a matrix of requests, with the requests and the upstream's
//! answers, as its `manifest.json` describes them.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// The corpus folder of this repository.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/corpus")
}

/// The agents of the corpus.
pub const AGENTS: &[&str] = &["sp-istio-wasm", "softprobe-proxy"];

/// One POST an agent made.
#[derive(Debug, Clone)]
pub struct Post {
    /// `inject` (`/v1/inject`) or `extract` (`/v1/traces`).
    pub kind: String,
    pub path: String,
    /// The POST's headers as the agent set them (without `host`, the length and Envoy's own
    /// `x-envoy-*`).
    pub headers: Vec<(String, String)>,
    /// The exact body.
    pub body: Vec<u8>,
}

/// One case as one agent saw it.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub agent: String,
    /// The client's request: exact head bytes and body.
    pub head: Vec<u8>,
    pub body: Vec<u8>,
    pub method: String,
    pub target: String,
    /// The request headers, in order (latin-1 view decoded back to bytes).
    pub request_headers: Vec<(String, Vec<u8>)>,
    /// What the upstream answered: status, headers in order, exact body.
    pub status: u16,
    pub response_headers: Vec<(String, Vec<u8>)>,
    pub response_body: Vec<u8>,
    pub posts: Vec<Post>,
    pub notes: Vec<String>,
}

impl Case {
    /// The extract POSTs (`/v1/traces`).
    pub fn extracts(&self) -> impl Iterator<Item = &Post> {
        self.posts.iter().filter(|p| p.kind == "extract")
    }

    /// The inject POSTs (`/v1/inject`).
    pub fn injects(&self) -> impl Iterator<Item = &Post> {
        self.posts.iter().filter(|p| p.kind == "inject")
    }

    /// `<agent>/<case>`, for messages.
    pub fn id(&self) -> String {
        format!("{}/{}", self.agent, self.name)
    }
}

fn b64(v: &Json, what: &str) -> Result<Vec<u8>> {
    let s = v
        .as_str()
        .with_context(|| format!("{what} is not a string"))?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .with_context(|| format!("{what} is not base64"))
}

/// `[[name, value], ...]` where each character of `value` is one byte (the corpus's latin-1 view).
fn pairs(v: &Json, what: &str) -> Result<Vec<(String, Vec<u8>)>> {
    v.as_array()
        .with_context(|| format!("{what} is not an array"))?
        .iter()
        .map(|p| {
            let name = p[0].as_str().context("header name")?.to_string();
            let value = p[1].as_str().context("header value")?;
            let bytes = value
                .chars()
                .map(|c| u8::try_from(u32::from(c)).context("a header character above U+00FF"))
                .collect::<Result<Vec<u8>>>()?;
            Ok((name, bytes))
        })
        .collect()
}

/// Every case of every agent, in the manifest's send order.
pub fn load() -> Result<Vec<Case>> {
    load_from(&corpus_dir())
}

/// [`load`] from another copy of the corpus.
pub fn load_from(dir: &Path) -> Result<Vec<Case>> {
    let path = dir.join("manifest.json");
    let text = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let m: Json = serde_json::from_slice(&text).context("manifest.json")?;
    let mut out = Vec::new();
    for c in m["cases"].as_array().context("cases")? {
        let name = c["case"].as_str().context("case name")?.to_string();
        for agent in AGENTS {
            let a = &c["agents"][*agent];
            if a.is_null() {
                continue;
            }
            let req = &a["request"];
            let up = &a["upstream_response"];
            let mut posts = Vec::new();
            for p in a["posts"].as_array().context("posts")? {
                let file = p["file"].as_str().context("post file")?;
                let body = std::fs::read(dir.join(file)).with_context(|| format!("read {file}"))?;
                let headers = pairs(&p["headers"], "post headers")?
                    .into_iter()
                    .filter(|(n, _)| {
                        let n = n.to_ascii_lowercase();
                        n != "host" && n != "content-length" && !n.starts_with("x-envoy-")
                    })
                    .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
                    .collect();
                posts.push(Post {
                    kind: p["kind"].as_str().context("post kind")?.to_string(),
                    path: p["path"].as_str().context("post path")?.to_string(),
                    headers,
                    body,
                });
            }
            let status = up["status"].as_u64().context("upstream status")?;
            out.push(Case {
                name: name.clone(),
                agent: agent.to_string(),
                head: b64(&req["head_b64"], "head_b64")?,
                body: b64(&req["body_b64"], "body_b64")?,
                method: req["method"].as_str().context("method")?.to_string(),
                target: req["path"].as_str().context("path")?.to_string(),
                request_headers: pairs(&req["headers"], "request headers")?,
                status: u16::try_from(status)?,
                response_headers: pairs(&up["headers"], "upstream headers")?,
                response_body: b64(&up["body_b64"], "upstream body_b64")?,
                posts,
                notes: a["notes"]
                    .as_array()
                    .map(|n| {
                        n.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    if out.is_empty() {
        bail!("{}: no cases", path.display());
    }
    Ok(out)
}

/// Every file of the corpus that differs from `other` (missing on either side, or other bytes),
/// as paths relative to the corpus.
pub fn differences(other: &Path) -> Result<Vec<String>> {
    fn files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
            let p = e?.path();
            if p.is_dir() {
                files(root, &p, out)?;
            } else {
                out.push(p.strip_prefix(root)?.to_path_buf());
            }
        }
        Ok(())
    }
    let ours = corpus_dir();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    files(&ours, &ours, &mut a)?;
    files(other, other, &mut b)?;
    a.sort();
    b.sort();
    let mut diff: Vec<String> = Vec::new();
    for rel in a.iter().chain(b.iter()) {
        let x = std::fs::read(ours.join(rel)).ok();
        let y = std::fs::read(other.join(rel)).ok();
        if x != y && !diff.contains(&rel.display().to_string()) {
            diff.push(rel.display().to_string());
        }
    }
    Ok(diff)
}
