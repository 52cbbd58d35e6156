//! When to try a failed delivery again: exponential backoff with full jitter
//! (the wait is uniform between [`RETRY_DELAY_MIN`] and the ceiling, the
//! ceiling doubling from [`BACKOFF_BASE`] up to [`BACKOFF_CAP`]), so the
//! receivers of many gateways that failed together are not hit together
//! again. A receiver's `Retry-After` wins when it asks for longer, up to
//! [`RETRY_AFTER_MAX`].
//!
//! The randomness is a xorshift64* seeded from the clock and the alert id: it
//! spreads retries, it guards nothing, so it needs no crate.

use std::time::Duration;

/// The first retry's ceiling.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Each failed attempt multiplies the ceiling by this.
pub const BACKOFF_FACTOR: u32 = 2;
/// The ceiling stops growing here.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5 * 60);
/// The shortest wait before a retry, whatever the jitter draws: a receiver
/// that failed is not called again at once.
pub const RETRY_DELAY_MIN: Duration = Duration::from_millis(250);
/// The longest `Retry-After` obeyed; a longer one waits this long.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(60 * 60);

const _: () = {
    assert!(RETRY_DELAY_MIN.as_millis() <= BACKOFF_BASE.as_millis());
    assert!(BACKOFF_BASE.as_millis() <= BACKOFF_CAP.as_millis());
    assert!(BACKOFF_FACTOR >= 2);
};

/// A xorshift64* generator: cheap, never zero, not for secrets.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from `seed` and the time now.
    pub fn new(seed: &[u8]) -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // FNV-1a over the seed, mixed with the clock.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in seed {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Jitter::from_state(h ^ nanos.rotate_left(29))
    }

    /// A generator with a fixed state (tests).
    pub fn from_state(state: u64) -> Jitter {
        Jitter(if state == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            state
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..=max` (the modulo bias is irrelevant here).
    pub fn below_or_eq(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next_u64();
        }
        self.next_u64() % (max + 1)
    }
}

/// The ceiling of the wait after failed attempt number `attempt` (1-based):
/// `BACKOFF_BASE * BACKOFF_FACTOR^(attempt-1)`, at most [`BACKOFF_CAP`].
pub fn backoff_ceiling(attempt: u32) -> Duration {
    let mut ceiling = BACKOFF_BASE;
    for _ in 1..attempt {
        ceiling = ceiling.saturating_mul(BACKOFF_FACTOR);
        if ceiling >= BACKOFF_CAP {
            return BACKOFF_CAP;
        }
    }
    ceiling.min(BACKOFF_CAP)
}

/// The wait after failed attempt number `attempt`: full jitter under the
/// ceiling (at least [`RETRY_DELAY_MIN`]), or the receiver's `Retry-After`
/// when longer (at most [`RETRY_AFTER_MAX`]).
pub fn retry_delay(attempt: u32, retry_after: Option<Duration>, jitter: &mut Jitter) -> Duration {
    let ceiling = backoff_ceiling(attempt);
    let drawn = Duration::from_millis(jitter.below_or_eq(ceiling.as_millis() as u64));
    let delay = drawn.max(RETRY_DELAY_MIN);
    match retry_after {
        Some(after) => delay.max(after.min(RETRY_AFTER_MAX)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        assert_eq!(backoff_ceiling(1), Duration::from_secs(1));
        assert_eq!(backoff_ceiling(2), Duration::from_secs(2));
        assert_eq!(backoff_ceiling(4), Duration::from_secs(8));
        assert_eq!(backoff_ceiling(9), Duration::from_secs(256));
        assert_eq!(backoff_ceiling(10), BACKOFF_CAP);
        assert_eq!(backoff_ceiling(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn delays_are_jittered_within_bounds_and_retry_after_wins_when_longer() {
        let mut j = Jitter::from_state(42);
        for attempt in 1..20 {
            let mut seen = std::collections::HashSet::new();
            for _ in 0..50 {
                let d = retry_delay(attempt, None, &mut j);
                assert!(d >= RETRY_DELAY_MIN && d <= backoff_ceiling(attempt).max(RETRY_DELAY_MIN));
                seen.insert(d);
            }
            if attempt > 2 {
                assert!(seen.len() > 10, "jitter draws differ");
            }
        }
        let d = retry_delay(1, Some(Duration::from_secs(30)), &mut j);
        assert_eq!(d, Duration::from_secs(30));
        let d = retry_delay(1, Some(Duration::from_secs(24 * 3600)), &mut j);
        assert_eq!(d, RETRY_AFTER_MAX);
        let d = retry_delay(12, Some(Duration::from_millis(1)), &mut j);
        assert!(d >= RETRY_DELAY_MIN && d <= BACKOFF_CAP);
    }
}
