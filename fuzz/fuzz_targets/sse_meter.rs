//! The streaming token counter on any bytes, fed in pieces: without usage
//! stripping, every byte goes to the client unchanged and in order; the
//! framer finds the same event ends whole or in pieces; nothing panics.
#![no_main]
use bursar::tokens::sse::{parse_event, SseFramer};
use bursar::tokens::ModelFamily;
use bursar::tokens::Protocol;
use bursar::tokens::{StreamEnding, StreamMeter};
use libfuzzer_sys::fuzz_target;

const PROTOCOLS: [Protocol; 5] = [
    Protocol::ChatCompletions,
    Protocol::Completions,
    Protocol::Responses,
    Protocol::AnthropicMessages,
    Protocol::Embeddings,
];

fn ends(pieces: &[&[u8]]) -> Vec<usize> {
    let mut framer = SseFramer::new();
    let (mut out, mut base) = (Vec::new(), 0);
    for piece in pieces {
        let mut cursor = 0;
        while let Some(end) = framer.next_end(piece, &mut cursor) {
            out.push(base + end);
        }
        base += piece.len();
    }
    if framer.pending_end() {
        out.push(base);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let protocol = PROTOCOLS[usize::from(head & 7) % PROTOCOLS.len()];
    let strip = head & 8 != 0;
    let at = usize::from(head >> 4).min(rest.len());
    let pieces = [&rest[..at], &rest[at..]];
    // The framer: whole or in pieces, the same ends.
    let whole = ends(&[rest]);
    assert_eq!(whole, ends(&pieces));
    let mut scratch = Vec::new();
    let mut start = 0;
    for &end in &whole {
        let _ = parse_event(&rest[start..end], &mut scratch);
        start = end;
    }
    // The meter.
    let family = ModelFamily::for_model("gpt-4o-mini");
    let mut meter = StreamMeter::new(protocol, strip, family);
    let mut forward = Vec::new();
    for piece in pieces {
        meter.feed(piece, &mut forward);
    }
    let _ = meter.finish_deferred(StreamEnding::UpstreamCut, &mut forward);
    if !strip {
        assert_eq!(forward, rest, "bytes changed on their way to the client");
    } else {
        assert!(forward.len() <= rest.len());
    }
});
