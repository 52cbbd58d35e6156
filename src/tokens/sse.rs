//! Server-sent-event framing: where each event ends, and its fields.
//!
//! Per the WHATWG EventSource spec, a line ends at CRLF, LF or a lone CR; an
//! event ends at a blank line (`\n\n`, `\r\n\r\n`, `\r\r`, and their mixes);
//! a line `name: value` is a field (one space after the colon is dropped); a
//! line starting with `:` is a comment; several `data` lines are joined with
//! `\n`.
//!
//! [`SseFramer`] finds event boundaries in a byte stream fed in arbitrary
//! pieces, keeping only a few bits of state between pieces (never bytes): the
//! caller owns whatever it chooses to keep of an incomplete event. It scans
//! with `memchr2` from one line end to the next, so its cost is a few SIMD
//! probes per line, not a branch per byte.

use memchr::memchr2;

/// Where the framer stands between two bytes of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum LineState {
    /// At the start of a line (stream start, or just past a line end).
    #[default]
    Start,
    /// Inside a non-blank line.
    Mid,
    /// Just past a CR that ended a non-blank line: an LF here is its pair.
    AfterCr,
    /// Just past a CR that ended a blank line: the event ends here, or one
    /// byte later if an LF (the CR's pair) follows.
    BlankCr,
}

/// Finds the ends of events in a stream fed piece by piece.
#[derive(Debug, Clone, Default)]
pub struct SseFramer {
    state: LineState,
}

impl SseFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans `input` from `*cursor` for the next event end. On `Some(end)`,
    /// `input[..end]` closes an event (the blank line included) and the scan
    /// resumes at `*cursor == end`. On `None`, `input` holds no further event
    /// end; `*cursor` is `input.len()`.
    ///
    /// A blank line ended by a CR as the very last byte of `input` is reported
    /// with the next piece (at index 0, or 1 when that piece starts with the
    /// CR's LF) or by [`SseFramer::pending_end`] when the stream ends.
    pub fn next_end(&mut self, input: &[u8], cursor: &mut usize) -> Option<usize> {
        let len = input.len();
        let mut i = *cursor;
        loop {
            if i >= len {
                *cursor = len;
                return None;
            }
            match self.state {
                LineState::BlankCr => {
                    let end = if input[i] == b'\n' { i + 1 } else { i };
                    self.state = LineState::Start;
                    *cursor = end;
                    return Some(end);
                }
                LineState::AfterCr => {
                    if input[i] == b'\n' {
                        i += 1;
                    }
                    self.state = LineState::Start;
                }
                LineState::Start => match input[i] {
                    b'\n' => {
                        *cursor = i + 1;
                        return Some(i + 1);
                    }
                    b'\r' => {
                        self.state = LineState::BlankCr;
                        i += 1;
                    }
                    _ => self.state = LineState::Mid,
                },
                LineState::Mid => match memchr2(b'\n', b'\r', &input[i..]) {
                    None => {
                        *cursor = len;
                        return None;
                    }
                    Some(k) => {
                        let j = i + k;
                        self.state = if input[j] == b'\n' {
                            LineState::Start
                        } else {
                            LineState::AfterCr
                        };
                        i = j + 1;
                    }
                },
            }
        }
    }

    /// Whether the bytes fed so far end with a complete event whose end could
    /// not be reported yet (a blank line closed by a final CR).
    pub fn pending_end(&self) -> bool {
        self.state == LineState::BlankCr
    }
}

/// The fields of one complete event that the counter reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventFields<'a> {
    /// The `data` lines joined with `\n`; `None` when the event has none.
    pub data: Option<&'a [u8]>,
    /// The last `event` field's value.
    pub kind: Option<&'a [u8]>,
}

/// Reads the `data` and `event` fields of one event (`event` holds the whole
/// event, blank line included or not). A single `data` line, the usual case,
/// is borrowed from `event`; several are joined into `scratch`.
pub fn parse_event<'a>(event: &'a [u8], scratch: &'a mut Vec<u8>) -> EventFields<'a> {
    let mut first: Option<&'a [u8]> = None;
    let mut joined = false;
    let mut kind = None;
    // A stream may open with a UTF-8 byte-order mark, which SSE ignores.
    let mut i = if event.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    while i < event.len() {
        let (line, next) = match memchr2(b'\n', b'\r', &event[i..]) {
            Some(k) => {
                let j = i + k;
                let next = if event[j] == b'\r' && event.get(j + 1) == Some(&b'\n') {
                    j + 2
                } else {
                    j + 1
                };
                (&event[i..j], next)
            }
            None => (&event[i..], event.len()),
        };
        i = next;
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &line[line.len()..]),
        };
        match name {
            b"data" => match first {
                None => first = Some(value),
                Some(f) => {
                    if !joined {
                        scratch.clear();
                        scratch.extend_from_slice(f);
                        joined = true;
                    }
                    scratch.push(b'\n');
                    scratch.extend_from_slice(value);
                }
            },
            b"event" => kind = Some(value),
            _ => {}
        }
    }
    let data = if joined { Some(&scratch[..]) } else { first };
    EventFields { data, kind }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event ends, found byte by byte straight from the spec's grammar.
    fn reference_ends(s: &[u8]) -> (Vec<usize>, bool) {
        let mut ends = Vec::new();
        let mut i = 0;
        let mut line_empty = true;
        while i < s.len() {
            let c = s[i];
            if c == b'\n' || c == b'\r' {
                let mut end = i + 1;
                if c == b'\r' {
                    if i + 1 == s.len() {
                        // CR at the very end: the line ended; a blank line's
                        // end stays pending.
                        return (ends, line_empty);
                    }
                    if s[i + 1] == b'\n' {
                        end = i + 2;
                    }
                }
                if line_empty {
                    ends.push(end);
                }
                line_empty = true;
                i = end;
            } else {
                line_empty = false;
                i += 1;
            }
        }
        (ends, false)
    }

    fn framed(s: &[u8], cuts: &[usize]) -> (Vec<usize>, bool) {
        let mut f = SseFramer::new();
        let mut ends = Vec::new();
        let mut start = 0;
        let mut bounds: Vec<usize> = cuts.to_vec();
        bounds.push(s.len());
        for &cut in &bounds {
            let piece = &s[start..cut];
            let mut cursor = 0;
            while let Some(e) = f.next_end(piece, &mut cursor) {
                ends.push(start + e);
            }
            start = cut;
        }
        (ends, f.pending_end())
    }

    #[test]
    fn finds_ends_for_every_terminator_mix() {
        let cases: [&[u8]; 9] = [
            b"data: a\n\ndata: b\n\n",
            b"data: a\r\n\r\ndata: b\r\n\r\n",
            b"data: a\r\rdata: b\r\r",
            b"data: a\n\r\ndata: b\r\n\n",
            b"\n\n\ndata: x\n",
            b"data: a\r\n\r",
            b": comment\nevent: e\ndata: 1\ndata: 2\n\n",
            b"data: a\r\r\n",
            b"\r\n\r\n\r\r",
        ];
        for s in cases {
            let expected = reference_ends(s);
            assert_eq!(framed(s, &[]), expected, "{:?}", String::from_utf8_lossy(s));
            for cut in 0..=s.len() {
                assert_eq!(framed(s, &[cut]), expected, "cut {cut} of {s:?}");
            }
            let every: Vec<usize> = (1..s.len()).collect();
            assert_eq!(framed(s, &every), expected);
        }
    }

    #[test]
    fn parses_fields() {
        let mut scratch = Vec::new();
        let ev = b"event: message_delta\r\ndata: {\"a\":1}\r\n\r\n";
        let f = parse_event(ev, &mut scratch);
        assert_eq!(f.kind, Some(&b"message_delta"[..]));
        assert_eq!(f.data, Some(&b"{\"a\":1}"[..]));
        let ev = b": keep-alive\ndata:x\ndata:  y\ndata\n\n";
        let f = parse_event(ev, &mut scratch);
        assert_eq!(f.data, Some(&b"x\n y\n"[..]));
        assert_eq!(f.kind, None);
        let f = parse_event(b"\xEF\xBB\xBFdata: 1\n\n", &mut scratch);
        assert_eq!(f.data, Some(&b"1"[..]));
        let f = parse_event(b": only a comment\n\n", &mut scratch);
        assert_eq!(f, EventFields::default());
    }
}
