//! `POST /v1/embeddings`: deterministic unit vectors, as floats or base64.

use base64::Engine;
use serde::Serialize;
use serde_json::Value;

use super::common::{model, opt_u64, parse_object, Ctx, Object, Reply};
use super::errors::{to_json, ApiError};
use super::tokens::{embedding_vector, fnv1a, words};

/// Vector length when the request gives no `dimensions`.
pub const DEFAULT_DIMENSIONS: usize = 16;
/// The largest `dimensions` accepted.
pub const MAX_DIMENSIONS: usize = 4096;
/// The most inputs one request may embed (OpenAI's own limit).
pub const MAX_INPUTS: usize = 2048;

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<EmbeddingUsage>,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

/// `encoding_format: "float"` gives a JSON array, `"base64"` the base64 of
/// the little-endian f32 bytes.
#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Float,
    Base64,
}

/// One input to embed.
struct Input {
    /// max(1, words) for text, max(1, length) for token ids.
    tokens: u64,
    /// FNV-1a of the text, or of the token ids as little-endian i64s.
    seed: u64,
}

impl Input {
    fn text(s: &str) -> Self {
        Input {
            tokens: words(s).max(1),
            seed: fnv1a(s.as_bytes()),
        }
    }

    /// Token ids; `None` if any element is not an integer.
    fn token_ids(ids: &[Value]) -> Option<Self> {
        let mut bytes = Vec::with_capacity(ids.len() * 8);
        for id in ids {
            let id = id.as_i64().or_else(|| id.as_u64().map(|u| u as i64))?;
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        Some(Input {
            tokens: (ids.len() as u64).max(1),
            seed: fnv1a(&bytes),
        })
    }
}

/// `input`: a string, an array of strings, an array of token ids (one input)
/// or an array of token-id arrays.
fn inputs(req: &Object) -> Result<Vec<Input>, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "`input` must be a string, an array of strings, an array of token ids or an array of token-id arrays",
            Some("input"),
        )
    };
    let items = match req.get("input") {
        Some(Value::String(s)) => return Ok(vec![Input::text(s)]),
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(ApiError::bad_request(
                "`input` must not be empty",
                Some("input"),
            ))
        }
        _ => return Err(invalid()),
    };
    if items.len() > MAX_INPUTS {
        return Err(ApiError::bad_request(
            format!("`input` may hold at most {MAX_INPUTS} items"),
            Some("input"),
        ));
    }
    if items.iter().all(Value::is_number) {
        return Input::token_ids(items).map(|i| vec![i]).ok_or_else(invalid);
    }
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => Some(Input::text(s)),
            Value::Array(ids) => Input::token_ids(ids),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(invalid)
}

fn dimensions(req: &Object) -> Result<usize, ApiError> {
    match opt_u64(req, "dimensions")? {
        None => Ok(DEFAULT_DIMENSIONS),
        // In range, so the cast is lossless.
        Some(d) if (1..=MAX_DIMENSIONS as u64).contains(&d) => Ok(d as usize),
        Some(_) => Err(ApiError::bad_request(
            format!("`dimensions` must be from 1 to {MAX_DIMENSIONS}"),
            Some("dimensions"),
        )),
    }
}

fn format(req: &Object) -> Result<Format, ApiError> {
    match req.get("encoding_format") {
        None | Some(Value::Null) => Ok(Format::Float),
        Some(Value::String(f)) if f == "float" => Ok(Format::Float),
        Some(Value::String(f)) if f == "base64" => Ok(Format::Base64),
        Some(_) => Err(ApiError::bad_request(
            "`encoding_format` must be \"float\" or \"base64\"",
            Some("encoding_format"),
        )),
    }
}

/// The base64 of the vector's little-endian f32 bytes.
fn base64_le(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Answers an embeddings request.
pub fn handle(body: &[u8], ctx: &Ctx) -> Result<Reply, ApiError> {
    let req = parse_object(body)?;
    let model = model(&req)?;
    let inputs = inputs(&req)?;
    let dims = dimensions(&req)?;
    let format = format(&req)?;
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_vector(input.seed, dims);
            let embedding = match format {
                Format::Float => Vector::Float(vector),
                Format::Base64 => Vector::Base64(base64_le(&vector)),
            };
            Embedding {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let prompt_tokens = inputs.iter().map(|i| i.tokens).sum();
    let list = EmbeddingList {
        object: "list",
        data,
        model,
        usage: (!ctx.mis.omit_usage).then_some(EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        }),
    };
    Ok(Reply::ok(to_json(&list)))
}
