//! The request path, laid out as named phases over one per-request context:
//! read (http), route ([`route`], [`probe`]), admit ([`admit`], [`books`];
//! the body changed by [`rewrite`]), forward ([`forward`]), stream ([`stream`]),
//! settle ([`settle`]), then the request log. Beside them, [`usage`]
//! answers a key holder's `GET /v1/bursar/usage` (its spend and last
//! requests, read from the ledger and the request log's query thread).
//!
//! Everything here runs on a worker thread: it never locks and never blocks.

pub mod admit;
pub mod books;
pub mod forward;
pub mod probe;
pub mod rewrite;
pub mod route;
pub mod settle;
pub mod stream;
pub mod targets;
pub mod usage;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use monoio::net::TcpStream;
use serde_json::json;

use crate::catalog::{Catalog, CatalogHandle};
use crate::config::ProviderKind;
use crate::error::ApiError;
use crate::http::response;
use crate::http::server::{ClientOut, ReadError, RequestView, ServerConn};
use crate::limits::Limits;
use crate::metrics::WorkerStats;
use crate::providers::mock::{self, MockReply};
use crate::upstream::resolver::Resolver;
use crate::upstream::Pool;
use route::{classify, Endpoint, Route};

/// A worker's state, shared by its connection tasks (one thread, `Rc`).
pub struct Worker {
    pub id: usize,
    pub catalog: CatalogHandle,
    pub limits: Limits,
    pub stats: Arc<WorkerStats>,
    pub resolver: Arc<Resolver>,
    pub pool: RefCell<Pool>,
    pub tls: monoio_rustls::TlsConnector,
    pub shutdown: Arc<AtomicBool>,
    /// Tokenizer counts for streams without usage go to the tokenizer thread.
    pub count_jobs: crossbeam_channel::Sender<CountRequest>,
    /// The semantic cache's confirmations go to the confirmation thread.
    pub confirm_jobs: crate::cache::confirm::ConfirmSender,
    /// This worker's side of the books: lease shard and ledger link.
    pub books: books::WorkerBooks,
    /// The request log's queue (`None`: `[log] sink = "off"`).
    pub log: Option<crate::reqlog::LogSender>,
    /// The request log's query thread, for the usage route's last requests
    /// (`None`: `[log] sink = "off"`).
    pub usage_log: Option<usage::UsageLog>,
    /// This worker's response cache shard, made with the settings it was
    /// made for (a catalog with other bounds makes a new, empty one).
    cache: RefCell<Option<(crate::catalog::CacheSettings, crate::cache::Shard)>>,
    /// This worker's semantic index, made for the models it was made with
    /// (other models, other vectors: a new, empty one).
    /// Shared with the tasks that index a prompt once its confirmation
    /// vector arrives.
    semantic: Rc<SemanticSlot>,
    ids: RequestIds,
    spin: Cell<usize>,
    /// Internal overhead per forwarded request, in nanoseconds.
    overhead: RefCell<hdrhistogram::Histogram<u64>>,
    /// The overhead histogram's count when it was last published.
    overhead_published: std::cell::Cell<u64>,
    /// When the housekeeping timer last fired ([`Worker::publish_overhead`]).
    housekept_at: std::cell::Cell<Option<std::time::Instant>>,
    /// The catalog as this worker last saw it: cloning an `Rc` per request
    /// keeps the shared `Arc` count (one cache line for all workers) cold.
    /// The extra allocation is once per published catalog, on purpose.
    #[allow(clippy::redundant_allocation)]
    catalog_cache: RefCell<Rc<Arc<Catalog>>>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        catalog: CatalogHandle,
        limits: Limits,
        stats: Arc<WorkerStats>,
        resolver: Arc<Resolver>,
        tls: Arc<rustls::ClientConfig>,
        shutdown: Arc<AtomicBool>,
        id_salt: u64,
        count_jobs: crossbeam_channel::Sender<CountRequest>,
        confirm_jobs: crate::cache::confirm::ConfirmSender,
        link: crate::books::thread::WorkerLink,
        log: Option<crate::reqlog::LogSender>,
        usage_log: Option<usage::UsageLog>,
    ) -> Worker {
        let pool = Pool::new(limits.pool_idle_per_upstream_max, limits.pool_idle_timeout);
        Worker {
            id,
            stats,
            resolver,
            pool: RefCell::new(pool),
            tls: monoio_rustls::TlsConnector::from(tls),
            shutdown,
            count_jobs,
            confirm_jobs,
            books: books::WorkerBooks::new(link),
            log,
            usage_log,
            cache: RefCell::new(None),
            semantic: Rc::new(RefCell::new(None)),
            ids: RequestIds::new(id_salt, id),
            spin: Cell::new(id),
            catalog_cache: RefCell::new(Rc::new(catalog.load_full())),
            overhead: RefCell::new(crate::metrics::overhead_histogram()),
            overhead_published: std::cell::Cell::new(0),
            housekept_at: std::cell::Cell::new(None),
            catalog,
            limits,
        }
    }

    /// The current catalog, to hold for a whole request (across awaits).
    #[allow(clippy::redundant_allocation)]
    pub fn catalog(&self) -> Rc<Arc<Catalog>> {
        let current = self.catalog.load();
        let mut cached = self.catalog_cache.borrow_mut();
        if !Arc::ptr_eq(&current, &**cached) {
            *cached = Rc::new(Arc::clone(&current));
        }
        Rc::clone(&cached)
    }

    /// Records one request's internal overhead.
    #[inline]
    pub fn record_overhead(&self, d: std::time::Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.overhead.borrow_mut().saturating_record(ns.max(1));
    }

    /// Publishes a copy of the overhead histogram for the control plane,
    /// when it recorded anything since the last copy (the copy is the size of
    /// the histogram's whole range, not worth making for nothing).
    pub fn publish_overhead(&self) {
        // Called by the housekeeping timer every OVERHEAD_PUBLISH_INTERVAL:
        // how late it fired is how long the event loop ran without yielding.
        let now = std::time::Instant::now();
        if let Some(last) = self.housekept_at.replace(Some(now)) {
            let late = now
                .duration_since(last)
                .saturating_sub(crate::limits::OVERHEAD_PUBLISH_INTERVAL);
            let late_us = i64::try_from(late.as_micros()).unwrap_or(i64::MAX);
            if late_us > self.stats.loop_lag_max_us.get() {
                self.stats.loop_lag_max_us.set(late_us);
            }
            if late >= crate::limits::WORKER_STALL {
                self.stats.stalls.inc();
                log::warn!("worker stalled: its event loop ran {late:?} without yielding");
            }
        }
        let h = self.overhead.borrow();
        if h.len() != self.overhead_published.get() {
            self.overhead_published.set(h.len());
            self.stats.publish_overhead(h.clone());
        }
    }

    /// The worker's cache shard for `settings`.
    pub fn cache_shard(
        &self,
        settings: &crate::catalog::CacheSettings,
    ) -> std::cell::RefMut<'_, crate::cache::Shard> {
        let mut slot = self.cache.borrow_mut();
        let fits = slot.as_ref().is_some_and(|(s, _)| {
            s.entries_per_worker == settings.entries_per_worker
                && s.bytes_per_worker == settings.bytes_per_worker
        });
        if !fits {
            let shard =
                crate::cache::Shard::new(settings.entries_per_worker, settings.bytes_per_worker);
            *slot = Some((*settings, shard));
        }
        std::cell::RefMut::map(slot, |s| match s {
            Some((_, shard)) => shard,
            None => unreachable!("set above"),
        })
    }

    /// The worker's semantic index for the models of `s`.
    pub fn semantic_shard(
        &self,
        s: &crate::catalog::SemanticSettings,
    ) -> std::cell::RefMut<'_, crate::cache::semantic::SemanticShard> {
        semantic_of(&self.semantic, &s.models)
    }

    /// Drops the semantic entries of answers the exact shard no longer
    /// holds (evicted, expired).
    pub fn semantic_forget(&self, dropped: &[crate::cache::CacheKey]) {
        if let Some((_, shard)) = self.semantic.borrow_mut().as_mut() {
            for k in dropped {
                shard.remove(*k);
            }
            self.stats.cache_semantic_entries.set(shard.len() as i64);
        }
    }

    /// Stores an answer in the cache shard (made by the request's lookup)
    /// and indexes its prompt for the semantic cache: at once without
    /// confirmation, or once the confirming model's vector is known (from
    /// the lookup, or asked for now; an entry whose vector does not come is
    /// served exactly only).
    pub fn cache_store(
        &self,
        store: &crate::cache::Store,
        body: Vec<u8>,
        stream: bool,
        plan: &settle::MeterPlan<'_>,
    ) {
        let Some(charged) = plan.charged.filter(|c| !c.estimated) else {
            return;
        };
        let catalog = self.catalog();
        let mut shard = self.cache_shard(&catalog.cache);
        shard.insert(
            store.exact,
            crate::cache::Entry {
                body: body.into(),
                stream,
                cost_picodollars: charged.cost.picodollars(),
                model: plan.model.into(),
                expires_at_ms: crate::ratelimit::now_ms().saturating_add(catalog.cache.ttl_ms),
            },
        );
        self.stats.cache_stores.inc();
        self.stats.cache_entries.set(shard.len() as i64);
        self.stats.cache_bytes.set(shard.bytes() as i64);
        let stored = shard.peek(store.exact).is_some();
        let dropped = shard.take_dropped();
        let entries_max = catalog.cache.entries_per_worker;
        drop(shard);
        self.semantic_forget(&dropped);
        let (Some(s), Some(p), true) = (catalog.semantic.as_ref(), &store.semantic, stored) else {
            return;
        };
        // Indexed by a task of this worker's, after the answer went out: an
        // insert into a large graph takes a few hundred microseconds (more
        // while it rebuilds) that the client must not wait for. The task
        // first sleeps past the event loop's next turn, so the answer's
        // write is submitted before the insert runs; with confirmation and
        // no vector from the lookup, it asks the confirmation thread first.
        let slot = Rc::clone(&self.semantic);
        let stats = Arc::clone(&self.stats);
        let jobs = self.confirm_jobs.clone();
        let models = Arc::clone(&s.models);
        let confirm_on = s.confirm_min.is_some();
        let (exact, mut p) = (store.exact, p.clone());
        monoio::spawn(async move {
            monoio::time::sleep(SEMANTIC_INDEX_DELAY).await;
            let v = match (confirm_on, p.confirm.take()) {
                (false, _) => None,
                (true, Some(v)) => Some(v),
                (true, None) => {
                    let asked = crate::cache::confirm::embed(
                        &jobs,
                        &models,
                        &p.query.prompt,
                        crate::config::cache::CONFIRM_TIMEOUT_MAX,
                    )
                    .await;
                    let Some(v) = asked else {
                        stats.cache_semantic_confirm_missed.inc();
                        return;
                    };
                    Some(v)
                }
            };
            let mut shard = semantic_of(&slot, &models);
            // Never more prompts than answers (an answer evicted meanwhile
            // is dropped from the index when a lookup finds it gone).
            if shard.len() < entries_max {
                shard.insert(exact, &p.query, &p.static_vec, v.as_deref());
            }
            stats.cache_semantic_entries.set(shard.len() as i64);
            stats.cache_semantic_bytes.set(shard.bytes() as i64);
        });
    }

    pub fn draining(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// A rotating number for spreading requests over an upstream's addresses.
    pub fn spin(&self) -> usize {
        let s = self.spin.get().wrapping_add(1);
        self.spin.set(s);
        s
    }
}

/// How long a stored answer's prompt waits before it is indexed: past the
/// event loop's next turn, so the answer's write is submitted first.
const SEMANTIC_INDEX_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

/// A worker's semantic index and the models its vectors come from.
type SemanticSlot = RefCell<
    Option<(
        Arc<crate::embed::Models>,
        crate::cache::semantic::SemanticShard,
    )>,
>;

/// The semantic index of `slot` for `models`: a new, empty one when it was
/// made for other models (another table, other vectors).
fn semantic_of<'a>(
    slot: &'a SemanticSlot,
    models: &Arc<crate::embed::Models>,
) -> std::cell::RefMut<'a, crate::cache::semantic::SemanticShard> {
    let mut slot = slot.borrow_mut();
    if !slot.as_ref().is_some_and(|(m, _)| Arc::ptr_eq(m, models)) {
        let shard = crate::cache::semantic::SemanticShard::new(models.table.dims());
        *slot = Some((Arc::clone(models), shard));
    }
    std::cell::RefMut::map(slot, |s| match s {
        Some((_, shard)) => shard,
        None => unreachable!("set above"),
    })
}

/// A tokenizer count for the tokenizer thread, with the price to cost it at.
pub struct CountRequest {
    pub job: crate::tokens::CountJob,
    pub price: Option<crate::prices::Price>,
    /// The request body, to estimate the prompt when the provider's usage
    /// is missing too (copied only on this rare path).
    pub body: Vec<u8>,
    pub family: crate::tokens::ModelFamily,
    /// The output the request allowed in all: bounds the hidden reasoning
    /// charged when the model bills some (see [`settle::add_hidden_reasoning`]).
    pub output_tokens_max: u64,
    /// Where the count goes back to the worker that settles the charge.
    pub reply: Option<futures_channel::oneshot::Sender<crate::tokens::MeterOutcome>>,
}

impl CountRequest {
    /// Counts the completion text and, if the prompt is unknown, estimates
    /// it from the request body; both with the model family's tokenizer.
    pub fn run(self) -> crate::tokens::MeterOutcome {
        let mut outcome = self.job.run();
        if outcome.prompt_estimate_missing {
            outcome.usage.prompt_tokens =
                crate::tokens::estimate_prompt_tokens(&self.body, self.family.encoding);
            outcome.prompt_estimate_missing = false;
        }
        settle::add_hidden_reasoning(
            &mut outcome,
            self.price.as_ref(),
            self.output_tokens_max,
            &self.body,
        );
        outcome
    }
}

/// A request id: `req_` then 28 hex digits, unique across workers and restarts
/// (a random per-process salt, the worker, a per-worker counter).
#[derive(Clone, Copy)]
pub struct RequestId([u8; 32]);

impl RequestId {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex and "req_" are ever written.
        std::str::from_utf8(&self.0).unwrap_or("req_invalid")
    }

    /// The id as the ledger keys a settle: its 28 hex digits.
    pub fn as_u128(&self) -> u128 {
        self.0[4..].iter().fold(0u128, |n, &c| {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => 0,
            };
            (n << 4) | u128::from(d)
        })
    }
}

struct RequestIds {
    prefix: u64,
    counter: Cell<u64>,
}

impl RequestIds {
    fn new(salt: u64, worker: usize) -> Self {
        RequestIds {
            prefix: (salt & !0xff) | (worker as u64 & 0xff),
            counter: Cell::new(0),
        }
    }

    fn next(&self) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.counter.get().wrapping_add(1);
        self.counter.set(n);
        let mut out = *b"req_0000000000000000000000000000";
        for i in 0..16 {
            out[4 + i] = HEX[((self.prefix >> (60 - 4 * i)) & 0xf) as usize];
        }
        for i in 0..12 {
            out[20 + i] = HEX[((n >> (44 - 4 * i)) & 0xf) as usize];
        }
        RequestId(out)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves one client connection until it closes, times out or errs.
pub async fn serve_connection(w: Rc<Worker>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut conn = ServerConn::new(stream);
    loop {
        match conn.read_request(&w.limits).await {
            Ok(()) => {}
            Err(ReadError::Closed | ReadError::Idle | ReadError::Io(_)) => break,
            Err(ReadError::Reject(e)) => {
                w.stats.bad_requests.inc();
                w.stats.response(e.status);
                let rid = w.ids.next();
                conn.wbuf.clear();
                response::error(&mut conn.wbuf, &e, rid.as_str(), false);
                let _ = conn.flush(&w.limits).await;
                break;
            }
        }
        let ready_at = Instant::now();
        let rid = w.ids.next();
        w.stats.requests_inflight.add(1);
        crate::io::set_eager_writes(
            w.stats.requests_inflight.get() <= crate::io::EAGER_WRITE_INFLIGHT_MAX,
        );
        let keep = handle(&w, &mut conn, &rid, ready_at).await;
        w.stats.requests_inflight.add(-1);
        if !keep || w.draining() {
            break;
        }
    }
}

/// Handles one request; returns whether the connection may serve another.
async fn handle(w: &Worker, conn: &mut ServerConn, rid: &RequestId, ready_at: Instant) -> bool {
    let (req, mut out) = conn.split(w.limits.idle_timeout);
    let keep = req.head.keep_alive && !w.draining();
    let path = req.head.path(req.bytes);
    let result = match classify(req.head.method(), path) {
        Route::Api(endpoint) => proxy_api(w, &req, &mut out, endpoint, rid, keep, ready_at).await,
        Route::ListModels => list_models(w, &req, &mut out, rid, keep).await,
        Route::GetModel(id) => get_model(w, &req, &mut out, id, rid, keep).await,
        Route::Usage => usage::usage(w, &req, &mut out, rid, keep).await,
        Route::Health => {
            let body = br#"{"status":"ok"}"#;
            response::json(out.wbuf, 200, rid.as_str(), keep, body);
            w.stats.response(200);
            Ok(out.flush().await.is_ok() && keep)
        }
        Route::MethodNotAllowed => Err(ApiError::method_not_allowed(format!(
            "method not allowed for {path}"
        ))),
        Route::NotFound => Err(ApiError::not_found(
            "unknown_url",
            format!("unknown request URL: {path}"),
        )),
    };
    match result {
        Ok(keep) => keep,
        Err(e) => {
            w.stats.response(e.status);
            if e.status == 502 {
                w.stats.upstream_errors.inc();
            } else if e.status == 504 {
                w.stats.upstream_timeouts.inc();
            }
            out.wbuf.clear();
            response::error(out.wbuf, &e, rid.as_str(), keep);
            out.flush().await.is_ok() && keep
        }
    }
}

/// Route, admit, then answer from the mock or forward upstream, and log the
/// request. An `Err` means nothing has been written to the client yet.
async fn proxy_api(
    w: &Worker,
    req: &RequestView<'_>,
    out: &mut ClientOut<'_>,
    endpoint: Endpoint,
    rid: &RequestId,
    keep: bool,
    ready_at: Instant,
) -> Result<bool, ApiError> {
    let catalog = w.catalog();
    let mut seed = None;
    let result = proxy_api_inner(
        w, &catalog, req, out, endpoint, rid, keep, ready_at, &mut seed,
    )
    .await;
    // Every authenticated request is logged, refused ones too (with the
    // status they got and no cost). The row is made now, after the response
    // was written; off the hot path: one non-blocking send.
    if let (Some(log), Some(mut seed)) = (&w.log, seed) {
        let status = match &result {
            Ok(_) => seed.status,
            Err(e) => e.status,
        };
        let billed = std::mem::take(&mut seed.billed_attempts);
        let row = seed.into_row(rid, endpoint, status, ready_at, &catalog.prices.version);
        // A failed attempt the provider reported usage for was charged under
        // its own id: it gets its own row, so the log's sums match the books.
        for (id, charged, status, provider) in billed {
            let mut r = row.clone();
            r.id = id.as_str().to_string();
            r.status = status;
            r.provider = std::sync::Arc::clone(provider);
            r.prompt_tokens = charged.usage.prompt_tokens;
            r.completion_tokens = charged.usage.completion_tokens;
            r.cached_tokens = charged.usage.cached_tokens;
            r.cache_write_tokens = charged.usage.cache_write_tokens;
            r.reasoning_tokens = charged.usage.reasoning_tokens;
            r.cost_picodollars = charged.cost.picodollars();
            r.estimated = charged.estimated;
            r.ttfb_us = None;
            log.try_log(r);
        }
        log.try_log(row);
    }
    result
}

/// What the request log needs of an authenticated request, gathered on the
/// way without allocating (borrowed from the catalog and the request) and
/// made into a [`LogRow`](crate::reqlog::LogRow) only once the response is
/// written, so the row's allocations stay out of the overhead window.
struct RowSeed<'c, 'r> {
    /// When the request started, unix milliseconds.
    time_ms: i64,
    key: &'c crate::catalog::VirtualKey,
    model: std::borrow::Cow<'r, str>,
    stream: bool,
    tags: Vec<(String, String)>,
    provider: Option<&'c std::sync::Arc<str>>,
    /// What the request came to (set by [`finish_seed`]).
    status: u16,
    ttfb_us: Option<u64>,
    charged: Option<settle::Charged>,
    /// Whether the model had a price ("unpriced" in the log when not).
    priced: bool,
    /// What the response cache did with the request, and on a hit the
    /// spend it avoided (what the answer cost when it was paid for).
    cache: crate::reqlog::CacheStatus,
    avoided_picodollars: i128,
    /// Failed attempts the provider reported usage for, each charged under
    /// its own request id: (id, charge, status, provider).
    billed_attempts: Vec<(RequestId, settle::Charged, u16, &'c std::sync::Arc<str>)>,
}

impl RowSeed<'_, '_> {
    fn into_row(
        self,
        rid: &RequestId,
        endpoint: Endpoint,
        status: u16,
        ready_at: Instant,
        price_version: &std::sync::Arc<str>,
    ) -> crate::reqlog::LogRow {
        let level = |kind| {
            self.key
                .chain
                .iter()
                .find(|l| l.kind == kind)
                .map(|l| std::sync::Arc::clone(&l.name))
        };
        let usage = self.charged.map(|c| c.usage).unwrap_or_default();
        crate::reqlog::LogRow {
            id: rid.as_str().to_string(),
            time_ms: self.time_ms,
            key: std::sync::Arc::clone(&self.key.name),
            team: level(crate::ledger::EntityKind::Team),
            customer: level(crate::ledger::EntityKind::Customer),
            provider: self
                .provider
                .map_or_else(|| "".into(), std::sync::Arc::clone),
            model: self.model.into_owned(),
            endpoint: std::borrow::Cow::Borrowed(endpoint.name()),
            status,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_tokens: usage.cached_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            cost_picodollars: self.charged.map_or(0, |c| c.cost.picodollars()),
            avoided_picodollars: self.avoided_picodollars,
            price_version: match (&self.charged, self.priced) {
                (Some(_), _) => std::sync::Arc::clone(price_version),
                (None, false) => "unpriced".into(),
                (None, true) => "".into(),
            },
            estimated: self.charged.is_some_and(|c| c.estimated),
            ttfb_us: self.ttfb_us,
            total_us: u64::try_from(ready_at.elapsed().as_micros()).unwrap_or(u64::MAX),
            cache_status: self.cache,
            stream: self.stream,
            tags: self.tags,
            prompt_text: None,
            completion_text: None,
        }
    }
}

/// Records in the seed what the request came to.
fn finish_seed(
    seed: &mut Option<RowSeed<'_, '_>>,
    plan: &settle::MeterPlan<'_>,
    ready_at: Instant,
) {
    let Some(seed) = seed else { return };
    seed.status = plan.status;
    seed.ttfb_us = plan.first_byte_at.map(|t| {
        u64::try_from(t.saturating_duration_since(ready_at).as_micros()).unwrap_or(u64::MAX)
    });
    seed.charged = plan.charged;
    seed.priced = plan.price.is_some();
}

#[allow(clippy::too_many_arguments)]
async fn proxy_api_inner<'c, 'r>(
    w: &Worker,
    catalog: &'c Catalog,
    req: &RequestView<'r>,
    out: &mut ClientOut<'_>,
    endpoint: Endpoint,
    rid: &RequestId,
    keep: bool,
    ready_at: Instant,
    row: &mut Option<RowSeed<'c, 'r>>,
) -> Result<bool, ApiError> {
    let key = admit::authenticate(catalog, req)?;
    let probe = probe::probe(req.body)?;
    let model = probe.model.as_deref().unwrap_or_default();
    if w.log.is_some() {
        *row = Some(RowSeed {
            time_ms: crate::ratelimit::now_ms(),
            key,
            model: probe.model.clone().unwrap_or_default(),
            stream: probe.streaming(),
            tags: Vec::new(),
            provider: None,
            status: 0,
            ttfb_us: None,
            charged: None,
            priced: true,
            cache: crate::reqlog::CacheStatus::None,
            avoided_picodollars: 0,
            billed_attempts: Vec::new(),
        });
    }
    // Attribution: x-bursar-tags, the body's `user` and `metadata`. Tags
    // exist for the request log and the tag budgets: with the log off and
    // no tag budget they are not read, so they can never refuse a request.
    let mut tag_levels = books::TagLevels::default();
    if row.is_some() || catalog.has_tag_budgets() {
        let parsed = crate::reqlog::parse_tags_counted(
            req.head.header(req.bytes, "x-bursar-tags"),
            probe.user.as_deref(),
            probe.metadata.as_ref(),
        )
        .map_err(|e| ApiError::bad_request("invalid_tags", e.to_string()))?;
        w.stats.tags_dropped.add(parsed.dropped);
        tag_levels = books::TagLevels::of(catalog, &parsed.tags);
        if let Some(r) = row.as_mut() {
            r.tags = parsed.tags;
        }
    }
    if !key.allows(model) {
        return Err(ApiError::forbidden(
            "model_not_allowed",
            format!("this API key may not use the model {model:?}"),
        ));
    }
    // Rate limits (the key's, then its team's): all or none; the permit's
    // concurrency slots are released when it drops, however the request ends.
    let permit = crate::ratelimit::Permit::acquire(
        &key.limiters,
        key.model_limiters(model),
        crate::ratelimit::now_ms(),
    )?;
    let routed = catalog.route(model).ok_or_else(|| {
        ApiError::not_found(
            "model_not_found",
            format!("the model {model:?} does not exist or is not served by this gateway"),
        )
    })?;
    // The response cache, before any routing or budget: a hit costs
    // nothing and no provider is asked.
    let mut store = None;
    if let Some(ns) = key.cache_namespace.as_deref() {
        let (skip, refresh) = match req.head.header(req.bytes, "x-bursar-cache") {
            None => (false, false),
            Some(v) => match v.trim_ascii() {
                b"skip" => (true, false),
                b"refresh" => (false, true),
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_value",
                        "x-bursar-cache must be \"skip\" or \"refresh\"",
                    ))
                }
            },
        };
        let semantic = catalog.semantic.as_ref();
        let keys = if !skip && endpoint != Endpoint::Messages {
            crate::cache::keys(
                ns,
                endpoint,
                req.body,
                catalog.cache.sampled,
                semantic.is_some(),
            )
            .ok()
        } else {
            None
        };
        if let Some(keys) = keys {
            let mut pending = None;
            let query = keys.semantic;
            if !refresh {
                let mut hit = answer_from_cache(w, catalog, keys.exact, req, out, rid, keep, None)
                    .map(|h| (h, crate::reqlog::CacheStatus::Hit));
                if let (None, Some(s), Some(q)) = (&hit, semantic, query) {
                    let (found, p) = semantic_lookup(w, s, q).await;
                    pending = Some(p);
                    if let Some((exact, similarity)) = found {
                        hit = answer_from_cache(
                            w,
                            catalog,
                            exact,
                            req,
                            out,
                            rid,
                            keep,
                            Some(similarity),
                        )
                        .map(|h| (h, crate::reqlog::CacheStatus::SemanticHit));
                        if hit.is_none() {
                            // Its answer expired or was evicted since.
                            w.semantic_forget(&[exact]);
                        }
                    }
                }
                if let Some(((model, avoided), status)) = hit {
                    w.stats.cache_hits.inc();
                    if status == crate::reqlog::CacheStatus::SemanticHit {
                        w.stats.cache_semantic_hits.inc();
                    }
                    w.stats
                        .cache_avoided_picodollars
                        .add(u64::try_from(avoided).unwrap_or(0));
                    w.stats.response(200);
                    if let Some(r) = row.as_mut() {
                        r.cache = status;
                        r.avoided_picodollars = avoided;
                        r.status = 200;
                        r.model = std::borrow::Cow::Owned(model.to_string());
                    }
                    return Ok(out.flush().await.is_ok() && keep);
                }
                w.stats.cache_misses.inc();
            } else if let (Some(s), Some(q)) = (semantic, query) {
                // A refreshed answer replaces the stored one, in the
                // semantic index too.
                pending = Some(crate::cache::semantic::Pending {
                    static_vec: static_embed(s, &q.prompt),
                    query: q,
                    confirm: None,
                });
            }
            if let Some(r) = row.as_mut() {
                r.cache = crate::reqlog::CacheStatus::Miss;
            }
            store = Some(crate::cache::Store {
                exact: keys.exact,
                semantic: pending,
            });
        }
    }
    let ctx = Ask {
        catalog,
        key,
        req,
        endpoint,
        probe: &probe,
        permit: &permit,
        tags: tag_levels,
        rid,
        keep,
        ready_at,
        cache: store.as_ref(),
    };
    // A budget running low sends the request to the fallback model at once
    // (`fallback_below_usd`, against this worker's view of the budgets).
    if let (Some(fallback), Some(below)) = (key.fallback_model.as_deref(), key.fallback_below) {
        let low = key
            .chain
            .iter()
            .any(|l| w.books.available(l.id).is_some_and(|left| left < below));
        if low && fallback != model && key.allows(fallback) {
            if let Some(routed) = catalog.route(fallback) {
                w.stats.budget_downgraded.inc();
                if let Some(r) = row.as_mut() {
                    r.model = std::borrow::Cow::Owned(fallback.to_string());
                }
                return route_and_forward(w, &ctx, out, routed, fallback, Some(fallback), row)
                    .await;
            }
        }
    }
    let result = route_and_forward(w, &ctx, out, routed, model, None, row).await;
    // Degrade before deny, second step: the budgets cannot afford the model
    // asked for (not even with a lower output cap), and the key or its team
    // names a cheaper one to fall back to.
    let fallback = match &result {
        Err(e) if e.status == 402 => key.fallback_model.as_deref(),
        _ => None,
    };
    let Some(fallback) = fallback.filter(|f| *f != model && key.allows(f)) else {
        return result;
    };
    let Some(routed) = catalog.route(fallback) else {
        return result;
    };
    w.stats.budget_downgraded.inc();
    if let Some(r) = row.as_mut() {
        r.model = std::borrow::Cow::Owned(fallback.to_string());
    }
    route_and_forward(w, &ctx, out, routed, fallback, Some(fallback), row).await
}

/// What every attempt of a request shares.
struct Ask<'c, 'r, 'p> {
    catalog: &'c Catalog,
    key: &'c crate::catalog::VirtualKey,
    req: &'p RequestView<'r>,
    endpoint: Endpoint,
    probe: &'p probe::Probe<'r>,
    permit: &'p crate::ratelimit::Permit,
    tags: books::TagLevels<'c>,
    rid: &'p RequestId,
    keep: bool,
    ready_at: Instant,
    /// Where the request's answer is stored in the response cache, when it
    /// may be.
    cache: Option<&'p crate::cache::Store>,
}

/// Sends the request for `model` (the one asked for, or the fallback
/// `downgraded_to`) to its targets in turn: a target whose budgets cannot
/// afford it is passed over for the next before any 402; one that fails
/// (unreachable, timed out, 429, 5xx) is left for the next while attempts
/// remain, and cools down after repeated failures. Nothing is written to the
/// client until an attempt answers.
async fn route_and_forward<'c: 'm, 'r, 'm>(
    w: &Worker,
    ask: &Ask<'c, 'r, '_>,
    out: &mut ClientOut<'_>,
    routed: crate::catalog::Routed<'c>,
    model: &'m str,
    downgraded_to: Option<&'m str>,
    row: &mut Option<RowSeed<'c, 'r>>,
) -> Result<bool, ApiError> {
    let catalog = ask.catalog;
    let endpoint = ask.endpoint;
    let probe = ask.probe;
    let price_of = |target_model: &str| {
        catalog
            .prices
            .get(target_model)
            .or_else(|| catalog.prices.get(model))
    };
    let mut targets = match routed {
        crate::catalog::Routed::Provider(_) => {
            // A plain route reads no clock and no health.
            targets::Targets::new(catalog, routed, model, 0, 0, |_| targets::Fit {
                fits_window: true,
                worst: None,
            })
        }
        crate::catalog::Routed::Group(_) => {
            let input = crate::tokens::prompt_upper_bound_tokens(ask.req.body.len());
            let cap = probe
                .output_cap(endpoint)
                .unwrap_or(catalog.pricing.default_max_output_tokens)
                .saturating_mul(probe.outputs_billed(endpoint));
            let seed = ask.rid.as_u128() as u64 ^ (w.spin() as u64).rotate_left(32);
            let now_ms = crate::ratelimit::now_ms().max(0) as u64;
            targets::Targets::new(catalog, routed, model, now_ms, seed, |m| {
                let price = price_of(m);
                targets::Fit {
                    fits_window: price
                        .and_then(|p| p.context_window)
                        .is_none_or(|window| input <= window),
                    worst: price
                        .and_then(|p| p.worst_case(input, cap))
                        .map(|c| c.picodollars()),
                }
            })
        }
    };
    let mut attempts = 0u32;
    // The first refusal of a budget, answered if no target can be afforded.
    let mut refusal: Option<ApiError> = None;
    let mut last_error: Option<ApiError> = None;
    while attempts < targets.attempts_max {
        let Some(target) = targets.next_target() else {
            break;
        };
        let provider = target.provider;
        if let Some(r) = row.as_mut() {
            r.provider = Some(&provider.name);
        }
        let translation =
            match crate::providers::translate::Translation::for_request(provider.kind, endpoint) {
                Ok(t) => t,
                Err(why) if targets.has_more() => {
                    last_error.get_or_insert(ApiError::bad_request("unsupported_endpoint", why));
                    continue;
                }
                Err(why) => {
                    return Err(last_error
                        .unwrap_or_else(|| ApiError::bad_request("unsupported_endpoint", why)))
                }
            };
        let price = price_of(target.model);
        if let Some(r) = row.as_mut() {
            r.priced = price.is_some();
        }
        if price.is_none() {
            // Rare path: the operational alerts' sampler names the model.
            w.stats
                .unpriced_models
                .record(target.model, crate::ratelimit::now_ms());
            if catalog.pricing.refuse_unpriced {
                let e = ApiError::bad_request(
                    "model_not_priced",
                    format!(
                        "the model {:?} has no price, so its cost cannot be booked; \
                         add a [[prices]] entry for it, or set [pricing] unpriced = \"allow\"",
                        target.model
                    ),
                );
                if targets.has_more() {
                    last_error.get_or_insert(e);
                    continue;
                }
                return Err(last_error.unwrap_or(e));
            }
        }
        let chain = Chain {
            catalog,
            key: ask.key,
            provider,
            model,
            tags: ask.tags,
        };
        // Input the provider adds that the body does not hold (a tool-use
        // system prompt), reserved whatever the body says.
        let extra_input = provider.kind.hidden_prompt_tokens_max();
        let admitted = match admit_budget(
            w,
            &chain,
            endpoint,
            probe,
            price,
            ask.req.body,
            extra_input,
        )
        .await
        {
            Ok(a) => a,
            Err(e) if e.status == 402 && targets.has_more() => {
                // Budget-aware routing: the next target may be affordable
                // (another provider's budget, a cheaper model).
                w.stats.budget_rerouted.inc();
                refusal.get_or_insert(e);
                continue;
            }
            // The first target's refusal speaks for the group; any other
            // error (the ledger unavailable) for itself.
            Err(e) if e.status == 402 => return Err(refusal.unwrap_or(e)),
            Err(e) => return Err(e),
        };
        attempts += 1;
        let hold = Some(admitted.hold);
        let mut body: std::borrow::Cow<'_, [u8]> = match admitted.body {
            Some(b) => std::borrow::Cow::Owned(b),
            None => std::borrow::Cow::Borrowed(ask.req.body),
        };
        if probe.model.as_deref() != Some(target.model) {
            body = std::borrow::Cow::Owned(rewrite::with_model(&body, target.model).ok_or_else(
                || {
                    ApiError::bad_request(
                        "invalid_request_body",
                        "the request body is not a JSON object",
                    )
                },
            )?);
        }
        if provider.kind == ProviderKind::Mock {
            let mut plan = settle::MeterPlan {
                protocol: endpoint.protocol(),
                strip_usage_chunk: false,
                model: target.model,
                price,
                permit: ask.permit,
                body: &body,
                client_body: ask.req.body,
                hold,
                lowered_cap: admitted.lowered_cap,
                status: 0,
                first_byte_at: None,
                charged: None,
                provider: &provider.header_line,
                attempts,
                downgraded_to,
                cache: ask.cache.filter(|_| downgraded_to.is_none()),
            };
            let result = answer_from_mock(w, ask, out, &mut plan).await;
            if result.is_ok() {
                finish_seed(row, &plan, ask.ready_at);
            }
            return result;
        }
        // Ask for usage on every OpenAI stream that carries it only on
        // request; a translated stream always has it. Either way the client
        // sees it only if it asked.
        let client_wants_usage = probe.client_wants_usage();
        let usage_rewrite = if translation == crate::providers::translate::Translation::None
            && probe.streaming()
            && endpoint.usage_on_request()
            && !client_wants_usage
        {
            rewrite::with_usage_requested(&body, probe.stream_options.is_present())
        } else {
            None
        };
        let translated = translation
            .request(
                usage_rewrite.as_deref().unwrap_or(&body),
                catalog.pricing.default_max_output_tokens,
            )
            .map_err(|e| ApiError::bad_request("invalid_request_body", e.to_string()))?;
        let mut plan = settle::MeterPlan {
            protocol: endpoint.protocol(),
            strip_usage_chunk: usage_rewrite.is_some()
                || (translation != crate::providers::translate::Translation::None
                    && probe.streaming()
                    && !client_wants_usage),
            model: target.model,
            price,
            permit: ask.permit,
            body: translated
                .as_deref()
                .or(usage_rewrite.as_deref())
                .unwrap_or(&body),
            client_body: ask.req.body,
            hold,
            lowered_cap: admitted.lowered_cap,
            status: 0,
            first_byte_at: None,
            charged: None,
            provider: &provider.header_line,
            attempts,
            downgraded_to,
            // An answer for a fallback model is not the answer to the
            // request's own key.
            cache: ask.cache.filter(|_| downgraded_to.is_none()),
        };

        let auth = provider.auth_header();
        // Gemini and Bedrock name the model in the path.
        let made_path = match provider.kind {
            ProviderKind::Gemini => Some(
                crate::providers::gemini::generate_path(target.model, probe.streaming())
                    .map_err(|e| ApiError::bad_request("invalid_value", e.to_string()))?,
            ),
            ProviderKind::Bedrock => Some(crate::providers::bedrock::converse_path(
                target.model,
                probe.streaming(),
            )),
            _ => None,
        };
        let signed = match (&provider.wire, &provider.upstream, &made_path) {
            (
                crate::config::WireConfig::Bedrock {
                    region,
                    access_key_id,
                    secret_access_key,
                    session_token,
                },
                Some(up),
                Some(path),
            ) => {
                let full_path = format!("{}{path}", up.base_path);
                crate::providers::bedrock::sign(&crate::providers::bedrock::SigningInput {
                    method: "POST",
                    host: &up.host_header,
                    path: &full_path,
                    headers: &[],
                    body: plan.body,
                    region,
                    service: "bedrock",
                    access_key_id: access_key_id.expose(),
                    secret_access_key: secret_access_key.expose(),
                    session_token: session_token.as_ref().map(|t| t.expose()),
                    time: std::time::SystemTime::now(),
                })
                .map_err(|e| ApiError::internal(format!("the request could not be signed: {e}")))?
            }
            _ => Vec::new(),
        };
        let outbound = forward::Outbound {
            path: match (&provider.wire, provider.kind, &made_path) {
                (crate::config::WireConfig::Azure { api_version, .. }, _, _) => {
                    let deployment = provider.wire.azure_deployment(target.model);
                    // A model the config did not map (a "*" provider) goes
                    // into the request line as it is: only a plain path
                    // segment may (no CR/LF, spaces, '/', '?', '%', "..").
                    if !crate::config::providers::is_token(deployment) {
                        return Err(ApiError::bad_request(
                            "invalid_value",
                            format!(
                                "model {:?} cannot be an Azure deployment name (letters, digits, \
                                 '-', '_', '.', '~')",
                                target.model
                            ),
                        ));
                    }
                    forward::UpstreamPath::Azure {
                        deployment,
                        endpoint,
                        api_version,
                    }
                }
                (_, ProviderKind::Anthropic, _) => forward::UpstreamPath::Fixed("/v1/messages"),
                (_, _, Some(path)) => forward::UpstreamPath::Made(path),
                _ => forward::UpstreamPath::Endpoint(endpoint),
            },
            auth: auth.map(|(n, v, _)| (n, v)),
            default_header: match &provider.wire {
                crate::config::WireConfig::Anthropic { version } => {
                    Some(("anthropic-version", version.as_str()))
                }
                _ => None,
            },
            signed: &signed,
        };
        let call = forward::Call {
            provider,
            outbound,
            translation,
            model: target.model,
            stream: probe.streaming(),
            may_fail_over: attempts < targets.attempts_max && targets.has_more(),
            may_rotate_key: attempts < targets.attempts_max && provider.key_count() > 1,
        };
        // Only a group target's health measures the attempt.
        let started = target.health.map(|_| Instant::now());
        let inflight = target.health.map(|h| h.begin());
        let attempt = forward::forward(
            w,
            &call,
            endpoint,
            ask.req,
            out,
            ask.rid,
            ask.keep,
            ask.ready_at,
            &mut plan,
        )
        .await;
        drop(inflight);
        match attempt {
            forward::Attempt::Done(mut result) => {
                if let Err(e) = result.as_mut() {
                    e.attempts = attempts;
                }
                let status = result.as_ref().map_or_else(|e| e.status, |_| plan.status);
                // The provider's error rate (operational alerts): this
                // worker's own slot, a relaxed load and store.
                provider.outcomes.record(w.id, status);
                if let (Some(h), Some(g)) = (target.health, targets.group) {
                    if status == 429 || status >= 500 {
                        h.failed(
                            crate::ratelimit::now_ms().max(0) as u64,
                            g.cooldown_ms,
                            g.failures_before_cooldown,
                        );
                    } else {
                        let ttfb = started.map_or(std::time::Duration::ZERO, |t| {
                            plan.first_byte_at.unwrap_or_else(Instant::now) - t
                        });
                        h.succeeded(u64::try_from(ttfb.as_micros()).unwrap_or(u64::MAX));
                    }
                }
                finish_seed(row, &plan, ask.ready_at);
                return result;
            }
            forward::Attempt::Failed {
                error,
                status,
                key_refused,
                billed,
            } => {
                provider
                    .outcomes
                    .record(w.id, status.unwrap_or(error.status));
                w.stats.upstream_failovers.inc();
                if let (Some(h), Some(g)) = (target.health, targets.group) {
                    if !key_refused || status == Some(429) {
                        h.failed(
                            crate::ratelimit::now_ms().max(0) as u64,
                            g.cooldown_ms,
                            g.failures_before_cooldown,
                        );
                    }
                }
                if let (Some((id, charged)), Some(r)) = (billed, row.as_mut()) {
                    r.billed_attempts.push((
                        id,
                        charged,
                        status.unwrap_or(error.status),
                        &provider.name,
                    ));
                }
                if key_refused {
                    if let Some((_, _, index)) = auth {
                        if provider.rotate_key(index) {
                            targets.again();
                        }
                    }
                }
                log::debug!(
                    "request {}: attempt {attempts} at {} failed: {}",
                    ask.rid.as_str(),
                    provider.name,
                    error.message
                );
                last_error = Some(error);
            }
        }
    }
    let mut e = last_error.or(refusal).unwrap_or_else(|| {
        ApiError::service_unavailable(format!("no target of the model {model:?} is available"))
    });
    e.attempts = attempts;
    Err(e)
}

/// The static embedding of `prompt` (stage a's vector).
fn static_embed(s: &crate::catalog::SemanticSettings, prompt: &str) -> Vec<f32> {
    let mut ids = Vec::new();
    let mut v = Vec::new();
    s.models.table.embed(prompt, &mut ids, &mut v);
    v
}

/// The semantic cache's lookup (stages a, b and c): the exact key of the
/// stored answer to the same question in other words, with its similarity,
/// if there is one; and what indexing this prompt needs if it is stored.
async fn semantic_lookup(
    w: &Worker,
    s: &crate::catalog::SemanticSettings,
    query: crate::cache::semantic::Query,
) -> (
    Option<(crate::cache::CacheKey, f32)>,
    crate::cache::semantic::Pending,
) {
    let static_vec = static_embed(s, &query.prompt);
    let mut candidates = Vec::new();
    {
        let mut shard = w.semantic_shard(s);
        let (seen, refused) = (shard.candidates, shard.guard_refusals);
        shard.candidates(&query, &static_vec, s.similarity_min, &mut candidates);
        w.stats
            .cache_semantic_candidates
            .add(shard.candidates - seen);
        w.stats
            .cache_semantic_guard_refusals
            .add(shard.guard_refusals - refused);
    }
    let mut pending = crate::cache::semantic::Pending {
        query,
        static_vec,
        confirm: None,
    };
    if candidates.is_empty() {
        return (None, pending);
    }
    let Some(confirm_min) = s.confirm_min else {
        // No confirmation: the static table's best candidate that passed
        // the guards.
        let best = candidates
            .iter()
            .max_by(|a, b| a.similarity.total_cmp(&b.similarity))
            .map(|c| (c.exact, c.similarity));
        return (best, pending);
    };
    let Some(v) = crate::cache::confirm::embed(
        &w.confirm_jobs,
        &s.models,
        &pending.query.prompt,
        s.confirm_timeout,
    )
    .await
    else {
        w.stats.cache_semantic_confirm_missed.inc();
        return (None, pending);
    };
    let found = crate::cache::semantic::confirmed(&candidates, &v, confirm_min);
    if found.is_none() {
        w.stats
            .cache_semantic_confirm_refusals
            .add(candidates.len() as u64);
    }
    pending.confirm = Some(v);
    (found, pending)
}

/// Writes the cached answer to `key` into the client's buffer, if the
/// worker's shard has it: the model it names and the spend it avoids, or
/// `None` on a miss. The
/// answer costs nothing; a stream is replayed as one chunk, its cost (0)
/// in the head.
#[allow(clippy::too_many_arguments)]
fn answer_from_cache(
    w: &Worker,
    catalog: &Catalog,
    key: crate::cache::CacheKey,
    req: &RequestView<'_>,
    out: &mut ClientOut<'_>,
    rid: &RequestId,
    keep: bool,
    similarity: Option<f32>,
) -> Option<(Box<str>, i128)> {
    let mut shard = w.cache_shard(&catalog.cache);
    let found = shard.get(key, crate::ratelimit::now_ms()).is_some();
    let dropped = shard.take_dropped();
    if !dropped.is_empty() {
        drop(shard);
        w.semantic_forget(&dropped);
        shard = w.cache_shard(&catalog.cache);
    }
    if !found {
        return None;
    }
    let entry = shard.peek(key)?;
    let http10 = req.head.version_minor == 0;
    response::begin(out.wbuf, 200);
    let kind: &[u8] = if entry.stream {
        b"text/event-stream; charset=utf-8"
    } else {
        b"application/json"
    };
    response::header(out.wbuf, "content-type", kind);
    response::header(out.wbuf, "x-request-id", rid.as_str().as_bytes());
    match similarity {
        None => out.wbuf.extend_from_slice(b"x-bursar-cache: hit\r\n"),
        Some(s) => {
            use std::io::Write;
            out.wbuf
                .extend_from_slice(b"x-bursar-cache: semantic-hit\r\n");
            let _ = write!(out.wbuf, "x-bursar-cache-similarity: {s:.4}\r\n");
        }
    }
    out.wbuf.extend_from_slice(b"x-bursar-cost-usd: 0\r\n");
    if entry.stream && !http10 {
        response::finish(out.wbuf, response::ResponseFraming::Chunked, keep);
        crate::http::chunked::write_chunk_header(out.wbuf, entry.body.len());
        out.wbuf.extend_from_slice(&entry.body);
        out.wbuf.extend_from_slice(b"\r\n0\r\n\r\n");
    } else {
        response::finish(
            out.wbuf,
            response::ResponseFraming::Length(entry.body.len()),
            keep,
        );
        out.wbuf.extend_from_slice(&entry.body);
    }
    Some((entry.model.clone(), entry.cost_picodollars))
}

/// Answers a request from the in-process mock provider.
async fn answer_from_mock(
    w: &Worker,
    ask: &Ask<'_, '_, '_>,
    out: &mut ClientOut<'_>,
    plan: &mut settle::MeterPlan<'_>,
) -> Result<bool, ApiError> {
    let (reply, usage) =
        mock::respond_with_usage(ask.endpoint, plan.body, ask.rid.as_str(), unix_now())?;
    plan.status = 200;
    if let Some(u) = &usage {
        w.stats.tokens.record(u, false, plan.price);
        ask.permit
            .record_tokens(crate::ratelimit::now_ms(), u.total_tokens());
    }
    let settled = settle::charge(w, plan, ask.rid, usage, false).await;
    plan.first_byte_at = Some(Instant::now());
    Ok(send_mock(
        w,
        out,
        reply,
        ask.rid,
        ask.keep,
        ask.req.head.version_minor == 0,
        plan,
        settled,
    )
    .await)
}

/// What budget admission decided for a request.
struct Admitted<'w> {
    hold: books::Hold<'w>,
    /// The body to send instead of the client's (an output cap added or lowered).
    body: Option<Vec<u8>>,
    /// The output cap was lowered to this to fit a strict budget.
    lowered_cap: Option<u64>,
}

/// Every budget a request is charged to: its key's chain (key, team,
/// customer), its provider, the model gateway-wide, the key's, team's and
/// customer's budgets on the model, and the tag budgets it meets.
struct Chain<'c> {
    catalog: &'c Catalog,
    key: &'c crate::catalog::VirtualKey,
    provider: &'c crate::catalog::Provider,
    model: &'c str,
    tags: books::TagLevels<'c>,
}

impl<'c> Chain<'c> {
    fn levels(&self) -> impl Iterator<Item = &'c crate::catalog::Level> + '_ {
        self.key
            .chain
            .iter()
            .chain(self.provider.level.iter())
            .chain(self.catalog.model_level(self.model))
            .chain(self.key.model_levels(self.model))
            .chain(self.tags.iter())
    }
}

/// Reserves the request's worst case at every strict level of its chain, or
/// refuses it: 402 when a budget cannot afford it (after trying a lower output
/// cap, if configured), 503 when the ledger cannot answer.
async fn admit_budget<'w>(
    w: &'w Worker,
    chain: &Chain<'_>,
    endpoint: Endpoint,
    probe: &probe::Probe<'_>,
    price: Option<&crate::prices::Price>,
    body: &[u8],
    extra_input_tokens: u64,
) -> Result<Admitted<'w>, ApiError> {
    let levels = books::Levels::of(chain.levels()).ok_or_else(|| {
        log::error!(
            "a request met more than {} budget levels",
            books::LEVELS_MAX
        );
        ApiError::internal("the request's budget levels are more than the books take")
    })?;
    let pricing = &chain.catalog.pricing;
    let outputs = probe.outputs_billed(endpoint);
    let client_cap = probe.output_cap(endpoint);
    let cap = client_cap.unwrap_or(pricing.default_max_output_tokens);
    // The exception scan (does the body refer to input it does not hold?)
    // costs a pass per marker: only a strict level needs the true bound. A
    // soft-only chain keeps a cheaper one, used only to charge a response
    // that comes back without usage.
    let input = if levels.has_strict() {
        let unbounded = price
            .and_then(|p| p.context_window)
            .unwrap_or(pricing.unbounded_input_tokens);
        books::input_bound(body, unbounded)
    } else {
        crate::tokens::prompt_upper_bound_tokens(body.len())
    }
    .saturating_add(extra_input_tokens);
    let worst = match price {
        // Unpriced and allowed: nothing can be reserved; counted, not charged.
        None => crate::money::Money::ZERO,
        Some(p) => cap
            .checked_mul(outputs)
            .and_then(|out| p.worst_case(input, out))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_value",
                    "the request's output cap is too large to be costed",
                )
            })?,
    };
    let strict = levels.has_strict() && worst.is_positive();
    // A strict level needs a bound on the output: send the cap it reserved,
    // as the only cap member the upstream can read (a client's `null` one
    // is rewritten, never shadowed). A body that cannot be given one is not
    // forwarded uncapped.
    let mut new_body = None;
    if strict && client_cap.is_none() && endpoint.output_cap_member().is_some() {
        new_body = Some(
            rewrite::with_output_cap(body, endpoint, cap, probe.output_cap_present(endpoint))
                .ok_or_else(uncappable)?,
        );
    }
    let refusal = match w.books.admit(&levels, worst).await {
        Ok(mut hold) => {
            hold.set_output_tokens_max(cap.saturating_mul(outputs));
            return Ok(Admitted {
                hold,
                body: new_body,
                lowered_cap: None,
            });
        }
        Err(books::Refusal::Unavailable(why)) => return Err(ApiError::service_unavailable(why)),
        Err(books::Refusal::Exhausted { entity, available }) => (entity, available),
    };
    let (mut entity, available) = refusal;
    if let (true, Some(p), Some(available)) = (pricing.degrade_before_deny, price, available) {
        if endpoint.output_cap_member().is_some() {
            if let Some(lower) = books::affordable_output_cap(p, input, outputs, cap, available) {
                let lower_worst = lower
                    .checked_mul(outputs)
                    .and_then(|out| p.worst_case(input, out))
                    .unwrap_or(worst);
                match w.books.admit(&levels, lower_worst).await {
                    Ok(mut hold) => {
                        let body = rewrite::with_output_cap(
                            body,
                            endpoint,
                            lower,
                            probe.output_cap_present(endpoint),
                        )
                        .ok_or_else(uncappable)?;
                        hold.set_output_tokens_max(lower.saturating_mul(outputs));
                        w.stats.budget_degraded.inc();
                        return Ok(Admitted {
                            hold,
                            body: Some(body),
                            lowered_cap: Some(lower),
                        });
                    }
                    Err(books::Refusal::Unavailable(why)) => {
                        return Err(ApiError::service_unavailable(why))
                    }
                    Err(books::Refusal::Exhausted { entity: e, .. }) => entity = e,
                }
            }
        }
    }
    w.stats.budget_refused.inc();
    let level = chain.levels().find(|l| l.id == entity);
    let view = w.books.refused(entity).await;
    Err(books::budget_exceeded(level, view.as_ref()))
}

/// The refusal of a body the gateway must cap but cannot rewrite (the probe
/// accepted it, so this is not expected; it is never forwarded uncapped).
fn uncappable() -> ApiError {
    ApiError::bad_request(
        "invalid_request_body",
        "the request body could not be given the output cap its budget needs",
    )
}

/// Adds the cost headers of a settled request.
fn cost_headers(wbuf: &mut Vec<u8>, settled: Option<books::Settled>, lowered_cap: Option<u64>) {
    if let Some(s) = settled {
        wbuf.extend_from_slice(b"x-bursar-cost-usd: ");
        s.charged.extend_decimal(wbuf);
        wbuf.extend_from_slice(b"\r\n");
        if let Some(r) = s.remaining {
            wbuf.extend_from_slice(b"x-bursar-budget-remaining-usd: ");
            r.extend_decimal(wbuf);
            wbuf.extend_from_slice(b"\r\n");
        }
    }
    if let Some(cap) = lowered_cap {
        wbuf.extend_from_slice(b"x-bursar-output-cap-lowered: ");
        response::push_decimal(wbuf, cap);
        wbuf.extend_from_slice(b"\r\n");
    }
}

/// Adds the routing headers: the provider that answered, the attempts made,
/// and the fallback model when the budgets sent the request to one.
fn route_headers(wbuf: &mut Vec<u8>, plan: &settle::MeterPlan<'_>) {
    const ATTEMPTS: [&[u8]; 9] = [
        b"x-bursar-attempts: 0\r\n",
        b"x-bursar-attempts: 1\r\n",
        b"x-bursar-attempts: 2\r\n",
        b"x-bursar-attempts: 3\r\n",
        b"x-bursar-attempts: 4\r\n",
        b"x-bursar-attempts: 5\r\n",
        b"x-bursar-attempts: 6\r\n",
        b"x-bursar-attempts: 7\r\n",
        b"x-bursar-attempts: 8\r\n",
    ];
    const _: () = assert!(crate::limits::UPSTREAM_ATTEMPTS_MAX < ATTEMPTS.len());
    // A provider whose name a header cannot carry has an empty line: it goes
    // unannounced rather than break the head.
    wbuf.extend_from_slice(plan.provider);
    wbuf.extend_from_slice(ATTEMPTS[(plan.attempts as usize).min(ATTEMPTS.len() - 1)]);
    if plan.cache.is_some() {
        wbuf.extend_from_slice(b"x-bursar-cache: miss\r\n");
    }
    if let Some(m) = plan.downgraded_to {
        if m.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            response::header(wbuf, "x-bursar-model-downgraded", m.as_bytes());
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_mock(
    w: &Worker,
    out: &mut ClientOut<'_>,
    reply: MockReply,
    rid: &RequestId,
    keep: bool,
    http10: bool,
    plan: &settle::MeterPlan<'_>,
    settled: Option<books::Settled>,
) -> bool {
    w.stats.response(200);
    match reply {
        MockReply::Json(body) => {
            response::begin(out.wbuf, 200);
            response::header(out.wbuf, "content-type", b"application/json");
            response::header(out.wbuf, "x-request-id", rid.as_str().as_bytes());
            cost_headers(out.wbuf, settled, plan.lowered_cap);
            route_headers(out.wbuf, plan);
            response::finish(
                out.wbuf,
                response::ResponseFraming::Length(body.len()),
                keep,
            );
            out.wbuf.extend_from_slice(&body);
            if let Some(key) = plan.cache {
                w.cache_store(key, body, false, plan);
            }
            out.flush().await.is_ok() && keep
        }
        MockReply::Events(events) => {
            let framing = if http10 {
                response::ResponseFraming::Close
            } else {
                response::ResponseFraming::Chunked
            };
            response::begin(out.wbuf, 200);
            response::header(
                out.wbuf,
                "content-type",
                b"text/event-stream; charset=utf-8",
            );
            response::header(out.wbuf, "cache-control", b"no-cache");
            response::header(out.wbuf, "x-request-id", rid.as_str().as_bytes());
            // The whole answer is known before it is sent: the cost goes in
            // the head here (a relayed stream sends it as a trailer).
            cost_headers(out.wbuf, settled, plan.lowered_cap);
            route_headers(out.wbuf, plan);
            response::finish(out.wbuf, framing, keep);
            for e in &events {
                if framing == response::ResponseFraming::Chunked {
                    crate::http::chunked::write_chunk_header(out.wbuf, e.len());
                    out.wbuf.extend_from_slice(e);
                    out.wbuf.extend_from_slice(b"\r\n");
                } else {
                    out.wbuf.extend_from_slice(e);
                }
            }
            if framing == response::ResponseFraming::Chunked {
                out.wbuf.extend_from_slice(b"0\r\n\r\n");
            }
            if let Some(key) = plan.cache {
                w.cache_store(key, events.concat(), true, plan);
            }
            w.stats.streams_completed.inc();
            out.flush().await.is_ok() && keep && !http10
        }
    }
}

async fn list_models(
    w: &Worker,
    req: &RequestView<'_>,
    out: &mut ClientOut<'_>,
    rid: &RequestId,
    keep: bool,
) -> Result<bool, ApiError> {
    let catalog = w.catalog.load();
    let key = admit::authenticate(&catalog, req)?;
    let data: Vec<_> = catalog
        .models_for(key)
        .into_iter()
        .map(|(id, provider)| json!({"id": id, "object": "model", "created": 0, "owned_by": provider}))
        .collect();
    let body = json!({"object": "list", "data": data}).to_string();
    response::json(out.wbuf, 200, rid.as_str(), keep, body.as_bytes());
    w.stats.response(200);
    Ok(out.flush().await.is_ok() && keep)
}

async fn get_model(
    w: &Worker,
    req: &RequestView<'_>,
    out: &mut ClientOut<'_>,
    id: &str,
    rid: &RequestId,
    keep: bool,
) -> Result<bool, ApiError> {
    let catalog = w.catalog.load();
    let key = admit::authenticate(&catalog, req)?;
    let provider = catalog
        .is_listed(id)
        .then(|| catalog.route(id))
        .flatten()
        .filter(|_| key.allows(id))
        .ok_or_else(|| {
            ApiError::not_found(
                "model_not_found",
                format!("the model {id:?} does not exist"),
            )
        })?;
    let owned_by = match provider {
        crate::catalog::Routed::Provider(p) => &*p.name,
        crate::catalog::Routed::Group(_) => "bursar",
    };
    let body = json!({"id": id, "object": "model", "created": 0, "owned_by": owned_by}).to_string();
    response::json(out.wbuf, 200, rid.as_str(), keep, body.as_bytes());
    w.stats.response(200);
    Ok(out.flush().await.is_ok() && keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_well_formed() {
        let ids = RequestIds::new(0x1234_5678_9abc_def0, 3);
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().starts_with("req_123456789abcde03"));
        assert!(b.as_str().ends_with("000000000002"));
        let other_worker = RequestIds::new(0x1234_5678_9abc_def0, 4).next();
        assert_ne!(a.as_str(), other_worker.as_str());
        assert_eq!(a.as_u128(), 0x1234_5678_9abc_de03_0000_0000_0001);
        assert_ne!(a.as_u128(), other_worker.as_u128());
    }
}
