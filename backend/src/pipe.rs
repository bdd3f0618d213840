//! Bridges between an HTTP body and a blocking task, so the export and import stream through a
//! bounded channel instead of holding a whole document.

use std::io::{self, Read, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Chunks in flight between the two sides.
pub const DEPTH: usize = 4;
/// Bytes a [`ChannelWriter`] gathers before it sends a chunk.
pub const CHUNK: usize = 64 << 10;

/// A chunk of a streamed body, or the error that ends it.
pub type Chunk = Result<Bytes, io::Error>;

/// A bounded channel of body chunks.
pub fn channel() -> (mpsc::Sender<Chunk>, mpsc::Receiver<Chunk>) {
    mpsc::channel(DEPTH)
}

/// `Write` on a blocking thread whose bytes become a streamed response body. A dropped receiver
/// (the client went away) is a `BrokenPipe` error, which stops the writer.
pub struct ChannelWriter {
    tx: mpsc::Sender<Chunk>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    /// A writer sending into `tx`.
    pub fn new(tx: mpsc::Sender<Chunk>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Ends the body with an error: the client sees it cut short, never a complete-looking one.
    pub fn abort(self, e: io::Error) {
        let _ = self.tx.blocking_send(Err(e));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// `Read` on a blocking thread over the chunks of a request body.
pub struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
}

impl ChannelReader {
    /// A reader taking chunks from `rx`; the stream ends when every sender is gone.
    pub fn new(rx: mpsc::Receiver<Chunk>) -> ChannelReader {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        let chunk = self.current.split_to(n);
        for (o, b) in out.iter_mut().zip(chunk.iter()) {
            *o = *b;
        }
        Ok(n)
    }
}

/// Forwards a request body's data frames into `tx` until it ends, fails or nobody reads.
pub async fn forward(mut body: axum::body::Body, tx: mpsc::Sender<Chunk>) {
    use http_body_util::BodyExt as _;
    while let Some(frame) = body.frame().await {
        let item = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => Ok(data),
                Err(_) => continue,
            },
            Err(e) => Err(io::Error::other(format!("cannot read request body: {e}"))),
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_cross_in_chunks_and_end_cleanly() {
        let (tx, rx) = channel();
        let writer = std::thread::spawn(move || {
            let mut w = ChannelWriter::new(tx);
            for i in 0..1000u32 {
                w.write_all(&i.to_be_bytes().repeat(64)).unwrap();
            }
            w.flush().unwrap();
        });
        let mut got = Vec::new();
        ChannelReader::new(rx).read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got.len(), 1000 * 256);
        assert_eq!(&got[256..260], &1u32.to_be_bytes());
    }

    #[test]
    fn a_gone_reader_stops_the_writer_and_an_error_reaches_the_reader() {
        let (tx, rx) = channel();
        drop(rx);
        let mut w = ChannelWriter::new(tx);
        assert!(w.write_all(&vec![0u8; CHUNK]).is_err());
        let (tx, rx) = channel();
        std::thread::spawn(move || ChannelWriter::new(tx).abort(io::Error::other("boom")));
        let err = ChannelReader::new(rx)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
    }
}
