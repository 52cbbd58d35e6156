//! The semantic cache's vector search (`src/cache/ann.rs`). Run: `cargo
//! bench --bench ann`.
//!
//! Data: 256-dimension unit vectors. Random ones are a poor model of text
//! (every pair nearly orthogonal, no neighbourhoods), so most figures use
//! clustered data: 2,000 random centres, each point a centre plus gaussian
//! noise (cosine to its centre about 0.95). A query is a stored point plus a
//! little noise (cosine about 0.995 to it): the right answer is known.
//!
//! - `search/brute/{1k,10k,100k}`: the exact scan (what a flat tier does).
//! - `search/hnsw/{1k,10k,100k}`: the graph, `ef_search` at its default.
//! - `search/hnsw_random/100k`: the graph on random vectors.
//!
//! Printed after: per-call p50/p99 of both searches from 500 to 100k
//! entries (where the graph starts to win), recall@1 at 100k for several
//! `ef_search`, inserts into the 100k graph one by one, 150,000 pairs of
//! steady churn at 100k (remove the oldest, insert a new one, look one up:
//! writes and lookups with a rebuild running and without), and memory per
//! entry.
//!
//! `ANN_TUNE=<entries> cargo bench --bench ann` prints only what a change
//! of the graph's constants needs: distances per insert and, per
//! `ef_search`, recall@1, latency and distances per search.
//! `ANN_CHURN=<entries>` prints only the churn figures, over three times
//! the entries.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bursar::cache::ann::{Options, VectorIndex, MAINTAIN_NODES_MAX};
use criterion::Criterion;

const DIMS: usize = 256;
const CENTERS: usize = 2_000;
const QUERIES: usize = 2_000;

/// xorshift64*: deterministic data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Gaussian (Box-Muller).
    fn normal(&mut self) -> f32 {
        let u1 = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// `base` (or the origin) plus noise of total variance `spread`,
    /// normalised.
    fn near(&mut self, base: Option<&[f32]>, spread: f32) -> Vec<f32> {
        let sd = (spread / DIMS as f32).sqrt();
        let mut v: Vec<f32> = (0..DIMS)
            .map(|i| base.map_or(0.0, |b| b[i]) + sd * self.normal())
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }
}

struct Data {
    points: Vec<Vec<f32>>,
    /// (the point it copies, the query).
    queries: Vec<(u64, Vec<f32>)>,
}

fn clustered(rng: &mut Rng, centers: &[Vec<f32>], n: usize) -> Data {
    let points: Vec<Vec<f32>> = (0..n)
        .map(|_| {
            let c = &centers[rng.below(centers.len())];
            rng.near(Some(c), 0.1)
        })
        .collect();
    let queries = noisy_copies(rng, &points);
    Data { points, queries }
}

fn random(rng: &mut Rng, n: usize) -> Data {
    let points: Vec<Vec<f32>> = (0..n).map(|_| rng.near(None, 1.0)).collect();
    let queries = noisy_copies(rng, &points);
    Data { points, queries }
}

fn noisy_copies(rng: &mut Rng, points: &[Vec<f32>]) -> Vec<(u64, Vec<f32>)> {
    (0..QUERIES)
        .map(|_| {
            let i = rng.below(points.len());
            (i as u64, rng.near(Some(&points[i]), 0.01))
        })
        .collect()
}

/// The index of `data`, every rebuild finished; and the mean insert time.
fn build(data: &Data, o: Options) -> (VectorIndex, Duration) {
    let mut idx = VectorIndex::with_options(DIMS, o);
    let t = Instant::now();
    for (i, v) in data.points.iter().enumerate() {
        idx.insert(i as u64, v).expect("a valid vector");
    }
    while idx.maintain(MAINTAIN_NODES_MAX) {}
    let per = t.elapsed() / data.points.len() as u32;
    (idx, per)
}

fn graph_always() -> Options {
    Options {
        flat_entries_max: 0,
        ..Options::default()
    }
}

/// p50 and p99 of one call per query, timed one by one.
fn latencies(data: &Data, mut f: impl FnMut(&[f32], &mut Vec<(u64, f32)>)) -> (Duration, Duration) {
    let mut out = Vec::new();
    let mut t: Vec<Duration> = data
        .queries
        .iter()
        .map(|(_, q)| {
            let s = Instant::now();
            f(q, &mut out);
            s.elapsed()
        })
        .collect();
    t.sort_unstable();
    (t[t.len() / 2], t[t.len() * 99 / 100])
}

/// recall@1 against the copied point and agreement with brute force.
fn recall(idx: &mut VectorIndex, data: &Data) -> (f64, f64) {
    let (mut out, mut exact) = (Vec::new(), Vec::new());
    let (mut hits, mut agree) = (0, 0);
    for (want, q) in &data.queries {
        idx.search(q, 1, 0.0, &mut out).expect("valid");
        idx.search_exact(q, 1, 0.0, &mut exact).expect("valid");
        hits += usize::from(out.first().map(|r| r.0) == Some(*want));
        agree += usize::from(out.first().map(|r| r.0) == exact.first().map(|r| r.0));
    }
    let n = data.queries.len() as f64;
    (hits as f64 / n, agree as f64 / n)
}

fn us(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1_000.0
}

fn bench_search(c: &mut Criterion, name: &str, idx: &mut VectorIndex, data: &Data) {
    let mut out = Vec::new();
    let mut i = 0;
    c.bench_function(&format!("search/brute/{name}"), |b| {
        b.iter(|| {
            i = (i + 1) % data.queries.len();
            idx.search_exact(black_box(&data.queries[i].1), 1, 0.8, &mut out)
                .expect("valid");
            out.len()
        })
    });
    c.bench_function(&format!("search/hnsw/{name}"), |b| {
        b.iter(|| {
            i = (i + 1) % data.queries.len();
            idx.search(black_box(&data.queries[i].1), 1, 0.8, &mut out)
                .expect("valid");
            out.len()
        })
    });
}

/// `ANN_TUNE=<entries>`: only the figures a change of the graph's
/// constants needs (distances are deterministic where timings are noisy).
fn tune(rng: &mut Rng, centers: &[Vec<f32>], n: usize) {
    let data = clustered(rng, centers, n);
    let (mut idx, insert) = build(&data, graph_always());
    let (mut sum, mut max) = (0, 0);
    // Replacing entries: inserts into the built graph.
    for (i, v) in data.points.iter().take(5_000).enumerate() {
        idx.insert(i as u64, v).expect("valid");
        sum += idx.last_distances();
        max = max.max(idx.last_distances());
    }
    println!(
        "{n} entries: mean insert while building {:.1} µs; {} distances per insert (max {max})",
        us(insert),
        sum / data.points.len().min(5_000)
    );
    for ef in [16, 24, 32, 40, 48, 64] {
        idx.set_ef_search(ef);
        let (r, _) = recall(&mut idx, &data);
        let mut distances = 0;
        let (p50, p99) = latencies(&data, |q, out| {
            idx.search(q, 1, 0.8, out).expect("valid");
            distances += idx.last_distances();
        });
        println!(
            "ef_search {ef}: recall@1 {r:.4}, p50 {:.1} µs, p99 {:.1} µs, {} distances per search",
            us(p50),
            us(p99),
            distances / data.queries.len()
        );
    }
}

/// Steady churn: the oldest entry goes, a new one comes.
struct Churn {
    live: std::collections::VecDeque<(u64, Vec<f32>)>,
    next_id: u64,
}

impl Churn {
    fn new(points: &[Vec<f32>], next_id: u64) -> Churn {
        let live = points
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v.clone()))
            .collect();
        Churn { live, next_id }
    }

    /// Removes the oldest entry and inserts `v`; their distances.
    fn step(&mut self, idx: &mut VectorIndex, v: Vec<f32>) -> usize {
        let Some((old, _)) = self.live.pop_front() else {
            return 0;
        };
        idx.remove(old);
        let d = idx.last_distances();
        self.next_id += 1;
        idx.insert(self.next_id, &v).expect("valid");
        self.live.push_back((self.next_id, v));
        d + idx.last_distances()
    }
}

/// A new clustered point.
fn fresh_point(rng: &mut Rng, centers: &[Vec<f32>]) -> Vec<f32> {
    let c = &centers[rng.below(centers.len())];
    rng.near(Some(c), 0.1)
}

/// `pairs` churn steps, each followed by a lookup of a live entry's noisy
/// copy: the writes' and the lookups' cost (time and distances) and
/// recall, with a rebuild running and without.
fn churn_stats(
    idx: &mut VectorIndex,
    churn: &mut Churn,
    rng: &mut Rng,
    centers: &[Vec<f32>],
    pairs: usize,
) -> Vec<String> {
    // (rebuilding, write time, write distances, lookup time, lookup distances, hit)
    let mut rows = Vec::with_capacity(pairs);
    let mut out = Vec::new();
    let rebuilds = idx.rebuilds();
    for _ in 0..pairs {
        let rebuilding = idx.is_rebuilding();
        let v = fresh_point(rng, centers);
        let s = Instant::now();
        let wd = churn.step(idx, v);
        let w = s.elapsed();
        let (qid, base) = &churn.live[rng.below(churn.live.len())];
        let qid = *qid;
        let q = rng.near(Some(base), 0.01);
        let s = Instant::now();
        idx.search(&q, 1, 0.8, &mut out).expect("valid");
        let t = s.elapsed();
        let hit = out.first().map(|r| r.0) == Some(qid);
        rows.push((rebuilding, w, wd, t, idx.last_distances(), hit));
    }
    let all = rows.iter().map(|x| x.1).sum::<Duration>() / pairs.max(1) as u32;
    let mut report = vec![format!(
        "churn at {} entries, {pairs} pairs (remove the oldest, insert one, look one up): {} rebuilds, a write (remove + insert) {:.0} µs on average; {} bytes/entry at the end",
        idx.len(),
        idx.rebuilds() - rebuilds,
        us(all),
        idx.bytes() / idx.len()
    )];
    for phase in [false, true] {
        let mut r: Vec<_> = rows.iter().filter(|x| x.0 == phase).collect();
        let len = r.len();
        if len == 0 {
            continue;
        }
        let wd = r.iter().map(|x| x.2).sum::<usize>() / len;
        let sd = r.iter().map(|x| x.4).sum::<usize>() / len;
        let hits = r.iter().filter(|x| x.5).count() as f64 / len as f64;
        let wmean = r.iter().map(|x| x.1).sum::<Duration>() / len as u32;
        r.sort_by_key(|x| x.1);
        let (w50, w99, wmax) = (r[len / 2].1, r[len * 99 / 100].1, r[len - 1].1);
        r.sort_by_key(|x| x.3);
        let (s50, s99) = (r[len / 2].3, r[len * 99 / 100].3);
        report.push(format!(
            "  {} ({len} pairs): write (remove + insert) mean {:.0} µs, p50 {:.0}, p99 {:.0}, max {:.0}, {wd} distances; lookup p50 {:.1} µs, p99 {:.1}, {sd} distances, recall@1 {hits:.4}",
            if phase { "rebuilding" } else { "no rebuild" },
            us(wmean), us(w50), us(w99), us(wmax), us(s50), us(s99)
        ));
    }
    report
}

/// `ANN_CHURN=<entries>`: [`churn_stats`] alone, over three times the
/// entries.
fn churn_tune(rng: &mut Rng, centers: &[Vec<f32>], n: usize) {
    let data = clustered(rng, centers, n);
    let (mut idx, _) = build(&data, Options::default());
    let mut churn = Churn::new(&data.points, n as u64);
    for line in churn_stats(&mut idx, &mut churn, rng, centers, 3 * n) {
        println!("{line}");
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut rng = Rng(0x00c0_ffee);
    let centers: Vec<Vec<f32>> = (0..CENTERS).map(|_| rng.near(None, 1.0)).collect();
    let mut report = Vec::new();
    if let Some(n) = std::env::var("ANN_CHURN").ok().and_then(|n| n.parse().ok()) {
        churn_tune(&mut rng, &centers, n);
        return;
    }
    if let Some(n) = std::env::var("ANN_TUNE").ok().and_then(|n| n.parse().ok()) {
        tune(&mut rng, &centers, n);
        return;
    }

    // Where the graph starts to win.
    report.push(
        "entries | brute p50 / p99 µs | hnsw p50 / p99 µs (distances per search) | bytes/entry"
            .to_string(),
    );
    let mut built = Vec::new();
    for n in [500, 1_000, 2_000, 4_000, 10_000, 100_000] {
        let data = clustered(&mut rng, &centers, n);
        let (mut idx, insert) = build(&data, graph_always());
        let brute = latencies(&data, |q, out| {
            idx.search_exact(q, 1, 0.8, out).expect("valid")
        });
        let mut distances = 0;
        let hnsw = latencies(&data, |q, out| {
            idx.search(q, 1, 0.8, out).expect("valid");
            distances += idx.last_distances();
        });
        report.push(format!(
            "{n} | {:.1} / {:.1} | {:.1} / {:.1} ({} distances) | {} (mean insert while building {:.1} µs)",
            us(brute.0),
            us(brute.1),
            us(hnsw.0),
            us(hnsw.1),
            distances / data.queries.len(),
            idx.bytes() / idx.len(),
            us(insert),
        ));
        if [1_000, 10_000, 100_000].contains(&n) {
            built.push((n, idx, data));
        }
    }

    // The default options at 100k (flat first, then the incremental build):
    // what the cache runs.
    let (_, idx100, data100) = built.last_mut().expect("built");
    let (mut idx, insert) = build(data100, Options::default());
    let (r, a) = recall(&mut idx, data100);
    report.push(format!(
        "100k clustered, default options: recall@1 {r:.4} (agrees with brute force {a:.4}), mean insert {:.1} µs, {} bytes/entry",
        us(insert),
        idx.bytes() / idx.len()
    ));
    for ef in [16, 32, 48, 64, 96, 128] {
        idx100.set_ef_search(ef);
        let (r, a) = recall(idx100, data100);
        let (p50, p99) = latencies(data100, |q, out| {
            idx100.search(q, 1, 0.8, out).expect("valid")
        });
        report.push(format!(
            "100k clustered, ef_search {ef}: recall@1 {r:.4} (agrees with brute force {a:.4}), p50 {:.1} µs, p99 {:.1} µs",
            us(p50),
            us(p99)
        ));
    }
    idx100.set_ef_search(Options::default().ef_search);
    drop(idx);

    for (n, idx, data) in &mut built {
        bench_search(&mut c, &format!("{}k", *n / 1_000), idx, data);
    }

    let random100 = random(&mut rng, 100_000);
    let (mut ridx, rinsert) = build(&random100, Options::default());
    for ef in [32, 128] {
        ridx.set_ef_search(ef);
        let (r, a) = recall(&mut ridx, &random100);
        let (p50, p99) = latencies(&random100, |q, out| {
            ridx.search(q, 1, 0.8, out).expect("valid")
        });
        report.push(format!(
            "100k random, ef_search {ef}: recall@1 {r:.4} (agrees with brute force {a:.4}), p50 {:.1} µs, p99 {:.1} µs, mean insert {:.1} µs",
            us(p50),
            us(p99),
            us(rinsert)
        ));
    }
    ridx.set_ef_search(Options::default().ef_search);
    let mut out = Vec::new();
    let mut i = 0;
    c.bench_function("search/hnsw_random/100k", |b| {
        b.iter(|| {
            i = (i + 1) % random100.queries.len();
            ridx.search(black_box(&random100.queries[i].1), 1, 0.8, &mut out)
                .expect("valid");
            out.len()
        })
    });
    drop(ridx);

    // Writes on the 100k clustered graph.
    let (_, idx, data) = built.last_mut().expect("built");
    let mut next_id = data.points.len() as u64;
    // Inserts into the 100k graph, each timed (criterion's iteration count
    // would grow the index without bound), then removed again.
    let first = next_id + 1;
    let (mut t, mut distances) = (Vec::new(), 0);
    for _ in 0..5_000 {
        next_id += 1;
        let v = fresh_point(&mut rng, &centers);
        let s = Instant::now();
        idx.insert(next_id, &v).expect("valid");
        t.push(s.elapsed());
        distances += idx.last_distances();
    }
    let mean = t.iter().sum::<Duration>() / t.len() as u32;
    t.sort_unstable();
    report.push(format!(
        "insert into the 100k graph: mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs, {} distances per insert",
        us(mean),
        us(t[t.len() / 2]),
        us(t[t.len() * 99 / 100]),
        distances / t.len()
    ));
    for id in first..=next_id {
        idx.remove(id);
    }
    // Steady state: the oldest live entry goes, a new one comes.
    // Steady churn over enough pairs for several rebuilds, timed call by
    // call (criterion's samples would land in or out of a rebuild by
    // chance), each new entry distinct so the lookups' recall means
    // something.
    let mut churn = Churn::new(&data.points, next_id);
    report.extend(churn_stats(idx, &mut churn, &mut rng, &centers, 150_000));

    c.final_summary();
    println!();
    for line in report {
        println!("{line}");
    }
}
