//! Per-worker counters and their Prometheus rendering.
//!
//! Each counter has exactly one writer (its worker), so an increment is a
//! relaxed load and store, not a locked read-modify-write; the control plane
//! reads them with relaxed loads and sums across workers.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;

/// A monotonically increasing counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A gauge with a single writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// The I/O driver a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    Unknown = 0,
    IoUring = 1,
    Legacy = 2,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Unknown => "unknown",
            DriverKind::IoUring => "io_uring",
            DriverKind::Legacy => "legacy",
        }
    }
    fn from_u8(v: u8) -> DriverKind {
        match v {
            1 => DriverKind::IoUring,
            2 => DriverKind::Legacy,
            _ => DriverKind::Unknown,
        }
    }
}

/// Tokens seen in responses, by kind. One writer per instance (a worker, or
/// the tokenizer thread for counts it estimates).
#[derive(Debug, Default)]
pub struct TokenCounters {
    pub prompt: Counter,
    pub completion: Counter,
    pub cached: Counter,
    pub reasoning: Counter,
    /// Responses whose usage the provider reported.
    pub usage_reported: Counter,
    /// Responses counted (in part) by the gateway's tokenizer.
    pub usage_estimated: Counter,
    /// Non-streamed successful responses without a usage object.
    pub usage_missing: Counter,
    /// Usage chunks the gateway asked for and removed from the client's stream.
    pub usage_chunks_stripped: Counter,
    /// Cost of the counted tokens at the price table's list prices, in
    /// picodollars (a counter: it wraps, like a restart, after $18.4M).
    pub cost_picodollars: Counter,
    /// Responses for a model with no price (not costed; never "free").
    pub unpriced: Counter,
}

impl TokenCounters {
    /// Counts `u`, and its cost at `price` (`None`: the model is unpriced).
    pub fn record(
        &self,
        u: &crate::tokens::Usage,
        estimated: bool,
        price: Option<&crate::prices::Price>,
    ) {
        match price.and_then(|p| p.cost(&crate::prices::TokenCounts::from(u))) {
            Some(cost) => self
                .cost_picodollars
                .add(u64::try_from(cost.picodollars()).unwrap_or(u64::MAX)),
            None => self.unpriced.inc(),
        }
        self.prompt.add(u.prompt_tokens);
        self.completion.add(u.completion_tokens);
        self.cached.add(u.cached_tokens);
        self.reasoning.add(u.reasoning_tokens);
        if estimated {
            self.usage_estimated.inc();
        } else {
            self.usage_reported.inc();
        }
    }
}

/// What one worker counts.
#[derive(Debug, Default)]
pub struct WorkerStats {
    driver: AtomicU8,
    pub connections_accepted: Counter,
    /// Times the worker stopped accepting at `connections_per_worker_max`
    /// (new connections then wait in the listen backlog until one closes).
    pub accept_paused: Counter,
    pub connections_active: Gauge,
    /// Responses by status class: index 1 for 1xx ... 5 for 5xx.
    pub responses: [Counter; 6],
    pub requests_inflight: Gauge,
    pub bad_requests: Counter,
    pub upstream_connects: Counter,
    pub upstream_reuses: Counter,
    pub upstream_stale_retries: Counter,
    /// Pooled connections closed without a response too long after the
    /// write to be stale: answered 502, not sent again, not charged.
    pub upstream_closed_not_retried: Counter,
    pub upstream_errors: Counter,
    pub upstream_timeouts: Counter,
    pub streams_completed: Counter,
    pub streams_client_aborted: Counter,
    pub streams_upstream_aborted: Counter,
    pub pool_idle: Gauge,
    /// Requests refused 402 by a budget.
    pub budget_refused: Counter,
    /// Requests whose output cap was lowered to fit a strict budget.
    pub budget_degraded: Counter,
    /// Requests sent to their key's or team's fallback model because the
    /// budgets could not afford the model asked for.
    pub budget_downgraded: Counter,
    /// Targets passed over because their budgets could not afford a request
    /// that another target of its model group then served or refused.
    pub budget_rerouted: Counter,
    /// Upstream attempts left for another target or key (unreachable,
    /// timed out, 429, 5xx, auth refused).
    pub upstream_failovers: Counter,
    /// Requests answered from the response cache, looked up and not found,
    /// and answers stored in it; its entries and bytes on this worker.
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_stores: Counter,
    /// What the hits' answers cost when they were paid for.
    pub cache_avoided_picodollars: Counter,
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    /// The semantic cache: hits, candidates from stage a, candidates the
    /// guards (stage b) or the confirmation (stage c) turned down,
    /// confirmations not had in time (queue full or late), and its entries
    /// and bytes on this worker.
    pub cache_semantic_hits: Counter,
    pub cache_semantic_candidates: Counter,
    pub cache_semantic_guard_refusals: Counter,
    pub cache_semantic_confirm_refusals: Counter,
    pub cache_semantic_confirm_missed: Counter,
    pub cache_semantic_entries: Gauge,
    pub cache_semantic_bytes: Gauge,
    /// Tags from request bodies (`user`, `metadata`) not logged: the request
    /// already had `reqlog::row::TAGS_MAX` tags.
    pub tags_dropped: Counter,
    pub tokens: TokenCounters,
    /// Names of unpriced models this worker saw, for the operational alerts'
    /// sampler (`alerts::operational`).
    pub unpriced_models: UnpricedModels,
    /// How late the worker's housekeeping timer (every
    /// `OVERHEAD_PUBLISH_INTERVAL`) fired, the worst so far, in
    /// microseconds: a bound on how long the worker's event loop was busy
    /// without yielding (a stall delays every connection on the worker).
    pub loop_lag_max_us: Gauge,
    /// Times that lateness passed `limits::WORKER_STALL`.
    pub stalls: Counter,
    /// The worker's overhead histogram as last published (every
    /// `OVERHEAD_PUBLISH_INTERVAL`); the worker's own copy is never shared.
    overhead: arc_swap::ArcSwapOption<Histogram<u64>>,
}

impl WorkerStats {
    pub fn set_driver(&self, d: DriverKind) {
        self.driver.store(d as u8, Relaxed);
    }
    pub fn driver(&self) -> DriverKind {
        DriverKind::from_u8(self.driver.load(Relaxed))
    }
    pub fn publish_overhead(&self, h: Histogram<u64>) {
        self.overhead.store(Some(Arc::new(h)));
    }

    #[inline]
    pub fn response(&self, status: u16) {
        let class = (status / 100) as usize;
        if let Some(c) = self.responses.get(class) {
            c.inc();
        }
    }
}

/// Most unpriced model names a worker holds for the operational sampler;
/// more are dropped until it drains them.
pub const UNPRICED_MODELS_QUEUED_MAX: usize = 16;
/// A model name longer than this is cut (at a character boundary) before
/// it is queued: it comes from a client.
pub const UNPRICED_MODEL_BYTES_MAX: usize = 256;
/// A model queued this recently (by this worker) is not queued again, so one
/// model requested in a flood cannot fill the queue and hide another.
pub const UNPRICED_MODEL_REPEAT_MS: i64 = 10_000;
/// How many recently queued models a worker remembers for that check.
const UNPRICED_RECENT: usize = 4;

/// The unpriced models one worker saw, for the operational sampler to drain.
/// The worker is the only sender; the sampler only `try_recv`s (it never
/// waits on the channel), so a send finds no waiting receiver and takes no
/// lock: a bounded array channel is then a lock-free queue. Only the admit
/// phase of a request for a model without a price records (a rare path:
/// that request is refused, or served uncharged).
#[derive(Debug)]
pub struct UnpricedModels {
    tx: crossbeam_channel::Sender<Box<str>>,
    rx: crossbeam_channel::Receiver<Box<str>>,
    /// (hash of the name, unix ms) of the last models queued: single writer.
    recent: [(AtomicU64, AtomicI64); UNPRICED_RECENT],
    next: AtomicUsize,
}

impl Default for UnpricedModels {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(UNPRICED_MODELS_QUEUED_MAX);
        UnpricedModels {
            tx,
            rx,
            recent: Default::default(),
            next: AtomicUsize::new(0),
        }
    }
}

impl UnpricedModels {
    /// Queues `model` (worker only): unless this worker queued it within
    /// [`UNPRICED_MODEL_REPEAT_MS`], or the queue is full (then it is
    /// dropped; a later request queues it once there is room).
    pub fn record(&self, model: &str, now_ms: i64) {
        use std::hash::BuildHasher;
        let hash = foldhash::fast::FixedState::with_seed(0).hash_one(model);
        let repeat = self.recent.iter().any(|(h, t)| {
            h.load(Relaxed) == hash
                && now_ms.saturating_sub(t.load(Relaxed)) < UNPRICED_MODEL_REPEAT_MS
        });
        if repeat || self.tx.is_full() {
            return;
        }
        let i = self.next.load(Relaxed) % UNPRICED_RECENT;
        self.next.store(i + 1, Relaxed);
        self.recent[i].0.store(hash, Relaxed);
        self.recent[i].1.store(now_ms, Relaxed);
        let mut end = model.len().min(UNPRICED_MODEL_BYTES_MAX);
        while !model.is_char_boundary(end) {
            end -= 1;
        }
        let _ = self.tx.try_send(model[..end].into());
    }

    /// Takes what is queued (the sampler only).
    pub fn drain(&self, out: &mut Vec<Box<str>>) {
        out.extend(self.rx.try_iter());
    }
}

/// A padded pair of single-writer counters, one per worker.
#[derive(Debug, Default)]
#[repr(align(128))]
struct OutcomeSlot {
    responses: Counter,
    errors: Counter,
}

/// Upstream outcomes of one provider, per worker: responses (every request
/// forwarded to it that got a response or failed) and errors (a 5xx from
/// the upstream, or a connect failure, a close or a timeout answered 502 or
/// 504). Each worker writes only its own slot (relaxed load and store, on
/// its own cache line); the operational sampler sums them. The catalog
/// keeps one per provider, carried over a republish by name.
#[derive(Debug)]
pub struct ProviderOutcomes {
    slots: Box<[OutcomeSlot]>,
}

impl ProviderOutcomes {
    pub fn new(workers: usize) -> ProviderOutcomes {
        ProviderOutcomes {
            slots: (0..workers.max(1))
                .map(|_| OutcomeSlot::default())
                .collect(),
        }
    }

    /// Slots (the worker count it was made for).
    pub fn workers(&self) -> usize {
        self.slots.len()
    }

    /// Worker `worker` got a response with `status` (a failure's status, 502
    /// or 504, when none came).
    #[inline]
    pub fn record(&self, worker: usize, status: u16) {
        if let Some(s) = self.slots.get(worker) {
            s.responses.inc();
            if status >= 500 {
                s.errors.inc();
            }
        }
    }

    /// (responses, errors) summed over the workers.
    pub fn totals(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(r, e), s| {
            (
                r.wrapping_add(s.responses.get()),
                e.wrapping_add(s.errors.get()),
            )
        })
    }
}

/// Writes unlabelled series: `(name, "counter" | "gauge", help, value)`.
fn write_series(out: &mut String, series: &[(&str, &str, &str, u64)]) {
    for (name, kind, help, v) in series {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
}

/// A fresh overhead histogram: nanoseconds, 1 ns to `OVERHEAD_NS_MAX`, 3 digits.
pub fn overhead_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, crate::limits::OVERHEAD_NS_MAX, 3)
        .expect("valid histogram bounds")
}

/// Everything /metrics shows.
pub struct Registry {
    pub workers: Vec<Arc<WorkerStats>>,
    /// Counts the tokenizer thread estimated.
    pub tokenizer: Arc<TokenCounters>,
    pub started: Instant,
    pub catalog_version: Box<dyn Fn() -> u64 + Send + Sync>,
    /// The ledger thread's counters.
    pub books: Arc<crate::books::thread::BooksStats>,
    /// The request log's counters (`None`: the log is off).
    pub log: Option<crate::reqlog::LogSender>,
    /// The alerts' counters: delivery, and the ledger's emission.
    pub alerts: Option<(
        Arc<crate::alerts::delivery::AlertStats>,
        Arc<crate::alerts::ledger_side::EmitStats>,
    )>,
    /// Cluster mode's counters: the cluster thread's and the ledger's side.
    pub cluster: Option<(
        Arc<crate::cluster::node::ClusterStats>,
        Arc<crate::books::node_lease::NodeLeaseStats>,
    )>,
}

impl Registry {
    /// The driver the workers run ("mixed" if they differ).
    pub fn driver(&self) -> &'static str {
        let mut kinds = self.workers.iter().map(|w| w.driver());
        let first = kinds.next().unwrap_or(DriverKind::Unknown);
        if kinds.all(|k| k == first) {
            first.name()
        } else {
            "mixed"
        }
    }

    /// The workers' overhead histograms merged.
    pub fn overhead(&self) -> Histogram<u64> {
        let mut merged = overhead_histogram();
        for w in &self.workers {
            if let Some(h) = w.overhead.load_full() {
                let _ = merged.add(&*h);
            }
        }
        merged
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        {
            use std::sync::atomic::Ordering::Relaxed;
            let b = &self.books;
            let series: [(&str, &str, &str, u64); 13] = [
                ("bursar_ledger_commands_total", "counter", "Commands the ledger thread applied (leases, returns, resets, top-ups, budget changes).", b.commands.load(Relaxed)),
                ("bursar_ledger_ring_settles_total", "counter", "Settles the ledger thread read from the workers' rings.", b.ring_settles.load(Relaxed)),
                ("bursar_ledger_ring_duplicates_total", "counter", "Ring settles already in the books (replays after a crash).", b.ring_duplicates.load(Relaxed)),
                ("bursar_ledger_ring_rejected_total", "counter", "Ring settles the ledger refused: charges NOT recorded (a bug; logged).", b.ring_rejected.load(Relaxed)),
                ("bursar_ledger_events_dropped_total", "counter", "Ledger broadcasts a worker's full channel missed (it resyncs).", b.events_dropped.load(Relaxed)),
                ("bursar_ledger_checkpoints_total", "counter", "Snapshots written.", b.checkpoints.load(Relaxed)),
                ("bursar_ledger_dozes_total", "counter", "Times the idle ledger thread parked until its next tick (a settle or command wakes it).", b.dozes.load(Relaxed)),
                ("bursar_budget_overruns_total", "counter", "Strict charges beyond what the worker's lease covered (an output the provider did not cap, or a replay after a crash).", b.overruns.load(Relaxed)),
                ("bursar_budget_soft_limits_reached_total", "counter", "Budgets whose spend crossed their soft limit in a period.", b.soft_limits_reached.load(Relaxed)),
                ("bursar_ledger_journal_writable", "gauge", "1 while the ledger can write its journal; 0 while it cannot (disk full, I/O error): new requests are refused with 503 until it can.", u64::from(!b.journal_down.load(Relaxed))),
                ("bursar_ledger_journal_write_failures_total", "counter", "Journal writes that failed (a full disk, an I/O error); each retry counts.", b.journal_write_failures.load(Relaxed)),
                ("bursar_ledger_snapshot_write_failures_total", "counter", "Snapshot writes that failed (a full disk, an I/O error); requests go on, the next checkpoint tries again.", b.snapshot_write_failures.load(Relaxed)),
                ("bursar_ledger_journal_recoveries_total", "counter", "Times the journal became writable again after failing.", b.journal_recoveries.load(Relaxed)),
            ];
            write_series(&mut out, &series);
        }
        if let Some((c, n)) = &self.cluster {
            use std::sync::atomic::Ordering::Relaxed;
            let series: [(&str, &str, &str, u64); 21] = [
                ("bursar_cluster_draws_total", "counter", "Node lease draws sent to Redis (one round trip each).", c.draws.load(Relaxed)),
                ("bursar_cluster_draws_refused_total", "counter", "Draws the cluster refused: nothing left in the budget.", c.draws_refused.load(Relaxed)),
                ("bursar_cluster_draws_quarantined_total", "counter", "Draws refused while a budget's hash was repaired after a loss.", c.draws_quarantined.load(Relaxed)),
                ("bursar_cluster_pushes_total", "counter", "Contribution pushes sent to Redis (one round trip each).", c.pushes.load(Relaxed)),
                ("bursar_cluster_errors_total", "counter", "Redis calls that failed (unreachable, timed out, a script error).", c.errors.load(Relaxed)),
                ("bursar_cluster_granted_picodollars_total", "counter", "Node leases granted to this node.", c.granted_picodollars.load(Relaxed)),
                ("bursar_cluster_losses_total", "counter", "Budget hashes found gone back in time (Redis restarted empty or from an old snapshot, or flushed).", c.losses.load(Relaxed)),
                ("bursar_cluster_drift_picodollars_total", "counter", "What those hashes had lost of this node's acknowledged spend (repaired from its journal).", c.drift_picodollars.load(Relaxed)),
                ("bursar_cluster_connected", "gauge", "1 when the last Redis call succeeded.", u64::from(c.connected.load(Relaxed))),
                ("bursar_cluster_fail_open_grants_total", "counter", "fail_mode = \"open\": node leases this node granted itself while Redis was unreachable.", c.fail_open_grants.load(Relaxed)),
                ("bursar_cluster_fail_open_granted_picodollars_total", "counter", "... their sum.", c.fail_open_picodollars.load(Relaxed)),
                ("bursar_cluster_over_limit_found_total", "counter", "Declarations that found the nodes past a budget's limit (after failing open, or a lowered limit).", c.over_limit_found.load(Relaxed)),
                ("bursar_cluster_over_limit_max_picodollars", "gauge", "The most a declaration found the nodes past a budget's limit by.", c.over_limit_max_picodollars.load(Relaxed)),
                ("bursar_cluster_releases_total", "counter", "Node leases given back to the cluster after a refusal (each too small for this node's requests; with other nodes' they serve).", c.releases.load(Relaxed)),
                ("bursar_cluster_released_picodollars_total", "counter", "... their sum.", c.released_picodollars.load(Relaxed)),
                ("bursar_cluster_alerts_claimed_total", "counter", "Budget alerts and reports this node claimed for the cluster (and so sends).", c.alerts_claimed.load(Relaxed)),
                ("bursar_cluster_alerts_taken_over_total", "counter", "Alerts this node sent for a node that claimed them and did not get them into its outbox in time (it died).", c.alerts_taken_over.load(Relaxed)),
                ("bursar_cluster_wants_total", "counter", "Node lease draws the ledger asked for.", n.wants.load(Relaxed)),
                ("bursar_cluster_lease_waits_total", "counter", "Worker lease requests that waited for a node lease.", n.waits.load(Relaxed)),
                ("bursar_cluster_lease_waits_timed_out_total", "counter", "... answered from the node's cap as it was, Redis silent (fail closed).", n.waits_timed_out.load(Relaxed)),
                ("bursar_cluster_queue_full_total", "counter", "Messages to the cluster thread its full queue did not take.", n.sends_dropped.load(Relaxed)),
            ];
            write_series(&mut out, &series);
        }
        if let Some((d, e)) = &self.alerts {
            use std::sync::atomic::Ordering::Relaxed;
            let series: [(&str, &str, &str, u64); 8] = [
                ("bursar_alerts_emitted_total", "counter", "Alerts the ledger emitted into the outbox.", e.emitted.load(Relaxed)),
                ("bursar_alerts_dropped_total", "counter", "Alerts LOST because the outbox could not be written for too long (a restart re-emits what still holds).", e.dropped.load(Relaxed)),
                ("bursar_alerts_outbox_write_errors_total", "counter", "Failed outbox writes.", e.outbox_errors.load(Relaxed)),
                ("bursar_alerts_sent_total", "counter", "Alert deliveries a channel accepted.", d.sent.get()),
                ("bursar_alerts_failed_total", "counter", "Alert delivery attempts that failed (retried or dead-lettered).", d.failed.get()),
                ("bursar_alerts_dead_lettered_total", "counter", "Alert deliveries given up (permanent failure or retries exhausted).", d.dead_lettered.get()),
                ("bursar_alert_attempts_total", "counter", "Alert delivery attempts.", d.attempts.get()),
                ("bursar_alerts_outbox_depth", "gauge", "Alert deliveries pending.", u64::try_from(d.outbox_depth.get()).unwrap_or(0)),
            ];
            write_series(&mut out, &series);
        }
        if let Some(log) = &self.log {
            let l = log.stats();
            let series: [(&str, &str, &str, u64); 11] = [
                (
                    "bursar_log_rows_written_total",
                    "counter",
                    "Request log rows stored.",
                    l.rows_written,
                ),
                (
                    "bursar_log_rows_spilled_total",
                    "counter",
                    "Rows written to the spill directory while the store was slow or down.",
                    l.rows_spilled,
                ),
                (
                    "bursar_log_rows_replayed_total",
                    "counter",
                    "Spilled rows later stored.",
                    l.rows_replayed,
                ),
                (
                    "bursar_log_rows_dropped_total",
                    "counter",
                    "Rows LOST (queue full, or spill full or unwritable).",
                    l.rows_dropped,
                ),
                (
                    "bursar_log_rows_rejected_total",
                    "counter",
                    "Rows the store refused, kept in rejected.jsonl.",
                    l.rows_rejected,
                ),
                (
                    "bursar_log_write_errors_total",
                    "counter",
                    "Failed store calls.",
                    l.write_errors,
                ),
                (
                    "bursar_log_queue_depth",
                    "gauge",
                    "Rows waiting for the log writer.",
                    l.queue_depth,
                ),
                (
                    "bursar_log_spill_bytes",
                    "gauge",
                    "Bytes in spill files.",
                    l.spill_bytes,
                ),
                (
                    "bursar_log_sink_down",
                    "gauge",
                    "1 while the store is marked down.",
                    u64::from(l.sink_down),
                ),
                (
                    "bursar_log_writer_idle",
                    "gauge",
                    "1 while the log writer is in the idle scheduling class (workers preempt it at once).",
                    u64::from(l.writer_idle),
                ),
                (
                    "bursar_log_writer_boosts_total",
                    "counter",
                    "Times the log writer, behind, left the idle class to catch up at normal priority.",
                    l.writer_boosts,
                ),
            ];
            write_series(&mut out, &series);
        }
        let h = self.overhead();
        let _ = writeln!(
            out,
            "# HELP bursar_overhead_seconds Internal overhead per forwarded request: request read to upstream write, plus upstream response to client write (new-connection time excluded).\n# TYPE bursar_overhead_seconds summary"
        );
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            let v = if q >= 1.0 {
                h.max()
            } else {
                h.value_at_quantile(q)
            };
            let _ = writeln!(
                out,
                "bursar_overhead_seconds{{quantile=\"{q}\"}} {:.9}",
                v as f64 / 1e9
            );
        }
        let _ = writeln!(
            out,
            "bursar_overhead_seconds_sum {:.9}\nbursar_overhead_seconds_count {}",
            h.mean() * h.len() as f64 / 1e9,
            h.len()
        );
        let _ = writeln!(
            out,
            "# HELP bursar_build_info Build and runtime facts.\n# TYPE bursar_build_info gauge\nbursar_build_info{{version=\"{}\",io_driver=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            self.driver()
        );
        let _ = writeln!(
            out,
            "# HELP bursar_io_driver The I/O driver each worker runs (1 = running).\n# TYPE bursar_io_driver gauge"
        );
        for (i, w) in self.workers.iter().enumerate() {
            let _ = writeln!(
                out,
                "bursar_io_driver{{worker=\"{i}\",driver=\"{}\"}} 1",
                w.driver().name()
            );
        }
        let _ = writeln!(
            out,
            "# HELP bursar_uptime_seconds Seconds since start.\n# TYPE bursar_uptime_seconds gauge\nbursar_uptime_seconds {}",
            self.started.elapsed().as_secs()
        );
        let _ = writeln!(
            out,
            "# HELP bursar_catalog_version Version of the published catalog.\n# TYPE bursar_catalog_version gauge\nbursar_catalog_version {}",
            (self.catalog_version)()
        );
        type Get = fn(&WorkerStats) -> i64;
        let series: [(&str, &str, &str, Get); 37] = [
            (
                "bursar_worker_loop_lag_max_microseconds",
                "gauge",
                "The latest the worker's 500 ms housekeeping timer fired, the worst so far: how long its event loop ran without yielding.",
                |w| w.loop_lag_max_us.get(),
            ),
            (
                "bursar_worker_stalls_total",
                "counter",
                "Times the worker's event loop ran past WORKER_STALL (100 ms) without yielding.",
                |w| w.stalls.get() as i64,
            ),
            (
                "bursar_connections_accepted_total",
                "counter",
                "Client connections accepted.",
                |w| w.connections_accepted.get() as i64,
            ),
            (
                "bursar_accept_paused_total",
                "counter",
                "Times the worker stopped accepting at connections_per_worker_max; new connections waited in the listen backlog until one closed.",
                |w| w.accept_paused.get() as i64,
            ),
            (
                "bursar_connections_active",
                "gauge",
                "Open client connections on the worker.",
                |w| w.connections_active.get(),
            ),
            (
                "bursar_requests_inflight",
                "gauge",
                "Requests being handled.",
                |w| w.requests_inflight.get(),
            ),
            (
                "bursar_bad_requests_total",
                "counter",
                "Requests refused while parsing.",
                |w| w.bad_requests.get() as i64,
            ),
            (
                "bursar_upstream_connects_total",
                "counter",
                "New upstream connections.",
                |w| w.upstream_connects.get() as i64,
            ),
            (
                "bursar_upstream_reuses_total",
                "counter",
                "Requests sent on a pooled upstream connection.",
                |w| w.upstream_reuses.get() as i64,
            ),
            (
                "bursar_upstream_stale_retries_total",
                "counter",
                "Requests retried because a pooled connection had gone stale.",
                |w| w.upstream_stale_retries.get() as i64,
            ),
            (
                "bursar_upstream_closed_not_retried_total",
                "counter",
                "Requests answered 502, not sent again and not charged: a pooled connection closed without a response after the stale-retry window (the upstream may have had the request).",
                |w| w.upstream_closed_not_retried.get() as i64,
            ),
            (
                "bursar_budget_refused_total",
                "counter",
                "Requests refused 402 because a budget was exhausted.",
                |w| w.budget_refused.get() as i64,
            ),
            (
                "bursar_budget_degraded_total",
                "counter",
                "Requests whose output cap was lowered to fit a strict budget.",
                |w| w.budget_degraded.get() as i64,
            ),
            (
                "bursar_cache_hits_total",
                "counter",
                "Requests answered from the response cache (no upstream call, nothing charged).",
                |w| w.cache_hits.get() as i64,
            ),
            (
                "bursar_cache_misses_total",
                "counter",
                "Cacheable requests not found in the response cache.",
                |w| w.cache_misses.get() as i64,
            ),
            (
                "bursar_cache_stores_total",
                "counter",
                "Answers stored in the response cache.",
                |w| w.cache_stores.get() as i64,
            ),
            (
                "bursar_cache_avoided_picodollars_total",
                "counter",
                "Spend the response cache's hits avoided: what their answers cost when paid for, in picodollars.",
                |w| w.cache_avoided_picodollars.get() as i64,
            ),
            (
                "bursar_cache_entries",
                "gauge",
                "Entries in the worker's response cache shard.",
                |w| w.cache_entries.get(),
            ),
            (
                "bursar_cache_bytes",
                "gauge",
                "Bytes held by the worker's response cache shard.",
                |w| w.cache_bytes.get(),
            ),
            (
                "bursar_cache_semantic_hits_total",
                "counter",
                "Requests answered by the semantic cache (another prompt's answer, confirmed the same question).",
                |w| w.cache_semantic_hits.get() as i64,
            ),
            (
                "bursar_cache_semantic_candidates_total",
                "counter",
                "Stored prompts the semantic cache's static embeddings found similar enough (stage a).",
                |w| w.cache_semantic_candidates.get() as i64,
            ),
            (
                "bursar_cache_semantic_guard_refusals_total",
                "counter",
                "Semantic candidates the guards turned down: a number, name, identifier, negation or order differed (stage b).",
                |w| w.cache_semantic_guard_refusals.get() as i64,
            ),
            (
                "bursar_cache_semantic_confirm_refusals_total",
                "counter",
                "Semantic candidates the confirming model turned down (stage c).",
                |w| w.cache_semantic_confirm_refusals.get() as i64,
            ),
            (
                "bursar_cache_semantic_confirm_missed_total",
                "counter",
                "Confirmations not had in time (queue full or past confirm_timeout): the request was forwarded.",
                |w| w.cache_semantic_confirm_missed.get() as i64,
            ),
            (
                "bursar_cache_semantic_entries",
                "gauge",
                "Prompts in the worker's semantic index.",
                |w| w.cache_semantic_entries.get(),
            ),
            (
                "bursar_cache_semantic_bytes",
                "gauge",
                "Bytes held by the worker's semantic index (vectors, graph, prompts).",
                |w| w.cache_semantic_bytes.get(),
            ),
            (
                "bursar_budget_downgraded_total",
                "counter",
                "Requests sent to the fallback model because the budgets could not afford the model asked for.",
                |w| w.budget_downgraded.get() as i64,
            ),
            (
                "bursar_budget_rerouted_total",
                "counter",
                "Model-group targets passed over because their budgets could not afford the request.",
                |w| w.budget_rerouted.get() as i64,
            ),
            (
                "bursar_upstream_failovers_total",
                "counter",
                "Upstream attempts given up for another target or API key.",
                |w| w.upstream_failovers.get() as i64,
            ),
            (
                "bursar_tags_dropped_total",
                "counter",
                "Tags from request bodies (user, metadata) not logged because the request already had the most tags a row keeps.",
                |w| w.tags_dropped.get() as i64,
            ),
            (
                "bursar_upstream_errors_total",
                "counter",
                "Upstream failures answered 502.",
                |w| w.upstream_errors.get() as i64,
            ),
            (
                "bursar_upstream_timeouts_total",
                "counter",
                "Upstream timeouts answered 504.",
                |w| w.upstream_timeouts.get() as i64,
            ),
            (
                "bursar_streams_completed_total",
                "counter",
                "Streams relayed to the end.",
                |w| w.streams_completed.get() as i64,
            ),
            (
                "bursar_streams_client_aborted_total",
                "counter",
                "Streams the client left before the end.",
                |w| w.streams_client_aborted.get() as i64,
            ),
            (
                "bursar_streams_upstream_aborted_total",
                "counter",
                "Streams the upstream cut before the end.",
                |w| w.streams_upstream_aborted.get() as i64,
            ),
            (
                "bursar_upstream_pool_idle",
                "gauge",
                "Idle pooled upstream connections.",
                |w| w.pool_idle.get(),
            ),
            (
                "bursar_responses_5xx_total",
                "counter",
                "Responses with a 5xx status (see bursar_responses_total).",
                |w| w.responses[5].get() as i64,
            ),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, w) in self.workers.iter().enumerate() {
                let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", get(w));
            }
        }
        type Tok = fn(&TokenCounters) -> u64;
        let token_series: [(&str, &str, Tok); 10] = [
            ("bursar_cost_picodollars_total", "Cost of counted tokens at list prices, in 1e-12 USD (observed spend, not a budget).", |t| t.cost_picodollars.get()),
            ("bursar_unpriced_responses_total", "Responses for models without a price (not costed).", |t| t.unpriced.get()),
            (
                "bursar_tokens_prompt_total",
                "Prompt tokens in responses (provider usage, or estimated).",
                |t| t.prompt.get(),
            ),
            (
                "bursar_tokens_completion_total",
                "Completion tokens in responses, reasoning included.",
                |t| t.completion.get(),
            ),
            (
                "bursar_tokens_cached_total",
                "Prompt tokens read from the provider's cache.",
                |t| t.cached.get(),
            ),
            ("bursar_tokens_reasoning_total", "Reasoning tokens.", |t| {
                t.reasoning.get()
            }),
            (
                "bursar_usage_reported_total",
                "Responses whose usage the provider reported.",
                |t| t.usage_reported.get(),
            ),
            (
                "bursar_usage_estimated_total",
                "Responses counted by the gateway's tokenizer.",
                |t| t.usage_estimated.get(),
            ),
            (
                "bursar_usage_missing_total",
                "Successful non-streamed responses without usage.",
                |t| t.usage_missing.get(),
            ),
            (
                "bursar_usage_chunks_stripped_total",
                "Usage chunks the gateway requested and removed from the client's stream.",
                |t| t.usage_chunks_stripped.get(),
            ),
        ];
        for (name, help, get) in token_series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, w) in self.workers.iter().enumerate() {
                let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", get(&w.tokens));
            }
            let _ = writeln!(
                out,
                "{name}{{worker=\"tokenizer\"}} {}",
                get(&self.tokenizer)
            );
        }
        let _ = writeln!(
            out,
            "# HELP bursar_responses_total Responses by status class.\n# TYPE bursar_responses_total counter"
        );
        for (i, w) in self.workers.iter().enumerate() {
            for class in 1..=5 {
                let _ = writeln!(
                    out,
                    "bursar_responses_total{{worker=\"{i}\",class=\"{class}xx\"}} {}",
                    w.responses[class].get()
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpriced_models_are_queued_once_per_repeat_window_and_bounded() {
        let u = UnpricedModels::default();
        let mut out = Vec::new();
        u.record("x", 1_000);
        u.record("x", 2_000);
        u.record("y", 2_000);
        u.drain(&mut out);
        assert_eq!(out, vec![Box::from("x"), Box::from("y")]);
        // Again once the repeat window passed.
        u.record("x", 1_000 + UNPRICED_MODEL_REPEAT_MS);
        // A long name is cut at a character boundary.
        let long = "é".repeat(UNPRICED_MODEL_BYTES_MAX);
        u.record(&long, 0);
        out.clear();
        u.drain(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(&*out[0], "x");
        assert_eq!(out[1].len(), UNPRICED_MODEL_BYTES_MAX);
        // Full: more names are dropped, not waited for.
        for i in 0..UNPRICED_MODELS_QUEUED_MAX + 10 {
            u.record(&format!("m{i}"), 0);
        }
        out.clear();
        u.drain(&mut out);
        assert_eq!(out.len(), UNPRICED_MODELS_QUEUED_MAX);
    }

    #[test]
    fn renders_per_worker_series_and_the_driver() {
        let a = Arc::new(WorkerStats::default());
        a.set_driver(DriverKind::Legacy);
        a.response(200);
        a.response(502);
        a.tags_dropped.add(6);
        let r = Registry {
            workers: vec![a],
            tokenizer: Arc::default(),
            started: Instant::now(),
            catalog_version: Box::new(|| 3),
            books: Arc::default(),
            log: None,
            alerts: None,
            cluster: None,
        };
        r.books
            .ring_settles
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        let text = r.render();
        assert!(text.contains("bursar_ledger_ring_settles_total 7\n"));
        assert!(text.contains("io_driver=\"legacy\""));
        assert!(text.contains("bursar_responses_total{worker=\"0\",class=\"2xx\"} 1"));
        assert!(text.contains("bursar_responses_5xx_total{worker=\"0\"} 1"));
        assert!(text.contains("bursar_catalog_version 3"));
        assert!(text.contains(
            "# TYPE bursar_tags_dropped_total counter\nbursar_tags_dropped_total{worker=\"0\"} 6\n"
        ));
    }
}
