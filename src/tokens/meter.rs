//! The per-stream state machine: a synchronous body filter that reads each
//! piece of an SSE response as it passes to the client.
//!
//! For every piece, [`StreamMeter::feed`] appends what the client should
//! receive and reads the events that matter: the provider's usage, the text
//! deltas (for the fallback count), error events. Events are framed with
//! [`super::sse::SseFramer`] (memchr over line ends); an event's JSON is only
//! looked at where a cheap needle says it may matter, and only the `usage`
//! object is ever deserialized.
//!
//! What it keeps between pieces: the bytes of the one event still incomplete
//! at the end of a piece (bounded by [`EVENT_BYTES_MAX`]), so that an event
//! split at any byte reads as if it had arrived whole, and the collected text
//! (bounded by [`TEXT_BYTES_MAX`]).

use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::estimate::{self, ModelFamily};
use super::json;
use super::sse::{self, EventFields, SseFramer};
use super::usage::{self, AnthropicUsage, Protocol, Usage, UsageSource};

/// Largest event the meter reads or holds back. OpenAI's usage chunk is about
/// 400 bytes and a text delta a few hundred; only odd events (a huge tool-call
/// argument or base64 audio in one delta) come near this. A larger event is
/// passed through unread, and counted in [`MeterOutcome::events_oversized`].
pub const EVENT_BYTES_MAX: usize = 256 * 1024;

/// Most bytes of generated text kept for the tokenizer fallback. Past it, text
/// is only measured, and estimated at
/// [`estimate::TEXT_BYTES_PER_TOKEN_ESTIMATE`] bytes per token. 4 MiB is
/// about a million tokens, beyond any model's output limit today.
pub const TEXT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How a metered stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamEnding {
    /// The upstream ended the body properly.
    Complete,
    /// The upstream closed, reset or timed out mid-stream.
    UpstreamCut,
    /// The client went away; the gateway stopped relaying.
    ClientGone,
}

/// What a finished stream used, and how that was known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterOutcome {
    /// The counts to charge. `usage.source` is `Estimated` when any part is.
    pub usage: Usage,
    /// Whether any count is the gateway's rather than the provider's; the
    /// request log's "estimated" flag.
    pub estimated: bool,
    /// Where `prompt_tokens`, `cached_tokens` and `cache_write_tokens` came
    /// from. When estimated they are the caller's
    /// [`StreamMeter::set_prompt_estimate`], 0 and 0 (no cache discount is
    /// assumed).
    pub prompt_source: UsageSource,
    /// Where `completion_tokens` and `reasoning_tokens` came from. When
    /// estimated, `completion_tokens` is the tokenizer's count of the collected
    /// text and `reasoning_tokens` is 0 (hidden reasoning cannot be seen).
    pub completion_source: UsageSource,
    pub ended: StreamEnding,
    /// The tokenizer the completion estimate used (`None` when not estimated).
    pub tokenizer: Option<ModelFamily>,
    /// The prompt was estimated but the caller never set an estimate: it
    /// counts as 0.
    pub prompt_estimate_missing: bool,
    /// The stream carried an error event (OpenAI `{"error":...}`, Responses
    /// `error` / `response.failed`, Anthropic `error`).
    pub upstream_error: bool,
    /// Usage-only chunks removed from what the client received.
    pub usage_chunks_stripped: u32,
    /// Events larger than [`EVENT_BYTES_MAX`]: passed through unread.
    pub events_oversized: u32,
    /// Bytes of generated text kept for the tokenizer.
    pub text_bytes: u64,
    /// Bytes of generated text past [`TEXT_BYTES_MAX`], estimated by length.
    pub text_bytes_uncollected: u64,
    /// Whether the bytes sent to the client stop inside an event, so that a
    /// message the gateway appends (an error event) must first close it with
    /// a blank line.
    pub client_mid_event: bool,
    /// SSE bytes fed to the meter.
    pub bytes_in: u64,
}

/// What to do with one complete event when stripping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    Strip,
}

static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static DELTA_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"delta\""));
static TEXT_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"text\""));

/// Responses API event types whose `delta` is generated text worth counting.
/// Left out on purpose: `response.audio.delta` (base64 audio, billed as audio
/// tokens) and `response.reasoning_summary_text.delta` (a summary written
/// about the hidden reasoning, not the reasoning tokens themselves).
const RESPONSES_TEXT_DELTAS: [&[u8]; 6] = [
    b"response.output_text.delta",
    b"response.refusal.delta",
    b"response.function_call_arguments.delta",
    b"response.reasoning_text.delta",
    b"response.custom_tool_call_input.delta",
    b"response.audio_transcript.delta",
];

/// Collected generated text, bounded.
#[derive(Debug, Default)]
struct TextCollector {
    on: bool,
    text: Vec<u8>,
    uncollected: u64,
}

impl TextCollector {
    /// Appends a JSON string's raw contents, unescaped.
    fn push(&mut self, raw: &[u8]) {
        if self.text.len() >= TEXT_BYTES_MAX {
            // The escaped length slightly over-counts text: the safe side.
            self.uncollected += raw.len() as u64;
            return;
        }
        json::unescape_into(raw, &mut self.text);
        if self.text.len() > TEXT_BYTES_MAX {
            let mut cut = TEXT_BYTES_MAX;
            // Keep whole UTF-8 characters.
            while cut > 0 && self.text[cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
            self.uncollected += (self.text.len() - cut) as u64;
            self.text.truncate(cut);
        }
    }
}

/// What the events said, protocol by protocol.
#[derive(Debug)]
struct Reader {
    protocol: Protocol,
    text: TextCollector,
    /// OpenAI-style usage (chat, completions, responses): the last one seen.
    openai: Option<Usage>,
    /// Anthropic's counts, merged from message_start and message_delta.
    anthropic: AnthropicUsage,
    /// A message_delta with `output_tokens` was seen: the output count is final.
    anthropic_final: bool,
    upstream_error: bool,
    stripped: u32,
}

impl Reader {
    fn on_event(&mut self, f: EventFields<'_>, strip: bool) -> Verdict {
        let Some(data) = f.data else {
            return Verdict::Keep;
        };
        match self.protocol {
            Protocol::ChatCompletions | Protocol::Completions => self.on_openai(data, strip),
            Protocol::Responses => {
                self.on_responses(data, f.kind);
                Verdict::Keep
            }
            Protocol::AnthropicMessages => {
                self.on_anthropic(data, f.kind);
                Verdict::Keep
            }
            Protocol::Embeddings => Verdict::Keep,
        }
    }

    fn on_openai(&mut self, data: &[u8], strip: bool) -> Verdict {
        if data == b"[DONE]" {
            return Verdict::Keep;
        }
        if data[json::skip_ws(data, 0)..].starts_with(b"{\"error\"") {
            self.upstream_error = true;
        }
        if self.text.on {
            if self.protocol == Protocol::ChatCompletions {
                self.collect_chat_text(data);
            } else {
                self.collect_completions_text(data);
            }
        }
        // Most chunks carry `"usage":null` (when include_usage is set) or no
        // usage at all; only an object is worth a parse.
        let has_usage = USAGE_KEY
            .find_iter(data)
            .any(|at| json::key_value_start(data, at + 7, b'{').is_some());
        if has_usage {
            if let Some(c) = usage::openai_chunk(data, self.protocol) {
                self.openai = Some(c.usage);
                if strip && c.usage_only {
                    self.stripped = self.stripped.saturating_add(1);
                    return Verdict::Strip;
                }
            }
        }
        Verdict::Keep
    }

    /// `choices[].delta`: content, reasoning (`reasoning_content` from
    /// DeepSeek and vLLM, `reasoning` from OpenRouter and Ollama), refusal, and
    /// tool-call arguments, all generated tokens.
    fn collect_chat_text(&mut self, data: &[u8]) {
        for at in DELTA_KEY.find_iter(data) {
            let Some(obj) = json::key_value_start(data, at + 7, b'{') else {
                continue;
            };
            for (key, s, e) in json::members(data, obj) {
                match key {
                    b"content" | b"reasoning_content" | b"reasoning" | b"refusal" => {
                        if let Some(raw) = json::string_contents(data, s, e) {
                            self.text.push(raw);
                        }
                    }
                    b"tool_calls" => {
                        for (cs, _) in json::elements(data, s) {
                            let args = json::member(data, cs, b"function")
                                .and_then(|(fs, _)| json::member(data, fs, b"arguments"));
                            if let Some(raw) =
                                args.and_then(|(a, b)| json::string_contents(data, a, b))
                            {
                                self.text.push(raw);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// `choices[].text`.
    fn collect_completions_text(&mut self, data: &[u8]) {
        for at in TEXT_KEY.find_iter(data) {
            let Some(s) = json::key_value_start(data, at + 6, b'"') else {
                continue;
            };
            if let Some(raw) =
                json::string_end(data, s).and_then(|e| json::string_contents(data, s, e))
            {
                self.text.push(raw);
            }
        }
    }

    /// The event's type: the JSON `type` member (what the SDKs dispatch on),
    /// else the SSE `event` field. Also returns the top-level `delta` value
    /// when the type is a text delta and text is collected.
    fn typed<'a>(
        &self,
        data: &'a [u8],
        kind: Option<&'a [u8]>,
        text_type: impl Fn(&[u8]) -> bool,
    ) -> (Option<&'a [u8]>, Option<(usize, usize)>) {
        let mut ty = None;
        let mut delta = None;
        for (key, s, e) in json::members(data, json::skip_ws(data, 0)) {
            match key {
                b"type" => {
                    ty = json::string_contents(data, s, e);
                    if !(self.text.on && ty.is_some_and(&text_type)) {
                        break;
                    }
                }
                b"delta" => delta = Some((s, e)),
                _ => {}
            }
            if ty.is_some() && delta.is_some() {
                break;
            }
        }
        let ty = ty.or(kind);
        if !(self.text.on && ty.is_some_and(&text_type)) {
            delta = None;
        }
        (ty, delta)
    }

    fn on_responses(&mut self, data: &[u8], kind: Option<&[u8]>) {
        let (ty, delta) = self.typed(data, kind, |t| RESPONSES_TEXT_DELTAS.contains(&t));
        match ty {
            Some(b"response.completed" | b"response.incomplete" | b"response.failed") => {
                if ty == Some(b"response.failed") {
                    self.upstream_error = true;
                }
                if let Some(u) = usage::responses_event(data) {
                    self.openai = Some(u);
                }
            }
            Some(b"error") => self.upstream_error = true,
            _ => {
                if let Some(raw) = delta.and_then(|(s, e)| json::string_contents(data, s, e)) {
                    self.text.push(raw);
                }
            }
        }
    }

    fn on_anthropic(&mut self, data: &[u8], kind: Option<&[u8]>) {
        let (ty, delta) = self.typed(data, kind, |t| t == b"content_block_delta");
        match ty {
            Some(b"message_start") => {
                if let Some(u) = usage::anthropic_start(data) {
                    self.anthropic.merge(u);
                }
            }
            Some(b"message_delta") => {
                if let Some(u) = usage::anthropic_delta(data) {
                    self.anthropic_final |= u.output_tokens.is_some();
                    self.anthropic.merge(u);
                }
            }
            Some(b"error") => self.upstream_error = true,
            _ => {
                // content_block_delta: text_delta.text, thinking_delta.thinking
                // (thinking is billed as output), input_json_delta.partial_json
                // (tool input).
                let Some((s, _)) = delta else {
                    return;
                };
                for (key, vs, ve) in json::members(data, s) {
                    if matches!(key, b"text" | b"thinking" | b"partial_json") {
                        if let Some(raw) = json::string_contents(data, vs, ve) {
                            self.text.push(raw);
                        }
                    }
                }
            }
        }
    }

    /// The provider's prompt parts (prompt, cached, cache write), if reported.
    fn provider_prompt(&self) -> Option<(u64, u64, u64)> {
        match self.protocol {
            Protocol::AnthropicMessages => self.anthropic.prompt_parts(),
            _ => self
                .openai
                .map(|u| (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens)),
        }
    }

    /// The provider's final completion parts (completion, reasoning), if
    /// reported, else a floor for the estimate (Anthropic's running count).
    fn provider_completion(&self) -> Result<(u64, u64), u64> {
        match self.protocol {
            Protocol::AnthropicMessages if self.anthropic_final => {
                Ok((self.anthropic.output_tokens.unwrap_or(0), 0))
            }
            Protocol::AnthropicMessages => Err(self.anthropic.output_tokens.unwrap_or(0)),
            _ => self
                .openai
                .map(|u| (u.completion_tokens, u.reasoning_tokens))
                .ok_or(0),
        }
    }
}

/// The streaming token counter for one response: a synchronous filter over
/// the SSE body, fed each piece as it arrives.
///
/// ```
/// use bursar::tokens::{ModelFamily, Protocol, StreamEnding, StreamMeter};
/// let mut meter = StreamMeter::new(Protocol::ChatCompletions, true, ModelFamily::for_model("gpt-4o"));
/// let mut frame = Vec::new();
/// meter.feed(b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n", &mut frame);
/// meter.feed(b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n", &mut frame);
/// let out = meter.finish(StreamEnding::Complete, &mut frame);
/// assert_eq!((out.usage.prompt_tokens, out.usage.completion_tokens, out.estimated), (9, 1, false));
/// assert!(!frame.windows(7).any(|w| w == b"\"usage\""));
/// ```
#[derive(Debug)]
pub struct StreamMeter {
    strip: bool,
    family: ModelFamily,
    framer: SseFramer,
    /// The current, incomplete event's bytes so far. When stripping they are
    /// held back from the client until the event is complete; otherwise this
    /// is a copy kept to read the event once it is whole.
    carry: Vec<u8>,
    /// The current event is larger than [`EVENT_BYTES_MAX`]: it is neither
    /// held nor read, its bytes pass straight through.
    oversized: bool,
    events_oversized: u32,
    /// Where several `data` lines of one event are joined.
    scratch: Vec<u8>,
    /// [`StreamMeter::feed_in_place`]'s copy of the new bytes when stripping.
    inbuf: Vec<u8>,
    prompt_estimate: Option<u64>,
    bytes_in: u64,
    reader: Reader,
}

impl StreamMeter {
    /// A meter for one streamed response.
    ///
    /// `strip_usage_chunk`: the gateway added `stream_options.include_usage`
    /// to the request although the client did not ask for it, so the
    /// usage-only chunk (a `chat.completion.chunk` or `text_completion` whose
    /// `choices` is `[]` and `usage` is set) is removed from what the client
    /// receives; every other byte reaches it unchanged. It applies to
    /// `ChatCompletions` and `Completions` only (the Responses API and
    /// Anthropic always stream usage) and is ignored for the others.
    ///
    /// With include_usage, OpenAI also puts `"usage":null` in every other
    /// chunk. Those chunks are left byte-identical: rewriting them would cost
    /// a copy of every event, and the SDKs accept the field (it is part of
    /// the chunk's schema).
    ///
    /// `family` picks the tokenizer for the fallback count
    /// ([`ModelFamily::for_model`]).
    pub fn new(protocol: Protocol, strip_usage_chunk: bool, family: ModelFamily) -> Self {
        let strip = strip_usage_chunk
            && matches!(protocol, Protocol::ChatCompletions | Protocol::Completions);
        StreamMeter {
            strip,
            family,
            framer: SseFramer::new(),
            carry: Vec::new(),
            oversized: false,
            events_oversized: 0,
            scratch: Vec::new(),
            inbuf: Vec::new(),
            prompt_estimate: None,
            bytes_in: 0,
            reader: Reader {
                protocol,
                text: TextCollector {
                    on: true,
                    ..TextCollector::default()
                },
                openai: None,
                anthropic: AnthropicUsage::default(),
                anthropic_final: false,
                upstream_error: false,
                stripped: 0,
            },
        }
    }

    /// Whether to collect the generated text for the fallback count (on by
    /// default). Off saves the per-delta walk and unescape (see the bench);
    /// a stream that then ends without provider usage has its completion
    /// estimated as 0 (or Anthropic's running count), so turn it off only
    /// where another estimate exists.
    pub fn with_text_collection(mut self, on: bool) -> Self {
        self.reader.text.on = on;
        self
    }

    /// The prompt tokens to charge if the provider's count never arrives:
    /// typically a tokenizer count of the request's messages, or
    /// [`super::prompt_upper_bound_tokens`] of its body for the strict,
    /// never-under-charging choice. Unset, an estimated prompt counts as 0
    /// (flagged in [`MeterOutcome::prompt_estimate_missing`]).
    pub fn set_prompt_estimate(&mut self, tokens: u64) {
        self.prompt_estimate = Some(tokens);
    }

    /// The generated text collected so far: unescaped UTF-8 (invalid bytes
    /// from the upstream are kept as they came), at most [`TEXT_BYTES_MAX`]
    /// bytes. For callers that log completion text when that is turned on.
    pub fn collected_text(&self) -> &[u8] {
        &self.reader.text.text
    }

    /// Whether the usage-only chunk is being removed.
    pub fn strips_usage_chunk(&self) -> bool {
        self.strip
    }

    /// Whether the bytes passed to the client so far end at an event
    /// boundary (nothing is held back and no event is half sent).
    pub fn at_event_boundary(&self) -> bool {
        (self.carry.is_empty() && !self.oversized) || self.framer.pending_end()
    }

    /// Feeds the next piece of the SSE body and appends to `forward` what the
    /// client should receive now.
    ///
    /// Without stripping that is `input` itself, appended with one
    /// `extend_from_slice`, and nothing is ever held back. With stripping, the
    /// bytes of an event still incomplete at the end of `input` are held back
    /// until the event completes (an SSE client acts on complete events only,
    /// so this delays nothing it could see), and the usage-only event is
    /// dropped; everything else is appended unchanged, in order.
    ///
    /// Never fails, never panics, whatever the bytes.
    pub fn feed(&mut self, input: &[u8], forward: &mut Vec<u8>) {
        self.bytes_in += input.len() as u64;
        if self.strip {
            self.scan(input, Some(forward));
        } else {
            forward.extend_from_slice(input);
            self.scan(input, None);
        }
    }

    /// Like [`StreamMeter::feed`], for bytes already appended to the frame:
    /// `frame[start..]` is the new piece, and is replaced by what the client
    /// should receive. Without stripping the frame is only read (no copy at
    /// all); with stripping the piece is copied once into a reused buffer.
    pub fn feed_in_place(&mut self, frame: &mut Vec<u8>, start: usize) {
        let start = start.min(frame.len());
        if !self.strip {
            self.bytes_in += (frame.len() - start) as u64;
            self.scan(&frame[start..], None);
            return;
        }
        let mut inbuf = std::mem::take(&mut self.inbuf);
        inbuf.clear();
        inbuf.extend_from_slice(&frame[start..]);
        frame.truncate(start);
        self.feed(&inbuf, frame);
        self.inbuf = inbuf;
    }

    /// Reads one complete event.
    fn read(&mut self, event: &[u8]) -> Verdict {
        let fields = sse::parse_event(event, &mut self.scratch);
        self.reader.on_event(fields, self.strip)
    }

    /// Frames `input`, reads each complete event, and when `forward` is given
    /// (stripping) appends the bytes to keep.
    fn scan(&mut self, input: &[u8], mut forward: Option<&mut Vec<u8>>) {
        let mut cursor = 0;
        // Start of the current event in `input`.
        let mut start = 0;
        // Stripping: start of the bytes of `input` not yet appended.
        let mut run = 0;
        while let Some(end) = self.framer.next_end(input, &mut cursor) {
            let piece = &input[start..end];
            if self.oversized {
                // Its bytes went through as they came; they go on doing so.
                self.oversized = false;
            } else if self.carry.is_empty() {
                if piece.len() > EVENT_BYTES_MAX {
                    self.events_oversized = self.events_oversized.saturating_add(1);
                } else if self.read(piece) == Verdict::Strip {
                    if let Some(f) = forward.as_deref_mut() {
                        f.extend_from_slice(&input[run..start]);
                    }
                    run = end;
                }
            } else {
                // The event began in an earlier piece (so `start` is 0 and
                // nothing of `input` was appended yet).
                let mut carry = std::mem::take(&mut self.carry);
                let held = carry.len();
                let verdict = if held + piece.len() > EVENT_BYTES_MAX {
                    self.events_oversized = self.events_oversized.saturating_add(1);
                    Verdict::Keep
                } else {
                    carry.extend_from_slice(piece);
                    self.read(&carry)
                };
                match verdict {
                    Verdict::Keep => {
                        if let Some(f) = forward.as_deref_mut() {
                            f.extend_from_slice(&carry[..held]);
                        }
                    }
                    Verdict::Strip => run = end,
                }
                carry.clear();
                self.carry = carry;
            }
            start = end;
        }
        // The rest of `input` begins an event (or continues one).
        let tail = &input[start..];
        let mut run_end = start;
        if !tail.is_empty() {
            if self.oversized {
                run_end = input.len();
            } else if self.carry.len() + tail.len() > EVENT_BYTES_MAX {
                // Too large to hold or read: let it through from here on.
                self.oversized = true;
                self.events_oversized = self.events_oversized.saturating_add(1);
                if let Some(f) = forward.as_deref_mut() {
                    // No boundary in `input`, so nothing of it went out yet.
                    f.extend_from_slice(&self.carry);
                }
                self.carry.clear();
                run_end = input.len();
            } else {
                self.carry.extend_from_slice(tail);
            }
        }
        if let Some(f) = forward {
            f.extend_from_slice(&input[run..run_end]);
        }
    }

    /// Ends the stream and works out what to charge, counting the collected
    /// text with the tokenizer when the provider's usage is missing.
    ///
    /// When stripping, `forward` receives the bytes still held back (the
    /// last event, which the upstream never completed) unless the client is
    /// gone or they are the usage-only chunk.
    ///
    /// The tokenizer count runs inline (see the bench for its MB/s; a typical
    /// cut stream holds a few KB of text, i.e. well under a millisecond). To
    /// run it on another thread, use [`StreamMeter::finish_deferred`].
    pub fn finish(self, ended: StreamEnding, forward: &mut Vec<u8>) -> MeterOutcome {
        match self.finish_deferred(ended, forward) {
            Finished::Ready(outcome) => outcome,
            Finished::NeedsCount(job) => job.run(),
        }
    }

    /// Like [`StreamMeter::finish`], but hands back the tokenizer count as a
    /// [`CountJob`] (`Send`) instead of running it, when one is needed.
    pub fn finish_deferred(mut self, ended: StreamEnding, forward: &mut Vec<u8>) -> Finished {
        let mut client_mid_event = self.oversized;
        if !self.carry.is_empty() && !self.oversized {
            // The last event: complete but its end not yet reported (a final
            // CR), or cut short. Read it as it stands: a cut event's JSON does
            // not parse and reads as nothing.
            let complete = self.framer.pending_end();
            let carry = std::mem::take(&mut self.carry);
            let verdict = self.read(&carry);
            let sent = !self.strip || verdict == Verdict::Keep;
            client_mid_event = sent && !complete;
            if self.strip && verdict == Verdict::Keep && ended != StreamEnding::ClientGone {
                forward.extend_from_slice(&carry);
            }
        }
        let r = &mut self.reader;
        let prompt = r.provider_prompt();
        let completion = r.provider_completion();
        let (prompt_tokens, cached_tokens, cache_write_tokens) =
            prompt.unwrap_or((self.prompt_estimate.unwrap_or(0), 0, 0));
        let prompt_source = if prompt.is_some() {
            UsageSource::Provider
        } else {
            UsageSource::Estimated
        };
        let mut outcome = MeterOutcome {
            usage: Usage {
                prompt_tokens,
                completion_tokens: 0,
                cached_tokens,
                cache_write_tokens,
                reasoning_tokens: 0,
                source: UsageSource::Provider,
            },
            estimated: false,
            prompt_source,
            completion_source: UsageSource::Provider,
            ended,
            tokenizer: None,
            prompt_estimate_missing: prompt.is_none() && self.prompt_estimate.is_none(),
            upstream_error: r.upstream_error,
            usage_chunks_stripped: r.stripped,
            events_oversized: self.events_oversized,
            text_bytes: r.text.text.len() as u64,
            text_bytes_uncollected: r.text.uncollected,
            client_mid_event,
            bytes_in: self.bytes_in,
        };
        match completion {
            Ok((completion_tokens, reasoning_tokens)) => {
                outcome.usage.completion_tokens = completion_tokens;
                outcome.usage.reasoning_tokens = reasoning_tokens;
                outcome.estimated = prompt.is_none();
                if outcome.estimated {
                    outcome.usage.source = UsageSource::Estimated;
                }
                Finished::Ready(outcome)
            }
            Err(floor) => {
                outcome.estimated = true;
                outcome.usage.source = UsageSource::Estimated;
                outcome.completion_source = UsageSource::Estimated;
                outcome.tokenizer = Some(self.family);
                Finished::NeedsCount(CountJob {
                    outcome,
                    text: std::mem::take(&mut r.text.text),
                    floor,
                    family: self.family,
                })
            }
        }
    }
}

/// The end of a stream, with or without a tokenizer count still to run.
#[derive(Debug)]
pub enum Finished {
    Ready(MeterOutcome),
    NeedsCount(CountJob),
}

/// A tokenizer count of a stream's collected text, to run where it suits
/// (it may take milliseconds for long texts).
#[derive(Debug)]
pub struct CountJob {
    outcome: MeterOutcome,
    text: Vec<u8>,
    floor: u64,
    family: ModelFamily,
}

impl MeterOutcome {
    /// Takes `usage` as the provider's final counts: a translated stream's,
    /// read by its translator from events the meter never sees (Gemini's
    /// and Bedrock's counts, Anthropic's cache writes), including when the
    /// upstream broke after sending them.
    pub fn use_provider_usage(&mut self, usage: Usage) {
        self.usage = Usage {
            source: UsageSource::Provider,
            ..usage
        };
        self.estimated = false;
        self.prompt_source = UsageSource::Provider;
        self.completion_source = UsageSource::Provider;
        self.tokenizer = None;
        self.prompt_estimate_missing = false;
    }
}

impl CountJob {
    /// The outcome without the count, for a caller that has the provider's
    /// counts after all ([`MeterOutcome::use_provider_usage`]).
    pub fn into_uncounted(self) -> MeterOutcome {
        self.outcome
    }

    /// The text's bytes, for callers that store or inspect it.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// Counts the text and returns the outcome: completion tokens are the
    /// tokenizer's count of the kept text plus the uncollected bytes / 4, and
    /// never less than a running count the provider already reported.
    pub fn run(self) -> MeterOutcome {
        let mut outcome = self.outcome;
        let text = String::from_utf8_lossy(&self.text);
        let counted = estimate::count_tokens(self.family.encoding, &text)
            + estimate::tokens_from_text_bytes(outcome.text_bytes_uncollected);
        outcome.usage.completion_tokens = counted.max(self.floor);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(content: &str) -> String {
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}],\"usage\":null}}\n\n",
            serde_json::to_string(content).unwrap()
        )
    }

    const USAGE: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14,\"prompt_tokens_details\":{\"cached_tokens\":2},\"completion_tokens_details\":{\"reasoning_tokens\":1}}}\n\n";

    fn stream() -> String {
        format!(
            "{}{}{}{USAGE}data: [DONE]\n\n",
            chunk("Hello"),
            chunk(", \"wörld\"\n"),
            chunk("😀")
        )
    }

    fn run(
        protocol: Protocol,
        strip: bool,
        input: &[u8],
        cuts: &[usize],
    ) -> (MeterOutcome, Vec<u8>, Vec<u8>) {
        let mut m = StreamMeter::new(protocol, strip, ModelFamily::for_model("gpt-4o"));
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            m.feed(&input[prev..c], &mut out);
            prev = c;
        }
        let text = m.collected_text().to_vec();
        (m.finish(StreamEnding::Complete, &mut out), out, text)
    }

    #[test]
    fn reads_usage_and_text_and_strips_exactly_the_usage_event() {
        let s = stream();
        let (o, out, text) = run(Protocol::ChatCompletions, false, s.as_bytes(), &[]);
        assert_eq!(out, s.as_bytes());
        assert_eq!(String::from_utf8(text).unwrap(), "Hello, \"wörld\"\n😀");
        assert!(!o.estimated);
        assert_eq!(
            (
                o.usage.prompt_tokens,
                o.usage.completion_tokens,
                o.usage.cached_tokens,
                o.usage.reasoning_tokens
            ),
            (11, 3, 2, 1)
        );
        let (o2, out, _) = run(Protocol::ChatCompletions, true, s.as_bytes(), &[]);
        assert_eq!(out, s.replace(USAGE, "").as_bytes());
        assert_eq!(o2.usage, o.usage);
        assert_eq!(o2.usage_chunks_stripped, 1);
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let s = stream();
        let b = s.as_bytes();
        for strip in [false, true] {
            let whole = run(Protocol::ChatCompletions, strip, b, &[]);
            for cut in 0..=b.len() {
                let split = run(Protocol::ChatCompletions, strip, b, &[cut]);
                assert_eq!(split.0.usage, whole.0.usage, "cut {cut}");
                assert_eq!(split.1, whole.1, "cut {cut}");
                assert_eq!(split.2, whole.2, "cut {cut}");
            }
            let every: Vec<usize> = (1..b.len()).collect();
            assert_eq!(run(Protocol::ChatCompletions, strip, b, &every).1, whole.1);
        }
    }

    #[test]
    fn a_cut_stream_is_estimated_from_its_text() {
        let s = stream();
        let cut = s.find(USAGE).unwrap();
        let (o, _, text) = run(Protocol::ChatCompletions, true, &s.as_bytes()[..cut], &[]);
        assert!(o.estimated);
        assert_eq!(o.prompt_source, UsageSource::Estimated);
        assert!(o.prompt_estimate_missing);
        let expected = estimate::count_tokens(
            estimate::Encoding::O200kBase,
            std::str::from_utf8(&text).unwrap(),
        );
        assert_eq!(o.usage.completion_tokens, expected);
        assert!(expected > 0);
    }

    #[test]
    fn oversized_events_pass_through_unread() {
        let big = chunk(&"x".repeat(EVENT_BYTES_MAX));
        let s = format!("{}{big}{USAGE}data: [DONE]\n\n", chunk("a"));
        let b = s.as_bytes();
        for strip in [false, true] {
            for cuts in [
                vec![],
                vec![100, 200, 5000, 262_000],
                (1..13).map(|i| i * 20_000).collect(),
            ] {
                let (o, out, text) = run(Protocol::ChatCompletions, strip, b, &cuts);
                let expected = if strip {
                    s.replace(USAGE, "")
                } else {
                    s.clone()
                };
                assert_eq!(out, expected.as_bytes(), "strip {strip} cuts {cuts:?}");
                assert_eq!(o.events_oversized, 1);
                assert_eq!(text, b"a");
                assert_eq!(o.usage.completion_tokens, 3);
            }
        }
    }

    #[test]
    fn text_past_the_bound_is_estimated_by_length() {
        let mut t = TextCollector {
            on: true,
            ..TextCollector::default()
        };
        let block = "é".repeat(1000);
        let n = TEXT_BYTES_MAX / block.len() + 3;
        for _ in 0..n {
            t.push(block.as_bytes());
        }
        assert!(t.text.len() <= TEXT_BYTES_MAX);
        assert!(std::str::from_utf8(&t.text).is_ok());
        assert_eq!(
            t.text.len() as u64 + t.uncollected,
            (n * block.len()) as u64
        );
    }

    #[test]
    fn in_place_feeding_matches_feed() {
        let s = stream();
        for strip in [false, true] {
            let mut a = StreamMeter::new(Protocol::ChatCompletions, strip, ModelFamily::UNKNOWN);
            let mut b = StreamMeter::new(Protocol::ChatCompletions, strip, ModelFamily::UNKNOWN);
            let (mut fa, mut fb) = (b"HDR".to_vec(), b"HDR".to_vec());
            for piece in s.as_bytes().chunks(37) {
                a.feed(piece, &mut fa);
                let at = fb.len();
                fb.extend_from_slice(piece);
                b.feed_in_place(&mut fb, at);
            }
            assert_eq!(fa, fb);
            let oa = a.finish(StreamEnding::Complete, &mut fa);
            let ob = b.finish(StreamEnding::Complete, &mut fb);
            assert_eq!(oa, ob);
        }
    }

    #[test]
    fn boundary_tracking_for_injected_events() {
        let mut m = StreamMeter::new(Protocol::ChatCompletions, false, ModelFamily::UNKNOWN);
        let mut out = Vec::new();
        assert!(m.at_event_boundary());
        m.feed(b"data: {\"a\":", &mut out);
        assert!(!m.at_event_boundary());
        m.feed(b"1}\n\n", &mut out);
        assert!(m.at_event_boundary());
        m.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"x", &mut out);
        let o = m.finish(StreamEnding::UpstreamCut, &mut out);
        assert!(o.client_mid_event);
        assert!(o.estimated);
    }
}
