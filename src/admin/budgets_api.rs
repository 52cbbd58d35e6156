//! The admin API's gateway-wide budgets on one model (`[[model_budgets]]`)
//! and on one tag value (`[[tag_budgets]]`):
//!
//! - `GET /admin/model_budgets`, `GET /admin/model_budgets/<model>`
//! - `PUT /admin/model_budgets/<model>` `{"budget": {...}}` (create or
//!   replace; 201 when it creates)
//! - `DELETE /admin/model_budgets/<model>`
//! - `POST /admin/model_budgets/<model>/reset`, `.../top-up`
//!   `{"amount_usd": "5"}`: the spend view after the change
//!
//! and the same under `/admin/tag_budgets/<key>=<value>`. A model name may
//! hold `/`, as is or as `%2F`: the segments after the prefix are joined
//! with `/` and percent-decoded.
//!
//! Who wins: a budget the API defines (kept in `governance.json`) wins over
//! the file's on the same model or tag, and is shown with `"source": "api"`
//! and `"overrides_file": true`. `DELETE` removes the API's word where it has
//! one (an override reverts to the file's budget, `"reverted_to_file":
//! true`); of a budget only the file defines, it records the deletion, which
//! holds across reloads and restarts and is shown as `"deleted": true` with
//! `"budget": null` until a second `DELETE` removes the record (and the
//! file's budget returns) or a `PUT` replaces it.
//!
//! Every change is validated as a whole config ([`Governance::change`]): a
//! bad budget, a pattern for a model, a tag that is not `key=value` or a
//! ninth tag key is a 400 naming the field.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::targets::{bad, ok, path_name, reset, top_up, AdminResponse, Target};
use super::{ChangeError, Governance, Overlay};
use crate::config::file::{BudgetSection, FileConfig};
use crate::error::ApiError;
use crate::http::Method;

/// Which gateway-wide budgets a route is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    /// `[[model_budgets]]`, named by model.
    Model,
    /// `[[tag_budgets]]`, named by `key=value`.
    Tag,
}

impl Dimension {
    /// The member that names one (`model`, `tag`), as in the file.
    fn field(self) -> &'static str {
        match self {
            Dimension::Model => "model",
            Dimension::Tag => "tag",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Dimension::Model => "model budget",
            Dimension::Tag => "tag budget",
        }
    }

    fn object(self) -> &'static str {
        match self {
            Dimension::Model => "model_budget",
            Dimension::Tag => "tag_budget",
        }
    }

    fn target(self, name: &str) -> Target {
        match self {
            Dimension::Model => Target::Model(name.to_string()),
            Dimension::Tag => Target::Tag(name.to_string()),
        }
    }

    fn overlay(self, overlay: &Overlay) -> &BTreeMap<String, Option<BudgetSection>> {
        match self {
            Dimension::Model => &overlay.model_budgets,
            Dimension::Tag => &overlay.tag_budgets,
        }
    }

    fn overlay_mut(self, overlay: &mut Overlay) -> &mut BTreeMap<String, Option<BudgetSection>> {
        match self {
            Dimension::Model => &mut overlay.model_budgets,
            Dimension::Tag => &mut overlay.tag_budgets,
        }
    }

    /// The file's budgets of this dimension, by name, in the file's order.
    fn file(self, file: &FileConfig) -> Vec<(&str, &BudgetSection)> {
        match self {
            Dimension::Model => file
                .model_budgets
                .iter()
                .map(|m| (m.model.as_str(), &m.budget))
                .collect(),
            Dimension::Tag => file
                .tag_budgets
                .iter()
                .map(|t| (t.tag.as_str(), &t.budget))
                .collect(),
        }
    }

    fn in_file(self, file: &FileConfig, name: &str) -> bool {
        self.file(file).iter().any(|(n, _)| *n == name)
    }
}

/// Answers `/admin/model_budgets[/...]` or `/admin/tag_budgets[/...]`;
/// `rest` is the path's segments after the prefix.
pub fn handle(
    gov: &Governance,
    dim: Dimension,
    method: Method,
    path: &str,
    rest: &[&str],
    body: &[u8],
) -> Result<AdminResponse, ApiError> {
    let not_allowed = || ApiError::method_not_allowed(format!("method not allowed for {path}"));
    match (method, rest) {
        (Method::Get, []) => list(gov, dim),
        (_, []) => Err(not_allowed()),
        (Method::Post, [name @ .., action @ ("reset" | "top-up" | "topup")])
            if !name.is_empty() =>
        {
            let target = dim.target(&path_name(name)?);
            if *action == "reset" {
                reset(gov, &target)
            } else {
                top_up(gov, &target, body)
            }
        }
        (Method::Get, name) => get(gov, dim, &path_name(name)?),
        (Method::Put, name) => put(gov, dim, &path_name(name)?, body),
        (Method::Delete, name) => delete(gov, dim, &path_name(name)?),
        _ => Err(not_allowed()),
    }
}

/// How a budget is shown: the file section's shape (`model` or `tag`, and
/// `budget`) with where it comes from.
fn present(dim: Dimension, overlay: &Overlay, file: &FileConfig, name: &str) -> Option<Value> {
    let in_file = dim.file(file).into_iter().find(|(n, _)| *n == name);
    let (budget, from_api) = match dim.overlay(overlay).get(name) {
        Some(b) => (b.as_ref(), true),
        None => (Some(in_file?.1), false),
    };
    let mut v = serde_json::Map::new();
    v.insert("object".into(), json!(dim.object()));
    v.insert(dim.field().into(), json!(name));
    v.insert(
        "budget".into(),
        budget.map_or(Value::Null, |b| {
            serde_json::to_value(b).unwrap_or(Value::Null)
        }),
    );
    v.insert(
        "source".into(),
        json!(if from_api { "api" } else { "file" }),
    );
    v.insert(
        "overrides_file".into(),
        json!(from_api && in_file.is_some()),
    );
    v.insert("deleted".into(), json!(budget.is_none()));
    Some(Value::Object(v))
}

fn not_found(dim: Dimension, name: &str) -> ApiError {
    ApiError::not_found(
        "not_found",
        format!("no {} on {} {name:?}", dim.singular(), dim.field()),
    )
}

fn list(gov: &Governance, dim: Dimension) -> Result<AdminResponse, ApiError> {
    let data = gov.read(|overlay, file, _| {
        let mut names: Vec<&str> = dim.file(file).into_iter().map(|(n, _)| n).collect();
        for n in dim.overlay(overlay).keys() {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        names
            .into_iter()
            .filter_map(|n| present(dim, overlay, file, n))
            .collect::<Vec<_>>()
    });
    ok(200, &json!({ "object": "list", "data": data }))
}

fn get(gov: &Governance, dim: Dimension, name: &str) -> Result<AdminResponse, ApiError> {
    gov.read(|overlay, file, _| present(dim, overlay, file, name))
        .map_or_else(|| Err(not_found(dim, name)), |v| ok(200, &v))
}

fn put(
    gov: &Governance,
    dim: Dimension,
    name: &str,
    body: &[u8],
) -> Result<AdminResponse, ApiError> {
    let obj = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Err(ApiError::bad_request(
                "invalid_request_body",
                "the body must be a JSON object",
            ))
        }
        Err(e) => {
            return Err(ApiError::bad_request(
                "invalid_request_body",
                format!("the body is not valid JSON: {e}"),
            ))
        }
    };
    for (k, v) in &obj {
        if k == dim.field() {
            if v.as_str() != Some(name) {
                return Err(bad(format!(
                    "{k}: the URL names {name:?}; a budget cannot be renamed"
                )));
            }
        } else if k != "budget" {
            return Err(bad(format!(
                "unknown member {k:?}: a {} is {{\"budget\": {{...}}}}",
                dim.singular()
            )));
        }
    }
    let budget: BudgetSection = match obj.get("budget") {
        None | Some(Value::Null) => {
            return Err(bad(format!(
                "budget is required (DELETE removes a {})",
                dim.singular()
            )))
        }
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("budget: {e}")))?,
    };
    let (created, shown) = gov.change(|overlay, file, config| {
        let existed = dim.target(name).exists(config);
        dim.overlay_mut(overlay)
            .insert(name.to_string(), Some(budget));
        Ok((
            !existed,
            present(dim, overlay, file, name).unwrap_or(Value::Null),
        ))
    })?;
    ok(if created { 201 } else { 200 }, &shown)
}

fn delete(gov: &Governance, dim: Dimension, name: &str) -> Result<AdminResponse, ApiError> {
    let (deleted, reverted) = gov.change(|overlay, file, _| {
        let in_file = dim.in_file(file, name);
        let map = dim.overlay_mut(overlay);
        match map.remove(name) {
            // The API's word goes: the file's budget returns, if any.
            Some(_) => Ok((!in_file, in_file)),
            // A budget only the file defines: record its deletion.
            None if in_file => {
                map.insert(name.to_string(), None);
                Ok((true, false))
            }
            None => Err(ChangeError::NotFound(format!(
                "no {} on {} {name:?}",
                dim.singular(),
                dim.field()
            ))),
        }
    })?;
    ok(
        200,
        &json!({
            "object": dim.object(),
            dim.field(): name,
            "deleted": deleted,
            "reverted_to_file": reverted,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const FILE: &str = r#"
[[providers]]
name = "m"
kind = "mock"
models = ["*"]
[[model_budgets]]
model = "gpt-4o"
budget = { limit_usd = "500", reset = "1M" }
[[model_budgets]]
model = "meta-llama/Llama-3"
budget = { limit_usd = "5" }
[[tag_budgets]]
tag = "feature=search"
budget = { limit_usd = "50", reset = "1d" }
"#;

    fn budget(limit: &str) -> BudgetSection {
        BudgetSection {
            limit_usd: limit.into(),
            reset: None,
            calendar_aligned: false,
            mode: None,
            soft_limit_usd: None,
        }
    }

    #[test]
    fn the_overlay_replaces_adds_and_deletes_budgets_by_name() {
        let file = Config::parse_file(FILE).unwrap();
        let mut overlay = Overlay::default();
        overlay
            .model_budgets
            .insert("gpt-4o".into(), Some(budget("7")));
        overlay
            .model_budgets
            .insert("meta-llama/Llama-3".into(), None);
        overlay.model_budgets.insert("o3".into(), Some(budget("1")));
        overlay.tag_budgets.insert("feature=search".into(), None);
        overlay
            .tag_budgets
            .insert("env=prod".into(), Some(budget("2")));
        assert!(!overlay.is_empty());
        let merged = overlay.merge(&file);
        let models: Vec<(&str, &str)> = merged
            .model_budgets
            .iter()
            .map(|m| (m.model.as_str(), m.budget.limit_usd.as_str()))
            .collect();
        assert_eq!(models, [("gpt-4o", "7"), ("o3", "1")]);
        let tags: Vec<&str> = merged.tag_budgets.iter().map(|t| t.tag.as_str()).collect();
        assert_eq!(tags, ["env=prod"]);
        let shadowed = overlay.shadowed(&file);
        assert_eq!(
            shadowed,
            [
                (crate::ledger::EntityKind::Model, "gpt-4o".to_string()),
                (
                    crate::ledger::EntityKind::Model,
                    "meta-llama/Llama-3".to_string()
                ),
                (crate::ledger::EntityKind::Tag, "feature=search".to_string()),
            ]
        );
        let running = Config::from_file(file.clone(), None).unwrap();
        let config = super::super::effective(&file, &overlay, &running).unwrap();
        assert_eq!(config.model_budgets.len(), 2);
        assert_eq!(config.tag_budgets[0].name(), "env=prod");

        // Shown with where they come from; a deletion shows as one.
        let shown = present(Dimension::Model, &overlay, &file, "gpt-4o").unwrap();
        assert_eq!(shown["source"], "api");
        assert_eq!(shown["overrides_file"], true);
        assert_eq!(shown["budget"]["limit_usd"], "7");
        let shown = present(Dimension::Model, &overlay, &file, "meta-llama/Llama-3").unwrap();
        assert_eq!(
            (shown["deleted"].clone(), shown["budget"].clone()),
            (json!(true), Value::Null)
        );
        let shown = present(Dimension::Tag, &Overlay::default(), &file, "feature=search").unwrap();
        assert_eq!(shown["source"], "file");
        assert_eq!(shown["deleted"], false);
        assert!(present(Dimension::Tag, &overlay, &file, "env=dev").is_none());

        // The overlay round-trips, tombstones included; an overlay without
        // these budgets is written as before (older builds read it).
        let dir = crate::ledger::test_dir::TestDir::new("overlay-budgets");
        overlay.save(dir.path()).unwrap();
        let back = Overlay::load(dir.path()).unwrap();
        assert_eq!(back.model_budgets, overlay.model_budgets);
        assert_eq!(back.tag_budgets, overlay.tag_budgets);
        Overlay::default().save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(super::super::OVERLAY_FILE)).unwrap();
        assert!(
            !text.contains("model_budgets") && !text.contains("tag_budgets"),
            "{text}"
        );
    }

    #[test]
    fn names_are_joined_and_percent_decoded() {
        assert_eq!(
            path_name(&["meta-llama", "Llama-3"]).unwrap(),
            "meta-llama/Llama-3"
        );
        assert_eq!(
            path_name(&["meta-llama%2FLlama-3"]).unwrap(),
            "meta-llama/Llama-3"
        );
        assert_eq!(
            path_name(&["meta-llama%2fLlama-3"]).unwrap(),
            "meta-llama/Llama-3"
        );
        assert_eq!(path_name(&["feature=a%20b"]).unwrap(), "feature=a b");
        assert_eq!(path_name(&["caf%C3%A9"]).unwrap(), "café");
        for bad in ["100%", "%2", "%zz", "%+1", "%FF"] {
            let e = path_name(&[bad]).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_value"), "{bad}");
        }
    }
}
