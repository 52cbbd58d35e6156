//! The server side of one client connection: reading whole requests with
//! bounds and timeouts, writing responses. Knows nothing of money or routing.

use std::io;
use std::ops::Range;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use super::chunked::{ChunkError, ChunkedDecoder};
use super::request::{parse_head, BodyFraming, RequestHead};
use crate::error::ApiError;
use crate::limits::{
    Limits, CONNECTION_BUFFER_KEPT_BYTES_MAX, IDLE_WAIT_UNBUFFERED_CONNECTIONS_MIN,
    READ_BUFFER_BYTES_INITIAL, WRITE_BUFFERS_POOLED_MAX,
};

thread_local! {
    /// This worker's spare write buffers. A connection holds one only while
    /// it has a request (from the whole request read to the next wait for
    /// one): an idle keep-alive connection then costs its read buffer, not
    /// its write buffer too, and a busy worker reuses as many buffers as it
    /// has requests in flight, allocating none per request.
    static WRITE_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// This worker's open client connections (`ServerConn`s alive).
    static OPEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A write buffer from the worker's spares, or a new one.
fn take_write_buffer() -> Vec<u8> {
    WRITE_BUFFERS
        .with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(READ_BUFFER_BYTES_INITIAL))
}

/// Gives a connection's write buffer back to the worker's spares (bounded:
/// past `WRITE_BUFFERS_POOLED_MAX`, or grown past
/// `CONNECTION_BUFFER_KEPT_BYTES_MAX`, it is freed).
fn give_write_buffer(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > CONNECTION_BUFFER_KEPT_BYTES_MAX {
        return;
    }
    buf.clear();
    WRITE_BUFFERS.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < WRITE_BUFFERS_POOLED_MAX {
            pool.push(buf);
        }
    });
}

/// One client connection and its reusable buffers.
pub struct ServerConn {
    pub stream: TcpStream,
    /// Bytes read and not yet consumed; the current request starts at 0.
    pub rbuf: Vec<u8>,
    pub head: RequestHead,
    /// The decoded body of a chunked request.
    pub chunked_body: Vec<u8>,
    /// Held from a whole request read to the next wait for one; empty (no
    /// capacity) while the connection waits (see `WRITE_BUFFERS`).
    pub wbuf: Vec<u8>,
    /// Bytes of `rbuf` the current request occupies (head + framed body).
    consumed: usize,
    body: BodyLoc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyLoc {
    InBuf(Range<usize>),
    Chunked,
}

/// The current request, borrowed from the connection's buffers.
pub struct RequestView<'a> {
    pub head: &'a RequestHead,
    /// The head's bytes; `head`'s ranges index into them.
    pub bytes: &'a [u8],
    pub body: &'a [u8],
}

/// The writing half of a connection, borrowed beside a [`RequestView`].
pub struct ClientOut<'a> {
    pub stream: &'a mut TcpStream,
    pub wbuf: &'a mut Vec<u8>,
    pub write_timeout: Duration,
}

impl ClientOut<'_> {
    /// Writes `wbuf` to the client and clears it.
    pub async fn flush(&mut self) -> io::Result<()> {
        let buf = std::mem::take(self.wbuf);
        let (res, mut buf) =
            crate::io::write_all_fast(self.stream, buf, self.write_timeout).await?;
        buf.clear();
        *self.wbuf = buf;
        res
    }

    /// Writes `buf` (not `wbuf`) to the client; gives it back for reuse.
    pub async fn write_owned(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match crate::io::write_all_fast(self.stream, buf, self.write_timeout).await {
            Ok((res, buf)) => (res, buf),
            Err(e) => (Err(e), Vec::new()),
        }
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed cleanly between requests.
    Closed,
    /// The connection sat idle past the idle timeout: close without a word.
    Idle,
    /// Answer this error, then close (the stream is out of sync).
    Reject(ApiError),
    /// The socket failed or the client vanished mid-request.
    Io(io::Error),
}

enum Fill {
    Data,
    Eof,
    TimedOut,
}

impl ServerConn {
    pub fn new(stream: TcpStream) -> Self {
        OPEN.with(|n| n.set(n.get() + 1));
        ServerConn {
            stream,
            // Allocated by the first read (`fill`).
            rbuf: Vec::new(),
            head: RequestHead::default(),
            chunked_body: Vec::new(),
            wbuf: Vec::new(),
            consumed: 0,
            body: BodyLoc::InBuf(0..0),
        }
    }

    /// The current request and the writing half, borrowed side by side.
    pub fn split(&mut self, write_timeout: Duration) -> (RequestView<'_>, ClientOut<'_>) {
        let body = match &self.body {
            BodyLoc::InBuf(r) => &self.rbuf[r.clone()],
            BodyLoc::Chunked => &self.chunked_body[..],
        };
        (
            RequestView {
                head: &self.head,
                bytes: &self.rbuf[..self.head.head_len],
                body,
            },
            ClientOut {
                stream: &mut self.stream,
                wbuf: &mut self.wbuf,
                write_timeout,
            },
        )
    }

    /// The head bytes of the current request (offsets in `head` refer to these).
    pub fn head_bytes(&self) -> &[u8] {
        &self.rbuf[..self.head.head_len]
    }

    /// Reads one more chunk of bytes, growing the buffer up to `max_total`.
    async fn fill(&mut self, max_total: usize, wait: Duration) -> io::Result<Fill> {
        let len = self.rbuf.len();
        if len >= max_total {
            return Err(io::Error::other("read buffer bound reached"));
        }
        if self.rbuf.capacity() == len {
            let want = len.max(READ_BUFFER_BYTES_INITIAL).min(max_total - len);
            self.rbuf.reserve_exact(want);
        }
        let cap = self.rbuf.capacity().min(max_total);
        let buf = std::mem::take(&mut self.rbuf).slice_mut(len..cap);
        match monoio::time::timeout(wait, self.stream.read(buf)).await {
            Ok((res, buf)) => {
                self.rbuf = buf.into_inner();
                match res? {
                    0 => Ok(Fill::Eof),
                    _ => Ok(Fill::Data),
                }
            }
            // The buffer went down with the cancelled read; the connection
            // is about to close, so start from a fresh one.
            Err(_) => Ok(Fill::TimedOut),
        }
    }

    /// Drops the previous request's bytes, keeping any pipelined ones, and
    /// the buffers a large request grew: a connection that waits keeps at
    /// most `CONNECTION_BUFFER_KEPT_BYTES_MAX` of read buffer and no
    /// chunked-body or write buffer.
    fn compact(&mut self) {
        if self.consumed > 0 {
            if self.consumed >= self.rbuf.len() {
                self.rbuf.clear();
            } else {
                self.rbuf.drain(..self.consumed);
            }
            self.consumed = 0;
        }
        if self.rbuf.capacity() > CONNECTION_BUFFER_KEPT_BYTES_MAX {
            self.rbuf
                .shrink_to(self.rbuf.len().max(READ_BUFFER_BYTES_INITIAL));
        }
        if self.chunked_body.capacity() > CONNECTION_BUFFER_KEPT_BYTES_MAX {
            self.chunked_body = Vec::new();
        } else {
            self.chunked_body.clear();
        }
        give_write_buffer(std::mem::take(&mut self.wbuf));
    }

    /// Reads the next whole request (head and body) within the limits.
    pub async fn read_request(&mut self, limits: &Limits) -> Result<(), ReadError> {
        self.compact();
        if self.rbuf.is_empty() && OPEN.with(|n| n.get()) >= IDLE_WAIT_UNBUFFERED_CONNECTIONS_MIN {
            // Many connections open (a flood of idle ones, or just many
            // clients): wait for the next request's first byte without a
            // buffer (a readiness poll; cancelling it on the idle timeout
            // loses nothing, unlike a read), so a waiting connection costs no
            // read buffer either. Fewer open, a read is posted at once with
            // the buffer: one operation per request instead of two.
            self.rbuf = Vec::new();
            match monoio::time::timeout(limits.idle_timeout, self.stream.readable(false)).await {
                Err(_) => return Err(ReadError::Idle),
                Ok(Err(e)) => return Err(ReadError::Io(e)),
                Ok(Ok(())) => {}
            }
        }
        // Head: the idle timeout until its first byte, then the request timeout.
        let mut started: Option<Instant> = (!self.rbuf.is_empty()).then(Instant::now);
        loop {
            if !self.rbuf.is_empty() {
                started.get_or_insert_with(Instant::now);
                let done = parse_head(
                    &self.rbuf,
                    limits.header_bytes_max,
                    limits.body_bytes_max,
                    &mut self.head,
                )
                .map_err(ReadError::Reject)?;
                if done {
                    break;
                }
            }
            let wait = match started {
                None => limits.idle_timeout,
                Some(t) => remaining(t, limits.request_timeout).ok_or_else(timeout_error)?,
            };
            match self
                .fill(limits.header_bytes_max, wait)
                .await
                .map_err(ReadError::Io)?
            {
                Fill::Data => {}
                Fill::Eof if self.rbuf.is_empty() => return Err(ReadError::Closed),
                Fill::Eof => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
                Fill::TimedOut if started.is_none() => return Err(ReadError::Idle),
                Fill::TimedOut => return Err(timeout_error()),
            }
        }
        let started = started.unwrap_or_else(Instant::now);
        let head_len = self.head.head_len;
        if self.wbuf.capacity() == 0 {
            self.wbuf = take_write_buffer();
        }
        if self.head.expect_continue {
            self.write_raw(b"HTTP/1.1 100 Continue\r\n\r\n", limits)
                .await
                .map_err(ReadError::Io)?;
        }
        match self.head.framing() {
            BodyFraming::None => {
                self.body = BodyLoc::InBuf(head_len..head_len);
                self.consumed = head_len;
            }
            BodyFraming::Length(n) => {
                let end = head_len + n as usize; // n <= body_bytes_max, checked in parse_head
                while self.rbuf.len() < end {
                    let wait =
                        remaining(started, limits.request_timeout).ok_or_else(timeout_error)?;
                    match self.fill(end, wait).await.map_err(ReadError::Io)? {
                        Fill::Data => {}
                        Fill::Eof => {
                            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()))
                        }
                        Fill::TimedOut => return Err(timeout_error()),
                    }
                }
                self.body = BodyLoc::InBuf(head_len..end);
                self.consumed = end;
            }
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let mut pos = head_len;
                // A chunked body's framing may exceed its payload; bound the raw bytes too.
                let raw_max = head_len + limits.body_bytes_max + limits.body_bytes_max / 4 + 4096;
                loop {
                    let n = decoder
                        .decode(
                            &self.rbuf[pos..],
                            &mut self.chunked_body,
                            limits.body_bytes_max,
                        )
                        .map_err(|e| {
                            ReadError::Reject(match e {
                                ChunkError::TooLarge => {
                                    ApiError::payload_too_large(limits.body_bytes_max)
                                }
                                ChunkError::InvalidSize => ApiError::bad_request(
                                    "malformed_request",
                                    "invalid chunk size in request body",
                                ),
                                ChunkError::InvalidFraming => ApiError::bad_request(
                                    "malformed_request",
                                    "invalid chunked framing in request body",
                                ),
                            })
                        })?;
                    pos += n;
                    if decoder.is_done() {
                        break;
                    }
                    // Consumed framing is dead weight: drop it so the buffer stays small.
                    if pos > head_len + READ_BUFFER_BYTES_INITIAL {
                        self.rbuf.drain(head_len..pos);
                        pos = head_len;
                    }
                    let wait =
                        remaining(started, limits.request_timeout).ok_or_else(timeout_error)?;
                    match self.fill(raw_max, wait).await.map_err(ReadError::Io)? {
                        Fill::Data => {}
                        Fill::Eof => {
                            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()))
                        }
                        Fill::TimedOut => return Err(timeout_error()),
                    }
                }
                self.body = BodyLoc::Chunked;
                self.consumed = pos;
            }
        }
        Ok(())
    }

    /// Writes `wbuf` to the client and clears it.
    pub async fn flush(&mut self, limits: &Limits) -> io::Result<()> {
        let buf = std::mem::take(&mut self.wbuf);
        let (res, mut buf) =
            crate::io::write_all_fast(&mut self.stream, buf, limits.idle_timeout).await?;
        buf.clear();
        self.wbuf = buf;
        res
    }

    async fn write_raw(&mut self, bytes: &[u8], limits: &Limits) -> io::Result<()> {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(bytes);
        self.flush(limits).await
    }
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        OPEN.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

fn remaining(started: Instant, total: Duration) -> Option<Duration> {
    total
        .checked_sub(started.elapsed())
        .filter(|d| !d.is_zero())
}

fn timeout_error() -> ReadError {
    ReadError::Reject(ApiError::request_timeout(
        "the request was not received in time",
    ))
}
