//! Faults of the key store (ARCHITECTURE.md, *Hardening*), where `cache::faults` leaves off: a
//! real `StoreResolver` over a store that fails, hangs or panics, behind a loopback HTTP server.
//! After each fault valid keys work again without a restart, no lookup permit is lost, and no
//! revoked key is let in at any point.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::http::{client, get, serve};
use crate::support::keys::unknown;
use crate::support::wait::until;
use crate::support::{account, pepper};
use axum::Router;
use axum::routing::get as route_get;
use http::StatusCode;
use tokio::sync::Semaphore;
use tower_api_key::cache::CacheConfig;
use tower_api_key::{
    ApiKeyLayer, Authenticated, KeyId, KeyIdentity, KeyManager, KeyPrefix, KeyRecord, KeyStore,
    MemoryStore, StoreError, StoreResolver,
};

// ===== a store with faults on its read path =====

/// What `find_by_prefix` does; writes always work (a read replica or a connection pool for
/// lookups can fail while the primary takes changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Reads {
    Work,
    Fail,
    Hang,
    Panic,
    /// Read the record, then wait for the gate before answering with it.
    ReadThenWait,
}

struct FaultyStore {
    inner: MemoryStore,
    reads: AtomicU8,
    /// Whether writes fail too (the whole store is gone).
    writes_fail: std::sync::atomic::AtomicBool,
    gate: Semaphore,
    lookups: AtomicUsize,
}

impl FaultyStore {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(),
            reads: AtomicU8::new(Reads::Work as u8),
            writes_fail: std::sync::atomic::AtomicBool::new(false),
            gate: Semaphore::new(0),
            lookups: AtomicUsize::new(0),
        })
    }

    fn set(&self, reads: Reads) {
        self.reads.store(reads as u8, Ordering::SeqCst);
    }

    fn reads(&self) -> Reads {
        match self.reads.load(Ordering::SeqCst) {
            0 => Reads::Work,
            1 => Reads::Fail,
            2 => Reads::Hang,
            3 => Reads::Panic,
            _ => Reads::ReadThenWait,
        }
    }

    fn open_gate(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    fn write(&self) -> Result<(), StoreError> {
        if self.writes_fail.load(Ordering::SeqCst) {
            Err(StoreError::unavailable("connection refused"))
        } else {
            Ok(())
        }
    }
}

impl crate::support::hooks::StoreHooks for FaultyStore {
    fn records(&self) -> &MemoryStore {
        &self.inner
    }
    fn before_write(&self) -> Result<(), StoreError> {
        self.write()
    }
    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        match self.reads() {
            Reads::Work => self.inner.find_by_prefix(prefix).await,
            Reads::Fail => Err(StoreError::unavailable("connection refused")),
            Reads::Hang => std::future::pending().await,
            Reads::Panic => panic!("store driver bug (on purpose, in a test)"),
            Reads::ReadThenWait => {
                let found = self.inner.find_by_prefix(prefix).await;
                let _permit = self.gate.acquire().await.expect("gate open");
                found
            }
        }
    }
}

crate::support::hooks::hooked_key_store!(FaultyStore);

// ===== a loopback server =====

struct Server {
    addr: std::net::SocketAddr,
    store: Arc<FaultyStore>,
    manager: KeyManager,
    layer: ApiKeyLayer<StoreResolver>,
}

async fn whoami(who: Authenticated<KeyIdentity>) -> String {
    who.account_id().to_string()
}

async fn start(config: CacheConfig) -> Server {
    let store = FaultyStore::new();
    let manager = KeyManager::new(store.clone(), pepper());
    let layer = ApiKeyLayer::for_manager(&manager)
        .cache_config(config)
        .build();
    let app = Router::new()
        .route("/whoami", route_get(whoami))
        .route("/healthz", route_get(|| async { "ok" }))
        .route_layer(layer.clone());
    Server {
        addr: serve(app).await,
        store,
        manager,
        layer,
    }
}

impl Server {
    async fn status(&self, key: &str) -> StatusCode {
        get(&client(), self.addr, "/whoami", &[key]).await.status
    }

    async fn create(&self, owner: &str) -> (KeyId, String) {
        let created = self.manager.create(&account(owner)).await.expect("create");
        (created.info.id, created.key.expose_secret().to_owned())
    }
}

/// Sends each key from its own task at once; returns each status.
async fn at_once(server: &Server, keys: Vec<String>) -> Vec<StatusCode> {
    let tasks: Vec<_> = keys
        .into_iter()
        .map(|key| {
            let addr = server.addr;
            tokio::spawn(async move { get(&client(), addr, "/whoami", &[&key]).await.status })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("request task"));
    }
    answers
}

fn assert_all_unavailable(answers: &[StatusCode]) {
    assert!(
        answers
            .iter()
            .all(|status| *status == StatusCode::SERVICE_UNAVAILABLE),
        "{answers:?}"
    );
}

const LIMITED: usize = 4;

/// A server whose layer starts at most `LIMITED` lookups at once, each given `timeout`; and a
/// valid key.
async fn limited(timeout: Option<Duration>) -> (Server, String) {
    let server = start(
        CacheConfig::default()
            .max_concurrent_lookups(Some(LIMITED))
            .lookup_timeout(timeout),
    )
    .await;
    let (_, valid) = server.create("acme").await;
    (server, valid)
}

/// Valid keys work again and no lookup permit was lost: more unknown keys in a row than
/// the limit are all answered 401, not 503.
async fn assert_recovered(server: &Server, valid: &str, limit: usize) {
    assert_eq!(server.status(valid).await, StatusCode::OK);
    for _ in 0..limit + 2 {
        assert_eq!(server.status(&unknown()).await, StatusCode::UNAUTHORIZED);
    }
}

// ===== panics =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_store_is_503_and_the_server_keeps_serving_without_losing_permits() {
    const LIMIT: usize = 2;
    let server = start(CacheConfig::default().max_concurrent_lookups(Some(LIMIT))).await;
    let (_, valid) = server.create("acme").await;

    server.store.set(Reads::Panic);
    let mut keys: Vec<String> = (0..40).map(|_| unknown()).collect();
    keys.push(valid.clone());
    let answers = at_once(&server, keys).await;
    // Each lookup's panic is caught: its requests get 503 (so do those shed meanwhile).
    assert_all_unavailable(&answers);
    assert!(server.store.lookups() >= 1);
    assert_eq!(
        get(&client(), server.addr, "/healthz", &[&valid])
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE,
        "still panicking: the valid key can't be checked"
    );

    server.store.set(Reads::Work);
    assert_recovered(&server, &valid, LIMIT).await;
    let metrics = server.layer.metrics();
    assert_eq!(
        metrics.resolver_failures,
        server.store.lookups() as u64 - (LIMIT as u64 + 3)
    );
}

// ===== hangs =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_is_503_after_the_lookup_timeout_and_recovers_without_losing_permits() {
    let (server, valid) = limited(Some(Duration::from_millis(200))).await;

    server.store.set(Reads::Hang);
    let answers = at_once(&server, (0..24).map(|_| unknown()).collect()).await;
    // Every request is answered, none waits forever: a lookup gives up at the timeout, and
    // one that can't start is shed (how many of each depends on how fast the flood went out).
    assert_all_unavailable(&answers);
    let metrics = server.layer.metrics();
    let lookups = server.store.lookups() as u64;
    assert_eq!(
        lookups + metrics.lookups_shed,
        24,
        "each key looked up or shed"
    );
    assert_eq!(metrics.resolver_failures, lookups, "each lookup timed out");

    server.store.set(Reads::Work);
    assert_recovered(&server, &valid, LIMITED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_beyond_the_limit_are_shed_while_the_store_holds_the_running_ones() {
    // No timeout: the running lookups keep their permits until the store answers.
    let (server, valid) = limited(None).await;

    server.store.set(Reads::ReadThenWait);
    let addr = server.addr;
    let running: Vec<_> = (0..LIMITED)
        .map(|_| {
            let key = unknown();
            tokio::spawn(async move { get(&client(), addr, "/whoami", &[&key]).await.status })
        })
        .collect();
    wait_for(|| server.store.lookups() == LIMITED).await;

    let answers = at_once(&server, (0..20).map(|_| unknown()).collect()).await;
    assert_all_unavailable(&answers);
    assert_eq!(server.store.lookups(), LIMITED, "the store saw no more");
    assert_eq!(server.layer.metrics().lookups_shed, 20);

    server.store.open_gate();
    for request in running {
        assert_eq!(request.await.expect("request"), StatusCode::UNAUTHORIZED);
    }
    server.store.set(Reads::Work);
    assert_recovered(&server, &valid, LIMITED).await;
}

// ===== outages and revocation =====

#[tokio::test]
async fn while_the_store_is_down_no_revoked_key_gets_in_and_all_recovers_without_a_restart() {
    let server = start(CacheConfig::default()).await;
    let (_, cached) = server.create("acme").await;
    let (_, never_used) = server.create("acme").await;
    let (revoked_id, revoked) = server.create("acme").await;
    let (revoked_in_outage_id, revoked_in_outage) = server.create("other").await;
    let (rotated_id, rotated_in_outage) = server.create("other").await;
    server
        .manager
        .revoke(&account("acme"), revoked_id)
        .await
        .expect("revoke");
    for key in [&cached, &revoked_in_outage, &rotated_in_outage] {
        assert_eq!(server.status(key).await, StatusCode::OK, "warm the cache");
    }
    assert_eq!(server.status(&revoked).await, StatusCode::UNAUTHORIZED);

    // Lookups fail; changes still reach the store and the cache.
    server.store.set(Reads::Fail);
    let down = get(&client(), server.addr, "/whoami", &[&never_used]).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.headers["retry-after"], "1");
    // Entries cached before the outage keep serving (until their TTL)...
    assert_eq!(server.status(&cached).await, StatusCode::OK);
    // ...but a revoked key is never let in: refused from its negative entry, or 503.
    assert_ne!(server.status(&revoked).await, StatusCode::OK);
    // A change made during the outage takes effect at once, outage or not.
    server
        .manager
        .revoke(&account("other"), revoked_in_outage_id)
        .await
        .expect("revoke while lookups fail");
    let rotated = server
        .manager
        .rotate(&account("other"), rotated_id)
        .await
        .expect("rotate while lookups fail");
    for _ in 0..5 {
        assert_eq!(
            server.status(&revoked_in_outage).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            server.status(&rotated_in_outage).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_ne!(server.status(&revoked).await, StatusCode::OK);
    }

    // The whole store gone: changes fail, so nothing changed and nothing is let in anew.
    server
        .store
        .writes_fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        server
            .manager
            .reactivate(&account("acme"), revoked_id)
            .await
            .is_err()
    );
    assert_ne!(server.status(&revoked).await, StatusCode::OK);

    // Back: everything answers from the store again, without a restart.
    server
        .store
        .writes_fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    server.store.set(Reads::Work);
    assert_eq!(server.status(&never_used).await, StatusCode::OK);
    assert_eq!(server.status(&cached).await, StatusCode::OK);
    assert_eq!(server.status(&revoked).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        server.status(&revoked_in_outage).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server.status(&rotated_in_outage).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server.status(rotated.key.expose_secret()).await,
        StatusCode::OK
    );
    server
        .manager
        .reactivate(&account("other"), revoked_in_outage_id)
        .await
        .expect("reactivate");
    assert_eq!(server.status(&revoked_in_outage).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_read_before_a_revoke_and_held_past_it_is_never_served_to_later_requests() {
    let server = start(CacheConfig::default()).await;
    let (id, key) = server.create("acme").await;
    server.store.set(Reads::ReadThenWait);

    // r1 reads the active record, then its answer is held back.
    let addr = server.addr;
    let first = {
        let key = key.clone();
        tokio::spawn(async move { get(&client(), addr, "/whoami", &[&key]).await.status })
    };
    wait_for(|| server.store.lookups() == 1).await;

    server
        .manager
        .revoke(&account("acme"), id)
        .await
        .expect("revoke");

    // r2 starts after the revoke returned: it must not join r1's stale lookup.
    let second = {
        let key = key.clone();
        tokio::spawn(async move { get(&client(), addr, "/whoami", &[&key]).await.status })
    };
    wait_for(|| server.store.lookups() == 2).await;

    server.store.open_gate();
    server.store.set(Reads::Work);
    // r1 started before the revoke returned: either answer is allowed; the stale one is 200.
    let first = first.await.expect("r1");
    assert!(matches!(first, StatusCode::OK | StatusCode::UNAUTHORIZED));
    assert_eq!(second.await.expect("r2"), StatusCode::UNAUTHORIZED);
    // r1's stale "found" was not cached: later requests are refused from r2's answer.
    for _ in 0..5 {
        assert_eq!(server.status(&key).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.store.lookups(), 2, "refused from the negative entry");
}

async fn wait_for(condition: impl Fn() -> bool) {
    until("the store to see its lookups", || {
        std::future::ready(condition())
    })
    .await;
}
