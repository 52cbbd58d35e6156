//! Streamed `gemini` translation: the SSE body of
//! `streamGenerateContent?alt=sse` in, OpenAI `chat.completion.chunk` SSE
//! events out. Pure and synchronous: the caller feeds each upstream read to
//! [`StreamTranslator::feed`] and writes what it appends to the client, then
//! calls [`StreamTranslator::finish`] at the end of the upstream body.
//!
//! Each upstream event is a whole `GenerateContentResponse` carrying the
//! next piece of each candidate. Mapping:
//! - the first sight of a candidate → a chunk with `delta.role =
//!   "assistant"` (and `content: ""`, as OpenAI sends); the first event's
//!   `responseId` names every chunk (`chatcmpl-<responseId>`);
//! - text parts → `delta.content` (empty ones and `thought: true` ones are
//!   skipped);
//! - a `functionCall` part (Gemini sends each call whole) → one
//!   `delta.tool_calls[{index, id: "call_<index>", type, function: {name,
//!   arguments}}]`, `index` counting the candidate's calls;
//! - a candidate's `finishReason` → a chunk with `delta: {}` and the
//!   `finish_reason` [`super::gemini::generate_to_chat`] would give (once
//!   per candidate);
//! - a blocked prompt (`promptFeedback.blockReason`, no candidates) → the
//!   role chunk and `finish_reason: "content_filter"`;
//! - `usageMetadata` → the usage, replaced by each event's (Gemini's counts
//!   are cumulative; the last event's are final);
//! - an `{"error": {...}}` event → `data: {"error": {...}}` in OpenAI's
//!   shape, and the translator stops (no `[DONE]`);
//! - the end of the upstream body ([`StreamTranslator::finish`]) → with
//!   `include_usage`, a chunk with `choices: []` and `usage` (none when no
//!   `usageMetadata` came: zeros would read as "free"); then
//!   `data: [DONE]`. Gemini has no end event: the finish reason is in the
//!   last event but one may still follow with the final usage, so the
//!   stream is closed only at the end of the body.
//!
//! With `include_usage`, every other chunk carries `"usage": null`, as
//! OpenAI does with `stream_options.include_usage`.

use serde_json::{json, Value};

use super::chunks::{write_error, Chunks, SseTranslation, SseTranslator};
use super::gemini::{
    completion_id, finish_reason, openai_error_type, openai_usage, read_parts, usage_from_metadata,
};
use super::TranslateError;
use crate::tokens::Usage;

pub use super::chunks::{error_event, MAX_PENDING_EVENT_BYTES};

fn err(field: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError::new(field, message)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first event.
    Start,
    /// Between the first event and the end of the body.
    Streaming,
    /// `finish` done, `[DONE]` written.
    Done,
    /// An upstream `error` event translated.
    UpstreamError,
}

/// One candidate (OpenAI choice) seen in the stream.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    index: u64,
    tool_calls: usize,
    finished: bool,
}

/// Translates one Gemini `streamGenerateContent?alt=sse` body into OpenAI
/// chunks.
#[derive(Debug)]
pub struct StreamTranslator(SseTranslator<Generate>);

/// What the events say so far.
#[derive(Debug)]
struct Generate {
    chunks: Chunks,
    state: State,
    usage: Option<Usage>,
    candidates: Vec<Candidate>,
}

impl StreamTranslator {
    /// `model` and `created` (Unix seconds) are written into every chunk;
    /// `include_usage` is the request's `stream_options.include_usage`.
    pub fn new(model: &str, created: i64, include_usage: bool) -> Self {
        Self(SseTranslator::new(Generate {
            chunks: Chunks::new(model, created, include_usage),
            state: State::Start,
            usage: None,
            candidates: Vec::new(),
        }))
    }

    /// Appends to `out` the OpenAI events for every upstream event that
    /// `chunk` completes; an incomplete tail is kept for the next call. After
    /// an upstream `error` (or [`StreamTranslator::finish`]), further bytes
    /// are ignored. An error (malformed event, an event longer than
    /// [`MAX_PENDING_EVENT_BYTES`]) leaves whatever was appended before it
    /// valid and makes every later call fail.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        self.0.feed(chunk, out)
    }

    /// The end of the upstream body: writes the usage chunk (with
    /// `include_usage`) and `[DONE]`. A stream that ended before every
    /// candidate it started had a `finishReason` (or with no candidate at
    /// all) is an error, for the caller to turn into an SSE error event
    /// ([`error_event`]); [`StreamTranslator::usage`] still reports what was
    /// counted. After an upstream `error` event, nothing is written.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        self.0.finish(out)
    }

    /// The latest `usageMetadata` seen, normalized; `None` before any.
    pub fn usage(&self) -> Option<Usage> {
        self.0.t.usage
    }

    /// Whether the usage is final: a `usageMetadata` was seen and every
    /// candidate has its `finishReason` (with several candidates, one
    /// finished says nothing of the others' counts).
    pub fn usage_complete(&self) -> bool {
        let t = &self.0.t;
        t.usage.is_some() && !t.candidates.is_empty() && t.candidates.iter().all(|c| c.finished)
    }

    /// Whether upstream sent an `error` event (translated, then stopped).
    pub fn upstream_failed(&self) -> bool {
        self.0.t.state == State::UpstreamError
    }
}

impl SseTranslation for Generate {
    fn ended(&self) -> bool {
        matches!(self.state, State::Done | State::UpstreamError)
    }

    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.candidates.is_empty() {
            return Err(err("stream", "upstream stream ended before any candidate"));
        }
        if let Some(c) = self.candidates.iter().find(|c| !c.finished) {
            return Err(err(
                "stream",
                format!(
                    "upstream stream ended before candidate {}'s finishReason",
                    c.index
                ),
            ));
        }
        // No `usageMetadata` at all: no usage chunk (see `Chunks::done`).
        let usage = self.usage;
        self.chunks.done(|| usage.map(|u| openai_usage(&u)), out);
        self.state = State::Done;
        Ok(())
    }

    /// Translates one complete upstream event.
    fn event(
        &mut self,
        _kind: Option<&[u8]>,
        data: Value,
        out: &mut Vec<u8>,
    ) -> Result<(), TranslateError> {
        if !data.is_object() {
            return Err(err("stream", "upstream event data is not a JSON object"));
        }
        if let Some(e) = data.get("error") {
            self.upstream_error(e, out);
            return Ok(());
        }
        if self.state == State::Start {
            self.chunks.id = completion_id(
                data.get("responseId").and_then(Value::as_str),
                self.chunks.created(),
            );
            self.state = State::Streaming;
        }
        match data.get("usageMetadata") {
            None | Some(Value::Null) => {}
            Some(u) => {
                self.usage = Some(usage_from_metadata(u).ok_or_else(|| {
                    err(
                        "usageMetadata",
                        "must be an object of non-negative integer counts",
                    )
                })?)
            }
        }
        let candidates = match data.get("candidates") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(c)) => &c[..],
            Some(_) => return Err(err("candidates", "must be an array")),
        };
        for (i, c) in candidates.iter().enumerate() {
            self.candidate(c, i, out)?;
        }
        let blocked = candidates.is_empty()
            && data
                .get("promptFeedback")
                .and_then(|f| f.get("blockReason"))
                .is_some_and(|r| !r.is_null());
        if blocked {
            let k = self.candidate_slot(0, out);
            if !self.candidates[k].finished {
                self.candidates[k].finished = true;
                self.choice_chunk(0, json!({}), Some("content_filter"), out);
            }
        }
        Ok(())
    }
}

impl Generate {
    /// The slot of candidate `index`, announcing it (the role chunk) on its
    /// first sight.
    fn candidate_slot(&mut self, index: u64, out: &mut Vec<u8>) -> usize {
        if let Some(k) = self.candidates.iter().position(|c| c.index == index) {
            return k;
        }
        self.candidates.push(Candidate {
            index,
            tool_calls: 0,
            finished: false,
        });
        self.choice_chunk(
            index,
            json!({ "role": "assistant", "content": "" }),
            None,
            out,
        );
        self.candidates.len() - 1
    }

    fn candidate(&mut self, c: &Value, i: usize, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let at = format!("candidates[{i}]");
        if !c.is_object() {
            return Err(err(at, "must be an object"));
        }
        let index = match c.get("index") {
            None | Some(Value::Null) => i as u64,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| err(format!("{at}.index"), "must be a non-negative integer"))?,
        };
        let k = self.candidate_slot(index, out);
        let read = read_parts(c, &at, self.candidates[k].tool_calls)?;
        if !read.text.is_empty() {
            self.choice_chunk(index, json!({ "content": read.text }), None, out);
        }
        for mut call in read.tool_calls {
            if let Some(o) = call.as_object_mut() {
                o.insert("index".into(), json!(self.candidates[k].tool_calls));
            }
            self.candidates[k].tool_calls += 1;
            self.choice_chunk(index, json!({ "tool_calls": [call] }), None, out);
        }
        if let Some(reason) = c.get("finishReason").and_then(Value::as_str) {
            let cand = &mut self.candidates[k];
            if !cand.finished {
                cand.finished = true;
                let reason = finish_reason(reason, cand.tool_calls > 0);
                self.choice_chunk(index, json!({}), Some(reason), out);
            }
        }
        Ok(())
    }

    fn upstream_error(&mut self, e: &Value, out: &mut Vec<u8>) {
        let status = e.get("status").and_then(Value::as_str).unwrap_or("UNKNOWN");
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("upstream error");
        write_error(message, openai_error_type(status), status, out);
        self.state = State::UpstreamError;
    }

    /// Writes a chunk with one choice.
    fn choice_chunk(
        &self,
        index: u64,
        delta: Value,
        finish_reason: Option<&str>,
        out: &mut Vec<u8>,
    ) {
        self.chunks.choice(index, delta, finish_reason, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::chunks::test_support::{content, events};
    use crate::providers::gemini::generate_to_chat;
    use crate::tokens::UsageSource;
    use proptest::prelude::*;

    const MODEL: &str = "gemini-2.5-flash";

    fn sse(events: &[Value]) -> Vec<u8> {
        sse_with(events, &[b"\r\n"])
    }

    /// Events as upstream SSE (Gemini ends lines with CRLF), the i-th
    /// event's lines ended by `ends[i % len]`.
    fn sse_with(events: &[Value], ends: &[&[u8]]) -> Vec<u8> {
        let mut s = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let nl = ends[i % ends.len()];
            s.extend_from_slice(b"data: ");
            s.extend_from_slice(e.to_string().as_bytes());
            s.extend_from_slice(nl);
            s.extend_from_slice(nl);
        }
        s
    }

    fn piece(parts: Value, finish: Option<&str>, usage: Value) -> Value {
        let mut c = json!({ "content": { "parts": parts, "role": "model" }, "index": 0 });
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        json!({
            "candidates": [c],
            "usageMetadata": usage,
            "modelVersion": MODEL,
            "responseId": "resp_1",
        })
    }

    /// A text stream as Gemini sends it: usage on every event, cumulative.
    fn text_stream(pieces: &[&str], finish: &str) -> Vec<Value> {
        let n = pieces.len();
        pieces
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let last = i + 1 == n;
                let usage = if last {
                    json!({ "promptTokenCount": 8, "candidatesTokenCount": 12,
                            "thoughtsTokenCount": 25, "totalTokenCount": 45 })
                } else {
                    json!({ "promptTokenCount": 8, "totalTokenCount": 8 })
                };
                piece(json!([{ "text": p }]), last.then_some(finish), usage)
            })
            .collect()
    }

    fn run(t: &mut StreamTranslator, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        t.feed(input, &mut out).expect("feed");
        t.finish(&mut out).expect("finish");
        out
    }

    fn usage(p: u64, c: u64, cached: u64, reasoning: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: cached,
            cache_write_tokens: 0,
            reasoning_tokens: reasoning,
            source: UsageSource::Provider,
        }
    }

    #[test]
    fn text_stream_translates() {
        let mut ev = text_stream(&["The", " sky is", " blue."], "STOP");
        // A thought summary, and an empty text piece, show nothing.
        ev.insert(
            0,
            piece(
                json!([{ "text": "Thinking of skies", "thought": true }, { "text": "" }]),
                None,
                json!({ "promptTokenCount": 8, "totalTokenCount": 8 }),
            ),
        );
        let mut t = StreamTranslator::new(MODEL, 1_700_000_000, false);
        let evs = events(&run(&mut t, &sse(&ev)));
        assert_eq!(evs.len(), 6, "{evs:?}");
        for e in &evs[..5] {
            assert_eq!(e["id"], "chatcmpl-resp_1");
            assert_eq!(e["object"], "chat.completion.chunk");
            assert_eq!(e["created"], 1_700_000_000);
            assert_eq!(e["model"], MODEL);
            assert!(e.get("usage").is_none());
        }
        assert_eq!(
            evs[0]["choices"],
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                    "logprobs": null, "finish_reason": null}])
        );
        assert_eq!(evs[1]["choices"][0]["delta"], json!({"content": "The"}));
        assert_eq!(content(&evs), "The sky is blue.");
        // The last event carries both its text and the finish reason.
        assert_eq!(evs[3]["choices"][0]["delta"], json!({"content": " blue."}));
        assert_eq!(
            evs[4]["choices"],
            json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])
        );
        assert_eq!(evs[5], "[DONE]");
        assert_eq!(t.usage(), Some(usage(8, 37, 0, 25)));
        assert!(t.usage_complete());
        assert!(!t.upstream_failed());
    }

    #[test]
    fn finish_reasons_map() {
        for (reason, want) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("OTHER", "stop"),
        ] {
            let input = sse(&text_stream(&["x"], reason));
            let evs = events(&run(&mut StreamTranslator::new(MODEL, 0, false), &input));
            assert_eq!(evs[evs.len() - 2]["choices"][0]["finish_reason"], want);
        }
    }

    fn tool_stream() -> Vec<Value> {
        vec![
            piece(
                json!([{ "text": "Checking both." }]),
                None,
                json!({ "promptTokenCount": 100, "totalTokenCount": 100 }),
            ),
            piece(
                json!([
                    { "functionCall": { "name": "get_weather", "args": { "city": "Paris" } },
                      "thoughtSignature": "c2ln" },
                    { "functionCall": { "name": "get_time", "args": { "tz": "CET" } } },
                ]),
                Some("STOP"),
                json!({ "promptTokenCount": 100, "candidatesTokenCount": 40,
                        "totalTokenCount": 140 }),
            ),
        ]
    }

    #[test]
    fn function_calls_stream_as_tool_calls() {
        let evs = events(&run(
            &mut StreamTranslator::new(MODEL, 5, false),
            &sse(&tool_stream()),
        ));
        let deltas: Vec<&Value> = evs.iter().map(|e| &e["choices"][0]["delta"]).collect();
        assert_eq!(deltas[1], &json!({"content": "Checking both."}));
        assert_eq!(
            deltas[2],
            &json!({"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                    "extra_content": {"google": {"thought_signature": "c2ln"}}}]})
        );
        assert_eq!(
            deltas[3],
            &json!({"tool_calls": [{"index": 1, "id": "call_1", "type": "function",
                    "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}}]})
        );
        assert_eq!(evs[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(evs[5], "[DONE]");
        assert_eq!(evs.len(), 6);
    }

    #[test]
    fn include_usage_adds_a_usage_chunk() {
        let mut ev = text_stream(&["Hi"], "STOP");
        // A final usage-only event after the finish reason: its counts win.
        ev.push(json!({
            "usageMetadata": { "promptTokenCount": 10, "cachedContentTokenCount": 6,
                               "candidatesTokenCount": 7, "toolUsePromptTokenCount": 2,
                               "totalTokenCount": 19 },
            "responseId": "resp_1",
        }));
        let mut t = StreamTranslator::new(MODEL, 9, true);
        let evs = events(&run(&mut t, &sse(&ev)));
        let n = evs.len();
        assert_eq!(n, 5);
        assert_eq!(evs[n - 1], "[DONE]");
        for e in &evs[..n - 2] {
            assert_eq!(e["usage"], Value::Null);
            assert!(e.as_object().unwrap().contains_key("usage"));
        }
        assert_eq!(
            evs[n - 2],
            json!({
                "id": "chatcmpl-resp_1", "object": "chat.completion.chunk", "created": 9,
                "model": MODEL, "choices": [],
                "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                          "prompt_tokens_details": {"cached_tokens": 6},
                          "completion_tokens_details": {"reasoning_tokens": 0}},
            })
        );
        assert_eq!(t.usage(), Some(usage(12, 7, 6, 0)));
        // Without include_usage, none anywhere, and still counted.
        let mut t = StreamTranslator::new(MODEL, 9, false);
        let evs = events(&run(&mut t, &sse(&ev)));
        assert_eq!(evs.len(), 4);
        assert!(evs[..3].iter().all(|e| e.get("usage").is_none()));
        assert_eq!(t.usage().unwrap().total_tokens(), 19);
    }

    #[test]
    fn several_candidates_stream_as_several_choices() {
        let ev = vec![
            json!({ "candidates": [
                { "content": { "parts": [{ "text": "a" }] }, "index": 0 },
                { "content": { "parts": [{ "text": "b" }] }, "index": 1 },
            ], "responseId": "r" }),
            json!({ "candidates": [
                { "content": { "parts": [{ "functionCall": { "name": "f" } }] }, "index": 1,
                  "finishReason": "STOP" },
                { "content": { "parts": [] }, "index": 0, "finishReason": "MAX_TOKENS" },
            ], "usageMetadata": { "promptTokenCount": 1, "candidatesTokenCount": 2 } }),
        ];
        let mut t = StreamTranslator::new(MODEL, 0, false);
        let evs = events(&run(&mut t, &sse(&ev)));
        let at = |i: usize| {
            (
                evs[i]["choices"][0]["index"].clone(),
                evs[i]["choices"][0].clone(),
            )
        };
        assert_eq!(at(0).0, 0);
        assert_eq!(at(1).1["delta"], json!({"content": "a"}));
        assert_eq!(at(2).1["delta"]["role"], "assistant");
        assert_eq!(at(2).0, 1);
        assert_eq!(at(3).1["delta"], json!({"content": "b"}));
        assert_eq!(at(4).1["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(at(5).1["finish_reason"], "tool_calls");
        assert_eq!(
            (at(6).0, at(6).1["finish_reason"].clone()),
            (json!(0), json!("length"))
        );
        assert_eq!(evs[7], "[DONE]");
        assert!(t.usage_complete());
    }

    #[test]
    fn a_blocked_prompt_streams_a_content_filter_finish() {
        let ev = [json!({
            "promptFeedback": { "blockReason": "PROHIBITED_CONTENT" },
            "usageMetadata": { "promptTokenCount": 8, "totalTokenCount": 8 },
            "responseId": "b",
        })];
        let mut t = StreamTranslator::new(MODEL, 0, true);
        let evs = events(&run(&mut t, &sse(&ev)));
        assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(evs[1]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(evs[2]["usage"]["prompt_tokens"], 8);
        assert_eq!(evs[3], "[DONE]");
        assert!(t.usage_complete());
    }

    #[test]
    fn upstream_error_event_translates_and_stops() {
        let mut ev = text_stream(&["partial", "more"], "STOP");
        ev.truncate(1);
        ev.push(
            json!({ "error": { "code": 503, "message": "The model is overloaded.",
                                   "status": "UNAVAILABLE" } }),
        );
        let mut input = sse(&ev);
        // Anything after the error is ignored.
        input.extend_from_slice(&sse(&text_stream(&["late"], "STOP")));
        let mut t = StreamTranslator::new(MODEL, 0, true);
        let evs = events(&run(&mut t, &input));
        assert_eq!(content(&evs), "partial");
        assert_eq!(
            evs.last().unwrap(),
            &json!({"error": {"message": "The model is overloaded.", "type": "server_error",
                              "param": null, "code": "UNAVAILABLE"}})
        );
        assert!(!evs.contains(&json!("[DONE]")));
        assert!(t.upstream_failed());
        assert_eq!(t.usage(), Some(usage(8, 0, 0, 0)));
        assert!(!t.usage_complete());
        // An error as the very first event, and rate limits keep their type.
        let mut t = StreamTranslator::new(MODEL, 0, false);
        let evs = events(&run(
            &mut t,
            &sse(&[json!({ "error": { "code": 429, "message": "Quota",
                                      "status": "RESOURCE_EXHAUSTED" } })]),
        ));
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0]["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn a_stream_without_a_finish_reason_is_an_error_at_finish() {
        let full = sse(&text_stream(&["Hello", " there"], "STOP"));
        // Cut inside the last event.
        let cut = full.len() - 20;
        let mut t = StreamTranslator::new(MODEL, 0, true);
        let mut out = Vec::new();
        t.feed(&full[..cut], &mut out).unwrap();
        let e = t.finish(&mut out).expect_err("truncated");
        assert_eq!(e.field, "stream");
        assert!(e.message.contains("finishReason"), "{e}");
        let evs = events(&out);
        assert_eq!(content(&evs), "Hello");
        assert!(!evs.contains(&json!("[DONE]")));
        // Billing still sees the prompt; the error reaches the client as SSE.
        assert_eq!(t.usage(), Some(usage(8, 0, 0, 0)));
        assert!(!t.usage_complete());
        assert!(t.finish(&mut out).is_err(), "stays broken");
        let mut tail = Vec::new();
        error_event(&e, &mut tail);
        assert_eq!(events(&tail)[0]["error"]["code"], "upstream_stream_error");
        // An empty body too.
        let e = StreamTranslator::new(MODEL, 0, false)
            .finish(&mut Vec::new())
            .unwrap_err();
        assert!(e.message.contains("before any candidate"), "{e}");
    }

    #[test]
    fn malformed_and_oversized_events_are_errors() {
        for (bad, field) in [
            (&b"data: {not json\n\n"[..], "stream"),
            (b"data: [1]\n\n", "stream"),
            (b"data: {\"candidates\": {}}\n\n", "candidates"),
            (b"data: {\"candidates\": [3]}\n\n", "candidates[0]"),
            (
                b"data: {\"candidates\": [{\"index\": \"0\"}]}\n\n",
                "candidates[0].index",
            ),
            (
                b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": 5}]}}]}\n\n",
                "candidates[0].content.parts[0].text",
            ),
            (
                b"data: {\"usageMetadata\": {\"promptTokenCount\": -1}}\n\n",
                "usageMetadata",
            ),
        ] {
            let mut t = StreamTranslator::new(MODEL, 0, false);
            let mut out = Vec::new();
            let e = t.feed(bad, &mut out).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert_eq!(t.feed(b"", &mut out).unwrap_err(), e, "stays broken");
            assert_eq!(t.finish(&mut out).unwrap_err(), e);
        }
        let mut t = StreamTranslator::new(MODEL, 0, false);
        let mut out = Vec::new();
        let big = vec![b'a'; MAX_PENDING_EVENT_BYTES];
        t.feed(b"data: ", &mut out).unwrap();
        let e = t.feed(&big, &mut out).unwrap_err();
        assert!(e.message.contains("exceeds"));
        assert!(out.is_empty());
    }

    #[test]
    fn line_ends_comments_and_events_without_data() {
        let mut input = Vec::new();
        let evs = text_stream(&["a", "b", "c"], "STOP");
        for (i, e) in evs.iter().enumerate() {
            let nl: &[u8] = [&b"\n"[..], b"\r\n", b"\r"][i % 3];
            input.extend_from_slice(b"data: ");
            input.extend_from_slice(e.to_string().as_bytes());
            input.extend_from_slice(nl);
            input.extend_from_slice(nl);
            if i == 0 {
                input.extend_from_slice(b": keep-alive\n\nevent: ping\n\n");
            }
        }
        // The last event ends with a lone CR pair: reported by finish().
        assert!(input.ends_with(b"\r\r"));
        let mut t = StreamTranslator::new(MODEL, 0, false);
        let out = run(&mut t, &input);
        let evs = events(&out);
        assert_eq!(content(&evs), "abc");
        assert_eq!(evs.last().unwrap(), "[DONE]");
        // After finish, nothing more is written.
        let mut more = Vec::new();
        t.feed(&sse(&text_stream(&["x"], "STOP")), &mut more)
            .unwrap();
        t.finish(&mut more).unwrap();
        assert!(more.is_empty());
    }

    /// The stream's output read back as one message: content, tool calls
    /// (id, name, arguments), the finish reason of choice 0.
    fn assemble(evs: &[Value]) -> (String, Vec<Value>, Value) {
        let mut calls: Vec<Value> = Vec::new();
        let mut finish = Value::Null;
        for e in evs {
            let c = &e["choices"][0];
            for call in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let mut call = call.clone();
                call.as_object_mut().unwrap().remove("index");
                calls.push(call);
            }
            if !c["finish_reason"].is_null() {
                finish = c["finish_reason"].clone();
            }
        }
        (content(evs), calls, finish)
    }

    /// A stream of `pieces`, then (when `tools`) the calls of `tool_stream`.
    fn mixed_stream(pieces: &[String], tools: bool) -> Vec<Value> {
        let u = json!({ "promptTokenCount": 3, "totalTokenCount": 3 });
        let mut ev: Vec<Value> = pieces
            .iter()
            .map(|p| piece(json!([{ "text": p }]), None, u.clone()))
            .collect();
        if tools {
            ev.push(tool_stream()[1].clone());
        } else {
            ev.push(piece(
                json!([]),
                Some("STOP"),
                json!({ "promptTokenCount": 3, "candidatesTokenCount": 9 }),
            ));
        }
        ev
    }

    /// The non-streamed response equivalent to `mixed_stream`.
    fn non_streamed(pieces: &[String], tools: bool) -> Value {
        let mut parts: Vec<Value> = pieces.iter().map(|p| json!({ "text": p })).collect();
        if tools {
            parts.extend(
                tool_stream()[1]["candidates"][0]["content"]["parts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .cloned(),
            );
        }
        let body = json!({ "candidates": [{ "content": { "role": "model", "parts": parts },
                                            "finishReason": "STOP", "index": 0 }],
                           "responseId": "resp_1" });
        let (out, _) = generate_to_chat(body.to_string().as_bytes(), MODEL, 1).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn every_split_of_a_small_stream_gives_the_same_output() {
        for (tools, include_usage) in [(false, false), (false, true), (true, false), (true, true)] {
            let input = sse(&mixed_stream(&["Hé".into(), "llo".into()], tools));
            let whole = run(&mut StreamTranslator::new(MODEL, 1, include_usage), &input);
            for cut in 0..=input.len() {
                let mut t = StreamTranslator::new(MODEL, 1, include_usage);
                let mut out = Vec::new();
                t.feed(&input[..cut], &mut out).unwrap();
                t.feed(&input[cut..], &mut out).unwrap();
                t.finish(&mut out).unwrap();
                assert_eq!(out, whole, "cut at {cut}");
            }
            // Byte by byte.
            let mut t = StreamTranslator::new(MODEL, 1, include_usage);
            let mut out = Vec::new();
            for b in input.chunks(1) {
                t.feed(b, &mut out).unwrap();
            }
            t.finish(&mut out).unwrap();
            assert_eq!(out, whole);
        }
    }

    const ENDS: [&[u8]; 4] = [b"\n", b"\r\n", b"\r", b"\n"];

    proptest! {
        #[test]
        fn split_points_do_not_change_output(
            pieces in prop::collection::vec(any::<String>(), 0..8),
            tools in any::<bool>(),
            include_usage in any::<bool>(),
            ends in prop::collection::vec(0..ENDS.len(), 1..4),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let ends: Vec<&[u8]> = ends.iter().map(|&i| ENDS[i]).collect();
            let input = sse_with(&mixed_stream(&pieces, tools), &ends);
            let whole = {
                let mut t = StreamTranslator::new(MODEL, 1, include_usage);
                let mut out = Vec::new();
                t.feed(&input, &mut out).unwrap();
                t.finish(&mut out).unwrap();
                out
            };
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            at.sort_unstable();
            let mut t = StreamTranslator::new(MODEL, 1, include_usage);
            let mut split = Vec::new();
            let mut prev = 0;
            for c in at.into_iter().chain([input.len()]) {
                t.feed(&input[prev..c], &mut split).unwrap();
                prev = c;
            }
            t.finish(&mut split).unwrap();
            prop_assert_eq!(&split, &whole);
            prop_assert!(t.usage_complete());

            // The stream says what the non-streamed response says.
            let evs = events(&whole);
            prop_assert_eq!(evs.last().unwrap(), &json!("[DONE]"));
            let (text, calls, finish) = assemble(&evs);
            let expected = non_streamed(&pieces, tools);
            let choice = &expected["choices"][0];
            prop_assert_eq!(&text, &pieces.concat());
            prop_assert_eq!(text.as_str(), choice["message"]["content"].as_str().unwrap_or(""));
            let want = choice["message"]["tool_calls"].as_array().cloned().unwrap_or_default();
            prop_assert_eq!(calls, want);
            prop_assert_eq!(&finish, &choice["finish_reason"]);
        }

        #[test]
        fn garbage_never_panics(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
        ) {
            let mut t = StreamTranslator::new(MODEL, 0, true);
            let mut out = Vec::new();
            for c in &chunks {
                let _ = t.feed(c, &mut out);
            }
            let _ = t.finish(&mut out);
            // Whatever was written is whole events.
            prop_assert!(out.is_empty() || out.ends_with(b"\n\n"));
        }
    }
}
