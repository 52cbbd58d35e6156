//! Prices: the versioned table shipped in `prices/prices.toml` (compiled into
//! the binary) with per-model overrides from the config.
//!
//! Every price is a [`Money`] per token, exact (see `money.rs`). Usage is
//! priced in its normalized form ([`TokenCounts`]): `prompt` counts every
//! input token, of which `cached` were read from the provider's cache and
//! `cache_write` written to it; `completion` counts every output token, of
//! which `reasoning` were reasoning. A request whose prompt exceeds a model's
//! long-context threshold is priced at the long rates throughout, as the
//! providers bill it.
//!
//! A model with no price is not free: [`PriceTable::get`] returns `None` and
//! the caller refuses (or, if configured, admits and alerts). Only an explicit
//! `free = true` prices a model at zero.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::money::Money;

/// The shipped table, compiled in so the binary and its prices travel together.
pub const SHIPPED_TABLE: &str = include_str!("../prices/prices.toml");
/// Most models one table may hold.
pub const PRICED_MODELS_MAX: usize = 16_384;
/// The largest context window a model entry may state (tokens).
pub const CONTEXT_WINDOW_TOKENS_MAX: u64 = 100_000_000;

/// Per-token prices of one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub input: Money,
    pub output: Money,
    pub cached_input: Money,
    pub cache_write: Money,
    pub reasoning: Money,
    pub long: Option<LongContext>,
    pub free: bool,
    /// The model's context window in tokens, when the table knows it: the
    /// most input one request can make the provider bill, which bounds a
    /// strict request whose body only points to its input (images, files,
    /// stored prompts and conversations).
    pub context_window: Option<u64>,
    /// The model reasons before it answers and bills that reasoning as
    /// output without streaming it (OpenAI's o-series and gpt-5, Gemini 2.5):
    /// a stream cut before the provider's usage arrives is charged for the
    /// reasoning the request's output cap allows, not for none.
    pub hidden_reasoning: bool,
}

/// Prices above a prompt-size threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongContext {
    pub threshold_tokens: u64,
    pub input: Money,
    pub output: Money,
    pub cached_input: Money,
    pub cache_write: Money,
}

/// Normalized token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub prompt: u64,
    pub cached: u64,
    pub cache_write: u64,
    pub completion: u64,
    pub reasoning: u64,
}

impl From<&crate::tokens::Usage> for TokenCounts {
    /// The meter's usage is already normalized the same way.
    fn from(u: &crate::tokens::Usage) -> TokenCounts {
        TokenCounts {
            prompt: u.prompt_tokens,
            cached: u.cached_tokens,
            cache_write: u.cache_write_tokens,
            completion: u.completion_tokens,
            reasoning: u.reasoning_tokens,
        }
    }
}

impl Price {
    fn rates(&self, prompt_tokens: u64) -> (Money, Money, Money, Money) {
        match &self.long {
            Some(l) if prompt_tokens > l.threshold_tokens => {
                (l.input, l.output, l.cached_input, l.cache_write)
            }
            _ => (self.input, self.output, self.cached_input, self.cache_write),
        }
    }

    /// The exact cost of `t`. `None` only on arithmetic overflow (absurd counts).
    pub fn cost(&self, t: &TokenCounts) -> Option<Money> {
        if self.free {
            return Some(Money::ZERO);
        }
        let (input, output, cached_input, cache_write) = self.rates(t.prompt);
        // Parts never exceed their whole; clamp defensively so a provider's
        // inconsistent usage cannot produce a negative term.
        let cached = t.cached.min(t.prompt);
        let cache_write_tokens = t.cache_write.min(t.prompt - cached);
        let plain_in = t.prompt - cached - cache_write_tokens;
        let reasoning = t.reasoning.min(t.completion);
        let plain_out = t.completion - reasoning;
        let reasoning_rate = if self.reasoning == self.output {
            output
        } else {
            self.reasoning
        };
        input
            .checked_mul_tokens(plain_in)?
            .checked_add(cached_input.checked_mul_tokens(cached)?)?
            .checked_add(cache_write.checked_mul_tokens(cache_write_tokens)?)?
            .checked_add(output.checked_mul_tokens(plain_out)?)?
            .checked_add(reasoning_rate.checked_mul_tokens(reasoning)?)
    }

    /// The most a request can cost with at most `prompt_tokens_max` input and
    /// `completion_tokens_max` output tokens: every input token at the dearest
    /// input rate, every output token at the dearest output rate.
    pub fn worst_case(&self, prompt_tokens_max: u64, completion_tokens_max: u64) -> Option<Money> {
        if self.free {
            return Some(Money::ZERO);
        }
        let mut input = self.input.max(self.cache_write).max(self.cached_input);
        let mut output = self.output.max(self.reasoning);
        if let Some(l) = &self.long {
            if prompt_tokens_max > l.threshold_tokens {
                input = input.max(l.input).max(l.cache_write).max(l.cached_input);
                output = output.max(l.output);
            }
        }
        input
            .checked_mul_tokens(prompt_tokens_max)?
            .checked_add(output.checked_mul_tokens(completion_tokens_max)?)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    version: String,
    #[serde(default)]
    model: Vec<ModelEntry>,
}

/// One model's prices as written in a table file or a config `[[prices]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub cached_input: Option<String>,
    pub cache_write: Option<String>,
    pub reasoning: Option<String>,
    pub long_context_threshold: Option<u64>,
    pub long_input: Option<String>,
    pub long_output: Option<String>,
    pub long_cached_input: Option<String>,
    pub long_cache_write: Option<String>,
    #[serde(default)]
    pub free: bool,
    /// Tokens; see [`Price::context_window`]. An override without it keeps
    /// the shipped model's.
    pub context_window: Option<u64>,
    /// See [`Price::hidden_reasoning`]. An override without it keeps the
    /// shipped model's.
    pub hidden_reasoning: Option<bool>,
}

fn per_token(id: &str, field: &str, v: &Option<String>) -> Result<Option<Money>, String> {
    v.as_deref()
        .map(|s| {
            Money::parse_per_token_from_usd_per_mtok(s)
                .map_err(|e| format!("model {id:?}: {field} {s:?}: {e}"))
        })
        .transpose()
}

impl ModelEntry {
    /// Converts to per-token prices; every priced field must parse exactly.
    pub fn to_price(&self) -> Result<Price, String> {
        let id = self.id.as_str();
        if let Some(w) = self.context_window {
            if !(1..=CONTEXT_WINDOW_TOKENS_MAX).contains(&w) {
                return Err(format!(
                    "model {id:?}: context_window must be between 1 and {CONTEXT_WINDOW_TOKENS_MAX}"
                ));
            }
        }
        let context_window = self.context_window;
        let hidden_reasoning = self.hidden_reasoning.unwrap_or(false);
        if self.free {
            return Ok(Price {
                input: Money::ZERO,
                output: Money::ZERO,
                cached_input: Money::ZERO,
                cache_write: Money::ZERO,
                reasoning: Money::ZERO,
                long: None,
                free: true,
                context_window,
                hidden_reasoning,
            });
        }
        let input = per_token(id, "input", &self.input)?
            .ok_or_else(|| format!("model {id:?}: input price missing (or set free = true)"))?;
        let output = per_token(id, "output", &self.output)?
            .ok_or_else(|| format!("model {id:?}: output price missing (or set free = true)"))?;
        let cached_input = per_token(id, "cached_input", &self.cached_input)?.unwrap_or(input);
        let cache_write = per_token(id, "cache_write", &self.cache_write)?.unwrap_or(input);
        let reasoning = per_token(id, "reasoning", &self.reasoning)?.unwrap_or(output);
        let long = match self.long_context_threshold {
            None => None,
            Some(threshold_tokens) => {
                let l_input = per_token(id, "long_input", &self.long_input)?.unwrap_or(input);
                Some(LongContext {
                    threshold_tokens,
                    input: l_input,
                    output: per_token(id, "long_output", &self.long_output)?.unwrap_or(output),
                    cached_input: per_token(id, "long_cached_input", &self.long_cached_input)?
                        .unwrap_or(cached_input),
                    cache_write: per_token(id, "long_cache_write", &self.long_cache_write)?
                        .unwrap_or(l_input),
                })
            }
        };
        Ok(Price {
            input,
            output,
            cached_input,
            cache_write,
            reasoning,
            long,
            free: false,
            context_window,
            hidden_reasoning,
        })
    }
}

/// The prices in force: the shipped table plus config overrides.
#[derive(Debug, Clone)]
pub struct PriceTable {
    /// The shipped table's version, with `+config` when overrides apply; every
    /// charge records it. Shared: every log row holds it.
    pub version: Arc<str>,
    /// foldhash, not SipHash: one lookup per request (see `Catalog`'s routes).
    models: HashMap<String, Price, foldhash::fast::RandomState>,
}

impl PriceTable {
    /// Parses a table file and applies `overrides` (which win).
    pub fn load(table_toml: &str, overrides: &[ModelEntry]) -> Result<PriceTable, String> {
        let file: TableFile =
            toml::from_str(table_toml).map_err(|e| format!("price table: {e}"))?;
        if file.model.len() + overrides.len() > PRICED_MODELS_MAX {
            return Err(format!("more than {PRICED_MODELS_MAX} priced models"));
        }
        let mut models = HashMap::default();
        for entry in &file.model {
            let price = entry.to_price()?;
            for id in std::iter::once(&entry.id).chain(&entry.aliases) {
                if models.insert(id.clone(), price.clone()).is_some() {
                    return Err(format!("price table: model {id:?} listed twice"));
                }
            }
        }
        for entry in overrides {
            let mut price = entry.to_price().map_err(|e| format!("[[prices]]: {e}"))?;
            // What an override leaves out of the model's facts (not its
            // prices) it keeps from the shipped entry.
            if let Some(shipped) = models.get(&entry.id) {
                if entry.context_window.is_none() {
                    price.context_window = shipped.context_window;
                }
                if entry.hidden_reasoning.is_none() {
                    price.hidden_reasoning = shipped.hidden_reasoning;
                }
            }
            for id in std::iter::once(&entry.id).chain(&entry.aliases) {
                models.insert(id.clone(), price.clone());
            }
        }
        let version = if overrides.is_empty() {
            file.version
        } else {
            format!("{}+config", file.version)
        };
        Ok(PriceTable {
            version: version.into(),
            models,
        })
    }

    /// The shipped table with `overrides`.
    pub fn shipped(overrides: &[ModelEntry]) -> Result<PriceTable, String> {
        Self::load(SHIPPED_TABLE, overrides)
    }

    /// The price of `model`; `None` means unpriced (never "free").
    pub fn get(&self, model: &str) -> Option<&Price> {
        self.models.get(model)
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// The largest context window any model in the table states (`None`
    /// when none does): the default input bound of a model the table does
    /// not know.
    pub fn largest_context_window(&self) -> Option<u64> {
        self.models.values().filter_map(|p| p.context_window).max()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Money {
        Money::parse_usd(s).unwrap()
    }

    /// An override that sets only input and output prices.
    fn priced(id: &str, input: &str, output: &str) -> ModelEntry {
        ModelEntry {
            id: id.into(),
            aliases: vec![],
            input: Some(input.into()),
            output: Some(output.into()),
            cached_input: None,
            cache_write: None,
            reasoning: None,
            long_context_threshold: None,
            long_input: None,
            long_output: None,
            long_cached_input: None,
            long_cache_write: None,
            free: false,
            context_window: None,
            hidden_reasoning: None,
        }
    }

    #[test]
    fn the_shipped_table_parses_and_every_price_is_exact() {
        let t = PriceTable::shipped(&[]).unwrap();
        assert!(t.len() > 30);
        assert!(t.version.starts_with("2026-"));
        let mini = t.get("gpt-4o-mini").unwrap();
        // 1M input tokens at $0.15/Mtok is exactly $0.15.
        let c = mini
            .cost(&TokenCounts {
                prompt: 1_000_000,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(c, usd("0.15"));
        assert_eq!(
            t.get("gpt-4o-mini-2024-07-18"),
            Some(mini),
            "aliases share prices"
        );
        assert!(
            t.get("no-such-model").is_none(),
            "unpriced is None, never free"
        );
    }

    #[test]
    fn cached_and_reasoning_tokens_are_priced_apart() {
        let t = PriceTable::shipped(&[]).unwrap();
        let p = t.get("gpt-4o-mini").unwrap();
        // 1000 prompt of which 400 cached; 300 completion of which 100 reasoning.
        let c = p
            .cost(&TokenCounts {
                prompt: 1000,
                cached: 400,
                completion: 300,
                reasoning: 100,
                cache_write: 0,
            })
            .unwrap();
        let expect = usd("0.15").picodollars() * 600 / 1_000_000
            + usd("0.075").picodollars() * 400 / 1_000_000
            + usd("0.6").picodollars() * 300 / 1_000_000;
        assert_eq!(c.picodollars(), expect);
    }

    #[test]
    fn anthropic_cache_writes_and_long_context() {
        let t = PriceTable::shipped(&[]).unwrap();
        let p = t.get("claude-sonnet-4-5").unwrap();
        let short = p
            .cost(&TokenCounts {
                prompt: 1000,
                cache_write: 1000,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(short.picodollars(), usd("3.75").picodollars() / 1000);
        let long = p
            .cost(&TokenCounts {
                prompt: 200_001,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            long.picodollars(),
            usd("6").picodollars() / 1_000_000 * 200_001
        );
    }

    #[test]
    fn worst_case_bounds_every_actual_cost() {
        let t = PriceTable::shipped(&[]).unwrap();
        let p = t.get("claude-sonnet-4-5").unwrap();
        let worst = p.worst_case(300_000, 1000).unwrap();
        for (prompt, cached, write, completion) in [
            (300_000, 0, 0, 1000),
            (300_000, 1000, 299_000, 1000),
            (10, 0, 10, 0),
        ] {
            let c = p
                .cost(&TokenCounts {
                    prompt,
                    cached,
                    cache_write: write,
                    completion,
                    reasoning: 0,
                })
                .unwrap();
            assert!(c <= worst, "{c:?} > {worst:?}");
        }
    }

    #[test]
    fn context_windows_and_hidden_reasoning_are_the_models_and_survive_overrides() {
        let t = PriceTable::shipped(&[]).unwrap();
        assert_eq!(t.get("gpt-4o-mini").unwrap().context_window, Some(128_000));
        assert!(t.get("o3-mini").unwrap().hidden_reasoning);
        assert!(!t.get("gpt-4o-mini").unwrap().hidden_reasoning);
        assert_eq!(t.largest_context_window(), Some(1_048_576));
        // An override that changes only prices keeps the model's facts.
        let o = priced("o3-mini", "1", "2");
        let t = PriceTable::shipped(std::slice::from_ref(&o)).unwrap();
        let p = t.get("o3-mini").unwrap();
        assert_eq!(
            (p.context_window, p.hidden_reasoning),
            (Some(200_000), true)
        );
        let o = ModelEntry {
            context_window: Some(1000),
            hidden_reasoning: Some(false),
            ..o
        };
        let t = PriceTable::shipped(std::slice::from_ref(&o)).unwrap();
        let p = t.get("o3-mini").unwrap();
        assert_eq!((p.context_window, p.hidden_reasoning), (Some(1000), false));
        let bad = ModelEntry {
            context_window: Some(0),
            ..o
        };
        assert!(PriceTable::shipped(&[bad]).is_err());
    }

    #[test]
    fn config_overrides_win_and_mark_the_version() {
        let o = priced("gpt-4o-mini", "1", "2");
        let t = PriceTable::shipped(std::slice::from_ref(&o)).unwrap();
        assert_eq!(
            t.get("gpt-4o-mini").unwrap().input,
            usd("1").div_floor(1_000_000)
        );
        assert!(t.version.ends_with("+config"));
        let bad = ModelEntry {
            input: Some("0.0000001".into()),
            ..o
        };
        assert!(
            PriceTable::shipped(&[bad]).is_err(),
            "more precision than the unit is refused"
        );
    }
}
