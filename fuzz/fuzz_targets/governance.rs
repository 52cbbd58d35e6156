//! A governance.json of any bytes: an overlay, or an error naming the file;
//! never a panic. An overlay read is written back (sealed with its
//! checksum) to a file that reads as the same overlay.
#![no_main]
use bursar::admin::{seal, Overlay};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("governance.json");
    if let Ok(overlay) = Overlay::parse(data, path) {
        let body = serde_json::to_vec_pretty(&overlay).unwrap();
        let sealed = seal(&body);
        let again = Overlay::parse(&sealed, path).expect("a sealed overlay reads back");
        assert_eq!(serde_json::to_value(&again).unwrap(), serde_json::to_value(&overlay).unwrap());
    }
});
