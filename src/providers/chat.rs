//! Reading an OpenAI chat completions request, and writing the parts of a
//! `chat.completion`, for the translations that speak another API
//! ([`super::anthropic`], [`super::gemini`], [`super::bedrock`]). What the
//! three read alike is read here once; what each provider makes of it (its
//! blocks, its messages naming the provider, what it refuses) stays with the
//! provider, passed in as a parameter or a hook.
//!
//! Every error is a [`TranslateError`] naming the field as a JSON path.

use serde_json::{json, Map, Value};

use super::TranslateError;

/// Parses a JSON body that must be an object.
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, TranslateError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(TranslateError::new("body", "must be a JSON object")),
        Err(e) => Err(TranslateError::new("body", format!("not valid JSON: {e}"))),
    }
}

/// Serialises a body.
pub(crate) fn serialise(v: &Value) -> Result<Vec<u8>, TranslateError> {
    serde_json::to_vec(v).map_err(|e| TranslateError::new("body", format!("cannot serialise: {e}")))
}

/// A member that is present and not `null`.
pub(crate) fn present<'a>(req: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    req.get(k).filter(|v| !v.is_null())
}

/// A member that, when present, must be a number.
pub(crate) fn number(req: &Map<String, Value>, k: &str) -> Result<Option<f64>, TranslateError> {
    match present(req, k) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| TranslateError::new(k, "must be a number")),
    }
}

/// One request field a provider cannot express: refused when present (not
/// `null`) and `refuses` says so of its value.
pub(crate) struct Unsupported {
    pub field: &'static str,
    pub refuses: fn(&Value) -> bool,
    pub why: &'static str,
}

impl Unsupported {
    pub(crate) const fn new(
        field: &'static str,
        refuses: fn(&Value) -> bool,
        why: &'static str,
    ) -> Self {
        Self {
            field,
            refuses,
            why,
        }
    }
}

/// Predicates for [`Unsupported::refuses`]: each is true of the values that
/// are refused.
pub(crate) mod refuses {
    use serde_json::Value;

    /// Any value.
    pub(crate) fn any(_: &Value) -> bool {
        true
    }

    /// Anything but the number 1.
    pub(crate) fn not_one(v: &Value) -> bool {
        v.as_u64() != Some(1)
    }

    /// Anything but `false`.
    pub(crate) fn not_false(v: &Value) -> bool {
        v.as_bool() != Some(false)
    }

    /// Anything but `true`.
    pub(crate) fn not_true(v: &Value) -> bool {
        v.as_bool() != Some(true)
    }

    /// `false` only.
    pub(crate) fn is_false(v: &Value) -> bool {
        v.as_bool() == Some(false)
    }

    /// Anything but a boolean.
    pub(crate) fn not_bool(v: &Value) -> bool {
        v.as_bool().is_none()
    }

    /// Anything but the number 0.
    pub(crate) fn not_zero(v: &Value) -> bool {
        v.as_f64() != Some(0.0)
    }

    /// Anything but an empty object.
    pub(crate) fn not_empty_object(v: &Value) -> bool {
        v.as_object().is_none_or(|m| !m.is_empty())
    }

    /// Anything but an array of `"text"` only (`modalities`).
    pub(crate) fn not_text_only(v: &Value) -> bool {
        v.as_array()
            .is_none_or(|m| m.iter().any(|x| x.as_str() != Some("text")))
    }

    /// Anything but an object of `type` `"text"` (`response_format`).
    pub(crate) fn not_text_type(v: &Value) -> bool {
        v.get("type").and_then(Value::as_str) != Some("text")
    }
}

/// Refuses the first request field (in the request's order) that `table`
/// refuses; the first entry of the table for a field that refuses its value
/// gives the message.
pub(crate) fn reject_unsupported(
    req: &Map<String, Value>,
    table: &[Unsupported],
) -> Result<(), TranslateError> {
    for (k, v) in req {
        if v.is_null() {
            continue;
        }
        if let Some(u) = table.iter().find(|u| u.field == k && (u.refuses)(v)) {
            return Err(TranslateError::new(k.as_str(), u.why));
        }
    }
    Ok(())
}

/// The output cap: `max_completion_tokens` (which wins) or `max_tokens`,
/// else `default`.
pub(crate) fn max_tokens(req: &Map<String, Value>, default: u64) -> Result<u64, TranslateError> {
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

/// The `stop` sequences, `None` when there are none.
pub(crate) fn stop_sequences(req: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let Some(stop) = present(req, "stop") else {
        return Ok(None);
    };
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
    Ok((!seqs.is_empty()).then_some(Value::Array(seqs)))
}

/// The required `messages` array.
pub(crate) fn messages(req: &Map<String, Value>) -> Result<&Vec<Value>, TranslateError> {
    req.get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("messages", "required, an array"))
}

/// A message's role, of those a translation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `system` or `developer`.
    System,
    User,
    Assistant,
    Tool,
}

/// The role of message `m` at `at`; the deprecated `function` role and
/// unknown roles are refused. With `require_object`, a message that is not
/// an object is refused as such (else it is read as one without members).
pub(crate) fn role(m: &Value, at: &str, require_object: bool) -> Result<Role, TranslateError> {
    if require_object && !m.is_object() {
        return Err(TranslateError::new(at, "must be an object"));
    }
    let role = m
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{at}.role"), "required, a string"))?;
    match role {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" => Ok(Role::Tool),
        "function" => Err(TranslateError::new(
            format!("{at}.role"),
            "the deprecated function role is not supported; use tool",
        )),
        other => Err(TranslateError::new(
            format!("{at}.role"),
            format!("unknown role {other:?}"),
        )),
    }
}

/// Refuses the first of `members` (name, why) that message `m` has.
pub(crate) fn refuse_members(
    m: &Value,
    at: &str,
    members: &[(&str, &str)],
) -> Result<(), TranslateError> {
    for (k, why) in members {
        if m.get(*k).is_some_and(|v| !v.is_null()) {
            return Err(TranslateError::new(format!("{at}.{k}"), *why));
        }
    }
    Ok(())
}

/// A `tool` message's required `tool_call_id`.
pub(crate) fn tool_call_id<'a>(m: &'a Value, at: &str) -> Result<&'a str, TranslateError> {
    m.get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{at}.tool_call_id"), "required, a string"))
}

/// The provider's turns being assembled: consecutive turns of the same role
/// are merged, empty ones dropped.
#[derive(Default)]
pub(crate) struct Turns {
    turns: Vec<(&'static str, Vec<Value>)>,
}

impl Turns {
    pub(crate) fn push(&mut self, role: &'static str, blocks: Vec<Value>) {
        if blocks.is_empty() {
            return;
        }
        match self.turns.last_mut() {
            Some((last, b)) if *last == role => b.extend(blocks),
            _ => self.turns.push((role, blocks)),
        }
    }

    /// The first turn's role, `None` when there is none.
    pub(crate) fn first_role(&self) -> Option<&'static str> {
        self.turns.first().map(|(r, _)| *r)
    }

    /// Refuses no turn at all, and a first turn not from the user
    /// (`not_user_first` says why).
    pub(crate) fn require_user_first(&self, not_user_first: &str) -> Result<(), TranslateError> {
        match self.first_role() {
            None => Err(TranslateError::new(
                "messages",
                "needs at least one non-empty user message",
            )),
            Some(r) if r != "user" => Err(TranslateError::new("messages", not_user_first)),
            Some(_) => Ok(()),
        }
    }

    /// The turns as `{"role": role, <key>: blocks}`. In a user turn, the
    /// blocks that `is_tool_result` go first (a stable sort): tool results
    /// answer the preceding assistant turn, before any text the user added.
    pub(crate) fn into_json(self, key: &str, is_tool_result: fn(&Value) -> bool) -> Vec<Value> {
        self.turns
            .into_iter()
            .map(|(role, mut blocks)| {
                if role == "user" {
                    blocks.sort_by_key(|b| !is_tool_result(b));
                }
                let mut t = Map::new();
                t.insert("role".into(), json!(role));
                t.insert(key.into(), Value::Array(blocks));
                Value::Object(t)
            })
            .collect()
    }
}

/// Which parts a message's content may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parts {
    /// Text parts only (system, developer and tool messages).
    Text,
    /// Text and refusal parts (assistant messages).
    Assistant,
    /// Text, image, audio and file parts (user messages).
    User,
}

/// One content part, read.
pub(crate) enum Part<'a> {
    /// A string content, a text part, or an assistant's refusal; possibly
    /// empty.
    Text(&'a str),
    /// An `image_url` part.
    Image(&'a Value),
    /// An `input_audio` part.
    Audio(&'a Value),
    /// A `file` part.
    File(&'a Value),
}

/// Reads a message's `content`: `null` is nothing, a string one text, an
/// array its parts, each given to `each` with its path; a part of a kind
/// `allowed` does not admit is refused. With `require_objects`, a part that
/// is not an object is refused as such.
pub(crate) fn content<'a>(
    content: &'a Value,
    at: &str,
    allowed: Parts,
    require_objects: bool,
    mut each: impl FnMut(Part<'a>, &str) -> Result<(), TranslateError>,
) -> Result<(), TranslateError> {
    let parts = match content {
        Value::Null => return Ok(()),
        Value::String(s) => return each(Part::Text(s), at),
        Value::Array(parts) => parts,
        _ => {
            return Err(TranslateError::new(
                at,
                "must be a string or an array of parts",
            ))
        }
    };
    for (j, p) in parts.iter().enumerate() {
        let at = format!("{at}[{j}]");
        if require_objects && !p.is_object() {
            return Err(TranslateError::new(at, "must be an object"));
        }
        let part = match (p.get("type").and_then(Value::as_str), allowed) {
            (Some("text"), _) => {
                Part::Text(p.get("text").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::new(format!("{at}.text"), "required, a string")
                })?)
            }
            (Some("refusal"), Parts::Assistant) => {
                Part::Text(p.get("refusal").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::new(format!("{at}.refusal"), "required, a string")
                })?)
            }
            (Some("image_url"), Parts::User) => Part::Image(p),
            (Some("input_audio"), Parts::User) => Part::Audio(p),
            (Some("file"), Parts::User) => Part::File(p),
            (other, allowed) => {
                let why = match allowed {
                    Parts::Text => format!("only text parts are supported here, not {other:?}"),
                    Parts::Assistant => format!("unsupported assistant content part {other:?}"),
                    Parts::User => format!("unsupported content part {other:?}"),
                };
                return Err(TranslateError::new(format!("{at}.type"), why));
            }
        };
        each(part, &at)?;
    }
    Ok(())
}

/// How a provider writes a message's content as its blocks (or parts): a
/// hook a kind of part; empty texts are left out.
pub(crate) struct Blocks {
    /// Whether a content part that is not an object is refused as such.
    pub require_objects: bool,
    /// A non-empty text.
    pub text: fn(&str) -> Value,
    /// An `image_url` part at the given path.
    pub image: fn(&Value, &str) -> Result<Value, TranslateError>,
    /// An `input_audio` part at the given path.
    pub audio: fn(&Value, &str) -> Result<Value, TranslateError>,
    /// A `file` part at the given path.
    pub file: fn(&Value, &str) -> Result<Value, TranslateError>,
}

impl Blocks {
    /// The blocks of a message's `content`, of the parts `allowed` admits.
    pub(crate) fn read(
        &self,
        content: &Value,
        at: &str,
        allowed: Parts,
    ) -> Result<Vec<Value>, TranslateError> {
        let mut out = Vec::new();
        self::content(content, at, allowed, self.require_objects, |part, at| {
            match part {
                Part::Text("") => {}
                Part::Text(s) => out.push((self.text)(s)),
                Part::Image(p) => out.push((self.image)(p, at)?),
                Part::Audio(p) => out.push((self.audio)(p, at)?),
                Part::File(p) => out.push((self.file)(p, at)?),
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// Refuses the part at `at` for its type, saying why (a [`Blocks`] hook for
/// a kind of part a provider does not take).
pub(crate) fn refuse_part(at: &str, why: &str) -> Result<Value, TranslateError> {
    Err(TranslateError::new(format!("{at}.type"), why))
}

/// Content that may only be text, joined.
pub(crate) fn joined_text(
    content: &Value,
    at: &str,
    require_objects: bool,
) -> Result<String, TranslateError> {
    let mut out = String::new();
    self::content(content, at, Parts::Text, require_objects, |p, _| {
        if let Part::Text(t) = p {
            out.push_str(t);
        }
        Ok(())
    })?;
    Ok(out)
}

/// A base64 `data:` URL's media type (lower case, its parameters dropped)
/// and data; `None` when `url` is not a `data:` URL.
pub(crate) fn data_url<'a>(
    url: &'a str,
    field: &str,
) -> Result<Option<(String, &'a str)>, TranslateError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(None);
    };
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| TranslateError::new(field, "a data URL needs a comma"))?;
    let meta = meta
        .strip_suffix(";base64")
        .ok_or_else(|| TranslateError::new(field, "only base64 data URLs are supported"))?;
    // Parameters other than base64 (e.g. `;charset=`) are not expected for
    // images; the media type is what precedes the first `;`.
    let mime = meta.split(';').next().unwrap_or("").to_ascii_lowercase();
    Ok(Some((mime, data)))
}

/// What a provider does with an http(s) image URL.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HttpImages {
    /// Passes it on (the provider fetches it).
    Accept,
    /// Refuses it, saying why; any other URL but a data URL is refused as
    /// not one.
    Refuse(&'static str),
}

/// An `image_url` part's URL, read.
pub(crate) enum ImageUrl<'a> {
    /// A base64 data URL: its media type (lower case) and data.
    Data { mime: String, data: &'a str },
    /// An http(s) URL.
    Http(&'a str),
}

/// Reads an `image_url` part (its URL at `field`, `….image_url.url`).
pub(crate) fn image_url<'a>(
    p: &'a Value,
    field: &str,
    http: HttpImages,
) -> Result<ImageUrl<'a>, TranslateError> {
    let url = match p.get("image_url") {
        Some(Value::String(s)) => s.as_str(),
        Some(v) => v
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::new(field, "required, a string"))?,
        None => return Err(TranslateError::new(field, "required, a string")),
    };
    if let Some((mime, data)) = data_url(url, field)? {
        return Ok(ImageUrl::Data { mime, data });
    }
    let is_http = url.starts_with("https://") || url.starts_with("http://");
    match http {
        HttpImages::Accept if is_http => Ok(ImageUrl::Http(url)),
        HttpImages::Accept => Err(TranslateError::new(
            field,
            "must be an http(s) URL or a base64 data URL",
        )),
        HttpImages::Refuse(why) if is_http => Err(TranslateError::new(field, why)),
        HttpImages::Refuse(_) => Err(TranslateError::new(field, "must be a base64 data URL")),
    }
}

/// One assistant tool call, read.
pub(crate) struct ToolCall<'a> {
    /// The call's path (`messages[i].tool_calls[k]`).
    pub at: String,
    /// The call object itself.
    pub call: &'a Value,
    pub id: &'a str,
    pub name: &'a str,
    /// The parsed arguments: a JSON object (`{}` for an empty string).
    pub arguments: Value,
}

/// Reads an assistant's `tool_calls`, giving each call to `each` in order.
/// With `nonempty_names`, an empty function name is refused.
pub(crate) fn tool_calls<'a>(
    calls: &'a Value,
    at: &str,
    nonempty_names: bool,
    mut each: impl FnMut(ToolCall<'a>) -> Result<(), TranslateError>,
) -> Result<(), TranslateError> {
    let calls = calls
        .as_array()
        .ok_or_else(|| TranslateError::new(at, "must be an array"))?;
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
            .filter(|n| !nonempty_names || !n.is_empty())
            .ok_or_else(|| {
                TranslateError::new(format!("{at}.function.name"), "required, a string")
            })?;
        let args_at = format!("{at}.function.arguments");
        let args = match f.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(TranslateError::new(args_at, "must be a string")),
        };
        let arguments: Value = if args.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(args)
                .map_err(|e| TranslateError::new(&args_at, format!("not valid JSON: {e}")))?
        };
        if !arguments.is_object() {
            return Err(TranslateError::new(args_at, "must encode a JSON object"));
        }
        each(ToolCall {
            at,
            call: c,
            id,
            name,
            arguments,
        })?;
    }
    Ok(())
}

/// One function tool of the request's `tools`, read.
pub(crate) struct Tool<'a> {
    /// The tool's path (`tools[i]`).
    pub at: String,
    /// Its `function` object.
    pub function: &'a Value,
    pub name: &'a str,
}

impl Tool<'_> {
    /// The `parameters` schema: `None` when absent, refused when not an
    /// object.
    pub(crate) fn parameters(&self) -> Result<Option<&Value>, TranslateError> {
        match self.function.get("parameters") {
            None | Some(Value::Null) => Ok(None),
            Some(p) if p.is_object() => Ok(Some(p)),
            Some(_) => Err(TranslateError::new(
                format!("{}.function.parameters", self.at),
                "must be a JSON Schema object",
            )),
        }
    }
}

/// Reads the request's `tools` (absent or `null`: none), mapping each
/// function tool with `each`. With `nonempty_names`, an empty function name
/// is refused.
pub(crate) fn tools(
    req: &Map<String, Value>,
    nonempty_names: bool,
    mut each: impl FnMut(Tool<'_>) -> Result<Value, TranslateError>,
) -> Result<Vec<Value>, TranslateError> {
    let Some(tools) = present(req, "tools") else {
        return Ok(Vec::new());
    };
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
        let function = t
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| TranslateError::new(format!("{at}.function"), "required, an object"))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !nonempty_names || !n.is_empty())
            .ok_or_else(|| {
                TranslateError::new(format!("{at}.function.name"), "required, a string")
            })?;
        out.push(each(Tool { at, function, name })?);
    }
    Ok(out)
}

/// An OpenAI `tool_choice`, before it meets the tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToolChoice<'a> {
    Auto,
    None,
    /// `required`: some tool.
    Required,
    /// That function.
    Function(&'a str),
}

/// The request's `tool_choice`; `None` when absent or `null`.
pub(crate) fn tool_choice(
    req: &Map<String, Value>,
) -> Result<Option<ToolChoice<'_>>, TranslateError> {
    let Some(c) = present(req, "tool_choice") else {
        return Ok(None);
    };
    match c {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "required" => Ok(Some(ToolChoice::Required)),
            "none" => Ok(Some(ToolChoice::None)),
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
            Ok(Some(ToolChoice::Function(name)))
        }
        _ => Err(TranslateError::new(
            "tool_choice",
            "must be a string or an object",
        )),
    }
}

// The chat.completion side.

/// An OpenAI tool call of a `chat.completion` message (no `index`).
pub(crate) fn tool_call_json(id: &str, name: &str, arguments: &Value) -> Value {
    json!({
        "id": id,
        "type": "function",
        "function": { "name": name, "arguments": arguments.to_string() },
    })
}

/// A `chat.completion` assistant message: `content` is `null` when there
/// is no text but tool calls.
pub(crate) fn assistant_message(text: String, tool_calls: Vec<Value>) -> Value {
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
    Value::Object(message)
}

/// One choice of a `chat.completion`.
pub(crate) fn choice(index: u64, message: Value, finish_reason: Value) -> Value {
    json!({
        "index": index,
        "message": message,
        "logprobs": null,
        "finish_reason": finish_reason,
    })
}

/// A `chat.completion` (without `usage`).
pub(crate) fn completion(id: &str, created: i64, model: &str, choices: Vec<Value>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
    })
}

/// OpenAI's `usage` object: prompt (cached included), completion, total and
/// cached tokens.
pub(crate) fn usage_json(prompt: u64, completion: u64, total: u64, cached: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}
