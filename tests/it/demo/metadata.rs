//! `/v1/whoami` shows the key's metadata, the JSON object stored with it, as the handler reads
//! it from the identity the layer resolved; `null` for a key without.

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::str_field;
use crate::support::demo::{DemoServer, Launch};
use crate::support::wait::until;

async fn whoami(server: &DemoServer, key: &str) -> Value {
    let reply = server.get_with_key("/v1/whoami", key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

#[tokio::test]
async fn whoami_shows_the_keys_metadata_and_null_for_a_key_without() {
    let server = Launch::new().start().await;
    let metadata = json!({"plan": "pro", "region": "eu", "limits": {"seats": 5, "beta": true}});
    let with = server
        .create_key_with("acme", &json!({ "metadata": metadata }).to_string())
        .await;
    let without = server.create_key("acme").await;

    let shown = whoami(&server, str_field(&with, "key")).await;
    assert_eq!(shown["metadata"], metadata, "{shown}");
    assert_eq!(shown["key_id"], with["id"], "{shown}");

    let shown = whoami(&server, str_field(&without, "key")).await;
    let object = shown.as_object().expect("an object");
    assert_eq!(object.get("metadata"), Some(&Value::Null), "{shown}");

    // Replaced through the admin API, the new object is what whoami shows.
    let replaced = json!({"plan": "enterprise"});
    let path = format!("/admin/accounts/acme/keys/{}", str_field(&with, "id"));
    let patched = server
        .admin_json(
            Method::PATCH,
            &path,
            &json!({ "metadata": replaced }).to_string(),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    until("whoami to show the replaced metadata", || async {
        whoami(&server, str_field(&with, "key")).await["metadata"] == replaced
    })
    .await;
}
