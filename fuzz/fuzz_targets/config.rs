//! The filter's configuration parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = filter_core::Config::from_json(data);
});
