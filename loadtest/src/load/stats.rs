//! Recording one run: latency histograms (microseconds, 3 significant digits) and
//! outcome counts, and their summaries.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest value a histogram tracks, in microseconds (one hour); larger values are
/// clamped to it (a run never lasts that long without being broken anyway).
pub const HIST_MAX_US: u64 = 3_600_000_000;
/// Significant decimal digits kept by every histogram.
pub const HIST_SIGFIG: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, HIST_SIGFIG).expect("static histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.clamp(1, HIST_MAX_US));
}

/// Why a request did not produce an HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TCP connection could not be (re)established.
    Connect,
    /// The connection was reset or closed before the response was complete.
    Reset,
    /// No complete response within `--timeout` of sending.
    Timeout,
    /// The response could not be parsed (HTTP or server-sent events).
    Protocol,
    /// The request's intended start time came, but no connection was free before the
    /// run ended: it was never sent.
    NotSent,
}

pub const ERROR_KINDS: [ErrorKind; 5] = [
    ErrorKind::Connect,
    ErrorKind::Reset,
    ErrorKind::Timeout,
    ErrorKind::Protocol,
    ErrorKind::NotSent,
];

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Reset => "reset",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
            ErrorKind::NotSent => "not_sent",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Everything recorded during one run. Shared by the connection tasks behind a mutex
/// (held for a few hundred nanoseconds per response).
pub struct Recorder {
    /// Intended start to last byte, successful (2xx) responses only.
    pub latency: Histogram<u64>,
    /// The same, only since the last progress line.
    pub interval: Histogram<u64>,
    /// Intended start to first output token (streamed scenarios).
    pub ttft: Histogram<u64>,
    /// (last token - first token) / (tokens - 1), per streamed response.
    pub tpot: Histogram<u64>,
    /// Actual send time minus intended start time (how late the generator was).
    pub lag: Histogram<u64>,
    pub ok: u64,
    pub completed: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub by_kind: [u64; ERROR_KINDS.len()],
    pub warmup_completed: u64,
    pub warmup_errors: u64,
    pub output_tokens: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: new_histogram(),
            interval: new_histogram(),
            ttft: new_histogram(),
            tpot: new_histogram(),
            lag: new_histogram(),
            ok: 0,
            completed: 0,
            by_status: BTreeMap::new(),
            by_kind: [0; ERROR_KINDS.len()],
            warmup_completed: 0,
            warmup_errors: 0,
            output_tokens: 0,
        }
    }
}

impl Recorder {
    pub fn count_kind(&mut self, kind: ErrorKind, n: u64) {
        self.by_kind[kind.index()] += n;
    }

    pub fn errors(&self) -> u64 {
        self.by_status.values().sum::<u64>() + self.by_kind.iter().sum::<u64>()
    }
}

/// Percentiles of one histogram, all in microseconds.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    pub stdev: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: round1(h.mean()),
            stdev: round1(h.stdev()),
        }
    }

    /// The value of a percentile by its report name.
    pub fn get(&self, which: Pct) -> f64 {
        match which {
            Pct::P50 => self.p50 as f64,
            Pct::P90 => self.p90 as f64,
            Pct::P99 => self.p99 as f64,
            Pct::P999 => self.p999 as f64,
            Pct::Max => self.max as f64,
            Pct::Mean => self.mean,
        }
    }
}

/// The statistics every report compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pct {
    P50,
    P90,
    P99,
    P999,
    Max,
    Mean,
}

pub const PCTS: [Pct; 6] = [Pct::P50, Pct::P90, Pct::P99, Pct::P999, Pct::Max, Pct::Mean];

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The median of a non-empty list (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_percentiles() {
        let mut h = new_histogram();
        for ms in 1..=1000u64 {
            record(&mut h, Duration::from_micros(ms * 1000));
        }
        let s = Summary::of(&h);
        assert_eq!(s.count, 1000);
        assert!((499_000..=501_000).contains(&s.p50), "{}", s.p50);
        assert!((989_000..=991_000).contains(&s.p99), "{}", s.p99);
        assert!(s.max >= 999_000);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
