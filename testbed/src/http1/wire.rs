//! Buffered reading of HTTP/1.1 heads and bodies (content-length, chunked,
//! read-to-EOF), tolerant of peers that disappear mid-message.

use crate::header::HeaderField;
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest head (start line + headers) accepted.
pub const MAX_HEAD: usize = 256 * 1024;
/// Largest number of header fields accepted.
pub const MAX_HEADERS: usize = 512;

/// A TCP stream plus the bytes read from it but not consumed yet.
pub struct BufStream {
    /// The connection.
    pub stream: TcpStream,
    /// Bytes received and not consumed yet.
    pub buf: Vec<u8>,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Method token.
    pub method: String,
    /// Request target as sent (lossily decoded; [`RequestHead::target_bytes`] has the bytes).
    pub target: String,
    /// Request target, exact bytes (a proxy may pass on a non-UTF-8 one received over HTTP/2).
    pub target_bytes: Vec<u8>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in wire order.
    pub headers: Vec<HeaderField>,
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Reason phrase bytes.
    pub reason: Vec<u8>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in wire order.
    pub headers: Vec<HeaderField>,
    /// The exact head bytes, including the final empty line.
    pub raw: Vec<u8>,
}

/// A body read from the wire.
#[derive(Debug, Clone, Default)]
pub struct BodyRead {
    /// Decoded body bytes (chunk framing removed).
    pub body: Vec<u8>,
    /// False when the peer closed (or errored) before the body ended.
    pub complete: bool,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<HeaderField>,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the peer closes (responses only).
    UntilEof,
}

fn fields(raw: &[httparse::Header<'_>]) -> Vec<HeaderField> {
    raw.iter()
        .map(|h| HeaderField::new(h.name.as_bytes(), h.value))
        .collect()
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Framing of a message from its headers (`is_request` decides the no-header case).
pub fn framing(headers: &[HeaderField], is_request: bool) -> io::Result<Framing> {
    let chunked = headers.iter().any(|h| {
        h.is("transfer-encoding")
            && String::from_utf8_lossy(&h.value)
                .to_ascii_lowercase()
                .contains("chunked")
    });
    if chunked {
        return Ok(Framing::Chunked);
    }
    if let Some(h) = headers.iter().find(|h| h.is("content-length")) {
        let n = std::str::from_utf8(&h.value)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| bad("invalid content-length"))?;
        return Ok(Framing::Length(n));
    }
    Ok(if is_request {
        Framing::None
    } else {
        Framing::UntilEof
    })
}

impl BufStream {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer; returns how many (0 = EOF).
    pub async fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.stream.read(&mut tmp).await?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Writes all bytes and flushes.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads a request head. `Ok(None)` on a clean EOF before any byte.
    pub async fn read_request_head(&mut self) -> io::Result<Option<RequestHead>> {
        loop {
            if !self.buf.is_empty() {
                // httparse takes only ASCII targets: parse a copy whose request line has its
                // other bytes masked, and keep the target's own bytes from the original.
                let line = self.buf.split(|b| *b == b'\n').next().unwrap_or_default();
                let target_bytes = line
                    .split(|b| *b == b' ')
                    .nth(1)
                    .unwrap_or_default()
                    .to_vec();
                let masked;
                let parse_buf: &[u8] = if line.is_ascii() {
                    &self.buf
                } else {
                    let n = line.len();
                    let mut copy = self.buf.clone();
                    for b in copy.iter_mut().take(n).filter(|b| !b.is_ascii()) {
                        *b = b'_';
                    }
                    masked = copy;
                    &masked
                };
                let mut hs = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut hs);
                match req.parse(parse_buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = RequestHead {
                            method: req.method.unwrap_or_default().to_string(),
                            target: String::from_utf8_lossy(&target_bytes).into_owned(),
                            target_bytes,
                            minor_version: req.version.unwrap_or(1),
                            headers: fields(req.headers),
                        };
                        self.buf.drain(..len);
                        return Ok(Some(head));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(bad(format!("bad request head: {e}"))),
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(bad("request head too large"));
                }
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "EOF inside request head",
                    ))
                };
            }
        }
    }

    /// Reads a response head.
    pub async fn read_response_head(&mut self) -> io::Result<ResponseHead> {
        loop {
            if !self.buf.is_empty() {
                let mut hs = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut hs);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = ResponseHead {
                            status: resp.code.unwrap_or(0),
                            reason: resp.reason.unwrap_or_default().as_bytes().to_vec(),
                            minor_version: resp.version.unwrap_or(1),
                            headers: fields(resp.headers),
                            raw: self.buf[..len].to_vec(),
                        };
                        self.buf.drain(..len);
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(bad(format!("bad response head: {e}"))),
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(bad("response head too large"));
                }
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a full response head ({} bytes received)",
                        self.buf.len()
                    ),
                ));
            }
        }
    }

    /// Reads a body with the given framing. EOF or a read error before the
    /// end gives `complete: false` with the bytes received so far; malformed
    /// chunk framing is an error.
    pub async fn read_body(&mut self, framing: Framing) -> io::Result<BodyRead> {
        let mut out = BodyRead::default();
        let finished = match framing {
            Framing::None => Ok(true),
            Framing::Length(n) => self.read_len(n, &mut out.body).await,
            Framing::UntilEof => {
                out.body.append(&mut self.buf);
                loop {
                    match self.fill().await {
                        Ok(0) => break Ok(true),
                        Ok(_) => out.body.append(&mut self.buf),
                        Err(e) => break Err(e),
                    }
                }
            }
            Framing::Chunked => self.read_chunked(&mut out).await,
        };
        match finished {
            Ok(done) => out.complete = done,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(e),
            Err(_) => out.complete = false,
        }
        Ok(out)
    }

    /// Reads exactly `n` body bytes; Ok(false) on EOF first.
    async fn read_len(&mut self, n: u64, body: &mut Vec<u8>) -> io::Result<bool> {
        let mut left = n;
        loop {
            let take = (left.min(self.buf.len() as u64)) as usize;
            body.extend(self.buf.drain(..take));
            left -= take as u64;
            if left == 0 {
                return Ok(true);
            }
            if self.fill().await? == 0 {
                return Ok(false);
            }
        }
    }

    /// Reads one CRLF-terminated line (without the CRLF); None on EOF.
    async fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..pos].to_vec();
                self.buf.drain(..pos + 2);
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("line too long"));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    async fn read_chunked(&mut self, out: &mut BodyRead) -> io::Result<bool> {
        loop {
            let Some(line) = self.read_line().await? else {
                return Ok(false);
            };
            let size_part = line.split(|b| *b == b';').next().unwrap_or_default();
            let size_str = std::str::from_utf8(size_part)
                .map_err(|_| bad("bad chunk size"))?
                .trim();
            let size = u64::from_str_radix(size_str, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                loop {
                    let Some(line) = self.read_line().await? else {
                        return Ok(false);
                    };
                    if line.is_empty() {
                        return Ok(true);
                    }
                    let mut parts = line.splitn(2, |b| *b == b':');
                    let name = parts.next().unwrap_or_default();
                    let value = parts.next().unwrap_or_default().trim_ascii();
                    out.trailers.push(HeaderField::new(name, value));
                }
            }
            if !self.read_len(size, &mut out.body).await? {
                return Ok(false);
            }
            match self.read_line().await? {
                None => return Ok(false),
                Some(l) if l.is_empty() => {}
                Some(_) => return Err(bad("missing CRLF after chunk data")),
            }
        }
    }
}

/// Serializes a head: start line, then each header as `name: value\r\n`, then CRLF.
pub fn write_head(start_line: &[u8], headers: &[HeaderField]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(start_line);
    out.extend_from_slice(b"\r\n");
    for h in headers {
        out.extend_from_slice(&h.name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Encodes one chunk of chunked transfer coding (an empty slice gives nothing;
/// use [`LAST_CHUNK`] to end the body).
pub fn encode_chunk(data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return Vec::new();
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The terminating chunk followed by these trailers (none: [`LAST_CHUNK`]): the same layout as
/// a head whose start line is `0`.
pub fn encode_last_chunk(trailers: &[HeaderField]) -> Vec<u8> {
    write_head(b"0", trailers)
}

/// The terminating chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
