//! The layer in an axum app, over a real loopback server: the answers listed in
//! ARCHITECTURE.md, *The layer's answers*, in both modes, and the extractor.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::support::http::{client, get, serve};
use crate::support::stores::TestStore;
use crate::support::{account, pepper};
use axum::Router;
use axum::routing::get as route_get;
use tower_api_key::{ApiKeyLayer, Authenticated, KeyIdentity, KeyManager};

async fn whoami(who: Authenticated<KeyIdentity>) -> String {
    format!("{} {} {}", who.account_id(), who.key_id(), who.prefix())
}

async fn maybe(who: Option<Authenticated<KeyIdentity>>) -> String {
    who.map_or_else(
        || "anonymous".to_owned(),
        |who| who.account_id().to_string(),
    )
}

fn manager(store: &Arc<TestStore>) -> KeyManager {
    KeyManager::new(store.clone(), pepper())
}

#[tokio::test]
async fn valid_key_reaches_the_handler_with_its_identity() {
    let store = TestStore::new();
    let manager = manager(&store);
    let created = manager.create(&account("acme")).await.expect("create");
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let addr = serve(
        Router::new()
            .route("/whoami", route_get(whoami))
            .layer(layer),
    )
    .await;
    let answer = get(&client(), addr, "/whoami", &[created.key.expose_secret()]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        format!("acme {} {}", created.info.id, created.info.prefix)
    );
}

#[tokio::test]
async fn missing_key_is_401_missing_as_json() {
    let manager = manager(&TestStore::new());
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let addr = serve(
        Router::new()
            .route("/whoami", route_get(whoami))
            .layer(layer),
    )
    .await;
    let answer = get(&client(), addr, "/whoami", &[]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(answer.body, r#"{"error":"missing API key"}"#);
}

#[tokio::test]
async fn every_kind_of_bad_key_gets_the_same_401_invalid() {
    let store = TestStore::new();
    let manager = manager(&store);
    let revoked = manager.create(&account("acme")).await.expect("create");
    manager
        .revoke(&account("acme"), revoked.info.id)
        .await
        .expect("revoke");
    let rotated_away = manager.create(&account("acme")).await.expect("create");
    manager
        .rotate(&account("acme"), rotated_away.info.id)
        .await
        .expect("rotate");
    let deleted = manager.create(&account("acme")).await.expect("create");
    manager
        .delete(&account("acme"), deleted.info.id)
        .await
        .expect("delete");
    let unknown = tower_api_key::ApiKey::generate().expect("randomness");
    let valid = manager.create(&account("other")).await.expect("create");
    let mut wrong_body = valid.key.expose_secret().to_owned();
    wrong_body.replace_range(9.., &unknown.expose_secret()[9..]);

    let layer = ApiKeyLayer::for_manager(&manager).build();
    let addr = serve(
        Router::new()
            .route("/whoami", route_get(whoami))
            .layer(layer),
    )
    .await;
    let client = client();
    for (what, key) in [
        ("malformed", "not-a-key"),
        ("empty", ""),
        ("unknown", unknown.expose_secret()),
        ("revoked", revoked.key.expose_secret()),
        ("rotated away", rotated_away.key.expose_secret()),
        ("deleted", deleted.key.expose_secret()),
        ("known prefix, wrong body", &wrong_body),
        ("upper-cased", &valid.key.expose_secret().to_uppercase()),
    ] {
        let answer = get(&client, addr, "/whoami", &[key]).await;
        assert_eq!(answer.status, 401, "{what}");
        assert_eq!(answer.headers["content-type"], "application/json", "{what}");
        assert_eq!(answer.body, r#"{"error":"invalid API key"}"#, "{what}");
    }
    let answer = get(&client, addr, "/whoami", &[valid.key.expose_secret()]).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn duplicate_key_headers_are_refused() {
    let manager = manager(&TestStore::new());
    let created = manager.create(&account("acme")).await.expect("create");
    let key = created.key.expose_secret();
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let addr = serve(
        Router::new()
            .route("/whoami", route_get(whoami))
            .layer(layer),
    )
    .await;
    let answer = get(&client(), addr, "/whoami", &[key, key]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body, r#"{"error":"invalid API key"}"#);
}

#[tokio::test]
async fn malformed_keys_never_reach_the_store() {
    let store = TestStore::new();
    let layer = ApiKeyLayer::for_manager(&manager(&store)).build();
    let addr = serve(
        Router::new()
            .route("/whoami", route_get(whoami))
            .layer(layer),
    )
    .await;
    let client = client();
    let almost = format!("abcdefgh.{}", "A".repeat(49));
    for key in ["x", &almost, &"k".repeat(10_000)] {
        assert_eq!(get(&client, addr, "/whoami", &[key]).await.status, 401);
    }
    assert_eq!(store.lookups.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn store_failure_is_503_with_retry_after_and_not_cached() {
    let store = TestStore::new();
    let manager = manager(&store);
    let created = manager.create(&account("acme")).await.expect("create");
    let key = created.key.expose_secret();
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let addr = serve(
        Router::new()
            .route("/whoami", route_get(whoami))
            .layer(layer),
    )
    .await;
    let client = client();

    store.down.store(true, Ordering::SeqCst);
    for attempt in 1..=2 {
        let answer = get(&client, addr, "/whoami", &[key]).await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.headers["retry-after"], "1");
        assert_eq!(answer.headers["content-type"], "application/json");
        assert!(answer.body.starts_with(r#"{"error":""#), "{}", answer.body);
        assert!(!answer.body.contains(&key[9..]));
        assert_eq!(
            store.lookups.load(Ordering::SeqCst),
            attempt,
            "error not cached"
        );
    }
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(get(&client, addr, "/whoami", &[key]).await.status, 200);
}

#[tokio::test]
async fn optional_mode_lets_keyless_requests_through_as_anonymous() {
    let manager = manager(&TestStore::new());
    let created = manager.create(&account("acme")).await.expect("create");
    let layer = ApiKeyLayer::for_manager(&manager).optional().build();
    let addr = serve(Router::new().route("/hello", route_get(maybe)).layer(layer)).await;
    let client = client();
    let anonymous = get(&client, addr, "/hello", &[]).await;
    assert_eq!(
        (anonymous.status.as_u16(), anonymous.body.as_str()),
        (200, "anonymous")
    );
    let known = get(&client, addr, "/hello", &[created.key.expose_secret()]).await;
    assert_eq!((known.status.as_u16(), known.body.as_str()), (200, "acme"));
    let bad = get(&client, addr, "/hello", &["garbage"]).await;
    assert_eq!(
        bad.status, 401,
        "a present but invalid key is still refused"
    );
    assert_eq!(bad.body, r#"{"error":"invalid API key"}"#);
}

#[tokio::test]
async fn extractor_without_the_layer_is_a_500_naming_the_layer() {
    let addr = serve(Router::new().route("/whoami", route_get(whoami))).await;
    let answer = get(&client(), addr, "/whoami", &[]).await;
    assert_eq!(answer.status, 500);
    assert!(answer.body.contains("ApiKeyLayer"), "{}", answer.body);
    assert!(answer.body.contains("KeyIdentity"), "{}", answer.body);
}

#[tokio::test]
async fn route_layer_protects_only_the_routes_before_it() {
    let manager = manager(&TestStore::new());
    let created = manager.create(&account("acme")).await.expect("create");
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let app = Router::new()
        .route("/whoami", route_get(whoami))
        .route_layer(layer)
        .route("/healthz", route_get(|| async { "ok" }));
    let addr = serve(app).await;
    let client = client();
    assert_eq!(get(&client, addr, "/healthz", &[]).await.status, 200);
    assert_eq!(get(&client, addr, "/whoami", &[]).await.status, 401);
    let key = created.key.expose_secret();
    assert_eq!(get(&client, addr, "/whoami", &[key]).await.status, 200);
    // Unknown routes are 404 for everyone: route_layer runs only on matched routes.
    assert_eq!(get(&client, addr, "/nope", &[]).await.status, 404);
}

#[tokio::test]
async fn counters_follow_outcomes_and_cache_use() {
    let store = TestStore::new();
    let manager = manager(&store);
    let created = manager.create(&account("acme")).await.expect("create");
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let addr = serve(
        Router::new()
            .route("/whoami", route_get(whoami))
            .layer(layer.clone()),
    )
    .await;
    let client = client();
    let key = created.key.expose_secret();
    for _ in 0..3 {
        get(&client, addr, "/whoami", &[key]).await;
    }
    get(&client, addr, "/whoami", &[]).await;
    get(&client, addr, "/whoami", &["bad"]).await;
    let metrics = layer.metrics();
    assert_eq!(metrics.accepted, 3);
    assert_eq!(metrics.missing, 1);
    assert_eq!(metrics.invalid, 1);
    assert_eq!((metrics.cache_misses, metrics.cache_hits), (1, 2));
    assert_eq!(metrics.resolver_calls, 1);
    assert!(
        metrics
            .to_prometheus()
            .contains("api_key_requests_total{outcome=\"accepted\"} 3")
    );
}

#[tokio::test]
async fn for_axum_gives_the_same_answers_with_axums_own_body() {
    let store = TestStore::new();
    let manager = manager(&store);
    let created = manager.create(&account("acme")).await.expect("create");
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let addr = serve(
        Router::new()
            .route("/whoami", route_get(whoami))
            .route_layer(layer.clone().for_axum()),
    )
    .await;
    let client = client();
    let accepted = get(&client, addr, "/whoami", &[created.key.expose_secret()]).await;
    assert_eq!(accepted.status, 200);
    assert!(accepted.body.starts_with("acme "), "{}", accepted.body);
    let missing = get(&client, addr, "/whoami", &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.body, r#"{"error":"missing API key"}"#);
    assert_eq!(missing.content_type(), Some("application/json"));
    assert_eq!(
        missing.headers["www-authenticate"],
        r#"ApiKey header="X-API-KEY""#
    );
    assert_eq!(layer.metrics().accepted, 1, "one layer, shared counters");
}
