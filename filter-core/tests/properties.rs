//! Nothing from outside can panic the engine: arbitrary bytes into the answer decoder and the config
//! parser, arbitrary JSON documents into both, arbitrary event sequences into a stream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // a test crate

use std::sync::Arc;

use filter_core::codec::{self, Format};
use filter_core::{
    AtomicCounters, Config, Engine, Flow, LookupFailure, LookupResult, Node, Services, Stream,
};
use proptest::prelude::*;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        "[a-zA-Z0-9_.:/ -]{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("record_only"),
            Just("off"),
            Just("hold_headers"),
            Just("base64"),
            Just("stringValue"),
            Just("http.response.status_code"),
            Just("http.response.body"),
            Just("resourceSpans"),
            Just("scopeSpans"),
            Just("spans"),
            Just("attributes"),
            Just("key"),
            Just("value"),
            Just("intValue"),
            Just("bytesValue"),
            Just("arrayValue"),
            Just("values"),
            Just("traceId"),
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,10}",
                    Just("mode".to_string()),
                    Just("backend".to_string()),
                    Just("rules".to_string()),
                    Just("resourceSpans".to_string()),
                    Just("scopeSpans".to_string()),
                    Just("spans".to_string()),
                    Just("attributes".to_string()),
                    Just("key".to_string()),
                    Just("value".to_string()),
                    Just("stringValue".to_string()),
                    Just("intValue".to_string()),
                    Just("arrayValue".to_string()),
                    Just("values".to_string()),
                    Just("bytesValue".to_string()),
                    Just("traceId".to_string()),
                ],
                inner,
                0..6,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn answer_decoder_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode_answer(&body, Format::Protobuf, &Default::default());
        let _ = codec::decode_answer(&body, Format::Json, &Default::default());
    }

    #[test]
    fn answer_decoder_never_panics_on_json(doc in json_value()) {
        let _ = codec::decode_answer(doc.to_string().as_bytes(), Format::Json, &Default::default());
    }

    #[test]
    fn config_parser_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Config::from_json(&body);
    }

    #[test]
    fn config_parser_never_panics_on_json(doc in json_value()) {
        let _ = Config::from_json(doc.to_string().as_bytes());
    }

    /// A protobuf answer mutated at random bytes decodes or fails, never panics.
    #[test]
    fn mutated_answers_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let resp = filter_core::Response { status: 200, headers: vec![("a".into(), b"b".to_vec())], body: b"hello".to_vec() };
        let mut body = codec::encode_answer("svc", &codec::SpanIds::default(), &resp);
        for (i, b) in flips {
            let i = i.index(body.len());
            if let Some(x) = body.get_mut(i) { *x = b; }
        }
        let _ = codec::decode_answer(&body, Format::Protobuf, &Default::default());
    }

    /// Any headers, any chunking, any lookup outcome: no panic, and a held request is always
    /// eventually released or answered.
    #[test]
    fn streams_never_panic_and_never_stay_held(
        headers in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..12), prop::collection::vec(any::<u8>(), 0..24)), 0..8),
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..6),
        outcome in 0u8..6,
        answer in prop::collection::vec(any::<u8>(), 0..64),
        hold in any::<bool>(),
        limit in 0usize..200,
    ) {
        let config = Config::from_value(&serde_json::json!({
            "request_mode": if hold { "hold_headers" } else { "stream_headers" },
            "max_request_body_bytes": limit,
        })).unwrap();
        let engine = Arc::new(Engine::new(config, &Node::default(), Services {
            metrics: Arc::new(AtomicCounters::default()), clock: Box::new(|| 1), seed: 3,
        }));
        let mut s = Stream::new(engine);
        let mut all = vec![(b":method".to_vec(), b"POST".to_vec()), (b":path".to_vec(), b"/x".to_vec()), (b":authority".to_vec(), b"h".to_vec())];
        all.extend(headers);
        let mut d = s.on_request_headers(all, chunks.is_empty());
        for (i, c) in chunks.iter().enumerate() {
            if d.effects.lookup.is_some() || d.flow == Flow::Stop { break; }
            d = s.on_request_body(c, i + 1 == chunks.len());
        }
        if d.effects.lookup.is_some() {
            let result = match outcome {
                0 => LookupResult::Answer { status: 404, content_type: None, body: &[] },
                1 => LookupResult::Answer { status: 200, content_type: None, body: &answer },
                2 => LookupResult::Answer { status: 200, content_type: Some(b"application/json"), body: &answer },
                3 => LookupResult::Answer { status: 503, content_type: None, body: &answer },
                4 => LookupResult::Failed(LookupFailure::Timeout),
                _ => LookupResult::Failed(LookupFailure::Transport),
            };
            d = s.on_lookup_result(result);
            prop_assert!(matches!(d.flow, Flow::Release | Flow::Stop), "lookup ended in {:?}", d);
        }
        // Every chunk was delivered (or the stream was answered): nothing may stay held, and a
        // held request always has a deadline for the host's timer.
        prop_assert!(d.flow != Flow::Hold || d.effects.hold_deadline_ms.is_some(), "held without a deadline: {:?}", d);
        prop_assert!(d.flow != Flow::Hold, "request left held: {:?}", d);
        let _ = s.on_response_headers(200, vec![(b"content-type".to_vec(), answer.clone())], false);
        let _ = s.on_response_body(&answer, true);
    }
}
