//! `[[model_groups]]`: one public model name served by several targets (a
//! provider and the model name it is sent as), with a strategy that orders
//! them per request and the failover settings that bound a request's
//! attempts and cool a failing target down.

use std::time::Duration;

use super::file::ModelGroupSection;
use super::{err, parse_duration, ConfigError, ProviderConfig, ProviderKind};
use crate::limits;

/// How a group orders its targets for one request; the first that is not
/// cooling down and can afford the request is tried first, the others are
/// the failover order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// At random, in proportion to the targets' weights.
    Weighted,
    /// Fewest requests in flight first (counted over every worker); among
    /// equals, the faster (as `LowestLatency` measures).
    LeastBusy,
    /// Lowest moving average of time to the response head first; a target
    /// not measured yet goes first, so each is measured.
    LowestLatency,
    /// Cheapest worst case for this request at the target model's price
    /// first; unpriced targets last.
    Cheapest,
}

impl Strategy {
    pub const ALL: [(&'static str, Strategy); 4] = [
        ("weighted", Strategy::Weighted),
        ("least-busy", Strategy::LeastBusy),
        ("lowest-latency", Strategy::LowestLatency),
        ("cheapest", Strategy::Cheapest),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("weighted", |(n, _)| n)
    }
}

/// The default cooldown of a failing target.
pub const COOLDOWN_DEFAULT: Duration = Duration::from_secs(30);
/// The default number of consecutive failures that start a cooldown.
pub const FAILURES_BEFORE_COOLDOWN_DEFAULT: u32 = 3;
/// The largest weight a target may have.
pub const TARGET_WEIGHT_MAX: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTarget {
    /// The provider's name (it exists: validated).
    pub provider: String,
    /// The model name sent to the provider.
    pub model: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelGroup {
    pub name: String,
    pub strategy: Strategy,
    pub targets: Vec<GroupTarget>,
    /// Attempts after the first one (bounded by [`limits::UPSTREAM_ATTEMPTS_MAX`]).
    pub retries: u32,
    pub cooldown: Duration,
    pub failures_before_cooldown: u32,
}

/// Validates the groups against the providers.
pub(super) fn validate_groups(
    sections: &[ModelGroupSection],
    providers: &[ProviderConfig],
) -> Result<Vec<ModelGroup>, ConfigError> {
    if sections.len() > limits::MODEL_GROUPS_MAX {
        return Err(err(
            "model_groups",
            format!("at most {} model groups", limits::MODEL_GROUPS_MAX),
        ));
    }
    let mut groups: Vec<ModelGroup> = Vec::with_capacity(sections.len());
    for (i, g) in sections.iter().enumerate() {
        let field = format!("model_groups[{i}] ({:?})", g.name);
        if g.name.is_empty() || g.name.len() > limits::MODEL_NAME_BYTES_MAX || g.name == "*" {
            return Err(err(
                format!("{field}.name"),
                format!(
                    "a model name of 1 to {} bytes (not \"*\")",
                    limits::MODEL_NAME_BYTES_MAX
                ),
            ));
        }
        if groups.iter().any(|h| h.name == g.name) {
            return Err(err(field, "a group of this name is already defined"));
        }
        let strategy = match g.strategy.as_deref() {
            None => Strategy::Weighted,
            Some(s) => Strategy::ALL
                .iter()
                .find(|(n, _)| *n == s)
                .map(|&(_, st)| st)
                .ok_or_else(|| {
                    err(
                        format!("{field}.strategy"),
                        format!(
                            "{s:?}: use \"weighted\", \"least-busy\", \"lowest-latency\" or \"cheapest\""
                        ),
                    )
                })?,
        };
        if g.targets.is_empty() || g.targets.len() > limits::MODEL_GROUP_TARGETS_MAX {
            return Err(err(
                format!("{field}.targets"),
                format!("1 to {} targets", limits::MODEL_GROUP_TARGETS_MAX),
            ));
        }
        let mut targets: Vec<GroupTarget> = Vec::with_capacity(g.targets.len());
        for (j, t) in g.targets.iter().enumerate() {
            let tfield = format!("{field}.targets[{j}]");
            let Some(p) = providers.iter().find(|p| p.name == t.provider) else {
                return Err(err(
                    format!("{tfield}.provider"),
                    format!("no provider is named {:?}", t.provider),
                ));
            };
            let model = t.model.clone().unwrap_or_else(|| g.name.clone());
            if model.is_empty() || model.len() > limits::MODEL_NAME_BYTES_MAX || model == "*" {
                return Err(err(format!("{tfield}.model"), "a model name (not \"*\")"));
            }
            if p.kind == ProviderKind::Azure
                && !super::providers::is_token(p.wire.azure_deployment(&model))
            {
                return Err(err(
                    format!("{tfield}.model"),
                    format!(
                        "model {model:?} cannot be a deployment name; map it in the provider's deployments"
                    ),
                ));
            }
            let weight = t.weight.unwrap_or(1);
            if weight > TARGET_WEIGHT_MAX {
                return Err(err(
                    format!("{tfield}.weight"),
                    format!("0 to {TARGET_WEIGHT_MAX}"),
                ));
            }
            if targets
                .iter()
                .any(|o| o.provider == t.provider && o.model == model)
            {
                return Err(err(tfield, "this provider and model is already a target"));
            }
            targets.push(GroupTarget {
                provider: t.provider.clone(),
                model,
                weight,
            });
        }
        if strategy == Strategy::Weighted && targets.iter().all(|t| t.weight == 0) {
            return Err(err(
                format!("{field}.targets"),
                "at least one target needs a weight above 0",
            ));
        }
        let attempts_max = limits::UPSTREAM_ATTEMPTS_MAX as u32;
        let retries = g
            .retries
            .unwrap_or((targets.len() as u32 - 1).min(attempts_max - 1));
        if retries >= attempts_max {
            return Err(err(
                format!("{field}.retries"),
                format!("at most {}", attempts_max - 1),
            ));
        }
        let cooldown = match &g.cooldown {
            None => COOLDOWN_DEFAULT,
            Some(s) => parse_duration(s)
                .filter(|d| *d <= Duration::from_secs(86_400))
                .ok_or_else(|| {
                    err(
                        format!("{field}.cooldown"),
                        format!("{s:?}: a duration up to a day, such as \"30s\""),
                    )
                })?,
        };
        let failures_before_cooldown = g
            .failures_before_cooldown
            .unwrap_or(FAILURES_BEFORE_COOLDOWN_DEFAULT);
        if failures_before_cooldown == 0 || failures_before_cooldown > 1000 {
            return Err(err(
                format!("{field}.failures_before_cooldown"),
                "1 to 1000",
            ));
        }
        groups.push(ModelGroup {
            name: g.name.clone(),
            strategy,
            targets,
            retries,
            cooldown,
            failures_before_cooldown,
        });
    }
    // A provider serves through its models or through groups; one that does
    // neither is a mistake.
    for p in providers {
        if p.models.is_empty()
            && !groups
                .iter()
                .any(|g| g.targets.iter().any(|t| t.provider == p.name))
        {
            return Err(err(
                format!("providers ({:?}).models", p.name),
                "list the models this provider serves (\"*\" for any), or name it in a [[model_groups]] target",
            ));
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    const BASE: &str = r#"
[[providers]]
name = "a"
kind = "openai"
base_url = "http://127.0.0.1:9000/v1"
models = []
[[providers]]
name = "b"
kind = "anthropic"
models = ["claude-sonnet-4-5"]
[[virtual_keys]]
name = "demo"
key = "sk-demo-key"
"#;

    fn load(extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!("{BASE}{extra}"), None)
    }

    #[test]
    fn a_group_is_validated_into_its_targets_with_defaults() {
        let c = load(
            r#"[[model_groups]]
name = "fast"
targets = [ { provider = "a", model = "gpt-4o-mini", weight = 3 }, { provider = "b", model = "claude-haiku-4-5" } ]
"#,
        )
        .unwrap();
        let g = &c.model_groups[0];
        assert_eq!(g.strategy, super::Strategy::Weighted);
        assert_eq!(g.retries, 1);
        assert_eq!(g.cooldown, super::COOLDOWN_DEFAULT);
        assert_eq!(g.targets[1].weight, 1);
        assert!(c.serves("fast"));
    }

    #[test]
    fn groups_and_providers_that_cannot_work_are_refused_naming_the_field() {
        let cases = [
            // A provider with no models and in no group serves nothing.
            ("", "providers (\"a\").models"),
            (
                "[[model_groups]]\nname = \"g\"\ntargets = [ { provider = \"nobody\" } ]\n",
                "targets[0].provider",
            ),
            (
                "[[model_groups]]\nname = \"g\"\nstrategy = \"random\"\ntargets = [ { provider = \"a\" } ]\n",
                ".strategy",
            ),
            (
                "[[model_groups]]\nname = \"g\"\ntargets = [ { provider = \"a\" }, { provider = \"a\" } ]\n",
                "targets[1]",
            ),
            (
                "[[model_groups]]\nname = \"g\"\nretries = 8\ntargets = [ { provider = \"a\" } ]\n",
                ".retries",
            ),
            (
                "[[model_groups]]\nname = \"g\"\ntargets = [ { provider = \"a\", weight = 0 } ]\n",
                ".targets",
            ),
            (
                "[[model_groups]]\nname = \"g\"\ncooldown = \"2d\"\ntargets = [ { provider = \"a\" } ]\n",
                ".cooldown",
            ),
        ];
        for (extra, field) in cases {
            let e = load(extra).unwrap_err();
            assert!(e.field.contains(field), "{extra}: {e}");
        }
    }

    #[test]
    fn each_kind_takes_its_own_settings_only() {
        let provider = |body: &str| {
            Config::from_toml(
                &format!(
                    "[[providers]]\nname = \"p\"\n{body}\nmodels = [\"m\"]\n[[virtual_keys]]\nname = \"k\"\nkey = \"sk-kkkkkkkk\"\n"
                ),
                None,
            )
        };
        assert!(provider(
            "kind = \"azure\"\nbase_url = \"https://x.openai.azure.com\"\napi_key = \"k\""
        )
        .unwrap_err()
        .field
        .ends_with(".api_version"));
        assert!(provider(
            "kind = \"azure\"\nbase_url = \"https://x\"\napi_version = \"2024-10-21\""
        )
        .unwrap_err()
        .field
        .ends_with(".api_key"));
        assert!(provider("kind = \"bedrock\"")
            .unwrap_err()
            .field
            .ends_with(".region"));
        assert!(
            provider("kind = \"openai\"\nbase_url = \"http://x\"\nregion = \"us-east-1\"")
                .unwrap_err()
                .field
                .ends_with(".region")
        );
        assert!(provider("kind = \"anthropic\"\napi_key = \"k\"\napi_keys = [\"j\"]").is_err());
        let c = provider("kind = \"anthropic\"\napi_keys = [\"k1\", \"k2\"]").unwrap();
        assert_eq!(c.providers[0].api_keys.len(), 2);
        assert_eq!(
            c.providers[0].upstream.as_ref().unwrap().host,
            "api.anthropic.com"
        );
        let c = provider("kind = \"gemini\"\napi_key = \"g\"").unwrap();
        assert_eq!(
            c.providers[0].upstream.as_ref().unwrap().base_path,
            "/v1beta"
        );
        assert!(provider("kind = \"vertex\"")
            .unwrap_err()
            .message
            .contains("\"bedrock\""));
    }

    #[test]
    fn a_fallback_model_must_be_served_and_its_threshold_needs_it() {
        let e = load("[[virtual_keys]]\nname = \"f\"\nkey = \"sk-ffffffff\"\nfallback_model = \"nope\"\n[[model_groups]]\nname = \"g\"\ntargets = [ { provider = \"a\" } ]\n").unwrap_err();
        assert!(e.field.ends_with("fallback_model"), "{e}");
        let e = load("[[virtual_keys]]\nname = \"f\"\nkey = \"sk-ffffffff\"\nfallback_below_usd = \"1\"\n[[model_groups]]\nname = \"g\"\ntargets = [ { provider = \"a\" } ]\n").unwrap_err();
        assert!(e.field.ends_with("fallback_below_usd"), "{e}");
    }
}
