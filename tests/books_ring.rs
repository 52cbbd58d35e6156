//! The settle ring: cross-thread order and content, crash recovery of
//! published slots, a full ring, corruption.

use std::path::PathBuf;

use bursar::books::ring::{
    open_ring, ring_file_name, PushError, RingError, RingFull, HEADER_BYTES, SLOT_BYTES,
};
use bursar::ledger::{Charge, Charges, EntityId};
use bursar::money::Money;

fn temp_dir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("bursar-books-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Charges derived from `i`, so the consumer can check content.
fn charges_for(i: u64) -> Charges {
    let levels = 1 + (i % 4) as usize;
    let mut c = Charges::new();
    for l in 0..levels {
        c.push(Charge {
            entity: EntityId(l as u32 * 10 + (i % 7) as u32),
            amount: Money::from_picodollars(i as i128 * 1_000 + l as i128).unwrap(),
            from_lease: (i + l as u64).is_multiple_of(2),
        })
        .unwrap();
    }
    c
}

#[test]
fn produce_and_consume_across_two_threads_in_order() {
    let dir = temp_dir("ring-threads");
    let (mut producer, mut consumer) = open_ring(&dir, 3, 1024).unwrap();
    const N: u64 = 200_000;
    let writer = std::thread::spawn(move || {
        let mut full = 0u64;
        for i in 0..N {
            loop {
                match producer.push(
                    u128::from(i) << 64 | 7,
                    i.is_multiple_of(3),
                    &charges_for(i),
                ) {
                    Ok(pos) => {
                        assert_eq!(pos, i);
                        break;
                    }
                    Err(PushError::Full(RingFull { slots })) => {
                        assert_eq!(slots, 1024);
                        full += 1;
                        std::thread::yield_now();
                    }
                    Err(e @ PushError::TooManyCharges { .. }) => panic!("{e}"),
                }
            }
        }
        full
    });
    let mut next = 0u64;
    while next < N {
        let n = consumer
            .read(100, |pos, rec| {
                assert_eq!(pos, next);
                assert_eq!(rec.request_id, u128::from(next) << 64 | 7);
                assert_eq!(rec.worker, 3);
                assert_eq!(rec.estimated, next.is_multiple_of(3));
                assert_eq!(rec.charges, charges_for(next));
                next += 1;
            })
            .unwrap();
        consumer.release_read();
        if n == 0 {
            std::thread::yield_now();
        }
    }
    let full = writer.join().unwrap();
    assert_eq!(consumer.unread(), 0);
    assert_eq!(consumer.unreleased(), 0);
    eprintln!("ring was full {full} times");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn published_slots_survive_a_crash_without_any_flush() {
    let dir = temp_dir("ring-crash");
    let (mut producer, mut consumer) = open_ring(&dir, 0, 64).unwrap();
    // A first lap, consumed and released, so the slots hold stale data.
    for i in 0..50 {
        producer.push(i, false, &charges_for(i as u64)).unwrap();
    }
    consumer.read(usize::MAX, |_, _| {}).unwrap();
    consumer.release_read();
    // Then 40 more, published and not consumed; and 10 read but not released
    // (the ledger read them, the journal had not made them durable).
    for i in 50..90 {
        producer.push(i, true, &charges_for(i as u64)).unwrap();
    }
    consumer.read(10, |_, _| {}).unwrap();
    // "SIGKILL": drop both ends; no msync, no flush, no release.
    drop(producer);
    drop(consumer);
    let (mut producer, mut consumer) = open_ring(&dir, 0, 64).unwrap();
    assert_eq!(consumer.unread(), 40);
    let mut got = Vec::new();
    consumer
        .read(usize::MAX, |pos, rec| got.push((pos, *rec)))
        .unwrap();
    assert_eq!(got.len(), 40);
    for (k, (pos, rec)) in got.iter().enumerate() {
        let i = 50 + k as u64;
        assert_eq!(*pos, i);
        assert_eq!(rec.request_id, u128::from(i));
        assert!(rec.estimated);
        assert_eq!(rec.charges, charges_for(i));
    }
    // Appends continue after the recovered head.
    assert_eq!(producer.push(1000, false, &charges_for(1)).unwrap(), 90);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_full_ring_refuses_until_the_consumer_releases() {
    let dir = temp_dir("ring-full");
    let (mut producer, mut consumer) = open_ring(&dir, 1, 16).unwrap();
    for i in 0..16 {
        producer.push(i, false, &charges_for(1)).unwrap();
    }
    assert_eq!(
        producer.push(16, false, &charges_for(1)),
        Err(PushError::Full(RingFull { slots: 16 }))
    );
    // Read is not release: still full.
    assert_eq!(consumer.read(4, |_, _| {}).unwrap(), 4);
    assert!(producer.push(16, false, &charges_for(1)).is_err());
    consumer.release_read();
    for i in 16..20 {
        producer.push(i, false, &charges_for(1)).unwrap();
    }
    assert!(producer.push(20, false, &charges_for(1)).is_err());
    assert_eq!(consumer.unread(), 16);
    assert_eq!(consumer.unreleased(), 16);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_slot_is_an_error_naming_it() {
    let dir = temp_dir("ring-corrupt");
    let (mut producer, consumer) = open_ring(&dir, 2, 16).unwrap();
    for i in 0..3 {
        producer.push(i, false, &charges_for(i as u64)).unwrap();
    }
    drop((producer, consumer));
    let path = dir.join(ring_file_name(2));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER_BYTES + SLOT_BYTES + 40] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let (_producer, mut consumer) = open_ring(&dir, 2, 16).unwrap();
    let mut seen = Vec::new();
    let err = consumer
        .read(usize::MAX, |pos, _| seen.push(pos))
        .unwrap_err();
    assert_eq!(seen, [0]);
    assert!(
        matches!(
            err,
            RingError::Corrupt {
                slot: 1,
                pos: 1,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("settle-ring-2.bin") && msg.contains("slot 1"),
        "{msg}"
    );
    // The cursor stays on the bad slot: nothing after it is skipped silently.
    assert_eq!(consumer.read_cursor(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_header_is_refused() {
    let dir = temp_dir("ring-header");
    drop(open_ring(&dir, 4, 16).unwrap());
    // Another worker's file under this worker's name.
    std::fs::rename(dir.join(ring_file_name(4)), dir.join(ring_file_name(5))).unwrap();
    let err = open_ring(&dir, 5, 16).unwrap_err();
    assert!(err.to_string().contains("belongs to worker 4"), "{err}");
    // Head behind tail.
    let path = dir.join(ring_file_name(5));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[16] = 5; // worker 5, then fix the header crc
    let crc = crc32c::crc32c(&bytes[0..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    // A damaged tail (it carries a check of its value): moved forward it
    // would skip pending settles.
    let mut damaged = bytes.clone();
    damaged[128] ^= 9;
    std::fs::write(&path, &damaged).unwrap();
    let err = open_ring(&dir, 5, 16).unwrap_err();
    assert!(err.to_string().contains("tail word"), "{err}");
    // Head past tail by more than the ring holds.
    bytes[64] = 100; // head 100, tail 0
    std::fs::write(&path, &bytes).unwrap();
    let err = open_ring(&dir, 5, 16).unwrap_err();
    assert!(err.to_string().contains("inconsistent"), "{err}");
    // A truncated file.
    std::fs::write(&path, &bytes[..HEADER_BYTES + 10]).unwrap();
    assert!(open_ring(&dir, 5, 16).is_err());
    // Not a power of two.
    assert!(open_ring(&dir, 6, 12).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
