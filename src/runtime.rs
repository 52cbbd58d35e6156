//! Start-up, workers, signals and shutdown: how the threads are laid out.
//!
//! One monoio runtime per worker thread, pinned to a core, each with its own
//! SO_REUSEPORT listener, upstream pool and counters. The main thread only
//! handles signals (reload on SIGHUP, drain on SIGTERM/SIGINT); a control
//! thread serves /metrics and health; a resolver thread refreshes addresses.
//!
//! A panic on any thread ends the process (decision 0008): `serve` installs
//! [`abort_on_panic`], and release builds are built with `panic = "abort"`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use monoio::net::{ListenerOpts, TcpListener};

use crate::books::thread::{Books, BooksConfig, BooksHandle, SystemClock};
use crate::books::{EntityRegistry, StateLock};
use crate::catalog::{Catalog, CatalogHandle};
use crate::config::{Config, IoDriverChoice};
use crate::limits::OVERHEAD_PUBLISH_INTERVAL;
use crate::metrics::{DriverKind, Registry, WorkerStats};
use crate::proxy::{serve_connection, Worker};
use crate::upstream::resolver::Resolver;

/// The sink the ledger thread's alerts go to: the outbox file (appended and
/// synced), then a nudge to the delivery thread. Composed here, so neither
/// the ledger's side nor the delivery thread imports the other.
struct OutboxSink {
    writer: crate::alerts::outbox::OutboxWriter,
    delivery: crate::alerts::delivery::DeliveryHandle,
}

impl crate::alerts::ledger_side::AlertSink for OutboxSink {
    fn append(&mut self, alerts: &[crate::alerts::Alert]) -> std::io::Result<()> {
        self.writer.append(alerts)?;
        self.delivery.notify();
        Ok(())
    }
}

/// The signals the gateway answers (SIGTERM and SIGINT drain and stop,
/// SIGHUP reloads), their handlers registered now: one that arrives before
/// [`Gateway::run_until_signalled`] reads them waits for it.
pub fn signals() -> std::io::Result<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
}

/// How often the delivery thread reads the outbox without a nudge.
pub const ALERT_OUTBOX_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// What a worker thread needs to start.
struct WorkerSeed {
    id: usize,
    listen: SocketAddr,
    driver: IoDriverChoice,
    pin: bool,
    uring_entries: u32,
    catalog: CatalogHandle,
    limits: crate::limits::Limits,
    stats: Arc<WorkerStats>,
    resolver: Arc<Resolver>,
    tls: Arc<rustls::ClientConfig>,
    shutdown: Arc<AtomicBool>,
    id_salt: u64,
    count_jobs: crossbeam_channel::Sender<crate::proxy::CountRequest>,
    confirm_jobs: crate::cache::confirm::ConfirmSender,
    link: crate::books::thread::WorkerLink,
    log: Option<crate::reqlog::LogSender>,
    /// The request log's query thread, shared with the admin API (`None`:
    /// the log is off).
    usage_log: Option<crate::proxy::usage::UsageLog>,
    /// Debug builds only: panic serving this accepted connection (1-based);
    /// see [`DEBUG_PANIC_AT_CONNECTION_ENV`].
    #[cfg(debug_assertions)]
    panic_at_connection: Option<u64>,
}

/// A handle to a running gateway.
pub struct Gateway {
    pub config: Config,
    pub catalog: CatalogHandle,
    pub resolver: Arc<Resolver>,
    pub registry: Arc<Registry>,
    shutdown: Arc<AtomicBool>,
    stop_workers: Vec<futures_channel::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The data-plane address actually bound (port 0 resolved).
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// The ledger thread's handle (the control plane shares it).
    pub books: Arc<BooksHandle>,
    /// Run-time changes (SIGHUP, the admin API) go through here.
    pub governance: Arc<crate::admin::Governance>,
    /// The request log's writer thread (`None`: `[log] sink = "off"`).
    log: Option<crate::reqlog::LogHandle>,
    /// The alert delivery thread.
    delivery: crate::alerts::delivery::DeliveryHandle,
    /// The operational alerts' sampler thread (`bursar-opsalerts`).
    operational: crate::admin::operational::OperationalAlerts,
    /// Cluster mode's Redis thread (`bursar-cluster`).
    cluster: Option<crate::cluster::node::ClusterNode>,
    /// Cluster mode's reader of other nodes' admin changes.
    cluster_defs: Option<crate::cluster::governance::DefinitionsWatcher>,
    /// Held for the life of the process: one gateway per state directory.
    _state_lock: StateLock,
}

fn random_salt() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

impl Gateway {
    /// Starts every thread; returns once all listeners are bound.
    pub fn start(config: Config) -> anyhow::Result<Gateway> {
        // The books first: recovery (snapshot, journal, rings) must finish
        // before a single request is admitted.
        let state_dir = config.server.state_dir.clone();
        let state_lock = StateLock::acquire(&state_dir)?;
        // The admin API's persisted definitions join the file's.
        let (config, file, overlay) = crate::admin::config_at_start(config)?;
        let mut entities = EntityRegistry::open(&state_dir)?;
        // Alerts: the ledger thread appends what fires to the outbox in
        // `state_dir/alerts`, the delivery thread sends it. Both always run,
        // so rules added later through the API work without a restart; with
        // no rule the evaluator costs the ledger one check per apply.
        let alerts_dir = state_dir.join(crate::alerts::outbox::ALERTS_DIR);
        let (outbox, outbox_alerts) = crate::alerts::outbox::OutboxWriter::open(&alerts_dir)
            .with_context(|| format!("opening the alert outbox in {}", alerts_dir.display()))?;
        let alert_stats = Arc::new(crate::alerts::delivery::AlertStats::default());
        let emit_stats = Arc::new(crate::alerts::ledger_side::EmitStats::default());
        let delivery = crate::alerts::delivery::Delivery::start(
            &alerts_dir,
            config.alerts.channels.clone(),
            crate::alerts::delivery::DeliveryConfig {
                retry_for: config.alerts.retry_for,
                // The ledger nudges the thread after every append; the poll
                // is only a fallback, kept slow so an idle gateway sleeps.
                poll_interval: ALERT_OUTBOX_POLL_INTERVAL,
                ..Default::default()
            },
            Arc::clone(&alert_stats),
        )
        .context("starting the alert delivery thread")?;
        crate::books::registry::check_cluster_budgets(&config).map_err(anyhow::Error::msg)?;
        let mut books_config = BooksConfig::from_config(&config);
        let cluster_rx = config.cluster.as_ref().map(|_| {
            let (link, rx) = crate::books::node_lease::ClusterLink::new();
            books_config.cluster = Some(link);
            rx
        });
        let outbox_sink: Box<dyn crate::alerts::ledger_side::AlertSink> = Box::new(OutboxSink {
            writer: outbox,
            delivery: delivery.clone(),
        });
        // Cluster mode: budget alerts are claimed in Redis before the
        // outbox takes them, so one node sends each.
        let claimed: crate::cluster::alerts::Claimed = Arc::default();
        let sink: Box<dyn crate::alerts::ledger_side::AlertSink> = match &books_config.cluster {
            Some(link) => Box::new(crate::cluster::alerts::ClaimSink::new(
                outbox_sink,
                link.tx.clone(),
                Arc::clone(&claimed),
            )),
            None => outbox_sink,
        };
        let alert_setup = crate::books::thread::AlertSetup {
            rules: config.alerts.rules.clone(),
            history: Some(alerts_dir.join(crate::alerts::ledger_side::BURN_HISTORY_FILE)),
            sink,
            existing: outbox_alerts,
            stats: Arc::clone(&emit_stats),
        };
        let started = Instant::now();
        let (books, links) = Books::start_with_alerts(
            &state_dir,
            &books_config,
            &mut entities,
            Arc::new(SystemClock),
            Some(alert_setup),
        )
        .with_context(|| format!("opening the books in {}", state_dir.display()))?;
        log::info!(
            "books recovered from {} in {:?}: {} entities",
            state_dir.display(),
            started.elapsed(),
            entities.len()
        );
        let ids = entities.ids_for_config(&config)?;
        // The request log's writer: an unreachable store is not fatal (rows
        // spill to disk until it answers); an unusable one is.
        let (log_handle, log_sender) = match &config.log {
            Some(cfg) => {
                let (h, s) = crate::reqlog::LogWriter::start_yielding(
                    cfg,
                    &state_dir,
                    Some(Arc::clone(&books.stats().journal_down)),
                )?;
                (Some(h), Some(s))
            }
            None => (None, None),
        };
        // The request log's query thread, one for the admin API and the
        // workers' usage route: started now (idle until the first query,
        // which opens its store connection), so a worker never starts it.
        let log_reader = match &config.log {
            Some(cfg) => Some(
                crate::reqlog::LogReader::start(cfg.sink.clone(), &state_dir)
                    .context("starting the request log's query thread")?,
            ),
            None => None,
        };
        let usage_log = log_reader.clone().map(crate::proxy::usage::UsageLog::new);
        let books = Arc::new(books);
        let entities = Arc::new(Mutex::new(entities));
        let cluster = match (&config.cluster, cluster_rx, &books_config.cluster) {
            (Some(cfg), Some(rx), Some(link)) => Some(
                crate::cluster::node::ClusterNode::start(
                    cfg,
                    rx,
                    books.sender(),
                    Arc::clone(&link.durable_seq),
                    Arc::clone(&entities),
                    claimed,
                )
                .context("starting the cluster thread")?,
            ),
            _ => None,
        };
        // The semantic cache's models, loaded before the catalog that holds
        // them: a directory that cannot be loaded stops the start.
        let _semantic_models = crate::catalog::load_semantic_models(&config)
            .context("cache.embedding_dir (run scripts/fetch-embeddings DIR)")?;
        let catalog = CatalogHandle::new(Catalog::from_config(&config, 1, &ids));
        let resolver = Resolver::new();
        resolver.set_hosts(config.upstream_hosts());
        resolver
            .spawn_refresher(config.server.dns_refresh)
            .context("starting the resolver thread")?;
        let tls = crate::upstream::tls::client_config(config.server.tls_roots)?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let id_salt = random_salt();
        let tokenizer_stats = Arc::new(crate::metrics::TokenCounters::default());
        let count_jobs = spawn_tokenizer(Arc::clone(&tokenizer_stats))?;
        let confirm_jobs = spawn_confirmer()?;
        #[cfg(debug_assertions)]
        let panic_at_connection = debug_panic_at_connection()?;

        // Bind once here so that port 0 resolves to one port all workers share.
        let listen = {
            let probe = std::net::TcpListener::bind(config.server.listen)
                .with_context(|| format!("cannot listen on {}", config.server.listen))?;
            let addr = probe.local_addr()?;
            drop(probe);
            addr
        };

        let mut stats = Vec::new();
        let mut threads = Vec::new();
        let mut stop_workers = Vec::new();
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<DriverKind, String>)>();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (id, link) in (0..config.server.workers).zip(links) {
            let s = Arc::new(WorkerStats::default());
            stats.push(Arc::clone(&s));
            let seed = WorkerSeed {
                id,
                listen,
                driver: config.server.io_driver,
                pin: config.server.pin_workers && config.server.workers <= cores,
                uring_entries: config.server.uring_entries,
                catalog: catalog.clone(),
                limits: config.limits.clone(),
                stats: s,
                resolver: Arc::clone(&resolver),
                tls: Arc::clone(&tls),
                shutdown: Arc::clone(&shutdown),
                id_salt,
                count_jobs: count_jobs.clone(),
                confirm_jobs: confirm_jobs.clone(),
                link,
                log: log_sender.clone(),
                usage_log: usage_log.clone(),
                #[cfg(debug_assertions)]
                panic_at_connection: panic_at_connection.filter(|_| id == 0),
            };
            let (stop_tx, stop_rx) = futures_channel::oneshot::channel();
            stop_workers.push(stop_tx);
            let ready = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("bursar-worker-{id}"))
                .spawn(move || worker_thread(seed, stop_rx, ready))
                .context("spawning a worker thread")?;
            threads.push(handle);
        }
        drop(ready_tx);
        let mut drivers = Vec::new();
        for _ in 0..config.server.workers {
            let (id, res) = ready_rx
                .recv_timeout(Duration::from_secs(30))
                .context("a worker did not start")?;
            match res {
                Ok(d) => drivers.push(d),
                Err(e) => {
                    shutdown.store(true, Ordering::SeqCst);
                    anyhow::bail!("worker {id} failed to start: {e}");
                }
            }
        }

        let catalog_for_metrics = catalog.clone();
        let registry = Arc::new(Registry {
            workers: stats,
            tokenizer: tokenizer_stats,
            started: Instant::now(),
            catalog_version: Box::new(move || catalog_for_metrics.load().version),
            books: Arc::clone(books.stats()),
            log: log_sender.clone(),
            alerts: Some((Arc::clone(&alert_stats), Arc::clone(&emit_stats))),
            cluster: match (&cluster, &books_config.cluster) {
                (Some(c), Some(link)) => Some((Arc::clone(&c.stats), Arc::clone(&link.stats))),
                _ => None,
            },
        });
        let mut governance = crate::admin::Governance::new(
            config.clone(),
            file,
            overlay,
            catalog.clone(),
            Arc::clone(&books),
            Arc::clone(&entities),
            Arc::clone(&resolver),
        );
        governance.delivery = Some(delivery.clone());
        // Cluster mode: admin changes go through Redis to every node.
        let shared_overlay = match (&config.cluster, &books_config.cluster) {
            (Some(cfg), Some(link)) => {
                let store = Arc::new(
                    crate::cluster::governance::RedisOverlay::new(&cfg.redis_url, &cfg.node)
                        .context("cluster.redis_url")?,
                );
                governance.shared_version = Arc::clone(&link.limit_version);
                governance.share_overlay(store.clone());
                governance.share_totals(Arc::new(
                    crate::cluster::totals::RedisTotals::new(&cfg.redis_url)
                        .context("cluster.redis_url")?,
                ));
                Some(store)
            }
            _ => None,
        };
        if let Some(reader) = log_reader {
            governance.share_log_reader(reader);
        }
        let governance = Arc::new(governance);
        let cluster_defs = match (&config.cluster, shared_overlay) {
            (Some(cfg), Some(store)) => Some(
                crate::cluster::governance::DefinitionsWatcher::start(
                    &cfg.redis_url,
                    store,
                    Arc::clone(&governance),
                )
                .context("starting the cluster's definitions thread")?,
            ),
            _ => None,
        };
        let admin_listen = match config.server.admin_listen {
            Some(addr) => Some(crate::control::start(
                addr,
                Arc::clone(&registry),
                config.limits.clone(),
                Arc::clone(&governance),
            )?),
            None => None,
        };
        let operational = crate::admin::operational::OperationalAlerts::start(
            Arc::clone(&governance),
            Arc::clone(&registry),
        )
        .context("starting the operational alerts' sampler")?;
        log::info!(
            "bursar {} listening on {} with {} workers, I/O driver {}{}",
            env!("CARGO_PKG_VERSION"),
            listen,
            config.server.workers,
            registry.driver(),
            admin_listen.map_or(String::new(), |a| format!("; control plane on {a}"))
        );
        // One machine-readable line on stdout once everything listens (ports
        // resolved, so `--listen 127.0.0.1:0` is usable by scripts and tests).
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "bursar listening on {listen} control {}",
                admin_listen.map_or("off".to_string(), |a| a.to_string())
            );
            let _ = out.flush();
        }
        if drivers.contains(&DriverKind::Legacy) && config.server.io_driver == IoDriverChoice::Auto
        {
            log::warn!("io_uring is unavailable here (kernel or seccomp); running on the legacy epoll driver");
        }
        Ok(Gateway {
            config,
            catalog,
            resolver,
            registry,
            shutdown,
            stop_workers,
            threads,
            listen,
            admin_listen,
            books,
            governance,
            log: log_handle,
            delivery,
            operational,
            cluster,
            cluster_defs,
            _state_lock: state_lock,
        })
    }

    /// Reloads the catalog from the config file (merged with the admin
    /// API's definitions). Settings that need a restart are reported and
    /// left as they are.
    pub fn reload(&mut self) {
        let Some(path) = self.config.source.clone() else {
            log::info!("SIGHUP: running on the built-in default; nothing to reload");
            return;
        };
        if let Ok(next) = Config::load(&path) {
            if next.server != self.config.server || next.limits != self.config.limits {
                log::warn!(
                    "reload: [server] and [limits] changes take effect only after a restart; \
                     the rest is reloaded now"
                );
            }
        }
        match self.governance.reload() {
            Ok(version) => {
                self.config = self.governance.config();
                log::info!(
                    "reloaded {}: catalog version {version}, {} providers, {} keys",
                    path.display(),
                    self.config.providers.len(),
                    self.config.keys.len()
                );
            }
            Err(e) => log::error!(
                "reload of {} refused, keeping the running config: {e}",
                path.display()
            ),
        }
    }

    /// Stops accepting, waits up to the drain timeout for in-flight requests.
    pub fn shutdown(mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for tx in self.stop_workers.drain(..) {
            let _ = tx.send(());
        }
        let deadline = Instant::now() + self.config.server.shutdown_drain_timeout;
        loop {
            let inflight: i64 = self
                .registry
                .workers
                .iter()
                .map(|w| w.requests_inflight.get())
                .sum();
            if inflight <= 0 {
                break;
            }
            if Instant::now() >= deadline {
                log::warn!("shutdown: {inflight} requests still in flight at the drain deadline");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Rows the workers queued are written (or spilled) before exit.
        if let Some(log) = self.log.take() {
            let stats = log.shutdown();
            if stats.rows_dropped > 0 {
                log::error!("shutdown: the request log lost {} rows", stats.rows_dropped);
            }
        }
        // The sampler's last alerts reach the ledger before it stops.
        self.operational.shutdown();
        // Every settle the workers published is in a ring: journal it all,
        // checkpoint, and stop the ledger thread.
        if let Err(e) = self.books.shutdown() {
            log::error!("shutdown: closing the books: {e}");
        }
        if let Some(mut defs) = self.cluster_defs.take() {
            defs.stop();
        }
        if let Some(mut cluster) = self.cluster.take() {
            cluster.stop();
        }
        // The ledger appended its last alerts; what is not sent yet stays
        // in the outbox for the next start.
        self.delivery.shutdown();
        log::info!("shutdown complete");
        drop(self.threads);
    }

    /// Runs until SIGTERM or SIGINT; reloads on SIGHUP.
    /// `signals` from [`signals`], registered before the gateway started.
    pub fn run_until_signalled(
        mut self,
        mut signals: signal_hook::iterator::Signals,
    ) -> anyhow::Result<()> {
        use signal_hook::consts::SIGHUP;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        for sig in signals.forever() {
            match sig {
                SIGHUP => {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                    self.reload();
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
                }
                _ => {
                    log::info!("signal {sig}: draining");
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
                    break;
                }
            }
        }
        self.shutdown();
        Ok(())
    }
}

/// Makes a panic on any thread of the process end the process at once, with
/// `SIGABRT` (decision 0008): the panic is logged with the thread's name and
/// where it happened, the standard report follows (a backtrace with
/// `RUST_BACKTRACE=1`), and nothing unwinds. Without it a panicking worker
/// thread ended but left its listener open (the kernel kept queueing its
/// share of new connections, never accepted), its connections unanswered
/// and its lease granted, in a process that stayed up, which a supervisor
/// does not restart; a panicking ledger, log writer, control, tokenizer or
/// resolver thread left the books or the process half-alive the same way.
/// A process that aborts is restarted by systemd (`Restart=on-failure`) and
/// recovers its books from the journal and the settle rings, as after
/// SIGKILL.
///
/// `serve` installs it before anything starts. Release builds abort on a
/// panic by themselves too (`panic = "abort"`; the hook still runs first);
/// the hook makes debug builds do the same, and names the thread in either.
/// Tests that run a [`Gateway`] inside the test process do not install it
/// (a failed assertion must stay a failed test).
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        use std::io::Write;
        let thread = std::thread::current();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(a non-string payload)");
        let at = info.location().map_or_else(String::new, |l| {
            format!(" at {}:{}:{}", l.file(), l.line(), l.column())
        });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Straight to stderr, not through `log`: `BURSAR_LOG=off` must not
        // hide why the process ended.
        let line = format!(
            "{} ERROR bursar::runtime: thread '{}' panicked{at}: {message}; \
             aborting the process (it is restarted and the books recover from \
             the journal and the settle rings: docs/decisions/0008)\n",
            crate::logging::format_utc(now.as_secs(), now.subsec_millis()),
            thread.name().unwrap_or("<unnamed>"),
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        report(info);
        std::process::abort();
    }));
}

/// Debug builds only: the environment variable that makes worker 0 panic in
/// the task serving its N-th accepted connection (`N` ≥ 1), before it reads
/// the request: how `tests/worker_panic.rs` checks that a panicking worker
/// ends the process (decision 0008). Read once by [`Gateway::start`]; release
/// builds contain neither the variable nor the panic.
#[cfg(debug_assertions)]
pub const DEBUG_PANIC_AT_CONNECTION_ENV: &str = "BURSAR_DEBUG_PANIC_AT_CONNECTION";

#[cfg(debug_assertions)]
fn debug_panic_at_connection() -> anyhow::Result<Option<u64>> {
    let Some(value) = std::env::var_os(DEBUG_PANIC_AT_CONNECTION_ENV) else {
        return Ok(None);
    };
    match value.to_str().and_then(|v| v.parse::<u64>().ok()) {
        Some(n) if n >= 1 => {
            log::warn!(
                "debug build: worker 0 panics serving its connection {n} \
                 ({DEBUG_PANIC_AT_CONNECTION_ENV})"
            );
            Ok(Some(n))
        }
        _ => anyhow::bail!("{DEBUG_PANIC_AT_CONNECTION_ENV}={value:?}: use a whole number from 1"),
    }
}

/// Nice value of the semantic cache's confirmation thread.
pub const CONFIRM_THREAD_NICE: i32 = 10;

/// The semantic cache's confirmation thread (stage c): the full sentence
/// model, off the workers. Idle (blocked on its queue) unless the semantic
/// cache asks; a reload may turn the semantic cache on at any time.
fn spawn_confirmer() -> anyhow::Result<crate::cache::confirm::ConfirmSender> {
    let (tx, rx) = crate::cache::confirm::queue();
    std::thread::Builder::new()
        .name("bursar-confirm".into())
        .spawn(move || {
            crate::sched::lower_thread_priority(CONFIRM_THREAD_NICE);
            crate::cache::confirm::run(rx);
        })
        .context("spawning the confirmation thread")?;
    Ok(tx)
}

/// Nice value of the tokenizer thread.
pub const TOKENIZER_THREAD_NICE: i32 = 10;

/// The tokenizer thread: counts the text of streams that ended without the
/// provider's usage, off the workers (a count can take milliseconds).
fn spawn_tokenizer(
    stats: Arc<crate::metrics::TokenCounters>,
) -> anyhow::Result<crossbeam_channel::Sender<crate::proxy::CountRequest>> {
    let (tx, rx) = crossbeam_channel::bounded::<crate::proxy::CountRequest>(
        crate::limits::COUNT_JOBS_QUEUE_MAX,
    );
    std::thread::Builder::new()
        .name("bursar-tokenizer".into())
        .spawn(move || {
            crate::sched::lower_thread_priority(TOKENIZER_THREAD_NICE);
            crate::tokens::warm_up();
            for mut req in rx {
                let price = req.price.clone();
                let reply = req.reply.take();
                let outcome = req.run();
                stats.record(&outcome.usage, true, price.as_ref());
                if let Some(reply) = reply {
                    // The worker may have gone (shutdown); nothing to do then.
                    let _ = reply.send(outcome);
                }
            }
        })
        .context("spawning the tokenizer thread")?;
    Ok(tx)
}

fn worker_thread(
    seed: WorkerSeed,
    stop: futures_channel::oneshot::Receiver<()>,
    ready: mpsc::Sender<(usize, Result<DriverKind, String>)>,
) {
    if seed.pin {
        if let Err(e) = monoio::utils::bind_to_cpu_set([seed.id]) {
            log::warn!("worker {}: cannot pin to core {}: {e:?}", seed.id, seed.id);
        }
    }
    let id = seed.id;
    let want_uring = match seed.driver {
        IoDriverChoice::Legacy => false,
        IoDriverChoice::IoUring => true,
        IoDriverChoice::Auto => monoio::utils::detect_uring(),
    };
    let mut stop = Some(stop);
    if want_uring {
        match build_uring_runtime(seed.uring_entries) {
            Ok(mut rt) => {
                seed.stats.set_driver(DriverKind::IoUring);
                let stop = stop
                    .take()
                    .unwrap_or_else(|| futures_channel::oneshot::channel().1);
                rt.block_on(worker_main(seed, stop, ready, DriverKind::IoUring));
                return;
            }
            Err(e) if seed.driver == IoDriverChoice::IoUring => {
                let _ = ready.send((id, Err(format!("io_uring runtime: {e}"))));
                return;
            }
            Err(e) => {
                log::warn!("worker {id}: io_uring runtime failed ({e}); using the legacy driver")
            }
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            seed.stats.set_driver(DriverKind::Legacy);
            let stop = stop
                .take()
                .unwrap_or_else(|| futures_channel::oneshot::channel().1);
            rt.block_on(worker_main(seed, stop, ready, DriverKind::Legacy));
        }
        Err(e) => {
            let _ = ready.send((id, Err(format!("legacy runtime: {e}"))));
        }
    }
}

/// Builds a worker's io_uring runtime. The ring is set up for one thread
/// that owns it (`SINGLE_ISSUER`) and runs completions' task work only when
/// it asks for events (`COOP_TASKRUN` + `DEFER_TASKRUN`): without these, every
/// socket readiness that lands while the worker runs interrupts it with an
/// inter-processor interrupt to run the completion at once (perf put 5–6% of
/// the worker's samples in that interrupt's return path). Kernels before 6.1
/// refuse the flags; the ring is then built without them.
fn build_uring_runtime(
    entries: u32,
) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let mut tuned = io_uring::IoUring::builder();
    tuned
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(entries)
        .uring_builder(tuned)
        .enable_timer()
        .build();
    match built {
        Ok(rt) => Ok(rt),
        Err(e) => {
            log::debug!("io_uring with deferred task work refused ({e}); plain ring");
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(entries)
                .enable_timer()
                .build()
        }
    }
}

/// Wakes a worker's accept loop, paused at `connections_per_worker_max`,
/// when one of its connections closes. One waiter: the accept loop.
#[derive(Default)]
struct SlotFreed(std::cell::Cell<Option<std::task::Waker>>);

impl SlotFreed {
    fn notify(&self) {
        if let Some(waker) = self.0.take() {
            waker.wake();
        }
    }

    /// Resolves once `ready` holds, checking it at each [`Self::notify`].
    async fn wait_until(&self, ready: impl Fn() -> bool) {
        std::future::poll_fn(|cx| {
            if ready() {
                std::task::Poll::Ready(())
            } else {
                self.0.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await
    }
}

async fn worker_main(
    seed: WorkerSeed,
    mut stop: futures_channel::oneshot::Receiver<()>,
    ready: mpsc::Sender<(usize, Result<DriverKind, String>)>,
    driver: DriverKind,
) {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(crate::limits::LISTEN_BACKLOG);
    let listener = match TcpListener::bind_with_config(seed.listen, &opts) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send((
                seed.id,
                Err(format!("cannot listen on {}: {e}", seed.listen)),
            ));
            return;
        }
    };
    let max_conns = seed.limits.connections_per_worker_max as i64;
    #[cfg(debug_assertions)]
    let panic_at_connection = seed.panic_at_connection;
    #[cfg(debug_assertions)]
    let mut connections_accepted_here: u64 = 0;
    let worker = Rc::new(Worker::new(
        seed.id,
        seed.catalog,
        seed.limits,
        Arc::clone(&seed.stats),
        seed.resolver,
        seed.tls,
        seed.shutdown,
        seed.id_salt,
        seed.count_jobs,
        seed.confirm_jobs,
        seed.link,
        seed.log,
        seed.usage_log,
    ));
    let _ = ready.send((seed.id, Ok(driver)));

    // The ledger's broadcasts, drained as soon as the ledger rings (even when
    // no request comes), so a Blocked entity's free lease goes back to where
    // it is needed. It sleeps until then: no timer, no wake-up while idle.
    let listener_of_events = Rc::clone(&worker);
    monoio::spawn(async move {
        while !listener_of_events.draining() {
            listener_of_events.books.events_posted().await;
            listener_of_events.books.drain_events();
        }
    });

    // Housekeeping: expire idle upstream connections.
    let housekeeper = Rc::clone(&worker);
    monoio::spawn(async move {
        while !housekeeper.draining() {
            monoio::time::sleep(OVERHEAD_PUBLISH_INTERVAL).await;
            let mut pool = housekeeper.pool.borrow_mut();
            pool.evict_expired();
            housekeeper.stats.pool_idle.set(pool.idle_count() as i64);
            drop(pool);
            housekeeper.publish_overhead();
        }
    });

    // Accept backpressure: at `connections_per_worker_max` the loop stops
    // accepting (no accept is pending) until a connection closes; new
    // connections wait in the listen backlog meanwhile. Only this loop adds
    // connections, so an accept started below the bound completes below it.
    let slot_freed = Rc::new(SlotFreed::default());
    loop {
        if worker.stats.connections_active.get() >= max_conns {
            if worker.stats.accept_paused.get() == 0 {
                log::warn!(
                    "worker {}: {max_conns} connections open (connections_per_worker_max): \
                     not accepting until one closes (bursar_accept_paused_total)",
                    worker.id
                );
            }
            worker.stats.accept_paused.inc();
            let below = || worker.stats.connections_active.get() < max_conns;
            monoio::select! {
                _ = slot_freed.wait_until(below) => {},
                _ = &mut stop => break,
            }
            continue;
        }
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = &mut stop => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let stats = &worker.stats;
                stats.connections_accepted.inc();
                stats.connections_active.add(1);
                let w = Rc::clone(&worker);
                let freed = Rc::clone(&slot_freed);
                #[cfg(debug_assertions)]
                let panic_here = {
                    connections_accepted_here += 1;
                    panic_at_connection == Some(connections_accepted_here)
                };
                monoio::spawn(async move {
                    #[cfg(debug_assertions)]
                    if panic_here {
                        panic!(
                            "{DEBUG_PANIC_AT_CONNECTION_ENV}: worker {} panics on purpose",
                            w.id
                        );
                    }
                    serve_connection(Rc::clone(&w), stream).await;
                    w.stats.connections_active.add(-1);
                    freed.notify();
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("worker {}: accept failed: {e}", worker.id);
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    // Let in-flight connections finish; the main thread bounds the wait.
    while worker.stats.connections_active.get() > 0 {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
}
