//! The export document: every recording as one JSON document, to move a recorded session
//! between machines (`GET /admin/export`, `POST /admin/import`, `backend export` / `import`).
//!
//! Both directions stream within a fixed memory bound, whatever the store's size: an export reads
//! [`PAGE`] recordings per read transaction and writes them as it goes; an import parses one
//! recording at a time (each at most a configured number of bytes) and commits them in batches of
//! at most [`BATCH_RECORDINGS`] recordings or [`BATCH_BYTES`] bytes.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read, Write};
use std::rc::Rc;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::recording::Recording;
use crate::store::{Inserted, Store, StoreError};

/// The `format` field of an export document.
pub const FORMAT: &str = "transparent-cache-backend-export";
/// The current document version.
pub const VERSION: u32 = 1;
/// Recordings read per read transaction by an export.
pub const PAGE: usize = 32;
/// Recordings committed together by an import, at most.
pub const BATCH_RECORDINGS: usize = 256;
/// Bytes of recordings (their JSON form) committed together by an import, at most.
pub const BATCH_BYTES: u64 = 8 << 20;

/// Writes every recording of `store` as an export document to `out`, oldest first, reading
/// [`PAGE`] recordings per read transaction (a recording stored during the export is included
/// when it lands after the page being read). Returns how many were written.
pub fn write(store: &Store, out: &mut dyn Write) -> io::Result<u64> {
    write!(
        out,
        "{{\"format\":\"{FORMAT}\",\"version\":{VERSION},\"recordings\":["
    )?;
    let mut after = 0;
    let mut count: u64 = 0;
    loop {
        let page = store.raw_page(after, PAGE).map_err(io::Error::other)?;
        let Some(&(last, _)) = page.last() else {
            break;
        };
        for (_, json) in &page {
            if count > 0 {
                out.write_all(b",")?;
            }
            out.write_all(json)?;
            count += 1;
        }
        after = last;
    }
    out.write_all(b"]}\n")?;
    out.flush()?;
    Ok(count)
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Imported {
    /// Recordings read from the document.
    pub imported: u64,
    /// Recordings evicted by the size cap meanwhile.
    pub evicted: u64,
    /// Recordings replaced by a newer one with the same key.
    pub replaced: u64,
    /// Commits made.
    pub batches: u64,
}

/// Why an import stopped. Batches committed before the error stay stored.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The document is not an export document, or one recording in it is malformed.
    #[error("invalid export document: {0}")]
    Invalid(String),
    /// One recording is larger than the per-recording limit.
    #[error("a recording in the export document is larger than {0} bytes (--max-body-bytes)")]
    TooLarge(u64),
    /// The store refused a batch.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the document failed.
    #[error("cannot read the export document: {0}")]
    Read(io::Error),
}

/// Reads an export document from `reader` and stores its recordings with `commit`, one batch at
/// a time. A single recording may take at most `max_recording_bytes` bytes of the document.
/// `format` must come before `recordings` (as every export writes it, and as sorted keys are).
pub fn import<R: Read>(
    reader: R,
    max_recording_bytes: u64,
    commit: &mut dyn FnMut(Vec<Recording>) -> Result<Inserted, StoreError>,
) -> Result<Imported, ImportError> {
    let budget = Rc::new(Cell::new(Budget::default()));
    let metered = Metered {
        inner: io::BufReader::with_capacity(64 << 10, reader),
        budget: Rc::clone(&budget),
        limit: max_recording_bytes,
    };
    let mut de = serde_json::Deserializer::from_reader(metered);
    let mut state = ImportState {
        budget,
        commit,
        result: Imported::default(),
        failure: None,
    };
    let outcome = DocumentSeed { state: &mut state }.deserialize(&mut de);
    let outcome = outcome.and_then(|()| de.end());
    if let Some(e) = state.failure.take() {
        return Err(e);
    }
    match outcome {
        Ok(()) => Ok(state.result),
        Err(e) if e.is_io() => Err(if state.budget.get().exceeded {
            ImportError::TooLarge(max_recording_bytes)
        } else {
            ImportError::Read(io::Error::other(e.to_string()))
        }),
        Err(e) => Err(ImportError::Invalid(e.to_string())),
    }
}

/// Bytes read since the current recording started, when one is being read.
#[derive(Debug, Clone, Copy, Default)]
struct Budget {
    metering: bool,
    used: u64,
    exceeded: bool,
}

/// A reader that fails once one recording has taken more than `limit` bytes.
struct Metered<R> {
    inner: R,
    budget: Rc<Cell<Budget>>,
    limit: u64,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut b = self.budget.get();
        if b.metering {
            b.used = b.used.saturating_add(n as u64);
            if b.used > self.limit {
                b.exceeded = true;
                self.budget.set(b);
                return Err(io::Error::other("recording too large"));
            }
            self.budget.set(b);
        }
        Ok(n)
    }
}

struct ImportState<'a> {
    budget: Rc<Cell<Budget>>,
    commit: &'a mut dyn FnMut(Vec<Recording>) -> Result<Inserted, StoreError>,
    result: Imported,
    failure: Option<ImportError>,
}

impl ImportState<'_> {
    fn flush(&mut self, batch: &mut Vec<Recording>) -> Result<(), ImportError> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        let inserted = (self.commit)(std::mem::take(batch))?;
        self.result.imported += n;
        self.result.evicted += inserted.evicted;
        self.result.replaced += inserted.replaced;
        self.result.batches += 1;
        Ok(())
    }

    fn fail<E: de::Error>(&mut self, e: ImportError) -> E {
        let message = e.to_string();
        self.failure = Some(e);
        E::custom(message)
    }
}

struct DocumentSeed<'s, 'a> {
    state: &'s mut ImportState<'a>,
}

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an export document (an object with `format`, `version`, `recordings`)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut format_seen = false;
        let mut recordings_seen = false;
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                "format" => {
                    let format: String = map.next_value()?;
                    if format != FORMAT {
                        return Err(de::Error::custom(format!(
                            "`format` is {format:?}, expected {FORMAT:?}"
                        )));
                    }
                    format_seen = true;
                }
                "version" => {
                    let version: u32 = map.next_value()?;
                    if version > VERSION {
                        return Err(de::Error::custom(format!(
                            "export document version {version} is newer than this backend's {VERSION}"
                        )));
                    }
                }
                "recordings" => {
                    if !format_seen {
                        return Err(de::Error::custom("`format` must come before `recordings`"));
                    }
                    map.next_value_seed(RecordingsSeed {
                        state: &mut *self.state,
                    })?;
                    recordings_seen = true;
                }
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        if !recordings_seen {
            return Err(de::Error::missing_field("recordings"));
        }
        Ok(())
    }
}

struct RecordingsSeed<'s, 'a> {
    state: &'s mut ImportState<'a>,
}

impl<'de> DeserializeSeed<'de> for RecordingsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordingsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of recordings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut batch = Vec::new();
        let mut batch_bytes: u64 = 0;
        loop {
            self.state.budget.set(Budget {
                metering: true,
                ..Budget::default()
            });
            let next = seq.next_element::<Recording>();
            let Budget { used, exceeded, .. } = self.state.budget.get();
            self.state.budget.set(Budget {
                exceeded,
                ..Budget::default()
            });
            let Some(rec) = next? else {
                break;
            };
            batch.push(rec);
            batch_bytes = batch_bytes.saturating_add(used);
            if batch.len() >= BATCH_RECORDINGS || batch_bytes >= BATCH_BYTES {
                if let Err(e) = self.state.flush(&mut batch) {
                    return Err(self.state.fail(e));
                }
                batch_bytes = 0;
            }
        }
        if let Err(e) = self.state.flush(&mut batch) {
            return Err(self.state.fail(e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
