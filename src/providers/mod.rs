//! Providers: pure request/response translation, no I/O. `openai` (and any
//! OpenAI-compatible server) needs no translation: the body passes through.
//! `mock` answers in process. `anthropic` translates OpenAI chat to the
//! Messages API and back (non-streamed so far; not yet a provider kind the
//! config accepts: issue 15 wires it).

pub mod anthropic;
pub mod mock;
