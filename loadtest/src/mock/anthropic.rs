//! `POST /v1/messages`: Anthropic's Messages API, plain and streamed.
//!
//! Written from Anthropic's API reference ("Messages", "Streaming Messages",
//! "Errors"): the `message` object, the named SSE events
//! (`message_start`, `content_block_start`, `ping`, `content_block_delta`,
//! `content_block_stop`, `message_delta`, `message_stop`, `error`) and the
//! `{"type":"error","error":{...}}` error shape.

use std::borrow::Cow;
use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{json, Value};

use super::body::{Part, SseEvent};
use super::common::{
    chosen_tool, content_text, header, opt_u64, parse_object, spaced, tool_input,
    tool_input_pieces, turn_tokens, wants_stream, with_stream_error, CacheSplit, Ctx, Generation,
    Object, Reply,
};
use super::errors::{to_json, ApiError};
use super::tokens::{generate_text, Words};

/// Answers a Messages request.
pub fn handle(body: &[u8], ctx: &Ctx) -> Result<Reply, ApiError> {
    if header(ctx.parts, "x-api-key").is_none_or(|k| k.trim().is_empty()) {
        return Err(ApiError::typed(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
        ));
    }
    if header(ctx.parts, "anthropic-version").is_none_or(|v| v.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "anthropic-version: header is required",
            None,
        ));
    }
    let req = parse_object(body)?;
    let model = match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.as_str(),
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "model: Field required",
                Some("model"),
            ))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "model: Input should be a valid string",
                Some("model"),
            ))
        }
    };
    match opt_u64(&req, "max_tokens") {
        Ok(Some(n)) if n >= 1 => {}
        Ok(None) => {
            return Err(ApiError::bad_request(
                "max_tokens: Field required",
                Some("max_tokens"),
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "max_tokens: Input should be greater than or equal to 1",
                Some("max_tokens"),
            ))
        }
    }
    let texts = prompt_texts(&req)?;
    let prompt = turn_tokens(texts.iter().map(|t| t.as_ref()));
    let seed = texts.last().map_or(String::new(), |t| t.to_string());
    let generation = Generation::new(&req, &["max_tokens"], ctx.mis)?;
    let (declared, forced) = tools(&req)?;
    let tool = chosen_tool(&declared, forced.as_deref(), ctx.mis)?;
    let split = CacheSplit::new(prompt, ctx.mis);
    let output = (generation.n_out as u64).saturating_add(ctx.mis.reasoning_tokens.unwrap_or(0));
    let stop_reason = match (&tool, generation.finish_reason) {
        (Some(_), _) => "tool_use",
        (None, "length") => "max_tokens",
        (None, _) => "end_turn",
    };
    let facts = Facts {
        id: format!("msg_mock{:016x}", ctx.body_hash),
        tool_id: format!("toolu_mock{:016x}", ctx.body_hash),
        model: model.to_owned(),
        tool,
        seed,
        n_out: generation.n_out,
        stop_reason,
        split,
        output,
        omit_usage: ctx.mis.omit_usage,
    };
    if wants_stream(&req)? {
        return Ok(Reply::Stream(stream(
            Arc::new(facts),
            ctx.mis.stream_error_after,
        )));
    }
    let content = match &facts.tool {
        Some(name) => json!([{
            "type": "tool_use",
            "id": facts.tool_id,
            "name": name,
            "input": tool_input(&facts.seed, facts.n_out),
        }]),
        None => json!([{"type": "text", "text": generate_text(&facts.seed, facts.n_out)}]),
    };
    let mut message = facts.message(content, Some(facts.stop_reason));
    if facts.omit_usage {
        if let Some(m) = message.as_object_mut() {
            m.remove("usage");
        }
    } else {
        message["usage"] = facts.usage(facts.output);
    }
    Ok(Reply::ok(to_json(&message)))
}

/// The texts of the prompt's turns: `system` (if given) and each message.
fn prompt_texts(req: &Object) -> Result<Vec<Cow<'_, str>>, ApiError> {
    let mut texts = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(system @ (Value::String(_) | Value::Array(_))) => {
            texts.push(content_text(Some(system), "system")?);
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "system: Input should be a valid string or list of text blocks",
                Some("system"),
            ))
        }
    }
    let messages = super::common::required_array(req, "messages")?;
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(m) = message else {
            return Err(ApiError::bad_request(
                format!("messages.{i}: Input should be a valid dictionary"),
                Some("messages"),
            ));
        };
        match m.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            _ => {
                return Err(ApiError::bad_request(
                    format!("messages.{i}.role: Input should be 'user' or 'assistant'"),
                    Some("messages"),
                ))
            }
        }
        texts.push(message_text(m.get("content"), i)?);
    }
    Ok(texts)
}

/// A message's text: its content string, or the `text` of its blocks and the
/// text of its `tool_result` blocks' content, joined by spaces.
fn message_text(content: Option<&Value>, i: usize) -> Result<Cow<'_, str>, ApiError> {
    match content {
        Some(Value::String(s)) => Ok(Cow::Borrowed(s)),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for block in blocks {
                let Value::Object(b) = block else {
                    return Err(ApiError::bad_request(
                        format!("messages.{i}.content: blocks must be objects"),
                        Some("messages"),
                    ));
                };
                if let Some(Value::String(t)) = b.get("text") {
                    texts.push(t.clone());
                } else if b.get("type").and_then(Value::as_str) == Some("tool_result") {
                    let inner = content_text(b.get("content"), "messages")?;
                    if !inner.is_empty() {
                        texts.push(inner.into_owned());
                    }
                }
            }
            Ok(Cow::Owned(texts.join(" ")))
        }
        _ => Err(ApiError::bad_request(
            format!("messages.{i}.content: Input should be a valid string or list of blocks"),
            Some("messages"),
        )),
    }
}

/// The declared tool names and the tool `tool_choice` forces, if any
/// (`{"type":"tool","name"}`, or the first tool for `{"type":"any"}`).
fn tools(req: &Object) -> Result<(Vec<&str>, Option<String>), ApiError> {
    let declared: Vec<&str> = match req.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools
            .iter()
            .map(|t| t.get("name").and_then(Value::as_str))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::bad_request("tools: each tool needs a name", Some("tools")))?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "tools: Input should be a valid list",
                Some("tools"),
            ))
        }
    };
    let choice = req.get("tool_choice");
    let forced = match choice.and_then(|c| c.get("type")).and_then(Value::as_str) {
        Some("tool") => choice
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        Some("any") => declared.first().map(|s| (*s).to_owned()),
        _ => None,
    };
    if let Some(name) = &forced {
        if !declared.contains(&name.as_str()) {
            return Err(ApiError::bad_request(
                format!("tool_choice: tool `{name}` is not in `tools`"),
                Some("tool_choice"),
            ));
        }
    }
    Ok((declared, forced))
}

/// Everything one answer needs.
struct Facts {
    id: String,
    tool_id: String,
    model: String,
    tool: Option<String>,
    seed: String,
    n_out: usize,
    stop_reason: &'static str,
    split: CacheSplit,
    /// `output_tokens`: the generated words plus reasoning tokens.
    output: u64,
    omit_usage: bool,
}

impl Facts {
    fn message(&self, content: Value, stop_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": self.usage(self.output),
        })
    }

    fn usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.split.uncached,
            "cache_creation_input_tokens": self.split.write,
            "cache_read_input_tokens": self.split.read,
            "output_tokens": output_tokens,
        })
    }
}

fn event(name: &str, value: &Value, part: Part) -> SseEvent {
    SseEvent::named(name, &to_json(value), part)
}

/// The SSE events: `message_start`, `content_block_start`, `ping`, one
/// `content_block_delta` per word (or per piece of the tool input),
/// `content_block_stop`, `message_delta`, `message_stop`.
fn stream(facts: Arc<Facts>, error_after: Option<u64>) -> super::body::EventStream {
    // message_start shows the input counts and one output token so far, as
    // the real API does (none if the answer has none).
    let mut start = facts.message(json!([]), None);
    start["usage"] = facts.usage(facts.output.min(1));
    let block = match &facts.tool {
        Some(name) => json!({"type": "tool_use", "id": facts.tool_id, "name": name, "input": {}}),
        None => json!({"type": "text", "text": ""}),
    };
    let lead = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": start}),
            Part::Lead,
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": block}),
            Part::Lead,
        ),
        event("ping", &json!({"type": "ping"}), Part::Lead),
    ];
    let content: Box<dyn Iterator<Item = SseEvent> + Send> =
        match &facts.tool {
            Some(_) => Box::new(tool_input_pieces(&facts.seed, facts.n_out).into_iter().map(
                |piece| {
                    let delta = json!({"type": "input_json_delta", "partial_json": piece});
                    delta_event(delta)
                },
            )),
            None => Box::new(
                Words::new(&facts.seed, facts.n_out)
                    .enumerate()
                    .map(|(i, word)| {
                        delta_event(json!({"type": "text_delta", "text": spaced(i, word)}))
                    }),
            ),
        };
    let tail_facts = Arc::clone(&facts);
    let tail = std::iter::once_with(move || {
        let mut delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": tail_facts.stop_reason, "stop_sequence": null},
        });
        if !tail_facts.omit_usage {
            delta["usage"] = json!({"output_tokens": tail_facts.output});
        }
        vec![
            event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": 0}),
                Part::Tail,
            ),
            event("message_delta", &delta, Part::Tail),
            event("message_stop", &json!({"type": "message_stop"}), Part::Tail),
        ]
    })
    .flatten();
    with_stream_error(lead.into_iter(), content, tail, error_after, || {
        event(
            "error",
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            Part::Tail,
        )
    })
}

fn delta_event(delta: Value) -> SseEvent {
    event(
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        Part::Content,
    )
}
