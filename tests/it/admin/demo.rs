//! The demo server's admin surface against hostile tenants, browsers and inputs: tenant
//! tokens (`--tenant-token`, `TENANT_TOKENS`) under the self-service rules, cross-site
//! requests, and a time it could not write back; and its usage counts, flushed in time.

use std::time::Duration;

use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::support::demo::{DemoServer, Launch};
use crate::support::wait;

const ACME: &str = "acme-tenant-token-0123456789";
const GLOBEX: &str = "globex-tenant-token-0123456789";
const INITECH: &str = "initech-tenant-token-0123456789";

async fn as_tenant(
    server: &DemoServer,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> crate::support::demo::Reply {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![(AUTHORIZATION.as_str(), bearer.as_str())];
    if body.is_some() {
        headers.push((CONTENT_TYPE.as_str(), "application/json"));
    }
    server
        .request_with_body(method, path, &headers, body.unwrap_or(""))
        .await
}

#[tokio::test]
async fn tenant_tokens_manage_their_own_account_and_only_narrow() {
    let server = Launch::new()
        .arg("--tenant-token")
        .arg(&format!("acme={ACME}"))
        .arg("--tenant-token")
        .arg(&format!("globex={GLOBEX}"))
        .start()
        .await;
    let keys = "/admin/accounts/acme/keys";
    let created = as_tenant(
        &server,
        ACME,
        Method::POST,
        keys,
        Some(r#"{"scopes":["read"]}"#),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let created: Value = created.json();
    let id = created["id"].as_str().expect("id");
    let key = format!("{keys}/{id}");

    // Narrowing is fine, widening is 403, and another account's key is the missing key's 404.
    let narrowed = as_tenant(&server, ACME, Method::PATCH, &key, Some(r#"{"scopes":[]}"#)).await;
    assert_eq!(narrowed.status, StatusCode::OK, "{}", narrowed.text());
    let widened = as_tenant(
        &server,
        ACME,
        Method::PATCH,
        &key,
        Some(r#"{"scopes":null}"#),
    )
    .await;
    assert_eq!(widened.status, StatusCode::FORBIDDEN, "{}", widened.text());
    assert_eq!(widened.text(), r#"{"error":"not allowed for this caller"}"#);
    let theirs = as_tenant(
        &server,
        GLOBEX,
        Method::POST,
        &format!("{key}/revoke"),
        None,
    )
    .await;
    let missing = as_tenant(
        &server,
        GLOBEX,
        Method::GET,
        "/admin/accounts/globex/keys/00000000-0000-4000-8000-000000000000",
        None,
    )
    .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.text(), missing.text());

    let listed = server.list_keys("acme").await;
    assert_eq!(listed[0]["scopes"], serde_json::json!([]));
    assert_eq!(listed[0]["status"], "active");
    // The operator has no such limits.
    let reply = server
        .admin_json(Method::PATCH, &key, r#"{"scopes":null}"#)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn tenant_tokens_come_from_the_environment_too() {
    let server = Launch::new()
        .env(
            "TENANT_TOKENS",
            &format!("globex={GLOBEX},initech={INITECH}"),
        )
        .start()
        .await;
    for (token, account) in [(GLOBEX, "globex"), (INITECH, "initech")] {
        let path = format!("/admin/accounts/{account}/keys");
        let reply = as_tenant(&server, token, Method::POST, &path, None).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{account}: {}",
            reply.text()
        );
    }
    let reply = as_tenant(
        &server,
        GLOBEX,
        Method::GET,
        "/admin/accounts/initech/keys",
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_short_or_malformed_tenant_token_exits_2_without_repeating_it() {
    let short = "acme=sh0rt-t0ken-15c";
    for (flag, value) in [
        (Some("--tenant-token"), short),
        (None, short),
        (Some("--tenant-token"), "no-account-given-0123456789"),
        (Some("--tenant-token"), "bad.account=long-enough-token-0123"),
        // One token for two callers: the operator's, or another tenant's.
        (None, "acme=demo-admin-token-for-tests"),
        (
            None,
            "acme=same-token-for-both-0123,globex=same-token-for-both-0123",
        ),
    ] {
        let launch = match flag {
            Some(flag) => Launch::new().arg(flag).arg(value),
            None => Launch::new().env("TENANT_TOKENS", value),
        };
        let output = launch.run_to_exit().await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{value}: {stderr}");
        let secret = value.split_once('=').map_or(value, |(_, token)| token);
        assert!(!stderr.contains(secret), "{value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(output.stdout.is_empty(), "it never listened");
    }
}

#[tokio::test]
async fn the_demo_refuses_cross_site_changes_and_times_it_cannot_write() {
    let server = Launch::new().start().await;
    let keys = "/admin/accounts/acme/keys";
    let bearer = format!("Bearer {}", crate::support::demo::ADMIN_TOKEN);
    // A text/plain body is a "simple" request a page on any site can send.
    let reply = server
        .request_with_body(
            Method::POST,
            keys,
            &[
                (AUTHORIZATION.as_str(), &bearer),
                (CONTENT_TYPE.as_str(), "text/plain"),
            ],
            "{}",
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{}",
        reply.text()
    );
    let created = server.create_key("acme").await;
    let id = created["id"].as_str().expect("id");
    let reply = server
        .request(
            Method::POST,
            &format!("{keys}/{id}/revoke"),
            &[
                (AUTHORIZATION.as_str(), &bearer),
                ("origin", "https://evil.example"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.text(), r#"{"error":"cross-site request refused"}"#);

    // Year 10000 in UTC: refused, and the account's list still answers.
    let reply = server
        .admin_json(
            Method::POST,
            keys,
            r#"{"expires_at":"9999-12-31T23:59:59-23:59"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert!(reply.text().contains("expires_at"), "{}", reply.text());
    let listed = server.list_keys("acme").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "active");
}

/// Accepted, rate limited and refused, added up over a usage answer's buckets.
fn usage_totals(usage: &Value) -> (u64, u64, u64) {
    let buckets = usage["buckets"].as_array().expect("buckets");
    let sum = |field: &str| -> u64 {
        buckets
            .iter()
            .map(|bucket| bucket[field].as_u64().expect("a count"))
            .sum()
    };
    (sum("accepted"), sum("rate_limited"), sum("refused"))
}

#[tokio::test]
async fn the_demo_counts_a_keys_requests_and_shows_them_once_flushed() {
    const FLUSH: Duration = Duration::from_millis(300);
    let server = Launch::new()
        .arg("--last-used-flush-ms")
        .arg(&FLUSH.as_millis().to_string())
        .start()
        .await;
    let created = server
        .create_key_with(
            "acme",
            r#"{"scopes": ["read"], "rate_limit": {"requests": 4, "per_seconds": 86400}}"#,
        )
        .await;
    assert_eq!(created["requests_24h"], 0);
    let id = created["id"].as_str().expect("id");
    let key = created["key"].as_str().expect("key");
    // Three let in, one refused for a scope the key lacks, one over the rate limit.
    for _ in 0..3 {
        assert_eq!(
            server.get_with_key("/v1/ping", key).await.status,
            StatusCode::OK
        );
    }
    let write = server
        .request(Method::POST, "/v1/write", &[("x-api-key", key)])
        .await;
    assert_eq!(write.status, StatusCode::FORBIDDEN, "{}", write.text());
    assert_eq!(
        server.get_with_key("/v1/ping", key).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Both routes show them once the server has flushed (every 300 ms here). The wait is the
    // suite's generous one, not the interval: a loaded machine may be slower, and a test must
    // not fail by its scheduling alone.
    let key_usage = format!("/admin/accounts/acme/keys/{id}/usage");
    let read = |path: String| {
        let server = &server;
        async move {
            let reply = server.admin(Method::GET, &path).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
            assert_eq!(reply.headers["cache-control"], "no-store");
            reply.json()
        }
    };
    wait::until("the flushed counts", || async {
        usage_totals(&read(key_usage.clone()).await) == (3, 1, 1)
    })
    .await;
    let usage = read(key_usage).await;
    assert_eq!(usage["key_id"], id);
    assert_eq!(usage["granularity"], "hour");
    assert_eq!(usage["buckets"].as_array().expect("buckets").len(), 48);
    let account = read("/admin/accounts/acme/usage?granularity=day".to_owned()).await;
    assert_eq!(account["buckets"].as_array().expect("buckets").len(), 30);
    assert_eq!(usage_totals(&account), (3, 1, 1));
    assert_eq!(server.list_keys("acme").await[0]["requests_24h"], 3);
    let bad = server
        .admin(Method::GET, "/admin/accounts/acme/usage?granularity=week")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.text(), r#"{"error":"granularity must be hour or day"}"#);
}

#[tokio::test]
async fn the_demo_keeps_an_audit_trail_naming_the_operator_and_tenants() {
    let server = Launch::new()
        .arg("--tenant-token")
        .arg(&format!("acme={ACME}"))
        .start()
        .await;
    let created = server.create_key("acme").await;
    let id = created["id"].as_str().expect("id");
    let revoked = server.key_action("acme", id, "revoke").await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    let widened = as_tenant(
        &server,
        ACME,
        Method::POST,
        "/admin/accounts/acme/keys",
        Some(r#"{"metadata":{"plan":"gold"}}"#),
    )
    .await;
    assert_eq!(widened.status, StatusCode::FORBIDDEN, "{}", widened.text());
    let reactivated = as_tenant(
        &server,
        ACME,
        Method::POST,
        &format!("/admin/accounts/acme/keys/{id}/reactivate"),
        None,
    )
    .await;
    assert_eq!(reactivated.status, StatusCode::OK, "{}", reactivated.text());

    let trail = server
        .admin(Method::GET, "/admin/accounts/acme/events?limit=10")
        .await;
    assert_eq!(trail.status, StatusCode::OK, "{}", trail.text());
    assert_eq!(trail.content_type(), "application/json");
    let events: Vec<(String, String, String)> = trail.json()["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| {
            let field = |name: &str| event[name].as_str().expect("string").to_owned();
            (field("action"), field("outcome"), field("actor"))
        })
        .collect();
    let expected = [
        ("reactivate", "done", "tenant:acme"),
        ("create", "refused", "tenant:acme"),
        ("revoke", "done", "operator"),
        ("create", "done", "operator"),
    ]
    .map(|(action, outcome, actor)| (action.into(), outcome.into(), actor.into()));
    assert_eq!(events, expected);
    // The tenant reads its own account's trail too.
    let own = as_tenant(
        &server,
        ACME,
        Method::GET,
        "/admin/accounts/acme/events",
        None,
    )
    .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text());
}

#[tokio::test]
async fn the_openapi_document_is_served_without_credentials() {
    let server = Launch::new().start().await;
    let reply = server.get("/admin/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.content_type().starts_with("application/json"));
    let document = reply.json();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/admin/accounts/{account}/keys"]["post"].is_object());
}
