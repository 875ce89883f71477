//! The one wait on the wall clock the tests allow: a test that counts requests against a
//! quota must not see its UTC day (or month, which turns at a midnight too) end halfway.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How close to midnight UTC a counting test waits for the next day instead of starting.
/// Longer than any such test takes (the slowest starts two servers and waits for flushes).
const MARGIN: Duration = Duration::from_secs(120);

/// If the UTC day ends within [`MARGIN`], waits until it has begun anew, so that every
/// request of the test counts against one day's (and one month's) quota. Otherwise returns at
/// once: the wait happens only in the two minutes before midnight.
pub(crate) async fn in_one_quota_period() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    let day = 86_400;
    let left = Duration::from_secs(day - now.as_secs() % day)
        - Duration::from_nanos(u64::from(now.subsec_nanos()));
    if left < MARGIN {
        eprintln!("waiting {left:?} for the UTC day to end, so that the quota counts one day");
        tokio::time::sleep(left + Duration::from_secs(1)).await;
    }
}
