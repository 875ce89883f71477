//! `last_used_at` is recorded off the hot path: coalesced in memory, written in batches, and
//! flushed on shutdown (DESIGN.md §3).

mod support;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use support::{TestStore, account, pepper};
use tower::{Layer, ServiceExt, service_fn};
use tower_api_key::last_used::LastUsedRecorder;
use tower_api_key::{ApiKeyLayer, KeyManager, KeyStore};

async fn ok(_: Request<()>) -> Result<Response<Empty<bytes::Bytes>>, Infallible> {
    Ok(Response::new(Empty::new()))
}

#[tokio::test]
async fn ten_thousand_uses_in_one_interval_make_one_store_write() {
    let store = TestStore::new();
    let manager = KeyManager::new(store.clone(), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    let recorder = LastUsedRecorder::new(store.clone());
    let flusher = recorder.spawn_flusher(Duration::from_secs(3600));
    // The first tick of an interval fires at once; let it pass before the uses.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let service = ApiKeyLayer::for_manager(&manager)
        .record_last_used(recorder.clone())
        .build()
        .layer(service_fn(ok));
    let before = SystemTime::now() - Duration::from_millis(1);
    for _ in 0..10_000 {
        let request = Request::get("/")
            .header("x-api-key", created.key.expose_secret())
            .body(())
            .expect("request");
        let response = service.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        store.last_used_writes.load(Ordering::SeqCst),
        0,
        "nothing written on the hot path"
    );
    assert_eq!(recorder.pending_count(), 1);
    assert_eq!(flusher.shutdown().await.expect("flush"), 1);
    assert_eq!(store.last_used_writes.load(Ordering::SeqCst), 1);
    assert_eq!(store.last_used_rows.load(Ordering::SeqCst), 1);
    let info = manager
        .get(&account("acme"), created.info.id)
        .await
        .expect("get");
    let last_used = info.last_used_at.expect("recorded on shutdown");
    assert!(last_used >= before && last_used <= SystemTime::now());
}

#[tokio::test]
async fn uses_appear_after_the_flush_interval() {
    let store = TestStore::new();
    let manager = KeyManager::new(store.clone(), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    let recorder = LastUsedRecorder::new(store.clone());
    let flusher = recorder.spawn_flusher(Duration::from_millis(50));
    let service = ApiKeyLayer::for_manager(&manager)
        .record_last_used(recorder)
        .build()
        .layer(service_fn(ok));
    let request = Request::get("/")
        .header("x-api-key", created.key.expose_secret())
        .body(())
        .expect("request");
    service.oneshot(request).await.expect("infallible");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let info = manager
            .get(&account("acme"), created.info.id)
            .await
            .expect("get");
        if info.last_used_at.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no last_used_at within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    flusher.shutdown().await.expect("flush");
}

#[tokio::test]
async fn uses_survive_a_failed_flush() {
    let store = TestStore::new();
    let manager = KeyManager::new(store.clone(), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    let recorder = LastUsedRecorder::new(store.clone());
    let service = ApiKeyLayer::for_manager(&manager)
        .record_last_used(recorder.clone())
        .build()
        .layer(service_fn(ok));
    let request = Request::get("/")
        .header("x-api-key", created.key.expose_secret())
        .body(())
        .expect("request");
    service.oneshot(request).await.expect("infallible");
    store.down.store(true, Ordering::SeqCst);
    assert!(recorder.flush().await.is_err());
    assert_eq!(recorder.pending_count(), 1, "kept for the next flush");
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(recorder.flush().await.expect("flush"), 1);
    let record = store
        .get(&account("acme"), created.info.id)
        .await
        .expect("get")
        .expect("found");
    assert!(record.last_used_at.is_some());
    assert_eq!(recorder.flush().await.expect("nothing left"), 0);
}

#[tokio::test]
async fn rejected_requests_are_not_recorded() {
    let store = TestStore::new();
    let manager = KeyManager::new(store.clone(), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    manager
        .revoke(&account("acme"), created.info.id)
        .await
        .expect("revoke");
    let recorder = LastUsedRecorder::new(store.clone());
    let service = ApiKeyLayer::for_manager(&manager)
        .record_last_used(recorder.clone())
        .build()
        .layer(service_fn(ok));
    let request = Request::get("/")
        .header("x-api-key", created.key.expose_secret())
        .body(())
        .expect("request");
    let response = service.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(recorder.pending_count(), 0);
}
