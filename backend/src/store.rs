//! The embedded, durable recording store (redb).
//!
//! Tables: `recordings` (id → recording JSON, ids grow with insertion, so the first id is the
//! oldest), `index` (match key → `(recorded_at, id)` pairs, the last one is the newest),
//! `by_time` (`(recorded_at, id)`, for TTL expiry) and `meta` (the next id, the stored bytes, the
//! key configuration the index was built with). Every write is one transaction committed with
//! immediate durability before it returns.
//!
//! Retention ([`Retention`]): at most `keep_per_key` recordings per match key (the newest by
//! `recorded_at` win: an upsert), recordings older than `ttl` are never served and are deleted by
//! [`Store::expire`], and the oldest go first when the store is over its byte cap.

use std::path::{Path, PathBuf};

use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};

use crate::config::MatchKeyConfig;
use crate::key::{self, KeyHash};
use crate::recording::Recording;

const RECORDINGS: TableDefinition<u64, &[u8]> = TableDefinition::new("recordings");
const INDEX: MultimapTableDefinition<&[u8], (u64, u64)> = MultimapTableDefinition::new("index");
const BY_TIME: TableDefinition<(u64, u64), ()> = TableDefinition::new("by_time");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");

const NEXT_ID: &str = "next_id";
const BYTES: &str = "bytes";
const KEY_CONFIG: &str = "key_config";

/// The database's page cache. redb's default (1 GiB) would let the cache alone fill a pod's
/// memory limit as the store grows; the OS page cache still holds what is read often.
pub const CACHE_BYTES: usize = 64 << 20;

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
    /// Recordings removed because a newer one with the same key replaced them (an imported
    /// recording older than the ones its key keeps is itself the one removed).
    pub replaced: u64,
}

/// How long recordings are kept, and how many per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Recordings kept per match key, newest by `recorded_at` first; 0 keeps every one (the
    /// newest is still the one served).
    pub keep_per_key: u64,
    /// Recordings older than this are not served and are deleted by [`Store::expire`]; `None`
    /// keeps them until the size cap evicts them.
    pub ttl: Option<std::time::Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_per_key: 1,
            ttl: None,
        }
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The tables a write changes, opened in one transaction.
struct Tables<'t> {
    recordings: redb::Table<'t, u64, &'static [u8]>,
    index: redb::MultimapTable<'t, &'static [u8], (u64, u64)>,
    by_time: redb::Table<'t, (u64, u64), ()>,
}

impl Tables<'_> {
    fn open(txn: &redb::WriteTransaction) -> Result<Tables<'_>, StoreError> {
        Ok(Tables {
            recordings: txn.open_table(RECORDINGS)?,
            index: txn.open_multimap_table(INDEX)?,
            by_time: txn.open_table(BY_TIME)?,
        })
    }

    fn add(&mut self, key: &KeyHash, rec: &Recording, value: &[u8]) -> Result<(), StoreError> {
        let at = rec.recorded_at_unix_nanos;
        self.recordings.insert(rec.id, value)?;
        self.index.insert(key.as_slice(), (at, rec.id))?;
        self.by_time.insert((at, rec.id), ())?;
        Ok(())
    }

    /// Removes one recording from every table, decoding it for its key and time; its stored
    /// size, or `None` when there was none.
    fn remove(&mut self, id: u64, key_config: &MatchKeyConfig) -> Result<Option<u64>, StoreError> {
        let Some(value) = self.recordings.remove(id)?.map(|v| v.value().to_vec()) else {
            return Ok(None);
        };
        if let Ok(rec) = decode(id, &value) {
            let at = rec.recorded_at_unix_nanos;
            self.index
                .remove(rec.key(key_config).as_slice(), (at, id))?;
            self.by_time.remove((at, id))?;
        }
        Ok(Some(value.len() as u64))
    }

    /// Removes one recording whose key and time are known (no decoding); its stored size.
    fn remove_known(&mut self, key: &KeyHash, at: u64, id: u64) -> Result<Option<u64>, StoreError> {
        let size = self.recordings.remove(id)?.map(|v| v.value().len() as u64);
        self.index.remove(key.as_slice(), (at, id))?;
        self.by_time.remove((at, id))?;
        Ok(size)
    }

    /// Keeps the newest `keep` entries of `key`; the `(recorded_at, id)` pairs to remove.
    fn trim_key(&mut self, key: &KeyHash, keep: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut entries = Vec::new();
        for entry in self.index.get(key.as_slice())? {
            entries.push(entry?.value());
        }
        let excess = (entries.len() as u64).saturating_sub(keep);
        let excess = usize::try_from(excess).unwrap_or(usize::MAX);
        // Entries come sorted by (recorded_at, id): the first are the oldest.
        entries.truncate(excess);
        Ok(entries)
    }
}

/// The store. Cheap to share behind an `Arc`; every method blocks, call it off the async runtime.
pub struct Store {
    db: Database,
    path: PathBuf,
    key: MatchKeyConfig,
    max_bytes: u64,
    retention: Retention,
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
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)?;
        let store = Store {
            db,
            path,
            key,
            max_bytes,
            retention: Retention::default(),
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
            txn.open_table(BY_TIME)?;
            let mut settings = txn.open_table(SETTINGS)?;
            let want = fingerprint(&self.key);
            let have = settings.get(KEY_CONFIG)?.map(|v| v.value().to_owned());
            if have.as_deref() != Some(want.as_str()) {
                if have.is_some() {
                    tracing::info!("match key configuration changed: re-indexing recordings");
                }
                txn.delete_multimap_table(INDEX)?;
                txn.delete_table(BY_TIME)?;
                let mut index = txn.open_multimap_table(INDEX)?;
                let mut by_time = txn.open_table(BY_TIME)?;
                let recordings = txn.open_table(RECORDINGS)?;
                for entry in recordings.iter()? {
                    let (id, value) = entry?;
                    let id = id.value();
                    match decode(id, value.value()) {
                        Ok(rec) => {
                            let at = rec.recorded_at_unix_nanos;
                            index.insert(rec.key(&self.key).as_slice(), (at, id))?;
                            by_time.insert((at, id), ())?;
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

    /// Sets how long recordings are kept and how many per key (applied from the next write;
    /// a TTL applies to lookups at once).
    pub fn with_retention(mut self, retention: Retention) -> Store {
        self.retention = retention;
        self
    }

    /// The match key configuration.
    pub fn key_config(&self) -> &MatchKeyConfig {
        &self.key
    }

    /// The retention rules.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// The oldest `recorded_at` still served at `now`.
    fn fresh_since(&self, now: u64) -> u64 {
        self.retention.ttl.map_or(0, |ttl| {
            now.saturating_sub(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
        })
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
            let mut tables = Tables::open(&txn)?;
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
                    let key = rec.key(&self.key);
                    tables.add(&key, &rec, &value)?;
                    bytes = bytes.saturating_add(value.len() as u64);
                    out.ids.push(rec.id);
                    next_id = rec.id.saturating_add(1);
                    if self.retention.keep_per_key > 0 {
                        for (at, old) in tables.trim_key(&key, self.retention.keep_per_key)? {
                            if let Some(size) = tables.remove_known(&key, at, old)? {
                                bytes = bytes.saturating_sub(size);
                                out.replaced += 1;
                            }
                        }
                    }
                }
                results.push(Ok(out));
            }
            let mut evicted = 0;
            while bytes > self.max_bytes {
                let Some(first) = tables.recordings.first()?.map(|(id, _)| id.value()) else {
                    bytes = 0;
                    break;
                };
                let size = tables.remove(first, &self.key)?.unwrap_or(0);
                bytes = bytes.saturating_sub(size);
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

    /// Deletes recordings older than the TTL at `now` (Unix nanoseconds), at most `limit` in one
    /// transaction; how many were deleted. Nothing without a TTL.
    pub fn expire(&self, now: u64, limit: usize) -> Result<u64, StoreError> {
        if self.retention.ttl.is_none() {
            return Ok(0);
        }
        let cutoff = self.fresh_since(now);
        let txn = self.db.begin_write()?;
        let mut expired = 0;
        {
            let mut tables = Tables::open(&txn)?;
            let mut old = Vec::new();
            for entry in tables.by_time.range(..(cutoff, 0))?.take(limit) {
                old.push(entry?.0.value().1);
            }
            let mut meta = txn.open_table(META)?;
            let mut bytes = meta.get(BYTES)?.map_or(0, |v| v.value());
            for id in old {
                if let Some(size) = tables.remove(id, &self.key)? {
                    bytes = bytes.saturating_sub(size);
                    expired += 1;
                }
            }
            meta.insert(BYTES, bytes)?;
        }
        txn.commit()?;
        Ok(expired)
    }

    /// The newest recording with this key, unless it is older than the TTL (lazy expiry: an
    /// expired recording is a miss even before [`Store::expire`] deletes it).
    pub fn lookup(&self, key: &KeyHash) -> Result<Option<Recording>, StoreError> {
        let fresh_since = self.fresh_since(now_unix_nanos());
        let txn = self.db.begin_read()?;
        let index = txn.open_multimap_table(INDEX)?;
        let table = txn.open_table(RECORDINGS)?;
        let mut candidates = index.get(key.as_slice())?;
        while let Some(entry) = candidates.next_back() {
            let (at, id) = entry?.value();
            if at < fresh_since {
                return Ok(None);
            }
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

    /// Up to `limit` stored recordings with an id above `after`, in id order, as stored (their
    /// JSON form, which carries their id): the export's page.
    pub fn raw_page(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDINGS)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in table.range(after.saturating_add(1)..)?.take(limit) {
            let (id, value) = entry?;
            out.push((id.value(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Deletes one recording; false when there was none.
    pub fn delete(&self, id: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let found;
        {
            let mut tables = Tables::open(&txn)?;
            let mut meta = txn.open_table(META)?;
            let removed = tables.remove(id, &self.key)?;
            found = removed.is_some();
            if let Some(size) = removed {
                let bytes = meta.get(BYTES)?.map_or(0, |v| v.value());
                meta.insert(BYTES, bytes.saturating_sub(size))?;
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
            txn.delete_table(BY_TIME)?;
            Tables::open(&txn)?;
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
    use std::sync::Arc;

    fn rec(path: &str, at: u64, body: &str) -> Recording {
        crate::recording::sample(path, at, body.as_bytes())
    }

    impl Store {
        fn all_for_test(&self) -> Vec<Recording> {
            self.list(0, u64::MAX).unwrap().1
        }
    }

    #[test]
    fn newest_wins_delete_falls_back_and_cap_evicts_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), MatchKeyConfig::default(), 1 << 20)
            .unwrap()
            .with_retention(Retention {
                keep_per_key: 0,
                ..Retention::default()
            });
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
    fn latest_wins_per_key_and_keep_per_key_keeps_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), MatchKeyConfig::default(), 1 << 20).unwrap();
        let key = rec("/a", 0, "").key(store.key_config());
        store.insert(vec![rec("/a", 5, "first")]).unwrap();
        let second = store.insert(vec![rec("/a", 6, "second")]).unwrap();
        assert_eq!(second.replaced, 1);
        assert_eq!(store.stats().unwrap().recordings, 1);
        assert_eq!(
            store.lookup(&key).unwrap().unwrap().response.body.0,
            b"second"
        );
        let older = store.insert(vec![rec("/a", 1, "imported, older")]).unwrap();
        assert_eq!(older.replaced, 1, "the older import is the one dropped");
        assert_eq!(
            store.lookup(&key).unwrap().unwrap().response.body.0,
            b"second"
        );
        let one = store.stats().unwrap().bytes;
        assert_eq!(
            one,
            serde_json::to_vec(&store.all_for_test()[0]).unwrap().len() as u64
        );
        drop(store);

        let history = Retention {
            keep_per_key: 0,
            ..Retention::default()
        };
        let store = Store::open(dir.path(), MatchKeyConfig::default(), 1 << 20)
            .unwrap()
            .with_retention(history);
        store.insert(vec![rec("/a", 7, "third")]).unwrap();
        store.insert(vec![rec("/a", 8, "fourth")]).unwrap();
        assert_eq!(store.stats().unwrap().recordings, 3);
        assert_eq!(
            store.lookup(&key).unwrap().unwrap().response.body.0,
            b"fourth"
        );
    }

    #[test]
    fn expired_recordings_are_misses_then_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = std::time::Duration::from_secs(60);
        let store = Store::open(dir.path(), MatchKeyConfig::default(), 1 << 20)
            .unwrap()
            .with_retention(Retention {
                ttl: Some(ttl),
                ..Retention::default()
            });
        let now = now_unix_nanos();
        let old = now - 61_000_000_000;
        store
            .insert(vec![rec("/old", old, "o"), rec("/new", now, "n")])
            .unwrap();
        let key = |p: &str| rec(p, 0, "").key(store.key_config());
        assert!(store.lookup(&key("/old")).unwrap().is_none(), "lazy expiry");
        assert!(store.lookup(&key("/new")).unwrap().is_some());
        assert_eq!(store.stats().unwrap().recordings, 2);
        assert_eq!(store.expire(now, 100).unwrap(), 1);
        assert_eq!(store.stats().unwrap().recordings, 1);
        assert_eq!(store.expire(now, 100).unwrap(), 0);
        assert_eq!(store.expire(now + 61_000_000_000, 100).unwrap(), 1);
        assert_eq!(store.stats().unwrap().bytes, 0);
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
