//! The mock OpenAI-compatible upstream: `bursar-load mock`.
//!
//! A deterministic stand-in for an OpenAI-style provider, used by the
//! gateway's tests, demos and load tests:
//!
//! * `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//!   `/v1/responses` (plain and SSE-streamed), `GET /v1/models[/{id}]`,
//!   `GET /health`, and `GET /v1/_mock/last-request` (what the mock last saw).
//! * The native wire formats of three more providers: Anthropic Messages
//!   (`POST /v1/messages`), Gemini (`POST /v1beta/models/{m}:generateContent`
//!   and `:streamGenerateContent`) and Bedrock Runtime Converse
//!   (`POST /model/{id}/converse` and `/converse-stream`, with SigV4 checks
//!   and the binary `application/vnd.amazon.eventstream`).
//! * Token counts are word counts, so every usage number can be computed by
//!   hand; generated text is drawn from a fixed vocabulary seeded by the
//!   request's last message, so the same request gives the same bytes.
//! * `x-mock-*` request headers inject failures: error statuses, delays,
//!   slow streams, reset or cut connections, missing usage, byte-split
//!   streams, cached/reasoning token details.
//!
//! The full contract is in `loadtest/README.md`.

mod anthropic;
mod bedrock;
mod body;
mod chat;
mod common;
mod completions;
mod embeddings;
mod errors;
mod eventstream;
mod gemini;
mod misbehave;
mod models;
mod record;
mod responses;
mod router;
mod server;
mod sigv4;
mod tokens;

use std::time::Duration;

use misbehave::MAX_DELAY_MS;

/// The largest request body accepted (larger ones get a 413).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The most words one completion may generate (larger limits get a 400).
pub const MAX_COMPLETION_WORDS: usize = 100_000;
/// The number of words generated when the request sets no limit.
pub const DEFAULT_COMPLETION_WORDS: usize = 16;
/// The `system_fingerprint` of chat and completions objects.
pub const SYSTEM_FINGERPRINT: &str = "fp_bursar_mock";
/// The models `/v1/models` lists when `--models` is not given.
const DEFAULT_MODELS: &str =
    "gpt-4o-mini,gpt-4o,text-embedding-3-small,o3-mini,claude-3-5-sonnet-latest";

/// `bursar-load mock`: serve a deterministic OpenAI-compatible mock upstream.
#[derive(clap::Args, Debug, Clone)]
pub struct MockArgs {
    /// Address to listen on (port 0 picks a free port; the line printed on
    /// start names the real one).
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: String,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,
    /// Pause between stream events, in milliseconds.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MAX_DELAY_MS))]
    pub stream_interval_ms: u64,
    /// Fixed delay before every response's first byte, in milliseconds.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MAX_DELAY_MS))]
    pub delay_ms: u64,
    /// Model ids listed by /v1/models (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_MODELS)]
    pub models: Vec<String>,
    /// Do not log one line per request to stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Verify the SigV4 signature of Bedrock requests with this secret
    /// access key (without it, only the Authorization header's form is
    /// checked).
    #[arg(long)]
    pub aws_secret_access_key: Option<String>,
}

/// Runs the mock until SIGTERM or SIGINT.
pub fn main(args: MockArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.workers))
        .enable_all()
        .build()?;
    let config = server::Config {
        listen: args.listen,
        delay: Duration::from_millis(args.delay_ms),
        stream_interval: Duration::from_millis(args.stream_interval_ms),
        models: args
            .models
            .into_iter()
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect(),
        quiet: args.quiet,
        aws_secret: args.aws_secret_access_key,
    };
    let result = runtime.block_on(server::run(config));
    // Open connections are dropped, not drained: the mock holds no state
    // worth finishing.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}
