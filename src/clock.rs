//! The crate's one clock for records: now, at the microsecond precision every store keeps,
//! so a time written and read back is the time that was given.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current time, to the microsecond.
pub(crate) fn now() -> SystemTime {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH + Duration::from_micros(since_epoch.as_micros().try_into().unwrap_or(u64::MAX))
}
