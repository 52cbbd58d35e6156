//! `[cluster]`: several nodes sharing budgets through Redis (decision
//! 0016): where Redis is, this node's name, how long a node lease lives
//! without its node, and what happens when Redis cannot be reached.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{err, parse_duration, ConfigError};

#[derive(Debug, Default, Deserialize, Clone, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `redis://host:port[/db]` (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// This node's name, unique in the cluster (required): its share of
    /// each budget is recorded under it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How long a node lease outlives its node (default "10s"): a node
    /// that dies holds its leases this long, then they are held for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<String>,
    /// "closed" (default): once its node leases are used up, a node that
    /// cannot reach Redis refuses strict requests. "open": it grants itself
    /// node leases while Redis is unreachable (the overshoot this allows is
    /// reported when Redis returns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_mode: Option<String>,
    /// Every node of the cluster by name, this one included (optional).
    /// Given, a budget whose hash Redis lost (restarted empty, from an old
    /// snapshot, flushed) grants nothing until every node listed has
    /// declared its spend there again: a node that is down then holds the
    /// budget closed until it is back (or is taken off the list), instead
    /// of its spend being missed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
}

/// What happens when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Refuse once the node's leases are used up.
    Closed,
    /// Admit past them: the node grants itself the node leases it would
    /// have drawn, with the operational alert `cluster_unavailable`.
    Open,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub redis_url: String,
    pub node: String,
    pub lease_ttl: Duration,
    pub fail_mode: FailMode,
    /// `nodes`; empty when not given.
    pub nodes: Vec<String>,
}

pub const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(10);
pub const LEASE_TTL_MIN: Duration = Duration::from_secs(1);
pub const LEASE_TTL_MAX: Duration = Duration::from_secs(600);
/// The longest node name (it is part of Redis hash field names).
pub const NODE_NAME_BYTES_MAX: usize = 64;
/// The most nodes `nodes` may list (each draw carries the list).
pub const CLUSTER_NODES_MAX: usize = 64;

fn check_node_name(key: &str, node: &str) -> Result<(), ConfigError> {
    if node.is_empty()
        || node.len() > NODE_NAME_BYTES_MAX
        || !node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(err(
            key,
            format!("{node:?}: 1 to {NODE_NAME_BYTES_MAX} letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

pub(super) fn cluster_config(
    s: Option<&ClusterSection>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(s) = s else {
        return Ok(None);
    };
    let redis_url = s.redis_url.clone().ok_or_else(|| {
        err(
            "cluster.redis_url",
            "required, e.g. \"redis://127.0.0.1:6379\"",
        )
    })?;
    if !redis_url.starts_with("redis://") {
        return Err(err(
            "cluster.redis_url",
            format!("{redis_url:?}: use redis://host:port (TLS to Redis is not supported yet)"),
        ));
    }
    let node = s
        .node
        .clone()
        .ok_or_else(|| err("cluster.node", "required: a name unique in the cluster"))?;
    check_node_name("cluster.node", &node)?;
    let lease_ttl = match &s.lease_ttl {
        None => LEASE_TTL_DEFAULT,
        Some(t) => parse_duration(t)
            .filter(|d| (LEASE_TTL_MIN..=LEASE_TTL_MAX).contains(d))
            .ok_or_else(|| {
                err(
                    "cluster.lease_ttl",
                    format!("{t:?}: a duration from 1s to 10m"),
                )
            })?,
    };
    let fail_mode = match s.fail_mode.as_deref() {
        None | Some("closed") => FailMode::Closed,
        Some("open") => FailMode::Open,
        Some(other) => {
            return Err(err(
                "cluster.fail_mode",
                format!("{other:?}: use \"closed\" or \"open\""),
            ))
        }
    };
    let nodes = s.nodes.clone().unwrap_or_default();
    if nodes.len() > CLUSTER_NODES_MAX {
        return Err(err(
            "cluster.nodes",
            format!("{} nodes: at most {CLUSTER_NODES_MAX}", nodes.len()),
        ));
    }
    for (i, n) in nodes.iter().enumerate() {
        check_node_name("cluster.nodes", n)?;
        if nodes[..i].contains(n) {
            return Err(err("cluster.nodes", format!("{n:?} is listed twice")));
        }
    }
    if !nodes.is_empty() && !nodes.contains(&node) {
        return Err(err(
            "cluster.nodes",
            format!("must list this node, {node:?}, too"),
        ));
    }
    Ok(Some(ClusterConfig {
        redis_url,
        node,
        lease_ttl,
        fail_mode,
        nodes,
    }))
}
