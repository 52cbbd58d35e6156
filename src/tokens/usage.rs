//! Token usage as the providers report it, read per protocol and brought to
//! one normalized shape.
//!
//! The way to the `usage` object is found with [`super::json`]'s byte walker,
//! so a large body (an embeddings list, a long completion) is skipped, not
//! parsed; the object's members are read with the same walker, counts
//! converted by hand (no serde: `usage_from_body` went from 4,379 to 3,600
//! instructions a request by callgrind, docs/benchmarks.md).
//! Anything malformed reads as "no provider usage", never as an error or a
//! panic: the caller then estimates.

use super::json;

/// The wire protocol of a response, which decides where its usage lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OpenAI `/v1/chat/completions` (`chat.completion[.chunk]`), and the
    /// OpenAI-compatible servers (vLLM, Ollama, Groq, DeepSeek, ...).
    ChatCompletions,
    /// OpenAI legacy `/v1/completions` (`text_completion`).
    Completions,
    /// OpenAI `/v1/responses`.
    Responses,
    /// Anthropic `/v1/messages`.
    AnthropicMessages,
    /// OpenAI `/v1/embeddings` (never streamed; usage has `prompt_tokens` only).
    Embeddings,
}

/// Where a token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UsageSource {
    /// Reported by the provider: what it will invoice.
    #[default]
    Provider,
    /// Counted or bounded by the gateway because the provider's count is
    /// missing (stream cut, client gone, upstream omitted it).
    Estimated,
}

/// Token usage, normalized across protocols.
///
/// The subsets are *included* in their totals, whatever the provider's own
/// convention (Anthropic reports cache reads and writes beside `input_tokens`;
/// here they are added into `prompt_tokens`):
/// - `prompt_tokens` = every input token, `cached_tokens` (read from the
///   provider's prompt cache) and `cache_write_tokens` (written to it) among
///   them;
/// - `completion_tokens` = every output token, `reasoning_tokens` (hidden
///   chain of thought, OpenAI o-series and gpt-5) among them.
///
/// So a price is applied as: [`Usage::uncached_prompt_tokens`] at the input
/// rate, `cached_tokens` at the cached rate, `cache_write_tokens` at the
/// cache-write rate, [`Usage::visible_completion_tokens`] at the output rate
/// and `reasoning_tokens` at the reasoning rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// `Estimated` when any of the counts above is not the provider's.
    pub source: UsageSource,
}

impl Usage {
    /// Prompt tokens neither read from nor written to the cache.
    pub fn uncached_prompt_tokens(&self) -> u64 {
        self.prompt_tokens
            .saturating_sub(self.cached_tokens)
            .saturating_sub(self.cache_write_tokens)
    }

    /// Completion tokens that are not reasoning tokens.
    pub fn visible_completion_tokens(&self) -> u64 {
        self.completion_tokens.saturating_sub(self.reasoning_tokens)
    }

    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// One member of a usage object as read: `None` until seen, then the
/// value (`Some(None)` for `null`). A member seen twice fails the object, as
/// it would in serde.
#[derive(Clone, Copy)]
struct Field<T>(Option<Option<T>>);

impl<T> Default for Field<T> {
    fn default() -> Self {
        Field(None)
    }
}

impl<T> Field<T> {
    fn set(&mut self, v: Option<T>) -> Option<()> {
        match self.0 {
            Some(_) => None,
            None => {
                self.0 = Some(v);
                Some(())
            }
        }
    }

    fn get(self) -> Option<T> {
        self.0.flatten()
    }
}

/// Reads the count at `doc[s..e]` into `f`.
fn set_count(f: &mut Field<u64>, doc: &[u8], s: usize, e: usize) -> Option<()> {
    f.set(json::count(&doc[s..e])?)
}

/// A usage object's reader: takes each member of the object in turn.
trait ReadObject: Default {
    /// Reads member `key` (raw, between its quotes) with value `doc[s..e]`;
    /// `None` fails the object. Unknown members are ignored.
    fn member(&mut self, doc: &[u8], key: &[u8], s: usize, e: usize) -> Option<()>;
}

/// Reads the object at `doc[s..e]`, if the value there is one (`null` or
/// any other value reads as absent). A member of the wrong type (a count
/// that is not a non-negative integer, details that are not an object), a
/// known member given twice or a malformed object fail the whole object.
fn object_at<T: ReadObject>(doc: &[u8], range: Option<(usize, usize)>) -> Option<T> {
    let (s, e) = range?;
    if doc.get(s) != Some(&b'{') {
        return None;
    }
    let mut t = T::default();
    json::each_member(doc, s, e, |key, vs, ve| t.member(doc, key, vs, ve))?;
    Some(t)
}

/// Reads an optional nested object: `null` is absent.
fn set_object<T: ReadObject>(f: &mut Field<T>, doc: &[u8], s: usize, e: usize) -> Option<()> {
    if &doc[s..e] == b"null" {
        return f.set(None);
    }
    f.set(Some(object_at(doc, Some((s, e)))?))
}

/// OpenAI's `usage` (chat, completions, embeddings) and the compatible
/// servers' variants. Unknown members are ignored; `null` reads as absent.
#[derive(Default)]
struct OpenAiUsage {
    prompt_tokens: Field<u64>,
    completion_tokens: Field<u64>,
    prompt_tokens_details: Field<OpenAiPromptDetails>,
    completion_tokens_details: Field<OpenAiCompletionDetails>,
    /// DeepSeek reports its cache hits here instead.
    prompt_cache_hit_tokens: Field<u64>,
}

impl ReadObject for OpenAiUsage {
    fn member(&mut self, doc: &[u8], key: &[u8], s: usize, e: usize) -> Option<()> {
        match key {
            b"prompt_tokens" => set_count(&mut self.prompt_tokens, doc, s, e),
            b"completion_tokens" => set_count(&mut self.completion_tokens, doc, s, e),
            b"prompt_tokens_details" => set_object(&mut self.prompt_tokens_details, doc, s, e),
            b"completion_tokens_details" => {
                set_object(&mut self.completion_tokens_details, doc, s, e)
            }
            b"prompt_cache_hit_tokens" => set_count(&mut self.prompt_cache_hit_tokens, doc, s, e),
            _ => Some(()),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct OpenAiPromptDetails {
    cached_tokens: Field<u64>,
}

impl ReadObject for OpenAiPromptDetails {
    fn member(&mut self, doc: &[u8], key: &[u8], s: usize, e: usize) -> Option<()> {
        match key {
            b"cached_tokens" => set_count(&mut self.cached_tokens, doc, s, e),
            _ => Some(()),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct OpenAiCompletionDetails {
    reasoning_tokens: Field<u64>,
}

impl ReadObject for OpenAiCompletionDetails {
    fn member(&mut self, doc: &[u8], key: &[u8], s: usize, e: usize) -> Option<()> {
        match key {
            b"reasoning_tokens" => set_count(&mut self.reasoning_tokens, doc, s, e),
            _ => Some(()),
        }
    }
}

/// The Responses API's `usage`.
#[derive(Default)]
struct ResponsesUsage {
    input_tokens: Field<u64>,
    output_tokens: Field<u64>,
    input_tokens_details: Field<OpenAiPromptDetails>,
    output_tokens_details: Field<OpenAiCompletionDetails>,
}

impl ReadObject for ResponsesUsage {
    fn member(&mut self, doc: &[u8], key: &[u8], s: usize, e: usize) -> Option<()> {
        match key {
            b"input_tokens" => set_count(&mut self.input_tokens, doc, s, e),
            b"output_tokens" => set_count(&mut self.output_tokens, doc, s, e),
            b"input_tokens_details" => set_object(&mut self.input_tokens_details, doc, s, e),
            b"output_tokens_details" => set_object(&mut self.output_tokens_details, doc, s, e),
            _ => Some(()),
        }
    }
}

/// Anthropic's `usage`: `input_tokens` excludes the cache reads and writes.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AnthropicUsage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
}

/// [`AnthropicUsage`] as read, before its members are known to be unique.
#[derive(Default)]
struct AnthropicFields {
    input_tokens: Field<u64>,
    output_tokens: Field<u64>,
    cache_creation_input_tokens: Field<u64>,
    cache_read_input_tokens: Field<u64>,
}

impl ReadObject for AnthropicFields {
    fn member(&mut self, doc: &[u8], key: &[u8], s: usize, e: usize) -> Option<()> {
        match key {
            b"input_tokens" => set_count(&mut self.input_tokens, doc, s, e),
            b"output_tokens" => set_count(&mut self.output_tokens, doc, s, e),
            b"cache_creation_input_tokens" => {
                set_count(&mut self.cache_creation_input_tokens, doc, s, e)
            }
            b"cache_read_input_tokens" => set_count(&mut self.cache_read_input_tokens, doc, s, e),
            _ => Some(()),
        }
    }
}

impl From<AnthropicFields> for AnthropicUsage {
    fn from(f: AnthropicFields) -> Self {
        AnthropicUsage {
            input_tokens: f.input_tokens.get(),
            output_tokens: f.output_tokens.get(),
            cache_creation_input_tokens: f.cache_creation_input_tokens.get(),
            cache_read_input_tokens: f.cache_read_input_tokens.get(),
        }
    }
}

/// Reads an Anthropic usage object.
fn anthropic_at(doc: &[u8], range: Option<(usize, usize)>) -> Option<AnthropicUsage> {
    object_at::<AnthropicFields>(doc, range).map(AnthropicUsage::from)
}

fn from_openai(u: OpenAiUsage, protocol: Protocol) -> Option<Usage> {
    let prompt_tokens = u.prompt_tokens.get()?;
    let completion_tokens = match (protocol, u.completion_tokens.get()) {
        (_, Some(c)) => c,
        (Protocol::Embeddings, None) => 0,
        (_, None) => return None,
    };
    let cached_tokens = u
        .prompt_tokens_details
        .get()
        .and_then(|d| d.cached_tokens.get())
        .or(u.prompt_cache_hit_tokens.get())
        .unwrap_or(0);
    let reasoning_tokens = u
        .completion_tokens_details
        .get()
        .and_then(|d| d.reasoning_tokens.get())
        .unwrap_or(0);
    Some(Usage {
        prompt_tokens,
        completion_tokens,
        cached_tokens,
        cache_write_tokens: 0,
        reasoning_tokens,
        source: UsageSource::Provider,
    })
}

fn from_responses(u: ResponsesUsage) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: u.input_tokens.get()?,
        completion_tokens: u.output_tokens.get()?,
        cached_tokens: u
            .input_tokens_details
            .get()
            .and_then(|d| d.cached_tokens.get())
            .unwrap_or(0),
        cache_write_tokens: 0,
        reasoning_tokens: u
            .output_tokens_details
            .get()
            .and_then(|d| d.reasoning_tokens.get())
            .unwrap_or(0),
        source: UsageSource::Provider,
    })
}

impl AnthropicUsage {
    /// (prompt, cached, cache_write) in the normalized convention, when
    /// `input_tokens` is known.
    pub fn prompt_parts(&self) -> Option<(u64, u64, u64)> {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let write = self.cache_creation_input_tokens.unwrap_or(0);
        let prompt = self
            .input_tokens?
            .saturating_add(read)
            .saturating_add(write);
        Some((prompt, read, write))
    }

    /// Later counts (message_delta's, which are cumulative) override earlier.
    pub fn merge(&mut self, later: AnthropicUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    fn to_usage(self) -> Option<Usage> {
        let (prompt_tokens, cached_tokens, cache_write_tokens) = self.prompt_parts()?;
        Some(Usage {
            prompt_tokens,
            completion_tokens: self.output_tokens?,
            cached_tokens,
            cache_write_tokens,
            reasoning_tokens: 0,
            source: UsageSource::Provider,
        })
    }
}

/// What an OpenAI chat or completions chunk says about usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkUsage {
    pub usage: Usage,
    /// The chunk is the usage-only one `stream_options.include_usage` adds:
    /// `choices` is `[]` and `object` is absent or a chunk type.
    pub usage_only: bool,
}

/// Reads a chat or completions chunk's usage: top-level `usage`, or Groq's
/// `x_groq.usage`.
pub(crate) fn openai_chunk(data: &[u8], protocol: Protocol) -> Option<ChunkUsage> {
    let start = json::skip_ws(data, 0);
    let mut usage = None;
    let mut groq = None;
    let mut choices_empty = false;
    let mut object_ok = true;
    for (key, s, e) in json::members(data, start) {
        match key {
            b"usage" => usage = Some((s, e)),
            b"x_groq" => groq = json::member(data, s, b"usage"),
            b"choices" => choices_empty = json::is_empty_array(data, s, e),
            b"object" => {
                object_ok = matches!(
                    json::string_contents(data, s, e),
                    Some(b"chat.completion.chunk" | b"text_completion")
                )
            }
            _ => {}
        }
    }
    let top = object_at::<OpenAiUsage>(data, usage).and_then(|u| from_openai(u, protocol));
    let usage = match top {
        Some(u) => u,
        None => from_openai(object_at(data, groq)?, protocol)?,
    };
    Some(ChunkUsage {
        usage,
        usage_only: top.is_some() && choices_empty && object_ok,
    })
}

/// Reads `response.usage` from a Responses stream's terminal event
/// (`response.completed`, `response.incomplete`, `response.failed`).
pub(crate) fn responses_event(data: &[u8]) -> Option<Usage> {
    let (s, _) = json::top_member(data, b"response")?;
    from_responses(object_at(data, json::member(data, s, b"usage"))?)
}

/// Reads `message.usage` from Anthropic's `message_start`.
pub(crate) fn anthropic_start(data: &[u8]) -> Option<AnthropicUsage> {
    let (s, _) = json::top_member(data, b"message")?;
    anthropic_at(data, json::member(data, s, b"usage"))
}

/// Reads `usage` from Anthropic's `message_delta`.
pub(crate) fn anthropic_delta(data: &[u8]) -> Option<AnthropicUsage> {
    anthropic_at(data, json::top_member(data, b"usage"))
}

/// The provider's usage in a whole (non-streamed) response body: OpenAI chat,
/// completions, embeddings and responses objects and Anthropic messages all
/// carry a top-level `usage`. `None` when it is absent or malformed (an error
/// body, say); the caller then estimates.
///
/// The top-level members are walked with a byte scan (no number parsing,
/// strings skipped with memchr), so a large embeddings body costs a scan, not
/// a parse; so are the `usage` object's members.
pub fn usage_from_body(protocol: Protocol, body: &[u8]) -> Option<Usage> {
    let range = json::top_member(body, b"usage");
    match protocol {
        Protocol::ChatCompletions | Protocol::Completions | Protocol::Embeddings => {
            from_openai(object_at(body, range)?, protocol)
        }
        Protocol::Responses => from_responses(object_at(body, range)?),
        Protocol::AnthropicMessages => anthropic_at(body, range)?.to_usage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(p: u64, c: u64, cached: u64, write: u64, reasoning: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: cached,
            cache_write_tokens: write,
            reasoning_tokens: reasoning,
            source: UsageSource::Provider,
        }
    }

    #[test]
    fn usage_objects_are_read_strictly() {
        let read = |u: &str| {
            let body = format!(r#"{{"object":"chat.completion","usage":{u}}}"#);
            usage_from_body(Protocol::ChatCompletions, body.as_bytes())
        };
        assert_eq!(
            read(r#"{"prompt_tokens":5,"completion_tokens":0,"extra":{"a":[1,"}"]}}"#),
            Some(provider(5, 0, 0, 0, 0))
        );
        assert_eq!(
            read(
                r#" { "prompt_tokens" : 5 , "completion_tokens":2, "prompt_tokens_details":null, "completion_tokens_details":{"reasoning_tokens":null} } "#
            ),
            Some(provider(5, 2, 0, 0, 0)),
            "whitespace anywhere, null details and counts read as absent"
        );
        assert_eq!(
            read(r#"{"prompt_tokens":18446744073709551615,"completion_tokens":1}"#),
            Some(provider(u64::MAX, 1, 0, 0, 0))
        );
        for bad in [
            r#"{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens":6}"#,
            r#"{"prompt_tokens":5.0,"completion_tokens":2}"#,
            r#"{"prompt_tokens":-5,"completion_tokens":2}"#,
            r#"{"prompt_tokens":1e3,"completion_tokens":2}"#,
            r#"{"prompt_tokens":05,"completion_tokens":2}"#,
            r#"{"prompt_tokens":"5","completion_tokens":2}"#,
            r#"{"prompt_tokens":18446744073709551616,"completion_tokens":2}"#,
            r#"{"prompt_tokens":5,"completion_tokens":2,}"#,
            r#"{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens_details":3}"#,
            r#"{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":true}}"#,
            r#"{"prompt_tokens":5,"completion_tokens":null}"#,
            r#"[5,2]"#,
            r#"null"#,
        ] {
            assert_eq!(read(bad), None, "{bad}");
        }
        // Cut short: the walker finds no end to the object.
        let cut = br#"{"usage":{"prompt_tokens":5,"completion_tokens":2"#;
        assert_eq!(usage_from_body(Protocol::ChatCompletions, cut), None);
    }

    #[test]
    fn chat_body() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"a \"usage\": {} b"}}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":4,"audio_tokens":0}},"service_tier":"default"}"#;
        assert_eq!(
            usage_from_body(Protocol::ChatCompletions, body),
            Some(provider(19, 10, 3, 0, 4))
        );
    }

    #[test]
    fn embeddings_body_has_prompt_tokens_only() {
        let body = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023,-0.0093,1e-5]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(
            usage_from_body(Protocol::Embeddings, body),
            Some(provider(8, 0, 0, 0, 0))
        );
        // A chat body without completion_tokens is not trusted.
        assert_eq!(usage_from_body(Protocol::ChatCompletions, body), None);
    }

    #[test]
    fn responses_body() {
        let body = br#"{"id":"resp_1","object":"response","tools":[{"type":"function","name":"f","parameters":{"properties":{"usage":{"type":"string"}}}}],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":123},"user":null}"#;
        assert_eq!(
            usage_from_body(Protocol::Responses, body),
            Some(provider(36, 87, 0, 0, 64))
        );
    }

    #[test]
    fn anthropic_body_adds_cache_tokens_into_prompt() {
        let body = br#"{"id":"msg_1","type":"message","content":[{"type":"tool_use","input":{"usage":{"input_tokens":1}}}],"usage":{"input_tokens":10,"cache_creation_input_tokens":200,"cache_read_input_tokens":1000,"output_tokens":50}}"#;
        let u = usage_from_body(Protocol::AnthropicMessages, body).unwrap();
        assert_eq!(u, provider(1210, 50, 1000, 200, 0));
        assert_eq!(u.uncached_prompt_tokens(), 10);
    }

    #[test]
    fn malformed_or_missing_usage_is_none() {
        for body in [
            &br#"{"error":{"message":"x","type":"server_error"}}"#[..],
            br#"{"usage":null}"#,
            br#"{"usage":{"prompt_tokens":-1,"completion_tokens":2}}"#,
            br#"{"usage":{"prompt_tokens":1.5,"completion_tokens":2}}"#,
            br#"{"usage":{"prompt_tokens":1,"completion_tokens":2"#,
            b"",
            b"[]",
            b"\xff\xfe",
        ] {
            assert_eq!(usage_from_body(Protocol::ChatCompletions, body), None);
            assert_eq!(usage_from_body(Protocol::AnthropicMessages, body), None);
        }
    }

    #[test]
    fn chunk_usage_only_and_groq() {
        let data = br#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        let c = openai_chunk(data, Protocol::ChatCompletions).unwrap();
        assert!(c.usage_only);
        assert_eq!(c.usage, provider(5, 7, 0, 0, 0));
        let data = br#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"x_groq":{"id":"req","usage":{"prompt_tokens":5,"completion_tokens":7}}}"#;
        let c = openai_chunk(data, Protocol::ChatCompletions).unwrap();
        assert!(!c.usage_only);
        assert_eq!(c.usage.completion_tokens, 7);
        let data = br#"{"object":"chat.completion.chunk","choices":[],"usage":null}"#;
        assert_eq!(openai_chunk(data, Protocol::ChatCompletions), None);
    }
}
