//! The ledger state machine's unit tests.

use super::*;
use crate::budget::period::{unix_ms, ResetUnit};
use crate::budget::{Alignment, Reset};

const W0: u16 = 0;
const W1: u16 = 1;
const KEY: EntityId = EntityId(7);

fn usd(s: &str) -> Money {
    Money::parse_usd(s).unwrap()
}

fn state(workers: u16) -> LedgerState {
    LedgerState::new(StateConfig {
        workers,
        settled_ids_max: 64,
        cluster: false,
    })
    .unwrap()
}

fn daily(limit: &str) -> Budget {
    Budget {
        alignment: Alignment::Calendar,
        ..Budget::new(usd(limit), Some(Reset::one(ResetUnit::Day)))
    }
}

fn setup(s: &mut LedgerState, now: i64, budget: Option<Budget>) {
    let r = s.apply(
        now,
        &Command::SetBudget {
            entity: KEY,
            kind: EntityKind::Key,
            budget,
        },
    );
    assert!(matches!(r, Reply::Applied { .. }), "{r:?}");
}

fn lease(s: &mut LedgerState, now: i64, worker: u16, need: &str, want: &str) -> Money {
    match s.apply(
        now,
        &Command::LeaseRequest {
            worker,
            entity: KEY,
            need: usd(need),
            want: usd(want),
        },
    ) {
        Reply::LeaseGrant { granted, .. } => granted,
        r => panic!("{r:?}"),
    }
}

fn settle(s: &mut LedgerState, now: i64, id: u128, worker: u16, amount: &str) -> Reply {
    s.apply(
        now,
        &Command::Settle {
            request_id: id,
            worker,
            estimated: false,
            charges: Charges::from_slice(&[Charge {
                entity: KEY,
                amount: usd(amount),
                from_lease: true,
            }])
            .unwrap(),
        },
    )
}

fn t0() -> i64 {
    unix_ms(2024, 2, 28, 12, 0, 0)
}

#[test]
fn grants_shrink_near_the_limit_and_never_overcommit() {
    let mut s = state(2);
    setup(&mut s, t0(), Some(daily("1")));
    // Fair share: remaining / (2 × 2 workers).
    assert_eq!(lease(&mut s, t0(), W0, "0", "10"), usd("0.25"));
    assert_eq!(lease(&mut s, t0(), W1, "0", "10"), usd("0.1875"));
    // A need that fits is granted whole even when above the share.
    assert_eq!(lease(&mut s, t0(), W1, "0.5", "0.5"), usd("0.5"));
    // Remaining is 0.0625: a need above it gets nothing.
    assert_eq!(lease(&mut s, t0(), W0, "0.07", "1"), Money::ZERO);
    assert_eq!(lease(&mut s, t0(), W0, "0.0625", "1"), usd("0.0625"));
    assert!(s.events().contains(&Event::Blocked {
        entity: KEY,
        epoch: 0
    }));
    let v = s.view(KEY, t0()).unwrap();
    assert_eq!(v.leased, usd("1"));
    assert!(v.blocked);
    s.check_invariants();
    // Returning unblocks.
    let r = s.apply(
        t0(),
        &Command::LeaseReturn {
            worker: W0,
            entity: KEY,
            amount: usd("5"),
        },
    );
    assert_eq!(
        r,
        Reply::LeaseReturned {
            entity: KEY,
            returned: usd("0.3125")
        }
    );
    assert!(matches!(s.events(), [Event::Unblocked { .. }]));
    s.check_invariants();
}

#[test]
fn settle_moves_lease_to_spent_once() {
    let mut s = state(1);
    setup(&mut s, t0(), Some(daily("1")));
    assert_eq!(lease(&mut s, t0(), W0, "0.4", "0.4"), usd("0.4"));
    let r = settle(&mut s, t0(), 1, W0, "0.3");
    assert!(matches!(r, Reply::Settled { seq: 2, uncovered, .. } if uncovered.is_zero()));
    assert_eq!(s.records().len(), 1);
    assert_eq!(
        settle(&mut s, t0(), 1, W0, "0.3"),
        Reply::Duplicate { request_id: 1 }
    );
    assert!(s.records().is_empty());
    let v = s.view(KEY, t0()).unwrap();
    assert_eq!((v.spent, v.leased), (usd("0.3"), usd("0.1")));
    // An uncovered charge is recorded and flagged, never lost.
    let r = settle(&mut s, t0(), 2, W0, "0.8");
    assert!(matches!(r, Reply::Settled { uncovered, .. } if uncovered == usd("0.7")));
    assert!(s.events().contains(&Event::Overrun {
        entity: KEY,
        amount: usd("0.7")
    }));
    let v = s.view(KEY, t0()).unwrap();
    assert_eq!(
        (v.spent, v.leased, v.overshoot),
        (usd("1.1"), Money::ZERO, usd("0.1"))
    );
    assert_eq!(s.view(KEY, t0()).unwrap().excess, usd("0.1"));
    s.check_invariants();
}

#[test]
fn boundary_charge_counts_once_in_the_period_it_settles_in() {
    let mut s = state(1);
    let day_end = unix_ms(2024, 2, 29, 0, 0, 0);
    setup(&mut s, t0(), Some(daily("1")));
    assert_eq!(lease(&mut s, t0(), W0, "0.6", "0.6"), usd("0.6"));
    settle(&mut s, day_end - 1, 1, W0, "0.2");
    assert_eq!(s.view(KEY, day_end - 1).unwrap().spent, usd("0.2"));
    // At the boundary the lease carries over; the charge lands in the new day only.
    settle(&mut s, day_end, 2, W0, "0.3");
    assert!(matches!(
        s.records(),
        [
            Record {
                body: RecordBody::Rollover { .. },
                ..
            },
            Record {
                body: RecordBody::Settle { .. },
                ..
            }
        ]
    ));
    let v = s.view(KEY, day_end).unwrap();
    assert_eq!((v.spent, v.leased, v.epoch), (usd("0.3"), usd("0.1"), 1));
    assert_eq!(v.period.start_ms, day_end);
    assert_eq!(v.lifetime_spent, usd("0.5"));
    // Carried leases count against the new period: still never over the limit.
    assert_eq!(lease(&mut s, day_end, W0, "0.6", "0.6"), usd("0.6"));
    assert_eq!(lease(&mut s, day_end, W0, "0.01", "0.01"), Money::ZERO);
    s.check_invariants();
}

fn node_grant(s: &mut LedgerState, now: i64, period_start_ms: i64, amount: &str) -> Reply {
    s.apply(
        now,
        &Command::NodeGrant {
            entity: KEY,
            period_start_ms,
            amount: usd(amount),
        },
    )
}

/// Cluster mode: a node grants its workers only what the cluster
/// granted it; a used-up cap is a reason to draw, not a block; a
/// refusal blocks; a grant for a period that is over is not applied; a
/// new period starts with nothing drawn and the leases carried over
/// counted short; resets and rolling budgets are refused.
#[test]
fn a_cluster_node_grants_only_what_the_cluster_granted_it() {
    let mut s = LedgerState::new(StateConfig {
        workers: 2,
        settled_ids_max: 64,
        cluster: true,
    })
    .unwrap();
    let now = t0();
    let rolling = Budget::new(usd("10"), Some(Reset::one(ResetUnit::Day)));
    let r = s.apply(
        now,
        &Command::SetBudget {
            entity: KEY,
            kind: EntityKind::Key,
            budget: Some(rolling),
        },
    );
    assert!(
        matches!(r, Reply::Rejected(CommandError::NotInCluster(_))),
        "{r:?}"
    );
    setup(&mut s, now, Some(daily("10")));
    let start = s.view(KEY, now).unwrap().period.start_ms;
    // Nothing drawn: nothing to grant, and not blocked (ask the cluster).
    assert_eq!(lease(&mut s, now, 0, "1", "1"), Money::ZERO);
    assert!(!s.view(KEY, now).unwrap().blocked);
    let v = s.node_lease(KEY, now).unwrap();
    assert_eq!((v.cap, v.limit), (Money::ZERO, usd("10")));
    assert_eq!(v.shortfall(usd("1")), usd("1"));
    // The cluster grants 3: workers lease out of it, never past it.
    assert_eq!(
        node_grant(&mut s, now, start, "3"),
        Reply::NodeLease {
            entity: KEY,
            applied: true
        }
    );
    assert_eq!(lease(&mut s, now, 0, "2", "2"), usd("2"));
    assert_eq!(lease(&mut s, now, 1, "2", "2"), Money::ZERO);
    assert_eq!(
        s.node_lease(KEY, now).unwrap().shortfall(usd("2")),
        usd("1")
    );
    assert!(matches!(
        settle(&mut s, now, 1, 0, "2"),
        Reply::Settled { .. }
    ));
    // A refusal alone does not block while the cap has room; once the
    // cap is used up too, the workers are told (Blocked), and a later
    // grant unblocks them.
    node_grant(&mut s, now, start, "0");
    assert!(s.node_lease(KEY, now).unwrap().refused);
    assert!(!s.view(KEY, now).unwrap().blocked);
    assert_eq!(lease(&mut s, now, 1, "1", "1"), usd("1"));
    assert!(s.view(KEY, now).unwrap().blocked);
    assert!(
        matches!(s.events(), [Event::Blocked { .. }]),
        "{:?}",
        s.events()
    );
    node_grant(&mut s, now, start, "1");
    assert!(!s.node_lease(KEY, now).unwrap().refused);
    assert!(
        matches!(s.events(), [Event::Unblocked { .. }]),
        "{:?}",
        s.events()
    );
    // A grant for another period is not applied.
    let r = node_grant(&mut s, now, start - 86_400_000, "5");
    assert_eq!(
        r,
        Reply::NodeLease {
            entity: KEY,
            applied: false
        }
    );
    assert_eq!(s.node_lease(KEY, now).unwrap().cap, usd("4"));
    // Views show what the other nodes spent, beside this node's share.
    s.apply(
        now,
        &Command::ClusterSpend {
            entity: KEY,
            period_start_ms: start,
            others: usd("5"),
            refused: false,
        },
    );
    let v = s.view(KEY, now).unwrap();
    assert_eq!(
        (v.spent, v.node_spent, v.remaining),
        (usd("7"), usd("2"), Some(usd("3")))
    );
    // A manual reset must reach every node first (`ClusterReset`): a
    // node's own is refused.
    let r = s.apply(now, &Command::Reset { entity: KEY });
    assert!(
        matches!(r, Reply::Rejected(CommandError::NotInCluster(_))),
        "{r:?}"
    );
    // The next day: nothing drawn, the lease carried over counted short.
    let next = now + 86_400_000;
    s.apply(next, &Command::Tick);
    let v = s.node_lease(KEY, next).unwrap();
    assert_eq!(
        (v.cap, v.spent, v.committed),
        (Money::ZERO, Money::ZERO, usd("1"))
    );
    assert_eq!(v.shortfall(usd("2")), usd("3"));
    assert_eq!(s.view(KEY, next).unwrap().spent, Money::ZERO);
    s.check_invariants();
}

fn cluster_state() -> LedgerState {
    LedgerState::new(StateConfig {
        workers: 2,
        settled_ids_max: 64,
        cluster: true,
    })
    .unwrap()
}

fn applied(r: Reply) -> bool {
    match r {
        Reply::NodeLease { applied, .. } => applied,
        r => panic!("{r:?}"),
    }
}

#[test]
fn a_cluster_reset_starts_a_new_period_once_and_replays() {
    let mut s = cluster_state();
    let mut log = Vec::new();
    let now = t0();
    setup(&mut s, now, Some(daily("10")));
    log.extend_from_slice(s.records());
    let day = s.view(KEY, now).unwrap().period;
    node_grant(&mut s, now, day.start_ms, "5");
    assert_eq!(lease(&mut s, now, 0, "3", "3"), usd("3"));
    assert!(matches!(
        settle(&mut s, now, 1, 0, "2"),
        Reply::Settled { .. }
    ));
    log.extend_from_slice(s.records());
    // The reset the cluster agreed on: a period from there to the day's
    // end, nothing spent, nothing drawn; the lease still held is carried
    // (excused until drawn again, as at a rollover).
    let at = now + 1_000;
    assert!(applied(s.apply(
        now + 5,
        &Command::ClusterReset {
            entity: KEY,
            period_start_ms: at
        }
    )));
    log.extend_from_slice(s.records());
    assert!(s
        .events()
        .iter()
        .any(|e| matches!(e, Event::NewEpoch { manual: true, .. })));
    let v = s.view(KEY, now + 5).unwrap();
    assert_eq!(
        (
            v.period.start_ms,
            v.period.end_ms,
            v.spent,
            v.lifetime_spent
        ),
        (at, day.end_ms, Money::ZERO, usd("2"))
    );
    let n = s.node_lease(KEY, now + 5).unwrap();
    assert_eq!(
        (n.period.start_ms, n.cap, n.committed),
        (at, Money::ZERO, usd("1"))
    );
    // Applied once: the same reset again, or an older one, changes nothing.
    for start in [at, at - 10, day.start_ms] {
        let r = s.apply(
            now + 6,
            &Command::ClusterReset {
                entity: KEY,
                period_start_ms: start,
            },
        );
        assert!(!applied(r));
        assert!(s.records().is_empty());
    }
    // Grants for the period before the reset are not applied.
    assert!(!applied(node_grant(&mut s, now + 6, day.start_ms, "5")));
    assert!(applied(node_grant(&mut s, now + 6, at, "2")));
    assert_eq!(s.node_lease(KEY, now + 6).unwrap().cap, usd("2"));
    // A reset past the period's end belongs to the next period: the
    // entity rolls there first (this node's clock was behind).
    let next_day = day.end_ms + 60_000;
    assert!(applied(s.apply(
        day.end_ms - 1,
        &Command::ClusterReset {
            entity: KEY,
            period_start_ms: next_day
        }
    )));
    log.extend_from_slice(s.records());
    let v = s.view(KEY, next_day).unwrap();
    assert_eq!(
        (v.period.start_ms, v.period.end_ms),
        (next_day, day.end_ms + 86_400_000)
    );
    s.check_invariants();
    // The journal and a snapshot give the same books.
    let mut replayed = cluster_state();
    for r in &log {
        assert_eq!(replayed.replay(r), Ok(Replayed::Applied), "{r:?}");
    }
    assert_eq!(replayed.books(), s.books());
    let restored = LedgerState::from_books(s.config(), s.books()).unwrap();
    assert_eq!(restored.books(), s.books());
    // Not a single node's command.
    let mut single = state(1);
    setup(&mut single, now, Some(daily("10")));
    assert!(matches!(
        single.apply(
            now,
            &Command::ClusterReset {
                entity: KEY,
                period_start_ms: at
            }
        ),
        Reply::Rejected(CommandError::ClusterOnly(_))
    ));
}

#[test]
fn cluster_prepaid_budgets_start_at_the_epoch_and_top_ups_rise_to_the_total() {
    let mut s = cluster_state();
    let now = t0();
    setup(&mut s, now, Some(Budget::new(usd("1"), None)));
    // Every node's prepaid period starts at the same instant.
    assert_eq!(s.view(KEY, now).unwrap().period, Period::forever(0));
    let top_up = |s: &mut LedgerState, total: &str| {
        s.apply(
            now,
            &Command::ClusterTopUp {
                entity: KEY,
                total: usd(total),
            },
        )
    };
    assert!(applied(top_up(&mut s, "2")));
    assert!(matches!(
        s.records(),
        [Record {
            body: RecordBody::TopUp { amount, .. },
            ..
        }] if *amount == usd("2")
    ));
    assert_eq!(s.view(KEY, now).unwrap().limit_effective, Some(usd("3")));
    assert_eq!(s.node_lease(KEY, now).unwrap().limit, usd("3"));
    // The same total again, or a lower one: nothing.
    assert!(!applied(top_up(&mut s, "2")));
    assert!(!applied(top_up(&mut s, "1.5")));
    assert!(applied(top_up(&mut s, "2.5")));
    assert_eq!(s.view(KEY, now).unwrap().topup, usd("2.5"));
    // A reset moves the prepaid period's start (its hash) there.
    assert!(applied(s.apply(
        now,
        &Command::ClusterReset {
            entity: KEY,
            period_start_ms: now
        }
    )));
    assert_eq!(s.view(KEY, now).unwrap().period, Period::forever(now));
    // A node's own top-up or reset would leave the others behind.
    assert!(matches!(
        s.apply(now, &Command::Reset { entity: KEY }),
        Reply::Rejected(CommandError::NotInCluster(_))
    ));
    s.check_invariants();
    // Entities made before cluster mode are anchored there at start.
    let mut single = state(2);
    setup(&mut single, now, Some(Budget::new(usd("1"), None)));
    assert_eq!(single.view(KEY, now).unwrap().period, Period::forever(now));
    let mut joined = LedgerState::from_books(cluster_state().config(), single.books()).unwrap();
    joined.reset_node_caps();
    assert_eq!(joined.view(KEY, now).unwrap().period, Period::forever(0));
    joined.check_invariants();
}

#[test]
fn tick_rolls_over_and_unblocks() {
    let mut s = state(1);
    setup(&mut s, t0(), Some(daily("1")));
    lease(&mut s, t0(), W0, "1", "1");
    settle(&mut s, t0(), 1, W0, "1");
    assert!(s.view(KEY, t0()).unwrap().blocked);
    let next = unix_ms(2024, 2, 29, 0, 0, 0);
    assert_eq!(
        s.apply(next - 1, &Command::Tick),
        Reply::Ticked {
            rolled: 0,
            more: false
        }
    );
    assert_eq!(
        s.apply(next, &Command::Tick),
        Reply::Ticked {
            rolled: 1,
            more: false
        }
    );
    assert!(s
        .events()
        .iter()
        .any(|e| matches!(e, Event::NewEpoch { manual: false, .. })));
    assert!(s
        .events()
        .iter()
        .any(|e| matches!(e, Event::Unblocked { .. })));
    assert_eq!(s.view(KEY, next).unwrap().spent, Money::ZERO);
    s.check_invariants();
}

#[test]
fn prepaid_top_ups_and_manual_reset() {
    let mut s = state(1);
    setup(&mut s, t0(), Some(Budget::new(usd("1"), None)));
    lease(&mut s, t0(), W0, "1", "1");
    settle(&mut s, t0(), 1, W0, "1");
    assert!(s.view(KEY, t0()).unwrap().blocked);
    let later = t0() + 400 * 86_400_000;
    assert!(matches!(
        s.apply(
            later,
            &Command::TopUp {
                entity: KEY,
                amount: usd("2")
            }
        ),
        Reply::Applied { .. }
    ));
    let v = s.view(KEY, later).unwrap();
    assert_eq!(
        (v.spent, v.limit_effective, v.remaining),
        (usd("1"), Some(usd("3")), Some(usd("2")))
    );
    assert!(!v.blocked);
    assert!(matches!(
        s.apply(later, &Command::Reset { entity: KEY }),
        Reply::Applied { .. }
    ));
    let v = s.view(KEY, later).unwrap();
    assert_eq!(
        (v.spent, v.epoch, v.lifetime_spent),
        (Money::ZERO, 1, usd("1"))
    );
    // Top-ups are for prepaid budgets only.
    setup(&mut s, later, Some(daily("1")));
    assert_eq!(
        s.apply(
            later,
            &Command::TopUp {
                entity: KEY,
                amount: usd("2")
            }
        ),
        Reply::Rejected(CommandError::TopUpNotPrepaid(KEY))
    );
    s.check_invariants();
}

#[test]
fn lowering_a_limit_is_excused_but_grants_stop() {
    let mut s = state(2);
    setup(&mut s, t0(), Some(daily("10")));
    lease(&mut s, t0(), W0, "4", "4");
    setup(&mut s, t0(), Some(daily("1")));
    assert_eq!(s.view(KEY, t0()).unwrap().excess, usd("3"));
    assert_eq!(lease(&mut s, t0(), W1, "0.01", "0.01"), Money::ZERO);
    s.check_invariants();
    // Settling drains the excess; it never comes back through grants.
    settle(&mut s, t0(), 1, W0, "3.5");
    assert_eq!(s.view(KEY, t0()).unwrap().excess, usd("3"));
    s.apply(
        t0(),
        &Command::LeaseReturn {
            worker: W0,
            entity: KEY,
            amount: usd("1"),
        },
    );
    assert_eq!(s.view(KEY, t0()).unwrap().excess, usd("2.5"));
    s.check_invariants();
}

#[test]
fn worker_lost_expires_its_leases() {
    let mut s = state(2);
    setup(&mut s, t0(), Some(daily("1")));
    lease(&mut s, t0(), W0, "0.5", "0.5");
    lease(&mut s, t0(), W1, "0.5", "0.5");
    assert_eq!(
        s.apply(t0(), &Command::WorkerLost { worker: W0 }),
        Reply::WorkerLost {
            worker: W0,
            leases_expired: 1
        }
    );
    assert!(matches!(s.events(), [Event::Unblocked { remaining, .. }] if *remaining == usd("0.5")));
    assert_eq!(s.lease(W0, KEY), Money::ZERO);
    assert_eq!(s.lease(W1, KEY), usd("0.5"));
    s.check_invariants();
}

#[test]
fn bad_commands_are_refused_without_change() {
    let mut s = state(1);
    setup(&mut s, t0(), Some(daily("1")));
    let before = s.books();
    let bad = [
        Command::LeaseRequest {
            worker: 1,
            entity: KEY,
            need: usd("0"),
            want: usd("1"),
        },
        Command::LeaseRequest {
            worker: 0,
            entity: EntityId(3),
            need: usd("0"),
            want: usd("1"),
        },
        Command::LeaseRequest {
            worker: 0,
            entity: EntityId(u32::MAX),
            need: usd("0"),
            want: usd("1"),
        },
        Command::Settle {
            request_id: 9,
            worker: 0,
            estimated: false,
            charges: Charges::new(),
        },
        Command::Settle {
            request_id: 9,
            worker: 0,
            estimated: false,
            charges: Charges::from_slice(&[
                Charge {
                    entity: KEY,
                    amount: usd("0.1"),
                    from_lease: false,
                },
                Charge {
                    entity: KEY,
                    amount: usd("0.1"),
                    from_lease: false,
                },
            ])
            .unwrap(),
        },
        Command::Settle {
            request_id: 9,
            worker: 0,
            estimated: false,
            charges: Charges::from_slice(&[
                Charge {
                    entity: KEY,
                    amount: usd("0.1"),
                    from_lease: false,
                },
                Charge {
                    entity: EntityId(8),
                    amount: usd("0.1"),
                    from_lease: false,
                },
            ])
            .unwrap(),
        },
        Command::Settle {
            request_id: 9,
            worker: 0,
            estimated: false,
            charges: Charges::from_slice(&[Charge {
                entity: KEY,
                amount: Money::MAX,
                from_lease: false,
            }])
            .unwrap(),
        },
        Command::SetBudget {
            entity: KEY,
            kind: EntityKind::Team,
            budget: None,
        },
        Command::TopUp {
            entity: KEY,
            amount: Money::ZERO,
        },
        Command::Reset {
            entity: EntityId(99),
        },
        Command::WorkerLost { worker: 5 },
    ];
    // Make the overflow case real: spend one unit first.
    settle(&mut s, t0(), 1, 0, "0.000000000001");
    let before_spent = s.books();
    for cmd in bad {
        let r = s.apply(t0(), &cmd);
        assert!(matches!(r, Reply::Rejected(_)), "{cmd:?} -> {r:?}");
        assert!(s.records().is_empty());
        assert_eq!(s.books(), before_spent);
    }
    assert_ne!(before, before_spent);
    assert!(!s.is_settled(9));
    s.check_invariants();
}

#[test]
fn the_settled_window_is_exact_for_clustered_and_scattered_ids() {
    let mut ids = SettledIds::new(100);
    // Two workers' real-shaped ids (prefix << 48 | counter), interleaved,
    // and scattered ones that share no word.
    let shaped = |prefix: u128, n: u128| (prefix << 48) | n;
    let mut all = Vec::new();
    for n in 0..40u128 {
        all.push(shaped(0xfeed_0000_0000_0001, n));
        all.push(shaped(0xfeed_0000_0000_0002, n));
    }
    for k in 0..30u128 {
        all.push(k.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
    }
    for &id in &all {
        assert!(!ids.contains(id));
        ids.insert(id);
        assert!(ids.contains(id));
    }
    // 110 inserted into a window of 100: the 10 oldest are gone.
    assert_eq!(ids.count(), 100);
    for (i, &id) in all.iter().enumerate() {
        assert_eq!(ids.contains(id), i >= 10, "id #{i}");
    }
    // Neighbours of a present id in the same word are not present.
    assert!(!ids.contains(shaped(0xfeed_0000_0000_0001, 41)));
}

#[test]
fn duplicates_are_refused_within_the_remembered_window() {
    let mut s = state(1);
    setup(&mut s, t0(), None);
    for id in 0..70u128 {
        assert!(matches!(
            settle(&mut s, t0(), id, W0, "0.01"),
            Reply::Settled { .. }
        ));
    }
    // The window holds the newest 64 ids.
    assert_eq!(
        settle(&mut s, t0(), 69, W0, "0.01"),
        Reply::Duplicate { request_id: 69 }
    );
    assert_eq!(
        settle(&mut s, t0(), 6, W0, "0.01"),
        Reply::Duplicate { request_id: 6 }
    );
    assert!(!s.is_settled(5));
    assert_eq!(s.settled_ids().count(), 64);
    // A snapshot restored into a smaller window keeps the newest ids.
    let small = LedgerState::from_books(
        StateConfig {
            workers: 1,
            settled_ids_max: 10,
            cluster: false,
        },
        s.books(),
    )
    .unwrap();
    assert_eq!(
        small.settled_ids().collect::<Vec<_>>(),
        (60..70).collect::<Vec<_>>()
    );
    small.check_invariants();
    s.check_invariants();
}

#[test]
fn a_tick_rolls_a_bounded_number_of_entities() {
    let mut s = state(1);
    let n = TICK_ROLLOVERS_MAX + 10;
    for id in 0..n {
        s.apply(
            t0(),
            &Command::SetBudget {
                entity: EntityId(id),
                kind: EntityKind::Key,
                budget: Some(daily("1")),
            },
        );
    }
    let midnight = unix_ms(2024, 2, 29, 0, 0, 0);
    assert_eq!(
        s.apply(midnight, &Command::Tick),
        Reply::Ticked {
            rolled: TICK_ROLLOVERS_MAX,
            more: true
        }
    );
    assert_eq!(s.records().len(), TICK_ROLLOVERS_MAX as usize);
    assert_eq!(
        s.apply(midnight, &Command::Tick),
        Reply::Ticked {
            rolled: 10,
            more: false
        }
    );
    s.check_invariants();
}

#[test]
fn a_clock_that_goes_back_never_moves_a_period_back() {
    let mut s = state(1);
    setup(&mut s, t0(), Some(daily("1")));
    let next = unix_ms(2024, 2, 29, 0, 0, 0);
    settle(&mut s, next + 10, 1, W0, "0.1");
    // The clock steps back across the boundary: the charge stays in the current period.
    settle(&mut s, next - 10, 2, W0, "0.2");
    let v = s.view(KEY, next + 20).unwrap();
    assert_eq!((v.period.start_ms, v.spent, v.epoch), (next, usd("0.3"), 1));
    s.check_invariants();
}

#[test]
fn replay_of_records_rebuilds_the_books() {
    let mut live = state(2);
    let mut log = Vec::new();
    let mut now = t0();
    let budgets = [Some(daily("1")), Some(Budget::new(usd("2"), None)), None];
    for (i, b) in budgets.iter().enumerate() {
        live.apply(
            now,
            &Command::SetBudget {
                entity: EntityId(i as u32),
                kind: EntityKind::Team,
                budget: *b,
            },
        );
        log.extend_from_slice(live.records());
    }
    for step in 0..200u128 {
        now += 3_600_000;
        let entity = EntityId((step % 3) as u32);
        live.apply(
            now,
            &Command::LeaseRequest {
                worker: 0,
                entity,
                need: usd("0.01"),
                want: usd("0.1"),
            },
        );
        log.extend_from_slice(live.records());
        live.apply(
            now,
            &Command::Settle {
                request_id: step,
                worker: 0,
                estimated: false,
                charges: Charges::from_slice(&[Charge {
                    entity,
                    amount: usd("0.01"),
                    from_lease: true,
                }])
                .unwrap(),
            },
        );
        log.extend_from_slice(live.records());
        if step % 50 == 0 {
            live.apply(now, &Command::Reset { entity });
            log.extend_from_slice(live.records());
        }
    }
    let mut replayed = state(2);
    for r in &log {
        assert_eq!(replayed.replay(r), Ok(Replayed::Applied));
    }
    assert_eq!(replayed.books(), live.books());
    for r in &log {
        assert_eq!(replayed.replay(r), Ok(Replayed::Skipped));
    }
    assert_eq!(replayed.books(), live.books());
    replayed.check_invariants();
    let restored = LedgerState::from_books(replayed.config(), replayed.books()).unwrap();
    assert_eq!(restored.books(), live.books());
    restored.check_invariants();
    // A gap is an error.
    let mut fresh = state(2);
    assert_eq!(
        fresh.replay(&log[1]),
        Err(ReplayError::Gap { last: 0, found: 2 })
    );
}
