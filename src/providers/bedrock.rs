//! The `bedrock` provider: pure translation between OpenAI chat completions
//! and AWS Bedrock Runtime's Converse API (`POST /model/{id}/converse`, and
//! `/converse-stream`, whose events [`super::bedrock_stream`] translates),
//! plus SigV4 signing of the request. No I/O.
//!
//! [`chat_to_converse`] turns an OpenAI chat request into a Converse request:
//! system and developer messages become the top-level `system` blocks;
//! assistant `tool_calls` become `toolUse` blocks and `tool` messages
//! `toolResult` blocks in a user turn; consecutive turns of the same role are
//! merged (Converse requires user and assistant to alternate, starting with
//! user); images are accepted as base64 `data:` URLs only (Bedrock does not
//! fetch URLs); the output cap, `temperature`, `top_p` and `stop` go into
//! `inferenceConfig`; `tools` and `tool_choice` into `toolConfig`. The model
//! is not in the body but in the path ([`converse_path`]), so the request's
//! `model` is not read, nor `stream` (the path decides). What Converse
//! cannot express (`n` > 1, logprobs, penalties, audio, JSON mode, ...) is a
//! [`TranslateError`] naming the field.
//!
//! `tool_choice: "none"`: Converse's `toolChoice` has no "none", so the tools
//! are withheld (no `toolConfig`). Bedrock refuses `toolUse`/`toolResult`
//! blocks in a request without `toolConfig`, so "none" (or no `tools`) with a
//! conversation that already has tool calls or results is refused here, with
//! the field named, rather than sent to fail upstream or, with the tools
//! kept, to let the model call one against the client's wish.
//!
//! [`converse_to_chat`] turns a Converse response into a `chat.completion`
//! and the normalized [`Usage`]; [`sign`] produces the SigV4 headers.
//!
//! Known, documented simplifications: a message's `name`, and `seed`,
//! `user`, `store`, `service_tier`, `stream_options` and OpenAI's `metadata`
//! are dropped (they change no output Converse can produce); reasoning
//! blocks in a response have no place in a `chat.completion` and are dropped
//! (their tokens are in `outputTokens`, so billed as completion tokens).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::chat::{
    self, refuses, Blocks, HttpImages, ImageUrl, Parts, Role, ToolChoice, Turns, Unsupported,
};
pub use super::TranslateError;
use crate::tokens::{Usage, UsageSource};

/// Image formats Converse accepts, by the data URL's media type.
const IMAGE_FORMATS: [(&str, &str); 5] = [
    ("image/png", "png"),
    ("image/jpeg", "jpeg"),
    ("image/jpg", "jpeg"),
    ("image/gif", "gif"),
    ("image/webp", "webp"),
];

/// Request fields with no Converse equivalent: present with a value other
/// than the harmless default, they are an error.
const UNSUPPORTED: &[Unsupported] = &[
    Unsupported::new(
        "n",
        refuses::not_one,
        "Bedrock returns one choice; only n = 1 is supported",
    ),
    Unsupported::new(
        "logprobs",
        refuses::not_false,
        "Bedrock does not return log probabilities",
    ),
    Unsupported::new(
        "top_logprobs",
        refuses::any,
        "Bedrock does not return log probabilities",
    ),
    Unsupported::new(
        "logit_bias",
        refuses::not_empty_object,
        "Bedrock has no logit bias",
    ),
    Unsupported::new(
        "presence_penalty",
        refuses::not_zero,
        "Converse has no presence or frequency penalty",
    ),
    Unsupported::new(
        "frequency_penalty",
        refuses::not_zero,
        "Converse has no presence or frequency penalty",
    ),
    Unsupported::new(
        "audio",
        refuses::any,
        "Bedrock Converse does not produce audio",
    ),
    Unsupported::new(
        "modalities",
        refuses::not_text_only,
        "Converse produces text only",
    ),
    Unsupported::new(
        "prediction",
        refuses::any,
        "Bedrock has no predicted outputs",
    ),
    Unsupported::new(
        "reasoning_effort",
        refuses::any,
        "not translated to a Bedrock model's reasoning configuration",
    ),
    Unsupported::new(
        "web_search_options",
        refuses::any,
        "Bedrock has no web search",
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
        refuses::not_true,
        "Converse cannot forbid parallel tool calls; only true is supported",
    ),
    Unsupported::new(
        "response_format",
        refuses::not_text_type,
        "not translated for Bedrock; only type text is supported",
    ),
];

/// Translates an OpenAI chat completions request into a Bedrock Converse
/// request body. `default_max_tokens` becomes `inferenceConfig.maxTokens`
/// when the request sets neither `max_completion_tokens` (which wins) nor
/// `max_tokens`.
pub fn chat_to_converse(body: &[u8], default_max_tokens: u64) -> Result<Vec<u8>, TranslateError> {
    let req = chat::parse_object(body)?;
    let req = &req;
    chat::reject_unsupported(req, UNSUPPORTED)?;

    let (system, turns, has_tool_blocks) = translate_messages(chat::messages(req)?)?;

    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(turns));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }

    let mut config = Map::new();
    config.insert(
        "maxTokens".into(),
        json!(chat::max_tokens(req, default_max_tokens)?),
    );
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(x) = chat::number(req, from)? {
            if !(0.0..=1.0).contains(&x) {
                return Err(TranslateError::new(from, "Bedrock Converse accepts 0 to 1"));
            }
            config.insert(to.into(), json!(x));
        }
    }
    if let Some(seqs) = chat::stop_sequences(req)? {
        config.insert("stopSequences".into(), seqs);
    }
    out.insert("inferenceConfig".into(), Value::Object(config));

    let tools = chat::tools(req, false, |t| {
        let schema = t
            .parameters()?
            .cloned()
            .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
        let mut spec = Map::new();
        spec.insert("name".into(), json!(t.name));
        if let Some(d) = t.function.get("description").and_then(Value::as_str) {
            if !d.is_empty() {
                spec.insert("description".into(), json!(d));
            }
        }
        spec.insert("inputSchema".into(), json!({ "json": schema }));
        Ok(json!({ "toolSpec": Value::Object(spec) }))
    })?;
    let choice = chat::tool_choice(req)?.unwrap_or(ToolChoice::Auto);
    match choice {
        ToolChoice::None if has_tool_blocks => {
            return Err(TranslateError::new(
                "tool_choice",
                "\"none\" cannot be sent to Bedrock with tool calls or results in the \
                 conversation: Converse has no \"none\" choice and needs the tools defined",
            ))
        }
        ToolChoice::None => {}
        _ if tools.is_empty() => {
            if has_tool_blocks {
                return Err(TranslateError::new(
                    "tools",
                    "Bedrock requires the tools to be defined when the conversation has \
                     tool calls or results",
                ));
            }
            if choice != ToolChoice::Auto {
                return Err(TranslateError::new(
                    "tool_choice",
                    "requires tools to choose from",
                ));
            }
        }
        choice => {
            let mut tc = Map::new();
            tc.insert("tools".into(), Value::Array(tools));
            match choice {
                // Auto is Converse's default: left implicit.
                ToolChoice::Auto | ToolChoice::None => {}
                ToolChoice::Required => {
                    tc.insert("toolChoice".into(), json!({ "any": {} }));
                }
                ToolChoice::Function(name) => {
                    tc.insert("toolChoice".into(), json!({ "tool": { "name": name } }));
                }
            }
            out.insert("toolConfig".into(), Value::Object(tc));
        }
    }

    chat::serialise(&Value::Object(out))
}

/// Content as Converse blocks: text (Bedrock refuses blank text blocks, so
/// empty texts are left out), and images; no audio, no files.
const BLOCKS: Blocks = Blocks {
    require_objects: false,
    text: |s| json!({ "text": s }),
    image: image_block,
    audio: |_, at| chat::refuse_part(at, "Bedrock Converse does not accept audio input"),
    file: |_, at| chat::refuse_part(at, "file parts are not translated for Bedrock"),
};

/// The system blocks, the alternating user/assistant turns, and whether any
/// turn has a `toolUse` or `toolResult` block.
fn translate_messages(
    messages: &[Value],
) -> Result<(Vec<Value>, Vec<Value>, bool), TranslateError> {
    let mut system: Vec<Value> = Vec::new();
    let mut turns = Turns::default();
    let mut has_tool_blocks = false;
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = chat::role(m, &at, false)?;
        let content = m.get("content").unwrap_or(&Value::Null);
        let content_at = format!("{at}.content");
        match role {
            Role::System => system.extend(BLOCKS.read(content, &content_at, Parts::Text)?),
            Role::User => turns.push("user", BLOCKS.read(content, &content_at, Parts::User)?),
            Role::Assistant => {
                let why = "not supported for Bedrock; use tool_calls and text";
                chat::refuse_members(m, &at, &[("function_call", why), ("audio", why)])?;
                let mut blocks = BLOCKS.read(content, &content_at, Parts::Assistant)?;
                if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
                    chat::tool_calls(calls, &format!("{at}.tool_calls"), false, |c| {
                        blocks.push(json!({ "toolUse": {
                            "toolUseId": c.id, "name": c.name, "input": c.arguments,
                        }}));
                        has_tool_blocks = true;
                        Ok(())
                    })?;
                }
                turns.push("assistant", blocks);
            }
            Role::Tool => {
                let id = chat::tool_call_id(m, &at)?;
                // An empty result is sent with no content blocks: Bedrock
                // refuses blank text blocks.
                let parts = BLOCKS.read(content, &content_at, Parts::Text)?;
                let block = json!({ "toolResult": { "toolUseId": id, "content": parts } });
                has_tool_blocks = true;
                turns.push("user", vec![block]);
            }
        }
    }
    turns
        .require_user_first("Bedrock requires the first non-system message to be from the user")?;
    let turns = turns.into_json("content", |b| b.get("toolResult").is_some());
    Ok((system, turns, has_tool_blocks))
}

/// An `image_url` part with a base64 `data:` URL; Bedrock cannot fetch
/// an http(s) URL, so one is an error naming the field.
fn image_block(p: &Value, at: &str) -> Result<Value, TranslateError> {
    let field = format!("{at}.image_url.url");
    let refuse = HttpImages::Refuse(
        "Bedrock does not fetch image URLs; send the image as a base64 data URL",
    );
    let ImageUrl::Data { mime, data } = chat::image_url(p, &field, refuse)? else {
        return Err(TranslateError::new(&field, "must be a base64 data URL"));
    };
    let format = IMAGE_FORMATS
        .iter()
        .find(|(m, _)| *m == mime)
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            TranslateError::new(
                &field,
                format!(
                    "image media type {mime:?} is not one Bedrock accepts \
                     (png, jpeg, gif, webp)"
                ),
            )
        })?;
    // Checked here so a bad image is a 400 naming the field, not an
    // upstream serialization error.
    if data.is_empty()
        || base64::engine::general_purpose::STANDARD
            .decode(data)
            .is_err()
    {
        return Err(TranslateError::new(
            &field,
            "the image data is not valid base64",
        ));
    }
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

/// The path of a Converse (or, when `stream`, ConverseStream) request for
/// `model_id`: `/model/{id}/converse[-stream]`, the id percent-encoded
/// (everything but RFC 3986's unreserved characters), so an ARN's `:` and
/// `/` travel as `%3A` and `%2F`. This is the path as sent on the wire;
/// [`sign`] encodes it once more for the canonical request, as SigV4
/// requires for every service but S3.
pub fn converse_path(model_id: &str, stream: bool) -> String {
    let mut p = String::with_capacity(model_id.len() * 3 + 24);
    p.push_str("/model/");
    for &b in model_id.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            p.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            p.push('%');
            p.push(HEX[(b >> 4) as usize] as char);
            p.push(HEX[(b & 15) as usize] as char);
        }
    }
    p.push_str(if stream {
        "/converse-stream"
    } else {
        "/converse"
    });
    p
}

/// What [`sign`] signs.
#[derive(Debug, Clone, Copy)]
pub struct SigningInput<'a> {
    pub method: &'a str,
    /// The `Host` header's value (`bedrock-runtime.us-east-1.amazonaws.com`).
    pub host: &'a str,
    /// As sent on the wire (already percent-encoded, as [`converse_path`]
    /// makes it), query included if any.
    pub path: &'a str,
    /// Headers to sign besides `host` and `x-amz-date`, e.g. `content-type`.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub region: &'a str,
    /// The signing name: `bedrock` for Bedrock Runtime.
    pub service: &'a str,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
    pub time: SystemTime,
}

/// The last second SigV4's date formatting can express (9999-12-31T23:59:59Z).
const SIGNING_TIME_MAX_SECS: u64 = 253_402_300_799;

/// Signs a request with AWS Signature Version 4 (in headers, with
/// `aws-sigv4`): the headers to add, `authorization` and `x-amz-date`, and
/// `x-amz-security-token` when there is a session token. The body's hash is
/// signed but not sent as `x-amz-content-sha256` (Bedrock does not need it).
/// The path is normalized and encoded once more for the canonical request.
pub fn sign(input: &SigningInput<'_>) -> Result<Vec<(String, String)>, TranslateError> {
    use aws_sigv4::http_request::{
        sign as sigv4_sign, SignableBody, SignableRequest, SigningSettings,
    };
    use aws_sigv4::sign::v4;

    let bad = |f: &str, m: &str| Err(TranslateError::new(f, m.to_string()));
    if input.host.is_empty()
        || !input
            .host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'))
    {
        return bad("host", "must be a host name, with an optional port");
    }
    if !input.path.starts_with('/') {
        return bad("path", "must start with /");
    }
    for (f, v) in [
        ("region", input.region),
        ("service", input.service),
        ("access_key_id", input.access_key_id),
        ("secret_access_key", input.secret_access_key),
    ] {
        if v.is_empty() {
            return bad(f, "required");
        }
    }
    match input.time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) if d <= Duration::from_secs(SIGNING_TIME_MAX_SECS) => {}
        _ => return bad("time", "must be between 1970 and 9999"),
    }
    let fail = |f: &'static str| {
        move |e: &dyn std::fmt::Display| TranslateError::new(f, format!("cannot sign: {e}"))
    };

    let creds = aws_credential_types::Credentials::new(
        input.access_key_id,
        input.secret_access_key,
        input.session_token.map(str::to_string),
        None,
        "bursar",
    );
    let identity = creds.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(input.region)
        .name(input.service)
        .time(input.time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| fail("signing")(&e))?
        .into();
    let uri = format!("https://{}{}", input.host, input.path);
    let request = SignableRequest::new(
        input.method,
        uri,
        input.headers.iter().copied(),
        SignableBody::Bytes(input.body),
    )
    .map_err(|e| fail("path")(&e))?;
    let (instructions, _signature) = sigv4_sign(request, &params)
        .map_err(|e| fail("headers")(&e))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect())
}

/// Reads a Converse `usage` object into the normalized [`Usage`]:
/// `prompt_tokens` = `inputTokens` + `cacheReadInputTokens` +
/// `cacheWriteInputTokens` (Bedrock counts the cached parts beside
/// `inputTokens`), `cached_tokens` = the reads, `cache_write_tokens` = the
/// writes, `completion_tokens` = `outputTokens` (reasoning included; Bedrock
/// does not count it apart). `None` when `inputTokens` or `outputTokens` is
/// missing or any count is not a non-negative integer.
pub fn usage_from_json(v: &Value) -> Option<Usage> {
    let obj = v.as_object()?;
    let count = |k: &str, required: bool| -> Option<u64> {
        match obj.get(k) {
            None | Some(Value::Null) if !required => Some(0),
            v => v?.as_u64(),
        }
    };
    let input = count("inputTokens", true)?;
    let output = count("outputTokens", true)?;
    let cache_read = count("cacheReadInputTokens", false)?;
    let cache_write = count("cacheWriteInputTokens", false)?;
    Some(Usage {
        prompt_tokens: input.saturating_add(cache_read).saturating_add(cache_write),
        completion_tokens: output,
        cached_tokens: cache_read,
        cache_write_tokens: cache_write,
        reasoning_tokens: 0,
        source: UsageSource::Provider,
    })
}

/// OpenAI's `usage` object for a normalized [`Usage`].
pub(crate) fn openai_usage(u: &Usage) -> Value {
    chat::usage_json(
        u.prompt_tokens,
        u.completion_tokens,
        u.total_tokens(),
        u.cached_tokens,
    )
}

/// OpenAI's `finish_reason` for a Converse `stopReason`.
pub(crate) fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        // end_turn, stop_sequence, and reasons added later.
        _ => "stop",
    }
}

/// A `chatcmpl-` id from a hash of `data`: deterministic, as Converse
/// responses carry no id of their own.
pub(crate) fn completion_id(data: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for d in data {
        h.update((d.len() as u64).to_be_bytes());
        h.update(d);
    }
    let digest = h.finalize();
    format!("chatcmpl-{}", hex::encode(&digest[..12]))
}

/// Translates a Converse response into an OpenAI `chat.completion` for
/// `model` (Converse responses do not name it), `created` its Unix time in
/// seconds, and returns the usage (`None` when the response has none). The
/// id is a hash of the body.
pub fn converse_to_chat(
    body: &[u8],
    model: &str,
    created: i64,
) -> Result<(Vec<u8>, Option<Usage>), TranslateError> {
    let resp = Value::Object(chat::parse_object(body)?);
    let blocks = resp
        .get("output")
        .and_then(|o| o.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("output.message.content", "required, an array"))?;

    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let at = |f: &str| format!("output.message.content[{i}].{f}");
        if let Some(t) = b.get("text") {
            text.push_str(
                t.as_str()
                    .ok_or_else(|| TranslateError::new(at("text"), "must be a string"))?,
            );
        } else if let Some(u) = b.get("toolUse") {
            let id = u.get("toolUseId").and_then(Value::as_str).ok_or_else(|| {
                TranslateError::new(at("toolUse.toolUseId"), "required, a string")
            })?;
            let name = u
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| TranslateError::new(at("toolUse.name"), "required, a string"))?;
            let input = u.get("input").cloned().unwrap_or_else(|| json!({}));
            tool_calls.push(chat::tool_call_json(id, name, &input));
        }
        // reasoningContent has no place in a chat.completion message;
        // citations, guard content and other blocks are not requested.
    }

    let finish = match resp.get("stopReason").and_then(Value::as_str) {
        Some(s) => json!(finish_reason(s)),
        None => Value::Null,
    };
    let message = chat::assistant_message(text, tool_calls);

    let usage = match resp.get("usage") {
        None | Some(Value::Null) => None,
        Some(u) => Some(usage_from_json(u).ok_or_else(|| {
            TranslateError::new(
                "usage",
                "must have non-negative integer inputTokens and outputTokens",
            )
        })?),
    };
    let mut out = chat::completion(
        &completion_id(&[body]),
        created,
        model,
        vec![chat::choice(0, message, finish)],
    );
    if let Some(u) = &usage {
        out["usage"] = openai_usage(u);
    }
    Ok((chat::serialise(&out)?, usage))
}

/// The message of a Bedrock error body (`{"message": "..."}`; its type is
/// in the `x-amzn-errortype` response header), `None` when the body is not
/// one.
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    ["message", "Message"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn to_converse(req: Value) -> Value {
        let out = chat_to_converse(req.to_string().as_bytes(), 1024).expect("translates");
        serde_json::from_slice(&out).unwrap()
    }

    fn to_converse_err(req: Value) -> TranslateError {
        chat_to_converse(req.to_string().as_bytes(), 1024).expect_err("must be refused")
    }

    fn chat(msgs: Value) -> Value {
        json!({ "model": "anthropic.claude-3-5-haiku-20241022-v1:0", "messages": msgs })
    }

    #[test]
    fn minimal_request_and_default_max_tokens() {
        let out = to_converse(chat(json!([{ "role": "user", "content": "Hello" }])));
        assert_eq!(
            out,
            json!({
                "messages": [{ "role": "user", "content": [{ "text": "Hello" }] }],
                "inferenceConfig": { "maxTokens": 1024 },
            })
        );
    }

    #[test]
    fn system_developer_and_inference_config() {
        let mut req = chat(json!([
            { "role": "system", "content": "Be brief." },
            { "role": "developer", "content": [{ "type": "text", "text": "Use SI units." }] },
            { "role": "user", "content": "How far is the moon?" },
        ]));
        req["max_tokens"] = json!(50);
        req["max_completion_tokens"] = json!(200);
        req["temperature"] = json!(0.2);
        req["top_p"] = json!(0.9);
        req["stop"] = json!(["END", "STOP"]);
        req["stream"] = json!(true);
        req["seed"] = json!(7);
        req["user"] = json!("u-1");
        req["n"] = json!(1);
        req["logprobs"] = json!(false);
        req["presence_penalty"] = json!(0);
        req["response_format"] = json!({ "type": "text" });
        let out = to_converse(req);
        assert_eq!(
            out,
            json!({
                "messages": [{ "role": "user", "content": [{ "text": "How far is the moon?" }] }],
                "system": [{ "text": "Be brief." }, { "text": "Use SI units." }],
                "inferenceConfig": {
                    "maxTokens": 200, "temperature": 0.2, "topP": 0.9,
                    "stopSequences": ["END", "STOP"],
                },
            })
        );
        let mut req = chat(json!([{ "role": "user", "content": "x" }]));
        req["max_tokens"] = json!(50);
        req["stop"] = json!("END");
        let out = to_converse(req);
        assert_eq!(
            out["inferenceConfig"],
            json!({ "maxTokens": 50, "stopSequences": ["END"] })
        );
    }

    #[test]
    fn unsupported_fields_name_the_field() {
        for (field, value) in [
            ("n", json!(2)),
            ("logprobs", json!(true)),
            ("top_logprobs", json!(3)),
            ("logit_bias", json!({ "50256": -100 })),
            ("presence_penalty", json!(0.5)),
            ("frequency_penalty", json!(1)),
            ("audio", json!({ "voice": "alloy", "format": "mp3" })),
            ("modalities", json!(["text", "audio"])),
            ("prediction", json!({ "type": "content", "content": "x" })),
            ("reasoning_effort", json!("high")),
            ("web_search_options", json!({})),
            ("functions", json!([])),
            ("function_call", json!("auto")),
            ("parallel_tool_calls", json!(false)),
            ("response_format", json!({ "type": "json_object" })),
            (
                "response_format",
                json!({ "type": "json_schema", "json_schema": {} }),
            ),
            ("temperature", json!(1.5)),
            ("temperature", json!("hot")),
            ("top_p", json!(-0.1)),
            ("max_tokens", json!(0)),
            ("max_completion_tokens", json!("many")),
            ("stop", json!([1, 2])),
            ("tools", json!({})),
            ("tool_choice", json!("sometimes")),
        ] {
            let mut req = chat(json!([{ "role": "user", "content": "hi" }]));
            req[field] = value.clone();
            let e = to_converse_err(req);
            assert_eq!(e.field, field, "{field} = {value}: {e}");
        }
        // Null is as good as absent.
        let mut req = chat(json!([{ "role": "user", "content": "hi" }]));
        req["n"] = Value::Null;
        req["logit_bias"] = json!({});
        req["parallel_tool_calls"] = json!(true);
        to_converse(req);
    }

    #[test]
    fn data_url_images_become_image_blocks_and_http_urls_are_refused() {
        let out = to_converse(chat(json!([{ "role": "user", "content": [
            { "type": "text", "text": "What is this?" },
            { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=" } },
            { "type": "image_url", "image_url": { "url": "data:image/JPEG;base64,/9j/4AAQ", "detail": "high" } },
            { "type": "image_url", "image_url": "data:image/webp;base64,UklGRg==" },
        ] }])));
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                { "text": "What is this?" },
                { "image": { "format": "png", "source": { "bytes": "iVBORw0KGgo=" } } },
                { "image": { "format": "jpeg", "source": { "bytes": "/9j/4AAQ" } } },
                { "image": { "format": "webp", "source": { "bytes": "UklGRg==" } } },
            ])
        );
        for (url, why) in [
            ("https://example.com/cat.png", "does not fetch"),
            ("http://example.com/cat.png", "does not fetch"),
            ("ftp://example.com/cat.png", "base64 data URL"),
            ("data:image/bmp;base64,Qk0=", "bmp"),
            ("data:image/png,raw", "only base64"),
            ("data:image/png;base64", "comma"),
            ("data:image/png;base64,not base64!", "not valid base64"),
            ("data:image/png;base64,", "not valid base64"),
        ] {
            let e = to_converse_err(chat(json!([{ "role": "user", "content": [
                { "type": "text", "text": "x" },
                { "type": "image_url", "image_url": { "url": url } },
            ] }])));
            assert_eq!(e.field, "messages[0].content[1].image_url.url", "{url}");
            assert!(e.message.contains(why), "{url}: {e}");
        }
        for (part, field) in [
            (
                json!({ "type": "input_audio", "input_audio": {} }),
                "messages[0].content[0].type",
            ),
            (
                json!({ "type": "file", "file": {} }),
                "messages[0].content[0].type",
            ),
            (json!({ "type": "video" }), "messages[0].content[0].type"),
            (json!({ "type": "text" }), "messages[0].content[0].text"),
            (
                json!({ "type": "image_url" }),
                "messages[0].content[0].image_url.url",
            ),
        ] {
            let e = to_converse_err(chat(json!([{ "role": "user", "content": [part] }])));
            assert_eq!(e.field, field);
        }
        // Images only in user turns.
        let e = to_converse_err(chat(json!([
            { "role": "system", "content": [{ "type": "image_url", "image_url": { "url": "data:image/png;base64,AA==" } }] },
            { "role": "user", "content": "x" },
        ])));
        assert_eq!(e.field, "messages[0].content[0].type");
    }

    fn weather_tool() -> Value {
        json!({ "type": "function", "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": { "type": "object", "properties": { "city": { "type": "string" } } },
        }})
    }

    #[test]
    fn tool_calls_results_and_tool_config() {
        let mut req = chat(json!([
            { "role": "user", "content": "Weather in Paris and Rome?" },
            { "role": "assistant", "content": "Checking.", "tool_calls": [
                { "id": "t1", "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\":\"Paris\"}" } },
                { "id": "t2", "type": "function", "function": { "name": "get_weather", "arguments": "" } },
            ] },
            { "role": "tool", "tool_call_id": "t1", "content": "18C" },
            { "role": "user", "content": "and?" },
            { "role": "tool", "tool_call_id": "t2", "content": [{ "type": "text", "text": "21C" }] },
        ]));
        req["tools"] =
            json!([weather_tool(), { "type": "function", "function": { "name": "noop" } }]);
        let out = to_converse(req.clone());
        assert_eq!(
            out["messages"],
            json!([
                { "role": "user", "content": [{ "text": "Weather in Paris and Rome?" }] },
                { "role": "assistant", "content": [
                    { "text": "Checking." },
                    { "toolUse": { "toolUseId": "t1", "name": "get_weather", "input": { "city": "Paris" } } },
                    { "toolUse": { "toolUseId": "t2", "name": "get_weather", "input": {} } },
                ] },
                // Results first, then the user's text.
                { "role": "user", "content": [
                    { "toolResult": { "toolUseId": "t1", "content": [{ "text": "18C" }] } },
                    { "toolResult": { "toolUseId": "t2", "content": [{ "text": "21C" }] } },
                    { "text": "and?" },
                ] },
            ])
        );
        assert_eq!(
            out["toolConfig"],
            json!({ "tools": [
                { "toolSpec": {
                    "name": "get_weather",
                    "description": "Current weather",
                    "inputSchema": { "json": { "type": "object", "properties": { "city": { "type": "string" } } } },
                } },
                { "toolSpec": {
                    "name": "noop",
                    "inputSchema": { "json": { "type": "object", "properties": {} } },
                } },
            ] })
        );
        for (choice, want) in [
            (json!("auto"), None),
            (json!("required"), Some(json!({ "any": {} }))),
            (
                json!({ "type": "function", "function": { "name": "get_weather" } }),
                Some(json!({ "tool": { "name": "get_weather" } })),
            ),
        ] {
            let mut r = req.clone();
            r["tool_choice"] = choice;
            let out = to_converse(r);
            assert_eq!(out["toolConfig"].get("toolChoice").cloned(), want);
        }
    }

    #[test]
    fn tool_choice_none_withholds_the_tools() {
        let mut req = chat(json!([{ "role": "user", "content": "hi" }]));
        req["tools"] = json!([weather_tool()]);
        req["tool_choice"] = json!("none");
        let out = to_converse(req);
        assert!(out.get("toolConfig").is_none(), "{out}");
        // With tool calls in the conversation Bedrock needs toolConfig, and
        // "none" cannot be expressed: refused.
        let history = json!([
            { "role": "user", "content": "hi" },
            { "role": "assistant", "tool_calls": [
                { "id": "t1", "type": "function", "function": { "name": "get_weather", "arguments": "{}" } },
            ] },
            { "role": "tool", "tool_call_id": "t1", "content": "sunny" },
        ]);
        let mut req = chat(history.clone());
        req["tools"] = json!([weather_tool()]);
        req["tool_choice"] = json!("none");
        assert_eq!(to_converse_err(req).field, "tool_choice");
        // No tools at all with a tool history: refused naming tools.
        assert_eq!(to_converse_err(chat(history.clone())).field, "tools");
        // A choice that needs tools, without tools.
        for c in [
            json!("required"),
            json!({ "type": "function", "function": { "name": "f" } }),
        ] {
            let mut req = chat(json!([{ "role": "user", "content": "hi" }]));
            req["tool_choice"] = c;
            assert_eq!(to_converse_err(req).field, "tool_choice");
        }
        // auto without tools is harmless.
        let mut req = chat(json!([{ "role": "user", "content": "hi" }]));
        req["tool_choice"] = json!("auto");
        assert!(to_converse(req).get("toolConfig").is_none());
    }

    #[test]
    fn invalid_tool_calls_and_tools_name_the_field() {
        for (args, why) in [("{not json", "not valid JSON"), ("[1,2]", "JSON object")] {
            let e = to_converse_err(chat(json!([
                { "role": "user", "content": "go" },
                { "role": "assistant", "tool_calls": [
                    { "id": "t1", "type": "function", "function": { "name": "f", "arguments": args } },
                ] },
            ])));
            assert_eq!(e.field, "messages[1].tool_calls[0].function.arguments");
            assert!(e.message.contains(why), "{e}");
        }
        for (call, field) in [
            (
                json!({ "type": "function", "function": { "name": "f" } }),
                "messages[1].tool_calls[0].id",
            ),
            (
                json!({ "id": "t", "function": {} }),
                "messages[1].tool_calls[0].function.name",
            ),
            (
                json!({ "id": "t", "type": "custom" }),
                "messages[1].tool_calls[0].type",
            ),
            (
                json!({ "id": "t", "function": { "name": "f", "arguments": 5 } }),
                "messages[1].tool_calls[0].function.arguments",
            ),
        ] {
            let e = to_converse_err(chat(json!([
                { "role": "user", "content": "go" },
                { "role": "assistant", "tool_calls": [call] },
            ])));
            assert_eq!(e.field, field);
        }
        let e = to_converse_err(chat(json!([
            { "role": "user", "content": "go" },
            { "role": "tool", "content": "x" },
        ])));
        assert_eq!(e.field, "messages[1].tool_call_id");
        for (tool, field) in [
            (json!({ "type": "web_search" }), "tools[0].type"),
            (json!({ "type": "function" }), "tools[0].function"),
            (
                json!({ "type": "function", "function": {} }),
                "tools[0].function.name",
            ),
            (
                json!({ "type": "function", "function": { "name": "f", "parameters": "x" } }),
                "tools[0].function.parameters",
            ),
        ] {
            let mut req = chat(json!([{ "role": "user", "content": "hi" }]));
            req["tools"] = json!([tool]);
            assert_eq!(to_converse_err(req).field, field);
        }
    }

    #[test]
    fn consecutive_same_role_messages_merge_and_first_turn_is_user() {
        let out = to_converse(chat(json!([
            { "role": "user", "content": "one" },
            { "role": "user", "content": [{ "type": "text", "text": "two" }] },
            { "role": "assistant", "content": "three" },
            { "role": "assistant", "content": [{ "type": "refusal", "refusal": "four" }] },
            { "role": "assistant", "content": "" },
            { "role": "user", "content": "five" },
        ])));
        assert_eq!(
            out["messages"],
            json!([
                { "role": "user", "content": [{ "text": "one" }, { "text": "two" }] },
                { "role": "assistant", "content": [{ "text": "three" }, { "text": "four" }] },
                { "role": "user", "content": [{ "text": "five" }] },
            ])
        );
        let e = to_converse_err(chat(json!([
            { "role": "system", "content": "s" },
            { "role": "assistant", "content": "hello" },
            { "role": "user", "content": "hi" },
        ])));
        assert_eq!(e.field, "messages");
        assert_eq!(to_converse_err(chat(json!([]))).field, "messages");
        assert_eq!(
            to_converse_err(chat(json!([{ "role": "user", "content": "" }]))).field,
            "messages"
        );
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
            (
                json!({ "role": "user", "content": 5 }),
                "messages[0].content",
            ),
        ] {
            assert_eq!(to_converse_err(chat(json!([m]))).field, field);
        }
        assert_eq!(to_converse_err(json!({ "model": "m" })).field, "messages");
        assert_eq!(chat_to_converse(b"{nope", 1).unwrap_err().field, "body");
        assert_eq!(chat_to_converse(b"[]", 1).unwrap_err().field, "body");
    }

    #[test]
    fn converse_path_encodes_the_model_id() {
        assert_eq!(
            converse_path("anthropic.claude-3-5-sonnet-20241022-v2:0", false),
            "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse"
        );
        assert_eq!(
            converse_path(
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-2-1b-instruct-v1:0",
                true
            ),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile\
             %2Fus.meta.llama3-2-1b-instruct-v1%3A0/converse-stream"
        );
        assert_eq!(converse_path("a b%~_", false), "/model/a%20b%25~_/converse");
        assert_eq!(converse_path("é", false), "/model/%C3%A9/converse");
    }

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    /// 2015-08-30T12:36:00Z, the AWS SigV4 test suite's time.
    fn suite_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn suite_input<'a>(method: &'a str, path: &'a str) -> SigningInput<'a> {
        SigningInput {
            method,
            host: "example.amazonaws.com",
            path,
            headers: &[],
            body: b"",
            region: "us-east-1",
            service: "service",
            access_key_id: AKID,
            secret_access_key: SECRET,
            session_token: None,
            time: suite_time(),
        }
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn suite_auth(signed: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders={signed}, Signature={signature}"
        )
    }

    /// Vectors of the AWS SigV4 test suite (get-vanilla, post-vanilla,
    /// get-vanilla-with-session-token, get-vanilla-query-order-encoded).
    #[test]
    fn sign_matches_the_aws_test_suite() {
        let h = sign(&suite_input("GET", "/")).unwrap();
        assert_eq!(header(&h, "x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            header(&h, "authorization").unwrap(),
            suite_auth(
                "host;x-amz-date",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );
        assert_eq!(header(&h, "x-amz-security-token"), None);
        assert_eq!(h.len(), 2, "{h:?}");

        let h = sign(&suite_input("POST", "/")).unwrap();
        assert_eq!(
            header(&h, "authorization").unwrap(),
            suite_auth(
                "host;x-amz-date",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
            )
        );

        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let h = sign(&SigningInput {
            session_token: Some(token),
            ..suite_input("GET", "/")
        })
        .unwrap();
        assert_eq!(header(&h, "x-amz-security-token"), Some(token));
        assert_eq!(
            header(&h, "authorization").unwrap(),
            suite_auth(
                "host;x-amz-date;x-amz-security-token",
                "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
            )
        );

        let h = sign(&suite_input(
            "GET",
            "/?Param-3=Value3&Param=Value2&%E1%88%B4=Value1",
        ))
        .unwrap();
        assert_eq!(
            header(&h, "authorization").unwrap(),
            suite_auth(
                "host;x-amz-date",
                "371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac"
            )
        );
    }

    /// SigV4 written out from the spec, for the canonical request a test
    /// states by hand (checked against the suite's get-vanilla first).
    fn reference_signature(canonical_request: &str, date: &str, scope: &str) -> String {
        use hmac::{Hmac, Mac};
        fn mac(key: &[u8], data: &str) -> Vec<u8> {
            let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
            m.update(data.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let mut key = format!("AWS4{SECRET}").into_bytes();
        for part in scope.split('/') {
            key = mac(&key, part);
        }
        hex::encode(mac(&key, &to_sign))
    }

    #[test]
    fn model_arn_path_is_encoded_twice_in_the_canonical_request() {
        let empty = hex::encode(Sha256::digest(b""));
        assert_eq!(
            reference_signature(
                &format!(
                    "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
                     host;x-amz-date\n{empty}"
                ),
                "20150830T123600Z",
                "20150830/us-east-1/service/aws4_request",
            ),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );

        let model = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-2-1b-instruct-v1:0";
        let path = converse_path(model, false);
        let body = br#"{"messages":[]}"#;
        let host = "bedrock-runtime.us-east-1.amazonaws.com";
        let h = sign(&SigningInput {
            method: "POST",
            host,
            path: &path,
            headers: &[("content-type", "application/json")],
            body,
            region: "us-east-1",
            service: "bedrock",
            ..suite_input("POST", "/")
        })
        .unwrap();
        let canonical = format!(
            "POST\n\
             /model/arn%253Aaws%253Abedrock%253Aus-east-1%253A123456789012%253Ainference-profile\
             %252Fus.meta.llama3-2-1b-instruct-v1%253A0/converse\n\
             \n\
             content-type:application/json\n\
             host:{host}\n\
             x-amz-date:20150830T123600Z\n\
             \n\
             content-type;host;x-amz-date\n\
             {}",
            hex::encode(Sha256::digest(body))
        );
        let want = reference_signature(
            &canonical,
            "20150830T123600Z",
            "20150830/us-east-1/bedrock/aws4_request",
        );
        assert_eq!(
            header(&h, "authorization").unwrap(),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, Signature={want}"
            )
        );
        // Encoded once only, the signature differs: the test can fail.
        let single = canonical.replace("%25", "%");
        assert_ne!(
            reference_signature(
                &single,
                "20150830T123600Z",
                "20150830/us-east-1/bedrock/aws4_request"
            ),
            want
        );
    }

    #[test]
    fn bad_signing_input_is_an_error_not_a_panic() {
        for (input, field) in [
            (
                SigningInput {
                    host: "",
                    ..suite_input("GET", "/")
                },
                "host",
            ),
            (
                SigningInput {
                    host: "a/b",
                    ..suite_input("GET", "/")
                },
                "host",
            ),
            (suite_input("GET", "model"), "path"),
            (
                SigningInput {
                    region: "",
                    ..suite_input("GET", "/")
                },
                "region",
            ),
            (
                SigningInput {
                    access_key_id: "",
                    ..suite_input("GET", "/")
                },
                "access_key_id",
            ),
            (
                SigningInput {
                    time: SystemTime::UNIX_EPOCH - Duration::from_secs(1),
                    ..suite_input("GET", "/")
                },
                "time",
            ),
            (
                SigningInput {
                    time: SystemTime::UNIX_EPOCH + Duration::from_secs(SIGNING_TIME_MAX_SECS + 1),
                    ..suite_input("GET", "/")
                },
                "time",
            ),
        ] {
            assert_eq!(sign(&input).unwrap_err().field, field);
        }
        let e = sign(&SigningInput {
            headers: &[("content-type", "bad\nvalue")],
            ..suite_input("GET", "/")
        });
        assert!(e.is_err());
        let e = sign(&suite_input("GET", "/a b"));
        assert!(e.is_err());
    }

    fn response(content: Value, stop: &str, usage: Value) -> Vec<u8> {
        json!({
            "output": { "message": { "role": "assistant", "content": content } },
            "stopReason": stop,
            "usage": usage,
            "metrics": { "latencyMs": 812 },
        })
        .to_string()
        .into_bytes()
    }

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn text_response_to_chat_completion() {
        let body = response(
            json!([
                { "reasoningContent": { "reasoningText": { "text": "hmm", "signature": "s" } } },
                { "text": "Hello" },
                { "text": ", world" },
            ]),
            "end_turn",
            json!({ "inputTokens": 12, "outputTokens": 6, "totalTokens": 18 }),
        );
        let (out, usage) = converse_to_chat(&body, "claude-haiku", 1_700_000_000).unwrap();
        let out = parse(&out);
        let id = out["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("chatcmpl-") && id.len() == 9 + 24, "{id}");
        assert_eq!(
            out,
            json!({
                "id": id,
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "claude-haiku",
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
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 6,
                source: UsageSource::Provider,
                ..Usage::default()
            })
        );
        // Deterministic: the same body, the same id; another body, another.
        let again = parse(&converse_to_chat(&body, "claude-haiku", 1).unwrap().0);
        assert_eq!(again["id"], id);
        let other = response(json!([{ "text": "Hi" }]), "end_turn", json!(null));
        assert_ne!(
            parse(&converse_to_chat(&other, "m", 1).unwrap().0)["id"],
            id
        );
    }

    #[test]
    fn tool_use_response_and_cache_usage() {
        let body = response(
            json!([
                { "text": "I'll look that up." },
                { "toolUse": { "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather",
                               "input": { "city": "London", "units": "celsius" } } },
                { "toolUse": { "toolUseId": "tooluse_2", "name": "noop" } },
            ]),
            "tool_use",
            json!({
                "inputTokens": 150, "outputTokens": 87, "totalTokens": 387,
                "cacheReadInputTokens": 120, "cacheWriteInputTokens": 30,
            }),
        );
        let (out, usage) = converse_to_chat(&body, "m", 1).unwrap();
        let out = parse(&out);
        let choice = &out["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "I'll look that up.");
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls[0]["id"], "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({ "city": "London", "units": "celsius" }));
        assert_eq!(calls[1]["function"]["arguments"], "{}");
        assert_eq!(
            out["usage"],
            json!({
                "prompt_tokens": 300,
                "completion_tokens": 87,
                "total_tokens": 387,
                "prompt_tokens_details": { "cached_tokens": 120 },
            })
        );
        let u = usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.completion_tokens
            ),
            (300, 120, 30, 87)
        );
        assert_eq!(u.uncached_prompt_tokens(), 150);
        assert_eq!(u.source, UsageSource::Provider);
    }

    #[test]
    fn stop_reasons_map_and_tool_only_content_is_null() {
        let body = response(
            json!([{ "toolUse": { "toolUseId": "t", "name": "f", "input": {} } }]),
            "tool_use",
            json!({ "inputTokens": 1, "outputTokens": 1 }),
        );
        let out = parse(&converse_to_chat(&body, "m", 0).unwrap().0);
        assert!(out["choices"][0]["message"]["content"].is_null());
        for (stop, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
            ("something_new", "stop"),
        ] {
            let body = response(
                json!([{ "text": "x" }]),
                stop,
                json!({ "inputTokens": 1, "outputTokens": 1 }),
            );
            let out = parse(&converse_to_chat(&body, "m", 0).unwrap().0);
            assert_eq!(out["choices"][0]["finish_reason"], want, "{stop}");
        }
    }

    #[test]
    fn malformed_responses_name_the_field() {
        assert_eq!(converse_to_chat(b"[]", "m", 0).unwrap_err().field, "body");
        assert_eq!(converse_to_chat(b"{", "m", 0).unwrap_err().field, "body");
        assert_eq!(
            converse_to_chat(b"{\"output\":{}}", "m", 0)
                .unwrap_err()
                .field,
            "output.message.content"
        );
        let bad_usage = response(
            json!([]),
            "end_turn",
            json!({ "inputTokens": -1, "outputTokens": 1 }),
        );
        assert_eq!(
            converse_to_chat(&bad_usage, "m", 0).unwrap_err().field,
            "usage"
        );
        let bad_text = response(json!([{ "text": 5 }]), "end_turn", json!(null));
        assert_eq!(
            converse_to_chat(&bad_text, "m", 0).unwrap_err().field,
            "output.message.content[0].text"
        );
        let bad_tool = response(
            json!([{ "toolUse": { "name": "f" } }]),
            "tool_use",
            json!(null),
        );
        assert_eq!(
            converse_to_chat(&bad_tool, "m", 0).unwrap_err().field,
            "output.message.content[0].toolUse.toolUseId"
        );
        let (out, usage) =
            converse_to_chat(&response(json!([]), "end_turn", json!(null)), "m", 0).unwrap();
        assert!(usage.is_none());
        assert!(parse(&out).get("usage").is_none());
    }

    #[test]
    fn usage_from_json_reads_and_refuses() {
        assert_eq!(
            usage_from_json(&json!({ "inputTokens": 3, "outputTokens": 4 }))
                .unwrap()
                .total_tokens(),
            7
        );
        for bad in [
            json!({ "outputTokens": 4 }),
            json!({ "inputTokens": 3 }),
            json!({ "inputTokens": 3, "outputTokens": 4.5 }),
            json!({ "inputTokens": 3, "outputTokens": 4, "cacheReadInputTokens": "1" }),
            json!([]),
            json!(null),
        ] {
            assert_eq!(usage_from_json(&bad), None, "{bad}");
        }
        let u = usage_from_json(&json!({
            "inputTokens": 3, "outputTokens": 4, "cacheReadInputTokens": null, "cacheWriteInputTokens": 2,
        }))
        .unwrap();
        assert_eq!(
            (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens),
            (5, 0, 2)
        );
    }

    #[test]
    fn error_message_reads_bedrock_errors() {
        assert_eq!(
            error_message(
                br#"{"message":"The security token included in the request is invalid."}"#
            )
            .as_deref(),
            Some("The security token included in the request is invalid.")
        );
        assert_eq!(
            error_message(br#"{"Message":"Forbidden"}"#).as_deref(),
            Some("Forbidden")
        );
        assert_eq!(error_message(b"<html>"), None);
        assert_eq!(error_message(br#"{"message":5}"#), None);
    }

    /// An assistant reply, answered as Bedrock would, read back as a chat
    /// message and sent again: the next request carries the same toolUse.
    #[test]
    fn round_trip_tool_call_through_the_next_request() {
        let reply = response(
            json!([
                { "text": "Let me check." },
                { "toolUse": { "toolUseId": "tooluse_9", "name": "lookup", "input": { "q": "bursar", "n": 3 } } },
            ]),
            "tool_use",
            json!({ "inputTokens": 5, "outputTokens": 7 }),
        );
        let completion = parse(&converse_to_chat(&reply, "m", 0).unwrap().0);
        let assistant = completion["choices"][0]["message"].clone();
        let mut req = chat(json!([
            { "role": "user", "content": "find bursar" },
            assistant,
            { "role": "tool", "tool_call_id": "tooluse_9", "content": "3 hits" },
        ]));
        req["tools"] = json!([{ "type": "function", "function": { "name": "lookup" } }]);
        let next = to_converse(req);
        let original = parse(&reply);
        assert_eq!(
            next["messages"][1]["content"],
            original["output"]["message"]["content"]
        );
        assert_eq!(
            next["messages"][2]["content"][0]["toolResult"]["toolUseId"],
            "tooluse_9"
        );
    }

    proptest! {
        /// Random bytes, and random JSON shapes, never panic.
        #[test]
        fn arbitrary_input_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = chat_to_converse(&bytes, 16);
            let _ = converse_to_chat(&bytes, "m", 0);
            let _ = error_message(&bytes);
        }
    }
}
