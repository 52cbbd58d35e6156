//! The semantic cache: a prompt that asks the same as a stored one, in
//! other words, is answered with the stored answer; a prompt that asks
//! anything else never is.
//!
//! A request is looked up in three stages (decision 0014):
//!
//! * **a, candidates**, on the worker: the prompt's static embedding (the
//!   mean of int8 table rows, [`crate::embed::StaticTable`]) against the
//!   entries stored under the same context, by SIMD cosine
//!   ([`super::ann::VectorIndex`]), at least `similarity_min`;
//! * **b, guards**, on the worker: the two prompts must agree on every
//!   number, unit, quoted text, name, identifier, negation, scope word and
//!   the order of their content words ([`super::guards`]);
//! * **c, confirmation**, on the confirmation thread: the full sentence
//!   model's cosine between the two prompts, at least `confirm_min`. The
//!   stored prompt's vector is computed once, when it is stored; the new
//!   prompt's once per lookup, whatever the number of candidates.
//!
//! What the semantic cache compares is only the last user message: its
//! *context* (the model, the system prompt, every parameter, the
//! namespace) must be the same, byte for byte after canonicalisation, so
//! candidates are searched only among entries stored under the same
//! context hash. Two tenants, two system prompts or two models never share
//! an index. The default policy takes single-turn prompts only: an
//! optional system (or developer) message and one user message of text;
//! tools, images, files, audio and earlier turns make a request exact-only.

use std::collections::HashMap;

use super::ann::VectorIndex;
use super::vectors::Quantized;
use super::CacheKey;

/// The longest prompt the semantic cache compares, in bytes: a longer one
/// is looked up exactly only. Long prompts are rarely asked twice in other
/// words, and the guards' and the embeddings' work grows with length.
pub const SEMANTIC_PROMPT_BYTES_MAX: usize = 2048;
/// Most candidates stage a hands to the guards and the confirmation.
pub const SEMANTIC_CANDIDATES_MAX: usize = 4;
/// How many candidates a graph search keeps (an index above
/// `ann::FLAT_ENTRIES_MAX` entries): fewer is faster and misses more near
/// duplicates, and a miss is only a provider call. 16 keeps stages a and b
/// under 50 µs at p99 with 100k entries in a context (docs/benchmarks.md).
pub const SEMANTIC_EF_SEARCH: usize = 16;

/// A request's semantic query: its context's hash and its prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The request without its prompt, hashed with its namespace.
    pub context: CacheKey,
    /// The user message's text.
    pub prompt: String,
}

/// The prompt of a canonical request body (the ignored members already
/// removed) and the body with the prompt taken out, if the default policy
/// lets the semantic cache answer it: a chat request with no tools (nor
/// functions), whose messages are at most one system or developer message
/// of text and then one user message of text.
pub fn query(body: &mut serde_json::Value) -> Option<(String, serde_json::Value)> {
    let obj = body.as_object()?;
    for member in [
        "tools",
        "functions",
        "tool_choice",
        "function_call",
        "audio",
    ] {
        if obj.contains_key(member) {
            return None;
        }
    }
    if obj
        .get("n")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1)
        != 1
    {
        return None;
    }
    let messages = obj.get("messages")?.as_array()?;
    let (last, before) = messages.split_last()?;
    if before.len() > 1 {
        return None;
    }
    for m in before {
        let role = m.get("role")?.as_str()?;
        if !matches!(role, "system" | "developer") || text_of(m.get("content")?).is_none() {
            return None;
        }
    }
    if last.get("role")?.as_str()? != "user" {
        return None;
    }
    let m = last.as_object()?;
    // Anything beside the role and the content (a name, say) stays in the
    // context; only the content is compared.
    let prompt = text_of(m.get("content")?)?;
    if prompt.trim().is_empty() || prompt.len() > SEMANTIC_PROMPT_BYTES_MAX {
        return None;
    }
    let mut rest = body.clone();
    let last = rest
        .get_mut("messages")?
        .as_array_mut()?
        .last_mut()?
        .as_object_mut()?;
    last.insert("content".into(), serde_json::Value::Null);
    Some((prompt, rest))
}

/// The text of a message's content: a string, or text parts only (joined
/// by newlines); `None` for anything else (an image, a file, audio).
fn text_of(content: &serde_json::Value) -> Option<String> {
    match content {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                if p.get("type")?.as_str()? != "text" {
                    return None;
                }
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(p.get("text")?.as_str()?);
            }
            Some(out)
        }
        _ => None,
    }
}

/// What indexing a request's prompt needs, computed at its lookup: its
/// query, its static vector and, if a confirmation ran, the confirming
/// model's vector (so the store does not run the model again).
#[derive(Debug, Clone)]
pub struct Pending {
    pub query: Query,
    pub static_vec: Vec<f32>,
    pub confirm: Option<Vec<f32>>,
}

/// A stored prompt, for the guards and the confirmation.
struct Stored {
    /// The exact cache's key of its answer.
    exact: CacheKey,
    context: CacheKey,
    prompt: Box<str>,
    /// What the guards read of the prompt, read once when it is stored.
    features: super::guards::Features,
    /// The confirming model's vector (`None` without confirmation).
    confirm: Option<Quantized>,
}

/// A candidate that passed stages a and b.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The exact cache's key of its answer.
    pub exact: CacheKey,
    /// Stage a's cosine.
    pub similarity: f32,
    /// The stored prompt's vector of the confirming model.
    pub confirm: Option<Quantized>,
}

/// One worker's semantic index: an index of static vectors per context,
/// and what each entry needs for the guards and the confirmation. Entries
/// follow the exact shard's: one is added when an answer is stored and
/// dropped when the shard drops the answer.
pub struct SemanticShard {
    dims: usize,
    spaces: HashMap<CacheKey, VectorIndex, foldhash::fast::RandomState>,
    entries: HashMap<u64, Stored, foldhash::fast::RandomState>,
    by_exact: HashMap<CacheKey, u64, foldhash::fast::RandomState>,
    next_id: u64,
    /// What [`SemanticShard::bytes`] reports.
    bytes: usize,
    /// Lifetime counts of each stage's outcome, for /metrics.
    pub candidates: u64,
    pub guard_refusals: u64,
}

impl SemanticShard {
    pub fn new(dims: usize) -> SemanticShard {
        SemanticShard {
            dims,
            spaces: HashMap::default(),
            entries: HashMap::default(),
            by_exact: HashMap::default(),
            next_id: 0,
            bytes: 0,
            candidates: 0,
            guard_refusals: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Memory held by the indexes (vectors and graphs) and the stored
    /// prompts, in bytes: kept as entries come and go (the worker reads it
    /// after every store; summing 100k entries there would cost more than
    /// the store).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn stored_bytes(s: &Stored) -> usize {
        s.prompt.len()
            + s.features.heap_bytes()
            + std::mem::size_of::<Stored>()
            + s.confirm.as_ref().map_or(0, |q| q.data.len())
    }

    /// Adds the prompt whose answer the exact cache holds under `exact`.
    pub fn insert(
        &mut self,
        exact: CacheKey,
        query: &Query,
        static_vec: &[f32],
        confirm: Option<&[f32]>,
    ) {
        if static_vec.len() != self.dims {
            return;
        }
        self.remove(exact);
        let id = self.next_id;
        self.next_id += 1;
        let dims = self.dims;
        let fresh = !self.spaces.contains_key(&query.context);
        let space = self.spaces.entry(query.context).or_insert_with(|| {
            VectorIndex::with_options(
                dims,
                super::ann::Options {
                    ef_search: SEMANTIC_EF_SEARCH,
                    ..super::ann::Options::default()
                },
            )
        });
        let before = if fresh { 0 } else { space.bytes() };
        let indexed = space.insert(id, static_vec).is_ok();
        let after = space.bytes();
        if !indexed && space.is_empty() {
            // Full, or a vector that is not finite: not indexed.
            self.spaces.remove(&query.context);
            self.bytes = self.bytes.saturating_sub(before);
            return;
        }
        self.bytes = (self.bytes + after).saturating_sub(before);
        if !indexed {
            return;
        }
        let stored = Stored {
            exact,
            context: query.context,
            prompt: query.prompt.as_str().into(),
            features: super::guards::Features::of(&query.prompt),
            confirm: confirm.map(Quantized::new),
        };
        self.bytes += Self::stored_bytes(&stored);
        self.entries.insert(id, stored);
        self.by_exact.insert(exact, id);
    }

    /// Drops the entry of the answer under `exact`, if any.
    pub fn remove(&mut self, exact: CacheKey) {
        let Some(id) = self.by_exact.remove(&exact) else {
            return;
        };
        let Some(s) = self.entries.remove(&id) else {
            return;
        };
        self.bytes = self.bytes.saturating_sub(Self::stored_bytes(&s));
        if let Some(space) = self.spaces.get_mut(&s.context) {
            let before = space.bytes();
            space.remove(id);
            if space.is_empty() {
                self.spaces.remove(&s.context);
                self.bytes = self.bytes.saturating_sub(before);
            } else {
                self.bytes = (self.bytes + space.bytes()).saturating_sub(before);
            }
        }
    }

    /// Stages a and b: the stored prompts of `query`'s context whose static
    /// cosine is at least `similarity_min` and that the guards find
    /// compatible with its prompt, best first, into `out`.
    pub fn candidates(
        &mut self,
        query: &Query,
        static_vec: &[f32],
        similarity_min: f32,
        out: &mut Vec<Candidate>,
    ) {
        out.clear();
        let Some(space) = self.spaces.get_mut(&query.context) else {
            return;
        };
        let mut found = Vec::with_capacity(SEMANTIC_CANDIDATES_MAX);
        if space
            .search(
                static_vec,
                SEMANTIC_CANDIDATES_MAX,
                similarity_min,
                &mut found,
            )
            .is_err()
        {
            return;
        }
        let mut asked = None;
        for (id, similarity) in found {
            let Some(s) = self.entries.get(&id) else {
                continue;
            };
            self.candidates += 1;
            let asked = asked.get_or_insert_with(|| super::guards::Features::of(&query.prompt));
            // The guards are symmetric: one call judges both ways.
            if super::guards::agree(&s.features, asked).is_err() {
                self.guard_refusals += 1;
                continue;
            }
            out.push(Candidate {
                exact: s.exact,
                similarity,
                confirm: s.confirm.clone(),
            });
        }
    }
}

/// Stage c: the best candidate whose confirming cosine with the prompt's
/// vector `confirm` is at least `confirm_min`, with that cosine.
pub fn confirmed(
    candidates: &[Candidate],
    confirm: &[f32],
    confirm_min: f32,
) -> Option<(CacheKey, f32)> {
    let q = Quantized::new(confirm);
    candidates
        .iter()
        .filter_map(|c| Some((c.exact, c.confirm.as_ref()?.cosine(&q))))
        .filter(|(_, cos)| *cos >= confirm_min)
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(body: &str) -> Option<(String, serde_json::Value)> {
        query(&mut serde_json::from_str(body).unwrap())
    }

    #[test]
    fn a_single_turn_text_prompt_is_compared_and_its_context_kept() {
        let (p, rest) = q(r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"What is the capital of France?"}]}"#).unwrap();
        assert_eq!(p, "What is the capital of France?");
        assert_eq!(rest["messages"][0]["content"], "be brief");
        assert!(rest["messages"][1]["content"].is_null());
        let (p, _) = q(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#).unwrap();
        assert_eq!(p, "a\nb");
    }

    #[test]
    fn the_default_policy_refuses_tools_images_and_earlier_turns() {
        for body in [
            r#"{"model":"m","tools":[],"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","n":2,"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","content":"b"},{"role":"user","content":"c"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"   "}]}"#,
            r#"{"model":"m","messages":[{"role":"system","content":"s"}]}"#,
            r#"{"model":"m","messages":[]}"#,
        ] {
            assert!(q(body).is_none(), "{body}");
        }
        let long = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(SEMANTIC_PROMPT_BYTES_MAX + 1)
        );
        assert!(q(&long).is_none());
    }

    #[test]
    fn the_byte_count_is_kept_exactly_as_entries_come_and_go() {
        let mut shard = SemanticShard::new(4);
        let recount = |s: &SemanticShard| {
            s.entries
                .values()
                .map(SemanticShard::stored_bytes)
                .sum::<usize>()
                + s.spaces.values().map(VectorIndex::bytes).sum::<usize>()
        };
        let q = |c: u128, p: &str| Query {
            context: CacheKey(c),
            prompt: p.to_string(),
        };
        for i in 0..50u128 {
            let v = [1.0, (i % 7) as f32, (i % 3) as f32, 0.5];
            shard.insert(CacheKey(i), &q(i % 3, &format!("prompt {i}")), &v, Some(&v));
            assert_eq!(shard.bytes(), recount(&shard));
        }
        for i in (0..50u128).step_by(2) {
            shard.remove(CacheKey(i));
            assert_eq!(shard.bytes(), recount(&shard));
        }
        // Replacing an entry, and emptying a context.
        shard.insert(CacheKey(1), &q(9, "again"), &[1.0, 0.0, 0.0, 0.0], None);
        assert_eq!(shard.bytes(), recount(&shard));
        for i in 0..50u128 {
            shard.remove(CacheKey(i));
        }
        assert_eq!((shard.len(), shard.bytes()), (0, 0));
    }

    #[test]
    fn another_system_prompt_model_or_tenant_is_another_context() {
        use crate::providers::Endpoint;
        let ctx = |ns: &str, body: &str| {
            super::super::keys(ns, Endpoint::ChatCompletions, body.as_bytes(), false, true)
                .unwrap()
                .semantic
                .unwrap()
                .context
        };
        let base = r#"{"model":"m","temperature":0,"messages":[{"role":"system","content":"s"},{"role":"user","content":"q1"}]}"#;
        let c0 = ctx("acme", base);
        // The prompt itself is not part of the context.
        assert_eq!(c0, ctx("acme", &base.replace("q1", "another question")));
        for (ns, body) in [
            ("globex", base.to_string()),
            ("acme", base.replace("\"s\"", "\"s2\"")),
            ("acme", base.replace("\"m\"", "\"m2\"")),
            (
                "acme",
                base.replace("\"temperature\":0", "\"temperature\":0,\"max_tokens\":9"),
            ),
        ] {
            assert_ne!(c0, ctx(ns, &body), "{ns} {body}");
        }
    }
}
