//! Quotas at the layer (mirrors `src/usage/quota.rs` and the quota check of
//! `src/gatekeeper.rs`): only accepted requests count; over the quota is 429 `quota
//! exceeded` with `Retry-After` to the end of the period, not served and not a use; changes
//! take effect at once; a rate limit and a quota each answer with their own error; a new
//! layer on the same store (a restart) goes on from the store's count. HTTP over a loopback
//! axum server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use tower_api_key::policy::{Quota, QuotaPeriod};
use tower_api_key::rate_limit::LocalLimiter;
use tower_api_key::usage::{Granularity, UsageRange, UsageRecorder};
use tower_api_key::{KeyOptions, PolicyUpdate, RateLimit, Scopes};

use crate::policy::app::App;
use crate::support::clock::in_one_quota_period;
use crate::support::http::Answer;
use crate::support::stores::TestStore;

fn per_day(requests: u32) -> Quota {
    Quota::new(requests, QuotaPeriod::Day).expect("valid quota")
}

/// Seconds from now to the next midnight UTC, rounded up.
fn seconds_to_midnight() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    let end = (now.as_secs() / 86_400 + 1) * 86_400;
    end - now.as_secs()
}

fn assert_quota_exceeded(answer: &Answer) {
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.body
    );
    assert_eq!(answer.body, r#"{"error":"quota exceeded"}"#);
    assert_eq!(answer.content_type(), Some("application/json"));
}

#[tokio::test]
async fn a_key_over_its_quota_is_429_until_the_period_ends() {
    in_one_quota_period().await;
    let app = App::start().await;
    let created = app
        .manager
        .create_with(&app.account, KeyOptions::new().quota(per_day(3)))
        .await
        .expect("create");
    let key = created.key.expose_secret();
    for _ in 0..3 {
        let answer = app.get("/v1/ping", key).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let before = seconds_to_midnight();
    let answer = app.get("/v1/ping", key).await;
    let after = seconds_to_midnight();
    assert_quota_exceeded(&answer);
    let retry: u64 = answer.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    assert!(
        (after..=before + 1).contains(&retry),
        "Retry-After {retry} should be the {after}..={before} s left of the UTC day"
    );
    // Still refused: a refused request doesn't spend anything, and doesn't unlock anything.
    assert_quota_exceeded(&app.get("/v1/ping", key).await);
    assert_eq!(app.layer.metrics().quota_exceeded, 2);
    // Another key of the account has its own count.
    let other = app.manager.create(&app.account).await.expect("create");
    assert_eq!(
        app.get("/v1/ping", other.key.expose_secret()).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn raising_lowering_and_clearing_the_quota_take_effect_at_once() {
    in_one_quota_period().await;
    let app = App::start().await;
    let created = app
        .manager
        .create_with(&app.account, KeyOptions::new().quota(per_day(1)))
        .await
        .expect("create");
    let (id, key) = (created.info.id, created.key.expose_secret());
    let set = |quota: Option<Quota>| {
        app.manager
            .update(&app.account, id, PolicyUpdate::new().quota(quota))
    };
    assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
    assert_quota_exceeded(&app.get("/v1/ping", key).await);

    // Raised: the same period's count goes on, with room for one more.
    set(Some(per_day(2))).await.expect("update");
    assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
    assert_quota_exceeded(&app.get("/v1/ping", key).await);

    // Cleared: no cap at all.
    set(None).await.expect("update");
    for _ in 0..3 {
        assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
    }

    // Lowered below what was used: refused at once.
    set(Some(per_day(2))).await.expect("update");
    assert_quota_exceeded(&app.get("/v1/ping", key).await);
}

#[tokio::test]
async fn a_rate_limit_and_a_quota_answer_each_with_their_own_error() {
    in_one_quota_period().await;
    let app = App::start_with(|builder| {
        // A clock that never moves: a spent budget never refills, so the counts are exact.
        builder.rate_limiter(LocalLimiter::with_clock(|| Duration::ZERO))
    })
    .await;
    let both = |requests, quota| {
        KeyOptions::new()
            .rate_limit(RateLimit::new(requests, 3600).expect("limit"))
            .quota(per_day(quota))
    };

    // The rate limit first: its 429 is not an accepted request, so the quota keeps its room.
    let limited = app
        .manager
        .create_with(&app.account, both(1, 2))
        .await
        .expect("create");
    let key = limited.key.expose_secret();
    assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
    for _ in 0..3 {
        let answer = app.get("/v1/ping", key).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.body, r#"{"error":"rate limit exceeded"}"#);
    }
    // Raising the rate limit shows the quota had exactly one request left.
    app.manager
        .update(
            &app.account,
            limited.info.id,
            PolicyUpdate::new().rate_limit(Some(RateLimit::new(100, 3600).expect("limit"))),
        )
        .await
        .expect("update");
    assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
    assert_quota_exceeded(&app.get("/v1/ping", key).await);

    // The quota first, under a generous rate limit.
    let capped = app
        .manager
        .create_with(&app.account, both(100, 1))
        .await
        .expect("create");
    let key = capped.key.expose_secret();
    assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
    let answer = app.get("/v1/ping", key).await;
    assert_quota_exceeded(&answer);
    // The rate limit's budget rides along on the quota's 429 too, as on every answer to a
    // limited key.
    assert_eq!(
        answer.headers["ratelimit-policy"],
        r#""api-key";q=100;w=3600"#
    );
    assert!(answer.headers.contains_key("ratelimit"));
}

#[tokio::test]
async fn a_scope_refusal_does_not_spend_the_quota() {
    in_one_quota_period().await;
    let app = App::start().await;
    let created = app
        .manager
        .create_with(
            &app.account,
            KeyOptions::new()
                .quota(per_day(2))
                .scopes(Scopes::new(["read"]).expect("scopes")),
        )
        .await
        .expect("create");
    let key = created.key.expose_secret();
    for _ in 0..5 {
        assert_eq!(
            app.get("/v1/write", key).await.status,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
    assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
    assert_quota_exceeded(&app.get("/v1/ping", key).await);
}

#[tokio::test]
async fn a_new_layer_on_the_same_store_goes_on_from_the_stored_count() {
    in_one_quota_period().await;
    let store = TestStore::new();
    let first_recorder = UsageRecorder::new(store.clone());
    let first = App::start_on(store.clone(), |builder| {
        builder.record_usage(first_recorder.clone())
    })
    .await;
    let created = first
        .manager
        .create_with(&first.account, KeyOptions::new().quota(per_day(5)))
        .await
        .expect("create");
    let key = created.key.expose_secret();
    for _ in 0..3 {
        assert_eq!(first.get("/v1/ping", key).await.status, StatusCode::OK);
    }
    // Shutting down writes what is pending.
    first_recorder
        .spawn_flusher(Duration::from_secs(3600))
        .shutdown()
        .await
        .expect("final flush");

    // "Restarted": a new layer and recorder on the same store.
    let second_recorder = UsageRecorder::new(store.clone());
    let second = App::start_on(store, |builder| {
        builder.record_usage(second_recorder.clone())
    })
    .await;
    for _ in 0..2 {
        assert_eq!(second.get("/v1/ping", key).await.status, StatusCode::OK);
    }
    assert_quota_exceeded(&second.get("/v1/ping", key).await);

    // A refused request is not a use: the store counts 5 accepted, and the 429 as rate
    // limited, once written.
    second_recorder.flush().await.expect("flush");
    let range = UsageRange::last(Granularity::Hour, SystemTime::now());
    let total = second
        .manager
        .usage(&second.account, Some(created.info.id), &range)
        .await
        .expect("usage")
        .total();
    assert_eq!(
        (total.accepted, total.rate_limited, total.refused),
        (5, 1, 0)
    );
}

#[tokio::test]
async fn two_layers_on_one_store_see_each_other_after_a_flush() {
    in_one_quota_period().await;
    let store = TestStore::new();
    let (left_recorder, right_recorder) = (
        UsageRecorder::new(store.clone()),
        UsageRecorder::new(store.clone()),
    );
    let left = App::start_on(store.clone(), |b| b.record_usage(left_recorder.clone())).await;
    let right = App::start_on(store, |b| b.record_usage(right_recorder.clone())).await;
    let created = left
        .manager
        .create_with(&left.account, KeyOptions::new().quota(per_day(6)))
        .await
        .expect("create");
    let key = created.key.expose_secret();
    // Both look the key up (each reads the count, 0) and serve two each.
    for app in [&left, &right] {
        for _ in 0..2 {
            assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
        }
    }
    // Each flush writes its own and reads the other's: 4 of 6 used, everywhere.
    left_recorder.flush().await.expect("flush");
    right_recorder.flush().await.expect("flush");
    left_recorder.flush().await.expect("flush");
    assert_eq!(left.get("/v1/ping", key).await.status, StatusCode::OK);
    assert_eq!(right.get("/v1/ping", key).await.status, StatusCode::OK);
    // Until the next flushes each knows only its own fifth and sixth: 5 of 6 used.
    left_recorder.flush().await.expect("flush");
    right_recorder.flush().await.expect("flush");
    left_recorder.flush().await.expect("flush");
    assert_quota_exceeded(&left.get("/v1/ping", key).await);
    assert_quota_exceeded(&right.get("/v1/ping", key).await);
}

#[tokio::test]
async fn requests_made_before_a_quota_was_set_count_against_it() {
    in_one_quota_period().await;
    let store = TestStore::new();
    let recorder = UsageRecorder::new(store.clone());
    let app = App::start_on(store, |builder| builder.record_usage(recorder.clone())).await;
    let created = app.manager.create(&app.account).await.expect("create");
    let key = created.key.expose_secret();
    for _ in 0..3 {
        assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
    }
    // The quota comes while those 3 wait to be written.
    app.manager
        .update(
            &app.account,
            created.info.id,
            PolicyUpdate::new().quota(Some(per_day(5))),
        )
        .await
        .expect("update");
    assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
    recorder.flush().await.expect("flush");
    // 4 of 5 used: one more, then none.
    assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
    assert_quota_exceeded(&app.get("/v1/ping", key).await);
}

/// A quota set, or moved to another kind of period, while the key's latest requests wait to
/// be written counts them at once: one process never overshoots.
#[tokio::test]
async fn a_new_quota_or_period_counts_what_waits_to_be_written() {
    in_one_quota_period().await;
    let store = TestStore::new();
    let recorder = UsageRecorder::new(store.clone());
    let app = App::start_on(store, |builder| builder.record_usage(recorder.clone())).await;
    let set = |id, quota| {
        app.manager
            .update(&app.account, id, PolicyUpdate::new().quota(Some(quota)))
    };

    // No quota, 4 requests, then a quota of 4: used up at once.
    let open = app.manager.create(&app.account).await.expect("create");
    for _ in 0..4 {
        assert_eq!(
            app.get("/v1/ping", open.key.expose_secret()).await.status,
            StatusCode::OK
        );
    }
    set(open.info.id, per_day(4)).await.expect("update");
    assert_quota_exceeded(&app.get("/v1/ping", open.key.expose_secret()).await);

    // 4 requests under a daily quota of 10, then 4 a month: used up at once.
    let daily = app
        .manager
        .create_with(&app.account, KeyOptions::new().quota(per_day(10)))
        .await
        .expect("create");
    for _ in 0..4 {
        assert_eq!(
            app.get("/v1/ping", daily.key.expose_secret()).await.status,
            StatusCode::OK
        );
    }
    let monthly = Quota::new(4, QuotaPeriod::Month).expect("valid quota");
    set(daily.info.id, monthly).await.expect("update");
    assert_quota_exceeded(&app.get("/v1/ping", daily.key.expose_secret()).await);

    // Written, each request still counts once.
    recorder.flush().await.expect("flush");
    assert_quota_exceeded(&app.get("/v1/ping", open.key.expose_secret()).await);
    set(
        daily.info.id,
        Quota::new(5, QuotaPeriod::Month).expect("valid"),
    )
    .await
    .expect("update");
    assert_eq!(
        app.get("/v1/ping", daily.key.expose_secret()).await.status,
        StatusCode::OK
    );
    assert_quota_exceeded(&app.get("/v1/ping", daily.key.expose_secret()).await);
}
