//! What the admin router logs of a panic: the method and the route's pattern, never the
//! request's body. Here rather than in `tests/it` because reading the log takes a subscriber,
//! and tracing decides once per callsite, for the whole process, whether anyone listens: a
//! callsite first reached on another test's thread while this subscriber is being installed
//! can be cached as "no one listens", and the event is lost. Run alone, it can't race.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use http::{Method, Request, StatusCode};
use tower::ServiceExt as _;
use tower_api_key::admin::AdminRouter;
use tower_api_key::{KeyManager, MemoryStore, Pepper};

use crate::support::exclusive::exclusive;
use crate::support::panicking::PanicsOnBoom;

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

#[tokio::test(flavor = "current_thread")]
async fn a_panic_is_logged_with_the_route_and_without_the_body() {
    let _alone = exclusive().await;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

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
    let log = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    assert!(log.contains("panicked"), "{log}");
    assert!(log.contains("/admin/accounts/{account}/keys"), "{log}");
    assert!(log.contains("POST"), "{log}");
    assert!(!log.contains(secret), "{log}");
}
