//! The request log writer into the local PostgreSQL (127.0.0.1:5432, user
//! postgres, trust auth; `scripts/ensure-postgres` starts one). Each test
//! creates its own database and drops it, so tests run in parallel.

mod reqlog_common;

use std::sync::atomic::{AtomicU32, Ordering};

use bursar::reqlog::{Bucket, GroupBy, LogConfig, LogFilter, SinkKind};
use reqlog_common::*;

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A database of its own for one test, dropped at the end.
struct TestDb {
    name: String,
}

impl TestDb {
    fn new() -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "bursar_test_{}_{nanos}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = postgres::Client::connect(&format!("{SERVER}/postgres"), postgres::NoTls)
            .unwrap_or_else(|e| {
                panic!("PostgreSQL must answer at {SERVER} (run scripts/ensure-postgres): {e}")
            });
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        TestDb { name }
    }

    fn config(&self) -> LogConfig {
        fast(LogConfig {
            sink: SinkKind::Postgres {
                url: format!("{SERVER}/{}", self.name),
            },
            ..LogConfig::default()
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) =
            postgres::Client::connect(&format!("{SERVER}/postgres"), postgres::NoTls)
        {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

#[test]
fn rows_round_trip_exactly() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-round-trip");
    check_round_trip(&db.config(), dir.path(), true);
}

#[test]
fn filters_and_paging_match_an_oracle() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-filters");
    check_filters_and_paging(&db.config(), dir.path(), true);
}

#[test]
fn series_and_totals_are_exact() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-series");
    check_series(&db.config(), dir.path());
}

#[test]
fn retention_deletes_old_rows() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-retention");
    check_retention(&db.config(), dir.path());
}

#[test]
fn tags_with_awkward_keys_filter_and_group_exactly() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-awkward-tags");
    check_awkward_tags(&db.config(), dir.path());
}

#[test]
fn a_nul_in_a_tag_is_stored_as_u_fffd_and_tag_queries_still_work() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-nul-tag");
    let mut rows = varied_rows(43, 2);
    rows[0].tags = vec![("k".into(), "a\0b".into())];
    rows[1].tags = vec![("k".into(), "c".into())];
    rows[0].time_ms = T0;
    rows[1].time_ms = T0 + 1;
    write_through(&db.config(), dir.path(), &rows);
    let mut store = db.config().open_store(dir.path()).unwrap();
    let found = store
        .query_logs(&LogFilter {
            tag: Some(("k".into(), "a\u{fffd}b".into())),
            ..LogFilter::default()
        })
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].tags, vec![("k".into(), "a\u{fffd}b".into())]);
    let groups: Vec<String> = store
        .spend_totals(&GroupBy::Tag("k".into()), T0, T0 + DAY)
        .unwrap()
        .into_iter()
        .map(|t| t.group)
        .collect();
    assert_eq!(groups, ["a\u{fffd}b", "c"]);
}

#[test]
fn a_version_1_database_is_migrated_and_its_tags_still_query() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-migrate-v1");
    let mut client =
        postgres::Client::connect(&format!("{SERVER}/{}", db.name), postgres::NoTls).unwrap();
    // The version 1 schema, with one tagged row.
    client
        .batch_execute(
            r#"
CREATE TABLE schema_version (version BIGINT NOT NULL);
INSERT INTO schema_version (version) VALUES (1);
CREATE TABLE requests (
    id TEXT COLLATE "C" PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    key_name TEXT NOT NULL,
    team TEXT,
    customer TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_picodollars NUMERIC(39, 0) NOT NULL,
    price_version TEXT NOT NULL,
    estimated BOOLEAN NOT NULL,
    ttfb_us BIGINT,
    total_us BIGINT NOT NULL,
    cache_status TEXT NOT NULL,
    stream BOOLEAN NOT NULL,
    tags TEXT NOT NULL,
    prompt_text TEXT,
    completion_text TEXT
);
CREATE INDEX requests_time ON requests (time_ms, id);
CREATE INDEX requests_key_time ON requests (key_name, time_ms);
CREATE TABLE request_tags (
    request_id TEXT COLLATE "C" NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    k TEXT NOT NULL,
    v TEXT NOT NULL,
    PRIMARY KEY (request_id, k)
);
CREATE INDEX request_tags_kv ON request_tags (k, v);
INSERT INTO requests VALUES ('req_v1', 1795737600000, 'k-old', 'red', NULL, 'openai',
    'gpt-4o', 'chat/completions', 200, 10, 2, 0, 0, 0, 123456789012345678901234, '2026-11-01',
    false, 1500, 90000, 'miss', true, '{"env":"prod","feature":"search"}', NULL, NULL);
INSERT INTO request_tags VALUES ('req_v1', 'env', 'prod'), ('req_v1', 'feature', 'search');
"#,
        )
        .unwrap();
    let cfg = db.config();
    let mut store = cfg.open_store(dir.path()).unwrap();
    let version: i64 = client
        .query_one("SELECT version FROM schema_version", &[])
        .unwrap()
        .get(0);
    // Through versions 2 and 3 to the current one.
    assert_eq!(version, bursar::reqlog::store::SCHEMA_VERSION);
    let left: i64 = client
        .query_one(
            "SELECT COUNT(*) FROM pg_class WHERE relname LIKE 'request_tags%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_eq!(
        ids_with_tag(store.as_mut(), "feature", "search"),
        ["req_v1"]
    );
    let old = store.query_logs(&LogFilter::default()).unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].cost_picodollars, 123_456_789_012_345_678_901_234);
    assert_eq!(old[0].avoided_picodollars, 0);
    let mut new_rows = varied_rows(31, 1);
    new_rows[0].time_ms = T0 + 1;
    new_rows[0].tags = vec![];
    write_through(&cfg, dir.path(), &new_rows);
    assert_eq!(
        requests_by_tag(store.as_mut(), "feature"),
        [("".to_string(), 1), ("search".to_string(), 1)]
    );
}

/// The version 2 schema, as bursar created it before the spend a cache hit
/// avoided was kept, with two rows (one a cache hit, from before the column).
const SCHEMA_V2: &str = r#"
CREATE TABLE schema_version (version BIGINT NOT NULL);
INSERT INTO schema_version (version) VALUES (2);
CREATE TABLE requests (
    id TEXT COLLATE "C" PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    key_name TEXT NOT NULL,
    team TEXT,
    customer TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_picodollars NUMERIC(39, 0) NOT NULL,
    price_version TEXT NOT NULL,
    estimated BOOLEAN NOT NULL,
    ttfb_us BIGINT,
    total_us BIGINT NOT NULL,
    cache_status TEXT NOT NULL,
    stream BOOLEAN NOT NULL,
    tags TEXT NOT NULL,
    prompt_text TEXT,
    completion_text TEXT
);
CREATE INDEX requests_time ON requests (time_ms, id);
CREATE INDEX requests_key_time ON requests (key_name, time_ms);
INSERT INTO requests VALUES ('req_v2a', 1795737600000, 'k-old', 'red', NULL, 'openai',
    'gpt-4o', 'chat/completions', 200, 10, 2, 0, 0, 0, 123456789012345678901234, '2026-11-01',
    false, 1500, 90000, 'miss', true, '{"env":"prod"}', NULL, NULL);
INSERT INTO requests VALUES ('req_v2b', 1795737600001, 'k-old', 'red', NULL, 'openai',
    'gpt-4o', 'chat/completions', 200, 10, 2, 0, 0, 0, 0, '2026-11-01',
    false, 100, 200, 'hit', false, '{}', NULL, NULL);
"#;

#[test]
fn a_version_2_database_gains_avoided_spend_and_its_rows_read_zero() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-migrate-v2");
    let mut client =
        postgres::Client::connect(&format!("{SERVER}/{}", db.name), postgres::NoTls).unwrap();
    client.batch_execute(SCHEMA_V2).unwrap();
    let cfg = db.config();
    let mut store = cfg.open_store(dir.path()).unwrap();
    let version: i64 = client
        .query_one("SELECT version FROM schema_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, bursar::reqlog::store::SCHEMA_VERSION);
    // The column is NUMERIC(39,0) NOT NULL, 0 in the old rows.
    let column = client
        .query_one(
            "SELECT data_type, numeric_precision, numeric_scale, is_nullable \
             FROM information_schema.columns \
             WHERE table_name = 'requests' AND column_name = 'avoided_picodollars'",
            &[],
        )
        .unwrap();
    let (kind, precision, scale, nullable): (String, i32, i32, String) =
        (column.get(0), column.get(1), column.get(2), column.get(3));
    assert_eq!(
        (kind.as_str(), precision, scale, nullable.as_str()),
        ("numeric", 39, 0, "NO")
    );
    let stored: Vec<String> = client
        .query(
            "SELECT avoided_picodollars::TEXT FROM requests ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
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
    // A new hit goes in beside them (COPY through the staging table made
    // after the migration); the sums cover old and new rows.
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
    assert_eq!(got, as_stored(&new_rows, true));
    let totals = store.spend_totals(&GroupBy::Key, T0, T0 + DAY).unwrap();
    assert_eq!(totals.len(), 1);
    assert_eq!(totals[0].requests, 3);
    assert_eq!(totals[0].cost_picodollars, 123_456_789_012_345_678_901_234);
    assert_eq!(
        totals[0].avoided_picodollars,
        123_456_789_012_345_678_901_234
    );
    let series = store
        .spend_series(&GroupBy::Key, bursar::reqlog::Bucket::Minute, T0, T0 + DAY)
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
fn an_unreachable_server_spills_and_the_rows_are_replayed_once() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-spill");
    // Port 1 refuses connections: the writer starts anyway and spills.
    let broken = fast(LogConfig {
        sink: SinkKind::Postgres {
            url: format!("postgres://postgres@127.0.0.1:1/{}", db.name),
        },
        ..LogConfig::default()
    });
    check_spill_then_replay(&broken, &db.config(), dir.path(), || {});
}

#[test]
fn costs_are_numeric_and_sum_exactly_in_sql() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-numeric");
    let mut rows = varied_rows(12, 4);
    for (r, cost) in rows.iter_mut().zip([i128::MAX, i128::MIN + 1, 1, -1]) {
        r.cost_picodollars = cost;
        r.avoided_picodollars = cost.wrapping_neg();
    }
    write_through(&db.config(), dir.path(), &rows);
    let mut store = db.config().open_store(dir.path()).unwrap();
    let got = store.query_logs(&LogFilter::default()).unwrap();
    let mut costs: Vec<i128> = got.iter().map(|r| r.cost_picodollars).collect();
    costs.sort_unstable();
    assert_eq!(costs, vec![i128::MIN + 1, -1, 1, i128::MAX]);
    let mut client =
        postgres::Client::connect(&format!("{SERVER}/{}", db.name), postgres::NoTls).unwrap();
    let sum: String = client
        .query_one("SELECT SUM(cost_picodollars)::TEXT FROM requests", &[])
        .unwrap()
        .get(0);
    // MAX + (MIN + 1) + 1 - 1 = 0: exact across the whole i128 range.
    assert_eq!(sum, "0");
    // The same for the spend cache hits avoided.
    let mut avoided: Vec<i128> = got.iter().map(|r| r.avoided_picodollars).collect();
    avoided.sort_unstable();
    assert_eq!(avoided, vec![i128::MIN + 1, -1, 1, i128::MAX]);
    let sum: String = client
        .query_one("SELECT SUM(avoided_picodollars)::TEXT FROM requests", &[])
        .unwrap()
        .get(0);
    assert_eq!(sum, "0");
}

#[test]
fn rollups_answer_exactly_what_a_scan_of_the_rows_does() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-rollups");
    check_rollups_match_scan(&db.config(), dir.path(), 11);
}

#[test]
fn log_pages_stop_at_their_scan_bound_and_continue() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-log-pages");
    check_log_pages(&db.config(), dir.path());
}

#[test]
fn a_version_3_database_gains_rollups_of_its_rows() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-v3");
    let cfg = db.config();
    let rows = rollup_rows(5, 600);
    {
        let mut store = cfg.open_store(dir.path()).unwrap();
        store.insert_batch(&rows, &mut || {}).unwrap();
    }
    let mut client =
        postgres::Client::connect(&format!("{SERVER}/{}", db.name), postgres::NoTls).unwrap();
    client
        .batch_execute(
            "DROP TABLE rollups; DROP TABLE IF EXISTS rollup_tags; DROP TABLE rollup_dims; \
             DROP TABLE rollup_marks; UPDATE schema_version SET version = 3",
        )
        .unwrap();
    let mut store = cfg.open_store(dir.path()).unwrap();
    let f0 = bursar::reqlog::SpendFilter::default();
    for group_by in [
        GroupBy::None,
        GroupBy::Customer,
        GroupBy::Tag("env".into()),
        GroupBy::Tags,
    ] {
        for bucket in [Bucket::Minute, Bucket::Hour, Bucket::Day] {
            let (f, t) = if bucket == Bucket::Minute {
                (T0 - HOUR - 7, T0 + 2 * HOUR + 3)
            } else {
                (T0 - 16 * DAY + 5 * MINUTE + 1, T0 + 3 * DAY - 1)
            };
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
    let all = store
        .spend_totals(&GroupBy::None, T0 - 16 * DAY, T0 + 3 * DAY)
        .unwrap();
    assert_eq!(all[0].requests, 600);
}

/// The rows of the tiers version 7 added (six hours, week) in both rollup
/// tables, in key order, each as text.
fn new_tier_rows(client: &mut postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT concat_ws('|', tier, dim, bucket_ms, value, requests, errors, cache_hits, \
         cost_picodollars, avoided_picodollars, prompt_tokens, completion_tokens) \
         FROM rollup_dims WHERE tier IN (21600000, 604800000) \
         ORDER BY tier, dim COLLATE \"C\", bucket_ms, value COLLATE \"C\"",
        "SELECT concat_ws('|', tier, bucket_ms, key_name, team, customer, provider, model, \
         requests, cost_picodollars) FROM rollups WHERE tier IN (21600000, 604800000) \
         ORDER BY tier, bucket_ms, key_name COLLATE \"C\", team COLLATE \"C\", \
         customer COLLATE \"C\", provider COLLATE \"C\", model COLLATE \"C\"",
    ] {
        out.extend(
            client
                .query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0)),
        );
    }
    out
}

/// Version 6 had no six-hour or week tier: opened by version 7, both are
/// built from the hour and day tiers below their marks, row for row what
/// the build itself writes, and every answer equals a scan.
#[test]
fn a_version_6_database_gains_six_hour_and_week_tiers() {
    let db = TestDb::new();
    let dir = TempDir::new("pg-v6");
    let cfg = db.config();
    let rows = rollup_rows(12, 600);
    {
        let mut store = cfg.open_store(dir.path()).unwrap();
        store.insert_batch(&rows, &mut || {}).unwrap();
        while store.roll_up(T0 + 5 * HOUR + 17 * MINUTE).unwrap() {}
    }
    let mut client =
        postgres::Client::connect(&format!("{SERVER}/{}", db.name), postgres::NoTls).unwrap();
    let built = new_tier_rows(&mut client);
    assert!(
        built.iter().any(|r| r.starts_with("604800000|"))
            && built.iter().any(|r| r.starts_with("21600000|")),
        "{built:?}"
    );
    client
        .batch_execute(
            "DELETE FROM rollups WHERE tier IN (21600000, 604800000); \
             DELETE FROM rollup_dims WHERE tier IN (21600000, 604800000); \
             DELETE FROM rollup_marks WHERE tier IN (21600000, 604800000); \
             UPDATE schema_version SET version = 6",
        )
        .unwrap();
    let mut store = cfg.open_store(dir.path()).unwrap();
    assert_eq!(new_tier_rows(&mut client), built);
    let mut rng = Rng::new(67);
    compare_rollups_with_scan(store.as_mut(), &mut rng, 100);
    while store.roll_up(T0 + 3 * DAY).unwrap() {}
    compare_rollups_with_scan(store.as_mut(), &mut rng, 100);
}
