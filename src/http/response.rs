//! Building response heads into a byte buffer. Pure; the server writes them.

use crate::error::ApiError;

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    Length(usize),
    Chunked,
    /// Delimited by closing the connection (for HTTP/1.0 clients).
    Close,
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// Starts a response: the status line.
pub fn begin(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal (`write!` cost 1,135 instructions a request for a
/// request's three numbers by callgrind, docs/benchmarks.md; this a few
/// per digit).
#[inline]
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends one header line.
#[inline]
pub fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Ends the head: framing, connection and the blank line.
pub fn finish(out: &mut Vec<u8>, framing: ResponseFraming, keep_alive: bool) {
    match framing {
        ResponseFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n as u64);
            out.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::Close => {}
    }
    if !keep_alive || framing == ResponseFraming::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A complete JSON response (head and body) appended to `out`.
pub fn json(out: &mut Vec<u8>, status: u16, request_id: &str, keep_alive: bool, body: &[u8]) {
    begin(out, status);
    header(out, "content-type", b"application/json");
    header(out, "x-request-id", request_id.as_bytes());
    finish(out, ResponseFraming::Length(body.len()), keep_alive);
    out.extend_from_slice(body);
}

/// A complete OpenAI-style error response appended to `out`.
pub fn error(out: &mut Vec<u8>, e: &ApiError, request_id: &str, keep_alive: bool) {
    let body = e.to_json();
    begin(out, e.status);
    header(out, "content-type", b"application/json");
    header(out, "x-request-id", request_id.as_bytes());
    if let Some(secs) = e.retry_after_secs {
        header(out, "retry-after", secs.to_string().as_bytes());
    }
    if e.attempts > 0 {
        out.extend_from_slice(b"x-bursar-attempts: ");
        push_decimal(out, u64::from(e.attempts));
        out.extend_from_slice(b"\r\n");
    }
    if e.status >= 500 && e.fault == crate::error::Fault::Upstream && !e.retryable {
        // The upstream may have worked on the request (it closed after it
        // could have arrived): the OpenAI and Anthropic SDKs, which retry a
        // 5xx by default, honour this and do not send it again.
        header(out, "x-should-retry", b"false");
    }
    finish(out, ResponseFraming::Length(body.len()), keep_alive);
    out.extend_from_slice(&body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_pushed_as_display_formats_them() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            200,
            404,
            65_535,
            1 << 32,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn error_responses_are_complete_http() {
        let mut out = Vec::new();
        error(&mut out, &ApiError::payload_too_large(5), "req_1", false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 413 Content Too Large\r\n"));
        assert!(text.contains("x-request-id: req_1\r\n"));
        assert!(text.contains("connection: close\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains("request_too_large"));
    }
}
