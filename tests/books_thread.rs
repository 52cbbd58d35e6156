//! The ledger thread with its rings: strict budgets under concurrent workers,
//! crash recovery (simulated and a real SIGKILL), config budgets, periods.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bursar::books::shard::{Admission, LeaseShard};
use bursar::books::thread::{
    Books, BooksConfig, BooksHandle, Clock, SystemClock, TestClock, WorkerLink,
};
use bursar::books::EntityRegistry;
use bursar::budget::period::{unix_ms, Reset};
use bursar::budget::{Budget, Mode};
use bursar::ledger::{Charge, Charges, Command, EntityId, EntityKind, Event, LedgerConfig, Reply};
use bursar::money::Money;

fn temp_dir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("bursar-books-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn usd(s: &str) -> Money {
    Money::parse_usd(s).unwrap()
}

/// A minimal executor: enough to await a oneshot from a plain thread.
fn block_on<F: Future>(f: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

fn config(workers: u16, entities: Vec<(EntityKind, String, Option<Budget>)>) -> BooksConfig {
    let mut ledger = LedgerConfig::default();
    ledger.state.workers = workers;
    ledger.journal.fsync = false;
    BooksConfig {
        workers,
        ledger,
        snapshot_interval_ms: 3_600_000,
        ring_slots: 1024,
        entities,
        cluster: None,
    }
}

fn start(
    dir: &Path,
    cfg: &BooksConfig,
    clock: Arc<dyn Clock>,
) -> (BooksHandle, Vec<WorkerLink>, EntityRegistry) {
    let mut registry = EntityRegistry::open(dir).unwrap();
    let (handle, links) = Books::start(dir, cfg, &mut registry, clock).unwrap();
    (handle, links, registry)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn concurrent_workers_never_exceed_a_strict_budget_and_agree_with_the_ledger() {
    let dir = temp_dir("thread-strict");
    const WORKERS: u16 = 4;
    let cfg = config(
        WORKERS,
        vec![
            (
                EntityKind::Customer,
                "acme".into(),
                Some(Budget::new(usd("100"), None)),
            ),
            (
                EntityKind::Team,
                "search".into(),
                Some(Budget::new(usd("5"), None)),
            ),
            (
                EntityKind::Key,
                "k".into(),
                Some(Budget::new(usd("7"), None)),
            ),
            (EntityKind::Provider, "openai".into(), None),
        ],
    );
    let (handle, links, registry) = start(&dir, &cfg, Arc::new(SystemClock));
    let chain: Vec<EntityId> = [
        (EntityKind::Customer, "acme"),
        (EntityKind::Team, "search"),
        (EntityKind::Key, "k"),
    ]
    .iter()
    .map(|(k, n)| registry.lookup(*k, n).unwrap())
    .collect();
    let provider = registry.lookup(EntityKind::Provider, "openai").unwrap();
    let team = chain[1];

    let threads: Vec<_> = links
        .into_iter()
        .map(|mut link| {
            let chain = chain.clone();
            std::thread::spawn(move || {
                let w = link.worker;
                let mut shard = LeaseShard::new(w);
                let levels: Vec<(EntityId, Mode)> = chain
                    .iter()
                    .map(|&e| (e, Mode::Strict))
                    .chain([(provider, Mode::Soft)])
                    .collect();
                let (mut settled, mut count, mut denied) = (Money::ZERO, 0u64, 0u32);
                let mut overruns = 0;
                let mut i = 0u64;
                while denied < 50 {
                    i += 1;
                    for event in link.events.try_iter() {
                        overruns += usize::from(matches!(event, Event::Overrun { .. }));
                        if let Some(ret) = shard.on_event(&event) {
                            link.tell(ret).unwrap();
                        }
                    }
                    if link.resync.swap(false, Ordering::AcqRel) {
                        shard.resync();
                    }
                    // Worst case 1..20 millidollars; actual 30..100% of it.
                    let worst = Money::from_picodollars(
                        ((i * 7919 + u64::from(w) * 31) % 20 + 1) as i128 * 1_000_000_000,
                    )
                    .unwrap();
                    let actual = Money::from_picodollars(
                        worst.picodollars() * (30 + (i % 71) as i128) / 100,
                    )
                    .unwrap();
                    let reservation = loop {
                        match shard.try_admit(&levels, worst).unwrap() {
                            Admission::Admitted(r) => break Some(r),
                            Admission::Blocked { .. } => break None,
                            Admission::NeedLease { entity, need } => {
                                let rx = link
                                    .request(Command::LeaseRequest {
                                        worker: w,
                                        entity,
                                        need,
                                        want: usd("0.05"),
                                    })
                                    .unwrap();
                                match block_on(rx).unwrap() {
                                    Reply::LeaseGrant {
                                        granted, remaining, ..
                                    } => {
                                        shard.grant(entity, granted, remaining);
                                        if granted.is_zero() {
                                            break None;
                                        }
                                        assert!(granted >= need);
                                    }
                                    other => panic!("{other:?}"),
                                }
                            }
                        }
                    };
                    let Some(reservation) = reservation else {
                        denied += 1;
                        continue;
                    };
                    if i.is_multiple_of(13) {
                        // The upstream failed before any cost.
                        shard.release(reservation);
                        continue;
                    }
                    let charges = shard.settle(reservation, actual);
                    let request_id = u128::from(w) << 64 | u128::from(i);
                    while link.settle(request_id, false, &charges).is_err() {
                        std::thread::yield_now();
                    }
                    settled = settled.checked_add(actual).unwrap();
                    count += 1;
                }
                overruns += link
                    .events
                    .try_iter()
                    .filter(|e| matches!(e, Event::Overrun { .. }))
                    .count();
                (settled, count, overruns)
            })
        })
        .collect();
    let mut total = Money::ZERO;
    let mut count = 0;
    for t in threads {
        let (s, c, overruns) = t.join().unwrap();
        assert_eq!(overruns, 0);
        total = total.checked_add(s).unwrap();
        count += c;
    }
    wait_until("the rings to be consumed", || {
        handle.stats().ring_settles.load(Ordering::Relaxed) == count
    });
    assert!(total <= usd("5"), "settled {total} over the team's 5");
    // Nearly all of it was used: the grant rule gives the last of a budget to
    // whoever needs it (a request is denied only when its worst case does not fit).
    assert!(total > usd("4.9"), "only {total} of 5 used");
    let v = handle.view(team).unwrap().unwrap();
    assert_eq!(v.spent, total);
    assert!(v.spent.checked_add(v.leased).unwrap() <= usd("5"));
    for &id in chain.iter().chain([&provider]) {
        assert_eq!(handle.view(id).unwrap().unwrap().spent, total, "{id}");
    }
    assert_eq!(handle.stats().ring_rejected.load(Ordering::Relaxed), 0);
    eprintln!("{count} requests settled {total}");
    handle.shutdown().unwrap();

    // The books after a clean restart are the same.
    let (handle, _links, _registry) = start(&dir, &cfg, Arc::new(SystemClock));
    assert_eq!(handle.view(team).unwrap().unwrap().spent, total);
    assert_eq!(handle.stats().ring_settles.load(Ordering::Relaxed), 0);
    handle.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn crash_config(workers: u16) -> BooksConfig {
    let mut cfg = config(
        workers,
        vec![
            (EntityKind::Key, "free".into(), None),
            (
                EntityKind::Key,
                "prepaid".into(),
                Some(Budget::new(usd("1000"), None)),
            ),
        ],
    );
    // The journal batch stays in memory until the crash: only the rings can
    // bring these settles back.
    cfg.ledger.journal.sync_interval_ms = 10_000;
    cfg.ledger.journal.sync_records_max = 1 << 16;
    // Big enough that no ring passes half full (which makes the thread flush early).
    cfg.ring_slots = 1 << 14;
    cfg
}

fn amount_of(i: u64) -> Money {
    Money::from_picodollars(i128::from(i % 1000 + 1) * 1_000_003).unwrap()
}

/// Pushes settles `from..to` of worker `link` on both keys.
fn publish(link: &mut WorkerLink, ids: [EntityId; 2], from: u64, to: u64) -> Money {
    let mut sum = Money::ZERO;
    for i in from..to {
        let charges = Charges::from_slice(&[
            Charge {
                entity: ids[0],
                amount: amount_of(i),
                from_lease: false,
            },
            Charge {
                entity: ids[1],
                amount: amount_of(i),
                from_lease: false,
            },
        ])
        .unwrap();
        let id = u128::from(link.worker) << 64 | u128::from(i);
        while link.settle(id, i.is_multiple_of(2), &charges).is_err() {
            std::thread::yield_now();
        }
        sum = sum.checked_add(amount_of(i)).unwrap();
    }
    sum
}

#[test]
fn a_crash_loses_no_published_settle_and_counts_none_twice() {
    let dir = temp_dir("thread-crash");
    let cfg = crash_config(3);
    let (handle, mut links, registry) = start(&dir, &cfg, Arc::new(SystemClock));
    let ids = [
        registry.lookup(EntityKind::Key, "free").unwrap(),
        registry.lookup(EntityKind::Key, "prepaid").unwrap(),
    ];
    let mut expected = Money::ZERO;
    for link in &mut links {
        expected = expected.checked_add(publish(link, ids, 0, 3000)).unwrap();
    }
    // The thread applies them (journal batch in memory, unflushed)...
    wait_until("the settles to be applied", || {
        handle.stats().ring_settles.load(Ordering::Relaxed) == 9000
    });
    assert_eq!(handle.view(ids[0]).unwrap().unwrap().spent, expected);
    // ... and dies before the batch reaches the journal.
    handle.crash();
    drop(links);

    let (handle, mut links, _registry) = start(&dir, &cfg, Arc::new(SystemClock));
    assert_eq!(handle.stats().ring_settles.load(Ordering::Relaxed), 9000);
    assert_eq!(handle.stats().ring_duplicates.load(Ordering::Relaxed), 0);
    for id in ids {
        let v = handle.view(id).unwrap().unwrap();
        assert_eq!((v.spent, v.lifetime_spent), (expected, expected));
    }
    // More traffic, flushed this time by a clean shutdown; then a crash with
    // settles both journaled-and-released and published-only.
    for link in &mut links {
        expected = expected
            .checked_add(publish(link, ids, 3000, 4000))
            .unwrap();
    }
    handle.shutdown().unwrap();
    drop(links);
    let (handle, mut links, _registry) = start(&dir, &cfg, Arc::new(SystemClock));
    assert_eq!(handle.stats().ring_settles.load(Ordering::Relaxed), 0);
    for link in &mut links {
        expected = expected
            .checked_add(publish(link, ids, 4000, 4500))
            .unwrap();
    }
    handle.crash();
    drop(links);
    let (handle, _links, _registry) = start(&dir, &cfg, Arc::new(SystemClock));
    for id in ids {
        assert_eq!(handle.view(id).unwrap().unwrap().spent, expected);
    }
    handle.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rings_of_workers_that_no_longer_exist_are_drained_on_start() {
    let dir = temp_dir("thread-fewer-workers");
    let cfg = crash_config(4);
    let (handle, mut links, registry) = start(&dir, &cfg, Arc::new(SystemClock));
    let ids = [
        registry.lookup(EntityKind::Key, "free").unwrap(),
        registry.lookup(EntityKind::Key, "prepaid").unwrap(),
    ];
    let expected = publish(&mut links[3], ids, 0, 500);
    handle.crash();
    drop(links);
    let (handle, links, _registry) = start(&dir, &crash_config(2), Arc::new(SystemClock));
    assert_eq!(links.len(), 2);
    assert_eq!(handle.view(ids[1]).unwrap().unwrap().spent, expected);
    handle.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The child half of the SIGKILL test: publishes settles, says so, and waits
/// to be killed. Does nothing unless run by the parent.
#[test]
fn sigkill_child() {
    let Ok(dir) = std::env::var("BURSAR_BOOKS_SIGKILL_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let cfg = crash_config(2);
    let (_handle, mut links, registry) = start(&dir, &cfg, Arc::new(SystemClock));
    let ids = [
        registry.lookup(EntityKind::Key, "free").unwrap(),
        registry.lookup(EntityKind::Key, "prepaid").unwrap(),
    ];
    let mut sum = Money::ZERO;
    for link in &mut links {
        sum = sum.checked_add(publish(link, ids, 0, 5000)).unwrap();
    }
    println!("PUBLISHED {}", sum.picodollars());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_real_sigkill_loses_no_published_settle() {
    use std::io::{BufRead, BufReader};
    let dir = temp_dir("thread-sigkill");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BURSAR_BOOKS_SIGKILL_DIR", &dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut published = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        eprintln!("child: {line}");
        // libtest prints the test's name on the same line, before it.
        if let Some(n) = line.split("PUBLISHED ").nth(1) {
            published = Some(n.trim().parse::<i128>().unwrap());
            break;
        }
    }
    let published = Money::from_picodollars(published.expect("the child published")).unwrap();
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let (handle, _links, registry) = start(&dir, &crash_config(2), Arc::new(SystemClock));
    // The child's journal batch was still in its memory: the rings brought them back.
    assert!(handle.stats().ring_settles.load(Ordering::Relaxed) > 0);
    for name in ["free", "prepaid"] {
        let id = registry.lookup(EntityKind::Key, name).unwrap();
        assert_eq!(handle.view(id).unwrap().unwrap().spent, published, "{name}");
    }
    handle.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_budgets_exist_and_periods_follow_the_injected_clock() {
    let dir = temp_dir("thread-clock");
    let t0 = unix_ms(2024, 2, 28, 12, 0, 0);
    let clock = Arc::new(TestClock::new(t0));
    let mut daily = Budget::new(usd("1"), Some(Reset::parse("1d").unwrap()));
    daily.alignment = bursar::budget::Alignment::Calendar;
    let cfg = config(
        1,
        vec![
            (EntityKind::Team, "t".into(), Some(daily)),
            (EntityKind::Key, "nobudget".into(), None),
        ],
    );
    let (handle, mut links, registry) = start(&dir, &cfg, clock.clone());
    let team = registry.lookup(EntityKind::Team, "t").unwrap();
    let key = registry.lookup(EntityKind::Key, "nobudget").unwrap();
    let v = handle.view(team).unwrap().unwrap();
    assert_eq!((v.budget, v.kind), (Some(daily), EntityKind::Team));
    assert_eq!(v.period.end_ms, unix_ms(2024, 2, 29, 0, 0, 0));
    assert_eq!(handle.view(key).unwrap().unwrap().budget, None);
    let link = &mut links[0];
    let charges = Charges::from_slice(&[
        Charge {
            entity: team,
            amount: usd("0.4"),
            from_lease: false,
        },
        Charge {
            entity: key,
            amount: usd("0.4"),
            from_lease: false,
        },
    ])
    .unwrap();
    link.settle(1, false, &charges).unwrap();
    wait_until("the settle", || {
        handle.view(team).unwrap().unwrap().spent == usd("0.4")
    });
    // Leap day: the tick rolls the team into Feb 29 and tells the worker.
    clock.set(unix_ms(2024, 2, 29, 0, 0, 0));
    // (The settle without a lease on a strict budget was reported as an Overrun first.)
    let event = std::iter::from_fn(|| link.events.recv_timeout(Duration::from_secs(10)).ok())
        .find(|e| matches!(e, Event::NewEpoch { .. }))
        .expect("a NewEpoch event");
    assert!(
        matches!(event, Event::NewEpoch { entity, epoch: 1, manual: false, .. } if entity == team),
        "{event:?}"
    );
    let v = handle.view(team).unwrap().unwrap();
    assert_eq!((v.spent, v.lifetime_spent), (Money::ZERO, usd("0.4")));
    assert_eq!(v.period.end_ms, unix_ms(2024, 3, 1, 0, 0, 0));
    // A config change of the budget is applied at the next start; an
    // unchanged one writes nothing.
    handle.shutdown().unwrap();
    drop(links);
    let mut cfg2 = cfg.clone();
    cfg2.entities[0].2 = Some(Budget::new(usd("2"), Some(Reset::parse("1d").unwrap())));
    let (handle, _links, _registry) = start(&dir, &cfg2, clock.clone());
    let v = handle.view(team).unwrap().unwrap();
    assert_eq!(v.budget.unwrap().limit, usd("2"));
    assert_eq!(v.lifetime_spent, usd("0.4"));
    // Blocking control-plane commands work too.
    assert!(matches!(
        handle.apply(Command::Reset { entity: key }).unwrap(),
        Reply::Applied { .. }
    ));
    handle.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_contract_config_starts_the_books_with_its_budgets() {
    const BOOKS: &str = r#"
[server]
workers = 2
[[customers]]
name = "acme"
budget = { limit_usd = "100", reset = "1M", calendar_aligned = true }
[[teams]]
name = "search"
customer = "acme"
budget = { limit_usd = "5", reset = "1d", mode = "strict" }
[[providers]]
name = "m"
kind = "mock"
models = ["*"]
[[virtual_keys]]
name = "search-prod"
team = "search"
key = "sk-search-prod"
budget = { limit_usd = "1.00", reset = "1h" }
"#;
    let config = bursar::config::Config::from_toml(BOOKS, None).unwrap();
    let mut cfg = BooksConfig::from_config(&config);
    assert_eq!(cfg.workers, 2);
    assert_eq!(cfg.entities.len(), 4);
    cfg.ledger.journal.fsync = false;
    let dir = temp_dir("thread-from-config");
    let (handle, links, registry) = start(&dir, &cfg, Arc::new(SystemClock));
    assert_eq!(links.len(), 2);
    for (kind, name, limit) in [
        (EntityKind::Customer, "acme", Some(usd("100"))),
        (EntityKind::Team, "search", Some(usd("5"))),
        (EntityKind::Key, "search-prod", Some(usd("1"))),
        (EntityKind::Provider, "m", None),
    ] {
        let id = registry.lookup(kind, name).unwrap();
        let v = handle.view(id).unwrap().unwrap();
        assert_eq!((v.kind, v.budget.map(|b| b.limit)), (kind, limit), "{name}");
    }
    // A restart with the same config writes no new budget records.
    handle.shutdown().unwrap();
    drop(links);
    let seq_before = journal_seq(&dir, &cfg);
    assert_eq!(journal_seq(&dir, &cfg), seq_before);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The ledger's journal position after a start and clean stop.
fn journal_seq(dir: &Path, cfg: &BooksConfig) -> u64 {
    let (handle, _links, _registry) = start(dir, cfg, Arc::new(SystemClock));
    handle.shutdown().unwrap();
    let (ledger, _) = bursar::ledger::Ledger::open(&dir.join("ledger"), cfg.ledger).unwrap();
    ledger.state().journal_seq()
}

/// The ledger rings a worker's bell after it posts events, so the worker's
/// listener sleeps without a timer and still hears of a block or a reset at
/// once (decision 0007).
#[test]
fn a_waiting_worker_is_woken_when_the_ledger_posts_an_event() {
    let dir = temp_dir("bell");
    let cfg = config(
        1,
        vec![(
            EntityKind::Team,
            "t".into(),
            Some(Budget::new(usd("1"), None)),
        )],
    );
    let (handle, mut links, registry) = start(&dir, &cfg, Arc::new(SystemClock));
    let team = registry.lookup(EntityKind::Team, "t").unwrap();
    let link = links.pop().unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        link.poll_events_posted(&mut cx).is_pending(),
        "nothing is posted yet"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        block_on(std::future::poll_fn(|cx| link.poll_events_posted(cx)));
        tx.send(()).unwrap();
        link
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "the worker must sleep while nothing is posted"
    );
    assert!(matches!(
        handle.apply(Command::Reset { entity: team }).unwrap(),
        Reply::Applied { .. }
    ));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the ledger's bell woke the waiting worker");
    let link = waiter.join().unwrap();
    assert!(
        matches!(
            link.events.try_recv(),
            Ok(Event::NewEpoch { entity, manual: true, .. }) if entity == team
        ),
        "the event that rang the bell is waiting"
    );
    handle.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The ledger polls the rings at the journal's fsync pace, within bounds: a
/// 1 ms journal is read every 1 ms, a lazy one at least every 16 ms.
#[test]
fn the_rings_are_polled_at_the_journals_pace() {
    use bursar::books::thread::{ring_poll_interval, RING_POLL_IDLE_MAX};
    assert_eq!(ring_poll_interval(10), Duration::from_millis(10));
    assert_eq!(ring_poll_interval(0), Duration::from_millis(1));
    assert_eq!(ring_poll_interval(3), Duration::from_millis(3));
    assert_eq!(ring_poll_interval(10_000), RING_POLL_IDLE_MAX);
}

/// An idle ledger thread dozes (parks until its next tick instead of
/// polling the rings every 16 ms), and a settle published while it dozes
/// unparks it: the settle is read at once, not when the doze ends.
#[test]
fn a_dozing_ledger_is_woken_by_a_settle() {
    let dir = temp_dir("doze");
    let cfg = config(
        1,
        vec![
            (EntityKind::Key, "free".into(), None),
            (
                EntityKind::Key,
                "prepaid".into(),
                Some(Budget::new(usd("1000"), None)),
            ),
        ],
    );
    // A clock that moves only when told: the next tick never comes, so
    // every doze lasts nearly the whole tick interval (1 s); a settle read
    // much sooner woke the thread.
    let t0 = 1_790_000_000_000;
    let clock = Arc::new(TestClock::new(t0));
    let (handle, mut links, registry) = start(&dir, &cfg, clock.clone());
    let ids = [
        registry.lookup(EntityKind::Key, "free").unwrap(),
        registry.lookup(EntityKind::Key, "prepaid").unwrap(),
    ];
    let stats = Arc::clone(handle.stats());
    for round in 0..3u64 {
        let dozes = stats.dozes.load(Ordering::Relaxed);
        wait_until("the idle ledger dozes", || {
            stats.dozes.load(Ordering::Relaxed) > dozes
        });
        // The counter moves just before the thread parks.
        std::thread::sleep(Duration::from_millis(50));
        let read = stats.ring_settles.load(Ordering::Relaxed);
        let published = Instant::now();
        publish(&mut links[0], ids, round, round + 1);
        wait_until("the settle is read", || {
            stats.ring_settles.load(Ordering::Relaxed) > read
        });
        let took = published.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "round {round}: the settle was read after {took:?}, at the end of the doze"
        );
        // Time enough for the journal to flush the settle (its oldest record
        // waited an interval), so nothing holds the thread awake.
        clock.set(t0 + 50 * (round as i64 + 1));
    }
    handle.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
