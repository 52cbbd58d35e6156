//! Each provider's answer body (Anthropic Messages, Gemini
//! generateContent, Bedrock Converse) into an OpenAI `chat.completion`: any
//! bytes give a completion or an error naming a field, never a panic; a
//! completion is JSON with at least one choice, and the gateway's own usage
//! reader finds in it the usage the translation returned (none when it
//! returned none); `Translation::response` agrees with the provider's own
//! function. Error bodies: `Translation::error` always gives an OpenAI
//! error object, whatever the status and body. The usage readers take any
//! JSON value.
#![no_main]
use bursar::providers::anthropic::{self, MessageUsage};
use bursar::providers::translate::{usage_of_message, Translated, Translation};
use bursar::providers::{bedrock, gemini, TranslateError};
use bursar::tokens::{usage_from_body, Protocol, Usage, UsageSource};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const MODEL: &str = "some-model";
const CREATED: i64 = 1_700_000_000;

/// The completion is well formed and carries `usage` as the gateway reads
/// it back; `reasoning` says whether the translation writes reasoning
/// tokens out (Gemini) or not.
fn check_completion(r: &Result<Translated, TranslateError>, model: Option<&str>, reasoning: bool) {
    let (body, usage) = match r {
        Ok(ok) => ok,
        Err(e) => {
            assert!(!e.field.is_empty(), "an error without a field: {e:?}");
            return;
        }
    };
    let v: Value = serde_json::from_slice(body).expect("the completion is JSON");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].is_string());
    assert_eq!(v["created"], CREATED);
    if let Some(m) = model {
        assert_eq!(v["model"], m);
    }
    let choices = v["choices"].as_array().expect("choices");
    assert!(!choices.is_empty());
    for c in choices {
        assert_eq!(c["message"]["role"], "assistant");
        let content = &c["message"]["content"];
        assert!(content.is_string() || content.is_null());
        if let Some(calls) = c["message"].get("tool_calls") {
            for call in calls.as_array().expect("tool_calls") {
                let args = call["function"]["arguments"].as_str().expect("arguments");
                serde_json::from_str::<Value>(args).expect("arguments are JSON");
            }
        }
    }
    let read = usage_from_body(Protocol::ChatCompletions, body);
    match usage {
        None => {
            assert!(v.get("usage").is_none());
            assert_eq!(read, None);
        }
        Some(u) => {
            let expected = Usage {
                cache_write_tokens: 0,
                reasoning_tokens: if reasoning { u.reasoning_tokens } else { 0 },
                source: UsageSource::Provider,
                ..*u
            };
            assert_eq!(
                read,
                Some(expected),
                "the usage written is not the usage returned"
            );
            assert_eq!(v["usage"]["total_tokens"].as_u64(), Some(u.total_tokens()));
        }
    }
}

fn check_usage(v: &Value) {
    if let Ok(u) = MessageUsage::from_json(v) {
        assert!(u.prompt_tokens() >= u.input.max(u.cache_read).max(u.cache_write));
        assert!(u.total_tokens() >= u.prompt_tokens().max(u.output));
        let n = usage_of_message(u);
        assert_eq!(n.prompt_tokens, u.prompt_tokens());
        assert!(n.uncached_prompt_tokens() <= u.input);
    } else {
        assert!(!v.is_object() || v.as_object().is_some_and(|o| !o.is_empty()));
    }
    if let Some(u) = gemini::usage_from_metadata(v) {
        assert!(u.completion_tokens >= u.reasoning_tokens);
        assert_eq!(u.cache_write_tokens, 0);
    }
    if let Some(u) = bedrock::usage_from_json(v) {
        assert!(u.prompt_tokens >= u.cached_tokens.max(u.cache_write_tokens));
    }
}

fuzz_target!(|data: &[u8]| {
    // Anthropic.
    let direct = anthropic::message_to_chat_with_usage(data, CREATED);
    assert_eq!(
        anthropic::message_to_chat(data, CREATED),
        direct.clone().map(|(b, _)| b)
    );
    let direct = direct.map(|(b, u)| (b, u.map(usage_of_message)));
    check_completion(&direct, None, false);
    assert_eq!(
        Translation::AnthropicChat.response(data, MODEL, CREATED),
        Some(direct)
    );
    // Gemini.
    let direct = gemini::generate_to_chat(data, MODEL, CREATED);
    check_completion(&direct, Some(MODEL), true);
    assert_eq!(
        Translation::GeminiChat.response(data, MODEL, CREATED),
        Some(direct)
    );
    // Bedrock: the id is a hash of the body, the same every time.
    let direct = bedrock::converse_to_chat(data, MODEL, CREATED);
    check_completion(&direct, Some(MODEL), false);
    assert_eq!(
        Translation::BedrockChat.response(data, MODEL, CREATED),
        Some(direct)
    );
    assert_eq!(Translation::None.response(data, MODEL, CREATED), None);

    // Error bodies, at any status.
    let status = data.first().map_or(500, |&b| {
        [400, 401, 403, 404, 413, 429, 500, 503, 529, u16::from(b)][usize::from(b % 10)]
    });
    for t in [
        Translation::AnthropicChat,
        Translation::GeminiChat,
        Translation::BedrockChat,
    ] {
        let e = t.error(status, data).expect("an error body");
        let v: Value = serde_json::from_slice(&e).expect("the error is JSON");
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        assert_eq!(v["error"]["type"], v["error"]["code"]);
    }
    assert_eq!(Translation::None.error(status, data), None);
    if let Some(m) = gemini::error_message(data) {
        assert!(serde_json::from_slice::<Value>(data).is_ok());
        let _ = m;
    }
    if let Some(m) = bedrock::error_message(data) {
        assert!(serde_json::from_slice::<Value>(data).is_ok());
        let _ = m;
    }

    // The usage readers, on the body and where each looks for usage.
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        check_usage(&v);
        for k in ["usage", "usageMetadata"] {
            if let Some(u) = v.get(k) {
                check_usage(u);
            }
        }
    }
});
