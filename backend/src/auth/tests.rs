use super::*;

const ADMIN: &str = "admin-0123456789abcdef";
const INGEST: &str = "ingest-0123456789abcdef";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn allowed(auth: &Auth, path: &str, h: &HeaderMap) -> bool {
    auth.allows(path, h).is_ok()
}

#[test]
fn each_endpoint_takes_its_secret() {
    let auth = Auth::new(Some(ADMIN), Some(INGEST));
    let admin = headers(&[("authorization", &format!("Bearer {ADMIN}"))]);
    let ingest = headers(&[("authorization", &format!("bearer {INGEST}"))]);
    let public_key = headers(&[("x-public-key", INGEST)]);
    let none = HeaderMap::new();
    assert!(allowed(&auth, "/admin/recordings", &admin));
    assert_eq!(
        auth.allows("/admin/recordings", &ingest),
        Err("admin token")
    );
    assert_eq!(auth.allows("/v1/inject", &none), Err("ingest key"));
    assert!(!allowed(&auth, "/admin/recordings", &ingest));
    assert!(!allowed(&auth, "/admin/export", &none));
    assert!(!allowed(
        &auth,
        "/admin/export",
        &headers(&[("x-public-key", ADMIN)])
    ));
    assert!(allowed(&auth, "/v1/inject", &ingest));
    assert!(allowed(&auth, "/v1/traces", &public_key));
    assert!(allowed(&auth, "/v1/traces", &admin));
    assert!(!allowed(&auth, "/v1/traces", &none));
    assert!(!allowed(
        &auth,
        "/v1/traces",
        &headers(&[("authorization", &format!("Bearer {INGEST}x"))])
    ));
    assert!(allowed(&auth, "/healthz", &none));
    assert!(allowed(&auth, "/metrics", &none));
    assert!(allowed(&Auth::default(), "/admin/recordings", &none));
}

#[test]
fn a_public_address_needs_both_secrets() {
    let any: SocketAddr = "0.0.0.0:4318".parse().unwrap();
    let lo: SocketAddr = "127.0.0.1:4318".parse().unwrap();
    assert!(check_listen(lo, &Auth::default()).is_ok());
    let e = check_listen(any, &Auth::new(Some(ADMIN), None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ingest key") && !e.contains("admin token"),
        "{e}"
    );
    assert!(check_listen(any, &Auth::new(Some(ADMIN), Some(INGEST))).is_ok());
}

#[test]
fn short_or_spaced_secrets_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "abc\n").unwrap();
    let e = Auth::load(Some(&short), None).unwrap_err().to_string();
    assert!(e.contains("admin token") && e.contains("16"), "{e}");
    let good = dir.path().join("good");
    std::fs::write(&good, format!("{ADMIN}\n")).unwrap();
    let auth = Auth::load(None, Some(&good)).unwrap();
    assert_eq!(auth.ingest.as_deref(), Some(ADMIN.as_bytes()));
}
