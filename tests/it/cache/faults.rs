//! The cache's promises about misses: coalescing, negative entries, and faults that are
//! answered 503 and never cached.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::pepper;
use crate::support::service::status;
use crate::support::wait::{PATIENCE, until};
use async_trait::async_trait;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tokio::sync::Semaphore;
use tower::{Layer, service_fn};
use tower_api_key::cache::CacheConfig;
use tower_api_key::feed::{ChangeFeed, FeedError, FeedMessage};
use tower_api_key::key::{ApiKey, KeyDigest};
use tower_api_key::resolver::{ResolveError, Resolver};
use tower_api_key::{ApiKeyLayer, Authenticated};

/// What the test resolver does on each call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Accept,
    Refuse,
    Fail,
    Panic,
    Hang,
    /// Refuse, once [`ScriptedResolver::release`] is called.
    RefuseWhenReleased,
}

struct ScriptedResolver {
    calls: AtomicUsize,
    delay: Duration,
    behaviour: std::sync::Mutex<Behaviour>,
    released: Semaphore,
}

impl ScriptedResolver {
    fn new(behaviour: Behaviour, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            delay,
            behaviour: std::sync::Mutex::new(behaviour),
            released: Semaphore::new(0),
        })
    }

    /// Lets every call held by [`Behaviour::RefuseWhenReleased`] go on, now and later.
    fn release(&self) {
        self.released.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("lock") = behaviour;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The account the scripted resolver accepts: the key's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prefix(String);

impl tower_api_key::Account for Prefix {}

#[async_trait]
impl Resolver for ScriptedResolver {
    type Account = Prefix;

    async fn resolve(&self, key: &ApiKey, _: &KeyDigest) -> Result<Option<Prefix>, ResolveError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let behaviour = *self.behaviour.lock().expect("lock");
        match behaviour {
            Behaviour::Accept => Ok(Some(Prefix(key.prefix().to_string()))),
            Behaviour::Refuse => Ok(None),
            Behaviour::Fail => Err(ResolveError::new("database is down")),
            Behaviour::Panic => panic!("resolver bug"),
            Behaviour::Hang => std::future::pending().await,
            Behaviour::RefuseWhenReleased => {
                let _released = self.released.acquire().await.expect("never closed");
                Ok(None)
            }
        }
    }
}

type Service = tower_api_key::ApiKeyService<
    tower::util::BoxCloneSyncService<Request<()>, Response<Empty<bytes::Bytes>>, Infallible>,
    Arc<ScriptedResolver>,
>;

fn service(resolver: &Arc<ScriptedResolver>, config: CacheConfig) -> Service {
    service_and_layer(resolver, config).0
}

/// The service, and the layer it was made with (for its metrics).
fn service_and_layer(
    resolver: &Arc<ScriptedResolver>,
    config: CacheConfig,
) -> (Service, ApiKeyLayer<Arc<ScriptedResolver>>) {
    let layer = ApiKeyLayer::builder(resolver.clone(), pepper())
        .cache_config(config)
        .build();
    let inner = service_fn(|request: Request<()>| async move {
        assert!(
            request
                .extensions()
                .get::<Authenticated<Prefix>>()
                .is_some()
        );
        Ok::<_, Infallible>(Response::new(Empty::new()))
    });
    let service = layer.layer(tower::util::BoxCloneSyncService::new(inner));
    (service, layer)
}

async fn concurrently(service: &Service, key: &ApiKey, n: usize) -> Vec<StatusCode> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (service, key) = (service.clone(), key.clone());
            tokio::spawn(async move { status(&service, key.expose_secret()).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    statuses
}

fn key() -> ApiKey {
    ApiKey::generate().expect("randomness")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_unknown_key_make_one_resolver_call() {
    let resolver = ScriptedResolver::new(Behaviour::Refuse, Duration::from_millis(100));
    let service = service(&resolver, CacheConfig::default());
    let unknown = key();
    let statuses = concurrently(&service, &unknown, 50).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    assert_eq!(resolver.calls(), 1);
    // The refusal is cached: later requests don't reach the resolver either.
    assert_eq!(
        status(&service, unknown.expose_secret()).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(resolver.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_valid_key_make_one_resolver_call() {
    let resolver = ScriptedResolver::new(Behaviour::Accept, Duration::from_millis(100));
    let service = service(&resolver, CacheConfig::default());
    let valid = key();
    let statuses = concurrently(&service, &valid, 50).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(resolver.calls(), 1);
}

#[tokio::test]
async fn negative_entries_expire_after_their_ttl() {
    const TTL: Duration = Duration::from_millis(50);
    let resolver = ScriptedResolver::new(Behaviour::Refuse, Duration::ZERO);
    let service = service(&resolver, CacheConfig::default().negative_ttl(TTL));
    let unknown = key();
    // The entry is made after this: it lives at least until then.
    let lives_until = Instant::now() + TTL;
    assert_eq!(
        status(&service, unknown.expose_secret()).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(resolver.calls(), 1);

    // From now on the resolver lets the key in: a refusal can only come from the entry.
    resolver.set(Behaviour::Accept);
    let answers = std::sync::Mutex::new(Vec::new());
    until("the negative entry to expire", || async {
        let answer = status(&service, unknown.expose_secret()).await;
        answers.lock().expect("lock").push((answer, Instant::now()));
        answer == StatusCode::OK
    })
    .await;
    assert_eq!(
        resolver.calls(),
        2,
        "every refusal came from the entry, and one call let the key in"
    );
    for (answer, answered) in answers.into_inner().expect("lock") {
        if answered < lives_until {
            assert_eq!(answer, StatusCode::UNAUTHORIZED, "answered within the TTL");
        }
    }
}

#[tokio::test]
async fn resolver_errors_are_503_and_never_cached() {
    let resolver = ScriptedResolver::new(Behaviour::Fail, Duration::ZERO);
    let service = service(&resolver, CacheConfig::default());
    let valid = key();
    assert_eq!(
        status(&service, valid.expose_secret()).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status(&service, valid.expose_secret()).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(resolver.calls(), 2);
    resolver.set(Behaviour::Accept);
    assert_eq!(
        status(&service, valid.expose_secret()).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_panicking_resolver_is_503_and_the_service_keeps_serving() {
    let resolver = ScriptedResolver::new(Behaviour::Panic, Duration::ZERO);
    let service = service(&resolver, CacheConfig::default());
    let valid = key();
    assert_eq!(
        status(&service, valid.expose_secret()).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    resolver.set(Behaviour::Accept);
    assert_eq!(
        status(&service, valid.expose_secret()).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_hanging_resolver_is_503_after_the_lookup_timeout() {
    let resolver = ScriptedResolver::new(Behaviour::Hang, Duration::ZERO);
    let config = CacheConfig::default().lookup_timeout(Some(Duration::from_millis(50)));
    let service = service(&resolver, config);
    let valid = key();
    let answer = tokio::time::timeout(PATIENCE, status(&service, valid.expose_secret()))
        .await
        .expect("answered when the lookup timed out, not left hanging");
    assert_eq!(answer, StatusCode::SERVICE_UNAVAILABLE);
    resolver.set(Behaviour::Accept);
    assert_eq!(
        status(&service, valid.expose_secret()).await,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_abandoned_by_its_requests_still_completes_and_is_cached() {
    let resolver = ScriptedResolver::new(Behaviour::Accept, Duration::from_millis(50));
    let (service, layer) = service_and_layer(&resolver, CacheConfig::default());
    let valid = key();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(5),
        status(&service, valid.expose_secret()),
    )
    .await;
    assert!(abandoned.is_err(), "the request was dropped mid-lookup");
    // Until the lookup ends, later requests join it; after, the cache answers them.
    until("a request answered from the cache", || async {
        assert_eq!(
            status(&service, valid.expose_secret()).await,
            StatusCode::OK
        );
        layer.metrics().cache_hits == 1
    })
    .await;
    assert_eq!(
        resolver.calls(),
        1,
        "the abandoned lookup's answer was cached"
    );
}

/// A change feed the test takes down and brings back: while `down` is set it refuses to
/// subscribe, and a message on `losses` ends the current subscription.
struct SwitchableFeed {
    down: Arc<std::sync::atomic::AtomicBool>,
    losses: tokio::sync::mpsc::UnboundedReceiver<()>,
    echoes: std::collections::VecDeque<u64>,
}

#[async_trait]
impl ChangeFeed for SwitchableFeed {
    async fn subscribe(&mut self) -> Result<(), FeedError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(FeedError::new("down"));
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<Vec<FeedMessage>, FeedError> {
        if let Some(nonce) = self.echoes.pop_front() {
            return Ok(vec![FeedMessage::Heartbeat(nonce)]);
        }
        match self.losses.recv().await {
            Some(()) => Err(FeedError::new("connection reset")),
            None => std::future::pending().await,
        }
    }

    async fn send_heartbeat(&mut self, nonce: u64) -> Result<(), FeedError> {
        self.echoes.push_back(nonce);
        Ok(())
    }
}

#[tokio::test]
async fn while_a_change_channel_is_lost_nothing_is_served_from_the_cache() {
    use tower_api_key::feed::{self, FeedConfig};
    use tower_api_key::invalidation::InvalidationBus;
    let resolver = ScriptedResolver::new(Behaviour::Accept, Duration::ZERO);
    let bus = InvalidationBus::new();
    let layer = ApiKeyLayer::builder(resolver.clone(), pepper())
        .invalidated_by(&bus)
        .build();
    let inner = service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Empty::<bytes::Bytes>::new()))
    });
    let service = layer.layer(tower::util::BoxCloneSyncService::new(inner));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (lose, losses) = tokio::sync::mpsc::unbounded_channel();
    let feed = SwitchableFeed {
        down: down.clone(),
        losses,
        echoes: Default::default(),
    };
    // Heartbeats no loaded machine can miss: only the test's losses count.
    let config = FeedConfig::default()
        .heartbeat(Duration::from_millis(50), Duration::from_secs(60))
        .backoff(Duration::from_millis(1), Duration::from_millis(5));
    let task = feed::spawn(feed, &bus, config);
    assert!(task.wait_subscribed(Duration::from_secs(10)).await);

    let valid = key();
    assert_eq!(
        status(&service, valid.expose_secret()).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&service, valid.expose_secret()).await,
        StatusCode::OK
    );
    assert_eq!(resolver.calls(), 1, "cached while the channel is up");

    down.store(true, Ordering::SeqCst);
    lose.send(()).expect("feed runs");
    assert!(
        task.wait_for(Duration::from_secs(10), |s| s.outages == 1)
            .await
    );
    for expected_calls in 2..=4 {
        assert_eq!(
            status(&service, valid.expose_secret()).await,
            StatusCode::OK
        );
        assert_eq!(
            resolver.calls(),
            expected_calls,
            "every request asks the resolver"
        );
    }

    down.store(false, Ordering::SeqCst);
    assert!(task.wait_subscribed(Duration::from_secs(10)).await);
    assert_eq!(
        status(&service, valid.expose_secret()).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&service, valid.expose_secret()).await,
        StatusCode::OK
    );
    assert_eq!(resolver.calls(), 5, "cached again once the channel is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_beyond_the_limit_are_shed_with_503_while_the_running_ones_are_held() {
    let resolver = ScriptedResolver::new(Behaviour::RefuseWhenReleased, Duration::ZERO);
    // No timeout: the two running lookups keep their permits until released.
    let config = CacheConfig::default()
        .max_concurrent_lookups(Some(2))
        .lookup_timeout(None);
    let (service, layer) = service_and_layer(&resolver, config);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { status(&service, key().expose_secret()).await })
        })
        .collect();
    until("two lookups to run", || async { resolver.calls() == 2 }).await;

    // Every other key is answered 503 while both lookups are still held: at once, without
    // waiting for a permit.
    for _ in 0..8 {
        assert_eq!(
            status(&service, key().expose_secret()).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(resolver.calls(), 2, "shed keys never reach the resolver");
    assert_eq!(layer.metrics().lookups_shed, 8);

    resolver.release();
    for request in held {
        assert_eq!(request.await.expect("task"), StatusCode::UNAUTHORIZED);
    }
    // Permits come back when lookups finish.
    assert_eq!(
        status(&service, key().expose_secret()).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(resolver.calls(), 3);
}
