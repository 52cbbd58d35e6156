//! The response cache: the same question, asked again in the same tenant,
//! is answered from memory and costs nothing.
//!
//! This is the exact cache: a request's key is a hash of its canonical form
//! (the endpoint and the body parsed and written again with its members
//! sorted, minus the members that cannot change the answer) and of its
//! namespace (the tenant: a customer, team or key), so two tenants never
//! share an entry and a different question never has the same key. Each
//! worker keeps its own shard ([`Shard`]): no lock, no shared state; the same
//! question answered on another worker is paid for once there too.
//!
//! A shard is bounded by entries and by bytes, and evicts with the CLOCK
//! algorithm (second chance: an entry read since the hand last passed is
//! kept once more), which approximates LRU with O(1) work and no list
//! surgery on a hit. An entry lives at most the configured TTL.

pub mod confirm;
pub mod guards;
pub mod semantic;

/// The vector index and the int8 kernel (in the `embed/` crate, built
/// optimised in every profile).
pub use bursar_embed::{ann, vectors};

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};

use crate::providers::Endpoint;

/// Most bytes one stored answer may hold; a larger answer is not cached.
pub const CACHE_ENTRY_BYTES_MAX: usize = 4 << 20;

/// A request's key in the cache: 128 bits of SHA-256 over its namespace,
/// endpoint and canonical body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub u128);

/// Members that never change the answer: who asked, what to store, how to
/// bill, and the stream options (the key has `stream` and whether usage was
/// asked for on its own).
const IGNORED: [&str; 5] = [
    "user",
    "metadata",
    "store",
    "service_tier",
    "stream_options",
];

/// Why a request is not looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCacheable {
    /// Not a JSON object.
    Body,
    /// Sampled (a `temperature` above 0, or none, whose default samples)
    /// and the policy caches only deterministic requests.
    Sampled,
}

/// The key of a request, or why it has none. `sampled_ok`: whether the
/// policy caches sampled requests too.
pub fn key(
    namespace: &str,
    endpoint: Endpoint,
    body: &[u8],
    sampled_ok: bool,
) -> Result<CacheKey, NotCacheable> {
    keys(namespace, endpoint, body, sampled_ok, false).map(|k| k.exact)
}

/// What a request is looked up under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The exact cache's key.
    pub exact: CacheKey,
    /// The semantic cache's query, when it was asked for and the request
    /// is one the semantic cache answers.
    pub semantic: Option<semantic::Query>,
}

/// The exact key of a request and, with `semantic`, its semantic query
/// (see [`semantic::query`]), from one parse; or why it has none.
pub fn keys(
    namespace: &str,
    endpoint: Endpoint,
    body: &[u8],
    sampled_ok: bool,
    semantic: bool,
) -> Result<Keys, NotCacheable> {
    if !sampled_ok && endpoint != Endpoint::Embeddings {
        // Decided on the raw bytes first (the byte walker, no parse): a
        // request that is not cacheable pays almost nothing for the cache.
        // A name written with escapes is not found here: not cached.
        let deterministic = crate::tokens::json::top_member(body, b"temperature")
            .and_then(|(s, e)| std::str::from_utf8(&body[s..e]).ok())
            .and_then(|t| t.parse::<f64>().ok())
            .is_some_and(|t| t == 0.0);
        if !deterministic {
            return Err(NotCacheable::Sampled);
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(body).map_err(|_| NotCacheable::Body)?;
    let obj = v.as_object_mut().ok_or(NotCacheable::Body)?;
    if !sampled_ok && endpoint != Endpoint::Embeddings {
        // The parse is the judge: a duplicate `temperature` member (the
        // walker saw the first, serde keeps the last) must say 0 as well.
        let deterministic = obj
            .get("temperature")
            .and_then(serde_json::Value::as_f64)
            .is_some_and(|t| t == 0.0);
        if !deterministic {
            return Err(NotCacheable::Sampled);
        }
    }
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    for k in IGNORED {
        obj.remove(k);
    }
    // serde_json's map is ordered by key (no `preserve_order`): writing the
    // value back gives one canonical text for every member order, spacing
    // and string escape.
    let canonical = serde_json::to_vec(&v).map_err(|_| NotCacheable::Body)?;
    let exact = digest(&[
        &(namespace.len() as u64).to_le_bytes(),
        namespace.as_bytes(),
        endpoint.name().as_bytes(),
        &[u8::from(include_usage)],
        &canonical,
    ]);
    let semantic = if semantic && endpoint == Endpoint::ChatCompletions {
        semantic::query(&mut v).and_then(|(prompt, rest)| {
            let context = serde_json::to_vec(&rest).ok()?;
            Some(semantic::Query {
                context: digest(&[
                    b"semantic\0",
                    &(namespace.len() as u64).to_le_bytes(),
                    namespace.as_bytes(),
                    endpoint.name().as_bytes(),
                    &[u8::from(include_usage)],
                    &context,
                ]),
                prompt,
            })
        })
    } else {
        None
    };
    Ok(Keys { exact, semantic })
}

/// Where a request's answer is stored when it is paid for: its exact key
/// and, when the semantic cache may answer it, what it indexes the prompt
/// under.
#[derive(Debug, Clone)]
pub struct Store {
    pub exact: CacheKey,
    pub semantic: Option<semantic::Pending>,
}

/// 128 bits of SHA-256 over `parts`, in order.
fn digest(parts: &[&[u8]]) -> CacheKey {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    CacheKey(u128::from_le_bytes(k))
}

/// A stored answer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The body the client received: JSON, or a stream's SSE events.
    pub body: Box<[u8]>,
    pub stream: bool,
    /// What answering it cost when it was paid for, in picodollars (the
    /// spend a hit avoids).
    pub cost_picodollars: i128,
    /// The model that answered (the log row's model on a hit).
    pub model: Box<str>,
    /// Unix ms after which the entry is not served.
    pub expires_at_ms: i64,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.body.len() + self.model.len() + std::mem::size_of::<Entry>()
    }
}

struct Slot {
    entry: Entry,
    /// Read since the clock hand last passed.
    referenced: bool,
}

/// One worker's cache.
pub struct Shard {
    map: HashMap<CacheKey, Slot, foldhash::fast::RandomState>,
    /// Keys in insertion order, the clock's hand at the front.
    clock: VecDeque<CacheKey>,
    bytes: usize,
    entries_max: usize,
    bytes_max: usize,
    /// Keys of entries dropped (evicted, expired, replaced) since the last
    /// [`Shard::take_dropped`]: the semantic index follows the shard.
    dropped: Vec<CacheKey>,
    /// Lifetime counts, for /metrics.
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

impl Shard {
    pub fn new(entries_max: usize, bytes_max: usize) -> Shard {
        Shard {
            map: HashMap::default(),
            clock: VecDeque::new(),
            bytes: 0,
            entries_max,
            bytes_max,
            dropped: Vec::new(),
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The entry under `key`, if it has not expired.
    pub fn get(&mut self, key: CacheKey, now_ms: i64) -> Option<&Entry> {
        let expired = match self.map.get(&key) {
            None => {
                self.misses += 1;
                return None;
            }
            Some(s) => s.entry.expires_at_ms <= now_ms,
        };
        if expired {
            self.remove(key);
            self.misses += 1;
            return None;
        }
        self.hits += 1;
        let slot = self.map.get_mut(&key)?;
        slot.referenced = true;
        Some(&slot.entry)
    }

    /// Stores `entry` under `key` (replacing an older one), evicting until
    /// both bounds hold. An entry larger than either bound is not stored.
    pub fn insert(&mut self, key: CacheKey, entry: Entry) {
        let size = entry.bytes();
        if size > self.bytes_max
            || entry.body.len() > CACHE_ENTRY_BYTES_MAX
            || self.entries_max == 0
        {
            return;
        }
        self.remove(key);
        while self.map.len() >= self.entries_max || self.bytes + size > self.bytes_max {
            if !self.evict_one() {
                break;
            }
        }
        self.bytes += size;
        self.map.insert(
            key,
            Slot {
                entry,
                referenced: false,
            },
        );
        self.clock.push_back(key);
    }

    /// The entry under `key`, expired or not, without counting a read.
    pub fn peek(&self, key: CacheKey) -> Option<&Entry> {
        self.map.get(&key).map(|s| &s.entry)
    }

    /// The keys of the entries dropped since the last call. The caller
    /// takes them after every insert and lookup, so the list holds at most
    /// what one insert evicts.
    pub fn take_dropped(&mut self) -> Vec<CacheKey> {
        std::mem::take(&mut self.dropped)
    }

    /// Drops the entry under `key`, if any.
    pub fn remove(&mut self, key: CacheKey) {
        if let Some(s) = self.map.remove(&key) {
            self.dropped.push(key);
            self.bytes -= s.entry.bytes();
            // Its place in the clock is skipped when the hand reaches it.
        }
    }

    /// Advances the clock hand to the first entry not read since it last
    /// passed, and evicts it. `false` when the shard is empty.
    fn evict_one(&mut self) -> bool {
        // Each key is visited at most twice (once to clear its bit), plus
        // the stale keys of removed entries: bounded by the clock's length.
        let mut budget = 2 * self.clock.len() + 1;
        while let Some(k) = self.clock.pop_front() {
            budget -= 1;
            match self.map.get_mut(&k) {
                None => continue,
                Some(s) if s.referenced && budget > 0 => {
                    s.referenced = false;
                    self.clock.push_back(k);
                }
                Some(_) => {
                    self.remove(k);
                    self.evictions += 1;
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize, expires: i64) -> Entry {
        Entry {
            body: vec![b'x'; n].into(),
            stream: false,
            cost_picodollars: 1,
            model: "m".into(),
            expires_at_ms: expires,
        }
    }

    #[test]
    fn the_same_question_in_any_member_order_and_spacing_has_one_key() {
        let a = br#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}],"user":"u1"}"#;
        let b = br#"{ "messages" : [ {"content":"hi","role":"user"} ], "temperature":0.0 ,"model":"m","user":"u2","metadata":{"a":"b"}}"#;
        let ka = key("acme", Endpoint::ChatCompletions, a, false).unwrap();
        let kb = key("acme", Endpoint::ChatCompletions, b, false).unwrap();
        // 0 and 0.0 are different texts: a miss, never a wrong hit.
        let c = br#"{"messages":[{"content":"hi","role":"user"}],"temperature":0,"model":"m"}"#;
        assert_eq!(
            ka,
            key("acme", Endpoint::ChatCompletions, c, false).unwrap()
        );
        assert_ne!(ka, kb);
    }

    #[test]
    fn anything_that_changes_the_answer_changes_the_key() {
        let base = r#"{"model":"m","temperature":0,"max_tokens":5,"messages":[{"role":"system","content":"s"},{"role":"user","content":"q"}]}"#;
        let k = |ns: &str, e: Endpoint, b: &str| key(ns, e, b.as_bytes(), true).unwrap();
        let k0 = k("acme", Endpoint::ChatCompletions, base);
        for other in [
            base.replace("\"m\"", "\"m2\""),
            base.replace("\"s\"", "\"s2\""),
            base.replace("\"q\"", "\"q \""),
            base.replace("\"max_tokens\":5", "\"max_tokens\":6"),
            base.replace("\"temperature\":0", "\"temperature\":0,\"tools\":[]"),
            base.replace("\"temperature\":0", "\"temperature\":0,\"stream\":true"),
            base.replace(
                "\"temperature\":0",
                "\"temperature\":0,\"stream_options\":{\"include_usage\":true}",
            ),
        ] {
            assert_ne!(k0, k("acme", Endpoint::ChatCompletions, &other), "{other}");
        }
        // Another tenant, another endpoint: another key.
        assert_ne!(k0, k("globex", Endpoint::ChatCompletions, base));
        assert_ne!(k0, k("acme", Endpoint::Responses, base));
        // Who asked does not change the answer.
        let with_user = base.replace("\"temperature\":0", "\"temperature\":0,\"user\":\"x\"");
        assert_eq!(k0, k("acme", Endpoint::ChatCompletions, &with_user));
    }

    #[test]
    fn sampled_requests_are_cached_only_where_the_policy_says() {
        let sampled = br#"{"model":"m","temperature":0.7,"messages":[]}"#;
        let unset = br#"{"model":"m","messages":[]}"#;
        for b in [&sampled[..], &unset[..]] {
            assert_eq!(
                key("n", Endpoint::ChatCompletions, b, false),
                Err(NotCacheable::Sampled)
            );
            assert!(key("n", Endpoint::ChatCompletions, b, true).is_ok());
        }
        // Embeddings do not sample.
        assert!(key(
            "n",
            Endpoint::Embeddings,
            br#"{"model":"e","input":"x"}"#,
            false
        )
        .is_ok());
        assert_eq!(
            key("n", Endpoint::ChatCompletions, b"[1]", true),
            Err(NotCacheable::Body)
        );
        // Duplicates: both readings must say 0.
        for dup in [
            &br#"{"temperature":0,"temperature":1,"messages":[]}"#[..],
            &br#"{"temperature":1,"temperature":0,"messages":[]}"#[..],
        ] {
            assert_eq!(
                key("n", Endpoint::ChatCompletions, dup, false),
                Err(NotCacheable::Sampled)
            );
        }
    }

    #[test]
    fn entries_expire_and_the_bounds_hold_with_second_chance_eviction() {
        let mut s = Shard::new(3, 1 << 20);
        for i in 0..3u128 {
            s.insert(CacheKey(i), entry(10, 1_000));
        }
        // 0 is read: it survives the next eviction, 1 does not.
        assert!(s.get(CacheKey(0), 0).is_some());
        s.insert(CacheKey(3), entry(10, 1_000));
        assert_eq!(s.len(), 3);
        assert!(s.get(CacheKey(1), 0).is_none());
        assert!(s.get(CacheKey(0), 0).is_some());
        assert!(s.get(CacheKey(3), 0).is_some());
        // Expired: not served, and gone.
        assert!(s.get(CacheKey(2), 1_000).is_none());
        assert_eq!(s.len(), 2);
        // The byte bound.
        let per = entry(100, 1).bytes();
        let mut s = Shard::new(100, 3 * per);
        for i in 0..10u128 {
            s.insert(CacheKey(i), entry(100, 1_000));
            assert!(s.bytes() <= 3 * per);
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.evictions, 7);
        // Too large for the shard: not stored.
        s.insert(CacheKey(99), entry(4 * per, 1_000));
        assert!(s.get(CacheKey(99), 0).is_none());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::{json, Map, Value};

        /// A small JSON value: numbers, strings, booleans, arrays, objects.
        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                any::<i32>().prop_map(|n| json!(n)),
                "[a-z \"\\\\é]{0,8}".prop_map(Value::String),
                any::<bool>().prop_map(Value::Bool),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map("[a-e]{1,3}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// `obj`'s text with its members in reverse order, spaced out.
        fn reversed(v: &Value) -> String {
            match v {
                Value::Object(m) => {
                    let members: Vec<String> = m
                        .iter()
                        .rev()
                        .map(|(k, v)| format!("{} : {}", json!(k), reversed(v)))
                        .collect();
                    format!("{{ {} }}", members.join(" , "))
                }
                Value::Array(a) => {
                    let items: Vec<String> = a.iter().map(reversed).collect();
                    format!("[ {} ]", items.join(", "))
                }
                other => other.to_string(),
            }
        }

        /// Every path to a leaf of `v`.
        fn change_one_leaf(v: &mut Value, pick: &mut usize) -> bool {
            match v {
                Value::Object(m) => m.values_mut().any(|x| change_one_leaf(x, pick)),
                Value::Array(a) => a.iter_mut().any(|x| change_one_leaf(x, pick)),
                leaf => {
                    if *pick == 0 {
                        *leaf = match leaf {
                            Value::Bool(b) => Value::Bool(!*b),
                            Value::Number(n) => json!(n.as_i64().unwrap_or(0).wrapping_add(1)),
                            Value::String(s) => Value::String(format!("{s}x")),
                            _ => Value::Null,
                        };
                        true
                    } else {
                        *pick -= 1;
                        false
                    }
                }
            }
        }

        proptest! {
            #[test]
            fn member_order_and_spacing_never_change_a_key_and_any_value_does(
                members in prop::collection::btree_map("[f-k]{1,4}", value(), 1..6),
                pick in 0usize..32,
            ) {
                let mut m: Map<String, Value> = members.into_iter().collect();
                m.insert("temperature".into(), json!(0));
                let v = Value::Object(m);
                let text = v.to_string();
                let k = key("ns", Endpoint::ChatCompletions, text.as_bytes(), false).unwrap();
                let other = reversed(&v);
                prop_assert_eq!(
                    k,
                    key("ns", Endpoint::ChatCompletions, other.as_bytes(), false).unwrap()
                );
                let mut changed = v.clone();
                let mut n = pick;
                if change_one_leaf(&mut changed, &mut n) && changed != v {
                    let k2 = key("ns", Endpoint::ChatCompletions, changed.to_string().as_bytes(), true);
                    prop_assert_ne!(Ok(k), k2);
                }
            }
        }
    }

    #[test]
    fn replacing_an_entry_keeps_the_byte_count_exact() {
        let mut s = Shard::new(10, 1 << 20);
        s.insert(CacheKey(1), entry(10, 5));
        s.insert(CacheKey(1), entry(30, 5));
        assert_eq!(s.len(), 1);
        assert_eq!(s.bytes(), entry(30, 5).bytes());
        s.remove(CacheKey(1));
        assert_eq!(s.bytes(), 0);
    }
}
