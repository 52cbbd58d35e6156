//! Alert channels. INTERFACE STUB: replaced by the channels work.

use std::time::Duration;

use super::event::{Alert, Route};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Webhook,
    Slack,
    Teams,
    PagerDuty,
    Discord,
    Email,
}

/// A validated channel.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: ChannelKind,
    /// Most deliveries a minute to this channel.
    pub rate_limit_per_minute: u32,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Worth another try (a timeout, a 5xx, a 429), after at least `after`
    /// when the receiver said so (Retry-After).
    Retry {
        after: Option<Duration>,
    },
    /// Trying again cannot help (a 4xx other than 408/429, a refused destination).
    Permanent,
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    pub outcome: Outcome,
}

/// Sends `alert` to `channel` once, blocking (bounded by the channel's timeouts).
pub fn deliver(_channel: &ChannelConfig, _alert: &Alert, _route: &Route) -> Attempt {
    Attempt {
        status: None,
        latency_ms: 0,
        error: Some("channels are not built yet".into()),
        outcome: Outcome::Permanent,
    }
}

/// TEMPORARY STUB (replaced by the channels work).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct ChannelSection {
    pub name: String,
    pub kind: String,
}

/// TEMPORARY STUB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelError {
    pub field: String,
    pub message: String,
}

impl ChannelSection {
    pub fn validate(&self) -> Result<ChannelConfig, ChannelError> {
        Err(ChannelError {
            field: "kind".into(),
            message: "stub".into(),
        })
    }
}
