//! The body sent upstream when the gateway must change it: the output cap a
//! strict budget reserved, `stream_options.include_usage` on a stream the
//! client did not ask usage for. Each is written into the client's bytes
//! (every other byte kept, member names compared after unescaping), never
//! through a parse and re-serialization.

use super::route::Endpoint;
use crate::tokens::json;

/// The body with `stream_options.include_usage` set to true, so the upstream
/// reports usage on a stream the client did not ask it for. Only that member
/// changes (added, or its value replaced; a `null` `stream_options` becomes
/// an object); every other byte of the body is kept. `None` when the body is
/// not an object the member walker reads whole. `present`: whether the probe
/// saw a `stream_options` member; without one the member is added after the
/// opening brace with no walk of the body.
pub fn with_usage_requested(body: &[u8], present: bool) -> Option<Vec<u8>> {
    if !present {
        return with_first_member(body, "stream_options", br#"{"include_usage":true}"#);
    }
    let (s, e) = object_span(body)?;
    let mut options = None;
    json::each_member(body, s, e, |key, vs, ve| {
        if key_is(key, "stream_options") {
            options = Some((vs, ve));
        }
        Some(())
    })?;
    Some(match options {
        // An object: set its include_usage (the probe took `null` or an
        // object; a duplicate member was refused by it).
        Some((vs, ve)) if body[vs] == b'{' => splice(
            body,
            vs,
            ve,
            &set_members(body, vs, ve, &["include_usage"], b"true")?,
        ),
        _ => {
            let options = br#"{"include_usage":true}"#;
            splice(
                body,
                s,
                e,
                &set_members(body, s, e, &["stream_options"], options)?,
            )
        }
    })
}

/// `body` with `b[s..e]` replaced by `with`.
fn splice(body: &[u8], s: usize, e: usize, with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() - (e - s) + with.len());
    out.extend_from_slice(&body[..s]);
    out.extend_from_slice(with);
    out.extend_from_slice(&body[e..]);
    out
}

/// `body` with `"name":value` added as its object's first member, without
/// a walk: only for a member the probe saw absent (the probe reads every
/// top-level name, escaped ones decoded, so none can be shadowed).
fn with_first_member(body: &[u8], name: &str, value: &[u8]) -> Option<Vec<u8>> {
    let open = json::skip_ws(body, 0);
    if body.get(open) != Some(&b'{') {
        return None;
    }
    let empty = body.get(json::skip_ws(body, open + 1)) == Some(&b'}');
    let mut out = Vec::with_capacity(body.len() + name.len() + value.len() + 4);
    out.extend_from_slice(&body[..=open]);
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(&body[open + 1..]);
    Some(out)
}

/// The span of the one object a body holds: its opening brace and the index
/// after its closing one (whitespace around it excluded).
fn object_span(body: &[u8]) -> Option<(usize, usize)> {
    let s = json::skip_ws(body, 0);
    let e = body.iter().rposition(|b| !json::is_ws(*b))? + 1;
    (body.get(s) == Some(&b'{') && body[e - 1] == b'}').then_some((s, e))
}

/// Whether a member's raw key (escapes left in) names `name`: compared as
/// an upstream's parser reads it, after unescaping.
fn key_is(raw: &[u8], name: &str) -> bool {
    if !raw.contains(&b'\\') {
        return raw == name.as_bytes();
    }
    // An escaped name is never shorter than what it decodes to.
    if raw.len() < name.len() {
        return false;
    }
    let mut key = Vec::with_capacity(raw.len());
    json::unescape_into(raw, &mut key);
    key == name.as_bytes()
}

/// The object at `b[s..e]` rewritten so that every member named one of
/// `names` (compared unescaped, duplicates included) holds `value`; when
/// none does, `"names[0]":value` is added as its first member. Whitespace,
/// order and every other member are kept byte for byte. `None` when the
/// object cannot be walked whole.
fn set_members(b: &[u8], s: usize, e: usize, names: &[&str], value: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(e - s + value.len());
    let mut copied = s;
    let mut replaced = 0;
    json::each_member(b, s, e, |key, vs, ve| {
        if names.iter().any(|n| key_is(key, n)) {
            out.extend_from_slice(&b[copied..vs]);
            out.extend_from_slice(value);
            copied = ve;
            replaced += 1;
        }
        Some(())
    })?;
    if replaced == 0 {
        return with_first_member(&b[s..e], names[0], value);
    }
    out.extend_from_slice(&b[copied..e]);
    Some(out)
}

/// The body with its output cap set to `cap`, so that whatever an upstream
/// reads as the cap is `cap`: every cap member the client sent (under any
/// of the endpoint's names, `null` or a count, however its name is escaped)
/// gets the value, or, when there is none, the endpoint's current name is
/// added. Nothing else in the body changes. `None` when the endpoint has no
/// cap or the body is not an object the member walker reads whole; the
/// caller must then not forward the request as capped. `present`: whether
/// the probe saw any cap member, `null` included
/// ([`Probe::output_cap_present`](super::probe::Probe::output_cap_present));
/// without one the member is added with no walk of the body.
pub fn with_output_cap(
    body: &[u8],
    endpoint: Endpoint,
    cap: u64,
    present: bool,
) -> Option<Vec<u8>> {
    let names = endpoint.output_cap_members();
    if names.is_empty() {
        return None;
    }
    let mut value = Vec::with_capacity(20);
    crate::http::response::push_decimal(&mut value, cap);
    if !present {
        return with_first_member(body, names[0], &value);
    }
    let (s, e) = object_span(body)?;
    Some(splice(body, s, e, &set_members(body, s, e, names, &value)?))
}

/// The body with its `model` member set to `model` (a model group's target
/// or a fallback model names another model than the client's). Every other
/// byte is kept. `None` when the body is not an object the walker reads.
pub fn with_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let value = serde_json::to_vec(model).ok()?;
    let (s, e) = object_span(body)?;
    Some(splice(
        body,
        s,
        e,
        &set_members(body, s, e, &["model"], &value)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::probe::probe;

    #[test]
    fn output_caps_are_written_over_every_member_of_their_names() {
        let body = br#" {"model":"m","messages":[]}"#;
        let out = with_output_cap(body, Endpoint::ChatCompletions, 16, false).unwrap();
        assert_eq!(
            out,
            br#" {"max_completion_tokens":16,"model":"m","messages":[]}"#
        );
        // A cap the client set (or nulled) is rewritten in place, under every
        // name it was given, and nothing else changes.
        let out = with_output_cap(
            br#"{"model":"m", "max_tokens" : 100 }"#,
            Endpoint::ChatCompletions,
            9,
            true,
        )
        .unwrap();
        assert_eq!(out, br#"{"model":"m", "max_tokens" : 9 }"#);
        let out = with_output_cap(
            br#"{"max_completion_tokens":null,"model":"m","max_tokens":null}"#,
            Endpoint::ChatCompletions,
            9,
            true,
        )
        .unwrap();
        assert_eq!(
            out,
            br#"{"max_completion_tokens":9,"model":"m","max_tokens":9}"#
        );
        let out = with_output_cap(
            br#"{"model":"m","max\u005foutput_tokens":null}"#,
            Endpoint::Responses,
            9,
            true,
        )
        .unwrap();
        assert_eq!(out, br#"{"model":"m","max\u005foutput_tokens":9}"#);
        assert!(with_output_cap(b"{}", Endpoint::Embeddings, 1, false).is_none());
        assert_eq!(
            with_model(br#"{"model":"a", "n":1,"\u006dodel":"b"}"#, "c\"d").unwrap(),
            br#"{"model":"c\"d", "n":1,"\u006dodel":"c\"d"}"#
        );
        assert_eq!(
            with_model(br#"{"n":1}"#, "m").unwrap(),
            br#"{"model":"m","n":1}"#
        );
        assert_eq!(
            with_output_cap(b" {} ", Endpoint::Completions, 1, false).unwrap(),
            br#" {"max_tokens":1} "#
        );
    }

    #[test]
    fn usage_is_requested_without_changing_anything_else() {
        let body = br#" {"model":"m","stream":true,"messages":[]}"#;
        let p = probe(body).unwrap();
        assert!(p.streaming() && !p.client_wants_usage());
        let out = with_usage_requested(body, p.stream_options.is_present()).unwrap();
        assert_eq!(
            out,
            br#" {"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
        let body =
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1.50}}"#;
        let p = probe(body).unwrap();
        assert!(!p.client_wants_usage());
        let out = with_usage_requested(body, p.stream_options.is_present()).unwrap();
        assert_eq!(
            out,
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true,"x":1.50}}"#
        );
        for (body, want) in [
            (
                &br#"{"model":"m","stream_options":null}"#[..],
                &br#"{"model":"m","stream_options":{"include_usage":true}}"#[..],
            ),
            (
                br#"{"model":"m","stream_options":{ }}"#,
                br#"{"model":"m","stream_options":{"include_usage":true }}"#,
            ),
            (
                br#"{"model":"m","stream\u005foptions":{"x":[]}}"#,
                br#"{"model":"m","stream\u005foptions":{"include_usage":true,"x":[]}}"#,
            ),
        ] {
            let p = probe(body).unwrap();
            assert!(p.stream_options.is_present());
            assert_eq!(
                String::from_utf8_lossy(&with_usage_requested(body, true).unwrap()),
                String::from_utf8_lossy(want)
            );
        }
    }
}
