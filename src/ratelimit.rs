//! Rate limits per virtual key and per team: requests per minute, tokens per
//! minute, concurrent requests.
//!
//! One limiter per limited entity, shared by every worker through the catalog
//! and updated with lock-free atomics (a compare-and-swap per admission, no
//! lock, no cross-thread message): the limit is the gateway's, not each
//! worker's, so it does not multiply with the worker count.
//!
//! Semantics, chosen to be exact where they can be:
//! - requests per minute: at most N admissions per UTC minute (a fixed
//!   window; `Retry-After` says when the minute ends). Exact.
//! - concurrent: at most N requests of the entity in flight. Exact.
//! - tokens per minute: a request is admitted while the minute's recorded
//!   tokens are below the limit, and its actual tokens (the provider's usage,
//!   else the gateway's count) are recorded when it ends. A minute can
//!   therefore overshoot by what was in flight when it filled, the same bound
//!   providers document for their own token limits.
//!
//! Limiters live in the catalog, so a reload starts them afresh.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::RateLimit;
use crate::error::ApiError;

/// Which entity a limiter belongs to, for the 429 message.
#[derive(Debug, Clone)]
pub struct LimiterName {
    pub kind: &'static str,
    pub name: String,
    /// The one model the limits apply to (`model_rate_limits`); `None`:
    /// every model.
    pub model: Option<String>,
}

impl std::fmt::Display for LimiterName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.kind, self.name)?;
        if let Some(m) = &self.model {
            write!(f, " on the model {m:?}")?;
        }
        Ok(())
    }
}

/// A fixed one-minute window packed in one word: minute index (high 32 bits)
/// and the count within it (low 32 bits).
#[derive(Debug, Default)]
struct MinuteWindow(AtomicU64);

impl MinuteWindow {
    fn unpack(v: u64) -> (u32, u32) {
        ((v >> 32) as u32, v as u32)
    }

    fn pack(minute: u32, count: u32) -> u64 {
        (u64::from(minute) << 32) | u64::from(count)
    }

    /// Adds `n` if the count stays within `limit`; `false` when it would not.
    fn try_add(&self, minute: u32, n: u32, limit: u32) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (m, c) = Self::unpack(cur);
            let base = if m == minute { c } else { 0 };
            let next = base.saturating_add(n);
            if next > limit {
                return false;
            }
            match self.0.compare_exchange_weak(
                cur,
                Self::pack(minute, next),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Adds `n` unconditionally (saturating), starting a new minute if needed.
    fn add(&self, minute: u32, n: u32) {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (m, c) = Self::unpack(cur);
            let base = if m == minute { c } else { 0 };
            let next = Self::pack(minute, base.saturating_add(n));
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    fn count(&self, minute: u32) -> u32 {
        let (m, c) = Self::unpack(self.0.load(Ordering::Relaxed));
        if m == minute {
            c
        } else {
            0
        }
    }
}

/// One entity's limits and their live state.
#[derive(Debug)]
pub struct Limiter {
    pub name: LimiterName,
    limit: RateLimit,
    requests: MinuteWindow,
    tokens: MinuteWindow,
    in_flight: AtomicU32,
}

impl Limiter {
    pub fn new(name: LimiterName, limit: RateLimit) -> Option<Arc<Limiter>> {
        (!limit.is_unlimited()).then(|| {
            Arc::new(Limiter {
                name,
                limit,
                requests: MinuteWindow::default(),
                tokens: MinuteWindow::default(),
                in_flight: AtomicU32::new(0),
            })
        })
    }

    /// The limits this limiter enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    fn refuse(&self, what: &str, limit: u64, retry_after_secs: u64) -> ApiError {
        let mut e = ApiError::rate_limited(format!(
            "rate limit reached for {}: {limit} {what}; retry after {retry_after_secs}s",
            self.name
        ));
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// Takes one request slot (and a concurrency slot); undone by dropping
    /// the returned permit's concurrency part when the request ends. With
    /// `uses_tokens` false (a request that spends none) the minute's tokens
    /// are not checked.
    fn admit(self: &Arc<Self>, now_ms: i64, uses_tokens: bool) -> Result<(), ApiError> {
        let minute = (now_ms.max(0) / 60_000) as u32;
        let retry = (60 - (now_ms.max(0) / 1000) % 60).max(1) as u64;
        if let (true, Some(tpm)) = (uses_tokens, self.limit.tokens_per_minute) {
            let used = u64::from(self.tokens.count(minute));
            if used >= tpm {
                return Err(self.refuse("tokens per minute", tpm, retry));
            }
        }
        if let Some(c) = self.limit.concurrent {
            let mut cur = self.in_flight.load(Ordering::Relaxed);
            loop {
                if cur >= c {
                    return Err(self.refuse("concurrent requests", u64::from(c), 1));
                }
                match self.in_flight.compare_exchange_weak(
                    cur,
                    cur + 1,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(seen) => cur = seen,
                }
            }
        }
        if let Some(rpm) = self.limit.requests_per_minute {
            if !self.requests.try_add(minute, 1, rpm) {
                if self.limit.concurrent.is_some() {
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                }
                return Err(self.refuse("requests per minute", u64::from(rpm), retry));
            }
        }
        Ok(())
    }

    fn release(&self) {
        if self.limit.concurrent.is_some() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn record_tokens(&self, now_ms: i64, tokens: u64) {
        if self.limit.tokens_per_minute.is_some() {
            let minute = (now_ms.max(0) / 60_000) as u32;
            self.tokens
                .add(minute, u32::try_from(tokens).unwrap_or(u32::MAX));
        }
    }
}

/// The limits a request was admitted under; releases its concurrency slots
/// when dropped (however the request ends).
#[derive(Debug, Default)]
pub struct Permit {
    held: Vec<Arc<Limiter>>,
}

impl Permit {
    /// Admits a request against every limiter in `chain`, then every one in
    /// `model_chain` (the limits on the request's model), all or none.
    pub fn acquire(
        chain: &[Arc<Limiter>],
        model_chain: &[Arc<Limiter>],
        now_ms: i64,
    ) -> Result<Permit, ApiError> {
        let mut permit = Permit {
            held: Vec::with_capacity(chain.len() + model_chain.len()),
        };
        for l in chain.iter().chain(model_chain) {
            l.admit(now_ms, true)?; // on error, `permit` drops and releases the earlier ones
            permit.held.push(Arc::clone(l));
        }
        Ok(permit)
    }

    /// Admits a request that spends no tokens (a key holder's
    /// `GET /v1/bursar/usage`) against the requests-per-minute and
    /// concurrency limits of every limiter in `chain`, all or none. Tokens
    /// per minute are not checked: it uses none, and a key out of tokens
    /// may still ask what it spent.
    pub fn acquire_tokenless(chain: &[Arc<Limiter>], now_ms: i64) -> Result<Permit, ApiError> {
        let mut permit = Permit {
            held: Vec::with_capacity(chain.len()),
        };
        for l in chain {
            l.admit(now_ms, false)?;
            permit.held.push(Arc::clone(l));
        }
        Ok(permit)
    }

    /// Records a finished request's tokens against every tokens-per-minute limit.
    pub fn record_tokens(&self, now_ms: i64, tokens: u64) {
        for l in &self.held {
            l.record_tokens(now_ms, tokens);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        for l in &self.held {
            l.release();
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit: RateLimit) -> Arc<Limiter> {
        Limiter::new(
            LimiterName {
                kind: "key",
                name: "k".into(),
                model: None,
            },
            limit,
        )
        .unwrap()
    }

    #[test]
    fn requests_per_minute_is_exact_and_resets_each_minute() {
        let l = limiter(RateLimit {
            requests_per_minute: Some(3),
            ..Default::default()
        });
        let t = 120_000;
        let permits: Vec<_> = (0..3)
            .map(|_| Permit::acquire(std::slice::from_ref(&l), &[], t).unwrap())
            .collect();
        let e = Permit::acquire(std::slice::from_ref(&l), &[], t + 1000).unwrap_err();
        assert_eq!(e.status, 429);
        assert_eq!(e.retry_after_secs, Some(59));
        drop(permits);
        assert!(
            Permit::acquire(std::slice::from_ref(&l), &[], t + 60_000).is_ok(),
            "a new minute"
        );
    }

    #[test]
    fn concurrency_slots_come_back_when_permits_drop() {
        let l = limiter(RateLimit {
            concurrent: Some(2),
            ..Default::default()
        });
        let a = Permit::acquire(std::slice::from_ref(&l), &[], 0).unwrap();
        let _b = Permit::acquire(std::slice::from_ref(&l), &[], 0).unwrap();
        assert_eq!(
            Permit::acquire(std::slice::from_ref(&l), &[], 0)
                .unwrap_err()
                .status,
            429
        );
        drop(a);
        assert!(Permit::acquire(std::slice::from_ref(&l), &[], 0).is_ok());
    }

    #[test]
    fn a_refusal_at_one_level_releases_the_others() {
        let team = limiter(RateLimit {
            concurrent: Some(1),
            ..Default::default()
        });
        let key = limiter(RateLimit {
            requests_per_minute: Some(1),
            ..Default::default()
        });
        let _first = Permit::acquire(std::slice::from_ref(&key), &[], 0).unwrap();
        // The team admits, the key refuses: the team's slot must come back.
        assert!(Permit::acquire(&[team.clone(), key.clone()], &[], 0).is_err());
        assert!(Permit::acquire(std::slice::from_ref(&team), &[], 0).is_ok());
    }

    #[test]
    fn a_tokenless_request_counts_requests_but_not_tokens() {
        let l = limiter(RateLimit {
            requests_per_minute: Some(2),
            tokens_per_minute: Some(10),
            ..Default::default()
        });
        let t = 60_000;
        let p = Permit::acquire(std::slice::from_ref(&l), &[], t).unwrap();
        p.record_tokens(t, 10);
        // The minute's tokens are spent: a request that uses tokens is
        // refused, one that uses none is admitted and takes a request slot.
        assert_eq!(
            Permit::acquire(std::slice::from_ref(&l), &[], t)
                .unwrap_err()
                .status,
            429
        );
        let _usage = Permit::acquire_tokenless(std::slice::from_ref(&l), t).unwrap();
        let e = Permit::acquire_tokenless(std::slice::from_ref(&l), t).unwrap_err();
        assert_eq!(e.status, 429);
        assert!(e.message.contains("requests per minute"), "{}", e.message);
    }

    #[test]
    fn tokens_per_minute_refuses_once_the_minute_is_full() {
        let l = limiter(RateLimit {
            tokens_per_minute: Some(100),
            ..Default::default()
        });
        let p = Permit::acquire(std::slice::from_ref(&l), &[], 0).unwrap();
        p.record_tokens(0, 100);
        assert_eq!(
            Permit::acquire(std::slice::from_ref(&l), &[], 1)
                .unwrap_err()
                .status,
            429
        );
        assert!(Permit::acquire(std::slice::from_ref(&l), &[], 60_000).is_ok());
    }

    #[test]
    fn concurrent_admissions_across_threads_never_exceed_the_limit() {
        let l = limiter(RateLimit {
            requests_per_minute: Some(1000),
            ..Default::default()
        });
        let admitted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if let Ok(p) = Permit::acquire(std::slice::from_ref(&l), &[], 5_000) {
                            std::mem::forget(p);
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }
}
