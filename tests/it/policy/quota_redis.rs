//! Quotas shared through Redis (mirrors `src/usage/redis_quotas.rs`): two layers, each with
//! its own recorder and never a flush, spend one count in a real Redis, so exactly the quota
//! goes through between them; a raised quota lets the key through at once; a change of period
//! kind counts apart; a count lost from Redis starts again from the store; an unreachable
//! Redis leaves each process to count alone, never a 5xx; a scope refusal gives the request
//! back. HTTP over loopback axum servers.
//!
//! These use the shared Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`) with a random
//! namespace each; without a reachable Redis they say so and pass, unless `REQUIRE_REDIS=1`.

use std::net::TcpListener;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;
use tower_api_key::invalidation::Invalidation;
use tower_api_key::policy::{Quota, QuotaPeriod};
use tower_api_key::usage::{Granularity, RedisQuotas, UsageRange, UsageRecorder};
use tower_api_key::{KeyId, KeyOptions, PolicyUpdate, Scopes};

use crate::policy::app::App;
use crate::support::http::Answer;
use crate::support::redis::{Cleanup, shared_url, skip};
use crate::support::stores::TestStore;
use crate::support::wait::until;

fn quota(requests: u32, period: QuotaPeriod) -> Quota {
    Quota::new(requests, period).expect("valid quota")
}

fn assert_quota_exceeded(answer: &Answer) {
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.body
    );
    assert_eq!(answer.body, r#"{"error":"quota exceeded"}"#);
    assert!(answer.headers.contains_key("retry-after"));
}

/// Two "processes" on one store: two layers, each with its own recorder (never flushed
/// unless a test says so) and its own connection to one Redis namespace.
struct Fleet {
    left: App,
    right: App,
    left_recorder: UsageRecorder,
    /// The left process's counter, to name counts.
    quotas: RedisQuotas,
    /// The test's own connection, to read and delete counts.
    redis: MultiplexedConnection,
    _cleanup: Cleanup,
}

impl Fleet {
    /// The fleet, or `None` (after saying why) if Redis is unreachable.
    async fn start() -> Option<Self> {
        let url = shared_url();
        let namespace = format!("tak-test:{}", uuid::Uuid::new_v4().simple());
        let cleanup = Cleanup {
            url: url.clone(),
            namespace: namespace.clone(),
        };
        let mut counters = Vec::new();
        for _ in 0..2 {
            // A generous timeout: these tests count requests, not latencies.
            let connected = RedisQuotas::builder(url.as_str())
                .namespace(namespace.as_str())
                .timeout(Duration::from_secs(5))
                .connect()
                .await;
            match connected {
                Ok(quotas) => counters.push(quotas),
                Err(error) => {
                    skip(&format!("no Redis at {url}: {error}"));
                    return None;
                }
            }
        }
        let redis = redis::Client::open(url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("the test's own connection");
        let store = TestStore::new();
        let (right_quotas, quotas) = (counters.pop()?, counters.pop()?);
        let left_recorder = UsageRecorder::new(store.clone()).share_quotas(quotas.clone());
        let right_recorder = UsageRecorder::new(store.clone()).share_quotas(right_quotas);
        let left = App::start_on(store.clone(), |b| b.record_usage(left_recorder.clone())).await;
        let right = App::start_on(store, |b| b.record_usage(right_recorder)).await;
        Some(Self {
            left,
            right,
            left_recorder,
            quotas,
            redis,
            _cleanup: cleanup,
        })
    }

    /// Creates a key with `options` (through the left process's manager).
    async fn create(&self, options: KeyOptions) -> (KeyId, String) {
        let created = self
            .left
            .manager
            .create_with(&self.left.account, options)
            .await
            .expect("create");
        (created.info.id, created.key.expose_secret().to_owned())
    }

    /// Sets the key's quota; both processes' caches hear of it (as from a change feed).
    async fn set_quota(&self, id: KeyId, quota: Quota) {
        self.left
            .manager
            .update(
                &self.left.account,
                id,
                PolicyUpdate::new().quota(Some(quota)),
            )
            .await
            .expect("update");
        self.right
            .manager
            .invalidation_bus()
            .publish(Invalidation::All);
    }

    /// `count` requests to `/v1/ping`, alternately to each process: the statuses.
    async fn alternate(&self, key: &str, count: usize) -> Vec<StatusCode> {
        let mut statuses = Vec::new();
        for i in 0..count {
            let app = if i % 2 == 0 { &self.left } else { &self.right };
            let answer = app.get("/v1/ping", key).await;
            assert!(
                answer.status == StatusCode::OK || answer.status == StatusCode::TOO_MANY_REQUESTS,
                "{} {}",
                answer.status,
                answer.body
            );
            statuses.push(answer.status);
        }
        statuses
    }

    /// The count Redis holds for the key's current period of `kind`.
    async fn count(&self, id: KeyId, kind: QuotaPeriod) -> Option<i64> {
        let key = self.quotas.redis_key(id, kind, SystemTime::now());
        self.redis.clone().get(key).await.expect("GET")
    }
}

fn accepted(statuses: &[StatusCode]) -> usize {
    statuses.iter().filter(|s| **s == StatusCode::OK).count()
}

#[tokio::test]
async fn two_processes_let_exactly_the_quota_through_between_them() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let (id, key) = fleet
        .create(KeyOptions::new().quota(quota(5, QuotaPeriod::Day)))
        .await;
    // Each process alone would let 5 through (neither flushes): 10 in all.
    let statuses = fleet.alternate(&key, 14).await;
    assert_eq!(accepted(&statuses), 5, "{statuses:?}");
    assert!(
        statuses[..5].iter().all(|s| *s == StatusCode::OK),
        "the first five go through: {statuses:?}"
    );
    assert_quota_exceeded(&fleet.left.get("/v1/ping", &key).await);
    assert_quota_exceeded(&fleet.right.get("/v1/ping", &key).await);
    assert_eq!(fleet.count(id, QuotaPeriod::Day).await, Some(5));
}

#[tokio::test]
async fn a_raised_quota_lets_the_key_through_at_once_everywhere() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let (id, key) = fleet
        .create(KeyOptions::new().quota(quota(2, QuotaPeriod::Day)))
        .await;
    assert_eq!(accepted(&fleet.alternate(&key, 6).await), 2);

    fleet.set_quota(id, quota(3, QuotaPeriod::Day)).await;
    // The right process serves the one request of room first; then neither has any.
    assert_eq!(
        fleet.right.get("/v1/ping", &key).await.status,
        StatusCode::OK
    );
    assert_quota_exceeded(&fleet.left.get("/v1/ping", &key).await);
    assert_quota_exceeded(&fleet.right.get("/v1/ping", &key).await);
    assert_eq!(fleet.count(id, QuotaPeriod::Day).await, Some(3));
}

#[tokio::test]
async fn a_change_of_period_kind_counts_apart() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let (id, key) = fleet
        .create(KeyOptions::new().quota(quota(2, QuotaPeriod::Day)))
        .await;
    assert_eq!(accepted(&fleet.alternate(&key, 4).await), 2);

    fleet.set_quota(id, quota(3, QuotaPeriod::Month)).await;
    let statuses = fleet.alternate(&key, 6).await;
    // The month's count starts from the left process's estimate: the one request of today it
    // let in (unwritten; the right one's is not in the store yet), so 2 more fit.
    assert_eq!(accepted(&statuses), 2, "{statuses:?}");
    assert_eq!(fleet.count(id, QuotaPeriod::Month).await, Some(3));
    assert_eq!(
        fleet.count(id, QuotaPeriod::Day).await,
        Some(2),
        "the day's count is left as it was"
    );
}

#[tokio::test]
async fn a_count_lost_from_redis_starts_again_from_the_store() {
    let Some(mut fleet) = Fleet::start().await else {
        return;
    };
    let (id, key) = fleet
        .create(KeyOptions::new().quota(quota(5, QuotaPeriod::Day)))
        .await;
    for _ in 0..3 {
        assert_eq!(
            fleet.left.get("/v1/ping", &key).await.status,
            StatusCode::OK
        );
    }
    // The store gets the three; then Redis loses the count (a restart, an eviction).
    fleet.left_recorder.flush().await.expect("flush");
    let redis_key = fleet
        .quotas
        .redis_key(id, QuotaPeriod::Day, SystemTime::now());
    let deleted: usize = fleet.redis.del(&redis_key).await.expect("DEL");
    assert_eq!(deleted, 1);

    // Started again from the store's 3, not from zero: two more, in both processes.
    assert_eq!(
        fleet.left.get("/v1/ping", &key).await.status,
        StatusCode::OK
    );
    assert_eq!(fleet.count(id, QuotaPeriod::Day).await, Some(4));
    assert_eq!(
        fleet.right.get("/v1/ping", &key).await.status,
        StatusCode::OK
    );
    assert_quota_exceeded(&fleet.left.get("/v1/ping", &key).await);
    assert_quota_exceeded(&fleet.right.get("/v1/ping", &key).await);
    assert_eq!(fleet.count(id, QuotaPeriod::Day).await, Some(5));
    // The count expires after its period (and a margin), not before.
    let ttl: i64 = fleet.redis.ttl(&redis_key).await.expect("TTL");
    assert!(
        (86_400..=2 * 86_400 + 60).contains(&ttl),
        "a day's count lives until a day after its end: {ttl} s"
    );
}

#[tokio::test]
async fn an_unreachable_redis_leaves_each_process_to_count_alone() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    // The default timeout (100 ms) and breaker.
    let quotas = RedisQuotas::builder(format!("redis://127.0.0.1:{port}"))
        .connect_lazy()
        .expect("lazy");
    let store = TestStore::new();
    let recorder = UsageRecorder::new(store.clone()).share_quotas(quotas);
    let app = App::start_on(store, |b| b.record_usage(recorder.clone())).await;
    let created = app
        .manager
        .create_with(
            &app.account,
            KeyOptions::new().quota(quota(3, QuotaPeriod::Day)),
        )
        .await
        .expect("create");
    let key = created.key.expose_secret();
    for _ in 0..3 {
        let answer = app.get("/v1/ping", key).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    for _ in 0..3 {
        assert_quota_exceeded(&app.get("/v1/ping", key).await);
    }
    // Counted as usual: 3 accepted, 3 refused for the quota.
    recorder.flush().await.expect("flush");
    let range = UsageRange::last(Granularity::Hour, SystemTime::now());
    let total = app
        .manager
        .usage(&app.account, Some(created.info.id), &range)
        .await
        .expect("usage")
        .total();
    assert_eq!((total.accepted, total.rate_limited), (3, 3));
}

#[tokio::test]
async fn a_scope_refusal_gives_the_request_back_in_redis() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let (id, key) = fleet
        .create(
            KeyOptions::new()
                .quota(quota(2, QuotaPeriod::Day))
                .scopes(Scopes::new(["read"]).expect("scopes")),
        )
        .await;
    let fleet = &fleet;
    for app in [&fleet.left, &fleet.right, &fleet.left] {
        assert_eq!(
            app.get("/v1/write", &key).await.status,
            StatusCode::FORBIDDEN
        );
        // Let in (counted), then refused for its scope: given back off the request path.
        until(
            "the refused request to be given back in Redis",
            || async move { fleet.count(id, QuotaPeriod::Day).await == Some(0) },
        )
        .await;
    }
    assert_eq!(
        fleet.right.get("/v1/ping", &key).await.status,
        StatusCode::OK
    );
    assert_eq!(
        fleet.left.get("/v1/ping", &key).await.status,
        StatusCode::OK
    );
    assert_quota_exceeded(&fleet.right.get("/v1/ping", &key).await);
    assert_eq!(fleet.count(id, QuotaPeriod::Day).await, Some(2));
}
