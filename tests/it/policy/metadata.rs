//! Metadata at the layer (mirrors `src/policy/metadata.rs` and `KeyIdentity::metadata`):
//! handlers get the key's metadata with its identity, a change reaches them at once, and it
//! never reaches a `Debug` string (nor a log: `tests/serial/logs.rs`). HTTP over a loopback
//! axum server.

use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde_json::{Value, json};
use tower_api_key::policy::Metadata;
use tower_api_key::{
    ApiKeyLayer, Authenticated, KeyIdentity, KeyManager, KeyOptions, PolicyUpdate,
};

use crate::support::http::{client, get_with, serve};
use crate::support::stores::TestStore;
use crate::support::{account, pepper};

/// The key's metadata as the handler sees it, and its `Debug` form.
async fn echo(who: Authenticated<KeyIdentity>) -> Json<Value> {
    let metadata = who.metadata().map(|m| Value::Object(m.as_object().clone()));
    Json(json!({ "metadata": metadata, "debug": format!("{:?}", *who) }))
}

/// (What the logs say of it is in `tests/serial/logs.rs`: reading the log takes a
/// subscriber of the whole process.)
#[tokio::test(flavor = "current_thread")]
async fn handlers_get_the_metadata_with_the_identity() {
    let manager = KeyManager::new(TestStore::new(), pepper());
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let addr = serve(Router::new().route("/v1/echo", get(echo)).layer(layer)).await;
    let acme = account("acme");
    let secret_looking = r#"{"plan":"pro","note":"tell-no-one-7f3a"}"#;
    let created = manager
        .create_with(
            &acme,
            KeyOptions::new().metadata(Metadata::from_json(secret_looking).expect("object")),
        )
        .await
        .expect("create");
    let key = created.key.expose_secret();
    let fetch = || async {
        let answer = get_with(&client(), addr, "/v1/echo", &[("x-api-key", key)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        serde_json::from_str::<Value>(&answer.body).expect("json")
    };

    let seen = fetch().await;
    assert_eq!(
        seen["metadata"],
        json!({"plan": "pro", "note": "tell-no-one-7f3a"})
    );
    let debug = seen["debug"].as_str().expect("text");
    assert!(
        !debug.contains("tell-no-one"),
        "Debug shows the size only: {debug}"
    );

    // Replaced as a whole, at once; then cleared.
    manager
        .update(
            &acme,
            created.info.id,
            PolicyUpdate::new().metadata(Some(
                Metadata::from_json(r#"{"plan":"team"}"#).expect("object"),
            )),
        )
        .await
        .expect("update");
    assert_eq!(fetch().await["metadata"], json!({"plan": "team"}));
    manager
        .update(&acme, created.info.id, PolicyUpdate::new().metadata(None))
        .await
        .expect("update");
    assert_eq!(fetch().await["metadata"], Value::Null);
}
