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
//! - [`governance`]: admin changes made on one node apply on all: the
//!   admin API's definitions versioned in Redis, proposed by compare and
//!   set, announced on a stream the `bursar-cluster-defs` thread reads.
//!
//! The ledger's side (node caps, lease requests waiting for a draw, the
//! pushes) is [`crate::ledger::NodeLeaseView`] and
//! [`crate::books::node_lease`]; this module imports them, never the
//! reverse.

pub mod governance;
pub mod lua_money;
pub mod node;
pub mod scripts;

use crate::budget::period::Alignment;
use crate::config::Config;

/// Cluster mode's demands on a config, checked by `check-config` and at
/// start (the ledger refuses the same when a budget is set): every node
/// must agree on each budget's periods without talking, so a resetting
/// budget must be calendar-aligned (a rolling one counts from when each
/// node created it).
pub fn check_budgets(config: &Config) -> Result<(), String> {
    if config.cluster.is_none() {
        return Ok(());
    }
    for (kind, name, budget) in crate::books::registry::config_entities(config) {
        if let Some(b) = budget {
            if b.reset.is_some() && b.alignment != Alignment::Calendar {
                return Err(format!(
                    "{} {name:?}: in cluster mode a resetting budget must be calendar-aligned \
                     (calendar_aligned = true), so every node agrees on its periods",
                    crate::books::registry::kind_str(kind)
                ));
            }
        }
    }
    Ok(())
}
