//! Cluster mode (issue 18; design: docs/decisions/0016-cluster-mode.md):
//! several nodes share budgets through Redis, with the strict bound of zero
//! across them.
//!
//! - [`lua_money`]: exact picodollar arithmetic inside Redis's Lua scripts,
//!   whose numbers are doubles (exact integers only below 2^53, about $9,007
//!   in picodollars): amounts cross as decimal strings and are added,
//!   subtracted and compared in two limbs.
//! - [`scripts`]: the node lease scripts on one hash per entity and period:
//!   draw (all of `need` or nothing, never past the limit, a node's first
//!   call declaring its whole state) and push (a node's absolute
//!   contribution as of its journal sequence: a repeat changes nothing);
//!   both first move expired leases to held.
//! - [`node`]: the `bursar-cluster` thread, the one owner of the Redis
//!   connection: it draws node leases for the ledger thread and pushes this
//!   node's spend, talking to the ledger by messages only.
//! - [`alerts`]: budget alerts and reports sent once for the cluster: each
//!   node claims an alert in Redis before its outbox takes it.
//! - [`feed`]: which budget hashes were pushed to, polled by every node,
//!   so a node that serves none of a budget's traffic still knows the
//!   cluster's spend on it.
//! - [`governance`]: admin changes made on one node apply on all: the
//!   admin API's definitions versioned in Redis, proposed by compare and
//!   set, announced on a stream the `bursar-cluster-defs` thread reads.
//!
//! The ledger's side (node caps, lease requests waiting for a draw, the
//! pushes) is [`crate::ledger::NodeLeaseView`] and
//! [`crate::books::node_lease`]; this module imports them, never the
//! reverse.

pub mod alerts;
pub mod feed;
pub mod governance;
pub mod lua_money;
pub mod node;
pub mod scripts;
pub mod totals;

use crate::budget::period::Period;
use crate::ledger::EntityKind;

/// The hash of an entity's budget in one period:
/// `bursar:{<kind>:<name>}:<period start ms>`, or `...:prepaid` for a
/// budget that never resets (in cluster mode its one period starts at the
/// Unix epoch on every node), `...:prepaid:<ms>` after the cluster reset
/// it at that instant. A cluster reset of a resetting budget starts a
/// period (so a hash) of its own too. The braces are Redis Cluster's hash
/// tag: every period of an entity lives on one shard.
pub fn hash_key(kind: EntityKind, name: &str, period: Period) -> String {
    hash_key_of_tag(&hash_tag(kind, name), period)
}

/// `<kind>:<name>` with `%`, `{` and `}` percent-escaped, so the braces
/// around it in a key are the only ones.
pub(crate) fn hash_tag(kind: EntityKind, name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 12);
    out.push_str(crate::books::registry::kind_str(kind));
    out.push(':');
    for ch in name.chars() {
        match ch {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// A Redis connection shared by the control plane's callers (the admin
/// API's proposals, the spend views' reads), made on first use with the
/// I/O timeouts and made afresh after any error.
pub(crate) struct SharedConn {
    client: redis::Client,
    conn: std::sync::Mutex<Option<redis::Connection>>,
}

impl SharedConn {
    pub(crate) fn open(redis_url: &str) -> redis::RedisResult<SharedConn> {
        Ok(SharedConn {
            client: redis::Client::open(redis_url)?,
            conn: std::sync::Mutex::new(None),
        })
    }

    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => {
                let c = self
                    .client
                    .get_connection_with_timeout(node::REDIS_IO_TIMEOUT)?;
                c.set_read_timeout(Some(node::REDIS_IO_TIMEOUT))?;
                c.set_write_timeout(Some(node::REDIS_IO_TIMEOUT))?;
                slot.insert(c)
            }
        };
        let result = f(conn);
        if result.is_err() {
            // The next call connects afresh.
            *slot = None;
        }
        result
    }
}

pub(crate) fn hash_key_of_tag(tag: &str, period: Period) -> String {
    if period.is_forever() && period.start_ms == 0 {
        format!("bursar:{{{tag}}}:prepaid")
    } else if period.is_forever() {
        // Reset by the cluster at that instant.
        format!("bursar:{{{tag}}}:prepaid:{}", period.start_ms)
    } else {
        format!("bursar:{{{tag}}}:{}", period.start_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_keys_have_no_braces_of_their_own() {
        let day = Period {
            start_ms: 1_796_601_600_000,
            end_ms: 1_796_688_000_000,
        };
        assert_eq!(
            hash_key(EntityKind::Key, "alice", day),
            "bursar:{key:alice}:1796601600000"
        );
        assert_eq!(
            hash_key(EntityKind::Tag, "a{b}%c", Period::forever(0)),
            "bursar:{tag:a%7Bb%7D%25c}:prepaid"
        );
        assert_eq!(
            hash_key(EntityKind::Key, "alice", Period::forever(7)),
            "bursar:{key:alice}:prepaid:7"
        );
    }
}
