//! Building the rollups as their buckets close. The log writer inserts raw
//! rows only. Once a minute is over (plus [`LOG_ROLLUP_CLOSE_GRACE`]) one
//! transaction sums that minute's raw rows in SQL into the minute tier of
//! every table (`rollups`, `rollup_dims`: entities, tag values, and per tag
//! key [`TAG_SUM_DIM`] and [`TAG_MAX_DIM`]) and moves the minute mark past
//! it. When the minute mark passes an hour boundary the same transaction sums
//! the closed hour's minute rows into the hour tier and moves the hour mark;
//! likewise the closed day's hour rows into the day tier. So every rollup row
//! is written once, when its bucket closes, instead of once a minute while
//! its hour or day is open (which under PostgreSQL's MVCC left a dead tuple
//! per rewrite: docs/benchmarks.md), and the writer's cost per raw row is
//! its insert plus its share of a few grouped statements a minute.
//!
//! The marks' promise ([`Marks`]): every raw row below a tier's mark is in
//! that tier, none at or above it is; `day <= hour <= minute`. A row that
//! arrives below a mark (a stream that ended minutes after it started, a
//! spill replayed late) is added by its own insert to each tier whose mark
//! it is below ([`super::rollup::RollupBatch`]), in the same transaction.
//! Queries read a tier only for its whole buckets below its mark and finer
//! tiers or the raw rows for the rest, so an answer is exact at any moment.
//!
//! Writers exclude each other: SQLite's write lock (the build and every
//! insert run in `BEGIN IMMEDIATE` and read the marks inside); PostgreSQL's
//! advisory lock [`ROLLUP_LOCK`], exclusive for a build and shared for an
//! insert, so an insert never commits a row into a minute a concurrent build
//! has already summed without seeing it (several gateways may share one
//! database).

use super::query::{self, Dialect, Param, Sql, TAG_DIM_END, TAG_DIM_PREFIX};
use super::rollup::{floor_to, Marks, Tier, ENTITY_DIMS, ROLLUP_TIERS, TAG_MAX_DIM, TAG_SUM_DIM};
use super::store::StoreError;
use super::{LOG_ROLLUP_BUILD_MINUTES_MAX, LOG_ROLLUP_CLOSE_GRACE};

/// The advisory lock of rollup builds and inserts (PostgreSQL): an arbitrary
/// constant, "rollup" in ASCII.
pub(crate) const ROLLUP_LOCK: i64 = 0x726f_6c6c_7570;

/// A transaction of a sink the build runs in.
pub(crate) trait BuildTx {
    /// Runs a statement; returns the rows it changed.
    fn execute(&mut self, sql: &Sql) -> Result<u64, StoreError>;
    /// The first column of the first row as an integer (`None`: no row, or
    /// NULL).
    fn query_int(&mut self, sql: &Sql) -> Result<Option<i64>, StoreError>;
    /// The first column of the first row as text (`None`: no row, or NULL).
    fn query_text(&mut self, sql: &Sql) -> Result<Option<String>, StoreError>;
}

/// What one build step did: summed the minutes `[from_ms, to_ms)` (`None`:
/// nothing to sum) and moved the minute mark to `done_ms`; `more` when the
/// mark is still behind the closed minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub range: Option<(i64, i64)>,
    pub done_ms: i64,
    pub more: bool,
}

/// The end of the minutes closed at `now_ms`.
pub fn closed_to(now_ms: i64) -> i64 {
    let grace = i64::try_from(LOG_ROLLUP_CLOSE_GRACE.as_millis()).unwrap_or(i64::MAX);
    floor_sat(now_ms.saturating_sub(grace), Tier::Minute.ms())
}

/// `t` floored to a multiple of `w`, `i64::MIN` when that is not
/// representable.
fn floor_sat(t: i64, w: i64) -> i64 {
    t.checked_sub(t.rem_euclid(w)).unwrap_or(i64::MIN)
}

/// The next minute step from the minute mark `done`, the earliest raw row at
/// or after it (`first_ms`) and the end of the closed minutes (`limit_ms`);
/// `None` when the mark is there already. At most
/// [`LOG_ROLLUP_BUILD_MINUTES_MAX`] minutes per step, so catching up after
/// a long stop never holds the writer in one transaction for long; empty
/// minutes are skipped, not summed.
pub(crate) fn plan(done: Option<i64>, first_ms: Option<i64>, limit_ms: i64) -> Option<Step> {
    if done.is_some_and(|d| d >= limit_ms) {
        return None;
    }
    let idle = Step {
        range: None,
        done_ms: limit_ms,
        more: false,
    };
    let Some(first) = first_ms.filter(|f| *f < limit_ms) else {
        return Some(idle);
    };
    let m = Tier::Minute.ms();
    // The minute of the first row (the mark is a minute boundary at or
    // below it); a row in the lowest minute of i64 has no representable
    // start, and its minute begins at i64::MIN.
    let from = floor_sat(first, m);
    let span = LOG_ROLLUP_BUILD_MINUTES_MAX as i64 * m;
    let to = floor_to(from.saturating_add(span), m)
        .min(limit_ms)
        .max(from);
    if to <= from {
        return Some(idle);
    }
    Some(Step {
        range: Some((from, to)),
        done_ms: to,
        more: to < limit_ms,
    })
}

/// One build step in `tx` (the sink's transaction, its lock held): the next
/// closed minutes below `limit_ms` into the minute tier, then the hours and
/// days those close. `None` when the minute mark is at `limit_ms` already.
pub(crate) fn step(
    tx: &mut dyn BuildTx,
    d: Dialect,
    limit_ms: i64,
) -> Result<Option<Step>, StoreError> {
    let marks = read_marks(tx, d)?;
    let first = tx.query_int(&select_first_row(d, marks.minute().unwrap_or(i64::MIN)))?;
    let Some(step) = plan(marks.minute(), first, limit_ms) else {
        return Ok(None);
    };
    if let Some((from, to)) = step.range {
        for sql in minute_statements(d, from, to) {
            tx.execute(&sql)?;
        }
    }
    tx.execute(&set_mark(d, Tier::Minute, step.done_ms))?;
    close_tiers(tx, d, &marks, step.done_ms)?;
    Ok(Some(step))
}

/// Builds each tier coarser than the minute's up to the buckets its finer
/// tier's mark closes, finest first (the hours the minute mark `minute_ms`
/// closed, then the quarter-days those hours closed, and so on), and moves
/// their marks; `marks` are the marks before. Also the migration's way to
/// build a new tier from the tier below it.
pub(crate) fn close_tiers(
    tx: &mut dyn BuildTx,
    d: Dialect,
    marks: &Marks,
    minute_ms: i64,
) -> Result<(), StoreError> {
    let mut finer_mark = minute_ms;
    for pair in ROLLUP_TIERS.windows(2) {
        let (source, target) = (pair[0], pair[1]);
        let to = floor_sat(finer_mark, target.ms());
        let from = marks.of(target);
        if from.is_some_and(|f| f >= to) {
            finer_mark = from.unwrap_or(to);
            continue;
        }
        let from = from.unwrap_or(i64::MIN);
        let tag_dims = list_dims(tx, d, source, TAG_DIM_PREFIX, Some(TAG_DIM_END))?;
        for sql in close_statements(d, source, target, from, to, &tag_dims) {
            tx.execute(&sql)?;
        }
        tx.execute(&set_mark(d, target, to))?;
        finer_mark = to;
    }
    Ok(())
}

/// The marks as `tx` sees them.
pub(crate) fn read_marks(tx: &mut dyn BuildTx, d: Dialect) -> Result<Marks, StoreError> {
    let mut marks = Marks::default();
    for (tier, done) in ROLLUP_TIERS.iter().zip(marks.done.iter_mut()) {
        let mut sql = Sql::new(d);
        let t = sql.bind(Param::Int(tier.ms()));
        sql.text = format!("SELECT done_ms FROM rollup_marks WHERE tier = {t}");
        *done = tx.query_int(&sql)?;
    }
    Ok(marks)
}

/// The dimensions of `tier` in `rollup_dims` from `low` (inclusive) to
/// `high` (exclusive; `None`: no end), one index seek each.
pub(crate) fn list_dims(
    tx: &mut dyn BuildTx,
    d: Dialect,
    tier: Tier,
    low: &str,
    high: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let mut listed: Vec<String> = Vec::new();
    loop {
        let sql =
            query::select_next_dim(d, tier.ms(), listed.last().map(String::as_str), low, high);
        match tx.query_text(&sql)? {
            Some(dim) => listed.push(dim),
            None => return Ok(listed),
        }
    }
}

/// The start of a `w`-wide bucket of `col` (floor, negative times too).
fn floor(col: &str, w: &str) -> String {
    format!("({col} - ((({col} % {w}) + {w}) % {w}))")
}

/// A sum of picodollars as the sink stores them.
fn money_sum(d: Dialect, col: &str) -> String {
    match d {
        Dialect::Sqlite => format!("sum_picodollars({col})"),
        Dialect::Postgres => format!("SUM({col})"),
    }
}

/// The largest of picodollars as the sink stores them.
fn money_max(d: Dialect, col: &str) -> String {
    match d {
        Dialect::Sqlite => format!("max_picodollars({col})"),
        Dialect::Postgres => format!("MAX({col})"),
    }
}

/// The upsert's update of the measures (the target aliased `x`): added.
fn add_measures(d: Dialect) -> String {
    let money = |c: &str| match d {
        Dialect::Sqlite => format!("{c} = add_picodollars(x.{c}, excluded.{c})"),
        Dialect::Postgres => format!("{c} = x.{c} + excluded.{c}"),
    };
    format!(
        "requests = x.requests + excluded.requests, errors = x.errors + excluded.errors, \
         cache_hits = x.cache_hits + excluded.cache_hits, {}, {}, \
         prompt_tokens = x.prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = x.completion_tokens + excluded.completion_tokens",
        money("cost_picodollars"),
        money("avoided_picodollars")
    )
}

/// The upsert's update of the measures: replaced.
const REPLACE_MEASURES: &str = "requests = excluded.requests, errors = excluded.errors, \
    cache_hits = excluded.cache_hits, cost_picodollars = excluded.cost_picodollars, \
    avoided_picodollars = excluded.avoided_picodollars, \
    prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens";

/// The measures summed over raw rows `r`.
fn raw_measures(d: Dialect) -> String {
    format!(
        "COUNT(*), SUM(CASE WHEN r.status >= 400 THEN 1 ELSE 0 END), \
         SUM(CASE WHEN {} THEN 1 ELSE 0 END), {}, {}, SUM(r.prompt_tokens), \
         SUM(r.completion_tokens)",
        query::RAW_CACHE_HIT,
        money_sum(d, "r.cost_picodollars"),
        money_sum(d, "r.avoided_picodollars")
    )
}

/// The measures summed over rollup rows `y`.
fn rollup_measures(d: Dialect) -> String {
    format!(
        "SUM(y.requests), SUM(y.errors), SUM(y.cache_hits), {}, {}, SUM(y.prompt_tokens), \
         SUM(y.completion_tokens)",
        money_sum(d, "y.cost_picodollars"),
        money_sum(d, "y.avoided_picodollars")
    )
}

/// Each measure's largest over rollup rows `y`.
fn rollup_maxima(d: Dialect) -> String {
    format!(
        "MAX(y.requests), MAX(y.errors), MAX(y.cache_hits), {}, {}, MAX(y.prompt_tokens), \
         MAX(y.completion_tokens)",
        money_max(d, "y.cost_picodollars"),
        money_max(d, "y.avoided_picodollars")
    )
}

const MEASURE_COLUMNS: &str = "requests, errors, cache_hits, cost_picodollars, \
    avoided_picodollars, prompt_tokens, completion_tokens";

/// Every tag of a raw row `r` as rows `j(key, value)`.
fn tags_join(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "json_each(r.tags) j",
        Dialect::Postgres => "json_each_text(r.tags::json) j",
    }
}

/// Binds `{from}` and `{to}` in each text (and `{minute}`, `{source}`,
/// `{target}` spliced as the constants they are).
fn bind_all(d: Dialect, texts: Vec<String>, from_ms: i64, to_ms: i64) -> Vec<Sql> {
    texts
        .into_iter()
        .map(|t| {
            let mut sql = Sql::new(d);
            let from = sql.bind(Param::Int(from_ms));
            let to = sql.bind(Param::Int(to_ms));
            sql.text = t.replace("{from}", &from).replace("{to}", &to);
            sql
        })
        .collect()
}

/// The statements summing the raw rows of the whole minutes `[from_ms,
/// to_ms)` into the minute tier, in order: `rollups` from the raw rows; the
/// entity dimensions from those minute rows; the tag values, and per tag key
/// their sum ([`TAG_SUM_DIM`]) and each measure's largest value
/// ([`TAG_MAX_DIM`]), from the raw rows' tags. A minute at or above the
/// minute mark holds no rollup row yet, so these insert; they add on a
/// conflict all the same (the migration's backfill of tag minutes uses them
/// too).
pub(crate) fn minute_statements(d: Dialect, from_ms: i64, to_ms: i64) -> Vec<Sql> {
    let minute = Tier::Minute.ms();
    let set = add_measures(d);
    let raw_range = "r.time_ms >= {from} AND r.time_ms < {to}";
    let entity_cols = "key_name, team, customer, provider, model";
    let (big, text) = match d {
        Dialect::Sqlite => ("", ""),
        Dialect::Postgres => ("::BIGINT", "::TEXT"),
    };
    let texts = vec![
        format!(
            "INSERT INTO rollups AS x (tier, bucket_ms, {entity_cols}, {MEASURE_COLUMNS}) \
             SELECT {minute}, {}, r.key_name, COALESCE(r.team, ''), COALESCE(r.customer, ''), \
             r.provider, r.model, {} FROM requests r WHERE {raw_range} \
             GROUP BY 1, 2, 3, 4, 5, 6, 7 \
             ON CONFLICT (tier, bucket_ms, {entity_cols}) DO UPDATE SET {set}",
            floor("r.time_ms", &minute.to_string()),
            raw_measures(d),
        ),
        format!(
            "INSERT INTO rollup_dims AS x (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
             SELECT {minute}, e.name, y.bucket_ms, CASE e.n {} ELSE '' END, {} \
             FROM rollups y, ({}) e \
             WHERE y.tier = {minute} AND y.bucket_ms >= {{from}} AND y.bucket_ms < {{to}} \
             GROUP BY 1, 2, 3, 4 \
             ON CONFLICT (tier, dim, bucket_ms, value) DO UPDATE SET {set}",
            entity_cases(),
            rollup_measures(d),
            entity_dims_table(),
        ),
        // The tag values of each minute once (`s`), then the three kinds of
        // row from them.
        format!(
            "WITH y AS MATERIALIZED (\
               SELECT {} AS bucket_ms, j.key{text} AS k, j.value{text} AS v, \
               {} FROM requests r, {} WHERE {raw_range} GROUP BY 1, 2, 3) \
             INSERT INTO rollup_dims AS x (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
             SELECT * FROM (\
               SELECT {minute}{big}, '{TAG_DIM_PREFIX}' || y.k, y.bucket_ms, y.v, \
                 y.requests, y.errors, y.cache_hits, y.cost_picodollars, \
                 y.avoided_picodollars, y.prompt_tokens, y.completion_tokens FROM y \
               UNION ALL \
               SELECT {minute}{big}, '{TAG_SUM_DIM}', y.bucket_ms, y.k, {} FROM y GROUP BY 3, 4 \
               UNION ALL \
               SELECT {minute}{big}, '{TAG_MAX_DIM}', y.bucket_ms, y.k, {} FROM y GROUP BY 3, 4\
             ) u WHERE true \
             ON CONFLICT (tier, dim, bucket_ms, value) DO UPDATE SET {set}",
            floor("r.time_ms", &minute.to_string()),
            named_raw_measures(d),
            tags_join(d),
            rollup_measures(d),
            rollup_maxima(d),
        ),
    ];
    bind_all(d, texts, from_ms, to_ms)
}

/// [`raw_measures`] named as the rollup columns.
fn named_raw_measures(d: Dialect) -> String {
    format!(
        "COUNT(*) AS requests, SUM(CASE WHEN r.status >= 400 THEN 1 ELSE 0 END) AS errors, \
         SUM(CASE WHEN {} THEN 1 ELSE 0 END) AS cache_hits, {} AS cost_picodollars, \
         {} AS avoided_picodollars, SUM(r.prompt_tokens) AS prompt_tokens, \
         SUM(r.completion_tokens) AS completion_tokens",
        query::RAW_CACHE_HIT,
        money_sum(d, "r.cost_picodollars"),
        money_sum(d, "r.avoided_picodollars")
    )
}

/// The statements summing the `source` tier's buckets in `[from_ms, to_ms)`
/// (both `target` boundaries: `from_ms` is the target's mark) into the
/// `target` tier: `rollups`; the entity
/// dimensions and the tag sums; each tag dimension of `tag_dims`; then each
/// tag key's [`TAG_MAX_DIM`] of the target buckets, from their whole value
/// rows (replacing the bound late rows loosened, if any).
pub(crate) fn close_statements(
    d: Dialect,
    source: Tier,
    target: Tier,
    from_ms: i64,
    to_ms: i64,
    tag_dims: &[String],
) -> Vec<Sql> {
    let (s, t) = (source.ms(), target.ms());
    let set = add_measures(d);
    let entity_cols = "key_name, team, customer, provider, model";
    let source_range = format!("y.tier = {s} AND y.bucket_ms >= {{from}} AND y.bucket_ms < {{to}}");
    let bucket = floor("y.bucket_ms", &t.to_string());
    let fixed_dims: Vec<String> = ENTITY_DIMS
        .iter()
        .map(|(dim, _)| format!("'{dim}'"))
        .chain([format!("'{TAG_SUM_DIM}'")])
        .collect();
    let mut texts = vec![
        format!(
            "INSERT INTO rollups AS x (tier, bucket_ms, {entity_cols}, {MEASURE_COLUMNS}) \
             SELECT {t}, {bucket}, y.key_name, y.team, y.customer, y.provider, y.model, {} \
             FROM rollups y WHERE {source_range} GROUP BY 1, 2, 3, 4, 5, 6, 7 \
             ON CONFLICT (tier, bucket_ms, {entity_cols}) DO UPDATE SET {set}",
            rollup_measures(d),
        ),
        format!(
            "INSERT INTO rollup_dims AS x (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
             SELECT {t}, y.dim, {bucket}, y.value, {} FROM rollup_dims y \
             WHERE y.dim IN ({}) AND {source_range} GROUP BY 1, 2, 3, 4 \
             ON CONFLICT (tier, dim, bucket_ms, value) DO UPDATE SET {set}",
            rollup_measures(d),
            fixed_dims.join(", "),
        ),
    ];
    let mut sqls = bind_all(d, std::mem::take(&mut texts), from_ms, to_ms);
    let target_from = floor_sat(from_ms, t);
    for dim in tag_dims {
        let key = dim.strip_prefix(TAG_DIM_PREFIX).unwrap_or(dim);
        let mut sql = Sql::new(d);
        let from = sql.bind(Param::Int(from_ms));
        let to = sql.bind(Param::Int(to_ms));
        let pd = sql.bind(Param::Text(dim.clone()));
        sql.text = format!(
            "INSERT INTO rollup_dims AS x (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
             SELECT {t}, y.dim, {bucket}, y.value, {} FROM rollup_dims y \
             WHERE y.tier = {s} AND y.dim = {pd} AND y.bucket_ms >= {from} AND y.bucket_ms < {to} \
             GROUP BY 1, 2, 3, 4 \
             ON CONFLICT (tier, dim, bucket_ms, value) DO UPDATE SET {set}",
            rollup_measures(d),
        );
        sqls.push(sql);
        let mut sql = Sql::new(d);
        let from = sql.bind(Param::Int(target_from));
        let to = sql.bind(Param::Int(to_ms));
        let pd = sql.bind(Param::Text(dim.clone()));
        let pk = sql.bind(Param::Text(key.to_string()));
        sql.text = format!(
            "INSERT INTO rollup_dims AS x (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
             SELECT {t}, '{TAG_MAX_DIM}', y.bucket_ms, {pk}, {} FROM rollup_dims y \
             WHERE y.tier = {t} AND y.dim = {pd} AND y.bucket_ms >= {from} AND y.bucket_ms < {to} \
             GROUP BY 1, 2, 3, 4 \
             ON CONFLICT (tier, dim, bucket_ms, value) DO UPDATE SET {REPLACE_MEASURES}",
            rollup_maxima(d),
        );
        sqls.push(sql);
    }
    sqls
}

/// Version 4 to 5: `rollup_dims` from the combinations already summed (in
/// version 4 every stored row is in every tier), the mark past the newest
/// stored row (none: nothing stored, nothing to mark), and `rollup_tags` (the
/// combinations by tag) dropped: about one row per tagged raw row per tier
/// for a tag such as `user`, which made it the largest table and most of the
/// writer's cost; what it answered (a tag with an entity filter or grouping)
/// reads the raw rows now.
pub(crate) fn backfill_4_to_5(d: Dialect) -> String {
    let minute = Tier::Minute.ms();
    format!(
        "INSERT INTO rollup_dims (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
         SELECT y.tier, e.name, y.bucket_ms, CASE e.n {} ELSE '' END, {} \
         FROM rollups y, ({}) e GROUP BY 1, 2, 3, 4; \
         INSERT INTO rollup_dims (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
         SELECT y.tier, '{TAG_DIM_PREFIX}' || y.tag_key, y.bucket_ms, y.tag_value, {} \
         FROM rollup_tags y GROUP BY 1, 2, 3, 4; \
         INSERT INTO rollup_marks (tier, done_ms) SELECT {minute}, {} + {minute} \
         FROM requests r HAVING COUNT(*) > 0; \
         DROP TABLE rollup_tags;",
        entity_cases(),
        rollup_measures(d),
        entity_dims_table(),
        rollup_measures(d),
        floor("MAX(r.time_ms)", &minute.to_string()),
    )
}

/// Version 5 to 6, the part in plain SQL. Version 5 had one mark `M` for
/// every tier, each holding every row below it: the open hour and day at `M`
/// partly summed. Version 6's marks are boundaries of their tiers, so the
/// hour and day marks start at `M` floored to them, and the open hour's and
/// day's rows are deleted (the build sums them again when they close, from
/// the minute and hour tiers). Then each tag key's sums and bounds of the
/// hour and day tiers come from their value rows. The tags' minute tier (new
/// in 6) is backfilled by [`backfill_5_to_6_minutes`].
pub(crate) fn backfill_5_to_6(d: Dialect) -> String {
    let (minute, hour, day) = (Tier::Minute.ms(), Tier::Hour.ms(), Tier::Day.ms());
    let tag_rows = format!(
        "FROM rollup_dims y WHERE y.tier IN ({hour}, {day}) \
         AND y.dim >= '{TAG_DIM_PREFIX}' AND y.dim < '{TAG_DIM_END}' \
         GROUP BY y.tier, y.bucket_ms, y.dim"
    );
    let mut out = String::new();
    for w in [hour, day] {
        let open = format!("(SELECT done_ms FROM rollup_marks WHERE tier = {w})");
        out.push_str(&format!(
            "INSERT INTO rollup_marks (tier, done_ms) \
             SELECT {w}, {} FROM rollup_marks WHERE tier = {minute}; \
             DELETE FROM rollups WHERE tier = {w} AND bucket_ms = {open}; \
             DELETE FROM rollup_dims WHERE tier = {w} AND bucket_ms = {open}; ",
            floor("done_ms", &w.to_string()),
        ));
    }
    out.push_str(&format!(
        "INSERT INTO rollup_dims (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
         SELECT y.tier, '{TAG_SUM_DIM}', y.bucket_ms, substr(y.dim, 3), {} {tag_rows}; \
         INSERT INTO rollup_dims (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
         SELECT y.tier, '{TAG_MAX_DIM}', y.bucket_ms, substr(y.dim, 3), {} {tag_rows};",
        rollup_measures(d),
        rollup_maxima(d),
    ));
    out
}

/// Version 5 to 6: the tags' minute tier of the raw rows below the mark
/// `mark_ms` that the minute tier keeps ([`super::LOG_ROLLUP_MINUTE_KEEP`]
/// before it), so a tag query's sub-hour edges read it as they read the
/// entities'.
pub(crate) fn backfill_5_to_6_minutes(d: Dialect, mark_ms: i64) -> Vec<Sql> {
    let keep = i64::try_from(super::LOG_ROLLUP_MINUTE_KEEP.as_millis()).unwrap_or(i64::MAX);
    let from = floor_sat(mark_ms.saturating_sub(keep), Tier::Minute.ms());
    // Only the tag statement: the entities' minutes are built already.
    minute_statements(d, from, mark_ms).split_off(2)
}

/// `WHEN n THEN y.<column>` for each entity dimension with a column.
fn entity_cases() -> String {
    ENTITY_DIMS
        .iter()
        .enumerate()
        .filter(|(_, (_, col))| *col != "''")
        .map(|(n, (_, col))| format!("WHEN {n} THEN y.{col}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A derived table of the entity dimensions' numbers and names.
fn entity_dims_table() -> String {
    ENTITY_DIMS
        .iter()
        .enumerate()
        .map(|(n, (dim, _))| format!("SELECT {n} AS n, CAST('{dim}' AS TEXT) AS name"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// The smallest minute mark that covers a row at `time_ms` (the end of its
/// minute; the last minute of i64 is never covered).
pub(crate) fn mark_covering(time_ms: i64) -> i64 {
    let m = Tier::Minute.ms();
    time_ms
        .checked_add(m - time_ms.rem_euclid(m))
        .unwrap_or(floor_to(i64::MAX, m))
}

/// Moves `tier`'s mark to `done_ms` (in the build's transaction).
fn set_mark(d: Dialect, tier: Tier, done_ms: i64) -> Sql {
    let mut sql = Sql::new(d);
    let t = sql.bind(Param::Int(tier.ms()));
    let done = sql.bind(Param::Int(done_ms));
    sql.text = format!(
        "INSERT INTO rollup_marks (tier, done_ms) VALUES ({t}, {done}) \
         ON CONFLICT (tier) DO UPDATE SET done_ms = excluded.done_ms"
    );
    sql
}

/// The earliest raw row at or after the bound parameter.
fn select_first_row(d: Dialect, at_or_after_ms: i64) -> Sql {
    let mut sql = Sql::new(d);
    let from = sql.bind(Param::Int(at_or_after_ms));
    sql.text = format!("SELECT MIN(time_ms) FROM requests WHERE time_ms >= {from}");
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000;

    #[test]
    fn a_step_sums_closed_minutes_from_the_first_row_and_skips_empty_ones() {
        // Already there.
        assert_eq!(plan(Some(10 * M), Some(3 * M), 10 * M), None);
        // No rows: the mark jumps.
        assert_eq!(
            plan(Some(2 * M), None, 10 * M),
            Some(Step {
                range: None,
                done_ms: 10 * M,
                more: false
            })
        );
        assert_eq!(plan(None, Some(11 * M), 10 * M).unwrap().range, None);
        // From the first row's minute, to the closed end.
        assert_eq!(
            plan(Some(2 * M), Some(5 * M + 7), 10 * M),
            Some(Step {
                range: Some((5 * M, 10 * M)),
                done_ms: 10 * M,
                more: false
            })
        );
        // Far behind: one bounded step at a time.
        let max = LOG_ROLLUP_BUILD_MINUTES_MAX as i64;
        let s = plan(None, Some(-3), 10_000 * M).unwrap();
        assert_eq!(s.range, Some((-M, (max - 1) * M)));
        assert!(s.more);
        // The ends of i64.
        let s = plan(None, Some(i64::MIN), 0).unwrap();
        assert_eq!(s.range.map(|r| r.0), Some(i64::MIN));
        assert!(plan(None, Some(i64::MAX - 1), i64::MAX).is_some());
    }

    #[test]
    fn closed_minutes_wait_for_the_grace() {
        let grace = LOG_ROLLUP_CLOSE_GRACE.as_millis() as i64;
        assert_eq!(closed_to(10 * M + grace), 10 * M);
        assert_eq!(closed_to(10 * M + grace - 1), 9 * M);
        assert_eq!(closed_to(i64::MIN), i64::MIN);
    }
}
