//! The one-pass probe of request bodies against serde_json: whatever body
//! `probe::scan` accepts, serde_json accepts with the same fields. Bodies are
//! generated from JSON's pieces (the probe's fields with values of every
//! type, unknown members nested a few deep, escapes, whitespace, duplicates),
//! some then cut or given a stray byte; `scan` may decline any of them (the
//! gateway then asks serde_json), never accept one serde_json refuses.

use bursar::proxy::probe::scan;
use bursar::proxy::probe::Probe;
use proptest::prelude::*;

/// A JSON value as text, valid or not, nested up to `depth`.
fn value(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..50).prop_map(|n| n.to_string()),
        any::<i32>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "null",
            "true",
            "false",
            "nul",
            "tru",
            "1.5",
            "-0",
            "0",
            "01",
            "1e3",
            "2E-2",
            "1.",
            "-",
            "18446744073709551616",
            "\"\"",
            "\"plain text\"",
            "\"gpt-4o-mini\"",
            r#""with \"quotes\" and \\ and \n""#,
            r#""\u00e9\ud83d\ude00""#,
            r#""lone \ud83d""#,
            r#""bad \q""#,
            r#""short \u12""#,
            "\"ctrl \u{1} char\"",
            "\"é ü 字\"",
            "\"a fairly long string that spans several eight-byte words of text\"",
        ])
        .prop_map(str::to_string),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let inner = value(depth - 1);
    prop_oneof![
        3 => leaf,
        1 => prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
        1 => prop::collection::vec((key(), inner), 0..4).prop_map(|m| {
            let members: Vec<String> = m.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", members.join(","))
        }),
    ]
    .boxed()
}

/// A member name: the probe's fields (sometimes escaped), others, and bad keys.
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "\"model\"",
        "\"stream\"",
        "\"stream_options\"",
        "\"include_usage\"",
        "\"max_tokens\"",
        "\"max_completion_tokens\"",
        "\"max_output_tokens\"",
        "\"n\"",
        "\"best_of\"",
        "\"user\"",
        "\"metadata\"",
        "\"messages\"",
        "\"temperature\"",
        r#""m\u006fdel""#,
        "\"\"",
        "\"é\"",
        "1",
        "model",
    ])
    .prop_map(str::to_string)
}

/// One of the probe's fields with a value of its own type (or `null`), so
/// that generated bodies are often valid and fields often repeat.
fn typed_member() -> impl Strategy<Value = String> {
    let text = prop::sample::select(vec!["\"gpt-4o-mini\"", "\"o3\"", "\"\"", "\"é\"", "null"]);
    let flag = prop::sample::select(vec!["true", "false", "null"]);
    let count = prop_oneof![
        (0u64..5000).prop_map(|n| n.to_string()),
        Just("null".to_string())
    ];
    prop_oneof![
        (prop::sample::select(vec!["\"model\"", "\"user\""]), text)
            .prop_map(|(k, v)| format!("{k}:{v}")),
        flag.clone().prop_map(|v| format!("\"stream\":{v}")),
        flag.prop_map(|v| format!("\"stream_options\":{{\"include_usage\":{v}}}")),
        (
            prop::sample::select(vec![
                "\"max_tokens\"",
                "\"max_completion_tokens\"",
                "\"max_output_tokens\"",
                "\"n\"",
                "\"best_of\"",
            ]),
            count,
        )
            .prop_map(|(k, v)| format!("{k}:{v}")),
        Just(r#""metadata":{"team":"a","n":1}"#.to_string()),
    ]
}

/// Whitespace, usually none.
fn space() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\n  ", "\t", "\r\n"])
}

/// A request body: an object of members (or, rarely, something else), then
/// possibly damaged.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let member = prop_oneof![
        2 => (key(), value(3), space(), space())
            .prop_map(|(k, v, a, b)| format!("{a}{k}{b}:{a}{v}{b}")),
        3 => typed_member(),
    ];
    let object = (prop::collection::vec(member, 0..8), space(), space())
        .prop_map(|(m, a, b)| format!("{a}{{{}}}{b}", m.join(",")));
    let damage = prop_oneof![
        6 => Just(None),
        1 => (any::<prop::sample::Index>(), prop::sample::select(vec![
            b',', b'}', b']', b'"', b'\\', b':', b' ', b'0', b'-', 0x01, 0xff,
        ])).prop_map(Some),
    ];
    let cut = prop_oneof![6 => Just(None), 1 => any::<prop::sample::Index>().prop_map(Some)];
    (object, damage, cut).prop_map(|(text, damage, cut)| {
        let mut bytes = text.into_bytes();
        if let Some((at, byte)) = damage {
            let i = at.index(bytes.len() + 1);
            bytes.insert(i, byte);
        }
        if let Some(at) = cut {
            bytes.truncate(at.index(bytes.len() + 1));
        }
        bytes
    })
}

/// The fields of a probe, comparable.
fn fields(p: &Probe<'_>) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        p.model.as_deref(),
        p.stream,
        p.stream_options,
        p.max_tokens,
        p.max_completion_tokens,
        p.max_output_tokens,
        p.n,
        p.best_of,
        p.user.as_deref(),
        p.metadata,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn what_the_scan_accepts_serde_accepts_alike(body in body()) {
        if let Some(ours) = scan(&body) {
            match serde_json::from_slice::<Probe<'_>>(&body) {
                Ok(theirs) => prop_assert_eq!(fields(&ours), fields(&theirs)),
                Err(e) => prop_assert!(
                    false,
                    "scan accepted what serde refuses ({}): {}",
                    e,
                    String::from_utf8_lossy(&body)
                ),
            }
        }
    }
}

/// The scan is not merely safe but used: the shapes clients send are read
/// by it, not passed on to serde_json.
#[test]
fn ordinary_bodies_are_read_by_the_scan() {
    for body in [
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#,
        r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say \"hi\"\n"}],"max_tokens":64,"temperature":0.2,"user":"u-1","metadata":{"team":"search"}}"#,
        r#"{"model":"text-embedding-3-small","input":["a","b"],"dimensions":256}"#,
        r#"{"model":"gpt-4o","input":[{"role":"user","content":[{"type":"input_text","text":"x"}]}],"max_output_tokens":100,"tools":[{"type":"function","name":"f","parameters":{"type":"object","properties":{}}}]}"#,
    ] {
        let ours = scan(body.as_bytes()).unwrap_or_else(|| panic!("declined: {body}"));
        let theirs: Probe<'_> = serde_json::from_slice(body.as_bytes()).unwrap();
        assert_eq!(fields(&ours), fields(&theirs));
    }
}
