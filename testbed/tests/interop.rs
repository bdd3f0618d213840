//! Interop with the real Softprobe agents, on their own bytes (`interop/corpus/`, a copy of the
//! shared corpus): every record they sent is stored by the real `backend`, every lookup the newer
//! agent sent is answered, and each recording becomes a hit for our filter (wasm and native,
//! through real Envoy) when the same request comes through with the same session, served as the
//! upstream answered it, byte for byte where the agent kept the bytes. Then: miss → record → hit
//! with the real backend, and our filter's spans read by a reader that keeps only scalar
//! attributes (as the Softprobe runtime does) lose nothing.
//!
//! What each agent lost, per case (so the served answer cannot be the upstream's exactly):
//! - `get-repeated`: both agents drop `set-cookie` (a secret) and keep only the last line of a
//!   repeated header (`x-resp-multi: r2`);
//! - `gzip-response`: both agents store gzip bytes under `application/json` as lossy UTF-8, so
//!   the served body is that lossy text;
//! - `session-tracestate`, `no-session` (sp-istio-wasm): the agent invents a session, so the
//!   same request with its real session (or none) is a miss, as it should be;
//! - `octet-response`, `latin1-header`, `after-latin1-probe`: the agents posted no record;
//! - `auth-headers`: both agents drop `authorization` and `cookie` from what they record, so the
//!   recording no longer says which caller it was made for. Our backend's default match key holds
//!   the caller's credentials (one user's recording is never served to another), so the same
//!   request with those credentials is a miss, as it should be (`caller_headers = []` in the
//!   backend's config shares recordings between callers, and makes it a hit).

use anyhow::{Context, Result};
use base64::Engine as _;
use filter_core::codec::{self, Format};
use filter_core::otlp::{Span, Value};
use filter_core::{Config, Redactor};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::time::Duration;
use testbed::demo_upstream::model::Script;
use testbed::interop::{self, Case, AGENTS};
use testbed::raw::{self, Body, RawConnection, RawRequest, RawResponse};
use testbed::shape::{self, Layout};
use testbed::{DemoUpstream, Envoy, FakeBackend, HeaderField, RealBackend, Shape, Site};

const T: Duration = Duration::from_secs(15);

fn filter_config() -> Json {
    json!({
        "backend": {
            "cluster": shape::BACKEND_CLUSTER,
            "authority": "backend.local",
            "lookup_timeout_ms": 3000,
            "record_timeout_ms": 5000
        },
        "service_name": "interop-svc"
    })
}

/// What our filter must serve on a hit of this case's recording.
struct Served {
    status: u16,
    /// Headers that must be there with exactly this value (one of the lines).
    headers: Vec<(String, Vec<u8>)>,
    /// Headers that must not be there.
    absent: Vec<String>,
    body: Vec<u8>,
}

fn served(case: &Case) -> Served {
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    let mut absent = Vec::new();
    for (name, value) in &case.response_headers {
        let name = name.to_ascii_lowercase();
        if name == "content-length" {
            continue; // framing: Envoy sets it
        }
        if name == "set-cookie" {
            absent.push(name); // both agents drop it as a secret
            continue;
        }
        // Both agents keep only the last line of a repeated header.
        headers.retain(|(n, _)| *n != name);
        headers.push((name, value.clone()));
    }
    let body = if case.name == "gzip-response" {
        // Stored as lossy UTF-8 text by both agents: that text is all there is.
        String::from_utf8_lossy(&case.response_body)
            .into_owned()
            .into_bytes()
    } else {
        case.response_body.clone()
    };
    Served {
        status: case.status,
        headers,
        absent,
        body,
    }
}

/// Mismatches between what was served and [`served`].
fn check(case: &Case, status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) -> Vec<String> {
    let want = served(case);
    let mut errors = Vec::new();
    if status != want.status {
        errors.push(format!("status {status}, expected {}", want.status));
    }
    if body != want.body.as_slice() {
        errors.push(format!(
            "body of {} bytes differs from the expected {} bytes",
            body.len(),
            want.body.len()
        ));
    }
    for (name, value) in &want.headers {
        if !headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
        {
            errors.push(format!(
                "header `{name}: {}` missing",
                String::from_utf8_lossy(value)
            ));
        }
    }
    for name in &want.absent {
        if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            errors.push(format!("header `{name}` must not be served"));
        }
    }
    errors
}

/// Cases whose recording is not the same request with the same session and caller (the agent
/// changed it: invented a session, or dropped the caller's credentials).
fn recording_differs(case: &Case) -> bool {
    (case.agent == "sp-istio-wasm"
        && matches!(case.name.as_str(), "session-tracestate" | "no-session"))
        || case.name == "auth-headers"
}

async fn load_records(backend: &RealBackend, cases: &[&Case]) -> Result<u64> {
    let mut stored = 0;
    for case in cases {
        for post in case.extracts() {
            let r = backend
                .post(&post.path, &post.headers, post.body.clone())
                .await?;
            anyhow::ensure!(
                r.status == 200,
                "{}: the backend refused the agent's record: {} {}",
                case.id(),
                r.status,
                r.body_str()
            );
            stored += 1;
        }
    }
    Ok(stored)
}

fn of_agent<'a>(cases: &'a [Case], agent: &str) -> Vec<&'a Case> {
    cases.iter().filter(|c| c.agent == agent).collect()
}

#[test]
fn the_corpus_copy_matches_the_shared_corpus() {
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/interop");
    if !shared.is_dir() {
        eprintln!(
            "no shared corpus beside the repository ({}); the copy in interop/corpus is used as is",
            shared.display()
        );
        return;
    }
    let diff = interop::differences(&shared).unwrap();
    assert!(
        diff.is_empty(),
        "interop/corpus differs from the shared corpus in {diff:?}: run scripts/sync-interop.sh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_stores_every_agent_record_and_answers_the_agents_lookups() {
    let cases = interop::load().unwrap();
    for agent in AGENTS {
        let mine = of_agent(&cases, agent);
        let backend = RealBackend::start().await.unwrap();
        let stored = load_records(&backend, &mine).await.unwrap();
        assert!(stored >= 9, "{agent}: only {stored} records in the corpus");
        assert_eq!(
            backend.recordings().await.unwrap(),
            stored,
            "{agent}: every record is stored\n{}",
            backend.log_tail(20)
        );
        let mut errors = Vec::new();
        for case in &mine {
            for post in case.injects() {
                let r = backend
                    .post(&post.path, &post.headers, post.body.clone())
                    .await
                    .unwrap();
                if case.extracts().next().is_none() {
                    if r.status != 404 {
                        errors.push(format!(
                            "{}: lookup answered {}, not a miss",
                            case.id(),
                            r.status
                        ));
                    }
                    continue;
                }
                if r.status != 200 {
                    errors.push(format!(
                        "{}: the agent's own lookup answered {} {}",
                        case.id(),
                        r.status,
                        r.body_str()
                    ));
                    continue;
                }
                let format = Format::from_content_type(
                    r.header("content-type").as_deref().map(str::as_bytes),
                );
                match codec::decode_answer(&r.body, format, &Redactor::default()) {
                    Ok(resp) => errors.extend(
                        check(case, resp.status, &resp.headers, &resp.body)
                            .into_iter()
                            .map(|e| format!("{}: the agent's lookup: {e}", case.id())),
                    ),
                    Err(e) => errors.push(format!("{}: undecodable answer: {e}", case.id())),
                }
            }
        }
        assert!(errors.is_empty(), "{agent}:\n  {}", errors.join("\n  "));
    }
}

struct Rig {
    envoy: Envoy,
    up: DemoUpstream,
    _backend_keepalive: (),
}

async fn rig(shape: Shape, backend: std::net::SocketAddr, config: Json) -> Result<Rig> {
    let up = DemoUpstream::start().await?;
    let layout = Layout {
        admin_port: 0,
        upstream: up.addr(),
        backend,
        refused: None,
        sites: vec![Site {
            name: "site_0".into(),
            port: 0,
            plugin_config: shape.plugin_config(&config),
            skip_without_session: false,
        }],
        access_log: None,
    };
    let env = tokio::task::spawn_blocking(move || shape.envoy_env()).await??;
    let yaml = tokio::task::spawn_blocking(move || shape.envoy_yaml(&layout)).await??;
    let envoy = Envoy::start_with_env(&yaml, &[], &env).await?;
    Ok(Rig {
        envoy,
        up,
        _backend_keepalive: (),
    })
}

impl Rig {
    fn site(&self) -> std::net::SocketAddr {
        self.envoy.listener("site_0").expect("site_0")
    }
}

/// Sends the case's exact request bytes and reads the answer.
async fn send_exact(addr: std::net::SocketAddr, case: &Case) -> Result<RawResponse> {
    let mut conn = RawConnection::connect(addr).await?;
    let mut bytes = case.head.clone();
    bytes.extend_from_slice(&case.body);
    tokio::time::timeout(T, async {
        conn.write_raw(&bytes).await?;
        conn.read_response(case.method == "HEAD").await
    })
    .await
    .context("timed out")?
}

fn pairs(headers: &[HeaderField]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name_str().to_ascii_lowercase(), h.value.clone()))
        .collect()
}

async fn agent_recordings_are_hits(shape: Shape) {
    let cases = interop::load().unwrap();
    for agent in AGENTS {
        let recorded: Vec<&Case> = of_agent(&cases, agent)
            .into_iter()
            .filter(|c| c.extracts().next().is_some())
            .collect();
        let backend = RealBackend::start().await.unwrap();
        load_records(&backend, &recorded).await.unwrap();
        let rig = rig(shape, backend.addr(), filter_config()).await.unwrap();
        rig.up
            .set_script(&Script {
                status: 200,
                headers: vec![HeaderField::new("content-type", "text/plain")],
                body_base64: b"from the upstream".to_vec(),
                trailers: Vec::new(),
            })
            .await
            .unwrap();
        let mut errors = Vec::new();
        let mut hits = 0;
        for case in &recorded {
            let before = rig.up.served().await.unwrap();
            let r = match send_exact(rig.site(), case).await {
                Ok(r) => r,
                Err(e) => {
                    errors.push(format!("{}: {e:#}", case.id()));
                    continue;
                }
            };
            let upstream_called = rig.up.served().await.unwrap() > before;
            let hit = r.header("x-softprobe-cache").as_deref() == Some("hit");
            if recording_differs(case) {
                if hit || !upstream_called {
                    errors.push(format!(
                        "{}: the agent recorded another session or dropped the caller, so this must be a miss",
                        case.id()
                    ));
                }
                continue;
            }
            if !hit || upstream_called {
                errors.push(format!(
                    "{}: expected a hit (x-softprobe-cache: {:?}, upstream called: {upstream_called})",
                    case.id(),
                    r.header("x-softprobe-cache")
                ));
                continue;
            }
            hits += 1;
            errors.extend(
                check(case, r.status, &pairs(&r.headers), &r.body)
                    .into_iter()
                    .map(|e| format!("{}: {e}", case.id())),
            );
        }
        let expected = recorded.iter().filter(|c| !recording_differs(c)).count();
        assert!(expected >= 8, "{agent}: {expected} recordings to replay");
        assert!(
            errors.is_empty() && hits == expected,
            "{} / {agent}: {hits} of {expected} hits\n  {}\n--- backend ---\n{}",
            shape.name(),
            errors.join("\n  "),
            backend.log_tail(20)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_recordings_are_hits_wasm_stream_headers() {
    agent_recordings_are_hits(Shape::Wasm {
        hold_headers: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_recordings_are_hits_wasm_hold_headers() {
    agent_recordings_are_hits(Shape::Wasm { hold_headers: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_recordings_are_hits_native() {
    agent_recordings_are_hits(Shape::Native { hold_headers: true }).await;
}

async fn miss_record_hit(shape: Shape) {
    let backend = RealBackend::start().await.unwrap();
    let rig = rig(shape, backend.addr(), filter_config()).await.unwrap();
    let body = br#"{"sku":42,"qty":1}"#.to_vec();
    rig.up
        .set_script(&Script {
            status: 200,
            headers: vec![
                HeaderField::new("content-type", "application/json"),
                HeaderField::new("x-resp-multi", "r1"),
                HeaderField::new("x-resp-multi", "r2"),
            ],
            body_base64: br#"{"price":9.5}"#.to_vec(),
            trailers: Vec::new(),
        })
        .await
        .unwrap();
    let as_user = |token: &str| {
        RawRequest::new("POST", "/v1/prices?region=eu")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .header("x-softprobe-session-id", "sess-e2e")
            .body(Body::ContentLength(vec![body.clone()]))
    };
    let req = as_user("alice");
    let ctx = shape.name();

    let first = raw::send(rig.site(), &req, T).await.unwrap();
    assert_eq!(first.status, 200, "{ctx}");
    assert_eq!(first.header("x-softprobe-cache"), None, "{ctx}: a miss");
    assert_eq!(rig.up.served().await.unwrap(), 1, "{ctx}");
    let stored = backend
        .wait_for_recordings(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(stored, 1, "{ctx}: recorded\n{}", backend.log_tail(20));

    let second = raw::send(rig.site(), &req, T).await.unwrap();
    assert_eq!(second.status, 200, "{ctx}");
    assert_eq!(
        second.header("x-softprobe-cache").as_deref(),
        Some("hit"),
        "{ctx}"
    );
    assert_eq!(second.body, first.body, "{ctx}: the recorded body");
    let multi: Vec<String> = second
        .headers
        .iter()
        .filter(|h| h.is("x-resp-multi"))
        .map(HeaderField::value_str)
        .collect();
    assert_eq!(
        multi,
        ["r1", "r2"],
        "{ctx}: repeated lines come back exactly"
    );
    assert_eq!(
        rig.up.served().await.unwrap(),
        1,
        "{ctx}: the upstream is not called on a hit"
    );

    // Another user, same session and request: never the first user's recording.
    let bob = raw::send(rig.site(), &as_user("bob"), T).await.unwrap();
    assert_eq!(
        bob.header("x-softprobe-cache"),
        None,
        "{ctx}: users are apart"
    );
    assert_eq!(
        rig.up.served().await.unwrap(),
        2,
        "{ctx}: bob reached the upstream"
    );

    // Another session: not the first session's recording.
    let other = RawRequest::new("POST", "/v1/prices?region=eu")
        .header("content-type", "application/json")
        .header("authorization", "Bearer alice")
        .header("x-softprobe-session-id", "sess-other")
        .body(Body::ContentLength(vec![br#"{"sku":42,"qty":1}"#.to_vec()]));
    let third = raw::send(rig.site(), &other, T).await.unwrap();
    assert_eq!(
        third.header("x-softprobe-cache"),
        None,
        "{ctx}: sessions are apart"
    );
    assert_eq!(rig.up.served().await.unwrap(), 3, "{ctx}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_record_hit_with_the_real_backend_wasm() {
    miss_record_hit(Shape::Wasm {
        hold_headers: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_record_hit_with_the_real_backend_native() {
    miss_record_hit(Shape::Native { hold_headers: true }).await;
}

// ---------------------------------------------------------------------------------------------
// A reader that keeps only scalar attributes, written from the Softprobe runtime's rules and the
// wire rules in docs/config.md, independent of filter-core's reader.
// ---------------------------------------------------------------------------------------------

/// What a scalar-only reader gets out of one span.
#[derive(Debug, Default)]
struct ScalarRead {
    method: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    host: Option<Vec<u8>>,
    /// Lower-case name → the value as one combined string (set-cookie: its lines).
    request: BTreeMap<String, Vec<Vec<u8>>>,
    response: BTreeMap<String, Vec<Vec<u8>>>,
    request_body: Vec<u8>,
    response_body: Vec<u8>,
    status: Option<i64>,
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        // Arrays, key-value lists and bytes are dropped, as the runtime drops them.
        _ => None,
    }
}

fn textual(headers: &BTreeMap<String, Vec<Vec<u8>>>) -> bool {
    let one = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.first())
            .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    if one("content-encoding").is_some_and(|e| !e.trim().is_empty() && e.trim() != "identity") {
        return false;
    }
    let Some(ct) = one("content-type") else {
        return false;
    };
    let media = ct.split(';').next().unwrap_or_default().trim().to_string();
    media.starts_with("text/")
        || [
            "application/json",
            "application/xml",
            "application/x-www-form-urlencoded",
        ]
        .contains(&media.as_str())
}

fn scalar_read(span: &Span) -> ScalarRead {
    let b64 = base64::engine::general_purpose::STANDARD;
    let attrs: BTreeMap<&str, String> = span
        .attributes
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key.as_str(),
                scalar_text(kv.value.as_ref()?.value.as_ref()?)?,
            ))
        })
        .collect();
    let mut out = ScalarRead::default();
    for (key, value) in &attrs {
        let (map, name) = if let Some(n) = key.strip_prefix("http.request.header.") {
            (&mut out.request, n)
        } else if let Some(n) = key.strip_prefix("http.response.header.") {
            (&mut out.response, n)
        } else {
            continue;
        };
        let marker = attrs.get(format!("transparent_cache.encoding.{key}").as_str());
        let bytes = if marker.is_some_and(|m| m == "base64") {
            b64.decode(value).expect("a marked header value is base64")
        } else {
            value.as_bytes().to_vec()
        };
        let lines = if name == "set-cookie" {
            bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
        } else {
            vec![bytes]
        };
        map.insert(name.to_string(), lines);
    }
    let first =
        |m: &BTreeMap<String, Vec<Vec<u8>>>, n: &str| m.get(n).and_then(|v| v.first()).cloned();
    out.method = first(&out.request, ":method");
    out.path = first(&out.request, ":path");
    out.host = attrs.get("url.host").map(|h| h.as_bytes().to_vec());
    out.status = attrs
        .get("http.response.status_code")
        .and_then(|s| s.parse().ok());
    for (attr, headers, body) in [
        ("http.request.body", &out.request, &mut out.request_body),
        ("http.response.body", &out.response, &mut out.response_body),
    ] {
        let Some(text) = attrs.get(attr) else {
            continue;
        };
        let marked = attrs
            .get(format!("{attr}.encoding").as_str())
            .is_some_and(|e| e == "base64");
        *body = if !textual(headers) {
            // By content type alone, as the agents read it: the marker is not needed.
            b64.decode(text)
                .unwrap_or_else(|_| text.as_bytes().to_vec())
        } else if marked {
            // Text by its type but not UTF-8: the one case only the marker can tell.
            b64.decode(text).expect("a marked body is base64")
        } else {
            text.as_bytes().to_vec()
        };
    }
    out
}

/// The value a header's lines must read back as: combined as RFC 9110 allows (set-cookie: the
/// lines), each line hashed first when the name is redacted.
fn expected_lines(name: &str, lines: &[Vec<u8>], redactor: &Redactor) -> Vec<Vec<u8>> {
    let lines: Vec<Vec<u8>> = if redactor.is_redacted(name) {
        lines
            .iter()
            .map(|l| codec::redacted(l).into_bytes())
            .collect()
    } else {
        lines.to_vec()
    };
    match name {
        "set-cookie" => lines,
        _ => vec![filter_core::encoding::combine(name, &lines)],
    }
}

fn grouped(headers: &[(Vec<u8>, Vec<u8>)]) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (n, v) in headers {
        out.entry(String::from_utf8_lossy(n).to_ascii_lowercase())
            .or_default()
            .push(v.clone());
    }
    out
}

/// A response as sent: status, header lines, body.
type SentResponse<'a> = (u16, &'a [(Vec<u8>, Vec<u8>)], &'a [u8]);

/// Mismatches between a span read by the scalar reader and the exchange that made it.
fn scalar_losses(
    span: &Span,
    method: &str,
    path: &[u8],
    request_headers: &[(Vec<u8>, Vec<u8>)],
    request_body: &[u8],
    response: Option<SentResponse<'_>>,
    redactor: &Redactor,
) -> Vec<String> {
    let got = scalar_read(span);
    let mut errors = Vec::new();
    if got.method.as_deref() != Some(method.as_bytes()) {
        errors.push(format!("method from :method: {:?}", got.method));
    }
    if got.path.as_deref() != Some(path) {
        errors.push(format!("path from :path: {:?}", got.path));
    }
    if got.host.is_none() {
        errors.push("url.host missing".into());
    }
    for (name, lines) in grouped(request_headers) {
        if got.request.get(&name) != Some(&expected_lines(&name, &lines, redactor)) {
            errors.push(format!(
                "request header `{name}`: {:?}",
                got.request.get(&name)
            ));
        }
    }
    if got.request_body != request_body {
        errors.push(format!(
            "request body: {} bytes read, {} sent",
            got.request_body.len(),
            request_body.len()
        ));
    }
    if let Some((status, headers, body)) = response {
        if got.status != Some(i64::from(status)) {
            errors.push(format!("status {:?}", got.status));
        }
        for (name, lines) in grouped(headers) {
            if name.starts_with(':') {
                continue;
            }
            if got.response.get(&name) != Some(&expected_lines(&name, &lines, redactor)) {
                errors.push(format!(
                    "response header `{name}`: {:?}",
                    got.response.get(&name)
                ));
            }
        }
        if got.response_body != body {
            errors.push(format!(
                "response body: {} bytes read, {} sent",
                got.response_body.len(),
                body.len()
            ));
        }
    }
    errors
}

fn only_span(body: &[u8]) -> Span {
    let traces = codec::decode_traces(body, Format::Protobuf).expect("our span decodes");
    let spans: Vec<_> = traces.spans().map(|(_, s)| s.clone()).collect();
    assert_eq!(spans.len(), 1);
    spans.into_iter().next().unwrap()
}

#[test]
fn a_scalar_only_reader_loses_nothing_of_our_spans_in_any_golden_case() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden");
    let base: Json =
        serde_json::from_slice(&std::fs::read(dir.join("base-config.json")).unwrap()).unwrap();
    let cases = golden::load_dir(&dir.join("cases")).unwrap();
    let mut checked = 0;
    let mut errors = Vec::new();
    for case in &cases {
        let config = Config::from_value(&golden::case_config(case, &base)).unwrap();
        let obs = golden::replay(case, &base).unwrap();
        let req = &case.request;
        let mut headers = req.engine_headers();
        let body = req.body_bytes();
        if req.body.len() == 1 {
            headers.push((
                b"content-length".to_vec(),
                body.len().to_string().into_bytes(),
            ));
        }
        let up = &case.upstream;
        let up_headers: Vec<(Vec<u8>, Vec<u8>)> = up
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect();
        let up_body = if req.method.eq_ignore_ascii_case("HEAD") {
            Vec::new()
        } else {
            up.body.to_vec()
        };
        for (kind, bodies, response) in [
            ("inject", &obs.inject, None),
            (
                "extract",
                &obs.extract,
                Some((up.status, up_headers.as_slice(), up_body.as_slice())),
            ),
        ] {
            for (_, span_body) in bodies {
                checked += 1;
                let span = only_span(span_body);
                for e in scalar_losses(
                    &span,
                    &req.method,
                    &req.path.to_vec(),
                    &headers,
                    &body,
                    response,
                    config.redactor(),
                ) {
                    errors.push(format!("{} ({kind}): {e}", case.name));
                }
            }
        }
    }
    assert!(checked > 80, "only {checked} spans checked");
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scalar_only_reader_loses_nothing_of_what_our_filter_sends_through_envoy() {
    let backend = FakeBackend::start().await.unwrap();
    let config = json!({
        "backend": {"cluster": shape::BACKEND_CLUSTER, "authority": "backend.local",
                    "lookup_timeout_ms": 2000, "record_timeout_ms": 2000},
        "redact_headers": ["authorization"]
    });
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    for shape in [
        Shape::Wasm {
            hold_headers: false,
        },
        Shape::Native { hold_headers: true },
    ] {
        let rig = rig(shape, backend.addr(), config.clone()).await.unwrap();
        rig.up
            .set_script(&Script {
                status: 200,
                headers: vec![
                    HeaderField::new("content-type", "application/x-custom-bin"),
                    HeaderField::new("set-cookie", "a=1; Path=/"),
                    HeaderField::new("set-cookie", "b=2, c=3; Path=/"),
                    HeaderField::new("x-resp-multi", "r1"),
                    HeaderField::new("x-resp-multi", "r2, r3"),
                ],
                body_base64: binary.clone(),
                trailers: Vec::new(),
            })
            .await
            .unwrap();
        backend.clear_received().await.unwrap();
        let sent_headers: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (
                b"content-type".to_vec(),
                b"application/octet-stream".to_vec(),
            ),
            (b"x-multi".to_vec(), b"a".to_vec()),
            (b"x-multi".to_vec(), b"b, c".to_vec()),
            (b"x-latin1".to_vec(), b"caf\xe9".to_vec()),
            (b"authorization".to_vec(), b"Bearer secret".to_vec()),
        ];
        let mut req = RawRequest::new("POST", "/upload?x=1");
        for (n, v) in &sent_headers {
            req = req.header(n, v);
        }
        let req = req.body(Body::ContentLength(vec![b"QUJDRA==".to_vec()]));
        let r = raw::send(rig.site(), &req, T).await.unwrap();
        assert_eq!(r.status, 200, "{}", shape.name());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let extract = loop {
            let got = backend.received_on("/v1/traces").await.unwrap();
            if let Some(x) = got.into_iter().next() {
                break x;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: no record",
                shape.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let inject = backend.received_on("/v1/inject").await.unwrap();
        let redactor = Redactor::new(["authorization"]);
        let resp_headers: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"set-cookie".to_vec(), b"a=1; Path=/".to_vec()),
            (b"set-cookie".to_vec(), b"b=2, c=3; Path=/".to_vec()),
            (b"x-resp-multi".to_vec(), b"r1".to_vec()),
            (b"x-resp-multi".to_vec(), b"r2, r3".to_vec()),
            (
                b"content-type".to_vec(),
                b"application/x-custom-bin".to_vec(),
            ),
        ];
        let mut errors = Vec::new();
        for (what, body, response) in [
            ("inject", &inject[0].body_base64, None),
            (
                "extract",
                &extract.body_base64,
                Some((200u16, resp_headers.as_slice(), binary.as_slice())),
            ),
        ] {
            let span = only_span(body);
            for e in scalar_losses(
                &span,
                "POST",
                b"/upload?x=1",
                &sent_headers,
                b"QUJDRA==",
                response,
                &redactor,
            ) {
                errors.push(format!("{what}: {e}"));
            }
        }
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            shape.name(),
            errors.join("\n")
        );
    }
}
