use super::*;

fn err(json: &str) -> ConfigError {
    Config::from_json(json.as_bytes()).unwrap_err()
}

#[test]
fn empty_input_means_defaults() {
    for input in ["", "  \n", "{}"] {
        let c = Config::from_json(input.as_bytes()).unwrap();
        assert_eq!(c.mode, Mode::RecordAndInject);
        assert_eq!(c.backend.cluster, "outbound|443||o.softprobe.ai");
        assert_eq!(c.backend.lookup_timeout_ms, 500);
        assert_eq!(c.backend.record_timeout_ms, 5000);
        assert_eq!(c.recordable_statuses, vec![200]);
        assert_eq!(c.request_mode, RequestMode::StreamHeaders);
        assert_eq!(c.hit_header.as_deref(), Some("x-softprobe-cache"));
        assert_eq!(c.backend.auth_header, "authorization");
        assert_eq!(c.session_sources, crate::config::default_session_sources());
        assert!(!c.require_session && !c.propagate_session);
        assert_eq!(c.on_error_answer, OnErrorAnswer::PassThrough);
        assert_eq!(
            c.verdict_header.as_deref(),
            Some("x-softprobe-cache-verdict")
        );
        assert!(c.redactor.is_redacted("authorization"));
        assert!(c.redactor.is_redacted("set-cookie"));
    }
}

#[test]
fn every_key_is_read() {
    let c = Config::from_json(
        br#"{
        "mode": "inject_only",
        "backend": {"cluster": "sp", "authority": "Backend.Local:4318", "inject_path": "/i",
                    "traces_path": "/t", "auth_header": "Authorization", "api_key": "k",
                    "lookup_timeout_ms": 50, "record_timeout_ms": 60},
        "service_name": "checkout",
        "traffic_direction": "inbound",
        "session_id_sources": ["header:X-Session", "tracestate:x-sp-session-id"],
        "require_session": true,
        "propagate_session": false,
        "on_error_answer": "serve",
        "recordable_statuses": [200, 201],
        "max_request_body_bytes": 10,
        "max_response_body_bytes": 20,
        "request_mode": "hold_headers",
        "on_backend_error": "fail",
        "rules": {"methods": ["get"], "include_hosts": ["api\\..*"], "exclude_hosts": ["x"],
                  "include_paths": ["/v2/.*"], "exclude_paths": ["/v2/health"], "exempt_otlp_paths": false},
        "redact_headers": ["X-Secret"],
        "mark_hits": true,
        "hit_header": "X-Cache"
    }"#,
    )
    .unwrap();
    assert_eq!(c.mode, Mode::InjectOnly);
    assert_eq!(c.backend.cluster, "sp");
    assert_eq!(c.backend.authority, "backend.local:4318");
    assert_eq!(c.backend.inject_path, "/i");
    assert_eq!(c.backend.traces_path, "/t");
    assert_eq!(c.backend.auth_header, "authorization");
    assert_eq!(c.backend.api_key.as_deref(), Some("k"));
    assert_eq!(
        (c.backend.lookup_timeout_ms, c.backend.record_timeout_ms),
        (50, 60)
    );
    assert_eq!(c.service_name.as_deref(), Some("checkout"));
    assert_eq!(c.traffic_direction, Direction::Inbound);
    assert_eq!(
        c.session_sources,
        vec![
            SessionSource::Header("x-session".into()),
            SessionSource::Tracestate("x-sp-session-id".into())
        ]
    );
    assert!(c.require_session);
    assert!(
        !c.propagate_session,
        "explicit false wins over the inbound default"
    );
    assert_eq!(c.on_error_answer, OnErrorAnswer::Serve);
    assert_eq!(c.recordable_statuses, vec![200, 201]);
    assert_eq!(
        (c.max_request_body_bytes, c.max_response_body_bytes),
        (10, 20)
    );
    assert_eq!(c.request_mode, RequestMode::HoldHeaders);
    assert_eq!(c.on_backend_error, OnBackendError::Fail);
    assert_eq!(c.rules.methods, vec!["GET"]);
    assert_eq!(c.rules.backend_host, "backend.local");
    assert!(!c.rules.exempt_otlp_paths);
    assert_eq!(c.rules.include_hosts.len(), 1);
    assert!(c.redactor.is_redacted("x-secret"));
    assert!(!c.redactor.is_redacted("authorization"));
    assert_eq!(c.hit_header.as_deref(), Some("x-cache"));
}

#[test]
fn unknown_key_suggests_the_closest() {
    let e = err(r#"{"max_body": 10}"#);
    assert_eq!(e.key, "max_body");
    assert_eq!(
        e.to_string(),
        "config key `max_body`: unknown config key `max_body`; did you mean `max_request_body_bytes`?"
    );
    assert!(err(r#"{"mdoe": "off"}"#)
        .message
        .contains("did you mean `mode`?"));
    let nested = err(r#"{"backend": {"lookup_timeout": 5}}"#);
    assert_eq!(nested.key, "backend.lookup_timeout");
    assert!(
        nested
            .message
            .contains("did you mean `backend.lookup_timeout_ms`?"),
        "{nested}"
    );
    let far = err(r#"{"zzzzzz": 1}"#);
    assert!(
        far.message.contains("known keys here: mode, backend"),
        "{far}"
    );
}

#[test]
fn wrong_types_say_what_is_expected() {
    let e = err(r#"{"backend": {"lookup_timeout_ms": "500ms"}}"#);
    assert_eq!(e.key, "backend.lookup_timeout_ms");
    assert!(
        e.message.contains("expected a duration in milliseconds"),
        "{e}"
    );
    assert!(e.message.contains("\"500ms\""), "{e}");
    let e = err(r#"{"mode": "cache"}"#);
    assert!(
        e.message
            .contains("`record_and_inject`, `record_only`, `inject_only`, `propagate_only`, `off`"),
        "{e}"
    );
    let e = err(r#"{"recordable_statuses": [200, 99]}"#);
    assert_eq!(e.key, "recordable_statuses[1]");
    let e = err(r#"{"session_id_sources": "x-id"}"#);
    assert!(e.message.contains("expected an array of strings"), "{e}");
    let e = err(r#"{"session_id_sources": ["x-id"]}"#);
    assert_eq!(e.key, "session_id_sources[0]");
    assert!(e.message.contains("\"header:<name>\""), "{e}");
    let e = err(r#"{"session_id_sources": ["tracestate:Upper"]}"#);
    assert!(e.message.contains("W3C tracestate key"), "{e}");
    let e = err(r#"{"session_id_headers": ["x-id"]}"#);
    assert!(
        e.message.contains("replaced by `session_id_sources`"),
        "{e}"
    );
    let e = err(r#"{"traffic_direction": "inbound", "session_id_sources": ["header:x-id"]}"#);
    assert_eq!(e.key, "propagate_session");
    let e = err(r#"{"on_error_answer": "block"}"#);
    assert!(e.message.contains("`pass_through`, `serve`"), "{e}");
    let e = err(r#"{"rules": []}"#);
    assert_eq!(e.key, "rules");
    let e = err(r#"[1]"#);
    assert!(e.message.contains("expected an object"), "{e}");
    let e = err(r#"{"max_request_body_bytes": -1}"#);
    assert!(e.message.contains("non-negative integer"), "{e}");
    let e = err(r#"{"max_request_body_bytes": 1e12}"#);
    assert_eq!(e.key, "max_request_body_bytes");
    let e = err(r#"{"max_response_body_bytes": 100000000000}"#);
    assert!(e.message.contains("too large"), "{e}");
    let e = err(r#"{"backend": {"lookup_timeout_ms": 0}}"#);
    assert!(e.message.contains("at least 1 ms"), "{e}");
}

#[test]
fn values_are_validated() {
    assert_eq!(
        err(r#"{"backend": {"inject_path": "v1/inject"}}"#).key,
        "backend.inject_path"
    );
    assert_eq!(
        err(r#"{"backend": {"auth_header": "x y"}}"#).key,
        "backend.auth_header"
    );
    assert_eq!(
        err(r#"{"backend": {"cluster": ""}}"#).key,
        "backend.cluster"
    );
    assert_eq!(
        err(r#"{"backend": {"api_key": "a\nb"}}"#).key,
        "backend.api_key"
    );
    assert_eq!(
        err(r#"{"redact_headers": ["bad header"]}"#).key,
        "redact_headers[0]"
    );
    assert_eq!(err(r#"{"hit_header": ":x"}"#).key, "hit_header");
    assert_eq!(err(r#"{"service_name": " "}"#).key, "service_name");
    assert_eq!(
        err(r#"{"rules": {"methods": ["G ET"]}}"#).key,
        "rules.methods[0]"
    );
}

#[test]
fn invalid_patterns_name_the_pattern() {
    let e = err(r#"{"rules": {"exclude_paths": ["/ok", "/health("]}}"#);
    assert_eq!(e.key, "rules.exclude_paths[1]");
    assert!(e.message.contains("invalid pattern \"/health(\""), "{e}");
}

#[test]
fn invalid_json_is_reported() {
    let e = err("{\"mode\": ");
    assert!(
        e.to_string()
            .starts_with("invalid transparent-cache config: not valid JSON"),
        "{e}"
    );
}

#[test]
fn mark_hits_false_removes_the_marker() {
    let c = Config::from_json(br#"{"mark_hits": false}"#).unwrap();
    assert_eq!(c.hit_header, None);
}

#[test]
fn verdict_header_is_a_name_or_false() {
    let c = Config::from_json(br#"{"verdict_header": "X-Cache-Verdict"}"#).unwrap();
    assert_eq!(c.verdict_header.as_deref(), Some("x-cache-verdict"));
    let c = Config::from_json(br#"{"verdict_header": false}"#).unwrap();
    assert_eq!(c.verdict_header, None);
    // null means the default, like every key.
    let c = Config::from_json(br#"{"verdict_header": null}"#).unwrap();
    assert_eq!(c.verdict_header.as_deref(), Some(DEFAULT_VERDICT_HEADER));
    for bad in [
        r#"{"verdict_header": ":status"}"#,
        r#"{"verdict_header": "a b"}"#,
        r#"{"verdict_header": ""}"#,
        r#"{"verdict_header": true}"#,
        r#"{"verdict_header": 7}"#,
    ] {
        assert_eq!(err(bad).key, "verdict_header", "{bad}");
    }
    assert!(err(r#"{"verdict_header": true}"#)
        .message
        .contains("a header name or false"));
}

#[test]
fn null_means_default() {
    let c = Config::from_json(br#"{"service_name": null, "backend": {"api_key": null}}"#).unwrap();
    assert_eq!(c.service_name, None);
    assert_eq!(c.backend.api_key, None);
}

#[test]
fn the_breaker_is_on_by_default_and_can_be_tuned_or_turned_off() {
    let c = Config::from_json(b"{}").unwrap();
    assert_eq!(c.breaker().consecutive_failures, 5);
    let c = Config::from_json(br#"{"breaker": false}"#).unwrap();
    assert_eq!(c.breaker().consecutive_failures, 0);
    let c = Config::from_json(
        br#"{"breaker": {"consecutive_failures": 2, "backoff_ms": 10, "max_backoff_ms": 20}}"#,
    )
    .unwrap();
    assert_eq!(
        (
            c.breaker().consecutive_failures,
            c.breaker().backoff_ms,
            c.breaker().max_backoff_ms
        ),
        (2, 10, 20)
    );
    assert_eq!(
        err(r#"{"breaker": {"backoff_ms": 0}}"#).key,
        "breaker.backoff_ms"
    );
    let e = err(r#"{"breaker": {"backoff_ms": 100, "max_backoff_ms": 10}}"#);
    assert!(e.message.contains("at least backoff_ms"), "{e}");
    assert!(err(r#"{"breaker": true}"#)
        .message
        .contains("an object or false"));
    assert!(err(r#"{"breaker": {"failures": 1}}"#)
        .message
        .contains("consecutive_failures"));
}

#[test]
fn record_batches_are_bounded_and_can_be_turned_into_single_records() {
    let r = Config::from_json(b"{}").unwrap().records();
    assert_eq!(
        (r.batch_max_records, r.batch_max_bytes, r.linger_ms),
        (64, 1 << 20, 5)
    );
    let r = Config::from_json(
        br#"{"records": {"batch_max_records": 1, "batch_max_bytes": 4096, "linger_ms": 0}}"#,
    )
    .unwrap()
    .records();
    assert_eq!(
        (r.batch_max_records, r.batch_max_bytes, r.linger_ms),
        (1, 4096, 0)
    );
    assert_eq!(
        err(r#"{"records": {"batch_max_records": 0}}"#).key,
        "records.batch_max_records"
    );
    assert_eq!(
        err(r#"{"records": {"linger_ms": 5000}}"#).key,
        "records.linger_ms"
    );
    let e = err(r#"{"records": {"batch_records": 8}}"#);
    assert!(e.to_string().contains("batch_max_records"), "{e}");
}

/// The probes Envoy's matcher uses to skip the filter: every request the engine finds a session
/// in matches one; a request without the header or tracestate entry matches none.
#[test]
fn session_probes_match_every_request_that_may_carry_a_session() {
    let c = Config::from_json(
        br#"{"session_id_sources": ["header:x-test-session", "tracestate:sp*id"]}"#,
    )
    .unwrap();
    let probes: Vec<(String, regex_lite::Regex)> = c
        .session_sources()
        .iter()
        .map(|s| {
            let (h, p) = s.probe();
            (
                h.to_string(),
                regex_lite::Regex::new(&format!("^(?:{p})$")).unwrap(),
            )
        })
        .collect();
    let matches = |header: &str, value: &str| {
        probes
            .iter()
            .any(|(h, re)| h == header && re.is_match(value))
    };
    assert!(matches("x-test-session", "s-1"));
    assert!(matches("x-test-session", ""));
    assert!(!matches("x-other", "s-1"));
    assert!(matches("tracestate", "sp*id=s-1"));
    assert!(matches("tracestate", "vendor=a,sp*id=s-1"));
    assert!(matches("tracestate", "vendor=a, \tsp*id=s-1,more=b"));
    assert!(!matches("tracestate", "vendor=a"));
    assert!(!matches("tracestate", "xsp*id=s-1"));
    assert!(!matches("tracestate", "vendor=a,x-sp*id=s-1"));
    assert!(!matches("tracestate", "spxid=s-1"), "`*` is literal");
}
