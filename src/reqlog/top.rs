//! A spend series of its top groups: the `top` groups with the most cost over
//! the range, every other group's points folded into one group, bucket by
//! bucket (the dashboard's charts: 8 lines, not 2,000 keys).
//!
//! Read without computing every group's series: the groups' totals rank
//! them (one grouped read of the rollups), then the range's whole series and
//! the kept groups' series (the `rollup_dims` index on `(tier, dim, value,
//! bucket_ms)` reads one value's buckets): for an entity grouping of the
//! whole log all kept groups in one statement per piece of the range
//! ([`LogStore::spend_series_of_groups`]), otherwise one series per kept
//! group, read as a filter on it; the folded group is the whole minus the
//! kept ones. All in
//! one read snapshot ([`LogStore::begin_read`]), so the subtraction sees the
//! rows the parts saw. Grouped by every tag (groups that overlap: a row
//! counts in each of its tags'), the whole is the per-bucket sum over every
//! tag group ([`LogStore::spend_series_tags_summed`]), unfiltered only. A
//! grouping whose groups a filter cannot name (the `""` group of rows
//! without a team, customer or tag), a filter already on the grouped
//! dimension, or every tag with a filter, reads the whole series and folds
//! it.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::query::{Bucket, GroupBy, SeriesPoint, SpendFilter, SpendTotal};
use super::store::{LogStore, StoreError};

fn overflow() -> StoreError {
    StoreError::TooLarge("a series total overflows i128 picodollars".into())
}

/// The series of `group_by` over `[from_ms, to_ms)` with its `top` groups by
/// cost (ties by name) and the others folded into `other`; equal to
/// [`fold_beyond_top`] of the whole series.
#[allow(clippy::too_many_arguments)]
pub fn spend_series_top(
    store: &mut dyn LogStore,
    group_by: &GroupBy,
    filter: &SpendFilter,
    bucket: Bucket,
    from_ms: i64,
    to_ms: i64,
    top: usize,
    other: &str,
) -> Result<Vec<SeriesPoint>, StoreError> {
    in_snapshot(store, |s| {
        series_top_in_snapshot(s, group_by, filter, bucket, from_ms, to_ms, top, other)
    })
}

#[allow(clippy::too_many_arguments)]
fn series_top_in_snapshot(
    store: &mut dyn LogStore,
    group_by: &GroupBy,
    filter: &SpendFilter,
    bucket: Bucket,
    from_ms: i64,
    to_ms: i64,
    top: usize,
    other: &str,
) -> Result<Vec<SeriesPoint>, StoreError> {
    let whole = |store: &mut dyn LogStore| {
        let points = store.spend_series_where(group_by, filter, bucket, from_ms, to_ms)?;
        fold_beyond_top(points, top, other)
    };
    let every_tag = matches!(group_by, GroupBy::Tags);
    if matches!(group_by, GroupBy::None) || (every_tag && *filter != SpendFilter::default()) {
        return whole(store);
    }
    // One more than kept: whether there is anything to fold.
    let totals = totals_top_in_snapshot(store, group_by, filter, from_ms, to_ms, top + 1)?;
    if totals.len() <= top {
        return store.spend_series_where(group_by, filter, bucket, from_ms, to_ms);
    }
    let kept: Vec<(String, u64)> = totals
        .into_iter()
        .take(top)
        .map(|t| (t.group, t.requests))
        .collect();
    // The kept groups' series, in `kept`'s order: an entity grouping of the
    // whole log in one read (one statement per piece of the range), any
    // other one series per group, read as a filter on that group.
    let names: Vec<String> = kept.iter().map(|(g, _)| g.clone()).collect();
    let together = if *filter == SpendFilter::default() {
        store.spend_series_of_groups(group_by, &names, bucket, from_ms, to_ms)?
    } else {
        None
    };
    let series: Vec<Vec<SeriesPoint>> = match together {
        Some(points) => {
            let mut by_group: HashMap<String, Vec<SeriesPoint>> =
                names.iter().map(|g| (g.clone(), Vec::new())).collect();
            for p in points {
                let Some(s) = by_group.get_mut(&p.group) else {
                    return Err(StoreError::Corrupt(format!(
                        "a series of the kept groups holds group {:?}",
                        p.group
                    )));
                };
                s.push(p);
            }
            names
                .iter()
                .map(|g| by_group.remove(g).unwrap_or_default())
                .collect()
        }
        None => {
            let Some(narrowed) = kept
                .iter()
                .map(|(g, _)| narrow(group_by, filter, g))
                .collect::<Option<Vec<SpendFilter>>>()
            else {
                return whole(store);
            };
            let mut series = Vec::with_capacity(narrowed.len());
            for f in &narrowed {
                series.push(store.spend_series_where(&GroupBy::None, f, bucket, from_ms, to_ms)?);
            }
            series
        }
    };
    // A group the read does not find whole (a tag key holding `=`, which
    // the gateway never writes) is read the long way.
    let mut parts = Vec::with_capacity(kept.len());
    for ((group, requests), points) in kept.iter().zip(series) {
        if points.iter().map(|p| p.requests).sum::<u64>() != *requests {
            return whole(store);
        }
        parts.push((group, points));
    }
    // The whole range's series (every tag's groups summed, for a grouping
    // by every tag), from which the kept groups are taken.
    let whole_series = if every_tag {
        store.spend_series_tags_summed(bucket, from_ms, to_ms)?
    } else {
        store.spend_series_where(&GroupBy::None, filter, bucket, from_ms, to_ms)?
    };
    let mut rest: BTreeMap<i64, SeriesPoint> = whole_series
        .into_iter()
        .map(|p| (p.bucket_start_ms, p))
        .collect();
    let mut out = Vec::new();
    for (group, points) in parts {
        for mut p in points {
            let inconsistent = || {
                StoreError::Corrupt(format!(
                    "group {group:?} has more spend at {} than the whole log",
                    p.bucket_start_ms
                ))
            };
            let r = rest.get_mut(&p.bucket_start_ms).ok_or_else(inconsistent)?;
            let sub = |a: u64, b: u64| a.checked_sub(b).ok_or_else(inconsistent);
            r.requests = sub(r.requests, p.requests)?;
            r.errors = sub(r.errors, p.errors)?;
            r.cache_hits = sub(r.cache_hits, p.cache_hits)?;
            r.prompt_tokens = sub(r.prompt_tokens, p.prompt_tokens)?;
            r.completion_tokens = sub(r.completion_tokens, p.completion_tokens)?;
            r.cost_picodollars = r
                .cost_picodollars
                .checked_sub(p.cost_picodollars)
                .ok_or_else(overflow)?;
            r.avoided_picodollars = r
                .avoided_picodollars
                .checked_sub(p.avoided_picodollars)
                .ok_or_else(overflow)?;
            p.group = group.clone();
            out.push(p);
        }
    }
    out.extend(rest.into_values().filter(|r| r.requests > 0).map(|mut r| {
        r.group = other.to_string();
        r
    }));
    out.sort_by(|a, b| (a.bucket_start_ms, &a.group).cmp(&(b.bucket_start_ms, &b.group)));
    Ok(out)
}

/// The `n` groups of `group_by` with the most cost over `[from_ms, to_ms)`,
/// most first (ties by name): the first `n` of every group's totals so
/// sorted. Grouped by every tag, unfiltered, a tag key is read only when the
/// bound of its values' cost ([`LogStore::spend_tag_bounds`]) can reach the
/// `n` groups kept so far, keys in order of their bounds: a `user` tag of
/// 50,000 values, each far below the top groups of `feature` and `env`, is
/// never summed value by value. In one read snapshot.
pub fn spend_totals_top(
    store: &mut dyn LogStore,
    group_by: &GroupBy,
    filter: &SpendFilter,
    from_ms: i64,
    to_ms: i64,
    n: usize,
) -> Result<Vec<SpendTotal>, StoreError> {
    in_snapshot(store, |s| {
        totals_top_in_snapshot(s, group_by, filter, from_ms, to_ms, n)
    })
}

/// `f` in one read snapshot of `store`.
fn in_snapshot<T>(
    store: &mut dyn LogStore,
    f: impl FnOnce(&mut dyn LogStore) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    store.begin_read()?;
    let result = f(store);
    let end = store.end_read();
    let out = result?;
    end?;
    Ok(out)
}

/// Most cost first, ties by name: the order of every ranking.
pub fn by_cost(a: &SpendTotal, b: &SpendTotal) -> std::cmp::Ordering {
    b.cost_picodollars
        .cmp(&a.cost_picodollars)
        .then_with(|| a.group.cmp(&b.group))
}

fn totals_top_in_snapshot(
    store: &mut dyn LogStore,
    group_by: &GroupBy,
    filter: &SpendFilter,
    from_ms: i64,
    to_ms: i64,
    n: usize,
) -> Result<Vec<SpendTotal>, StoreError> {
    if !matches!(group_by, GroupBy::Tags) || *filter != SpendFilter::default() {
        let mut totals = store.spend_totals_where(group_by, filter, from_ms, to_ms)?;
        totals.sort_by(by_cost);
        totals.truncate(n);
        return Ok(totals);
    }
    let mut bounds = store.spend_tag_bounds(from_ms, to_ms)?;
    bounds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut kept: Vec<SpendTotal> = Vec::new();
    for (key, bound) in bounds {
        // A value of this key can at best equal the bound; it enters only
        // by beating the n-th group kept (or tying it with a smaller name).
        if n == 0 || (kept.len() >= n && bound < kept[n - 1].cost_picodollars) {
            break;
        }
        kept.extend(store.spend_totals_tag_pairs(&key, from_ms, to_ms)?);
        kept.sort_by(by_cost);
        kept.truncate(n);
    }
    Ok(kept)
}

/// `filter` narrowed to the rows of `group` of `group_by`, when a filter can
/// name exactly that group.
fn narrow(group_by: &GroupBy, filter: &SpendFilter, group: &str) -> Option<SpendFilter> {
    let mut f = filter.clone();
    let slot = match group_by {
        GroupBy::Key => &mut f.key,
        GroupBy::Team if !group.is_empty() => &mut f.team,
        GroupBy::Customer if !group.is_empty() => &mut f.customer,
        GroupBy::Provider => &mut f.provider,
        GroupBy::Model => &mut f.model,
        GroupBy::Tag(k) if !group.is_empty() && f.tag.is_none() => {
            f.tag = Some((k.clone(), group.to_string()));
            return Some(f);
        }
        GroupBy::Tags if f.tag.is_none() => {
            let (k, v) = group.split_once('=')?;
            f.tag = Some((k.to_string(), v.to_string()));
            return Some(f);
        }
        _ => return None,
    };
    if slot.is_some() {
        return None;
    }
    *slot = Some(group.to_string());
    Some(f)
}

/// Keeps the `top` groups with the most cost over the whole series and folds
/// every other group's points into `other`, bucket by bucket: each bucket's
/// sums are unchanged. Sorted by bucket, then group.
pub fn fold_beyond_top(
    points: Vec<SeriesPoint>,
    top: usize,
    other: &str,
) -> Result<Vec<SeriesPoint>, StoreError> {
    // Money is summed checked: a total past i128 picodollars is an error,
    // never a wrong figure (counts saturate: they are not money).
    let mut by_group: HashMap<&str, i128> = HashMap::new();
    for p in &points {
        let c = by_group.entry(p.group.as_str()).or_insert(0);
        *c = c.saturating_add(p.cost_picodollars); // a ranking, not a figure shown
    }
    if by_group.len() <= top {
        return Ok(points);
    }
    let mut ranked: Vec<(&str, i128)> = by_group.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let kept: HashSet<String> = ranked
        .iter()
        .take(top)
        .map(|(g, _)| g.to_string())
        .collect();
    let mut out: BTreeMap<(i64, String), SeriesPoint> = BTreeMap::new();
    for mut p in points {
        if !kept.contains(&p.group) {
            p.group = other.to_string();
        }
        match out.entry((p.bucket_start_ms, p.group.clone())) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(p);
            }
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let q = e.get_mut();
                q.requests = q.requests.saturating_add(p.requests);
                q.errors = q.errors.saturating_add(p.errors);
                q.cache_hits = q.cache_hits.saturating_add(p.cache_hits);
                q.cost_picodollars = q
                    .cost_picodollars
                    .checked_add(p.cost_picodollars)
                    .ok_or_else(overflow)?;
                q.avoided_picodollars = q
                    .avoided_picodollars
                    .checked_add(p.avoided_picodollars)
                    .ok_or_else(overflow)?;
                q.prompt_tokens = q.prompt_tokens.saturating_add(p.prompt_tokens);
                q.completion_tokens = q.completion_tokens.saturating_add(p.completion_tokens);
            }
        }
    }
    Ok(out.into_values().collect())
}
