//! The usage routes' query (`granularity`, `from`, `to`, read strictly) and answer
//! (`{"key_id"?, "granularity", "buckets": [...]}`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::json::{BadTime, read_rfc3339, rfc3339_seconds};
use super::query::params;
use crate::policy;
use crate::store::KeyId;
use crate::usage::{Granularity, InvalidUsageRange, MAX_BUCKETS, UsageRange, UsageSeries};

/// The parameters a usage query may carry.
const PARAMETERS: [&str; 3] = ["granularity", "from", "to"];

/// Reads a usage route's query string (`None` when the URI has none) into the range it asks
/// for, `now` being the default range's end:
///
/// - `granularity`: `hour` (default) or `day`;
/// - `from` and `to`: the buckets starting in `[from, to)`, `from` rounded down to its bucket;
/// - neither: the default range ([`UsageRange::last`]), the current bucket included;
/// - only `from`: the default number of buckets (48 hours, 30 days) from `from`'s bucket on
///   (fewer if they would start after 9999);
/// - only `to`: the default number of buckets that start before `to` (fewer if they would
///   start before 1970).
///
/// Each parameter may appear once; any other is refused, as is a bad value, `from ≥ to` and
/// more than [`MAX_BUCKETS`] buckets: 400, naming the parameter.
pub(crate) fn range_of(query: Option<&str>, now: SystemTime) -> Result<UsageRange, ApiError> {
    let given = params(query, PARAMETERS)?;
    let [granularity, from, to] = given;
    let granularity = match granularity.as_deref() {
        None | Some("hour") => Granularity::Hour,
        Some("day") => Granularity::Day,
        Some(_) => return Err(ApiError::bad_request("granularity must be hour or day")),
    };
    let from = from.map(|text| time("from", &text)).transpose()?;
    let to = to.map(|text| time("to", &text)).transpose()?;
    let bucket = Duration::from_secs(u64::from(granularity.hours()) * 3600);
    let span = bucket * granularity.default_buckets();
    let range = match (from, to) {
        (None, None) => return Ok(UsageRange::last(granularity, now)),
        (Some(from), Some(to)) => UsageRange::new(granularity, from, to),
        (Some(from), None) => {
            let first = bucket_start(granularity, from);
            // Buckets that start by the last time a query may name (fewer near 9999): none
            // after it, whose start couldn't be written back. `first` is an hour's start, so
            // before that second, and the range is never empty.
            let latest = UNIX_EPOCH + Duration::from_secs(policy::LATEST_TIME_SECS);
            UsageRange::new(granularity, first, (first + span).min(latest))
        }
        (None, Some(to)) => {
            // The bucket holding the instant just before `to` is the last that starts before it.
            let before = to
                .checked_sub(Duration::from_nanos(1))
                .filter(|before| *before >= UNIX_EPOCH)
                .ok_or_else(|| ApiError::bad_request("to must be after 1970-01-01T00:00:00Z"))?;
            let last = bucket_start(granularity, before);
            let first = last
                .checked_sub(span - bucket)
                .filter(|first| *first >= UNIX_EPOCH)
                .unwrap_or(UNIX_EPOCH);
            UsageRange::new(granularity, first, to)
        }
    };
    range.map_err(|err| match err {
        InvalidUsageRange::TooManyBuckets => ApiError::bad_request(format!(
            "from and to span more than {MAX_BUCKETS} buckets of one {granularity}"
        )),
        // `Empty`: from ≥ to.
        _ => ApiError::bad_request("from must be before to"),
    })
}

/// The start of the bucket `at` falls in.
fn bucket_start(granularity: Granularity, at: SystemTime) -> SystemTime {
    UsageRange::ending_at(granularity, 1, at).from()
}

/// The query's `field` as a time, or a 400 naming it.
fn time(field: &str, text: &str) -> Result<SystemTime, ApiError> {
    read_rfc3339(text).map_err(|err| {
        ApiError::bad_request(match err {
            BadTime::Format => {
                format!("{field} must be an RFC 3339 time such as 2026-12-05T00:00:00Z")
            }
            BadTime::OutOfRange => {
                format!("{field} must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
            }
        })
    })
}

// ===== answers =====

/// A usage answer: `key_id` for one key's, absent for an account's.
#[derive(Serialize, ToSchema)]
#[schema(as = Usage)]
pub(crate) struct UsageView {
    /// The key's id, in a key's usage only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false, format = "uuid")]
    key_id: Option<String>,
    #[schema(value_type = super::schema::UsageGranularity)]
    granularity: &'static str,
    /// Every bucket of the range, oldest first, zeros included.
    buckets: Vec<BucketView>,
}

/// One bucket: when it starts and its counts.
#[derive(Serialize, ToSchema)]
#[schema(as = UsageBucket)]
struct BucketView {
    #[schema(format = DateTime)]
    start: String,
    accepted: u64,
    rate_limited: u64,
    refused: u64,
}

impl UsageView {
    /// The answer for `series`, of key `key` if given.
    pub(crate) fn new(key: Option<KeyId>, series: &UsageSeries) -> Self {
        Self {
            key_id: key.map(|id| id.to_string()),
            granularity: series.granularity.as_str(),
            buckets: series
                .buckets
                .iter()
                .map(|bucket| BucketView {
                    start: rfc3339_seconds(bucket.start),
                    accepted: bucket.counts.accepted,
                    rate_limited: bucket.counts.rate_limited,
                    refused: bucket.counts.refused,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(text: &str) -> SystemTime {
        read_rfc3339(text).expect("a valid time")
    }

    fn error(query: &str) -> String {
        let err = range_of(Some(query), at("2026-12-05T10:30:00Z")).expect_err(query);
        format!("{err:?}")
    }

    #[test]
    fn the_defaults_end_with_the_current_bucket() {
        let now = at("2026-12-05T10:30:00Z");
        let hours = range_of(None, now).expect("valid");
        assert_eq!((hours.len(), hours.to()), (48, at("2026-12-05T11:00:00Z")));
        let days = range_of(Some("granularity=day"), now).expect("valid");
        assert_eq!((days.len(), days.to()), (30, at("2026-12-06T00:00:00Z")));
        assert_eq!(
            range_of(Some(""), now).expect("valid"),
            range_of(None, now).expect("valid")
        );
    }

    #[test]
    fn one_bound_takes_the_default_length_from_it() {
        let now = at("2026-12-05T10:30:00Z");
        let from = range_of(Some("from=2026-01-01T05:30:00Z"), now).expect("valid");
        assert_eq!((from.len(), from.from()), (48, at("2026-01-01T05:00:00Z")));
        let to = range_of(Some("to=2026-01-03T05:30:00Z"), now).expect("valid");
        assert_eq!((to.len(), to.to()), (48, at("2026-01-03T06:00:00Z")));
        let to = range_of(Some("to=2026-01-03T05:00:00Z"), now).expect("valid");
        assert_eq!((to.len(), to.to()), (48, at("2026-01-03T05:00:00Z")));
        let days = range_of(Some("granularity=day&to=2026-01-31T00:00:00Z"), now).expect("valid");
        assert_eq!((days.len(), days.from()), (30, at("2026-01-01T00:00:00Z")));
        // Near 1970: fewer buckets, none after `to`.
        let early = range_of(Some("to=1970-01-01T05:00:00Z"), now).expect("valid");
        assert_eq!((early.len(), early.from()), (5, UNIX_EPOCH));
        assert!(error("to=1970-01-01T00:00:00Z").contains("to must be after"));
    }

    #[test]
    fn only_from_near_9999_ends_with_the_last_bucket_that_starts_by_then() {
        let now = at("2026-12-05T10:30:00Z");
        let hours = range_of(Some("from=9999-12-31T00:00:00Z"), now).expect("valid");
        assert_eq!(
            (hours.len(), hours.to()),
            (24, at("9999-12-31T23:59:59Z") + Duration::from_secs(1))
        );
        let days = range_of(Some("granularity=day&from=9999-12-31T12:00:00Z"), now).expect("valid");
        assert_eq!((days.len(), days.from()), (1, at("9999-12-31T00:00:00Z")));
    }

    #[test]
    fn both_bounds_and_an_offset_in_percent_encoding() {
        let now = at("2026-12-05T10:30:00Z");
        let range = range_of(
            Some("from=2026-12-05T03%3A00%3A00%2B02%3A00&to=2026-12-05T04:00:00Z"),
            now,
        )
        .expect("valid");
        assert_eq!((range.len(), range.from()), (3, now - 9 * HOUR - HOUR / 2));
    }

    #[test]
    fn bad_queries_are_named() {
        for (query, says) in [
            ("granularity=week", "granularity must be hour or day"),
            ("from=yesterday", "from must be an RFC 3339 time"),
            ("to=2026-12-05", "to must be an RFC 3339 time"),
            ("from=0001-01-01T00:00:00Z", "from must lie between"),
            (
                "from=2026-12-05T00:00:00%2B01:00&to=2026-12-04T23:00:00Z",
                "from must be before to",
            ),
            (
                "from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z",
                "more than 1000 buckets",
            ),
            ("limit=5", "unknown query parameter \\\"limit\\\""),
            (
                "from=2026-01-01T00:00:00Z&from=2026-01-02T00:00:00Z",
                "from is given more than once",
            ),
            (
                "granularity=hour&granularity=hour",
                "granularity is given more than once",
            ),
            ("from=%ZZ", "from is not valid percent-encoding"),
            ("%FF=1", "not valid percent-encoding"),
            ("from", "from must be an RFC 3339 time"),
        ] {
            let err = error(query);
            assert!(err.contains(says), "{query}: {err}");
        }
        assert!(
            range_of(
                Some("granularity=day&from=2026-01-01T00:00:00Z&to=2028-09-27T00:00:00Z"),
                UNIX_EPOCH
            )
            .is_ok()
        );
    }
}
