//! Scopes: a restricted key passes only routes whose scope it lists (403 otherwise), an
//! unrestricted key passes every route, no key is 401 (never 403), and a change of scopes is
//! in force at once.

use super::app::{App, assert_401};
use tower_api_key::{KeyOptions, PolicyUpdate, Scopes};

fn scopes(list: &[&str]) -> Scopes {
    Scopes::new(list).expect("valid scopes")
}

#[tokio::test]
async fn only_keys_listing_the_scope_or_unrestricted_pass_a_scoped_route() {
    let app = App::start().await;
    let unrestricted = app.manager.create(&app.account).await.expect("create");
    let writer = app
        .manager
        .create_with(
            &app.account,
            KeyOptions::new().scopes(scopes(&["read", "write"])),
        )
        .await
        .expect("create");
    let reader = app
        .manager
        .create_with(&app.account, KeyOptions::new().scopes(scopes(&["read"])))
        .await
        .expect("create");

    for allowed in [&unrestricted, &writer] {
        let answer = app.get("/v1/write", allowed.key.expose_secret()).await;
        assert_eq!(
            (answer.status.as_u16(), answer.body.as_str()),
            (200, "written")
        );
    }
    let refused = app.get("/v1/write", reader.key.expose_secret()).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body, r#"{"error":"insufficient scope"}"#);
    assert_eq!(refused.content_type(), Some("application/json"));
    assert!(!refused.headers.contains_key("www-authenticate"));
    // Routes that require no scope take every valid key.
    assert_eq!(
        app.get("/v1/ping", reader.key.expose_secret()).await.status,
        200
    );

    // No key, or a bad one, is 401 on a scoped route, never 403.
    assert_401(&app.get_with("/v1/write", &[]).await, "missing API key");
    assert_401(
        &app.get("/v1/write", &crate::support::keys::unknown()).await,
        "invalid API key",
    );
}

#[tokio::test]
async fn narrowing_and_widening_scopes_take_effect_at_once() {
    let app = App::start().await;
    let created = app.manager.create(&app.account).await.expect("create");
    let (id, key) = (created.info.id, created.key.expose_secret());
    assert_eq!(
        app.get("/v1/write", key).await.status,
        200,
        "cached as unrestricted"
    );

    let narrowed = PolicyUpdate::new().scopes(Some(scopes(&["read"])));
    let info = app
        .manager
        .update(&app.account, id, narrowed)
        .await
        .expect("update");
    assert_eq!(info.scopes, Some(scopes(&["read"])));
    assert_eq!(
        app.get("/v1/write", key).await.status,
        403,
        "narrowed: at once"
    );

    let widened = PolicyUpdate::new().scopes(Some(scopes(&["read", "write"])));
    app.manager
        .update(&app.account, id, widened)
        .await
        .expect("update");
    assert_eq!(app.get("/v1/write", key).await.status, 200);

    let empty = PolicyUpdate::new().scopes(Some(scopes(&[])));
    app.manager
        .update(&app.account, id, empty)
        .await
        .expect("update");
    assert_eq!(
        app.get("/v1/write", key).await.status,
        403,
        "no scope at all"
    );
    assert_eq!(app.get("/v1/ping", key).await.status, 200);

    let cleared = PolicyUpdate::new().scopes(None);
    app.manager
        .update(&app.account, id, cleared)
        .await
        .expect("update");
    assert_eq!(
        app.get("/v1/write", key).await.status,
        200,
        "unrestricted again"
    );
}
