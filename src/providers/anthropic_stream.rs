//! Streamed `anthropic` translation: Anthropic Messages SSE events in,
//! OpenAI `chat.completion.chunk` SSE events out. Pure and synchronous: the
//! caller feeds each upstream read to [`StreamTranslator::feed`] and writes
//! what it appends to the client, then calls [`StreamTranslator::finish`] at
//! the end of the upstream body.
//!
//! Mapping:
//! - `message_start` → a first chunk with `delta.role = "assistant"` (and
//!   `content: ""`, as OpenAI sends); its message id becomes every chunk's
//!   `id`, its usage the input and cache counts.
//! - `content_block_start` of a `text` block → its initial text, if any;
//!   of a `tool_use` block → `delta.tool_calls[{index, id, type, function:
//!   {name, arguments: ""}}]`, `index` counting tool_use blocks only.
//! - `content_block_delta`: `text_delta` → `delta.content`;
//!   `input_json_delta` → `delta.tool_calls[{index, function: {arguments}}]`
//!   (empty pieces are skipped); other deltas (thinking, signatures,
//!   citations) have no chat.completion place and are dropped.
//! - `message_delta` → a chunk with `finish_reason` when `stop_reason` is
//!   set; its `usage` updates the counts (`output_tokens`, and any input or
//!   cache count it carries, Anthropic's counts being cumulative).
//! - `message_stop` → with `include_usage`, a chunk with `choices: []` and
//!   `usage`; then `data: [DONE]`. Later bytes are ignored. The usage chunk
//!   is written only when the stream gave an input count and a
//!   `message_delta` gave the final output count: zeros (or
//!   `message_start`'s first output token) would read as the provider's
//!   final word, so without them the gateway counts the text instead.
//! - `error` → `data: {"error": {...}}` in OpenAI's shape, and the
//!   translator stops (no `[DONE]`): the caller decides what follows.
//! - `ping`, `content_block_stop` and unknown event types produce nothing.
//!
//! With `include_usage`, every other chunk carries `"usage": null`, as
//! OpenAI does with `stream_options.include_usage`.

use serde_json::{json, Value};

use super::anthropic::{MessageUsage, TranslateError};
pub use super::chunks::{error_event, MAX_PENDING_EVENT_BYTES};
use super::chunks::{write_error, Chunks, SseTranslation, SseTranslator};

fn err(field: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError::new(field, message)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before `message_start`.
    Start,
    /// Between `message_start` and `message_stop`.
    Streaming,
    /// `message_stop` translated, `[DONE]` written.
    Done,
    /// An upstream `error` event translated.
    UpstreamError,
}

/// Translates one Anthropic Messages event stream into OpenAI chunks.
#[derive(Debug)]
pub struct StreamTranslator(SseTranslator<Messages>);

/// What the events say so far.
#[derive(Debug)]
struct Messages {
    chunks: Chunks,
    state: State,
    /// The counts read so far (0 where none was sent).
    usage: MessageUsage,
    /// Whether an `input_tokens` count arrived (`message_start`, or a
    /// `message_delta` that repeats it).
    input_counted: bool,
    /// Whether a `message_delta` carried `output_tokens`: the final,
    /// cumulative output count (`message_start`'s is only where it began).
    output_counted: bool,
    /// Anthropic content block index → OpenAI tool-call index.
    tool_blocks: Vec<(u64, u64)>,
    tool_calls: u64,
}

impl StreamTranslator {
    /// `model` and `created` (Unix seconds) are written into every chunk;
    /// `include_usage` is the request's `stream_options.include_usage`.
    pub fn new(model: &str, created: i64, include_usage: bool) -> Self {
        Self(SseTranslator::new(Messages {
            chunks: Chunks::new(model, created, include_usage),
            state: State::Start,
            usage: MessageUsage::default(),
            input_counted: false,
            output_counted: false,
            tool_blocks: Vec::new(),
            tool_calls: 0,
        }))
    }

    /// Appends to `out` the OpenAI events for every upstream event that
    /// `chunk` completes; an incomplete tail is kept for the next call. After
    /// `message_stop` or an upstream `error`, further bytes are ignored. An
    /// error (malformed event, event out of order, an event longer than
    /// [`MAX_PENDING_EVENT_BYTES`]) leaves whatever was appended before it
    /// valid and makes every later call fail.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        self.0.feed(chunk, out)
    }

    /// The end of the upstream body. A stream ended before `message_stop`
    /// (or an upstream `error`) is an error, for the caller to turn into an
    /// SSE error event; [`StreamTranslator::usage`] still reports what was
    /// counted.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        self.0.finish(out)
    }

    /// The provider's counts once it has sent both the input count and the
    /// final output count (`message_delta`'s `output_tokens`); `None` until
    /// then, and for a stream that never sends them: such a stream is not
    /// the provider's word that it cost nothing.
    pub fn usage(&self) -> Option<MessageUsage> {
        let t = &self.0.t;
        (t.input_counted && t.output_counted).then_some(t.usage)
    }

    /// Every input token as the provider counted them (`message_start`),
    /// also for a stream cut before its final counts; `None` when it sent no
    /// input count.
    pub fn prompt_tokens(&self) -> Option<u64> {
        let t = &self.0.t;
        t.input_counted.then(|| t.usage.prompt_tokens())
    }

    /// Whether `message_stop` arrived: the usage is the provider's final count.
    pub fn complete(&self) -> bool {
        self.0.t.state == State::Done
    }

    /// Whether upstream sent an `error` event (translated, then stopped).
    pub fn upstream_failed(&self) -> bool {
        self.0.t.state == State::UpstreamError
    }
}

impl SseTranslation for Messages {
    fn ended(&self) -> bool {
        matches!(self.state, State::Done | State::UpstreamError)
    }

    fn end(&mut self, _out: &mut Vec<u8>) -> Result<(), TranslateError> {
        Err(err(
            "stream",
            match self.state {
                State::Start => "upstream stream ended before message_start",
                _ => "upstream stream ended before message_stop",
            },
        ))
    }

    /// Translates one complete upstream event.
    fn event(
        &mut self,
        kind: Option<&[u8]>,
        data: Value,
        out: &mut Vec<u8>,
    ) -> Result<(), TranslateError> {
        let ty = match data.get("type").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None => match kind {
                Some(k) => String::from_utf8_lossy(k).into_owned(),
                None => return Err(err("stream", "upstream event without a type")),
            },
        };
        match ty.as_str() {
            "message_start" => self.message_start(&data, out),
            "content_block_start" => {
                self.require_started(&ty)?;
                self.block_start(&data, out)
            }
            "content_block_delta" => {
                self.require_started(&ty)?;
                self.block_delta(&data, out)
            }
            "message_delta" => {
                self.require_started(&ty)?;
                self.message_delta(&data, out)
            }
            "message_stop" => {
                self.require_started(&ty)?;
                self.message_stop(out)
            }
            "error" => {
                self.upstream_error(&data, out);
                Ok(())
            }
            // ping, content_block_stop, and event types added later.
            _ => Ok(()),
        }
    }
}

impl Messages {
    fn require_started(&self, ty: &str) -> Result<(), TranslateError> {
        if self.state == State::Start {
            return Err(err("stream", format!("{ty} before message_start")));
        }
        Ok(())
    }

    fn message_start(&mut self, data: &Value, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.state != State::Start {
            return Err(err("stream", "message_start repeated"));
        }
        let msg = data
            .get("message")
            .ok_or_else(|| err("message_start.message", "required, an object"))?;
        self.chunks.id = msg
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| err("message_start.message.id", "required, a string"))?
            .to_string();
        if let Some(u) = msg.get("usage").filter(|u| !u.is_null()) {
            self.usage = MessageUsage::from_json(u).map_err(|e| TranslateError {
                field: format!("message_start.message.{}", e.field),
                message: e.message,
            })?;
            self.input_counted = u.get("input_tokens").is_some_and(|v| !v.is_null());
        }
        self.state = State::Streaming;
        self.choice_chunk(json!({ "role": "assistant", "content": "" }), None, out);
        Ok(())
    }

    fn block_start(&mut self, data: &Value, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let index = data
            .get("index")
            .and_then(Value::as_u64)
            .ok_or_else(|| err("content_block_start.index", "required, an integer"))?;
        let block = data
            .get("content_block")
            .ok_or_else(|| err("content_block_start.content_block", "required, an object"))?;
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = block.get("text").and_then(Value::as_str) {
                    if !t.is_empty() {
                        self.choice_chunk(json!({ "content": t }), None, out);
                    }
                }
            }
            Some("tool_use") => {
                let at = |f: &str| format!("content_block_start.content_block.{f}");
                let id = block
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| err(at("id"), "required, a string"))?;
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| err(at("name"), "required, a string"))?;
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
            }
            // thinking, redacted_thinking, server tool blocks: no place here.
            _ => {}
        }
        Ok(())
    }

    fn block_delta(&mut self, data: &Value, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let index = data
            .get("index")
            .and_then(Value::as_u64)
            .ok_or_else(|| err("content_block_delta.index", "required, an integer"))?;
        let delta = data
            .get("delta")
            .ok_or_else(|| err("content_block_delta.delta", "required, an object"))?;
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                let t = delta
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| err("content_block_delta.delta.text", "required, a string"))?;
                if !t.is_empty() {
                    self.choice_chunk(json!({ "content": t }), None, out);
                }
            }
            Some("input_json_delta") => {
                let piece = delta
                    .get("partial_json")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        err(
                            "content_block_delta.delta.partial_json",
                            "required, a string",
                        )
                    })?;
                let tool_index = self
                    .tool_blocks
                    .iter()
                    .rev()
                    .find(|(b, _)| *b == index)
                    .map(|(_, t)| *t)
                    .ok_or_else(|| {
                        err(
                            "content_block_delta.index",
                            format!("input_json_delta for block {index}, not a tool_use block"),
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
            _ => {}
        }
        Ok(())
    }

    fn message_delta(&mut self, data: &Value, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if let Some(Value::Object(u)) = data.get("usage") {
            let read =
                MessageUsage::from_json(&Value::Object(u.clone())).map_err(|e| TranslateError {
                    field: format!("message_delta.{}", e.field),
                    message: e.message,
                })?;
            let has = |k: &str| u.get(k).is_some_and(|v| !v.is_null());
            let usage = &mut self.usage;
            if has("output_tokens") {
                usage.output = read.output;
                self.output_counted = true;
            }
            if has("input_tokens") {
                usage.input = read.input;
                self.input_counted = true;
            }
            if has("cache_read_input_tokens") {
                usage.cache_read = read.cache_read;
            }
            if has("cache_creation_input_tokens") {
                usage.cache_write = read.cache_write;
            }
        }
        let stop = data
            .get("delta")
            .and_then(|d| d.get("stop_reason"))
            .and_then(Value::as_str);
        if let Some(stop) = stop {
            let reason = match stop {
                "max_tokens" | "model_context_window_exceeded" => "length",
                "tool_use" => "tool_calls",
                "refusal" => "content_filter",
                // end_turn, stop_sequence, pause_turn, and later reasons.
                _ => "stop",
            };
            self.choice_chunk(json!({}), Some(reason), out);
        }
        Ok(())
    }

    fn message_stop(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        // Counts missing: no usage chunk (see `Chunks::done`).
        let usage = (self.input_counted && self.output_counted).then_some(self.usage);
        self.chunks.done(|| usage.map(|u| u.openai_json()), out);
        self.state = State::Done;
        Ok(())
    }

    fn upstream_error(&mut self, data: &Value, out: &mut Vec<u8>) {
        let e = data.get("error");
        let kind = e
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("api_error");
        let message = e
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("upstream error");
        let openai_type = match kind {
            "invalid_request_error"
            | "authentication_error"
            | "permission_error"
            | "not_found_error"
            | "rate_limit_error" => kind,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::anthropic::message_to_chat;
    use crate::providers::chunks::test_support::content;
    use proptest::prelude::*;

    const MODEL: &str = "claude-sonnet-4-5";

    fn sse(events: &[Value]) -> Vec<u8> {
        sse_with(events, &[b"\n"])
    }

    /// Events as upstream SSE, the i-th event's lines ended by `ends[i % len]`.
    fn sse_with(events: &[Value], ends: &[&[u8]]) -> Vec<u8> {
        let mut s = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let nl = ends[i % ends.len()];
            s.extend_from_slice(b"event: ");
            s.extend_from_slice(e["type"].as_str().unwrap().as_bytes());
            s.extend_from_slice(nl);
            s.extend_from_slice(b"data: ");
            s.extend_from_slice(e.to_string().as_bytes());
            s.extend_from_slice(nl);
            s.extend_from_slice(nl);
        }
        s
    }

    fn start(usage: Value) -> Value {
        json!({"type": "message_start", "message": {
            "id": "msg_01", "type": "message", "role": "assistant", "content": [],
            "model": MODEL, "stop_reason": null, "stop_sequence": null, "usage": usage,
        }})
    }

    fn text_stream(pieces: &[&str], stop: &str, usage_out: u64) -> Vec<Value> {
        let mut ev = vec![
            start(json!({"input_tokens": 25, "output_tokens": 1})),
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
        ];
        for p in pieces {
            ev.push(json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": p}}));
        }
        ev.push(json!({"type": "content_block_stop", "index": 0}));
        ev.push(json!({"type": "message_delta",
                       "delta": {"stop_reason": stop, "stop_sequence": null},
                       "usage": {"output_tokens": usage_out}}));
        ev.push(json!({"type": "message_stop"}));
        ev
    }

    fn run(t: &mut StreamTranslator, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        t.feed(input, &mut out).expect("feed");
        t.finish(&mut out).expect("finish");
        out
    }

    /// The data payloads of an OpenAI SSE output; `[DONE]` as a string.
    fn events(out: &[u8]) -> Vec<Value> {
        let s = std::str::from_utf8(out).unwrap();
        assert!(s.ends_with("\n\n"), "{s}");
        s.split_terminator("\n\n")
            .map(|e| {
                let d = e.strip_prefix("data: ").expect("a data line");
                if d == "[DONE]" {
                    json!("[DONE]")
                } else {
                    serde_json::from_str(d).unwrap()
                }
            })
            .collect()
    }

    #[test]
    fn text_stream_translates() {
        let input = sse(&text_stream(&["Hello", ", wor", "ld!"], "end_turn", 12));
        let mut t = StreamTranslator::new(MODEL, 1_700_000_000, false);
        let evs = events(&run(&mut t, &input));
        assert_eq!(evs.len(), 6, "{evs:?}");
        for e in &evs[..5] {
            assert_eq!(e["id"], "msg_01");
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
        assert_eq!(
            t.usage(),
            Some(MessageUsage {
                input: 25,
                output: 12,
                cache_read: 0,
                cache_write: 0
            })
        );
        assert!(!t.upstream_failed());
    }

    #[test]
    fn finish_reasons_map() {
        for (stop, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
        ] {
            let input = sse(&text_stream(&["x"], stop, 1));
            let evs = events(&run(&mut StreamTranslator::new(MODEL, 0, false), &input));
            assert_eq!(evs[evs.len() - 2]["choices"][0]["finish_reason"], want);
        }
    }

    fn tool_stream() -> Vec<Value> {
        vec![
            start(json!({"input_tokens": 100, "output_tokens": 2})),
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": "Checking both."}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block":
                   {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1,
                   "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_delta", "index": 1,
                   "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}),
            json!({"type": "content_block_delta", "index": 1,
                   "delta": {"type": "input_json_delta", "partial_json": "ris\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block":
                   {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2,
                   "delta": {"type": "input_json_delta", "partial_json": "{\"tz\":\"CET\"}"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                   "usage": {"output_tokens": 40}}),
            json!({"type": "message_stop"}),
        ]
    }

    #[test]
    fn tool_use_stream_translates() {
        let input = sse(&tool_stream());
        let evs = events(&run(&mut StreamTranslator::new(MODEL, 5, false), &input));
        let deltas: Vec<&Value> = evs.iter().map(|e| &e["choices"][0]["delta"]).collect();
        assert_eq!(deltas[1], &json!({"content": "Checking both."}));
        assert_eq!(
            deltas[2],
            &json!({"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]})
        );
        // The empty partial_json piece is skipped.
        assert_eq!(
            deltas[3],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Pa"}}]})
        );
        assert_eq!(
            deltas[4],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": "ris\"}"}}]})
        );
        // Anthropic block 2 is OpenAI tool call 1.
        assert_eq!(
            deltas[5],
            &json!({"tool_calls": [{"index": 1, "id": "toolu_b", "type": "function",
                    "function": {"name": "get_time", "arguments": ""}}]})
        );
        assert_eq!(
            deltas[6],
            &json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"tz\":\"CET\"}"}}]})
        );
        assert_eq!(evs[7]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(evs[8], "[DONE]");
        assert_eq!(evs.len(), 9);
        // The arguments, joined per tool call, are the tool inputs.
        let mut args = [String::new(), String::new()];
        for e in &evs[..8] {
            if let Some(calls) = e["choices"][0]["delta"]["tool_calls"].as_array() {
                for c in calls {
                    let i = c["index"].as_u64().unwrap() as usize;
                    args[i].push_str(c["function"]["arguments"].as_str().unwrap());
                }
            }
        }
        assert_eq!(args, ["{\"city\": \"Paris\"}", "{\"tz\":\"CET\"}"]);
    }

    fn cached_stream() -> Vec<u8> {
        sse(&[
            start(json!({"input_tokens": 10, "output_tokens": 1,
                         "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 300})),
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                   "usage": {"output_tokens": 7}}),
            json!({"type": "message_stop"}),
        ])
    }

    #[test]
    fn include_usage_adds_a_usage_chunk_with_cache_tokens() {
        let mut t = StreamTranslator::new(MODEL, 9, true);
        let evs = events(&run(&mut t, &cached_stream()));
        let n = evs.len();
        assert_eq!(evs[n - 1], "[DONE]");
        for e in &evs[..n - 2] {
            assert_eq!(e["usage"], Value::Null);
            assert!(e.as_object().unwrap().contains_key("usage"));
        }
        assert_eq!(
            evs[n - 2],
            json!({
                "id": "msg_01", "object": "chat.completion.chunk", "created": 9, "model": MODEL,
                "choices": [],
                "usage": {"prompt_tokens": 2310, "completion_tokens": 7, "total_tokens": 2317,
                          "prompt_tokens_details": {"cached_tokens": 2000}},
            })
        );
        assert_eq!(
            t.usage(),
            Some(MessageUsage {
                input: 10,
                output: 7,
                cache_read: 2000,
                cache_write: 300
            })
        );
    }

    #[test]
    fn without_include_usage_no_usage_anywhere() {
        let mut t = StreamTranslator::new(MODEL, 9, false);
        let evs = events(&run(&mut t, &cached_stream()));
        assert_eq!(evs.len(), 4);
        assert!(evs[..3]
            .iter()
            .all(|e| e.get("usage").is_none() && e["choices"].as_array().unwrap().len() == 1));
        // Usage is still counted for billing.
        assert_eq!(t.usage().unwrap().total_tokens(), 2317);
    }

    #[test]
    fn upstream_error_event_translates_and_stops() {
        let mut ev = text_stream(&["partial"], "end_turn", 3);
        ev.truncate(4);
        ev.push(json!({"type": "error",
                       "error": {"type": "overloaded_error", "message": "Overloaded"}}));
        let mut input = sse(&ev);
        // Anything after the error is ignored.
        input.extend_from_slice(&sse(&[json!({"type": "message_stop"})]));
        let mut t = StreamTranslator::new(MODEL, 0, true);
        let evs = events(&run(&mut t, &input));
        assert_eq!(content(&evs), "partial");
        assert_eq!(
            evs.last().unwrap(),
            &json!({"error": {"message": "Overloaded", "type": "server_error",
                              "param": null, "code": "overloaded_error"}})
        );
        assert!(!evs.contains(&json!("[DONE]")));
        assert!(t.upstream_failed());
        assert_eq!(t.prompt_tokens(), Some(25));
    }

    #[test]
    fn truncated_stream_is_an_error_at_finish() {
        let full = sse(&text_stream(&["Hello", " there"], "end_turn", 5));
        // Cut inside the message_delta event.
        let cut = find(&full, b"event: message_delta") + 30;
        let mut t = StreamTranslator::new(MODEL, 0, true);
        let mut out = Vec::new();
        t.feed(&full[..cut], &mut out).unwrap();
        let e = t.finish(&mut out).expect_err("truncated");
        assert_eq!(e.field, "stream");
        assert!(e.message.contains("before message_stop"), "{e}");
        let evs = events(&out);
        assert_eq!(content(&evs), "Hello there");
        assert!(!evs.contains(&json!("[DONE]")));
        // Billing still sees the input; the error reaches the client as SSE.
        assert_eq!(t.prompt_tokens(), Some(25));
        let mut tail = Vec::new();
        error_event(&e, &mut tail);
        assert_eq!(events(&tail)[0]["error"]["code"], "upstream_stream_error");
        // An empty body too.
        let e = StreamTranslator::new(MODEL, 0, false)
            .finish(&mut Vec::new())
            .unwrap_err();
        assert!(e.message.contains("before message_start"));
    }

    #[test]
    fn malformed_and_oversized_events_are_errors() {
        let mut t = StreamTranslator::new(MODEL, 0, false);
        let mut out = Vec::new();
        let e = t.feed(b"data: {not json\n\n", &mut out).unwrap_err();
        assert!(e.message.contains("not JSON"));
        assert!(t.feed(b"", &mut out).is_err(), "stays broken");

        let mut t = StreamTranslator::new(MODEL, 0, false);
        let delta = sse(&[json!({"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "x"}})]);
        let e = t.feed(&delta, &mut out).unwrap_err();
        assert!(e.message.contains("before message_start"));

        let mut t = StreamTranslator::new(MODEL, 0, false);
        let big = vec![b'a'; MAX_PENDING_EVENT_BYTES];
        t.feed(b"data: ", &mut out).unwrap();
        let e = t.feed(&big, &mut out).unwrap_err();
        assert!(e.message.contains("exceeds"));
    }

    #[test]
    fn crlf_cr_and_unknown_events() {
        let mut input = Vec::new();
        let evs = text_stream(&["a", "b"], "end_turn", 2);
        for (i, e) in evs.iter().enumerate() {
            let nl: &[u8] = if i % 2 == 0 { b"\r\n" } else { b"\r" };
            input.extend_from_slice(b"data: ");
            input.extend_from_slice(e.to_string().as_bytes());
            input.extend_from_slice(nl);
            input.extend_from_slice(nl);
            if i == 1 {
                input.extend_from_slice(
                    b": comment\n\nevent: future\ndata: {\"type\":\"future\"}\n\n",
                );
            }
        }
        // The last event ends with a lone CR pair: reported by finish().
        assert!(input.ends_with(b"\r\r"));
        let out = run(&mut StreamTranslator::new(MODEL, 0, false), &input);
        let evs = events(&out);
        assert_eq!(content(&evs), "ab");
        assert_eq!(evs.last().unwrap(), "[DONE]");
    }

    fn find(h: &[u8], n: &[u8]) -> usize {
        h.windows(n.len()).position(|w| w == n).unwrap()
    }

    /// The non-streamed Messages response equivalent to a stream with
    /// `text` and, when `tools`, the two tool calls of `tool_stream`.
    fn non_streamed(text: &str, tools: bool) -> Value {
        let mut content = vec![json!({"type": "text", "text": text})];
        if tools {
            content.push(
                json!({"type": "tool_use", "id": "toolu_a", "name": "get_weather",
                                "input": {"city": "Paris"}}),
            );
            content.push(
                json!({"type": "tool_use", "id": "toolu_b", "name": "get_time",
                                "input": {"tz": "CET"}}),
            );
        }
        let body = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": MODEL,
            "content": content,
            "stop_reason": if tools { "tool_use" } else { "end_turn" }, "stop_sequence": null,
            "usage": {"input_tokens": 25, "output_tokens": 5},
        });
        serde_json::from_slice(&message_to_chat(body.to_string().as_bytes(), 0).unwrap()).unwrap()
    }

    /// A stream of `pieces` as text deltas, then (when `tools`) the two tool
    /// calls of `tool_stream`.
    fn mixed_stream(pieces: &[String], tools: bool) -> Vec<Value> {
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let mut ev = text_stream(&refs, if tools { "tool_use" } else { "end_turn" }, 5);
        if tools {
            let tail = ev.split_off(ev.len() - 2);
            ev.extend_from_slice(&tool_stream()[4..12]);
            ev.extend(tail);
        }
        ev
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
    }
}
