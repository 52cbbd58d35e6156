//! The spend report scheduler: a task on the control plane's runtime that,
//! every [`REPORT_CHECK_INTERVAL`], looks whether a day or ISO week ended
//! since it last looked (at start: the most recently ended ones, so a process
//! that was down at midnight still sends yesterday's report) and, for every
//! rule with `reports`, builds the reports due (`alerts::report`) from the
//! request log and hands them to the ledger thread (`books.emit_alerts`),
//! which appends them to the outbox; the delivery thread sends them.
//!
//! The queries run on the request log's query thread
//! (`Governance::query_log`), one report at a time so the admin API's
//! queries interleave; this task only awaits them, and nothing here touches a
//! request's path. A report's id is fixed by its period and scope, so a
//! report built again (after a restart, or after a failed query made the
//! period be retried a minute later) is skipped by the outbox.
//!
//! With `[log] sink = "off"` there are no reports: a warning says so once
//! when a rule asks for them.
//!
//! Debug builds only: with `BURSAR_DEBUG_REPORTS_NOW_MS=<unix ms>` set, the
//! scheduler takes that time as now (on every check), so a test can make the
//! week whose rows it just created the last completed one. Release builds
//! compile none of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Governance;
use crate::alerts::report::{self, ReportWindow};
use crate::alerts::rules::ReportPeriod;

/// How often the scheduler looks for an ended period.
pub const REPORT_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// The environment variable of the debug builds' clock override.
#[cfg(debug_assertions)]
pub const DEBUG_REPORTS_NOW_ENV: &str = "BURSAR_DEBUG_REPORTS_NOW_MS";

/// Now, for the scheduler: the wall clock, or in debug builds
/// [`DEBUG_REPORTS_NOW_ENV`] when it is set.
fn now_ms() -> i64 {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(DEBUG_REPORTS_NOW_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        return ms;
    }
    crate::ratelimit::now_ms()
}

/// Runs forever on the control plane's runtime.
pub async fn run(gov: Arc<Governance>) {
    // The start of the last window of each period whose reports were all
    // handed to the ledger thread.
    let mut done: HashMap<ReportPeriod, i64> = HashMap::new();
    let mut warned_off = false;
    loop {
        check(&gov, now_ms(), &mut done, &mut warned_off).await;
        monoio::time::sleep(REPORT_CHECK_INTERVAL).await;
    }
}

/// One look: builds and emits the reports of every period that ended since
/// the last look (`done`).
async fn check(
    gov: &Governance,
    now_ms: i64,
    done: &mut HashMap<ReportPeriod, i64>,
    warned_off: &mut bool,
) {
    let config = gov.config();
    let rules: Vec<_> = config
        .alerts
        .rules
        .iter()
        .filter(|r| !r.reports.is_empty())
        .cloned()
        .collect();
    if rules.is_empty() {
        return;
    }
    if config.log.is_none() {
        if !*warned_off {
            *warned_off = true;
            log::warn!(
                "alerts: rule {:?} asks for spend reports but the request log is off \
                 ([log] sink = \"off\"): no reports are sent",
                rules[0].name
            );
        }
        return;
    }
    let mut windows: Vec<ReportWindow> = Vec::new();
    for period in [ReportPeriod::Daily, ReportPeriod::Weekly] {
        if !rules.iter().any(|r| r.reports.contains(&period)) {
            continue;
        }
        let window = report::last_completed(period, now_ms);
        if done.get(&period) != Some(&window.from_ms) {
            windows.push(window);
        }
    }
    if windows.is_empty() {
        return;
    }
    let customers: Vec<String> = config.customers.iter().map(|c| c.name.clone()).collect();
    let teams: Vec<String> = config.teams.iter().map(|t| t.name.clone()).collect();
    let jobs = report::jobs_due(&rules, &customers, &teams, &windows);
    let mut failed: Vec<ReportPeriod> = Vec::new();
    for job in jobs {
        if failed.contains(&job.window.period) {
            continue;
        }
        let (scope, window) = (job.scope.clone(), job.window);
        let totals = gov
            .query_log(move |store| report::query_totals(store, &scope, &window))
            .await;
        let alert = match totals {
            Ok(totals) => report::build_alert(&job, &totals, crate::ratelimit::now_ms()),
            Err(e) => {
                log::warn!(
                    "alerts: the {} report of {} {} cannot be built now (tried again in {} s): {e}",
                    job.window.period.as_str(),
                    job.scope.kind_str(),
                    job.scope.name(),
                    REPORT_CHECK_INTERVAL.as_secs()
                );
                failed.push(job.window.period);
                continue;
            }
        };
        let Some(alert) = alert else {
            log::warn!(
                "alerts: the {} report of {} {} overflows its sum; skipped",
                job.window.period.as_str(),
                job.scope.kind_str(),
                job.scope.name()
            );
            continue;
        };
        if let Err(e) = gov.books.emit_alerts(vec![alert]) {
            log::warn!("alerts: the ledger thread refused a spend report: {e}");
            failed.push(job.window.period);
        }
    }
    for window in windows {
        if !failed.contains(&window.period) {
            done.insert(window.period, window.from_ms);
        }
    }
}
