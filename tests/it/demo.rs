//! The demo server (`examples/server/`) as its users meet it: the real binary, started on
//! `127.0.0.1:0`, driven over loopback with HTTP/1.1 and gRPC (h2c) on the same port.
//!
//! Each test starts its own server, so counters and key limits are its own. The example is
//! built once per run (see `crate::support::demo::server_binary`).

use std::time::{Duration, Instant, SystemTime};

use hyper::header::CACHE_CONTROL;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::demo::{ADMIN_TOKEN, DemoServer, Launch, read_until_closed, with_key};
use crate::support::wait::until;

// Key policy at the demo server, one concept a file.
mod address;
#[cfg(feature = "postgres")]
mod feed_metrics;
mod metadata;
mod quota;
#[cfg(feature = "postgres")]
mod quota_fleet;
mod streams;
mod trusted_proxies;

const SERVING: i32 = ServingStatus::Serving as i32;
const INVALID_KEY: &str = r#"{"error":"invalid API key"}"#;
const MISSING_KEY: &str = r#"{"error":"missing API key"}"#;

fn str_field<'a>(object: &'a Value, field: &str) -> &'a str {
    object[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is not a string in {object}"))
}

/// Asserts the key is refused with the one "invalid API key" answer.
async fn assert_refused(server: &DemoServer, key: &str) {
    let reply = server.get_with_key("/v1/ping", key).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.text(), INVALID_KEY);
}

async fn assert_accepted(server: &DemoServer, key: &str) {
    let reply = server.get_with_key("/v1/ping", key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "pong");
}

fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no `{series}` in:\n{metrics}"))
        .parse()
        .expect("a counter value")
}

fn parse_time(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap_or_else(|err| panic!("{text:?} is not RFC 3339: {err}"))
}

// ===== the key lifecycle over HTTP =====

#[tokio::test]
async fn whole_key_lifecycle_over_http() {
    let server = Launch::new().start().await;

    // create, use
    let created = server.create_key("acme").await;
    let (id, key) = (str_field(&created, "id"), str_field(&created, "key"));
    assert_accepted(&server, key).await;

    // the 4th key is refused
    server.create_key("acme").await;
    server.create_key("acme").await;
    let fourth = server
        .admin(Method::POST, "/admin/accounts/acme/keys")
        .await;
    assert_eq!(fourth.status, StatusCode::CONFLICT);

    // revoke, reactivate
    let revoked = server.key_action("acme", id, "revoke").await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_refused(&server, key).await;
    let reactivated = server.key_action("acme", id, "reactivate").await;
    assert_eq!(reactivated.status, StatusCode::OK);
    assert_accepted(&server, key).await;

    // rotate
    let rotated = server.key_action("acme", id, "rotate").await.json();
    let new_key = str_field(&rotated, "key");
    assert_refused(&server, key).await;
    assert_accepted(&server, new_key).await;

    // delete frees a slot
    let deleted = server
        .admin(Method::DELETE, &format!("/admin/accounts/acme/keys/{id}"))
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_refused(&server, new_key).await;
    let again = server.create_key("acme").await;
    assert_accepted(&server, str_field(&again, "key")).await;
}

#[tokio::test]
async fn created_key_authenticates_ping_and_whoami() {
    let server = Launch::new().start().await;
    let created = server.create_key("acme").await;
    assert_eq!(created["account_id"], "acme");
    assert_eq!(created["status"], "active");
    assert_eq!(created["last_used_at"], Value::Null);
    let key = str_field(&created, "key");
    let prefix = str_field(&created, "prefix");
    assert_eq!(prefix.len(), 8);
    assert!(
        key.starts_with(&format!("{prefix}.")),
        "{key:?} vs {prefix:?}"
    );
    let created_at = parse_time(str_field(&created, "created_at"));
    assert!(created_at <= SystemTime::now());

    let ping = server.get_with_key("/v1/ping", key).await;
    assert_eq!(ping.status, StatusCode::OK);
    assert!(
        ping.content_type().starts_with("text/plain"),
        "{:?}",
        ping.content_type()
    );
    assert_eq!(ping.text(), "pong");

    let whoami = server.get_with_key("/v1/whoami", key).await;
    assert_eq!(whoami.status, StatusCode::OK);
    assert!(whoami.content_type().starts_with("application/json"));
    assert_eq!(
        whoami.json(),
        json!({"account_id": "acme", "key_id": created["id"], "prefix": prefix, "metadata": null})
    );
}

#[tokio::test]
async fn fourth_key_is_refused_with_409_even_when_one_is_revoked() {
    let server = Launch::new().start().await;
    let first = server.create_key("acme").await;
    server.create_key("acme").await;
    server.create_key("acme").await;
    // Another account has its own limit.
    server.create_key("other").await;

    let fourth = server
        .admin(Method::POST, "/admin/accounts/acme/keys")
        .await;
    assert_eq!(fourth.status, StatusCode::CONFLICT);
    assert!(fourth.content_type().starts_with("application/json"));
    assert!(fourth.json()["error"].is_string(), "{}", fourth.text());

    // Inactive keys count towards the limit.
    let revoked = server
        .key_action("acme", str_field(&first, "id"), "revoke")
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let still = server
        .admin(Method::POST, "/admin/accounts/acme/keys")
        .await;
    assert_eq!(still.status, StatusCode::CONFLICT);
    assert_eq!(server.list_keys("acme").await.len(), 3);
}

#[tokio::test]
async fn revoke_refuses_the_key_at_once_and_reactivate_restores_it_at_once() {
    let server = Launch::new().start().await;
    let created = server.create_key("acme").await;
    let (id, key) = (str_field(&created, "id"), str_field(&created, "key"));
    // Warm the cache: the refusal must not be served from a stale positive entry.
    assert_accepted(&server, key).await;

    let revoked = server.key_action("acme", id, "revoke").await;
    assert_eq!(revoked.status, StatusCode::OK);
    let record = revoked.json();
    assert_eq!(record["status"], "inactive");
    assert_eq!(record["id"], created["id"]);
    assert_eq!(record["prefix"], created["prefix"]);
    assert!(record.get("key").is_none(), "{record}");
    assert_refused(&server, key).await;
    assert!(
        server
            .get_with_key("/v1/whoami", key)
            .await
            .content_type()
            .starts_with("application/json")
    );

    let reactivated = server.key_action("acme", id, "reactivate").await;
    assert_eq!(reactivated.status, StatusCode::OK);
    assert_eq!(reactivated.json()["status"], "active");
    assert_accepted(&server, key).await;
}

#[tokio::test]
async fn rotate_keeps_id_and_created_at_and_swaps_the_key_at_once() {
    let server = Launch::new().start().await;
    let created = server.create_key("acme").await;
    let (id, old_key) = (str_field(&created, "id"), str_field(&created, "key"));
    assert_accepted(&server, old_key).await;

    let reply = server.key_action("acme", id, "rotate").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let rotated = reply.json();
    assert_eq!(rotated["id"], created["id"]);
    assert_eq!(rotated["created_at"], created["created_at"]);
    assert_eq!(rotated["account_id"], "acme");
    assert_eq!(rotated["status"], "active");
    assert_eq!(rotated["last_used_at"], Value::Null);
    assert_ne!(rotated["prefix"], created["prefix"]);
    let new_key = str_field(&rotated, "key");
    assert_ne!(new_key, old_key);
    assert!(new_key.starts_with(&format!("{}.", str_field(&rotated, "prefix"))));

    assert_refused(&server, old_key).await;
    assert_accepted(&server, new_key).await;
    let whoami = server.get_with_key("/v1/whoami", new_key).await.json();
    assert_eq!(whoami["key_id"], created["id"]);
    assert_eq!(whoami["prefix"], rotated["prefix"]);

    let listed = server.list_keys("acme").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["prefix"], rotated["prefix"]);
}

#[tokio::test]
async fn delete_refuses_the_key_at_once_forgets_its_id_and_frees_a_slot() {
    let server = Launch::new().start().await;
    let created = server.create_key("acme").await;
    let (id, key) = (str_field(&created, "id"), str_field(&created, "key"));
    server.create_key("acme").await;
    server.create_key("acme").await;
    assert_accepted(&server, key).await;

    let path = format!("/admin/accounts/acme/keys/{id}");
    let deleted = server.admin(Method::DELETE, &path).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(deleted.body.is_empty());
    assert_refused(&server, key).await;

    let again = server.admin(Method::DELETE, &path).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(
        server.key_action("acme", id, "reactivate").await.status,
        StatusCode::NOT_FOUND
    );
    assert_refused(&server, key).await;

    assert_eq!(server.list_keys("acme").await.len(), 2);
    let replacement = server.create_key("acme").await;
    assert_accepted(&server, str_field(&replacement, "key")).await;
}

#[tokio::test]
async fn last_used_at_shows_a_use_once_the_flusher_has_run() {
    let server = Launch::new().start().await;
    let created = server.create_key("acme").await;
    let key = str_field(&created, "key");
    assert_eq!(
        server.list_keys("acme").await[0]["last_used_at"],
        Value::Null
    );

    // The store keeps milliseconds: compare against the use's bounds at that precision.
    let before = SystemTime::now() - Duration::from_millis(1);
    assert_accepted(&server, key).await;
    let after = SystemTime::now() + Duration::from_millis(1);

    // The server flushes uses every 500 ms, by itself.
    until("last_used_at to be written", || async {
        !server.list_keys("acme").await[0]["last_used_at"].is_null()
    })
    .await;
    let record = server.list_keys("acme").await.remove(0);
    let last_used = parse_time(record["last_used_at"].as_str().expect("a time"));
    assert!(
        before <= last_used && last_used <= after,
        "{last_used:?} not within the use"
    );
}

#[tokio::test]
async fn secrets_appear_only_in_create_and_rotate_answers_never_in_listings_or_logs() {
    let server = Launch::new()
        .env("RUST_LOG", "debug,h2=info,hyper=info,tonic=info")
        .start()
        .await;
    let created = server.create_key("acme").await;
    let key = str_field(&created, "key").to_owned();
    assert_accepted(&server, &key).await;
    let rotated = server
        .key_action("acme", str_field(&created, "id"), "rotate")
        .await
        .json();
    let new_key = str_field(&rotated, "key").to_owned();
    assert_accepted(&server, &new_key).await;
    assert_refused(&server, &key).await;
    let revoked = server
        .key_action("acme", str_field(&created, "id"), "revoke")
        .await;
    assert_eq!(
        server.grpc_health(Some(&new_key)).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let listing = server.admin(Method::GET, "/admin/accounts/acme/keys").await;
    for secret in [&key, &new_key] {
        // The part after the prefix is the secret.
        let body = &secret[9..];
        assert!(
            !listing.text().contains(body),
            "listing leaks a key: {}",
            listing.text()
        );
        assert!(!revoked.text().contains(body), "revoke answer leaks a key");
    }
    for record in listing.json()["keys"].as_array().unwrap() {
        assert!(record.get("key").is_none(), "{record}");
        let mut fields: Vec<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
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
                "status"
            ]
        );
    }

    // A last logged action, so that the log is complete up to here; with debug logging on,
    // it has the layer's refusals too.
    let path = format!("/admin/accounts/acme/keys/{}", str_field(&created, "id"));
    server.admin(Method::DELETE, &path).await;
    let log = server.log_containing("api key deleted").await;
    assert!(
        log.contains("api key rejected"),
        "debug logging is on:\n{log}"
    );
    for secret in [&key, &new_key] {
        assert!(!log.contains(&secret[9..]), "the log leaks a key:\n{log}");
    }
}

// ===== key policy: names, scopes, expiry, grace, rate limits =====

#[tokio::test]
async fn create_with_a_body_patch_and_rotate_with_grace_over_http() {
    let server = Launch::new().start().await;
    let created = server
        .admin_json(
            Method::POST,
            "/admin/accounts/acme/keys",
            r#"{"name": "CI", "scopes": ["read"], "expires_in_seconds": 3600}"#,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(
        created
            .headers
            .get(CACHE_CONTROL)
            .map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    let created = created.json();
    assert_eq!(created["name"], "CI");
    assert_eq!(created["scopes"], json!(["read"]));
    assert!(parse_time(str_field(&created, "expires_at")) > SystemTime::now());
    let (id, key) = (str_field(&created, "id"), str_field(&created, "key"));
    let path = format!("/admin/accounts/acme/keys/{id}");

    // A refused body is 400 JSON and creates nothing.
    let refused = server
        .admin_json(
            Method::POST,
            "/admin/accounts/acme/keys",
            r#"{"scopes": ["Bad"]}"#,
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.json()["error"].is_string());
    assert_eq!(server.list_keys("acme").await.len(), 1);

    // PATCH: null clears, absent keeps.
    let patched = server
        .admin_json(
            Method::PATCH,
            &path,
            r#"{"expires_at": null, "name": "deploy"}"#,
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    let patched = patched.json();
    assert_eq!(patched["name"], "deploy");
    assert_eq!(patched["scopes"], json!(["read"]));
    assert!(patched["expires_at"].is_null());
    let one = server.admin(Method::GET, &path).await;
    assert_eq!(one.json(), patched);

    // Rotate with a grace period: both keys work until it ends.
    let rotated = server
        .admin_json(
            Method::POST,
            &format!("{path}/rotate"),
            r#"{"grace_seconds": 600}"#,
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());
    let rotated = rotated.json();
    assert_eq!(rotated["previous_prefix"], created["prefix"]);
    assert!(parse_time(str_field(&rotated, "previous_expires_at")) > SystemTime::now());
    assert_accepted(&server, key).await;
    assert_accepted(&server, str_field(&rotated, "key")).await;
    let too_long = server
        .admin_json(
            Method::POST,
            &format!("{path}/rotate"),
            r#"{"grace_seconds": 604801}"#,
        )
        .await;
    assert_eq!(too_long.status, StatusCode::BAD_REQUEST);
    assert_accepted(&server, key).await;
}

#[tokio::test]
async fn a_rate_limit_is_created_shown_and_cleared_over_http() {
    let server = Launch::new().start().await;
    let limit = json!({"requests": 5, "per_seconds": 2});
    let created = server
        .create_key_with("acme", &json!({ "rate_limit": limit }).to_string())
        .await;
    assert_eq!(created["rate_limit"], limit);
    let path = format!("/admin/accounts/acme/keys/{}", str_field(&created, "id"));
    assert_eq!(server.list_keys("acme").await[0]["rate_limit"], limit);

    // Out of range is 400 JSON, on create and on PATCH, and changes nothing.
    let body = r#"{"rate_limit": {"requests": 5, "per_seconds": 86401}}"#;
    for (method, path) in [
        (Method::POST, "/admin/accounts/acme/keys"),
        (Method::PATCH, path.as_str()),
    ] {
        let refused = server.admin_json(method.clone(), path, body).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{method}");
        assert!(refused.json()["error"].is_string(), "{method}");
    }
    assert_eq!(server.list_keys("acme").await.len(), 1);
    assert_eq!(
        server.admin(Method::GET, &path).await.json()["rate_limit"],
        limit
    );

    // PATCH with null clears it; the record shows null.
    let patched = server
        .admin_json(Method::PATCH, &path, r#"{"rate_limit": null}"#)
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    let patched = patched.json();
    assert!(patched["rate_limit"].is_null(), "{patched}");
    assert_eq!(server.admin(Method::GET, &path).await.json(), patched);
}

#[tokio::test]
async fn write_needs_the_write_scope_and_bearer_works_on_the_api() {
    let server = Launch::new().start().await;
    let create = |body: &'static str| {
        let server = &server;
        async move { str_field(&server.create_key_with("acme", body).await, "key").to_owned() }
    };
    let unrestricted = create("{}").await;
    let writer = create(r#"{"scopes": ["read", "write"]}"#).await;
    let reader = create(r#"{"scopes": ["read"]}"#).await;
    for (key, status) in [
        (&unrestricted, StatusCode::OK),
        (&writer, StatusCode::OK),
        (&reader, StatusCode::FORBIDDEN),
    ] {
        let reply = server
            .request(Method::POST, "/v1/write", &[("x-api-key", key)])
            .await;
        assert_eq!(reply.status, status, "{}", reply.text());
        if status == StatusCode::FORBIDDEN {
            assert_eq!(reply.text(), r#"{"error":"insufficient scope"}"#);
        }
        // Every key passes the unscoped routes, as a Bearer token too.
        let bearer = format!("Bearer {key}");
        let ping = server
            .request(Method::GET, "/v1/ping", &[("authorization", &bearer)])
            .await;
        assert_eq!(ping.status, StatusCode::OK, "{}", ping.text());
        assert_eq!(ping.text(), "pong");
    }
    let reply = server.request(Method::POST, "/v1/write", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.text(), MISSING_KEY);
    let bearer = format!("Bearer {writer}");
    let reply = server
        .request(Method::POST, "/v1/write", &[("authorization", &bearer)])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

// ===== admin rules =====

#[tokio::test]
async fn answers_carrying_a_key_tell_caches_not_to_store_them() {
    let server = Launch::new().start().await;
    let no_store = |reply: &crate::support::demo::Reply, what: &str| {
        let value = reply
            .headers
            .get(CACHE_CONTROL)
            .map(|v| v.to_str().unwrap());
        assert_eq!(value, Some("no-store"), "{what}: {:?}", reply.headers);
    };
    let created = server
        .admin(Method::POST, "/admin/accounts/acme/keys")
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert!(created.json()["key"].is_string());
    no_store(&created, "create");
    let id = str_field(&created.json(), "id").to_owned();
    let rotated = server.key_action("acme", &id, "rotate").await;
    assert!(rotated.json()["key"].is_string());
    no_store(&rotated, "rotate");
    // Every admin answer, so that a route added later can't forget it.
    let listed = server.admin(Method::GET, "/admin/accounts/acme/keys").await;
    no_store(&listed, "list");
}

#[tokio::test]
async fn admin_routes_require_the_admin_token() {
    let server = Launch::new().start().await;
    let path = "/admin/accounts/acme/keys";
    let wrong = format!("Bearer {ADMIN_TOKEN}x");
    let basic = format!("Basic {ADMIN_TOKEN}");
    for headers in [
        &[][..],
        &[("authorization", wrong.as_str())][..],
        &[("authorization", basic.as_str())][..],
        &[("authorization", "Bearer ")][..],
        &[("x-api-key", ADMIN_TOKEN)][..],
    ] {
        for method in [Method::GET, Method::POST] {
            let reply = server.request(method.clone(), path, headers).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} with {headers:?}"
            );
            assert!(reply.content_type().starts_with("application/json"));
            assert!(reply.json()["error"].is_string(), "{}", reply.text());
        }
    }
    // Refused attempts changed nothing; the right token works (and needs no API key).
    assert!(server.list_keys("acme").await.is_empty());
    let lower = format!("bearer {ADMIN_TOKEN}");
    let reply = server
        .request(Method::POST, path, &[("authorization", lower.as_str())])
        .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "the scheme is case-insensitive"
    );
}

#[tokio::test]
async fn bad_account_is_400_and_never_a_500() {
    let server = Launch::new().start().await;
    let long = "a".repeat(65);
    let uuid = "00000000-0000-4000-8000-000000000000";
    for account in ["a.b", "a%20b", "%C3%A9", "%FF", "a%2Fb", long.as_str(), "~"] {
        for (method, path) in [
            (Method::POST, format!("/admin/accounts/{account}/keys")),
            (Method::GET, format!("/admin/accounts/{account}/keys")),
            (
                Method::POST,
                format!("/admin/accounts/{account}/keys/{uuid}/revoke"),
            ),
            (
                Method::POST,
                format!("/admin/accounts/{account}/keys/{uuid}/rotate"),
            ),
            (
                Method::DELETE,
                format!("/admin/accounts/{account}/keys/{uuid}"),
            ),
        ] {
            let reply = server.admin(method.clone(), &path).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{method} {path}: {}",
                reply.text()
            );
            assert!(reply.json()["error"].is_string());
        }
    }
    // The longest valid account id is fine.
    server.create_key(&"a".repeat(64)).await;
}

#[tokio::test]
async fn unknown_malformed_or_other_accounts_key_id_is_404() {
    let server = Launch::new().start().await;
    let theirs = server.create_key("other").await;
    let their_id = str_field(&theirs, "id");
    for id in [
        "00000000-0000-4000-8000-000000000000",
        "not-a-uuid",
        "%FF%FE",
        their_id,
    ] {
        for action in ["rotate", "revoke", "reactivate"] {
            let reply = server.key_action("acme", id, action).await;
            assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "{action} {id}: {}",
                reply.text()
            );
            assert!(reply.json()["error"].is_string());
        }
        let reply = server
            .admin(Method::DELETE, &format!("/admin/accounts/acme/keys/{id}"))
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "delete {id}");
        assert!(reply.json()["error"].is_string());
    }
    // Nothing happened to the other account's key.
    let listed = server.list_keys("other").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "active");
    assert_eq!(listed[0]["prefix"], theirs["prefix"]);
    assert_accepted(&server, str_field(&theirs, "key")).await;
}

// ===== the layer's answers over HTTP =====

#[tokio::test]
async fn missing_key_is_401_json_and_a_bad_key_is_401_invalid() {
    let server = Launch::new().start().await;
    for path in ["/v1/ping", "/v1/whoami"] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(reply.content_type(), "application/json");
        assert_eq!(reply.text(), MISSING_KEY);
    }
    let lookalike = format!("abcdefgh.{}", "A".repeat(49));
    for bad in ["nope", lookalike.as_str(), ADMIN_TOKEN] {
        let reply = server.get_with_key("/v1/whoami", bad).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(reply.content_type(), "application/json");
        assert_eq!(reply.text(), INVALID_KEY);
    }
    // The admin token is no API key, and an API key is no admin token.
    let created = server.create_key("acme").await;
    let key = str_field(&created, "key");
    let bearer = format!("Bearer {key}");
    let reply = server
        .request(
            Method::GET,
            "/admin/accounts/acme/keys",
            &[("authorization", &bearer), ("x-api-key", key)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn healthz_and_metrics_are_open_and_metrics_count_outcomes() {
    let server = Launch::new().start().await;
    let healthz = server.get("/healthz").await;
    assert_eq!(healthz.status, StatusCode::OK);
    assert!(healthz.content_type().starts_with("text/plain"));
    assert_eq!(healthz.text(), "ok");

    let key = server.create_key("acme").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_accepted(&server, &key).await;
    assert_accepted(&server, &key).await;
    assert_refused(&server, "garbage").await;
    assert_eq!(
        server.get("/v1/ping").await.status,
        StatusCode::UNAUTHORIZED
    );
    // Open routes and admin routes don't go through the layer.
    server.get("/healthz").await;
    server.list_keys("acme").await;

    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(metrics.content_type(), "text/plain; version=0.0.4");
    let text = metrics.text();
    assert_eq!(
        metric(text, r#"api_key_requests_total{outcome="accepted"}"#),
        2
    );
    assert_eq!(
        metric(text, r#"api_key_requests_total{outcome="invalid"}"#),
        1
    );
    assert_eq!(
        metric(text, r#"api_key_requests_total{outcome="missing"}"#),
        1
    );
    assert_eq!(
        metric(text, r#"api_key_requests_total{outcome="unavailable"}"#),
        0
    );
    assert!(!text.contains(&key[9..]));
}

#[tokio::test]
async fn unknown_routes_are_404_with_or_without_a_key() {
    let server = Launch::new().start().await;
    let key = server.create_key("acme").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        "/",
        "/nope",
        "/v1",
        "/v1/pong",
        "/admin",
        "/admin/accounts/acme",
    ] {
        assert_eq!(
            server.get(path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
        assert_eq!(
            server.get_with_key(path, &key).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_integration_page_is_served_without_a_key_with_strict_headers() {
    let server = Launch::new().start().await;
    let page = server.get("/integration").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.content_type().starts_with("text/html"),
        "{}",
        page.content_type()
    );
    assert!(
        page.text()
            .contains(r#"<label for="token">Admin token</label>"#)
    );
    let csp = page.headers["content-security-policy"]
        .to_str()
        .expect("ascii");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    for asset in ["/integration/page.js", "/integration/page.css"] {
        assert_eq!(server.get(asset).await.status, StatusCode::OK, "{asset}");
    }
}

// ===== gRPC on the same port =====

#[tokio::test]
async fn grpc_health_check_shares_the_port_and_the_api_key_rules() {
    let server = Launch::new().start().await;

    let missing = server.grpc_health(None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    let garbage = server.grpc_health(Some("garbage")).await.unwrap_err();
    assert_eq!(garbage.code(), Code::Unauthenticated, "{garbage:?}");

    let created = server.create_key("acme").await;
    let key = str_field(&created, "key");
    assert_eq!(
        server.grpc_health(Some(key)).await.expect("SERVING"),
        SERVING
    );

    let revoked = server
        .key_action("acme", str_field(&created, "id"), "revoke")
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let refused = server.grpc_health(Some(key)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // HTTP/1.1 keeps working beside HTTP/2 on the same port.
    assert_refused(&server, key).await;
    server
        .key_action("acme", str_field(&created, "id"), "reactivate")
        .await;
    assert_eq!(
        server.grpc_health(Some(key)).await.expect("SERVING"),
        SERVING
    );
}

// ===== lifecycle of the process =====

#[tokio::test]
async fn sigterm_shuts_down_gracefully_flushing_last_used_and_exits_0() {
    // A long flush interval: the flusher's first flush is a minute after the server starts, so
    // the use below is still pending when SIGTERM arrives.
    let server = Launch::new()
        .arg("--last-used-flush-ms")
        .arg("60000")
        .start()
        .await;
    let key = server.create_key("acme").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_accepted(&server, &key).await;

    server.send_sigterm();
    let (status, log) = server.wait_for_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    let flushed = |line: &&str| line.contains("flushed pending last-used times");
    assert!(
        log.lines()
            .filter(flushed)
            .any(|line| line.contains("keys=1")),
        "the pending use was not flushed on shutdown:\n{log}"
    );
}

#[tokio::test]
async fn sigterm_lets_an_open_grpc_stream_finish_and_reports_not_serving() {
    let mut server = Launch::new().start().await;
    let key = server.create_key("acme").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut watch = server
        .health_client()
        .await
        .watch(with_key(HealthCheckRequest::default(), Some(&key)))
        .await
        .expect("watch is let through with a valid key")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), watch.message()).await;
    assert_eq!(first.unwrap().unwrap().unwrap().status, SERVING);

    server.send_sigterm();
    // The stream started before the signal stays open and hears the server going down.
    let update = tokio::time::timeout(Duration::from_secs(30), watch.message()).await;
    let update = update
        .expect("an update after SIGTERM")
        .expect("the stream is still open");
    assert_eq!(update.unwrap().status, ServingStatus::NotServing as i32);
    assert!(server.is_running(), "the server waits for the open stream");

    // Once the client is done, the server finishes shutting down.
    drop(watch);
    let (status, log) = server.wait_for_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(!log.contains("grace period"), "{log}");
}

#[tokio::test]
async fn a_short_admin_token_exits_with_code_2_without_repeating_it() {
    // 15 characters: one short of the minimum.
    let token = "sh0rt-t0ken-15c";
    let output = Launch::new().env("ADMIN_TOKEN", token).run_to_exit().await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ADMIN_TOKEN") && stderr.contains("at least 16"),
        "{stderr}"
    );
    assert!(!stderr.contains(token), "the token is not echoed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.stdout.is_empty(), "it never listened");
}

#[tokio::test]
async fn invalid_pepper_exits_with_code_2_and_a_clear_message() {
    for pepper in ["zz", "0123", &"g".repeat(64), &"ab".repeat(33)] {
        let output = Launch::new()
            .env("API_KEY_PEPPER", pepper)
            .run_to_exit()
            .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{pepper}: {stderr}");
        assert!(
            stderr.contains("API_KEY_PEPPER") && stderr.contains("64 hex"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            output.stdout.is_empty(),
            "nothing on stdout: it never listened"
        );
    }
}

#[tokio::test]
async fn bad_arguments_exit_with_code_2_and_a_clear_message() {
    let cases = [
        (Launch::new().arg("--bogus"), "--bogus"),
        (
            Launch::new().arg("--last-used-flush-ms"),
            "a value is required",
        ),
        (Launch::new().arg("--addr").arg("nonsense"), "HOST:PORT"),
        (Launch::new().arg("--addr=127.0.0.1:99999"), "HOST:PORT"),
        (
            Launch::new().arg("--last-used-flush-ms").arg("0"),
            "--last-used-flush-ms",
        ),
        (
            Launch::new().arg("--last-used-flush-ms=-5"),
            "--last-used-flush-ms",
        ),
        (
            Launch::new().arg("--last-used-flush-ms=1e3"),
            "--last-used-flush-ms",
        ),
        (
            Launch::new().env("LAST_USED_FLUSH_MS", "soon"),
            "LAST_USED_FLUSH_MS",
        ),
        (
            Launch::new().without_addr_flag().env("ADDR", "localhost"),
            "ADDR",
        ),
        (
            Launch::new().arg("--header-read-timeout-ms=0"),
            "--header-read-timeout-ms",
        ),
        (
            Launch::new().arg("--header-read-timeout-ms").arg("soon"),
            "--header-read-timeout-ms",
        ),
        (
            Launch::new().env("HEADER_READ_TIMEOUT_MS", "-1"),
            "HEADER_READ_TIMEOUT_MS",
        ),
        (
            Launch::new().arg("--max-connections").arg("0"),
            "--max-connections",
        ),
        (
            Launch::new().arg("--max-connections=1.5"),
            "--max-connections",
        ),
        (
            Launch::new().env("MAX_CONNECTIONS", "many"),
            "MAX_CONNECTIONS",
        ),
        (
            Launch::new().arg("--audit-retention-days=0"),
            "--audit-retention-days",
        ),
        (
            Launch::new().env("AUDIT_RETENTION_DAYS", "36501"),
            "AUDIT_RETENTION_DAYS",
        ),
    ];
    for (launch, expected) in cases {
        let described = format!("{launch:?}");
        let output = launch.run_to_exit().await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{described}: {stderr}");
        assert!(stderr.contains(expected), "{described}: {stderr}");
        assert!(!stderr.contains("panicked"), "{described}: {stderr}");
    }

    let help = Launch::new().arg("--help").run_to_exit().await;
    assert_eq!(help.status.code(), Some(0));
    let usage = String::from_utf8_lossy(&help.stdout);
    assert!(
        [
            "--addr",
            "--last-used-flush-ms",
            "--header-read-timeout-ms",
            "--max-connections",
            "--audit-retention-days"
        ]
        .iter()
        .all(|flag| usage.contains(flag)),
        "{usage}"
    );
}

#[tokio::test]
async fn flags_win_over_environment_and_environment_is_read() {
    // ADDR is unusable, but the flag wins (and the bad value is not even looked at).
    let server = Launch::new()
        .env("ADDR", "not an address")
        .arg("--addr")
        .arg("127.0.0.1:0")
        .env("LAST_USED_FLUSH_MS", "never")
        .arg("--last-used-flush-ms=100")
        .start()
        .await;
    assert_eq!(server.get("/healthz").await.text(), "ok");
    drop(server);

    // Without the flag, ADDR is used.
    let server = Launch::new()
        .without_addr_flag()
        .env("ADDR", "127.0.0.1:0")
        .start()
        .await;
    assert!(server.addr.ip().is_loopback());
    assert_eq!(server.get("/healthz").await.text(), "ok");
}

#[tokio::test]
async fn unset_secrets_generate_a_printed_admin_token_and_warn_about_the_pepper() {
    let server = Launch::new()
        .env_remove("ADMIN_TOKEN")
        .env_remove("API_KEY_PEPPER")
        .start()
        .await;
    let token = server
        .generated_admin_token
        .clone()
        .expect("the generated admin token is printed on stdout");
    assert!(token.len() >= 32, "{token:?}");
    let log = server.log_containing("API_KEY_PEPPER").await;
    assert!(
        !log.contains(&token),
        "the token is printed once, on stdout only"
    );

    let bearer = format!("Bearer {token}");
    let created = server
        .request(
            Method::POST,
            "/admin/accounts/acme/keys",
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_accepted(&server, str_field(&created.json(), "key")).await;
    // The test's usual token is not this server's.
    let refused = server.admin(Method::GET, "/admin/accounts/acme/keys").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}

// ===== connection defences =====

/// Generous: only a server that never closes the connection should take this long.
const CLOSE_BOUND: Duration = Duration::from_secs(10);

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n";

/// `GET /healthz` on a kept-alive connection; `true` once `ok` is read, `false` if the server
/// closed the connection without answering.
async fn healthz_on(stream: &mut TcpStream) -> bool {
    if stream.write_all(HEALTHZ).await.is_err() {
        return false;
    }
    let mut received = Vec::new();
    let answered = tokio::time::timeout(CLOSE_BOUND, async {
        let mut chunk = [0u8; 4096];
        // The answer is small; it ends with the body `ok` (Content-Length: 2).
        while !(received.starts_with(b"HTTP/1.1 200") && received.ends_with(b"\r\n\r\nok")) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
    .await;
    answered.expect("an answer or a close within the bound")
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_cut_off() {
    let server = Launch::new()
        .arg("--header-read-timeout-ms=200")
        .start()
        .await;
    let stalls: [&[u8]; 3] = [
        // Half an HTTP/1.1 head.
        b"GET /v1/ping HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-k",
        // Half the HTTP/2 preface: the protocol is not even known yet.
        b"PRI * HTTP/2.0\r\n",
        // Nothing at all.
        b"",
    ];
    for stall in stalls {
        let case = String::from_utf8_lossy(stall);
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(stall).await.expect("write");
        let answer = read_until_closed(&mut stream, CLOSE_BOUND).await;
        let answer = answer.unwrap_or_else(|| {
            panic!("{case:?}: still open after {CLOSE_BOUND:?} with a 200 ms timeout")
        });
        // hyper may say 408 before closing; the request never reached the app.
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
            "{case:?}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    // A client that sends its request at once is served as usual.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    assert!(healthz_on(&mut stream).await);
    assert_eq!(server.get("/healthz").await.text(), "ok");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_a_freed_slot_is_served_again() {
    // A long header timeout, so that the held idle connections stay open.
    let server = Launch::new()
        .arg("--max-connections=2")
        .arg("--header-read-timeout-ms=600000")
        .start()
        .await;
    let mut first = TcpStream::connect(server.addr).await.expect("connect");
    let mut second = TcpStream::connect(server.addr).await.expect("connect");
    assert!(healthz_on(&mut first).await, "first connection served");
    assert!(healthz_on(&mut second).await, "second connection served");

    // A third is closed without an answer, not queued.
    let mut third = TcpStream::connect(server.addr).await.expect("connect");
    let _ = third.write_all(HEALTHZ).await;
    let answer = read_until_closed(&mut third, CLOSE_BOUND)
        .await
        .expect("the third connection is closed");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // The held ones are still served.
    assert!(healthz_on(&mut second).await);

    // Once one closes, its slot is free again (as soon as the server has seen the close).
    drop(first);
    let deadline = Instant::now() + CLOSE_BOUND;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        if healthz_on(&mut stream).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new connection served in {CLOSE_BOUND:?} ({attempts} attempts)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(healthz_on(&mut second).await);
}

// ===== --database-url =====

#[tokio::test]
async fn a_database_url_of_an_unknown_kind_exits_2_without_repeating_it() {
    for (launch, source) in [
        (
            Launch::new()
                .arg("--database-url")
                .arg("mysql://u:pw-s3cret@h/db"),
            "--database-url",
        ),
        (
            Launch::new().env("DATABASE_URL", "mysql://u:pw-s3cret@h/db"),
            "DATABASE_URL",
        ),
        (
            Launch::new().arg("--database-url=pw-s3cret"),
            "--database-url",
        ),
    ] {
        let output = launch.run_to_exit().await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(source)
                && stderr.contains("postgres://")
                && stderr.contains("sqlite://"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("pw-s3cret"),
            "the URL may hold a password: {stderr}"
        );
    }
    let help = Launch::new().arg("--help").run_to_exit().await;
    assert!(String::from_utf8_lossy(&help.stdout).contains("--database-url"));
}

#[tokio::test]
async fn an_unreachable_database_stops_the_server_before_it_listens() {
    let output = Launch::new()
        // Port 1 on loopback: nothing listens there.
        .arg("--database-url")
        .arg(if cfg!(feature = "postgres") {
            "postgres://nobody:pw-s3cret@127.0.0.1:1/nothing?connect_timeout=2"
        } else {
            "sqlite:///nonexistent-dir/for/sure/keys.db"
        })
        .run_to_exit()
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(output.stdout.is_empty(), "it never listened");
    assert!(!stderr.contains("pw-s3cret"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn with_a_sqlite_database_keys_last_used_and_usage_survive_a_restart() {
    let url = crate::support::db::sqlite::fresh_url();
    let launch = || {
        Launch::new()
            .arg("--database-url")
            .arg(&url)
            .arg("--last-used-flush-ms")
            .arg("60000")
    };
    let server = launch().start().await;
    let created = server.create_key("acme").await;
    let (id, key) = (str_field(&created, "id"), str_field(&created, "key"));
    let revoked = server.create_key("acme").await;
    assert_accepted(&server, key).await;
    assert_eq!(
        server
            .key_action("acme", str_field(&revoked, "id"), "revoke")
            .await
            .status,
        StatusCode::OK
    );
    server.send_sigterm();
    let (status, log) = server.wait_for_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{log}");

    // Same file, same pepper: a new process knows the keys and the flushed use.
    let server = launch().start().await;
    assert_accepted(&server, key).await;
    assert_refused(&server, str_field(&revoked, "key")).await;
    let listed = server.list_keys("acme").await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], id);
    assert!(listed[0]["last_used_at"].is_string(), "{}", listed[0]);
    // The request's count, written by the flush at shutdown, is still there.
    assert_eq!(listed[0]["requests_24h"], 1, "{}", listed[0]);
    assert_eq!(listed[1]["status"], "inactive");
    // The limit counts the stored keys.
    server.create_key("acme").await;
    let fourth = server
        .admin(Method::POST, "/admin/accounts/acme/keys")
        .await;
    assert_eq!(fourth.status, StatusCode::CONFLICT);
}
