//! Every bound in bursar, named in one place.
//!
//! "Put a limit on everything": each queue, buffer, header and body has an
//! upper bound. Compile-time bounds are constants here; bounds an operator may
//! tune live in [`Limits`], whose defaults are the constants below and whose
//! values are checked against the hard ceilings when the config is loaded.
//! Units and qualifiers go last in names (`body_bytes_max`).

use std::time::Duration;

/// Most request headers we parse; one more is a 431. Fixed at compile time
/// because the header array lives on the stack.
pub const HEADER_COUNT_MAX: usize = 64;
/// Most response headers we accept from an upstream.
pub const UPSTREAM_HEADER_COUNT_MAX: usize = 96;

/// Default bound on a request's head (request line + headers).
pub const HEADER_BYTES_MAX_DEFAULT: usize = 16 * 1024;
/// Hard ceiling on `header_bytes_max`.
pub const HEADER_BYTES_MAX_CEILING: usize = 1024 * 1024;
/// Default bound on a request body (OpenAI accepts images inline, so be generous).
pub const BODY_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;
/// Hard ceiling on `body_bytes_max`.
pub const BODY_BYTES_MAX_CEILING: usize = 256 * 1024 * 1024;
/// Default bound on a non-streamed upstream response body.
pub const UPSTREAM_BODY_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;
/// Default bound on an upstream response head.
pub const UPSTREAM_HEADER_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// Longest chunk-size line (hex digits plus extensions) we accept in a chunked body.
pub const CHUNK_LINE_BYTES_MAX: usize = 1024;
/// Most trailer bytes we skip after the last chunk.
pub const CHUNK_TRAILER_BYTES_MAX: usize = 8 * 1024;

/// Initial size of a connection's read buffer; it grows only as far as a
/// request needs, within the bounds above.
pub const READ_BUFFER_BYTES_INITIAL: usize = 8 * 1024;
/// Most bytes of read buffer a connection keeps between requests: a larger
/// request's grown buffer is shrunk back when it is done (and a chunked
/// body's is freed), so a long-lived keep-alive connection does not hold
/// the largest request it ever sent. Below it nothing is reallocated.
pub const CONNECTION_BUFFER_KEPT_BYTES_MAX: usize = 64 * 1024;
/// Client connections open on a worker from which a connection waiting for
/// its next request waits without a read buffer (a readiness poll, then the
/// read): an idle connection then costs no buffer at all, for one more
/// operation per request. Below it the read is posted at once with the
/// buffer (8 KiB per waiting connection).
pub const IDLE_WAIT_UNBUFFERED_CONNECTIONS_MIN: usize = 1024;
/// Spare write buffers a worker keeps for its connections' next responses
/// (a connection that waits for a request holds none; `http::server`).
pub const WRITE_BUFFERS_POOLED_MAX: usize = 256;
/// Size of one read from an upstream while relaying a stream.
pub const STREAM_READ_BYTES: usize = 16 * 1024;

/// Idle upstream connections kept per upstream address per worker.
pub const POOL_IDLE_PER_UPSTREAM_MAX_DEFAULT: usize = 256;
/// Concurrent client connections one worker serves. At the bound the worker
/// stops accepting (accept backpressure): new connections wait in the
/// kernel's listen backlog, and the worker accepts again when one of its
/// connections closes. Nothing is accepted only to be closed.
pub const CONNECTIONS_PER_WORKER_MAX_DEFAULT: usize = 16 * 1024;
/// Each worker's listen backlog (`listen(2)`): connections the kernel
/// completes and queues for a worker that is not accepting (at
/// `connections_per_worker_max`, or busy). Past it the kernel drops new
/// SYNs and clients retry. Linux caps it at `net.core.somaxconn`
/// (4096 by default since 5.4).
pub const LISTEN_BACKLOG: i32 = 4096;
/// Most workers (threads) a gateway may run.
pub const WORKERS_MAX: usize = 256;
/// Most providers, models per provider, and virtual keys in one catalog.
pub const PROVIDERS_MAX: usize = 1024;
pub const MODELS_PER_PROVIDER_MAX: usize = 4096;
pub const VIRTUAL_KEYS_MAX: usize = 1_000_000;
/// Longest model name we route.
pub const MODEL_NAME_BYTES_MAX: usize = 256;
/// API keys one provider rotates through.
pub const PROVIDER_API_KEYS_MAX: usize = 16;
/// `[[model_groups]]` in one config.
pub const MODEL_GROUPS_MAX: usize = 1024;
/// Targets in one model group.
pub const MODEL_GROUP_TARGETS_MAX: usize = 16;
/// Upstream attempts one request may make (the first and its retries).
pub const UPSTREAM_ATTEMPTS_MAX: usize = 8;

/// Defaults for the timeouts.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
pub const UPSTREAM_CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
pub const UPSTREAM_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);
pub const POOL_IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
pub const DNS_REFRESH_DEFAULT: Duration = Duration::from_secs(30);
pub const SHUTDOWN_DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(15);
/// How soon after a request was written on a pooled upstream connection an
/// EOF or a reset, with no response byte, still shows the connection was
/// stale (the upstream closed it while idle, racing our write) rather than
/// an upstream that received the request and died working on it. Only the
/// stale case is sent again; otherwise the provider may bill a request the
/// gateway would send twice, so it is a 502, charged nothing. A keep-alive
/// close racing the write shows up within about one round trip: its FIN
/// already in flight, or the reset the upstream's kernel answers our bytes
/// with. 250 ms is a round trip to the far side of the world (150–250 ms)
/// plus scheduling. An upstream that closes later than that after the write
/// may have received the request and worked on it, so it is not stale. The
/// price of the bound: an upstream that took a request and died within it
/// without a byte gets the request again (a crash, not a billed answer).
/// Most stale connections never reach this test: the pool looks at one
/// idle a while before lending it (`upstream::POOL_CHECK_IDLE_MIN`).
pub const UPSTREAM_STALE_RETRY_WINDOW: Duration = Duration::from_millis(250);
/// How often a worker publishes its overhead histogram and evicts idle
/// upstream connections.
pub const OVERHEAD_PUBLISH_INTERVAL: Duration = Duration::from_millis(500);
/// A worker whose housekeeping timer fires this much later than due ran
/// its event loop that long without yielding: counted as a stall
/// (`bursar_worker_stalls_total`).
pub const WORKER_STALL: Duration = Duration::from_millis(100);
/// The overhead histogram's range: 1 ns to this, 3 significant digits.
pub const OVERHEAD_NS_MAX: u64 = 60_000_000_000;

/// Tokenizer counts (streams without provider usage) waiting for the
/// tokenizer thread; past this a worker counts inline.
pub const COUNT_JOBS_QUEUE_MAX: usize = 1024;

/// `GET /v1/bursar/usage` (`proxy::usage`): most of the key's last requests
/// one answer lists (`?limit=`; more is a 400 `invalid_value`).
pub const USAGE_REQUESTS_MAX: usize = 50;
/// ... and how many it lists without `?limit=`.
pub const USAGE_REQUESTS_DEFAULT: usize = 20;
const _: () = assert!(USAGE_REQUESTS_DEFAULT >= 1 && USAGE_REQUESTS_DEFAULT <= USAGE_REQUESTS_MAX);
/// Longest a usage answer waits for the ledger thread's views of the key,
/// its team and its customer; past it the answer is a 503.
pub const USAGE_LEDGER_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a usage answer waits for the key's last requests from the
/// request log's query thread; past it they are left out
/// (`"requests_available": false`) and the rest is answered.
pub const USAGE_LOG_TIMEOUT: Duration = Duration::from_secs(2);
/// Most usage look-ups (all workers together) queued or running on the
/// request log's query thread at once: half its queue
/// (`reqlog::LOG_QUERIES_QUEUED_MAX`, checked in `proxy::usage`), so key
/// holders can never fill it and the admin API keeps the other half. Past
/// it a usage answer leaves its requests out, as when the queue is full.
pub const USAGE_LOG_QUERIES_MAX: usize = 8;

/// Admin (control-plane) request bounds: small, it is a localhost API.
/// Shortest admin token accepted (the interface contract's example,
/// "admin-secret", is 12).
pub const ADMIN_TOKEN_BYTES_MIN: usize = 12;
pub const ADMIN_BODY_BYTES_MAX: usize = 1024 * 1024;
pub const ADMIN_CONNECTIONS_MAX: usize = 256;

/// The tunable bounds of one gateway, validated at config load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub header_bytes_max: usize,
    pub body_bytes_max: usize,
    pub upstream_header_bytes_max: usize,
    pub upstream_body_bytes_max: usize,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_read_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_idle_per_upstream_max: usize,
    pub connections_per_worker_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_bytes_max: HEADER_BYTES_MAX_DEFAULT,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            upstream_header_bytes_max: UPSTREAM_HEADER_BYTES_MAX_DEFAULT,
            upstream_body_bytes_max: UPSTREAM_BODY_BYTES_MAX_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            upstream_connect_timeout: UPSTREAM_CONNECT_TIMEOUT_DEFAULT,
            upstream_read_timeout: UPSTREAM_READ_TIMEOUT_DEFAULT,
            pool_idle_timeout: POOL_IDLE_TIMEOUT_DEFAULT,
            pool_idle_per_upstream_max: POOL_IDLE_PER_UPSTREAM_MAX_DEFAULT,
            connections_per_worker_max: CONNECTIONS_PER_WORKER_MAX_DEFAULT,
        }
    }
}

const _: () = {
    assert!(HEADER_BYTES_MAX_DEFAULT <= HEADER_BYTES_MAX_CEILING);
    assert!(BODY_BYTES_MAX_DEFAULT <= BODY_BYTES_MAX_CEILING);
    assert!(READ_BUFFER_BYTES_INITIAL <= HEADER_BYTES_MAX_DEFAULT);
    assert!(CHUNK_LINE_BYTES_MAX < READ_BUFFER_BYTES_INITIAL);
    assert!(HEADER_COUNT_MAX >= 16);
};
