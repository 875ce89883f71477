//! Two demo server processes on one PostgreSQL database spend one quota: each counts the
//! store's hourly usage plus what it has not written yet, so a process that has never seen a
//! key starts from the store's count exactly, and together they overshoot a quota by at most
//! what the other process served within one flush interval (the documented bound). Without
//! `DATABASE_URL`, the test says it was skipped.

use hyper::StatusCode;

use super::assert_accepted;
use super::quota::{QUOTA_EXCEEDED, assert_quota_exceeded, key_with_daily_quota, quota_used};

use crate::support::demo::{DemoServer, two_servers};
use crate::support::wait::until;

/// Flushes every 100 ms: the bound on what the other process may serve unseen.
const FLUSH_MS: &str = "100";

/// Sends `/v1/ping` with the key until it is refused, at most `most + 1` times; returns how
/// many were served, the refusal asserted to be the quota's.
async fn served_until_refused(server: &DemoServer, key: &str, most: usize) -> usize {
    for served in 0..=most {
        let reply = server.get_with_key("/v1/ping", key).await;
        if reply.status != StatusCode::OK {
            assert_eq!(
                reply.status,
                StatusCode::TOO_MANY_REQUESTS,
                "{}",
                reply.text()
            );
            assert_eq!(reply.text(), QUOTA_EXCEEDED);
            return served;
        }
    }
    panic!("served more than {most} requests without a refusal");
}

async fn store_shows(server: &DemoServer, id: &str, used: u64) {
    until(
        &format!("the store to show {used} requests used"),
        || async { quota_used(server, id).await == used },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_overshoot_a_quota_by_at_most_what_the_other_served_in_one_flush() {
    let Some((_schema, a, b)) = two_servers("quota", &["--last-used-flush-ms", FLUSH_MS]).await
    else {
        return;
    };
    crate::support::clock::in_one_quota_period().await;
    let (id, key) = key_with_daily_quota(&a, 10).await;

    // A serves 4, and its flushes put them in the store.
    for _ in 0..4 {
        assert_accepted(&a, &key).await;
    }
    store_shows(&a, &id, 4).await;

    // B has never seen the key: its first request loads the count from the store, so it
    // serves exactly the 6 left, then refuses.
    assert_eq!(served_until_refused(&b, &key, 6).await, 6);
    assert_quota_exceeded(&b, &key).await;
    store_shows(&b, &id, 10).await;

    // A counted 4 when it last read the store and may not have read it again since B's
    // writes: it serves at most what B served before its own refusal.
    let more = served_until_refused(&a, &key, 6).await;
    assert!(more <= 6, "A served {more} more");
    assert_quota_exceeded(&a, &key).await;
    // Once both have flushed, the store holds everything either served, and neither serves
    // again this day.
    store_shows(&a, &id, 10 + more as u64).await;
    assert_quota_exceeded(&a, &key).await;
    assert_quota_exceeded(&b, &key).await;
}

/// Two servers on one PostgreSQL schema, both given `--redis-url`, spend one count in Redis:
/// with usage flushed only once an hour (so the store can't help), a quota of 10 lets exactly
/// 10 requests through, whichever server answers.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_given_one_redis_count_a_quota_exactly() {
    crate::support::clock::in_one_quota_period().await;
    if tokio::net::TcpStream::connect("127.0.0.1:6379")
        .await
        .is_err()
    {
        assert!(
            std::env::var_os("REQUIRE_REDIS").is_none(),
            "REQUIRE_REDIS is set but no Redis answers on 127.0.0.1:6379"
        );
        eprintln!("skipped: no Redis answers on 127.0.0.1:6379");
        return;
    }
    let args = [
        "--redis-url",
        "redis://127.0.0.1:6379",
        "--last-used-flush-ms",
        "3600000",
        // A slow answer on a loaded machine must not pass a request uncounted.
        "--redis-timeout-ms",
        "10000",
    ];
    let Some((_schema, a, b)) = two_servers("quota_redis", &args).await else {
        return; // no PostgreSQL: `Schema::create` said why
    };
    let (_id, key) = key_with_daily_quota(&a, 10).await;

    for _ in 0..7 {
        assert_accepted(&a, &key).await;
    }
    let served_by_b = served_until_refused(&b, &key, 10).await;
    assert_eq!(served_by_b, 3, "one count of 10 for both servers");
    assert_quota_exceeded(&a, &key).await;
    assert!(
        a.log().contains("quotas are counted in Redis")
            && b.log().contains("quotas are counted in Redis"),
        "both servers say where quotas are counted"
    );
}
