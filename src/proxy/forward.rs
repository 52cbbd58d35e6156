//! Phase 3, forward: send the request upstream on a pooled connection, read
//! the response head, and answer non-streamed responses whole. Streamed
//! (`text/event-stream`) responses go on to [`super::stream`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::route::Endpoint;
use super::settle::{charge, MeterPlan};
use super::{RequestId, Worker};
use crate::catalog::Provider;
use crate::config::UpstreamTarget;
use crate::error::ApiError;
use crate::http::chunked::{ChunkError, ChunkedDecoder};
use crate::http::response::{self, ResponseFraming};
use crate::http::server::{ClientOut, RequestView};
use crate::limits::UPSTREAM_STALE_RETRY_WINDOW;
use crate::providers::translate::Translation;
use crate::upstream::response::{parse_head, HeadError, UpstreamFraming, UpstreamHead};
use crate::upstream::{PoolKey, ReadOutcome, UpstreamConn, UpstreamIoError};

/// Client request headers never sent upstream: hop-by-hop ones, the client's
/// credentials, framing we redo, compression we cannot count tokens through,
/// and our own control headers.
fn is_dropped(name: &[u8]) -> bool {
    const DROP: [&[u8]; 17] = [
        b"host",
        b"authorization",
        b"api-key",
        b"x-api-key",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"accept-encoding",
        b"x-request-id",
        b"cookie",
    ];
    DROP.iter().any(|d| name.eq_ignore_ascii_case(d))
        || (name.len() >= 9 && name[..9].eq_ignore_ascii_case(b"x-bursar-"))
}

/// Where a request goes under the provider's base URL.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamPath<'a> {
    /// OpenAI's path for the endpoint, with the client's query string.
    Endpoint(Endpoint),
    /// Azure OpenAI: `/openai/deployments/<deployment><endpoint>?api-version=<v>`.
    Azure {
        deployment: &'a str,
        endpoint: Endpoint,
        api_version: &'a str,
    },
    /// A fixed path (Anthropic's `/v1/messages`).
    Fixed(&'static str),
    /// A path made for this request (Gemini's and Bedrock's name the model).
    Made(&'a str),
}

/// What an upstream request carries besides the client's headers.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    pub path: UpstreamPath<'a>,
    /// The credential header (name, value).
    pub auth: Option<(&'static str, &'a str)>,
    /// One more header, unless the client sent it (`anthropic-version`).
    pub default_header: Option<(&'static str, &'a str)>,
    /// Headers a request signature made (Bedrock's SigV4).
    pub signed: &'a [(String, String)],
}

/// Writes the upstream request (head and `body`) into `out`.
pub fn build_request(
    out: &mut Vec<u8>,
    target: &UpstreamTarget,
    outbound: &Outbound<'_>,
    req: &RequestView<'_>,
    body: &[u8],
    rid: &RequestId,
) {
    out.reserve(512 + body.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(target.base_path.as_bytes());
    match outbound.path {
        UpstreamPath::Endpoint(endpoint) => {
            out.extend_from_slice(endpoint.suffix().as_bytes());
            if let Some((_, q)) = req.head.target(req.bytes).split_once('?') {
                out.push(b'?');
                out.extend_from_slice(q.as_bytes());
            }
        }
        UpstreamPath::Azure {
            deployment,
            endpoint,
            api_version,
        } => {
            out.extend_from_slice(b"/openai/deployments/");
            out.extend_from_slice(deployment.as_bytes());
            out.extend_from_slice(endpoint.suffix().as_bytes());
            out.extend_from_slice(b"?api-version=");
            out.extend_from_slice(api_version.as_bytes());
        }
        UpstreamPath::Fixed(path) => out.extend_from_slice(path.as_bytes()),
        UpstreamPath::Made(path) => out.extend_from_slice(path.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(target.host_header.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some((name, value)) = outbound.auth {
        response::header(out, name, value.as_bytes());
    }
    for (name, value) in outbound.signed {
        response::header(out, name, value.as_bytes());
    }
    let mut default_header = outbound.default_header;
    for (name, value) in req.head.headers(req.bytes) {
        if !is_dropped(name) {
            if default_header.is_some_and(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes())) {
                default_header = None;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some((name, value)) = default_header {
        response::header(out, name, value.as_bytes());
    }
    response::header(out, "x-request-id", rid.as_str().as_bytes());
    out.extend_from_slice(b"accept-encoding: identity\r\ncontent-length: ");
    response::push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

fn io_error(e: UpstreamIoError, target: &UpstreamTarget, when: &str) -> ApiError {
    match e {
        UpstreamIoError::Timeout => ApiError::gateway_timeout(format!(
            "the upstream {} did not answer in time ({when})",
            target.host_header
        )),
        UpstreamIoError::TooLarge => ApiError::bad_gateway(
            "upstream_response_too_large",
            format!(
                "the upstream {}'s response exceeds the gateway's bound",
                target.host_header
            ),
        ),
        UpstreamIoError::Io(e) => ApiError::bad_gateway(
            "upstream_connection_failed",
            format!(
                "the connection to the upstream {} failed ({when}): {e}",
                target.host_header
            ),
        ),
    }
}

/// An upstream exchange up to the response head, with the instants the
/// overhead histogram needs.
struct Exchanged {
    conn: UpstreamConn,
    head: UpstreamHead,
    /// Just before the request was written upstream.
    sent_at: Instant,
    /// Time spent opening new upstream connections (not gateway overhead).
    connecting: Duration,
    /// When the response head was complete.
    head_at: Instant,
}

/// Sends the request and reads the response head. A request is sent again,
/// once, on a fresh connection, only when it provably never reached the
/// upstream: a pooled connection the write failed on (the upstream cannot
/// act on a request it did not receive whole: its length is in the head),
/// or that closed or reset with no response byte within
/// [`UPSTREAM_STALE_RETRY_WINDOW`] of the write (a keep-alive close racing
/// it). Any later close is a 502, not sent again: the upstream may have
/// received the request and worked on it, and the provider may bill it; the
/// caller drops the request's `Hold`, so nothing is charged. Most stale
/// connections are dropped before anything is written to them, by the
/// pool's look at a connection that sat idle (`Pool::checkout`).
async fn exchange(
    w: &Worker,
    target: &Arc<UpstreamTarget>,
    tls: &monoio_rustls::TlsConnector,
    request: Vec<u8>,
) -> Result<Exchanged, ApiError> {
    let addr = w
        .resolver
        .pick(&target.host, target.port, w.spin())
        .ok_or_else(|| {
            ApiError::bad_gateway(
                "upstream_unresolved",
                format!("the upstream host {} has not been resolved", target.host),
            )
        })?;
    let key = PoolKey {
        addr,
        tls: target.tls,
        host: Arc::clone(&target.pool_host),
    };
    let limits = &w.limits;
    let mut request = request;
    let mut connecting = Duration::ZERO;
    for attempt in 0..2 {
        let pooled = if attempt == 0 {
            w.pool.borrow_mut().checkout(&key)
        } else {
            None
        };
        let mut conn = match pooled {
            Some(c) => {
                w.stats.upstream_reuses.inc();
                c
            }
            None => {
                w.stats.upstream_connects.inc();
                let started = Instant::now();
                let c = crate::upstream::connect(
                    tls,
                    key.clone(),
                    target,
                    limits.upstream_connect_timeout,
                )
                .await?;
                connecting += started.elapsed();
                c
            }
        };
        // Only a connection from the pool may have gone stale; a fresh one
        // (the retry included) is never sent again.
        let may_be_stale = conn.reused;
        let sent_at = Instant::now();
        let (res, back) = conn.write_all(request, limits.upstream_read_timeout).await;
        match (res, back) {
            (Ok(()), Some(buf)) => request = buf,
            (Err(UpstreamIoError::Io(_)), Some(buf)) if may_be_stale => {
                w.stats.upstream_stale_retries.inc();
                request = buf;
                continue;
            }
            (Err(e), _) => return Err(io_error(e, target, "sending the request")),
            (Ok(()), None) => return Err(ApiError::internal("write buffer lost")),
        }
        let written_at = Instant::now();
        // Any byte, a 1xx interim head included, shows the upstream has the
        // request.
        let mut answered = false;
        loop {
            match parse_head(&conn.rbuf, limits.upstream_header_bytes_max) {
                Ok(Some(head)) if (100..200).contains(&head.status) => {
                    conn.rbuf.drain(..head.head_len);
                    continue;
                }
                Ok(Some(head)) => {
                    return Ok(Exchanged {
                        conn,
                        head,
                        sent_at,
                        connecting,
                        head_at: Instant::now(),
                    })
                }
                Ok(None) => {}
                Err(HeadError::TooLarge) => {
                    return Err(ApiError::bad_gateway(
                        "upstream_bad_response",
                        "the upstream's response head is too large",
                    ))
                }
                Err(HeadError::Malformed(m)) => {
                    return Err(ApiError::bad_gateway(
                        "upstream_bad_response",
                        format!("the upstream answered malformed HTTP: {m}"),
                    ))
                }
            }
            let read = conn
                .read_more(
                    limits.upstream_header_bytes_max,
                    limits.upstream_read_timeout,
                )
                .await;
            match read {
                Ok(ReadOutcome::Data(_)) => {
                    answered = true;
                    continue;
                }
                Ok(ReadOutcome::Eof) | Err(UpstreamIoError::Io(_)) => {}
                Err(e) => return Err(io_error(e, target, "waiting for the response")),
            }
            let after = written_at.elapsed();
            if may_be_stale && !answered && after <= UPSTREAM_STALE_RETRY_WINDOW {
                w.stats.upstream_stale_retries.inc();
                break;
            }
            // Closed or reset after the whole request was written, on any
            // connection: the upstream may have it, so neither the gateway
            // nor (told by the error) the client's SDK sends it again.
            w.stats.upstream_closed_not_retried.inc();
            return Err(closed_after_the_request(target, after));
        }
    }
    Err(ApiError::bad_gateway(
        "upstream_closed",
        format!(
            "the upstream {} closed the connection without a response",
            target.host_header
        ),
    ))
}

/// A connection closed (or reset) without a complete response `after` the
/// request was written (past the stale-retry window for a pooled one): the
/// upstream may have the request, so it is not sent again, nor charged.
fn closed_after_the_request(target: &UpstreamTarget, after: Duration) -> ApiError {
    let mut e = ApiError::bad_gateway(
        "upstream_closed",
        format!(
            "the upstream {} closed the connection without a response {} ms after \
             the request was sent; it may have received the request, so it was not \
             sent again (nothing was charged)",
            target.host_header,
            after.as_millis()
        ),
    );
    // Not known to be safe to repeat: the provider may have worked on it.
    e.retryable = false;
    e
}

/// Reads more of a body whose end has not arrived; an EOF is the upstream
/// closing mid-body.
async fn read_more_of_body(
    conn: &mut UpstreamConn,
    max: usize,
    wait: Duration,
    target: &UpstreamTarget,
) -> Result<(), ApiError> {
    match conn.read_more(max, wait).await {
        Ok(ReadOutcome::Data(_)) => Ok(()),
        Ok(ReadOutcome::Eof) => Err(ApiError::bad_gateway(
            "upstream_closed",
            "the upstream closed the connection mid-body",
        )),
        Err(e) => Err(io_error(e, target, "reading the body")),
    }
}

/// A whole non-streamed body, where [`read_body`] left it.
enum Body {
    /// The first `n` bytes of the connection's read buffer: a body framed by
    /// `content-length` stays there, so the buffer keeps its allocation for
    /// the connection's next response (taking it cost an 8 KiB `malloc` and
    /// `free` per request).
    InConn(usize),
    /// Decoded from chunked framing, or read to the end of a connection.
    Owned(Vec<u8>),
}

impl Body {
    fn bytes<'a>(&'a self, conn: &'a UpstreamConn) -> &'a [u8] {
        match self {
            Body::InConn(n) => &conn.rbuf[..*n],
            Body::Owned(v) => v,
        }
    }
}

/// Reads a whole non-streamed body (the head already drained from `rbuf`).
async fn read_body(
    w: &Worker,
    conn: &mut UpstreamConn,
    head: &UpstreamHead,
    target: &UpstreamTarget,
) -> Result<Body, ApiError> {
    let max = w.limits.upstream_body_bytes_max;
    let wait = w.limits.upstream_read_timeout;
    match head.framing {
        UpstreamFraming::None => Ok(Body::InConn(0)),
        UpstreamFraming::Length(n) => {
            if n > max as u64 {
                return Err(io_error(
                    UpstreamIoError::TooLarge,
                    target,
                    "reading the body",
                ));
            }
            let n = n as usize;
            while conn.rbuf.len() < n {
                read_more_of_body(conn, n, wait, target).await?;
            }
            Ok(Body::InConn(n))
        }
        UpstreamFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut body = Vec::new();
            loop {
                let n = decoder
                    .decode(&conn.rbuf, &mut body, max)
                    .map_err(|e| match e {
                        ChunkError::TooLarge => {
                            io_error(UpstreamIoError::TooLarge, target, "reading the body")
                        }
                        _ => ApiError::bad_gateway(
                            "upstream_bad_response",
                            "the upstream sent invalid chunked framing",
                        ),
                    })?;
                conn.rbuf.drain(..n);
                if decoder.is_done() {
                    return Ok(Body::Owned(body));
                }
                read_more_of_body(conn, max, wait, target).await?;
            }
        }
        UpstreamFraming::Close => loop {
            match conn.read_more(max, wait).await {
                Ok(ReadOutcome::Data(_)) => {}
                Ok(ReadOutcome::Eof) => return Ok(Body::Owned(std::mem::take(&mut conn.rbuf))),
                Err(e) => return Err(io_error(e, target, "reading the body")),
            }
        },
    }
}

/// One attempt's provider and how to speak to it.
pub struct Call<'a> {
    pub provider: &'a Provider,
    pub outbound: Outbound<'a>,
    pub translation: Translation,
    /// The model a translated answer names.
    pub model: &'a str,
    /// The client asked for a stream (a translated one may not come as
    /// `text/event-stream`: Bedrock's is AWS's binary event stream).
    pub stream: bool,
    /// Another target is left to try: a 429 or 5xx is not relayed but
    /// returned as [`Attempt::Failed`], and so is a failure to reach the
    /// provider.
    pub may_fail_over: bool,
    /// Another of the provider's API keys is left to try: a 401, 403 or 429
    /// is returned as [`Attempt::Failed`].
    pub may_rotate_key: bool,
}

/// How one attempt ended.
pub enum Attempt {
    /// The client was answered (`Ok`: whether the connection may serve
    /// another request), or is to be answered with this error.
    Done(Result<bool, ApiError>),
    /// Nothing was written to the client; another target may be tried.
    Failed {
        error: ApiError,
        /// The provider's status, when it answered.
        status: Option<u16>,
        /// A 401, 403 or 429: the provider's next API key may do better.
        key_refused: bool,
        /// What the failed attempt was charged (under its own request id),
        /// when the provider reported usage for it.
        billed: Option<(RequestId, super::settle::Charged)>,
    },
}

/// Whether a provider's status is worth another target: rate limited, or
/// a server error.
fn fails_over(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Forwards one request and answers the client, or, when the attempt may
/// fail over, returns what went wrong without writing anything.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    w: &Worker,
    call: &Call<'_>,
    endpoint: Endpoint,
    req: &RequestView<'_>,
    out: &mut ClientOut<'_>,
    rid: &RequestId,
    keep: bool,
    ready_at: Instant,
    plan: &mut MeterPlan<'_>,
) -> Attempt {
    let Some(target) = call.provider.upstream.as_ref() else {
        return Attempt::Done(Err(ApiError::internal("a provider without an upstream")));
    };
    let mut request = Vec::new();
    build_request(&mut request, target, &call.outbound, req, plan.body, rid);
    let tls = call.provider.tls.as_ref().map_or(&w.tls, |t| &t.0);
    let Exchanged {
        mut conn,
        head,
        sent_at,
        connecting,
        head_at,
    } = match exchange(w, target, tls, request).await {
        Ok(x) => x,
        Err(e) if call.may_fail_over || call.may_rotate_key => {
            return Attempt::Failed {
                error: e,
                status: None,
                key_refused: false,
                billed: None,
            }
        }
        Err(e) => return Attempt::Done(Err(e)),
    };
    // Overhead on the way in: request read -> upstream write, minus connecting.
    let inbound = sent_at
        .saturating_duration_since(ready_at)
        .saturating_sub(connecting);
    conn.rbuf.drain(..head.head_len);
    let key_refused = matches!(head.status, 401 | 403 | 429);
    let failing =
        (call.may_fail_over && fails_over(head.status)) || (call.may_rotate_key && key_refused);
    if failing {
        return fail_over(w, conn, &head, target, call, endpoint, plan, key_refused).await;
    }
    let http10 = req.head.version_minor == 0;
    let translated_stream = call.stream && call.translation != Translation::None;
    if (head.event_stream || translated_stream) && (200..300).contains(&head.status) {
        let timing = super::stream::Timing { inbound, head_at };
        let translator = call
            .translation
            .stream(call.model, super::unix_now() as i64);
        return Attempt::Done(Ok(super::stream::relay(
            w, out, conn, &head, target, rid, keep, http10, timing, plan, translator,
        )
        .await));
    }
    let result = answer_whole(
        w, &mut conn, &head, target, call, out, rid, keep, inbound, plan,
    )
    .await;
    let reusable = result.is_ok() && head.keep_alive;
    if reusable {
        w.pool.borrow_mut().checkin(conn);
    }
    w.stats.pool_idle.set(w.pool.borrow().idle_count() as i64);
    Attempt::Done(match result {
        // Charged (durably, in the ring) before the client sees the response.
        Ok(()) => Ok(out.flush().await.is_ok() && keep),
        Err(e) => Err(e),
    })
}

/// A response to fail over from: its body is read (bounded) for usage the
/// provider may have reported, which is charged under a request id of the
/// attempt's own, and the connection pooled when it can be.
#[allow(clippy::too_many_arguments)]
async fn fail_over(
    w: &Worker,
    mut conn: UpstreamConn,
    head: &UpstreamHead,
    target: &UpstreamTarget,
    call: &Call<'_>,
    endpoint: Endpoint,
    plan: &mut MeterPlan<'_>,
    key_refused: bool,
) -> Attempt {
    let body = read_body(w, &mut conn, head, target).await;
    let protocol = call.translation.upstream_protocol(endpoint.protocol());
    let usage = match (&body, protocol) {
        (Ok(b), Some(p)) => crate::tokens::usage_from_body(p, b.bytes(&conn)),
        _ => None,
    };
    let message = body
        .as_ref()
        .ok()
        .map(|b| {
            String::from_utf8_lossy(&b.bytes(&conn)[..b.bytes(&conn).len().min(256)]).into_owned()
        })
        .unwrap_or_default();
    if let Ok(Body::InConn(n)) = body {
        conn.rbuf.drain(..n);
        if head.keep_alive {
            w.pool.borrow_mut().checkin(conn);
        }
    }
    let mut billed = None;
    if let Some(u) = usage {
        let id = w.ids.next();
        w.stats.tokens.record(&u, false, plan.price);
        charge(w, plan, &id, Some(u), false).await;
        billed = plan.charged.take().map(|c| (id, c));
    }
    let mut error = ApiError::bad_gateway(
        "upstream_error",
        format!(
            "the provider {} answered {}: {message}",
            call.provider.name, head.status
        ),
    );
    error.status = if head.status == 429 { 429 } else { 502 };
    Attempt::Failed {
        error,
        status: Some(head.status),
        key_refused,
        billed,
    }
}

/// A whole (non-streamed) answer: read, charged, translated when the
/// provider needs it, and written to the client.
#[allow(clippy::too_many_arguments)]
async fn answer_whole(
    w: &Worker,
    conn: &mut UpstreamConn,
    head: &UpstreamHead,
    target: &UpstreamTarget,
    call: &Call<'_>,
    out: &mut ClientOut<'_>,
    rid: &RequestId,
    keep: bool,
    inbound: Duration,
    plan: &mut MeterPlan<'_>,
) -> Result<(), ApiError> {
    let ok = (200..300).contains(&head.status);
    let body = match read_body(w, conn, head, target).await {
        Ok(body) => body,
        Err(e) => {
            // A success cut mid-body: a non-streamed body is sent once the
            // whole answer is generated, so the provider bills it. Charge the
            // bound, marked estimated, rather than nothing.
            if ok {
                w.stats.tokens.usage_missing.inc();
                charge(w, plan, rid, None, true).await;
            }
            return Err(e);
        }
    };
    let body_at = Instant::now();
    // A translated answer: the client's shape and the provider's usage.
    let mut translated = None;
    let usage = if ok {
        match call
            .translation
            .response(body.bytes(conn), call.model, super::unix_now() as i64)
        {
            None => crate::tokens::usage_from_body(plan.protocol, body.bytes(conn)),
            Some(Ok((b, u))) => {
                translated = Some(b);
                u
            }
            Some(Err(e)) => {
                // The provider answered a success we cannot read: it bills
                // it, so the bound is charged, marked estimated.
                w.stats.tokens.usage_missing.inc();
                charge(w, plan, rid, None, true).await;
                return Err(ApiError::bad_gateway(
                    "upstream_bad_response",
                    format!(
                        "the provider {}'s answer could not be translated: {e}",
                        call.provider.name
                    ),
                ));
            }
        }
    } else {
        let u = call
            .translation
            .upstream_protocol(plan.protocol)
            .and_then(|p| crate::tokens::usage_from_body(p, body.bytes(conn)));
        translated = call.translation.error(head.status, body.bytes(conn));
        u
    };
    if let Some(usage) = &usage {
        w.stats.tokens.record(usage, false, plan.price);
        plan.permit
            .record_tokens(crate::ratelimit::now_ms(), usage.total_tokens());
    }
    // A success is charged (its usage, or the bound when it has none); a
    // failure only when the provider reported usage for it.
    let settled = if ok {
        if usage.is_none() {
            w.stats.tokens.usage_missing.inc();
        }
        charge(w, plan, rid, usage, false).await
    } else if usage.is_some() {
        charge(w, plan, rid, usage, false).await
    } else {
        None
    };
    // Charged (durably, in the ring) before the client sees the response.
    w.stats.response(head.status);
    response::begin(out.wbuf, head.status);
    out.wbuf.extend_from_slice(&head.forward);
    response::header(out.wbuf, "x-request-id", rid.as_str().as_bytes());
    super::cost_headers(out.wbuf, settled, plan.lowered_cap);
    super::route_headers(out.wbuf, plan);
    let bytes = translated.as_deref().unwrap_or_else(|| body.bytes(conn));
    response::finish(out.wbuf, ResponseFraming::Length(bytes.len()), keep);
    out.wbuf.extend_from_slice(bytes);
    if let (Some(key), true) = (plan.cache, ok && usage.is_some()) {
        // A success the provider reported usage for: the same question in
        // the same tenant is answered from memory next time.
        w.cache_store(key, bytes.to_vec(), false, plan);
    }
    if let Body::InConn(n) = body {
        // Copied out; the buffer keeps its allocation for the next response
        // (the pool shrinks one grown for a large body).
        conn.rbuf.drain(..n);
    }
    // Overhead on the way out: response complete -> client write.
    w.record_overhead(inbound + body_at.elapsed());
    plan.status = head.status;
    plan.first_byte_at = Some(Instant::now());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{parse_head as parse_request, RequestHead};

    #[test]
    fn upstream_requests_carry_the_provider_key_not_the_clients() {
        let raw = b"POST /v1/chat/completions?api-version=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-virtual\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\nX-Mock-Delay-Ms: 5\r\nX-Bursar-Tags: a=b\r\nContent-Length: 2\r\n\r\n{}";
        let mut head = RequestHead::default();
        assert!(parse_request(raw, 4096, 4096, &mut head).unwrap());
        let req = RequestView {
            head: &head,
            bytes: &raw[..head.head_len],
            body: b"{}",
        };
        let target = crate::config::parse_base_url("t", "https://api.example.com/v1").unwrap();
        let rid = super::super::RequestIds::new(1, 0).next();
        let mut out = Vec::new();
        build_request(
            &mut out,
            &target,
            &Outbound {
                path: UpstreamPath::Endpoint(Endpoint::ChatCompletions),
                auth: Some(("authorization", "Bearer sk-upstream")),
                default_header: None,
                signed: &[],
            },
            &req,
            req.body,
            &rid,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "POST /v1/chat/completions?api-version=1 HTTP/1.1\r\nhost: api.example.com\r\n"
            ),
            "{text}"
        );
        assert!(text.contains("authorization: Bearer sk-upstream\r\n"));
        assert!(!text.contains("sk-virtual"));
        assert!(text.contains("X-Mock-Delay-Ms: 5\r\n"));
        assert!(!text.to_ascii_lowercase().contains("x-bursar-tags"));
        assert!(!text.contains("gzip"));
        assert!(text.ends_with("content-length: 2\r\n\r\n{}"));
    }
}
