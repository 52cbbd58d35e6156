//! A journal segment of any bytes: scanned into whole, consecutive records,
//! a torn tail, or an error naming the file; never a panic. Every record
//! read re-encodes to the bytes it was read from.
#![no_main]
use bursar::ledger::journal::{encode_record, scan_bytes};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("journal-00000000000000000001.log");
    if let Ok(scan) = scan_bytes(data, path, Some(1)) {
        assert!(scan.valid_len <= data.len() as u64);
        let mut again = Vec::new();
        for (i, r) in scan.records.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1, "records are consecutive from the first");
            encode_record(r, &mut again);
        }
        assert_eq!(&again[..], &data[..scan.valid_len as usize]);
        if let Some(torn) = scan.torn {
            assert_eq!(torn.offset, scan.valid_len);
            assert_eq!(torn.offset + torn.bytes, data.len() as u64);
        } else {
            assert_eq!(scan.valid_len + scan.zeros, data.len() as u64);
        }
    }
});
