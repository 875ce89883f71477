//! Usage read back: a range of hourly or daily buckets, and the series that fills it.

use std::fmt;
use std::time::SystemTime;

use super::{Hour, UsageCounts, UsageRow};

/// The most buckets one [`UsageRange`] may hold.
pub const MAX_BUCKETS: u32 = 1_000;

/// The size of a usage bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One UTC hour.
    Hour,
    /// One UTC day (midnight to midnight).
    Day,
}

impl Granularity {
    /// Hours in one bucket.
    pub const fn hours(self) -> u32 {
        match self {
            Self::Hour => 1,
            Self::Day => 24,
        }
    }

    /// `"hour"` or `"day"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    /// Buckets in the default range: 48 hours, or 30 days.
    pub const fn default_buckets(self) -> u32 {
        match self {
            Self::Hour => 48,
            Self::Day => 30,
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which buckets a usage query covers: every bucket of one [`Granularity`] that starts in
/// `[from, to)`, after `from` is rounded down to the start of its bucket.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_api_key::usage::{Granularity, UsageRange};
///
/// let hour = Duration::from_secs(3600);
/// let day = UNIX_EPOCH + 20_000 * 24 * hour; // a midnight, UTC
/// // From 01:30 to 03:00: the buckets of 01:00 and 02:00.
/// let range = UsageRange::new(Granularity::Hour, day + hour + hour / 2, day + 3 * hour)?;
/// assert_eq!(range.len(), 2);
/// assert_eq!(range.from(), day + hour);
/// // The default: the last 48 hours, the current one included.
/// assert_eq!(UsageRange::last(Granularity::Hour, day).len(), 48);
/// # Ok::<(), tower_api_key::usage::InvalidUsageRange>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRange {
    granularity: Granularity,
    /// The first bucket's first hour.
    first: Hour,
    /// How many buckets (1 to [`MAX_BUCKETS`]).
    buckets: u32,
}

/// Why a [`UsageRange`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidUsageRange {
    /// `from` is not before `to`.
    Empty,
    /// More than [`MAX_BUCKETS`] buckets.
    TooManyBuckets,
}

impl fmt::Display for InvalidUsageRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("from must be before to"),
            Self::TooManyBuckets => write!(f, "a usage range holds at most {MAX_BUCKETS} buckets"),
        }
    }
}

impl std::error::Error for InvalidUsageRange {}

impl UsageRange {
    /// The buckets of `granularity` that start in `[from, to)`, `from` rounded down to its
    /// bucket's start.
    ///
    /// # Errors
    ///
    /// [`InvalidUsageRange::Empty`] unless `from < to` and a bucket starts before `to` (none
    /// does before 1970); [`InvalidUsageRange::TooManyBuckets`] past [`MAX_BUCKETS`] buckets.
    pub fn new(
        granularity: Granularity,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Self, InvalidUsageRange> {
        if from >= to {
            return Err(InvalidUsageRange::Empty);
        }
        let size = granularity.hours();
        let first = Hour::containing(from).index() / size * size;
        let end = Hour::containing(to);
        // Buckets whose start is before `to`: up to the hour `to` falls in, and that hour's
        // bucket too if `to` is past the bucket's start.
        let mut end_hours = end.index();
        if end.start() < to {
            end_hours = end_hours.saturating_add(1);
        }
        let buckets = end_hours.saturating_sub(first).div_ceil(size);
        if buckets > MAX_BUCKETS {
            return Err(InvalidUsageRange::TooManyBuckets);
        }
        if buckets == 0 {
            // Only before 1970, where no bucket starts.
            return Err(InvalidUsageRange::Empty);
        }
        Ok(Self {
            granularity,
            first: Hour::from_index(first),
            buckets,
        })
    }

    /// The default range ending with the bucket `now` falls in: the last 48 hours, or the
    /// last 30 days (UTC).
    pub fn last(granularity: Granularity, now: SystemTime) -> Self {
        Self::ending_at(granularity, granularity.default_buckets(), now)
    }

    /// The last `buckets` buckets (1 to [`MAX_BUCKETS`]) of `granularity`, the one `now`
    /// falls in included (fewer if they would start before 1970).
    pub fn ending_at(granularity: Granularity, buckets: u32, now: SystemTime) -> Self {
        let size = granularity.hours();
        let current = Hour::containing(now).index() / size * size;
        // No bucket before 1970: fewer near it, rather than buckets after `now`'s.
        let buckets = buckets.clamp(1, MAX_BUCKETS).min(current / size + 1);
        Self {
            granularity,
            first: Hour::from_index(current - (buckets - 1) * size),
            buckets,
        }
    }

    /// The size of its buckets.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// How many buckets it holds: at least one (an empty range can't be built).
    #[allow(clippy::len_without_is_empty)] // it would always answer false
    pub fn len(&self) -> usize {
        self.buckets as usize
    }

    /// When its first bucket starts.
    pub fn from(&self) -> SystemTime {
        self.first.start()
    }

    /// When its last bucket ends.
    pub fn to(&self) -> SystemTime {
        self.end_hour().start()
    }

    /// Its first hour.
    pub fn first_hour(&self) -> Hour {
        self.first
    }

    /// The hour after its last one.
    pub fn end_hour(&self) -> Hour {
        Hour::from_index(
            self.first
                .index()
                .saturating_add(self.buckets * self.granularity.hours()),
        )
    }

    /// Which bucket `hour` falls in, if any.
    fn bucket_of(&self, hour: Hour) -> Option<usize> {
        let offset = hour.index().checked_sub(self.first.index())?;
        let bucket = offset / self.granularity.hours();
        (bucket < self.buckets).then_some(bucket as usize)
    }
}

/// Request counts in consecutive buckets, oldest first, zeros included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSeries {
    /// The size of each bucket.
    pub granularity: Granularity,
    /// Every bucket of the range asked for.
    pub buckets: Vec<UsageBucket>,
}

/// One bucket of a [`UsageSeries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageBucket {
    /// When the bucket starts.
    pub start: SystemTime,
    /// Its requests.
    pub counts: UsageCounts,
}

impl UsageSeries {
    /// Every bucket of `range`, with the hourly `rows` that fall in it added up; rows
    /// outside the range are ignored.
    pub fn from_rows(range: &UsageRange, rows: impl IntoIterator<Item = UsageRow>) -> Self {
        let size = range.granularity.hours();
        let mut buckets: Vec<UsageBucket> = (0..range.buckets)
            .map(|bucket| UsageBucket {
                start: Hour::from_index(range.first.index() + bucket * size).start(),
                counts: UsageCounts::default(),
            })
            .collect();
        for row in rows {
            if let Some(bucket) = range.bucket_of(row.hour) {
                buckets[bucket].counts.add(row.counts);
            }
        }
        Self {
            granularity: range.granularity,
            buckets,
        }
    }

    /// The sum of every bucket.
    pub fn total(&self) -> UsageCounts {
        let mut total = UsageCounts::default();
        for bucket in &self.buckets {
            total.add(bucket.counts);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::store::KeyId;

    const HOUR: Duration = Duration::from_secs(3600);

    fn midnight() -> SystemTime {
        UNIX_EPOCH + 20_000 * 24 * HOUR
    }

    #[test]
    fn a_range_covers_the_buckets_starting_in_it() {
        let day = midnight();
        let range = UsageRange::new(Granularity::Hour, day, day + 3 * HOUR).expect("valid");
        assert_eq!(
            (range.len(), range.from(), range.to()),
            (3, day, day + 3 * HOUR)
        );
        // `to` just past an hour's start takes that hour in.
        let range = UsageRange::new(
            Granularity::Hour,
            day,
            day + 3 * HOUR + Duration::from_secs(1),
        )
        .expect("valid");
        assert_eq!(range.len(), 4);
        // Days: from 23:00 of one day to 01:00 two days later is three days.
        let range = UsageRange::new(Granularity::Day, day - HOUR, day + 25 * HOUR).expect("valid");
        assert_eq!((range.len(), range.from()), (3, day - 24 * HOUR));
    }

    #[test]
    fn empty_and_oversized_ranges_are_refused() {
        let day = midnight();
        // Before 1970 no bucket starts.
        let before = UNIX_EPOCH - 3 * HOUR;
        assert_eq!(
            UsageRange::new(Granularity::Hour, before, before + HOUR),
            Err(InvalidUsageRange::Empty)
        );
        assert_eq!(
            UsageRange::new(Granularity::Hour, day, day),
            Err(InvalidUsageRange::Empty)
        );
        assert_eq!(
            UsageRange::new(Granularity::Hour, day + HOUR, day),
            Err(InvalidUsageRange::Empty)
        );
        assert!(UsageRange::new(Granularity::Hour, day, day + 1000 * HOUR).is_ok());
        assert_eq!(
            UsageRange::new(Granularity::Hour, day, day + 1001 * HOUR),
            Err(InvalidUsageRange::TooManyBuckets)
        );
        assert!(UsageRange::new(Granularity::Day, day, day + 1000 * 24 * HOUR).is_ok());
        assert_eq!(
            UsageRange::new(Granularity::Day, day, day + 1001 * 24 * HOUR),
            Err(InvalidUsageRange::TooManyBuckets)
        );
    }

    #[test]
    fn the_default_ranges_end_with_the_current_bucket() {
        let now = midnight() + 5 * HOUR + Duration::from_secs(17);
        let hours = UsageRange::last(Granularity::Hour, now);
        assert_eq!(hours.len(), 48);
        assert_eq!(hours.to(), midnight() + 6 * HOUR);
        let days = UsageRange::last(Granularity::Day, now);
        assert_eq!(days.len(), 30);
        assert_eq!(days.to(), midnight() + 24 * HOUR);
        assert_eq!(days.from(), midnight() - 29 * 24 * HOUR);
    }

    #[test]
    fn the_last_buckets_near_1970_end_with_the_current_one() {
        let now = UNIX_EPOCH + 5 * HOUR + Duration::from_secs(17);
        let hours = UsageRange::last(Granularity::Hour, now);
        assert_eq!((hours.len(), hours.from()), (6, UNIX_EPOCH));
        assert_eq!(hours.to(), UNIX_EPOCH + 6 * HOUR);
        let days = UsageRange::ending_at(Granularity::Day, 30, UNIX_EPOCH + 50 * HOUR);
        assert_eq!((days.len(), days.from()), (3, UNIX_EPOCH));
        assert_eq!(days.to(), UNIX_EPOCH + 72 * HOUR);
        let first = UsageRange::last(Granularity::Day, UNIX_EPOCH - HOUR);
        assert_eq!((first.len(), first.to()), (1, UNIX_EPOCH + 24 * HOUR));
    }

    #[test]
    fn a_series_adds_rows_into_their_buckets_and_keeps_zeros() {
        let day = midnight();
        let range = UsageRange::new(Granularity::Day, day, day + 48 * HOUR).expect("valid");
        let key = KeyId::random();
        let at = |hours: u32| Hour::containing(day).index() + hours;
        let rows = [
            UsageRow::from_sums(key, Hour::from_index(at(1)), 2, 1, 0),
            UsageRow::from_sums(key, Hour::from_index(at(23)), 3, 0, 1),
            UsageRow::from_sums(KeyId::random(), Hour::from_index(at(30)), -1, 0, 1),
            // Outside the range: ignored.
            UsageRow::from_sums(key, Hour::from_index(at(48)), 100, 0, 0),
        ];
        let series = UsageSeries::from_rows(&range, rows);
        assert_eq!(series.buckets.len(), 2);
        assert_eq!(series.buckets[0].start, day);
        assert_eq!(
            series.buckets[0].counts,
            UsageCounts {
                accepted: 5,
                rate_limited: 1,
                refused: 1
            }
        );
        assert_eq!(
            series.buckets[1].counts,
            UsageCounts {
                accepted: 0,
                rate_limited: 0,
                refused: 1
            }
        );
        assert_eq!(series.total().total(), 8);
    }
}
