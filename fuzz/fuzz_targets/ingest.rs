//! The backend's span ingest: any body on `/v1/traces` or `/v1/inject`, read as spans, turned
//! into recordings and match keys (what the handlers do before touching the store).
#![no_main]
use backend::config::MatchKeyConfig;
use backend::recording::Recording;
use filter_core::codec::{decode_traces, read_span, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [Format::Protobuf, Format::Json] {
        let Ok(traces) = decode_traces(data, format) else {
            continue;
        };
        for (resource, span) in traces.spans() {
            let Ok(http) = read_span(resource, span) else {
                continue;
            };
            if let Ok(rec) = Recording::from_span(http, 1) {
                let _ = rec.key(&MatchKeyConfig::default());
                let _ = rec.to_response();
                let json = serde_json::to_vec(&rec).expect("a recording serializes");
                let back: Recording = serde_json::from_slice(&json).expect("and reads back");
                assert_eq!(back, rec);
            }
        }
    }
});
