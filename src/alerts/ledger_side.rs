//! The alerts' part of the ledger thread: the evaluator, the alerts it
//! emitted that wait to be appended to the outbox, and the sweeps.
//!
//! The thread calls [`LedgerAlerts::after_apply`] after every apply (a few
//! integer comparisons per charged entity a rule covers; nothing when no rule
//! exists) and [`LedgerAlerts::flush`] once per loop iteration: when alerts
//! wait, it makes the journal durable first (so an alert never names a charge
//! a whole-machine crash could still lose), then appends them to the outbox
//! through the [`AlertSink`] (which syncs it and nudges the delivery thread).
//! An outbox that cannot be written keeps them waiting, bounded by
//! [`ALERTS_WAITING_MAX`]; past it the oldest are dropped and counted, and
//! the sweep after the next restart emits whatever still holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::ledger::{EntityId, LedgerState};

use super::eval::AlertBook;
use super::rules::AlertPlan;
use super::Alert;

/// The file in the alerts directory that keeps the burn histories (forecast
/// and anomaly) across restarts, rewritten at every ledger checkpoint.
pub const BURN_HISTORY_FILE: &str = "burn-history.json";
/// Largest burn history file read at start.
pub const BURN_HISTORY_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;

/// Most alerts waiting for the outbox (it could not be written).
pub const ALERTS_WAITING_MAX: usize = 65_536;
/// How often the forecasts are looked at without spend (to clear them).
pub const FORECAST_SWEEP_INTERVAL_MS: i64 = 60_000;

/// Where the ledger thread puts the alerts it emits.
pub trait AlertSink: Send {
    /// Appends and syncs; on `Ok` the alerts are durable in the outbox.
    fn append(&mut self, alerts: &[Alert]) -> std::io::Result<()>;
}

/// Counters of the ledger's side of alerting.
#[derive(Debug, Default)]
pub struct EmitStats {
    /// Alerts appended to the outbox.
    pub emitted: AtomicU64,
    /// Alerts dropped because the outbox could not be written for too long.
    pub dropped: AtomicU64,
    /// Failed outbox writes.
    pub outbox_errors: AtomicU64,
}

/// One entity's alert state, for `GET /admin/alerts/state`.
pub use super::eval::EntityAlertState;

pub struct LedgerAlerts {
    book: AlertBook,
    sink: Box<dyn AlertSink>,
    waiting: Vec<Alert>,
    stats: Arc<EmitStats>,
    next_sweep_ms: i64,
    /// Sweep every entity a rule covers at the next flush (start, new plan).
    sweep_all: bool,
}

impl LedgerAlerts {
    pub fn new(book: AlertBook, sink: Box<dyn AlertSink>, stats: Arc<EmitStats>) -> LedgerAlerts {
        LedgerAlerts {
            book,
            sink,
            waiting: Vec::new(),
            stats,
            next_sweep_ms: i64::MIN,
            sweep_all: true,
        }
    }

    pub fn after_apply(&mut self, now_ms: i64, state: &LedgerState) {
        self.book.observe_last_apply(now_ms, state);
    }

    /// Writes the burn histories to `path` (a temporary file renamed over
    /// it). Losing it costs only history: forecasts and anomalies start
    /// over from what they see next.
    pub fn save_histories(&self, path: &std::path::Path) -> std::io::Result<()> {
        let histories = self.book.burn_histories();
        if histories.is_empty() && !path.exists() {
            return Ok(());
        }
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&histories).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }

    /// Reads the burn histories [`LedgerAlerts::save_histories`] wrote; a
    /// missing, oversized or unreadable file is an empty history (logged).
    pub fn load_histories(&mut self, path: &std::path::Path) {
        let read = || -> Result<Vec<(u32, super::eval::Burn)>, String> {
            let meta = match std::fs::metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e.to_string()),
            };
            if meta.len() > BURN_HISTORY_BYTES_MAX {
                return Err(format!("larger than {BURN_HISTORY_BYTES_MAX} bytes"));
            }
            let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
            serde_json::from_slice(&bytes).map_err(|e| e.to_string())
        };
        match read() {
            Ok(h) => self.book.restore_burn_histories(h),
            Err(e) => log::warn!(
                "alerts: the burn history {} is unusable ({e}); forecasts and anomalies start afresh",
                path.display()
            ),
        }
    }

    /// Alerts made elsewhere, appended with the next batch.
    pub fn emit(&mut self, alerts: Vec<Alert>) {
        self.waiting.extend(alerts);
    }

    /// A worker refused a request at `entity` (a 402).
    pub fn refused(&mut self, now_ms: i64, state: &LedgerState, entity: EntityId) {
        self.book.refused(now_ms, state, entity);
    }

    /// Cluster mode: what the other nodes spent on `entity` changed (no
    /// journal record says so): the evaluator looks at it again.
    pub fn cluster_spend(&mut self, now_ms: i64, state: &LedgerState, entity: EntityId) {
        self.book.sweep(now_ms, state, &[entity]);
    }

    pub fn set_plan(&mut self, plan: Arc<AlertPlan>) {
        self.book.set_plan(plan);
        self.sweep_all = true;
    }

    pub fn state(&self, now_ms: i64, state: &LedgerState) -> Vec<EntityAlertState> {
        self.book.state(now_ms, state)
    }

    /// Sweeps when due and collects what the evaluator emitted; returns
    /// whether alerts wait for the outbox. The caller then makes the journal
    /// durable and calls [`LedgerAlerts::append`].
    pub fn collect(&mut self, now_ms: i64, state: &LedgerState) -> bool {
        if self.waiting.len() > ALERTS_WAITING_MAX {
            let drop = self.waiting.len() - ALERTS_WAITING_MAX;
            self.waiting.drain(..drop);
            self.stats.dropped.fetch_add(drop as u64, Ordering::Relaxed);
        }
        if self.sweep_all {
            self.sweep_all = false;
            let ids: Vec<EntityId> = self.book.plan().entity_ids();
            self.book.sweep(now_ms, state, &ids);
        }
        if now_ms >= self.next_sweep_ms {
            self.next_sweep_ms = now_ms.saturating_add(FORECAST_SWEEP_INTERVAL_MS);
            let ids = self.book.forecasting();
            self.book.sweep(now_ms, state, &ids);
        }
        if self.book.has_output() {
            self.waiting.extend(self.book.take());
        }
        !self.waiting.is_empty()
    }

    /// Hands what waits to the sink (the journal is durable by now).
    pub fn append(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        match self.sink.append(&self.waiting) {
            Ok(()) => {
                self.stats
                    .emitted
                    .fetch_add(self.waiting.len() as u64, Ordering::Relaxed);
                self.waiting.clear();
            }
            Err(e) => {
                if self
                    .stats
                    .outbox_errors
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(100)
                {
                    log::error!(
                        "alerts: cannot write the outbox ({} alerts wait): {e}",
                        self.waiting.len()
                    );
                }
                if self.waiting.len() > ALERTS_WAITING_MAX {
                    let drop = self.waiting.len() - ALERTS_WAITING_MAX;
                    self.waiting.drain(..drop);
                    self.stats.dropped.fetch_add(drop as u64, Ordering::Relaxed);
                }
            }
        }
    }
}
