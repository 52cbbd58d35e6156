//! The core the stream translators ([`super::anthropic_stream`],
//! [`super::gemini_stream`], [`super::bedrock_stream`]) share: writing
//! OpenAI `chat.completion.chunk` SSE events ([`Chunks`], [`error_event`]),
//! the fuse that makes every call after an error fail ([`Fuse`]), and, for
//! the providers that stream SSE, the framing of the upstream body into
//! events with its bound ([`SseTranslator`]). What each provider's events
//! mean stays with its translator.

use serde_json::{json, Map, Value};

use super::TranslateError;
use crate::tokens::sse::{parse_event, SseFramer};

/// The most bytes of one incomplete upstream event kept between two calls to
/// `feed`; an event growing past it is an error.
pub const MAX_PENDING_EVENT_BYTES: usize = 1 << 20;

/// Writes `v` as one SSE event: `data: <json>\n\n`.
pub(crate) fn write_data(v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    // Writing a Value into a Vec cannot fail: it has nothing to report.
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}

/// Writes an OpenAI-shaped SSE error event.
pub(crate) fn write_error(message: &str, kind: &str, code: &str, out: &mut Vec<u8>) {
    let ev = json!({ "error": {
        "message": message,
        "type": kind,
        "param": null,
        "code": code,
    }});
    write_data(&ev, out);
}

/// An OpenAI-shaped SSE error event for a [`TranslateError`] returned by a
/// stream translator's `feed` or `finish`, for a caller that reports it in
/// the stream.
pub fn error_event(e: &TranslateError, out: &mut Vec<u8>) {
    write_error(&e.to_string(), "server_error", "upstream_stream_error", out);
}

/// Writes the chunks of one streamed completion: every chunk names `id`,
/// `model` and `created`; with `include_usage`, every chunk but the usage
/// chunk carries `"usage": null`, as OpenAI does with
/// `stream_options.include_usage`.
#[derive(Debug)]
pub(crate) struct Chunks {
    pub id: String,
    model: String,
    created: i64,
    include_usage: bool,
}

impl Chunks {
    /// `id` is empty until set.
    pub(crate) fn new(model: &str, created: i64, include_usage: bool) -> Self {
        Self {
            id: String::new(),
            model: model.to_string(),
            created,
            include_usage,
        }
    }

    pub(crate) fn created(&self) -> i64 {
        self.created
    }

    fn base(&self) -> Map<String, Value> {
        let mut c = Map::new();
        c.insert("id".into(), json!(self.id));
        c.insert("object".into(), json!("chat.completion.chunk"));
        c.insert("created".into(), json!(self.created));
        c.insert("model".into(), json!(self.model));
        c
    }

    /// Writes a chunk with one choice, `index`.
    pub(crate) fn choice(
        &self,
        index: u64,
        delta: Value,
        finish_reason: Option<&str>,
        out: &mut Vec<u8>,
    ) {
        let mut c = self.base();
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

    /// Ends the stream: with `include_usage`, a chunk with `choices: []` and
    /// the `usage` object `usage` makes; then `data: [DONE]`.
    ///
    /// `usage` gives `None` when the provider never sent its counts: then no
    /// usage chunk is written at all. A chunk of zeros would be read
    /// downstream (the gateway's own meter among them) as the provider's
    /// word that the request cost nothing; without one the meter counts the
    /// stream's text and marks the charge estimated.
    pub(crate) fn done(&self, usage: impl FnOnce() -> Option<Value>, out: &mut Vec<u8>) {
        if self.include_usage {
            if let Some(usage) = usage() {
                let mut c = self.base();
                c.insert("choices".into(), json!([]));
                c.insert("usage".into(), usage);
                write_data(&Value::Object(c), out);
            }
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// The error that broke a translator: once a call has failed, every later
/// call fails with the same error.
#[derive(Debug, Default)]
pub(crate) struct Fuse(Option<TranslateError>);

impl Fuse {
    /// The error, if the fuse has blown.
    pub(crate) fn check(&self) -> Result<(), TranslateError> {
        match &self.0 {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Blows the fuse when `r` is an error; returns `r`.
    pub(crate) fn record(&mut self, r: Result<(), TranslateError>) -> Result<(), TranslateError> {
        if let Err(e) = &r {
            self.0 = Some(e.clone());
        }
        r
    }
}

/// What a provider's SSE events mean, for [`SseTranslator`].
pub(crate) trait SseTranslation {
    /// Whether the stream has ended (done, or an upstream error translated):
    /// later bytes are ignored.
    fn ended(&self) -> bool;

    /// Translates one event with data (`kind` its `event` field), appending
    /// to `out`.
    fn event(
        &mut self,
        kind: Option<&[u8]>,
        data: Value,
        out: &mut Vec<u8>,
    ) -> Result<(), TranslateError>;

    /// The end of the upstream body with the stream not ended.
    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError>;
}

/// An SSE body in, events to `T`: the framing, the incomplete event kept
/// between feeds (at most [`MAX_PENDING_EVENT_BYTES`]), the JSON of each
/// event's data, and the [`Fuse`].
#[derive(Debug)]
pub(crate) struct SseTranslator<T> {
    framer: SseFramer,
    /// The bytes of an incomplete event, carried to the next feed.
    pending: Vec<u8>,
    /// Where `parse_event` joins multi-line data.
    scratch: Vec<u8>,
    fuse: Fuse,
    /// The provider's translation.
    pub t: T,
}

impl<T: SseTranslation> SseTranslator<T> {
    pub(crate) fn new(t: T) -> Self {
        Self {
            framer: SseFramer::new(),
            pending: Vec::new(),
            scratch: Vec::new(),
            fuse: Fuse::default(),
            t,
        }
    }

    /// Appends to `out` the OpenAI events for every upstream event that
    /// `chunk` completes; an incomplete tail is kept for the next call. Once
    /// the stream has ended, further bytes are ignored. An error leaves
    /// whatever was appended before it valid and makes every later call fail.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        self.fuse.check()?;
        let r = self.feed_inner(chunk, out);
        self.record(r)
    }

    /// The end of the upstream body: a last event closed by a final CR is
    /// translated, then, unless the stream has ended, [`SseTranslation::end`].
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        self.fuse.check()?;
        let r = self.finish_inner(out);
        self.record(r)
    }

    fn record(&mut self, r: Result<(), TranslateError>) -> Result<(), TranslateError> {
        if r.is_err() {
            self.pending = Vec::new();
        }
        self.fuse.record(r)
    }

    fn feed_inner(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let mut start = 0;
        let mut cursor = 0;
        while let Some(end) = self.framer.next_end(chunk, &mut cursor) {
            if self.t.ended() {
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
        if self.t.ended() {
            return Ok(());
        }
        let rest = &chunk[start..];
        if self.pending.len() + rest.len() > MAX_PENDING_EVENT_BYTES {
            return Err(TranslateError::new(
                "stream",
                format!("an upstream event exceeds {MAX_PENDING_EVENT_BYTES} bytes"),
            ));
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    fn finish_inner(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if !self.t.ended() && self.framer.pending_end() && !self.pending.is_empty() {
            // A last event closed by a final CR.
            let ev = std::mem::take(&mut self.pending);
            self.event(&ev, out)?;
        }
        if self.t.ended() {
            return Ok(());
        }
        self.t.end(out)
    }

    /// Translates one complete upstream event; one without data is nothing.
    fn event(&mut self, event: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let fields = parse_event(event, &mut self.scratch);
        let Some(data) = fields.data else {
            return Ok(());
        };
        let data = serde_json::from_slice::<Value>(data).map_err(|e| {
            TranslateError::new("stream", format!("upstream event data is not JSON: {e}"))
        })?;
        self.t.event(fields.kind, data, out)
    }
}

/// Helpers for the stream translators' tests.
#[cfg(test)]
pub(crate) mod test_support {
    use serde_json::{json, Value};

    /// The data payloads of an OpenAI SSE output; `[DONE]` as a string.
    pub(crate) fn events(out: &[u8]) -> Vec<Value> {
        let s = std::str::from_utf8(out).unwrap();
        assert!(s.is_empty() || s.ends_with("\n\n"), "{s}");
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

    /// The joined `delta.content` of the first choice of every chunk.
    pub(crate) fn content(evs: &[Value]) -> String {
        evs.iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect()
    }
}
