//! Rate limits over HTTP, against a loopback axum server: the 429 answer and its fields, the
//! budget on allowed answers, what a refused request doesn't do, and limits changed at once.
//! The limits that refill run on a [`TestClock`]: the test moves time, it never sleeps.

use std::time::Duration;

use futures_util::future::join_all;
use tower_api_key::PolicyUpdate;

use super::app::{App, TestClock, limit, remaining_and_reset};
use crate::support::http::Answer;

#[tokio::test]
async fn twelve_requests_at_once_on_a_key_limited_to_5_per_2_seconds_get_5_answers_and_7_refusals()
{
    let clock = TestClock::default();
    let app = App::start_with(|builder| builder.rate_limiter(clock.limiter())).await;
    let key = app.key(Some(limit(5, 2))).await;
    let other = app.key(Some(limit(5, 2))).await;

    let answers = join_all((0..12).map(|_| app.ping(&key))).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!((ok, refused.len()), (5, 7));
    for answer in &refused {
        assert_eq!(answer.body, r#"{"error":"rate limit exceeded"}"#);
        assert_eq!(answer.content_type(), Some("application/json"));
        // The next request fits 0.4 s from now: whole seconds, rounded up.
        assert_eq!(answer.headers["retry-after"], "1");
        assert_eq!(answer.headers["ratelimit-policy"], r#""api-key";q=5;w=2"#);
        assert_eq!(remaining_and_reset(answer), (0, 2));
    }
    assert_eq!(app.served(), 5, "refused requests never reach the service");

    // Another key of the same account has a budget of its own.
    let answer = app.ping(&other).await;
    assert_eq!(answer.status, 200);
    assert_eq!(remaining_and_reset(&answer).0, 4);
}

#[tokio::test]
async fn a_spent_budget_refills_one_request_per_interval_and_wholly_after_the_window() {
    let clock = TestClock::default();
    let app = App::start_with(|builder| builder.rate_limiter(clock.limiter())).await;
    let key = app.key(Some(limit(5, 2))).await;
    let allowed = |answers: Vec<Answer>| answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(allowed(join_all((0..6).map(|_| app.ping(&key))).await), 5);

    // 5 per 2 s: one request back every 0.4 s.
    clock.advance(Duration::from_millis(399));
    assert_eq!(app.ping(&key).await.status, 429, "not before its interval");
    clock.advance(Duration::from_millis(1));
    assert_eq!(allowed(join_all((0..3).map(|_| app.ping(&key))).await), 1);

    // After the window the whole budget is back, and no more.
    clock.advance(Duration::from_secs(2));
    assert_eq!(allowed(join_all((0..8).map(|_| app.ping(&key))).await), 5);
}

#[tokio::test]
async fn allowed_answers_carry_the_budget_counting_down() {
    let clock = TestClock::default();
    let app = App::start_with(|builder| builder.rate_limiter(clock.limiter())).await;
    let key = app.key(Some(limit(3, 3600))).await;
    // Each spent request takes 1,200 s to refill.
    for expected in [2, 1, 0] {
        let answer = app.ping(&key).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "pong");
        assert_eq!(
            answer.headers["ratelimit-policy"],
            r#""api-key";q=3;w=3600"#
        );
        let spent = u64::from(3 - expected);
        assert_eq!(remaining_and_reset(&answer), (expected, spent * 1200));
    }
    let refused = app.ping(&key).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.headers["retry-after"], "1200");
    // Time passing brings `t` down by as much.
    clock.advance(Duration::from_secs(200));
    let refused = app.ping(&key).await;
    assert_eq!(refused.headers["retry-after"], "1000");
    assert_eq!(remaining_and_reset(&refused), (0, 3400));
}

#[tokio::test]
async fn refused_requests_are_not_served_nor_recorded_as_uses() {
    let app = App::start().await;
    let key = app.key(Some(limit(2, 3600))).await;
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(app.ping(&key).await.status.as_u16());
        }
        statuses
    };
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    assert_eq!(app.served(), 2);
    assert_eq!(app.uses(), 2, "only allowed requests count as uses");
    let metrics = app.layer.metrics();
    assert_eq!(metrics.accepted, 2);
    assert_eq!(metrics.rate_limited, 3);
    assert_eq!(
        metrics.cache_hits, 4,
        "the refusals came from the cache too"
    );
}

#[tokio::test]
async fn keys_without_a_limit_are_not_limited_and_answers_carry_no_budget() {
    let app = App::start().await;
    let key = app.key(None).await;
    for _ in 0..20 {
        let answer = app.ping(&key).await;
        assert_eq!(answer.status, 200);
        assert!(!answer.headers.contains_key("ratelimit"));
        assert!(!answer.headers.contains_key("ratelimit-policy"));
    }
}

#[tokio::test]
async fn the_layer_default_limits_keys_without_a_limit_of_their_own() {
    let app = App::start_with(|builder| builder.default_rate_limit(limit(2, 3600))).await;
    let plain = app.key(None).await;
    let own = app.key(Some(limit(4, 3600))).await;
    let allowed = |answers: Vec<Answer>| answers.iter().filter(|a| a.status == 200).count();
    let mut plain_answers = Vec::new();
    let mut own_answers = Vec::new();
    for _ in 0..6 {
        plain_answers.push(app.ping(&plain).await);
        own_answers.push(app.ping(&own).await);
    }
    assert_eq!(allowed(plain_answers), 2, "the default");
    assert_eq!(allowed(own_answers), 4, "the key's own limit wins");
}

#[tokio::test]
async fn a_limit_set_changed_or_cleared_through_the_manager_applies_at_once() {
    let app = App::start().await;
    let key = app.key(None).await;
    let id = app.manager.list(&app.account).await.expect("list")[0].id;
    assert_eq!(app.ping(&key).await.status, 200, "cached, unlimited");

    let update = PolicyUpdate::new().rate_limit(Some(limit(1, 3600)));
    let info = app
        .manager
        .update(&app.account, id, update)
        .await
        .expect("update");
    assert_eq!(info.rate_limit, Some(limit(1, 3600)));
    assert_eq!(app.ping(&key).await.status, 200);
    assert_eq!(app.ping(&key).await.status, 429, "limited at once");

    // Raised: the request already spent counts one for one against the new limit.
    let update = PolicyUpdate::new().rate_limit(Some(limit(3, 3600)));
    app.manager
        .update(&app.account, id, update)
        .await
        .expect("update");
    let answer = app.ping(&key).await;
    assert_eq!(answer.status, 200);
    assert_eq!(remaining_and_reset(&answer).0, 1);

    let update = PolicyUpdate::new().rate_limit(None);
    let info = app
        .manager
        .update(&app.account, id, update)
        .await
        .expect("update");
    assert_eq!(info.rate_limit, None);
    for _ in 0..5 {
        let answer = app.ping(&key).await;
        assert_eq!(answer.status, 200, "cleared at once");
        assert!(!answer.headers.contains_key("ratelimit"));
    }
}

#[tokio::test]
async fn a_rotated_key_keeps_its_budget() {
    let app = App::start().await;
    let key = app.key(Some(limit(2, 3600))).await;
    let id = app.manager.list(&app.account).await.expect("list")[0].id;
    assert_eq!(app.ping(&key).await.status, 200);
    assert_eq!(app.ping(&key).await.status, 200);
    let rotated = app.manager.rotate(&app.account, id).await.expect("rotate");
    let answer = app.ping(rotated.key.expose_secret()).await;
    assert_eq!(
        answer.status, 429,
        "the budget belongs to the key, not its string"
    );
}
