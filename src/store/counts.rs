//! What a store keeps of usage: hours, the counts added to them, and the rows read back.
//! Their one public path is [`crate::usage`]; the [`KeyStore`](super::KeyStore) trait speaks in
//! them, so they live beside it.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{AccountId, KeyId, KeyUse};
use crate::policy::Period;

/// One hour of UTC time, as hours since the Unix epoch: the unit usage is counted in.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_api_key::usage::Hour;
///
/// let hour = Hour::containing(UNIX_EPOCH + Duration::from_secs(3 * 3600 + 59));
/// assert_eq!(hour.index(), 3);
/// assert_eq!(hour.start(), UNIX_EPOCH + Duration::from_secs(3 * 3600));
/// assert_eq!(hour.next().index(), 4);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hour(u32);

/// Seconds in an hour.
const HOUR_SECS: u64 = 3600;

impl Hour {
    /// The hour with this many hours since the Unix epoch.
    pub const fn from_index(index: u32) -> Self {
        Self(index)
    }

    /// The hour `at` falls in (the first hour for times before 1970).
    pub fn containing(at: SystemTime) -> Self {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        Self(u32::try_from(secs / HOUR_SECS).unwrap_or(u32::MAX))
    }

    /// The hour a Unix time in milliseconds falls in.
    #[inline]
    pub(crate) fn of_millis(ms: u64) -> Self {
        Self(u32::try_from(ms / (HOUR_SECS * 1000)).unwrap_or(u32::MAX))
    }

    /// The hours of a quota's `period`, as usage counts them.
    pub(crate) fn covering(period: Period) -> Range<Hour> {
        Self::containing(period.start())..Self::containing(period.end())
    }

    /// Hours since the Unix epoch.
    pub const fn index(self) -> u32 {
        self.0
    }

    /// When the hour starts.
    pub fn start(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::from(self.0) * HOUR_SECS)
    }

    /// The hour after this one.
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }

    /// `hours` hours earlier (the first hour at the latest).
    #[must_use]
    pub const fn earlier(self, hours: u32) -> Self {
        Self(self.0.saturating_sub(hours))
    }
}

impl fmt::Debug for Hour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hour({})", self.0)
    }
}

/// Requests counted for one key, or one account, in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounts {
    /// Let in.
    pub accepted: u64,
    /// Refused with 429.
    pub rate_limited: u64,
    /// Refused for the key's policy: 403 for a scope it lacks, 401 for its expiry.
    pub refused: u64,
}

impl UsageCounts {
    /// All requests counted: accepted, rate limited and refused.
    pub fn total(&self) -> u64 {
        self.accepted
            .saturating_add(self.rate_limited)
            .saturating_add(self.refused)
    }

    /// Adds `other` to these counts (saturating).
    pub fn add(&mut self, other: UsageCounts) {
        self.accepted = self.accepted.saturating_add(other.accepted);
        self.rate_limited = self.rate_limited.saturating_add(other.rate_limited);
        self.refused = self.refused.saturating_add(other.refused);
    }
}

/// What one flush adds to one key's hour.
///
/// Signed: a request the key layer let in and [`RequireScopeLayer`](crate::RequireScopeLayer)
/// then refused moves from `accepted` to `refused`, and when a flush falls between the two, the
/// second flush carries `accepted: -1`. A store adds the numbers as they are; the sums of an
/// hour are never negative once both flushes are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The key's account (kept with the counts: an account's totals include deleted keys).
    pub account_id: AccountId,
    /// The key.
    pub key_id: KeyId,
    /// The hour the requests fell in.
    pub hour: Hour,
    /// Added to the hour's accepted requests.
    pub accepted: i64,
    /// Added to the hour's rate-limited requests.
    pub rate_limited: i64,
    /// Added to the hour's refused requests.
    pub refused: i64,
}

/// One flush's writes, for [`KeyStore::record_usage`](crate::KeyStore::record_usage).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageBatch {
    /// The latest use of each key and prefix: `last_used_at` moves forward only, and a use
    /// of a prefix the key no longer has (it was rotated since) or of a deleted key is dropped.
    pub last_used: Vec<KeyUse>,
    /// Counts to add, at most one per key and hour. Unlike `last_used_at`, they are kept for
    /// deleted keys, until they are older than the retention.
    pub counts: Vec<UsageDelta>,
}

impl UsageBatch {
    /// A batch of uses only, no counts.
    pub fn last_used(uses: impl Into<Vec<KeyUse>>) -> Self {
        Self {
            last_used: uses.into(),
            counts: Vec::new(),
        }
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty() && self.counts.is_empty()
    }
}

/// One key's counts in one hour, as a store reads them back
/// ([`KeyStore::usage`](crate::KeyStore::usage)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRow {
    /// The key (possibly deleted since).
    pub key_id: KeyId,
    /// The hour.
    pub hour: Hour,
    /// Its requests; a stored sum below zero (see [`UsageDelta`]) reads as zero.
    pub counts: UsageCounts,
}

impl UsageRow {
    /// A row from the signed sums a store keeps, each read as zero if below it.
    pub fn from_sums(
        key_id: KeyId,
        hour: Hour,
        accepted: i64,
        rate_limited: i64,
        refused: i64,
    ) -> Self {
        let count = |sum: i64| u64::try_from(sum).unwrap_or(0);
        Self {
            key_id,
            hour,
            counts: UsageCounts {
                accepted: count(accepted),
                rate_limited: count(rate_limited),
                refused: count(refused),
            },
        }
    }
}
