//! The `[alerts]` section: channels and rules, validated into the types the
//! alerts run on. The section's shape is the alerts module's own
//! (`ChannelSection`, `RuleSection`), so the file, the admin API's bodies
//! and the persisted overlay are one format.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{err, parse_duration, ConfigError};
use crate::alerts::channel::{ChannelConfig, ChannelSection};
use crate::alerts::rules::{Rule, RuleSection, RULES_MAX};

/// Most channels.
pub const CHANNELS_MAX: usize = 64;
/// How long a delivery is retried by default before it is dead-lettered.
pub const RETRY_FOR_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// The longest retry window a config may ask for.
pub const RETRY_FOR_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// `[alerts]` as written.
#[derive(Debug, Default, Deserialize, Clone, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelSection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSection>,
    /// How long a delivery is retried before it is dead-lettered ("24h").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_for: Option<String>,
    /// Whether channels defined through the admin API may set
    /// `allow_private` (reach loopback and private addresses). Off by
    /// default: the admin token alone must not reach the host's network.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub api_channels_allow_private: bool,
}

/// `[alerts]`, validated.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub channels: Vec<ChannelConfig>,
    pub rules: Vec<Rule>,
    pub retry_for: Duration,
}

impl Default for AlertsConfig {
    fn default() -> AlertsConfig {
        AlertsConfig {
            channels: Vec::new(),
            rules: Vec::new(),
            retry_for: RETRY_FOR_DEFAULT,
        }
    }
}

impl AlertsConfig {
    /// Whether anything is configured (no rule: the ledger evaluates nothing).
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.rules.is_empty()
    }
}

pub fn alerts_config(section: &AlertsSection) -> Result<AlertsConfig, ConfigError> {
    if section.channels.len() > CHANNELS_MAX {
        return Err(err(
            "alerts.channels",
            format!("at most {CHANNELS_MAX} channels"),
        ));
    }
    if section.rules.len() > RULES_MAX {
        return Err(err("alerts.rules", format!("at most {RULES_MAX} rules")));
    }
    let mut channels: Vec<ChannelConfig> = Vec::with_capacity(section.channels.len());
    for (i, c) in section.channels.iter().enumerate() {
        let ch = c
            .validate()
            .map_err(|e| err(format!("alerts.channels[{i}].{}", e.field), e.message))?;
        if channels.iter().any(|other| other.name == ch.name) {
            return Err(err(
                format!("alerts.channels[{i}].name"),
                format!("{:?} is defined twice", ch.name),
            ));
        }
        channels.push(ch);
    }
    let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
    let mut rules: Vec<Rule> = Vec::with_capacity(section.rules.len());
    for (i, r) in section.rules.iter().enumerate() {
        let rule = r
            .validate(&names)
            .map_err(|e| err(format!("alerts.rules[{i}].{}", e.field), e.message))?;
        if rules.iter().any(|other| other.name == rule.name) {
            return Err(err(
                format!("alerts.rules[{i}].name"),
                format!("{:?} is defined twice", rule.name),
            ));
        }
        rules.push(rule);
    }
    let retry_for = match &section.retry_for {
        None => RETRY_FOR_DEFAULT,
        Some(text) => {
            let d = parse_duration(text).ok_or_else(|| {
                err(
                    "alerts.retry_for",
                    format!("{text:?} is not a duration (e.g. \"24h\")"),
                )
            })?;
            if d.is_zero() || d > RETRY_FOR_MAX {
                return Err(err(
                    "alerts.retry_for",
                    format!(
                        "must be more than 0 and at most {}h",
                        RETRY_FOR_MAX.as_secs() / 3600
                    ),
                ));
            }
            d
        }
    };
    Ok(AlertsConfig {
        channels,
        rules,
        retry_for,
    })
}
