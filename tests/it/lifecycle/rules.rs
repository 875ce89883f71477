//! The lifecycle rules (ARCHITECTURE.md, *Lifecycle*), one test per rule, on the embedded store.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::stores::TestStore;
use crate::support::{account, pepper};
use tower_api_key::invalidation::{Invalidation, InvalidationListener};
use tower_api_key::policy::{KeyOptions, LATEST_TIME_SECS, PolicyError, PolicyUpdate};
use tower_api_key::store::KeyUse;
use tower_api_key::usage::UsageBatch;
use tower_api_key::{
    ApiKey, KeyDigest, KeyId, KeyManager, KeyRecord, KeyStatus, KeyStore, ManagerError,
    MemoryStore, StoreError,
};

fn manager() -> KeyManager {
    KeyManager::new(Arc::new(MemoryStore::new()), pepper())
}

/// Records every invalidation it hears.
#[derive(Default)]
struct Heard(Mutex<Vec<Invalidation>>);

impl InvalidationListener for Heard {
    fn invalidate(&self, invalidation: &Invalidation) {
        self.0.lock().expect("lock").push(*invalidation);
    }
}

impl Heard {
    fn digests(&self) -> Vec<KeyDigest> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|inv| match inv {
                Invalidation::Key(digest) => Some(*digest),
                _ => None,
            })
            .collect()
    }
}

fn listen(manager: &KeyManager) -> Arc<Heard> {
    let heard = Arc::new(Heard::default());
    manager.invalidation_bus().subscribe(&heard);
    heard
}

async fn stored(manager: &KeyManager, key: &ApiKey) -> Option<KeyRecord> {
    manager
        .store()
        .find_by_prefix(&key.prefix())
        .await
        .expect("store")
        .filter(|record| record.digest.ct_eq(&pepper().digest(key)))
}

// ===== create =====

#[tokio::test]
async fn create_returns_an_active_key_with_created_at_and_no_last_used() {
    let before = SystemTime::now() - Duration::from_millis(1);
    let created = manager().create(&account("acme")).await.expect("create");
    assert_eq!(created.info.status, KeyStatus::Active);
    assert_eq!(created.info.account_id, account("acme"));
    assert_eq!(created.info.last_used_at, None);
    assert!(created.info.created_at >= before);
    assert!(created.info.created_at <= SystemTime::now());
}

#[tokio::test]
async fn created_key_prefix_is_its_first_8_characters() {
    let created = manager().create(&account("acme")).await.expect("create");
    assert_eq!(
        &created.key.expose_secret()[..8],
        created.info.prefix.as_str()
    );
}

#[tokio::test]
async fn store_keeps_only_the_digest_of_a_created_key() {
    let manager = manager();
    let created = manager.create(&account("acme")).await.expect("create");
    let record = stored(&manager, &created.key).await.expect("stored");
    assert_eq!(record.digest, pepper().digest(&created.key));
    let shown = format!("{record:?} {:?}", manager.list(&account("acme")).await);
    assert!(!shown.contains(&created.key.expose_secret()[9..]));
}

#[tokio::test]
async fn listing_never_contains_a_secret() {
    let manager = manager();
    let created = manager.create(&account("acme")).await.expect("create");
    let listing = manager.list(&account("acme")).await.expect("list");
    assert_eq!(listing, vec![created.info.clone()]);
    assert!(!format!("{listing:?}").contains(&created.key.expose_secret()[9..]));
    assert!(!format!("{created:?}").contains(&created.key.expose_secret()[9..]));
}

#[tokio::test]
async fn fourth_key_of_an_account_is_refused() {
    let manager = manager();
    for _ in 0..3 {
        manager.create(&account("acme")).await.expect("create");
    }
    let err = manager.create(&account("acme")).await.expect_err("4th");
    assert!(
        matches!(err, ManagerError::LimitReached { limit: 3 }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "account already has 3 keys");
    assert_eq!(manager.list(&account("acme")).await.expect("list").len(), 3);
}

#[tokio::test]
async fn limit_is_per_account() {
    let manager = manager();
    for _ in 0..3 {
        manager.create(&account("acme")).await.expect("create");
    }
    manager
        .create(&account("other"))
        .await
        .expect("other account");
}

#[tokio::test]
async fn inactive_keys_count_towards_the_limit() {
    let manager = manager();
    for _ in 0..3 {
        let created = manager.create(&account("acme")).await.expect("create");
        manager
            .revoke(&account("acme"), created.info.id)
            .await
            .expect("revoke");
    }
    assert!(matches!(
        manager.create(&account("acme")).await,
        Err(ManagerError::LimitReached { limit: 3 })
    ));
}

#[tokio::test]
async fn deleting_a_key_frees_a_slot() {
    let manager = manager();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            manager
                .create(&account("acme"))
                .await
                .expect("create")
                .info
                .id,
        );
    }
    manager
        .delete(&account("acme"), ids[1])
        .await
        .expect("delete");
    manager.create(&account("acme")).await.expect("slot freed");
}

#[tokio::test]
async fn limit_is_configurable() {
    let manager = manager().with_max_keys_per_account(1);
    assert_eq!(manager.max_keys_per_account(), 1);
    manager.create(&account("acme")).await.expect("first");
    assert!(matches!(
        manager.create(&account("acme")).await,
        Err(ManagerError::LimitReached { limit: 1 })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_creates_leave_exactly_three_keys() {
    let manager = manager();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { manager.create(&account("acme")).await })
        })
        .collect();
    let mut created = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => created += 1,
            Err(ManagerError::LimitReached { limit: 3 }) => refused += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!((created, refused), (3, 47));
    assert_eq!(manager.list(&account("acme")).await.expect("list").len(), 3);
}

/// A store whose next writes report a taken prefix, as many as it is told; it counts every
/// write it is asked for.
struct CollidingStore {
    inner: MemoryStore,
    collisions_left: AtomicUsize,
    writes: AtomicUsize,
}

impl CollidingStore {
    fn new(collisions: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(),
            collisions_left: AtomicUsize::new(collisions),
            writes: AtomicUsize::new(0),
        })
    }

    /// The next `collisions` writes report a taken prefix.
    fn collide_next(&self, collisions: usize) {
        self.collisions_left.store(collisions, Ordering::SeqCst);
    }

    fn collide(&self) -> bool {
        self.collisions_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
}

impl crate::support::hooks::StoreHooks for CollidingStore {
    fn records(&self) -> &MemoryStore {
        &self.inner
    }
    // The tests below only insert and replace keys, the two writes that pick a prefix.
    fn before_write(&self) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.collide() {
            Err(StoreError::PrefixTaken)
        } else {
            Ok(())
        }
    }
}

crate::support::hooks::hooked_key_store!(CollidingStore);

#[tokio::test]
async fn prefix_collisions_on_create_are_retried_not_surfaced() {
    let store = CollidingStore::new(3);
    let manager = KeyManager::new(store.clone(), pepper());
    let created = manager.create(&account("acme")).await.expect("retried");
    assert_eq!(store.writes(), 4, "three taken prefixes, then the insert");
    let listed = manager.list(&account("acme")).await.expect("list");
    assert_eq!(listed.len(), 1, "one key, whatever the attempts");
    assert_eq!(listed[0].prefix, created.key.prefix());
}

#[tokio::test]
async fn prefix_collisions_on_rotate_are_retried_not_surfaced() {
    let store = CollidingStore::new(0);
    let manager = KeyManager::new(store.clone(), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    store.collide_next(3);
    let writes = store.writes();
    let rotated = manager
        .rotate(&account("acme"), created.info.id)
        .await
        .expect("rotate retried");
    assert_eq!(
        store.writes() - writes,
        4,
        "three taken prefixes, then the replacement"
    );
    let info = manager
        .get(&account("acme"), created.info.id)
        .await
        .expect("get");
    assert_eq!(info.prefix, rotated.key.prefix(), "the key that was stored");
    assert_ne!(info.prefix, created.key.prefix());
}

#[tokio::test]
async fn endless_prefix_collisions_end_in_a_clear_error() {
    let manager = KeyManager::new(CollidingStore::new(usize::MAX), pepper());
    let err = manager
        .create(&account("acme"))
        .await
        .expect_err("exhausted");
    assert!(matches!(err, ManagerError::PrefixExhausted));
    assert_eq!(err.to_string(), "no free key prefix found");
}

// ===== rotate =====

#[tokio::test]
async fn rotate_keeps_id_and_created_at_and_changes_prefix_and_secret() {
    let manager = manager();
    let created = manager.create(&account("acme")).await.expect("create");
    let rotated = manager
        .rotate(&account("acme"), created.info.id)
        .await
        .expect("rotate");
    assert_eq!(rotated.info.id, created.info.id);
    assert_eq!(rotated.info.created_at, created.info.created_at);
    assert_ne!(rotated.info.prefix, created.info.prefix);
    assert_ne!(
        rotated.key.expose_secret()[9..],
        created.key.expose_secret()[9..]
    );
    assert_eq!(rotated.key.prefix(), rotated.info.prefix);
}

#[tokio::test]
async fn rotated_away_key_no_longer_matches_any_record() {
    let manager = manager();
    let created = manager.create(&account("acme")).await.expect("create");
    let rotated = manager
        .rotate(&account("acme"), created.info.id)
        .await
        .expect("rotate");
    assert_eq!(stored(&manager, &created.key).await, None);
    assert!(stored(&manager, &rotated.key).await.is_some());
}

#[tokio::test]
async fn rotate_resets_last_used_at() {
    let manager = manager();
    let created = manager.create(&account("acme")).await.expect("create");
    let used = KeyUse {
        id: created.info.id,
        prefix: created.info.prefix,
        at: SystemTime::now(),
    };
    manager
        .store()
        .record_usage(&UsageBatch::last_used([used]))
        .await
        .expect("use");
    let info = manager
        .get(&account("acme"), created.info.id)
        .await
        .expect("get");
    assert!(info.last_used_at.is_some());
    let rotated = manager
        .rotate(&account("acme"), created.info.id)
        .await
        .expect("rotate");
    assert_eq!(rotated.info.last_used_at, None);
    // A use of the old key flushed late must not bring the old time back.
    manager
        .store()
        .record_usage(&UsageBatch::last_used([used]))
        .await
        .expect("late use");
    let info = manager
        .get(&account("acme"), created.info.id)
        .await
        .expect("get");
    assert_eq!(info.last_used_at, None);
}

#[tokio::test]
async fn rotate_keeps_status() {
    let manager = manager();
    let created = manager.create(&account("acme")).await.expect("create");
    manager
        .revoke(&account("acme"), created.info.id)
        .await
        .expect("revoke");
    let rotated = manager
        .rotate(&account("acme"), created.info.id)
        .await
        .expect("rotate");
    assert_eq!(rotated.info.status, KeyStatus::Inactive);
}

#[tokio::test]
async fn rotate_invalidates_the_old_digest_before_returning() {
    let manager = manager();
    let heard = listen(&manager);
    let created = manager.create(&account("acme")).await.expect("create");
    assert!(heard.digests().is_empty(), "create needs no invalidation");
    manager
        .rotate(&account("acme"), created.info.id)
        .await
        .expect("rotate");
    assert!(heard.digests().contains(&pepper().digest(&created.key)));
}

// ===== revoke / reactivate =====

#[tokio::test]
async fn revoke_makes_the_key_inactive_with_prefix_and_secret_unchanged() {
    let manager = manager();
    let heard = listen(&manager);
    let created = manager.create(&account("acme")).await.expect("create");
    let revoked = manager
        .revoke(&account("acme"), created.info.id)
        .await
        .expect("revoke");
    assert_eq!(revoked.status, KeyStatus::Inactive);
    assert_eq!(revoked.prefix, created.info.prefix);
    let record = stored(&manager, &created.key).await.expect("same digest");
    assert_eq!(record.status, KeyStatus::Inactive);
    assert_eq!(heard.digests(), vec![pepper().digest(&created.key)]);
}

#[tokio::test]
async fn reactivate_brings_back_the_same_key() {
    let manager = manager();
    let created = manager.create(&account("acme")).await.expect("create");
    manager
        .revoke(&account("acme"), created.info.id)
        .await
        .expect("revoke");
    let heard = listen(&manager);
    let reactivated = manager
        .reactivate(&account("acme"), created.info.id)
        .await
        .expect("reactivate");
    assert_eq!(reactivated.status, KeyStatus::Active);
    assert_eq!(reactivated.prefix, created.info.prefix);
    let record = stored(&manager, &created.key)
        .await
        .expect("same key works");
    assert_eq!(record.status, KeyStatus::Active);
    assert_eq!(heard.digests(), vec![pepper().digest(&created.key)]);
}

#[tokio::test]
async fn revoke_is_idempotent() {
    let manager = manager();
    let created = manager.create(&account("acme")).await.expect("create");
    for _ in 0..2 {
        let info = manager
            .revoke(&account("acme"), created.info.id)
            .await
            .expect("revoke");
        assert_eq!(info.status, KeyStatus::Inactive);
    }
}

// ===== delete =====

#[tokio::test]
async fn deleted_key_is_gone_and_its_id_unknown() {
    let manager = manager();
    let heard = listen(&manager);
    let created = manager.create(&account("acme")).await.expect("create");
    manager
        .delete(&account("acme"), created.info.id)
        .await
        .expect("delete");
    assert_eq!(stored(&manager, &created.key).await, None);
    assert_eq!(heard.digests(), vec![pepper().digest(&created.key)]);
    for result in [
        manager.get(&account("acme"), created.info.id).await.err(),
        manager
            .revoke(&account("acme"), created.info.id)
            .await
            .err(),
        manager
            .reactivate(&account("acme"), created.info.id)
            .await
            .err(),
        manager
            .rotate(&account("acme"), created.info.id)
            .await
            .err(),
        manager
            .delete(&account("acme"), created.info.id)
            .await
            .err(),
    ] {
        assert!(matches!(result, Some(ManagerError::NotFound)), "{result:?}");
    }
}

// ===== ownership =====

#[tokio::test]
async fn another_accounts_key_is_not_found() {
    let manager = manager();
    let theirs = manager.create(&account("acme")).await.expect("create");
    let me = account("mallory");
    let id = theirs.info.id;
    assert!(matches!(
        manager.get(&me, id).await,
        Err(ManagerError::NotFound)
    ));
    assert!(matches!(
        manager.revoke(&me, id).await,
        Err(ManagerError::NotFound)
    ));
    assert!(matches!(
        manager.rotate(&me, id).await,
        Err(ManagerError::NotFound)
    ));
    assert!(matches!(
        manager.delete(&me, id).await,
        Err(ManagerError::NotFound)
    ));
    assert!(manager.list(&me).await.expect("list").is_empty());
    let info = manager.get(&account("acme"), id).await.expect("untouched");
    assert_eq!(info.status, KeyStatus::Active);
}

#[tokio::test]
async fn unknown_key_id_is_not_found() {
    let err = manager()
        .revoke(&account("acme"), KeyId::random())
        .await
        .expect_err("unknown");
    assert!(matches!(err, ManagerError::NotFound));
    assert_eq!(err.to_string(), "key not found");
}

// ===== concurrency =====

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rotate_and_revoke_leave_a_consistent_record() {
    let manager = manager();
    let created = manager.create(&account("acme")).await.expect("create");
    let id = created.info.id;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let manager = manager.clone();
            tokio::spawn(async move {
                match i % 4 {
                    0 | 2 => Some(manager.rotate(&account("acme"), id).await.expect("rotate")),
                    1 => {
                        manager.revoke(&account("acme"), id).await.expect("revoke");
                        None
                    }
                    _ => {
                        manager
                            .reactivate(&account("acme"), id)
                            .await
                            .expect("reactivate");
                        None
                    }
                }
            })
        })
        .collect();
    let mut keys = vec![created.key];
    for task in tasks {
        keys.extend(task.await.expect("task").map(|rotated| rotated.key));
    }
    let record = manager.get(&account("acme"), id).await.expect("record");
    // Exactly one of all the keys ever handed out is current, and it is the stored one.
    let mut current = Vec::new();
    for key in &keys {
        if let Some(found) = stored(&manager, key).await {
            assert_eq!(found.id, id);
            current.push(key.prefix());
        }
    }
    assert_eq!(current, vec![record.prefix]);
    let prefixes: HashSet<_> = keys.iter().map(ApiKey::prefix).collect();
    assert_eq!(
        prefixes.len(),
        keys.len(),
        "every rotation made a new prefix"
    );
    assert_eq!(manager.list(&account("acme")).await.expect("list").len(), 1);
}

// ===== times =====

/// 10000-01-01T00:00:00Z, the first second after the latest time the API takes.
fn year_10000() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(LATEST_TIME_SECS + 1)
}

/// 1969-12-31T23:59:59Z.
fn year_1969() -> SystemTime {
    UNIX_EPOCH - Duration::from_secs(1)
}

fn out_of_range(outcome: Result<impl std::fmt::Debug, ManagerError>) {
    match outcome {
        Err(ManagerError::Policy(err @ PolicyError::TimeOutOfRange)) => assert_eq!(
            ManagerError::Policy(err).to_string(),
            "expires_at must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
        ),
        other => panic!("expected TimeOutOfRange, got {other:?}"),
    }
}

#[tokio::test]
async fn a_create_with_an_expiry_outside_1970_to_9999_is_refused_and_creates_nothing() {
    let manager = manager();
    let acme = account("acme");
    for at in [year_10000(), year_1969()] {
        let options = KeyOptions::new().expires_at(at);
        out_of_range(manager.create_with(&acme, options).await);
    }
    assert!(manager.list(&acme).await.expect("list").is_empty());
    // The last second of 9999 is taken.
    let latest = UNIX_EPOCH + Duration::from_secs(LATEST_TIME_SECS);
    let options = KeyOptions::new().expires_at(latest);
    let created = manager.create_with(&acme, options).await.expect("create");
    assert_eq!(created.info.expires_at, Some(latest));
}

#[tokio::test]
async fn an_update_to_an_expiry_outside_1970_to_9999_is_refused_and_changes_nothing() {
    let manager = manager();
    let acme = account("acme");
    let created = manager.create(&acme).await.expect("create");
    let heard = listen(&manager);
    for at in [year_10000(), year_1969()] {
        let update = PolicyUpdate::new()
            .name(Some("renamed".parse().expect("name")))
            .expires_at(Some(at));
        out_of_range(manager.update(&acme, created.info.id, update).await);
    }
    let stored = manager.get(&acme, created.info.id).await.expect("get");
    assert_eq!(stored, created.info, "nothing changed");
    assert_eq!(heard.0.lock().expect("lock").len(), 0, "nothing published");
    // The epoch itself is taken (and expires the key at once).
    let update = PolicyUpdate::new().expires_at(Some(UNIX_EPOCH));
    let updated = manager.update(&acme, created.info.id, update).await;
    assert_eq!(updated.expect("update").expires_at, Some(UNIX_EPOCH));
}

// ===== store failures =====

#[tokio::test]
async fn store_failures_are_reported_as_store_errors() {
    let store = TestStore::new();
    store.set_down(true);
    let manager = KeyManager::new(store, pepper());
    let err = manager.create(&account("acme")).await.expect_err("down");
    assert!(matches!(
        err,
        ManagerError::Store(StoreError::Unavailable(_))
    ));
    assert_eq!(err.to_string(), "key store unavailable: connection refused");
    assert!(matches!(
        manager.revoke(&account("acme"), KeyId::random()).await,
        Err(ManagerError::Store(_))
    ));
}
