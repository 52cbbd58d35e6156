//! The journal's record decoder: damaged bytes give an error, never a
//! panic; a record that decodes encodes back to a frame that decodes to
//! the same record.
#![no_main]
use bursar::ledger::journal::{decode_body, encode_record};
use libfuzzer_sys::fuzz_target;

/// A frame's header: length u32, body length u32, crc u32 (see the
/// module's format); the body follows.
const FRAME_HEADER_BYTES: usize = 12;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = decode_body(data) else {
        return;
    };
    let mut frame = Vec::new();
    encode_record(&record, &mut frame);
    assert!(frame.len() > FRAME_HEADER_BYTES);
    let again = decode_body(&frame[FRAME_HEADER_BYTES..]).expect("an encoded record decodes");
    assert_eq!(again, record);
});
