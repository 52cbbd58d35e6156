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
#[derive(Debug, Deserialize)]
pub struct Probe<'a> {
    #[serde(borrow)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub stream: Option<bool>,
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
    let p: Probe<'_> = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request_body",
            format!("the request body is not a valid JSON request: {e}"),
        )
    })?;
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
