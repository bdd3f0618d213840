use super::*;
use crate::config::MatchKeyConfig;

/// An export document held whole, to build and read documents in tests (the code streams).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ExportDocument {
    /// Always [`FORMAT`].
    format: String,
    /// [`VERSION`] when written; later versions are refused.
    version: u32,
    /// The recordings, oldest first. Their ids are replaced on import; their recorded times kept.
    recordings: Vec<Recording>,
}

impl ExportDocument {
    /// A document holding these recordings.
    fn new(recordings: Vec<Recording>) -> ExportDocument {
        ExportDocument {
            format: FORMAT.to_owned(),
            version: VERSION,
            recordings,
        }
    }
}

fn rec(path: &str, body: usize) -> Recording {
    crate::recording::sample(path, 1, &vec![b'x'; body])
}

fn collect(doc: &[u8], limit: u64) -> (Result<Imported, ImportError>, Vec<Vec<Recording>>) {
    let mut batches = Vec::new();
    let result = import(doc, limit, &mut |batch| {
        batches.push(batch);
        Ok(Inserted::default())
    });
    (result, batches)
}

#[test]
fn a_written_document_imports_back_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), MatchKeyConfig::default(), 1 << 30).unwrap();
    let n = BATCH_RECORDINGS * 2 + PAGE + 3;
    let all: Vec<Recording> = (0..n).map(|i| rec(&format!("/{i}"), 10)).collect();
    store.insert(all).unwrap();
    let mut doc = Vec::new();
    assert_eq!(write(&store, &mut doc).unwrap(), n as u64);
    let whole: ExportDocument = serde_json::from_slice(&doc).unwrap();
    assert_eq!(whole.recordings.len(), n);
    assert_eq!(whole.recordings[5].request.path, "/5");

    let (result, batches) = collect(&doc, 1 << 20);
    let done = result.unwrap();
    assert_eq!(done.imported, n as u64);
    assert_eq!(batches.len(), 3, "two full batches and the rest");
    assert_eq!(batches[0].len(), BATCH_RECORDINGS);
    assert_eq!(
        batches[2][0].request.path,
        format!("/{}", 2 * BATCH_RECORDINGS)
    );
}

#[test]
fn batches_are_bounded_by_bytes_too() {
    let big: Vec<Recording> = (0..20).map(|i| rec(&format!("/{i}"), 1 << 20)).collect();
    let doc = serde_json::to_vec(&ExportDocument::new(big)).unwrap();
    let (result, batches) = collect(&doc, 2 << 20);
    assert_eq!(result.unwrap().imported, 20);
    assert!(batches.len() >= 3, "{} batches", batches.len());
    assert!(batches.iter().all(|b| b.len() <= 8));
}

#[test]
fn one_recording_over_the_limit_stops_the_import_after_what_was_committed() {
    let mut recs: Vec<Recording> = (0..BATCH_RECORDINGS)
        .map(|i| rec(&format!("/{i}"), 1))
        .collect();
    recs.push(rec("/huge", 4096));
    recs.push(rec("/after", 1));
    let doc = serde_json::to_vec(&ExportDocument::new(recs)).unwrap();
    let (result, batches) = collect(&doc, 1024);
    assert!(
        matches!(result, Err(ImportError::TooLarge(1024))),
        "{result:?}"
    );
    assert_eq!(batches.len(), 1, "the full batch before it was committed");
}

#[test]
fn malformed_documents_are_refused_with_what_is_wrong() {
    let cases: [(&[u8], &str); 6] = [
        (
            br#"{"format":"x","version":1,"recordings":[]}"#,
            "`format` is \"x\"",
        ),
        (
            br#"{"recordings":[],"format":"transparent-cache-backend-export"}"#,
            "must come before",
        ),
        (
            br#"{"format":"transparent-cache-backend-export","version":2,"recordings":[]}"#,
            "newer than",
        ),
        (
            br#"{"format":"transparent-cache-backend-export"}"#,
            "missing field `recordings`",
        ),
        (b"{", "EOF"),
        (
            br#"{"format":"transparent-cache-backend-export","recordings":[{"nope":1}]}"#,
            "missing field",
        ),
    ];
    for (doc, want) in cases {
        let (result, batches) = collect(doc, 1 << 20);
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains(want),
            "{} -> {err}",
            String::from_utf8_lossy(doc)
        );
        assert!(batches.is_empty());
    }
    let (result, _) = collect(
        br#"{"format":"transparent-cache-backend-export","extra":{"a":[1]},"version":1,"recordings":[]} "#,
        1 << 20,
    );
    assert_eq!(result.unwrap().imported, 0, "unknown fields are skipped");
}
