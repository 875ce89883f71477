//! The lifecycle of an account's keys: create, list, get, rotate, revoke, reactivate, delete.
//!
//! [`KeyManager`] applies the rules (at most 3 keys per account by default, counting inactive
//! ones; rotation keeps id and `created_at`; the plaintext is returned only by create and
//! rotate) on top of any [`KeyStore`], and tells every subscribed cache about each change
//! before the method returns, so an old key is refused at once.
//!
//! ```
//! use std::sync::Arc;
//! use tower_api_key::{KeyManager, KeyStatus, ManagerError, MemoryStore, Pepper};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
//! let account = "acme".parse()?;
//!
//! let created = manager.create(&account).await?;
//! println!("give this to the client once: {}", created.key.expose_secret());
//!
//! let revoked = manager.revoke(&account, created.info.id).await?;
//! assert_eq!(revoked.status, KeyStatus::Inactive);
//!
//! manager.create(&account).await?;
//! manager.create(&account).await?;
//! // Inactive keys count towards the limit.
//! assert!(matches!(
//!     manager.create(&account).await,
//!     Err(ManagerError::LimitReached { limit: 3 })
//! ));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::invalidation::{Invalidation, InvalidationBus};
use crate::key::{ApiKey, KeyPrefix, Pepper, RandomnessError};
use crate::policy::{
    self, KeyName, KeyOptions, PolicyError, PolicyUpdate, RateLimit, RotateOptions, Scopes,
};
use crate::store::{AccountId, KeyId, KeyRecord, KeyStatus, KeyStore, StoreError};

/// The default limit of keys per account.
pub const DEFAULT_MAX_KEYS_PER_ACCOUNT: usize = 3;

/// How often a prefix collision is retried with a fresh key before giving up. With 36^8
/// possible prefixes a single collision is already rare.
const PREFIX_ATTEMPTS: usize = 8;

// ===== KeyInfo / CreatedKey =====

/// What a caller may see of a key: everything but its secret and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Permanent id, unchanged by rotation.
    pub id: KeyId,
    /// The owning account.
    pub account_id: AccountId,
    /// Current prefix (changes on rotation).
    pub prefix: KeyPrefix,
    /// Active or inactive.
    pub status: KeyStatus,
    /// When the key was created.
    pub created_at: SystemTime,
    /// When the key last authenticated a request, if ever since creation or rotation.
    pub last_used_at: Option<SystemTime>,
    /// The key's label.
    pub name: Option<KeyName>,
    /// The scopes the key is restricted to; `None` is unrestricted.
    pub scopes: Option<Scopes>,
    /// When the key stops (or stopped) authenticating.
    pub expires_at: Option<SystemTime>,
    /// How often it may be used; `None` leaves it to the layer's default, if any.
    pub rate_limit: Option<RateLimit>,
    /// While the old key string of a rotation with a grace period still works: its prefix.
    pub previous_prefix: Option<KeyPrefix>,
    /// While the old key string of a rotation with a grace period still works: when it stops.
    pub previous_expires_at: Option<SystemTime>,
}

impl KeyInfo {
    /// What a caller may see of `record` at `now` (a grace key that has ended is left out).
    pub fn from_record(record: KeyRecord, now: SystemTime) -> Self {
        let grace = record.grace_key(now).map(|p| (p.prefix, p.expires_at));
        Self {
            id: record.id,
            account_id: record.account_id,
            prefix: record.prefix,
            status: record.status,
            created_at: record.created_at,
            last_used_at: record.last_used_at,
            name: record.name,
            scopes: record.scopes,
            expires_at: record.expires_at,
            rate_limit: record.rate_limit,
            previous_prefix: grace.map(|(prefix, _)| prefix),
            previous_expires_at: grace.map(|(_, at)| at),
        }
    }

    /// Whether the key has expired at `now` (it still counts towards the limit until deleted).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

impl From<KeyRecord> for KeyInfo {
    /// As [`KeyInfo::from_record`] at the current time.
    fn from(record: KeyRecord) -> Self {
        Self::from_record(record, SystemTime::now())
    }
}

/// A key as returned by [`KeyManager::create`] and [`KeyManager::rotate`]: the only time
/// the plaintext is available. `Debug` shows the prefix only.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The key's record.
    pub info: KeyInfo,
    /// The whole key, to hand to the client once.
    pub key: ApiKey,
}

// ===== ManagerError =====

/// Why a lifecycle operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ManagerError {
    /// The account already holds its limit of keys (inactive keys count).
    LimitReached {
        /// The limit.
        limit: usize,
    },
    /// No key with that id belongs to that account.
    NotFound,
    /// The store failed; nothing may have changed, or the change may have applied.
    Store(StoreError),
    /// The operating system could not provide randomness for a new key.
    Randomness(RandomnessError),
    /// Every attempt to find an unused prefix collided.
    PrefixExhausted,
    /// A name, scope, expiry or grace period that the rules refuse; nothing changed.
    Policy(PolicyError),
}

impl fmt::Display for ManagerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LimitReached { limit } => write!(f, "account already has {limit} keys"),
            Self::NotFound => f.write_str("key not found"),
            Self::Store(err) => err.fmt(f),
            Self::Randomness(err) => err.fmt(f),
            Self::PrefixExhausted => f.write_str("no free key prefix found"),
            Self::Policy(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for ManagerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(err) => Some(err),
            Self::Randomness(err) => Some(err),
            Self::Policy(err) => Some(err),
            _ => None,
        }
    }
}

impl From<StoreError> for ManagerError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::LimitReached { limit } => Self::LimitReached { limit },
            other => Self::Store(other),
        }
    }
}

impl From<PolicyError> for ManagerError {
    fn from(err: PolicyError) -> Self {
        Self::Policy(err)
    }
}

impl From<RandomnessError> for ManagerError {
    fn from(err: RandomnessError) -> Self {
        Self::Randomness(err)
    }
}

// ===== KeyManager =====

/// Creates, rotates, revokes, reactivates and deletes keys, enforcing the per-account limit.
///
/// Cloning is cheap and shares the store and the invalidation bus. Every change is published
/// on [`invalidation_bus`](Self::invalidation_bus) before the method returns; a cache subscribed
/// there refuses the old key from then on.
///
/// **What if the call is abandoned or the store fails?** Once a change may have reached the
/// store, it is published whatever becomes of the caller: if the method's future is dropped
/// before the store replies (a timeout, a client that went away), or the store reports a
/// failure that may have been applied (a reply lost after commit), every cache subscribed to
/// the bus forgets everything ([`Invalidation::All`]), since the key the change touched is
/// not known for sure.
#[derive(Clone)]
pub struct KeyManager {
    store: Arc<dyn KeyStore>,
    pepper: Pepper,
    max_keys_per_account: usize,
    invalidations: InvalidationBus,
}

impl KeyManager {
    /// A manager over `store`, digesting keys with `pepper`, with the default limit of 3 keys
    /// per account.
    pub fn new(store: Arc<dyn KeyStore>, pepper: Pepper) -> Self {
        Self {
            store,
            pepper,
            max_keys_per_account: DEFAULT_MAX_KEYS_PER_ACCOUNT,
            invalidations: InvalidationBus::new(),
        }
    }

    /// Sets how many keys (active or inactive) one account may hold.
    #[must_use]
    pub fn with_max_keys_per_account(mut self, limit: usize) -> Self {
        self.max_keys_per_account = limit;
        self
    }

    /// How many keys (active or inactive) one account may hold.
    pub fn max_keys_per_account(&self) -> usize {
        self.max_keys_per_account
    }

    /// Publishes into `bus` instead of the manager's own bus, for sharing one bus between
    /// several managers or with a cross-process channel.
    #[must_use]
    pub fn with_invalidation_bus(mut self, bus: InvalidationBus) -> Self {
        self.invalidations = bus;
        self
    }

    /// The bus every change is published on; subscribe caches here.
    pub fn invalidation_bus(&self) -> &InvalidationBus {
        &self.invalidations
    }

    /// The store the manager writes to.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The pepper keys are digested with.
    pub fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    /// Creates an active key for `account` and returns it with its plaintext, which is not
    /// available again.
    ///
    /// The limit check and the insert are one atomic step of the store: of many concurrent
    /// creates for one account, exactly as many succeed as there are free slots.
    ///
    /// # Errors
    ///
    /// [`ManagerError::LimitReached`] if the account holds its limit of keys, active or not;
    /// a store failure otherwise.
    pub async fn create(&self, account: &AccountId) -> Result<CreatedKey, ManagerError> {
        self.create_with(account, KeyOptions::new()).await
    }

    /// Creates an active key for `account` with a name, scopes or expiry; see
    /// [`create`](Self::create).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_api_key::{KeyManager, MemoryStore, Pepper};
    /// use tower_api_key::policy::{KeyOptions, Scopes};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    /// let options = KeyOptions::new()
    ///     .name("reporting".parse()?)
    ///     .scopes(Scopes::new(["read"])?);
    /// let created = manager.create_with(&"acme".parse()?, options).await?;
    /// assert_eq!(created.info.name.as_ref().map(|n| n.as_str()), Some("reporting"));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ManagerError::Policy`] if the expiry is not in the future; otherwise as
    /// [`create`](Self::create).
    pub async fn create_with(
        &self,
        account: &AccountId,
        options: KeyOptions,
    ) -> Result<CreatedKey, ManagerError> {
        let id = KeyId::random();
        let created_at = now();
        let expires_at = match (options.expires_at, options.expires_in) {
            (Some(at), _) => Some(at),
            (None, Some(after)) => Some(created_at + policy::check_expires_in(after)?),
            (None, None) => None,
        };
        if expires_at.is_some_and(|at| at <= created_at) {
            return Err(PolicyError::ExpiryInPast.into());
        }
        for _ in 0..PREFIX_ATTEMPTS {
            let key = ApiKey::generate()?;
            let record = KeyRecord {
                name: options.name.clone(),
                scopes: options.scopes.clone(),
                expires_at,
                rate_limit: options.rate_limit,
                ..KeyRecord::new(
                    id,
                    account.clone(),
                    key.prefix(),
                    self.pepper.digest(&key),
                    created_at,
                )
            };
            match self
                .store
                .insert_within_limit(record.clone(), self.max_keys_per_account)
                .await
            {
                Ok(()) => {
                    tracing::info!(account = %account, prefix = %record.prefix, "api key created");
                    return Ok(CreatedKey {
                        info: record.into(),
                        key,
                    });
                }
                Err(StoreError::PrefixTaken) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(ManagerError::PrefixExhausted)
    }

    /// All keys of `account`, oldest first, without secrets.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn list(&self, account: &AccountId) -> Result<Vec<KeyInfo>, ManagerError> {
        let records = self.store.list(account).await?;
        Ok(records.into_iter().map(KeyInfo::from).collect())
    }

    /// One key of `account`.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`] if no such key belongs to the account.
    pub async fn get(&self, account: &AccountId, id: KeyId) -> Result<KeyInfo, ManagerError> {
        let record = self.store.get(account, id).await?;
        record.map(KeyInfo::from).ok_or(ManagerError::NotFound)
    }

    /// Gives the key a new prefix and secret, keeping its id, status, `created_at`, name,
    /// scopes and expiry, and clearing `last_used_at`. The old key string is refused from the
    /// moment this returns, and so is the old key of an earlier rotation's grace period.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`] if no such key belongs to the account.
    pub async fn rotate(&self, account: &AccountId, id: KeyId) -> Result<CreatedKey, ManagerError> {
        self.rotate_with(account, id, RotateOptions::new()).await
    }

    /// Rotates the key like [`rotate`](Self::rotate), but with a grace period keeps the old
    /// key string valid (with the key's status, scopes and expiry) until `now + grace`. The
    /// key keeps one id and one slot under the limit; its record shows the old key as
    /// [`KeyInfo::previous_prefix`] while it lives. Revoking or deleting the key refuses both
    /// at once; rotating again ends the old key's grace at once.
    ///
    /// # Errors
    ///
    /// As [`rotate`](Self::rotate).
    pub async fn rotate_with(
        &self,
        account: &AccountId,
        id: KeyId,
        options: RotateOptions,
    ) -> Result<CreatedKey, ManagerError> {
        policy::check_grace(options.grace)?;
        for _ in 0..PREFIX_ATTEMPTS {
            let key = ApiKey::generate()?;
            let digest = self.pepper.digest(&key);
            let grace_until = (!options.grace.is_zero()).then(|| now() + options.grace);
            let change = PendingChange::arm(&self.invalidations);
            let outcome = self
                .store
                .replace_key(account, id, key.prefix(), digest, grace_until)
                .await;
            change.replied(&outcome);
            match outcome {
                Ok(Some(rotated)) => {
                    // The old key (now refused, or a grace key whose cached entry must learn
                    // its new deadline) and any earlier grace key.
                    for old in rotated.before.digests() {
                        self.invalidations.publish(Invalidation::Key(old));
                    }
                    // A negative entry for the new key is all but impossible, but cheap to rule out.
                    self.invalidations.publish(Invalidation::Key(digest));
                    tracing::info!(
                        account = %account,
                        old_prefix = %rotated.before.prefix,
                        prefix = %rotated.after.prefix,
                        grace_seconds = options.grace.as_secs(),
                        "api key rotated"
                    );
                    return Ok(CreatedKey {
                        info: rotated.after.into(),
                        key,
                    });
                }
                Ok(None) => return Err(ManagerError::NotFound),
                Err(StoreError::PrefixTaken) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(ManagerError::PrefixExhausted)
    }

    /// Makes the key inactive; it is refused from the moment this returns. Revoking an
    /// inactive key changes nothing.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`] if no such key belongs to the account.
    pub async fn revoke(&self, account: &AccountId, id: KeyId) -> Result<KeyInfo, ManagerError> {
        self.set_status(account, id, KeyStatus::Inactive).await
    }

    /// Makes the key active again; the same key string is accepted from the moment this
    /// returns.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`] if no such key belongs to the account.
    pub async fn reactivate(
        &self,
        account: &AccountId,
        id: KeyId,
    ) -> Result<KeyInfo, ManagerError> {
        self.set_status(account, id, KeyStatus::Active).await
    }

    /// Deletes the key for good: it is refused from the moment this returns, and no longer
    /// counts towards the account's limit.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`] if no such key belongs to the account.
    pub async fn delete(&self, account: &AccountId, id: KeyId) -> Result<(), ManagerError> {
        let change = PendingChange::arm(&self.invalidations);
        let outcome = self.store.delete(account, id).await;
        change.replied(&outcome);
        let record = outcome?.ok_or(ManagerError::NotFound)?;
        self.publish_record(&record);
        tracing::info!(account = %account, prefix = %record.prefix, "api key deleted");
        Ok(())
    }

    /// Changes the key's name, scopes or expiry; in force from the moment this returns (a
    /// narrower scope set or an earlier expiry refuses requests at once; a cleared or later
    /// expiry revives an expired key at once).
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`] if no such key belongs to the account.
    pub async fn update(
        &self,
        account: &AccountId,
        id: KeyId,
        update: PolicyUpdate,
    ) -> Result<KeyInfo, ManagerError> {
        let change = PendingChange::arm(&self.invalidations);
        let outcome = self.store.update_policy(account, id, &update).await;
        change.replied(&outcome);
        let record = outcome?.ok_or(ManagerError::NotFound)?;
        self.publish_record(&record);
        tracing::info!(
            account = %account,
            prefix = %record.prefix,
            name = update.name.is_some(),
            scopes = update.scopes.is_some(),
            expiry = update.expires_at.is_some(),
            "api key policy changed"
        );
        Ok(record.into())
    }

    /// Tells every subscribed cache that the record's keys (current and previous) changed.
    fn publish_record(&self, record: &KeyRecord) {
        for digest in record.digests() {
            self.invalidations.publish(Invalidation::Key(digest));
        }
    }

    async fn set_status(
        &self,
        account: &AccountId,
        id: KeyId,
        status: KeyStatus,
    ) -> Result<KeyInfo, ManagerError> {
        let change = PendingChange::arm(&self.invalidations);
        let outcome = self.store.set_status(account, id, status).await;
        change.replied(&outcome);
        let record = outcome?.ok_or(ManagerError::NotFound)?;
        self.publish_record(&record);
        tracing::info!(account = %account, prefix = %record.prefix, status = %status, "api key status set");
        Ok(record.into())
    }
}

impl fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("max_keys_per_account", &self.max_keys_per_account)
            .field("invalidations", &self.invalidations)
            .finish_non_exhaustive()
    }
}

// ===== PendingChange =====

/// A change that may reach the store while its outcome is unknown.
///
/// The caller's future can be dropped mid-change (a timeout, a client that disconnects) and a
/// store can commit and then fail to reply; either way the change may be in force while
/// nothing names the key it touched. Dropped before [`replied`](Self::replied), or replied to with
/// a failure that may have applied, this invalidates everything: a cache-wide miss is cheap
/// next to a revoked key that keeps working.
struct PendingChange<'a> {
    invalidations: Option<&'a InvalidationBus>,
}

impl<'a> PendingChange<'a> {
    fn arm(invalidations: &'a InvalidationBus) -> Self {
        Self {
            invalidations: Some(invalidations),
        }
    }

    /// The store answered: on success the caller publishes the keys it changed; a refusal
    /// that changed nothing publishes nothing; any other failure is left to `Drop`.
    fn replied<T>(mut self, outcome: &Result<T, StoreError>) {
        match outcome {
            Ok(_) | Err(StoreError::PrefixTaken | StoreError::LimitReached { .. }) => {
                self.invalidations = None;
            }
            Err(_) => {}
        }
    }
}

impl Drop for PendingChange<'_> {
    fn drop(&mut self) {
        if let Some(invalidations) = self.invalidations.take() {
            tracing::warn!(
                "api key change ended without a reply from the store; invalidating every cached key"
            );
            invalidations.publish(Invalidation::All);
        }
    }
}

/// The current time at the microsecond precision that every store keeps.
pub(crate) fn now() -> SystemTime {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH + Duration::from_micros(since_epoch.as_micros().try_into().unwrap_or(u64::MAX))
}
