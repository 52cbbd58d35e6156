//! A worker's lease shard: admission against its own leases, no lock, no I/O.
//!
//! Per entity the worker holds `lease` (granted by the ledger, not yet
//! settled) and `reserved` (the worst cases of its requests in flight at
//! strict levels). A request is admitted when, at every strict level of its
//! chain, `lease - reserved >= worst`; then `worst` is reserved at each of
//! them (all levels or none). When a level lacks lease the caller asks the
//! ledger (`LeaseRequest { need, .. }`), feeds the grant back with
//! [`LeaseShard::grant`], and tries again; that is the only round trip, near
//! the limit or on a cold shard.
//!
//! When the request ends, [`LeaseShard::settle`] frees its reservation,
//! consumes `actual` from the lease at strict levels, and returns the
//! [`Charges`] to publish in the worker's ring: `from_lease = true` at strict
//! levels (the ledger moves the amount from this worker's lease into spent)
//! and `false` at soft ones (charged after, nothing reserved). The ledger's
//! lease for this worker and the shard's agree because both take
//! `min(lease, actual)`; the ring (settles) and the command channel (grants,
//! returns) may reach the ledger in either order, and lease arithmetic
//! commutes as long as no take exceeds the lease, which the reservation
//! guarantees.
//!
//! Invariant (asserted in debug builds): at every entity `reserved <= lease`,
//! and `reserved` equals the sum of the worst cases of the reservations
//! outstanding there, as long as no request settles above its worst case.
//! A settle above the worst case (the provider charged more than the bound
//! allowed: a bug in the bound) is still charged in full; the ledger records
//! the excess as an overrun, and the shard's lease may then fall below what
//! other requests reserved, which the ledger will likewise report.

use crate::budget::Mode;
use crate::ledger::messages::CHARGES_PER_SETTLE_MAX;
use crate::ledger::{Charge, Charges, Command, EntityId, Event};
use crate::money::Money;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct EntityShard {
    lease: Money,
    reserved: Money,
    /// The ledger said nothing is left to grant (until Unblocked).
    blocked: bool,
    epoch: u64,
    /// What the ledger had left to grant, as of the last grant or Unblocked;
    /// `None`: unknown or no limit.
    remaining: Option<Money>,
}

/// A request admitted: what it reserved, to settle or release exactly once.
#[must_use = "a reservation must be settled or released"]
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    levels: [(EntityId, Mode); CHARGES_PER_SETTLE_MAX],
    len: u8,
    worst: Money,
}

impl Reservation {
    pub fn worst(&self) -> Money {
        self.worst
    }

    pub fn levels(&self) -> &[(EntityId, Mode)] {
        &self.levels[..usize::from(self.len)]
    }
}

/// The outcome of [`LeaseShard::try_admit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted(Reservation),
    /// Ask the ledger for at least `need` more lease of `entity`, then retry.
    NeedLease {
        entity: EntityId,
        need: Money,
    },
    /// The ledger has nothing left to grant at this level: 402 (or degrade).
    Blocked {
        entity: EntityId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("a request is charged to at most {CHARGES_PER_SETTLE_MAX} levels, got {0}")]
    TooManyLevels(usize),
    #[error("{0} appears twice in one chain")]
    RepeatedLevel(EntityId),
    #[error("amounts must not be negative")]
    NegativeAmount,
}

/// One worker's leases and reservations. Single-threaded, owned by the worker.
#[derive(Debug, Default)]
pub struct LeaseShard {
    worker: u16,
    /// Indexed by entity id (ids are dense, below `ENTITIES_MAX`): a lookup
    /// is an index, not a hash, on every admission and settle.
    entities: Vec<EntityShard>,
}

impl LeaseShard {
    pub fn new(worker: u16) -> LeaseShard {
        LeaseShard {
            worker,
            entities: Vec::new(),
        }
    }

    pub fn worker(&self) -> u16 {
        self.worker
    }

    fn get(&self, entity: EntityId) -> Option<&EntityShard> {
        self.entities.get(entity.0 as usize)
    }

    fn get_mut(&mut self, entity: EntityId) -> Option<&mut EntityShard> {
        self.entities.get_mut(entity.0 as usize)
    }

    /// The entity's slot, growing the table to it. Ids come from the
    /// registry (below `ENTITIES_MAX`), so the table is bounded.
    fn slot(&mut self, entity: EntityId) -> &mut EntityShard {
        let i = entity.0 as usize;
        if i >= self.entities.len() {
            self.entities.resize(i + 1, EntityShard::default());
        }
        &mut self.entities[i]
    }

    /// Admits a request with worst-case cost `worst` at every level of its
    /// chain (strict levels reserve, soft levels only check they are not
    /// blocked), or says what is missing. All or nothing: on anything but
    /// `Admitted` nothing changed.
    pub fn try_admit(
        &mut self,
        levels: &[(EntityId, Mode)],
        worst: Money,
    ) -> Result<Admission, ShardError> {
        if levels.len() > CHARGES_PER_SETTLE_MAX {
            return Err(ShardError::TooManyLevels(levels.len()));
        }
        if worst.is_negative() {
            return Err(ShardError::NegativeAmount);
        }
        for (i, &(entity, mode)) in levels.iter().enumerate() {
            if levels[..i].iter().any(|&(e, _)| e == entity) {
                return Err(ShardError::RepeatedLevel(entity));
            }
            let s = self.get(entity).copied().unwrap_or_default();
            match mode {
                Mode::Strict => {
                    let free = s.lease.saturating_sub_to_zero(s.reserved);
                    if free < worst {
                        if s.blocked {
                            return Ok(Admission::Blocked { entity });
                        }
                        let need = worst.saturating_sub_to_zero(free);
                        return Ok(Admission::NeedLease { entity, need });
                    }
                }
                Mode::Soft => {
                    if s.blocked {
                        return Ok(Admission::Blocked { entity });
                    }
                }
            }
        }
        let mut r = Reservation {
            levels: [(EntityId(0), Mode::Soft); CHARGES_PER_SETTLE_MAX],
            len: levels.len() as u8,
            worst,
        };
        r.levels[..levels.len()].copy_from_slice(levels);
        for &(entity, mode) in levels {
            if mode == Mode::Strict {
                let s = self.slot(entity);
                // Checked above: free >= worst, so this stays <= lease <= Money::MAX.
                s.reserved = s
                    .reserved
                    .checked_add(worst)
                    .expect("reserved + worst <= lease");
                debug_assert!(s.reserved <= s.lease);
            }
        }
        Ok(Admission::Admitted(r))
    }

    /// Adds a grant from the ledger (`Reply::LeaseGrant`) to the lease.
    pub fn grant(&mut self, entity: EntityId, granted: Money, remaining: Option<Money>) {
        debug_assert!(!granted.is_negative());
        let s = self.slot(entity);
        s.lease = s.lease.checked_add(granted).unwrap_or(Money::MAX);
        s.remaining = remaining;
        if granted.is_zero() && remaining.is_some_and(|r| r.is_zero()) {
            s.blocked = true;
        }
    }

    /// The request failed before it cost anything: its reservation is freed,
    /// the lease stays for the next request.
    pub fn release(&mut self, reservation: Reservation) {
        for &(entity, mode) in reservation.levels() {
            if mode == Mode::Strict {
                self.unreserve(entity, reservation.worst);
            }
        }
    }

    fn unreserve(&mut self, entity: EntityId, worst: Money) {
        let s = self
            .get_mut(entity)
            .expect("a strict reservation has its entity");
        debug_assert!(s.reserved >= worst, "reservation lost at {entity}");
        s.reserved = s.reserved.saturating_sub_to_zero(worst);
    }

    /// The request ended and cost `actual` at every level: frees the
    /// reservation, consumes the lease at strict levels, and returns the
    /// charges to publish in the worker's ring.
    pub fn settle(&mut self, reservation: Reservation, actual: Money) -> Charges {
        let mut charges = Charges::new();
        self.settle_into(&reservation, actual, &mut charges);
        charges
    }

    /// [`LeaseShard::settle`] into `charges` (empty), and then the tightest
    /// budget left over the reservation's levels
    /// ([`LeaseShard::tightest_remaining`]). The worker's path: nothing the
    /// size of a settle's charges is returned by value.
    pub fn settle_and_remaining(
        &mut self,
        reservation: Reservation,
        actual: Money,
        charges: &mut Charges,
    ) -> Option<Money> {
        self.settle_into(&reservation, actual, charges);
        self.tightest_remaining(reservation.levels())
    }

    fn settle_into(&mut self, reservation: &Reservation, actual: Money, charges: &mut Charges) {
        debug_assert!(!actual.is_negative());
        debug_assert!(charges.is_empty());
        let actual = actual.max(Money::ZERO);
        for &(entity, mode) in reservation.levels() {
            let from_lease = mode == Mode::Strict;
            if from_lease {
                self.unreserve(entity, reservation.worst);
                let s = self.get_mut(entity).expect("unreserve checked");
                // The ledger takes min(lease, actual) from this worker's lease; mirror it.
                s.lease = s.lease.saturating_sub_to_zero(actual);
                debug_assert!(actual > reservation.worst || s.reserved <= s.lease);
            }
            charges
                .push(Charge {
                    entity,
                    amount: actual,
                    from_lease,
                })
                .expect("levels <= CHARGES_PER_SETTLE_MAX");
        }
    }

    /// Applies a ledger broadcast. On `Blocked`, returns the `LeaseReturn` to
    /// send: free lease goes back so the last of a budget reaches the worker
    /// that needs it.
    pub fn on_event(&mut self, event: &Event) -> Option<Command> {
        match *event {
            Event::Blocked { entity, epoch } => {
                // Kept even for an entity this worker never leased: a soft
                // level is never leased, and must still see its block.
                let s = self.slot(entity);
                s.blocked = true;
                s.epoch = s.epoch.max(epoch);
                s.remaining = Some(Money::ZERO);
                let free = s.lease.saturating_sub_to_zero(s.reserved);
                if free.is_positive() {
                    s.lease = s.reserved;
                    return Some(Command::LeaseReturn {
                        worker: self.worker,
                        entity,
                        amount: free,
                    });
                }
                None
            }
            Event::Unblocked {
                entity,
                epoch,
                remaining,
            } => {
                let s = self.get_mut(entity)?;
                s.blocked = false;
                s.epoch = s.epoch.max(epoch);
                s.remaining = Some(remaining);
                None
            }
            Event::NewEpoch { entity, epoch, .. } => {
                // Leases carry over into the new period (see decision 0002).
                let s = self.get_mut(entity)?;
                s.epoch = s.epoch.max(epoch);
                s.remaining = None;
                None
            }
            Event::SoftLimitReached { .. } | Event::Overrun { .. } => None,
        }
    }

    /// Forgets what broadcasts told (events were dropped): block flags are
    /// cleared so the next admission asks the ledger, which knows.
    pub fn resync(&mut self) {
        for s in &mut self.entities {
            s.blocked = false;
            s.remaining = None;
        }
    }

    /// The tightest budget left across `levels`, as of the worker's last news
    /// from the ledger: per level, what the ledger had left to grant plus this
    /// worker's free lease. `None` when no level has a known remainder. For the
    /// `x-bursar-budget-remaining-usd` header: a hint, not the books.
    pub fn tightest_remaining(&self, levels: &[(EntityId, Mode)]) -> Option<Money> {
        levels
            .iter()
            .filter_map(|(entity, _)| {
                let s = self.get(*entity)?;
                let free = s.lease.saturating_sub_to_zero(s.reserved);
                s.remaining
                    .map(|r| r.checked_add(free).unwrap_or(Money::MAX))
            })
            .min()
    }

    /// This worker's lease and reservations at `entity` (for tests and metrics).
    pub fn lease_of(&self, entity: EntityId) -> (Money, Money) {
        self.get(entity)
            .map_or((Money::ZERO, Money::ZERO), |s| (s.lease, s.reserved))
    }

    pub fn is_blocked(&self, entity: EntityId) -> bool {
        self.get(entity).is_some_and(|s| s.blocked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: EntityId = EntityId(1);
    const B: EntityId = EntityId(2);
    const C: EntityId = EntityId(3);

    fn usd(s: &str) -> Money {
        Money::parse_usd(s).unwrap()
    }

    #[test]
    fn admission_is_all_or_nothing_and_settle_moves_lease() {
        let mut shard = LeaseShard::new(0);
        let chain = [(A, Mode::Strict), (B, Mode::Strict), (C, Mode::Soft)];
        assert_eq!(
            shard.try_admit(&chain, usd("1")).unwrap(),
            Admission::NeedLease {
                entity: A,
                need: usd("1")
            }
        );
        shard.grant(A, usd("3"), Some(usd("10")));
        // B lacks lease: nothing is reserved at A either.
        assert_eq!(
            shard.try_admit(&chain, usd("1")).unwrap(),
            Admission::NeedLease {
                entity: B,
                need: usd("1")
            }
        );
        assert_eq!(shard.lease_of(A), (usd("3"), Money::ZERO));
        shard.grant(B, usd("1.5"), Some(usd("0.5")));
        let Admission::Admitted(r1) = shard.try_admit(&chain, usd("1")).unwrap() else {
            panic!()
        };
        assert_eq!(shard.lease_of(A), (usd("3"), usd("1")));
        assert_eq!(
            shard.try_admit(&chain, usd("1")).unwrap(),
            Admission::NeedLease {
                entity: B,
                need: usd("0.5")
            }
        );
        // B: 0.5 left to grant plus 0.5 of free lease here; A: 10 + 2.
        assert_eq!(shard.tightest_remaining(&chain), Some(usd("1")));
        let charges = shard.settle(r1, usd("0.25"));
        assert_eq!(
            charges.as_slice(),
            &[
                Charge {
                    entity: A,
                    amount: usd("0.25"),
                    from_lease: true
                },
                Charge {
                    entity: B,
                    amount: usd("0.25"),
                    from_lease: true
                },
                Charge {
                    entity: C,
                    amount: usd("0.25"),
                    from_lease: false
                },
            ]
        );
        assert_eq!(shard.lease_of(A), (usd("2.75"), Money::ZERO));
        assert_eq!(shard.lease_of(B), (usd("1.25"), Money::ZERO));
        let Admission::Admitted(r2) = shard.try_admit(&chain, usd("1.25")).unwrap() else {
            panic!()
        };
        shard.release(r2);
        assert_eq!(shard.lease_of(B), (usd("1.25"), Money::ZERO));
        assert_eq!(
            shard.try_admit(&[(A, Mode::Strict), (A, Mode::Soft)], usd("1")),
            Err(ShardError::RepeatedLevel(A))
        );
    }

    #[test]
    fn blocked_returns_free_lease_and_refuses_until_unblocked() {
        let mut shard = LeaseShard::new(7);
        let chain = [(A, Mode::Strict), (C, Mode::Soft)];
        shard.grant(A, usd("2"), Some(usd("0")));
        let Admission::Admitted(r) = shard.try_admit(&chain, usd("0.5")).unwrap() else {
            panic!()
        };
        assert_eq!(
            shard.on_event(&Event::Blocked {
                entity: A,
                epoch: 0
            }),
            Some(Command::LeaseReturn {
                worker: 7,
                entity: A,
                amount: usd("1.5")
            })
        );
        assert_eq!(shard.lease_of(A), (usd("0.5"), usd("0.5")));
        assert_eq!(
            shard.try_admit(&chain, usd("0.1")).unwrap(),
            Admission::Blocked { entity: A }
        );
        // The request in flight still settles against what it reserved.
        let charges = shard.settle(r, usd("0.5"));
        assert!(charges.as_slice()[0].from_lease);
        assert_eq!(shard.lease_of(A), (Money::ZERO, Money::ZERO));
        shard.on_event(&Event::Unblocked {
            entity: A,
            epoch: 0,
            remaining: usd("1"),
        });
        assert!(matches!(
            shard.try_admit(&chain, usd("0.1")).unwrap(),
            Admission::NeedLease { entity: A, .. }
        ));
        // A blocked soft level refuses too; resync forgets block flags.
        shard.on_event(&Event::Blocked {
            entity: C,
            epoch: 0,
        });
        shard.grant(A, usd("1"), Some(usd("0.5")));
        assert_eq!(
            shard.try_admit(&chain, usd("0.1")).unwrap(),
            Admission::Blocked { entity: C }
        );
        shard.resync();
        assert!(matches!(
            shard.try_admit(&chain, usd("0.1")).unwrap(),
            Admission::Admitted(_)
        ));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit { mask: u8, worst: u32 },
        Grant { entity: u8, amount: u32 },
        Settle { which: usize, per_mille: u16 },
        Release { which: usize },
        Block { entity: u8 },
        Unblock { entity: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..16, 0u32..1000).prop_map(|(mask, worst)| Op::Admit { mask, worst }),
            3 => (0u8..4, 0u32..3000).prop_map(|(entity, amount)| Op::Grant { entity, amount }),
            3 => (any::<usize>(), 0u16..=1000).prop_map(|(which, per_mille)| Op::Settle { which, per_mille }),
            1 => any::<usize>().prop_map(|which| Op::Release { which }),
            1 => (0u8..4).prop_map(|entity| Op::Block { entity }),
            1 => (0u8..4).prop_map(|entity| Op::Unblock { entity }),
        ]
    }

    proptest! {
        #[test]
        fn reservations_stay_within_leases_and_are_never_lost(ops in prop::collection::vec(op(), 1..200)) {
            let mut shard = LeaseShard::new(0);
            let mut outstanding: Vec<Reservation> = Vec::new();
            // Entity 3 is soft; 0..=2 strict.
            let mode = |e: u8| if e == 3 { Mode::Soft } else { Mode::Strict };
            for op in ops {
                match op {
                    Op::Admit { mask, worst } => {
                        let levels: Vec<(EntityId, Mode)> = (0..4u8)
                            .filter(|e| mask & (1 << e) != 0)
                            .map(|e| (EntityId(u32::from(e)), mode(e)))
                            .collect();
                        let before: Vec<_> = (0..4).map(|e| shard.lease_of(EntityId(e))).collect();
                        match shard.try_admit(&levels, Money::from_picodollars(i128::from(worst)).unwrap()).unwrap() {
                            Admission::Admitted(r) => outstanding.push(r),
                            _ => {
                                let after: Vec<_> = (0..4).map(|e| shard.lease_of(EntityId(e))).collect();
                                prop_assert_eq!(before, after, "a refused admission changed nothing");
                            }
                        }
                    }
                    Op::Grant { entity, amount } => {
                        shard.grant(EntityId(u32::from(entity)), Money::from_picodollars(i128::from(amount)).unwrap(), None);
                    }
                    Op::Settle { which, per_mille } if !outstanding.is_empty() => {
                        let r = outstanding.swap_remove(which % outstanding.len());
                        let actual = Money::from_picodollars(r.worst().picodollars() * i128::from(per_mille) / 1000).unwrap();
                        let levels: Vec<_> = r.levels().to_vec();
                        let charges = shard.settle(r, actual);
                        prop_assert_eq!(charges.len(), levels.len());
                        for (c, (e, m)) in charges.as_slice().iter().zip(levels) {
                            prop_assert_eq!(c.entity, e);
                            prop_assert_eq!(c.amount, actual);
                            prop_assert_eq!(c.from_lease, m == Mode::Strict);
                        }
                    }
                    Op::Release { which } if !outstanding.is_empty() => {
                        let r = outstanding.swap_remove(which % outstanding.len());
                        shard.release(r);
                    }
                    Op::Block { entity } => {
                        if let Some(Command::LeaseReturn { amount, .. }) = shard.on_event(&Event::Blocked { entity: EntityId(u32::from(entity)), epoch: 0 }) {
                            prop_assert!(amount.is_positive());
                        }
                    }
                    Op::Unblock { entity } => {
                        shard.on_event(&Event::Unblocked { entity: EntityId(u32::from(entity)), epoch: 0, remaining: Money::ZERO });
                    }
                    _ => {}
                }
                for e in 0..3u32 {
                    let (lease, reserved) = shard.lease_of(EntityId(e));
                    prop_assert!(reserved <= lease, "entity {}: reserved {} > lease {}", e, reserved, lease);
                    let expected: i128 = outstanding
                        .iter()
                        .filter(|r| r.levels().iter().any(|&(id, _)| id == EntityId(e)))
                        .map(|r| r.worst().picodollars())
                        .sum();
                    prop_assert_eq!(reserved.picodollars(), expected, "entity {}", e);
                }
                prop_assert_eq!(shard.lease_of(EntityId(3)).1, Money::ZERO, "soft levels reserve nothing");
            }
        }
    }
}
