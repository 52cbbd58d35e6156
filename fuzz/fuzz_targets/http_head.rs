//! The request head parser: any bytes give a head, "more", or an error in
//! OpenAI's shape; never a panic; a parsed head's ranges lie inside it.
#![no_main]
use bursar::http::request::{parse_head, RequestHead};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut head = RequestHead::default();
    if let Ok(true) = parse_head(data, 16 * 1024, 1 << 20, &mut head) {
        // Reading every part back stays inside the buffer.
        let _ = head.method();
        let _ = head.framing();
        let _ = head.target(data);
        let _ = head.path(data);
        let _ = head.header(data, "content-length");
    }
});
