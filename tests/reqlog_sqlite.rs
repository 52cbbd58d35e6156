//! The request log writer into a real SQLite file: round trip, queries,
//! series, retention, and the spill when the file is unusable or locked.

mod reqlog_common;

use std::time::Duration;

use bursar::reqlog::{Bucket, GroupBy};
use bursar::reqlog::{
    LogConfig, LogFilter, LogWriter, LOG_BOOST_ROWS, LOG_SQLITE_CHECKPOINT_BYTES, LOG_SQLITE_FILE,
    LOG_SQLITE_WAL_BYTES_MAX,
};
use reqlog_common::*;

fn sqlite() -> LogConfig {
    fast(LogConfig::default())
}

#[test]
fn rows_round_trip_exactly() {
    let dir = TempDir::new("round-trip");
    check_round_trip(&sqlite(), dir.path(), false);
}

#[test]
fn filters_and_paging_match_an_oracle() {
    let dir = TempDir::new("filters");
    check_filters_and_paging(&sqlite(), dir.path(), false);
}

#[test]
fn series_and_totals_are_exact() {
    let dir = TempDir::new("series");
    check_series(&sqlite(), dir.path());
}

#[test]
fn retention_deletes_old_rows() {
    let dir = TempDir::new("retention");
    check_retention(&sqlite(), dir.path());
}

#[test]
fn tags_with_awkward_keys_filter_and_group_exactly() {
    let dir = TempDir::new("awkward-tags");
    check_awkward_tags(&sqlite(), dir.path());
}

#[test]
fn the_file_is_wal_with_the_schema_version() {
    let dir = TempDir::new("schema");
    write_through(&sqlite(), dir.path(), &varied_rows(1, 3));
    let conn = rusqlite::Connection::open(dir.path().join(LOG_SQLITE_FILE)).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(page_size, bursar::reqlog::LOG_SQLITE_PAGE_BYTES);
    let version: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, bursar::reqlog::store::SCHEMA_VERSION);
    // Tags live in `requests.tags` only.
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        tables,
        [
            "requests",
            "rollup_dims",
            "rollup_marks",
            "rollups",
            "schema_version"
        ]
    );
    // Costs are stored as exact decimal text.
    let cost: String = conn
        .query_row(
            "SELECT cost_picodollars FROM requests ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(cost.parse::<i128>().is_ok(), "{cost}");
    // So is the spend a cache hit avoided.
    let avoided: Vec<String> = conn
        .prepare("SELECT avoided_picodollars FROM requests")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(avoided.len(), 3);
    assert!(
        avoided.iter().all(|a| a.parse::<i128>().is_ok()),
        "{avoided:?}"
    );
    // A newer schema is refused at start rather than misread.
    conn.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    let err = LogWriter::start(&sqlite(), dir.path()).err().unwrap();
    assert!(err.to_string().contains("newer"), "{err}");
}

/// The version 1 schema, as bursar created it before tags moved into
/// `requests.tags` only.
const SCHEMA_V1: &str = "
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES (1);
CREATE TABLE requests (
    id TEXT NOT NULL UNIQUE,
    time_ms INTEGER NOT NULL,
    key_name TEXT NOT NULL,
    team TEXT,
    customer TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_picodollars TEXT NOT NULL,
    price_version TEXT NOT NULL,
    estimated INTEGER NOT NULL,
    ttfb_us INTEGER,
    total_us INTEGER NOT NULL,
    cache_status TEXT NOT NULL,
    stream INTEGER NOT NULL,
    tags TEXT NOT NULL,
    prompt_text TEXT,
    completion_text TEXT
);
CREATE INDEX requests_time ON requests (time_ms, id);
CREATE INDEX requests_key_time ON requests (key_name, time_ms);
CREATE TABLE request_tags (
    request_id TEXT NOT NULL,
    k TEXT NOT NULL,
    v TEXT NOT NULL,
    PRIMARY KEY (request_id, k)
) WITHOUT ROWID;
CREATE INDEX request_tags_kv ON request_tags (k, v);
INSERT INTO requests VALUES ('req_v1', 1795737600000, 'k-old', 'red', NULL, 'openai',
    'gpt-4o', 'chat/completions', 200, 10, 2, 0, 0, 0, '123456789012345678901234', '2026-11-01',
    0, 1500, 90000, 'miss', 1, '{\"env\":\"prod\",\"feature\":\"search\"}', NULL, NULL);
INSERT INTO request_tags VALUES ('req_v1', 'env', 'prod'), ('req_v1', 'feature', 'search');
";

#[test]
fn a_version_1_file_is_migrated_and_its_tags_still_query() {
    let dir = TempDir::new("migrate-v1");
    let path = dir.path().join(LOG_SQLITE_FILE);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
    }
    // Opening migrates to the current version (through 2 and 3):
    // `request_tags` and its index gone.
    let cfg = sqlite();
    let mut store = cfg.open_store(dir.path()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, bursar::reqlog::store::SCHEMA_VERSION);
    let left: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE name LIKE 'request_tags%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
    // The file keeps the page size it was made with.
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(page_size, 4096);
    // The old row reads back whole and is found by its tags.
    let old = store.query_logs(&LogFilter::default()).unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].id, "req_v1");
    assert_eq!(old[0].cost_picodollars, 123_456_789_012_345_678_901_234);
    assert_eq!(old[0].avoided_picodollars, 0);
    assert_eq!(
        old[0].tags,
        vec![
            ("env".to_string(), "prod".to_string()),
            ("feature".to_string(), "search".to_string())
        ]
    );
    assert_eq!(
        ids_with_tag(store.as_mut(), "feature", "search"),
        ["req_v1"]
    );
    assert!(ids_with_tag(store.as_mut(), "feature", "chat").is_empty());
    // New rows go in beside it, and a tag groups old and new alike.
    let mut new_rows = varied_rows(31, 2);
    new_rows[0].time_ms = T0 + 1;
    new_rows[0].tags = vec![("feature".into(), "search".into())];
    new_rows[1].time_ms = T0 + 2;
    new_rows[1].tags = vec![];
    write_through(&cfg, dir.path(), &new_rows);
    assert_eq!(
        ids_with_tag(store.as_mut(), "feature", "search"),
        [new_rows[0].id.as_str(), "req_v1"]
    );
    assert_eq!(
        requests_by_tag(store.as_mut(), "feature"),
        [("".to_string(), 1), ("search".to_string(), 2)]
    );
    // Opening again changes nothing.
    drop(store);
    let mut store = cfg.open_store(dir.path()).unwrap();
    assert_eq!(store.count().unwrap(), 3);
}

/// The version 2 schema, as bursar created it before the spend a cache hit
/// avoided was kept, with two rows (one a cache hit, from before the column).
const SCHEMA_V2: &str = "
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES (2);
CREATE TABLE requests (
    id TEXT NOT NULL UNIQUE,
    time_ms INTEGER NOT NULL,
    key_name TEXT NOT NULL,
    team TEXT,
    customer TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_picodollars TEXT NOT NULL,
    price_version TEXT NOT NULL,
    estimated INTEGER NOT NULL,
    ttfb_us INTEGER,
    total_us INTEGER NOT NULL,
    cache_status TEXT NOT NULL,
    stream INTEGER NOT NULL,
    tags TEXT NOT NULL,
    prompt_text TEXT,
    completion_text TEXT
);
CREATE INDEX requests_time ON requests (time_ms, id);
CREATE INDEX requests_key_time ON requests (key_name, time_ms);
INSERT INTO requests VALUES ('req_v2a', 1795737600000, 'k-old', 'red', NULL, 'openai',
    'gpt-4o', 'chat/completions', 200, 10, 2, 0, 0, 0, '123456789012345678901234', '2026-11-01',
    0, 1500, 90000, 'miss', 1, '{\"env\":\"prod\"}', NULL, NULL);
INSERT INTO requests VALUES ('req_v2b', 1795737600001, 'k-old', 'red', NULL, 'openai',
    'gpt-4o', 'chat/completions', 200, 10, 2, 0, 0, 0, '0', '2026-11-01',
    0, 100, 200, 'hit', 0, '{}', NULL, NULL);
";

#[test]
fn a_version_2_file_gains_avoided_spend_and_its_rows_read_zero() {
    let dir = TempDir::new("migrate-v2");
    let path = dir.path().join(LOG_SQLITE_FILE);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V2).unwrap();
    }
    let cfg = sqlite();
    let mut store = cfg.open_store(dir.path()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, bursar::reqlog::store::SCHEMA_VERSION);
    assert_eq!(version, bursar::reqlog::store::SCHEMA_VERSION);
    // The column is exact decimal text, '0' in the old rows.
    let (kind, not_null, default): (String, bool, String) = conn
        .query_row(
            "SELECT type, \"notnull\", dflt_value FROM pragma_table_info('requests') \
             WHERE name = 'avoided_picodollars'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (kind.as_str(), not_null, default.as_str()),
        ("TEXT", true, "'0'")
    );
    let stored: Vec<String> = conn
        .prepare("SELECT avoided_picodollars FROM requests ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored, ["0", "0"]);
    // The old rows read back whole, avoiding nothing.
    let old = store.query_logs(&LogFilter::default()).unwrap();
    assert_eq!(
        old.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["req_v2b", "req_v2a"]
    );
    assert!(old.iter().all(|r| r.avoided_picodollars == 0));
    assert_eq!(old[1].cost_picodollars, 123_456_789_012_345_678_901_234);
    assert_eq!(old[0].cache_status, bursar::reqlog::CacheStatus::Hit);
    // A new hit goes in beside them; the sums cover old and new rows.
    let mut new_rows = varied_rows(32, 1);
    new_rows[0].time_ms = T0 + 2;
    new_rows[0].key = "k-old".into();
    new_rows[0].cache_status = bursar::reqlog::CacheStatus::Hit;
    new_rows[0].cost_picodollars = 0;
    new_rows[0].avoided_picodollars = 123_456_789_012_345_678_901_234;
    write_through(&cfg, dir.path(), &new_rows);
    let got = store
        .query_logs(&LogFilter {
            limit: 1,
            ..LogFilter::default()
        })
        .unwrap();
    assert_eq!(got, new_rows);
    let totals = store
        .spend_totals(&bursar::reqlog::GroupBy::Key, T0, T0 + DAY)
        .unwrap();
    assert_eq!(totals.len(), 1);
    assert_eq!(totals[0].requests, 3);
    assert_eq!(totals[0].cost_picodollars, 123_456_789_012_345_678_901_234);
    assert_eq!(
        totals[0].avoided_picodollars,
        123_456_789_012_345_678_901_234
    );
    let series = store
        .spend_series(
            &bursar::reqlog::GroupBy::Key,
            bursar::reqlog::Bucket::Minute,
            T0,
            T0 + DAY,
        )
        .unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(
        (series[0].cost_picodollars, series[0].avoided_picodollars),
        (
            123_456_789_012_345_678_901_234,
            123_456_789_012_345_678_901_234
        )
    );
    // Opening again changes nothing.
    drop(store);
    let mut store = cfg.open_store(dir.path()).unwrap();
    assert_eq!(store.count().unwrap(), 3);
}

#[test]
fn text_is_not_stored_unless_enabled() {
    let dir = TempDir::new("no-text");
    let mut cfg = sqlite();
    cfg.store_text = false;
    write_through(&cfg, dir.path(), &varied_rows(2, 50));
    let mut store = cfg.open_store(dir.path()).unwrap();
    let rows = store.query_logs(&LogFilter::default()).unwrap();
    assert_eq!(rows.len(), 50);
    assert!(rows
        .iter()
        .all(|r| r.prompt_text.is_none() && r.completion_text.is_none()));
}

#[test]
fn spilled_rows_are_replayed_once_after_a_restart() {
    let dir = TempDir::new("spill-restart");
    // A directory where the database file should be: the sink cannot open.
    let db = dir.path().join(LOG_SQLITE_FILE);
    std::fs::create_dir(&db).unwrap();
    let cfg = sqlite();
    check_spill_then_replay(&cfg, &cfg, dir.path(), || std::fs::remove_dir(&db).unwrap());
}

#[test]
fn a_locked_database_spills_and_recovers_while_running() {
    let dir = TempDir::new("locked");
    let cfg = sqlite();
    let (handle, sender) = LogWriter::start(&cfg, dir.path()).unwrap();
    // Another connection holds the write lock; the writer's writes time out.
    let lock = rusqlite::Connection::open(dir.path().join(LOG_SQLITE_FILE)).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let rows = varied_rows(9, 2000);
    for r in &rows[..1000] {
        assert!(sender.try_log(r.clone()));
    }
    wait_until("rows to spill", Duration::from_secs(20), || {
        handle.stats().rows_spilled == 1000
    });
    assert!(handle.stats().sink_down);
    lock.execute_batch("COMMIT").unwrap();
    for r in &rows[1000..] {
        assert!(sender.try_log(r.clone()));
    }
    wait_until("replay and new rows", Duration::from_secs(30), || {
        handle.stats().rows_written == 2000
    });
    let stats = handle.shutdown();
    // Rows that came while the sink was still in its backoff were spilled
    // too; whatever was spilled was replayed, once.
    assert!(stats.rows_spilled >= 1000, "{stats:?}");
    assert_eq!(stats.rows_replayed, stats.rows_spilled, "{stats:?}");
    assert_eq!(stats.spill_bytes, 0);
    assert!(!stats.sink_down);
    assert_eq!(stats.rows_dropped, 0);
    assert_eq!(stats.rows_duplicate, 0);
    assert!(stats.write_errors >= 1);
    let mut store = cfg.open_store(dir.path()).unwrap();
    let got = read_all(
        store.as_mut(),
        &LogFilter {
            limit: 1000,
            ..LogFilter::default()
        },
    );
    assert_eq!(got, newest_first(rows));
}

#[test]
fn rows_queued_at_shutdown_are_all_written() {
    let dir = TempDir::new("shutdown");
    let mut cfg = sqlite();
    // A long interval: nothing is flushed by time before the shutdown.
    cfg.flush_interval = Duration::from_secs(10);
    let (handle, sender) = LogWriter::start(&cfg, dir.path()).unwrap();
    let rows = varied_rows(4, 10_000);
    for r in &rows {
        assert!(sender.try_log(r.clone()));
    }
    let stats = handle.shutdown();
    assert_eq!(stats.rows_written, 10_000, "{stats:?}");
    // A sender outliving the writer counts what it cannot deliver.
    assert!(!sender.try_log(rows[0].clone()));
    assert_eq!(sender.stats().rows_dropped, 1);
    assert_eq!(cfg.open_store(dir.path()).unwrap().count().unwrap(), 10_000);
}

#[test]
fn a_writer_behind_leaves_the_idle_class_and_returns_when_caught_up() {
    let dir = TempDir::new("writer-class");
    let mut cfg = sqlite();
    // Small transactions: a tight loop of sends outruns them, so the queue
    // crosses LOG_BOOST_ROWS whatever the machine, and the sender that
    // crosses it moves the writer to the normal class.
    cfg.batch_max = 8;
    let n = (LOG_BOOST_ROWS + 4_000) as u64;
    let (handle, sender) = LogWriter::start(&cfg, dir.path()).unwrap();
    let reversible = bursar::sched::idle_class_is_reversible();
    if reversible.is_ok() {
        wait_until(
            "the writer in the idle class",
            Duration::from_secs(5),
            || handle.stats().writer_idle,
        );
    }
    for r in varied_rows(6, n) {
        assert!(sender.try_log(r));
    }
    wait_until("every row written", Duration::from_secs(120), || {
        handle.stats().rows_written == n
    });
    let stats = match reversible {
        Ok(()) => {
            wait_until(
                "the writer back in the idle class",
                Duration::from_secs(5),
                || handle.stats().writer_idle,
            );
            let stats = handle.stats();
            assert!(stats.writer_boosts >= 1, "{stats:?}");
            stats
        }
        Err(why) => {
            // Without the right to leave the idle class the writer never
            // enters it.
            eprintln!("the idle class is not reversible here ({why}): normal priority throughout");
            let stats = handle.stats();
            assert!(!stats.writer_idle && stats.writer_boosts == 0, "{stats:?}");
            stats
        }
    };
    assert_eq!(stats.rows_dropped, 0, "{stats:?}");
    assert_eq!(handle.shutdown().rows_written, n);
}

/// Writes `batches` batches of 512 rows straight into the store, calling
/// `checkpoint_if_due` after each when `checkpoint` (as the writer does
/// between batches); returns the largest WAL file seen. Ids and times rise
/// as a gateway's do, so a batch dirties few pages.
fn wal_high_water(dir: &std::path::Path, batches: u64, checkpoint: bool) -> u64 {
    let mut store = sqlite().open_store(dir).unwrap();
    let wal = dir.join(format!("{LOG_SQLITE_FILE}-wal"));
    let mut high = 0;
    for b in 0..batches {
        let mut rows = varied_rows(100 + b, 512);
        for (i, row) in rows.iter_mut().enumerate() {
            let n = b * 512 + i as u64;
            row.id = format!("req_{n:028x}");
            row.time_ms = 1_800_000_000_000 + n as i64;
        }
        assert_eq!(store.insert_batch(&rows, &mut || {}).unwrap(), 512);
        if checkpoint {
            store.checkpoint_if_due().unwrap();
        }
        high = high.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    high
}

#[test]
fn the_wal_is_checkpointed_between_batches_and_bounded_without() {
    // The SQLite file is checkpointed by the writer between batches (in
    // the idle class), never inside a commit, unless the WAL reaches its
    // hard bound. Enough batches to pass the hard bound several times.
    let slack = 4 * 1024 * 1024; // a batch's frames and the WAL header
    let dir = TempDir::new("wal-checkpointed");
    let high = wal_high_water(dir.path(), 400, true);
    assert!(
        high <= (LOG_SQLITE_CHECKPOINT_BYTES + slack) as u64,
        "WAL reached {high} bytes"
    );
    let dir = TempDir::new("wal-bounded");
    let high = wal_high_water(dir.path(), 400, false);
    eprintln!("without checkpoints between batches the WAL peaked at {high} bytes");
    assert!(
        high > (LOG_SQLITE_CHECKPOINT_BYTES + slack) as u64,
        "the commits checkpointed early: WAL at most {high} bytes"
    );
    assert!(
        high <= (LOG_SQLITE_WAL_BYTES_MAX + slack) as u64,
        "WAL reached {high} bytes"
    );
}

#[test]
fn a_corrupt_spill_file_is_skipped_not_fatal() {
    let dir = TempDir::new("corrupt");
    let rows = varied_rows(6, 3);
    let spill = dir.path().join("log-spill");
    std::fs::create_dir_all(&spill).unwrap();
    let good: Vec<String> = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let text = format!(
        "{}\n\u{0}\u{1}garbage\n{}\n{{\"id\":1}}\n{}",
        good[0],
        good[1],
        &good[2][..10]
    );
    std::fs::write(spill.join("0000000003.jsonl"), text).unwrap();
    let cfg = sqlite();
    let (handle, _sender) = LogWriter::start(&cfg, dir.path()).unwrap();
    wait_until("replay", Duration::from_secs(20), || {
        handle.stats().spill_rows_corrupt == 3
    });
    let stats = handle.shutdown();
    assert_eq!(stats.rows_replayed, 2);
    let mut store = cfg.open_store(dir.path()).unwrap();
    assert_eq!(
        read_all(store.as_mut(), &LogFilter::default()),
        newest_first(rows[..2].to_vec())
    );
}

#[test]
fn a_row_the_sink_refuses_is_set_aside_and_the_rest_written() {
    let dir = TempDir::new("poison");
    let cfg = sqlite();
    // Create the schema, then a trigger that refuses one model's rows.
    drop(cfg.open_store(dir.path()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join(LOG_SQLITE_FILE)).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON requests WHEN NEW.model = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'poison row'); END;",
    )
    .unwrap();
    let mut rows = varied_rows(8, 20);
    rows[13].model = "poison".into();
    let (handle, sender) = LogWriter::start(&cfg, dir.path()).unwrap();
    for r in &rows {
        assert!(sender.try_log(r.clone()));
    }
    let stats = handle.shutdown();
    assert_eq!(
        (stats.rows_written, stats.rows_rejected, stats.rows_dropped),
        (19, 1, 0),
        "{stats:?}"
    );
    let rejected = std::fs::read_to_string(dir.path().join("log-spill/rejected.jsonl")).unwrap();
    let back: bursar::reqlog::LogRow = serde_json::from_str(rejected.trim()).unwrap();
    assert_eq!(back, rows[13]);
    let mut store = cfg.open_store(dir.path()).unwrap();
    assert_eq!(store.count().unwrap(), 19);
}

/// Set in the child process of the crash test: its state directory.
const CRASH_CHILD_ENV: &str = "BURSAR_REQLOG_CRASH_CHILD_DIR";

/// The crash test's child: the sink cannot open, so every batch goes to the
/// spill; after each thousand rows it prints how many the spill holds
/// (fsynced), until the parent kills it.
fn crash_child(dir: &std::path::Path) {
    let (handle, sender) = LogWriter::start(&sqlite(), dir).unwrap();
    // The same sequence as `varied_rows(21, n)`, made as it goes.
    let mut rng = Rng::new(21);
    for chunk in 0u64.. {
        for i in chunk * 1000..(chunk + 1) * 1000 {
            let row = varied_row(&mut rng, i);
            while !sender.try_log(row.clone()) {}
        }
        // Every row sent so far: the sink never opens, so each one goes to
        // the spill. (Reading the spill count after sending, plus 1000, was
        // a wait for rows never sent whenever the writer spilled part of the
        // chunk while it was being sent: CI saw that time out at 30 s and at
        // 300 s.) The writer waits in the idle class and a thousand queued
        // rows are below its boost mark, so while this binary's other tests
        // keep both cores busy it may not run for a while: the wait is for
        // liveness, not speed.
        let target = (chunk + 1) * 1000;
        wait_until("spill", Duration::from_secs(300), || {
            handle.stats().rows_spilled >= target
        });
        println!("spilled {}", handle.stats().rows_spilled);
    }
}

#[test]
fn a_writer_killed_while_spilling_loses_no_spilled_row() {
    if let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) {
        crash_child(std::path::Path::new(&dir));
        return;
    }
    use std::io::BufRead;
    let dir = TempDir::new("crash");
    let db = dir.path().join(LOG_SQLITE_FILE);
    std::fs::create_dir(&db).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_writer_killed_while_spilling_loses_no_spilled_row",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut spilled = 0u64;
    while spilled < 20_000 {
        let line = lines.next().expect("child output").unwrap();
        if let Some(n) = line.strip_prefix("spilled ") {
            spilled = n.parse().unwrap();
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-load
    child.wait().unwrap();
    std::fs::remove_dir(&db).unwrap();
    let cfg = sqlite();
    let (handle, _sender) = LogWriter::start(&cfg, dir.path()).unwrap();
    let mut store = cfg.open_store(dir.path()).unwrap();
    wait_until("replay", Duration::from_secs(60), || {
        handle.stats().spill_bytes == 0
    });
    let stats = handle.shutdown();
    let stored = store.count().unwrap();
    assert!(
        stored >= spilled,
        "{stored} rows stored, {spilled} were reported spilled; {stats:?}"
    );
    assert_eq!(stats.rows_written, stored);
    assert!(
        stats.spill_rows_corrupt <= 1,
        "at most a torn last line: {stats:?}"
    );
    // What was stored is exactly what was sent: the first rows, in full.
    let want = varied_rows(21, stored);
    let got = read_all(
        store.as_mut(),
        &LogFilter {
            limit: 1000,
            ..LogFilter::default()
        },
    );
    assert_eq!(got, newest_first(want));
}

#[test]
fn rollups_answer_exactly_what_a_scan_of_the_rows_does() {
    let dir = TempDir::new("rollups");
    check_rollups_match_scan(&sqlite(), dir.path(), 7);
}

/// Version 5 had one mark for every tier, each holding every row below it
/// (its open hour and day partly summed) and no tag minutes, tag sums or
/// bounds: opened by version 6, the hour and day marks start at that mark,
/// the tags' minutes and the sums and bounds are backfilled, and every
/// answer equals a scan, before and after the build goes on.
#[test]
fn a_version_5_file_gains_tier_marks_and_tag_minutes() {
    let dir = TempDir::new("v5");
    let cfg = sqlite();
    let rows = rollup_rows(8, 900);
    // Inside an hour and a day, so both are open at the mark.
    let mark = T0 + 5 * HOUR + 17 * MINUTE;
    {
        let mut store = cfg.open_store(dir.path()).unwrap();
        store.insert_batch(&rows, &mut || {}).unwrap();
        while store.roll_up(mark).unwrap() {}
    }
    // Back to version 5: the open hour and day get the minutes below the
    // mark (version 5 summed each minute into them), version 6's own rows
    // and marks go.
    let path = dir.path().join(bursar::reqlog::LOG_SQLITE_FILE);
    let conn = rusqlite::Connection::open(&path).unwrap();
    // Picodollars exceed i64: summed as i128 decimal text, as the store does.
    struct SumPd;
    impl rusqlite::functions::Aggregate<i128, String> for SumPd {
        fn init(&self, _: &mut rusqlite::functions::Context<'_>) -> rusqlite::Result<i128> {
            Ok(0)
        }
        fn step(
            &self,
            ctx: &mut rusqlite::functions::Context<'_>,
            acc: &mut i128,
        ) -> rusqlite::Result<()> {
            *acc += ctx.get::<String>(0)?.parse::<i128>().unwrap();
            Ok(())
        }
        fn finalize(
            &self,
            _: &mut rusqlite::functions::Context<'_>,
            acc: Option<i128>,
        ) -> rusqlite::Result<String> {
            Ok(acc.unwrap_or(0).to_string())
        }
    }
    conn.create_aggregate_function("sum_pd", 1, Default::default(), SumPd)
        .unwrap();
    conn.create_scalar_function("add_pd", 2, Default::default(), |ctx| {
        let a: i128 = ctx.get::<String>(0)?.parse().unwrap();
        let b: i128 = ctx.get::<String>(1)?.parse().unwrap();
        Ok((a + b).to_string())
    })
    .unwrap();
    let money = |c: &str| format!("sum_pd({c})");
    let add = |c: &str| format!("{c} = add_pd(x.{c}, excluded.{c})");
    let measures = format!(
        "SUM(requests), SUM(errors), SUM(cache_hits), {}, {}, SUM(prompt_tokens), \
         SUM(completion_tokens)",
        money("cost_picodollars"),
        money("avoided_picodollars")
    );
    let set = format!(
        "requests = x.requests + excluded.requests, errors = x.errors + excluded.errors, \
         cache_hits = x.cache_hits + excluded.cache_hits, {}, {}, \
         prompt_tokens = x.prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = x.completion_tokens + excluded.completion_tokens",
        add("cost_picodollars"),
        add("avoided_picodollars")
    );
    for w in [HOUR, DAY] {
        let open = mark - mark % w;
        conn.execute_batch(&format!(
            "INSERT INTO rollups AS x SELECT {w}, bucket_ms - bucket_ms % {w}, key_name, team, \
             customer, provider, model, {measures} FROM rollups \
             WHERE tier = 60000 AND bucket_ms >= {open} AND bucket_ms < {mark} \
             GROUP BY 1, 2, 3, 4, 5, 6, 7 \
             ON CONFLICT (tier, bucket_ms, key_name, team, customer, provider, model) \
             DO UPDATE SET {set};
             INSERT INTO rollup_dims AS x SELECT {w}, dim, bucket_ms - bucket_ms % {w}, value, \
             {measures} FROM rollup_dims WHERE tier = 60000 AND dim NOT IN ('tagsum', 'tagmax') \
             AND bucket_ms >= {open} AND bucket_ms < {mark} GROUP BY 1, 2, 3, 4 \
             ON CONFLICT (tier, dim, bucket_ms, value) DO UPDATE SET {set};"
        ))
        .unwrap();
    }
    conn.execute_batch(
        "DELETE FROM rollup_dims WHERE dim IN ('tagsum', 'tagmax') \
         OR (tier = 60000 AND dim >= 't:' AND dim < 't;'); \
         DELETE FROM rollups WHERE tier IN (21600000, 604800000); \
         DELETE FROM rollup_dims WHERE tier IN (21600000, 604800000); \
         DELETE FROM rollup_marks WHERE tier <> 60000; UPDATE schema_version SET version = 5",
    )
    .unwrap();
    drop(conn);
    let mut store = cfg.open_store(dir.path()).unwrap();
    let mut rng = Rng::new(55);
    compare_rollups_with_scan(store.as_mut(), &mut rng, 150);
    while store.roll_up(T0 + 3 * DAY).unwrap() {}
    compare_rollups_with_scan(store.as_mut(), &mut rng, 150);
    let all = store
        .spend_totals(&GroupBy::None, T0 - 16 * DAY, T0 + 3 * DAY)
        .unwrap();
    assert_eq!(all[0].requests, 900);
}

#[test]
fn a_version_3_file_gains_rollups_of_its_rows() {
    let dir = TempDir::new("v3");
    let cfg = sqlite();
    let rows = rollup_rows(5, 600);
    {
        let mut store = cfg.open_store(dir.path()).unwrap();
        store.insert_batch(&rows, &mut || {}).unwrap();
    }
    // Back to version 3: no rollups.
    let path = dir.path().join(bursar::reqlog::LOG_SQLITE_FILE);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE rollups; DROP TABLE IF EXISTS rollup_tags; DROP TABLE rollup_dims; \
         DROP TABLE rollup_marks; UPDATE schema_version SET version = 3",
    )
    .unwrap();
    drop(conn);
    let mut store = cfg.open_store(dir.path()).unwrap();
    let (from, to) = (T0 - 16 * DAY, T0 + 3 * DAY);
    for group_by in [
        GroupBy::None,
        GroupBy::Key,
        GroupBy::Team,
        GroupBy::Tag("env".into()),
        GroupBy::Tags,
    ] {
        for bucket in [Bucket::Minute, Bucket::Hour, Bucket::Day] {
            let (f, t) = if bucket == Bucket::Minute {
                (T0 - HOUR - 7, T0 + 2 * HOUR + 3)
            } else {
                (from + 5 * MINUTE + 1, to - 1)
            };
            let f0 = bursar::reqlog::SpendFilter::default();
            assert_eq!(
                store
                    .spend_series_where(&group_by, &f0, bucket, f, t)
                    .unwrap(),
                store
                    .spend_scan(&group_by, &f0, Some(bucket), f, t)
                    .unwrap(),
                "{group_by:?} {bucket:?}"
            );
        }
    }
    let all = store.spend_totals(&GroupBy::None, from, to).unwrap();
    assert_eq!(all[0].requests, 600);
    // New rows add to the backfilled rollups.
    let more = rollup_rows(6, 50)
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.id = format!("req_more{i}");
            r
        })
        .collect::<Vec<_>>();
    store.insert_batch(&more, &mut || {}).unwrap();
    assert_eq!(
        store.spend_totals(&GroupBy::None, from, to).unwrap()[0].requests,
        650
    );
}

#[test]
fn raw_retention_keeps_the_rollups_and_minute_rollups_expire() {
    let dir = TempDir::new("rollup-retention");
    let cfg = sqlite();
    let mut store = cfg.open_store(dir.path()).unwrap();
    let rows = rollup_rows(9, 300);
    store.insert_batch(&rows, &mut || {}).unwrap();
    let (from, to) = (T0 - 16 * DAY, T0 + 3 * DAY);
    let before = store.spend_totals(&GroupBy::Model, from, to).unwrap();
    // Every raw row deleted: whole-minute ranges still answer from the rollups.
    assert_eq!(store.delete_before(i64::MAX, u64::MAX).unwrap(), 300);
    assert_eq!(store.count().unwrap(), 0);
    assert_eq!(
        store.spend_totals(&GroupBy::Model, from, to).unwrap(),
        before
    );
    let by_hour = store
        .spend_series(&GroupBy::Key, Bucket::Hour, from, to)
        .unwrap();
    assert_eq!(
        by_hour.iter().map(|p| p.requests).sum::<u64>(),
        300,
        "{by_hour:?}"
    );
    // The minute tier goes; hours and days stay.
    let n = store
        .delete_minute_rollups_before(i64::MAX, u64::MAX)
        .unwrap();
    assert!(n > 0);
    assert_eq!(
        store.spend_totals(&GroupBy::Model, from, to).unwrap(),
        before
    );
    let unaligned = store
        .spend_totals(&GroupBy::None, T0 + 5 * MINUTE, T0 + 6 * HOUR)
        .unwrap();
    let aligned = store
        .spend_totals(&GroupBy::None, T0 + HOUR, T0 + 6 * HOUR)
        .unwrap();
    assert_eq!(unaligned, aligned, "only the whole hours remain");
}

#[test]
fn log_pages_stop_at_their_scan_bound_and_continue() {
    let dir = TempDir::new("log-pages");
    check_log_pages(&sqlite(), dir.path());
}

/// The writer thread builds the rollups of closed minutes by itself: after
/// rows from days ago go through it, the mark passes them and the spend
/// read from the rollups equals a scan of the rows. (The writer may move the
/// mark past every row before it stores the first, on an idle step at
/// start: then the rows are late and each is added to the tiers by its own
/// insert. Either way the rollups hold them once all are stored.)
#[test]
fn the_writer_rolls_up_closed_minutes_by_itself() {
    let dir = TempDir::new("writer-rolls-up");
    let cfg = sqlite();
    let rows = rollup_rows(21, 400);
    let newest = rows.iter().map(|r| r.time_ms).max().unwrap();
    let (handle, sender) = LogWriter::start(&cfg, dir.path()).unwrap();
    for r in &rows {
        assert!(sender.try_log(r.clone()));
    }
    let path = dir.path().join(LOG_SQLITE_FILE);
    let conn = rusqlite::Connection::open(&path).unwrap();
    wait_until(
        "every row stored and the minute mark past them",
        Duration::from_secs(120),
        || {
            let stored = conn
                .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get::<_, i64>(0))
                .is_ok_and(|n| n == rows.len() as i64);
            let minute = conn
                .query_row(
                    "SELECT done_ms FROM rollup_marks WHERE tier = ?1",
                    [MINUTE],
                    |r| r.get::<_, i64>(0),
                )
                .is_ok_and(|done| done > newest);
            stored && minute
        },
    );
    let dims: i64 = conn
        .query_row("SELECT COUNT(*) FROM rollup_dims", [], |r| r.get(0))
        .unwrap();
    assert!(dims > 0);
    drop(handle);
    let mut store = cfg.open_store(dir.path()).unwrap();
    let (from, to) = (T0 - 16 * DAY + 7, T0 + 3 * DAY - 5);
    let none = bursar::reqlog::SpendFilter::default();
    for group_by in [GroupBy::None, GroupBy::Key, GroupBy::Tag("user".into())] {
        let scan = store
            .spend_scan(&group_by, &none, Some(Bucket::Hour), from, to)
            .unwrap();
        assert_eq!(
            store
                .spend_series_where(&group_by, &none, Bucket::Hour, from, to)
                .unwrap(),
            scan,
            "{group_by:?}"
        );
        assert!(scan.iter().map(|p| p.requests).sum::<u64>() > 0);
    }
}

/// The rows of the tiers version 7 added (six hours, week) in both rollup
/// tables, in key order, each as text.
fn new_tier_rows(conn: &rusqlite::Connection) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT tier || '|' || dim || '|' || bucket_ms || '|' || value || '|' || requests || '|' \
         || errors || '|' || cache_hits || '|' || cost_picodollars || '|' || avoided_picodollars \
         || '|' || prompt_tokens || '|' || completion_tokens FROM rollup_dims \
         WHERE tier IN (21600000, 604800000) ORDER BY tier, dim, bucket_ms, value",
        "SELECT tier || '|' || bucket_ms || '|' || key_name || '|' || team || '|' || customer \
         || '|' || provider || '|' || model || '|' || requests || '|' || cost_picodollars \
         FROM rollups WHERE tier IN (21600000, 604800000) \
         ORDER BY tier, bucket_ms, key_name, team, customer, provider, model",
    ] {
        let mut stmt = conn.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

/// Version 6 had no six-hour or week tier: opened by version 7, both are
/// built from the hour and day tiers below their marks, row for row what
/// the build itself writes, and every answer equals a scan, before and after
/// the build goes on.
#[test]
fn a_version_6_file_gains_six_hour_and_week_tiers() {
    let dir = TempDir::new("v6");
    let cfg = sqlite();
    let rows = rollup_rows(12, 900);
    // Inside a quarter-day and a week, so both are open at the mark.
    let mark = T0 + 5 * HOUR + 17 * MINUTE;
    {
        let mut store = cfg.open_store(dir.path()).unwrap();
        store.insert_batch(&rows, &mut || {}).unwrap();
        while store.roll_up(mark).unwrap() {}
    }
    let path = dir.path().join(bursar::reqlog::LOG_SQLITE_FILE);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let built = new_tier_rows(&conn);
    assert!(
        built.iter().any(|r| r.starts_with("604800000|"))
            && built.iter().any(|r| r.starts_with("21600000|")),
        "{built:?}"
    );
    conn.execute_batch(
        "DELETE FROM rollups WHERE tier IN (21600000, 604800000); \
         DELETE FROM rollup_dims WHERE tier IN (21600000, 604800000); \
         DELETE FROM rollup_marks WHERE tier IN (21600000, 604800000); \
         UPDATE schema_version SET version = 6",
    )
    .unwrap();
    drop(conn);
    let mut store = cfg.open_store(dir.path()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(new_tier_rows(&conn), built);
    let version: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, bursar::reqlog::store::SCHEMA_VERSION);
    let mut rng = Rng::new(66);
    compare_rollups_with_scan(store.as_mut(), &mut rng, 150);
    while store.roll_up(T0 + 3 * DAY).unwrap() {}
    compare_rollups_with_scan(store.as_mut(), &mut rng, 150);
}
