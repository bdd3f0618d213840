//! Helpers for the end-to-end tests: start the real binary, build spans with
//! `opentelemetry-proto` (independently of filter-core's encoder), read answers back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
use prost::Message as _;
use serde_json::{json, Value as Json};

pub const PROTOBUF: &str = "application/x-protobuf";
pub const JSON: &str = "application/json";

/// The backend binary, running on a free port.
pub struct Server {
    child: Child,
    pub url: String,
    pub data: PathBuf,
    pub log: PathBuf,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Server {
    /// Starts `backend serve` on `data` with extra flags and waits until `/healthz` answers.
    pub async fn start(data: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let log = data.with_extension(format!("{port}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_backend"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(data)
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap();
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            data: data.to_path_buf(),
            log,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = client();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("backend exited early ({status}): {}", self.logs());
            }
            if let Ok(r) = client.get(format!("{}/healthz", self.url)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "backend not ready: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the server logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    // These tests speak plain HTTP, but when the whole workspace is built together Cargo unifies
    // reqwest's features with filter-sidecar's (rustls without a built-in crypto provider), and such
    // a reqwest refuses to build a client until a process-wide provider is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// One HTTP exchange as the filter would describe it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub service: String,
    pub session: Option<String>,
    pub method: String,
    pub host: String,
    pub path: String,
    pub req_headers: Vec<(String, Vec<String>)>,
    pub req_body: Vec<u8>,
    pub status: i64,
    pub resp_headers: Vec<(String, Vec<String>)>,
    pub resp_body: Vec<u8>,
}

impl Exchange {
    pub fn get(path: &str, resp_body: &[u8]) -> Exchange {
        Exchange {
            service: "checkout".into(),
            session: Some("session-1".into()),
            method: "GET".into(),
            host: "api.example.com".into(),
            path: path.into(),
            req_headers: vec![
                (":method".into(), vec!["GET".into()]),
                (":path".into(), vec![path.into()]),
                (":authority".into(), vec!["api.example.com".into()]),
                ("accept".into(), vec!["*/*".into()]),
            ],
            req_body: Vec::new(),
            status: 200,
            resp_headers: vec![("content-type".into(), vec!["text/plain".into()])],
            resp_body: resp_body.to_vec(),
        }
    }

    pub fn post(path: &str, req_body: &[u8], resp_body: &[u8]) -> Exchange {
        let mut e = Exchange::get(path, resp_body);
        e.method = "POST".into();
        e.req_headers[0].1 = vec!["POST".into()];
        e.req_body = req_body.to_vec();
        e
    }

    pub fn with_req_header(mut self, name: &str, value: &str) -> Exchange {
        self.req_headers.push((name.into(), vec![value.into()]));
        self
    }

    fn request_attrs(&self, span_type: &str) -> Vec<KeyValue> {
        let mut a = vec![kv("sp.span.type", s(span_type))];
        if let Some(id) = &self.session {
            a.push(kv("sp.session.id", s(id)));
        }
        a.push(kv("sp.service.name", s(&self.service)));
        a.push(kv("sp.traffic.direction", s("outbound")));
        a.push(kv("url.host", s(&self.host)));
        a.push(kv("url.path", s(&self.path)));
        a.push(kv("http.request.method", s(&self.method)));
        push_headers(&mut a, "http.request.header.", &self.req_headers);
        push_body(&mut a, "http.request.body", &self.req_body);
        a
    }

    fn span(&self, span_type: &str, attributes: Vec<KeyValue>) -> Vec<u8> {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s(&self.service))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "e2e-test".into(),
                        ..Default::default()
                    }),
                    spans: vec![Span {
                        trace_id: vec![7; 16],
                        span_id: vec![9; 8],
                        name: span_type.into(),
                        kind: 3,
                        start_time_unix_nano: 1,
                        end_time_unix_nano: 2,
                        attributes,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        req.encode_to_vec()
    }

    /// The `/v1/traces` protobuf body.
    pub fn extract(&self) -> Vec<u8> {
        let mut a = self.request_attrs("extract");
        a.push(kv(
            "http.response.status_code",
            any_value::Value::IntValue(self.status),
        ));
        push_headers(&mut a, "http.response.header.", &self.resp_headers);
        push_body(&mut a, "http.response.body", &self.resp_body);
        self.span("extract", a)
    }

    /// The `/v1/inject` protobuf body.
    pub fn inject(&self) -> Vec<u8> {
        self.span("inject", self.request_attrs("inject"))
    }

    fn json_span(&self, span_type: &str, with_response: bool) -> Json {
        let mut a = vec![json_kv("sp.span.type", json!({"stringValue": span_type}))];
        if let Some(id) = &self.session {
            a.push(json_kv("sp.session.id", json!({"stringValue": id})));
        }
        a.push(json_kv(
            "sp.service.name",
            json!({"stringValue": self.service}),
        ));
        a.push(json_kv("url.host", json!({"stringValue": self.host})));
        a.push(json_kv("url.path", json!({"stringValue": self.path})));
        a.push(json_kv(
            "http.request.method",
            json!({"stringValue": self.method}),
        ));
        json_headers(&mut a, "http.request.header.", &self.req_headers);
        json_body(&mut a, "http.request.body", &self.req_body);
        if with_response {
            a.push(json_kv(
                "http.response.status_code",
                json!({"intValue": self.status.to_string()}),
            ));
            json_headers(&mut a, "http.response.header.", &self.resp_headers);
            json_body(&mut a, "http.response.body", &self.resp_body);
        }
        json!({"resourceSpans": [{
            "resource": {"attributes": [json_kv("service.name", json!({"stringValue": self.service}))]},
            "scopeSpans": [{"scope": {"name": "e2e-test"}, "spans": [{
                "traceId": "07070707070707070707070707070707",
                "spanId": "0909090909090909",
                "name": span_type,
                "kind": 3,
                "startTimeUnixNano": "1",
                "endTimeUnixNano": "2",
                "attributes": a,
            }]}]
        }]})
    }

    /// The `/v1/traces` OTLP JSON body, built by hand.
    pub fn extract_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json_span("extract", true)).unwrap()
    }

    /// The `/v1/inject` OTLP JSON body, built by hand.
    pub fn inject_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json_span("inject", false)).unwrap()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn push_headers(a: &mut Vec<KeyValue>, prefix: &str, headers: &[(String, Vec<String>)]) {
    for (name, values) in headers {
        let value = match values.as_slice() {
            [one] => s(one),
            many => any_value::Value::ArrayValue(ArrayValue {
                values: many
                    .iter()
                    .map(|v| AnyValue { value: Some(s(v)) })
                    .collect(),
            }),
        };
        a.push(kv(&format!("{prefix}{name}"), value));
    }
}

fn push_body(a: &mut Vec<KeyValue>, attr: &str, body: &[u8]) {
    if body.is_empty() {
        return;
    }
    match std::str::from_utf8(body) {
        Ok(text) => a.push(kv(attr, s(text))),
        Err(_) => {
            a.push(kv(attr, s(&b64(body))));
            a.push(kv(&format!("{attr}.encoding"), s("base64")));
        }
    }
}

fn json_kv(key: &str, value: Json) -> Json {
    json!({"key": key, "value": value})
}

fn json_headers(a: &mut Vec<Json>, prefix: &str, headers: &[(String, Vec<String>)]) {
    for (name, values) in headers {
        let value = match values.as_slice() {
            [one] => json!({"stringValue": one}),
            many => json!({"arrayValue": {"values":
                many.iter().map(|v| json!({"stringValue": v})).collect::<Vec<_>>()}}),
        };
        a.push(json_kv(&format!("{prefix}{name}"), value));
    }
}

fn json_body(a: &mut Vec<Json>, attr: &str, body: &[u8]) {
    if body.is_empty() {
        return;
    }
    match std::str::from_utf8(body) {
        Ok(text) => a.push(json_kv(attr, json!({"stringValue": text}))),
        Err(_) => {
            a.push(json_kv(attr, json!({"stringValue": b64(body)})));
            a.push(json_kv(
                &format!("{attr}.encoding"),
                json!({"stringValue": "base64"}),
            ));
        }
    }
}

pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A recorded response as read back from an inject answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: i64,
    pub headers: Vec<(String, Vec<String>)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&Vec<String>> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

fn str_of(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

/// Reads the first span with `http.response.*` attributes of a protobuf answer.
pub fn read_answer(bytes: &[u8]) -> Answer {
    let traces = TracesData::decode(bytes).unwrap();
    let span = traces
        .resource_spans
        .iter()
        .flat_map(|r| r.scope_spans.iter())
        .flat_map(|s| s.spans.iter())
        .find(|s| {
            s.attributes
                .iter()
                .any(|a| a.key.starts_with("http.response."))
        })
        .expect("a span with a response");
    let mut answer = Answer {
        status: 200,
        headers: vec![],
        body: vec![],
    };
    let base64 = span
        .attributes
        .iter()
        .any(|a| a.key == "http.response.body.encoding" && str_of(&a.value) == "base64");
    for a in &span.attributes {
        if a.key == "http.response.status_code" {
            match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::IntValue(i)) => answer.status = *i,
                other => panic!("status: {other:?}"),
            }
        } else if let Some(name) = a.key.strip_prefix("http.response.header.") {
            // The exact lines when the name repeats (an array beside the combined string).
            let lines = span
                .attributes
                .iter()
                .find(|l| l.key == format!("transparent_cache.lines.{}", a.key));
            let values = match lines.and_then(|l| l.value.as_ref()?.value.as_ref()) {
                Some(any_value::Value::ArrayValue(arr)) => arr
                    .values
                    .iter()
                    .map(|v| str_of(&Some(v.clone())))
                    .collect(),
                _ => vec![str_of(&a.value)],
            };
            answer.headers.push((name.to_string(), values));
        } else if a.key == "http.response.body" {
            answer.body = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::BytesValue(b)) => b.clone(),
                _ if base64 => base64::engine::general_purpose::STANDARD
                    .decode(str_of(&a.value))
                    .unwrap(),
                _ => str_of(&a.value).into_bytes(),
            };
        }
    }
    answer
}

/// Reads an OTLP JSON answer.
pub fn read_json_answer(bytes: &[u8]) -> Answer {
    let doc: Json = serde_json::from_slice(bytes).unwrap();
    let attrs = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
        .as_array()
        .unwrap()
        .clone();
    let get = |k: &str| {
        attrs
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"].clone())
    };
    let status = match get("http.response.status_code") {
        Some(v) => match &v["intValue"] {
            Json::String(s) => s.parse().unwrap(),
            Json::Number(n) => n.as_i64().unwrap(),
            other => panic!("status {other}"),
        },
        None => 200,
    };
    let mut headers = vec![];
    for a in &attrs {
        if let Some(name) = a["key"]
            .as_str()
            .unwrap()
            .strip_prefix("http.response.header.")
        {
            let lines = get(&format!(
                "transparent_cache.lines.{}",
                a["key"].as_str().unwrap()
            ));
            let v = lines.as_ref().unwrap_or(&a["value"]);
            let values = match v.get("arrayValue") {
                Some(arr) => arr["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x["stringValue"].as_str().unwrap().to_string())
                    .collect(),
                None => vec![v["stringValue"].as_str().unwrap().to_string()],
            };
            headers.push((name.to_string(), values));
        }
    }
    let base64 = get("http.response.body.encoding").is_some_and(|v| v["stringValue"] == "base64");
    let body = match get("http.response.body") {
        None => vec![],
        Some(v) => {
            let text = v["stringValue"].as_str().unwrap();
            if base64 {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .unwrap()
            } else {
                text.as_bytes().to_vec()
            }
        }
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// A POST of a body with a content type, to add headers to before sending.
pub fn post_request(url: &str, content_type: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    client()
        .post(url)
        .header("content-type", content_type)
        .body(body)
}

/// POSTs a body with a content type.
pub async fn post(url: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    post_request(url, content_type, body).send().await.unwrap()
}

/// Records an exchange (protobuf) and checks the 200.
pub async fn record(server: &Server, e: &Exchange) {
    let r = post(&server.at("/v1/traces"), PROTOBUF, e.extract()).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

/// Looks an exchange up (protobuf); the answer on a hit, None on a 404.
pub async fn lookup(server: &Server, e: &Exchange) -> Option<Answer> {
    let r = post_request(&server.at("/v1/inject"), PROTOBUF, e.inject())
        .header("accept", PROTOBUF)
        .send()
        .await
        .unwrap();
    match r.status().as_u16() {
        200 => Some(read_answer(&r.bytes().await.unwrap())),
        404 => {
            assert_eq!(
                &r.bytes().await.unwrap()[..],
                br#"{"error":"no inject match"}"#,
                "a miss answers as the Softprobe runtime does"
            );
            None
        }
        other => panic!("lookup answered {other}: {:?}", r.text().await),
    }
}

/// The `/metrics` page.
pub async fn metrics_text(server: &Server) -> String {
    client()
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one metric.
pub async fn metric(server: &Server, name: &str) -> u64 {
    let text = metrics_text(server).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// The admin list.
pub async fn list(server: &Server, query: &str) -> Json {
    get_json(server, &format!("/admin/recordings{query}")).await
}

/// GET a JSON document.
pub async fn get_json(server: &Server, path: &str) -> Json {
    let r = client().get(server.at(path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Lower-case hex SHA-256 of `data` (the filter's redaction, computed independently).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
