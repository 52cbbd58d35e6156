//! Counting tokens without the provider: the tokenizer fallback, and a
//! tokenizer-free upper bound on a request's input tokens.
//!
//! The tokenizers are tiktoken's BPE tables, compiled into the binary by
//! tiktoken-rs (nothing is fetched at run time). Building one takes about a
//! quarter of a second and some tens of MB, so each is built once, lazily, in
//! a process-wide singleton; call [`warm_up`] at start-up so that no request
//! pays for it.

use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

/// The BPE encodings the fallback counts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1, o3, o4, gpt-oss, codex.
    O200kBase,
    /// gpt-4, gpt-3.5-turbo, the text-embedding models, davinci-002.
    Cl100kBase,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }
}

/// Which tokenizer stands for a model, and whether that is a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelFamily {
    pub encoding: Encoding,
    /// True for models whose tokenizer is not tiktoken's (Claude, Llama,
    /// Mistral, ... and unknown names): their counts are estimates with
    /// o200k_base, typically within ±15% for English text, more off for code
    /// and other languages. The log should say so.
    pub guessed: bool,
}

impl ModelFamily {
    /// The fallback for a model nothing is known about.
    pub const UNKNOWN: ModelFamily = ModelFamily {
        encoding: Encoding::O200kBase,
        guessed: true,
    };

    /// The family of a model name as clients send it (`gpt-4o-mini`,
    /// `openai/gpt-4.1`, `ft:gpt-4o-mini:org::id`, an Azure deployment name
    /// like `gpt-35-turbo`). Pure string matching; no allocation for names
    /// already in lower case.
    pub fn for_model(model: &str) -> ModelFamily {
        let base = model.rsplit('/').next().unwrap_or(model).trim();
        let lower;
        let name = if base.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = base.to_ascii_lowercase();
            lower.as_str()
        } else {
            base
        };
        let known = |encoding| ModelFamily {
            encoding,
            guessed: false,
        };
        match get_tokenizer(name) {
            Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => {
                return known(Encoding::O200kBase)
            }
            Some(Tokenizer::Cl100kBase) => return known(Encoding::Cl100kBase),
            // Retired GPT-3 models (p50k/r50k): close enough to cl100k.
            Some(_) => {
                return ModelFamily {
                    encoding: Encoding::Cl100kBase,
                    guessed: true,
                }
            }
            None => {}
        }
        let name = name.strip_prefix("ft:").unwrap_or(name);
        let family = |p: &str| {
            name.strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.', ':', '_']))
        };
        if [
            "o1",
            "o3",
            "o4",
            "gpt-5",
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "chatgpt-4o",
            "gpt-oss",
            "codex-mini",
            "computer-use-preview",
        ]
        .iter()
        .any(|p| family(p))
        {
            known(Encoding::O200kBase)
        } else if ["gpt-4", "gpt-3.5", "gpt-35", "text-embedding"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            known(Encoding::Cl100kBase)
        } else {
            ModelFamily::UNKNOWN
        }
    }
}

/// Builds both tokenizers now (about 0.25 s each), so that no request pays
/// for it. Call once at start-up, off the workers' hot path. Safe to call
/// from several threads and more than once.
pub fn warm_up() {
    warm_up_encoding(Encoding::O200kBase);
    warm_up_encoding(Encoding::Cl100kBase);
}

/// Builds one tokenizer now; see [`warm_up`].
pub fn warm_up_encoding(encoding: Encoding) {
    let _ = encoding.bpe();
}

/// tiktoken's token count of `text` (special-token markers such as
/// `<|endoftext|>` count as ordinary text, as they do in generated output).
///
/// Costs about a microsecond per 10-20 bytes (see `benches/tokens.rs`), and
/// builds the tokenizer on first use unless [`warm_up`] ran.
pub fn count_tokens(encoding: Encoding, text: &str) -> u64 {
    encoding.bpe().encode_ordinary(text).len() as u64
}

/// Bytes per token assumed where text could not be kept for the tokenizer
/// (past [`super::TEXT_BYTES_MAX`]): English averages about 4 bytes per token
/// with these encodings.
pub const TEXT_BYTES_PER_TOKEN_ESTIMATE: u64 = 4;

/// Tokens estimated for `bytes` of text that was not kept: bytes / 4,
/// rounded up.
pub fn tokens_from_text_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(TEXT_BYTES_PER_TOKEN_ESTIMATE)
}

/// An upper bound on the input tokens of a request whose body is
/// `body_bytes` long, without a tokenizer: the body's length itself.
///
/// Why this holds for the text a body carries:
/// - every BPE token of o200k/cl100k (and of every byte-level BPE) stands for
///   at least one byte of the UTF-8 text it encodes;
/// - that text sits in the body as JSON strings, and JSON escaping only
///   lengthens text (`\n` is 2 bytes for 1, `\u00e9` 6 for 2), never
///   shortens it;
/// - the tokens the provider adds around each message (role markers, about 3
///   to 4 per message, and 3 to prime the reply) are fewer than the bytes of
///   JSON syntax each message costs in the body (`{"role":"user","content":""}`
///   alone is 28 bytes), and tool definitions render to fewer tokens than
///   their JSON schema has bytes.
///
/// No tighter bound is safe without a tokenizer: texts exist that tokenize
/// at one token per byte (e.g. `1a1a1a...`, which o200k's pre-tokenizer splits
/// into one-byte pieces), so bytes/2 or bytes/4 can be exceeded by a hostile
/// client.
///
/// Where it does NOT hold: input the provider bills that the body only refers
/// to. Images (by URL, or small inline files for models that bill image tiles
/// at a multiple, like gpt-4o-mini), files and PDFs (`file_id`, `file_url`),
/// audio, `previous_response_id` and `conversation` (the Responses API
/// replays a stored conversation), stored prompt templates, and server-side
/// tools whose results are fed back as input (web search, file search, MCP,
/// code interpreter). [`prompt_bound_exception`] detects these; the budget
/// code must bound them another way (a per-model ceiling such as the context
/// window) or refuse them in strict mode.
pub fn prompt_upper_bound_tokens(body_bytes: usize) -> u64 {
    body_bytes as u64
}

/// Names and values that make a request bill input its body does not hold
/// (see [`prompt_upper_bound_tokens`]), as an upstream reads them: a JSON
/// string (a member's name or a string value, at any depth) that decodes to
/// one of these. Parts (`"type":"image_url"`), their members (`"image_url":
/// {...}`), files, audio and server-side tools.
pub const UNBOUNDED_INPUT_WORDS: [&str; 12] = [
    "image_url",
    "input_image",
    "image",
    "file_id",
    "file_url",
    "file_data",
    "input_file",
    "document",
    "input_audio",
    "file_search",
    "code_interpreter",
    "container_upload",
];

/// Server-side tools by name prefix (`web_search_preview`,
/// `web_search_2025_08_26`, `mcp`, `mcp_call`, ...).
const UNBOUNDED_INPUT_PREFIXES: [&str; 2] = ["web_search", "mcp"];

/// Members whose value replays stored input when it is not `null`
/// (`previous_response_id`, `conversation`), or when it is an object (a
/// stored prompt template, `"prompt":{"id":...}`; a completions `prompt`
/// string or array is in the body itself).
const UNBOUNDED_INPUT_MEMBERS: [(&str, MemberValue); 3] = [
    ("previous_response_id", MemberValue::NotNull),
    ("conversation", MemberValue::NotNull),
    ("prompt", MemberValue::Object),
];

#[derive(Clone, Copy)]
enum MemberValue {
    NotNull,
    Object,
}

/// The first bytes of every word, prefix and member name above.
const UNBOUNDED_INPUT_FIRST_BYTES: &[u8] = b"ifdcwmp";

/// The longest of the words and member names, in bytes.
const UNBOUNDED_INPUT_WORD_BYTES_MAX: usize = 20;
/// Raw bytes one decoded byte can take in a JSON string (`\u0041`).
const JSON_ESCAPE_BYTES_MAX: usize = 6;

/// Whether the decoded JSON string `s` is one of [`UNBOUNDED_INPUT_WORDS`]
/// or starts with one of [`UNBOUNDED_INPUT_PREFIXES`]; the word if so.
fn unbounded_word(s: &[u8]) -> Option<&'static str> {
    UNBOUNDED_INPUT_WORDS
        .iter()
        .find(|w| w.as_bytes() == s)
        .or_else(|| {
            UNBOUNDED_INPUT_PREFIXES
                .iter()
                .find(|p| s.starts_with(p.as_bytes()))
        })
        .copied()
}

/// The first part of a request body that makes [`prompt_upper_bound_tokens`]
/// unsafe for it, if any (for the log and the refusal message).
///
/// Decided on the body's JSON structure, as an upstream reads it: one pass
/// over its strings (a quote outside a string always opens one, and each
/// string is skipped whole, escapes included), each compared after
/// unescaping, so neither whitespace (`"prompt" : {`) nor an escaped name
/// (`"image\u005furl"`) hides a part; text inside a message is one string
/// and matches only if it is exactly such a word (a false alarm in the safe
/// direction). Strings that cannot be a word are dismissed by length and
/// first byte without decoding. A body the walk cannot read (the probe
/// accepted it, so not expected) counts as unbounded.
pub fn prompt_bound_exception(body: &[u8]) -> Option<&'static str> {
    let mut i = 0;
    while let Some(k) = memchr::memchr(b'"', &body[i..]) {
        let at = i + k;
        let Some((end, escaped)) = super::json::string_end_escaped(body, at) else {
            return Some("an unreadable body");
        };
        let raw = &body[at + 1..end - 1];
        i = end;
        let mut decoded = Vec::new();
        let text: &[u8] = if !escaped {
            // Every word and member name starts with one of these: most
            // strings (message text, roles, ids) stop here.
            if !raw
                .first()
                .is_some_and(|c| UNBOUNDED_INPUT_FIRST_BYTES.contains(c))
            {
                continue;
            }
            raw
        } else {
            // Words are lower-case ASCII, digits and `_`; escapes add `\`,
            // `u` and hex digits. Decode only the start made of those bytes
            // (message text is dismissed at its first space or capital):
            // the whole string when it is short enough to be a word, else a
            // start long enough for a prefix.
            let head_len = raw
                .iter()
                .take(UNBOUNDED_INPUT_WORD_BYTES_MAX * JSON_ESCAPE_BYTES_MAX + 1)
                .position(|&c| !matches!(c, b'a'..=b'z' | b'A'..=b'F' | b'0'..=b'9' | b'_' | b'\\'))
                .unwrap_or(
                    raw.len()
                        .min(UNBOUNDED_INPUT_WORD_BYTES_MAX * JSON_ESCAPE_BYTES_MAX + 1),
                );
            if head_len == 0 {
                continue;
            }
            super::json::unescape_into(&raw[..head_len], &mut decoded);
            if head_len < raw.len() {
                // Not all of it: only a prefix can match.
                if let Some(p) = UNBOUNDED_INPUT_PREFIXES
                    .iter()
                    .find(|p| decoded.starts_with(p.as_bytes()))
                {
                    return Some(p);
                }
                continue;
            }
            &decoded
        };
        if let Some(w) = unbounded_word(text) {
            return Some(w);
        }
        if text.len() > UNBOUNDED_INPUT_WORD_BYTES_MAX {
            continue;
        }
        // A member whose value decides.
        let colon = super::json::skip_ws(body, end);
        if body.get(colon) != Some(&b':') {
            continue;
        }
        let value = super::json::skip_ws(body, colon + 1);
        for (name, when) in UNBOUNDED_INPUT_MEMBERS {
            if name.as_bytes() == text {
                let hit = match when {
                    MemberValue::NotNull => !body[value..].starts_with(b"null"),
                    MemberValue::Object => body.get(value) == Some(&b'{'),
                };
                if hit {
                    return Some(name);
                }
            }
        }
    }
    None
}

/// Keys whose string values are request parameters or identifiers, not text
/// the model reads.
const NON_PROMPT_KEYS: [&[u8]; 24] = [
    b"model",
    b"role",
    b"type",
    b"id",
    b"object",
    b"tool_call_id",
    b"call_id",
    b"item_id",
    b"url",
    b"file_id",
    b"detail",
    b"encoding_format",
    b"user",
    b"service_tier",
    b"reasoning_effort",
    b"effort",
    b"previous_response_id",
    b"prompt_cache_key",
    b"safety_identifier",
    b"stop",
    b"stop_sequences",
    b"voice",
    b"modalities",
    b"metadata",
];

/// Tokens the provider adds per JSON object of a request (each message's role
/// and separators; OpenAI documents 3 per message plus 3 to prime the reply,
/// which counting every object, the outer one included, covers).
pub const PROMPT_TOKENS_PER_OBJECT: u64 = 3;

/// Most text collected from a request body for [`estimate_prompt_tokens`]:
/// past it, bytes count at [`TEXT_BYTES_PER_TOKEN_ESTIMATE`].
pub const PROMPT_TEXT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// An estimate (not a bound) of a request's input tokens, for a charge whose
/// provider count never came: the tokenizer's count of every JSON string
/// value the model reads (message contents, system prompts, tool definitions
/// and arguments; not the model name, roles, ids, stop sequences, metadata,
/// URLs or inline `data:` URLs), plus [`PROMPT_TOKENS_PER_OBJECT`] per object.
/// Images, audio and files are not counted.
///
/// One linear scan with memchr, no parse and no recursion, then the
/// tokenizer: about as costly as counting the text (tens of MB/s), so run it
/// off the hot path, when an estimate is actually needed.
pub fn estimate_prompt_tokens(body: &[u8], encoding: Encoding) -> u64 {
    let mut text = Vec::new();
    let mut uncollected = 0u64;
    let mut objects = 0u64;
    let mut key: &[u8] = b"";
    let mut i = 0;
    while let Some(k) = memchr::memchr2(b'"', b'{', &body[i.min(body.len())..]) {
        let at = i + k;
        if body[at] == b'{' {
            objects += 1;
            i = at + 1;
            continue;
        }
        let Some(end) = super::json::string_end(body, at) else {
            break;
        };
        let raw = &body[at + 1..end - 1];
        let next = super::json::skip_ws(body, end);
        if body.get(next) == Some(&b':') {
            key = raw;
        } else if !NON_PROMPT_KEYS.contains(&key) && !raw.starts_with(b"data:") {
            if text.len() + raw.len() < PROMPT_TEXT_BYTES_MAX {
                // Strings are joined by one space (a separator, not a
                // trailing token).
                if !text.is_empty() {
                    text.push(b' ');
                }
                super::json::unescape_into(raw, &mut text);
            } else {
                uncollected += raw.len() as u64;
            }
        }
        i = end;
    }
    count_tokens(encoding, &String::from_utf8_lossy(&text))
        + tokens_from_text_bytes(uncollected)
        + objects * PROMPT_TOKENS_PER_OBJECT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        for m in [
            "gpt-4o",
            "gpt-4o-mini-2024-07-18",
            "openai/gpt-4.1-nano",
            "GPT-5",
            "gpt-5.1-codex",
            "o1",
            "o3-pro",
            "o4",
            "o4-mini",
            "ft:gpt-4o-mini:acme::abc123",
            "gpt-oss-120b",
            "chatgpt-4o-latest",
        ] {
            assert_eq!(
                ModelFamily::for_model(m),
                ModelFamily {
                    encoding: Encoding::O200kBase,
                    guessed: false
                },
                "{m}"
            );
        }
        for m in [
            "gpt-4",
            "gpt-4-turbo",
            "gpt-3.5-turbo-0125",
            "gpt-35-turbo",
            "text-embedding-3-small",
            "text-embedding-ada-002",
        ] {
            assert_eq!(
                ModelFamily::for_model(m),
                ModelFamily {
                    encoding: Encoding::Cl100kBase,
                    guessed: false
                },
                "{m}"
            );
        }
        for m in [
            "claude-sonnet-4-5",
            "llama-3.1-70b",
            "o1x",
            "",
            "mistral-large",
        ] {
            assert_eq!(ModelFamily::for_model(m), ModelFamily::UNKNOWN, "{m}");
        }
    }

    #[test]
    fn counts_with_tiktoken() {
        assert_eq!(count_tokens(Encoding::O200kBase, ""), 0);
        assert_eq!(count_tokens(Encoding::O200kBase, "Hello, world!"), 4);
        assert_eq!(count_tokens(Encoding::Cl100kBase, "Hello, world!"), 4);
        assert_eq!(tokens_from_text_bytes(0), 0);
        assert_eq!(tokens_from_text_bytes(9), 3);
    }

    #[test]
    fn the_byte_bound_holds_for_text_bodies() {
        let hostile = "1a".repeat(500);
        let texts = [
            "What is the capital of France?".to_string(),
            "日本語のテキストとエモジ😀".repeat(20),
            hostile.clone(),
            "\n\n\t  ".repeat(50),
        ];
        for t in texts {
            let body =
                serde_json::json!({"model":"gpt-4o","messages":[{"role":"user","content":t}]})
                    .to_string();
            for e in [Encoding::O200kBase, Encoding::Cl100kBase] {
                // Tokens of the text plus OpenAI's documented chat overhead
                // (3 per message, 3 to prime the reply).
                let tokens = count_tokens(e, &t) + 3 + 3 + 1;
                assert!(tokens <= prompt_upper_bound_tokens(body.len()));
            }
        }
        // The hostile text is about one token per byte: no tighter bound.
        assert!(count_tokens(Encoding::O200kBase, &hostile) * 10 >= hostile.len() as u64 * 9);
    }

    #[test]
    fn prompt_estimate_counts_the_text_the_model_reads() {
        let body = br#"{"model":"gpt-4o-mini","stop":["END"],"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":[{"type":"text","text":"What is the capital of France?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}]}"#;
        let text = count_tokens(
            Encoding::O200kBase,
            "You are a helpful assistant. What is the capital of France?",
        );
        // 6 objects: the body, 2 messages, 2 parts, the image_url.
        assert_eq!(
            estimate_prompt_tokens(body, Encoding::O200kBase),
            text + 6 * 3
        );
        assert!(
            estimate_prompt_tokens(body, Encoding::O200kBase)
                <= prompt_upper_bound_tokens(body.len())
        );
        for cut in 0..body.len() {
            let _ = estimate_prompt_tokens(&body[..cut], Encoding::O200kBase);
        }
    }

    #[test]
    fn every_word_starts_with_a_byte_the_scan_looks_at() {
        let names = UNBOUNDED_INPUT_WORDS
            .iter()
            .chain(UNBOUNDED_INPUT_PREFIXES.iter())
            .chain(UNBOUNDED_INPUT_MEMBERS.iter().map(|(n, _)| n));
        for n in names {
            assert!(
                UNBOUNDED_INPUT_FIRST_BYTES.contains(&n.as_bytes()[0]),
                "{n}"
            );
            assert!(n.len() <= UNBOUNDED_INPUT_WORD_BYTES_MAX, "{n}");
        }
    }

    #[test]
    fn detects_input_the_body_only_refers_to() {
        let plain = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"say \"image_url\" please"}]}"#;
        assert_eq!(prompt_bound_exception(plain), None);
        let img = br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#;
        assert_eq!(prompt_bound_exception(img), Some("image_url"));
        let prev = br#"{"model":"gpt-5","previous_response_id":"resp_1","input":"hi"}"#;
        assert_eq!(prompt_bound_exception(prev), Some("previous_response_id"));
        let tool = br#"{"model":"gpt-5","tools":[{"type":"web_search_preview"}],"input":"hi"}"#;
        assert_eq!(prompt_bound_exception(tool), Some("web_search"));
        // Neither whitespace nor escaped names hide a part.
        for body in [
            &br#"{"model":"gpt-5","prompt" : {"id":"pmpt_1"}}"#[..],
            br#"{"model":"gpt-5","prompt":
{"id":"pmpt_1"}}"#,
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"x"},{"type":"image\u005furl","image\u005furl":{"url":"https://x"}}]}]}"#,
            br#"{"input":[{"type":"\u0069nput_file","file_id":"f"}]}"#,
            br#"{"tools":[{"type":"\u006dcp_server_with_a_long_name_and_more_and_more_and_more_and_more_and_more_and_more_and_more_and_more_and_more_and_more_x"}]}"#,
            br#"{"model":"gpt-5","previous\u005fresponse_id":"resp_1"}"#,
        ] {
            assert!(
                prompt_bound_exception(body).is_some(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Stored input only when it is there; prompts in the body are bounded.
        for body in [
            &br#"{"model":"gpt-5","previous_response_id":null,"conversation": null,"input":"hi"}"#
                [..],
            br#"{"model":"davinci-002","prompt":"say hi"}"#,
            br#"{"model":"davinci-002","prompt":["a","b"]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"image"}]}"#,
        ] {
            let hit = prompt_bound_exception(body);
            let expected = body.ends_with(br#""image"}]}"#);
            assert_eq!(hit.is_some(), expected, "{}", String::from_utf8_lossy(body));
        }
    }
}
