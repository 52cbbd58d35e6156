//! The cluster's spend on budgets, for the spend views of any node
//! ([`crate::admin::ClusterTotals`]): each budget's hash read in one
//! pipelined round trip, its contributions, leases and held money summed.

use crate::admin::{ClusterSpend, ClusterTotals};
use crate::budget::period::Period;
use crate::ledger::EntityKind;
use crate::money::Money;

use super::lua_money::from_lua;

/// Most hashes read in one call (a budget list pages at fewer).
pub const TOTALS_PER_CALL_MAX: usize = 4096;

pub struct RedisTotals {
    conn: super::SharedConn,
}

impl RedisTotals {
    pub fn new(redis_url: &str) -> redis::RedisResult<RedisTotals> {
        Ok(RedisTotals {
            conn: super::SharedConn::open(redis_url)?,
        })
    }

    fn read(&self, keys: &[String]) -> redis::RedisResult<Vec<Vec<(String, String)>>> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("HGETALL").arg(k);
        }
        self.conn.with(|c| pipe.query(c))
    }
}

/// A hash's fields summed; `None` when it has no node's contribution.
fn spend_of(fields: &[(String, String)]) -> Option<ClusterSpend> {
    let (mut spent, mut leased, mut held, mut nodes) = (0i128, 0i128, 0i128, 0u32);
    for (k, v) in fields {
        let Some((kind, _node)) = k.split_once(':') else {
            continue;
        };
        let amount = from_lua(v)?.picodollars();
        match kind {
            "c" => {
                spent += amount;
                nodes += 1;
            }
            "l" => leased += amount,
            "h" => held += amount,
            _ => {}
        }
    }
    (nodes > 0).then(|| ClusterSpend {
        spent: Money::from_picodollars(spent).unwrap_or(Money::MAX),
        leased: Money::from_picodollars(leased).unwrap_or(Money::MAX),
        held: Money::from_picodollars(held).unwrap_or(Money::MAX),
        nodes,
    })
}

impl ClusterTotals for RedisTotals {
    fn totals(&self, items: &[(EntityKind, &str, Period)]) -> Vec<Option<ClusterSpend>> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(TOTALS_PER_CALL_MAX) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|(kind, name, period)| super::hash_key(*kind, name, *period))
                .collect();
            match self.read(&keys) {
                Ok(hashes) => out.extend(hashes.iter().map(|f| spend_of(f))),
                Err(e) => {
                    log::warn!("cluster: reading budget totals: {e}");
                    out.extend(std::iter::repeat_n(None, chunk.len()));
                }
            }
        }
        out
    }
}
