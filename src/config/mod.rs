//! Configuration: one TOML file, converted once into validated types.
//!
//! Two layers, as in monolake: [`file`] mirrors the TOML with serde; this
//! module turns it into [`Config`], with real `Duration`s, parsed addresses and
//! hashed keys, and refuses anything it cannot run on with a message that
//! names the field. Nothing downstream re-validates.

pub mod alerts;
pub mod cache;
pub mod cluster;
pub mod dimensions;
pub mod file;
pub mod groups;
pub mod providers;
pub mod request_log;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::budget::Budget;
use crate::limits::{self, Limits};
use crate::prices::{ModelEntry, PriceTable};
use file::{BudgetSection, FileConfig, KeySection, RateLimitSection};
use providers::{check_model_overlap, validate_provider};
pub use providers::{parse_base_url, WireConfig};

/// The key of the built-in default configuration's demo virtual key.
pub const DEMO_KEY: &str = "sk-bursar-demo";
/// The built-in default's admin token: the demo's dashboard
/// (`http://127.0.0.1:8081/`) and admin API answer to it. The control plane
/// listens on localhost only, and the default serves only the offline mock;
/// a real config sets its own token (`[admin] token` or `token_env`).
pub const DEMO_ADMIN_TOKEN: &str = "bursar-demo-admin";
/// The built-in default data-plane address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The built-in default control-plane address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: Limits,
    pub providers: Vec<ProviderConfig>,
    pub keys: Vec<KeyConfig>,
    pub customers: Vec<CustomerConfig>,
    pub teams: Vec<TeamConfig>,
    /// The admin API's bearer token; `None` disables the admin API.
    pub admin_token: Option<Secret>,
    pub prices: PriceTable,
    pub pricing: Pricing,
    pub ledger: LedgerConfig,
    /// The request log; `None` when `[log] sink = "off"`.
    pub log: Option<crate::reqlog::LogConfig>,
    /// Alert channels and rules (`[alerts]`).
    pub alerts: alerts::AlertsConfig,
    /// Gateway-wide budgets on one model each (`[[model_budgets]]`).
    pub model_budgets: Vec<dimensions::ModelBudget>,
    /// Budgets on tag values (`[[tag_budgets]]`).
    pub tag_budgets: Vec<dimensions::TagBudget>,
    /// Public model names served by several targets (`[[model_groups]]`).
    pub model_groups: Vec<groups::ModelGroup>,
    /// The response cache (`[cache]`).
    pub cache: cache::CacheConfig,
    /// Cluster mode (`[cluster]`); `None`: a single node.
    pub cluster: Option<cluster::ClusterConfig>,
    /// The file it came from, if any (for reload).
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct CustomerConfig {
    pub name: String,
    pub budget: Option<Budget>,
    /// Budgets on single models, charged for this customer's requests.
    pub model_budgets: Vec<dimensions::ModelBudget>,
    /// Rate limits on single models, over this customer's keys.
    pub model_rate_limits: Vec<dimensions::ModelRateLimit>,
    /// `cache = true | false`: opts the customer's keys in or out.
    pub cache: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct TeamConfig {
    pub name: String,
    pub customer: Option<String>,
    pub budget: Option<Budget>,
    pub rate_limit: RateLimit,
    /// Empty with `all_models` true means every model.
    pub allowed_models: Vec<String>,
    pub all_models: bool,
    pub model_budgets: Vec<dimensions::ModelBudget>,
    pub model_rate_limits: Vec<dimensions::ModelRateLimit>,
    /// The model a request falls back to when the team's budgets cannot
    /// afford the one it asked for.
    pub fallback_model: Option<String>,
    /// `cache = true | false`: opts the team's keys in or out.
    pub cache: Option<bool>,
    /// And already while a budget has less than this left.
    pub fallback_below: Option<crate::money::Money>,
}

/// Per-minute and concurrency limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub concurrent: Option<u32>,
}

impl RateLimit {
    pub fn is_unlimited(&self) -> bool {
        *self == RateLimit::default()
    }
}

/// `[pricing] unbounded_input_tokens` when neither the config nor the price
/// table states a context window: 2M tokens, above every context window
/// the shipped table lists.
pub const UNBOUNDED_INPUT_TOKENS_FALLBACK: u64 = 2_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pricing {
    /// Refuse requests for models without a price (default), or admit them
    /// uncharged and count them.
    pub refuse_unpriced: bool,
    /// Output cap sent upstream (and reserved) when a request under a strict
    /// budget sets none.
    pub default_max_output_tokens: u64,
    /// Input tokens reserved when the body refers to input it does not hold,
    /// for a model whose context window the price table does not state
    /// (default: the table's largest).
    pub unbounded_input_tokens: u64,
    /// Lower a request's output cap to what a strict budget affords rather
    /// than refuse it.
    pub degrade_before_deny: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerConfig {
    pub fsync_interval: Duration,
    pub snapshot_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub workers: usize,
    pub io_driver: IoDriverChoice,
    pub pin_workers: bool,
    pub uring_entries: u32,
    pub tls_roots: TlsRoots,
    pub dns_refresh: Duration,
    pub shutdown_drain_timeout: Duration,
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriverChoice {
    /// io_uring where the kernel (and seccomp) allow it, else the legacy driver.
    Auto,
    IoUring,
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRoots {
    Webpki,
    System,
    Both,
}

pub use crate::providers::ProviderKind;

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where an HTTP upstream lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash, e.g. "/v1"; may be empty.
    pub base_path: String,
    /// The Host header value.
    pub host_header: String,
    /// `host_header` shared, for pool keys (no allocation per request).
    pub pool_host: std::sync::Arc<str>,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub upstream: Option<UpstreamTarget>,
    /// The provider's API keys, in rotation order (empty: none is sent).
    pub api_keys: Vec<Secret>,
    /// Kind-specific settings.
    pub wire: providers::WireConfig,
    pub models: Vec<String>,
    pub budget: Option<Budget>,
    /// Extra trusted roots (DER) from `ca_file`.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub name: String,
    pub key_sha256: [u8; 32],
    /// Empty means every model.
    pub allowed_models: Vec<String>,
    pub all_models: bool,
    pub team: Option<String>,
    pub customer: Option<String>,
    pub budget: Option<Budget>,
    pub rate_limit: RateLimit,
    pub model_budgets: Vec<dimensions::ModelBudget>,
    pub model_rate_limits: Vec<dimensions::ModelRateLimit>,
    /// The model a request falls back to when its budgets cannot afford
    /// the one it asked for (announced in `x-bursar-model-downgraded`).
    pub fallback_model: Option<String>,
    /// `cache = true | false`: opts the key in or out.
    pub cache: Option<bool>,
    /// And already while a budget has less than this left.
    pub fallback_below: Option<crate::money::Money>,
}

/// A config error: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// The SHA-256 of a virtual key, as stored.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Config {
    /// Whether a request for `model` has somewhere to go: a model group, a
    /// provider that lists it, or a provider that serves any model.
    pub fn serves(&self, model: &str) -> bool {
        self.model_groups.iter().any(|g| g.name == model)
            || self
                .providers
                .iter()
                .any(|p| p.models.iter().any(|m| m == model || m == "*"))
    }

    /// Whether this config has the entity `kind`/`name` as the books name
    /// it (a customer, team, key or provider by name; a budget on a model
    /// or a tag; an owner's budget on a model as `owner/model`): what an
    /// alert rule's scope or an admin route may name.
    pub fn has_entity(&self, kind: crate::ledger::EntityKind, name: &str) -> bool {
        use crate::ledger::EntityKind as K;
        let on = |budgets: &[dimensions::ModelBudget], model: &str| {
            budgets.iter().any(|b| b.model == model)
        };
        // `owner/model`: owner names hold no '/', model names may.
        let owner_model = || name.split_once('/');
        match kind {
            K::Customer => self.customers.iter().any(|c| c.name == name),
            K::Team => self.teams.iter().any(|t| t.name == name),
            K::Key => self.keys.iter().any(|k| k.name == name),
            K::Provider => self.providers.iter().any(|p| p.name == name),
            K::Model => on(&self.model_budgets, name),
            K::Tag => self.tag_budgets.iter().any(|t| t.name() == name),
            K::KeyModel => owner_model().is_some_and(|(o, m)| {
                self.keys
                    .iter()
                    .any(|k| k.name == o && on(&k.model_budgets, m))
            }),
            K::TeamModel => owner_model().is_some_and(|(o, m)| {
                self.teams
                    .iter()
                    .any(|t| t.name == o && on(&t.model_budgets, m))
            }),
            K::CustomerModel => owner_model().is_some_and(|(o, m)| {
                self.customers
                    .iter()
                    .any(|c| c.name == o && on(&c.model_budgets, m))
            }),
        }
    }

    /// The host names of every provider's upstream, for the resolver.
    pub fn upstream_hosts(&self) -> Vec<String> {
        self.providers
            .iter()
            .filter_map(|p| p.upstream.as_ref().map(|u| u.host.clone()))
            .collect()
    }

    /// The built-in default: the mock provider on 127.0.0.1:8080 and a demo key,
    /// so `bursar serve` works offline at once.
    pub fn builtin_default() -> Config {
        let text = builtin_text();
        Config::from_toml(&text, None).expect("the built-in default config is valid")
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path.display().to_string(), format!("cannot read: {e}")))?;
        Config::from_toml(&text, Some(path.to_path_buf()))
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str, source: Option<PathBuf>) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let field = match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!("line {line}")
                }
                None => "config".to_string(),
            };
            err(field, e.message().to_string())
        })?;
        validate(file, source)
    }

    /// Parses TOML text into the file's shape, unvalidated (the admin API
    /// merges its own definitions into it, then validates the whole).
    pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| err("config", e.message().to_string()))
    }

    /// Validates a file's shape (see [`Config::parse_file`]).
    pub fn from_file(file: FileConfig, source: Option<PathBuf>) -> Result<Config, ConfigError> {
        validate(file, source)
    }

    /// The built-in default's TOML text.
    pub fn builtin_default_text() -> String {
        builtin_text()
    }
}

fn builtin_text() -> String {
    format!(
        r#"
[server]
listen = "{DEFAULT_LISTEN}"
admin_listen = "{DEFAULT_ADMIN_LISTEN}"

[[providers]]
name = "mock"
kind = "mock"
models = ["gpt-4o-mini", "gpt-4o", "o3-mini", "text-embedding-3-small", "*"]

[[virtual_keys]]
name = "demo"
key = "{DEMO_KEY}"
allowed_models = ["*"]
budget = {{ limit_usd = "10", reset = "1d" }}

[admin]
token = "{DEMO_ADMIN_TOKEN}"
"#
    )
}

/// Parses "500ms", "30s", "5m", "2h" (a bare number is seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    Some(d)
}

fn duration_field(
    field: &str,
    value: &Option<String>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let d = parse_duration(text).ok_or_else(|| {
        err(
            field,
            format!("{text:?} is not a duration (use e.g. \"500ms\", \"30s\", \"5m\")"),
        )
    })?;
    if d.is_zero() || d > max {
        return Err(err(
            field,
            format!("must be above zero and at most {}s", max.as_secs()),
        ));
    }
    Ok(d)
}

fn bytes_field(
    field: &str,
    value: Option<usize>,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(err(field, format!("must be between {min} and {max}")));
    }
    Ok(v)
}

fn parse_addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| err(field, format!("{s:?} is not a host:port address")))
}

fn validate(file: FileConfig, source: Option<PathBuf>) -> Result<Config, ConfigError> {
    let s = &file.server;
    let listen = parse_addr(
        "server.listen",
        s.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
    )?;
    let admin_listen = match s.admin_listen.as_deref() {
        Some("off") => None,
        other => Some(parse_addr(
            "server.admin_listen",
            other.unwrap_or(DEFAULT_ADMIN_LISTEN),
        )?),
    };
    if admin_listen == Some(listen) {
        return Err(err("server.admin_listen", "must differ from server.listen"));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = s.workers.unwrap_or(cores);
    if workers == 0 || workers > limits::WORKERS_MAX {
        return Err(err(
            "server.workers",
            format!("must be between 1 and {}", limits::WORKERS_MAX),
        ));
    }
    let io_driver = match s.io_driver.as_deref().unwrap_or("auto") {
        "auto" => IoDriverChoice::Auto,
        "io_uring" | "iouring" => IoDriverChoice::IoUring,
        "legacy" | "epoll" => IoDriverChoice::Legacy,
        other => {
            return Err(err(
                "server.io_driver",
                format!("{other:?}: use \"auto\", \"io_uring\" or \"legacy\""),
            ))
        }
    };
    let tls_roots = match s.tls_roots.as_deref().unwrap_or("webpki") {
        "webpki" => TlsRoots::Webpki,
        "system" => TlsRoots::System,
        "both" => TlsRoots::Both,
        other => {
            return Err(err(
                "server.tls_roots",
                format!("{other:?}: use \"webpki\", \"system\" or \"both\""),
            ))
        }
    };
    let uring_entries = s.uring_entries.unwrap_or(1024);
    if !(8..=32768).contains(&uring_entries) || !uring_entries.is_power_of_two() {
        return Err(err(
            "server.uring_entries",
            "must be a power of two between 8 and 32768",
        ));
    }
    let server = ServerConfig {
        listen,
        admin_listen,
        workers,
        io_driver,
        pin_workers: s.pin_workers.unwrap_or(true),
        uring_entries,
        tls_roots,
        dns_refresh: duration_field(
            "server.dns_refresh",
            &s.dns_refresh,
            limits::DNS_REFRESH_DEFAULT,
            Duration::from_secs(86_400),
        )?,
        shutdown_drain_timeout: duration_field(
            "server.shutdown_drain_timeout",
            &s.shutdown_drain_timeout,
            limits::SHUTDOWN_DRAIN_TIMEOUT_DEFAULT,
            Duration::from_secs(3600),
        )?,
        state_dir: PathBuf::from(s.state_dir.as_deref().unwrap_or("./bursar-state")),
    };

    let l = &file.limits;
    let hour = Duration::from_secs(3600);
    let limits = Limits {
        header_bytes_max: bytes_field(
            "limits.header_bytes_max",
            l.header_bytes_max,
            limits::HEADER_BYTES_MAX_DEFAULT,
            1024,
            limits::HEADER_BYTES_MAX_CEILING,
        )?,
        body_bytes_max: bytes_field(
            "limits.body_bytes_max",
            l.body_bytes_max,
            limits::BODY_BYTES_MAX_DEFAULT,
            1024,
            limits::BODY_BYTES_MAX_CEILING,
        )?,
        upstream_header_bytes_max: bytes_field(
            "limits.upstream_header_bytes_max",
            l.upstream_header_bytes_max,
            limits::UPSTREAM_HEADER_BYTES_MAX_DEFAULT,
            1024,
            limits::HEADER_BYTES_MAX_CEILING,
        )?,
        upstream_body_bytes_max: bytes_field(
            "limits.upstream_body_bytes_max",
            l.upstream_body_bytes_max,
            limits::UPSTREAM_BODY_BYTES_MAX_DEFAULT,
            1024,
            limits::BODY_BYTES_MAX_CEILING,
        )?,
        request_timeout: duration_field(
            "limits.request_timeout",
            &l.request_timeout,
            limits::REQUEST_TIMEOUT_DEFAULT,
            hour,
        )?,
        idle_timeout: duration_field(
            "limits.idle_timeout",
            &l.idle_timeout,
            limits::IDLE_TIMEOUT_DEFAULT,
            hour,
        )?,
        upstream_connect_timeout: duration_field(
            "limits.upstream_connect_timeout",
            &l.upstream_connect_timeout,
            limits::UPSTREAM_CONNECT_TIMEOUT_DEFAULT,
            hour,
        )?,
        upstream_read_timeout: duration_field(
            "limits.upstream_read_timeout",
            &l.upstream_read_timeout,
            limits::UPSTREAM_READ_TIMEOUT_DEFAULT,
            hour,
        )?,
        pool_idle_timeout: duration_field(
            "limits.pool_idle_timeout",
            &l.pool_idle_timeout,
            limits::POOL_IDLE_TIMEOUT_DEFAULT,
            hour,
        )?,
        pool_idle_per_upstream_max: bytes_field(
            "limits.pool_idle_per_upstream_max",
            l.pool_idle_per_upstream_max,
            limits::POOL_IDLE_PER_UPSTREAM_MAX_DEFAULT,
            0,
            65_536,
        )?,
        connections_per_worker_max: bytes_field(
            "limits.connections_per_worker_max",
            l.connections_per_worker_max,
            limits::CONNECTIONS_PER_WORKER_MAX_DEFAULT,
            1,
            1_000_000,
        )?,
    };

    if file.providers.is_empty() {
        return Err(err("providers", "at least one [[providers]] is required"));
    }
    if file.providers.len() > limits::PROVIDERS_MAX {
        return Err(err(
            "providers",
            format!("at most {} providers", limits::PROVIDERS_MAX),
        ));
    }
    let mut providers = Vec::with_capacity(file.providers.len());
    for (i, p) in file.providers.iter().enumerate() {
        let field = format!("providers[{i}] ({:?})", p.name);
        if providers.iter().any(|q: &ProviderConfig| q.name == p.name) {
            return Err(err(field, "duplicate provider name"));
        }
        providers.push(validate_provider(&field, p)?);
    }
    check_model_overlap(&providers)?;
    let model_groups = groups::validate_groups(&file.model_groups, &providers)?;

    if file.virtual_keys.len() > limits::VIRTUAL_KEYS_MAX {
        return Err(err(
            "virtual_keys",
            format!("at most {} keys", limits::VIRTUAL_KEYS_MAX),
        ));
    }
    let mut keys: Vec<KeyConfig> = Vec::with_capacity(file.virtual_keys.len());
    for (i, k) in file.virtual_keys.iter().enumerate() {
        let field = format!("virtual_keys[{i}] ({:?})", k.name);
        let key = validate_key(&field, k)?;
        if keys.iter().any(|q| q.name == key.name) {
            return Err(err(field, "duplicate key name"));
        }
        if keys.iter().any(|q| q.key_sha256 == key.key_sha256) {
            return Err(err(field, "the same secret is used by another key"));
        }
        keys.push(key);
    }

    let mut customers: Vec<CustomerConfig> = Vec::with_capacity(file.customers.len());
    for (i, c) in file.customers.iter().enumerate() {
        let field = format!("customers[{i}] ({:?})", c.name);
        check_name(&field, &c.name)?;
        if customers.iter().any(|q| q.name == c.name) {
            return Err(err(field, "duplicate customer name"));
        }
        customers.push(CustomerConfig {
            name: c.name.clone(),
            budget: budget_field(&field, &c.budget)?,
            model_budgets: dimensions::owner_model_budgets(&field, &c.model_budgets)?,
            model_rate_limits: dimensions::owner_model_rate_limits(&field, &c.model_rate_limits)?,
            cache: c.cache,
        });
    }
    let mut teams: Vec<TeamConfig> = Vec::with_capacity(file.teams.len());
    for (i, t) in file.teams.iter().enumerate() {
        let field = format!("teams[{i}] ({:?})", t.name);
        check_name(&field, &t.name)?;
        if teams.iter().any(|q| q.name == t.name) {
            return Err(err(field, "duplicate team name"));
        }
        if let Some(c) = &t.customer {
            if !customers.iter().any(|q| &q.name == c) {
                return Err(err(
                    format!("{field}.customer"),
                    format!("no customer named {c:?}"),
                ));
            }
        }
        let models = t.allowed_models.clone().unwrap_or_else(|| vec!["*".into()]);
        let all_models = models.iter().any(|m| m == "*");
        teams.push(TeamConfig {
            name: t.name.clone(),
            customer: t.customer.clone(),
            budget: budget_field(&field, &t.budget)?,
            rate_limit: rate_limit_field(&field, &t.rate_limit)?,
            allowed_models: if all_models { Vec::new() } else { models },
            all_models,
            model_budgets: dimensions::owner_model_budgets(&field, &t.model_budgets)?,
            model_rate_limits: dimensions::owner_model_rate_limits(&field, &t.model_rate_limits)?,
            fallback_model: t.fallback_model.clone(),
            cache: t.cache,
            fallback_below: fallback_below(&field, &t.fallback_model, &t.fallback_below_usd)?,
        });
    }
    for (i, (k, section)) in keys.iter().zip(&file.virtual_keys).enumerate() {
        let field = format!("virtual_keys[{i}] ({:?})", k.name);
        match (&section.team, &section.customer) {
            (Some(_), Some(_)) => {
                return Err(err(
                    field,
                    "set team or customer, not both (a team already belongs to its customer)",
                ))
            }
            (Some(t), None) if !teams.iter().any(|q| &q.name == t) => {
                return Err(err(format!("{field}.team"), format!("no team named {t:?}")))
            }
            (None, Some(c)) if !customers.iter().any(|q| &q.name == c) => {
                return Err(err(
                    format!("{field}.customer"),
                    format!("no customer named {c:?}"),
                ))
            }
            _ => {}
        }
    }
    for (k, section) in keys.iter_mut().zip(&file.virtual_keys) {
        let field = format!("virtual_keys ({:?})", k.name);
        k.team = section.team.clone();
        k.customer = section.customer.clone();
        k.budget = budget_field(&field, &section.budget)?;
        k.rate_limit = rate_limit_field(&field, &section.rate_limit)?;
        k.model_budgets = dimensions::owner_model_budgets(&field, &section.model_budgets)?;
        k.model_rate_limits =
            dimensions::owner_model_rate_limits(&field, &section.model_rate_limits)?;
        k.fallback_model = section.fallback_model.clone();
        k.cache = section.cache;
        k.fallback_below =
            fallback_below(&field, &section.fallback_model, &section.fallback_below_usd)?;
    }
    for (p, section) in providers.iter_mut().zip(&file.providers) {
        p.budget = budget_field(&format!("providers ({:?})", p.name), &section.budget)?;
    }

    let admin_token = match (&file.admin.token, &file.admin.token_env) {
        (Some(_), Some(_)) => return Err(err("admin", "set token or token_env, not both")),
        (Some(t), None) => Some(Secret(t.clone())),
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(Secret(v)),
            _ => {
                return Err(err(
                    "admin.token_env",
                    format!("environment variable {var} is not set"),
                ))
            }
        },
        (None, None) => None,
    };
    if let Some(t) = &admin_token {
        if t.0.len() < limits::ADMIN_TOKEN_BYTES_MIN {
            return Err(err(
                "admin.token",
                format!(
                    "must be at least {} characters",
                    limits::ADMIN_TOKEN_BYTES_MIN
                ),
            ));
        }
    }

    let overrides: Vec<ModelEntry> = file
        .prices
        .iter()
        .map(|p| ModelEntry {
            id: p.model.clone(),
            aliases: Vec::new(),
            input: p.input_per_mtok_usd.clone(),
            output: p.output_per_mtok_usd.clone(),
            cached_input: p.cached_input_per_mtok_usd.clone(),
            cache_write: p.cache_write_per_mtok_usd.clone(),
            reasoning: p.reasoning_per_mtok_usd.clone(),
            long_context_threshold: None,
            long_input: None,
            long_output: None,
            long_cached_input: None,
            long_cache_write: None,
            free: p.free,
            context_window: p.context_window,
            hidden_reasoning: p.hidden_reasoning,
        })
        .collect();
    let prices = PriceTable::shipped(&overrides).map_err(|e| err("prices", e))?;
    let pricing = Pricing {
        refuse_unpriced: match file.pricing.unpriced.as_deref().unwrap_or("refuse") {
            "refuse" => true,
            "allow" => false,
            other => {
                return Err(err(
                    "pricing.unpriced",
                    format!("{other:?}: use \"refuse\" or \"allow\""),
                ))
            }
        },
        default_max_output_tokens: match file.pricing.default_max_output_tokens {
            None => 16_384,
            Some(n) if (1..=10_000_000).contains(&n) => n,
            Some(_) => {
                return Err(err(
                    "pricing.default_max_output_tokens",
                    "must be between 1 and 10000000",
                ))
            }
        },
        unbounded_input_tokens: match file.pricing.unbounded_input_tokens {
            None => prices
                .largest_context_window()
                .unwrap_or(UNBOUNDED_INPUT_TOKENS_FALLBACK),
            Some(n) if (1..=100_000_000).contains(&n) => n,
            Some(_) => {
                return Err(err(
                    "pricing.unbounded_input_tokens",
                    "must be between 1 and 100000000",
                ))
            }
        },
        degrade_before_deny: file.pricing.degrade_before_deny.unwrap_or(true),
    };
    let log = if file.log.sink.as_deref() == Some("off") {
        None
    } else {
        let cfg = request_log::log_config(&file.log).map_err(|e| {
            let (field, message) = e.split_once(": ").unwrap_or(("log", e.as_str()));
            err(field, message)
        })?;
        if cfg.store_text {
            // The writer can store text, but the proxy does not capture it
            // yet: refuse rather than accept a setting that does nothing.
            return Err(err(
                "log.store_text",
                "storing prompt and completion text is not supported yet",
            ));
        }
        Some(cfg)
    };
    let ledger = LedgerConfig {
        fsync_interval: duration_field(
            "ledger.fsync_interval",
            &file.ledger.fsync_interval,
            Duration::from_millis(10),
            Duration::from_secs(10),
        )?,
        snapshot_interval: duration_field(
            "ledger.snapshot_interval",
            &file.ledger.snapshot_interval,
            Duration::from_secs(60),
            Duration::from_secs(86_400),
        )?,
    };

    let model_budgets = dimensions::model_budgets(&file.model_budgets)?;
    let tag_budgets = dimensions::tag_budgets(&file.tag_budgets)?;

    let alerts = alerts::alerts_config(&file.alerts)?;

    let config = Config {
        server,
        limits,
        providers,
        keys,
        customers,
        teams,
        admin_token,
        prices,
        pricing,
        ledger,
        log,
        alerts,
        model_budgets,
        tag_budgets,
        model_groups,
        cache: cache::cache_config(file.cache.as_ref())?,
        cluster: cluster::cluster_config(file.cluster.as_ref())?,
        source,
    };
    for (field, fallback) in config
        .keys
        .iter()
        .map(|k| {
            (
                format!("virtual_keys ({:?}).fallback_model", k.name),
                &k.fallback_model,
            )
        })
        .chain(config.teams.iter().map(|t| {
            (
                format!("teams ({:?}).fallback_model", t.name),
                &t.fallback_model,
            )
        }))
    {
        if let Some(m) = fallback {
            if !config.serves(m) {
                return Err(err(
                    field,
                    format!("no provider or model group serves {m:?}"),
                ));
            }
        }
    }
    for (i, rule) in config.alerts.rules.iter().enumerate() {
        // A rule for a name nobody has would stay silent: refuse the typo.
        if let crate::alerts::rules::Scope::Entity(kind, name) = &rule.scope {
            if !config.has_entity(*kind, name) {
                return Err(err(
                    format!("alerts.rules[{i}].scope"),
                    format!(
                        "{:?} names no {} of this config",
                        rule.section.scope,
                        kind.as_str()
                    ),
                ));
            }
        }
    }
    Ok(config)
}

fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 128 || name.contains(['/', '?', '#', ' ']) {
        return Err(err(
            field,
            "name must be 1 to 128 bytes without '/', '?', '#' or spaces",
        ));
    }
    Ok(())
}

fn budget_field(field: &str, b: &Option<BudgetSection>) -> Result<Option<Budget>, ConfigError> {
    let Some(b) = b else { return Ok(None) };
    Budget::parse(
        &b.limit_usd,
        b.reset.as_deref(),
        b.calendar_aligned,
        b.mode.as_deref(),
        b.soft_limit_usd.as_deref(),
    )
    .map(Some)
    .map_err(|e| err(format!("{field}.budget"), e.to_string()))
}

fn rate_limit_field(field: &str, r: &Option<RateLimitSection>) -> Result<RateLimit, ConfigError> {
    let Some(r) = r else {
        return Ok(RateLimit::default());
    };
    if r.requests_per_minute == Some(0) || r.tokens_per_minute == Some(0) || r.concurrent == Some(0)
    {
        return Err(err(
            format!("{field}.rate_limit"),
            "limits must be above zero (omit a limit for none)",
        ));
    }
    Ok(RateLimit {
        requests_per_minute: r.requests_per_minute,
        tokens_per_minute: r.tokens_per_minute,
        concurrent: r.concurrent,
    })
}

fn validate_key(field: &str, k: &KeySection) -> Result<KeyConfig, ConfigError> {
    if k.name.is_empty() || k.name.len() > 128 {
        return Err(err(field, "name must be 1 to 128 bytes"));
    }
    if k.name.contains('/') {
        // `key/model` names the key's budget on a model in the books.
        return Err(err(field, "name must not contain '/'"));
    }
    let key_sha256 = match (&k.key, &k.key_sha256) {
        (Some(_), Some(_)) => return Err(err(field, "set key or key_sha256, not both")),
        (None, None) => return Err(err(field, "set key or key_sha256")),
        (Some(key), None) => {
            if key.len() < 8 || key.len() > 256 {
                return Err(err(format!("{field}.key"), "must be 8 to 256 bytes"));
            }
            if key.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                return Err(err(
                    format!("{field}.key"),
                    "must be printable ASCII without spaces",
                ));
            }
            hash_key(key)
        }
        (None, Some(hex_text)) => {
            let bytes = hex::decode(hex_text.trim())
                .map_err(|_| err(format!("{field}.key_sha256"), "not hex"))?;
            bytes.try_into().map_err(|_| {
                err(
                    format!("{field}.key_sha256"),
                    "must be 32 bytes (64 hex digits)",
                )
            })?
        }
    };
    let models = k.allowed_models.clone().unwrap_or_else(|| vec!["*".into()]);
    let all_models = models.iter().any(|m| m == "*");
    Ok(KeyConfig {
        name: k.name.clone(),
        key_sha256,
        allowed_models: if all_models { Vec::new() } else { models },
        all_models,
        team: None,
        customer: None,
        budget: None,
        rate_limit: RateLimit::default(),
        model_budgets: Vec::new(),
        model_rate_limits: Vec::new(),
        fallback_model: None,
        fallback_below: None,
        cache: None,
    })
}

/// `fallback_below_usd`, which only a `fallback_model` gives meaning to.
fn fallback_below(
    field: &str,
    model: &Option<String>,
    below: &Option<String>,
) -> Result<Option<crate::money::Money>, ConfigError> {
    let Some(text) = below else { return Ok(None) };
    if model.is_none() {
        return Err(err(
            format!("{field}.fallback_below_usd"),
            "needs a fallback_model to fall back to",
        ));
    }
    crate::money::Money::parse_usd(text).map(Some).map_err(|e| {
        err(
            format!("{field}.fallback_below_usd"),
            format!("{text:?}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: &str = r#"
[server]
listen = "127.0.0.1:8080"
workers = 2
[[providers]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:9000/v1"
api_key = "sk-upstream"
models = ["gpt-4o-mini", "text-embedding-3-small"]
[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"
allowed_models = ["*"]
"#;

    #[test]
    fn the_interface_contract_example_is_valid() {
        let c = Config::from_toml(CONTRACT, None).unwrap();
        assert_eq!(c.server.workers, 2);
        assert_eq!(
            c.server.listen,
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
        );
        let up = c.providers[0].upstream.as_ref().unwrap();
        assert_eq!(
            (up.tls, up.port, up.base_path.as_str()),
            (false, 9000, "/v1")
        );
        assert_eq!(up.host_header, "127.0.0.1:9000");
        assert_eq!(c.keys[0].key_sha256, hash_key("sk-bursar-demo"));
        assert!(c.keys[0].all_models);
    }

    /// The books issue's interface contract, verbatim.
    const BOOKS: &str = r#"
[server]
admin_listen = "127.0.0.1:8081"
state_dir = "./bursar-state"
[admin]
token = "admin-secret-of-16+"
[[customers]]
name = "acme"
budget = { limit_usd = "100", reset = "1M", calendar_aligned = true }
[[teams]]
name = "search"
customer = "acme"
budget = { limit_usd = "5", reset = "1d", mode = "strict" }
[[providers]]
name = "m"
kind = "mock"
models = ["*"]
[[virtual_keys]]
name = "search-prod"
team = "search"
key = "sk-search-prod"
budget = { limit_usd = "1.00", reset = "1h" }
rate_limit = { requests_per_minute = 600, tokens_per_minute = 200000, concurrent = 64 }
[[prices]]
model = "gpt-4o-mini"
input_per_mtok_usd = "0.15"
output_per_mtok_usd = "0.60"
"#;

    #[test]
    fn the_books_contract_example_is_valid() {
        let c = Config::from_toml(BOOKS, None).unwrap();
        assert_eq!(
            c.customers[0].budget.unwrap().limit,
            crate::money::Money::from_usd(100)
        );
        assert_eq!(c.teams[0].customer.as_deref(), Some("acme"));
        let k = &c.keys[0];
        assert_eq!(k.team.as_deref(), Some("search"));
        assert_eq!(k.rate_limit.concurrent, Some(64));
        assert_eq!(
            k.budget.unwrap().limit,
            crate::money::Money::parse_usd("1").unwrap()
        );
        assert!(c.prices.version.ends_with("+config"));
        assert!(format!("{c:?}").find("admin-secret").is_none());
    }

    #[test]
    fn governance_references_must_resolve() {
        let e = Config::from_toml(
            &BOOKS.replace("customer = \"acme\"", "customer = \"acne\""),
            None,
        )
        .unwrap_err();
        assert!(
            e.field.starts_with("teams[0]") && e.message.contains("acne"),
            "{e}"
        );
        let e = Config::from_toml(
            &BOOKS.replace("team = \"search\"", "team = \"serch\""),
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("serch"), "{e}");
        let e = Config::from_toml(
            &BOOKS.replace("limit_usd = \"5\"", "limit_usd = \"5.x\""),
            None,
        )
        .unwrap_err();
        assert!(e.field.ends_with(".budget"), "{e}");
        let e = Config::from_toml(&BOOKS.replace("reset = \"1d\"", "reset = \"2 days\""), None)
            .unwrap_err();
        assert!(e.field.ends_with(".budget"), "{e}");
        let e = Config::from_toml(&BOOKS.replace("concurrent = 64", "concurrent = 0"), None)
            .unwrap_err();
        assert!(e.field.ends_with(".rate_limit"), "{e}");
        let e = Config::from_toml(&BOOKS.replace("\"0.15\"", "\"0.1500001\""), None).unwrap_err();
        assert_eq!(e.field, "prices");
    }

    #[test]
    fn the_builtin_default_is_valid_and_offline() {
        let c = Config::builtin_default();
        assert_eq!(c.providers[0].kind, ProviderKind::Mock);
        assert_eq!(
            c.server.listen,
            DEFAULT_LISTEN.parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::from_toml(CONTRACT, None).unwrap();
        let dump = format!("{c:?}");
        assert!(!dump.contains("sk-upstream"), "{dump}");
        assert!(!dump.contains("sk-bursar-demo"));
    }

    #[test]
    fn errors_name_the_field() {
        let bad = CONTRACT.replace("kind = \"openai\"", "kind = \"openapi\"");
        let e = Config::from_toml(&bad, None).unwrap_err();
        assert!(
            e.field.contains("providers[0]") && e.field.ends_with(".kind"),
            "{e}"
        );

        let bad = CONTRACT.replace("workers = 2", "workers = 0");
        assert_eq!(
            Config::from_toml(&bad, None).unwrap_err().field,
            "server.workers"
        );

        let bad = CONTRACT.replace("listen = ", "lisen = ");
        let e = Config::from_toml(&bad, None).unwrap_err();
        assert!(e.message.contains("lisen"), "{e}");

        let bad = CONTRACT.replace("http://127.0.0.1:9000/v1", "ftp://x/v1");
        assert!(Config::from_toml(&bad, None)
            .unwrap_err()
            .message
            .contains("scheme"));
    }

    #[test]
    fn api_key_env_is_read_and_missing_env_is_an_error() {
        let t = CONTRACT.replace(
            "api_key = \"sk-upstream\"",
            "api_key_env = \"BURSAR_TEST_SURELY_UNSET_VAR\"",
        );
        let e = Config::from_toml(&t, None).unwrap_err();
        assert!(e.message.contains("BURSAR_TEST_SURELY_UNSET_VAR"));
    }

    #[test]
    fn key_sha256_is_accepted() {
        let h = hex::encode(hash_key("sk-some-secret"));
        let t = CONTRACT.replace("key = \"sk-bursar-demo\"", &format!("key_sha256 = \"{h}\""));
        let c = Config::from_toml(&t, None).unwrap();
        assert_eq!(c.keys[0].key_sha256, hash_key("sk-some-secret"));
    }

    #[test]
    fn overlapping_models_are_refused() {
        let t = format!(
            "{CONTRACT}\n[[providers]]\nname = \"b\"\nkind = \"mock\"\nmodels = [\"gpt-4o-mini\"]\n"
        );
        let e = Config::from_toml(&t, None).unwrap_err();
        assert!(e.message.contains("already served"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn https_base_urls_default_to_443() {
        let t = parse_base_url("f", "https://api.openai.com/v1/").unwrap();
        assert_eq!(
            (t.tls, t.port, t.host_header.as_str()),
            (true, 443, "api.openai.com")
        );
        assert_eq!(t.base_path, "/v1");
        let t = parse_base_url("f", "http://[::1]:9000").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.host_header.as_str(),
                t.base_path.as_str()
            ),
            ("::1", "[::1]:9000", "")
        );
    }
}
