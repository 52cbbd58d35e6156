//! What the generating endpoints share: request-field readers, the
//! completion-length rule, the token counts and the usage object.

use std::borrow::Cow;

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};

use super::body::{EventStream, SseEvent};
use super::errors::ApiError;
use super::misbehave::Misbehaviour;
use super::{DEFAULT_COMPLETION_WORDS, MAX_COMPLETION_WORDS};

/// A JSON request body.
pub type Object = Map<String, Value>;

/// What an endpoint answers: a complete JSON body or a stream of events.
pub enum Reply {
    /// A complete `application/json` body.
    Json(StatusCode, Bytes),
    /// A 200 `text/event-stream`.
    Stream(EventStream),
    /// A complete body with its own head.
    Full(Head, Bytes),
    /// A streamed body with its own head (Bedrock's binary event stream, ...).
    Events(Head, EventStream),
}

/// The status, content type and extra headers of a [`Reply`].
pub struct Head {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
}

impl Head {
    pub fn new(status: StatusCode, content_type: &'static str) -> Self {
        Head {
            status,
            content_type,
            headers: Vec::new(),
        }
    }

    pub fn json(status: StatusCode) -> Self {
        Head::new(status, "application/json")
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

impl Reply {
    /// A 200 JSON reply.
    pub fn ok(body: Bytes) -> Self {
        Reply::Json(StatusCode::OK, body)
    }
}

impl From<ApiError> for Reply {
    fn from(err: ApiError) -> Self {
        Reply::Json(err.status, err.body())
    }
}

/// Per-request facts handed to the endpoint handlers.
pub struct Ctx<'a> {
    /// The `x-mock-*` headers of the request.
    pub mis: &'a Misbehaviour,
    /// Unix seconds, for `created` / `created_at`.
    pub created: u64,
    /// FNV-1a of the raw request body, for deterministic ids.
    pub body_hash: u64,
    /// The request line and headers (auth checks, query parameters).
    pub parts: &'a Parts,
    /// The whole delay applied before answering, in ms (Bedrock's `latencyMs`).
    pub delay_ms: u64,
    /// `--aws-secret-access-key`: verify Bedrock's SigV4 signatures with it.
    pub aws_secret: Option<&'a str>,
}

/// Parses a request body that must be a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Object, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "The request body must be a JSON object.",
            None,
        )),
        Err(e) => Err(ApiError::bad_request(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )),
    }
}

/// The required `model` string.
pub fn model(req: &Object) -> Result<&str, ApiError> {
    match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(ApiError::bad_request(
            "you must provide a model parameter",
            Some("model"),
        )),
        Some(_) => Err(ApiError::bad_request(
            "`model` must be a string",
            Some("model"),
        )),
    }
}

/// An optional non-negative integer field (`null` counts as absent).
pub fn opt_u64(req: &Object, key: &str) -> Result<Option<u64>, ApiError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("`{key}` must be a non-negative integer"), Some(key))
        }),
    }
}

/// An optional boolean field (`null` counts as absent).
pub fn opt_bool(req: &Object, key: &str) -> Result<Option<bool>, ApiError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad_request(
            format!("`{key}` must be a boolean"),
            Some(key),
        )),
    }
}

/// Whether `stream` is true.
pub fn wants_stream(req: &Object) -> Result<bool, ApiError> {
    Ok(opt_bool(req, "stream")?.unwrap_or(false))
}

/// Whether `stream_options.include_usage` is true.
pub fn include_usage(req: &Object) -> Result<bool, ApiError> {
    match req.get("stream_options") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(opts)) => Ok(opt_bool(opts, "include_usage")?.unwrap_or(false)),
        Some(_) => Err(ApiError::bad_request(
            "`stream_options` must be an object",
            Some("stream_options"),
        )),
    }
}

/// The text of a chat message or Responses input item: its `content`
/// string, or the space-joined `text` fields of its content parts (parts
/// without text, such as images, are skipped); absent or null is empty.
pub fn content_text<'a>(content: Option<&'a Value>, param: &str) -> Result<Cow<'a, str>, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(Cow::Borrowed("")),
        Some(Value::String(s)) => Ok(Cow::Borrowed(s)),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match part {
                    Value::Object(p) => match p.get("text") {
                        Some(Value::String(t)) => texts.push(t.as_str()),
                        None | Some(Value::Null) => {}
                        Some(_) => {
                            return Err(ApiError::bad_request(
                                "a content part's `text` must be a string",
                                Some(param),
                            ))
                        }
                    },
                    _ => {
                        return Err(ApiError::bad_request(
                            "content parts must be objects",
                            Some(param),
                        ))
                    }
                }
            }
            Ok(Cow::Owned(texts.join(" ")))
        }
        Some(_) => Err(ApiError::bad_request(
            "`content` must be a string, an array of parts or null",
            Some(param),
        )),
    }
}

/// How long the generated text is and why it stops.
#[derive(Debug, Clone, Copy)]
pub struct Generation {
    /// Number of generated words (`n_out`).
    pub n_out: usize,
    /// `"length"` if a request limit was given and reached, else `"stop"`.
    pub finish_reason: &'static str,
}

impl Generation {
    /// `n_out` = `x-mock-completion-tokens`, else the request's limit (the
    /// first present of `limit_keys`), else `x-mock-uncapped-tokens`, else
    /// [`DEFAULT_COMPLETION_WORDS`].
    pub fn new(req: &Object, limit_keys: &[&str], mis: &Misbehaviour) -> Result<Self, ApiError> {
        let mut limit = None;
        for key in limit_keys {
            if let Some(n) = opt_u64(req, key)? {
                if n > MAX_COMPLETION_WORDS as u64 {
                    return Err(ApiError::bad_request(
                        format!("`{key}` must be at most {MAX_COMPLETION_WORDS} for the mock"),
                        Some(key),
                    ));
                }
                limit = Some(n);
                break;
            }
        }
        // Both values are at most MAX_COMPLETION_WORDS, so they fit a usize.
        let n_out = mis
            .completion_tokens
            .or(limit)
            .or(mis.uncapped_tokens)
            .map_or(DEFAULT_COMPLETION_WORDS, |n| n as usize);
        let finish_reason = match limit {
            Some(l) if n_out as u64 >= l => "length",
            _ => "stop",
        };
        Ok(Generation {
            n_out,
            finish_reason,
        })
    }
}

/// The token numbers of one request, before they are shaped into a usage object.
#[derive(Debug, Clone, Copy)]
pub struct TokenCounts {
    pub prompt: u64,
    /// Generated words plus reasoning tokens.
    pub completion: u64,
    /// Cached part of `prompt` (capped at `prompt`).
    pub cached: u64,
    pub reasoning: u64,
}

impl TokenCounts {
    pub fn new(prompt: u64, n_out: usize, mis: &Misbehaviour) -> Self {
        let reasoning = mis.reasoning_tokens.unwrap_or(0);
        TokenCounts {
            prompt,
            completion: (n_out as u64).saturating_add(reasoning),
            cached: mis.cached_tokens.unwrap_or(0).min(prompt),
            reasoning,
        }
    }

    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// OpenAI's `CompletionUsage` (chat and legacy completions).
#[derive(Serialize, Debug, Clone)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Serialize, Debug, Clone)]
pub struct PromptTokensDetails {
    pub cached_tokens: u64,
    pub audio_tokens: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: u64,
    pub audio_tokens: u64,
    pub accepted_prediction_tokens: u64,
    pub rejected_prediction_tokens: u64,
}

impl Usage {
    /// The usage object; `details` adds the prompt/completion breakdowns.
    pub fn new(counts: &TokenCounts, details: bool) -> Self {
        Usage {
            prompt_tokens: counts.prompt,
            completion_tokens: counts.completion,
            total_tokens: counts.total(),
            prompt_tokens_details: details.then_some(PromptTokensDetails {
                cached_tokens: counts.cached,
                audio_tokens: 0,
            }),
            completion_tokens_details: details.then_some(CompletionTokensDetails {
                reasoning_tokens: counts.reasoning,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            }),
        }
    }
}

/// How usage appears in a chat or completions stream.
#[derive(Debug, Clone)]
pub struct StreamUsage {
    /// Every chunk carries `"usage": null` (OpenAI does so with include_usage).
    pub null_on_chunks: bool,
    /// The final chunk with `"choices": []` and this usage.
    pub final_usage: Option<Usage>,
}

impl StreamUsage {
    /// Usage only when asked for with `include_usage`, never with omit-usage.
    pub fn new(include_usage: bool, omit_usage: bool, usage: Usage) -> Self {
        let on = include_usage && !omit_usage;
        StreamUsage {
            null_on_chunks: on,
            final_usage: on.then_some(usage),
        }
    }

    /// The `usage` field of a content chunk: absent, or null.
    pub fn chunk_field(&self) -> Option<Option<&Usage>> {
        self.null_on_chunks.then_some(None)
    }
}

/// The word as streamed: a leading space for every word but the first.
pub fn spaced(index: usize, word: &str) -> Cow<'_, str> {
    if index == 0 {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!(" {word}"))
    }
}

// ------------------------------------------------ Anthropic, Gemini, Bedrock

/// Prompt tokens of the native formats, the chat rule over their turns:
/// Σ over turns (3 + words(text)) + 3, where the system prompt, if given,
/// counts as one more turn.
pub fn turn_tokens<'a>(texts: impl IntoIterator<Item = &'a str>) -> u64 {
    texts
        .into_iter()
        .map(|t| 3 + super::tokens::words(t))
        .sum::<u64>()
        + 3
}

/// How the prompt tokens split between cache reads, cache writes and the rest
/// (Anthropic and Bedrock report the three apart; Gemini reports the read
/// part inside its prompt count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSplit {
    pub read: u64,
    pub write: u64,
    /// `prompt - read - write`.
    pub uncached: u64,
}

impl CacheSplit {
    /// `read = min(x-mock-cache-read-tokens (else x-mock-cached-tokens), prompt)`,
    /// `write = min(x-mock-cache-write-tokens, prompt - read)`.
    pub fn new(prompt: u64, mis: &Misbehaviour) -> Self {
        let read = mis
            .cache_read_tokens
            .or(mis.cached_tokens)
            .unwrap_or(0)
            .min(prompt);
        let write = mis.cache_write_tokens.unwrap_or(0).min(prompt - read);
        CacheSplit {
            read,
            write,
            uncached: prompt - read - write,
        }
    }
}

/// The tool the answer calls: `x-mock-tool-call` (which must name one of the
/// request's tools), else `forced` (what the request's tool choice forces).
pub fn chosen_tool(
    declared: &[&str],
    forced: Option<&str>,
    mis: &Misbehaviour,
) -> Result<Option<String>, ApiError> {
    if let Some(name) = &mis.tool_call {
        if !declared.contains(&name.as_str()) {
            return Err(ApiError::bad_request(
                format!(
                    "mock: `{}` names `{name}`, which is not one of the request's tools",
                    super::misbehave::H_TOOL_CALL
                ),
                Some(super::misbehave::H_TOOL_CALL),
            ));
        }
        return Ok(Some(name.clone()));
    }
    Ok(forced.map(str::to_owned))
}

/// The pieces of a tool call's input, `{"text":"<the generated words>"}`,
/// as streamed: `{"text":"`, one piece per word, `"}` (so at least two).
/// The vocabulary needs no JSON escaping.
pub fn tool_input_pieces(seed_text: &str, n_out: usize) -> Vec<String> {
    let mut pieces = Vec::with_capacity(n_out + 2);
    pieces.push("{\"text\":\"".to_owned());
    for (i, word) in super::tokens::Words::new(seed_text, n_out).enumerate() {
        pieces.push(spaced(i, word).into_owned());
    }
    pieces.push("\"}".to_owned());
    pieces
}

/// The tool call's input as a JSON value.
pub fn tool_input(seed_text: &str, n_out: usize) -> Value {
    serde_json::json!({ "text": super::tokens::generate_text(seed_text, n_out) })
}

/// A required, non-empty array field.
pub fn required_array<'a>(req: &'a Object, key: &str) -> Result<&'a Vec<Value>, ApiError> {
    match req.get(key) {
        Some(Value::Array(a)) if !a.is_empty() => Ok(a),
        Some(Value::Array(_)) => Err(ApiError::bad_request(
            format!("{key}: at least one message is required"),
            Some(key),
        )),
        None | Some(Value::Null) => Err(ApiError::bad_request(
            format!("{key}: Field required"),
            Some(key),
        )),
        Some(_) => Err(ApiError::bad_request(
            format!("{key}: Input should be a valid list"),
            Some(key),
        )),
    }
}

/// An optional object field (absent or null: an empty object).
pub fn sub_object<'a>(req: &'a Object, key: &str) -> Result<Cow<'a, Object>, ApiError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(Cow::Owned(Object::new())),
        Some(Value::Object(o)) => Ok(Cow::Borrowed(o)),
        Some(_) => Err(ApiError::bad_request(
            format!("`{key}` must be an object"),
            Some(key),
        )),
    }
}

/// A header's value as text, if present and valid UTF-8.
pub fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The events of a stream: the lead, the content events, then either the
/// tail or, with `x-mock-stream-error-after: K`, the error event right after
/// the K-th content event (or after the last, if there are fewer).
pub fn with_stream_error<L, C, T, E>(
    lead: L,
    content: C,
    tail: T,
    error_after: Option<u64>,
    error: E,
) -> EventStream
where
    L: Iterator<Item = SseEvent> + Send + 'static,
    C: Iterator<Item = SseEvent> + Send + 'static,
    T: Iterator<Item = SseEvent> + Send + 'static,
    E: FnOnce() -> SseEvent + Send + 'static,
{
    match error_after {
        None => Box::new(lead.chain(content).chain(tail)),
        Some(k) => {
            let k = usize::try_from(k).unwrap_or(usize::MAX);
            Box::new(
                lead.chain(content.take(k))
                    .chain(std::iter::once_with(error)),
            )
        }
    }
}
