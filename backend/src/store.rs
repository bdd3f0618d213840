//! The embedded, durable recording store (redb).
//!
//! Tables: `recordings` (id → recording JSON, ids grow with insertion, so the first id is the
//! oldest), `index` (match key → `(recorded_at, id)` pairs, the last one is the newest) and `meta`
//! (the next id, the stored bytes, the key configuration the index was built with). Every write is
//! one transaction committed with immediate durability before it returns.

use std::path::{Path, PathBuf};

use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use crate::config::MatchKeyConfig;
use crate::key::{self, KeyHash};
use crate::recording::Recording;

const RECORDINGS: TableDefinition<u64, &[u8]> = TableDefinition::new("recordings");
const INDEX: MultimapTableDefinition<&[u8], (u64, u64)> = MultimapTableDefinition::new("index");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");

const NEXT_ID: &str = "next_id";
const BYTES: &str = "bytes";
const KEY_CONFIG: &str = "key_config";

/// The database file inside the data folder.
pub const FILE_NAME: &str = "recordings.redb";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error (I/O, corruption, lock held by another process).
    #[error("store error: {0}")]
    Db(#[from] Box<redb::Error>),
    /// The data folder could not be created.
    #[error("cannot create data folder {path}: {source}")]
    Folder {
        /// The folder.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored value is not a recording.
    #[error("corrupt recording {id}: {message}")]
    Corrupt {
        /// Its id.
        id: u64,
        /// The decoding error.
        message: String,
    },
    /// The commit a batch was part of failed (group commit: every batch of it gets this).
    #[error("store error: {0}")]
    Commit(String),
    /// One recording is larger than the whole store may be.
    #[error("recording of {size} bytes is larger than the store cap of {max} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The cap.
        max: u64,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(redb::Error::from(e)))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Counts and sizes, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Recordings stored.
    pub recordings: u64,
    /// Bytes of stored recordings (their JSON form).
    pub bytes: u64,
    /// Size of the database file.
    pub file_bytes: u64,
    /// Durable commits of recordings since the start (group commit: many recordings each).
    pub commits: u64,
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inserted {
    /// Ids given to the new recordings, in order.
    pub ids: Vec<u64>,
    /// Recordings evicted to stay under the cap.
    pub evicted: u64,
}

/// The store. Cheap to share behind an `Arc`; every method blocks, call it off the async runtime.
pub struct Store {
    db: Database,
    path: PathBuf,
    key: MatchKeyConfig,
    max_bytes: u64,
    /// Durable commits of recordings made so far (metrics).
    commits: std::sync::atomic::AtomicU64,
}

fn fingerprint(config: &MatchKeyConfig) -> String {
    format!(
        "{}:{}",
        key::KEY_SCHEME,
        serde_json::to_string(config).unwrap_or_default()
    )
}

fn decode(id: u64, bytes: &[u8]) -> Result<Recording, StoreError> {
    let mut rec: Recording = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        id,
        message: e.to_string(),
    })?;
    rec.id = id;
    Ok(rec)
}

impl Store {
    /// Opens (or creates) the store in `dir`. Re-indexes when the key configuration changed since
    /// the index was built.
    pub fn open(dir: &Path, key: MatchKeyConfig, max_bytes: u64) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Folder {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path)?;
        let store = Store {
            db,
            path,
            key,
            max_bytes,
            commits: std::sync::atomic::AtomicU64::new(0),
        };
        store.prepare()?;
        Ok(store)
    }

    fn prepare(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(RECORDINGS)?;
            txn.open_table(META)?;
            txn.open_multimap_table(INDEX)?;
            let mut settings = txn.open_table(SETTINGS)?;
            let want = fingerprint(&self.key);
            let have = settings.get(KEY_CONFIG)?.map(|v| v.value().to_owned());
            if have.as_deref() != Some(want.as_str()) {
                if have.is_some() {
                    tracing::info!("match key configuration changed: re-indexing recordings");
                }
                txn.delete_multimap_table(INDEX)?;
                let mut index = txn.open_multimap_table(INDEX)?;
                let recordings = txn.open_table(RECORDINGS)?;
                for entry in recordings.iter()? {
                    let (id, value) = entry?;
                    let id = id.value();
                    match decode(id, value.value()) {
                        Ok(rec) => {
                            index.insert(
                                rec.key(&self.key).as_slice(),
                                (rec.recorded_at_unix_nanos, id),
                            )?;
                        }
                        Err(e) => tracing::warn!(error = %e, "skipping corrupt recording"),
                    }
                }
                settings.insert(KEY_CONFIG, want.as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The match key configuration.
    pub fn key_config(&self) -> &MatchKeyConfig {
        &self.key
    }

    /// Stores recordings in one durable transaction (ids are assigned here), then evicts the
    /// oldest recordings while the store is over its cap.
    pub fn insert(&self, recordings: Vec<Recording>) -> Result<Inserted, StoreError> {
        self.insert_groups(vec![recordings])?
            .pop()
            .unwrap_or_else(|| Ok(Inserted::default()))
    }

    /// Durable commits of recordings made so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Group commit: stores several independent groups of recordings in **one** durable
    /// transaction, each with its own ids and result (a group holding a recording larger than
    /// the cap is refused alone), then evicts the oldest while the store is over its cap (the
    /// evictions are reported on the last group). `Err` when the transaction itself failed.
    pub fn insert_groups(
        &self,
        groups: Vec<Vec<Recording>>,
    ) -> Result<Vec<Result<Inserted, StoreError>>, StoreError> {
        let mut results: Vec<Result<Inserted, StoreError>> = Vec::with_capacity(groups.len());
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(RECORDINGS)?;
            let mut index = txn.open_multimap_table(INDEX)?;
            let mut meta = txn.open_table(META)?;
            let mut next_id = meta.get(NEXT_ID)?.map_or(1, |v| v.value());
            let mut bytes = meta.get(BYTES)?.map_or(0, |v| v.value());
            for group in groups {
                // Serialize the whole group first: a refused group leaves nothing behind.
                let mut encoded = Vec::with_capacity(group.len());
                let mut refused = None;
                for (i, mut rec) in group.into_iter().enumerate() {
                    rec.id = next_id.saturating_add(i as u64);
                    let value = serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt {
                        id: rec.id,
                        message: e.to_string(),
                    })?;
                    let size = value.len() as u64;
                    if size > self.max_bytes {
                        refused = Some(StoreError::TooLarge {
                            size,
                            max: self.max_bytes,
                        });
                        break;
                    }
                    encoded.push((rec, value));
                }
                if let Some(e) = refused {
                    results.push(Err(e));
                    continue;
                }
                let mut out = Inserted::default();
                for (rec, value) in encoded {
                    table.insert(rec.id, value.as_slice())?;
                    index.insert(
                        rec.key(&self.key).as_slice(),
                        (rec.recorded_at_unix_nanos, rec.id),
                    )?;
                    bytes = bytes.saturating_add(value.len() as u64);
                    out.ids.push(rec.id);
                    next_id = rec.id.saturating_add(1);
                }
                results.push(Ok(out));
            }
            let mut evicted = 0;
            while bytes > self.max_bytes {
                let Some((id, value)) = table.pop_first()? else {
                    bytes = 0;
                    break;
                };
                let (id, value) = (id.value(), value.value().to_vec());
                bytes = bytes.saturating_sub(value.len() as u64);
                if let Ok(rec) = decode(id, &value) {
                    index.remove(
                        rec.key(&self.key).as_slice(),
                        (rec.recorded_at_unix_nanos, id),
                    )?;
                }
                evicted += 1;
            }
            if let Some(Ok(last)) = results.iter_mut().rev().find(|r| r.is_ok()) {
                last.evicted = evicted;
            }
            meta.insert(NEXT_ID, next_id)?;
            meta.insert(BYTES, bytes)?;
        }
        txn.commit()?;
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(results)
    }

    /// The newest recording with this key.
    pub fn lookup(&self, key: &KeyHash) -> Result<Option<Recording>, StoreError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_multimap_table(INDEX)?;
        let table = txn.open_table(RECORDINGS)?;
        let mut candidates = index.get(key.as_slice())?;
        while let Some(entry) = candidates.next_back() {
            let (_, id) = entry?.value();
            if let Some(value) = table.get(id)? {
                return decode(id, value.value()).map(Some);
            }
        }
        Ok(None)
    }

    /// One recording by id.
    pub fn get(&self, id: u64) -> Result<Option<Recording>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDINGS)?;
        let found = table.get(id)?;
        found.map(|v| decode(id, v.value())).transpose()
    }

    /// A page of recordings, oldest first, and the total count.
    pub fn list(&self, offset: u64, limit: u64) -> Result<(u64, Vec<Recording>), StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDINGS)?;
        let total = table.len()?;
        let mut out = Vec::new();
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let take = usize::try_from(limit).unwrap_or(usize::MAX);
        for entry in table.iter()?.skip(skip).take(take) {
            let (id, value) = entry?;
            out.push(decode(id.value(), value.value())?);
        }
        Ok((total, out))
    }

    /// Every recording, oldest first.
    pub fn all(&self) -> Result<Vec<Recording>, StoreError> {
        self.list(0, u64::MAX).map(|(_, all)| all)
    }

    /// Deletes one recording; false when there was none.
    pub fn delete(&self, id: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let found;
        {
            let mut table = txn.open_table(RECORDINGS)?;
            let mut index = txn.open_multimap_table(INDEX)?;
            let mut meta = txn.open_table(META)?;
            let removed = table.remove(id)?.map(|v| v.value().to_vec());
            found = removed.is_some();
            if let Some(value) = removed {
                let bytes = meta.get(BYTES)?.map_or(0, |v| v.value());
                meta.insert(BYTES, bytes.saturating_sub(value.len() as u64))?;
                if let Ok(rec) = decode(id, &value) {
                    index.remove(
                        rec.key(&self.key).as_slice(),
                        (rec.recorded_at_unix_nanos, id),
                    )?;
                }
            }
        }
        txn.commit()?;
        Ok(found)
    }

    /// Deletes every recording; returns how many there were. Ids keep growing.
    pub fn clear(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let count;
        {
            count = txn.open_table(RECORDINGS)?.len()?;
            txn.delete_table(RECORDINGS)?;
            txn.delete_multimap_table(INDEX)?;
            txn.open_table(RECORDINGS)?;
            txn.open_multimap_table(INDEX)?;
            txn.open_table(META)?.insert(BYTES, 0)?;
        }
        txn.commit()?;
        Ok(count)
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let txn = self.db.begin_read()?;
        let recordings = txn.open_table(RECORDINGS)?.len()?;
        let bytes = txn.open_table(META)?.get(BYTES)?.map_or(0, |v| v.value());
        let file_bytes = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        Ok(Stats {
            recordings,
            bytes,
            file_bytes,
            commits: self.commits(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{Payload, RecordedRequest, RecordedResponse};
    use std::sync::Arc;

    fn rec(path: &str, at: u64, body: &str) -> Recording {
        Recording {
            id: 0,
            recorded_at_unix_nanos: at,
            service: Some("svc".into()),
            session_id: None,
            direction: None,
            request: RecordedRequest {
                method: "GET".into(),
                host: "h".into(),
                path: path.into(),
                headers: vec![],
                body: Payload::default(),
            },
            response: RecordedResponse {
                status: 200,
                headers: vec![],
                body: Payload(body.as_bytes().to_vec()),
            },
        }
    }

    #[test]
    fn newest_wins_delete_falls_back_and_cap_evicts_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), MatchKeyConfig::default(), 1 << 20).unwrap();
        let ids = store
            .insert(vec![rec("/a", 2, "new"), rec("/a", 1, "old")])
            .unwrap()
            .ids;
        let key = rec("/a", 0, "").key(store.key_config());
        let hit = store.lookup(&key).unwrap().unwrap();
        assert_eq!(hit.response.body.0, b"new");
        assert!(store.delete(ids[0]).unwrap());
        assert_eq!(store.lookup(&key).unwrap().unwrap().response.body.0, b"old");
        assert_eq!(store.clear().unwrap(), 1);
        assert!(store.lookup(&key).unwrap().is_none());
        assert_eq!(store.stats().unwrap().bytes, 0);
        drop(store);

        let one = serde_json::to_vec(&rec("/x", 1, "x")).unwrap().len() as u64;
        let store = Store::open(dir.path(), MatchKeyConfig::default(), one * 2 + 4).unwrap();
        for (i, p) in ["/x", "/y", "/z"].iter().enumerate() {
            store.insert(vec![rec(p, i as u64, "x")]).unwrap();
        }
        let (total, all) = store.list(0, 10).unwrap();
        assert_eq!(total, 2);
        assert_eq!(all[0].request.path, "/y");
        assert!(store
            .lookup(&rec("/x", 0, "").key(store.key_config()))
            .unwrap()
            .is_none());
    }

    #[test]
    fn changed_key_config_reindexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), MatchKeyConfig::default(), 1 << 20).unwrap();
        store.insert(vec![rec("/a?ts=1", 1, "v")]).unwrap();
        drop(store);
        let config = MatchKeyConfig {
            ignore_query_params: vec!["ts".into()],
            ..MatchKeyConfig::default()
        };
        let store = Store::open(dir.path(), config, 1 << 20).unwrap();
        let key = rec("/a?ts=99", 0, "").key(store.key_config());
        assert!(store.lookup(&key).unwrap().is_some());
    }

    #[test]
    fn a_group_commit_gives_each_group_its_ids_and_refuses_an_oversized_group_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), MatchKeyConfig::default(), 4096).unwrap();
        let big = "x".repeat(5000);
        let results = store
            .insert_groups(vec![
                vec![rec("/a", 1, "a"), rec("/b", 2, "b")],
                vec![rec("/big", 3, &big)],
                vec![rec("/c", 4, "c")],
            ])
            .unwrap();
        assert_eq!(results[0].as_ref().unwrap().ids, vec![1, 2]);
        assert!(matches!(results[1], Err(StoreError::TooLarge { .. })));
        assert_eq!(results[2].as_ref().unwrap().ids, vec![3]);
        assert_eq!(store.commits(), 1, "one durable commit for all three");
        assert_eq!(store.stats().unwrap().recordings, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_share_commits_and_each_gets_its_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), MatchKeyConfig::default(), 1 << 30).unwrap());
        let writer =
            crate::writer::Writer::start(store.clone(), std::time::Duration::from_millis(5))
                .unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let w = writer.clone();
            tasks.push(tokio::spawn(async move {
                w.insert(vec![rec(&format!("/r{i}"), i, "x")]).await
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.extend(t.await.unwrap().unwrap().ids);
        }
        ids.sort_unstable();
        assert_eq!(
            ids,
            (1..=200).collect::<Vec<u64>>(),
            "every record stored once"
        );
        assert_eq!(store.stats().unwrap().recordings, 200);
        assert!(
            store.commits() < 200,
            "{} commits for 200 records",
            store.commits()
        );
    }
}
