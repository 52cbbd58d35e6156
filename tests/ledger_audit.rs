//! A deterministic auditor of the ledger, in the spirit of TigerBeetle's
//! `src/state_machine/auditor.zig`.
//!
//! A seeded PRNG drives random workloads against a real `Ledger` (state
//! machine, journal, snapshots) in a fresh directory: simulated workers ask for
//! leases, admit requests against them, settle (sometimes twice, sometimes for
//! more than they reserved), return leases and die; operators reset, top up and
//! change budgets; the clock crawls and jumps across minute, day, month,
//! quarter, year and leap-day boundaries, often landing exactly on a period's
//! end; the process crashes (losing the unsynced batch, or tearing it half way),
//! a snapshot gets damaged, and the ledger recovers.
//!
//! Beside it, a model keeps the books the obvious way: a list of every settled
//! fact with its journal position, its own naive calendar, sums. After every
//! step the auditor checks that not one unit of money was created, lost or
//! counted twice: per entity, spent in the period, lifetime spend (also as a
//! literal sum of every charge), top-ups and leases agree with the model; every
//! settled request id is settled exactly once; strict budgets are never
//! over-committed by a grant; and after a crash the books are exactly the
//! model's books as of the last durable record.
//!
//! `BURSAR_AUDIT_SEEDS=n` runs more seeds; `BURSAR_AUDIT_SEED=s` runs one.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use bursar::budget::{Alignment, Budget, Mode, Reset, ResetUnit};
use bursar::ledger::{
    Charge, Charges, Command, CommandError, EntityId, EntityKind, Event, JournalConfig, Ledger,
    LedgerConfig, Reply, StateConfig,
};
use bursar::money::Money;

const SEEDS_DEFAULT: u64 = 64;
const STEPS_PER_SEED: usize = 400;
/// Entity ids drawn from: more than a request's levels, so chains differ.
const ENTITY_IDS_MAX: u32 = 24;
const WORKERS_MAX: u16 = 4;
/// The scale of amounts: limits and request costs are a few of these.
const COST_UNITS_MAX: i128 = 50_000;

// ---------------------------------------------------------------------------
// A PRNG (splitmix64): deterministic, no dependencies.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next() % n
    }
    /// Inclusive range.
    fn range(&mut self, lo: i128, hi: i128) -> i128 {
        assert!(lo <= hi);
        lo + (self.next() as i128).rem_euclid(hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// A naive calendar, written differently from the library's (loops over years
// and months instead of Hinnant's formulas), so the two check each other.

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const WEEK: i64 = 7 * DAY;

fn leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn month_days(y: i64, m: i64) -> i64 {
    match m {
        2 if leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_of(y: i64, m: i64, d: i64) -> i64 {
    assert!(y >= 1970);
    let mut days = 0;
    for yy in 1970..y {
        days += if leap(yy) { 366 } else { 365 };
    }
    for mm in 1..m {
        days += month_days(y, mm);
    }
    days + d - 1
}

fn date_of(mut days: i64) -> (i64, i64, i64) {
    assert!(days >= 0);
    let mut y = 1970;
    loop {
        let n = if leap(y) { 366 } else { 365 };
        if days < n {
            break;
        }
        days -= n;
        y += 1;
    }
    let mut m = 1;
    while days >= month_days(y, m) {
        days -= month_days(y, m);
        m += 1;
    }
    (y, m, days + 1)
}

fn ms_of(y: i64, m: i64, d: i64, hh: i64, mm: i64) -> i64 {
    days_of(y, m, d) * DAY + hh * HOUR + mm * MINUTE
}

fn month_start(index: i64) -> i64 {
    days_of(1970 + index / 12, index % 12 + 1, 1) * DAY
}

fn add_months_clamped(anchor: i64, months: i64) -> i64 {
    let (y, m, d) = date_of(anchor / DAY);
    let index = (y - 1970) * 12 + (m - 1) + months;
    let (y2, m2) = (1970 + index / 12, index % 12 + 1);
    days_of(y2, m2, d.min(month_days(y2, m2))) * DAY + anchor % DAY
}

/// The period containing `now` (>= anchor >= 0 in this test), naively.
fn naive_period(budget: Option<&Budget>, anchor: i64, now: i64) -> (i64, i64) {
    let Some(reset) = budget.and_then(|b| b.reset) else {
        return (anchor, i64::MAX);
    };
    let calendar = budget.is_some_and(|b| b.alignment == Alignment::Calendar);
    let n = i64::from(reset.count());
    let fixed = match reset.unit() {
        ResetUnit::Minute => Some(MINUTE),
        ResetUnit::Hour => Some(HOUR),
        ResetUnit::Day => Some(DAY),
        ResetUnit::Week => Some(WEEK),
        _ => None,
    };
    if let Some(unit) = fixed {
        let len = n * unit;
        let origin = if !calendar {
            anchor
        } else if unit == WEEK {
            4 * DAY // 1970-01-05, the first Monday
        } else {
            0
        };
        assert!(now >= origin);
        let start = origin + (now - origin) / len * len;
        return (start, start + len);
    }
    let step = n * match reset.unit() {
        ResetUnit::Month => 1,
        ResetUnit::Quarter => 3,
        _ => 12,
    };
    if calendar {
        let (y, m, _) = date_of(now / DAY);
        let index = (y - 1970) * 12 + (m - 1);
        let s = index - index % step;
        return (month_start(s), month_start(s + step));
    }
    assert!(now >= anchor);
    let mut k = 0;
    while add_months_clamped(anchor, (k + 1) * step) <= now {
        k += 1;
    }
    (
        add_months_clamped(anchor, k * step),
        add_months_clamped(anchor, (k + 1) * step),
    )
}

// ---------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
struct ModelEntity {
    kind: EntityKind,
    budget: Option<Budget>,
    anchor: i64,
    start: i64,
    end: i64,
    spent: i128,
    topup: i128,
    lifetime: i128,
}

impl ModelEntity {
    fn limit_effective(&self) -> Option<i128> {
        let b = self.budget?;
        let credit = if b.reset.is_none() { self.topup } else { 0 };
        Some(b.limit.picodollars() + credit)
    }
    fn is_strict(&self) -> bool {
        self.budget.is_some_and(|b| b.mode == Mode::Strict)
    }
    fn roll(&mut self, t: i64) -> bool {
        if t < self.end {
            return false;
        }
        let (start, end) = naive_period(self.budget.as_ref(), self.anchor, t);
        self.start = start;
        self.end = end;
        self.spent = 0;
        true
    }
}

#[derive(Debug, Clone)]
enum FactBody {
    Settle {
        request_id: u128,
        charges: Vec<(u32, i128)>,
    },
    Reset(u32),
    TopUp(u32, i128),
    SetBudget(u32, EntityKind, Option<Budget>),
}

/// A durable fact, at its journal position.
#[derive(Debug, Clone)]
struct Fact {
    seq: u64,
    t: i64,
    body: FactBody,
}

#[derive(Debug, Default)]
struct Model {
    entities: BTreeMap<u32, ModelEntity>,
    settled: HashSet<u128>,
}

impl Model {
    fn apply(&mut self, fact: &Fact) {
        let t = fact.t;
        match &fact.body {
            FactBody::Settle {
                request_id,
                charges,
            } => {
                assert!(self.settled.insert(*request_id), "model: settled twice");
                for &(id, amount) in charges {
                    let e = self.entities.get_mut(&id).unwrap();
                    e.roll(t);
                    e.spent += amount;
                    e.lifetime += amount;
                }
            }
            FactBody::Reset(id) => {
                let e = self.entities.get_mut(id).unwrap();
                e.roll(t);
                e.spent = 0;
            }
            FactBody::TopUp(id, amount) => {
                let e = self.entities.get_mut(id).unwrap();
                e.topup += amount;
            }
            FactBody::SetBudget(id, kind, budget) => match self.entities.get_mut(id) {
                Some(e) => {
                    e.roll(t);
                    e.budget = *budget;
                    let (start, end) = naive_period(budget.as_ref(), e.anchor, t);
                    e.start = start;
                    e.end = end;
                }
                None => {
                    let (start, end) = naive_period(budget.as_ref(), t, t);
                    self.entities.insert(
                        *id,
                        ModelEntity {
                            kind: *kind,
                            budget: *budget,
                            anchor: t,
                            start,
                            end,
                            spent: 0,
                            topup: 0,
                            lifetime: 0,
                        },
                    );
                }
            },
        }
    }

    fn rebuild(facts: &[Fact]) -> Model {
        let mut model = Model::default();
        for fact in facts {
            model.apply(fact);
        }
        model
    }

    /// An entity as of `now`: (start, end, spent).
    fn as_of(&self, id: u32, now: i64) -> (i64, i64, i128) {
        let mut e = self.entities[&id].clone();
        e.roll(now);
        (e.start, e.end, e.spent)
    }
}

// ---------------------------------------------------------------------------
// Simulated workers.

#[derive(Debug, Clone)]
struct InFlight {
    request_id: u128,
    worst: i128,
    /// (entity, reserved out of a lease)
    levels: Vec<(u32, bool)>,
}

#[derive(Debug, Default, Clone)]
struct SimWorker {
    /// What the ledger thinks this worker holds, per entity.
    held: BTreeMap<u32, i128>,
    /// Reserved for requests in flight, per entity.
    reserved: BTreeMap<u32, i128>,
    in_flight: Vec<InFlight>,
}

impl SimWorker {
    fn free(&self, id: u32) -> i128 {
        self.held.get(&id).copied().unwrap_or(0) - self.reserved.get(&id).copied().unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct Stats {
    grants: u64,
    denials: u64,
    settles: u64,
    boundary_settles: u64,
    duplicates: u64,
    overruns: u64,
    worker_losses: u64,
    rollovers: u64,
    checkpoints: u64,
    crashes: u64,
    torn_tails: u64,
    snapshot_fallbacks: u64,
    lost_settles: u64,
    strict_at_limit: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.grants += o.grants;
        self.denials += o.denials;
        self.settles += o.settles;
        self.boundary_settles += o.boundary_settles;
        self.duplicates += o.duplicates;
        self.overruns += o.overruns;
        self.worker_losses += o.worker_losses;
        self.rollovers += o.rollovers;
        self.checkpoints += o.checkpoints;
        self.crashes += o.crashes;
        self.torn_tails += o.torn_tails;
        self.snapshot_fallbacks += o.snapshot_fallbacks;
        self.lost_settles += o.lost_settles;
        self.strict_at_limit += o.strict_at_limit;
    }
}

struct TestDir(PathBuf);

impl TestDir {
    fn new(seed: u64) -> TestDir {
        let path =
            std::env::temp_dir().join(format!("bursar-ledger-audit-{}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// The auditor.

struct Audit {
    rng: Rng,
    dir: TestDir,
    config: LedgerConfig,
    ledger: Option<Ledger>,
    now: i64,
    workers: Vec<SimWorker>,
    facts: Vec<Fact>,
    model: Model,
    /// Strict entities allowed above their limit for now (an overrun or a
    /// lowered limit put them there); cleared once they are back under.
    excused: HashSet<u32>,
    /// Block flags as broadcast in events.
    blocked_seen: BTreeMap<u32, bool>,
    next_request_id: u128,
    stats: Stats,
}

fn money(units: i128) -> Money {
    Money::from_picodollars(units).unwrap()
}

impl Audit {
    fn new(seed: u64) -> Audit {
        let mut rng = Rng(seed);
        let workers = 1 + rng.below(u64::from(WORKERS_MAX)) as u16;
        let config = LedgerConfig {
            state: StateConfig {
                workers,
                settled_ids_max: 1 << 16,
                cluster: false,
            },
            journal: JournalConfig {
                sync_interval_ms: rng.range(0, 5000) as u32,
                sync_records_max: rng.range(1, 64) as u32,
                segment_bytes_max: *rng.pick(&[4096, 64 * 1024, 1 << 20]),
                fsync: false,
            },
            snapshots_kept: *rng.pick(&[1, 2, 3]),
        };
        let starts = [
            ms_of(2023, 12, 31, 23, 0),
            ms_of(2024, 2, 28, 22, 0),
            ms_of(2024, 3, 31, 23, 30),
            ms_of(2024, 6, 30, 12, 0),
            ms_of(2099, 12, 31, 23, 0),
            ms_of(2100, 2, 28, 23, 0),
            ms_of(2020, 1, 1, 0, 0) + rng.range(0, 10 * 365) as i64 * DAY,
        ];
        let now = *rng.pick(&starts) + rng.range(0, HOUR as i128) as i64;
        let dir = TestDir::new(seed);
        let (ledger, report) = Ledger::open(&dir.0, config).unwrap();
        assert_eq!(report.journal_seq, 0);
        Audit {
            rng,
            dir,
            config,
            ledger: Some(ledger),
            now,
            workers: vec![SimWorker::default(); usize::from(workers)],
            facts: Vec::new(),
            model: Model::default(),
            excused: HashSet::new(),
            blocked_seen: BTreeMap::new(),
            next_request_id: 1,
            stats: Stats::default(),
        }
    }

    fn ledger(&mut self) -> &mut Ledger {
        self.ledger.as_mut().unwrap()
    }

    fn apply(&mut self, cmd: Command) -> Reply {
        let now = self.now;
        let reply = self.ledger().apply(now, &cmd).unwrap();
        let events: Vec<Event> = self.ledger().events().to_vec();
        for event in events {
            match event {
                Event::Blocked { entity, .. } => {
                    self.blocked_seen.insert(entity.0, true);
                }
                Event::Unblocked { entity, .. } => {
                    self.blocked_seen.insert(entity.0, false);
                }
                Event::NewEpoch { manual: false, .. } => self.stats.rollovers += 1,
                _ => {}
            }
        }
        reply
    }

    fn record(&mut self, seq: u64, body: FactBody) {
        let fact = Fact {
            seq,
            t: self.now,
            body,
        };
        self.model.apply(&fact);
        self.facts.push(fact);
    }

    fn random_budget(&mut self) -> Option<Budget> {
        if self.rng.chance(12) {
            return None;
        }
        let limit = money(self.rng.range(0, 6 * COST_UNITS_MAX));
        let reset = if self.rng.chance(20) {
            None
        } else {
            let unit = *self.rng.pick(&ResetUnit::ALL);
            let count = if self.rng.chance(80) {
                1
            } else {
                self.rng.range(2, 5) as u16
            };
            Some(Reset::new(count, unit).unwrap())
        };
        let alignment = if reset.is_some() && self.rng.chance(50) {
            Alignment::Calendar
        } else {
            Alignment::Rolling
        };
        let mode = if self.rng.chance(75) {
            Mode::Strict
        } else {
            Mode::Soft
        };
        let soft_limit = if self.rng.chance(30) {
            Some(money(self.rng.range(0, limit.picodollars())))
        } else {
            None
        };
        Some(Budget {
            limit,
            reset,
            alignment,
            mode,
            soft_limit,
        })
    }

    fn committed(&self, id: u32) -> i128 {
        let (_, _, spent) = self.model.as_of(id, self.now);
        spent + self.leased(id)
    }

    fn leased(&self, id: u32) -> i128 {
        self.workers
            .iter()
            .map(|w| w.held.get(&id).copied().unwrap_or(0))
            .sum()
    }

    fn excuse_if_over(&mut self, id: u32) {
        let e = &self.model.entities[&id];
        if let (true, Some(limit)) = (e.is_strict(), e.limit_effective()) {
            if self.committed(id) > limit {
                self.excused.insert(id);
            }
        }
    }

    // --- operations ---

    fn op_set_budget(&mut self) {
        let id = self.rng.below(u64::from(ENTITY_IDS_MAX)) as u32;
        let budget = self.random_budget();
        let existing = self.model.entities.get(&id).map(|e| e.kind);
        let kind = match existing {
            Some(kind) if self.rng.chance(90) => kind,
            _ => *self.rng.pick(&EntityKind::ALL),
        };
        let reply = self.apply(Command::SetBudget {
            entity: EntityId(id),
            kind,
            budget,
        });
        match (existing, reply) {
            (Some(existing), Reply::Rejected(CommandError::KindMismatch { .. })) => {
                assert_ne!(existing, kind)
            }
            (_, Reply::Applied { seq }) => {
                self.record(seq, FactBody::SetBudget(id, kind, budget));
                self.excuse_if_over(id);
            }
            (_, r) => panic!("set budget: {r:?}"),
        }
    }

    fn op_request(&mut self) {
        if self.model.entities.is_empty() {
            return;
        }
        let w = self.rng.below(self.workers.len() as u64) as usize;
        let ids: Vec<u32> = self.model.entities.keys().copied().collect();
        // Up to every level a request may have: the organisation's four,
        // the model's four and one per budgeted tag key (entities of every
        // kind, EntityKind::ALL, are drawn by op_set_budget).
        let most = ids
            .len()
            .min(bursar::ledger::messages::CHARGES_PER_SETTLE_MAX);
        let levels = 1 + self.rng.below(most as u64) as usize;
        let mut chosen: Vec<u32> = Vec::new();
        while chosen.len() < levels {
            let id = *self.rng.pick(&ids);
            if !chosen.contains(&id) {
                chosen.push(id);
            }
        }
        let worst = self.rng.range(1, COST_UNITS_MAX);
        let mut admitted = true;
        let mut reserved_levels = Vec::new();
        for &id in &chosen {
            let strict = self.model.entities[&id].is_strict();
            if !strict {
                reserved_levels.push((id, false));
                continue;
            }
            let free = self.workers[w].free(id);
            if free < worst {
                let need = worst - free.max(0);
                let want = need + self.rng.range(0, 3 * COST_UNITS_MAX);
                let limit = self.model.entities[&id].limit_effective();
                let remaining = limit.map(|l| (l - self.committed(id)).max(0));
                let reply = self.apply(Command::LeaseRequest {
                    worker: w as u16,
                    entity: EntityId(id),
                    need: money(need),
                    want: money(want),
                });
                let Reply::LeaseGrant { granted, .. } = reply else {
                    panic!("lease request: {reply:?}");
                };
                let granted = granted.picodollars();
                // A grant is all of the need or nothing, never past the want,
                // never past what remains; and a need that fits is granted.
                assert!(granted == 0 || (need <= granted && granted <= want));
                if let Some(remaining) = remaining {
                    assert!(
                        granted <= remaining,
                        "granted {granted} > remaining {remaining}"
                    );
                    if need <= remaining {
                        assert!(
                            granted >= need,
                            "a need of {need} fits {remaining} but was denied"
                        );
                    }
                    if remaining - granted == 0 {
                        self.stats.strict_at_limit += 1;
                    }
                }
                *self.workers[w].held.entry(id).or_default() += granted;
                if granted == 0 {
                    self.stats.denials += 1;
                    admitted = false;
                    break;
                }
                self.stats.grants += 1;
            }
            reserved_levels.push((id, true));
        }
        if !admitted {
            return;
        }
        for &(id, from_lease) in &reserved_levels {
            if from_lease {
                *self.workers[w].reserved.entry(id).or_default() += worst;
            }
        }
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.workers[w].in_flight.push(InFlight {
            request_id,
            worst,
            levels: reserved_levels,
        });
    }

    fn op_settle(&mut self) {
        let busy: Vec<usize> = (0..self.workers.len())
            .filter(|&w| !self.workers[w].in_flight.is_empty())
            .collect();
        if busy.is_empty() {
            return;
        }
        let w = *self.rng.pick(&busy);
        let i = self.rng.below(self.workers[w].in_flight.len() as u64) as usize;
        let req = self.workers[w].in_flight.swap_remove(i);
        // Honest: at most the worst case. Rarely an estimate below the truth.
        let actual = if self.rng.chance(3) {
            req.worst + self.rng.range(1, req.worst)
        } else {
            self.rng.range(0, req.worst)
        };
        let mut charges = Charges::new();
        for &(id, from_lease) in &req.levels {
            charges
                .push(Charge {
                    entity: EntityId(id),
                    amount: money(actual),
                    from_lease,
                })
                .unwrap();
        }
        // What the model expects the ledger to take from the lease.
        let mut uncovered_expected = 0;
        let mut settles_at_boundary = false;
        for &(id, from_lease) in &req.levels {
            let covered = if from_lease {
                let held = self.workers[w].held.entry(id).or_default();
                let covered = actual.min(*held);
                *held -= covered;
                *self.workers[w].reserved.get_mut(&id).unwrap() -= req.worst;
                covered
            } else {
                0
            };
            let e = &self.model.entities[&id];
            if e.is_strict() && e.budget.is_some() && covered < actual {
                uncovered_expected += actual - covered;
                self.excused.insert(id);
                self.stats.overruns += 1;
            }
            let (start, _, _) = self.model.as_of(id, self.now);
            settles_at_boundary |= start == self.now;
        }
        let estimated = self.rng.chance(20);
        let reply = self.apply(Command::Settle {
            request_id: req.request_id,
            worker: w as u16,
            estimated,
            charges,
        });
        let Reply::Settled {
            request_id,
            seq,
            charged,
            uncovered,
        } = reply
        else {
            panic!("settle: {reply:?}");
        };
        assert_eq!(request_id, req.request_id);
        assert_eq!(charged.picodollars(), actual * req.levels.len() as i128);
        assert_eq!(uncovered.picodollars(), uncovered_expected);
        self.stats.settles += 1;
        if settles_at_boundary {
            self.stats.boundary_settles += 1;
        }
        self.record(
            seq,
            FactBody::Settle {
                request_id: req.request_id,
                charges: req.levels.iter().map(|&(id, _)| (id, actual)).collect(),
            },
        );
    }

    fn op_duplicate(&mut self) {
        let settled: Vec<u128> = self
            .facts
            .iter()
            .filter_map(|f| match f.body {
                FactBody::Settle { request_id, .. } => Some(request_id),
                _ => None,
            })
            .collect();
        if settled.is_empty() {
            return;
        }
        let request_id = *self.rng.pick(&settled);
        let id = *self.model.entities.keys().next().unwrap();
        let before = self.ledger().state().books();
        let amount = money(self.rng.range(0, COST_UNITS_MAX));
        let reply = self.apply(Command::Settle {
            request_id,
            worker: 0,
            estimated: false,
            charges: Charges::from_slice(&[Charge {
                entity: EntityId(id),
                amount,
                from_lease: false,
            }])
            .unwrap(),
        });
        assert_eq!(reply, Reply::Duplicate { request_id });
        assert!(self.ledger().state().records().is_empty());
        assert_eq!(self.ledger().state().books(), before);
        self.stats.duplicates += 1;
    }

    fn op_lease_return(&mut self) {
        let w = self.rng.below(self.workers.len() as u64) as usize;
        let frees: Vec<(u32, i128)> = self.workers[w]
            .held
            .keys()
            .map(|&id| (id, self.workers[w].free(id)))
            .filter(|&(_, free)| free > 0)
            .collect();
        if frees.is_empty() {
            return;
        }
        let (id, free) = *self.rng.pick(&frees);
        let amount = self.rng.range(1, free);
        let reply = self.apply(Command::LeaseReturn {
            worker: w as u16,
            entity: EntityId(id),
            amount: money(amount),
        });
        assert_eq!(
            reply,
            Reply::LeaseReturned {
                entity: EntityId(id),
                returned: money(amount)
            }
        );
        *self.workers[w].held.get_mut(&id).unwrap() -= amount;
    }

    fn op_worker_lost(&mut self) {
        let w = self.rng.below(self.workers.len() as u64) as usize;
        let expected = self.workers[w].held.values().filter(|&&h| h > 0).count() as u32;
        let reply = self.apply(Command::WorkerLost { worker: w as u16 });
        assert_eq!(
            reply,
            Reply::WorkerLost {
                worker: w as u16,
                leases_expired: expected
            }
        );
        // Its requests in flight are gone with it; it restarts with nothing.
        self.workers[w] = SimWorker::default();
        self.stats.worker_losses += 1;
    }

    fn op_reset(&mut self) {
        let Some(&id) = self.pick_entity() else {
            return;
        };
        let reply = self.apply(Command::Reset {
            entity: EntityId(id),
        });
        let Reply::Applied { seq } = reply else {
            panic!("reset: {reply:?}")
        };
        self.record(seq, FactBody::Reset(id));
    }

    fn op_top_up(&mut self) {
        let Some(&id) = self.pick_entity() else {
            return;
        };
        let amount = self.rng.range(1, 2 * COST_UNITS_MAX);
        let prepaid = self.model.entities[&id]
            .budget
            .is_some_and(|b| b.reset.is_none());
        let reply = self.apply(Command::TopUp {
            entity: EntityId(id),
            amount: money(amount),
        });
        match reply {
            Reply::Applied { seq } if prepaid => self.record(seq, FactBody::TopUp(id, amount)),
            Reply::Rejected(CommandError::TopUpNotPrepaid(_)) if !prepaid => {}
            r => panic!("top-up (prepaid: {prepaid}): {r:?}"),
        }
    }

    fn op_tick(&mut self) {
        loop {
            let reply = self.apply(Command::Tick);
            let Reply::Ticked { more, .. } = reply else {
                panic!("tick: {reply:?}")
            };
            if !more {
                break;
            }
        }
        // After a full tick every block flag change has been broadcast.
        for &id in self.model.entities.keys() {
            let view = self
                .ledger
                .as_ref()
                .unwrap()
                .state()
                .view(EntityId(id), self.now)
                .unwrap();
            assert_eq!(
                self.blocked_seen.get(&id).copied().unwrap_or(false),
                view.blocked,
                "entity {id}: broadcast block flag differs"
            );
        }
    }

    fn pick_entity(&mut self) -> Option<&u32> {
        if self.model.entities.is_empty() {
            return None;
        }
        let n = self.rng.below(self.model.entities.len() as u64) as usize;
        self.model.entities.keys().nth(n)
    }

    fn op_clock(&mut self) {
        match self.rng.below(10) {
            0..=5 => self.now += self.rng.range(0, 5_000) as i64,
            6..=8 => {
                // Land on (or just before) some entity's period end.
                let ends: Vec<i64> = self
                    .model
                    .entities
                    .keys()
                    .map(|&id| self.model.as_of(id, self.now).1)
                    .filter(|&end| end != i64::MAX)
                    .collect();
                if let Some(&end) = ends.get(self.rng.below(ends.len().max(1) as u64) as usize) {
                    let target = end - self.rng.range(0, 1) as i64;
                    self.now = self.now.max(target);
                }
            }
            _ => self.now += self.rng.range(HOUR as i128, 100 * DAY as i128) as i64,
        }
    }

    fn op_checkpoint(&mut self) {
        self.ledger().checkpoint().unwrap();
        self.stats.checkpoints += 1;
    }

    fn op_crash(&mut self) {
        let ledger = self.ledger.take().unwrap();
        let durable = if self.rng.chance(50) {
            let keep = self.rng.below(ledger.pending_bytes() as u64 + 1) as usize;
            ledger.crash_with_torn_write(keep).unwrap()
        } else {
            let durable = ledger.durable_seq();
            drop(ledger);
            durable
        };
        // Sometimes the newest snapshot is damaged too: a single fault, when an
        // older valid snapshot or the whole journal is there to fall back on.
        let snapshots = list_snapshots(&self.dir.0);
        let journal_whole = self.dir.0.join("journal-00000000000000000001.log").exists();
        let fallback = snapshots.len() >= 2 || journal_whole;
        let damaged = if fallback && self.rng.chance(25) {
            snapshots.last().map(|path| {
                let mut bytes = std::fs::read(path).unwrap();
                let i = self.rng.below(bytes.len() as u64) as usize;
                bytes[i] ^= 0x20;
                std::fs::write(path, bytes).unwrap();
            })
        } else {
            None
        };
        if std::env::var("BURSAR_AUDIT_TRACE").is_ok() {
            let mut names: Vec<String> = std::fs::read_dir(&self.dir.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            eprintln!(
                "crash: durable {durable}, damaged {}, files {names:?}",
                damaged.is_some()
            );
        }
        let (ledger, report) = Ledger::open(&self.dir.0, self.config).unwrap();
        if damaged.is_some() {
            assert_eq!(report.snapshots_rejected.len(), 1, "{report:?}");
            self.stats.snapshot_fallbacks += 1;
        }
        assert_eq!(
            report.journal_seq, durable,
            "recovered to the last durable record"
        );
        if report.torn_tail.is_some() {
            self.stats.torn_tails += 1;
        }
        self.ledger = Some(ledger);
        self.stats.crashes += 1;
        // The model: facts past the durable point never happened.
        let lost: Vec<u128> = self
            .facts
            .iter()
            .filter(|f| f.seq > durable)
            .filter_map(|f| match f.body {
                FactBody::Settle { request_id, .. } => Some(request_id),
                _ => None,
            })
            .collect();
        self.facts.retain(|f| f.seq <= durable);
        self.stats.lost_settles += lost.len() as u64;
        self.model = Model::rebuild(&self.facts);
        for id in lost {
            assert!(!self.ledger().state().is_settled(id));
        }
        // Every worker died with the process.
        for w in &mut self.workers {
            *w = SimWorker::default();
        }
        self.excused.clear();
        let ids: Vec<u32> = self.model.entities.keys().copied().collect();
        for id in ids {
            self.excuse_if_over(id);
        }
        let blocked: Vec<(u32, bool)> = self
            .model
            .entities
            .keys()
            .map(|&id| {
                let v = self
                    .ledger
                    .as_ref()
                    .unwrap()
                    .state()
                    .view(EntityId(id), self.now);
                (id, v.unwrap().blocked)
            })
            .collect();
        self.blocked_seen = blocked.into_iter().collect();
        // Recovering again from the same files gives the same books.
        let again = bursar::ledger::recovery::recover(&self.dir.0, self.config.state).unwrap();
        assert_eq!(again.state.books(), self.ledger().state().books());
    }

    /// Replays the files read-only and compares with the live books.
    fn op_replay_check(&mut self) {
        self.ledger().flush().unwrap();
        let replayed = bursar::ledger::recovery::recover(&self.dir.0, self.config.state).unwrap();
        assert_eq!(replayed.state.books(), self.ledger().state().books());
    }

    // --- the audit ---

    fn check(&mut self) {
        let now = self.now;
        let state = self.ledger.as_ref().unwrap().state();
        state.check_invariants();
        // Literal sums of every settled charge, per entity.
        let mut charged: BTreeMap<u32, i128> = BTreeMap::new();
        let mut ids = HashSet::new();
        for f in &self.facts {
            if let FactBody::Settle {
                request_id,
                charges,
            } = &f.body
            {
                assert!(
                    ids.insert(*request_id),
                    "request {request_id} settled twice"
                );
                assert!(state.is_settled(*request_id), "request {request_id} lost");
                for &(id, amount) in charges {
                    *charged.entry(id).or_default() += amount;
                }
            }
        }
        assert_eq!(state.entity_count() as usize, self.model.entities.len());
        for (&id, e) in &self.model.entities {
            let v = state.view(EntityId(id), now).expect("entity missing");
            let (start, end, spent) = self.model.as_of(id, now);
            let ctx = format!("entity {id} at {now}: {v:?} vs model {e:?}");
            assert_eq!(v.kind, e.kind, "{ctx}");
            assert_eq!(v.budget, e.budget, "{ctx}");
            assert_eq!((v.period.start_ms, v.period.end_ms), (start, end), "{ctx}");
            assert_eq!(v.spent.picodollars(), spent, "{ctx}");
            assert_eq!(v.topup.picodollars(), e.topup, "{ctx}");
            assert_eq!(v.lifetime_spent.picodollars(), e.lifetime, "{ctx}");
            assert_eq!(
                v.lifetime_spent.picodollars(),
                charged.get(&id).copied().unwrap_or(0),
                "{ctx}: lifetime differs from the sum of its charges"
            );
            let leased: i128 = self
                .workers
                .iter()
                .map(|w| w.held.get(&id).copied().unwrap_or(0))
                .sum();
            assert_eq!(v.leased.picodollars(), leased, "{ctx}");
            for (w, worker) in self.workers.iter().enumerate() {
                assert_eq!(
                    state.lease(w as u16, EntityId(id)).picodollars(),
                    worker.held.get(&id).copied().unwrap_or(0),
                    "{ctx}: worker {w}'s lease"
                );
            }
            let limit = e.limit_effective();
            assert_eq!(v.limit_effective.map(|m| m.picodollars()), limit, "{ctx}");
            let committed = spent + leased;
            assert_eq!(v.blocked, limit.is_some_and(|l| committed >= l), "{ctx}");
            assert_eq!(
                v.overshoot.picodollars(),
                limit.map_or(0, |l| (spent - l).max(0)),
                "{ctx}"
            );
            if let (true, Some(limit)) = (e.is_strict(), limit) {
                if committed <= limit {
                    self.excused.remove(&id);
                }
                if !self.excused.contains(&id) {
                    assert!(
                        committed <= limit,
                        "{ctx}: strict budget over-committed: {committed} > {limit}"
                    );
                    assert!(v.excess.is_zero(), "{ctx}");
                }
            }
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=29 => self.op_request(),
            30..=54 => self.op_settle(),
            55..=59 => self.op_duplicate(),
            60..=64 => self.op_lease_return(),
            65..=66 => self.op_worker_lost(),
            67..=69 => self.op_reset(),
            70..=72 => self.op_top_up(),
            73..=76 => self.op_set_budget(),
            77..=80 => self.op_tick(),
            81..=92 => self.op_clock(),
            93..=94 => self.op_checkpoint(),
            95..=97 => self.op_crash(),
            _ => self.op_replay_check(),
        }
        let now = self.now;
        self.ledger().flush_if_due(now).unwrap();
        self.check();
    }
}

fn list_snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("snapshot-") && name.ends_with(".rkyv")
        })
        .collect();
    out.sort();
    out
}

fn run_seed(seed: u64) -> Stats {
    let mut audit = Audit::new(seed);
    // Start with a few entities so requests have somewhere to go.
    for _ in 0..4 {
        audit.op_set_budget();
    }
    for _ in 0..STEPS_PER_SEED {
        audit.step();
    }
    // A final crash and recovery must still balance.
    audit.op_crash();
    audit.check();
    audit.stats
}

#[test]
fn ledger_audit_random_workloads() {
    let seeds: Vec<u64> = match std::env::var("BURSAR_AUDIT_SEED") {
        Ok(s) => vec![s.parse().expect("BURSAR_AUDIT_SEED is a number")],
        Err(_) => {
            let n = std::env::var("BURSAR_AUDIT_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(SEEDS_DEFAULT);
            (0..n).map(|i| 0x5eed_0000 + i).collect()
        }
    };
    let mut total = Stats::default();
    for seed in seeds {
        let stats = std::panic::catch_unwind(|| run_seed(seed)).unwrap_or_else(|e| {
            eprintln!("ledger audit failed: reproduce with BURSAR_AUDIT_SEED={seed}");
            std::panic::resume_unwind(e)
        });
        total.add(&stats);
    }
    eprintln!("ledger audit: {total:?}");
    // The workload must have exercised what the audit is for.
    if std::env::var("BURSAR_AUDIT_SEED").is_err() {
        assert!(total.settles > 1000, "{total:?}");
        assert!(total.denials > 0 && total.strict_at_limit > 0, "{total:?}");
        assert!(total.boundary_settles > 0, "{total:?}");
        assert!(total.duplicates > 0 && total.overruns > 0, "{total:?}");
        assert!(total.rollovers > 0 && total.worker_losses > 0, "{total:?}");
        assert!(total.crashes > 0 && total.torn_tails > 0, "{total:?}");
        assert!(
            total.snapshot_fallbacks > 0 && total.lost_settles > 0,
            "{total:?}"
        );
    }
}

/// The naive calendar agrees with the library's on every day of two centuries.
#[test]
fn naive_calendar_agrees_with_the_library() {
    use bursar::budget::period::{civil_from_days, days_from_civil};
    for days in 0..(200 * 366) {
        let (y, m, d) = date_of(days);
        assert_eq!(civil_from_days(days), (y, m as u32, d as u32));
        assert_eq!(days_from_civil(y, m as u32, d as u32), days);
    }
}

/// A charge settled at the last millisecond of a period and one at the first
/// millisecond of the next land in exactly one period each, across a crash.
#[test]
fn boundary_charges_across_month_quarter_and_leap_day() {
    for (anchor, boundary, reset, alignment) in [
        (
            ms_of(2024, 1, 15, 0, 0),
            ms_of(2024, 2, 1, 0, 0),
            ResetUnit::Month,
            Alignment::Calendar,
        ),
        (
            ms_of(2024, 2, 10, 0, 0),
            ms_of(2024, 4, 1, 0, 0),
            ResetUnit::Quarter,
            Alignment::Calendar,
        ),
        (
            ms_of(2023, 6, 1, 0, 0),
            ms_of(2024, 1, 1, 0, 0),
            ResetUnit::Year,
            Alignment::Calendar,
        ),
        (
            ms_of(2024, 1, 31, 9, 0),
            ms_of(2024, 2, 29, 9, 0),
            ResetUnit::Month,
            Alignment::Rolling,
        ),
        (
            ms_of(2024, 2, 29, 0, 0),
            ms_of(2025, 2, 28, 0, 0),
            ResetUnit::Year,
            Alignment::Rolling,
        ),
    ] {
        let dir = TestDir::new(boundary as u64);
        let config = LedgerConfig::default();
        let (mut ledger, _) = Ledger::open(&dir.0, config).unwrap();
        let key = EntityId(1);
        let budget = Budget {
            alignment,
            ..Budget::new(Money::from_usd(10), Some(Reset::one(reset)))
        };
        let set = Command::SetBudget {
            entity: key,
            kind: EntityKind::Key,
            budget: Some(budget),
        };
        ledger.apply(anchor, &set).unwrap();
        let lease = Command::LeaseRequest {
            worker: 0,
            entity: key,
            need: Money::from_usd(3),
            want: Money::from_usd(3),
        };
        assert!(matches!(
            ledger.apply(anchor, &lease).unwrap(),
            Reply::LeaseGrant { granted, .. } if granted == Money::from_usd(3)
        ));
        let settle = |id: u128, usd: u32| Command::Settle {
            request_id: id,
            worker: 0,
            estimated: false,
            charges: Charges::from_slice(&[Charge {
                entity: key,
                amount: Money::from_usd(usd),
                from_lease: true,
            }])
            .unwrap(),
        };
        ledger.apply(boundary - 1, &settle(1, 1)).unwrap();
        let before = ledger.state().view(key, boundary - 1).unwrap();
        assert_eq!(
            (before.period.end_ms, before.spent),
            (boundary, Money::from_usd(1))
        );
        ledger.apply(boundary, &settle(2, 2)).unwrap();
        let check = |ledger: &Ledger| {
            let after = ledger.state().view(key, boundary).unwrap();
            assert_eq!(after.period.start_ms, boundary);
            assert_eq!(after.spent, Money::from_usd(2));
            assert_eq!(after.lifetime_spent, Money::from_usd(3));
            assert_eq!(after.epoch, 1);
        };
        check(&ledger);
        // Duplicates on either side of the boundary change nothing.
        assert_eq!(
            ledger.apply(boundary + 5, &settle(1, 1)).unwrap(),
            Reply::Duplicate { request_id: 1 }
        );
        ledger.flush().unwrap();
        drop(ledger);
        let (ledger, _) = Ledger::open(&dir.0, config).unwrap();
        check(&ledger);
        ledger.state().check_invariants();
    }
}
