//! `Site::skip_without_session` through real Envoy: with `require_session`, Envoy skips the filter
//! (an `ExtensionWithMatcher` built from `session_id_sources`) for requests that carry no session,
//! so the filter never runs for them (its counters do not move), while a request with a session
//! in a header or in `tracestate` is still looked up. Native module and wasm plugin.

use anyhow::{Context, Result};
use serde_json::json;
use std::time::Duration;
use testbed::raw::{self, RawRequest};
use testbed::{shape, DemoUpstream, Envoy, FakeBackend, HeaderField, Layout, Shape, Site};

const T: Duration = Duration::from_secs(15);

async fn run(shape: Shape) -> Result<()> {
    let (up, backend) = tokio::try_join!(DemoUpstream::start(), FakeBackend::start())?;
    let config = json!({
        "backend": {"cluster": shape::BACKEND_CLUSTER, "authority": "backend.local"},
        "service_name": "skip-e2e",
        "require_session": true,
    });
    let layout = Layout {
        admin_port: 0,
        upstream: up.addr(),
        backend: backend.addr(),
        refused: None,
        sites: vec![Site {
            name: "main".into(),
            port: 0,
            plugin_config: config,
            skip_without_session: true,
        }],
        access_log: None,
    };
    let (yaml, env) = tokio::task::spawn_blocking(move || -> Result<_> {
        Ok((shape.envoy_yaml(&layout)?, shape.envoy_env()?))
    })
    .await??;
    let envoy = Box::pin(Envoy::start_with_env(&yaml, &[], &env)).await?;
    let addr = envoy.listener("main").context("listener")?;
    let requests = || async { Ok::<_, anyhow::Error>(shape.counters(&envoy.stats().await?)) };
    let send = |headers: Vec<(&'static str, &'static str)>| {
        let mut r = RawRequest::new("GET", "/skip");
        r.headers = vec![HeaderField::new("host", "api.example.com")];
        for (n, v) in headers {
            r.headers.push(HeaderField::new(n, v));
        }
        async move { raw::send(addr, &r, T).await }
    };

    // No session anywhere (a tracestate of another vendor included): the filter never runs.
    for headers in [vec![], vec![("tracestate", "vendor=a")]] {
        let r = send(headers).await?;
        assert_eq!(r.status, 200, "{}", envoy.log_tail(20));
    }
    let c = requests().await?;
    assert_eq!(c.get("requests").copied().unwrap_or(0), 0, "{c:?}");
    assert_eq!(up.requests().await?.len(), 2, "both reached the upstream");
    assert!(backend.received_on("/v1/inject").await?.is_empty());

    // A session in a header, or as a tracestate entry after another vendor's: looked up.
    for headers in [
        vec![("x-softprobe-session-id", "s-1")],
        vec![("tracestate", "vendor=a,x-softprobe-session-id=s-2")],
    ] {
        let r = send(headers).await?;
        assert_eq!(r.status, 200);
    }
    assert_eq!(backend.received_on("/v1/inject").await?.len(), 2);
    let c = requests().await?;
    assert_eq!(c.get("requests").copied().unwrap_or(0), 2, "{c:?}");
    Ok(())
}

#[tokio::test]
async fn native_module_is_skipped_for_requests_without_a_session() -> Result<()> {
    Box::pin(run(Shape::Native { hold_headers: true })).await
}

#[tokio::test]
async fn wasm_plugin_is_skipped_for_requests_without_a_session() -> Result<()> {
    Box::pin(run(Shape::Wasm { hold_headers: true })).await
}
