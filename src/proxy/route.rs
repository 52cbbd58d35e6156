//! Phase 1, route: which endpoint a request is for, and which model it names.
//! Pure functions over bytes; benchmarked in benches/parse_route.rs.

use std::borrow::Cow;

use serde::Deserialize;

use crate::error::ApiError;
use crate::http::Method;
use crate::limits::MODEL_NAME_BYTES_MAX;
use crate::tokens::json;

/// The proxied OpenAI endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
}

impl Endpoint {
    /// The path under the provider's base URL.
    pub fn suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
        }
    }
}

/// What the gateway does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Api(Endpoint),
    ListModels,
    GetModel(&'a str),
    Health,
    MethodNotAllowed,
    NotFound,
}

/// Classifies a request by method and path. Paths work with or without the
/// `/v1` prefix, as OpenAI-compatible servers commonly accept both.
pub fn classify(method: Method, path: &str) -> Route<'_> {
    if path == "/health" || path == "/healthz" {
        return if matches!(method, Method::Get | Method::Head) {
            Route::Health
        } else {
            Route::MethodNotAllowed
        };
    }
    let rest = path.strip_prefix("/v1").unwrap_or(path);
    let rest = if rest.len() > 1 {
        rest.trim_end_matches('/')
    } else {
        rest
    };
    let endpoint = match rest {
        "/chat/completions" => Some(Endpoint::ChatCompletions),
        "/completions" => Some(Endpoint::Completions),
        "/embeddings" => Some(Endpoint::Embeddings),
        "/responses" => Some(Endpoint::Responses),
        _ => None,
    };
    if let Some(e) = endpoint {
        return if method == Method::Post {
            Route::Api(e)
        } else {
            Route::MethodNotAllowed
        };
    }
    if rest == "/models" {
        return if method == Method::Get {
            Route::ListModels
        } else {
            Route::MethodNotAllowed
        };
    }
    if let Some(id) = rest.strip_prefix("/models/") {
        if !id.is_empty() {
            return if method == Method::Get {
                Route::GetModel(id)
            } else {
                Route::MethodNotAllowed
            };
        }
    }
    Route::NotFound
}

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
            Endpoint::Completions => self.max_tokens.value(),
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
            Endpoint::Completions => self.max_tokens.is_present(),
            Endpoint::Responses => self.max_output_tokens.is_present(),
            Endpoint::Embeddings => false,
        }
    }

    /// How many outputs the provider generates and bills for this request.
    pub fn outputs_billed(&self, endpoint: Endpoint) -> u64 {
        match endpoint {
            Endpoint::ChatCompletions => self.n.unwrap_or(1).max(1),
            Endpoint::Completions => self.n.unwrap_or(1).max(self.best_of.unwrap_or(1)).max(1),
            Endpoint::Responses | Endpoint::Embeddings => 1,
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

impl Endpoint {
    /// The protocol whose usage this endpoint's responses carry.
    pub fn protocol(self) -> crate::tokens::Protocol {
        use crate::tokens::Protocol;
        match self {
            Endpoint::ChatCompletions => Protocol::ChatCompletions,
            Endpoint::Completions => Protocol::Completions,
            Endpoint::Embeddings => Protocol::Embeddings,
            Endpoint::Responses => Protocol::Responses,
        }
    }
    /// Whether a stream of this endpoint carries usage only when asked
    /// (`stream_options.include_usage`); the Responses API always sends it.
    pub fn usage_on_request(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }
}

/// The body with `stream_options.include_usage` set to true, so the upstream
/// reports usage on a stream the client did not ask it for. Only that member
/// changes (added, or its value replaced; a `null` `stream_options` becomes
/// an object); every other byte of the body is kept. `None` when the body is
/// not an object the member walker reads whole. `present`: whether the probe
/// saw a `stream_options` member; without one the member is added after the
/// opening brace with no walk of the body.
pub fn with_usage_requested(body: &[u8], present: bool) -> Option<Vec<u8>> {
    if !present {
        return with_first_member(body, "stream_options", br#"{"include_usage":true}"#);
    }
    let (s, e) = object_span(body)?;
    let mut options = None;
    json::each_member(body, s, e, |key, vs, ve| {
        if key_is(key, "stream_options") {
            options = Some((vs, ve));
        }
        Some(())
    })?;
    match options {
        // An object: set its include_usage (the probe took `null` or an
        // object; a duplicate member was refused by it).
        Some((vs, ve)) if body[vs] == b'{' => {
            let inner = set_members(body, vs, ve, &["include_usage"], b"true")?;
            let mut out = Vec::with_capacity(body.len() + inner.len());
            out.extend_from_slice(&body[..vs]);
            out.extend_from_slice(&inner);
            out.extend_from_slice(&body[ve..]);
            Some(out)
        }
        _ => {
            let object = set_members(
                body,
                s,
                e,
                &["stream_options"],
                br#"{"include_usage":true}"#,
            )?;
            let mut out = Vec::with_capacity(body.len() + 32);
            out.extend_from_slice(&body[..s]);
            out.extend_from_slice(&object);
            out.extend_from_slice(&body[e..]);
            Some(out)
        }
    }
}

/// `body` with `"name":value` added as its object's first member, without
/// a walk: only for a member the probe saw absent (the probe reads every
/// top-level name, escaped ones decoded, so none can be shadowed).
fn with_first_member(body: &[u8], name: &str, value: &[u8]) -> Option<Vec<u8>> {
    let open = json::skip_ws(body, 0);
    if body.get(open) != Some(&b'{') {
        return None;
    }
    let empty = body.get(json::skip_ws(body, open + 1)) == Some(&b'}');
    let mut out = Vec::with_capacity(body.len() + name.len() + value.len() + 4);
    out.extend_from_slice(&body[..=open]);
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(&body[open + 1..]);
    Some(out)
}

/// The span of the one object a body holds: its opening brace and the index
/// after its closing one (whitespace around it excluded).
fn object_span(body: &[u8]) -> Option<(usize, usize)> {
    let s = json::skip_ws(body, 0);
    let e = body.iter().rposition(|b| !json::is_ws(*b))? + 1;
    (body.get(s) == Some(&b'{') && body[e - 1] == b'}').then_some((s, e))
}

/// Whether a member's raw key (escapes left in) names `name`: compared as
/// an upstream's parser reads it, after unescaping.
fn key_is(raw: &[u8], name: &str) -> bool {
    if !raw.contains(&b'\\') {
        return raw == name.as_bytes();
    }
    // An escaped name is never shorter than what it decodes to.
    if raw.len() < name.len() {
        return false;
    }
    let mut key = Vec::with_capacity(raw.len());
    json::unescape_into(raw, &mut key);
    key == name.as_bytes()
}

/// The object at `b[s..e]` rewritten so that every member named one of
/// `names` (compared unescaped, duplicates included) holds `value`; when
/// none does, `"names[0]":value` is added as its first member. Whitespace,
/// order and every other member are kept byte for byte. `None` when the
/// object cannot be walked whole.
fn set_members(b: &[u8], s: usize, e: usize, names: &[&str], value: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(e - s + names[0].len() + value.len() + 4);
    let mut copied = s;
    let mut any = false;
    let mut replaced = 0;
    json::each_member(b, s, e, |key, vs, ve| {
        any = true;
        if names.iter().any(|n| key_is(key, n)) {
            out.extend_from_slice(&b[copied..vs]);
            out.extend_from_slice(value);
            copied = ve;
            replaced += 1;
        }
        Some(())
    })?;
    if replaced > 0 {
        out.extend_from_slice(&b[copied..e]);
        return Some(out);
    }
    out.clear();
    out.push(b'{');
    out.push(b'"');
    out.extend_from_slice(names[0].as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value);
    if any {
        out.push(b',');
    }
    out.extend_from_slice(&b[s + 1..e]);
    Some(out)
}

impl Endpoint {
    /// The member that caps a request's output, as the gateway writes it
    /// when it must bound a request (`None`: nothing to cap).
    pub fn output_cap_member(self) -> Option<&'static str> {
        match self {
            Endpoint::ChatCompletions => Some("max_completion_tokens"),
            Endpoint::Completions => Some("max_tokens"),
            Endpoint::Responses => Some("max_output_tokens"),
            Endpoint::Embeddings => None,
        }
    }

    /// Every name an endpoint's output cap goes by.
    pub fn output_cap_members(self) -> &'static [&'static str] {
        match self {
            Endpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
            Endpoint::Completions => &["max_tokens"],
            Endpoint::Responses => &["max_output_tokens"],
            Endpoint::Embeddings => &[],
        }
    }
}

/// The body with its output cap set to `cap`, so that whatever an upstream
/// reads as the cap is `cap`: every cap member the client sent (under any
/// of the endpoint's names, `null` or a count, however its name is escaped)
/// gets the value, or, when there is none, the endpoint's current name is
/// added. Nothing else in the body changes. `None` when the endpoint has no
/// cap or the body is not an object the member walker reads whole; the
/// caller must then not forward the request as capped. `present`: whether
/// the probe saw any cap member (`null` included,
/// [`Probe::output_cap_present`]); without one the member is added with no
/// walk of the body.
pub fn with_output_cap(
    body: &[u8],
    endpoint: Endpoint,
    cap: u64,
    present: bool,
) -> Option<Vec<u8>> {
    let names = endpoint.output_cap_members();
    if names.is_empty() {
        return None;
    }
    let mut value = Vec::with_capacity(20);
    crate::http::response::push_decimal(&mut value, cap);
    if !present {
        return with_first_member(body, names[0], &value);
    }
    let (s, e) = object_span(body)?;
    let object = set_members(body, s, e, names, &value)?;
    let mut out = Vec::with_capacity(body.len() + 32);
    out.extend_from_slice(&body[..s]);
    out.extend_from_slice(&object);
    out.extend_from_slice(&body[e..]);
    Some(out)
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
    let p = match super::probe::scan(body) {
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

#[cfg(test)]
mod tests {
    use super::*;

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

        let body = br#" {"model":"m","messages":[]}"#;
        let out = with_output_cap(body, Endpoint::ChatCompletions, 16, false).unwrap();
        assert_eq!(
            out,
            br#" {"max_completion_tokens":16,"model":"m","messages":[]}"#
        );
        // A cap the client set (or nulled) is rewritten in place, under every
        // name it was given, and nothing else changes.
        let out = with_output_cap(
            br#"{"model":"m", "max_tokens" : 100 }"#,
            Endpoint::ChatCompletions,
            9,
            true,
        )
        .unwrap();
        assert_eq!(out, br#"{"model":"m", "max_tokens" : 9 }"#);
        let out = with_output_cap(
            br#"{"max_completion_tokens":null,"model":"m","max_tokens":null}"#,
            Endpoint::ChatCompletions,
            9,
            true,
        )
        .unwrap();
        assert_eq!(
            out,
            br#"{"max_completion_tokens":9,"model":"m","max_tokens":9}"#
        );
        let out = with_output_cap(
            br#"{"model":"m","max\u005foutput_tokens":null}"#,
            Endpoint::Responses,
            9,
            true,
        )
        .unwrap();
        assert_eq!(out, br#"{"model":"m","max\u005foutput_tokens":9}"#);
        assert!(with_output_cap(b"{}", Endpoint::Embeddings, 1, false).is_none());
        assert_eq!(
            with_output_cap(b" {} ", Endpoint::Completions, 1, false).unwrap(),
            br#" {"max_tokens":1} "#
        );
    }

    #[test]
    fn classifies_paths() {
        assert_eq!(
            classify(Method::Post, "/v1/chat/completions"),
            Route::Api(Endpoint::ChatCompletions)
        );
        assert_eq!(
            classify(Method::Post, "/chat/completions"),
            Route::Api(Endpoint::ChatCompletions)
        );
        assert_eq!(
            classify(Method::Post, "/v1/responses/"),
            Route::Api(Endpoint::Responses)
        );
        assert_eq!(
            classify(Method::Get, "/v1/chat/completions"),
            Route::MethodNotAllowed
        );
        assert_eq!(classify(Method::Get, "/v1/models"), Route::ListModels);
        assert_eq!(
            classify(Method::Get, "/v1/models/gpt-4o"),
            Route::GetModel("gpt-4o")
        );
        assert_eq!(classify(Method::Get, "/v1/nope"), Route::NotFound);
        assert_eq!(classify(Method::Get, "/health"), Route::Health);
    }

    #[test]
    fn usage_is_requested_without_changing_anything_else() {
        let body = br#" {"model":"m","stream":true,"messages":[]}"#;
        let p = probe(body).unwrap();
        assert!(p.streaming() && !p.client_wants_usage());
        let out = with_usage_requested(body, p.stream_options.is_present()).unwrap();
        assert_eq!(
            out,
            br#" {"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
        let body =
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1.50}}"#;
        let p = probe(body).unwrap();
        assert!(!p.client_wants_usage());
        let out = with_usage_requested(body, p.stream_options.is_present()).unwrap();
        assert_eq!(
            out,
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true,"x":1.50}}"#
        );
        for (body, want) in [
            (
                &br#"{"model":"m","stream_options":null}"#[..],
                &br#"{"model":"m","stream_options":{"include_usage":true}}"#[..],
            ),
            (
                br#"{"model":"m","stream_options":{ }}"#,
                br#"{"model":"m","stream_options":{"include_usage":true }}"#,
            ),
            (
                br#"{"model":"m","stream\u005foptions":{"x":[]}}"#,
                br#"{"model":"m","stream\u005foptions":{"include_usage":true,"x":[]}}"#,
            ),
        ] {
            let p = probe(body).unwrap();
            assert!(p.stream_options.is_present());
            assert_eq!(
                String::from_utf8_lossy(&with_usage_requested(body, true).unwrap()),
                String::from_utf8_lossy(want)
            );
        }
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
