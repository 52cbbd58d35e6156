//! The thread that drives the operational alerts' [`Sampler`]
//! (`bursar-opsalerts`): it reads the counters the other threads keep (the
//! metrics registry, the books' stats, the catalog's provider outcomes) and
//! the operational rules from the governance, and hands what the sampler
//! makes to the ledger thread. The window logic and the alerts are in
//! `alerts::operational`; this file is the wiring, above what it reads.

use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[cfg(debug_assertions)]
use crate::alerts::operational::DEBUG_SAMPLE_INTERVAL_ENV;
use crate::alerts::operational::{Observed, Sampler, SAMPLE_INTERVAL};
use crate::alerts::rules::Rule;

/// The interval the sampler runs at: [`SAMPLE_INTERVAL`], or in debug builds
/// `BURSAR_DEBUG_OPERATIONAL_INTERVAL_MS`.
pub fn sample_interval() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(DEBUG_SAMPLE_INTERVAL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return Duration::from_millis(ms.clamp(50, 60_000));
    }
    SAMPLE_INTERVAL
}

/// Reads the counters.
fn observe(gov: &super::Governance, registry: &crate::metrics::Registry) -> Observed {
    use std::sync::atomic::Ordering::Relaxed;
    let mut unpriced = Vec::new();
    for w in &registry.workers {
        w.unpriced_models.drain(&mut unpriced);
    }
    let overruns = registry.books.overruns.load(Relaxed);
    let last = registry.books.last_overrun_entity.load(Relaxed);
    let last_overrun = u32::try_from(last)
        .ok()
        .and_then(|v| v.checked_sub(1))
        .and_then(|id| {
            let entities = gov.entities.lock().unwrap_or_else(|p| p.into_inner());
            entities
                .name_of(crate::ledger::EntityId(id))
                .map(|(kind, name)| format!("{} {name}", crate::books::registry::kind_str(kind)))
        });
    let providers = gov
        .catalog
        .load()
        .providers
        .iter()
        .map(|p| {
            let (r, e) = p.outcomes.totals();
            (Arc::clone(&p.name), r, e)
        })
        .collect();
    Observed {
        unpriced,
        refuse_unpriced: gov.read(|_, _, c| c.pricing.refuse_unpriced),
        overruns,
        last_overrun,
        log_rows_dropped: registry.log.as_ref().map(|l| l.stats().rows_dropped),
        providers,
        cluster: registry.cluster.as_ref().map(|(c, _)| {
            crate::alerts::operational::ClusterObserved {
                errors: c.errors.load(Relaxed),
                connected: c.connected.load(Relaxed),
                losses: c.losses.load(Relaxed),
                drift_picodollars: c.drift_picodollars.load(Relaxed),
            }
        }),
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The running sampler thread.
pub struct OperationalAlerts {
    stop: Mutex<Option<mpsc::Sender<()>>>,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl OperationalAlerts {
    /// Starts `bursar-opsalerts`: a first sample at once (the baselines),
    /// then one every [`sample_interval`].
    pub fn start(
        governance: Arc<super::Governance>,
        registry: Arc<crate::metrics::Registry>,
    ) -> std::io::Result<OperationalAlerts> {
        let interval = sample_interval();
        let (tx, rx) = mpsc::channel::<()>();
        let join = std::thread::Builder::new()
            .name("bursar-opsalerts".into())
            .spawn(move || {
                let mut sampler = Sampler::default();
                sampler.tick(unix_ms(), observe(&governance, &registry), &[]);
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                    let rules: Vec<Rule> = governance.read(|_, _, c| {
                        c.alerts
                            .rules
                            .iter()
                            .filter(|r| r.operational)
                            .cloned()
                            .collect()
                    });
                    let obs = observe(&governance, &registry);
                    let alerts = sampler.tick(unix_ms(), obs, &rules);
                    if alerts.is_empty() {
                        continue;
                    }
                    if let Err(e) = governance.books.emit_alerts(alerts) {
                        log::warn!("operational alerts: the ledger did not take them: {e}");
                    }
                }
            })?;
        Ok(OperationalAlerts {
            stop: Mutex::new(Some(tx)),
            join: Mutex::new(Some(join)),
        })
    }

    /// Stops the thread and waits for it (before the books stop, so its
    /// last alerts reach the ledger).
    pub fn shutdown(&self) {
        drop(self.stop.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(join) = self.join.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = join.join();
        }
    }
}

impl Drop for OperationalAlerts {
    fn drop(&mut self) {
        self.shutdown();
    }
}
