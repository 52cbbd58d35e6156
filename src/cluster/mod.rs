//! Cluster mode (issue 18; design: docs/decisions/0016-cluster-mode.md).
//!
//! Status: building blocks only, not wired to the ledger or the config.
//! What is here is complete and tested on its own against a real
//! `redis-server` (`tests/cluster_lua.rs`):
//!
//! - [`lua_money`]: exact picodollar arithmetic inside Redis's Lua scripts,
//!   whose numbers are doubles (exact integers only below 2^53, about $9,007
//!   in picodollars): amounts cross as decimal strings and are added,
//!   subtracted and compared in two limbs.
//! - [`scripts`]: the node lease scripts on one hash per entity and epoch:
//!   draw (all of `need` or nothing, never past the limit) and push (a
//!   node's absolute contribution as of its journal sequence: a repeat
//!   changes nothing); both first move expired leases to held. Property-tested
//!   with three simulated nodes against the invariant `Σ contributions +
//!   Σ leases + Σ held <= limit`.
//!
//! The `bursar-cluster` thread, the ledger's node leases, the change stream,
//! the reconciler's drift report and the `[cluster]` config come next; until
//! then no part of the gateway uses this module.

pub mod lua_money;
pub mod scripts;
