//! Governance at run time: the admin API's changes to customers, teams,
//! virtual keys, provider budgets, budgets on models and tag values, and
//! alerts, persisted in the state directory, merged with the file.
//!
//! # Who wins, the file or the API
//!
//! The file defines the starting set; the admin API adds entities and changes
//! existing ones. Every change the API makes is kept in `governance.json` in
//! the state directory (written atomically, fsynced) as a whole definition of
//! the entity, and that definition wins over the file's entity of the same
//! name, at start, on SIGHUP and after every API call. Nothing is silent:
//! every entity the API shows carries `"source": "file"` or `"api"` and, for an
//! API definition that shadows one in the file, `"overrides_file": true`; each
//! such shadowing is logged at start and on reload. `DELETE` of an API
//! definition that shadows the file reverts the entity to the file's
//! definition; `DELETE` of an entity only the file defines is refused (409):
//! edit the file and reload.
//!
//! Budgets on a model (`[[model_budgets]]`) and on a tag value
//! (`[[tag_budgets]]`) are kept by model and by `key=value` the same way,
//! with one difference: `DELETE` of a budget only the file defines is
//! recorded (a `null` in the overlay), so it stays deleted, across reloads
//! and restarts, until that record is removed (a second `DELETE`, which
//! returns to the file's budget). They show `"source"`, `"overrides_file"`
//! and `"deleted"`.
//!
//! # Applying a change
//!
//! A change is validated exactly as a config file is (the merged definitions
//! go through [`Config::from_file`]); then new entities get ledger ids and
//! changed budgets are journaled ([`Governance::sync_books`]); then the overlay
//! is persisted; then the new catalog is published to the workers with one
//! atomic swap. Changes are serialized by one mutex (the control plane is the
//! only writer; workers never take it).

pub mod alerts_api;
pub mod api;
pub mod budget_list;
pub mod budgets_api;
pub mod operational;
pub mod reports;
pub mod targets;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::books::thread::BooksHandle;
use crate::books::{EntityIds, EntityRegistry};
use crate::catalog::CatalogHandle;
use crate::config::file::{
    BudgetSection, CustomerSection, FileConfig, KeySection, ModelBudgetSection, TagBudgetSection,
    TeamSection,
};
use crate::config::{Config, ConfigError};
use crate::ledger::{Command, EntityKind, EntityView, Reply};

/// The overlay's file name in the state directory.
pub const OVERLAY_FILE: &str = "governance.json";
/// Largest overlay file read at start.
pub const OVERLAY_BYTES_MAX: u64 = 256 * 1024 * 1024;
const OVERLAY_VERSION: u32 = 1;

/// The admin API's definitions, by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    pub version: u32,
    #[serde(default)]
    pub customers: BTreeMap<String, CustomerSection>,
    #[serde(default)]
    pub teams: BTreeMap<String, TeamSection>,
    #[serde(default)]
    pub keys: BTreeMap<String, KeySection>,
    /// Providers stay defined in the file (they carry upstream credentials);
    /// only their budgets change at run time. `None`: no budget.
    #[serde(default)]
    pub provider_budgets: BTreeMap<String, Option<BudgetSection>>,
    /// `[[alerts.channels]]` defined through the API, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub alert_channels: BTreeMap<String, crate::alerts::channel::ChannelSection>,
    /// `[[alerts.rules]]` defined through the API, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub alert_rules: BTreeMap<String, crate::alerts::rules::RuleSection>,
    /// `[[model_budgets]]` defined through the API, by model. `Some` wins
    /// over the file's budget on that model (or adds one); `None` records
    /// the deletion of the file's, which stays deleted until this entry is
    /// removed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_budgets: BTreeMap<String, Option<BudgetSection>>,
    /// `[[tag_budgets]]` defined through the API, by `key=value`, as
    /// `model_budgets` is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_budgets: BTreeMap<String, Option<BudgetSection>>,
    /// Cluster mode: the manual resets and top-ups of budgets, by
    /// `<kind>:<name>` ([`adjustment_key`]), which every node applies to
    /// its own books ([`Governance::apply_adjustments`]). Empty on a
    /// single node, whose ledger journals them directly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub budget_adjustments: BTreeMap<String, BudgetAdjustment>,
}

/// Cluster mode: what the operators did to one budget's books, as every
/// node must apply it (decision 0016, "Resets and top-ups").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetAdjustment {
    /// The last manual reset, unix ms on the clock of the node that took
    /// it: the instant the budget's new period starts on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at_ms: Option<i64>,
    /// Every top-up of the prepaid budget, added up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topup_usd: Option<crate::money::Money>,
}

/// The key of a budget in [`Overlay::budget_adjustments`].
pub fn adjustment_key(kind: EntityKind, name: &str) -> String {
    format!("{}:{name}", crate::books::registry::kind_str(kind))
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid governance overlay: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The member `governance.json` ends with: the crc32c of the file as it
/// would be without it, so a flipped digit in a limit is caught rather
/// than read as another limit.
const CHECKSUM_MEMBER: &str = ",\n  \"checksum\": \"crc32c:";

/// Adds the checksum member to a pretty-printed JSON object.
pub fn seal(body: &[u8]) -> Vec<u8> {
    debug_assert!(body.ends_with(b"\n}"));
    let crc = crc32c::crc32c(body);
    let mut out = body[..body.len() - 2].to_vec();
    out.extend_from_slice(format!("{CHECKSUM_MEMBER}{crc:08x}\"\n}}\n").as_bytes());
    out
}

enum Sealed {
    /// The checksum matches: the JSON without it.
    Checked(Vec<u8>),
    /// No checksum member at the end.
    Unsealed,
    /// A checksum member that does not match.
    Mismatch,
}

fn unseal(bytes: &[u8]) -> Sealed {
    let text = bytes.trim_ascii_end();
    let member = CHECKSUM_MEMBER.as_bytes();
    let Some(at) = text.windows(member.len()).rposition(|w| w == member) else {
        return Sealed::Unsealed;
    };
    let rest = &text[at + member.len()..];
    let (Some(hex), true) = (rest.get(..8), rest.get(8..) == Some(b"\"\n}")) else {
        return Sealed::Unsealed;
    };
    let Some(want) = std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
    else {
        return Sealed::Mismatch;
    };
    let mut body = text[..at].to_vec();
    body.extend_from_slice(b"\n}");
    if crc32c::crc32c(&body) == want {
        Sealed::Checked(body)
    } else {
        Sealed::Mismatch
    }
}

/// A channel defined at run time may not read the gateway's environment
/// (`*_env`: it holds provider keys and the admin token, which the channel
/// would send wherever its URL points) nor reach private addresses
/// (`allow_private`: the SSRF guard) unless the config file allows it
/// (`[alerts] api_channels_allow_private`). Both are the config file's to
/// grant, which only the host's operator writes.
pub fn check_api_channel(
    c: &crate::alerts::channel::ChannelSection,
    allow_private: bool,
) -> Result<(), crate::config::ConfigError> {
    let env = [
        ("url_env", c.url_env.is_some()),
        ("secret_env", c.secret_env.is_some()),
        ("routing_key_env", c.routing_key_env.is_some()),
        ("password_env", c.password_env.is_some()),
    ];
    let field = |f: &str| format!("alert channel {:?}: {f}", c.name);
    if let Some((f, _)) = env.iter().find(|(_, set)| *set) {
        return Err(crate::config::ConfigError {
            field: field(f),
            message: "names an environment variable of the gateway's; a channel defined \
                      through the admin API gives the value itself (or is defined in the \
                      config file)"
                .into(),
        });
    }
    if c.allow_private && !allow_private {
        return Err(crate::config::ConfigError {
            field: field("allow_private"),
            message: "reaches private and loopback addresses; only a channel in the config \
                      file may, unless the file sets [alerts] api_channels_allow_private = true"
                .into(),
        });
    }
    Ok(())
}

impl Overlay {
    /// Reads `state_dir/governance.json`; an absent file is an empty overlay.
    pub fn load(state_dir: &Path) -> Result<Overlay, OverlayError> {
        let path = state_dir.join(OVERLAY_FILE);
        let io = |source| OverlayError::Io {
            path: path.clone(),
            source,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overlay::default()),
            Err(e) => return Err(io(e)),
        };
        if meta.len() > OVERLAY_BYTES_MAX {
            return Err(OverlayError::Invalid {
                path,
                reason: format!("larger than {OVERLAY_BYTES_MAX} bytes"),
            });
        }
        let bytes = std::fs::read(&path).map_err(io)?;
        Overlay::parse(&bytes, &path)
    }

    /// [`Overlay::load`] of a file's bytes already in memory (`path` names
    /// it in errors).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Overlay, OverlayError> {
        let path = path.to_path_buf();
        let body = match unseal(bytes) {
            Sealed::Checked(body) => body,
            Sealed::Unsealed => {
                log::warn!(
                    "{}: no checksum (written by an older build, or edited by hand); \
                     the next admin change adds one",
                    path.display()
                );
                bytes.to_vec()
            }
            Sealed::Mismatch => {
                return Err(OverlayError::Invalid {
                    path,
                    reason: "its checksum does not match its contents: the file is damaged. \
                             Restore it from a backup, or, if it was edited by hand on \
                             purpose, remove its \"checksum\" member"
                        .into(),
                })
            }
        };
        let overlay: Overlay =
            serde_json::from_slice(&body).map_err(|e| OverlayError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if overlay.version != OVERLAY_VERSION {
            return Err(OverlayError::Invalid {
                path,
                reason: format!(
                    "version {} (this build reads {OVERLAY_VERSION})",
                    overlay.version
                ),
            });
        }
        Ok(overlay)
    }

    /// Writes the overlay atomically: a temporary file, fsync, rename, fsync
    /// of the directory. A crash leaves the old or the new file, never a mix.
    pub fn save(&self, state_dir: &Path) -> Result<(), OverlayError> {
        let path = state_dir.join(OVERLAY_FILE);
        let tmp = state_dir.join(format!("{OVERLAY_FILE}.tmp"));
        let io = |source| OverlayError::Io {
            path: path.clone(),
            source,
        };
        let mut this = self.clone();
        this.version = OVERLAY_VERSION;
        let bytes = serde_json::to_vec_pretty(&this).map_err(|e| io(std::io::Error::other(e)))?;
        let bytes = seal(&bytes);
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(state_dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    /// Alert channels defined at run time (the admin API, or another
    /// node's definitions in cluster mode): see [`check_api_channel`].
    pub fn check_channels(&self, allow_private: bool) -> Result<(), crate::config::ConfigError> {
        self.alert_channels
            .values()
            .try_for_each(|c| check_api_channel(c, allow_private))
    }

    pub fn is_empty(&self) -> bool {
        self.customers.is_empty()
            && self.teams.is_empty()
            && self.keys.is_empty()
            && self.provider_budgets.is_empty()
            && self.alert_channels.is_empty()
            && self.alert_rules.is_empty()
            && self.model_budgets.is_empty()
            && self.tag_budgets.is_empty()
            && self.budget_adjustments.is_empty()
    }

    /// The file's definitions with this overlay's replacing (by name) or
    /// added to them.
    pub fn merge(&self, file: &FileConfig) -> FileConfig {
        let mut out = file.clone();
        merge_list(&mut out.customers, &self.customers, |c| &c.name);
        merge_list(&mut out.teams, &self.teams, |t| &t.name);
        merge_list(&mut out.virtual_keys, &self.keys, |k| &k.name);
        merge_list(&mut out.alerts.channels, &self.alert_channels, |c| &c.name);
        merge_list(&mut out.alerts.rules, &self.alert_rules, |r| &r.name);
        for p in &mut out.providers {
            if let Some(b) = self.provider_budgets.get(&p.name) {
                p.budget = b.clone();
            }
        }
        merge_budgets(
            &mut out.model_budgets,
            &self.model_budgets,
            |m| &m.model,
            |model, budget| ModelBudgetSection { model, budget },
        );
        merge_budgets(
            &mut out.tag_budgets,
            &self.tag_budgets,
            |t| &t.tag,
            |tag, budget| TagBudgetSection { tag, budget },
        );
        out
    }

    /// Names the overlay defines that the file defines too, per kind.
    pub fn shadowed(&self, file: &FileConfig) -> Vec<(EntityKind, String)> {
        let mut out = Vec::new();
        for c in &file.customers {
            if self.customers.contains_key(&c.name) {
                out.push((EntityKind::Customer, c.name.clone()));
            }
        }
        for t in &file.teams {
            if self.teams.contains_key(&t.name) {
                out.push((EntityKind::Team, t.name.clone()));
            }
        }
        for k in &file.virtual_keys {
            if self.keys.contains_key(&k.name) {
                out.push((EntityKind::Key, k.name.clone()));
            }
        }
        for p in &file.providers {
            if self.provider_budgets.contains_key(&p.name) {
                out.push((EntityKind::Provider, p.name.clone()));
            }
        }
        for m in &file.model_budgets {
            if self.model_budgets.contains_key(&m.model) {
                out.push((EntityKind::Model, m.model.clone()));
            }
        }
        for t in &file.tag_budgets {
            if self.tag_budgets.contains_key(&t.tag) {
                out.push((EntityKind::Tag, t.tag.clone()));
            }
        }
        out
    }
}

/// Applies the overlay's budgets on one dimension (model or tag) to the
/// file's list: `Some` replaces the file's entry of that name or is added,
/// `None` removes the file's.
fn merge_budgets<T>(
    list: &mut Vec<T>,
    overlay: &BTreeMap<String, Option<BudgetSection>>,
    name: impl Fn(&T) -> &String,
    make: impl Fn(String, BudgetSection) -> T,
) {
    list.retain(|i| !matches!(overlay.get(name(i)), Some(None)));
    for item in list.iter_mut() {
        if let Some(Some(b)) = overlay.get(name(item)) {
            *item = make(name(item).clone(), b.clone());
        }
    }
    for (n, b) in overlay {
        if let Some(b) = b {
            if !list.iter().any(|i| name(i) == n) {
                list.push(make(n.clone(), b.clone()));
            }
        }
    }
}

fn merge_list<T: Clone>(
    list: &mut Vec<T>,
    overlay: &BTreeMap<String, T>,
    name: impl Fn(&T) -> &String,
) {
    for item in list.iter_mut() {
        if let Some(o) = overlay.get(name(item)) {
            *item = o.clone();
        }
    }
    for (n, o) in overlay {
        if !list.iter().any(|i| name(i) == n) {
            list.push(o.clone());
        }
    }
}

/// The file's definitions as written (the file's text, or the built-in
/// default's), unvalidated.
pub fn read_file(source: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let text = match source {
        Some(path) => std::fs::read_to_string(path).map_err(|e| ConfigError {
            field: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?,
        None => Config::builtin_default_text(),
    };
    Config::parse_file(&text)
}

/// The config in force: the file merged with the overlay, validated, with
/// `running`'s `[server]` and `[limits]` (they change only on restart, and
/// carry the command line's overrides).
pub fn effective(
    file: &FileConfig,
    overlay: &Overlay,
    running: &Config,
) -> Result<Config, ConfigError> {
    overlay.check_channels(file.alerts.api_channels_allow_private)?;
    let merged = if overlay.is_empty() {
        file.clone()
    } else {
        overlay.merge(file)
    };
    let next = Config::from_file(merged, running.source.clone())?;
    Ok(Config {
        server: running.server.clone(),
        limits: running.limits.clone(),
        ..next
    })
}

fn log_shadowed(overlay: &Overlay, file: &FileConfig) {
    for (kind, name) in overlay.shadowed(file) {
        let deleted = match kind {
            EntityKind::Model => overlay.model_budgets.get(&name),
            EntityKind::Tag => overlay.tag_budgets.get(&name),
            _ => None,
        };
        if matches!(deleted, Some(None)) {
            log::warn!(
                "{} {name:?}: the config file's budget is deleted by the admin API (in {OVERLAY_FILE}); \
                 DELETE it through the admin API again to return to the file's",
                crate::books::registry::kind_str(kind)
            );
            continue;
        }
        log::warn!(
            "{} {name:?}: the admin API's definition (in {OVERLAY_FILE}) wins over the config file's; \
             DELETE it through the admin API to return to the file's",
            crate::books::registry::kind_str(kind)
        );
    }
}

struct Inner {
    file: FileConfig,
    overlay: Overlay,
    config: Config,
}

/// Run-time governance: the one place that changes what the workers see.
pub struct Governance {
    inner: Mutex<Inner>,
    state_dir: PathBuf,
    pub catalog: CatalogHandle,
    pub books: Arc<BooksHandle>,
    pub entities: Arc<Mutex<EntityRegistry>>,
    pub resolver: Arc<crate::upstream::resolver::Resolver>,
    /// The alert delivery thread (`None` when it could not start).
    pub delivery: Option<crate::alerts::delivery::DeliveryHandle>,
    /// The admin API's reader of the request log: the query thread
    /// (`reqlog::reader`) with its own store connection, so no query runs
    /// on the control-plane thread. The gateway shares the one it started
    /// for the workers' usage route ([`Governance::share_log_reader`]);
    /// otherwise it is started on the first query.
    log_reader: Mutex<Option<crate::reqlog::LogReader>>,
    /// Cluster mode: where the overlay is shared with the other nodes
    /// ([`Governance::share_overlay`]); `None`: a single node.
    shared: Option<Arc<dyn SharedOverlay>>,
    /// Cluster mode: the version of the cluster's overlay this node has
    /// applied (0: none yet). Read by the ledger thread's cluster side,
    /// which sends it with each draw: a node whose limits are behind the
    /// cluster's is refused draws until it applies the newer overlay.
    pub shared_version: Arc<AtomicU64>,
    /// Cluster mode: the cluster's spend on a budget (every node's), read
    /// by the spend views and the budget list ([`Governance::cluster_spend`]).
    cluster_totals: Option<Arc<dyn ClusterTotals>>,
}

/// Cluster mode: what the whole cluster has spent on budgets, for views.
pub trait ClusterTotals: Send + Sync {
    /// For each (kind, name, period): the cluster's spend there, or `None`
    /// (not known: no node has written it, or the store is unreachable).
    /// One round trip for all.
    fn totals(
        &self,
        items: &[(EntityKind, &str, crate::budget::period::Period)],
    ) -> Vec<Option<ClusterSpend>>;
}

/// A budget's state in the cluster: every node's pushed spend, the node
/// leases outstanding, the money of expired leases held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterSpend {
    pub spent: crate::money::Money,
    pub leased: crate::money::Money,
    pub held: crate::money::Money,
    pub nodes: u32,
}

/// Cluster mode's store of the admin API's overlay, one for all nodes
/// (decision 0016): each change is proposed as the whole overlay on top of
/// the version the node has, and every node applies each new version.
pub trait SharedOverlay: Send + Sync {
    /// Makes `overlay` the cluster's version `base + 1` if the cluster is
    /// still at `base`.
    fn propose(&self, base: u64, overlay: &Overlay) -> Result<u64, ProposeError>;
}

/// Why a proposed overlay was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// Another node changed it first: the cluster is at this version.
    Conflict(u64),
    /// The store could not be reached.
    Unavailable(String),
}

/// Why a request log query has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogQueryError {
    /// `[log] sink = "off"`.
    #[error("the request log is off")]
    Off,
    /// The query thread's queue is full, or the thread is not running.
    #[error(transparent)]
    Refused(#[from] crate::reqlog::QueryRefused),
    /// The query thread could not be started.
    #[error("the request log's query thread cannot start: {0}")]
    Start(String),
    /// The store failed the query.
    #[error(transparent)]
    Store(#[from] crate::reqlog::StoreError),
}

/// Why an admin change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The result would not be a valid config (400).
    #[error("{0}")]
    Invalid(String),
    /// The change contradicts what exists (409).
    #[error("{0}")]
    Conflict(String),
    /// No such entity (404).
    #[error("{0}")]
    NotFound(String),
    /// Storage or the ledger failed (500).
    #[error("{0}")]
    Internal(String),
    /// Cluster mode: the cluster's store could not be reached (503).
    #[error("{0}")]
    Unavailable(String),
}

/// What the config becomes at start: the file merged with the persisted
/// overlay (see the module doc). Logs every API definition that shadows one
/// in the file.
pub fn config_at_start(config: Config) -> anyhow::Result<(Config, FileConfig, Overlay)> {
    let overlay = Overlay::load(&config.server.state_dir)?;
    let file = read_file(config.source.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if overlay.is_empty() {
        return Ok((config, file, overlay));
    }
    log_shadowed(&overlay, &file);
    let merged = effective(&file, &overlay, &config).map_err(|e| {
        anyhow::anyhow!(
            "the admin API's definitions in {} do not fit the config file: {e}",
            config.server.state_dir.join(OVERLAY_FILE).display()
        )
    })?;
    Ok((merged, file, overlay))
}

impl Governance {
    pub fn new(
        config: Config,
        file: FileConfig,
        overlay: Overlay,
        catalog: CatalogHandle,
        books: Arc<BooksHandle>,
        entities: Arc<Mutex<EntityRegistry>>,
        resolver: Arc<crate::upstream::resolver::Resolver>,
    ) -> Governance {
        Governance {
            state_dir: config.server.state_dir.clone(),
            inner: Mutex::new(Inner {
                file,
                overlay,
                config,
            }),
            catalog,
            books,
            entities,
            resolver,
            delivery: None,
            log_reader: Mutex::new(None),
            shared: None,
            shared_version: Arc::new(AtomicU64::new(0)),
            cluster_totals: None,
        }
    }

    /// Cluster mode: spend views show the cluster's spend from `totals`.
    pub fn share_totals(&mut self, totals: Arc<dyn ClusterTotals>) {
        self.cluster_totals = Some(totals);
    }

    /// Cluster mode: the cluster's spend on each budgeted view's entity
    /// (`None` for each outside cluster mode, without a budget, or not
    /// known), in one round trip.
    pub fn cluster_spend(
        &self,
        views: &[(EntityKind, &str, &EntityView)],
    ) -> Vec<Option<ClusterSpend>> {
        let Some(totals) = &self.cluster_totals else {
            return vec![None; views.len()];
        };
        let items: Vec<_> = views.iter().map(|(k, n, v)| (*k, *n, v.period)).collect();
        let mut out = totals.totals(&items);
        out.resize(views.len(), None);
        for (o, (_, _, v)) in out.iter_mut().zip(views) {
            if v.budget.is_none() {
                *o = None;
            }
        }
        out
    }

    /// Cluster mode: admin changes go through `shared` first, so every
    /// node applies them ([`Governance::apply_shared`]).
    pub fn share_overlay(&mut self, shared: Arc<dyn SharedOverlay>) {
        self.shared = Some(shared);
    }

    /// Cluster mode: applies version `version` of the cluster's overlay
    /// (another node's change, or the cluster's state at start), unless
    /// this node has it already. Validated, booked, persisted and
    /// published like a change of this node's own.
    pub fn apply_shared(&self, overlay: Overlay, version: u64) -> Result<bool, ChangeError> {
        let mut inner = self.lock();
        if version <= self.shared_version.load(Ordering::Acquire) {
            return Ok(false);
        }
        let next = effective(&inner.file, &overlay, &inner.config)
            .map_err(|e| ChangeError::Invalid(e.to_string()))?;
        self.publish(&next, Some((&overlay, &inner.overlay)))?;
        inner.overlay = overlay;
        inner.config = next;
        // After the ledger has the new budgets: a draw that carries this
        // version carries its limits.
        self.shared_version.store(version, Ordering::Release);
        Ok(true)
    }

    /// Runs the admin API's queries on `reader`, the query thread the
    /// workers' usage route reads through too (one thread, one store
    /// connection), instead of starting one on the first query.
    pub fn share_log_reader(&mut self, reader: crate::reqlog::LogReader) {
        *self.log_reader.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(reader);
    }

    /// Runs `f` on the request log's query thread (its own store
    /// connection) and awaits the result: the calling thread (the control
    /// plane's) goes on serving meanwhile. Never blocks: a full queue is
    /// [`QueryRefused::Busy`](crate::reqlog::QueryRefused::Busy).
    pub async fn query_log<R, F>(&self, f: F) -> Result<R, LogQueryError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn crate::reqlog::LogStore) -> Result<R, crate::reqlog::StoreError>
            + Send
            + 'static,
    {
        let answer = {
            let sink = self.lock().config.log.as_ref().map(|c| c.sink.clone());
            let sink = sink.ok_or(LogQueryError::Off)?;
            let mut slot = self.log_reader.lock().unwrap_or_else(|p| p.into_inner());
            let reader = match &mut *slot {
                Some(reader) => reader,
                empty => empty.insert(
                    crate::reqlog::LogReader::start(sink, &self.state_dir)
                        .map_err(|e| LogQueryError::Start(e.to_string()))?,
                ),
            };
            let queued = reader.query(f);
            if matches!(queued, Err(crate::reqlog::QueryRefused::Gone)) {
                // The next query starts a new thread.
                *slot = None;
            }
            queued?
        };
        // No lock is held across the wait.
        match answer.await {
            Ok(result) => Ok(result?),
            Err(futures_channel::oneshot::Canceled) => {
                Err(LogQueryError::Refused(crate::reqlog::QueryRefused::Gone))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The config in force now.
    pub fn config(&self) -> Config {
        self.lock().config.clone()
    }

    /// The admin token in force (from the file; reloaded on SIGHUP).
    pub fn admin_token(&self) -> Option<crate::config::Secret> {
        self.lock().config.admin_token.clone()
    }

    /// Re-reads the config file (SIGHUP) and applies it with the overlay.
    pub fn reload(&self) -> Result<u64, ChangeError> {
        let mut inner = self.lock();
        let file = read_file(inner.config.source.as_deref())
            .map_err(|e| ChangeError::Invalid(e.to_string()))?;
        let next = effective(&file, &inner.overlay, &inner.config)
            .map_err(|e| ChangeError::Invalid(e.to_string()))?;
        log_shadowed(&inner.overlay, &file);
        let version = self.publish(&next, None)?;
        self.resolver.set_hosts(next.upstream_hosts());
        inner.file = file;
        inner.config = next;
        Ok(version)
    }

    /// Applies `change` to a copy of the overlay; if the result validates,
    /// books it, persists it and publishes it. `change` sees the file's
    /// definitions too, to tell API entities from file ones.
    pub fn change<R>(
        &self,
        change: impl FnOnce(&mut Overlay, &FileConfig, &Config) -> Result<R, ChangeError>,
    ) -> Result<R, ChangeError> {
        let mut inner = self.lock();
        let mut overlay = inner.overlay.clone();
        let result = change(&mut overlay, &inner.file, &inner.config)?;
        let next = effective(&inner.file, &overlay, &inner.config)
            .map_err(|e| ChangeError::Invalid(e.to_string()))?;
        crate::books::registry::check_cluster_budgets(&next).map_err(ChangeError::Invalid)?;
        // Cluster mode: the cluster takes the change first (or refuses it:
        // another node's came first), then this node applies it like the
        // others will.
        let shared_version = match &self.shared {
            Some(shared) => {
                let base = self.shared_version.load(Ordering::Acquire);
                Some(shared.propose(base, &overlay).map_err(|e| match e {
                    ProposeError::Conflict(at) => ChangeError::Conflict(format!(
                        "another node changed the cluster's definitions first (version {at}, \
                         this node has {base}); they apply here within a moment: retry"
                    )),
                    ProposeError::Unavailable(why) => ChangeError::Unavailable(format!(
                        "the cluster's store is unreachable, so the change cannot reach every \
                         node: {why}"
                    )),
                })?)
            }
            None => None,
        };
        self.publish(&next, Some((&overlay, &inner.overlay)))?;
        inner.overlay = overlay;
        inner.config = next;
        if let Some(v) = shared_version {
            self.shared_version.store(v, Ordering::Release);
        }
        Ok(result)
    }

    /// Reads the state under the lock.
    pub fn read<R>(&self, f: impl FnOnce(&Overlay, &FileConfig, &Config) -> R) -> R {
        let inner = self.lock();
        f(&inner.overlay, &inner.file, &inner.config)
    }

    /// Books `config`'s entities (and, in cluster mode, the adjustments
    /// that differ from the `previous` overlay's), persists `overlay` (when
    /// given), then publishes the catalog: a crash between the steps leaves
    /// the ledger knowing an entity the catalog does not use yet, never the
    /// reverse, and an adjustment applied is applied again harmlessly.
    fn publish(
        &self,
        config: &Config,
        overlay: Option<(&Overlay, &Overlay)>,
    ) -> Result<u64, ChangeError> {
        // A journal that cannot be written is the service being unavailable
        // (503, as a reset gets), not an internal error.
        let refused = |e: anyhow::Error| match e.downcast_ref::<crate::books::thread::BooksError>()
        {
            Some(crate::books::thread::BooksError::JournalDown) => {
                ChangeError::Unavailable(e.to_string())
            }
            _ => ChangeError::Internal(format!("the ledger refused the change: {e}")),
        };
        self.sync_books(config).map_err(refused)?;
        if let Some((overlay, previous)) = overlay {
            self.apply_adjustments(overlay, previous).map_err(refused)?;
            overlay
                .save(&self.state_dir)
                .map_err(|e| ChangeError::Internal(format!("cannot persist the change: {e}")))?;
        }
        let ids = self
            .ids(config)
            .map_err(|e| ChangeError::Internal(e.to_string()))?;
        let version = self.catalog.publish(config, &ids);
        self.publish_alerts(config)?;
        Ok(version)
    }

    /// Gives the ledger thread the alert plan of `config`'s rules over every
    /// entity the registry names (new keys included), and the delivery
    /// thread the channels.
    fn publish_alerts(&self, config: &Config) -> Result<(), ChangeError> {
        let plan = {
            let registry = self.entities.lock().unwrap_or_else(|p| p.into_inner());
            crate::books::thread::alert_plan(config.alerts.rules.clone(), &registry)
        };
        self.books.set_alert_plan(plan).map_err(|e| {
            ChangeError::Internal(format!("the ledger refused the alert rules: {e}"))
        })?;
        if let Some(delivery) = &self.delivery {
            // A stopped thread has nothing to deliver with; a busy one gets
            // the channels with the next change (the file keeps them).
            if let Err(e) = delivery.set_channels(config.alerts.channels.clone()) {
                log::warn!("alerts: the new channels did not reach the delivery thread: {e}");
            }
        }
        Ok(())
    }

    /// The ids of every entity of `config` (assigning new ones durably).
    pub fn ids(&self, config: &Config) -> anyhow::Result<EntityIds> {
        let mut registry = self.entities.lock().unwrap_or_else(|p| p.into_inner());
        Ok(registry.ids_for_config(config)?)
    }

    /// Cluster mode: brings this node's books to the cluster's resets and
    /// top-ups, those that differ from `previous` (the overlay this node
    /// applied before: its books have those). Idempotent: the ledger
    /// applies a reset once, and a top-up total only above the credit it
    /// has. Outside cluster mode there is nothing to apply (a node that
    /// left a cluster keeps its books).
    fn apply_adjustments(&self, overlay: &Overlay, previous: &Overlay) -> anyhow::Result<()> {
        if self.shared.is_none() || overlay.budget_adjustments.is_empty() {
            return Ok(());
        }
        let registry = self.entities.lock().unwrap_or_else(|p| p.into_inner());
        let changed = overlay
            .budget_adjustments
            .iter()
            .filter(|(key, adj)| previous.budget_adjustments.get(*key) != Some(*adj));
        for (key, adj) in changed {
            let Some(id) = key
                .split_once(':')
                .and_then(|(kind, name)| Some((crate::books::registry::kind_from_str(kind)?, name)))
                .and_then(|(kind, name)| registry.lookup(kind, name))
            else {
                continue;
            };
            let Some(view) = self.books.view(id)? else {
                continue;
            };
            let Some(budget) = view.budget else {
                continue;
            };
            let mut commands = Vec::with_capacity(2);
            if let Some(total) = adj
                .topup_usd
                .filter(|t| budget.is_prepaid() && *t > view.topup)
            {
                commands.push(Command::ClusterTopUp { entity: id, total });
            }
            if let Some(at) = adj.reset_at_ms.filter(|at| *at > view.period.start_ms) {
                commands.push(Command::ClusterReset {
                    entity: id,
                    period_start_ms: at,
                });
            }
            for cmd in commands {
                if let Reply::Rejected(e) = self.books.apply(cmd)? {
                    anyhow::bail!("{key}: {e}");
                }
            }
        }
        Ok(())
    }

    /// Whether changes go through the cluster (cluster mode).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Makes every entity of `config` exist in the ledger with its budget
    /// (new entities get ids; changed budgets are journaled).
    pub fn sync_books(&self, config: &Config) -> anyhow::Result<()> {
        let mut registry = self.entities.lock().unwrap_or_else(|p| p.into_inner());
        for (kind, name, budget) in crate::books::registry::config_entities(config) {
            let id = registry.id_for(kind, &name)?;
            let current = self.books.view(id)?;
            if current.is_some_and(|v| v.budget == budget && v.kind == kind) {
                continue;
            }
            let reply = self.books.apply(Command::SetBudget {
                entity: id,
                kind,
                budget,
            })?;
            if let Reply::Rejected(e) = reply {
                anyhow::bail!("{} {name:?}: {e}", crate::books::registry::kind_str(kind))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_defined_at_run_time_may_not_read_the_environment_or_reach_private_addresses() {
        let mut c = crate::alerts::channel::ChannelSection {
            name: "x".into(),
            url: Some("https://hooks.example.com/x".into()),
            ..Default::default()
        };
        assert!(check_api_channel(&c, false).is_ok());
        c.allow_private = true;
        let e = check_api_channel(&c, false).unwrap_err();
        assert!(e.field.ends_with("allow_private"), "{e}");
        assert!(check_api_channel(&c, true).is_ok());
        for set in [
            |c: &mut crate::alerts::channel::ChannelSection| c.url_env = Some("A".into()),
            |c: &mut crate::alerts::channel::ChannelSection| c.secret_env = Some("A".into()),
            |c: &mut crate::alerts::channel::ChannelSection| c.routing_key_env = Some("A".into()),
            |c: &mut crate::alerts::channel::ChannelSection| c.password_env = Some("A".into()),
        ] {
            let mut d = c.clone();
            set(&mut d);
            let e = check_api_channel(&d, true).unwrap_err();
            assert!(e.message.contains("environment variable"), "{e}");
        }
        // The same holds for definitions that arrive in an overlay
        // (governance.json, or another node's through Redis).
        let mut overlay = Overlay::default();
        c.password_env = Some("HOME".into());
        overlay.alert_channels.insert("x".into(), c);
        assert!(overlay.check_channels(true).is_err());
    }

    const FILE: &str = r#"
[[providers]]
name = "m"
kind = "mock"
models = ["*"]
[[customers]]
name = "acme"
[[teams]]
name = "search"
customer = "acme"
budget = { limit_usd = "5", reset = "1d" }
[[virtual_keys]]
name = "k1"
key = "sk-key-one-1"
team = "search"
"#;

    #[test]
    fn the_overlay_wins_by_name_and_adds_the_rest_and_round_trips() {
        let file = Config::parse_file(FILE).unwrap();
        let mut overlay = Overlay::default();
        let mut team = file.teams[0].clone();
        team.budget.as_mut().unwrap().limit_usd = "7".into();
        overlay.teams.insert("search".into(), team);
        let mut k2 = file.virtual_keys[0].clone();
        k2.name = "k2".into();
        k2.key = None;
        k2.key_sha256 = Some(hex::encode(crate::config::hash_key("sk-key-two-2")));
        overlay.keys.insert("k2".into(), k2);
        let merged = overlay.merge(&file);
        assert_eq!(merged.teams.len(), 1);
        assert_eq!(merged.teams[0].budget.as_ref().unwrap().limit_usd, "7");
        assert_eq!(merged.virtual_keys.len(), 2);
        assert_eq!(
            overlay.shadowed(&file),
            vec![(EntityKind::Team, "search".to_string())]
        );
        let running = Config::from_file(file.clone(), None).unwrap();
        let config = effective(&file, &overlay, &running).unwrap();
        assert_eq!(config.keys.len(), 2);
        assert_eq!(
            config.teams[0].budget.unwrap().limit,
            crate::money::Money::parse_usd("7").unwrap()
        );

        let dir = crate::ledger::test_dir::TestDir::new("overlay");
        assert!(Overlay::load(dir.path()).unwrap().is_empty());
        overlay.save(dir.path()).unwrap();
        let back = Overlay::load(dir.path()).unwrap();
        assert_eq!(back.keys.len(), 1);
        assert_eq!(back.teams["search"].budget.as_ref().unwrap().limit_usd, "7");
        std::fs::write(dir.path().join(OVERLAY_FILE), b"{\"version\":1,\"x\":{}}").unwrap();
        let e = Overlay::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("governance.json") && e.contains("unknown field"),
            "{e}"
        );
    }

    #[test]
    fn an_overlay_that_breaks_the_config_is_refused() {
        let file = Config::parse_file(FILE).unwrap();
        let running = Config::from_file(file.clone(), None).unwrap();
        let mut overlay = Overlay::default();
        let mut k = file.virtual_keys[0].clone();
        k.name = "k3".into();
        k.key = Some("sk-key-three-3".into());
        k.team = Some("no-such-team".into());
        overlay.keys.insert("k3".into(), k);
        let e = effective(&file, &overlay, &running)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-team"), "{e}");
    }
}
