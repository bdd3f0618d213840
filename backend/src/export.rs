//! The export document: every recording as one JSON document, to move a recorded session
//! between machines (`GET /admin/export`, `POST /admin/import`, `backend export` / `import`).

use serde::{Deserialize, Serialize};

use crate::recording::Recording;

/// The `format` field of an export document.
pub const FORMAT: &str = "transparent-cache-backend-export";
/// The current document version.
pub const VERSION: u32 = 1;

/// An export document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportDocument {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written; later versions are refused.
    pub version: u32,
    /// The recordings, oldest first. Their ids are replaced on import; their recorded times kept.
    pub recordings: Vec<Recording>,
}

impl ExportDocument {
    /// A document holding these recordings.
    pub fn new(recordings: Vec<Recording>) -> ExportDocument {
        ExportDocument {
            format: FORMAT.to_owned(),
            version: VERSION,
            recordings,
        }
    }

    /// Parses and checks a document.
    pub fn parse(bytes: &[u8]) -> Result<ExportDocument, String> {
        let doc: ExportDocument =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid export document: {e}"))?;
        if doc.format != FORMAT {
            return Err(format!(
                "invalid export document: `format` is {:?}, expected {FORMAT:?}",
                doc.format
            ));
        }
        if doc.version > VERSION {
            return Err(format!(
                "export document version {} is newer than this backend's {VERSION}",
                doc.version
            ));
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let doc = ExportDocument::new(vec![]);
        let bytes = serde_json::to_vec(&doc).unwrap();
        assert_eq!(ExportDocument::parse(&bytes).unwrap(), doc);
        assert!(ExportDocument::parse(br#"{"format":"x","version":1,"recordings":[]}"#).is_err());
        let newer = format!(r#"{{"format":"{FORMAT}","version":2,"recordings":[]}}"#);
        assert!(ExportDocument::parse(newer.as_bytes()).is_err());
        assert!(ExportDocument::parse(b"{").is_err());
    }
}
