//! The demo upstream on its own: echo, serial, script, recording.

use std::path::Path;
use std::time::Duration;
use testbed::demo_upstream::model::{Echo, Script};
use testbed::raw::{self, Body, RawConnection, RawRequest};
use testbed::{DemoUpstream, HeaderField};

const T: Duration = Duration::from_secs(10);

async fn start() -> DemoUpstream {
    DemoUpstream::start_with_binary(Path::new(env!("CARGO_BIN_EXE_demo-upstream")))
        .await
        .expect("start demo-upstream")
}

#[tokio::test]
async fn echo_counts_serials_and_keeps_exact_headers() {
    let up = start().await;
    let req = RawRequest::new("POST", "/a/b?c=d")
        .header("X-Mixed-Case", "v1")
        .header("x-rep", "1")
        .header("x-bin", [0xff, 0xfe, b'z'])
        .header("x-rep", "2")
        .body(Body::ContentLength(vec![b"hello".to_vec()]));
    let mut conn = RawConnection::connect(up.addr()).await.unwrap();
    let r1 = conn.round_trip(&req).await.unwrap();
    assert_eq!(r1.status, 200);
    assert_eq!(r1.header("x-demo-serial").as_deref(), Some("1"));
    let echo: Echo = r1.json().unwrap();
    assert_eq!(echo.serial, 1);
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.path, "/a/b?c=d");
    assert_eq!(echo.body, "hello");
    assert!(!echo.body_base64);
    assert_eq!(
        echo.headers,
        vec![
            HeaderField::new("host", "testbed"),
            HeaderField::new("X-Mixed-Case", "v1"),
            HeaderField::new("x-rep", "1"),
            HeaderField::new("x-bin", [0xff, 0xfe, b'z']),
            HeaderField::new("x-rep", "2"),
            HeaderField::new("content-length", "5"),
        ]
    );

    // Same connection (keep-alive), binary chunked body → base64 in the echo.
    let bin = vec![0u8, 159, 146, 150];
    let r2 = conn
        .round_trip(
            &RawRequest::new("PUT", "/x")
                .body(Body::Chunked(vec![bin[..2].to_vec(), bin[2..].to_vec()])),
        )
        .await
        .unwrap();
    let echo2: Echo = r2.json().unwrap();
    assert_eq!(echo2.serial, 2);
    assert!(echo2.body_base64);
    assert_eq!(echo2.body_bytes().unwrap(), bin);

    let recorded = up.requests().await.unwrap();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].headers, echo.headers);
    assert_eq!(recorded[1].body_base64, bin);
    assert!(recorded.iter().all(|r| r.complete));
    assert_eq!(up.served().await.unwrap(), 2);
}

#[tokio::test]
async fn script_overrides_answer_until_deleted() {
    let up = start().await;
    up.set_script(&Script {
        status: 503,
        headers: vec![
            HeaderField::new("Content-Type", "application/octet-stream"),
            HeaderField::new("x-raw", [0x80, 0x81]),
        ],
        body_base64: vec![1, 2, 3, 255],
        trailers: Vec::new(),
    })
    .await
    .unwrap();
    let r = raw::send(up.addr(), &RawRequest::new("GET", "/s"), T)
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.body, vec![1, 2, 3, 255]);
    assert_eq!(
        r.headers,
        vec![
            HeaderField::new("Content-Type", "application/octet-stream"),
            HeaderField::new("x-raw", [0x80, 0x81]),
            HeaderField::new("x-demo-serial", "1"),
            HeaderField::new("content-length", "4"),
        ]
    );
    up.clear_script().await.unwrap();
    let r = raw::send(up.addr(), &RawRequest::new("GET", "/s"), T)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json::<Echo>().unwrap().serial, 2);
}

#[tokio::test]
async fn incomplete_body_is_recorded_and_requests_can_be_cleared() {
    let up = start().await;
    let req = RawRequest::new("POST", "/partial")
        .header("content-length", "100")
        .body(Body::Raw(vec![b"only-ten!!".to_vec()]));
    raw::send_and_abort(up.addr(), &req).await.unwrap();
    let deadline = std::time::Instant::now() + T;
    let recorded = loop {
        let r = up.requests().await.unwrap();
        if !r.is_empty() || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(recorded.len(), 1, "{}", up.log_tail(20));
    assert!(!recorded[0].complete);
    assert_eq!(recorded[0].serial, None);
    assert_eq!(recorded[0].body_base64, b"only-ten!!");
    assert_eq!(up.served().await.unwrap(), 0);
    up.clear_requests().await.unwrap();
    assert!(up.requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn start_finds_the_binary_itself() {
    let up = DemoUpstream::start().await.unwrap();
    let r = raw::send(up.addr(), &RawRequest::new("GET", "/"), T)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}
