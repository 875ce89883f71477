//! Rotation with a grace period: the old key string keeps working until the grace ends, with
//! the key's scopes and expiry, under one id and one slot; revoke, delete and a further
//! rotation end it at once.

use std::time::{Duration, SystemTime};

use super::app::{App, assert_401, wait_past};
use tower_api_key::{KeyOptions, KeyStatus, PolicyUpdate, RotateOptions, Scopes};

fn grace(seconds: u64) -> RotateOptions {
    RotateOptions::new()
        .grace(Duration::from_secs(seconds))
        .expect("within the maximum")
}

#[tokio::test]
async fn the_old_key_works_during_the_grace_period_and_is_refused_after_it() {
    let app = App::start().await;
    let created = app.manager.create(&app.account).await.expect("create");
    let old = created.key.expose_secret();
    assert_eq!(app.get("/v1/ping", old).await.status, 200);

    let rotated = app
        .manager
        .rotate_with(&app.account, created.info.id, grace(2))
        .await
        .expect("rotate");
    let new = rotated.key.expose_secret();
    let ends = rotated.info.previous_expires_at.expect("grace key listed");
    assert_eq!(rotated.info.previous_prefix, Some(created.info.prefix));
    assert_eq!(rotated.info.id, created.info.id, "one id");
    assert_eq!(
        app.manager.list(&app.account).await.expect("list").len(),
        1,
        "one slot"
    );

    let during = app.get("/v1/ping", old).await;
    if SystemTime::now() < ends {
        assert_eq!(during.status, 200, "{}", during.body);
    }
    assert_eq!(app.get("/v1/ping", new).await.status, 200);

    wait_past(ends).await;
    assert_401(&app.get("/v1/ping", old).await, "expired API key");
    assert_eq!(app.get("/v1/ping", new).await.status, 200);
    let info = app
        .manager
        .get(&app.account, created.info.id)
        .await
        .expect("get");
    assert_eq!(
        (info.previous_prefix, info.previous_expires_at),
        (None, None)
    );
}

#[tokio::test]
async fn revoke_delete_and_rotating_again_end_the_grace_key_at_once() {
    let app = App::start().await;
    let created = app.manager.create(&app.account).await.expect("create");
    let id = created.info.id;
    let first = created.key.expose_secret().to_owned();
    let second = app
        .manager
        .rotate_with(&app.account, id, grace(3600))
        .await
        .expect("rotate");
    let second = second.key.expose_secret().to_owned();
    for key in [&first, &second] {
        assert_eq!(app.get("/v1/ping", key).await.status, 200);
    }

    let revoked = app.manager.revoke(&app.account, id).await.expect("revoke");
    assert_eq!(revoked.status, KeyStatus::Inactive);
    for key in [&first, &second] {
        assert_401(&app.get("/v1/ping", key).await, "invalid API key");
    }
    app.manager
        .reactivate(&app.account, id)
        .await
        .expect("reactivate");
    for key in [&first, &second] {
        assert_eq!(app.get("/v1/ping", key).await.status, 200, "reactivated");
    }

    // Rotating again: the first key's grace ends at once; the second gets its own.
    let third = app
        .manager
        .rotate_with(&app.account, id, grace(3600))
        .await
        .expect("rotate");
    let third = third.key.expose_secret().to_owned();
    assert_401(&app.get("/v1/ping", &first).await, "invalid API key");
    assert_eq!(app.get("/v1/ping", &second).await.status, 200);
    assert_eq!(app.get("/v1/ping", &third).await.status, 200);

    // A plain rotation ends the grace key at once too.
    let fourth = app.manager.rotate(&app.account, id).await.expect("rotate");
    let fourth = fourth.key.expose_secret().to_owned();
    for key in [&second, &third] {
        assert_401(&app.get("/v1/ping", key).await, "invalid API key");
    }
    assert_eq!(app.get("/v1/ping", &fourth).await.status, 200);

    let fifth = app
        .manager
        .rotate_with(&app.account, id, grace(3600))
        .await
        .expect("rotate");
    app.manager.delete(&app.account, id).await.expect("delete");
    for key in [&fourth, fifth.key.expose_secret()] {
        assert_401(&app.get("/v1/ping", key).await, "invalid API key");
    }
}

#[tokio::test]
async fn the_grace_key_has_the_keys_scopes_and_expiry() {
    let app = App::start().await;
    let options = KeyOptions::new().scopes(Scopes::new(["read"]).expect("scopes"));
    let created = app
        .manager
        .create_with(&app.account, options)
        .await
        .expect("create");
    let (id, old) = (created.info.id, created.key.expose_secret());
    app.manager
        .rotate_with(&app.account, id, grace(3600))
        .await
        .expect("rotate");
    assert_eq!(app.get("/v1/ping", old).await.status, 200);
    assert_eq!(
        app.get("/v1/write", old).await.status,
        403,
        "the key's scopes"
    );

    let past = SystemTime::now() - Duration::from_secs(1);
    app.manager
        .update(&app.account, id, PolicyUpdate::new().expires_at(Some(past)))
        .await
        .expect("update");
    assert_401(&app.get("/v1/ping", old).await, "expired API key");
}

#[tokio::test]
async fn a_grace_period_over_seven_days_is_refused() {
    let err = RotateOptions::new()
        .grace(Duration::from_secs(7 * 24 * 3600 + 1))
        .expect_err("too long");
    assert_eq!(
        err.to_string(),
        "grace period must be at most 604800 seconds"
    );
}
