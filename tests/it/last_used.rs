//! `last_used_at` is recorded off the hot path: coalesced in memory, written in batches, and
//! flushed on shutdown; a store that refuses the writes costs bounded memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::service::ok;
use crate::support::stores::TestStore;
use crate::support::wait::until;
use crate::support::{account, pepper};
use http::{Request, StatusCode};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt, service_fn};
use tower_api_key::feed::{self, ChangeFeed, FeedConfig, FeedError, FeedMessage};
use tower_api_key::invalidation::InvalidationBus;
use tower_api_key::usage::UsageBatch;
use tower_api_key::usage::UsageRecorder;
use tower_api_key::{
    ApiKeyLayer, CreatedKey, KeyManager, KeyStore, MemoryStore, StoreError, StoreResolver,
};

#[tokio::test]
async fn ten_thousand_uses_in_one_interval_make_one_store_write() {
    let store = TestStore::new();
    let manager = KeyManager::new(store.clone(), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    let recorder = UsageRecorder::new(store.clone());
    // The first flush is an interval away: none runs among the uses.
    let flusher = recorder.spawn_flusher(Duration::from_secs(3600));
    let service = ApiKeyLayer::for_manager(&manager)
        .record_usage(recorder.clone())
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
    let recorder = UsageRecorder::new(store.clone());
    let flusher = recorder.spawn_flusher(Duration::from_millis(50));
    let service = ApiKeyLayer::for_manager(&manager)
        .record_usage(recorder)
        .build()
        .layer(service_fn(ok));
    let request = Request::get("/")
        .header("x-api-key", created.key.expose_secret())
        .body(())
        .expect("request");
    service.oneshot(request).await.expect("infallible");
    // Nothing but the flusher writes it: no shutdown, no explicit flush.
    until("last_used_at to be written", || async {
        let info = manager
            .get(&account("acme"), created.info.id)
            .await
            .expect("get");
        info.last_used_at.is_some()
    })
    .await;
    assert_eq!(
        store.last_used_writes.load(Ordering::SeqCst),
        1,
        "one batch"
    );
    flusher.shutdown().await.expect("flush");
}

#[tokio::test]
async fn uses_survive_a_failed_flush() {
    let store = TestStore::new();
    let manager = KeyManager::new(store.clone(), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    let recorder = UsageRecorder::new(store.clone());
    let service = ApiKeyLayer::for_manager(&manager)
        .record_usage(recorder.clone())
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
    let recorder = UsageRecorder::new(store.clone());
    let service = ApiKeyLayer::for_manager(&manager)
        .record_usage(recorder.clone())
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

// ===== a store that refuses last-used writes =====

/// A memory store whose `record_last_used` fails while `refusing` is set (a read-only
/// replica, a lock timeout); lookups keep working. It can also hold one write until released.
#[derive(Default)]
struct RefusingStore {
    inner: MemoryStore,
    refusing: AtomicBool,
    writes: AtomicUsize,
    rows: AtomicUsize,
    hold_next_write: AtomicBool,
    entered: Notify,
    release: Notify,
}

impl crate::support::hooks::StoreHooks for RefusingStore {
    fn records(&self) -> &MemoryStore {
        &self.inner
    }
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        if self.hold_next_write.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        if self.refusing.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("read-only replica"));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.rows.fetch_add(batch.last_used.len(), Ordering::SeqCst);
        self.inner.record_usage(batch).await
    }
}

crate::support::hooks::hooked_key_store!(RefusingStore);

const ACCOUNTS: [&str; 3] = ["acme", "globex", "initech"];

/// A store accepting writes for now, with one key for each of `ACCOUNTS`.
async fn refusing_store_with_keys() -> (Arc<RefusingStore>, KeyManager, Vec<CreatedKey>) {
    let store = Arc::new(RefusingStore::default());
    let manager = KeyManager::new(store.clone(), pepper());
    let mut keys = Vec::new();
    for name in ACCOUNTS {
        keys.push(manager.create(&account(name)).await.expect("create"));
    }
    (store, manager, keys)
}

/// A layer whose cache has stopped caching, as while a change feed is down: every request
/// resolves its key again and is stamped on a new identity.
fn uncached_layer(manager: &KeyManager, recorder: &UsageRecorder) -> ApiKeyLayer<StoreResolver> {
    let down = InvalidationBus::new();
    // Stopped at once: its channel stays lost for good.
    drop(feed::spawn(NeverSubscribes, &down, FeedConfig::default()));
    ApiKeyLayer::for_manager(manager)
        .invalidated_by(&down)
        .record_usage(recorder.clone())
        .build()
}

/// A change feed whose channel never comes up.
struct NeverSubscribes;

#[async_trait::async_trait]
impl ChangeFeed for NeverSubscribes {
    async fn subscribe(&mut self) -> Result<(), FeedError> {
        Err(FeedError::new("unreachable"))
    }

    async fn recv(&mut self) -> Result<Vec<FeedMessage>, FeedError> {
        Err(FeedError::new("not subscribed"))
    }

    async fn send_heartbeat(&mut self, _: u64) -> Result<(), FeedError> {
        Err(FeedError::new("not subscribed"))
    }
}

async fn call(layer: &ApiKeyLayer<StoreResolver>, created: &CreatedKey) -> StatusCode {
    let request = Request::get("/")
        .header("x-api-key", created.key.expose_secret())
        .body(())
        .expect("request");
    let service = layer.layer(service_fn(ok));
    service.oneshot(request).await.expect("infallible").status()
}

async fn last_used(manager: &KeyManager, name: &str, created: &CreatedKey) -> Option<SystemTime> {
    let info = manager.get(&account(name), created.info.id).await;
    info.expect("get").last_used_at
}

/// Starts a flush and returns once its write is inside the store, held until
/// `store.release` is notified.
async fn flush_held_by(
    store: &RefusingStore,
    recorder: &UsageRecorder,
) -> JoinHandle<Result<usize, StoreError>> {
    store.hold_next_write.store(true, Ordering::SeqCst);
    let flushing = tokio::spawn({
        let recorder = recorder.clone();
        async move { recorder.flush().await }
    });
    store.entered.notified().await;
    flushing
}

/// `time` cut to whole milliseconds, the recorder's resolution.
fn whole_millis(time: SystemTime) -> SystemTime {
    let since = time.duration_since(UNIX_EPOCH).expect("after 1970");
    UNIX_EPOCH + Duration::from_millis(since.as_millis().try_into().expect("fits"))
}

#[tokio::test]
async fn a_store_refusing_writes_keeps_one_queued_use_per_key() {
    let (store, manager, keys) = refusing_store_with_keys().await;
    let recorder = UsageRecorder::new(store.clone());
    let layer = uncached_layer(&manager, &recorder);
    store.refusing.store(true, Ordering::SeqCst);
    let mut last_round_began = SystemTime::now();
    for round in 0..20 {
        // Each round's uses are a whole millisecond later than every earlier round's.
        tokio::time::sleep(Duration::from_millis(2)).await;
        last_round_began = SystemTime::now();
        for created in &keys {
            assert_eq!(call(&layer, created).await, StatusCode::OK);
        }
        assert!(recorder.flush().await.is_err(), "round {round}: refused");
        let pending = recorder.pending_count();
        assert!(
            pending <= keys.len(),
            "round {round}: {pending} queued uses for {} keys",
            keys.len()
        );
    }
    store.refusing.store(false, Ordering::SeqCst);
    assert_eq!(recorder.flush().await.expect("flush"), keys.len());
    assert_eq!(store.writes.load(Ordering::SeqCst), 1, "one write");
    assert_eq!(
        store.rows.load(Ordering::SeqCst),
        keys.len(),
        "one row per key"
    );
    for (name, created) in ACCOUNTS.into_iter().zip(&keys) {
        let at = last_used(&manager, name, created).await.expect("written");
        assert!(at >= whole_millis(last_round_began), "{name}: an older use");
    }
    assert_eq!(recorder.pending_count(), 0);
}

#[tokio::test]
async fn a_full_queue_drops_the_newest_keys_uses_and_counts_them() {
    let (store, manager, keys) = refusing_store_with_keys().await;
    let recorder = UsageRecorder::new(store.clone()).max_pending(2);
    let layer = uncached_layer(&manager, &recorder);
    store.refusing.store(true, Ordering::SeqCst);
    for created in &keys {
        assert_eq!(call(&layer, created).await, StatusCode::OK);
    }
    assert_eq!(recorder.pending_count(), 2);
    assert_eq!(layer.metrics().usage_dropped, 1, "the third key's use");
    assert!(recorder.flush().await.is_err());
    assert_eq!(
        recorder.pending_count(),
        2,
        "given back, still within the cap"
    );
    // The queued keys' new uses merge with their given-back ones; the third key is refused.
    for created in &keys {
        assert_eq!(call(&layer, created).await, StatusCode::OK);
    }
    assert_eq!(recorder.pending_count(), 2);
    assert_eq!(layer.metrics().usage_dropped, 2);
    assert!(
        layer
            .metrics()
            .to_prometheus()
            .contains("\napi_key_usage_dropped_total 2\n")
    );
    store.refusing.store(false, Ordering::SeqCst);
    assert_eq!(recorder.flush().await.expect("flush"), 2);
    assert!(last_used(&manager, ACCOUNTS[0], &keys[0]).await.is_some());
    assert!(last_used(&manager, ACCOUNTS[1], &keys[1]).await.is_some());
    assert_eq!(last_used(&manager, ACCOUNTS[2], &keys[2]).await, None);
    // With room again, the dropped key's next use is recorded.
    assert_eq!(call(&layer, &keys[2]).await, StatusCode::OK);
    assert_eq!(recorder.flush().await.expect("flush"), 1);
    assert!(last_used(&manager, ACCOUNTS[2], &keys[2]).await.is_some());
    assert_eq!(layer.metrics().usage_dropped, 2);
}

#[tokio::test]
async fn a_use_during_a_successful_flush_is_written_by_the_next_one() {
    let (store, manager, keys) = refusing_store_with_keys().await;
    let recorder = UsageRecorder::new(store.clone());
    let layer = ApiKeyLayer::for_manager(&manager)
        .record_usage(recorder.clone())
        .build();
    assert_eq!(call(&layer, &keys[0]).await, StatusCode::OK);
    let flushing = flush_held_by(&store, &recorder).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let during = SystemTime::now();
    assert_eq!(call(&layer, &keys[0]).await, StatusCode::OK);
    store.release.notify_one();
    assert_eq!(flushing.await.expect("join").expect("flush"), 1);
    assert_eq!(recorder.pending_count(), 1, "the use made during the write");
    assert_eq!(recorder.flush().await.expect("flush"), 1);
    let at = last_used(&manager, ACCOUNTS[0], &keys[0])
        .await
        .expect("written");
    assert!(at >= whole_millis(during));
}

#[tokio::test]
async fn a_use_during_a_failed_flush_merges_with_the_given_back_one() {
    let (store, manager, keys) = refusing_store_with_keys().await;
    let recorder = UsageRecorder::new(store.clone());
    let layer = uncached_layer(&manager, &recorder);
    assert_eq!(call(&layer, &keys[0]).await, StatusCode::OK);
    store.refusing.store(true, Ordering::SeqCst);
    let flushing = flush_held_by(&store, &recorder).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let during = SystemTime::now();
    assert_eq!(call(&layer, &keys[0]).await, StatusCode::OK);
    store.release.notify_one();
    assert!(flushing.await.expect("join").is_err());
    assert_eq!(recorder.pending_count(), 1, "one entry for the key");
    store.refusing.store(false, Ordering::SeqCst);
    assert_eq!(recorder.flush().await.expect("flush"), 1);
    let at = last_used(&manager, ACCOUNTS[0], &keys[0])
        .await
        .expect("written");
    assert!(at >= whole_millis(during), "the later use wins");
}

#[tokio::test]
async fn a_cancelled_flush_gives_its_uses_back() {
    let (store, manager, keys) = refusing_store_with_keys().await;
    let recorder = UsageRecorder::new(store.clone());
    let layer = uncached_layer(&manager, &recorder);
    assert_eq!(call(&layer, &keys[0]).await, StatusCode::OK);
    let flushing = flush_held_by(&store, &recorder).await;
    flushing.abort();
    assert!(flushing.await.expect_err("aborted").is_cancelled());
    assert_eq!(recorder.pending_count(), 1, "given back");
    assert_eq!(recorder.flush().await.expect("flush"), 1);
    assert!(last_used(&manager, ACCOUNTS[0], &keys[0]).await.is_some());
}
