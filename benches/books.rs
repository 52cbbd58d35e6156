//! The books' cost on a request: what a worker does per request to admit it
//! against its lease shard and settle it into its ring, at the number of
//! levels (budget entities) a request is charged to. Run: `cargo bench
//! --bench books`.
//!
//! - `worst_case`: the input bound (with the exception scan) and the
//!   worst-case price of a chat body.
//! - `admit_settle`: `LeaseShard::try_admit` at four levels (the
//!   organisation's: three strict plus a soft one), then `settle` (the common
//!   path: the lease covers it, no message to the ledger).
//! - `admit_settle_8`: the same at eight levels, the organisation's four
//!   plus the model's four (all strict but the fourth).
//! - `admit_settle_16`: sixteen, the most a request has
//!   ([`LEVELS_MAX`](bursar::proxy::books::LEVELS_MAX)): eight tag levels
//!   more, strict.
//! - `ring_push`, `ring_push_8`, `ring_push_16`: publishing a settle of those
//!   four, eight and sixteen charges in the memory-mapped ring (a consumer
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

/// `N` levels: the organisation's (key, team, customer strict; the provider
/// soft), then the model's four, then tag levels, all strict. An array, so
/// `try_admit` sees a length known at compile time, as the bench always did.
fn levels<const N: usize>() -> [(EntityId, Mode); N] {
    const { assert!(N <= bursar::proxy::books::LEVELS_MAX) };
    std::array::from_fn(|i| {
        let mode = if i == 3 { Mode::Soft } else { Mode::Strict };
        (EntityId(i as u32), mode)
    })
}

/// `try_admit` at `N` levels, then `settle` (the lease covers it).
fn admit_settle<const N: usize>(c: &mut Criterion, name: &str, worst: Money) {
    let levels = levels::<N>();
    let mut shard = LeaseShard::new(0);
    for (id, mode) in levels {
        if mode == Mode::Strict {
            shard.grant(id, Money::MAX, None);
        }
    }
    c.bench_function(name, |b| {
        b.iter(|| {
            let Admission::Admitted(r) = shard.try_admit(black_box(&levels), worst).unwrap() else {
                unreachable!()
            };
            // Keep the lease from draining: settle takes `actual` out of it.
            black_box(shard.settle(r, Money::ZERO))
        })
    });
}

/// The settle of a request at `N` levels, as `ring_push` publishes it.
fn charges<const N: usize>(actual: Money) -> Charges {
    let mut charges = Charges::new();
    for (entity, mode) in levels::<N>() {
        charges
            .push(Charge {
                entity,
                amount: actual,
                from_lease: mode == Mode::Strict,
            })
            .unwrap();
    }
    charges
}

fn benches(c: &mut Criterion) {
    let prices = PriceTable::shipped(&[]).unwrap();
    let price = prices.get("gpt-4o-mini").unwrap().clone();
    c.bench_function("books/worst_case", |b| {
        b.iter(|| {
            bursar::proxy::books::worst_case(black_box(&price), black_box(BODY), 200_000, 256, 1)
        })
    });

    let worst = Money::from_picodollars(200_000_000).unwrap();
    let actual = Money::from_picodollars(4_200_000).unwrap();
    admit_settle::<4>(c, "books/admit_settle", worst);
    admit_settle::<8>(c, "books/admit_settle_8", worst);
    admit_settle::<16>(c, "books/admit_settle_16", worst);

    let dir = std::env::temp_dir().join(format!("bursar-bench-books-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mut producer, mut consumer) = open_ring(&dir, 0, 1 << 14).unwrap();
    let mut id = 0u128;
    let settles = [
        ("books/ring_push", charges::<4>(actual)),
        ("books/ring_push_8", charges::<8>(actual)),
        ("books/ring_push_16", charges::<16>(actual)),
    ];
    for (name, charges) in settles {
        c.bench_function(name, |b| {
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
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
