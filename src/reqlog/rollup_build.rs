//! Building the rollups when a minute closes: the log writer inserts raw
//! rows only, and once a minute is over (plus [`LOG_ROLLUP_CLOSE_GRACE`])
//! one transaction aggregates that minute's rows in SQL into every table
//! and tier (`rollups`, `rollup_dims`; the minute's share of
//! the open hour and day buckets added to them) and advances the mark
//! (`rollup_marks`) past it. So the writer's cost per row is the raw insert
//! plus its share of one grouped statement a minute, instead of an upsert
//! per tier and table per batch (measured in docs/benchmarks.md).
//!
//! The mark's promise ([`Marks`]): every raw row below it is in every tier,
//! none at or above it is. A row that arrives below the mark (a stream that
//! ended minutes after it started, a spill replayed late) is added to every
//! tier by its own insert ([`super::rollup::RollupBatch`]), in the same
//! transaction. Queries read a tier only for its whole buckets below the
//! mark and the raw rows above it, so an answer is exact at any moment.
//!
//! Writers exclude each other: SQLite's write lock (the build and every
//! insert run in `BEGIN IMMEDIATE` and read the mark inside); PostgreSQL's
//! advisory lock [`ROLLUP_LOCK`], exclusive for a build and shared for an
//! insert, so an insert never commits a row into a minute a concurrent build
//! has already summed without seeing it (several gateways may share one
//! database).

use super::query::{Dialect, Param, Sql, TAG_DIM_PREFIX};
use super::rollup::{floor_to, Tier, ENTITY_DIMS};
use super::{LOG_ROLLUP_BUILD_MINUTES_MAX, LOG_ROLLUP_CLOSE_GRACE};

/// The advisory lock of rollup builds and inserts (PostgreSQL): an arbitrary
/// constant, "rollup" in ASCII.
pub(crate) const ROLLUP_LOCK: i64 = 0x726f_6c6c_7570;

/// The `rollup_marks` row of the mark (its `tier` column: the minute).
pub(crate) const MARK_TIER: i64 = 60_000;

/// What one build step does: sum `[from_ms, to_ms)` (whole minutes; `None`:
/// nothing to sum) and move the mark to `done_ms`; `more` when the mark is
/// still behind the closed minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub range: Option<(i64, i64)>,
    pub done_ms: i64,
    pub more: bool,
}

/// The end of the minutes closed at `now_ms`.
pub fn closed_to(now_ms: i64) -> i64 {
    let grace = i64::try_from(LOG_ROLLUP_CLOSE_GRACE.as_millis()).unwrap_or(i64::MAX);
    let t = now_ms.saturating_sub(grace);
    t.checked_sub(t.rem_euclid(Tier::Minute.ms()))
        .unwrap_or(i64::MIN)
}

/// The next build step from the mark `done`, the earliest raw row at or
/// after it (`first_ms`) and the end of the closed minutes (`limit_ms`);
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
    let from = first.checked_sub(first.rem_euclid(m)).unwrap_or(i64::MIN);
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

/// The upsert's update of the measures (the target aliased `x`).
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

/// The measures summed over raw rows `r`.
fn raw_measures(d: Dialect) -> String {
    format!(
        "COUNT(*), SUM(CASE WHEN r.status >= 400 THEN 1 ELSE 0 END), \
         SUM(CASE WHEN {} THEN 1 ELSE 0 END), {}, {}, SUM(r.prompt_tokens), \
         SUM(r.completion_tokens)",
        super::query::RAW_CACHE_HIT,
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

const MEASURE_COLUMNS: &str = "requests, errors, cache_hits, cost_picodollars, \
    avoided_picodollars, prompt_tokens, completion_tokens";

/// A derived table `t(w)` of the given tiers' widths.
fn tiers_table(tiers: &[Tier]) -> String {
    let rows: Vec<String> = tiers
        .iter()
        .map(|t| format!("SELECT CAST({} AS BIGINT) AS w", t.ms()))
        .collect();
    format!("({}) t", rows.join(" UNION ALL "))
}

/// Every tag of a raw row `r` as rows `j(key, value)`.
fn tags_join(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "json_each(r.tags) j",
        Dialect::Postgres => "json_each_text(r.tags::json) j",
    }
}

/// The statements of one build step over the whole minutes `[from_ms,
/// to_ms)`, in order: the minute tier of `rollups` from the raw rows; its
/// hour and day buckets from those minutes; the entity dimensions of every tier from the minute
/// rows; the tag dimensions (hour, day) from the raw rows' tags. Every
/// statement upserts (adds to a bucket the minute shares with earlier ones).
pub(crate) fn statements(d: Dialect, from_ms: i64, to_ms: i64) -> Vec<Sql> {
    let minute = Tier::Minute.ms();
    let set = add_measures(d);
    let raw_range = "r.time_ms >= {from} AND r.time_ms < {to}";
    let minute_range = "y.tier = {minute} AND y.bucket_ms >= {from} AND y.bucket_ms < {to}";
    let entity_cols = "key_name, team, customer, provider, model";
    let texts = [
        // rollups, minute tier, from the raw rows.
        format!(
            "INSERT INTO rollups AS x (tier, bucket_ms, {entity_cols}, {MEASURE_COLUMNS}) \
             SELECT {minute}, {}, r.key_name, COALESCE(r.team, ''), COALESCE(r.customer, ''), \
             r.provider, r.model, {} FROM requests r WHERE {raw_range} \
             GROUP BY 1, 2, 3, 4, 5, 6, 7 \
             ON CONFLICT (tier, bucket_ms, {entity_cols}) DO UPDATE SET {set}",
            floor("r.time_ms", &minute.to_string()),
            raw_measures(d),
        ),
        // rollups, hour and day tiers, from the minute rows just summed.
        format!(
            "INSERT INTO rollups AS x (tier, bucket_ms, {entity_cols}, {MEASURE_COLUMNS}) \
             SELECT t.w, {}, y.key_name, y.team, y.customer, y.provider, y.model, {} \
             FROM rollups y, {} WHERE {minute_range} GROUP BY 1, 2, 3, 4, 5, 6, 7 \
             ON CONFLICT (tier, bucket_ms, {entity_cols}) DO UPDATE SET {set}",
            floor("y.bucket_ms", "t.w"),
            rollup_measures(d),
            tiers_table(&[Tier::Hour, Tier::Day]),
        ),
        // rollup_dims, entity dimensions, every tier, from the minute rows.
        format!(
            "INSERT INTO rollup_dims AS x (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
             SELECT t.w, e.name, {}, CASE e.n {} ELSE '' END, {} \
             FROM rollups y, {}, ({}) e WHERE {minute_range} GROUP BY 1, 2, 3, 4 \
             ON CONFLICT (tier, dim, bucket_ms, value) DO UPDATE SET {set}",
            floor("y.bucket_ms", "t.w"),
            entity_cases(),
            rollup_measures(d),
            tiers_table(&[Tier::Minute, Tier::Hour, Tier::Day]),
            entity_dims_table(),
        ),
        // rollup_dims, tag dimensions, hour and day, from the raw rows' tags.
        format!(
            "INSERT INTO rollup_dims AS x (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
             SELECT t.w, '{TAG_DIM_PREFIX}' || j.key, {}, j.value, {} \
             FROM requests r, {}, {} WHERE {raw_range} GROUP BY 1, 2, 3, 4 \
             ON CONFLICT (tier, dim, bucket_ms, value) DO UPDATE SET {set}",
            floor("r.time_ms", "t.w"),
            raw_measures(d),
            tags_join(d),
            tiers_table(&[Tier::Hour, Tier::Day]),
        ),
    ];
    texts
        .into_iter()
        .map(|t| {
            let mut sql = Sql::new(d);
            let from = sql.bind(Param::Int(from_ms));
            let to = sql.bind(Param::Int(to_ms));
            sql.text = t
                .replace("{from}", &from)
                .replace("{to}", &to)
                .replace("{minute}", &minute.to_string());
            sql
        })
        .collect()
}

/// Version 4 to 5: `rollup_dims` from the combinations already summed (in
/// version 4 every stored row is in every tier), the mark past the newest
/// stored row (none: nothing stored, nothing to mark), and `rollup_tags` (the
/// combinations by tag) dropped: about one row per tagged raw row per tier
/// for a tag such as `user`, which made it the largest table and most of the
/// writer's cost; what it answered (a tag with an entity filter or grouping)
/// reads the raw rows now.
pub(crate) fn backfill_4_to_5(d: Dialect) -> String {
    format!(
        "INSERT INTO rollup_dims (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
         SELECT y.tier, e.name, y.bucket_ms, CASE e.n {} ELSE '' END, {} \
         FROM rollups y, ({}) e GROUP BY 1, 2, 3, 4; \
         INSERT INTO rollup_dims (tier, dim, bucket_ms, value, {MEASURE_COLUMNS}) \
         SELECT y.tier, '{TAG_DIM_PREFIX}' || y.tag_key, y.bucket_ms, y.tag_value, {} \
         FROM rollup_tags y GROUP BY 1, 2, 3, 4; \
         INSERT INTO rollup_marks (tier, done_ms) SELECT {MARK_TIER}, {} + {MARK_TIER} \
         FROM requests r HAVING COUNT(*) > 0; \
         DROP TABLE rollup_tags;",
        entity_cases(),
        rollup_measures(d),
        entity_dims_table(),
        rollup_measures(d),
        floor("MAX(r.time_ms)", &MARK_TIER.to_string()),
    )
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

/// The smallest mark that covers a row at `time_ms` (the end of its minute;
/// the last minute of i64 is never covered).
pub(crate) fn mark_covering(time_ms: i64) -> i64 {
    let m = Tier::Minute.ms();
    time_ms
        .checked_add(m - time_ms.rem_euclid(m))
        .unwrap_or(floor_to(i64::MAX, m))
}

/// Moves the mark to `done_ms` (in the build's transaction).
pub(crate) fn set_mark(d: Dialect, done_ms: i64) -> Sql {
    let mut sql = Sql::new(d);
    let tier = sql.bind(Param::Int(MARK_TIER));
    let done = sql.bind(Param::Int(done_ms));
    sql.text = format!(
        "INSERT INTO rollup_marks (tier, done_ms) VALUES ({tier}, {done}) \
         ON CONFLICT (tier) DO UPDATE SET done_ms = excluded.done_ms"
    );
    sql
}

/// The mark (no row: nothing built yet).
pub(crate) const SELECT_MARK: &str = "SELECT done_ms FROM rollup_marks WHERE tier = 60000";

/// The earliest raw row at or after the bound parameter.
pub(crate) fn select_first_row(d: Dialect, at_or_after_ms: i64) -> Sql {
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
