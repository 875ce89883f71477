//! `RedisLimiter` against a real Redis: one budget shared by two limiters ("processes") in
//! both modes, the exact burst of a small limit, and a Redis that goes away and comes back
//! (a private `redis-server` this test starts and kills), alone and behind the layer.
//!
//! The shared tests use `REDIS_URL` (default `redis://127.0.0.1:6379`) with a random
//! namespace each; without a reachable Redis (or, for the outage tests, a `redis-server`
//! program) they say so and pass, unless `REQUIRE_REDIS=1`, as `bash .ci/run` sets.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::StatusCode;
use tower_api_key::policy::{KeyOptions, RateLimit};
use tower_api_key::rate_limit::redis::{RedisLimiter, RedisLimiterBuilder, RedisLimiterError};
use tower_api_key::rate_limit::{Acquire, BudgetKey, LimiterFailure, RateLimiter, Verdict};
use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore};

use crate::support::redis::{Cleanup, shared_url};
use crate::support::service::{stack, status};
use crate::support::{account, pepper};

/// The generous bound on anything that must happen "soon": a verdict, a recovery.
const PATIENCE: Duration = Duration::from_secs(30);

// ===== fixtures =====

/// Says why a test is skipped, or fails it if Redis is required (the demo tests use it too).
pub(super) use crate::support::redis::skip;

/// A builder on `url` with a namespace no other test uses, and a timeout generous enough
/// that a loaded machine's slow answer is never taken for an outage.
fn builder(url: &str) -> RedisLimiterBuilder {
    RedisLimiter::builder(url)
        .namespace(format!("tak-test:{}", uuid::Uuid::new_v4().simple()))
        .timeout(Duration::from_secs(5))
}

/// Two limiters ("processes") on the shared Redis, one namespace, deleted at the end; `None`
/// (after saying why) if Redis is unreachable.
async fn two_processes(local_first: Option<u32>) -> Option<(RedisLimiter, RedisLimiter, Cleanup)> {
    let url = shared_url();
    let namespace = format!("tak-test:{}", uuid::Uuid::new_v4().simple());
    let mut limiters = Vec::new();
    for _ in 0..2 {
        // A generous timeout: these tests count budgets, not latencies.
        let mut builder = RedisLimiter::builder(url.as_str())
            .namespace(namespace.as_str())
            .timeout(Duration::from_secs(5));
        if let Some(lease) = local_first {
            builder = builder.local_first(lease);
        }
        match builder.connect().await {
            Ok(limiter) => limiters.push(limiter),
            Err(error) => {
                skip(&format!("no Redis at {url}: {error}"));
                return None;
            }
        }
    }
    let second = limiters.pop()?;
    Some((limiters.pop()?, second, Cleanup { url, namespace }))
}

fn random_key() -> BudgetKey {
    BudgetKey::new(uuid::Uuid::new_v4().as_u128())
}

/// The verdict, however it comes, within [`PATIENCE`].
async fn verdict(limiter: &RedisLimiter, key: BudgetKey, limit: RateLimit) -> Verdict {
    match limiter.acquire(key, limit) {
        Acquire::Ready(verdict) => verdict,
        Acquire::Pending(pending) => tokio::time::timeout(PATIENCE, pending)
            .await
            .expect("the limiter answers within its timeout"),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    allowed: usize,
    limited: usize,
    unavailable: usize,
}

impl Tally {
    fn of(verdicts: impl IntoIterator<Item = Verdict>) -> Self {
        let mut tally = Self::default();
        for verdict in verdicts {
            match verdict {
                Verdict::Allowed(_) => tally.allowed += 1,
                Verdict::Limited(_) => tally.limited += 1,
                Verdict::Unavailable => tally.unavailable += 1,
            }
        }
        tally
    }
}

/// `count` requests from each limiter at once, all for `key`.
async fn hammer(
    limiters: [&RedisLimiter; 2],
    key: BudgetKey,
    limit: RateLimit,
    count: usize,
) -> Tally {
    let requests = limiters
        .iter()
        .flat_map(|limiter| (0..count).map(move |_| verdict(limiter, key, limit)));
    Tally::of(join_all(requests).await)
}

/// A `redis-server` of this test's own on a free loopback port, killed when dropped.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Started and answering, or `None` (after saying why) without a `redis-server` program.
    fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self { port, child: None };
        match redis.spawn() {
            Ok(()) => Some(redis),
            Err(error) => {
                skip(&format!("could not start redis-server: {error}"));
                None
            }
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server on its port and waits until it answers PING.
    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers() {
            assert!(
                started.elapsed() < PATIENCE,
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0; 5];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG"
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.spawn().expect("restart redis-server on the same port");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `condition` every 50 ms until it holds, failing after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < PATIENCE,
            "not within {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ===== one budget for the fleet =====

/// A day's window: nothing refills while a test runs, so the counts are exact.
fn hundred_a_day() -> RateLimit {
    RateLimit::new(100, 86_400).expect("a valid limit")
}

#[tokio::test]
async fn two_processes_share_one_exact_budget() {
    let Some((a, b, _cleanup)) = two_processes(None).await else {
        return;
    };
    let tally = hammer([&a, &b], random_key(), hundred_a_day(), 150).await;
    assert_eq!(
        tally,
        Tally {
            allowed: 100,
            limited: 200,
            unavailable: 0
        }
    );
}

#[tokio::test]
async fn two_processes_share_one_local_first_budget_within_a_tenth() {
    let Some((a, b, _cleanup)) = two_processes(Some(10)).await else {
        return;
    };
    let key = random_key();
    let tally = hammer([&a, &b], key, hundred_a_day(), 150).await;
    eprintln!("local-first, two processes, 100 a day, 2 × 150 at once: {tally:?}");
    assert!((90..=110).contains(&tally.allowed), "{tally:?}");
    assert_eq!(tally.unavailable, 0, "{tally:?}");
    // Hammering again: both processes are refused (locally, as Redis said).
    let again = hammer([&a, &b], key, hundred_a_day(), 20).await;
    assert_eq!(again.allowed, 0, "{again:?}");
}

#[tokio::test]
async fn local_first_spends_its_leases_without_round_trips() {
    let Some((a, _, _cleanup)) = two_processes(Some(10)).await else {
        return;
    };
    let (key, limit) = (
        random_key(),
        RateLimit::new(1000, 86_400).expect("a valid limit"),
    );
    let mut round_trips = 0;
    let mut last = None;
    for _ in 0..100 {
        let verdict = match a.acquire(key, limit) {
            Acquire::Ready(verdict) => verdict,
            Acquire::Pending(pending) => {
                round_trips += 1;
                tokio::time::timeout(PATIENCE, pending)
                    .await
                    .expect("an answer")
            }
        };
        let Verdict::Allowed(budget) = verdict else {
            panic!("refused within the budget: {verdict:?}");
        };
        last = Some(budget);
    }
    // Leases of 10: one round trip per ten requests.
    assert_eq!(round_trips, 10);
    assert_eq!(last.map(|budget| budget.remaining()), Some(900));
}

#[tokio::test]
async fn exact_mode_reports_the_budget_left() {
    let Some((a, b, _cleanup)) = two_processes(None).await else {
        return;
    };
    let (key, limit) = (
        random_key(),
        RateLimit::new(3, 86_400).expect("a valid limit"),
    );
    let mut remaining = Vec::new();
    for limiter in [&a, &b, &a] {
        let Verdict::Allowed(budget) = verdict(limiter, key, limit).await else {
            panic!("refused within the budget");
        };
        remaining.push(budget.remaining());
        assert_eq!(budget.retry_after(), Duration::ZERO);
    }
    assert_eq!(remaining, [2, 1, 0]);
    let Verdict::Limited(budget) = verdict(&b, key, limit).await else {
        panic!("allowed over the budget");
    };
    // One request of 3 a day comes back every 8 hours; the budget is full after a day.
    let hours = |d: Duration| d.as_secs_f64() / 3600.0;
    assert!(
        (7.9..=8.0).contains(&hours(budget.retry_after())),
        "{budget:?}"
    );
    assert!((23.9..=24.0).contains(&hours(budget.reset())), "{budget:?}");
}

#[tokio::test]
async fn a_changed_limit_counts_the_requests_already_spent() {
    let Some((a, b, _cleanup)) = two_processes(None).await else {
        return;
    };
    let key = random_key();
    let one = RateLimit::new(1, 86_400).expect("a valid limit");
    let hundred = hundred_a_day();
    assert!(matches!(verdict(&a, key, one).await, Verdict::Allowed(_)));
    assert!(matches!(verdict(&b, key, one).await, Verdict::Limited(_)));
    // Raised to 100 a day: the one request spent counts as one of 100.
    let Verdict::Allowed(budget) = verdict(&b, key, hundred).await else {
        panic!("refused under the raised limit");
    };
    assert_eq!(budget.remaining(), 98);
    // Lowered again: the two spent fill the budget of one.
    assert!(matches!(verdict(&a, key, one).await, Verdict::Limited(_)));
}

#[tokio::test]
async fn five_per_two_seconds_lets_five_of_twelve_at_once_through() {
    let Some((a, _, _cleanup)) = two_processes(None).await else {
        return;
    };
    let limit = RateLimit::new(5, 2).expect("a valid limit");
    let key = random_key();
    let started = Instant::now();
    let tally = Tally::of(join_all((0..12).map(|_| verdict(&a, key, limit))).await);
    let elapsed = started.elapsed();
    assert_eq!(tally.unavailable, 0, "{tally:?}");
    super::assert_five_of_twelve(tally.allowed, elapsed);
}

#[tokio::test]
async fn budget_keys_are_named_in_the_namespace() {
    let limiter = RedisLimiter::builder("redis://127.0.0.1:1")
        .namespace("ns")
        .connect_lazy()
        .expect("a lazy limiter");
    assert_eq!(
        limiter.redis_key(BudgetKey::new(0xab)),
        "ns:000000000000000000000000000000ab"
    );
}

#[tokio::test]
async fn a_key_redis_refuses_fails_alone_without_stopping_the_others() {
    let Some((limiter, _, cleanup)) = two_processes(None).await else {
        return;
    };
    // A value of the wrong type where a budget should be: Redis refuses that key's script.
    let broken = random_key();
    {
        use redis::Commands as _;
        let mut connection = redis::Client::open(cleanup.url.as_str())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("a connection");
        let _: () = connection
            .hset(limiter.redis_key(broken), "not", "a budget")
            .expect("hset");
    }
    for _ in 0..5 {
        assert_eq!(
            verdict(&limiter, broken, hundred_a_day()).await,
            Verdict::Unavailable
        );
    }
    // More refusals in a row than it takes to fail fast, yet the other keys are still asked.
    assert!(matches!(
        verdict(&limiter, random_key(), hundred_a_day()).await,
        Verdict::Allowed(_)
    ));
}

// ===== outages =====

#[tokio::test]
async fn a_redis_that_goes_away_gives_unavailable_and_recovers_by_itself() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let limit = RateLimit::new(1000, 86_400).expect("a valid limit");
    let exact = builder(&redis.url()).connect().await.expect("connect");
    let local = builder(&redis.url())
        .local_first(10)
        .connect()
        .await
        .expect("connect");
    let key = random_key();
    for limiter in [&exact, &local] {
        assert!(matches!(
            verdict(limiter, key, limit).await,
            Verdict::Allowed(_)
        ));
    }

    redis.kill();
    // Every verdict that needs Redis is Unavailable, each within the limiter's own timeout
    // (100 ms; `verdict` allows 30 s, so a hang would fail the test, not slow it).
    let down = Tally::of(join_all((0..5).map(|_| verdict(&exact, key, limit))).await);
    assert_eq!(down.unavailable, 5, "{down:?}");
    let mut sequential = Vec::new();
    for _ in 0..5 {
        sequential.push(verdict(&exact, key, limit).await);
        sequential.push(verdict(&local, random_key(), limit).await);
    }
    let down = Tally::of(sequential);
    assert_eq!(down.unavailable, 10, "{down:?}");
    // A lease already held is still spent while Redis is away.
    assert!(matches!(
        local.acquire(key, limit),
        Acquire::Ready(Verdict::Allowed(_))
    ));

    redis.restart();
    for limiter in [&exact, &local] {
        eventually("verdicts are Allowed again", || async {
            matches!(
                verdict(limiter, random_key(), limit).await,
                Verdict::Allowed(_)
            )
        })
        .await;
    }
}

#[tokio::test]
async fn connecting_to_no_redis_is_an_error_and_a_lazy_limiter_waits_for_one() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url = format!("redis://user:hunter2@127.0.0.1:{port}");
    let error = builder(&url)
        .connect()
        .await
        .expect_err("nothing listens there");
    // Refused at once (not retried until the connect timeout), and the password is nowhere.
    assert!(matches!(error, RedisLimiterError::Connect(_)), "{error:?}");
    let printed = format!("{error} {error:?} {:?}", builder(&url));
    assert!(!printed.contains("hunter2"), "{printed}");

    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    redis.kill();
    let limiter = builder(&redis.url())
        .connect_lazy()
        .expect("a lazy limiter");
    let limit = RateLimit::new(10, 60).expect("a valid limit");
    assert_eq!(
        verdict(&limiter, random_key(), limit).await,
        Verdict::Unavailable
    );
    redis.restart();
    eventually("the lazy limiter connects", || async {
        matches!(
            verdict(&limiter, random_key(), limit).await,
            Verdict::Allowed(_)
        )
    })
    .await;
}

#[tokio::test]
async fn the_layer_applies_its_failure_policy_while_redis_is_down() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let limiter = builder(&redis.url()).connect().await.expect("connect");
    let manager = KeyManager::new(Arc::new(MemoryStore::new()), pepper());
    let limit = RateLimit::new(1000, 86_400).expect("a valid limit");
    let created = manager
        .create_with(&account("acme"), KeyOptions::new().rate_limit(limit))
        .await
        .expect("create");
    let key = created.key.expose_secret().to_owned();
    let refusing = ApiKeyLayer::for_manager(&manager)
        .rate_limiter(limiter.clone())
        .on_limiter_failure(LimiterFailure::Refuse)
        .build();
    let allowing = ApiKeyLayer::for_manager(&manager)
        .rate_limiter(limiter)
        .build();
    let (refuse, allow) = (stack(&refusing), stack(&allowing));
    assert_eq!(status(&refuse, &key).await, StatusCode::OK);
    assert_eq!(status(&allow, &key).await, StatusCode::OK);

    redis.kill();
    for _ in 0..3 {
        assert_eq!(status(&refuse, &key).await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(&allow, &key).await, StatusCode::OK);
    }
    assert_eq!(refusing.metrics().rate_limiter_failures, 3);
    assert_eq!(allowing.metrics().rate_limiter_failures, 3);

    redis.restart();
    eventually("the refusing layer lets the key in again", || async {
        status(&refuse, &key).await == StatusCode::OK
    })
    .await;
}
