//! "At once" (DESIGN.md §3) under races: no request that starts after a change returns may
//! be decided by the state before it, even while lookups for that key are in flight.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use support::{TestStore, account, pepper};
use tower::{Layer, ServiceExt, service_fn};
use tower_api_key::cache::CacheConfig;
use tower_api_key::{ApiKeyLayer, ApiKeyService, KeyManager, StoreResolver};

type Inner = tower::util::ServiceFn<
    fn(
        Request<()>,
    )
        -> std::future::Ready<Result<Response<http_body_util::Empty<bytes::Bytes>>, Infallible>>,
>;

fn ok(
    _: Request<()>,
) -> std::future::Ready<Result<Response<http_body_util::Empty<bytes::Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(http_body_util::Empty::new())))
}

fn stack(manager: &KeyManager) -> ApiKeyService<Inner, StoreResolver> {
    // A short positive TTL keeps misses (and so in-flight lookups) frequent.
    let layer = ApiKeyLayer::for_manager(manager)
        .cache_config(CacheConfig::default().positive_ttl(Duration::from_millis(1)))
        .build();
    layer.layer(service_fn(ok as fn(_) -> _))
}

async fn status(service: &ApiKeyService<Inner, StoreResolver>, key: &str) -> StatusCode {
    let request = Request::get("/")
        .header("x-api-key", key)
        .body(())
        .expect("request");
    service
        .clone()
        .oneshot(request)
        .await
        .expect("infallible")
        .status()
}

/// Runs `rounds` of: hammer `key` from many tasks, apply `change`, keep hammering; any
/// request that *started* after `change` returned must get `expected_after`.
async fn hammer_across_change<C, F>(
    service: ApiKeyService<Inner, StoreResolver>,
    key: String,
    expected_after: StatusCode,
    mut change: C,
) -> (usize, usize)
where
    C: FnMut() -> F,
    F: std::future::Future<Output = ()>,
{
    let changed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicUsize::new(0));
    let violations = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (service, key) = (service.clone(), key.clone());
            let (changed, stop) = (changed.clone(), stop.clone());
            let (checked, violations) = (checked.clone(), violations.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let started_after_change = changed.load(Ordering::SeqCst);
                    let status = status(&service, &key).await;
                    if started_after_change {
                        checked.fetch_add(1, Ordering::SeqCst);
                        if status != expected_after {
                            violations.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(3)).await;
    change().await;
    changed.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("worker");
    }
    (
        checked.load(Ordering::SeqCst),
        violations.load(Ordering::SeqCst),
    )
}

const ROUNDS: usize = 40;

fn racing_store() -> Arc<TestStore> {
    let store = TestStore::new();
    // Lookups read the store, then wait up to 3 ms before answering: stale answers arrive
    // while the change is applied.
    store.max_delay_us.store(3_000, Ordering::Relaxed);
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_key_is_rejected_immediately_under_load() {
    let store = racing_store();
    let manager = KeyManager::new(store.clone(), pepper());
    let service = stack(&manager);
    let created = manager.create(&account("acme")).await.expect("create");
    let (mut checked, mut violations) = (0, 0);
    for _ in 0..ROUNDS {
        manager
            .reactivate(&account("acme"), created.info.id)
            .await
            .expect("reactivate");
        let manager = manager.clone();
        let (c, v) = hammer_across_change(
            service.clone(),
            created.key.expose_secret().to_owned(),
            StatusCode::UNAUTHORIZED,
            || async {
                manager
                    .revoke(&account("acme"), created.info.id)
                    .await
                    .expect("revoke");
            },
        )
        .await;
        checked += c;
        violations += v;
    }
    assert!(
        checked > ROUNDS,
        "the race was exercised ({checked} checks)"
    );
    assert_eq!(violations, 0, "requests let in after revoke returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reactivated_key_is_accepted_immediately_under_load() {
    let store = racing_store();
    let manager = KeyManager::new(store.clone(), pepper());
    let service = stack(&manager);
    let created = manager.create(&account("acme")).await.expect("create");
    let (mut checked, mut violations) = (0, 0);
    for _ in 0..ROUNDS {
        manager
            .revoke(&account("acme"), created.info.id)
            .await
            .expect("revoke");
        let manager = manager.clone();
        let (c, v) = hammer_across_change(
            service.clone(),
            created.key.expose_secret().to_owned(),
            StatusCode::OK,
            || async {
                manager
                    .reactivate(&account("acme"), created.info.id)
                    .await
                    .expect("reactivate");
            },
        )
        .await;
        checked += c;
        violations += v;
    }
    assert!(
        checked > ROUNDS,
        "the race was exercised ({checked} checks)"
    );
    assert_eq!(
        violations, 0,
        "stale negative entries outlived reactivation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_away_key_is_rejected_immediately_under_load() {
    let store = racing_store();
    let manager = KeyManager::new(store.clone(), pepper());
    let service = stack(&manager);
    let created = manager.create(&account("acme")).await.expect("create");
    let mut current = created.key.expose_secret().to_owned();
    let (mut checked, mut violations) = (0, 0);
    for _ in 0..ROUNDS {
        let next = Arc::new(std::sync::Mutex::new(None));
        let (manager, slot) = (manager.clone(), next.clone());
        let (c, v) = hammer_across_change(
            service.clone(),
            current.clone(),
            StatusCode::UNAUTHORIZED,
            || async {
                let rotated = manager
                    .rotate(&account("acme"), created.info.id)
                    .await
                    .expect("rotate");
                *slot.lock().expect("lock") = Some(rotated.key);
            },
        )
        .await;
        checked += c;
        violations += v;
        let new_key = next.lock().expect("lock").take().expect("rotated");
        assert_eq!(
            status(&service, new_key.expose_secret()).await,
            StatusCode::OK
        );
        current = new_key.expose_secret().to_owned();
    }
    assert!(
        checked > ROUNDS,
        "the race was exercised ({checked} checks)"
    );
    assert_eq!(violations, 0, "old keys let in after rotate returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_key_is_rejected_immediately_under_load() {
    let store = racing_store();
    let manager = KeyManager::new(store.clone(), pepper());
    let service = stack(&manager);
    let (mut checked, mut violations) = (0, 0);
    for _ in 0..ROUNDS {
        let created = manager.create(&account("acme")).await.expect("create");
        let manager = manager.clone();
        let (c, v) = hammer_across_change(
            service.clone(),
            created.key.expose_secret().to_owned(),
            StatusCode::UNAUTHORIZED,
            || async {
                manager
                    .delete(&account("acme"), created.info.id)
                    .await
                    .expect("delete");
            },
        )
        .await;
        checked += c;
        violations += v;
    }
    assert!(
        checked > ROUNDS,
        "the race was exercised ({checked} checks)"
    );
    assert_eq!(violations, 0, "deleted keys let in after delete returned");
}
