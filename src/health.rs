//! The health of one model-group target, shared by every worker: lock-free
//! atomics, like the rate limiters (`ratelimit`), so a target that fails on
//! one worker cools down for all of them.
//!
//! - **Circuit breaker**: `failures_before_cooldown` consecutive failures
//!   open it for the group's `cooldown`; once that has passed one request
//!   (the probe) may try the target while others keep skipping it; the
//!   probe's success closes the breaker, its failure opens it again.
//! - **In flight**: requests sent to the target and not yet answered (the
//!   `least-busy` strategy).
//! - **Latency**: an exponentially weighted moving average of the time to
//!   the response head (`lowest-latency`), weight 1/8 per sample.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// A target's breaker, as a request sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Closed: send to it.
    Ready,
    /// Open, cooldown over: this request is the one probe.
    Probe,
    /// Open until this Unix millisecond (or another request is probing).
    CoolingDown(u64),
}

#[derive(Debug, Default)]
pub struct TargetHealth {
    consecutive_failures: AtomicU32,
    /// Unix ms until which the breaker is open; 0 when closed.
    open_until_ms: AtomicU64,
    /// A probe is in flight (only while open).
    probing: AtomicBool,
    inflight: AtomicU32,
    /// Microseconds; 0 until the first sample.
    ttfb_ewma_us: AtomicU64,
    /// Lifetime counts, for /metrics and tests.
    failures: AtomicU64,
    cooldowns: AtomicU64,
}

impl TargetHealth {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a request may be sent now; [`Availability::Probe`] is granted
    /// to one caller per cooldown.
    pub fn availability(&self, now_ms: u64) -> Availability {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Availability::Ready;
        }
        if now_ms < until {
            return Availability::CoolingDown(until);
        }
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            Availability::Probe
        } else {
            Availability::CoolingDown(until)
        }
    }

    /// Whether the breaker is open (cooling down or probing).
    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) != 0
    }

    /// An answer came: the breaker closes, the latency is averaged in.
    pub fn succeeded(&self, ttfb_us: u64) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.open_until_ms.load(Ordering::Relaxed) != 0 {
            self.open_until_ms.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
        }
        let sample = ttfb_us.max(1);
        let old = self.ttfb_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            // 7/8 old + 1/8 new; a lost race loses one sample, harmlessly.
            old - old / 8 + sample / 8
        };
        self.ttfb_ewma_us.store(new.max(1), Ordering::Relaxed);
    }

    /// A failure (connect error, timeout, 429, 5xx): opens the breaker at
    /// the threshold, or again after a failed probe. Returns whether this
    /// failure opened it.
    pub fn failed(&self, now_ms: u64, cooldown_ms: u64, threshold: u32) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probing = self.probing.load(Ordering::Acquire);
        if n >= threshold || probing {
            self.open_until_ms
                .store(now_ms.saturating_add(cooldown_ms).max(1), Ordering::Release);
            self.probing.store(false, Ordering::Release);
            self.cooldowns.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// A probe that ended without a verdict (the request was refused before
    /// it was sent): another request may probe.
    pub fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(&self) -> InFlight<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// The average time to the response head, in µs (0: not measured yet).
    pub fn ttfb_ewma_us(&self) -> u64 {
        self.ttfb_ewma_us.load(Ordering::Relaxed)
    }

    /// Lifetime failures and cooldowns started.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.failures.load(Ordering::Relaxed),
            self.cooldowns.load(Ordering::Relaxed),
        )
    }
}

/// A request in flight to a target.
#[must_use]
pub struct InFlight<'a>(&'a TargetHealth);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_at_the_threshold_lets_one_probe_through_and_closes_on_success() {
        let h = TargetHealth::new();
        assert_eq!(h.availability(0), Availability::Ready);
        assert!(!h.failed(1_000, 30_000, 3));
        assert!(!h.failed(1_000, 30_000, 3));
        assert_eq!(h.availability(1_000), Availability::Ready);
        assert!(h.failed(1_000, 30_000, 3));
        assert_eq!(h.availability(2_000), Availability::CoolingDown(31_000));
        assert_eq!(h.availability(31_000), Availability::Probe);
        // Only one probe at a time.
        assert_eq!(h.availability(31_001), Availability::CoolingDown(31_000));
        h.succeeded(500);
        assert_eq!(h.availability(31_002), Availability::Ready);
        assert_eq!(h.counts(), (3, 1));
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_again_at_once() {
        let h = TargetHealth::new();
        assert!(h.failed(0, 10, 1));
        assert_eq!(h.availability(10), Availability::Probe);
        assert!(h.failed(10, 10, 1000));
        assert_eq!(h.availability(15), Availability::CoolingDown(20));
        assert_eq!(h.availability(20), Availability::Probe);
        h.release_probe();
        assert_eq!(h.availability(20), Availability::Probe);
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let h = TargetHealth::new();
        h.failed(0, 10, 3);
        h.failed(0, 10, 3);
        h.succeeded(10);
        assert!(!h.failed(0, 10, 3));
        assert!(!h.is_open());
    }

    #[test]
    fn latency_is_a_moving_average_and_in_flight_is_counted_by_guards() {
        let h = TargetHealth::new();
        h.succeeded(800);
        assert_eq!(h.ttfb_ewma_us(), 800);
        h.succeeded(0);
        assert_eq!(h.ttfb_ewma_us(), 700);
        let a = h.begin();
        let b = h.begin();
        assert_eq!(h.inflight(), 2);
        drop(a);
        drop(b);
        assert_eq!(h.inflight(), 0);
    }
}
