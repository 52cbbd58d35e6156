//! One request log row, request tags, and the row's JSON rendering.
//!
//! A [`LogRow`] is built by a worker at the end of a request and handed to the
//! log writer by value (`LogSender::try_log`); nothing here does I/O.
//!
//! # Tags
//!
//! A request's tags come from three places, in this order of precedence on
//! the same key:
//! 1. the `x-bursar-tags` header (`feature=search,env=prod`): bursar's own
//!    header, so it is checked strictly and a bad tag refuses the request
//!    ([`TagError`], a 400);
//! 2. the request body's `user` field, as the tag `user=<value>`;
//! 3. the body's `metadata` object: each string value becomes a tag.
//!
//! `user` and `metadata` are OpenAI's own fields, and OpenAI accepts values
//! bursar cannot use as tags (metadata keys with spaces, values up to 512
//! characters, more entries than bursar keeps). The gateway must not refuse
//! a request the provider would accept, so the body is lenient: an entry
//! that is not a valid tag is skipped, and once the request has [`TAGS_MAX`]
//! tags the body's remaining valid entries are dropped and counted
//! ([`ParsedTags::dropped`], `bursar_tags_dropped_total`), never refused.
//! The header is strict: more than [`TAGS_MAX`] tags in it alone is a 400.
//! What is kept is deterministic: the header's tags, then `user`, then
//! `metadata`'s entries in its map's order (by key: serde_json's map is
//! sorted), until [`TAGS_MAX`].
//!
//! Tags come out sorted by key with unique keys, so their JSON object form
//! (stored and rendered) round-trips exactly.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::money::Money;

/// Most tags one request carries (header, `user` and `metadata` together):
/// more in the header is refused, more from the body is dropped and counted.
pub const TAGS_MAX: usize = 32;
/// Longest tag key, in bytes.
pub const TAG_KEY_BYTES_MAX: usize = 64;
/// Longest tag value, in bytes.
pub const TAG_VALUE_BYTES_MAX: usize = 256;
/// Longest `x-bursar-tags` header value we read, in bytes: [`TAGS_MAX`]
/// tags of the longest key and value with their separators.
pub const TAGS_HEADER_BYTES_MAX: usize = TAGS_MAX * (TAG_KEY_BYTES_MAX + TAG_VALUE_BYTES_MAX + 2);

/// The tag key of the request body's `user` field.
pub const TAG_KEY_USER: &str = "user";

/// How the response cache answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheStatus {
    /// The cache was not consulted (off, or the request skipped it).
    None,
    /// Served from the exact cache.
    Hit,
    /// Served from the semantic cache.
    SemanticHit,
    /// Looked up, not found, forwarded.
    Miss,
}

impl CacheStatus {
    /// The stored and rendered name: "none", "hit", "semantic-hit", "miss".
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheStatus::None => "none",
            CacheStatus::Hit => "hit",
            CacheStatus::SemanticHit => "semantic-hit",
            CacheStatus::Miss => "miss",
        }
    }

    /// The status named by [`CacheStatus::as_str`]; `None` for anything else.
    pub fn parse(s: &str) -> Option<CacheStatus> {
        Some(match s {
            "none" => CacheStatus::None,
            "hit" => CacheStatus::Hit,
            "semantic-hit" => CacheStatus::SemanticHit,
            "miss" => CacheStatus::Miss,
            _ => return None,
        })
    }
}

/// One proxied request, as the request log keeps it.
///
/// `Serialize`/`Deserialize` is the spill file's line format (the cost as a
/// decimal string: JSON numbers are not safe for i128); the API's rendering is
/// [`LogRow::to_json`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRow {
    /// The request id (`req_` + 28 hex digits); unique, the row's key.
    pub id: String,
    /// When the request started, unix milliseconds.
    pub time_ms: i64,
    /// The virtual key's name. The names are shared with the catalog (an
    /// `Arc` each), so a row costs no allocation per name.
    pub key: Arc<str>,
    pub team: Option<Arc<str>>,
    pub customer: Option<Arc<str>>,
    pub provider: Arc<str>,
    pub model: String,
    /// The API endpoint, e.g. "chat/completions".
    pub endpoint: Cow<'static, str>,
    /// The HTTP status answered to the client.
    pub status: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// The cost charged, in picodollars (1 USD = 10^12).
    #[serde(with = "i128_string")]
    pub cost_picodollars: i128,
    /// The spend a cache hit avoided: what the original request cost, in
    /// picodollars; 0 unless `cache_status` is a hit. Spill lines written
    /// before the field existed read as 0.
    #[serde(with = "i128_string", default)]
    pub avoided_picodollars: i128,
    /// The price table version the cost was computed with.
    pub price_version: Arc<str>,
    /// Tokens were counted by the tokenizer, not reported by the provider.
    pub estimated: bool,
    /// Time to the first response byte, microseconds; `None` when no byte came.
    pub ttfb_us: Option<u64>,
    /// Time to the end of the response, microseconds.
    pub total_us: u64,
    pub cache_status: CacheStatus,
    pub stream: bool,
    /// Sorted by key, unique keys (as [`parse_tags`] makes them).
    pub tags: Vec<(String, String)>,
    /// The prompt, kept only when `[log] store_text` is on.
    pub prompt_text: Option<String>,
    /// The completion, kept only when `[log] store_text` is on.
    pub completion_text: Option<String>,
}

mod i128_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl LogRow {
    /// The row as the admin API renders it:
    /// `{"id","time","key","team","customer","provider","model","status",
    /// "prompt_tokens","completion_tokens","cached_tokens","cache_write_tokens",
    /// "reasoning_tokens","cost_usd","avoided_usd","price_version","estimated","ttfb_ms",
    /// "total_ms","cache","stream","tags"}`.
    ///
    /// `time` is RFC 3339 UTC with milliseconds; `cost_usd` (and
    /// `avoided_usd`, the spend a cache hit avoided) is the exact
    /// decimal string of [`Money`]'s `Display` (a cost outside Money's bound,
    /// which no price can produce, is rendered from the raw picodollars with
    /// the same exact formatting); `ttfb_ms`/`total_ms` are milliseconds with
    /// the microseconds as the fraction (`ttfb_ms` is null when no byte came);
    /// `tags` is an object.
    pub fn to_json(&self) -> serde_json::Value {
        let tags: serde_json::Map<String, serde_json::Value> = self
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::json!({
            "id": self.id,
            "time": format_time_ms(self.time_ms),
            "key": self.key,
            "team": self.team,
            "customer": self.customer,
            "provider": self.provider,
            "model": self.model,
            "status": self.status,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": format_usd(self.cost_picodollars),
            "avoided_usd": format_usd(self.avoided_picodollars),
            "price_version": self.price_version,
            "estimated": self.estimated,
            "ttfb_ms": self.ttfb_us.map(micros_as_ms),
            "total_ms": micros_as_ms(self.total_us),
            "cache": self.cache_status.as_str(),
            "stream": self.stream,
            "tags": tags,
        })
    }
}

/// The exact decimal USD string of an amount in picodollars, whatever its
/// size.
pub fn format_usd(picodollars: i128) -> String {
    Money::picodollars_decimal(picodollars)
}

/// Milliseconds with microsecond fraction, as a JSON number ("12.345").
/// Exact: every integer count of microseconds below 2^53 is, divided by
/// 1000, printed back as its three-decimal value by the shortest-round-trip
/// float formatting serde_json uses.
fn micros_as_ms(us: u64) -> serde_json::Value {
    if us.is_multiple_of(1000) {
        serde_json::Value::from(us / 1000)
    } else {
        serde_json::Value::from(us as f64 / 1000.0)
    }
}

/// RFC 3339 UTC with milliseconds always shown: "2026-11-27T18:30:00.000Z".
/// Times outside 1970..=9999 are clamped into it (as `budget::period` does).
pub fn format_time_ms(ms: i64) -> String {
    use crate::budget::period::civil_from_days;
    const DAY_MS: i64 = 86_400_000;
    let ms = crate::budget::period::clamp_time_ms(ms);
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    let in_day = ms.rem_euclid(DAY_MS);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day % 3_600_000 / 60_000,
        in_day % 60_000 / 1000,
        in_day % 1000
    )
}

/// Why a request's tags are refused. The message is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("x-bursar-tags is not valid UTF-8")]
    NotUtf8,
    #[error("x-bursar-tags is longer than {TAGS_HEADER_BYTES_MAX} bytes")]
    HeaderTooLong,
    #[error("x-bursar-tags element {0:?} is not key=value")]
    NotKeyValue(String),
    #[error("tag key {0:?} is empty or has a character outside A-Z a-z 0-9 _ . -")]
    BadKey(String),
    #[error("tag key {key:?} is longer than {TAG_KEY_BYTES_MAX} bytes")]
    KeyTooLong { key: String },
    #[error("tag {key:?} has an empty value")]
    EmptyValue { key: String },
    #[error("tag {key:?} has a value longer than {TAG_VALUE_BYTES_MAX} bytes")]
    ValueTooLong { key: String },
    #[error("tag {key:?} has a control character in its value")]
    ControlInValue { key: String },
    #[error("tag {key:?} is given twice in x-bursar-tags")]
    Duplicate { key: String },
    #[error("more than {TAGS_MAX} tags in x-bursar-tags")]
    TooMany,
}

/// Whether `key` is a valid tag key: 1..=[`TAG_KEY_BYTES_MAX`] bytes of
/// `[A-Za-z0-9_.-]`.
pub fn check_tag_key(key: &str) -> Result<(), TagError> {
    if key.len() > TAG_KEY_BYTES_MAX {
        return Err(TagError::KeyTooLong {
            key: truncate_for_message(key),
        });
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if key.is_empty() || !key.bytes().all(ok) {
        return Err(TagError::BadKey(truncate_for_message(key)));
    }
    Ok(())
}

/// Whether `value` is a valid value for tag `key`: 1..=[`TAG_VALUE_BYTES_MAX`]
/// bytes, no control characters.
pub fn check_tag_value(key: &str, value: &str) -> Result<(), TagError> {
    let key = || key.to_string();
    if value.is_empty() {
        return Err(TagError::EmptyValue { key: key() });
    }
    if value.len() > TAG_VALUE_BYTES_MAX {
        return Err(TagError::ValueTooLong { key: key() });
    }
    if value.chars().any(char::is_control) {
        return Err(TagError::ControlInValue { key: key() });
    }
    Ok(())
}

/// A refused key echoed in an error is cut so the message stays small.
fn truncate_for_message(s: &str) -> String {
    let mut end = s.len().min(TAG_KEY_BYTES_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A request's tags, and what the body offered beyond the bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedTags {
    /// Sorted by key, unique keys; at most [`TAGS_MAX`].
    pub tags: Vec<(String, String)>,
    /// Valid tags from the body's `user` and `metadata` not kept because the
    /// request already had [`TAGS_MAX`] (for `bursar_tags_dropped_total`).
    /// Entries that are not valid tags, or whose key is already set, are
    /// skipped and not counted.
    pub dropped: u64,
}

/// A request's tags from the `x-bursar-tags` header value, the body's `user`
/// field and its `metadata` object (see the module doc for the rules).
///
/// Header elements are `key=value` separated by `,`; whitespace around
/// elements, keys and values is ignored, and so are empty elements (as in any
/// HTTP list). The result is sorted by key with unique keys. Only the header
/// can refuse; the body's tags past [`TAGS_MAX`] are dropped and counted.
pub fn parse_tags_counted(
    header: Option<&[u8]>,
    user: Option<&str>,
    metadata: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<ParsedTags, TagError> {
    // A sorted map keeps keys unique and ordered; first insert wins, so the
    // sources are visited in precedence order.
    let mut tags = std::collections::BTreeMap::<String, String>::new();
    if let Some(raw) = header {
        if raw.len() > TAGS_HEADER_BYTES_MAX {
            return Err(TagError::HeaderTooLong);
        }
        let text = std::str::from_utf8(raw).map_err(|_| TagError::NotUtf8)?;
        for element in text.split(',') {
            let element = element.trim();
            if element.is_empty() {
                continue;
            }
            let Some((k, v)) = element.split_once('=') else {
                return Err(TagError::NotKeyValue(truncate_for_message(element)));
            };
            let (k, v) = (k.trim(), v.trim());
            check_tag_key(k)?;
            check_tag_value(k, v)?;
            if tags.contains_key(k) {
                return Err(TagError::Duplicate { key: k.to_string() });
            }
            if tags.len() == TAGS_MAX {
                return Err(TagError::TooMany);
            }
            tags.insert(k.to_string(), v.to_string());
        }
    }
    let mut dropped: u64 = 0;
    let mut add_lenient = |k: &str, v: &str| {
        if tags.contains_key(k) || check_tag_key(k).is_err() || check_tag_value(k, v).is_err() {
            return;
        }
        if tags.len() == TAGS_MAX {
            dropped = dropped.saturating_add(1);
            return;
        }
        tags.insert(k.to_string(), v.to_string());
    };
    if let Some(user) = user {
        add_lenient(TAG_KEY_USER, user);
    }
    if let Some(metadata) = metadata {
        for (k, v) in metadata {
            if let serde_json::Value::String(v) = v {
                add_lenient(k, v);
            }
        }
    }
    Ok(ParsedTags {
        tags: tags.into_iter().collect(),
        dropped,
    })
}

/// [`parse_tags_counted`] without the count of dropped body tags.
pub fn parse_tags(
    header: Option<&[u8]>,
    user: Option<&str>,
    metadata: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Vec<(String, String)>, TagError> {
    parse_tags_counted(header, user, metadata).map(|t| t.tags)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn tags(
        header: Option<&str>,
        user: Option<&str>,
        metadata: Option<serde_json::Value>,
    ) -> Result<Vec<(String, String)>, TagError> {
        let metadata = metadata.map(|v| v.as_object().unwrap().clone());
        parse_tags(header.map(str::as_bytes), user, metadata.as_ref())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn header_tags_are_parsed_trimmed_and_sorted() {
        assert_eq!(
            tags(Some("feature=search,env=prod"), None, None),
            Ok(pairs(&[("env", "prod"), ("feature", "search")]))
        );
        assert_eq!(
            tags(Some(" a = 1 , ,b=two words ,"), None, None),
            Ok(pairs(&[("a", "1"), ("b", "two words")]))
        );
        assert_eq!(tags(Some(""), None, None), Ok(vec![]));
        assert_eq!(tags(None, None, None), Ok(vec![]));
        assert_eq!(
            tags(Some("k.1_x-Y=a=b"), None, None),
            Ok(pairs(&[("k.1_x-Y", "a=b")]))
        );
    }

    #[test]
    fn header_refuses_bad_elements() {
        assert_eq!(
            tags(Some("feature"), None, None),
            Err(TagError::NotKeyValue("feature".into()))
        );
        assert_eq!(
            tags(Some("=x"), None, None),
            Err(TagError::BadKey("".into()))
        );
        assert_eq!(
            tags(Some("a b=x"), None, None),
            Err(TagError::BadKey("a b".into()))
        );
        assert_eq!(
            tags(Some("é=x"), None, None),
            Err(TagError::BadKey("é".into()))
        );
        assert_eq!(
            tags(Some("a="), None, None),
            Err(TagError::EmptyValue { key: "a".into() })
        );
        assert_eq!(
            tags(Some("a=1,a=2"), None, None),
            Err(TagError::Duplicate { key: "a".into() })
        );
        assert_eq!(
            tags(Some("a=x\u{7f}y"), None, None),
            Err(TagError::ControlInValue { key: "a".into() })
        );
        assert_eq!(
            parse_tags(Some(b"a=\xff"), None, None),
            Err(TagError::NotUtf8)
        );
    }

    #[test]
    fn header_bounds_are_enforced() {
        let key = "k".repeat(TAG_KEY_BYTES_MAX);
        let value = "v".repeat(TAG_VALUE_BYTES_MAX);
        assert!(tags(Some(&format!("{key}={value}")), None, None).is_ok());
        assert_eq!(
            tags(Some(&format!("{key}k=1")), None, None),
            Err(TagError::KeyTooLong { key: key.clone() })
        );
        assert_eq!(
            tags(Some(&format!("a={value}v")), None, None),
            Err(TagError::ValueTooLong { key: "a".into() })
        );
        let max: Vec<String> = (0..TAGS_MAX).map(|i| format!("t{i}=v")).collect();
        assert_eq!(
            tags(Some(&max.join(",")), None, None).unwrap().len(),
            TAGS_MAX
        );
        let over: Vec<String> = (0..=TAGS_MAX).map(|i| format!("t{i}=v")).collect();
        assert_eq!(
            tags(Some(&over.join(",")), None, None),
            Err(TagError::TooMany)
        );
        let long = "a".repeat(TAGS_HEADER_BYTES_MAX + 1);
        assert_eq!(tags(Some(&long), None, None), Err(TagError::HeaderTooLong));
    }

    #[test]
    fn user_and_metadata_become_tags_and_the_header_wins() {
        let md = serde_json::json!({"feature": "chat", "env": "dev", "n": 3, "ok": true});
        assert_eq!(
            tags(Some("env=prod"), Some("u-42"), Some(md)),
            Ok(pairs(&[
                ("env", "prod"),
                ("feature", "chat"),
                ("user", "u-42")
            ]))
        );
        // The user field wins over metadata's "user"; the header over both.
        let md = serde_json::json!({"user": "from-metadata"});
        assert_eq!(
            tags(None, Some("from-field"), Some(md.clone())),
            Ok(pairs(&[("user", "from-field")]))
        );
        assert_eq!(
            tags(Some("user=from-header"), Some("from-field"), Some(md)),
            Ok(pairs(&[("user", "from-header")]))
        );
    }

    #[test]
    fn body_entries_that_are_not_tags_are_skipped() {
        let long = "v".repeat(TAG_VALUE_BYTES_MAX + 1);
        let md = serde_json::json!({
            "conversation title": "x", "": "x", "empty": "", "long": long, "ctl": "a\nb", "good": "yes"
        });
        assert_eq!(
            tags(None, Some(""), Some(md)),
            Ok(pairs(&[("good", "yes")]))
        );
        assert_eq!(tags(None, Some(&"u".repeat(300)), None), Ok(vec![]));
    }

    fn counted(
        header: Option<&str>,
        user: Option<&str>,
        metadata: Option<serde_json::Value>,
    ) -> Result<ParsedTags, TagError> {
        let metadata = metadata.map(|v| v.as_object().unwrap().clone());
        parse_tags_counted(header.map(str::as_bytes), user, metadata.as_ref())
    }

    /// `n` metadata entries `m00=v` .. in key order.
    fn metadata(n: usize) -> serde_json::Value {
        (0..n)
            .map(|i| (format!("m{i:02}"), serde_json::json!("v")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    #[test]
    fn the_header_alone_is_bounded_strictly() {
        let header: Vec<String> = (0..TAGS_MAX).map(|i| format!("t{i}=v")).collect();
        let full = counted(Some(&header.join(",")), None, None).unwrap();
        assert_eq!((full.tags.len(), full.dropped), (TAGS_MAX, 0));
        let over: Vec<String> = (0..=TAGS_MAX).map(|i| format!("t{i}=v")).collect();
        assert_eq!(
            counted(Some(&over.join(",")), Some("u"), Some(metadata(3))),
            Err(TagError::TooMany)
        );
    }

    #[test]
    fn the_body_past_the_bound_is_dropped_and_counted_not_refused() {
        // A full header: user and every metadata entry are dropped, counted.
        let header: Vec<String> = (0..TAGS_MAX).map(|i| format!("t{i}=v")).collect();
        let got = counted(Some(&header.join(",")), Some("u"), Some(metadata(5))).unwrap();
        assert_eq!(got.dropped, 6);
        assert_eq!(got.tags.len(), TAGS_MAX);
        assert!(got.tags.iter().all(|(k, _)| k.starts_with('t')), "{got:?}");

        // Metadata alone past the bound: the first TAGS_MAX in key order kept.
        let got = counted(None, None, Some(metadata(TAGS_MAX + 8))).unwrap();
        assert_eq!(got.dropped, 8);
        let kept: Vec<String> = (0..TAGS_MAX).map(|i| format!("m{i:02}")).collect();
        assert_eq!(
            got.tags.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            kept
        );

        // Header first, then user, then metadata until the bound.
        let header: Vec<String> = (0..TAGS_MAX - 2).map(|i| format!("t{i}=v")).collect();
        let got = counted(Some(&header.join(",")), Some("u-1"), Some(metadata(4))).unwrap();
        assert_eq!(got.tags.len(), TAGS_MAX);
        assert_eq!(got.dropped, 3);
        assert!(got.tags.contains(&("user".into(), "u-1".into())));
        assert!(got.tags.contains(&("m00".into(), "v".into())));
        assert!(!got.tags.iter().any(|(k, _)| k == "m01"), "{got:?}");

        // The uncounted entry point keeps the same tags.
        let metadata = metadata(TAGS_MAX + 1);
        assert_eq!(
            parse_tags(None, None, metadata.as_object()),
            Ok(counted(None, None, Some(metadata.clone())).unwrap().tags)
        );
    }

    #[test]
    fn skipped_body_entries_are_not_counted_as_dropped() {
        let header: Vec<String> = (0..TAGS_MAX).map(|i| format!("t{i}=v")).collect();
        // Invalid entries, and keys the header already set, are skipped.
        let md = serde_json::json!({"t0": "x", "bad key": "x", "empty": "", "n": 3});
        let got = counted(Some(&header.join(",")), Some(""), Some(md)).unwrap();
        assert_eq!((got.tags.len(), got.dropped), (TAGS_MAX, 0));
        // Under the bound nothing is dropped.
        let got = counted(Some("a=1"), Some("u"), Some(metadata(3))).unwrap();
        assert_eq!((got.tags.len(), got.dropped), (5, 0));
    }

    #[test]
    fn error_messages_are_clear() {
        assert_eq!(
            TagError::BadKey("a b".into()).to_string(),
            "tag key \"a b\" is empty or has a character outside A-Z a-z 0-9 _ . -"
        );
        assert_eq!(
            TagError::TooMany.to_string(),
            "more than 32 tags in x-bursar-tags"
        );
    }

    #[test]
    fn cache_status_names_round_trip() {
        for s in [
            CacheStatus::None,
            CacheStatus::Hit,
            CacheStatus::SemanticHit,
            CacheStatus::Miss,
        ] {
            assert_eq!(CacheStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(CacheStatus::parse("HIT"), None);
    }

    pub(crate) fn sample_row() -> LogRow {
        LogRow {
            id: "req_0123456789abcdef0123456789ab".into(),
            time_ms: 1_795_804_200_123,
            key: "k-search".into(),
            team: Some("search".into()),
            customer: None,
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            endpoint: Cow::Borrowed("chat/completions"),
            status: 200,
            prompt_tokens: 12,
            completion_tokens: 34,
            cached_tokens: 5,
            cache_write_tokens: 0,
            reasoning_tokens: 7,
            cost_picodollars: 12_345_678,
            avoided_picodollars: 0,
            price_version: "2026-11-01".into(),
            estimated: false,
            ttfb_us: Some(12_345),
            total_us: 250_000,
            cache_status: CacheStatus::Miss,
            stream: true,
            tags: pairs(&[("env", "prod"), ("feature", "search")]),
            prompt_text: None,
            completion_text: None,
        }
    }

    #[test]
    fn json_rendering_matches_the_contract() {
        let v = sample_row().to_json();
        let expected = serde_json::json!({
            "id": "req_0123456789abcdef0123456789ab",
            "time": "2026-11-27T18:30:00.123Z",
            "key": "k-search",
            "team": "search",
            "customer": null,
            "provider": "openai",
            "model": "gpt-4o-mini",
            "status": 200,
            "prompt_tokens": 12,
            "completion_tokens": 34,
            "cached_tokens": 5,
            "cache_write_tokens": 0,
            "reasoning_tokens": 7,
            "cost_usd": "0.000012345678",
            "avoided_usd": "0",
            "price_version": "2026-11-01",
            "estimated": false,
            "ttfb_ms": 12.345,
            "total_ms": 250,
            "cache": "miss",
            "stream": true,
            "tags": {"env": "prod", "feature": "search"}
        });
        assert_eq!(v, expected);
        assert_eq!(
            serde_json::to_string(&v["ttfb_ms"]).unwrap(),
            "12.345",
            "milliseconds print exactly"
        );
    }

    #[test]
    fn times_and_amounts_format_exactly() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_time_ms(1_795_804_200_005),
            "2026-11-27T18:30:00.005Z"
        );
        // Outside the civil-date range (before 1970, after 9999) it clamps.
        assert_eq!(format_time_ms(-1), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_usd(1), "0.000000000001");
        assert_eq!(format_usd(2_500_000_000_000), "2.5");
        assert_eq!(format_usd(0), "0");
        // Beyond Money's bound the formatting stays exact.
        assert_eq!(
            format_usd(i128::MAX),
            "170141183460469231731687303.715884105727"
        );
        assert_eq!(
            format_usd(i128::MIN),
            "-170141183460469231731687303.715884105728"
        );
    }

    #[test]
    fn spill_line_format_round_trips_every_i128() {
        let mut row = sample_row();
        for cost in [0, 1, -1, i128::MAX, i128::MIN] {
            row.cost_picodollars = cost;
            row.avoided_picodollars = cost.wrapping_neg();
            let line = serde_json::to_string(&row).unwrap();
            assert_eq!(serde_json::from_str::<LogRow>(&line).unwrap(), row);
        }
    }

    #[test]
    fn a_cache_hit_renders_the_spend_it_avoided() {
        let mut row = sample_row();
        row.cache_status = CacheStatus::Hit;
        row.cost_picodollars = 0;
        row.avoided_picodollars = 2_500_000_000_000;
        let v = row.to_json();
        assert_eq!(v["cost_usd"], "0");
        assert_eq!(v["avoided_usd"], "2.5");
        let line = serde_json::to_string(&row).unwrap();
        assert!(
            line.contains(r#""avoided_picodollars":"2500000000000""#),
            "{line}"
        );
    }

    #[test]
    fn a_spill_line_written_before_avoided_spend_reads_as_zero() {
        let mut row = sample_row();
        row.avoided_picodollars = 9;
        let mut old: serde_json::Value = serde_json::to_value(&row).unwrap();
        assert!(old
            .as_object_mut()
            .unwrap()
            .remove("avoided_picodollars")
            .is_some());
        let back: LogRow = serde_json::from_str(&old.to_string()).unwrap();
        assert_eq!(back.avoided_picodollars, 0);
        row.avoided_picodollars = 0;
        assert_eq!(back, row);
    }
}
