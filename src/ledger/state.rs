//! The ledger state machine: deterministic, single-threaded, no I/O, no clock.
//!
//! [`LedgerState::apply`] takes the caller's clock (`now_ms`) and one
//! [`Command`], and returns one [`Reply`]. Alongside, it leaves in reusable
//! buffers the [`Event`]s to broadcast to workers (block/unblock, new period)
//! and the durable [`Record`]s to append to the journal. Replaying those records
//! with [`LedgerState::replay`] rebuilds the same books.
//!
//! The state is split in two:
//! - the books (durable): per entity its budget, anchor, current period and
//!   epoch, spent in the period, top-ups, lifetime spend; the journal position;
//!   the window of settled request ids. Every change to them is a [`Record`].
//! - the volatile part: leases held by workers, the strict-mode excess
//!   allowance, block flags, the rollover queue. Leases live and die with the
//!   worker threads of this process, so they are never journaled: after a
//!   restart every worker is new and holds nothing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fmt;

use crate::budget::period::{clamp_time_ms, Alignment, Period};
use crate::budget::{Budget, Mode};
use crate::money::Money;

use super::messages::*;
use super::settled::SettledIds;

/// Default number of recent settled request ids remembered to refuse a
/// duplicate settle.
pub const SETTLED_IDS_MAX_DEFAULT: u32 = 1 << 20;
/// Hard ceiling on the settled-id window (memory: ~50 bytes per id).
pub const SETTLED_IDS_MAX_CEILING: u32 = 1 << 24;
/// Most rollovers one `Tick` performs; the reply says when more are due, so a
/// calendar boundary for a million entities never stalls the ledger thread.
pub const TICK_ROLLOVERS_MAX: u32 = 4096;
/// The fair share of a grant is `remaining / (LEASE_SHARE_DIVISOR_PER_WORKER ×
/// workers)`: every worker can take a slice, and half the remainder is always
/// left for the next ask, so slices shrink geometrically near the limit.
pub const LEASE_SHARE_DIVISOR_PER_WORKER: u64 = 2;

const _: () = assert!(SETTLED_IDS_MAX_DEFAULT <= SETTLED_IDS_MAX_CEILING);

/// Construction-time bounds of one ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateConfig {
    /// Worker threads (ids `0..workers`), 1..=[`LEDGER_WORKERS_MAX`].
    pub workers: u16,
    /// Recent settled request ids remembered to refuse duplicates,
    /// 1..=[`SETTLED_IDS_MAX_CEILING`].
    pub settled_ids_max: u32,
    /// Cluster mode (decision 0016): every budget is shared with other
    /// nodes, and this node may grant its workers only what the cluster
    /// granted it (its node cap), not its whole limit.
    pub cluster: bool,
}

impl Default for StateConfig {
    fn default() -> StateConfig {
        StateConfig {
            workers: 1,
            settled_ids_max: SETTLED_IDS_MAX_DEFAULT,
            cluster: false,
        }
    }
}

impl StateConfig {
    pub fn validate(&self) -> Result<(), BooksError> {
        if self.workers == 0 || self.workers > LEDGER_WORKERS_MAX {
            return Err(BooksError(format!(
                "workers must be 1..={LEDGER_WORKERS_MAX}, got {}",
                self.workers
            )));
        }
        if self.settled_ids_max == 0 || self.settled_ids_max > SETTLED_IDS_MAX_CEILING {
            return Err(BooksError(format!(
                "settled_ids_max must be 1..={SETTLED_IDS_MAX_CEILING}, got {}",
                self.settled_ids_max
            )));
        }
        Ok(())
    }
}

/// The books of one entity, as snapshotted and compared by tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityBooks {
    pub id: EntityId,
    pub kind: EntityKind,
    pub budget: Option<Budget>,
    /// When the entity was created: the origin of rolling periods.
    pub anchor_ms: i64,
    pub period: Period,
    /// Bumped at every rollover and manual reset.
    pub epoch: u64,
    pub spent: Money,
    /// Prepaid credit from top-ups (counts only while the budget is prepaid).
    pub topup: Money,
    pub lifetime_spent: Money,
}

/// All durable state: what a snapshot holds and replay rebuilds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Books {
    /// The last journal record these books include.
    pub journal_seq: u64,
    /// Sorted by id.
    pub entities: Vec<EntityBooks>,
    /// Oldest first.
    pub settled_ids: Vec<u128>,
}

/// An entity as of a moment: what spend queries and 402 replies show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityView {
    pub id: EntityId,
    pub kind: EntityKind,
    pub budget: Option<Budget>,
    pub period: Period,
    pub epoch: u64,
    pub spent: Money,
    /// Outstanding leases (reserved by workers, not yet settled).
    pub leased: Money,
    pub topup: Money,
    pub lifetime_spent: Money,
    /// Limit plus prepaid top-ups; `None`: no limit.
    pub limit_effective: Option<Money>,
    /// Limit minus spent, never negative (leases not subtracted: a customer's
    /// view). `None`: no limit.
    pub remaining: Option<Money>,
    /// Spent past the limit (soft mode, or a strict overrun).
    pub overshoot: Money,
    /// Strict only: how far `spent + leased` may be over the limit through no
    /// grant of the ledger's (an overrun or a lowered limit); zero normally.
    pub excess: Money,
    pub blocked: bool,
    /// This node's spend in the period. Equal to `spent` on a single node;
    /// in cluster mode `spent` is the cluster's (this node's plus what the
    /// other nodes had pushed when Redis last said).
    pub node_spent: Money,
}

/// An entity's node lease in cluster mode ([`LedgerState::node_lease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLeaseView {
    /// The period the node lease belongs to (the cluster's key for it).
    pub period: Period,
    /// The budget's limit plus prepaid credit: the cluster-wide limit.
    pub limit: Money,
    /// This node's spend in the period: its contribution.
    pub spent: Money,
    /// The most this node may commit in the period.
    pub cap: Money,
    /// Spent plus what workers hold.
    pub committed: Money,
    /// The cluster refused the last draw.
    pub refused: bool,
}

impl NodeLeaseView {
    /// What a draw must bring for a request needing `need` more: the need
    /// beyond what the cap leaves, plus what is committed past the cap
    /// (leases carried into a new period).
    pub fn shortfall(&self, need: Money) -> Money {
        let left = self.cap.picodollars() - self.committed.picodollars();
        money_clamped((need.picodollars() - left).max(0))
    }
}

/// What [`LedgerState::spend_probe`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendProbe {
    pub epoch: u64,
    pub period_end_ms: i64,
    pub spent: Money,
    pub limit_effective: Option<Money>,
    pub soft_limit: Option<Money>,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    worker: u16,
    /// Always positive: a lease that reaches zero is removed.
    amount: Money,
}

#[derive(Debug, Clone)]
struct Entity {
    // Books.
    kind: EntityKind,
    budget: Option<Budget>,
    anchor_ms: i64,
    period: Period,
    epoch: u64,
    spent: Money,
    topup: Money,
    lifetime_spent: Money,
    // Volatile.
    leases: Vec<Lease>,
    leased: Money,
    /// Strict only: how far `spent + leased` may be above the effective limit
    /// through no grant of the ledger's (uncovered charges, a lowered limit).
    /// Never raised by a grant; lowered as commitments drain.
    excess: Money,
    blocked: bool,
    soft_reached: bool,
    /// Cluster mode, a budgeted entity: the most this node may commit in
    /// the period (what it had spent when the process started or the
    /// period began, plus every node lease the cluster granted it since).
    /// `None`: not shared (single node, or no budget).
    node_cap: Option<Money>,
    /// Cluster mode: the cluster refused this node's last draw (nothing
    /// left in the cluster), so a node cap used up blocks the workers.
    /// Until then a used-up cap only means "ask the cluster".
    cluster_refused: bool,
    /// Cluster mode: what the other nodes have spent in the period, as
    /// Redis last said (views and alerts add it to `spent`).
    others_spent: Money,
}

impl Entity {
    fn new(kind: EntityKind, budget: Option<Budget>, anchor_ms: i64, now_ms: i64) -> Entity {
        Entity {
            kind,
            budget,
            anchor_ms,
            period: period_for(budget.as_ref(), anchor_ms, now_ms),
            epoch: 0,
            spent: Money::ZERO,
            topup: Money::ZERO,
            lifetime_spent: Money::ZERO,
            leases: Vec::new(),
            leased: Money::ZERO,
            excess: Money::ZERO,
            blocked: false,
            soft_reached: false,
            node_cap: None,
            cluster_refused: false,
            others_spent: Money::ZERO,
        }
    }

    /// Limit plus prepaid credit, in units (may exceed Money::MAX by up to MAX).
    fn limit_effective(&self) -> Option<i128> {
        let budget = self.budget.as_ref()?;
        let credit = if budget.is_prepaid() {
            self.topup.picodollars()
        } else {
            0
        };
        Some(budget.limit.picodollars() + credit)
    }

    /// What this node may commit: the limit, or in cluster mode the lower
    /// of the limit and the node cap.
    fn grant_limit(&self) -> Option<i128> {
        let limit = self.limit_effective()?;
        Some(match self.node_cap {
            Some(cap) => limit.min(cap.picodollars()),
            None => limit,
        })
    }

    fn committed(&self) -> i128 {
        self.spent.picodollars() + self.leased.picodollars()
    }

    /// What may still be granted; `None`: no limit.
    fn grantable(&self) -> Option<i128> {
        self.grant_limit().map(|l| (l - self.committed()).max(0))
    }

    /// Cluster mode: sets the node cap to what is committed now (nothing
    /// more may be granted until the cluster grants a node lease), or clears
    /// it for an entity without a budget or outside cluster mode.
    fn reset_node_cap(&mut self, cluster: bool) {
        self.node_cap = (cluster && self.budget.is_some()).then(|| money_clamped(self.committed()));
        self.cluster_refused = false;
    }

    fn is_strict(&self) -> bool {
        matches!(
            self.budget,
            Some(Budget {
                mode: Mode::Strict,
                ..
            })
        )
    }

    fn lease_of(&self, worker: u16) -> Money {
        self.leases
            .iter()
            .find(|l| l.worker == worker)
            .map_or(Money::ZERO, |l| l.amount)
    }

    /// Adds `amount` (positive) to a worker's lease. The caller checked bounds.
    fn lease_add(&mut self, worker: u16, amount: Money) {
        debug_assert!(amount.is_positive());
        match self.leases.iter_mut().find(|l| l.worker == worker) {
            Some(lease) => lease.amount = money(lease.amount.picodollars() + amount.picodollars()),
            None => self.leases.push(Lease { worker, amount }),
        }
        self.leased = money(self.leased.picodollars() + amount.picodollars());
    }

    /// Takes up to `amount` from a worker's lease; returns what was taken.
    fn lease_take(&mut self, worker: u16, amount: Money) -> Money {
        let Some(i) = self.leases.iter().position(|l| l.worker == worker) else {
            return Money::ZERO;
        };
        let taken = self.leases[i].amount.min(amount);
        let left = self.leases[i].amount.picodollars() - taken.picodollars();
        if left == 0 {
            self.leases.swap_remove(i);
        } else {
            self.leases[i].amount = money(left);
        }
        self.leased = money(self.leased.picodollars() - taken.picodollars());
        taken
    }

    /// Lowers the excess allowance as far as commitments allow. Never raises it.
    fn drain_excess(&mut self) {
        let over = match (self.is_strict(), self.grant_limit()) {
            (true, Some(limit)) => (self.committed() - limit).max(0),
            _ => 0,
        };
        self.excess = money(self.excess.picodollars().min(over));
    }

    /// Sets the excess allowance to exactly what is committed past the limit:
    /// after a budget change or a recovery, when the past cannot be un-committed.
    fn excuse_current_excess(&mut self) {
        self.excess = match (self.is_strict(), self.grant_limit()) {
            (true, Some(limit)) => money_clamped((self.committed() - limit).max(0)),
            _ => Money::ZERO,
        };
    }

    /// Nothing left to grant; in cluster mode, nothing left in the cluster
    /// either (a used-up node cap alone is a reason to draw, not to refuse).
    fn is_blocked(&self) -> bool {
        self.grantable() == Some(0) && (self.node_cap.is_none() || self.cluster_refused)
    }

    fn books(&self, id: EntityId) -> EntityBooks {
        EntityBooks {
            id,
            kind: self.kind,
            budget: self.budget,
            anchor_ms: self.anchor_ms,
            period: self.period,
            epoch: self.epoch,
            spent: self.spent,
            topup: self.topup,
            lifetime_spent: self.lifetime_spent,
        }
    }
}

fn period_for(budget: Option<&Budget>, anchor_ms: i64, now_ms: i64) -> Period {
    match budget {
        Some(b) if !b.is_prepaid() => b.period_containing(anchor_ms, now_ms),
        _ => Period::forever(anchor_ms),
    }
}

/// Units known to be within ±MAX.
fn money(units: i128) -> Money {
    debug_assert!(Money::from_picodollars(units).is_some(), "{units}");
    Money::from_picodollars(units).unwrap_or(if units < 0 { Money::MIN } else { Money::MAX })
}

/// Units that may exceed the bound (limit plus credit), clamped for display.
fn money_clamped(units: i128) -> Money {
    Money::from_picodollars(units).unwrap_or(if units < 0 { Money::MIN } else { Money::MAX })
}

/// The ledger's state machine. See the module docs.
pub struct LedgerState {
    config: StateConfig,
    /// Indexed by entity id; `None` for ids not (yet) created.
    entities: Vec<Option<Entity>>,
    entity_count: u32,
    settled: SettledIds,
    journal_seq: u64,
    /// Period ends to roll over, earliest first. Entries go stale when an entity
    /// rolls over lazily or changes budget; stale entries are skipped.
    rollovers: BinaryHeap<Reverse<(i64, u32)>>,
    /// Output buffers of the last `apply`, reused.
    events: Vec<Event>,
    records: Vec<Record>,
}

impl fmt::Debug for LedgerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerState")
            .field("config", &self.config)
            .field("entities", &self.entity_count)
            .field("journal_seq", &self.journal_seq)
            .finish_non_exhaustive()
    }
}

impl LedgerState {
    /// An empty ledger. Allocates the settled-id window up front.
    pub fn new(config: StateConfig) -> Result<LedgerState, BooksError> {
        config.validate()?;
        Ok(LedgerState {
            config,
            entities: Vec::new(),
            entity_count: 0,
            settled: SettledIds::new(config.settled_ids_max),
            journal_seq: 0,
            rollovers: BinaryHeap::new(),
            events: Vec::with_capacity(CHARGES_PER_SETTLE_MAX * 4),
            records: Vec::with_capacity(CHARGES_PER_SETTLE_MAX + 1),
        })
    }

    pub fn config(&self) -> StateConfig {
        self.config
    }

    /// The last journal record the books include.
    pub fn journal_seq(&self) -> u64 {
        self.journal_seq
    }

    pub fn entity_count(&self) -> u32 {
        self.entity_count
    }

    /// Events produced by the last `apply` (to broadcast to workers).
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Durable records produced by the last `apply` (to append to the journal).
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Whether a settle with this request id would be refused as a duplicate.
    pub fn is_settled(&self, request_id: u128) -> bool {
        self.settled.contains(request_id)
    }

    /// Applies one command at `now_ms` (unix ms, the caller's clock).
    pub fn apply(&mut self, now_ms: i64, cmd: &Command) -> Reply {
        self.events.clear();
        self.records.clear();
        let now_ms = clamp_time_ms(now_ms);
        let reply = match *cmd {
            Command::LeaseRequest {
                worker,
                entity,
                need,
                want,
            } => self.lease_request(now_ms, worker, entity, need, want),
            Command::LeaseReturn {
                worker,
                entity,
                amount,
            } => self.lease_return(now_ms, worker, entity, amount),
            Command::Settle {
                request_id,
                worker,
                estimated,
                ref charges,
            } => self.settle(now_ms, request_id, worker, estimated, charges),
            Command::WorkerLost { worker } => self.worker_lost(worker),
            Command::Reset { entity } => self.reset(now_ms, entity),
            Command::TopUp { entity, amount } => self.top_up(now_ms, entity, amount),
            Command::SetBudget {
                entity,
                kind,
                budget,
            } => self.set_budget(now_ms, entity, kind, budget),
            Command::Tick => self.tick(now_ms),
            Command::NodeGrant {
                entity,
                period_start_ms,
                amount,
            } => self.node_grant(now_ms, entity, period_start_ms, amount),
            Command::ClusterSpend {
                entity,
                period_start_ms,
                others,
                ..
            } => self.cluster_spend(now_ms, entity, period_start_ms, others),
            Command::ClusterReset {
                entity,
                period_start_ms,
            } => self.cluster_reset(now_ms, entity, period_start_ms),
            Command::ClusterTopUp { entity, total } => self.cluster_top_up(now_ms, entity, total),
            Command::NodeRelease {
                entity,
                period_start_ms,
            } => self.node_release(now_ms, entity, period_start_ms),
        };
        if cfg!(debug_assertions) {
            self.check_last_apply(cmd);
        }
        reply
    }

    fn check_worker(&self, worker: u16) -> Result<(), CommandError> {
        if worker >= self.config.workers {
            return Err(CommandError::WorkerOutOfRange {
                worker,
                workers: self.config.workers,
            });
        }
        Ok(())
    }

    fn index(&self, id: EntityId) -> Result<usize, CommandError> {
        if id.0 >= ENTITIES_MAX {
            return Err(CommandError::EntityOutOfRange(id));
        }
        match self.entities.get(id.0 as usize) {
            Some(Some(_)) => Ok(id.0 as usize),
            _ => Err(CommandError::UnknownEntity(id)),
        }
    }

    fn entity(&self, index: usize) -> &Entity {
        self.entities[index]
            .as_ref()
            .expect("index() checked the entity exists")
    }

    fn entity_mut(&mut self, index: usize) -> &mut Entity {
        self.entities[index]
            .as_mut()
            .expect("index() checked the entity exists")
    }

    fn push_record(&mut self, now_ms: i64, body: RecordBody) -> u64 {
        self.journal_seq += 1;
        self.records.push(Record {
            seq: self.journal_seq,
            now_ms,
            body,
        });
        self.journal_seq
    }

    fn schedule_rollover(&mut self, index: usize) {
        let end_ms = self.entity(index).period.end_ms;
        if end_ms != crate::budget::period::TIME_MS_NEVER {
            self.rollovers.push(Reverse((end_ms, index as u32)));
        }
        // Stale entries pile up only through budget changes; rebuild when they dominate.
        if self.rollovers.len() > 2 * self.entity_count as usize + 1024 {
            self.rebuild_rollovers();
        }
    }

    fn rebuild_rollovers(&mut self) {
        self.rollovers.clear();
        for (index, e) in self.entities.iter().enumerate() {
            if let Some(e) = e {
                if !e.period.is_forever() {
                    self.rollovers
                        .push(Reverse((e.period.end_ms, index as u32)));
                }
            }
        }
    }

    /// Rolls the entity into the period containing `now_ms` if its period ended.
    fn roll_if_due(&mut self, now_ms: i64, index: usize) {
        let e = self.entity(index);
        if now_ms < e.period.end_ms {
            return;
        }
        let period = period_for(e.budget.as_ref(), e.anchor_ms, now_ms);
        // Periods of one rule tile time (from_books checks snapshots for it).
        debug_assert!(period.start_ms >= e.period.end_ms);
        self.roll_to(index, period);
        let e = self.entity_mut(index);
        if e.node_cap.is_some() {
            // The leases carried over were drawn in the old period's node
            // lease: in the new one the node must draw them again (its next
            // draw asks for them), so until then they are excused.
            e.excuse_current_excess();
        } else {
            e.drain_excess();
        }
        let (epoch, period) = (e.epoch, e.period);
        self.push_record(
            now_ms,
            RecordBody::Rollover {
                entity: EntityId(index as u32),
                period_start_ms: period.start_ms,
            },
        );
        self.events.push(Event::NewEpoch {
            entity: EntityId(index as u32),
            epoch,
            period,
            manual: false,
        });
        self.schedule_rollover(index);
        self.refresh_flags(index);
    }

    /// The books' side of a rollover (shared with replay). Leases carry over:
    /// they are reservations of budget not yet spent, and the new period starts
    /// with them committed, so `spent + leased <= limit` still holds.
    fn roll_to(&mut self, index: usize, period: Period) {
        let e = self.entity_mut(index);
        e.period = period;
        e.epoch += 1;
        e.spent = Money::ZERO;
        e.soft_reached = false;
        if e.node_cap.is_some() {
            // A new period is a new node lease in the cluster: nothing drawn.
            e.node_cap = Some(Money::ZERO);
            e.cluster_refused = false;
        }
        e.others_spent = Money::ZERO;
    }

    /// Emits Blocked/Unblocked/SoftLimitReached for changes of the entity's flags.
    fn refresh_flags(&mut self, index: usize) {
        let id = EntityId(index as u32);
        let e = self.entity_mut(index);
        let blocked = e.is_blocked();
        let mut events: [Option<Event>; 2] = [None, None];
        if blocked != e.blocked {
            e.blocked = blocked;
            events[0] = Some(if blocked {
                Event::Blocked {
                    entity: id,
                    epoch: e.epoch,
                }
            } else {
                Event::Unblocked {
                    entity: id,
                    epoch: e.epoch,
                    remaining: money_clamped(e.grantable().unwrap_or(0)),
                }
            });
        }
        let soft_reached = match e.budget.and_then(|b| b.soft_limit) {
            Some(soft) => e.spent >= soft,
            None => false,
        };
        if soft_reached && !e.soft_reached {
            events[1] = Some(Event::SoftLimitReached {
                entity: id,
                epoch: e.epoch,
                spent: e.spent,
            });
        }
        e.soft_reached = soft_reached;
        self.events.extend(events.into_iter().flatten());
    }

    fn lease_request(
        &mut self,
        now_ms: i64,
        worker: u16,
        id: EntityId,
        need: Money,
        want: Money,
    ) -> Reply {
        let index = match self.check_worker(worker).and_then(|()| self.index(id)) {
            Ok(index) => index,
            Err(e) => return Reply::Rejected(e),
        };
        if need.is_negative() || want.is_negative() {
            return Reply::Rejected(CommandError::NegativeAmount);
        }
        self.roll_if_due(now_ms, index);
        let divisor = LEASE_SHARE_DIVISOR_PER_WORKER * u64::from(self.config.workers);
        let e = self.entity(index);
        let want = want.max(need);
        let granted = match e.grantable() {
            None => want,
            Some(grantable) => {
                let share = grantable / i128::from(divisor);
                let grant = want
                    .picodollars()
                    .min(share.max(need.picodollars()))
                    .min(grantable);
                if grant < need.picodollars() {
                    Money::ZERO
                } else {
                    money(grant)
                }
            }
        };
        if granted.is_positive() {
            if e.leased.checked_add(granted).is_none() {
                return Reply::Rejected(CommandError::Overflow(id));
            }
            self.entity_mut(index).lease_add(worker, granted);
        }
        self.refresh_flags(index);
        let e = self.entity(index);
        Reply::LeaseGrant {
            entity: id,
            granted,
            epoch: e.epoch,
            remaining: e.grantable().map(money_clamped),
        }
    }

    fn lease_return(&mut self, now_ms: i64, worker: u16, id: EntityId, amount: Money) -> Reply {
        let index = match self.check_worker(worker).and_then(|()| self.index(id)) {
            Ok(index) => index,
            Err(e) => return Reply::Rejected(e),
        };
        if amount.is_negative() {
            return Reply::Rejected(CommandError::NegativeAmount);
        }
        self.roll_if_due(now_ms, index);
        let e = self.entity_mut(index);
        let returned = e.lease_take(worker, amount);
        e.drain_excess();
        self.refresh_flags(index);
        Reply::LeaseReturned {
            entity: id,
            returned,
        }
    }

    fn settle(
        &mut self,
        now_ms: i64,
        request_id: u128,
        worker: u16,
        estimated: bool,
        charges: &Charges,
    ) -> Reply {
        if self.settled.contains(request_id) {
            return Reply::Duplicate { request_id };
        }
        // Validate everything before changing anything.
        let mut indexes = [0usize; CHARGES_PER_SETTLE_MAX];
        if let Err(e) = self.validate_settle(worker, charges, &mut indexes) {
            return Reply::Rejected(e);
        }
        let indexes = &indexes[..charges.len()];
        for &index in indexes {
            self.roll_if_due(now_ms, index);
        }
        let mut charged: i128 = 0;
        for (c, &index) in charges.as_slice().iter().zip(indexes) {
            let e = self.entity(index);
            if e.spent.checked_add(c.amount).is_none()
                || e.lifetime_spent.checked_add(c.amount).is_none()
            {
                return Reply::Rejected(CommandError::Overflow(c.entity));
            }
            charged += c.amount.picodollars();
        }
        let Some(charged) = Money::from_picodollars(charged) else {
            return Reply::Rejected(CommandError::Overflow(charges.as_slice()[0].entity));
        };
        // Commit.
        let mut uncovered_total: i128 = 0;
        for (c, &index) in charges.as_slice().iter().zip(indexes) {
            let e = self.entity_mut(index);
            let covered = if c.from_lease {
                e.lease_take(worker, c.amount)
            } else {
                Money::ZERO
            };
            let uncovered = c.amount.picodollars() - covered.picodollars();
            e.spent = money(e.spent.picodollars() + c.amount.picodollars());
            e.lifetime_spent = money(e.lifetime_spent.picodollars() + c.amount.picodollars());
            if uncovered > 0 && e.is_strict() {
                // Real spend is recorded even when it bypassed the reservation;
                // the allowance says the ledger did not grant it.
                e.excess = money_clamped(e.excess.picodollars() + uncovered);
                self.events.push(Event::Overrun {
                    entity: c.entity,
                    amount: money(uncovered),
                });
            }
            if uncovered > 0 && self.entity(index).is_strict() {
                uncovered_total += uncovered;
            }
            self.entity_mut(index).drain_excess();
            self.refresh_flags(index);
        }
        self.settled.insert(request_id);
        let seq = self.push_record(
            now_ms,
            RecordBody::Settle {
                request_id,
                worker,
                estimated,
                charges: *charges,
            },
        );
        Reply::Settled {
            request_id,
            seq,
            charged,
            uncovered: money_clamped(uncovered_total),
        }
    }

    fn validate_settle(
        &self,
        worker: u16,
        charges: &Charges,
        indexes: &mut [usize; CHARGES_PER_SETTLE_MAX],
    ) -> Result<(), CommandError> {
        self.check_worker(worker)?;
        if charges.is_empty() {
            return Err(CommandError::ChargesEmpty);
        }
        for (i, c) in charges.as_slice().iter().enumerate() {
            indexes[i] = self.index(c.entity)?;
            if c.amount.is_negative() {
                return Err(CommandError::NegativeAmount);
            }
            if charges.as_slice()[..i].iter().any(|d| d.entity == c.entity) {
                return Err(CommandError::ChargeEntityRepeated(c.entity));
            }
        }
        Ok(())
    }

    fn worker_lost(&mut self, worker: u16) -> Reply {
        if let Err(e) = self.check_worker(worker) {
            return Reply::Rejected(e);
        }
        let mut leases_expired = 0;
        for index in 0..self.entities.len() {
            let Some(e) = self.entities[index].as_mut() else {
                continue;
            };
            if e.lease_of(worker).is_zero() {
                continue;
            }
            e.lease_take(worker, Money::MAX);
            e.drain_excess();
            leases_expired += 1;
            self.refresh_flags(index);
        }
        Reply::WorkerLost {
            worker,
            leases_expired,
        }
    }

    fn reset(&mut self, now_ms: i64, id: EntityId) -> Reply {
        let index = match self.index(id) {
            Ok(index) => index,
            Err(e) => return Reply::Rejected(e),
        };
        if self.config.cluster {
            // Every node must start over at the same point: the cluster
            // agrees on it first (`ClusterReset`).
            return Reply::Rejected(CommandError::NotInCluster(
                "a reset of this node alone (the cluster's definitions carry resets)",
            ));
        }
        self.roll_if_due(now_ms, index);
        self.reset_books(index);
        self.entity_mut(index).drain_excess();
        self.announce_manual_epoch(index);
        let seq = self.push_record(
            now_ms,
            RecordBody::Reset {
                entity: id,
                period_start_ms: None,
            },
        );
        Reply::Applied { seq }
    }

    /// Cluster mode: see [`Command::ClusterReset`]. Rolls over first as of
    /// the later of now and the reset (a node whose clock is behind the
    /// proposer's enters the reset's period).
    fn cluster_reset(&mut self, now_ms: i64, id: EntityId, start_ms: i64) -> Reply {
        let index = match self.index(id) {
            Ok(index) => index,
            Err(e) => return Reply::Rejected(e),
        };
        if !self.config.cluster {
            return Reply::Rejected(CommandError::ClusterOnly("a cluster reset"));
        }
        let start_ms = clamp_time_ms(start_ms);
        self.roll_if_due(now_ms.max(start_ms), index);
        let e = self.entity(index);
        if e.budget.is_none() || start_ms <= e.period.start_ms || start_ms >= e.period.end_ms {
            return Reply::NodeLease {
                entity: id,
                applied: false,
            };
        }
        self.cluster_reset_books(index, start_ms);
        let e = self.entity_mut(index);
        // As at a rollover: a new hash in the cluster, nothing drawn there
        // yet; the leases carried over are excused until drawn again.
        e.node_cap = Some(Money::ZERO);
        e.cluster_refused = false;
        e.excuse_current_excess();
        self.announce_manual_epoch(index);
        self.push_record(
            now_ms,
            RecordBody::Reset {
                entity: id,
                period_start_ms: Some(start_ms),
            },
        );
        Reply::NodeLease {
            entity: id,
            applied: true,
        }
    }

    /// Tells the workers of a manual reset's new epoch, and the flags.
    fn announce_manual_epoch(&mut self, index: usize) {
        let e = self.entity(index);
        self.events.push(Event::NewEpoch {
            entity: EntityId(index as u32),
            epoch: e.epoch,
            period: e.period,
            manual: true,
        });
        self.refresh_flags(index);
    }

    /// The books' side of a cluster reset (shared with replay). The period's
    /// end stays, so its rollover stays scheduled.
    fn cluster_reset_books(&mut self, index: usize, start_ms: i64) {
        self.reset_books(index);
        let e = self.entity_mut(index);
        e.period.start_ms = start_ms;
        e.others_spent = Money::ZERO;
    }

    /// Cluster mode: see [`Command::ClusterTopUp`].
    fn cluster_top_up(&mut self, now_ms: i64, id: EntityId, total: Money) -> Reply {
        let index = match self.index(id) {
            Ok(index) => index,
            Err(e) => return Reply::Rejected(e),
        };
        if !self.config.cluster {
            return Reply::Rejected(CommandError::ClusterOnly("a cluster top-up"));
        }
        let e = self.entity(index);
        if !e.budget.is_some_and(|b| b.is_prepaid()) {
            return Reply::Rejected(CommandError::TopUpNotPrepaid(id));
        }
        let amount = total.picodollars() - e.topup.picodollars();
        if amount <= 0 {
            return Reply::NodeLease {
                entity: id,
                applied: false,
            };
        }
        let e = self.entity_mut(index);
        e.topup = total;
        e.drain_excess();
        self.refresh_flags(index);
        self.push_record(
            now_ms,
            RecordBody::TopUp {
                entity: id,
                amount: money(amount),
            },
        );
        Reply::NodeLease {
            entity: id,
            applied: true,
        }
    }

    /// A manual reset: spent starts over; the period and top-ups stay.
    fn reset_books(&mut self, index: usize) {
        let e = self.entity_mut(index);
        e.epoch += 1;
        e.spent = Money::ZERO;
        e.soft_reached = false;
    }

    fn top_up(&mut self, now_ms: i64, id: EntityId, amount: Money) -> Reply {
        let index = match self.index(id) {
            Ok(index) => index,
            Err(e) => return Reply::Rejected(e),
        };
        if !amount.is_positive() {
            return Reply::Rejected(CommandError::TopUpNotPositive);
        }
        if self.config.cluster {
            return Reply::Rejected(CommandError::NotInCluster(
                "a top-up of this node alone (the cluster's definitions carry top-ups)",
            ));
        }
        let e = self.entity(index);
        if !e.budget.is_some_and(|b| b.is_prepaid()) {
            return Reply::Rejected(CommandError::TopUpNotPrepaid(id));
        }
        let Some(topup) = e.topup.checked_add(amount) else {
            return Reply::Rejected(CommandError::Overflow(id));
        };
        // Prepaid budgets never roll over, so there is nothing to roll here.
        let e = self.entity_mut(index);
        e.topup = topup;
        e.drain_excess();
        self.refresh_flags(index);
        let seq = self.push_record(now_ms, RecordBody::TopUp { entity: id, amount });
        Reply::Applied { seq }
    }

    fn set_budget(
        &mut self,
        now_ms: i64,
        id: EntityId,
        kind: EntityKind,
        budget: Option<Budget>,
    ) -> Reply {
        if id.0 >= ENTITIES_MAX {
            return Reply::Rejected(CommandError::EntityOutOfRange(id));
        }
        if let Some(b) = budget {
            if let Err(e) = b.validate() {
                return Reply::Rejected(e.into());
            }
            // Nodes agree on a period only if it does not depend on when
            // each created the entity.
            if self.config.cluster && b.reset.is_some() && b.alignment != Alignment::Calendar {
                return Reply::Rejected(CommandError::NotInCluster(
                    "a rolling budget (use calendar_aligned = true)",
                ));
            }
        }
        match self.index(id) {
            Ok(index) => {
                let existing = self.entity(index).kind;
                if existing != kind {
                    return Reply::Rejected(CommandError::KindMismatch {
                        entity: id,
                        existing,
                        requested: kind,
                    });
                }
                self.roll_if_due(now_ms, index);
            }
            Err(CommandError::UnknownEntity(_)) => {}
            Err(e) => return Reply::Rejected(e),
        }
        let index = self.set_budget_books(now_ms, id, kind, budget);
        let cluster = self.config.cluster;
        let e = self.entity_mut(index);
        if e.node_cap.is_some() != (cluster && e.budget.is_some()) {
            e.reset_node_cap(cluster);
        }
        e.excuse_current_excess();
        self.refresh_flags(index);
        self.schedule_rollover(index);
        let seq = self.push_record(
            now_ms,
            RecordBody::SetBudget {
                entity: id,
                kind,
                budget,
            },
        );
        Reply::Applied { seq }
    }

    /// The books' side of a budget change (shared with replay). A new entity is
    /// anchored now. A changed reset rule moves the entity to the period that
    /// contains now under the new rule, keeping what was spent: changing a rule
    /// never forgets spend (a Reset does that, explicitly).
    fn set_budget_books(
        &mut self,
        now_ms: i64,
        id: EntityId,
        kind: EntityKind,
        budget: Option<Budget>,
    ) -> usize {
        let index = id.0 as usize;
        debug_assert!(id.0 < ENTITIES_MAX);
        if index >= self.entities.len() {
            self.entities.resize_with(index + 1, || None);
        }
        match &mut self.entities[index] {
            Some(e) => {
                debug_assert_eq!(e.kind, kind);
                let rule_changed = e.budget.map(|b| (b.reset, b.alignment))
                    != budget.map(|b| (b.reset, b.alignment));
                e.budget = budget;
                if rule_changed {
                    e.period = period_for(budget.as_ref(), e.anchor_ms, now_ms);
                }
            }
            slot @ None => {
                // Cluster mode: every node anchors at the same instant, so
                // a prepaid budget's period (and its hash) is the same on
                // all (rolling budgets, which would use it, are refused).
                let anchor_ms = if self.config.cluster { 0 } else { now_ms };
                *slot = Some(Entity::new(kind, budget, anchor_ms, now_ms));
                self.entity_count += 1;
            }
        }
        index
    }

    /// Cluster mode: the cluster granted this node `amount` more of the
    /// entity's budget in the period starting at `period_start_ms` (zero:
    /// refused, nothing is left in the cluster). A grant for another period
    /// (the entity rolled over while the draw was under way) is not applied:
    /// that node lease belongs to a period that is over.
    fn node_grant(
        &mut self,
        now_ms: i64,
        id: EntityId,
        period_start_ms: i64,
        amount: Money,
    ) -> Reply {
        let index = match self.cluster_entity(now_ms, id, amount) {
            Ok(index) => index,
            Err(refused) => return refused,
        };
        let e = self.entity_mut(index);
        let Some(cap) = e.node_cap.filter(|_| e.period.start_ms == period_start_ms) else {
            return Reply::NodeLease {
                entity: id,
                applied: false,
            };
        };
        let Some(cap) = cap.checked_add(amount) else {
            return Reply::Rejected(CommandError::Overflow(id));
        };
        e.node_cap = Some(cap);
        e.cluster_refused = amount.is_zero();
        e.drain_excess();
        self.refresh_flags(index);
        Reply::NodeLease {
            entity: id,
            applied: true,
        }
    }

    /// Cluster mode: see [`Command::NodeRelease`].
    fn node_release(&mut self, now_ms: i64, id: EntityId, period_start_ms: i64) -> Reply {
        let index = match self.cluster_entity(now_ms, id, Money::ZERO) {
            Ok(index) => index,
            Err(refused) => return refused,
        };
        let e = self.entity_mut(index);
        let amount = match e.node_cap {
            Some(cap) if e.period.start_ms == period_start_ms => {
                let free = (cap.picodollars() - e.committed()).max(0);
                e.node_cap = Some(money(cap.picodollars() - free));
                money(free)
            }
            _ => Money::ZERO,
        };
        if amount.is_positive() {
            e.drain_excess();
            self.refresh_flags(index);
        }
        Reply::NodeReleased { entity: id, amount }
    }

    /// The entity a cluster command names, rolled over to `now_ms`; a
    /// refusal for an unknown entity or a negative amount.
    fn cluster_entity(&mut self, now_ms: i64, id: EntityId, amount: Money) -> Result<usize, Reply> {
        let index = self.index(id).map_err(Reply::Rejected)?;
        if amount.is_negative() {
            return Err(Reply::Rejected(CommandError::NegativeAmount));
        }
        self.roll_if_due(now_ms, index);
        Ok(index)
    }

    /// Cluster mode: what the other nodes have spent in the period starting
    /// at `period_start_ms` (ignored for another period, or an entity not
    /// shared): views and the alert evaluator add it to this node's spend.
    fn cluster_spend(
        &mut self,
        now_ms: i64,
        id: EntityId,
        period_start_ms: i64,
        others: Money,
    ) -> Reply {
        let index = match self.cluster_entity(now_ms, id, others) {
            Ok(index) => index,
            Err(refused) => return refused,
        };
        let e = self.entity_mut(index);
        let applied = e.node_cap.is_some() && e.period.start_ms == period_start_ms;
        if applied {
            e.others_spent = others;
        }
        Reply::NodeLease {
            entity: id,
            applied,
        }
    }

    /// Cluster mode, after recovery: every node cap is what is committed
    /// (node leases, like worker leases, die with the process; the cluster
    /// counts the old process's as held until this node pushes its spend).
    /// Entities made before cluster mode are anchored at the cluster's
    /// instant here (see `set_budget_books`).
    pub fn reset_node_caps(&mut self) {
        let cluster = self.config.cluster;
        for index in 0..self.entities.len() {
            if let Some(e) = self.entities[index].as_mut() {
                let rolling = e
                    .budget
                    .is_some_and(|b| b.reset.is_some() && b.alignment == Alignment::Rolling);
                if cluster && e.anchor_ms != 0 && !rolling {
                    if e.period.is_forever() && e.period.start_ms == e.anchor_ms {
                        e.period = Period::forever(0);
                    }
                    e.anchor_ms = 0;
                }
                e.reset_node_cap(cluster);
                e.excuse_current_excess();
                e.blocked = e.is_blocked();
            }
        }
    }

    fn tick(&mut self, now_ms: i64) -> Reply {
        let mut rolled = 0;
        while let Some(&Reverse((end_ms, index))) = self.rollovers.peek() {
            if end_ms > now_ms || rolled == TICK_ROLLOVERS_MAX {
                break;
            }
            self.rollovers.pop();
            let index = index as usize;
            let current = self.entities.get(index).and_then(|e| e.as_ref());
            if current.is_some_and(|e| e.period.end_ms == end_ms) {
                self.roll_if_due(now_ms, index);
                rolled += 1;
            }
        }
        let more = self
            .rollovers
            .peek()
            .is_some_and(|&Reverse((end_ms, _))| end_ms <= now_ms);
        Reply::Ticked { rolled, more }
    }

    /// Replays one journal record. Records at or below the books' position are
    /// skipped, so replaying a journal twice changes nothing; a gap is an error.
    pub fn replay(&mut self, record: &Record) -> Result<Replayed, ReplayError> {
        if record.seq <= self.journal_seq {
            return Ok(Replayed::Skipped);
        }
        if record.seq != self.journal_seq + 1 {
            return Err(ReplayError::Gap {
                last: self.journal_seq,
                found: record.seq,
            });
        }
        let invalid = |reason: String| ReplayError::Invalid {
            seq: record.seq,
            reason,
        };
        let now_ms = record.now_ms;
        if now_ms != clamp_time_ms(now_ms) {
            return Err(invalid(format!("time {now_ms} out of range")));
        }
        match record.body {
            RecordBody::Settle {
                request_id,
                worker,
                charges,
                ..
            } => {
                if self.settled.contains(request_id) {
                    return Err(invalid(format!("request {request_id:#x} settled twice")));
                }
                let mut indexes = [0usize; CHARGES_PER_SETTLE_MAX];
                // Workers of an earlier run may exceed this run's count: not checked.
                let _ = worker;
                for (i, c) in charges.as_slice().iter().enumerate() {
                    indexes[i] = self.index(c.entity).map_err(|e| invalid(e.to_string()))?;
                    let e = self.entity(indexes[i]);
                    if c.amount.is_negative()
                        || e.spent.checked_add(c.amount).is_none()
                        || e.lifetime_spent.checked_add(c.amount).is_none()
                        || charges.as_slice()[..i].iter().any(|d| d.entity == c.entity)
                    {
                        return Err(invalid(format!("bad charge to {}", c.entity)));
                    }
                }
                if charges.is_empty() {
                    return Err(invalid("settle without charges".into()));
                }
                for (c, &index) in charges.as_slice().iter().zip(&indexes) {
                    let e = self.entity_mut(index);
                    e.spent = money(e.spent.picodollars() + c.amount.picodollars());
                    e.lifetime_spent =
                        money(e.lifetime_spent.picodollars() + c.amount.picodollars());
                    self.quiet_refresh(index);
                }
                self.settled.insert(request_id);
            }
            RecordBody::Rollover {
                entity,
                period_start_ms,
            } => {
                let index = self.index(entity).map_err(|e| invalid(e.to_string()))?;
                let e = self.entity(index);
                let period = period_for(e.budget.as_ref(), e.anchor_ms, now_ms);
                if now_ms < e.period.end_ms || period.start_ms != period_start_ms {
                    return Err(invalid(format!(
                        "rollover of {entity} to {period_start_ms} does not follow from its budget"
                    )));
                }
                self.roll_to(index, period);
                self.quiet_refresh(index);
                self.schedule_rollover(index);
            }
            RecordBody::Reset {
                entity,
                period_start_ms,
            } => {
                let index = self.index(entity).map_err(|e| invalid(e.to_string()))?;
                match period_start_ms {
                    None => self.reset_books(index),
                    Some(start_ms) => {
                        let p = self.entity(index).period;
                        if start_ms <= p.start_ms || start_ms >= p.end_ms {
                            return Err(invalid(format!(
                                "cluster reset of {entity} at {start_ms} is outside its period"
                            )));
                        }
                        self.cluster_reset_books(index, start_ms);
                    }
                }
                self.quiet_refresh(index);
            }
            RecordBody::TopUp { entity, amount } => {
                let index = self.index(entity).map_err(|e| invalid(e.to_string()))?;
                let e = self.entity_mut(index);
                if !amount.is_positive() || !e.budget.is_some_and(|b| b.is_prepaid()) {
                    return Err(invalid(format!("bad top-up of {entity}")));
                }
                e.topup = e
                    .topup
                    .checked_add(amount)
                    .ok_or_else(|| invalid(format!("top-up of {entity} overflows")))?;
                self.quiet_refresh(index);
            }
            RecordBody::SetBudget {
                entity,
                kind,
                budget,
            } => {
                if entity.0 >= ENTITIES_MAX {
                    return Err(invalid(format!("{entity} out of range")));
                }
                if let Some(b) = budget {
                    b.validate().map_err(|e| invalid(e.to_string()))?;
                }
                if let Ok(index) = self.index(entity) {
                    if self.entity(index).kind != kind {
                        return Err(invalid(format!("{entity} changes kind")));
                    }
                }
                let index = self.set_budget_books(now_ms, entity, kind, budget);
                self.quiet_refresh(index);
                self.schedule_rollover(index);
            }
        }
        self.journal_seq = record.seq;
        Ok(Replayed::Applied)
    }

    /// Recomputes an entity's volatile flags without events (replay, recovery).
    fn quiet_refresh(&mut self, index: usize) {
        let e = self.entity_mut(index);
        e.excuse_current_excess();
        e.blocked = e.is_blocked();
        e.soft_reached = match e.budget.and_then(|b| b.soft_limit) {
            Some(soft) => e.spent >= soft,
            None => false,
        };
    }

    /// The durable state, for snapshots and comparisons.
    pub fn books(&self) -> Books {
        Books {
            journal_seq: self.journal_seq,
            entities: self.entity_books().collect(),
            settled_ids: self.settled_ids().collect(),
        }
    }

    /// The books of every entity, by id (what a snapshot writes, without
    /// collecting them first).
    pub fn entity_books(&self) -> impl Iterator<Item = EntityBooks> + '_ {
        self.entities
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| e.books(EntityId(i as u32))))
    }

    /// The remembered settled request ids, oldest first.
    pub fn settled_ids(&self) -> impl Iterator<Item = u128> + '_ {
        self.settled.order.iter().copied()
    }

    /// Rebuilds a ledger from books (a snapshot) with no leases. Checks every
    /// field: books read from disk are data, and bad data is an error.
    pub fn from_books(config: StateConfig, books: Books) -> Result<LedgerState, BooksError> {
        let mut state = LedgerState::new(config)?;
        let mut last_id: Option<u32> = None;
        for b in books.entities {
            let id = b.id;
            let bad = |what: &str| BooksError(format!("{id}: {what}"));
            if id.0 >= ENTITIES_MAX {
                return Err(bad("id out of range"));
            }
            if last_id.is_some_and(|last| last >= id.0) {
                return Err(bad("ids not strictly increasing"));
            }
            last_id = Some(id.0);
            if let Some(budget) = b.budget {
                budget.validate().map_err(|e| bad(&e.to_string()))?;
            }
            if b.spent.is_negative() || b.topup.is_negative() || b.lifetime_spent < b.spent {
                return Err(bad("amounts out of range"));
            }
            if b.anchor_ms != clamp_time_ms(b.anchor_ms) || b.period.start_ms >= b.period.end_ms {
                return Err(bad("times out of range"));
            }
            // The period must end where its rule says, so rollovers tile
            // time; it starts where the rule says or later (a cluster reset).
            let ruled = period_for(b.budget.as_ref(), b.anchor_ms, b.period.start_ms);
            if ruled.end_ms != b.period.end_ms || ruled.start_ms > b.period.start_ms {
                return Err(bad("period does not follow from its budget"));
            }
            let index = id.0 as usize;
            if index >= state.entities.len() {
                state.entities.resize_with(index + 1, || None);
            }
            let mut e = Entity::new(b.kind, b.budget, b.anchor_ms, b.anchor_ms);
            e.period = b.period;
            e.epoch = b.epoch;
            e.spent = b.spent;
            e.topup = b.topup;
            e.lifetime_spent = b.lifetime_spent;
            e.reset_node_cap(config.cluster);
            state.entities[index] = Some(e);
            state.entity_count += 1;
            state.quiet_refresh(index);
        }
        // A smaller window than the snapshot's keeps the newest ids.
        let skip = books.settled_ids.len().saturating_sub(state.settled.max);
        for &id in &books.settled_ids[skip..] {
            if state.settled.contains(id) {
                return Err(BooksError(format!("request {id:#x} settled twice")));
            }
            state.settled.insert(id);
        }
        state.journal_seq = books.journal_seq;
        state.rebuild_rollovers();
        Ok(state)
    }

    /// An entity as of `now_ms`, as if it had rolled over (nothing changes).
    pub fn view(&self, id: EntityId, now_ms: i64) -> Option<EntityView> {
        let index = self.index(id).ok()?;
        let e = self.entity(index);
        let now_ms = clamp_time_ms(now_ms);
        let (period, epoch, spent, others) = if now_ms >= e.period.end_ms {
            (
                period_for(e.budget.as_ref(), e.anchor_ms, now_ms),
                e.epoch + 1,
                Money::ZERO,
                Money::ZERO,
            )
        } else {
            (e.period, e.epoch, e.spent, e.others_spent)
        };
        let limit = e.limit_effective();
        let committed = spent.picodollars() + e.leased.picodollars();
        // Cluster mode: the cluster's spend as far as this node knows.
        let node_spent = spent;
        let spent = money_clamped(spent.picodollars() + others.picodollars());
        // A rollover drains the excess as far as the lower commitment allows.
        let excess = match limit {
            Some(l) if e.is_strict() => e.excess.picodollars().min((committed - l).max(0)),
            _ => 0,
        };
        Some(EntityView {
            id,
            kind: e.kind,
            budget: e.budget,
            period,
            epoch,
            spent,
            leased: e.leased,
            topup: e.topup,
            lifetime_spent: e.lifetime_spent,
            limit_effective: limit.map(money_clamped),
            remaining: limit.map(|l| money_clamped((l - spent.picodollars()).max(0))),
            overshoot: limit.map_or(Money::ZERO, |l| {
                money_clamped((spent.picodollars() - l).max(0))
            }),
            excess: money(excess),
            blocked: match e.node_cap {
                Some(_) => e.blocked,
                None => limit.is_some_and(|l| committed >= l),
            },
            node_spent,
        })
    }

    /// An entity's epoch, spent, effective limit and soft limit, without
    /// building a view (the alert evaluator reads it after every charge).
    /// As of the entity's current period: a period that has ended but not
    /// rolled over yet reads as its old self (`view` says what it will be).
    pub fn spend_probe(&self, id: EntityId) -> Option<SpendProbe> {
        let index = self.index(id).ok()?;
        let e = self.entity(index);
        Some(SpendProbe {
            epoch: e.epoch,
            period_end_ms: e.period.end_ms,
            spent: money_clamped(e.spent.picodollars() + e.others_spent.picodollars()),
            limit_effective: e.limit_effective().map(money_clamped),
            soft_limit: e.budget.and_then(|b| b.soft_limit),
        })
    }

    /// Cluster mode: an entity's node lease as of `now_ms` (as if it had
    /// rolled over, like [`LedgerState::view`]); `None` when the entity is
    /// not shared with the cluster.
    pub fn node_lease(&self, id: EntityId, now_ms: i64) -> Option<NodeLeaseView> {
        let index = self.index(id).ok()?;
        let e = self.entity(index);
        let cap = e.node_cap?;
        let limit = money_clamped(e.limit_effective()?);
        let now_ms = clamp_time_ms(now_ms);
        if now_ms >= e.period.end_ms {
            return Some(NodeLeaseView {
                period: period_for(e.budget.as_ref(), e.anchor_ms, now_ms),
                limit,
                spent: Money::ZERO,
                cap: Money::ZERO,
                committed: e.leased,
                refused: false,
            });
        }
        Some(NodeLeaseView {
            period: e.period,
            limit,
            spent: e.spent,
            cap,
            committed: money_clamped(e.committed()),
            refused: e.cluster_refused,
        })
    }

    /// Cluster mode: every entity shared with the cluster (with a budget).
    pub fn shared_entities(&self) -> impl Iterator<Item = EntityId> + '_ {
        self.entities.iter().enumerate().filter_map(|(i, e)| {
            e.as_ref()
                .filter(|e| e.node_cap.is_some())
                .map(|_| EntityId(i as u32))
        })
    }

    /// The outstanding lease of one worker on one entity.
    pub fn lease(&self, worker: u16, id: EntityId) -> Money {
        self.index(id)
            .map_or(Money::ZERO, |i| self.entity(i).lease_of(worker))
    }

    /// Checks every invariant (see `ledger` module docs); panics on a violation,
    /// which is a bug. O(entities + settled ids): for tests and debug checks.
    pub fn check_invariants(&self) {
        let mut count = 0;
        for (index, e) in self.entities.iter().enumerate() {
            if let Some(e) = e {
                count += 1;
                self.check_entity(index, e);
            }
        }
        assert_eq!(count, self.entity_count);
        assert_eq!(self.settled.count(), self.settled.order.len());
        assert!(self.settled.order.len() <= self.settled.max);
        for id in &self.settled.order {
            assert!(self.settled.contains(*id));
        }
        let scheduled: HashSet<(i64, u32)> = self.rollovers.iter().map(|r| r.0).collect();
        for (index, e) in self.entities.iter().enumerate() {
            if let Some(e) = e {
                // Invariant: every period that ends has its rollover scheduled.
                if !e.period.is_forever() {
                    assert!(
                        scheduled.contains(&(e.period.end_ms, index as u32)),
                        "entity {index}: no rollover scheduled"
                    );
                }
            }
        }
    }

    fn check_entity(&self, index: usize, e: &Entity) {
        let id = EntityId(index as u32);
        // Invariant: leases are positive, one per worker, within the worker count, and sum to `leased`.
        let mut sum: i128 = 0;
        for (i, lease) in e.leases.iter().enumerate() {
            assert!(lease.amount.is_positive(), "{id}: empty lease kept");
            assert!(
                lease.worker < self.config.workers,
                "{id}: lease of unknown worker"
            );
            assert!(
                e.leases[..i].iter().all(|l| l.worker != lease.worker),
                "{id}: two leases for one worker"
            );
            sum += lease.amount.picodollars();
        }
        assert_eq!(sum, e.leased.picodollars(), "{id}: leases do not sum");
        // Invariant: amounts are never negative; lifetime spend includes this period's.
        assert!(!e.spent.is_negative() && !e.topup.is_negative() && !e.excess.is_negative());
        assert!(
            e.lifetime_spent >= e.spent,
            "{id}: lifetime below period spend"
        );
        // Invariant: the current period is well formed.
        assert!(e.period.start_ms < e.period.end_ms);
        if e.budget.is_none_or(|b| b.is_prepaid()) {
            assert!(
                e.period.is_forever(),
                "{id}: a non-resetting budget has a period end"
            );
        }
        // Invariant: strict budgets are never over-committed by a grant:
        // spent + leased <= limit + topup + excess, where excess comes only from
        // overruns and lowered limits and drains as commitments settle.
        if let (true, Some(limit)) = (e.is_strict(), e.grant_limit()) {
            assert!(
                e.committed() <= limit + e.excess.picodollars(),
                "{id}: strict budget over-committed: spent {} + leased {} > limit {} + excess {}",
                e.spent,
                e.leased,
                money_clamped(limit),
                e.excess
            );
        } else {
            assert!(e.excess.is_zero(), "{id}: excess without a strict limit");
        }
        // Invariant: in cluster mode every budgeted entity has a node cap, and
        // only those.
        assert_eq!(
            e.node_cap.is_some(),
            self.config.cluster && e.budget.is_some(),
            "{id}: node cap out of step with cluster mode"
        );
        // Invariant: the block flag matches the books, so every change was broadcast.
        assert_eq!(e.blocked, e.is_blocked(), "{id}: stale block flag");
    }

    /// Debug check after each apply: the entities the last command touched.
    fn check_last_apply(&self, cmd: &Command) {
        match *cmd {
            Command::LeaseRequest { entity, .. }
            | Command::LeaseReturn { entity, .. }
            | Command::Reset { entity }
            | Command::TopUp { entity, .. }
            | Command::SetBudget { entity, .. }
            | Command::NodeGrant { entity, .. }
            | Command::ClusterSpend { entity, .. }
            | Command::ClusterReset { entity, .. }
            | Command::ClusterTopUp { entity, .. }
            | Command::NodeRelease { entity, .. } => {
                if let Ok(i) = self.index(entity) {
                    self.check_entity(i, self.entity(i));
                }
            }
            Command::Settle { .. } | Command::WorkerLost { .. } | Command::Tick => {}
        }
        for r in &self.records {
            if let RecordBody::Settle { charges, .. } = r.body {
                for c in charges.as_slice() {
                    if let Ok(i) = self.index(c.entity) {
                        self.check_entity(i, self.entity(i));
                    }
                }
            }
        }
        for ev in &self.events {
            let id = match *ev {
                Event::Blocked { entity, .. }
                | Event::Unblocked { entity, .. }
                | Event::NewEpoch { entity, .. }
                | Event::SoftLimitReached { entity, .. }
                | Event::Overrun { entity, .. } => entity,
            };
            if let Ok(i) = self.index(id) {
                self.check_entity(i, self.entity(i));
            }
        }
    }
}

#[cfg(test)]
mod tests;
