//! The sink-agnostic store interface, and the row encoding both sinks share.
//!
//! # The schema (both sinks)
//!
//! `requests`: one row per request, `id` unique; indexes on `(time_ms, id)`
//! (ranges, newest-first paging, retention) and `(key_name, time_ms)`.
//! `requests.tags` holds the row's tags as one JSON object of strings
//! (`{"env":"prod"}`, keys sorted); filtering and grouping by a tag read it
//! (SQLite `json_extract` with the key in a bound path, or `json_each` for a
//! key no path label can hold; PostgreSQL `tags::json ->> key`, the key
//! bound) with no index on tags: a tag filter is checked on each row the
//! other conditions select, newest first, until the page is full (fast for a
//! common tag; for a rare or absent one `query_logs` scans the whole range,
//! `query_log_page` at most `LOG_QUERY_SCAN_ROWS_MAX` rows per page); spend
//! queries read the raw rows only for the sub-minute (with tags, sub-hour)
//! edges of their range and above the rollup mark, the rest from the
//! rollups (versions 4 and 5, below).
//! `schema_version(version)`: one row.
//!
//! Version 1 also kept each tag as a row of a `request_tags` table, two more
//! b-tree entries per tag on every insert, which roughly doubled the SQLite
//! writer's CPU per row (docs/benchmarks.md). Opening a version 1 store drops
//! that table (and its index) in the transaction that sets version 2.
//!
//! Version 3 adds `requests.avoided_picodollars`, the spend a cache hit
//! avoided (what the original request cost; 0 for any other row), stored and
//! summed exactly as the cost is. Opening a version 2 store adds the column
//! with default 0 (`ALTER TABLE .. ADD COLUMN`, no rewrite of the rows) in
//! the transaction that sets version 3, so its old rows read as avoiding
//! nothing.
//!
//! Version 4 adds the rollups (`rollups`, `rollup_tags`: per-minute, -hour
//! and -day aggregates by key, team, customer, provider and model, and per
//! tag; [`rollup`](super::rollup) describes them), kept by `insert_batch` in
//! the batch's transaction. Opening a version 3 store creates them and fills
//! them from the stored rows in SQL (`GROUP BY`, the tags through
//! `json_each` / `json_each_text`) in the transaction that sets version 4;
//! on a large log that takes a while, once. Spend queries read the rollups;
//! raw-row retention never deletes them.
//!
//! Version 5 adds `rollup_dims` (sums by one dimension) and `rollup_marks`
//! (how far the rollups are built: from version 5 on they are built when a
//! minute closes, `reqlog::rollup_build`, not by `insert_batch`), and drops
//! `rollup_tags`. Opening a version 4 store fills `rollup_dims` from the
//! version 4 tables, sets the mark past the newest row and drops
//! `rollup_tags`, in the transaction that sets version 5.
//!
//! Version 6 builds each tier once, when its bucket closes (a mark per tier
//! in `rollup_marks`; version 5 added every minute's share to the open hour
//! and day), gives the tags a minute tier and adds per tag key its sums and
//! a bound on its values (`tagsum`, `tagmax` in `rollup_dims`). Opening a
//! version 5 store starts the hour and day marks at version 5's mark floored
//! to them, deletes the open hour's and day's rows (rebuilt when they close),
//! fills the sums and bounds from the hour and day tag rows, and sums the
//! raw rows of the kept minutes (`LOG_ROLLUP_MINUTE_KEEP`) into the tags'
//! minute tier, in the transaction that sets version 6: on a large log, a
//! `json_each` over up to 35 days of rows, once. On PostgreSQL it also
//! creates extended statistics on `rollup_dims (tier, dim)`.
//!
//! Version 7 adds two tiers that are not series buckets, six hours and a
//! week (`rollup::Tier`), so a long range's edges and middle read a few
//! coarse buckets instead of up to 46 hours and 29 days per group (the
//! dashboard's 30-day key totals: docs/benchmarks.md). The tables do not
//! change. Opening a version 6 store builds both tiers from the hour and day
//! tiers below their marks (`rollup_build::close_tiers`), in the transaction
//! that sets version 7.
//!
//! Cost (and avoided spend) is exact in both: PostgreSQL stores picodollars as `NUMERIC(39,0)`
//! (every i128 fits) and sums them exactly. SQLite has no integer wider than
//! 64 bits (an i64 of picodollars stops at $9.2M per row, and a SUM of them
//! would overflow or, with `total()`, turn into a float), so it stores the
//! decimal text of the i128 and sums with `sum_picodollars`, an aggregate
//! bursar registers on each connection that adds i128s and fails on
//! overflow. One column, exact for every value, readable in the sqlite3 shell.
//!
//! Token counts and durations are stored as 64-bit signed integers; a `u64`
//! above `i64::MAX` (no real count is) is stored as `i64::MAX` rather than
//! failing its batch.

use std::borrow::Cow;

use super::query::{
    Bucket, GroupBy, LogCursor, LogFilter, LogPage, SeriesPoint, SpendFilter, SpendTotal,
};
use super::row::{CacheStatus, LogRow};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 7;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or written now (connection, I/O, lock,
    /// timeout); the same call may succeed later.
    #[error("request log store unavailable: {0}")]
    Unavailable(String),
    /// The store refused a row's content; retrying the same rows fails again.
    #[error("request log store refused the data: {0}")]
    Data(String),
    /// A stored value cannot be read back as a row (edited or damaged store).
    #[error("request log store holds a bad value: {0}")]
    Corrupt(String),
    /// A query's answer would exceed its bound.
    #[error("query result too large: {0}")]
    TooLarge(String),
    /// The store was written by a newer bursar.
    #[error("request log schema version {found} is newer than this bursar's {SCHEMA_VERSION}")]
    SchemaTooNew { found: i64 },
}

impl StoreError {
    /// A failure caused by the rows themselves, not by the store's state.
    pub fn is_data(&self) -> bool {
        matches!(self, StoreError::Data(_))
    }
}

/// A request log store: the writer's sink and the admin API's reader.
///
/// Every method blocks; call them on the log-writer thread or a control-plane
/// thread, never on a worker.
pub trait LogStore: Send {
    /// Inserts `rows` in one transaction; a row whose id is already stored is
    /// ignored. Returns how many rows were new. `pace` is called after each
    /// row is handed to the store (the writer yields its core there while it
    /// catches up at normal priority).
    fn insert_batch(&mut self, rows: &[LogRow], pace: &mut dyn FnMut()) -> Result<u64, StoreError>;

    /// One step of the rollup build (`reqlog::rollup_build`): sums closed
    /// minutes below `limit_ms` (a minute boundary; the writer passes
    /// [`closed_to`](super::rollup_build::closed_to) of now) into the
    /// rollups and moves the mark. Returns whether more remain below
    /// `limit_ms`.
    fn roll_up(&mut self, limit_ms: i64) -> Result<bool, StoreError>;

    /// Spend per bucket over every tag group of the whole log, summed (one
    /// group `""`; a row counts once per tag it carries): what a series
    /// grouped by every tag sums to in each bucket (`reqlog::top`).
    fn spend_series_tags_summed(
        &mut self,
        bucket: Bucket,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SeriesPoint>, StoreError>;

    /// For each tag key with a row in `[from_ms, to_ms)`, a bound on the
    /// cost of any one of its values over the range (`reqlog::top` skips the
    /// keys that cannot reach a ranking's top groups).
    fn spend_tag_bounds(
        &mut self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, i128)>, StoreError>;

    /// The series of the groups `groups` of an entity grouping (key, team,
    /// customer, provider, model) of the whole log, per bucket and group,
    /// ordered by bucket then group; `None` for any other grouping
    /// (`reqlog::top` reads a chart's kept groups with it).
    fn spend_series_of_groups(
        &mut self,
        group_by: &GroupBy,
        groups: &[String],
        bucket: Bucket,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Option<Vec<SeriesPoint>>, StoreError>;

    /// The groups of tag key `key` in a grouping of the whole log by every
    /// tag (`<key>=<value>`), over `[from_ms, to_ms)`, ordered by group.
    fn spend_totals_tag_pairs(
        &mut self,
        key: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SpendTotal>, StoreError>;

    /// Starts a read snapshot: the queries until [`end_read`](Self::end_read)
    /// see one state of the store (a series folded beyond its top groups
    /// subtracts some reads from another).
    fn begin_read(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Ends the snapshot [`begin_read`](Self::begin_read) started.
    fn end_read(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Maintenance the writer runs between batches, in the idle scheduling
    /// class when it has it (SQLite: a passive checkpoint once the WAL is
    /// past [`super::LOG_SQLITE_CHECKPOINT_BYTES`]).
    fn checkpoint_if_due(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The rows matching `filter`, newest first (by `(time_ms, id)`).
    fn query_logs(&mut self, filter: &LogFilter) -> Result<Vec<LogRow>, StoreError>;

    /// One page of the rows matching `filter`, newest first, with where the
    /// next page starts. A filter without `key` but with any other column
    /// (team, customer, provider, model, status, tag: no index serves them)
    /// examines at most [`LOG_QUERY_SCAN_ROWS_MAX`](super::LOG_QUERY_SCAN_ROWS_MAX) rows of its range below
    /// its cursor, so a rare value cannot make one page scan the whole log;
    /// the page then may hold fewer rows than `limit` (even none) and `next`
    /// says where to continue. Without such a filter, or with `key` (its
    /// index), a page is as [`LogStore::query_logs`]'s.
    fn query_log_page(&mut self, filter: &LogFilter) -> Result<LogPage, StoreError>;

    /// The row with this id, if stored.
    fn log_by_id(&mut self, id: &str) -> Result<Option<LogRow>, StoreError>;

    /// Spend per bucket and group over `[from_ms, to_ms)`, ordered by bucket
    /// then group (bytewise). Buckets with no request are absent.
    fn spend_series(
        &mut self,
        group_by: &GroupBy,
        bucket: Bucket,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        self.spend_series_where(group_by, &SpendFilter::default(), bucket, from_ms, to_ms)
    }

    /// [`LogStore::spend_series`] of the rows `filter` selects.
    fn spend_series_where(
        &mut self,
        group_by: &GroupBy,
        filter: &SpendFilter,
        bucket: Bucket,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SeriesPoint>, StoreError>;

    /// Spend per group over `[from_ms, to_ms)`, ordered by group (bytewise).
    fn spend_totals(
        &mut self,
        group_by: &GroupBy,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SpendTotal>, StoreError> {
        self.spend_totals_where(group_by, &SpendFilter::default(), from_ms, to_ms)
    }

    /// [`LogStore::spend_totals`] of the rows `filter` selects.
    fn spend_totals_where(
        &mut self,
        group_by: &GroupBy,
        filter: &SpendFilter,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SpendTotal>, StoreError>;

    /// [`LogStore::spend_series_where`] (`bucket` set) or
    /// [`LogStore::spend_totals_where`] (as points in bucket 0) computed by a
    /// scan of every raw row of the range, never from the rollups: the
    /// rollups' test oracle. Slow on a large log; not for the dashboard.
    fn spend_scan(
        &mut self,
        group_by: &GroupBy,
        filter: &SpendFilter,
        bucket: Option<Bucket>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SeriesPoint>, StoreError>;

    /// Deletes up to `rows_max` of the oldest minute-tier rollup rows with a
    /// bucket before `cutoff_ms` ([`super::LOG_ROLLUP_MINUTE_KEEP`]); returns how
    /// many were deleted. Raw-row retention never deletes rollups.
    fn delete_minute_rollups_before(
        &mut self,
        cutoff_ms: i64,
        rows_max: u64,
    ) -> Result<u64, StoreError>;

    /// Deletes up to `rows_max` of the oldest rows with `time_ms < cutoff_ms`;
    /// returns how many were deleted.
    fn delete_before(&mut self, cutoff_ms: i64, rows_max: u64) -> Result<u64, StoreError>;

    /// Deletes up to `rows_max` of the oldest rows beyond the newest
    /// `keep_rows`; returns how many were deleted.
    fn delete_beyond(&mut self, keep_rows: u64, rows_max: u64) -> Result<u64, StoreError>;

    /// How many rows are stored.
    fn count(&mut self) -> Result<u64, StoreError>;
}

/// Whether a log page is bounded to [`LOG_QUERY_SCAN_ROWS_MAX`](super::LOG_QUERY_SCAN_ROWS_MAX) rows examined
/// (see [`LogStore::query_log_page`]).
pub(crate) fn page_is_bounded(f: &LogFilter) -> bool {
    f.key.is_none()
        && (f.team.is_some()
            || f.customer.is_some()
            || f.provider.is_some()
            || f.model.is_some()
            || f.status.is_some()
            || f.tag.is_some())
}

/// A page from its rows and the last row its scan could examine (`None`:
/// the scan was not bounded, or the range ends before the bound).
pub(crate) fn log_page(f: &LogFilter, rows: Vec<LogRow>, boundary: Option<LogCursor>) -> LogPage {
    let limit = f.limit.min(super::LOG_QUERY_LIMIT_MAX);
    if rows.len() >= limit {
        let next = rows.last().map(LogCursor::after);
        return LogPage {
            rows,
            next,
            scan_bounded: false,
        };
    }
    let scan_bounded = boundary.is_some();
    LogPage {
        rows,
        next: boundary,
        scan_bounded,
    }
}

/// A count as the stores keep it (see the module doc).
pub(crate) fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Tags as the JSON object stored in `requests.tags`.
#[cfg(test)]
pub(crate) fn tags_json(tags: &[(String, String)]) -> String {
    let mut out = String::new();
    write_tags_json(&mut out, tags, false);
    out
}

/// Appends tags as the JSON object stored in `requests.tags`: the text
/// serde_json writes for them as a map (keys sorted, the last of a repeated
/// key kept), written straight into `out`, which the writer reuses for every
/// row. With `nul_to_replacement` a NUL in a key or value is written as
/// U+FFFD instead of `\u0000` (for PostgreSQL, see [`postgres`](super::postgres)).
pub(crate) fn write_tags_json(
    out: &mut String,
    tags: &[(String, String)],
    nul_to_replacement: bool,
) {
    // Tags are sorted with unique keys (`LogRow::tags`); anything else goes
    // through a map first, so it is stored as it always was.
    if !tags.windows(2).all(|w| w[0].0 < w[1].0) {
        let map: std::collections::BTreeMap<&str, &str> =
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let sorted: Vec<(String, String)> = map
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        return write_tags_json(out, &sorted, nul_to_replacement);
    }
    out.push('{');
    for (i, (k, v)) in tags.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(out, k, nul_to_replacement);
        out.push(':');
        push_json_string(out, v, nul_to_replacement);
    }
    out.push('}');
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it: `"`, `\`,
/// the short forms `\b \f \n \r \t`, other control characters as
/// `\u00xx`; everything else (DEL, non-ASCII) as is.
fn push_json_string(out: &mut String, s: &str, nul_to_replacement: bool) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0 if nul_to_replacement => "\u{fffd}",
            0..=0x1f => "",
            _ => continue,
        };
        // Every byte matched is ASCII, so `i` is a char boundary.
        out.push_str(&s[start..i]);
        if short.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// A row's columns as read from either store, before validation.
pub(crate) struct RawRow {
    pub id: String,
    pub time_ms: i64,
    pub key: String,
    pub team: Option<String>,
    pub customer: Option<String>,
    pub provider: String,
    pub model: String,
    pub endpoint: String,
    pub status: i64,
    pub tokens: [i64; 5],
    pub cost: String,
    pub avoided: String,
    pub price_version: String,
    pub estimated: bool,
    pub ttfb_us: Option<i64>,
    pub total_us: i64,
    pub cache_status: String,
    pub stream: bool,
    pub tags: String,
    pub prompt_text: Option<String>,
    pub completion_text: Option<String>,
}

impl RawRow {
    /// Validates every column; a bad one is a [`StoreError::Corrupt`] naming
    /// the row and column.
    pub fn into_row(self) -> Result<LogRow, StoreError> {
        let id = self.id;
        let bad = |column: &str, value: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("row {id:?}: {column} = {value}"))
        };
        let count = |column: &str, v: i64| u64::try_from(v).map_err(|_| bad(column, &v));
        let [prompt, completion, cached, cache_write, reasoning] = self.tokens;
        let tags: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&self.tags).map_err(|_| bad("tags", &self.tags))?;
        let mut tag_pairs = Vec::with_capacity(tags.len());
        for (k, v) in tags {
            match v {
                serde_json::Value::String(v) => tag_pairs.push((k, v)),
                other => return Err(bad("tags", &other)),
            }
        }
        Ok(LogRow {
            time_ms: self.time_ms,
            key: self.key.into(),
            team: self.team.map(Into::into),
            customer: self.customer.map(Into::into),
            provider: self.provider.into(),
            model: self.model,
            endpoint: Cow::Owned(self.endpoint),
            status: u16::try_from(self.status).map_err(|_| bad("status", &self.status))?,
            prompt_tokens: count("prompt_tokens", prompt)?,
            completion_tokens: count("completion_tokens", completion)?,
            cached_tokens: count("cached_tokens", cached)?,
            cache_write_tokens: count("cache_write_tokens", cache_write)?,
            reasoning_tokens: count("reasoning_tokens", reasoning)?,
            cost_picodollars: self
                .cost
                .parse()
                .map_err(|_| bad("cost_picodollars", &self.cost))?,
            avoided_picodollars: self
                .avoided
                .parse()
                .map_err(|_| bad("avoided_picodollars", &self.avoided))?,
            price_version: self.price_version.into(),
            estimated: self.estimated,
            ttfb_us: match self.ttfb_us {
                Some(v) => Some(count("ttfb_us", v)?),
                None => None,
            },
            total_us: count("total_us", self.total_us)?,
            cache_status: CacheStatus::parse(&self.cache_status)
                .ok_or_else(|| bad("cache_status", &self.cache_status))?,
            stream: self.stream,
            tags: tag_pairs,
            prompt_text: self.prompt_text,
            completion_text: self.completion_text,
            id,
        })
    }
}

/// One group (and bucket) of a spend query as read from either store.
#[derive(Debug, Clone)]
pub(crate) struct RawSpend {
    pub bucket_start_ms: i64,
    pub group: String,
    pub requests: i64,
    pub cost: String,
    pub avoided: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub errors: i64,
    pub cache_hits: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawRow {
        RawRow {
            id: "req_1".into(),
            time_ms: 1,
            key: "k".into(),
            team: None,
            customer: None,
            provider: "p".into(),
            model: "m".into(),
            endpoint: "chat/completions".into(),
            status: 200,
            tokens: [1, 2, 3, 4, 5],
            cost: "-170141183460469231731687303715884105728".into(),
            avoided: "170141183460469231731687303715884105727".into(),
            price_version: "v".into(),
            estimated: true,
            ttfb_us: None,
            total_us: 9,
            cache_status: "hit".into(),
            stream: false,
            tags: r#"{"a":"1","b":"2"}"#.into(),
            prompt_text: None,
            completion_text: None,
        }
    }

    #[test]
    fn a_good_raw_row_decodes() {
        let row = raw().into_row().unwrap();
        assert_eq!(row.cost_picodollars, i128::MIN);
        assert_eq!(row.avoided_picodollars, i128::MAX);
        assert_eq!(
            row.tags,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(row.cache_status, CacheStatus::Hit);
    }

    #[test]
    fn bad_values_are_errors_naming_the_column() {
        type Spoil = fn(&mut RawRow);
        let cases: [(Spoil, &str); 8] = [
            (|r| r.status = 70_000, "status"),
            (|r| r.tokens[2] = -1, "cached_tokens"),
            (|r| r.cost = "1.5".into(), "cost_picodollars"),
            (|r| r.avoided = "".into(), "avoided_picodollars"),
            (|r| r.avoided = "1e3".into(), "avoided_picodollars"),
            (|r| r.cache_status = "warm".into(), "cache_status"),
            (|r| r.tags = "[1]".into(), "tags"),
            (|r| r.tags = r#"{"a":1}"#.into(), "tags"),
        ];
        for (spoil, column) in cases {
            let mut r = raw();
            spoil(&mut r);
            match r.into_row() {
                Err(StoreError::Corrupt(m)) => assert!(m.contains(column), "{m}"),
                other => panic!("{column}: {other:?}"),
            }
        }
    }

    #[test]
    fn counts_clamp_and_tags_encode_as_an_object() {
        assert_eq!(clamp_i64(u64::MAX), i64::MAX);
        assert_eq!(clamp_i64(7), 7);
        assert_eq!(tags_json(&[("a".into(), "x\"y".into())]), r#"{"a":"x\"y"}"#);
        assert_eq!(tags_json(&[]), "{}");
    }

    /// What serde_json writes for tags as a map (the encoding before
    /// `write_tags_json`, and what `into_row` reads).
    fn serde_tags(tags: &[(String, String)]) -> String {
        let map: serde_json::Map<String, serde_json::Value> = tags
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::Value::Object(map).to_string()
    }

    #[test]
    fn tags_json_is_exactly_what_serde_json_writes() {
        let awkward: String = (0u8..=0x7f).map(char::from).collect::<String>() + "é€😀\u{fffd}";
        let t = |k: &str, v: &str| (k.to_string(), v.to_string());
        let cases: Vec<Vec<(String, String)>> = vec![
            vec![],
            vec![t("env", "prod")],
            vec![t("env", "prod"), t("feature", "search")],
            vec![t(&awkward, "b"), t("a", &awkward)],
            vec![t("a", &awkward), t(&awkward, "b")],
            vec![t("\"", "\\"), t("\\", "\"")],
            // Not as LogRow promises: unsorted, a repeated key.
            vec![t("z", "1"), t("a", "2")],
            vec![t("k", "first"), t("k", "last"), t("b", "x")],
        ];
        for tags in cases {
            let ours = tags_json(&tags);
            assert_eq!(ours, serde_tags(&tags), "{tags:?}");
            let back: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&ours).unwrap();
            assert!(back.len() <= tags.len());
        }
        let mut out = String::from("kept:");
        write_tags_json(&mut out, &[t("a\0b", "c\0")], true);
        assert_eq!(out, "kept:{\"a\u{fffd}b\":\"c\u{fffd}\"}");
        assert_eq!(tags_json(&[t("a\0", "\u{1f}")]), r#"{"a\u0000":"\u001f"}"#);
    }
}
