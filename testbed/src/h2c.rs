//! A minimal HTTP/2 client with prior knowledge (h2c), for requests that must reach Envoy over
//! HTTP/2 rather than through the raw HTTP/1.1 client.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;

use crate::raw::RawResponse;
use crate::HeaderField;

/// One HTTP/2 request.
#[derive(Debug, Clone)]
pub struct H2Request {
    /// Method.
    pub method: String,
    /// Path with query, exact bytes (a non-UTF-8 one is sent as is, see [`send`]).
    pub path: Vec<u8>,
    /// `:authority`.
    pub authority: String,
    /// Headers besides the pseudo-headers (lower-case names).
    pub headers: Vec<HeaderField>,
    /// The body's data frames, in order; empty: the headers end the stream.
    pub body: Vec<Vec<u8>>,
}

/// Sends `req` on a new HTTP/2 connection and reads the whole response, within `timeout`.
///
/// A path that `http::Uri` refuses (not UTF-8, say) still goes out byte for byte: the `h2`
/// client sends a placeholder, and a relay between it and `addr` replaces the header block of
/// stream 1 with one encoded here (HPACK literals, never indexed, no Huffman), so Envoy decodes
/// the real path while the client still reads Envoy's answer itself.
pub async fn send(addr: SocketAddr, req: &H2Request, timeout: Duration) -> Result<RawResponse> {
    tokio::time::timeout(timeout, exchange(addr, req))
        .await
        .map_err(|_| {
            anyhow!(
                "h2 {} {}: timed out after {timeout:?}",
                req.method,
                String::from_utf8_lossy(&req.path)
            )
        })?
}

async fn exchange(addr: SocketAddr, req: &H2Request) -> Result<RawResponse> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    let uri = format!(
        "http://{}{}",
        req.authority,
        String::from_utf8_lossy(&req.path)
    );
    if std::str::from_utf8(&req.path).is_ok() && uri.parse::<http::Uri>().is_ok() {
        return exchange_on(tcp, req, uri).await;
    }
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let relay = tokio::spawn(relay(theirs, tcp, header_block(req)));
    let placeholder = format!("http://{}/placeholder", req.authority);
    let out = exchange_on(ours, req, placeholder).await;
    relay.abort();
    out
}

/// The request's header block as Envoy must decode it: every field a literal without indexing
/// with a literal name (so neither side's dynamic table changes), no Huffman.
fn header_block(req: &H2Request) -> Vec<u8> {
    let mut out = Vec::new();
    let mut field = |name: &[u8], value: &[u8]| {
        out.push(0x00);
        hpack_string(name, &mut out);
        hpack_string(value, &mut out);
    };
    field(b":method", req.method.as_bytes());
    field(b":scheme", b"http");
    field(b":path", &req.path);
    field(b":authority", req.authority.as_bytes());
    for h in &req.headers {
        field(&h.name, &h.value);
    }
    out
}

/// An HPACK string literal (RFC 7541 §5.2) without Huffman: a 7-bit-prefix length, then bytes.
fn hpack_string(s: &[u8], out: &mut Vec<u8>) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// Copies bytes both ways between the `h2` client and Envoy; on the way out, the HEADERS frame of
/// stream 1 gets `block` as its payload (END_HEADERS set, END_STREAM kept, no padding or
/// priority).
async fn relay(
    mut client: tokio::io::DuplexStream,
    envoy: tokio::net::TcpStream,
    block: Vec<u8>,
) -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut envoy_in, mut envoy_out) = envoy.into_split();
    let (mut client_in, mut client_out) = tokio::io::split(&mut client);
    let inbound = async {
        tokio::io::copy(&mut envoy_in, &mut client_out).await?;
        anyhow::Ok(())
    };
    let outbound = async {
        let mut preface = [0u8; 24];
        client_in.read_exact(&mut preface).await?;
        envoy_out.write_all(&preface).await?;
        let mut block = Some(block);
        loop {
            let mut head = [0u8; 9];
            if client_in.read_exact(&mut head).await.is_err() {
                break; // the client is done
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            client_in.read_exact(&mut payload).await?;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if let (1, 1, Some(b)) = (kind, stream, block.as_ref()) {
                if flags & 0x04 == 0 {
                    bail!("the h2 client split its header block; the relay cannot rewrite it");
                }
                let n = b.len();
                let new_flags = (flags & 0x01) | 0x04;
                let head = [
                    (n >> 16) as u8,
                    (n >> 8) as u8,
                    n as u8,
                    1,
                    new_flags,
                    0,
                    0,
                    0,
                    1,
                ];
                envoy_out.write_all(&head).await?;
                envoy_out.write_all(b).await?;
                block = None;
                continue;
            }
            envoy_out.write_all(&head).await?;
            envoy_out.write_all(&payload).await?;
        }
        anyhow::Ok(())
    };
    tokio::try_join!(inbound, outbound)?;
    Ok(())
}

async fn exchange_on<T>(io: T, req: &H2Request, uri: String) -> Result<RawResponse>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.context("h2 handshake")?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.context("h2 connection not ready")?;
    let mut builder = http::Request::builder()
        .method(req.method.as_str())
        .uri(uri);
    for h in &req.headers {
        builder = builder.header(h.name.as_slice(), h.value.as_slice());
    }
    let request = builder.body(()).context("h2 request")?;
    let (answer, mut stream) = client
        .send_request(request, req.body.is_empty())
        .context("h2 send")?;
    let last = req.body.len().saturating_sub(1);
    for (i, chunk) in req.body.iter().enumerate() {
        stream
            .send_data(Bytes::from(chunk.clone()), i == last)
            .context("h2 send data")?;
    }
    let response = answer.await.context("h2 response")?;
    let (parts, mut body) = response.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.context("h2 response body")?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.context("h2 trailers")?;
    driver.abort();
    let fields = |map: &http::HeaderMap| -> Vec<HeaderField> {
        map.iter()
            .map(|(n, v)| HeaderField::new(n.as_str(), v.as_bytes()))
            .collect()
    };
    Ok(RawResponse {
        status: parts.status.as_u16(),
        reason: Vec::new(),
        headers: fields(&parts.headers),
        raw_head: Vec::new(),
        body: data,
        trailers: trailers.as_ref().map(fields).unwrap_or_default(),
        informational: Vec::new(),
        extra: Vec::new(),
    })
}
