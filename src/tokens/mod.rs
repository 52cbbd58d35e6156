//! Token counting: the provider's usage read from responses as they pass, and
//! a tokenizer fallback where it is missing. A pure library: no I/O, no
//! async, no knowledge of money or of the relay that calls it.
//!
//! - [`StreamMeter`] is the streaming counter, a synchronous body filter for
//!   SSE responses (OpenAI chat, completions and responses; Anthropic
//!   messages). The relay feeds it each piece of the de-chunked body and
//!   sends on what it appends; at the end, [`StreamMeter::finish`] says what
//!   to charge and whether that is the provider's count or an estimate.
//! - [`usage_from_body`] reads a whole (non-streamed) response's usage.
//! - [`prompt_upper_bound_tokens`] bounds a request's input tokens from its
//!   length, for reservations, and [`prompt_bound_exception`] says when that
//!   bound does not hold.
//! - [`warm_up`] builds the tokenizers at start-up.
//!
//! Module map: `sse` frames events; `json` reads single members without a
//! parse; `usage` turns each protocol's usage object into [`Usage`];
//! `meter` is the per-stream state machine; `estimate` holds the tokenizers
//! and the byte bound.
//!
//! How the relay (src/proxy/stream.rs) is meant to drive it:
//!
//! ```ignore
//! let family = ModelFamily::for_model(model);
//! let mut meter = StreamMeter::new(protocol, gateway_added_include_usage, family);
//! meter.set_prompt_estimate(prompt_upper_bound_tokens(body.len())); // or a count
//! loop {
//!     frame.resize(FRAME_HEADER_BYTES, 0);
//!     source.take(&mut conn.rbuf, &mut frame)?;          // de-chunk, as today
//!     meter.feed_in_place(&mut frame, FRAME_HEADER_BYTES); // read (and strip)
//!     // write the frame if it holds any data, as today
//! }
//! // at the end, with `ended` from the loop:
//! let mut tail = Vec::new();
//! let outcome = meter.finish(ended, &mut tail); // send `tail` unless the client is gone
//! if outcome.client_mid_event { /* send "\n\n" before an injected error event */ }
//! // settle with outcome.usage; log outcome.estimated
//! ```
//!
//! Invariants:
//! - Nothing in this module panics on input bytes, and every buffer it keeps
//!   is bounded by a named constant ([`EVENT_BYTES_MAX`], [`TEXT_BYTES_MAX`]).
//! - Without stripping, the bytes the client receives are the bytes fed,
//!   unchanged and not delayed.
//! - Any split of a stream into pieces gives the same counts and the same
//!   forwarded bytes as the whole stream.

mod estimate;
pub(crate) mod json;
mod meter;
pub mod sse;
mod usage;

pub use estimate::{
    count_tokens, estimate_prompt_tokens, prompt_bound_exception, prompt_upper_bound_tokens,
    tokens_from_text_bytes, warm_up, warm_up_encoding, Encoding, ModelFamily,
    PROMPT_TEXT_BYTES_MAX, PROMPT_TOKENS_PER_OBJECT, TEXT_BYTES_PER_TOKEN_ESTIMATE,
    UNBOUNDED_INPUT_WORDS,
};
pub use meter::{
    CountJob, Finished, MeterOutcome, StreamEnding, StreamMeter, EVENT_BYTES_MAX, TEXT_BYTES_MAX,
};
pub use usage::{usage_from_body, Protocol, Usage, UsageSource};
