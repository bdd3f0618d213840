//! Our minimal binding of Envoy's dynamic-module ABI, written for **Envoy 1.40.0** (ABI version
//! [`ABI_VERSION`]), and the glue from its event hooks to [`crate::sdk`]. This is the only module
//! with `unsafe` code.
//!
//! It declares exactly what the filter uses: the program-init hook, the 20 HTTP-filter hooks
//! Envoy 1.40 requires (it rejects the filter config when one is missing), the two optional
//! config-level hooks we need (scheduled, callout done), and 19 callbacks. C enums cross the
//! boundary as `u32` (a C `enum` is an `int`): an unknown value is never turned into a Rust enum.
//!
//! Threading (Envoy's rules): `program_init` and everything `http_filter_config_*` run on the
//! **main thread**; `http_filter_new` and every per-stream hook run on the **worker thread** that
//! owns the stream, one event at a time. Callbacks taking a `filter_envoy_ptr` may only be called
//! on that worker during an event of that stream; those taking a `filter_config_envoy_ptr` on the
//! main thread, except the scheduler commit and the config counter increment, which any thread
//! may call.
//!
//! Safety: every hook catches panics (`catch_unwind`) and fails open: a request event answers
//! "continue", an asynchronous event releases a request it had stopped, and the stream's filter
//! is then bypassed for the rest of the stream. Nothing unwinds into Envoy.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::raw::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::sdk::{
    BodyStatus, CalloutInitError, CalloutResult, CounterId, CounterSink, EnvoyHttpFilter,
    EnvoyHttpFilterConfig, HeaderRef, HeadersStatus, HttpFilter, HttpFilterConfig, LogLevel,
    MetricsError, PassThroughConfig, PassThroughFilter, Scheduler, TrailersStatus,
};

/// The ABI version of Envoy 1.40.0 that this binding follows. Envoy compares it with its own on
/// load and only logs a warning on a mismatch, so a wrong value shows in the log, not as an error:
/// the testbed asserts Envoy's "Dynamic module ABI version v0.2.0 matched." line.
pub const ABI_VERSION: &str = "v0.2.0";
static ABI_VERSION_NUL: &[u8] = b"v0.2.0\0";

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// Envoy's `DynamicModuleHttpFilterConfig` (owned by Envoy).
pub type ConfigEnvoyPtr = *mut c_void;
/// Our config (owned by us, released in `http_filter_config_destroy`).
pub type ConfigModulePtr = *const c_void;
/// Envoy's `DynamicModuleHttpFilter` of one stream (owned by Envoy).
pub type FilterEnvoyPtr = *mut c_void;
/// Our filter of one stream (owned by us, released in `http_filter_destroy`).
pub type FilterModulePtr = *const c_void;
/// A config scheduler: made by Envoy, released by us with `..._config_scheduler_delete`.
pub type ConfigSchedulerPtr = *mut c_void;
/// A stream scheduler: made by Envoy, released by us with `..._http_filter_scheduler_delete`.
pub type StreamSchedulerPtr = *mut c_void;

/// Bytes owned by Envoy, valid for the current hook.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

/// Bytes owned by the module, read by Envoy during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

/// A header owned by Envoy.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// A header owned by the module.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

impl EnvoyBuffer {
    const EMPTY: EnvoyBuffer = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

impl EnvoyHttpHeader {
    const EMPTY: EnvoyHttpHeader = EnvoyHttpHeader {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };
}

impl ModuleBuffer {
    fn of(b: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: b.as_ptr().cast(),
            length: b.len(),
        }
    }
}

impl ModuleHttpHeader {
    fn of(name: &[u8], value: &[u8]) -> ModuleHttpHeader {
        ModuleHttpHeader {
            key_ptr: name.as_ptr().cast(),
            key_length: name.len(),
            value_ptr: value.as_ptr().cast(),
            value_length: value.len(),
        }
    }
}

// `envoy_dynamic_module_type_http_header_type`
const HEADER_TYPE_REQUEST_HEADER: u32 = 0;
const HEADER_TYPE_RESPONSE_HEADER: u32 = 2;
// `envoy_dynamic_module_type_http_body_type`
const BODY_TYPE_RECEIVED_REQUEST: u32 = 0;
const BODY_TYPE_RECEIVED_RESPONSE: u32 = 2;
// `..._on_http_filter_{request,response}_{headers,body,trailers}_status`: 0 is Continue; 1 is
// StopIteration (headers, trailers) / StopIterationAndBuffer (body).
const STATUS_CONTINUE: u32 = 0;
const STATUS_STOP: u32 = 1;
// `envoy_dynamic_module_type_http_callout_init_result`
const CALLOUT_INIT_SUCCESS: u32 = 0;
// `envoy_dynamic_module_type_metrics_result`
const METRICS_SUCCESS: u32 = 0;

// ---------------------------------------------------------------------------------------------
// Callbacks (implemented by Envoy, resolved against the Envoy binary when the module is loaded)
// ---------------------------------------------------------------------------------------------

/// Declares the callbacks: `extern "C"` for the real module, stubs returning zero values for the
/// unit tests (which link without Envoy).
macro_rules! callbacks {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?; )*) => {
        #[cfg(not(test))]
        mod ffi {
            use super::*;
            extern "C" {
                $( $(#[$doc])* pub fn $name($($arg: $ty),*) $(-> $ret)?; )*
            }
        }
        #[cfg(test)]
        #[allow(unused_variables, clippy::missing_safety_doc)]
        mod ffi {
            use super::*;
            $( pub unsafe fn $name($($arg: $ty),*) $(-> $ret)? { Zero::zero() } )*
        }
    };
}

#[cfg(test)]
trait Zero {
    fn zero() -> Self;
}
#[cfg(test)]
impl Zero for () {
    fn zero() {}
}
#[cfg(test)]
impl Zero for bool {
    fn zero() -> bool {
        false
    }
}
#[cfg(test)]
impl Zero for u32 {
    fn zero() -> u32 {
        1
    }
}
#[cfg(test)]
impl Zero for usize {
    fn zero() -> usize {
        0
    }
}
#[cfg(test)]
impl Zero for *mut c_void {
    fn zero() -> *mut c_void {
        std::ptr::null_mut()
    }
}

callbacks! {
    /// Writes `message` to Envoy's log under the `dynamic_modules` id. Any thread.
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);

    /// The number of headers of a map (`header_type`) of the stream. Worker thread, during an
    /// event of that stream.
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterEnvoyPtr,
        header_type: u32,
    ) -> usize;

    /// Fills `result` (room for `get_headers_size` entries) with the headers of a map, in order;
    /// the bytes stay Envoy's, valid until the end of the current hook. Worker thread, during an
    /// event of that stream.
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: u32,
        result: *mut EnvoyHttpHeader,
    ) -> bool;

    /// The number of buffer slices of a body (`body_type`: received or buffered, request or
    /// response). Worker thread, during an event of that stream.
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: FilterEnvoyPtr,
        body_type: u32,
    ) -> usize;

    /// Fills `result` (room for `get_body_chunks_size` entries) with the slices of a body, no copy;
    /// valid until the end of the current hook. The received body exists only in the body hooks.
    /// Worker thread, during an event of that stream.
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterEnvoyPtr,
        body_type: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;

    /// Sends a local reply to the client (Envoy sets the framing headers). Worker thread, during
    /// an event of that stream or one of its callouts' answers.
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    /// Sends response headers (`:status` included) to the client as given, ending the stream
    /// when `end_stream`; Envoy's local-reply rewriting does not apply. Worker thread, during an
    /// event of that stream or one of its callouts' answers.
    fn envoy_dynamic_module_callback_http_send_response_headers(
        filter: FilterEnvoyPtr,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        end_stream: bool,
    );

    /// Resumes a request stopped by a hook. Worker thread, outside the request hooks (e.g. in
    /// the callout-done hook).
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterEnvoyPtr);

    /// Starts a callout bound to the stream to `cluster`; `headers` must hold `:method`, `:path`
    /// and `host` (`:authority`). The answer comes to `on_http_filter_http_callout_done` on the
    /// same worker; Envoy cancels it if the stream ends first. Returns an init result (0: started).
    /// Worker thread, during an event of that stream.
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterEnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;

    /// Defines a counter (optionally labelled) in the config's stats scope, prefixed with the
    /// module config's `metrics_namespace`. Main thread, only inside `on_http_filter_config_new`
    /// (afterwards Envoy answers `Frozen`).
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id_out: *mut usize,
    ) -> u32;

    /// Adds to a counter defined by the config, without a stream. Any thread (the counter set is
    /// frozen after config creation and Envoy counters are atomic).
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    /// Makes a scheduler that runs `on_http_filter_config_scheduled` on the main thread. Main
    /// thread; the module releases it with `..._config_scheduler_delete`.
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigEnvoyPtr,
    ) -> ConfigSchedulerPtr;

    /// Posts `event_id` to the main thread (`on_http_filter_config_scheduled`). Any thread.
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: ConfigSchedulerPtr,
        event_id: u64,
    );

    /// Sets header `key` of a map (`header_type`) to `value`, replacing every line of that name.
    /// Returns false when the map is not available in the current phase. Worker thread, during
    /// an event of that stream.
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    /// Sets a string value in the stream's dynamic metadata under `namespace` / `key` (the
    /// namespace is created when missing). Worker thread, during an event of that stream. Some ABI
    /// versions return a bool, others nothing: declared without a return value (the C calling
    /// convention lets a caller ignore it), so both link and behave the same.
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        filter: FilterEnvoyPtr,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        value: ModuleBuffer,
    );

    /// Makes a scheduler bound to the stream: `commit` posts to the stream's worker, which runs
    /// `on_http_filter_scheduled` if the stream still exists. Worker thread, during an event of
    /// that stream; the module releases it with `..._http_filter_scheduler_delete`.
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(
        filter: FilterEnvoyPtr,
    ) -> StreamSchedulerPtr;

    /// Posts `event_id` to the stream's worker (`on_http_filter_scheduled`). Any thread, while the
    /// scheduler exists (it holds only a weak reference to the stream and the worker's dispatcher).
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: StreamSchedulerPtr,
        event_id: u64,
    );

    /// Releases a stream scheduler. Any thread (a plain delete), while the worker exists.
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: StreamSchedulerPtr);

    /// Releases a config scheduler. Main thread.
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: ConfigSchedulerPtr,
    );

    /// Starts a callout bound to the config (it outlives every stream) to `cluster`; `headers`
    /// must hold `:method`, `:path` and `host`. The answer comes to
    /// `on_http_filter_config_http_callout_done`. Main thread (it uses the calling thread's
    /// cluster and keeps its state on the config unlocked).
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: ConfigEnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
}

// ---------------------------------------------------------------------------------------------
// Safe wrappers
// ---------------------------------------------------------------------------------------------

/// `ptr[..len]`, or empty for a null pointer.
///
/// # Safety
/// A non-null `ptr` must point at `len` readable bytes that stay valid and unchanged for `'a`.
unsafe fn bytes<'a>(ptr: *const c_char, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
    }
}

/// Envoy's headers as borrowed pairs.
///
/// # Safety
/// `headers` must be null or point at `n` headers whose bytes stay valid for `'a`.
unsafe fn header_refs<'a>(headers: *const EnvoyHttpHeader, n: usize) -> Vec<HeaderRef<'a>> {
    if headers.is_null() || n == 0 {
        return Vec::new();
    }
    // SAFETY: guaranteed by the caller.
    let hs = unsafe { std::slice::from_raw_parts(headers, n) };
    hs.iter()
        // SAFETY: each header's bytes are valid for 'a (caller).
        .map(|h| unsafe {
            (
                bytes(h.key_ptr, h.key_length),
                bytes(h.value_ptr, h.value_length),
            )
        })
        .collect()
}

/// Envoy's body slices as borrowed bytes.
///
/// # Safety
/// `chunks` must be null or point at `n` buffers whose bytes stay valid for `'a`.
unsafe fn chunk_refs<'a>(chunks: *const EnvoyBuffer, n: usize) -> Vec<&'a [u8]> {
    if chunks.is_null() || n == 0 {
        return Vec::new();
    }
    // SAFETY: guaranteed by the caller.
    let bs = unsafe { std::slice::from_raw_parts(chunks, n) };
    // SAFETY: each slice is valid for 'a (caller).
    bs.iter()
        .map(|b| unsafe { bytes(b.ptr, b.length) })
        .collect()
}

fn level_code(level: LogLevel) -> u32 {
    match level {
        LogLevel::Trace => 0,
        LogLevel::Debug => 1,
        LogLevel::Info => 2,
        LogLevel::Warn => 3,
        LogLevel::Error => 4,
        LogLevel::Critical => 5,
    }
}

/// Writes to Envoy's log. Any thread.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer points at `message`, alive for the call; Envoy copies it.
    unsafe {
        ffi::envoy_dynamic_module_callback_log(
            level_code(level),
            ModuleBuffer::of(message.as_bytes()),
        )
    }
}

fn init_error(code: u32) -> CalloutInitError {
    match code {
        1 => CalloutInitError::MissingRequiredHeaders,
        2 => CalloutInitError::ClusterNotFound,
        3 => CalloutInitError::DuplicateCalloutId,
        4 => CalloutInitError::CannotCreateRequest,
        other => CalloutInitError::Unknown(other),
    }
}

fn callout_result(code: u32) -> CalloutResult {
    match code {
        0 => CalloutResult::Success,
        1 => CalloutResult::Reset,
        2 => CalloutResult::ExceedResponseBufferLimit,
        other => CalloutResult::Unknown(other),
    }
}

fn module_headers(headers: &[(&str, &str)]) -> Vec<ModuleHttpHeader> {
    headers
        .iter()
        .map(|(n, v)| ModuleHttpHeader::of(n.as_bytes(), v.as_bytes()))
        .collect()
}

/// Starts a callout through `start` — one of Envoy's two callout callbacks (bound to a stream, or
/// to the config) with its owner already given — and returns its id.
fn start_callout(
    start: impl FnOnce(*mut u64, ModuleBuffer, *mut ModuleHttpHeader, usize, ModuleBuffer, u64) -> u32,
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<u64, CalloutInitError> {
    let mut hs = module_headers(headers);
    let mut id = 0u64;
    // Every buffer points at memory alive for the call (Envoy copies the request); `id` is a
    // valid out-pointer.
    let r = start(
        &mut id,
        ModuleBuffer::of(cluster.as_bytes()),
        hs.as_mut_ptr(),
        hs.len(),
        ModuleBuffer::of(body),
        timeout_ms,
    );
    if r == CALLOUT_INIT_SUCCESS {
        Ok(id)
    } else {
        Err(init_error(r))
    }
}

/// The host of one stream event: Envoy's `DynamicModuleHttpFilter`. Made for one hook call and
/// dropped at its end, so nothing borrowed from it outlives Envoy's guarantee.
pub struct EnvoyFilter {
    raw: FilterEnvoyPtr,
    /// The filter resumed or answered the request during this event.
    released: bool,
}

impl EnvoyFilter {
    fn new(raw: FilterEnvoyPtr) -> EnvoyFilter {
        EnvoyFilter {
            raw,
            released: false,
        }
    }

    fn headers(&mut self, header_type: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        // SAFETY: `raw` is the stream's filter, valid during this hook on this worker.
        let n = unsafe {
            ffi::envoy_dynamic_module_callback_http_get_headers_size(self.raw, header_type)
        };
        if n == 0 {
            return Vec::new();
        }
        let mut out = vec![EnvoyHttpHeader::EMPTY; n];
        // SAFETY: `out` has room for `n` headers, as Envoy requires.
        let ok = unsafe {
            ffi::envoy_dynamic_module_callback_http_get_headers(
                self.raw,
                header_type,
                out.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        // SAFETY: Envoy's header bytes are valid until the end of this hook; copied here.
        unsafe { header_refs(out.as_ptr(), out.len()) }
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect()
    }

    fn body(&mut self, body_type: u32) -> Vec<&[u8]> {
        // SAFETY: `raw` is valid during this hook on this worker.
        let n = unsafe {
            ffi::envoy_dynamic_module_callback_http_get_body_chunks_size(self.raw, body_type)
        };
        if n == 0 {
            return Vec::new();
        }
        let mut out = vec![EnvoyBuffer::EMPTY; n];
        // SAFETY: `out` has room for `n` slices, as Envoy requires.
        let ok = unsafe {
            ffi::envoy_dynamic_module_callback_http_get_body_chunks(
                self.raw,
                body_type,
                out.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        // SAFETY: the slices are valid until the end of this hook, which outlives `&mut self`
        // (an `EnvoyFilter` lives for one hook call).
        unsafe { chunk_refs(out.as_ptr(), out.len()) }
    }
}

impl EnvoyHttpFilter for EnvoyFilter {
    fn request_headers(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.headers(HEADER_TYPE_REQUEST_HEADER)
    }

    fn response_headers(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.headers(HEADER_TYPE_RESPONSE_HEADER)
    }

    fn received_request_body(&mut self) -> Vec<&[u8]> {
        self.body(BODY_TYPE_RECEIVED_REQUEST)
    }

    fn received_response_body(&mut self) -> Vec<&[u8]> {
        self.body(BODY_TYPE_RECEIVED_RESPONSE)
    }

    fn send_response(
        &mut self,
        status: u16,
        headers: &[HeaderRef<'_>],
        body: &[u8],
        details: &str,
    ) {
        let mut hs: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(n, v)| ModuleHttpHeader::of(n, v))
            .collect();
        self.released = true;
        // SAFETY: every buffer points at memory alive for the call; Envoy copies what it keeps.
        unsafe {
            ffi::envoy_dynamic_module_callback_http_send_response(
                self.raw,
                u32::from(status),
                hs.as_mut_ptr(),
                hs.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            )
        }
    }

    fn send_response_headers(&mut self, headers: &[HeaderRef<'_>]) {
        let mut hs: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(n, v)| ModuleHttpHeader::of(n, v))
            .collect();
        self.released = true;
        // SAFETY: every buffer points at memory alive for the call; Envoy copies the headers.
        unsafe {
            ffi::envoy_dynamic_module_callback_http_send_response_headers(
                self.raw,
                hs.as_mut_ptr(),
                hs.len(),
                true,
            )
        }
    }

    fn continue_decoding(&mut self) {
        self.released = true;
        // SAFETY: `raw` is valid during this hook on this worker.
        unsafe { ffi::envoy_dynamic_module_callback_http_filter_continue_decoding(self.raw) }
    }

    fn set_request_header(&mut self, name: &[u8], value: &[u8]) -> bool {
        // SAFETY: `raw` is valid during this hook on this worker; the buffers are alive for the
        // call and Envoy copies them.
        unsafe {
            ffi::envoy_dynamic_module_callback_http_set_header(
                self.raw,
                HEADER_TYPE_REQUEST_HEADER,
                ModuleBuffer::of(name),
                ModuleBuffer::of(value),
            )
        }
    }

    fn set_dynamic_metadata_string(&mut self, namespace: &str, key: &str, value: &str) {
        // SAFETY: `raw` is valid during this hook on this worker; the buffers are alive for the
        // call and Envoy copies them.
        unsafe {
            ffi::envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
                self.raw,
                ModuleBuffer::of(namespace.as_bytes()),
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    fn new_scheduler(&mut self) -> Option<Box<dyn Scheduler>> {
        // SAFETY: `raw` is valid during this hook on this worker.
        let s = unsafe { ffi::envoy_dynamic_module_callback_http_filter_scheduler_new(self.raw) };
        if s.is_null() {
            None
        } else {
            Some(Box::new(EnvoyStreamScheduler(s)))
        }
    }

    fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, CalloutInitError> {
        start_callout(
            |id, c, h, n, b, t| {
                // SAFETY: `raw` is valid during this hook on this worker; the buffers as `start_callout` says.
                unsafe {
                    ffi::envoy_dynamic_module_callback_http_filter_http_callout(
                        self.raw, id, c, h, n, b, t,
                    )
                }
            },
            cluster,
            headers,
            body,
            timeout_ms,
        )
    }
}

/// Envoy's config pointer, shared with workers for counter increments.
#[derive(Clone, Copy)]
struct ConfigPtr(ConfigEnvoyPtr);

// SAFETY: Envoy's config outlives every stream and config callback of the module (Envoy's
// filters hold it), and the only calls made through a shared `ConfigPtr` off the main thread
// are documented as callable from any thread (counter increment on a frozen counter set).
unsafe impl Send for ConfigPtr {}
// SAFETY: as above.
unsafe impl Sync for ConfigPtr {}

struct EnvoyCounterSink(ConfigPtr);

impl CounterSink for EnvoyCounterSink {
    fn increment(&self, id: CounterId, n: u64) {
        // SAFETY: see `ConfigPtr`; no labels.
        unsafe {
            ffi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.0 .0,
                id.0,
                std::ptr::null_mut(),
                0,
                n,
            );
        }
    }
}

/// A config scheduler, released on drop.
struct EnvoyScheduler(ConfigSchedulerPtr);

// SAFETY: Envoy documents commit as callable from any thread; delete happens on drop, which is
// the config's drop, on the main thread (`http_filter_config_destroy`).
unsafe impl Send for EnvoyScheduler {}
// SAFETY: as above.
unsafe impl Sync for EnvoyScheduler {}

impl Scheduler for EnvoyScheduler {
    fn commit(&self, event_id: u64) {
        // SAFETY: the scheduler is alive until drop.
        unsafe {
            ffi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event_id)
        }
    }
}

impl Drop for EnvoyScheduler {
    fn drop(&mut self) {
        // SAFETY: made by `scheduler_new`, released once.
        unsafe { ffi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// A stream scheduler, released on drop.
struct EnvoyStreamScheduler(StreamSchedulerPtr);

// SAFETY: Envoy's stream scheduler holds a weak reference to the stream and the worker's
// dispatcher: commit (a post to that dispatcher) and delete are callable from any thread. The
// filter drops it (through its own drop, on the worker) before the stream is destroyed, so it
// never outlives the worker.
unsafe impl Send for EnvoyStreamScheduler {}
// SAFETY: as above.
unsafe impl Sync for EnvoyStreamScheduler {}

impl Scheduler for EnvoyStreamScheduler {
    fn commit(&self, event_id: u64) {
        // SAFETY: the scheduler is alive until drop.
        unsafe { ffi::envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event_id) }
    }
}

impl Drop for EnvoyStreamScheduler {
    fn drop(&mut self) {
        // SAFETY: made by `http_filter_scheduler_new`, released once.
        unsafe { ffi::envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

/// The host of config events: Envoy's `DynamicModuleHttpFilterConfig`. Main thread only.
pub struct EnvoyConfig {
    raw: ConfigEnvoyPtr,
}

impl EnvoyHttpFilterConfig for EnvoyConfig {
    fn define_counter(&mut self, name: &str) -> Result<CounterId, MetricsError> {
        let mut id = 0usize;
        // SAFETY: `name` is alive for the call; no labels; `id` is a valid out-pointer.
        let r = unsafe {
            ffi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.raw,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        match r {
            METRICS_SUCCESS => Ok(CounterId(id)),
            1 => Err(MetricsError::MetricNotFound),
            2 => Err(MetricsError::InvalidLabels),
            3 => Err(MetricsError::Frozen),
            other => Err(MetricsError::Unknown(other)),
        }
    }

    fn counter_sink(&self) -> Arc<dyn CounterSink> {
        Arc::new(EnvoyCounterSink(ConfigPtr(self.raw)))
    }

    fn new_scheduler(&mut self) -> Option<Box<dyn Scheduler>> {
        // SAFETY: main thread, valid config.
        let s = unsafe {
            ffi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.raw)
        };
        if s.is_null() {
            None
        } else {
            Some(Box::new(EnvoyScheduler(s)))
        }
    }

    fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, CalloutInitError> {
        start_callout(
            |id, c, h, n, b, t| {
                // SAFETY: main thread, valid config; the buffers as `start_callout` says.
                unsafe {
                    ffi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                        self.raw, id, c, h, n, b, t,
                    )
                }
            },
            cluster,
            headers,
            body,
            timeout_ms,
        )
    }

    fn log(&self, level: LogLevel, message: &str) {
        log(level, message);
    }
}

// ---------------------------------------------------------------------------------------------
// Event hooks (exported, called by Envoy)
// ---------------------------------------------------------------------------------------------

type Config = Box<dyn HttpFilterConfig<EnvoyConfig, EnvoyFilter>>;

/// What `ConfigModulePtr` points at.
struct ConfigSlot {
    config: Config,
}

/// What `FilterModulePtr` points at.
struct FilterSlot {
    filter: Box<dyn HttpFilter<EnvoyFilter>>,
    /// A hook panicked: the filter is bypassed for the rest of the stream.
    poisoned: bool,
    /// The last request hook stopped the request and nothing released it since.
    stopped: bool,
}

fn panicked(what: &str) {
    log(
        LogLevel::Error,
        &format!("transparent-cache: panic in {what}; the stream continues without the cache"),
    );
}

/// Runs a request-path event. A panic poisons the filter and lets the request go on.
///
/// # Safety
/// `module` must be null or a pointer made by `on_http_filter_new` and not yet destroyed, used
/// only by its own worker.
unsafe fn request_event(
    module: FilterModulePtr,
    envoy: FilterEnvoyPtr,
    what: &str,
    event: impl FnOnce(&mut dyn HttpFilter<EnvoyFilter>, &mut EnvoyFilter) -> bool,
) -> u32 {
    // SAFETY: guaranteed by the caller; Envoy runs one event of a stream at a time.
    let Some(slot) = (unsafe { module.cast_mut().cast::<FilterSlot>().as_mut() }) else {
        return STATUS_CONTINUE;
    };
    if slot.poisoned {
        return STATUS_CONTINUE;
    }
    let mut host = EnvoyFilter::new(envoy);
    match catch_unwind(AssertUnwindSafe(|| event(&mut *slot.filter, &mut host))) {
        Ok(stop) => {
            slot.stopped = stop;
            if stop {
                STATUS_STOP
            } else {
                STATUS_CONTINUE
            }
        }
        Err(_) => {
            slot.poisoned = true;
            slot.stopped = false;
            panicked(what);
            STATUS_CONTINUE
        }
    }
}

/// Runs an event that is not a request hook (response path, callout answers). A panic poisons
/// the filter and, when the request is stopped, releases it.
///
/// # Safety
/// As for [`request_event`].
unsafe fn other_event(
    module: FilterModulePtr,
    envoy: FilterEnvoyPtr,
    what: &str,
    event: impl FnOnce(&mut dyn HttpFilter<EnvoyFilter>, &mut EnvoyFilter),
) {
    // SAFETY: guaranteed by the caller.
    let Some(slot) = (unsafe { module.cast_mut().cast::<FilterSlot>().as_mut() }) else {
        return;
    };
    if slot.poisoned {
        return;
    }
    let mut host = EnvoyFilter::new(envoy);
    let r = catch_unwind(AssertUnwindSafe(|| event(&mut *slot.filter, &mut host)));
    if host.released {
        slot.stopped = false;
    }
    if r.is_err() {
        slot.poisoned = true;
        panicked(what);
        if slot.stopped {
            slot.stopped = false;
            let _ = catch_unwind(AssertUnwindSafe(|| host.continue_decoding()));
        }
    }
}

/// Borrows our config. `None` for null.
///
/// # Safety
/// `config` must be null or made by `on_http_filter_config_new` and not yet destroyed.
unsafe fn config_slot<'a>(config: ConfigModulePtr) -> Option<&'a ConfigSlot> {
    // SAFETY: guaranteed by the caller.
    unsafe { config.cast::<ConfigSlot>().as_ref() }
}

fn response_status(stop: bool) -> u32 {
    if stop {
        STATUS_STOP
    } else {
        STATUS_CONTINUE
    }
}

/// Main thread, once, when Envoy loads the module: returns the ABI version it was built for.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION_NUL.as_ptr().cast()
}

/// Main thread: a filter config is loaded. Validates it with `Config::from_json`; a bad one is
/// logged with the engine's message and rejected (null). A panic yields a pass-through config.
///
/// # Safety
/// Called by Envoy with buffers valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigModulePtr {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut host = EnvoyConfig { raw: config_envoy };
        // SAFETY: Envoy's buffers are valid for this call.
        let (name, bytes_) = unsafe {
            (
                bytes(name.ptr, name.length),
                bytes(config.ptr, config.length),
            )
        };
        let name = String::from_utf8_lossy(name);
        match crate::new_filter_config(&mut host, &name, bytes_) {
            Ok(config) => Box::into_raw(Box::new(ConfigSlot { config })) as ConfigModulePtr,
            Err(message) => {
                let line = format!("transparent-cache: filter {name:?} rejected: {message}");
                log(LogLevel::Error, &line);
                eprintln!("{line}");
                std::ptr::null()
            }
        }
    }));
    r.unwrap_or_else(|_| {
        panicked("http_filter_config_new (filters will pass everything through)");
        let config: Config = Box::new(PassThroughConfig);
        Box::into_raw(Box::new(ConfigSlot { config })) as ConfigModulePtr
    })
}

/// Main thread: the filter config is gone (after every stream that used it).
///
/// # Safety
/// `config` is ours, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config: ConfigModulePtr,
) {
    if config.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw` in config_new, destroyed once.
    let slot = unsafe { Box::from_raw(config.cast_mut().cast::<ConfigSlot>()) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(slot)));
}

/// Worker thread: a new stream. Never null: a panic yields a pass-through filter.
///
/// # Safety
/// `config` is ours and alive.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModulePtr,
    filter_envoy: FilterEnvoyPtr,
) -> FilterModulePtr {
    // SAFETY: Envoy passes our live config.
    let slot = unsafe { config_slot(config) };
    let mut host = EnvoyFilter::new(filter_envoy);
    let filter = slot
        .and_then(|s| catch_unwind(AssertUnwindSafe(|| s.config.new_http_filter(&mut host))).ok())
        .unwrap_or_else(|| Box::new(PassThroughFilter));
    Box::into_raw(Box::new(FilterSlot {
        filter,
        poisoned: false,
        stopped: false,
    })) as FilterModulePtr
}

/// Worker thread: request headers. 0 Continue, 1 StopIteration (body events still come).
///
/// # Safety
/// Envoy's pointers for a live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's pointers for this stream, on its worker.
    unsafe {
        request_event(filter, filter_envoy, "request headers", |f, e| {
            f.on_request_headers(e, end_of_stream) == HeadersStatus::StopIteration
        })
    }
}

/// Worker thread: a request body frame. 0 Continue, 1 StopIterationAndBuffer.
///
/// # Safety
/// Envoy's pointers for a live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: as above.
    unsafe {
        request_event(filter, filter_envoy, "request body", |f, e| {
            f.on_request_body(e, end_of_stream) == BodyStatus::StopIterationAndBuffer
        })
    }
}

/// Worker thread: request trailers. 0 Continue, 1 StopIteration.
///
/// # Safety
/// Envoy's pointers for a live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
) -> u32 {
    // SAFETY: as above.
    unsafe {
        request_event(filter, filter_envoy, "request trailers", |f, e| {
            f.on_request_trailers(e) == TrailersStatus::StopIteration
        })
    }
}

/// Worker thread: response headers. Always continues unless the filter says otherwise.
///
/// # Safety
/// Envoy's pointers for a live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    let mut stop = false;
    // SAFETY: as above.
    unsafe {
        other_event(filter, filter_envoy, "response headers", |f, e| {
            stop = f.on_response_headers(e, end_of_stream) == HeadersStatus::StopIteration;
        })
    };
    response_status(stop)
}

/// Worker thread: a response body frame.
///
/// # Safety
/// Envoy's pointers for a live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    let mut stop = false;
    // SAFETY: as above.
    unsafe {
        other_event(filter, filter_envoy, "response body", |f, e| {
            stop = f.on_response_body(e, end_of_stream) == BodyStatus::StopIterationAndBuffer;
        })
    };
    response_status(stop)
}

/// Worker thread: response trailers.
///
/// # Safety
/// Envoy's pointers for a live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
) -> u32 {
    let mut stop = false;
    // SAFETY: as above.
    unsafe {
        other_event(filter, filter_envoy, "response trailers", |f, e| {
            stop = f.on_response_trailers(e) == TrailersStatus::StopIteration;
        })
    };
    response_status(stop)
}

/// Worker thread: the stream is complete (before destroy and access logs).
///
/// # Safety
/// Envoy's pointers for a live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
) {
    // SAFETY: as above.
    unsafe {
        other_event(filter, filter_envoy, "stream complete", |f, e| {
            f.on_stream_complete(e)
        })
    }
}

/// Worker thread: the stream's filter is destroyed.
///
/// # Safety
/// `filter` is ours, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: FilterModulePtr) {
    if filter.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw` in filter_new, destroyed once.
    let slot = unsafe { Box::from_raw(filter.cast_mut().cast::<FilterSlot>()) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(slot)));
}

/// Worker thread: a stream-level callout ended. `headers`/`body` are Envoy's for this call
/// (null when the callout failed).
///
/// # Safety
/// Envoy's pointers for a live stream and valid arrays of the given sizes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    // SAFETY: Envoy's arrays are valid for this call.
    let (headers, body) = unsafe {
        (
            header_refs(headers, headers_size),
            chunk_refs(body, body_size),
        )
    };
    // SAFETY: as above.
    unsafe {
        other_event(filter, filter_envoy, "callout answer", |f, e| {
            f.on_http_callout_done(e, callout_id, callout_result(result), &headers, &body)
        })
    }
}

/// Worker thread: a streamed callout's headers. We start none; required by Envoy.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

/// Worker thread: a streamed callout's data. We start none; required by Envoy.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

/// Worker thread: a streamed callout's trailers. We start none; required by Envoy.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _trailers: *const EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

/// Worker thread: a streamed callout completed. We start none; required by Envoy.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
) {
}

/// Worker thread: a streamed callout was reset. We start none; required by Envoy.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

/// Worker thread: an event committed through the stream's scheduler (the hold watchdog).
///
/// # Safety
/// Envoy's pointers for a live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    event_id: u64,
) {
    // SAFETY: Envoy's pointers for this stream, on its worker.
    unsafe {
        other_event(filter, filter_envoy, "scheduled event", |f, e| {
            f.on_scheduled(e, event_id)
        })
    }
}

/// Worker thread: the client's write buffer is over its high watermark (terminal filters only);
/// required by Envoy.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
}

/// Worker thread: the client's write buffer is back under its low watermark (terminal filters
/// only); required by Envoy.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
}

/// Main thread: an event committed through the config scheduler (records to send).
///
/// # Safety
/// Envoy's config pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    event_id: u64,
) {
    // SAFETY: Envoy passes our live config.
    let Some(slot) = (unsafe { config_slot(config) }) else {
        return;
    };
    let mut host = EnvoyConfig { raw: config_envoy };
    if catch_unwind(AssertUnwindSafe(|| {
        slot.config.on_scheduled(&mut host, event_id)
    }))
    .is_err()
    {
        panicked("config scheduled event");
    }
}

/// Main thread: a config-level callout ended (a record's answer).
///
/// # Safety
/// Envoy's config pointers and valid arrays of the given sizes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    // SAFETY: Envoy passes our live config.
    let Some(slot) = (unsafe { config_slot(config) }) else {
        return;
    };
    // SAFETY: Envoy's arrays are valid for this call.
    let (headers, body) = unsafe {
        (
            header_refs(headers, headers_size),
            chunk_refs(body, body_size),
        )
    };
    let mut host = EnvoyConfig { raw: config_envoy };
    let r = catch_unwind(AssertUnwindSafe(|| {
        slot.config.on_http_callout_done(
            &mut host,
            callout_id,
            callout_result(result),
            &headers,
            &body,
        )
    }));
    if r.is_err() {
        panicked("config callout answer");
    }
}

#[cfg(test)]
mod tests;
