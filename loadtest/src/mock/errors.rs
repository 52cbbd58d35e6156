//! OpenAI-shaped errors: `{"error":{"message","type","param","code"}}`.

use bytes::Bytes;
use hyper::StatusCode;
use serde::Serialize;

use super::common::{Head, Reply};

/// An error the mock answers with, in OpenAI's shape.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// The error type in a non-OpenAI wire format, when the status alone
    /// does not say it (Bedrock's `InvalidSignatureException`, ...).
    pub wire_type: Option<&'static str>,
}

/// The API dialect a route speaks; errors take its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `{"error":{"message","type","param","code"}}`.
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`.
    Anthropic,
    /// `{"error":{"code","message","status"}}`.
    Gemini,
    /// `{"message"}` with the type in the `x-amzn-errortype` header.
    Bedrock,
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
            wire_type: None,
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
            wire_type: None,
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
            wire_type: None,
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
            wire_type: None,
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
            wire_type: None,
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
            wire_type: None,
        }
    }

    /// An error with a wire-specific type (the OpenAI shape gets `kind`).
    pub fn typed(status: StatusCode, wire_type: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
            wire_type: Some(wire_type),
        }
    }

    /// This error as `wire` answers it: status, body and extra headers.
    pub fn reply(&self, wire: Wire) -> Reply {
        let status = self.status;
        match wire {
            Wire::OpenAi => Reply::Json(status, self.body()),
            Wire::Anthropic => {
                let kind = self.wire_type.unwrap_or(match status.as_u16() {
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    413 => "request_too_large",
                    429 => "rate_limit_error",
                    529 => "overloaded_error",
                    500..=599 => "api_error",
                    _ => "invalid_request_error",
                });
                let body = serde_json::json!({
                    "type": "error",
                    "error": {"type": kind, "message": self.message},
                });
                Reply::Json(status, to_json(&body))
            }
            Wire::Gemini => {
                let body = serde_json::json!({"error": {
                    "code": status.as_u16(),
                    "message": self.message,
                    "status": self.wire_type.unwrap_or_else(|| gemini_status(status)),
                }});
                Reply::Json(status, to_json(&body))
            }
            Wire::Bedrock => {
                let kind = self.wire_type.unwrap_or(match status.as_u16() {
                    403 => "AccessDeniedException",
                    404 => "ResourceNotFoundException",
                    408 => "ModelTimeoutException",
                    424 => "ModelErrorException",
                    429 => "ThrottlingException",
                    503 => "ServiceUnavailableException",
                    500..=599 => "InternalServerException",
                    _ => "ValidationException",
                });
                let body = serde_json::json!({"message": self.message});
                Reply::Full(
                    Head::json(status).with_header("x-amzn-errortype", kind),
                    to_json(&body),
                )
            }
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

/// The `status` string of a Google API error for an HTTP status.
pub fn gemini_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
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
