//! The PostgreSQL sink (`[log] sink = "postgres"`), for gateways that share
//! one request log.
//!
//! The synchronous `postgres` crate, used on the log-writer thread and on
//! control-plane threads only (it runs a small tokio runtime of its own
//! inside the call; never on a worker). A batch is one transaction: `COPY`
//! into session-local staging tables (the fastest way in), then
//! `INSERT .. SELECT .. ON CONFLICT DO NOTHING` into the real tables, so a
//! replayed row is ignored. Sessions get a connect timeout
//! ([`LOG_PG_CONNECT_TIMEOUT`] unless the URL sets one) and a statement
//! timeout ([`LOG_PG_STATEMENT_TIMEOUT`]), so a hung server cannot hold the
//! writer forever. Connections are plain TCP (no TLS yet).
//!
//! PostgreSQL text cannot hold a NUL character, so a NUL in any text is
//! stored as U+FFFD rather than failing the batch (in a tag too: the `tags`
//! JSON holds U+FFFD, not `\u0000`, which PostgreSQL's JSON functions refuse).
//!
//! The schema is described in [`store`]; a tag is read out of
//! `requests.tags` with `tags::json ->> key`, the key bound as a parameter.

use std::borrow::Cow;
use std::io::Write;

use postgres::types::ToSql;
use postgres::{Client, NoTls};

use super::query::{
    self, Bucket, Dialect, GroupBy, LogCursor, LogFilter, LogPage, Param, SeriesPoint, SpendFilter,
    SpendTotal,
};
use super::rollup::{self, Marks, RollupBatch, Tier};
use super::rollup_build::{self, ROLLUP_LOCK};
use super::row::LogRow;
use super::store::SCHEMA_VERSION;
use super::store::{self, clamp_i64, write_tags_json, LogStore, RawRow, RawSpend, StoreError};
use super::{LOG_PG_CONNECT_TIMEOUT, LOG_PG_STATEMENT_TIMEOUT, LOG_QUERY_SCAN_ROWS_MAX};

const SCHEMA: &str = r#"
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
    completion_text TEXT,
    avoided_picodollars NUMERIC(39, 0) NOT NULL DEFAULT 0
);
CREATE INDEX requests_time ON requests (time_ms, id);
CREATE INDEX requests_key_time ON requests (key_name, time_ms);
"#;

/// Version 4: the rollups (`reqlog::rollup`); text compared bytewise.
const ROLLUP_SCHEMA: &str = r#"
CREATE TABLE rollups (
    tier BIGINT NOT NULL,
    bucket_ms BIGINT NOT NULL,
    key_name TEXT COLLATE "C" NOT NULL,
    team TEXT COLLATE "C" NOT NULL,
    customer TEXT COLLATE "C" NOT NULL,
    provider TEXT COLLATE "C" NOT NULL,
    model TEXT COLLATE "C" NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    cache_hits BIGINT NOT NULL,
    cost_picodollars NUMERIC(39, 0) NOT NULL,
    avoided_picodollars NUMERIC(39, 0) NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (tier, bucket_ms, key_name, team, customer, provider, model)
);
CREATE TABLE rollup_tags (
    tier BIGINT NOT NULL,
    tag_key TEXT COLLATE "C" NOT NULL,
    bucket_ms BIGINT NOT NULL,
    tag_value TEXT COLLATE "C" NOT NULL,
    key_name TEXT COLLATE "C" NOT NULL,
    team TEXT COLLATE "C" NOT NULL,
    customer TEXT COLLATE "C" NOT NULL,
    provider TEXT COLLATE "C" NOT NULL,
    model TEXT COLLATE "C" NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    cache_hits BIGINT NOT NULL,
    cost_picodollars NUMERIC(39, 0) NOT NULL,
    avoided_picodollars NUMERIC(39, 0) NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (tier, tag_key, bucket_ms, tag_value, key_name, team, customer, provider, model)
);
"#;

/// Version 6: how `tier` and `dim` of `rollup_dims` go together. Without
/// it the planner multiplies their selectivities as if independent, guessed
/// 416,000 rows for one dimension's 34,000 day rows at 5.6 million log rows
/// and read the whole table in parallel (0.7 s against 28 ms).
const STATISTICS_6: &str = "CREATE STATISTICS IF NOT EXISTS rollup_dims_tier_dim \
    (dependencies, mcv) ON tier, dim FROM rollup_dims";

/// Version 5: the rollups by one dimension and the mark of the built
/// minutes (`reqlog::rollup_build`).
const DIMS_SCHEMA: &str = r#"
CREATE TABLE rollup_dims (
    tier BIGINT NOT NULL,
    dim TEXT COLLATE "C" NOT NULL,
    bucket_ms BIGINT NOT NULL,
    value TEXT COLLATE "C" NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    cache_hits BIGINT NOT NULL,
    cost_picodollars NUMERIC(39, 0) NOT NULL,
    avoided_picodollars NUMERIC(39, 0) NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (tier, dim, bucket_ms, value)
);
-- One value's buckets in order: a key's burn-down, the top groups of a
-- series (a range of the primary key would pass every other value).
CREATE INDEX rollup_dims_value ON rollup_dims (tier, dim, value, bucket_ms);
CREATE TABLE rollup_marks (
    tier BIGINT PRIMARY KEY,
    done_ms BIGINT NOT NULL
);
"#;

/// Version 3 to 4: the rollups of the rows already stored.
const BACKFILL_3_TO_4: &str = "
INSERT INTO rollups SELECT t.w, r.time_ms - (((r.time_ms % t.w) + t.w) % t.w), r.key_name,
    COALESCE(r.team, ''), COALESCE(r.customer, ''), r.provider, r.model, COUNT(*),
    SUM(CASE WHEN r.status >= 400 THEN 1 ELSE 0 END),
    SUM(CASE WHEN r.cache_status IN ('hit', 'semantic-hit') THEN 1 ELSE 0 END),
    SUM(r.cost_picodollars), SUM(r.avoided_picodollars),
    SUM(r.prompt_tokens), SUM(r.completion_tokens)
FROM requests r, (VALUES (60000::BIGINT), (3600000), (86400000)) t(w)
GROUP BY 1, 2, 3, 4, 5, 6, 7;
INSERT INTO rollup_tags SELECT t.w, j.key, r.time_ms - (((r.time_ms % t.w) + t.w) % t.w),
    j.value, r.key_name, COALESCE(r.team, ''), COALESCE(r.customer, ''), r.provider, r.model,
    COUNT(*), SUM(CASE WHEN r.status >= 400 THEN 1 ELSE 0 END),
    SUM(CASE WHEN r.cache_status IN ('hit', 'semantic-hit') THEN 1 ELSE 0 END),
    SUM(r.cost_picodollars), SUM(r.avoided_picodollars),
    SUM(r.prompt_tokens), SUM(r.completion_tokens)
FROM requests r, json_each_text(r.tags::json) j, (VALUES (3600000::BIGINT), (86400000)) t(w)
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9;
";

/// The measures' update of both rollup upserts.
const ROLLUP_ADD: &str = "requests = x.requests + EXCLUDED.requests, \
    errors = x.errors + EXCLUDED.errors, cache_hits = x.cache_hits + EXCLUDED.cache_hits, \
    cost_picodollars = x.cost_picodollars + EXCLUDED.cost_picodollars, \
    avoided_picodollars = x.avoided_picodollars + EXCLUDED.avoided_picodollars, \
    prompt_tokens = x.prompt_tokens + EXCLUDED.prompt_tokens, \
    completion_tokens = x.completion_tokens + EXCLUDED.completion_tokens";

/// Version 1 to 2: tags live only in `requests.tags` (dropping the table
/// drops its index and foreign key).
const MIGRATE_1_TO_2: &str = "DROP TABLE IF EXISTS request_tags";

/// Version 2 to 3: the spend a cache hit avoided, exact like
/// `cost_picodollars`; rows from before read 0 (a constant default: no
/// rewrite of the table).
const MIGRATE_2_TO_3: &str =
    "ALTER TABLE requests ADD COLUMN avoided_picodollars NUMERIC(39, 0) NOT NULL DEFAULT 0";

/// The `requests` columns in COPY order.
const ROW_COLUMNS: &str = "id, time_ms, key_name, team, customer, provider, model, endpoint, \
    status, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, \
    reasoning_tokens, cost_picodollars, price_version, estimated, ttfb_us, total_us, \
    cache_status, stream, tags, prompt_text, completion_text, avoided_picodollars";

/// Serialises schema creation between sessions (the writer and a reader may
/// start together): an arbitrary constant, "bursar" in ASCII.
const MIGRATE_LOCK: i64 = 0x6275_7273_6172;

/// A session with the request log's PostgreSQL database.
pub struct PostgresStore {
    client: Client,
    staging_ready: bool,
    /// The mark this session last built or read to (a hint that skips the
    /// build's transaction while no minute has closed).
    built_to: Option<i64>,
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> StoreError {
        // SQLSTATE classes 22 (data exception), 23 (integrity constraint) and
        // 54 (program limit exceeded) are about the rows; anything else
        // (connection, timeout, shutdown, permissions) may pass.
        let data = e
            .code()
            .is_some_and(|c| matches!(&c.code()[..2], "22" | "23" | "54"));
        // The crate's Display of a server error is only "db error".
        let text = match e.as_db_error() {
            Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
            None => e.to_string(),
        };
        if data {
            StoreError::Data(text)
        } else {
            StoreError::Unavailable(text)
        }
    }
}

impl PostgresStore {
    /// Connects to `url` and creates the schema if the database has none.
    pub fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(LOG_PG_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("bursar-log");
        }
        let mut client = config.connect(NoTls)?;
        // Custom plans: every query here is a range of times or buckets
        // whose width the parameters decide (a generic plan, chosen after
        // five runs of a prepared statement, guesses thousands of rows for a
        // minute's dozens and plans a parallel aggregate: measured at 10
        // million rows, 0.1-0.2 s for a rollup build step of 231 rows).
        // No JIT: every statement here runs for milliseconds, and the
        // planner's guess of 100 rows per `json_each_text` call put the
        // tags' minute build over `jit_optimize_above_cost`, where compiling
        // it took 0.4 s (50 inlining, 198 optimising, 153 emitting) to
        // execute in 3 ms: the build fell behind at 2,400 rows/s
        // (docs/benchmarks.md).
        client.batch_execute(&format!(
            "SET statement_timeout = {}; SET plan_cache_mode = force_custom_plan; \
             SET jit = off",
            LOG_PG_STATEMENT_TIMEOUT.as_millis()
        ))?;
        let mut store = PostgresStore {
            client,
            staging_ready: false,
            built_to: None,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let mut tx = self.client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
        let found: Option<i64> = tx
            .query_one("SELECT MAX(version) FROM schema_version", &[])?
            .try_get(0)
            .map_err(corrupt)?;
        match found {
            None => {
                tx.batch_execute(SCHEMA)?;
                tx.batch_execute(ROLLUP_SCHEMA)?;
                tx.batch_execute("DROP TABLE rollup_tags")?;
                tx.batch_execute(DIMS_SCHEMA)?;
                tx.batch_execute(STATISTICS_6)?;
                tx.execute(
                    "INSERT INTO schema_version (version) VALUES ($1)",
                    &[&SCHEMA_VERSION],
                )?;
            }
            Some(v) if v > SCHEMA_VERSION => return Err(StoreError::SchemaTooNew { found: v }),
            Some(v) => {
                if v < 2 {
                    tx.batch_execute(MIGRATE_1_TO_2)?;
                }
                if v < 3 {
                    tx.batch_execute(MIGRATE_2_TO_3)?;
                }
                if v < 4 {
                    tx.batch_execute(ROLLUP_SCHEMA)?;
                    tx.batch_execute(BACKFILL_3_TO_4)?;
                }
                if v < 5 {
                    tx.batch_execute(DIMS_SCHEMA)?;
                    tx.batch_execute(&rollup_build::backfill_4_to_5(Dialect::Postgres))?;
                }
                if v < 6 {
                    tx.batch_execute(STATISTICS_6)?;
                    tx.batch_execute(&rollup_build::backfill_5_to_6(Dialect::Postgres))?;
                    if let Some(mark) = read_marks(&mut tx)?.minute() {
                        let mut b = BuildClient(&mut tx);
                        for sql in rollup_build::backfill_5_to_6_minutes(Dialect::Postgres, mark) {
                            rollup_build::BuildTx::execute(&mut b, &sql)?;
                        }
                    }
                }
                if v < 7 {
                    let marks = read_marks(&mut tx)?;
                    if let Some(minute) = marks.minute() {
                        rollup_build::close_tiers(
                            &mut BuildClient(&mut tx),
                            Dialect::Postgres,
                            &marks,
                            minute,
                        )?;
                    }
                }
                if v < SCHEMA_VERSION {
                    tx.execute("UPDATE schema_version SET version = $1", &[&SCHEMA_VERSION])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn query_params(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
        params
            .iter()
            .map(|p| match p {
                Param::Int(i) => i as &(dyn ToSql + Sync),
                Param::Text(s) => s as &(dyn ToSql + Sync),
            })
            .collect()
    }

    fn run_spend(&mut self, sql: &query::Sql, bucketed: bool) -> Result<Vec<RawSpend>, StoreError> {
        let rows = self
            .client
            .query(sql.text.as_str(), &Self::query_params(&sql.params))?;
        let first = usize::from(bucketed);
        rows.iter()
            .map(|r| {
                Ok(RawSpend {
                    bucket_start_ms: if bucketed { r.try_get(0)? } else { 0 },
                    group: r.try_get(first)?,
                    requests: r.try_get(first + 1)?,
                    cost: r.try_get(first + 2)?,
                    avoided: r.try_get(first + 3)?,
                    prompt_tokens: r.try_get(first + 4)?,
                    completion_tokens: r.try_get(first + 5)?,
                    errors: r.try_get(first + 6)?,
                    cache_hits: r.try_get(first + 7)?,
                })
            })
            .collect::<Result<_, postgres::Error>>()
            .map_err(corrupt)
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
            let sql =
                query::select_spend(Dialect::Postgres, group_by, filter, bucket, from_ms, to_ms);
            let raw = self.run_spend(&sql, bucket.is_some())?;
            return rollup::from_raw(raw, bucket.is_some());
        }
        let marks = read_marks(&mut self.client)?;
        let mut run = |sql: &query::Sql, bucketed: bool| self.run_spend(sql, bucketed);
        rollup::spend(
            Dialect::Postgres,
            &mut run,
            group_by,
            filter,
            bucket,
            from_ms,
            to_ms,
            &marks,
        )
    }

    /// Builds the rollups until the mark covers rows below `to_ms` (before a
    /// retention delete, which must not take rows the rollups lack); returns
    /// the mark.
    fn roll_up_before_delete(&mut self, to_ms: i64) -> Result<i64, StoreError> {
        let limit = rollup_build::mark_covering(to_ms.saturating_sub(1));
        while self.roll_up(limit)? {}
        Ok(read_marks(&mut self.client)?.minute().unwrap_or(i64::MIN))
    }

    fn query_rows(&mut self, sql: &query::Sql) -> Result<Vec<LogRow>, StoreError> {
        let rows = self
            .client
            .query(sql.text.as_str(), &Self::query_params(&sql.params))?;
        rows.iter()
            .map(|r| raw_row(r).map_err(corrupt)?.into_row())
            .collect()
    }
}

/// The marks as `client` sees them (in its transaction, if it is one).
fn read_marks(client: &mut impl postgres::GenericClient) -> Result<Marks, StoreError> {
    rollup_build::read_marks(&mut BuildClient(client), Dialect::Postgres)
}

/// A client (or its transaction) as the rollup build's.
struct BuildClient<'c, C: postgres::GenericClient>(&'c mut C);

impl<C: postgres::GenericClient> rollup_build::BuildTx for BuildClient<'_, C> {
    fn execute(&mut self, sql: &query::Sql) -> Result<u64, StoreError> {
        Ok(self
            .0
            .execute(sql.text.as_str(), &PostgresStore::query_params(&sql.params))?)
    }

    fn query_int(&mut self, sql: &query::Sql) -> Result<Option<i64>, StoreError> {
        match self
            .0
            .query_opt(sql.text.as_str(), &PostgresStore::query_params(&sql.params))?
        {
            Some(r) => r.try_get(0).map_err(corrupt),
            None => Ok(None),
        }
    }

    fn query_text(&mut self, sql: &query::Sql) -> Result<Option<String>, StoreError> {
        match self
            .0
            .query_opt(sql.text.as_str(), &PostgresStore::query_params(&sql.params))?
        {
            Some(r) => r.try_get(0).map_err(corrupt),
            None => Ok(None),
        }
    }
}

/// A text as PostgreSQL stores it: NUL (which its text cannot hold) as U+FFFD.
fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// The measures of a batch's rollup rows as arrays for `unnest`.
#[derive(Default)]
struct MeasureArrays {
    requests: Vec<i64>,
    errors: Vec<i64>,
    cache_hits: Vec<i64>,
    cost: Vec<String>,
    avoided: Vec<String>,
    prompt: Vec<i64>,
    completion: Vec<i64>,
}

impl MeasureArrays {
    fn push(&mut self, m: &rollup::Measures) {
        self.requests.push(m.requests);
        self.errors.push(m.errors);
        self.cache_hits.push(m.cache_hits);
        self.cost.push(m.cost.to_string());
        self.avoided.push(m.avoided.to_string());
        self.prompt.push(m.prompt_tokens);
        self.completion.push(m.completion_tokens);
    }
}

/// Upserts a batch's rollups, one statement per table (in the batch's
/// transaction).
fn upsert_rollups(
    tx: &mut postgres::Transaction<'_>,
    batch: &RollupBatch<'_>,
) -> Result<(), StoreError> {
    if !batch.rollups.is_empty() {
        let (mut tier, mut bucket) = (Vec::new(), Vec::new());
        let mut ents: [Vec<&str>; 5] = Default::default();
        let mut m = MeasureArrays::default();
        for (k, v) in &batch.rollups {
            tier.push(k.tier.ms());
            bucket.push(k.bucket_ms);
            for (col, s) in ents.iter_mut().zip([
                &k.e.key,
                &k.e.team,
                &k.e.customer,
                &k.e.provider,
                &k.e.model,
            ]) {
                col.push(s.as_ref());
            }
            m.push(v);
        }
        tx.execute(
            &format!(
                "INSERT INTO rollups AS x (tier, bucket_ms, key_name, team, customer, provider, \
                 model, requests, errors, cache_hits, cost_picodollars, avoided_picodollars, \
                 prompt_tokens, completion_tokens) \
                 SELECT a, b, c, d, e, f, g, h, i, j, k::NUMERIC, l::NUMERIC, m, n FROM \
                 unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], \
                 $6::TEXT[], $7::TEXT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::TEXT[], \
                 $12::TEXT[], $13::BIGINT[], $14::BIGINT[]) AS u(a, b, c, d, e, f, g, h, i, j, \
                 k, l, m, n) \
                 ON CONFLICT (tier, bucket_ms, key_name, team, customer, provider, model) \
                 DO UPDATE SET {ROLLUP_ADD}"
            ),
            &[
                &tier,
                &bucket,
                &ents[0],
                &ents[1],
                &ents[2],
                &ents[3],
                &ents[4],
                &m.requests,
                &m.errors,
                &m.cache_hits,
                &m.cost,
                &m.avoided,
                &m.prompt,
                &m.completion,
            ],
        )?;
    }
    if !batch.dims.is_empty() {
        let (mut tier, mut bucket) = (Vec::new(), Vec::new());
        let (mut dim, mut value) = (Vec::new(), Vec::new());
        let mut m = MeasureArrays::default();
        for (k, v) in &batch.dims {
            tier.push(k.tier.ms());
            dim.push(k.dim.as_ref());
            bucket.push(k.bucket_ms);
            value.push(k.value.as_ref());
            m.push(v);
        }
        tx.execute(
            &format!(
                "INSERT INTO rollup_dims AS x (tier, dim, bucket_ms, value, requests, errors, \
                 cache_hits, cost_picodollars, avoided_picodollars, prompt_tokens, \
                 completion_tokens) \
                 SELECT a, b, c, d, e, f, g, h::NUMERIC, i::NUMERIC, j, k FROM \
                 unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[], \
                 $6::BIGINT[], $7::BIGINT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[], \
                 $11::BIGINT[]) AS u(a, b, c, d, e, f, g, h, i, j, k) \
                 ON CONFLICT (tier, dim, bucket_ms, value) DO UPDATE SET {ROLLUP_ADD}"
            ),
            &[
                &tier,
                &dim,
                &bucket,
                &value,
                &m.requests,
                &m.errors,
                &m.cache_hits,
                &m.cost,
                &m.avoided,
                &m.prompt,
                &m.completion,
            ],
        )?;
    }
    Ok(())
}

fn corrupt(e: postgres::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn raw_row(r: &postgres::Row) -> Result<RawRow, postgres::Error> {
    Ok(RawRow {
        id: r.try_get(0)?,
        time_ms: r.try_get(1)?,
        key: r.try_get(2)?,
        team: r.try_get(3)?,
        customer: r.try_get(4)?,
        provider: r.try_get(5)?,
        model: r.try_get(6)?,
        endpoint: r.try_get(7)?,
        status: r.try_get(8)?,
        tokens: [
            r.try_get(9)?,
            r.try_get(10)?,
            r.try_get(11)?,
            r.try_get(12)?,
            r.try_get(13)?,
        ],
        cost: r.try_get(14)?,
        price_version: r.try_get(15)?,
        estimated: r.try_get(16)?,
        ttfb_us: r.try_get(17)?,
        total_us: r.try_get(18)?,
        cache_status: r.try_get(19)?,
        stream: r.try_get(20)?,
        tags: r.try_get(21)?,
        prompt_text: r.try_get(22)?,
        completion_text: r.try_get(23)?,
        avoided: r.try_get(24)?,
    })
}

/// Appends `s` as a COPY text-format field: backslash, tab, newline and
/// carriage return escaped; NUL (which PostgreSQL text cannot hold) as U+FFFD.
fn copy_text(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => out.extend_from_slice("\u{fffd}".as_bytes()),
            _ => out.push(b),
        }
    }
}

fn copy_opt_text(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => copy_text(out, s),
        None => out.extend_from_slice(b"\\N"),
    }
}

fn copy_display(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{v}");
}

fn copy_bool(out: &mut Vec<u8>, b: bool) {
    out.push(if b { b't' } else { b'f' });
}

/// One row of `requests` in COPY text format, in [`ROW_COLUMNS`] order;
/// `scratch` is reused for the tags JSON.
fn copy_row(out: &mut Vec<u8>, scratch: &mut String, row: &LogRow) {
    copy_text(out, &row.id);
    out.push(b'\t');
    copy_display(out, row.time_ms);
    out.push(b'\t');
    copy_text(out, &row.key);
    out.push(b'\t');
    copy_opt_text(out, row.team.as_deref());
    out.push(b'\t');
    copy_opt_text(out, row.customer.as_deref());
    out.push(b'\t');
    copy_text(out, &row.provider);
    out.push(b'\t');
    copy_text(out, &row.model);
    out.push(b'\t');
    copy_text(out, &row.endpoint);
    out.push(b'\t');
    copy_display(out, row.status);
    for n in [
        row.prompt_tokens,
        row.completion_tokens,
        row.cached_tokens,
        row.cache_write_tokens,
        row.reasoning_tokens,
    ] {
        out.push(b'\t');
        copy_display(out, clamp_i64(n));
    }
    out.push(b'\t');
    copy_display(out, row.cost_picodollars);
    out.push(b'\t');
    copy_text(out, &row.price_version);
    out.push(b'\t');
    copy_bool(out, row.estimated);
    out.push(b'\t');
    match row.ttfb_us {
        Some(us) => copy_display(out, clamp_i64(us)),
        None => out.extend_from_slice(b"\\N"),
    }
    out.push(b'\t');
    copy_display(out, clamp_i64(row.total_us));
    out.push(b'\t');
    copy_text(out, row.cache_status.as_str());
    out.push(b'\t');
    copy_bool(out, row.stream);
    out.push(b'\t');
    // The queries parse this JSON, and PostgreSQL refuses `\u0000` in it.
    scratch.clear();
    write_tags_json(scratch, &row.tags, true);
    copy_text(out, scratch);
    out.push(b'\t');
    copy_opt_text(out, row.prompt_text.as_deref());
    out.push(b'\t');
    copy_opt_text(out, row.completion_text.as_deref());
    out.push(b'\t');
    copy_display(out, row.avoided_picodollars);
    out.push(b'\n');
}

impl LogStore for PostgresStore {
    fn insert_batch(&mut self, rows: &[LogRow], pace: &mut dyn FnMut()) -> Result<u64, StoreError> {
        if !self.staging_ready {
            self.client.batch_execute(
                "CREATE TEMP TABLE requests_in (LIKE requests) ON COMMIT DELETE ROWS",
            )?;
            self.staging_ready = true;
        }
        let mut data = Vec::new();
        let mut scratch = String::new();
        for row in rows {
            copy_row(&mut data, &mut scratch, row);
            pace();
        }
        let mut tx = self.client.transaction()?;
        // Shared with other inserts, exclusive of a build (module doc of
        // `rollup_build`): the mark read here holds until the commit.
        tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&ROLLUP_LOCK])?;
        let marks = read_marks(&mut tx)?;
        let mut w = tx.copy_in(&format!("COPY requests_in ({ROW_COLUMNS}) FROM STDIN"))?;
        w.write_all(&data)
            .map_err(|e| StoreError::Unavailable(format!("COPY requests: {e}")))?;
        w.finish()?;
        let ids = tx.query(
            &format!(
                "INSERT INTO requests ({ROW_COLUMNS}) SELECT {ROW_COLUMNS} FROM requests_in \
                 ON CONFLICT (id) DO NOTHING RETURNING id"
            ),
            &[],
        )?;
        // The ids as stored (a NUL became U+FFFD); each counts once.
        let mut new_ids = std::collections::HashSet::with_capacity(ids.len());
        for r in &ids {
            let id: String = r.try_get(0).map_err(corrupt)?;
            new_ids.insert(id);
        }
        let inserted = new_ids.len() as u64;
        let mut batch = RollupBatch::default();
        for row in rows {
            if new_ids.remove(pg_text(&row.id).as_ref()) && marks.is_late_any(row.time_ms) {
                batch.add(row, pg_text, &marks)?;
            }
        }
        if !batch.is_empty() {
            upsert_rollups(&mut tx, &batch)?;
        }
        tx.commit()?;
        Ok(inserted)
    }

    fn roll_up(&mut self, limit_ms: i64) -> Result<bool, StoreError> {
        if self.built_to.is_some_and(|d| d >= limit_ms) {
            return Ok(false);
        }
        let mut tx = self.client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ROLLUP_LOCK])?;
        // A minute's rows: starting parallel workers costs more than the
        // work.
        tx.batch_execute("SET LOCAL max_parallel_workers_per_gather = 0")?;
        let Some(step) =
            rollup_build::step(&mut BuildClient(&mut tx), Dialect::Postgres, limit_ms)?
        else {
            let done = read_marks(&mut tx)?.minute();
            tx.commit()?;
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
        let marks = read_marks(&mut self.client)?;
        let mut run = |sql: &query::Sql, bucketed: bool| self.run_spend(sql, bucketed);
        rollup::spend_tags_summed(Dialect::Postgres, &mut run, bucket, from_ms, to_ms, &marks)
    }

    fn spend_tag_bounds(
        &mut self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, i128)>, StoreError> {
        let marks = read_marks(&mut self.client)?;
        let mut run = |sql: &query::Sql, bucketed: bool| self.run_spend(sql, bucketed);
        rollup::tag_bounds(Dialect::Postgres, &mut run, from_ms, to_ms, &marks)
    }

    fn spend_series_of_groups(
        &mut self,
        group_by: &GroupBy,
        groups: &[String],
        bucket: Bucket,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Option<Vec<SeriesPoint>>, StoreError> {
        let marks = read_marks(&mut self.client)?;
        let mut run = |sql: &query::Sql, bucketed: bool| self.run_spend(sql, bucketed);
        rollup::spend_of_groups(
            Dialect::Postgres,
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
        let marks = read_marks(&mut self.client)?;
        let mut run = |sql: &query::Sql, bucketed: bool| self.run_spend(sql, bucketed);
        Ok(rollup::totals(rollup::tag_pairs(
            Dialect::Postgres,
            &mut run,
            key,
            from_ms,
            to_ms,
            &marks,
        )?))
    }

    fn begin_read(&mut self) -> Result<(), StoreError> {
        Ok(self
            .client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?)
    }

    fn end_read(&mut self) -> Result<(), StoreError> {
        Ok(self.client.batch_execute("COMMIT")?)
    }

    fn query_logs(&mut self, filter: &LogFilter) -> Result<Vec<LogRow>, StoreError> {
        self.query_rows(&query::select_logs(Dialect::Postgres, filter))
    }

    fn query_log_page(&mut self, filter: &LogFilter) -> Result<LogPage, StoreError> {
        let boundary = if store::page_is_bounded(filter) {
            let sql =
                query::select_scan_boundary(Dialect::Postgres, filter, LOG_QUERY_SCAN_ROWS_MAX);
            match self
                .client
                .query_opt(sql.text.as_str(), &Self::query_params(&sql.params))?
            {
                Some(r) => Some(LogCursor {
                    time_ms: r.try_get(0).map_err(corrupt)?,
                    id: r.try_get(1).map_err(corrupt)?,
                }),
                None => None,
            }
        } else {
            None
        };
        let rows = self.query_rows(&query::select_logs_above(
            Dialect::Postgres,
            filter,
            boundary.as_ref(),
        ))?;
        Ok(store::log_page(filter, rows, boundary))
    }

    fn log_by_id(&mut self, id: &str) -> Result<Option<LogRow>, StoreError> {
        Ok(self
            .query_rows(&query::select_log_by_id(Dialect::Postgres, id))?
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
        let mut tx = self.client.transaction()?;
        // Never a minute the hour tier has not summed yet.
        let cutoff_ms = cutoff_ms.min(read_marks(&mut tx)?.complete_to(Tier::Hour));
        let mut n = tx.execute(
            "DELETE FROM rollups WHERE (tier, bucket_ms, key_name, team, customer, provider, \
             model) IN (SELECT tier, bucket_ms, key_name, team, customer, provider, model \
             FROM rollups WHERE tier = $1 AND bucket_ms < $2 ORDER BY bucket_ms LIMIT $3)",
            &[&Tier::Minute.ms(), &cutoff_ms, &clamp_i64(rows_max)],
        )?;
        // One dimension at a time, each a range of the primary key.
        let dims = rollup_build::list_dims(
            &mut BuildClient(&mut tx),
            Dialect::Postgres,
            Tier::Minute,
            "",
            None,
        )?;
        for dim in dims {
            let left = rows_max.saturating_sub(n);
            if left == 0 {
                break;
            }
            n += tx.execute(
                "DELETE FROM rollup_dims WHERE (tier, dim, bucket_ms, value) IN \
                 (SELECT tier, dim, bucket_ms, value FROM rollup_dims \
                 WHERE tier = $1 AND dim = $2 AND bucket_ms < $3 ORDER BY bucket_ms LIMIT $4)",
                &[&Tier::Minute.ms(), &dim, &cutoff_ms, &clamp_i64(left)],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }

    fn delete_before(&mut self, cutoff_ms: i64, rows_max: u64) -> Result<u64, StoreError> {
        let built = self.roll_up_before_delete(cutoff_ms)?;
        Ok(self.client.execute(
            "DELETE FROM requests WHERE id IN \
             (SELECT id FROM requests WHERE time_ms < $1 ORDER BY time_ms LIMIT $2)",
            &[&cutoff_ms.min(built), &clamp_i64(rows_max)],
        )?)
    }

    fn delete_beyond(&mut self, keep_rows: u64, rows_max: u64) -> Result<u64, StoreError> {
        let newest_to_drop = self.client.query_opt(
            "SELECT time_ms, id FROM requests ORDER BY time_ms DESC, id DESC LIMIT 1 OFFSET $1",
            &[&clamp_i64(keep_rows)],
        )?;
        let Some(r) = newest_to_drop else {
            return Ok(0);
        };
        let (time_ms, id): (i64, String) = (
            r.try_get(0).map_err(corrupt)?,
            r.try_get(1).map_err(corrupt)?,
        );
        let built = self.roll_up_before_delete(time_ms.saturating_add(1))?;
        Ok(self.client.execute(
            "DELETE FROM requests WHERE id IN (SELECT id FROM requests \
             WHERE (time_ms < $1 OR (time_ms = $1 AND id <= $2)) AND time_ms < $4 \
             ORDER BY time_ms, id LIMIT $3)",
            &[&time_ms, &id, &clamp_i64(rows_max), &built],
        )?)
    }

    fn count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .client
            .query_one("SELECT COUNT(*) FROM requests", &[])?
            .try_get(0)
            .map_err(corrupt)?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let mut out = Vec::new();
        copy_text(&mut out, "a\\b\tc\nd\re\0f é");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\\\b\\tc\\nd\\re\u{fffd}f é"
        );
        let mut out = Vec::new();
        copy_opt_text(&mut out, None);
        assert_eq!(out, b"\\N");
    }
}
