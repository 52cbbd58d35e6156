//! A journal segment file of any bytes: scanned into whole records, a torn
//! tail, or an error naming the file; never a panic.
#![no_main]
use bursar::ledger::journal::scan_segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("bursar-fuzz-journal-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("journal-00000000000000000001.log");
    std::fs::write(&path, data).unwrap();
    if let Ok(scan) = scan_segment(&path, Some(1)) {
        assert!(scan.valid_len <= data.len() as u64);
    }
});
