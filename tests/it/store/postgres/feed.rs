//! Cross-process invalidation over PostgreSQL `LISTEN`/`NOTIFY`: two full stacks ("processes":
//! each its own pool, change feed, manager and layer) on one database. A change made through
//! one is in force in the other through its change feed (cache entries live an hour: nothing
//! else can end them), and when the other's listening connection is killed it fails closed,
//! so a change it missed is never served stale. Policy and grace-key changes made by hand in
//! SQL reach another process's bus as invalidations of every digest they concern;
//! `last_used_at` updates don't.
//!
//! How long a change takes to reach the other process is measured by `benches/stores.rs`
//! (part `feed`), not here. Without `DATABASE_URL`, each test says it was skipped.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::support::db::postgres::Schema;
use crate::support::db::stack::{Stack, StackOptions};
use crate::support::wait::{PATIENCE, until};
use crate::support::{account, pepper};
use http::StatusCode;
use tower_api_key::feed::FeedConfig;
use tower_api_key::invalidation::{Invalidation, InvalidationBus, InvalidationListener};
use tower_api_key::store::{PgChangeFeed, PostgresStore};
use tower_api_key::{ApiKey, CreatedKey, KeyDigest, KeyId, KeyRecord, KeyStore};

/// Stacks A and B on `schema`, B's options as `configure_b` leaves them.
async fn two_stacks(
    schema: &Schema,
    test: &str,
    configure_b: impl FnOnce(&mut StackOptions),
) -> (Stack, Stack) {
    schema.store().await; // migrated once
    let a = Stack::start(StackOptions::new(
        schema.options(),
        &format!("{}-{test}-a", schema.name),
    ))
    .await;
    let mut b = StackOptions::new(schema.options(), &format!("{}-{test}-b", schema.name));
    configure_b(&mut b);
    let b = Stack::start(b).await;
    (a, b)
}

const TRIES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_in_one_process_is_in_force_in_the_other_through_its_change_feed() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    // Heartbeats no loaded machine can miss: a loss would make B fail closed, and then the
    // changes below would be in force without the feed having delivered them.
    let (a, b) = two_stacks(&schema, "feed", |b| {
        b.feed = FeedConfig::default().heartbeat(Duration::from_millis(200), PATIENCE);
    })
    .await;
    let acme = account("acme");
    for _ in 0..TRIES {
        let CreatedKey { info, key } = a.manager.create(&acme).await.expect("create");
        let key = key.expose_secret().to_owned();

        // revoke: B served the key from its cache until A's change.
        b.assert_cached(&key, StatusCode::OK).await;
        a.manager.revoke(&acme, info.id).await.expect("revoke");
        b.eventually(&key, StatusCode::UNAUTHORIZED).await;

        // reactivate: B had cached the refusal.
        b.assert_cached(&key, StatusCode::UNAUTHORIZED).await;
        a.manager
            .reactivate(&acme, info.id)
            .await
            .expect("reactivate");
        b.eventually(&key, StatusCode::OK).await;

        // rotate: the old key, cached in B, is refused; the new one works.
        b.assert_cached(&key, StatusCode::OK).await;
        let rotated = a.manager.rotate(&acme, info.id).await.expect("rotate");
        b.eventually(&key, StatusCode::UNAUTHORIZED).await;
        let new_key = rotated.key.expose_secret().to_owned();
        assert_eq!(b.status(&new_key).await, StatusCode::OK);

        // delete
        b.assert_cached(&new_key, StatusCode::OK).await;
        a.manager.delete(&acme, info.id).await.expect("delete");
        b.eventually(&new_key, StatusCode::UNAUTHORIZED).await;
    }
    // Nothing was missed: B's feed never lost its subscription, so the feed delivered each
    // change.
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
    let Some(schema) = Schema::create().await else {
        return;
    };
    let (a, b) = two_stacks(&schema, "kill", |_| {}).await;
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
        b.eventually(&key, StatusCode::UNAUTHORIZED).await;
        assert!(
            b.feed
                .wait_for(PATIENCE, |s| s.outages > outages && s.subscribed)
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
    b.eventually(&key, StatusCode::UNAUTHORIZED).await;
}

/// Every invalidation one bus heard, in order.
#[derive(Default)]
pub(super) struct Heard(pub(super) std::sync::Mutex<Vec<Invalidation>>);

impl InvalidationListener for Heard {
    fn invalidate(&self, invalidation: &Invalidation) {
        self.0.lock().expect("lock").push(*invalidation);
    }
}

impl Heard {
    /// Waits until the bus has heard of every one of `digests` after the first `from`
    /// invalidations; returns how many it has heard by then.
    async fn wait_for_keys(&self, from: usize, digests: &[KeyDigest]) -> usize {
        let heard_by_then = std::cell::Cell::new(0);
        let heard_all = || {
            let heard = self.0.lock().expect("lock");
            heard_by_then.set(heard.len());
            digests
                .iter()
                .all(|digest| heard[from..].contains(&Invalidation::Key(*digest)))
        };
        until(&format!("invalidations of {digests:?}"), || {
            std::future::ready(heard_all())
        })
        .await;
        heard_by_then.get()
    }

    /// Whether an invalidation in `range` (by position) names one of `digests`.
    fn heard_any(&self, range: std::ops::Range<usize>, digests: &[KeyDigest]) -> bool {
        self.0.lock().expect("lock")[range]
            .iter()
            .any(|heard| digests.iter().any(|d| *heard == Invalidation::Key(*d)))
    }
}

/// Runs `sql` on the key whose current prefix is `key`'s (`$1`), as someone editing the
/// table by hand would.
async fn by_hand(store: &PostgresStore, sql: &str, key: &ApiKey) {
    sqlx::query(sql)
        .bind(key.prefix().as_str())
        .execute(store.pool())
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_grace_changes_made_by_hand_reach_another_process_and_last_used_does_not() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    // The other process: its own feed into its own bus.
    let bus = InvalidationBus::new();
    let heard = Arc::new(Heard::default());
    bus.subscribe(&heard);
    let feed = tower_api_key::feed::spawn(
        PgChangeFeed::new(&PostgresStore::from_pool(schema.pool()))
            .application_name(&format!("{} policy feed", schema.name)),
        &bus,
        FeedConfig::default(),
    );
    assert!(feed.wait_subscribed(PATIENCE).await);

    let digest_of = |key: &ApiKey| pepper().digest(key);
    let (key, marker) = (
        ApiKey::generate().expect("randomness"),
        ApiKey::generate().expect("randomness"),
    );
    for (i, key) in [&key, &marker].into_iter().enumerate() {
        let record = KeyRecord::new(
            KeyId::random(),
            account(&format!("acme{i}")),
            key.prefix(),
            digest_of(key),
            SystemTime::now(),
        );
        store
            .insert_within_limit(record, 3, &crate::store::note())
            .await
            .expect("insert");
    }
    let old = digest_of(&key);

    // Heard after the subscription's own `Invalidation::All`: only what follows counts.
    let start = heard.0.lock().expect("lock").len();
    by_hand(
        &store,
        "UPDATE tower_api_keys SET scopes = '{read}' WHERE prefix = $1",
        &key,
    )
    .await;
    let seen = heard.wait_for_keys(start, &[old]).await;
    by_hand(
        &store,
        "UPDATE tower_api_keys SET expires_at = now() + interval '1 day' WHERE prefix = $1",
        &key,
    )
    .await;
    let seen = heard.wait_for_keys(seen, &[old]).await;

    // A rotation with a grace period: the old key becomes the previous one.
    let new = ApiKey::generate().expect("randomness");
    sqlx::query(
        "UPDATE tower_api_keys SET prefix = $2, digest = $3, previous_prefix = prefix,
             previous_digest = digest, previous_expires_at = now() + interval '1 hour'
         WHERE prefix = $1",
    )
    .bind(key.prefix().as_str())
    .bind(new.prefix().as_str())
    .bind(&digest_of(&new).as_bytes()[..])
    .execute(store.pool())
    .await
    .expect("rotate by hand");
    let seen = heard.wait_for_keys(seen, &[old, digest_of(&new)]).await;
    // A later scope change names the grace key too.
    by_hand(
        &store,
        "UPDATE tower_api_keys SET scopes = '{}' WHERE prefix = $1",
        &new,
    )
    .await;
    let seen = heard.wait_for_keys(seen, &[old, digest_of(&new)]).await;

    // A use, then a change to another key: notifications arrive in commit order, so once the
    // marker's is heard, one about the use would have been heard before it.
    by_hand(
        &store,
        "UPDATE tower_api_keys_last_used SET last_used_at = now() WHERE prefix = $1",
        &new,
    )
    .await;
    by_hand(
        &store,
        "UPDATE tower_api_keys SET status = 'inactive' WHERE prefix = $1",
        &marker,
    )
    .await;
    let after_marker = heard.wait_for_keys(seen, &[digest_of(&marker)]).await;
    assert!(
        !heard.heard_any(seen..after_marker, &[old, digest_of(&new)]),
        "a last_used update was announced"
    );

    // A delete names the grace key too.
    by_hand(&store, "DELETE FROM tower_api_keys WHERE prefix = $1", &new).await;
    heard
        .wait_for_keys(after_marker, &[old, digest_of(&new)])
        .await;
    assert_eq!(
        feed.status().outages,
        0,
        "the feed never lost its subscription"
    );
    feed.shutdown().await;
}
