//! Reading the request body: the fields the gateway acts on ([`Probe`]),
//! validated by [`probe`], read in one pass without serde by [`scan`].
//!
//! [`scan`] reads the body as serde_json reads it into [`Probe`] (the same
//! grammar, the same fields, the same refusals) but never allocates and
//! skips the fields it does not want with a validating byte scan, strings
//! eight bytes at a time. It declines (`None`) anything it is not sure of:
//! malformed JSON, a known field given twice or of the wrong type, an
//! escaped key or model name, nesting deeper than [`DEPTH_MAX`].
//! [`probe`] then asks serde_json, whose answer (and error
//! message) stands; so a body this scan accepts is one serde_json accepts
//! with the same fields, which `tests/probe_props.rs` checks against
//! serde_json on generated bodies. By callgrind the scan takes two thirds
//! of serde's instructions on the benchmark's chat body (2,392 against
//! 3,386 a request, docs/benchmarks.md).

use std::borrow::Cow;

use serde::Deserialize;

use super::route::Endpoint;
use crate::error::ApiError;
use crate::limits::MODEL_NAME_BYTES_MAX;
use crate::tokens::json::{count as json_count, skip_ws as ws};

/// A member the gateway may rewrite, as the body gives it: a value, `null`,
/// or absent. `null` and absent mean the same to OpenAI, but only an absent
/// member may be added without rewriting the body: a `null` one must be
/// replaced, or an upstream that reads the last of two duplicate keys
/// (Python's `json`, so vLLM and many OpenAI-compatible servers) would read
/// the client's `null` rather than the gateway's value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

/// An output cap (`max_tokens`, `max_completion_tokens`, `max_output_tokens`).
pub type Cap = Field<u64>;

impl<T> Field<T> {
    pub fn get(&self) -> Option<&T> {
        match self {
            Field::Value(v) => Some(v),
            Field::Absent | Field::Null => None,
        }
    }
    pub fn is_present(&self) -> bool {
        !matches!(self, Field::Absent)
    }
}

impl<T: Copy> Field<T> {
    pub fn value(self) -> Option<T> {
        self.get().copied()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Field<T>, D::Error> {
        Ok(Option::<T>::deserialize(d)?.map_or(Field::Null, Field::Value))
    }
}

/// The fields of a request body the gateway acts on; the rest passes through
/// untouched.
#[derive(Debug, Default, Deserialize)]
pub struct Probe<'a> {
    #[serde(borrow)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Field<StreamOptions>,
    /// Output caps, by endpoint: chat takes `max_completion_tokens` (or the
    /// older `max_tokens`), completions `max_tokens`, responses
    /// `max_output_tokens`.
    #[serde(default)]
    pub max_tokens: Cap,
    #[serde(default)]
    pub max_completion_tokens: Cap,
    #[serde(default)]
    pub max_output_tokens: Cap,
    /// Choices generated (and billed) per request.
    #[serde(default)]
    pub n: Option<u64>,
    /// Completions generated server-side (and billed) per request.
    #[serde(default)]
    pub best_of: Option<u64>,
    /// The end user, as OpenAI's `user` field names it (a tag for the log).
    #[serde(default, borrow)]
    pub user: Option<Cow<'a, str>>,
    /// Request metadata (OpenAI's `metadata`): string values become tags.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

impl Probe<'_> {
    /// The request's output cap per choice, `None` when it sets none. An
    /// embeddings request generates nothing: `Some(0)`. Chat has two names
    /// for the cap and upstreams differ on which wins when both are set: the
    /// larger bounds either reading.
    pub fn output_cap(&self, endpoint: Endpoint) -> Option<u64> {
        match endpoint {
            Endpoint::ChatCompletions => self
                .max_completion_tokens
                .value()
                .max(self.max_tokens.value()),
            Endpoint::Completions | Endpoint::Messages => self.max_tokens.value(),
            Endpoint::Responses => self.max_output_tokens.value(),
            Endpoint::Embeddings => Some(0),
        }
    }

    /// Whether the body has any of the endpoint's cap members, `null` ones
    /// included (then a cap the gateway sets must rewrite them).
    pub fn output_cap_present(&self, endpoint: Endpoint) -> bool {
        match endpoint {
            Endpoint::ChatCompletions => {
                self.max_completion_tokens.is_present() || self.max_tokens.is_present()
            }
            Endpoint::Completions | Endpoint::Messages => self.max_tokens.is_present(),
            Endpoint::Responses => self.max_output_tokens.is_present(),
            Endpoint::Embeddings => false,
        }
    }

    /// How many outputs the provider generates and bills for this request.
    pub fn outputs_billed(&self, endpoint: Endpoint) -> u64 {
        match endpoint {
            Endpoint::ChatCompletions => self.n.unwrap_or(1).max(1),
            Endpoint::Completions => self.n.unwrap_or(1).max(self.best_of.unwrap_or(1)).max(1),
            Endpoint::Responses | Endpoint::Embeddings | Endpoint::Messages => 1,
        }
    }

    pub fn streaming(&self) -> bool {
        self.stream == Some(true)
    }
    /// Whether the client asked for the final usage chunk itself.
    pub fn client_wants_usage(&self) -> bool {
        self.stream_options
            .get()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

/// Reads the body's model and stream flag; a body that is not a JSON object
/// with a string `model` is a 400.
pub fn probe(body: &[u8]) -> Result<Probe<'_>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request_body",
            "the request body is empty; expected a JSON object",
        ));
    }
    // The one-pass scan first; what it declines, serde_json decides (and
    // words the error).
    let p = match scan(body) {
        Some(p) => p,
        None => serde_json::from_slice::<Probe<'_>>(body).map_err(|e| {
            ApiError::bad_request(
                "invalid_request_body",
                format!("the request body is not a valid JSON request: {e}"),
            )
        })?,
    };
    match &p.model {
        None => Err(ApiError::bad_request(
            "missing_model",
            "you must provide a model parameter",
        )),
        Some(m) if m.is_empty() || m.len() > MODEL_NAME_BYTES_MAX => Err(ApiError::bad_request(
            "invalid_model",
            format!("model must be 1 to {MODEL_NAME_BYTES_MAX} bytes"),
        )),
        Some(_) => Ok(p),
    }
}

/// Containers nested deeper than this go to serde_json (which ignores
/// unknown values at any depth).
pub const DEPTH_MAX: u32 = 64;

/// The probe of `body`, or `None` when serde_json must decide.
pub fn scan(body: &[u8]) -> Option<Probe<'_>> {
    let b = body;
    let mut p = Probe::default();
    let mut seen = 0u16;
    let end = members(b, ws(b, 0), |key, i| {
        let field = field_index(key);
        if let Some(k) = field {
            if seen & (1 << k) != 0 {
                return None; // serde: duplicate field
            }
            seen |= 1 << k;
        }
        match field {
            Some(0) => text(b, i, &mut p.model),
            Some(1) => flag(b, i, &mut p.stream),
            Some(2) => stream_options(b, i, &mut p.stream_options),
            Some(3) => cap(b, i, &mut p.max_tokens),
            Some(4) => cap(b, i, &mut p.max_completion_tokens),
            Some(5) => cap(b, i, &mut p.max_output_tokens),
            Some(6) => count(b, i, &mut p.n),
            Some(7) => count(b, i, &mut p.best_of),
            Some(8) => text(b, i, &mut p.user),
            Some(9) => {
                let end = skip_value(b, i)?;
                let raw = &b[i..end];
                if raw != b"null" {
                    p.metadata = Some(serde_json::from_slice(raw).ok()?);
                }
                Some(end)
            }
            _ => skip_value(b, i),
        }
    })?;
    // Only whitespace may follow the object.
    (ws(b, end) == b.len()).then_some(p)
}

/// Walks the object at `b[i] == '{'`: `f` gets each member's key (raw, from
/// between its quotes) and the index where its value starts, and returns
/// the index after the value. Returns the index after the closing brace.
/// An escaped key declines (serde_json decodes it); a key that is not
/// UTF-8 fails, as serde_json reads every key as a `str`.
fn members<'a>(
    b: &'a [u8],
    i: usize,
    mut f: impl FnMut(&'a [u8], usize) -> Option<usize>,
) -> Option<usize> {
    if *b.get(i)? != b'{' {
        return None;
    }
    let mut i = ws(b, i + 1);
    if *b.get(i)? == b'}' {
        return Some(i + 1);
    }
    loop {
        let (key, after) = string(b, i)?;
        if key.contains(&b'\\') {
            return None;
        }
        if !key.is_ascii() {
            std::str::from_utf8(key).ok()?;
        }
        i = ws(b, after);
        if *b.get(i)? != b':' {
            return None;
        }
        i = ws(b, f(key, ws(b, i + 1))?);
        match *b.get(i)? {
            b',' => i = ws(b, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// [`Probe`]'s fields, in the order `scan` matches them.
const FIELDS: [&[u8]; 10] = [
    b"model",
    b"stream",
    b"stream_options",
    b"max_tokens",
    b"max_completion_tokens",
    b"max_output_tokens",
    b"n",
    b"best_of",
    b"user",
    b"metadata",
];

/// The index in [`FIELDS`] of `key`: the fields' lengths all differ, so one
/// comparison decides.
#[inline]
fn field_index(key: &[u8]) -> Option<usize> {
    let i = match key.len() {
        5 => 0,
        6 => 1,
        14 => 2,
        10 => 3,
        21 => 4,
        17 => 5,
        1 => 6,
        7 => 7,
        4 => 8,
        8 => 9,
        _ => return None,
    };
    (FIELDS[i] == key).then_some(i)
}

/// A string field (`null` reads as absent), borrowed: an escaped one goes
/// to serde_json.
fn text<'a>(b: &'a [u8], i: usize, out: &mut Option<Cow<'a, str>>) -> Option<usize> {
    if let Some(end) = literal(b, i, b"null") {
        return Some(end);
    }
    let (raw, end) = string(b, i)?;
    if raw.contains(&b'\\') {
        return None;
    }
    *out = Some(Cow::Borrowed(std::str::from_utf8(raw).ok()?));
    Some(end)
}

/// A boolean field (`null` reads as absent).
fn flag(b: &[u8], i: usize, out: &mut Option<bool>) -> Option<usize> {
    if let Some(end) = literal(b, i, b"null") {
        return Some(end);
    }
    if let Some(end) = literal(b, i, b"true") {
        *out = Some(true);
        return Some(end);
    }
    let end = literal(b, i, b"false")?;
    *out = Some(false);
    Some(end)
}

/// A count field: a non-negative integer that fits `u64` (`null` reads as
/// absent); a sign, fraction or exponent is serde's refusal too. The
/// grammar is checked here, the value read by the usage reader's
/// [`json_count`].
fn count(b: &[u8], i: usize, out: &mut Option<u64>) -> Option<usize> {
    let end = literal(b, i, b"null").or_else(|| number(b, i))?;
    *out = json_count(&b[i..end])?;
    Some(end)
}

/// An output cap: a count as [`count`] reads it, `null` kept apart from
/// absent (a `null` member must be rewritten, not shadowed).
fn cap(b: &[u8], i: usize, out: &mut Cap) -> Option<usize> {
    let mut n = None;
    let end = count(b, i, &mut n)?;
    *out = n.map_or(Cap::Null, Cap::Value);
    Some(end)
}

/// `stream_options`: an object whose `include_usage` is a boolean or `null`
/// (other members ignored), or `null`.
fn stream_options(b: &[u8], i: usize, out: &mut Field<StreamOptions>) -> Option<usize> {
    if let Some(end) = literal(b, i, b"null") {
        *out = Field::Null;
        return Some(end);
    }
    let mut include_usage = None;
    let mut seen = false;
    let end = members(b, i, |key, j| {
        if key == b"include_usage" {
            if std::mem::replace(&mut seen, true) {
                return None;
            }
            flag(b, j, &mut include_usage)
        } else {
            skip_value(b, j)
        }
    })?;
    *out = Field::Value(StreamOptions { include_usage });
    Some(end)
}

/// `word` at `b[i..]`: the index after it.
#[inline]
fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b.get(i..)?.starts_with(word).then_some(i + word.len())
}

/// A number at `b[i]` in JSON's grammar (serde_json's: `-?(0|[1-9][0-9]*)`,
/// then an optional fraction and exponent): the index after it.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], mut i: usize| {
        while matches!(b.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        i
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => {
            i += 1;
            if matches!(b.get(i), Some(b'0'..=b'9')) {
                return None;
            }
        }
        b'1'..=b'9' => i = digits(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let j = digits(b, i + 1);
        if j == i + 1 {
            return None;
        }
        i = j;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let j = digits(b, i);
        if j == i {
            return None;
        }
        i = j;
    }
    Some(i)
}

/// The bytes of `w` (little-endian) that are a quote, a backslash or a
/// control character (below 0x20), as each byte's high bit; 0 when none is.
/// The lowest bit set is always a true match (a borrow only runs upward, so
/// a false positive can only sit above a true match).
#[inline]
fn special(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | below_space
}

/// The string whose opening quote is at `b[i]`: its raw contents (escapes
/// left in) and the index after its closing quote. Escapes are checked as
/// serde_json checks them (`\uXXXX` needs four hex digits, a lone surrogate
/// passes); a control character fails. UTF-8 is not checked here.
fn string(b: &[u8], i: usize) -> Option<(&[u8], usize)> {
    if *b.get(i)? != b'"' {
        return None;
    }
    let start = i + 1;
    let mut j = start;
    loop {
        // Eight bytes at a time, to the first quote, backslash or control
        // character; the last few bytes of the body one at a time.
        while let Some(chunk) = b.get(j..j + 8) {
            let m = special(u64::from_le_bytes(chunk.try_into().ok()?));
            if m != 0 {
                j += (m.trailing_zeros() / 8) as usize;
                break;
            }
            j += 8;
        }
        match *b.get(j)? {
            b'"' => return Some((&b[start..j], j + 1)),
            b'\\' => match *b.get(j + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                b'u' => {
                    if !b.get(j + 2..j + 6)?.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    j += 6;
                }
                _ => return None,
            },
            0..=0x1f => return None,
            _ => j += 1,
        }
    }
}

/// With `b[i]` at an object member's key: the index after its colon.
fn key_colon(b: &[u8], i: usize) -> Option<usize> {
    let (_, after) = string(b, i)?;
    let j = ws(b, after);
    (*b.get(j)? == b':').then_some(j + 1)
}

/// Skips the value at `b[i]`, checking it as serde_json checks a value it
/// ignores; the index after it. Iterative: one bit per open container.
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    // Bit k set: the k-th open container (from the innermost) is an object.
    let mut stack: u64 = 0;
    let mut depth: u32 = 0;
    loop {
        i = ws(b, i);
        match *b.get(i)? {
            b'"' => i = string(b, i)?.1,
            b'-' | b'0'..=b'9' => i = number(b, i)?,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            open @ (b'[' | b'{') => {
                if depth == DEPTH_MAX {
                    return None;
                }
                let object = open == b'{';
                let j = ws(b, i + 1);
                if b.get(j) == Some(if object { &b'}' } else { &b']' }) {
                    i = j + 1; // empty: a whole value
                } else {
                    stack = (stack << 1) | u64::from(object);
                    depth += 1;
                    i = if object { key_colon(b, j)? } else { j };
                    continue;
                }
            }
            _ => return None,
        }
        // After a value: close what ends here, or go on to the next one.
        loop {
            if depth == 0 {
                return Some(i);
            }
            i = ws(b, i);
            let object = stack & 1 == 1;
            match *b.get(i)? {
                b',' => {
                    i = if object {
                        key_colon(b, ws(b, i + 1))?
                    } else {
                        i + 1
                    };
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            i += 1;
            stack >>= 1;
            depth -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_length_then_bytes() {
        for (i, f) in FIELDS.iter().enumerate() {
            assert_eq!(field_index(f), Some(i));
            let mut other = f.to_vec();
            other[0] ^= 0x20;
            assert_eq!(field_index(&other), None);
        }
        assert_eq!(field_index(b"messages"), None);
    }

    #[test]
    fn reads_what_serde_reads() {
        let p = scan(br#" {"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true,"x":[1]},"max_tokens":7,"n":2,"user":"u1","metadata":{"team":"a","k":1},"messages":[{"role":"user","content":"hi \"there\" \u00e9"}]} "#).unwrap();
        assert_eq!(p.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(p.stream, Some(true));
        assert_eq!(p.stream_options.get().unwrap().include_usage, Some(true));
        assert_eq!(p.max_tokens, Cap::Value(7));
        assert_eq!(p.n, Some(2));
        assert_eq!(p.user.as_deref(), Some("u1"));
        assert_eq!(p.metadata.unwrap()["team"], "a");
    }

    #[test]
    fn declines_what_it_is_not_sure_of() {
        for body in [
            &br#"{"model":"a\u002db"}"#[..], // escaped model: serde decodes it
            br#"{"m\u006fdel":"a"}"#,        // escaped key
            br#"{"model":"a","model":"b"}"#, // duplicate field
            br#"{"model":"a",}"#,            // trailing comma
            br#"{"model":"a"} x"#,           // trailing characters
            br#"{"model":"a","max_tokens":-1}"#, // a negative count
            br#"{"model":"a","max_tokens":1.0}"#, // a fractional count
            br#"{"model":"a","x":[1,]}"#,    // malformed, ignored field
            br#"{"model":"a","x":01}"#,      // a leading zero
            b"{\"model\":\"a\",\"x\":\"\x01\"}", // a control character
            br#"{"model":"a","x":"\q"}"#,    // a bad escape
            br#"["a"]"#,                     // not an object
            br#"{"model":"a""#,              // cut short
        ] {
            assert!(scan(body).is_none(), "{}", String::from_utf8_lossy(body));
        }
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(65), "]".repeat(65));
        assert!(scan(deep.as_bytes()).is_none());
        let ok = format!("{{\"x\":{}{}}}", "[".repeat(64), "]".repeat(64));
        assert!(scan(ok.as_bytes()).is_some());
    }

    #[test]
    fn strings_are_scanned_eight_bytes_at_a_time_without_missing_a_quote() {
        for len in 0..40 {
            for special in ['"', '\\', '\u{1}'] {
                let body = format!(
                    "{{\"x\":\"{}{}{}\"}}",
                    "a".repeat(len),
                    if special == '"' {
                        "\\\""
                    } else if special == '\\' {
                        "\\\\"
                    } else {
                        ""
                    },
                    "b".repeat(len % 9)
                );
                assert!(scan(body.as_bytes()).is_some(), "{body}");
                if special == '\u{1}' {
                    let bad = format!("{{\"x\":\"{}\u{1}\"}}", "a".repeat(len));
                    assert!(scan(bad.as_bytes()).is_none(), "{bad:?}");
                }
            }
        }
    }

    #[test]
    fn output_caps_are_read_and_written_per_endpoint() {
        let p = probe(br#"{"model":"m","max_tokens":7,"n":3}"#).unwrap();
        assert_eq!(p.output_cap(Endpoint::ChatCompletions), Some(7));
        assert_eq!(p.outputs_billed(Endpoint::ChatCompletions), 3);
        // Both chat names: the larger bounds whichever an upstream reads.
        let p = probe(br#"{"model":"m","max_tokens":7,"max_completion_tokens":5}"#).unwrap();
        assert_eq!(p.output_cap(Endpoint::ChatCompletions), Some(7));
        let p = probe(br#"{"model":"m","max_tokens":null,"max_completion_tokens":5}"#).unwrap();
        assert_eq!(p.output_cap(Endpoint::ChatCompletions), Some(5));
        let p = probe(br#"{"model":"m","n":2,"best_of":4}"#).unwrap();
        assert_eq!(p.output_cap(Endpoint::Completions), None);
        assert!(!p.output_cap_present(Endpoint::Completions));
        assert_eq!(p.outputs_billed(Endpoint::Completions), 4);
        assert_eq!(p.output_cap(Endpoint::Embeddings), Some(0));
        assert!(probe(br#"{"model":"m","max_tokens":-1}"#).is_err());
    }

    #[test]
    fn probes_bodies() {
        let p = probe(br#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#).unwrap();
        assert_eq!(p.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(p.stream, Some(true));
        let p = probe(br#"{"model":"a\u002db"}"#).unwrap();
        assert_eq!(p.model.as_deref(), Some("a-b"), "escaped names are decoded");
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"model\":3}",
            b"{\"messages\":[]}",
            b"{\"model\":\"x\",\"stream\":\"yes\"}",
        ] {
            assert_eq!(
                probe(bad).unwrap_err().status,
                400,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
