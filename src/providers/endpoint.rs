//! The data plane's endpoints: what a client asked for, the path under a
//! provider's base URL, the protocol its responses carry and the member that
//! caps its output. Below the proxy (which routes to them) and the providers
//! (which translate them), so both import it and neither imports the other.

/// The proxied OpenAI endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    /// Anthropic's `/v1/messages`, passed through to `anthropic` providers
    /// for clients that speak Anthropic.
    Messages,
}

impl Endpoint {
    /// The path under the provider's base URL.
    pub fn suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
            Endpoint::Messages => "/messages",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
        }
    }
}

impl Endpoint {
    /// The protocol whose usage this endpoint's responses carry.
    pub fn protocol(self) -> crate::tokens::Protocol {
        use crate::tokens::Protocol;
        match self {
            Endpoint::ChatCompletions => Protocol::ChatCompletions,
            Endpoint::Completions => Protocol::Completions,
            Endpoint::Embeddings => Protocol::Embeddings,
            Endpoint::Responses => Protocol::Responses,
            Endpoint::Messages => Protocol::AnthropicMessages,
        }
    }
    /// Whether a stream of this endpoint carries usage only when asked
    /// (`stream_options.include_usage`); the Responses API always sends it.
    pub fn usage_on_request(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }
}

impl Endpoint {
    /// The member that caps a request's output, as the gateway writes it
    /// when it must bound a request (`None`: nothing to cap).
    pub fn output_cap_member(self) -> Option<&'static str> {
        match self {
            Endpoint::ChatCompletions => Some("max_completion_tokens"),
            Endpoint::Completions => Some("max_tokens"),
            Endpoint::Responses => Some("max_output_tokens"),
            Endpoint::Messages => Some("max_tokens"),
            Endpoint::Embeddings => None,
        }
    }

    /// Every name an endpoint's output cap goes by.
    pub fn output_cap_members(self) -> &'static [&'static str] {
        match self {
            Endpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
            Endpoint::Completions => &["max_tokens"],
            Endpoint::Responses => &["max_output_tokens"],
            Endpoint::Messages => &["max_tokens"],
            Endpoint::Embeddings => &[],
        }
    }
}
