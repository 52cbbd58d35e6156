//! Alerts once for the cluster (decision 0016): every node evaluates its
//! budgets on the cluster's spend (its own plus what the other nodes
//! pushed), and before a budget alert (or a spend report) enters a node's
//! outbox, that node claims it in Redis ([`LUA_CLAIM`]). The first claim
//! wins; it is pending until the winner's outbox has the alert, then kept
//! (`d:<node>`). The others drop their copy once it is kept, and watch it
//! while it is pending: a winner that died before its outbox had the
//! alert (and does not come back within [`CLAIM_PENDING_LEASE_TTLS`]
//! lease TTLs) is taken
//! over by the next node to ask, so the alert is delivered once, late. A
//! winner that comes back claims it again (its own claim) at its restart.
//!
//! [`ClaimSink`] sits in front of the outbox on the ledger thread and never
//! blocks: alerts to claim go to the cluster thread ([`claim`] runs
//! there), which hands the won ones back through the ledger's
//! `EmitAlerts`; they pass the sink the second time, and once the outbox
//! has them the sink tells the cluster thread to mark them kept
//! ([`kept`]). Operational alerts (this node's own troubles) and channel
//! tests are not claimed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use crate::alerts::ledger_side::AlertSink;
use crate::alerts::{Alert, AlertData};
use crate::books::node_lease::NodeLeaseMsg;

/// The claims of one month live in one hash, kept this long (seconds):
/// far beyond any evaluator's sweep after a restart.
pub const CLAIMS_KEEP_SECS: u64 = 62 * 86_400;
/// How long a won claim may stay pending (its winner's outbox not yet
/// holding the alert) before another node may take it over, in lease
/// TTLs (the time after which the cluster counts a silent node's leases
/// as held): far above the time from claim to outbox (one ledger round),
/// so a live winner is never overtaken; a dead one delays the alert by
/// about this much (30 s at the default TTL).
pub const CLAIM_PENDING_LEASE_TTLS: u64 = 3;
/// Debug builds only: with this set, the cluster thread claims alerts and
/// then drops the ones it won, as a node that died between its claim and
/// its outbox would (tests of the takeover).
pub const DEBUG_CLAIM_DROP_ENV: &str = "BURSAR_DEBUG_CLUSTER_CLAIM_DROP";
/// Alerts another node won but has not kept yet, watched by this node.
pub const CLAIMS_WATCHED_MAX: usize = 4096;

/// Claims one alert: `KEYS[1]` the month's claims hash; `ARGV` the node,
/// the claim id, how long a claim may stay pending (ms). A claim is
/// `p:<node>:<deadline ms>` (won, the winner's outbox not yet holding the
/// alert) or `d:<node>` (kept); a bare node name is a kept claim of an
/// earlier version. Returns "won" (no claim yet, or this node's own),
/// "taken" (another node's claim, pending past its deadline: taken over),
/// "kept" (another node's outbox has it) or "wait" (another node's claim
/// is pending).
pub const LUA_CLAIM: &str = r#"
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, node, id, window = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local v = redis.call("HGET", key, id)
local won = false
if not v then
  won = true
else
  local kind, owner, deadline = string.match(v, "^([pd]):([^:]+):?(%d*)$")
  if kind == nil then kind, owner = "d", v end
  if owner == node then
    won = true
  elseif kind == "p" and tonumber(deadline) ~= nil and tonumber(deadline) <= now then
    redis.call("HSET", key, id, "p:" .. node .. ":" .. tostring(now + window))
    return "taken"
  elseif kind == "p" then
    return "wait"
  else
    return "kept"
  end
end
redis.call("HSET", key, id, "p:" .. node .. ":" .. tostring(now + window))
return "won"
"#;

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Won,
    /// Won from a node that claimed it and did not keep it in time.
    TakenOver,
    /// Another node's outbox has it.
    Kept,
    /// Another node won it, its outbox does not have it yet.
    Wait,
}

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
        self.inner.append(&ready)?;
        // The outbox has them: the claims are kept (a lost message leaves
        // them pending: another node may send them again, late, rather
        // than never).
        let kept: Vec<(i64, String)> = ready
            .iter()
            .filter(|a| needs_claim(a))
            .map(|a| (a.timestamp_ms, claim_id(a)))
            .collect();
        if !kept.is_empty() {
            let _ = self.tx.try_send(NodeLeaseMsg::ClaimsKept(kept));
        }
        Ok(())
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

/// Claims each alert for `node` (on the cluster thread), one script call
/// each (alerts are few). An error leaves the rest unclaimed.
pub fn claim(
    conn: &mut redis::Connection,
    script: &redis::Script,
    node: &str,
    pending_ms: u64,
    alerts: &[Alert],
) -> redis::RedisResult<Vec<Claim>> {
    let mut out = Vec::with_capacity(alerts.len());
    for a in alerts {
        let key = claims_key(a.timestamp_ms);
        let found: String = script
            .key(&key)
            .arg(node)
            .arg(claim_id(a))
            .arg(pending_ms)
            .invoke(conn)?;
        redis::cmd("EXPIRE")
            .arg(&key)
            .arg(CLAIMS_KEEP_SECS)
            .query::<()>(conn)?;
        out.push(match found.as_str() {
            "won" => Claim::Won,
            "taken" => Claim::TakenOver,
            "wait" => Claim::Wait,
            _ => Claim::Kept,
        });
    }
    Ok(out)
}

/// Marks claims kept: this node's outbox has their alerts.
pub fn kept(
    conn: &mut redis::Connection,
    node: &str,
    claims: &[(i64, String)],
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for (timestamp_ms, id) in claims {
        pipe.cmd("HSET")
            .arg(claims_key(*timestamp_ms))
            .arg(id)
            .arg(format!("d:{node}"))
            .ignore();
    }
    pipe.query(conn)
}
