//! OpenAI chat request bodies into each provider's request (Anthropic
//! Messages, Gemini generateContent, Bedrock Converse): any bytes give a
//! request or an error naming a field, never a panic; a request is a JSON
//! object whose turns start with the user (Gemini: either role) and
//! alternate, each holding blocks, with the output cap the body asked for
//! (else the default); `Translation::request` gives the same bytes as the
//! provider's own function. The model's path pieces: Gemini's name is
//! refused or safe in a path, Bedrock's percent-encoding decodes back to
//! the model id.
#![no_main]
use bursar::providers::translate::Translation;
use bursar::providers::{anthropic, bedrock, gemini, Endpoint, ProviderKind, TranslateError};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The output cap the body asks for, when it asks for a valid one:
/// `max_completion_tokens` wins over `max_tokens`, else the default.
fn cap(req: &Map<String, Value>) -> Option<u64> {
    for k in ["max_completion_tokens", "max_tokens"] {
        match req.get(k) {
            None | Some(Value::Null) => continue,
            Some(v) => return v.as_u64().filter(|&n| n >= 1),
        }
    }
    Some(DEFAULT_MAX_TOKENS)
}

/// An error names its field, and says it first.
fn check_error(e: &TranslateError) {
    assert!(!e.field.is_empty(), "an error without a field: {e:?}");
    assert!(e.to_string().starts_with(&e.field), "{e}");
}

/// The turns alternate between `a` and `b`, each an object with a non-empty
/// array under `key`; the first is `a` when `a_first`.
fn check_turns(turns: &Value, key: &str, a: &str, b: &str, a_first: bool) {
    let turns = turns.as_array().expect("turns are an array");
    assert!(!turns.is_empty(), "no turns");
    let mut last: Option<&str> = None;
    for t in turns {
        let role = t["role"].as_str().expect("a turn has a role");
        assert!(role == a || role == b, "role {role:?}");
        assert_ne!(Some(role), last, "two {role} turns in a row: {turns:?}");
        last = Some(role);
        let blocks = t[key].as_array().expect("a turn's blocks are an array");
        assert!(!blocks.is_empty(), "an empty turn");
    }
    if a_first {
        assert_eq!(turns[0]["role"], a);
    }
}

fn translate(
    kind: ProviderKind,
    body: &[u8],
    direct: fn(&[u8], u64) -> Result<Vec<u8>, TranslateError>,
) -> Option<(Value, Map<String, Value>)> {
    let out = direct(body, DEFAULT_MAX_TOKENS);
    let t = Translation::for_request(kind, Endpoint::ChatCompletions).expect("translates chat");
    let via = t
        .request(body, DEFAULT_MAX_TOKENS)
        .map(|b| b.expect("a body"));
    assert_eq!(
        out, via,
        "Translation::request differs from the provider's own"
    );
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            check_error(&e);
            return None;
        }
    };
    let v: Value = serde_json::from_slice(&out).expect("the request is JSON");
    assert!(v.is_object());
    let req = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        _ => panic!("translated a body that is not a JSON object"),
    };
    Some((v, req))
}

fn check_paths(model: &str) {
    if let Ok(p) = gemini::generate_path(model, false) {
        let name = model.strip_prefix("models/").unwrap_or(model);
        assert_eq!(p, format!("/models/{name}:generateContent"));
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        );
        assert!(name != "." && name != "..");
        let s = gemini::generate_path(model, true).expect("the streamed path too");
        assert_eq!(s, format!("/models/{name}:streamGenerateContent?alt=sse"));
    } else {
        assert!(gemini::generate_path(model, true).is_err());
    }
    for (stream, tail) in [(false, "/converse"), (true, "/converse-stream")] {
        let p = bedrock::converse_path(model, stream);
        let enc = p
            .strip_prefix("/model/")
            .and_then(|p| p.strip_suffix(tail))
            .expect("/model/{id}/converse");
        let b = enc.as_bytes();
        let mut decoded = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                assert!(hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
                decoded.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                assert!(b[i].is_ascii_alphanumeric() || b"-_.~".contains(&b[i]));
                decoded.push(b[i]);
                i += 1;
            }
        }
        assert_eq!(
            decoded,
            model.as_bytes(),
            "the path decodes to the model id"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some((v, req)) = translate(ProviderKind::Anthropic, data, anthropic::chat_to_messages) {
        assert_eq!(v["model"], req["model"]);
        assert!(v["model"].is_string());
        assert_eq!(v["max_tokens"].as_u64(), cap(&req));
        check_turns(&v["messages"], "content", "user", "assistant", true);
        match &v.get("system") {
            None => {}
            Some(Value::String(s)) => assert!(!s.is_empty()),
            Some(Value::Array(a)) => assert!(a.len() > 1),
            Some(other) => panic!("system {other:?}"),
        }
    }
    if let Some((v, req)) = translate(ProviderKind::Gemini, data, gemini::chat_to_generate) {
        assert_eq!(v["generationConfig"]["maxOutputTokens"].as_u64(), cap(&req));
        check_turns(&v["contents"], "parts", "user", "model", false);
    }
    if let Some((v, req)) = translate(ProviderKind::Bedrock, data, bedrock::chat_to_converse) {
        assert_eq!(v["inferenceConfig"]["maxTokens"].as_u64(), cap(&req));
        check_turns(&v["messages"], "content", "user", "assistant", true);
        if let Some(tc) = v.get("toolConfig") {
            assert!(!tc["tools"].as_array().expect("tools").is_empty());
        }
    }
    // A body that is not a JSON object is refused as such by all three.
    if !matches!(serde_json::from_slice::<Value>(data), Ok(Value::Object(_))) {
        for e in [
            anthropic::chat_to_messages(data, 1).unwrap_err(),
            gemini::chat_to_generate(data, 1).unwrap_err(),
            bedrock::chat_to_converse(data, 1).unwrap_err(),
        ] {
            assert_eq!(e.field, "body");
        }
    }
    // The model's path pieces: the body's model, else the bytes themselves.
    match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(req)) => {
            if let Some(m) = req.get("model").and_then(Value::as_str) {
                check_paths(m);
            }
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(data) {
                check_paths(s);
            }
        }
    }
});
