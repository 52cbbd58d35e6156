//! The request body probe against serde_json: a body the one-pass scan
//! reads is one serde_json reads, to the same fields; `probe` never
//! panics.
#![no_main]
use bursar::proxy::probe::{probe, scan, Probe};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = probe(data);
    if let Some(fast) = scan(data) {
        let slow: Probe<'_> = match serde_json::from_slice(data) {
            Ok(p) => p,
            Err(e) => panic!("the scan read a body serde_json refuses: {e}"),
        };
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
    }
});
