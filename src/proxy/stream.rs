//! Phase 4, stream: relay a `text/event-stream` response chunk by chunk as it
//! arrives, never buffering the whole response.
//!
//! Each upstream read is de-framed and sent on to the client as one chunk
//! (one copy, into a frame whose chunk-size line is reserved up front). The
//! per-chunk work is synchronous: the token meter reads each piece in place.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{RequestId, Worker};
use crate::config::UpstreamTarget;
use crate::http::chunked::{fixed_chunk_header, ChunkedDecoder, FIXED_CHUNK_HEADER_BYTES};
use crate::http::response::{self, ResponseFraming};
use crate::http::server::ClientOut;
use crate::limits::STREAM_READ_BYTES;
use crate::providers::translate::StreamTranslation;
use crate::tokens::{Finished, ModelFamily, StreamEnding, StreamMeter};
use crate::upstream::response::{UpstreamFraming, UpstreamHead};
use crate::upstream::{ReadOutcome, UpstreamConn, UpstreamIoError};

/// Bytes reserved at a frame's start for the chunk-size line ("%08x\r\n").
const FRAME_HEADER_BYTES: usize = FIXED_CHUNK_HEADER_BYTES;

/// Instants for the overhead histogram.
pub struct Timing {
    /// Overhead already spent on the way in.
    pub inbound: Duration,
    /// When the upstream's response head was complete.
    pub head_at: Instant,
}

/// Removes the `"usage":null` members OpenAI adds to every chunk when usage is
/// requested, from `buf[start..]`, so a client that did not ask for usage sees
/// the chunks it would have seen without the gateway. Only called while
/// stripping, when the meter forwards whole events only, so a member is never
/// split across calls. Inside JSON strings quotes are escaped, so the
/// unescaped pattern can only be a member.
fn remove_null_usage(buf: &mut Vec<u8>, start: usize) {
    // Built once: a searcher per call would be work on every relayed piece.
    static FINDERS: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 2]> =
        std::sync::LazyLock::new(|| {
            [
                memchr::memmem::Finder::new(b",\"usage\":null"),
                memchr::memmem::Finder::new(b"\"usage\":null,"),
            ]
        });
    for finder in FINDERS.iter() {
        let pattern_len = finder.needle().len();
        let mut read = start;
        let mut write = start;
        while let Some(i) = finder.find(&buf[read..]) {
            buf.copy_within(read..read + i, write);
            write += i;
            read += i + pattern_len;
        }
        let rest = buf.len() - read;
        buf.copy_within(read.., write);
        buf.truncate(write + rest);
    }
}

/// How a relayed stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    Complete,
    ClientGone,
    UpstreamFailed,
}

enum Source {
    Chunked(ChunkedDecoder),
    Length(u64),
    Close,
}

impl Source {
    fn done(&self) -> bool {
        match self {
            Source::Chunked(d) => d.is_done(),
            Source::Length(n) => *n == 0,
            Source::Close => false,
        }
    }

    /// Moves whatever body bytes `rbuf` holds into `frame`.
    fn take(&mut self, rbuf: &mut Vec<u8>, frame: &mut Vec<u8>) -> Result<(), ()> {
        match self {
            Source::Chunked(d) => {
                let n = d.decode(rbuf, frame, usize::MAX).map_err(|_| ())?;
                rbuf.drain(..n);
            }
            Source::Length(left) => {
                let n = (*left).min(rbuf.len() as u64) as usize;
                frame.extend_from_slice(&rbuf[..n]);
                rbuf.drain(..n);
                *left -= n as u64;
            }
            Source::Close => {
                frame.extend_from_slice(rbuf);
                rbuf.clear();
            }
        }
        Ok(())
    }
}

/// Relays the stream to the client; returns whether the client connection
/// may serve another request.
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    w: &Worker,
    out: &mut ClientOut<'_>,
    mut conn: UpstreamConn,
    head: &UpstreamHead,
    target: &Arc<UpstreamTarget>,
    rid: &RequestId,
    keep: bool,
    http10: bool,
    timing: Timing,
    plan: &mut super::settle::MeterPlan<'_>,
    mut translator: Option<StreamTranslation>,
) -> bool {
    let chunked_out = !http10;
    w.stats.response(head.status);
    response::begin(out.wbuf, head.status);
    if translator.is_some() {
        // The provider's content type (Bedrock's is a binary event stream)
        // is not what the client receives.
        for line in head.forward.split_inclusive(|&b| b == b'\n') {
            let is_type = line.len() >= 13 && line[..13].eq_ignore_ascii_case(b"content-type:");
            if !is_type {
                out.wbuf.extend_from_slice(line);
            }
        }
        response::header(
            out.wbuf,
            "content-type",
            b"text/event-stream; charset=utf-8",
        );
    } else {
        out.wbuf.extend_from_slice(&head.forward);
    }
    response::header(out.wbuf, "x-request-id", rid.as_str().as_bytes());
    if chunked_out {
        // The cost is known only once the stream ends: it follows as trailers.
        response::header(
            out.wbuf,
            "trailer",
            b"x-bursar-cost-usd, x-bursar-budget-remaining-usd",
        );
    }
    super::cost_headers(out.wbuf, None, plan.lowered_cap);
    super::route_headers(out.wbuf, plan);
    let framing = if chunked_out {
        ResponseFraming::Chunked
    } else {
        ResponseFraming::Close
    };
    response::finish(out.wbuf, framing, keep);
    w.record_overhead(timing.inbound + timing.head_at.elapsed());
    plan.status = head.status;
    plan.first_byte_at = Some(Instant::now());
    // A client gone before the head reached it still costs the prompt the
    // provider has begun on: it goes to the settle below like any abandon.
    let gone_at_head = out.flush().await.is_err();

    let mut source = match head.framing {
        UpstreamFraming::Chunked => Source::Chunked(ChunkedDecoder::new()),
        UpstreamFraming::Length(n) => Source::Length(n),
        UpstreamFraming::Close => Source::Close,
        UpstreamFraming::None => Source::Length(0),
    };
    let mut meter = StreamMeter::new(
        plan.protocol,
        plan.strip_usage_chunk,
        ModelFamily::for_model(plan.model),
    );
    let data_start = if chunked_out { FRAME_HEADER_BYTES } else { 0 };
    let mut frame: Vec<u8> = Vec::with_capacity(STREAM_READ_BYTES + 64);
    // The last two bytes relayed: whether the client is between SSE events.
    let mut tail: [u8; 2] = *b"\n\n";
    // A translated stream: the provider's bytes, before translation.
    let mut upstream_bytes = Vec::new();
    // The stream as the client receives it, when it may be cached.
    let mut cached: Option<Vec<u8>> = plan.cache.map(|_| Vec::new());
    let end = loop {
        if gone_at_head {
            break StreamEnd::ClientGone;
        }
        frame.clear();
        if chunked_out {
            frame.resize(FRAME_HEADER_BYTES, 0);
        }
        let mut failed = false;
        if let Some(t) = translator.as_mut() {
            upstream_bytes.clear();
            failed = source.take(&mut conn.rbuf, &mut upstream_bytes).is_err()
                || t.feed(&upstream_bytes, &mut frame).is_err()
                || (source.done() && t.finish(&mut frame).is_err());
        } else if source.take(&mut conn.rbuf, &mut frame).is_err() {
            break StreamEnd::UpstreamFailed;
        }
        meter.feed_in_place(&mut frame, data_start);
        if plan.strip_usage_chunk {
            remove_null_usage(&mut frame, data_start);
        }
        let data_len = frame.len() - data_start;
        if let Some(kept) = cached.as_mut() {
            // What the client receives, for the response cache (bounded).
            if kept.len() + data_len <= crate::cache::CACHE_ENTRY_BYTES_MAX {
                kept.extend_from_slice(&frame[data_start..]);
            } else {
                cached = None;
            }
        }
        if data_len > 0 {
            if chunked_out {
                frame[..FRAME_HEADER_BYTES].copy_from_slice(&fixed_chunk_header(data_len));
                frame.extend_from_slice(b"\r\n");
            }
            let data_end = frame.len() - if chunked_out { 2 } else { 0 };
            if data_len >= 2 {
                tail.copy_from_slice(&frame[data_end - 2..data_end]);
            } else {
                tail = [tail[1], frame[data_end - 1]];
            }
            let (res, back) = out.write_owned(std::mem::take(&mut frame)).await;
            frame = back;
            if res.is_err() {
                break StreamEnd::ClientGone;
            }
        }
        if failed {
            break StreamEnd::UpstreamFailed;
        }
        if source.done() {
            break StreamEnd::Complete;
        }
        match conn
            .read_more(STREAM_READ_BYTES * 4, w.limits.upstream_read_timeout)
            .await
        {
            Ok(ReadOutcome::Data(_)) => {}
            Ok(ReadOutcome::Eof) if matches!(source, Source::Close) => break StreamEnd::Complete,
            Ok(ReadOutcome::Eof)
            | Err(UpstreamIoError::Io(_) | UpstreamIoError::Timeout | UpstreamIoError::TooLarge) => {
                break StreamEnd::UpstreamFailed
            }
        }
    };

    // Counted now: settling below may wait for the tokenizer thread.
    match end {
        StreamEnd::Complete => w.stats.streams_completed.inc(),
        StreamEnd::ClientGone => w.stats.streams_client_aborted.inc(),
        StreamEnd::UpstreamFailed => w.stats.streams_upstream_aborted.inc(),
    }

    // Count the stream's tokens; bytes the meter held back (an incomplete
    // event while stripping) go to the client before the stream ends.
    let ending = match end {
        StreamEnd::Complete => StreamEnding::Complete,
        StreamEnd::ClientGone => StreamEnding::ClientGone,
        StreamEnd::UpstreamFailed => StreamEnding::UpstreamCut,
    };
    let mut held = Vec::new();
    if let Some(prompt) = translator
        .as_ref()
        .and_then(StreamTranslation::prompt_tokens)
    {
        // A translated stream cut short still has the provider's prompt count.
        meter.set_prompt_estimate(prompt);
    }
    // The translator read the provider's own final counts (cache writes
    // included, which the translated chunk cannot carry): they win over the
    // meter's, also when the upstream broke after sending them and before
    // the translated usage chunk was written (no tokenizer count then).
    let final_usage = translator.as_ref().and_then(StreamTranslation::final_usage);
    let finished = match (meter.finish_deferred(ending, &mut held), final_usage) {
        (Finished::NeedsCount(job), Some(_)) => Finished::Ready(job.into_uncounted()),
        (finished, _) => finished,
    };
    let outcome = match finished {
        Finished::Ready(mut outcome) => {
            if let Some(u) = final_usage {
                outcome.use_provider_usage(u);
            }
            w.stats
                .tokens
                .usage_chunks_stripped
                .add(u64::from(outcome.usage_chunks_stripped));
            w.stats
                .tokens
                .record(&outcome.usage, outcome.estimated, plan.price);
            Some(outcome)
        }
        Finished::NeedsCount(job) => {
            // The exact count comes from the tokenizer thread (a count can
            // take milliseconds); this stream's charge waits for it, other
            // requests on this worker do not. The count adds the hidden
            // reasoning the visible text cannot show (`settle::add_hidden_reasoning`).
            let (tx, rx) = futures_channel::oneshot::channel();
            let req = super::CountRequest {
                job,
                price: plan.price.cloned(),
                body: plan.client_body.to_vec(),
                family: ModelFamily::for_model(plan.model),
                output_tokens_max: plan.hold.as_ref().map_or(0, |h| h.output_tokens_max()),
                reply: Some(tx),
            };
            match w.count_jobs.try_send(req) {
                Ok(()) => rx.await.ok(),
                Err(e) => {
                    // The tokenizer thread is saturated: count here rather
                    // than lose the count (rare; it costs this worker a run).
                    let mut req = e.into_inner();
                    req.reply = None;
                    let outcome = req.run();
                    w.stats.tokens.record(&outcome.usage, true, plan.price);
                    Some(outcome)
                }
            }
        }
    };
    if let Some(o) = &outcome {
        plan.permit
            .record_tokens(crate::ratelimit::now_ms(), o.usage.total_tokens());
    }
    // Charged (durably, in the ring) before the stream's end reaches the
    // client; a client that left is charged for what was generated.
    let settled = match outcome {
        Some(o) => {
            let estimated = o.estimated;
            super::settle::charge(w, plan, rid, Some(o.usage), estimated).await
        }
        None => super::settle::charge(w, plan, rid, None, true).await,
    };
    let mut trailers = Vec::new();
    if chunked_out {
        trailers.extend_from_slice(b"0\r\n");
        super::cost_headers(&mut trailers, settled, None);
        trailers.extend_from_slice(b"\r\n");
    }
    if plan.strip_usage_chunk && !held.is_empty() {
        remove_null_usage(&mut held, 0);
    }
    if !held.is_empty() && end != StreamEnd::ClientGone {
        if chunked_out {
            crate::http::chunked::write_chunk_header(out.wbuf, held.len());
            out.wbuf.extend_from_slice(&held);
            out.wbuf.extend_from_slice(b"\r\n");
        } else {
            out.wbuf.extend_from_slice(&held);
        }
        if held.len() >= 2 {
            tail.copy_from_slice(&held[held.len() - 2..]);
        }
    }

    if let (Some(key), Some(mut kept), StreamEnd::Complete) = (plan.cache, cached, end) {
        if kept.len() + held.len() <= crate::cache::CACHE_ENTRY_BYTES_MAX {
            kept.extend_from_slice(&held);
            w.cache_store(key, kept, true, plan);
        }
    }
    match end {
        StreamEnd::Complete => {
            if head.keep_alive && !matches!(source, Source::Close) {
                w.pool.borrow_mut().checkin(conn);
            }
            if !chunked_out {
                return false;
            }
            out.wbuf.extend_from_slice(&trailers);
            out.flush().await.is_ok() && keep
        }
        StreamEnd::ClientGone => {
            // The upstream connection is mid-response: drop it, never pool it.
            false
        }
        StreamEnd::UpstreamFailed => {
            log::warn!(
                "request {}: the upstream {} cut the stream short",
                rid.as_str(),
                target.host_header
            );
            // Tell the client in the stream itself (the OpenAI SDKs raise on an
            // `error` event), then end the body properly.
            // If the cut fell inside an event, end that event first so the
            // error arrives as an event of its own, not glued to a fragment.
            let mut event = Vec::with_capacity(160);
            if &tail != b"\n\n" {
                event.extend_from_slice(b"\n\n");
            }
            event.extend_from_slice(b"data: {\"error\":{\"message\":\"the upstream ended the stream early\",\"type\":\"upstream_error\",\"param\":null,\"code\":\"upstream_stream_cut\"}}\n\n");
            if chunked_out {
                crate::http::chunked::write_chunk_header(out.wbuf, event.len());
                out.wbuf.extend_from_slice(&event);
                out.wbuf.extend_from_slice(b"\r\n");
                out.wbuf.extend_from_slice(&trailers);
            } else {
                out.wbuf.extend_from_slice(&event);
            }
            out.flush().await.is_ok() && keep && chunked_out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::remove_null_usage;

    #[test]
    fn null_usage_members_are_removed_and_nothing_else() {
        let mut b = b"HDR{\"id\":1,\"choices\":[],\"usage\":null}\n\n{\"usage\":null,\"x\":\"\\\"usage\\\":null\"}".to_vec();
        remove_null_usage(&mut b, 3);
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "HDR{\"id\":1,\"choices\":[]}\n\n{\"x\":\"\\\"usage\\\":null\"}"
        );
    }
}
