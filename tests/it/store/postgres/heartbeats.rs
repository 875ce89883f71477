//! The change feed's heartbeats cost N notifications across N processes, not N²: each
//! `PgChangeFeed` sends its nonces on a channel only it listens to, which PostgreSQL still
//! delivers in commit order with the changes; heartbeats of earlier releases (on the shared
//! channel) and of unknown versions invalidate nothing. These tests count; they never time.
//! Each runs in a database of its own, since notifications are database-wide and other test
//! runs on the same server (of this release or an older one) heartbeat too. Without
//! `DATABASE_URL`, each test says it was skipped.

use std::sync::Arc;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tower_api_key::feed::{self, FeedConfig, FeedStatus, FeedTask};
use tower_api_key::invalidation::{Invalidation, InvalidationBus};
use tower_api_key::store::PgChangeFeed;
use tower_api_key::{KeyDigest, PostgresStore};

use super::feed::Heard;
use crate::support::db::postgres::Database;
use crate::support::wait::PATIENCE;

/// The channel the table's trigger notifies, which every feed listens to.
const SHARED: &str = "tower_api_keys";

/// How many feeds share the database.
const FEEDS: usize = 4;

/// Heartbeats every 20 ms, each allowed all the patience a loaded machine needs.
fn config() -> FeedConfig {
    FeedConfig::default().heartbeat(std::time::Duration::from_millis(20), PATIENCE)
}

async fn notify(pool: &PgPool, channel: &str, payload: &str) {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(pool)
        .await
        .expect("notify");
}

/// Waits until every feed's status satisfies `condition(index, status)`.
async fn each(feeds: &[FeedTask], what: &str, condition: impl Fn(usize, &FeedStatus) -> bool) {
    for (i, feed) in feeds.iter().enumerate() {
        assert!(
            feed.wait_for(PATIENCE, |status| condition(i, status)).await,
            "feed {i}: {what}; {:?}",
            feed.status()
        );
    }
}

fn heartbeats(feeds: &[FeedTask]) -> Vec<u64> {
    feeds.iter().map(|feed| feed.status().heartbeats).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_feed_receives_its_own_heartbeats_and_no_other() {
    let Some(database) = Database::create().await else {
        return;
    };
    let pool = database.pool();
    // A plain listener on the shared channel, as `psql` with `LISTEN tower_api_keys` would be.
    let mut plain = PgListener::connect_with(&pool).await.expect("listener");
    plain.listen(SHARED).await.expect("listen");
    let bus = InvalidationBus::new();
    let feeds: Vec<FeedTask> = (0..FEEDS)
        .map(|i| {
            let options = database.options().application_name(&format!("hb feed {i}"));
            feed::spawn(PgChangeFeed::with_options(options), &bus, config())
        })
        .collect();
    each(&feeds, "subscribed", |_, status| status.subscribed).await;

    // Counting by the order of the queue, not by time. Once every feed is listening, each
    // one's second heartbeat from now was sent after that; once each feed then has two more
    // back, each of those was committed after every other feed's, so a feed that heard other
    // feeds' heartbeats (as on a channel everyone listens to) has read them by then.
    let listening = heartbeats(&feeds);
    each(&feeds, "two heartbeats back", |i, s| {
        s.heartbeats >= listening[i] + 2
    })
    .await;
    let heard_others = heartbeats(&feeds);
    each(&feeds, "two more heartbeats back", |i, s| {
        s.heartbeats >= heard_others[i] + 2
    })
    .await;

    for (i, feed) in feeds.iter().enumerate() {
        let metrics = feed.metrics();
        assert_eq!(
            metrics.status.foreign_heartbeats, 0,
            "feed {i} received another feed's heartbeats"
        );
        assert_eq!(metrics.status.outages, 0, "feed {i}");
        // Read after the status, the histogram holds at least the heartbeats it counts.
        assert!(
            metrics.status.heartbeats >= 4 && metrics.delivery.count >= metrics.status.heartbeats,
            "feed {i}: every heartbeat back is in the histogram: {metrics:?}"
        );
    }

    // Everything committed on the shared channel before this marker: no heartbeat at all.
    let marker = "00".repeat(32);
    notify(&pool, SHARED, &marker).await;
    let mut on_shared = Vec::new();
    loop {
        let notification = plain.recv().await.expect("receive");
        if notification.payload() == marker {
            break;
        }
        on_shared.push(notification.payload().to_owned());
    }
    assert!(
        on_shared
            .iter()
            .all(|payload| !payload.starts_with("heartbeat")),
        "heartbeats on the shared channel: {on_shared:?}"
    );
    for feed in feeds {
        feed.shutdown().await;
    }
    drop(plain);
    database.drop(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_of_an_older_release_or_an_unknown_version_invalidate_nothing() {
    let Some(database) = Database::create().await else {
        return;
    };
    let pool = database.pool();
    let bus = InvalidationBus::new();
    let heard = Arc::new(Heard::default());
    bus.subscribe(&heard);
    let feed = feed::spawn(
        PgChangeFeed::new(&PostgresStore::from_pool(pool.clone())),
        &bus,
        config(),
    );
    assert!(feed.wait_subscribed(PATIENCE).await);
    let before = heard.0.lock().expect("lock").len();

    // A process of the previous release heartbeats on the shared channel; a later release
    // might send a format this one doesn't know; then a key changes.
    notify(&pool, SHARED, "heartbeat:00000000000000ff").await;
    notify(&pool, SHARED, "heartbeat:3:a format of the future").await;
    let marker = KeyDigest::from_bytes([7; 32]);
    notify(&pool, SHARED, &"07".repeat(32)).await;
    crate::support::wait::until("the marker's invalidation", || {
        let heard = heard.0.lock().expect("lock");
        std::future::ready(heard[before..].contains(&Invalidation::Key(marker)))
    })
    .await;
    // Delivered in order: both heartbeats were read before the marker, and forgot nothing.
    assert_eq!(
        heard.0.lock().expect("lock")[before..],
        [Invalidation::Key(marker)]
    );
    let status = feed.status();
    assert_eq!(
        status.foreign_heartbeats, 1,
        "the older release's heartbeat, read as another process's"
    );
    assert_eq!(status.outages, 0);
    feed.shutdown().await;
    database.drop(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_on_different_channels_arrive_in_commit_order() {
    let Some(database) = Database::create().await else {
        return;
    };
    let pool = database.pool();
    let mut listener = PgListener::connect_with(&pool).await.expect("listener");
    listener
        .listen_all(["order_a", "order_b"])
        .await
        .expect("listen");
    // Alternating channels, one transaction each, from another session.
    const SENT: usize = 200;
    for i in 0..SENT {
        let channel = if i % 3 == 0 { "order_a" } else { "order_b" };
        notify(&pool, channel, &i.to_string()).await;
    }
    for i in 0..SENT {
        let notification = listener.recv().await.expect("receive");
        assert_eq!(notification.payload(), i.to_string(), "out of order");
    }
    drop(listener);
    database.drop(pool).await;
}
