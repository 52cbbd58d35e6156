//! Providers: pure request/response translation, no I/O. `openai` (and any
//! OpenAI-compatible server) needs no translation: the body passes through.
//! `mock` answers in process.

pub mod anthropic;
pub mod mock;
