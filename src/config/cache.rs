//! `[cache]`: the response cache's switch, its namespace (who shares
//! entries), how long an entry lives, its bounds, and whether sampled
//! requests (`temperature` above 0, or unset) are cached.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{err, parse_duration, ConfigError};

#[derive(Debug, Default, Deserialize, Clone, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// "customer" (default), "team" or "key": who shares entries. A key
    /// without that level uses the next one down (team, then key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// How long an entry is served (default "1h").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Bounds for the whole gateway, shared out between the workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_max: Option<usize>,
    /// Cache requests that sample (`temperature` above 0, or unset) too
    /// (default false: only `temperature = 0` and embeddings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled: Option<bool>,
}

/// Who shares a cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Customer,
    Team,
    Key,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub enabled: bool,
    pub namespace: Namespace,
    pub ttl: Duration,
    pub entries_max: usize,
    pub bytes_max: usize,
    pub sampled: bool,
}

pub const TTL_DEFAULT: Duration = Duration::from_secs(3600);
pub const ENTRIES_MAX_DEFAULT: usize = 10_000;
pub const BYTES_MAX_DEFAULT: usize = 256 << 20;
/// The ceilings: a cache is memory the gateway holds.
pub const ENTRIES_MAX_CEILING: usize = 10_000_000;
pub const BYTES_MAX_CEILING: usize = 64 << 30;

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            namespace: Namespace::Customer,
            ttl: TTL_DEFAULT,
            entries_max: ENTRIES_MAX_DEFAULT,
            bytes_max: BYTES_MAX_DEFAULT,
            sampled: false,
        }
    }
}

pub(super) fn cache_config(s: Option<&CacheSection>) -> Result<CacheConfig, ConfigError> {
    let Some(s) = s else {
        return Ok(CacheConfig::default());
    };
    let d = CacheConfig::default();
    let namespace = match s.namespace.as_deref() {
        None | Some("customer") => Namespace::Customer,
        Some("team") => Namespace::Team,
        Some("key") => Namespace::Key,
        Some(other) => {
            return Err(err(
                "cache.namespace",
                format!("{other:?}: use \"customer\", \"team\" or \"key\""),
            ))
        }
    };
    let ttl = match &s.ttl {
        None => d.ttl,
        Some(t) => parse_duration(t)
            .filter(|d| !d.is_zero() && *d <= Duration::from_secs(30 * 86_400))
            .ok_or_else(|| err("cache.ttl", format!("{t:?}: a duration up to 30 days")))?,
    };
    let entries_max = s.entries_max.unwrap_or(d.entries_max);
    if entries_max == 0 || entries_max > ENTRIES_MAX_CEILING {
        return Err(err(
            "cache.entries_max",
            format!("1 to {ENTRIES_MAX_CEILING}"),
        ));
    }
    let bytes_max = s.bytes_max.unwrap_or(d.bytes_max);
    if !(1 << 20..=BYTES_MAX_CEILING).contains(&bytes_max) {
        return Err(err(
            "cache.bytes_max",
            format!("1 MiB to {BYTES_MAX_CEILING} bytes"),
        ));
    }
    Ok(CacheConfig {
        enabled: s.enabled.unwrap_or(false),
        namespace,
        ttl,
        entries_max,
        bytes_max,
        sampled: s.sampled.unwrap_or(false),
    })
}
