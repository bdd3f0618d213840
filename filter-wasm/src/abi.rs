//! The few host calls the plugin makes without the SDK's wrappers, because those panic (aborting
//! the VM, so every request on the worker fails) on statuses that can really happen, or take
//! header values only as `&str`. Everything unsafe in the crate is here.
#![allow(unsafe_code)]

use std::ptr::null;

/// A proxy-wasm status other than `Ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            1 => "NotFound",
            2 => "BadArgument",
            3 => "SerializationFailure",
            4 => "ParseFailure",
            7 => "Empty",
            10 => "InternalFailure",
            12 => "Unimplemented",
            _ => "unknown status",
        };
        write!(f, "{name} ({})", self.0)
    }
}

fn check(status: u32) -> Result<(), HostError> {
    if status == 0 {
        Ok(())
    } else {
        Err(HostError(status))
    }
}

// The SDK declares the same imports with its own `Status` return type; the ABI is a u32 either way.
#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
}

/// proxy-wasm's header map serialization, with values as bytes.
fn serialize_pairs(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(n, v)| n.len() + v.len() + 10)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Answers the current (effective) stream locally; header values are passed as bytes. Envoy defers
/// the reply until the plugin's callback returns.
pub fn send_local_response(
    status: u16,
    details: &str,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Result<(), HostError> {
    let headers = serialize_pairs(headers);
    // SAFETY: every pointer/length pair describes a live slice for the duration of the call; the
    // host copies what it needs.
    let status = unsafe {
        proxy_send_local_response(
            u32::from(status),
            details.as_ptr(),
            details.len(),
            if body.is_empty() {
                null()
            } else {
                body.as_ptr()
            },
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    check(status)
}

/// Resumes the current (effective) stream's request (deferred by Envoy until the callback returns).
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: plain integer call. 0 = HttpRequest.
    check(unsafe { proxy_continue_stream(0) })
}

/// Sets a property of the current (effective) stream. `key` is one path element (Envoy stores it
/// as filter state `wasm.<key>`).
pub fn set_property(key: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: both slices live for the duration of the call; the host copies them.
    check(unsafe { proxy_set_property(key.as_ptr(), key.len(), value.as_ptr(), value.len()) })
}

/// Sets (replacing any value) a header of the current (effective) stream's request header map.
/// The SDK's `set_map_value` panics when the host answers anything but `Ok` (e.g. no request
/// header map any more).
pub fn replace_request_header(name: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: both slices live for the duration of the call; the host copies them. 0 =
    // HttpRequestHeaders.
    check(unsafe {
        proxy_replace_header_map_value(0, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, len: usize) -> i32;
}

/// 8 bytes from the host's random source (WASI `random_get`, which Envoy's proxy-wasm host gives
/// every module whether or not it is a WASI module).
#[cfg(target_arch = "wasm32")]
pub fn random_u64() -> Result<u64, HostError> {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is a live, writable 8-byte buffer.
    let errno = unsafe { random_get(buf.as_mut_ptr(), buf.len()) };
    if errno == 0 {
        Ok(u64::from_le_bytes(buf))
    } else {
        Err(HostError(errno as u32))
    }
}

/// Host builds (clippy, `cargo test --workspace`) never run the plugin.
#[cfg(not(target_arch = "wasm32"))]
pub fn random_u64() -> Result<u64, HostError> {
    Err(HostError(12))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_serialize_like_the_sdk() {
        let got = serialize_pairs(&[("a".into(), b"\xff1".to_vec())]);
        assert_eq!(got, b"\x01\0\0\0\x01\0\0\0\x02\0\0\0a\0\xff1\0");
    }
}
