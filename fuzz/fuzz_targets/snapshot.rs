//! A snapshot file of any bytes: books that pass every check, or an error
//! naming the file; never a panic (the body is bytecheck-validated rkyv).
#![no_main]
use bursar::ledger::snapshot::read_snapshot;
use bursar::ledger::StateConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("bursar-fuzz-snapshot-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("snapshot-00000000000000000001.rkyv");
    std::fs::write(&path, data).unwrap();
    let config = StateConfig {
        workers: 2,
        settled_ids_max: 1024,
        cluster: false,
    };
    if let Ok(state) = read_snapshot(&path, config) {
        state.check_invariants();
    }
});
