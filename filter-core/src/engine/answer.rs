//! Telling what came back for a lookup: the backend's answer (a hit, a miss, a deliberate error
//! answer) from Envoy's own local replies and other faults.

use crate::http;
use crate::metrics::LookupFailure;

/// How a lookup callout ended.
#[derive(Debug, Clone, Copy)]
pub enum LookupResult<'a> {
    /// The backend answered.
    Answer {
        status: u16,
        content_type: Option<&'a [u8]>,
        body: &'a [u8],
    },
    /// No answer (timeout or transport failure).
    Failed(LookupFailure),
}

/// What came back for a lookup callout, as the host got it: the raw `:status` value (none when
/// the host delivered no response headers), the `content-type` and the body. The engine tells a
/// backend answer from Envoy's own local replies ([`Stream::on_lookup_reply`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct LookupReply<'a> {
    pub status: Option<&'a [u8]>,
    pub content_type: Option<&'a [u8]>,
    pub body: &'a [u8],
}

/// How close to its timeout a lookup that ended without a backend answer counts as timed out
/// (the host's clock and Envoy's timer are not exact).
pub const TIMEOUT_SLACK_MS: u64 = 50;

/// A deliberate error answer of the backend, as the Softprobe runtime gives one (an `error`
/// rule, or the strict policy): an error status that is not about the call itself (not 404, a
/// miss; not 401/403/407, a key problem), and a JSON object with an `error` member as the body.
/// Envoy's own local replies (503/504 when the backend can't be reached) are plain text, so they
/// stay faults, as do garbage and empty bodies.
pub fn is_error_answer(status: u16, content_type: Option<&[u8]>, body: &[u8]) -> bool {
    if !(400..=599).contains(&status) || matches!(status, 401 | 403 | 404 | 407) {
        return false;
    }
    let json_type = content_type.is_none_or(|ct| {
        let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
        let media = ct.split(';').next().unwrap_or_default().trim().to_string();
        media == "application/json" || media.ends_with("+json")
    });
    json_type
        && serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .is_some_and(|v| v.get("error").is_some())
}

/// A lookup's raw reply (`None`: the host got no response) as a result: Envoy answers a callout
/// itself when the backend can't be reached (no headers or a `504` when the callout's timeout
/// fires, a `503` `upstream connect error ...` / `no healthy upstream` when the connection fails);
/// those are faults. `timed_out`: the reply came at the lookup's deadline.
pub fn classify(reply: Option<LookupReply<'_>>, timed_out: bool) -> LookupResult<'_> {
    match reply.map(|r| (r.status.and_then(http::parse_status), r)) {
        None | Some((None, _)) if timed_out => LookupResult::Failed(LookupFailure::Timeout),
        None | Some((None, _)) => LookupResult::Failed(LookupFailure::Transport),
        Some((Some(504), r)) if timed_out && !is_error_answer(504, r.content_type, r.body) => {
            LookupResult::Failed(LookupFailure::Timeout)
        }
        Some((Some(503), r))
            if r.body.starts_with(b"upstream connect error")
                || r.body.starts_with(b"no healthy upstream") =>
        {
            LookupResult::Failed(LookupFailure::Transport)
        }
        Some((Some(status), r)) => LookupResult::Answer {
            status,
            content_type: r.content_type,
            body: r.body,
        },
    }
}
