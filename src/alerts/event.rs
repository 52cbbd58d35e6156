//! What an alert is: the fact the evaluator emits, the outbox keeps and every
//! channel renders. An alert is plain data, serialisable as one outbox line;
//! its id is fixed when it is emitted and is the same on every delivery
//! attempt (the `webhook-id` of a signed webhook, the subject's reference of a
//! mail), so a receiver can drop a repeat.

use serde::{Deserialize, Serialize};

use crate::budget::period::format_rfc3339_ms;

/// What happened. The wire names (`as_str`) are an interface: webhook
/// receivers switch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlertKind {
    /// Spend reached a percentage of the limit.
    #[serde(rename = "budget.threshold_crossed")]
    ThresholdCrossed,
    /// Spend reached the budget's soft limit.
    #[serde(rename = "budget.soft_limit_crossed")]
    SoftLimitCrossed,
    /// The budget refused its first request (nothing left to grant).
    #[serde(rename = "budget.exhausted")]
    Exhausted,
    /// What was firing no longer holds: a new period, a reset, a top-up, a
    /// raised limit, or a forecast that recovered.
    #[serde(rename = "budget.recovered")]
    Recovered,
    /// At the current burn rate the budget runs out before its reset.
    #[serde(rename = "budget.forecast")]
    Forecast,
    /// The last hour's spend is far above the same hour's trailing baseline.
    #[serde(rename = "spend.anomaly")]
    Anomaly,
    /// A daily or weekly spend report.
    #[serde(rename = "spend.report")]
    Report,
    /// A model without a price was served or refused.
    #[serde(rename = "operational.unpriced_model")]
    UnpricedModel,
    /// A strict budget was charged beyond what its reservation covered.
    #[serde(rename = "operational.overrun")]
    Overrun,
    /// The request log lost rows.
    #[serde(rename = "operational.log_rows_dropped")]
    LogRowsDropped,
    /// A provider's error rate over a window passed the rule's bound.
    #[serde(rename = "operational.provider_errors")]
    ProviderErrors,
    /// Cluster mode: Redis could not be reached (strict budgets fail closed
    /// once this node's leases are used up).
    #[serde(rename = "operational.cluster_unavailable")]
    ClusterUnavailable,
    /// Cluster mode: a budget's hash in Redis was found gone back in time
    /// (restarted empty or from an old snapshot, or flushed) and repaired.
    #[serde(rename = "operational.cluster_drift")]
    ClusterDrift,
    /// A channel test sent from the admin API.
    #[serde(rename = "alert.test")]
    Test,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ThresholdCrossed => "budget.threshold_crossed",
            AlertKind::SoftLimitCrossed => "budget.soft_limit_crossed",
            AlertKind::Exhausted => "budget.exhausted",
            AlertKind::Recovered => "budget.recovered",
            AlertKind::Forecast => "budget.forecast",
            AlertKind::Anomaly => "spend.anomaly",
            AlertKind::Report => "spend.report",
            AlertKind::UnpricedModel => "operational.unpriced_model",
            AlertKind::Overrun => "operational.overrun",
            AlertKind::LogRowsDropped => "operational.log_rows_dropped",
            AlertKind::ProviderErrors => "operational.provider_errors",
            AlertKind::ClusterUnavailable => "operational.cluster_unavailable",
            AlertKind::ClusterDrift => "operational.cluster_drift",
            AlertKind::Test => "alert.test",
        }
    }
}

/// How urgent: PagerDuty's severity, the colour of a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

/// The budget-bearing entity an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityRef {
    /// "customer" | "team" | "key" | "provider" | "model" | "tag" |
    /// "key_model" | "team_model" | "customer_model".
    pub kind: String,
    pub name: String,
}

/// The `data` of a budget alert. Amounts are exact decimal USD strings, as
/// the spend API writes them; times are RFC 3339 UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetData {
    pub entity: EntityRef,
    /// The rules that asked for this alert, by name.
    pub rules: Vec<String>,
    /// The threshold crossed (threshold alerts), or recovered from.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub threshold_percent: Option<u8>,
    /// For a recovery: the alert type that no longer holds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub recovered: Option<AlertKind>,
    /// Why a recovery happened: "new_period" | "reset" | "top_up" |
    /// "limit_raised" | "forecast_recovered".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    pub spent_usd: String,
    /// `None` for an entity without a limit.
    pub limit_usd: Option<String>,
    pub remaining_usd: Option<String>,
    pub soft_limit_usd: Option<String>,
    /// "strict" | "soft".
    pub mode: String,
    pub period_start: String,
    /// `None` for a prepaid budget (it never resets).
    pub reset_at: Option<String>,
    /// Forecast alerts: when the budget runs out at the current burn rate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub projected_exhaustion_at: Option<String>,
    /// Forecast alerts: the burn rates the projection used, USD per hour
    /// (the last hour's and the last day's).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub burn_rate_usd_per_hour: Option<BurnRates>,
    /// Anomaly alerts: the last hour against its baseline.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub anomaly: Option<AnomalyData>,
}

/// The numbers of a spend anomaly: the last 60 minutes' spend against the
/// mean spend of the same hour of the day over the trailing days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnomalyData {
    pub last_hour_usd: String,
    pub baseline_usd: String,
    /// Days the baseline averages.
    pub baseline_days: u32,
    /// The rule's factor: the alert fires when the last hour exceeds the
    /// baseline times this.
    pub factor: String,
}

/// One line of a report's top list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportLine {
    pub name: String,
    pub spend_usd: String,
    pub requests: u64,
}

/// A daily or weekly spend report for one customer or team (or the whole
/// gateway). Totals are exact sums of the request log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportData {
    /// The customer or team (kind "gateway" for everything).
    pub scope: EntityRef,
    /// "daily" | "weekly".
    pub period: String,
    /// RFC 3339, inclusive.
    pub from: String,
    /// RFC 3339, exclusive.
    pub to: String,
    pub total_usd: String,
    pub requests: u64,
    pub top_keys: Vec<ReportLine>,
    pub top_models: Vec<ReportLine>,
    pub top_tags: Vec<ReportLine>,
    pub rules: Vec<String>,
}

/// An operational alert: something about the gateway, not a budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationalData {
    /// What it is about: a model, a provider, "request_log", a budget's entity.
    pub subject: String,
    /// How many times it happened in the window.
    pub count: u64,
    /// The window, seconds.
    pub window_s: u64,
    /// One line for people.
    pub detail: String,
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurnRates {
    pub last_hour: String,
    pub last_day: String,
}

/// What an alert carries, by family. (Alerts are rare and never on a request's
/// path: the size difference between the families does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AlertData {
    Budget(BudgetData),
    Report(ReportData),
    Operational(OperationalData),
    /// A channel test: just a message.
    Test {
        message: String,
    },
}

/// One delivery an alert asks for: a channel, and the rule that routed it
/// there (the first one, when several rules name the same channel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub channel: String,
    pub rule: String,
    /// PagerDuty's `dedup_key`: one incident per entity, period and rule, so
    /// the thresholds of one period update one incident and a recovery
    /// resolves it.
    pub dedup_key: String,
}

/// One alert, as the outbox stores it and channels render it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// `alrt_` and 32 hex digits, derived from what the alert is about (entity,
    /// period, epoch, type, threshold), so one crossing always has one id.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: AlertKind,
    /// When it was emitted, unix ms (the ledger's clock).
    pub timestamp_ms: i64,
    pub severity: Severity,
    /// One line for people: what happened, to whom.
    pub summary: String,
    pub data: AlertData,
    /// Where it goes; empty: nowhere (recorded only).
    pub routes: Vec<Route>,
    /// What the evaluator needs to rebuild its state from the outbox after a
    /// restart; not part of any payload. `None` for tests of a channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<AlertKey>,
}

/// The fact an alert records, for the evaluator: the entity, its period
/// (epoch), the arming generation (the journal position of the last re-arm
/// in the epoch, 0 before any) and what fired or recovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertKey {
    pub entity: u32,
    pub epoch: u64,
    /// The start of the epoch's period, unix ms.
    pub period_start_ms: i64,
    pub generation: u64,
    pub fact: KeyFact,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyFact {
    Threshold(u16),
    SoftLimit,
    Exhausted,
    Forecast,
    /// The epoch ended (a new period or a reset) with something firing.
    EpochEnded,
    /// A top-up or a raised limit re-armed what no longer holds; the
    /// generation of this key is the new one, and `carried` what still holds
    /// (fired in the old generation, still fired in the new one).
    Rearmed {
        carried: Vec<KeyFact>,
    },
    /// The forecast no longer projects exhaustion before the reset.
    ForecastCleared,
    /// A spend anomaly in the hour starting `hour` × 3,600,000 ms (one per
    /// hour at most).
    Anomaly {
        hour: i64,
    },
}

impl Alert {
    /// The generic webhook's body: `{"id","type","timestamp","data"}`.
    pub fn webhook_body(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "type": self.kind.as_str(),
            "timestamp": format_rfc3339_ms(self.timestamp_ms),
            "data": self.data,
        })
    }

    /// The webhook body as bytes (what is signed and sent).
    pub fn webhook_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.webhook_body()).unwrap_or_default()
    }

    /// A short title: "Budget 80% used: key demo".
    pub fn title(&self) -> String {
        match &self.data {
            AlertData::Test { .. } => "bursar test alert".to_string(),
            AlertData::Report(r) => format!(
                "{} spend report: {} {}: ${}",
                if r.period == "weekly" {
                    "Weekly"
                } else {
                    "Daily"
                },
                r.scope.kind,
                r.scope.name,
                r.total_usd
            ),
            AlertData::Operational(o) => match self.kind {
                AlertKind::UnpricedModel => format!("Unpriced model seen: {}", o.subject),
                AlertKind::Overrun => format!("Strict budget overrun: {}", o.subject),
                AlertKind::LogRowsDropped => "Request log rows dropped".to_string(),
                AlertKind::ProviderErrors => format!("Provider errors: {}", o.subject),
                AlertKind::ClusterUnavailable => "Cluster: Redis unreachable".to_string(),
                AlertKind::ClusterDrift => "Cluster: budget totals repaired".to_string(),
                _ => format!("bursar: {}", o.subject),
            },
            AlertData::Budget(b) => {
                let who = format!("{} {}", b.entity.kind, b.entity.name);
                match self.kind {
                    AlertKind::ThresholdCrossed => format!(
                        "Budget {}% used: {who}",
                        b.threshold_percent.unwrap_or_default()
                    ),
                    AlertKind::SoftLimitCrossed => format!("Soft limit reached: {who}"),
                    AlertKind::Exhausted => format!("Budget exhausted: {who}"),
                    AlertKind::Recovered => format!("Budget recovered: {who}"),
                    AlertKind::Forecast => format!("Budget forecast to run out: {who}"),
                    AlertKind::Anomaly => format!("Spend anomaly: {who}"),
                    _ => format!("{}: {who}", self.kind.as_str()),
                }
            }
        }
    }

    /// Labelled values for cards and mails, in display order.
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        let b = match &self.data {
            AlertData::Budget(b) => b,
            AlertData::Report(r) => {
                let mut facts = vec![
                    ("Scope", format!("{} {}", r.scope.kind, r.scope.name)),
                    ("Period", format!("{} to {}", r.from, r.to)),
                    ("Total (USD)", r.total_usd.clone()),
                    ("Requests", r.requests.to_string()),
                ];
                let top = |lines: &[ReportLine]| {
                    lines
                        .iter()
                        .map(|l| format!("{} ${}", l.name, l.spend_usd))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                if !r.top_keys.is_empty() {
                    facts.push(("Top keys", top(&r.top_keys)));
                }
                if !r.top_models.is_empty() {
                    facts.push(("Top models", top(&r.top_models)));
                }
                if !r.top_tags.is_empty() {
                    facts.push(("Top tags", top(&r.top_tags)));
                }
                facts.push(("Alert id", self.id.clone()));
                return facts;
            }
            AlertData::Operational(o) => {
                return vec![
                    ("Subject", o.subject.clone()),
                    ("Count", o.count.to_string()),
                    ("Window", format!("{} s", o.window_s)),
                    ("Detail", o.detail.clone()),
                    ("Alert id", self.id.clone()),
                ];
            }
            AlertData::Test { .. } => return vec![("Alert id", self.id.clone())],
        };
        let mut facts = vec![
            ("Entity", format!("{} {}", b.entity.kind, b.entity.name)),
            ("Spent (USD)", b.spent_usd.clone()),
        ];
        if let Some(l) = &b.limit_usd {
            facts.push(("Limit (USD)", l.clone()));
        }
        if let Some(r) = &b.remaining_usd {
            facts.push(("Remaining (USD)", r.clone()));
        }
        if let Some(t) = b.threshold_percent {
            facts.push(("Threshold", format!("{t}%")));
        }
        if let Some(p) = &b.projected_exhaustion_at {
            facts.push(("Projected exhaustion", p.clone()));
        }
        if let Some(a) = &b.anomaly {
            facts.push(("Last hour (USD)", a.last_hour_usd.clone()));
            facts.push(("Baseline (USD)", a.baseline_usd.clone()));
        }
        facts.push(("Period start", b.period_start.clone()));
        facts.push((
            "Resets at",
            b.reset_at
                .clone()
                .unwrap_or_else(|| "never (prepaid)".into()),
        ));
        facts.push(("Rules", b.rules.join(", ")));
        facts.push(("Alert id", self.id.clone()));
        facts
    }

    /// Whether this alert ends an incident (PagerDuty `resolve`).
    pub fn resolves(&self) -> bool {
        self.kind == AlertKind::Recovered
    }
}

/// The alert id for a fact: `alrt_` + the first 128 bits of the SHA-256 of
/// its parts, so the same crossing always gets the same id.
pub fn alert_id(parts: &[&[u8]]) -> String {
    format!("alrt_{:032x}", alert_id_bits(parts))
}

/// The 128 bits [`alert_id`] writes in hex.
pub fn alert_id_bits(parts: &[&[u8]]) -> u128 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    let mut bits = [0u8; 16];
    bits.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bits)
}

/// The bits of an id [`alert_id`] made, or `None` for any other string.
pub fn parse_alert_id(id: &str) -> Option<u128> {
    let hex = id.strip_prefix("alrt_")?;
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u128::from_str_radix(hex, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = alert_id(&[b"key", b"7", b"80"]);
        assert_eq!(a, alert_id(&[b"key", b"7", b"80"]));
        assert_ne!(a, alert_id(&[b"key", b"78", b"0"]));
        assert_eq!(a.len(), 5 + 32);
        assert_eq!(
            parse_alert_id(&a),
            Some(alert_id_bits(&[b"key", b"7", b"80"]))
        );
        assert_eq!(parse_alert_id("alrt_test_1"), None);
    }

    #[test]
    fn a_budget_alert_round_trips_and_renders_its_wire_names() {
        let alert = Alert {
            id: alert_id(&[b"x"]),
            kind: AlertKind::ThresholdCrossed,
            timestamp_ms: 1_700_000_000_000,
            severity: Severity::Warning,
            summary: "s".into(),
            data: AlertData::Budget(BudgetData {
                entity: EntityRef {
                    kind: "key".into(),
                    name: "demo".into(),
                },
                rules: vec!["r".into()],
                threshold_percent: Some(80),
                recovered: None,
                reason: None,
                spent_usd: "4".into(),
                limit_usd: Some("5".into()),
                remaining_usd: Some("1".into()),
                soft_limit_usd: None,
                mode: "strict".into(),
                period_start: "2023-11-14T00:00:00Z".into(),
                reset_at: Some("2023-11-15T00:00:00Z".into()),
                projected_exhaustion_at: None,
                burn_rate_usd_per_hour: None,
                anomaly: None,
            }),
            routes: vec![],
            key: None,
        };
        let line = serde_json::to_string(&alert).unwrap();
        let back: Alert = serde_json::from_str(&line).unwrap();
        assert_eq!(back, alert);
        let body = alert.webhook_body();
        assert_eq!(body["type"], "budget.threshold_crossed");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(body["data"]["entity"]["kind"], "key");
        assert_eq!(body["data"]["threshold_percent"], 80);
        assert_eq!(alert.title(), "Budget 80% used: key demo");
    }
}
