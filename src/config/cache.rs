//! `[cache]`: the response cache's switch, its namespace (who shares
//! entries), how long an entry lives, its bounds, whether sampled
//! requests (`temperature` above 0, or unset) are cached, and the semantic
//! cache: its switch, the directory of its embeddings, its confirmation
//! and its thresholds.

use std::path::PathBuf;
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
    /// The semantic cache (default false): a prompt that says the same as
    /// a stored one, in other words, is answered with its answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semantic: Option<bool>,
    /// The directory `scripts/fetch-embeddings DIR` built (required with
    /// `semantic = true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_dir: Option<String>,
    /// The confirmation stage: "minilm" (default: the full sentence model,
    /// on a helper thread) or "off" (static table and guards alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm: Option<String>,
    /// Stage a's threshold: the static embeddings' cosine a candidate
    /// needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity_min: Option<f64>,
    /// Stage c's threshold: the confirming model's cosine a hit needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_min: Option<f64>,
    /// How long a request waits for its confirmation before it is
    /// forwarded as a miss (default "250ms").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_timeout: Option<String>,
}

/// Who shares a cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Customer,
    Team,
    Key,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub enabled: bool,
    pub namespace: Namespace,
    pub ttl: Duration,
    pub entries_max: usize,
    pub bytes_max: usize,
    pub sampled: bool,
    /// The semantic cache, when `semantic = true`.
    pub semantic: Option<SemanticConfig>,
}

/// The semantic cache's settings (`[cache] semantic = true`).
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticConfig {
    pub embedding_dir: PathBuf,
    pub confirm: Confirm,
    /// Stage a: the static embeddings' cosine a candidate needs.
    pub similarity_min: f32,
    /// Stage c: the confirming model's cosine a hit needs.
    pub confirm_min: f32,
    pub confirm_timeout: Duration,
}

/// Which confirmation a semantic candidate needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// None: the static table's cosine and the guards decide.
    Off,
    /// all-MiniLM-L6-v2, the full model, on the confirmation thread.
    MiniLm,
}

/// The default thresholds: those chosen on the tuning half of the
/// evaluation set (0.71 and 0.88 with confirmation, 0.94 without), rounded
/// up to the next 0.05 as a margin for near-misses no evaluation holds
/// (`cargo bench --bench cache_eval`, docs/benchmarks.md): no false hit on
/// either half at these settings.
pub const SIMILARITY_MIN_DEFAULT: f32 = 0.75;
pub const CONFIRM_MIN_DEFAULT: f32 = 0.90;
/// Without confirmation the static table must be far surer of itself.
pub const SIMILARITY_MIN_UNCONFIRMED_DEFAULT: f32 = 0.95;
pub const CONFIRM_TIMEOUT_DEFAULT: Duration = Duration::from_millis(250);
/// The longest a request may be held for its confirmation.
pub const CONFIRM_TIMEOUT_MAX: Duration = Duration::from_secs(5);

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
            semantic: None,
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
        semantic: semantic_config(s)?,
    })
}

fn semantic_config(s: &CacheSection) -> Result<Option<SemanticConfig>, ConfigError> {
    let on = s.semantic.unwrap_or(false);
    if !on {
        // The other semantic keys mean nothing without it: say so rather
        // than ignore them.
        let stray = [
            ("cache.embedding_dir", s.embedding_dir.is_some()),
            ("cache.confirm", s.confirm.is_some()),
            ("cache.similarity_min", s.similarity_min.is_some()),
            ("cache.confirm_min", s.confirm_min.is_some()),
            ("cache.confirm_timeout", s.confirm_timeout.is_some()),
        ];
        if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(err(*key, "needs `semantic = true`".to_string()));
        }
        return Ok(None);
    }
    let embedding_dir = s
        .embedding_dir
        .as_deref()
        .filter(|d| !d.trim().is_empty())
        .ok_or_else(|| {
            err(
                "cache.embedding_dir",
                "required with `semantic = true`: the directory `scripts/fetch-embeddings DIR` built"
                    .to_string(),
            )
        })?;
    let confirm = match s.confirm.as_deref() {
        None | Some("minilm") => Confirm::MiniLm,
        Some("off") => Confirm::Off,
        Some(other) => {
            return Err(err(
                "cache.confirm",
                format!("{other:?}: use \"minilm\" or \"off\""),
            ))
        }
    };
    let threshold = |key: &str, v: Option<f64>, default: f32| match v {
        None => Ok(default),
        Some(x) if (0.0..=1.0).contains(&x) => Ok(x as f32),
        Some(x) => Err(err(key, format!("{x}: a cosine from 0 to 1"))),
    };
    let similarity_default = match confirm {
        Confirm::MiniLm => SIMILARITY_MIN_DEFAULT,
        Confirm::Off => SIMILARITY_MIN_UNCONFIRMED_DEFAULT,
    };
    let similarity_min = threshold("cache.similarity_min", s.similarity_min, similarity_default)?;
    let confirm_min = threshold("cache.confirm_min", s.confirm_min, CONFIRM_MIN_DEFAULT)?;
    if confirm == Confirm::Off && s.confirm_min.is_some() {
        return Err(err(
            "cache.confirm_min",
            "means nothing with `confirm = \"off\"`".to_string(),
        ));
    }
    let confirm_timeout = match &s.confirm_timeout {
        None => CONFIRM_TIMEOUT_DEFAULT,
        Some(t) => parse_duration(t)
            .filter(|d| !d.is_zero() && *d <= CONFIRM_TIMEOUT_MAX)
            .ok_or_else(|| {
                err(
                    "cache.confirm_timeout",
                    format!("{t:?}: a duration up to 5s"),
                )
            })?,
    };
    Ok(Some(SemanticConfig {
        embedding_dir: PathBuf::from(embedding_dir),
        confirm,
        similarity_min,
        confirm_min,
        confirm_timeout,
    }))
}
