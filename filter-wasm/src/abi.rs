//! Every host call the plugin makes, each returning the host's status as an error: the SDK's
//! wrappers (`proxy_wasm::hostcalls` and the `Context` helpers) panic on any status they do not
//! expect, and with `panic = "abort"` a panic kills the VM, so every later request on the worker
//! fails (Istio 1.18 has no fail strategy). The SDK is used only for its callback dispatch.
//! Everything unsafe in the crate is here.
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
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period_ms: u32) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
}

/// `MapType` values of the ABI.
pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
pub const CALL_RESPONSE_HEADERS: u32 = 6;
/// `BufferType` values of the ABI.
pub const REQUEST_BODY: u32 = 0;
pub const RESPONSE_BODY: u32 = 1;
pub const CALL_RESPONSE_BODY: u32 = 4;
pub const PLUGIN_CONFIGURATION: u32 = 7;
/// `LogLevel::Warn` / `Error`.
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;

/// Bytes the host allocated in our memory (through the SDK's `proxy_on_memory_allocate`, which
/// hands out `Vec<u8>` buffers of exactly the asked size), taken back as a `Vec`.
fn returned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the host wrote `size` bytes into a buffer our allocator made with that capacity,
    // and gave up its ownership to us.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// A call that returns bytes: `None` when the host says `NotFound` or returns nothing.
fn bytes_call(
    f: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> Result<Option<Vec<u8>>, HostError> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    match f(&mut data, &mut size) {
        0 => Ok(returned(data, size)),
        1 => Ok(None),
        other => Err(HostError(other)),
    }
}

/// The pairs of a header map, values as bytes (proxy-wasm's map serialization).
pub fn header_map(map_type: u32) -> Result<Vec<filter_core::Header>, HostError> {
    // SAFETY: the out-pointers are live for the call.
    let raw = bytes_call(|d, s| unsafe { proxy_get_header_map_pairs(map_type, d, s) })?;
    Ok(raw.map(|r| deserialize_pairs(&r)).unwrap_or_default())
}

/// One header of a map (`None`: absent).
pub fn header_value(map_type: u32, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    // SAFETY: the key and the out-pointers are live for the call.
    bytes_call(|d, s| unsafe {
        proxy_get_header_map_value(map_type, name.as_ptr(), name.len(), d, s)
    })
}

/// Adds a header line to a map.
pub fn add_header(map_type: u32, name: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: both slices live for the duration of the call; the host copies them.
    check(unsafe {
        proxy_add_header_map_value(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// `len` bytes of a buffer from `start` (empty when there are none).
pub fn buffer(buffer_type: u32, start: usize, len: usize) -> Result<Vec<u8>, HostError> {
    // SAFETY: the out-pointers are live for the call.
    Ok(
        bytes_call(|d, s| unsafe { proxy_get_buffer_bytes(buffer_type, start, len, d, s) })?
            .unwrap_or_default(),
    )
}

/// A property by path (`node.metadata.NAME` is `["node", "metadata", "NAME"]`).
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    let mut serialized = Vec::new();
    for part in path {
        serialized.extend_from_slice(part.as_bytes());
        serialized.push(0);
    }
    // SAFETY: the path and the out-pointers are live for the call.
    bytes_call(|d, s| unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), d, s) })
}

/// Makes `context_id` the stream later calls act on.
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: plain integer call.
    check(unsafe { proxy_set_effective_context(context_id) })
}

/// The host's wall-clock time, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> Result<u64, HostError> {
    let mut t = 0u64;
    // SAFETY: the out-pointer is live for the call.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

/// Asks for `proxy_on_tick` every `period_ms`.
pub fn set_tick_period(period_ms: u32) -> Result<(), HostError> {
    // SAFETY: plain integer call.
    check(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
}

/// Defines a counter (Envoy prefixes its name with `wasmcustom.`).
pub fn define_counter(name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: the name and the out-pointer are live for the call. 0 = Counter.
    check(unsafe { proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds `n` to a counter.
pub fn increment(metric_id: u32, n: i64) -> Result<(), HostError> {
    // SAFETY: plain integer call.
    check(unsafe { proxy_increment_metric(metric_id, n) })
}

/// Writes to Envoy's log.
pub fn log(level: u32, message: &str) {
    // SAFETY: the message is live for the call; a failed log has nowhere to be reported.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// proxy-wasm's header map deserialization (the inverse of [`serialize_pairs`]); malformed input
/// gives the pairs read so far, never a panic.
fn deserialize_pairs(raw: &[u8]) -> Vec<filter_core::Header> {
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = raw.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let Some(n) = word(0) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(n.min(256));
    let mut data = 4 + n.saturating_mul(8);
    for i in 0..n {
        let (Some(klen), Some(vlen)) = (word(4 + i * 8), word(8 + i * 8)) else {
            break;
        };
        let key = raw.get(data..data + klen);
        let value = raw.get(data + klen + 1..data + klen + 1 + vlen);
        let (Some(key), Some(value)) = (key, value) else {
            break;
        };
        out.push((key.to_vec(), value.to_vec()));
        data += klen + vlen + 2;
    }
    out
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

    #[test]
    fn pairs_deserialize_back_and_garbage_never_panics() {
        let pairs = vec![
            ("a".to_string(), b"\xff1".to_vec()),
            ("bc".into(), b"".to_vec()),
        ];
        let raw = serialize_pairs(&pairs);
        let back = deserialize_pairs(&raw);
        assert_eq!(
            back,
            vec![
                (b"a".to_vec(), b"\xff1".to_vec()),
                (b"bc".to_vec(), Vec::new())
            ]
        );
        for cut in 0..raw.len() {
            let _ = deserialize_pairs(&raw[..cut]);
        }
        assert!(deserialize_pairs(b"\xff\xff\xff\xff").is_empty());
    }
}
