//! Rollups: per-bucket aggregates of the request log, kept by the log writer
//! in the same transaction as the raw rows, so a spend query reads a few
//! aggregate rows per bucket instead of every request of its range.
//!
//! # Tables (schema version 4, both sinks)
//!
//! - `rollups(tier, bucket_ms, key_name, team, customer, provider, model,
//!   requests, errors, cache_hits, cost_picodollars, avoided_picodollars,
//!   prompt_tokens, completion_tokens)`, primary key `(tier, bucket_ms,
//!   key_name, team, customer, provider, model)`; `team` and `customer` are
//!   `''` for a row without one. Tiers ([`ROLLUP_TIERS`]): minute, hour, day;
//!   `tier` is the bucket width in ms and `bucket_ms` the floor of the rows'
//!   `time_ms` to it.
//! - `rollup_tags(tier, tag_key, bucket_ms, tag_value, key_name, team,
//!   customer, provider, model, same measures)`, primary key in that order
//!   (a tag key's buckets are contiguous, so grouping by one tag key never
//!   reads another's, e.g. a high-cardinality `user`). Tiers
//!   ([`TAG_ROLLUP_TIERS`]): hour and day only. A minute tier per tag would
//!   hold about one row per raw row and tag (a minute's requests rarely share
//!   key, model and tag value) and cost the writer one more upsert per tag
//!   per row; the sub-hour edges of a tag query read the raw rows instead.
//!
//! `errors` counts rows with status >= 400, `cache_hits` rows served from the
//! exact or semantic cache. Money is exact as in `requests` (SQLite: decimal
//! text, added by `add_picodollars` and summed by `sum_picodollars`, both
//! checked i128; PostgreSQL: `NUMERIC(39,0)`).
//!
//! # Writing
//!
//! `insert_batch` inserts the raw rows ignoring known ids, learns which rows
//! were actually inserted (SQLite: the change count of each `INSERT OR
//! IGNORE`; PostgreSQL: `ON CONFLICT DO NOTHING RETURNING id`), aggregates
//! those in Rust ([`RollupBatch`]) and upserts one row per (tier, bucket,
//! entities[, tag]) into the rollups, in the same transaction: a spill replay
//! never counts a row twice, and a rollup never holds a row the log does not
//! (or did not) hold.
//!
//! # Reading: the decomposition of a range
//!
//! A range `[from, to)` ([`pieces`]) is cut at the boundaries of the
//! coarsest tier allowed: whole days in the middle from the day tier, the
//! hours between the day boundary and the range's edge from the hour tier,
//! the minutes from the minute tier, and the sub-minute edges (under a
//! minute at each end) from the raw rows by the `(time_ms, id)` index. A
//! series with bucket B uses only tiers no wider than B, so each piece floors
//! exactly into B's buckets. Queries that touch tags use the hour tier as the
//! finest, so their sub-hour edges come from raw rows. Pieces are summed in
//! Rust with checked i128 arithmetic; a grouping by one tag key gets its `""`
//! group (rows without the tag) as the entity rollup minus the tagged ones.
//!
//! Two combinations no rollup holds are answered from the raw rows of the
//! whole range: a tag filter with grouping by another tag key or by every
//! tag, and a filter on an empty team or customer name (`''` in the rollups
//! also means "none").
//!
//! # Retention and exactness
//!
//! Raw-row retention (`retention`, `max_rows`) never deletes rollups. The
//! minute tier is kept [`super::LOG_ROLLUP_MINUTE_KEEP`]; hour and day tiers
//! are kept indefinitely. A spend answer is exact (equal to a scan of the
//! raw rows) while the raw rows of its two sub-minute edges exist and the
//! minute tier covers its sub-hour edges. Once the raw rows are gone, the
//! answer covers only the whole minutes of the range (the sub-minute edges
//! count nothing); once the minute tier is gone too (older than
//! `LOG_ROLLUP_MINUTE_KEEP`), only its whole hours; a range aligned to whole
//! hours (or minutes, while the minute tier lasts) stays exact forever.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use super::query::{
    self, Bucket, Dialect, GroupBy, RollupGroup, RollupTable, SeriesPoint, SpendFilter, SpendTotal,
    Sql,
};
use super::row::{CacheStatus, LogRow};
use super::store::{clamp_i64, RawSpend, StoreError};
use super::LOG_SERIES_POINTS_MAX;

/// A rollup tier: buckets of a fixed width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Tier {
    Minute,
    Hour,
    Day,
}

impl Tier {
    /// The bucket width in ms, also the stored `tier` value.
    pub const fn ms(self) -> i64 {
        match self {
            Tier::Minute => 60_000,
            Tier::Hour => 3_600_000,
            Tier::Day => 86_400_000,
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
}

/// The tiers of `rollups`, finest first.
pub(crate) const ROLLUP_TIERS: [Tier; 3] = [Tier::Minute, Tier::Hour, Tier::Day];
/// The tiers of `rollup_tags`, finest first.
pub(crate) const TAG_ROLLUP_TIERS: [Tier; 2] = [Tier::Hour, Tier::Day];

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

/// One `rollup_tags` row's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TagRollupKey<'a> {
    pub tier: Tier,
    pub bucket_ms: i64,
    pub tag_key: Cow<'a, str>,
    pub tag_value: Cow<'a, str>,
    pub e: Entities<'a>,
}

/// The inserted rows of one batch, aggregated per rollup row.
#[derive(Debug, Default)]
pub(crate) struct RollupBatch<'a> {
    pub rollups: HashMap<RollupKey<'a>, Measures>,
    pub tags: HashMap<TagRollupKey<'a>, Measures>,
}

impl<'a> RollupBatch<'a> {
    /// Adds one inserted row. `text` maps each stored text as the sink
    /// stores it (PostgreSQL: NUL as U+FFFD), so two names the sink stores
    /// alike are one rollup row.
    pub fn add(
        &mut self,
        row: &'a LogRow,
        text: fn(&'a str) -> Cow<'a, str>,
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
            let k = RollupKey {
                tier,
                bucket_ms: floor_to(row.time_ms, tier.ms()),
                e: e.clone(),
            };
            self.rollups.entry(k).or_default().add(&m)?;
        }
        for (tk, tv) in &row.tags {
            for tier in TAG_ROLLUP_TIERS {
                let k = TagRollupKey {
                    tier,
                    bucket_ms: floor_to(row.time_ms, tier.ms()),
                    tag_key: text(tk),
                    tag_value: text(tv),
                    e: e.clone(),
                };
                self.tags.entry(k).or_default().add(&m)?;
            }
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

/// Cuts `[from_ms, to_ms)` into pieces: each tier of `tiers` (finest first)
/// covers the whole buckets the coarser ones leave, raw rows the rest.
pub(crate) fn pieces(from_ms: i64, to_ms: i64, tiers: &[Tier]) -> Vec<Piece> {
    let mut out = Vec::new();
    cut(from_ms, to_ms, tiers, &mut out);
    out
}

fn cut(from: i64, to: i64, tiers: &[Tier], out: &mut Vec<Piece>) {
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
    let b = floor_to(to, w);
    match a {
        Some(a) if a < b => {
            cut(from, a, finer, out);
            out.push(Piece {
                source: Source::Tier(coarsest),
                from_ms: a,
                to_ms: b,
            });
            cut(b, to, finer, out);
        }
        _ => cut(from, to, finer, out),
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
pub(crate) type RunSpend<'r> = dyn FnMut(&Sql, bool) -> Result<Vec<RawSpend>, StoreError> + 'r;

/// Whether a query must read every raw row of its range (see the module doc).
fn raw_only(group_by: &GroupBy, filter: &SpendFilter) -> bool {
    let tag_filter_other = match (&filter.tag, group_by) {
        (Some(_), GroupBy::Tags) => true,
        (Some((fk, _)), GroupBy::Tag(k)) => k != fk,
        _ => false,
    };
    tag_filter_other || filter.team.as_deref() == Some("") || filter.customer.as_deref() == Some("")
}

/// Spend per bucket (when `bucket` is set; else one bucket, 0) and group over
/// `[from_ms, to_ms)`, from the rollups and the raw rows of the edges.
pub(crate) fn spend(
    d: Dialect,
    run: &mut RunSpend<'_>,
    group_by: &GroupBy,
    filter: &SpendFilter,
    bucket: Option<Bucket>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<SeriesPoint>, StoreError> {
    let mut merge = Merge::default();
    // Buckets of a totals query: all 0.
    let flat = bucket.is_none().then_some(0);
    if raw_only(group_by, filter) {
        let sql = query::select_spend(d, group_by, filter, bucket, from_ms, to_ms);
        merge.add(run(&sql, bucket.is_some())?, false, flat)?;
        return merge.finish();
    }
    let uses_tags = filter.tag.is_some() || matches!(group_by, GroupBy::Tag(_) | GroupBy::Tags);
    let available: &[Tier] = if uses_tags {
        &TAG_ROLLUP_TIERS
    } else {
        &ROLLUP_TIERS
    };
    let coarsest = bucket.map_or(Tier::Day, Tier::of);
    let tiers: Vec<Tier> = available
        .iter()
        .copied()
        .filter(|t| *t <= coarsest)
        .collect();
    // The tag keys of each tier, listed once per query (grouping by every tag).
    let mut tag_keys: HashMap<Tier, Vec<String>> = HashMap::new();
    for piece in pieces(from_ms, to_ms, &tiers) {
        let tier = match piece.source {
            Source::Raw => {
                let sql =
                    query::select_spend(d, group_by, filter, bucket, piece.from_ms, piece.to_ms);
                merge.add(run(&sql, bucket.is_some())?, false, flat)?;
                continue;
            }
            Source::Tier(t) => t,
        };
        let mut read = |table, group: RollupGroup, negate: bool| -> Result<(), StoreError> {
            let sql = query::select_rollup(
                d,
                table,
                &group,
                filter,
                tier.ms(),
                bucket,
                piece.from_ms,
                piece.to_ms,
            );
            merge.add(run(&sql, bucket.is_some())?, negate, flat)
        };
        let column = |g: &GroupBy| match g {
            GroupBy::Key => "key_name",
            GroupBy::Team => "team",
            GroupBy::Customer => "customer",
            GroupBy::Provider => "provider",
            GroupBy::Model => "model",
            _ => "''",
        };
        match (group_by, &filter.tag) {
            // With a tag filter every row read carries that tag.
            (GroupBy::Tag(k), Some(_)) => {
                read(RollupTable::Tags, RollupGroup::TagValue(k.clone()), false)?
            }
            (g, Some(_)) => read(RollupTable::Tags, RollupGroup::Column(column(g)), false)?,
            (GroupBy::Tags, None) => {
                let keys = match tag_keys.get(&tier) {
                    Some(k) => k.clone(),
                    None => {
                        let mut keys = Vec::new();
                        loop {
                            let sql = query::select_next_tag_key(
                                d,
                                tier.ms(),
                                keys.last().map(String::as_str),
                            );
                            match run(&sql, false)?.pop() {
                                Some(r) => keys.push(r.group),
                                None => break,
                            }
                            if keys.len() > LOG_SERIES_POINTS_MAX {
                                return Err(too_many());
                            }
                        }
                        tag_keys.insert(tier, keys.clone());
                        keys
                    }
                };
                for k in keys {
                    let sql = query::select_rollup(
                        d,
                        RollupTable::Tags,
                        &RollupGroup::TagPair(k),
                        filter,
                        tier.ms(),
                        bucket,
                        piece.from_ms,
                        piece.to_ms,
                    );
                    merge.add(run(&sql, bucket.is_some())?, false, flat)?;
                }
            }
            (GroupBy::Tag(k), None) => {
                // "" = every row minus the rows with the tag, plus the rows
                // whose value is "" (which the tagged read adds back).
                read(RollupTable::Entities, RollupGroup::Column("''"), false)?;
                let tagged = {
                    let sql = query::select_rollup(
                        d,
                        RollupTable::Tags,
                        &RollupGroup::TagValue(k.clone()),
                        filter,
                        tier.ms(),
                        bucket,
                        piece.from_ms,
                        piece.to_ms,
                    );
                    run(&sql, bucket.is_some())?
                };
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
            (g, None) => read(RollupTable::Entities, RollupGroup::Column(column(g)), false)?,
        }
    }
    merge.finish()
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
        let p = pieces(from, to, &ROLLUP_TIERS);
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
        let p = pieces(from, to, &TAG_ROLLUP_TIERS);
        assert_eq!(p.first().map(|p| p.source), Some(Source::Raw));
        assert_eq!(p.len(), 5);
        assert_eq!(
            pieces(5, 9, &ROLLUP_TIERS),
            vec![Piece {
                source: Source::Raw,
                from_ms: 5,
                to_ms: 9
            }]
        );
        assert!(pieces(9, 9, &ROLLUP_TIERS).is_empty());
        // Negative times and the ends of i64 do not overflow.
        let p = pieces(i64::MIN, i64::MAX, &ROLLUP_TIERS);
        assert_eq!(p.first().map(|p| p.from_ms), Some(i64::MIN));
        assert_eq!(p.last().map(|p| p.to_ms), Some(i64::MAX));
        let p = pieces(-D - 1, D + 1, &ROLLUP_TIERS);
        assert!(p.contains(&Piece {
            source: Source::Tier(Tier::Day),
            from_ms: -D,
            to_ms: D
        }));
    }
}
