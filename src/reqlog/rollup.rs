//! Rollups: per-bucket aggregates of the request log, built by the log
//! writer as their buckets close (`reqlog::rollup_build`), so a spend query
//! reads a few aggregate rows per bucket instead of every request of its
//! range.
//!
//! # Tables (schema version 7, both sinks)
//!
//! - `rollup_dims(tier, dim, bucket_ms, value, requests, errors, cache_hits,
//!   cost_picodollars, avoided_picodollars, prompt_tokens,
//!   completion_tokens)`, primary key `(tier, dim, bucket_ms, value)`: spend
//!   by ONE dimension. `dim` is `""` (the whole log; `value` `""`), `key`,
//!   `team`, `customer`, `provider`, `model` ([`ENTITY_DIMS`]), `t:<tag
//!   key>` (the key's values), and two per tag key: [`TAG_SUM_DIM`] (the sum
//!   of the rows carrying the key) and [`TAG_MAX_DIM`] (a bound on any one
//!   value of it); every tier ([`ROLLUP_TIERS`]). This is what the
//!   dashboard reads: an unfiltered total or series, or one filtered by a
//!   single dimension, reads one contiguous key range whose size is the
//!   number of that dimension's values per bucket (11 customers, not the
//!   thousands of key × model × provider combinations a bucket holds).
//! - `rollups(tier, bucket_ms, key_name, team, customer, provider, model,
//!   same measures)`: the combinations, for queries with two or more
//!   entity filters, or one and a grouping by another entity (a key's spend
//!   by model). Tiers ([`ROLLUP_TIERS`]): minute, hour, six hours, day,
//!   week (the six-hour and week tiers are not series buckets: they shorten
//!   a long range's decomposition). There is no
//!   combination by tag (version 4's `rollup_tags` held about one row per
//!   tagged raw row and tier for a tag such as `user`: the largest table and
//!   most of the writer's cost): a tag with any other filter or grouping
//!   reads the raw rows of the range.
//! - `rollup_marks(tier, done_ms)`: how far each tier is built ([`Marks`]).
//!
//! `team` and `customer` are `''` for a row without one. `tier` is the bucket
//! width in ms and `bucket_ms` the floor of the rows' `time_ms` to it.
//! `errors` counts rows with status >= 400, `cache_hits` rows served from the
//! exact or semantic cache. Money is exact as in `requests` (SQLite: decimal
//! text, added by `add_picodollars` and summed by `sum_picodollars`, both
//! checked i128; PostgreSQL: `NUMERIC(39,0)`).
//!
//! # Writing
//!
//! The writer inserts raw rows only; a build step sums each closed minute
//! into the minute tier in SQL, each closed hour from its minutes into the
//! hour tier, each closed quarter-day from its hours, each closed day from
//! its quarter-days and each closed week from its days, and moves the marks
//! (`rollup_build`): every rollup row is written once. Every raw
//! row below a tier's mark is in that tier, none above it is. A row inserted
//! below a mark (late) is added to each tier whose mark it is below by its
//! own insert ([`RollupBatch`]), in the same transaction, and only if it was actually
//! inserted (SQLite: the change count of each `INSERT OR IGNORE`;
//! PostgreSQL: `ON CONFLICT DO NOTHING RETURNING id`): a spill replay never
//! counts a row twice.
//!
//! # Reading: the decomposition of a range
//!
//! A range `[from, to)` ([`pieces`]) is cut at the boundaries of the
//! coarsest tier allowed: whole weeks in the middle from the week tier,
//! then at each edge the days, quarter-days and hours between the coarser
//! boundary and the range's edge from their tiers (a 30-day range at any
//! time of day: at most 6 days, 3 quarter-days and 5 hours per edge, instead
//! of 29 days and up to 23 hours per edge without the week and six-hour
//! tiers), the minutes from the minute tier, and the rest from the raw rows by the
//! `(time_ms, id)` index: the sub-minute edges and everything at or above
//! the minute mark (a tier's bucket is read only when it is whole below that
//! tier's mark, so the open hour and day come from their minutes). A series
//! with bucket B uses only tiers no wider than B, so each piece floors
//! exactly into B's buckets. Pieces
//! are summed in Rust with checked i128 arithmetic; a grouping by one tag key
//! gets its `""` group (rows without the tag) as the whole minus the tagged
//! rows.
//!
//! A grouping by every tag ranked by cost with a limit (the dashboard's top
//! tags) reads the tag keys in order of [`tag_bounds`] and stops at the
//! first key whose bound is below the groups it keeps (`reqlog::top`), so a
//! key of 50,000 small values is not read value by value; its summed series
//! (every tag's groups folded) reads [`TAG_SUM_DIM`].
//!
//! Two kinds of query no rollup holds are answered from the raw rows of the
//! whole range: a tag with any other filter or grouping (a tag filter and a
//! grouping by model, a key filter and a grouping by tag), and a filter on an
//! empty team or customer name (`''` in the rollups also means "none").
//!
//! # Retention and exactness
//!
//! Raw-row retention (`retention`, `max_rows`) never deletes rollups, and
//! builds the rollups past the rows it deletes first. The minute tiers are
//! kept [`super::LOG_ROLLUP_MINUTE_KEEP`]; the coarser tiers indefinitely.
//! A spend answer is exact (equal to a scan of the raw rows) while the raw
//! rows of its two sub-minute edges exist and the minute tier covers its
//! sub-hour edges. Once the raw rows are gone, the answer covers only the
//! whole minutes of the range (the sub-minute edges count nothing); once the
//! minute tier is gone too (older than `LOG_ROLLUP_MINUTE_KEEP`), only its
//! whole hours; a range aligned to whole hours (or minutes, while the minute
//! tier lasts) stays exact forever.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::query::{
    self, Bucket, Dialect, DimGroup, GroupBy, SeriesPoint, SpendFilter, SpendTotal, TAG_DIM_PREFIX,
};
use super::row::{CacheStatus, LogRow};
use super::store::{clamp_i64, RawSpend, StoreError};
use super::LOG_SERIES_POINTS_MAX;

/// A rollup tier: buckets of a fixed width, each a multiple of the finer
/// tier's (so a tier's bucket is the sum of whole buckets of the tier below,
/// and is built from them when it closes). `SixHours` and `Week` are not
/// series buckets: they shorten a long range's decomposition (a 30-day range
/// at an arbitrary time of day reads at most 5 hours, 3 quarter-days and 6
/// days at each edge and weeks between, instead of up to 23 hours and 29
/// days). Weeks start at the epoch (a Thursday): no caller sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Tier {
    Minute,
    Hour,
    SixHours,
    Day,
    Week,
}

impl Tier {
    /// The bucket width in ms, also the stored `tier` value.
    pub const fn ms(self) -> i64 {
        match self {
            Tier::Minute => 60_000,
            Tier::Hour => 3_600_000,
            Tier::SixHours => 21_600_000,
            Tier::Day => 86_400_000,
            Tier::Week => 604_800_000,
        }
    }

    /// The tier whose buckets are a series bucket's.
    pub const fn of(bucket: Bucket) -> Tier {
        match bucket {
            Bucket::Minute => Tier::Minute,
            Bucket::Hour => Tier::Hour,
            Bucket::Day => Tier::Day,
        }
    }

    /// The position in [`ROLLUP_TIERS`].
    const fn index(self) -> usize {
        self as usize
    }
}

/// The tiers of both tables, finest first; each divides the next.
pub(crate) const ROLLUP_TIERS: [Tier; 5] = [
    Tier::Minute,
    Tier::Hour,
    Tier::SixHours,
    Tier::Day,
    Tier::Week,
];

/// `time_ms` floored to a multiple of `w`.
pub(crate) fn floor_to(t: i64, w: i64) -> i64 {
    t - t.rem_euclid(w)
}

/// The sums of one rollup row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Measures {
    pub requests: i64,
    pub errors: i64,
    pub cache_hits: i64,
    pub cost: i128,
    pub avoided: i128,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

fn overflow(column: &str) -> StoreError {
    StoreError::Data(format!("rollup {column} overflows"))
}

impl Measures {
    fn of(row: &LogRow) -> Measures {
        Measures {
            requests: 1,
            errors: i64::from(row.status >= 400),
            cache_hits: i64::from(matches!(
                row.cache_status,
                CacheStatus::Hit | CacheStatus::SemanticHit
            )),
            cost: row.cost_picodollars,
            avoided: row.avoided_picodollars,
            prompt_tokens: clamp_i64(row.prompt_tokens),
            completion_tokens: clamp_i64(row.completion_tokens),
        }
    }

    fn add(&mut self, o: &Measures) -> Result<(), StoreError> {
        let add = |a: i64, b: i64, c: &str| a.checked_add(b).ok_or_else(|| overflow(c));
        self.requests = add(self.requests, o.requests, "requests")?;
        self.errors = add(self.errors, o.errors, "errors")?;
        self.cache_hits = add(self.cache_hits, o.cache_hits, "cache_hits")?;
        self.cost = self
            .cost
            .checked_add(o.cost)
            .ok_or_else(|| overflow("cost_picodollars"))?;
        self.avoided = self
            .avoided
            .checked_add(o.avoided)
            .ok_or_else(|| overflow("avoided_picodollars"))?;
        self.prompt_tokens = add(self.prompt_tokens, o.prompt_tokens, "prompt_tokens")?;
        self.completion_tokens = add(
            self.completion_tokens,
            o.completion_tokens,
            "completion_tokens",
        )?;
        Ok(())
    }
}

/// The entity columns of a rollup row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Entities<'a> {
    pub key: Cow<'a, str>,
    pub team: Cow<'a, str>,
    pub customer: Cow<'a, str>,
    pub provider: Cow<'a, str>,
    pub model: Cow<'a, str>,
}

/// One `rollups` row's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RollupKey<'a> {
    pub tier: Tier,
    pub bucket_ms: i64,
    pub e: Entities<'a>,
}

/// One `rollup_dims` row's key: a dimension ([`ENTITY_DIMS`], or `t:<tag
/// key>`) and one of its values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DimKey<'a> {
    pub tier: Tier,
    pub dim: Cow<'a, str>,
    pub bucket_ms: i64,
    pub value: Cow<'a, str>,
}

/// The entity dimensions of `rollup_dims`: (dim, the `rollups` column it
/// sums by). `""` is the whole log (its one value is `""`).
pub(crate) const ENTITY_DIMS: [(&str, &str); 6] = [
    ("", "''"),
    ("key", "key_name"),
    ("team", "team"),
    ("customer", "customer"),
    ("provider", "provider"),
    ("model", "model"),
];

/// The `rollup_dims` dimension whose values are tag keys and whose measures
/// are the sums over every row carrying that key (a row counts once per tag
/// it carries): what a grouping by every tag sums to per bucket, without
/// reading each tag value.
pub(crate) const TAG_SUM_DIM: &str = "tagsum";

/// The `rollup_dims` dimension whose values are tag keys and whose measures
/// bound, each on its own, what any one value of that key has in the bucket:
/// the largest, as built when the bucket closed; a late row adds its own
/// measures (so the bound may loosen, never fail). Summed over a range's
/// buckets it bounds every value's total, which lets the top groups of every
/// tag skip a key whose values cannot reach them ([`tag_bounds`]).
pub(crate) const TAG_MAX_DIM: &str = "tagmax";

/// The `rollup_dims` dimension of a tag key.
pub(crate) fn tag_dim(tag_key: &str) -> String {
    format!("{TAG_DIM_PREFIX}{tag_key}")
}

/// The late rows of one batch (rows below the marks, which the build has
/// passed), aggregated per rollup row of every table and tier.
#[derive(Debug, Default)]
pub(crate) struct RollupBatch<'a> {
    pub rollups: HashMap<RollupKey<'a>, Measures>,
    pub dims: HashMap<DimKey<'a>, Measures>,
}

impl<'a> RollupBatch<'a> {
    /// Whether the batch holds nothing to upsert.
    pub fn is_empty(&self) -> bool {
        self.rollups.is_empty() && self.dims.is_empty()
    }

    /// Adds one inserted row to each tier whose mark it is below (see
    /// [`Marks::is_late`]). `text` maps each stored text as the sink stores it
    /// (PostgreSQL: NUL as U+FFFD), so two names the sink stores alike are
    /// one rollup row.
    pub fn add(
        &mut self,
        row: &'a LogRow,
        text: fn(&'a str) -> Cow<'a, str>,
        marks: &Marks,
    ) -> Result<(), StoreError> {
        let m = Measures::of(row);
        let e = Entities {
            key: text(&row.key),
            team: text(row.team.as_deref().unwrap_or("")),
            customer: text(row.customer.as_deref().unwrap_or("")),
            provider: text(&row.provider),
            model: text(&row.model),
        };
        for tier in ROLLUP_TIERS {
            if !marks.is_late(row.time_ms, tier) {
                continue;
            }
            let bucket_ms = floor_to(row.time_ms, tier.ms());
            let values = [
                Cow::Borrowed(""),
                e.key.clone(),
                e.team.clone(),
                e.customer.clone(),
                e.provider.clone(),
                e.model.clone(),
            ];
            let mut dim = |dim: Cow<'a, str>, value: Cow<'a, str>| {
                let k = DimKey {
                    tier,
                    dim,
                    bucket_ms,
                    value,
                };
                self.dims.entry(k).or_default().add(&m)
            };
            for ((name, _), value) in ENTITY_DIMS.iter().zip(values) {
                dim(Cow::Borrowed(name), value)?;
            }
            for (tk, tv) in &row.tags {
                let tk = text(tk);
                dim(Cow::Owned(tag_dim(&tk)), text(tv))?;
                dim(Cow::Borrowed(TAG_SUM_DIM), tk.clone())?;
                // The bound grows by what the row adds to its value.
                dim(Cow::Borrowed(TAG_MAX_DIM), tk)?;
            }
            let k = RollupKey {
                tier,
                bucket_ms,
                e: e.clone(),
            };
            self.rollups.entry(k).or_default().add(&m)?;
        }
        Ok(())
    }
}

/// Where one piece of a range is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Raw,
    Tier(Tier),
}

/// One piece of a decomposed range: `[from_ms, to_ms)` read from `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub source: Source,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// How far each tier is built: every raw row with `time_ms` below a tier's
/// mark is in that tier, no row at or above it is (`None`: nothing built
/// yet). The build keeps each mark at or below the finer tier's (`week <= day
/// <= six hours <= hour <= minute`), each a boundary of its tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Marks {
    /// By [`Tier::index`].
    pub done: [Option<i64>; ROLLUP_TIERS.len()],
}

impl Marks {
    /// Every row built: for tests of the decomposition alone.
    #[cfg(test)]
    pub const ALL: Marks = Marks {
        done: [Some(i64::MAX); ROLLUP_TIERS.len()],
    };

    /// The mark of `tier`.
    pub fn of(&self, tier: Tier) -> Option<i64> {
        self.done[tier.index()]
    }

    /// The minute tier's mark: how far the raw rows are summed.
    pub fn minute(&self) -> Option<i64> {
        self.of(Tier::Minute)
    }

    /// The end of the whole buckets of `tier` that hold every row they
    /// will: its mark floored to the tier (`i64::MIN`: none).
    pub fn complete_to(&self, tier: Tier) -> i64 {
        match self.of(tier) {
            Some(d) => floor_to(d, tier.ms()),
            None => i64::MIN,
        }
    }

    /// Whether a row at `time_ms` arrives after `tier`'s bucket of it was
    /// built (and so is added to that tier by the insert itself).
    pub fn is_late(&self, time_ms: i64, tier: Tier) -> bool {
        self.of(tier).is_some_and(|d| time_ms < d)
    }

    /// Whether a row at `time_ms` is late for any tier.
    pub fn is_late_any(&self, time_ms: i64) -> bool {
        ROLLUP_TIERS.iter().any(|t| self.is_late(time_ms, *t))
    }
}

/// The tiers no coarser than `coarsest`, finest first: what a series with
/// `coarsest`'s buckets may read (each piece floors exactly into them).
fn tiers_up_to(coarsest: Tier) -> Vec<Tier> {
    ROLLUP_TIERS
        .iter()
        .copied()
        .filter(|t| *t <= coarsest)
        .collect()
}

/// Cuts `[from_ms, to_ms)` into pieces: each tier of `tiers` (finest first)
/// covers the whole, complete buckets the coarser ones leave, raw rows the
/// rest (below the marks' complete buckets and above them).
pub(crate) fn pieces(from_ms: i64, to_ms: i64, tiers: &[Tier], marks: &Marks) -> Vec<Piece> {
    let mut out = Vec::new();
    cut(from_ms, to_ms, tiers, marks, &mut out);
    out
}

fn cut(from: i64, to: i64, tiers: &[Tier], marks: &Marks, out: &mut Vec<Piece>) {
    if from >= to {
        return;
    }
    let Some((&coarsest, finer)) = tiers.split_last() else {
        out.push(Piece {
            source: Source::Raw,
            from_ms: from,
            to_ms: to,
        });
        return;
    };
    let w = coarsest.ms();
    // Ceiling of `from` to `w` without overflow near i64::MAX.
    let a = match from.rem_euclid(w) {
        0 => Some(from),
        r => from.checked_add(w - r),
    };
    let b = floor_to(to, w).min(marks.complete_to(coarsest));
    match a {
        Some(a) if a < b => {
            cut(from, a, finer, marks, out);
            out.push(Piece {
                source: Source::Tier(coarsest),
                from_ms: a,
                to_ms: b,
            });
            cut(b, to, finer, marks, out);
        }
        _ => cut(from, to, finer, marks, out),
    }
}

/// Signed sums while pieces are merged (a tag's `""` group subtracts).
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    requests: i128,
    errors: i128,
    cache_hits: i128,
    cost: i128,
    avoided: i128,
    prompt_tokens: i128,
    completion_tokens: i128,
}

/// Spend per (bucket, group), merged from pieces.
#[derive(Default)]
struct Merge {
    groups: BTreeMap<(i64, String), Acc>,
}

impl Merge {
    fn add(
        &mut self,
        raw: Vec<RawSpend>,
        negate: bool,
        bucket_override: Option<i64>,
    ) -> Result<(), StoreError> {
        if raw.len() > LOG_SERIES_POINTS_MAX {
            return Err(too_many());
        }
        for r in raw {
            let bad = |column: &str, value: &dyn std::fmt::Display| {
                StoreError::Corrupt(format!("spend of {:?}: {column} = {value}", r.group))
            };
            let cost: i128 = r.cost.parse().map_err(|_| bad("cost", &r.cost))?;
            let avoided: i128 = r.avoided.parse().map_err(|_| bad("avoided", &r.avoided))?;
            let s: i128 = if negate { -1 } else { 1 };
            let b = bucket_override.unwrap_or(r.bucket_start_ms);
            let acc = self.groups.entry((b, r.group)).or_default();
            let add = |a: i128, v: i128, c: &str| {
                a.checked_add(v.checked_mul(s).ok_or_else(|| overflow(c))?)
                    .ok_or_else(|| overflow(c))
            };
            acc.requests = add(acc.requests, r.requests.into(), "requests")?;
            acc.errors = add(acc.errors, r.errors.into(), "errors")?;
            acc.cache_hits = add(acc.cache_hits, r.cache_hits.into(), "cache_hits")?;
            acc.cost = add(acc.cost, cost, "cost")?;
            acc.avoided = add(acc.avoided, avoided, "avoided")?;
            acc.prompt_tokens = add(acc.prompt_tokens, r.prompt_tokens.into(), "prompt_tokens")?;
            acc.completion_tokens = add(
                acc.completion_tokens,
                r.completion_tokens.into(),
                "completion_tokens",
            )?;
        }
        if self.groups.len() > LOG_SERIES_POINTS_MAX {
            return Err(too_many());
        }
        Ok(())
    }

    /// The points with at least one request, ordered by bucket then group.
    fn finish(self) -> Result<Vec<SeriesPoint>, StoreError> {
        let mut out = Vec::with_capacity(self.groups.len());
        for ((bucket_start_ms, group), a) in self.groups {
            if a.requests == 0 {
                continue;
            }
            let count = |column: &str, v: i128| {
                u64::try_from(v)
                    .map_err(|_| StoreError::Corrupt(format!("spend of {group:?}: {column} = {v}")))
            };
            out.push(SeriesPoint {
                bucket_start_ms,
                requests: count("requests", a.requests)?,
                cost_picodollars: a.cost,
                avoided_picodollars: a.avoided,
                prompt_tokens: count("prompt_tokens", a.prompt_tokens)?,
                completion_tokens: count("completion_tokens", a.completion_tokens)?,
                errors: count("errors", a.errors)?,
                cache_hits: count("cache_hits", a.cache_hits)?,
                group,
            });
        }
        Ok(out)
    }
}

fn too_many() -> StoreError {
    StoreError::TooLarge(format!(
        "more than {LOG_SERIES_POINTS_MAX} points; narrow the range or use a coarser bucket"
    ))
}

/// Runs one spend statement (`bucketed`: its first column is the bucket).
pub(crate) type RunSpend<'r> =
    dyn FnMut(&query::Sql, bool) -> Result<Vec<RawSpend>, StoreError> + 'r;

/// Whether a query must read every raw row of its range (see the module doc).
fn raw_only(group_by: &GroupBy, filter: &SpendFilter, route: Option<&DimRoute>) -> bool {
    // Tags are rolled up by one dimension only: a tag with any other filter
    // or grouping has no rollup.
    let tag_combination = route.is_none()
        && (filter.tag.is_some() || matches!(group_by, GroupBy::Tag(_) | GroupBy::Tags));
    tag_combination || filter.team.as_deref() == Some("") || filter.customer.as_deref() == Some("")
}

/// How a query is answered from `rollup_dims`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DimRoute {
    /// One dimension (one value of it when filtered), grouped or not.
    Plain {
        dim: String,
        group: DimGroup,
        value: Option<String>,
    },
    /// Grouping by one tag key, unfiltered: its values, and `""` as the whole
    /// log minus the tagged rows.
    Tag(String),
    /// Grouping by every tag, unfiltered: every tag dimension.
    AllTags,
}

/// The `rollup_dims` dimension of an entity grouping.
fn entity_dim(g: &GroupBy) -> Option<&'static str> {
    Some(match g {
        GroupBy::Key => "key",
        GroupBy::Team => "team",
        GroupBy::Customer => "customer",
        GroupBy::Provider => "provider",
        GroupBy::Model => "model",
        _ => return None,
    })
}

/// The dimension route of a query, when it has at most one filter and groups
/// by nothing, by that filter's dimension, or (unfiltered) by anything.
/// Queries with more filters, or a filter and another grouping, read the
/// combinations (`rollups`) or, with a tag, the raw rows.
fn dim_route(group_by: &GroupBy, filter: &SpendFilter) -> Option<DimRoute> {
    let mut filters: Vec<(String, &String)> = Vec::new();
    for (dim, value) in [
        ("key", &filter.key),
        ("team", &filter.team),
        ("customer", &filter.customer),
        ("model", &filter.model),
        ("provider", &filter.provider),
    ] {
        if let Some(v) = value {
            filters.push((dim.to_string(), v));
        }
    }
    if let Some((k, v)) = &filter.tag {
        filters.push((tag_dim(k), v));
    }
    let grouped_dim = match group_by {
        GroupBy::Tag(k) => Some(tag_dim(k)),
        g => entity_dim(g).map(str::to_string),
    };
    match filters.as_slice() {
        [] => Some(match group_by {
            GroupBy::None => DimRoute::Plain {
                dim: String::new(),
                group: DimGroup::None,
                value: None,
            },
            GroupBy::Tag(k) => DimRoute::Tag(k.clone()),
            GroupBy::Tags => DimRoute::AllTags,
            _ => DimRoute::Plain {
                dim: grouped_dim?,
                group: DimGroup::Value,
                value: None,
            },
        }),
        [(dim, value)] => {
            let group = match group_by {
                GroupBy::None => DimGroup::None,
                _ if grouped_dim.as_ref() == Some(dim) => DimGroup::Value,
                _ => return None,
            };
            Some(DimRoute::Plain {
                dim: dim.clone(),
                group,
                value: Some((*value).clone()),
            })
        }
        _ => None,
    }
}

/// Spend per bucket (when `bucket` is set; else one bucket, 0) and group over
/// `[from_ms, to_ms)`, from the rollups' complete buckets below `marks` and
/// the raw rows of the rest.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spend(
    d: Dialect,
    run: &mut RunSpend<'_>,
    group_by: &GroupBy,
    filter: &SpendFilter,
    bucket: Option<Bucket>,
    from_ms: i64,
    to_ms: i64,
    marks: &Marks,
) -> Result<Vec<SeriesPoint>, StoreError> {
    let mut merge = Merge::default();
    // Buckets of a totals query: all 0.
    let flat = bucket.is_none().then_some(0);
    let route = dim_route(group_by, filter);
    if raw_only(group_by, filter, route.as_ref()) {
        let sql = query::select_spend(d, group_by, filter, bucket, from_ms, to_ms);
        merge.add(run(&sql, bucket.is_some())?, false, flat)?;
        return merge.finish();
    }
    let coarsest = bucket.map_or(Tier::Week, Tier::of);
    let tiers = tiers_up_to(coarsest);
    // The tag dimensions of each tier, listed once per query (grouping by
    // every tag).
    let mut tag_dims: HashMap<Tier, Vec<String>> = HashMap::new();
    for piece in pieces(from_ms, to_ms, &tiers, marks) {
        let tier = match piece.source {
            Source::Raw => {
                let sql =
                    query::select_spend(d, group_by, filter, bucket, piece.from_ms, piece.to_ms);
                merge.add(run(&sql, bucket.is_some())?, false, flat)?;
                continue;
            }
            Source::Tier(t) => t,
        };
        let dims = |dim: &str, group: &DimGroup, value: Option<&str>| {
            query::select_dims(
                d,
                dim,
                group,
                value,
                tier.ms(),
                bucket,
                piece.from_ms,
                piece.to_ms,
            )
        };
        match &route {
            Some(DimRoute::Plain { dim, group, value }) => {
                let sql = dims(dim, group, value.as_deref());
                merge.add(run(&sql, bucket.is_some())?, false, flat)?;
            }
            Some(DimRoute::Tag(k)) => {
                // "" = every row minus the rows with the tag, plus the rows
                // whose value is "" (which the tagged read adds back).
                let all = run(&dims("", &DimGroup::None, None), bucket.is_some())?;
                merge.add(all, false, flat)?;
                let tagged = run(&dims(&tag_dim(k), &DimGroup::Value, None), bucket.is_some())?;
                let untag: Vec<RawSpend> = tagged
                    .iter()
                    .map(|r| RawSpend {
                        group: String::new(),
                        ..r.clone()
                    })
                    .collect();
                merge.add(untag, true, flat)?;
                merge.add(tagged, false, flat)?;
            }
            Some(DimRoute::AllTags) => {
                let listed = list_tag_dims(d, run, tier, &mut tag_dims)?;
                for dim in listed {
                    let key = dim.strip_prefix(TAG_DIM_PREFIX).unwrap_or(&dim).to_string();
                    let sql = dims(&dim, &DimGroup::Pair(key), None);
                    merge.add(run(&sql, bucket.is_some())?, false, flat)?;
                }
            }
            None => {
                // Entity filters and groupings only (`raw_only` took the
                // rest): the combinations.
                let sql = query::select_rollup(
                    d,
                    group_by,
                    filter,
                    tier.ms(),
                    bucket,
                    piece.from_ms,
                    piece.to_ms,
                );
                merge.add(run(&sql, bucket.is_some())?, false, flat)?;
            }
        }
    }
    merge.finish()
}

/// The series of the groups `groups` of an entity grouping (`group_by`:
/// key, team, customer, provider or model) of the unfiltered log, per
/// bucket and group: a chart's kept groups read together, one statement per
/// piece (each group's buckets by the value index), instead of one series
/// per group. `None` for any other grouping.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spend_of_groups(
    d: Dialect,
    run: &mut RunSpend<'_>,
    group_by: &GroupBy,
    groups: &[String],
    bucket: Bucket,
    from_ms: i64,
    to_ms: i64,
    marks: &Marks,
) -> Result<Option<Vec<SeriesPoint>>, StoreError> {
    let Some(dim) = entity_dim(group_by) else {
        return Ok(None);
    };
    let mut merge = Merge::default();
    if groups.is_empty() {
        return merge.finish().map(Some);
    }
    let values: Vec<&str> = groups.iter().map(String::as_str).collect();
    let wanted: HashSet<&str> = values.iter().copied().collect();
    let tiers = tiers_up_to(Tier::of(bucket));
    for piece in pieces(from_ms, to_ms, &tiers, marks) {
        let raw = match piece.source {
            Source::Raw => {
                let sql = query::select_spend(
                    d,
                    group_by,
                    &SpendFilter::default(),
                    Some(bucket),
                    piece.from_ms,
                    piece.to_ms,
                );
                let mut rows = run(&sql, true)?;
                rows.retain(|r| wanted.contains(r.group.as_str()));
                rows
            }
            Source::Tier(t) => run(
                &query::select_dims_of(
                    d,
                    dim,
                    &DimGroup::Value,
                    &values,
                    t.ms(),
                    Some(bucket),
                    piece.from_ms,
                    piece.to_ms,
                ),
                true,
            )?,
        };
        merge.add(raw, false, None)?;
    }
    merge.finish().map(Some)
}

/// Spend per bucket over every tag group of the unfiltered log, summed (a
/// row counted once per tag it carries; one group `""`): a series grouped by
/// every tag, without its groups, which for a tag such as `user` are tens of
/// thousands a day. A chart folding every tag beyond its top groups takes
/// its folded group as this minus the kept ones. Reads the tag keys' sums
/// ([`TAG_SUM_DIM`]), not their values.
pub(crate) fn spend_tags_summed(
    d: Dialect,
    run: &mut RunSpend<'_>,
    bucket: Bucket,
    from_ms: i64,
    to_ms: i64,
    marks: &Marks,
) -> Result<Vec<SeriesPoint>, StoreError> {
    let mut merge = Merge::default();
    let tiers = tiers_up_to(Tier::of(bucket));
    for piece in pieces(from_ms, to_ms, &tiers, marks) {
        let sql = match piece.source {
            Source::Raw => {
                query::select_spend_tags_summed(d, Some(bucket), piece.from_ms, piece.to_ms)
            }
            Source::Tier(t) => query::select_dims(
                d,
                TAG_SUM_DIM,
                &DimGroup::None,
                None,
                t.ms(),
                Some(bucket),
                piece.from_ms,
                piece.to_ms,
            ),
        };
        merge.add(run(&sql, true)?, false, None)?;
    }
    merge.finish()
}

/// For each tag key with a row in `[from_ms, to_ms)` of the unfiltered log,
/// a bound no one value of it exceeds in cost over the range: the sum over
/// the range's pieces of the largest value's cost in each (each bucket's
/// [`TAG_MAX_DIM`] row; the raw pieces' values summed exactly). A grouping
/// by every tag ranked by cost skips the keys whose bound is below the
/// groups it keeps ([`super::top`]).
pub(crate) fn tag_bounds(
    d: Dialect,
    run: &mut RunSpend<'_>,
    from_ms: i64,
    to_ms: i64,
    marks: &Marks,
) -> Result<Vec<(String, i128)>, StoreError> {
    let mut bounds: BTreeMap<String, i128> = BTreeMap::new();
    let mut add = |key: String, cost: i128| -> Result<(), StoreError> {
        let b = bounds.entry(key).or_insert(0);
        *b = b.checked_add(cost).ok_or_else(|| overflow("cost"))?;
        Ok(())
    };
    for piece in pieces(from_ms, to_ms, &ROLLUP_TIERS, marks) {
        match piece.source {
            Source::Raw => {
                // The largest value of each key in this piece.
                let mut largest: BTreeMap<String, i128> = BTreeMap::new();
                for p in from_raw(run(&raw_tag_pairs(d, &piece), false)?, false)? {
                    let key = p.group.split_once('=').map_or(&*p.group, |(k, _)| k);
                    let l = largest.entry(key.to_string()).or_insert(0);
                    *l = (*l).max(p.cost_picodollars);
                }
                for (key, cost) in largest {
                    add(key, cost)?;
                }
            }
            Source::Tier(t) => {
                let sql = query::select_dims(
                    d,
                    TAG_MAX_DIM,
                    &DimGroup::Value,
                    None,
                    t.ms(),
                    None,
                    piece.from_ms,
                    piece.to_ms,
                );
                for p in from_raw(run(&sql, false)?, false)? {
                    add(p.group, p.cost_picodollars)?;
                }
            }
        }
    }
    Ok(bounds.into_iter().collect())
}

/// The totals of a raw piece of the unfiltered log grouped by every tag
/// (`<key>=<value>` groups).
fn raw_tag_pairs(d: Dialect, piece: &Piece) -> query::Sql {
    query::select_spend(
        d,
        &GroupBy::Tags,
        &SpendFilter::default(),
        None,
        piece.from_ms,
        piece.to_ms,
    )
}

/// Spend per group of the unfiltered log grouped by every tag, the groups of
/// tag key `key` only (`<key>=<value>`), over `[from_ms, to_ms)`.
pub(crate) fn tag_pairs(
    d: Dialect,
    run: &mut RunSpend<'_>,
    key: &str,
    from_ms: i64,
    to_ms: i64,
    marks: &Marks,
) -> Result<Vec<SeriesPoint>, StoreError> {
    let mut merge = Merge::default();
    let prefix = format!("{key}=");
    for piece in pieces(from_ms, to_ms, &ROLLUP_TIERS, marks) {
        match piece.source {
            Source::Raw => {
                let mine: Vec<RawSpend> = run(&raw_tag_pairs(d, &piece), false)?
                    .into_iter()
                    .filter(|r| r.group.starts_with(&prefix))
                    .collect();
                merge.add(mine, false, Some(0))?;
            }
            Source::Tier(t) => {
                let sql = query::select_dims(
                    d,
                    &tag_dim(key),
                    &DimGroup::Pair(key.to_string()),
                    None,
                    t.ms(),
                    None,
                    piece.from_ms,
                    piece.to_ms,
                );
                merge.add(run(&sql, false)?, false, Some(0))?;
            }
        }
    }
    merge.finish()
}

/// The tag dimensions of `tier` (listed once per query, then cached).
fn list_tag_dims(
    d: Dialect,
    run: &mut RunSpend<'_>,
    tier: Tier,
    cache: &mut HashMap<Tier, Vec<String>>,
) -> Result<Vec<String>, StoreError> {
    if let Some(k) = cache.get(&tier) {
        return Ok(k.clone());
    }
    let mut listed: Vec<String> = Vec::new();
    loop {
        let sql = query::select_next_dim(
            d,
            tier.ms(),
            listed.last().map(String::as_str),
            TAG_DIM_PREFIX,
            Some(query::TAG_DIM_END),
        );
        match run(&sql, false)?.pop() {
            Some(r) => listed.push(r.group),
            None => break,
        }
        if listed.len() > LOG_SERIES_POINTS_MAX {
            return Err(too_many());
        }
    }
    cache.insert(tier, listed.clone());
    Ok(listed)
}

/// Points from the rows of one raw spend statement (the scan oracle).
pub(crate) fn from_raw(raw: Vec<RawSpend>, bucketed: bool) -> Result<Vec<SeriesPoint>, StoreError> {
    let mut merge = Merge::default();
    merge.add(raw, false, (!bucketed).then_some(0))?;
    merge.finish()
}

/// [`spend`] as totals.
pub(crate) fn totals(points: Vec<SeriesPoint>) -> Vec<SpendTotal> {
    points
        .into_iter()
        .map(|p| SpendTotal {
            group: p.group,
            requests: p.requests,
            cost_picodollars: p.cost_picodollars,
            avoided_picodollars: p.avoided_picodollars,
            prompt_tokens: p.prompt_tokens,
            completion_tokens: p.completion_tokens,
            errors: p.errors,
            cache_hits: p.cache_hits,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_cut_at_day_hour_and_minute_boundaries() {
        const M: i64 = 60_000;
        const H: i64 = 3_600_000;
        const D: i64 = 86_400_000;
        let from = 2 * D - 2 * H - 3 * M - 5;
        let to = 5 * D + H + M + 7;
        let p = pieces(from, to, &ROLLUP_TIERS, &Marks::ALL);
        let src: Vec<_> = p.iter().map(|p| p.source).collect();
        assert_eq!(
            src,
            vec![
                Source::Raw,
                Source::Tier(Tier::Minute),
                Source::Tier(Tier::Hour),
                Source::Tier(Tier::Day),
                Source::Tier(Tier::Hour),
                Source::Tier(Tier::Minute),
                Source::Raw
            ]
        );
        assert_eq!(p[0].from_ms, from);
        assert_eq!(p[3].from_ms, 2 * D);
        assert_eq!(p[3].to_ms, 5 * D);
        assert_eq!(p[6].to_ms, to);
        for w in p.windows(2) {
            assert_eq!(w[0].to_ms, w[1].from_ms, "{p:?}");
        }
        // Each rollup piece covers whole buckets of its tier.
        for piece in &p {
            if let Source::Tier(t) = piece.source {
                assert_eq!(piece.from_ms.rem_euclid(t.ms()), 0);
                assert_eq!(piece.to_ms.rem_euclid(t.ms()), 0);
            }
        }
        // Only the hour tier (tags), and a range inside one minute.
        let p = pieces(from, to, &ROLLUP_TIERS[1..], &Marks::ALL);
        assert_eq!(p.first().map(|p| p.source), Some(Source::Raw));
        assert_eq!(p.len(), 5);
        assert_eq!(
            pieces(5, 9, &ROLLUP_TIERS, &Marks::ALL),
            vec![Piece {
                source: Source::Raw,
                from_ms: 5,
                to_ms: 9
            }]
        );
        assert!(pieces(9, 9, &ROLLUP_TIERS, &Marks::ALL).is_empty());
        // Negative times and the ends of i64 do not overflow.
        let p = pieces(i64::MIN, i64::MAX, &ROLLUP_TIERS, &Marks::ALL);
        assert_eq!(p.first().map(|p| p.from_ms), Some(i64::MIN));
        assert_eq!(p.last().map(|p| p.to_ms), Some(i64::MAX));
        let p = pieces(-D - 1, D + 1, &ROLLUP_TIERS, &Marks::ALL);
        assert!(p.contains(&Piece {
            source: Source::Tier(Tier::Day),
            from_ms: -D,
            to_ms: D
        }));
    }

    /// A 30-day range at any time of day reads few buckets per group: at
    /// most 5 hours, 3 quarter-days and 6 days at each edge and the weeks
    /// between (not up to 23 hours at each edge and 29 days).
    #[test]
    fn a_month_reads_weeks_and_quarter_days_not_hundreds_of_hours() {
        const M: i64 = 60_000;
        const D: i64 = 86_400_000;
        let mut seen_week = false;
        for start_m in (0..14 * 24 * 60).step_by(37) {
            let from = 20_000 * D + start_m * M + 11;
            let to = from + 30 * D;
            let p = pieces(from, to, &ROLLUP_TIERS, &Marks::ALL);
            let count = |tier: Tier| -> i64 {
                p.iter()
                    .filter(|q| q.source == Source::Tier(tier))
                    .map(|q| (q.to_ms - q.from_ms) / tier.ms())
                    .sum()
            };
            assert!(count(Tier::Hour) <= 10, "{p:?}");
            assert!(count(Tier::SixHours) <= 6, "{p:?}");
            assert!(count(Tier::Day) <= 12, "{p:?}");
            assert!((3..=4).contains(&count(Tier::Week)), "{p:?}");
            seen_week |= count(Tier::Week) == 4;
            let total: i64 = [Tier::Hour, Tier::SixHours, Tier::Day, Tier::Week]
                .into_iter()
                .map(count)
                .sum();
            assert!(total <= 32, "{total} {p:?}");
            for w in p.windows(2) {
                assert_eq!(w[0].to_ms, w[1].from_ms);
            }
        }
        assert!(seen_week);
    }
}
