//! A snapshot of any bytes: books that pass every check, or an error naming
//! the file; never a panic (the body is bytecheck-validated rkyv).
#![no_main]
use bursar::ledger::snapshot::read_snapshot_bytes;
use bursar::ledger::StateConfig;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let config = StateConfig {
        workers: 2,
        settled_ids_max: 1024,
        cluster: false,
    };
    let path = Path::new("snapshot-00000000000000000001.rkyv");
    if let Ok(state) = read_snapshot_bytes(data, path, config) {
        state.check_invariants();
    }
});
