//! `POST /v1/chat/completions`, plain and streamed.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::body::{EventStream, Part, SseEvent};
use super::common::{
    content_text, include_usage, model, parse_object, spaced, wants_stream, Ctx, Generation,
    Object, Reply, StreamUsage, TokenCounts, Usage,
};
use super::errors::{to_json, ApiError};
use super::tokens::{generate_text, words, Words};
use super::SYSTEM_FINGERPRINT;

/// Tokens added per message, and once per request ("reply priming").
const PER_MESSAGE_TOKENS: u64 = 3;
const PER_REQUEST_TOKENS: u64 = 3;

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<()>>,
}

/// The prompt of a chat request: its message texts.
struct Prompt<'a> {
    texts: Vec<Cow<'a, str>>,
}

impl<'a> Prompt<'a> {
    fn parse(req: &'a Object) -> Result<Self, ApiError> {
        let messages = match req.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => m,
            Some(Value::Array(_)) => {
                return Err(ApiError::bad_request(
                    "`messages` must not be empty",
                    Some("messages"),
                ))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "`messages` must be an array of messages",
                    Some("messages"),
                ))
            }
        };
        let texts = messages
            .iter()
            .map(|m| match m {
                Value::Object(m) => content_text(m.get("content"), "messages"),
                _ => Err(ApiError::bad_request(
                    "each message must be an object",
                    Some("messages"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Prompt { texts })
    }

    /// sum over messages of (3 + words(text)) + 3.
    fn tokens(&self) -> u64 {
        self.texts
            .iter()
            .map(|t| PER_MESSAGE_TOKENS + words(t))
            .sum::<u64>()
            + PER_REQUEST_TOKENS
    }

    /// The text the generated words are seeded with.
    fn last_text(&self) -> &str {
        self.texts.last().map_or("", |t| t.as_ref())
    }
}

/// Answers a chat completion request.
pub fn handle(body: &[u8], ctx: &Ctx) -> Result<Reply, ApiError> {
    let req = parse_object(body)?;
    let model = model(&req)?;
    let prompt = Prompt::parse(&req)?;
    let generation = Generation::new(&req, &["max_completion_tokens", "max_tokens"], ctx.mis)?;
    let counts = TokenCounts::new(prompt.tokens(), generation.n_out, ctx.mis);
    let usage = Usage::new(&counts, true);
    let id = format!("chatcmpl-mock-{:016x}", ctx.body_hash);
    if wants_stream(&req)? {
        let meta = Arc::new(StreamMeta {
            id,
            model: model.to_owned(),
            created: ctx.created,
            usage: StreamUsage::new(include_usage(&req)?, ctx.mis.omit_usage, usage),
        });
        return Ok(Reply::Stream(stream(meta, prompt.last_text(), generation)));
    }
    let text = generate_text(prompt.last_text(), generation.n_out);
    let completion = ChatCompletion {
        id: &id,
        object: "chat.completion",
        created: ctx.created,
        model,
        choices: [Choice {
            index: 0,
            message: Message {
                role: "assistant",
                content: &text,
                refusal: None,
            },
            logprobs: None,
            finish_reason: generation.finish_reason,
        }],
        usage: (!ctx.mis.omit_usage).then_some(usage),
        system_fingerprint: SYSTEM_FINGERPRINT,
    };
    Ok(Reply::ok(to_json(&completion)))
}

/// What every chunk of one stream shares.
struct StreamMeta {
    id: String,
    model: String,
    created: u64,
    usage: StreamUsage,
}

impl StreamMeta {
    /// A `data:` event with one choice carrying `delta`.
    fn choice_event(
        &self,
        delta: Delta,
        finish_reason: Option<&'static str>,
        part: Part,
    ) -> SseEvent {
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        };
        self.event(
            std::slice::from_ref(&choice),
            self.usage.chunk_field(),
            part,
        )
    }

    fn event(
        &self,
        choices: &[ChunkChoice],
        usage: Option<Option<&Usage>>,
        part: Part,
    ) -> SseEvent {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage,
        };
        SseEvent::data(&to_json(&chunk), part)
    }

    /// Finish chunk, the usage chunk if asked for, and `[DONE]`.
    fn tail(&self, finish_reason: &'static str) -> Vec<SseEvent> {
        let mut events = vec![self.choice_event(Delta::default(), Some(finish_reason), Part::Tail)];
        if let Some(usage) = &self.usage.final_usage {
            events.push(self.event(&[], Some(Some(usage)), Part::Tail));
        }
        events.push(SseEvent::done());
        events
    }
}

/// The chunk events: role, one per word, finish, usage (if asked), `[DONE]`.
fn stream(meta: Arc<StreamMeta>, seed_text: &str, generation: Generation) -> EventStream {
    let role = Delta {
        role: Some("assistant"),
        content: Some(""),
        refusal: Some(None),
    };
    let lead = std::iter::once(meta.choice_event(role, None, Part::Lead));
    let words_meta = Arc::clone(&meta);
    let content = Words::new(seed_text, generation.n_out)
        .enumerate()
        .map(move |(i, word)| {
            let text = spaced(i, word);
            let delta = Delta {
                content: Some(&text),
                ..Delta::default()
            };
            words_meta.choice_event(delta, None, Part::Content)
        });
    let tail = std::iter::once_with(move || meta.tail(generation.finish_reason)).flatten();
    Box::new(lead.chain(content).chain(tail))
}
