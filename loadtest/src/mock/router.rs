//! Request handling: routing, body limits, recording, misbehaviour, and
//! turning an endpoint's [`Reply`] into a hyper response.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::body::{MockBody, Pacing};
use super::common::{Ctx, Head, Reply};
use super::errors::{ApiError, Wire};
use super::misbehave::Misbehaviour;
use super::record::RecordedRequest;
use super::server::{ConnControl, State};
use super::tokens::fnv1a;
use super::{
    anthropic, bedrock, chat, completions, embeddings, gemini, models, responses, MAX_BODY_BYTES,
};

/// The body of `GET /health`.
const HEALTH_BODY: &[u8] = br#"{"status":"ok"}"#;

/// The paths the mock serves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// `GET /health`.
    Health,
    /// `GET /v1/_mock/last-request`.
    LastRequest,
    /// The OpenAI-compatible API (recorded, subject to `x-mock-*`).
    Api(Api),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Models,
    Model(String),
    /// `POST /v1/messages`.
    Anthropic,
    /// `POST /v1beta/models/{model}:generateContent` / `:streamGenerateContent`.
    Gemini {
        model: String,
        stream: bool,
    },
    /// `POST /model/{modelId}/converse` / `converse-stream`.
    Bedrock {
        model: String,
        stream: bool,
    },
}

impl Api {
    /// The dialect this API's errors are written in.
    fn wire(&self) -> Wire {
        match self {
            Api::Anthropic => Wire::Anthropic,
            Api::Gemini { .. } => Wire::Gemini,
            Api::Bedrock { .. } => Wire::Bedrock,
            _ => Wire::OpenAi,
        }
    }
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        Some(match path {
            "/health" => Route::Health,
            "/v1/_mock/last-request" => Route::LastRequest,
            "/v1/chat/completions" => Route::Api(Api::Chat),
            "/v1/completions" => Route::Api(Api::Completions),
            "/v1/embeddings" => Route::Api(Api::Embeddings),
            "/v1/responses" => Route::Api(Api::Responses),
            "/v1/models" => Route::Api(Api::Models),
            "/v1/messages" => Route::Api(Api::Anthropic),
            _ if path.starts_with("/v1beta/models/") => {
                let rest = path.strip_prefix("/v1beta/models/")?;
                let (model, method) = rest.rsplit_once(':')?;
                let stream = match method {
                    "generateContent" => false,
                    "streamGenerateContent" => true,
                    _ => return None,
                };
                if model.is_empty() || model.contains('/') {
                    return None;
                }
                Route::Api(Api::Gemini {
                    model: percent_decode(model)?,
                    stream,
                })
            }
            _ if path.starts_with("/model/") => {
                let rest = path.strip_prefix("/model/")?;
                let (model, action) = rest.split_once('/')?;
                let stream = match action {
                    "converse" => false,
                    "converse-stream" => true,
                    _ => return None,
                };
                if model.is_empty() {
                    return None;
                }
                Route::Api(Api::Bedrock {
                    model: percent_decode(model)?,
                    stream,
                })
            }
            _ => {
                let id = path.strip_prefix("/v1/models/")?;
                if id.is_empty() {
                    return None;
                }
                Route::Api(Api::Model(id.to_owned()))
            }
        })
    }

    /// The one method the route answers.
    fn method(&self) -> &'static str {
        match self {
            Route::Api(
                Api::Chat
                | Api::Completions
                | Api::Embeddings
                | Api::Responses
                | Api::Anthropic
                | Api::Gemini { .. }
                | Api::Bedrock { .. },
            ) => "POST",
            Route::Health | Route::LastRequest | Route::Api(Api::Models | Api::Model(_)) => "GET",
        }
    }
}

/// hyper's service function: one request in, one response out.
pub async fn handle(
    state: Arc<State>,
    conn: Arc<ConnControl>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let log = (!state.config.quiet).then(|| format!("{} {}", req.method(), req.uri().path()));
    let response = route(&state, &conn, req).await;
    if let Some(line) = log {
        eprintln!("{line} -> {}", response.status().as_u16());
    }
    Ok(response)
}

async fn route(
    state: &State,
    conn: &Arc<ConnControl>,
    req: Request<Incoming>,
) -> Response<MockBody> {
    let Some(route) = Route::parse(req.uri().path()) else {
        return error_response(&ApiError::unknown_path(
            req.method().as_str(),
            req.uri().path(),
        ));
    };
    let method = route.method();
    if req.method().as_str() != method {
        let mut response = error_response(&ApiError::method_not_allowed(
            req.method().as_str(),
            req.uri().path(),
        ));
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(method));
        return response;
    }
    match route {
        Route::Health => json_response(StatusCode::OK, Bytes::from_static(HEALTH_BODY)),
        Route::LastRequest => match state.recorder.reply() {
            Ok(body) => json_response(StatusCode::OK, body),
            Err(err) => error_response(&err),
        },
        Route::Api(api) => api_request(state, conn, api, req).await,
    }
}

/// The path of every `/v1` API request: read and record the body, apply the
/// `x-mock-*` headers, answer.
async fn api_request(
    state: &State,
    conn: &Arc<ConnControl>,
    api: Api,
    req: Request<Incoming>,
) -> Response<MockBody> {
    let wire = api.wire();
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(err) => return plain_response(err.reply(wire)),
    };
    state.recorder.record(RecordedRequest::new(&parts, &body));
    let mis = match Misbehaviour::from_headers(&parts.headers) {
        Ok(mis) => mis,
        Err(err) => return plain_response(err.reply(wire)),
    };
    let delay = state.config.delay + mis.delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply = match mis.status {
        Some(status) => ApiError::injected(status).reply(wire),
        None => {
            let ctx = Ctx {
                mis: &mis,
                created: unix_now(),
                body_hash: fnv1a(&body),
                parts: &parts,
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                aws_secret: state.config.aws_secret.as_deref(),
            };
            dispatch(state, &api, &body, &ctx)
        }
    };
    deliver(state, conn, reply, &mis).await
}

/// Reads the whole request body, up to [`MAX_BODY_BYTES`].
async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    // A declared Content-Length over the limit is refused without reading.
    if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
        return Err(ApiError::body_too_large(MAX_BODY_BYTES));
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::body_too_large(MAX_BODY_BYTES))
        }
        Err(e) => Err(ApiError::bad_request(
            format!("mock: could not read the request body: {e}"),
            None,
        )),
    }
}

/// Runs the endpoint of `api`.
fn dispatch(state: &State, api: &Api, body: &Bytes, ctx: &Ctx) -> Reply {
    let result = match api {
        Api::Chat => chat::handle(body, ctx),
        Api::Completions => completions::handle(body, ctx),
        Api::Embeddings => embeddings::handle(body, ctx),
        Api::Responses => responses::handle(body, ctx),
        Api::Models => Ok(models::list(&state.config.models)),
        Api::Model(id) => Ok(models::get(&state.config.models, id)),
        Api::Anthropic => anthropic::handle(body, ctx),
        Api::Gemini { model, stream } => gemini::handle(body, ctx, model, *stream),
        Api::Bedrock { model, stream } => bedrock::handle(body, ctx, model, *stream),
    };
    result.unwrap_or_else(|err| err.reply(api.wire()))
}

/// Applies the write-side misbehaviour and builds the response. A
/// non-streamed reply (an error included) asked to be cut is cut before any
/// byte: this never returns, the connection task drops the request.
async fn deliver(
    state: &State,
    conn: &Arc<ConnControl>,
    reply: Reply,
    mis: &Misbehaviour,
) -> Response<MockBody> {
    match normalise(reply) {
        Reply::Events(head, events) => {
            let pacing = Pacing {
                interval: mis.stream_interval.unwrap_or(state.config.stream_interval),
                split_bytes: mis.split_bytes,
                cut: mis.cut,
            };
            let mut response = Response::new(MockBody::events(events, pacing, Arc::clone(conn)));
            apply_head(&mut response, head);
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        Reply::Full(head, body) => {
            if let Some(cut) = mis.cut {
                conn.request(cut.action);
                return std::future::pending().await;
            }
            let mut response = if mis.split_bytes {
                Response::new(MockBody::byte_split(body, Arc::clone(conn)))
            } else {
                Response::new(MockBody::full(body))
            };
            apply_head(&mut response, head);
            response
        }
        // `normalise` leaves only the two forms above.
        Reply::Json(status, body) => json_response(status, body),
        Reply::Stream(events) => Response::new(MockBody::events(
            events,
            Pacing::default(),
            Arc::clone(conn),
        )),
    }
}

/// The two shorthand forms as their general ones.
fn normalise(reply: Reply) -> Reply {
    match reply {
        Reply::Json(status, body) => Reply::Full(Head::json(status), body),
        Reply::Stream(events) => Reply::Events(
            Head::new(StatusCode::OK, "text/event-stream; charset=utf-8"),
            events,
        ),
        other => other,
    }
}

/// Sets a response's status, content type and extra headers.
fn apply_head(response: &mut Response<MockBody>, head: Head) {
    *response.status_mut() = head.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(head.content_type));
    for (name, value) in head.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// A reply sent as it is, without misbehaviour (early errors).
fn plain_response(reply: Reply) -> Response<MockBody> {
    match normalise(reply) {
        Reply::Full(head, body) => {
            let mut response = Response::new(MockBody::full(body));
            apply_head(&mut response, head);
            response
        }
        // Early errors are never streams.
        _ => json_response(StatusCode::INTERNAL_SERVER_ERROR, Bytes::new()),
    }
}

/// Decodes `%XX` escapes of a path segment; `None` if they are malformed or
/// not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn error_response(err: &ApiError) -> Response<MockBody> {
    json_response(err.status, err.body())
}

fn json_response(status: StatusCode, body: Bytes) -> Response<MockBody> {
    let mut response = Response::new(MockBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
