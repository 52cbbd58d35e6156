//! Streamed `bedrock` translation: ConverseStream events, framed in the AWS
//! event stream ([`super::eventstream`]), in; OpenAI `chat.completion.chunk`
//! SSE events out. Pure and synchronous: the caller feeds each upstream read
//! (split anywhere) to [`StreamTranslator::feed`] and writes what it appends
//! to the client, then calls [`StreamTranslator::finish`] at the end of the
//! upstream body.
//!
//! Mapping (by `:event-type`; payloads are JSON):
//! - `messageStart` → a first chunk with `delta.role = "assistant"` (and
//!   `content: ""`, as OpenAI sends).
//! - `contentBlockStart` with `start.toolUse` → `delta.tool_calls[{index,
//!   id, type, function: {name, arguments: ""}}]`, `index` counting toolUse
//!   blocks only. Text blocks have no start event of note.
//! - `contentBlockDelta`: `delta.text` → `delta.content`; `delta.toolUse.input`
//!   → `delta.tool_calls[{index, function: {arguments}}]` (empty pieces
//!   skipped); `reasoningContent`, citations and other deltas have no
//!   chat.completion place and are dropped.
//! - `messageStop` → a chunk with `finish_reason` (`end_turn` and
//!   `stop_sequence` → stop, `max_tokens` → length, `tool_use` →
//!   tool_calls, `guardrail_intervened` and `content_filtered` →
//!   content_filter).
//! - `metadata` → its `usage` is the response's usage. Once both
//!   `messageStop` and `metadata` are in (metadata normally comes last): with
//!   `include_usage`, a chunk with `choices: []` and `usage`; then
//!   `data: [DONE]`. Later bytes are ignored.
//! - an `exception` message (`:exception-type` such as
//!   `throttlingException`, payload `{"message": ...}`) or an `error` message
//!   (`:error-code`, `:error-message`) → `data: {"error": {...}}` in OpenAI's
//!   shape, and the translator stops (no `[DONE]`): the caller decides what
//!   follows.
//! - `contentBlockStop` and unknown event types produce nothing.
//!
//! Every chunk's `id` is derived from `model` and `created` unless the caller
//! sets one ([`StreamTranslator::set_id`], e.g. from `x-amzn-requestid`): a
//! ConverseStream carries no id. With `include_usage`, every other chunk
//! carries `"usage": null`, as OpenAI does with
//! `stream_options.include_usage`.

use serde_json::{json, Value};

use super::bedrock::{completion_id, finish_reason, openai_usage, usage_from_json};
use super::chunks::{write_error, Chunks, Fuse};
use super::eventstream::{Decoder, Message};
use super::TranslateError;
use crate::tokens::Usage;

pub use super::chunks::error_event;

fn err(field: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError::new(field, message)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before `messageStart`.
    Start,
    /// After `messageStart`, until both `messageStop` and `metadata`.
    Streaming,
    /// `[DONE]` written.
    Done,
    /// An upstream exception translated.
    UpstreamError,
}

/// Translates one ConverseStream response into OpenAI chunks.
#[derive(Debug)]
pub struct StreamTranslator {
    chunks: Chunks,
    decoder: Decoder,
    state: State,
    stopped: bool,
    usage: Option<Usage>,
    /// Converse content block index → OpenAI tool-call index.
    tool_blocks: Vec<(u64, u64)>,
    tool_calls: u64,
    fuse: Fuse,
}

impl StreamTranslator {
    /// `model` and `created` (Unix seconds) are written into every chunk;
    /// `include_usage` is the request's `stream_options.include_usage`.
    pub fn new(model: &str, created: i64, include_usage: bool) -> Self {
        let mut chunks = Chunks::new(model, created, include_usage);
        chunks.id = completion_id(&[model.as_bytes(), &created.to_be_bytes()]);
        Self {
            chunks,
            decoder: Decoder::new(),
            state: State::Start,
            stopped: false,
            usage: None,
            tool_blocks: Vec::new(),
            tool_calls: 0,
            fuse: Fuse::default(),
        }
    }

    /// Sets the chunks' `id` (before the first feed), e.g. from the
    /// response's `x-amzn-requestid`.
    pub fn set_id(&mut self, id: &str) {
        self.chunks.id = id.to_string();
    }

    /// Appends to `out` the OpenAI events for every upstream message that
    /// `chunk` completes; an incomplete tail is kept for the next call. After
    /// `[DONE]` or an upstream exception, further bytes are ignored. An
    /// error (bad framing or CRC, a message over
    /// [`super::eventstream::EVENT_MESSAGE_BYTES_MAX`], malformed or
    /// out-of-order events) leaves whatever was appended before it valid and
    /// makes every later call fail.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        self.fuse.check()?;
        let r = self.feed_inner(chunk, out);
        self.poison(r)
    }

    /// The end of the upstream body. The usage chunk and `[DONE]` were
    /// already written by [`StreamTranslator::feed`] as soon as both
    /// `messageStop` and `metadata` were in (so the client need not wait for
    /// upstream to close): nothing is appended to `out` today. A stream ended
    /// before them (or an upstream exception) is an error, for the caller to
    /// turn into an SSE error event ([`error_event`]);
    /// [`StreamTranslator::usage`] still reports what was read.
    pub fn finish(&mut self, _out: &mut Vec<u8>) -> Result<(), TranslateError> {
        self.fuse.check()?;
        let r = match self.state {
            State::Done | State::UpstreamError => Ok(()),
            State::Start => Err(err("stream", "upstream stream ended before messageStart")),
            _ if !self.stopped => Err(err("stream", "upstream stream ended before messageStop")),
            _ => Err(err("stream", "upstream stream ended before metadata")),
        };
        self.poison(r)
    }

    /// The usage from the `metadata` event; `None` before it.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether the usage is the provider's final count: `metadata` read and
    /// the message stopped.
    pub fn usage_complete(&self) -> bool {
        self.usage.is_some() && self.stopped
    }

    /// Whether upstream sent an exception (translated, then stopped).
    pub fn upstream_failed(&self) -> bool {
        self.state == State::UpstreamError
    }

    fn poison(&mut self, r: Result<(), TranslateError>) -> Result<(), TranslateError> {
        if r.is_err() {
            self.decoder = Decoder::new();
        }
        self.fuse.record(r)
    }

    fn ended(&self) -> bool {
        matches!(self.state, State::Done | State::UpstreamError)
    }

    fn feed_inner(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.ended() {
            return Ok(());
        }
        self.decoder.feed(chunk);
        while !self.ended() {
            match self.decoder.next_message()? {
                Some(m) => self.message(&m, out)?,
                None => break,
            }
        }
        if self.ended() {
            // Drop what follows the end rather than keep it buffered.
            self.decoder = Decoder::new();
        }
        Ok(())
    }

    fn message(&mut self, m: &Message, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        match m.message_type() {
            Some("event") | None => {}
            Some("exception") => {
                let kind = m.exception_type().unwrap_or("exception");
                let text = payload_message(&m.payload);
                self.upstream_error(kind, text.as_deref().unwrap_or("upstream exception"), out);
                return Ok(());
            }
            Some("error") => {
                let kind = m.header_str(":error-code").unwrap_or("error");
                let text = m.header_str(":error-message").unwrap_or("upstream error");
                self.upstream_error(kind, text, out);
                return Ok(());
            }
            Some(other) => {
                return Err(err(
                    "stream",
                    format!("unknown event-stream message type {other:?}"),
                ))
            }
        }
        let Some(ty) = m.event_type() else {
            return Err(err("stream", "event without an :event-type header"));
        };
        let ty = ty.to_string();
        let data: Value = serde_json::from_slice(&m.payload)
            .map_err(|e| err(&ty, format!("event payload is not JSON: {e}")))?;
        if !data.is_object() {
            return Err(err(&ty, "event payload must be a JSON object"));
        }
        match ty.as_str() {
            "messageStart" => self.message_start(out),
            "contentBlockStart" => {
                self.require_started(&ty)?;
                self.block_start(&data, out)
            }
            "contentBlockDelta" => {
                self.require_started(&ty)?;
                self.block_delta(&data, out)
            }
            "messageStop" => {
                self.require_started(&ty)?;
                self.message_stop(&data, out)
            }
            "metadata" => {
                self.require_started(&ty)?;
                self.metadata(&data, out)
            }
            // contentBlockStop, and event types added later.
            _ => Ok(()),
        }
    }

    fn require_started(&self, ty: &str) -> Result<(), TranslateError> {
        if self.state == State::Start {
            return Err(err("stream", format!("{ty} before messageStart")));
        }
        Ok(())
    }

    fn message_start(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.state != State::Start {
            return Err(err("stream", "messageStart repeated"));
        }
        self.state = State::Streaming;
        self.choice_chunk(json!({ "role": "assistant", "content": "" }), None, out);
        Ok(())
    }

    fn block_index(data: &Value, ty: &str) -> Result<u64, TranslateError> {
        data.get("contentBlockIndex")
            .and_then(Value::as_u64)
            .ok_or_else(|| err(format!("{ty}.contentBlockIndex"), "required, an integer"))
    }

    fn block_start(&mut self, data: &Value, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let index = Self::block_index(data, "contentBlockStart")?;
        let Some(tool) = data.get("start").and_then(|s| s.get("toolUse")) else {
            return Ok(());
        };
        let at = |f: &str| format!("contentBlockStart.start.toolUse.{f}");
        let id = tool
            .get("toolUseId")
            .and_then(Value::as_str)
            .ok_or_else(|| err(at("toolUseId"), "required, a string"))?;
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| err(at("name"), "required, a string"))?;
        if self.tool_blocks.iter().any(|(b, _)| *b == index) {
            return Err(err(
                "contentBlockStart.contentBlockIndex",
                format!("block {index} started twice"),
            ));
        }
        let tool_index = self.tool_calls;
        self.tool_calls += 1;
        self.tool_blocks.push((index, tool_index));
        let delta = json!({ "tool_calls": [{
            "index": tool_index,
            "id": id,
            "type": "function",
            "function": { "name": name, "arguments": "" },
        }]});
        self.choice_chunk(delta, None, out);
        Ok(())
    }

    fn block_delta(&mut self, data: &Value, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let index = Self::block_index(data, "contentBlockDelta")?;
        let delta = data
            .get("delta")
            .filter(|d| d.is_object())
            .ok_or_else(|| err("contentBlockDelta.delta", "required, an object"))?;
        if let Some(t) = delta.get("text") {
            let t = t
                .as_str()
                .ok_or_else(|| err("contentBlockDelta.delta.text", "must be a string"))?;
            if !t.is_empty() {
                self.choice_chunk(json!({ "content": t }), None, out);
            }
        } else if let Some(tool) = delta.get("toolUse") {
            let piece = tool.get("input").and_then(Value::as_str).ok_or_else(|| {
                err(
                    "contentBlockDelta.delta.toolUse.input",
                    "required, a string",
                )
            })?;
            let tool_index = self
                .tool_blocks
                .iter()
                .find(|(b, _)| *b == index)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    err(
                        "contentBlockDelta.contentBlockIndex",
                        format!("toolUse delta for block {index}, not a started toolUse block"),
                    )
                })?;
            if !piece.is_empty() {
                let delta = json!({ "tool_calls": [{
                    "index": tool_index,
                    "function": { "arguments": piece },
                }]});
                self.choice_chunk(delta, None, out);
            }
        }
        // reasoningContent, citation and later delta kinds: dropped.
        Ok(())
    }

    fn message_stop(&mut self, data: &Value, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.stopped {
            return Err(err("stream", "messageStop repeated"));
        }
        let stop = data
            .get("stopReason")
            .and_then(Value::as_str)
            .ok_or_else(|| err("messageStop.stopReason", "required, a string"))?;
        self.stopped = true;
        self.choice_chunk(json!({}), Some(finish_reason(stop)), out);
        self.maybe_done(out);
        Ok(())
    }

    fn metadata(&mut self, data: &Value, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.usage.is_some() {
            return Err(err("stream", "metadata repeated"));
        }
        let usage = data.get("usage").and_then(usage_from_json).ok_or_else(|| {
            err(
                "metadata.usage",
                "required, with non-negative integer inputTokens and outputTokens",
            )
        })?;
        self.usage = Some(usage);
        self.maybe_done(out);
        Ok(())
    }

    /// Ends the stream once both `messageStop` and `metadata` are in.
    fn maybe_done(&mut self, out: &mut Vec<u8>) {
        let Some(u) = self.usage.filter(|_| self.stopped) else {
            return;
        };
        self.chunks.done(|| Some(openai_usage(&u)), out);
        self.state = State::Done;
    }

    fn upstream_error(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        let openai_type = match kind {
            "validationException" => "invalid_request_error",
            "throttlingException" | "serviceQuotaExceededException" => "rate_limit_error",
            "accessDeniedException" => "permission_error",
            "resourceNotFoundException" => "not_found_error",
            // internalServerException, modelStreamErrorException,
            // serviceUnavailableException, modelTimeoutException, ...
            _ => "server_error",
        };
        write_error(message, openai_type, kind, out);
        self.state = State::UpstreamError;
    }

    /// Writes a chunk with one choice.
    fn choice_chunk(&self, delta: Value, finish_reason: Option<&str>, out: &mut Vec<u8>) {
        self.chunks.choice(0, delta, finish_reason, out);
    }
}

/// The `message` (or `Message`) string of an exception payload.
fn payload_message(payload: &[u8]) -> Option<String> {
    super::bedrock::error_message(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::bedrock::converse_to_chat;
    use crate::providers::chunks::test_support::{content, events};
    use crate::providers::eventstream::{encode, EVENT_MESSAGE_BYTES_MAX};
    use crate::tokens::UsageSource;
    use proptest::prelude::*;

    const MODEL: &str = "anthropic.claude-3-5-haiku";

    /// One ConverseStream event, framed as Bedrock frames it (with the
    /// padding member `p` Bedrock adds to payloads).
    fn ev(ty: &str, mut payload: Value) -> Vec<u8> {
        payload["p"] = json!("abcdefghijkl");
        encode(
            &[
                (":event-type", ty),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.to_string().as_bytes(),
        )
    }

    fn start() -> Vec<u8> {
        ev("messageStart", json!({ "role": "assistant" }))
    }

    fn text(i: u64, t: &str) -> Vec<u8> {
        ev(
            "contentBlockDelta",
            json!({ "contentBlockIndex": i, "delta": { "text": t } }),
        )
    }

    fn stop(reason: &str) -> Vec<u8> {
        ev("messageStop", json!({ "stopReason": reason }))
    }

    fn metadata(usage: Value) -> Vec<u8> {
        ev(
            "metadata",
            json!({ "usage": usage, "metrics": { "latencyMs": 120 } }),
        )
    }

    fn block_stop(i: u64) -> Vec<u8> {
        ev("contentBlockStop", json!({ "contentBlockIndex": i }))
    }

    fn text_stream(pieces: &[&str], reason: &str) -> Vec<u8> {
        let mut s = start();
        for p in pieces {
            s.extend(text(0, p));
        }
        s.extend(block_stop(0));
        s.extend(stop(reason));
        s.extend(metadata(
            json!({ "inputTokens": 25, "outputTokens": 12, "totalTokens": 37 }),
        ));
        s
    }

    fn run(t: &mut StreamTranslator, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        t.feed(input, &mut out).expect("feed");
        t.finish(&mut out).expect("finish");
        out
    }

    #[test]
    fn text_stream_translates() {
        let input = text_stream(&["Hello", ", wor", "", "ld!"], "end_turn");
        let mut t = StreamTranslator::new(MODEL, 1_700_000_000, false);
        let evs = events(&run(&mut t, &input));
        assert_eq!(evs.len(), 6, "{evs:?}");
        let id = evs[0]["id"].as_str().unwrap();
        assert!(id.starts_with("chatcmpl-"));
        for e in &evs[..5] {
            assert_eq!(e["id"], id);
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
        assert_eq!(evs[1]["choices"][0]["delta"], json!({"content": "Hello"}));
        assert_eq!(content(&evs), "Hello, world!");
        assert_eq!(
            evs[4]["choices"],
            json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])
        );
        assert_eq!(evs[5], "[DONE]");
        let u = t.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (25, 12));
        assert_eq!(u.source, UsageSource::Provider);
        assert!(t.usage_complete());
        assert!(!t.upstream_failed());
    }

    #[test]
    fn set_id_names_every_chunk() {
        let mut t = StreamTranslator::new(MODEL, 0, true);
        t.set_id("chatcmpl-req-1");
        let evs = events(&run(&mut t, &text_stream(&["a"], "end_turn")));
        assert!(evs[..evs.len() - 1]
            .iter()
            .all(|e| e["id"] == "chatcmpl-req-1"));
    }

    #[test]
    fn finish_reasons_map() {
        for (reason, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
        ] {
            let input = text_stream(&["x"], reason);
            let evs = events(&run(&mut StreamTranslator::new(MODEL, 0, false), &input));
            assert_eq!(evs[evs.len() - 2]["choices"][0]["finish_reason"], want);
        }
    }

    fn tool_stream() -> Vec<u8> {
        let mut s = start();
        s.extend(text(0, "Checking both."));
        s.extend(block_stop(0));
        s.extend(ev(
            "contentBlockStart",
            json!({ "contentBlockIndex": 1,
            "start": { "toolUse": { "toolUseId": "tooluse_a", "name": "get_weather" } } }),
        ));
        for piece in ["", "{\"city\": \"Pa", "ris\"}"] {
            s.extend(ev(
                "contentBlockDelta",
                json!({ "contentBlockIndex": 1,
                "delta": { "toolUse": { "input": piece } } }),
            ));
        }
        s.extend(block_stop(1));
        // Reasoning between the tools: dropped.
        s.extend(ev(
            "contentBlockDelta",
            json!({ "contentBlockIndex": 2,
            "delta": { "reasoningContent": { "text": "thinking" } } }),
        ));
        s.extend(ev(
            "contentBlockStart",
            json!({ "contentBlockIndex": 3,
            "start": { "toolUse": { "toolUseId": "tooluse_b", "name": "get_time" } } }),
        ));
        s.extend(ev(
            "contentBlockDelta",
            json!({ "contentBlockIndex": 3,
            "delta": { "toolUse": { "input": "{\"tz\":\"CET\"}" } } }),
        ));
        s.extend(block_stop(3));
        s.extend(stop("tool_use"));
        s.extend(metadata(json!({ "inputTokens": 100, "outputTokens": 40 })));
        s
    }

    #[test]
    fn tool_use_stream_translates() {
        let evs = events(&run(
            &mut StreamTranslator::new(MODEL, 5, false),
            &tool_stream(),
        ));
        let deltas: Vec<&Value> = evs.iter().map(|e| &e["choices"][0]["delta"]).collect();
        assert_eq!(deltas[1], &json!({"content": "Checking both."}));
        assert_eq!(
            deltas[2],
            &json!({"tool_calls": [{"index": 0, "id": "tooluse_a", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]})
        );
        // The empty input piece is skipped.
        assert_eq!(
            deltas[3],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Pa"}}]})
        );
        assert_eq!(
            deltas[4],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": "ris\"}"}}]})
        );
        // Converse block 3 is OpenAI tool call 1.
        assert_eq!(
            deltas[5],
            &json!({"tool_calls": [{"index": 1, "id": "tooluse_b", "type": "function",
                    "function": {"name": "get_time", "arguments": ""}}]})
        );
        assert_eq!(
            deltas[6],
            &json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"tz\":\"CET\"}"}}]})
        );
        assert_eq!(evs[7]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(evs[8], "[DONE]");
        assert_eq!(evs.len(), 9);
    }

    fn cached_stream() -> Vec<u8> {
        let mut s = start();
        s.extend(text(0, "Hi"));
        s.extend(stop("end_turn"));
        s.extend(metadata(
            json!({ "inputTokens": 10, "outputTokens": 7, "totalTokens": 2317,
            "cacheReadInputTokens": 2000, "cacheWriteInputTokens": 300 }),
        ));
        s
    }

    #[test]
    fn include_usage_adds_a_usage_chunk_with_cache_tokens() {
        let mut t = StreamTranslator::new(MODEL, 9, true);
        let evs = events(&run(&mut t, &cached_stream()));
        let n = evs.len();
        assert_eq!(n, 5);
        assert_eq!(evs[n - 1], "[DONE]");
        for e in &evs[..n - 2] {
            assert!(e.as_object().unwrap().contains_key("usage"));
            assert_eq!(e["usage"], Value::Null);
        }
        let id = evs[0]["id"].clone();
        assert_eq!(
            evs[n - 2],
            json!({
                "id": id, "object": "chat.completion.chunk", "created": 9, "model": MODEL,
                "choices": [],
                "usage": {"prompt_tokens": 2310, "completion_tokens": 7, "total_tokens": 2317,
                          "prompt_tokens_details": {"cached_tokens": 2000}},
            })
        );
        let u = t.usage().unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.completion_tokens
            ),
            (2310, 2000, 300, 7)
        );
    }

    #[test]
    fn without_include_usage_no_usage_anywhere() {
        let mut t = StreamTranslator::new(MODEL, 9, false);
        let evs = events(&run(&mut t, &cached_stream()));
        assert_eq!(evs.len(), 4);
        assert!(evs[..3].iter().all(|e| e.get("usage").is_none()));
        assert_eq!(t.usage().unwrap().total_tokens(), 2317);
    }

    #[test]
    fn metadata_before_message_stop_still_completes() {
        let mut s = start();
        s.extend(text(0, "x"));
        s.extend(metadata(json!({ "inputTokens": 1, "outputTokens": 1 })));
        let mut t = StreamTranslator::new(MODEL, 0, false);
        let mut out = Vec::new();
        t.feed(&s, &mut out).unwrap();
        assert!(!t.usage_complete());
        assert!(t.usage().is_some());
        t.feed(&stop("end_turn"), &mut out).unwrap();
        assert!(t.usage_complete());
        t.finish(&mut out).unwrap();
        assert_eq!(events(&out).last().unwrap(), "[DONE]");
    }

    #[test]
    fn exceptions_translate_and_stop() {
        let mut input = start();
        input.extend(text(0, "partial"));
        input.extend(encode(
            &[
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        ));
        // Anything after the exception is ignored, even garbage.
        input.extend(stop("end_turn"));
        input.extend(b"garbage");
        let mut t = StreamTranslator::new(MODEL, 0, true);
        let evs = events(&run(&mut t, &input));
        assert_eq!(content(&evs), "partial");
        assert_eq!(
            evs.last().unwrap(),
            &json!({"error": {"message": "Too many requests, please wait before trying again.",
                              "type": "rate_limit_error", "param": null,
                              "code": "throttlingException"}})
        );
        assert!(!evs.contains(&json!("[DONE]")));
        assert!(t.upstream_failed());
        assert!(t.usage().is_none());
        assert!(!t.usage_complete());

        // An `error` message carries its code and text in headers.
        let mut input = start();
        input.extend(encode(
            &[
                (":error-code", "InternalFailure"),
                (":error-message", "boom"),
                (":message-type", "error"),
            ],
            b"",
        ));
        let evs = events(&run(&mut StreamTranslator::new(MODEL, 0, false), &input));
        assert_eq!(evs[1]["error"]["code"], "InternalFailure");
        assert_eq!(evs[1]["error"]["message"], "boom");
        assert_eq!(evs[1]["error"]["type"], "server_error");
    }

    #[test]
    fn truncated_stream_is_an_error_at_finish() {
        let full = text_stream(&["Hello", " there"], "end_turn");
        let stop_at = full.len()
            - metadata(json!({ "inputTokens": 25, "outputTokens": 12,
            "totalTokens": 37 }))
            .len();
        for (cut, want) in [
            (0, "before messageStart"),
            (10, "before messageStart"),
            (stop_at - 5, "before messageStop"),
            (stop_at, "before metadata"),
            (full.len() - 1, "before metadata"),
        ] {
            let mut t = StreamTranslator::new(MODEL, 0, true);
            let mut out = Vec::new();
            t.feed(&full[..cut], &mut out).unwrap();
            let e = t.finish(&mut out).expect_err("truncated");
            assert_eq!(e.field, "stream");
            assert!(e.message.contains(want), "{cut}: {e}");
            assert!(!events(&out).contains(&json!("[DONE]")));
            assert!(t.usage().is_none());
            // Poisoned: later calls fail too.
            assert!(t.feed(b"", &mut out).is_err());
            assert!(t.finish(&mut out).is_err());
        }
        let mut tail = Vec::new();
        error_event(&TranslateError::new("stream", "x"), &mut tail);
        assert_eq!(events(&tail)[0]["error"]["code"], "upstream_stream_error");
    }

    #[test]
    fn malformed_streams_are_errors_that_stick() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (text(0, "x"), "before messageStart"),
            ([start(), start()].concat(), "repeated"),
            (
                [
                    start(),
                    ev("contentBlockDelta", json!({ "delta": { "text": "x" } })),
                ]
                .concat(),
                "contentBlockIndex",
            ),
            (
                [
                    start(),
                    ev(
                        "contentBlockDelta",
                        json!({ "contentBlockIndex": 4,
                    "delta": { "toolUse": { "input": "{}" } } }),
                    ),
                ]
                .concat(),
                "not a started toolUse block",
            ),
            (
                [
                    start(),
                    ev(
                        "contentBlockStart",
                        json!({ "contentBlockIndex": 1,
                    "start": { "toolUse": { "name": "f" } } }),
                    ),
                ]
                .concat(),
                "toolUseId",
            ),
            (
                [start(), ev("messageStop", json!({}))].concat(),
                "stopReason",
            ),
            (
                [
                    start(),
                    metadata(json!({ "inputTokens": -1, "outputTokens": 1 })),
                ]
                .concat(),
                "metadata.usage",
            ),
            (
                [
                    start(),
                    encode(&[(":event-type", "contentBlockDelta")], b"{nope"),
                ]
                .concat(),
                "not JSON",
            ),
            (
                [start(), encode(&[(":message-type", "event")], b"{}")].concat(),
                ":event-type",
            ),
            (
                [start(), encode(&[(":message-type", "weird")], b"{}")].concat(),
                "weird",
            ),
        ];
        for (input, want) in cases {
            let mut t = StreamTranslator::new(MODEL, 0, false);
            let mut out = Vec::new();
            let e = t.feed(&input, &mut out).expect_err(want);
            assert!(e.to_string().contains(want), "{want}: {e}");
            assert_eq!(t.feed(&start(), &mut out).unwrap_err(), e, "stays broken");
            assert_eq!(t.finish(&mut out).unwrap_err(), e);
        }
        // Framing errors: a CRC mismatch and an oversize prelude.
        let mut bad = start();
        let n = bad.len();
        bad[n - 1] ^= 1;
        let e = StreamTranslator::new(MODEL, 0, false)
            .feed(&bad, &mut Vec::new())
            .unwrap_err();
        assert!(e.message.contains("CRC"), "{e}");
        let mut p = ((EVENT_MESSAGE_BYTES_MAX + 1) as u32)
            .to_be_bytes()
            .to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&p);
        p.extend_from_slice(&crc.to_be_bytes());
        let e = StreamTranslator::new(MODEL, 0, false)
            .feed(&p, &mut Vec::new())
            .unwrap_err();
        assert!(e.message.contains("exceeds"), "{e}");
    }

    /// The non-streamed Converse response equivalent to `mixed_stream`.
    fn non_streamed(text: &str, tools: bool) -> Value {
        let mut content = vec![json!({ "text": text })];
        if tools {
            content.push(
                json!({ "toolUse": { "toolUseId": "tooluse_a", "name": "get_weather",
                                              "input": { "city": "Paris" } } }),
            );
            content.push(
                json!({ "toolUse": { "toolUseId": "tooluse_b", "name": "get_time",
                                              "input": { "tz": "CET" } } }),
            );
        }
        let body = json!({
            "output": { "message": { "role": "assistant", "content": content } },
            "stopReason": if tools { "tool_use" } else { "end_turn" },
            "usage": { "inputTokens": 100, "outputTokens": 40 },
        });
        let (out, _) = converse_to_chat(body.to_string().as_bytes(), MODEL, 0).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    /// `pieces` as text deltas, then (when `tools`) the two tool calls of
    /// `tool_stream`.
    fn mixed_stream(pieces: &[String], tools: bool) -> Vec<u8> {
        let mut s = start();
        for p in pieces {
            s.extend(text(0, p));
        }
        s.extend(block_stop(0));
        if tools {
            let t = tool_stream();
            // tool_stream's events after its first text block, up to its
            // messageStop: the tool blocks and the reasoning delta.
            let skip = start().len() + text(0, "Checking both.").len() + block_stop(0).len();
            let tail = stop("tool_use").len()
                + metadata(json!({ "inputTokens": 100, "outputTokens": 40 })).len();
            s.extend_from_slice(&t[skip..t.len() - tail]);
        }
        s.extend(stop(if tools { "tool_use" } else { "end_turn" }));
        s.extend(metadata(json!({ "inputTokens": 100, "outputTokens": 40 })));
        s
    }

    proptest! {
        #[test]
        fn split_points_do_not_change_output(
            pieces in prop::collection::vec(any::<String>(), 0..8),
            tools in any::<bool>(),
            include_usage in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let input = mixed_stream(&pieces, tools);
            let whole = run(&mut StreamTranslator::new(MODEL, 1, include_usage), &input);
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

            let evs = events(&whole);
            prop_assert_eq!(evs.last().unwrap(), &json!("[DONE]"));
            let text: String = pieces.concat();
            prop_assert_eq!(&content(&evs), &text);
            let expected = non_streamed(&text, tools);
            let message = &expected["choices"][0]["message"];
            prop_assert_eq!(content(&evs), message["content"].as_str().unwrap_or(""));
            // Tool calls: joined arguments parse to the non-streamed ones.
            let mut calls: Vec<(String, String, String)> = Vec::new();
            for e in &evs {
                for c in e["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
                    let i = c["index"].as_u64().unwrap() as usize;
                    if i == calls.len() {
                        calls.push((
                            c["id"].as_str().unwrap().into(),
                            c["function"]["name"].as_str().unwrap().into(),
                            String::new(),
                        ));
                    }
                    calls[i].2.push_str(c["function"]["arguments"].as_str().unwrap());
                }
            }
            let want = message["tool_calls"].as_array().cloned().unwrap_or_default();
            prop_assert_eq!(calls.len(), want.len());
            for (got, want) in calls.iter().zip(&want) {
                prop_assert_eq!(&got.0, want["id"].as_str().unwrap());
                prop_assert_eq!(&got.1, want["function"]["name"].as_str().unwrap());
                let a: Value = serde_json::from_str(&got.2).unwrap();
                let b: Value =
                    serde_json::from_str(want["function"]["arguments"].as_str().unwrap()).unwrap();
                prop_assert_eq!(a, b);
            }
            let finish = if tools { "tool_calls" } else { "stop" };
            prop_assert!(evs.iter().any(|e| e["choices"][0]["finish_reason"] == finish));
        }

        /// Random bytes, alone or after a valid start, never panic.
        #[test]
        fn random_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            after_start in any::<bool>(),
        ) {
            let mut t = StreamTranslator::new(MODEL, 0, true);
            let mut out = Vec::new();
            if after_start {
                t.feed(&start(), &mut out).unwrap();
            }
            let _ = t.feed(&bytes, &mut out);
            let _ = t.finish(&mut out);
            let _ = t.usage();
        }
    }
}
