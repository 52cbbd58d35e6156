//! The Redis scripts of cluster mode's node leases (decision 0016): one hash
//! per entity and period epoch, `bursar:{<entity>}:<epoch>`, with the limit
//! and, per node, its contribution (`c:<node>`, the node's whole spend in the
//! epoch) as of its journal sequence (`q:<node>`), its outstanding lease
//! (`l:<node>`) and when that expires (`x:<node>`, Redis's clock), and the
//! money of its expired leases not yet accounted for (`h:<node>`).
//!
//! Each script runs atomically and first moves every expired lease to held,
//! so after any script `Σ c + Σ l + Σ h <= limit` holds, unless pushes
//! report spend beyond what a node was granted (an overrun: counted in
//! `o:<node>` and returned, never hidden).
//!
//! Amounts are decimal picodollar strings (see [`super::lua_money`]).

use super::lua_money::LUA_MONEY;

/// The part every lease script shares after the money helpers: reads the
/// hash, sweeps expired leases into held, and sums it.
const LUA_LEASE_STATE: &str = r#"
-- `s.used` (Σ c + Σ l + Σ h over the nodes) and `s.node_count`.
local function state_sum(s)
  local used, count = money_zero(), 0
  for node in pairs(s.nodes) do
    count = count + 1
    for _, k in ipairs({"c:", "l:", "h:"}) do
      used = money_add(used, money_parse(s.f[k .. node] or "0"))
    end
  end
  s.used, s.node_count = used, count
end

-- `limit_arg` (optional): the limit the calling node has, as of version
-- `lv_arg` of the cluster's definitions. A hash without a limit, or with
-- one of an older version, takes it; a newer stored version is kept (the
-- caller is behind, and the draw will say so).
local function state_read(key, limit_arg, lv_arg)
  local t = redis.call("TIME")
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local raw = redis.call("HGETALL", key)
  local f = {}
  for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
  if limit_arg ~= nil and limit_arg ~= "" then
    money_parse(limit_arg)
    local lv = tonumber(lv_arg or "0")
    if lv == nil or lv < 0 then error("bursar: bad limit version") end
    if f["limit"] == nil or lv > tonumber(f["lv"] or "0") then
      f["limit"], f["lv"] = limit_arg, tostring(lv)
      redis.call("HSET", key, "limit", limit_arg, "lv", f["lv"])
    end
  end
  if f["limit"] == nil then
    error("bursar: the entity has no limit in this epoch")
  end
  local s = {now = now, limit = money_parse(f["limit"]), nodes = {}, f = f}
  for name, v in pairs(f) do
    local kind, node = string.match(name, "^([clxhqo]):(.+)$")
    if kind ~= nil then
      s.nodes[node] = true
    end
  end
  -- Expired leases are held, not returned (decision 0016).
  for node in pairs(s.nodes) do
    local l = money_parse(f["l:" .. node] or "0")
    local x = tonumber(f["x:" .. node] or "0")
    if x <= now and money_cmp(l, money_zero()) > 0 then
      local h = money_add(money_parse(f["h:" .. node] or "0"), l)
      f["h:" .. node] = money_str(h)
      f["l:" .. node] = "0"
      redis.call("HSET", key, "h:" .. node, f["h:" .. node], "l:" .. node, "0")
    end
  end
  state_sum(s)
  return s
end

-- After a loss (`lost`), the node wrote its state: it is counted again.
local function present(s, key, node)
  if s.f["lost"] ~= nil and s.f["dc:" .. node] == nil then
    s.f["dc:" .. node] = "1"
    redis.call("HSET", key, "dc:" .. node, "1")
  end
end

-- A node's contribution `c_new` as of its journal sequence `seq`: the
-- increase is taken from its held money, then its lease; beyond both it is
-- an overrun. A sequence at or below the stored one changes nothing.
-- Returns the status ("ok" | "stale") and the overrun.
local function account(s, key, node, c_new, seq)
  local c = money_parse(s.f["c:" .. node] or "0")
  local l = money_parse(s.f["l:" .. node] or "0")
  local h = money_parse(s.f["h:" .. node] or "0")
  local q = tonumber(s.f["q:" .. node] or "-1")
  if seq <= q then
    return "stale", money_zero()
  end
  local delta = money_sub(c_new, c)
  if money_cmp(delta, money_zero()) < 0 then
    error("bursar: a contribution went down")
  end
  local from_h = delta
  if money_cmp(from_h, h) > 0 then from_h = h end
  h = money_sub(h, from_h)
  delta = money_sub(delta, from_h)
  local from_l = delta
  if money_cmp(from_l, l) > 0 then from_l = l end
  l = money_sub(l, from_l)
  local over = money_sub(delta, from_l)
  local o = money_add(money_parse(s.f["o:" .. node] or "0"), over)
  s.f["c:" .. node], s.f["q:" .. node] = money_str(c_new), tostring(seq)
  s.f["l:" .. node], s.f["h:" .. node], s.f["o:" .. node] = money_str(l), money_str(h), money_str(o)
  redis.call("HSET", key, "c:" .. node, s.f["c:" .. node], "q:" .. node, s.f["q:" .. node],
    "l:" .. node, s.f["l:" .. node], "h:" .. node, s.f["h:" .. node], "o:" .. node, s.f["o:" .. node])
  s.nodes[node] = true
  present(s, key, node)
  state_sum(s)
  return "ok", over
end

-- Whether the hash went back in time for `node`: the node had a write
-- acknowledged as of journal sequence `acked` (-1: none), and the stored
-- sequence is lower (Redis restarted empty or from an old snapshot, or was
-- flushed). Then the hash is quarantined for `ttl` ms: no draw grants until
-- every live node has declared its state again (each does on its next
-- call, as this one is told to), so the totals are whole again.
local function regressed(s, key, node, acked, ttl)
  if acked == nil or acked < 0 then return false end
  local q = tonumber(s.f["q:" .. node] or "-1")
  if q >= acked then return false end
  s.f["qu"] = tostring(s.now + ttl)
  s.f["lost"] = "1"
  redis.call("HSET", key, "qu", s.f["qu"], "lost", "1")
  -- Who declared since: nobody yet (see `quarantined`).
  for name in pairs(s.f) do
    if string.sub(name, 1, 3) == "dc:" then
      redis.call("HDEL", key, name)
      s.f[name] = nil
    end
  end
  return true
end


-- What the other nodes have pushed: Σ c over nodes but `node`.
local function others_spent(s, node)
  local sum = money_zero()
  for n in pairs(s.nodes) do
    if n ~= node then sum = money_add(sum, money_parse(s.f["c:" .. n] or "0")) end
  end
  return sum
end

-- No draw grants while quarantined: for `ttl` after a loss, and, given
-- the cluster's node list (`nodes`, comma-separated), until every node on
-- it has written its state since the loss (then the loss is over).
local function quarantined(s, key, nodes)
  if tonumber(s.f["qu"] or "0") > s.now then return true end
  if s.f["lost"] == nil or nodes == nil or nodes == "" then return false end
  for n in string.gmatch(nodes, "[^,]+") do
    if s.f["dc:" .. n] == nil then return true end
  end
  s.f["lost"] = nil
  redis.call("HDEL", key, "lost")
  return false
end

-- A node process's first call on the hash: it declares its whole state,
-- its contribution `c_new` as of journal sequence `seq` and `outstanding`,
-- what it may still spend of what it holds. Whatever an earlier process of
-- the node held (lease, held money) is replaced: everything it spent is in
-- the journal the contribution comes from, and nothing it admitted still
-- runs. A contribution or sequence below the stored one is an error: the
-- node's journal is behind what it pushed (its state was lost).
local function hello(s, key, node, c_new, seq, outstanding)
  local c = money_parse(s.f["c:" .. node] or "0")
  local q = tonumber(s.f["q:" .. node] or "-1")
  if money_cmp(c_new, c) < 0 or seq < q then
    error("bursar: the node's journal is behind what it pushed before")
  end
  s.f["c:" .. node], s.f["q:" .. node] = money_str(c_new), tostring(seq)
  s.f["l:" .. node], s.f["h:" .. node] = money_str(outstanding), "0"
  redis.call("HSET", key, "c:" .. node, s.f["c:" .. node], "q:" .. node, s.f["q:" .. node],
    "l:" .. node, s.f["l:" .. node], "h:" .. node, "0")
  s.nodes[node] = true
  present(s, key, node)
  state_sum(s)
end
"#;

/// Draws a node lease: `KEYS[1]` the entity's hash; `ARGV` node, need,
/// want, ttl (ms), and optionally the limit the node has and the version
/// of the cluster's definitions it is as of, and, on its process's first
/// call on the hash, the node's contribution, journal sequence and
/// outstanding money (see `hello`: what an earlier process of the node
/// held is replaced by what this one declares). A hash without a limit,
/// or with an older version's, takes the given one; a different stored
/// limit refuses the draw (the node is behind, or the nodes' files
/// disagree: nobody may draw on a limit not every node has). `ARGV[7]` is
/// the journal sequence of the node's last write Redis acknowledged on
/// this hash (-1: none): a lower stored one means Redis lost state (see
/// `regressed`): the draw grants nothing, says "lost" and returns what was
/// stored for the node before (its contribution and sequence), so the
/// node can tell how much was lost (the drift). `ARGV[8..10]` are the
/// declaration (empty strings: none); `ARGV[11]`, optional, the cluster's
/// node list, comma-separated. While the hash is quarantined (see
/// `quarantined`), draws that need money say "quarantine". Grants all of
/// `need` or nothing, at most `max(need, want)` and, above `need`, at most
/// an even share of what is available among the nodes on the hash (so
/// slices shrink near the limit and every node can draw), never more than
/// is available; adds the grant to the node's lease and renews its expiry
/// (a draw of zero renews only). Returns `{granted, available after, now
/// ms, status, stored contribution before, stored sequence before, what
/// the other nodes have pushed}`,
/// status "ok", "refused" (`need` is more than is available; the hash
/// keeps `rf` until the next grant), "limit"
/// (granted 0; available is the stored limit), "lost" or "quarantine".
pub const LUA_DRAW: &str = r#"
local key, node = KEYS[1], ARGV[1]
local need, want = money_parse(ARGV[2]), money_parse(ARGV[3])
local ttl = tonumber(ARGV[4])
if money_cmp(need, money_zero()) < 0 or money_cmp(want, money_zero()) < 0 or ttl == nil or ttl <= 0 then
  error("bursar: bad draw arguments")
end
local s = state_read(key, ARGV[5], ARGV[6])
local prev_c, prev_q = s.f["c:" .. node] or "0", s.f["q:" .. node] or "-1"
if ARGV[5] ~= nil and ARGV[5] ~= "" and money_cmp(money_parse(ARGV[5]), s.limit) ~= 0 then
  return {"0", money_str(s.limit), tostring(s.now), "limit", prev_c, prev_q}
end
local lost = regressed(s, key, node, tonumber(ARGV[7] or "-1"), ttl)
if ARGV[8] ~= nil and ARGV[8] ~= "" then
  local seq = tonumber(ARGV[9])
  if seq == nil then error("bursar: bad draw arguments") end
  hello(s, key, node, money_parse(ARGV[8]), seq, money_parse(ARGV[10]))
end
local available = money_sub(s.limit, s.used)
if lost then
  return {"0", money_str(available), tostring(s.now), "lost", prev_c, prev_q}
end
local grant = money_zero()
local status = "refused"
if money_cmp(need, money_zero()) > 0 and quarantined(s, key, ARGV[11]) then
  status = "quarantine"
elseif money_cmp(need, available) <= 0 then
  status = "ok"
  local nodes = s.node_count
  if s.nodes[node] == nil then nodes = nodes + 1 end
  local share = money_div(available, 2 * nodes)
  grant = money_max(need, money_min(want, share))
  if money_cmp(grant, available) > 0 then grant = available end
end
-- `rf`: a node was refused since the last grant (the budget is exhausted
-- in the cluster; the spend feed tells the other nodes).
if status == "refused" and money_cmp(need, money_zero()) > 0 then
  redis.call("HSET", key, "rf", "1")
elseif money_cmp(grant, money_zero()) > 0 and s.f["rf"] ~= nil then
  redis.call("HDEL", key, "rf")
end
local l = money_add(money_parse(s.f["l:" .. node] or "0"), grant)
redis.call("HSET", key, "l:" .. node, money_str(l), "x:" .. node, tostring(s.now + ttl))
return {money_str(grant), money_str(money_sub(available, grant)), tostring(s.now), status,
  prev_c, prev_q, money_str(others_spent(s, node))}
"#;

/// Pushes a node's contribution: `KEYS[1]` the entity's hash; `ARGV` node,
/// contribution (the node's whole spend in the epoch), its journal
/// sequence. A sequence at or below the stored one changes nothing (a repeat or a
/// reordered push). The increase is taken from the node's held money, then
/// its lease; beyond both it is an overrun, added to `o:<node>`. A stored
/// contribution above the pushed one (a bug, or two processes as one node)
/// is an error. Optionally the limit and its version follow, as for a
/// draw (they create the hash if needed), then the sequence of the node's
/// last acknowledged write and the quarantine in ms, as for a draw: a hash
/// that went back in time changes nothing and says "lost" (the node
/// declares its state with its next draw). Returns `{"ok" | "stale" |
/// "lost", contribution, lease, held, overrun of this push, what the other
/// nodes have pushed}` (for "lost": the stored contribution and sequence
/// before).
pub const LUA_PUSH: &str = r#"
local key, node = KEYS[1], ARGV[1]
local c_new, seq = money_parse(ARGV[2]), tonumber(ARGV[3])
if seq == nil or money_cmp(c_new, money_zero()) < 0 then
  error("bursar: bad push arguments")
end
local s = state_read(key, ARGV[4], ARGV[5])
if regressed(s, key, node, tonumber(ARGV[6] or "-1"), tonumber(ARGV[7] or "0")) then
  return {"lost", s.f["c:" .. node] or "0", s.f["q:" .. node] or "-1", "0", "0"}
end
local status, over = account(s, key, node, c_new, seq)
return {status, s.f["c:" .. node] or "0", s.f["l:" .. node] or "0", s.f["h:" .. node] or "0",
  money_str(over), money_str(others_spent(s, node))}
"#;

/// Gives back part of a node's lease: `KEYS[1]` the entity's hash; `ARGV`
/// node, amount, and the journal sequence of the node's last write Redis
/// acknowledged on this hash (as for a draw). The amount leaves the node's
/// lease, then its held money (never more than both). A hash that does
/// not exist or went back in time for the node changes nothing (the
/// node's next draw declares its state, which already leaves this out).
/// Returns `{"ok" | "lost" | "none", released}`.
pub const LUA_RELEASE: &str = r#"
local key, node = KEYS[1], ARGV[1]
local amount = money_parse(ARGV[2])
if money_cmp(amount, money_zero()) < 0 then error("bursar: bad release arguments") end
if redis.call("EXISTS", key) == 0 then return {"none", "0"} end
local s = state_read(key, nil, nil)
local acked = tonumber(ARGV[3] or "-1")
if acked ~= nil and acked >= 0 and tonumber(s.f["q:" .. node] or "-1") < acked then
  return {"lost", "0"}
end
local l = money_parse(s.f["l:" .. node] or "0")
local h = money_parse(s.f["h:" .. node] or "0")
local from_l = money_min(amount, l)
local from_h = money_min(money_sub(amount, from_l), h)
redis.call("HSET", key, "l:" .. node, money_str(money_sub(l, from_l)),
  "h:" .. node, money_str(money_sub(h, from_h)))
return {"ok", money_str(money_add(from_l, from_h))}
"#;

/// A lease script with its helpers, ready for `redis::Script::new`.
pub fn script(body: &str) -> String {
    format!("{LUA_MONEY}{LUA_LEASE_STATE}{body}")
}
