//! `bursar-load flood`: many idle keep-alive connections and slowloris
//! connections held open against one loopback port while something else
//! (`bursar-load run`) measures normal traffic (`scripts/bench/floods`).
//!
//! * Idle: each connection sends one small chat completion, reads the whole
//!   response (`content-length` or chunked), then sits idle; the server ending
//!   it before the stop is counted.
//! * Slowloris: each trickles an endless request head (`POST ...`, then
//!   `x-slow: aaaa...` lines) one byte per `--interval`. When the server
//!   answers and closes, or resets, the time from the first byte to the cut
//!   and whether the answer began `HTTP/1.1 408` are recorded, and a new one
//!   is opened at once, so `--slow` stay open.
//!
//! It must cost little: the script pins it, at nice 19, to the core of the
//! load generator, whose pacer it must not delay. So: one thread (a
//! current-thread runtime), one task per connection, the request bytes built
//! once, no allocation per byte sent or read. At the stop (SIGTERM, SIGINT or
//! `--duration`) it prints one JSON line of counts on stdout, the fields the
//! former `scripts/bench/floods.py` printed, and exits without waiting for
//! its connections (the runtime's end closes them).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};

/// Most connections of each kind (`--idle`, `--slow`); one loopback
/// destination runs out of ephemeral ports well before.
pub const MAX_CONNECTIONS: usize = 100_000;
/// Most `--open-concurrency`.
pub const MAX_OPEN_CONCURRENCY: usize = 10_000;
/// Shortest and longest `--interval`.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3_600);
/// Longest `--duration` (a week).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3_600);
/// Longest `--key`.
pub const MAX_KEY_BYTES: usize = 1_024;
/// An idle connection's connect, request and whole response take at most this
/// long, or it counts as failed.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest line of a response head, chunk-size line or trailer.
pub const MAX_LINE_BYTES: u64 = 16 * 1_024;
/// Most header (or trailer) lines of one response.
pub const MAX_HEAD_LINES: usize = 256;
/// Longest response body an idle connection reads (and discards).
pub const MAX_BODY_BYTES: u64 = 64 * 1_024 * 1_024;
/// After a write to a slowloris fails, how long the server's answer (its 408)
/// is still read.
pub const CUT_READ_GRACE: Duration = Duration::from_secs(1);
/// Most cut times kept for the median (the min and max stay exact beyond).
pub const MAX_CUT_SAMPLES: usize = 1_000_000;
/// How often the setup checks whether every connection is open.
const SETUP_POLL: Duration = Duration::from_millis(50);
/// Read buffer of an idle connection while it reads its response (freed after).
const RESPONSE_BUFFER_BYTES: usize = 8 * 1_024;
/// What a slowloris reads its answer into (only the first bytes are kept).
const SLOW_READ_BYTES: usize = 256;

/// The idle connections' request body (the same bytes as floods.py's).
const CHAT_BODY: &str = r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hello there"}]}"#;
/// A slowloris's request head starts with this ...
const SLOW_HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n";
/// ... and goes on with this line, repeated for ever.
const SLOW_PAD: &[u8] = concat!(
    "x-slow: ",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "\r\n"
)
.as_bytes();
/// The answer a slowloris is cut with, when the server sends one.
const ANSWER_408: &[u8] = b"HTTP/1.1 408";

/// `bursar-load flood`: hold idle keep-alive and slowloris connections open.
#[derive(clap::Args, Debug)]
pub struct FloodArgs {
    /// The port on 127.0.0.1 to flood (loopback only).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// The virtual key of the idle connections' request (`Authorization: Bearer K`).
    #[arg(long, default_value = "sk-bench")]
    pub key: String,
    /// Idle keep-alive connections: each makes one request, then sits idle.
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
    /// Slowloris connections: each sends an endless request head, one byte per --interval.
    #[arg(long, default_value_t = 2_000)]
    pub slow: usize,
    /// Seconds between two bytes of a slowloris (a number, e.g. 0.5).
    #[arg(long, value_name = "SECONDS", default_value = "1.0", value_parser = parse_interval)]
    pub interval: Duration,
    /// Most idle connections being opened (connect, request, response) at once.
    #[arg(long, default_value_t = 128)]
    pub open_concurrency: usize,
    /// Write this file (as FILE.tmp, then renamed) once every connection is open
    /// and one --interval has passed.
    #[arg(long, value_name = "FILE")]
    pub ready: Option<PathBuf>,
    /// Stop this many seconds after every connection is open; 0: at SIGTERM or SIGINT.
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = parse_duration)]
    pub duration: Duration,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 || v > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "{s:?} seconds is out of range (0 to {})",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_seconds(s)?;
    if d < MIN_INTERVAL || d > MAX_INTERVAL {
        return Err(format!(
            "--interval {s:?} must be between {} and {} seconds",
            MIN_INTERVAL.as_secs_f64(),
            MAX_INTERVAL.as_secs()
        ));
    }
    Ok(d)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_seconds(s)
}

/// Builds the idle connections' request.
fn chat_request(key: &str) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n\
         authorization: Bearer {key}\r\n\
         content-type: application/json\r\n\
         content-length: {}\r\n\r\n{CHAT_BODY}",
        CHAT_BODY.len()
    )
    .into_bytes()
}

/// Byte `i` of a slowloris's endless request head.
fn slow_byte(i: u64) -> &'static [u8] {
    let head = SLOW_HEAD.len() as u64;
    if i < head {
        let k = i as usize;
        &SLOW_HEAD[k..k + 1]
    } else {
        let k = ((i - head) % SLOW_PAD.len() as u64) as usize;
        &SLOW_PAD[k..k + 1]
    }
}

pub fn main(args: FloodArgs) -> anyhow::Result<()> {
    if args.idle > MAX_CONNECTIONS || args.slow > MAX_CONNECTIONS {
        bail!("--idle and --slow are at most {MAX_CONNECTIONS} each");
    }
    if args.open_concurrency == 0 || args.open_concurrency > MAX_OPEN_CONCURRENCY {
        bail!("--open-concurrency must be between 1 and {MAX_OPEN_CONCURRENCY}");
    }
    if args.key.is_empty()
        || args.key.len() > MAX_KEY_BYTES
        || !args.key.bytes().all(|b| b.is_ascii_graphic())
    {
        bail!("--key must be 1 to {MAX_KEY_BYTES} visible ASCII characters");
    }
    if let Some(dir) = args
        .ready
        .as_deref()
        .and_then(|p| p.parent())
        .filter(|d| !d.as_os_str().is_empty())
    {
        if !dir.is_dir() {
            bail!("--ready: {} is not a directory", dir.display());
        }
    }
    // Soft open-files limit up to the hard one: every connection is a descriptor.
    crate::load::raise_nofile(u64::MAX);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    let report = rt.block_on(flood(&args))?;
    let line = serde_json::to_string(&report).context("cannot encode the counts")?;
    {
        use std::io::Write;
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .context("cannot write the counts")?;
    }
    // Dropping the runtime drops every connection's task, closing its socket.
    drop(rt);
    Ok(())
}

/// What every connection's task shares.
struct Ctx {
    addr: SocketAddr,
    request: Vec<u8>,
    interval: Duration,
    /// Bounds the idle connections being opened at once.
    gate: Semaphore,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    idle_opened: AtomicU64,
    idle_failed: AtomicU64,
    idle_bad_status: AtomicU64,
    idle_closed_by_server: AtomicU64,
    slow_opened: AtomicU64,
    slow_failed: AtomicU64,
    slow_bytes: AtomicU64,
    slow_cut: AtomicU64,
    slow_cut_with_408: AtomicU64,
    cut_after: Mutex<CutTimes>,
}

/// Seconds from a slowloris's first byte to its cut.
#[derive(Default)]
struct CutTimes {
    /// The first MAX_CUT_SAMPLES, for the median.
    samples: Vec<f64>,
    min: Option<f64>,
    max: Option<f64>,
}

impl CutTimes {
    fn record(&mut self, s: f64) {
        if self.samples.len() < MAX_CUT_SAMPLES {
            self.samples.push(s);
        }
        self.min = Some(self.min.map_or(s, |m| m.min(s)));
        self.max = Some(self.max.map_or(s, |m| m.max(s)));
    }

    fn median(&self) -> Option<f64> {
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(v[n / 2]),
            _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }
}

/// The JSON line printed at the stop (field for field floods.py's).
#[derive(Serialize, Debug)]
struct Report {
    idle_opened: u64,
    idle_failed: u64,
    idle_bad_status: u64,
    idle_closed_by_server: u64,
    idle_open_at_stop: u64,
    slow_opened: u64,
    slow_failed: u64,
    slow_bytes_sent: u64,
    slow_cut: u64,
    slow_cut_with_408: u64,
    slow_cut_after_s_min: Option<f64>,
    slow_cut_after_s_median: Option<f64>,
    slow_cut_after_s_max: Option<f64>,
}

fn round2(s: f64) -> f64 {
    (s * 100.0).round() / 100.0
}

impl Stats {
    fn report(&self) -> Report {
        let cut = self.cut_after.lock().unwrap_or_else(|e| e.into_inner());
        let opened = self.idle_opened.load(Relaxed);
        let closed = self.idle_closed_by_server.load(Relaxed);
        Report {
            idle_opened: opened,
            idle_failed: self.idle_failed.load(Relaxed),
            idle_bad_status: self.idle_bad_status.load(Relaxed),
            idle_closed_by_server: closed,
            idle_open_at_stop: opened.saturating_sub(closed),
            slow_opened: self.slow_opened.load(Relaxed),
            slow_failed: self.slow_failed.load(Relaxed),
            slow_bytes_sent: self.slow_bytes.load(Relaxed),
            slow_cut: self.slow_cut.load(Relaxed),
            slow_cut_with_408: self.slow_cut_with_408.load(Relaxed),
            slow_cut_after_s_min: cut.min.map(round2),
            slow_cut_after_s_median: cut.median().map(round2),
            slow_cut_after_s_max: cut.max.map(round2),
        }
    }
}

/// Opens every connection, writes `--ready`, holds them until the stop and
/// returns the counts as they were at the stop.
async fn flood(args: &FloodArgs) -> anyhow::Result<Report> {
    let (stop_tx, mut stop) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = stop_tx.send(true);
    });

    let ctx = Arc::new(Ctx {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)),
        request: chat_request(&args.key),
        interval: args.interval,
        gate: Semaphore::new(args.open_concurrency),
        stats: Stats::default(),
    });
    let s = &ctx.stats;
    let t0 = Instant::now();
    // Idle connections first (each makes a request), then the slowloris ones,
    // their starts spread over one interval.
    for _ in 0..args.idle {
        tokio::spawn(idle_conn(ctx.clone()));
    }
    let idle = args.idle as u64;
    if !setup_wait(&mut stop, || {
        s.idle_opened.load(Relaxed) + s.idle_failed.load(Relaxed) >= idle
    })
    .await
    {
        eprintln!("floods: stopped while opening the idle connections");
        return Ok(s.report());
    }
    let idle_ready = t0.elapsed();
    for n in 0..args.slow {
        let first = args.interval.mul_f64(n as f64 / args.slow as f64);
        tokio::spawn(slow_conn(ctx.clone(), first));
    }
    let slow = args.slow as u64;
    let opened = setup_wait(&mut stop, || {
        s.slow_opened.load(Relaxed) + s.slow_failed.load(Relaxed) >= slow
    })
    .await;
    if !opened || stopped_within(&mut stop, args.interval).await {
        eprintln!("floods: stopped while opening the slowloris connections");
        return Ok(s.report());
    }
    if let Some(path) = &args.ready {
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let text = format!(
            "{} idle, {} slow\n",
            s.idle_opened.load(Relaxed),
            s.slow_opened.load(Relaxed)
        );
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    }
    eprintln!(
        "floods: {} idle in {:.1}s ({} failed), {} slowloris open",
        s.idle_opened.load(Relaxed),
        idle_ready.as_secs_f64(),
        s.idle_failed.load(Relaxed),
        s.slow_opened.load(Relaxed)
    );
    if args.duration.is_zero() {
        let _ = stop.wait_for(|&v| v).await;
    } else {
        stopped_within(&mut stop, args.duration).await;
    }
    Ok(s.report())
}

/// Waits until `done()` holds, checking every SETUP_POLL; false if the stop
/// came first.
async fn setup_wait(stop: &mut watch::Receiver<bool>, done: impl Fn() -> bool) -> bool {
    while !done() {
        if stopped_within(stop, SETUP_POLL).await {
            return false;
        }
    }
    true
}

/// Sleeps `d`; true if the stop came first.
async fn stopped_within(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|&v| v) => true,
    }
}

/// One idle connection: a request, its whole response, then nothing until the
/// server ends it (counted) or the process stops.
async fn idle_conn(ctx: Arc<Ctx>) {
    let s = &ctx.stats;
    let opened = {
        let Ok(_permit) = ctx.gate.acquire().await else {
            return;
        };
        tokio::time::timeout(RESPONSE_TIMEOUT, open_idle(&ctx)).await
    };
    let Ok(Ok((mut stream, status, extra))) = opened else {
        s.idle_failed.fetch_add(1, Relaxed);
        return;
    };
    if status != 200 {
        s.idle_bad_status.fetch_add(1, Relaxed);
    }
    s.idle_opened.fetch_add(1, Relaxed);
    // Sit idle. Whatever a read returns (end of file, an error, or bytes no
    // request asked for, including any read past the response) means the
    // server is done with this connection.
    if !extra {
        let mut byte = [0u8; 1];
        let _ = stream.read(&mut byte).await;
    }
    s.idle_closed_by_server.fetch_add(1, Relaxed);
}

/// Connects, sends the request and reads the whole response: the connection,
/// the status, and whether bytes past the response were already read.
async fn open_idle(ctx: &Ctx) -> io::Result<(TcpStream, u16, bool)> {
    let mut stream = TcpStream::connect(ctx.addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&ctx.request).await?;
    let mut reader = BufReader::with_capacity(RESPONSE_BUFFER_BYTES, stream);
    let status = read_response(&mut reader).await?;
    let extra = !reader.buffer().is_empty();
    Ok((reader.into_inner(), status, extra))
}

/// One slowloris slot: a connection trickling its head until the server cuts
/// it, then at once a new one, until the process stops.
async fn slow_conn(ctx: Arc<Ctx>, first: Duration) {
    let s = &ctx.stats;
    tokio::time::sleep(first).await;
    loop {
        let mut stream = match TcpStream::connect(ctx.addr).await {
            Ok(stream) => stream,
            Err(_) => {
                s.slow_failed.fetch_add(1, Relaxed);
                tokio::time::sleep(ctx.interval).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        s.slow_opened.fetch_add(1, Relaxed);
        let (after, answered_408) = trickle(&ctx, &mut stream).await;
        s.slow_cut.fetch_add(1, Relaxed);
        if answered_408 {
            s.slow_cut_with_408.fetch_add(1, Relaxed);
        }
        s.cut_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(after.as_secs_f64());
    }
}

/// Sends the endless head one byte per interval until the server closes or
/// resets the connection; returns how long after the first byte that was and
/// whether the server's answer began `HTTP/1.1 408`.
async fn trickle(ctx: &Ctx, stream: &mut TcpStream) -> (Duration, bool) {
    let started = Instant::now();
    let mut answer = Prefix::default();
    let mut buf = [0u8; SLOW_READ_BYTES];
    let mut i = 0u64;
    loop {
        if stream.write_all(slow_byte(i)).await.is_err() {
            let after = started.elapsed();
            // The answer may still wait in the receive queue.
            let _ = tokio::time::timeout(CUT_READ_GRACE, async {
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    answer.push(&buf[..n]);
                }
            })
            .await;
            return (after, answer.is_408());
        }
        ctx.stats.slow_bytes.fetch_add(1, Relaxed);
        i += 1;
        let tick = tokio::time::sleep(ctx.interval);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                () = &mut tick => break,
                r = stream.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return (started.elapsed(), answer.is_408()),
                    Ok(n) => answer.push(&buf[..n]),
                },
            }
        }
    }
}

/// The first bytes a slowloris received.
#[derive(Default)]
struct Prefix {
    bytes: [u8; ANSWER_408.len()],
    len: usize,
}

impl Prefix {
    fn push(&mut self, b: &[u8]) {
        let k = b.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + k].copy_from_slice(&b[..k]);
        self.len += k;
    }

    fn is_408(&self) -> bool {
        self.bytes[..self.len] == *ANSWER_408
    }
}

// ----- reading one HTTP/1.1 response -----

fn bad(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one whole response (its body, by `content-length` or chunked, is
/// discarded) and returns its status. A response with neither has no body
/// here (as floods.py read it).
async fn read_response<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<u16> {
    let mut line = Vec::with_capacity(256);
    read_line(r, &mut line).await?;
    let status = parse_status(&line)?;
    let mut length = None;
    let mut chunked = false;
    let mut ended = false;
    for _ in 0..MAX_HEAD_LINES {
        read_line(r, &mut line).await?;
        if line.is_empty() {
            ended = true;
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(bad("a header line without a colon"));
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            length = Some(parse_number(value, 10)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked |= value.windows(7).any(|w| w.eq_ignore_ascii_case(b"chunked"));
        }
    }
    if !ended {
        return Err(bad("too many header lines"));
    }
    if let Some(n) = length {
        if n > MAX_BODY_BYTES {
            return Err(bad("body too long"));
        }
        skip(r, n).await?;
    } else if chunked {
        let mut total = 0u64;
        loop {
            read_line(r, &mut line).await?;
            let size_end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
            let size = parse_number(line[..size_end].trim_ascii(), 16)?;
            if size == 0 {
                break;
            }
            total = total.saturating_add(size);
            if total > MAX_BODY_BYTES {
                return Err(bad("body too long"));
            }
            skip(r, size).await?;
            read_line(r, &mut line).await?;
            if !line.is_empty() {
                return Err(bad("a chunk longer than its size"));
            }
        }
        // Trailers, if any, up to the empty line.
        for _ in 0..MAX_HEAD_LINES {
            read_line(r, &mut line).await?;
            if line.is_empty() {
                return Ok(status);
            }
        }
        return Err(bad("too many trailer lines"));
    }
    Ok(status)
}

/// Reads one line into `line`, without its line end (CRLF or LF).
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    let n = (&mut *r)
        .take(MAX_LINE_BYTES)
        .read_until(b'\n', line)
        .await?;
    if line.last() != Some(&b'\n') {
        return Err(if n as u64 == MAX_LINE_BYTES {
            bad("line too long")
        } else {
            io::ErrorKind::UnexpectedEof.into()
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(())
}

/// Reads and drops `n` bytes.
async fn skip<R: AsyncBufRead + Unpin>(r: &mut R, mut n: u64) -> io::Result<()> {
    while n > 0 {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let k = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        r.consume(k);
        n -= k as u64;
    }
    Ok(())
}

fn parse_status(line: &[u8]) -> io::Result<u16> {
    if !line.starts_with(b"HTTP/1.") {
        return Err(bad("not an HTTP/1 status line"));
    }
    let code = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    match parse_number(code, 10)? {
        n @ 100..=999 if code.len() == 3 => Ok(n as u16),
        _ => Err(bad("bad status code")),
    }
}

fn parse_number(digits: &[u8], radix: u32) -> io::Result<u64> {
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|d| u64::from_str_radix(d, radix).ok())
        .ok_or_else(|| bad("bad number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> io::Result<(u16, usize)> {
        let mut r = bytes;
        let status = read_response(&mut r).await?;
        Ok((status, r.len()))
    }

    #[tokio::test]
    async fn reads_content_length_and_chunked_bodies() {
        let cl = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-type: x\r\n\r\nhelloNEXT";
        assert_eq!(read(cl).await.unwrap(), (200, 4));
        let chunked = b"HTTP/1.1 429 Too Many\r\ntransfer-encoding: Chunked\r\n\r\n\
                        5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        assert_eq!(read(chunked).await.unwrap(), (429, 4));
        let no_trailer =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n";
        assert_eq!(read(no_trailer).await.unwrap(), (200, 0));
        // content-length wins over chunked, as in floods.py.
        let both =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\nokNEXT";
        assert_eq!(read(both).await.unwrap(), (200, 4));
        // Neither: no body.
        let none = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\r\nNEXT";
        assert_eq!(read(none).await.unwrap(), (408, 4));
        // Bare LF line ends.
        assert_eq!(
            read(b"HTTP/1.1 204 No\ncontent-length: 0\n\n")
                .await
                .unwrap(),
            (204, 0)
        );
    }

    #[tokio::test]
    async fn refuses_short_or_malformed_responses() {
        for bytes in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhell",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 999999999999\r\n\r\n",
        ] {
            assert!(
                read(bytes).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut long = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        long.resize(long.len() + MAX_LINE_BYTES as usize, b'a');
        long.extend_from_slice(b"\r\n\r\n");
        let e = read(&long).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn slowloris_bytes_and_request() {
        assert_eq!(SLOW_PAD.len(), 66);
        let head: Vec<u8> = (0..SLOW_HEAD.len() as u64 + 2 * 66)
            .flat_map(|i| slow_byte(i).to_vec())
            .collect();
        let mut want = SLOW_HEAD.to_vec();
        want.extend_from_slice(SLOW_PAD);
        want.extend_from_slice(SLOW_PAD);
        assert_eq!(head, want);
        let req = String::from_utf8(chat_request("sk-bench")).unwrap();
        assert!(req.starts_with("POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer sk-bench\r\n"));
        assert!(req.ends_with(&format!(
            "content-length: {}\r\n\r\n{CHAT_BODY}",
            CHAT_BODY.len()
        )));
        let mut p = Prefix::default();
        p.push(b"HTTP/1.1 4");
        assert!(!p.is_408());
        p.push(b"08 Request Timeout");
        assert!(p.is_408());
    }

    #[test]
    fn median_and_flags() {
        let mut c = CutTimes::default();
        assert_eq!(c.median(), None);
        for s in [3.0, 1.0, 4.0, 2.0] {
            c.record(s);
        }
        assert_eq!(
            (c.min, c.median(), c.max),
            (Some(1.0), Some(2.5), Some(4.0))
        );
        assert_eq!(round2(10.004_9), 10.0);
        assert_eq!(parse_interval("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("nan").is_err());
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("-1").is_err());
    }
}
