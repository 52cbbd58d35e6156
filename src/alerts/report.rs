//! Daily and weekly spend reports: which reports are due at a time, and the
//! `spend.report` alert of each, built from the request log's spend totals
//! (the queries `GET /admin/spend/totals` runs, so a report equals the API).
//!
//! Everything here is pure but [`query_totals`], which runs on the request
//! log's query thread. The scheduler (`admin::reports`) asks which periods
//! ended, runs the queries through `Governance::query_log` and hands the
//! alerts to the ledger thread, the outbox's one writer.
//!
//! A report's id is derived from its period, scope and start
//! (`alert_id(["report", period, kind, name, from_ms])`), so a report is
//! sent once per period however often it is built: the outbox skips an id it
//! already holds (after a restart, or a retry after a failed query).

use crate::budget::period::{civil_from_days, format_rfc3339_ms, DAY_MS, WEEK_MS};
use crate::reqlog::{GroupBy, LogStore, SpendFilter, SpendTotal, StoreError};

use super::event::{alert_id, Alert, AlertData, EntityRef, ReportData, ReportLine, Route};
use super::rules::{ReportPeriod, Rule, Scope};
use super::{AlertKind, Severity};
use crate::ledger::EntityKind;

/// Lines of each top list (keys, models, tags).
pub const REPORT_TOP_MAX: usize = 5;
/// 1970-01-05, the first Monday after the epoch, in days (ISO weeks start
/// on Monday).
const FIRST_MONDAY_DAYS: i64 = 4;

/// A report's range: `[from_ms, to_ms)`, one whole UTC day or ISO week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReportWindow {
    pub period: ReportPeriod,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The start of the day or ISO week (Monday 00:00 UTC) containing `t_ms`.
pub fn period_start_ms(period: ReportPeriod, t_ms: i64) -> i64 {
    match period {
        ReportPeriod::Daily => t_ms - t_ms.rem_euclid(DAY_MS),
        ReportPeriod::Weekly => {
            let origin = FIRST_MONDAY_DAYS * DAY_MS;
            origin + (t_ms - origin).div_euclid(WEEK_MS) * WEEK_MS
        }
    }
}

/// The last period that ended at or before `now_ms`: yesterday, or last
/// week (the one containing `now_ms` has not ended yet).
pub fn last_completed(period: ReportPeriod, now_ms: i64) -> ReportWindow {
    let to_ms = period_start_ms(period, now_ms);
    let len = match period {
        ReportPeriod::Daily => DAY_MS,
        ReportPeriod::Weekly => WEEK_MS,
    };
    ReportWindow {
        period,
        from_ms: to_ms - len,
        to_ms,
    }
}

/// Whom a report is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReportScope {
    /// The whole gateway (a rule with scope `all`).
    Gateway,
    Customer(String),
    Team(String),
}

impl ReportScope {
    /// "gateway" | "customer" | "team".
    pub fn kind_str(&self) -> &'static str {
        match self {
            ReportScope::Gateway => "gateway",
            ReportScope::Customer(_) => "customer",
            ReportScope::Team(_) => "team",
        }
    }

    /// The name ("all" for the gateway).
    pub fn name(&self) -> &str {
        match self {
            ReportScope::Gateway => "all",
            ReportScope::Customer(n) | ReportScope::Team(n) => n,
        }
    }

    /// The rows this report sums: the spend API's `team=` / `customer=`.
    pub fn filter(&self) -> SpendFilter {
        match self {
            ReportScope::Gateway => SpendFilter::default(),
            ReportScope::Customer(n) => SpendFilter {
                customer: Some(n.clone()),
                ..SpendFilter::default()
            },
            ReportScope::Team(n) => SpendFilter {
                team: Some(n.clone()),
                ..SpendFilter::default()
            },
        }
    }
}

/// One report to build: a scope over a window, the rules that asked for it
/// and one route per distinct channel (the first rule naming it routes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportJob {
    pub scope: ReportScope,
    pub window: ReportWindow,
    pub rules: Vec<String>,
    /// `(channel, rule)`.
    pub channels: Vec<(String, String)>,
}

impl ReportJob {
    /// The report's id: one per period, scope and start.
    pub fn id(&self) -> String {
        alert_id(&[
            b"report",
            self.window.period.as_str().as_bytes(),
            self.scope.kind_str().as_bytes(),
            self.scope.name().as_bytes(),
            self.window.from_ms.to_string().as_bytes(),
        ])
    }
}

/// The scopes a rule's scope covers for reports: every customer or team of
/// the config for a kind, the one named, or the gateway for `all`. Other
/// scopes (validation refuses them with reports) cover none.
fn scopes_of(scope: &Scope, customers: &[String], teams: &[String]) -> Vec<ReportScope> {
    match scope {
        Scope::All => vec![ReportScope::Gateway],
        Scope::Kind(EntityKind::Customer) => customers
            .iter()
            .map(|c| ReportScope::Customer(c.clone()))
            .collect(),
        Scope::Kind(EntityKind::Team) => {
            teams.iter().map(|t| ReportScope::Team(t.clone())).collect()
        }
        Scope::Entity(EntityKind::Customer, n) => vec![ReportScope::Customer(n.clone())],
        Scope::Entity(EntityKind::Team, n) => vec![ReportScope::Team(n.clone())],
        _ => Vec::new(),
    }
}

/// The reports the rules ask for over `windows` (at most one per period):
/// one job per scope and window however many rules ask for it, in rule
/// order, then scope order.
pub fn jobs_due(
    rules: &[Rule],
    customers: &[String],
    teams: &[String],
    windows: &[ReportWindow],
) -> Vec<ReportJob> {
    let mut jobs: Vec<ReportJob> = Vec::new();
    for rule in rules {
        for window in windows.iter().filter(|w| rule.reports.contains(&w.period)) {
            for scope in scopes_of(&rule.scope, customers, teams) {
                let i = match jobs
                    .iter()
                    .position(|j| j.scope == scope && j.window == *window)
                {
                    Some(i) => i,
                    None => {
                        jobs.push(ReportJob {
                            scope,
                            window: *window,
                            rules: Vec::new(),
                            channels: Vec::new(),
                        });
                        jobs.len() - 1
                    }
                };
                let job = &mut jobs[i];
                if !job.rules.contains(&rule.name) {
                    job.rules.push(rule.name.clone());
                }
                for channel in &rule.channels {
                    if !job.channels.iter().any(|(c, _)| c == channel) {
                        job.channels.push((channel.clone(), rule.name.clone()));
                    }
                }
            }
        }
    }
    jobs
}

/// A report's numbers, as the spend API's totals give them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportTotals {
    /// Grouped by key (every row has one: they sum to the total).
    pub by_key: Vec<SpendTotal>,
    pub by_model: Vec<SpendTotal>,
    /// Grouped by every tag, `key=value`.
    pub by_tag: Vec<SpendTotal>,
}

/// Runs a report's queries (on the query thread): the spend totals of the
/// scope's rows over the window by key, model and tag.
pub fn query_totals(
    store: &mut dyn LogStore,
    scope: &ReportScope,
    window: &ReportWindow,
) -> Result<ReportTotals, StoreError> {
    let filter = scope.filter();
    let (from, to) = (window.from_ms, window.to_ms);
    Ok(ReportTotals {
        by_key: store.spend_totals_where(&GroupBy::Key, &filter, from, to)?,
        by_model: store.spend_totals_where(&GroupBy::Model, &filter, from, to)?,
        by_tag: store.spend_totals_where(&GroupBy::Tags, &filter, from, to)?,
    })
}

/// The [`REPORT_TOP_MAX`] groups of most spend (then most requests, then by
/// name, bytewise), spend as the API writes it.
pub fn top_lines(groups: &[SpendTotal]) -> Vec<ReportLine> {
    let mut sorted: Vec<&SpendTotal> = groups.iter().collect();
    sorted.sort_by(|a, b| {
        b.cost_picodollars
            .cmp(&a.cost_picodollars)
            .then(b.requests.cmp(&a.requests))
            .then_with(|| a.group.as_bytes().cmp(b.group.as_bytes()))
    });
    sorted
        .into_iter()
        .take(REPORT_TOP_MAX)
        .map(|t| ReportLine {
            name: t.group.clone(),
            spend_usd: crate::reqlog::row::format_usd(t.cost_picodollars),
            requests: t.requests,
        })
        .collect()
}

/// A civil date, `YYYY-MM-DD`.
fn date(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The `spend.report` alert of `job` with its numbers, emitted at `now_ms`.
/// `None` when the totals overflow an i128 of picodollars (they cannot: the
/// store's exact sum of the same rows would have failed first).
pub fn build_alert(job: &ReportJob, totals: &ReportTotals, now_ms: i64) -> Option<Alert> {
    let mut total: i128 = 0;
    let mut requests: u64 = 0;
    for k in &totals.by_key {
        total = total.checked_add(k.cost_picodollars)?;
        requests = requests.checked_add(k.requests)?;
    }
    let total_usd = crate::reqlog::row::format_usd(total);
    let id = job.id();
    let (period_title, when) = match job.window.period {
        ReportPeriod::Daily => ("Daily", format!("on {}", date(job.window.from_ms))),
        ReportPeriod::Weekly => (
            "Weekly",
            format!("{} to {}", date(job.window.from_ms), date(job.window.to_ms)),
        ),
    };
    let whom = match &job.scope {
        ReportScope::Gateway => "the gateway".to_string(),
        s => format!("{} {}", s.kind_str(), s.name()),
    };
    let summary = format!(
        "{period_title} spend report for {whom}: ${total_usd} over {requests} requests, {when}"
    );
    Some(Alert {
        id: id.clone(),
        kind: AlertKind::Report,
        timestamp_ms: now_ms,
        severity: Severity::Info,
        summary,
        data: AlertData::Report(ReportData {
            scope: EntityRef {
                kind: job.scope.kind_str().to_string(),
                name: job.scope.name().to_string(),
            },
            period: job.window.period.as_str().to_string(),
            from: format_rfc3339_ms(job.window.from_ms),
            to: format_rfc3339_ms(job.window.to_ms),
            total_usd,
            requests,
            top_keys: top_lines(&totals.by_key),
            top_models: top_lines(&totals.by_model),
            top_tags: top_lines(&totals.by_tag),
            rules: job.rules.clone(),
        }),
        routes: job
            .channels
            .iter()
            .map(|(channel, rule)| Route {
                channel: channel.clone(),
                rule: rule.clone(),
                dedup_key: id.clone(),
            })
            .collect(),
        key: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::RuleSection;
    use crate::budget::period::unix_ms;

    #[test]
    fn a_day_is_the_utc_day_before_the_one_containing_now() {
        let now = unix_ms(2026, 12, 7, 0, 0, 30);
        let w = last_completed(ReportPeriod::Daily, now);
        assert_eq!(w.from_ms, unix_ms(2026, 12, 6, 0, 0, 0));
        assert_eq!(w.to_ms, unix_ms(2026, 12, 7, 0, 0, 0));
        // The last millisecond of a day still reports the day before it.
        let w = last_completed(ReportPeriod::Daily, unix_ms(2026, 12, 7, 23, 59, 59) + 999);
        assert_eq!(w.to_ms, unix_ms(2026, 12, 7, 0, 0, 0));
        // Exactly midnight: the day that just ended.
        let w = last_completed(ReportPeriod::Daily, unix_ms(2027, 1, 1, 0, 0, 0));
        assert_eq!(
            (w.from_ms, w.to_ms),
            (unix_ms(2026, 12, 31, 0, 0, 0), unix_ms(2027, 1, 1, 0, 0, 0))
        );
        // A leap day.
        let w = last_completed(ReportPeriod::Daily, unix_ms(2028, 3, 1, 5, 0, 0));
        assert_eq!(w.from_ms, unix_ms(2028, 2, 29, 0, 0, 0));
    }

    #[test]
    fn a_week_is_the_iso_week_monday_to_monday_across_a_year_change() {
        // 2026-12-07 is a Monday.
        let monday = unix_ms(2026, 12, 7, 0, 0, 0);
        for now in [monday, monday + 1, unix_ms(2026, 12, 13, 23, 59, 59)] {
            let w = last_completed(ReportPeriod::Weekly, now);
            assert_eq!(
                (w.from_ms, w.to_ms),
                (unix_ms(2026, 11, 30, 0, 0, 0), monday),
                "{now}"
            );
        }
        // ISO week 53 of 2026 runs from Monday 2026-12-28 to Monday 2027-01-04.
        let w = last_completed(ReportPeriod::Weekly, unix_ms(2027, 1, 6, 12, 0, 0));
        assert_eq!(
            (w.from_ms, w.to_ms),
            (unix_ms(2026, 12, 28, 0, 0, 0), unix_ms(2027, 1, 4, 0, 0, 0))
        );
        // On 2027-01-02 (a Saturday) the last ended week is 2026-12-21..28.
        let w = last_completed(ReportPeriod::Weekly, unix_ms(2027, 1, 2, 0, 0, 0));
        assert_eq!(w.to_ms, unix_ms(2026, 12, 28, 0, 0, 0));
        // Every week start is a Monday: 1970-01-05 was one.
        for days in [0i64, 3, 4, 10_000, 20_454] {
            let start = period_start_ms(ReportPeriod::Weekly, days * DAY_MS + 7);
            assert_eq!((start / DAY_MS - 4).rem_euclid(7), 0);
            assert!(start <= days * DAY_MS + 7 && days * DAY_MS + 7 < start + WEEK_MS);
        }
    }

    fn rule(name: &str, scope: &str, reports: &[&str], channels: &[&str]) -> Rule {
        let all = ["a", "b", "c"];
        RuleSection {
            name: name.into(),
            scope: scope.into(),
            thresholds: None,
            soft_limit: None,
            exhausted: None,
            forecast: None,
            recovery: None,
            anomaly: None,
            anomaly_factor: None,
            reports: Some(reports.iter().map(|r| r.to_string()).collect()),
            operational: None,
            provider_error_rate_percent: None,
            channels: channels.iter().map(|c| c.to_string()).collect(),
        }
        .validate(&all)
        .unwrap()
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn two_rules_asking_for_one_report_make_one_job_routed_once_per_channel() {
        let now = unix_ms(2026, 12, 8, 0, 1, 0);
        let windows = [
            last_completed(ReportPeriod::Daily, now),
            last_completed(ReportPeriod::Weekly, now),
        ];
        let rules = [
            rule("r1", "teams", &["weekly"], &["a", "b", "a"]),
            rule("r2", "teams/search", &["weekly", "daily"], &["b", "c"]),
            rule("r3", "all", &["daily"], &["c"]),
        ];
        let jobs = jobs_due(
            &rules,
            &names(&["acme"]),
            &names(&["search", "ads"]),
            &windows,
        );
        let summary: Vec<(&str, &str, &str)> = jobs
            .iter()
            .map(|j| (j.scope.name(), j.window.period.as_str(), j.scope.kind_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("search", "weekly", "team"),
                ("ads", "weekly", "team"),
                ("search", "daily", "team"),
                ("all", "daily", "gateway"),
            ]
        );
        let search_weekly = &jobs[0];
        assert_eq!(search_weekly.rules, names(&["r1", "r2"]));
        assert_eq!(
            search_weekly.channels,
            vec![
                ("a".to_string(), "r1".to_string()),
                ("b".to_string(), "r1".to_string()),
                ("c".to_string(), "r2".to_string()),
            ]
        );
        assert_eq!(jobs[1].channels.len(), 2);
        // Only the periods asked for: no weekly job for the gateway.
        assert!(jobs_due(&rules[2..], &[], &[], &windows[1..]).is_empty());
    }

    fn total(group: &str, cost: i128, requests: u64) -> SpendTotal {
        SpendTotal {
            group: group.into(),
            requests,
            cost_picodollars: cost,
            avoided_picodollars: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            errors: 0,
            cache_hits: 0,
        }
    }

    #[test]
    fn an_alert_has_exact_totals_bounded_sorted_tops_and_a_stable_id() {
        let now = unix_ms(2026, 12, 7, 0, 1, 0);
        let window = last_completed(ReportPeriod::Weekly, now);
        let job = ReportJob {
            scope: ReportScope::Team("search".into()),
            window,
            rules: names(&["r1"]),
            channels: vec![("a".into(), "r1".into()), ("b".into(), "r1".into())],
        };
        // Picodollars: $0.1 + $0.2 is exactly $0.3 (no float on the way).
        let by_key = vec![
            total("k1", 100_000_000_000, 2),
            total("k2", 200_000_000_000, 3),
            total("k3", 1, 1),
            total("k4", 200_000_000_000, 4),
            total("k5", 0, 9),
            total("k6", 5, 1),
            total("k7", 5, 1),
        ];
        let totals = ReportTotals {
            by_key,
            by_model: vec![total("gpt-4o", 300_000_000_011, 21)],
            by_tag: vec![total("env=prod", 7, 2), total("feature=chat", 9, 1)],
        };
        let alert = build_alert(&job, &totals, now).unwrap();
        let AlertData::Report(data) = &alert.data else {
            panic!("a report")
        };
        assert_eq!(data.total_usd, "0.500000000011");
        assert_eq!(data.requests, 21);
        assert_eq!(data.from, "2026-11-30T00:00:00Z");
        assert_eq!(data.to, "2026-12-07T00:00:00Z");
        let keys: Vec<&str> = data.top_keys.iter().map(|l| l.name.as_str()).collect();
        // Most spend first; a tie goes to more requests, then to the name.
        assert_eq!(keys, ["k4", "k2", "k1", "k6", "k7"]);
        assert_eq!(data.top_keys[0].spend_usd, "0.2");
        assert_eq!(data.top_tags[0].name, "feature=chat");
        assert_eq!(data.top_models.len(), 1);
        assert_eq!(
            alert.summary,
            "Weekly spend report for team search: $0.500000000011 over 21 requests, \
             2026-11-30 to 2026-12-07"
        );
        assert_eq!(alert.kind, AlertKind::Report);
        assert_eq!(alert.severity, Severity::Info);
        assert_eq!(alert.routes.len(), 2);
        assert!(alert.routes.iter().all(|r| r.dedup_key == alert.id));
        // The same report later (a restart) has the same id; another period,
        // scope or kind another.
        let again = build_alert(&job, &ReportTotals::default(), now + DAY_MS).unwrap();
        assert_eq!(again.id, alert.id);
        assert_eq!(
            alert.id,
            alert_id(&[
                b"report",
                b"weekly",
                b"team",
                b"search",
                window.from_ms.to_string().as_bytes()
            ])
        );
        let mut other = job.clone();
        other.scope = ReportScope::Customer("search".into());
        assert_ne!(other.id(), alert.id);
        other.scope = job.scope.clone();
        other.window = last_completed(ReportPeriod::Weekly, now + WEEK_MS);
        assert_ne!(other.id(), alert.id);
        let daily = ReportJob {
            scope: ReportScope::Gateway,
            window: last_completed(ReportPeriod::Daily, now),
            ..job.clone()
        };
        let a = build_alert(&daily, &ReportTotals::default(), now).unwrap();
        assert_eq!(
            a.summary,
            "Daily spend report for the gateway: $0 over 0 requests, on 2026-12-06"
        );
    }

    #[test]
    fn totals_are_the_stores_exact_sums() {
        let dir = crate::ledger::test_dir::TestDir::new("report-totals");
        let mut store = crate::reqlog::sinks::open(&crate::reqlog::SinkKind::Sqlite, dir.path())
            .expect("a store");
        let window = last_completed(ReportPeriod::Daily, unix_ms(2026, 12, 7, 1, 0, 0));
        let mut rows = Vec::new();
        for (i, (team, key, cost, t)) in [
            ("search", "k1", 100_000_000_000i128, window.from_ms),
            ("search", "k2", 200_000_000_000, window.to_ms - 1),
            ("ads", "k3", 7, window.from_ms + 5),
            ("search", "k1", 1, window.to_ms),
        ]
        .into_iter()
        .enumerate()
        {
            let mut row = crate::reqlog::row::tests::sample_row();
            row.id = format!("req_{i:028x}");
            row.time_ms = t;
            row.team = Some(team.into());
            row.key = key.into();
            row.cost_picodollars = cost;
            row.tags = vec![("env".into(), "prod".into())];
            rows.push(row);
        }
        store.insert_batch(&rows, &mut || {}).unwrap();
        let totals =
            query_totals(store.as_mut(), &ReportScope::Team("search".into()), &window).unwrap();
        let job = ReportJob {
            scope: ReportScope::Team("search".into()),
            window,
            rules: names(&["r"]),
            channels: Vec::new(),
        };
        let AlertData::Report(data) = build_alert(&job, &totals, 0).unwrap().data else {
            panic!("a report")
        };
        assert_eq!((data.total_usd.as_str(), data.requests), ("0.3", 2));
        assert_eq!(data.top_tags[0].name, "env=prod");
        assert_eq!(data.top_tags[0].spend_usd, "0.3");
    }
}
