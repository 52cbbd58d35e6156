//! `POST /model/{modelId}/converse` and `/converse-stream`: Bedrock
//! Runtime's Converse API, written from the Bedrock API reference
//! (`Converse`, `ConverseStream`, `ConverseStreamOutput`, `TokenUsage`) and
//! the AWS SigV4 and event-stream specifications.

use std::borrow::Cow;
use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{json, Value};

use super::body::{Part, SseEvent};
use super::common::{
    chosen_tool, content_text, header, parse_object, required_array, sub_object, tool_input,
    tool_input_pieces, turn_tokens, with_stream_error, CacheSplit, Ctx, Generation, Head, Object,
    Reply,
};
use super::errors::{to_json, ApiError};
use super::eventstream;
use super::sigv4::{self, AuthError};
use super::tokens::{generate_text, Words};

/// The content type of `converse-stream` answers.
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// Answers a Converse or ConverseStream request.
pub fn handle(body: &[u8], ctx: &Ctx, _model: &str, stream: bool) -> Result<Reply, ApiError> {
    check_signature(body, ctx)?;
    let req = parse_object(body)?;
    let texts = prompt_texts(&req)?;
    let prompt = turn_tokens(texts.iter().map(|t| t.as_ref()));
    let seed = texts.last().map_or(String::new(), |t| t.to_string());
    let config = sub_object(&req, "inferenceConfig")?;
    let generation = Generation::new(&config, &["maxTokens"], ctx.mis)?;
    let (declared, forced) = tools(&req)?;
    let tool = chosen_tool(&declared, forced.as_deref(), ctx.mis)?;
    let split = CacheSplit::new(prompt, ctx.mis);
    let output = (generation.n_out as u64).saturating_add(ctx.mis.reasoning_tokens.unwrap_or(0));
    let mut usage = json!({
        "inputTokens": split.uncached,
        "outputTokens": output,
        "totalTokens": prompt.saturating_add(output),
    });
    let cache_asked = ctx.mis.cache_read_tokens.is_some()
        || ctx.mis.cache_write_tokens.is_some()
        || ctx.mis.cached_tokens.is_some();
    if cache_asked {
        usage["cacheReadInputTokens"] = json!(split.read);
        usage["cacheWriteInputTokens"] = json!(split.write);
    }
    let stop_reason = match (&tool, generation.finish_reason) {
        (Some(_), _) => "tool_use",
        (None, "length") => "max_tokens",
        (None, _) => "end_turn",
    };
    let facts = Facts {
        tool_id: format!("tooluse_mock{:016x}", ctx.body_hash),
        tool,
        seed,
        n_out: generation.n_out,
        stop_reason,
        usage: (!ctx.mis.omit_usage).then_some(usage),
        latency_ms: ctx.delay_ms,
    };
    if stream {
        let events = stream_events(Arc::new(facts), ctx.mis.stream_error_after);
        return Ok(Reply::Events(
            Head::new(StatusCode::OK, EVENT_STREAM),
            events,
        ));
    }
    let block = match &facts.tool {
        Some(name) => json!({"toolUse": {
            "toolUseId": facts.tool_id,
            "name": name,
            "input": tool_input(&facts.seed, facts.n_out),
        }}),
        None => json!({"text": generate_text(&facts.seed, facts.n_out)}),
    };
    let mut answer = json!({
        "output": {"message": {"role": "assistant", "content": [block]}},
        "stopReason": facts.stop_reason,
        "metrics": {"latencyMs": facts.latency_ms},
    });
    if let Some(usage) = &facts.usage {
        answer["usage"] = usage.clone();
    }
    Ok(Reply::ok(to_json(&answer)))
}

/// Refuses a request without a well-formed SigV4 `Authorization` (and, with
/// `--aws-secret-access-key`, one whose signature does not verify).
fn check_signature(body: &[u8], ctx: &Ctx) -> Result<(), ApiError> {
    let forbidden =
        |kind: &'static str, message: String| ApiError::typed(StatusCode::FORBIDDEN, kind, message);
    let auth = match sigv4::parse_authorization(header(ctx.parts, "authorization")) {
        Ok(auth) => auth,
        Err(AuthError::Missing) => {
            return Err(forbidden(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token".to_owned(),
            ))
        }
        Err(AuthError::Incomplete(message)) => {
            return Err(forbidden("IncompleteSignatureException", message))
        }
    };
    let Some(amz_date) = header(ctx.parts, "x-amz-date") else {
        return Err(forbidden(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                .to_owned(),
        ));
    };
    let valid_date = amz_date.len() == 16
        && amz_date.get(8..9) == Some("T")
        && amz_date.ends_with('Z')
        && amz_date.get(..8) == Some(auth.date.as_str());
    if !valid_date {
        return Err(forbidden(
            "InvalidSignatureException",
            format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
                 from HTTP: '{}' != '{amz_date}'",
                auth.date
            ),
        ));
    }
    if auth.service != "bedrock" {
        return Err(forbidden(
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'.".to_owned(),
        ));
    }
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(forbidden(
            "InvalidSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".to_owned(),
        ));
    }
    if let Some(secret) = ctx.aws_secret {
        let req = sigv4::Request {
            method: ctx.parts.method.as_str(),
            path: ctx.parts.uri.path(),
            query: ctx.parts.uri.query().unwrap_or(""),
            headers: &ctx.parts.headers,
            body,
        };
        let expected = sigv4::expected_signature(&auth, &req, amz_date, secret);
        if !sigv4::same_signature(&expected, &auth.signature) {
            return Err(forbidden(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method. Consult the service \
                 documentation for details."
                    .to_owned(),
            ));
        }
    }
    Ok(())
}

/// The texts of the prompt's turns: `system` (if given, its blocks' text
/// joined) and each message (its `text` blocks and the text of its
/// `toolResult` blocks' content, joined by spaces).
fn prompt_texts(req: &Object) -> Result<Vec<Cow<'_, str>>, ApiError> {
    let mut texts = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(system @ Value::Array(_)) => texts.push(content_text(Some(system), "system")?),
        Some(_) => {
            return Err(ApiError::bad_request(
                "1 validation error detected: Value at 'system' failed to satisfy constraint: \
                 Member must be a list of SystemContentBlock",
                Some("system"),
            ))
        }
    }
    for (i, message) in required_array(req, "messages")?.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        if !matches!(role, Some("user" | "assistant")) {
            return Err(ApiError::bad_request(
                format!(
                    "1 validation error detected: Value at 'messages.{}.member.role' failed to \
                     satisfy constraint: Member must satisfy enum value set: [user, assistant]",
                    i + 1
                ),
                Some("messages"),
            ));
        }
        let Some(Value::Array(blocks)) = message.get("content") else {
            return Err(ApiError::bad_request(
                format!(
                    "1 validation error detected: Value at 'messages.{}.member.content' failed \
                     to satisfy constraint: Member must not be null",
                    i + 1
                ),
                Some("messages"),
            ));
        };
        let mut parts = Vec::new();
        for block in blocks {
            if let Some(Value::String(t)) = block.get("text") {
                parts.push(t.clone());
            } else if let Some(result) = block.get("toolResult") {
                let inner = content_text(result.get("content"), "messages")?;
                if !inner.is_empty() {
                    parts.push(inner.into_owned());
                }
            }
        }
        texts.push(Cow::Owned(parts.join(" ")));
    }
    Ok(texts)
}

/// The declared tool names (`toolConfig.tools[].toolSpec.name`) and the one
/// `toolConfig.toolChoice` forces (`{"tool":{"name"}}`, or the first tool for
/// `{"any":{}}`).
fn tools(req: &Object) -> Result<(Vec<&str>, Option<String>), ApiError> {
    let config = req.get("toolConfig");
    let mut declared = Vec::new();
    if let Some(Value::Array(tools)) = config.and_then(|c| c.get("tools")) {
        for tool in tools {
            if let Some(spec) = tool.get("toolSpec") {
                let name = spec.get("name").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::bad_request("toolConfig.tools[].toolSpec.name is required", None)
                })?;
                declared.push(name);
            }
        }
    }
    let choice = config.and_then(|c| c.get("toolChoice"));
    let forced = if let Some(tool) = choice.and_then(|c| c.get("tool")) {
        tool.get("name").and_then(Value::as_str).map(str::to_owned)
    } else if choice.and_then(|c| c.get("any")).is_some() {
        declared.first().map(|s| (*s).to_owned())
    } else {
        None
    };
    if let Some(name) = &forced {
        if !declared.contains(&name.as_str()) {
            return Err(ApiError::bad_request(
                format!("toolChoice names `{name}`, which is not in toolConfig.tools"),
                None,
            ));
        }
    }
    Ok((declared, forced))
}

struct Facts {
    tool_id: String,
    tool: Option<String>,
    seed: String,
    n_out: usize,
    stop_reason: &'static str,
    /// `None` with `x-mock-omit-usage`.
    usage: Option<Value>,
    latency_ms: u64,
}

fn event(event_type: &str, value: &Value, part: Part) -> SseEvent {
    SseEvent {
        bytes: eventstream::event(event_type, &to_json(value)),
        part,
    }
}

/// `messageStart`, (`contentBlockStart` for a tool call), one
/// `contentBlockDelta` per word or tool-input piece, `contentBlockStop`,
/// `messageStop`, `metadata`.
fn stream_events(facts: Arc<Facts>, error_after: Option<u64>) -> super::body::EventStream {
    let mut lead = vec![event(
        "messageStart",
        &json!({"role": "assistant"}),
        Part::Lead,
    )];
    if let Some(name) = &facts.tool {
        lead.push(event(
            "contentBlockStart",
            &json!({
                "contentBlockIndex": 0,
                "start": {"toolUse": {"toolUseId": facts.tool_id, "name": name}},
            }),
            Part::Lead,
        ));
    }
    let delta = |delta: Value| {
        event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": delta}),
            Part::Content,
        )
    };
    let content: Box<dyn Iterator<Item = SseEvent> + Send> = match &facts.tool {
        Some(_) => Box::new(
            tool_input_pieces(&facts.seed, facts.n_out)
                .into_iter()
                .map(move |piece| delta(json!({"toolUse": {"input": piece}}))),
        ),
        None => Box::new(
            Words::new(&facts.seed, facts.n_out)
                .enumerate()
                .map(move |(i, word)| delta(json!({"text": super::common::spaced(i, word)}))),
        ),
    };
    let tail_facts = Arc::clone(&facts);
    let tail = std::iter::once_with(move || {
        let mut metadata = json!({"metrics": {"latencyMs": tail_facts.latency_ms}});
        if let Some(usage) = &tail_facts.usage {
            metadata["usage"] = usage.clone();
        }
        vec![
            event(
                "contentBlockStop",
                &json!({"contentBlockIndex": 0}),
                Part::Tail,
            ),
            event(
                "messageStop",
                &json!({"stopReason": tail_facts.stop_reason}),
                Part::Tail,
            ),
            event("metadata", &metadata, Part::Tail),
        ]
    })
    .flatten();
    with_stream_error(lead.into_iter(), content, tail, error_after, || SseEvent {
        bytes: eventstream::exception(
            "throttlingException",
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        ),
        part: Part::Tail,
    })
}
