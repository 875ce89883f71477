//! `PATCH /admin/accounts/{account}/keys/{id}`: `null` clears, absent keeps, in force at once.

use http::{Method, StatusCode};
use serde_json::json;

use super::{Harness, text};

const FULL: &str =
    r#"{"name": "CI", "scopes": ["read", "write"], "expires_at": "2099-01-01T00:00:00Z"}"#;

#[tokio::test]
async fn null_clears_a_field_and_an_absent_field_is_kept() {
    let admin = Harness::start().await;
    let created = admin.create("acme", Some(FULL)).await;
    let id = text(&created, "id");

    let record = admin.patch("acme", id, r#"{"name": null}"#).await;
    assert!(record["name"].is_null());
    assert_eq!(record["scopes"], json!(["read", "write"]));
    assert_eq!(record["expires_at"], "2099-01-01T00:00:00.000000Z");
    assert!(record.get("key").is_none());

    let body = r#"{"scopes": null, "expires_at": null, "name": "renamed"}"#;
    let record = admin.patch("acme", id, body).await;
    assert_eq!(record["name"], "renamed");
    assert!(record["scopes"].is_null(), "unrestricted: {record}");
    assert!(record["expires_at"].is_null());

    let body = r#"{"scopes": ["read"], "expires_at": "2098-12-31T23:00:00-01:00"}"#;
    let record = admin.patch("acme", id, body).await;
    assert_eq!(record["name"], "renamed");
    assert_eq!(record["scopes"], json!(["read"]));
    assert_eq!(record["expires_at"], "2099-01-01T00:00:00.000000Z");
    // The listing agrees.
    let listed = admin.list("acme").await;
    assert_eq!(listed, [record]);
}

#[tokio::test]
async fn rate_limit_is_set_changed_and_cleared_by_null_and_kept_when_absent() {
    let admin = Harness::start().await;
    let created = admin.create("acme", Some(FULL)).await;
    assert!(
        created["rate_limit"].is_null(),
        "none by default: {created}"
    );
    let id = text(&created, "id");

    let five = json!({"requests": 5, "per_seconds": 2});
    let record = admin
        .patch("acme", id, &json!({ "rate_limit": five }).to_string())
        .await;
    assert_eq!(record["rate_limit"], five);
    assert_eq!(record["name"], "CI", "the rest is kept");

    let hundred = json!({"requests": 100, "per_seconds": 60});
    let record = admin
        .patch("acme", id, &json!({ "rate_limit": hundred }).to_string())
        .await;
    assert_eq!(record["rate_limit"], hundred);

    let record = admin.patch("acme", id, r#"{"name": "renamed"}"#).await;
    assert_eq!(record["rate_limit"], hundred, "absent keeps it");
    assert_eq!(admin.list("acme").await, [record]);

    let record = admin.patch("acme", id, r#"{"rate_limit": null}"#).await;
    assert!(record["rate_limit"].is_null(), "{record}");
    assert_eq!(record["name"], "renamed");
    let info = admin
        .manager
        .get(&crate::support::account("acme"), id.parse().expect("id"))
        .await
        .expect("get");
    assert_eq!(info.rate_limit, None);
}

#[tokio::test]
async fn an_empty_object_or_no_body_changes_nothing_and_reports_nothing() {
    let admin = Harness::start().await;
    let created = admin.create("acme", Some(FULL)).await;
    let id = text(&created, "id");
    let before = admin.list("acme").await;
    for body in [Some("{}"), None, Some("")] {
        let reply = admin.on_key(Method::PATCH, "acme", id, "", body).await;
        assert_eq!(reply.status, StatusCode::OK, "{body:?}: {}", reply.text());
        assert_eq!(reply.json(), before[0], "{body:?}");
    }
    assert_eq!(admin.events().len(), 1, "only the create");
}

#[tokio::test]
async fn an_expiry_in_the_past_expires_the_key_at_once_and_clearing_it_revives_it() {
    let admin = Harness::start().await;
    let created = admin.create("acme", None).await;
    let (id, key) = (text(&created, "id"), text(&created, "key"));
    assert_eq!(admin.ping(key).await, StatusCode::OK);

    let record = admin
        .patch("acme", id, r#"{"expires_at": "2000-01-01T00:00:00Z"}"#)
        .await;
    assert_eq!(record["expires_at"], "2000-01-01T00:00:00.000000Z");
    assert_eq!(admin.ping(key).await, StatusCode::UNAUTHORIZED);

    admin
        .on_key(
            Method::PATCH,
            "acme",
            id,
            "",
            Some(r#"{"expires_at": null}"#),
        )
        .await;
    assert_eq!(admin.ping(key).await, StatusCode::OK);
}

#[tokio::test]
async fn every_refused_patch_is_400_json_and_changes_nothing() {
    let admin = Harness::start().await;
    let created = admin.create("acme", Some(FULL)).await;
    let id = text(&created, "id");
    let before = admin.list("acme").await;
    for body in [
        "{",
        "[]",
        "null",
        r#"{"status": "inactive"}"#,
        r#"{"expires_in_seconds": 60}"#,
        r#"{"name": 1}"#,
        r#"{"name": ""}"#,
        r#"{"name": "a\u0000b"}"#,
        r#"{"scopes": "read"}"#,
        r#"{"scopes": ["READ"]}"#,
        r#"{"expires_at": "soon"}"#,
        r#"{"expires_at": 0}"#,
        r#"{"rate_limit": {"requests": 0, "per_seconds": 2}}"#,
        r#"{"rate_limit": {"requests": 5, "per_seconds": 86401}}"#,
        r#"{"rate_limit": {"requests": -1, "per_seconds": 2}}"#,
        r#"{"rate_limit": {"requests": 5}}"#,
        r#"{"rate_limit": {"requests": 5, "per_seconds": 2.0}}"#,
        r#"{"rate_limit": {"requests": 5, "per_seconds": 2, "window": 2}}"#,
        r#"{"rate_limit": "5/2"}"#,
        // A valid field beside a refused one changes nothing either.
        r#"{"name": "new", "scopes": ["Bad"]}"#,
        r#"{"name": "new", "rate_limit": {"requests": 5, "per_seconds": 0}}"#,
    ] {
        let reply = admin
            .on_key(Method::PATCH, "acme", id, "", Some(body))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, body);
        assert_eq!(admin.list("acme").await, before, "{body} changed the key");
    }
}

#[tokio::test]
async fn narrowing_scopes_is_in_force_at_once_on_scoped_routes_of_the_manager() {
    let admin = Harness::start().await;
    let created = admin.create("acme", Some(r#"{"scopes": ["write"]}"#)).await;
    let id = text(&created, "id");
    let record = admin.patch("acme", id, r#"{"scopes": []}"#).await;
    assert_eq!(record["scopes"], json!([]));
    let info = admin
        .manager
        .get(&crate::support::account("acme"), id.parse().expect("id"))
        .await
        .expect("get");
    assert_eq!(info.scopes.map(|scopes| scopes.len()), Some(0));
}
