//! Parsing an upstream's response head: pure, no I/O.

use crate::http::request::has_token;
use crate::limits::UPSTREAM_HEADER_COUNT_MAX;

/// How the upstream delimits its response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFraming {
    /// No body (1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHead {
    pub status: u16,
    pub head_len: usize,
    pub framing: UpstreamFraming,
    /// Whether the connection may be reused after the body.
    pub keep_alive: bool,
    /// `content-type: text/event-stream`.
    pub event_stream: bool,
    /// Header lines to pass on to the client, already formatted.
    pub forward: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    TooLarge,
    Malformed(String),
}

/// Response headers never passed to the client: hop-by-hop ones, framing we
/// redo ourselves, and the upstream's request id (ours replaces it).
fn is_dropped(name: &[u8]) -> bool {
    const DROP: [&[u8]; 10] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"content-length",
        b"te",
        b"trailer",
        b"upgrade",
        b"x-request-id",
        b"server",
    ];
    DROP.iter().any(|d| name.eq_ignore_ascii_case(d))
}

/// Parses the head at the start of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_head(buf: &[u8], head_bytes_max: usize) -> Result<Option<UpstreamHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; UPSTREAM_HEADER_COUNT_MAX];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= head_bytes_max {
                return Err(HeadError::TooLarge);
            }
            return Ok(None);
        }
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if head_len > head_bytes_max {
        return Err(HeadError::TooLarge);
    }
    let status = resp.code.unwrap_or(0);
    let version_minor = resp.version.unwrap_or(1);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close = version_minor == 0;
    let mut event_stream = false;
    let mut forward = Vec::with_capacity(256);
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = crate::http::request::parse_content_length(h.value)
                .ok_or_else(|| HeadError::Malformed("invalid Content-Length".into()))?;
            if content_length.is_some_and(|p| p != v) {
                return Err(HeadError::Malformed("conflicting Content-Length".into()));
            }
            content_length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if has_token(h.value, "chunked") {
                chunked = true;
            } else {
                return Err(HeadError::Malformed("unsupported Transfer-Encoding".into()));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(h.value, "close") {
                close = true;
            } else if has_token(h.value, "keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case(b"content-type") {
            event_stream = h
                .value
                .trim_ascii_start()
                .get(..17)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"));
        }
        if !is_dropped(name) {
            forward.extend_from_slice(name);
            forward.extend_from_slice(b": ");
            forward.extend_from_slice(h.value);
            forward.extend_from_slice(b"\r\n");
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            forward.extend_from_slice(b"x-upstream-request-id: ");
            forward.extend_from_slice(h.value);
            forward.extend_from_slice(b"\r\n");
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        UpstreamFraming::None
    } else if chunked {
        // RFC 9112 6.3: chunked wins over Content-Length, and the connection
        // must not be reused after such a message.
        if content_length.is_some() {
            close = true;
        }
        UpstreamFraming::Chunked
    } else if let Some(n) = content_length {
        UpstreamFraming::Length(n)
    } else {
        close = true;
        UpstreamFraming::Close
    };
    Ok(Some(UpstreamHead {
        status,
        head_len,
        framing,
        keep_alive: !close,
        event_stream,
        forward,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sse_heads() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\nX-Request-Id: up-1\r\nOpenAI-Processing-Ms: 5\r\n\r\ndata";
        let h = parse_head(raw, 4096).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, UpstreamFraming::Chunked);
        assert!(h.event_stream && h.keep_alive);
        let fwd = String::from_utf8(h.forward).unwrap();
        assert!(fwd.contains("OpenAI-Processing-Ms: 5\r\n"));
        assert!(fwd.contains("x-upstream-request-id: up-1\r\n"));
        assert!(!fwd.to_ascii_lowercase().contains("transfer-encoding"));
        assert_eq!(h.head_len, raw.len() - 4);
    }

    #[test]
    fn framing_rules() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 4096)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, UpstreamFraming::Length(5));
        let h = parse_head(b"HTTP/1.1 200 OK\r\n\r\n", 4096)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (UpstreamFraming::Close, false));
        let h = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", 4096)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", 4096).is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n", 4096).unwrap().is_none());
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nX: aaaaaaaaaaaaaaa", 10),
            Err(HeadError::TooLarge)
        );
    }
}
