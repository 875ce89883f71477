//! What a body may hold: strict JSON objects (a member given twice is refused, not read as
//! its last value) and times the API can write back (1970 to 9999 in UTC).

use http::{Method, StatusCode};

use super::{Harness, text};

#[tokio::test]
async fn a_member_given_twice_is_400_naming_it_and_creates_nothing() {
    let admin = Harness::start().await;
    let bodies = [
        (r#"{"scopes":["read"],"scopes":null}"#, "scopes"),
        (r#"{"name":"a","name":"b"}"#, "name"),
        (
            r#"{"rate_limit":{"requests":5,"per_seconds":2,"requests":1000000}}"#,
            "requests",
        ),
    ];
    for (body, member) in bodies {
        let reply = admin
            .admin(Method::POST, "/admin/accounts/acme/keys", Some(body))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, body);
        let message = reply.json()["error"].as_str().expect("message").to_owned();
        assert!(
            message.contains("duplicate") && message.contains(member),
            "{body}: {message}"
        );
    }
    assert!(admin.list("acme").await.is_empty());
}

#[tokio::test]
async fn a_member_given_twice_in_an_update_or_rotation_is_400_and_changes_nothing() {
    let admin = Harness::start().await;
    let created = admin.create("acme", Some(r#"{"scopes":["read"]}"#)).await;
    let id = text(&created, "id");
    let reply = admin
        .on_key(
            Method::PATCH,
            "acme",
            id,
            "",
            Some(r#"{"scopes":["read"],"scopes":null}"#),
        )
        .await;
    reply.assert_error(StatusCode::BAD_REQUEST, "duplicate scopes");
    let reply = admin
        .on_key(
            Method::POST,
            "acme",
            id,
            "/rotate",
            Some(r#"{"grace_seconds":0,"grace_seconds":600}"#),
        )
        .await;
    reply.assert_error(StatusCode::BAD_REQUEST, "duplicate grace_seconds");
    let listed = admin.list("acme").await;
    assert_eq!(listed[0]["scopes"], serde_json::json!(["read"]));
    assert_eq!(listed[0]["prefix"], created["prefix"]);
}

#[tokio::test]
async fn an_array_is_no_body_and_no_rate_limit() {
    let admin = Harness::start().await;
    for body in [r#"["read"]"#, r#"{"rate_limit":[5,2]}"#] {
        let reply = admin
            .admin(Method::POST, "/admin/accounts/acme/keys", Some(body))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, body);
    }
    assert!(admin.list("acme").await.is_empty());
}

#[tokio::test]
async fn a_time_past_9999_in_utc_is_400_naming_the_field_and_the_list_still_answers() {
    let admin = Harness::start().await;
    // 9999-12-31T23:59:59 at -23:59 is 10000-01-01T23:58:59Z.
    let late = r#"{"expires_at":"9999-12-31T23:59:59-23:59"}"#;
    let reply = admin
        .admin(Method::POST, "/admin/accounts/acme/keys", Some(late))
        .await;
    reply.assert_error(StatusCode::BAD_REQUEST, late);
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("expires_at")
    );
    assert!(admin.list("acme").await.is_empty());

    let created = admin.create("acme", None).await;
    let id = text(&created, "id");
    for body in [
        late,
        r#"{"expires_at":"1969-12-31T23:59:59Z"}"#,
        r#"{"expires_at":"1970-01-01T00:30:00+01:00"}"#,
    ] {
        let reply = admin
            .on_key(Method::PATCH, "acme", id, "", Some(body))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, body);
        assert!(
            reply.json()["error"]
                .as_str()
                .unwrap()
                .contains("expires_at"),
            "{body}: {}",
            reply.text()
        );
    }
    assert_eq!(
        admin.list("acme").await[0]["expires_at"],
        serde_json::Value::Null
    );
}

#[tokio::test]
async fn the_bounds_themselves_are_accepted_and_written_back() {
    let admin = Harness::start().await;
    let created = admin
        .create("acme", Some(r#"{"expires_at":"9999-12-31T23:59:59Z"}"#))
        .await;
    assert_eq!(created["expires_at"], "9999-12-31T23:59:59.000000Z");
    let id = text(&created, "id");
    // The past is allowed in an update (it expires the key at once), down to the epoch.
    let updated = admin
        .patch("acme", id, r#"{"expires_at":"1970-01-01T00:00:00Z"}"#)
        .await;
    assert_eq!(updated["expires_at"], "1970-01-01T00:00:00.000000Z");
    assert_eq!(admin.list("acme").await.len(), 1);
}

#[tokio::test]
async fn a_stored_time_beyond_9999_is_written_at_the_bound_instead_of_dropping_the_answer() {
    use std::time::{Duration, UNIX_EPOCH};
    use tower_api_key::{ApiKey, KeyId, KeyRecord};

    let admin = Harness::start().await;
    // Written by hand (or by a version that didn't check): year 10000 in UTC.
    let key = ApiKey::generate().expect("randomness");
    let record = KeyRecord {
        expires_at: Some(UNIX_EPOCH + Duration::from_secs(253_402_300_800 + 86_340)),
        ..KeyRecord::new(
            KeyId::random(),
            crate::support::account("acme"),
            key.prefix(),
            admin.manager.pepper().digest(&key),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
    };
    admin
        .manager
        .store()
        .insert_within_limit(record, 3, &crate::store::note())
        .await
        .expect("insert");
    let listed = admin.list("acme").await;
    assert_eq!(listed[0]["expires_at"], "9999-12-31T23:59:59.999999Z");
    // So the key can be found and deleted, freeing its slot.
    let id = text(&listed[0], "id");
    let deleted = admin.on_key(Method::DELETE, "acme", id, "", None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text());
}
