//! The `gemini` provider: pure translation between OpenAI chat completions
//! and Google's Gemini API (`generativelanguage.googleapis.com/v1beta`,
//! `models/{model}:generateContent` and `:streamGenerateContent?alt=sse`),
//! no I/O.
//!
//! [`chat_to_generate`] turns an OpenAI chat request into a
//! `GenerateContentRequest`:
//! - system and developer messages → `systemInstruction`, their texts joined
//!   with a blank line into one part, in order, wherever they stand;
//! - user and assistant messages → `contents` turns of role `user` and
//!   `model`; consecutive turns of the same role are merged (Gemini wants
//!   them to alternate); a conversation may start with either role;
//! - assistant `tool_calls` → `functionCall {name, args}` parts (the
//!   arguments string must encode a JSON object; an empty one is `{}`);
//! - `tool` messages → `functionResponse {name, response}` parts in a `user`
//!   turn, first in that turn, before any text the user added; the name is
//!   that of the latest earlier tool call with the message's `tool_call_id`
//!   (or the message's own `name`); the response is the content when it is
//!   a JSON object, else `{"content": <text>}`;
//! - `image_url` parts: a `data:` URL → `inlineData`, an http(s) URL →
//!   `fileData` with a MIME type guessed from the path's extension;
//!   `input_audio` → `inlineData` (`audio/wav`, `audio/mp3`); `file` parts
//!   with `file_data` as a data URL → `inlineData` (an OpenAI `file_id`
//!   means nothing to Gemini: refused);
//! - `max_completion_tokens` (wins) or `max_tokens` → `maxOutputTokens`
//!   (else the caller's default); `n` → `candidateCount`; `stop` →
//!   `stopSequences`; `temperature`, `top_p`, `top_k` (an extension some
//!   clients send), `seed` → the same in `generationConfig`;
//!   `presence_penalty` / `frequency_penalty` → `presencePenalty` /
//!   `frequencyPenalty`, left out when 0 (their default; several Gemini
//!   models refuse penalties altogether);
//! - `response_format`: `text` → nothing, `json_object` → `responseMimeType:
//!   application/json`, `json_schema` → the same plus `responseSchema`, the
//!   schema passed as is (Gemini accepts an OpenAPI subset of JSON Schema:
//!   what it refuses, it refuses upstream);
//! - `tools` → one `tools[{functionDeclarations}]`; `tool_choice` →
//!   `toolConfig.functionCallingConfig.mode`: `none` → `NONE`, `auto` →
//!   `AUTO`, `required` → `ANY`, a named function → `ANY` with
//!   `allowedFunctionNames: [name]`;
//! - `reasoning_effort` → `generationConfig.thinkingConfig.thinkingBudget`,
//!   as Google's own OpenAI-compatible endpoint maps it on Gemini 2.5:
//!   `none` → 0 (thinking off), `minimal` and `low` → 1024, `medium` →
//!   8192, `high` → 24576.
//!
//! What Gemini cannot express, or what is not translated (logprobs,
//! logit_bias, audio output, predicted outputs, web search,
//! `parallel_tool_calls: false`, the deprecated `functions`), is a
//! [`TranslateError`] naming the field. `stream`, `stream_options`, `model`
//! (it goes in the path, [`generate_path`]), `user`, `metadata`, `store` and
//! `service_tier` are ignored; so is a message's `name`.
//!
//! [`generate_to_chat`] turns a (non-streamed) `GenerateContentResponse`
//! into a `chat.completion`, one choice per candidate, with the
//! [`Usage`] normalized for billing ([`usage_from_metadata`]). A streamed
//! response is translated by [`super::gemini_stream`].
//!
//! Thought signatures: a `functionCall` part's `thoughtSignature` is carried
//! out as the tool call's `extra_content.google.thought_signature` and back
//! in the same place, as Google's OpenAI-compatible endpoint does (Gemini 3
//! refuses a function-call history without them); a client that drops the
//! member loses the signature.

use serde_json::{json, Map, Value};

pub use super::TranslateError;
use crate::tokens::{Usage, UsageSource};

/// Request fields with no Gemini translation: present with a value other
/// than the harmless default, they are an error.
fn reject_unsupported(req: &Map<String, Value>) -> Result<(), TranslateError> {
    let unsupported = |f: &str, why: &str| Err(TranslateError::new(f, why.to_string()));
    for (k, v) in req {
        if v.is_null() {
            continue;
        }
        match k.as_str() {
            "logprobs" if v.as_bool() != Some(false) => {
                return unsupported(
                    "logprobs",
                    "log probabilities are not translated for Gemini",
                )
            }
            "top_logprobs" => {
                return unsupported(
                    "top_logprobs",
                    "log probabilities are not translated for Gemini",
                )
            }
            "logit_bias" if v.as_object().is_none_or(|m| !m.is_empty()) => {
                return unsupported("logit_bias", "Gemini has no logit bias")
            }
            "audio" => return unsupported("audio", "audio output is not translated for Gemini"),
            "modalities"
                if v.as_array()
                    .is_none_or(|m| m.iter().any(|x| x.as_str() != Some("text"))) =>
            {
                return unsupported("modalities", "only text output is translated for Gemini")
            }
            "prediction" => return unsupported("prediction", "Gemini has no predicted outputs"),
            "web_search_options" => {
                return unsupported("web_search_options", "not translated for Gemini")
            }
            "functions" | "function_call" => {
                return unsupported(k, "deprecated; use tools and tool_choice")
            }
            "parallel_tool_calls" => match v.as_bool() {
                Some(true) => {}
                Some(false) => {
                    return unsupported(
                        "parallel_tool_calls",
                        "Gemini cannot be told to make one tool call at a time",
                    )
                }
                None => return unsupported("parallel_tool_calls", "must be a boolean"),
            },
            _ => {}
        }
    }
    Ok(())
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, TranslateError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(TranslateError::new("body", "must be a JSON object")),
        Err(e) => Err(TranslateError::new("body", format!("not valid JSON: {e}"))),
    }
}

fn serialise(v: &Value) -> Result<Vec<u8>, TranslateError> {
    serde_json::to_vec(v).map_err(|e| TranslateError::new("body", format!("cannot serialise: {e}")))
}

/// Translates an OpenAI chat completions request into a Gemini
/// `GenerateContentRequest`. `default_max_tokens` is `maxOutputTokens` when
/// the request sets neither `max_completion_tokens` nor `max_tokens`.
pub fn chat_to_generate(body: &[u8], default_max_tokens: u64) -> Result<Vec<u8>, TranslateError> {
    let req = parse_object(body)?;
    reject_unsupported(&req)?;
    let mut out = Map::new();

    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("messages", "required, an array"))?;
    let (system, contents) = translate_messages(messages)?;
    out.insert("contents".into(), Value::Array(contents));
    if let Some(system) = system {
        out.insert(
            "systemInstruction".into(),
            json!({ "parts": [{ "text": system }] }),
        );
    }

    let tools = match req.get("tools").filter(|v| !v.is_null()) {
        Some(t) => translate_tools(t)?,
        None => Vec::new(),
    };
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert(
            "tools".into(),
            json!([{ "functionDeclarations": Value::Array(tools) }]),
        );
    }
    if let Some(c) = req.get("tool_choice").filter(|v| !v.is_null()) {
        let config = translate_tool_choice(c)?;
        if has_tools {
            out.insert(
                "toolConfig".into(),
                json!({ "functionCallingConfig": config }),
            );
        } else if config["mode"] == "ANY" {
            return Err(TranslateError::new(
                "tool_choice",
                "requires tools to choose from",
            ));
        }
    }

    out.insert(
        "generationConfig".into(),
        Value::Object(generation_config(&req, default_max_tokens)?),
    );
    serialise(&Value::Object(out))
}

fn generation_config(
    req: &Map<String, Value>,
    default_max_tokens: u64,
) -> Result<Map<String, Value>, TranslateError> {
    let mut g = Map::new();
    g.insert(
        "maxOutputTokens".into(),
        json!(max_tokens(req, default_max_tokens)?),
    );
    let present = |k: &str| req.get(k).filter(|v| !v.is_null());
    if let Some(n) = present("n") {
        let n = n
            .as_u64()
            .filter(|&n| n >= 1)
            .ok_or_else(|| TranslateError::new("n", "must be a positive integer"))?;
        g.insert("candidateCount".into(), json!(n));
    }
    if let Some(stop) = present("stop") {
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
            g.insert("stopSequences".into(), Value::Array(seqs));
        }
    }
    let number = |k: &str| -> Result<Option<f64>, TranslateError> {
        match present(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| TranslateError::new(k, "must be a number")),
        }
    };
    if let Some(t) = number("temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err(TranslateError::new("temperature", "must be 0 to 2"));
        }
        g.insert("temperature".into(), json!(t));
    }
    if let Some(p) = number("top_p")? {
        if !(0.0..=1.0).contains(&p) {
            return Err(TranslateError::new("top_p", "must be 0 to 1"));
        }
        g.insert("topP".into(), json!(p));
    }
    if let Some(k) = present("top_k") {
        let k = k
            .as_u64()
            .ok_or_else(|| TranslateError::new("top_k", "must be a non-negative integer"))?;
        g.insert("topK".into(), json!(k));
    }
    if let Some(s) = present("seed") {
        let s = s
            .as_i64()
            .ok_or_else(|| TranslateError::new("seed", "must be an integer"))?;
        g.insert("seed".into(), json!(s));
    }
    for (k, to) in [
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(p) = number(k)? {
            if p != 0.0 {
                g.insert(to.into(), json!(p));
            }
        }
    }
    if let Some(rf) = present("response_format") {
        match rf.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                g.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                g.insert("responseMimeType".into(), json!("application/json"));
                match rf.get("json_schema").and_then(|j| j.get("schema")) {
                    None | Some(Value::Null) => {}
                    Some(s) if s.is_object() => {
                        g.insert("responseSchema".into(), s.clone());
                    }
                    Some(_) => {
                        return Err(TranslateError::new(
                            "response_format.json_schema.schema",
                            "must be a JSON Schema object",
                        ))
                    }
                }
            }
            _ => {
                return Err(TranslateError::new(
                    "response_format",
                    "type must be text, json_object or json_schema",
                ))
            }
        }
    }
    if let Some(e) = present("reasoning_effort") {
        let budget = match e.as_str() {
            Some("none") => 0,
            Some("minimal") | Some("low") => 1024,
            Some("medium") => 8192,
            Some("high") => 24576,
            _ => {
                return Err(TranslateError::new(
                    "reasoning_effort",
                    "must be none, minimal, low, medium or high",
                ))
            }
        };
        g.insert("thinkingConfig".into(), json!({ "thinkingBudget": budget }));
    }
    Ok(g)
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

/// One Gemini turn being assembled.
struct Turn {
    role: &'static str,
    parts: Vec<Value>,
}

fn push_turn(turns: &mut Vec<Turn>, role: &'static str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => turns.push(Turn { role, parts }),
    }
}

/// The system instruction's text and the alternating `contents`.
fn translate_messages(messages: &[Value]) -> Result<(Option<String>, Vec<Value>), TranslateError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    // Tool call id → function name, for the tool messages that answer them.
    let mut call_names: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        if !m.is_object() {
            return Err(TranslateError::new(at, "must be an object"));
        }
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::new(format!("{at}.role"), "required, a string"))?;
        let content = m.get("content").unwrap_or(&Value::Null);
        let content_at = format!("{at}.content");
        match role {
            "system" | "developer" => {
                let text = only_text(content, &content_at)?;
                if !text.is_empty() {
                    system.push(text);
                }
            }
            "user" => push_turn(&mut turns, "user", user_parts(content, &content_at)?),
            "assistant" => {
                for (k, why) in [
                    ("function_call", "deprecated; use tool_calls"),
                    ("audio", "audio is not translated for Gemini"),
                ] {
                    if m.get(k).is_some_and(|v| !v.is_null()) {
                        return Err(TranslateError::new(format!("{at}.{k}"), why));
                    }
                }
                let mut parts = assistant_parts(content, &content_at)?;
                if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
                    parts.extend(function_call_parts(
                        calls,
                        &format!("{at}.tool_calls"),
                        &mut call_names,
                    )?);
                }
                push_turn(&mut turns, "model", parts);
            }
            "tool" => {
                let part = function_response_part(m, content, &at, &call_names)?;
                push_turn(&mut turns, "user", vec![part]);
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
    if turns.is_empty() {
        return Err(TranslateError::new(
            "messages",
            "needs at least one non-empty user or assistant message",
        ));
    }
    let contents = turns
        .into_iter()
        .map(|t| {
            let mut parts = t.parts;
            if t.role == "user" {
                // Function responses answer the preceding model turn: they
                // go first, before any text the user added (a stable sort).
                parts.sort_by_key(|p| p.get("functionResponse").is_none());
            }
            json!({ "role": t.role, "parts": parts })
        })
        .collect();
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, contents))
}

fn text_part(s: &str) -> Option<Value> {
    (!s.is_empty()).then(|| json!({ "text": s }))
}

fn part_text<'a>(p: &'a Value, at: &str) -> Result<&'a str, TranslateError> {
    p.get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{at}.text"), "required, a string"))
}

fn part_type<'a>(p: &'a Value, at: &str) -> Result<Option<&'a str>, TranslateError> {
    if !p.is_object() {
        return Err(TranslateError::new(at, "must be an object"));
    }
    Ok(p.get("type").and_then(Value::as_str))
}

/// Content that may only be text (a string or text parts), joined.
fn only_text(content: &Value, at: &str) -> Result<String, TranslateError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                let at = format!("{at}[{j}]");
                match part_type(p, &at)? {
                    Some("text") => out.push_str(part_text(p, &at)?),
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

fn string_content_parts(content: &Value, at: &str) -> Option<Result<Vec<Value>, TranslateError>> {
    match content {
        Value::Null => Some(Ok(Vec::new())),
        Value::String(s) => Some(Ok(text_part(s).into_iter().collect())),
        Value::Array(_) => None,
        _ => Some(Err(TranslateError::new(
            at,
            "must be a string or an array of parts",
        ))),
    }
}

fn assistant_parts(content: &Value, at: &str) -> Result<Vec<Value>, TranslateError> {
    if let Some(r) = string_content_parts(content, at) {
        return r;
    }
    let mut out = Vec::new();
    for (j, p) in content.as_array().into_iter().flatten().enumerate() {
        let at = format!("{at}[{j}]");
        match part_type(p, &at)? {
            Some("text") => out.extend(text_part(part_text(p, &at)?)),
            Some("refusal") => {
                let r = p.get("refusal").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::new(format!("{at}.refusal"), "required, a string")
                })?;
                out.extend(text_part(r));
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

fn user_parts(content: &Value, at: &str) -> Result<Vec<Value>, TranslateError> {
    if let Some(r) = string_content_parts(content, at) {
        return r;
    }
    let mut out = Vec::new();
    for (j, p) in content.as_array().into_iter().flatten().enumerate() {
        let at = format!("{at}[{j}]");
        match part_type(p, &at)? {
            Some("text") => out.extend(text_part(part_text(p, &at)?)),
            Some("image_url") => out.push(image_part(p, &at)?),
            Some("input_audio") => out.push(audio_part(p, &at)?),
            Some("file") => out.push(file_part(p, &at)?),
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

/// A base64 `data:` URL's MIME type (lower case) and data.
fn data_url<'a>(url: &'a str, field: &str) -> Result<(String, &'a str), TranslateError> {
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| TranslateError::new(field, "must be a base64 data URL"))?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| TranslateError::new(field, "a data URL needs a comma"))?;
    let meta = meta
        .strip_suffix(";base64")
        .ok_or_else(|| TranslateError::new(field, "only base64 data URLs are supported"))?;
    let mime = meta.split(';').next().unwrap_or("").to_ascii_lowercase();
    if mime.is_empty() || !mime.contains('/') {
        return Err(TranslateError::new(
            field,
            "a data URL needs a MIME type (data:image/png;base64,...)",
        ));
    }
    if data.is_empty() {
        return Err(TranslateError::new(field, "the data URL holds no data"));
    }
    Ok((mime, data))
}

/// The MIME type of a file named by a URL, from its path's extension.
fn mime_from_extension(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.rsplit('/').next().unwrap_or(path);
    let (_, ext) = last.rsplit_once('.')?;
    Some(match ext.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

/// An `image_url` part: a `data:` URL becomes `inlineData`, an http(s) URL
/// `fileData` (Gemini fetches it; its MIME type is guessed from the path).
fn image_part(p: &Value, at: &str) -> Result<Value, TranslateError> {
    let field = format!("{at}.image_url.url");
    let url = match p.get("image_url") {
        Some(Value::String(s)) => s.as_str(),
        Some(v) => v
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::new(&field, "required, a string"))?,
        None => return Err(TranslateError::new(&field, "required, a string")),
    };
    if url.starts_with("data:") {
        let (mime, data) = data_url(url, &field)?;
        Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }))
    } else if url.starts_with("https://") || url.starts_with("http://") {
        let mime = mime_from_extension(url).ok_or_else(|| {
            TranslateError::new(
                &field,
                "cannot tell the image's MIME type from the URL (png, jpg, jpeg, webp, gif, \
                 heic, heif, pdf); send it as a data URL",
            )
        })?;
        Ok(json!({ "fileData": { "mimeType": mime, "fileUri": url } }))
    } else {
        Err(TranslateError::new(
            &field,
            "must be an http(s) URL or a base64 data URL",
        ))
    }
}

fn audio_part(p: &Value, at: &str) -> Result<Value, TranslateError> {
    let a = p.get("input_audio");
    let data = a
        .and_then(|a| a.get("data"))
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| {
            TranslateError::new(format!("{at}.input_audio.data"), "required, base64 audio")
        })?;
    let mime = match a.and_then(|a| a.get("format")).and_then(Value::as_str) {
        Some("wav") => "audio/wav",
        Some("mp3") => "audio/mp3",
        _ => {
            return Err(TranslateError::new(
                format!("{at}.input_audio.format"),
                "must be wav or mp3",
            ))
        }
    };
    Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }))
}

fn file_part(p: &Value, at: &str) -> Result<Value, TranslateError> {
    let f = p.get("file");
    if f.and_then(|f| f.get("file_id"))
        .is_some_and(|v| !v.is_null())
    {
        return Err(TranslateError::new(
            format!("{at}.file.file_id"),
            "OpenAI file ids mean nothing to Gemini; send file_data",
        ));
    }
    let field = format!("{at}.file.file_data");
    let url = f
        .and_then(|f| f.get("file_data"))
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(&field, "required, a base64 data URL"))?;
    let (mime, data) = data_url(url, &field)?;
    Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }))
}

fn function_call_parts(
    calls: &Value,
    at: &str,
    call_names: &mut Vec<(String, String)>,
) -> Result<Vec<Value>, TranslateError> {
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
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                TranslateError::new(format!("{at}.function.name"), "required, a string")
            })?;
        let args_at = format!("{at}.function.arguments");
        let args = match f.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(TranslateError::new(args_at, "must be a string")),
        };
        let args: Value = if args.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(args)
                .map_err(|e| TranslateError::new(&args_at, format!("not valid JSON: {e}")))?
        };
        if !args.is_object() {
            return Err(TranslateError::new(args_at, "must encode a JSON object"));
        }
        let mut part = json!({ "functionCall": { "name": name, "args": args } });
        let sig = c.pointer("/extra_content/google/thought_signature");
        match sig {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => part["thoughtSignature"] = json!(s),
            Some(_) => {
                return Err(TranslateError::new(
                    format!("{at}.extra_content.google.thought_signature"),
                    "must be a string",
                ))
            }
        }
        call_names.push((id.to_string(), name.to_string()));
        out.push(part);
    }
    Ok(out)
}

fn function_response_part(
    m: &Value,
    content: &Value,
    at: &str,
    call_names: &[(String, String)],
) -> Result<Value, TranslateError> {
    let id_at = format!("{at}.tool_call_id");
    let id = m
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(&id_at, "required, a string"))?;
    let name = call_names
        .iter()
        .rev()
        .find(|(i, _)| i == id)
        .map(|(_, n)| n.as_str())
        .or_else(|| {
            m.get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
        })
        .ok_or_else(|| {
            TranslateError::new(
                &id_at,
                format!("no earlier assistant tool call has id {id:?} (Gemini needs its name)"),
            )
        })?;
    let text = only_text(content, &format!("{at}.content"))?;
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "content": text }),
    };
    Ok(json!({ "functionResponse": { "name": name, "response": response } }))
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
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                TranslateError::new(format!("{at}.function.name"), "required, a string")
            })?;
        let mut decl = Map::new();
        decl.insert("name".into(), json!(name));
        match f.get("description") {
            None | Some(Value::Null) => {}
            Some(Value::String(d)) => {
                decl.insert("description".into(), json!(d));
            }
            Some(_) => {
                return Err(TranslateError::new(
                    format!("{at}.function.description"),
                    "must be a string",
                ))
            }
        }
        match f.get("parameters") {
            None | Some(Value::Null) => {}
            Some(p) if p.is_object() => {
                decl.insert("parameters".into(), p.clone());
            }
            Some(_) => {
                return Err(TranslateError::new(
                    format!("{at}.function.parameters"),
                    "must be a JSON Schema object",
                ))
            }
        }
        out.push(Value::Object(decl));
    }
    Ok(out)
}

/// OpenAI's `tool_choice` as a `functionCallingConfig`.
fn translate_tool_choice(c: &Value) -> Result<Value, TranslateError> {
    match c {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({ "mode": "AUTO" })),
            "required" => Ok(json!({ "mode": "ANY" })),
            "none" => Ok(json!({ "mode": "NONE" })),
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
            Ok(json!({ "mode": "ANY", "allowedFunctionNames": [name] }))
        }
        _ => Err(TranslateError::new(
            "tool_choice",
            "must be a string or an object",
        )),
    }
}

/// The path under `https://generativelanguage.googleapis.com/v1beta` of a
/// generate call: `/models/{model}:generateContent`, or
/// `/models/{model}:streamGenerateContent?alt=sse` when `stream`. A leading
/// `models/` is dropped; a name with any character outside
/// `[A-Za-z0-9._-]`, or made only of dots, is refused.
pub fn generate_path(model: &str, stream: bool) -> Result<String, TranslateError> {
    let name = model.strip_prefix("models/").unwrap_or(model);
    if name.is_empty()
        || name.bytes().all(|b| b == b'.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(TranslateError::new(
            "model",
            format!("{model:?} is not a Gemini model name (letters, digits, '.', '_', '-')"),
        ));
    }
    Ok(if stream {
        format!("/models/{name}:streamGenerateContent?alt=sse")
    } else {
        format!("/models/{name}:generateContent")
    })
}

/// Reads a `usageMetadata` object into the normalized [`Usage`]:
/// `prompt_tokens = promptTokenCount + toolUsePromptTokenCount`,
/// `cached_tokens = cachedContentTokenCount`, `completion_tokens =
/// candidatesTokenCount + thoughtsTokenCount`, `reasoning_tokens =
/// thoughtsTokenCount`. An absent (or `null`) count is 0 (Gemini leaves
/// out the zero ones); `None` when `v` is not an object or a count is not a
/// non-negative integer.
pub fn usage_from_metadata(v: &Value) -> Option<Usage> {
    let obj = v.as_object()?;
    let count = |k: &str| -> Option<u64> {
        match obj.get(k) {
            None | Some(Value::Null) => Some(0),
            Some(v) => v.as_u64(),
        }
    };
    let prompt = count("promptTokenCount")?;
    let tool_prompt = count("toolUsePromptTokenCount")?;
    let cached = count("cachedContentTokenCount")?;
    let candidates = count("candidatesTokenCount")?;
    let thoughts = count("thoughtsTokenCount")?;
    count("totalTokenCount")?;
    Some(Usage {
        prompt_tokens: prompt.saturating_add(tool_prompt),
        completion_tokens: candidates.saturating_add(thoughts),
        cached_tokens: cached,
        cache_write_tokens: 0,
        reasoning_tokens: thoughts,
        source: UsageSource::Provider,
    })
}

/// The `usage` member of a chat.completion (or its last chunk) for `u`.
pub(crate) fn openai_usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens(),
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
        "completion_tokens_details": { "reasoning_tokens": u.reasoning_tokens },
    })
}

/// The OpenAI `finish_reason` for a candidate's `finishReason`; a candidate
/// that stopped naturally after calling functions finished with
/// `tool_calls`. Reasons with no OpenAI counterpart (`OTHER`, `LANGUAGE`,
/// `MALFORMED_FUNCTION_CALL`, ...) read as `stop`.
pub(crate) fn finish_reason(reason: &str, called_functions: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if called_functions => "tool_calls",
        _ => "stop",
    }
}

/// The chat.completion id for a response's `responseId`.
pub(crate) fn completion_id(response_id: Option<&str>, created: i64) -> String {
    match response_id {
        Some(r) if !r.is_empty() => format!("chatcmpl-{r}"),
        _ => format!("chatcmpl-gemini-{created}"),
    }
}

/// What a candidate's `content.parts` say: visible text, tool calls.
pub(crate) struct PartsRead {
    pub text: String,
    /// OpenAI tool calls (without `index`), ids `call_<n>` from `first_call`.
    pub tool_calls: Vec<Value>,
}

/// Reads the parts of `candidate.content` (absent content: nothing). Parts
/// marked `thought: true` are left out; parts other than text and function
/// calls (executable code, inline data, ...) have no chat.completion place
/// and are skipped.
pub(crate) fn read_parts(
    candidate: &Value,
    at: &str,
    first_call: usize,
) -> Result<PartsRead, TranslateError> {
    let mut read = PartsRead {
        text: String::new(),
        tool_calls: Vec::new(),
    };
    let parts = match candidate.get("content") {
        None | Some(Value::Null) => return Ok(read),
        Some(c) => match c.get("parts") {
            None | Some(Value::Null) => return Ok(read),
            Some(Value::Array(p)) => p,
            Some(_) => {
                return Err(TranslateError::new(
                    format!("{at}.content.parts"),
                    "must be an array",
                ))
            }
        },
    };
    for (j, p) in parts.iter().enumerate() {
        let at = format!("{at}.content.parts[{j}]");
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = p.get("text") {
            let t = t
                .as_str()
                .ok_or_else(|| TranslateError::new(format!("{at}.text"), "must be a string"))?;
            read.text.push_str(t);
        } else if let Some(fc) = p.get("functionCall") {
            let name = fc.get("name").and_then(Value::as_str).ok_or_else(|| {
                TranslateError::new(format!("{at}.functionCall.name"), "required, a string")
            })?;
            let args = match fc.get("args") {
                None | Some(Value::Null) => json!({}),
                Some(a) => a.clone(),
            };
            let mut call = json!({
                "id": format!("call_{}", first_call + read.tool_calls.len()),
                "type": "function",
                "function": { "name": name, "arguments": args.to_string() },
            });
            if let Some(sig) = p.get("thoughtSignature").and_then(Value::as_str) {
                call["extra_content"] = json!({ "google": { "thought_signature": sig } });
            }
            read.tool_calls.push(call);
        }
    }
    Ok(read)
}

/// Translates a Gemini `GenerateContentResponse` into an OpenAI
/// `chat.completion` (`model` as given, `created` in Unix seconds), and
/// returns the normalized usage (`None` when `usageMetadata` is absent).
///
/// One choice per candidate, its `index` the candidate's. A response whose
/// prompt was blocked (`promptFeedback.blockReason`, no candidates) is a
/// completion with one choice, `content: null` and `finish_reason:
/// "content_filter"`, so the client sees the refusal as OpenAI shows its
/// own filtering.
pub fn generate_to_chat(
    body: &[u8],
    model: &str,
    created: i64,
) -> Result<(Vec<u8>, Option<Usage>), TranslateError> {
    let resp = parse_object(body)?;
    if let Some(e) = resp.get("error") {
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("upstream error");
        return Err(TranslateError::new("error", message));
    }
    let usage = match resp.get("usageMetadata") {
        None | Some(Value::Null) => None,
        Some(u) => Some(usage_from_metadata(u).ok_or_else(|| {
            TranslateError::new(
                "usageMetadata",
                "must be an object of non-negative integer counts",
            )
        })?),
    };
    let id = completion_id(resp.get("responseId").and_then(Value::as_str), created);

    let candidates = match resp.get("candidates") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(c)) => &c[..],
        Some(_) => return Err(TranslateError::new("candidates", "must be an array")),
    };
    let mut choices = Vec::with_capacity(candidates.len().max(1));
    for (i, c) in candidates.iter().enumerate() {
        let at = format!("candidates[{i}]");
        if !c.is_object() {
            return Err(TranslateError::new(at, "must be an object"));
        }
        let index = match c.get("index") {
            None | Some(Value::Null) => i as u64,
            Some(v) => v.as_u64().ok_or_else(|| {
                TranslateError::new(format!("{at}.index"), "must be a non-negative integer")
            })?,
        };
        let read = read_parts(c, &at, 0)?;
        let finish = c
            .get("finishReason")
            .and_then(Value::as_str)
            .map(|r| json!(finish_reason(r, !read.tool_calls.is_empty())))
            .unwrap_or(Value::Null);
        let mut message = Map::new();
        message.insert("role".into(), json!("assistant"));
        let content = if read.text.is_empty() && !read.tool_calls.is_empty() {
            Value::Null
        } else {
            json!(read.text)
        };
        message.insert("content".into(), content);
        message.insert("refusal".into(), Value::Null);
        if !read.tool_calls.is_empty() {
            message.insert("tool_calls".into(), Value::Array(read.tool_calls));
        }
        choices.push(json!({
            "index": index,
            "message": Value::Object(message),
            "logprobs": null,
            "finish_reason": finish,
        }));
    }
    if choices.is_empty() {
        let blocked = resp
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .is_some_and(|r| !r.is_null());
        if !blocked {
            return Err(TranslateError::new(
                "candidates",
                "required (no candidates and no promptFeedback.blockReason)",
            ));
        }
        choices.push(json!({
            "index": 0,
            "message": { "role": "assistant", "content": null, "refusal": null },
            "logprobs": null,
            "finish_reason": "content_filter",
        }));
    }

    let mut out = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
    });
    if let Some(u) = &usage {
        out["usage"] = openai_usage(u);
    }
    Ok((serialise(&out)?, usage))
}

/// The message of a Gemini error body, `{"error": {"code", "message",
/// "status"}}` (also as the first element of an array, as the non-SSE
/// stream sends it): the message, or the status when there is none.
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = match &v {
        Value::Array(a) => a.first()?.get("error")?,
        _ => v.get("error")?,
    };
    e.get("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .or_else(|| e.get("status").and_then(Value::as_str))
        .map(str::to_string)
}

/// OpenAI's error `type` for a Gemini error `status`.
pub(crate) fn openai_error_type(status: &str) -> &'static str {
    match status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => "invalid_request_error",
        "UNAUTHENTICATED" => "authentication_error",
        "PERMISSION_DENIED" => "permission_error",
        "NOT_FOUND" => "not_found_error",
        "RESOURCE_EXHAUSTED" => "rate_limit_error",
        _ => "server_error",
    }
}
