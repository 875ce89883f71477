//! Expiry: refused 401 `expired API key` from the instant it passes, even from the cache;
//! changed or cleared at once; still counted towards the limit and listed.

use std::time::{Duration, SystemTime};

use super::app::{App, assert_401, wait_past};
use tower_api_key::{KeyOptions, ManagerError, PolicyUpdate};

#[tokio::test]
async fn an_expiring_key_is_refused_from_its_expiry_on_without_asking_the_store() {
    let app = App::start().await;
    let options = KeyOptions::new()
        .expires_in(Duration::from_secs(2))
        .expect("in range");
    let created = app
        .manager
        .create_with(&app.account, options)
        .await
        .expect("create");
    let key = created.key.expose_secret();
    let expires_at = created.info.expires_at.expect("expiry set");
    assert_eq!(
        expires_at,
        created.info.created_at + Duration::from_secs(2),
        "a relative expiry counts from the creation, exactly"
    );

    let answer = app.get("/v1/ping", key).await;
    // On a machine stalled for two seconds the key may already be past its expiry here; the
    // rule under test (refused after it) is checked below either way.
    if SystemTime::now() < expires_at {
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let lookups = app.lookups();

    wait_past(expires_at).await;
    assert_401(&app.get("/v1/ping", key).await, "expired API key");
    assert_401(&app.get("/v1/ping", key).await, "expired API key");
    assert_eq!(
        app.lookups(),
        lookups,
        "the cached entry answered: expiry is checked on the hit path"
    );
    assert_eq!(app.layer.metrics().expired, 2);

    // Still listed and still counted towards the limit until deleted.
    let listed = app.manager.list(&app.account).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].is_expired(SystemTime::now()));
    for _ in 0..2 {
        app.manager.create(&app.account).await.expect("create");
    }
    assert!(matches!(
        app.manager.create(&app.account).await,
        Err(ManagerError::LimitReached { limit: 3 })
    ));
}

#[tokio::test]
async fn clearing_or_extending_the_expiry_revives_the_key_at_once_and_moving_it_back_refuses_it() {
    let app = App::start().await;
    let created = app.manager.create(&app.account).await.expect("create");
    let (id, key) = (created.info.id, created.key.expose_secret());
    assert_eq!(app.get("/v1/ping", key).await.status, 200);

    let past = SystemTime::now() - Duration::from_secs(1);
    let update = PolicyUpdate::new().expires_at(Some(past));
    let info = app
        .manager
        .update(&app.account, id, update)
        .await
        .expect("update");
    assert_eq!(info.expires_at, Some(past));
    assert_401(&app.get("/v1/ping", key).await, "expired API key");

    let later = SystemTime::now() + Duration::from_secs(3600);
    let update = PolicyUpdate::new().expires_at(Some(later));
    app.manager
        .update(&app.account, id, update)
        .await
        .expect("update");
    assert_eq!(
        app.get("/v1/ping", key).await.status,
        200,
        "extended: at once"
    );

    let update = PolicyUpdate::new().expires_at(Some(past));
    app.manager
        .update(&app.account, id, update)
        .await
        .expect("update");
    assert_401(&app.get("/v1/ping", key).await, "expired API key");

    let update = PolicyUpdate::new().expires_at(None);
    let info = app
        .manager
        .update(&app.account, id, update)
        .await
        .expect("update");
    assert_eq!(info.expires_at, None);
    assert_eq!(
        app.get("/v1/ping", key).await.status,
        200,
        "cleared: at once"
    );
}

#[tokio::test]
async fn a_new_key_must_expire_in_the_future() {
    let app = App::start().await;
    let past = SystemTime::now() - Duration::from_secs(1);
    let refused = app
        .manager
        .create_with(&app.account, KeyOptions::new().expires_at(past))
        .await;
    assert!(
        matches!(refused, Err(ManagerError::Policy(_))),
        "{refused:?}"
    );
    assert!(
        app.manager
            .list(&app.account)
            .await
            .expect("list")
            .is_empty()
    );
}
