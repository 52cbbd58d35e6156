//! Property tests of the Bedrock translation through its public API: random
//! chat conversations become alternating Converse turns that keep every
//! text in order; arbitrary JSON never panics.

use bursar::providers::bedrock::chat_to_converse;
use proptest::prelude::*;
use serde_json::{json, Value};

/// One generated OpenAI message.
#[derive(Debug, Clone)]
enum Gen {
    System(String),
    User(String),
    /// A user message as content parts.
    UserParts(Vec<String>),
    Assistant(String),
    /// An assistant turn with optional text calling this many tools.
    AssistantCalls(Option<String>, usize),
    Tool(String),
}

fn text() -> impl Strategy<Value = String> {
    // Empty texts are allowed: they must vanish, not become blank blocks.
    prop_oneof![1 => Just(String::new()), 6 => "[a-z ]{1,12}"]
}

fn gen_message() -> impl Strategy<Value = Gen> {
    prop_oneof![
        1 => text().prop_map(Gen::System),
        4 => text().prop_map(Gen::User),
        1 => prop::collection::vec(text(), 0..3).prop_map(Gen::UserParts),
        3 => text().prop_map(Gen::Assistant),
        2 => (prop::option::of(text()), 1usize..=3)
            .prop_map(|(t, k)| Gen::AssistantCalls(t, k)),
        3 => text().prop_map(Gen::Tool),
    ]
}

/// The chat messages, the system texts, the plain (non-system, non-tool)
/// texts and the tool result texts, each in order, empties left out.
fn build(gens: &[Gen]) -> (Vec<Value>, Vec<String>, Vec<String>, Vec<String>) {
    let (mut msgs, mut system, mut plain, mut results) = (vec![], vec![], vec![], vec![]);
    let keep = |v: &mut Vec<String>, t: &str| {
        if !t.is_empty() {
            v.push(t.to_string())
        }
    };
    let mut next_id = 0;
    for g in gens {
        match g {
            Gen::System(t) => {
                keep(&mut system, t);
                msgs.push(json!({ "role": "system", "content": t }));
            }
            Gen::User(t) => {
                keep(&mut plain, t);
                msgs.push(json!({ "role": "user", "content": t }));
            }
            Gen::UserParts(ts) => {
                let parts: Vec<Value> = ts
                    .iter()
                    .map(|t| {
                        keep(&mut plain, t);
                        json!({ "type": "text", "text": t })
                    })
                    .collect();
                msgs.push(json!({ "role": "user", "content": parts }));
            }
            Gen::Assistant(t) => {
                keep(&mut plain, t);
                msgs.push(json!({ "role": "assistant", "content": t }));
            }
            Gen::AssistantCalls(t, k) => {
                if let Some(t) = t {
                    keep(&mut plain, t);
                }
                let calls: Vec<Value> = (0..*k)
                    .map(|_| {
                        next_id += 1;
                        json!({
                            "id": format!("call_{next_id}"),
                            "type": "function",
                            "function": { "name": "f", "arguments": format!("{{\"i\":{next_id}}}") },
                        })
                    })
                    .collect();
                msgs.push(json!({ "role": "assistant", "content": t, "tool_calls": calls }));
            }
            Gen::Tool(t) => {
                keep(&mut results, t);
                msgs.push(json!({ "role": "tool", "tool_call_id": "call_x", "content": t }));
            }
        }
    }
    (msgs, system, plain, results)
}

fn texts(blocks: &[Value]) -> Vec<String> {
    blocks
        .iter()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn conversations_alternate_and_keep_every_text_in_order(
        gens in prop::collection::vec(gen_message(), 0..24),
    ) {
        let (msgs, system, plain, results) = build(&gens);
        let req = json!({
            "model": "m",
            "messages": msgs,
            "tools": [{ "type": "function", "function": { "name": "f" } }],
        });
        let res = chat_to_converse(req.to_string().as_bytes(), 64);
        // Which messages produce a turn, in order: the first must be a user's.
        let first = gens.iter().find(|g| match g {
            Gen::System(_) => false,
            Gen::User(t) | Gen::Assistant(t) => !t.is_empty(),
            Gen::UserParts(ts) => ts.iter().any(|t| !t.is_empty()),
            Gen::AssistantCalls(..) | Gen::Tool(_) => true,
        });
        let ok = matches!(first, Some(Gen::User(_) | Gen::UserParts(_) | Gen::Tool(_)));
        prop_assert_eq!(res.is_ok(), ok, "{:?}", res);
        let Ok(out) = res else { return Ok(()) };
        let out: Value = serde_json::from_slice(&out).unwrap();

        let got_system = out.get("system").and_then(Value::as_array).map(|s| texts(s));
        prop_assert_eq!(got_system.unwrap_or_default(), system);

        let turns = out["messages"].as_array().unwrap();
        let (mut got_plain, mut got_results) = (vec![], vec![]);
        for (i, t) in turns.iter().enumerate() {
            let want = if i % 2 == 0 { "user" } else { "assistant" };
            prop_assert_eq!(t["role"].as_str(), Some(want));
            let blocks = t["content"].as_array().unwrap();
            prop_assert!(!blocks.is_empty());
            let mut text_seen = false;
            for b in blocks {
                if let Some(s) = b.get("text") {
                    let s = s.as_str().unwrap();
                    prop_assert!(!s.is_empty(), "blank text block");
                    got_plain.push(s.to_string());
                    text_seen = true;
                } else if let Some(r) = b.get("toolResult") {
                    prop_assert_eq!(want, "user");
                    prop_assert!(!text_seen, "toolResult after text");
                    got_results.extend(texts(r["content"].as_array().unwrap()));
                } else {
                    prop_assert!(b.get("toolUse").is_some(), "unexpected block {}", b);
                    prop_assert_eq!(want, "assistant");
                }
            }
        }
        prop_assert_eq!(got_plain, plain);
        prop_assert_eq!(got_results, results);
    }

    /// Arbitrary JSON in every position of a request never panics.
    #[test]
    fn arbitrary_json_never_panics(req in arb_json(3)) {
        let _ = chat_to_converse(req.to_string().as_bytes(), 8);
        let wrapped = json!({ "model": "m", "messages": [req.clone()], "tools": req.clone(),
                              "tool_choice": req.clone(), "stop": req });
        let _ = chat_to_converse(wrapped.to_string().as_bytes(), 8);
    }
}

fn arb_json(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "user",
            "assistant",
            "system",
            "tool",
            "text",
            "image_url",
            "function",
            "auto",
            "none",
            "required",
            "data:image/png;base64,AA==",
            "",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(depth, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "role",
                    "content",
                    "type",
                    "text",
                    "tool_calls",
                    "id",
                    "function",
                    "name",
                    "arguments",
                    "tool_call_id",
                    "image_url",
                    "url",
                    "messages",
                    "parameters",
                ]),
                inner,
                0..4,
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}
