//! Properties of the Gemini translation (src/providers/gemini*.rs): random
//! chat conversations translate into alternating `contents` that keep every
//! text, call and result in order; no input, JSON or not, ever panics; a
//! stream split anywhere translates as when fed whole.

use bursar::providers::gemini::{
    chat_to_generate, error_message, generate_path, generate_to_chat, usage_from_metadata,
};
use bursar::providers::gemini_stream::StreamTranslator;
use proptest::prelude::*;
use serde_json::{json, Value};

/// One generated OpenAI message.
#[derive(Debug, Clone)]
enum Gen {
    System(String),
    User(String),
    /// A user message given as text parts.
    UserParts(Vec<String>),
    Assistant(String),
    /// An assistant turn with optional text calling this many tools (1..=3).
    AssistantCalls(Option<String>, usize),
    /// A tool result answering the oldest pending call (skipped when none).
    Tool(String),
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[a-z ]{0,6}",
        1 => any::<String>(),
        1 => Just(String::new()),
    ]
}

fn gen_message() -> impl Strategy<Value = Gen> {
    prop_oneof![
        1 => text().prop_map(Gen::System),
        4 => text().prop_map(Gen::User),
        1 => prop::collection::vec(text(), 0..3).prop_map(Gen::UserParts),
        3 => text().prop_map(Gen::Assistant),
        2 => (prop::option::of(text()), 1usize..=3).prop_map(|(t, k)| Gen::AssistantCalls(t, k)),
        3 => text().prop_map(Gen::Tool),
    ]
}

/// What the translation must keep, in order.
#[derive(Debug, Default, PartialEq)]
struct Kept {
    system: Vec<String>,
    texts: Vec<String>,
    /// (name, args) of each call.
    calls: Vec<(String, Value)>,
    /// (name, result text) of each result.
    results: Vec<(String, String)>,
}

fn build(gens: &[Gen]) -> (Vec<Value>, Kept) {
    let mut msgs = Vec::new();
    let mut kept = Kept::default();
    let mut pending: Vec<(String, String)> = Vec::new();
    let mut next_id = 0;
    let keep_text = |kept: &mut Kept, t: &str| {
        if !t.is_empty() {
            kept.texts.push(t.to_string());
        }
    };
    for (i, g) in gens.iter().enumerate() {
        match g {
            Gen::System(s) => {
                if !s.is_empty() {
                    kept.system.push(s.clone());
                }
                msgs.push(json!({ "role": if i % 2 == 0 { "system" } else { "developer" }, "content": s }));
            }
            Gen::User(s) => {
                keep_text(&mut kept, s);
                msgs.push(json!({ "role": "user", "content": s }));
            }
            Gen::UserParts(parts) => {
                for p in parts {
                    keep_text(&mut kept, p);
                }
                let parts: Vec<Value> = parts
                    .iter()
                    .map(|p| json!({ "type": "text", "text": p }))
                    .collect();
                msgs.push(json!({ "role": "user", "content": parts }));
            }
            Gen::Assistant(s) => {
                keep_text(&mut kept, s);
                msgs.push(json!({ "role": "assistant", "content": s }));
            }
            Gen::AssistantCalls(t, k) => {
                if let Some(t) = t {
                    keep_text(&mut kept, t);
                }
                let calls: Vec<Value> = (0..*k)
                    .map(|j| {
                        next_id += 1;
                        let id = format!("call_{next_id}");
                        let name = format!("f{j}");
                        let args = json!({ "i": next_id, "s": format!("{i}") });
                        pending.push((id.clone(), name.clone()));
                        kept.calls.push((name.clone(), args.clone()));
                        json!({
                            "id": id,
                            "type": "function",
                            "function": { "name": name, "arguments": args.to_string() },
                        })
                    })
                    .collect();
                msgs.push(json!({ "role": "assistant", "content": t, "tool_calls": calls }));
            }
            Gen::Tool(s) => {
                if pending.is_empty() {
                    continue;
                }
                let (id, name) = pending.remove(0);
                // Never a JSON object, so it is sent as {"content": ...}.
                let content = format!("r{i}:{s}");
                kept.results.push((name, content.clone()));
                msgs.push(json!({ "role": "tool", "tool_call_id": id, "content": content }));
            }
        }
    }
    (msgs, kept)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn conversations_alternate_and_keep_everything_in_order(
        gens in prop::collection::vec(gen_message(), 0..16),
    ) {
        let (msgs, kept) = build(&gens);
        let req = json!({ "model": "gemini-2.5-flash", "messages": msgs });
        let res = chat_to_generate(req.to_string().as_bytes(), 256);
        let has_turn =
            !kept.texts.is_empty() || !kept.calls.is_empty() || !kept.results.is_empty();
        prop_assert_eq!(res.is_ok(), has_turn, "{:?}", res);
        let Ok(out) = res else {
            prop_assert_eq!(res.unwrap_err().field, "messages");
            return Ok(());
        };
        let out: Value = serde_json::from_slice(&out).expect("valid JSON");

        let mut got = Kept::default();
        if let Some(s) = out.get("systemInstruction") {
            let parts = s["parts"].as_array().unwrap();
            prop_assert_eq!(parts.len(), 1);
            got.system = vec![parts[0]["text"].as_str().unwrap().to_string()];
        }
        let contents = out["contents"].as_array().unwrap();
        prop_assert!(!contents.is_empty());
        let mut prev: Option<&str> = None;
        for c in contents {
            let role = c["role"].as_str().unwrap();
            prop_assert!(role == "user" || role == "model");
            prop_assert_ne!(Some(role), prev, "roles alternate");
            prev = Some(role);
            let parts = c["parts"].as_array().unwrap();
            prop_assert!(!parts.is_empty());
            let mut text_seen = false;
            for p in parts {
                if let Some(t) = p.get("text") {
                    let t = t.as_str().unwrap();
                    prop_assert!(!t.is_empty());
                    got.texts.push(t.to_string());
                    text_seen = true;
                } else if let Some(f) = p.get("functionCall") {
                    prop_assert_eq!(role, "model");
                    got.calls.push((f["name"].as_str().unwrap().into(), f["args"].clone()));
                } else if let Some(f) = p.get("functionResponse") {
                    prop_assert_eq!(role, "user");
                    prop_assert!(!text_seen, "function responses come first");
                    got.results.push((
                        f["name"].as_str().unwrap().into(),
                        f["response"]["content"].as_str().unwrap().into(),
                    ));
                } else {
                    prop_assert!(false, "unexpected part {}", p);
                }
            }
        }
        let want = Kept {
            system: if kept.system.is_empty() {
                Vec::new()
            } else {
                vec![kept.system.join("\n\n")]
            },
            ..kept
        };
        prop_assert_eq!(got, want);
        prop_assert_eq!(&out["generationConfig"]["maxOutputTokens"], &json!(256));
    }

    #[test]
    fn garbage_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = chat_to_generate(&bytes, 1);
        let _ = generate_to_chat(&bytes, "m", 0);
        let _ = error_message(&bytes);
        let _ = generate_path(&String::from_utf8_lossy(&bytes), true);
        let mut t = StreamTranslator::new("m", 0, true);
        let mut out = Vec::new();
        let _ = t.feed(&bytes, &mut out);
        let _ = t.finish(&mut out);
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        let body = v.to_string();
        let _ = chat_to_generate(body.as_bytes(), 1);
        let _ = generate_to_chat(body.as_bytes(), "m", 0);
        let _ = error_message(body.as_bytes());
        let _ = usage_from_metadata(&v);
        // Inside the request and response shapes, where the walkers go.
        for wrapped in [
            json!({ "messages": [v.clone()] }),
            json!({ "messages": [{ "role": "user", "content": [v.clone()] }] }),
            json!({ "messages": [{ "role": "assistant", "tool_calls": [v.clone()] }] }),
            json!({ "messages": [{ "role": "user", "content": "x" }], "tools": [v.clone()],
                    "tool_choice": v.clone(), "response_format": v.clone(), "stop": v.clone() }),
        ] {
            let _ = chat_to_generate(wrapped.to_string().as_bytes(), 1);
        }
        for wrapped in [
            json!({ "candidates": [v.clone()], "usageMetadata": v.clone() }),
            json!({ "candidates": [{ "content": { "parts": [v.clone()] }, "finishReason": v.clone() }] }),
            json!({ "promptFeedback": v.clone() }),
        ] {
            let body = wrapped.to_string();
            let _ = generate_to_chat(body.as_bytes(), "m", 0);
            let mut t = StreamTranslator::new("m", 0, true);
            let mut out = Vec::new();
            let mut ev = b"data: ".to_vec();
            ev.extend_from_slice(body.as_bytes());
            ev.extend_from_slice(b"\n\n");
            let _ = t.feed(&ev, &mut out);
            let _ = t.finish(&mut out);
        }
    }

    /// A Gemini stream of random text pieces and calls, cut at random
    /// places: the same output as fed whole.
    #[test]
    fn a_stream_split_anywhere_translates_the_same(
        pieces in prop::collection::vec(text(), 0..6),
        calls in 0usize..3,
        include_usage in any::<bool>(),
        crlf in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let nl: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let mut events: Vec<Value> = pieces
            .iter()
            .map(|p| json!({ "candidates": [{ "content": { "role": "model", "parts": [{ "text": p }] }, "index": 0 }],
                              "usageMetadata": { "promptTokenCount": 4 }, "responseId": "r" }))
            .collect();
        let fc: Vec<Value> = (0..calls)
            .map(|i| json!({ "functionCall": { "name": format!("f{i}"), "args": { "i": i } } }))
            .collect();
        events.push(json!({ "candidates": [{ "content": { "role": "model", "parts": fc },
                                              "finishReason": "STOP", "index": 0 }],
                            "usageMetadata": { "promptTokenCount": 4, "candidatesTokenCount": 9 },
                            "responseId": "r" }));
        let mut input = Vec::new();
        for e in &events {
            input.extend_from_slice(b"data: ");
            input.extend_from_slice(e.to_string().as_bytes());
            input.extend_from_slice(nl);
            input.extend_from_slice(nl);
        }
        let mut t = StreamTranslator::new("m", 1, include_usage);
        let mut whole = Vec::new();
        t.feed(&input, &mut whole).unwrap();
        t.finish(&mut whole).unwrap();
        prop_assert!(t.usage_complete());

        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        at.sort_unstable();
        let mut t = StreamTranslator::new("m", 1, include_usage);
        let mut split = Vec::new();
        let mut prev = 0;
        for c in at.into_iter().chain([input.len()]) {
            t.feed(&input[prev..c], &mut split).unwrap();
            prev = c;
        }
        t.finish(&mut split).unwrap();
        prop_assert_eq!(&split, &whole);

        let text: String = std::str::from_utf8(&whole)
            .unwrap()
            .split_terminator("\n\n")
            .filter_map(|e| serde_json::from_str::<Value>(e.strip_prefix("data: ")?).ok())
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str().map(str::to_string))
            .collect();
        prop_assert_eq!(text, pieces.concat());
        prop_assert_eq!(t.usage().unwrap().completion_tokens, 9);
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![
            "[a-z_]{0,8}",
            Just("data:image/png;base64,AAAA".to_string()),
            Just("https://x.example/a.png".to_string()),
            Just("{\"a\":1}".to_string()),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            Just("role".to_string()),
            Just("content".to_string()),
            Just("type".to_string()),
            Just("text".to_string()),
            Just("parts".to_string()),
            Just("functionCall".to_string()),
            Just("name".to_string()),
            Just("args".to_string()),
            Just("function".to_string()),
            Just("arguments".to_string()),
            Just("image_url".to_string()),
            Just("url".to_string()),
            Just("index".to_string()),
            Just("thought".to_string()),
            Just("error".to_string()),
            Just("message".to_string()),
            Just("promptTokenCount".to_string()),
            "[a-zA-Z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
