//! The TOML file, mirrored as serde structs. Nothing here is validated; see
//! `config::validate` for the conversion into the types the gateway runs on.

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize, Clone, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub providers: Vec<ProviderSection>,
    #[serde(default)]
    pub virtual_keys: Vec<KeySection>,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub customers: Vec<CustomerSection>,
    #[serde(default)]
    pub teams: Vec<TeamSection>,
    #[serde(default)]
    pub prices: Vec<PriceSection>,
    #[serde(default)]
    pub pricing: PricingSection,
    #[serde(default)]
    pub ledger: LedgerSection,
    /// The request log (`sink = "sqlite" | "postgres" | "off"`).
    #[serde(default, skip_serializing)]
    pub log: super::request_log::LogSection,
    /// Alert channels and rules.
    #[serde(default, skip_serializing)]
    pub alerts: super::alerts::AlertsSection,
    /// Gateway-wide budgets, one model each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_budgets: Vec<ModelBudgetSection>,
    /// Budgets on tag values (`feature=search`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag_budgets: Vec<TagBudgetSection>,
    /// Public model names served by several targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_groups: Vec<ModelGroupSection>,
    /// The response cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<super::cache::CacheSection>,
    /// Several nodes sharing budgets through Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<super::cluster::ClusterSection>,
}

/// `[[model_groups]]`: one public model name over several targets.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelGroupSection {
    pub name: String,
    /// "weighted" (default), "least-busy", "lowest-latency" or "cheapest".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    pub targets: Vec<GroupTargetSection>,
    /// Attempts after the first, per request (default: one per other target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// How long a failing target is skipped (default "30s").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<String>,
    /// Consecutive failures that start a cooldown (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures_before_cooldown: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupTargetSection {
    pub provider: String,
    /// The model name sent to the provider (default: the group's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Share of traffic under "weighted" (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// `[[model_budgets]]`: a gateway-wide budget on one model.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelBudgetSection {
    /// The model's name as requests give it (exact; no patterns).
    pub model: String,
    pub budget: BudgetSection,
}

/// `[[tag_budgets]]`: a budget on one tag value.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TagBudgetSection {
    /// `key=value`, as the request log records a tag.
    pub tag: String,
    pub budget: BudgetSection,
}

/// An entry of a customer's, team's or key's `model_budgets`: the model and
/// its budget's members, side by side (`{ model = "gpt-4o", limit_usd =
/// "20", reset = "1d" }`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelBudgetEntry {
    pub model: String,
    pub limit_usd: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub calendar_aligned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_limit_usd: Option<String>,
}

impl ModelBudgetEntry {
    /// The budget part, as a [`BudgetSection`].
    pub fn budget(&self) -> BudgetSection {
        BudgetSection {
            limit_usd: self.limit_usd.clone(),
            reset: self.reset.clone(),
            calendar_aligned: self.calendar_aligned,
            mode: self.mode.clone(),
            soft_limit_usd: self.soft_limit_usd.clone(),
        }
    }
}

/// An entry of a customer's, team's or key's `model_rate_limits`: the
/// model and its limits, side by side.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelRateLimitEntry {
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u32>,
}

impl ModelRateLimitEntry {
    /// The limits part, as a [`RateLimitSection`].
    pub fn rate_limit(&self) -> RateLimitSection {
        RateLimitSection {
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            concurrent: self.concurrent,
        }
    }
}

/// The admin API's bearer token.
#[derive(Debug, Default, Deserialize, Clone, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// A budget as written in the file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    /// USD as a decimal string, e.g. "12.50".
    pub limit_usd: String,
    /// "1m" "1h" "1d" "1w" "1M" "1Q" "1Y"; absent: prepaid (no reset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<String>,
    #[serde(default)]
    pub calendar_aligned: bool,
    /// "strict" (default) or "soft".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Spend at which alerts fire, USD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_limit_usd: Option<String>,
}

/// Rate limits of a key or team.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u32>,
}

#[derive(Debug, Deserialize, Clone, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerSection {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_budgets: Vec<ModelBudgetEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_rate_limits: Vec<ModelRateLimitEntry>,
    /// Opts out of the response cache (`false`) or in (`true`) whatever
    /// `[cache] enabled` says; the key's word wins over its team's, the
    /// team's over its customer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}

#[derive(Debug, Deserialize, Clone, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSection {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_budgets: Vec<ModelBudgetEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_rate_limits: Vec<ModelRateLimitEntry>,
    /// The cheaper model to fall back to when the budgets cannot afford the
    /// one a request asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_model: Option<String>,
    /// Fall back already while a budget has less than this left (USD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_below_usd: Option<String>,
    /// Opts out of the response cache (`false`) or in (`true`) whatever
    /// `[cache] enabled` says; the key's word wins over its team's, the
    /// team's over its customer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}

/// A price override, USD per million tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSection {
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_per_mtok_usd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_per_mtok_usd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok_usd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok_usd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_per_mtok_usd: Option<String>,
    #[serde(default)]
    pub free: bool,
    /// The model's context window in tokens: the input bound of a strict
    /// request whose body only points to its input. Default: the shipped
    /// table's for a model it lists, else `[pricing] unbounded_input_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// The model bills reasoning it does not stream (o-series, gpt-5): a
    /// stream cut before usage arrives is charged the reasoning its cap
    /// allows. Default: the shipped table's for a model it lists, else false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_reasoning: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Clone, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSection {
    /// What to do with a request for a model without a price: "refuse"
    /// (default) or "allow" (admitted uncharged, counted and logged loudly).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpriced: Option<String>,
    /// Output cap for a request that sets none, under a strict budget: the
    /// gateway reserves this many output tokens and sends the cap upstream.
    /// Default 16384.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_max_output_tokens: Option<u64>,
    /// Input tokens reserved for a request whose body refers to input it does
    /// not hold (images, files, stored conversations, server-side tools), for
    /// a model whose context window the price table does not state. Default:
    /// the largest context window in the price table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unbounded_input_tokens: Option<u64>,
    /// When a strict budget cannot afford a request's output cap but can
    /// afford a smaller one, lower it instead of refusing. Default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degrade_before_deny: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Clone, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    /// How often the journal is fsynced, e.g. "10ms".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync_interval: Option<String>,
    /// How often a snapshot is written, e.g. "60s".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Data-plane listen address, e.g. "127.0.0.1:8080".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Control-plane listen address (metrics, health; the admin API later).
    /// The string "off" disables the control plane listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// Worker threads; default: the number of available cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// "auto" (default), "io_uring" or "legacy".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_driver: Option<String>,
    /// Pin worker i to core i (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_workers: Option<bool>,
    /// io_uring submission queue entries per worker (default 1024).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uring_entries: Option<u32>,
    /// Root certificates for upstream TLS: "webpki" (default), "system" or "both".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_roots: Option<String>,
    /// How often upstream host names are resolved again, e.g. "30s".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_refresh: Option<String>,
    /// How long SIGTERM waits for in-flight requests, e.g. "15s".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_drain_timeout: Option<String>,
    /// Directory for state (journal, snapshots, request log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_bytes_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_bytes_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_header_bytes_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_body_bytes_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_connect_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_read_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_idle_per_upstream_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_per_worker_max: Option<usize>,
}

#[derive(Debug, Deserialize, Clone, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    pub name: String,
    /// "openai", "mock", "anthropic" or "azure".
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Several keys, rotated on 429 and auth errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_env: Option<Vec<String>>,
    /// `anthropic`: the `anthropic-version` header (default "2023-06-01").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anthropic_version: Option<String>,
    /// `azure`: the `api-version` query parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `azure`: model name -> deployment name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployments: Option<std::collections::BTreeMap<String, String>>,
    /// `bedrock`: the AWS region (its endpoint unless `base_url` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `bedrock`: the credentials SigV4 signs with, from the environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_secret_access_key_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_session_token_env: Option<String>,
    /// A PEM file of extra root certificates to trust for this provider's TLS
    /// (a private CA), in addition to [server].tls_roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Models this provider serves; "*" makes it the fallback for any model.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSection>,
}

#[derive(Debug, Deserialize, Clone, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeySection {
    pub name: String,
    /// The secret in plain text; hashed at load and never kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Or its SHA-256, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// Models the key may use; "*" for all (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    /// The team the key belongs to (and through it, the customer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// For a key without a team: the customer it belongs to directly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_budgets: Vec<ModelBudgetEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_rate_limits: Vec<ModelRateLimitEntry>,
    /// The cheaper model to fall back to when the budgets cannot afford the
    /// one a request asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_model: Option<String>,
    /// Fall back already while a budget has less than this left (USD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_below_usd: Option<String>,
    /// Opts out of the response cache (`false`) or in (`true`) whatever
    /// `[cache] enabled` says; the key's word wins over its team's, the
    /// team's over its customer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}
