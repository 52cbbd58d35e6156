//! Just enough JSON to find one member's value and to unescape a string,
//! without parsing the whole document.
//!
//! The counter must not run a JSON parser over every delta of a stream (that
//! would cap it far below the 1 GB/s target), yet it must read a few members
//! of some events: `choices[].delta.content`, the top-level `type`, the
//! `usage` object. These helpers walk the bytes of one value at a time and
//! skip everything else with a byte scan; numbers are never converted.
//!
//! Every function takes untrusted bytes and returns `None` (or stops) on
//! anything malformed: nothing here indexes out of bounds or panics. None of it
//! recurses, so deep nesting cannot overflow the stack.
//!
//! A fact the callers lean on: in valid JSON, a quote inside a string is
//! always escaped (`\"`), so a needle such as `"delta"` followed by `:` can
//! only match a real key, never text inside a string value.

use memchr::{memchr, memchr2};

/// Whether `b` is JSON whitespace.
#[inline]
pub fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Index of the first non-whitespace byte at or after `i` (or `b.len()`).
#[inline]
pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

/// With `i` at an opening quote, the index just past the closing quote.
#[inline]
pub fn string_end(b: &[u8], i: usize) -> Option<usize> {
    string_end_escaped(b, i).map(|(end, _)| end)
}

/// [`string_end`], and whether the string holds an escape (found on the way
/// at no extra cost: the scan stops at every backslash anyway).
#[inline]
pub fn string_end_escaped(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i.checked_add(1)?;
    let mut escaped = false;
    loop {
        let k = j + memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[k] == b'"' {
            return Some((k + 1, escaped));
        }
        // A backslash escapes the next byte (for `\uXXXX` the four hex
        // digits that follow are plain bytes and need no care).
        escaped = true;
        j = k + 2;
    }
}

/// With `i` at the first byte of a value, the index just past it.
///
/// Objects and arrays are skipped by counting brackets outside strings; the
/// bracket kinds are not matched against each other (a malformed document may
/// be misread, never crash us).
pub fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth: usize = 0;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        // Numbers, true, false, null: up to the next delimiter.
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !is_ws(b[j]) {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The members of the object starting at `b[i] == '{'`, in order: the raw key
/// (between its quotes, still escaped) and the value's byte range. Iteration
/// stops at the closing brace or at the first malformed byte.
pub fn members(b: &[u8], i: usize) -> Members<'_> {
    let ok = b.get(i) == Some(&b'{');
    Members {
        b,
        i: i + 1,
        done: !ok,
    }
}

/// Iterator returned by [`members`].
pub struct Members<'a> {
    b: &'a [u8],
    i: usize,
    done: bool,
}

impl<'a> Iterator for Members<'a> {
    /// (raw key, value start, value end)
    type Item = (&'a [u8], usize, usize);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step();
        if item.is_none() {
            self.done = true;
        }
        item
    }
}

impl<'a> Members<'a> {
    fn step(&mut self) -> Option<(&'a [u8], usize, usize)> {
        let b = self.b;
        let mut i = skip_ws(b, self.i);
        if *b.get(i)? == b',' {
            i = skip_ws(b, i + 1);
        }
        if *b.get(i)? != b'"' {
            return None; // '}' or malformed
        }
        let key_end = string_end(b, i)?;
        let key = &b[i + 1..key_end - 1];
        let colon = skip_ws(b, key_end);
        if *b.get(colon)? != b':' {
            return None;
        }
        let vs = skip_ws(b, colon + 1);
        let ve = value_end(b, vs)?;
        self.i = ve;
        Some((key, vs, ve))
    }
}

/// Calls `f` with each member (raw key, value start, value end) of the object
/// whose value range is `b[s..e]`, in order. `None` when the range is not
/// one well-formed object (a member the walker cannot read, or anything but
/// whitespace before its closing brace) or when `f` returns `None`.
pub fn each_member(
    b: &[u8],
    s: usize,
    e: usize,
    mut f: impl FnMut(&[u8], usize, usize) -> Option<()>,
) -> Option<()> {
    let b = b.get(..e)?;
    let mut m = members(b, s);
    if m.done {
        return None;
    }
    for (key, vs, ve) in &mut m {
        f(key, vs, ve)?;
    }
    // The walk stopped at the closing brace, or at a malformed byte.
    let mut i = skip_ws(b, m.i);
    if b.get(i) == Some(&b',') {
        return None; // a trailing comma, or a member the walker could not read
    }
    if i < b.len() && b[i] == b'}' {
        i += 1;
    }
    (i == e && e > 0 && b.get(e - 1) == Some(&b'}')).then_some(())
}

/// A JSON count: `Some(Some(n))` for a non-negative integer literal (no
/// sign, fraction, exponent or leading zero) that fits `u64`, `Some(None)`
/// for `null`, `None` for anything else.
pub fn count(v: &[u8]) -> Option<Option<u64>> {
    match v {
        b"null" => Some(None),
        [] => None,
        [b'0'] => Some(Some(0)),
        [b'0', ..] => None,
        _ => {
            let mut n: u64 = 0;
            for &d in v {
                if !d.is_ascii_digit() {
                    return None;
                }
                n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            }
            Some(Some(n))
        }
    }
}

/// The value range of member `key` of the object at `b[i] == '{'`.
pub fn member(b: &[u8], i: usize, key: &[u8]) -> Option<(usize, usize)> {
    members(b, i)
        .find(|(k, _, _)| *k == key)
        .map(|(_, s, e)| (s, e))
}

/// The value range of top-level member `key` of a document holding one object.
pub fn top_member(doc: &[u8], key: &[u8]) -> Option<(usize, usize)> {
    member(doc, skip_ws(doc, 0), key)
}

/// The elements of the array starting at `b[i] == '['`, as value ranges.
pub fn elements(b: &[u8], i: usize) -> Elements<'_> {
    let ok = b.get(i) == Some(&b'[');
    Elements {
        b,
        i: i + 1,
        done: !ok,
    }
}

/// Iterator returned by [`elements`].
pub struct Elements<'a> {
    b: &'a [u8],
    i: usize,
    done: bool,
}

impl Iterator for Elements<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.done {
            return None;
        }
        let mut i = skip_ws(self.b, self.i);
        if self.b.get(i) == Some(&b',') {
            i = skip_ws(self.b, i + 1);
        }
        let item = match self.b.get(i) {
            None | Some(b']') => None,
            Some(_) => value_end(self.b, i).map(|e| (i, e)),
        };
        match item {
            Some((_, e)) => self.i = e,
            None => self.done = true,
        }
        item
    }
}

/// Whether the value range `b[s..e]` is an empty array (`[]`, spaces allowed).
pub fn is_empty_array(b: &[u8], s: usize, e: usize) -> bool {
    b.get(s) == Some(&b'[') && skip_ws(b, s + 1) + 1 == e && b.get(e - 1) == Some(&b']')
}

/// For a string value at `b[s..e]` (quotes included), its raw contents.
#[inline]
pub fn string_contents(b: &[u8], s: usize, e: usize) -> Option<&[u8]> {
    (e >= s + 2 && b[s] == b'"').then(|| &b[s + 1..e - 1])
}

/// Whether `b[i..]` starts, after whitespace, with `:` and then (after
/// whitespace) `want`; used to confirm that a needle found by memmem is a key
/// whose value starts with `want`. Returns the value's start.
#[inline]
pub fn key_value_start(b: &[u8], i: usize, want: u8) -> Option<usize> {
    let c = skip_ws(b, i);
    if *b.get(c)? != b':' {
        return None;
    }
    let v = skip_ws(b, c + 1);
    (*b.get(v)? == want).then_some(v)
}

/// Appends the unescaped UTF-8 of a JSON string's raw contents (the bytes
/// between the quotes) to `out`. Handles every JSON escape, including
/// `\uXXXX` surrogate pairs; a lone surrogate or a bad escape becomes U+FFFD.
/// The output is never longer than the input.
pub fn unescape_into(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < raw.len() {
        let Some(k) = memchr(b'\\', &raw[i..]) else {
            out.extend_from_slice(&raw[i..]);
            return;
        };
        out.extend_from_slice(&raw[i..i + k]);
        i += k + 1; // past the backslash
        let Some(&c) = raw.get(i) else {
            return; // a trailing lone backslash: malformed, dropped
        };
        i += 1;
        let simple = match c {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(s) = simple {
            out.push(s);
            continue;
        }
        if c != b'u' {
            push_char(out, char::REPLACEMENT_CHARACTER);
            continue;
        }
        let Some(hi) = hex4(raw, i) else {
            push_char(out, char::REPLACEMENT_CHARACTER);
            continue;
        };
        i += 4;
        let ch = if (0xD800..0xDC00).contains(&hi) {
            // A high surrogate: valid only when a low one follows.
            match (raw.get(i..i + 2), hex4(raw, i + 2)) {
                (Some(b"\\u"), Some(lo)) if (0xDC00..0xE000).contains(&lo) => {
                    i += 6;
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                }
                _ => None,
            }
        } else {
            char::from_u32(hi) // None for a lone low surrogate
        };
        push_char(out, ch.unwrap_or(char::REPLACEMENT_CHARACTER));
    }
}

#[inline]
fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// The value of four hex digits at `raw[i..i + 4]`.
#[inline]
fn hex4(raw: &[u8], i: usize) -> Option<u32> {
    let digits = raw.get(i..i.checked_add(4)?)?;
    let mut v = 0u32;
    for &d in digits {
        v = v << 4 | (d as char).to_digit(16)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_member_reads_one_well_formed_object() {
        let doc = br#"{"a":1, "b" : {"c":[2,"}"]} ,"d":null}"#;
        let mut seen = Vec::new();
        let r = each_member(doc, 0, doc.len(), |k, s, e| {
            seen.push((k.to_vec(), doc[s..e].to_vec()));
            Some(())
        });
        assert_eq!(r, Some(()));
        assert_eq!(
            seen,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), br#"{"c":[2,"}"]}"#.to_vec()),
                (b"d".to_vec(), b"null".to_vec()),
            ]
        );
        assert_eq!(each_member(b"{}", 0, 2, |_, _, _| None), Some(()));
        assert_eq!(each_member(b"{}", 0, 0, |_, _, _| Some(())), None);
        assert_eq!(each_member(b"", 0, 0, |_, _, _| Some(())), None);
        assert_eq!(each_member(b"{ }", 0, 3, |_, _, _| None), Some(()));
        for bad in [
            &b"{\"a\":1,}"[..],
            b"{\"a\":1",
            b"{\"a\" 1}",
            b"{1:2}",
            b"[1]",
            b"{,}",
        ] {
            assert_eq!(
                each_member(bad, 0, bad.len(), |_, _, _| Some(())),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(
            each_member(doc, 0, doc.len(), |k, _, _| (k != b"b").then_some(())),
            None
        );
    }

    #[test]
    fn counts_are_plain_non_negative_integers() {
        assert_eq!(count(b"0"), Some(Some(0)));
        assert_eq!(count(b"42"), Some(Some(42)));
        assert_eq!(count(b"18446744073709551615"), Some(Some(u64::MAX)));
        assert_eq!(count(b"null"), Some(None));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"-1",
            b"1.0",
            b"1e2",
            b"01",
            b"\"1\"",
            b"true",
            b"nul",
        ] {
            assert_eq!(count(bad), None, "{bad:?}");
        }
    }

    fn unescape(raw: &str) -> String {
        let mut out = Vec::new();
        unescape_into(raw.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn unescapes_every_escape_kind() {
        assert_eq!(
            unescape(r#"a\nb\"c\\d\/e\tf\r\b\f"#),
            "a\nb\"c\\d/e\tf\r\u{8}\u{c}"
        );
        assert_eq!(unescape(r"\u00e9\u4e2d"), "é中");
        assert_eq!(unescape(r"\ud83d\ude00!"), "😀!");
        assert_eq!(unescape("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn bad_escapes_become_replacement_chars_never_panics() {
        assert_eq!(unescape(r"\ud83d"), "\u{FFFD}");
        assert_eq!(unescape(r"\ud83dx"), "\u{FFFD}x");
        assert_eq!(unescape(r"\ude00"), "\u{FFFD}");
        assert_eq!(unescape(r"\u12"), "\u{FFFD}12");
        assert_eq!(unescape(r"\q"), "\u{FFFD}");
        assert_eq!(unescape("\\"), "");
        assert_eq!(unescape(r"\ud83d\u0041"), "\u{FFFD}A");
    }

    #[test]
    fn walks_members_and_skips_nested_values() {
        let doc = br#" {"a": [1, {"x": "}"}], "b" : "q\"}", "c":{"d":null},"e":-1.5e3}"#;
        let keys: Vec<&[u8]> = members(doc, 1).map(|(k, _, _)| k).collect();
        assert_eq!(keys, [&b"a"[..], b"b", b"c", b"e"]);
        let (s, e) = top_member(doc, b"b").unwrap();
        assert_eq!(&doc[s..e], br#""q\"}""#);
        let (s, e) = top_member(doc, b"e").unwrap();
        assert_eq!(&doc[s..e], b"-1.5e3");
        let (s, _) = top_member(doc, b"c").unwrap();
        let (ds, de) = member(doc, s, b"d").unwrap();
        assert_eq!(&doc[ds..de], b"null");
    }

    #[test]
    fn arrays_and_empty_arrays() {
        let doc = br#"{"choices":[ ],"x":[1,"a",[2]]}"#;
        let (s, e) = top_member(doc, b"choices").unwrap();
        assert!(is_empty_array(doc, s, e));
        let (s, e) = top_member(doc, b"x").unwrap();
        assert!(!is_empty_array(doc, s, e));
        let els: Vec<&[u8]> = elements(doc, s).map(|(a, b)| &doc[a..b]).collect();
        assert_eq!(els, [&b"1"[..], b"\"a\"", b"[2]"]);
    }

    #[test]
    fn truncated_documents_stop_quietly() {
        let doc = br#"{"a":"xx","b":{"c":"unterminated"#;
        for cut in 0..doc.len() {
            let d = &doc[..cut];
            let _ = members(d, 0).count();
            let _ = top_member(d, b"b");
            let _ = value_end(d, 0);
        }
        assert_eq!(members(doc, 0).count(), 1);
    }
}
