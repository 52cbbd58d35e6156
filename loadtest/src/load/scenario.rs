//! What each request looks like (endpoint and JSON body), and how a streamed
//! answer is scanned for output tokens (server-sent events).

use bytes::Bytes;
use serde_json::json;

/// The longest single server-sent-event line accepted; a longer one is a protocol error
/// (keeps the line buffer of a streamed response bounded).
pub const MAX_SSE_LINE_BYTES: usize = 1 << 20;

/// The prompt every request sends (short, fixed: the body is built once per run).
const PROMPT: &str = "Say hello in one short sentence.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// POST /chat/completions
    Chat,
    /// POST /chat/completions with "stream": true (TTFT and time per token)
    ChatStream,
    /// POST /completions
    Completions,
    /// POST /completions with "stream": true
    CompletionsStream,
    /// POST /embeddings
    Embeddings,
    /// POST /responses
    Responses,
    /// POST /responses with "stream": true
    ResponsesStream,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Chat => "chat",
            Scenario::ChatStream => "chat-stream",
            Scenario::Completions => "completions",
            Scenario::CompletionsStream => "completions-stream",
            Scenario::Embeddings => "embeddings",
            Scenario::Responses => "responses",
            Scenario::ResponsesStream => "responses-stream",
        }
    }

    /// The endpoint, relative to the target's base URL (e.g. `/v1`).
    pub fn path(self) -> &'static str {
        match self {
            Scenario::Chat | Scenario::ChatStream => "/chat/completions",
            Scenario::Completions | Scenario::CompletionsStream => "/completions",
            Scenario::Embeddings => "/embeddings",
            Scenario::Responses | Scenario::ResponsesStream => "/responses",
        }
    }

    pub fn streamed(self) -> bool {
        matches!(
            self,
            Scenario::ChatStream | Scenario::CompletionsStream | Scenario::ResponsesStream
        )
    }

    /// The JSON body sent with every request of the run.
    pub fn body(self, model: &str, max_tokens: u32) -> Bytes {
        let stream = self.streamed();
        let v = match self {
            Scenario::Chat | Scenario::ChatStream => json!({
                "model": model,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": max_tokens,
                "stream": stream,
            }),
            Scenario::Completions | Scenario::CompletionsStream => json!({
                "model": model,
                "prompt": PROMPT,
                "max_tokens": max_tokens,
                "stream": stream,
            }),
            Scenario::Embeddings => json!({
                "model": model,
                "input": PROMPT,
            }),
            Scenario::Responses | Scenario::ResponsesStream => json!({
                "model": model,
                "input": PROMPT,
                "max_output_tokens": max_tokens,
                "stream": stream,
            }),
        };
        Bytes::from(v.to_string())
    }
}

/// Scans a server-sent-event stream as it arrives, chunk by chunk, and counts the
/// `data:` events that carry output text (a token).
#[derive(Default)]
pub struct SseScanner {
    line: Vec<u8>,
    /// Output-token events seen so far.
    pub tokens: u32,
}

impl SseScanner {
    /// Feeds one chunk; returns how many token events it completed, or an error for
    /// a line longer than [`MAX_SSE_LINE_BYTES`].
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<u32, &'static str> {
        let mut found = 0;
        while let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
            let (head, rest) = chunk.split_at(nl);
            let is_token = if self.line.is_empty() {
                is_token_line(head)
            } else {
                self.push(head)?;
                let t = is_token_line(&self.line);
                self.line.clear();
                t
            };
            if is_token {
                found += 1;
            }
            chunk = &rest[1..];
        }
        self.push(chunk)?;
        self.tokens += found;
        Ok(found)
    }

    fn push(&mut self, part: &[u8]) -> Result<(), &'static str> {
        if self.line.len() + part.len() > MAX_SSE_LINE_BYTES {
            return Err("server-sent event line too long");
        }
        self.line.extend_from_slice(part);
        Ok(())
    }
}

/// True for a `data:` line whose payload carries non-empty output text: OpenAI chat
/// chunks (`"content":"..."`), completions (`"text":"..."`) and Responses API deltas
/// (`"delta":"..."`). `[DONE]`, role-only chunks and empty strings are not tokens.
/// A payload that is not JSON at all counts as a token (some servers stream raw text).
pub fn is_token_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(payload) = line.strip_prefix(b"data:") else {
        return false;
    };
    let payload = payload.trim_ascii();
    if payload.is_empty() || payload == b"[DONE]" {
        return false;
    }
    if payload[0] != b'{' {
        return true;
    }
    // Responses API events: only text deltas are tokens (the `.done` and `completed`
    // events repeat the whole text).
    if find(payload, b"\"response.").is_some() {
        return find(payload, b"\"response.output_text.delta\"").is_some()
            && has_nonempty_string(payload, b"\"delta\"");
    }
    [&b"\"content\""[..], b"\"text\"", b"\"delta\""]
        .iter()
        .any(|key| has_nonempty_string(payload, key))
}

/// Whether `key` occurs followed by `:` and a string value that is not empty.
fn has_nonempty_string(hay: &[u8], key: &[u8]) -> bool {
    let mut from = 0;
    while let Some(pos) = find(&hay[from..], key) {
        let after = &hay[from + pos + key.len()..];
        let after = after.trim_ascii_start();
        if let Some(v) = after.strip_prefix(b":") {
            let v = v.trim_ascii_start();
            if v.len() >= 2 && v[0] == b'"' && v[1] != b'"' {
                return true;
            }
        }
        from += pos + key.len();
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lines() {
        assert!(is_token_line(
            br#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#
        ));
        assert!(!is_token_line(
            br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(!is_token_line(
            br#"data: {"choices":[{"delta":{"content":null}}]}"#
        ));
        assert!(is_token_line(br#"data: {"choices":[{"text":" world"}]}"#));
        assert!(is_token_line(
            br#"data: {"type":"response.output_text.delta","delta":"Hi"}"#
        ));
        assert!(!is_token_line(
            br#"data: {"type":"response.output_text.done","text":"Hi there"}"#
        ));
        assert!(!is_token_line(
            br#"data: {"type":"response.created","response":{"text":{"format":{}}}}"#
        ));
        assert!(!is_token_line(b"data: [DONE]"));
        assert!(!is_token_line(b"event: ping"));
        assert!(!is_token_line(b""));
        assert!(is_token_line(b"data: plain words\r"));
    }

    #[test]
    fn scanner_splits_across_chunks() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut s = SseScanner::default();
            s.feed(&stream[..cut]).unwrap();
            s.feed(&stream[cut..]).unwrap();
            assert_eq!(s.tokens, 2, "cut at {cut}");
        }
    }

    #[test]
    fn bodies_are_json() {
        for sc in [
            Scenario::Chat,
            Scenario::ChatStream,
            Scenario::Completions,
            Scenario::CompletionsStream,
            Scenario::Embeddings,
            Scenario::Responses,
            Scenario::ResponsesStream,
        ] {
            let v: serde_json::Value = serde_json::from_slice(&sc.body("m", 8)).unwrap();
            assert_eq!(v["model"], "m");
            if sc != Scenario::Embeddings {
                assert_eq!(v["stream"], sc.streamed());
            }
        }
    }
}
