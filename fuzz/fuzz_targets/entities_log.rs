//! An entities.log of any bytes: entries whose ids run 0, 1, 2, ... with
//! names unique per kind, or an error naming the line; never a panic. A
//! file whose every line carries its checksum is exactly its entries
//! written again.
#![no_main]
use bursar::books::registry::{line, parse};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = parse(data, Path::new("entities.log")) {
        assert_eq!(file.whole + file.torn_bytes, data.len());
        let mut seen = HashSet::new();
        let mut again = String::new();
        for (id, (kind, name)) in file.names.iter().enumerate() {
            assert!(seen.insert((*kind, name.clone())), "a name twice");
            again.push_str(&line(id as u32, *kind, name));
        }
        if file.unchecked == 0 {
            assert_eq!(again.as_bytes(), &data[..file.whole]);
        }
    }
});
