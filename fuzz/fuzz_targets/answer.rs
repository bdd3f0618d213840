//! The lookup-answer decoder (what the backend sends back), both formats.
#![no_main]
use filter_core::codec::{decode_answer, Format, Redactor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let redactor = Redactor::new(["set-cookie", "authorization"]);
    let _ = decode_answer(data, Format::Protobuf, &redactor);
    let _ = decode_answer(data, Format::Json, &redactor);
});
