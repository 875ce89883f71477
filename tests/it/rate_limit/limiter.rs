//! The layer's side of the [`RateLimiter`] contract: a verdict given later (a shared backend)
//! is awaited, and a limiter that can't answer lets requests through or refuses them, as the
//! layer's policy says, counting each failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::join_all;
use tower_api_key::RateLimit;
use tower_api_key::rate_limit::{
    Acquire, BudgetKey, LimiterFailure, LocalLimiter, RateLimiter, Verdict,
};

use super::app::{App, limit};

/// Answers later what a [`LocalLimiter`] answers now, or `Unavailable` while `down`.
#[derive(Clone, Default)]
struct Remote {
    budgets: LocalLimiter,
    down: Arc<AtomicBool>,
}

impl RateLimiter for Remote {
    fn acquire(&self, key: BudgetKey, limit: RateLimit) -> Acquire {
        let verdict = if self.down.load(Ordering::SeqCst) {
            Verdict::Unavailable
        } else {
            match self.budgets.acquire(key, limit) {
                Acquire::Ready(verdict) => verdict,
                Acquire::Pending(_) => unreachable!("a LocalLimiter answers at once"),
            }
        };
        Acquire::Pending(Box::pin(async move {
            tokio::task::yield_now().await;
            verdict
        }))
    }
}

#[tokio::test]
async fn verdicts_given_later_are_awaited_with_the_same_answers() {
    let remote = Remote::default();
    let app = App::start_with(|builder| builder.rate_limiter(remote.clone())).await;
    let key = app.key(Some(limit(5, 3600))).await;
    let answers = join_all((0..12).map(|_| app.ping(&key))).await;
    let ok: Vec<_> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(ok.len(), 5);
    assert_eq!(answers.iter().filter(|a| a.status == 429).count(), 7);
    assert!(ok.iter().all(|a| a.headers.contains_key("ratelimit")));
    assert_eq!(app.served(), 5);
    assert_eq!(app.uses(), 5);
}

#[tokio::test]
async fn a_failed_limiter_lets_requests_through_by_default_and_counts_the_failures() {
    let remote = Remote::default();
    remote.down.store(true, Ordering::SeqCst);
    let app = App::start_with(|builder| builder.rate_limiter(remote.clone())).await;
    let key = app.key(Some(limit(1, 3600))).await;
    for _ in 0..3 {
        let answer = app.ping(&key).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(!answer.headers.contains_key("ratelimit"), "no budget known");
    }
    assert_eq!(app.layer.metrics().rate_limiter_failures, 3);

    // Back up: limited again, from a fresh budget.
    remote.down.store(false, Ordering::SeqCst);
    assert_eq!(app.ping(&key).await.status, 200);
    assert_eq!(app.ping(&key).await.status, 429);
}

#[tokio::test]
async fn a_failed_limiter_refuses_with_503_when_the_policy_says_so() {
    let remote = Remote::default();
    remote.down.store(true, Ordering::SeqCst);
    let app = App::start_with(|builder| {
        builder
            .rate_limiter(remote.clone())
            .on_limiter_failure(LimiterFailure::Refuse)
    })
    .await;
    let key = app.key(Some(limit(1, 3600))).await;
    let unlimited = app.key(None).await;
    let answer = app.ping(&key).await;
    assert_eq!(answer.status, 503);
    assert!(answer.headers.contains_key("retry-after"));
    assert_eq!(app.served(), 0);
    assert_eq!(
        app.ping(&unlimited).await.status,
        200,
        "unlimited keys don't ask"
    );
    let metrics = app.layer.metrics();
    assert_eq!(metrics.rate_limiter_failures, 1);
    assert_eq!(metrics.unavailable, 1);
}
