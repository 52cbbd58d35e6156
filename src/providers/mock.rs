//! The in-process mock provider: deterministic OpenAI-shaped answers with no
//! network, so the built-in default configuration works offline.
//!
//! Token counts follow one documented rule (the same as `bursar-load mock`):
//! `words(s)` counts whitespace-separated words; a chat prompt costs
//! 3 + words(content) per message plus 3; a completion is `max_tokens` (or
//! `max_completion_tokens`, `max_output_tokens`) words, 16 by default, capped
//! at [`MOCK_COMPLETION_WORDS_MAX`].

use serde_json::{json, Value};

use super::Endpoint;
use crate::error::ApiError;

/// Longest completion the mock writes.
pub const MOCK_COMPLETION_WORDS_MAX: u64 = 4096;
/// Default completion length.
pub const MOCK_COMPLETION_WORDS_DEFAULT: u64 = 16;
/// Default embedding dimension.
pub const MOCK_EMBEDDING_DIMS_DEFAULT: usize = 16;
const MOCK_EMBEDDING_DIMS_MAX: usize = 4096;
const MOCK_EMBEDDING_INPUTS_MAX: usize = 2048;

const VOCABULARY: [&str; 32] = [
    "the", "ledger", "balances", "every", "token", "and", "budget", "stays", "exact", "under",
    "load", "while", "streams", "flow", "through", "a", "gateway", "that", "counts", "cost",
    "before", "money", "is", "spent", "so", "teams", "ship", "features", "without", "surprise",
    "bills", "today",
];

/// The mock's answer: a JSON body, or SSE events (each a complete event,
/// ending in a blank line).
#[derive(Debug)]
pub enum MockReply {
    Json(Vec<u8>),
    Events(Vec<Vec<u8>>),
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The text of a message's `content`: a string, or the `text` of its parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn completion_words(seed_text: &str, n: u64) -> Vec<&'static str> {
    let mut h = fnv1a(seed_text);
    (0..n)
        .map(|_| {
            h = h
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            VOCABULARY[(h >> 59) as usize % VOCABULARY.len()]
        })
        .collect()
}

fn limit(body: &Value, keys: &[&str]) -> Result<(u64, bool), ApiError> {
    for k in keys {
        if let Some(v) = body.get(*k) {
            if v.is_null() {
                continue;
            }
            let n = v.as_u64().filter(|&n| n >= 1).ok_or_else(|| {
                ApiError::bad_request("invalid_value", format!("{k} must be a positive integer"))
            })?;
            return Ok((n.min(MOCK_COMPLETION_WORDS_MAX), true));
        }
    }
    Ok((MOCK_COMPLETION_WORDS_DEFAULT, false))
}

fn sse(data: &Value) -> Vec<u8> {
    let mut e = b"data: ".to_vec();
    e.extend_from_slice(data.to_string().as_bytes());
    e.extend_from_slice(b"\n\n");
    e
}

fn sse_named(kind: &str, data: &Value) -> Vec<u8> {
    let mut e = format!("event: {kind}\ndata: ").into_bytes();
    e.extend_from_slice(data.to_string().as_bytes());
    e.extend_from_slice(b"\n\n");
    e
}

/// Answers `body` for `endpoint`. `created` is the Unix time to stamp.
pub fn respond(
    endpoint: Endpoint,
    body: &[u8],
    request_id: &str,
    created: u64,
) -> Result<MockReply, ApiError> {
    answer(endpoint, body, request_id, created).map(|(reply, _)| reply)
}

/// Answers like [`respond`], with the usage the answer reports (or would
/// report, for a stream whose client did not ask for usage): what the
/// gateway charges for an in-process mock request.
pub fn respond_with_usage(
    endpoint: Endpoint,
    body: &[u8],
    request_id: &str,
    created: u64,
) -> Result<(MockReply, Option<crate::tokens::Usage>), ApiError> {
    let (reply, usage) = answer(endpoint, body, request_id, created)?;
    let wrapped = json!({ "usage": usage }).to_string();
    let usage = crate::tokens::usage_from_body(endpoint.protocol(), wrapped.as_bytes());
    Ok((reply, usage))
}

fn answer(
    endpoint: Endpoint,
    body: &[u8],
    request_id: &str,
    created: u64,
) -> Result<(MockReply, Value), ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_request_body", format!("invalid JSON: {e}")))?;
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_string();
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match endpoint {
        Endpoint::ChatCompletions => chat(&v, &model, stream, include_usage, request_id, created),
        Endpoint::Completions => {
            completions(&v, &model, stream, include_usage, request_id, created)
        }
        Endpoint::Embeddings => embeddings(&v, &model),
        Endpoint::Responses => responses(&v, &model, stream, request_id, created),
        Endpoint::Messages => Err(ApiError::bad_request(
            "unsupported_endpoint",
            "/v1/messages is served by kind \"anthropic\" providers only",
        )),
    }
}

fn chat(
    v: &Value,
    model: &str,
    stream: bool,
    include_usage: bool,
    rid: &str,
    created: u64,
) -> Result<(MockReply, Value), ApiError> {
    let messages = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request("invalid_value", "messages must be an array"))?;
    let mut prompt = 3;
    let mut last = String::new();
    for m in messages {
        last = m.get("content").map(content_text).unwrap_or_default();
        prompt += 3 + words(&last);
    }
    let (n, limited) = limit(v, &["max_completion_tokens", "max_tokens"])?;
    let out = completion_words(&last, n);
    let finish = if limited { "length" } else { "stop" };
    let usage = json!({
        "prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    });
    let id = format!("chatcmpl-{rid}");
    if !stream {
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out.join(" "), "refusal": null},
                         "logprobs": null, "finish_reason": finish}],
            "usage": usage, "system_fingerprint": "fp_bursar_mock",
        });
        return Ok((MockReply::Json(body.to_string().into_bytes()), usage));
    }
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                           "system_fingerprint": "fp_bursar_mock",
                           "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        sse(&c)
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for (i, w) in out.iter().enumerate() {
        let text = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        events.push(chunk(json!({"content": text}), Value::Null));
    }
    events.push(chunk(json!({}), json!(finish)));
    if include_usage {
        events.push(sse(&json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                                "system_fingerprint": "fp_bursar_mock", "choices": [], "usage": usage})));
    }
    events.push(b"data: [DONE]\n\n".to_vec());
    Ok((MockReply::Events(events), usage))
}

fn completions(
    v: &Value,
    model: &str,
    stream: bool,
    include_usage: bool,
    rid: &str,
    created: u64,
) -> Result<(MockReply, Value), ApiError> {
    let (prompt_text, prompt) = match v.get("prompt") {
        Some(Value::String(s)) => (s.clone(), words(s).max(1)),
        Some(Value::Array(a)) => {
            let texts: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            (
                texts.join(" "),
                texts.iter().map(|t| words(t)).sum::<u64>().max(1),
            )
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_value",
                "prompt must be a string or an array of strings",
            ))
        }
    };
    let (n, limited) = limit(v, &["max_tokens"])?;
    let out = completion_words(&prompt_text, n);
    let finish = if limited { "length" } else { "stop" };
    let usage =
        json!({"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n});
    let id = format!("cmpl-{rid}");
    if !stream {
        let body = json!({"id": id, "object": "text_completion", "created": created, "model": model,
                          "choices": [{"text": out.join(" "), "index": 0, "logprobs": null, "finish_reason": finish}],
                          "usage": usage});
        return Ok((MockReply::Json(body.to_string().into_bytes()), usage));
    }
    let mut events = Vec::with_capacity(out.len() + 3);
    for (i, w) in out.iter().enumerate() {
        let text = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        events.push(sse(&json!({"id": id, "object": "text_completion", "created": created, "model": model,
                                "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": null}]})));
    }
    events.push(sse(&json!({"id": id, "object": "text_completion", "created": created, "model": model,
                            "choices": [{"text": "", "index": 0, "logprobs": null, "finish_reason": finish}]})));
    if include_usage {
        events.push(sse(
            &json!({"id": id, "object": "text_completion", "created": created, "model": model,
                                "choices": [], "usage": usage}),
        ));
    }
    events.push(b"data: [DONE]\n\n".to_vec());
    Ok((MockReply::Events(events), usage))
}

fn embeddings(v: &Value, model: &str) -> Result<(MockReply, Value), ApiError> {
    let inputs: Vec<String> = match v.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
            vec![a.iter().map(|x| format!("{x} ")).collect()]
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|t| {
                t.as_array().map_or(String::new(), |t| {
                    t.iter().map(|x| format!("{x} ")).collect()
                })
            })
            .collect(),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_value",
                "input must be a string or an array",
            ))
        }
    };
    if inputs.is_empty() || inputs.len() > MOCK_EMBEDDING_INPUTS_MAX {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!("input must hold 1 to {MOCK_EMBEDDING_INPUTS_MAX} items"),
        ));
    }
    let dims = match v.get("dimensions") {
        None | Some(Value::Null) => MOCK_EMBEDDING_DIMS_DEFAULT,
        Some(d) => d
            .as_u64()
            .filter(|&d| d >= 1 && d as usize <= MOCK_EMBEDDING_DIMS_MAX)
            .ok_or_else(|| ApiError::bad_request("invalid_value", "dimensions out of range"))?
            as usize,
    };
    let base64 = v.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut data = Vec::with_capacity(inputs.len());
    let mut prompt = 0;
    for (i, text) in inputs.iter().enumerate() {
        prompt += words(text).max(1);
        let mut h = fnv1a(text);
        let mut vec: Vec<f32> = (0..dims)
            .map(|_| {
                h = h
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((h >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        let norm = vec
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        vec.iter_mut().for_each(|x| *x /= norm);
        let embedding = if base64 {
            let bytes: Vec<u8> = vec.iter().flat_map(|x| x.to_le_bytes()).collect();
            Value::String(base64_encode(&bytes))
        } else {
            json!(vec)
        };
        data.push(json!({"object": "embedding", "index": i, "embedding": embedding}));
    }
    let usage = json!({"prompt_tokens": prompt, "total_tokens": prompt});
    let body = json!({"object": "list", "data": data, "model": model, "usage": usage});
    Ok((MockReply::Json(body.to_string().into_bytes()), usage))
}

fn responses(
    v: &Value,
    model: &str,
    stream: bool,
    rid: &str,
    created: u64,
) -> Result<(MockReply, Value), ApiError> {
    let (prompt, last) = match v.get("input") {
        Some(Value::String(s)) => (3 + 3 + words(s), s.clone()),
        Some(Value::Array(items)) => {
            let mut prompt = 3;
            let mut last = String::new();
            for it in items {
                last = it.get("content").map(content_text).unwrap_or_default();
                prompt += 3 + words(&last);
            }
            (prompt, last)
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_value",
                "input must be a string or an array",
            ))
        }
    };
    let (n, limited) = limit(v, &["max_output_tokens"])?;
    let text = completion_words(&last, n).join(" ");
    let resp_id = format!("resp_{rid}");
    let msg_id = format!("msg_{rid}");
    let usage = json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens": n, "output_tokens_details": {"reasoning_tokens": 0},
                       "total_tokens": prompt + n});
    let part = json!({"type": "output_text", "text": text, "annotations": []});
    let item = json!({"type": "message", "id": msg_id, "status": "completed", "role": "assistant", "content": [part]});
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": resp_id, "object": "response", "created_at": created, "status": status,
               "model": model, "output": output, "usage": usage, "parallel_tool_calls": true,
               "tool_choice": "auto", "tools": [], "error": null, "incomplete_details": null,
               "instructions": null, "metadata": {}, "temperature": 1.0, "top_p": 1.0,
               "max_output_tokens": if limited { json!(n) } else { Value::Null }, "text": {"format": {"type": "text"}}})
    };
    if !stream {
        let body = response("completed", json!([item]), usage.clone());
        return Ok((MockReply::Json(body.to_string().into_bytes()), usage));
    }
    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut push = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        events.push(sse_named(kind, &data));
    };
    push(
        "response.created",
        json!({"response": response("in_progress", json!([]), Value::Null)}),
    );
    push(
        "response.in_progress",
        json!({"response": response("in_progress", json!([]), Value::Null)}),
    );
    push(
        "response.output_item.added",
        json!({"output_index": 0,
        "item": {"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []}}),
    );
    push(
        "response.content_part.added",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": []}}),
    );
    for (i, w) in text.split(' ').enumerate() {
        let delta = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        push(
            "response.output_text.delta",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []}),
        );
    }
    push(
        "response.output_text.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
    );
    push(
        "response.content_part.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part}),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
    );
    push(
        "response.completed",
        json!({"response": response("completed", json!([item]), usage.clone())}),
    );
    Ok((MockReply::Events(events), usage))
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_reply(endpoint: Endpoint, body: &str) -> Value {
        match respond(endpoint, body.as_bytes(), "r1", 0).unwrap() {
            MockReply::Json(b) => serde_json::from_slice(&b).unwrap(),
            MockReply::Events(_) => panic!("expected JSON"),
        }
    }

    #[test]
    fn chat_usage_follows_the_documented_rule() {
        let v = json_reply(
            Endpoint::ChatCompletions,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"say three words"}]}"#,
        );
        assert_eq!(v["usage"]["prompt_tokens"], 3 + (3 + 2) + (3 + 3));
        assert_eq!(v["usage"]["completion_tokens"], 5);
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(text.split(' ').count(), 5);
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn streams_carry_usage_only_when_asked() {
        let body = r#"{"model":"m","stream":true,"max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#;
        let MockReply::Events(ev) =
            respond(Endpoint::ChatCompletions, body.as_bytes(), "r", 0).unwrap()
        else {
            panic!()
        };
        assert_eq!(ev.len(), 1 + 3 + 1 + 1);
        assert!(!ev
            .iter()
            .any(|e| String::from_utf8_lossy(e).contains("\"usage\"")));
        let body = body.replace(
            "\"stream\":true",
            "\"stream\":true,\"stream_options\":{\"include_usage\":true}",
        );
        let MockReply::Events(ev) =
            respond(Endpoint::ChatCompletions, body.as_bytes(), "r", 0).unwrap()
        else {
            panic!()
        };
        let usage = String::from_utf8_lossy(&ev[ev.len() - 2]).to_string();
        assert!(
            usage.contains("\"choices\":[]") && usage.contains("\"completion_tokens\":3"),
            "{usage}"
        );
        assert_eq!(ev.last().unwrap(), b"data: [DONE]\n\n");
    }

    #[test]
    fn embeddings_in_base64_decode_to_the_float_vector() {
        let f = json_reply(
            Endpoint::Embeddings,
            r#"{"model":"e","input":["a b","c"],"dimensions":4}"#,
        );
        let b = json_reply(
            Endpoint::Embeddings,
            r#"{"model":"e","input":["a b","c"],"dimensions":4,"encoding_format":"base64"}"#,
        );
        assert_eq!(f["usage"]["prompt_tokens"], 3);
        let floats: Vec<f64> = f["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let encoded = b["data"][0]["embedding"].as_str().unwrap();
        assert_eq!(encoded.len(), 4 * 4 * 4 / 3 + 4 - (4 * 4 * 4 / 3) % 4);
        assert_eq!(floats.len(), 4);
        let norm: f64 = floats.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn bad_inputs_are_400s_not_panics() {
        for (e, body) in [
            (Endpoint::ChatCompletions, r#"{"model":"m"}"#),
            (
                Endpoint::ChatCompletions,
                r#"{"model":"m","messages":[],"max_tokens":-1}"#,
            ),
            (Endpoint::Embeddings, r#"{"model":"m","input":{}}"#),
            (
                Endpoint::Embeddings,
                r#"{"model":"m","input":"x","dimensions":0}"#,
            ),
            (Endpoint::Responses, r#"{"model":"m","input":3}"#),
            (Endpoint::Completions, r#"{"model":"m"}"#),
        ] {
            assert_eq!(
                respond(e, body.as_bytes(), "r", 0).unwrap_err().status,
                400,
                "{body}"
            );
        }
    }
}
