//! `GET /v1/models` and `GET /v1/models/{id}`.

use serde::Serialize;

use super::common::Reply;
use super::errors::{to_json, ApiError};

/// The `created` timestamp of every mock model (fixed, for determinism).
const MODEL_CREATED: u64 = 1_700_000_000;
/// The `owned_by` of every mock model.
const OWNED_BY: &str = "bursar-mock";

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

impl<'a> Model<'a> {
    fn new(id: &'a str) -> Self {
        Model {
            id,
            object: "model",
            created: MODEL_CREATED,
            owned_by: OWNED_BY,
        }
    }
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

/// The list of the `--models` ids.
pub fn list(models: &[String]) -> Reply {
    let list = ModelList {
        object: "list",
        data: models.iter().map(|m| Model::new(m)).collect(),
    };
    Reply::ok(to_json(&list))
}

/// One model, or a 404 if `id` is not in `--models`.
pub fn get(models: &[String], id: &str) -> Reply {
    match models.iter().find(|m| *m == id) {
        Some(m) => Reply::ok(to_json(&Model::new(m))),
        None => ApiError::model_not_found(id).into(),
    }
}
