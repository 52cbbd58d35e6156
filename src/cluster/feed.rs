//! The cluster's spend feed: which budget hashes the nodes pushed to (or
//! were refused on), so a
//! node learns the other nodes' spend on a budget even when it serves none
//! of its traffic (no draw or push of its own would tell it). Each push
//! batch touches its hashes in a sorted set, scored by a counter; every
//! node polls what changed since its last poll ([`FEED_POLL_INTERVAL`])
//! and reads those hashes. So views, 402 bodies and the alert evaluator
//! on every node see the cluster's spend within about a poll, and any
//! node can take over an alert whose claimer died (see [`super::alerts`]).

use std::time::Duration;

use crate::ledger::EntityKind;
use crate::money::Money;

use super::lua_money::from_lua;

/// The counter that scores the feed.
pub const FEED_SEQ_KEY: &str = "bursar:spend:seq";
/// The sorted set of hashes pushed to, by the counter at their last push.
pub const FEED_KEY: &str = "bursar:spend:changed";
/// Hashes the feed keeps (the most recently pushed to).
pub const FEED_KEPT_MAX: u64 = 100_000;
/// How often a node reads the feed.
pub const FEED_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Most hashes read in one poll (the rest wait for the next).
pub const FEED_POLL_MAX: usize = 1024;

/// Touches `ARGV` (hash keys) in the feed: `KEYS[1]` the counter,
/// `KEYS[2]` the sorted set, `ARGV[1]` the bound, the rest the keys.
pub const LUA_TOUCH: &str = r#"
local n = redis.call("INCR", KEYS[1])
for i = 2, #ARGV do redis.call("ZADD", KEYS[2], n, ARGV[i]) end
local size = redis.call("ZCARD", KEYS[2])
local max = tonumber(ARGV[1])
if size > max then redis.call("ZREMRANGEBYRANK", KEYS[2], 0, size - max - 1) end
return n
"#;

/// What a hash key names ([`super::hash_key`]): the entity's kind and
/// name, and the start of its period (0 for a prepaid budget never reset).
pub fn parse_hash_key(key: &str) -> Option<(EntityKind, String, i64)> {
    let rest = key.strip_prefix("bursar:{")?;
    let (tag, rest) = rest.split_once("}:")?;
    let (kind, escaped) = tag.split_once(':')?;
    let kind = crate::books::registry::kind_from_str(kind)?;
    let name = unescape(escaped)?;
    let start_ms = match rest {
        "prepaid" => 0,
        r => r.strip_prefix("prepaid:").unwrap_or(r).parse().ok()?,
    };
    Some((kind, name, start_ms))
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let ch = match rest.get(i + 1..i + 3)? {
            "25" => '%',
            "7B" => '{',
            "7D" => '}',
            _ => return None,
        };
        out.push(ch);
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The feed's counter now (where a node starts reading).
pub fn position(conn: &mut redis::Connection) -> redis::RedisResult<u64> {
    let n: Option<u64> = redis::cmd("GET").arg(FEED_SEQ_KEY).query(conn)?;
    Ok(n.unwrap_or(0))
}

/// A hash the feed says changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub key: String,
    /// What the nodes but the polling one have pushed there.
    pub others: Money,
    /// A node's draw was refused there since the last grant (`rf`).
    pub refused: bool,
    /// Redis lost the hash's state and not every node has declared there
    /// since (`lost`).
    pub lost: bool,
}

/// The hashes pushed to (or refused on) after `after`; and the feed
/// position read up to.
pub fn poll(
    conn: &mut redis::Connection,
    after: u64,
    node: &str,
) -> redis::RedisResult<(u64, Vec<Changed>)> {
    let changed: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(FEED_KEY)
        .arg(format!("({after}"))
        .arg("+inf")
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(FEED_POLL_MAX)
        .query(conn)?;
    if changed.is_empty() {
        return Ok((after, Vec::new()));
    }
    let mut pipe = redis::pipe();
    for (key, _) in &changed {
        pipe.cmd("HGETALL").arg(key);
    }
    let hashes: Vec<Vec<(String, String)>> = pipe.query(conn)?;
    let last = changed.iter().map(|(_, n)| *n).max().unwrap_or(after);
    let mine = format!("c:{node}");
    let out = changed
        .into_iter()
        .zip(hashes)
        .filter_map(|((key, _), fields)| {
            let mut others = 0i128;
            let (mut refused, mut lost) = (false, false);
            for (k, v) in &fields {
                if k.starts_with("c:") && *k != mine {
                    others += from_lua(v)?.picodollars();
                }
                refused |= k == "rf";
                lost |= k == "lost";
            }
            Some(Changed {
                key,
                others: Money::from_picodollars(others)?,
                refused,
                lost,
            })
        })
        .collect();
    Ok((last, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::period::Period;

    #[test]
    fn hash_keys_parse_back_to_what_they_name() {
        let day = Period {
            start_ms: 1_796_601_600_000,
            end_ms: 1_796_688_000_000,
        };
        for (kind, name, period) in [
            (EntityKind::Key, "alice", day),
            (EntityKind::Tag, "a{b}%c:d", Period::forever(0)),
            (EntityKind::CustomerModel, "acme/gpt-4o", Period::forever(7)),
        ] {
            let key = super::super::hash_key(kind, name, period);
            assert_eq!(
                parse_hash_key(&key),
                Some((kind, name.to_string(), period.start_ms)),
                "{key}"
            );
        }
        assert_eq!(parse_hash_key("bursar:governance"), None);
        assert_eq!(parse_hash_key("bursar:{key:a%7}:1"), None);
    }
}
