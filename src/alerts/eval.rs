//! The alert evaluator: a deterministic state machine on the ledger thread.
//!
//! The ledger thread shows it every entity whose books changed (a settle, a
//! rollover, a reset, a top-up, a budget change) and every 402 a worker
//! answered, with the entity's view after the change and the journal
//! position (a charge that crosses nothing new and is due no forecast look
//! only adds to the burn history, without building a view); the evaluator decides what
//! fired and leaves the alerts in a buffer the thread appends to the outbox
//! (and syncs) before the delivery thread can see them. No I/O, no clock.
//!
//! Exactly once per period: an alert's id is derived from what it is about
//! (entity, epoch, arming generation, fact), and the evaluator never emits an
//! id it has emitted before. After a restart it is rebuilt from the outbox (the
//! ids, and per entity its last epoch and generation), then shown every
//! entity's current view: a crossing whose charge reached the journal but
//! whose alert never reached the outbox fires then, one that did is not
//! repeated. A crash can therefore neither lose nor repeat an alert.
//!
//! Level-triggered: a threshold fires when spent reaches it and its id is new.
//! Spend only grows within an epoch, so a spend hovering near a threshold
//! cannot make it fire twice. A new period or a reset (a new epoch) ends
//! what was firing with one `budget.recovered`; a top-up or a raised limit
//! that brings spend back under a fired threshold re-arms it (a new
//! generation: the journal position of the change), with one
//! `budget.recovered` for what no longer holds.
//!
//! Forecast: per entity with a forecast rule, spend in the last 60 minutes
//! (per minute) and the last 24 hours (per hour). It fires, once per epoch
//! and generation, when the budget runs out before its reset at both the last
//! hour's and the last day's burn rate (each over its window, or over the
//! time the evaluator has watched when shorter, at least
//! [`FORECAST_WATCHED_MIN_MS`]); it clears (a `budget.recovered`) when either
//! rate no longer projects exhaustion. The rates are not persisted: after a
//! restart they are rebuilt from the spend seen since.

use std::collections::{HashMap, HashSet};

/// The evaluator's maps hash with foldhash: keys are ids and id bits, not
/// anything a client chooses.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;
use std::sync::Arc;

use crate::budget::period::{format_rfc3339_ms, TIME_MS_NEVER};
use crate::budget::Mode;
use crate::ledger::{EntityId, EntityKind, EntityView, LedgerState, RecordBody};
use crate::money::Money;

use super::event::*;
use super::rules::{AlertPlan, Armed, ById, Fact};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
/// The shortest watch the forecast divides by, so a burst in the first
/// seconds after start does not project a rate it never keeps.
pub const FORECAST_WATCHED_MIN_MS: i64 = 15 * MINUTE_MS;

/// Why the ledger thread shows the evaluator an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A settle charged it this much.
    Spend(Money),
    TopUp,
    /// Its budget was set or changed.
    Budget,
    Reset,
    Rollover,
    /// A worker refused a request at it: a 402.
    Refused,
    /// Start-up, a new plan, or the periodic sweep of forecasts.
    Sweep,
}

/// Hours of spend history kept per watched entity: the last day for the
/// forecast, the same hour of the trailing week for the anomaly baseline.
pub const BURN_HOURS_KEPT: usize = 8 * 24;
/// How often, at most, a charged entity's forecast and anomaly are looked
/// at (each charge adds to the burn history; the projections need not be
/// redone per charge). The minute sweep looks at them too.
pub const RATES_EVAL_INTERVAL_MS: i64 = 10_000;
/// Most entities whose burn history is kept (forecast and anomaly rules);
/// past it, further entities are not forecast (counted in
/// [`AlertBook::burns_refused`]).
pub const BURN_ENTITIES_MAX: usize = 100_000;
/// Days of the same hour the anomaly baseline averages, at most.
pub const ANOMALY_BASELINE_DAYS_MAX: u32 = 7;

/// Spend per minute over the last hour and per hour over the last 8 days.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Burn {
    since_ms: i64,
    minute: i64,
    /// 60 slots, by minute index modulo 60.
    minutes: Vec<i128>,
    hour: i64,
    /// [`BURN_HOURS_KEPT`] slots, by hour index modulo their count.
    hours: Vec<i128>,
}

impl Burn {
    pub fn new(now_ms: i64) -> Burn {
        Burn {
            since_ms: now_ms,
            minute: now_ms.div_euclid(MINUTE_MS),
            minutes: vec![0; 60],
            hour: now_ms.div_euclid(HOUR_MS),
            hours: vec![0; BURN_HOURS_KEPT],
        }
    }

    /// Whether a history read back from disk has the shape this build keeps.
    fn is_valid(&self) -> bool {
        self.minutes.len() == 60 && self.hours.len() == BURN_HOURS_KEPT
    }

    fn advance(&mut self, now_ms: i64) {
        fn roll(slots: &mut [i128], at: &mut i64, to: i64) {
            if to <= *at {
                return;
            }
            let n = slots.len() as i64;
            let steps = (to - *at).min(n);
            for i in 1..=steps {
                slots[(*at + i).rem_euclid(n) as usize] = 0;
            }
            *at = to;
        }
        roll(
            &mut self.minutes,
            &mut self.minute,
            now_ms.div_euclid(MINUTE_MS),
        );
        roll(&mut self.hours, &mut self.hour, now_ms.div_euclid(HOUR_MS));
    }

    fn add(&mut self, now_ms: i64, amount: Money) {
        self.advance(now_ms);
        let a = amount.picodollars();
        let m = &mut self.minutes[self.minute.rem_euclid(60) as usize];
        *m = m.saturating_add(a);
        let n = self.hours.len() as i64;
        let h = &mut self.hours[self.hour.rem_euclid(n) as usize];
        *h = h.saturating_add(a);
    }

    /// Picodollars per hour over the window (or the time watched, if shorter).
    fn rate_per_hour(&self, now_ms: i64, window_ms: i64, sum: i128) -> i128 {
        let watched = (now_ms - self.since_ms).clamp(FORECAST_WATCHED_MIN_MS, window_ms);
        sum.saturating_mul(i128::from(HOUR_MS)) / i128::from(watched)
    }

    fn last_hour(&self) -> i128 {
        self.minutes.iter().fold(0, |a, b| a.saturating_add(*b))
    }

    fn rates(&mut self, now_ms: i64) -> (i128, i128) {
        self.advance(now_ms);
        let n = self.hours.len() as i64;
        let day: i128 = (0..24)
            .map(|i| self.hours[(self.hour - i).rem_euclid(n) as usize])
            .fold(0, |a, b| a.saturating_add(b));
        (
            self.rate_per_hour(now_ms, HOUR_MS, self.last_hour()),
            self.rate_per_hour(now_ms, 24 * HOUR_MS, day),
        )
    }

    /// The last 60 minutes' spend and the mean spend of the same hour of the
    /// day over the trailing days watched (at most
    /// [`ANOMALY_BASELINE_DAYS_MAX`]), with how many days that is.
    fn anomaly(&mut self, now_ms: i64) -> (i128, i128, u32) {
        self.advance(now_ms);
        let n = self.hours.len() as i64;
        let mut sum: i128 = 0;
        let mut days = 0u32;
        for d in 1..=i64::from(ANOMALY_BASELINE_DAYS_MAX) {
            let hour = self.hour - 24 * d;
            // Only hours watched from their start count.
            if hour * HOUR_MS < self.since_ms {
                break;
            }
            sum = sum.saturating_add(self.hours[hour.rem_euclid(n) as usize]);
            days += 1;
        }
        let mean = if days == 0 { 0 } else { sum / i128::from(days) };
        (self.last_hour(), mean, days)
    }
}

/// When spending `rate` (picodollars an hour) uses up `remaining`.
fn exhaustion_ms(now_ms: i64, remaining: i128, rate: i128) -> i64 {
    if rate <= 0 {
        return TIME_MS_NEVER;
    }
    let ms = remaining.saturating_mul(i128::from(HOUR_MS)) / rate;
    i64::try_from(ms)
        .ok()
        .and_then(|ms| now_ms.checked_add(ms))
        .unwrap_or(TIME_MS_NEVER)
}

#[derive(Debug, Clone)]
struct EntState {
    epoch: u64,
    generation: u64,
    period_start_ms: i64,
    burn: Option<Box<Burn>>,
    /// The forecast's two ids for (epoch, generation), kept so a charge
    /// does not hash them again: (epoch, generation, fired, cleared).
    forecast_ids: Option<(u64, u64, u128, u128)>,
    /// What is known to have fired in (epoch, generation), so a charge past
    /// a fired threshold does not hash its id again.
    known: Known,
    /// When the forecast and anomaly may next be looked at on a charge.
    rates_due_ms: i64,
    /// [`EntState::next_threshold`]'s answer, for the limit and the count
    /// of fired thresholds it was computed at (one comparison a charge
    /// instead of a multiplication per threshold).
    first_threshold: Option<(Money, usize, Money)>,
}

#[derive(Debug, Clone, Default)]
struct Known {
    epoch: u64,
    generation: u64,
    thresholds: Vec<u16>,
    soft_limit: bool,
    exhausted: bool,
}

impl EntState {
    fn new(epoch: u64, period_start_ms: i64) -> EntState {
        EntState {
            epoch,
            generation: 0,
            period_start_ms,
            burn: None,
            forecast_ids: None,
            known: Known {
                epoch,
                ..Known::default()
            },
            rates_due_ms: i64::MIN,
            first_threshold: None,
        }
    }

    /// The lowest spend that reaches a threshold of `thresholds` not known
    /// to have fired (`Money::MAX` when all have), cached per limit and per
    /// count of fired thresholds: below it, a charge crosses nothing.
    fn next_threshold(&mut self, limit: Money, thresholds: &[u16]) -> Money {
        if (self.known.epoch, self.known.generation) != (self.epoch, self.generation) {
            self.known = Known {
                epoch: self.epoch,
                generation: self.generation,
                ..Known::default()
            };
        }
        let fired = self.known.thresholds.len();
        match self.first_threshold {
            Some((l, n, at)) if l == limit && n == fired => at,
            _ => {
                let at = thresholds
                    .iter()
                    .find(|t| !self.known.thresholds.contains(t))
                    .map_or(Money::MAX, |&t| least_spend_crossing(limit, t));
                self.first_threshold = Some((limit, fired, at));
                at
            }
        }
    }

    /// Whether `fact` is known to have fired in this epoch and generation.
    fn known_fired(&mut self, fact: &KeyFact) -> bool {
        if (self.known.epoch, self.known.generation) != (self.epoch, self.generation) {
            self.known = Known {
                epoch: self.epoch,
                generation: self.generation,
                ..Known::default()
            };
            return false;
        }
        match fact {
            KeyFact::Threshold(t) => self.known.thresholds.contains(t),
            KeyFact::SoftLimit => self.known.soft_limit,
            KeyFact::Exhausted => self.known.exhausted,
            _ => false,
        }
    }

    /// Notes that `fact` fired (or had fired) in this epoch and generation;
    /// call after [`EntState::known_fired`].
    fn mark_fired(&mut self, fact: &KeyFact) {
        match fact {
            KeyFact::Threshold(t) => self.known.thresholds.push(*t),
            KeyFact::SoftLimit => self.known.soft_limit = true,
            KeyFact::Exhausted => self.known.exhausted = true,
            _ => {}
        }
    }

    /// The ids of this epoch and generation's forecast and its clearing.
    fn forecast_ids(&mut self, id: EntityId) -> (u128, u128) {
        match self.forecast_ids {
            Some((e, g, fired, cleared)) if (e, g) == (self.epoch, self.generation) => {
                (fired, cleared)
            }
            _ => {
                let fired = fact_bits(id, self, &KeyFact::Forecast);
                let cleared = fact_bits(id, self, &KeyFact::ForecastCleared);
                self.forecast_ids = Some((self.epoch, self.generation, fired, cleared));
                (fired, cleared)
            }
        }
    }
}

/// One entity's alert state (`GET /admin/alerts/state`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntityAlertState {
    pub entity: EntityRef,
    pub epoch: u64,
    pub generation: u64,
    pub period_start: String,
    pub reset_at: Option<String>,
    pub spent_usd: String,
    pub limit_usd: Option<String>,
    /// What fired this period and still stands: `threshold:80`,
    /// `soft_limit`, `exhausted`, `forecast`.
    pub firing: Vec<String>,
    pub thresholds: Vec<u16>,
    pub rules: Vec<String>,
}

/// The evaluator. See the module doc.
#[derive(Debug)]
pub struct AlertBook {
    plan: Arc<AlertPlan>,
    /// Every alert id emitted (from the outbox, then live).
    emitted: FastSet<u128>,
    /// Boxed: a charge moves the pointer out and back, not the state.
    entities: ById<Box<EntState>>,
    out: Vec<Alert>,
    /// Burn histories read back at start, taken when their entity is first seen.
    restored: FastMap<EntityId, Burn>,
    burns: usize,
    burns_refused: u64,
}

/// The smallest `s` with `s × 100 ≥ limit × percent`.
fn least_spend_crossing(limit: Money, percent: u16) -> Money {
    let need = limit.picodollars().saturating_mul(i128::from(percent));
    let at = need.div_euclid(100) + i128::from(need.rem_euclid(100) != 0);
    Money::from_picodollars(at).unwrap_or(Money::MAX)
}

/// Spent at least `percent` of `limit`?
fn crossed(spent: Money, limit: Money, percent: u16) -> bool {
    let s = spent.picodollars().saturating_mul(100);
    let l = limit.picodollars().saturating_mul(i128::from(percent));
    s >= l
}

impl AlertBook {
    /// The evaluator, rebuilt from the alerts already in the outbox (oldest first).
    pub fn new(plan: Arc<AlertPlan>, existing: &[Alert]) -> AlertBook {
        let mut book = AlertBook {
            plan,
            emitted: FastSet::with_capacity_and_hasher(existing.len(), Default::default()),
            entities: ById::default(),
            out: Vec::new(),
            restored: FastMap::default(),
            burns: 0,
            burns_refused: 0,
        };
        for a in existing {
            if let Some(bits) = parse_alert_id(&a.id) {
                book.emitted.insert(bits);
            }
            let Some(k) = &a.key else { continue };
            let id = EntityId(k.entity);
            if !book.entities.contains(id) {
                book.entities
                    .insert(id, Box::new(EntState::new(k.epoch, k.period_start_ms)));
            }
            let Some(st) = book.entities.get_mut(id) else {
                continue;
            };
            if k.epoch > st.epoch {
                **st = EntState::new(k.epoch, k.period_start_ms);
            }
            if let (true, KeyFact::Rearmed { carried }) = (k.epoch == st.epoch, &k.fact) {
                if k.generation > st.generation {
                    st.generation = k.generation;
                    let st = st.clone();
                    for f in carried {
                        let bits = fact_bits(EntityId(k.entity), &st, f);
                        book.emitted.insert(bits);
                    }
                }
            }
        }
        book
    }

    pub fn plan(&self) -> &Arc<AlertPlan> {
        &self.plan
    }

    pub fn set_plan(&mut self, plan: Arc<AlertPlan>) {
        self.plan = plan;
        // Thresholds may have changed: forget what was derived from them.
        let ids: Vec<EntityId> = self.entities.iter().map(|(id, _)| id).collect();
        for id in ids {
            if let Some(st) = self.entities.get_mut(id) {
                st.first_threshold = None;
            }
        }
    }

    /// Whether any rule covers the entity (the ledger thread's fast exit).
    pub fn watches(&self, id: EntityId) -> bool {
        self.plan.armed(id).is_some()
    }

    /// Entities with a forecast rule (the periodic sweep looks at them).
    pub fn forecasting(&self) -> Vec<EntityId> {
        self.entities
            .iter()
            .filter(|(_, st)| st.burn.is_some())
            .map(|(id, _)| id)
            .collect()
    }

    /// Every entity a rule covers, as of `now_ms`.
    pub fn state(&self, now_ms: i64, state: &LedgerState) -> Vec<EntityAlertState> {
        let mut out = Vec::new();
        for id in self.plan.entity_ids() {
            let (Some(armed), Some((kind, name)), Some(view)) = (
                self.plan.armed(id),
                self.plan.name(id),
                state.view(id, now_ms),
            ) else {
                continue;
            };
            let st = match self.entities.get(id) {
                Some(st) if st.epoch == view.epoch => (**st).clone(),
                _ => EntState::new(view.epoch, view.period.start_ms),
            };
            let firing = self
                .firing(id, &st, armed)
                .into_iter()
                .map(|f| match f {
                    Fact::Threshold(t) => format!("threshold:{t}"),
                    Fact::SoftLimit => "soft_limit".into(),
                    Fact::Exhausted => "exhausted".into(),
                    Fact::Forecast => "forecast".into(),
                    Fact::Anomaly => "anomaly".into(),
                    Fact::Recovered => "recovered".into(),
                })
                .collect();
            out.push(EntityAlertState {
                entity: EntityRef {
                    kind: kind.as_str().into(),
                    name: name.into(),
                },
                epoch: st.epoch,
                generation: st.generation,
                period_start: format_rfc3339_ms(view.period.start_ms),
                reset_at: (view.period.end_ms != TIME_MS_NEVER)
                    .then(|| format_rfc3339_ms(view.period.end_ms)),
                spent_usd: view.spent.to_string(),
                limit_usd: view.limit_effective.map(|m| m.to_string()),
                firing,
                thresholds: armed.thresholds.clone(),
                rules: armed
                    .rules
                    .iter()
                    .map(|&i| self.plan.rules[usize::from(i)].name.clone())
                    .collect(),
            });
        }
        out
    }

    /// The burn histories, to keep across a restart.
    pub fn burn_histories(&self) -> Vec<(u32, Burn)> {
        let mut out: Vec<(u32, Burn)> = self
            .entities
            .iter()
            .filter_map(|(id, st)| st.burn.as_ref().map(|b| (id.0, (**b).clone())))
            .collect();
        // Not seen since the start yet: keep what was read back.
        out.extend(
            self.restored
                .iter()
                .filter(|(id, _)| !self.entities.contains(**id))
                .map(|(id, b)| (id.0, b.clone())),
        );
        out.sort_unstable_by_key(|(id, _)| *id);
        out
    }

    /// Burn histories read back at start (from [`AlertBook::burn_histories`]).
    pub fn restore_burn_histories(&mut self, histories: Vec<(u32, Burn)>) {
        self.restored = histories
            .into_iter()
            .take(BURN_ENTITIES_MAX)
            .map(|(id, b)| (EntityId(id), b))
            .collect();
    }

    /// Entities a forecast or anomaly rule covers whose history was not kept
    /// ([`BURN_ENTITIES_MAX`]).
    pub fn burns_refused(&self) -> u64 {
        self.burns_refused
    }

    /// Alerts emitted since the last call, oldest first.
    pub fn take(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.out)
    }

    /// Whether alerts wait to be taken.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Shows the evaluator what the ledger's last `apply` changed: every entity
    /// its journal records touched. (A block changes no spend; a 402 comes
    /// through [`AlertBook::refused`].)
    pub fn observe_last_apply(&mut self, now_ms: i64, state: &LedgerState) {
        if self.plan.is_empty() {
            return;
        }
        let seq = state.journal_seq();
        let show = |book: &mut AlertBook, id: EntityId, cause: Cause| {
            if !book.watches(id) {
                return;
            }
            if let Some(view) = state.view(id, now_ms) {
                book.observe(now_ms, seq, &view, cause);
            }
        };
        for r in state.records() {
            match r.body {
                RecordBody::Settle { ref charges, .. } => {
                    for c in charges.as_slice() {
                        if !self.charge_quietly(now_ms, state, c.entity, c.amount) {
                            show(self, c.entity, Cause::Spend(c.amount));
                        }
                    }
                }
                RecordBody::Rollover { entity, .. } => show(self, entity, Cause::Rollover),
                RecordBody::Reset { entity, .. } => show(self, entity, Cause::Reset),
                RecordBody::TopUp { entity, .. } => show(self, entity, Cause::TopUp),
                RecordBody::SetBudget { entity, .. } => show(self, entity, Cause::Budget),
            }
        }
    }

    /// The common charge: it crosses nothing not fired yet and no forecast
    /// or anomaly look is due, so only the burn history hears of it. True
    /// when handled so; false when the full look (`observe`) is needed.
    /// Reads the entity's spend without building its view.
    fn charge_quietly(
        &mut self,
        now_ms: i64,
        state: &LedgerState,
        id: EntityId,
        amount: Money,
    ) -> bool {
        let Some(armed) = self.plan.armed(id) else {
            return true; // no rule covers it
        };
        let (Some(st), Some(p)) = (self.entities.get_mut(id), state.spend_probe(id)) else {
            return false;
        };
        if p.epoch != st.epoch || now_ms >= p.period_end_ms {
            return false;
        }
        let rates = armed.forecast || armed.anomaly;
        if rates && (st.burn.is_none() || now_ms >= st.rates_due_ms) {
            return false;
        }
        if let Some(limit) = p.limit_effective {
            let fired = |st: &EntState, f: bool| {
                f && (st.known.epoch, st.known.generation) == (st.epoch, st.generation)
            };
            if p.spent >= st.next_threshold(limit, &armed.thresholds) {
                return false;
            }
            let soft_due = armed.soft_limit && p.soft_limit.is_some_and(|s| p.spent >= s);
            if soft_due && !fired(st, st.known.soft_limit) {
                return false;
            }
            if armed.exhausted && p.spent >= limit && !fired(st, st.known.exhausted) {
                return false;
            }
        }
        if let Some(burn) = st.burn.as_mut() {
            burn.add(now_ms, amount);
        }
        true
    }

    /// A worker refused a request at `id` (a 402): the budget's first
    /// refusal in a period is its `budget.exhausted`.
    pub fn refused(&mut self, now_ms: i64, state: &LedgerState, id: EntityId) {
        if !self.watches(id) {
            return;
        }
        if let Some(view) = state.view(id, now_ms) {
            self.observe(now_ms, state.journal_seq(), &view, Cause::Refused);
        }
    }

    /// Shows the evaluator every entity a rule covers (start-up, a new plan):
    /// what crossed while the evaluator did not look fires now, once.
    pub fn sweep(&mut self, now_ms: i64, state: &LedgerState, ids: &[EntityId]) {
        let seq = state.journal_seq();
        for &id in ids {
            if !self.watches(id) {
                continue;
            }
            if let Some(view) = state.view(id, now_ms) {
                self.observe(now_ms, seq, &view, Cause::Sweep);
            }
        }
    }

    /// Shows the evaluator an entity after a change: `view` as of `now_ms`,
    /// `seq` the journal position.
    pub fn observe(&mut self, now_ms: i64, seq: u64, view: &EntityView, cause: Cause) {
        let plan = Arc::clone(&self.plan);
        let Some((armed, kind, name)) = plan.entry(view.id) else {
            return;
        };
        let at = Seen {
            now_ms,
            plan: &plan,
            armed,
            kind,
            name,
            view,
        };
        let mut st = self
            .entities
            .remove(view.id)
            .unwrap_or_else(|| Box::new(EntState::new(view.epoch, view.period.start_ms)));
        if (armed.forecast || armed.anomaly) && st.burn.is_none() {
            if self.burns < BURN_ENTITIES_MAX {
                let burn = self
                    .restored
                    .remove(&view.id)
                    .filter(Burn::is_valid)
                    .unwrap_or_else(|| Burn::new(now_ms));
                st.burn = Some(Box::new(burn));
                self.burns += 1;
            } else {
                self.burns_refused += 1;
            }
        }
        if let (Cause::Spend(amount), Some(burn)) = (cause, st.burn.as_mut()) {
            burn.add(now_ms, amount);
        }

        if view.epoch != st.epoch {
            let firing = self.firing(view.id, &st, armed);
            if !firing.is_empty() {
                let reason = if cause == Cause::Reset {
                    "reset"
                } else {
                    "new_period"
                };
                self.recovered(&at, &st, KeyFact::EpochEnded, &firing, reason);
            }
            st.epoch = view.epoch;
            st.generation = 0;
            st.period_start_ms = view.period.start_ms;
        }

        if let Some(limit) = view.limit_effective {
            if matches!(cause, Cause::TopUp | Cause::Budget) {
                let firing = self.firing(view.id, &st, armed);
                let soft = view.budget.and_then(|b| b.soft_limit);
                let no_longer: Vec<Fact> = firing
                    .iter()
                    .copied()
                    .filter(|f| match *f {
                        Fact::Threshold(t) => !crossed(view.spent, limit, t),
                        Fact::SoftLimit => soft.is_none_or(|s| view.spent < s),
                        Fact::Exhausted => !view.blocked,
                        Fact::Forecast | Fact::Anomaly | Fact::Recovered => false,
                    })
                    .collect();
                if !no_longer.is_empty() {
                    let reason = if cause == Cause::TopUp {
                        "top_up"
                    } else {
                        "limit_raised"
                    };
                    let carried: Vec<KeyFact> = firing
                        .iter()
                        .filter(|f| !no_longer.contains(f))
                        .filter_map(|f| key_fact(*f))
                        .collect();
                    let mut rearmed = st.clone();
                    rearmed.generation = seq.max(st.generation + 1);
                    for f in &carried {
                        self.emitted.insert(fact_bits(view.id, &rearmed, f));
                    }
                    let fact = KeyFact::Rearmed { carried };
                    self.recovered(&at, &rearmed, fact, &no_longer, reason);
                    st.generation = rearmed.generation;
                }
            }

            let fire_once = |book: &mut AlertBook, st: &mut EntState, fact: KeyFact| {
                if !st.known_fired(&fact) {
                    book.fire(&at, st, fact.clone(), Extra::None);
                    st.mark_fired(&fact);
                }
            };
            if view.spent >= st.next_threshold(limit, &armed.thresholds) {
                for &t in &armed.thresholds {
                    if crossed(view.spent, limit, t) {
                        fire_once(self, &mut st, KeyFact::Threshold(t));
                    }
                }
            }
            if armed.soft_limit {
                if let Some(soft) = view.budget.and_then(|b| b.soft_limit) {
                    if view.spent >= soft {
                        fire_once(self, &mut st, KeyFact::SoftLimit);
                    }
                }
            }
            // Exhausted: the first 402, or spend reaching the limit (a soft
            // budget admits until then). `Blocked` alone is not enough: a
            // strict grant of the last of a budget blocks while the request
            // it was for is still admitted.
            if armed.exhausted && (cause == Cause::Refused || view.spent >= limit) {
                fire_once(self, &mut st, KeyFact::Exhausted);
            }
        }
        // The rates change little from one charge to the next: looked at
        // every RATES_EVAL_INTERVAL_MS, and on every other cause.
        let rates_due = !matches!(cause, Cause::Spend(_)) || now_ms >= st.rates_due_ms;
        if rates_due && (armed.forecast || armed.anomaly) {
            st.rates_due_ms = now_ms.saturating_add(RATES_EVAL_INTERVAL_MS);
            if let Some(limit) = view.limit_effective {
                if armed.forecast && view.period.end_ms != TIME_MS_NEVER {
                    self.forecast(&at, &mut st, limit);
                }
            }
            if armed.anomaly {
                self.anomaly(&at, &mut st);
            }
        }
        self.entities.insert(view.id, st);
    }

    fn forecast(&mut self, at: &Seen, st: &mut EntState, limit: Money) {
        let (now_ms, view) = (at.now_ms, at.view);
        let Some(burn) = st.burn.as_mut() else { return };
        let (hourly, daily) = burn.rates(now_ms);
        let remaining = limit.picodollars() - view.spent.picodollars();
        let reset = view.period.end_ms;
        let at_hour = exhaustion_ms(now_ms, remaining, hourly);
        let at_day = exhaustion_ms(now_ms, remaining, daily);
        let projects = remaining > 0 && at_hour < reset && at_day < reset;
        let (fired_id, cleared_id) = st.forecast_ids(view.id);
        let fired = self.emitted.contains(&fired_id);
        if projects && !fired {
            let rates = BurnRates {
                last_hour: Money::picodollars_decimal(hourly),
                last_day: Money::picodollars_decimal(daily),
            };
            let extra = Extra::Forecast(format_rfc3339_ms(at_hour), rates);
            let st = st.clone();
            self.fire(at, &st, KeyFact::Forecast, extra);
        } else if !projects && fired && !self.emitted.contains(&cleared_id) {
            let st = st.clone();
            self.recovered(
                at,
                &st,
                KeyFact::ForecastCleared,
                &[Fact::Forecast],
                "forecast_recovered",
            );
        }
    }

    /// A spend anomaly: the last 60 minutes above the factor times the same
    /// hour's mean over the trailing days (at least one day watched, and a
    /// baseline above zero: a first spend is not an anomaly).
    fn anomaly(&mut self, at: &Seen, st: &mut EntState) {
        let now_ms = at.now_ms;
        let Some(burn) = st.burn.as_mut() else { return };
        let (last, mean, days) = burn.anomaly(now_ms);
        let factor = i128::from(at.armed.anomaly_factor_tenths);
        if days == 0 || mean <= 0 || last.saturating_mul(10) <= mean.saturating_mul(factor) {
            return;
        }
        let data = AnomalyData {
            last_hour_usd: Money::picodollars_decimal(last),
            baseline_usd: Money::picodollars_decimal(mean),
            baseline_days: days,
            factor: format!("{}.{}", factor / 10, factor % 10),
        };
        let hour = now_ms.div_euclid(HOUR_MS);
        let st = st.clone();
        self.fire(at, &st, KeyFact::Anomaly { hour }, Extra::Anomaly(data));
    }

    fn bits(&self, id: EntityId, st: &EntState, fact: &KeyFact) -> u128 {
        fact_bits(id, st, fact)
    }

    /// What fired in the state's epoch and generation and still stands.
    fn firing(&self, id: EntityId, st: &EntState, armed: &Armed) -> Vec<Fact> {
        let mut out: Vec<Fact> = armed
            .thresholds
            .iter()
            .filter(|t| {
                self.emitted
                    .contains(&self.bits(id, st, &KeyFact::Threshold(**t)))
            })
            .map(|t| Fact::Threshold(*t))
            .collect();
        if self
            .emitted
            .contains(&self.bits(id, st, &KeyFact::SoftLimit))
        {
            out.push(Fact::SoftLimit);
        }
        if self
            .emitted
            .contains(&self.bits(id, st, &KeyFact::Exhausted))
        {
            out.push(Fact::Exhausted);
        }
        if self
            .emitted
            .contains(&self.bits(id, st, &KeyFact::Forecast))
            && !self
                .emitted
                .contains(&self.bits(id, st, &KeyFact::ForecastCleared))
        {
            out.push(Fact::Forecast);
        }
        out
    }

    fn fire(&mut self, at: &Seen, st: &EntState, fact: KeyFact, extra: Extra) {
        let (plan, armed, view) = (at.plan, at.armed, at.view);
        let bits = self.bits(view.id, st, &fact);
        if self.emitted.contains(&bits) {
            return;
        }
        let who = &at.who();
        let (kind, plan_fact, threshold, severity) = match fact {
            KeyFact::Threshold(t) => (
                AlertKind::ThresholdCrossed,
                Fact::Threshold(t),
                Some(t),
                if t >= 100 {
                    Severity::Critical
                } else if t >= 80 {
                    Severity::Warning
                } else {
                    Severity::Info
                },
            ),
            KeyFact::SoftLimit => (
                AlertKind::SoftLimitCrossed,
                Fact::SoftLimit,
                None,
                Severity::Warning,
            ),
            KeyFact::Exhausted => (
                AlertKind::Exhausted,
                Fact::Exhausted,
                None,
                Severity::Critical,
            ),
            KeyFact::Forecast => (AlertKind::Forecast, Fact::Forecast, None, Severity::Warning),
            KeyFact::Anomaly { .. } => (AlertKind::Anomaly, Fact::Anomaly, None, Severity::Warning),
            _ => return,
        };
        let mut data = self.budget_data(plan, armed, plan_fact, view, st);
        data.threshold_percent = threshold.map(|t| t.min(255) as u8);
        match extra {
            Extra::None => {}
            Extra::Forecast(at, rates) => {
                data.projected_exhaustion_at = Some(at);
                data.burn_rate_usd_per_hour = Some(rates);
            }
            Extra::Anomaly(a) => data.anomaly = Some(a),
        }
        let summary = match kind {
            AlertKind::ThresholdCrossed => format!(
                "{who} has spent ${} of ${} ({}% threshold) this period",
                data.spent_usd,
                data.limit_usd.as_deref().unwrap_or("?"),
                threshold.unwrap_or_default()
            ),
            AlertKind::SoftLimitCrossed => format!(
                "{who} reached its soft limit: ${} spent (soft limit ${})",
                data.spent_usd,
                data.soft_limit_usd.as_deref().unwrap_or("?")
            ),
            AlertKind::Exhausted => format!(
                "{who} has no budget left this period: ${} spent of ${}",
                data.spent_usd,
                data.limit_usd.as_deref().unwrap_or("?")
            ),
            AlertKind::Anomaly => {
                let a = data.anomaly.as_ref();
                format!(
                    "{who} spent ${} in the last hour, against ${} for this hour on a usual day",
                    a.map_or("?", |a| &a.last_hour_usd),
                    a.map_or("?", |a| &a.baseline_usd)
                )
            }
            _ => format!(
                "{who} will run out of budget before it resets: projected at {}",
                data.projected_exhaustion_at.as_deref().unwrap_or("?")
            ),
        };
        let draft = Draft {
            kind,
            severity,
            summary,
            data,
            routes: plan.routes(armed, plan_fact, who, &period_key(st)),
        };
        self.push(at, st, fact, bits, draft);
    }

    fn recovered(&mut self, at: &Seen, st: &EntState, fact: KeyFact, what: &[Fact], reason: &str) {
        let (plan, armed, view) = (at.plan, at.armed, at.view);
        let who = &at.who();
        let bits = self.bits(view.id, st, &fact);
        if self.emitted.contains(&bits) {
            return;
        }
        let mut data = self.budget_data(plan, armed, Fact::Recovered, view, st);
        // The most serious fact that no longer holds names the recovery.
        let top = what
            .iter()
            .max_by_key(|f| match f {
                Fact::Exhausted => 2000,
                Fact::Threshold(t) => u32::from(*t),
                Fact::SoftLimit => 1,
                Fact::Forecast | Fact::Anomaly | Fact::Recovered => 0,
            })
            .copied();
        data.recovered = top.map(|f| match f {
            Fact::Threshold(_) => AlertKind::ThresholdCrossed,
            Fact::SoftLimit => AlertKind::SoftLimitCrossed,
            Fact::Exhausted => AlertKind::Exhausted,
            _ => AlertKind::Forecast,
        });
        data.threshold_percent = what
            .iter()
            .filter_map(|f| match f {
                Fact::Threshold(t) => Some((*t).min(255) as u8),
                _ => None,
            })
            .max();
        data.reason = Some(reason.to_string());
        let summary = format!(
            "{who} recovered ({}): ${} spent{}",
            reason.replace('_', " "),
            data.spent_usd,
            data.limit_usd
                .as_deref()
                .map(|l| format!(" of ${l}"))
                .unwrap_or_default()
        );
        let draft = Draft {
            kind: AlertKind::Recovered,
            severity: Severity::Info,
            summary,
            data,
            // The dedup key of the incident it ends: the state's period and epoch.
            routes: plan.routes(armed, Fact::Recovered, who, &period_key(st)),
        };
        self.push(at, st, fact, bits, draft);
    }

    fn push(&mut self, at: &Seen, st: &EntState, fact: KeyFact, bits: u128, draft: Draft) {
        self.emitted.insert(bits);
        self.out.push(Alert {
            id: format!("alrt_{bits:032x}"),
            kind: draft.kind,
            timestamp_ms: at.now_ms,
            severity: draft.severity,
            summary: draft.summary,
            data: AlertData::Budget(draft.data),
            routes: draft.routes,
            key: Some(AlertKey {
                entity: at.view.id.0,
                epoch: st.epoch,
                period_start_ms: st.period_start_ms,
                generation: st.generation,
                fact,
            }),
        });
    }

    fn budget_data(
        &self,
        plan: &AlertPlan,
        armed: &Armed,
        fact: Fact,
        view: &EntityView,
        st: &EntState,
    ) -> BudgetData {
        let (kind, name) = plan
            .name(view.id)
            .map(|(k, n)| (k.as_str(), n.to_string()))
            .unwrap_or(("entity", view.id.0.to_string()));
        // A recovery of an ended epoch speaks of that epoch's period.
        let (period_start, reset_at) = if st.epoch == view.epoch {
            (view.period.start_ms, view.period.end_ms)
        } else {
            (st.period_start_ms, view.period.start_ms)
        };
        BudgetData {
            entity: EntityRef {
                kind: kind.to_string(),
                name,
            },
            rules: plan.rules_for(armed, fact),
            threshold_percent: None,
            recovered: None,
            reason: None,
            spent_usd: view.spent.to_string(),
            limit_usd: view.limit_effective.map(|m| m.to_string()),
            remaining_usd: view.remaining.map(|m| m.to_string()),
            soft_limit_usd: view
                .budget
                .and_then(|b| b.soft_limit)
                .map(|m| m.to_string()),
            mode: match view.budget.map(|b| b.mode) {
                Some(Mode::Soft) => "soft",
                _ => "strict",
            }
            .to_string(),
            period_start: format_rfc3339_ms(period_start),
            reset_at: (reset_at != TIME_MS_NEVER).then(|| format_rfc3339_ms(reset_at)),
            projected_exhaustion_at: None,
            burn_rate_usd_per_hour: None,
            anomaly: None,
        }
    }
}

/// What the evaluator is looking at: the entity's view now, its rules, its name.
struct Seen<'a> {
    now_ms: i64,
    plan: &'a AlertPlan,
    armed: &'a Armed,
    kind: EntityKind,
    name: &'a str,
    view: &'a EntityView,
}

impl Seen<'_> {
    /// "key/demo": made only when an alert is (a charge crosses nothing).
    fn who(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.name)
    }
}

/// An alert about to be emitted, before its id and key.
struct Draft {
    kind: AlertKind,
    severity: Severity,
    summary: String,
    data: BudgetData,
    routes: Vec<Route>,
}

/// What a fired alert adds to its data.
enum Extra {
    None,
    Forecast(String, BurnRates),
    Anomaly(AnomalyData),
}

/// The id bits of a fact about an entity in a state's epoch and generation.
fn fact_bits(id: EntityId, st: &EntState, fact: &KeyFact) -> u128 {
    let (tag, n): (&[u8], u16) = match fact {
        KeyFact::Threshold(t) => (b"threshold", *t),
        KeyFact::SoftLimit => (b"soft_limit", 0),
        KeyFact::Exhausted => (b"exhausted", 0),
        KeyFact::Forecast => (b"forecast", 0),
        KeyFact::EpochEnded => (b"epoch_ended", 0),
        KeyFact::Rearmed { .. } => (b"rearmed", 0),
        KeyFact::ForecastCleared => (b"forecast_cleared", 0),
        // One per entity and hour, whatever the period.
        KeyFact::Anomaly { hour } => {
            return alert_id_bits(&[b"anomaly", &id.0.to_le_bytes(), &hour.to_le_bytes()]);
        }
    };
    alert_id_bits(&[
        b"budget",
        &id.0.to_le_bytes(),
        &st.epoch.to_le_bytes(),
        &st.generation.to_le_bytes(),
        tag,
        &n.to_le_bytes(),
    ])
}

fn key_fact(f: Fact) -> Option<KeyFact> {
    match f {
        Fact::Threshold(t) => Some(KeyFact::Threshold(t)),
        Fact::SoftLimit => Some(KeyFact::SoftLimit),
        Fact::Exhausted => Some(KeyFact::Exhausted),
        Fact::Forecast => Some(KeyFact::Forecast),
        Fact::Anomaly | Fact::Recovered => None,
    }
}

fn period_key(st: &EntState) -> String {
    format!("{}#{}", format_rfc3339_ms(st.period_start_ms), st.epoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::RuleSection;
    use crate::budget::period::{Reset, ResetUnit};
    use crate::budget::Budget;
    use crate::ledger::{Charge, Charges, Command, EntityKind, Reply, StateConfig};

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const KEY: EntityId = EntityId(1);

    fn usd(s: &str) -> Money {
        Money::parse_usd(s).unwrap()
    }

    fn plan(thresholds: &[u16], forecast: bool) -> Arc<AlertPlan> {
        plan_with(thresholds, forecast, false)
    }

    fn plan_with(thresholds: &[u16], forecast: bool, anomaly: bool) -> Arc<AlertPlan> {
        let rule = RuleSection {
            name: "r".into(),
            scope: "keys".into(),
            thresholds: Some(thresholds.to_vec()),
            soft_limit: None,
            exhausted: None,
            forecast: Some(forecast),
            recovery: None,
            anomaly: Some(anomaly),
            anomaly_factor: None,
            reports: None,
            operational: None,
            provider_error_rate_percent: None,
            channels: vec!["hook".into()],
        }
        .validate(&["hook"])
        .unwrap();
        Arc::new(AlertPlan::new(vec![rule], [(KEY, EntityKind::Key, "k")]))
    }

    struct Rig {
        ledger: LedgerState,
        book: AlertBook,
        next_id: u128,
        emitted: Vec<Alert>,
    }

    impl Rig {
        fn new(plan: Arc<AlertPlan>, budget: Budget) -> Rig {
            let mut rig = Rig {
                ledger: LedgerState::new(StateConfig::default()).unwrap(),
                book: AlertBook::new(plan, &[]),
                next_id: 1,
                emitted: Vec::new(),
            };
            rig.apply(
                T0,
                Command::SetBudget {
                    entity: KEY,
                    kind: EntityKind::Key,
                    budget: Some(budget),
                },
            );
            rig
        }

        fn apply(&mut self, now: i64, cmd: Command) -> Vec<Alert> {
            let reply = self.ledger.apply(now, &cmd);
            assert!(!matches!(reply, Reply::Rejected(_)), "{reply:?}");
            self.book.observe_last_apply(now, &self.ledger);
            let out = self.book.take();
            self.emitted.extend(out.iter().cloned());
            out
        }

        fn spend(&mut self, now: i64, amount: &str) -> Vec<Alert> {
            self.next_id += 1;
            let charges = Charges::from_slice(&[Charge {
                entity: KEY,
                amount: usd(amount),
                from_lease: false,
            }])
            .unwrap();
            self.apply(
                now,
                Command::Settle {
                    request_id: self.next_id,
                    worker: 0,
                    estimated: false,
                    charges,
                },
            )
        }
    }

    fn daily(limit: &str) -> Budget {
        Budget::new(usd(limit), Some(Reset::new(1, ResetUnit::Day).unwrap()))
    }

    fn thresholds(alerts: &[Alert]) -> Vec<(AlertKind, Option<u8>)> {
        alerts
            .iter()
            .map(|a| match &a.data {
                AlertData::Budget(b) => (a.kind, b.threshold_percent),
                _ => (a.kind, None),
            })
            .collect()
    }

    #[test]
    fn each_threshold_fires_once_however_the_spend_arrives() {
        let mut rig = Rig::new(plan(&[50, 80, 100], false), daily("10"));
        assert!(rig.spend(T0 + 1, "4.99").is_empty());
        let a = rig.spend(T0 + 2, "0.01");
        assert_eq!(
            thresholds(&a),
            vec![(AlertKind::ThresholdCrossed, Some(50))]
        );
        // Hovering: many small charges past 50 and up to just under 80.
        for i in 0..299 {
            assert!(rig.spend(T0 + 3 + i, "0.01").is_empty());
        }
        // One charge jumps 80 and 100 at once: both fire, in order, and the
        // budget is exhausted.
        let a = rig.spend(T0 + 400, "2.01");
        assert_eq!(
            thresholds(&a),
            vec![
                (AlertKind::ThresholdCrossed, Some(80)),
                (AlertKind::ThresholdCrossed, Some(100)),
                (AlertKind::Exhausted, None),
            ]
        );
        assert!(rig.spend(T0 + 401, "1").is_empty());
        let AlertData::Budget(b) = &a[0].data else {
            panic!()
        };
        assert_eq!(b.entity.name, "k");
        assert_eq!(b.limit_usd.as_deref(), Some("10"));
        assert_eq!(b.period_start, "2026-01-01T00:00:00Z");
        assert_eq!(b.reset_at.as_deref(), Some("2026-01-02T00:00:00Z"));
        assert_eq!(a[0].routes.len(), 1);
        assert_eq!(a[0].routes[0].channel, "hook");
        let ids: HashSet<&str> = rig.emitted.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids.len(), rig.emitted.len(), "an id was emitted twice");
    }

    #[test]
    fn a_new_period_recovers_and_rearms() {
        let mut rig = Rig::new(plan(&[50], false), daily("10"));
        assert_eq!(rig.spend(T0 + 1, "6").len(), 1);
        let day = 86_400_000;
        // The tick rolls the period over: one recovery, under the old period's dedup key.
        let a = rig.apply(T0 + day, Command::Tick);
        assert_eq!(thresholds(&a), vec![(AlertKind::Recovered, Some(50))]);
        let AlertData::Budget(b) = &a[0].data else {
            panic!()
        };
        assert_eq!(b.reason.as_deref(), Some("new_period"));
        assert_eq!(b.period_start, "2026-01-01T00:00:00Z");
        assert_eq!(a[0].routes[0].dedup_key, rig.emitted[0].routes[0].dedup_key);
        // The new period fires again, with a new id.
        let again = rig.spend(T0 + day + 1, "5");
        assert_eq!(
            thresholds(&again),
            vec![(AlertKind::ThresholdCrossed, Some(50))]
        );
        assert_ne!(again[0].id, rig.emitted[0].id);
    }

    #[test]
    fn a_reset_recovers_with_its_reason() {
        let mut rig = Rig::new(plan(&[50], false), daily("10"));
        rig.spend(T0 + 1, "6");
        let a = rig.apply(T0 + 2, Command::Reset { entity: KEY });
        let AlertData::Budget(b) = &a[0].data else {
            panic!()
        };
        assert_eq!(
            (a[0].kind, b.reason.as_deref()),
            (AlertKind::Recovered, Some("reset"))
        );
        assert_eq!(rig.spend(T0 + 3, "5").len(), 1);
    }

    #[test]
    fn a_raised_limit_rearms_only_what_no_longer_holds() {
        let mut rig = Rig::new(plan(&[50, 80], false), daily("10"));
        assert_eq!(rig.spend(T0 + 1, "8").len(), 2);
        // 8 of 12: 50% still holds, 80% no longer does.
        let a = rig.apply(
            T0 + 2,
            Command::SetBudget {
                entity: KEY,
                kind: EntityKind::Key,
                budget: Some(daily("12")),
            },
        );
        assert_eq!(thresholds(&a), vec![(AlertKind::Recovered, Some(80))]);
        // Crossing 80% of the new limit fires 80 again; 50 never repeats.
        let b = rig.spend(T0 + 3, "1.6");
        assert_eq!(
            thresholds(&b),
            vec![(AlertKind::ThresholdCrossed, Some(80))]
        );
        // Rebuilt from what was emitted (a restart), nothing repeats.
        let mut rebuilt = AlertBook::new(rig.book.plan().clone(), &rig.emitted);
        rebuilt.sweep(T0 + 4, &rig.ledger, &[KEY]);
        assert!(rebuilt.take().is_empty());
    }

    #[test]
    fn a_restart_fires_what_the_outbox_missed_and_repeats_nothing() {
        let mut rig = Rig::new(plan(&[50, 80], false), daily("10"));
        let first = rig.spend(T0 + 1, "6");
        assert_eq!(first.len(), 1);
        let lost = rig.spend(T0 + 2, "2.5");
        assert_eq!(lost.len(), 1);
        // The crash came after the charge reached the journal but before its
        // alert reached the outbox: the outbox has only the first.
        let mut rebuilt = AlertBook::new(rig.book.plan().clone(), &first);
        rebuilt.sweep(T0 + 3, &rig.ledger, &[KEY]);
        let again = rebuilt.take();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, lost[0].id, "the same crossing has the same id");
        rebuilt.sweep(T0 + 4, &rig.ledger, &[KEY]);
        assert!(rebuilt.take().is_empty());
    }

    #[test]
    fn a_forecast_fires_before_exhaustion_on_a_ramp_and_clears_when_it_stops() {
        let mut rig = Rig::new(plan(&[100], true), daily("100"));
        let minute = 60_000;
        let mut fired_at = None;
        let mut exhausted_at = None;
        // $10 an hour, a charge a minute: exhaustion after 10 hours.
        for m in 1..=(11 * 60) {
            let now = T0 + m * minute;
            for a in rig.spend(now, "0.166666") {
                match a.kind {
                    AlertKind::Forecast => fired_at = fired_at.or(Some(m)),
                    AlertKind::Exhausted => exhausted_at = exhausted_at.or(Some(m)),
                    _ => {}
                }
            }
        }
        let (fired, exhausted) = (fired_at.unwrap(), exhausted_at.unwrap());
        assert!(
            fired < exhausted,
            "forecast at minute {fired}, exhausted at {exhausted}"
        );
        let forecasts = rig
            .emitted
            .iter()
            .filter(|a| a.kind == AlertKind::Forecast)
            .count();
        assert_eq!(forecasts, 1);
        let a = rig
            .emitted
            .iter()
            .find(|a| a.kind == AlertKind::Forecast)
            .unwrap();
        let AlertData::Budget(b) = &a.data else {
            panic!()
        };
        assert!(b.projected_exhaustion_at.is_some() && b.burn_rate_usd_per_hour.is_some());
    }

    #[test]
    fn a_forecast_clears_when_the_burn_stops() {
        let mut rig = Rig::new(plan(&[100], true), daily("100"));
        let minute = 60_000;
        for m in 1..=(7 * 60) {
            rig.spend(T0 + m * minute, "0.166666");
        }
        assert!(rig.emitted.iter().any(|a| a.kind == AlertKind::Forecast));
        // Nothing spent for two hours: the last hour's rate is zero.
        let ids = rig.book.forecasting();
        rig.book.sweep(T0 + 9 * 60 * minute, &rig.ledger, &ids);
        let a = rig.book.take();
        assert_eq!(thresholds(&a), vec![(AlertKind::Recovered, None)]);
        let AlertData::Budget(b) = &a[0].data else {
            panic!()
        };
        assert_eq!(b.reason.as_deref(), Some("forecast_recovered"));
        // Spending again the same period does not fire a second forecast.
        for m in (9 * 60)..=(9 * 60 + 90) {
            for a in rig.spend(T0 + m * minute, "0.3") {
                assert_ne!(a.kind, AlertKind::Forecast);
            }
        }
    }

    /// Two days of $1 an hour, then an hour of $5: an anomaly (factor 3),
    /// once; the burn history survives a restart.
    #[test]
    fn an_hour_far_above_its_baseline_is_an_anomaly_once_even_across_a_restart() {
        let hour = 3_600_000;
        let mut rig = Rig::new(plan_with(&[100], false, true), daily("1000000"));
        for h in 0..48 {
            for q in 0..4 {
                assert!(
                    rig.spend(T0 + h * hour + q * 900_000, "0.25").is_empty(),
                    "hour {h}"
                );
            }
        }
        // The third day: the same pace is no anomaly...
        rig.spend(T0 + 48 * hour + 1, "0.25");
        // ...a restart keeps the history (no baseline would mean no anomaly)...
        let histories = rig.book.burn_histories();
        assert_eq!(histories.len(), 1);
        let json = serde_json::to_vec(&histories).unwrap();
        let mut book = AlertBook::new(rig.book.plan().clone(), &rig.emitted);
        book.restore_burn_histories(serde_json::from_slice(&json).unwrap());
        rig.book = book;
        // ...and five times the pace within the hour is one.
        let mut anomalies = Vec::new();
        for q in 1..=20 {
            for a in rig.spend(T0 + 48 * hour + q * 60_000, "0.25") {
                assert_eq!(a.kind, AlertKind::Anomaly);
                anomalies.push(a);
            }
        }
        assert_eq!(anomalies.len(), 1, "once per hour");
        let AlertData::Budget(b) = &anomalies[0].data else {
            panic!()
        };
        let a = b.anomaly.as_ref().unwrap();
        assert_eq!(a.baseline_usd, "1");
        assert_eq!(a.baseline_days, 2);
        assert_eq!(a.factor, "3.0");
    }

    #[test]
    fn the_first_threshold_is_the_least_spend_that_crosses_it() {
        for limit in [0i128, 1, 3, 7, 99, 100, 101, 12_345_678, 10_000_000_000_001] {
            for percent in [1u16, 33, 50, 80, 95, 100, 150, 1000] {
                let l = Money::from_picodollars(limit).unwrap();
                let at = least_spend_crossing(l, percent);
                assert!(crossed(at, l, percent), "{limit} {percent}");
                if at.picodollars() > 0 {
                    let below = Money::from_picodollars(at.picodollars() - 1).unwrap();
                    assert!(!crossed(below, l, percent), "{limit} {percent}");
                }
            }
        }
    }

    #[test]
    fn a_top_up_recovers_a_prepaid_budget_and_rearms_what_no_longer_holds() {
        let mut rig = Rig::new(plan(&[50, 100], false), Budget::new(usd("10"), None));
        let a = rig.spend(T0 + 1, "10");
        assert_eq!(
            thresholds(&a),
            vec![
                (AlertKind::ThresholdCrossed, Some(50)),
                (AlertKind::ThresholdCrossed, Some(100)),
                (AlertKind::Exhausted, None),
            ]
        );
        let b = rig.apply(
            T0 + 2,
            Command::TopUp {
                entity: KEY,
                amount: usd("10"),
            },
        );
        // 10 of 20: 50% still holds; 100% and exhausted no longer do.
        assert_eq!(thresholds(&b), vec![(AlertKind::Recovered, Some(100))]);
        let AlertData::Budget(d) = &b[0].data else {
            panic!()
        };
        assert_eq!(d.reason.as_deref(), Some("top_up"));
        assert_eq!(d.recovered, Some(AlertKind::Exhausted));
        assert_eq!(d.reset_at, None, "prepaid: never resets");
        // Spending the top-up fires 100% and exhausted again, never 50%.
        let c = rig.spend(T0 + 3, "10");
        assert_eq!(
            thresholds(&c),
            vec![
                (AlertKind::ThresholdCrossed, Some(100)),
                (AlertKind::Exhausted, None),
            ]
        );
    }
}
