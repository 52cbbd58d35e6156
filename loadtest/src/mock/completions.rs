//! `POST /v1/completions` (legacy text completions), plain and streamed.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::body::{EventStream, Part, SseEvent};
use super::common::{
    include_usage, model, parse_object, spaced, wants_stream, Ctx, Generation, Object, Reply,
    StreamUsage, TokenCounts, Usage,
};
use super::errors::{to_json, ApiError};
use super::tokens::{generate_text, words, Words};
use super::SYSTEM_FINGERPRINT;

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: &'a [Choice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
}

#[derive(Serialize)]
struct Choice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// The prompt of a legacy completion request.
struct Prompt<'a> {
    /// Words of all prompt strings, or the lengths of token-id prompts.
    tokens: u64,
    /// The last prompt string (empty for token-id prompts), the seed text.
    last_text: &'a str,
}

impl<'a> Prompt<'a> {
    /// `prompt`: a string, an array of strings, an array of token ids or an
    /// array of token-id arrays; absent or null is the empty prompt.
    fn parse(req: &'a Object) -> Result<Self, ApiError> {
        let invalid = || {
            ApiError::bad_request(
                "`prompt` must be a string, an array of strings or an array of token ids",
                Some("prompt"),
            )
        };
        let (tokens, last_text) = match req.get("prompt") {
            None | Some(Value::Null) => (0, ""),
            Some(Value::String(s)) => (words(s), s.as_str()),
            Some(Value::Array(items)) => {
                let mut tokens = 0u64;
                let mut last = "";
                for item in items {
                    match item {
                        Value::String(s) => {
                            tokens += words(s);
                            last = s;
                        }
                        Value::Number(n) if n.is_i64() || n.is_u64() => tokens += 1,
                        Value::Array(ids) if ids.iter().all(|v| v.is_i64() || v.is_u64()) => {
                            tokens += ids.len() as u64;
                        }
                        _ => return Err(invalid()),
                    }
                }
                (tokens, last)
            }
            Some(_) => return Err(invalid()),
        };
        Ok(Prompt {
            tokens: tokens.max(1),
            last_text,
        })
    }
}

/// Answers a legacy completion request.
pub fn handle(body: &[u8], ctx: &Ctx) -> Result<Reply, ApiError> {
    let req = parse_object(body)?;
    let model = model(&req)?;
    let prompt = Prompt::parse(&req)?;
    let generation = Generation::new(&req, &["max_tokens"], ctx.mis)?;
    let counts = TokenCounts::new(prompt.tokens, generation.n_out, ctx.mis);
    // Legacy completions report no breakdowns unless a test asked for some.
    let details = ctx.mis.cached_tokens.is_some() || ctx.mis.reasoning_tokens.is_some();
    let usage = Usage::new(&counts, details);
    let meta = Meta {
        id: format!("cmpl-mock-{:016x}", ctx.body_hash),
        model: model.to_owned(),
        created: ctx.created,
    };
    if wants_stream(&req)? {
        let usage = StreamUsage::new(include_usage(&req)?, ctx.mis.omit_usage, usage);
        let stream_meta = Arc::new((meta, usage));
        return Ok(Reply::Stream(stream(
            stream_meta,
            prompt.last_text,
            generation,
        )));
    }
    let text = generate_text(prompt.last_text, generation.n_out);
    let choice = Choice {
        text: &text,
        index: 0,
        logprobs: None,
        finish_reason: Some(generation.finish_reason),
    };
    let usage = (!ctx.mis.omit_usage).then_some(Some(&usage));
    Ok(Reply::ok(meta.json(std::slice::from_ref(&choice), usage)))
}

/// The identity fields every completion object or chunk repeats.
struct Meta {
    id: String,
    model: String,
    created: u64,
}

impl Meta {
    fn json(&self, choices: &[Choice], usage: Option<Option<&Usage>>) -> bytes::Bytes {
        to_json(&Completion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage,
        })
    }

    /// A chunk with one choice.
    fn chunk(
        &self,
        usage: &StreamUsage,
        text: &str,
        finish: Option<&'static str>,
        part: Part,
    ) -> SseEvent {
        let choice = Choice {
            text,
            index: 0,
            logprobs: None,
            finish_reason: finish,
        };
        let json = self.json(std::slice::from_ref(&choice), usage.chunk_field());
        SseEvent::data(&json, part)
    }
}

/// One chunk per word, a finish chunk, the usage chunk if asked, `[DONE]`.
fn stream(meta: Arc<(Meta, StreamUsage)>, seed_text: &str, generation: Generation) -> EventStream {
    let words_meta = Arc::clone(&meta);
    let content = Words::new(seed_text, generation.n_out)
        .enumerate()
        .map(move |(i, word)| {
            let (meta, usage) = &*words_meta;
            meta.chunk(usage, &spaced(i, word), None, Part::Content)
        });
    let tail = std::iter::once_with(move || {
        let (meta, usage) = &*meta;
        let mut events = vec![meta.chunk(usage, "", Some(generation.finish_reason), Part::Tail)];
        if let Some(final_usage) = &usage.final_usage {
            let json = meta.json(&[], Some(Some(final_usage)));
            events.push(SseEvent::data(&json, Part::Tail));
        }
        events.push(SseEvent::done());
        events
    })
    .flatten();
    Box::new(content.chain(tail))
}
