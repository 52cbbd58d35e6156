//! Input a body only points to (images, files, audio, stored prompts and
//! conversations, server-side tools) is found from the JSON structure, as an
//! upstream reads it: `prompt_bound_exception` is held to a reference that
//! walks serde_json's parsed value. Bodies are generated as JSON values whose
//! names and strings are the parts' words, near misses and plain text, then
//! written with random whitespace and with random characters of every string
//! (names included) written as `\u` escapes, which upstreams decode.

use bursar::tokens::{prompt_bound_exception, UNBOUNDED_INPUT_WORDS};
use proptest::prelude::*;
use serde_json::Value;

// The words are the gateway's list (the reference differs in how it reads
// the body, not in which words it looks for).
const WORDS: [&str; 12] = UNBOUNDED_INPUT_WORDS;

fn is_word(s: &str) -> bool {
    WORDS.contains(&s) || s.starts_with("web_search") || s.starts_with("mcp")
}

/// The reference: any name or string value that is a part's word, or a
/// member whose value replays stored input.
fn points_elsewhere(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, val)| {
            is_word(k)
                || (matches!(k.as_str(), "previous_response_id" | "conversation") && !val.is_null())
                || (k == "prompt" && val.is_object())
                || points_elsewhere(val)
        }),
        Value::Array(a) => a.iter().any(points_elsewhere),
        Value::String(s) => is_word(s),
        _ => false,
    }
}

fn names() -> Vec<&'static str> {
    vec![
        "type",
        "image_url",
        "image",
        "file_id",
        "text",
        "content",
        "prompt",
        "previous_response_id",
        "conversation",
        "url",
        "tools",
        "input",
        "mcp_servers",
        "role",
        "Image_url",
        "file",
        "x",
    ]
}

fn strings() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "image_url",
        "input_image",
        "input_file",
        "document",
        "web_search_preview",
        "web_searc",
        "mcp",
        "mc",
        "file_search",
        "code_interpreter",
        "Image_url",
        "image_url ",
        "the image_url of it",
        "hello world",
        "say \"image_url\"",
        "previous_response_id",
        "prompt",
        "",
        "résumé ✓",
    ])
    .prop_map(str::to_string)
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u32..1000).prop_map(Value::from),
        strings().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            (
                prop::sample::subsequence(names(), 0..5),
                prop::collection::vec(inner, 5)
            )
                .prop_map(|(keys, vals)| {
                    Value::Object(
                        keys.into_iter()
                            .map(str::to_string)
                            .zip(vals)
                            .collect::<serde_json::Map<_, _>>(),
                    )
                }),
        ]
    })
}

/// Writes `v` as JSON, escaping characters and spacing tokens as `rng` says.
fn write(v: &Value, rng: &mut u64, out: &mut String) {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let ws = |out: &mut String, r: u64| {
        out.push_str(["", "", " ", "\n "][(r % 4) as usize]);
    };
    match v {
        Value::Object(m) => {
            out.push('{');
            for (i, (k, val)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(out, next());
                write_string(k, next(), out);
                ws(out, next());
                out.push(':');
                ws(out, next());
                let mut r = next();
                write(val, &mut r, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, val) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let mut r = next();
                write(val, &mut r, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, next(), out),
        other => out.push_str(&other.to_string()),
    }
}

/// A JSON string with some characters as `\u` escapes (by the bits of `r`).
fn write_string(s: &str, r: u64, out: &mut String) {
    out.push('"');
    for (i, c) in s.chars().enumerate() {
        let escape = r.rotate_left(i as u32 * 7) & 7 == 0;
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if escape || (c as u32) < 0x20 => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn pointed_to_input_is_found_whatever_the_spelling(
        v in value(),
        seed in 1u64..u64::MAX,
    ) {
        let mut body = String::new();
        let mut rng = seed;
        write(&v, &mut rng, &mut body);
        let parsed: Value = serde_json::from_str(&body).unwrap();
        prop_assert_eq!(&parsed, &v, "the writer wrote {}", body);
        let expected = points_elsewhere(&v);
        let found = prompt_bound_exception(body.as_bytes());
        prop_assert_eq!(found.is_some(), expected, "{} found {:?}", body, found);
    }
}
