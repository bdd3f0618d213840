//! A circuit breaker for each backend path (lookups, records): after `consecutive_failures` faults
//! in a row the path is **open** for `backoff_ms`: lookups are skipped (the request goes straight
//! upstream, counted as `bypass_breaker_open`) or records dropped (`records_dropped`), so a
//! backend that black-holes connections stops costing every request its timeout. Past the back-off
//! one call is let through as a **probe**: a success closes the breaker, a fault opens it again
//! with twice the back-off (up to `max_backoff_ms`).
//!
//! What counts as a fault is the caller's call: for lookups, no answer, an Envoy local reply, a
//! status other than 200/404/a deliberate error answer, or an undecodable 200; for records, any
//! answer but 2xx. The state is shared by every stream of one engine and safe across threads.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// The breaker's settings (config `breaker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Faults in a row that open the breaker; 0 turns it off.
    pub consecutive_failures: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            backoff_ms: 1_000,
            max_backoff_ms: 30_000,
        }
    }
}

/// Whether a call may go to the backend now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go.
    Allow,
    /// The back-off is over: this call is the one probe.
    Probe,
    /// Open: skip the backend.
    Reject,
}

/// One breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    consecutive: AtomicU32,
    /// While open: until when (engine-clock milliseconds); 0 when closed.
    open_until_ms: AtomicU64,
    /// The back-off the next opening uses.
    backoff_ms: AtomicU64,
    /// A probe is out.
    probing: AtomicBool,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            consecutive: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(config.backoff_ms),
            probing: AtomicBool::new(false),
        }
    }

    fn enabled(&self) -> bool {
        self.config.consecutive_failures > 0
    }

    /// Whether the breaker is open and still backing off at `now` (no probe may go yet).
    pub fn is_open(&self, now_ms: u64) -> bool {
        self.enabled() && now_ms < self.open_until_ms.load(Ordering::Relaxed)
    }

    /// Asks to call the backend at `now`.
    pub fn admit(&self, now_ms: u64) -> Admission {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if !self.enabled() || until == 0 {
            return Admission::Allow;
        }
        if now_ms < until {
            return Admission::Reject;
        }
        // Past the back-off: exactly one caller gets the probe.
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            Admission::Probe
        } else {
            Admission::Reject
        }
    }

    /// A call (or the probe) succeeded: closed, back-off reset.
    pub fn success(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        if self.open_until_ms.swap(0, Ordering::Relaxed) != 0 {
            self.backoff_ms
                .store(self.config.backoff_ms, Ordering::Relaxed);
        }
        self.probing.store(false, Ordering::Release);
    }

    /// A call failed at `now`; true when this opened the breaker.
    pub fn failure(&self, now_ms: u64) -> bool {
        if !self.enabled() {
            return false;
        }
        if self.probing.swap(false, Ordering::AcqRel) {
            // The probe failed: open again, backing off twice as long.
            let backoff = self.backoff_ms.load(Ordering::Relaxed);
            let next = backoff.saturating_mul(2).min(self.config.max_backoff_ms);
            self.backoff_ms.store(next, Ordering::Relaxed);
            self.open_until_ms
                .store(now_ms.saturating_add(next).max(1), Ordering::Relaxed);
            return true;
        }
        let n = self
            .consecutive
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n >= self.config.consecutive_failures && self.open_until_ms.load(Ordering::Relaxed) == 0
        {
            let backoff = self.backoff_ms.load(Ordering::Relaxed);
            self.open_until_ms
                .store(now_ms.saturating_add(backoff).max(1), Ordering::Relaxed);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            consecutive_failures: 3,
            backoff_ms: 100,
            max_backoff_ms: 250,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_in_between_resets() {
        let b = breaker();
        assert!(!b.failure(0));
        assert!(!b.failure(0));
        b.success();
        assert!(!b.failure(0));
        assert!(!b.failure(0));
        assert_eq!(b.admit(0), Admission::Allow);
        assert!(b.failure(10), "the third in a row opens it");
        assert!(b.is_open(50));
        assert_eq!(b.admit(50), Admission::Reject);
    }

    #[test]
    fn one_probe_after_the_backoff_then_closed_or_open_twice_as_long() {
        let b = breaker();
        for _ in 0..3 {
            b.failure(0);
        }
        assert_eq!(b.admit(100), Admission::Probe);
        assert_eq!(b.admit(100), Admission::Reject, "one probe at a time");
        assert!(b.failure(100), "a failed probe reopens");
        assert!(b.is_open(299));
        assert_eq!(b.admit(300), Admission::Probe, "after 200 ms");
        assert!(b.failure(300));
        assert!(b.is_open(549) && !b.is_open(550), "capped at 250 ms");
        assert_eq!(b.admit(550), Admission::Probe);
        b.success();
        assert_eq!(b.admit(551), Admission::Allow);
        // The back-off starts over.
        for _ in 0..3 {
            b.failure(600);
        }
        assert!(!b.is_open(700));
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let b = Breaker::new(BreakerConfig {
            consecutive_failures: 0,
            ..BreakerConfig::default()
        });
        for _ in 0..100 {
            assert!(!b.failure(0));
        }
        assert_eq!(b.admit(0), Admission::Allow);
    }
}
