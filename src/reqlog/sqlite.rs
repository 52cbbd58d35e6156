//! The SQLite sink: `<state_dir>/requests.sqlite`, the default.
//!
//! WAL mode, so the admin API's read connection reads while the writer
//! writes; 16 KiB pages in a new file ([`LOG_SQLITE_PAGE_BYTES`]);
//! `synchronous=NORMAL`, so a commit does not wait for an fsync (WAL
//! keeps the file consistent after a crash; a power loss may lose the last
//! transactions). Writes wait up to [`LOG_SQLITE_BUSY_TIMEOUT`] for another
//! connection's lock, then fail as [`StoreError::Unavailable`] and the writer
//! spills. The schema and the cost column are described in
//! [`store`]; a tag is read out of `requests.tags` with `json_extract` (the
//! path `$."key"` bound as a parameter) or, for a key with a quote, a
//! backslash or a control character, `json_each` with the key bound.

use std::borrow::Cow;
use std::fmt::Write;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};
use std::sync::Arc;

use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, ToSql, TransactionBehavior};

use super::query::{
    self, Bucket, Dialect, GroupBy, LogCursor, LogFilter, LogPage, Param, SeriesPoint, SpendFilter,
    SpendTotal,
};
use super::rollup::{self, Marks, RollupBatch, Tier};
use super::rollup_build;
use super::row::LogRow;
use super::store::SCHEMA_VERSION;
use super::store::{self, clamp_i64, write_tags_json, LogStore, RawRow, RawSpend, StoreError};
use super::{
    LOG_QUERY_SCAN_ROWS_MAX, LOG_SQLITE_BUSY_TIMEOUT, LOG_SQLITE_CACHE_BYTES,
    LOG_SQLITE_CHECKPOINT_BYTES, LOG_SQLITE_PAGE_BYTES, LOG_SQLITE_WAL_BYTES_MAX,
};

const SCHEMA: &str = "
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
    completion_text TEXT,
    avoided_picodollars TEXT NOT NULL DEFAULT '0'
);
CREATE INDEX requests_time ON requests (time_ms, id);
CREATE INDEX requests_key_time ON requests (key_name, time_ms);
";

/// Version 4: the rollups (`reqlog::rollup`). WITHOUT ROWID: the primary key
/// is the table's one b-tree, so an upsert touches one b-tree and a range of
/// a tier's buckets is read in key order. Costs are decimal text, as in
/// `requests`.
const ROLLUP_SCHEMA: &str = "
CREATE TABLE rollups (
    tier INTEGER NOT NULL,
    bucket_ms INTEGER NOT NULL,
    key_name TEXT NOT NULL,
    team TEXT NOT NULL,
    customer TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    cache_hits INTEGER NOT NULL,
    cost_picodollars TEXT NOT NULL,
    avoided_picodollars TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (tier, bucket_ms, key_name, team, customer, provider, model)
) WITHOUT ROWID;
CREATE TABLE rollup_tags (
    tier INTEGER NOT NULL,
    tag_key TEXT NOT NULL,
    bucket_ms INTEGER NOT NULL,
    tag_value TEXT NOT NULL,
    key_name TEXT NOT NULL,
    team TEXT NOT NULL,
    customer TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    cache_hits INTEGER NOT NULL,
    cost_picodollars TEXT NOT NULL,
    avoided_picodollars TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (tier, tag_key, bucket_ms, tag_value, key_name, team, customer, provider, model)
) WITHOUT ROWID;
";

/// Version 5: the rollups by one dimension (`reqlog::rollup`) and the mark
/// of the built minutes (`reqlog::rollup_build`).
const DIMS_SCHEMA: &str = "
CREATE TABLE rollup_dims (
    tier INTEGER NOT NULL,
    dim TEXT NOT NULL,
    bucket_ms INTEGER NOT NULL,
    value TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    cache_hits INTEGER NOT NULL,
    cost_picodollars TEXT NOT NULL,
    avoided_picodollars TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (tier, dim, bucket_ms, value)
) WITHOUT ROWID;
-- One value's buckets in order: a key's burn-down, the top groups of a
-- series (a range of the primary key would pass every other value).
CREATE INDEX rollup_dims_value ON rollup_dims (tier, dim, value, bucket_ms);
CREATE TABLE rollup_marks (
    tier INTEGER PRIMARY KEY,
    done_ms INTEGER NOT NULL
);
";

/// Version 3 to 4: the rollups of the rows already stored, computed in SQL
/// (in the migration's transaction: a large log takes a while to open once).
const BACKFILL_3_TO_4: &str = "
INSERT INTO rollups SELECT t.w, r.time_ms - (((r.time_ms % t.w) + t.w) % t.w), r.key_name,
    COALESCE(r.team, ''), COALESCE(r.customer, ''), r.provider, r.model, COUNT(*),
    SUM(r.status >= 400), SUM(r.cache_status IN ('hit', 'semantic-hit')),
    sum_picodollars(r.cost_picodollars), sum_picodollars(r.avoided_picodollars),
    SUM(r.prompt_tokens), SUM(r.completion_tokens)
FROM requests r, (SELECT 60000 AS w UNION ALL SELECT 3600000 UNION ALL SELECT 86400000) t
GROUP BY 1, 2, 3, 4, 5, 6, 7;
INSERT INTO rollup_tags SELECT t.w, j.key, r.time_ms - (((r.time_ms % t.w) + t.w) % t.w),
    j.value, r.key_name, COALESCE(r.team, ''), COALESCE(r.customer, ''), r.provider, r.model,
    COUNT(*), SUM(r.status >= 400), SUM(r.cache_status IN ('hit', 'semantic-hit')),
    sum_picodollars(r.cost_picodollars), sum_picodollars(r.avoided_picodollars),
    SUM(r.prompt_tokens), SUM(r.completion_tokens)
FROM requests r, json_each(r.tags) j, (SELECT 3600000 AS w UNION ALL SELECT 86400000) t
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9;
";

const UPSERT_ROLLUP: &str = "INSERT INTO rollups (tier, bucket_ms, key_name, team, customer, \
    provider, model, requests, errors, cache_hits, cost_picodollars, avoided_picodollars, \
    prompt_tokens, completion_tokens) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
    ON CONFLICT (tier, bucket_ms, key_name, team, customer, provider, model) DO UPDATE SET \
    requests = requests + excluded.requests, errors = errors + excluded.errors, \
    cache_hits = cache_hits + excluded.cache_hits, \
    cost_picodollars = add_picodollars(cost_picodollars, excluded.cost_picodollars), \
    avoided_picodollars = add_picodollars(avoided_picodollars, excluded.avoided_picodollars), \
    prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
    completion_tokens = completion_tokens + excluded.completion_tokens";

/// Version 1 to 2: tags live only in `requests.tags`. The freed pages stay in
/// the file and are reused by new rows.
const MIGRATE_1_TO_2: &str = "
DROP INDEX IF EXISTS request_tags_kv;
DROP TABLE IF EXISTS request_tags;
";

/// Version 2 to 3: the spend a cache hit avoided, exact decimal text like
/// `cost_picodollars`; rows from before read 0.
const MIGRATE_2_TO_3: &str =
    "ALTER TABLE requests ADD COLUMN avoided_picodollars TEXT NOT NULL DEFAULT '0'";

const INSERT_ROW: &str = "INSERT OR IGNORE INTO requests (id, time_ms, key_name, team, \
    customer, provider, model, endpoint, status, prompt_tokens, completion_tokens, \
    cached_tokens, cache_write_tokens, reasoning_tokens, cost_picodollars, price_version, \
    estimated, ttfb_us, total_us, cache_status, stream, tags, prompt_text, completion_text, \
    avoided_picodollars) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
    ?19, ?20, ?21, ?22, ?23, ?24, ?25)";

/// A connection to the request log's SQLite file.
pub struct SqliteStore {
    conn: Connection,
    /// Frames in the WAL after this connection's last commit.
    wal_frames: Arc<AtomicI32>,
    /// [`LOG_SQLITE_CHECKPOINT_BYTES`] in this file's pages.
    checkpoint_frames: i32,
    /// The mark this connection last built or read to (a hint that skips
    /// the build's transaction while no minute has closed).
    built_to: Option<i64>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        let data = match &e {
            rusqlite::Error::SqliteFailure(f, _) => matches!(
                f.code,
                ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch
            ),
            rusqlite::Error::ToSqlConversionFailure(_) => true,
            _ => false,
        };
        if data {
            StoreError::Data(e.to_string())
        } else {
            StoreError::Unavailable(e.to_string())
        }
    }
}

impl ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Param::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Param::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// `sum_picodollars(cost)`: the exact i128 sum of decimal-text (or integer)
/// picodollars; NULLs are skipped; overflow or a non-number is an error, never
/// a wrong or rounded total.
struct SumPicodollars;

impl Aggregate<i128, String> for SumPicodollars {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<i128> {
        Ok(0)
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut i128) -> rusqlite::Result<()> {
        let fail = |m: String| rusqlite::Error::UserFunctionError(m.into());
        let Some(v) = picodollars(ctx.get_raw(0)).map_err(fail)? else {
            return Ok(());
        };
        *acc = acc
            .checked_add(v)
            .ok_or_else(|| fail("sum of picodollars overflows i128".into()))?;
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, acc: Option<i128>) -> rusqlite::Result<String> {
        Ok(acc.unwrap_or(0).to_string())
    }
}

/// `max_picodollars(cost)`: the largest of decimal-text (or integer)
/// picodollars, compared as numbers (a text `MAX` compares bytes: "9" >
/// "10"); NULLs are skipped; a non-number is an error.
struct MaxPicodollars;

impl Aggregate<Option<i128>, Option<String>> for MaxPicodollars {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Option<i128>> {
        Ok(None)
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut Option<i128>) -> rusqlite::Result<()> {
        let fail = |m: String| rusqlite::Error::UserFunctionError(m.into());
        if let Some(v) = picodollars(ctx.get_raw(0)).map_err(fail)? {
            *acc = Some(acc.map_or(v, |a| a.max(v)));
        }
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<Option<i128>>,
    ) -> rusqlite::Result<Option<String>> {
        Ok(acc.flatten().map(|v| v.to_string()))
    }
}

/// A picodollar value of a SQLite cell: decimal text or an integer.
fn picodollars(v: ValueRef<'_>) -> Result<Option<i128>, String> {
    Ok(Some(match v {
        ValueRef::Null => return Ok(None),
        ValueRef::Integer(i) => i128::from(i),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not picodollars: {:?}", String::from_utf8_lossy(t)))?,
        other => return Err(format!("not picodollars: {other:?}")),
    }))
}

/// `add_picodollars(a, b)`: the exact i128 sum of two picodollar values, as
/// decimal text (the rollups' upsert); overflow or a non-number is an error.
fn add_picodollars(ctx: &Context<'_>) -> rusqlite::Result<String> {
    let fail = |m: String| rusqlite::Error::UserFunctionError(m.into());
    let a = picodollars(ctx.get_raw(0)).map_err(fail)?.unwrap_or(0);
    let b = picodollars(ctx.get_raw(1)).map_err(fail)?.unwrap_or(0);
    a.checked_add(b)
        .map(|s| s.to_string())
        .ok_or_else(|| fail("sum of picodollars overflows i128".into()))
}

impl SqliteStore {
    /// Opens (creating if needed) the file at `path` and its schema.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(LOG_SQLITE_BUSY_TIMEOUT)?;
        // Takes effect only in a new, empty file, so before WAL mode (which
        // writes the file's header); an existing file keeps its page size.
        conn.pragma_update(None, "page_size", LOG_SQLITE_PAGE_BYTES)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "{}: cannot use WAL mode (journal_mode is {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -(LOG_SQLITE_CACHE_BYTES / 1024))?;
        let page_bytes: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        // No automatic checkpoint inside a commit: the writer calls
        // `checkpoint_if_due` between batches; a commit checkpoints only past
        // LOG_SQLITE_WAL_BYTES_MAX. (The hook replaces SQLite's own.)
        let pages = |bytes: i64| (bytes / page_bytes.max(512)).clamp(1, i64::from(i32::MAX)) as i32;
        let frames_max = pages(LOG_SQLITE_WAL_BYTES_MAX);
        let wal_frames = Arc::new(AtomicI32::new(0));
        let seen = wal_frames.clone();
        conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, frames: i32| {
            seen.store(frames, Relaxed);
            if frames >= frames_max {
                wal.checkpoint()?;
            }
            Ok(())
        }))?;
        conn.create_aggregate_function(
            "sum_picodollars",
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            SumPicodollars,
        )?;
        conn.create_aggregate_function(
            "max_picodollars",
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            MaxPicodollars,
        )?;
        conn.create_scalar_function(
            "add_picodollars",
            2,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            |ctx| add_picodollars(ctx),
        )?;
        let mut store = SqliteStore {
            conn,
            wal_frames,
            checkpoint_frames: pages(LOG_SQLITE_CHECKPOINT_BYTES),
            built_to: None,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
        let found: Option<i64> = tx
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .optional()?
            .flatten();
        match found {
            None => {
                tx.execute_batch(SCHEMA)?;
                tx.execute_batch(ROLLUP_SCHEMA)?;
                tx.execute_batch("DROP TABLE rollup_tags")?;
                tx.execute_batch(DIMS_SCHEMA)?;
                tx.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(v) if v > SCHEMA_VERSION => return Err(StoreError::SchemaTooNew { found: v }),
            Some(v) => {
                if v < 2 {
                    tx.execute_batch(MIGRATE_1_TO_2)?;
                }
                if v < 3 {
                    tx.execute_batch(MIGRATE_2_TO_3)?;
                }
                if v < 4 {
                    tx.execute_batch(ROLLUP_SCHEMA)?;
                    tx.execute_batch(BACKFILL_3_TO_4)?;
                }
                if v < 5 {
                    tx.execute_batch(DIMS_SCHEMA)?;
                    tx.execute_batch(&rollup_build::backfill_4_to_5(Dialect::Sqlite))?;
                }
                if v < 6 {
                    tx.execute_batch(&rollup_build::backfill_5_to_6(Dialect::Sqlite))?;
                    if let Some(mark) = read_marks(&tx)?.minute() {
                        let mut b = BuildConn(&tx);
                        for sql in rollup_build::backfill_5_to_6_minutes(Dialect::Sqlite, mark) {
                            rollup_build::BuildTx::execute(&mut b, &sql)?;
                        }
                    }
                }
                if v < 7 {
                    let marks = read_marks(&tx)?;
                    if let Some(minute) = marks.minute() {
                        rollup_build::close_tiers(
                            &mut BuildConn(&tx),
                            Dialect::Sqlite,
                            &marks,
                            minute,
                        )?;
                    }
                }
                if v < SCHEMA_VERSION {
                    tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs one spend statement of `query` (see [`query::select_spend`]).
    fn run_spend(&mut self, sql: &query::Sql, bucketed: bool) -> Result<Vec<RawSpend>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&sql.text)?;
        let first = usize::from(bucketed);
        let rows = stmt.query_map(rusqlite::params_from_iter(sql.params.iter()), |r| {
            Ok(RawSpend {
                bucket_start_ms: if bucketed { r.get(0)? } else { 0 },
                group: r.get(first)?,
                requests: r.get(first + 1)?,
                cost: r.get(first + 2)?,
                avoided: r.get(first + 3)?,
                prompt_tokens: r.get(first + 4)?,
                completion_tokens: r.get(first + 5)?,
                errors: r.get(first + 6)?,
                cache_hits: r.get(first + 7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn spend(
        &mut self,
        group_by: &GroupBy,
        filter: &SpendFilter,
        bucket: Option<Bucket>,
        from_ms: i64,
        to_ms: i64,
        scan: bool,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        if scan {
            let mut run = |sql: &query::Sql, bucketed: bool| self.run_spend(sql, bucketed);
            let sql =
                query::select_spend(Dialect::Sqlite, group_by, filter, bucket, from_ms, to_ms);
            let raw = run(&sql, bucket.is_some())?;
            return rollup::from_raw(raw, bucket.is_some());
        }
        let marks = self.marks()?;
        let mut run = |sql: &query::Sql, bucketed: bool| self.run_spend(sql, bucketed);
        rollup::spend(
            Dialect::Sqlite,
            &mut run,
            group_by,
            filter,
            bucket,
            from_ms,
            to_ms,
            &marks,
        )
    }

    /// The rollups' mark as this connection sees it now.
    fn marks(&mut self) -> Result<Marks, StoreError> {
        read_marks(&self.conn)
    }

    /// Builds the rollups until the mark covers rows below `to_ms` (before a
    /// retention delete, which must not take rows the rollups lack).
    fn roll_up_before_delete(&mut self, to_ms: i64) -> Result<i64, StoreError> {
        let limit = rollup_build::mark_covering(to_ms.saturating_sub(1));
        while self.roll_up(limit)? {}
        Ok(self.marks()?.minute().unwrap_or(i64::MIN))
    }

    fn query_rows(&mut self, sql: &query::Sql) -> Result<Vec<LogRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&sql.text)?;
        let raws = stmt
            .query_map(rusqlite::params_from_iter(sql.params.iter()), raw_row)?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter().map(RawRow::into_row).collect()
    }
}

impl SqliteStore {
    /// Deletes the oldest `?2` rows matching `condition`, in (time, id) order.
    fn delete_where(&mut self, condition: &str, params: &[&dyn ToSql]) -> Result<u64, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            &format!(
                "DELETE FROM requests WHERE id IN \
                 (SELECT id FROM requests WHERE {condition} ORDER BY time_ms, id LIMIT ?2)"
            ),
            params,
        )?;
        tx.commit()?;
        Ok(n as u64)
    }
}

/// The marks as `conn` sees them (in its transaction, if one is open).
fn read_marks(conn: &Connection) -> Result<Marks, StoreError> {
    rollup_build::read_marks(&mut BuildConn(conn), Dialect::Sqlite)
}

/// A connection (in its transaction) as the rollup build's.
struct BuildConn<'c>(&'c Connection);

impl rollup_build::BuildTx for BuildConn<'_> {
    fn execute(&mut self, sql: &query::Sql) -> Result<u64, StoreError> {
        Ok(self
            .0
            .prepare_cached(&sql.text)?
            .execute(rusqlite::params_from_iter(sql.params.iter()))? as u64)
    }

    fn query_int(&mut self, sql: &query::Sql) -> Result<Option<i64>, StoreError> {
        Ok(self
            .0
            .prepare_cached(&sql.text)?
            .query_row(rusqlite::params_from_iter(sql.params.iter()), |r| r.get(0))
            .optional()?
            .flatten())
    }

    fn query_text(&mut self, sql: &query::Sql) -> Result<Option<String>, StoreError> {
        Ok(self
            .0
            .prepare_cached(&sql.text)?
            .query_row(rusqlite::params_from_iter(sql.params.iter()), |r| r.get(0))
            .optional()?
            .flatten())
    }
}

const UPSERT_DIM: &str = "INSERT INTO rollup_dims (tier, dim, bucket_ms, value, requests, \
    errors, cache_hits, cost_picodollars, avoided_picodollars, prompt_tokens, \
    completion_tokens) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
    ON CONFLICT (tier, dim, bucket_ms, value) DO UPDATE SET \
    requests = requests + excluded.requests, errors = errors + excluded.errors, \
    cache_hits = cache_hits + excluded.cache_hits, \
    cost_picodollars = add_picodollars(cost_picodollars, excluded.cost_picodollars), \
    avoided_picodollars = add_picodollars(avoided_picodollars, excluded.avoided_picodollars), \
    prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
    completion_tokens = completion_tokens + excluded.completion_tokens";

/// Upserts a batch's rollups (in the batch's transaction).
fn upsert_rollups(
    tx: &rusqlite::Transaction<'_>,
    batch: &RollupBatch<'_>,
) -> Result<(), StoreError> {
    let mut up = tx.prepare_cached(UPSERT_ROLLUP)?;
    let mut cost = String::with_capacity(48);
    let mut avoided = String::with_capacity(48);
    for (k, m) in &batch.rollups {
        cost.clear();
        let _ = write!(cost, "{}", m.cost);
        avoided.clear();
        let _ = write!(avoided, "{}", m.avoided);
        up.execute(params![
            k.tier.ms(),
            k.bucket_ms,
            k.e.key.as_ref(),
            k.e.team.as_ref(),
            k.e.customer.as_ref(),
            k.e.provider.as_ref(),
            k.e.model.as_ref(),
            m.requests,
            m.errors,
            m.cache_hits,
            cost.as_str(),
            avoided.as_str(),
            m.prompt_tokens,
            m.completion_tokens,
        ])?;
    }
    let mut up = tx.prepare_cached(UPSERT_DIM)?;
    for (k, m) in &batch.dims {
        cost.clear();
        let _ = write!(cost, "{}", m.cost);
        avoided.clear();
        let _ = write!(avoided, "{}", m.avoided);
        up.execute(params![
            k.tier.ms(),
            k.dim.as_ref(),
            k.bucket_ms,
            k.value.as_ref(),
            m.requests,
            m.errors,
            m.cache_hits,
            cost.as_str(),
            avoided.as_str(),
            m.prompt_tokens,
            m.completion_tokens,
        ])?;
    }
    Ok(())
}

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: r.get(0)?,
        time_ms: r.get(1)?,
        key: r.get(2)?,
        team: r.get(3)?,
        customer: r.get(4)?,
        provider: r.get(5)?,
        model: r.get(6)?,
        endpoint: r.get(7)?,
        status: r.get(8)?,
        tokens: [r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?, r.get(13)?],
        cost: r.get(14)?,
        price_version: r.get(15)?,
        estimated: r.get(16)?,
        ttfb_us: r.get(17)?,
        total_us: r.get(18)?,
        cache_status: r.get(19)?,
        stream: r.get(20)?,
        tags: r.get(21)?,
        prompt_text: r.get(22)?,
        completion_text: r.get(23)?,
        avoided: r.get(24)?,
    })
}

impl LogStore for SqliteStore {
    fn insert_batch(&mut self, rows: &[LogRow], pace: &mut dyn FnMut()) -> Result<u64, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserted = 0;
        let mut batch = RollupBatch::default();
        // Read in the write transaction: no build can pass between this and
        // the commit.
        let marks = read_marks(&tx)?;
        {
            let mut insert_row = tx.prepare_cached(INSERT_ROW)?;
            // Reused for every row: no allocation per row for the
            // columns that are formatted here.
            let mut cost = String::with_capacity(48);
            let mut avoided = String::with_capacity(48);
            let mut tags = String::with_capacity(256);
            for row in rows {
                cost.clear();
                // Writing into a String cannot fail.
                let _ = write!(cost, "{}", row.cost_picodollars);
                avoided.clear();
                let _ = write!(avoided, "{}", row.avoided_picodollars);
                tags.clear();
                write_tags_json(&mut tags, &row.tags, false);
                // 0 for a duplicate id (a replay), which is ignored.
                let n = insert_row.execute(params![
                    row.id,
                    row.time_ms,
                    row.key,
                    row.team,
                    row.customer,
                    row.provider,
                    row.model,
                    row.endpoint.as_ref(),
                    row.status,
                    clamp_i64(row.prompt_tokens),
                    clamp_i64(row.completion_tokens),
                    clamp_i64(row.cached_tokens),
                    clamp_i64(row.cache_write_tokens),
                    clamp_i64(row.reasoning_tokens),
                    cost.as_str(),
                    row.price_version,
                    row.estimated,
                    row.ttfb_us.map(clamp_i64),
                    clamp_i64(row.total_us),
                    row.cache_status.as_str(),
                    row.stream,
                    tags.as_str(),
                    row.prompt_text,
                    row.completion_text,
                    avoided.as_str(),
                ])?;
                if n == 1 {
                    inserted += 1;
                    if marks.is_late_any(row.time_ms) {
                        batch.add(row, Cow::Borrowed, &marks)?;
                    }
                }
                pace();
            }
            if !batch.is_empty() {
                upsert_rollups(&tx, &batch)?;
            }
        }
        tx.commit()?;
        Ok(inserted)
    }

    fn roll_up(&mut self, limit_ms: i64) -> Result<bool, StoreError> {
        if self.built_to.is_some_and(|d| d >= limit_ms) {
            return Ok(false);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(step) = rollup_build::step(&mut BuildConn(&tx), Dialect::Sqlite, limit_ms)? else {
            let done = read_marks(&tx)?.minute();
            drop(tx);
            self.built_to = done;
            return Ok(false);
        };
        tx.commit()?;
        self.built_to = Some(step.done_ms);
        Ok(step.more)
    }

    fn spend_series_tags_summed(
        &mut self,
        bucket: Bucket,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        let marks = self.marks()?;
        let mut run = |sql: &query::Sql, bucketed: bool| self.run_spend(sql, bucketed);
        rollup::spend_tags_summed(Dialect::Sqlite, &mut run, bucket, from_ms, to_ms, &marks)
    }

    fn spend_tag_bounds(
        &mut self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, i128)>, StoreError> {
        let marks = self.marks()?;
        let mut run = |sql: &query::Sql, bucketed: bool| self.run_spend(sql, bucketed);
        rollup::tag_bounds(Dialect::Sqlite, &mut run, from_ms, to_ms, &marks)
    }

    fn spend_series_of_groups(
        &mut self,
        group_by: &GroupBy,
        groups: &[String],
        bucket: Bucket,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Option<Vec<SeriesPoint>>, StoreError> {
        let marks = self.marks()?;
        let mut run = |sql: &query::Sql, bucketed: bool| self.run_spend(sql, bucketed);
        rollup::spend_of_groups(
            Dialect::Sqlite,
            &mut run,
            group_by,
            groups,
            bucket,
            from_ms,
            to_ms,
            &marks,
        )
    }

    fn spend_totals_tag_pairs(
        &mut self,
        key: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SpendTotal>, StoreError> {
        let marks = self.marks()?;
        let mut run = |sql: &query::Sql, bucketed: bool| self.run_spend(sql, bucketed);
        Ok(rollup::totals(rollup::tag_pairs(
            Dialect::Sqlite,
            &mut run,
            key,
            from_ms,
            to_ms,
            &marks,
        )?))
    }

    fn begin_read(&mut self) -> Result<(), StoreError> {
        // Deferred: the snapshot is taken at the first read (WAL).
        Ok(self.conn.execute_batch("BEGIN DEFERRED")?)
    }

    fn end_read(&mut self) -> Result<(), StoreError> {
        Ok(self.conn.execute_batch("COMMIT")?)
    }

    fn checkpoint_if_due(&mut self) -> Result<(), StoreError> {
        if self.wal_frames.load(Relaxed) >= self.checkpoint_frames {
            let (frames, done) = self
                .conn
                .wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::PASSIVE)?;
            // A reader holding an old snapshot can leave frames behind; the
            // next due check tries again.
            self.wal_frames.store(frames - done, Relaxed);
        }
        Ok(())
    }

    fn query_logs(&mut self, filter: &LogFilter) -> Result<Vec<LogRow>, StoreError> {
        self.query_rows(&query::select_logs(Dialect::Sqlite, filter))
    }

    fn query_log_page(&mut self, filter: &LogFilter) -> Result<LogPage, StoreError> {
        let boundary = if store::page_is_bounded(filter) {
            let sql = query::select_scan_boundary(Dialect::Sqlite, filter, LOG_QUERY_SCAN_ROWS_MAX);
            self.conn
                .prepare_cached(&sql.text)?
                .query_row(rusqlite::params_from_iter(sql.params.iter()), |r| {
                    Ok(LogCursor {
                        time_ms: r.get(0)?,
                        id: r.get(1)?,
                    })
                })
                .optional()?
        } else {
            None
        };
        let rows = self.query_rows(&query::select_logs_above(
            Dialect::Sqlite,
            filter,
            boundary.as_ref(),
        ))?;
        Ok(store::log_page(filter, rows, boundary))
    }

    fn log_by_id(&mut self, id: &str) -> Result<Option<LogRow>, StoreError> {
        Ok(self
            .query_rows(&query::select_log_by_id(Dialect::Sqlite, id))?
            .pop())
    }

    fn spend_series_where(
        &mut self,
        group_by: &GroupBy,
        filter: &SpendFilter,
        bucket: Bucket,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        self.spend(group_by, filter, Some(bucket), from_ms, to_ms, false)
    }

    fn spend_totals_where(
        &mut self,
        group_by: &GroupBy,
        filter: &SpendFilter,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SpendTotal>, StoreError> {
        Ok(rollup::totals(
            self.spend(group_by, filter, None, from_ms, to_ms, false)?,
        ))
    }

    fn spend_scan(
        &mut self,
        group_by: &GroupBy,
        filter: &SpendFilter,
        bucket: Option<Bucket>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        self.spend(group_by, filter, bucket, from_ms, to_ms, true)
    }

    fn delete_minute_rollups_before(
        &mut self,
        cutoff_ms: i64,
        rows_max: u64,
    ) -> Result<u64, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Never a minute the hour tier has not summed yet.
        let cutoff_ms = cutoff_ms.min(read_marks(&tx)?.complete_to(Tier::Hour));
        // Only bucket starts, so the primary key's (tier, bucket_ms) prefix
        // finds them.
        let mut n = tx.execute(
            "DELETE FROM rollups WHERE (tier, bucket_ms, key_name, team, customer, provider, \
             model) IN (SELECT tier, bucket_ms, key_name, team, customer, provider, model \
             FROM rollups WHERE tier = ?1 AND bucket_ms < ?2 ORDER BY bucket_ms LIMIT ?3)",
            params![Tier::Minute.ms(), cutoff_ms, clamp_i64(rows_max)],
        )? as u64;
        // One dimension at a time, each a range of the primary key.
        let dims =
            rollup_build::list_dims(&mut BuildConn(&tx), Dialect::Sqlite, Tier::Minute, "", None)?;
        for dim in dims {
            let left = rows_max.saturating_sub(n);
            if left == 0 {
                break;
            }
            n += tx.execute(
                "DELETE FROM rollup_dims WHERE (tier, dim, bucket_ms, value) IN \
                 (SELECT tier, dim, bucket_ms, value FROM rollup_dims \
                 WHERE tier = ?1 AND dim = ?2 AND bucket_ms < ?3 ORDER BY bucket_ms LIMIT ?4)",
                params![Tier::Minute.ms(), dim, cutoff_ms, clamp_i64(left)],
            )? as u64;
        }
        tx.commit()?;
        Ok(n)
    }

    fn delete_before(&mut self, cutoff_ms: i64, rows_max: u64) -> Result<u64, StoreError> {
        let built = self.roll_up_before_delete(cutoff_ms)?;
        self.delete_where(
            "time_ms < ?1",
            params![cutoff_ms.min(built), clamp_i64(rows_max)],
        )
    }

    fn delete_beyond(&mut self, keep_rows: u64, rows_max: u64) -> Result<u64, StoreError> {
        let newest_to_drop: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT time_ms, id FROM requests ORDER BY time_ms DESC, id DESC LIMIT 1 OFFSET ?1",
                [clamp_i64(keep_rows)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((time_ms, id)) = newest_to_drop else {
            return Ok(0);
        };
        let built = self.roll_up_before_delete(time_ms.saturating_add(1))?;
        self.delete_where(
            "(time_ms < ?1 OR (time_ms = ?1 AND id <= ?3)) AND time_ms < ?4",
            params![time_ms, clamp_i64(rows_max), id, built],
        )
    }

    fn count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))?;
        Ok(n as u64)
    }
}
