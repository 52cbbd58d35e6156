//! Budget periods: which [start, end) a moment belongs to, over an injected clock.
//!
//! Times are unix milliseconds (`i64`, UTC) passed in by the caller; nothing
//! here reads a clock, so every boundary is testable and replay is exact.
//! Civil dates use Howard Hinnant's `days_from_civil` / `civil_from_days`
//! (proleptic Gregorian, integer only), which are exact at month ends,
//! quarter ends and leap days.
//!
//! Two alignments:
//! - calendar: periods are aligned to UTC calendar units counted from the unix
//!   epoch (minutes, hours, midnights, ISO weeks starting Monday, months,
//!   quarters starting Jan/Apr/Jul/Oct, years); with a count `n > 1`, periods are
//!   the multiples of `n` units since 1970 (e.g. "2M": Jan-Feb, Mar-Apr, ...).
//!   The anchor does not matter.
//! - rolling: periods are `anchor + k × duration`. For month-based units
//!   (M, Q, Y) period `k` starts on the anchor's day-of-month `k × months` later,
//!   clamped to that month's last day, at the anchor's time of day: an anchor on
//!   Jan 31 gives Feb 28 (29 in a leap year), Mar 31, Apr 30, ... The clamp is
//!   applied from the anchor each time, never accumulated.
//!
//! Inputs outside [`TIME_MS_MIN`]..=[`TIME_MS_MAX`] are clamped into it, so a
//! corrupt anchor or clock reading can never overflow the arithmetic.

use std::fmt;
use std::str::FromStr;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;
pub const WEEK_MS: i64 = 7 * DAY_MS;
/// Earliest time the period math accepts: the unix epoch.
pub const TIME_MS_MIN: i64 = 0;
/// Latest time the period math accepts: 9999-12-31T23:59:59.999Z.
pub const TIME_MS_MAX: i64 = 253_402_300_799_999;
/// The end of a period that never ends (a prepaid budget or no budget).
pub const TIME_MS_NEVER: i64 = i64::MAX;
/// Largest count in a reset duration ("1000d"). Bounds the arithmetic and
/// keeps "every 10^9 minutes" out of configs.
pub const RESET_COUNT_MAX: u16 = 1000;
/// 1970-01-01 was a Thursday; the first Monday is day 4.
const EPOCH_FIRST_MONDAY_DAYS: i64 = 4;

// The clamped range and the largest period stay far inside i64.
const _: () = assert!(TIME_MS_MAX
    .checked_add(RESET_COUNT_MAX as i64 * 53 * WEEK_MS)
    .is_some());

/// The unit of a reset duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetUnit {
    /// "m"
    Minute,
    /// "h"
    Hour,
    /// "d"
    Day,
    /// "w"
    Week,
    /// "M"
    Month,
    /// "Q": three months.
    Quarter,
    /// "Y": twelve months.
    Year,
}

impl ResetUnit {
    pub const ALL: [ResetUnit; 7] = [
        ResetUnit::Minute,
        ResetUnit::Hour,
        ResetUnit::Day,
        ResetUnit::Week,
        ResetUnit::Month,
        ResetUnit::Quarter,
        ResetUnit::Year,
    ];

    pub fn suffix(self) -> char {
        match self {
            ResetUnit::Minute => 'm',
            ResetUnit::Hour => 'h',
            ResetUnit::Day => 'd',
            ResetUnit::Week => 'w',
            ResetUnit::Month => 'M',
            ResetUnit::Quarter => 'Q',
            ResetUnit::Year => 'Y',
        }
    }

    /// Fixed length for units that have one.
    fn fixed_ms(self) -> Option<i64> {
        match self {
            ResetUnit::Minute => Some(MINUTE_MS),
            ResetUnit::Hour => Some(HOUR_MS),
            ResetUnit::Day => Some(DAY_MS),
            ResetUnit::Week => Some(WEEK_MS),
            ResetUnit::Month | ResetUnit::Quarter | ResetUnit::Year => None,
        }
    }

    fn months(self) -> i64 {
        match self {
            ResetUnit::Month => 1,
            ResetUnit::Quarter => 3,
            ResetUnit::Year => 12,
            _ => 0,
        }
    }
}

/// How often a budget resets: `count` × `unit`, written like "1M" or "30d".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reset {
    count: u16,
    unit: ResetUnit,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResetError {
    #[error("reset {0:?} is not a duration like \"1m\", \"1h\", \"1d\", \"1w\", \"1M\", \"1Q\" or \"1Y\"")]
    Junk(String),
    #[error("reset {0:?}: the count must be 1..={RESET_COUNT_MAX}")]
    Count(String),
}

impl Reset {
    pub fn new(count: u16, unit: ResetUnit) -> Result<Reset, ResetError> {
        if count == 0 || count > RESET_COUNT_MAX {
            return Err(ResetError::Count(format!("{count}{}", unit.suffix())));
        }
        Ok(Reset { count, unit })
    }

    /// One of a unit ("1M").
    pub const fn one(unit: ResetUnit) -> Reset {
        Reset { count: 1, unit }
    }

    pub fn count(self) -> u16 {
        self.count
    }

    pub fn unit(self) -> ResetUnit {
        self.unit
    }

    /// Parses "1m", "1h", "1d", "1w", "1M", "1Q", "1Y" (and other counts, "30d").
    pub fn parse(s: &str) -> Result<Reset, ResetError> {
        let junk = || ResetError::Junk(s.to_string());
        let unit_char = s.chars().last().ok_or_else(junk)?;
        let unit = ResetUnit::ALL
            .into_iter()
            .find(|u| u.suffix() == unit_char)
            .ok_or_else(junk)?;
        let digits = &s[..s.len() - unit_char.len_utf8()];
        if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(junk());
        }
        let count: u32 = digits.parse().map_err(|_| junk())?;
        if count == 0 || count > u32::from(RESET_COUNT_MAX) {
            return Err(ResetError::Count(s.to_string()));
        }
        Reset::new(count as u16, unit)
    }
}

impl fmt::Display for Reset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.count, self.unit.suffix())
    }
}

impl FromStr for Reset {
    type Err = ResetError;
    fn from_str(s: &str) -> Result<Reset, ResetError> {
        Reset::parse(s)
    }
}

/// Calendar-aligned (UTC) or rolling from the budget's anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Alignment {
    /// `anchor + k × duration`.
    #[default]
    Rolling,
    /// Aligned to UTC calendar boundaries.
    Calendar,
}

/// A half-open interval of time [start_ms, end_ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    pub start_ms: i64,
    /// Exclusive; [`TIME_MS_NEVER`] for a period that never ends.
    pub end_ms: i64,
}

impl Period {
    /// The one period of a budget that never resets.
    pub const fn forever(anchor_ms: i64) -> Period {
        Period {
            start_ms: anchor_ms,
            end_ms: TIME_MS_NEVER,
        }
    }

    pub fn contains(&self, now_ms: i64) -> bool {
        self.start_ms <= now_ms && now_ms < self.end_ms
    }

    pub fn is_forever(&self) -> bool {
        self.end_ms == TIME_MS_NEVER
    }
}

/// Clamps a time into the range the math accepts.
pub fn clamp_time_ms(ms: i64) -> i64 {
    ms.clamp(TIME_MS_MIN, TIME_MS_MAX)
}

/// The period containing `now_ms` for a budget with this reset and alignment
/// anchored (created) at `anchor_ms`. `reset == None` is the one forever period.
///
/// Postcondition: `start_ms <= clamp(now_ms) < end_ms`.
pub fn period_containing(
    reset: Option<Reset>,
    alignment: Alignment,
    anchor_ms: i64,
    now_ms: i64,
) -> Period {
    let anchor_ms = clamp_time_ms(anchor_ms);
    let now_ms = clamp_time_ms(now_ms);
    let Some(reset) = reset else {
        return Period::forever(anchor_ms.min(now_ms));
    };
    let count = i64::from(reset.count);
    debug_assert!((1..=i64::from(RESET_COUNT_MAX)).contains(&count));
    let period = match (alignment, reset.unit.fixed_ms()) {
        (Alignment::Rolling, Some(unit_ms)) => {
            let len = count * unit_ms;
            let k = (now_ms - anchor_ms).div_euclid(len);
            let start_ms = anchor_ms + k * len;
            Period {
                start_ms,
                end_ms: start_ms + len,
            }
        }
        (Alignment::Calendar, Some(unit_ms)) => {
            let len = count * unit_ms;
            // Weeks start on Monday; other fixed units align to the epoch.
            let origin_ms = if reset.unit == ResetUnit::Week {
                EPOCH_FIRST_MONDAY_DAYS * DAY_MS
            } else {
                0
            };
            let start_ms = origin_ms + (now_ms - origin_ms).div_euclid(len) * len;
            Period {
                start_ms,
                end_ms: start_ms + len,
            }
        }
        (Alignment::Calendar, None) => {
            let step = count * reset.unit.months();
            let (y, m, _) = civil_from_days(now_ms.div_euclid(DAY_MS));
            let month_index = month_index(y, m);
            let start_index = month_index.div_euclid(step) * step;
            Period {
                start_ms: month_index_start_ms(start_index),
                end_ms: month_index_start_ms(start_index + step),
            }
        }
        (Alignment::Rolling, None) => {
            let step = count * reset.unit.months();
            let anchor_days = anchor_ms.div_euclid(DAY_MS);
            let time_of_day_ms = anchor_ms.rem_euclid(DAY_MS);
            let (ay, am, ad) = civil_from_days(anchor_days);
            let (ny, nm, _) = civil_from_days(now_ms.div_euclid(DAY_MS));
            let months_between = month_index(ny, nm) - month_index(ay, am);
            let start_of = |k: i64| -> i64 {
                let index = month_index(ay, am) + k * step;
                let (y, m) = (index.div_euclid(12) + 1970, index.rem_euclid(12) as u32 + 1);
                let d = ad.min(days_in_month(y, m));
                days_from_civil(y, m, d) * DAY_MS + time_of_day_ms
            };
            let mut k = months_between.div_euclid(step);
            // The estimate is off by at most one period either way.
            while start_of(k) > now_ms {
                k -= 1;
            }
            while start_of(k + 1) <= now_ms {
                k += 1;
            }
            Period {
                start_ms: start_of(k),
                end_ms: start_of(k + 1),
            }
        }
    };
    debug_assert!(period.start_ms <= now_ms && now_ms < period.end_ms);
    period
}

/// Months since January 1970 (January 1970 is 0).
fn month_index(y: i64, m: u32) -> i64 {
    (y - 1970) * 12 + i64::from(m) - 1
}

fn month_index_start_ms(index: i64) -> i64 {
    let y = index.div_euclid(12) + 1970;
    let m = index.rem_euclid(12) as u32 + 1;
    days_from_civil(y, m, 1) * DAY_MS
}

pub fn is_leap_year(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if is_leap_year(y) {
                29
            } else {
                28
            }
        }
    }
}

/// Days since 1970-01-01 of the civil date y-m-d (proleptic Gregorian).
/// Hinnant's algorithm: exact for every year in range.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    debug_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The civil date (y, m, d) of a count of days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Unix milliseconds of a UTC civil date and time (test and config helper).
pub fn unix_ms(y: i64, m: u32, d: u32, hh: u32, mm: u32, ss: u32) -> i64 {
    days_from_civil(y, m, d) * DAY_MS
        + i64::from(hh) * HOUR_MS
        + i64::from(mm) * MINUTE_MS
        + i64::from(ss) * 1000
}

/// RFC 3339 UTC rendering ("2026-11-27T17:00:00Z", with ".123" when the
/// milliseconds are not zero), for `reset_at` in spend reports.
/// Parses an RFC 3339 UTC time, `YYYY-MM-DDTHH:MM:SS[.fff]Z` or with a
/// `±HH:MM` offset, into unix milliseconds. `None` for anything else.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hh, mi, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(i64::from(y), mo)
        || hh > 23
        || mi > 59
        || ss > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0u32;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start {
            return None;
        }
        let frac = &s[start..end.min(start + 3)];
        millis = frac.parse::<u32>().ok()? * 10u32.pow(3 - frac.len() as u32);
        i = end;
    }
    let offset_min: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = i64::from(num(i + 1..i + 3)?);
            let om = i64::from(num(i + 4..i + 6)?);
            let m = oh * 60 + om;
            if *c == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    Some(
        unix_ms(i64::from(y), mo, d, hh, mi, ss.min(59)) + i64::from(millis)
            - offset_min * MINUTE_MS,
    )
}

pub fn format_rfc3339_ms(ms: i64) -> String {
    let ms = clamp_time_ms(ms);
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    let in_day = ms.rem_euclid(DAY_MS);
    let (hh, mm, ss, milli) = (
        in_day / HOUR_MS,
        in_day % HOUR_MS / MINUTE_MS,
        in_day % MINUTE_MS / 1000,
        in_day % 1000,
    );
    if milli == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_what_it_formats_and_offsets() {
        for ms in [0, 1_795_800_000_123, unix_ms(2024, 2, 29, 23, 59, 59) + 999] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }
        assert_eq!(
            parse_rfc3339_ms("2026-11-27T17:00:00+01:00"),
            Some(unix_ms(2026, 11, 27, 16, 0, 0))
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-27T17:00:00Z"),
            Some(unix_ms(2026, 11, 27, 17, 0, 0))
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-27T17:00:00.5Z"),
            Some(unix_ms(2026, 11, 27, 17, 0, 0) + 500)
        );
        for bad in [
            "",
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-27T17:00:00",
            "2026-11-27T17:00:00Zjunk",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    fn r(s: &str) -> Reset {
        Reset::parse(s).unwrap()
    }

    fn t(y: i64, m: u32, d: u32, hh: u32, mm: u32, ss: u32) -> i64 {
        unix_ms(y, m, d, hh, mm, ss)
    }

    #[test]
    fn civil_round_trips_over_five_centuries() {
        let mut expected = (1970i64, 1u32, 1u32);
        for z in 0..(530 * 366) {
            let got = civil_from_days(z);
            assert_eq!(got, expected, "day {z}");
            assert_eq!(days_from_civil(got.0, got.1, got.2), z);
            // Step the expected date the naive way.
            let (y, m, d) = expected;
            expected = if d < days_in_month(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
        assert_eq!(
            days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 28),
            2
        );
        assert_eq!(
            days_from_civil(2100, 3, 1) - days_from_civil(2100, 2, 28),
            1
        );
        assert_eq!(
            days_from_civil(9999, 12, 31) * DAY_MS + DAY_MS - 1,
            TIME_MS_MAX
        );
    }

    #[test]
    fn reset_parse() {
        for (s, count, unit) in [
            ("1m", 1, ResetUnit::Minute),
            ("1h", 1, ResetUnit::Hour),
            ("1d", 1, ResetUnit::Day),
            ("1w", 1, ResetUnit::Week),
            ("1M", 1, ResetUnit::Month),
            ("1Q", 1, ResetUnit::Quarter),
            ("1Y", 1, ResetUnit::Year),
            ("30d", 30, ResetUnit::Day),
            ("1000m", 1000, ResetUnit::Minute),
        ] {
            let reset = r(s);
            assert_eq!((reset.count(), reset.unit()), (count, unit), "{s}");
            assert_eq!(reset.to_string(), s);
        }
        for s in [
            "",
            "m",
            "1",
            "0d",
            "1001d",
            "1y",
            "1 d",
            "-1d",
            "1dd",
            "99999999999d",
            "1é",
        ] {
            assert!(Reset::parse(s).is_err(), "{s:?}");
        }
    }

    /// (reset, alignment, anchor, now, expected start, expected end)
    #[allow(clippy::type_complexity)]
    fn table() -> Vec<(&'static str, Alignment, i64, i64, i64, i64)> {
        use Alignment::{Calendar as C, Rolling as R};
        let anchor = t(2024, 1, 31, 10, 30, 0);
        vec![
            // Calendar minutes, hours, days.
            (
                "1m",
                C,
                0,
                t(2024, 2, 29, 23, 59, 59) + 999,
                t(2024, 2, 29, 23, 59, 0),
                t(2024, 3, 1, 0, 0, 0),
            ),
            (
                "1h",
                C,
                0,
                t(2024, 2, 29, 23, 0, 0),
                t(2024, 2, 29, 23, 0, 0),
                t(2024, 3, 1, 0, 0, 0),
            ),
            (
                "1d",
                C,
                0,
                t(2024, 2, 29, 12, 0, 0),
                t(2024, 2, 29, 0, 0, 0),
                t(2024, 3, 1, 0, 0, 0),
            ),
            (
                "1d",
                C,
                0,
                t(2024, 3, 1, 0, 0, 0),
                t(2024, 3, 1, 0, 0, 0),
                t(2024, 3, 2, 0, 0, 0),
            ),
            // ISO weeks start Monday: 2024-03-03 is a Sunday.
            (
                "1w",
                C,
                0,
                t(2024, 3, 3, 23, 0, 0),
                t(2024, 2, 26, 0, 0, 0),
                t(2024, 3, 4, 0, 0, 0),
            ),
            (
                "1w",
                C,
                0,
                t(2024, 3, 4, 0, 0, 0),
                t(2024, 3, 4, 0, 0, 0),
                t(2024, 3, 11, 0, 0, 0),
            ),
            (
                "1w",
                C,
                0,
                t(1970, 1, 1, 0, 0, 0),
                t(1969, 12, 29, 0, 0, 0),
                t(1970, 1, 5, 0, 0, 0),
            ),
            // Calendar months: month ends, leap Februaries.
            (
                "1M",
                C,
                0,
                t(2024, 2, 29, 23, 59, 59),
                t(2024, 2, 1, 0, 0, 0),
                t(2024, 3, 1, 0, 0, 0),
            ),
            (
                "1M",
                C,
                0,
                t(2023, 2, 28, 23, 59, 59),
                t(2023, 2, 1, 0, 0, 0),
                t(2023, 3, 1, 0, 0, 0),
            ),
            (
                "1M",
                C,
                0,
                t(2024, 12, 31, 23, 59, 59),
                t(2024, 12, 1, 0, 0, 0),
                t(2025, 1, 1, 0, 0, 0),
            ),
            (
                "1M",
                C,
                0,
                t(2025, 1, 1, 0, 0, 0),
                t(2025, 1, 1, 0, 0, 0),
                t(2025, 2, 1, 0, 0, 0),
            ),
            (
                "1M",
                C,
                anchor,
                t(2024, 4, 30, 23, 59, 59),
                t(2024, 4, 1, 0, 0, 0),
                t(2024, 5, 1, 0, 0, 0),
            ),
            // Calendar quarters: Jan, Apr, Jul, Oct.
            (
                "1Q",
                C,
                0,
                t(2024, 3, 31, 23, 59, 59),
                t(2024, 1, 1, 0, 0, 0),
                t(2024, 4, 1, 0, 0, 0),
            ),
            (
                "1Q",
                C,
                0,
                t(2024, 4, 1, 0, 0, 0),
                t(2024, 4, 1, 0, 0, 0),
                t(2024, 7, 1, 0, 0, 0),
            ),
            (
                "1Q",
                C,
                0,
                t(2024, 9, 30, 12, 0, 0),
                t(2024, 7, 1, 0, 0, 0),
                t(2024, 10, 1, 0, 0, 0),
            ),
            (
                "1Q",
                C,
                0,
                t(2024, 12, 31, 23, 59, 59),
                t(2024, 10, 1, 0, 0, 0),
                t(2025, 1, 1, 0, 0, 0),
            ),
            // Calendar years, leap and century years.
            (
                "1Y",
                C,
                0,
                t(2024, 12, 31, 23, 59, 59),
                t(2024, 1, 1, 0, 0, 0),
                t(2025, 1, 1, 0, 0, 0),
            ),
            (
                "1Y",
                C,
                0,
                t(2100, 2, 28, 0, 0, 0),
                t(2100, 1, 1, 0, 0, 0),
                t(2101, 1, 1, 0, 0, 0),
            ),
            (
                "2M",
                C,
                0,
                t(2024, 4, 15, 0, 0, 0),
                t(2024, 3, 1, 0, 0, 0),
                t(2024, 5, 1, 0, 0, 0),
            ),
            // Rolling fixed lengths from the anchor.
            (
                "1h",
                R,
                anchor,
                t(2024, 1, 31, 11, 30, 0),
                t(2024, 1, 31, 11, 30, 0),
                t(2024, 1, 31, 12, 30, 0),
            ),
            (
                "1d",
                R,
                anchor,
                t(2024, 2, 29, 10, 29, 59),
                t(2024, 2, 28, 10, 30, 0),
                t(2024, 2, 29, 10, 30, 0),
            ),
            (
                "1w",
                R,
                anchor,
                t(2024, 2, 7, 10, 30, 0),
                t(2024, 2, 7, 10, 30, 0),
                t(2024, 2, 14, 10, 30, 0),
            ),
            // Rolling months from Jan 31: clamped to each month's end, never accumulated.
            (
                "1M",
                R,
                anchor,
                t(2024, 2, 10, 0, 0, 0),
                t(2024, 1, 31, 10, 30, 0),
                t(2024, 2, 29, 10, 30, 0),
            ),
            (
                "1M",
                R,
                anchor,
                t(2024, 2, 29, 10, 30, 0),
                t(2024, 2, 29, 10, 30, 0),
                t(2024, 3, 31, 10, 30, 0),
            ),
            (
                "1M",
                R,
                anchor,
                t(2024, 3, 31, 10, 29, 59),
                t(2024, 2, 29, 10, 30, 0),
                t(2024, 3, 31, 10, 30, 0),
            ),
            (
                "1M",
                R,
                anchor,
                t(2024, 4, 30, 10, 30, 0),
                t(2024, 4, 30, 10, 30, 0),
                t(2024, 5, 31, 10, 30, 0),
            ),
            (
                "1M",
                R,
                anchor,
                t(2025, 2, 28, 10, 30, 0),
                t(2025, 2, 28, 10, 30, 0),
                t(2025, 3, 31, 10, 30, 0),
            ),
            (
                "1Q",
                R,
                anchor,
                t(2024, 4, 30, 10, 30, 0),
                t(2024, 4, 30, 10, 30, 0),
                t(2024, 7, 31, 10, 30, 0),
            ),
            (
                "1Q",
                R,
                anchor,
                t(2024, 4, 30, 10, 29, 0),
                t(2024, 1, 31, 10, 30, 0),
                t(2024, 4, 30, 10, 30, 0),
            ),
            // Rolling years from a leap day: Feb 28 in common years, Feb 29 in leap years.
            (
                "1Y",
                R,
                t(2024, 2, 29, 0, 0, 0),
                t(2025, 2, 28, 0, 0, 0),
                t(2025, 2, 28, 0, 0, 0),
                t(2026, 2, 28, 0, 0, 0),
            ),
            (
                "1Y",
                R,
                t(2024, 2, 29, 0, 0, 0),
                t(2028, 2, 29, 0, 0, 0),
                t(2028, 2, 29, 0, 0, 0),
                t(2029, 2, 28, 0, 0, 0),
            ),
            (
                "1Y",
                R,
                t(2024, 2, 29, 0, 0, 0),
                t(2028, 2, 28, 23, 0, 0),
                t(2027, 2, 28, 0, 0, 0),
                t(2028, 2, 29, 0, 0, 0),
            ),
            // Before the anchor (a clock behind the creation time): still a period containing now.
            (
                "1d",
                R,
                anchor,
                t(2024, 1, 31, 10, 0, 0),
                t(2024, 1, 30, 10, 30, 0),
                t(2024, 1, 31, 10, 30, 0),
            ),
            (
                "1M",
                R,
                anchor,
                t(2024, 1, 15, 0, 0, 0),
                t(2023, 12, 31, 10, 30, 0),
                t(2024, 1, 31, 10, 30, 0),
            ),
        ]
    }

    #[test]
    fn period_boundaries() {
        for (i, (reset, align, anchor, now, start, end)) in table().into_iter().enumerate() {
            let p = period_containing(Some(r(reset)), align, anchor, now);
            assert_eq!(
                (format_rfc3339_ms(p.start_ms), format_rfc3339_ms(p.end_ms)),
                (format_rfc3339_ms(start), format_rfc3339_ms(end)),
                "row {i}: {reset} {align:?} at {}",
                format_rfc3339_ms(now)
            );
            assert!(p.contains(now));
            // The boundaries belong to exactly one period each.
            let before = period_containing(Some(r(reset)), align, anchor, p.start_ms - 1);
            if p.start_ms > 0 {
                assert_eq!(before.end_ms, p.start_ms, "row {i}");
            }
            let after = period_containing(Some(r(reset)), align, anchor, p.end_ms);
            assert_eq!(after.start_ms, p.end_ms, "row {i}");
        }
    }

    #[test]
    fn periods_tile_time_without_gaps_or_overlap() {
        let anchors = [
            t(2024, 1, 31, 10, 30, 0),
            t(2023, 8, 31, 23, 59, 59),
            t(2024, 2, 29, 0, 0, 0),
        ];
        for reset in ["1m", "7m", "1h", "1d", "1w", "1M", "1Q", "1Y", "5M", "3d"] {
            for align in [Alignment::Rolling, Alignment::Calendar] {
                for anchor in anchors {
                    let mut p = period_containing(Some(r(reset)), align, anchor, anchor);
                    for _ in 0..60 {
                        let next = period_containing(Some(r(reset)), align, anchor, p.end_ms);
                        assert_eq!(next.start_ms, p.end_ms, "{reset} {align:?}");
                        assert!(next.end_ms > next.start_ms);
                        let mid = p.start_ms + (p.end_ms - p.start_ms) / 2;
                        assert_eq!(period_containing(Some(r(reset)), align, anchor, mid), p);
                        assert_eq!(
                            period_containing(Some(r(reset)), align, anchor, p.end_ms - 1),
                            p
                        );
                        p = next;
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_inputs_are_clamped_not_overflowed() {
        for reset in ["1m", "1000d", "1000Y", "1M"] {
            for align in [Alignment::Rolling, Alignment::Calendar] {
                for (anchor, now) in [
                    (i64::MIN, i64::MAX),
                    (i64::MAX, i64::MIN),
                    (0, 0),
                    (i64::MAX, i64::MAX),
                ] {
                    let p = period_containing(Some(r(reset)), align, anchor, now);
                    assert!(p.contains(clamp_time_ms(now)));
                }
            }
        }
        let p = period_containing(None, Alignment::Rolling, 5, 10);
        assert_eq!(p, Period::forever(5));
        assert!(p.is_forever());
    }

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339_ms(t(2026, 11, 27, 17, 0, 0)),
            "2026-11-27T17:00:00Z"
        );
        assert_eq!(
            format_rfc3339_ms(t(2024, 2, 29, 1, 2, 3) + 45),
            "2024-02-29T01:02:03.045Z"
        );
    }
}
