//! `GET /admin/budgets`: every budget the config in force has, with its
//! spend view, its burn rate, when it would run out at that rate, and
//! whether it is at risk; those at risk first. The dashboard's Budgets page
//! is this one call (and one series call for the budget it charts).
//!
//! - The budgets are [`config_entities`]: customers, teams, keys and
//!   providers with a budget, the gateway-wide model budgets, the tag
//!   budgets, and each owner's budgets on a model. At most
//!   [`BUDGETS_LISTED_MAX`] are looked at (`truncated` says when there were
//!   more); their views come from the ledger thread in batches
//!   ([`Books::views`](crate::books::thread::Books::views)), not one visit
//!   per budget.
//! - The burn rate is the spend of the last [`BURN_WINDOW_MS`] in the
//!   request log (one visit to the query thread, grouped totals from the
//!   log's rollups: one per kind of budget listed, one per tag key a tag
//!   budget names), `burn_basis: "last_hour"`; with the log off or
//!   unavailable, or for an owner's budgets on more than
//!   [`BURN_OWNER_MODELS_MAX`] models, it is the period's average so far
//!   (`"period_average"`).
//! - `projected_exhaustion` is now plus remaining divided by the rate,
//!   exact integer arithmetic, or `null` with no limit or no spend; a budget
//!   is `at_risk` when it is blocked or spent out, when it would run out
//!   before its reset (within [`AT_RISK_PREPAID_HORIZON_MS`] for one that
//!   never resets), or when less than
//!   [`AT_RISK_REMAINING_PERCENT`] of its limit remains.
//! - Order: blocked, then at risk by projected exhaustion (soonest first),
//!   then the rest by the share of the limit remaining (least first), then
//!   kind and name. `kind=` keeps one kind; `limit=` (1 to
//!   [`BUDGETS_PAGE_MAX`], default [`BUDGETS_PAGE_DEFAULT`]) bounds the rows.
//! - Each row's `series.path` is the ready-made `/admin/spend/series` query
//!   of its spend since its period started, for a burn-down chart.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::targets::{bad, ledger_error, ok, spend_json, AdminResponse};
use super::Governance;
use crate::books::registry::{config_entities, kind_str};
use crate::budget::period::{format_rfc3339_ms, TIME_MS_MAX, TIME_MS_MIN};
use crate::error::ApiError;
use crate::ledger::{EntityKind, EntityView};
use crate::money::Money;
use crate::reqlog::{GroupBy, SpendFilter, SpendTotal, LOG_SERIES_POINTS_MAX};

/// Budgets one listing looks at; past it the answer says `truncated`.
pub const BUDGETS_LISTED_MAX: usize = 10_000;
/// Rows a listing returns when it names no `limit`.
pub const BUDGETS_PAGE_DEFAULT: usize = 100;
/// The most rows a listing returns.
pub const BUDGETS_PAGE_MAX: usize = 1_000;
/// The window the burn rate is measured over.
pub const BURN_WINDOW_MS: i64 = 3_600_000;
/// An owner's budgets on models are measured from the log for at most this
/// many distinct models (one grouped query per model); others use the
/// period's average.
pub const BURN_OWNER_MODELS_MAX: usize = 16;
/// A budget with less than this share of its limit left is at risk.
pub const AT_RISK_REMAINING_PERCENT: i128 = 10;
/// A budget that never resets (prepaid) is at risk when it would run out
/// within this long at the current rate.
pub const AT_RISK_PREPAID_HORIZON_MS: i64 = 7 * 86_400_000;
/// The most buckets a row's burn-down series asks for (minute, hour or day
/// buckets, the finest that fits).
pub const BURN_SERIES_POINTS_MAX: i64 = 720;

/// The groups a burn rate is read from: per kind of grouping, group name to
/// spend in the window.
#[derive(Default)]
struct Burn {
    by: HashMap<EntityKind, HashMap<String, i128>>,
    /// Tag budgets: tag key to value to spend.
    tags: HashMap<String, HashMap<String, i128>>,
    /// Owner's budgets on a model: (owner kind, model) to owner to spend.
    owner_model: HashMap<(EntityKind, String), HashMap<String, i128>>,
}

impl Burn {
    /// The window's spend of `kind`/`name`, if the log was read for it.
    fn of(&self, kind: EntityKind, name: &str) -> Option<i128> {
        let spent = |m: &HashMap<String, i128>, g: &str| m.get(g).copied().unwrap_or(0);
        match kind {
            EntityKind::Customer
            | EntityKind::Team
            | EntityKind::Key
            | EntityKind::Provider
            | EntityKind::Model => self.by.get(&kind).map(|m| spent(m, name)),
            EntityKind::Tag => {
                let (key, value) = name.split_once('=')?;
                self.tags.get(key).map(|m| spent(m, value))
            }
            EntityKind::KeyModel | EntityKind::TeamModel | EntityKind::CustomerModel => {
                let (owner, model) = name.split_once('/')?;
                self.owner_model
                    .get(&(kind, model.to_string()))
                    .map(|m| m.get(owner).copied().unwrap_or(0))
            }
        }
    }
}

fn owner_group(kind: EntityKind) -> GroupBy {
    match kind {
        EntityKind::CustomerModel => GroupBy::Customer,
        EntityKind::TeamModel => GroupBy::Team,
        _ => GroupBy::Key,
    }
}

/// What the burn rates are read from: the kinds of budget listed (one
/// grouped total each), the tag keys tag budgets name (one grouping by that
/// key each, never by every tag: a high-cardinality tag such as `user` would
/// make that thousands of groups), and the owners' budgets on models.
#[derive(Default)]
struct BurnQueries {
    kinds: Vec<EntityKind>,
    tag_keys: Vec<String>,
    owner_models: Vec<(EntityKind, String)>,
}

impl BurnQueries {
    fn of(ids: &[(EntityKind, String, crate::ledger::EntityId)]) -> BurnQueries {
        let mut q = BurnQueries::default();
        for (kind, name, _) in ids {
            match kind {
                EntityKind::Tag => {
                    if let Some((key, _)) = name.split_once('=') {
                        q.tag_keys.push(key.to_string());
                    }
                }
                EntityKind::KeyModel | EntityKind::TeamModel | EntityKind::CustomerModel => {
                    if let Some((_, model)) = name.split_once('/') {
                        q.owner_models.push((*kind, model.to_string()));
                    }
                }
                k => q.kinds.push(*k),
            }
        }
        q.kinds.sort();
        q.kinds.dedup();
        q.tag_keys.sort();
        q.tag_keys.dedup();
        q.owner_models.sort();
        q.owner_models.dedup();
        q.owner_models.truncate(BURN_OWNER_MODELS_MAX);
        q
    }
}

/// Reads the window's spend per group on the query thread, in one visit.
async fn read_burn(gov: &Governance, queries: BurnQueries, from: i64, to: i64) -> Option<Burn> {
    let answer = gov
        .query_log(move |store| {
            let mut burn = Burn::default();
            let none = SpendFilter::default();
            let sums = |totals: Vec<SpendTotal>| -> HashMap<String, i128> {
                totals
                    .into_iter()
                    .map(|t| (t.group, t.cost_picodollars))
                    .collect()
            };
            for kind in queries.kinds {
                let group = match kind {
                    EntityKind::Customer => GroupBy::Customer,
                    EntityKind::Team => GroupBy::Team,
                    EntityKind::Key => GroupBy::Key,
                    EntityKind::Provider => GroupBy::Provider,
                    EntityKind::Model => GroupBy::Model,
                    _ => continue,
                };
                let totals = store.spend_totals_where(&group, &none, from, to)?;
                burn.by.insert(kind, sums(totals));
            }
            for key in queries.tag_keys {
                let totals =
                    store.spend_totals_where(&GroupBy::Tag(key.clone()), &none, from, to)?;
                burn.tags.insert(key, sums(totals));
            }
            for (kind, model) in queries.owner_models {
                let filter = SpendFilter {
                    model: Some(model.clone()),
                    ..SpendFilter::default()
                };
                let totals = store.spend_totals_where(&owner_group(kind), &filter, from, to)?;
                burn.owner_model.insert((kind, model), sums(totals));
            }
            Ok(burn)
        })
        .await;
    match answer {
        Ok(burn) => Some(burn),
        Err(e) => {
            log::debug!("budgets: burn rates from the period averages: {e}");
            None
        }
    }
}

/// One listed budget, with what its order is decided on.
struct Row {
    kind: EntityKind,
    name: String,
    view: EntityView,
    /// Picodollars an hour.
    burn_per_hour: Option<i128>,
    basis: &'static str,
    projected_ms: Option<i64>,
    at_risk: bool,
    /// Remaining share of the limit in parts per million (`None`: no limit).
    remaining_ppm: Option<i128>,
}

/// When `remaining` runs out at `per_hour`, from `now`; `None` when it never
/// does at that rate.
fn projection(now: i64, remaining: Option<Money>, per_hour: Option<i128>) -> Option<i64> {
    let remaining = remaining?.picodollars();
    if remaining <= 0 {
        return Some(now);
    }
    let rate = per_hour.filter(|r| *r > 0)?;
    let ms = remaining.checked_mul(i128::from(BURN_WINDOW_MS))? / rate;
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    Some(now.saturating_add(ms).min(TIME_MS_MAX))
}

fn row(kind: EntityKind, name: String, view: EntityView, burn: Option<&Burn>, now: i64) -> Row {
    let window = burn.and_then(|b| b.of(kind, &name));
    let (burn_per_hour, basis) = match window {
        Some(spent) => (Some(spent), "last_hour"),
        None => {
            let elapsed = now.saturating_sub(view.period.start_ms);
            let avg = (elapsed > 0)
                .then(|| {
                    view.spent
                        .picodollars()
                        .checked_mul(i128::from(BURN_WINDOW_MS))
                        .map(|p| p / i128::from(elapsed))
                })
                .flatten();
            (avg, "period_average")
        }
    };
    let projected_ms = projection(now, view.remaining, burn_per_hour);
    let remaining_ppm = match (view.remaining, view.limit_effective) {
        (Some(r), Some(l)) if l.is_positive() => r
            .picodollars()
            .checked_mul(1_000_000)
            .map(|x| x / l.picodollars()),
        (Some(_), Some(_)) => Some(0),
        _ => None,
    };
    let resets = view.budget.and_then(|b| b.reset).is_some();
    let horizon = if resets {
        view.period.end_ms
    } else {
        now.saturating_add(AT_RISK_PREPAID_HORIZON_MS)
    };
    let runs_out_first = projected_ms.is_some_and(|p| p < horizon);
    let low = remaining_ppm.is_some_and(|ppm| ppm < AT_RISK_REMAINING_PERCENT * 10_000);
    let spent_out = view.remaining.is_some_and(|r| !r.is_positive());
    Row {
        at_risk: view.blocked || spent_out || runs_out_first || low,
        kind,
        name,
        view,
        burn_per_hour,
        basis,
        projected_ms,
        remaining_ppm,
    }
}

/// The series query of a budget's spend since its period started.
fn series_path(kind: EntityKind, name: &str, from: i64, to: i64) -> Option<(String, &'static str)> {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    match kind {
        EntityKind::Customer => q.append_pair("customer", name),
        EntityKind::Team => q.append_pair("team", name),
        EntityKind::Key => q.append_pair("key", name),
        EntityKind::Provider => q.append_pair("provider", name),
        EntityKind::Model => q.append_pair("model", name),
        EntityKind::Tag => q.append_pair("tag", name),
        EntityKind::KeyModel | EntityKind::TeamModel | EntityKind::CustomerModel => {
            let (owner, model) = name.split_once('/')?;
            let owner_param = match kind {
                EntityKind::CustomerModel => "customer",
                EntityKind::TeamModel => "team",
                _ => "key",
            };
            q.append_pair(owner_param, owner)
                .append_pair("model", model)
        }
    };
    let span = to.saturating_sub(from).max(1);
    let points_max = BURN_SERIES_POINTS_MAX.min(i64::try_from(LOG_SERIES_POINTS_MAX).ok()?);
    let bucket = [
        ("minute", 60_000_i64),
        ("hour", 3_600_000),
        ("day", 86_400_000),
    ]
    .into_iter()
    .find(|(_, w)| span / w < points_max)?;
    q.append_pair("group_by", "none")
        .append_pair("bucket", bucket.0)
        .append_pair("from", &from.to_string())
        .append_pair("to", &to.to_string());
    Some((format!("/admin/spend/series?{}", q.finish()), bucket.0))
}

fn kind_param(s: &str) -> Result<EntityKind, ApiError> {
    use EntityKind as K;
    [
        K::Customer,
        K::Team,
        K::Key,
        K::Provider,
        K::Model,
        K::Tag,
        K::KeyModel,
        K::TeamModel,
        K::CustomerModel,
    ]
    .into_iter()
    .find(|k| kind_str(*k) == s)
    .ok_or_else(|| {
        bad(format!(
            "kind: {s:?} is not a budget kind (customer, team, key, provider, model, tag, \
             key_model, team_model, customer_model)"
        ))
    })
}

/// `GET /admin/budgets`.
pub(super) async fn list(
    gov: &Governance,
    params: &[(String, String)],
) -> Result<AdminResponse, ApiError> {
    let mut only = None;
    let mut limit = BUDGETS_PAGE_DEFAULT;
    for (k, v) in params {
        match k.as_str() {
            "kind" => only = Some(kind_param(v)?),
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=BUDGETS_PAGE_MAX).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "limit: {v:?} is not a whole number from 1 to {BUDGETS_PAGE_MAX}"
                        ))
                    })?
            }
            other => return Err(bad(format!("unknown parameter {other:?}"))),
        }
    }
    // The budgets of the config in force, and their ids.
    let (budgets, total) = gov.read(|_, _, config| {
        let all: Vec<(EntityKind, String)> = config_entities(config)
            .into_iter()
            .filter(|(kind, _, budget)| budget.is_some() && only.is_none_or(|k| k == *kind))
            .map(|(kind, name, _)| (kind, name.into_owned()))
            .collect();
        let total = all.len();
        (
            all.into_iter().take(BUDGETS_LISTED_MAX).collect::<Vec<_>>(),
            total,
        )
    });
    let ids: Vec<_> = {
        let registry = gov.entities.lock().unwrap_or_else(|p| p.into_inner());
        budgets
            .into_iter()
            .filter_map(|(kind, name)| registry.lookup(kind, &name).map(|id| (kind, name, id)))
            .collect()
    };
    let mut views = gov
        .books
        .views(&ids.iter().map(|(_, _, id)| *id).collect::<Vec<_>>())
        .map_err(ledger_error)?;
    // Cluster mode: the cluster's spend, not this node's share.
    let cluster = {
        let present: Vec<(EntityKind, &str, &crate::ledger::EntityView)> = ids
            .iter()
            .zip(&views)
            .filter_map(|((k, n, _), v)| v.as_ref().map(|v| (*k, n.as_str(), v)))
            .collect();
        gov.cluster_spend(&present)
    };
    let mut cluster_iter = cluster.into_iter();
    for v in views.iter_mut().flatten() {
        if let Some(Some(c)) = cluster_iter.next() {
            super::targets::cluster_view(v, &c);
        }
    }
    let now = crate::ratelimit::now_ms().clamp(TIME_MS_MIN, TIME_MS_MAX);
    let queries = BurnQueries::of(&ids);
    let burn = read_burn(gov, queries, now.saturating_sub(BURN_WINDOW_MS), now).await;
    let mut rows: Vec<Row> = ids
        .into_iter()
        .zip(views)
        .filter_map(|((kind, name, _), view)| view.map(|v| row(kind, name, v, burn.as_ref(), now)))
        .collect();
    rows.sort_by(|a, b| {
        b.view
            .blocked
            .cmp(&a.view.blocked)
            .then(b.at_risk.cmp(&a.at_risk))
            .then_with(|| match (a.at_risk, a.projected_ms, b.projected_ms) {
                (true, Some(x), Some(y)) => x.cmp(&y),
                (true, Some(_), None) => std::cmp::Ordering::Less,
                (true, None, Some(_)) => std::cmp::Ordering::Greater,
                _ => std::cmp::Ordering::Equal,
            })
            .then_with(|| match (a.remaining_ppm, b.remaining_ppm) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
            .then_with(|| kind_str(a.kind).cmp(kind_str(b.kind)))
            .then_with(|| a.name.cmp(&b.name))
    });
    let at_risk = rows.iter().filter(|r| r.at_risk).count();
    let listed = rows.len();
    let data: Vec<Value> = rows
        .into_iter()
        .take(limit)
        .map(|r| {
            let mut v = spend_json(kind_str(r.kind), &r.name, &r.view);
            let end = now.saturating_add(1).min(TIME_MS_MAX);
            let series = series_path(r.kind, &r.name, r.view.period.start_ms.min(now), end);
            if let Value::Object(m) = &mut v {
                m.insert(
                    "burn_usd_per_hour".into(),
                    json!(r
                        .burn_per_hour
                        .and_then(Money::from_picodollars)
                        .map(|m| m.to_string())),
                );
                m.insert("burn_basis".into(), json!(r.basis));
                m.insert(
                    "projected_exhaustion".into(),
                    json!(r.projected_ms.map(format_rfc3339_ms)),
                );
                m.insert("at_risk".into(), json!(r.at_risk));
                m.insert(
                    "series".into(),
                    json!(series.map(|(path, bucket)| json!({"path": path, "bucket": bucket}))),
                );
            }
            v
        })
        .collect();
    ok(
        200,
        &json!({
            "object": "list",
            "data": data,
            "total": total,
            "listed": listed,
            "at_risk": at_risk,
            "truncated": total > BUDGETS_LISTED_MAX,
            "as_of": format_rfc3339_ms(now),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_is_exact_and_bounded() {
        let usd = |d: u32| Some(Money::from_usd(d));
        let per_hour = |d: i128| Some(d * 1_000_000_000_000);
        // $10 left at $5/h: two hours.
        assert_eq!(projection(0, usd(10), per_hour(5)), Some(7_200_000));
        // Spent out: now.
        assert_eq!(projection(42, usd(0), per_hour(5)), Some(42));
        // No rate, no limit: never.
        assert_eq!(projection(0, usd(10), Some(0)), None);
        assert_eq!(projection(0, None, per_hour(5)), None);
        // A tiny rate on a huge remainder stays within the times bursar keeps.
        assert_eq!(
            projection(0, Some(Money::from_usd(u32::MAX)), Some(1)),
            Some(TIME_MS_MAX)
        );
    }

    #[test]
    fn series_paths_name_the_budget_and_fit_the_points_bound() {
        let (p, b) = series_path(EntityKind::Key, "k 1", 0, 3_600_000).unwrap();
        assert_eq!(b, "minute");
        assert!(p.contains("key=k+1") && p.contains("group_by=none"), "{p}");
        let (p, b) =
            series_path(EntityKind::TeamModel, "t/meta/llama", 0, 20 * 86_400_000).unwrap();
        assert_eq!(b, "hour");
        assert!(
            p.contains("team=t") && p.contains("model=meta%2Fllama"),
            "{p}"
        );
        let (_, b) = series_path(EntityKind::Tag, "env=prod", 0, 365 * 86_400_000).unwrap();
        assert_eq!(b, "day");
    }
}
