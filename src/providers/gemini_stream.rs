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
//!   `include_usage`, a chunk with `choices: []` and `usage`; then
//!   `data: [DONE]`. Gemini has no end event: the finish reason is in the
//!   last event but one may still follow with the final usage, so the
//!   stream is closed only at the end of the body.
//!
//! With `include_usage`, every other chunk carries `"usage": null`, as
//! OpenAI does with `stream_options.include_usage`.

use serde_json::{json, Map, Value};

use super::gemini::{
    completion_id, finish_reason, openai_error_type, openai_usage, read_parts, usage_from_metadata,
};
use super::TranslateError;
use crate::tokens::sse::{parse_event, SseFramer};
use crate::tokens::Usage;

pub use super::anthropic_stream::error_event;

/// The most bytes of one incomplete upstream event kept between two calls to
/// [`StreamTranslator::feed`]; an event growing past it is an error.
pub const MAX_PENDING_EVENT_BYTES: usize = 1 << 20;

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
    /// A call returned an error; later calls fail too.
    Broken,
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
pub struct StreamTranslator {
    model: String,
    created: i64,
    include_usage: bool,
    framer: SseFramer,
    /// The bytes of an incomplete event, carried to the next feed.
    pending: Vec<u8>,
    /// Where `parse_event` joins multi-line data.
    scratch: Vec<u8>,
    state: State,
    id: String,
    usage: Option<Usage>,
    candidates: Vec<Candidate>,
    /// The error that made the translator [`State::Broken`].
    broken: Option<TranslateError>,
}

impl StreamTranslator {
    /// `model` and `created` (Unix seconds) are written into every chunk;
    /// `include_usage` is the request's `stream_options.include_usage`.
    pub fn new(model: &str, created: i64, include_usage: bool) -> Self {
        Self {
            model: model.to_string(),
            created,
            include_usage,
            framer: SseFramer::new(),
            pending: Vec::new(),
            scratch: Vec::new(),
            state: State::Start,
            id: String::new(),
            usage: None,
            candidates: Vec::new(),
            broken: None,
        }
    }

    /// Appends to `out` the OpenAI events for every upstream event that
    /// `chunk` completes; an incomplete tail is kept for the next call. After
    /// an upstream `error` (or [`StreamTranslator::finish`]), further bytes
    /// are ignored. An error (malformed event, an event longer than
    /// [`MAX_PENDING_EVENT_BYTES`]) leaves whatever was appended before it
    /// valid and makes every later call fail.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        self.check_broken()?;
        let r = self.feed_inner(chunk, out);
        self.poison(r)
    }

    /// The end of the upstream body: writes the usage chunk (with
    /// `include_usage`) and `[DONE]`. A stream that ended before every
    /// candidate it started had a `finishReason` (or with no candidate at
    /// all) is an error, for the caller to turn into an SSE error event
    /// ([`error_event`]); [`StreamTranslator::usage`] still reports what was
    /// counted. After an upstream `error` event, nothing is written.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        self.check_broken()?;
        let r = self.finish_inner(out);
        self.poison(r)
    }

    /// The latest `usageMetadata` seen, normalized; `None` before any.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether the usage is final: a `finishReason` and a `usageMetadata`
    /// were seen.
    pub fn usage_complete(&self) -> bool {
        self.usage.is_some() && self.candidates.iter().any(|c| c.finished)
    }

    /// Whether upstream sent an `error` event (translated, then stopped).
    pub fn upstream_failed(&self) -> bool {
        self.state == State::UpstreamError
    }

    fn check_broken(&self) -> Result<(), TranslateError> {
        match &self.broken {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn poison(&mut self, r: Result<(), TranslateError>) -> Result<(), TranslateError> {
        if let Err(e) = &r {
            self.state = State::Broken;
            self.broken = Some(e.clone());
            self.pending = Vec::new();
        }
        r
    }

    fn ended(&self) -> bool {
        matches!(self.state, State::Done | State::UpstreamError)
    }

    fn feed_inner(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let mut start = 0;
        let mut cursor = 0;
        while let Some(end) = self.framer.next_end(chunk, &mut cursor) {
            if self.ended() {
                return Ok(());
            }
            if self.pending.is_empty() {
                self.event(&chunk[start..end], out)?;
            } else {
                let mut ev = std::mem::take(&mut self.pending);
                ev.extend_from_slice(&chunk[start..end]);
                self.event(&ev, out)?;
                ev.clear();
                self.pending = ev;
            }
            start = end;
        }
        if self.ended() {
            return Ok(());
        }
        let rest = &chunk[start..];
        if self.pending.len() + rest.len() > MAX_PENDING_EVENT_BYTES {
            return Err(err(
                "stream",
                format!("an upstream event exceeds {MAX_PENDING_EVENT_BYTES} bytes"),
            ));
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    fn finish_inner(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if !self.ended() && self.framer.pending_end() && !self.pending.is_empty() {
            // A last event closed by a final CR.
            let ev = std::mem::take(&mut self.pending);
            self.event(&ev, out)?;
        }
        if self.ended() {
            return Ok(());
        }
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
        if self.include_usage {
            let u = self.usage.unwrap_or_default();
            let mut c = self.chunk_base();
            c.insert("choices".into(), json!([]));
            c.insert("usage".into(), openai_usage(&u));
            write_data(&Value::Object(c), out);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.state = State::Done;
        Ok(())
    }

    /// Translates one complete upstream event.
    fn event(&mut self, event: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let parsed = parse_event(event, &mut scratch).data.map(|d| {
            serde_json::from_slice::<Value>(d)
                .map_err(|e| err("stream", format!("upstream event data is not JSON: {e}")))
        });
        self.scratch = scratch;
        let data = match parsed {
            None => return Ok(()),
            Some(d) => d?,
        };
        if !data.is_object() {
            return Err(err("stream", "upstream event data is not a JSON object"));
        }
        if let Some(e) = data.get("error") {
            self.upstream_error(e, out);
            return Ok(());
        }
        if self.state == State::Start {
            self.id = completion_id(data.get("responseId").and_then(Value::as_str), self.created);
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
        let ev = json!({ "error": {
            "message": message,
            "type": openai_error_type(status),
            "param": null,
            "code": status,
        }});
        write_data(&ev, out);
        self.state = State::UpstreamError;
    }

    fn chunk_base(&self) -> Map<String, Value> {
        let mut c = Map::new();
        c.insert("id".into(), json!(self.id));
        c.insert("object".into(), json!("chat.completion.chunk"));
        c.insert("created".into(), json!(self.created));
        c.insert("model".into(), json!(self.model));
        c
    }

    /// Writes a chunk with one choice.
    fn choice_chunk(
        &self,
        index: u64,
        delta: Value,
        finish_reason: Option<&str>,
        out: &mut Vec<u8>,
    ) {
        let mut c = self.chunk_base();
        c.insert(
            "choices".into(),
            json!([{
                "index": index,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }]),
        );
        if self.include_usage {
            c.insert("usage".into(), Value::Null);
        }
        write_data(&Value::Object(c), out);
    }
}

fn write_data(v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    // Writing a Value into a Vec cannot fail.
    serde_json::to_writer(&mut *out, v).expect("serialising a JSON value");
    out.extend_from_slice(b"\n\n");
}
