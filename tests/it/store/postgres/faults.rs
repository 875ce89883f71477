//! The database going away and coming back, while requests flow: a TCP proxy written here sits
//! between one stack ("process" B) and PostgreSQL and is cut, frozen and restored; another
//! stack (A) keeps its direct connection and makes changes meanwhile.
//!
//! - Store unreachable: answers are 503 (gRPC 14), nothing is cached, and service resumes by
//!   itself when the database is back.
//! - Only the change feed unreachable (its connection cut, or silently frozen): B stops
//!   trusting its cache and resolves every request from the store, so a key A revokes
//!   meanwhile is refused at once; when the feed is back, B caches again.
//! - The feed's subscription silent while its connection answers, or its runner gone: B stops
//!   trusting its cache within the heartbeat bound.
//!
//! Without `DATABASE_URL`, each test says it was skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::account;
use crate::support::db::postgres::Schema;
use crate::support::db::proxy::{self, Proxy};
use crate::support::db::stack::{Stack, StackOptions};
use crate::support::keys::unknown;
use crate::support::wait::PATIENCE;
use http::StatusCode;
use tower_api_key::feed::{self, ChangeFeed, FeedConfig, FeedError, FeedMessage};
use tower_api_key::{ApiKeyLayer, KeyManager, PgChangeFeed, PostgresStore};

/// A direct stack A, and a proxy to the database; `None` without `DATABASE_URL`.
async fn setup(test: &str) -> Option<(Schema, Stack, Proxy)> {
    let schema = Schema::create().await?;
    let target = proxy::database_addr(&schema.options()).await?;
    schema.store().await;
    let a = Stack::start(StackOptions::new(
        schema.options(),
        &format!("{}-{test}-a", schema.name),
    ))
    .await;
    let proxy = Proxy::start(target).await;
    Some((schema, a, proxy))
}

/// Connection options that go through `proxy`.
fn via(schema: &Schema, proxy: &Proxy) -> sqlx::postgres::PgConnectOptions {
    schema
        .options()
        .host(&proxy.addr.ip().to_string())
        .port(proxy.addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_503_caches_nothing_and_service_resumes_when_it_returns() {
    let Some((schema, a, proxy)) = setup("down").await else {
        return;
    };
    // B reaches the database only through the proxy: store and feed alike.
    let mut options = StackOptions::new(via(&schema, &proxy), &format!("{}-down-b", schema.name));
    options.acquire_timeout = Duration::from_millis(300);
    let b = Stack::start(options).await;
    let acme = account("acme");
    let kept = a.manager.create(&acme).await.expect("create");
    let revoked = a.manager.create(&acme).await.expect("create");
    let (kept_key, revoked_key) = (
        kept.key.expose_secret().to_owned(),
        revoked.key.expose_secret().to_owned(),
    );
    b.assert_cached(&kept_key, StatusCode::OK).await;
    b.assert_cached(&revoked_key, StatusCode::OK).await;

    proxy.cut();
    assert!(
        b.feed.wait_for(PATIENCE, |s| !s.subscribed).await,
        "B's feed noticed the cut"
    );
    // Meanwhile A, still connected, revokes a key B had cached.
    a.manager
        .revoke(&acme, revoked.info.id)
        .await
        .expect("revoke");

    let before = b.layer.metrics();
    for round in 0..5 {
        for key in [&kept_key, &revoked_key] {
            let reply = b.request(key, false).await;
            assert_eq!(
                reply.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "round {round}"
            );
            assert!(reply.headers().contains_key("retry-after"));
            let grpc = b.request(key, true).await;
            assert_eq!(grpc.status(), StatusCode::OK);
            assert_eq!(grpc.headers()["grpc-status"], "14", "gRPC UNAVAILABLE");
        }
    }
    // A well-formed key B never saw is a fault too, not a bad key.
    let unknown = unknown();
    assert_eq!(b.status(&unknown).await, StatusCode::SERVICE_UNAVAILABLE);
    let after = b.layer.metrics();
    assert_eq!(after.accepted, before.accepted, "nothing let in");
    // Every request asked the store again: no failure was cached.
    assert_eq!(after.resolver_failures - before.resolver_failures, 21);

    proxy.restore();
    b.eventually(&kept_key, StatusCode::OK).await;
    assert!(b.feed.wait_subscribed(PATIENCE).await);
    assert_eq!(b.status(&revoked_key).await, StatusCode::UNAUTHORIZED);
    b.assert_cached(&kept_key, StatusCode::OK).await;
    // And B hears A's changes again.
    a.manager.revoke(&acme, kept.info.id).await.expect("revoke");
    b.eventually(&kept_key, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_feed_is_cut_every_request_is_resolved_from_the_store() {
    let Some((schema, a, proxy)) = setup("feedcut").await else {
        return;
    };
    // B's store connects directly; only its feed goes through the proxy.
    let mut options = StackOptions::new(schema.options(), &format!("{}-feedcut-b", schema.name));
    options.feed_connect = Some(via(&schema, &proxy));
    let b = Stack::start(options).await;
    let acme = account("acme");
    let created = a.manager.create(&acme).await.expect("create");
    let key = created.key.expose_secret().to_owned();
    b.assert_cached(&key, StatusCode::OK).await;

    proxy.cut();
    assert!(
        b.feed
            .wait_for(PATIENCE, |s| !s.subscribed && s.outages == 1)
            .await
    );
    // Not from the cache: each request is a store lookup, and all succeed.
    let before = b.layer.metrics().resolver_calls;
    for _ in 0..5 {
        assert_eq!(b.status(&key).await, StatusCode::OK);
    }
    assert_eq!(b.layer.metrics().resolver_calls - before, 5);
    // A revoke B can't hear about is in force in B at once.
    a.manager
        .revoke(&acme, created.info.id)
        .await
        .expect("revoke");
    assert_eq!(b.status(&key).await, StatusCode::UNAUTHORIZED);

    proxy.restore();
    assert!(b.feed.wait_subscribed(PATIENCE).await);
    b.assert_cached(&key, StatusCode::UNAUTHORIZED).await;
    a.manager
        .reactivate(&acme, created.info.id)
        .await
        .expect("reactivate");
    b.eventually(&key, StatusCode::OK).await;
    b.assert_cached(&key, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_feed_connection_is_noticed_by_its_heartbeat() {
    let Some((schema, a, proxy)) = setup("frozen").await else {
        return;
    };
    let mut options = StackOptions::new(schema.options(), &format!("{}-frozen-b", schema.name));
    options.feed_connect = Some(via(&schema, &proxy));
    options.feed = FeedConfig::default()
        .heartbeat(Duration::from_millis(100), Duration::from_millis(300))
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .subscribe_timeout(Duration::from_millis(500));
    let b = Stack::start(options).await;
    let feed = &b.feed;

    let created = a.manager.create(&account("acme")).await.expect("create");
    let key = created.key.expose_secret().to_owned();
    b.assert_cached(&key, StatusCode::OK).await;

    // No reset, no end of stream: only the heartbeat can tell (TCP's own keepalive would take
    // hours).
    proxy.freeze();
    assert!(
        feed.wait_for(PATIENCE, |s| !s.subscribed).await,
        "the frozen connection was never noticed"
    );
    a.manager
        .revoke(&account("acme"), created.info.id)
        .await
        .expect("revoke");
    assert_eq!(b.status(&key).await, StatusCode::UNAUTHORIZED);

    proxy.restore();
    assert!(feed.wait_subscribed(PATIENCE).await);
    b.assert_cached(&key, StatusCode::UNAUTHORIZED).await;
}

/// A PostgreSQL feed whose subscription can be made to stop delivering while its connection
/// keeps answering (as after a `LISTEN` lost behind a transaction pooler): heartbeats are
/// still sent on the connection, but nothing received is passed on.
struct Deafened {
    inner: PgChangeFeed,
    deaf: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl ChangeFeed for Deafened {
    async fn subscribe(&mut self) -> Result<(), FeedError> {
        self.inner.subscribe().await
    }

    async fn recv(&mut self) -> Result<Vec<FeedMessage>, FeedError> {
        loop {
            let messages = self.inner.recv().await?;
            if !self.deaf.load(Ordering::SeqCst) {
                return Ok(messages);
            }
        }
    }

    async fn send_heartbeat(&mut self, nonce: u64) -> Result<(), FeedError> {
        self.inner.send_heartbeat(nonce).await
    }
}

/// Process B with a [`Deafened`] feed (heartbeat every 100 ms, 500 ms to come back).
async fn deafenable_stack(schema: &Schema) -> (Stack, Arc<AtomicBool>) {
    let feed_name = format!("{}-deaf-b", schema.name);
    let options = StackOptions::new(schema.options(), &feed_name);
    let store = PostgresStore::from_pool(
        sqlx::postgres::PgPoolOptions::new().connect_lazy_with(options.connect.clone()),
    );
    let manager = KeyManager::new(Arc::new(store.clone()), crate::support::pepper());
    let deaf = Arc::new(AtomicBool::new(false));
    let config = FeedConfig::default()
        .heartbeat(Duration::from_millis(100), Duration::from_millis(500))
        .backoff(Duration::from_millis(10), Duration::from_millis(100));
    let feed = feed::spawn(
        Deafened {
            inner: PgChangeFeed::new(&store).application_name(&feed_name),
            deaf: Arc::clone(&deaf),
        },
        manager.invalidation_bus(),
        config,
    );
    assert!(feed.wait_subscribed(PATIENCE).await);
    let layer = ApiKeyLayer::for_manager(&manager)
        .cache_config(options.cache)
        .build();
    let stack = Stack {
        manager,
        feed,
        layer,
        feed_name,
    };
    (stack, deaf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_stops_delivering_while_its_connection_answers_fails_closed() {
    let Some((schema, a, _proxy)) = setup("deaf").await else {
        return;
    };
    let (b, deaf) = deafenable_stack(&schema).await;
    let acme = account("acme");
    let created = a.manager.create(&acme).await.expect("create");
    let key = created.key.expose_secret().to_owned();
    b.assert_cached(&key, StatusCode::OK).await;

    // Queries on the listening connection still succeed; notifications no longer arrive.
    deaf.store(true, Ordering::SeqCst);
    a.manager
        .revoke(&acme, created.info.id)
        .await
        .expect("revoke");
    let revoked = Instant::now();
    // The entry lives an hour and no notification comes: only the heartbeat can end it.
    b.eventually(&key, StatusCode::UNAUTHORIZED).await;
    println!(
        "deaf subscription: revoked key refused elsewhere after {:?} (heartbeat bound 600 ms)",
        revoked.elapsed()
    );
    // The trust deadline or the overdue heartbeat, whichever comes first, made B refuse; the
    // overdue heartbeat is reported as a loss at about the same moment.
    assert!(
        b.feed.wait_for(PATIENCE, |s| s.outages >= 1).await,
        "the heartbeat reported the loss"
    );

    deaf.store(false, Ordering::SeqCst);
    assert!(b.feed.wait_subscribed(PATIENCE).await);
    b.assert_cached(&key, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_feed_runner_fails_closed() {
    let Some((schema, a, _proxy)) = setup("aborted").await else {
        return;
    };
    let b = Stack::start(StackOptions::new(
        schema.options(),
        &format!("{}-aborted-b", schema.name),
    ))
    .await;
    let acme = account("acme");
    let created = a.manager.create(&acme).await.expect("create");
    let key = created.key.expose_secret().to_owned();
    b.assert_cached(&key, StatusCode::OK).await;

    // The runner task ends without its orderly shutdown, as a panic would end it.
    b.feed.abort();
    a.manager
        .revoke(&acme, created.info.id)
        .await
        .expect("revoke");
    b.eventually(&key, StatusCode::UNAUTHORIZED).await;
    // And nothing is cached any more: every request asks the store.
    let calls = b.layer.metrics().resolver_calls;
    assert_eq!(b.status(&key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(b.status(&key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(b.layer.metrics().resolver_calls, calls + 2);
}

/// `PostgresStore::connect` doesn't ping a connection before each use (that is one round trip
/// less per cache miss). After the database ends the pool's connections (a restart, a
/// failover, `pg_terminate_backend`), a request may draw a dead one: it is answered 503,
/// never a wrong answer, at most once per connection the pool held, and the pool replaces
/// its connections by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_store_survives_its_connections_being_ended_with_at_most_one_503_each() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let name = format!("{}-ended", schema.name);
    let url = format!("{}&application_name={name}", schema.url_with_search_path());
    let store = PostgresStore::connect(&url).await.expect("connect");
    assert!(
        !store.pool().options().get_test_before_acquire(),
        "connect doesn't ping before each acquire"
    );
    store.migrate().await.expect("migrate");
    let manager = KeyManager::new(Arc::new(store.clone()), crate::support::pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    let key = created.key.expose_secret().to_owned();
    // A layer of its own per request: nothing cached, every request is a store lookup.
    let status = |key: String| {
        let service = crate::support::service::stack(&ApiKeyLayer::for_manager(&manager).build());
        async move { crate::support::service::status(&service, key).await }
    };
    // Concurrent lookups, so that the pool holds several connections.
    let statuses = futures_util::future::join_all((0..8).map(|_| status(key.clone()))).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let held = store.pool().size() as usize;
    assert!(held >= 1);

    let admin = schema.pool();
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(&name)
            .fetch_all(&admin)
            .await
            .expect("find the pool's connections");
    assert!(
        !pids.is_empty(),
        "the pool's connections were found by name"
    );
    for pid in &pids {
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&admin)
            .await
            .expect("end a connection of the pool");
        assert!(ended, "connection {pid} ended");
    }

    // Valid and unknown keys alternately, until the pool has served a clean run longer than
    // it held connections: each request is answered right or 503, never wrongly.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut unavailable, mut clean_run, mut round) = (0, 0, 0usize);
    while clean_run <= 2 * held + 2 {
        assert!(
            Instant::now() < deadline,
            "no clean run after 30 s ({unavailable} × 503)"
        );
        round += 1;
        let (sent, expected) = if round % 2 == 0 {
            (key.clone(), StatusCode::OK)
        } else {
            (unknown(), StatusCode::UNAUTHORIZED)
        };
        let got = status(sent).await;
        if got == StatusCode::SERVICE_UNAVAILABLE {
            unavailable += 1;
            clean_run = 0;
        } else {
            assert_eq!(
                got, expected,
                "round {round}: a dead connection never gives a wrong answer"
            );
            clean_run += 1;
        }
    }
    assert!(
        unavailable <= held,
        "{unavailable} × 503 for {held} connections held when they were ended"
    );
    println!(
        "{} connections ended, {held} held: {unavailable} × 503, then clean",
        pids.len()
    );
}
