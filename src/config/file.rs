//! The TOML file, mirrored as serde structs. Nothing here is validated; see
//! `config::validate` for the conversion into the types the gateway runs on.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
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
}

/// The admin API's bearer token.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub token: Option<String>,
    pub token_env: Option<String>,
}

/// A budget as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    /// USD as a decimal string, e.g. "12.50".
    pub limit_usd: String,
    /// "1m" "1h" "1d" "1w" "1M" "1Q" "1Y"; absent: prepaid (no reset).
    pub reset: Option<String>,
    #[serde(default)]
    pub calendar_aligned: bool,
    /// "strict" (default) or "soft".
    pub mode: Option<String>,
    /// Spend at which alerts fire, USD.
    pub soft_limit_usd: Option<String>,
}

/// Rate limits of a key or team.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub concurrent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerSection {
    pub name: String,
    pub budget: Option<BudgetSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSection {
    pub name: String,
    pub customer: Option<String>,
    pub budget: Option<BudgetSection>,
    pub rate_limit: Option<RateLimitSection>,
    pub allowed_models: Option<Vec<String>>,
}

/// A price override, USD per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSection {
    pub model: String,
    pub input_per_mtok_usd: Option<String>,
    pub output_per_mtok_usd: Option<String>,
    pub cached_input_per_mtok_usd: Option<String>,
    pub cache_write_per_mtok_usd: Option<String>,
    pub reasoning_per_mtok_usd: Option<String>,
    #[serde(default)]
    pub free: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSection {
    /// What to do with a request for a model without a price: "refuse"
    /// (default) or "allow" (admitted uncharged, counted and logged loudly).
    pub unpriced: Option<String>,
    /// Output cap for a request that sets none, under a strict budget: the
    /// gateway reserves this many output tokens and sends the cap upstream.
    /// Default 16384.
    pub default_max_output_tokens: Option<u64>,
    /// Input tokens reserved for a request whose body refers to input it does
    /// not hold (images, files, stored conversations, server-side tools).
    /// Default 200000 (a context window).
    pub unbounded_input_tokens: Option<u64>,
    /// When a strict budget cannot afford a request's output cap but can
    /// afford a smaller one, lower it instead of refusing. Default true.
    pub degrade_before_deny: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    /// How often the journal is fsynced, e.g. "10ms".
    pub fsync_interval: Option<String>,
    /// How often a snapshot is written, e.g. "60s".
    pub snapshot_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Data-plane listen address, e.g. "127.0.0.1:8080".
    pub listen: Option<String>,
    /// Control-plane listen address (metrics, health; the admin API later).
    /// The string "off" disables the control plane listener.
    pub admin_listen: Option<String>,
    /// Worker threads; default: the number of available cores.
    pub workers: Option<usize>,
    /// "auto" (default), "io_uring" or "legacy".
    pub io_driver: Option<String>,
    /// Pin worker i to core i (default true).
    pub pin_workers: Option<bool>,
    /// io_uring submission queue entries per worker (default 1024).
    pub uring_entries: Option<u32>,
    /// Root certificates for upstream TLS: "webpki" (default), "system" or "both".
    pub tls_roots: Option<String>,
    /// How often upstream host names are resolved again, e.g. "30s".
    pub dns_refresh: Option<String>,
    /// How long SIGTERM waits for in-flight requests, e.g. "15s".
    pub shutdown_drain_timeout: Option<String>,
    /// Directory for state (journal, snapshots, request log).
    pub state_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub header_bytes_max: Option<usize>,
    pub body_bytes_max: Option<usize>,
    pub upstream_header_bytes_max: Option<usize>,
    pub upstream_body_bytes_max: Option<usize>,
    pub request_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub upstream_connect_timeout: Option<String>,
    pub upstream_read_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_idle_per_upstream_max: Option<usize>,
    pub connections_per_worker_max: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    pub name: String,
    /// "openai" or "mock".
    pub kind: String,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub api_key_env: Option<String>,
    /// A PEM file of extra root certificates to trust for this provider's TLS
    /// (a private CA), in addition to [server].tls_roots.
    pub ca_file: Option<String>,
    /// Models this provider serves; "*" makes it the fallback for any model.
    #[serde(default)]
    pub models: Vec<String>,
    pub budget: Option<BudgetSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySection {
    pub name: String,
    /// The secret in plain text; hashed at load and never kept.
    pub key: Option<String>,
    /// Or its SHA-256, hex.
    pub key_sha256: Option<String>,
    /// Models the key may use; "*" for all (the default).
    pub allowed_models: Option<Vec<String>>,
    /// The team the key belongs to (and through it, the customer).
    pub team: Option<String>,
    /// For a key without a team: the customer it belongs to directly.
    pub customer: Option<String>,
    pub budget: Option<BudgetSection>,
    pub rate_limit: Option<RateLimitSection>,
}
