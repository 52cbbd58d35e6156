//! What crosses the ledger's boundary: the commands it applies, the replies
//! and events it sends back, the records it journals, and the ids and
//! charges they carry, with the bounds every party to them keeps. The state
//! machine that applies them is [`super::state`].

use std::fmt;

use crate::budget::period::Period;
use crate::budget::{Budget, BudgetError};
use crate::money::Money;

/// Most entities (customers, teams, keys, provider configs, models) the ledger
/// holds. Entity ids index a dense table, so an id must be below this.
pub const ENTITIES_MAX: u32 = 1 << 22;
/// Most worker threads that may hold leases.
pub const LEDGER_WORKERS_MAX: u16 = 256;
/// Most levels one request is charged to: key, team, customer, provider
/// config (4); the model gateway-wide and the key's, team's and customer's
/// budget on the model (4); and one tag budget per budgeted tag key
/// ([`TAG_BUDGET_KEYS_MAX`], 8: a request carries one value per tag key).
pub const CHARGES_PER_SETTLE_MAX: usize = 16;
/// Most distinct tag keys the tag budgets of one config may name (e.g.
/// `feature` and `env`): a request has one value per key, so this bounds the
/// tag levels of one request.
pub const TAG_BUDGET_KEYS_MAX: usize = 8;

const _: () = assert!(LEDGER_WORKERS_MAX as usize == crate::limits::WORKERS_MAX);
const _: () = assert!(ENTITIES_MAX as usize > crate::limits::VIRTUAL_KEYS_MAX);
const _: () = assert!(CHARGES_PER_SETTLE_MAX <= u8::MAX as usize);
const _: () = assert!(4 + 4 + TAG_BUDGET_KEYS_MAX <= CHARGES_PER_SETTLE_MAX);

/// A budget-bearing entity, as numbered by the catalog. Dense: below [`ENTITIES_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityId(pub u32);

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entity {}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityKind {
    Customer,
    Team,
    Key,
    Provider,
    /// A model, gateway-wide (`[[model_budgets]]`); named by the model.
    Model,
    /// A tag value (`[[tag_budgets]]`); named `key=value`.
    Tag,
    /// A key's budget on one model; named `key/model`.
    KeyModel,
    /// A team's budget on one model; named `team/model`.
    TeamModel,
    /// A customer's budget on one model; named `customer/model`.
    CustomerModel,
}

impl EntityKind {
    pub const ALL: [EntityKind; 9] = [
        EntityKind::Customer,
        EntityKind::Team,
        EntityKind::Key,
        EntityKind::Provider,
        EntityKind::Model,
        EntityKind::Tag,
        EntityKind::KeyModel,
        EntityKind::TeamModel,
        EntityKind::CustomerModel,
    ];

    /// The kind's name in files, the API, 402s and alerts: "customer",
    /// "team", "key", "provider", "model", "tag", "key_model", "team_model",
    /// "customer_model".
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Customer => "customer",
            EntityKind::Team => "team",
            EntityKind::Key => "key",
            EntityKind::Provider => "provider",
            EntityKind::Model => "model",
            EntityKind::Tag => "tag",
            EntityKind::KeyModel => "key_model",
            EntityKind::TeamModel => "team_model",
            EntityKind::CustomerModel => "customer_model",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            EntityKind::Customer => 1,
            EntityKind::Team => 2,
            EntityKind::Key => 3,
            EntityKind::Provider => 4,
            EntityKind::Model => 5,
            EntityKind::Tag => 6,
            EntityKind::KeyModel => 7,
            EntityKind::TeamModel => 8,
            EntityKind::CustomerModel => 9,
        }
    }

    pub fn from_code(code: u8) -> Option<EntityKind> {
        EntityKind::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// One level of a request's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Charge {
    pub entity: EntityId,
    pub amount: Money,
    /// True when the worker reserved this charge out of its lease for the
    /// entity (strict admission): the amount moves from the lease into spent.
    /// False when nothing was reserved (soft mode, or no budget at admission):
    /// the amount is added to spent directly.
    pub from_lease: bool,
}

/// The charges of one request: a fixed array, so a command never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Charges {
    len: u8,
    items: [Charge; CHARGES_PER_SETTLE_MAX],
}

impl Charges {
    const EMPTY: Charge = Charge {
        entity: EntityId(0),
        amount: Money::ZERO,
        from_lease: false,
    };

    pub const fn new() -> Charges {
        Charges {
            len: 0,
            items: [Self::EMPTY; CHARGES_PER_SETTLE_MAX],
        }
    }

    /// `None` when more than [`CHARGES_PER_SETTLE_MAX`] are given.
    pub fn from_slice(charges: &[Charge]) -> Option<Charges> {
        let mut out = Charges::new();
        for c in charges {
            out.push(*c)?;
        }
        Some(out)
    }

    /// `None` (and no change) when full.
    pub fn push(&mut self, charge: Charge) -> Option<()> {
        let slot = self.items.get_mut(usize::from(self.len))?;
        *slot = charge;
        self.len += 1;
        Some(())
    }

    pub fn as_slice(&self) -> &[Charge] {
        &self.items[..usize::from(self.len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for Charges {
    fn default() -> Charges {
        Charges::new()
    }
}

impl fmt::Debug for Charges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// What a worker (or the control plane, or the ledger thread's timer) asks of the ledger.
///
/// Fixed size (a settle carries its charges inline) so commands cross the
/// workers' channels without an allocation each; hence the lint allowance.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// A worker asks for a slice of the entity's remaining budget. `need` is
    /// what the request waiting for it needs at least (its worst case minus the
    /// worker's free lease); `want` is the slice the worker would like to hold.
    /// The grant is all of `need` or nothing, and at most `max(need, want)`.
    LeaseRequest {
        worker: u16,
        entity: EntityId,
        need: Money,
        want: Money,
    },
    /// A worker gives back unused lease (e.g. on a Blocked broadcast, so the
    /// last of a budget goes where it is needed).
    LeaseReturn {
        worker: u16,
        entity: EntityId,
        amount: Money,
    },
    /// A request ended: charge it, once.
    Settle {
        request_id: u128,
        worker: u16,
        /// Tokens were counted by the gateway, not reported by the provider.
        estimated: bool,
        charges: Charges,
    },
    /// A worker thread died: its leases expire (return to remaining).
    WorkerLost { worker: u16 },
    /// Operator: start the entity's spend over now (the period boundaries stay).
    Reset { entity: EntityId },
    /// Operator: credit a prepaid budget.
    TopUp { entity: EntityId, amount: Money },
    /// Operator/config: create the entity or change its budget (`None`: no limit).
    SetBudget {
        entity: EntityId,
        kind: EntityKind,
        budget: Option<Budget>,
    },
    /// The ledger thread's timer: roll over entities whose period ended, so
    /// workers hear of the new period without waiting for traffic.
    Tick,
    /// Cluster mode: the cluster granted this node `amount` more of the
    /// entity's budget in the period starting at `period_start_ms`; zero
    /// means refused (nothing left in the cluster). Not journaled: node
    /// leases, like worker leases, die with the process.
    NodeGrant {
        entity: EntityId,
        period_start_ms: i64,
        amount: Money,
    },
    /// Cluster mode: what the other nodes have spent on the entity in the
    /// period starting at `period_start_ms`, as Redis last said. Views and
    /// alerts show the cluster's spend: this node's plus this. Not
    /// journaled (Redis says it again after a restart).
    ClusterSpend {
        entity: EntityId,
        period_start_ms: i64,
        others: Money,
        /// A node was refused a draw there (the budget is exhausted in the
        /// cluster): the alert evaluator counts it as a refusal.
        refused: bool,
    },
    /// Cluster mode: a manual reset the cluster agreed on (decision 0016,
    /// "Resets and top-ups"): the entity's spend starts over in a period
    /// that starts at `period_start_ms` (the proposing node's clock, the
    /// same on every node) and ends where the budget's period ends. Applied
    /// once: a reset at or before the period's start is already in the
    /// books (or superseded by a later period).
    ClusterReset {
        entity: EntityId,
        period_start_ms: i64,
    },
    /// Cluster mode: the cluster's top-ups of a prepaid budget add up to
    /// `total`; the entity's credit rises to it (journaled as a top-up of
    /// the difference). Never lowers the credit.
    ClusterTopUp { entity: EntityId, total: Money },
    /// Cluster mode: the cluster refused this node: what its node cap
    /// holds beyond what is committed (too little for the request that
    /// asked) goes back, so another node can use it with its own. Not
    /// journaled. Only in the period starting at `period_start_ms`.
    NodeRelease {
        entity: EntityId,
        period_start_ms: i64,
    },
}

/// Why a command was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{0} is not in the ledger")]
    UnknownEntity(EntityId),
    #[error("{0} is out of range (ids are below {ENTITIES_MAX})")]
    EntityOutOfRange(EntityId),
    #[error("worker {worker} is out of range (the ledger has {workers} workers)")]
    WorkerOutOfRange { worker: u16, workers: u16 },
    #[error("{entity} is a {existing:?}, not a {requested:?}")]
    KindMismatch {
        entity: EntityId,
        existing: EntityKind,
        requested: EntityKind,
    },
    #[error("amounts must not be negative")]
    NegativeAmount,
    #[error("{0}: the amount would exceed the largest amount bursar records")]
    Overflow(EntityId),
    #[error("a settle must charge at least one entity")]
    ChargesEmpty,
    #[error("{0} is charged twice in one settle")]
    ChargeEntityRepeated(EntityId),
    #[error("{0} has no prepaid budget to top up (raise a resetting budget's limit instead)")]
    TopUpNotPrepaid(EntityId),
    #[error("top-up amount must be positive")]
    TopUpNotPositive,
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error("{0} is not available in cluster mode")]
    NotInCluster(&'static str),
    #[error("{0} is for cluster mode only")]
    ClusterOnly(&'static str),
}

/// The ledger's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `granted` is zero when `need` does not fit `remaining`: the worker may
    /// degrade (ask for less) or deny with a 402.
    LeaseGrant {
        entity: EntityId,
        granted: Money,
        epoch: u64,
        /// What is left to grant after this one (`None`: no limit).
        remaining: Option<Money>,
    },
    /// What was actually returned (at most what the worker held).
    LeaseReturned {
        entity: EntityId,
        returned: Money,
    },
    /// Charged, as journal record `seq`. `uncovered` is what strict entities
    /// were charged beyond the worker's lease (zero when admission reserved the
    /// worst case, as it must).
    Settled {
        request_id: u128,
        seq: u64,
        charged: Money,
        uncovered: Money,
    },
    /// This request id was already settled; nothing changed.
    Duplicate {
        request_id: u128,
    },
    WorkerLost {
        worker: u16,
        leases_expired: u32,
    },
    /// A reset, top-up or budget change, as journal record `seq`.
    Applied {
        seq: u64,
    },
    /// A node grant; `applied` false when the entity is not shared
    /// or has moved to another period (the node lease is for a period over).
    NodeLease {
        entity: EntityId,
        applied: bool,
    },
    /// Cluster mode: what the node cap gave back (zero: nothing free).
    NodeReleased {
        entity: EntityId,
        amount: Money,
    },
    /// `more`: further rollovers are due; tick again.
    Ticked {
        rolled: u32,
        more: bool,
    },
    Rejected(CommandError),
}

/// Something workers must hear about; the ledger thread broadcasts these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// No more leases can be granted (strict: everything left is leased or
    /// spent; soft: spent and leased reached the limit). Workers should admit
    /// only against leases they hold and return what they do not need.
    Blocked { entity: EntityId, epoch: u64 },
    /// Leases can be granted again.
    Unblocked {
        entity: EntityId,
        epoch: u64,
        remaining: Money,
    },
    /// A new period (rollover) or a manual reset: spent starts from zero.
    NewEpoch {
        entity: EntityId,
        epoch: u64,
        period: Period,
        manual: bool,
    },
    /// Spent reached the budget's soft limit in this period (once per period).
    SoftLimitReached {
        entity: EntityId,
        epoch: u64,
        spent: Money,
    },
    /// A strict entity was charged more than the worker's lease covered: the
    /// strict guarantee was bypassed by `amount` (a worker bug or an estimate
    /// below the truth). Recorded, never lost; worth an alert.
    Overrun { entity: EntityId, amount: Money },
}

/// A durable fact, appended to the journal in `seq` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// 1, 2, 3, ... without gaps across the life of the ledger.
    pub seq: u64,
    /// The ledger clock when the fact happened (clamped to the period math's range).
    pub now_ms: i64,
    pub body: RecordBody,
}

#[allow(clippy::large_enum_variant)] // fixed size, like `Command`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordBody {
    Settle {
        request_id: u128,
        worker: u16,
        estimated: bool,
        charges: Charges,
    },
    /// The entity entered the period starting at `period_start_ms` (a check:
    /// replay recomputes the period and refuses a mismatch).
    Rollover {
        entity: EntityId,
        period_start_ms: i64,
    },
    /// Spend starts over. `period_start_ms`: a cluster reset, which also
    /// moves the period's start there (`None`: the period stays).
    Reset {
        entity: EntityId,
        period_start_ms: Option<i64>,
    },
    TopUp {
        entity: EntityId,
        amount: Money,
    },
    SetBudget {
        entity: EntityId,
        kind: EntityKind,
        budget: Option<Budget>,
    },
}

/// Why a record cannot be replayed: the journal does not belong to these books.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("record {found} follows record {last}: records are missing")]
    Gap { last: u64, found: u64 },
    #[error("record {seq}: {reason}")]
    Invalid { seq: u64, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    Applied,
    /// Already in the books (seq at or below the books' position).
    Skipped,
}

/// Why books (from a snapshot) are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid books: {0}")]
pub struct BooksError(pub String);
