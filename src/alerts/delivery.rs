//! The delivery thread (`bursar-alerts`): sends what the outbox holds, one
//! delivery at a time, records every attempt, retries with backoff and
//! jitter, dead-letters, rate-limits per channel and keeps the history the
//! admin API shows.
//!
//! - **Source of truth.** The outbox (the ledger thread's, [`super::outbox`])
//!   says which alerts exist; the attempts file (this thread's) says what
//!   became of each delivery (an alert's route to one channel). At start both
//!   are read and every delivery without a final record (`delivered` or
//!   `dead`, not followed by a `replayed`) is pending again: a crash between
//!   a send and its record sends it once more, with the same alert id, so a
//!   receiver can drop the repeat (at least once, never lost, never a storm).
//! - **Order.** Each channel has its own queue, in emission order; its head
//!   is sent when due: after its backoff, at most `rate_limit_per_minute`
//!   sends in any 60 s and at least the channel's cooldown after the last
//!   send. The excess waits in the queue, it is never dropped. Of the heads
//!   that are due, the oldest alert goes first, so a channel in backoff holds
//!   back only its own queue.
//! - **Retries.** A `Retry` waits [`retry_delay`] (full jitter, `Retry-After`
//!   when longer); a delivery whose next try would come later than
//!   [`DeliveryConfig::retry_for`] after the alert was made (or after its
//!   first attempt since a replay) is dead-lettered with that attempt, so a
//!   channel down for longer dead-letters its backlog one attempt each; `Permanent` is dead at once; so is a route to a
//!   channel that is not configured (or is removed by a reload).
//! - **Blocking.** A send blocks this thread for up to its channel's timeout
//!   (10 s); nothing else waits on it: commands are queued
//!   ([`DELIVERY_COMMANDS_MAX`]) and answered through oneshot channels.
//! - **Memory.** The newest [`HISTORY_MAX`] alerts are kept, plus every
//!   alert from the oldest one with a pending delivery on (those must stay
//!   until they finish).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};
use futures_channel::oneshot;
use serde::Serialize;

use super::backoff::{retry_delay, Jitter};
use super::channel::{self, Attempt, ChannelConfig, Outcome};
use super::event::{Alert, AlertData, AlertKind, Route, Severity};
use super::outbox::{AttemptOutcome, AttemptRecord, AttemptsLog, OutboxPos, OutboxReader};

/// Commands (reload, test, replay, history, state) waiting for the thread;
/// past this a caller is refused ([`Refused::Busy`]).
pub const DELIVERY_COMMANDS_MAX: usize = 64;
/// Alerts kept in memory for the history (the newest), besides those with a
/// delivery still pending.
pub const HISTORY_MAX: usize = 10_000;
/// How often the thread looks at the outbox without being notified.
pub const OUTBOX_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Alerts read from the outbox in one turn of the loop (the rest next turn).
pub const OUTBOX_READ_BATCH_MAX: usize = 1024;
/// How long a delivery is retried, from its first attempt, by default.
pub const RETRY_FOR_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// The window of `rate_limit_per_minute`.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// The message of a channel test.
pub const TEST_MESSAGE: &str = "This is a test alert from bursar.";

const _: () = {
    assert!(DELIVERY_COMMANDS_MAX > 0);
    assert!(HISTORY_MAX > 0);
    assert!(OUTBOX_READ_BATCH_MAX > 0);
};

/// The time, in unix ms; injectable so tests need not wait.
pub use crate::clock::{Clock, SystemClock, TestClock};

/// Sends one alert to one channel once, blocking: [`channel::deliver`], or a
/// stand-in in tests.
pub type SendFn = Arc<dyn Fn(&ChannelConfig, &Alert, &Route) -> Attempt + Send + Sync>;

/// How the thread delivers.
#[derive(Clone)]
pub struct DeliveryConfig {
    /// A delivery is retried for this long after its first attempt, then
    /// dead-lettered.
    pub retry_for: Duration,
    /// How often the outbox is read without a notify.
    pub poll_interval: Duration,
    pub sender: SendFn,
    pub clock: Arc<dyn Clock>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            retry_for: RETRY_FOR_DEFAULT,
            poll_interval: OUTBOX_POLL_INTERVAL,
            sender: Arc::new(channel::deliver),
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for DeliveryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryConfig")
            .field("retry_for", &self.retry_for)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

/// A counter with one writer (the delivery thread): relaxed load and store.
/// Its own, not `metrics::Counter`: `metrics` renders these, so it imports
/// this module, never the reverse.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge with one writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The delivery thread's counters (the ledger's side counts what it
/// emitted in `ledger_side::EmitStats`).
#[derive(Debug, Default)]
pub struct AlertStats {
    /// Attempts that delivered.
    pub sent: Counter,
    /// Attempts that did not deliver.
    pub failed: Counter,
    /// Deliveries dead-lettered.
    pub dead_lettered: Counter,
    /// Gauge: deliveries pending.
    pub outbox_depth: Gauge,
    /// Delivery attempts (channel tests aside).
    pub attempts: Counter,
}

/// Why a command did not reach the thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// [`DELIVERY_COMMANDS_MAX`] commands are already waiting.
    #[error("{DELIVERY_COMMANDS_MAX} alert delivery commands are already waiting")]
    Busy,
    /// The delivery thread is not running.
    #[error("the alert delivery thread is not running")]
    Gone,
}

/// What a channel test did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    /// `alrt_test_` and 32 hex digits, fresh for each test.
    pub alert_id: String,
    pub channel: String,
    pub delivered: bool,
    /// "delivered" | "retry" | "permanent".
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// Where one delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
    /// Finished before the attempt records kept begin (they were rolled
    /// away): delivered or dead-lettered long ago.
    Forgotten,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Forgotten => "forgotten",
        }
    }
}

/// One route of a [`HistoryEntry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteHistory {
    pub channel: String,
    pub state: DeliveryStatus,
    /// Attempts made (a replay does not reset it).
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<u64>,
    /// When the last record was written, unix ms.
    pub last_at_ms: Option<i64>,
    /// Pending only: the earliest next attempt, unix ms (backoff, rate limit
    /// and cooldown; a delivery queued behind another on its channel goes
    /// after it).
    pub next_attempt_ms: Option<i64>,
}

/// One alert of the history, with its deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: AlertKind,
    pub timestamp_ms: i64,
    pub summary: String,
    pub data: AlertData,
    pub routes: Vec<RouteHistory>,
}

/// The thread's state now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryState {
    /// Deliveries pending.
    pub pending: u64,
    /// Deliveries dead-lettered, of the alerts in memory.
    pub dead_lettered: u64,
    /// Alerts with at least one delivery pending.
    pub outbox_depth: u64,
    /// Alerts in memory (the history and the pending).
    pub alerts_in_memory: u64,
}

enum Command {
    Channels(Vec<ChannelConfig>),
    Test {
        channel: String,
        reply: oneshot::Sender<Result<TestResult, String>>,
    },
    Replay {
        id: String,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    History {
        limit: usize,
        reply: oneshot::Sender<Vec<HistoryEntry>>,
    },
    State {
        reply: oneshot::Sender<DeliveryState>,
    },
}

/// A handle on the delivery thread. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct DeliveryHandle {
    commands: Sender<Command>,
    thread: std::thread::Thread,
    stop: Arc<AtomicBool>,
    join: Arc<Mutex<Option<JoinHandle<()>>>>,
    stats: Arc<AlertStats>,
}

impl std::fmt::Debug for DeliveryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryHandle").finish_non_exhaustive()
    }
}

impl DeliveryHandle {
    fn send(&self, cmd: Command) -> Result<(), Refused> {
        match self.commands.try_send(cmd) {
            Ok(()) => {
                self.thread.unpark();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(Refused::Busy),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Gone),
        }
    }

    /// Wakes the thread to read the outbox now (call after an append).
    pub fn notify(&self) {
        self.thread.unpark();
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<AlertStats> {
        &self.stats
    }

    /// Replaces the channels (a reload). Pending deliveries to a channel that
    /// is gone are dead-lettered.
    pub fn set_channels(&self, channels: Vec<ChannelConfig>) -> Result<(), Refused> {
        self.send(Command::Channels(channels))
    }

    /// Sends a test alert (`alert.test`, a fresh `alrt_test_…` id) to one
    /// channel at once, once, not through the outbox; the reply is the
    /// attempt, or an error when there is no such channel.
    pub fn test(
        &self,
        channel: &str,
    ) -> Result<oneshot::Receiver<Result<TestResult, String>>, Refused> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Test {
            channel: channel.to_string(),
            reply,
        })?;
        Ok(rx)
    }

    /// Queues every route of alert `id` again (same id); the reply is how
    /// many deliveries were queued (routes already pending stay as they are;
    /// routes to channels not configured are not queued), or an error for an
    /// unknown id.
    pub fn replay(&self, id: &str) -> Result<oneshot::Receiver<Result<usize, String>>, Refused> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Replay {
            id: id.to_string(),
            reply,
        })?;
        Ok(rx)
    }

    /// The newest `limit` alerts (at most [`HISTORY_MAX`]), newest first.
    pub fn history(&self, limit: usize) -> Result<oneshot::Receiver<Vec<HistoryEntry>>, Refused> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::History { limit, reply })?;
        Ok(rx)
    }

    /// Pending and dead-letter counts, outbox depth.
    pub fn state(&self) -> Result<oneshot::Receiver<DeliveryState>, Refused> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::State { reply })?;
        Ok(rx)
    }

    /// Stops the thread after the delivery it is making, and joins it.
    /// Pending deliveries stay in the files for the next start. Commands
    /// still queued are dropped (their receivers see `Canceled`); later ones
    /// are [`Refused::Gone`]. The thread also ends once every handle is
    /// dropped.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.thread.unpark();
        let join = self.join.lock().ok().and_then(|mut j| j.take());
        if let Some(j) = join {
            if j.join().is_err() {
                log::error!("alerts: the delivery thread panicked");
            }
        }
    }
}

/// The delivery thread; see [`Delivery::start`].
pub struct Delivery;

impl Delivery {
    /// Reads the outbox and attempts files in `dir` (`state_dir/alerts`),
    /// rebuilds the pending deliveries and starts the `bursar-alerts` thread.
    pub fn start(
        dir: &Path,
        channels: Vec<ChannelConfig>,
        config: DeliveryConfig,
        stats: Arc<AlertStats>,
    ) -> io::Result<DeliveryHandle> {
        let engine = Engine::open(dir, channels, config, stats.clone())?;
        let (tx, rx) = bounded(DELIVERY_COMMANDS_MAX);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = stop.clone();
        let join = std::thread::Builder::new()
            .name("bursar-alerts".into())
            .spawn(move || engine.run(rx, stop_thread))?;
        Ok(DeliveryHandle {
            commands: tx,
            thread: join.thread().clone(),
            stop,
            join: Arc::new(Mutex::new(Some(join))),
            stats,
        })
    }
}

/// One delivery: an alert's route to one channel.
#[derive(Debug, Clone)]
struct Slot {
    route: Route,
    status: DeliveryStatus,
    attempts: u32,
    /// The first attempt since the start or the last replay: the retry time
    /// counts from it.
    first_at_ms: Option<i64>,
    /// Not before then (backoff).
    next_at_ms: i64,
    /// The records that tell this state, carried into a new attempts file:
    /// the last replay, the first attempt after it, the last record.
    replayed: Option<AttemptRecord>,
    first: Option<AttemptRecord>,
    last: Option<AttemptRecord>,
}

impl Slot {
    fn new(route: Route, status: DeliveryStatus) -> Slot {
        Slot {
            route,
            status,
            attempts: 0,
            first_at_ms: None,
            next_at_ms: 0,
            replayed: None,
            first: None,
            last: None,
        }
    }

    /// Applies a record read back or just written.
    fn apply(&mut self, rec: &AttemptRecord) {
        self.attempts = self.attempts.max(rec.attempt);
        match rec.outcome {
            AttemptOutcome::Replayed => {
                self.status = DeliveryStatus::Pending;
                self.first_at_ms = None;
                self.next_at_ms = 0;
                self.replayed = Some(rec.clone());
                self.first = None;
            }
            outcome => {
                if self.first.is_none() {
                    self.first = Some(rec.clone());
                    self.first_at_ms = Some(rec.at_ms);
                }
                self.status = match outcome {
                    AttemptOutcome::Delivered => DeliveryStatus::Delivered,
                    AttemptOutcome::Dead => DeliveryStatus::Dead,
                    _ => DeliveryStatus::Pending,
                };
            }
        }
        self.last = Some(rec.clone());
    }

    fn carry(&self, out: &mut Vec<AttemptRecord>) {
        let mut seen: Vec<&AttemptRecord> = Vec::with_capacity(3);
        for r in [&self.replayed, &self.first, &self.last]
            .into_iter()
            .flatten()
        {
            if !seen.contains(&r) {
                seen.push(r);
                out.push(r.clone());
            }
        }
    }
}

struct Entry {
    pos: OutboxPos,
    alert: Alert,
    slots: Vec<Slot>,
    /// Slots pending.
    pending: usize,
}

struct ChannelState {
    config: ChannelConfig,
    cooldown_ms: i64,
    /// Pending deliveries in emission order: (entry seq, slot index).
    queue: VecDeque<(u64, usize)>,
    /// The last sends' times, at most `rate_limit_per_minute` of them.
    window: VecDeque<i64>,
    last_sent_ms: Option<i64>,
}

impl ChannelState {
    fn new(config: ChannelConfig) -> ChannelState {
        let cooldown_ms = i64::try_from(config.cooldown.as_millis()).unwrap_or(i64::MAX);
        ChannelState {
            config,
            cooldown_ms,
            queue: VecDeque::new(),
            window: VecDeque::new(),
            last_sent_ms: None,
        }
    }

    /// The earliest time the rate limit and the cooldown allow a send.
    fn gate_ms(&self) -> i64 {
        let mut at = i64::MIN;
        if let Some(last) = self.last_sent_ms {
            at = at.max(last + self.cooldown_ms);
        }
        let limit = self.config.rate_limit_per_minute as usize;
        if limit > 0 && self.window.len() >= limit {
            at = at.max(self.window[self.window.len() - limit] + RATE_WINDOW.as_millis() as i64);
        }
        at
    }

    fn sent(&mut self, now: i64) {
        self.last_sent_ms = Some(now);
        let limit = self.config.rate_limit_per_minute as usize;
        if limit > 0 {
            self.window.push_back(now);
            while self.window.len() > limit {
                self.window.pop_front();
            }
        }
    }
}

/// What the loop does next.
enum Next {
    /// Send the head of this channel's queue now.
    Send(usize),
    /// Nothing is due before then (`i64::MAX`: nothing pending).
    Wait(i64),
}

/// The thread's state: the deliveries and the files. Driven by
/// [`Engine::run`], or step by step in tests.
struct Engine {
    dir: PathBuf,
    cfg: DeliveryConfig,
    stats: Arc<AlertStats>,
    channels: Vec<ChannelState>,
    entries: BTreeMap<u64, Entry>,
    by_id: HashMap<String, u64>,
    next_seq: u64,
    reader: OutboxReader,
    log: AttemptsLog,
    jitter: Jitter,
    pending: u64,
    dead: u64,
    /// The newest outbox position of an alert dropped from memory: a roll's
    /// cursor stays past it, since the records of what is not in memory
    /// cannot be carried.
    evicted_up_to: Option<OutboxPos>,
    /// The attempts file's cursor (see [`AttemptsLog::roll`]); it only moves
    /// forward, so an alert once known finished before it stays so.
    cursor: Option<OutboxPos>,
}

fn not_configured(channel: &str) -> String {
    format!("channel {channel} is not configured")
}

impl Engine {
    fn open(
        dir: &Path,
        channels: Vec<ChannelConfig>,
        cfg: DeliveryConfig,
        stats: Arc<AlertStats>,
    ) -> io::Result<Engine> {
        let (log, loaded) = AttemptsLog::open(dir)?;
        let mut engine = Engine {
            dir: dir.to_path_buf(),
            channels: Vec::new(),
            cfg,
            stats,
            entries: BTreeMap::new(),
            by_id: HashMap::new(),
            next_seq: 0,
            reader: OutboxReader::new(dir, OutboxPos::default()),
            log,
            jitter: Jitter::new(dir.as_os_str().as_encoded_bytes()),
            pending: 0,
            dead: 0,
            evicted_up_to: None,
            cursor: loaded.cursor,
        };
        engine.channels = channels.into_iter().map(ChannelState::new).collect();
        // What the attempt records say of each delivery.
        let mut folds: HashMap<(String, String), Slot> = HashMap::new();
        let placeholder = Route {
            channel: String::new(),
            rule: String::new(),
            dedup_key: String::new(),
        };
        for rec in &loaded.records {
            folds
                .entry((rec.alert.clone(), rec.channel.clone()))
                .or_insert_with(|| Slot::new(placeholder.clone(), DeliveryStatus::Pending))
                .apply(rec);
        }
        let now = engine.cfg.clock.now_ms();
        let mut dead_now = Vec::new();
        // The whole outbox, a batch at a time, keeping in memory only the
        // history and what is pending.
        loop {
            let batch = engine.reader.read_new(OUTBOX_READ_BATCH_MAX)?;
            if batch.is_empty() {
                break;
            }
            for (pos, alert) in batch {
                if engine.by_id.contains_key(&alert.id) {
                    continue;
                }
                let before_cursor = loaded.cursor.is_some_and(|c| pos < c);
                let slots = unique_routes(&alert)
                    .into_iter()
                    .map(
                        |route| match folds.remove(&(alert.id.clone(), route.channel.clone())) {
                            Some(mut s) => {
                                s.route = route;
                                if s.status == DeliveryStatus::Pending {
                                    if let Some(last) = s
                                        .last
                                        .as_ref()
                                        .filter(|l| l.outcome == AttemptOutcome::Retry)
                                    {
                                        let delay =
                                            retry_delay(last.attempt, None, &mut engine.jitter);
                                        s.next_at_ms = last.at_ms + delay.as_millis() as i64;
                                    }
                                }
                                s
                            }
                            None if before_cursor => Slot::new(route, DeliveryStatus::Forgotten),
                            None => Slot::new(route, DeliveryStatus::Pending),
                        },
                    )
                    .collect();
                engine.insert(pos, alert, slots, now, &mut dead_now);
            }
            engine.evict();
        }
        engine.write(&dead_now);
        engine.evict();
        engine.publish();
        Ok(engine)
    }

    /// Adds an alert with its slots' states; queues the pending ones,
    /// dead-letters those to channels not configured (records into `dead`).
    fn insert(
        &mut self,
        pos: OutboxPos,
        alert: Alert,
        slots: Vec<Slot>,
        now: i64,
        dead: &mut Vec<AttemptRecord>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_id.insert(alert.id.clone(), seq);
        let mut entry = Entry {
            pos,
            alert,
            slots,
            pending: 0,
        };
        for (i, slot) in entry.slots.iter_mut().enumerate() {
            match slot.status {
                DeliveryStatus::Pending => {
                    match self
                        .channels
                        .iter_mut()
                        .find(|c| c.config.name == slot.route.channel)
                    {
                        Some(ch) => {
                            ch.queue.push_back((seq, i));
                            entry.pending += 1;
                            self.pending += 1;
                        }
                        None => {
                            let rec = dead_letter(&entry.alert.id, slot, now);
                            self.stats.dead_lettered.inc();
                            self.dead += 1;
                            dead.push(rec);
                        }
                    }
                }
                DeliveryStatus::Dead => self.dead += 1,
                _ => {}
            }
        }
        self.entries.insert(seq, entry);
        seq
    }

    /// Reads alerts appended to the outbox since the last look.
    fn poll_outbox(&mut self) {
        let batch = match self.reader.read_new(OUTBOX_READ_BATCH_MAX) {
            Ok(b) => b,
            Err(e) => {
                log::error!("alerts: cannot read the outbox: {e}");
                return;
            }
        };
        if batch.is_empty() {
            return;
        }
        let now = self.cfg.clock.now_ms();
        let mut dead = Vec::new();
        for (pos, alert) in batch {
            if self.by_id.contains_key(&alert.id) {
                continue;
            }
            let slots = unique_routes(&alert)
                .into_iter()
                .map(|r| Slot::new(r, DeliveryStatus::Pending))
                .collect();
            self.insert(pos, alert, slots, now, &mut dead);
        }
        self.write(&dead);
        self.evict();
        self.publish();
    }

    /// Appends records to the attempts file; rolls it when past its bound. A
    /// write error is logged: the state in memory goes on, and after a
    /// restart the delivery is only sent again (at least once).
    fn write(&mut self, recs: &[AttemptRecord]) {
        if recs.is_empty() {
            return;
        }
        if let Err(e) = self.log.append(recs) {
            log::error!("alerts: cannot write the attempts file: {e}");
        }
        if self.log.needs_roll() {
            self.roll_attempts();
        }
    }

    /// Rolls the attempts file. The cursor is the oldest pending alert's
    /// position (the end of the outbox when none is), but past every alert
    /// dropped from memory and never behind the last cursor; the records of every alert from the cursor on,
    /// and of every pending one, are carried into the new file. So after a
    /// restart an alert before the cursor without records is finished, and
    /// every other one reads back as it was.
    fn roll_attempts(&mut self) {
        let mut cursor = self
            .entries
            .values()
            .filter(|e| e.pending > 0)
            .map(|e| e.pos)
            .min()
            .unwrap_or_else(|| self.reader.position());
        if let Some(evicted) = self.evicted_up_to {
            let past = OutboxPos {
                segment: evicted.segment,
                offset: evicted.offset + 1,
            };
            cursor = cursor.max(past);
        }
        cursor = cursor.max(self.cursor.unwrap_or_default());
        let mut carry = Vec::new();
        for e in self
            .entries
            .values()
            .filter(|e| e.pos >= cursor || e.pending > 0)
        {
            for s in &e.slots {
                s.carry(&mut carry);
            }
        }
        match self.log.roll(cursor, &carry) {
            Ok(()) => self.cursor = Some(cursor),
            Err(e) => log::error!("alerts: cannot roll the attempts file: {e}"),
        }
    }

    /// Drops the oldest alerts past [`HISTORY_MAX`], but none from the
    /// oldest pending one on.
    fn evict(&mut self) {
        if self.entries.len() <= HISTORY_MAX {
            return;
        }
        let oldest_pending = self
            .entries
            .values()
            .filter(|e| e.pending > 0)
            .map(|e| e.pos)
            .min();
        while self.entries.len() > HISTORY_MAX {
            let Some(entry) = self.entries.first_entry() else {
                break;
            };
            let e = entry.get();
            if e.pending > 0 || oldest_pending.is_some_and(|p| e.pos >= p) {
                break;
            }
            let e = entry.remove();
            self.dead -= e
                .slots
                .iter()
                .filter(|s| s.status == DeliveryStatus::Dead)
                .count() as u64;
            self.by_id.remove(&e.alert.id);
            self.evicted_up_to = self.evicted_up_to.max(Some(e.pos));
        }
    }

    fn publish(&self) {
        self.stats.outbox_depth.set(self.pending as i64);
    }

    /// The head to send now, or when the next one is due.
    fn next(&self, now: i64) -> Next {
        let mut best: Option<(u64, usize)> = None;
        let mut wait = i64::MAX;
        for (ci, ch) in self.channels.iter().enumerate() {
            let Some(&(seq, si)) = ch.queue.front() else {
                continue;
            };
            let Some(entry) = self.entries.get(&seq) else {
                continue;
            };
            let due = entry.slots[si].next_at_ms.max(ch.gate_ms());
            if due <= now {
                if best.is_none_or(|(s, _)| seq < s) {
                    best = Some((seq, ci));
                }
            } else {
                wait = wait.min(due);
            }
        }
        match best {
            Some((_, ci)) => Next::Send(ci),
            None => Next::Wait(wait),
        }
    }

    /// Sends the head of channel `ci`'s queue once and records the attempt.
    fn send(&mut self, ci: usize, now: i64) {
        let Some(&(seq, si)) = self.channels[ci].queue.front() else {
            return;
        };
        let Some(entry) = self.entries.get(&seq) else {
            self.channels[ci].queue.pop_front();
            return;
        };
        let sender = self.cfg.sender.clone();
        let attempt = sender(
            &self.channels[ci].config,
            &entry.alert,
            &entry.slots[si].route,
        );
        self.channels[ci].sent(now);
        self.stats.attempts.inc();
        let retry_for_ms = self.cfg.retry_for.as_millis() as i64;
        let Some(entry) = self.entries.get_mut(&seq) else {
            return;
        };
        let slot = &mut entry.slots[si];
        let n = slot.attempts + 1;
        // The retry window opens when the alert was made (a delivery that
        // waited behind others on a channel that is down has used it up,
        // so a long outage dead-letters the backlog one attempt each, not
        // one `retry_for` each), or at the first attempt after a replay.
        let first_at = slot.first_at_ms.unwrap_or(now);
        let first_at = if slot.replayed.is_some() {
            first_at
        } else {
            first_at.min(entry.alert.timestamp_ms)
        };
        let mut next_at = 0;
        let outcome = match attempt.outcome {
            Outcome::Delivered => {
                self.stats.sent.inc();
                AttemptOutcome::Delivered
            }
            Outcome::Permanent => {
                self.stats.failed.inc();
                AttemptOutcome::Dead
            }
            Outcome::Retry { after } => {
                self.stats.failed.inc();
                let delay = retry_delay(n, after, &mut self.jitter);
                next_at = now + delay.as_millis() as i64;
                if next_at > first_at + retry_for_ms {
                    AttemptOutcome::Dead
                } else {
                    AttemptOutcome::Retry
                }
            }
        };
        let rec = AttemptRecord {
            alert: entry.alert.id.clone(),
            channel: slot.route.channel.clone(),
            attempt: n,
            at_ms: now,
            status: attempt.status,
            latency_ms: attempt.latency_ms,
            error: attempt.error,
            outcome,
        };
        slot.apply(&rec);
        slot.next_at_ms = next_at;
        if outcome.is_final() {
            entry.pending -= 1;
            self.pending -= 1;
            self.channels[ci].queue.pop_front();
            if outcome == AttemptOutcome::Dead {
                self.dead += 1;
                self.stats.dead_lettered.inc();
                log::warn!(
                    "alerts: alert {} to channel {} dead-lettered after {n} attempts: {}",
                    rec.alert,
                    rec.channel,
                    rec.error.as_deref().unwrap_or("no error given")
                );
            }
        }
        self.write(&[rec]);
        self.publish();
    }

    /// Sends every delivery due now (tests; the thread interleaves commands).
    #[cfg(test)]
    fn run_due(&mut self) -> i64 {
        loop {
            let now = self.cfg.clock.now_ms();
            match self.next(now) {
                Next::Send(ci) => self.send(ci, now),
                Next::Wait(at) => return at,
            }
        }
    }

    fn set_channels(&mut self, channels: Vec<ChannelConfig>) {
        let now = self.cfg.clock.now_ms();
        let mut old: HashMap<String, ChannelState> = self
            .channels
            .drain(..)
            .map(|c| (c.config.name.clone(), c))
            .collect();
        for config in channels {
            let mut state = old
                .remove(&config.name)
                .unwrap_or_else(|| ChannelState::new(config.clone()));
            state.cooldown_ms = i64::try_from(config.cooldown.as_millis()).unwrap_or(i64::MAX);
            state.config = config;
            self.channels.push(state);
        }
        let mut dead = Vec::new();
        for (_, ch) in old {
            for (seq, si) in ch.queue {
                let Some(entry) = self.entries.get_mut(&seq) else {
                    continue;
                };
                let rec = dead_letter(&entry.alert.id, &mut entry.slots[si], now);
                entry.pending -= 1;
                self.pending -= 1;
                self.dead += 1;
                self.stats.dead_lettered.inc();
                dead.push(rec);
            }
        }
        self.write(&dead);
        self.publish();
    }

    fn test(&mut self, channel: &str) -> Result<TestResult, String> {
        let ch = self
            .channels
            .iter()
            .find(|c| c.config.name == channel)
            .ok_or_else(|| not_configured(channel))?;
        let id = format!(
            "alrt_test_{:016x}{:016x}",
            self.jitter.next_u64(),
            self.jitter.next_u64()
        );
        let alert = Alert {
            id: id.clone(),
            kind: AlertKind::Test,
            timestamp_ms: self.cfg.clock.now_ms(),
            severity: Severity::Info,
            summary: format!("Test alert to channel {channel}"),
            data: AlertData::Test {
                message: TEST_MESSAGE.to_string(),
            },
            routes: vec![Route {
                channel: channel.to_string(),
                rule: "test".into(),
                dedup_key: id.clone(),
            }],
            key: None,
        };
        let attempt = (self.cfg.sender)(&ch.config, &alert, &alert.routes[0]);
        Ok(TestResult {
            alert_id: id,
            channel: channel.to_string(),
            delivered: attempt.outcome == Outcome::Delivered,
            outcome: match attempt.outcome {
                Outcome::Delivered => "delivered",
                Outcome::Retry { .. } => "retry",
                Outcome::Permanent => "permanent",
            },
            status: attempt.status,
            latency_ms: attempt.latency_ms,
            error: attempt.error,
        })
    }

    fn replay(&mut self, id: &str) -> Result<usize, String> {
        let now = self.cfg.clock.now_ms();
        let seq = match self.by_id.get(id) {
            Some(&seq) => seq,
            None => {
                // Past the history: look in the outbox.
                let found = find_in_outbox(&self.dir, id)
                    .map_err(|e| format!("cannot read the outbox: {e}"))?;
                let Some((pos, alert)) = found else {
                    return Err(format!("no alert {id}"));
                };
                let slots = unique_routes(&alert)
                    .into_iter()
                    .map(|r| Slot::new(r, DeliveryStatus::Forgotten))
                    .collect();
                let mut none = Vec::new();
                self.insert(pos, alert, slots, now, &mut none)
            }
        };
        let Some(entry) = self.entries.get_mut(&seq) else {
            return Err(format!("no alert {id}"));
        };
        let mut recs = Vec::new();
        for (si, slot) in entry.slots.iter_mut().enumerate() {
            if slot.status == DeliveryStatus::Pending {
                continue;
            }
            let Some(ch) = self
                .channels
                .iter_mut()
                .find(|c| c.config.name == slot.route.channel)
            else {
                continue;
            };
            if slot.status == DeliveryStatus::Dead {
                self.dead -= 1;
            }
            let rec = AttemptRecord {
                alert: entry.alert.id.clone(),
                channel: slot.route.channel.clone(),
                attempt: slot.attempts,
                at_ms: now,
                status: None,
                latency_ms: 0,
                error: None,
                outcome: AttemptOutcome::Replayed,
            };
            slot.apply(&rec);
            ch.queue.push_back((seq, si));
            entry.pending += 1;
            self.pending += 1;
            recs.push(rec);
        }
        let queued = recs.len();
        self.write(&recs);
        self.evict();
        self.publish();
        Ok(queued)
    }

    fn history(&self, limit: usize) -> Vec<HistoryEntry> {
        let now = self.cfg.clock.now_ms();
        self.entries
            .values()
            .rev()
            .take(limit.min(HISTORY_MAX))
            .map(|e| HistoryEntry {
                id: e.alert.id.clone(),
                kind: e.alert.kind,
                timestamp_ms: e.alert.timestamp_ms,
                summary: e.alert.summary.clone(),
                data: e.alert.data.clone(),
                routes: e
                    .slots
                    .iter()
                    .map(|s| {
                        let next_attempt_ms = (s.status == DeliveryStatus::Pending).then(|| {
                            let gate = self
                                .channels
                                .iter()
                                .find(|c| c.config.name == s.route.channel)
                                .map_or(i64::MIN, ChannelState::gate_ms);
                            s.next_at_ms.max(gate).max(now)
                        });
                        RouteHistory {
                            channel: s.route.channel.clone(),
                            state: s.status,
                            attempts: s.attempts,
                            last_status: s.last.as_ref().and_then(|l| l.status),
                            last_error: s.last.as_ref().and_then(|l| l.error.clone()),
                            last_latency_ms: s.last.as_ref().map(|l| l.latency_ms),
                            last_at_ms: s.last.as_ref().map(|l| l.at_ms),
                            next_attempt_ms,
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    fn state(&self) -> DeliveryState {
        DeliveryState {
            pending: self.pending,
            dead_lettered: self.dead,
            outbox_depth: self.entries.values().filter(|e| e.pending > 0).count() as u64,
            alerts_in_memory: self.entries.len() as u64,
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Channels(c) => self.set_channels(c),
            Command::Test { channel, reply } => {
                let _ = reply.send(self.test(&channel));
            }
            Command::Replay { id, reply } => {
                let _ = reply.send(self.replay(&id));
            }
            Command::History { limit, reply } => {
                let _ = reply.send(self.history(limit));
            }
            Command::State { reply } => {
                let _ = reply.send(self.state());
            }
        }
    }

    /// The thread's loop: commands, new alerts, one due delivery, repeat;
    /// sleeps until the next due delivery, a notify, a command or the poll.
    fn run(mut self, commands: Receiver<Command>, stop: Arc<AtomicBool>) {
        let poll_ms = self.cfg.poll_interval.as_millis().max(1) as i64;
        while !stop.load(Ordering::Acquire) {
            loop {
                match commands.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(TryRecvError::Empty) => break,
                    // Every handle is gone: nobody can notify or stop us.
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            self.poll_outbox();
            let now = self.cfg.clock.now_ms();
            match self.next(now) {
                Next::Send(ci) => {
                    self.send(ci, now);
                    self.evict();
                }
                Next::Wait(at) => {
                    let wait_ms = at.saturating_sub(now).clamp(1, poll_ms);
                    std::thread::park_timeout(Duration::from_millis(wait_ms as u64));
                }
            }
        }
        // Commands still queued are dropped with the receiver: their callers
        // see the oneshot canceled, later ones `Refused::Gone`.
    }
}

/// Records a delivery dead without a send (its channel is not configured).
fn dead_letter(alert: &str, slot: &mut Slot, now: i64) -> AttemptRecord {
    let rec = AttemptRecord {
        alert: alert.to_string(),
        channel: slot.route.channel.clone(),
        attempt: slot.attempts,
        at_ms: now,
        status: None,
        latency_ms: 0,
        error: Some(not_configured(&slot.route.channel)),
        outcome: AttemptOutcome::Dead,
    };
    slot.apply(&rec);
    rec
}

/// The alert's routes, the first per channel.
fn unique_routes(alert: &Alert) -> Vec<Route> {
    let mut seen = HashSet::new();
    alert
        .routes
        .iter()
        .filter(|r| seen.insert(r.channel.as_str()))
        .cloned()
        .collect()
}

fn find_in_outbox(dir: &Path, id: &str) -> io::Result<Option<(OutboxPos, Alert)>> {
    let mut reader = OutboxReader::new(dir, OutboxPos::default());
    loop {
        let batch = reader.read_new(OUTBOX_READ_BATCH_MAX)?;
        if batch.is_empty() {
            return Ok(None);
        }
        if let Some(found) = batch.into_iter().find(|(_, a)| a.id == id) {
            return Ok(Some(found));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::backoff::{backoff_ceiling, RETRY_DELAY_MIN};
    use crate::alerts::channel::ChannelKind;
    use crate::alerts::outbox::tests::tempdir;

    /// The outbox tests' alert, made at the delivery tests' clock start.
    fn alert(i: u32, channels: &[&str]) -> Alert {
        let mut a = crate::alerts::outbox::tests::alert(i, channels);
        a.timestamp_ms = T0;
        a
    }
    use crate::alerts::outbox::{OutboxWriter, ATTEMPTS_FILE, ATTEMPTS_PREVIOUS_FILE, OUTBOX_FILE};
    use std::io::Write as _;
    use std::time::Instant;

    const T0: i64 = 1_800_000_000_000;

    /// A webhook channel; `rate_limit_per_minute` 0: as good as unlimited.
    fn channel(name: &str, rate_limit_per_minute: u32) -> ChannelConfig {
        let mut c = crate::alerts::channel::ChannelSection {
            name: name.into(),
            kind: ChannelKind::Webhook,
            url: Some("http://127.0.0.1:9/hook".into()),
            allow_private: true,
            ..Default::default()
        }
        .validate()
        .unwrap();
        c.rate_limit_per_minute = rate_limit_per_minute;
        c
    }

    /// A receiver for the retry logic's unit tests: per channel, outcomes to
    /// give in turn, then `always` (default: delivered); every call seen.
    #[derive(Default)]
    struct Fake {
        script: Mutex<HashMap<String, VecDeque<Outcome>>>,
        always: Mutex<HashMap<String, Outcome>>,
        /// (channel, alert id, clock ms)
        calls: Mutex<Vec<(String, String, i64)>>,
    }

    impl Fake {
        fn script(&self, channel: &str, outcomes: Vec<Outcome>) {
            self.script
                .lock()
                .unwrap()
                .insert(channel.into(), outcomes.into());
        }
        fn always(&self, channel: &str, outcome: Outcome) {
            self.always.lock().unwrap().insert(channel.into(), outcome);
        }
        fn calls(&self) -> Vec<(String, String, i64)> {
            self.calls.lock().unwrap().clone()
        }
    }

    fn config(fake: &Arc<Fake>, clock: &Arc<TestClock>) -> DeliveryConfig {
        let f = fake.clone();
        let c = clock.clone();
        DeliveryConfig {
            sender: Arc::new(move |ch: &ChannelConfig, a: &Alert, _r: &Route| {
                f.calls
                    .lock()
                    .unwrap()
                    .push((ch.name.clone(), a.id.clone(), c.now_ms()));
                let scripted = f
                    .script
                    .lock()
                    .unwrap()
                    .get_mut(&ch.name)
                    .and_then(|q| q.pop_front());
                let outcome = scripted
                    .or_else(|| f.always.lock().unwrap().get(&ch.name).cloned())
                    .unwrap_or(Outcome::Delivered);
                Attempt {
                    status: Some(match outcome {
                        Outcome::Delivered => 200,
                        Outcome::Retry { .. } => 503,
                        Outcome::Permanent => 400,
                    }),
                    latency_ms: 5,
                    error: (outcome != Outcome::Delivered).then(|| "receiver said no".into()),
                    outcome,
                }
            }),
            clock: clock.clone(),
            ..Default::default()
        }
    }

    fn retry() -> Outcome {
        Outcome::Retry { after: None }
    }

    fn records(dir: &Path) -> Vec<AttemptRecord> {
        let mut out = Vec::new();
        for name in [ATTEMPTS_PREVIOUS_FILE, ATTEMPTS_FILE] {
            let Ok(text) = std::fs::read_to_string(dir.join(name)) else {
                continue;
            };
            out.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
        }
        out
    }

    struct Setup {
        dir: PathBuf,
        fake: Arc<Fake>,
        clock: Arc<TestClock>,
        stats: Arc<AlertStats>,
        outbox: OutboxWriter,
    }

    fn setup(name: &str) -> Setup {
        let dir = tempdir(name);
        let (outbox, _) = OutboxWriter::open(&dir).unwrap();
        Setup {
            dir,
            fake: Arc::default(),
            clock: Arc::new(TestClock::new(T0)),
            stats: Arc::default(),
            outbox,
        }
    }

    impl Setup {
        fn engine(&self, channels: Vec<ChannelConfig>) -> Engine {
            self.engine_with(channels, config(&self.fake, &self.clock))
        }
        fn engine_with(&self, channels: Vec<ChannelConfig>, cfg: DeliveryConfig) -> Engine {
            Engine::open(&self.dir, channels, cfg, self.stats.clone()).unwrap()
        }
        /// Sends what is due, moving the clock to each next due time, until
        /// nothing is pending or the next is after `until_ms`.
        fn drive(&self, engine: &mut Engine, until_ms: i64) {
            loop {
                let next = engine.run_due();
                if next == i64::MAX || next > until_ms {
                    return;
                }
                self.clock.set(next);
            }
        }
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_receiver_failing_n_times_then_succeeding_gets_n_plus_one_attempts_with_one_id() {
        const N: usize = 8;
        let mut s = setup("n-plus-one");
        s.fake.script("a", vec![retry(); N]);
        let mut engine = s.engine(vec![channel("a", 0)]);
        let a = alert(1, &["a"]);
        s.outbox.append(std::slice::from_ref(&a)).unwrap();
        engine.poll_outbox();
        s.drive(&mut engine, i64::MAX);
        let calls = s.fake.calls();
        assert_eq!(calls.len(), N + 1);
        assert!(calls.iter().all(|(c, id, _)| c == "a" && *id == a.id));
        let mut gaps = Vec::new();
        for (k, w) in calls.windows(2).enumerate() {
            let gap = Duration::from_millis((w[1].2 - w[0].2) as u64);
            let ceiling = backoff_ceiling(k as u32 + 1);
            assert!(
                gap >= RETRY_DELAY_MIN && gap <= ceiling,
                "gap {k}: {gap:?} not within {RETRY_DELAY_MIN:?}..={ceiling:?}"
            );
            gaps.push(gap);
        }
        // Jittered: not every wait is its ceiling.
        assert!(gaps
            .iter()
            .enumerate()
            .any(|(k, g)| *g != backoff_ceiling(k as u32 + 1)));
        let recs = records(&s.dir);
        assert_eq!(recs.len(), N + 1);
        assert_eq!(
            recs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
            (1..=N as u32 + 1).collect::<Vec<_>>()
        );
        assert!(recs[..N].iter().all(|r| r.outcome == AttemptOutcome::Retry
            && r.status == Some(503)
            && r.error.is_some()));
        assert_eq!(recs[N].outcome, AttemptOutcome::Delivered);
        assert_eq!(s.stats.attempts.get(), N as u64 + 1);
        assert_eq!(s.stats.failed.get(), N as u64);
        assert_eq!(s.stats.sent.get(), 1);
        assert_eq!(s.stats.outbox_depth.get(), 0);
        let h = engine.history(10);
        assert_eq!(h[0].routes[0].state, DeliveryStatus::Delivered);
        assert_eq!(h[0].routes[0].attempts, N as u32 + 1);
    }

    #[test]
    fn a_longer_retry_after_is_obeyed() {
        let mut s = setup("retry-after");
        s.fake.script(
            "a",
            vec![Outcome::Retry {
                after: Some(Duration::from_secs(90)),
            }],
        );
        let mut engine = s.engine(vec![channel("a", 0)]);
        s.outbox.append(&[alert(1, &["a"])]).unwrap();
        engine.poll_outbox();
        s.drive(&mut engine, i64::MAX);
        let calls = s.fake.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].2 - calls[0].2, 90_000);
    }

    #[test]
    fn retry_for_used_up_dead_letters() {
        let mut s = setup("retry-for");
        s.fake.always("a", retry());
        let mut cfg = config(&s.fake, &s.clock);
        cfg.retry_for = Duration::from_secs(120);
        let mut engine = s.engine_with(vec![channel("a", 0)], cfg);
        s.outbox.append(&[alert(1, &["a"])]).unwrap();
        engine.poll_outbox();
        s.drive(&mut engine, i64::MAX);
        let recs = records(&s.dir);
        assert!(recs.len() > 3, "retried a while: {}", recs.len());
        let (last, earlier) = recs.split_last().unwrap();
        assert!(earlier.iter().all(|r| r.outcome == AttemptOutcome::Retry));
        assert_eq!(last.outcome, AttemptOutcome::Dead);
        assert!(last.at_ms - recs[0].at_ms <= 120_000);
        assert_eq!(s.stats.dead_lettered.get(), 1);
        assert_eq!(engine.state().pending, 0);
        assert_eq!(engine.state().dead_lettered, 1);
        assert_eq!(s.fake.calls().len(), recs.len());
    }

    /// A channel down longer than `retry_for`: the alerts queued behind the
    /// first were made at the same time, so they share its window (they used
    /// to get a window each from their first attempt: a backlog of N took N
    /// windows to dead-letter, and later alerts waited behind it).
    #[test]
    fn a_backlog_behind_a_dead_head_shares_its_retry_window() {
        let mut s = setup("backlog");
        s.fake.always("a", retry());
        let mut cfg = config(&s.fake, &s.clock);
        cfg.retry_for = Duration::from_secs(120);
        let mut engine = s.engine_with(vec![channel("a", 0)], cfg);
        s.outbox
            .append(&(1..=3).map(|i| alert(i, &["a"])).collect::<Vec<_>>())
            .unwrap();
        engine.poll_outbox();
        s.drive(&mut engine, i64::MAX);
        let recs = records(&s.dir);
        let of = |i: u32| {
            let id = alert(i, &[]).id;
            recs.iter().filter(|r| r.alert == id).count()
        };
        assert!(of(1) > 3, "the head retried its window: {}", of(1));
        assert!(of(2) >= 1 && of(3) >= 1);
        assert_eq!(s.stats.dead_lettered.get(), 3);
        assert!(
            recs.iter().all(|r| r.at_ms <= T0 + 120_000),
            "all within one window of the alerts' making: {:?}",
            recs.iter().map(|r| r.at_ms - T0).collect::<Vec<_>>()
        );
    }

    #[test]
    fn permanent_dead_letters_at_once() {
        let mut s = setup("permanent");
        s.fake.always("a", Outcome::Permanent);
        let mut engine = s.engine(vec![channel("a", 0)]);
        s.outbox.append(&[alert(1, &["a"])]).unwrap();
        engine.poll_outbox();
        s.drive(&mut engine, i64::MAX);
        assert_eq!(s.fake.calls().len(), 1);
        let recs = records(&s.dir);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].outcome, AttemptOutcome::Dead);
        assert_eq!(recs[0].status, Some(400));
        let h = engine.history(1);
        assert_eq!(h[0].routes[0].state, DeliveryStatus::Dead);
        assert_eq!(
            h[0].routes[0].last_error.as_deref(),
            Some("receiver said no")
        );
    }

    #[test]
    fn the_rate_limit_holds_the_excess_and_delivers_it_later_in_order() {
        let mut s = setup("rate");
        let mut engine = s.engine(vec![channel("a", 2)]);
        let alerts: Vec<Alert> = (1..=5).map(|i| alert(i, &["a"])).collect();
        s.outbox.append(&alerts).unwrap();
        engine.poll_outbox();
        let next = engine.run_due();
        assert_eq!(s.fake.calls().len(), 2);
        assert_eq!(next, T0 + 60_000);
        assert_eq!(engine.state().pending, 3);
        assert_eq!(s.stats.outbox_depth.get(), 3);
        let h = engine.history(5);
        assert_eq!(h[0].routes[0].next_attempt_ms, Some(T0 + 60_000));
        s.drive(&mut engine, i64::MAX);
        let calls = s.fake.calls();
        let times: Vec<i64> = calls.iter().map(|c| c.2 - T0).collect();
        assert_eq!(times, vec![0, 0, 60_000, 60_000, 120_000]);
        let ids: Vec<&String> = calls.iter().map(|c| &c.1).collect();
        let want: Vec<&String> = alerts.iter().map(|a| &a.id).collect();
        assert_eq!(ids, want);
        assert_eq!(engine.state().pending, 0);
    }

    #[test]
    fn the_cooldown_spaces_sends_to_a_channel() {
        let mut s = setup("cooldown");
        let cfg = config(&s.fake, &s.clock);
        let mut a = channel("a", 0);
        a.cooldown = Duration::from_secs(10);
        let mut engine = s.engine_with(vec![a, channel("b", 0)], cfg);
        s.outbox
            .append(&(1..=3).map(|i| alert(i, &["a", "b"])).collect::<Vec<_>>())
            .unwrap();
        engine.poll_outbox();
        s.drive(&mut engine, i64::MAX);
        let at = |ch: &str| -> Vec<i64> {
            s.fake
                .calls()
                .iter()
                .filter(|c| c.0 == ch)
                .map(|c| c.2 - T0)
                .collect()
        };
        assert_eq!(at("a"), vec![0, 10_000, 20_000]);
        assert_eq!(at("b"), vec![0, 0, 0]);
    }

    #[test]
    fn a_channel_that_is_down_does_not_delay_the_others() {
        let mut s = setup("isolation");
        s.fake.always("a", retry());
        let mut engine = s.engine(vec![channel("a", 0), channel("b", 0)]);
        s.outbox
            .append(&(1..=3).map(|i| alert(i, &["a", "b"])).collect::<Vec<_>>())
            .unwrap();
        engine.poll_outbox();
        engine.run_due();
        let calls = s.fake.calls();
        let a: Vec<_> = calls.iter().filter(|c| c.0 == "a").collect();
        let b: Vec<_> = calls.iter().filter(|c| c.0 == "b").collect();
        assert_eq!(a.len(), 1, "a is in backoff after its first failure");
        assert_eq!(b.len(), 3, "b delivered everything at once");
        let state = engine.state();
        assert_eq!((state.pending, state.outbox_depth), (3, 3));
        let h = engine.history(10);
        let oldest = h.last().unwrap();
        assert_eq!(oldest.routes[0].state, DeliveryStatus::Pending);
        assert_eq!(oldest.routes[0].last_status, Some(503));
        assert!(oldest.routes[0].next_attempt_ms.unwrap() > T0);
        assert_eq!(oldest.routes[1].state, DeliveryStatus::Delivered);
    }

    #[test]
    fn replay_queues_every_route_again_with_the_same_id() {
        let mut s = setup("replay");
        s.fake.script("b", vec![Outcome::Permanent]);
        let mut engine = s.engine(vec![channel("a", 0), channel("b", 0)]);
        let a = alert(1, &["a", "b"]);
        s.outbox.append(std::slice::from_ref(&a)).unwrap();
        engine.poll_outbox();
        s.drive(&mut engine, i64::MAX);
        assert_eq!(engine.state().dead_lettered, 1);
        assert_eq!(engine.replay(&a.id), Ok(2));
        assert_eq!(engine.state().pending, 2);
        assert_eq!(engine.state().dead_lettered, 0);
        assert_eq!(engine.replay(&a.id), Ok(0), "already queued");
        s.drive(&mut engine, i64::MAX);
        let calls = s.fake.calls();
        assert_eq!(calls.len(), 4);
        assert!(calls.iter().all(|c| c.1 == a.id));
        let recs: Vec<_> = records(&s.dir)
            .into_iter()
            .filter(|r| r.channel == "b")
            .map(|r| (r.attempt, r.outcome))
            .collect();
        assert_eq!(
            recs,
            vec![
                (1, AttemptOutcome::Dead),
                (1, AttemptOutcome::Replayed),
                (2, AttemptOutcome::Delivered)
            ]
        );
        let err = engine.replay("alrt_nope").unwrap_err();
        assert!(err.starts_with("no alert"), "{err}");
    }

    #[test]
    fn routes_to_channels_not_configured_or_removed_are_dead_lettered() {
        let mut s = setup("gone");
        s.fake.always("a", retry());
        let mut engine = s.engine(vec![channel("a", 0)]);
        s.outbox
            .append(&[alert(1, &["a"]), alert(2, &["nowhere"])])
            .unwrap();
        engine.poll_outbox();
        engine.run_due();
        assert_eq!(engine.state().pending, 1);
        assert_eq!(engine.state().dead_lettered, 1);
        engine.set_channels(vec![channel("b", 0)]);
        assert_eq!(engine.state().pending, 0);
        assert_eq!(engine.state().dead_lettered, 2);
        let recs = records(&s.dir);
        let dead: Vec<_> = recs
            .iter()
            .filter(|r| r.outcome == AttemptOutcome::Dead)
            .map(|r| r.error.clone().unwrap())
            .collect();
        assert_eq!(
            dead,
            vec![
                "channel nowhere is not configured".to_string(),
                "channel a is not configured".to_string()
            ]
        );
        assert_eq!(s.stats.dead_lettered.get(), 2);
    }

    #[test]
    fn the_history_is_newest_first_and_bounded() {
        let mut s = setup("history");
        let alerts: Vec<Alert> = (0..HISTORY_MAX as u32 + 5).map(|i| alert(i, &[])).collect();
        s.outbox.append(&alerts).unwrap();
        let mut engine = s.engine(vec![]);
        let h = engine.history(usize::MAX);
        assert_eq!(h.len(), HISTORY_MAX);
        assert_eq!(h[0].id, alerts.last().unwrap().id);
        assert_eq!(h[HISTORY_MAX - 1].id, alerts[5].id);
        s.outbox.append(&[alert(1_000_000, &[])]).unwrap();
        engine.poll_outbox();
        let h = engine.history(3);
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].id, alert(1_000_000, &[]).id);
        assert_eq!(engine.state().alerts_in_memory, HISTORY_MAX as u64);
        // Past the history, replay still finds the alert in the outbox (it
        // comes back at the top: the newest acted on).
        assert_eq!(engine.replay(&alerts[0].id), Ok(0));
        assert_eq!(engine.history(1)[0].id, alerts[0].id);
        assert_eq!(engine.state().alerts_in_memory, HISTORY_MAX as u64);
    }

    #[test]
    fn a_roll_after_replaying_an_alert_past_the_history_sends_nothing_twice() {
        let mut s = setup("replay-roll");
        let alerts: Vec<Alert> = (0..HISTORY_MAX as u32 + 5)
            .map(|i| alert(i, &["a"]))
            .collect();
        s.outbox.append(&alerts).unwrap();
        let delivered: Vec<AttemptRecord> = alerts
            .iter()
            .map(|a| AttemptRecord {
                alert: a.id.clone(),
                channel: "a".into(),
                attempt: 1,
                at_ms: T0 - 1,
                status: Some(200),
                latency_ms: 1,
                error: None,
                outcome: AttemptOutcome::Delivered,
            })
            .collect();
        AttemptsLog::open(&s.dir)
            .unwrap()
            .0
            .append(&delivered)
            .unwrap();
        let mut engine = s.engine(vec![channel("a", 0)]);
        assert_eq!(engine.state().pending, 0);
        assert_eq!(engine.replay(&alerts[0].id), Ok(1));
        engine.roll_attempts();
        drop(engine);
        std::fs::remove_file(s.dir.join(ATTEMPTS_PREVIOUS_FILE)).unwrap();
        let mut engine = s.engine(vec![channel("a", 0)]);
        assert_eq!(engine.state().pending, 1, "only the replayed alert");
        s.drive(&mut engine, i64::MAX);
        let calls = s.fake.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].1, alerts[0].id);
    }

    #[test]
    fn the_delivery_reads_past_a_torn_outbox_tail_once_the_writer_cuts_it() {
        let mut s = setup("torn");
        s.outbox.append(&[alert(1, &["a"])]).unwrap();
        let line = serde_json::to_vec(&alert(2, &["a"])).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(s.dir.join(OUTBOX_FILE))
            .unwrap()
            .write_all(&line[..line.len() - 5])
            .unwrap();
        let mut engine = s.engine(vec![channel("a", 0)]);
        assert_eq!(engine.state().pending, 1);
        // The ledger restarts: its writer cuts the torn line and goes on.
        let (mut outbox, all) = OutboxWriter::open(&s.dir).unwrap();
        assert_eq!(all.len(), 1);
        outbox.append(&[alert(3, &["a"])]).unwrap();
        engine.poll_outbox();
        assert_eq!(engine.state().pending, 2);
        assert_eq!(engine.reader.corrupt_lines(), 0);
        s.outbox = outbox;
        s.drive(&mut engine, i64::MAX);
        let ids: Vec<String> = s.fake.calls().into_iter().map(|c| c.1).collect();
        assert_eq!(ids, vec![alert(1, &[]).id, alert(3, &[]).id]);
    }

    #[test]
    fn a_rolled_attempts_file_keeps_what_is_pending_and_what_finished_after_it() {
        let mut s = setup("roll");
        s.fake.always("b", retry());
        let mut engine = s.engine(vec![channel("a", 0), channel("b", 0)]);
        s.outbox
            .append(&[alert(1, &["a"]), alert(2, &["b"]), alert(3, &["a"])])
            .unwrap();
        engine.poll_outbox();
        engine.run_due();
        assert_eq!(engine.state().pending, 1);
        engine.roll_attempts();
        drop(engine);
        // A second roll would delete the file the first one closed.
        std::fs::remove_file(s.dir.join(ATTEMPTS_PREVIOUS_FILE)).unwrap();
        s.fake.always("b", Outcome::Delivered);
        s.clock.advance_by(Duration::from_secs(3600));
        let mut engine = s.engine(vec![channel("a", 0), channel("b", 0)]);
        assert_eq!(engine.state().pending, 1);
        let h = engine.history(3);
        assert_eq!(h[0].routes[0].state, DeliveryStatus::Delivered, "carried");
        assert_eq!(h[1].routes[0].state, DeliveryStatus::Pending);
        assert_eq!(h[1].routes[0].attempts, 1);
        assert_eq!(h[2].routes[0].state, DeliveryStatus::Forgotten);
        s.drive(&mut engine, i64::MAX);
        let calls = s.fake.calls();
        assert_eq!(calls.len(), 4, "only alert 2 is sent again: {calls:?}");
        assert_eq!(calls[3].1, alert(2, &[]).id);
    }

    fn wait<T>(mut rx: oneshot::Receiver<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(v)) = rx.try_recv() {
                return v;
            }
            assert!(Instant::now() < deadline, "no reply");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_restart_resumes_exactly_the_undelivered_routes() {
        let mut s = setup("restart");
        s.outbox
            .append(&[
                alert(1, &["a", "b"]),
                alert(2, &["a", "b"]),
                alert(3, &["a", "b"]),
                alert(4, &["gone"]),
            ])
            .unwrap();
        let rec = |i: u32, ch: &str, attempt, outcome| AttemptRecord {
            alert: alert(i, &[]).id,
            channel: ch.into(),
            attempt,
            at_ms: T0 - 1000,
            status: None,
            latency_ms: 1,
            error: None,
            outcome,
        };
        let (mut log, _) = AttemptsLog::open(&s.dir).unwrap();
        log.append(&[
            rec(1, "a", 1, AttemptOutcome::Delivered),
            rec(1, "b", 1, AttemptOutcome::Dead),
            rec(2, "a", 1, AttemptOutcome::Retry),
            rec(2, "b", 1, AttemptOutcome::Delivered),
        ])
        .unwrap();
        drop(log);
        let channels = vec![channel("a", 0), channel("b", 0)];
        let start = |s: &Setup| {
            Delivery::start(
                &s.dir,
                channels.clone(),
                config(&s.fake, &s.clock),
                s.stats.clone(),
            )
            .unwrap()
        };
        s.clock.advance_by(Duration::from_secs(600));
        let handle = start(&s);
        wait_until("three deliveries", || s.fake.calls().len() >= 3);
        let state = wait(handle.state().unwrap());
        assert_eq!(state.pending, 0);
        assert_eq!(state.dead_lettered, 2, "1/b before, 4/gone now");
        let calls: Vec<(String, String)> = s.fake.calls().into_iter().map(|c| (c.0, c.1)).collect();
        let id = |i| alert(i, &[]).id;
        let on = |ch: &str| -> Vec<String> {
            calls
                .iter()
                .filter(|c| c.0 == ch)
                .map(|c| c.1.clone())
                .collect()
        };
        assert_eq!(calls.len(), 3);
        assert_eq!(on("a"), vec![id(2), id(3)]);
        assert_eq!(on("b"), vec![id(3)]);
        let a2: Vec<u32> = records(&s.dir)
            .iter()
            .filter(|r| r.alert == id(2) && r.channel == "a")
            .map(|r| r.attempt)
            .collect();
        assert_eq!(a2, vec![1, 2]);
        // A new alert is picked up on notify.
        s.outbox.append(&[alert(5, &["b"])]).unwrap();
        handle.notify();
        wait_until("the new alert", || s.fake.calls().len() >= 4);
        handle.shutdown();
        assert_eq!(handle.state().unwrap_err(), Refused::Gone);

        let handle = start(&s);
        let state = wait(handle.state().unwrap());
        assert_eq!(state.pending, 0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(s.fake.calls().len(), 4, "nothing sent twice");
        let h = wait(handle.history(10).unwrap());
        assert_eq!(h.len(), 5);
        assert_eq!(h[0].id, id(5));
        handle.shutdown();
    }

    #[test]
    fn the_real_channel_dead_letters_a_refused_destination_and_tests_answer() {
        let mut s = setup("real");
        let a = alert(1, &["a"]);
        s.outbox.append(std::slice::from_ref(&a)).unwrap();
        // Loopback without allow_private: the SSRF guard refuses it for good.
        let mut refused = channel("a", 60);
        refused.allow_private = false;
        let handle = Delivery::start(
            &s.dir,
            vec![refused],
            DeliveryConfig::default(),
            s.stats.clone(),
        )
        .unwrap();
        wait_until("the dead-letter", || s.stats.dead_lettered.get() == 1);
        let h = wait(handle.history(10).unwrap());
        assert_eq!(h[0].id, a.id);
        assert_eq!(h[0].routes[0].state, DeliveryStatus::Dead);
        let error = h[0].routes[0].last_error.clone().unwrap_or_default();
        assert!(error.contains("allow_private"), "{error}");
        let t = wait(handle.test("a").unwrap()).unwrap();
        assert!(t.alert_id.starts_with("alrt_test_"), "{}", t.alert_id);
        assert_eq!(t.alert_id.len(), "alrt_test_".len() + 32);
        assert_eq!(t.outcome, "permanent");
        assert!(!t.delivered);
        let t2 = wait(handle.test("a").unwrap()).unwrap();
        assert_ne!(t.alert_id, t2.alert_id);
        let err = wait(handle.test("zzz").unwrap()).unwrap_err();
        assert_eq!(err, "channel zzz is not configured");
        // Tests go through neither the outbox nor the attempts file.
        assert_eq!(records(&s.dir).len(), 1);
        assert_eq!(wait(handle.history(10).unwrap()).len(), 1);
        let n = wait(handle.replay(&a.id).unwrap()).unwrap();
        assert_eq!(n, 1);
        wait_until("the replay's dead-letter", || {
            s.stats.dead_lettered.get() == 2
        });
        assert!(wait(handle.replay("alrt_x").unwrap()).is_err());
        handle.shutdown();
    }
}
