//! The request log writer into the local PostgreSQL (127.0.0.1:5432, user
//! postgres, trust auth; `scripts/ensure-postgres` starts one). Each test
//! creates its own database and drops it, so tests run in parallel.

mod reqlog_common;

use std::sync::atomic::{AtomicU32, Ordering};

use bursar::reqlog::{LogConfig, LogFilter, SinkKind};
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
    let mut client =
        postgres::Client::connect(&format!("{SERVER}/{}", db.name), postgres::NoTls).unwrap();
    let orphans: i64 = client
        .query_one(
            "SELECT COUNT(*) FROM request_tags WHERE request_id NOT IN (SELECT id FROM requests)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);
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
}
