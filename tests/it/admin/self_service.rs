//! Least privilege for an account's own users: a tenant manages its own account's keys and
//! may narrow what they can do, never widen it; what it may not do is 403 and changes
//! nothing, and another account looks exactly like a missing key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tower_api_key::admin::{
    AdminAttempt, AdminAuthorizer, AdminCaller, AdminDenied, AdminOperation, AdminToken,
    AdminTokens, KeyCeiling, SelfService,
};
use tower_api_key::{RateLimit, Scopes};

use super::{Harness, text};
use crate::support::account;

const ACME: &str = "tenant-token-of-acme-0123456789";
const GLOBEX: &str = "tenant-token-of-globex-0123456789";
const NOT_ALLOWED: &str = "not allowed for this caller";
const UUID: &str = "00000000-0000-4000-8000-000000000000";

fn tokens() -> AdminTokens {
    super::operator_and_tenants(ACME, GLOBEX)
}

fn key_path(id: &str) -> String {
    format!("/admin/accounts/acme/keys/{id}")
}

/// An operator-made key of acme: read and write, 100 per minute, expiring in 2090.
async fn bounded_key(admin: &Harness) -> (String, Value) {
    let created = admin
        .create(
            "acme",
            Some(
                r#"{"scopes":["read","write"],"rate_limit":{"requests":100,"per_seconds":60},
                    "expires_at":"2090-01-01T00:00:00Z"}"#,
            ),
        )
        .await;
    let id = text(&created, "id").to_owned();
    let record = admin.list("acme").await.remove(0);
    (id, record)
}

#[tokio::test]
async fn a_tenant_narrows_its_own_keys_in_every_way() {
    let admin = Harness::with_authorizer(tokens()).await;
    let (id, before) = bounded_key(&admin).await;
    let path = key_path(&id);
    let earlier = "2080-01-01T00:00:00Z";
    for body in [
        r#"{"name":"narrowed"}"#.to_owned(),
        r#"{"name":null}"#.to_owned(),
        r#"{"scopes":["read"]}"#.to_owned(),
        r#"{"scopes":[]}"#.to_owned(),
        // As many requests over a longer window, and fewer over the same one.
        r#"{"rate_limit":{"requests":100,"per_seconds":120}}"#.to_owned(),
        r#"{"rate_limit":{"requests":10,"per_seconds":120}}"#.to_owned(),
        format!(r#"{{"expires_at":"{earlier}"}}"#),
        // Unchanged values widen nothing.
        format!(r#"{{"scopes":[],"expires_at":"{earlier}"}}"#),
    ] {
        let reply = admin.send_as(ACME, Method::PATCH, &path, Some(&body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.text());
    }
    let record = admin.list("acme").await.remove(0);
    assert_eq!(record["scopes"], json!([]));
    assert_eq!(
        record["rate_limit"],
        json!({"requests": 10, "per_seconds": 120})
    );
    assert_eq!(record["expires_at"], "2080-01-01T00:00:00.000000Z");
    assert_ne!(record, before);

    for action in ["revoke", "reactivate", "rotate"] {
        let reply = admin
            .send_as(ACME, Method::POST, &format!("{path}/{action}"), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{action}: {}", reply.text());
    }
    let reply = admin
        .send_as(
            ACME,
            Method::POST,
            &format!("{path}/rotate"),
            Some(r#"{"grace_seconds":600}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = admin
        .send_as(ACME, Method::GET, "/admin/accounts/acme/keys", None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = admin.send_as(ACME, Method::DELETE, &path, None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    // Without a ceiling, a tenant creates keys like the account-level keys of old.
    let reply = admin
        .send_as(ACME, Method::POST, "/admin/accounts/acme/keys", None)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

#[tokio::test]
async fn a_tenant_that_widens_a_key_is_403_and_nothing_changes() {
    let admin = Harness::with_authorizer(tokens()).await;
    let (id, before) = bounded_key(&admin).await;
    let path = key_path(&id);
    for body in [
        r#"{"scopes":null}"#,
        r#"{"scopes":["read","write","admin"]}"#,
        r#"{"scopes":["admin"]}"#,
        r#"{"rate_limit":null}"#,
        r#"{"rate_limit":{"requests":101,"per_seconds":60}}"#,
        r#"{"rate_limit":{"requests":100,"per_seconds":59}}"#,
        // Fewer at once, but a faster sustained rate: 2 a second against 100 a minute.
        r#"{"rate_limit":{"requests":20,"per_seconds":10}}"#,
        r#"{"expires_at":null}"#,
        r#"{"expires_at":"9999-01-01T00:00:00Z"}"#,
        // A narrowing beside a widening is still a widening.
        r#"{"name":"x","scopes":["read"],"expires_at":null}"#,
    ] {
        let reply = admin.send_as(ACME, Method::PATCH, &path, Some(body)).await;
        reply.assert_error(StatusCode::FORBIDDEN, body);
        assert_eq!(reply.json()["error"], NOT_ALLOWED, "{body}");
    }
    assert_eq!(admin.list("acme").await, vec![before]);
    // The operator is not limited.
    admin
        .patch(
            "acme",
            &id,
            r#"{"scopes":null,"expires_at":null,"rate_limit":null}"#,
        )
        .await;
}

#[tokio::test]
async fn an_expired_or_unlimited_key_stays_so_for_its_tenant() {
    let admin = Harness::with_authorizer(tokens()).await;
    let created = admin
        .create("acme", Some(r#"{"expires_in_seconds":3600}"#))
        .await;
    let id = text(&created, "id").to_owned();
    admin
        .patch("acme", &id, r#"{"expires_at":"2001-01-01T00:00:00Z"}"#)
        .await;
    let path = key_path(&id);
    for body in [
        r#"{"expires_at":null}"#,
        r#"{"expires_at":"2001-01-02T00:00:00Z"}"#,
    ] {
        let reply = admin.send_as(ACME, Method::PATCH, &path, Some(body)).await;
        reply.assert_error(StatusCode::FORBIDDEN, body);
    }
    // An unrestricted key may be restricted, and a limit or an expiry added.
    let plain = admin.create("acme", None).await;
    let path = key_path(text(&plain, "id"));
    let body = r#"{"scopes":["read"],"rate_limit":{"requests":5,"per_seconds":1},"expires_at":"2100-01-01T00:00:00Z"}"#;
    let reply = admin.send_as(ACME, Method::PATCH, &path, Some(body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn another_accounts_keys_are_404_byte_for_byte_a_missing_one() {
    let admin = Harness::with_authorizer(tokens()).await;
    let (id, before) = bounded_key(&admin).await;
    let missing = admin
        .send_as(
            GLOBEX,
            Method::GET,
            &format!("/admin/accounts/globex/keys/{UUID}"),
            None,
        )
        .await;
    missing.assert_error(StatusCode::NOT_FOUND, "missing key");
    let path = key_path(&id);
    let attempts: Vec<(Method, String, Option<&str>)> = vec![
        (Method::GET, "/admin/accounts/acme/keys".to_owned(), None),
        (Method::POST, "/admin/accounts/acme/keys".to_owned(), None),
        (Method::GET, path.clone(), None),
        (Method::PATCH, path.clone(), Some(r#"{"name":"mine"}"#)),
        (Method::POST, format!("{path}/rotate"), None),
        (Method::POST, format!("{path}/revoke"), None),
        (Method::POST, format!("{path}/reactivate"), None),
        (Method::DELETE, path.clone(), None),
    ];
    for (method, path, body) in attempts {
        let reply = admin.send_as(GLOBEX, method.clone(), &path, body).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(reply.body, missing.body, "{method} {path}");
        assert_eq!(
            reply.headers.get("content-type"),
            missing.headers.get("content-type")
        );
    }
    assert_eq!(admin.list("acme").await, vec![before]);
    // A token nobody was given is 401.
    let reply = admin
        .send_as(
            "tenant-token-of-nobody-0123456789",
            Method::GET,
            "/admin/accounts/acme/keys",
            None,
        )
        .await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unknown token");
}

#[tokio::test]
async fn a_ceiling_bounds_what_a_tenant_creates_but_not_the_operator() {
    let ceiling = KeyCeiling::new()
        .scopes(Scopes::new(["read", "write"]).expect("scopes"))
        .rate_limit(RateLimit::new(100, 60).expect("limit"))
        .lifetime(Duration::from_secs(30 * 86_400));
    let admin =
        Harness::with_authorizer(tokens().self_service(SelfService::new().ceiling(ceiling))).await;
    let keys = "/admin/accounts/acme/keys";
    for body in [
        "{}",
        r#"{"scopes":["read"],"rate_limit":{"requests":10,"per_seconds":60}}"#,
        r#"{"scopes":["admin"],"rate_limit":{"requests":10,"per_seconds":60},"expires_in_seconds":60}"#,
        r#"{"scopes":["read"],"rate_limit":{"requests":1000,"per_seconds":60},"expires_in_seconds":60}"#,
        r#"{"scopes":["read"],"expires_in_seconds":60}"#,
        r#"{"scopes":["read"],"rate_limit":{"requests":10,"per_seconds":60},"expires_in_seconds":2592001}"#,
        r#"{"scopes":["read"],"rate_limit":{"requests":10,"per_seconds":60},"expires_at":"2999-01-01T00:00:00Z"}"#,
    ] {
        let reply = admin.send_as(ACME, Method::POST, keys, Some(body)).await;
        reply.assert_error(StatusCode::FORBIDDEN, body);
        assert_eq!(reply.json()["error"], NOT_ALLOWED, "{body}");
    }
    assert!(admin.list("acme").await.is_empty());
    let within = r#"{"name":"ci","scopes":["read"],"rate_limit":{"requests":10,"per_seconds":60},"expires_in_seconds":86400}"#;
    let reply = admin.send_as(ACME, Method::POST, keys, Some(within)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    admin.create("acme", None).await;
}

#[tokio::test]
async fn a_ceiling_can_bound_the_quota_and_addresses_of_a_tenants_new_keys() {
    use tower_api_key::policy::{AllowedIps, Quota, QuotaPeriod};

    let ceiling = KeyCeiling::new()
        .quota(Quota::new(1000, QuotaPeriod::Day).expect("quota"))
        .allowed_ips(AllowedIps::new(["10.0.0.0/8"]).expect("blocks"));
    let admin =
        Harness::with_authorizer(tokens().self_service(SelfService::new().ceiling(ceiling))).await;
    let keys = "/admin/accounts/acme/keys";
    for body in [
        "{}",
        r#"{"allowed_ips":["10.1.0.0/16"]}"#,
        r#"{"quota":{"requests":10,"period":"day"}}"#,
        r#"{"quota":{"requests":1001,"period":"day"},"allowed_ips":["10.1.0.0/16"]}"#,
        r#"{"quota":{"requests":10,"period":"month"},"allowed_ips":["10.1.0.0/16"]}"#,
        r#"{"quota":{"requests":10,"period":"day"},"allowed_ips":["10.1.0.0/16","192.0.2.1"]}"#,
    ] {
        let reply = admin.send_as(ACME, Method::POST, keys, Some(body)).await;
        reply.assert_error(StatusCode::FORBIDDEN, body);
        assert_eq!(reply.json()["error"], NOT_ALLOWED, "{body}");
    }
    assert!(admin.list("acme").await.is_empty());
    let within = r#"{"quota":{"requests":1000,"period":"day"},"allowed_ips":["10.1.0.0/16"]}"#;
    let reply = admin.send_as(ACME, Method::POST, keys, Some(within)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    // The operator isn't bound by it.
    admin.create("acme", None).await;
}

/// Records every attempt it is asked about, and lets everything through; every request
/// comes from `caller` (the operator by default).
#[derive(Default, Clone)]
struct Recording {
    seen: Arc<Mutex<Vec<String>>>,
    caller: Option<AdminCaller>,
}

#[async_trait]
impl AdminAuthorizer for Recording {
    async fn authenticate(&self, _request: &Parts) -> Result<AdminCaller, AdminDenied> {
        Ok(self.caller.clone().unwrap_or(AdminCaller::Operator))
    }

    async fn authorize(&self, attempt: &AdminAttempt<'_>) -> Result<(), AdminDenied> {
        let seen = match &attempt.operation {
            AdminOperation::Create(options) => format!(
                "create {} scopes={:?}",
                attempt.account,
                options
                    .scopes
                    .as_ref()
                    .map(|s| s.iter().collect::<Vec<_>>())
            ),
            AdminOperation::Update { key, update } => format!(
                "update {} {} from={:?} to={:?}",
                attempt.account,
                key.prefix,
                key.scopes.as_ref().map(|s| s.len()),
                update.scopes.as_ref().map(|s| s.as_ref().map(Scopes::len))
            ),
            other => format!("{} {}", other.name(), attempt.account),
        };
        self.seen.lock().expect("lock").push(seen);
        Ok(())
    }
}

#[tokio::test]
async fn the_authorizer_sees_the_action_and_the_requested_policy() {
    let recording = Recording::default();
    let admin = Harness::with_authorizer(recording.clone()).await;
    let created = admin.create("acme", Some(r#"{"scopes":["read"]}"#)).await;
    let (id, prefix) = (text(&created, "id"), text(&created, "prefix"));
    admin.patch("acme", id, r#"{"scopes":[]}"#).await;
    for action in ["rotate", "revoke", "reactivate"] {
        admin
            .on_key(Method::POST, "acme", id, &format!("/{action}"), None)
            .await;
    }
    admin.on_key(Method::GET, "acme", id, "", None).await;
    admin.list("acme").await;
    admin.on_key(Method::DELETE, "acme", id, "", None).await;
    assert_eq!(
        *recording.seen.lock().expect("lock"),
        vec![
            r#"create acme scopes=Some(["read"])"#.to_owned(),
            format!("update acme {prefix} from=Some(1) to=Some(Some(0))"),
            "rotate acme".to_owned(),
            "revoke acme".to_owned(),
            "reactivate acme".to_owned(),
            "get acme".to_owned(),
            "list acme".to_owned(),
            "delete acme".to_owned(),
        ]
    );
}

#[test]
fn a_token_names_one_caller() {
    assert!(AdminToken::new("short-tenant").is_err());
    let tokens = AdminTokens::new().tenant(account("acme"), AdminToken::new(ACME).expect("token"));
    assert!(tokens.knows(&AdminToken::new(ACME).expect("token")));
    assert!(!tokens.knows(&AdminToken::new(GLOBEX).expect("token")));
    let twice = std::panic::catch_unwind(|| tokens.operator(AdminToken::new(ACME).expect("token")));
    assert!(
        twice.is_err(),
        "a tenant's token can't silently become the operator's"
    );
}

#[tokio::test]
async fn a_tenant_naming_another_account_is_404_before_the_authorizer_or_the_store() {
    let recording = Recording {
        caller: Some(AdminCaller::Tenant(account("globex"))),
        ..Recording::default()
    };
    let admin = Harness::with_authorizer(recording.clone()).await;
    let created = admin
        .manager
        .create(&account("acme"))
        .await
        .expect("create");
    let path = key_path(&created.info.id.to_string());
    for (method, path, body) in [
        (Method::PATCH, path.clone(), Some(r#"{"name":"mine"}"#)),
        (Method::PATCH, path.clone(), Some(r#"{"name":1}"#)),
        (Method::POST, format!("{path}/revoke"), None),
    ] {
        let reply = admin.send_as("any", method.clone(), &path, body).await;
        reply.assert_error(StatusCode::NOT_FOUND, &format!("{method} {path} {body:?}"));
    }
    assert!(recording.seen.lock().expect("lock").is_empty());
}

/// An operator-made key of acme with an allowlist (a /24 and one address) and a daily quota
/// of 1000.
async fn fenced_key(admin: &Harness) -> (String, Value) {
    let created = admin
        .create(
            "acme",
            Some(
                r#"{"allowed_ips":["203.0.113.0/24","198.51.100.7"],
                    "quota":{"requests":1000,"period":"day"}}"#,
            ),
        )
        .await;
    let id = text(&created, "id").to_owned();
    let record = admin.list("acme").await.remove(0);
    (id, record)
}

#[tokio::test]
async fn a_tenant_that_widens_an_allowlist_or_a_quota_is_403_and_nothing_changes() {
    let admin = Harness::with_authorizer(tokens()).await;
    let (id, before) = fenced_key(&admin).await;
    let path = key_path(&id);
    for body in [
        // Any address again.
        r#"{"allowed_ips":null}"#,
        // An address added beside the old ones, a wider block, another address.
        r#"{"allowed_ips":["203.0.113.0/24","198.51.100.7","192.0.2.1"]}"#,
        r#"{"allowed_ips":["203.0.112.0/23"]}"#,
        r#"{"allowed_ips":["198.51.100.8"]}"#,
        r#"{"allowed_ips":["::/0"]}"#,
        // No cap, a higher one, another period (even with fewer requests).
        r#"{"quota":null}"#,
        r#"{"quota":{"requests":1001,"period":"day"}}"#,
        r#"{"quota":{"requests":1000,"period":"month"}}"#,
        r#"{"quota":{"requests":10,"period":"month"}}"#,
        // A narrowing beside a widening is still a widening.
        r#"{"name":"x","quota":{"requests":10,"period":"day"},"allowed_ips":null}"#,
        r#"{"allowed_ips":["203.0.113.9"],"quota":null}"#,
    ] {
        let reply = admin.send_as(ACME, Method::PATCH, &path, Some(body)).await;
        reply.assert_error(StatusCode::FORBIDDEN, body);
        assert_eq!(reply.json()["error"], NOT_ALLOWED, "{body}");
    }
    assert_eq!(admin.list("acme").await, vec![before]);
    // The operator is not limited.
    let record = admin
        .patch("acme", &id, r#"{"allowed_ips":null,"quota":null}"#)
        .await;
    assert!(record["allowed_ips"].is_null() && record["quota"].is_null());
}

#[tokio::test]
async fn a_tenant_narrows_an_allowlist_and_a_quota_or_adds_them() {
    let admin = Harness::with_authorizer(tokens()).await;
    let (id, _) = fenced_key(&admin).await;
    let path = key_path(&id);
    for body in [
        // Unchanged values widen nothing (written another way, too).
        r#"{"allowed_ips":["198.51.100.7/32","203.0.113.0/24"],"quota":{"requests":1000,"period":"day"}}"#,
        r#"{"allowed_ips":["203.0.113.0/25","198.51.100.7"]}"#,
        r#"{"quota":{"requests":999,"period":"day"}}"#,
        r#"{"allowed_ips":["203.0.113.9"],"quota":{"requests":1,"period":"day"}}"#,
    ] {
        let reply = admin.send_as(ACME, Method::PATCH, &path, Some(body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.text());
    }
    let record = admin.list("acme").await.remove(0);
    assert_eq!(record["allowed_ips"], json!(["203.0.113.9/32"]));
    assert_eq!(record["quota"], json!({"requests": 1, "period": "day"}));

    // A key with neither takes any allowlist and any quota, at update and at create.
    let plain = admin.create("acme", None).await;
    let body =
        r#"{"allowed_ips":["0.0.0.0/0","::/0"],"quota":{"requests":1000000000,"period":"month"}}"#;
    let reply = admin
        .send_as(
            ACME,
            Method::PATCH,
            &key_path(text(&plain, "id")),
            Some(body),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = admin
        .send_as(ACME, Method::POST, "/admin/accounts/acme/keys", Some(body))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(
        reply.json()["quota"],
        json!({"requests": 1_000_000_000, "period": "month"})
    );
}

#[tokio::test]
async fn metadata_is_the_operators_alone_even_to_clear() {
    let admin = Harness::with_authorizer(tokens()).await;
    let keys = "/admin/accounts/acme/keys";
    for body in [
        r#"{"metadata":{"plan":"enterprise"}}"#,
        r#"{"metadata":{}}"#,
        r#"{"name":"ci","metadata":{"plan":"free"}}"#,
    ] {
        let reply = admin.send_as(ACME, Method::POST, keys, Some(body)).await;
        reply.assert_error(StatusCode::FORBIDDEN, body);
        assert_eq!(reply.json()["error"], NOT_ALLOWED, "{body}");
    }
    assert!(admin.list("acme").await.is_empty(), "nothing created");

    let created = admin
        .create("acme", Some(r#"{"metadata":{"plan":"pro"}}"#))
        .await;
    let id = text(&created, "id");
    let before = admin.list("acme").await;
    let path = key_path(id);
    for body in [
        r#"{"metadata":{"plan":"enterprise"}}"#,
        // The same value, or none at all: still the operator's field.
        r#"{"metadata":{"plan":"pro"}}"#,
        r#"{"metadata":null}"#,
        r#"{"name":"mine","metadata":null}"#,
    ] {
        let reply = admin.send_as(ACME, Method::PATCH, &path, Some(body)).await;
        reply.assert_error(StatusCode::FORBIDDEN, body);
        assert_eq!(reply.json()["error"], NOT_ALLOWED, "{body}");
    }
    assert_eq!(admin.list("acme").await, before);
    // The tenant reads it, and changes the rest of the key.
    let reply = admin.send_as(ACME, Method::GET, &path, None).await;
    assert_eq!(reply.json()["metadata"], json!({"plan": "pro"}));
    let reply = admin
        .send_as(ACME, Method::PATCH, &path, Some(r#"{"name":"mine"}"#))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["metadata"], json!({"plan": "pro"}));
    // The operator sets and clears it.
    admin
        .patch("acme", id, r#"{"metadata":{"plan":"enterprise"}}"#)
        .await;
    let record = admin.patch("acme", id, r#"{"metadata":null}"#).await;
    assert!(record["metadata"].is_null());
}
