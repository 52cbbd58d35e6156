//! OpenAI-shaped errors: `{"error":{"message","type","param","code"}}`.

use bytes::Bytes;
use hyper::StatusCode;
use serde::Serialize;

/// An error the mock answers with, in OpenAI's shape.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// 400 `invalid_request_error`, optionally naming the offending parameter.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code: None,
        }
    }

    /// 400 for a header of the misbehaviour contract with an invalid value.
    pub fn bad_header(name: &str, expected: &str) -> Self {
        Self::bad_request(
            format!("mock: header `{name}` must be {expected}"),
            Some(name),
        )
    }

    /// 404 for a path the mock does not serve.
    pub fn unknown_path(method: &str, path: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("Invalid URL ({method} {path})"),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// 405 for a known path asked with the wrong method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("Method {method} is not allowed for {path}"),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// 413 for a request body over the size limit.
    pub fn body_too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("mock: request body is larger than {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// 404 for a model id not in `--models`.
    pub fn model_not_found(id: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{id}` does not exist or you do not have access to it."),
            kind: "invalid_request_error",
            param: None,
            code: Some("model_not_found"),
        }
    }

    /// The error asked for with `x-mock-status`, typed like OpenAI's own.
    pub fn injected(status: StatusCode) -> Self {
        let (kind, code) = match status.as_u16() {
            401 => ("invalid_request_error", Some("invalid_api_key")),
            403 => ("permission_error", None),
            404 => ("invalid_request_error", Some("model_not_found")),
            429 => ("requests", Some("rate_limit_exceeded")),
            500..=599 => ("server_error", None),
            _ => ("invalid_request_error", None),
        };
        ApiError {
            status,
            message: format!("mock: injected error with status {}", status.as_u16()),
            kind,
            param: None,
            code,
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> Bytes {
        let envelope = ErrorEnvelope {
            error: ErrorBody {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        to_json(&envelope)
    }
}

/// Serialises `value` to JSON bytes. The mock only serialises plain structs
/// with string keys, which cannot fail; should it ever, an empty object is
/// sent rather than panicking.
pub fn to_json<T: Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(b"{}"))
}
