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
    fn new(dialect: Dialect) -> Sql {
        Sql {
            dialect,
            text: String::new(),
            params: Vec::new(),
        }
    }

    /// Adds a parameter and returns its placeholder.
    fn bind(&mut self, p: Param) -> String {
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

/// `SELECT` for [`LogStore::query_logs`](super::LogStore::query_logs).
pub(crate) fn select_logs(d: Dialect, f: &LogFilter) -> Sql {
    let mut sql = Sql::new(d);
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
    if let Some(from) = f.from_ms {
        let p = sql.bind(Param::Int(from));
        conds.push(format!("r.time_ms >= {p}"));
    }
    if let Some(to) = f.to_ms {
        let p = sql.bind(Param::Int(to));
        conds.push(format!("r.time_ms < {p}"));
    }
    if let Some((k, v)) = &f.tag {
        let value = sql.tag_value(k);
        let pv = sql.bind_text(v);
        conds.push(format!("{value} = {pv}"));
    }
    if let Some(c) = &f.before {
        let t1 = sql.bind(Param::Int(c.time_ms));
        let t2 = sql.bind(Param::Int(c.time_ms));
        let id = sql.bind_text(&c.id);
        conds.push(format!(
            "(r.time_ms < {t1} OR (r.time_ms = {t2} AND r.id < {id}))"
        ));
    }
    let limit = sql.bind(Param::Int(f.limit.min(LOG_QUERY_LIMIT_MAX) as i64));
    let where_clause = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    sql.text = format!(
        "SELECT {} FROM requests r{where_clause} ORDER BY r.time_ms DESC, r.id DESC LIMIT {limit}",
        row_columns(d)
    );
    sql
}

/// Spend grouped by `group_by` over `[from_ms, to_ms)`, per bucket when
/// `bucket` is set. Selected columns: [bucket_start,] group, requests,
/// cost, avoided (both decimal text), prompt_tokens, completion_tokens. At most
/// [`LOG_SERIES_POINTS_MAX`] + 1 rows, so the caller can tell "too many".
pub(crate) fn select_spend(
    d: Dialect,
    group_by: &GroupBy,
    filter: &SpendFilter,
    bucket: Option<Bucket>,
    from_ms: i64,
    to_ms: i64,
) -> Sql {
    let mut sql = Sql::new(d);
    let group = match group_by {
        GroupBy::Key => "r.key_name".to_string(),
        GroupBy::Team => "COALESCE(r.team, '')".to_string(),
        GroupBy::Customer => "COALESCE(r.customer, '')".to_string(),
        GroupBy::Provider => "r.provider".to_string(),
        GroupBy::Model => "r.model".to_string(),
        GroupBy::Tag(k) => format!("COALESCE({}, '')", sql.tag_value(k)),
        GroupBy::Tags => "(t.key || '=' || t.value)".to_string(),
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
    ] {
        if let Some(v) = value {
            let p = sql.bind_text(v);
            scope.push_str(&format!(" AND {column} = {p}"));
        }
    }
    let limit = sql.bind(Param::Int(LOG_SERIES_POINTS_MAX as i64 + 1));
    // The collation goes on the selected expression: PostgreSQL accepts an
    // output name in ORDER BY only bare.
    let bytewise = sql.bytewise();
    let (bucket_col, group_cols) = match bucket {
        Some(b) => {
            let w = b.ms();
            (
                format!("r.time_ms - (((r.time_ms % {w}) + {w}) % {w}) AS b, "),
                "b, g",
            )
        }
        None => (String::new(), "g"),
    };
    sql.text = format!(
        "SELECT {bucket_col}{group}{bytewise} AS g, COUNT(*), {cost}, {avoided}, \
         SUM(r.prompt_tokens){tokens_cast}, SUM(r.completion_tokens){tokens_cast} \
         FROM requests r{tags_join} WHERE r.time_ms >= {from} AND r.time_ms < {to}{scope} \
         GROUP BY {group_cols} ORDER BY {group_cols} LIMIT {limit}"
    );
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
