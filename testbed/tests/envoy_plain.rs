//! Real Envoy (pinned version, via scripts/ensure-envoy.sh) with the plain
//! config in front of the demo upstream.

use std::path::Path;
use std::time::Duration;
use testbed::demo_upstream::model::{Echo, Script};
use testbed::raw::{self, Body, RawRequest};
use testbed::{envoy_config, DemoUpstream, Envoy, HeaderField};

const T: Duration = Duration::from_secs(10);

async fn setup() -> (DemoUpstream, Envoy) {
    let up = DemoUpstream::start_with_binary(Path::new(env!("CARGO_BIN_EXE_demo-upstream")))
        .await
        .expect("start demo-upstream");
    let envoy = Envoy::start(&envoy_config::plain(0, 0, up.addr()))
        .await
        .expect("start envoy");
    (up, envoy)
}

#[tokio::test]
async fn chunked_post_arrives_byte_for_byte() {
    let (up, envoy) = setup().await;
    let chunks = vec![b"first-".to_vec(), vec![0u8, 1, 2, 255], b"-last".to_vec()];
    let whole: Vec<u8> = chunks.concat();
    let mut req = RawRequest::new("POST", "/upload?x=1")
        .header("x-one", "1")
        .header("x-rep", "a")
        .header("x-two", "two words")
        .header("x-rep", "b")
        .body(Body::Chunked(chunks));
    req.chunk_delay = Duration::from_millis(20);
    let r = raw::send(envoy.listener_addr(), &req, T).await.unwrap();
    assert_eq!(r.status, 200, "{}", envoy.log_tail(30));
    let echo: Echo = r.json().unwrap();
    assert_eq!(echo.body_bytes().unwrap(), whole);

    let got = up.requests().await.unwrap();
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert!(g.complete);
    assert_eq!(g.method, "POST");
    assert_eq!(g.path, "/upload?x=1");
    assert_eq!(g.body_base64, whole);
    assert_eq!(g.header("transfer-encoding").as_deref(), Some("chunked"));
    // Our headers arrive in the order sent, values untouched.
    let ours: Vec<HeaderField> = g
        .headers
        .iter()
        .filter(|h| {
            h.name.starts_with(b"x-")
                && !h.name.starts_with(b"x-envoy")
                && !h.name.starts_with(b"x-forwarded")
                && !h.name.starts_with(b"x-request-id")
        })
        .cloned()
        .collect();
    assert_eq!(
        ours,
        vec![
            HeaderField::new("x-one", "1"),
            HeaderField::new("x-rep", "a"),
            HeaderField::new("x-two", "two words"),
            HeaderField::new("x-rep", "b"),
        ]
    );
}

#[tokio::test]
async fn echo_serial_script_and_stats_through_envoy() {
    let (up, mut envoy) = setup().await;
    let addr = envoy.listener_addr();
    for n in 1..=2u64 {
        let r = raw::send(addr, &RawRequest::new("GET", "/e"), T)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-demo-serial"), Some(n.to_string()));
        assert_eq!(r.json::<Echo>().unwrap().serial, n);
    }
    up.set_script(&Script {
        status: 201,
        headers: vec![
            HeaderField::new("content-type", "text/plain"),
            HeaderField::new("x-canned", "yes"),
        ],
        body_base64: b"canned".to_vec(),
        trailers: Vec::new(),
    })
    .await
    .unwrap();
    let r = raw::send(addr, &RawRequest::new("GET", "/s"), T)
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.body, b"canned");
    assert_eq!(r.header("x-canned").as_deref(), Some("yes"));
    assert_eq!(r.header("x-demo-serial").as_deref(), Some("3"));
    assert_eq!(up.served().await.unwrap(), 3);

    let stats = envoy.stats().await.unwrap();
    assert_eq!(
        stats.get("cluster.upstream.upstream_rq_total"),
        Some(&3),
        "{stats:?}"
    );
    assert_eq!(
        envoy
            .stat("http.ingress_http.downstream_rq_2xx")
            .await
            .unwrap(),
        3
    );
    envoy
        .wait_for_log("starting main dispatch loop", T)
        .await
        .unwrap();
    assert!(envoy.log().contains("all dependencies initialized"));
}

#[tokio::test]
async fn envoy_at_a_closed_port_gives_503() {
    let closed = testbed::closed_port().unwrap();
    let envoy = Envoy::start(&envoy_config::plain(0, 0, closed.addr()))
        .await
        .unwrap();
    let r = raw::send(envoy.listener_addr(), &RawRequest::new("GET", "/"), T)
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(
        envoy
            .stat("cluster.upstream.upstream_cx_connect_fail")
            .await
            .unwrap()
            >= 1
    );
}

#[tokio::test]
async fn body_cut_short_by_the_client_is_recorded_incomplete() {
    let (up, envoy) = setup().await;
    let req = RawRequest::new("POST", "/cut")
        .header("content-length", "100")
        .body(Body::Raw(vec![b"0123456789".to_vec()]));
    let mut conn = raw::RawConnection::connect(envoy.listener_addr())
        .await
        .unwrap();
    conn.send_request(&req).await.unwrap();
    // Let Envoy forward the head and the first bytes before we vanish.
    let deadline = std::time::Instant::now() + T;
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if envoy
            .stat("cluster.upstream.upstream_rq_total")
            .await
            .unwrap()
            >= 1
        {
            break;
        }
    }
    drop(conn);
    let got = loop {
        let got = up.requests().await.unwrap();
        if !got.is_empty() || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(got.len(), 1, "{}", envoy.log_tail(20));
    assert!(!got[0].complete);
    assert_eq!(got[0].path, "/cut");
    assert_eq!(got[0].body_base64, b"0123456789");
    assert_eq!(up.served().await.unwrap(), 0);
}
