//! Budgets and rate limits on the dimensions beside the organisation chart:
//! per model (gateway-wide, and a customer's, team's or key's on one model)
//! and per tag value. Validated here into the types the catalog and the
//! books use; the entity names they get in the books are made here too, so
//! every part names them alike.
//!
//! Names in the books: a model budget is the model's name; a key's (team's,
//! customer's) budget on a model is `owner/model` (owner names hold no `/`,
//! so the first `/` splits it); a tag budget is `key=value`.

use super::file::{ModelBudgetEntry, ModelBudgetSection, ModelRateLimitEntry, TagBudgetSection};
use super::{budget_field, err, rate_limit_field, ConfigError, RateLimit};
use crate::budget::Budget;
use crate::ledger::messages::TAG_BUDGET_KEYS_MAX;
use crate::limits;

/// Most entries in one `model_budgets` or `model_rate_limits` list (of a
/// customer, team or key).
pub const MODEL_ENTRIES_PER_OWNER_MAX: usize = 256;
/// Most `[[model_budgets]]` (gateway-wide) in one config.
pub const MODEL_BUDGETS_MAX: usize = 4096;
/// Most `[[tag_budgets]]` in one config.
pub const TAG_BUDGETS_MAX: usize = 4096;

/// A budget on one model: gateway-wide, or one owner's.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelBudget {
    pub model: String,
    pub budget: Budget,
}

/// Rate limits on one model, of one key, team or customer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRateLimit {
    pub model: String,
    pub limit: RateLimit,
}

/// A budget on one tag value.
#[derive(Debug, Clone, PartialEq)]
pub struct TagBudget {
    pub key: String,
    pub value: String,
    pub budget: Budget,
}

impl TagBudget {
    /// Its name in the books and the API: `key=value`.
    pub fn name(&self) -> String {
        tag_name(&self.key, &self.value)
    }
}

/// A tag budget's name: `key=value`.
pub fn tag_name(key: &str, value: &str) -> String {
    format!("{key}={value}")
}

/// The name of `owner`'s budget on `model` in the books: `owner/model`.
pub fn owner_model_name(owner: &str, model: &str) -> String {
    format!("{owner}/{model}")
}

/// A model name as a budget or a limit names it: one model exactly.
fn check_model(field: &str, model: &str) -> Result<(), ConfigError> {
    if model.is_empty() || model.len() > limits::MODEL_NAME_BYTES_MAX {
        return Err(err(
            field,
            format!(
                "model names must be 1 to {} bytes",
                limits::MODEL_NAME_BYTES_MAX
            ),
        ));
    }
    if model.contains('*') {
        return Err(err(
            field,
            format!("{model:?}: a model budget or limit names one model exactly (no patterns)"),
        ));
    }
    if model.chars().any(char::is_control) {
        return Err(err(field, "model names hold no control characters"));
    }
    Ok(())
}

/// A budget these sections require (they have no meaning without one).
fn required_budget(
    field: &str,
    section: super::file::BudgetSection,
) -> Result<Budget, ConfigError> {
    budget_field(field, &Some(section))?.ok_or_else(|| err(field, "a budget is required"))
}

/// A customer's, team's or key's `model_budgets`.
pub fn owner_model_budgets(
    field: &str,
    entries: &[ModelBudgetEntry],
) -> Result<Vec<ModelBudget>, ConfigError> {
    let field = format!("{field}.model_budgets");
    if entries.len() > MODEL_ENTRIES_PER_OWNER_MAX {
        return Err(err(
            field,
            format!("at most {MODEL_ENTRIES_PER_OWNER_MAX} entries"),
        ));
    }
    let mut out: Vec<ModelBudget> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let f = format!("{field}[{i}]");
        check_model(&format!("{f}.model"), &e.model)?;
        if out.iter().any(|m| m.model == e.model) {
            return Err(err(f, format!("a second budget on {:?}", e.model)));
        }
        let budget = required_budget(&f, e.budget())?;
        out.push(ModelBudget {
            model: e.model.clone(),
            budget,
        });
    }
    Ok(out)
}

/// A customer's, team's or key's `model_rate_limits`.
pub fn owner_model_rate_limits(
    field: &str,
    entries: &[ModelRateLimitEntry],
) -> Result<Vec<ModelRateLimit>, ConfigError> {
    let field = format!("{field}.model_rate_limits");
    if entries.len() > MODEL_ENTRIES_PER_OWNER_MAX {
        return Err(err(
            field,
            format!("at most {MODEL_ENTRIES_PER_OWNER_MAX} entries"),
        ));
    }
    let mut out: Vec<ModelRateLimit> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let f = format!("{field}[{i}]");
        check_model(&format!("{f}.model"), &e.model)?;
        if out.iter().any(|m| m.model == e.model) {
            return Err(err(f, format!("a second limit on {:?}", e.model)));
        }
        let limit = rate_limit_field(&f, &Some(e.rate_limit()))?;
        if limit.is_unlimited() {
            return Err(err(
                f,
                "set requests_per_minute, tokens_per_minute or concurrent",
            ));
        }
        out.push(ModelRateLimit {
            model: e.model.clone(),
            limit,
        });
    }
    Ok(out)
}

/// `[[model_budgets]]`.
pub fn model_budgets(sections: &[ModelBudgetSection]) -> Result<Vec<ModelBudget>, ConfigError> {
    if sections.len() > MODEL_BUDGETS_MAX {
        return Err(err(
            "model_budgets",
            format!("at most {MODEL_BUDGETS_MAX} model budgets"),
        ));
    }
    let mut out: Vec<ModelBudget> = Vec::with_capacity(sections.len());
    for (i, s) in sections.iter().enumerate() {
        let f = format!("model_budgets[{i}] ({:?})", s.model);
        check_model(&format!("{f}.model"), &s.model)?;
        if out.iter().any(|m| m.model == s.model) {
            return Err(err(f, "a second budget on this model"));
        }
        let budget = required_budget(&f, s.budget.clone())?;
        out.push(ModelBudget {
            model: s.model.clone(),
            budget,
        });
    }
    Ok(out)
}

/// Splits and checks a tag budget's `key=value` by the request log's rules
/// for a tag (so a budget can name only a tag a request can carry).
pub fn parse_tag(tag: &str) -> Result<(String, String), String> {
    let (k, v) = tag
        .split_once('=')
        .ok_or_else(|| format!("{tag:?}: a tag is written key=value"))?;
    crate::reqlog::check_tag_key(k).map_err(|e| e.to_string())?;
    crate::reqlog::check_tag_value(k, v).map_err(|e| e.to_string())?;
    Ok((k.to_string(), v.to_string()))
}

/// `[[tag_budgets]]`. At most [`TAG_BUDGET_KEYS_MAX`] distinct tag keys, so
/// one request (one value per key) meets at most that many tag budgets.
pub fn tag_budgets(sections: &[TagBudgetSection]) -> Result<Vec<TagBudget>, ConfigError> {
    if sections.len() > TAG_BUDGETS_MAX {
        return Err(err(
            "tag_budgets",
            format!("at most {TAG_BUDGETS_MAX} tag budgets"),
        ));
    }
    let mut out: Vec<TagBudget> = Vec::with_capacity(sections.len());
    let mut keys: Vec<&str> = Vec::new();
    for (i, s) in sections.iter().enumerate() {
        let f = format!("tag_budgets[{i}] ({:?})", s.tag);
        let (key, value) = parse_tag(&s.tag).map_err(|m| err(format!("{f}.tag"), m))?;
        if out.iter().any(|t| t.key == key && t.value == value) {
            return Err(err(f, "a second budget on this tag"));
        }
        if !keys.contains(&key.as_str()) {
            if keys.len() == TAG_BUDGET_KEYS_MAX {
                return Err(err(
                    f,
                    format!(
                        "tag budgets may name at most {TAG_BUDGET_KEYS_MAX} tag keys (they name {})",
                        keys.join(", ")
                    ),
                ));
            }
            keys.push(&sections[i].tag[..key.len()]);
        }
        let budget = required_budget(&f, s.budget.clone())?;
        out.push(TagBudget { key, value, budget });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn load(extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml(
            &format!(
                r#"
[[providers]]
name = "m"
kind = "mock"
models = ["*"]
[[customers]]
name = "acme"
model_budgets = [ {{ model = "gpt-4o", limit_usd = "100", reset = "1M" }} ]
[[teams]]
name = "search"
customer = "acme"
model_rate_limits = [ {{ model = "gpt-4o", concurrent = 4 }} ]
[[virtual_keys]]
name = "search-prod"
key = "sk-search-prod"
team = "search"
model_budgets = [ {{ model = "gpt-4o", limit_usd = "20", reset = "1d", mode = "soft" }} ]
model_rate_limits = [ {{ model = "gpt-4o", requests_per_minute = 60 }} ]
[[model_budgets]]
model = "gpt-4o"
budget = {{ limit_usd = "500", reset = "1M" }}
[[tag_budgets]]
tag = "feature=search"
budget = {{ limit_usd = "50", reset = "1d", mode = "strict" }}
{extra}
"#
            ),
            None,
        )
    }

    #[test]
    fn the_issue_s_interfaces_load() {
        let c = load("").unwrap();
        assert_eq!(c.model_budgets[0].model, "gpt-4o");
        assert_eq!(c.tag_budgets[0].name(), "feature=search");
        let k = &c.keys[0];
        assert_eq!(k.model_budgets[0].model, "gpt-4o");
        assert_eq!(k.model_budgets[0].budget.mode, crate::budget::Mode::Soft);
        assert_eq!(k.model_rate_limits[0].limit.requests_per_minute, Some(60));
        assert_eq!(c.teams[0].model_rate_limits[0].limit.concurrent, Some(4));
        assert_eq!(c.customers[0].model_budgets.len(), 1);
    }

    #[test]
    fn bad_entries_are_refused_naming_the_field() {
        let cases = [
            (
                "[[model_budgets]]\nmodel = \"gpt-4o\"\nbudget = { limit_usd = \"1\" }",
                "a second budget",
            ),
            (
                "[[model_budgets]]\nmodel = \"gpt-*\"\nbudget = { limit_usd = \"1\" }",
                "no patterns",
            ),
            (
                "[[tag_budgets]]\ntag = \"feature\"\nbudget = { limit_usd = \"1\" }",
                "key=value",
            ),
            (
                "[[tag_budgets]]\ntag = \"bad key=x\"\nbudget = { limit_usd = \"1\" }",
                "tag",
            ),
            (
                "[[tag_budgets]]\ntag = \"feature=search\"\nbudget = { limit_usd = \"2\" }",
                "a second budget",
            ),
        ];
        for (extra, mentions) in cases {
            let e = load(extra).expect_err(extra);
            assert!(
                e.to_string().contains(mentions),
                "{extra}: {e} should mention {mentions}"
            );
        }
    }

    #[test]
    fn alert_scopes_may_name_the_new_levels_and_only_those_that_exist() {
        let rule = |scope: &str| {
            format!(
                "[[alerts.channels]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"https://example.com/h\"\n\
                 [[alerts.rules]]\nname = \"r\"\nscope = \"{scope}\"\nthresholds = [50]\nchannels = [\"hook\"]\n"
            )
        };
        for ok in [
            "models/gpt-4o",
            "tags/feature=search",
            "key_models/search-prod/gpt-4o",
            "customer_models/acme/gpt-4o",
            "key_models",
        ] {
            load(&rule(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for missing in [
            "models/gpt-4o-mini",
            "tags/feature=chat",
            "key_models/search-prod/gpt-4o-mini",
            "team_models/search/gpt-4o",
            "key_models/nobody/gpt-4o",
        ] {
            let e = load(&rule(missing)).expect_err(missing);
            assert!(
                e.to_string().contains("alerts.rules[0].scope"),
                "{missing}: {e}"
            );
        }
    }

    #[test]
    fn tag_budgets_name_a_bounded_number_of_tag_keys() {
        let mut extra = String::new();
        for i in 1..TAG_BUDGET_KEYS_MAX {
            extra.push_str(&format!(
                "[[tag_budgets]]\ntag = \"k{i}=v\"\nbudget = {{ limit_usd = \"1\" }}\n"
            ));
        }
        // feature plus 7 more: 8 keys, the bound.
        let c = load(&extra).unwrap();
        assert_eq!(c.tag_budgets.len(), TAG_BUDGET_KEYS_MAX);
        // More values of a known key are fine; a ninth key is not.
        let more = format!(
            "{extra}[[tag_budgets]]\ntag = \"feature=other\"\nbudget = {{ limit_usd = \"1\" }}\n"
        );
        assert!(load(&more).is_ok());
        let ninth =
            format!("{extra}[[tag_budgets]]\ntag = \"k9=v\"\nbudget = {{ limit_usd = \"1\" }}\n");
        let e = load(&ninth).unwrap_err();
        assert!(e.to_string().contains("at most 8 tag keys"), "{e}");
    }
}
