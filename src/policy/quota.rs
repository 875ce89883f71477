//! How many requests a key may make per calendar day or month: [`Quota`], [`QuotaPeriod`]
//! and the [`Period`] an instant falls in.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::PolicyError;

/// The calendar period a [`Quota`] counts over, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaPeriod {
    /// From 00:00:00 UTC to the next midnight.
    Day,
    /// From the first of the month, 00:00:00 UTC, to the first of the next.
    Month,
}

impl QuotaPeriod {
    /// `"day"` or `"month"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// The period of this kind that holds `at` (at the Unix epoch for an earlier instant).
    pub fn containing(self, at: SystemTime) -> Period {
        let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let day = secs / 86_400;
        match self {
            Self::Day => Period {
                start: day * 86_400,
                end: (day + 1) * 86_400,
            },
            Self::Month => {
                let (year, month, _) = civil_from_days(day);
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                Period {
                    start: days_from_civil(year, month, 1) * 86_400,
                    end: days_from_civil(next_year, next_month, 1) * 86_400,
                }
            }
        }
    }
}

impl FromStr for QuotaPeriod {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "day" => Ok(Self::Day),
            "month" => Ok(Self::Month),
            _ => Err(PolicyError::QuotaOutOfRange),
        }
    }
}

impl fmt::Display for QuotaPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One calendar day or month: `[start, end)` in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    start: u64,
    end: u64,
}

impl Period {
    /// Its first second, since the Unix epoch.
    pub fn start_secs(&self) -> u64 {
        self.start
    }

    /// The first second after it, since the Unix epoch.
    pub fn end_secs(&self) -> u64 {
        self.end
    }

    /// Its first instant.
    pub fn start(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.start)
    }

    /// The first instant after it.
    pub fn end(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.end)
    }

    /// Whether the second `secs` (since the Unix epoch) lies in the period.
    pub(crate) fn holds(&self, secs: u64) -> bool {
        (self.start..self.end).contains(&secs)
    }

    /// Whether it is a period of `kind` (a day is 86,400 s; a month, 28 days or more).
    pub(crate) fn is_of(&self, kind: QuotaPeriod) -> bool {
        (self.end - self.start == 86_400) == (kind == QuotaPeriod::Day)
    }

    /// Whole seconds from `now` until the period ends, rounded up (at least 1): what a
    /// refused client is told to wait.
    pub fn seconds_left(&self, now: SystemTime) -> u64 {
        let left = self.end().duration_since(now).unwrap_or(Duration::ZERO);
        (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1)
    }
}

/// How many requests a key may have accepted per calendar [`QuotaPeriod`] (UTC). Requests
/// the layer refuses (rate limited, over the quota, expired) don't count.
///
/// Unlike a [`RateLimit`](super::RateLimit), a quota doesn't refill gradually: the whole
/// allowance comes back when the next period begins.
///
/// ```
/// use tower_api_key::policy::{Quota, QuotaPeriod};
///
/// let quota = Quota::new(10_000, QuotaPeriod::Month)?;
/// assert_eq!(quota.requests(), 10_000);
/// assert!(Quota::new(0, QuotaPeriod::Day).is_err());
/// # Ok::<(), tower_api_key::policy::PolicyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    requests: u32,
    period: QuotaPeriod,
}

impl Quota {
    /// Most requests a quota may allow per period.
    pub const MAX_REQUESTS: u32 = 1_000_000_000;

    /// `requests` (1 to 1,000,000,000) per `period`.
    ///
    /// # Errors
    ///
    /// [`PolicyError::QuotaOutOfRange`] outside that range.
    pub fn new(requests: u32, period: QuotaPeriod) -> Result<Self, PolicyError> {
        if (1..=Self::MAX_REQUESTS).contains(&requests) {
            Ok(Self { requests, period })
        } else {
            Err(PolicyError::QuotaOutOfRange)
        }
    }

    /// Requests allowed per period.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// The calendar period counted over.
    pub fn period(&self) -> QuotaPeriod {
        self.period
    }

    /// Whether `self` allows no more than `other`: as many requests or fewer, over the same
    /// period.
    pub fn is_within(&self, other: &Quota) -> bool {
        self.period == other.period && self.requests <= other.requests
    }
}

/// Year, month (1–12) and day (1–31) of the `days`-th day after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to `year-month-day` (the inverse of [`civil_from_days`]).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn days_run_from_midnight_to_midnight_utc() {
        // 2026-12-05T06:41:00Z
        let period = QuotaPeriod::Day.containing(at(1_796_452_860));
        assert_eq!(period.start_secs(), 1_796_428_800); // 2026-12-05T00:00:00Z
        assert_eq!(period.end_secs(), 1_796_515_200);
        // The last second of a day is in it; the next is not.
        assert_eq!(QuotaPeriod::Day.containing(at(1_796_515_199)), period);
        assert_ne!(QuotaPeriod::Day.containing(at(1_796_515_200)), period);
    }

    #[test]
    fn months_run_from_the_first_to_the_first() {
        // 2026-12-05 → [2026-12-01, 2027-01-01)
        let december = QuotaPeriod::Month.containing(at(1_796_452_860));
        assert_eq!(december.start_secs(), 1_796_083_200);
        assert_eq!(december.end_secs(), 1_798_761_600);
        // 2024-02-29 (a leap day) → [2024-02-01, 2024-03-01)
        let february = QuotaPeriod::Month.containing(at(1_709_164_800));
        assert_eq!(february.start_secs(), 1_706_745_600);
        assert_eq!(february.end_secs(), 1_709_251_200);
        // The epoch's month, and an instant before it.
        assert_eq!(QuotaPeriod::Month.containing(UNIX_EPOCH).start_secs(), 0);
        assert_eq!(
            QuotaPeriod::Month.containing(UNIX_EPOCH).end_secs(),
            31 * 86_400
        );
    }

    #[test]
    fn civil_dates_round_trip_over_four_centuries() {
        for days in (0..146_097 * 3).step_by(17) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d));
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
    }

    #[test]
    fn a_period_knows_its_kind_and_its_seconds() {
        // 2026-02-01: a day and a month that start together.
        let (day, month) = (
            QuotaPeriod::Day.containing(at(1_769_904_000)),
            QuotaPeriod::Month.containing(at(1_769_904_000)),
        );
        assert_eq!(day.start_secs(), month.start_secs());
        assert!(day.is_of(QuotaPeriod::Day) && !day.is_of(QuotaPeriod::Month));
        assert!(month.is_of(QuotaPeriod::Month) && !month.is_of(QuotaPeriod::Day));
        assert!(day.holds(day.start_secs()) && day.holds(day.end_secs() - 1));
        assert!(!day.holds(day.end_secs()) && !day.holds(day.start_secs() - 1));
    }

    #[test]
    fn seconds_left_round_up_and_are_at_least_one() {
        let period = QuotaPeriod::Day.containing(at(86_400));
        assert_eq!(period.seconds_left(at(86_400)), 86_400);
        assert_eq!(
            period.seconds_left(at(2 * 86_400 - 1) + Duration::from_millis(1)),
            1
        );
        assert_eq!(period.seconds_left(at(3 * 86_400)), 1);
    }

    #[test]
    fn quotas_allow_one_to_a_billion_requests() {
        assert!(Quota::new(1, QuotaPeriod::Day).is_ok());
        assert!(Quota::new(Quota::MAX_REQUESTS, QuotaPeriod::Month).is_ok());
        assert_eq!(
            Quota::new(0, QuotaPeriod::Day),
            Err(PolicyError::QuotaOutOfRange)
        );
        assert_eq!(
            Quota::new(Quota::MAX_REQUESTS + 1, QuotaPeriod::Day),
            Err(PolicyError::QuotaOutOfRange)
        );
        let day = Quota::new(10, QuotaPeriod::Day).expect("valid");
        let more = Quota::new(11, QuotaPeriod::Day).expect("valid");
        let month = Quota::new(10, QuotaPeriod::Month).expect("valid");
        assert!(day.is_within(&more) && !more.is_within(&day));
        assert!(!day.is_within(&month) && !month.is_within(&day));
    }
}
