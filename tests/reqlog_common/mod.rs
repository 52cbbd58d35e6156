//! Scenarios shared by the SQLite and PostgreSQL request log tests: each one
//! drives the real writer thread into a real store and reads back through
//! the `LogStore` queries.

#![allow(dead_code)] // each test binary uses a subset

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bursar::reqlog::{
    Bucket, CacheStatus, GroupBy, LogConfig, LogCursor, LogFilter, LogRow, LogStore, LogWriter,
    SeriesPoint, SpendTotal,
};

/// 2026-11-27T00:00:00Z.
pub const T0: i64 = 1_795_737_600_000;
pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 86_400_000;

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "bursar-reqlog-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A varied row: every field takes several values, including the edges
/// (costs beyond i64, absent team and ttfb, text with awkward characters);
/// a cache hit carries the spend it avoided (beyond i64 for some), any other
/// row none.
pub fn varied_row(rng: &mut Rng, i: u64) -> LogRow {
    let pick =
        |rng: &mut Rng, list: &[&str]| list[rng.below(list.len() as u64) as usize].to_string();
    let cost = match rng.below(5) {
        0 => 0,
        1 => rng.below(1_000_000_000) as i128,
        2 => i128::from(i64::MAX) + rng.below(1000) as i128,
        3 => 999_999_999_999_999_999_999_999_999_999, // Money::MAX - 1
        _ => rng.below(u64::MAX) as i128 * 1_000,
    };
    let mut tags = Vec::new();
    if rng.below(2) == 0 {
        tags.push(("env".to_string(), pick(rng, &["prod", "dev"])));
    }
    if rng.below(2) == 0 {
        tags.push((
            "feature".to_string(),
            pick(rng, &["search", "chat", "sum mary"]),
        ));
    }
    let mut row = LogRow {
        id: format!("req_{:012x}{:016x}", i, rng.next()),
        // Few distinct times, so many rows tie and paging must use the id.
        time_ms: T0 + rng.below(40) as i64 * 250,
        key: pick(rng, &["k-a", "k-b", "k-c"]).into(),
        team: if rng.below(3) == 0 {
            None
        } else {
            Some(pick(rng, &["red", "blue"]).into())
        },
        customer: if rng.below(2) == 0 {
            None
        } else {
            Some(pick(rng, &["acme", "globex"]).into())
        },
        provider: pick(rng, &["openai", "anthropic"]).into(),
        model: pick(rng, &["gpt-4o", "gpt-4o-mini", "claude"]),
        endpoint: if rng.below(2) == 0 {
            Cow::Borrowed("chat/completions")
        } else {
            Cow::Owned("responses".to_string())
        },
        status: [200, 200, 200, 400, 429, 502][rng.below(6) as usize],
        prompt_tokens: rng.below(100_000),
        completion_tokens: rng.below(10_000),
        cached_tokens: rng.below(100),
        cache_write_tokens: rng.below(100),
        reasoning_tokens: rng.below(100),
        cost_picodollars: cost,
        avoided_picodollars: 0,
        price_version: "2026-11-01".into(),
        estimated: rng.below(2) == 0,
        ttfb_us: if rng.below(4) == 0 {
            None
        } else {
            Some(rng.below(10_000_000))
        },
        total_us: rng.below(100_000_000),
        cache_status: [
            CacheStatus::None,
            CacheStatus::Hit,
            CacheStatus::SemanticHit,
            CacheStatus::Miss,
        ][rng.below(4) as usize],
        stream: rng.below(2) == 0,
        tags,
        prompt_text: if rng.below(2) == 0 {
            Some("tab\there\nnew line \\ back\u{0}slash é".into())
        } else {
            None
        },
        completion_text: Some(format!("answer {i}")),
    };
    // Derived from `i`, not drawn, so the generator's sequence (which the
    // crash test replays) is what it was before avoided spend.
    if row.cache_status == CacheStatus::Hit {
        row.avoided_picodollars = match i % 3 {
            0 => i128::from(i64::MAX) + i as i128,
            1 => i as i128 * 1_000_003,
            _ => 999_999_999_999_999_999_999_999_999_999 - i as i128,
        };
    }
    row
}

pub fn varied_rows(seed: u64, n: u64) -> Vec<LogRow> {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| varied_row(&mut rng, i)).collect()
}

/// A config for tests: short flush interval, text stored.
pub fn fast(mut cfg: LogConfig) -> LogConfig {
    cfg.flush_interval = Duration::from_millis(20);
    cfg.store_text = true;
    cfg
}

/// Polls `check` until it holds, failing after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Newest first by (time, id), as the store orders them.
pub fn newest_first(mut rows: Vec<LogRow>) -> Vec<LogRow> {
    rows.sort_by(|a, b| (b.time_ms, &b.id).cmp(&(a.time_ms, &a.id)));
    rows
}

/// Every row matching `filter` (its `limit` is the page size), page by page.
pub fn read_all(store: &mut dyn LogStore, filter: &LogFilter) -> Vec<LogRow> {
    let mut out: Vec<LogRow> = Vec::new();
    let mut f = filter.clone();
    loop {
        let page = store.query_logs(&f).unwrap();
        assert!(page.len() <= f.limit);
        let Some(last) = page.last() else { break };
        f.before = Some(LogCursor::after(last));
        let full = page.len() == f.limit;
        out.extend(page);
        if !full {
            break;
        }
    }
    out
}

/// What a store must hold after `rows` went through a writer with text on:
/// PostgreSQL turns NUL into U+FFFD.
pub fn as_stored(rows: &[LogRow], nul_to_replacement: bool) -> Vec<LogRow> {
    rows.iter()
        .cloned()
        .map(|mut r| {
            if nul_to_replacement {
                r.prompt_text = r.prompt_text.map(|t| t.replace('\0', "\u{fffd}"));
            }
            r
        })
        .collect()
}

/// Writes `rows` through a writer and shuts it down; all must be written.
pub fn write_through(cfg: &LogConfig, dir: &Path, rows: &[LogRow]) {
    let (handle, sender) = LogWriter::start(cfg, dir).unwrap();
    for r in rows {
        assert!(sender.try_log(r.clone()));
    }
    let stats = handle.shutdown();
    assert_eq!(stats.rows_dropped, 0);
    assert_eq!(stats.rows_spilled, 0, "{stats:?}");
    assert_eq!(stats.rows_written + stats.rows_duplicate, rows.len() as u64);
}

/// N rows in, the same N rows out, field by field, cost to the picodollar.
pub fn check_round_trip(cfg: &LogConfig, dir: &Path, nul_to_replacement: bool) {
    let rows = varied_rows(7, 3000);
    write_through(cfg, dir, &rows);
    let mut store = cfg.open_store(dir).unwrap();
    assert_eq!(store.count().unwrap(), 3000);
    let got = read_all(
        store.as_mut(),
        &LogFilter {
            limit: 1000,
            ..LogFilter::default()
        },
    );
    let want = newest_first(as_stored(&rows, nul_to_replacement));
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    let costs: i128 = got.iter().map(|r| r.cost_picodollars).sum();
    let avoided: i128 = got.iter().map(|r| r.avoided_picodollars).sum();
    assert!(got
        .iter()
        .any(|r| r.avoided_picodollars > i128::from(i64::MAX)));
    let totals = store.spend_totals(&GroupBy::Key, T0, T0 + DAY).unwrap();
    assert_eq!(
        totals.iter().map(|t| t.cost_picodollars).sum::<i128>(),
        costs
    );
    assert_eq!(
        totals.iter().map(|t| t.avoided_picodollars).sum::<i128>(),
        avoided
    );
    // Each key's avoided spend is the sum over its own rows.
    for t in &totals {
        let want: i128 = got
            .iter()
            .filter(|r| *r.key == *t.group)
            .map(|r| r.avoided_picodollars)
            .sum();
        assert_eq!(t.avoided_picodollars, want, "{}", t.group);
    }
    assert_eq!(totals.iter().map(|t| t.requests).sum::<u64>(), 3000);
}

/// Filters and paging agree with the same filter applied in Rust.
pub fn check_filters_and_paging(cfg: &LogConfig, dir: &Path, nul_to_replacement: bool) {
    let rows = varied_rows(11, 600);
    write_through(cfg, dir, &rows);
    let all = newest_first(as_stored(&rows, nul_to_replacement));
    let mut store = cfg.open_store(dir).unwrap();
    let filters = [
        LogFilter::default(),
        LogFilter {
            key: Some("k-a".into()),
            ..LogFilter::default()
        },
        LogFilter {
            team: Some("red".into()),
            ..LogFilter::default()
        },
        LogFilter {
            customer: Some("acme".into()),
            ..LogFilter::default()
        },
        LogFilter {
            provider: Some("anthropic".into()),
            ..LogFilter::default()
        },
        LogFilter {
            model: Some("gpt-4o".into()),
            status: Some(200),
            ..LogFilter::default()
        },
        LogFilter {
            status: Some(429),
            ..LogFilter::default()
        },
        LogFilter {
            from_ms: Some(T0 + 2500),
            to_ms: Some(T0 + 5000),
            ..LogFilter::default()
        },
        LogFilter {
            tag: Some(("feature".into(), "sum mary".into())),
            ..LogFilter::default()
        },
        LogFilter {
            key: Some("k-b".into()),
            tag: Some(("env".into(), "prod".into())),
            from_ms: Some(T0 + 1000),
            ..LogFilter::default()
        },
        LogFilter {
            model: Some("no such model".into()),
            ..LogFilter::default()
        },
    ];
    for base in filters {
        let want: Vec<LogRow> = all
            .iter()
            .filter(|r| {
                base.key.as_ref().is_none_or(|k| *r.key == **k)
                    && base
                        .team
                        .as_ref()
                        .is_none_or(|t| r.team.as_deref() == Some(t.as_str()))
                    && base
                        .customer
                        .as_ref()
                        .is_none_or(|c| r.customer.as_deref() == Some(c.as_str()))
                    && base.provider.as_ref().is_none_or(|p| *r.provider == **p)
                    && base.model.as_ref().is_none_or(|m| &r.model == m)
                    && base.status.is_none_or(|s| r.status == s)
                    && base.from_ms.is_none_or(|f| r.time_ms >= f)
                    && base.to_ms.is_none_or(|t| r.time_ms < t)
                    && base
                        .tag
                        .as_ref()
                        .is_none_or(|(k, v)| r.tags.iter().any(|(rk, rv)| rk == k && rv == v))
            })
            .cloned()
            .collect();
        // One page of the default size, then small pages across ties.
        let first = store.query_logs(&base).unwrap();
        assert_eq!(
            first,
            want.iter().take(base.limit).cloned().collect::<Vec<_>>(),
            "{base:?}"
        );
        let paged = read_all(
            store.as_mut(),
            &LogFilter {
                limit: 7,
                ..base.clone()
            },
        );
        assert_eq!(paged, want, "{base:?}");
    }
    // The limit is bounded.
    let huge = store
        .query_logs(&LogFilter {
            limit: usize::MAX,
            ..LogFilter::default()
        })
        .unwrap();
    assert_eq!(huge.len(), bursar::reqlog::LOG_QUERY_LIMIT_MAX.min(600));
    assert_eq!(
        store
            .query_logs(&LogFilter {
                limit: 0,
                ..LogFilter::default()
            })
            .unwrap(),
        vec![]
    );
}

/// A row for the spend checks; `spend` is (cost, avoided, prompt,
/// completion); a row with avoided spend is a cache hit.
fn spend_row(
    id: &str,
    time_ms: i64,
    model: &str,
    team: Option<&str>,
    feature: Option<&str>,
    (cost, avoided, prompt, completion): (i128, i128, u64, u64),
) -> LogRow {
    let mut rng = Rng::new(1);
    let mut r = varied_row(&mut rng, 0);
    r.id = id.into();
    r.time_ms = time_ms;
    r.model = model.into();
    r.team = team.map(Into::into);
    r.provider = "openai".into();
    r.key = "k-1".into();
    r.status = 200;
    r.cost_picodollars = cost;
    r.avoided_picodollars = avoided;
    r.cache_status = if avoided == 0 {
        CacheStatus::Miss
    } else {
        CacheStatus::Hit
    };
    r.prompt_tokens = prompt;
    r.completion_tokens = completion;
    r.tags = feature
        .map(|f| vec![("feature".to_string(), f.to_string())])
        .unwrap_or_default();
    r
}

/// Spend with `errors` checked (every `spend_row` answers 200) and
/// `cache_hits` checked against `requests`, then cleared, so the expected
/// values below need not repeat them (the rollup property tests check both).
trait Plain {
    fn plain(self) -> Self;
}

impl Plain for Vec<SeriesPoint> {
    fn plain(mut self) -> Self {
        for p in &mut self {
            assert_eq!(p.errors, 0, "{p:?}");
            assert!(p.cache_hits <= p.requests, "{p:?}");
            p.cache_hits = 0;
        }
        self
    }
}

impl Plain for Vec<SpendTotal> {
    fn plain(mut self) -> Self {
        for p in &mut self {
            assert_eq!(p.errors, 0, "{p:?}");
            assert!(p.cache_hits <= p.requests, "{p:?}");
            p.cache_hits = 0;
        }
        self
    }
}

fn point(
    b: i64,
    group: &str,
    requests: u64,
    (cost, avoided): (i128, i128),
    prompt: u64,
    completion: u64,
) -> SeriesPoint {
    SeriesPoint {
        bucket_start_ms: b,
        group: group.into(),
        requests,
        cost_picodollars: cost,
        avoided_picodollars: avoided,
        prompt_tokens: prompt,
        completion_tokens: completion,
        errors: 0,
        cache_hits: 0,
    }
}

fn total(
    group: &str,
    requests: u64,
    (cost, avoided): (i128, i128),
    prompt: u64,
    completion: u64,
) -> SpendTotal {
    SpendTotal {
        group: group.into(),
        requests,
        cost_picodollars: cost,
        avoided_picodollars: avoided,
        prompt_tokens: prompt,
        completion_tokens: completion,
        errors: 0,
        cache_hits: 0,
    }
}

/// Spend series and totals over hand-built rows with hand-computed sums,
/// including a group whose sum does not fit an i64; the spend cache hits
/// avoided is summed over the same rows.
pub fn check_series(cfg: &LogConfig, dir: &Path) {
    const BIG: i128 = 999_999_999_999_999_999_999; // > i64::MAX picodollars
    const HIT: i128 = 2_000_000_000_000; // $2 avoided
    let rows = vec![
        spend_row(
            "req_a",
            T0 + 10 * MINUTE,
            "m1",
            Some("a"),
            Some("search"),
            (1_000_000_000_001, 0, 10, 1),
        ),
        spend_row(
            "req_b",
            T0 + 50 * MINUTE + 59_999,
            "m1",
            Some("a"),
            Some("chat"),
            (2, HIT, 20, 2),
        ),
        spend_row(
            "req_c",
            T0 + 70 * MINUTE,
            "m2",
            None,
            None,
            (BIG, BIG - 1, 5, 5),
        ),
        spend_row(
            "req_c2",
            T0 + 80 * MINUTE,
            "m2",
            None,
            None,
            (BIG, BIG, 1, 0),
        ),
        spend_row(
            "req_d",
            T0 + DAY + 5 * MINUTE,
            "m1",
            Some("b"),
            Some("search"),
            (7, 3, 1, 1),
        ),
        spend_row(
            "req_early",
            T0 - 1,
            "m1",
            Some("a"),
            Some("search"),
            (100, 5, 100, 100),
        ),
        spend_row(
            "req_late",
            T0 + 2 * DAY,
            "m1",
            Some("a"),
            Some("search"),
            (100, 5, 100, 100),
        ),
    ];
    write_through(cfg, dir, &rows);
    let mut store = cfg.open_store(dir).unwrap();
    let (from, to) = (T0, T0 + 2 * DAY);
    assert_eq!(
        store
            .spend_series(&GroupBy::Model, Bucket::Hour, from, to)
            .unwrap()
            .plain(),
        vec![
            point(T0, "m1", 2, (1_000_000_000_003, HIT), 30, 3),
            point(T0 + HOUR, "m2", 2, (2 * BIG, 2 * BIG - 1), 6, 5),
            point(T0 + DAY, "m1", 1, (7, 3), 1, 1),
        ]
    );
    assert_eq!(
        store
            .spend_series(&GroupBy::Tag("feature".into()), Bucket::Day, from, to)
            .unwrap()
            .plain(),
        vec![
            point(T0, "", 2, (2 * BIG, 2 * BIG - 1), 6, 5),
            point(T0, "chat", 1, (2, HIT), 20, 2),
            point(T0, "search", 1, (1_000_000_000_001, 0), 10, 1),
            point(T0 + DAY, "search", 1, (7, 3), 1, 1),
        ]
    );
    assert_eq!(
        store
            .spend_series(&GroupBy::Provider, Bucket::Minute, T0, T0 + HOUR)
            .unwrap()
            .plain(),
        vec![
            point(T0 + 10 * MINUTE, "openai", 1, (1_000_000_000_001, 0), 10, 1),
            point(T0 + 50 * MINUTE, "openai", 1, (2, HIT), 20, 2),
        ]
    );
    assert_eq!(
        store
            .spend_totals(&GroupBy::Team, from, to)
            .unwrap()
            .plain(),
        vec![
            total("", 2, (2 * BIG, 2 * BIG - 1), 6, 5),
            total("a", 2, (1_000_000_000_003, HIT), 30, 3),
            total("b", 1, (7, 3), 1, 1),
        ]
    );
    assert_eq!(
        store
            .spend_totals(&GroupBy::Customer, T0 - DAY, T0 + 3 * DAY)
            .unwrap()
            .iter()
            .map(|t| t.requests)
            .sum::<u64>(),
        7
    );
    // The whole range: every row's avoided spend, the early and late ones
    // too, in one key's total.
    assert_eq!(
        store
            .spend_totals(&GroupBy::Key, T0 - DAY, T0 + 3 * DAY)
            .unwrap()
            .plain(),
        vec![total(
            "k-1",
            7,
            (2 * BIG + 1_000_000_000_210, HIT + 2 * BIG - 1 + 3 + 5 + 5),
            237,
            209
        )]
    );
    assert_eq!(
        store
            .spend_totals(&GroupBy::Key, T0 + 3 * DAY, T0 + 4 * DAY)
            .unwrap()
            .plain(),
        vec![]
    );
    // Every tag as key=value (rows without tags in no group), and only one
    // team's or customer's rows (the spend reports' queries).
    let team = |t: &str| bursar::reqlog::SpendFilter {
        team: Some(t.into()),
        ..Default::default()
    };
    assert_eq!(
        store
            .spend_totals(&GroupBy::Tags, from, to)
            .unwrap()
            .plain(),
        vec![
            total("feature=chat", 1, (2, HIT), 20, 2),
            total("feature=search", 2, (1_000_000_000_008, 3), 11, 2),
        ]
    );
    assert_eq!(
        store
            .spend_totals_where(&GroupBy::Tags, &team("a"), from, to)
            .unwrap()
            .plain(),
        vec![
            total("feature=chat", 1, (2, HIT), 20, 2),
            total("feature=search", 1, (1_000_000_000_001, 0), 10, 1),
        ]
    );
    assert_eq!(
        store
            .spend_series_where(&GroupBy::Model, &team("b"), Bucket::Day, from, to)
            .unwrap()
            .plain(),
        vec![point(T0 + DAY, "m1", 1, (7, 3), 1, 1)]
    );
    let nobody = bursar::reqlog::SpendFilter {
        customer: Some("nobody".into()),
        ..Default::default()
    };
    assert_eq!(
        store
            .spend_totals_where(&GroupBy::Key, &nobody, from, to)
            .unwrap()
            .plain(),
        vec![]
    );
    // One key's spend on one model (the series behind a key's budget on a
    // model), and a key that has none.
    let key_model = |key: &str, model: &str| bursar::reqlog::SpendFilter {
        key: Some(key.into()),
        model: Some(model.into()),
        ..Default::default()
    };
    assert_eq!(
        store
            .spend_totals_where(&GroupBy::Model, &key_model("k-1", "m2"), from, to)
            .unwrap()
            .plain(),
        vec![total("m2", 2, (2 * BIG, 2 * BIG - 1), 6, 5)]
    );
    assert_eq!(
        store
            .spend_totals_where(&GroupBy::Model, &key_model("k-2", "m2"), from, to)
            .unwrap()
            .plain(),
        vec![]
    );
}

/// Rows past `retention` and beyond `max_rows` are deleted by the writer.
pub fn check_retention(cfg: &LogConfig, dir: &Path) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut rows = varied_rows(3, 20);
    for (i, r) in rows.iter_mut().enumerate() {
        // Ten rows 3 days old, ten in the last minute.
        r.time_ms = if i < 10 {
            now - 3 * DAY + i as i64
        } else {
            now - 60_000 + i as i64
        };
    }
    write_through(cfg, dir, &rows);
    let mut aged = cfg.clone();
    aged.retention = Some(Duration::from_secs(86_400));
    let (handle, _sender) = LogWriter::start(&aged, dir).unwrap();
    let mut store = cfg.open_store(dir).unwrap();
    wait_until("age retention", Duration::from_secs(20), || {
        store.count().unwrap() == 10
    });
    drop(handle);
    let mut capped = cfg.clone();
    capped.max_rows = Some(3);
    let (handle, _sender) = LogWriter::start(&capped, dir).unwrap();
    wait_until("max_rows retention", Duration::from_secs(20), || {
        store.count().unwrap() == 3
    });
    drop(handle);
    let kept = read_all(store.as_mut(), &LogFilter::default());
    let newest: Vec<String> = newest_first(rows)
        .into_iter()
        .take(3)
        .map(|r| r.id)
        .collect();
    assert_eq!(kept.into_iter().map(|r| r.id).collect::<Vec<_>>(), newest);
}

fn spill_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("log-spill"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl") && !p.ends_with("rejected.jsonl"))
        .collect();
    files.sort();
    files
}

/// With the sink broken, rows land in the spill; after a restart with the
/// sink fixed they are replayed exactly once; replaying the same spill file
/// again (a crash before its delete) adds no duplicate.
pub fn check_spill_then_replay(
    broken: &LogConfig,
    good: &LogConfig,
    dir: &Path,
    fix: impl FnOnce(),
) {
    let rows = varied_rows(5, 500);
    let (handle, sender) = LogWriter::start(broken, dir).unwrap();
    for r in &rows {
        assert!(sender.try_log(r.clone()));
    }
    let stats = handle.shutdown();
    assert_eq!(stats.rows_spilled, 500, "{stats:?}");
    assert_eq!(stats.rows_written, 0);
    assert_eq!(stats.rows_dropped, 0);
    let files = spill_files(dir);
    assert!(!files.is_empty());
    let saved: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    fix();
    let (handle, _sender) = LogWriter::start(good, dir).unwrap();
    wait_until("replay", Duration::from_secs(20), || {
        handle.stats().rows_replayed == 500
    });
    let stats = handle.shutdown();
    assert_eq!(
        (stats.rows_written, stats.rows_duplicate),
        (500, 0),
        "{stats:?}"
    );
    assert!(spill_files(dir).is_empty(), "replayed files are deleted");
    assert_eq!(stats.spill_bytes, 0);
    let mut store = good.open_store(dir).unwrap();
    assert_eq!(store.count().unwrap(), 500);
    // The same file again: all duplicates, nothing added.
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).unwrap();
    }
    let (handle, _sender) = LogWriter::start(good, dir).unwrap();
    wait_until("second replay", Duration::from_secs(20), || {
        handle.stats().rows_replayed == 500
    });
    let stats = handle.shutdown();
    assert_eq!(
        (stats.rows_written, stats.rows_duplicate),
        (0, 500),
        "{stats:?}"
    );
    assert_eq!(store.count().unwrap(), 500);
}

/// Ids of the rows whose tag `k` is `v`, newest first.
pub fn ids_with_tag(store: &mut dyn LogStore, k: &str, v: &str) -> Vec<String> {
    store
        .query_logs(&LogFilter {
            tag: Some((k.into(), v.into())),
            ..LogFilter::default()
        })
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// Requests per value of tag `k` on `T0`'s day, as spend totals group them
/// ("" for rows without the tag), bytewise order.
pub fn requests_by_tag(store: &mut dyn LogStore, k: &str) -> Vec<(String, u64)> {
    store
        .spend_totals(&GroupBy::Tag(k.into()), T0, T0 + DAY)
        .unwrap()
        .into_iter()
        .map(|t| (t.group, t.requests))
        .collect()
}

/// Tag keys that would break a JSON path spliced into SQL (quotes, dots,
/// `$`, brackets, a backslash, a tab) and values with quotes and backslashes: a tag filter and
/// a grouping by tag match them exactly, and a key that is a prefix or a
/// path of another matches nothing else.
pub fn check_awkward_tags(cfg: &LogConfig, dir: &Path) {
    let tag = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut rows = varied_rows(41, 3);
    for (i, r) in rows.iter_mut().enumerate() {
        r.time_ms = T0 + i as i64;
    }
    rows[0].tags = vec![tag("a\"b", "x"), tag("a.b", "1"), tag("it's", "q'uote")];
    rows[1].tags = vec![tag("$", "y\"z\\"), tag("[0]", "é"), tag("a.b", "2")];
    rows[2].tags = vec![tag("a\\b", "bs"), tag("t\tk", "tab")];
    write_through(cfg, dir, &rows);
    let mut store = cfg.open_store(dir).unwrap();
    let ids = ids_with_tag;
    let id = |i: usize| vec![rows[i].id.clone()];
    assert_eq!(ids(store.as_mut(), "a\"b", "x"), id(0));
    assert_eq!(ids(store.as_mut(), "it's", "q'uote"), id(0));
    assert_eq!(ids(store.as_mut(), "a.b", "2"), id(1));
    assert_eq!(ids(store.as_mut(), "$", "y\"z\\"), id(1));
    assert_eq!(ids(store.as_mut(), "[0]", "é"), id(1));
    assert_eq!(ids(store.as_mut(), "a\\b", "bs"), id(2));
    assert_eq!(ids(store.as_mut(), "t\tk", "tab"), id(2));
    for (k, v) in [
        ("a", "x"),
        ("b", "x"),
        ("a", "1"),
        ("$.a", "1"),
        ("", ""),
        ("a", "bs"),
        ("a\\", "bs"),
    ] {
        assert!(ids(store.as_mut(), k, v).is_empty(), "{k:?}={v:?}");
    }
    let groups = requests_by_tag;
    let g = |v: &str, n: u64| (v.to_string(), n);
    assert_eq!(
        groups(store.as_mut(), "a.b"),
        [g("", 1), g("1", 1), g("2", 1)]
    );
    assert_eq!(groups(store.as_mut(), "a\"b"), [g("", 2), g("x", 1)]);
    assert_eq!(groups(store.as_mut(), "$"), [g("", 2), g("y\"z\\", 1)]);
    assert_eq!(groups(store.as_mut(), "$.a"), [g("", 3)]);
    assert_eq!(groups(store.as_mut(), "a\\b"), [g("", 2), g("bs", 1)]);
}

/// Rows for the rollup checks: `varied_row`s spread over three days around
/// `T0`, many near minute, hour and day boundaries, and one in eight over the
/// two weeks before them (so ranges hold whole weeks and quarter-days).
pub fn rollup_rows(seed: u64, n: u64) -> Vec<LogRow> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let mut r = varied_row(&mut rng, i);
            let base = T0 - DAY + rng.below(3) as i64 * DAY;
            let edge = [MINUTE, HOUR, DAY][rng.below(3) as usize];
            r.time_ms = match rng.below(3) {
                // Near a boundary of a minute, an hour or a day.
                0 => base + rng.below(24) as i64 * edge % DAY - 2_000 + rng.below(4_000) as i64,
                _ => base + rng.below(DAY as u64) as i64,
            };
            if rng.below(8) == 0 {
                r.time_ms = T0 - 15 * DAY + rng.below(14 * DAY as u64) as i64;
            }
            if rng.below(5) == 0 {
                r.customer = None;
            }
            r.key = ["k-a", "k-b", "k-c", "k-d"][rng.below(4) as usize].into();
            if rng.below(4) == 0 {
                r.tags.push(("user".into(), format!("u{}", rng.below(20))));
                r.tags.sort();
            }
            r
        })
        .collect()
}

/// A range near the rows: sometimes aligned, sometimes not, sometimes empty.
fn rollup_range(rng: &mut Rng) -> (i64, i64) {
    // One range in four may start in the weeks before.
    let span = [5, 5, 5, 18][rng.below(4) as usize] * DAY;
    let t = |rng: &mut Rng| {
        let unit = [1, 1_000, MINUTE, HOUR, 6 * HOUR, DAY][rng.below(6) as usize];
        T0 + 3 * DAY - span + (rng.below(span as u64 / unit as u64) as i64) * unit
    };
    let (a, b) = (t(rng), t(rng));
    (a.min(b), a.max(b) + [0, 1, 7][rng.below(3) as usize])
}

/// Spend from the rollups equals a scan of the raw rows, for random ranges,
/// buckets, groupings and filters: while the rollup mark is in the middle of
/// the rows (batches in random time order, so later batches hold rows below
/// the mark that their inserts add, and rows above it the builds sum), after
/// a replay of rows already stored (which must not count twice), and once
/// every row is built.
pub fn check_rollups_match_scan(cfg: &LogConfig, dir: &Path, seed: u64) {
    let mut store = cfg.open_store(dir).unwrap();
    let rows = rollup_rows(seed, 1_500);
    let mut mark = T0 - DAY;
    for chunk in rows.chunks(200) {
        store.insert_batch(chunk, &mut || {}).unwrap();
        mark += 7 * HOUR + 13 * MINUTE;
        while store.roll_up(mark).unwrap() {}
    }
    // A replay: the same rows again, plus two new ones.
    let mut again = rows[100..400].to_vec();
    let mut extra = rollup_rows(seed + 1, 2);
    for (i, r) in extra.iter_mut().enumerate() {
        r.id = format!("req_extra{i}");
    }
    again.extend(extra);
    assert_eq!(store.insert_batch(&again, &mut || {}).unwrap(), 2);
    let mut rng = Rng::new(seed ^ 0x5eed);
    compare_rollups_with_scan(store.as_mut(), &mut rng, 200);
    while store.roll_up(T0 + 3 * DAY).unwrap() {}
    compare_rollups_with_scan(store.as_mut(), &mut rng, 100);
    // The whole range's total by every grouping that partitions it.
    let all = store
        .spend_totals(&GroupBy::None, T0 - 16 * DAY, T0 + 3 * DAY)
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].requests, 1_502);
    let hits = rows
        .iter()
        .filter(|r| matches!(r.cache_status, CacheStatus::Hit | CacheStatus::SemanticHit))
        .count() as u64;
    let errors = rows.iter().filter(|r| r.status >= 400).count() as u64;
    let extra_hits = again[again.len() - 2..]
        .iter()
        .filter(|r| matches!(r.cache_status, CacheStatus::Hit | CacheStatus::SemanticHit))
        .count() as u64;
    let extra_errors = again[again.len() - 2..]
        .iter()
        .filter(|r| r.status >= 400)
        .count() as u64;
    assert_eq!(all[0].cache_hits, hits + extra_hits);
    assert_eq!(all[0].errors, errors + extra_errors);
}

/// `n` random spend queries answered from the rollups and by a scan.
pub fn compare_rollups_with_scan(
    store: &mut dyn bursar::reqlog::LogStore,
    rng: &mut Rng,
    n: usize,
) {
    use bursar::reqlog::SpendFilter;
    let pick =
        |rng: &mut Rng, list: &[&str]| list[rng.below(list.len() as u64) as usize].to_string();
    let mut compared = 0;
    let mut nonempty = 0;
    for _ in 0..n {
        let group_by = match rng.below(9) {
            0 => GroupBy::Key,
            1 => GroupBy::Team,
            2 => GroupBy::Customer,
            3 => GroupBy::Provider,
            4 => GroupBy::Model,
            5 => GroupBy::Tag(pick(rng, &["env", "feature", "user", "none"])),
            6 => GroupBy::Tags,
            _ => GroupBy::None,
        };
        let mut filter = SpendFilter::default();
        if rng.below(4) == 0 {
            filter.key = Some(pick(rng, &["k-a", "k-b", "k-zz"]));
        }
        if rng.below(5) == 0 {
            filter.team = Some(pick(rng, &["red", "blue", ""]));
        }
        if rng.below(6) == 0 {
            filter.customer = Some(pick(rng, &["acme", "globex"]));
        }
        if rng.below(5) == 0 {
            filter.model = Some(pick(rng, &["gpt-4o", "claude"]));
        }
        if rng.below(5) == 0 {
            filter.provider = Some(pick(rng, &["openai", "anthropic"]));
        }
        if rng.below(4) == 0 {
            filter.tag = Some(match rng.below(3) {
                0 => ("env".into(), pick(rng, &["prod", "dev"])),
                1 => ("feature".into(), pick(rng, &["search", "sum mary"])),
                _ => ("user".into(), format!("u{}", rng.below(20))),
            });
        }
        let (from, to) = rollup_range(rng);
        let bucket = match rng.below(4) {
            0 => None,
            1 => Some(Bucket::Minute),
            2 => Some(Bucket::Hour),
            _ => Some(Bucket::Day),
        };
        // A minute series over days is too many points for either answer.
        if bucket == Some(Bucket::Minute) && to - from > 6 * HOUR {
            continue;
        }
        let what = format!("{group_by:?} {filter:?} {bucket:?} [{from}, {to})");
        let scan = store
            .spend_scan(&group_by, &filter, bucket, from, to)
            .unwrap_or_else(|e| panic!("scan {what}: {e}"));
        match bucket {
            Some(b) => {
                let ours = store
                    .spend_series_where(&group_by, &filter, b, from, to)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(ours, scan, "{what}");
                // Its top groups, read group by group, equal the whole
                // series folded.
                let top = 1 + rng.below(3) as usize;
                let folded =
                    bursar::reqlog::top::fold_beyond_top(scan.clone(), top, "(other)").unwrap();
                let ours = bursar::reqlog::top::spend_series_top(
                    store, &group_by, &filter, b, from, to, top, "(other)",
                )
                .unwrap_or_else(|e| panic!("top {top} {what}: {e}"));
                assert_eq!(ours, folded, "top {top} {what}");
                // Some groups of an entity grouping of the whole log read
                // together (the chart's kept groups) equal the scan's points
                // of those groups.
                if filter == SpendFilter::default() {
                    let mut names: Vec<String> = scan.iter().map(|p| p.group.clone()).collect();
                    names.sort();
                    names.dedup();
                    names.retain(|_| rng.below(2) == 0);
                    names.push("no-such-group".into());
                    let ours = store
                        .spend_series_of_groups(&group_by, &names, b, from, to)
                        .unwrap_or_else(|e| panic!("groups {names:?} {what}: {e}"));
                    let entity = matches!(
                        group_by,
                        GroupBy::Key
                            | GroupBy::Team
                            | GroupBy::Customer
                            | GroupBy::Provider
                            | GroupBy::Model
                    );
                    let expected: Option<Vec<SeriesPoint>> = entity.then(|| {
                        scan.iter()
                            .filter(|p| names.contains(&p.group))
                            .cloned()
                            .collect()
                    });
                    assert_eq!(ours, expected, "groups {names:?} {what}");
                }
            }
            None => {
                let ours = store
                    .spend_totals_where(&group_by, &filter, from, to)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let scan: Vec<SpendTotal> = scan
                    .iter()
                    .map(|p| SpendTotal {
                        group: p.group.clone(),
                        requests: p.requests,
                        cost_picodollars: p.cost_picodollars,
                        avoided_picodollars: p.avoided_picodollars,
                        prompt_tokens: p.prompt_tokens,
                        completion_tokens: p.completion_tokens,
                        errors: p.errors,
                        cache_hits: p.cache_hits,
                    })
                    .collect();
                assert_eq!(ours, scan, "{what}");
            }
        }
        compared += 1;
        nonempty += usize::from(!scan.is_empty());
    }
    // The comparisons were not all of empty answers.
    assert!(
        compared > n * 2 / 3 && nonempty > compared / 2,
        "{compared} {nonempty}"
    );
    // The top groups of every tag by cost (the keys whose bound cannot reach
    // them skipped) are the scan's first ones, and each key's bound holds.
    let mut pruned = 0;
    for _ in 0..n / 4 {
        let (from, to) = rollup_range(rng);
        let what = format!("every tag [{from}, {to})");
        let mut scan = store
            .spend_scan(&GroupBy::Tags, &SpendFilter::default(), None, from, to)
            .unwrap_or_else(|e| panic!("scan {what}: {e}"));
        scan.sort_by(|a, b| {
            b.cost_picodollars
                .cmp(&a.cost_picodollars)
                .then_with(|| a.group.cmp(&b.group))
        });
        let bounds = store.spend_tag_bounds(from, to).unwrap();
        for p in &scan {
            let key = p.group.split_once('=').unwrap().0;
            let bound = bounds.iter().find(|(k, _)| k == key).map(|(_, b)| *b);
            assert!(
                bound.is_some_and(|b| b >= p.cost_picodollars),
                "{what}: {} above its key's bound {bound:?}",
                p.group
            );
        }
        let top = 1 + rng.below(4) as usize;
        let ours = bursar::reqlog::top::spend_totals_top(
            store,
            &GroupBy::Tags,
            &SpendFilter::default(),
            from,
            to,
            top,
        )
        .unwrap_or_else(|e| panic!("top {top} {what}: {e}"));
        let want: Vec<(String, u64, i128)> = scan
            .iter()
            .take(top)
            .map(|p| (p.group.clone(), p.requests, p.cost_picodollars))
            .collect();
        let got: Vec<(String, u64, i128)> = ours
            .iter()
            .map(|t| (t.group.clone(), t.requests, t.cost_picodollars))
            .collect();
        assert_eq!(got, want, "top {top} {what}");
        // Whether a key could be skipped: the user tag's bound below the
        // n-th group.
        let user = bounds.iter().find(|(k, _)| k == "user").map(|(_, b)| *b);
        if scan.len() >= top && user.is_some_and(|b| b < scan[top - 1].cost_picodollars) {
            pruned += 1;
        }
    }
    assert!(pruned > 0, "no ranking could skip a key");
}

/// `query_log_page` pages through a rare status and a tag across the scan
/// bound, returning exactly the rows `query_logs` finds, and `log_by_id`
/// finds a row.
pub fn check_log_pages(cfg: &LogConfig, dir: &Path) {
    use bursar::reqlog::LOG_QUERY_SCAN_ROWS_MAX;
    let mut store = cfg.open_store(dir).unwrap();
    let n = 2 * LOG_QUERY_SCAN_ROWS_MAX as u64 + 500;
    let mut rng = Rng::new(3);
    let rows: Vec<LogRow> = (0..n)
        .map(|i| {
            let mut r = varied_row(&mut rng, i);
            r.time_ms = T0 + i as i64 * 10;
            r.prompt_text = None;
            r.completion_text = None;
            if i % 9_000 == 17 {
                r.status = 418;
                r.tags = vec![("rare".into(), "yes".into())];
            }
            r
        })
        .collect();
    for chunk in rows.chunks(5_000) {
        store.insert_batch(chunk, &mut || {}).unwrap();
    }
    for base in [
        LogFilter {
            status: Some(418),
            limit: 3,
            ..LogFilter::default()
        },
        LogFilter {
            tag: Some(("rare".into(), "yes".into())),
            limit: 4,
            ..LogFilter::default()
        },
        LogFilter {
            model: Some("claude".into()),
            from_ms: Some(T0 + (n as i64 - 2_000) * 10),
            limit: 70,
            ..LogFilter::default()
        },
    ] {
        let oracle = store
            .query_logs(&LogFilter {
                limit: usize::MAX,
                ..base.clone()
            })
            .unwrap();
        // The oracle is one page: it must hold every match.
        assert!(
            oracle.len() < bursar::reqlog::LOG_QUERY_LIMIT_MAX,
            "{base:?}"
        );
        let mut got = Vec::new();
        let mut f = base.clone();
        let mut pages = 0;
        let mut bounded = 0;
        loop {
            let page = store.query_log_page(&f).unwrap();
            assert!(page.rows.len() <= base.limit);
            pages += 1;
            bounded += usize::from(page.scan_bounded);
            got.extend(page.rows);
            match page.next {
                Some(c) => f.before = Some(c),
                None => break,
            }
            assert!(pages < 1_000, "paging does not end");
        }
        let ids = |v: &[LogRow]| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(got.len(), oracle.len(), "{base:?}");
        assert!(ids(&got) == ids(&oracle), "{base:?}");
        if base.model.is_none() {
            // A rare value: some pages stopped at the scan bound.
            assert!(bounded > 0, "{base:?}");
        }
    }
    let id = &rows[1234].id;
    let found = store.log_by_id(id).unwrap().unwrap();
    assert_eq!(&found.id, id);
    assert_eq!(found.time_ms, rows[1234].time_ms);
    assert!(store.log_by_id("req_none").unwrap().is_none());
}
