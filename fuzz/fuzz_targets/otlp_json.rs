//! OTLP/JSON: decoding any bytes, and re-encoding what decodes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(traces) = filter_core::otlp_json::decode(data) {
        let again = filter_core::otlp_json::encode(&traces);
        assert!(
            filter_core::otlp_json::decode(&again).is_ok(),
            "our own JSON must decode"
        );
    }
});
