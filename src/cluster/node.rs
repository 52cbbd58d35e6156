//! The `bursar-cluster` thread: the one owner of this node's Redis
//! connection (decision 0016).
//!
//! It takes the ledger thread's [`NodeLeaseMsg`]s, draws node leases and
//! pushes contributions with the scripts of [`super::scripts`], one call per
//! entity, and answers each draw with [`Command::NodeGrant`] on the ledger's
//! command channel. It never touches the ledger's state: messages both
//! ways. Redis being slow or down delays only this thread; the ledger
//! answers waiting lease requests from what it has when their time runs
//! out (fail closed).
//!
//! Per (entity, period) hash, the first call of this process is a draw
//! carrying the node's whole state (its contribution, journal sequence and
//! what it may still spend): whatever an earlier process of the node held
//! there is replaced by it. A contribution is written only once the journal
//! record it is as of is durable, so Redis never holds more spend for this
//! node than its journal can give back after a crash.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::alerts::{Claim, CLAIMS_WATCHED_MAX};
use super::lua_money::{from_lua, to_lua};
use super::scripts::{script, LUA_DRAW, LUA_PUSH, LUA_RELEASE};
use crate::books::node_lease::{Contribution, NodeLeaseMsg};
use crate::books::thread::LedgerTx;
use crate::books::EntityRegistry;
use crate::budget::period::Period;
use crate::config::cluster::ClusterConfig;
use crate::ledger::{Command, EntityId};
use crate::money::Money;

/// How long a connection attempt, a read or a write to Redis may take.
pub const REDIS_IO_TIMEOUT: Duration = Duration::from_millis(500);
/// The wait between reconnection attempts while Redis is unreachable.
pub const REDIS_RECONNECT_INTERVAL: Duration = Duration::from_millis(250);
/// How long the thread waits for a message before it looks at its
/// deferred work again (pushes waiting for the journal, claims waiting for
/// Redis): the journal is durable within its fsync interval.
const DEFERRED_WAIT: Duration = Duration::from_millis(5);
/// How long it waits with nothing deferred (a message wakes it at once;
/// this only bounds how late it sees the stop flag).
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// Most messages deferred (waiting for the journal to be durable) at once;
/// beyond it a draw is answered "refused" and a push waits for the next.
pub const DEFERRED_MAX: usize = 8192;
/// Hashes remembered (entity × period) for their first call; the oldest
/// period's entries are forgotten first when full (a forgotten hash gets
/// a first call again, which is correct, only one more declaration).
pub const HASHES_KNOWN_MAX: usize = 1 << 20;
/// Most alerts waiting for Redis to be claimed.
pub const CLAIMS_WAITING_MAX: usize = 4096;
/// Most contributions sent in one pipelined round trip. Draws are served
/// between two such batches, so a node declaring every budget at start
/// (one call each) does not hold up the leases requests wait for.
pub const PUSH_PIPELINE_MAX: usize = 256;
/// Most contributions waiting to be pushed; beyond it the oldest are
/// dropped (each entity is pushed again at its next charge, and all are
/// declared again at the next reconnect).
pub const PUSHES_PENDING_MAX: usize = 1 << 20;

/// What the cluster thread counts, for /metrics and tests.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Draw scripts run (each one round trip).
    pub draws: AtomicU64,
    /// Draws the cluster refused (nothing left).
    pub draws_refused: AtomicU64,
    /// Push scripts run.
    pub pushes: AtomicU64,
    /// Redis errors (unreachable, a script error).
    pub errors: AtomicU64,
    /// Node leases granted, picodollars (saturating).
    pub granted_picodollars: AtomicU64,
    /// Draws refused while a hash was quarantined after a loss.
    pub draws_quarantined: AtomicU64,
    /// Hashes found gone back in time (Redis restarted empty or from an
    /// old snapshot, or flushed).
    pub losses: AtomicU64,
    /// What those hashes had lost of this node's acknowledged
    /// contributions, picodollars (saturating): the drift repaired.
    pub drift_picodollars: AtomicU64,
    /// Whether the last call reached Redis.
    pub connected: AtomicBool,
    /// Alerts this node claimed for the cluster (and so sends).
    pub alerts_claimed: AtomicU64,
    /// Contributions dropped from a full push queue ([`PUSHES_PENDING_MAX`]).
    pub pushes_dropped: AtomicU64,
    /// fail_mode = "open": node leases this node granted itself while
    /// Redis was unreachable, and their sum in picodollars.
    pub fail_open_grants: AtomicU64,
    pub fail_open_picodollars: AtomicU64,
    /// Declarations that found the nodes past a budget's limit, and the
    /// most one found them past it by (picodollars; each later declaration
    /// on a hash sees what the earlier ones declared, so a sum would count
    /// twice).
    pub over_limit_found: AtomicU64,
    /// Alerts this node took over from a node that claimed them and did
    /// not keep them in time (it died before its outbox had them).
    pub alerts_taken_over: AtomicU64,
    /// Node leases given back to the cluster, and how much.
    pub releases: AtomicU64,
    pub released_picodollars: AtomicU64,
    pub over_limit_max_picodollars: AtomicU64,
}

/// The running thread.
pub struct ClusterNode {
    join: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pub stats: Arc<ClusterStats>,
}

impl ClusterNode {
    /// Starts the thread. It connects lazily: an unreachable Redis at start
    /// is not fatal (strict budgets fail closed until it answers).
    pub fn start(
        config: &ClusterConfig,
        rx: Receiver<NodeLeaseMsg>,
        ledger: LedgerTx,
        durable_seq: Arc<AtomicU64>,
        registry: Arc<Mutex<EntityRegistry>>,
        claimed: super::alerts::Claimed,
    ) -> std::io::Result<ClusterNode> {
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ClusterStats::default());
        let mut worker = Worker {
            client,
            conn: None,
            next_connect: Instant::now(),
            node: config.node.clone(),
            ttl_ms: config.lease_ttl.as_millis().max(1) as u64,
            nodes: config.nodes.join(","),
            lost_seen: HashSet::new(),
            rx,
            ledger,
            durable_seq,
            registry,
            names: HashMap::new(),
            declared: HashSet::new(),
            acked: HashMap::new(),
            others: HashMap::new(),
            deferred: VecDeque::new(),
            draw: redis::Script::new(&script(LUA_DRAW)),
            push: redis::Script::new(&script(LUA_PUSH)),
            release: redis::Script::new(&script(LUA_RELEASE)),
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            limit_warned: HashMap::new(),
            claimed,
            claims: VecDeque::new(),
            watched: VecDeque::new(),
            claims_kept: Vec::new(),
            claim: redis::Script::new(super::alerts::LUA_CLAIM),
            touch: redis::Script::new(super::feed::LUA_TOUCH),
            feed_after: None,
            next_poll: Instant::now(),
            debug_claim_drop: cfg!(debug_assertions)
                && std::env::var_os(super::alerts::DEBUG_CLAIM_DROP_ENV).is_some(),
            fail_open: config.fail_mode == crate::config::cluster::FailMode::Open,
            pushes: VecDeque::new(),
            scripts_loaded: false,
        };
        let join = std::thread::Builder::new()
            .name("bursar-cluster".into())
            .spawn(move || worker.run())?;
        Ok(ClusterNode {
            join: Some(join),
            stop,
            stats,
        })
    }

    /// Stops the thread (what is deferred is dropped: a restart declares
    /// the node's state again at its first call on each hash).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    client: redis::Client,
    conn: Option<redis::Connection>,
    next_connect: Instant,
    node: String,
    ttl_ms: u64,
    /// `[cluster] nodes`, comma-separated (empty: not given), sent with
    /// each draw: a hash Redis lost grants nothing until all have
    /// declared there again.
    nodes: String,
    /// Hashes the spend feed showed lost that this node redeclared for.
    lost_seen: HashSet<String>,
    rx: Receiver<NodeLeaseMsg>,
    ledger: LedgerTx,
    durable_seq: Arc<AtomicU64>,
    registry: Arc<Mutex<EntityRegistry>>,
    /// Each entity's part of its hash keys, `kind:name`, escaped.
    names: HashMap<EntityId, String>,
    /// Hashes this node has declared its state on since it connected
    /// (its first call on each declares; a reconnect or a loss starts over).
    declared: HashSet<(EntityId, i64)>,
    /// Per hash, the last write of this node Redis acknowledged: its
    /// contribution and journal sequence. Sent with every call, so a hash
    /// that went back in time is caught (and its loss measured: the drift).
    acked: HashMap<(EntityId, i64), (Money, u64)>,
    /// Per hash, what the other nodes had pushed as last told the ledger.
    others: HashMap<(EntityId, i64), (Money, bool)>,
    /// Messages waiting for the journal to be durable.
    deferred: VecDeque<NodeLeaseMsg>,
    draw: redis::Script,
    push: redis::Script,
    release: redis::Script,
    stats: Arc<ClusterStats>,
    stop: Arc<AtomicBool>,
    /// Entities whose limit disagrees with Redis's, logged once each.
    limit_warned: HashMap<EntityId, ()>,
    /// Alert ids this node won, for the outbox's sink to let through.
    claimed: super::alerts::Claimed,
    /// Alerts waiting for Redis to be claimed.
    claims: VecDeque<crate::alerts::Alert>,
    /// Alerts another node claimed and has not kept, by when to ask again.
    watched: VecDeque<(Instant, crate::alerts::Alert)>,
    /// Claims this node's outbox kept, to mark in Redis.
    claims_kept: Vec<(i64, String)>,
    claim: redis::Script,
    /// The spend feed ([`super::feed`]): its script, the position read up
    /// to (`None`: not read yet), when to read it next.
    touch: redis::Script,
    feed_after: Option<u64>,
    next_poll: Instant,
    /// Debug builds: [`super::alerts::DEBUG_CLAIM_DROP_ENV`].
    debug_claim_drop: bool,
    /// fail_mode = "open".
    fail_open: bool,
    /// Contributions whose journal records are durable, waiting their turn
    /// after the draws ([`PUSH_PIPELINE_MAX`] a round trip).
    pushes: VecDeque<(u64, Contribution)>,
    /// Whether this connection has the scripts loaded (a pipeline cannot
    /// load them on NOSCRIPT as a lone call does).
    scripts_loaded: bool,
}

/// A draw's answer.
enum Drawn {
    Granted(Money),
    Refused,
    /// Redis could not be reached (or the connection broke).
    Unreachable,
}

impl Worker {
    fn run(&mut self) {
        while !self.stop.load(Ordering::Acquire) {
            let deferred: Vec<NodeLeaseMsg> = self.deferred.drain(..).collect();
            for msg in deferred {
                self.handle(msg);
            }
            self.claim_waiting();
            self.push_some();
            self.poll_feed();
            let wait = if !self.pushes.is_empty() {
                Duration::ZERO
            } else if self.deferred.is_empty()
                && self.claims.is_empty()
                && self.claims_kept.is_empty()
            {
                IDLE_WAIT
            } else {
                DEFERRED_WAIT
            };
            match self.rx.recv_timeout(wait) {
                Ok(msg) => {
                    self.handle(msg);
                    while let Ok(msg) = self.rx.try_recv() {
                        self.handle(msg);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn durable(&self, seq: u64) -> bool {
        self.durable_seq.load(Ordering::Acquire) >= seq
    }

    fn defer(&mut self, msg: NodeLeaseMsg) -> bool {
        if self.deferred.len() >= DEFERRED_MAX {
            return false;
        }
        self.deferred.push_back(msg);
        true
    }

    fn handle(&mut self, msg: NodeLeaseMsg) {
        match msg {
            NodeLeaseMsg::Want {
                entity,
                period,
                limit,
                limit_version,
                need,
                want,
                spent,
                outstanding,
                seq,
            } => {
                let first = !self.declared.contains(&(entity, period.start_ms));
                if first && !self.durable(seq) {
                    if !self.defer(msg) {
                        self.answer(entity, period, Money::ZERO);
                    }
                    return;
                }
                let hello = first.then_some((spent, seq, outstanding));
                let amount =
                    match self.draw(entity, period, (limit, limit_version), need, want, hello) {
                        Some(Drawn::Granted(m)) => m,
                        Some(Drawn::Unreachable) if self.fail_open => {
                            // fail_mode = "open": the lease it would have
                            // drawn, granted by itself; declared (and any
                            // overshoot reported) when Redis returns.
                            let m = want.max(need);
                            self.stats.fail_open_grants.fetch_add(1, Ordering::Relaxed);
                            let p = u64::try_from(m.picodollars()).unwrap_or(u64::MAX);
                            let _ = self.stats.fail_open_picodollars.fetch_update(
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                                |v| Some(v.saturating_add(p)),
                            );
                            m
                        }
                        Some(Drawn::Refused | Drawn::Unreachable) | None => Money::ZERO,
                    };
                self.answer(entity, period, amount);
            }
            NodeLeaseMsg::Release {
                entity,
                period,
                amount,
            } => self.release(entity, period, amount),
            NodeLeaseMsg::ClaimsKept(kept) => {
                if self.claims_kept.len() + kept.len() <= CLAIMS_WAITING_MAX {
                    self.claims_kept.extend(kept);
                } else {
                    // Left pending: another node may send them again
                    // once their deadline passes (twice, never none).
                    log::warn!(
                        "cluster: too many alert claims waiting for Redis; {} left pending",
                        kept.len()
                    );
                }
                self.claim_waiting();
            }
            NodeLeaseMsg::Claim(alerts) => {
                for a in alerts {
                    if self.claims.len() >= CLAIMS_WAITING_MAX {
                        log::error!(
                            "cluster: too many alerts waiting for Redis; {} dropped here",
                            a.id
                        );
                        continue;
                    }
                    self.claims.push_back(a);
                }
                self.claim_waiting();
            }
            NodeLeaseMsg::Push { seq, spends } => {
                if !self.durable(seq) {
                    if !self.defer(NodeLeaseMsg::Push { seq, spends }) {
                        log::warn!(
                            "cluster: too much waiting for the journal; a push waits for the next"
                        );
                    }
                    return;
                }
                for c in spends {
                    if self.pushes.len() >= PUSHES_PENDING_MAX {
                        self.pushes.pop_front();
                        self.stats.pushes_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    self.pushes.push_back((seq, c));
                }
            }
        }
    }

    /// Claims the alerts waiting, and those watched whose retry is due;
    /// the won ones go to the ledger's outbox, those another node won and
    /// has not kept are watched, and the claims this node's outbox kept
    /// are marked. While Redis is unreachable they wait (delayed, not
    /// lost, while this process lives; after a restart the evaluator finds
    /// them again).
    fn claim_waiting(&mut self) {
        let now = Instant::now();
        while self.watched.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, a)) = self.watched.pop_front() {
                self.claims.push_back(a);
            }
        }
        if self.claims.is_empty() && self.claims_kept.is_empty() {
            return;
        }
        let alerts: Vec<crate::alerts::Alert> = self.claims.iter().cloned().collect();
        let kept = self.claims_kept.clone();
        let node = self.node.clone();
        let script = self.claim.clone();
        let pending_ms = self.ttl_ms * super::alerts::CLAIM_PENDING_LEASE_TTLS;
        let Some(conn) = self.conn() else {
            return;
        };
        if !kept.is_empty() {
            match super::alerts::kept(conn, &node, &kept) {
                Ok(()) => self.claims_kept.clear(),
                Err(e) => {
                    self.failed("marking alert claims kept", &e);
                    return;
                }
            }
        }
        let Some(conn) = self.conn() else {
            return;
        };
        match super::alerts::claim(conn, &script, &node, pending_ms, &alerts) {
            Ok(found) => {
                self.claims.clear();
                let mut won = Vec::new();
                for (a, f) in alerts.into_iter().zip(found) {
                    match f {
                        Claim::Won => won.push(a),
                        Claim::TakenOver => {
                            self.stats.alerts_taken_over.fetch_add(1, Ordering::Relaxed);
                            won.push(a);
                        }
                        Claim::Kept => {}
                        Claim::Wait if self.watched.len() < CLAIMS_WATCHED_MAX => {
                            let retry = Duration::from_millis(self.ttl_ms);
                            self.watched.push_back((now + retry, a));
                        }
                        Claim::Wait => log::error!(
                            "cluster: too many alerts watched; {} is left to the node that \
                             claimed it",
                            a.id
                        ),
                    }
                }
                self.stats
                    .alerts_claimed
                    .fetch_add(won.len() as u64, Ordering::Relaxed);
                if won.is_empty() || self.debug_claim_drop {
                    return;
                }
                {
                    let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
                    claimed.extend(won.iter().map(|a| a.id.clone()));
                }
                if let Err(e) = self.ledger.emit_alerts(won) {
                    log::error!("cluster: the ledger did not take the claimed alerts: {e}");
                }
            }
            Err(e) => {
                self.failed("an alert claim", &e);
            }
        }
    }

    fn answer(&self, entity: EntityId, period: Period, amount: Money) {
        let cmd = Command::NodeGrant {
            entity,
            period_start_ms: period.start_ms,
            amount,
        };
        if let Err(e) = self.ledger.tell(cmd) {
            log::warn!("cluster: the ledger did not take a node grant for {entity}: {e}");
        }
    }

    /// The hash of an entity's period ([`super::hash_key`]).
    fn key(&mut self, entity: EntityId, period: Period) -> Option<String> {
        if !self.names.contains_key(&entity) {
            let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            let (kind, name) = registry.name_of(entity)?;
            let tag = super::hash_tag(kind, name);
            drop(registry);
            self.names.insert(entity, tag);
        }
        Some(super::hash_key_of_tag(self.names.get(&entity)?, period))
    }

    fn conn(&mut self) -> Option<&mut redis::Connection> {
        if self.conn.is_none() {
            if Instant::now() < self.next_connect {
                return None;
            }
            self.next_connect = Instant::now() + REDIS_RECONNECT_INTERVAL;
            match self.client.get_connection_with_timeout(REDIS_IO_TIMEOUT) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(REDIS_IO_TIMEOUT));
                    let _ = c.set_write_timeout(Some(REDIS_IO_TIMEOUT));
                    log::info!("cluster: connected to Redis");
                    self.scripts_loaded = false;
                    // Redis may have lost what this node told it (a
                    // restart, a flush): declare everything again.
                    self.redeclare();
                    self.conn = Some(c);
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    if self.stats.connected.swap(false, Ordering::Relaxed) {
                        log::warn!("cluster: Redis unreachable: {e}");
                    }
                    return None;
                }
            }
        }
        self.conn.as_mut()
    }

    /// Declares this node's state again on every hash: its next call on
    /// each is a declaration, and the ledger pushes every shared entity.
    fn redeclare(&mut self) {
        self.declared.clear();
        if let Err(e) = self.ledger.cluster_redeclare() {
            log::warn!("cluster: the ledger did not take a redeclaration: {e}");
        }
    }

    /// A hash went back in time: what this node had acknowledged there
    /// beyond what Redis now holds is the drift; the node declares again.
    fn lost(&mut self, key: &str, entity: EntityId, period: Period, prev_c: &str, prev_q: &str) {
        // Measured once: the declaration that follows starts afresh.
        let acked = self.acked.remove(&(entity, period.start_ms));
        let stored = from_lua(prev_c).unwrap_or(Money::ZERO);
        let drift = acked.map_or(0, |(c, _)| (c.picodollars() - stored.picodollars()).max(0));
        self.stats.losses.fetch_add(1, Ordering::Relaxed);
        let d = u64::try_from(drift).unwrap_or(u64::MAX);
        let _ =
            self.stats
                .drift_picodollars
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_add(d))
                });
        log::error!(
            "cluster: {key} went back in time (Redis restarted or flushed): this node's \
             contribution there was {} as of journal record {}, Redis had {prev_c} as of {prev_q} \
             (picodollars): drift {drift}; declaring again, draws wait meanwhile",
            acked.map_or(0, |(c, _)| c.picodollars()),
            acked.map_or(0, |(_, q)| q),
        );
        self.redeclare();
        // The other nodes hear of it from the spend feed, and declare too.
        self.touch_feed(key);
    }

    /// Tells the ledger what the other nodes have pushed on a hash, when
    /// it changed (views and alerts show the cluster's spend).
    fn others_spent(&mut self, entity: EntityId, period: Period, others: Option<&String>) {
        if let Some(others) = others.and_then(|o| from_lua(o)) {
            self.others_spent_at(entity, period.start_ms, others, false);
        }
    }

    /// Every [`super::feed::FEED_POLL_INTERVAL`]: the hashes other nodes
    /// pushed to since the last poll, their spend told to the ledger (so a
    /// node serving none of a budget's traffic knows the cluster's spend).
    fn poll_feed(&mut self) {
        let now = Instant::now();
        if now < self.next_poll {
            return;
        }
        self.next_poll = now + super::feed::FEED_POLL_INTERVAL;
        let (after, node) = (self.feed_after, self.node.clone());
        let Some(conn) = self.conn() else {
            return;
        };
        let Some(after) = after else {
            match super::feed::position(conn) {
                Ok(p) => self.feed_after = Some(p),
                Err(e) => {
                    self.failed("reading the spend feed", &e);
                }
            }
            return;
        };
        let (last, changed) = match super::feed::poll(conn, after, &node) {
            Ok(polled) => polled,
            Err(e) => {
                self.failed("reading the spend feed", &e);
                return;
            }
        };
        // A counter below the position read up to: Redis lost the feed
        // (restarted empty); read from its start.
        self.feed_after = Some(if changed.is_empty() && last == after {
            match super::feed::position(conn) {
                Ok(p) if p < after => p,
                _ => after,
            }
        } else {
            last
        });
        if changed.is_empty() {
            return;
        }
        let found: Vec<(EntityId, i64, super::feed::Changed)> = {
            let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            changed
                .into_iter()
                .filter_map(|c| {
                    let (kind, name, start_ms) = super::feed::parse_hash_key(&c.key)?;
                    Some((registry.lookup(kind, &name)?, start_ms, c))
                })
                .collect()
        };
        let mut redeclare = false;
        for (entity, start_ms, c) in found {
            // A hash Redis lost: every node declares its state there
            // again, the ones serving none of its traffic too (with the
            // node list, the hash waits for all of them).
            if c.lost {
                if self.lost_seen.len() >= HASHES_KNOWN_MAX {
                    self.lost_seen.clear();
                }
                redeclare |= self.lost_seen.insert(c.key.clone());
            } else {
                self.lost_seen.remove(&c.key);
            }
            self.others_spent_at(entity, start_ms, c.others, c.refused);
        }
        if redeclare {
            self.redeclare();
        }
    }

    /// Tells the spend feed a hash changed (a lone push, a refusal).
    fn touch_feed(&mut self, key: &str) {
        let touch = self.touch.clone();
        let Some(conn) = self.conn() else {
            return;
        };
        let touched: redis::RedisResult<u64> = touch
            .key(super::feed::FEED_SEQ_KEY)
            .key(super::feed::FEED_KEY)
            .arg(super::feed::FEED_KEPT_MAX)
            .arg(key)
            .invoke(conn);
        if let Err(e) = touched {
            self.failed("touching the spend feed", &e);
        }
    }

    /// Tells the ledger what the other nodes spent on a hash, and whether
    /// a node was refused there, when either changed.
    fn others_spent_at(&mut self, entity: EntityId, start_ms: i64, others: Money, refused: bool) {
        let period_start_ms = start_ms;
        if self.others.get(&(entity, period_start_ms)) == Some(&(others, refused)) {
            return;
        }
        if self.others.len() >= HASHES_KNOWN_MAX {
            self.others.clear();
        }
        let cmd = Command::ClusterSpend {
            entity,
            period_start_ms,
            others,
            refused,
        };
        if self.ledger.tell(cmd).is_ok() {
            self.others
                .insert((entity, period_start_ms), (others, refused));
        }
    }

    fn acked_seq(&self, entity: EntityId, period: Period) -> i64 {
        self.acked
            .get(&(entity, period.start_ms))
            .map_or(-1, |(_, q)| i64::try_from(*q).unwrap_or(i64::MAX))
    }

    fn ack(&mut self, entity: EntityId, period: Period, c: Money, q: u64) {
        if self.acked.len() >= HASHES_KNOWN_MAX {
            self.acked.clear();
        }
        self.acked.insert((entity, period.start_ms), (c, q));
    }

    /// Counts and logs a failed call; `true` when Redis is unreachable
    /// (the connection is dropped, to be made again), `false` for an error
    /// of the script's.
    fn failed(&mut self, what: &str, e: &redis::RedisError) -> bool {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_timeout()
            || e.is_unrecoverable_error()
        {
            if self.stats.connected.swap(false, Ordering::Relaxed) {
                log::warn!("cluster: Redis connection lost during {what}: {e}");
            }
            self.conn = None;
            true
        } else {
            log::error!("cluster: {what} failed: {e}");
            false
        }
    }

    /// Gives `amount` of this node's lease on a hash back to the cluster.
    /// Only on a hash declared on this connection: otherwise the next draw
    /// declares what the node holds, which leaves it out already. An error
    /// leaves it counted as leased (until it expires): never more than was
    /// granted.
    fn release(&mut self, entity: EntityId, period: Period, amount: Money) {
        if !self.declared.contains(&(entity, period.start_ms)) {
            return;
        }
        let (Some(key), Some(amount_s)) = (self.key(entity, period), to_lua(amount)) else {
            return;
        };
        let node = self.node.clone();
        let script = self.release.clone();
        let acked = self.acked_seq(entity, period);
        let Some(conn) = self.conn() else {
            return;
        };
        let result: redis::RedisResult<Vec<String>> = script
            .key(&key)
            .arg(&node)
            .arg(&amount_s)
            .arg(acked)
            .invoke(conn);
        match result {
            Ok(out) if out.first().map(String::as_str) == Some("ok") => {
                let released = out.get(1).and_then(|m| from_lua(m)).unwrap_or(Money::ZERO);
                self.stats.releases.fetch_add(1, Ordering::Relaxed);
                let p = u64::try_from(released.picodollars()).unwrap_or(u64::MAX);
                let _ = self.stats.released_picodollars.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |v| Some(v.saturating_add(p)),
                );
            }
            Ok(_) => {}
            Err(e) => {
                self.failed("a release", &e);
            }
        }
    }

    /// Runs the draw script; `None` on an error (logged).
    fn draw(
        &mut self,
        entity: EntityId,
        period: Period,
        (limit, limit_version): (Money, u64),
        need: Money,
        want: Money,
        hello: Option<(Money, u64, Money)>,
    ) -> Option<Drawn> {
        let key = self.key(entity, period)?;
        let (Some(limit_s), Some(need_s), Some(want_s)) =
            (to_lua(limit), to_lua(need), to_lua(want))
        else {
            log::error!("cluster: {entity}: an amount beyond what the cluster scripts handle");
            return None;
        };
        let hello_args = match hello {
            Some((spent, seq, out)) => match (to_lua(spent), to_lua(out)) {
                (Some(s), Some(o)) => Some((s, seq.to_string(), o)),
                _ => return None,
            },
            None => None,
        };
        let node = self.node.clone();
        let ttl = self.ttl_ms;
        let script = self.draw.clone();
        let nodes = self.nodes.clone();
        let acked = self.acked_seq(entity, period);
        let Some(conn) = self.conn() else {
            return Some(Drawn::Unreachable);
        };
        let mut inv = script.key(&key);
        inv.arg(&node)
            .arg(&need_s)
            .arg(&want_s)
            .arg(ttl)
            .arg(&limit_s)
            .arg(limit_version)
            .arg(acked);
        match &hello_args {
            Some((s, q, o)) => inv.arg(s).arg(q).arg(o),
            None => inv.arg("").arg("").arg(""),
        };
        inv.arg(&nodes);
        let result: redis::RedisResult<Vec<String>> = inv.invoke(conn);
        self.stats.draws.fetch_add(1, Ordering::Relaxed);
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                let unreachable = self.failed("a draw", &e);
                return unreachable.then_some(Drawn::Unreachable);
            }
        };
        self.stats.connected.store(true, Ordering::Relaxed);
        let status = out.get(3).map(String::as_str);
        if status == Some("lost") {
            let (c, q) = (
                out.get(4).cloned().unwrap_or_default(),
                out.get(5).cloned().unwrap_or_default(),
            );
            self.lost(&key, entity, period, &c, &q);
            // A declaration that went in with it stands.
            if let Some((spent, seq, _)) = hello {
                self.declared.insert((entity, period.start_ms));
                self.ack(entity, period, spent, seq);
            }
            return Some(Drawn::Refused);
        }
        if let Some((spent, seq, _)) = hello {
            if status != Some("limit") {
                self.declared.insert((entity, period.start_ms));
                self.ack(entity, period, spent, seq);
                self.over_limit(&key, &out);
            }
        }
        if status != Some("limit") {
            self.others_spent(entity, period, out.get(6));
        }
        match status {
            Some("ok") => {
                let granted = out.first().and_then(|g| from_lua(g))?;
                let p = u64::try_from(granted.picodollars()).unwrap_or(u64::MAX);
                let _ = self.stats.granted_picodollars.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |v| Some(v.saturating_add(p)),
                );
                Some(Drawn::Granted(granted))
            }
            Some("refused") => {
                self.stats.draws_refused.fetch_add(1, Ordering::Relaxed);
                // The other nodes hear of it from the spend feed.
                if need.is_positive() {
                    self.touch_feed(&key);
                }
                Some(Drawn::Refused)
            }
            Some("quarantine") => {
                self.stats.draws_quarantined.fetch_add(1, Ordering::Relaxed);
                Some(Drawn::Refused)
            }
            Some("limit") => {
                if self.limit_warned.insert(entity, ()).is_none() {
                    log::error!(
                        "cluster: {key}: this node's limit {limit} differs from the cluster's {} \
                         (picodollars): no draw until the nodes' configs agree",
                        out.get(1).map_or("?", String::as_str)
                    );
                }
                Some(Drawn::Refused)
            }
            other => {
                log::error!("cluster: {key}: unexpected draw answer {other:?}");
                None
            }
        }
    }

    /// Sends up to [`PUSH_PIPELINE_MAX`] waiting contributions in one
    /// pipelined round trip: a declaration (a draw of nothing) for a hash
    /// this node has not declared on since it connected, else a push. On
    /// an error the batch goes one call at a time (a lone call reloads a
    /// script Redis lost, and one bad hash does not sink the others).
    fn push_some(&mut self) {
        if self.pushes.is_empty() {
            return;
        }
        let take = self.pushes.len().min(PUSH_PIPELINE_MAX);
        let batch: Vec<(u64, Contribution)> = self.pushes.drain(..take).collect();
        let mut pipe = redis::pipe();
        let mut sent = Vec::with_capacity(batch.len());
        for (seq, c) in &batch {
            let Some(key) = self.key(c.entity, c.period) else {
                continue;
            };
            let (Some(spent), Some(limit), Some(out)) =
                (to_lua(c.spent), to_lua(c.limit), to_lua(c.outstanding))
            else {
                continue;
            };
            let acked = self.acked_seq(c.entity, c.period);
            let declare = !self.declared.contains(&(c.entity, c.period.start_ms));
            let inv = if declare {
                let mut inv = self.draw.key(&key);
                inv.arg(&self.node)
                    .arg("0")
                    .arg("0")
                    .arg(self.ttl_ms)
                    .arg(&limit)
                    .arg(c.limit_version)
                    .arg(acked)
                    .arg(&spent)
                    .arg(*seq)
                    .arg(&out);
                inv
            } else {
                let mut inv = self.push.key(&key);
                inv.arg(&self.node)
                    .arg(&spent)
                    .arg(*seq)
                    .arg(&limit)
                    .arg(c.limit_version)
                    .arg(acked)
                    .arg(self.ttl_ms);
                inv
            };
            pipe.invoke_script(&inv);
            sent.push((*seq, *c, key, declare));
        }
        if sent.is_empty() {
            return;
        }
        // The feed hears of every hash of the batch (see `poll_feed`).
        let mut touch = self.touch.key(super::feed::FEED_SEQ_KEY);
        touch
            .key(super::feed::FEED_KEY)
            .arg(super::feed::FEED_KEPT_MAX);
        for (_, _, key, _) in &sent {
            touch.arg(key);
        }
        pipe.invoke_script(&touch).ignore();
        let (draw, push, feed) = (self.draw.clone(), self.push.clone(), self.touch.clone());
        let loaded = self.scripts_loaded;
        let Some(conn) = self.conn() else {
            return;
        };
        let ready = loaded || {
            draw.prepare_invoke().load(conn).is_ok()
                && push.prepare_invoke().load(conn).is_ok()
                && feed.prepare_invoke().load(conn).is_ok()
        };
        let replies: Option<Vec<Vec<String>>> = if ready { pipe.query(conn).ok() } else { None };
        self.scripts_loaded = ready;
        match replies {
            Some(replies) if replies.len() == sent.len() => {
                self.stats
                    .pushes
                    .fetch_add(sent.len() as u64, Ordering::Relaxed);
                self.stats.connected.store(true, Ordering::Relaxed);
                for ((seq, c, key, declare), out) in sent.into_iter().zip(replies) {
                    if declare {
                        self.declared_reply(&key, c.entity, c.period, (c.spent, seq), &out);
                    } else {
                        self.pushed_reply(&key, seq, &c, &out);
                    }
                }
            }
            _ => {
                self.scripts_loaded = false;
                for (seq, c, _, _) in sent {
                    self.push_one(seq, &c);
                }
            }
        }
    }

    /// A declaration's reply (see [`Worker::draw`]'s, whose handling it
    /// shares for a draw of nothing).
    fn declared_reply(
        &mut self,
        key: &str,
        entity: EntityId,
        period: Period,
        (spent, seq): (Money, u64),
        out: &[String],
    ) {
        match out.get(3).map(String::as_str) {
            Some("lost") => {
                let (c, q) = (
                    out.get(4).cloned().unwrap_or_default(),
                    out.get(5).cloned().unwrap_or_default(),
                );
                self.lost(key, entity, period, &c, &q);
                self.declared.insert((entity, period.start_ms));
                self.ack(entity, period, spent, seq);
            }
            Some("limit") => {}
            _ => {
                self.declared.insert((entity, period.start_ms));
                self.ack(entity, period, spent, seq);
                self.over_limit(key, out);
                self.others_spent(entity, period, out.get(6));
            }
        }
    }

    /// A push's reply.
    fn pushed_reply(&mut self, key: &str, seq: u64, c: &Contribution, out: &[String]) {
        if out.first().map(String::as_str) == Some("lost") {
            let (pc, pq) = (
                out.get(1).cloned().unwrap_or_default(),
                out.get(2).cloned().unwrap_or_default(),
            );
            self.lost(key, c.entity, c.period, &pc, &pq);
            return;
        }
        if out.first().map(String::as_str) == Some("ok") {
            self.ack(c.entity, c.period, c.spent, seq);
        }
        self.others_spent(c.entity, c.period, out.get(5));
        if out.get(4).is_some_and(|o| o != "0") {
            log::warn!(
                "cluster: {key}: this node spent {} picodollars beyond its node leases",
                out[4]
            );
        }
    }

    /// A declaration found the nodes past the hash's limit: counted and
    /// logged (nodes that admitted while Redis was away, fail open, or a
    /// limit lowered below what was spent).
    fn over_limit(&self, key: &str, out: &[String]) {
        let Some(over) = out
            .get(1)
            .and_then(|a| from_lua(a))
            .filter(|a| a.is_negative())
        else {
            return;
        };
        let p = u64::try_from(-over.picodollars()).unwrap_or(u64::MAX);
        self.stats.over_limit_found.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "cluster: {key}: the nodes hold {p} picodollars past the limit \
             (admitted while Redis was unreachable, or a lowered limit)"
        );
        self.stats
            .over_limit_max_picodollars
            .fetch_max(p, Ordering::Relaxed);
    }

    fn push_one(&mut self, seq: u64, c: &Contribution) {
        if !self.declared.contains(&(c.entity, c.period.start_ms)) {
            // The first call on this hash declares the whole state.
            let _ = self.draw(
                c.entity,
                c.period,
                (c.limit, c.limit_version),
                Money::ZERO,
                Money::ZERO,
                Some((c.spent, seq, c.outstanding)),
            );
            return;
        }
        let Some(key) = self.key(c.entity, c.period) else {
            return;
        };
        let (Some(spent), Some(limit)) = (to_lua(c.spent), to_lua(c.limit)) else {
            return;
        };
        let node = self.node.clone();
        let script = self.push.clone();
        let acked = self.acked_seq(c.entity, c.period);
        let ttl = self.ttl_ms;
        let Some(conn) = self.conn() else {
            return;
        };
        let result: redis::RedisResult<Vec<String>> = script
            .key(&key)
            .arg(&node)
            .arg(&spent)
            .arg(seq)
            .arg(&limit)
            .arg(c.limit_version)
            .arg(acked)
            .arg(ttl)
            .invoke(conn);
        self.stats.pushes.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            self.touch_feed(&key);
        }
        match result {
            Ok(out) => {
                self.stats.connected.store(true, Ordering::Relaxed);
                self.pushed_reply(&key, seq, c, &out);
            }
            Err(e) => {
                self.failed("a push", &e);
            }
        }
    }
}
