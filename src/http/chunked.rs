//! An incremental decoder for `Transfer-Encoding: chunked` bodies.
//!
//! Fed whatever bytes have arrived, it consumes what it can and reports how
//! much; the caller keeps the rest and calls again when more arrives. Used for
//! request bodies and for upstream responses alike. Invalid chunk sizes, a
//! missing CRLF after a chunk and oversized lines are errors, never guesses.

use crate::limits::{CHUNK_LINE_BYTES_MAX, CHUNK_TRAILER_BYTES_MAX};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk-size line that is not hex, or too long.
    InvalidSize,
    /// Data not followed by CRLF, or an oversized trailer.
    InvalidFraming,
    /// The decoded body would exceed the caller's bound.
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailer(usize),
    Done,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder { state: State::Size }
    }

    /// True once the last chunk and the trailers have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending body bytes to `out` while keeping
    /// `out.len() <= out_max`. Returns the number of input bytes consumed.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        out_max: usize,
    ) -> Result<usize, ChunkError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                State::Done => return Ok(pos),
                State::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        pos += n;
                        self.state = if size == 0 {
                            State::Trailer(0)
                        } else {
                            State::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if rest.len() > CHUNK_LINE_BYTES_MAX {
                            return Err(ChunkError::InvalidSize);
                        }
                        return Ok(pos);
                    }
                    Err(_) => return Err(ChunkError::InvalidSize),
                },
                State::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = (remaining.min(rest.len() as u64)) as usize;
                    if out.len() + take > out_max {
                        return Err(ChunkError::TooLarge);
                    }
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => {
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|&b| b != b'\r') {
                            return Err(ChunkError::InvalidFraming);
                        }
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ChunkError::InvalidFraming);
                    }
                    pos += 2;
                    self.state = State::Size;
                }
                State::Trailer(seen) => {
                    if rest.len() >= 2 && &rest[..2] == b"\r\n" {
                        pos += 2;
                        self.state = State::Done;
                        continue;
                    }
                    match memchr::memmem::find(rest, b"\r\n") {
                        Some(i) => {
                            let seen = seen + i + 2;
                            if seen > CHUNK_TRAILER_BYTES_MAX {
                                return Err(ChunkError::InvalidFraming);
                            }
                            pos += i + 2;
                            self.state = State::Trailer(seen);
                        }
                        None => {
                            if seen + rest.len() > CHUNK_TRAILER_BYTES_MAX {
                                return Err(ChunkError::InvalidFraming);
                            }
                            return Ok(pos);
                        }
                    }
                }
            }
        }
    }
}

/// Bytes of [`fixed_chunk_header`]: eight hex digits and CRLF.
pub const FIXED_CHUNK_HEADER_BYTES: usize = 10;

/// A chunk-size line of fixed width (leading zeros are valid chunk-size
/// syntax), so a relay can reserve its place before it knows the size. No
/// allocation: it is written once per relayed piece of a stream.
pub fn fixed_chunk_header(len: usize) -> [u8; FIXED_CHUNK_HEADER_BYTES] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    assert!(
        len <= u32::MAX as usize,
        "a relayed chunk is bounded far below 4 GiB"
    );
    let mut out = *b"00000000\r\n";
    for (i, digit) in out[..8].iter_mut().enumerate() {
        *digit = HEX[(len >> (28 - 4 * i)) & 0xf];
    }
    out
}

/// Writes the chunk-size line for a chunk of `len` bytes into `out`.
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut consumed_total = 0;
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            let n = d.decode(&buf, &mut out, 1 << 20)?;
            buf.drain(..n);
            consumed_total += n;
            if d.is_done() {
                break;
            }
        }
        Ok((out, consumed_total, d.is_done()))
    }

    #[test]
    fn decodes_at_every_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (out, consumed, done) = decode_all(body, step).unwrap();
            assert_eq!(out, b"hello, world", "step {step}");
            assert!(done);
            assert_eq!(consumed, body.len() - 4, "leaves the next request alone");
        }
    }

    #[test]
    fn refuses_bad_sizes_and_framing() {
        assert_eq!(
            decode_all(b"zz\r\n", 100).unwrap_err(),
            ChunkError::InvalidSize
        );
        assert_eq!(
            decode_all(b"-1\r\n", 100).unwrap_err(),
            ChunkError::InvalidSize
        );
        assert_eq!(
            decode_all(b"3\r\nabcXY0\r\n\r\n", 100).unwrap_err(),
            ChunkError::InvalidFraming
        );
        assert_eq!(
            decode_all(b"ffffffffffffffffff\r\n", 100).unwrap_err(),
            ChunkError::InvalidSize
        );
        let long = vec![b'1'; CHUNK_LINE_BYTES_MAX + 10];
        assert_eq!(decode_all(&long, 100).unwrap_err(), ChunkError::InvalidSize);
    }

    #[test]
    fn fixed_headers_decode_like_minimal_ones() {
        for len in [0usize, 1, 15, 16, 4095, 65_536, u32::MAX as usize] {
            let h = fixed_chunk_header(len);
            let (n, size) = match httparse::parse_chunk_size(&h).unwrap() {
                httparse::Status::Complete(v) => v,
                httparse::Status::Partial => panic!("partial"),
            };
            assert_eq!((n, size), (FIXED_CHUNK_HEADER_BYTES, len as u64));
        }
    }

    #[test]
    fn bounds_the_decoded_body() {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert_eq!(
            d.decode(b"10\r\n0123456789abcdef\r\n0\r\n\r\n", &mut out, 8),
            Err(ChunkError::TooLarge)
        );
    }
}
