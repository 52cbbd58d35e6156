//! Providers: pure request/response translation, no I/O. `openai` (and any
//! OpenAI-compatible server) needs no translation: the body passes through.
//! `mock` answers in process. `anthropic` translates OpenAI chat to the
//! Messages API and back; `anthropic_stream` translates its streamed events
//! into `chat.completion.chunk` events (neither is yet a provider kind the
//! config accepts: issue 15 wires it).

pub mod anthropic;
pub mod anthropic_stream;
pub mod mock;
