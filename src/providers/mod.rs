//! Providers: pure request/response translation, no I/O. `openai` (and any
//! OpenAI-compatible server) needs no translation: the body passes through.
//! `mock` answers in process. `anthropic` translates OpenAI chat to the
//! Messages API and back; `anthropic_stream` translates its streamed events
//! into `chat.completion.chunk` events. `gemini` translates OpenAI chat to
//! Gemini's `generateContent` and back; `gemini_stream` translates its
//! `streamGenerateContent?alt=sse` events. `bedrock` translates OpenAI chat
//! to AWS Bedrock's Converse API and back and signs the request (SigV4);
//! `bedrock_stream` translates ConverseStream, framed in the AWS event
//! stream that `eventstream` decodes. `translate` is the proxy's one door to
//! them all. `endpoint` names the data plane's endpoints, below the proxy
//! and the translations alike. `chat` reads an OpenAI chat request (and
//! writes a `chat.completion`) for the three translations, and `chunks` is
//! the core their stream translators share (SSE framing, the fuse, the chunk
//! writer).

pub mod anthropic;
pub mod anthropic_stream;
pub mod bedrock;
pub mod bedrock_stream;
pub mod chat;
pub mod chunks;
pub mod endpoint;
pub mod eventstream;
pub mod gemini;
pub mod gemini_stream;
pub mod mock;
pub mod translate;

use std::fmt;

pub use endpoint::Endpoint;

/// The most input tokens a provider's own additions to a request are
/// reserved at ([`ProviderKind::hidden_prompt_tokens_max`]).
pub const HIDDEN_PROMPT_TOKENS_MAX: u64 = 1024;

/// What a provider speaks, which decides how a request is sent to it and how
/// its answer comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI or any OpenAI-compatible server: bodies pass through.
    OpenAi,
    /// The in-process deterministic provider.
    Mock,
    /// Anthropic's Messages API: chat translated both ways; `/v1/messages`
    /// passes through.
    Anthropic,
    /// Azure OpenAI: OpenAI's bodies, deployments in the path, `api-key`.
    Azure,
    /// Google Gemini's native `generateContent`: chat translated both ways.
    Gemini,
    /// AWS Bedrock's Converse API: chat translated both ways, SigV4-signed.
    Bedrock,
}

impl ProviderKind {
    /// Every kind, with the name the config gives it.
    pub const ALL: [(&'static str, ProviderKind); 6] = [
        ("openai", ProviderKind::OpenAi),
        ("mock", ProviderKind::Mock),
        ("anthropic", ProviderKind::Anthropic),
        ("azure", ProviderKind::Azure),
        ("gemini", ProviderKind::Gemini),
        ("bedrock", ProviderKind::Bedrock),
    ];

    pub fn parse(name: &str) -> Option<ProviderKind> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|&(_, k)| k)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("openai", |(n, _)| n)
    }

    /// Input tokens the provider may add to a request that its body does not
    /// hold: Anthropic (and Claude on Bedrock) adds a tool-use system prompt
    /// of a few hundred tokens to a request with tools (346 at most in its
    /// published table), Gemini renders tool declarations its own way. A
    /// strict worst case reserves this much more, for every request to such
    /// a kind: reading whether a body has tools would have to agree with the
    /// provider on every spelling of the member (escapes, duplicates), and
    /// the extra reservation is released at settle.
    pub fn hidden_prompt_tokens_max(self) -> u64 {
        match self {
            ProviderKind::Anthropic | ProviderKind::Gemini | ProviderKind::Bedrock => {
                HIDDEN_PROMPT_TOKENS_MAX
            }
            ProviderKind::OpenAi | ProviderKind::Azure | ProviderKind::Mock => 0,
        }
    }

    /// Whether OpenAI's bodies go to it unchanged (no translation).
    pub fn speaks_openai(self) -> bool {
        matches!(self, ProviderKind::OpenAi | ProviderKind::Azure)
    }
}

/// A chat request (or a Messages response) that cannot be translated.
/// `field` names the offending field as a JSON path (`messages[2].content[0]`,
/// `n`, `usage`, ...), for OpenAI's `param` and the error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError {
    pub field: String,
    pub message: String,
}

impl TranslateError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for TranslateError {}
