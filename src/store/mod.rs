//! Where key records live: the [`KeyStore`] trait, the records it keeps, and the embedded
//! [`MemoryStore`].
//!
//! A store keeps digests, never plaintext keys. Every method is one atomic step, so the
//! lifecycle rules of [`KeyManager`](crate::manager::KeyManager) hold under concurrency
//! without any locking of its own. Implement the trait to keep keys in another database.

// Public through `crate::usage`, their one path.
pub(crate) mod counts;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::audit::{AuditEntry, AuditEvent, AuditNote, AuditQuery};
pub use crate::ids::{AccountId, InvalidAccountId, InvalidKeyId, KeyId};
use crate::key::{KeyDigest, KeyPrefix};
use crate::policy::{AllowedIps, KeyName, Metadata, PolicyUpdate, Quota, RateLimit, Scopes};

use counts::{Hour, UsageBatch, UsageRow};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{PgChangeFeed, PostgresStore};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
pub use sql::MigrateError;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteStore;

// ===== KeyStatus =====

/// Whether a key authenticates requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    /// The key authenticates requests.
    Active,
    /// The key was revoked; it can be reactivated with the same key string.
    Inactive,
}

impl KeyStatus {
    /// `"active"` or `"inactive"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
        }
    }
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ===== KeyRecord =====

/// Everything a store keeps about one key. No plaintext: only the prefix and the digest.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Permanent id, unchanged by rotation.
    pub id: KeyId,
    /// The owning account.
    pub account_id: AccountId,
    /// Current prefix (changes on rotation).
    pub prefix: KeyPrefix,
    /// Keyed digest of the current key.
    pub digest: KeyDigest,
    /// Active or inactive.
    pub status: KeyStatus,
    /// When the key was created (unchanged by rotation).
    pub created_at: SystemTime,
    /// When the key last authenticated a request, if ever since it was created or rotated.
    pub last_used_at: Option<SystemTime>,
    /// The key's label.
    pub name: Option<KeyName>,
    /// The scopes the key is restricted to; `None` is unrestricted.
    pub scopes: Option<Scopes>,
    /// When the key stops authenticating, if it does.
    pub expires_at: Option<SystemTime>,
    /// How often it may be used; `None` leaves it to the layer's default, if any.
    pub rate_limit: Option<RateLimit>,
    /// How many requests it may have accepted per calendar day or month; `None` is no cap.
    pub quota: Option<Quota>,
    /// The addresses it may be used from; `None` is anywhere.
    pub allowed_ips: Option<AllowedIps>,
    /// Facts handed to handlers with the key's identity.
    pub metadata: Option<Metadata>,
    /// The key string a rotation with a grace period replaced, while it may still be in its
    /// grace period (check [`PreviousKey::expires_at`]).
    pub previous: Option<PreviousKey>,
}

impl KeyRecord {
    /// A new active key with no name, no scopes, no expiry, no rate limit, no quota, no
    /// allowlist, no metadata and no previous key.
    pub fn new(
        id: KeyId,
        account_id: AccountId,
        prefix: KeyPrefix,
        digest: KeyDigest,
        created_at: SystemTime,
    ) -> Self {
        Self {
            id,
            account_id,
            prefix,
            digest,
            status: KeyStatus::Active,
            created_at,
            last_used_at: None,
            name: None,
            scopes: None,
            expires_at: None,
            rate_limit: None,
            quota: None,
            allowed_ips: None,
            metadata: None,
            previous: None,
        }
    }

    /// The previous key, if its grace period has not ended at `now`.
    pub fn grace_key(&self, now: SystemTime) -> Option<&PreviousKey> {
        self.previous
            .as_ref()
            .filter(|previous| previous.expires_at > now)
    }

    /// The audit entry of `note`'s change, made to this record (as it is after the change;
    /// for a deletion, as it was): what a store writes with the change.
    pub fn audit_entry(&self, note: &AuditNote) -> AuditEntry {
        note.done(&self.account_id, self.id, self.prefix)
    }

    /// The digests a change to this record must invalidate: the current key's and, if there
    /// is one, the previous key's.
    pub fn digests(&self) -> impl Iterator<Item = KeyDigest> + '_ {
        std::iter::once(self.digest).chain(self.previous.as_ref().map(|p| p.digest))
    }

    /// The prefixes this record reserves: the current key's and, if there is one, the
    /// previous key's. (The SQL stores check them; the memory store keeps a map.)
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn prefixes(&self) -> impl Iterator<Item = &KeyPrefix> + '_ {
        std::iter::once(&self.prefix).chain(self.previous.as_ref().map(|p| &p.prefix))
    }
}

/// The key string a rotation with a grace period replaced: it keeps authenticating, with the
/// record's status, scopes and expiry, until `expires_at`.
#[derive(Clone, PartialEq, Eq)]
pub struct PreviousKey {
    /// The replaced key's prefix. Reserved like a current prefix while it is kept.
    pub prefix: KeyPrefix,
    /// The replaced key's digest.
    pub digest: KeyDigest,
    /// When its grace period ends.
    pub expires_at: SystemTime,
}

impl fmt::Debug for PreviousKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreviousKey")
            .field("prefix", &self.prefix)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("account_id", &self.account_id)
            .field("prefix", &self.prefix)
            .field("status", &self.status)
            .field("created_at", &self.created_at)
            .field("last_used_at", &self.last_used_at)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .field("rate_limit", &self.rate_limit)
            .field("quota", &self.quota)
            .field("allowed_ips", &self.allowed_ips)
            .field("metadata", &self.metadata)
            .field("previous", &self.previous)
            .finish_non_exhaustive()
    }
}

/// One coalesced use of a key, in a [`UsageBatch`] for [`KeyStore::record_usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUse {
    /// The key that was used.
    pub id: KeyId,
    /// The prefix it was used with; a use of a prefix that was since rotated away is dropped.
    pub prefix: KeyPrefix,
    /// When it was last used.
    pub at: SystemTime,
}

// ===== errors =====

/// Why a store operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The account already holds its limit of keys.
    LimitReached {
        /// The limit that was reached.
        limit: usize,
    },
    /// Another key already has this prefix (the caller retries with a new key).
    PrefixTaken,
    /// The store could not be reached or failed; the operation may be retried.
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Wraps a backend failure.
    pub fn unavailable(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable(source.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LimitReached { limit } => write!(f, "account already has {limit} keys"),
            Self::PrefixTaken => f.write_str("key prefix already taken"),
            Self::Unavailable(source) => write!(f, "key store unavailable: {source}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unavailable(source) => Some(&**source),
            _ => None,
        }
    }
}

// ===== KeyStore =====

/// Persistence for key records. Each method is one atomic step.
///
/// Methods that address one key take the owning account too: a key id of another account is
/// "not found" (`Ok(None)`), exactly like an unknown id.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Inserts `record` unless its account already holds `limit` keys (active or inactive)
    /// or its prefix is taken (as another key's current or previous prefix). The count and the insert are one atomic step, so concurrent
    /// inserts can't exceed the limit.
    ///
    /// With the insert, writes `audit`'s entry ([`KeyRecord::audit_entry`]) to the trail.
    ///
    /// # Errors
    ///
    /// [`StoreError::LimitReached`], [`StoreError::PrefixTaken`], or a backend failure;
    /// nothing is written then.
    async fn insert_within_limit(
        &self,
        record: KeyRecord,
        limit: usize,
        audit: &AuditNote,
    ) -> Result<(), StoreError>;

    /// The record whose current prefix, or previous prefix (see [`KeyRecord::previous`]), is
    /// `prefix`. Prefixes are unique across both, so there is at most one.
    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError>;

    /// One key of an account.
    async fn get(&self, account: &AccountId, id: KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// All keys of an account, oldest first.
    async fn list(&self, account: &AccountId) -> Result<Vec<KeyRecord>, StoreError>;

    /// Sets a key's status and returns the updated record. With the change, writes
    /// `audit`'s entry for the record as it is now ([`KeyRecord::audit_entry`]); no key, no entry.
    async fn set_status(
        &self,
        account: &AccountId,
        id: KeyId,
        status: KeyStatus,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Gives a key a new prefix and digest and clears `last_used_at`, keeping id, status,
    /// `created_at`, name, scopes and expiry. With `grace_until`, the replaced prefix and
    /// digest become the record's [`previous`](KeyRecord::previous) key until that instant;
    /// without, any previous key is dropped. Returns the record as it was before and as it
    /// is now. With the change, writes `audit`'s entry for the record as it is now (its new
    /// prefix).
    ///
    /// # Errors
    ///
    /// [`StoreError::PrefixTaken`] if `prefix` is another key's current or previous prefix;
    /// nothing changes (and nothing is written) then.
    async fn replace_key(
        &self,
        account: &AccountId,
        id: KeyId,
        prefix: KeyPrefix,
        digest: KeyDigest,
        grace_until: Option<SystemTime>,
        audit: &AuditNote,
    ) -> Result<Option<Rotated>, StoreError>;

    /// Applies `update` to a key's policy (name, scopes, expiry, rate limit, quota, allowlist
    /// and metadata) and returns the updated record. With the change, writes `audit`'s entry
    /// for the updated record.
    async fn update_policy(
        &self,
        account: &AccountId,
        id: KeyId,
        update: &PolicyUpdate,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Deletes a key and returns the record it had. With the deletion, writes `audit`'s entry
    /// for that record.
    async fn delete(
        &self,
        account: &AccountId,
        id: KeyId,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Writes one entry to the trail on its own: an attempt that was refused, so changed
    /// nothing ([`AuditEntry::refused`]).
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;

    /// The account's entries that `query` admits ([`AuditQuery::admits`]), newest (highest
    /// [`AuditId`](crate::audit::AuditId)) first, at most `query.limit` of them. Every
    /// process using the store reads one trail.
    async fn audit_trail(
        &self,
        account: &AccountId,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEvent>, StoreError>;

    /// Deletes every entry recorded before `before` and returns how many went.
    async fn prune_audit(&self, before: SystemTime) -> Result<u64, StoreError>;

    /// Writes one flush of usage in one atomic step: each use in `batch.last_used` moves its
    /// key's `last_used_at` forward only, and is ignored if the key is gone or no longer has
    /// the prefix it was used with (it was rotated since); each of `batch.counts` is added
    /// to its key's hour (created at zero if missing), whether or not the key still exists.
    /// Several processes writing the same hours add up.
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError>;

    /// The hourly counts of the account's keys, or of one of them, for the hours in
    /// `[from, to)`, deleted keys' included; hours without requests may be missing.
    async fn usage(
        &self,
        account: &AccountId,
        key: Option<KeyId>,
        from: Hour,
        to: Hour,
    ) -> Result<Vec<UsageRow>, StoreError>;

    /// Deletes the counts of every hour before `before` and returns how many key-hours went.
    async fn prune_usage(&self, before: Hour) -> Result<u64, StoreError>;
}

/// A key's record before and after [`KeyStore::replace_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The record before the rotation (its digest is the one to invalidate).
    pub before: KeyRecord,
    /// The record after the rotation.
    pub after: KeyRecord,
}

#[async_trait]
impl<S: KeyStore + ?Sized> KeyStore for Arc<S> {
    async fn insert_within_limit(
        &self,
        record: KeyRecord,
        limit: usize,
        audit: &AuditNote,
    ) -> Result<(), StoreError> {
        (**self).insert_within_limit(record, limit, audit).await
    }
    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        (**self).find_by_prefix(prefix).await
    }
    async fn get(&self, account: &AccountId, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        (**self).get(account, id).await
    }
    async fn list(&self, account: &AccountId) -> Result<Vec<KeyRecord>, StoreError> {
        (**self).list(account).await
    }
    async fn set_status(
        &self,
        account: &AccountId,
        id: KeyId,
        status: KeyStatus,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        (**self).set_status(account, id, status, audit).await
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
        (**self)
            .replace_key(account, id, prefix, digest, grace_until, audit)
            .await
    }
    async fn update_policy(
        &self,
        account: &AccountId,
        id: KeyId,
        update: &PolicyUpdate,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        (**self).update_policy(account, id, update, audit).await
    }
    async fn delete(
        &self,
        account: &AccountId,
        id: KeyId,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        (**self).delete(account, id, audit).await
    }
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        (**self).append_audit(entry).await
    }
    async fn audit_trail(
        &self,
        account: &AccountId,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        (**self).audit_trail(account, query).await
    }
    async fn prune_audit(&self, before: SystemTime) -> Result<u64, StoreError> {
        (**self).prune_audit(before).await
    }
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        (**self).record_usage(batch).await
    }
    async fn usage(
        &self,
        account: &AccountId,
        key: Option<KeyId>,
        from: Hour,
        to: Hour,
    ) -> Result<Vec<UsageRow>, StoreError> {
        (**self).usage(account, key, from, to).await
    }
    async fn prune_usage(&self, before: Hour) -> Result<u64, StoreError> {
        (**self).prune_usage(before).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_error_messages_are_short_and_lowercase() {
        let text = StoreError::LimitReached { limit: 3 }.to_string();
        assert_eq!(text, "account already has 3 keys");
        assert_eq!(
            StoreError::PrefixTaken.to_string(),
            "key prefix already taken"
        );
    }
}
