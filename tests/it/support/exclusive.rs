//! One lock for the tests that must not run beside each other.
//!
//! libtest runs as many tests at once as there are cores. A test that keeps every core busy
//! (the cache races, the property tests) slows whatever runs beside it, and two of them at once
//! slow each other most. No test asserts a duration (a bound on a latency can fail by
//! scheduling alone: tests count, and wait for conditions within generous bounds), so this is
//! about the suite's pace, not its verdicts: each such test holds [`exclusive`] throughout, and
//! none of them overlaps another. Tests that don't take it still run beside them. In
//! `tests/serial`, every test holds it.

use tokio::sync::{Mutex, MutexGuard};

static EXCLUSIVE: Mutex<()> = Mutex::const_new(());

/// Waits until no other test holding this lock runs, and keeps it so while the guard lives.
pub(crate) async fn exclusive() -> MutexGuard<'static, ()> {
    EXCLUSIVE.lock().await
}
