//! Admin changes made on one node apply on all (decision 0016).
//!
//! The admin API's definitions (the overlay, `governance.json`) are kept in
//! Redis as one versioned whole, `bursar:governance` (`version`, `overlay`,
//! the `node` that wrote it). A change on any node is proposed on top of
//! the version that node has ([`RedisOverlay::propose`], compare and set in
//! one script): a node behind another's change is refused (409) until it
//! has applied it. Each accepted version is announced on the stream
//! `bursar:changes`, which every node's `bursar-cluster-defs` thread reads
//! (blocking, so a change reaches the others in about one round trip) and
//! applies through [`Governance::apply_shared`]: validated, booked,
//! persisted and published exactly like a change of its own.
//!
//! A Redis that lost the definitions (restarted empty, flushed) is given
//! them back by the first node that notices, at the version that node has.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::admin::{Governance, Overlay, ProposeError, SharedOverlay};

use super::node::{REDIS_IO_TIMEOUT, REDIS_RECONNECT_INTERVAL};

/// The hash of the cluster's definitions.
pub const GOVERNANCE_KEY: &str = "bursar:governance";
/// The stream announcing each new version.
pub const CHANGES_STREAM: &str = "bursar:changes";
/// Entries the stream keeps (approximately): it announces, it is not the
/// record (the hash is).
pub const CHANGES_STREAM_LEN_MAX: u64 = 1000;
/// How long one blocking read of the stream waits.
const STREAM_BLOCK: Duration = Duration::from_millis(500);

/// Sets the definitions to `ARGV[2]` at version `ARGV[3]` if the stored
/// version is `ARGV[1]` (0: none), and announces it. Returns `{"ok",
/// version}` or `{"conflict", stored version}`.
const LUA_PROPOSE: &str = r#"
local stored = tonumber(redis.call("HGET", KEYS[1], "version") or "0")
local base, next = tonumber(ARGV[1]), tonumber(ARGV[3])
if base == nil or next == nil or next <= base then
  error("bursar: bad proposal")
end
if stored ~= base then
  return {"conflict", tostring(stored)}
end
redis.call("HSET", KEYS[1], "version", tostring(next), "overlay", ARGV[2], "node", ARGV[4])
redis.call("XADD", KEYS[2], "MAXLEN", "~", ARGV[5], "*", "version", tostring(next))
return {"ok", tostring(next)}
"#;

/// The cluster's store of the definitions, for [`Governance`].
pub struct RedisOverlay {
    conn: super::SharedConn,
    node: String,
    script: redis::Script,
}

impl RedisOverlay {
    pub fn new(redis_url: &str, node: &str) -> redis::RedisResult<RedisOverlay> {
        Ok(RedisOverlay {
            conn: super::SharedConn::open(redis_url)?,
            node: node.to_string(),
            script: redis::Script::new(LUA_PROPOSE),
        })
    }

    /// Sets the definitions at `next` if the cluster is at `base`.
    fn set(&self, base: u64, next: u64, overlay: &Overlay) -> Result<u64, ProposeError> {
        let json = serde_json::to_string(overlay).map_err(|e| {
            ProposeError::Unavailable(format!("cannot encode the definitions: {e}"))
        })?;
        let out: Vec<String> = self
            .conn
            .with(|c| {
                self.script
                    .key(GOVERNANCE_KEY)
                    .key(CHANGES_STREAM)
                    .arg(base)
                    .arg(&json)
                    .arg(next)
                    .arg(&self.node)
                    .arg(CHANGES_STREAM_LEN_MAX)
                    .invoke(c)
            })
            .map_err(|e| ProposeError::Unavailable(e.to_string()))?;
        let version = out.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        match out.first().map(String::as_str) {
            Some("ok") => Ok(version),
            _ => Err(ProposeError::Conflict(version)),
        }
    }

    /// The stored definitions and their version (`None`: none stored).
    fn fetch(&self) -> redis::RedisResult<Option<(u64, Overlay)>> {
        // Bounded as the file is: the length first, the value only if it fits.
        let len: u64 = self.conn.with(|c| {
            redis::cmd("HSTRLEN")
                .arg(GOVERNANCE_KEY)
                .arg("overlay")
                .query(c)
        })?;
        if len > crate::admin::OVERLAY_BYTES_MAX {
            log::error!(
                "cluster: the definitions in Redis are {len} bytes, more than {}: not applied",
                crate::admin::OVERLAY_BYTES_MAX
            );
            return Ok(None);
        }
        let (version, json): (Option<u64>, Option<String>) = self.conn.with(|c| {
            redis::cmd("HMGET")
                .arg(GOVERNANCE_KEY)
                .arg("version")
                .arg("overlay")
                .query(c)
        })?;
        match (version, json) {
            (Some(v), Some(json)) => match serde_json::from_str::<Overlay>(&json) {
                Ok(overlay) => Ok(Some((v, overlay))),
                Err(e) => {
                    log::error!(
                        "cluster: the definitions in Redis (version {v}) do not parse: {e}"
                    );
                    Ok(None)
                }
            },
            _ => Ok(None),
        }
    }
}

impl SharedOverlay for RedisOverlay {
    fn propose(&self, base: u64, overlay: &Overlay) -> Result<u64, ProposeError> {
        self.set(base, base + 1, overlay)
    }
}

/// The `bursar-cluster-defs` thread: applies every new version of the
/// cluster's definitions on this node.
pub struct DefinitionsWatcher {
    join: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl DefinitionsWatcher {
    pub fn start(
        redis_url: &str,
        store: Arc<RedisOverlay>,
        governance: Arc<Governance>,
    ) -> std::io::Result<DefinitionsWatcher> {
        let client = redis::Client::open(redis_url)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let join = std::thread::Builder::new()
            .name("bursar-cluster-defs".into())
            .spawn(move || watch(client, &store, &governance, &flag))?;
        Ok(DefinitionsWatcher {
            join: Some(join),
            stop,
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for DefinitionsWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn watch(client: redis::Client, store: &RedisOverlay, governance: &Governance, stop: &AtomicBool) {
    // Its own connection: a blocking stream read must not hold the one the
    // admin API proposes changes on.
    let mut conn: Option<redis::Connection> = None;
    let mut last_id = String::new();
    let mut next_connect = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if conn.is_none() {
            if Instant::now() < next_connect {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            next_connect = Instant::now() + REDIS_RECONNECT_INTERVAL;
            match connect(&client) {
                Ok((c, id)) => {
                    conn = Some(c);
                    last_id = id;
                    // What changed while this node was not reading.
                    catch_up(store, governance);
                }
                Err(_) => continue,
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let read: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(STREAM_BLOCK.as_millis() as u64)
            .arg("COUNT")
            .arg(100)
            .arg("STREAMS")
            .arg(CHANGES_STREAM)
            .arg(&last_id)
            .query(c);
        match read {
            Ok(redis::Value::Nil) => {}
            Ok(v) => {
                if let Some(id) = last_stream_id(&v) {
                    last_id = id;
                }
                catch_up(store, governance);
            }
            Err(e) => {
                log::warn!("cluster: reading {CHANGES_STREAM}: {e}");
                conn = None;
            }
        }
    }
}

/// A connection for blocking reads (its read timeout above the block) and
/// the stream's last id now (`0` when it has none).
fn connect(client: &redis::Client) -> redis::RedisResult<(redis::Connection, String)> {
    let mut c = client.get_connection_with_timeout(REDIS_IO_TIMEOUT)?;
    c.set_read_timeout(Some(STREAM_BLOCK + REDIS_IO_TIMEOUT))?;
    c.set_write_timeout(Some(REDIS_IO_TIMEOUT))?;
    let last: redis::Value = redis::cmd("XREVRANGE")
        .arg(CHANGES_STREAM)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut c)?;
    let id = match &last {
        redis::Value::Array(entries) => entries.first().and_then(entry_id),
        _ => None,
    };
    Ok((c, id.unwrap_or_else(|| "0".to_string())))
}

/// Applies the stored definitions if they are newer than this node's; gives
/// them back to a Redis that lost them (or never had them).
fn catch_up(store: &RedisOverlay, governance: &Governance) {
    let mine = governance.shared_version.load(Ordering::Acquire);
    match store.fetch() {
        Ok(Some((version, overlay))) if version > mine => {
            match governance.apply_shared(overlay, version) {
                Ok(_) => {
                    log::info!("cluster: applied the cluster's definitions, version {version}")
                }
                Err(e) => log::error!(
                    "cluster: cannot apply the cluster's definitions, version {version}: {e} \
                     (this node stays at {mine}; budgets that changed refuse draws here)"
                ),
            }
        }
        Ok(Some((version, _))) if version == mine => {}
        Ok(stored) => {
            // Redis has none, or an older version than this node applied:
            // it lost them. Give back this node's (a race with another node
            // doing the same is settled by the compare and set).
            let base = stored.map_or(0, |(v, _)| v);
            let overlay = governance.read(|o, _, _| o.clone());
            if mine == 0 && overlay.is_empty() {
                return;
            }
            let next = mine.max(base + 1);
            match store.set(base, next, &overlay) {
                Ok(v) => {
                    log::warn!("cluster: Redis had lost the definitions (at {base}); restored version {v} from this node");
                    governance.shared_version.store(v, Ordering::Release);
                }
                Err(e) => log::warn!("cluster: restoring the definitions: {e:?}"),
            }
        }
        Err(e) => log::warn!("cluster: reading the cluster's definitions: {e}"),
    }
}

fn entry_id(entry: &redis::Value) -> Option<String> {
    match entry {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
            Some(redis::Value::SimpleString(s)) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The id of the last entry of an XREAD answer: `[[stream, [[id,
/// fields]...]]]` (RESP2) or `{stream: [[id, fields]...]}` (RESP3).
fn last_stream_id(v: &redis::Value) -> Option<String> {
    let entries = match v {
        redis::Value::Array(streams) => match streams.first()? {
            redis::Value::Array(stream) => stream.get(1)?,
            _ => return None,
        },
        redis::Value::Map(streams) => &streams.first()?.1,
        _ => return None,
    };
    match entries {
        redis::Value::Array(entries) => entries.last().and_then(entry_id),
        _ => None,
    }
}
