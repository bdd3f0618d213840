//! A minimal HTTP/2 client with prior knowledge (h2c), for requests that must reach Envoy over
//! HTTP/2 rather than through the raw HTTP/1.1 client.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;

use crate::raw::RawResponse;
use crate::HeaderField;

/// One HTTP/2 request.
#[derive(Debug, Clone)]
pub struct H2Request {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// `:authority`.
    pub authority: String,
    /// Headers besides the pseudo-headers (lower-case names).
    pub headers: Vec<HeaderField>,
    /// The body's data frames, in order; empty: the headers end the stream.
    pub body: Vec<Vec<u8>>,
}

/// Sends `req` on a new HTTP/2 connection and reads the whole response, within `timeout`.
pub async fn send(addr: SocketAddr, req: &H2Request, timeout: Duration) -> Result<RawResponse> {
    tokio::time::timeout(timeout, exchange(addr, req))
        .await
        .map_err(|_| {
            anyhow!(
                "h2 {} {}: timed out after {timeout:?}",
                req.method,
                req.path
            )
        })?
}

async fn exchange(addr: SocketAddr, req: &H2Request) -> Result<RawResponse> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    let (client, connection) = h2::client::handshake(tcp).await.context("h2 handshake")?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.context("h2 connection not ready")?;
    let mut builder = http::Request::builder()
        .method(req.method.as_str())
        .uri(format!("http://{}{}", req.authority, req.path));
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
