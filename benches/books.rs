//! The books' cost on a request: what a worker does per request to admit it
//! against its lease shard and settle it into its ring. Run: `cargo bench
//! --bench books`.
//!
//! - `worst_case`: the input bound (with the exception scan) and the
//!   worst-case price of a chat body.
//! - `admit_settle`: `LeaseShard::try_admit` at three strict levels plus a
//!   soft one, then `settle` (the common path: the lease covers it, no
//!   message to the ledger).
//! - `ring_push`: publishing the settle in the memory-mapped ring (a consumer
//!   releases slots as they fill, as the ledger thread does).

use std::hint::black_box;

use bursar::books::ring::open_ring;
use bursar::books::shard::{Admission, LeaseShard};
use bursar::budget::Mode;
use bursar::ledger::{Charge, Charges, EntityId};
use bursar::money::Money;
use bursar::prices::PriceTable;
use criterion::Criterion;

const BODY: &[u8] = br#"{"model":"gpt-4o-mini","max_tokens":256,"messages":[{"role":"system","content":"You are a helpful assistant that answers briefly."},{"role":"user","content":"What is the capital of France, and why is it famous? Answer in two sentences."}]}"#;

fn benches(c: &mut Criterion) {
    let prices = PriceTable::shipped(&[]).unwrap();
    let price = prices.get("gpt-4o-mini").unwrap().clone();
    c.bench_function("books/worst_case", |b| {
        b.iter(|| {
            bursar::proxy::books::worst_case(black_box(&price), black_box(BODY), 200_000, 256, 1)
        })
    });

    let levels = [
        (EntityId(0), Mode::Strict),
        (EntityId(1), Mode::Strict),
        (EntityId(2), Mode::Strict),
        (EntityId(3), Mode::Soft),
    ];
    let mut shard = LeaseShard::new(0);
    for (id, _) in &levels[..3] {
        shard.grant(*id, Money::MAX, None);
    }
    let worst = Money::from_picodollars(200_000_000).unwrap();
    let actual = Money::from_picodollars(4_200_000).unwrap();
    c.bench_function("books/admit_settle", |b| {
        b.iter(|| {
            let Admission::Admitted(r) = shard.try_admit(black_box(&levels), worst).unwrap() else {
                unreachable!()
            };
            // Keep the lease from draining: settle takes `actual` out of it.
            black_box(shard.settle(r, Money::ZERO))
        })
    });

    let dir = std::env::temp_dir().join(format!("bursar-bench-books-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mut producer, mut consumer) = open_ring(&dir, 0, 1 << 14).unwrap();
    let mut charges = Charges::new();
    for (id, mode) in levels {
        charges
            .push(Charge {
                entity: id,
                amount: actual,
                from_lease: mode == Mode::Strict,
            })
            .unwrap();
    }
    let mut id = 0u128;
    c.bench_function("books/ring_push", |b| {
        b.iter(|| {
            id += 1;
            if producer.push(id, false, &charges).is_err() {
                // Full: drain as the ledger thread would, then push again.
                consumer.read(usize::MAX, |_, _| {}).unwrap();
                consumer.release_read();
                producer.push(id, false, &charges).unwrap();
            }
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
