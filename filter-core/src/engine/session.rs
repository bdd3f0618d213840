//! The session of a request: read from the configured sources, and written on into the forwarded
//! `tracestate` on the inbound side (config `session_id_sources`, `propagate_session`).

use crate::config::SessionSource;
use crate::http::{self, Header};
use crate::metrics::Counter;
use crate::trace;

use super::Stream;

/// The session id from the first source that has one.
pub(super) fn session_of(sources: &[SessionSource], headers: &[Header]) -> Option<Vec<u8>> {
    sources.iter().find_map(|source| match source {
        SessionSource::Header(name) => http::header(headers, name)
            .map(<[u8]>::trim_ascii)
            .filter(|v| !v.is_empty())
            .map(<[u8]>::to_vec),
        SessionSource::Tracestate(key) => trace::tracestate_entry(headers, key),
    })
}

impl Stream {
    /// Prepares the `tracestate` edit that carries this request's session on (config
    /// `propagate_session`); true when one was made.
    pub(super) fn propagate(&mut self, headers: &[Header]) -> bool {
        let (Some(session), true) = (&self.session_id, self.config().propagate_session) else {
            return false;
        };
        let Some(key) = self.config().session_sources.iter().find_map(|s| match s {
            SessionSource::Tracestate(k) => Some(k.as_str()),
            SessionSource::Header(_) => None,
        }) else {
            return false;
        };
        let engine = &self.engine;
        self.header_edits = trace::propagate(headers, key, session, || {
            (engine.trace_id(), engine.span_id())
        });
        if self.header_edits.is_empty() {
            return false;
        }
        self.engine.count(Counter::SessionsPropagated);
        true
    }
}
