//! Cluster mode's side of the ledger thread (decision 0016): the node
//! leases a node's ledger grants its workers from, and the messages that
//! ask the cluster thread for them and report this node's spend.
//!
//! The ledger state machine keeps, per shared entity, a node cap: the most
//! this node may commit in the period ([`crate::ledger::NodeLeaseView`]).
//! This module decides when to ask for more and what to do meanwhile:
//!
//! - A worker's lease request that the cap cannot cover waits here (at most
//!   [`NODE_PENDING_LEASES_MAX`], at most [`NODE_LEASE_WAIT_MS`]) while the
//!   cluster thread draws a node lease from Redis; the grant (or the
//!   refusal, or the time running out: the cluster is unreachable, so the
//!   request fails closed) applies it.
//! - After a grant leaves the cap low, a draw is asked ahead of need, so
//!   under steady load workers rarely wait.
//! - An entity the cluster refused stays blocked; it is asked again every
//!   [`NODE_REFUSED_RETRY_MS`] (other nodes' spend may settle below their
//!   leases, a limit may be raised).
//! - Every [`NODE_PUSH_INTERVAL_MS`], the spend of every shared entity
//!   charged since the last push goes to the cluster thread, as of a
//!   journal sequence the cluster thread waits to be durable before it
//!   writes it to Redis.
//!
//! Nothing here talks to Redis or blocks: the cluster thread does the I/O
//! and answers with [`Command::NodeGrant`] on the ledger's command channel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::budget::period::Period;
use crate::ledger::{Command, EntityId, LedgerState, NodeLeaseView};
use crate::money::Money;

/// Worker lease requests waiting for a node lease, across all entities.
/// Beyond it a request is answered from the cap as it is (it may be refused).
pub const NODE_PENDING_LEASES_MAX: usize = 4096;
/// The longest a worker's lease request waits for the cluster: past it the
/// request is answered from the cap as it is (fails closed while Redis is
/// unreachable).
pub const NODE_LEASE_WAIT_MS: i64 = 1000;
/// How often this node's spend is pushed to the cluster.
pub const NODE_PUSH_INTERVAL_MS: i64 = 100;
/// How often an entity the cluster refused is asked for again.
pub const NODE_REFUSED_RETRY_MS: i64 = 1000;
/// Bound of the channel from the ledger thread to the cluster thread.
pub const NODE_LEASE_QUEUE_MAX: usize = 4096;
/// A draw asks for this many requests' worth (the need of the request that
/// asked), so one draw serves many requests; the cluster caps it at a fair
/// share of what is left. Workers ask for everything (`want` = MAX: their
/// ledger cuts a fair share), so the node sizes its draws by need instead:
/// a node that drew by the workers' want would hold the cluster's budget
/// in leases it does not use while other nodes are refused.
pub const NODE_WANT_REQUESTS: i128 = 32;
/// Draws for one entity aim at about one per this interval: a draw asked
/// sooner after the last one asks for twice as much as that one (up to
/// [`NODE_WANT_SCALE_MAX`] times [`NODE_WANT_REQUESTS`]); one asked ten
/// intervals later, for half. So the Redis traffic of a busy budget stays
/// near one draw a second whatever its request rate, and a quiet one
/// holds little.
pub const NODE_DRAW_INTERVAL_MS: i64 = 1000;
pub const NODE_WANT_SCALE_MAX: i128 = 1 << 16;
/// A draw is asked ahead of need when what the cap leaves is below this
/// many requests per worker.
pub const NODE_LOW_WATER_REQUESTS_PER_WORKER: i128 = 4;
/// Most contributions in one push message.
pub const NODE_PUSH_BATCH_MAX: usize = 1024;

/// What the ledger thread asks of the cluster thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLeaseMsg {
    /// Draw a node lease for `entity` in `period`: all of `need` or
    /// nothing, ideally `want`. `spent`, `outstanding` and `seq` are this
    /// node's state (as of journal record `seq`), for the cluster thread's
    /// first call on the period's hash.
    Want {
        entity: EntityId,
        period: Period,
        limit: Money,
        /// The version of the cluster's definitions `limit` is as of.
        limit_version: u64,
        need: Money,
        want: Money,
        spent: Money,
        outstanding: Money,
        seq: u64,
    },
    /// This node's spend on each entity as of journal record `seq`.
    Push { seq: u64, spends: Vec<Contribution> },
    /// The ledger gave back `amount` of its node lease on `entity` in
    /// `period` (the cluster refused it, and what it held is too little
    /// for its requests): the cluster thread returns it to the hash.
    Release {
        entity: EntityId,
        period: Period,
        amount: Money,
    },
    /// Alerts this node would send: the cluster thread claims them, and
    /// hands the ones it won back to the ledger (`EmitAlerts`).
    Claim(Vec<crate::alerts::Alert>),
    /// The outbox has these claimed alerts (timestamp, claim id): their
    /// claims are kept, no other node takes them over.
    ClaimsKept(Vec<(i64, String)>),
}

/// One entity's spend on this node in a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contribution {
    pub entity: EntityId,
    pub period: Period,
    pub limit: Money,
    pub limit_version: u64,
    pub spent: Money,
    /// What this node may still spend of what it holds (for a first call).
    pub outstanding: Money,
}

/// The ledger thread's way to the cluster thread.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    pub tx: Sender<NodeLeaseMsg>,
    /// The last journal record known durable, published by the ledger
    /// thread: the cluster thread writes a contribution only once its
    /// record is on disk (a contribution Redis holds must never be above
    /// what the journal can give back after a crash).
    pub durable_seq: Arc<AtomicU64>,
    /// The version of the cluster's definitions (the admin API's overlay)
    /// this node has applied, published by the control plane once the
    /// ledger has its budgets: sent with each limit, so a node behind the
    /// cluster's is refused draws until it catches up.
    pub limit_version: Arc<AtomicU64>,
    /// What the ledger thread's cluster side counts.
    pub stats: Arc<NodeLeaseStats>,
}

impl ClusterLink {
    /// A link and the receiving end for the cluster thread.
    pub fn new() -> (ClusterLink, Receiver<NodeLeaseMsg>) {
        let (tx, rx) = crossbeam_channel::bounded(NODE_LEASE_QUEUE_MAX);
        (
            ClusterLink {
                tx,
                durable_seq: Arc::new(AtomicU64::new(0)),
                limit_version: Arc::new(AtomicU64::new(0)),
                stats: Arc::new(NodeLeaseStats::default()),
            },
            rx,
        )
    }

    /// Never blocks: `false` when the queue is full or the thread gone.
    fn send(&self, msg: NodeLeaseMsg) -> bool {
        self.tx.try_send(msg).is_ok()
    }
}

/// A worker's lease request waiting for a node lease.
pub(super) struct Waiting<R> {
    pub cmd: Command,
    pub reply: R,
    pub since_ms: i64,
}

/// The ledger thread's cluster state.
pub(super) struct NodeLeases<R> {
    link: ClusterLink,
    workers: u64,
    waiting: VecDeque<Waiting<R>>,
    /// Entities with a draw under way, and since when.
    drawing: HashMap<EntityId, i64>,
    /// Per entity, the scale of its draws and when it last asked for one
    /// ([`NODE_DRAW_INTERVAL_MS`]); at most one entry per shared entity.
    scale: HashMap<EntityId, (i128, i64)>,
    /// Entities the cluster refused, with the shortfall last asked for.
    refused: HashMap<EntityId, Money>,
    next_retry_ms: i64,
    /// Entities whose free node lease is to go back to the cluster.
    releases: Vec<EntityId>,
    dirty: Vec<EntityId>,
    dirty_set: HashSet<EntityId>,
    next_push_ms: i64,
    stats: Arc<NodeLeaseStats>,
}

/// What the ledger thread's cluster side counts.
#[derive(Debug, Default)]
pub struct NodeLeaseStats {
    /// Draws asked of the cluster thread.
    pub wants: AtomicU64,
    /// Worker lease requests that waited for a draw.
    pub waits: AtomicU64,
    /// ... and were answered from the cap as it was, the cluster silent.
    pub waits_timed_out: AtomicU64,
    /// Push messages sent to the cluster thread.
    pub pushes: AtomicU64,
    /// Messages the cluster thread's full queue did not take.
    pub sends_dropped: AtomicU64,
}

impl<R> NodeLeases<R> {
    pub fn new(link: ClusterLink, workers: u16) -> NodeLeases<R> {
        NodeLeases {
            workers: u64::from(workers.max(1)),
            waiting: VecDeque::new(),
            drawing: HashMap::new(),
            scale: HashMap::new(),
            refused: HashMap::new(),
            next_retry_ms: 0,
            releases: Vec::new(),
            dirty: Vec::new(),
            dirty_set: HashSet::new(),
            next_push_ms: 0,
            stats: Arc::clone(&link.stats),
            link,
        }
    }

    /// A worker asks for lease: `Some` hands the request back to be applied
    /// now; `None` keeps it until the cluster answers (a draw was asked).
    pub fn lease_request(
        &mut self,
        state: &LedgerState,
        now_ms: i64,
        cmd: Command,
        reply: R,
    ) -> Option<(Command, R)> {
        let Command::LeaseRequest { entity, need, .. } = cmd else {
            return Some((cmd, reply));
        };
        let Some(view) = state.node_lease(entity, now_ms) else {
            return Some((cmd, reply));
        };
        let short = view.shortfall(need);
        if short.is_zero() || view.refused || self.waiting.len() >= NODE_PENDING_LEASES_MAX {
            return Some((cmd, reply));
        }
        self.want(state, now_ms, entity, &view, short, need);
        self.stats.waits.fetch_add(1, Ordering::Relaxed);
        self.waiting.push_back(Waiting {
            cmd,
            reply,
            since_ms: now_ms,
        });
        None
    }

    /// After a worker's lease was applied: asks ahead of need when what the
    /// cap leaves is below what the workers would take in one round.
    pub fn after_grant(&mut self, state: &LedgerState, now_ms: i64, entity: EntityId, need: Money) {
        let Some(view) = state.node_lease(entity, now_ms) else {
            return;
        };
        if view.refused {
            return;
        }
        let round = need
            .picodollars()
            .saturating_mul(NODE_LOW_WATER_REQUESTS_PER_WORKER * i128::from(self.workers));
        let left = view.cap.picodollars() - view.committed.picodollars();
        if left < round {
            self.want(state, now_ms, entity, &view, Money::ZERO, need);
        }
    }

    fn want(
        &mut self,
        state: &LedgerState,
        now_ms: i64,
        entity: EntityId,
        view: &NodeLeaseView,
        need: Money,
        request_need: Money,
    ) {
        if self
            .drawing
            .get(&entity)
            .is_some_and(|since| now_ms - since < NODE_LEASE_WAIT_MS)
        {
            return;
        }
        let (scale, last) = self
            .scale
            .get(&entity)
            .copied()
            .unwrap_or((1, i64::MIN / 2));
        let since = now_ms.saturating_sub(last);
        let scale = if since < NODE_DRAW_INTERVAL_MS {
            (scale * 2).min(NODE_WANT_SCALE_MAX)
        } else if since > 10 * NODE_DRAW_INTERVAL_MS {
            (scale / 2).max(1)
        } else {
            scale
        };
        self.scale.insert(entity, (scale, now_ms));
        let each = request_need.max(need).picodollars();
        let want = need
            .picodollars()
            .saturating_add(each.saturating_mul(NODE_WANT_REQUESTS * scale));
        // Never more than the limit (a worker may ask for a large slice;
        // the cluster's share caps it anyway, and amounts must fit its
        // scripts' range).
        let want =
            Money::from_picodollars(want.min(view.limit.picodollars())).unwrap_or(view.limit);
        // Read before the ledger's state is (it is published after the
        // ledger applied the definitions): a limit sent with a version is
        // never older than that version's.
        let limit_version = self.link.limit_version.load(Ordering::Acquire);
        let msg = NodeLeaseMsg::Want {
            entity,
            period: view.period,
            limit: view.limit,
            limit_version,
            need,
            want,
            spent: view.spent,
            outstanding: outstanding(view),
            seq: state.journal_seq(),
        };
        if self.link.send(msg) {
            self.stats.wants.fetch_add(1, Ordering::Relaxed);
            self.drawing.insert(entity, now_ms);
        } else {
            self.stats.sends_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The cluster answered a draw for `entity` (applied already): returns
    /// the waiting requests to apply now, in order. Those still short after
    /// a grant ask again and keep waiting.
    pub fn answered(
        &mut self,
        state: &LedgerState,
        now_ms: i64,
        entity: EntityId,
        amount: Money,
    ) -> Vec<(Command, R)> {
        self.drawing.remove(&entity);
        if amount.is_zero() {
            let need = self
                .waiting
                .iter()
                .filter_map(|w| match w.cmd {
                    Command::LeaseRequest {
                        entity: e, need, ..
                    } if e == entity => Some(need),
                    _ => None,
                })
                .max()
                .unwrap_or(Money::UNIT);
            self.refused.insert(entity, need);
            self.releases.push(entity);
        } else {
            self.refused.remove(&entity);
        }
        let mut ready = Vec::new();
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        let mut asked = false;
        while let Some(w) = self.waiting.pop_front() {
            let Command::LeaseRequest {
                entity: e, need, ..
            } = w.cmd
            else {
                ready.push((w.cmd, w.reply));
                continue;
            };
            if e != entity {
                keep.push_back(w);
                continue;
            }
            let view = state.node_lease(entity, now_ms);
            let short = view.map_or(Money::ZERO, |v| v.shortfall(need));
            if amount.is_zero() || short.is_zero() || view.is_none() {
                ready.push((w.cmd, w.reply));
            } else {
                if !asked {
                    if let Some(v) = view {
                        self.want(state, now_ms, entity, &v, short, need);
                    }
                    asked = true;
                }
                keep.push_back(w);
            }
        }
        self.waiting = keep;
        ready
    }

    /// Entities whose free node lease goes back to the cluster now: those
    /// just refused, and every refused one when it is asked again (workers
    /// give back their leases once blocked). Released before the retry
    /// asks: several nodes' remainders, each too small, make one that
    /// serves.
    pub fn take_releases(&mut self, now_ms: i64) -> Vec<EntityId> {
        let mut out = std::mem::take(&mut self.releases);
        if now_ms >= self.next_retry_ms {
            out.extend(self.refused.keys().copied());
        }
        out.sort_unstable_by_key(|e| e.0);
        out.dedup();
        out
    }

    /// The ledger gave back `amount` of the node lease (see
    /// [`NodeLeaseMsg::Release`]).
    pub fn released(&mut self, entity: EntityId, period: Period, amount: Money) {
        if !self.link.send(NodeLeaseMsg::Release {
            entity,
            period,
            amount,
        }) {
            // The cluster counts it leased until it expires (held until
            // this node next declares): never more than was granted.
            self.stats.sends_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests that waited too long (the cluster did not answer): to be
    /// applied now, from the cap as it is.
    pub fn timed_out(&mut self, now_ms: i64) -> Vec<(Command, R)> {
        let mut out = Vec::new();
        while self
            .waiting
            .front()
            .is_some_and(|w| now_ms - w.since_ms >= NODE_LEASE_WAIT_MS)
        {
            if let Some(w) = self.waiting.pop_front() {
                self.stats.waits_timed_out.fetch_add(1, Ordering::Relaxed);
                out.push((w.cmd, w.reply));
            }
        }
        out
    }

    /// Notes entities whose spend changed, for the next push.
    pub fn charged(&mut self, entity: EntityId) {
        if self.dirty_set.insert(entity) {
            self.dirty.push(entity);
        }
    }

    /// Every interval: publishes the durable journal position, pushes the
    /// spend of entities charged since the last push, and asks again for
    /// refused entities.
    pub fn tick(&mut self, state: &LedgerState, now_ms: i64, durable_seq: u64) {
        self.link.durable_seq.store(durable_seq, Ordering::Release);
        if now_ms >= self.next_push_ms && !self.dirty.is_empty() {
            self.next_push_ms = now_ms + NODE_PUSH_INTERVAL_MS;
            let seq = state.journal_seq();
            let limit_version = self.link.limit_version.load(Ordering::Acquire);
            while !self.dirty.is_empty() {
                let take = self.dirty.len().min(NODE_PUSH_BATCH_MAX);
                let spends: Vec<Contribution> = self.dirty[self.dirty.len() - take..]
                    .iter()
                    .filter_map(|&entity| {
                        let v = state.node_lease(entity, now_ms)?;
                        Some(Contribution {
                            entity,
                            period: v.period,
                            limit: v.limit,
                            limit_version,
                            spent: v.spent,
                            outstanding: outstanding(&v),
                        })
                    })
                    .collect();
                if !self.link.send(NodeLeaseMsg::Push { seq, spends }) {
                    // Full: the rest waits for the next interval.
                    self.stats.sends_dropped.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                self.stats.pushes.fetch_add(1, Ordering::Relaxed);
                for e in self.dirty.drain(self.dirty.len() - take..) {
                    self.dirty_set.remove(&e);
                }
            }
        }
        if now_ms >= self.next_retry_ms && !self.refused.is_empty() {
            self.next_retry_ms = now_ms + NODE_REFUSED_RETRY_MS;
            let refused: Vec<(EntityId, Money)> =
                self.refused.iter().map(|(e, m)| (*e, *m)).collect();
            for (entity, need) in refused {
                match state.node_lease(entity, now_ms) {
                    Some(v) => self.want(state, now_ms, entity, &v, need, need),
                    None => {
                        self.refused.remove(&entity);
                    }
                }
            }
        }
    }

    /// Whether requests wait (the thread must not doze).
    pub fn busy(&self) -> bool {
        !self.waiting.is_empty()
            || !self.dirty.is_empty()
            || !self.refused.is_empty()
            || !self.releases.is_empty()
    }
}

/// What a node may still spend of what it holds: its cap less its spend.
fn outstanding(v: &NodeLeaseView) -> Money {
    let left = v.cap.picodollars() - v.spent.picodollars();
    Money::from_picodollars(left.max(0)).unwrap_or(Money::MAX)
}
