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

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt as _;
use tracing::Instrument as _;

use crate::audit::{
    self, Actor, AuditAction, AuditChanges, AuditEntry, AuditEvent, AuditNote, AuditQuery,
};
use crate::clock::now;
use crate::invalidation::{Invalidation, InvalidationBus};
use crate::key::{ApiKey, KeyDigest, KeyPrefix, Pepper, RandomnessError};
use crate::policy::{
    self, AllowedIps, KeyName, KeyOptions, Metadata, PolicyError, PolicyUpdate, Quota, RateLimit,
    RotateOptions, Scopes,
};
use crate::store::{AccountId, KeyId, KeyRecord, KeyStatus, KeyStore, Rotated, StoreError};
use crate::usage::{Hour, UsageCounts, UsageRange, UsageSeries};

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
    /// How many requests it may have accepted per calendar day or month; `None` is no cap.
    pub quota: Option<Quota>,
    /// The addresses it may be used from; `None` is anywhere.
    pub allowed_ips: Option<AllowedIps>,
    /// Facts handed to handlers with the key's identity.
    pub metadata: Option<Metadata>,
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
            quota: record.quota,
            allowed_ips: record.allowed_ips,
            metadata: record.metadata,
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
/// **What if the call is abandoned or the store fails?** Rotate, revoke, reactivate, delete
/// and update run their store call in a task of their own, which the method awaits: if the
/// method's future is dropped (a timeout, a client that went away), the store call still runs
/// to its end, and its change is published when the store answers, not when the caller left
/// (a SQL write can still commit after that, and a lookup in between would cache the old row).
/// So an abandoned change is in force in every cache once the store has answered. If the store
/// reports a failure that may have been applied (a reply lost after commit), or panics, or the
/// task is cancelled (the runtime shutting down), every cache subscribed to the bus forgets
/// everything ([`Invalidation::All`]) after the failure, since the key the change touched is
/// not known for sure; a panic is answered as [`ManagerError::Store`]. Outside a Tokio runtime
/// the store call runs in the method's own future, and dropping that future publishes
/// [`Invalidation::All`] at once.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower_api_key::{KeyManager, KeyStatus, MemoryStore, Pepper, RotateOptions};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
/// let acme = "acme".parse()?;
/// let key = manager.create(&acme).await?;
/// // A new secret, the old one still good for an hour while clients switch over.
/// let grace = RotateOptions::new().grace(Duration::from_secs(3600))?;
/// let rotated = manager.rotate_with(&acme, key.info.id, grace).await?;
/// assert_eq!(rotated.info.id, key.info.id);
/// assert_eq!(rotated.info.previous_prefix, Some(key.info.prefix));
/// let revoked = manager.revoke(&acme, key.info.id).await?; // both strings refused now
/// assert_eq!(revoked.status, KeyStatus::Inactive);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KeyManager {
    store: Arc<dyn KeyStore>,
    pepper: Pepper,
    max_keys_per_account: usize,
    invalidations: InvalidationBus,
    actor: Actor,
    audit_retention: Duration,
    /// When the audit trail was last pruned, in seconds since the epoch (0: never), shared
    /// by clones.
    audit_pruned: Arc<AtomicU64>,
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
            actor: Actor::system(),
            audit_retention: audit::DEFAULT_RETENTION,
            audit_pruned: Arc::default(),
        }
    }

    /// A manager like this one (same store, bus and settings) whose changes are recorded on
    /// the [audit trail](crate::audit) as made by `actor`. Cheap: for one request or task.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_api_key::{KeyManager, MemoryStore, Pepper};
    /// use tower_api_key::audit::{Actor, AuditQuery};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    /// let acme = "acme".parse()?;
    /// manager.acting_as(Actor::new("deploy-bot")?).create(&acme).await?;
    /// let trail = manager.audit_trail(&acme, AuditQuery::latest(10)).await?;
    /// assert_eq!(trail[0].entry.actor.as_str(), "deploy-bot");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn acting_as(&self, actor: Actor) -> Self {
        Self {
            actor,
            ..self.clone()
        }
    }

    /// Who this manager's changes are recorded as made by ([`Actor::system`] unless
    /// [`acting_as`](Self::acting_as) said otherwise).
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// Keeps audit entries for `retention` (default [`audit::DEFAULT_RETENTION`], 400 days):
    /// older ones are never read, and are deleted from the store at most once an hour,
    /// after a change. Processes sharing a store share one trail: the shortest retention
    /// among them is the one that holds.
    #[must_use]
    pub fn with_audit_retention(mut self, retention: Duration) -> Self {
        self.audit_retention = retention;
        self
    }

    /// How long audit entries are kept.
    pub fn audit_retention(&self) -> Duration {
        self.audit_retention
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
    /// [`ManagerError::Policy`] if the expiry is not in the future
    /// ([`PolicyError::ExpiryInPast`]) or not between 1970-01-01T00:00:00Z and
    /// 9999-12-31T23:59:59Z ([`PolicyError::TimeOutOfRange`]); nothing is created then.
    /// Otherwise as [`create`](Self::create).
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
        let expires_at = expires_at.map(policy::check_time).transpose()?;
        if expires_at.is_some_and(|at| at <= created_at) {
            return Err(PolicyError::ExpiryInPast.into());
        }
        // On the trail, the expiry as the instant it became.
        let set = KeyOptions {
            expires_at,
            expires_in: None,
            ..options.clone()
        };
        let note = self.note(
            created_at,
            AuditAction::Create,
            AuditChanges::of_options(&set),
        );
        for _ in 0..PREFIX_ATTEMPTS {
            let key = ApiKey::generate()?;
            let record = KeyRecord {
                name: options.name.clone(),
                scopes: options.scopes.clone(),
                expires_at,
                rate_limit: options.rate_limit,
                quota: options.quota,
                allowed_ips: options.allowed_ips.clone(),
                metadata: options.metadata.clone(),
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
                .insert_within_limit(record.clone(), self.max_keys_per_account, &note)
                .await
            {
                Ok(()) => {
                    tracing::info!(account = %account, prefix = %record.prefix, "api key created");
                    self.prune_audit_now_and_then();
                    return Ok(CreatedKey {
                        info: record.into(),
                        key,
                    });
                }
                Err(StoreError::PrefixTaken) => continue,
                Err(err @ StoreError::LimitReached { .. }) => {
                    self.append_refusal(note.refused(account, None)).await;
                    return Err(err.into());
                }
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

    /// The requests counted for one key of `account` (`Some(id)`), or for all of the
    /// account's keys, deleted ones included (`None`), in every bucket of `range`, zeros
    /// included. Counts come from a [`UsageRecorder`](crate::usage::UsageRecorder) and
    /// appear once it has flushed them.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::SystemTime;
    /// use tower_api_key::usage::{Granularity, UsageRange};
    /// use tower_api_key::{KeyManager, MemoryStore, Pepper};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    /// let account = "acme".parse()?;
    /// let key = manager.create(&account).await?;
    /// let range = UsageRange::last(Granularity::Hour, SystemTime::now());
    /// let series = manager.usage(&account, Some(key.info.id), &range).await?;
    /// assert_eq!(series.buckets.len(), 48);
    /// assert_eq!(series.total().total(), 0); // nothing flushed yet
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`] if `Some(id)` names no key of the account (a deleted key's
    /// counts are only in the account's); a store failure.
    pub async fn usage(
        &self,
        account: &AccountId,
        key: Option<KeyId>,
        range: &UsageRange,
    ) -> Result<UsageSeries, ManagerError> {
        if let Some(id) = key {
            self.store
                .get(account, id)
                .await?
                .ok_or(ManagerError::NotFound)?;
        }
        let rows = self
            .store
            .usage(account, key, range.first_hour(), range.end_hour())
            .await?;
        Ok(UsageSeries::from_rows(range, rows))
    }

    /// Each key's requests in `range`, summed, for the keys of `account` that have any
    /// (deleted keys included): for listings, such as the admin API's `requests_24h`.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn usage_by_key(
        &self,
        account: &AccountId,
        range: &UsageRange,
    ) -> Result<HashMap<KeyId, UsageCounts>, ManagerError> {
        let rows = self
            .store
            .usage(account, None, range.first_hour(), range.end_hour())
            .await?;
        let mut totals: HashMap<KeyId, UsageCounts> = HashMap::new();
        for row in rows {
            totals.entry(row.key_id).or_default().add(row.counts);
        }
        Ok(totals)
    }

    /// How many requests each key of `keys` that has a [`Quota`] has had accepted in its
    /// quota's current period (the UTC calendar day or month that holds now), summed from the
    /// store's hourly counts; keys without a quota are left out of the answer. For listings,
    /// such as the admin API's `quota_used`.
    ///
    /// The counts are as of the last usage flush (see
    /// [`UsageRecorder`](crate::usage::UsageRecorder)): requests accepted since are not in
    /// them yet. One store read per account among `keys` (none if no key has a quota).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_api_key::{KeyManager, MemoryStore, Pepper};
    /// use tower_api_key::policy::{KeyOptions, Quota, QuotaPeriod};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    /// let account = "acme".parse()?;
    /// let options = KeyOptions::new().quota(Quota::new(1000, QuotaPeriod::Day)?);
    /// let capped = manager.create_with(&account, options).await?.info;
    /// let free = manager.create(&account).await?.info;
    /// let used = manager.quota_used(&[capped.clone(), free.clone()]).await?;
    /// assert_eq!(used.get(&capped.id), Some(&0)); // nothing flushed yet
    /// assert_eq!(used.get(&free.id), None); // no quota
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn quota_used(&self, keys: &[KeyInfo]) -> Result<HashMap<KeyId, u64>, ManagerError> {
        let now = SystemTime::now();
        // Each key's period as hours, grouped by account.
        let mut accounts: HashMap<&AccountId, HashMap<KeyId, Range<Hour>>> = HashMap::new();
        for info in keys {
            if let Some(quota) = info.quota {
                let hours = Hour::covering(quota.period().containing(now));
                accounts
                    .entry(&info.account_id)
                    .or_default()
                    .insert(info.id, hours);
            }
        }
        let mut used = HashMap::new();
        for (account, periods) in accounts {
            // A group holds at least the key that made it.
            let hours = periods.values();
            let from = hours.clone().map(|hours| hours.start).min();
            let to = hours.map(|hours| hours.end).max();
            let (Some(from), Some(to)) = (from, to) else {
                continue;
            };
            // One key: only its rows. Several: the account's, in one read.
            let only = if periods.len() == 1 {
                periods.keys().next().copied()
            } else {
                None
            };
            let rows = self.store.usage(account, only, from, to).await?;
            used.extend(periods.keys().map(|&id| (id, 0_u64)));
            for row in rows {
                if periods
                    .get(&row.key_id)
                    .is_some_and(|hours| hours.contains(&row.hour))
                {
                    let sum = used.entry(row.key_id).or_default();
                    *sum = sum.saturating_add(row.counts.accepted);
                }
            }
        }
        Ok(used)
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
        let note = self.note(
            now(),
            AuditAction::Rotate,
            AuditChanges::of_rotation(&options),
        );
        for _ in 0..PREFIX_ATTEMPTS {
            let key = ApiKey::generate()?;
            let digest = self.pepper.digest(&key);
            let grace_until = (!options.grace.is_zero()).then(|| now() + options.grace);
            let (owner, prefix, grace) = (account.clone(), key.prefix(), options.grace);
            let note = note.clone();
            let outcome = self
                .change(
                    move |store| async move {
                        store
                            .replace_key(&owner, id, prefix, digest, grace_until, &note)
                            .await
                    },
                    move |rotated: &Option<Rotated>| {
                        let Some(rotated) = rotated else {
                            return Vec::new();
                        };
                        tracing::info!(
                            account = %rotated.after.account_id,
                            old_prefix = %rotated.before.prefix,
                            prefix = %rotated.after.prefix,
                            grace_seconds = grace.as_secs(),
                            "api key rotated"
                        );
                        // The old key (now refused, or a grace key whose cached entry must
                        // learn its new deadline) and any earlier grace key; and the new key:
                        // a negative entry for it is all but impossible, but cheap to rule out.
                        rotated.before.digests().chain([digest]).collect()
                    },
                )
                .await;
            match outcome {
                Ok(Some(rotated)) => {
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
        let owner = account.clone();
        let note = self.note(now(), AuditAction::Delete, AuditChanges::none());
        self.change(
            move |store| async move { store.delete(&owner, id, &note).await },
            |record: &Option<KeyRecord>| {
                changed(record, |record| {
                    tracing::info!(account = %record.account_id, prefix = %record.prefix, "api key deleted");
                })
            },
        )
        .await?
        .ok_or(ManagerError::NotFound)?;
        Ok(())
    }

    /// Changes the key's name, scopes or expiry; in force from the moment this returns (a
    /// narrower scope set or an earlier expiry refuses requests at once; a cleared or later
    /// expiry revives an expired key at once).
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`] if no such key belongs to the account;
    /// [`ManagerError::Policy`] ([`PolicyError::TimeOutOfRange`]) for an expiry not between
    /// 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z, and nothing changes then.
    pub async fn update(
        &self,
        account: &AccountId,
        id: KeyId,
        update: PolicyUpdate,
    ) -> Result<KeyInfo, ManagerError> {
        if let Some(Some(at)) = update.expires_at {
            policy::check_time(at)?;
        }
        let owner = account.clone();
        let note = self.note(now(), AuditAction::Update, AuditChanges::of_update(&update));
        // Which fields changed, never their values (metadata is not logged).
        let (name, scopes, expiry) = (
            update.name.is_some(),
            update.scopes.is_some(),
            update.expires_at.is_some(),
        );
        let (rate_limit, quota, allowed_ips, metadata) = (
            update.rate_limit.is_some(),
            update.quota.is_some(),
            update.allowed_ips.is_some(),
            update.metadata.is_some(),
        );
        let record = self
            .change(
                move |store| async move { store.update_policy(&owner, id, &update, &note).await },
                move |record: &Option<KeyRecord>| {
                    changed(record, |record| {
                        tracing::info!(
                            account = %record.account_id,
                            prefix = %record.prefix,
                            name,
                            scopes,
                            expiry,
                            rate_limit,
                            quota,
                            allowed_ips,
                            metadata,
                            "api key policy changed"
                        );
                    })
                },
            )
            .await?
            .ok_or(ManagerError::NotFound)?;
        Ok(record.into())
    }

    async fn set_status(
        &self,
        account: &AccountId,
        id: KeyId,
        status: KeyStatus,
    ) -> Result<KeyInfo, ManagerError> {
        let owner = account.clone();
        let action = match status {
            KeyStatus::Active => AuditAction::Reactivate,
            KeyStatus::Inactive => AuditAction::Revoke,
        };
        let note = self.note(now(), action, AuditChanges::none());
        let record = self
            .change(
                move |store| async move { store.set_status(&owner, id, status, &note).await },
                move |record: &Option<KeyRecord>| {
                    changed(record, |record| {
                        tracing::info!(account = %record.account_id, prefix = %record.prefix, status = %status, "api key status set");
                    })
                },
            )
            .await?
            .ok_or(ManagerError::NotFound)?;
        Ok(record.into())
    }

    /// Runs one change of the store to its end and publishes what it changed.
    ///
    /// `call` runs in a task of its own, which the caller awaits: a caller that goes away (a
    /// timeout, a client that disconnects) leaves it running, and its change is published
    /// when the store answers. Publishing when the caller leaves would be too early: the
    /// store may still commit afterwards, and a lookup in between would read the old row and
    /// cache it with nothing left to invalidate it. On success `applied` logs the change and
    /// names the digests to invalidate; a failure that may have applied invalidates
    /// everything; a panic in the store is answered as [`StoreError::Unavailable`].
    ///
    /// Outside a Tokio runtime `call` runs in the caller's future, whose drop invalidates
    /// everything ([`PendingChange`]).
    async fn change<T, F, Fut, A>(&self, call: F, applied: A) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<dyn KeyStore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        A: FnOnce(&T) -> Vec<KeyDigest> + Send + 'static,
        T: Send + 'static,
    {
        let store = Arc::clone(&self.store);
        let invalidations = self.invalidations.clone();
        let change = async move {
            // Armed when the task first runs, before the store call starts: a task cancelled
            // before that changed nothing.
            let pending = PendingChange::arm(invalidations);
            let outcome = AssertUnwindSafe(async move { call(store).await })
                .catch_unwind()
                .await
                .unwrap_or_else(|_panic| {
                    // The payload may quote anything; it stays out of the error.
                    tracing::error!("api key store panicked during a change");
                    Err(StoreError::unavailable(
                        "the store panicked during the change",
                    ))
                });
            pending.replied(&outcome, applied);
            outcome
        };
        let outcome = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime
                .spawn(change.in_current_span())
                .await
                .unwrap_or_else(|ended| {
                    Err(StoreError::unavailable(if ended.is_panic() {
                        "the change panicked"
                    } else {
                        "the change was cancelled by the runtime shutting down"
                    }))
                }),
            Err(_) => change.await,
        };
        if outcome.is_ok() {
            self.prune_audit_now_and_then();
        }
        outcome
    }

    /// The note of a change of `action` made now by this manager's actor.
    fn note(&self, at: SystemTime, action: AuditAction, changes: AuditChanges) -> AuditNote {
        AuditNote::new(at, self.actor.clone(), action, changes)
    }

    // ----- the audit trail -----

    /// The entries of `account`'s [audit trail](crate::audit) that `query` asks for, newest
    /// first: at most [`audit::MAX_PAGE`] of them, none older than the
    /// [retention](Self::with_audit_retention). Every process using the store reads one
    /// trail.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn audit_trail(
        &self,
        account: &AccountId,
        query: AuditQuery,
    ) -> Result<Vec<AuditEvent>, ManagerError> {
        let cutoff = self.audit_cutoff(SystemTime::now());
        let query = AuditQuery {
            limit: query.limit.min(audit::MAX_PAGE),
            ..query.since(query.since.max(cutoff))
        };
        Ok(self.store.audit_trail(account, &query).await?)
    }

    /// Records that this manager's actor attempted `action` on `account` (on `key`, if the
    /// attempt named an existing key) and was refused, with the `changes` asked for. For
    /// hosts that refuse changes themselves (the admin router records its authorizer's
    /// refusals this way); the manager records its own (a create at the account's limit).
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn record_refused(
        &self,
        account: &AccountId,
        key: Option<&KeyInfo>,
        action: AuditAction,
        changes: AuditChanges,
    ) -> Result<(), ManagerError> {
        let entry = self
            .note(now(), action, changes)
            .refused(account, key.map(|info| (info.id, info.prefix)));
        Ok(self.store.append_audit(&entry).await?)
    }

    /// Deletes the audit entries older than the retention, and returns how many went. The
    /// manager calls it itself at most once an hour, after a change; call it to prune on a
    /// schedule of your own.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn prune_audit(&self) -> Result<u64, ManagerError> {
        let cutoff = self.audit_cutoff(SystemTime::now());
        Ok(self.store.prune_audit(cutoff).await?)
    }

    /// The oldest instant the retention keeps.
    fn audit_cutoff(&self, now: SystemTime) -> SystemTime {
        now.checked_sub(self.audit_retention).unwrap_or(UNIX_EPOCH)
    }

    /// Writes a refusal the manager made itself, to the end even if the caller goes away (in
    /// a task of its own, on a Tokio runtime); a trail that can't be written doesn't change
    /// the answer (the refusal stands), so the failure is only logged.
    async fn append_refusal(&self, entry: AuditEntry) {
        let store = Arc::clone(&self.store);
        let append = async move {
            if let Err(err) = store.append_audit(&entry).await {
                tracing::warn!(error = %err, account = %entry.account, "could not record a refused attempt");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // A panic of the store is the store's; the refusal stands either way.
                let _ = runtime.spawn(append.in_current_span()).await;
            }
            Err(_) => append.await,
        }
    }

    /// Prunes the trail in a task of its own if the last prune by this manager (or a clone)
    /// is an hour old, on the current Tokio runtime (none: no prune).
    fn prune_audit_now_and_then(&self) {
        const HOUR: u64 = 3600;
        let now = SystemTime::now();
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let last = self.audit_pruned.load(Ordering::Relaxed);
        if secs < last.saturating_add(HOUR) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self
            .audit_pruned
            .compare_exchange(last, secs, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another change is pruning
        }
        let store = Arc::clone(&self.store);
        let cutoff = self.audit_cutoff(now);
        runtime.spawn(async move {
            match store.prune_audit(cutoff).await {
                Ok(0) => {}
                Ok(pruned) => tracing::debug!(pruned, "audit entries past their retention deleted"),
                Err(err) => tracing::warn!(error = %err, "could not prune the audit trail"),
            }
        });
    }
}

/// The digests of `record`'s keys (current and previous), after `log` has logged the change;
/// none if there was no such key.
fn changed(record: &Option<KeyRecord>, log: impl FnOnce(&KeyRecord)) -> Vec<KeyDigest> {
    record.as_ref().map_or_else(Vec::new, |record| {
        log(record);
        record.digests().collect()
    })
}

impl fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("max_keys_per_account", &self.max_keys_per_account)
            .field("invalidations", &self.invalidations)
            .field("actor", &self.actor)
            .field("audit_retention", &self.audit_retention)
            .finish_non_exhaustive()
    }
}

// ===== PendingChange =====

/// A change that may reach the store while its outcome is unknown. It lives in the change's
/// own task (see [`KeyManager::change`]), so the caller going away doesn't end it.
///
/// A store can commit and then fail to reply; the task can panic or be cancelled (the runtime
/// shutting down); without a runtime, the caller's future, which then runs the change, can be
/// dropped. Either way the change may be in force while nothing names the key it touched.
/// Dropped before [`replied`](Self::replied), or replied to with a failure that may have
/// applied, this invalidates everything: a cache-wide miss is cheap next to a revoked key that
/// keeps working.
struct PendingChange {
    invalidations: Option<InvalidationBus>,
}

impl PendingChange {
    /// From now on, ending without [`replied`](Self::replied) invalidates everything.
    fn arm(invalidations: InvalidationBus) -> Self {
        Self {
            invalidations: Some(invalidations),
        }
    }

    /// The store answered: on success publishes the digests `applied` names; a refusal that
    /// changed nothing publishes nothing; any other failure may have applied, and invalidates
    /// everything.
    fn replied<T>(
        mut self,
        outcome: &Result<T, StoreError>,
        applied: impl FnOnce(&T) -> Vec<KeyDigest>,
    ) {
        let invalidations: Vec<Invalidation> = match outcome {
            Ok(value) => applied(value).into_iter().map(Invalidation::Key).collect(),
            Err(StoreError::PrefixTaken | StoreError::LimitReached { .. }) => Vec::new(),
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    "api key change failed and may have applied; invalidating every cached key"
                );
                vec![Invalidation::All]
            }
        };
        if let Some(bus) = self.invalidations.take() {
            for invalidation in invalidations {
                bus.publish(invalidation);
            }
        }
    }
}

impl Drop for PendingChange {
    fn drop(&mut self) {
        if let Some(invalidations) = self.invalidations.take() {
            tracing::warn!(
                "api key change ended without a reply from the store; invalidating every cached key"
            );
            invalidations.publish(Invalidation::All);
        }
    }
}
