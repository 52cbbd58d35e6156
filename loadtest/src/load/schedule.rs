//! One open-loop run: a fixed schedule of intended start times, a pool of keep-alive
//! connections, and latency measured from each request's intended start.
//!
//! The schedule: request `i` is due at `t0 + i / rate`, whatever happened to the
//! requests before it. A pacer thread (precise sleeps, not the runtime's 1 ms timer
//! wheel) releases one permit per due request into a semaphore; each connection task
//! takes a permit, takes the next request number, and sends it. When every connection
//! is busy the permits pile up: the requests wait for a connection, their latency
//! growing from their intended start (the coordinated-omission correction), and none is
//! skipped. The backlog is a counter, not a queue, so nothing grows with it. Requests
//! still waiting when the run ends are counted as `not_sent` errors.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::{Conn, RequestTemplate, Target};
use super::proc_cpu::{self, CpuSample};
use super::stats::{new_histogram, record, ErrorKind, Recorder, Summary, ERROR_KINDS};
use hdrhistogram::Histogram;

/// Delay between the end of connection set-up and the first intended start, so every
/// connection task is parked on the semaphore when the first permit comes.
const START_DELAY: Duration = Duration::from_millis(20);
/// A request whose turn came before the end of the schedule may still start this long
/// after it (covers the hand-over from the pacer to a connection); later it is `not_sent`.
pub const START_GRACE: Duration = Duration::from_millis(10);
/// The pacer never sleeps longer than this at once, so it notices the end of a run.
const PACER_MAX_SLEEP: Duration = Duration::from_millis(50);
/// Interval of the progress line on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The pacer spins (rather than sleeps) for at most the last `--pacer-spin` before a
/// request, and at most 1/MAX_SPIN_SHARE of the interval between two requests.
pub const MAX_SPIN_SHARE: f64 = 10.0;
/// Upper bound on the requests of one run (keeps the counters meaningful).
pub const MAX_REQUESTS_PER_RUN: f64 = 1e10;

/// A process whose CPU time is sampled around the measured part of a run.
#[derive(Clone, Debug)]
pub struct PidSpec {
    pub name: String,
    pub pid: u32,
}

/// Everything one run needs.
pub struct RunSpec {
    pub name: String,
    pub target: Target,
    pub template: Arc<RequestTemplate>,
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub pids: Vec<PidSpec>,
    pub quiet: bool,
    /// Spin window of the pacer (see [`spin_window`]).
    pub pacer_spin: Duration,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ErrorReport {
    /// Every measured request that did not end in a 2xx response.
    pub total: u64,
    /// Non-2xx responses by status code.
    pub by_status: std::collections::BTreeMap<String, u64>,
    /// Requests without a status: connect, reset, timeout, protocol, not_sent.
    pub by_kind: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct WarmupReport {
    pub scheduled: u64,
    pub completed: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct CpuUse {
    pub name: String,
    pub pid: u32,
    /// utime+stime+cutime+cstime over the measured part of the run, in seconds
    /// (resolution 1/clk_tck).
    pub cpu_seconds: f64,
    pub clk_tck: u64,
    /// cpu_seconds / completed requests, in microseconds.
    pub us_per_request: f64,
    /// The same figure scaled: CPU-seconds per million requests (numerically equal).
    pub cpu_s_per_million: f64,
    /// From the threads' nanosecond schedstat counters, when readable.
    pub sched_us_per_request: Option<f64>,
}

/// The result of one run (the JSON report of `run`, and a row of the others).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RunResult {
    pub name: String,
    pub target: String,
    pub scenario: String,
    /// Intended request rate, per second.
    pub rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: usize,
    /// Measured requests in the schedule (warm-up excluded).
    pub scheduled: u64,
    /// Measured requests actually sent.
    pub sent: u64,
    /// Measured requests that ended (any outcome but not_sent).
    pub completed: u64,
    /// Measured requests answered 2xx.
    pub ok: u64,
    pub errors: ErrorReport,
    /// errors.total / scheduled.
    pub error_rate: f64,
    /// 2xx responses per second of measured schedule.
    pub achieved_rps: f64,
    /// Wall time from the first intended start to the last response.
    pub elapsed_s: f64,
    /// Intended start to last byte of 2xx responses.
    pub latency_us: Summary,
    /// Intended start to first output token (streamed scenarios only).
    pub ttft_us: Option<Summary>,
    /// Time per output token after the first (streamed scenarios only).
    pub tpot_us: Option<Summary>,
    /// How late each request was picked up by a connection after its intended start
    /// (pacer lateness, plus waiting for a free connection, plus a busy generator).
    pub schedule_lag_us: Summary,
    /// How late the pacer released each request: the generator's own timing error.
    pub pacer_lateness_us: Summary,
    pub output_tokens: u64,
    pub warmup: WarmupReport,
    /// TCP connections opened, including the initial pool.
    pub connects: u64,
    /// CPU time of the `--pid` processes over the measured part of the run.
    pub cpu: Vec<CpuUse>,
    /// CPU time of the load generator itself, the same way.
    pub generator_cpu: Option<CpuUse>,
}

/// How many of the requests `0, 1, 2, ...` are due strictly before `t` at `rate`.
pub fn due_before(rate: f64, t: Duration) -> u64 {
    let x = t.as_secs_f64() * rate;
    // Guard against 200.00000001 for 2 s at 100/s.
    (x - 1e-9).ceil().max(0.0) as u64
}

fn offset(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

struct Shared {
    sem: Semaphore,
    next: AtomicU64,
    rec: Mutex<Recorder>,
    t0: Instant,
    rate: f64,
    warmup_count: u64,
    template: Arc<RequestTemplate>,
}

impl Shared {
    fn rec(&self) -> MutexGuard<'_, Recorder> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the schedule once and returns what was measured.
pub async fn execute(spec: &RunSpec) -> anyhow::Result<RunResult> {
    let total = due_before(spec.rate, spec.warmup + spec.duration);
    let warmup_count = due_before(spec.rate, spec.warmup);
    if total <= warmup_count {
        bail!(
            "at {} req/s a {:?} run schedules no request to measure; raise --rate or --duration",
            spec.rate,
            spec.duration
        );
    }
    let addr = spec.target.resolve().await?;

    // Open the whole pool before the clock starts.
    let mut opening = JoinSet::new();
    for _ in 0..spec.connections {
        let timeout = spec.template.timeout;
        opening.spawn(async move {
            let mut c = Conn::new(addr);
            c.open(timeout).await.map(|()| c)
        });
    }
    let mut conns = Vec::with_capacity(spec.connections);
    while let Some(r) = opening.join_next().await {
        let c = r
            .context("connection task failed")?
            .with_context(|| format!("cannot connect to {} ({addr})", spec.target.url))?;
        conns.push(c);
    }

    let t0 = Instant::now() + START_DELAY;
    let shared = Arc::new(Shared {
        sem: Semaphore::new(0),
        next: AtomicU64::new(0),
        rec: Mutex::new(Recorder::default()),
        t0,
        rate: spec.rate,
        warmup_count,
        template: spec.template.clone(),
    });
    let mut workers = JoinSet::new();
    for conn in conns {
        workers.spawn(worker(shared.clone(), conn));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let spin = spin_window(spec.pacer_spin, spec.rate);
    let pacer = {
        let shared = shared.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("bursar-load-pacer".into())
            .spawn(move || pace(&shared, total, &stop, spin))
            .context("cannot start the pacer thread")?
    };

    let measure_start = t0 + spec.warmup;
    let end = measure_start + spec.duration;
    let stop_at = end + START_GRACE;
    let mut progress = Progress {
        name: &spec.name,
        quiet: spec.quiet,
        t0,
        measure_start,
        end,
        total,
    };
    // The processes sampled: the --pid ones, then this one (the generator's own cost).
    let mut pids = spec.pids.clone();
    pids.push(PidSpec {
        name: "bursar-load".into(),
        pid: std::process::id(),
    });
    let mut cpu_before: Option<Vec<Option<CpuSample>>> = None;
    let mut tick = t0 + PROGRESS_EVERY;
    loop {
        let mut wake = tick.min(stop_at);
        if cpu_before.is_none() {
            wake = wake.min(measure_start);
        }
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        if cpu_before.is_none() && now >= measure_start {
            cpu_before = Some(sample_all(&pids));
        }
        if now >= tick {
            progress.line(&shared, now);
            tick += PROGRESS_EVERY;
        }
        if now >= stop_at {
            break;
        }
    }
    // The end of the schedule: nothing starts any more; in-flight requests finish (each
    // is bounded by --timeout).
    shared.sem.close();
    stop.store(true, Ordering::Relaxed);
    let mut connects = 0;
    while !workers.is_empty() {
        tokio::select! {
            r = workers.join_next() => {
                if let Some(r) = r {
                    connects += r.context("connection task failed")?;
                }
            }
            _ = tokio::time::sleep_until(tick.into()) => {
                progress.line(&shared, Instant::now());
                tick += PROGRESS_EVERY;
            }
        }
    }
    let finished = Instant::now();
    let cpu_after = sample_all(&pids);
    let pacer_lateness = pacer.join().unwrap_or_else(|_| new_histogram());

    let started = shared.next.load(Ordering::Relaxed).min(total);
    let mut rec = std::mem::take(&mut *shared.rec());
    let not_sent = total - started.max(warmup_count);
    rec.count_kind(ErrorKind::NotSent, not_sent);
    rec.warmup_errors += warmup_count - started.min(warmup_count);

    let scheduled = total - warmup_count;
    let sent = started.saturating_sub(warmup_count);
    let errors = ErrorReport {
        total: rec.errors(),
        by_status: rec
            .by_status
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        by_kind: ERROR_KINDS
            .iter()
            .map(|k| (k.as_str().to_string(), rec.by_kind[*k as usize]))
            .collect(),
    };
    let streamed = spec.template.scenario.streamed();
    let mut cpu = cpu_use(
        &pids,
        cpu_before.unwrap_or_default(),
        cpu_after,
        rec.completed,
    );
    let generator_cpu = match cpu.last() {
        Some(c) if c.pid == std::process::id() && c.name == "bursar-load" => cpu.pop(),
        _ => None,
    };
    Ok(RunResult {
        name: spec.name.clone(),
        target: spec.target.url.clone(),
        scenario: spec.template.scenario.as_str().to_string(),
        rate: spec.rate,
        duration_s: spec.duration.as_secs_f64(),
        warmup_s: spec.warmup.as_secs_f64(),
        connections: spec.connections,
        scheduled,
        sent,
        completed: rec.completed,
        ok: rec.ok,
        error_rate: errors.total as f64 / scheduled as f64,
        errors,
        achieved_rps: rec.ok as f64 / spec.duration.as_secs_f64(),
        elapsed_s: finished.saturating_duration_since(t0).as_secs_f64(),
        latency_us: Summary::of(&rec.latency),
        ttft_us: streamed.then(|| Summary::of(&rec.ttft)),
        tpot_us: streamed.then(|| Summary::of(&rec.tpot)),
        schedule_lag_us: Summary::of(&rec.lag),
        pacer_lateness_us: Summary::of(&pacer_lateness),
        output_tokens: rec.output_tokens,
        warmup: WarmupReport {
            scheduled: warmup_count,
            completed: rec.warmup_completed,
            errors: rec.warmup_errors,
        },
        connects,
        cpu,
        generator_cpu,
    })
}

/// One connection: take the next due request, send it, record it; until the run ends.
async fn worker(shared: Arc<Shared>, mut conn: Conn) -> u64 {
    loop {
        match shared.sem.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => break,
        }
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        let intended = shared.t0 + offset(i, shared.rate);
        let picked = Instant::now();
        let out = conn.request(&shared.template, i).await;
        let mut r = shared.rec();
        let success = out.error.is_none() && out.status.is_some_and(|s| (200..300).contains(&s));
        if i < shared.warmup_count {
            r.warmup_completed += 1;
            if !success {
                r.warmup_errors += 1;
            }
            continue;
        }
        r.completed += 1;
        record(&mut r.lag, picked.saturating_duration_since(intended));
        match (out.error, out.status) {
            (Some(kind), _) => r.count_kind(kind, 1),
            (None, None) => r.count_kind(ErrorKind::Protocol, 1),
            (None, Some(status)) if !success => *r.by_status.entry(status).or_default() += 1,
            (None, Some(_)) => {
                r.ok += 1;
                let latency = out.done.saturating_duration_since(intended);
                record(&mut r.latency, latency);
                record(&mut r.interval, latency);
                if let Some(first) = out.first_token {
                    record(&mut r.ttft, first.saturating_duration_since(intended));
                    if let (Some(last), true) = (out.last_token, out.tokens > 1) {
                        let per = last.saturating_duration_since(first) / (out.tokens - 1);
                        record(&mut r.tpot, per);
                    }
                }
                r.output_tokens += u64::from(out.tokens);
            }
        }
    }
    conn.connects
}

/// The pacer thread: releases one permit per request as its intended time comes.
/// Returns how late each measured request was released (the generator's own timing
/// error, before any wait for a connection).
fn pace(shared: &Shared, total: u64, stop: &AtomicBool, spin: Duration) -> Histogram<u64> {
    set_fine_timer_slack();
    let mut lateness = new_histogram();
    let mut released = 0u64;
    while released < total && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= shared.t0 {
            let elapsed = now.duration_since(shared.t0).as_secs_f64();
            let due = ((elapsed * shared.rate).floor() as u64 + 1).min(total);
            if due > released {
                shared.sem.add_permits((due - released) as usize);
                for i in released.max(shared.warmup_count)..due {
                    let intended = shared.t0 + offset(i, shared.rate);
                    record(&mut lateness, now.saturating_duration_since(intended));
                }
                released = due;
            }
        }
        if released >= total {
            break;
        }
        let next = shared.t0 + offset(released, shared.rate);
        let now = Instant::now();
        if next <= now {
            continue;
        }
        let wait = next - now;
        if wait > spin {
            std::thread::sleep((wait - spin).min(PACER_MAX_SLEEP));
        } else {
            // The last few microseconds: the kernel's wake-up is ~25-80 µs late on
            // a VM, so the pacer spins instead.
            while Instant::now() < next {
                std::hint::spin_loop();
            }
        }
    }
    lateness
}

/// The spin window the pacer uses at `rate`: `requested`, shortened so that spinning
/// costs at most 1/[`MAX_SPIN_SHARE`] of a core.
pub fn spin_window(requested: Duration, rate: f64) -> Duration {
    let cap = Duration::from_secs_f64(1.0 / rate / MAX_SPIN_SHARE);
    requested.min(cap)
}

/// Asks the kernel to wake this thread within ~1 µs of the requested time instead of
/// the default 50 µs slack.
fn set_fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

fn sample_all(pids: &[PidSpec]) -> Vec<Option<CpuSample>> {
    pids.iter()
        .map(|p| match proc_cpu::sample(p.pid) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!(
                    "warning: cannot read CPU time of {} (pid {}): {e}",
                    p.name, p.pid
                );
                None
            }
        })
        .collect()
}

fn cpu_use(
    pids: &[PidSpec],
    before: Vec<Option<CpuSample>>,
    after: Vec<Option<CpuSample>>,
    requests: u64,
) -> Vec<CpuUse> {
    let tck = proc_cpu::clk_tck();
    let n = requests.max(1) as f64;
    pids.iter()
        .zip(before.into_iter().chain(std::iter::repeat(None)))
        .zip(after)
        .filter_map(|((p, b), a)| {
            let (b, a) = (b?, a?);
            let cpu_seconds = a.ticks.saturating_sub(b.ticks) as f64 / tck as f64;
            let us = cpu_seconds * 1e6 / n;
            let sched = match (b.sched_ns, a.sched_ns) {
                (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / 1e3 / n),
                _ => None,
            };
            Some(CpuUse {
                name: p.name.clone(),
                pid: p.pid,
                cpu_seconds,
                clk_tck: tck,
                us_per_request: round3(us),
                cpu_s_per_million: round3(us),
                sched_us_per_request: sched.map(round3),
            })
        })
        .collect()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

struct Progress<'a> {
    name: &'a str,
    quiet: bool,
    t0: Instant,
    measure_start: Instant,
    end: Instant,
    total: u64,
}

impl Progress<'_> {
    fn line(&mut self, shared: &Shared, now: Instant) {
        let mut r = shared.rec();
        let p99 = if r.interval.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{:.3}ms",
                r.interval.value_at_quantile(0.99) as f64 / 1000.0
            )
        };
        r.interval.reset();
        if self.quiet {
            return;
        }
        let phase = if now < self.measure_start {
            "warmup"
        } else if now < self.end {
            "measure"
        } else {
            "drain"
        };
        let started = shared.next.load(Ordering::Relaxed).min(self.total);
        let done = r.completed + r.warmup_completed;
        let errors = r.errors() + r.warmup_errors;
        drop(r);
        eprintln!(
            "[{}] {:>6.1}s {:<7} sent {}/{} done {} errors {} inflight {} p99(1s) {}",
            self.name,
            now.saturating_duration_since(self.t0).as_secs_f64(),
            phase,
            started,
            self.total,
            done,
            errors,
            started.saturating_sub(done),
            p99
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_counts() {
        assert_eq!(due_before(100.0, Duration::from_secs(2)), 200);
        assert_eq!(due_before(100.0, Duration::ZERO), 0);
        assert_eq!(due_before(3.0, Duration::from_millis(500)), 2);
        assert_eq!(due_before(0.7, Duration::from_secs(10)), 7);
        assert_eq!(offset(150, 100.0), Duration::from_millis(1500));
        let us = Duration::from_micros;
        assert_eq!(spin_window(us(50), 100.0), us(50));
        assert_eq!(spin_window(us(50), 5000.0), us(20));
        assert_eq!(spin_window(us(0), 10.0), us(0));
    }
}
