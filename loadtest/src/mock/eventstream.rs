//! The AWS binary event stream (`application/vnd.amazon.eventstream`), as
//! Bedrock's `ConverseStream` sends it.
//!
//! One message is:
//!
//! ```text
//! total length   u32 BE   (the whole message, these 4 bytes and both CRCs included)
//! headers length u32 BE
//! prelude CRC32  u32 BE   (of the 8 bytes above)
//! headers        name length u8, name, value type u8 (7 = string), value length u16 BE, value
//! payload        (JSON)
//! message CRC32  u32 BE   (of every byte before it)
//! ```
//!
//! CRC32 is the IEEE/gzip one (`crc32fast`). Only string headers are written.

use bytes::Bytes;

/// The value type of a string header.
const HEADER_STRING: u8 = 7;

/// One message with string headers and `payload`.
pub fn message(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut head = Vec::new();
    for (name, value) in headers {
        // Header names are the fixed `:event-type`-style names below, and
        // values are short ids; both always fit their length fields.
        head.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        head.extend_from_slice(name.as_bytes());
        head.push(HEADER_STRING);
        head.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        head.extend_from_slice(value.as_bytes());
    }
    let total = 12 + head.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&u32::try_from(head.len()).unwrap_or(u32::MAX).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    Bytes::from(out)
}

/// An `event` message of type `event_type` with a JSON payload.
pub fn event(event_type: &str, json: &[u8]) -> Bytes {
    message(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        json,
    )
}

/// An `exception` message of type `exception_type` with a JSON payload.
pub fn exception(exception_type: &str, json: &[u8]) -> Bytes {
    message(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers from an independent encoder (the Elixir `event_stream`
    /// package's documented examples): `{"foo": "bar"}` without headers, and
    /// with `content-type: application/json`.
    #[test]
    fn matches_independent_encoder() {
        let payload = br#"{"foo": "bar"}"#;
        let bare = message(&[], payload);
        let mut want = vec![0, 0, 0, 30, 0, 0, 0, 0, 186, 242, 246, 138];
        want.extend_from_slice(payload);
        want.extend_from_slice(&[174, 114, 88, 228]);
        assert_eq!(&bare[..], &want[..]);

        let typed = message(&[("content-type", "application/json")], payload);
        let want: &[u8] = &[
            0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70, 12, 99, 111, 110, 116, 101, 110, 116, 45,
            116, 121, 112, 101, 7, 0, 16, 97, 112, 112, 108, 105, 99, 97, 116, 105, 111, 110, 47,
            106, 115, 111, 110, 123, 34, 102, 111, 111, 34, 58, 32, 34, 98, 97, 114, 34, 125, 111,
            162, 191, 59,
        ];
        assert_eq!(&typed[..], want);
    }
}
