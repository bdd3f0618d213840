//! The exported hooks: ABI version, config validation, and fail-open on panics. The callbacks are
//! stubs here (see `callbacks!`), so nothing reaches Envoy.

use std::ffi::CStr;

use super::*;

fn buffer(b: &[u8]) -> EnvoyBuffer {
    EnvoyBuffer {
        ptr: b.as_ptr().cast(),
        length: b.len(),
    }
}

#[test]
fn program_init_returns_the_abi_version_as_a_c_string() {
    let p = envoy_dynamic_module_on_program_init();
    // SAFETY: a static NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    assert_eq!(s.to_str().unwrap(), ABI_VERSION);
}

#[test]
fn a_bad_config_is_rejected_and_a_good_one_accepted() {
    // SAFETY: buffers alive for the calls; the config pointer is only passed to stubs.
    unsafe {
        let bad = envoy_dynamic_module_on_http_filter_config_new(
            std::ptr::null_mut(),
            buffer(b"tc"),
            buffer(br#"{"mode": 3}"#),
        );
        assert!(bad.is_null());
        let good = envoy_dynamic_module_on_http_filter_config_new(
            std::ptr::null_mut(),
            buffer(b"tc"),
            buffer(br#"{"mode": "record_only"}"#),
        );
        assert!(!good.is_null());
        let f = envoy_dynamic_module_on_http_filter_new(good, std::ptr::null_mut());
        assert!(!f.is_null());
        envoy_dynamic_module_on_http_filter_destroy(f);
        envoy_dynamic_module_on_http_filter_config_destroy(good);
    }
}

struct Panicky {
    calls: std::rc::Rc<std::cell::Cell<u32>>,
}

impl HttpFilter<EnvoyFilter> for Panicky {
    fn on_request_headers(&mut self, _: &mut EnvoyFilter, _: bool) -> HeadersStatus {
        self.calls.set(self.calls.get() + 1);
        HeadersStatus::StopIteration
    }
    fn on_request_body(&mut self, _: &mut EnvoyFilter, _: bool) -> BodyStatus {
        self.calls.set(self.calls.get() + 1);
        panic!("boom");
    }
    fn on_http_callout_done(
        &mut self,
        _: &mut EnvoyFilter,
        _: u64,
        _: CalloutResult,
        _: &[HeaderRef<'_>],
        _: &[&[u8]],
    ) {
        self.calls.set(self.calls.get() + 1);
        panic!("boom");
    }
}

fn slot(filter: Box<dyn HttpFilter<EnvoyFilter>>) -> FilterModulePtr {
    Box::into_raw(Box::new(FilterSlot {
        filter,
        poisoned: false,
        stopped: false,
    })) as FilterModulePtr
}

#[test]
fn a_panic_in_a_request_hook_continues_the_request_and_bypasses_the_filter() {
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let f = slot(Box::new(Panicky {
        calls: calls.clone(),
    }));
    let envoy = std::ptr::null_mut();
    // SAFETY: `f` is a live slot used on this thread only.
    unsafe {
        assert_eq!(
            envoy_dynamic_module_on_http_filter_request_headers(envoy, f, false),
            STATUS_STOP
        );
        assert_eq!(
            envoy_dynamic_module_on_http_filter_request_body(envoy, f, true),
            STATUS_CONTINUE
        );
        let s = &*f.cast::<FilterSlot>();
        assert!(s.poisoned && !s.stopped);
        // Bypassed from now on: the filter is not called again.
        assert_eq!(
            envoy_dynamic_module_on_http_filter_request_trailers(envoy, f),
            STATUS_CONTINUE
        );
        assert_eq!(
            envoy_dynamic_module_on_http_filter_response_headers(envoy, f, true),
            STATUS_CONTINUE
        );
        envoy_dynamic_module_on_http_filter_destroy(f);
    }
    assert_eq!(calls.get(), 2);
}

#[test]
fn a_panic_in_a_callout_answer_releases_a_stopped_request() {
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let f = slot(Box::new(Panicky {
        calls: calls.clone(),
    }));
    let envoy = std::ptr::null_mut();
    // SAFETY: as above; null arrays with zero sizes.
    unsafe {
        envoy_dynamic_module_on_http_filter_request_headers(envoy, f, true);
        assert!((*f.cast::<FilterSlot>()).stopped);
        envoy_dynamic_module_on_http_filter_http_callout_done(
            envoy,
            f,
            1,
            0,
            std::ptr::null(),
            0,
            std::ptr::null(),
            0,
        );
        let s = &*f.cast::<FilterSlot>();
        assert!(s.poisoned);
        assert!(!s.stopped, "continue_decoding was issued");
        envoy_dynamic_module_on_http_filter_destroy(f);
    }
    assert_eq!(calls.get(), 2);
}

#[test]
fn null_pointers_from_envoy_are_harmless() {
    // SAFETY: null is handled by every hook.
    unsafe {
        let f = envoy_dynamic_module_on_http_filter_new(std::ptr::null(), std::ptr::null_mut());
        assert_eq!(
            envoy_dynamic_module_on_http_filter_request_headers(std::ptr::null_mut(), f, true),
            STATUS_CONTINUE
        );
        envoy_dynamic_module_on_http_filter_destroy(f);
        envoy_dynamic_module_on_http_filter_destroy(std::ptr::null());
        envoy_dynamic_module_on_http_filter_config_destroy(std::ptr::null());
        envoy_dynamic_module_on_http_filter_config_scheduled(
            std::ptr::null_mut(),
            std::ptr::null(),
            0,
        );
    }
}

#[test]
fn header_and_chunk_arrays_are_read_without_copying() {
    let name = b"x-a";
    let value = b"1";
    let hs = [EnvoyHttpHeader {
        key_ptr: name.as_ptr().cast(),
        key_length: name.len(),
        value_ptr: value.as_ptr().cast(),
        value_length: value.len(),
    }];
    let body = b"abc";
    let cs = [buffer(body), EnvoyBuffer::EMPTY];
    // SAFETY: arrays and bytes alive for the test.
    unsafe {
        let h = header_refs(hs.as_ptr(), 1);
        assert_eq!(h, vec![(name.as_slice(), value.as_slice())]);
        assert_eq!(h[0].0.as_ptr(), name.as_ptr());
        let c = chunk_refs(cs.as_ptr(), 2);
        assert_eq!(c, vec![body.as_slice(), b"".as_slice()]);
        assert_eq!(c[0].as_ptr(), body.as_ptr());
        assert!(header_refs(std::ptr::null(), 3).is_empty());
    }
}
