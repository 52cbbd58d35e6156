//! Request log queries: the filter and grouping types the admin API passes,
//! and the one SQL builder both sinks use (only placeholders, casts and the
//! exact cost sum differ between SQLite and PostgreSQL).
//!
//! Ranges are `[from_ms, to_ms)`. Grouping by team, customer or tag puts rows
//! without one in the group `""`, so every grouping of a range sums to the
//! same total.

use super::row::LogRow;
use super::{LOG_QUERY_LIMIT_DEFAULT, LOG_QUERY_LIMIT_MAX, LOG_SERIES_POINTS_MAX};

/// Which rows [`LogStore::query_logs`](super::LogStore::query_logs) returns:
/// every set field must match. Newest first; at most `limit` (bounded by
/// [`LOG_QUERY_LIMIT_MAX`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    pub key: Option<String>,
    pub team: Option<String>,
    pub customer: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub status: Option<u16>,
    /// Inclusive.
    pub from_ms: Option<i64>,
    /// Exclusive.
    pub to_ms: Option<i64>,
    /// A tag `(key, value)` the row carries.
    pub tag: Option<(String, String)>,
    /// Only rows strictly older than this (the last row of the previous page).
    pub before: Option<LogCursor>,
    pub limit: usize,
}

impl Default for LogFilter {
    fn default() -> LogFilter {
        LogFilter {
            key: None,
            team: None,
            customer: None,
            provider: None,
            model: None,
            status: None,
            from_ms: None,
            to_ms: None,
            tag: None,
            before: None,
            limit: LOG_QUERY_LIMIT_DEFAULT,
        }
    }
}

/// A position in the newest-first order: rows sort by `(time_ms, id)`
/// descending, so a page continues strictly below its last row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogCursor {
    pub time_ms: i64,
    pub id: String,
}

impl LogCursor {
    /// The cursor for the page after the one that ended with `row`.
    pub fn after(row: &LogRow) -> LogCursor {
        LogCursor {
            time_ms: row.time_ms,
            id: row.id.clone(),
        }
    }
}

/// One page of [`LogStore::query_log_page`](super::LogStore::query_log_page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    /// The matching rows, newest first, at most the filter's `limit`.
    pub rows: Vec<LogRow>,
    /// Where the next page starts (pass it as [`LogFilter::before`]); `None`
    /// when no row below this page can match. Set when the page is full,
    /// and also when the page stopped at its scan bound
    /// ([`LOG_QUERY_SCAN_ROWS_MAX`](super::LOG_QUERY_SCAN_ROWS_MAX) rows
    /// examined) with fewer rows: "scanned down to here, continue below".
    pub next: Option<LogCursor>,
    /// The page stopped at its scan bound rather than at the end of the
    /// range or a full page (`next` is then the last row examined).
    pub scan_bounded: bool,
}

/// What spend is grouped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Team,
    Customer,
    Provider,
    Model,
    /// The value of this tag key ("" for rows without it).
    Tag(String),
    /// Every tag, as `key=value`: a row counts once in each of its tags'
    /// groups and rows without tags in none, so these groups need not sum to
    /// the range's total (the spend reports' top tags).
    Tags,
    /// No grouping: one group `""` with the range's totals (absent when the
    /// range holds no request).
    None,
}

/// Which rows a spend query sums: every set field must match (the spend
/// reports' scope; `key=`, `team=`, `customer=`, `model=` of
/// `GET /admin/spend/totals` and `/series`: a key's spend on one model over
/// time is `key=<name>&model=<model>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendFilter {
    pub key: Option<String>,
    pub team: Option<String>,
    pub customer: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    /// Only rows carrying this tag `(key, value)`.
    pub tag: Option<(String, String)>,
}

/// The width of a series bucket (UTC; a day is 86,400,000 ms in unix time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    /// The bucket's width in milliseconds.
    pub const fn ms(self) -> i64 {
        match self {
            Bucket::Minute => 60_000,
            Bucket::Hour => 3_600_000,
            Bucket::Day => 86_400_000,
        }
    }
}

/// One group's spend in one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesPoint {
    /// The bucket's start, unix ms (a multiple of the bucket width).
    pub bucket_start_ms: i64,
    pub group: String,
    pub requests: u64,
    /// Exact sum, picodollars.
    pub cost_picodollars: i128,
    /// Exact sum of the spend cache hits avoided, picodollars.
    pub avoided_picodollars: i128,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Requests answered with a status >= 400.
    pub errors: u64,
    /// Requests served from the cache (exact or semantic).
    pub cache_hits: u64,
}

/// One group's spend over a whole range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendTotal {
    pub group: String,
    pub requests: u64,
    /// Exact sum, picodollars.
    pub cost_picodollars: i128,
    /// Exact sum of the spend cache hits avoided, picodollars.
    pub avoided_picodollars: i128,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Requests answered with a status >= 400.
    pub errors: u64,
    /// Requests served from the cache (exact or semantic).
    pub cache_hits: u64,
}

/// The SQL dialect of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A bound parameter. Only two kinds are ever bound, so each sink's binding
/// is one match; PostgreSQL placeholders carry a cast to fix their type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    Int(i64),
    Text(String),
}

/// A statement and its parameters, in placeholder order.
#[derive(Debug)]
pub(crate) struct Sql {
    dialect: Dialect,
    pub text: String,
    pub params: Vec<Param>,
}

/// The selected columns of a row, in the order [`RawRow`](super::store::RawRow)
/// reads them.
pub(crate) fn row_columns(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => {
            "r.id, r.time_ms, r.key_name, r.team, r.customer, r.provider, r.model, r.endpoint, \
             r.status, r.prompt_tokens, r.completion_tokens, r.cached_tokens, \
             r.cache_write_tokens, r.reasoning_tokens, r.cost_picodollars, r.price_version, \
             r.estimated, r.ttfb_us, r.total_us, r.cache_status, r.stream, r.tags, \
             r.prompt_text, r.completion_text, r.avoided_picodollars"
        }
        Dialect::Postgres => {
            "r.id, r.time_ms, r.key_name, r.team, r.customer, r.provider, r.model, r.endpoint, \
             r.status::BIGINT, r.prompt_tokens, r.completion_tokens, r.cached_tokens, \
             r.cache_write_tokens, r.reasoning_tokens, r.cost_picodollars::TEXT, \
             r.price_version, r.estimated, r.ttfb_us, r.total_us, r.cache_status, r.stream, \
             r.tags, r.prompt_text, r.completion_text, r.avoided_picodollars::TEXT"
        }
    }
}

impl Sql {
    pub(crate) fn new(dialect: Dialect) -> Sql {
        Sql {
            dialect,
            text: String::new(),
            params: Vec::new(),
        }
    }

    /// Adds a parameter and returns its placeholder.
    pub(crate) fn bind(&mut self, p: Param) -> String {
        let kind = match p {
            Param::Int(_) => "BIGINT",
            Param::Text(_) => "TEXT",
        };
        self.params.push(p);
        let n = self.params.len();
        match self.dialect {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}::{kind}"),
        }
    }

    fn bind_text(&mut self, s: &str) -> String {
        self.bind(Param::Text(s.to_string()))
    }

    /// The value of tag `key` in the row's `tags` JSON object, NULL when the
    /// row has no such tag. The key (or a JSON path naming it) is bound, never
    /// spliced into the SQL, and any key is matched exactly.
    fn tag_value(&mut self, key: &str) -> String {
        match self.dialect {
            // `json_extract` with the key as a quoted path label took 60-75%
            // of `json_each`'s time per row (docs/benchmarks.md); a key the
            // label cannot hold verbatim (a quote, a backslash, a control
            // character: never a valid tag key) is looked up with `json_each`.
            Dialect::Sqlite if key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') => {
                let path = self.bind_text(&format!("$.\"{key}\""));
                format!("json_extract(r.tags, {path})")
            }
            Dialect::Sqlite => {
                let pk = self.bind_text(key);
                format!("(SELECT t.value FROM json_each(r.tags) t WHERE t.key = {pk})")
            }
            Dialect::Postgres => {
                let pk = self.bind_text(key);
                format!("(r.tags::json ->> {pk})")
            }
        }
    }

    /// The ordering suffix for text compared or sorted as bytes in both
    /// stores (PostgreSQL would otherwise use the database's locale).
    fn bytewise(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " COLLATE \"C\"",
        }
    }
}

/// `SELECT` for [`LogStore::query_logs`](super::LogStore::query_logs); with
/// `lowest` only rows at or above that position (a bounded page's window).
pub(crate) fn select_logs(d: Dialect, f: &LogFilter) -> Sql {
    select_logs_above(d, f, None)
}

/// [`select_logs`] of the rows at or above `lowest` in the newest-first order.
pub(crate) fn select_logs_above(d: Dialect, f: &LogFilter, lowest: Option<&LogCursor>) -> Sql {
    let mut sql = Sql::new(d);
    let mut conds = log_conditions(&mut sql, f);
    if let Some(c) = lowest {
        let t1 = sql.bind(Param::Int(c.time_ms));
        let t2 = sql.bind(Param::Int(c.time_ms));
        let id = sql.bind_text(&c.id);
        // A range on time first, so both stores walk the time index from
        // the page's start down to here (the same rows as
        // `time > t OR (time = t AND id >= id)`, which SQLite cannot use as
        // a range: measured at 10M rows, 756 ms against 0.9 ms).
        conds.push(format!("r.time_ms >= {t1}"));
        conds.push(format!("(r.time_ms > {t2} OR r.id >= {id})"));
    }
    let limit = sql.bind(Param::Int(f.limit.min(LOG_QUERY_LIMIT_MAX) as i64));
    sql.text = format!(
        "SELECT {} FROM requests r{} ORDER BY r.time_ms DESC, r.id DESC LIMIT {limit}",
        row_columns(d),
        where_clause(&conds)
    );
    sql
}

/// The SQL of a cache hit (exact or semantic) on a row of `requests`.
pub(crate) const RAW_CACHE_HIT: &str = "r.cache_status IN ('hit', 'semantic-hit')";

/// The bucket start of `{col}` for width `w` (floor, also for negative times).
fn bucket_expr(col: &str, w: i64) -> String {
    format!("{col} - ((({col} % {w}) + {w}) % {w})")
}

/// Spend grouped by `group_by` over `[from_ms, to_ms)`, per bucket when
/// `bucket` is set, read from the raw rows. Selected columns: [bucket_start,]
/// group, requests, cost, avoided (both decimal text), prompt_tokens,
/// completion_tokens, errors, cache_hits. At most [`LOG_SERIES_POINTS_MAX`] + 1
/// rows, so the caller can tell "too many".
///
/// The rollup queries read this for the sub-minute edges of a range (and for
/// the few combinations no rollup holds); the tests use it as the oracle the
/// rollups must match.
pub(crate) fn select_spend(
    d: Dialect,
    group_by: &GroupBy,
    filter: &SpendFilter,
    bucket: Option<Bucket>,
    from_ms: i64,
    to_ms: i64,
) -> Sql {
    select_spend_as(d, group_by, false, filter, bucket, from_ms, to_ms)
}

/// [`select_spend`] grouped by every tag, summed over the tags: one group
/// `""` per bucket, a row counted once per tag it carries (what a grouping
/// by every tag sums to in each bucket).
pub(crate) fn select_spend_tags_summed(
    d: Dialect,
    bucket: Option<Bucket>,
    from_ms: i64,
    to_ms: i64,
) -> Sql {
    let none = SpendFilter::default();
    select_spend_as(d, &GroupBy::Tags, true, &none, bucket, from_ms, to_ms)
}

fn select_spend_as(
    d: Dialect,
    group_by: &GroupBy,
    one_group: bool,
    filter: &SpendFilter,
    bucket: Option<Bucket>,
    from_ms: i64,
    to_ms: i64,
) -> Sql {
    let mut sql = Sql::new(d);
    let group = match group_by {
        _ if one_group => "''".to_string(),
        GroupBy::Key => "r.key_name".to_string(),
        GroupBy::Team => "COALESCE(r.team, '')".to_string(),
        GroupBy::Customer => "COALESCE(r.customer, '')".to_string(),
        GroupBy::Provider => "r.provider".to_string(),
        GroupBy::Model => "r.model".to_string(),
        GroupBy::Tag(k) => format!("COALESCE({}, '')", sql.tag_value(k)),
        GroupBy::Tags => "(t.key || '=' || t.value)".to_string(),
        GroupBy::None => "''".to_string(),
    };
    // Every tag of a row is one row of the join (none for a row without).
    let tags_join = match (group_by, d) {
        (GroupBy::Tags, Dialect::Sqlite) => ", json_each(r.tags) t",
        (GroupBy::Tags, Dialect::Postgres) => ", json_each_text(r.tags::json) t",
        _ => "",
    };
    let (cost, avoided, tokens_cast) = match d {
        Dialect::Sqlite => (
            "sum_picodollars(r.cost_picodollars)",
            "sum_picodollars(r.avoided_picodollars)",
            "",
        ),
        Dialect::Postgres => (
            "SUM(r.cost_picodollars)::TEXT",
            "SUM(r.avoided_picodollars)::TEXT",
            "::BIGINT",
        ),
    };
    let from = sql.bind(Param::Int(from_ms));
    let to = sql.bind(Param::Int(to_ms));
    let mut scope = String::new();
    for (column, value) in [
        ("r.key_name", &filter.key),
        ("r.team", &filter.team),
        ("r.customer", &filter.customer),
        ("r.model", &filter.model),
        ("r.provider", &filter.provider),
    ] {
        if let Some(v) = value {
            let p = sql.bind_text(v);
            scope.push_str(&format!(" AND {column} = {p}"));
        }
    }
    if let Some((k, v)) = &filter.tag {
        let value = sql.tag_value(k);
        let pv = sql.bind_text(v);
        scope.push_str(&format!(" AND {value} = {pv}"));
    }
    let limit = sql.bind(Param::Int(LOG_SERIES_POINTS_MAX as i64 + 1));
    // The collation goes on the selected expression: PostgreSQL accepts an
    // output name in ORDER BY only bare.
    let bytewise = sql.bytewise();
    let (bucket_col, group_cols) = match bucket {
        Some(b) => (
            format!("{} AS b, ", bucket_expr("r.time_ms", b.ms())),
            "b, g",
        ),
        None => (String::new(), "g"),
    };
    sql.text = format!(
        "SELECT {bucket_col}{group}{bytewise} AS g, COUNT(*), {cost}, {avoided}, \
         SUM(r.prompt_tokens){tokens_cast}, SUM(r.completion_tokens){tokens_cast}, \
         SUM(CASE WHEN r.status >= 400 THEN 1 ELSE 0 END){tokens_cast}, \
         SUM(CASE WHEN {RAW_CACHE_HIT} THEN 1 ELSE 0 END){tokens_cast} \
         FROM requests r{tags_join} WHERE r.time_ms >= {from} AND r.time_ms < {to}{scope} \
         GROUP BY {group_cols} ORDER BY {group_cols} LIMIT {limit}"
    );
    sql
}

/// Spend of one piece of a range read from a rollup tier: the buckets of
/// width `tier_ms` starting in `[from_ms, to_ms)` (both multiples of
/// `tier_ms`), summed per `bucket` (a multiple of `tier_ms`) when set, and
/// per group. Same columns as [`select_spend`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn select_rollup(
    d: Dialect,
    group_by: &GroupBy,
    filter: &SpendFilter,
    tier_ms: i64,
    bucket: Option<Bucket>,
    from_ms: i64,
    to_ms: i64,
) -> Sql {
    let mut sql = Sql::new(d);
    let mut scope = String::new();
    let tier = sql.bind(Param::Int(tier_ms));
    let from = sql.bind(Param::Int(from_ms));
    let to = sql.bind(Param::Int(to_ms));
    for (column, value) in [
        ("x.key_name", &filter.key),
        ("x.team", &filter.team),
        ("x.customer", &filter.customer),
        ("x.model", &filter.model),
        ("x.provider", &filter.provider),
    ] {
        if let Some(v) = value {
            let p = sql.bind_text(v);
            scope.push_str(&format!(" AND {column} = {p}"));
        }
    }
    // Entity groupings only (a query touching tags reads `rollup_dims` or
    // raw rows); anything else is one group.
    let group_expr = match group_by {
        GroupBy::Key => "x.key_name",
        GroupBy::Team => "x.team",
        GroupBy::Customer => "x.customer",
        GroupBy::Provider => "x.provider",
        GroupBy::Model => "x.model",
        _ => "''",
    };
    let (select, group_cols, limit) = rollup_select(&mut sql, group_expr, bucket, tier_ms);
    sql.text = format!(
        "{select} FROM rollups x \
         WHERE x.tier = {tier} AND x.bucket_ms >= {from} AND x.bucket_ms < {to}{scope} \
         GROUP BY {group_cols} ORDER BY {group_cols} LIMIT {limit}"
    );
    sql
}

/// The select list of a rollup piece (table aliased `x`) in the columns of
/// [`select_spend`], its grouping columns and its bound row limit.
fn rollup_select(
    sql: &mut Sql,
    group_expr: &str,
    bucket: Option<Bucket>,
    tier_ms: i64,
) -> (String, &'static str, String) {
    let (cost, avoided, cast) = match sql.dialect {
        Dialect::Sqlite => (
            "sum_picodollars(x.cost_picodollars)",
            "sum_picodollars(x.avoided_picodollars)",
            "",
        ),
        Dialect::Postgres => (
            "SUM(x.cost_picodollars)::TEXT",
            "SUM(x.avoided_picodollars)::TEXT",
            "::BIGINT",
        ),
    };
    let limit = sql.bind(Param::Int(LOG_SERIES_POINTS_MAX as i64 + 1));
    let bytewise = sql.bytewise();
    let (bucket_col, group_cols) = match bucket {
        Some(b) if b.ms() == tier_ms => ("x.bucket_ms AS b, ".to_string(), "b, g"),
        Some(b) => (
            format!("{} AS b, ", bucket_expr("x.bucket_ms", b.ms())),
            "b, g",
        ),
        None => (String::new(), "g"),
    };
    (
        format!(
            "SELECT {bucket_col}{group_expr}{bytewise} AS g, SUM(x.requests){cast}, {cost}, \
             {avoided}, SUM(x.prompt_tokens){cast}, SUM(x.completion_tokens){cast}, \
             SUM(x.errors){cast}, SUM(x.cache_hits){cast}"
        ),
        group_cols,
        limit,
    )
}

/// The `rollup_dims` dimensions of tag keys are `t:<tag key>`; they sort
/// between these two (`';'` follows `':'`).
pub(crate) const TAG_DIM_PREFIX: &str = "t:";
pub(crate) const TAG_DIM_END: &str = "t;";

/// What a `rollup_dims` piece groups by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DimGroup {
    /// One group `""` (no grouping).
    None,
    /// The dimension's values.
    Value,
    /// `<tag key>=<value>` (a grouping by every tag, one tag key at a time).
    Pair(String),
}

/// Spend of one piece of a range read from `rollup_dims`: dimension `dim`
/// (only its value `value` when set), buckets of width `tier_ms` starting in
/// `[from_ms, to_ms)`, summed per `bucket` when set and per group. Same
/// columns as [`select_spend`]. One contiguous range of the primary key
/// `(tier, dim, bucket_ms, value)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn select_dims(
    d: Dialect,
    dim: &str,
    group: &DimGroup,
    value: Option<&str>,
    tier_ms: i64,
    bucket: Option<Bucket>,
    from_ms: i64,
    to_ms: i64,
) -> Sql {
    let values: Vec<&str> = value.into_iter().collect();
    select_dims_of(d, dim, group, &values, tier_ms, bucket, from_ms, to_ms)
}

/// [`select_dims`] of the values `values` of `dim` only (none: every
/// value), each read by the value index: a chart's kept groups in one
/// statement per piece instead of one per group. One bound parameter per
/// value: callers pass at most a chart's `top` groups
/// (`SPEND_GROUPS_LIMIT_MAX`, 1,000), far below SQLite's 32,766 and
/// PostgreSQL's 65,535 parameters.
#[allow(clippy::too_many_arguments)]
pub(crate) fn select_dims_of(
    d: Dialect,
    dim: &str,
    group: &DimGroup,
    values: &[&str],
    tier_ms: i64,
    bucket: Option<Bucket>,
    from_ms: i64,
    to_ms: i64,
) -> Sql {
    let mut sql = Sql::new(d);
    let tier = sql.bind(Param::Int(tier_ms));
    let pd = sql.bind_text(dim);
    let from = sql.bind(Param::Int(from_ms));
    let to = sql.bind(Param::Int(to_ms));
    let mut scope = String::new();
    // One value: its buckets by the index on (tier, dim, value, bucket_ms)
    // (SQLite, without statistics, would take the primary key's bucket range
    // and pass every other value: 47 ms against 1 ms for a key's week by
    // hour at 10 million rows). PostgreSQL's planner chooses by itself.
    let mut indexed = "";
    if !values.is_empty() {
        let ps: Vec<String> = values.iter().map(|v| sql.bind_text(v)).collect();
        scope.push_str(&format!(" AND x.value IN ({})", ps.join(", ")));
        if d == Dialect::Sqlite {
            indexed = " INDEXED BY rollup_dims_value";
        }
    }
    let group_expr = match group {
        DimGroup::None => "''".to_string(),
        DimGroup::Value => "x.value".to_string(),
        DimGroup::Pair(k) => {
            let p = sql.bind_text(&format!("{k}="));
            format!("({p} || x.value)")
        }
    };
    let (select, group_cols, limit) = rollup_select(&mut sql, &group_expr, bucket, tier_ms);
    sql.text = format!(
        "{select} FROM rollup_dims x{indexed} \
         WHERE x.tier = {tier} AND x.dim = {pd} AND x.bucket_ms >= {from} \
         AND x.bucket_ms < {to}{scope} \
         GROUP BY {group_cols} ORDER BY {group_cols} LIMIT {limit}"
    );
    sql
}

/// The smallest dimension of tier `tier_ms` in `rollup_dims` after `after`
/// (or the first from `low`, inclusive) and below `high` (when set), as the
/// group of one row in the columns of [`select_spend`] without a bucket (no
/// row when there is none): one seek of the primary key per dimension.
/// (`ORDER BY ... LIMIT 1`, not `MIN(dim)`: SQLite's min/max optimisation
/// did not apply to that form, which scanned the tier's rows: 0.3-1 s per
/// call at 17 million minute rows.)
pub(crate) fn select_next_dim(
    d: Dialect,
    tier_ms: i64,
    after: Option<&str>,
    low: &str,
    high: Option<&str>,
) -> Sql {
    let mut sql = Sql::new(d);
    let tier = sql.bind(Param::Int(tier_ms));
    let low = sql.bind_text(after.unwrap_or(low));
    let op = if after.is_some() { ">" } else { ">=" };
    let below = match high {
        Some(h) => format!(" AND x.dim < {}", sql.bind_text(h)),
        None => String::new(),
    };
    let (int, text) = match d {
        Dialect::Sqlite => ("", ""),
        Dialect::Postgres => ("::BIGINT", "::TEXT"),
    };
    sql.text = format!(
        "SELECT x.dim, 1{int}, '0'{text}, '0'{text}, 0{int}, 0{int}, 0{int}, 0{int} \
         FROM rollup_dims x WHERE x.tier = {tier} AND x.dim {op} {low}{below} \
         ORDER BY x.dim LIMIT 1"
    );
    sql
}

/// The conditions of [`select_logs`] on a row of `requests r`.
fn log_conditions(sql: &mut Sql, f: &LogFilter) -> Vec<String> {
    let mut conds: Vec<String> = Vec::new();
    let text_fields = [
        ("r.key_name", &f.key),
        ("r.team", &f.team),
        ("r.customer", &f.customer),
        ("r.provider", &f.provider),
        ("r.model", &f.model),
    ];
    for (column, value) in text_fields {
        if let Some(v) = value {
            let p = sql.bind_text(v);
            conds.push(format!("{column} = {p}"));
        }
    }
    if let Some(status) = f.status {
        let p = sql.bind(Param::Int(i64::from(status)));
        conds.push(format!("r.status = {p}"));
    }
    conds.extend(log_window_conditions(sql, f));
    if let Some((k, v)) = &f.tag {
        let value = sql.tag_value(k);
        let pv = sql.bind_text(v);
        conds.push(format!("{value} = {pv}"));
    }
    conds
}

/// The time range and cursor conditions of a log query (the rows a page
/// may look at, before the other filters).
fn log_window_conditions(sql: &mut Sql, f: &LogFilter) -> Vec<String> {
    let mut conds = Vec::new();
    if let Some(from) = f.from_ms {
        let p = sql.bind(Param::Int(from));
        conds.push(format!("r.time_ms >= {p}"));
    }
    if let Some(to) = f.to_ms {
        let p = sql.bind(Param::Int(to));
        conds.push(format!("r.time_ms < {p}"));
    }
    if let Some(c) = &f.before {
        let t1 = sql.bind(Param::Int(c.time_ms));
        let t2 = sql.bind(Param::Int(c.time_ms));
        let id = sql.bind_text(&c.id);
        // A range on time, as in `select_logs_above`.
        conds.push(format!("r.time_ms <= {t1}"));
        conds.push(format!("(r.time_ms < {t2} OR r.id < {id})"));
    }
    conds
}

fn where_clause(conds: &[String]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// `SELECT time_ms, id` of the row `LOG_QUERY_SCAN_ROWS_MAX` rows below the
/// page's start (its time range and cursor only): the last row a bounded page
/// may examine. None when fewer rows are left.
pub(crate) fn select_scan_boundary(d: Dialect, f: &LogFilter, scan_rows: usize) -> Sql {
    let mut sql = Sql::new(d);
    let conds = log_window_conditions(&mut sql, f);
    let offset = sql.bind(Param::Int(scan_rows.saturating_sub(1) as i64));
    sql.text = format!(
        "SELECT r.time_ms, r.id FROM requests r{} ORDER BY r.time_ms DESC, r.id DESC \
         LIMIT 1 OFFSET {offset}",
        where_clause(&conds)
    );
    sql
}

/// `SELECT` of one row by id.
pub(crate) fn select_log_by_id(d: Dialect, id: &str) -> Sql {
    let mut sql = Sql::new(d);
    let p = sql.bind_text(id);
    sql.text = format!("SELECT {} FROM requests r WHERE r.id = {p}", row_columns(d));
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_bind_every_value_and_bound_the_limit() {
        let f = LogFilter {
            key: Some("k'; DROP TABLE requests; --".into()),
            status: Some(429),
            tag: Some(("env".into(), "prod".into())),
            before: Some(LogCursor {
                time_ms: 5,
                id: "req_x".into(),
            }),
            limit: 1_000_000,
            ..LogFilter::default()
        };
        let sql = select_logs(Dialect::Sqlite, &f);
        assert!(!sql.text.contains("DROP"), "values are bound, not spliced");
        assert_eq!(
            sql.params.last(),
            Some(&Param::Int(LOG_QUERY_LIMIT_MAX as i64))
        );
        assert_eq!(sql.params.len(), 8);
        let pg = select_logs(Dialect::Postgres, &f);
        assert!(pg.text.contains("$1::TEXT") && pg.text.contains("$2::BIGINT"));
    }

    #[test]
    fn spend_groups_by_a_tag_read_from_the_json_with_the_key_bound() {
        let sql = select_spend(
            Dialect::Postgres,
            &GroupBy::Tag("env".into()),
            &SpendFilter::default(),
            Some(Bucket::Hour),
            0,
            10,
        );
        assert!(sql
            .text
            .contains("COALESCE((r.tags::json ->> $1::TEXT), '') COLLATE \"C\" AS g"));
        assert!(sql.text.contains("ORDER BY b, g LIMIT"));
        assert_eq!(sql.params[0], Param::Text("env".into()));
        let lite = select_spend(
            Dialect::Sqlite,
            &GroupBy::Tag("a\"'.b".into()),
            &SpendFilter::default(),
            None,
            0,
            10,
        );
        assert!(lite.text.contains(
            "COALESCE((SELECT t.value FROM json_each(r.tags) t WHERE t.key = ?1), '') AS g"
        ));
        assert_eq!(lite.params[0], Param::Text("a\"'.b".into()));
        let plain = select_spend(
            Dialect::Sqlite,
            &GroupBy::Tag("env.x-1".into()),
            &SpendFilter::default(),
            None,
            0,
            10,
        );
        assert!(plain
            .text
            .contains("COALESCE(json_extract(r.tags, ?1), '') AS g"));
        assert_eq!(plain.params[0], Param::Text("$.\"env.x-1\"".into()));
    }

    #[test]
    fn spend_by_every_tag_joins_the_tags_and_a_scope_binds_its_names() {
        let filter = SpendFilter {
            team: Some("search'--".into()),
            ..SpendFilter::default()
        };
        let lite = select_spend(Dialect::Sqlite, &GroupBy::Tags, &filter, None, 0, 10);
        assert!(lite.text.contains(
            "SELECT (t.key || '=' || t.value) AS g, COUNT(*), sum_picodollars(r.cost_picodollars), \
             sum_picodollars(r.avoided_picodollars), SUM(r.prompt_tokens)"
        ));
        assert!(lite
            .text
            .contains("FROM requests r, json_each(r.tags) t WHERE"));
        assert!(
            lite.text.contains("AND r.team = ?3 GROUP BY g"),
            "{}",
            lite.text
        );
        assert_eq!(lite.params[2], Param::Text("search'--".into()));
        let pg = select_spend(Dialect::Postgres, &GroupBy::Key, &filter, None, 0, 10);
        assert!(
            pg.text.contains("AND r.team = $3::TEXT GROUP BY g"),
            "{}",
            pg.text
        );
        assert!(!pg.text.contains("json_each"));
        assert!(
            pg.text.contains(
                "SUM(r.cost_picodollars)::TEXT, SUM(r.avoided_picodollars)::TEXT, \
                 SUM(r.prompt_tokens)::BIGINT"
            ),
            "{}",
            pg.text
        );
        let pg_tags = select_spend(Dialect::Postgres, &GroupBy::Tags, &filter, None, 0, 10);
        assert!(pg_tags
            .text
            .contains("FROM requests r, json_each_text(r.tags::json) t WHERE"));
    }
}
