//! An axum app behind `ApiKeyLayer`: required keys with `Router::layer` and `route_layer`,
//! optional keys with `.optional()`, and the `Authenticated<KeyIdentity>` extractor.
//!
//! ```text
//! cargo run --example axum --features axum
//! ```
//!
//! It creates a key at startup and prints `curl` lines to try. Listens on `127.0.0.1:3001`, or
//! on `ADDR`; `RUST_LOG=tower_api_key=debug` shows why requests are refused.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tower_api_key::resolver::KeyIdentity;
use tower_api_key::{ApiKeyLayer, Authenticated, KeyManager, MemoryStore, Pepper};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();

    // A random pepper suits a throw-away demo; a real server loads its pepper from
    // configuration so that stored keys stay valid across restarts.
    let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    let created = manager.create(&"demo".parse()?).await?;
    let key = created.key.expose_secret();

    // One layer, cloned onto every router that requires a key: the clones share one cache
    // and one set of counters, and all of them see the manager's revocations at once.
    let required = ApiKeyLayer::for_manager(&manager).build();

    // `layer` wraps everything the router serves, its own fallback included.
    let api = Router::new()
        .route("/whoami", get(whoami))
        .layer(required.clone());

    // `route_layer` wraps only the routes that match: an unknown path is still 404, not 401.
    let metrics_layer = required.clone();
    let admin = Router::new()
        .route(
            "/admin/metrics",
            get(move || async move { metrics_layer.metrics().to_prometheus() }),
        )
        .route_layer(required);

    // Optional: requests without a key come through as anonymous; a bad key is still 401.
    let public = Router::new()
        .route("/hello", get(hello))
        .layer(ApiKeyLayer::for_manager(&manager).optional().build());

    let app = Router::new().nest("/api", api).merge(admin).merge(public);

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3001".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    println!("curl -H 'x-api-key: {key}' http://{addr}/api/whoami");
    println!("curl http://{addr}/hello");
    println!("curl -H 'x-api-key: {key}' http://{addr}/admin/metrics");

    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Only reached with a valid key: the layer answers every other request itself.
async fn whoami(who: Authenticated<KeyIdentity>) -> Json<Value> {
    Json(json!({
        "account_id": who.account_id().as_str(),
        "key_id": who.key_id().to_string(),
        "prefix": who.prefix().as_str(),
    }))
}

/// `None` when the request carried no key (the layer's optional mode).
async fn hello(who: Option<Authenticated<KeyIdentity>>) -> String {
    match who {
        Some(who) => format!("hello, {}\n", who.account_id()),
        None => "hello, stranger\n".to_owned(),
    }
}
