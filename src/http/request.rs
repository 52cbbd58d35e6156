//! Parsing a request head: pure, no I/O, no allocation in steady state.
//!
//! The head is parsed with httparse; what the server needs afterwards is kept
//! as offsets into the connection's buffer ([`RequestHead`]), so the buffer can
//! keep growing while the body is read and no header is copied.

use std::ops::Range;

use crate::error::ApiError;
use crate::limits::HEADER_COUNT_MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Other,
}

impl Method {
    fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A header as two ranges into the head bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRange {
    pub name: Range<u32>,
    pub value: Range<u32>,
}

/// A parsed request head. Every range is relative to the start of the head.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    pub method: Option<Method>,
    pub target: Range<u32>,
    pub version_minor: u8,
    pub head_len: usize,
    pub headers: Vec<HeaderRange>,
    pub framing: Option<BodyFraming>,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

impl RequestHead {
    pub fn method(&self) -> Method {
        self.method.unwrap_or(Method::Other)
    }
    pub fn framing(&self) -> BodyFraming {
        self.framing.unwrap_or(BodyFraming::None)
    }
    /// The request target (path and query) from `head` bytes.
    pub fn target<'a>(&self, head: &'a [u8]) -> &'a str {
        // httparse only accepts visible ASCII in the target, so this is UTF-8.
        std::str::from_utf8(&head[self.target.start as usize..self.target.end as usize])
            .unwrap_or("")
    }
    /// The path without the query.
    pub fn path<'a>(&self, head: &'a [u8]) -> &'a str {
        let t = self.target(head);
        t.split_once('?').map_or(t, |(p, _)| p)
    }
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header<'a>(&self, head: &'a [u8], name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| {
                head[h.name.start as usize..h.name.end as usize]
                    .eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|h| &head[h.value.start as usize..h.value.end as usize])
    }
    /// All headers as (name, value) pairs.
    pub fn headers<'a>(
        &'a self,
        head: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.headers.iter().map(move |h| {
            (
                &head[h.name.start as usize..h.name.end as usize],
                &head[h.value.start as usize..h.value.end as usize],
            )
        })
    }
}

fn range_in(base: &[u8], part: &[u8]) -> Range<u32> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start as u32..(start + part.len()) as u32
}

/// A Content-Length value: ASCII digits only (no sign, no spaces inside, no
/// list), within u64. Shared by request and upstream-response parsing.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Case-insensitive search for a token in a comma-separated header value.
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses the head at the start of `buf` into `out`.
///
/// Returns `Ok(false)` when more bytes are needed. Enforces the header byte
/// bound, and refuses what could smuggle a second request: both
/// Content-Length and Transfer-Encoding, conflicting Content-Lengths, and any
/// transfer coding but a lone `chunked`.
pub fn parse_head(
    buf: &[u8],
    header_bytes_max: usize,
    body_bytes_max: usize,
    out: &mut RequestHead,
) -> Result<bool, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= header_bytes_max {
                return Err(ApiError::headers_too_large(format!(
                    "request head exceeds {header_bytes_max} bytes"
                )));
            }
            return Ok(false);
        }
        Err(httparse::Error::Version) => return Err(ApiError::version_not_supported()),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ApiError::headers_too_large(format!(
                "more than {HEADER_COUNT_MAX} request headers"
            )))
        }
        Err(e) => {
            return Err(ApiError::bad_request(
                "malformed_request",
                format!("malformed HTTP request: {e}"),
            ))
        }
    };
    if head_len > header_bytes_max {
        return Err(ApiError::headers_too_large(format!(
            "request head exceeds {header_bytes_max} bytes"
        )));
    }
    let method = Method::parse(req.method.unwrap_or(""));
    let target = req.path.unwrap_or("");
    let version_minor = req.version.unwrap_or(1);
    if !target.starts_with('/') {
        return Err(ApiError::bad_request(
            "malformed_request",
            "request target must be an absolute path",
        ));
    }

    out.headers.clear();
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut connection_close = version_minor == 0;
    let mut expect_continue = false;
    let mut host = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        out.headers.push(HeaderRange {
            name: range_in(buf, name),
            value: range_in(buf, h.value),
        });
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = parse_content_length(h.value).ok_or_else(|| {
                ApiError::bad_request("malformed_request", "invalid Content-Length")
            })?;
            if content_length.is_some_and(|prev| prev != v) {
                return Err(ApiError::bad_request(
                    "malformed_request",
                    "conflicting Content-Length headers",
                ));
            }
            content_length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if transfer_encoding {
                return Err(ApiError::bad_request(
                    "malformed_request",
                    "repeated Transfer-Encoding header",
                ));
            }
            transfer_encoding = true;
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(ApiError::not_implemented(
                    "only Transfer-Encoding: chunked is supported",
                ));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(h.value, "close") {
                connection_close = true;
            } else if has_token(h.value, "keep-alive") && version_minor == 0 {
                connection_close = false;
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = version_minor >= 1;
            } else {
                return Err(ApiError::bad_request(
                    "malformed_request",
                    "unsupported Expect header",
                ));
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            if host {
                return Err(ApiError::bad_request(
                    "malformed_request",
                    "repeated Host header",
                ));
            }
            host = true;
        }
    }
    if version_minor >= 1 && !host {
        return Err(ApiError::bad_request(
            "malformed_request",
            "missing Host header",
        ));
    }
    let framing = match (content_length, chunked) {
        (Some(_), true) => {
            return Err(ApiError::bad_request(
                "malformed_request",
                "both Content-Length and Transfer-Encoding are set",
            ))
        }
        (_, true) if version_minor == 0 => {
            return Err(ApiError::bad_request(
                "malformed_request",
                "Transfer-Encoding is not allowed in HTTP/1.0",
            ))
        }
        (None, true) => BodyFraming::Chunked,
        (Some(0), false) => BodyFraming::None,
        (Some(n), false) => {
            if n > body_bytes_max as u64 {
                return Err(ApiError::payload_too_large(body_bytes_max));
            }
            BodyFraming::Length(n)
        }
        (None, false) => {
            if matches!(method, Method::Post | Method::Put | Method::Patch) {
                return Err(ApiError::length_required(
                    "a request body needs Content-Length or Transfer-Encoding: chunked",
                ));
            }
            BodyFraming::None
        }
    };
    out.method = Some(method);
    out.target = range_in(buf, target.as_bytes());
    out.version_minor = version_minor;
    out.head_len = head_len;
    out.framing = Some(framing);
    out.keep_alive = !connection_close;
    out.expect_continue = expect_continue && framing != BodyFraming::None;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<RequestHead>, ApiError> {
        let mut h = RequestHead::default();
        parse_head(s.as_bytes(), 16 * 1024, 1 << 20, &mut h).map(|done| done.then_some(h))
    }

    #[test]
    fn parses_a_post_with_length() {
        let raw = "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nAuthorization: Bearer k\r\n\r\n";
        let h = parse(raw).unwrap().unwrap();
        assert_eq!(h.method(), Method::Post);
        assert_eq!(h.path(raw.as_bytes()), "/v1/chat/completions");
        assert_eq!(h.target(raw.as_bytes()), "/v1/chat/completions?x=1");
        assert_eq!(h.framing(), BodyFraming::Length(12));
        assert_eq!(
            h.header(raw.as_bytes(), "authorization"),
            Some(&b"Bearer k"[..])
        );
        assert!(h.keep_alive);
        assert_eq!(h.head_len, raw.len());
    }

    #[test]
    fn partial_heads_ask_for_more() {
        assert!(parse("POST /v1/x HTTP/1.1\r\nHost: a\r\n")
            .unwrap()
            .is_none());
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let e = parse(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        let e =
            parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n")
                .unwrap_err();
        assert_eq!(e.status, 400);
        let e = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n").unwrap_err();
        assert_eq!(e.status, 400);
        let e = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap_err();
        assert_eq!(e.status, 501);
    }

    #[test]
    fn statuses_for_bad_heads() {
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap_err()
                .status,
            411
        );
        assert_eq!(
            parse("GET / HTTP/2.0\r\nHost: a\r\n\r\n")
                .unwrap_err()
                .status,
            505
        );
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(parse("GARBAGE\r\n\r\n").unwrap_err().status, 400);
        let many: String = (0..HEADER_COUNT_MAX + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"))
                .unwrap_err()
                .status,
            431
        );
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n", "a".repeat(20_000));
        assert_eq!(parse(&big).unwrap_err().status, 431);
        let e =
            parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n").unwrap_err();
        assert_eq!(e.status, 413);
    }

    #[test]
    fn connection_semantics() {
        let h = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(h.expect_continue);
    }
}
