//! A change that may have reached the store is in force in every cache, whatever happens to
//! its caller: a caller that goes away (a timeout, a disconnected client) or a store that
//! commits and then fails to reply must not leave a revoked, rotated-away or deleted key
//! cached as valid.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::hooks::{StoreHooks, hooked_key_store};
use crate::support::service::{stack, status};
use crate::support::{account, pepper};
use http::StatusCode;
use tower_api_key::{
    ApiKeyLayer, KeyManager, KeyPrefix, KeyRecord, KeyStatus, KeyStore, MemoryStore, StoreError,
    StoreResolver,
};

/// What the store does once a change is applied.
const REPLY: u8 = 0;
const STALL: u8 = 1;
const FAIL: u8 = 2;

/// A memory store that applies every change and then, when told to, stalls for 100 ms or
/// fails to reply.
#[derive(Default)]
struct AfterCommitStore {
    records: MemoryStore,
    after_write: AtomicU8,
    lookups: AtomicUsize,
}

impl StoreHooks for AfterCommitStore {
    fn records(&self) -> &MemoryStore {
        &self.records
    }

    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.records.find_by_prefix(prefix).await
    }

    async fn after_write(&self) -> Result<(), StoreError> {
        match self.after_write.load(Ordering::SeqCst) {
            STALL => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(())
            }
            FAIL => Err(StoreError::unavailable("connection lost after commit")),
            _ => Ok(()),
        }
    }
}

hooked_key_store!(AfterCommitStore);

/// A manager over an [`AfterCommitStore`], and the status a request with a key gets from a
/// layer subscribed to it.
struct Fixture {
    store: std::sync::Arc<AfterCommitStore>,
    manager: KeyManager,
    layer: ApiKeyLayer<StoreResolver>,
}

impl Fixture {
    fn new() -> Self {
        let store = std::sync::Arc::new(AfterCommitStore::default());
        let manager = KeyManager::new(store.clone(), pepper());
        let layer = ApiKeyLayer::for_manager(&manager).build();
        Self {
            store,
            manager,
            layer,
        }
    }

    async fn status(&self, key: &str) -> StatusCode {
        status(&stack(&self.layer), key).await
    }

    /// Creates a key and makes sure the layer has it cached as valid.
    async fn cached_key(&self) -> tower_api_key::CreatedKey {
        let created = self.manager.create(&account("acme")).await.expect("create");
        let key = created.key.expose_secret().to_owned();
        assert_eq!(self.status(&key).await, StatusCode::OK);
        assert_eq!(self.status(&key).await, StatusCode::OK, "served from cache");
        created
    }

    /// Asserts that a request with `created`'s original key string is refused.
    async fn assert_refused(&self, created: &tower_api_key::CreatedKey) {
        assert_eq!(
            self.status(created.key.expose_secret()).await,
            StatusCode::UNAUTHORIZED
        );
    }

    fn after_write(&self, behaviour: u8) {
        self.store.after_write.store(behaviour, Ordering::SeqCst);
    }
}

/// Runs `change` under a 10 ms timeout while the store stalls after applying it.
async fn abandoned<F: std::future::Future>(fixture: &Fixture, change: F) {
    fixture.after_write(STALL);
    let outcome = tokio::time::timeout(Duration::from_millis(10), change).await;
    assert!(outcome.is_err(), "the change should still be running");
    fixture.after_write(REPLY);
}

#[tokio::test]
async fn an_abandoned_revoke_that_reached_the_store_is_refused_at_once() {
    let fixture = Fixture::new();
    let created = fixture.cached_key().await;
    let acme = account("acme");
    abandoned(&fixture, fixture.manager.revoke(&acme, created.info.id)).await;
    let stored = fixture.manager.get(&acme, created.info.id).await;
    assert_eq!(stored.expect("still there").status, KeyStatus::Inactive);
    fixture.assert_refused(&created).await;
}

#[tokio::test]
async fn an_abandoned_rotate_that_reached_the_store_refuses_the_old_key_at_once() {
    let fixture = Fixture::new();
    let created = fixture.cached_key().await;
    let acme = account("acme");
    abandoned(&fixture, fixture.manager.rotate(&acme, created.info.id)).await;
    let stored = fixture.manager.get(&acme, created.info.id).await;
    assert_ne!(stored.expect("still there").prefix, created.info.prefix);
    fixture.assert_refused(&created).await;
}

#[tokio::test]
async fn an_abandoned_delete_that_reached_the_store_is_refused_at_once() {
    let fixture = Fixture::new();
    let created = fixture.cached_key().await;
    let acme = account("acme");
    abandoned(&fixture, fixture.manager.delete(&acme, created.info.id)).await;
    assert!(fixture.manager.get(&acme, created.info.id).await.is_err());
    fixture.assert_refused(&created).await;
}

#[tokio::test]
async fn an_abandoned_reactivate_that_reached_the_store_is_accepted_at_once() {
    let fixture = Fixture::new();
    let created = fixture.cached_key().await;
    let (acme, key) = (account("acme"), created.key.expose_secret());
    fixture
        .manager
        .revoke(&acme, created.info.id)
        .await
        .expect("revoke");
    assert_eq!(fixture.status(key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        fixture.status(key).await,
        StatusCode::UNAUTHORIZED,
        "cached as refused"
    );
    abandoned(&fixture, fixture.manager.reactivate(&acme, created.info.id)).await;
    assert_eq!(fixture.status(key).await, StatusCode::OK);
}

#[tokio::test]
async fn a_revoke_whose_reply_was_lost_after_commit_is_refused_at_once() {
    let fixture = Fixture::new();
    let created = fixture.cached_key().await;
    let acme = account("acme");
    fixture.after_write(FAIL);
    let outcome = fixture.manager.revoke(&acme, created.info.id).await;
    fixture.after_write(REPLY);
    assert!(outcome.is_err(), "the store reported a failure");
    let stored = fixture.manager.get(&acme, created.info.id).await;
    assert_eq!(stored.expect("still there").status, KeyStatus::Inactive);
    fixture.assert_refused(&created).await;
}

#[tokio::test]
async fn a_rotate_whose_reply_was_lost_after_commit_refuses_the_old_key_at_once() {
    let fixture = Fixture::new();
    let created = fixture.cached_key().await;
    fixture.after_write(FAIL);
    let outcome = fixture
        .manager
        .rotate(&account("acme"), created.info.id)
        .await;
    fixture.after_write(REPLY);
    assert!(outcome.is_err(), "the store reported a failure");
    fixture.assert_refused(&created).await;
}

#[tokio::test]
async fn a_change_refused_for_an_unknown_id_leaves_other_keys_cached() {
    let fixture = Fixture::new();
    let created = fixture.cached_key().await;
    let unknown = tower_api_key::KeyId::random();
    assert!(
        fixture
            .manager
            .revoke(&account("acme"), unknown)
            .await
            .is_err()
    );
    let lookups = fixture.store.lookups.load(Ordering::SeqCst);
    assert_eq!(
        fixture.status(created.key.expose_secret()).await,
        StatusCode::OK
    );
    assert_eq!(
        fixture.store.lookups.load(Ordering::SeqCst),
        lookups,
        "still served from the cache"
    );
}
