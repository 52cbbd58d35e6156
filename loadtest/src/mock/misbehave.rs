//! Per-request misbehaviour, asked for with `x-mock-*` request headers.
//!
//! Every header is optional; an invalid value is answered with a 400 naming
//! the header, so a typo in a test fails loudly instead of silently doing
//! nothing.

use std::time::Duration;

use hyper::{HeaderMap, StatusCode};

use super::errors::ApiError;
use super::MAX_COMPLETION_WORDS;

/// The largest delay or stream interval accepted, in milliseconds (10 min).
pub const MAX_DELAY_MS: u64 = 600_000;
/// The largest `x-mock-cached-tokens` / `x-mock-reasoning-tokens` accepted.
pub const MAX_DETAIL_TOKENS: u64 = 1_000_000_000;

pub const H_STATUS: &str = "x-mock-status";
pub const H_DELAY: &str = "x-mock-delay-ms";
pub const H_INTERVAL: &str = "x-mock-stream-interval-ms";
pub const H_RESET: &str = "x-mock-reset-after";
pub const H_CLOSE: &str = "x-mock-close-after";
pub const H_CLOSE_AT_END: &str = "x-mock-close-at-end";
pub const H_OMIT_USAGE: &str = "x-mock-omit-usage";
pub const H_CACHED: &str = "x-mock-cached-tokens";
pub const H_REASONING: &str = "x-mock-reasoning-tokens";
pub const H_SPLIT: &str = "x-mock-split";
pub const H_COMPLETION: &str = "x-mock-completion-tokens";
pub const H_UNCAPPED: &str = "x-mock-uncapped-tokens";
pub const H_STREAM_ERROR: &str = "x-mock-stream-error-after";
pub const H_CACHE_READ: &str = "x-mock-cache-read-tokens";
pub const H_CACHE_WRITE: &str = "x-mock-cache-write-tokens";
pub const H_TOOL_CALL: &str = "x-mock-tool-call";

/// How a connection is cut on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutAction {
    /// Abort with a TCP RST (SO_LINGER 0, then close).
    Reset,
    /// Close normally (FIN) without finishing the response.
    Close,
}

/// Cut the connection after this many content events of a stream (or before
/// any byte of a non-streamed response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub action: CutAction,
    pub after: u64,
    /// Cut after every event, where the body would end (`after` is then
    /// `u64::MAX`): a stream that said everything, and then broke.
    pub at_end: bool,
}

/// Everything the `x-mock-*` headers of one request ask for.
#[derive(Debug, Clone, Default)]
pub struct Misbehaviour {
    /// `x-mock-status`: answer with this 4xx/5xx and an error body.
    pub status: Option<StatusCode>,
    /// `x-mock-delay-ms`: extra wait before the first response byte.
    pub delay: Duration,
    /// `x-mock-stream-interval-ms`: pause between stream events (overrides the flag).
    pub stream_interval: Option<Duration>,
    /// `x-mock-reset-after` / `x-mock-close-after`.
    pub cut: Option<Cut>,
    /// `x-mock-omit-usage`: no usage anywhere.
    pub omit_usage: bool,
    /// `x-mock-cached-tokens`: cached part of the prompt tokens.
    pub cached_tokens: Option<u64>,
    /// `x-mock-reasoning-tokens`: reasoning tokens added to the completion tokens.
    pub reasoning_tokens: Option<u64>,
    /// `x-mock-split: byte`: every byte of the body is its own flushed chunk.
    pub split_bytes: bool,
    /// `x-mock-completion-tokens`: the number of generated words.
    pub completion_tokens: Option<u64>,
    /// `x-mock-uncapped-tokens`: the words generated when the request sets
    /// no cap (a cap it sets is honoured).
    pub uncapped_tokens: Option<u64>,
    /// `x-mock-stream-error-after`: an in-stream error event after this many
    /// content events (Anthropic, Gemini, Bedrock streams).
    pub stream_error_after: Option<u64>,
    /// `x-mock-cache-read-tokens`: prompt tokens read from the cache.
    pub cache_read_tokens: Option<u64>,
    /// `x-mock-cache-write-tokens`: prompt tokens written to the cache.
    pub cache_write_tokens: Option<u64>,
    /// `x-mock-tool-call`: answer with a call of this tool.
    pub tool_call: Option<String>,
}

impl Misbehaviour {
    /// Reads the `x-mock-*` headers; a 400 if any has an invalid value.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let reset = number(headers, H_RESET, u64::MAX)?;
        let close = number(headers, H_CLOSE, u64::MAX)?;
        let at_end = flag(headers, H_CLOSE_AT_END)?;
        let cut = match (reset, close, at_end) {
            (Some(_), Some(_), _) | (Some(_), _, true) | (_, Some(_), true) => {
                return Err(ApiError::bad_request(
                    format!(
                        "mock: `{H_RESET}`, `{H_CLOSE}` and `{H_CLOSE_AT_END}` cannot be combined"
                    ),
                    Some(H_RESET),
                ))
            }
            (Some(after), None, false) => Some(Cut {
                action: CutAction::Reset,
                after,
                at_end: false,
            }),
            (None, Some(after), false) => Some(Cut {
                action: CutAction::Close,
                after,
                at_end: false,
            }),
            (None, None, true) => Some(Cut {
                action: CutAction::Close,
                after: u64::MAX,
                at_end: true,
            }),
            (None, None, false) => None,
        };
        Ok(Misbehaviour {
            status: status(headers)?,
            delay: Duration::from_millis(number(headers, H_DELAY, MAX_DELAY_MS)?.unwrap_or(0)),
            stream_interval: number(headers, H_INTERVAL, MAX_DELAY_MS)?.map(Duration::from_millis),
            cut,
            omit_usage: flag(headers, H_OMIT_USAGE)?,
            cached_tokens: number(headers, H_CACHED, MAX_DETAIL_TOKENS)?,
            reasoning_tokens: number(headers, H_REASONING, MAX_DETAIL_TOKENS)?,
            split_bytes: split(headers)?,
            completion_tokens: number(headers, H_COMPLETION, MAX_COMPLETION_WORDS as u64)?,
            uncapped_tokens: number(headers, H_UNCAPPED, MAX_COMPLETION_WORDS as u64)?,
            stream_error_after: number(headers, H_STREAM_ERROR, u64::MAX)?,
            cache_read_tokens: number(headers, H_CACHE_READ, MAX_DETAIL_TOKENS)?,
            cache_write_tokens: number(headers, H_CACHE_WRITE, MAX_DETAIL_TOKENS)?,
            tool_call: tool_name(headers)?,
        })
    }
}

/// The header's value as trimmed text, if present.
fn text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::bad_header(name, "ASCII text")),
    }
}

/// A decimal integer header in `0..=max`.
fn number(headers: &HeaderMap, name: &str, max: u64) -> Result<Option<u64>, ApiError> {
    let Some(raw) = text(headers, name)? else {
        return Ok(None);
    };
    match raw.parse::<u64>() {
        Ok(n) if n <= max => Ok(Some(n)),
        _ => Err(ApiError::bad_header(
            name,
            &format!("an integer from 0 to {max}"),
        )),
    }
}

/// A boolean header: `1`/`true`/`yes` or `0`/`false`/`no`.
fn flag(headers: &HeaderMap, name: &str) -> Result<bool, ApiError> {
    match text(headers, name)?.map(str::to_ascii_lowercase).as_deref() {
        None | Some("0" | "false" | "no") => Ok(false),
        Some("1" | "true" | "yes") => Ok(true),
        Some(_) => Err(ApiError::bad_header(name, "1 or 0")),
    }
}

/// `x-mock-status`: a 4xx or 5xx status code.
fn status(headers: &HeaderMap) -> Result<Option<StatusCode>, ApiError> {
    let Some(code) = number(headers, H_STATUS, 599)? else {
        return Ok(None);
    };
    u16::try_from(code)
        .ok()
        .filter(|c| *c >= 400)
        .and_then(|c| StatusCode::from_u16(c).ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_header(H_STATUS, "a status code from 400 to 599"))
}

/// `x-mock-tool-call`: a tool name (letters, digits, `_`, `-`, `.`, `:`, 1-128).
fn tool_name(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(name) = text(headers, H_TOOL_CALL)? else {
        return Ok(None);
    };
    let valid = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if !valid {
        return Err(ApiError::bad_header(H_TOOL_CALL, "a tool name"));
    }
    Ok(Some(name.to_owned()))
}

/// `x-mock-split`: `byte` (or `none`, the default).
fn split(headers: &HeaderMap) -> Result<bool, ApiError> {
    match text(headers, H_SPLIT)?
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("none") => Ok(false),
        Some("byte") => Ok(true),
        Some(_) => Err(ApiError::bad_header(H_SPLIT, "`byte` or `none`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn parses_every_header() {
        let m = Misbehaviour::from_headers(&headers(&[
            (H_STATUS, "503"),
            (H_DELAY, "20"),
            (H_INTERVAL, "5"),
            (H_RESET, "3"),
            (H_OMIT_USAGE, "1"),
            (H_CACHED, "7"),
            (H_REASONING, "9"),
            (H_SPLIT, "byte"),
            (H_COMPLETION, "4"),
        ]))
        .unwrap();
        assert_eq!(m.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(m.delay, Duration::from_millis(20));
        assert_eq!(m.stream_interval, Some(Duration::from_millis(5)));
        assert_eq!(
            m.cut,
            Some(Cut {
                action: CutAction::Reset,
                after: 3,
                at_end: false,
            })
        );
        assert!(m.omit_usage && m.split_bytes);
        assert_eq!(
            (m.cached_tokens, m.reasoning_tokens, m.completion_tokens),
            (Some(7), Some(9), Some(4))
        );
        let m = Misbehaviour::from_headers(&headers(&[(H_CLOSE_AT_END, "1")])).unwrap();
        assert!(m
            .cut
            .is_some_and(|c| c.at_end && c.action == CutAction::Close));
    }

    #[test]
    fn rejects_bad_values() {
        for pairs in [
            [(H_STATUS, "200")],
            [(H_STATUS, "600")],
            [(H_DELAY, "-1")],
            [(H_DELAY, "99999999999999999999999")],
            [(H_SPLIT, "word")],
            [(H_OMIT_USAGE, "maybe")],
            [(H_COMPLETION, "100000000")],
            [(H_STREAM_ERROR, "x")],
            [(H_CACHE_READ, "-2")],
            [(H_TOOL_CALL, "a b")],
        ] {
            let err = Misbehaviour::from_headers(&headers(&pairs)).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{pairs:?}");
        }
        let both = headers(&[(H_RESET, "1"), (H_CLOSE, "1")]);
        assert!(Misbehaviour::from_headers(&both).is_err());
    }
}
