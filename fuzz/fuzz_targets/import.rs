//! The backend's streamed import: any bytes as an export document (`POST /admin/import`,
//! `backend import`), parsed one recording at a time under a per-recording limit and handed to
//! the store in batches (here a sink that checks every batch's bounds).
#![no_main]
use backend::export::{self, BATCH_RECORDINGS};
use backend::store::Inserted;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut stored = 0u64;
    let result = export::import(data, 4096, &mut |batch| {
        assert!(!batch.is_empty() && batch.len() <= BATCH_RECORDINGS);
        stored += batch.len() as u64;
        Ok(Inserted::default())
    });
    if let Ok(done) = result {
        assert_eq!(done.imported, stored);
    }
});
