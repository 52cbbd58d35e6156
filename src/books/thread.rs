//! The ledger thread: the one owner of [`Ledger`].
//!
//! Workers and the control plane send [`Msg`]s over one bounded crossbeam
//! channel ([`LEDGER_QUEUE_MAX`]); workers' settles arrive through their
//! [`ring`](super::ring)s instead, so a settle is safe from SIGKILL before the
//! response is written without a round trip to this thread. Each iteration the
//! thread:
//!
//! 1. takes what is queued on the command channel, up to
//!    [`MSGS_PER_ITERATION_MAX`], applying each command;
//! 2. reads every ring (up to [`RING_READ_BATCH_MAX`] slots each) and applies
//!    the settles;
//! 3. sends `Tick` every [`TICK_INTERVAL_MS`] (again at once while the ledger
//!    says more rollovers are due);
//! 4. `flush_if_due`, then releases ring slots whose settles are durable;
//! 5. checkpoints every `snapshot_interval_ms`;
//! 6. parks for [`ring_poll_interval`], the journal's fsync interval
//!    (doubling up to [`RING_POLL_IDLE_MAX`] while nothing comes). A
//!    command's sender unparks it at once
//!    ([`LedgerTx`]); settles do not: they wait in their ring, already safe
//!    from a crash, for the next poll. So under load the thread wakes once
//!    per interval, whatever the request rate, and applies a batch.
//! 7. after [`DOZE_AFTER_IDLE_POLLS`] idle polls with nothing left to make
//!    durable, dozes instead: parks until its next tick or checkpoint with a
//!    `dozing` flag set, and the first settle published meanwhile unparks it
//!    (one fence and one load on the worker's settle path).
//!
//! After every apply it broadcasts the ledger's events to every worker's
//! bounded event channel with `try_send`; a full channel sets that worker's
//! `resync` flag instead of blocking the ledger: events are hints (a worker
//! that missed `Unblocked` learns it at its next lease request), never money.
//! Then it rings the worker's `bell` (an [`AtomicWaker`]), which wakes the
//! worker's event listener; events are rare (blocks, unblocks, rollovers), so
//! a worker spends no wake-up on them otherwise.
//!
//! # Ring release and durability
//!
//! A ring slot is released (its `tail` moved past it) only once the journal
//! record of its settle is durable ([`Ledger::durable_seq`]). Releasing when
//! the slot is merely applied would lose the settle to a SIGKILL that hits
//! before the journal batch is written: the journal batch lives in this
//! process's memory until then. Between a durable journal write and the
//! release, a crash leaves slots that are replayed on start and answered
//! `Duplicate` (the ledger's settled-id window, 1 Mi ids by default, is far
//! larger than one journal batch, 4096 records by default).
//!
//! # Start
//!
//! [`Books::start`] does all recovery before the thread runs, so its errors
//! return to the caller: open the ledger (snapshot + journal replay), drain the
//! pending slots of every ring file in the directory (including rings of
//! workers beyond today's count, whose settles are applied as worker 0's: no
//! worker holds a lease yet, so the worker named in a settle changes nothing
//! but the journal's note of it), make every configured entity exist with its
//! configured budget (an entity with no budget must exist too: settles charge
//! it for its lifetime spend), flush, and release the drained slots.
//!
//! A replayed settle marked `from_lease` finds no lease (leases die with the
//! process), so the ledger counts it as uncovered and emits `Overrun`; that is
//! accurate accounting of a lease that no longer exists, not an overspend
//! (the lease it drew on was within the limit before the crash).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures_channel::oneshot;

use super::node_lease::{ClusterLink, NodeLeases};
use super::registry::{EntityRegistry, RegistryError};
use super::ring::{self, PushError, RingConsumer, RingError, RingProducer, SettleRecord};
use crate::alerts::ledger_side::{AlertSink, EmitStats, EntityAlertState, LedgerAlerts};
use crate::alerts::rules::{AlertPlan, Rule};
use crate::alerts::{eval::AlertBook, Alert};
use crate::budget::Budget;
use crate::config::Config;
use crate::ledger::{
    Charges, Command, EntityId, EntityKind, EntityView, Event, Ledger, LedgerConfig, LedgerError,
    Reply, SnapshotError,
};

/// Bound of the command channel shared by all workers and the control plane.
pub const LEDGER_QUEUE_MAX: usize = 1 << 16;
/// Bound of each worker's event channel. A worker that falls this far behind
/// gets its `resync` flag set instead.
pub const EVENT_QUEUE_MAX: usize = 4096;
/// The rings are polled while settles come in at the journal's pace: every
/// `[ledger] fsync_interval` (10 ms by default), within these bounds. Settles
/// are safe from a crash of the process in their ring from the moment a
/// worker writes them; the journal is fsynced once its oldest record has
/// waited an interval, so with this pace every other poll also flushes, and a
/// settle is on disk within about two intervals of being written (one to be
/// read, one to be synced). Polling faster buys the ledger's view of
/// soft-budget spend and that window, at one wake-up of the core each: at
/// 5,000 requests/s, polling every 1 ms cost ~3 µs of CPU per request more
/// than every 5 ms, and 5 ms ~0.8 µs more than every 10 ms, fewer fsyncs
/// included (decision 0007, docs/benchmarks.md). At most
/// [`RING_POLL_IDLE_MAX`], the longest wait when idle.
pub const RING_POLL_INTERVAL_MIN: Duration = Duration::from_millis(1);

/// The busy polling interval for a journal fsynced every `sync_interval_ms`.
pub fn ring_poll_interval(sync_interval_ms: u32) -> Duration {
    Duration::from_millis(u64::from(sync_interval_ms))
        .clamp(RING_POLL_INTERVAL_MIN, RING_POLL_IDLE_MAX)
}
/// When nothing came in (no message, no settle), the wait doubles up to this
/// (each wake-up is CPU taken from the workers' cores), until the thread
/// dozes ([`DOZE_AFTER_IDLE_POLLS`]). A lease request wakes it at once; a
/// settle waits at most this long in its ring (it is already safe there, and
/// a view drains the rings first), or unparks a dozing thread.
pub const RING_POLL_IDLE_MAX: Duration = Duration::from_millis(16);
/// Idle polls in a row (nothing came, nothing waiting to be made durable)
/// after which the thread dozes: it parks until the next tick or checkpoint
/// and a worker's settle unparks it ([`LedgerTx`]'s `dozing` flag). ~1 s at
/// [`RING_POLL_IDLE_MAX`]: an idle gateway's ledger wakes about once a
/// second instead of 60 times, and a busy one never dozes.
pub const DOZE_AFTER_IDLE_POLLS: u32 = 64;
/// While the journal cannot be written, how often the ledger thread tries
/// the batch again.
pub const JOURNAL_RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// While the journal cannot be written, the most bytes of records its batch
/// holds in memory. Past it the ledger thread takes no message until the
/// batch is written (they wait in the bounded channel, [`LEDGER_QUEUE_MAX`]).
/// Rarely near: workers admit nothing new and the control plane's changes
/// are refused while the journal is down, so what still comes is the
/// settles and lease returns of requests already in flight.
pub const JOURNAL_DOWN_BATCH_BYTES_MAX: usize = 64 << 20;

/// Most slots read from one ring per iteration, so one busy worker cannot
/// starve the command channel.
pub const RING_READ_BATCH_MAX: usize = 4096;
/// Most messages taken per iteration before the rings get their turn.
pub const MSGS_PER_ITERATION_MAX: usize = 4096;
/// How often the ledger is sent `Tick` (rollovers of idle entities).
pub const TICK_INTERVAL_MS: i64 = 1000;
/// Entities one [`Msg::Views`] asks for: a listing of thousands of budgets
/// is answered in several visits, other commands served between them.
pub const VIEWS_PER_MESSAGE_MAX: usize = 1024;
/// Default snapshot interval when the config gives none.
pub const SNAPSHOT_INTERVAL_MS_DEFAULT: u64 = 5 * 60 * 1000;
/// Most (read cursor, journal seq) marks remembered per ring while waiting for
/// the journal to become durable. When full the newest mark is moved forward,
/// which only delays a release (safe).
const RELEASE_MARKS_MAX: usize = 64;

/// The ledger's clock (unix ms), injected so period tests can drive it.
pub use crate::clock::{Clock, SystemClock, TestClock};

/// What the books need from the config.
#[derive(Debug, Clone)]
pub struct BooksConfig {
    /// Worker threads; worker ids are `0..workers`.
    pub workers: u16,
    pub ledger: LedgerConfig,
    pub snapshot_interval_ms: u64,
    /// Slots of a newly created ring (existing rings keep their size).
    pub ring_slots: u32,
    /// Every configured entity, with its budget (`None`: tracked, no limit).
    pub entities: Vec<(EntityKind, String, Option<Budget>)>,
    /// Cluster mode: the way to the cluster thread (`ledger.state.cluster`
    /// must be set too). `None`: a single node.
    pub cluster: Option<ClusterLink>,
}

impl BooksConfig {
    /// The books' part of a validated config: worker count, journal interval,
    /// snapshot interval, and every customer, team, key and provider.
    pub fn from_config(config: &Config) -> BooksConfig {
        let mut ledger = LedgerConfig::default();
        ledger.state.workers = config.server.workers.clamp(1, usize::from(u16::MAX)) as u16;
        let fsync_ms = config.ledger.fsync_interval.as_millis();
        ledger.journal.sync_interval_ms = fsync_ms.clamp(1, u128::from(u32::MAX)) as u32;
        ledger.state.cluster = config.cluster.is_some();
        let entities = super::registry::config_entities(config)
            .into_iter()
            .map(|(kind, name, budget)| (kind, name.into_owned(), budget))
            .collect();
        BooksConfig {
            workers: ledger.state.workers,
            ledger,
            snapshot_interval_ms: config.ledger.snapshot_interval.as_millis().max(1) as u64,
            ring_slots: ring::RING_SLOTS,
            entities,
            cluster: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BooksError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("books config: {0}")]
    Config(String),
    #[error(
        "the journal in {ledger_dir} ends at record {journal_seq}, but {ring} saw it durable \
         through record {witnessed}: acknowledged charges are missing from the journal (a \
         truncated or zeroed segment, or one removed). Restore {ledger_dir} from a backup; \
         `bursar verify-state` shows what each file holds. (If the ring's header is what is \
         damaged, verify-state says so.)"
    )]
    JournalBehind {
        ledger_dir: PathBuf,
        ring: PathBuf,
        witnessed: u64,
        journal_seq: u64,
    },
    #[error(
        "entity registry {path} names {entities} entities, but the books hold entity id {id}: \
         the registry lost entries (it was cut short), and their ids would be handed to other \
         entities. Restore it from a backup; `bursar verify-state` checks a state directory"
    )]
    RegistryBehind {
        path: PathBuf,
        entities: u32,
        id: u32,
    },
    #[error("the ledger thread is gone")]
    Stopped,
    #[error(
        "the ledger cannot write its journal (a full disk or an I/O error): no change is \
         made until it can"
    )]
    JournalDown,
    #[error("the ledger queue is full")]
    QueueFull,
    #[error("could not start the ledger thread: {0}")]
    Spawn(std::io::Error),
}

impl BooksError {
    /// A journal or snapshot write that a retry may clear
    /// ([`LedgerError::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, BooksError::Ledger(e) if e.is_retryable())
    }
}

/// Where a command's reply goes.
#[derive(Debug)]
pub enum ReplyTo {
    None,
    /// A worker's async wait (wakes a monoio runtime from this thread).
    Async(oneshot::Sender<Reply>),
    /// A blocking caller (control plane, tests).
    Sync(mpsc::Sender<Reply>),
}

/// A message to the ledger thread. Fixed size (a command carries a settle's
/// charges inline) so it crosses the channel without an allocation; hence the
/// lint allowance, as for [`Command`].
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Msg {
    Command {
        cmd: Command,
        reply: ReplyTo,
    },
    /// The control plane asks for an entity as of now.
    View {
        entity: EntityId,
        reply: mpsc::Sender<Option<EntityView>>,
    },
    /// The control plane asks for several entities as of now (at most
    /// [`VIEWS_PER_MESSAGE_MAX`]), in one visit to the ledger thread.
    Views {
        entities: Vec<EntityId>,
        reply: mpsc::Sender<Vec<Option<EntityView>>>,
    },
    /// A worker asks for an entity as of now (a key holder's
    /// `GET /v1/bursar/usage`): `View` with a reply the worker awaits
    /// instead of blocking on. Nothing else happens (no alert hears of it).
    WorkerView {
        entity: EntityId,
        reply: oneshot::Sender<Option<EntityView>>,
    },
    /// A worker refused a request at this entity (a 402): the alerts hear of
    /// it, and the reply is the entity as of now, to explain the refusal.
    Refused {
        entity: EntityId,
        reply: oneshot::Sender<Option<EntityView>>,
    },
    /// Flush the journal, checkpoint, release the rings, reply, and stop.
    Shutdown {
        reply: mpsc::Sender<Result<(), String>>,
    },
    /// Stop at once without flushing the journal or releasing ring slots, as
    /// a SIGKILL would. For crash tests.
    #[doc(hidden)]
    Crash,
    /// New alert rules or entities: evaluate with this plan from now on.
    AlertPlan(Arc<AlertPlan>),
    /// Alerts made elsewhere (reports, operational alerts), to append to the
    /// outbox like the evaluator's: the ledger thread is its one writer. An
    /// id already in the outbox is skipped, so a repeat is harmless.
    EmitAlerts(Vec<Alert>),
    /// The control plane asks what every covered entity's alerts stand at.
    AlertState {
        reply: mpsc::Sender<Vec<EntityAlertState>>,
    },
    /// Cluster mode: push every shared entity's state again (Redis lost it).
    ClusterRedeclare,
}

/// What the ledger thread needs to evaluate alerts: the rules, the outbox
/// (with the alerts it already holds, oldest first) and its counters.
pub struct AlertSetup {
    pub rules: Vec<Rule>,
    /// Where the burn histories live across restarts (`None`: not kept).
    pub history: Option<PathBuf>,
    pub sink: Box<dyn AlertSink>,
    pub existing: Vec<Alert>,
    pub stats: Arc<EmitStats>,
}

/// The plan of `rules` for every entity the registry names.
pub fn alert_plan(rules: Vec<Rule>, registry: &EntityRegistry) -> AlertPlan {
    AlertPlan::new(
        rules,
        (0..registry.len()).filter_map(|i| {
            let id = EntityId(i);
            registry.name_of(id).map(|(kind, name)| (id, kind, name))
        }),
    )
}

/// Counters the thread keeps, readable from anywhere.
#[derive(Debug, Default)]
pub struct BooksStats {
    pub commands: AtomicU64,
    pub ring_settles: AtomicU64,
    /// Ring settles answered `Duplicate` (replays after a crash).
    pub ring_duplicates: AtomicU64,
    /// Ring settles the ledger refused (e.g. an unknown entity): a bug
    /// upstream, and money not recorded; logged at error level.
    pub ring_rejected: AtomicU64,
    pub events_dropped: AtomicU64,
    pub checkpoints: AtomicU64,
    /// `Overrun` events: strict charges beyond the lease that covered them.
    pub overruns: AtomicU64,
    /// The entity of the last `Overrun`, its id + 1 (0: none yet), for the
    /// operational alerts to name.
    pub last_overrun_entity: AtomicU64,
    /// `SoftLimitReached` events.
    pub soft_limits_reached: AtomicU64,
    /// Times the thread dozed: parked until its next tick with nothing to do
    /// ([`DOZE_AFTER_IDLE_POLLS`]).
    pub dozes: AtomicU64,
    /// Set while the journal cannot be written (a full disk, an I/O error):
    /// workers refuse new requests (503) until it can; shared with every
    /// [`WorkerLink`].
    pub journal_down: Arc<AtomicBool>,
    /// Journal writes that failed (each retry counts).
    pub journal_write_failures: AtomicU64,
    /// Snapshot writes that failed for an I/O reason (a full disk): the
    /// journal holds everything, so requests go on; retried at the next
    /// checkpoint.
    pub snapshot_write_failures: AtomicU64,
    /// Times the journal became writable again after failing.
    pub journal_recoveries: AtomicU64,
}

/// What a worker holds to talk to the books.
#[derive(Debug)]
pub struct WorkerLink {
    pub worker: u16,
    pub ring: RingProducer,
    pub commands: LedgerTx,
    pub events: Receiver<Event>,
    /// Set by the ledger thread when an event could not be delivered: the
    /// worker should refresh what it believes (e.g. re-ask leases) and clear it.
    pub resync: Arc<AtomicBool>,
    /// Rung by the ledger thread after it posts events or sets `resync`, so
    /// the worker's listener sleeps until there is something to drain (no
    /// timer wake-ups on an idle gateway).
    pub bell: Arc<AtomicWaker>,
    /// [`BooksStats::journal_down`]: admit nothing new while it is set.
    pub journal_down: Arc<AtomicBool>,
}

impl WorkerLink {
    /// Sends a command whose reply the worker awaits. Never blocks: a full
    /// queue is an error (the ledger is overloaded; the caller backs off).
    pub fn request(&self, cmd: Command) -> Result<oneshot::Receiver<Reply>, BooksError> {
        let (tx, rx) = oneshot::channel();
        self.commands.try_send(Msg::Command {
            cmd,
            reply: ReplyTo::Async(tx),
        })?;
        Ok(rx)
    }

    /// Tells the ledger thread a request was refused at `entity` (a 402:
    /// the alerts hear of it) and asks for the entity as of now, to explain
    /// the refusal; the reply is awaited (rare).
    pub fn refused(
        &self,
        entity: EntityId,
    ) -> Result<oneshot::Receiver<Option<EntityView>>, BooksError> {
        let (tx, rx) = oneshot::channel();
        self.commands.try_send(Msg::Refused { entity, reply: tx })?;
        Ok(rx)
    }

    /// Asks for the entity as of now (a key holder's usage view); the reply
    /// is awaited. Never blocks: a full queue is an error.
    pub fn view(
        &self,
        entity: EntityId,
    ) -> Result<oneshot::Receiver<Option<EntityView>>, BooksError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .try_send(Msg::WorkerView { entity, reply: tx })?;
        Ok(rx)
    }

    /// Sends a command without waiting for a reply (e.g. `LeaseReturn`).
    pub fn tell(&self, cmd: Command) -> Result<(), BooksError> {
        self.commands.try_send(Msg::Command {
            cmd,
            reply: ReplyTo::None,
        })
    }

    /// Resolves once events are waiting or `resync` is set: the waker is
    /// registered before the check, so a bell rung in between is not lost.
    pub fn poll_events_posted(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.bell.register(cx.waker());
        if !self.events.is_empty() || self.resync.load(Ordering::Acquire) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Publishes a settle in this worker's ring. When `Ok`, the charge survives
    /// a crash of the process and the response may be written.
    pub fn settle(
        &mut self,
        request_id: u128,
        estimated: bool,
        charges: &Charges,
    ) -> Result<u64, PushError> {
        let seq = self.ring.push(request_id, estimated, charges)?;
        self.commands.wake_if_dozing();
        Ok(seq)
    }
}

/// The sending side of the ledger thread's command channel. Every send
/// unparks the thread: it sleeps in `park_timeout`, not in the channel's
/// `recv_timeout` (which spins and yields before it sleeps, CPU taken from
/// the workers' cores at every wait), so a sender must wake it. An unpark of
/// a thread that is not parked is one atomic swap.
#[derive(Debug, Clone)]
pub struct LedgerTx {
    tx: Sender<Msg>,
    thread: Arc<OnceLock<std::thread::Thread>>,
    /// Set by the ledger thread while it dozes (parked until its next tick,
    /// see [`DOZE_AFTER_IDLE_POLLS`]): the next settle must unpark it.
    dozing: Arc<AtomicBool>,
}

impl LedgerTx {
    /// Queues without blocking: a full queue is [`BooksError::QueueFull`].
    fn try_send(&self, msg: Msg) -> Result<(), BooksError> {
        let sent = self.tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => BooksError::QueueFull,
            TrySendError::Disconnected(_) => BooksError::Stopped,
        });
        self.wake();
        sent
    }

    /// Sends a command whose reply nobody awaits, without blocking (the
    /// cluster thread's node grants): a full queue is an error.
    pub fn tell(&self, cmd: Command) -> Result<(), BooksError> {
        self.try_send(Msg::Command {
            cmd,
            reply: ReplyTo::None,
        })
    }

    /// Alerts to append to the outbox (the cluster thread's won claims),
    /// without blocking: a full queue is an error.
    pub fn emit_alerts(&self, alerts: Vec<Alert>) -> Result<(), BooksError> {
        self.try_send(Msg::EmitAlerts(alerts))
    }

    /// Cluster mode: the cluster thread found Redis restarted or flushed:
    /// every shared entity's state is pushed again (declared afresh).
    pub fn cluster_redeclare(&self) -> Result<(), BooksError> {
        self.try_send(Msg::ClusterRedeclare)
    }

    /// Queues, blocking while the queue is full (control plane only).
    fn send(&self, msg: Msg) -> Result<(), BooksError> {
        let sent = self.tx.send(msg).map_err(|_| BooksError::Stopped);
        self.wake();
        sent
    }

    fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    /// After a settle is published in a ring: unparks the ledger thread if it
    /// dozes. The fence orders the ring's store before the load of `dozing`;
    /// the ledger sets `dozing` and fences before its last look at the
    /// rings, so either it sees the settle or the worker sees the flag.
    #[inline]
    fn wake_if_dozing(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.dozing.load(Ordering::Relaxed) && self.dozing.swap(false, Ordering::AcqRel) {
            self.wake();
        }
    }
}

/// The control plane's handle on the ledger thread.
#[derive(Debug)]
pub struct BooksHandle {
    commands: LedgerTx,
    join: std::sync::Mutex<Option<JoinHandle<Result<(), BooksError>>>>,
    stats: Arc<BooksStats>,
    dir: PathBuf,
}

impl BooksHandle {
    pub fn sender(&self) -> LedgerTx {
        self.commands.clone()
    }

    pub fn stats(&self) -> &Arc<BooksStats> {
        &self.stats
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies a command and waits for the reply (blocking: control plane only).
    ///
    /// Refused with [`BooksError::JournalDown`] while the journal cannot be
    /// written: a change the books could not make durable is not made.
    pub fn apply(&self, cmd: Command) -> Result<Reply, BooksError> {
        if self.stats.journal_down.load(Ordering::Acquire) {
            return Err(BooksError::JournalDown);
        }
        let (tx, rx) = mpsc::channel();
        self.commands.send(Msg::Command {
            cmd,
            reply: ReplyTo::Sync(tx),
        })?;
        rx.recv().map_err(|_| BooksError::Stopped)
    }

    /// An entity as of the ledger's clock now (blocking: control plane only).
    pub fn view(&self, entity: EntityId) -> Result<Option<EntityView>, BooksError> {
        let (tx, rx) = mpsc::channel();
        self.commands.send(Msg::View { entity, reply: tx })?;
        rx.recv().map_err(|_| BooksError::Stopped)
    }

    /// Entities as of the ledger's clock now, in `entities`' order (blocking:
    /// control plane only). Asked in messages of at most
    /// [`VIEWS_PER_MESSAGE_MAX`], so one call never holds the ledger thread
    /// for long: other commands are served between them.
    pub fn views(&self, entities: &[EntityId]) -> Result<Vec<Option<EntityView>>, BooksError> {
        let mut out = Vec::with_capacity(entities.len());
        for chunk in entities.chunks(VIEWS_PER_MESSAGE_MAX) {
            let (tx, rx) = mpsc::channel();
            self.commands.send(Msg::Views {
                entities: chunk.to_vec(),
                reply: tx,
            })?;
            out.extend(rx.recv().map_err(|_| BooksError::Stopped)?);
        }
        Ok(out)
    }

    /// Evaluates alerts with `plan` from now on (new rules or entities).
    pub fn set_alert_plan(&self, plan: AlertPlan) -> Result<(), BooksError> {
        self.commands.send(Msg::AlertPlan(Arc::new(plan)))
    }

    /// Appends alerts made outside the ledger (reports, operational alerts)
    /// to the outbox, through the ledger thread (its one writer).
    pub fn emit_alerts(&self, alerts: Vec<Alert>) -> Result<(), BooksError> {
        self.commands.send(Msg::EmitAlerts(alerts))
    }

    /// Every covered entity's alert state (blocking: control plane only).
    pub fn alert_state(&self) -> Result<Vec<EntityAlertState>, BooksError> {
        let (tx, rx) = mpsc::channel();
        self.commands.send(Msg::AlertState { reply: tx })?;
        rx.recv().map_err(|_| BooksError::Stopped)
    }

    /// Flushes, checkpoints, stops the thread and waits for it. Later calls
    /// (and requests) find the thread stopped.
    pub fn shutdown(&self) -> Result<(), BooksError> {
        let (tx, rx) = mpsc::channel();
        let sent = self.commands.send(Msg::Shutdown { reply: tx }).is_ok();
        let replied = if sent { rx.recv().ok() } else { None };
        let joined = self.join_thread();
        match (replied, joined) {
            (_, Err(e)) => Err(e),
            (Some(Err(e)), _) => Err(BooksError::Config(e)),
            _ => Ok(()),
        }
    }

    /// Stops the thread as SIGKILL would: the unwritten journal batch is lost
    /// and no ring slot is released. For crash tests.
    #[doc(hidden)]
    pub fn crash(&self) {
        let _ = self.commands.send(Msg::Crash);
        let _ = self.join_thread();
    }

    fn join_thread(&self) -> Result<(), BooksError> {
        let join = self.join.lock().unwrap_or_else(|p| p.into_inner()).take();
        match join {
            Some(join) => join.join().unwrap_or(Err(BooksError::Stopped)),
            None => Ok(()),
        }
    }
}

impl Drop for BooksHandle {
    fn drop(&mut self) {
        let running = self
            .join
            .get_mut()
            .map_or_else(|p| p.into_inner().is_some(), |j| j.is_some());
        if running {
            let (tx, _rx) = mpsc::channel();
            let _ = self.commands.send(Msg::Shutdown { reply: tx });
            let _ = self.join_thread();
        }
    }
}

/// One ring as the ledger thread sees it.
struct RingState {
    consumer: RingConsumer,
    /// (read cursor, journal seq after applying everything before it), oldest
    /// first: the cursor may be released once the seq is durable.
    marks: VecDeque<(u64, u64)>,
}

struct Worker {
    events: Sender<Event>,
    resync: Arc<AtomicBool>,
    bell: Arc<AtomicWaker>,
}

/// The books: the ledger thread and its links.
pub struct Books;

impl Books {
    /// Recovers the books in `state_dir` (the ledger in `state_dir/ledger`, the
    /// rings beside it), drains the rings, applies the configured entities, and
    /// starts the ledger thread. Returns the control plane's handle and one
    /// link per worker, in worker order.
    pub fn start(
        state_dir: &Path,
        config: &BooksConfig,
        registry: &mut EntityRegistry,
        clock: Arc<dyn Clock>,
    ) -> Result<(BooksHandle, Vec<WorkerLink>), BooksError> {
        Books::start_with_alerts(state_dir, config, registry, clock, None)
    }

    /// [`Books::start`], with alerts evaluated on the ledger thread. The
    /// first iteration sweeps every covered entity: what crossed while no
    /// process watched (the outbox missed it) fires then, once.
    pub fn start_with_alerts(
        state_dir: &Path,
        config: &BooksConfig,
        registry: &mut EntityRegistry,
        clock: Arc<dyn Clock>,
        alerts: Option<AlertSetup>,
    ) -> Result<(BooksHandle, Vec<WorkerLink>), BooksError> {
        if config.workers == 0 || config.workers != config.ledger.state.workers {
            return Err(BooksError::Config(format!(
                "workers {} must be positive and equal ledger.state.workers {}",
                config.workers, config.ledger.state.workers
            )));
        }
        if config.cluster.is_some() != config.ledger.state.cluster {
            return Err(BooksError::Config(
                "cluster mode needs both the cluster link and ledger.state.cluster".into(),
            ));
        }
        let ledger_dir = state_dir.join("ledger");
        let (mut ledger, _report) = Ledger::open(&ledger_dir, config.ledger)?;
        let stats = Arc::new(BooksStats::default());

        // Drain every ring in the directory, including those of workers that
        // no longer exist.
        let mut ring_workers = ring::ring_workers_in(state_dir)?;
        ring_workers.extend(0..config.workers);
        ring_workers.sort_unstable();
        ring_workers.dedup();
        let mut producers = Vec::new();
        let mut rings = Vec::new();
        let now = clock.now_ms();
        let mut opened = Vec::with_capacity(ring_workers.len());
        for w in ring_workers {
            opened.push((w, ring::open_ring(state_dir, w, config.ring_slots)?));
        }
        check_witnesses(
            &ledger_dir,
            ledger.state().journal_seq(),
            opened.iter().map(|(_, (_, c))| c),
        )?;
        check_registry_covers(registry, ledger.state())?;
        for (w, (producer, mut consumer)) in opened {
            loop {
                let mut result = Ok(());
                let n = consumer.read(RING_READ_BATCH_MAX, |_, rec| {
                    if result.is_ok() {
                        let mut rec = *rec;
                        if rec.worker >= config.workers {
                            rec.worker = 0;
                        }
                        result = apply_ring_settle(&mut ledger, now, &rec, &stats);
                    }
                })?;
                result?;
                if n == 0 {
                    break;
                }
            }
            if w < config.workers {
                producers.push(producer);
                rings.push(RingState {
                    consumer,
                    marks: VecDeque::new(),
                });
            } else {
                ledger.flush()?;
                consumer.release_read();
            }
        }

        // Every configured entity exists in the ledger with its configured budget.
        for (kind, name, budget) in &config.entities {
            let id = registry.id_for(*kind, name)?;
            let current = ledger.state().view(id, now);
            if current.is_some_and(|v| v.budget == *budget && v.kind == *kind) {
                continue;
            }
            let reply = ledger.apply(
                now,
                &Command::SetBudget {
                    entity: id,
                    kind: *kind,
                    budget: *budget,
                },
            )?;
            if let Reply::Rejected(e) = reply {
                return Err(BooksError::Config(format!(
                    "{} {name:?}: {e}",
                    super::registry::kind_str(*kind)
                )));
            }
        }
        ledger.flush()?;
        let witnessed = ledger.durable_seq();
        for r in &mut rings {
            r.consumer.release_read();
            r.consumer.witness_durable(witnessed);
        }

        let (tx, rx) = crossbeam_channel::bounded(LEDGER_QUEUE_MAX);
        let tx = LedgerTx {
            tx,
            thread: Arc::new(OnceLock::new()),
            dozing: Arc::new(AtomicBool::new(false)),
        };
        let mut links = Vec::new();
        let mut workers = Vec::new();
        for producer in producers {
            let (etx, erx) = crossbeam_channel::bounded(EVENT_QUEUE_MAX);
            let resync = Arc::new(AtomicBool::new(false));
            let bell = Arc::new(AtomicWaker::new());
            workers.push(Worker {
                events: etx,
                resync: resync.clone(),
                bell: bell.clone(),
            });
            links.push(WorkerLink {
                worker: producer.worker(),
                ring: producer,
                commands: tx.clone(),
                events: erx,
                resync,
                bell,
                journal_down: Arc::clone(&stats.journal_down),
            });
        }
        let mut history = None;
        let alerts = alerts.map(|setup| {
            let plan = Arc::new(alert_plan(setup.rules, registry));
            let book = AlertBook::new(plan, &setup.existing);
            let mut alerts = LedgerAlerts::new(book, setup.sink, setup.stats);
            if let Some(path) = &setup.history {
                alerts.load_histories(path);
            }
            history = setup.history;
            alerts
        });
        let mut thread = LedgerThread {
            node: config.cluster.clone().map(|link| {
                // The first push declares this process's state on every
                // shared entity: what an earlier process held is released.
                let mut node = NodeLeases::new(link, config.workers);
                for e in ledger.state().shared_entities() {
                    node.charged(e);
                }
                node
            }),
            alerts,
            history,
            ledger,
            rx,
            rings,
            workers,
            clock,
            stats: stats.clone(),
            snapshot_interval_ms: config.snapshot_interval_ms.max(1) as i64,
            ring_poll_interval: ring_poll_interval(config.ledger.journal.sync_interval_ms),
            next_tick_ms: now + TICK_INTERVAL_MS,
            next_checkpoint_ms: now + config.snapshot_interval_ms.max(1) as i64,
            witnessed,
            journal_down_since: None,
            journal_retry_ms: 0,
            journal_down_logged_ms: 0,
            snapshot_failure_logged_ms: i64::MIN / 2,
            dozing: Arc::clone(&tx.dozing),
        };
        let join = std::thread::Builder::new()
            .name("bursar-ledger".into())
            .spawn(move || thread.run())
            .map_err(BooksError::Spawn)?;
        let _ = tx.thread.set(join.thread().clone());
        Ok((
            BooksHandle {
                commands: tx,
                join: std::sync::Mutex::new(Some(join)),
                stats,
                dir: ledger_dir,
            },
            links,
        ))
    }
}

/// The journal must reach what the rings saw durable ([`ring::Witness`]):
/// a journal that ends before acknowledged records lost them (a truncated
/// or zeroed tail, a segment removed), which its own frames cannot show.
pub fn check_witnesses<'a>(
    ledger_dir: &Path,
    journal_seq: u64,
    rings: impl Iterator<Item = &'a RingConsumer>,
) -> Result<(), BooksError> {
    for consumer in rings {
        match consumer.witnessed() {
            ring::Witness::Durable(seq) if seq > journal_seq => {
                return Err(BooksError::JournalBehind {
                    ledger_dir: ledger_dir.to_path_buf(),
                    ring: consumer.path().to_path_buf(),
                    witnessed: seq,
                    journal_seq,
                });
            }
            ring::Witness::Damaged(word) => log::warn!(
                "settle ring {}: the journal witness {word:#x} does not check out; ignored",
                consumer.path().display()
            ),
            _ => {}
        }
    }
    Ok(())
}

/// Every entity the books name must be in the registry: a registry cut
/// short would hand their ids to other entities.
pub fn check_registry_covers(
    registry: &EntityRegistry,
    state: &crate::ledger::state::LedgerState,
) -> Result<(), BooksError> {
    if let Some(max) = state.entity_books().map(|e| e.id.0).max() {
        if max >= registry.len() {
            return Err(BooksError::RegistryBehind {
                path: registry.path().to_path_buf(),
                entities: registry.len(),
                id: max,
            });
        }
    }
    Ok(())
}

fn apply_ring_settle(
    ledger: &mut Ledger,
    now_ms: i64,
    rec: &SettleRecord,
    stats: &BooksStats,
) -> Result<(), BooksError> {
    stats.ring_settles.fetch_add(1, Ordering::Relaxed);
    match ledger.apply(now_ms, &rec.to_command())? {
        Reply::Duplicate { .. } => {
            stats.ring_duplicates.fetch_add(1, Ordering::Relaxed);
        }
        Reply::Rejected(e) => {
            stats.ring_rejected.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "settle of request {:032x} from worker {} refused by the ledger, not charged: {e} ({:?})",
                rec.request_id,
                rec.worker,
                rec.charges
            );
        }
        _ => {}
    }
    Ok(())
}

struct LedgerThread {
    /// Cluster mode's node leases (`None`: a single node).
    node: Option<NodeLeases<ReplyTo>>,
    /// `None` when no alert rule was configured at start.
    alerts: Option<LedgerAlerts>,
    /// Where the alerts' burn histories are kept (at every checkpoint).
    history: Option<PathBuf>,
    ledger: Ledger,
    rx: Receiver<Msg>,
    rings: Vec<RingState>,
    workers: Vec<Worker>,
    clock: Arc<dyn Clock>,
    stats: Arc<BooksStats>,
    snapshot_interval_ms: i64,
    /// How long to park while settles come in ([`ring_poll_interval`]).
    ring_poll_interval: Duration,
    next_tick_ms: i64,
    next_checkpoint_ms: i64,
    /// The journal's durable seq last recorded in the rings.
    witnessed: u64,
    /// When the journal stopped being writable (`None`: it is).
    journal_down_since: Option<i64>,
    /// When to try the journal's batch again while it is down.
    journal_retry_ms: i64,
    journal_down_logged_ms: i64,
    /// When a failed snapshot was last logged.
    snapshot_failure_logged_ms: i64,
    /// Shared with every [`LedgerTx`]: set while the thread dozes.
    dozing: Arc<AtomicBool>,
}

/// What a pass of the ledger thread's loop leaves to do.
enum Step {
    Continue,
    /// The thread stops with this result.
    Stopped(Result<(), BooksError>),
}

enum Flow {
    Continue,
    Stop(Option<mpsc::Sender<Result<(), String>>>),
    Crash,
}

impl LedgerThread {
    fn run(&mut self) -> Result<(), BooksError> {
        let result = self.run_loop();
        if let Err(e) = &result {
            log::error!("the ledger thread stopped: {e}");
        }
        result
    }

    fn run_loop(&mut self) -> Result<(), BooksError> {
        let mut wait = self.ring_poll_interval;
        let mut idle_polls: u32 = 0;
        loop {
            match self.iteration(&mut wait, &mut idle_polls) {
                Ok(Step::Continue) => {}
                Ok(Step::Stopped(result)) => return result,
                Err(e) if e.is_retryable() => self.journal_failed(&e),
                Err(e) => return Err(e),
            }
        }
    }

    /// A journal or snapshot write failed for a reason a retry may clear
    /// (a full disk, an I/O error). Nothing is lost: the batch stays in
    /// memory and every settle not yet durable stays in its ring, so a
    /// crash now loses nothing either. Until a retry writes the batch the
    /// thread reads no ring (nothing new to buffer), writes no snapshot,
    /// and workers refuse new requests with a 503 (`journal_down`).
    fn journal_failed(&mut self, e: &BooksError) {
        self.stats
            .journal_write_failures
            .fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now_ms();
        if self.journal_down_since.is_none() {
            log::error!(
                "the ledger cannot write its journal: {e}. New requests are refused (503) \
                 until it can; every charge so far is kept (in the journal's batch and the \
                 settle rings). Retrying every {} ms",
                JOURNAL_RETRY_INTERVAL.as_millis()
            );
            self.journal_down_since = Some(now);
            self.journal_down_logged_ms = now;
            self.stats.journal_down.store(true, Ordering::Release);
        } else if now >= self.journal_down_logged_ms + 60_000 {
            log::error!("the ledger still cannot write its journal: {e}");
            self.journal_down_logged_ms = now;
        }
    }

    /// A snapshot write failed for an I/O reason: counted, logged (at most
    /// once a minute), tried again at the next checkpoint.
    fn snapshot_failed(&mut self, now: i64, e: &SnapshotError) {
        self.stats
            .snapshot_write_failures
            .fetch_add(1, Ordering::Relaxed);
        if now >= self.snapshot_failure_logged_ms + 60_000 {
            log::error!(
                "the ledger cannot write a snapshot: {e}. Requests go on (the journal holds \
                 every charge); the next checkpoint tries again. A restart replays the journal \
                 since the last snapshot"
            );
            self.snapshot_failure_logged_ms = now;
        }
    }

    /// One pass of the loop (see the module docs). While the journal is
    /// down, only messages are served and the batch is retried.
    fn iteration(&mut self, wait: &mut Duration, idle_polls: &mut u32) -> Result<Step, BooksError> {
        let mut flow = Flow::Continue;
        let mut taken = 0;
        // The journal down and its batch at its bound: messages wait in
        // the channel until the batch is written.
        let batch_full = self.journal_down_since.is_some()
            && self.ledger.pending_bytes() >= JOURNAL_DOWN_BATCH_BYTES_MAX;
        while !batch_full && matches!(flow, Flow::Continue) && taken < MSGS_PER_ITERATION_MAX {
            match self.rx.try_recv() {
                Ok(msg) => flow = self.handle(msg)?,
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                // Every sender is gone: nobody can ask anything any more.
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    flow = Flow::Stop(None);
                }
            }
            taken += 1;
        }
        let mut busy = taken > 0;
        match flow {
            Flow::Continue => {}
            Flow::Crash => return Ok(Step::Stopped(Ok(()))),
            Flow::Stop(reply) => {
                let result = self.stop();
                if let Some(reply) = reply {
                    let _ = reply.send(result.as_ref().map_err(|e| e.to_string()).copied());
                }
                return Ok(Step::Stopped(result));
            }
        }
        if let Some(since) = self.journal_down_since {
            let now = self.clock.now_ms();
            if now >= self.journal_retry_ms {
                self.journal_retry_ms = now + JOURNAL_RETRY_INTERVAL.as_millis() as i64;
                self.ledger.flush()?;
                log::warn!(
                    "the ledger writes its journal again after {} ms; requests are admitted",
                    now - since
                );
                self.journal_down_since = None;
                self.stats
                    .journal_recoveries
                    .fetch_add(1, Ordering::Relaxed);
                self.stats.journal_down.store(false, Ordering::Release);
                self.release_rings();
                return Ok(Step::Continue);
            }
            if taken < MSGS_PER_ITERATION_MAX {
                std::thread::park_timeout(JOURNAL_RETRY_INTERVAL);
            }
            return Ok(Step::Continue);
        }
        if self.poll_rings()? > 0 {
            busy = true;
        }
        *wait = if busy {
            *idle_polls = 0;
            self.ring_poll_interval
        } else {
            *idle_polls = idle_polls.saturating_add(1);
            (*wait * 2).min(RING_POLL_IDLE_MAX)
        };
        let now = self.clock.now_ms();
        if now >= self.next_tick_ms {
            let reply = self.apply(now, &Command::Tick)?;
            let more = matches!(reply, Reply::Ticked { more: true, .. });
            self.next_tick_ms = if more { now } else { now + TICK_INTERVAL_MS };
        }
        self.ledger.flush_if_due(now)?;
        self.node_tick(now)?;
        self.flush_alerts(now)?;
        if self.rings_filling() {
            // Slots are released only once durable: a ring half full of
            // read-but-not-durable settles needs the batch written now,
            // or its worker would soon find it full.
            self.ledger.flush()?;
        }
        self.release_rings();
        if now >= self.next_checkpoint_ms {
            // Due again in an interval even when this one fails (a full
            // disk): a failed snapshot loses nothing, the journal has it all.
            self.next_checkpoint_ms = now + self.snapshot_interval_ms;
            self.save_histories();
            match self.ledger.checkpoint() {
                Ok(_) => {
                    self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                    self.release_rings();
                }
                // The journal was flushed and is whole; only the snapshot
                // could not be written. Requests go on (a 503 here would
                // refuse traffic the journal can still record); a restart
                // replays more journal until a snapshot is written.
                Err(LedgerError::Snapshot(e)) if e.is_io() => self.snapshot_failed(now, &e),
                Err(e) => return Err(e.into()),
            }
        }
        // A message sent after the drain above unparks this at once (the
        // park token is set even when the thread is not parked yet).
        if taken < MSGS_PER_ITERATION_MAX {
            if *idle_polls >= DOZE_AFTER_IDLE_POLLS
                && self.settled_everything()
                && !self.node.as_ref().is_some_and(|n| n.busy())
            {
                if !self.doze(now)? {
                    *idle_polls = 0;
                    *wait = self.ring_poll_interval;
                }
            } else {
                std::thread::park_timeout(*wait);
            }
        }
        Ok(Step::Continue)
    }

    /// Keeps the alerts' burn histories (best effort: they are history, not money).
    fn save_histories(&self) {
        if let (Some(alerts), Some(path)) = (&self.alerts, &self.history) {
            if let Err(e) = alerts.save_histories(path) {
                log::warn!("alerts: cannot write {}: {e}", path.display());
            }
        }
    }

    /// Hands the alerts the evaluator emitted to the outbox, after making
    /// the journal durable (rare: only when an alert waits).
    fn flush_alerts(&mut self, now: i64) -> Result<(), BooksError> {
        let Some(alerts) = &mut self.alerts else {
            return Ok(());
        };
        if alerts.collect(now, self.ledger.state()) {
            self.ledger.flush()?;
            alerts.append();
        }
        Ok(())
    }

    /// Whether nothing waits on this thread but time: no journal record
    /// to make durable, no ring slot to release.
    fn settled_everything(&self) -> bool {
        self.ledger.pending_bytes() == 0 && self.rings.iter().all(|r| r.marks.is_empty())
    }

    /// Parks until the next tick or checkpoint, or until a command or a
    /// settle unparks it. Returns `false`, without parking, when a settle
    /// was already in a ring (it is applied here). `dozing` is set and
    /// fenced before the rings are looked at: a worker that publishes a
    /// settle after that look sees the flag and unparks this thread.
    fn doze(&mut self, now: i64) -> Result<bool, BooksError> {
        self.dozing.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.poll_rings()? > 0 {
            self.dozing.store(false, Ordering::SeqCst);
            return Ok(false);
        }
        let until = self.next_tick_ms.min(self.next_checkpoint_ms);
        let ms = u64::try_from(until.saturating_sub(now)).unwrap_or(0).max(1);
        self.stats.dozes.fetch_add(1, Ordering::Relaxed);
        std::thread::park_timeout(Duration::from_millis(ms));
        self.dozing.store(false, Ordering::SeqCst);
        Ok(true)
    }

    /// Drains the rings, flushes, checkpoints, releases.
    fn stop(&mut self) -> Result<(), BooksError> {
        self.drain_rings()?;
        let now = self.clock.now_ms();
        self.flush_alerts(now)?;
        self.save_histories();
        self.ledger.checkpoint()?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.release_rings();
        Ok(())
    }

    fn handle(&mut self, msg: Msg) -> Result<Flow, BooksError> {
        let now = self.clock.now_ms();
        match msg {
            Msg::Command { cmd, reply } => {
                self.stats.commands.fetch_add(1, Ordering::Relaxed);
                // An operator's change comes after every charge a client has
                // seen: a settle published in a ring before a reset counts in
                // the period it was made in, not the next.
                if matches!(
                    cmd,
                    Command::Reset { .. }
                        | Command::TopUp { .. }
                        | Command::SetBudget { .. }
                        | Command::ClusterReset { .. }
                        | Command::ClusterTopUp { .. }
                ) {
                    self.drain_rings()?;
                }
                // Cluster mode: a lease the node cap cannot cover waits for
                // a node lease.
                let (cmd, reply) = match &mut self.node {
                    Some(node) => match node.lease_request(self.ledger.state(), now, cmd, reply) {
                        Some(ready) => ready,
                        None => return Ok(Flow::Continue),
                    },
                    None => (cmd, reply),
                };
                self.apply_and_reply(now, cmd, reply)?;
                if let (
                    Some(alerts),
                    Command::ClusterSpend {
                        entity, refused, ..
                    },
                ) = (&mut self.alerts, cmd)
                {
                    if refused {
                        alerts.refused(now, self.ledger.state(), entity);
                    } else {
                        alerts.cluster_spend(now, self.ledger.state(), entity);
                    }
                }
                if let (Some(node), Command::NodeGrant { entity, amount, .. }) =
                    (&mut self.node, cmd)
                {
                    let ready = node.answered(self.ledger.state(), now, entity, amount);
                    for (cmd, reply) in ready {
                        self.apply_and_reply(now, cmd, reply)?;
                    }
                    self.node_release(now)?;
                }
            }
            // Views first apply what the rings hold: a client that got its
            // response (settled in the ring before the last byte) and then
            // asks for the spend sees its own charge.
            Msg::View { entity, reply } => {
                self.drain_rings()?;
                let _ = reply.send(self.ledger.state().view(entity, now));
            }
            Msg::Views { entities, reply } => {
                self.drain_rings()?;
                let state = self.ledger.state();
                let views = entities.iter().map(|&e| state.view(e, now)).collect();
                let _ = reply.send(views);
            }
            Msg::WorkerView { entity, reply } => {
                self.drain_rings()?;
                let _ = reply.send(self.ledger.state().view(entity, now));
            }
            Msg::Refused { entity, reply } => {
                self.drain_rings()?;
                let _ = reply.send(self.ledger.state().view(entity, now));
                if let Some(alerts) = &mut self.alerts {
                    alerts.refused(now, self.ledger.state(), entity);
                }
            }
            Msg::Shutdown { reply } => return Ok(Flow::Stop(Some(reply))),
            Msg::EmitAlerts(list) => {
                if let Some(alerts) = &mut self.alerts {
                    alerts.emit(list);
                }
            }
            Msg::AlertPlan(plan) => {
                if let Some(alerts) = &mut self.alerts {
                    alerts.set_plan(plan);
                }
            }
            Msg::AlertState { reply } => {
                self.drain_rings()?;
                let state = match &self.alerts {
                    Some(alerts) => alerts.state(now, self.ledger.state()),
                    None => Vec::new(),
                };
                let _ = reply.send(state);
            }
            Msg::Crash => return Ok(Flow::Crash),
            Msg::ClusterRedeclare => {
                if let Some(node) = &mut self.node {
                    for e in self.ledger.state().shared_entities() {
                        node.charged(e);
                    }
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Applies a command and sends its reply; in cluster mode, a worker's
    /// lease grant may ask the cluster ahead of need.
    fn apply_and_reply(
        &mut self,
        now: i64,
        cmd: Command,
        reply: ReplyTo,
    ) -> Result<(), BooksError> {
        let r = self.apply(now, &cmd)?;
        if let (
            Some(node),
            Command::LeaseRequest { entity, need, .. },
            Reply::LeaseGrant { granted, .. },
        ) = (&mut self.node, cmd, &r)
        {
            if granted.is_positive() {
                node.after_grant(self.ledger.state(), now, entity, need);
            }
        }
        match reply {
            ReplyTo::None => {}
            ReplyTo::Async(tx) => {
                let _ = tx.send(r);
            }
            ReplyTo::Sync(tx) => {
                let _ = tx.send(r);
            }
        }
        Ok(())
    }

    /// Cluster mode, every iteration: lease requests that waited too long
    /// are answered from the cap as it is (fail closed), and the node's
    /// spend is pushed.
    fn node_tick(&mut self, now: i64) -> Result<(), BooksError> {
        let Some(node) = &mut self.node else {
            return Ok(());
        };
        for (cmd, reply) in node.timed_out(now) {
            self.apply_and_reply(now, cmd, reply)?;
        }
        self.node_release(now)?;
        if let Some(node) = &mut self.node {
            node.tick(self.ledger.state(), now, self.ledger.durable_seq());
        }
        Ok(())
    }

    /// Cluster mode: gives back the free node lease of entities the
    /// cluster refused ([`NodeLeases::take_releases`]).
    fn node_release(&mut self, now: i64) -> Result<(), BooksError> {
        let Some(node) = &mut self.node else {
            return Ok(());
        };
        for entity in node.take_releases(now) {
            let Some(view) = self.ledger.state().node_lease(entity, now) else {
                continue;
            };
            let cmd = Command::NodeRelease {
                entity,
                period_start_ms: view.period.start_ms,
            };
            if let Reply::NodeReleased { amount, .. } = self.apply(now, &cmd)? {
                if amount.is_positive() {
                    if let Some(node) = &mut self.node {
                        node.released(entity, view.period, amount);
                    }
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, now: i64, cmd: &Command) -> Result<Reply, BooksError> {
        let reply = self.ledger.apply(now, cmd)?;
        self.broadcast();
        self.observe_alerts(now);
        Ok(reply)
    }

    /// Shows the alert evaluator what the last apply changed.
    fn observe_alerts(&mut self, now: i64) {
        if let Some(alerts) = &mut self.alerts {
            alerts.after_apply(now, self.ledger.state());
        }
    }

    fn broadcast(&self) {
        for event in self.ledger.events() {
            match event {
                Event::Overrun { entity, amount } => {
                    self.stats
                        .last_overrun_entity
                        .store(u64::from(entity.0) + 1, Ordering::Relaxed);
                    self.stats.overruns.fetch_add(1, Ordering::Relaxed);
                    log::warn!("{entity} was charged {amount} beyond the lease that covered it");
                }
                Event::SoftLimitReached { .. } => {
                    self.stats
                        .soft_limits_reached
                        .fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            for w in &self.workers {
                match w.events.try_send(*event) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                        w.resync.store(true, Ordering::Release);
                    }
                    // The worker is gone; nothing to tell.
                    Err(TrySendError::Disconnected(_)) => continue,
                }
                // Takes the registered waker: one wake-up per drain, however
                // many events a burst (a rollover of every entity) posts.
                w.bell.wake();
            }
        }
    }

    /// Reads and applies a batch from every ring; returns how many settles.
    fn poll_rings(&mut self) -> Result<usize, BooksError> {
        let now = self.clock.now_ms();
        let mut total = 0;
        for i in 0..self.rings.len() {
            let mut batch: [Option<SettleRecord>; 64] = [None; 64];
            let mut from_ring = 0;
            loop {
                let mut k = 0;
                let n = self.rings[i].consumer.read(batch.len(), |_, rec| {
                    batch[k] = Some(*rec);
                    k += 1;
                })?;
                for rec in batch[..n].iter().flatten() {
                    apply_ring_settle(&mut self.ledger, now, rec, &self.stats)?;
                    if let Some(node) = &mut self.node {
                        for c in rec.charges.as_slice() {
                            node.charged(c.entity);
                        }
                    }
                    self.broadcast();
                    self.observe_alerts(now);
                }
                from_ring += n;
                if n < batch.len() || from_ring >= RING_READ_BATCH_MAX {
                    break;
                }
            }
            total += from_ring;
            if from_ring == 0 {
                // Nothing new: keep the marks as they are (moving a mark's seq
                // forward under command traffic could delay its release forever).
                continue;
            }
            let cursor = self.rings[i].consumer.read_cursor();
            let seq = self.ledger.state().journal_seq();
            let marks = &mut self.rings[i].marks;
            if marks.len() < RELEASE_MARKS_MAX {
                marks.push_back((cursor, seq));
            } else if let Some(last) = marks.back_mut() {
                // Moving the newest mark forward only delays its release: safe.
                *last = (cursor, seq);
            }
        }
        Ok(total)
    }

    fn drain_rings(&mut self) -> Result<(), BooksError> {
        while self.poll_rings()? > 0 {}
        Ok(())
    }

    fn rings_filling(&self) -> bool {
        self.rings
            .iter()
            .any(|r| r.consumer.unreleased() >= u64::from(r.consumer.slots()) / 2)
    }

    /// Releases ring slots whose settles are durable in the journal, and
    /// records how far it is durable in every ring (the journal's witness).
    fn release_rings(&mut self) {
        let durable = self.ledger.durable_seq();
        if durable > self.witnessed {
            for r in &mut self.rings {
                r.consumer.witness_durable(durable);
            }
            self.witnessed = durable;
        }
        for r in &mut self.rings {
            let mut release = None;
            while let Some(&(cursor, seq)) = r.marks.front() {
                if seq > durable {
                    break;
                }
                release = Some(cursor);
                r.marks.pop_front();
            }
            if let Some(cursor) = release {
                r.consumer.release(cursor);
            }
        }
    }
}
