//! What the layer, the manager and the admin router log: a stack that gives the layer no
//! client address is named in one warning; a metadata change is named, its values never
//! are; a panic, with the method and the route's pattern, never the request's body. Here rather than in `tests/it` because reading the log takes a subscriber,
//! and tracing decides once per callsite, for the whole process, whether anyone listens: a
//! callsite first reached on another test's thread while this subscriber is being installed
//! can be cached as "no one listens", and the event is lost. Run alone, it can't race.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use http::{Method, Request, StatusCode};
use tower::ServiceExt as _;
use tower_api_key::admin::AdminRouter;
use tower_api_key::policy::{AllowedIps, Metadata};
use tower_api_key::{
    AccountId, ApiKeyLayer, KeyManager, KeyOptions, MemoryStore, Pepper, PolicyUpdate,
};

use crate::support::exclusive::exclusive;
use crate::support::panicking::PanicsOnBoom;
use crate::support::service::{stack, status};

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// A subscriber writing into a new buffer at `level`, the current thread's default until
    /// the guard is dropped.
    fn install(level: tracing::Level) -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Self::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// Everything written so far.
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_panic_is_logged_with_the_route_and_without_the_body() {
    let _alone = exclusive().await;
    let (captured, _default) = Captured::install(tracing::Level::TRACE);

    let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::from_bytes([3; 32]));
    let app = AdminRouter::new(manager, PanicsOnBoom).into_router::<()>();
    let secret = "a-body-that-must-not-be-logged";
    let request = Request::builder()
        .method(Method::POST)
        .uri("/admin/accounts/boom/keys")
        .header("content-type", "application/json")
        .body(Body::from(format!(r#"{{"name":"{secret}"}}"#)))
        .expect("request");
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let log = captured.text();
    assert!(log.contains("panicked"), "{log}");
    assert!(log.contains("/admin/accounts/{account}/keys"), "{log}");
    assert!(log.contains("POST"), "{log}");
    assert!(!log.contains(secret), "{log}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_stack_without_an_address_is_named_in_one_warning() {
    let _alone = exclusive().await;
    let (captured, _default) = Captured::install(tracing::Level::WARN);

    let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::from_bytes([3; 32]));
    let allowed = AllowedIps::new(["192.0.2.0/24"]).expect("valid blocks");
    let created = manager
        .create_with(
            &"acme".parse().expect("account"),
            KeyOptions::new().allowed_ips(allowed),
        )
        .await
        .expect("create");
    // A hand-built stack that gives the layer no client address.
    let service = stack(&ApiKeyLayer::for_manager(&manager).build());
    for _ in 0..5 {
        let answer = status(&service, created.key.expose_secret()).await;
        assert_eq!(answer, StatusCode::FORBIDDEN);
    }
    let log = captured.text();
    assert_eq!(log.matches("WARN").count(), 1, "{log}");
    assert!(log.contains("no client address"), "{log}");
    assert!(
        !log.contains(created.key.expose_secret()),
        "no secret in logs"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_keys_metadata_never_reaches_the_log() {
    let _alone = exclusive().await;
    let (captured, _default) = Captured::install(tracing::Level::TRACE);

    let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::from_bytes([3; 32]));
    let acme: AccountId = "acme".parse().expect("account");
    let metadata = Metadata::from_json(r#"{"note":"tell-no-one-7f3a"}"#).expect("object");
    let created = manager
        .create_with(&acme, KeyOptions::new().metadata(metadata))
        .await
        .expect("create");
    let service = stack(&ApiKeyLayer::for_manager(&manager).build());
    let answer = status(&service, created.key.expose_secret()).await;
    assert_eq!(answer, StatusCode::OK);
    let team = Metadata::from_json(r#"{"plan":"team"}"#).expect("object");
    for change in [Some(team), None] {
        manager
            .update(&acme, created.info.id, PolicyUpdate::new().metadata(change))
            .await
            .expect("update");
    }

    let log = captured.text();
    assert!(log.contains("api key policy changed"), "{log}");
    assert!(log.contains("metadata=true"), "the change is named: {log}");
    for value in ["tell-no-one", "team", created.key.expose_secret()] {
        assert!(!log.contains(value), "{value} reached the log: {log}");
    }
}
