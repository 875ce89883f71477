//! Requests counted per key per hour (mirrors `src/usage/`): every request the layer decides
//! for a known key counts against it as accepted, rate limited or refused, over a loopback
//! axum server; unknown and malformed keys count nowhere; counts survive a failed flush and
//! are written at shutdown; several recorders on one store add up; old hours are pruned.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tower_api_key::rate_limit::LocalLimiter;
use tower_api_key::usage::{
    Granularity, Hour, UsageBatch, UsageCounts, UsageDelta, UsageRange, UsageRecorder,
};
use tower_api_key::{KeyOptions, KeyStore as _, PolicyUpdate, RateLimit, Scopes};

use crate::policy::app::App;
use crate::support::account;
use crate::support::stores::TestStore;

/// The key's counts over the last 48 hours.
async fn counts_of(app: &App, id: tower_api_key::KeyId) -> UsageCounts {
    let range = UsageRange::last(Granularity::Hour, SystemTime::now());
    app.manager
        .usage(&app.account, Some(id), &range)
        .await
        .expect("usage")
        .total()
}

/// The account's counts over the last 48 hours.
async fn account_counts(app: &App) -> UsageCounts {
    let range = UsageRange::last(Granularity::Hour, SystemTime::now());
    app.manager
        .usage(&app.account, None, &range)
        .await
        .expect("usage")
        .total()
}

fn counts(accepted: u64, rate_limited: u64, refused: u64) -> UsageCounts {
    UsageCounts {
        accepted,
        rate_limited,
        refused,
    }
}

#[tokio::test]
async fn each_outcome_for_a_known_key_counts_against_that_key() {
    let store = TestStore::new();
    let recorder = UsageRecorder::new(store.clone());
    let app = App::start_on(store, |builder| {
        builder
            .record_usage(recorder.clone())
            // A clock that never moves: spent budgets never refill, so the counts are exact.
            .rate_limiter(LocalLimiter::with_clock(|| Duration::ZERO))
    })
    .await;

    let plain = app.manager.create(&app.account).await.expect("create");
    let limited = app
        .manager
        .create_with(
            &app.account,
            KeyOptions::new().rate_limit(RateLimit::new(2, 3600).expect("limit")),
        )
        .await
        .expect("create");
    let read_only = app
        .manager
        .create_with(
            &app.account,
            KeyOptions::new().scopes(Scopes::new(["read"]).expect("scopes")),
        )
        .await
        .expect("create");

    // Accepted, twice from the cache and once from the store.
    for _ in 0..3 {
        assert_eq!(
            app.get("/v1/ping", plain.key.expose_secret()).await.status,
            200
        );
    }
    // Two accepted, then three over the limit.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            app.get("/v1/ping", limited.key.expose_secret())
                .await
                .status,
        );
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    // Let in by the key layer, refused by the scope layer: refused, not accepted.
    for _ in 0..2 {
        assert_eq!(
            app.get("/v1/write", read_only.key.expose_secret())
                .await
                .status,
            403
        );
    }
    assert_eq!(
        app.get("/v1/ping", read_only.key.expose_secret())
            .await
            .status,
        200
    );

    recorder.flush().await.expect("flush");
    assert_eq!(counts_of(&app, plain.info.id).await, counts(3, 0, 0));
    assert_eq!(counts_of(&app, limited.info.id).await, counts(2, 3, 0));
    assert_eq!(counts_of(&app, read_only.info.id).await, counts(1, 0, 2));
    assert_eq!(account_counts(&app).await, counts(6, 3, 2));

    // Expired: refused, whether the answer came from the cache or the store.
    let past = SystemTime::now() - Duration::from_secs(1);
    app.manager
        .update(
            &app.account,
            plain.info.id,
            PolicyUpdate::new().expires_at(Some(past)),
        )
        .await
        .expect("expire");
    for _ in 0..2 {
        let answer = app.get("/v1/ping", plain.key.expose_secret()).await;
        assert_eq!(answer.status, 401, "{}", answer.body);
    }
    recorder.flush().await.expect("flush");
    assert_eq!(counts_of(&app, plain.info.id).await, counts(3, 0, 2));
}

#[tokio::test]
async fn unknown_malformed_and_missing_keys_count_against_no_key() {
    let store = TestStore::new();
    let recorder = UsageRecorder::new(store.clone());
    let app = App::start_on(store, |builder| builder.record_usage(recorder.clone())).await;
    let created = app.manager.create(&app.account).await.expect("create");
    let revoked = app.manager.create(&app.account).await.expect("create");
    app.manager
        .revoke(&app.account, revoked.info.id)
        .await
        .expect("revoke");
    let forged = crate::support::keys::unknown();
    for key in [forged.as_str(), "not-a-key", revoked.key.expose_secret()] {
        assert_eq!(app.get("/v1/ping", key).await.status, 401);
    }
    assert_eq!(app.get_with("/v1/ping", &[]).await.status, 401);
    assert_eq!(
        recorder.flush().await.expect("flush"),
        0,
        "nothing to write"
    );
    assert_eq!(account_counts(&app).await, UsageCounts::default());
    assert_eq!(
        counts_of(&app, created.info.id).await,
        UsageCounts::default()
    );
}

#[tokio::test]
async fn counts_survive_a_failed_flush_and_the_final_flush_writes_them() {
    let store = TestStore::new();
    let recorder = UsageRecorder::new(store.clone());
    let app = App::start_on(store, |builder| builder.record_usage(recorder.clone())).await;
    let created = app.manager.create(&app.account).await.expect("create");
    // A flusher that would not flush for an hour: only its shutdown writes.
    let flusher = recorder.spawn_flusher(Duration::from_secs(3600));
    for _ in 0..4 {
        assert_eq!(
            app.get("/v1/ping", created.key.expose_secret())
                .await
                .status,
            200
        );
    }
    app.store.down.store(true, Ordering::SeqCst);
    assert!(recorder.flush().await.is_err());
    assert_eq!(recorder.pending_count(), 1, "one entry for the key");
    // The key is cached: its use while the store is down counts too.
    assert_eq!(
        app.get("/v1/ping", created.key.expose_secret())
            .await
            .status,
        200
    );
    app.store.down.store(false, Ordering::SeqCst);
    assert_eq!(
        app.get("/v1/ping", created.key.expose_secret())
            .await
            .status,
        200
    );
    assert_eq!(flusher.shutdown().await.expect("final flush"), 1);
    assert_eq!(counts_of(&app, created.info.id).await, counts(6, 0, 0));
}

#[tokio::test]
async fn two_recorders_on_one_store_add_up_and_deleted_keys_stay_in_the_account() {
    let store = TestStore::new();
    let recorder_a = UsageRecorder::new(store.clone());
    let recorder_b = UsageRecorder::new(store.clone());
    let a = App::start_on(store.clone(), |builder| {
        builder.record_usage(recorder_a.clone())
    })
    .await;
    let b = App::start_on(store, |builder| builder.record_usage(recorder_b.clone())).await;
    let created = a.manager.create(&a.account).await.expect("create");
    for app in [&a, &b, &a] {
        assert_eq!(
            app.get("/v1/ping", created.key.expose_secret())
                .await
                .status,
            200
        );
    }
    recorder_a.flush().await.expect("flush");
    recorder_b.flush().await.expect("flush");
    assert_eq!(counts_of(&a, created.info.id).await, counts(3, 0, 0));

    a.manager
        .delete(&a.account, created.info.id)
        .await
        .expect("delete");
    assert_eq!(
        account_counts(&a).await,
        counts(3, 0, 0),
        "kept after delete"
    );
    let range = UsageRange::last(Granularity::Hour, SystemTime::now());
    assert!(matches!(
        a.manager
            .usage(&a.account, Some(created.info.id), &range)
            .await,
        Err(tower_api_key::ManagerError::NotFound)
    ));
}

#[tokio::test]
async fn prune_deletes_hours_past_the_retention_and_keeps_the_rest() {
    let app = App::start().await;
    let recorder = UsageRecorder::new(app.store.clone()).retention(Duration::from_secs(48 * 3600));
    let key = tower_api_key::KeyId::random();
    let now = Hour::containing(SystemTime::now());
    let delta = |hour: Hour| UsageDelta {
        account_id: account("acme"),
        key_id: key,
        hour,
        accepted: 1,
        rate_limited: 0,
        refused: 0,
    };
    let batch = UsageBatch {
        last_used: Vec::new(),
        counts: vec![
            delta(now.earlier(100)),
            delta(now.earlier(49)),
            delta(now.earlier(47)),
            delta(now),
        ],
    };
    app.store.record_usage(&batch).await.expect("write");
    assert_eq!(recorder.prune().await.expect("prune"), 2);
    let rows = app
        .store
        .usage(&account("acme"), None, now.earlier(200), now.next())
        .await
        .expect("read");
    let hours: Vec<Hour> = rows.iter().map(|row| row.hour).collect();
    assert_eq!(hours, [now.earlier(47), now]);
}
