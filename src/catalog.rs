//! The catalog: read-mostly state every worker consults on every request
//! (providers, model routes, virtual keys).
//!
//! It is immutable. A change (a reload, later the admin API) builds a new
//! catalog and publishes it with one atomic pointer swap ([`CatalogHandle`]);
//! workers never see a half-applied change and never lock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;

use crate::books::EntityIds;
use crate::budget::{Budget, Mode};
use crate::config::{Config, ProviderKind, UpstreamTarget};
use crate::ledger::{EntityId, EntityKind};

/// One level of the books a request is charged to, and how it is enforced:
/// `Strict` reserves the worst case before forwarding; `Soft` (also every
/// level without a budget, which only keeps lifetime spend) is charged after.
#[derive(Debug, Clone)]
pub struct Level {
    pub id: EntityId,
    pub mode: Mode,
    pub kind: EntityKind,
    pub name: Arc<str>,
}

fn level(ids: &EntityIds, kind: EntityKind, name: &str, budget: Option<Budget>) -> Option<Level> {
    let Some(id) = ids.get(kind, name) else {
        log::error!(
            "{} {name:?} has no entity id; its spend is not booked",
            crate::books::registry::kind_str(kind)
        );
        return None;
    };
    Some(Level {
        id,
        mode: budget.map_or(Mode::Soft, |b| b.mode),
        kind,
        name: name.into(),
    })
}

/// Index of a provider in [`Catalog::providers`].
pub type ProviderId = u32;
/// Index of a key in [`Catalog::keys`].
pub type KeyId = u32;

#[derive(Debug)]
pub struct Provider {
    pub id: ProviderId,
    /// Shared: every log row holds it.
    pub name: Arc<str>,
    pub kind: ProviderKind,
    pub upstream: Option<Arc<UpstreamTarget>>,
    /// Kind-specific settings (the Anthropic version, Azure's deployments).
    pub wire: crate::config::WireConfig,
    /// `x-bursar-provider: <name>\r\n`, made once (empty when the name has
    /// a byte a header cannot carry).
    pub header_line: Box<[u8]>,
    /// The credential header's value for each API key, in rotation order
    /// (`Bearer <key>` for OpenAI, the bare key for Anthropic and Azure).
    /// Never logged.
    auth_values: Vec<Box<str>>,
    /// The key in use: an index into `auth_values`, moved on by a 429 or an
    /// auth error (shared by every worker).
    key_index: std::sync::atomic::AtomicUsize,
    pub models: Vec<String>,
    /// This provider's own TLS connector when it trusts extra roots; `None`
    /// uses the worker's default connector.
    pub tls: Option<ProviderTls>,
    /// The provider config's level in the books.
    pub level: Option<Level>,
    /// Upstream responses and errors, per worker (the operational alerts'
    /// error rate); carried over a republish while the name stays.
    pub outcomes: Arc<crate::metrics::ProviderOutcomes>,
}

/// A provider's own TLS connector (it trusts a private CA).
#[derive(Clone)]
pub struct ProviderTls(pub monoio_rustls::TlsConnector);

impl std::fmt::Debug for ProviderTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderTls(private roots)")
    }
}

impl Provider {
    /// The credential header sent upstream with the key in use, and that
    /// key's index (for [`Provider::rotate_key`]).
    pub fn auth_header(&self) -> Option<(&'static str, &str, usize)> {
        let n = self.auth_values.len();
        if n == 0 {
            return None;
        }
        let i = self.key_index.load(std::sync::atomic::Ordering::Relaxed) % n;
        let name = match self.kind {
            ProviderKind::Anthropic => "x-api-key",
            ProviderKind::Azure => "api-key",
            ProviderKind::Gemini => "x-goog-api-key",
            _ => "authorization",
        };
        Some((name, &self.auth_values[i], i))
    }

    /// How many API keys the provider rotates through.
    pub fn key_count(&self) -> usize {
        self.auth_values.len()
    }

    /// Moves on from key `from` (refused with a 429 or an auth error) to the
    /// next; a no-op if another request already moved on. Returns whether
    /// there is another key to try.
    pub fn rotate_key(&self, from: usize) -> bool {
        let n = self.auth_values.len();
        if n < 2 {
            return false;
        }
        let _ = self.key_index.compare_exchange(
            from,
            (from + 1) % n,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        true
    }
}

/// Index of a group in [`Catalog::groups`].
pub type GroupId = u32;

/// One target of a model group.
#[derive(Debug)]
pub struct GroupTarget {
    pub provider: ProviderId,
    /// The model name the provider is sent.
    pub model: Arc<str>,
    pub weight: u32,
    /// Shared by every worker; carried over a republish while the group,
    /// provider and model stay.
    pub health: Arc<crate::health::TargetHealth>,
}

/// A public model name served by several targets.
#[derive(Debug)]
pub struct ModelGroup {
    pub name: Arc<str>,
    pub strategy: crate::config::groups::Strategy,
    pub targets: Vec<GroupTarget>,
    pub retries: u32,
    pub cooldown_ms: u64,
    pub failures_before_cooldown: u32,
}

/// Where a model's requests go.
#[derive(Debug, Clone, Copy)]
pub enum Routed<'c> {
    Provider(&'c Provider),
    Group(&'c ModelGroup),
}

#[derive(Debug)]
pub struct VirtualKey {
    pub id: KeyId,
    /// Shared: every log row holds it.
    pub name: Arc<str>,
    key_sha256: [u8; 32],
    all_models: bool,
    allowed_models: Vec<String>,
    /// The team's model allow-list, when the key has a team that restricts.
    team_models: Option<Vec<String>>,
    /// Rate limiters the key's requests pass: its own, then its team's.
    pub limiters: Vec<Arc<crate::ratelimit::Limiter>>,
    /// The levels of the books its requests are charged to: the key, its
    /// team, its customer (the team's, else the key's own), in that order.
    pub chain: Vec<Level>,
    /// Per model that the key, its team or its customer budgets: those
    /// budgets' levels, in that order. Sorted by model.
    model_chains: Vec<(Box<str>, Vec<Level>)>,
    /// Per model that the key, its team or its customer rate-limits: those
    /// limiters, in that order. Sorted by model.
    model_limiters: Vec<(Box<str>, Vec<Arc<crate::ratelimit::Limiter>>)>,
    /// Where a request goes when the budgets cannot afford its model: the
    /// key's `fallback_model`, else its team's.
    pub fallback_model: Option<Box<str>>,
    /// Fall back already while a level of the key's chain has less than
    /// this left (as the worker last heard from the ledger).
    pub fallback_below: Option<crate::money::Money>,
    /// The response cache's namespace for this key's requests (`None`: the
    /// key does not use the cache).
    pub cache_namespace: Option<Arc<str>>,
}

impl VirtualKey {
    /// Whether this key may use `model`. Patterns ending in `*` match by prefix.
    /// Whether this key may use `model`: its own allow-list and its team's.
    /// Patterns ending in `*` match by prefix.
    pub fn allows(&self, model: &str) -> bool {
        let matches = |list: &[String]| {
            list.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => p == model,
            })
        };
        (self.all_models || matches(&self.allowed_models))
            && self.team_models.as_deref().is_none_or(matches)
    }

    /// The levels of the key's, its team's and its customer's budgets on
    /// `model` (empty when none budgets it).
    #[inline]
    pub fn model_levels(&self, model: &str) -> &[Level] {
        by_model(&self.model_chains, model)
    }

    /// The limiters of the key's, its team's and its customer's rate limits
    /// on `model` (empty when none limits it).
    #[inline]
    pub fn model_limiters(&self, model: &str) -> &[Arc<crate::ratelimit::Limiter>] {
        by_model(&self.model_limiters, model)
    }
}

/// `(model, item)` pairs grouped by model, in their order within a model,
/// the groups sorted by model (for [`by_model`]).
fn group_by_model<'m, T>(items: impl Iterator<Item = (&'m str, T)>) -> Vec<(Box<str>, Vec<T>)> {
    let mut out: Vec<(Box<str>, Vec<T>)> = Vec::new();
    for (model, item) in items {
        match out.iter_mut().find(|(m, _)| **m == *model) {
            Some((_, group)) => group.push(item),
            None => out.push((model.into(), vec![item])),
        }
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The entry for `model` in a list sorted by model; empty when it has none.
fn by_model<'a, T>(list: &'a [(Box<str>, Vec<T>)], model: &str) -> &'a [T] {
    if list.is_empty() {
        return &[];
    }
    list.binary_search_by(|(m, _)| (**m).cmp(model))
        .map_or(&[], |i| &list[i].1)
}

/// Hashes a SHA-256 digest by its first eight bytes: they are already uniform.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
}

/// Constant-time equality of two SHA-256 digests, taken as four words:
/// the differences are or-ed together without a branch and only the result
/// passes `subtle`'s optimization barrier (its byte-slice comparison puts one
/// on each of the 32 bytes; `authenticate` went from 4,290 to 3,943
/// instructions a request by callgrind, docs/benchmarks.md).
#[inline]
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u64;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
        diff |= word(x) ^ word(y);
    }
    bool::from(diff.ct_eq(&0))
}

type DigestMap<V> = HashMap<[u8; 32], V, BuildHasherDefault<DigestHasher>>;

/// An immutable snapshot of everything routing and auth need.
#[derive(Debug)]
pub struct Catalog {
    /// Increases by one with every published change.
    pub version: u64,
    pub providers: Vec<Provider>,
    pub keys: Vec<VirtualKey>,
    /// foldhash, not SipHash: one lookup per request, of keys from the
    /// config (a client's model name only probes it).
    routes: HashMap<String, ProviderId, foldhash::fast::RandomState>,
    fallback: Option<ProviderId>,
    /// Model groups, routed before the providers' own models.
    pub groups: Vec<ModelGroup>,
    /// The response cache's settings (entries are the workers').
    pub cache: CacheSettings,
    /// The semantic cache's models and thresholds (`[cache] semantic`).
    pub semantic: Option<SemanticSettings>,
    group_routes: HashMap<Box<str>, GroupId, foldhash::fast::RandomState>,
    keys_by_digest: DigestMap<KeyId>,
    /// The prices in force (shipped table plus config overrides).
    pub prices: Arc<crate::prices::PriceTable>,
    /// What to do about unpriced models, and the default output cap.
    pub pricing: crate::config::Pricing,
    /// Gateway-wide budgets on one model each (`[[model_budgets]]`), by model.
    model_levels: HashMap<Box<str>, Level, foldhash::fast::RandomState>,
    /// Budgets on tag values (`[[tag_budgets]]`), by tag key, then value.
    tag_levels: HashMap<
        Box<str>,
        HashMap<Box<str>, Level, foldhash::fast::RandomState>,
        foldhash::fast::RandomState,
    >,
}

impl Catalog {
    /// Builds the catalog of `config`; `ids` must name every entity of it
    /// (see [`EntityIds`]).
    pub fn from_config(config: &Config, version: u64, ids: &EntityIds) -> Catalog {
        Catalog::from_config_after(config, version, ids, None)
    }

    /// Builds the catalog that succeeds `previous`: rate limiters whose
    /// limits did not change are carried over (their windows and in-flight
    /// counts with them), so a reload or an admin change neither resets a
    /// key's minute nor lets it exceed its concurrency while older requests
    /// still hold permits.
    pub fn from_config_after(
        config: &Config,
        version: u64,
        ids: &EntityIds,
        previous: Option<&Catalog>,
    ) -> Catalog {
        let mut providers = Vec::with_capacity(config.providers.len());
        let mut routes = HashMap::default();
        let mut fallback = None;
        let workers = config.server.workers;
        let outcomes = |name: &str| {
            previous
                .and_then(|c| c.providers.iter().find(|q| &*q.name == name))
                .map(|q| Arc::clone(&q.outcomes))
                .filter(|o| o.workers() == workers.max(1))
                .unwrap_or_else(|| Arc::new(crate::metrics::ProviderOutcomes::new(workers)))
        };
        for (i, p) in config.providers.iter().enumerate() {
            let id = i as ProviderId;
            for m in &p.models {
                if m == "*" {
                    fallback = Some(id);
                } else {
                    routes.insert(m.clone(), id);
                }
            }
            providers.push(Provider {
                id,
                name: p.name.as_str().into(),
                kind: p.kind,
                upstream: p.upstream.clone().map(Arc::new),
                wire: p.wire.clone(),
                header_line: if p.name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    format!("x-bursar-provider: {}\r\n", p.name)
                        .into_bytes()
                        .into()
                } else {
                    Box::default()
                },
                auth_values: p
                    .api_keys
                    .iter()
                    .map(|k| match p.kind {
                        ProviderKind::OpenAi | ProviderKind::Mock => {
                            format!("Bearer {}", k.expose()).into_boxed_str()
                        }
                        _ => k.expose().into(),
                    })
                    .collect(),
                key_index: std::sync::atomic::AtomicUsize::new(0),
                models: p.models.clone(),
                tls: provider_tls(config, p),
                level: level(ids, EntityKind::Provider, &p.name, p.budget),
                outcomes: outcomes(&p.name),
            });
        }
        let mut keys = Vec::with_capacity(config.keys.len());
        let mut keys_by_digest = DigestMap::default();
        use crate::ratelimit::{Limiter, LimiterName};
        type LimiterKey = (&'static str, String, Option<String>);
        let mut carried: HashMap<LimiterKey, Arc<Limiter>> = HashMap::new();
        for k in previous.iter().flat_map(|p| p.keys.iter()) {
            let model_limiters = k.model_limiters.iter().flat_map(|(_, ls)| ls);
            for l in k.limiters.iter().chain(model_limiters) {
                let n = &l.name;
                carried.insert((n.kind, n.name.clone(), n.model.clone()), Arc::clone(l));
            }
        }
        let limiter = |name: LimiterName, limit: crate::config::RateLimit| match carried.get(&(
            name.kind,
            name.name.clone(),
            name.model.clone(),
        )) {
            Some(l) if l.limit() == limit => Some(Arc::clone(l)),
            _ => Limiter::new(name, limit),
        };
        let team_limiters: HashMap<&str, Arc<Limiter>> = config
            .teams
            .iter()
            .filter_map(|t| {
                let name = LimiterName {
                    kind: "team",
                    name: t.name.clone(),
                    model: None,
                };
                limiter(name, t.rate_limit).map(|l| (t.name.as_str(), l))
            })
            .collect();
        // One limiter per (owner, model), shared by every key under it.
        let model_limiters = |kind: &'static str,
                              owner: &str,
                              limits: &[crate::config::dimensions::ModelRateLimit]|
         -> Vec<(String, Arc<Limiter>)> {
            limits
                .iter()
                .filter_map(|m| {
                    let name = LimiterName {
                        kind,
                        name: owner.to_string(),
                        model: Some(m.model.clone()),
                    };
                    limiter(name, m.limit).map(|l| (m.model.clone(), l))
                })
                .collect()
        };
        let team_model_limiters: HashMap<&str, Vec<(String, Arc<Limiter>)>> = config
            .teams
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    model_limiters("team", &t.name, &t.model_rate_limits),
                )
            })
            .collect();
        let customer_model_limiters: HashMap<&str, Vec<(String, Arc<Limiter>)>> = config
            .customers
            .iter()
            .map(|c| {
                let ls = model_limiters("customer", &c.name, &c.model_rate_limits);
                (c.name.as_str(), ls)
            })
            .collect();
        for (i, k) in config.keys.iter().enumerate() {
            let id = i as KeyId;
            keys_by_digest.insert(k.key_sha256, id);
            let team = k
                .team
                .as_deref()
                .and_then(|t| config.teams.iter().find(|q| q.name == t));
            let own = limiter(
                LimiterName {
                    kind: "virtual key",
                    name: k.name.clone(),
                    model: None,
                },
                k.rate_limit,
            );
            let limiters = own
                .into_iter()
                .chain(team.and_then(|t| team_limiters.get(t.name.as_str()).cloned()))
                .collect();
            let customer = team
                .and_then(|t| t.customer.as_deref())
                .or(k.customer.as_deref())
                .and_then(|c| config.customers.iter().find(|q| q.name == c));
            let chain = [
                level(ids, EntityKind::Key, &k.name, k.budget),
                team.and_then(|t| level(ids, EntityKind::Team, &t.name, t.budget)),
                customer.and_then(|c| level(ids, EntityKind::Customer, &c.name, c.budget)),
            ]
            .into_iter()
            .flatten()
            .collect();
            // Budgets on one model: the key's, its team's, its customer's.
            let owners_budgets = [
                (
                    EntityKind::KeyModel,
                    Some((k.name.as_str(), &k.model_budgets)),
                ),
                (
                    EntityKind::TeamModel,
                    team.map(|t| (t.name.as_str(), &t.model_budgets)),
                ),
                (
                    EntityKind::CustomerModel,
                    customer.map(|c| (c.name.as_str(), &c.model_budgets)),
                ),
            ];
            let model_chains =
                group_by_model(owners_budgets.into_iter().flat_map(|(kind, owner)| {
                    owner.into_iter().flat_map(move |(owner, budgets)| {
                        budgets.iter().filter_map(move |m| {
                            let name = crate::config::dimensions::owner_model_name(owner, &m.model);
                            level(ids, kind, &name, Some(m.budget)).map(|l| (m.model.as_str(), l))
                        })
                    })
                }));
            // Rate limits on one model: the key's, its team's, its customer's.
            let own_model = model_limiters("virtual key", &k.name, &k.model_rate_limits);
            let team_model = team.and_then(|t| team_model_limiters.get(t.name.as_str()));
            let customer_model =
                customer.and_then(|c| customer_model_limiters.get(c.name.as_str()));
            let per_model = group_by_model(
                own_model
                    .iter()
                    .chain(team_model.into_iter().flatten())
                    .chain(customer_model.into_iter().flatten())
                    .map(|(model, l)| (model.as_str(), Arc::clone(l))),
            );
            keys.push(VirtualKey {
                id,
                chain,
                model_chains,
                model_limiters: per_model,
                name: k.name.as_str().into(),
                key_sha256: k.key_sha256,
                all_models: k.all_models,
                allowed_models: k.allowed_models.clone(),
                team_models: team
                    .filter(|t| !t.all_models)
                    .map(|t| t.allowed_models.clone()),
                limiters,
                fallback_model: k
                    .fallback_model
                    .as_deref()
                    .or(team.and_then(|t| t.fallback_model.as_deref()))
                    .map(Box::from),
                fallback_below: if k.fallback_model.is_some() {
                    k.fallback_below
                } else {
                    team.and_then(|t| t.fallback_below)
                },
                cache_namespace: cache_namespace(config, k, team, customer),
            });
        }
        let model_levels = config
            .model_budgets
            .iter()
            .filter_map(|m| {
                let l = level(ids, EntityKind::Model, &m.model, Some(m.budget))?;
                Some((m.model.as_str().into(), l))
            })
            .collect();
        let mut tag_levels: HashMap<Box<str>, HashMap<Box<str>, Level, _>, _> = HashMap::default();
        for t in &config.tag_budgets {
            if let Some(l) = level(ids, EntityKind::Tag, &t.name(), Some(t.budget)) {
                tag_levels
                    .entry(t.key.as_str().into())
                    .or_insert_with(HashMap::default)
                    .insert(t.value.as_str().into(), l);
            }
        }
        let (groups, group_routes) = build_groups(config, previous);
        Catalog {
            version,
            providers,
            keys,
            routes,
            fallback,
            groups,
            group_routes,
            cache: CacheSettings {
                ttl_ms: i64::try_from(config.cache.ttl.as_millis()).unwrap_or(i64::MAX),
                sampled: config.cache.sampled,
                entries_per_worker: (config.cache.entries_max / workers.max(1)).max(1),
                bytes_per_worker: config.cache.bytes_max / workers.max(1),
            },
            semantic: semantic_settings(config),
            keys_by_digest,
            prices: Arc::new(config.prices.clone()),
            pricing: config.pricing,
            model_levels,
            tag_levels,
        }
    }

    /// The gateway-wide budget on `model`, if one is set.
    #[inline]
    pub fn model_level(&self, model: &str) -> Option<&Level> {
        if self.model_levels.is_empty() {
            return None;
        }
        self.model_levels.get(model)
    }

    /// Whether any tag value has a budget (a request's tags must then be
    /// read, whether or not the request log is on).
    #[inline]
    pub fn has_tag_budgets(&self) -> bool {
        !self.tag_levels.is_empty()
    }

    /// The budget on the tag `key=value`, if one is set.
    #[inline]
    pub fn tag_level(&self, key: &str, value: &str) -> Option<&Level> {
        self.tag_levels.get(key)?.get(value)
    }

    /// Where `model`'s requests go: a model group first, then a provider
    /// listing it, then the fallback provider.
    #[inline]
    pub fn route(&self, model: &str) -> Option<Routed<'_>> {
        if !self.group_routes.is_empty() {
            if let Some(&g) = self.group_routes.get(model) {
                return self.groups.get(g as usize).map(Routed::Group);
            }
        }
        let id = self.routes.get(model).copied().or(self.fallback)?;
        self.providers.get(id as usize).map(Routed::Provider)
    }

    /// The provider of a group target.
    #[inline]
    pub fn provider(&self, id: ProviderId) -> &Provider {
        &self.providers[id as usize]
    }

    /// The key whose secret is `presented`. The digest lookup is by hash; the
    /// final comparison of the stored and computed digests is constant-time.
    #[inline]
    pub fn authenticate(&self, presented: &[u8]) -> Option<&VirtualKey> {
        let digest: [u8; 32] = {
            use sha2::Digest;
            sha2::Sha256::digest(presented).into()
        };
        let id = *self.keys_by_digest.get(&digest)?;
        let key = self.keys.get(id as usize)?;
        digests_equal(&key.key_sha256, &digest).then_some(key)
    }

    /// Model ids to list on GET /v1/models for `key`: every exactly routed model
    /// the key may use, sorted.
    pub fn models_for(&self, key: &VirtualKey) -> Vec<(&str, &str)> {
        let mut out: Vec<(&str, &str)> = self
            .routes
            .iter()
            .filter(|(m, _)| !self.group_routes.contains_key(m.as_str()))
            .map(|(m, &p)| (m.as_str(), &*self.providers[p as usize].name))
            .chain(self.groups.iter().map(|g| (&*g.name, "bursar")))
            .filter(|(m, _)| key.allows(m))
            .collect();
        out.sort_unstable();
        out
    }

    /// Whether `model` is listed exactly (not only served by the fallback).
    pub fn is_listed(&self, model: &str) -> bool {
        self.routes.contains_key(model) || self.group_routes.contains_key(model)
    }
}

/// The response cache's namespace of `k`'s requests, or `None` when the key
/// does not use the cache: the key's `cache`, else its team's, else its
/// customer's, else `[cache] enabled`; entries are shared by the key's
/// customer, team or key (`[cache] namespace`, falling back to the next
/// level down when the key has no such level).
fn cache_namespace(
    config: &Config,
    k: &crate::config::KeyConfig,
    team: Option<&crate::config::TeamConfig>,
    customer: Option<&crate::config::CustomerConfig>,
) -> Option<Arc<str>> {
    use crate::config::cache::Namespace;
    let on = k
        .cache
        .or(team.and_then(|t| t.cache))
        .or(customer.and_then(|c| c.cache))
        .unwrap_or(config.cache.enabled);
    if !on {
        return None;
    }
    let customer = customer.map(|c| format!("customer:{}", c.name));
    let team = team.map(|t| format!("team:{}", t.name));
    let key = format!("key:{}", k.name);
    let ns = match config.cache.namespace {
        Namespace::Customer => customer.or(team).unwrap_or(key),
        Namespace::Team => team.unwrap_or(key),
        Namespace::Key => key,
    };
    Some(ns.into())
}

/// What the workers' cache shards need of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub ttl_ms: i64,
    pub sampled: bool,
    /// Each worker's share of `[cache] entries_max` and `bytes_max`.
    pub entries_per_worker: usize,
    pub bytes_per_worker: usize,
}

/// What the semantic cache needs of the config: its models (loaded once
/// per directory, see [`crate::embed::load_shared`]) and thresholds.
#[derive(Debug, Clone)]
pub struct SemanticSettings {
    pub models: Arc<crate::embed::Models>,
    /// Stage a's threshold.
    pub similarity_min: f32,
    /// Stage c's threshold (`None`: no confirmation).
    pub confirm_min: Option<f32>,
    pub confirm_timeout: std::time::Duration,
}

/// Loads the semantic cache's models of `config`, if it has one: start-up
/// and `check-config` call this to refuse a directory that cannot be
/// loaded. Hold the result while building the catalog: it is loaded once.
pub fn load_semantic_models(
    config: &Config,
) -> Result<Option<Arc<crate::embed::Models>>, crate::embed::EmbedError> {
    let Some(s) = config.cache.semantic.as_ref() else {
        return Ok(None);
    };
    let confirm = s.confirm == crate::config::cache::Confirm::MiniLm;
    crate::embed::load_shared(&s.embedding_dir, confirm).map(Some)
}

/// The semantic cache's settings, `None` when it is off or its models
/// cannot be loaded (start-up and `check-config` load them first and
/// refuse to go on; a directory broken since is logged and the semantic
/// cache stays off).
fn semantic_settings(config: &Config) -> Option<SemanticSettings> {
    let s = config.cache.semantic.as_ref()?;
    let confirm = s.confirm == crate::config::cache::Confirm::MiniLm;
    match crate::embed::load_shared(&s.embedding_dir, confirm) {
        Ok(models) => Some(SemanticSettings {
            models,
            similarity_min: s.similarity_min,
            confirm_min: confirm.then_some(s.confirm_min),
            confirm_timeout: s.confirm_timeout,
        }),
        Err(e) => {
            log::error!("the semantic cache is off: {e}");
            None
        }
    }
}

/// The model groups of `config`, with the health of every target that
/// `previous` already had (same group, provider and model) carried over.
#[allow(clippy::type_complexity)]
fn build_groups(
    config: &Config,
    previous: Option<&Catalog>,
) -> (
    Vec<ModelGroup>,
    HashMap<Box<str>, GroupId, foldhash::fast::RandomState>,
) {
    let provider_id = |name: &str| {
        config
            .providers
            .iter()
            .position(|p| p.name == name)
            .map(|i| i as ProviderId)
    };
    let carried = |group: &str, provider: &str, model: &str| {
        let prev = previous?;
        let g = prev.groups.iter().find(|g| &*g.name == group)?;
        g.targets
            .iter()
            .find(|t| &*t.model == model && &*prev.provider(t.provider).name == provider)
            .map(|t| Arc::clone(&t.health))
    };
    let mut groups = Vec::with_capacity(config.model_groups.len());
    let mut routes = HashMap::default();
    for g in &config.model_groups {
        let targets = g
            .targets
            .iter()
            .filter_map(|t| {
                Some(GroupTarget {
                    provider: provider_id(&t.provider)?,
                    model: t.model.as_str().into(),
                    weight: t.weight,
                    health: carried(&g.name, &t.provider, &t.model)
                        .unwrap_or_else(|| Arc::new(crate::health::TargetHealth::new())),
                })
            })
            .collect();
        routes.insert(g.name.as_str().into(), groups.len() as GroupId);
        groups.push(ModelGroup {
            name: g.name.as_str().into(),
            strategy: g.strategy,
            targets,
            retries: g.retries,
            cooldown_ms: u64::try_from(g.cooldown.as_millis()).unwrap_or(u64::MAX),
            failures_before_cooldown: g.failures_before_cooldown,
        });
    }
    (groups, routes)
}

fn provider_tls(config: &Config, p: &crate::config::ProviderConfig) -> Option<ProviderTls> {
    if p.extra_roots.is_empty() {
        return None;
    }
    match crate::upstream::tls::client_config_with(config.server.tls_roots, &p.extra_roots) {
        Ok(c) => Some(ProviderTls(monoio_rustls::TlsConnector::from(c))),
        Err(e) => {
            // Validation already parsed the certificates; a failure here means
            // the store refused one. Fail closed: no connector, no fallback to
            // the default roots for a provider that asked for a private CA.
            log::error!("provider {}: cannot build its TLS config: {e}", p.name);
            Some(ProviderTls(monoio_rustls::TlsConnector::from(
                std::sync::Arc::new(
                    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .ok()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                ),
            )))
        }
    }
}

/// The published catalog: workers load it with one atomic read per request.
#[derive(Clone)]
pub struct CatalogHandle(Arc<ArcSwap<Catalog>>);

impl CatalogHandle {
    pub fn new(catalog: Catalog) -> Self {
        CatalogHandle(Arc::new(ArcSwap::from_pointee(catalog)))
    }
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.0.load()
    }
    pub fn load_full(&self) -> Arc<Catalog> {
        self.0.load_full()
    }
    /// Publishes a new catalog built from `config`, with the next version number.
    pub fn publish(&self, config: &Config, ids: &EntityIds) -> u64 {
        let previous = self.0.load_full();
        let version = previous.version + 1;
        self.0.store(Arc::new(Catalog::from_config_after(
            config,
            version,
            ids,
            Some(&previous),
        )));
        version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_equal_only_when_every_byte_is() {
        let a: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        assert!(digests_equal(&a, &a));
        for i in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!digests_equal(&a, &b), "byte {i} bit {bit}");
            }
        }
    }

    fn catalog() -> Catalog {
        let c = Config::from_toml(
            r#"
[[providers]]
name = "a"
kind = "mock"
models = ["gpt-4o-mini", "o3"]
[[providers]]
name = "b"
kind = "mock"
models = ["*"]
[[virtual_keys]]
name = "all"
key = "sk-all-models"
[[virtual_keys]]
name = "mini"
key = "sk-mini-only"
allowed_models = ["gpt-4o-mini", "claude-*"]
"#,
            None,
        )
        .unwrap();
        Catalog::from_config(&c, 1, &EntityIds::sequential(&c))
    }

    #[test]
    fn republishing_keeps_rate_limiters_whose_limits_did_not_change() {
        let text = |rpm: u32| {
            format!(
                "[[providers]]\nname = \"a\"\nkind = \"mock\"\nmodels = [\"*\"]\n\
                 [[virtual_keys]]\nname = \"k\"\nkey = \"sk-limited-key\"\n\
                 rate_limit = {{ requests_per_minute = {rpm} }}\n"
            )
        };
        let c1 = Config::from_toml(&text(10), None).unwrap();
        let handle = CatalogHandle::new(Catalog::from_config(&c1, 1, &EntityIds::sequential(&c1)));
        let first = Arc::clone(&handle.load().keys[0].limiters[0]);
        handle.publish(&c1, &EntityIds::sequential(&c1));
        assert!(Arc::ptr_eq(&first, &handle.load().keys[0].limiters[0]));
        let c2 = Config::from_toml(&text(20), None).unwrap();
        handle.publish(&c2, &EntityIds::sequential(&c2));
        assert!(!Arc::ptr_eq(&first, &handle.load().keys[0].limiters[0]));
        assert_eq!(
            handle.load().keys[0].limiters[0]
                .limit()
                .requests_per_minute,
            Some(20)
        );
    }

    #[test]
    fn republishing_keeps_a_providers_outcome_counters_by_name() {
        let text = |name: &str| {
            format!(
                "[server]\nworkers = 2\n[[providers]]\nname = \"{name}\"\nkind = \"mock\"\n\
                 models = [\"*\"]\n"
            )
        };
        let c1 = Config::from_toml(&text("a"), None).unwrap();
        let handle = CatalogHandle::new(Catalog::from_config(&c1, 1, &EntityIds::sequential(&c1)));
        handle.load().providers[0].outcomes.record(1, 502);
        handle.load().providers[0].outcomes.record(0, 200);
        handle.publish(&c1, &EntityIds::sequential(&c1));
        assert_eq!(handle.load().providers[0].outcomes.totals(), (2, 1));
        let c2 = Config::from_toml(&text("b"), None).unwrap();
        handle.publish(&c2, &EntityIds::sequential(&c2));
        assert_eq!(handle.load().providers[0].outcomes.totals(), (0, 0));
    }

    #[test]
    fn key_chains_name_key_team_customer_with_their_modes() {
        let c = Config::from_toml(
            r#"
[[providers]]
name = "a"
kind = "mock"
models = ["*"]
budget = { limit_usd = "9", reset = "1d", mode = "soft" }
[[customers]]
name = "acme"
budget = { limit_usd = "100", reset = "1M" }
[[teams]]
name = "search"
customer = "acme"
[[virtual_keys]]
name = "k"
key = "sk-chain-key"
team = "search"
budget = { limit_usd = "1", reset = "1h" }
"#,
            None,
        )
        .unwrap();
        let ids = EntityIds::sequential(&c);
        let cat = Catalog::from_config(&c, 1, &ids);
        let chain: Vec<(EntityKind, &str, Mode)> = cat.keys[0]
            .chain
            .iter()
            .map(|l| (l.kind, &*l.name, l.mode))
            .collect();
        assert_eq!(
            chain,
            vec![
                (EntityKind::Key, "k", Mode::Strict),
                (EntityKind::Team, "search", Mode::Soft),
                (EntityKind::Customer, "acme", Mode::Strict),
            ]
        );
        let p = cat.providers[0].level.as_ref().unwrap();
        assert_eq!(
            (p.kind, &*p.name, p.mode),
            (EntityKind::Provider, "a", Mode::Soft)
        );
        assert_eq!(Some(p.id), ids.get(EntityKind::Provider, "a"));
    }

    #[test]
    fn routes_exact_then_fallback() {
        let c = catalog();
        assert!(
            matches!(c.route("o3"), Some(crate::catalog::Routed::Provider(p)) if &*p.name == "a")
        );
        assert!(
            matches!(c.route("llama-3"), Some(crate::catalog::Routed::Provider(p)) if &*p.name == "b")
        );
    }

    #[test]
    fn authenticates_by_secret_only() {
        let c = catalog();
        assert_eq!(
            c.authenticate(b"sk-all-models").unwrap().name.as_ref(),
            "all"
        );
        assert!(c.authenticate(b"sk-all-modelz").is_none());
        assert!(c.authenticate(b"").is_none());
    }

    #[test]
    fn allowed_models_with_prefix_patterns() {
        let c = catalog();
        let k = c.authenticate(b"sk-mini-only").unwrap();
        assert!(k.allows("gpt-4o-mini"));
        assert!(k.allows("claude-3-5-sonnet"));
        assert!(!k.allows("o3"));
        assert_eq!(c.models_for(k), vec![("gpt-4o-mini", "a")]);
    }
}
