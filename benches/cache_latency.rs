//! The response cache's lookup latency as a distribution (issue 16's
//! targets are percentiles, which criterion's means do not give): each
//! operation timed on its own, 20,000 times, into an HDR histogram.
//!
//! * the exact cache's hit: the canonical key of a 300-byte chat request
//!   and the shard's lookup, in a shard of 100k entries;
//! * the exact cache's cost to a request it does not cache (sampled);
//! * the semantic cache's stages a and b: the prompt's static embedding,
//!   the search of its context's index and the guards on what it finds,
//!   with 1k, 10k and 100k entries in that one context.
//!
//! Also the memory per entry of the semantic index. Run:
//! `scripts/fetch-embeddings target/embeddings`, then
//! `cargo bench --bench cache_latency`.

use std::path::PathBuf;
use std::time::Instant;

use bursar::cache::semantic::{Query, SemanticShard};
use bursar::cache::{keys, CacheKey, Entry, Shard};
use bursar::config::cache::SIMILARITY_MIN_DEFAULT;
use bursar::providers::Endpoint;
use hdrhistogram::Histogram;

const SAMPLES: usize = 20_000;

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e3
    );
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("bounds")
}

/// A deterministic xorshift, so every run builds the same prompts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, words: &'a [String]) -> &'a str {
        &words[(self.next() % words.len() as u64) as usize]
    }
}

fn main() {
    let dir = std::env::var_os("BURSAR_EMBEDDINGS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/embeddings"))
        });
    let models = bursar::embed::Models::load(&dir, false).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\nrun scripts/fetch-embeddings {} first",
            dir.display(),
            dir.display()
        )
    });
    println!("| operation | p50 µs | p99 µs | p99.9 µs | max µs |");
    println!("|---|---:|---:|---:|---:|");

    // The exact cache: a 100k-entry shard, a hit on a 300-byte request.
    let mut shard = Shard::new(200_000, 1 << 30);
    let body = |i: usize| {
        format!(
            r#"{{"model":"gpt-4o-mini","temperature":0,"max_tokens":64,"messages":[{{"role":"system","content":"You are a helpful assistant for the billing team."}},{{"role":"user","content":"Summarise invoice number {i} and tell me whether it has been paid, in one sentence."}}]}}"#
        )
    };
    for i in 0..100_000 {
        let k = keys(
            "acme",
            Endpoint::ChatCompletions,
            body(i).as_bytes(),
            false,
            false,
        )
        .unwrap()
        .exact;
        shard.insert(
            k,
            Entry {
                body: vec![b'x'; 600].into(),
                stream: false,
                cost_picodollars: 1,
                model: "gpt-4o-mini".into(),
                expires_at_ms: i64::MAX,
            },
        );
    }
    let bodies: Vec<String> = (0..SAMPLES).map(|i| body(i * 5 % 100_000)).collect();
    let mut h = histogram();
    for b in &bodies {
        let t0 = Instant::now();
        let k = keys(
            "acme",
            Endpoint::ChatCompletions,
            b.as_bytes(),
            false,
            false,
        )
        .unwrap()
        .exact;
        let hit = shard.get(k, 0).is_some();
        h.record(t0.elapsed().as_nanos() as u64).unwrap();
        assert!(hit);
    }
    report(
        &format!(
            "exact hit: key ({} B request) + lookup, 100k entries",
            bodies[0].len()
        ),
        &h,
    );
    let sampled = bodies[0].replace("\"temperature\":0", "\"temperature\":0.7");
    let mut h = histogram();
    for _ in 0..SAMPLES {
        let t0 = Instant::now();
        let r = keys(
            "acme",
            Endpoint::ChatCompletions,
            sampled.as_bytes(),
            false,
            true,
        );
        h.record(t0.elapsed().as_nanos() as u64).unwrap();
        assert!(r.is_err());
    }
    report("not cacheable (sampled): the cache's whole cost", &h);

    // The semantic cache: prompts of 6 to 14 words drawn from the
    // vocabulary's whole words, in one context.
    let words: Vec<String> = std::fs::read_to_string(dir.join("vocab.txt"))
        .unwrap()
        .lines()
        .skip(2000)
        .filter(|w| w.len() >= 3 && w.chars().all(|c| c.is_ascii_lowercase()))
        .map(str::to_string)
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let prompt = |rng: &mut Rng| {
        let n = 6 + (rng.next() % 9) as usize;
        let mut p = String::from("How do I");
        for _ in 0..n {
            p.push(' ');
            p.push_str(rng.pick(&words));
        }
        p.push('?');
        p
    };
    let context = CacheKey(42);
    let mut ids = Vec::new();
    let mut v = Vec::new();
    let mut stored: Vec<String> = Vec::new();
    let mut semantic = SemanticShard::new(models.table.dims());
    for size in [1_000usize, 10_000, 100_000] {
        let t0 = Instant::now();
        let from = stored.len();
        while stored.len() < size {
            let p = prompt(&mut rng);
            models.table.embed(&p, &mut ids, &mut v);
            let q = Query {
                context,
                prompt: p.clone(),
            };
            semantic.insert(CacheKey(stored.len() as u128), &q, &v, None);
            stored.push(p);
        }
        let per_insert = t0.elapsed().as_secs_f64() * 1e6 / (size - from) as f64;
        // Half the lookups ask a stored prompt with its last word changed
        // (a candidate the guards and the threshold judge), half a new one.
        let mut h = histogram();
        let mut h_embed = histogram();
        let mut found = 0usize;
        let mut out = Vec::new();
        for i in 0..SAMPLES {
            let p = if i % 2 == 0 {
                let s = &stored[(rng.next() % stored.len() as u64) as usize];
                let cut = s.rfind(' ').unwrap_or(s.len());
                format!("{} {}?", &s[..cut], rng.pick(&words))
            } else {
                prompt(&mut rng)
            };
            let q = Query { context, prompt: p };
            let t0 = Instant::now();
            models.table.embed(&q.prompt, &mut ids, &mut v);
            let t1 = Instant::now();
            semantic.candidates(&q, &v, SIMILARITY_MIN_DEFAULT, &mut out);
            h.record(t0.elapsed().as_nanos() as u64).unwrap();
            h_embed.record((t1 - t0).as_nanos() as u64).unwrap();
            found += out.len();
        }
        report(
            &format!(
                "semantic stages a+b, {}k entries in the context (insert {per_insert:.1} µs; {found} candidates passed)",
                size / 1000
            ),
            &h,
        );
        report("  of which the static embedding", &h_embed);
        println!(
            "|   memory: {} bytes per entry (index {} B, prompts and confirming vectors included) | | | | |",
            semantic.bytes() / semantic.len(),
            semantic.bytes()
        );
    }
}
