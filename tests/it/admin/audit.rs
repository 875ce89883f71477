//! The audit trail through the admin router: every change and every refused change is on
//! `GET …/events` with its actor, newest first, paged by `before`; reads and strangers leave
//! no trace; secrets never appear.

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tower_api_key::admin::AdminTokens;

use super::{Harness, text};

const ACME: &str = "tenant-token-of-acme-for-the-audit";
const GLOBEX: &str = "tenant-token-of-globex-for-the-audit";

fn tokens() -> AdminTokens {
    super::operator_and_tenants(ACME, GLOBEX)
}

/// `GET /admin/accounts/{account}/events{query}` as the operator; 200 asserted, the events.
async fn events(admin: &Harness, account: &str, query: &str) -> Vec<Value> {
    let reply = admin
        .admin(
            Method::GET,
            &format!("/admin/accounts/{account}/events{query}"),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    reply.json()["events"].as_array().expect("events").clone()
}

/// `(action, outcome, actor)` of each event.
fn summary(events: &[Value]) -> Vec<(&str, &str, &str)> {
    events
        .iter()
        .map(|event| {
            (
                text(event, "action"),
                text(event, "outcome"),
                text(event, "actor"),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_change_is_on_the_trail_with_its_actor_and_what_it_set() {
    let admin = Harness::start().await;
    let created = admin
        .create(
            "acme",
            Some(
                r#"{"name": "CI", "scopes": ["read"], "expires_at": "2090-01-01T00:00:00Z",
                    "rate_limit": {"requests": 10, "per_seconds": 1},
                    "quota": {"requests": 1000, "period": "day"},
                    "allowed_ips": ["203.0.113.0/24"], "metadata": {"plan": "pro"}}"#,
            ),
        )
        .await;
    let id = text(&created, "id");
    let first_prefix = text(&created, "prefix");
    admin
        .patch("acme", id, r#"{"name": null, "scopes": ["read", "write"]}"#)
        .await;
    let rotated = admin
        .on_key(
            Method::POST,
            "acme",
            id,
            "/rotate",
            Some(r#"{"grace_seconds": 60}"#),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());
    let rotated = rotated.json();
    let prefix = text(&rotated, "prefix");
    for action in ["/revoke", "/reactivate"] {
        let reply = admin.on_key(Method::POST, "acme", id, action, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let deleted = admin.on_key(Method::DELETE, "acme", id, "", None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);

    let trail = events(&admin, "acme", "").await;
    let done = |action| (action, "done", "operator");
    assert_eq!(
        summary(&trail),
        [
            done("delete"),
            done("reactivate"),
            done("revoke"),
            done("rotate"),
            done("update"),
            done("create"),
        ]
    );
    for (event, expected_prefix) in
        trail
            .iter()
            .zip([prefix, prefix, prefix, prefix, first_prefix, first_prefix])
    {
        assert_eq!(text(event, "key_id"), id, "{event}");
        assert_eq!(text(event, "prefix"), expected_prefix, "{event}");
        assert!(text(event, "at").ends_with('Z'), "{event}");
    }
    let ids: Vec<u64> = trail
        .iter()
        .map(|event| event["id"].as_u64().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] > pair[1]), "{ids:?}");
    assert_eq!(
        trail[5]["changes"],
        json!({
            "name": "CI", "scopes": ["read"], "expires_at": "2090-01-01T00:00:00.000000Z",
            "rate_limit": {"requests": 10, "per_seconds": 1},
            "quota": {"requests": 1000, "period": "day"},
            "allowed_ips": ["203.0.113.0/24"], "metadata": {"plan": "pro"}
        })
    );
    assert_eq!(
        trail[4]["changes"],
        json!({"name": null, "scopes": ["read", "write"]})
    );
    assert_eq!(trail[3]["changes"], json!({"grace_seconds": 60}));
    for event in &trail[..3] {
        assert_eq!(event["changes"], json!({}), "{event}");
    }

    // Never a secret: neither plaintext key, nor any part of its secret, is on the trail.
    let shown = Value::Array(trail).to_string();
    for key in [text(&created, "key"), text(&rotated, "key")] {
        let secret = key.split_once('.').expect("prefix.secret").1;
        assert!(!shown.contains(secret), "{shown}");
    }
    // The hook still hears every change.
    assert_eq!(admin.events().len(), 6);
}

#[tokio::test]
async fn refused_changes_are_recorded_and_reads_and_strangers_are_not() {
    let admin = Harness::with_authorizer(tokens()).await;
    let keys = "/admin/accounts/acme/keys";
    let created = admin
        .send_as(ACME, Method::POST, keys, Some(r#"{"scopes":["read"]}"#))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let created = created.json();
    let id = text(&created, "id");
    let prefix = text(&created, "prefix");
    let key = format!("{keys}/{id}");

    // A tenant widening its key, and sending metadata: 403, recorded as refused.
    let widened = admin
        .send_as(ACME, Method::PATCH, &key, Some(r#"{"scopes":null}"#))
        .await;
    assert_eq!(widened.status, StatusCode::FORBIDDEN, "{}", widened.text());
    let tagged = admin
        .send_as(
            ACME,
            Method::POST,
            keys,
            Some(r#"{"metadata":{"plan":"free"}}"#),
        )
        .await;
    assert_eq!(tagged.status, StatusCode::FORBIDDEN, "{}", tagged.text());

    // Reads, strangers and another account's tenant leave nothing on acme's trail.
    for reply in [
        admin.send_as(ACME, Method::GET, keys, None).await,
        admin
            .send_as(ACME, Method::GET, &format!("{key}/usage"), None)
            .await,
        admin
            .send_as(GLOBEX, Method::POST, &format!("{key}/revoke"), None)
            .await,
        admin.send_as(GLOBEX, Method::DELETE, &key, None).await,
        admin
            .send_as("not-a-token-of-anyone-at-all", Method::DELETE, &key, None)
            .await,
    ] {
        assert_ne!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    }

    // The operator fills the account; the fourth create is refused at the limit.
    for _ in 0..2 {
        admin.create("acme", None).await;
    }
    let over = admin
        .admin(Method::POST, keys, Some(r#"{"name":"fourth"}"#))
        .await;
    assert_eq!(over.status, StatusCode::CONFLICT, "{}", over.text());

    let trail = events(&admin, "acme", "").await;
    assert_eq!(
        summary(&trail),
        [
            ("create", "refused", "operator"),
            ("create", "done", "operator"),
            ("create", "done", "operator"),
            ("create", "refused", "tenant:acme"),
            ("update", "refused", "tenant:acme"),
            ("create", "done", "tenant:acme"),
        ]
    );
    assert_eq!(trail[0]["key_id"], Value::Null);
    assert_eq!(trail[0]["prefix"], Value::Null);
    assert_eq!(trail[0]["changes"], json!({"name": "fourth"}));
    assert_eq!(trail[3]["key_id"], Value::Null);
    // Metadata a refused caller asked for is kept by size only.
    assert_eq!(
        trail[3]["changes"],
        json!({"metadata": "15 bytes, not recorded"})
    );
    assert_eq!(text(&trail[4], "key_id"), id);
    assert_eq!(text(&trail[4], "prefix"), prefix);
    assert_eq!(trail[4]["changes"], json!({"scopes": null}));
    assert!(events(&admin, "globex", "").await.is_empty());

    // A tenant reads its own trail; another account's is the missing key's 404.
    let own = admin
        .send_as(ACME, Method::GET, "/admin/accounts/acme/events", None)
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text());
    assert_eq!(own.json()["events"].as_array().map(Vec::len), Some(6));
    let theirs = admin
        .send_as(GLOBEX, Method::GET, "/admin/accounts/acme/events", None)
        .await;
    let missing = admin
        .admin(
            Method::GET,
            "/admin/accounts/acme/keys/00000000-0000-4000-8000-000000000000",
            None,
        )
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.body, missing.body);
}

#[tokio::test]
async fn the_trail_pages_newest_first_by_before() {
    let admin = Harness::start().await;
    let created = admin.create("acme", None).await;
    let id = text(&created, "id");
    // 1 create + 26 × (revoke, reactivate): 53 entries, more than the default page.
    for _ in 0..26 {
        for action in ["/revoke", "/reactivate"] {
            let reply = admin.on_key(Method::POST, "acme", id, action, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
    }
    let all = events(&admin, "acme", "?limit=500").await;
    assert_eq!(all.len(), 53);
    assert_eq!(events(&admin, "acme", "").await, all[..50]);

    let mut paged = Vec::new();
    let mut query = "?limit=7".to_owned();
    loop {
        let page = events(&admin, "acme", &query).await;
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        query = format!("?limit=7&before={}", last["id"]);
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert_eq!(text(&all[52], "action"), "create");

    for bad in [
        "?limit=0",
        "?limit=501",
        "?limit=ten",
        "?before=0",
        "?before=-3",
        "?limit=5&limit=5",
        "?after=3",
    ] {
        let reply = admin
            .admin(
                Method::GET,
                &format!("/admin/accounts/acme/events{bad}"),
                None,
            )
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, bad);
    }
    let reply = admin
        .admin(Method::POST, "/admin/accounts/acme/events", None)
        .await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "POST events");
    let reply = admin
        .admin(Method::GET, "/admin/accounts/a%20b/events", None)
        .await;
    reply.assert_error(StatusCode::BAD_REQUEST, "bad account");
}
