//! Response bodies: a whole buffer, or a paced stream of events.
//!
//! A streamed body hands hyper one event per frame and then returns
//! `Pending` once (waking itself), so hyper flushes every event as its own
//! HTTP chunk instead of coalescing them; with a stream interval, the pause
//! between events does the same. In byte-split mode every byte is a frame of
//! its own. When the request asked for a cut, the body stops before the
//! chosen event and asks the connection task to close or reset the socket.

use std::convert::Infallible;
use std::future::Future;
use std::iter::Peekable;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::misbehave::Cut;
use super::server::ConnControl;

/// Where an event sits in a stream, for counting `x-mock-*-after` cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Before the content (a chat role chunk, `response.created`, ...).
    Lead,
    /// One generated word.
    Content,
    /// After the content (finish chunk, usage chunk, `[DONE]`, ...).
    Tail,
}

/// One server-sent event, already framed (`data: ...\n\n`).
pub struct SseEvent {
    pub bytes: Bytes,
    pub part: Part,
}

impl SseEvent {
    /// A `data: <json>\n\n` event.
    pub fn data(json: &[u8], part: Part) -> Self {
        let mut buf = Vec::with_capacity(json.len() + 8);
        buf.extend_from_slice(b"data: ");
        buf.extend_from_slice(json);
        buf.extend_from_slice(b"\n\n");
        SseEvent {
            bytes: Bytes::from(buf),
            part,
        }
    }

    /// An `event: <name>\ndata: <json>\n\n` event (Responses API style).
    pub fn named(name: &str, json: &[u8], part: Part) -> Self {
        let mut buf = Vec::with_capacity(json.len() + name.len() + 16);
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(b"\ndata: ");
        buf.extend_from_slice(json);
        buf.extend_from_slice(b"\n\n");
        SseEvent {
            bytes: Bytes::from(buf),
            part,
        }
    }

    /// The `data: [DONE]\n\n` terminator of chat and completions streams.
    pub fn done() -> Self {
        SseEvent {
            bytes: Bytes::from_static(b"data: [DONE]\n\n"),
            part: Part::Tail,
        }
    }
}

/// A lazily generated sequence of events (generation happens as hyper polls,
/// so a 100 000-word stream is never held in memory at once).
pub type EventStream = Box<dyn Iterator<Item = SseEvent> + Send>;

/// How a streamed body is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pacing {
    /// Pause between consecutive events.
    pub interval: Duration,
    /// Write every byte as its own chunk.
    pub split_bytes: bool,
    /// Cut the connection after this many content events.
    pub cut: Option<Cut>,
}

/// The body of every mock response.
pub enum MockBody {
    /// A complete buffer, sent with Content-Length (`None` once sent).
    Full(Option<Bytes>),
    /// Events written one frame at a time.
    Events(Box<EventBody>),
}

impl MockBody {
    /// A complete body.
    pub fn full(bytes: Bytes) -> Self {
        MockBody::Full(Some(bytes))
    }

    /// A streamed body of `events` (sent chunked).
    pub fn events(events: EventStream, pacing: Pacing, conn: Arc<ConnControl>) -> Self {
        MockBody::Events(Box::new(EventBody::new(events, pacing, conn, None)))
    }

    /// A complete body written one byte per frame, still with Content-Length.
    pub fn byte_split(bytes: Bytes, conn: Arc<ConnControl>) -> Self {
        let len = bytes.len() as u64;
        let single = SseEvent {
            bytes,
            part: Part::Lead,
        };
        let pacing = Pacing {
            interval: Duration::ZERO,
            split_bytes: true,
            cut: None,
        };
        let events: EventStream = Box::new(std::iter::once(single));
        MockBody::Events(Box::new(EventBody::new(events, pacing, conn, Some(len))))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Events(body) => body.poll_next_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            MockBody::Events(body) => body
                .exact_len
                .map_or_else(SizeHint::new, SizeHint::with_exact),
        }
    }
}

/// A body written event by event (see the module docs).
pub struct EventBody {
    events: Peekable<EventStream>,
    /// The unsent rest of the current event (byte-split mode only).
    current: Bytes,
    pacing: Pacing,
    /// The running pause before the next event, if any.
    pause: Option<Pin<Box<Sleep>>>,
    /// Return `Pending` once before the next frame so hyper flushes.
    flush_boundary: bool,
    /// Whether any event has been sent (no pause before the first).
    started: bool,
    /// Content events sent so far.
    content_sent: u64,
    /// Set once the cut was asked for; the body then never yields again.
    cutting: bool,
    conn: Arc<ConnControl>,
    /// The total length, when known (byte-split complete bodies).
    exact_len: Option<u64>,
}

impl EventBody {
    fn new(
        events: EventStream,
        pacing: Pacing,
        conn: Arc<ConnControl>,
        exact_len: Option<u64>,
    ) -> Self {
        EventBody {
            events: events.peekable(),
            current: Bytes::new(),
            pacing,
            pause: None,
            flush_boundary: false,
            started: false,
            content_sent: 0,
            cutting: false,
            conn,
            exact_len,
        }
    }

    fn poll_next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        loop {
            if self.cutting {
                // The connection task is tearing the socket down.
                return Poll::Pending;
            }
            if self.flush_boundary {
                self.flush_boundary = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if !self.current.is_empty() {
                return Poll::Ready(Some(Ok(self.emit_byte())));
            }
            let Some(next) = self.events.peek().map(|e| e.part) else {
                if self.pacing.cut.is_some_and(|c| c.at_end) {
                    // Everything said; the body's end never comes.
                    return self.start_cut();
                }
                return Poll::Ready(None);
            };
            if self.should_cut(next) {
                return self.start_cut();
            }
            if self.started && !self.pacing.interval.is_zero() {
                let interval = self.pacing.interval;
                let pause = self
                    .pause
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
                ready!(pause.as_mut().poll(cx));
                self.pause = None;
            }
            let Some(event) = self.events.next() else {
                return Poll::Ready(None);
            };
            self.started = true;
            if event.part == Part::Content {
                self.content_sent += 1;
            }
            if self.pacing.split_bytes {
                // Emitted byte by byte from the top of the loop.
                self.current = event.bytes;
                continue;
            }
            self.flush_boundary = true;
            return Poll::Ready(Some(Ok(Frame::data(event.bytes))));
        }
    }

    /// Whether the stream must be cut before an event of kind `next`: before
    /// the content event after the K-th, or before the tail if the stream has
    /// K or fewer content events.
    fn should_cut(&self, next: Part) -> bool {
        match self.pacing.cut {
            None => false,
            Some(cut) if cut.at_end => false,
            Some(cut) => match next {
                Part::Lead => false,
                Part::Content => self.content_sent >= cut.after,
                Part::Tail => true,
            },
        }
    }

    fn start_cut(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.cutting = true;
        if let Some(cut) = self.pacing.cut {
            self.conn.request(cut.action);
        }
        Poll::Pending
    }

    /// The next byte of the current event, as its own frame.
    fn emit_byte(&mut self) -> Frame<Bytes> {
        self.flush_boundary = true;
        Frame::data(self.current.split_to(1))
    }
}
