//! Raw HTTP/1.1 client for exact-byte tests: the request goes out exactly as
//! described (header order, case, repeated names, non-UTF-8 values, body
//! split into separate writes), and the response comes back with its head
//! bytes, headers in order, and decoded body.

use crate::header::HeaderField;
use crate::http1::wire::{
    encode_chunk, encode_last_chunk, framing, write_head, BufStream, Framing,
};
use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// How the request body is framed and sent.
#[derive(Debug, Clone, Default)]
pub enum Body {
    /// No body and no framing header.
    #[default]
    None,
    /// Adds `content-length` (unless present) and writes each piece separately.
    ContentLength(Vec<Vec<u8>>),
    /// Adds `transfer-encoding: chunked` (unless present); each piece is one chunk.
    Chunked(Vec<Vec<u8>>),
    /// Writes the pieces as they are, adding no header (caller frames it).
    Raw(Vec<Vec<u8>>),
}

impl Body {
    /// Chunked when there is more than one piece, otherwise content-length.
    pub fn auto(pieces: Vec<Vec<u8>>) -> Self {
        if pieces.len() > 1 {
            Body::Chunked(pieces)
        } else {
            Body::ContentLength(pieces)
        }
    }
}

/// A request described byte for byte.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Method token, e.g. `POST`.
    pub method: String,
    /// Request target, e.g. `/a?b=c`.
    pub target: String,
    /// Header fields in the order they are sent; nothing is added except the
    /// body framing header chosen by [`Body`].
    pub headers: Vec<HeaderField>,
    /// The body and its framing.
    pub body: Body,
    /// Pause between body writes (lets the peer see them as separate reads).
    pub chunk_delay: Duration,
    /// Trailers after the last chunk ([`Body::Chunked`] only).
    pub trailers: Vec<HeaderField>,
}

impl RawRequest {
    /// A request with a `host` header and no body.
    pub fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.to_string(),
            target: target.to_string(),
            headers: vec![HeaderField::new("host", "testbed")],
            body: Body::None,
            chunk_delay: Duration::ZERO,
            trailers: Vec::new(),
        }
    }

    /// Appends a header (builder style).
    pub fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.headers.push(HeaderField::new(name, value));
        self
    }

    /// Sets the body (builder style).
    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// The head bytes and the list of separate body writes.
    pub fn encode(&self) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut headers = self.headers.clone();
        let has = |hs: &[HeaderField], n: &str| hs.iter().any(|h| h.is(n));
        let writes: Vec<Vec<u8>> = match &self.body {
            Body::None => Vec::new(),
            Body::Raw(p) => p.clone(),
            Body::ContentLength(p) => {
                if !has(&headers, "content-length") {
                    let len: usize = p.iter().map(Vec::len).sum();
                    headers.push(HeaderField::new("content-length", len.to_string()));
                }
                p.clone()
            }
            Body::Chunked(p) => {
                if !has(&headers, "transfer-encoding") {
                    headers.push(HeaderField::new("transfer-encoding", "chunked"));
                }
                let mut w: Vec<Vec<u8>> = p
                    .iter()
                    .map(|c| encode_chunk(c))
                    .filter(|c| !c.is_empty())
                    .collect();
                w.push(encode_last_chunk(&self.trailers));
                w
            }
        };
        let start = format!("{} {} HTTP/1.1", self.method, self.target);
        (write_head(start.as_bytes(), &headers), writes)
    }
}

/// A response as received.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Reason phrase bytes.
    pub reason: Vec<u8>,
    /// Header fields in wire order.
    pub headers: Vec<HeaderField>,
    /// Exact head bytes (status line + headers + empty line).
    pub raw_head: Vec<u8>,
    /// Decoded body.
    pub body: Vec<u8>,
    /// Trailers of a chunked body.
    pub trailers: Vec<HeaderField>,
    /// Heads of 1xx responses seen before this one.
    pub informational: Vec<u16>,
    /// Bytes received after the response when read to EOF.
    pub extra: Vec<u8>,
}

impl RawResponse {
    /// First value of header `name` (case-insensitive), lossily decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        crate::header::find(&self.headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The body, lossily decoded.
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "response body is not the expected JSON (status {}): {}",
                self.status,
                self.body_str()
            )
        })
    }
}

/// One client connection; several requests may be sent on it in turn.
pub struct RawConnection {
    conn: BufStream,
}

impl RawConnection {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            conn: BufStream::new(stream),
        })
    }

    /// Sends the request head and body writes. Like a well-behaved HTTP/1.1 client, it watches
    /// the connection between writes (`chunk_delay`) and stops sending once the server has
    /// answered early (a proxy's local reply to an unfinished request); the answer is then read
    /// as usual.
    pub async fn send_request(&mut self, req: &RawRequest) -> Result<()> {
        let (head, writes) = req.encode();
        self.conn.write_all(&head).await.context("write head")?;
        for w in writes {
            if !req.chunk_delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(req.chunk_delay) => {}
                    // `read` is cancel-safe: nothing is lost when the delay ends first.
                    read = self.conn.fill() => {
                        read.context("read while sending the body")?;
                        return Ok(());
                    }
                }
            }
            self.conn.write_all(&w).await.context("write body")?;
        }
        Ok(())
    }

    /// Writes arbitrary bytes on the connection.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.conn.write_all(bytes).await.context("write")
    }

    /// Reads one complete response (skipping 1xx heads); `is_head` for HEAD requests.
    pub async fn read_response(&mut self, is_head: bool) -> Result<RawResponse> {
        self.read_answer(if is_head { "HEAD" } else { "GET" }).await
    }

    /// Reads the response to a `method` request: none has a body for HEAD, nor a 2xx for CONNECT
    /// (the connection is a tunnel then).
    async fn read_answer(&mut self, method: &str) -> Result<RawResponse> {
        let is_head = method.eq_ignore_ascii_case("HEAD");
        let connect = method.eq_ignore_ascii_case("CONNECT");
        let mut informational = Vec::new();
        let head = loop {
            let h = self.conn.read_response_head().await?;
            if (100..200).contains(&h.status) && h.status != 101 {
                informational.push(h.status);
                continue;
            }
            break h;
        };
        let tunnel = connect && (200..300).contains(&head.status);
        let fr = if is_head || tunnel || head.status == 204 || head.status == 304 {
            Framing::None
        } else {
            framing(&head.headers, false)?
        };
        let body = self.conn.read_body(fr).await?;
        if !body.complete {
            return Err(anyhow!(
                "connection closed inside the response body (status {}, {} body bytes read)",
                head.status,
                body.body.len()
            ));
        }
        Ok(RawResponse {
            status: head.status,
            reason: head.reason,
            headers: head.headers,
            raw_head: head.raw,
            body: body.body,
            trailers: body.trailers,
            informational,
            extra: Vec::new(),
        })
    }

    /// Sends a request and reads its response, keeping the connection open.
    pub async fn round_trip(&mut self, req: &RawRequest) -> Result<RawResponse> {
        self.send_request(req).await?;
        self.read_answer(&req.method).await
    }

    /// Reads until the peer closes; returns the bytes.
    pub async fn read_to_eof(&mut self) -> Result<Vec<u8>> {
        let mut out = std::mem::take(&mut self.conn.buf);
        loop {
            match self.conn.fill().await {
                Ok(0) => break,
                Ok(_) => out.append(&mut self.conn.buf),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| anyhow!("{what}: timed out after {timeout:?}"))?
}

/// Opens a connection, sends `req`, reads one response, and closes the
/// connection as soon as the response head and body are read.
pub async fn send(addr: SocketAddr, req: &RawRequest, timeout: Duration) -> Result<RawResponse> {
    with_timeout(
        timeout,
        &format!("{} {} to {addr}", req.method, req.target),
        async {
            let mut c = RawConnection::connect(addr).await?;
            c.round_trip(req).await
        },
    )
    .await
}

/// Like [`send`], but after the response keeps reading until the server
/// closes the connection; trailing bytes land in [`RawResponse::extra`].
/// The whole exchange is bounded by `timeout`.
pub async fn send_read_to_eof(
    addr: SocketAddr,
    req: &RawRequest,
    timeout: Duration,
) -> Result<RawResponse> {
    with_timeout(
        timeout,
        &format!("{} {} to {addr}", req.method, req.target),
        async {
            let mut c = RawConnection::connect(addr).await?;
            let mut r = c.round_trip(req).await?;
            r.extra = c.read_to_eof().await?;
            Ok(r)
        },
    )
    .await
}

/// Sends the request head and body writes, then closes without reading a
/// response (e.g. a body whose `content-length` promises more than is sent).
pub async fn send_and_abort(addr: SocketAddr, req: &RawRequest) -> Result<()> {
    let mut c = RawConnection::connect(addr).await?;
    c.send_request(req).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_chunked_and_keeps_header_order() {
        let req = RawRequest::new("POST", "/x")
            .header("X-B", "2")
            .header("x-a", [0xfe])
            .header("X-B", "3")
            .body(Body::auto(vec![b"ab".to_vec(), b"cde".to_vec()]));
        let (head, writes) = req.encode();
        assert_eq!(
            head,
            b"POST /x HTTP/1.1\r\nhost: testbed\r\nX-B: 2\r\nx-a: \xfe\r\nX-B: 3\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            writes,
            vec![
                b"2\r\nab\r\n".to_vec(),
                b"3\r\ncde\r\n".to_vec(),
                b"0\r\n\r\n".to_vec()
            ]
        );
    }
}
