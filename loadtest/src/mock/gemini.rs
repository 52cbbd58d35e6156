//! `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent` (SSE with `?alt=sse`, else a streamed JSON
//! array), written from the Gemini API reference (`GenerateContentResponse`,
//! `UsageMetadata`, the `{"error":{"code","message","status"}}` error shape).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Value};

use super::body::{Part, SseEvent};
use super::common::{
    chosen_tool, content_text, header, parse_object, required_array, spaced, sub_object,
    tool_input, turn_tokens, with_stream_error, CacheSplit, Ctx, Generation, Head, Object, Reply,
};
use super::errors::{to_json, ApiError};
use super::tokens::{generate_text, Words};

/// Answers a generateContent or streamGenerateContent request.
pub fn handle(body: &[u8], ctx: &Ctx, model: &str, stream: bool) -> Result<Reply, ApiError> {
    let query = ctx.parts.uri.query().unwrap_or("");
    let query_key = query
        .split('&')
        .any(|p| p.strip_prefix("key=").is_some_and(|k| !k.is_empty()));
    let header_key = header(ctx.parts, "x-goog-api-key").is_some_and(|k| !k.trim().is_empty());
    if !query_key && !header_key {
        return Err(ApiError::typed(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
        ));
    }
    let sse = query.split('&').any(|p| p == "alt=sse");
    let req = parse_object(body)?;
    let texts = prompt_texts(&req)?;
    let prompt = turn_tokens(texts.iter().map(|t| t.as_ref()));
    let seed = texts.last().map_or(String::new(), |t| t.to_string());
    let config = sub_object(&req, "generationConfig")?;
    let generation = Generation::new(&config, &["maxOutputTokens"], ctx.mis)?;
    let (declared, forced) = tools(&req)?;
    let tool = chosen_tool(&declared, forced.as_deref(), ctx.mis)?;
    let thoughts = ctx.mis.reasoning_tokens;
    let cached = (ctx.mis.cache_read_tokens.is_some() || ctx.mis.cached_tokens.is_some())
        .then(|| CacheSplit::new(prompt, ctx.mis).read);
    let facts = Arc::new(Facts {
        model: model.to_owned(),
        response_id: format!("mock{:016x}", ctx.body_hash),
        prompt,
        n_out: generation.n_out as u64,
        thoughts,
        cached,
        finish_reason: if tool.is_none() && generation.finish_reason == "length" {
            "MAX_TOKENS"
        } else {
            "STOP"
        },
        omit_usage: ctx.mis.omit_usage,
    });
    let part = match &tool {
        Some(name) => {
            json!({"functionCall": {"name": name, "args": tool_input(&seed, generation.n_out)}})
        }
        None => json!({"text": generate_text(&seed, generation.n_out)}),
    };
    if !stream {
        let answer = facts.chunk(part, Some(facts.finish_reason), facts.n_out);
        return Ok(Reply::ok(to_json(&answer)));
    }
    let framing = if sse { Framing::Sse } else { Framing::Array };
    let content: Box<dyn Iterator<Item = Value> + Send> = match tool {
        // A function call comes whole, in one chunk.
        Some(_) => Box::new(std::iter::once(facts.chunk(part, None, facts.n_out))),
        None => {
            let words_facts = Arc::clone(&facts);
            Box::new(
                Words::new(&seed, generation.n_out)
                    .enumerate()
                    .map(move |(i, word)| {
                        words_facts.chunk(json!({"text": spaced(i, word)}), None, i as u64 + 1)
                    }),
            )
        }
    };
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let frame = {
        let first = Arc::clone(&first);
        move |value: &Value, part: Part| framing.frame(value, part, &first)
    };
    let content_frame = frame.clone();
    let content = content.map(move |v| content_frame(&v, Part::Content));
    let tail_frame = frame.clone();
    let tail_facts = Arc::clone(&facts);
    let tail = std::iter::once_with(move || {
        let last = tail_facts.chunk(
            json!({"text": ""}),
            Some(tail_facts.finish_reason),
            tail_facts.n_out,
        );
        let mut events = vec![tail_frame(&last, Part::Tail)];
        events.extend(framing.end());
        events
    })
    .flatten();
    let error = move || {
        let err = json!({"error": {
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        }});
        let mut event = frame(&err, Part::Tail);
        if let Some(end) = framing.end() {
            let mut bytes = event.bytes.to_vec();
            bytes.extend_from_slice(&end.bytes);
            event.bytes = Bytes::from(bytes);
        }
        event
    };
    let events = with_stream_error(
        std::iter::empty(),
        content,
        tail,
        ctx.mis.stream_error_after,
        error,
    );
    Ok(match framing {
        Framing::Sse => Reply::Stream(events),
        Framing::Array => Reply::Events(Head::new(StatusCode::OK, "application/json"), events),
    })
}

/// How streamed chunks are written.
#[derive(Clone, Copy)]
enum Framing {
    /// `data: <chunk>\n\n` (`?alt=sse`).
    Sse,
    /// One JSON array: `[<chunk>`, `,\r\n<chunk>`, ..., `]`.
    Array,
}

impl Framing {
    fn frame(self, value: &Value, part: Part, first: &std::sync::atomic::AtomicBool) -> SseEvent {
        let json = to_json(value);
        match self {
            Framing::Sse => SseEvent::data(&json, part),
            Framing::Array => {
                let lead: &[u8] = if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    b"["
                } else {
                    b",\r\n"
                };
                let mut bytes = lead.to_vec();
                bytes.extend_from_slice(&json);
                SseEvent {
                    bytes: Bytes::from(bytes),
                    part,
                }
            }
        }
    }

    /// The closing `]` of the array form.
    fn end(self) -> Option<SseEvent> {
        match self {
            Framing::Sse => None,
            Framing::Array => Some(SseEvent {
                bytes: Bytes::from_static(b"]"),
                part: Part::Tail,
            }),
        }
    }
}

/// The texts of the prompt's turns: `systemInstruction` (if given) and each
/// of `contents`, each the space-joined `text` of its parts.
fn prompt_texts(req: &Object) -> Result<Vec<Cow<'_, str>>, ApiError> {
    let mut texts = Vec::new();
    let system = req
        .get("systemInstruction")
        .or_else(|| req.get("system_instruction"));
    match system {
        None | Some(Value::Null) => {}
        Some(Value::Object(s)) => texts.push(content_text(s.get("parts"), "systemInstruction")?),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid value at 'system_instruction': must be a Content object",
                Some("systemInstruction"),
            ))
        }
    }
    for (i, content) in required_array(req, "contents")?.iter().enumerate() {
        let Value::Object(c) = content else {
            return Err(ApiError::bad_request(
                format!("Invalid value at 'contents[{i}]': must be a Content object"),
                Some("contents"),
            ));
        };
        match c.get("role") {
            None | Some(Value::Null) => {}
            Some(Value::String(r)) if r == "user" || r == "model" || r.is_empty() => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    format!("Please use a valid role: user, model. (contents[{i}].role)"),
                    Some("contents"),
                ))
            }
        }
        match c.get("parts") {
            Some(Value::Array(_)) => texts.push(content_text(c.get("parts"), "contents")?),
            _ => {
                return Err(ApiError::bad_request(
                    format!("contents[{i}].parts must not be empty"),
                    Some("contents"),
                ))
            }
        }
    }
    Ok(texts)
}

/// The declared function names and the one `toolConfig` forces, if any
/// (`functionCallingConfig.mode: ANY`: the first allowed name, else the
/// first declared function).
fn tools(req: &Object) -> Result<(Vec<&str>, Option<String>), ApiError> {
    let mut declared = Vec::new();
    if let Some(Value::Array(tools)) = req.get("tools") {
        for tool in tools {
            let decls = tool
                .get("functionDeclarations")
                .or_else(|| tool.get("function_declarations"));
            if let Some(Value::Array(decls)) = decls {
                for d in decls {
                    let name = d.get("name").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::bad_request(
                            "tools[].functionDeclarations[].name is required",
                            Some("tools"),
                        )
                    })?;
                    declared.push(name);
                }
            }
        }
    }
    let calling = req
        .get("toolConfig")
        .or_else(|| req.get("tool_config"))
        .and_then(|c| {
            c.get("functionCallingConfig")
                .or_else(|| c.get("function_calling_config"))
        });
    let forced = match calling.and_then(|c| c.get("mode")).and_then(Value::as_str) {
        Some("ANY") => calling
            .and_then(|c| {
                c.get("allowedFunctionNames")
                    .or_else(|| c.get("allowed_function_names"))
            })
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .or_else(|| declared.first().copied())
            .map(str::to_owned),
        _ => None,
    };
    Ok((declared, forced))
}

struct Facts {
    model: String,
    response_id: String,
    prompt: u64,
    /// `candidatesTokenCount` of the complete answer.
    n_out: u64,
    /// `thoughtsTokenCount` (`x-mock-reasoning-tokens`), only when given.
    thoughts: Option<u64>,
    /// `cachedContentTokenCount`, only when a cache header is given.
    cached: Option<u64>,
    finish_reason: &'static str,
    omit_usage: bool,
}

impl Facts {
    /// A `GenerateContentResponse` with one part; `candidates` is the
    /// candidates' token count so far (thoughts and cache counts are shown
    /// only once the answer is complete).
    fn chunk(&self, part: Value, finish_reason: Option<&str>, candidates: u64) -> Value {
        let mut candidate = json!({
            "content": {"parts": [part], "role": "model"},
            "index": 0,
        });
        if let Some(reason) = finish_reason {
            candidate["finishReason"] = json!(reason);
        }
        let mut answer = json!({"candidates": [candidate]});
        if !self.omit_usage {
            let complete = finish_reason.is_some();
            let thoughts = if complete { self.thoughts } else { None };
            let mut usage = json!({
                "promptTokenCount": self.prompt,
                "candidatesTokenCount": candidates,
                "totalTokenCount": self.prompt + candidates + thoughts.unwrap_or(0),
            });
            if let Some(t) = thoughts {
                usage["thoughtsTokenCount"] = json!(t);
            }
            if let Some(c) = self.cached.filter(|_| complete) {
                usage["cachedContentTokenCount"] = json!(c);
            }
            answer["usageMetadata"] = usage;
        }
        answer["modelVersion"] = json!(self.model);
        answer["responseId"] = json!(self.response_id);
        answer
    }
}
