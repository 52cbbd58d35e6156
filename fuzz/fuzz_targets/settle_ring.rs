//! A settle ring file of any bytes (worker 0's): a layout whose pending
//! settles all check out, or an error naming the file; never a panic or an
//! out-of-bounds read. What passes is consistent: `tail <= head`, at most
//! a ring's worth pending, each settle with 1 to 16 charges.
#![no_main]
use bursar::books::ring::inspect_ring_bytes;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("settle-ring-0.bin");
    if let Ok((layout, pending)) = inspect_ring_bytes(data, path, 0) {
        assert!(layout.tail <= layout.head);
        assert!(layout.head - layout.tail <= u64::from(layout.slots));
        assert_eq!(pending.len() as u64, layout.head - layout.tail);
        for s in &pending {
            assert!((1..=16).contains(&s.charges.len()));
        }
    }
});
