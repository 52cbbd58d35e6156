//! An incremental decoder of the AWS event-stream binary framing
//! (`application/vnd.amazon.eventstream`), in which Bedrock's ConverseStream
//! answers. Pure: the caller [`Decoder::feed`]s each upstream read and takes
//! [`Decoder::next_message`] until it returns `None`.
//!
//! One message on the wire (all integers big-endian):
//!
//! ```text
//! total length u32 | headers length u32 | prelude CRC32 u32   (the prelude)
//! headers (headers length bytes) | payload | message CRC32 u32
//! ```
//!
//! The prelude CRC covers the first 8 bytes; the message CRC everything
//! before it. A header is `name length u8 | name | type u8 | value`, the
//! value by type: 0 true, 1 false (no bytes), 2 byte (1), 3 short (2), 4 int
//! (4), 5 long (8), 6 byte array and 7 string (u16 length, then the bytes),
//! 8 timestamp (8, milliseconds since the epoch), 9 UUID (16).
//!
//! Written here rather than taken from `aws-smithy-eventstream`: that crate's
//! `MessageFrameDecoder` waits for the whole declared length before checking
//! the prelude CRC and sets no limit on it, so a corrupt or hostile length
//! would make the caller buffer up to 4 GiB; it also needs `aws-smithy-types`
//! with its HTTP body features and is a 0.x API. This decoder checks the
//! prelude as soon as its 12 bytes are in, refuses messages over
//! [`EVENT_MESSAGE_BYTES_MAX`], and verifies both CRCs (with `crc32fast`).

use super::TranslateError;

/// The most bytes one message may have, prelude and CRCs included: AWS's own
/// limit for an event-stream message (16 MiB). A longer declared length is an
/// error before its bytes are buffered.
pub const EVENT_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

const PRELUDE_BYTES: usize = 12;
const CRC_BYTES: usize = 4;
/// The shortest message: a prelude and the message CRC.
const MESSAGE_BYTES_MIN: usize = PRELUDE_BYTES + CRC_BYTES;

/// A header's value, by its wire type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(Vec<u8>),
    String(String),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
}

impl HeaderValue {
    fn type_byte(&self) -> u8 {
        match self {
            HeaderValue::Bool(true) => 0,
            HeaderValue::Bool(false) => 1,
            HeaderValue::Byte(_) => 2,
            HeaderValue::Short(_) => 3,
            HeaderValue::Int(_) => 4,
            HeaderValue::Long(_) => 5,
            HeaderValue::Bytes(_) => 6,
            HeaderValue::String(_) => 7,
            HeaderValue::Timestamp(_) => 8,
            HeaderValue::Uuid(_) => 9,
        }
    }
}

/// One decoded message: its headers in wire order, and its payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Vec<u8>,
}

impl Message {
    /// The first header named `name`, when it is a string.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// `:event-type` (`messageStart`, `contentBlockDelta`, ...).
    pub fn event_type(&self) -> Option<&str> {
        self.header_str(":event-type")
    }

    /// `:message-type`: `event`, `exception` or `error`.
    pub fn message_type(&self) -> Option<&str> {
        self.header_str(":message-type")
    }

    /// `:exception-type` of an `exception` message (`throttlingException`, ...).
    pub fn exception_type(&self) -> Option<&str> {
        self.header_str(":exception-type")
    }

    /// `:content-type` of the payload (`application/json`).
    pub fn content_type(&self) -> Option<&str> {
        self.header_str(":content-type")
    }
}

fn err(message: impl Into<String>) -> TranslateError {
    TranslateError::new("eventstream", message)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Decodes messages from bytes fed in pieces of any size.
///
/// After an error (bad length, CRC mismatch, malformed headers) the stream
/// cannot be resynchronised: every later [`Decoder::next_message`] returns
/// the same error.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already decoded.
    start: usize,
    /// The current message's total length, once its prelude checked out.
    expected: Option<usize>,
    broken: Option<TranslateError>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends upstream bytes. Call [`Decoder::next_message`] until it
    /// returns `None` after each feed: the buffer is bounded by the message
    /// being assembled only when the complete ones are taken out.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.broken.is_some() {
            return;
        }
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes fed but not yet returned in a message: nonzero at the end of the
    /// stream means it was cut inside a message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message, `None` until more bytes are fed.
    pub fn next_message(&mut self) -> Result<Option<Message>, TranslateError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        match self.decode() {
            Ok(m) => Ok(m),
            Err(e) => {
                self.broken = Some(e.clone());
                self.buf = Vec::new();
                self.start = 0;
                Err(e)
            }
        }
    }

    fn decode(&mut self) -> Result<Option<Message>, TranslateError> {
        let avail = &self.buf[self.start..];
        let total = match self.expected {
            Some(t) => t,
            None => {
                if avail.len() < PRELUDE_BYTES {
                    return Ok(None);
                }
                let t = check_prelude(&avail[..PRELUDE_BYTES])?;
                self.expected = Some(t);
                t
            }
        };
        if avail.len() < total {
            return Ok(None);
        }
        let msg = parse_message(&avail[..total])?;
        self.expected = None;
        self.start += total;
        // Keep the buffer from growing with consumed bytes: move the tail
        // down once the consumed part dominates.
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(msg))
    }
}

/// Checks a prelude; the message's total length.
fn check_prelude(p: &[u8]) -> Result<usize, TranslateError> {
    let crc = crc32fast::hash(&p[..8]);
    if crc != be_u32(&p[8..12]) {
        return Err(err("prelude CRC mismatch"));
    }
    let total = be_u32(&p[0..4]) as usize;
    let headers = be_u32(&p[4..8]) as usize;
    if total > EVENT_MESSAGE_BYTES_MAX {
        return Err(err(format!(
            "message of {total} bytes exceeds {EVENT_MESSAGE_BYTES_MAX}"
        )));
    }
    if total < MESSAGE_BYTES_MIN || headers > total - MESSAGE_BYTES_MIN {
        return Err(err(format!(
            "bad lengths: total {total}, headers {headers}"
        )));
    }
    Ok(total)
}

/// Parses one whole message whose prelude was checked.
fn parse_message(m: &[u8]) -> Result<Message, TranslateError> {
    let body_end = m.len() - CRC_BYTES;
    if crc32fast::hash(&m[..body_end]) != be_u32(&m[body_end..]) {
        return Err(err("message CRC mismatch"));
    }
    let headers_len = be_u32(&m[4..8]) as usize;
    let headers_end = PRELUDE_BYTES + headers_len;
    let headers = parse_headers(&m[PRELUDE_BYTES..headers_end])?;
    Ok(Message {
        headers,
        payload: m[headers_end..body_end].to_vec(),
    })
}

/// Takes `n` bytes from the front of `b`.
fn take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], TranslateError> {
    if b.len() < n {
        return Err(err(format!("header {what} runs past the headers")));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn take_array<const N: usize>(b: &mut &[u8], what: &str) -> Result<[u8; N], TranslateError> {
    let s = take(b, N, what)?;
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    Ok(a)
}

fn parse_headers(mut b: &[u8]) -> Result<Vec<(String, HeaderValue)>, TranslateError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let [name_len] = take_array::<1>(&mut b, "name length")?;
        if name_len == 0 {
            return Err(err("empty header name"));
        }
        let name = take(&mut b, name_len as usize, "name")?;
        let name = std::str::from_utf8(name)
            .map_err(|_| err("header name is not UTF-8"))?
            .to_string();
        let [ty] = take_array::<1>(&mut b, "type")?;
        let value = match ty {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(take_array(&mut b, "byte")?)),
            3 => HeaderValue::Short(i16::from_be_bytes(take_array(&mut b, "short")?)),
            4 => HeaderValue::Int(i32::from_be_bytes(take_array(&mut b, "int")?)),
            5 => HeaderValue::Long(i64::from_be_bytes(take_array(&mut b, "long")?)),
            6 | 7 => {
                let len = u16::from_be_bytes(take_array(&mut b, "value length")?);
                let v = take(&mut b, len as usize, "value")?;
                if ty == 6 {
                    HeaderValue::Bytes(v.to_vec())
                } else {
                    HeaderValue::String(
                        std::str::from_utf8(v)
                            .map_err(|_| err(format!("header {name} is not UTF-8")))?
                            .to_string(),
                    )
                }
            }
            8 => HeaderValue::Timestamp(i64::from_be_bytes(take_array(&mut b, "timestamp")?)),
            9 => HeaderValue::Uuid(take_array(&mut b, "uuid")?),
            other => return Err(err(format!("header {name} has unknown type {other}"))),
        };
        out.push((name, value));
    }
    Ok(out)
}

/// Encodes a message with string headers (for tests, and for a mock
/// upstream). Panics if a header name is empty or exceeds 255 bytes (the
/// decoder refuses both), a value 65,535
/// bytes, or the message [`EVENT_MESSAGE_BYTES_MAX`].
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let typed: Vec<(&str, HeaderValue)> = headers
        .iter()
        .map(|(n, v)| (*n, HeaderValue::String(v.to_string())))
        .collect();
    encode_typed(&typed, payload)
}

/// [`encode`] with headers of any type.
pub fn encode_typed(headers: &[(&str, HeaderValue)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        assert!(!name.is_empty(), "empty header name");
        let name_len = u8::try_from(name.len()).expect("header name of at most 255 bytes");
        h.push(name_len);
        h.extend_from_slice(name.as_bytes());
        h.push(value.type_byte());
        match value {
            HeaderValue::Bool(_) => {}
            HeaderValue::Byte(v) => h.extend_from_slice(&v.to_be_bytes()),
            HeaderValue::Short(v) => h.extend_from_slice(&v.to_be_bytes()),
            HeaderValue::Int(v) => h.extend_from_slice(&v.to_be_bytes()),
            HeaderValue::Long(v) | HeaderValue::Timestamp(v) => {
                h.extend_from_slice(&v.to_be_bytes())
            }
            HeaderValue::Bytes(v) => push_short_bytes(&mut h, v),
            HeaderValue::String(v) => push_short_bytes(&mut h, v.as_bytes()),
            HeaderValue::Uuid(v) => h.extend_from_slice(v),
        }
    }
    let total = MESSAGE_BYTES_MIN + h.len() + payload.len();
    assert!(total <= EVENT_MESSAGE_BYTES_MAX, "message too long");
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_be_bytes());
    m.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&m);
    m.extend_from_slice(&prelude_crc.to_be_bytes());
    m.extend_from_slice(&h);
    m.extend_from_slice(payload);
    let crc = crc32fast::hash(&m);
    m.extend_from_slice(&crc.to_be_bytes());
    m
}

fn push_short_bytes(h: &mut Vec<u8>, v: &[u8]) {
    let len = u16::try_from(v.len()).expect("header value of at most 65,535 bytes");
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(ty: &str, payload: &str) -> Vec<u8> {
        encode(
            &[
                (":event-type", ty),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Message>, TranslateError> {
        let mut d = Decoder::new();
        d.feed(bytes);
        let mut out = Vec::new();
        while let Some(m) = d.next_message()? {
            out.push(m);
        }
        assert_eq!(d.buffered(), 0);
        Ok(out)
    }

    /// `valid_no_headers` and `valid_with_all_headers_and_payload` from the
    /// AWS event-stream test suite (as shipped in smithy-rs): CRCs and
    /// encodings computed by AWS's tools, not by this module.
    const AWS_NO_HEADERS: &[&str] = &[
        "0000002400000000516356ad616e6f746865722074657374207061796c6f6164",
        "8df80e65",
    ];
    const AWS_ALL_HEADERS: &[&str] = &[
        "000000960000007a8bb495fb0474727565000566616c73650104627974650232",
        "0573686f7274034e2003696e74040007a120046c6f6e67050000000ba43b7400",
        "05627974657306000a736f6d6520627974657303737472070008736f6d652073",
        "74720474696d6508000000012a05f200047575696409b79bc914de214e13b8b2",
        "bc47e85b7f0b736f6d65207061796c6f616401a05860",
    ];

    fn unhex(parts: &[&str]) -> Vec<u8> {
        hex::decode(parts.concat()).unwrap()
    }

    #[test]
    fn decodes_aws_test_vectors() {
        let bytes = unhex(AWS_NO_HEADERS);
        let msgs = decode_all(&bytes).unwrap();
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].headers.is_empty());
        assert_eq!(msgs[0].payload, b"another test payload");
        assert_eq!(encode(&[], b"another test payload"), bytes);

        let bytes = unhex(AWS_ALL_HEADERS);
        let m = &decode_all(&bytes).unwrap()[0];
        let want = [
            ("true", HeaderValue::Bool(true)),
            ("false", HeaderValue::Bool(false)),
            ("byte", HeaderValue::Byte(50)),
            ("short", HeaderValue::Short(20_000)),
            ("int", HeaderValue::Int(500_000)),
            ("long", HeaderValue::Long(50_000_000_000)),
            ("bytes", HeaderValue::Bytes(b"some bytes".to_vec())),
            ("str", HeaderValue::String("some str".into())),
            ("time", HeaderValue::Timestamp(5_000_000_000)),
            (
                "uuid",
                HeaderValue::Uuid(
                    hex::decode("b79bc914de214e13b8b2bc47e85b7f0b")
                        .unwrap()
                        .try_into()
                        .unwrap(),
                ),
            ),
        ];
        let want_owned: Vec<(String, HeaderValue)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        assert_eq!(m.headers, want_owned);
        assert_eq!(m.payload, b"some payload");
        // The string accessor finds the one string header past the others.
        assert_eq!(m.header_str("str"), Some("some str"));
        assert_eq!(m.header_str("bytes"), None);
        assert_eq!(encode_typed(&want, b"some payload"), bytes);
        // The same message with its prelude or message CRC replaced (the
        // suite's invalid_prelude_checksum / invalid_message_checksum).
        let mut bad = bytes.clone();
        bad[8..12].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert!(decode_all(&bad)
            .unwrap_err()
            .message
            .contains("prelude CRC"));
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 4..].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert!(decode_all(&bad)
            .unwrap_err()
            .message
            .contains("message CRC"));
    }

    #[test]
    fn decodes_headers_and_payload() {
        let bytes = event("contentBlockDelta", r#"{"delta":{"text":"Hi"}}"#);
        let msgs = decode_all(&bytes).unwrap();
        let m = &msgs[0];
        assert_eq!(m.event_type(), Some("contentBlockDelta"));
        assert_eq!(m.message_type(), Some("event"));
        assert_eq!(m.content_type(), Some("application/json"));
        assert_eq!(m.exception_type(), None);
        assert_eq!(m.payload, br#"{"delta":{"text":"Hi"}}"#);
    }

    #[test]
    fn every_split_point_decodes_the_same() {
        let mut stream = event("messageStart", r#"{"role":"assistant"}"#);
        stream.extend(event("contentBlockDelta", r#"{"delta":{"text":"x"}}"#));
        stream.extend(encode(&[], b""));
        let whole = decode_all(&stream).unwrap();
        assert_eq!(whole.len(), 3);
        for cut in 0..=stream.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                d.feed(part);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, whole, "cut at {cut}");
            assert_eq!(d.buffered(), 0);
        }
        // Byte by byte.
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &stream {
            d.feed(std::slice::from_ref(b));
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, whole);
    }

    #[test]
    fn crc_errors_are_detected_and_stick() {
        let good = event("messageStop", r#"{"stopReason":"end_turn"}"#);
        // A flipped bit in the prelude's length: the prelude CRC catches it
        // before any wait for the (wrong) length.
        let mut bad = good.clone();
        bad[3] ^= 0x01;
        let e = decode_all(&bad).unwrap_err();
        assert!(e.message.contains("prelude CRC"), "{e}");
        // A flipped bit in the payload: the message CRC.
        for at in [PRELUDE_BYTES + 1, good.len() - 6, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            let e = decode_all(&bad).unwrap_err();
            assert!(e.message.contains("message CRC"), "{at}: {e}");
        }
        // The decoder stays broken, even when fed good bytes after.
        let mut d = Decoder::new();
        d.feed(&bad);
        assert!(d.next_message().is_err());
        d.feed(&good);
        assert!(d.next_message().is_err());
        assert_eq!(d.buffered(), 0);
    }

    fn prelude(total: u32, headers: u32) -> Vec<u8> {
        let mut p = total.to_be_bytes().to_vec();
        p.extend_from_slice(&headers.to_be_bytes());
        let crc = crc32fast::hash(&p);
        p.extend_from_slice(&crc.to_be_bytes());
        p
    }

    #[test]
    fn oversize_and_impossible_lengths_are_refused_from_the_prelude() {
        let mut d = Decoder::new();
        d.feed(&prelude(EVENT_MESSAGE_BYTES_MAX as u32 + 1, 0));
        let e = d.next_message().unwrap_err();
        assert!(e.message.contains("exceeds"), "{e}");
        // Exactly the maximum is waited for, not refused.
        let mut d = Decoder::new();
        d.feed(&prelude(EVENT_MESSAGE_BYTES_MAX as u32, 0));
        assert_eq!(d.next_message().unwrap(), None);
        for (total, headers) in [(15, 0), (0, 0), (16, 1), (100, 85), (u32::MAX, 0)] {
            let mut d = Decoder::new();
            d.feed(&prelude(total, headers));
            assert!(d.next_message().is_err(), "{total} {headers}");
        }
        // Headers filling the message exactly, no payload: fine.
        let m = encode(&[("a", "b")], b"");
        assert_eq!(decode_all(&m).unwrap()[0].header_str("a"), Some("b"));
    }

    #[test]
    fn every_header_type_is_read_and_non_strings_skipped_by_accessors() {
        let headers = [
            ("t", HeaderValue::Bool(true)),
            ("f", HeaderValue::Bool(false)),
            ("b", HeaderValue::Byte(-3)),
            ("s", HeaderValue::Short(-20_000)),
            ("i", HeaderValue::Int(123_456_789)),
            ("l", HeaderValue::Long(-1 << 40)),
            ("y", HeaderValue::Bytes(vec![0, 1, 2, 0xff])),
            ("ts", HeaderValue::Timestamp(1_700_000_000_000)),
            ("u", HeaderValue::Uuid([7; 16])),
            // Same name as a later string header: the accessor skips it.
            (":event-type", HeaderValue::Int(5)),
            (":event-type", HeaderValue::String("metadata".into())),
        ];
        let bytes = encode_typed(&headers, b"{}");
        let m = &decode_all(&bytes).unwrap()[0];
        let want: Vec<(String, HeaderValue)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        assert_eq!(m.headers, want);
        assert_eq!(m.event_type(), Some("metadata"));
        assert_eq!(m.header_str("y"), None);
        assert_eq!(m.payload, b"{}");
    }

    /// A message with hand-made headers and valid CRCs.
    fn raw(headers: &[u8], payload: &[u8]) -> Vec<u8> {
        let total = (MESSAGE_BYTES_MIN + headers.len() + payload.len()) as u32;
        let mut m = prelude(total, headers.len() as u32);
        m.extend_from_slice(headers);
        m.extend_from_slice(payload);
        let crc = crc32fast::hash(&m);
        m.extend_from_slice(&crc.to_be_bytes());
        m
    }

    #[test]
    fn malformed_headers_are_errors() {
        for (h, want) in [
            (&b"\x00"[..], "empty header name"),
            (b"\x05ab", "name runs past"),
            (b"\x01a", "type runs past"),
            (b"\x01a\x0a", "unknown type 10"),
            (b"\x01a\x07\x00\x05abc", "value runs past"),
            (b"\x01a\x05\x00\x00", "long runs past"),
            (b"\x01a\x07\x00\x02\xff\xfe", "not UTF-8"),
            (b"\x02\xff\xfe\x00", "name is not UTF-8"),
        ] {
            let e = decode_all(&raw(h, b"")).unwrap_err();
            assert!(e.message.contains(want), "{h:?}: {e}");
            assert_eq!(e.field, "eventstream");
        }
    }

    #[test]
    fn consumed_bytes_do_not_accumulate() {
        let one = event("contentBlockDelta", r#"{"delta":{"text":"abc"}}"#);
        let mut d = Decoder::new();
        for _ in 0..1000 {
            d.feed(&one[..10]);
            assert!(d.next_message().unwrap().is_none());
            d.feed(&one[10..]);
            assert!(d.next_message().unwrap().is_some());
        }
        assert!(d.buf.capacity() < 4 * one.len(), "{}", d.buf.capacity());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            at.sort_unstable();
            let mut d = Decoder::new();
            let mut prev = 0;
            for c in at.into_iter().chain([bytes.len()]) {
                d.feed(&bytes[prev..c]);
                prev = c;
                while let Ok(Some(_)) = d.next_message() {}
            }
        }

        /// Random bytes behind a valid prelude reach the header parser.
        #[test]
        fn random_headers_never_panic(
            headers in prop::collection::vec(any::<u8>(), 0..64),
            payload in prop::collection::vec(any::<u8>(), 0..16),
        ) {
            let _ = decode_all(&raw(&headers, &payload));
        }

        #[test]
        fn encode_decode_round_trip(
            headers in prop::collection::vec(("[a-z:-]{1,12}", ".{0,20}"), 0..5),
            payload in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let refs: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let m = decode_all(&encode(&refs, &payload)).unwrap();
            prop_assert_eq!(m.len(), 1);
            prop_assert_eq!(&m[0].payload, &payload);
            let got: Vec<(String, HeaderValue)> = headers
                .iter()
                .map(|(n, v)| (n.clone(), HeaderValue::String(v.clone())))
                .collect();
            prop_assert_eq!(&m[0].headers, &got);
        }
    }
}
