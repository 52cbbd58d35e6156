//! The chunked decoder: fed whole or in two pieces it decodes the same
//! bytes or fails; it never writes past its bound nor consumes past its
//! input.
#![no_main]
use bursar::http::chunked::ChunkedDecoder;
use libfuzzer_sys::fuzz_target;

const OUT_MAX: usize = 4096;

/// Decodes `pieces` in turn (each piece's unconsumed rest carried into the
/// next, as the server's read buffer does): the body, or `None` on error.
fn decode(pieces: &[&[u8]]) -> Option<(Vec<u8>, bool)> {
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for piece in pieces {
        pending.extend_from_slice(piece);
        let used = d.decode(&pending, &mut out, OUT_MAX).ok()?;
        assert!(used <= pending.len());
        assert!(out.len() <= OUT_MAX);
        pending.drain(..used);
        if d.is_done() {
            break;
        }
    }
    Some((out, d.is_done()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(rest.len());
    let whole = decode(&[rest]);
    let pieces = decode(&[&rest[..at], &rest[at..]]);
    if let (Some((a, done_a)), Some((b, done_b))) = (&whole, &pieces) {
        if *done_a && *done_b {
            assert_eq!(a, b, "split at {at}");
        }
    }
});
