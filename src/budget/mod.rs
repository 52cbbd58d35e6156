//! Budget definitions: a limit, how often it resets, and how it is enforced.
//!
//! This module knows nothing of entities, leases or workers: it is the value
//! a customer, team, key or provider config carries, and the period math over
//! an injected clock ([`period`]). The ledger (`crate::ledger`) applies it.

pub mod period;

use std::fmt;
use std::str::FromStr;

use crate::money::{Money, MoneyError};
pub use period::{period_containing, Alignment, Period, Reset, ResetError, ResetUnit};

/// How a budget is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Reserve the worst case before forwarding; spend never exceeds the limit.
    #[default]
    Strict,
    /// Admit while under the limit, charge after; the overshoot is bounded by
    /// what was in flight and is reported.
    Soft,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::Soft => "soft",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = BudgetError;
    fn from_str(s: &str) -> Result<Mode, BudgetError> {
        match s {
            "strict" => Ok(Mode::Strict),
            "soft" => Ok(Mode::Soft),
            _ => Err(BudgetError::Mode(s.to_string())),
        }
    }
}

/// One budget. `reset == None` is a prepaid budget: one period that never
/// ends, raised by top-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    /// The most that may be spent in one period (before top-ups).
    pub limit: Money,
    pub reset: Option<Reset>,
    pub alignment: Alignment,
    pub mode: Mode,
    /// An earlier threshold for alerts; it never blocks.
    pub soft_limit: Option<Money>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("budget limit: {0}")]
    Limit(MoneyError),
    #[error("budget soft limit: {0}")]
    SoftLimit(MoneyError),
    #[error("budget limit must not be negative")]
    LimitNegative,
    #[error("budget soft limit must be between 0 and the limit")]
    SoftLimitRange,
    #[error(transparent)]
    Reset(#[from] ResetError),
    #[error("budget mode {0:?} is not \"strict\" or \"soft\"")]
    Mode(String),
    #[error("a budget without a reset (prepaid) cannot be calendar-aligned")]
    PrepaidAligned,
}

impl Budget {
    /// A strict, rolling budget with no soft limit.
    pub fn new(limit: Money, reset: Option<Reset>) -> Budget {
        Budget {
            limit,
            reset,
            alignment: Alignment::Rolling,
            mode: Mode::Strict,
            soft_limit: None,
        }
    }

    /// Builds a budget from the strings of a config file or admin request
    /// (`limit_usd = "12.50"`, `reset = "1M"`, ...), validated.
    pub fn parse(
        limit_usd: &str,
        reset: Option<&str>,
        calendar_aligned: bool,
        mode: Option<&str>,
        soft_limit_usd: Option<&str>,
    ) -> Result<Budget, BudgetError> {
        let budget = Budget {
            limit: Money::parse_usd(limit_usd).map_err(BudgetError::Limit)?,
            reset: reset.map(Reset::parse).transpose()?,
            alignment: if calendar_aligned {
                Alignment::Calendar
            } else {
                Alignment::Rolling
            },
            mode: mode.map(Mode::from_str).transpose()?.unwrap_or_default(),
            soft_limit: soft_limit_usd
                .map(Money::parse_usd)
                .transpose()
                .map_err(BudgetError::SoftLimit)?,
        };
        budget.validate()?;
        Ok(budget)
    }

    /// Checks what the type cannot: amounts in range, soft limit within the limit.
    pub fn validate(&self) -> Result<(), BudgetError> {
        if self.limit.is_negative() {
            return Err(BudgetError::LimitNegative);
        }
        if let Some(soft) = self.soft_limit {
            if soft.is_negative() || soft > self.limit {
                return Err(BudgetError::SoftLimitRange);
            }
        }
        if self.reset.is_none() && self.alignment == Alignment::Calendar {
            return Err(BudgetError::PrepaidAligned);
        }
        Ok(())
    }

    /// Prepaid: never resets; top-ups raise it.
    pub fn is_prepaid(&self) -> bool {
        self.reset.is_none()
    }

    /// The period containing `now_ms` for a budget created at `anchor_ms`.
    pub fn period_containing(&self, anchor_ms: i64, now_ms: i64) -> Period {
        period_containing(self.reset, self.alignment, anchor_ms, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_config_shapes() {
        let b = Budget::parse("100", Some("1M"), true, None, None).unwrap();
        assert_eq!(b.limit, Money::from_usd(100));
        assert_eq!(b.reset, Some(Reset::one(ResetUnit::Month)));
        assert_eq!(b.alignment, Alignment::Calendar);
        assert_eq!(b.mode, Mode::Strict);
        let b = Budget::parse("1.00", Some("1h"), false, Some("soft"), Some("0.8")).unwrap();
        assert_eq!(b.mode, Mode::Soft);
        assert_eq!(b.soft_limit, Some(Money::parse_usd("0.8").unwrap()));
        let prepaid = Budget::parse("5", None, false, None, None).unwrap();
        assert!(prepaid.is_prepaid());
    }

    #[test]
    fn parse_refuses_bad_input() {
        assert!(matches!(
            Budget::parse("-1", Some("1d"), false, None, None),
            Err(BudgetError::Limit(_))
        ));
        assert!(matches!(
            Budget::parse("1", Some("1x"), false, None, None),
            Err(BudgetError::Reset(_))
        ));
        assert!(matches!(
            Budget::parse("1", Some("1d"), false, Some("lenient"), None),
            Err(BudgetError::Mode(_))
        ));
        assert_eq!(
            Budget::parse("1", Some("1d"), false, None, Some("2")),
            Err(BudgetError::SoftLimitRange)
        );
        assert_eq!(
            Budget::parse("1", None, true, None, None),
            Err(BudgetError::PrepaidAligned)
        );
        let mut b = Budget::new(Money::ZERO, None);
        b.limit = Money::from_picodollars(-1).unwrap();
        assert_eq!(b.validate(), Err(BudgetError::LimitNegative));
    }
}
