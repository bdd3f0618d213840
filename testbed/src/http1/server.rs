//! Minimal HTTP/1.1 server loop: keep-alive, content-length/chunked request
//! bodies, `Expect: 100-continue`, and notification of requests whose body
//! never completed. A handler still running when the client goes away is
//! dropped.

use super::wire::{framing, write_head, BufStream, RequestHead};
use crate::header::HeaderField;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// A request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, target, version and headers in wire order.
    pub head: RequestHead,
    /// Decoded body bytes (possibly partial).
    pub body: Vec<u8>,
    /// False when the client vanished before the body ended.
    pub complete: bool,
    /// Trailer fields of a chunked body, in order.
    pub trailers: Vec<HeaderField>,
}

/// A response to send. `content-length` is added unless the headers already
/// carry `content-length` or `transfer-encoding` (then the body is sent as is).
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields, sent in this order.
    pub headers: Vec<HeaderField>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a JSON body.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|e| format!("{e}").into_bytes());
        Self {
            status,
            headers: vec![HeaderField::new("content-type", "application/json")],
            body,
        }
    }

    /// A plain-text response.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![HeaderField::new("content-type", "text/plain")],
            body: text.into().into_bytes(),
        }
    }

    /// An empty response.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

/// Application logic behind [`serve`].
pub trait Handler: Send + Sync + 'static {
    /// Answers one complete request.
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send;
    /// Called for a request whose body never completed (no answer is sent).
    fn incomplete(&self, _req: Request) {}
}

/// Reason phrase for common codes.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Accepts connections forever, one task per connection.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        tokio::spawn(async move {
            connection(BufStream::new(stream), h).await;
        });
    }
}

fn wants_close(head: &RequestHead) -> bool {
    let conn = head
        .headers
        .iter()
        .filter(|h| h.is("connection"))
        .map(|h| h.value_str().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    if head.minor_version == 0 {
        !conn.contains("keep-alive")
    } else {
        conn.contains("close")
    }
}

/// Waits until the peer closes; bytes that arrive meanwhile stay buffered.
async fn peer_gone(conn: &mut BufStream) {
    loop {
        match conn.fill().await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn connection<H: Handler>(mut conn: BufStream, handler: Arc<H>) {
    loop {
        let head = match conn.read_request_head().await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    let _ = send(&mut conn, &Response::text(400, e.to_string()), true, false).await;
                }
                return;
            }
        };
        let fr = match framing(&head.headers, true) {
            Ok(f) => f,
            Err(e) => {
                let _ = send(&mut conn, &Response::text(400, e.to_string()), true, false).await;
                return;
            }
        };
        let expects_continue = head
            .headers
            .iter()
            .any(|h| h.is("expect") && h.value.eq_ignore_ascii_case(b"100-continue"));
        if expects_continue
            && conn
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        let body = match conn.read_body(fr).await {
            Ok(b) => b,
            Err(e) => {
                let _ = send(&mut conn, &Response::text(400, e.to_string()), true, false).await;
                return;
            }
        };
        let close = wants_close(&head);
        let connect = head.method.eq_ignore_ascii_case("CONNECT");
        let req = Request {
            head,
            body: body.body,
            complete: body.complete,
            trailers: body.trailers,
        };
        if !req.complete {
            handler.incomplete(req);
            return;
        }
        let resp = tokio::select! {
            r = handler.handle(req) => r,
            _ = peer_gone(&mut conn) => return,
        };
        // A 2xx to CONNECT turns the connection into a tunnel: no more requests on it.
        let tunnel = connect && (200..300).contains(&resp.status);
        if send(&mut conn, &resp, close, tunnel).await.is_err() || close {
            return;
        }
        if tunnel {
            peer_gone(&mut conn).await;
            return;
        }
    }
}

/// Writes `resp`; `tunnel`: a 2xx to CONNECT, which carries no framing headers (RFC 9110 §9.3.6).
async fn send(
    conn: &mut BufStream,
    resp: &Response,
    close: bool,
    tunnel: bool,
) -> std::io::Result<()> {
    let mut headers = resp.headers.clone();
    if !tunnel
        && !headers
            .iter()
            .any(|h| h.is("content-length") || h.is("transfer-encoding"))
    {
        headers.push(HeaderField::new(
            "content-length",
            resp.body.len().to_string(),
        ));
    }
    if close && !headers.iter().any(|h| h.is("connection")) {
        headers.push(HeaderField::new("connection", "close"));
    }
    let start = format!("HTTP/1.1 {} {}", resp.status, reason(resp.status));
    let mut bytes = write_head(start.as_bytes(), &headers);
    bytes.extend_from_slice(&resp.body);
    conn.write_all(&bytes).await?;
    if close {
        use tokio::io::AsyncWriteExt;
        let _ = conn.stream.shutdown().await;
    }
    Ok(())
}
