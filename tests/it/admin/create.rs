//! `POST /admin/accounts/{account}/keys`: the optional body, the record's fields, and every
//! refused body creating nothing.

use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Harness, TOKEN, text};

/// The fields of a record without a grace key, sorted.
pub(super) const RECORD_FIELDS: [&str; 15] = [
    "account_id",
    "allowed_ips",
    "created_at",
    "expires_at",
    "id",
    "last_used_at",
    "metadata",
    "name",
    "prefix",
    "quota",
    "quota_used",
    "rate_limit",
    "requests_24h",
    "scopes",
    "status",
];

pub(super) fn fields(record: &Value) -> Vec<&str> {
    let mut fields: Vec<&str> = record
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    fields
}

fn plain_record_fields() -> Vec<&'static str> {
    RECORD_FIELDS.to_vec()
}

#[tokio::test]
async fn no_body_an_empty_body_and_an_empty_object_all_create_a_plain_key() {
    let admin = Harness::start().await;
    let bearer = format!("Bearer {TOKEN}");
    let path = "/admin/accounts/acme/keys";
    let replies = [
        admin
            .send(Method::POST, path, &[("authorization", &bearer)], None)
            .await,
        admin
            .send(
                Method::POST,
                path,
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
                Some(b""),
            )
            .await,
        admin
            .send(
                Method::POST,
                path,
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json; charset=utf-8"),
                ],
                Some(b" {} "),
            )
            .await,
    ];
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let record = reply.json();
        assert!(text(&record, "key").starts_with(text(&record, "prefix")));
        let mut expected = plain_record_fields();
        expected.push("key");
        expected.sort_unstable();
        assert_eq!(fields(&record), expected, "{record}");
        assert_eq!(record["status"], "active");
        assert_eq!(record["account_id"], "acme");
        for null in [
            "name",
            "scopes",
            "expires_at",
            "rate_limit",
            "last_used_at",
            "quota",
            "quota_used",
            "allowed_ips",
            "metadata",
        ] {
            assert!(record[null].is_null(), "{null}: {record}");
        }
        assert_eq!(admin.ping(text(&record, "key")).await, StatusCode::OK);
    }
    // Listings show the same records, oldest first, without the plaintext.
    let listed = admin.list("acme").await;
    assert_eq!(listed.len(), 3);
    for (record, reply) in listed.iter().zip(&replies) {
        assert_eq!(record["id"], reply.json()["id"]);
        assert_eq!(fields(record), plain_record_fields());
    }
}

#[tokio::test]
async fn a_full_body_sets_name_scopes_and_expiry_and_get_shows_the_same_record() {
    let admin = Harness::start().await;
    let created = admin
        .create(
            "acme",
            Some(r#"{"name": "CI ✓", "scopes": ["write", "read", "read"], "expires_in_seconds": 3600}"#),
        )
        .await;
    assert_eq!(created["name"], "CI ✓");
    assert_eq!(created["scopes"], json!(["read", "write"]));
    let expires_at = text(&created, "expires_at");
    assert!(expires_at.ends_with('Z'), "{expires_at}");
    let expires = humantime::parse_rfc3339(expires_at).expect("RFC 3339");
    let from_now = expires
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(from_now > Duration::from_secs(3000) && from_now <= Duration::from_secs(3600));
    let created_at = humantime::parse_rfc3339(text(&created, "created_at")).expect("RFC 3339");
    assert_eq!(
        expires,
        created_at + Duration::from_secs(3600),
        "counted from creation"
    );

    let id = text(&created, "id");
    let one = admin.on_key(Method::GET, "acme", id, "", None).await;
    assert_eq!(one.status, StatusCode::OK);
    let mut without_key = created.clone();
    without_key.as_object_mut().expect("object").remove("key");
    assert_eq!(one.json(), without_key);
}

#[tokio::test]
async fn a_rate_limit_is_kept_and_every_record_shows_it() {
    let admin = Harness::start().await;
    let limit = json!({"requests": 5, "per_seconds": 2});
    let created = admin
        .create("acme", Some(&json!({ "rate_limit": limit }).to_string()))
        .await;
    assert_eq!(created["rate_limit"], limit);
    let id = text(&created, "id");
    let one = admin.on_key(Method::GET, "acme", id, "", None).await;
    assert_eq!(one.json()["rate_limit"], limit);
    assert_eq!(admin.list("acme").await[0]["rate_limit"], limit);
    let info = admin
        .manager
        .get(&crate::support::account("acme"), id.parse().expect("id"))
        .await
        .expect("get");
    assert_eq!(
        info.rate_limit.map(|l| (l.requests(), l.per_seconds())),
        Some((5, 2))
    );
    // The bounds, and `null` for none.
    for limit in [
        json!({"requests": 1, "per_seconds": 1}),
        json!({"per_seconds": 86400, "requests": 1000000}),
        json!(null),
    ] {
        let created = admin
            .create("other", Some(&json!({ "rate_limit": limit }).to_string()))
            .await;
        assert_eq!(created["rate_limit"], limit);
    }
}

#[tokio::test]
async fn a_refused_rate_limit_says_why() {
    let admin = Harness::start().await;
    for (limit, why) in [
        (
            r#"{"requests": 0, "per_seconds": 2}"#,
            "rate limit must be 1 to 1000000 requests per 1 to 86400 seconds",
        ),
        (
            r#"{"requests": 5, "per_seconds": -1}"#,
            "rate limit must be",
        ),
        (r#"{"requests": 5}"#, "missing field `per_seconds`"),
        (r#"{"requests": 5, "per_seconds": 2.5}"#, "floating point"),
        (
            r#"{"requests": 5, "per_seconds": 2, "burst": 9}"#,
            "unknown field `burst`",
        ),
    ] {
        let body = format!(r#"{{"rate_limit": {limit}}}"#);
        let reply = admin
            .admin(Method::POST, "/admin/accounts/acme/keys", Some(&body))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, &body);
        let error = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains(why), "{body}: {error}");
    }
}

#[tokio::test]
async fn expires_at_is_read_with_any_offset_and_written_in_utc() {
    let admin = Harness::start().await;
    let created = admin
        .create(
            "acme",
            Some(r#"{"expires_at": "2099-01-01T02:00:00+02:00"}"#),
        )
        .await;
    assert_eq!(created["expires_at"], "2099-01-01T00:00:00.000000Z");
    let created = admin
        .create("acme", Some(r#"{"expires_at": "2099-06-30T12:34:56.5Z"}"#))
        .await;
    assert_eq!(created["expires_at"], "2099-06-30T12:34:56.500000Z");
}

#[tokio::test]
async fn expires_in_seconds_accepts_its_bounds() {
    let admin = Harness::start().await;
    admin
        .create("acme", Some(r#"{"expires_in_seconds": 1}"#))
        .await;
    admin
        .create("acme", Some(r#"{"expires_in_seconds": 315360000}"#))
        .await;
}

#[tokio::test]
async fn every_refused_body_is_400_json_and_creates_nothing() {
    let admin = Harness::start().await;
    let long_name = json!({ "name": "x".repeat(65) }).to_string();
    let seventeen: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
    let too_many = json!({ "scopes": seventeen }).to_string();
    let long_scope = json!({ "scopes": ["a".repeat(65)] }).to_string();
    let cases: Vec<&str> = vec![
        // not JSON, or not an object
        "{",
        "not json",
        "[]",
        "null",
        "\"name\"",
        "{\"name\": \"a\"} trailing",
        // unknown fields
        r#"{"nme": "CI"}"#,
        r#"{"name": "CI", "key": "x"}"#,
        r#"{"grace_seconds": 10}"#,
        // wrong types
        r#"{"name": 5}"#,
        r#"{"name": ["CI"]}"#,
        r#"{"scopes": "read"}"#,
        r#"{"scopes": [1]}"#,
        r#"{"expires_in_seconds": "60"}"#,
        r#"{"expires_in_seconds": 1.5}"#,
        r#"{"expires_at": 4102444800}"#,
        // expiry rules
        r#"{"expires_in_seconds": 60, "expires_at": "2099-01-01T00:00:00Z"}"#,
        r#"{"expires_in_seconds": 0}"#,
        r#"{"expires_in_seconds": -1}"#,
        r#"{"expires_in_seconds": 315360001}"#,
        r#"{"expires_in_seconds": 18446744073709551616}"#,
        r#"{"expires_at": "2000-01-01T00:00:00Z"}"#,
        r#"{"expires_at": "2099-01-01"}"#,
        r#"{"expires_at": "2099-01-01 00:00:00"}"#,
        r#"{"expires_at": "tomorrow"}"#,
        r#"{"expires_at": ""}"#,
        // names
        r#"{"name": ""}"#,
        r#"{"name": "a\nb"}"#,
        r#"{"name": "tab\there"}"#,
        &long_name,
        // scopes
        r#"{"scopes": ["Read"]}"#,
        r#"{"scopes": [""]}"#,
        r#"{"scopes": [":read"]}"#,
        r#"{"scopes": ["a b"]}"#,
        &long_scope,
        &too_many,
        // rate limits: out of range, missing members, not integers, unknown members
        r#"{"rate_limit": {"requests": 0, "per_seconds": 2}}"#,
        r#"{"rate_limit": {"requests": 1000001, "per_seconds": 2}}"#,
        r#"{"rate_limit": {"requests": 5, "per_seconds": 0}}"#,
        r#"{"rate_limit": {"requests": 5, "per_seconds": 86401}}"#,
        r#"{"rate_limit": {"requests": -5, "per_seconds": 2}}"#,
        r#"{"rate_limit": {"requests": 4294967301, "per_seconds": 2}}"#,
        r#"{"rate_limit": {"requests": 18446744073709551616, "per_seconds": 2}}"#,
        r#"{"rate_limit": {"requests": 5}}"#,
        r#"{"rate_limit": {"per_seconds": 2}}"#,
        r#"{"rate_limit": {}}"#,
        r#"{"rate_limit": {"requests": 1.5, "per_seconds": 2}}"#,
        r#"{"rate_limit": {"requests": "5", "per_seconds": 2}}"#,
        r#"{"rate_limit": {"requests": 5, "per_seconds": true}}"#,
        r#"{"rate_limit": {"requests": 5, "per_seconds": null}}"#,
        r#"{"rate_limit": {"requests": 5, "per_seconds": 2, "burst": 10}}"#,
        r#"{"rate_limit": "5/2s"}"#,
        r#"{"rate_limit": [5, 2]}"#,
        r#"{"rate_limit": 5}"#,
    ];
    for body in cases {
        let reply = admin
            .admin(Method::POST, "/admin/accounts/acme/keys", Some(body))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, body);
        assert!(admin.list("acme").await.is_empty(), "{body} created a key");
    }
    assert!(admin.events().is_empty());
}

#[tokio::test]
async fn sixteen_scopes_and_an_empty_list_are_fine() {
    let admin = Harness::start().await;
    let sixteen: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
    let created = admin
        .create("acme", Some(&json!({ "scopes": sixteen }).to_string()))
        .await;
    assert_eq!(created["scopes"].as_array().map(Vec::len), Some(16));
    let created = admin.create("acme", Some(r#"{"scopes": []}"#)).await;
    assert_eq!(created["scopes"], json!([]));
}
