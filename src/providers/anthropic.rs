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

use super::chat::{
    self, refuses, Blocks, HttpImages, ImageUrl, Parts, Role, ToolChoice, Turns, Unsupported,
};
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

    /// OpenAI's `usage` object for these counts.
    pub(crate) fn openai_json(&self) -> Value {
        chat::usage_json(
            self.prompt_tokens(),
            self.output,
            self.total_tokens(),
            self.cache_read,
        )
    }
}

/// Image media types the Messages API accepts in a base64 source.
const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// Request fields with no Messages equivalent: present with a value other
/// than the harmless default, they are an error.
const UNSUPPORTED: &[Unsupported] = &[
    Unsupported::new(
        "n",
        refuses::not_one,
        "Anthropic returns one choice; only n = 1 is supported",
    ),
    Unsupported::new(
        "logprobs",
        refuses::not_false,
        "Anthropic does not return log probabilities",
    ),
    Unsupported::new(
        "top_logprobs",
        refuses::any,
        "Anthropic does not return log probabilities",
    ),
    Unsupported::new(
        "logit_bias",
        refuses::not_empty_object,
        "Anthropic has no logit bias",
    ),
    Unsupported::new(
        "presence_penalty",
        refuses::not_zero,
        "Anthropic has no presence or frequency penalty",
    ),
    Unsupported::new(
        "frequency_penalty",
        refuses::not_zero,
        "Anthropic has no presence or frequency penalty",
    ),
    Unsupported::new("audio", refuses::any, "Anthropic does not produce audio"),
    Unsupported::new(
        "modalities",
        refuses::not_text_only,
        "Anthropic produces text only",
    ),
    Unsupported::new(
        "prediction",
        refuses::any,
        "Anthropic has no predicted outputs",
    ),
    Unsupported::new(
        "reasoning_effort",
        refuses::any,
        "not translated to Anthropic extended thinking",
    ),
    Unsupported::new(
        "web_search_options",
        refuses::any,
        "not translated for Anthropic",
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
        "response_format",
        refuses::not_text_type,
        "Anthropic has no JSON mode; only type text is supported",
    ),
];

/// Translates an OpenAI chat completions request into an Anthropic Messages
/// request. `default_max_tokens` is used when the request sets neither
/// `max_completion_tokens` nor `max_tokens` (Anthropic requires one).
pub fn chat_to_messages(body: &[u8], default_max_tokens: u64) -> Result<Vec<u8>, TranslateError> {
    let req = chat::parse_object(body)?;
    let req = &req;
    chat::reject_unsupported(req, UNSUPPORTED)?;

    let mut out = Map::new();
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new("model", "required, a string"))?;
    out.insert("model".into(), json!(model));
    out.insert(
        "max_tokens".into(),
        json!(chat::max_tokens(req, default_max_tokens)?),
    );

    let (system, turns) = translate_messages(chat::messages(req)?)?;
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), Value::Array(turns));

    if let Some(seqs) = chat::stop_sequences(req)? {
        out.insert("stop_sequences".into(), seqs);
    }
    if let Some(t) = chat::number(req, "temperature")? {
        if !(0.0..=1.0).contains(&t) {
            return Err(TranslateError::new(
                "temperature",
                "Anthropic accepts 0 to 1",
            ));
        }
        out.insert("temperature".into(), json!(t));
    }
    if let Some(p) = chat::number(req, "top_p")? {
        out.insert("top_p".into(), json!(p));
    }
    if let Some(s) = chat::present(req, "stream") {
        let s = s
            .as_bool()
            .ok_or_else(|| TranslateError::new("stream", "must be a boolean"))?;
        out.insert("stream".into(), json!(s));
    }
    if let Some(u) = chat::present(req, "user") {
        let u = u
            .as_str()
            .ok_or_else(|| TranslateError::new("user", "must be a string"))?;
        out.insert("metadata".into(), json!({ "user_id": u }));
    }

    let tools = chat::tools(req, false, |t| {
        let schema = t
            .parameters()?
            .cloned()
            .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
        let mut tool = Map::new();
        tool.insert("name".into(), json!(t.name));
        if let Some(d) = t.function.get("description").and_then(Value::as_str) {
            tool.insert("description".into(), json!(d));
        }
        tool.insert("input_schema".into(), schema);
        Ok(Value::Object(tool))
    })?;
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = chat::tool_choice(req)?.map(|c| match c {
        ToolChoice::Auto => json!({ "type": "auto" }),
        ToolChoice::Required => json!({ "type": "any" }),
        ToolChoice::None => json!({ "type": "none" }),
        ToolChoice::Function(name) => json!({ "type": "tool", "name": name }),
    });
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

    chat::serialise(&Value::Object(out))
}

/// Content as Messages blocks: text, and images; no audio, no files.
const BLOCKS: Blocks = Blocks {
    require_objects: false,
    text: |s| json!({ "type": "text", "text": s }),
    image: image_block,
    audio: |_, at| chat::refuse_part(at, "Anthropic does not accept audio input"),
    file: |_, at| chat::refuse_part(at, "file parts are not translated for Anthropic"),
};

/// The system prompt (a string, or text blocks when there are several parts)
/// and the alternating user/assistant turns.
fn translate_messages(messages: &[Value]) -> Result<(Option<Value>, Vec<Value>), TranslateError> {
    let mut system: Vec<Value> = Vec::new();
    let mut turns = Turns::default();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = chat::role(m, &at, false)?;
        let content = m.get("content").unwrap_or(&Value::Null);
        let content_at = format!("{at}.content");
        match role {
            Role::System => system.extend(BLOCKS.read(content, &content_at, Parts::Text)?),
            Role::User => turns.push("user", BLOCKS.read(content, &content_at, Parts::User)?),
            Role::Assistant => {
                chat::refuse_members(
                    m,
                    &at,
                    &[
                        ("function_call", "deprecated; use tool_calls"),
                        ("audio", "Anthropic has no audio"),
                    ],
                )?;
                let mut blocks = BLOCKS.read(content, &content_at, Parts::Assistant)?;
                if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
                    chat::tool_calls(calls, &format!("{at}.tool_calls"), false, |c| {
                        blocks.push(json!({
                            "type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments,
                        }));
                        Ok(())
                    })?;
                }
                turns.push("assistant", blocks);
            }
            Role::Tool => {
                let id = chat::tool_call_id(m, &at)?;
                let mut block = json!({ "type": "tool_result", "tool_use_id": id });
                // An empty result is sent without `content` (it is optional).
                match content {
                    Value::Null => {}
                    Value::String(s) if s.is_empty() => {}
                    Value::String(s) => block["content"] = json!(s),
                    _ => {
                        let parts = BLOCKS.read(content, &content_at, Parts::Text)?;
                        if !parts.is_empty() {
                            block["content"] = Value::Array(parts);
                        }
                    }
                }
                turns.push("user", vec![block]);
            }
        }
    }
    turns.require_user_first(
        "Anthropic requires the first non-system message to be from the user",
    )?;
    let turns = turns.into_json("content", |b| b["type"] == "tool_result");
    let system = match system.len() {
        0 => None,
        1 => Some(system.swap_remove(0)["text"].take()),
        _ => Some(Value::Array(system)),
    };
    Ok((system, turns))
}

/// An `image_url` part: a `data:` URL becomes a base64 source, an http(s)
/// URL a url source.
fn image_block(p: &Value, at: &str) -> Result<Value, TranslateError> {
    let field = format!("{at}.image_url.url");
    let source = match chat::image_url(p, &field, HttpImages::Accept)? {
        ImageUrl::Data { mime, data } => {
            if !IMAGE_MEDIA_TYPES.contains(&mime.as_str()) {
                return Err(TranslateError::new(
                    &field,
                    format!(
                        "image media type {mime:?} is not one Anthropic accepts \
                         (jpeg, png, gif, webp)"
                    ),
                ));
            }
            json!({ "type": "base64", "media_type": mime, "data": data })
        }
        ImageUrl::Http(url) => json!({ "type": "url", "url": url }),
    };
    Ok(json!({ "type": "image", "source": source }))
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
    let msg = Value::Object(chat::parse_object(body)?);
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
                tool_calls.push(chat::tool_call_json(id, name, &input));
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
    let message = chat::assistant_message(text, tool_calls);

    let usage = match msg.get("usage") {
        None | Some(Value::Null) => None,
        Some(u) => Some(MessageUsage::from_json(u)?),
    };
    let mut out = chat::completion(
        id,
        created,
        model,
        vec![chat::choice(0, message, finish_reason)],
    );
    if let Some(u) = usage {
        out["usage"] = u.openai_json();
    }
    Ok((chat::serialise(&out)?, usage))
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
