//! A change that may have reached the store is in force in every cache, whatever happens to
//! its caller: a caller that goes away (a timeout, a disconnected client), a store that
//! commits and then fails to reply or panics, or a write that lands after its caller left
//! must not leave a revoked, rotated-away or deleted key cached as valid.
//!
//! A change whose caller went away is published when the store answers, not when the caller
//! leaves: the manager runs the store call in a task of its own. Publishing when the caller
//! leaves would come too early for a write that commits later (the tests of a change that
//! lands after its caller left), and would only send every request to a store that is slow
//! already.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use tower_api_key::audit::{AuditEntry, AuditEvent, AuditNote, AuditQuery};

use crate::support::hooks::{StoreHooks, hooked_key_store};
use crate::support::service::{Stack, stack, status};
use crate::support::wait::{PATIENCE, until};
use crate::support::{account, pepper};
use http::StatusCode;
use tokio::sync::Notify;
use tower_api_key::cache::CacheConfig;
use tower_api_key::invalidation::{Invalidation, InvalidationListener};
use tower_api_key::store::Rotated;
use tower_api_key::usage::{Hour, UsageBatch, UsageRow};
use tower_api_key::{
    AccountId, ApiKeyLayer, KeyDigest, KeyId, KeyManager, KeyPrefix, KeyRecord, KeyStatus,
    KeyStore, ManagerError, MemoryStore, PolicyUpdate, StoreError, StoreResolver,
};

/// What the store does once a change is applied.
const REPLY: u8 = 0;
const STALL: u8 = 1;
const FAIL: u8 = 2;
const PANIC: u8 = 3;

/// What [`PANIC`] panics with: a payload that must not reach the caller's error.
const PANIC_PAYLOAD: &str = "payload-that-must-not-leak";

/// A memory store that applies every change and then, when told to, stalls until released,
/// fails to reply, or panics.
#[derive(Default)]
struct AfterCommitStore {
    records: MemoryStore,
    after_write: AtomicU8,
    lookups: AtomicUsize,
    /// A stalled change has been applied.
    stalled: Notify,
    /// Lets the stalled change reply.
    release: Notify,
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
                self.stalled.notify_one();
                self.release.notified().await;
                Ok(())
            }
            FAIL => Err(StoreError::unavailable("connection lost after commit")),
            PANIC => panic!("the store panicked with {PANIC_PAYLOAD}"),
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

    /// Waits until a request with `key` is answered `expected`.
    async fn eventually(&self, key: &str, expected: StatusCode, why: &str) {
        eventually(&stack(&self.layer), key, expected, why).await;
    }

    fn after_write(&self, behaviour: u8) {
        self.store.after_write.store(behaviour, Ordering::SeqCst);
    }
}

/// Runs `change` under a 10 ms timeout while the store, having applied it, holds its reply;
/// once the caller has given up, lets the store reply. The change is then published by the
/// manager's task, which the test can't await: callers of [`abandoned`] wait for its effect.
async fn abandoned<F: Future>(fixture: &Fixture, change: F) {
    fixture.after_write(STALL);
    let outcome = tokio::time::timeout(Duration::from_millis(10), change).await;
    assert!(
        outcome.is_err(),
        "the store holds its reply: the change can't end"
    );
    within(
        fixture.store.stalled.notified(),
        "the change to reach the store",
    )
    .await;
    fixture.after_write(REPLY);
    fixture.store.release.notify_one();
}

#[tokio::test]
async fn an_abandoned_revoke_that_reached_the_store_is_refused_once_the_store_answers() {
    let fixture = Fixture::new();
    let created = fixture.cached_key().await;
    let acme = account("acme");
    abandoned(&fixture, fixture.manager.revoke(&acme, created.info.id)).await;
    let stored = fixture.manager.get(&acme, created.info.id).await;
    assert_eq!(stored.expect("still there").status, KeyStatus::Inactive);
    let key = created.key.expose_secret();
    let why = "the store answered the abandoned revoke";
    fixture.eventually(key, StatusCode::UNAUTHORIZED, why).await;
}

#[tokio::test]
async fn an_abandoned_rotate_that_reached_the_store_refuses_the_old_key_once_the_store_answers() {
    let fixture = Fixture::new();
    let created = fixture.cached_key().await;
    let acme = account("acme");
    abandoned(&fixture, fixture.manager.rotate(&acme, created.info.id)).await;
    let stored = fixture.manager.get(&acme, created.info.id).await;
    assert_ne!(stored.expect("still there").prefix, created.info.prefix);
    let key = created.key.expose_secret();
    let why = "the store answered the abandoned rotate";
    fixture.eventually(key, StatusCode::UNAUTHORIZED, why).await;
}

#[tokio::test]
async fn an_abandoned_delete_that_reached_the_store_is_refused_once_the_store_answers() {
    let fixture = Fixture::new();
    let created = fixture.cached_key().await;
    let acme = account("acme");
    abandoned(&fixture, fixture.manager.delete(&acme, created.info.id)).await;
    assert!(fixture.manager.get(&acme, created.info.id).await.is_err());
    let key = created.key.expose_secret();
    let why = "the store answered the abandoned delete";
    fixture.eventually(key, StatusCode::UNAUTHORIZED, why).await;
}

#[tokio::test]
async fn an_abandoned_reactivate_that_reached_the_store_is_accepted_once_the_store_answers() {
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
    let why = "the store answered the abandoned reactivate";
    fixture.eventually(key, StatusCode::OK, why).await;
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
async fn a_store_that_panics_after_commit_is_an_error_and_the_key_is_refused_at_once() {
    let fixture = Fixture::new();
    let created = fixture.cached_key().await;
    let heard = Arc::new(Heard::default());
    fixture.manager.invalidation_bus().subscribe(&heard);
    fixture.after_write(PANIC);
    let outcome = fixture
        .manager
        .revoke(&account("acme"), created.info.id)
        .await;
    fixture.after_write(REPLY);
    let err = outcome.expect_err("the store panicked");
    assert!(
        matches!(err, ManagerError::Store(StoreError::Unavailable(_))),
        "{err:?}"
    );
    let text = format!("{err} {err:?}");
    assert!(!text.contains(PANIC_PAYLOAD), "{text}");
    assert!(!text.contains(created.key.expose_secret()), "{text}");
    assert_eq!(heard.all(), 1, "one Invalidation::All after the panic");
    fixture.assert_refused(&created).await;
}

#[test]
fn a_change_cut_short_by_the_runtime_shutting_down_invalidates_everything() {
    let store = Arc::new(LandsLateStore::default());
    let manager = KeyManager::new(store.clone(), pepper());
    let heard = Arc::new(Heard::default());
    manager.invalidation_bus().subscribe(&heard);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let acme = account("acme");
        let created = manager.create(&acme).await.expect("create");
        store.gate.hold.store(true, Ordering::SeqCst);
        let revoke = manager.revoke(&acme, created.info.id);
        let outcome = tokio::time::timeout(Duration::from_millis(10), revoke).await;
        assert!(
            outcome.is_err(),
            "the store holds the write: the call can't end"
        );
        within(
            store.gate.waiting.notified(),
            "the write to reach the store",
        )
        .await;
    });
    assert_eq!(
        heard.all(),
        0,
        "nothing published while the store holds the write"
    );
    // Shutting down drops the manager's task, still waiting for the store.
    drop(runtime);
    assert_eq!(
        heard.all(),
        1,
        "one Invalidation::All when the task was dropped"
    );
}

/// Counts the [`Invalidation::All`]s it hears.
#[derive(Default)]
struct Heard(AtomicUsize);

impl InvalidationListener for Heard {
    fn invalidate(&self, invalidation: &Invalidation) {
        if let Invalidation::All = invalidation {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Heard {
    fn all(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
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

// ===== a change that lands after its caller left =====

/// The shared half of a [`LandsLateStore`]: the records, and the three signals of a held
/// write.
#[derive(Default)]
struct Gate {
    records: MemoryStore,
    /// Whether the next changes wait for [`land`](Self::land) (inserts never do).
    hold: AtomicBool,
    /// A held write has reached the store.
    waiting: Notify,
    /// Lets the held write land.
    land: Notify,
    /// The held write has been applied.
    landed: Notify,
}

/// A store that, like a database server, goes on with a write whose client stopped waiting:
/// while [`Gate::hold`] is set, a change waits until the test lets it land and is then
/// applied, whether or not the call that sent it is still there to read the answer.
#[derive(Default)]
struct LandsLateStore {
    gate: Arc<Gate>,
    lookups: AtomicUsize,
}

impl LandsLateStore {
    /// Runs `apply` on the records: at once, or, while writes are held, in a task of its own
    /// (the "server") once the test lets it land.
    async fn write<T, F, Fut>(&self, apply: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Gate>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let gate = self.gate.clone();
        if !gate.hold.load(Ordering::SeqCst) {
            return apply(gate).await;
        }
        let server = tokio::spawn(async move {
            gate.waiting.notify_one();
            gate.land.notified().await;
            let applied = apply(gate.clone()).await;
            gate.landed.notify_one();
            applied
        });
        server.await.expect("the store's write task")
    }
}

#[async_trait::async_trait]
impl KeyStore for LandsLateStore {
    async fn insert_within_limit(
        &self,
        record: KeyRecord,
        limit: usize,
        audit: &AuditNote,
    ) -> Result<(), StoreError> {
        self.gate
            .records
            .insert_within_limit(record, limit, audit)
            .await
    }
    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.gate.records.find_by_prefix(prefix).await
    }
    async fn get(&self, account: &AccountId, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.gate.records.get(account, id).await
    }
    async fn list(&self, account: &AccountId) -> Result<Vec<KeyRecord>, StoreError> {
        self.gate.records.list(account).await
    }
    async fn set_status(
        &self,
        account: &AccountId,
        id: KeyId,
        status: KeyStatus,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (account, audit) = (account.clone(), audit.clone());
        self.write(move |gate| async move {
            gate.records.set_status(&account, id, status, &audit).await
        })
        .await
    }
    async fn replace_key(
        &self,
        account: &AccountId,
        id: KeyId,
        prefix: KeyPrefix,
        digest: KeyDigest,
        grace_until: Option<SystemTime>,
        audit: &AuditNote,
    ) -> Result<Option<Rotated>, StoreError> {
        let (account, audit) = (account.clone(), audit.clone());
        self.write(move |gate| async move {
            let records = &gate.records;
            records
                .replace_key(&account, id, prefix, digest, grace_until, &audit)
                .await
        })
        .await
    }
    async fn update_policy(
        &self,
        account: &AccountId,
        id: KeyId,
        update: &PolicyUpdate,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (account, update, audit) = (account.clone(), update.clone(), audit.clone());
        self.write(move |gate| async move {
            gate.records
                .update_policy(&account, id, &update, &audit)
                .await
        })
        .await
    }
    async fn delete(
        &self,
        account: &AccountId,
        id: KeyId,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (account, audit) = (account.clone(), audit.clone());
        self.write(move |gate| async move { gate.records.delete(&account, id, &audit).await })
            .await
    }
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.gate.records.append_audit(entry).await
    }
    async fn audit_trail(
        &self,
        account: &AccountId,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.gate.records.audit_trail(account, query).await
    }
    async fn prune_audit(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.gate.records.prune_audit(before).await
    }
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        self.gate.records.record_usage(batch).await
    }
    async fn usage(
        &self,
        account: &AccountId,
        key: Option<KeyId>,
        from: Hour,
        to: Hour,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.gate.records.usage(account, key, from, to).await
    }
    async fn prune_usage(&self, before: Hour) -> Result<u64, StoreError> {
        self.gate.records.prune_usage(before).await
    }
}

/// The changes whose invalidation must follow their write, wherever the caller went.
#[derive(Debug, Clone, Copy)]
enum Change {
    Revoke,
    Rotate,
    Delete,
    /// Brings the expiry forward into the past.
    Expire,
    /// Of a revoked key.
    Reactivate,
}

impl Change {
    /// Runs the change, ignoring its outcome.
    fn run<'a>(
        self,
        manager: &'a KeyManager,
        account: &'a AccountId,
        id: KeyId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let _ = match self {
                Self::Revoke => manager.revoke(account, id).await.map(drop),
                Self::Rotate => manager.rotate(account, id).await.map(drop),
                Self::Delete => manager.delete(account, id).await,
                Self::Expire => {
                    let past = SystemTime::now() - Duration::from_secs(3600);
                    let update = PolicyUpdate::new().expires_at(Some(past));
                    manager.update(account, id, update).await.map(drop)
                }
                Self::Reactivate => manager.reactivate(account, id).await.map(drop),
            };
        })
    }

    /// The status of the key string before and after the change.
    fn statuses(self) -> (StatusCode, StatusCode) {
        match self {
            Self::Reactivate => (StatusCode::UNAUTHORIZED, StatusCode::OK),
            _ => (StatusCode::OK, StatusCode::UNAUTHORIZED),
        }
    }
}

/// Waits for `signal`, failing the test after [`PATIENCE`].
async fn within(signal: impl Future, what: &str) {
    if tokio::time::timeout(PATIENCE, signal).await.is_err() {
        panic!("waited {PATIENCE:?} for {what}");
    }
}

/// Asks `service` with `key` until it answers `expected`.
async fn eventually(service: &Stack, key: &str, expected: StatusCode, why: &str) {
    until(&format!("{expected} after {why}"), || async {
        status(service, key).await == expected
    })
    .await;
}

/// The caller gives up after 10 ms while the store holds the write; a request then reads the
/// old row and caches it (for an hour: the cache can't expire it); then the write lands. The
/// change must reach the cache after that, though nobody is waiting for it any more.
async fn lands_after_its_caller_left(change: Change) {
    let store = Arc::new(LandsLateStore::default());
    let manager = KeyManager::new(store.clone(), pepper());
    let hour = Duration::from_secs(3600);
    let layer = ApiKeyLayer::for_manager(&manager)
        .cache_config(CacheConfig::default().positive_ttl(hour).negative_ttl(hour))
        .build();
    let service = stack(&layer);
    let acme = account("acme");
    let created = manager.create(&acme).await.expect("create");
    let (id, key) = (created.info.id, created.key.expose_secret());
    if let Change::Reactivate = change {
        manager.revoke(&acme, id).await.expect("revoke");
    }
    let (before, after) = change.statuses();

    store.gate.hold.store(true, Ordering::SeqCst);
    let call = change.run(&manager, &acme, id);
    let outcome = tokio::time::timeout(Duration::from_millis(10), call).await;
    assert!(
        outcome.is_err(),
        "the store holds the write: the call can't end"
    );
    within(
        store.gate.waiting.notified(),
        "the write to reach the store",
    )
    .await;

    // The caller has gone and the write hasn't landed: the old row is read and cached.
    let lookups = store.lookups.load(Ordering::SeqCst);
    assert_eq!(status(&service, key).await, before, "the old row");
    assert_eq!(store.lookups.load(Ordering::SeqCst), lookups + 1, "read");
    assert_eq!(status(&service, key).await, before, "the old row, cached");
    assert_eq!(store.lookups.load(Ordering::SeqCst), lookups + 1, "cached");

    store.gate.land.notify_one();
    within(store.gate.landed.notified(), "the write to land").await;
    eventually(&service, key, after, "the write landed").await;
}

#[tokio::test]
async fn a_revoke_that_lands_after_its_caller_left_is_refused_once_it_lands() {
    lands_after_its_caller_left(Change::Revoke).await;
}

#[tokio::test]
async fn a_rotate_that_lands_after_its_caller_left_refuses_the_old_key_once_it_lands() {
    lands_after_its_caller_left(Change::Rotate).await;
}

#[tokio::test]
async fn a_delete_that_lands_after_its_caller_left_is_refused_once_it_lands() {
    lands_after_its_caller_left(Change::Delete).await;
}

#[tokio::test]
async fn an_expiry_that_lands_after_its_caller_left_is_refused_once_it_lands() {
    lands_after_its_caller_left(Change::Expire).await;
}

#[tokio::test]
async fn a_reactivate_that_lands_after_its_caller_left_is_accepted_once_it_lands() {
    lands_after_its_caller_left(Change::Reactivate).await;
}
