//! The AWS event-stream decoder (Bedrock's ConverseStream framing). The
//! first byte's bit 0 picks the mode, bits 1-7 seed the pieces.
//!
//! Raw (0): any bytes, fed whole, a byte at a time and in pieces, give the
//! same messages and the same error, never a panic; every message decoded
//! re-encodes to exactly the bytes it came from; with no error, what is not
//! decoded is still buffered; after an error, the decoder stays broken.
//!
//! Built (1): messages with headers of every type, built from the input and
//! encoded, decode to themselves whole and in pieces; any one byte of an
//! encoded message changed makes it an error.
#![no_main]
use bursar::providers::eventstream::{encode_typed, Decoder, HeaderValue, Message};
use bursar::providers::TranslateError;
use libfuzzer_sys::arbitrary::{Arbitrary, Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Pieces of `b`, of 0 to 63 bytes, from `seed`.
fn pieces(b: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((x >> 16) as usize % 64).min(b.len() - i);
        out.push(&b[i..i + n]);
        i += n;
    }
    out.push(&[]);
    out
}

/// Feeds the pieces, taking every message after each: the messages, the
/// error if any, and the bytes left buffered.
fn decode(pieces: &[&[u8]]) -> (Vec<Message>, Option<TranslateError>, usize) {
    let mut d = Decoder::new();
    let mut msgs = Vec::new();
    for p in pieces {
        d.feed(p);
        loop {
            match d.next_message() {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break,
                Err(e) => {
                    // Broken for good: the same error, whatever follows.
                    d.feed(b"more");
                    assert_eq!(d.next_message(), Err(e.clone()));
                    assert_eq!(d.buffered(), 0);
                    return (msgs, Some(e), 0);
                }
            }
        }
    }
    let left = d.buffered();
    (msgs, None, left)
}

fn encode(m: &Message) -> Vec<u8> {
    let headers: Vec<(&str, HeaderValue)> = m
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    encode_typed(&headers, &m.payload)
}

fn raw(bytes: &[u8], seed: u8) {
    let whole = decode(&[bytes]);
    let (msgs, error, left) = &whole;
    let mut at = 0;
    for m in msgs {
        let e = encode(m);
        assert_eq!(
            &bytes[at..at + e.len()],
            &e[..],
            "a message does not re-encode to its bytes"
        );
        at += e.len();
    }
    if error.is_none() {
        assert_eq!(at + left, bytes.len(), "bytes lost");
    }
    let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(whole, decode(&bytewise), "a byte at a time");
    assert_eq!(whole, decode(&pieces(bytes, seed)), "in pieces");
}

/// A header name the wire can carry: 1 to 255 bytes.
fn name(u: &mut Unstructured<'_>) -> ArbResult<String> {
    let mut s = String::arbitrary(u)?;
    if s.is_empty() {
        s.push('n');
    }
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end.max(1));
    if s.is_empty() {
        s.push('n');
    }
    Ok(s)
}

fn value(u: &mut Unstructured<'_>) -> ArbResult<HeaderValue> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => HeaderValue::Bool(true),
        1 => HeaderValue::Bool(false),
        2 => HeaderValue::Byte(u.arbitrary()?),
        3 => HeaderValue::Short(u.arbitrary()?),
        4 => HeaderValue::Int(u.arbitrary()?),
        5 => HeaderValue::Long(u.arbitrary()?),
        6 => HeaderValue::Bytes(u.arbitrary()?),
        7 => HeaderValue::String(u.arbitrary()?),
        8 => HeaderValue::Timestamp(u.arbitrary()?),
        _ => HeaderValue::Uuid(u.arbitrary()?),
    })
}

fn message(u: &mut Unstructured<'_>) -> ArbResult<Message> {
    let n = u.int_in_range(0..=6u8)?;
    let mut headers = Vec::new();
    for _ in 0..n {
        headers.push((name(u)?, value(u)?));
    }
    let len = u.int_in_range(0..=256u16)?;
    let payload = u.bytes(usize::from(len).min(u.len()))?.to_vec();
    Ok(Message { headers, payload })
}

fn built(data: &[u8], seed: u8) {
    let mut u = Unstructured::new(data);
    let Ok(count) = u.int_in_range(1..=3u8) else {
        return;
    };
    let mut msgs = Vec::new();
    for _ in 0..count {
        match message(&mut u) {
            Ok(m) => msgs.push(m),
            Err(_) => break,
        }
    }
    let mut bytes = Vec::new();
    for m in &msgs {
        bytes.extend(encode(m));
    }
    let want = (msgs.clone(), None, 0);
    assert_eq!(decode(&[&bytes]), want, "encoded then decoded");
    assert_eq!(
        decode(&pieces(&bytes, seed)),
        want,
        "encoded then decoded in pieces"
    );
    // One byte changed: the CRCs catch it (a change in the prelude as a bad
    // prelude, elsewhere as a bad message).
    if bytes.is_empty() {
        return;
    }
    let (Ok(pos), Ok(flip)) = (u.arbitrary::<u32>(), u.int_in_range(1..=255u8)) else {
        return;
    };
    let pos = pos as usize % bytes.len();
    bytes[pos] ^= flip;
    let (got, error, _) = decode(&[&bytes]);
    assert!(error.is_some(), "a changed byte at {pos} went unseen");
    // The messages before the changed one still decode.
    let mut at = 0;
    let mut before = 0;
    for m in &msgs {
        at += encode(m).len();
        if at > pos {
            break;
        }
        before += 1;
    }
    assert_eq!(got, msgs[..before], "the messages before the change");
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    if head & 1 == 0 {
        raw(rest, head >> 1);
    } else {
        built(rest, head >> 1);
    }
});
