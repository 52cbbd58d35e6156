//! One door to the translations, for the proxy: which kinds translate, a
//! translated answer's body and usage, an error body in OpenAI's shape, and
//! the stream translators behind one type. Pure, like the translations.

use super::anthropic::{self, MessageUsage};
use super::{anthropic_stream, bedrock, bedrock_stream, gemini, gemini_stream};
use super::{Endpoint, ProviderKind, TranslateError};
use crate::tokens::{Usage, UsageSource};

/// A translated answer's body and the provider's usage.
pub type Translated = (Vec<u8>, Option<Usage>);

/// How a request's body and answer are translated for a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    /// Passed through as the client sent it.
    None,
    /// OpenAI chat to Anthropic Messages and back.
    AnthropicChat,
    /// OpenAI chat to Gemini's `generateContent` and back.
    GeminiChat,
    /// OpenAI chat to Bedrock's Converse and back.
    BedrockChat,
}

impl Translation {
    /// The translation for `endpoint` on a `kind` provider, or the reason
    /// the provider cannot serve that endpoint.
    pub fn for_request(kind: ProviderKind, endpoint: Endpoint) -> Result<Self, &'static str> {
        match (kind, endpoint) {
            (ProviderKind::Anthropic, Endpoint::ChatCompletions) => Ok(Translation::AnthropicChat),
            (ProviderKind::Anthropic, Endpoint::Messages) => Ok(Translation::None),
            (ProviderKind::Anthropic, _) => {
                Err("an \"anthropic\" provider serves /v1/chat/completions and /v1/messages only")
            }
            (_, Endpoint::Messages) => {
                Err("/v1/messages is served by \"anthropic\" providers only")
            }
            (ProviderKind::Gemini, Endpoint::ChatCompletions) => Ok(Translation::GeminiChat),
            (ProviderKind::Gemini, _) => Err(
                "a \"gemini\" provider serves /v1/chat/completions only; Gemini's \
                 OpenAI-compatible endpoint serves the rest through kind \"openai\"",
            ),
            (ProviderKind::Bedrock, Endpoint::ChatCompletions) => Ok(Translation::BedrockChat),
            (ProviderKind::Bedrock, _) => {
                Err("a \"bedrock\" provider serves /v1/chat/completions only")
            }
            _ => Ok(Translation::None),
        }
    }

    /// The request body for the provider.
    pub fn request(
        self,
        body: &[u8],
        default_max_tokens: u64,
    ) -> Result<Option<Vec<u8>>, TranslateError> {
        match self {
            Translation::None => Ok(None),
            Translation::AnthropicChat => {
                anthropic::chat_to_messages(body, default_max_tokens).map(Some)
            }
            Translation::GeminiChat => gemini::chat_to_generate(body, default_max_tokens).map(Some),
            Translation::BedrockChat => {
                bedrock::chat_to_converse(body, default_max_tokens).map(Some)
            }
        }
    }

    /// The protocol the provider's answers carry (where their usage is),
    /// for a client that speaks `client`; `None` when the gateway's usage
    /// reader does not read it (the translation reads its successes).
    pub fn upstream_protocol(
        self,
        client: crate::tokens::Protocol,
    ) -> Option<crate::tokens::Protocol> {
        match self {
            Translation::None => Some(client),
            Translation::AnthropicChat => Some(crate::tokens::Protocol::AnthropicMessages),
            Translation::GeminiChat | Translation::BedrockChat => None,
        }
    }

    /// A successful non-streamed answer, translated for the client, with the
    /// provider's usage. `None` for no translation.
    pub fn response(
        self,
        body: &[u8],
        model: &str,
        created: i64,
    ) -> Option<Result<Translated, TranslateError>> {
        match self {
            Translation::None => None,
            Translation::AnthropicChat => Some(
                anthropic::message_to_chat_with_usage(body, created)
                    .map(|(b, u)| (b, u.map(usage_of_message))),
            ),
            Translation::GeminiChat => Some(gemini::generate_to_chat(body, model, created)),
            Translation::BedrockChat => Some(bedrock::converse_to_chat(body, model, created)),
        }
    }

    /// A provider's error body in OpenAI's shape (`None`: pass it as it is).
    pub fn error(self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        match self {
            Translation::None => None,
            Translation::AnthropicChat => Some(anthropic_error_to_openai(status, body)),
            Translation::GeminiChat => {
                Some(error_to_openai(status, body, gemini::error_message(body)))
            }
            Translation::BedrockChat => {
                Some(error_to_openai(status, body, bedrock::error_message(body)))
            }
        }
    }

    /// The stream translator for a streamed answer.
    pub fn stream(self, model: &str, created: i64) -> Option<StreamTranslation> {
        match self {
            Translation::None => None,
            // Always with usage: the meter reads it from the translated
            // stream and strips it when the client did not ask.
            Translation::AnthropicChat => Some(StreamTranslation::Anthropic(
                anthropic_stream::StreamTranslator::new(model, created, true),
            )),
            Translation::GeminiChat => Some(StreamTranslation::Gemini(
                gemini_stream::StreamTranslator::new(model, created, true),
            )),
            Translation::BedrockChat => Some(StreamTranslation::Bedrock(
                bedrock_stream::StreamTranslator::new(model, created, true),
            )),
        }
    }
}

/// Anthropic's counts, normalized: cache reads and writes are part of the
/// prompt, each priced at its own rate.
pub fn usage_of_message(u: MessageUsage) -> Usage {
    Usage {
        prompt_tokens: u.prompt_tokens(),
        completion_tokens: u.output,
        cached_tokens: u.cache_read,
        cache_write_tokens: u.cache_write,
        reasoning_tokens: 0,
        source: UsageSource::Provider,
    }
}

/// `{"type":"error","error":{"type","message"}}` as
/// `{"error":{"message","type","code"}}`; a body that is not Anthropic's
/// error is quoted in the message.
fn anthropic_error_to_openai(status: u16, body: &[u8]) -> Vec<u8> {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let e = v.as_ref().and_then(|v| v.get("error"));
    let message = e
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            format!("the provider answered {status}: {text}")
        });
    let kind = e
        .and_then(|e| e.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("upstream_error");
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": kind}})
        .to_string()
        .into_bytes()
}

/// An error body, its message read by the provider's reader, in OpenAI's
/// shape.
fn error_to_openai(status: u16, body: &[u8], message: Option<String>) -> Vec<u8> {
    let message = message.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        format!("the provider answered {status}: {text}")
    });
    let kind = match status {
        400 | 404 | 413 | 422 => "invalid_request_error",
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        _ => "upstream_error",
    };
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": kind}})
        .to_string()
        .into_bytes()
}

/// A streamed answer's translator.
#[derive(Debug)]
pub enum StreamTranslation {
    Anthropic(anthropic_stream::StreamTranslator),
    Gemini(gemini_stream::StreamTranslator),
    Bedrock(bedrock_stream::StreamTranslator),
}

impl StreamTranslation {
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        match self {
            StreamTranslation::Anthropic(t) => t.feed(chunk, out),
            StreamTranslation::Gemini(t) => t.feed(chunk, out),
            StreamTranslation::Bedrock(t) => t.feed(chunk, out),
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        match self {
            StreamTranslation::Anthropic(t) => t.finish(out),
            StreamTranslation::Gemini(t) => t.finish(out),
            StreamTranslation::Bedrock(t) => t.finish(out),
        }
    }

    /// The provider's usage, when the stream reached its end with it.
    pub fn final_usage(&self) -> Option<Usage> {
        match self {
            StreamTranslation::Anthropic(t) => t
                .complete()
                .then(|| t.usage())
                .flatten()
                .map(usage_of_message),
            StreamTranslation::Gemini(t) => t.usage_complete().then(|| t.usage()).flatten(),
            StreamTranslation::Bedrock(t) => t.usage_complete().then(|| t.usage()).flatten(),
        }
    }

    /// The prompt's tokens as the provider counted them at the stream's
    /// start, for a stream cut before its final usage.
    pub fn prompt_tokens(&self) -> Option<u64> {
        match self {
            StreamTranslation::Anthropic(t) => t.prompt_tokens(),
            StreamTranslation::Gemini(t) => t.usage().map(|u| u.prompt_tokens),
            StreamTranslation::Bedrock(t) => t.usage().map(|u| u.prompt_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_errors_come_back_in_openais_shape() {
        let b = anthropic_error_to_openai(
            429,
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["message"], "slow down");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let b = anthropic_error_to_openai(502, b"<html>bad gateway</html>");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("502"));
    }

    #[test]
    fn which_endpoints_each_kind_serves() {
        use Endpoint::*;
        assert_eq!(
            Translation::for_request(ProviderKind::Anthropic, ChatCompletions),
            Ok(Translation::AnthropicChat)
        );
        assert_eq!(
            Translation::for_request(ProviderKind::Anthropic, Messages),
            Ok(Translation::None)
        );
        assert!(Translation::for_request(ProviderKind::Anthropic, Embeddings).is_err());
        assert!(Translation::for_request(ProviderKind::OpenAi, Messages).is_err());
        assert_eq!(
            Translation::for_request(ProviderKind::Azure, Responses),
            Ok(Translation::None)
        );
    }

    #[test]
    fn cache_reads_and_writes_are_part_of_the_prompt() {
        let u = usage_of_message(MessageUsage {
            input: 10,
            output: 5,
            cache_read: 100,
            cache_write: 20,
        });
        assert_eq!(u.prompt_tokens, 130);
        assert_eq!(u.cached_tokens, 100);
        assert_eq!(u.cache_write_tokens, 20);
        assert_eq!(u.uncached_prompt_tokens(), 10);
    }
}
