//! Phase 1, route: which endpoint a request is for, and which model it names.
//! Pure functions over bytes; benchmarked in benches/parse_route.rs.

use std::borrow::Cow;

use serde::Deserialize;

use crate::error::ApiError;
use crate::http::Method;
use crate::limits::MODEL_NAME_BYTES_MAX;

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

/// The fields of a request body the gateway acts on; the rest passes through
/// untouched.
#[derive(Debug, Default, Deserialize)]
pub struct Probe<'a> {
    #[serde(borrow)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Output caps, by endpoint: chat takes `max_completion_tokens` (or the
    /// older `max_tokens`), completions `max_tokens`, responses
    /// `max_output_tokens`.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
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
    /// embeddings request generates nothing: `Some(0)`.
    pub fn output_cap(&self, endpoint: Endpoint) -> Option<u64> {
        match endpoint {
            Endpoint::ChatCompletions => self.max_completion_tokens.or(self.max_tokens),
            Endpoint::Completions => self.max_tokens,
            Endpoint::Responses => self.max_output_tokens,
            Endpoint::Embeddings => Some(0),
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
            .as_ref()
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
/// reports usage on a stream the client did not ask it for. When the body has
/// no `stream_options` the member is inserted after the opening brace (no
/// parse: the body is a JSON object with at least `model`, so a member always
/// follows); otherwise the body is parsed and written again.
pub fn with_usage_requested(body: &[u8], has_stream_options: bool) -> Option<Vec<u8>> {
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;
    if !has_stream_options {
        let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
        if body[open] != b'{' {
            return None;
        }
        let mut out = Vec::with_capacity(body.len() + MEMBER.len());
        out.extend_from_slice(&body[..=open]);
        out.extend_from_slice(MEMBER);
        out.extend_from_slice(&body[open + 1..]);
        return Some(out);
    }
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let opts = v.as_object_mut()?.get_mut("stream_options")?;
    if !opts.is_object() {
        return None;
    }
    opts.as_object_mut()?
        .insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&v).ok()
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
}

/// The body with its output cap set to `cap`: the cap members the client
/// sent are changed (chat has two names for it; OpenAI refuses both at once),
/// or the endpoint's current name is added. When the body has
/// none of them the member is inserted after the opening brace without a
/// parse; otherwise the body is parsed and written again (rare: lowering a
/// cap the client set, "degrade before deny").
pub fn with_output_cap(
    body: &[u8],
    endpoint: Endpoint,
    cap: u64,
    has_cap: bool,
) -> Option<Vec<u8>> {
    let member = endpoint.output_cap_member()?;
    if !has_cap {
        let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
        if body[open] != b'{' {
            return None;
        }
        let text = format!("\"{member}\":{cap},");
        let mut out = Vec::with_capacity(body.len() + text.len());
        out.extend_from_slice(&body[..=open]);
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(&body[open + 1..]);
        return Some(out);
    }
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    let members: &[&str] = match endpoint {
        Endpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
        _ => &[member],
    };
    let mut set = false;
    for m in members {
        if obj.get(*m).is_some_and(|x| !x.is_null()) {
            obj.insert((*m).into(), serde_json::Value::from(cap));
            set = true;
        }
    }
    if !set {
        obj.insert(member.into(), serde_json::Value::from(cap));
    }
    serde_json::to_vec(&v).ok()
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
        let p = probe(br#"{"model":"m","max_tokens":7,"max_completion_tokens":5}"#).unwrap();
        assert_eq!(p.output_cap(Endpoint::ChatCompletions), Some(5));
        let p = probe(br#"{"model":"m","n":2,"best_of":4}"#).unwrap();
        assert_eq!(p.output_cap(Endpoint::Completions), None);
        assert_eq!(p.outputs_billed(Endpoint::Completions), 4);
        assert_eq!(p.output_cap(Endpoint::Embeddings), Some(0));
        assert!(probe(br#"{"model":"m","max_tokens":-1}"#).is_err());

        let body = br#" {"model":"m","messages":[]}"#;
        let out = with_output_cap(body, Endpoint::ChatCompletions, 16, false).unwrap();
        assert_eq!(
            out,
            br#" {"max_completion_tokens":16,"model":"m","messages":[]}"#
        );
        let out = with_output_cap(
            br#"{"model":"m","max_tokens":100}"#,
            Endpoint::ChatCompletions,
            9,
            true,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_tokens"], 9);
        assert!(v.get("max_completion_tokens").is_none(), "never both: {v}");
        let out = with_output_cap(
            br#"{"model":"m","max_output_tokens":100}"#,
            Endpoint::Responses,
            9,
            true,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_output_tokens"], 9);
        assert!(with_output_cap(b"{}", Endpoint::Embeddings, 1, false).is_none());
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
        let out = with_usage_requested(body, false).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        assert_eq!(v["messages"], serde_json::json!([]));
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#;
        let p = probe(body).unwrap();
        assert!(!p.client_wants_usage());
        let out = with_usage_requested(body, p.stream_options.is_some()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
        assert!(with_usage_requested(br#"{"model":"m","stream_options":null}"#, true).is_none());
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
