//! Waiting for a condition, never for a time: a test that must wait polls what it waits for,
//! with a bound generous enough that only a broken promise misses it.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a condition may take before the test fails: thousands of times what any of them
/// takes on a quiet machine, so a loaded one can't miss it by scheduling alone.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(10);

/// Checks `condition` every 10 ms until it holds; fails the test, naming `what`, if it still
/// doesn't after [`PATIENCE`].
pub(crate) async fn until<F>(what: &str, condition: impl FnMut() -> F)
where
    F: Future<Output = bool>,
{
    until_within(PATIENCE, what, condition).await;
}

/// [`until`] with a bound of its own, for a test whose bound means something (shorter than a
/// cache entry's life, say).
pub(crate) async fn until_within<F>(bound: Duration, what: &str, mut condition: impl FnMut() -> F)
where
    F: Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    while !condition().await {
        assert!(Instant::now() < deadline, "waited {bound:?} for {what}");
        tokio::time::sleep(POLL).await;
    }
}
