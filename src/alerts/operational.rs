//! Operational alerts: what goes wrong with the gateway rather than with a
//! budget. A sampler on its own thread (`bursar-opsalerts`) looks every
//! [`SAMPLE_INTERVAL`] at counters the other threads already keep, builds
//! the alerts and hands them to the ledger thread
//! ([`BooksHandle::emit_alerts`](crate::books::thread::BooksHandle::emit_alerts)),
//! the outbox's one writer, which skips an id it already holds:
//!
//! - `operational.unpriced_model`: a request for a model without a price
//!   (refused 400, or served uncharged under `[pricing] unpriced = "allow"`).
//!   Workers queue the model's name on that rare path
//!   ([`UnpricedModels`](crate::metrics::UnpricedModels)); one alert per
//!   model and UTC day, at most [`UNPRICED_ALERTS_PER_DAY_MAX`] a day.
//! - `operational.overrun`: `BooksStats.overruns` grew (a strict charge
//!   beyond its reservation), naming the last overrun's entity; one an hour.
//! - `operational.log_rows_dropped`: the request log's `rows_dropped` grew;
//!   one an hour.
//! - `operational.cluster_unavailable`: cluster mode's Redis calls failed
//!   (`bursar_cluster_errors_total` grew) and the last one did not reach
//!   Redis; one an hour.
//! - `operational.cluster_drift`: cluster mode found budget hashes gone back
//!   in time and repaired them from this node's journal
//!   (`bursar_cluster_losses_total` grew), with the drift; one an hour.
//! - `operational.provider_errors`: a provider's upstream error rate over the
//!   last [`PROVIDER_ERROR_WINDOW_S`] passed a rule's
//!   `provider_error_rate_percent`, with at least
//!   [`PROVIDER_ERROR_RESPONSES_MIN`] responses in the window (per-worker
//!   counters in the catalog's providers,
//!   [`ProviderOutcomes`](crate::metrics::ProviderOutcomes)); one per
//!   provider an hour.
//!
//! Every rule with `operational = true` hears of every operational alert,
//! whatever its scope (a provider error alert only the rules whose rate it
//! passed); each channel once. The rules are read from the governance's
//! config at every sample, so rules added through the admin API apply at
//! once. This file is the window logic, [`Sampler`]: plain data, tested on
//! its own. The thread that drives it reads the governance and the metrics
//! registry, so it lives above them, in `admin::operational`. Its own
//! thread, not a task on the control plane's: it takes the entity
//! registry's lock and may wait on the ledger's queue, and the control plane
//! must keep answering meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::event::{alert_id, Alert, AlertData, AlertKind, OperationalData, Severity};
use super::rules::{Rule, PROVIDER_ERROR_WINDOW_S};

/// How often the sampler looks.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(15);
/// Debug builds only: the sampling interval in milliseconds (50 to 60,000),
/// so tests need not wait [`SAMPLE_INTERVAL`].
pub const DEBUG_SAMPLE_INTERVAL_ENV: &str = "BURSAR_DEBUG_OPERATIONAL_INTERVAL_MS";
/// Fewest upstream responses in the window for an error rate to count.
pub const PROVIDER_ERROR_RESPONSES_MIN: u64 = 20;
/// Most samples kept per provider (the window at the shortest interval).
pub const PROVIDER_SAMPLES_MAX: usize = 1024;
/// Most `operational.unpriced_model` alerts in one UTC day: model names come
/// from clients, and a stream of made-up names must not flood the channels.
pub const UNPRICED_ALERTS_PER_DAY_MAX: u32 = 32;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// What the sampler read from the counters at one instant.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Unpriced model names the workers queued since the last sample.
    pub unpriced: Vec<Box<str>>,
    /// Whether the gateway refuses unpriced models (else it serves them).
    pub refuse_unpriced: bool,
    /// `BooksStats.overruns`.
    pub overruns: u64,
    /// Who the last overrun charged ("key demo"), when known.
    pub last_overrun: Option<String>,
    /// The request log's `rows_dropped` (`None`: the log is off).
    pub log_rows_dropped: Option<u64>,
    /// Every provider: name, responses, errors (totals since they exist).
    pub providers: Vec<(Arc<str>, u64, u64)>,
    /// Cluster mode (`None`: a single node).
    pub cluster: Option<ClusterObserved>,
}

/// Cluster mode's counters, as the sampler reads them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterObserved {
    /// Redis calls that failed, in all.
    pub errors: u64,
    /// Whether the last call reached Redis.
    pub connected: bool,
    /// Budget hashes found gone back in time, in all.
    pub losses: u64,
    /// What they had lost of this node's acknowledged spend, picodollars.
    pub drift_picodollars: u64,
}

/// A counter's growth not yet reported.
#[derive(Debug, Default)]
struct Growth {
    seen: Option<u64>,
    pending: u64,
    /// Since when `pending` counts, unix ms.
    since_ms: i64,
}

impl Growth {
    fn observe(&mut self, now_ms: i64, total: u64) -> u64 {
        match self.seen {
            None => self.since_ms = now_ms,
            Some(seen) => self.pending = self.pending.saturating_add(total.saturating_sub(seen)),
        }
        self.seen = Some(total);
        self.pending
    }

    fn reported(&mut self, now_ms: i64) {
        self.pending = 0;
        self.since_ms = now_ms;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    t_ms: i64,
    responses: u64,
    errors: u64,
}

/// The window arithmetic and the caps, without clocks or threads.
#[derive(Debug)]
pub struct Sampler {
    window_ms: i64,
    overruns: Growth,
    log_rows: Growth,
    cluster_errors: Growth,
    cluster_losses: Growth,
    cluster_drift: Growth,
    providers: HashMap<Arc<str>, VecDeque<Sample>>,
    /// Ids emitted, and when they may be forgotten (their period's end).
    emitted: HashMap<String, i64>,
    /// (UTC day, unpriced alerts emitted that day).
    unpriced_today: (i64, u32),
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new(PROVIDER_ERROR_WINDOW_S as i64 * 1000)
    }
}

/// A provider's outcomes over the window: what the rate is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCounts {
    pub responses: u64,
    pub errors: u64,
    /// The span the counts cover, ms (at most the window).
    pub span_ms: i64,
}

impl WindowCounts {
    /// Whether the error rate passes `percent` (strictly) with enough
    /// responses to mean something.
    pub fn exceeds(&self, percent: u8) -> bool {
        self.responses >= PROVIDER_ERROR_RESPONSES_MIN
            && u128::from(self.errors) * 100 > u128::from(self.responses) * u128::from(percent)
    }
}

impl Sampler {
    pub fn new(window_ms: i64) -> Sampler {
        Sampler {
            window_ms: window_ms.max(1),
            overruns: Growth::default(),
            log_rows: Growth::default(),
            cluster_errors: Growth::default(),
            cluster_losses: Growth::default(),
            cluster_drift: Growth::default(),
            providers: HashMap::new(),
            emitted: HashMap::new(),
            unpriced_today: (i64::MIN, 0),
        }
    }

    /// Records `provider`'s totals at `now_ms` and returns its counts over
    /// the window: from the oldest sample inside it to this one.
    pub fn window(
        &mut self,
        now_ms: i64,
        provider: &Arc<str>,
        responses: u64,
        errors: u64,
    ) -> WindowCounts {
        let ring = self.providers.entry(Arc::clone(provider)).or_default();
        if ring
            .back()
            .is_some_and(|last| responses < last.responses || errors < last.errors)
        {
            // New counters (the provider was removed and defined again).
            ring.clear();
        }
        let cur = Sample {
            t_ms: now_ms,
            responses,
            errors,
        };
        ring.push_back(cur);
        let start = now_ms.saturating_sub(self.window_ms);
        while ring.len() > PROVIDER_SAMPLES_MAX || ring.front().is_some_and(|s| s.t_ms < start) {
            ring.pop_front();
        }
        let base = ring.front().copied().unwrap_or(cur);
        WindowCounts {
            responses: cur.responses - base.responses,
            errors: cur.errors - base.errors,
            span_ms: cur.t_ms - base.t_ms,
        }
    }

    /// One sample: records what `obs` shows and returns the alerts due for
    /// `rules` (only those with `operational` count). The first sample only
    /// sets the baselines. With no operational rule nothing is due and what
    /// happened meanwhile is forgotten (a rule added later does not hear of
    /// it).
    pub fn tick(&mut self, now_ms: i64, obs: Observed, rules: &[Rule]) -> Vec<Alert> {
        self.emitted.retain(|_, until| *until > now_ms);
        let rules: Vec<&Rule> = rules.iter().filter(|r| r.operational).collect();
        let mut out = Vec::new();
        let hour = now_ms.div_euclid(HOUR_MS);
        let hour_ends = (hour + 1).saturating_mul(HOUR_MS);

        // Unpriced models: one alert per model and UTC day.
        let mut models: Vec<(Box<str>, u64)> = Vec::new();
        for m in obs.unpriced {
            match models.iter_mut().find(|(n, _)| *n == m) {
                Some((_, c)) => *c += 1,
                None => models.push((m, 1)),
            }
        }
        let day = now_ms.div_euclid(DAY_MS);
        if self.unpriced_today.0 != day {
            self.unpriced_today = (day, 0);
        }
        for (model, count) in models {
            if rules.is_empty() {
                break;
            }
            let id = alert_id(&[b"unpriced", model.as_bytes(), day.to_string().as_bytes()]);
            if self.emitted.contains_key(&id)
                || self.unpriced_today.1 >= UNPRICED_ALERTS_PER_DAY_MAX
            {
                continue;
            }
            self.unpriced_today.1 += 1;
            let what = if obs.refuse_unpriced {
                "refused (400 model_not_priced)"
            } else {
                "served uncharged ([pricing] unpriced = \"allow\")"
            };
            let detail = format!(
                "requests for the model {model:?}, which has no price, were {what}; \
                 add a [[prices]] entry for it"
            );
            out.push(make(
                AlertKind::UnpricedModel,
                Severity::Warning,
                id.clone(),
                now_ms,
                format!("Unpriced model {model:?} requested"),
                OperationalData {
                    subject: model.to_string(),
                    count,
                    window_s: 0,
                    detail,
                    rules: Vec::new(),
                },
                &rules,
            ));
            self.emitted.insert(id, (day + 1).saturating_mul(DAY_MS));
        }

        // Strict overruns: one alert an hour.
        let overruns = self.overruns.observe(now_ms, obs.overruns);
        if rules.is_empty() {
            self.overruns.reported(now_ms);
        } else if overruns > 0 {
            let id = alert_id(&[b"overrun", hour.to_string().as_bytes()]);
            if !self.emitted.contains_key(&id) {
                let subject = obs.last_overrun.unwrap_or_else(|| "budget".to_string());
                let window_s = secs(now_ms - self.overruns.since_ms);
                out.push(make(
                    AlertKind::Overrun,
                    Severity::Warning,
                    id.clone(),
                    now_ms,
                    format!(
                        "{overruns} strict charge(s) beyond their reservation in {window_s} s \
                         (last: {subject})"
                    ),
                    OperationalData {
                        subject,
                        count: overruns,
                        window_s,
                        detail: "a strict budget was charged beyond what its lease covered \
                                 (an output the provider did not cap, or a replay after a crash)"
                            .to_string(),
                        rules: Vec::new(),
                    },
                    &rules,
                ));
                self.emitted.insert(id, hour_ends);
                self.overruns.reported(now_ms);
            }
        }

        // Request log rows lost: one alert an hour.
        if let Some(dropped_total) = obs.log_rows_dropped {
            let dropped = self.log_rows.observe(now_ms, dropped_total);
            if rules.is_empty() {
                self.log_rows.reported(now_ms);
            } else if dropped > 0 {
                let id = alert_id(&[b"log_rows_dropped", hour.to_string().as_bytes()]);
                if !self.emitted.contains_key(&id) {
                    let window_s = secs(now_ms - self.log_rows.since_ms);
                    out.push(make(
                        AlertKind::LogRowsDropped,
                        Severity::Error,
                        id.clone(),
                        now_ms,
                        format!("The request log lost {dropped} rows in {window_s} s"),
                        OperationalData {
                            subject: "request_log".to_string(),
                            count: dropped,
                            window_s,
                            detail: "rows were dropped: the log writer's queue was full, or \
                                     the spill directory full or unwritable"
                                .to_string(),
                            rules: Vec::new(),
                        },
                        &rules,
                    ));
                    self.emitted.insert(id, hour_ends);
                    self.log_rows.reported(now_ms);
                }
            }
        }

        // Cluster mode: Redis unreachable, and hashes repaired; one an hour each.
        if let Some(c) = obs.cluster {
            let errors = self.cluster_errors.observe(now_ms, c.errors);
            let losses = self.cluster_losses.observe(now_ms, c.losses);
            let drift = self.cluster_drift.observe(now_ms, c.drift_picodollars);
            if rules.is_empty() {
                self.cluster_errors.reported(now_ms);
                self.cluster_losses.reported(now_ms);
                self.cluster_drift.reported(now_ms);
            }
            let id = alert_id(&[b"cluster_unavailable", hour.to_string().as_bytes()]);
            if !rules.is_empty() && errors > 0 && !c.connected && !self.emitted.contains_key(&id) {
                let window_s = secs(now_ms - self.cluster_errors.since_ms);
                out.push(make(
                    AlertKind::ClusterUnavailable,
                    Severity::Critical,
                    id.clone(),
                    now_ms,
                    format!("Redis unreachable: {errors} failed calls in {window_s} s"),
                    OperationalData {
                        subject: "redis".to_string(),
                        count: errors,
                        window_s,
                        detail: "cluster mode cannot reach Redis: strict budgets refuse \
                                 requests once this node's leases are used up, and admin \
                                 changes cannot reach the other nodes"
                            .to_string(),
                        rules: Vec::new(),
                    },
                    &rules,
                ));
                self.emitted.insert(id, hour_ends);
                self.cluster_errors.reported(now_ms);
            }
            let id = alert_id(&[b"cluster_drift", hour.to_string().as_bytes()]);
            if !rules.is_empty() && losses > 0 && !self.emitted.contains_key(&id) {
                let window_s = secs(now_ms - self.cluster_losses.since_ms);
                let usd = crate::money::Money::from_picodollars(i128::from(drift))
                    .map_or_else(|| drift.to_string(), |m| m.to_string());
                out.push(make(
                    AlertKind::ClusterDrift,
                    Severity::Error,
                    id.clone(),
                    now_ms,
                    format!(
                        "Redis lost budget totals: {losses} hashes repaired from this node's \
                         journal, ${usd} of its spend had been lost"
                    ),
                    OperationalData {
                        subject: "redis".to_string(),
                        count: losses,
                        window_s,
                        detail: format!(
                            "budget hashes in Redis went back in time (a restart without its \
                             data, an old snapshot, a flush); each was quarantined and \
                             repaired from the nodes' journals; drift ${usd}"
                        ),
                        rules: Vec::new(),
                    },
                    &rules,
                ));
                self.emitted.insert(id, hour_ends);
                self.cluster_losses.reported(now_ms);
                self.cluster_drift.reported(now_ms);
            }
        }

        // Provider error rates over the window: one alert per provider an hour.
        self.providers
            .retain(|name, _| obs.providers.iter().any(|(n, _, _)| n == name));
        for (name, responses, errors) in &obs.providers {
            let w = self.window(now_ms, name, *responses, *errors);
            let over: Vec<&Rule> = rules
                .iter()
                .copied()
                .filter(|r| w.exceeds(r.provider_error_rate_percent))
                .collect();
            if over.is_empty() {
                continue;
            }
            let id = alert_id(&[
                b"provider_errors",
                name.as_bytes(),
                hour.to_string().as_bytes(),
            ]);
            if self.emitted.contains_key(&id) {
                continue;
            }
            let percent = w.errors * 100 / w.responses.max(1);
            let window_s = secs(w.span_ms);
            out.push(make(
                AlertKind::ProviderErrors,
                Severity::Error,
                id.clone(),
                now_ms,
                format!(
                    "Provider {name}: {} of {} upstream responses failed ({percent}%) in {window_s} s",
                    w.errors, w.responses
                ),
                OperationalData {
                    subject: name.to_string(),
                    count: w.errors,
                    window_s,
                    detail: format!(
                        "{} errors (5xx, connect failures, closes, timeouts) of {} responses, \
                         {percent}%",
                        w.errors, w.responses
                    ),
                    rules: Vec::new(),
                },
                &over,
            ));
            self.emitted.insert(id, hour_ends);
        }
        out
    }
}

fn secs(ms: i64) -> u64 {
    u64::try_from(ms.max(0) / 1000).unwrap_or(0)
}

/// An alert routed to every channel of `rules`, each once (the first rule,
/// in file order, that names it).
fn make(
    kind: AlertKind,
    severity: Severity,
    id: String,
    now_ms: i64,
    summary: String,
    mut data: OperationalData,
    rules: &[&Rule],
) -> Alert {
    let routes = super::rules::routes(rules.iter().copied(), |r| {
        format!("bursar/{}/{id}/{}", kind.as_str(), r.name)
    });
    data.rules = rules.iter().map(|r| r.name.clone()).collect();
    Alert {
        id,
        kind,
        timestamp_ms: now_ms,
        severity,
        summary,
        data: AlertData::Operational(data),
        routes,
        key: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::RuleSection;

    const T0: i64 = 1_700_000_000_000; // 2023-11-14T22:13:20Z
    const S: i64 = 1000;

    fn rule(name: &str, operational: bool, percent: Option<u8>, channels: &[&str]) -> Rule {
        RuleSection {
            name: name.into(),
            scope: "keys".into(),
            thresholds: None,
            soft_limit: None,
            exhausted: None,
            forecast: None,
            recovery: None,
            anomaly: None,
            anomaly_factor: None,
            reports: None,
            operational: Some(operational),
            provider_error_rate_percent: percent,
            channels: channels.iter().map(|c| c.to_string()).collect(),
        }
        .validate(&["a", "b", "c"])
        .unwrap()
    }

    fn providers(list: &[(&str, u64, u64)]) -> Observed {
        Observed {
            providers: list
                .iter()
                .map(|(n, r, e)| (Arc::from(*n), *r, *e))
                .collect(),
            ..Observed::default()
        }
    }

    fn data(a: &Alert) -> &OperationalData {
        match &a.data {
            AlertData::Operational(o) => o,
            other => panic!("not operational: {other:?}"),
        }
    }

    #[test]
    fn the_window_rate_covers_only_the_last_window() {
        let mut s = Sampler::new(300 * S);
        let p: Arc<str> = "up".into();
        assert_eq!(s.window(T0, &p, 0, 0).responses, 0);
        // 100 responses, 90 errors in the first minute.
        let w = s.window(T0 + 60 * S, &p, 100, 90);
        assert_eq!((w.responses, w.errors, w.span_ms), (100, 90, 60 * S));
        // Five minutes later the first sample left the window: only what
        // came since the 60 s sample counts.
        let w = s.window(T0 + 330 * S, &p, 200, 95);
        assert_eq!((w.responses, w.errors, w.span_ms), (100, 5, 270 * S));
        // Counters that went back (a provider defined again) start over.
        let w = s.window(T0 + 340 * S, &p, 3, 1);
        assert_eq!((w.responses, w.errors, w.span_ms), (0, 0, 0));
    }

    #[test]
    fn a_rate_needs_enough_responses_and_must_pass_the_threshold() {
        let w = |responses, errors| WindowCounts {
            responses,
            errors,
            span_ms: 0,
        };
        assert!(!w(19, 19).exceeds(25), "fewer than 20 responses");
        assert!(w(20, 20).exceeds(25));
        assert!(!w(20, 5).exceeds(25), "25% is not above 25%");
        assert!(w(20, 6).exceeds(25));
        assert!(w(1000, 11).exceeds(1));
        assert!(!w(u64::MAX, u64::MAX).exceeds(100));
    }

    #[test]
    fn provider_errors_fire_once_per_provider_and_hour_to_the_rules_passed() {
        let rules = vec![
            rule("strict", true, Some(10), &["a", "b"]),
            rule("lax", true, Some(50), &["b", "c"]),
            rule("budgets", false, None, &["c"]),
        ];
        let mut s = Sampler::default();
        // At the start of an hour.
        let start = T0 - T0.rem_euclid(HOUR_MS);
        assert!(s
            .tick(start, providers(&[("up", 0, 0), ("ok", 0, 0)]), &rules)
            .is_empty());
        // 19 responses, 8 errors: too few responses.
        let t = start + 15 * S;
        assert!(s
            .tick(t, providers(&[("up", 19, 8), ("ok", 19, 0)]), &rules)
            .is_empty());
        // 40 responses, 8 errors: 20%, past "strict" only.
        let t = start + 30 * S;
        let out = s.tick(t, providers(&[("up", 40, 8), ("ok", 40, 0)]), &rules);
        assert_eq!(out.len(), 1);
        let a = &out[0];
        assert_eq!(a.kind, AlertKind::ProviderErrors);
        assert_eq!(
            a.id,
            alert_id(&[
                b"provider_errors",
                b"up",
                (t / HOUR_MS).to_string().as_bytes()
            ])
        );
        assert_eq!(data(a).subject, "up");
        assert_eq!((data(a).count, data(a).window_s), (8, 30));
        assert_eq!(data(a).rules, vec!["strict".to_string()]);
        let routes: Vec<(&str, &str)> = a.routes.iter().map(|r| (&*r.channel, &*r.rule)).collect();
        assert_eq!(routes, vec![("a", "strict"), ("b", "strict")]);
        // Worse in the same hour: nothing more.
        let t = start + 45 * S;
        assert!(s
            .tick(t, providers(&[("up", 80, 80), ("ok", 80, 0)]), &rules)
            .is_empty());
        let t = start + HOUR_MS - 100 * S;
        assert!(s
            .tick(t, providers(&[("up", 100, 100), ("ok", 100, 0)]), &rules)
            .is_empty());
        // The next hour, still failing: one more, for both rules now, over
        // the samples inside the window only (100 of 100 failed).
        let t = start + HOUR_MS + 15 * S;
        let out = s.tick(t, providers(&[("up", 200, 200), ("ok", 200, 0)]), &rules);
        assert_eq!(out.len(), 1);
        assert_eq!((data(&out[0]).count, data(&out[0]).window_s), (100, 115));
        assert_eq!(
            data(&out[0]).rules,
            vec!["strict".to_string(), "lax".to_string()]
        );
        let channels: Vec<&str> = out[0].routes.iter().map(|r| &*r.channel).collect();
        assert_eq!(channels, vec!["a", "b", "c"], "each channel once");
        assert_ne!(out[0].id, a.id);
    }

    /// Cluster mode: Redis unreachable alerts once an hour, only while the
    /// last call failed; repaired hashes alert once an hour with the drift.
    #[test]
    fn cluster_troubles_alert_once_an_hour() {
        let rules = vec![rule("ops", true, None, &["a"])];
        let mut s = Sampler::default();
        let start = T0 - T0.rem_euclid(HOUR_MS);
        let seen = |errors, connected, losses, drift| Observed {
            cluster: Some(ClusterObserved {
                errors,
                connected,
                losses,
                drift_picodollars: drift,
            }),
            ..Observed::default()
        };
        assert!(s.tick(start, seen(0, true, 0, 0), &rules).is_empty());
        // Errors while connected again (a blip): nothing.
        assert!(s
            .tick(start + 15 * S, seen(3, true, 0, 0), &rules)
            .is_empty());
        // Errors and the last call failed: one alert, then none this hour.
        let out = s.tick(start + 30 * S, seen(9, false, 0, 0), &rules);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, AlertKind::ClusterUnavailable);
        assert_eq!(data(&out[0]).count, 9);
        assert!(s
            .tick(start + 45 * S, seen(20, false, 0, 0), &rules)
            .is_empty());
        // Hashes repaired: one alert with the drift in dollars.
        let out = s.tick(start + 60 * S, seen(20, true, 3, 4_200_000), &rules);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, AlertKind::ClusterDrift);
        assert_eq!(data(&out[0]).count, 3);
        assert!(out[0].summary.contains("$0.0000042"), "{}", out[0].summary);
        assert!(s
            .tick(start + 75 * S, seen(20, true, 5, 9_000_000), &rules)
            .is_empty());
        // The next hour, still unreachable: again; and the two hashes
        // repaired since the last drift alert are told now.
        let out = s.tick(start + HOUR_MS + S, seen(30, false, 5, 9_000_000), &rules);
        let kinds: Vec<AlertKind> = out.iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            vec![AlertKind::ClusterUnavailable, AlertKind::ClusterDrift]
        );
        assert_eq!(data(&out[1]).count, 2);
    }

    #[test]
    fn unpriced_models_alert_once_per_model_and_day() {
        let rules = vec![rule("ops", true, None, &["a"])];
        let mut s = Sampler::default();
        s.tick(T0, Observed::default(), &rules);
        let seen = |names: &[&str]| Observed {
            unpriced: names.iter().map(|n| Box::from(*n)).collect(),
            refuse_unpriced: true,
            ..Observed::default()
        };
        let out = s.tick(T0 + 15 * S, seen(&["x", "y", "x"]), &rules);
        assert_eq!(out.len(), 2);
        assert_eq!(data(&out[0]).subject, "x");
        assert_eq!(data(&out[0]).count, 2);
        assert_eq!(out[0].kind, AlertKind::UnpricedModel);
        let day = (T0 + 15 * S).div_euclid(DAY_MS);
        assert_eq!(
            out[0].id,
            alert_id(&[b"unpriced", b"x", day.to_string().as_bytes()])
        );
        assert!(s.tick(T0 + 30 * S, seen(&["x"]), &rules).is_empty());
        // The next UTC day: again.
        let out = s.tick((day + 1) * DAY_MS + S, seen(&["x"]), &rules);
        assert_eq!(out.len(), 1);
        // Made-up names: at most the day's cap.
        let names: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
        let refs: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        let out = s.tick((day + 1) * DAY_MS + 2 * S, seen(&refs), &rules);
        assert_eq!(out.len() as u32, UNPRICED_ALERTS_PER_DAY_MAX - 1);
    }

    #[test]
    fn overruns_and_dropped_rows_alert_once_an_hour_with_what_accumulated() {
        let rules = vec![rule("ops", true, None, &["a"])];
        let mut s = Sampler::default();
        let start = T0 - T0.rem_euclid(HOUR_MS);
        let obs = |overruns, dropped| Observed {
            overruns,
            last_overrun: Some("key demo".into()),
            log_rows_dropped: Some(dropped),
            ..Observed::default()
        };
        // The baseline: counts from before the sampler started do not alert.
        assert!(s.tick(start, obs(5, 7), &rules).is_empty());
        assert!(s.tick(start + 15 * S, obs(5, 7), &rules).is_empty());
        let out = s.tick(start + 30 * S, obs(6, 9), &rules);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].kind, AlertKind::Overrun);
        assert_eq!(data(&out[0]).subject, "key demo");
        assert_eq!(data(&out[0]).count, 1);
        assert_eq!(out[1].kind, AlertKind::LogRowsDropped);
        assert_eq!(data(&out[1]).count, 2);
        assert_eq!(data(&out[1]).window_s, 30);
        // More in the same hour: held back, then reported the next hour.
        assert!(s.tick(start + 45 * S, obs(8, 10), &rules).is_empty());
        let out = s.tick(start + HOUR_MS, obs(9, 10), &rules);
        assert_eq!(out.len(), 2);
        assert_eq!(data(&out[0]).count, 3);
        assert_eq!(data(&out[1]).count, 1);
        // Without an operational rule nothing fires, and it is forgotten.
        let off = vec![rule("budgets", false, None, &["a"])];
        assert!(s.tick(start + 2 * HOUR_MS, obs(20, 20), &off).is_empty());
        assert!(s
            .tick(start + 2 * HOUR_MS + S, obs(20, 20), &rules)
            .is_empty());
    }
}
