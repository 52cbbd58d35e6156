//! `POST /v1/responses` (the Responses API), plain and streamed.
//!
//! The response object carries every field the official `openai` Python SDK
//! models as required, so it parses into `Response` and `.output_text` works.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::body::{EventStream, Part, SseEvent};
use super::common::{
    content_text, model, opt_u64, parse_object, spaced, wants_stream, Ctx, Generation, Object,
    Reply, TokenCounts,
};
use super::errors::{to_json, ApiError};
use super::tokens::{generate_text, words, Words};

/// Tokens added per input item, and once per request (as for chat).
const PER_ITEM_TOKENS: u64 = 3;
const PER_REQUEST_TOKENS: u64 = 3;

/// An empty JSON object, `{}`.
#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct ReasoningConfig {
    effort: Option<()>,
    summary: Option<()>,
}

#[derive(Serialize)]
struct TextConfig {
    format: TextFormat,
}

#[derive(Serialize)]
struct TextFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<u64>,
    background: bool,
    error: Option<()>,
    incomplete_details: Option<()>,
    instructions: &'a Value,
    max_output_tokens: Option<u64>,
    metadata: Empty,
    model: &'a str,
    output: &'a [OutputMessage<'a>],
    parallel_tool_calls: bool,
    previous_response_id: Option<()>,
    reasoning: ReasoningConfig,
    service_tier: &'static str,
    store: bool,
    temperature: f64,
    text: TextConfig,
    tool_choice: &'static str,
    tools: [(); 0],
    top_p: f64,
    truncation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a ResponseUsage>>,
    user: Option<()>,
}

#[derive(Serialize)]
struct OutputMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    status: &'static str,
    role: &'static str,
    content: &'a [OutputText<'a>],
}

#[derive(Serialize)]
struct OutputText<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    annotations: [(); 0],
    logprobs: [(); 0],
}

impl<'a> OutputText<'a> {
    fn new(text: &'a str) -> Self {
        OutputText {
            kind: "output_text",
            text,
            annotations: [],
            logprobs: [],
        }
    }
}

#[derive(Serialize, Debug, Clone)]
struct ResponseUsage {
    input_tokens: u64,
    input_tokens_details: InputTokensDetails,
    output_tokens: u64,
    output_tokens_details: OutputTokensDetails,
    total_tokens: u64,
}

#[derive(Serialize, Debug, Clone)]
struct InputTokensDetails {
    cached_tokens: u64,
    cache_write_tokens: u64,
}

#[derive(Serialize, Debug, Clone)]
struct OutputTokensDetails {
    reasoning_tokens: u64,
}

impl ResponseUsage {
    fn new(counts: &TokenCounts) -> Self {
        ResponseUsage {
            input_tokens: counts.prompt,
            input_tokens_details: InputTokensDetails {
                cached_tokens: counts.cached,
                cache_write_tokens: 0,
            },
            output_tokens: counts.completion,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: counts.reasoning,
            },
            total_tokens: counts.total(),
        }
    }
}

/// One streamed event; only the fields of its `type` are set.
#[derive(Serialize, Default)]
struct StreamEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a ResponseObject<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    item_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<&'a OutputMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<&'a OutputText<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<[(); 0]>,
}

/// The input of a Responses request: the text of each item.
fn input_texts(req: &Object) -> Result<Vec<Cow<'_, str>>, ApiError> {
    match req.get("input") {
        Some(Value::String(s)) => Ok(vec![Cow::Borrowed(s.as_str())]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::Object(item) => content_text(item.get("content"), "input"),
                _ => Err(ApiError::bad_request(
                    "each input item must be an object",
                    Some("input"),
                )),
            })
            .collect(),
        _ => Err(ApiError::bad_request(
            "`input` must be a string or an array of input items",
            Some("input"),
        )),
    }
}

/// Everything one response (plain or streamed) is built from.
struct Facts {
    id: String,
    message_id: String,
    model: String,
    created_at: u64,
    instructions: Value,
    max_output_tokens: Option<u64>,
    text: String,
    /// `None` with `x-mock-omit-usage`.
    usage: Option<ResponseUsage>,
}

impl Facts {
    /// The response object; `done` gives the completed one with its output
    /// and usage, otherwise the in-progress one with neither.
    fn response<'a>(&'a self, output: &'a [OutputMessage<'a>], done: bool) -> ResponseObject<'a> {
        let usage = match (&self.usage, done) {
            (None, _) => None,
            (Some(u), true) => Some(Some(u)),
            (Some(_), false) => Some(None),
        };
        ResponseObject {
            id: &self.id,
            object: "response",
            created_at: self.created_at,
            status: if done { "completed" } else { "in_progress" },
            completed_at: done.then_some(self.created_at),
            background: false,
            error: None,
            incomplete_details: None,
            instructions: &self.instructions,
            max_output_tokens: self.max_output_tokens,
            metadata: Empty {},
            model: &self.model,
            output,
            parallel_tool_calls: true,
            previous_response_id: None,
            reasoning: ReasoningConfig {
                effort: None,
                summary: None,
            },
            service_tier: "default",
            store: true,
            temperature: 1.0,
            text: TextConfig {
                format: TextFormat { kind: "text" },
            },
            tool_choice: "auto",
            tools: [],
            top_p: 1.0,
            truncation: "disabled",
            usage,
            user: None,
        }
    }

    fn message<'a>(&'a self, content: &'a [OutputText<'a>], done: bool) -> OutputMessage<'a> {
        OutputMessage {
            kind: "message",
            id: &self.message_id,
            status: if done { "completed" } else { "in_progress" },
            role: "assistant",
            content,
        }
    }

    /// The completed response as JSON.
    fn completed_json(&self) -> bytes::Bytes {
        let parts = [OutputText::new(&self.text)];
        let message = [self.message(&parts, true)];
        to_json(&self.response(&message, true))
    }
}

/// Answers a Responses API request.
pub fn handle(body: &[u8], ctx: &Ctx) -> Result<Reply, ApiError> {
    let req = parse_object(body)?;
    let model = model(&req)?;
    let texts = input_texts(&req)?;
    let input_tokens = texts
        .iter()
        .map(|t| PER_ITEM_TOKENS + words(t))
        .sum::<u64>()
        + PER_REQUEST_TOKENS;
    let seed_text = texts.last().map_or("", |t| t.as_ref());
    let generation = Generation::new(&req, &["max_output_tokens"], ctx.mis)?;
    let counts = TokenCounts::new(input_tokens, generation.n_out, ctx.mis);
    let facts = Facts {
        id: format!("resp_mock{:016x}", ctx.body_hash),
        message_id: format!("msg_mock{:016x}", ctx.body_hash),
        model: model.to_owned(),
        created_at: ctx.created,
        instructions: req.get("instructions").cloned().unwrap_or(Value::Null),
        max_output_tokens: opt_u64(&req, "max_output_tokens")?,
        text: generate_text(seed_text, generation.n_out),
        usage: (!ctx.mis.omit_usage).then(|| ResponseUsage::new(&counts)),
    };
    if wants_stream(&req)? {
        return Ok(Reply::Stream(stream(
            Arc::new(facts),
            seed_text,
            generation.n_out,
        )));
    }
    Ok(Reply::ok(facts.completed_json()))
}

/// A named event with its sequence number filled in.
fn event(mut ev: StreamEvent, seq: u64, part: Part) -> SseEvent {
    ev.sequence_number = seq;
    SseEvent::named(ev.kind, &to_json(&ev), part)
}

/// created, in_progress, output_item.added, content_part.added.
fn lead_events(f: &Facts) -> Vec<SseEvent> {
    let in_progress = f.response(&[], false);
    let empty_item = f.message(&[], false);
    let empty_part = OutputText::new("");
    vec![
        event(
            StreamEvent {
                kind: "response.created",
                response: Some(&in_progress),
                ..StreamEvent::default()
            },
            0,
            Part::Lead,
        ),
        event(
            StreamEvent {
                kind: "response.in_progress",
                response: Some(&in_progress),
                ..StreamEvent::default()
            },
            1,
            Part::Lead,
        ),
        event(
            StreamEvent {
                kind: "response.output_item.added",
                output_index: Some(0),
                item: Some(&empty_item),
                ..StreamEvent::default()
            },
            2,
            Part::Lead,
        ),
        event(
            StreamEvent {
                kind: "response.content_part.added",
                output_index: Some(0),
                item_id: Some(&f.message_id),
                content_index: Some(0),
                part: Some(&empty_part),
                ..StreamEvent::default()
            },
            3,
            Part::Lead,
        ),
    ]
}

/// One `response.output_text.delta` per word.
fn delta_event(f: &Facts, index: usize, word: &str, seq: u64) -> SseEvent {
    let delta = spaced(index, word);
    event(
        StreamEvent {
            kind: "response.output_text.delta",
            output_index: Some(0),
            item_id: Some(&f.message_id),
            content_index: Some(0),
            delta: Some(&delta),
            logprobs: Some([]),
            ..StreamEvent::default()
        },
        seq,
        Part::Content,
    )
}

/// output_text.done, content_part.done, output_item.done, completed.
fn tail_events(f: &Facts, first_seq: u64) -> Vec<SseEvent> {
    let parts = [OutputText::new(&f.text)];
    let message = [f.message(&parts, true)];
    let completed = f.response(&message, true);
    vec![
        event(
            StreamEvent {
                kind: "response.output_text.done",
                output_index: Some(0),
                item_id: Some(&f.message_id),
                content_index: Some(0),
                text: Some(&f.text),
                logprobs: Some([]),
                ..StreamEvent::default()
            },
            first_seq,
            Part::Tail,
        ),
        event(
            StreamEvent {
                kind: "response.content_part.done",
                output_index: Some(0),
                item_id: Some(&f.message_id),
                content_index: Some(0),
                part: parts.first(),
                ..StreamEvent::default()
            },
            first_seq + 1,
            Part::Tail,
        ),
        event(
            StreamEvent {
                kind: "response.output_item.done",
                output_index: Some(0),
                item: message.first(),
                ..StreamEvent::default()
            },
            first_seq + 2,
            Part::Tail,
        ),
        event(
            StreamEvent {
                kind: "response.completed",
                response: Some(&completed),
                ..StreamEvent::default()
            },
            first_seq + 3,
            Part::Tail,
        ),
    ]
}

/// The whole event stream; sequence numbers count up from 0.
fn stream(facts: Arc<Facts>, seed_text: &str, n_out: usize) -> EventStream {
    let lead = lead_events(&facts);
    let first_delta_seq = lead.len() as u64;
    let delta_facts = Arc::clone(&facts);
    let deltas = Words::new(seed_text, n_out)
        .enumerate()
        .map(move |(i, word)| delta_event(&delta_facts, i, word, first_delta_seq + i as u64));
    let tail_seq = first_delta_seq + n_out as u64;
    let tail = std::iter::once_with(move || tail_events(&facts, tail_seq)).flatten();
    Box::new(lead.into_iter().chain(deltas).chain(tail))
}
