//! Money: an exact integer amount of US dollars.
//!
//! # The unit: one picodollar (1e-12 USD)
//!
//! Prices are published as USD per million tokens, with up to 6 decimal places
//! (e.g. "0.000150"). One token then costs `price / 1e6` USD, whose smallest
//! step is `1e-6 / 1e6 = 1e-12` USD. With one unit = 1e-12 USD every per-token
//! price in the table is an exact integer, so `cost = tokens × price` is exact by
//! construction and sums are exact and reproducible: there is no rounding on the
//! path from usage to the books.
//!
//! # The representation: `i128`, checked, bounded by [`Money::MAX`]
//!
//! A `u64` of picodollars tops out at $18.4 million and an `i64` at $9.2 million:
//! one large customer's lifetime spend can pass that, and then the books would
//! be wrong (or, with checked arithmetic, refuse to record real spend). An
//! `i128` holds $1.7e26; we bound every amount by [`Money::MAX`] (1e30 units,
//! 1e18 USD) so that even products like `tokens(u64) × price` and long sums
//! stay far from the machine limit. Every operation that can exceed the bound
//! is checked and returns `None` or an error: overflow is an error, never a wrap
//! and never a saturation.
//!
//! It is signed so that differences (remaining, overshoot) are representable
//! without special cases. Amounts that must not be negative (charges, limits,
//! top-ups) are validated where they enter: [`Money::parse_usd`] refuses a sign
//! and the ledger refuses negative commands.
//!
//! # Rounding
//!
//! Costs are exact. The only divisions are splits (a lease share, how many
//! tokens a remainder affords), and they round toward zero for non-negative
//! amounts: a budget can be under-used by rounding, never overrun.

use std::fmt;
use std::str::FromStr;

/// Units per US dollar: 1 unit is one picodollar.
pub const MONEY_UNITS_PER_USD: i128 = 1_000_000_000_000;
/// Decimal places of one unit in USD.
pub const MONEY_DECIMALS: u32 = 12;
/// Decimal places allowed in a price quoted in USD per million tokens: with
/// this many, the per-token price is an exact number of units.
pub const PRICE_PER_MTOK_DECIMALS_MAX: u32 = 6;
/// Units per token for a price of 1 USD per million tokens.
const UNITS_PER_TOKEN_PER_USD_PER_MTOK: i128 = MONEY_UNITS_PER_USD / 1_000_000;
/// Longest decimal string we parse. Anything longer is junk (the bound keeps a
/// hostile config or admin request from costing more than a glance).
pub const MONEY_STRING_BYTES_MAX: usize = 64;

const _: () = assert!(10i128.pow(MONEY_DECIMALS) == MONEY_UNITS_PER_USD);
const _: () = assert!(UNITS_PER_TOKEN_PER_USD_PER_MTOK == 1_000_000);
// A price with PRICE_PER_MTOK_DECIMALS_MAX decimals is an integer number of units per token.
const _: () =
    assert!(UNITS_PER_TOKEN_PER_USD_PER_MTOK % 10i128.pow(PRICE_PER_MTOK_DECIMALS_MAX) == 0);
// The bound leaves room: MAX × u64::MAX would overflow, but MAX + MAX never does,
// and tokens (u64) × any per-token price up to 1e12 units (1 USD/token) fits.
const _: () = assert!(Money::MAX.0.checked_mul(2).is_some());
const _: () = assert!((u64::MAX as i128)
    .checked_mul(MONEY_UNITS_PER_USD)
    .is_some());

/// An exact amount of US dollars, in picodollars (1e-12 USD).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i128);

/// Why a string is not an amount of money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("empty amount")]
    Empty,
    #[error("amount is longer than {MONEY_STRING_BYTES_MAX} bytes")]
    TooLong,
    #[error("not a decimal amount: {0:?} (expected digits with an optional '.' and fraction, e.g. \"12.50\")")]
    Junk(String),
    #[error("negative amount {0:?} is not allowed here")]
    Negative(String),
    #[error("amount {value:?} has more than {decimals_max} decimal places")]
    TooPrecise { value: String, decimals_max: u32 },
    #[error("amount {0:?} exceeds the largest amount bursar records")]
    TooLarge(String),
}

impl Money {
    pub const ZERO: Money = Money(0);
    /// The largest amount bursar represents: 1e30 units = 1e18 USD.
    pub const MAX: Money = Money(1_000_000_000_000_000_000_000_000_000_000);
    /// The most negative amount (a difference, never a stored balance).
    pub const MIN: Money = Money(-Self::MAX.0);
    /// One picodollar, the smallest step.
    pub const UNIT: Money = Money(1);

    /// An amount from raw picodollars; `None` outside [`Money::MIN`]..=[`Money::MAX`].
    pub const fn from_picodollars(units: i128) -> Option<Money> {
        if units > Self::MAX.0 || units < Self::MIN.0 {
            None
        } else {
            Some(Money(units))
        }
    }

    /// Whole dollars (always in range: u32::MAX USD is far below the bound).
    pub const fn from_usd(usd: u32) -> Money {
        Money(usd as i128 * MONEY_UNITS_PER_USD)
    }

    /// The amount in picodollars.
    pub const fn picodollars(self) -> i128 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// `self + other`, `None` past the bound.
    pub const fn checked_add(self, other: Money) -> Option<Money> {
        match self.0.checked_add(other.0) {
            Some(units) => Money::from_picodollars(units),
            None => None,
        }
    }

    /// `self - other`, `None` past the bound.
    pub const fn checked_sub(self, other: Money) -> Option<Money> {
        match self.0.checked_sub(other.0) {
            Some(units) => Money::from_picodollars(units),
            None => None,
        }
    }

    /// `self - other`, but never below zero. Used for "remaining": a budget
    /// already past its limit has nothing remaining, not a negative amount.
    pub const fn saturating_sub_to_zero(self, other: Money) -> Money {
        // Both are within ±MAX so the difference fits an i128.
        let d = self.0 - other.0;
        if d < 0 {
            Money::ZERO
        } else {
            Money(d)
        }
    }

    /// The cost of `tokens` at `self` per token. Exact; `None` past the bound.
    pub const fn checked_mul_tokens(self, tokens: u64) -> Option<Money> {
        match self.0.checked_mul(tokens as i128) {
            Some(units) => Money::from_picodollars(units),
            None => None,
        }
    }

    /// `self / parts`, rounded toward zero: splitting a non-negative amount
    /// hands out no more than there is (the remainder stays unspent).
    /// `parts == 0` yields zero (nothing is handed out).
    pub const fn div_floor(self, parts: u64) -> Money {
        if parts == 0 {
            return Money::ZERO;
        }
        Money(self.0 / parts as i128)
    }

    /// How many tokens at `per_token` fit in `self`, rounded down (against the
    /// spender): what "degrade before deny" may lower max_tokens to.
    /// A free token (`per_token` zero) affords `u64::MAX`; a negative amount none.
    pub const fn tokens_affordable(self, per_token: Money) -> u64 {
        if self.0 <= 0 {
            return 0;
        }
        if per_token.0 <= 0 {
            return u64::MAX;
        }
        let n = self.0 / per_token.0;
        if n > u64::MAX as i128 {
            u64::MAX
        } else {
            n as u64
        }
    }

    pub fn min(self, other: Money) -> Money {
        Ord::min(self, other)
    }

    pub fn max(self, other: Money) -> Money {
        Ord::max(self, other)
    }

    /// Parses a non-negative decimal USD amount: "12.50", "0.000150", "100".
    /// At most [`MONEY_DECIMALS`] decimal places; no sign, no exponent, no
    /// spaces or separators; at least one digit on each side of a '.'.
    pub fn parse_usd(s: &str) -> Result<Money, MoneyError> {
        let m = Self::parse_usd_signed(s)?;
        if s.starts_with('-') {
            return Err(MoneyError::Negative(s.to_string()));
        }
        Ok(m)
    }

    /// Like [`Money::parse_usd`] but accepts a leading '-'.
    pub fn parse_usd_signed(s: &str) -> Result<Money, MoneyError> {
        parse_decimal(s, MONEY_DECIMALS).map(Money)
    }

    /// Parses a price quoted in USD per million tokens (at most
    /// [`PRICE_PER_MTOK_DECIMALS_MAX`] decimals, non-negative) and returns the
    /// exact price of one token.
    pub fn parse_per_token_from_usd_per_mtok(s: &str) -> Result<Money, MoneyError> {
        if s.starts_with('-') {
            return Err(MoneyError::Negative(s.to_string()));
        }
        // Parse in units of 1e-6 USD-per-Mtok, which is exactly one unit per token.
        let micro = parse_decimal(s, PRICE_PER_MTOK_DECIMALS_MAX)?;
        // `parse_decimal` bounded `micro` by Money::MAX in 1e-6 steps; one step is one unit.
        debug_assert!(micro >= 0);
        Ok(Money(micro))
    }
}

/// Parses `[-]digits[.digits]` into an integer scaled by 10^decimals.
fn parse_decimal(s: &str, decimals: u32) -> Result<i128, MoneyError> {
    if s.is_empty() {
        return Err(MoneyError::Empty);
    }
    if s.len() > MONEY_STRING_BYTES_MAX {
        return Err(MoneyError::TooLong);
    }
    let junk = || MoneyError::Junk(s.to_string());
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(junk());
    }
    let frac_part = frac_part.unwrap_or("");
    if body.contains('.') && frac_part.is_empty() {
        return Err(junk());
    }
    if !frac_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(junk());
    }
    // Trailing zeros carry no precision: "0.1500000" is fine at 6 decimals.
    let frac_significant = frac_part.trim_end_matches('0');
    if frac_significant.len() > decimals as usize {
        return Err(MoneyError::TooPrecise {
            value: s.to_string(),
            decimals_max: decimals,
        });
    }
    let too_large = || MoneyError::TooLarge(s.to_string());
    let scale = 10i128.pow(decimals);
    let mut int_value: i128 = 0;
    for b in int_part.bytes() {
        int_value = int_value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(b - b'0')))
            .ok_or_else(too_large)?;
        if int_value > Money::MAX.0 {
            return Err(too_large());
        }
    }
    let mut frac_value: i128 = 0;
    for b in frac_significant.bytes() {
        frac_value = frac_value * 10 + i128::from(b - b'0');
    }
    frac_value *= 10i128.pow(decimals - frac_significant.len() as u32);
    let magnitude = int_value
        .checked_mul(scale)
        .and_then(|v| v.checked_add(frac_value))
        .ok_or_else(too_large)?;
    if magnitude > Money::MAX.0 {
        return Err(too_large());
    }
    Ok(if negative { -magnitude } else { magnitude })
}

/// The shortest exact decimal USD string: "0.012", "1", "100.5", "-0.5".
/// Longest decimal form of any `Money`: a sign, the 27 integer digits of
/// `i128::MAX / MONEY_UNITS_PER_USD`, a point and 12 decimals (41), rounded up.
const MONEY_TEXT_BYTES_MAX: usize = 48;

impl Money {
    /// The shortest exact decimal form ("12.5", "0.000004215", "-3"), written
    /// backwards into `buf` without the formatter machinery or a 128-bit
    /// division per digit: it is on every response's cost header and every
    /// log row.
    fn decimal(self, buf: &mut [u8; MONEY_TEXT_BYTES_MAX]) -> &str {
        /// Writes `n` backwards ending at `end`, at least `width` digits.
        fn digits(buf: &mut [u8], mut end: usize, mut n: u64, width: usize) -> usize {
            let stop = end.saturating_sub(width);
            while n > 0 || end > stop {
                end -= 1;
                buf[end] = b'0' + (n % 10) as u8;
                n /= 10;
            }
            end
        }
        let magnitude = self.0.unsigned_abs();
        let scale = MONEY_UNITS_PER_USD as u128;
        let mut int_part = magnitude / scale;
        // < 10^12: fits.
        let mut frac = (magnitude % scale) as u64;
        let mut at = buf.len();
        if frac != 0 {
            let mut width = MONEY_DECIMALS as usize;
            while frac.is_multiple_of(10) {
                frac /= 10;
                width -= 1;
            }
            at = digits(buf, at, frac, width);
            at -= 1;
            buf[at] = b'.';
        }
        // Above u64::MAX only for sums near the type's bound: 19 digits at a time.
        const CHUNK: u128 = 10_000_000_000_000_000_000;
        while int_part > u128::from(u64::MAX) {
            at = digits(buf, at, (int_part % CHUNK) as u64, 19);
            int_part /= CHUNK;
        }
        at = digits(buf, at, int_part as u64, 1);
        if self.0 < 0 {
            at -= 1;
            buf[at] = b'-';
        }
        // Only ASCII digits, '.' and '-' were written.
        std::str::from_utf8(&buf[at..]).unwrap_or_default()
    }

    /// The decimal form of any count of picodollars, also beyond
    /// [`Money::MAX`] (sums over a request log can be), as `Display` writes a
    /// `Money`.
    pub fn picodollars_decimal(units: i128) -> String {
        let mut buf = [0u8; MONEY_TEXT_BYTES_MAX];
        Money(units).decimal(&mut buf).to_string()
    }

    /// Appends the decimal form (as `Display` writes it) to `out`.
    pub fn extend_decimal(self, out: &mut Vec<u8>) {
        let mut buf = [0u8; MONEY_TEXT_BYTES_MAX];
        out.extend_from_slice(self.decimal(&mut buf).as_bytes());
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; MONEY_TEXT_BYTES_MAX];
        f.write_str(self.decimal(&mut buf))
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${self}")
    }
}

/// Parses a non-negative amount, as [`Money::parse_usd`].
impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Money, MoneyError> {
        Money::parse_usd(s)
    }
}

/// Serialized as its exact decimal string ("12.5"), never as a float.
impl serde::Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Deserialized from a decimal string only (a JSON/TOML float would already
/// have lost exactness before we saw it). Negative amounts are refused.
impl<'de> serde::Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal USD amount as a string, e.g. \"12.50\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Money, E> {
                Money::parse_usd(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd(s: &str) -> Money {
        Money::parse_usd(s).unwrap()
    }

    #[test]
    fn parse_table() {
        let table: &[(&str, i128)] = &[
            ("0", 0),
            ("1", 1_000_000_000_000),
            ("12.50", 12_500_000_000_000),
            ("0.000150", 150_000_000),
            ("0.000000000001", 1),
            ("100.5", 100_500_000_000_000),
            ("007.10", 7_100_000_000_000),
            ("0.1000000000000000", 100_000_000_000),
            ("1000000000000000000", Money::MAX.0),
        ];
        for &(s, units) in table {
            assert_eq!(Money::parse_usd(s), Ok(Money(units)), "{s}");
        }
    }

    #[test]
    fn parse_refuses() {
        let junk = [
            "", " 1", "1 ", "+1", "1.", ".5", "1.2.3", "1e3", "0x10", "1,000", "1_000", "abc",
            "--1", "-", "١", "1.-5",
        ];
        for s in junk {
            assert!(Money::parse_usd(s).is_err(), "{s:?} parsed");
        }
        assert_eq!(
            Money::parse_usd("0.0000000000001"),
            Err(MoneyError::TooPrecise {
                value: "0.0000000000001".into(),
                decimals_max: 12
            })
        );
        assert!(matches!(
            Money::parse_usd("-1"),
            Err(MoneyError::Negative(_))
        ));
        assert!(matches!(
            Money::parse_usd("-0"),
            Err(MoneyError::Negative(_))
        ));
        assert!(matches!(
            Money::parse_usd("1000000000000000000.000000000001"),
            Err(MoneyError::TooLarge(_))
        ));
        assert!(matches!(
            Money::parse_usd("99999999999999999999999999999999999999999"),
            Err(MoneyError::TooLarge(_))
        ));
        assert_eq!(Money::parse_usd(&"1".repeat(65)), Err(MoneyError::TooLong));
        assert_eq!(
            Money::parse_usd_signed("-2.5"),
            Ok(Money(-2_500_000_000_000))
        );
    }

    #[test]
    fn format_is_shortest_exact() {
        let table: &[(i128, &str)] = &[
            (0, "0"),
            (1, "0.000000000001"),
            (12_000_000_000, "0.012"),
            (1_000_000_000_000, "1"),
            (100_500_000_000_000, "100.5"),
            (-500_000_000_000, "-0.5"),
            (Money::MAX.0, "1000000000000000000"),
            (Money::MIN.0, "-1000000000000000000"),
        ];
        for &(units, s) in table {
            assert_eq!(Money(units).to_string(), s);
        }
    }

    #[test]
    fn per_token_prices_are_exact() {
        // $0.15 per million tokens = 150_000 picodollars per token.
        let p = Money::parse_per_token_from_usd_per_mtok("0.15").unwrap();
        assert_eq!(p.picodollars(), 150_000);
        let p = Money::parse_per_token_from_usd_per_mtok("0.000001").unwrap();
        assert_eq!(p.picodollars(), 1);
        assert!(Money::parse_per_token_from_usd_per_mtok("0.0000001").is_err());
        assert!(Money::parse_per_token_from_usd_per_mtok("-1").is_err());
        // 1M tokens at $0.15/Mtok cost exactly $0.15.
        assert_eq!(p.checked_mul_tokens(0), Some(Money::ZERO));
        let p = Money::parse_per_token_from_usd_per_mtok("0.15").unwrap();
        assert_eq!(p.checked_mul_tokens(1_000_000), Some(usd("0.15")));
        assert_eq!(
            p.checked_mul_tokens(u64::MAX).map(|m| m > Money::ZERO),
            Some(true)
        );
        assert_eq!(Money::MAX.checked_mul_tokens(2), None);
    }

    #[test]
    fn arithmetic_is_checked_and_rounds_against_the_spender() {
        assert_eq!(Money::MAX.checked_add(Money::UNIT), None);
        assert_eq!(Money::MIN.checked_sub(Money::UNIT), None);
        assert_eq!(Money::from_picodollars(Money::MAX.0 + 1), None);
        assert_eq!(Money(10).div_floor(3), Money(3));
        assert_eq!(Money(10).div_floor(0), Money::ZERO);
        assert_eq!(Money(5).saturating_sub_to_zero(Money(7)), Money::ZERO);
        assert_eq!(Money(10).tokens_affordable(Money(3)), 3);
        assert_eq!(Money(10).tokens_affordable(Money::ZERO), u64::MAX);
        assert_eq!(Money(-10).tokens_affordable(Money(1)), 0);
    }

    #[test]
    fn serde_uses_strings() {
        let m: Money = serde_json::from_str("\"12.50\"").unwrap();
        assert_eq!(m, usd("12.5"));
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"12.5\"");
        assert!(serde_json::from_str::<Money>("12.5").is_err());
        assert!(serde_json::from_str::<Money>("\"-1\"").is_err());
    }

    /// The straightforward form the fast one must equal.
    fn reference_decimal(m: Money) -> String {
        let magnitude = m.0.unsigned_abs();
        let scale = MONEY_UNITS_PER_USD as u128;
        let mut s = if m.0 < 0 {
            "-".to_string()
        } else {
            String::new()
        };
        s += &(magnitude / scale).to_string();
        let mut frac = magnitude % scale;
        if frac != 0 {
            let mut digits = MONEY_DECIMALS as usize;
            while frac.is_multiple_of(10) {
                frac /= 10;
                digits -= 1;
            }
            s += &format!(".{frac:0digits$}");
        }
        s
    }

    #[test]
    fn formats_the_edges_of_the_type() {
        for units in [
            0,
            1,
            -1,
            10,
            MONEY_UNITS_PER_USD,
            -MONEY_UNITS_PER_USD,
            MONEY_UNITS_PER_USD - 1,
            u64::MAX as i128,
            u64::MAX as i128 + 1,
            u64::MAX as i128 * MONEY_UNITS_PER_USD,
            Money::MAX.0,
            -Money::MAX.0,
            i128::MAX,
            i128::MIN,
            i128::MIN + 1,
        ] {
            assert_eq!(
                Money(units).to_string(),
                reference_decimal(Money(units)),
                "{units}"
            );
            let mut out = b"x: ".to_vec();
            Money(units).extend_decimal(&mut out);
            assert_eq!(
                out,
                format!("x: {}", reference_decimal(Money(units))).into_bytes()
            );
        }
        assert_eq!(Money(4_215_000).to_string(), "0.000004215");
        assert_eq!(Money(-12_500_000_000_000).to_string(), "-12.5");
        assert_eq!(
            Money(i128::MIN).to_string(),
            "-170141183460469231731687303.715884105728"
        );
    }

    proptest! {
        #[test]
        fn formats_as_the_reference(units in any::<i128>()) {
            prop_assert_eq!(Money(units).to_string(), reference_decimal(Money(units)));
        }

        #[test]
        fn formats_small_amounts_as_the_reference(units in -10_000_000_000_000_000i128..10_000_000_000_000_000) {
            prop_assert_eq!(Money(units).to_string(), reference_decimal(Money(units)));
        }

        #[test]
        fn format_then_parse_round_trips(units in -Money::MAX.0..=Money::MAX.0) {
            let m = Money(units);
            let s = m.to_string();
            prop_assert_eq!(Money::parse_usd_signed(&s), Ok(m));
            // Shortest: no trailing zero in a fraction, no lone '.'.
            prop_assert!(!s.ends_with('.'));
            if s.contains('.') {
                prop_assert!(!s.ends_with('0'));
            }
        }

        #[test]
        fn parse_then_format_is_canonical(int in 0u64..1_000_000_000, frac in 0u64..1_000_000_000_000, zeros in 0usize..4) {
            let s = format!("{int}.{frac:012}{}", "0".repeat(zeros));
            let m = Money::parse_usd(&s).unwrap();
            prop_assert_eq!(m.picodollars(), int as i128 * MONEY_UNITS_PER_USD + frac as i128);
            prop_assert_eq!(Money::parse_usd(&m.to_string()), Ok(m));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = Money::parse_usd(&s);
            let _ = Money::parse_per_token_from_usd_per_mtok(&s);
        }

        #[test]
        fn split_never_hands_out_more(units in 0i128..Money::MAX.0, parts in 1u64..10_000) {
            let share = Money(units).div_floor(parts);
            prop_assert!(share.0 * parts as i128 <= units);
            prop_assert!(units - share.0 * (parts as i128) < (parts as i128));
        }
    }
}
