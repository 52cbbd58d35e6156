//! The streaming token counter's throughput on recorded streams, and the
//! tokenizer fallback's. Run: `cargo bench --bench tokens`.
//!
//! Streams are the fixtures in tests/fixtures/sse with their text deltas
//! repeated to about 1 MB (so per-stream costs, the usage parse among them,
//! are included but amortised as in a long answer). Each is fed two ways:
//! in 16 KiB pieces (`limits::STREAM_READ_BYTES`, a backlogged upstream) and
//! one event per piece (a live stream, where each read holds one token's
//! event). Throughput is SSE bytes per second; for the tokenizer, bytes of
//! text per second.

use std::hint::black_box;
use std::time::Duration;

use bursar::limits::STREAM_READ_BYTES;
use bursar::tokens::{
    count_tokens, prompt_bound_exception, usage_from_body, Encoding, ModelFamily, Protocol,
    StreamEnding, StreamMeter,
};
use criterion::{BenchmarkId, Criterion, Throughput};

const CHAT: &[u8] = include_bytes!("../tests/fixtures/sse/chat_usage.txt");
const RESPONSES: &[u8] = include_bytes!("../tests/fixtures/sse/responses.txt");
const ANTHROPIC: &[u8] = include_bytes!("../tests/fixtures/sse/anthropic_messages.txt");

/// Target size of a benchmark stream.
const STREAM_BYTES_TARGET: usize = 1 << 20;

/// The fixture with its text-delta events repeated to about
/// [`STREAM_BYTES_TARGET`] bytes; head and tail (usage) kept once.
fn long_stream(fixture: &[u8], delta_marker: &str) -> Vec<u8> {
    let s = std::str::from_utf8(fixture).unwrap();
    let events: Vec<&str> = s.split_inclusive("\n\n").collect();
    let first = events
        .iter()
        .position(|e| e.contains(delta_marker))
        .unwrap();
    let last = events
        .iter()
        .rposition(|e| e.contains(delta_marker))
        .unwrap();
    let middle: String = events[first..=last].concat();
    let mut out = events[..first].concat();
    while out.len() + middle.len() < STREAM_BYTES_TARGET {
        out.push_str(&middle);
    }
    out.push_str(&events[last + 1..].concat());
    out.into_bytes()
}

/// The stream cut into pieces: fixed-size reads, or one event per read.
fn pieces(stream: &[u8], per_event: bool) -> Vec<&[u8]> {
    if per_event {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, w) in stream.windows(2).enumerate() {
            if w == b"\n\n" {
                out.push(&stream[start..i + 2]);
                start = i + 2;
            }
        }
        out.push(&stream[start..]);
        out
    } else {
        stream.chunks(STREAM_READ_BYTES).collect()
    }
}

/// One whole stream through a fresh meter, as the relay would run it.
fn meter_stream(
    protocol: Protocol,
    strip: bool,
    text: bool,
    pieces: &[&[u8]],
    frame: &mut Vec<u8>,
) -> u64 {
    let mut m = StreamMeter::new(protocol, strip, ModelFamily::for_model("gpt-4o"))
        .with_text_collection(text);
    for p in pieces {
        frame.clear();
        m.feed(black_box(p), frame);
        black_box(&frame);
    }
    let o = m.finish(StreamEnding::Complete, frame);
    assert!(!o.estimated);
    o.usage.completion_tokens
}

/// Same, with the bytes already in the frame (the relay decodes into it).
fn meter_stream_in_place(pieces: &[&[u8]], frame: &mut Vec<u8>) -> u64 {
    let mut m = StreamMeter::new(Protocol::ChatCompletions, false, ModelFamily::UNKNOWN)
        .with_text_collection(false);
    for p in pieces {
        frame.clear();
        frame.extend_from_slice(p);
        m.feed_in_place(frame, 0);
        black_box(&frame);
    }
    m.finish(StreamEnding::Complete, frame)
        .usage
        .completion_tokens
}

fn collected_text(stream: &[u8], protocol: Protocol) -> String {
    let mut m = StreamMeter::new(protocol, false, ModelFamily::UNKNOWN);
    let mut sink = Vec::new();
    m.feed(stream, &mut sink);
    String::from_utf8(m.collected_text().to_vec()).unwrap()
}

fn benches(c: &mut Criterion) {
    let chat = long_stream(CHAT, "\"delta\":{\"content\"");
    let responses = long_stream(RESPONSES, "response.output_text.delta");
    let anthropic = long_stream(ANTHROPIC, "content_block_delta");
    let mut frame = Vec::with_capacity(STREAM_READ_BYTES + 64);

    let mut g = c.benchmark_group("meter");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, stream, protocol) in [
        ("chat", &chat, Protocol::ChatCompletions),
        ("responses", &responses, Protocol::Responses),
        ("anthropic", &anthropic, Protocol::AnthropicMessages),
    ] {
        g.throughput(Throughput::Bytes(stream.len() as u64));
        for per_event in [false, true] {
            let reads = if per_event {
                "event_reads"
            } else {
                "16k_reads"
            };
            let ps = pieces(stream, per_event);
            let strips: &[bool] = if protocol == Protocol::ChatCompletions {
                &[false, true]
            } else {
                &[false]
            };
            for &text in &[false, true] {
                for &strip in strips {
                    let what = if text { "collect_text" } else { "usage_only" };
                    let id = BenchmarkId::new(
                        format!("{name}/{what}"),
                        format!("{reads}/strip={strip}"),
                    );
                    g.bench_function(id, |b| {
                        b.iter(|| meter_stream(protocol, strip, text, &ps, &mut frame))
                    });
                }
            }
        }
    }
    let ps = pieces(&chat, false);
    g.throughput(Throughput::Bytes(chat.len() as u64));
    g.bench_function("chat/usage_only_in_place/16k_reads/strip=false", |b| {
        b.iter(|| meter_stream_in_place(&ps, &mut frame))
    });
    g.finish();

    let mut g = c.benchmark_group("tokenizer");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let text = collected_text(&chat, Protocol::ChatCompletions);
    let text = &text[..text.len().min(64 * 1024)];
    for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
        bursar::tokens::warm_up_encoding(encoding);
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(format!("{}/chat_text_64KiB", encoding.name()), |b| {
            b.iter(|| count_tokens(encoding, black_box(text)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("body");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    // 64 inputs of 1536 floats: about 1.3 MB, usage at the end.
    let mut emb = String::from("{\"object\":\"list\",\"data\":[");
    for i in 0..64 {
        if i > 0 {
            emb.push(',');
        }
        emb.push_str(&format!(
            "{{\"object\":\"embedding\",\"index\":{i},\"embedding\":["
        ));
        for j in 0..1536 {
            if j > 0 {
                emb.push(',');
            }
            emb.push_str(&format!(
                "{:.10}",
                ((i * 1536 + j) as f64 * 0.7).sin() * 0.05
            ));
        }
        emb.push_str("]}");
    }
    emb.push_str("],\"model\":\"text-embedding-3-small\",\"usage\":{\"prompt_tokens\":512,\"total_tokens\":512}}");
    g.throughput(Throughput::Bytes(emb.len() as u64));
    g.bench_function("usage_from_body/embeddings_1.3MB", |b| {
        b.iter(|| usage_from_body(Protocol::Embeddings, black_box(emb.as_bytes())).unwrap())
    });
    let body = format!(
        "{{\"model\":\"gpt-4o-mini\",\"stream\":true,\"messages\":[{{\"role\":\"system\",\"content\":\"You are a helpful assistant.\"}},{{\"role\":\"user\",\"content\":{}}}]}}",
        serde_json::to_string(&"Summarise the following text in three bullet points. ".repeat(36)).unwrap()
    );
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("prompt_bound_exception/chat_body_2KB", |b| {
        b.iter(|| prompt_bound_exception(black_box(body.as_bytes())))
    });
    g.finish();
}

criterion::criterion_group!(group, benches);
criterion::criterion_main!(group);
