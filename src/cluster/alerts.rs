//! Alerts once for the cluster (decision 0016): every node evaluates its
//! budgets on the cluster's spend (its own plus what the other nodes
//! pushed), and before a budget alert (or a spend report) enters a node's
//! outbox, that node claims it in Redis. The first claim wins; the others
//! drop their copy. A node that claimed and died before its outbox had the
//! alert claims it again at its restart (the evaluator's sweep finds the
//! crossing; the claim is its own), so the alert is delivered once, late.
//!
//! [`ClaimSink`] sits in front of the outbox on the ledger thread and never
//! blocks: alerts to claim go to the cluster thread ([`claim`] runs
//! there), which hands the won ones back through the ledger's
//! `EmitAlerts`, and they pass the sink the second time. Operational
//! alerts (this node's own troubles) and channel tests are not claimed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use crate::alerts::ledger_side::AlertSink;
use crate::alerts::{Alert, AlertData};
use crate::books::node_lease::NodeLeaseMsg;

/// The claims of one month live in one hash, kept this long (seconds):
/// far beyond any evaluator's sweep after a restart.
pub const CLAIMS_KEEP_SECS: u64 = 62 * 86_400;

/// Alert ids the cluster thread won, shared with the sink.
pub type Claimed = Arc<Mutex<HashSet<String>>>;

/// The outbox's sink in cluster mode.
pub struct ClaimSink {
    inner: Box<dyn AlertSink>,
    tx: Sender<NodeLeaseMsg>,
    claimed: Claimed,
}

impl ClaimSink {
    pub fn new(inner: Box<dyn AlertSink>, tx: Sender<NodeLeaseMsg>, claimed: Claimed) -> ClaimSink {
        ClaimSink { inner, tx, claimed }
    }
}

/// Whether the cluster must agree on who sends `alert`.
pub fn needs_claim(alert: &Alert) -> bool {
    matches!(alert.data, AlertData::Budget(_) | AlertData::Report(_))
}

impl AlertSink for ClaimSink {
    fn append(&mut self, alerts: &[Alert]) -> std::io::Result<()> {
        let (mut ready, mut to_claim) = (Vec::new(), Vec::new());
        {
            let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
            for a in alerts {
                if !needs_claim(a) || claimed.remove(&a.id) {
                    ready.push(a.clone());
                } else {
                    to_claim.push(a.clone());
                }
            }
        }
        if !to_claim.is_empty() {
            self.tx
                .try_send(NodeLeaseMsg::Claim(to_claim))
                .map_err(|_| std::io::Error::other("the cluster thread's queue is full"))?;
        }
        if ready.is_empty() {
            return Ok(());
        }
        self.inner.append(&ready)
    }
}

/// The cluster-wide identity of an alert: for a budget alert what it is
/// about by name (a node's entity ids and epochs are its own), the period,
/// the fact, the limit it was measured against (a raised limit re-arms);
/// for a report its id (its window).
pub fn claim_id(alert: &Alert) -> String {
    use crate::alerts::event::alert_id;
    match &alert.data {
        AlertData::Budget(d) => {
            let kind = serde_json::to_string(&alert.kind).unwrap_or_default();
            let threshold = d
                .threshold_percent
                .map(|t| t.to_string())
                .unwrap_or_default();
            let recovered = d
                .recovered
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok())
                .unwrap_or_default();
            alert_id(&[
                kind.as_bytes(),
                d.entity.kind.as_bytes(),
                d.entity.name.as_bytes(),
                d.period_start.as_bytes(),
                threshold.as_bytes(),
                recovered.as_bytes(),
                d.reason.as_deref().unwrap_or("").as_bytes(),
                d.limit_usd.as_deref().unwrap_or("").as_bytes(),
                d.rules.join(",").as_bytes(),
            ])
        }
        _ => alert.id.clone(),
    }
}

/// The hash of one month's claims: `bursar:alerts:claims:<YYYY-MM>`.
pub fn claims_key(timestamp_ms: i64) -> String {
    let rfc = crate::budget::period::format_rfc3339_ms(timestamp_ms);
    format!("bursar:alerts:claims:{}", rfc.get(..7).unwrap_or("0000-00"))
}

/// Claims each alert for `node` (on the cluster thread): the won ones (a
/// claim already this node's counts as won). An error leaves all unclaimed.
pub fn claim(
    conn: &mut redis::Connection,
    node: &str,
    alerts: &[Alert],
) -> redis::RedisResult<Vec<bool>> {
    let mut pipe = redis::pipe();
    for a in alerts {
        let key = claims_key(a.timestamp_ms);
        pipe.cmd("HSETNX")
            .arg(&key)
            .arg(claim_id(a))
            .arg(node)
            .ignore();
        pipe.cmd("HGET").arg(&key).arg(claim_id(a));
        pipe.cmd("EXPIRE").arg(&key).arg(CLAIMS_KEEP_SECS).ignore();
    }
    let owners: Vec<Option<String>> = pipe.query(conn)?;
    Ok(owners
        .into_iter()
        .map(|o| o.as_deref() == Some(node))
        .collect())
}
