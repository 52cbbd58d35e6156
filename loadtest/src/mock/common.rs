//! What the generating endpoints share: request-field readers, the
//! completion-length rule, the token counts and the usage object.

use std::borrow::Cow;

use bytes::Bytes;
use hyper::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};

use super::body::EventStream;
use super::errors::ApiError;
use super::misbehave::Misbehaviour;
use super::{DEFAULT_COMPLETION_WORDS, MAX_COMPLETION_WORDS};

/// A JSON request body.
pub type Object = Map<String, Value>;

/// What an endpoint answers: a complete JSON body or a stream of events.
pub enum Reply {
    Json(StatusCode, Bytes),
    Stream(EventStream),
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
