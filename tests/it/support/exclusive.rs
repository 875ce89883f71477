//! One lock for the tests that must not run beside each other.
//!
//! libtest runs as many tests at once as there are cores. A test that bounds a latency (a
//! change reaching another process within a second, a shed request answered within 300 ms)
//! can miss its bound when a test that keeps every core busy runs beside it: the bound then
//! fails by scheduling alone. So each test of either kind holds [`exclusive`] throughout: none
//! of them overlaps another of them. Tests of neither kind still run beside them. In
//! `tests/serial`, every test holds it.

use tokio::sync::{Mutex, MutexGuard};

static EXCLUSIVE: Mutex<()> = Mutex::const_new(());

/// Waits until no other test holding this lock runs, and keeps it so while the guard lives.
pub(crate) async fn exclusive() -> MutexGuard<'static, ()> {
    EXCLUSIVE.lock().await
}
