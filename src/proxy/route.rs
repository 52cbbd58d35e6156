//! Phase 1, route: which endpoint a request is for (the body is read by
//! [`super::probe`] and rewritten by [`super::rewrite`]). Pure functions;
//! benchmarked in benches/parse_route.rs.

use crate::http::Method;
pub use crate::providers::Endpoint;

/// What the gateway does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Api(Endpoint),
    ListModels,
    GetModel(&'a str),
    /// `GET /v1/bursar/usage`: the key's own spend and last requests
    /// ([`super::usage`]).
    Usage,
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
        "/messages" => Some(Endpoint::Messages),
        // After the endpoints: a chat request never compares against it.
        "/bursar/usage" => {
            return if method == Method::Get {
                Route::Usage
            } else {
                Route::MethodNotAllowed
            }
        }
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
        assert_eq!(classify(Method::Get, "/v1/bursar/usage"), Route::Usage);
        assert_eq!(classify(Method::Get, "/bursar/usage/"), Route::Usage);
        assert_eq!(
            classify(Method::Post, "/v1/bursar/usage"),
            Route::MethodNotAllowed
        );
        assert_eq!(classify(Method::Get, "/v1/bursar"), Route::NotFound);
        assert_eq!(classify(Method::Get, "/health"), Route::Health);
    }
}
