//! The log-writer thread (`bursar-log`): queue in, batches out to the sink or
//! the spill, replay, retention. The design and the loss rules are in the
//! [module doc](super).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering, Ordering::*};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};

use super::row::LogRow;
use super::sinks;
use super::spill::Spill;
use super::store::{LogStore, StoreError};
use super::{
    LogConfig, LOG_BOOST_ROWS, LOG_DROP_REPORT_INTERVAL, LOG_PACE_ROWS, LOG_QUEUE_MAX,
    LOG_RETENTION_DELETE_CHUNK, LOG_RETENTION_INTERVAL, LOG_RETENTION_PASS_ROWS_MAX,
    LOG_RETRY_BACKOFF_MAX, LOG_RETRY_BACKOFF_MIN, LOG_ROLLUP_POLL_INTERVAL, LOG_SPILL_DIR,
    LOG_TEXT_BYTES_MAX, LOG_WRITE_SLOW,
};

/// Why the writer could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("request log: cannot open the spill directory {path}: {source}")]
    Spill {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store is there but unusable in a way retrying will not fix (e.g.
    /// a newer schema). A store that is merely unreachable is not an error:
    /// the writer starts and spills until it answers.
    #[error("request log: {0}")]
    Store(StoreError),
    #[error("request log: cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

/// The writer's counters, shared by the thread and every sender.
#[derive(Debug, Default)]
struct LogStats {
    rows_written: AtomicU64,
    rows_duplicate: AtomicU64,
    rows_replayed: AtomicU64,
    rows_spilled: AtomicU64,
    rows_dropped: AtomicU64,
    rows_rejected: AtomicU64,
    spill_rows_corrupt: AtomicU64,
    spill_bytes: AtomicU64,
    batches: AtomicU64,
    write_errors: AtomicU64,
    sink_down: AtomicBool,
    writer_idle: AtomicBool,
    writer_boosts: AtomicU64,
    /// The writer thread's id once it is in the idle class, else 0.
    writer_tid: AtomicI32,
}

/// A reading of the writer's counters (all since start, but the gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStatsSnapshot {
    /// Rows newly stored in the sink (live or replayed).
    pub rows_written: u64,
    /// Rows the sink already had (a spill file replayed again after a crash).
    pub rows_duplicate: u64,
    /// Rows read back from the spill and accepted by the sink.
    pub rows_replayed: u64,
    /// Rows appended to the spill.
    pub rows_spilled: u64,
    /// Rows lost: queue full or writer gone at `try_log`, spill full or
    /// unwritable, rejected file full (see the module doc).
    pub rows_dropped: u64,
    /// Rows the sink refused for their content, kept in `rejected.jsonl`.
    pub rows_rejected: u64,
    /// Spill lines skipped as unreadable.
    pub spill_rows_corrupt: u64,
    /// Gauge: bytes in spill files.
    pub spill_bytes: u64,
    /// Sink transactions committed.
    pub batches: u64,
    /// Failed sink calls (writes and retention).
    pub write_errors: u64,
    /// Gauge: rows waiting in the queue.
    pub queue_depth: u64,
    /// Gauge: the sink is marked down (batches go to the spill).
    pub sink_down: bool,
    /// Gauge: the writer is in the idle scheduling class now (it yields its
    /// core to any worker at once; decision 0006).
    pub writer_idle: bool,
    /// Times the writer, behind, left the idle class to catch up.
    pub writer_boosts: u64,
}

impl LogStats {
    fn snapshot(&self, queue_depth: usize) -> LogStatsSnapshot {
        LogStatsSnapshot {
            rows_written: self.rows_written.load(Relaxed),
            rows_duplicate: self.rows_duplicate.load(Relaxed),
            rows_replayed: self.rows_replayed.load(Relaxed),
            rows_spilled: self.rows_spilled.load(Relaxed),
            rows_dropped: self.rows_dropped.load(Relaxed),
            rows_rejected: self.rows_rejected.load(Relaxed),
            spill_rows_corrupt: self.spill_rows_corrupt.load(Relaxed),
            spill_bytes: self.spill_bytes.load(Relaxed),
            batches: self.batches.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
            queue_depth: queue_depth as u64,
            sink_down: self.sink_down.load(Relaxed),
            writer_idle: self.writer_idle.load(Relaxed),
            writer_boosts: self.writer_boosts.load(Relaxed),
        }
    }
}

/// A worker's end of the log queue. Cheap to clone, `Send`; never blocks.
#[derive(Clone)]
pub struct LogSender {
    tx: Sender<LogRow>,
    stats: Arc<LogStats>,
    /// The writer thread, unparked when a full batch is queued.
    writer: std::thread::Thread,
    /// Queue length at which a sender wakes the writer early: one batch.
    wake_at: usize,
}

impl LogSender {
    /// Queues `row` for the writer without blocking. When the queue is full
    /// (or the writer has shut down) the row is dropped and counted in
    /// `rows_dropped`; returns whether it was queued.
    pub fn try_log(&self, row: LogRow) -> bool {
        match self.tx.try_send(row) {
            Ok(()) => {
                // The writer sleeps between flush intervals without waiting on
                // the queue, so a send costs no wake-up (no futex call on the
                // worker, no context switch per row); only a full batch wakes
                // it early.
                let queued = self.tx.len();
                if queued >= self.wake_at {
                    if queued >= LOG_BOOST_ROWS && self.stats.writer_idle.load(Relaxed) {
                        self.stats.boost_writer();
                    }
                    self.writer.unpark();
                }
                true
            }
            Err(_) => {
                self.stats.rows_dropped.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// The writer's counters now.
    pub fn stats(&self) -> LogStatsSnapshot {
        self.stats.snapshot(self.tx.len())
    }
}

/// The owner's handle on the writer thread: stats and shutdown.
pub struct LogHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    tx: Sender<LogRow>,
    stats: Arc<LogStats>,
}

impl LogHandle {
    /// The writer's counters now.
    pub fn stats(&self) -> LogStatsSnapshot {
        self.stats.snapshot(self.tx.len())
    }

    /// Writes every row queued so far (into the sink, or the spill when the
    /// sink is down), then joins the thread. Rows sent after this are
    /// dropped and counted. Dropping the handle does the same.
    pub fn shutdown(mut self) -> LogStatsSnapshot {
        self.stop_and_join();
        self.stats()
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            if t.join().is_err() {
                log::error!("request log: the writer thread panicked");
            }
        }
    }
}

impl Drop for LogHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The request log writer; see [`LogWriter::start`].
pub struct LogWriter;

impl LogWriter {
    /// Opens the spill directory (`<state_dir>/log-spill`) and the store, and
    /// starts the writer thread. An unreachable store is not an error: the
    /// writer spills until it answers. Call it off the workers (it may wait
    /// up to the store's connect timeout).
    pub fn start(cfg: &LogConfig, state_dir: &Path) -> Result<(LogHandle, LogSender), LogError> {
        Self::start_yielding(cfg, state_dir, None)
    }

    /// [`LogWriter::start`], with the writer yielding the disk while `pause`
    /// is set (the gateway passes its journal's `journal_down`: when the
    /// disk is full the books come first, so the log writes nothing, not
    /// even its spill, and counts the rows it drops, until the journal can
    /// write again; otherwise rows logged for the refused requests would
    /// take every byte freed before the journal's next retry).
    pub fn start_yielding(
        cfg: &LogConfig,
        state_dir: &Path,
        pause: Option<Arc<AtomicBool>>,
    ) -> Result<(LogHandle, LogSender), LogError> {
        let spill_dir = state_dir.join(LOG_SPILL_DIR);
        let spill = Spill::open(&spill_dir).map_err(|source| LogError::Spill {
            path: spill_dir.clone(),
            source,
        })?;
        let stats = Arc::new(LogStats::default());
        stats.spill_bytes.store(spill.bytes(), Relaxed);
        let now = Instant::now();
        let mut health = Health::Up;
        let store = match sinks::open(&cfg.sink, state_dir) {
            Ok(s) => Some(s),
            Err(e @ StoreError::Unavailable(_)) => {
                log::warn!(
                    "request log: store unavailable at start, spilling to {} until it answers: {e}",
                    spill_dir.display()
                );
                stats.sink_down.store(true, Relaxed);
                health = Health::Down {
                    retry_at: now + LOG_RETRY_BACKOFF_MIN,
                    backoff: LOG_RETRY_BACKOFF_MIN,
                };
                None
            }
            Err(e) => return Err(LogError::Store(e)),
        };
        let (tx, rx) = bounded(LOG_QUEUE_MAX);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            cfg: cfg.clone(),
            state_dir: state_dir.to_path_buf(),
            rows: rx,
            stop: stop.clone(),
            stats: stats.clone(),
            store,
            health,
            spill,
            replay_retry_at: now,
            next_retention: now,
            next_roll_up: now,
            dropped_reported: 0,
            next_drop_report: now,
            spill_error_logged: false,
            pause,
        };
        let thread = std::thread::Builder::new()
            .name("bursar-log".into())
            .spawn(move || writer.run())
            .map_err(LogError::Thread)?;
        let writer = thread.thread().clone();
        let wake_at = cfg.batch_max.clamp(1, LOG_QUEUE_MAX);
        Ok((
            LogHandle {
                stop,
                thread: Some(thread),
                tx: tx.clone(),
                stats: stats.clone(),
            },
            LogSender {
                tx,
                stats,
                writer,
                wake_at,
            },
        ))
    }
}

#[derive(Debug, Clone, Copy)]
enum Health {
    Up,
    /// Batches go to the spill until `retry_at`, when the sink is tried again.
    Down {
        retry_at: Instant,
        backoff: Duration,
    },
}

/// Why rows did not reach the sink.
enum Failure {
    /// The sink is down or slow: spill the rows, try again later.
    Down,
    /// The sink refused the rows' content: find and set aside the bad ones.
    Data,
}

struct Writer {
    /// While set, write nothing ([`LogWriter::start_yielding`]).
    pause: Option<Arc<AtomicBool>>,
    cfg: LogConfig,
    state_dir: PathBuf,
    rows: Receiver<LogRow>,
    stop: Arc<AtomicBool>,
    stats: Arc<LogStats>,
    store: Option<Box<dyn LogStore>>,
    health: Health,
    spill: Spill,
    /// After a spill read error, replay waits until then.
    replay_retry_at: Instant,
    next_retention: Instant,
    /// When the writer next checks for closed minutes to roll up.
    next_roll_up: Instant,
    dropped_reported: u64,
    next_drop_report: Instant,
    spill_error_logged: bool,
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Cuts `text` to at most [`LOG_TEXT_BYTES_MAX`] bytes on a char boundary.
fn truncate_text(text: &mut Option<String>) {
    if let Some(t) = text {
        if t.len() > LOG_TEXT_BYTES_MAX {
            let mut end = LOG_TEXT_BYTES_MAX;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.truncate(end);
        }
    }
}

/// The writer's scheduling class (decision 0006). Between bursts it sits in
/// the idle class: a worker that wakes on its core preempts it at once. At
/// normal priority, even at nice 10, the kernel lets a running writer finish
/// its slice first, and a 5 ms write burst on a worker's core was the whole
/// of the log's cost at p99 (5,000 requests/s: 1.7–2.7 ms with the log, 0.32
/// ms with an idle-class writer, 0.36 ms with no log). In the idle class it
/// also yields every [`LOG_PACE_ROWS`] rows: a worker that was preempted
/// rather than asleep gets no wake-up to take the core back with, and would
/// wait for the next tick.
///
/// At saturation an idle thread gets almost no CPU, so once
/// [`LOG_BOOST_ROWS`] are queued the writer is moved to the normal class,
/// unpaced, until fewer than a batch are left; no row is lost to it. The
/// sender whose row crosses that mark does the move (one system call, once
/// per crossing): a starved idle writer might not run soon enough to notice.
/// Leaving the idle class takes `CAP_SYS_NICE` or `RLIMIT_NICE` >= 20 (the
/// systemd unit sets `LimitNICE=+0`); without either the writer stays at
/// normal priority and says so at start.
///
/// `writer_idle` is the state: true only while the thread is (or is about to
/// be) idle. Whoever swaps it to false moves the thread to the normal class;
/// only the writer moves it back. Should a sender's move land after the
/// writer has settled again, the thread runs at normal priority with the
/// flag saying idle until the next crossing: slower to yield, never lossy.
impl LogStats {
    /// Enters the idle class if the thread may leave it again; otherwise
    /// warns and stays at normal priority. Called on the writer thread.
    fn writer_start(&self) {
        use crate::sched::{idle_class_is_reversible, set_thread_class, ThreadClass};
        match idle_class_is_reversible().and_then(|()| set_thread_class(ThreadClass::Idle)) {
            Ok(()) => {
                // SAFETY: a plain system call.
                self.writer_tid.store(unsafe { libc::gettid() }, Relaxed);
                self.writer_idle.store(true, Release);
            }
            Err(e) => log::warn!(
                "request log: the writer cannot use the idle scheduling class ({e}); \
                 it runs at normal priority and a write burst can delay a worker \
                 sharing its core by a few milliseconds; grant CAP_SYS_NICE or \
                 RLIMIT_NICE 20 (systemd: LimitNICE=+0) to avoid it"
            ),
        }
    }

    /// Far behind: the writer to the normal class, from any thread.
    fn boost_writer(&self) {
        use crate::sched::{set_thread_class_of, ThreadClass};
        if self.writer_idle.swap(false, AcqRel) {
            let tid = self.writer_tid.load(Relaxed);
            match set_thread_class_of(tid, ThreadClass::Normal) {
                Ok(()) => {
                    self.writer_boosts.fetch_add(1, Relaxed);
                }
                // Refused although the probe passed (a limit lowered under
                // us): the writer stays idle and tries again at its next
                // pause; counted, not logged (this may run on a worker).
                Err(_) => {
                    self.write_errors.fetch_add(1, Relaxed);
                    self.writer_idle.store(true, Release);
                }
            }
        }
    }

    /// The writer is at normal priority because it was boosted.
    fn writer_boosted(&self) -> bool {
        self.writer_tid.load(Relaxed) != 0 && !self.writer_idle.load(Relaxed)
    }

    /// Caught up: the writer back to the idle class. Called on the writer
    /// thread.
    fn settle_writer(&self) {
        use crate::sched::{set_thread_class, ThreadClass};
        if self.writer_tid.load(Relaxed) != 0 && !self.writer_idle.load(Acquire) {
            match set_thread_class(ThreadClass::Idle) {
                Ok(()) => self.writer_idle.store(true, Release),
                Err(e) => {
                    log::warn!("request log: the writer cannot return to the idle class: {e}")
                }
            }
        }
    }
}

impl Writer {
    fn run(mut self) {
        let batch_max = self.cfg.batch_max;
        let mut batch: Vec<LogRow> = Vec::with_capacity(batch_max);
        self.stats.writer_start();
        loop {
            // Every wake-up takes what is queued (a batch at most) and writes
            // it: the writer sleeps a flush interval at a time, so no row
            // waits longer than that, and a sender wakes it early only when
            // a whole batch is waiting.
            let mut disconnected = false;
            while batch.len() < batch_max {
                match self.rows.try_recv() {
                    Ok(row) => self.push(&mut batch, row),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            if disconnected || self.stop.load(Ordering::Acquire) {
                break;
            }
            if !batch.is_empty() {
                self.write(&mut batch);
            }
            self.maintain();
            // After every write, not only before parking: at a steady high
            // rate the writer may not park for a long time. Not while
            // boosted (a checkpoint is milliseconds it cannot pause in); the
            // WAL's hard bound covers a long boost.
            if !self.stats.writer_boosted() {
                self.checkpoint();
            }
            let queued = self.rows.len();
            if queued >= LOG_BOOST_ROWS {
                self.stats.boost_writer();
            }
            if queued >= batch_max {
                // Behind: write on (at normal priority once far behind, until
                // caught up), letting a worker sharing this core run between
                // transactions.
                std::thread::yield_now();
                continue;
            }
            self.stats.settle_writer();
            let now = Instant::now();
            let wake = self.next_wake(now).min(now + self.cfg.flush_interval);
            std::thread::park_timeout(wake.saturating_duration_since(now));
        }
        // Shutdown: write what is queued now (rows sent meanwhile may be
        // taken too, but the drain is bounded so a busy sender cannot hold
        // the shutdown forever), at normal priority.
        self.stats.boost_writer();
        let mut left = self.rows.len();
        loop {
            while batch.len() < batch_max && left > 0 {
                match self.rows.try_recv() {
                    Ok(row) => {
                        left -= 1;
                        self.push(&mut batch, row);
                    }
                    Err(_) => left = 0,
                }
            }
            if batch.is_empty() {
                break;
            }
            self.write(&mut batch);
        }
        self.report_drops(Instant::now(), true);
    }

    fn push(&self, batch: &mut Vec<LogRow>, mut row: LogRow) {
        if self.cfg.store_text {
            truncate_text(&mut row.prompt_text);
            truncate_text(&mut row.completion_text);
        } else {
            row.prompt_text = None;
            row.completion_text = None;
        }
        batch.push(row);
    }

    /// When the loop must next act without a row arriving.
    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = self
            .next_retention
            .min(now + LOG_RETENTION_INTERVAL)
            .min(self.next_roll_up);
        if self.spill.has_pending() {
            let ready = match self.health {
                Health::Up => now,
                Health::Down { retry_at, .. } => retry_at,
            };
            wake = wake.min(ready.max(self.replay_retry_at));
        }
        if self.stats.rows_dropped.load(Relaxed) > self.dropped_reported {
            wake = wake.min(self.next_drop_report);
        }
        wake
    }

    /// The store's checkpoint, between batches (in the idle class when the
    /// writer has it); a failure is counted and logged, and tried again.
    fn checkpoint(&mut self) {
        let now = Instant::now();
        let Some(store) = self.ready_store(now) else {
            return;
        };
        if let Err(e) = store.checkpoint_if_due() {
            self.stats.write_errors.fetch_add(1, Relaxed);
            log::warn!("request log: checkpoint failed: {e}");
        }
    }

    fn maintain(&mut self) {
        let now = Instant::now();
        self.replay_one(now);
        self.roll_up(now);
        self.retention(now);
        self.report_drops(now, false);
    }

    fn sink_due(&self, now: Instant) -> bool {
        match self.health {
            Health::Up => true,
            Health::Down { retry_at, .. } => now >= retry_at,
        }
    }

    /// The store, opened if needed; `None` while the sink is down.
    fn ready_store(&mut self, now: Instant) -> Option<&mut Box<dyn LogStore>> {
        if !self.sink_due(now) {
            return None;
        }
        if self.store.is_none() {
            match sinks::open(&self.cfg.sink, &self.state_dir) {
                Ok(s) => self.store = Some(s),
                Err(e) => {
                    self.stats.write_errors.fetch_add(1, Relaxed);
                    self.mark_down(&e.to_string(), now);
                    return None;
                }
            }
        }
        self.store.as_mut()
    }

    fn mark_down(&mut self, why: &str, now: Instant) {
        let backoff = match self.health {
            Health::Up => {
                log::warn!(
                    "request log: {} sink failing, spilling to {} until it recovers: {why}",
                    self.sink_name(),
                    self.spill.dir().display()
                );
                LOG_RETRY_BACKOFF_MIN
            }
            Health::Down { backoff, .. } => (backoff * 2).min(LOG_RETRY_BACKOFF_MAX),
        };
        self.health = Health::Down {
            retry_at: now + backoff,
            backoff,
        };
        self.stats.sink_down.store(true, Relaxed);
    }

    fn mark_up(&mut self) {
        if let Health::Down { .. } = self.health {
            log::info!("request log: {} sink writes again", self.sink_name());
        }
        self.health = Health::Up;
        self.stats.sink_down.store(false, Relaxed);
    }

    fn sink_name(&self) -> &'static str {
        match self.cfg.sink {
            super::SinkKind::Sqlite => "sqlite",
            super::SinkKind::Postgres { .. } => "postgres",
        }
    }

    /// One sink transaction for `rows`.
    fn insert(&mut self, rows: &[LogRow]) -> Result<(), Failure> {
        // Lent to the pacing closure below while the store is borrowed.
        let queue = self.rows.clone();
        let stats = Arc::clone(&self.stats);
        let now = Instant::now();
        let Some(store) = self.ready_store(now) else {
            return Err(Failure::Down);
        };
        let started = Instant::now();
        // In the idle class the writer yields its core every few rows of a
        // transaction: once it has the core, a worker that was preempted
        // (not asleep) gets no wake-up to take it back with, and would wait
        // for the next tick (4 ms at 250 Hz). Each pause also checks the
        // queue, since a starved idle thread may not reach the end of the
        // transaction soon: far behind, it boosts itself and stops pausing.
        let mut since_pause = 0;
        let mut pace = || {
            since_pause += 1;
            if since_pause < LOG_PACE_ROWS || !stats.writer_idle.load(Relaxed) {
                return;
            }
            since_pause = 0;
            if queue.len() >= LOG_BOOST_ROWS {
                stats.boost_writer();
            } else {
                std::thread::yield_now();
            }
        };
        let result = store.insert_batch(rows, &mut pace);
        let elapsed = started.elapsed();
        match result {
            Ok(new) => {
                self.stats.batches.fetch_add(1, Relaxed);
                self.stats.rows_written.fetch_add(new, Relaxed);
                self.stats
                    .rows_duplicate
                    .fetch_add((rows.len() as u64).saturating_sub(new), Relaxed);
                if elapsed > LOG_WRITE_SLOW {
                    // Written, but the next batches go to the spill for a
                    // while so the queue does not back up behind the sink.
                    let why = format!("a batch of {} rows took {elapsed:?}", rows.len());
                    self.health = Health::Up;
                    self.mark_down(&why, Instant::now());
                } else {
                    self.mark_up();
                }
                Ok(())
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Relaxed);
                if e.is_data() {
                    log::error!(
                        "request log: the {} sink refused a batch of {} rows for its content, \
                         isolating the bad rows: {e}",
                        self.sink_name(),
                        rows.len()
                    );
                    Err(Failure::Data)
                } else {
                    self.store = None;
                    self.mark_down(&e.to_string(), Instant::now());
                    Err(Failure::Down)
                }
            }
        }
    }

    fn paused(&self) -> bool {
        self.pause.as_ref().is_some_and(|p| p.load(Relaxed))
    }

    /// Writes a live batch: to the sink, else to the spill; while the disk
    /// is yielded to the books, nowhere (the rows are counted as dropped).
    fn write(&mut self, batch: &mut Vec<LogRow>) {
        if self.paused() {
            self.stats
                .rows_dropped
                .fetch_add(batch.len() as u64, Relaxed);
            batch.clear();
            return;
        }
        match self.insert(batch) {
            Ok(()) => {}
            Err(Failure::Down) => self.spill_rows(batch),
            Err(Failure::Data) => {
                let rest = self.isolate(batch);
                self.spill_rows(&batch[rest..]);
            }
        }
        batch.clear();
    }

    /// Inserts `rows` one by one after their batch was refused for its
    /// content; a row refused alone goes to the rejected file. Stops when
    /// the sink goes down; returns the index of the first row not handled.
    fn isolate(&mut self, rows: &[LogRow]) -> usize {
        for (i, row) in rows.iter().enumerate() {
            match self.insert(std::slice::from_ref(row)) {
                Ok(()) => {}
                Err(Failure::Data) => {
                    if self.spill.reject(row) {
                        self.stats.rows_rejected.fetch_add(1, Relaxed);
                    } else {
                        self.stats.rows_dropped.fetch_add(1, Relaxed);
                    }
                }
                Err(Failure::Down) => return i,
            }
        }
        rows.len()
    }

    fn spill_rows(&mut self, rows: &[LogRow]) {
        if rows.is_empty() {
            return;
        }
        let done = match self.spill.append(rows) {
            Ok(done) => {
                self.spill_error_logged = false;
                done
            }
            Err((done, e)) => {
                if !self.spill_error_logged {
                    log::error!(
                        "request log: cannot write the spill in {}: {e}",
                        self.spill.dir().display()
                    );
                    self.spill_error_logged = true;
                }
                done
            }
        };
        self.stats.rows_spilled.fetch_add(done.spilled, Relaxed);
        self.stats.rows_dropped.fetch_add(done.dropped, Relaxed);
        self.stats.spill_bytes.store(self.spill.bytes(), Relaxed);
    }

    /// Replays one chunk of the spill when the sink is up.
    fn replay_one(&mut self, now: Instant) {
        if self.paused()
            || !self.spill.has_pending()
            || !self.sink_due(now)
            || now < self.replay_retry_at
        {
            return;
        }
        let chunk = match self.spill.take_chunk(self.cfg.batch_max) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return,
            Err(e) => {
                log::error!(
                    "request log: cannot read the spill in {}: {e}",
                    self.spill.dir().display()
                );
                self.replay_retry_at = now + LOG_RETRY_BACKOFF_MAX;
                return;
            }
        };
        let done = match self.insert(&chunk) {
            Ok(()) => chunk.len(),
            Err(Failure::Down) => 0,
            Err(Failure::Data) => self.isolate(&chunk),
        };
        self.stats.rows_replayed.fetch_add(done as u64, Relaxed);
        if done == chunk.len() {
            if let Err(e) = self.spill.chunk_done() {
                log::error!("request log: cannot delete a replayed spill file: {e}");
                self.replay_retry_at = now + LOG_RETRY_BACKOFF_MAX;
            }
        } else {
            let mut chunk = chunk;
            chunk.drain(..done);
            self.spill.chunk_failed(chunk);
        }
        self.stats
            .spill_rows_corrupt
            .store(self.spill.corrupt_rows(), Relaxed);
        self.stats.spill_bytes.store(self.spill.bytes(), Relaxed);
    }

    /// Sums the minutes closed by now into the rollups, one bounded step
    /// (the next wake comes at once while more remain).
    fn roll_up(&mut self, now: Instant) {
        if now < self.next_roll_up || self.paused() {
            return;
        }
        let Some(store) = self.ready_store(now) else {
            return;
        };
        match store.roll_up(super::rollup_build::closed_to(unix_ms_now())) {
            Ok(more) => {
                self.next_roll_up = if more {
                    now
                } else {
                    now + LOG_ROLLUP_POLL_INTERVAL
                };
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Relaxed);
                log::error!("request log: rollup build failed: {e}");
                if !e.is_data() {
                    self.store = None;
                    self.mark_down(&e.to_string(), now);
                }
                self.next_roll_up = now + LOG_RETENTION_INTERVAL;
            }
        }
    }

    /// Deletes rows past `retention` and `max_rows`, at most
    /// [`LOG_RETENTION_PASS_ROWS_MAX`] per pass.
    fn retention(&mut self, now: Instant) {
        if now < self.next_retention {
            return;
        }
        let (retention, max_rows) = (self.cfg.retention, self.cfg.max_rows);
        let Some(store) = self.ready_store(now) else {
            self.next_retention = now + LOG_RETENTION_INTERVAL;
            return;
        };
        let cutoff_ms = retention.map(|r| {
            unix_ms_now().saturating_sub(i64::try_from(r.as_millis()).unwrap_or(i64::MAX))
        });
        let minute_cutoff_ms = unix_ms_now().saturating_sub(
            i64::try_from(super::LOG_ROLLUP_MINUTE_KEEP.as_millis()).unwrap_or(i64::MAX),
        );
        let result = retention_pass(store.as_mut(), cutoff_ms, max_rows, minute_cutoff_ms);
        match result {
            Ok((deleted, more)) => {
                if deleted > 0 {
                    log::info!("request log: retention deleted {deleted} rows");
                }
                self.next_retention = if more {
                    now
                } else {
                    now + LOG_RETENTION_INTERVAL
                };
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Relaxed);
                log::error!("request log: retention failed: {e}");
                if !e.is_data() {
                    self.store = None;
                    self.mark_down(&e.to_string(), now);
                }
                self.next_retention = now + LOG_RETENTION_INTERVAL;
            }
        }
    }

    fn report_drops(&mut self, now: Instant, force: bool) {
        let dropped = self.stats.rows_dropped.load(Relaxed);
        if dropped > self.dropped_reported && (force || now >= self.next_drop_report) {
            log::warn!(
                "request log: {} rows dropped since the last report, {dropped} in all \
                 (queue full, writer stopped, or spill full or unwritable)",
                dropped - self.dropped_reported
            );
            self.dropped_reported = dropped;
            self.next_drop_report = now + LOG_DROP_REPORT_INTERVAL;
        }
    }
}

/// One retention pass: rows older than `cutoff_ms`, then rows beyond
/// `max_rows`, then minute-tier rollups older than `minute_cutoff_ms` (never
/// the hour or day tiers). Returns the rows deleted and whether more remain.
fn retention_pass(
    store: &mut dyn LogStore,
    cutoff_ms: Option<i64>,
    max_rows: Option<u64>,
    minute_cutoff_ms: i64,
) -> Result<(u64, bool), StoreError> {
    let mut deleted = 0;
    loop {
        let n = store.delete_minute_rollups_before(minute_cutoff_ms, LOG_RETENTION_DELETE_CHUNK)?;
        deleted += n;
        if n < LOG_RETENTION_DELETE_CHUNK {
            break;
        }
        if deleted >= LOG_RETENTION_PASS_ROWS_MAX {
            return Ok((deleted, true));
        }
    }
    if let Some(cutoff) = cutoff_ms {
        loop {
            let n = store.delete_before(cutoff, LOG_RETENTION_DELETE_CHUNK)?;
            deleted += n;
            if n < LOG_RETENTION_DELETE_CHUNK {
                break;
            }
            if deleted >= LOG_RETENTION_PASS_ROWS_MAX {
                return Ok((deleted, true));
            }
        }
    }
    if let Some(keep) = max_rows {
        loop {
            let n = store.delete_beyond(keep, LOG_RETENTION_DELETE_CHUNK)?;
            deleted += n;
            if n < LOG_RETENTION_DELETE_CHUNK {
                break;
            }
            if deleted >= LOG_RETENTION_PASS_ROWS_MAX {
                return Ok((deleted, true));
            }
        }
    }
    Ok((deleted, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_a_char_boundary() {
        let mut t = Some(format!("{}é", "a".repeat(LOG_TEXT_BYTES_MAX - 1)));
        truncate_text(&mut t);
        assert_eq!(t.as_deref().map(str::len), Some(LOG_TEXT_BYTES_MAX - 1));
        let mut short = Some("hi".to_string());
        truncate_text(&mut short);
        assert_eq!(short.as_deref(), Some("hi"));
    }
}
