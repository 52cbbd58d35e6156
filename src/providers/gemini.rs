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
//!   `fileData` with a MIME type guessed from the path's extension (Gemini
//!   fetches it; models or URLs it cannot fetch are refused upstream);
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

use super::chat::{
    self, refuses, Blocks, HttpImages, ImageUrl, Parts, Role, ToolCall, ToolChoice, Turns,
    Unsupported,
};
pub use super::TranslateError;
use crate::tokens::{Usage, UsageSource};

/// Request fields with no Gemini translation: present with a value other
/// than the harmless default, they are an error.
const UNSUPPORTED: &[Unsupported] = &[
    Unsupported::new(
        "logprobs",
        refuses::not_false,
        "log probabilities are not translated for Gemini",
    ),
    Unsupported::new(
        "top_logprobs",
        refuses::any,
        "log probabilities are not translated for Gemini",
    ),
    Unsupported::new(
        "logit_bias",
        refuses::not_empty_object,
        "Gemini has no logit bias",
    ),
    Unsupported::new(
        "audio",
        refuses::any,
        "audio output is not translated for Gemini",
    ),
    Unsupported::new(
        "modalities",
        refuses::not_text_only,
        "only text output is translated for Gemini",
    ),
    Unsupported::new(
        "prediction",
        refuses::any,
        "Gemini has no predicted outputs",
    ),
    Unsupported::new(
        "web_search_options",
        refuses::any,
        "not translated for Gemini",
    ),
    Unsupported::new(
        "functions",
        refuses::any,
        "deprecated; use tools and tool_choice",
    ),
    Unsupported::new(
        "function_call",
        refuses::any,
        "deprecated; use tools and tool_choice",
    ),
    Unsupported::new(
        "parallel_tool_calls",
        refuses::is_false,
        "Gemini cannot be told to make one tool call at a time",
    ),
    Unsupported::new(
        "parallel_tool_calls",
        refuses::not_bool,
        "must be a boolean",
    ),
];

/// Translates an OpenAI chat completions request into a Gemini
/// `GenerateContentRequest`. `default_max_tokens` is `maxOutputTokens` when
/// the request sets neither `max_completion_tokens` nor `max_tokens`.
pub fn chat_to_generate(body: &[u8], default_max_tokens: u64) -> Result<Vec<u8>, TranslateError> {
    let req = chat::parse_object(body)?;
    chat::reject_unsupported(&req, UNSUPPORTED)?;
    let mut out = Map::new();

    let (system, contents) = translate_messages(chat::messages(&req)?)?;
    out.insert("contents".into(), Value::Array(contents));
    if let Some(system) = system {
        out.insert(
            "systemInstruction".into(),
            json!({ "parts": [{ "text": system }] }),
        );
    }

    let tools = chat::tools(&req, true, |t| {
        let mut decl = Map::new();
        decl.insert("name".into(), json!(t.name));
        match t.function.get("description") {
            None | Some(Value::Null) => {}
            Some(Value::String(d)) => {
                decl.insert("description".into(), json!(d));
            }
            Some(_) => {
                return Err(TranslateError::new(
                    format!("{}.function.description", t.at),
                    "must be a string",
                ))
            }
        }
        if let Some(p) = t.parameters()? {
            decl.insert("parameters".into(), p.clone());
        }
        Ok(Value::Object(decl))
    })?;
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert(
            "tools".into(),
            json!([{ "functionDeclarations": Value::Array(tools) }]),
        );
    }
    if let Some(c) = chat::tool_choice(&req)? {
        // OpenAI's tool_choice as a functionCallingConfig.
        let config = match c {
            ToolChoice::Auto => json!({ "mode": "AUTO" }),
            ToolChoice::Required => json!({ "mode": "ANY" }),
            ToolChoice::None => json!({ "mode": "NONE" }),
            ToolChoice::Function(name) => {
                json!({ "mode": "ANY", "allowedFunctionNames": [name] })
            }
        };
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
    chat::serialise(&Value::Object(out))
}

fn generation_config(
    req: &Map<String, Value>,
    default_max_tokens: u64,
) -> Result<Map<String, Value>, TranslateError> {
    let mut g = Map::new();
    g.insert(
        "maxOutputTokens".into(),
        json!(chat::max_tokens(req, default_max_tokens)?),
    );
    let present = |k: &str| chat::present(req, k);
    if let Some(n) = present("n") {
        let n = n
            .as_u64()
            .filter(|&n| n >= 1)
            .ok_or_else(|| TranslateError::new("n", "must be a positive integer"))?;
        g.insert("candidateCount".into(), json!(n));
    }
    if let Some(seqs) = chat::stop_sequences(req)? {
        g.insert("stopSequences".into(), seqs);
    }
    let number = |k: &str| chat::number(req, k);
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

/// Content as Gemini parts: text, images, audio and files (data URLs).
const PARTS: Blocks = Blocks {
    require_objects: true,
    text: |s| json!({ "text": s }),
    image: image_part,
    audio: audio_part,
    file: file_part,
};

/// The system instruction's text and the alternating `contents`.
fn translate_messages(messages: &[Value]) -> Result<(Option<String>, Vec<Value>), TranslateError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns = Turns::default();
    // Tool call id → function name, for the tool messages that answer them.
    let mut call_names: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = chat::role(m, &at, true)?;
        let content = m.get("content").unwrap_or(&Value::Null);
        let content_at = format!("{at}.content");
        match role {
            Role::System => {
                let text = chat::joined_text(content, &content_at, true)?;
                if !text.is_empty() {
                    system.push(text);
                }
            }
            Role::User => turns.push("user", PARTS.read(content, &content_at, Parts::User)?),
            Role::Assistant => {
                chat::refuse_members(
                    m,
                    &at,
                    &[
                        ("function_call", "deprecated; use tool_calls"),
                        ("audio", "audio is not translated for Gemini"),
                    ],
                )?;
                let mut parts = PARTS.read(content, &content_at, Parts::Assistant)?;
                if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
                    chat::tool_calls(calls, &format!("{at}.tool_calls"), true, |c| {
                        parts.push(function_call_part(&c)?);
                        call_names.push((c.id.to_string(), c.name.to_string()));
                        Ok(())
                    })?;
                }
                turns.push("model", parts);
            }
            Role::Tool => {
                let part = function_response_part(m, content, &at, &call_names)?;
                turns.push("user", vec![part]);
            }
        }
    }
    if turns.first_role().is_none() {
        return Err(TranslateError::new(
            "messages",
            "needs at least one non-empty user or assistant message",
        ));
    }
    // Function responses answer the preceding model turn: they go first,
    // before any text the user added.
    let contents = turns.into_json("parts", |p| p.get("functionResponse").is_some());
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, contents))
}

/// A base64 `data:` URL's MIME type (lower case) and data.
fn data_url<'a>(url: &'a str, field: &str) -> Result<(String, &'a str), TranslateError> {
    let (mime, data) = chat::data_url(url, field)?
        .ok_or_else(|| TranslateError::new(field, "must be a base64 data URL"))?;
    checked_data(mime, data, field)
}

/// A data URL's MIME type and data, refused when either is missing.
fn checked_data<'a>(
    mime: String,
    data: &'a str,
    field: &str,
) -> Result<(String, &'a str), TranslateError> {
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
    match chat::image_url(p, &field, HttpImages::Accept)? {
        ImageUrl::Data { mime, data } => {
            let (mime, data) = checked_data(mime, data, &field)?;
            Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }))
        }
        ImageUrl::Http(url) => {
            let mime = mime_from_extension(url).ok_or_else(|| {
                TranslateError::new(
                    &field,
                    "cannot tell the image's MIME type from the URL (png, jpg, jpeg, webp, gif, \
                     heic, heif, pdf); send it as a data URL",
                )
            })?;
            Ok(json!({ "fileData": { "mimeType": mime, "fileUri": url } }))
        }
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

/// An assistant tool call as a `functionCall` part, its thought signature
/// (`extra_content.google.thought_signature`) carried back.
fn function_call_part(c: &ToolCall<'_>) -> Result<Value, TranslateError> {
    let mut part = json!({ "functionCall": { "name": c.name, "args": c.arguments } });
    match c.call.pointer("/extra_content/google/thought_signature") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => part["thoughtSignature"] = json!(s),
        Some(_) => {
            return Err(TranslateError::new(
                format!("{}.extra_content.google.thought_signature", c.at),
                "must be a string",
            ))
        }
    }
    Ok(part)
}

fn function_response_part(
    m: &Value,
    content: &Value,
    at: &str,
    call_names: &[(String, String)],
) -> Result<Value, TranslateError> {
    let id = chat::tool_call_id(m, at)?;
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
                format!("{at}.tool_call_id"),
                format!("no earlier assistant tool call has id {id:?} (Gemini needs its name)"),
            )
        })?;
    let text = chat::joined_text(content, &format!("{at}.content"), true)?;
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "content": text }),
    };
    Ok(json!({ "functionResponse": { "name": name, "response": response } }))
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
    let mut usage = chat::usage_json(
        u.prompt_tokens,
        u.completion_tokens,
        u.total_tokens(),
        u.cached_tokens,
    );
    usage["completion_tokens_details"] = json!({ "reasoning_tokens": u.reasoning_tokens });
    usage
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
            let id = format!("call_{}", first_call + read.tool_calls.len());
            let mut call = chat::tool_call_json(&id, name, &args);
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
/// One choice per candidate, its `index` the candidate's; the completion's
/// `model` is the one the client asked for (`modelVersion` is not
/// surfaced), its id `chatcmpl-<responseId>` (`chatcmpl-gemini-<created>`
/// without one); tool call ids are `call_<n>`, counted per candidate
/// (Gemini's own function call ids, when present, are not used: a tool
/// message's name is found from the assistant message it answers). A body
/// carrying `error` is refused with the field `error` and its message;
/// a malformed `usageMetadata` with the field `usageMetadata`. A response whose
/// prompt was blocked (`promptFeedback.blockReason`, no candidates) is a
/// completion with one choice, `content: null` and `finish_reason:
/// "content_filter"`, so the client sees the refusal as OpenAI shows its
/// own filtering.
pub fn generate_to_chat(
    body: &[u8],
    model: &str,
    created: i64,
) -> Result<(Vec<u8>, Option<Usage>), TranslateError> {
    let resp = chat::parse_object(body)?;
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
        let message = chat::assistant_message(read.text, read.tool_calls);
        choices.push(chat::choice(index, message, finish));
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

    let mut out = chat::completion(&id, created, model, choices);
    if let Some(u) = &usage {
        out["usage"] = openai_usage(u);
    }
    Ok((chat::serialise(&out)?, usage))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn to_generate(req: Value) -> Value {
        let out = chat_to_generate(req.to_string().as_bytes(), 1024).expect("translates");
        serde_json::from_slice(&out).unwrap()
    }

    fn to_generate_err(req: Value) -> TranslateError {
        chat_to_generate(req.to_string().as_bytes(), 1024).expect_err("must be refused")
    }

    fn chat(msgs: Value) -> Value {
        json!({ "model": "gemini-2.5-flash", "messages": msgs })
    }

    fn user(text: &str) -> Value {
        chat(json!([{ "role": "user", "content": text }]))
    }

    #[test]
    fn minimal_request_and_default_max_tokens() {
        let mut req = user("Hello");
        req["stream"] = json!(true);
        req["stream_options"] = json!({ "include_usage": true });
        req["user"] = json!("alice");
        req["metadata"] = json!({ "k": "v" });
        req["store"] = json!(false);
        assert_eq!(
            to_generate(req),
            json!({
                "contents": [{ "role": "user", "parts": [{ "text": "Hello" }] }],
                "generationConfig": { "maxOutputTokens": 1024 },
            })
        );
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let mut req = user("x");
        req["max_tokens"] = json!(50);
        assert_eq!(
            to_generate(req.clone())["generationConfig"]["maxOutputTokens"],
            50
        );
        req["max_completion_tokens"] = json!(70);
        assert_eq!(
            to_generate(req.clone())["generationConfig"]["maxOutputTokens"],
            70
        );
        req["max_completion_tokens"] = json!(0);
        assert_eq!(to_generate_err(req.clone()).field, "max_completion_tokens");
        req["max_completion_tokens"] = Value::Null;
        req["max_tokens"] = json!("many");
        assert_eq!(to_generate_err(req).field, "max_tokens");
    }

    #[test]
    fn system_and_developer_are_joined_into_system_instruction() {
        let out = to_generate(chat(json!([
            { "role": "system", "content": "Be terse." },
            { "role": "user", "content": "Hi" },
            { "role": "developer", "content": [{ "type": "text", "text": "Use metric." }] },
            { "role": "system", "content": "" },
        ])));
        assert_eq!(
            out["systemInstruction"],
            json!({ "parts": [{ "text": "Be terse.\n\nUse metric." }] })
        );
        assert_eq!(out["contents"].as_array().unwrap().len(), 1);
        let e = to_generate_err(chat(json!([
            { "role": "system", "content": [{ "type": "image_url", "image_url": { "url": "https://x/y.png" } }] },
            { "role": "user", "content": "Hi" },
        ])));
        assert_eq!(e.field, "messages[0].content[0].type");
    }

    #[test]
    fn generation_config_fields() {
        let mut req = user("x");
        req["temperature"] = json!(1.5);
        req["top_p"] = json!(0.9);
        req["top_k"] = json!(40);
        req["seed"] = json!(-7);
        req["n"] = json!(2);
        req["stop"] = json!("END");
        req["presence_penalty"] = json!(0.5);
        req["frequency_penalty"] = json!(0);
        req["response_format"] = json!({ "type": "json_object" });
        let g = to_generate(req.clone())["generationConfig"].clone();
        assert_eq!(
            g,
            json!({
                "maxOutputTokens": 1024,
                "candidateCount": 2,
                "stopSequences": ["END"],
                "temperature": 1.5,
                "topP": 0.9,
                "topK": 40,
                "seed": -7,
                "presencePenalty": 0.5,
                "responseMimeType": "application/json",
            })
        );
        req["stop"] = json!(["a", "b"]);
        req["frequency_penalty"] = json!(-0.25);
        let g = to_generate(req.clone())["generationConfig"].clone();
        assert_eq!(g["stopSequences"], json!(["a", "b"]));
        assert_eq!(g["frequencyPenalty"], -0.25);
        req["stop"] = json!([]);
        assert!(to_generate(req.clone())["generationConfig"]
            .get("stopSequences")
            .is_none());
        for (field, bad) in [
            ("temperature", json!(2.5)),
            ("temperature", json!("hot")),
            ("top_p", json!(1.5)),
            ("top_k", json!(-1)),
            ("seed", json!(1.5)),
            ("n", json!(0)),
            ("stop", json!([1])),
            ("presence_penalty", json!("x")),
        ] {
            let mut r = user("x");
            r[field] = bad;
            assert_eq!(to_generate_err(r).field, field);
        }
    }

    #[test]
    fn response_format_json_schema_passes_the_schema() {
        let schema = json!({
            "type": "object",
            "properties": { "name": { "type": "string" }, "age": { "type": "integer" } },
            "required": ["name"],
        });
        let mut req = user("x");
        req["response_format"] = json!({
            "type": "json_schema",
            "json_schema": { "name": "person", "strict": true, "schema": schema },
        });
        let g = to_generate(req.clone())["generationConfig"].clone();
        assert_eq!(g["responseMimeType"], "application/json");
        assert_eq!(g["responseSchema"], schema);
        req["response_format"] = json!({ "type": "text" });
        let g = to_generate(req.clone())["generationConfig"].clone();
        assert!(g.get("responseMimeType").is_none());
        req["response_format"] = json!({ "type": "json_schema", "json_schema": { "schema": [] } });
        assert_eq!(
            to_generate_err(req.clone()).field,
            "response_format.json_schema.schema"
        );
        req["response_format"] = json!({ "type": "yaml" });
        assert_eq!(to_generate_err(req).field, "response_format");
    }

    #[test]
    fn reasoning_effort_maps_to_a_thinking_budget() {
        for (effort, budget) in [
            ("none", 0),
            ("minimal", 1024),
            ("low", 1024),
            ("medium", 8192),
            ("high", 24576),
        ] {
            let mut req = user("x");
            req["reasoning_effort"] = json!(effort);
            assert_eq!(
                to_generate(req)["generationConfig"]["thinkingConfig"],
                json!({ "thinkingBudget": budget }),
                "{effort}"
            );
        }
        let mut req = user("x");
        req["reasoning_effort"] = json!("extreme");
        assert_eq!(to_generate_err(req).field, "reasoning_effort");
    }

    #[test]
    fn unsupported_fields_are_named() {
        for (field, value) in [
            ("logprobs", json!(true)),
            ("top_logprobs", json!(3)),
            ("logit_bias", json!({ "50256": -100 })),
            ("audio", json!({ "voice": "alloy", "format": "mp3" })),
            ("modalities", json!(["text", "audio"])),
            ("prediction", json!({ "type": "content", "content": "x" })),
            ("web_search_options", json!({})),
            ("functions", json!([])),
            ("function_call", json!("auto")),
            ("parallel_tool_calls", json!(false)),
            ("parallel_tool_calls", json!("no")),
        ] {
            let mut req = user("x");
            req[field] = value;
            let e = to_generate_err(req);
            assert_eq!(e.field, field);
            assert!(e.to_string().starts_with(field), "{e}");
        }
        let mut ok = user("x");
        ok["logprobs"] = json!(false);
        ok["logit_bias"] = json!({});
        ok["modalities"] = json!(["text"]);
        ok["parallel_tool_calls"] = json!(true);
        ok["service_tier"] = json!("auto");
        to_generate(ok);
    }

    #[test]
    fn images_audio_and_files() {
        let out = to_generate(chat(json!([{
            "role": "user",
            "content": [
                { "type": "text", "text": "Compare" },
                { "type": "image_url", "image_url": { "url": "data:image/PNG;base64,iVBORw0KGgo=" } },
                { "type": "image_url", "image_url": { "url": "https://example.com/a/cat.JPG?x=1#f", "detail": "high" } },
                { "type": "image_url", "image_url": "http://example.com/dog.webp" },
                { "type": "input_audio", "input_audio": { "data": "UklGRg==", "format": "wav" } },
                { "type": "file", "file": { "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0=" } },
            ],
        }])));
        assert_eq!(
            out["contents"][0]["parts"],
            json!([
                { "text": "Compare" },
                { "inlineData": { "mimeType": "image/png", "data": "iVBORw0KGgo=" } },
                { "fileData": { "mimeType": "image/jpeg", "fileUri": "https://example.com/a/cat.JPG?x=1#f" } },
                { "fileData": { "mimeType": "image/webp", "fileUri": "http://example.com/dog.webp" } },
                { "inlineData": { "mimeType": "audio/wav", "data": "UklGRg==" } },
                { "inlineData": { "mimeType": "application/pdf", "data": "JVBERi0=" } },
            ])
        );
        for (part, field) in [
            (
                json!({ "type": "image_url", "image_url": { "url": "https://example.com/image" } }),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({ "type": "image_url", "image_url": { "url": "https://example.com/x.tiff" } }),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({ "type": "image_url", "image_url": { "url": "https://example.com.png/" } }),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({ "type": "image_url", "image_url": { "url": "data:image/png,plain" } }),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({ "type": "image_url", "image_url": { "url": "data:;base64,AAAA" } }),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({ "type": "image_url", "image_url": { "url": "data:image/png;base64," } }),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({ "type": "image_url", "image_url": { "url": "ftp://example.com/x.png" } }),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({ "type": "image_url", "image_url": {} }),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({ "type": "input_audio", "input_audio": { "data": "AAAA", "format": "flac" } }),
                "messages[0].content[0].input_audio.format",
            ),
            (
                json!({ "type": "input_audio", "input_audio": { "format": "wav" } }),
                "messages[0].content[0].input_audio.data",
            ),
            (
                json!({ "type": "file", "file": { "file_id": "file-abc" } }),
                "messages[0].content[0].file.file_id",
            ),
            (
                json!({ "type": "file", "file": { "file_data": "JVBERi0=" } }),
                "messages[0].content[0].file.file_data",
            ),
            (json!({ "type": "video" }), "messages[0].content[0].type"),
            (json!("just a string"), "messages[0].content[0]"),
        ] {
            let e = to_generate_err(chat(json!([{ "role": "user", "content": [part] }])));
            assert_eq!(e.field, field, "{e}");
        }
    }

    fn weather_tools() -> Value {
        json!([{
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] },
            },
        }, { "type": "function", "function": { "name": "now" } }])
    }

    #[test]
    fn tools_and_tool_choice() {
        let mut req = user("weather?");
        req["tools"] = weather_tools();
        let out = to_generate(req.clone());
        assert_eq!(
            out["tools"],
            json!([{ "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] },
                },
                { "name": "now" },
            ] }])
        );
        assert!(out.get("toolConfig").is_none());
        for (choice, want) in [
            (json!("auto"), json!({ "mode": "AUTO" })),
            (json!("required"), json!({ "mode": "ANY" })),
            (json!("none"), json!({ "mode": "NONE" })),
            (
                json!({ "type": "function", "function": { "name": "now" } }),
                json!({ "mode": "ANY", "allowedFunctionNames": ["now"] }),
            ),
        ] {
            req["tool_choice"] = choice;
            assert_eq!(
                to_generate(req.clone())["toolConfig"],
                json!({ "functionCallingConfig": want })
            );
        }
        req["tool_choice"] = json!("sometimes");
        assert_eq!(to_generate_err(req.clone()).field, "tool_choice");
        req["tool_choice"] = json!({ "type": "function" });
        assert_eq!(
            to_generate_err(req.clone()).field,
            "tool_choice.function.name"
        );
        req["tool_choice"] = json!({ "type": "custom", "custom": { "name": "x" } });
        assert_eq!(to_generate_err(req.clone()).field, "tool_choice.type");
        req["tool_choice"] = Value::Null;
        req["tools"] = json!([{ "type": "custom", "custom": { "name": "x" } }]);
        assert_eq!(to_generate_err(req.clone()).field, "tools[0].type");
        req["tools"] =
            json!([{ "type": "function", "function": { "name": "f", "parameters": "x" } }]);
        assert_eq!(
            to_generate_err(req.clone()).field,
            "tools[0].function.parameters"
        );
        req["tools"] = json!([{ "type": "function", "function": {} }]);
        assert_eq!(to_generate_err(req.clone()).field, "tools[0].function.name");
        req["tools"] = json!({});
        assert_eq!(to_generate_err(req).field, "tools");

        // Without tools, none and auto are moot; a forced call is refused.
        let mut req = user("x");
        req["tool_choice"] = json!("none");
        assert!(to_generate(req.clone()).get("toolConfig").is_none());
        req["tool_choice"] = json!("required");
        assert_eq!(to_generate_err(req).field, "tool_choice");
    }

    #[test]
    fn tool_calls_and_results_in_a_multi_turn_conversation() {
        let out = to_generate(chat(json!([
            { "role": "system", "content": "You are a travel agent." },
            { "role": "user", "content": "Weather in Paris and Oslo?" },
            {
                "role": "assistant",
                "content": "Checking both.",
                "tool_calls": [
                    { "id": "call_1", "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\":\"Paris\"}" } },
                    { "id": "call_2", "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}" },
                      "extra_content": { "google": { "thought_signature": "c2ln" } } },
                ],
            },
            { "role": "tool", "tool_call_id": "call_1", "content": "18C, sunny" },
            { "role": "tool", "tool_call_id": "call_2", "content": [{ "type": "text", "text": "{\"temp\": 4, \"sky\": \"snow\"}" }] },
            { "role": "assistant", "content": "Paris is 18C and sunny; Oslo 4C with snow." },
            { "role": "user", "content": "Book Paris." },
        ])));
        assert_eq!(
            out["systemInstruction"],
            json!({ "parts": [{ "text": "You are a travel agent." }] })
        );
        assert_eq!(
            out["contents"],
            json!([
                { "role": "user", "parts": [{ "text": "Weather in Paris and Oslo?" }] },
                { "role": "model", "parts": [
                    { "text": "Checking both." },
                    { "functionCall": { "name": "get_weather", "args": { "city": "Paris" } } },
                    { "functionCall": { "name": "get_weather", "args": { "city": "Oslo" } }, "thoughtSignature": "c2ln" },
                ] },
                { "role": "user", "parts": [
                    { "functionResponse": { "name": "get_weather", "response": { "content": "18C, sunny" } } },
                    { "functionResponse": { "name": "get_weather", "response": { "temp": 4, "sky": "snow" } } },
                ] },
                { "role": "model", "parts": [{ "text": "Paris is 18C and sunny; Oslo 4C with snow." }] },
                { "role": "user", "parts": [{ "text": "Book Paris." }] },
            ])
        );
    }

    #[test]
    fn tool_results_resolve_names_and_go_before_user_text() {
        let out = to_generate(chat(json!([
            { "role": "user", "content": "go" },
            { "role": "assistant", "content": null, "tool_calls": [
                { "id": "t1", "type": "function", "function": { "name": "f", "arguments": "" } },
            ] },
            { "role": "user", "content": "and now?" },
            { "role": "tool", "tool_call_id": "t1", "content": "[1, 2]" },
            // A reused id names the latest call; a tool message may name
            // its function itself.
            { "role": "assistant", "tool_calls": [
                { "id": "t1", "type": "function", "function": { "name": "g", "arguments": " " } },
            ] },
            { "role": "tool", "tool_call_id": "t1", "content": null },
            { "role": "tool", "tool_call_id": "elsewhere", "name": "h", "content": "{}" },
        ])));
        let c = out["contents"].as_array().unwrap();
        assert_eq!(c.len(), 5);
        assert_eq!(
            c[1]["parts"][0]["functionCall"],
            json!({ "name": "f", "args": {} })
        );
        assert_eq!(
            c[2]["parts"],
            json!([
                { "functionResponse": { "name": "f", "response": { "content": "[1, 2]" } } },
                { "text": "and now?" },
            ])
        );
        assert_eq!(
            c[3]["parts"][0]["functionCall"],
            json!({ "name": "g", "args": {} })
        );
        assert_eq!(
            c[4],
            json!({ "role": "user", "parts": [
                { "functionResponse": { "name": "g", "response": { "content": "" } } },
                { "functionResponse": { "name": "h", "response": {} } },
            ] })
        );
    }

    #[test]
    fn tool_message_errors_name_the_field() {
        let e = to_generate_err(chat(json!([
            { "role": "user", "content": "go" },
            { "role": "tool", "tool_call_id": "nope", "content": "x" },
        ])));
        assert_eq!(e.field, "messages[1].tool_call_id");
        let e = to_generate_err(chat(json!([
            { "role": "tool", "content": "x" },
        ])));
        assert_eq!(e.field, "messages[0].tool_call_id");
        for (call, field) in [
            (
                json!({ "id": "t", "type": "function", "function": { "name": "f", "arguments": "{not json" } }),
                "messages[1].tool_calls[0].function.arguments",
            ),
            (
                json!({ "id": "t", "type": "function", "function": { "name": "f", "arguments": "[1,2]" } }),
                "messages[1].tool_calls[0].function.arguments",
            ),
            (
                json!({ "id": "t", "type": "function", "function": { "name": "f", "arguments": {} } }),
                "messages[1].tool_calls[0].function.arguments",
            ),
            (
                json!({ "type": "function", "function": { "name": "f" } }),
                "messages[1].tool_calls[0].id",
            ),
            (
                json!({ "id": "t", "type": "function", "function": {} }),
                "messages[1].tool_calls[0].function.name",
            ),
            (
                json!({ "id": "t", "type": "custom", "custom": {} }),
                "messages[1].tool_calls[0].type",
            ),
            (
                json!({ "id": "t", "function": { "name": "f" }, "extra_content": { "google": { "thought_signature": 1 } } }),
                "messages[1].tool_calls[0].extra_content.google.thought_signature",
            ),
        ] {
            let e = to_generate_err(chat(json!([
                { "role": "user", "content": "go" },
                { "role": "assistant", "tool_calls": [call] },
            ])));
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn consecutive_same_role_messages_merge() {
        let out = to_generate(chat(json!([
            { "role": "assistant", "content": "zero" },
            { "role": "user", "content": "one" },
            { "role": "user", "content": [{ "type": "text", "text": "two" }] },
            { "role": "user", "content": "" },
            { "role": "assistant", "content": "three" },
            { "role": "assistant", "content": [{ "type": "refusal", "refusal": "four" }] },
            { "role": "user", "content": "five" },
        ])));
        assert_eq!(
            out["contents"],
            json!([
                { "role": "model", "parts": [{ "text": "zero" }] },
                { "role": "user", "parts": [{ "text": "one" }, { "text": "two" }] },
                { "role": "model", "parts": [{ "text": "three" }, { "text": "four" }] },
                { "role": "user", "parts": [{ "text": "five" }] },
            ])
        );
    }

    #[test]
    fn message_errors_name_the_field() {
        assert_eq!(to_generate_err(chat(json!([]))).field, "messages");
        assert_eq!(
            to_generate_err(chat(json!([{ "role": "system", "content": "s" }]))).field,
            "messages"
        );
        assert_eq!(to_generate_err(json!({ "model": "m" })).field, "messages");
        for (m, field) in [
            (
                json!({ "role": "function", "name": "f", "content": "x" }),
                "messages[0].role",
            ),
            (
                json!({ "role": "robot", "content": "x" }),
                "messages[0].role",
            ),
            (json!({ "content": "x" }), "messages[0].role"),
            (json!("hi"), "messages[0]"),
            (
                json!({ "role": "user", "content": 5 }),
                "messages[0].content",
            ),
            (
                json!({ "role": "user", "content": [{ "type": "text" }] }),
                "messages[0].content[0].text",
            ),
            (
                json!({ "role": "assistant", "content": [{ "type": "image_url" }] }),
                "messages[0].content[0].type",
            ),
            (
                json!({ "role": "assistant", "content": [{ "type": "refusal" }] }),
                "messages[0].content[0].refusal",
            ),
            (
                json!({ "role": "assistant", "content": "x", "function_call": { "name": "f" } }),
                "messages[0].function_call",
            ),
            (
                json!({ "role": "assistant", "content": "x", "audio": { "id": "a" } }),
                "messages[0].audio",
            ),
            (
                json!({ "role": "assistant", "tool_calls": {} }),
                "messages[0].tool_calls",
            ),
        ] {
            assert_eq!(to_generate_err(chat(json!([m]))).field, field);
        }
        assert_eq!(chat_to_generate(b"{nope", 1).unwrap_err().field, "body");
        assert_eq!(chat_to_generate(b"[]", 1).unwrap_err().field, "body");
    }

    #[test]
    fn generate_paths() {
        assert_eq!(
            generate_path("gemini-2.5-flash", false).unwrap(),
            "/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            generate_path("models/gemini-2.0-flash-001", true).unwrap(),
            "/models/gemini-2.0-flash-001:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            generate_path("gemini_exp.1", false).unwrap(),
            "/models/gemini_exp.1:generateContent"
        );
        for bad in [
            "",
            "models/",
            "..",
            ".",
            "a/b",
            "../x",
            "gemini pro",
            "g?alt=json",
            "g:generateContent",
            "g#x",
            "gémini",
            "g%2F",
        ] {
            assert_eq!(
                generate_path(bad, false).unwrap_err().field,
                "model",
                "{bad}"
            );
        }
    }

    /// A generateContent response as the API reference shows one.
    fn text_response() -> Value {
        json!({
            "candidates": [{
                "content": {
                    "parts": [
                        { "text": "Let me think about the sky.", "thought": true },
                        { "text": "The sky is blue because " },
                        { "text": "of Rayleigh scattering." },
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
                "safetyRatings": [
                    { "category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE" },
                ],
            }],
            "usageMetadata": {
                "promptTokenCount": 8,
                "candidatesTokenCount": 12,
                "totalTokenCount": 45,
                "thoughtsTokenCount": 25,
                "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": 8 }],
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": "mAitaLmkHPPlz7IPvtfUqQ4",
        })
    }

    fn to_chat(body: &Value) -> (Value, Option<Usage>) {
        let (out, usage) = generate_to_chat(
            body.to_string().as_bytes(),
            "gemini-2.5-flash",
            1_700_000_000,
        )
        .expect("translates");
        (serde_json::from_slice(&out).unwrap(), usage)
    }

    fn usage(p: u64, c: u64, cached: u64, reasoning: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: cached,
            cache_write_tokens: 0,
            reasoning_tokens: reasoning,
            source: UsageSource::Provider,
        }
    }

    #[test]
    fn text_response_to_chat_completion() {
        let (out, u) = to_chat(&text_response());
        assert_eq!(
            out,
            json!({
                "id": "chatcmpl-mAitaLmkHPPlz7IPvtfUqQ4",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "gemini-2.5-flash",
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "The sky is blue because of Rayleigh scattering.",
                        "refusal": null,
                    },
                    "logprobs": null,
                    "finish_reason": "stop",
                }],
                "usage": {
                    "prompt_tokens": 8,
                    "completion_tokens": 37,
                    "total_tokens": 45,
                    "prompt_tokens_details": { "cached_tokens": 0 },
                    "completion_tokens_details": { "reasoning_tokens": 25 },
                },
            })
        );
        assert_eq!(u, Some(usage(8, 37, 0, 25)));
    }

    #[test]
    fn function_call_response_to_tool_calls() {
        let body = json!({
            "candidates": [{
                "content": {
                    "parts": [
                        { "functionCall": { "name": "get_weather", "args": { "city": "Boston, MA" } },
                          "thoughtSignature": "CiIBVKhc7oTWk2" },
                        { "functionCall": { "name": "now" } },
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
            }],
            "usageMetadata": {
                "promptTokenCount": 70,
                "candidatesTokenCount": 20,
                "totalTokenCount": 90,
                "cachedContentTokenCount": 32,
                "toolUsePromptTokenCount": 5,
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": "r1",
        });
        let (out, u) = to_chat(&body);
        let choice = &out["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([
                { "id": "call_0", "type": "function",
                  "function": { "name": "get_weather", "arguments": "{\"city\":\"Boston, MA\"}" },
                  "extra_content": { "google": { "thought_signature": "CiIBVKhc7oTWk2" } } },
                { "id": "call_1", "type": "function", "function": { "name": "now", "arguments": "{}" } },
            ])
        );
        assert_eq!(u, Some(usage(75, 20, 32, 0)));
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 32);
        assert_eq!(out["usage"]["total_tokens"], 95);
    }

    /// An assistant reply, answered as Gemini would, read back as a chat
    /// message and sent again: the next request carries the same calls.
    #[test]
    fn round_trip_tool_call_through_the_next_request() {
        let reply = json!({
            "candidates": [{
                "content": { "role": "model", "parts": [
                    { "text": "Let me check." },
                    { "functionCall": { "name": "lookup", "args": { "q": "bursar", "n": 3 } },
                      "thoughtSignature": "sig" },
                ] },
                "finishReason": "STOP",
            }],
        });
        let (completion, u) = to_chat(&reply);
        assert_eq!(u, None);
        assert!(completion.get("usage").is_none());
        let assistant = completion["choices"][0]["message"].clone();
        let next = to_generate(chat(json!([
            { "role": "user", "content": "find bursar" },
            assistant,
            { "role": "tool", "tool_call_id": "call_0", "content": "3 hits" },
        ])));
        assert_eq!(next["contents"][1], reply["candidates"][0]["content"]);
        assert_eq!(
            next["contents"][2]["parts"][0],
            json!({ "functionResponse": { "name": "lookup", "response": { "content": "3 hits" } } })
        );
    }

    #[test]
    fn finish_reasons_map() {
        for (reason, calls, want) in [
            ("STOP", false, "stop"),
            ("STOP", true, "tool_calls"),
            ("MAX_TOKENS", false, "length"),
            ("MAX_TOKENS", true, "length"),
            ("SAFETY", false, "content_filter"),
            ("RECITATION", false, "content_filter"),
            ("BLOCKLIST", false, "content_filter"),
            ("PROHIBITED_CONTENT", false, "content_filter"),
            ("SPII", false, "content_filter"),
            ("IMAGE_SAFETY", false, "content_filter"),
            ("OTHER", false, "stop"),
            ("MALFORMED_FUNCTION_CALL", false, "stop"),
            ("FINISH_REASON_UNSPECIFIED", true, "tool_calls"),
        ] {
            assert_eq!(finish_reason(reason, calls), want, "{reason}");
            let part = if calls {
                json!({ "functionCall": { "name": "f", "args": {} } })
            } else {
                json!({ "text": "x" })
            };
            let body = json!({ "candidates": [{
                "content": { "role": "model", "parts": [part] },
                "finishReason": reason,
            }] });
            assert_eq!(to_chat(&body).0["choices"][0]["finish_reason"], want);
        }
        // No finishReason: null, as in an unfinished candidate.
        let body = json!({ "candidates": [{ "content": { "parts": [{ "text": "x" }] } }] });
        assert!(to_chat(&body).0["choices"][0]["finish_reason"].is_null());
        // A safety stop with no content at all.
        let body = json!({ "candidates": [{ "finishReason": "SAFETY", "index": 0 }] });
        let (out, _) = to_chat(&body);
        assert_eq!(out["choices"][0]["message"]["content"], "");
        assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
    }

    #[test]
    fn several_candidates_are_several_choices() {
        let body = json!({
            "candidates": [
                { "content": { "role": "model", "parts": [{ "text": "one" }] }, "finishReason": "STOP", "index": 0 },
                { "content": { "role": "model", "parts": [{ "text": "two" }] }, "finishReason": "MAX_TOKENS", "index": 1 },
            ],
            "responseId": "r",
        });
        let (out, _) = to_chat(&body);
        let choices = out["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 2);
        assert_eq!(choices[1]["index"], 1);
        assert_eq!(choices[1]["message"]["content"], "two");
        assert_eq!(choices[1]["finish_reason"], "length");
    }

    #[test]
    fn a_blocked_prompt_is_a_content_filter_completion() {
        let body = json!({
            "promptFeedback": {
                "blockReason": "SAFETY",
                "safetyRatings": [{ "category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH" }],
            },
            "usageMetadata": { "promptTokenCount": 8, "totalTokenCount": 8 },
            "modelVersion": "gemini-2.0-flash",
            "responseId": "blocked1",
        });
        let (out, u) = to_chat(&body);
        assert_eq!(out["id"], "chatcmpl-blocked1");
        assert_eq!(
            out["choices"],
            json!([{
                "index": 0,
                "message": { "role": "assistant", "content": null, "refusal": null },
                "logprobs": null,
                "finish_reason": "content_filter",
            }])
        );
        assert_eq!(u, Some(usage(8, 0, 0, 0)));
    }

    #[test]
    fn malformed_responses_name_the_field() {
        let at = |body: Value| {
            generate_to_chat(body.to_string().as_bytes(), "m", 0)
                .unwrap_err()
                .field
        };
        assert_eq!(generate_to_chat(b"[]", "m", 0).unwrap_err().field, "body");
        assert_eq!(generate_to_chat(b"{", "m", 0).unwrap_err().field, "body");
        assert_eq!(at(json!({})), "candidates");
        assert_eq!(at(json!({ "candidates": [] })), "candidates");
        assert_eq!(at(json!({ "candidates": {} })), "candidates");
        assert_eq!(at(json!({ "candidates": [1] })), "candidates[0]");
        assert_eq!(
            at(json!({ "candidates": [{ "index": -1 }] })),
            "candidates[0].index"
        );
        assert_eq!(
            at(json!({ "candidates": [{ "content": { "parts": {} } }] })),
            "candidates[0].content.parts"
        );
        assert_eq!(
            at(json!({ "candidates": [{ "content": { "parts": [{ "text": 1 }] } }] })),
            "candidates[0].content.parts[0].text"
        );
        assert_eq!(
            at(json!({ "candidates": [{ "content": { "parts": [{ "functionCall": {} }] } }] })),
            "candidates[0].content.parts[0].functionCall.name"
        );
        assert_eq!(
            at(json!({ "candidates": [], "usageMetadata": { "promptTokenCount": -1 } })),
            "usageMetadata"
        );
        let e = generate_to_chat(
            br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#,
            "m",
            0,
        )
        .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("error", "Quota exceeded")
        );
        // No responseId: an id from the time.
        let (out, _) = to_chat(&json!({ "candidates": [{ "content": { "parts": [] } }] }));
        assert_eq!(out["id"], "chatcmpl-gemini-1700000000");
    }

    #[test]
    fn usage_metadata_is_read_strictly() {
        assert_eq!(
            usage_from_metadata(&json!({
                "promptTokenCount": 100, "cachedContentTokenCount": 60,
                "candidatesTokenCount": 10, "thoughtsTokenCount": 5,
                "toolUsePromptTokenCount": 7, "totalTokenCount": 122,
                "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": 100 }],
            })),
            Some(usage(107, 15, 60, 5))
        );
        assert_eq!(usage_from_metadata(&json!({})), Some(usage(0, 0, 0, 0)));
        assert_eq!(
            usage_from_metadata(&json!({ "promptTokenCount": null, "candidatesTokenCount": 3 })),
            Some(usage(0, 3, 0, 0))
        );
        assert_eq!(
            usage_from_metadata(
                &json!({ "promptTokenCount": u64::MAX, "toolUsePromptTokenCount": 1 })
            ),
            Some(usage(u64::MAX, 0, 0, 0))
        );
        for bad in [
            json!(null),
            json!([]),
            json!(5),
            json!({ "promptTokenCount": -1 }),
            json!({ "promptTokenCount": 1.5 }),
            json!({ "candidatesTokenCount": "3" }),
            json!({ "thoughtsTokenCount": true }),
            json!({ "cachedContentTokenCount": {} }),
            json!({ "toolUsePromptTokenCount": -2 }),
            json!({ "totalTokenCount": 1e3 }),
        ] {
            assert_eq!(usage_from_metadata(&bad), None, "{bad}");
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(
                br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[]}}"#
            )
            .as_deref(),
            Some("API key not valid. Please pass a valid API key.")
        );
        assert_eq!(
            error_message(br#"[{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}]"#)
                .as_deref(),
            Some("The model is overloaded.")
        );
        assert_eq!(
            error_message(br#"{"error":{"code":500,"status":"INTERNAL"}}"#).as_deref(),
            Some("INTERNAL")
        );
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"{}",
            br#"{"error":{}}"#,
            b"\xff",
            br#"{"candidates":[]}"#,
        ] {
            assert_eq!(error_message(body), None);
        }
        assert_eq!(openai_error_type("RESOURCE_EXHAUSTED"), "rate_limit_error");
        assert_eq!(
            openai_error_type("INVALID_ARGUMENT"),
            "invalid_request_error"
        );
        assert_eq!(openai_error_type("UNAVAILABLE"), "server_error");
    }
}
