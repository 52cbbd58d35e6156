//! The stream translators (Anthropic and Gemini SSE, Bedrock's
//! ConverseStream in the AWS event stream) on any bytes, fed whole, a byte
//! at a time, and in pieces the input chooses: the same output, the same
//! error at the same place, the same usage and state, never a panic. The
//! output is `data: <JSON>` events (`[DONE]` or an error last), every chunk
//! a `chat.completion.chunk` (with `"usage"` when asked), and a stream that
//! ended with `[DONE]` and the provider's final usage carries it in its
//! usage chunk, as the gateway's meter reads it back.
//!
//! The first byte: bits 0-1 the provider (0 Anthropic, 1 Gemini, 2 Bedrock
//! with events written as text and framed here, 3 Bedrock on raw bytes),
//! bit 2 `include_usage` (on: the proxy's own `Translation::stream`), bits
//! 3-7 the seed of the pieces. For 2, each line of the rest is one message:
//! `name=value;name=value <payload>`, string headers then the payload.
#![no_main]
use bursar::providers::eventstream;
use bursar::providers::translate::{StreamTranslation, Translation};
use bursar::providers::{anthropic_stream, bedrock_stream, gemini_stream, TranslateError};
use bursar::tokens::{Finished, ModelFamily, Protocol, StreamEnding, StreamMeter, Usage};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const MODEL: &str = "some-model";
const CREATED: i64 = 1_700_000_000;

/// Pieces of `b`, of 0 to 63 bytes, from `seed`.
fn pieces(b: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((x >> 16) as usize % 64).min(b.len() - i);
        out.push(&b[i..i + n]);
        i += n;
    }
    out.push(&[]);
    out
}

/// Bedrock messages written as lines of text, framed.
fn frame(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let (spec, payload) = line.split_once(' ').unwrap_or((&line, ""));
        let headers: Vec<(&str, &str)> = spec
            .split(';')
            .filter_map(|h| h.split_once('='))
            // The encoder refuses empty names as the decoder does (raw
            // frames with one reach the decoder in the eventstream target).
            .filter(|(n, _)| !n.is_empty())
            .map(|(n, v)| {
                let mut end = n.len().min(255);
                while !n.is_char_boundary(end) {
                    end -= 1;
                }
                (&n[..end], v)
            })
            .collect();
        out.extend(eventstream::encode(&headers, payload.as_bytes()));
    }
    out
}

fn translator(provider: u8, include_usage: bool) -> StreamTranslation {
    let t = match provider {
        0 => Translation::AnthropicChat,
        1 => Translation::GeminiChat,
        _ => Translation::BedrockChat,
    };
    if include_usage {
        return t.stream(MODEL, CREATED).expect("a stream translator");
    }
    match t {
        Translation::AnthropicChat => StreamTranslation::Anthropic(
            anthropic_stream::StreamTranslator::new(MODEL, CREATED, false),
        ),
        Translation::GeminiChat => {
            StreamTranslation::Gemini(gemini_stream::StreamTranslator::new(MODEL, CREATED, false))
        }
        _ => {
            StreamTranslation::Bedrock(bedrock_stream::StreamTranslator::new(MODEL, CREATED, false))
        }
    }
}

/// What a run gives: output, the first error (and the feed it came at, in
/// bytes fed before the failing piece ended), finish's result, usage and
/// state.
#[derive(Debug, PartialEq)]
struct Run {
    out: Vec<u8>,
    error: Option<TranslateError>,
    finish: Result<(), TranslateError>,
    final_usage: Option<Usage>,
    prompt_tokens: Option<u64>,
    upstream_failed: bool,
    complete: bool,
}

fn run(provider: u8, include_usage: bool, pieces: &[&[u8]]) -> Run {
    let mut t = translator(provider, include_usage);
    let mut out = Vec::new();
    let mut error = None;
    for p in pieces {
        let before = out.len();
        match t.feed(p, &mut out) {
            Ok(()) => assert!(error.is_none(), "a feed succeeded after an error"),
            Err(e) => {
                if let Some(first) = &error {
                    assert_eq!(&e, first, "a later error differs from the first");
                    assert_eq!(out.len(), before, "output after an error");
                }
                error.get_or_insert(e);
            }
        }
    }
    let finish = t.finish(&mut out);
    if let Some(e) = &error {
        assert_eq!(finish.as_ref(), Err(e), "finish after an error");
    }
    let (upstream_failed, complete) = match &t {
        StreamTranslation::Anthropic(a) => (a.upstream_failed(), a.complete()),
        StreamTranslation::Gemini(g) => (g.upstream_failed(), g.usage_complete()),
        StreamTranslation::Bedrock(b) => (b.upstream_failed(), b.usage_complete()),
    };
    Run {
        out,
        error,
        finish,
        final_usage: t.final_usage(),
        prompt_tokens: t.prompt_tokens(),
        upstream_failed,
        complete,
    }
}

/// The output's events are well formed.
fn check_output(r: &Run, include_usage: bool) {
    let s = std::str::from_utf8(&r.out).expect("the output is UTF-8");
    assert!(s.is_empty() || s.ends_with("\n\n"), "{s:?}");
    let (mut done, mut failed) = (false, false);
    for ev in s.split_terminator("\n\n") {
        assert!(!done && !failed, "an event after [DONE] or an error: {s}");
        let data = ev.strip_prefix("data: ").expect("a data line");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).expect("the event is JSON");
        if let Some(e) = v.get("error") {
            assert!(e["message"].is_string() && e["type"].is_string(), "{v}");
            failed = true;
            continue;
        }
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        assert_eq!(v["created"], CREATED);
        assert_eq!(v["model"], MODEL);
        let choices = v["choices"].as_array().expect("choices");
        if include_usage {
            let u = v.get("usage").expect("usage on every chunk");
            assert_eq!(u.is_null(), !choices.is_empty(), "{v}");
        } else {
            assert!(v.get("usage").is_none() && !choices.is_empty(), "{v}");
        }
    }
    assert_eq!(
        failed, r.upstream_failed,
        "an error event iff upstream failed"
    );
    if r.finish.is_ok() {
        assert!(done || failed, "finished without [DONE]");
    }
    if done {
        assert!(r.error.is_none());
    }
}

/// The usage the meter reads from a translated stream that ended with
/// `[DONE]` is the provider's, as the translator reports it.
fn check_meter(r: &Run) {
    let Some(u) = r.final_usage else {
        return;
    };
    if !r.out.ends_with(b"data: [DONE]\n\n") {
        // No usage chunk was written: an upstream error, or a stream that
        // did not end well (Gemini writes the chunk at the end).
        return;
    }
    let mut meter = StreamMeter::new(
        Protocol::ChatCompletions,
        false,
        ModelFamily::for_model(MODEL),
    );
    let mut forward = Vec::new();
    meter.feed(&r.out, &mut forward);
    assert_eq!(forward, r.out);
    let Finished::Ready(o) = meter.finish_deferred(StreamEnding::Complete, &mut forward) else {
        panic!("the meter found no usage in a stream that ended with it");
    };
    assert!(!o.estimated);
    assert_eq!(o.usage.prompt_tokens, u.prompt_tokens);
    assert_eq!(o.usage.completion_tokens, u.completion_tokens);
    assert_eq!(o.usage.cached_tokens, u.cached_tokens);
    assert_eq!(o.usage.reasoning_tokens, u.reasoning_tokens);
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let provider = head & 3;
    let include_usage = head & 4 != 0;
    let framed;
    let body = if provider == 2 {
        framed = frame(rest);
        &framed[..]
    } else {
        rest
    };
    let whole = run(provider, include_usage, &[body]);
    check_output(&whole, include_usage);
    if include_usage {
        check_meter(&whole);
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(
        whole,
        run(provider, include_usage, &bytes),
        "a byte at a time"
    );
    assert_eq!(
        whole,
        run(provider, include_usage, &pieces(body, head >> 3)),
        "in pieces"
    );
});
