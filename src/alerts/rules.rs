//! Alert rules: which entities an alert is evaluated for, at which
//! thresholds, and which channels hear of it.
//!
//! A rule's scope is a kind of entity (`"customers"`, `"teams"`, `"keys"`,
//! `"providers"`, `"models"`), `"all"`, or one named entity
//! (`"keys/<name>"`, `"teams/<name>"`, ...). The rules are compiled with the
//! entity registry's names into an [`AlertPlan`]: per entity, the union of
//! what its rules arm and, per fact, where it goes. The ledger thread's
//! evaluator reads the plan; a change of rules or entities publishes a new one.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ledger::messages::ENTITIES_MAX;
use crate::ledger::{EntityId, EntityKind};

use super::event::Route;

/// The thresholds a rule arms when it names none: percent of the limit.
pub const THRESHOLDS_DEFAULT: [u16; 4] = [50, 80, 95, 100];
/// The highest threshold a rule may name, percent (soft budgets overshoot).
pub const THRESHOLD_PERCENT_MAX: u16 = 1000;
/// Most thresholds one rule may name.
pub const THRESHOLDS_PER_RULE_MAX: usize = 16;
/// Most rules.
pub const RULES_MAX: usize = 256;
/// Most channels one rule may name.
pub const CHANNELS_PER_RULE_MAX: usize = 16;

/// `[[alerts.rules]]` as written in the file, and the admin API's body.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub name: String,
    /// `customers` | `teams` | `keys` | `providers` | `models` | `all` |
    /// `<kind>/<name>` (`keys/<name>`, `teams/<name>`, ...).
    pub scope: String,
    /// Percent of the limit; default 50, 80, 95, 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<u16>>,
    /// Alert when spend reaches the budget's soft limit (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_limit: Option<bool>,
    /// Alert when the budget refuses its first request (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exhausted: Option<bool>,
    /// Alert when, at the last hour's and the last day's burn rate, the budget
    /// runs out before it resets (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<bool>,
    /// Send `budget.recovered` when what fired no longer holds (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<bool>,
    /// Alert when the last hour's spend exceeds `anomaly_factor` times the
    /// mean of the same hour over the trailing days (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<bool>,
    /// The anomaly factor, a decimal (default "3").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly_factor: Option<String>,
    /// Spend reports for each covered customer or team (or the gateway, with
    /// scope "all"): `["daily"]`, `["weekly"]` or both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reports: Option<Vec<String>>,
    /// Operational alerts: unpriced models, strict overruns, dropped log rows,
    /// provider error rates (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operational: Option<bool>,
    /// The provider error rate, percent of responses over
    /// [`PROVIDER_ERROR_WINDOW_S`], that raises `operational.provider_errors`
    /// (default 25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_error_rate_percent: Option<u8>,
    pub channels: Vec<String>,
}

/// A report's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportPeriod {
    /// The UTC day, sent after it ends.
    Daily,
    /// The ISO week (Monday to Monday, UTC), sent after it ends.
    Weekly,
}

impl ReportPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportPeriod::Daily => "daily",
            ReportPeriod::Weekly => "weekly",
        }
    }
}

/// The anomaly factor when a rule names none.
pub const ANOMALY_FACTOR_DEFAULT_TENTHS: u32 = 30;
/// The provider error rate when a rule names none, percent.
pub const PROVIDER_ERROR_RATE_PERCENT_DEFAULT: u8 = 25;
/// The window a provider's error rate is measured over, seconds.
pub const PROVIDER_ERROR_WINDOW_S: u64 = 300;

/// Which entities a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Kind(EntityKind),
    Entity(EntityKind, String),
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        let kind = |k: &str| -> Option<EntityKind> {
            let singular = k.strip_suffix('s').unwrap_or(k);
            EntityKind::ALL
                .into_iter()
                .find(|kind| kind.as_str() == singular)
        };
        if s == "all" {
            return Some(Scope::All);
        }
        match s.split_once('/') {
            None => {
                // Only the plural names a kind ("keys"), so "key" is refused.
                s.ends_with('s').then_some(())?;
                kind(s).map(Scope::Kind)
            }
            Some((k, name)) if !name.is_empty() => Some(Scope::Entity(kind(k)?, name.to_string())),
            Some(_) => None,
        }
    }

    pub fn covers(&self, kind: EntityKind, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Kind(k) => *k == kind,
            Scope::Entity(k, n) => *k == kind && n == name,
        }
    }
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub scope: Scope,
    /// Sorted, distinct, 1..=[`THRESHOLD_PERCENT_MAX`].
    pub thresholds: Vec<u16>,
    pub soft_limit: bool,
    pub exhausted: bool,
    pub forecast: bool,
    pub recovery: bool,
    pub anomaly: bool,
    /// Tenths: 30 is a factor of 3.0.
    pub anomaly_factor_tenths: u32,
    pub reports: Vec<ReportPeriod>,
    pub operational: bool,
    pub provider_error_rate_percent: u8,
    pub channels: Vec<String>,
    /// What was written, for the admin API and persistence.
    pub section: RuleSection,
}

/// Why a rule is refused: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    pub field: String,
    pub message: String,
}

fn rule_err(field: &str, message: impl Into<String>) -> RuleError {
    RuleError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// A name for a rule or channel: 1..=64 of `A-Z a-z 0-9 _ . -`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl RuleSection {
    /// Checks the rule on its own; `channels` are the channel names that
    /// exist (every name the rule gives must be one).
    pub fn validate(&self, channels: &[&str]) -> Result<Rule, RuleError> {
        if !valid_name(&self.name) {
            return Err(rule_err(
                "name",
                "must be 1 to 64 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        let scope = Scope::parse(&self.scope).ok_or_else(|| {
            rule_err(
                "scope",
                format!(
                    "{:?} is not a scope: use customers, teams, keys, providers, models, all, \
                     or <kind>/<name> such as keys/my-key",
                    self.scope
                ),
            )
        })?;
        let mut thresholds = self
            .thresholds
            .clone()
            .unwrap_or_else(|| THRESHOLDS_DEFAULT.to_vec());
        if thresholds.len() > THRESHOLDS_PER_RULE_MAX {
            return Err(rule_err(
                "thresholds",
                format!("at most {THRESHOLDS_PER_RULE_MAX}"),
            ));
        }
        if let Some(t) = thresholds
            .iter()
            .find(|t| **t == 0 || **t > THRESHOLD_PERCENT_MAX)
        {
            return Err(rule_err(
                "thresholds",
                format!("{t} is not a percentage in 1..={THRESHOLD_PERCENT_MAX}"),
            ));
        }
        thresholds.sort_unstable();
        thresholds.dedup();
        if self.channels.is_empty() {
            return Err(rule_err("channels", "name at least one channel"));
        }
        if self.channels.len() > CHANNELS_PER_RULE_MAX {
            return Err(rule_err(
                "channels",
                format!("at most {CHANNELS_PER_RULE_MAX}"),
            ));
        }
        if let Some(c) = self
            .channels
            .iter()
            .find(|c| !channels.contains(&c.as_str()))
        {
            return Err(rule_err(
                "channels",
                format!("{c:?} is not a configured channel"),
            ));
        }
        let mut names = self.channels.clone();
        names.dedup();
        let anomaly_factor_tenths = match &self.anomaly_factor {
            None => ANOMALY_FACTOR_DEFAULT_TENTHS,
            Some(f) => parse_tenths(f)
                .filter(|t| (11..=1000).contains(t))
                .ok_or_else(|| {
                    rule_err(
                        "anomaly_factor",
                        format!("{f:?} is not a factor between 1.1 and 100 (one decimal)"),
                    )
                })?,
        };
        let mut reports = Vec::new();
        for r in self.reports.iter().flatten() {
            let period = match r.as_str() {
                "daily" => ReportPeriod::Daily,
                "weekly" => ReportPeriod::Weekly,
                other => {
                    return Err(rule_err(
                        "reports",
                        format!("{other:?} is not a report period: use \"daily\" or \"weekly\""),
                    ))
                }
            };
            if !reports.contains(&period) {
                reports.push(period);
            }
        }
        if !reports.is_empty()
            && !matches!(
                scope,
                Scope::All
                    | Scope::Kind(EntityKind::Customer | EntityKind::Team)
                    | Scope::Entity(EntityKind::Customer | EntityKind::Team, _)
            )
        {
            return Err(rule_err(
                "reports",
                "reports are per customer or team: use a scope of customers, teams, \
                 customers/<name>, teams/<name> or all",
            ));
        }
        let provider_error_rate_percent = self
            .provider_error_rate_percent
            .unwrap_or(PROVIDER_ERROR_RATE_PERCENT_DEFAULT);
        if !(1..=100).contains(&provider_error_rate_percent) {
            return Err(rule_err(
                "provider_error_rate_percent",
                "must be a percentage in 1..=100",
            ));
        }
        Ok(Rule {
            name: self.name.clone(),
            scope,
            thresholds,
            soft_limit: self.soft_limit.unwrap_or(true),
            exhausted: self.exhausted.unwrap_or(true),
            forecast: self.forecast.unwrap_or(false),
            recovery: self.recovery.unwrap_or(true),
            anomaly: self.anomaly.unwrap_or(false),
            anomaly_factor_tenths,
            reports,
            operational: self.operational.unwrap_or(false),
            provider_error_rate_percent,
            channels: names,
            section: self.clone(),
        })
    }
}

/// What an entity's rules ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Armed {
    /// Rule indexes (into [`AlertPlan::rules`]) covering the entity.
    pub rules: Vec<u16>,
    /// The union of their thresholds, sorted.
    pub thresholds: Vec<u16>,
    pub soft_limit: bool,
    pub exhausted: bool,
    pub forecast: bool,
    pub anomaly: bool,
    /// The lowest factor of the covering anomaly rules, tenths.
    pub anomaly_factor_tenths: u32,
}

/// A table by entity id. Ids are dense (the registry numbers entities 0, 1,
/// 2, ... and keeps them below [`ENTITIES_MAX`]), so a lookup is an index,
/// not a hash: the ledger thread does several per charge.
#[derive(Debug, Clone)]
pub struct ById<T> {
    slots: Vec<Option<T>>,
    len: usize,
}

impl<T> Default for ById<T> {
    fn default() -> ById<T> {
        ById {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<T> ById<T> {
    pub fn get(&self, id: EntityId) -> Option<&T> {
        self.slots.get(id.0 as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, id: EntityId) -> Option<&mut T> {
        self.slots.get_mut(id.0 as usize)?.as_mut()
    }

    pub fn contains(&self, id: EntityId) -> bool {
        self.get(id).is_some()
    }

    /// Stores `v` at `id`; an id at or past [`ENTITIES_MAX`] (no entity has
    /// one) is not stored.
    pub fn insert(&mut self, id: EntityId, v: T) {
        if id.0 >= ENTITIES_MAX {
            return;
        }
        let i = id.0 as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace(v).is_none() {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, id: EntityId) -> Option<T> {
        let v = self.slots.get_mut(id.0 as usize)?.take();
        if v.is_some() {
            self.len -= 1;
        }
        v
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// In id order.
    pub fn iter(&self) -> impl Iterator<Item = (EntityId, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (EntityId(i as u32), v)))
    }
}

/// The compiled rules, for the evaluator: per entity, what is armed and its name.
#[derive(Debug, Default)]
pub struct AlertPlan {
    pub rules: Vec<Rule>,
    entities: ById<(EntityKind, Arc<str>, Arc<Armed>)>,
}

/// What a route is for, to pick the rules that want it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    Threshold(u16),
    SoftLimit,
    Exhausted,
    Forecast,
    Anomaly,
    Recovered,
}

impl AlertPlan {
    /// Compiles `rules` for every entity the registry names.
    pub fn new<'a>(
        rules: Vec<Rule>,
        entities: impl IntoIterator<Item = (EntityId, EntityKind, &'a str)>,
    ) -> AlertPlan {
        let mut by_entity = ById::default();
        // Entities whose rules are the same share one `Armed`.
        let mut shared: HashMap<Vec<u16>, Arc<Armed>> = HashMap::new();
        for (id, kind, name) in entities {
            let covering: Vec<u16> = rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.scope.covers(kind, name))
                .map(|(i, _)| i as u16)
                .collect();
            if covering.is_empty() {
                continue;
            }
            let armed = shared
                .entry(covering.clone())
                .or_insert_with(|| {
                    let mut a = Armed {
                        rules: covering.clone(),
                        ..Armed::default()
                    };
                    for &i in &covering {
                        let r = &rules[usize::from(i)];
                        a.thresholds.extend_from_slice(&r.thresholds);
                        a.soft_limit |= r.soft_limit;
                        a.exhausted |= r.exhausted;
                        a.forecast |= r.forecast;
                        if r.anomaly {
                            a.anomaly_factor_tenths = if a.anomaly {
                                a.anomaly_factor_tenths.min(r.anomaly_factor_tenths)
                            } else {
                                r.anomaly_factor_tenths
                            };
                            a.anomaly = true;
                        }
                    }
                    a.thresholds.sort_unstable();
                    a.thresholds.dedup();
                    Arc::new(a)
                })
                .clone();
            by_entity.insert(id, (kind, Arc::<str>::from(name), armed));
        }
        AlertPlan {
            rules,
            entities: by_entity,
        }
    }

    /// What is armed for the entity; `None`: no rule covers it.
    pub fn armed(&self, id: EntityId) -> Option<&Armed> {
        self.entities.get(id).map(|(_, _, a)| &**a)
    }

    pub fn name(&self, id: EntityId) -> Option<(EntityKind, &str)> {
        self.entities.get(id).map(|(k, n, _)| (*k, &**n))
    }

    /// What is armed for the entity, with its name: one lookup.
    pub fn entry(&self, id: EntityId) -> Option<(&Armed, EntityKind, &str)> {
        self.entities.get(id).map(|(k, n, a)| (&**a, *k, &**n))
    }

    /// Every entity a rule covers, in id order.
    pub fn entity_ids(&self) -> Vec<EntityId> {
        self.entities.iter().map(|(id, _)| id).collect()
    }

    /// Whether any rule covers anything (the evaluator's fast exit).
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// The rules of `armed` that want `fact`, by name.
    pub fn rules_for(&self, armed: &Armed, fact: Fact) -> Vec<String> {
        armed
            .rules
            .iter()
            .map(|&i| &self.rules[usize::from(i)])
            .filter(|r| wants(r, fact))
            .map(|r| r.name.clone())
            .collect()
    }

    /// Where an alert about `fact` goes: each channel once, routed by the first
    /// rule (in file order) that names it. `period_key` makes PagerDuty's
    /// dedup key one incident per entity, period and rule.
    pub fn routes(&self, armed: &Armed, fact: Fact, entity: &str, period_key: &str) -> Vec<Route> {
        let rules = armed
            .rules
            .iter()
            .map(|&i| &self.rules[usize::from(i)])
            .filter(|r| wants(r, fact));
        routes(rules, |r| {
            format!("bursar/{entity}/{period_key}/{}", r.name)
        })
    }
}

/// Where an alert goes: each channel the rules name, once, routed by the
/// first rule (in the order given) that names it; `dedup_key` per rule.
pub fn routes<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
    dedup_key: impl Fn(&Rule) -> String,
) -> Vec<Route> {
    let mut out: Vec<Route> = Vec::new();
    for r in rules {
        for c in &r.channels {
            if out.iter().any(|route| &route.channel == c) {
                continue;
            }
            out.push(Route {
                channel: c.clone(),
                rule: r.name.clone(),
                dedup_key: dedup_key(r),
            });
        }
    }
    out
}

/// "3" or "2.5" in tenths (30, 25).
fn parse_tenths(s: &str) -> Option<u32> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
    if whole.is_empty() || frac.len() != 1 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    whole
        .parse::<u32>()
        .ok()?
        .checked_mul(10)?
        .checked_add(frac.parse().ok()?)
}

fn wants(r: &Rule, fact: Fact) -> bool {
    match fact {
        Fact::Threshold(t) => r.thresholds.contains(&t),
        Fact::SoftLimit => r.soft_limit,
        Fact::Exhausted => r.exhausted,
        Fact::Forecast => r.forecast,
        Fact::Anomaly => r.anomaly,
        Fact::Recovered => r.recovery,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(
        name: &str,
        scope: &str,
        thresholds: Option<Vec<u16>>,
        channels: &[&str],
    ) -> RuleSection {
        RuleSection {
            name: name.into(),
            scope: scope.into(),
            thresholds,
            soft_limit: None,
            exhausted: None,
            forecast: None,
            recovery: None,
            anomaly: None,
            anomaly_factor: None,
            reports: None,
            operational: None,
            provider_error_rate_percent: None,
            channels: channels.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn scopes_parse_kinds_names_and_refuse_the_rest() {
        assert_eq!(Scope::parse("keys"), Some(Scope::Kind(EntityKind::Key)));
        assert_eq!(Scope::parse("all"), Some(Scope::All));
        assert_eq!(
            Scope::parse("teams/search"),
            Some(Scope::Entity(EntityKind::Team, "search".into()))
        );
        // The kinds beside the organisation chart, names with '/' and '='.
        assert_eq!(
            Scope::parse("key_models/search-prod/gpt-4o"),
            Some(Scope::Entity(
                EntityKind::KeyModel,
                "search-prod/gpt-4o".into()
            ))
        );
        assert_eq!(
            Scope::parse("models/meta-llama/Llama-3"),
            Some(Scope::Entity(
                EntityKind::Model,
                "meta-llama/Llama-3".into()
            ))
        );
        assert_eq!(
            Scope::parse("tags/feature=search"),
            Some(Scope::Entity(EntityKind::Tag, "feature=search".into()))
        );
        assert_eq!(Scope::parse("tags"), Some(Scope::Kind(EntityKind::Tag)));
        assert_eq!(
            Scope::parse("customer_models"),
            Some(Scope::Kind(EntityKind::CustomerModel))
        );
        assert_eq!(
            Scope::parse("team_models"),
            Some(Scope::Kind(EntityKind::TeamModel))
        );
        for bad in ["key", "keyz", "keys/", "/x", "wallets/x", ""] {
            assert_eq!(Scope::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let ok = section("r", "keys", None, &["hook"]);
        let rule = ok.validate(&["hook"]).unwrap();
        assert_eq!(rule.thresholds, THRESHOLDS_DEFAULT);
        assert!(rule.soft_limit && rule.exhausted && !rule.forecast && rule.recovery);
        let e = section("r", "keys", Some(vec![0]), &["hook"])
            .validate(&["hook"])
            .unwrap_err();
        assert_eq!(e.field, "thresholds");
        let e = section("r", "keys", None, &["nope"])
            .validate(&["hook"])
            .unwrap_err();
        assert_eq!(e.field, "channels");
        let e = section("r", "key", None, &["hook"])
            .validate(&["hook"])
            .unwrap_err();
        assert_eq!(e.field, "scope");
        let e = section("r r", "keys", None, &["hook"])
            .validate(&["hook"])
            .unwrap_err();
        assert_eq!(e.field, "name");
    }

    #[test]
    fn the_plan_unions_rules_and_routes_each_channel_once() {
        let rules = vec![
            section("a", "keys", Some(vec![80, 50]), &["x", "y"])
                .validate(&["x", "y"])
                .unwrap(),
            section("b", "keys/k1", Some(vec![80, 100]), &["y"])
                .validate(&["x", "y"])
                .unwrap(),
        ];
        let plan = AlertPlan::new(
            rules,
            [
                (EntityId(1), EntityKind::Key, "k1"),
                (EntityId(2), EntityKind::Key, "k2"),
                (EntityId(3), EntityKind::Team, "t"),
            ],
        );
        let k1 = plan.armed(EntityId(1)).unwrap();
        assert_eq!(k1.thresholds, vec![50, 80, 100]);
        assert_eq!(plan.armed(EntityId(2)).unwrap().thresholds, vec![50, 80]);
        assert!(plan.armed(EntityId(3)).is_none());
        let routes = plan.routes(k1, Fact::Threshold(80), "key/k1", "p");
        assert_eq!(
            routes
                .iter()
                .map(|r| (&*r.channel, &*r.rule))
                .collect::<Vec<_>>(),
            vec![("x", "a"), ("y", "a")]
        );
        let routes = plan.routes(k1, Fact::Threshold(100), "key/k1", "p");
        assert_eq!(
            routes
                .iter()
                .map(|r| (&*r.channel, &*r.rule))
                .collect::<Vec<_>>(),
            vec![("y", "b")]
        );
        assert_eq!(routes[0].dedup_key, "bursar/key/k1/p/b");
        assert_eq!(
            plan.rules_for(k1, Fact::Threshold(50)),
            vec!["a".to_string()]
        );
    }
}
