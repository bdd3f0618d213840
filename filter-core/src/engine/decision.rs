//! What a host does after each event: what happens to the event itself ([`Flow`]) and, apart
//! from that, what to carry out ([`Effects`]). A host translates the flow into its callback's
//! return value (or, after an asynchronous event, a resume or nothing) and the effects into host
//! calls, in the order the fields are listed; it never decides anything itself.

use std::borrow::Cow;

use super::Callout;
use crate::http::{Header, Response};

/// What happens to the event the host just delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Let it go on (request headers, a body chunk, trailers, any response event). After an
    /// asynchronous event (a lookup's answer, a timer): nothing to do.
    Continue,
    /// Keep it, and everything held before it (request headers: stop iteration; a body chunk:
    /// stop and buffer). After an asynchronous event: the request stays held.
    Hold,
    /// Let everything held so far go on. In a request callback this is the same as `Continue`;
    /// after an asynchronous event the host resumes the request.
    Release,
    /// The request is answered locally ([`Effects::reply`]); nothing more goes upstream.
    Stop,
}

/// A local reply: the response to send and the `response_code_details` Envoy logs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub response: Response,
    /// `transparent_cache_hit`, `transparent_cache_blocked` (a deliberate error answer of the
    /// backend) or `transparent_cache_backend_error` (`on_backend_error: fail`).
    pub details: &'static str,
}

/// What the host carries out besides the flow, in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Request headers to set (replacing any of the same name) before the headers go on; only
    /// after the request headers event (the session carried into `tracestate`).
    pub set_request_headers: Vec<Header>,
    /// A lookup to make now; report how it came back with [`super::Stream::on_lookup_reply`]
    /// (`None` when it could not be made).
    pub lookup: Option<Callout>,
    /// The local reply to send ([`Flow::Stop`]).
    pub reply: Option<LocalReply>,
    /// A record was put in the engine's queue ([`super::Engine::records`]): wake whatever sends
    /// records.
    pub record_queued: bool,
    /// The verdict changed ([`super::Stream::verdict`]): write it wherever the host publishes it
    /// (filter state, dynamic metadata). Set once per change.
    pub verdict: Option<Cow<'static, str>>,
    /// While the request is held: when, in milliseconds of the engine's clock, the host must
    /// call [`super::Stream::on_timer`] at the latest (the lookup timeout plus a margin past the
    /// last progress). `None`: nothing is held, no timer needed.
    pub hold_deadline_ms: Option<u64>,
}

/// The engine's answer to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub flow: Flow,
    pub effects: Effects,
}

impl Decision {
    /// `Continue` with no effects.
    pub fn pass() -> Decision {
        Decision {
            flow: Flow::Continue,
            effects: Effects::default(),
        }
    }

    /// The lookup to make, if any.
    pub fn lookup(&self) -> Option<&Callout> {
        self.effects.lookup.as_ref()
    }

    /// The local reply to send, if any.
    pub fn reply(&self) -> Option<&Response> {
        self.effects.reply.as_ref().map(|r| &r.response)
    }
}
