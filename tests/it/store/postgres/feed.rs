//! Cross-process invalidation over PostgreSQL `LISTEN`/`NOTIFY`: two full stacks ("processes":
//! each its own pool, change feed, manager and layer) on one database. A change made through
//! one is in force in the other within milliseconds, and when the other's listening
//! connection is killed it fails closed, so a change it missed is never served stale.
//!
//! Run with `--nocapture` to see the measured lags. Without `DATABASE_URL`, each test says it
//! was skipped.

use std::time::{Duration, Instant};

use super::report_lags;
use crate::support::account;
use crate::support::db::postgres::Schema;
use crate::support::db::stack::{Stack, StackOptions};
use crate::support::exclusive::exclusive;
use http::StatusCode;
use tower_api_key::CreatedKey;

async fn two_stacks(schema: &Schema, test: &str) -> (Stack, Stack) {
    schema.store().await; // migrated once
    let a = Stack::start(StackOptions::new(
        schema.options(),
        &format!("{}-{test}-a", schema.name),
    ))
    .await;
    let b = Stack::start(StackOptions::new(
        schema.options(),
        &format!("{}-{test}-b", schema.name),
    ))
    .await;
    (a, b)
}

/// Polls `stack` with `key` until it answers `expected`; returns how long that took.
async fn time_until(stack: &Stack, key: &str, expected: StatusCode, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(5);
    loop {
        if stack.status(key).await == expected {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "still not {expected} after 5 s in the other process"
        );
        tokio::task::yield_now().await;
    }
}

const TRIES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_in_one_process_is_in_force_in_the_other_within_milliseconds() {
    let _exclusive = exclusive().await;
    let Some(schema) = Schema::create().await else {
        return;
    };
    let (a, b) = two_stacks(&schema, "lag").await;
    let acme = account("acme");
    let (mut revoke, mut rotate, mut delete, mut reactivate) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..TRIES {
        let CreatedKey { info, key } = a.manager.create(&acme).await.expect("create");
        let key = key.expose_secret().to_owned();

        // revoke: B served the key from its cache until A's change.
        b.assert_cached(&key, StatusCode::OK).await;
        a.manager.revoke(&acme, info.id).await.expect("revoke");
        let since = Instant::now();
        revoke.push(time_until(&b, &key, StatusCode::UNAUTHORIZED, since).await);

        // reactivate: B had cached the refusal.
        b.assert_cached(&key, StatusCode::UNAUTHORIZED).await;
        a.manager
            .reactivate(&acme, info.id)
            .await
            .expect("reactivate");
        let since = Instant::now();
        reactivate.push(time_until(&b, &key, StatusCode::OK, since).await);

        // rotate: the old key, cached in B, is refused; the new one works.
        b.assert_cached(&key, StatusCode::OK).await;
        let rotated = a.manager.rotate(&acme, info.id).await.expect("rotate");
        let since = Instant::now();
        rotate.push(time_until(&b, &key, StatusCode::UNAUTHORIZED, since).await);
        let new_key = rotated.key.expose_secret().to_owned();
        assert_eq!(b.status(&new_key).await, StatusCode::OK);

        // delete
        b.assert_cached(&new_key, StatusCode::OK).await;
        a.manager.delete(&acme, info.id).await.expect("delete");
        let since = Instant::now();
        delete.push(time_until(&b, &new_key, StatusCode::UNAUTHORIZED, since).await);
    }
    let worst = [
        report_lags("in-process stacks, revoke → 401 elsewhere", revoke),
        report_lags("in-process stacks, rotate → old key 401 elsewhere", rotate),
        report_lags("in-process stacks, delete → 401 elsewhere", delete),
        report_lags("in-process stacks, reactivate → 200 elsewhere", reactivate),
    ];
    for max in worst {
        assert!(max < Duration::from_secs(1), "a change took {max:?}");
    }
    // Nothing was missed: the feeds never lost their subscription.
    assert_eq!(b.feed.status().outages, 0);
}

/// Kills `stack`'s listening connection from the server side.
async fn kill_listener(schema: &Schema, stack: &Stack) -> u64 {
    let pool = schema.pool();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = $1) AS terminated",
    )
    .bind(&stack.feed_name)
    .fetch_one(&pool)
    .await
    .expect("terminate the listener");
    killed.try_into().expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_while_the_listener_reconnects_is_never_served_from_a_stale_cache() {
    let _exclusive = exclusive().await;
    let Some(schema) = Schema::create().await else {
        return;
    };
    let (a, b) = two_stacks(&schema, "kill").await;
    let acme = account("acme");
    for round in 0..10u64 {
        let created = a.manager.create(&acme).await.expect("create");
        let key = created.key.expose_secret().to_owned();
        b.assert_cached(&key, StatusCode::OK).await;

        let outages = b.feed.status().outages;
        assert_eq!(kill_listener(&schema, &b).await, 1, "one listener to kill");
        // Revoke at different points of B's reconnection: the notification is sent while
        // B's old connection is gone and its new one may not be listening yet.
        tokio::time::sleep(Duration::from_micros(round * 700)).await;
        a.manager
            .revoke(&acme, created.info.id)
            .await
            .expect("revoke");
        // With hour-long cache entries, only failing closed can make this 401.
        let since = Instant::now();
        time_until(&b, &key, StatusCode::UNAUTHORIZED, since).await;
        assert!(
            b.feed
                .wait_for(Duration::from_secs(5), |s| s.outages > outages
                    && s.subscribed)
                .await,
            "B noticed the loss and subscribed again"
        );
        b.assert_cached(&key, StatusCode::UNAUTHORIZED).await;
        a.manager
            .delete(&acme, created.info.id)
            .await
            .expect("delete");
    }

    // Once resubscribed, B caches again and still hears A's changes.
    let created = a.manager.create(&acme).await.expect("create");
    let key = created.key.expose_secret().to_owned();
    b.assert_cached(&key, StatusCode::OK).await;
    a.manager
        .revoke(&acme, created.info.id)
        .await
        .expect("revoke");
    time_until(&b, &key, StatusCode::UNAUTHORIZED, Instant::now()).await;
}
