//! One error type that classifies: what failed, whose fault it was, whether a
//! retry may help, and how it looks to an OpenAI client.
//!
//! Every error a client sees is rendered by [`ApiError::to_json`] in OpenAI's
//! shape: `{"error":{"message":..,"type":..,"param":null,"code":..}}`.

use std::fmt;

/// Whose fault an error is. Retry and failover decide on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something we refuse.
    Client,
    /// The upstream failed, timed out or answered nonsense.
    Upstream,
    /// A bug or resource exhaustion of our own.
    Internal,
}

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// OpenAI's `type` field, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// OpenAI's `code` field, e.g. `model_not_found`.
    pub code: &'static str,
    pub message: String,
    pub fault: Fault,
    /// True when the same request may succeed if retried (on this or another upstream).
    pub retryable: bool,
    /// Extra response headers (e.g. `retry-after`).
    pub retry_after_secs: Option<u64>,
    /// For a 402: which budget refused, and its state.
    pub budget: Option<Box<BudgetDetails>>,
    /// Upstream attempts made before this error was answered (0: none, or
    /// not said), announced in `x-bursar-attempts`.
    pub attempts: u32,
}

/// The budget that refused a request, as the 402 body reports it (in the
/// `error` object, beside OpenAI's fields; amounts are exact decimal strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetDetails {
    /// The level's kind (`EntityKind::as_str`): "customer", "team", "key",
    /// "provider", "model", "tag", "key_model", "team_model" or
    /// "customer_model".
    pub entity_kind: &'static str,
    pub entity: String,
    pub limit_usd: Option<String>,
    pub spent_usd: Option<String>,
    /// RFC 3339; `None` for a prepaid budget (no reset).
    pub reset_at: Option<String>,
}

impl ApiError {
    fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        let fault = if status >= 500 {
            Fault::Upstream
        } else {
            Fault::Client
        };
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            fault,
            retryable: false,
            retry_after_secs: None,
            budget: None,
            attempts: 0,
        }
    }

    /// A budget is exhausted: 402 `budget_exceeded`, with the details.
    pub fn budget_exceeded(message: impl Into<String>, details: BudgetDetails) -> Self {
        let mut e = Self::new(402, "budget_exceeded", "budget_exceeded", message);
        e.budget = Some(Box::new(details));
        e
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "invalid_request_error", "invalid_api_key", message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(403, "permission_error", code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(404, "invalid_request_error", code, message)
    }
    /// The request contradicts what exists (e.g. a name taken): 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "invalid_request_error", "conflict", message)
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "invalid_request_error", "method_not_allowed", message)
    }
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(408, "invalid_request_error", "request_timeout", message)
    }
    pub fn length_required(message: impl Into<String>) -> Self {
        Self::new(411, "invalid_request_error", "length_required", message)
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("request body exceeds the gateway's limit of {limit} bytes"),
        )
    }
    pub fn headers_too_large(message: impl Into<String>) -> Self {
        Self::new(
            431,
            "invalid_request_error",
            "request_headers_too_large",
            message,
        )
    }
    /// A rate limit: 429; the caller sets `retry_after_secs`.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(429, "rate_limit_exceeded", "rate_limit_exceeded", message)
    }
    pub fn not_implemented(message: impl Into<String>) -> Self {
        let mut e = Self::new(501, "invalid_request_error", "not_implemented", message);
        e.fault = Fault::Client;
        e
    }
    pub fn version_not_supported() -> Self {
        let mut e = Self::new(
            505,
            "invalid_request_error",
            "http_version_not_supported",
            "only HTTP/1.0 and HTTP/1.1 are supported",
        );
        e.fault = Fault::Client;
        e
    }
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(503, "server_error", "service_unavailable", message);
        e.fault = Fault::Internal;
        e.retryable = true;
        e
    }
    /// The upstream could not be reached or answered something we cannot use.
    pub fn bad_gateway(code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(502, "upstream_error", code, message);
        e.retryable = true;
        e
    }
    /// The upstream did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        let mut e = Self::new(504, "upstream_error", "upstream_timeout", message);
        e.retryable = true;
        e
    }
    pub fn internal(message: impl Into<String>) -> Self {
        let mut e = Self::new(500, "server_error", "internal_error", message);
        e.fault = Fault::Internal;
        e
    }

    /// The OpenAI-shaped JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        let mut body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": null,
                "code": self.code,
            }
        });
        if let Some(b) = &self.budget {
            body["error"]["entity_kind"] = b.entity_kind.into();
            body["error"]["entity"] = b.entity.as_str().into();
            // The level that refused, as one object (the same two facts).
            body["error"]["level"] = serde_json::json!({
                "kind": b.entity_kind,
                "name": b.entity,
            });
            body["error"]["limit_usd"] = b.limit_usd.as_deref().into();
            body["error"]["spent_usd"] = b.spent_usd.as_deref().into();
            body["error"]["reset_at"] = b.reset_at.as_deref().into();
        }
        serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":{}}".to_vec())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_in_openai_shape() {
        let e = ApiError::payload_too_large(10);
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "request_too_large");
        assert!(v["error"]["message"].as_str().unwrap().contains("10 bytes"));
        assert!(v["error"]["param"].is_null());
    }

    #[test]
    fn upstream_errors_are_retryable_and_classified() {
        let e = ApiError::bad_gateway("upstream_unreachable", "x");
        assert_eq!(
            (e.status, e.fault, e.retryable),
            (502, Fault::Upstream, true)
        );
        let e = ApiError::bad_request("invalid_json", "x");
        assert_eq!(
            (e.status, e.fault, e.retryable),
            (400, Fault::Client, false)
        );
    }
}
