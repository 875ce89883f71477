//! `POST …/{id}/rotate`: the optional grace period and its bounds.

use http::{Method, StatusCode};

use super::create::{RECORD_FIELDS, fields};
use super::{Harness, text};

#[tokio::test]
async fn a_grace_period_keeps_the_old_key_working_and_shows_it_in_the_record() {
    let admin = Harness::start().await;
    let created = admin.create("acme", None).await;
    let (id, old) = (text(&created, "id"), text(&created, "key"));

    let reply = admin
        .on_key(
            Method::POST,
            "acme",
            id,
            "/rotate",
            Some(r#"{"grace_seconds": 604800}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let rotated = reply.json();
    let new = text(&rotated, "key");
    assert_ne!(new, old);
    assert_eq!(rotated["id"], created["id"]);
    assert_eq!(rotated["previous_prefix"], created["prefix"]);
    assert!(text(&rotated, "previous_expires_at").ends_with('Z'));
    assert_eq!(
        admin.ping(old).await,
        StatusCode::OK,
        "old key in its grace"
    );
    assert_eq!(admin.ping(new).await, StatusCode::OK);

    let listed = admin.list("acme").await;
    assert_eq!(listed[0]["previous_prefix"], created["prefix"]);
    assert_eq!(
        listed[0]["previous_expires_at"],
        rotated["previous_expires_at"]
    );

    // Rotating again without grace ends the old key's grace at once.
    let again = admin
        .on_key(Method::POST, "acme", id, "/rotate", None)
        .await
        .json();
    assert!(again.get("previous_prefix").is_none(), "{again}");
    assert!(again.get("previous_expires_at").is_none(), "{again}");
    assert_eq!(admin.ping(old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(admin.ping(new).await, StatusCode::UNAUTHORIZED);
    assert_eq!(admin.ping(text(&again, "key")).await, StatusCode::OK);
}

#[tokio::test]
async fn no_body_an_empty_object_or_zero_grace_is_a_plain_rotation() {
    let admin = Harness::start().await;
    for body in [None, Some(""), Some("{}"), Some(r#"{"grace_seconds": 0}"#)] {
        let created = admin.create("plain", None).await;
        let (id, old) = (text(&created, "id"), text(&created, "key"));
        let reply = admin
            .on_key(Method::POST, "plain", id, "/rotate", body)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{body:?}: {}", reply.text());
        let rotated = reply.json();
        let mut expected: Vec<&str> = RECORD_FIELDS.to_vec();
        expected.push("key");
        expected.sort_unstable();
        assert_eq!(fields(&rotated), expected, "{body:?}");
        assert_eq!(admin.ping(old).await, StatusCode::UNAUTHORIZED, "{body:?}");
        assert_eq!(admin.ping(text(&rotated, "key")).await, StatusCode::OK);
        admin.on_key(Method::DELETE, "plain", id, "", None).await;
    }
}

#[tokio::test]
async fn a_grace_out_of_bounds_or_of_the_wrong_type_is_400_and_rotates_nothing() {
    let admin = Harness::start().await;
    let created = admin.create("acme", None).await;
    let (id, key) = (text(&created, "id"), text(&created, "key"));
    for body in [
        r#"{"grace_seconds": 604801}"#,
        r#"{"grace_seconds": -1}"#,
        r#"{"grace_seconds": 1.5}"#,
        r#"{"grace_seconds": "60"}"#,
        r#"{"grace_seconds": 99999999999999999999}"#,
        r#"{"grace": 60}"#,
        r#"{"grace_seconds": 60, "x": 1}"#,
        "{",
        "[60]",
    ] {
        let reply = admin
            .on_key(Method::POST, "acme", id, "/rotate", Some(body))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, body);
        let listed = admin.list("acme").await;
        assert_eq!(listed[0]["prefix"], created["prefix"], "{body} rotated");
        assert_eq!(admin.ping(key).await, StatusCode::OK);
    }
}
