//! "At once" under races: no request that starts after a change returns may be decided by the
//! state before it, even while lookups for that key are in flight (ARCHITECTURE.md, *The cache:
//! why a revoked key can't come back*).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::exclusive::exclusive;
use crate::support::service::{Stack, stack, status};
use crate::support::stores::TestStore;
use crate::support::wait::until;
use crate::support::{account, pepper};
use std::convert::Infallible;
use std::future::ready;

use http::{Request, Response, StatusCode};
use tower::{Layer as _, Service};
use tower_api_key::cache::CacheConfig;
use tower_api_key::{
    ApiKeyLayer, KeyIdentity, KeyManager, PolicyUpdate, RequireScopeLayer, RotateOptions, Scopes,
};

fn short_lived_layer(manager: &KeyManager) -> ApiKeyLayer<tower_api_key::StoreResolver> {
    // A short positive TTL keeps misses (and so in-flight lookups) frequent.
    ApiKeyLayer::for_manager(manager)
        .cache_config(CacheConfig::default().positive_ttl(Duration::from_millis(1)))
        .build()
}

fn short_lived_stack(manager: &KeyManager) -> Stack {
    stack(&short_lived_layer(manager))
}

/// Requests each side of a change, per round: enough that every round races the change, counted
/// rather than timed so that a slow machine only makes the round longer.
const REQUESTS_EACH_SIDE: usize = 16;

/// Hammers `key` from many tasks, applies `change` once they are under way, and keeps
/// hammering until [`REQUESTS_EACH_SIDE`] requests started after `change` returned: each of
/// those must get `expected_after`.
async fn hammer_across_change<S, B, C, F>(
    service: S,
    key: String,
    expected_after: StatusCode,
    mut change: C,
) -> (usize, usize)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    C: FnMut() -> F,
    F: std::future::Future<Output = ()>,
{
    let changed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let before = Arc::new(AtomicUsize::new(0));
    let checked = Arc::new(AtomicUsize::new(0));
    let violations = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (service, key) = (service.clone(), key.clone());
            let (changed, stop) = (changed.clone(), stop.clone());
            let (before, checked, violations) =
                (before.clone(), checked.clone(), violations.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let started_after_change = changed.load(Ordering::SeqCst);
                    let status = status(&service, &key).await;
                    if started_after_change {
                        checked.fetch_add(1, Ordering::SeqCst);
                        if status != expected_after {
                            violations.fetch_add(1, Ordering::SeqCst);
                        }
                    } else {
                        before.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let enough = |count: &AtomicUsize| count.load(Ordering::SeqCst) >= REQUESTS_EACH_SIDE;
    until("requests before the change", || ready(enough(&before))).await;
    change().await;
    changed.store(true, Ordering::SeqCst);
    until("requests after the change", || ready(enough(&checked))).await;
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

/// One race test's stack and tally: a manager over a slow store, the layer in front of a
/// trivial service, and the checks counted over all rounds.
struct Race {
    manager: KeyManager,
    service: Stack,
    /// The same layer around a route that requires scope `write`.
    scoped: ApiKeyScoped,
    checked: usize,
    violations: usize,
}

type ApiKeyScoped = tower_api_key::ApiKeyService<
    tower_api_key::require_scope::RequireScope<crate::support::service::Inner, KeyIdentity>,
    tower_api_key::StoreResolver,
>;

impl Race {
    fn new() -> Self {
        let store = TestStore::new();
        // Lookups read the store, then wait up to 3 ms before answering: stale answers
        // arrive while the change is applied.
        store.max_delay_us.store(3_000, Ordering::Relaxed);
        let manager = KeyManager::new(store, pepper());
        let service = short_lived_stack(&manager);
        let scoped = short_lived_layer(&manager).layer(
            RequireScopeLayer::<KeyIdentity>::new("write")
                .layer(tower::service_fn(crate::support::service::ok as fn(_) -> _)),
        );
        Self {
            manager,
            service,
            scoped,
            checked: 0,
            violations: 0,
        }
    }

    /// One round of [`hammer_across_change`], added to the tally.
    async fn round<C, F>(&mut self, key: &str, expected_after: StatusCode, change: C)
    where
        C: FnMut() -> F,
        F: std::future::Future<Output = ()>,
    {
        let (checked, violations) =
            hammer_across_change(self.service.clone(), key.to_owned(), expected_after, change)
                .await;
        self.checked += checked;
        self.violations += violations;
    }

    /// A round against the route that requires scope `write`.
    async fn scoped_round<C, F>(&mut self, key: &str, expected_after: StatusCode, change: C)
    where
        C: FnMut() -> F,
        F: std::future::Future<Output = ()>,
    {
        let (checked, violations) =
            hammer_across_change(self.scoped.clone(), key.to_owned(), expected_after, change).await;
        self.checked += checked;
        self.violations += violations;
    }

    fn assert_held(&self, what: &str) {
        assert!(self.checked >= ROUNDS * REQUESTS_EACH_SIDE);
        assert_eq!(self.violations, 0, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_key_is_rejected_immediately_under_load() {
    let _exclusive = exclusive().await;
    let mut race = Race::new();
    let manager = race.manager.clone();
    let created = manager.create(&account("acme")).await.expect("create");
    for _ in 0..ROUNDS {
        manager
            .reactivate(&account("acme"), created.info.id)
            .await
            .expect("reactivate");
        race.round(
            created.key.expose_secret(),
            StatusCode::UNAUTHORIZED,
            || async {
                manager
                    .revoke(&account("acme"), created.info.id)
                    .await
                    .expect("revoke");
            },
        )
        .await;
    }
    race.assert_held("requests let in after revoke returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reactivated_key_is_accepted_immediately_under_load() {
    let _exclusive = exclusive().await;
    let mut race = Race::new();
    let manager = race.manager.clone();
    let created = manager.create(&account("acme")).await.expect("create");
    for _ in 0..ROUNDS {
        manager
            .revoke(&account("acme"), created.info.id)
            .await
            .expect("revoke");
        race.round(created.key.expose_secret(), StatusCode::OK, || async {
            manager
                .reactivate(&account("acme"), created.info.id)
                .await
                .expect("reactivate");
        })
        .await;
    }
    race.assert_held("stale negative entries outlived reactivation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_away_key_is_rejected_immediately_under_load() {
    let _exclusive = exclusive().await;
    let mut race = Race::new();
    let manager = race.manager.clone();
    let created = manager.create(&account("acme")).await.expect("create");
    let mut current = created.key;
    for _ in 0..ROUNDS {
        let next = std::sync::Mutex::new(None);
        race.round(
            current.expose_secret(),
            StatusCode::UNAUTHORIZED,
            || async {
                let rotated = manager
                    .rotate(&account("acme"), created.info.id)
                    .await
                    .expect("rotate");
                *next.lock().expect("lock") = Some(rotated.key);
            },
        )
        .await;
        current = next.into_inner().expect("lock").expect("rotated");
        assert_eq!(
            status(&race.service, current.expose_secret()).await,
            StatusCode::OK
        );
    }
    race.assert_held("old keys let in after rotate returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_key_is_rejected_immediately_under_load() {
    let _exclusive = exclusive().await;
    let mut race = Race::new();
    let manager = race.manager.clone();
    for _ in 0..ROUNDS {
        let created = manager.create(&account("acme")).await.expect("create");
        race.round(
            created.key.expose_secret(),
            StatusCode::UNAUTHORIZED,
            || async {
                manager
                    .delete(&account("acme"), created.info.id)
                    .await
                    .expect("delete");
            },
        )
        .await;
    }
    race.assert_held("deleted keys let in after delete returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn narrowed_scopes_refuse_immediately_under_load() {
    let _exclusive = exclusive().await;
    let mut race = Race::new();
    let manager = race.manager.clone();
    let created = manager.create(&account("acme")).await.expect("create");
    let id = created.info.id;
    for _ in 0..ROUNDS {
        let widen = PolicyUpdate::new().scopes(None);
        manager
            .update(&account("acme"), id, widen)
            .await
            .expect("widen");
        race.scoped_round(
            created.key.expose_secret(),
            StatusCode::FORBIDDEN,
            || async {
                let narrow =
                    PolicyUpdate::new().scopes(Some(Scopes::new(["read"]).expect("scope")));
                manager
                    .update(&account("acme"), id, narrow)
                    .await
                    .expect("narrow");
            },
        )
        .await;
    }
    race.assert_held("requests let through a scoped route after narrowing returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grace_keys_are_refused_from_the_end_of_the_grace_period_under_load() {
    let _exclusive = exclusive().await;
    let mut race = Race::new();
    let manager = race.manager.clone();
    let created = manager.create(&account("acme")).await.expect("create");
    let mut current = created.key;
    for _ in 0..ROUNDS {
        let grace = RotateOptions::new()
            .grace(Duration::from_millis(20))
            .expect("short grace");
        let rotated = manager
            .rotate_with(&account("acme"), created.info.id, grace)
            .await
            .expect("rotate");
        let ends = rotated.info.previous_expires_at.expect("grace key");
        // The "change" is the clock passing the end of the grace period.
        race.round(
            current.expose_secret(),
            StatusCode::UNAUTHORIZED,
            || async {
                while std::time::SystemTime::now() <= ends {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            },
        )
        .await;
        current = rotated.key;
    }
    race.assert_held("old keys let in after their grace period ended");
}
