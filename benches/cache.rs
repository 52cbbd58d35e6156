//! The response cache's cost on a request (issue 16). Run: `cargo bench
//! --bench cache`.
//!
//! - `key/chat_300b`: a chat request's key (parse, canonical text, SHA-256).
//! - `key/not_cacheable_sampled`: the 300-byte request with `temperature`
//!   0.7, refused before any parse.
//! - `key/chat_4kb`: the same for a 4 KiB conversation.
//! - `get_hit/100k`: a lookup that hits, in a shard of 100,000 entries.
//! - `get_miss/100k`: a lookup that misses there.
//! - `insert_evict/100k`: storing into a full shard (one eviction).

use std::hint::black_box;

use bursar::cache::{key, CacheKey, Entry, Shard};
use bursar::providers::Endpoint;
use criterion::Criterion;

const BODY: &[u8] = br#"{"model":"gpt-4o-mini","temperature":0,"max_tokens":256,"messages":[{"role":"system","content":"You are a helpful assistant that answers briefly."},{"role":"user","content":"What is the capital of France, and why is it famous? Answer in two sentences."}]}"#;

fn entry(n: usize) -> Entry {
    Entry {
        body: vec![b'x'; n].into(),
        stream: false,
        cost_picodollars: 1_000_000,
        model: "gpt-4o-mini".into(),
        expires_at_ms: i64::MAX,
    }
}

fn benches(c: &mut Criterion) {
    c.bench_function("key/chat_300b", |b| {
        b.iter(|| {
            key(
                black_box("customer:acme"),
                Endpoint::ChatCompletions,
                black_box(BODY),
                false,
            )
        })
    });
    let long = format!(
        r#"{{"model":"gpt-4o-mini","temperature":0,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "word ".repeat(800)
    );
    let sampled = std::str::from_utf8(BODY)
        .unwrap()
        .replace("\"temperature\":0", "\"temperature\":0.7");
    c.bench_function("key/not_cacheable_sampled", |b| {
        b.iter(|| {
            key(
                black_box("customer:acme"),
                Endpoint::ChatCompletions,
                black_box(sampled.as_bytes()),
                false,
            )
        })
    });
    c.bench_function("key/chat_4kb", |b| {
        b.iter(|| {
            key(
                black_box("customer:acme"),
                Endpoint::ChatCompletions,
                black_box(long.as_bytes()),
                false,
            )
        })
    });
    let n = 100_000u128;
    let mut shard = Shard::new(n as usize, 1 << 30);
    for i in 0..n {
        shard.insert(CacheKey(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), entry(600));
    }
    let mut i = 0u128;
    c.bench_function("get_hit/100k", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            shard
                .get(CacheKey(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 0)
                .map(|e| e.body.len())
        })
    });
    c.bench_function("get_miss/100k", |b| {
        b.iter(|| shard.get(CacheKey(black_box(u128::MAX)), 0).is_some())
    });
    let mut next = n;
    c.bench_function("insert_evict/100k", |b| {
        b.iter(|| {
            next += 1;
            shard.insert(
                CacheKey(next.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                entry(600),
            );
        })
    });
    println!(
        "shard: {} entries, {} bytes ({} per entry of a 600-byte answer)",
        shard.len(),
        shard.bytes(),
        shard.bytes() / shard.len().max(1)
    );
}

criterion::criterion_group!(group, benches);
criterion::criterion_main!(group);
