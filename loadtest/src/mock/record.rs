//! The last API request the mock saw, for `GET /v1/_mock/last-request`.
//!
//! Gateway tests use it to check what the gateway forwarded upstream (that
//! the provider key was set, that the client's virtual key was not leaked,
//! that the body was passed through unchanged...).

use std::sync::Mutex;

use bytes::Bytes;
use hyper::http::request::Parts;
use serde::Serialize;
use serde_json::{Map, Value};

use super::errors::{to_json, ApiError};

/// One recorded request: cheap to take (the body is reference-counted).
pub struct RecordedRequest {
    method: String,
    path: String,
    query: Option<String>,
    /// Header names lowercased (hyper already does), in arrival order.
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl RecordedRequest {
    pub fn new(parts: &Parts, body: &Bytes) -> Self {
        RecordedRequest {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_ascii_lowercase(), value)
                })
                .collect(),
            body: body.clone(),
        }
    }

    /// `headers` as an object; a repeated header's values are joined by ", ".
    fn header_object(&self) -> Map<String, Value> {
        let mut map = Map::new();
        for (name, value) in &self.headers {
            match map.get_mut(name) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(value);
                }
                _ => {
                    map.insert(name.clone(), Value::String(value.clone()));
                }
            }
        }
        map
    }

    /// The body as JSON if it parses, else as (lossy UTF-8) text; null if empty.
    fn body_value(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }
}

#[derive(Serialize)]
struct LastRequest<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: Map<String, Value>,
    body: Value,
    body_bytes: usize,
}

/// Holds the last recorded request.
#[derive(Default)]
pub struct Recorder {
    last: Mutex<Option<RecordedRequest>>,
}

impl Recorder {
    pub fn record(&self, request: RecordedRequest) {
        // A poisoned lock only means a panic elsewhere; the data is still usable.
        let previous = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            last.replace(request)
        };
        // Freed outside the lock.
        drop(previous);
    }

    /// The JSON answer to `GET /v1/_mock/last-request` (404 before any request).
    pub fn reply(&self) -> Result<Bytes, ApiError> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.as_ref() {
            None => Err(ApiError {
                status: hyper::StatusCode::NOT_FOUND,
                message: "mock: no request recorded yet".to_owned(),
                kind: "invalid_request_error",
                param: None,
                code: None,
                wire_type: None,
            }),
            Some(r) => Ok(to_json(&LastRequest {
                method: &r.method,
                path: &r.path,
                query: r.query.as_deref(),
                headers: r.header_object(),
                body: r.body_value(),
                body_bytes: r.body.len(),
            })),
        }
    }
}
