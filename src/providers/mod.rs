//! Providers: pure request/response translation, no I/O. `openai` (and any
//! OpenAI-compatible server) needs no translation: the body passes through.
//! `mock` answers in process. `anthropic` translates OpenAI chat to the
//! Messages API and back; `anthropic_stream` translates its streamed events
//! into `chat.completion.chunk` events. `bedrock` translates OpenAI chat to
//! AWS Bedrock's Converse API and back and signs the request (SigV4);
//! `bedrock_stream` translates ConverseStream, framed in the AWS event stream
//! that `eventstream` decodes. `endpoint` names the data plane's endpoints,
//! below the proxy and the translations alike.

pub mod anthropic;
pub mod anthropic_stream;
pub mod bedrock;
pub mod bedrock_stream;
pub mod endpoint;
pub mod eventstream;
pub mod mock;

use std::fmt;

pub use endpoint::Endpoint;

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
