//! The output cap a strict request reserves is the cap an upstream reads.
//!
//! Bodies are generated with the cap members of every endpoint (`null`, counts,
//! wrong types), their names escaped or not, given twice, with whitespace
//! around the colon, beside look-alikes nested in other members and inside
//! strings. Each body goes through the gateway's own steps: the probe (a
//! refused body reaches no upstream), then the cap the budget reserves (the
//! client's, or the gateway's default written into the body, or a lowered
//! one on the degrade path). The rewritten body is then read the way
//! upstreams read JSON, with serde_json decoding every name, taking the first
//! and the last of duplicate members alike: every reading of the cap must be
//! a count no larger than what was reserved, each cap name must appear at
//! most once, and nothing but the cap members may change.

use bursar::proxy::probe::probe;
use bursar::proxy::rewrite::with_output_cap;
use bursar::proxy::route::Endpoint;
use proptest::prelude::*;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// The gateway's default output cap in these tests.
const DEFAULT_CAP: u64 = 16_384;

const ENDPOINTS: [Endpoint; 4] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Responses,
    Endpoint::Embeddings,
];

/// A top-level object's members in order, names decoded, duplicates kept.
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Members, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A name with one of its characters written as a `\u` escape, or as is.
fn spelled(name: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(name.to_string()),
        (0..name.len()).prop_map(move |i| {
            let c = name.as_bytes()[i];
            format!("{}\\u{:04x}{}", &name[..i], c, &name[i + 1..])
        }),
        Just(name.replace('_', "\\u005F")),
    ]
}

fn cap_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("null".to_string()),
        4 => (0u64..200_000).prop_map(|n| n.to_string()),
        1 => Just("\"100\"".to_string()),
        1 => Just("1.5".to_string()),
        1 => Just("-1".to_string()),
    ]
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", " ", "\n  ", "\t"])
}

/// One member of a body, as text.
fn member() -> impl Strategy<Value = String> {
    let cap = (
        prop::sample::select(vec![
            "max_tokens",
            "max_completion_tokens",
            "max_output_tokens",
        ])
        .prop_flat_map(spelled),
        ws(),
        ws(),
        cap_value(),
    )
        .prop_map(|(name, a, b, v)| format!("\"{name}\"{a}:{b}{v}"));
    let other = prop::sample::select(vec![
        r#""messages":[{"role":"user","content":"\"max_tokens\":null, please"}]"#,
        r#""x":{"max_tokens":null,"max_completion_tokens":3}"#,
        r#""temperature":0.2"#,
        r#""input":"say \"max_output_tokens\": null""#,
        r#""stream":true"#,
        r#""n":2"#,
        r#""y":[{"max_output_tokens":null}]"#,
    ])
    .prop_map(str::to_string);
    prop_oneof![3 => cap, 2 => other]
}

fn body() -> impl Strategy<Value = String> {
    (prop::collection::vec(member(), 0..6), 0usize..6, ws(), ws()).prop_map(
        |(mut members, at, lead, trail)| {
            members.insert(at.min(members.len()), r#""model":"gpt-4o-mini""#.into());
            format!("{lead}{{{}}}{trail}", members.join(","))
        },
    )
}

/// What an upstream reads as each cap name: every value it is given.
fn readings<'a>(members: &'a Members, name: &str) -> Vec<&'a Value> {
    members
        .0
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn the_cap_an_upstream_reads_is_the_cap_reserved(
        body in body(),
        endpoint in prop::sample::select(ENDPOINTS.to_vec()),
        degrade_to in 16u64..20_000,
    ) {
        let bytes = body.as_bytes();
        // A body the probe refuses is answered 400 and reaches no upstream.
        let Ok(p) = probe(bytes) else { return Ok(()) };
        let Some(names) = endpoint.output_cap_member().map(|_| endpoint.output_cap_members()) else {
            return Ok(());
        };
        let client_cap = p.output_cap(endpoint);
        let present = p.output_cap_present(endpoint);
        let reserved_default = client_cap.unwrap_or(DEFAULT_CAP);

        // The strict path: the client's cap stands; without one the gateway
        // writes the default it reserved.
        let (sent, reserved, gateway_set) = match client_cap {
            Some(c) => (bytes.to_vec(), c, false),
            None => {
                let out = with_output_cap(bytes, endpoint, DEFAULT_CAP, present);
                prop_assert!(out.is_some(), "a probed body could not be capped: {body}");
                (out.unwrap(), DEFAULT_CAP, true)
            }
        };
        let mut cases = vec![(sent, reserved, gateway_set)];
        // The degrade path: a lower cap than the one reserved first.
        if degrade_to < reserved_default {
            let out = with_output_cap(bytes, endpoint, degrade_to, present);
            prop_assert!(out.is_some(), "a probed body could not be lowered: {body}");
            cases.push((out.unwrap(), degrade_to, true));
        }
        let before: Members = serde_json::from_slice(bytes).unwrap();
        for (sent, reserved, gateway_set) in cases {
            let text = String::from_utf8_lossy(&sent).into_owned();
            let after: Members = serde_json::from_slice(&sent)
                .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            let mut numeric = 0;
            for name in names {
                let got = readings(&after, name);
                prop_assert!(got.len() <= 1, "{name} given {} times: {text}", got.len());
                for v in got {
                    match v.as_u64() {
                        Some(n) => {
                            numeric += 1;
                            prop_assert!(n <= reserved, "{name}={n} > reserved {reserved}: {text}");
                            if gateway_set {
                                prop_assert_eq!(n, reserved, "{}: {}", name, text);
                            }
                        }
                        None => prop_assert!(
                            v.is_null() && !gateway_set,
                            "{name}={v} with the gateway's cap {reserved}: {text}"
                        ),
                    }
                }
            }
            prop_assert!(numeric > 0, "no cap reaches the upstream: {text}");
            // Everything else is as the client sent it.
            let others = |m: &Members| -> Vec<(String, Value)> {
                m.0.iter().filter(|(k, _)| !names.contains(&k.as_str())).cloned().collect()
            };
            prop_assert_eq!(others(&before), others(&after), "{}", text);
        }
    }
}

/// The regression the review found: a `null` cap was shadowed by a cap the
/// gateway prepended, and an upstream reading the last duplicate generated
/// uncapped.
#[test]
fn a_null_cap_is_rewritten_not_shadowed() {
    for (endpoint, body) in [
        (
            Endpoint::ChatCompletions,
            r#"{"model":"m","messages":[],"max_completion_tokens":null}"#,
        ),
        (
            Endpoint::ChatCompletions,
            r#"{"model":"m","max_tokens": null}"#,
        ),
        (
            Endpoint::Completions,
            r#"{"model":"m","max\u005ftokens":null}"#,
        ),
        (
            Endpoint::Responses,
            r#"{"model":"m","max_output_tokens" :null}"#,
        ),
    ] {
        let p = probe(body.as_bytes()).unwrap();
        assert_eq!(p.output_cap(endpoint), None, "{body}");
        let out = with_output_cap(
            body.as_bytes(),
            endpoint,
            77,
            p.output_cap_present(endpoint),
        )
        .unwrap();
        let m: Members = serde_json::from_slice(&out).unwrap();
        let caps: Vec<_> =
            m.0.iter()
                .filter(|(k, _)| endpoint.output_cap_members().contains(&k.as_str()))
                .collect();
        assert_eq!(caps.len(), 1, "{}", String::from_utf8_lossy(&out));
        assert_eq!(caps[0].1, 77, "{}", String::from_utf8_lossy(&out));
    }
}
