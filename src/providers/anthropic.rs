//! The `anthropic` provider: pure translation between OpenAI chat completions
//! and Anthropic's Messages API (`POST /v1/messages`), no I/O.
//!
//! [`chat_to_messages`] turns an OpenAI chat request into a Messages request:
//! system and developer messages become the top-level `system`; `tool`
//! messages become `tool_result` blocks in a user turn; assistant
//! `tool_calls` become `tool_use` blocks; consecutive turns of the same role
//! are merged (Anthropic requires user and assistant to alternate, starting
//! with user). What Anthropic cannot express (`n` > 1, logprobs, audio,
//! `response_format` other than text, ...) is a [`TranslateError`] naming
//! the field, so the caller can answer 400 in OpenAI's shape before anything
//! is sent upstream.
//!
//! [`message_to_chat`] turns a (non-streamed) Messages response into a
//! `chat.completion`; [`message_to_chat_with_usage`] also returns the
//! [`MessageUsage`] with cache reads and writes apart, so each can be priced
//! at its own rate. A streamed response is translated by
//! [`super::anthropic_stream`], event by event.
//!
//! Known, documented simplifications: system/developer messages anywhere in
//! the conversation are hoisted into `system` in order; a message's `name`,
//! and `seed`, `store`, `service_tier`, `stream_options` and OpenAI's
//! `metadata` are dropped (they change no output Anthropic can produce).

use serde_json::{json, Map, Value};

pub use super::TranslateError;

/// Token counts of one Messages response, as Anthropic reports them:
/// `input` excludes the cached parts, which are counted in `cache_read`
/// (`cache_read_input_tokens`) and `cache_write` (`cache_creation_input_tokens`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageUsage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl MessageUsage {
    /// OpenAI's `prompt_tokens`: every input token, cached or not.
    pub fn prompt_tokens(&self) -> u64 {
        self.input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write)
    }

    /// OpenAI's `total_tokens`.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens().saturating_add(self.output)
    }

    /// Reads a Messages `usage` object; absent counters are 0.
    pub fn from_json(usage: &Value) -> Result<Self, TranslateError> {
        let obj = usage
            .as_object()
            .ok_or_else(|| TranslateError::new("usage", "must be an object"))?;
        let count = |k: &str| -> Result<u64, TranslateError> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(0),
                Some(v) => v.as_u64().ok_or_else(|| {
                    TranslateError::new(format!("usage.{k}"), "must be a non-negative integer")
                }),
            }
        };
        Ok(Self {
            input: count("input_tokens")?,
            output: count("output_tokens")?,
            cache_read: count("cache_read_input_tokens")?,
            cache_write: count("cache_creation_input_tokens")?,
        })
    }
}

/// Image media types the Messages API accepts in a base64 source.
const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// Request fields with no Messages equivalent: present with a value other
/// than the harmless default, they are an error.
fn reject_unsupported(req: &Map<String, Value>) -> Result<(), TranslateError> {
    let unsupported = |f: &str, why: &str| Err(TranslateError::new(f, why.to_string()));
    for (k, v) in req {
        if v.is_null() {
            continue;
        }
        match k.as_str() {
            "n" if v.as_u64() != Some(1) => {
                return unsupported("n", "Anthropic returns one choice; only n = 1 is supported")
            }
            "logprobs" if v.as_bool() != Some(false) => {
                return unsupported("logprobs", "Anthropic does not return log probabilities")
            }
            "top_logprobs" => {
                return unsupported(
                    "top_logprobs",
                    "Anthropic does not return log probabilities",
                )
            }
            "logit_bias" if v.as_object().is_none_or(|m| !m.is_empty()) => {
                return unsupported("logit_bias", "Anthropic has no logit bias")
            }
            "presence_penalty" | "frequency_penalty" if v.as_f64() != Some(0.0) => {
                return unsupported(k, "Anthropic has no presence or frequency penalty")
            }
            "audio" => return unsupported("audio", "Anthropic does not produce audio"),
            "modalities"
                if v.as_array()
                    .is_none_or(|m| m.iter().any(|x| x.as_str() != Some("text"))) =>
            {
                return unsupported("modalities", "Anthropic produces text only")
            }
            "prediction" => return unsupported("prediction", "Anthropic has no predicted outputs"),
            "reasoning_effort" => {
                return unsupported(
                    "reasoning_effort",
                    "not translated to Anthropic extended thinking",
                )
            }
            "web_search_options" => {
                return unsupported("web_search_options", "not translated for Anthropic")
            }
            "functions" | "function_call" => {
                return unsupported(k, "deprecated; use tools and tool_choice")
            }
            "response_format" => {
                let ty = v.get("type").and_then(Value::as_str);
                if ty != Some("text") {
                    return unsupported(
                        "response_format",
                        "Anthropic has no JSON mode; only type text is supported",
                    );
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Translates an OpenAI chat completions request into an Anthropic Messages
/// request. `default_max_tokens` is used when the request sets neither
/// `max_completion_tokens` nor `max_tokens` (Anthropic requires one).
pub fn chat_to_messages(body: &[u8], default_max_tokens: u64) -> Result<Vec<u8>, TranslateError> {
    let req: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new("body", format!("not valid JSON: {e}")))?;
    let req = req
        .as_object()
        .ok_or_else(|| TranslateError::new("body", "must be a JSON object"))?;
    reject_unsupported(req)?;

    let mut out = Map::new();
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new("model", "required, a string"))?;
    out.insert("model".into(), json!(model));
    out.insert(
        "max_tokens".into(),
        json!(max_tokens(req, default_max_tokens)?),
    );

    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("messages", "required, an array"))?;
    let (system, turns) = translate_messages(messages)?;
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), Value::Array(turns));

    if let Some(stop) = req.get("stop").filter(|v| !v.is_null()) {
        let seqs: Vec<Value> = match stop {
            Value::String(s) => vec![json!(s)],
            Value::Array(a) if a.iter().all(Value::is_string) => a.clone(),
            _ => {
                return Err(TranslateError::new(
                    "stop",
                    "must be a string or an array of strings",
                ))
            }
        };
        if !seqs.is_empty() {
            out.insert("stop_sequences".into(), Value::Array(seqs));
        }
    }
    if let Some(t) = req.get("temperature").filter(|v| !v.is_null()) {
        let t = t
            .as_f64()
            .ok_or_else(|| TranslateError::new("temperature", "must be a number"))?;
        if !(0.0..=1.0).contains(&t) {
            return Err(TranslateError::new(
                "temperature",
                "Anthropic accepts 0 to 1",
            ));
        }
        out.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.get("top_p").filter(|v| !v.is_null()) {
        let p = p
            .as_f64()
            .ok_or_else(|| TranslateError::new("top_p", "must be a number"))?;
        out.insert("top_p".into(), json!(p));
    }
    if let Some(s) = req.get("stream").filter(|v| !v.is_null()) {
        let s = s
            .as_bool()
            .ok_or_else(|| TranslateError::new("stream", "must be a boolean"))?;
        out.insert("stream".into(), json!(s));
    }
    if let Some(u) = req.get("user").filter(|v| !v.is_null()) {
        let u = u
            .as_str()
            .ok_or_else(|| TranslateError::new("user", "must be a string"))?;
        out.insert("metadata".into(), json!({ "user_id": u }));
    }

    let tools = match req.get("tools").filter(|v| !v.is_null()) {
        Some(t) => translate_tools(t)?,
        None => Vec::new(),
    };
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = match req.get("tool_choice").filter(|v| !v.is_null()) {
        Some(c) => Some(translate_tool_choice(c)?),
        None => None,
    };
    match req.get("parallel_tool_calls") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            let c = choice.get_or_insert_with(|| json!({ "type": "auto" }));
            if c["type"] != "none" {
                c["disable_parallel_tool_use"] = json!(true);
            }
        }
        Some(_) => {
            return Err(TranslateError::new(
                "parallel_tool_calls",
                "must be a boolean",
            ))
        }
    }
    if let Some(c) = choice {
        // Anthropic refuses a tool_choice without tools (except none).
        if has_tools || c["type"] == "none" {
            out.insert("tool_choice".into(), c);
        } else if c["type"] != "auto" {
            return Err(TranslateError::new(
                "tool_choice",
                "requires tools to choose from",
            ));
        }
    }

    serde_json::to_vec(&Value::Object(out))
        .map_err(|e| TranslateError::new("body", format!("cannot serialise: {e}")))
}

fn max_tokens(req: &Map<String, Value>, default: u64) -> Result<u64, TranslateError> {
    for k in ["max_completion_tokens", "max_tokens"] {
        match req.get(k) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return v
                    .as_u64()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| TranslateError::new(k, "must be a positive integer"))
            }
        }
    }
    Ok(default)
}

/// One Anthropic turn being assembled.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.blocks.extend(blocks),
        _ => turns.push(Turn { role, blocks }),
    }
}

/// The system prompt (a string, or text blocks when there are several parts)
/// and the alternating user/assistant turns.
fn translate_messages(messages: &[Value]) -> Result<(Option<Value>, Vec<Value>), TranslateError> {
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::new(format!("{at}.role"), "required, a string"))?;
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => {
                system.extend(text_blocks(content, &format!("{at}.content"))?);
            }
            "user" => {
                let blocks = user_blocks(content, &format!("{at}.content"))?;
                push_turn(&mut turns, "user", blocks);
            }
            "assistant" => {
                if m.get("function_call").is_some_and(|v| !v.is_null()) {
                    return Err(TranslateError::new(
                        format!("{at}.function_call"),
                        "deprecated; use tool_calls",
                    ));
                }
                if m.get("audio").is_some_and(|v| !v.is_null()) {
                    return Err(TranslateError::new(
                        format!("{at}.audio"),
                        "Anthropic has no audio",
                    ));
                }
                let mut blocks = assistant_text_blocks(content, &format!("{at}.content"))?;
                if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
                    blocks.extend(tool_use_blocks(calls, &format!("{at}.tool_calls"))?);
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        TranslateError::new(format!("{at}.tool_call_id"), "required, a string")
                    })?;
                let mut block = json!({ "type": "tool_result", "tool_use_id": id });
                // An empty result is sent without `content` (it is optional).
                match content {
                    Value::Null => {}
                    Value::String(s) if s.is_empty() => {}
                    Value::String(s) => block["content"] = json!(s),
                    _ => {
                        let parts = text_blocks(content, &format!("{at}.content"))?;
                        if !parts.is_empty() {
                            block["content"] = Value::Array(parts);
                        }
                    }
                }
                push_turn(&mut turns, "user", vec![block]);
            }
            "function" => {
                return Err(TranslateError::new(
                    format!("{at}.role"),
                    "the deprecated function role is not supported; use tool",
                ))
            }
            other => {
                return Err(TranslateError::new(
                    format!("{at}.role"),
                    format!("unknown role {other:?}"),
                ))
            }
        }
    }
    match turns.first() {
        None => {
            return Err(TranslateError::new(
                "messages",
                "needs at least one non-empty user message",
            ))
        }
        Some(t) if t.role != "user" => {
            return Err(TranslateError::new(
                "messages",
                "Anthropic requires the first non-system message to be from the user",
            ))
        }
        Some(_) => {}
    }
    let turns = turns
        .into_iter()
        .map(|t| {
            let mut blocks = t.blocks;
            if t.role == "user" {
                // Tool results answer the preceding assistant turn: they go
                // first in the user turn, before any text the user added.
                blocks.sort_by_key(|b| b["type"] != "tool_result");
            }
            json!({ "role": t.role, "content": blocks })
        })
        .collect();
    let system = match system.len() {
        0 => None,
        1 => Some(system.swap_remove(0)["text"].take()),
        _ => Some(Value::Array(system)),
    };
    Ok((system, turns))
}

fn text_block(s: &str) -> Option<Value> {
    (!s.is_empty()).then(|| json!({ "type": "text", "text": s }))
}

/// Content that may only be text: a string or an array of text parts.
fn text_blocks(content: &Value, at: &str) -> Result<Vec<Value>, TranslateError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(text_block(s).into_iter().collect()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                let at = format!("{at}[{j}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.extend(text_block(part_text(p, &at)?)),
                    other => {
                        return Err(TranslateError::new(
                            format!("{at}.type"),
                            format!("only text parts are supported here, not {other:?}"),
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(TranslateError::new(
            at,
            "must be a string or an array of parts",
        )),
    }
}

fn part_text<'a>(p: &'a Value, at: &str) -> Result<&'a str, TranslateError> {
    p.get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{at}.text"), "required, a string"))
}

fn assistant_text_blocks(content: &Value, at: &str) -> Result<Vec<Value>, TranslateError> {
    match content {
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                let at = format!("{at}[{j}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.extend(text_block(part_text(p, &at)?)),
                    Some("refusal") => {
                        let r = p.get("refusal").and_then(Value::as_str).ok_or_else(|| {
                            TranslateError::new(format!("{at}.refusal"), "required, a string")
                        })?;
                        out.extend(text_block(r));
                    }
                    other => {
                        return Err(TranslateError::new(
                            format!("{at}.type"),
                            format!("unsupported assistant content part {other:?}"),
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => text_blocks(content, at),
    }
}

fn user_blocks(content: &Value, at: &str) -> Result<Vec<Value>, TranslateError> {
    let Value::Array(parts) = content else {
        return text_blocks(content, at);
    };
    let mut out = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        let at = format!("{at}[{j}]");
        match p.get("type").and_then(Value::as_str) {
            Some("text") => out.extend(text_block(part_text(p, &at)?)),
            Some("image_url") => out.push(image_block(p, &at)?),
            Some("input_audio") => {
                return Err(TranslateError::new(
                    format!("{at}.type"),
                    "Anthropic does not accept audio input",
                ))
            }
            Some("file") => {
                return Err(TranslateError::new(
                    format!("{at}.type"),
                    "file parts are not translated for Anthropic",
                ))
            }
            other => {
                return Err(TranslateError::new(
                    format!("{at}.type"),
                    format!("unsupported content part {other:?}"),
                ))
            }
        }
    }
    Ok(out)
}

/// An `image_url` part: a `data:` URL becomes a base64 source, an http(s)
/// URL a url source.
fn image_block(p: &Value, at: &str) -> Result<Value, TranslateError> {
    let field = format!("{at}.image_url.url");
    let url = match p.get("image_url") {
        Some(Value::String(s)) => s.as_str(),
        Some(v) => v
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::new(&field, "required, a string"))?,
        None => return Err(TranslateError::new(&field, "required, a string")),
    };
    let source = if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| TranslateError::new(&field, "a data URL needs a comma"))?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| TranslateError::new(&field, "only base64 data URLs are supported"))?;
        // Parameters other than base64 (e.g. `;charset=`) are not expected
        // for images; the media type is what precedes the first `;`.
        let media_type = media_type
            .split(';')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if !IMAGE_MEDIA_TYPES.contains(&media_type.as_str()) {
            return Err(TranslateError::new(
                &field,
                format!(
                    "image media type {media_type:?} is not one Anthropic accepts \
                     (jpeg, png, gif, webp)"
                ),
            ));
        }
        json!({ "type": "base64", "media_type": media_type, "data": data })
    } else if url.starts_with("https://") || url.starts_with("http://") {
        json!({ "type": "url", "url": url })
    } else {
        return Err(TranslateError::new(
            &field,
            "must be an http(s) URL or a base64 data URL",
        ));
    };
    Ok(json!({ "type": "image", "source": source }))
}

fn tool_use_blocks(calls: &Value, at: &str) -> Result<Vec<Value>, TranslateError> {
    let calls = calls
        .as_array()
        .ok_or_else(|| TranslateError::new(at, "must be an array"))?;
    let mut out = Vec::with_capacity(calls.len());
    for (k, c) in calls.iter().enumerate() {
        let at = format!("{at}[{k}]");
        match c.get("type").and_then(Value::as_str) {
            None | Some("function") => {}
            Some(other) => {
                return Err(TranslateError::new(
                    format!("{at}.type"),
                    format!("only function tool calls are supported, not {other:?}"),
                ))
            }
        }
        let id = c
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::new(format!("{at}.id"), "required, a string"))?;
        let f = c.get("function");
        let name = f
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                TranslateError::new(format!("{at}.function.name"), "required, a string")
            })?;
        let args_at = format!("{at}.function.arguments");
        let args = match f.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(TranslateError::new(args_at, "must be a string")),
        };
        let input: Value = if args.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(args)
                .map_err(|e| TranslateError::new(&args_at, format!("not valid JSON: {e}")))?
        };
        if !input.is_object() {
            return Err(TranslateError::new(args_at, "must encode a JSON object"));
        }
        out.push(json!({ "type": "tool_use", "id": id, "name": name, "input": input }));
    }
    Ok(out)
}

fn translate_tools(tools: &Value) -> Result<Vec<Value>, TranslateError> {
    let tools = tools
        .as_array()
        .ok_or_else(|| TranslateError::new("tools", "must be an array"))?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(TranslateError::new(
                format!("{at}.type"),
                "only function tools are supported",
            ));
        }
        let f = t
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| TranslateError::new(format!("{at}.function"), "required, an object"))?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
            TranslateError::new(format!("{at}.function.name"), "required, a string")
        })?;
        let schema = match f.get("parameters") {
            None | Some(Value::Null) => json!({ "type": "object", "properties": {} }),
            Some(p) if p.is_object() => p.clone(),
            Some(_) => {
                return Err(TranslateError::new(
                    format!("{at}.function.parameters"),
                    "must be a JSON Schema object",
                ))
            }
        };
        let mut tool = Map::new();
        tool.insert("name".into(), json!(name));
        if let Some(d) = f.get("description").and_then(Value::as_str) {
            tool.insert("description".into(), json!(d));
        }
        tool.insert("input_schema".into(), schema);
        out.push(Value::Object(tool));
    }
    Ok(out)
}

fn translate_tool_choice(c: &Value) -> Result<Value, TranslateError> {
    match c {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({ "type": "auto" })),
            "required" => Ok(json!({ "type": "any" })),
            "none" => Ok(json!({ "type": "none" })),
            other => Err(TranslateError::new(
                "tool_choice",
                format!("unknown value {other:?}"),
            )),
        },
        Value::Object(o) => {
            if o.get("type").and_then(Value::as_str) != Some("function") {
                return Err(TranslateError::new(
                    "tool_choice.type",
                    "only function tool choices are supported",
                ));
            }
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TranslateError::new("tool_choice.function.name", "required, a string")
                })?;
            Ok(json!({ "type": "tool", "name": name }))
        }
        _ => Err(TranslateError::new(
            "tool_choice",
            "must be a string or an object",
        )),
    }
}

/// Translates an Anthropic Messages response into an OpenAI
/// `chat.completion`; `created` is its Unix time in seconds.
pub fn message_to_chat(body: &[u8], created: i64) -> Result<Vec<u8>, TranslateError> {
    message_to_chat_with_usage(body, created).map(|(b, _)| b)
}

/// [`message_to_chat`], also returning the usage (`None` when the response
/// has none) for billing.
pub fn message_to_chat_with_usage(
    body: &[u8],
    created: i64,
) -> Result<(Vec<u8>, Option<MessageUsage>), TranslateError> {
    let msg: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new("body", format!("not valid JSON: {e}")))?;
    if !msg.is_object() {
        return Err(TranslateError::new("body", "must be a JSON object"));
    }
    let id = msg
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new("id", "required, a string"))?;
    let model = msg.get("model").and_then(Value::as_str).unwrap_or("");
    let blocks = msg
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("content", "required, an array"))?;

    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                text.push_str(b.get("text").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::new(format!("content[{i}].text"), "required, a string")
                })?)
            }
            Some("tool_use") => {
                let at = |f: &str| format!("content[{i}].{f}");
                let id = b
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| TranslateError::new(at("id"), "required, a string"))?;
                let name = b
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| TranslateError::new(at("name"), "required, a string"))?;
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": { "name": name, "arguments": input.to_string() },
                }));
            }
            // Thinking (and redacted thinking) blocks have no place in a
            // chat.completion message; server tool blocks are not requested.
            _ => {}
        }
    }

    let finish_reason = match msg.get("stop_reason").and_then(Value::as_str) {
        Some("max_tokens") | Some("model_context_window_exceeded") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        Some(_) => json!("stop"),
        None => Value::Null,
    };
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let content = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    message.insert("content".into(), content);
    message.insert("refusal".into(), Value::Null);
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }

    let usage = match msg.get("usage") {
        None | Some(Value::Null) => None,
        Some(u) => Some(MessageUsage::from_json(u)?),
    };
    let mut out = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": Value::Object(message),
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
    });
    if let Some(u) = usage {
        out["usage"] = json!({
            "prompt_tokens": u.prompt_tokens(),
            "completion_tokens": u.output,
            "total_tokens": u.total_tokens(),
            "prompt_tokens_details": { "cached_tokens": u.cache_read },
        });
    }
    let bytes = serde_json::to_vec(&out)
        .map_err(|e| TranslateError::new("body", format!("cannot serialise: {e}")))?;
    Ok((bytes, usage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn to_messages(req: Value) -> Value {
        let out = chat_to_messages(req.to_string().as_bytes(), 1024).expect("translates");
        serde_json::from_slice(&out).unwrap()
    }

    fn to_messages_err(req: Value) -> TranslateError {
        chat_to_messages(req.to_string().as_bytes(), 1024).expect_err("must be refused")
    }

    fn chat(msgs: Value) -> Value {
        json!({ "model": "claude-sonnet-4-5", "messages": msgs })
    }

    #[test]
    fn minimal_request_and_default_max_tokens() {
        let out = to_messages(chat(json!([{ "role": "user", "content": "Hello" }])));
        assert_eq!(
            out,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "messages": [{ "role": "user", "content": [{ "type": "text", "text": "Hello" }] }],
            })
        );
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let mut req = chat(json!([{ "role": "user", "content": "x" }]));
        req["max_tokens"] = json!(50);
        assert_eq!(to_messages(req.clone())["max_tokens"], 50);
        req["max_completion_tokens"] = json!(70);
        assert_eq!(to_messages(req.clone())["max_tokens"], 70);
        req["max_completion_tokens"] = json!(0);
        assert_eq!(to_messages_err(req).field, "max_completion_tokens");
    }

    #[test]
    fn system_and_developer_become_system() {
        let one = to_messages(chat(json!([
            { "role": "system", "content": "Be terse." },
            { "role": "user", "content": "Hi" },
        ])));
        assert_eq!(one["system"], "Be terse.");
        let many = to_messages(chat(json!([
            { "role": "system", "content": "Be terse." },
            { "role": "developer", "content": [{ "type": "text", "text": "Use metric." }] },
            { "role": "user", "content": "Hi" },
        ])));
        assert_eq!(
            many["system"],
            json!([
                { "type": "text", "text": "Be terse." },
                { "type": "text", "text": "Use metric." },
            ])
        );
        assert_eq!(many["messages"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn sampling_stop_stream_and_user() {
        let mut req = chat(json!([{ "role": "user", "content": "x" }]));
        req["temperature"] = json!(0.5);
        req["top_p"] = json!(0.9);
        req["stream"] = json!(true);
        req["stop"] = json!("END");
        req["user"] = json!("alice");
        req["n"] = json!(1);
        req["presence_penalty"] = json!(0);
        let out = to_messages(req.clone());
        assert_eq!(out["temperature"], 0.5);
        assert_eq!(out["top_p"], 0.9);
        assert_eq!(out["stream"], true);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["metadata"], json!({ "user_id": "alice" }));
        req["stop"] = json!(["a", "b"]);
        assert_eq!(
            to_messages(req.clone())["stop_sequences"],
            json!(["a", "b"])
        );
        req["temperature"] = json!(1.5);
        assert_eq!(to_messages_err(req).field, "temperature");
    }

    #[test]
    fn unsupported_fields_are_named() {
        for (field, value) in [
            ("n", json!(2)),
            ("logprobs", json!(true)),
            ("top_logprobs", json!(3)),
            ("logit_bias", json!({ "50256": -100 })),
            ("frequency_penalty", json!(0.5)),
            ("audio", json!({ "voice": "alloy", "format": "mp3" })),
            ("modalities", json!(["text", "audio"])),
            ("functions", json!([])),
            (
                "response_format",
                json!({ "type": "json_schema", "json_schema": { "name": "x", "schema": {} } }),
            ),
            ("response_format", json!({ "type": "json_object" })),
        ] {
            let mut req = chat(json!([{ "role": "user", "content": "x" }]));
            req[field] = value;
            let e = to_messages_err(req);
            assert_eq!(e.field, field);
            assert!(e.to_string().starts_with(field), "{e}");
        }
        let mut ok = chat(json!([{ "role": "user", "content": "x" }]));
        ok["response_format"] = json!({ "type": "text" });
        ok["logprobs"] = json!(false);
        ok["logit_bias"] = json!({});
        to_messages(ok);
    }

    #[test]
    fn audio_part_is_refused_with_its_path() {
        let e = to_messages_err(chat(json!([{
            "role": "user",
            "content": [
                { "type": "text", "text": "listen" },
                { "type": "input_audio", "input_audio": { "data": "AAAA", "format": "wav" } },
            ],
        }])));
        assert_eq!(e.field, "messages[0].content[1].type");
    }

    #[test]
    fn images_data_url_and_http_url() {
        let out = to_messages(chat(json!([{
            "role": "user",
            "content": [
                { "type": "text", "text": "Compare" },
                { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=" } },
                { "type": "image_url", "image_url": { "url": "https://example.com/cat.jpg", "detail": "high" } },
            ],
        }])));
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                { "type": "text", "text": "Compare" },
                { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=" } },
                { "type": "image", "source": { "type": "url", "url": "https://example.com/cat.jpg" } },
            ])
        );
        for bad in [
            "data:image/tiff;base64,AAAA",
            "data:image/png,plain",
            "data:image/png;base64",
            "ftp://example.com/x.png",
        ] {
            let e = to_messages_err(chat(json!([{
                "role": "user",
                "content": [{ "type": "image_url", "image_url": { "url": bad } }],
            }])));
            assert_eq!(e.field, "messages[0].content[0].image_url.url", "{bad}");
        }
    }

    #[test]
    fn tools_and_tool_choice() {
        let mut req = chat(json!([{ "role": "user", "content": "weather?" }]));
        req["tools"] = json!([{
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] },
            },
        }, { "type": "function", "function": { "name": "now" } }]);
        let out = to_messages(req.clone());
        assert_eq!(
            out["tools"],
            json!([
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "input_schema": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] },
                },
                { "name": "now", "input_schema": { "type": "object", "properties": {} } },
            ])
        );
        assert!(out.get("tool_choice").is_none());
        for (choice, want) in [
            (json!("auto"), json!({ "type": "auto" })),
            (json!("required"), json!({ "type": "any" })),
            (json!("none"), json!({ "type": "none" })),
            (
                json!({ "type": "function", "function": { "name": "now" } }),
                json!({ "type": "tool", "name": "now" }),
            ),
        ] {
            req["tool_choice"] = choice;
            assert_eq!(to_messages(req.clone())["tool_choice"], want);
        }
        req["tool_choice"] = json!("required");
        req["parallel_tool_calls"] = json!(false);
        assert_eq!(
            to_messages(req.clone())["tool_choice"],
            json!({ "type": "any", "disable_parallel_tool_use": true })
        );
        req["tool_choice"] = json!("sometimes");
        assert_eq!(to_messages_err(req.clone()).field, "tool_choice");
        req["tool_choice"] = Value::Null;
        req["tools"] = json!([{ "type": "custom", "custom": { "name": "x" } }]);
        assert_eq!(to_messages_err(req).field, "tools[0].type");
    }

    #[test]
    fn tool_calls_and_results_in_a_multi_turn_conversation() {
        let out = to_messages(chat(json!([
            { "role": "system", "content": "You are a travel agent." },
            { "role": "user", "content": "Weather in Paris and Oslo?" },
            {
                "role": "assistant",
                "content": "Checking both.",
                "tool_calls": [
                    { "id": "call_1", "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\":\"Paris\"}" } },
                    { "id": "call_2", "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}" } },
                ],
            },
            { "role": "tool", "tool_call_id": "call_1", "content": "18C, sunny" },
            { "role": "tool", "tool_call_id": "call_2", "content": [{ "type": "text", "text": "4C, snow" }] },
            { "role": "assistant", "content": "Paris is 18C and sunny; Oslo 4C with snow." },
            { "role": "user", "content": "Book Paris." },
        ])));
        assert_eq!(out["system"], "You are a travel agent.");
        assert_eq!(
            out["messages"],
            json!([
                { "role": "user", "content": [{ "type": "text", "text": "Weather in Paris and Oslo?" }] },
                { "role": "assistant", "content": [
                    { "type": "text", "text": "Checking both." },
                    { "type": "tool_use", "id": "call_1", "name": "get_weather", "input": { "city": "Paris" } },
                    { "type": "tool_use", "id": "call_2", "name": "get_weather", "input": { "city": "Oslo" } },
                ] },
                { "role": "user", "content": [
                    { "type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny" },
                    { "type": "tool_result", "tool_use_id": "call_2", "content": [{ "type": "text", "text": "4C, snow" }] },
                ] },
                { "role": "assistant", "content": [{ "type": "text", "text": "Paris is 18C and sunny; Oslo 4C with snow." }] },
                { "role": "user", "content": [{ "type": "text", "text": "Book Paris." }] },
            ])
        );
    }

    #[test]
    fn tool_results_go_before_user_text_in_a_merged_turn() {
        let out = to_messages(chat(json!([
            { "role": "user", "content": "go" },
            { "role": "assistant", "content": null, "tool_calls": [
                { "id": "t1", "type": "function", "function": { "name": "f", "arguments": "" } },
            ] },
            { "role": "tool", "tool_call_id": "t1", "content": "done" },
            { "role": "user", "content": "and now?" },
        ])));
        let msgs = out["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        let empty = to_messages(chat(json!([
            { "role": "tool", "tool_call_id": "t0", "content": "" },
        ])));
        assert_eq!(
            empty["messages"][0]["content"],
            json!([{ "type": "tool_result", "tool_use_id": "t0" }])
        );
        assert_eq!(msgs[1]["content"][0]["input"], json!({}));
        assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
        assert_eq!(
            msgs[2]["content"][1],
            json!({ "type": "text", "text": "and now?" })
        );
    }

    #[test]
    fn invalid_tool_arguments_are_refused() {
        for args in ["{not json", "[1,2]"] {
            let e = to_messages_err(chat(json!([
                { "role": "user", "content": "go" },
                { "role": "assistant", "tool_calls": [
                    { "id": "t1", "type": "function", "function": { "name": "f", "arguments": args } },
                ] },
            ])));
            assert_eq!(e.field, "messages[1].tool_calls[0].function.arguments");
        }
    }

    #[test]
    fn consecutive_same_role_messages_merge() {
        let out = to_messages(chat(json!([
            { "role": "user", "content": "one" },
            { "role": "user", "content": [{ "type": "text", "text": "two" }] },
            { "role": "assistant", "content": "three" },
            { "role": "assistant", "content": [{ "type": "refusal", "refusal": "four" }] },
            { "role": "user", "content": "five" },
        ])));
        assert_eq!(
            out["messages"],
            json!([
                { "role": "user", "content": [{ "type": "text", "text": "one" }, { "type": "text", "text": "two" }] },
                { "role": "assistant", "content": [{ "type": "text", "text": "three" }, { "type": "text", "text": "four" }] },
                { "role": "user", "content": [{ "type": "text", "text": "five" }] },
            ])
        );
    }

    #[test]
    fn conversation_must_start_with_a_user_turn() {
        let e = to_messages_err(chat(json!([
            { "role": "system", "content": "s" },
            { "role": "assistant", "content": "hello" },
            { "role": "user", "content": "hi" },
        ])));
        assert_eq!(e.field, "messages");
        assert_eq!(to_messages_err(chat(json!([]))).field, "messages");
        assert_eq!(
            to_messages_err(chat(
                json!([{ "role": "function", "name": "f", "content": "x" }])
            ))
            .field,
            "messages[0].role"
        );
        assert_eq!(to_messages_err(json!({ "messages": [] })).field, "model");
        assert_eq!(chat_to_messages(b"{nope", 1).unwrap_err().field, "body");
    }

    fn response(content: Value, stop: &str, usage: Value) -> Vec<u8> {
        json!({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": content,
            "stop_reason": stop,
            "stop_sequence": null,
            "usage": usage,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn text_response_to_chat_completion() {
        let body = response(
            json!([{ "type": "text", "text": "Hello" }, { "type": "text", "text": ", world" }]),
            "end_turn",
            json!({ "input_tokens": 12, "output_tokens": 6 }),
        );
        let (out, usage) = message_to_chat_with_usage(&body, 1_700_000_000).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out,
            json!({
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "claude-sonnet-4-5",
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": "Hello, world", "refusal": null },
                    "logprobs": null,
                    "finish_reason": "stop",
                }],
                "usage": {
                    "prompt_tokens": 12,
                    "completion_tokens": 6,
                    "total_tokens": 18,
                    "prompt_tokens_details": { "cached_tokens": 0 },
                },
            })
        );
        assert_eq!(
            usage,
            Some(MessageUsage {
                input: 12,
                output: 6,
                cache_read: 0,
                cache_write: 0
            })
        );
        assert_eq!(
            message_to_chat(&body, 1_700_000_000).unwrap(),
            serde_json::to_vec(&out).unwrap()
        );
    }

    #[test]
    fn tool_use_response_and_cache_usage() {
        let body = response(
            json!([
                { "type": "thinking", "thinking": "hmm", "signature": "sig" },
                { "type": "text", "text": "I'll look that up." },
                { "type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": { "city": "London", "units": "celsius" } },
            ]),
            "tool_use",
            json!({
                "input_tokens": 150,
                "output_tokens": 87,
                "cache_creation_input_tokens": 30,
                "cache_read_input_tokens": 120,
            }),
        );
        let (out, usage) = message_to_chat_with_usage(&body, 1).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        let choice = &out["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "I'll look that up.");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["id"], "toolu_01");
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({ "city": "London", "units": "celsius" }));
        assert_eq!(
            out["usage"],
            json!({
                "prompt_tokens": 300,
                "completion_tokens": 87,
                "total_tokens": 387,
                "prompt_tokens_details": { "cached_tokens": 120 },
            })
        );
        assert_eq!(
            usage,
            Some(MessageUsage {
                input: 150,
                output: 87,
                cache_read: 120,
                cache_write: 30
            })
        );
    }

    #[test]
    fn only_tool_use_gives_null_content_and_stop_reasons_map() {
        let body = response(
            json!([{ "type": "tool_use", "id": "t", "name": "f", "input": {} }]),
            "tool_use",
            json!({ "input_tokens": 1, "output_tokens": 1 }),
        );
        let out: Value = serde_json::from_slice(&message_to_chat(&body, 0).unwrap()).unwrap();
        assert!(out["choices"][0]["message"]["content"].is_null());
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
        for (stop, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
        ] {
            let body = response(json!([{ "type": "text", "text": "x" }]), stop, json!({}));
            let out: Value = serde_json::from_slice(&message_to_chat(&body, 0).unwrap()).unwrap();
            assert_eq!(out["choices"][0]["finish_reason"], want, "{stop}");
        }
    }

    #[test]
    fn malformed_responses_name_the_field() {
        assert_eq!(message_to_chat(b"[]", 0).unwrap_err().field, "body");
        let no_content = json!({ "id": "m", "type": "message" }).to_string();
        assert_eq!(
            message_to_chat(no_content.as_bytes(), 0).unwrap_err().field,
            "content"
        );
        let bad_usage = response(json!([]), "end_turn", json!({ "input_tokens": -1 }));
        assert_eq!(
            message_to_chat(&bad_usage, 0).unwrap_err().field,
            "usage.input_tokens"
        );
        let mut no_usage: Value =
            serde_json::from_slice(&response(json!([]), "end_turn", json!({}))).unwrap();
        no_usage.as_object_mut().unwrap().remove("usage");
        let (out, usage) = message_to_chat_with_usage(no_usage.to_string().as_bytes(), 0).unwrap();
        assert!(usage.is_none());
        assert!(serde_json::from_slice::<Value>(&out)
            .unwrap()
            .get("usage")
            .is_none());
    }

    /// An assistant reply, answered as Anthropic would, read back as a chat
    /// message and sent again: the next request carries the same tool_use.
    #[test]
    fn round_trip_tool_call_through_the_next_request() {
        let reply = response(
            json!([
                { "type": "text", "text": "Let me check." },
                { "type": "tool_use", "id": "toolu_9", "name": "lookup", "input": { "q": "bursar", "n": 3 } },
            ]),
            "tool_use",
            json!({ "input_tokens": 5, "output_tokens": 7 }),
        );
        let completion: Value =
            serde_json::from_slice(&message_to_chat(&reply, 0).unwrap()).unwrap();
        let assistant = completion["choices"][0]["message"].clone();
        let next = to_messages(chat(json!([
            { "role": "user", "content": "find bursar" },
            assistant,
            { "role": "tool", "tool_call_id": "toolu_9", "content": "3 hits" },
        ])));
        let original: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(next["messages"][1]["content"], original["content"]);
        assert_eq!(next["messages"][2]["content"][0]["tool_use_id"], "toolu_9");
    }

    /// One generated OpenAI message.
    #[derive(Debug, Clone)]
    enum Gen {
        System,
        User,
        Assistant,
        /// An assistant turn calling this many tools (1..=3).
        AssistantCalls(usize),
        /// A tool result: answers a pending call (when there is one) unless
        /// `stray`, which uses an id no call had.
        Tool {
            stray: bool,
        },
    }

    fn gen_message() -> impl Strategy<Value = Gen> {
        prop_oneof![
            1 => Just(Gen::System),
            4 => Just(Gen::User),
            3 => Just(Gen::Assistant),
            2 => (1usize..=3).prop_map(Gen::AssistantCalls),
            3 => any::<bool>().prop_map(|b| Gen::Tool { stray: b }),
        ]
    }

    /// Builds the chat messages; true when every tool message answers an
    /// earlier tool call.
    fn build(gens: &[Gen], start_with_user: bool) -> (Vec<Value>, bool) {
        let mut msgs = Vec::new();
        if start_with_user {
            msgs.push(json!({ "role": "user", "content": "start" }));
        }
        let mut pending: Vec<String> = Vec::new();
        let mut next_id = 0;
        let mut valid = true;
        for (i, g) in gens.iter().enumerate() {
            match g {
                Gen::System => msgs.push(json!({ "role": "system", "content": format!("s{i}") })),
                Gen::User => msgs.push(json!({ "role": "user", "content": format!("u{i}") })),
                Gen::Assistant => {
                    msgs.push(json!({ "role": "assistant", "content": format!("a{i}") }))
                }
                Gen::AssistantCalls(k) => {
                    let calls: Vec<Value> = (0..*k)
                        .map(|_| {
                            next_id += 1;
                            pending.push(format!("call_{next_id}"));
                            json!({
                                "id": format!("call_{next_id}"),
                                "type": "function",
                                "function": { "name": "f", "arguments": format!("{{\"i\":{next_id}}}") },
                            })
                        })
                        .collect();
                    msgs.push(json!({ "role": "assistant", "content": null, "tool_calls": calls }));
                }
                Gen::Tool { stray } => {
                    let id = if *stray || pending.is_empty() {
                        valid = false;
                        "call_stray".to_string()
                    } else {
                        pending.remove(0)
                    };
                    msgs.push(
                        json!({ "role": "tool", "tool_call_id": id, "content": format!("r{i}") }),
                    );
                }
            }
        }
        (msgs, valid)
    }

    proptest! {
        #[test]
        fn output_alternates_and_tool_results_follow_tool_uses(
            gens in proptest::collection::vec(gen_message(), 0..24),
            start_with_user in any::<bool>(),
        ) {
            let (msgs, ids_valid) = build(&gens, start_with_user);
            let first_turn_user = msgs
                .iter()
                .map(|m| m["role"].as_str().unwrap())
                .find(|r| *r != "system")
                .is_some_and(|r| r == "user" || r == "tool");
            let res = chat_to_messages(chat(Value::Array(msgs)).to_string().as_bytes(), 256);
            prop_assert_eq!(res.is_ok(), first_turn_user, "{:?}", res);
            let Ok(out) = res else { return Ok(()) };
            let out: Value = serde_json::from_slice(&out).unwrap();
            let turns = out["messages"].as_array().unwrap();
            prop_assert!(!turns.is_empty());
            let mut seen_uses = std::collections::HashSet::new();
            for (i, t) in turns.iter().enumerate() {
                let want = if i % 2 == 0 { "user" } else { "assistant" };
                prop_assert_eq!(t["role"].as_str(), Some(want));
                let blocks = t["content"].as_array().unwrap();
                prop_assert!(!blocks.is_empty());
                let mut text_seen = false;
                for b in blocks {
                    match b["type"].as_str().unwrap() {
                        "tool_use" => {
                            prop_assert_eq!(want, "assistant");
                            seen_uses.insert(b["id"].as_str().unwrap().to_string());
                        }
                        "tool_result" => {
                            prop_assert_eq!(want, "user");
                            prop_assert!(!text_seen, "tool_result after text");
                            if ids_valid {
                                prop_assert!(seen_uses.contains(b["tool_use_id"].as_str().unwrap()));
                            }
                        }
                        "text" => {
                            text_seen = true;
                            prop_assert!(!b["text"].as_str().unwrap().is_empty());
                        }
                        other => prop_assert!(false, "unexpected block {}", other),
                    }
                }
            }
        }
    }
}
