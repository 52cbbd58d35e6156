//! Exact money in Redis Lua scripts.
//!
//! Redis runs Lua 5.1, whose only number type is a double: an integer is
//! exact only up to 2^53, and picodollars pass that at about $9,007. So no
//! amount is ever a Lua number. Amounts cross the wire as decimal strings of
//! picodollars (what [`to_lua`] writes) and the scripts hold them as two
//! limbs, `{hi, lo}` with value `hi × 10^12 + lo`, `0 <= lo < 10^12` and `hi`
//! whole dollars (negative for a negative amount, `lo` still non-negative):
//! both limbs, and every intermediate of an add or subtract, stay exact
//! integers in a double while `|hi| < 2^53 − 1`. [`LUA_MONEY_MAX`] is that
//! bound; amounts beyond it are refused before they reach Redis.
//!
//! [`LUA_MONEY`] is the helper code each script starts with:
//! `money_parse(s)`, `money_add(a, b)`, `money_sub(a, b)`, `money_cmp(a, b)`
//! (-1, 0, 1), `money_str(a)`, `money_max(a, b)`, `money_min(a, b)`,
//! `money_div(a, n)` (by a whole number up to 8192, rounded down), `money_zero()`.
//! `money_parse` raises a Lua error on anything that is not an optional `-`
//! and 1 to 28 digits, so a corrupted hash field stops the script instead of
//! being read as a number.

use crate::money::{Money, MONEY_UNITS_PER_USD};

/// The largest whole-dollar limb exact in a double, with room for a carry.
const HI_MAX: i128 = (1 << 53) - 2;

/// The largest amount a cluster script handles exactly:
/// 9,007,199,254,740,990.999999999999 USD (far above any budget; larger
/// limits are refused in cluster mode).
pub const LUA_MONEY_MAX: Money =
    match Money::from_picodollars(HI_MAX * MONEY_UNITS_PER_USD + (MONEY_UNITS_PER_USD - 1)) {
        Some(m) => m,
        None => panic!("LUA_MONEY_MAX out of Money's range"),
    };

/// `m` as the scripts read it (decimal picodollars), or `None` when its
/// magnitude is above [`LUA_MONEY_MAX`].
pub fn to_lua(m: Money) -> Option<String> {
    let p = m.picodollars();
    (p.unsigned_abs() <= LUA_MONEY_MAX.picodollars().unsigned_abs()).then(|| p.to_string())
}

/// A script's decimal picodollars back as money (`None`: not a decimal
/// integer, or out of range).
pub fn from_lua(s: &str) -> Option<Money> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Money::from_picodollars(s.parse().ok()?)
}

/// The Lua helpers every cluster script is prefixed with (see the module
/// doc). Pure functions of their arguments: no Redis call, so a script stays
/// deterministic and replicable.
pub const LUA_MONEY: &str = r#"
local MONEY_BASE = 1000000000000
local MONEY_HI_MAX = 9007199254740990
local function money_check(a)
  if a.hi > MONEY_HI_MAX or a.hi < -MONEY_HI_MAX - 1 then
    error("bursar: amount out of the exact range")
  end
  return a
end
local function money_zero()
  return {hi = 0, lo = 0}
end
local function money_norm(hi, lo)
  if lo >= MONEY_BASE then
    lo = lo - MONEY_BASE
    hi = hi + 1
  elseif lo < 0 then
    lo = lo + MONEY_BASE
    hi = hi - 1
  end
  return money_check({hi = hi, lo = lo})
end
local function money_add(a, b)
  return money_norm(a.hi + b.hi, a.lo + b.lo)
end
local function money_sub(a, b)
  return money_norm(a.hi - b.hi, a.lo - b.lo)
end
local function money_neg(a)
  return money_sub(money_zero(), a)
end
local function money_parse(s)
  if type(s) ~= "string" then
    error("bursar: amount is not a string")
  end
  local neg, digits = string.match(s, "^(%-?)(%d+)$")
  if digits == nil or #digits > 28 then
    error("bursar: not an amount: " .. s)
  end
  local hi, lo = 0, tonumber(digits)
  if #digits > 12 then
    hi = tonumber(string.sub(digits, 1, #digits - 12))
    lo = tonumber(string.sub(digits, -12))
  end
  local a = money_check({hi = hi, lo = lo})
  if neg == "-" then
    return money_neg(a)
  end
  return a
end
local function money_cmp(a, b)
  if a.hi ~= b.hi then
    if a.hi < b.hi then return -1 else return 1 end
  end
  if a.lo ~= b.lo then
    if a.lo < b.lo then return -1 else return 1 end
  end
  return 0
end
local function money_max(a, b)
  if money_cmp(a, b) >= 0 then return a else return b end
end
local function money_min(a, b)
  if money_cmp(a, b) <= 0 then return a else return b end
end
-- `a` divided by a whole `n` in 1..=MONEY_DIV_MAX, rounded down; a
-- negative `a` gives zero (a share of nothing). The remainder of the
-- dollar limb times 10^12 plus the picodollar limb stays below 2^53, and
-- the quotient is checked against it, so no double rounding can err.
local MONEY_DIV_MAX = 8192
local function money_div(a, n)
  if n ~= math.floor(n) or n < 1 or n > MONEY_DIV_MAX then
    error("bursar: bad divisor")
  end
  if a.hi < 0 then return money_zero() end
  local hi = math.floor(a.hi / n)
  local r = a.hi - hi * n
  if r < 0 then hi, r = hi - 1, r + n end
  if r >= n then hi, r = hi + 1, r - n end
  local x = r * MONEY_BASE + a.lo
  local lo = math.floor(x / n)
  if lo * n > x then lo = lo - 1 end
  if (lo + 1) * n <= x then lo = lo + 1 end
  return money_norm(hi, lo)
end
local function money_str(a)
  local sign = ""
  if a.hi < 0 then
    a = money_neg(a)
    sign = "-"
  end
  if a.hi == 0 then
    return sign .. string.format("%d", a.lo)
  end
  return sign .. string.format("%d%012d", a.hi, a.lo)
end
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_cross_as_decimal_picodollars_within_the_exact_range() {
        let max = LUA_MONEY_MAX;
        assert_eq!(to_lua(Money::from_usd(12)), Some("12000000000000".into()));
        assert_eq!(to_lua(Money::ZERO), Some("0".into()));
        assert!(to_lua(max).is_some());
        let neg = Money::ZERO.checked_sub(max).unwrap();
        assert!(to_lua(neg).is_some());
        let over = max.checked_add(Money::UNIT).unwrap();
        assert_eq!(to_lua(over), None);
        assert_eq!(from_lua("-5"), Money::from_picodollars(-5));
        for bad in ["", "-", "1.5", "+3", " 1", "1e9", "0x10"] {
            assert_eq!(from_lua(bad), None, "{bad:?}");
        }
    }
}
