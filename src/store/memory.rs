//! The embedded in-memory store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use std::time::SystemTime;

use super::counts::{Hour, UsageBatch, UsageRow};
use super::{AccountId, KeyId, KeyRecord, KeyStatus, KeyStore, PreviousKey, Rotated, StoreError};
use crate::audit::{AuditEntry, AuditEvent, AuditId, AuditNote, AuditQuery};
use crate::key::{KeyDigest, KeyPrefix};
use crate::policy::PolicyUpdate;
use crate::sync::lock;

/// Keeps key records in process memory: the default store, and the one tests use.
///
/// One mutex guards all records, and no method holds it across an `.await`, so every method
/// is atomic and concurrent callers see one consistent order of changes. Records are lost
/// when the process exits.
///
/// ```
/// use std::sync::Arc;
/// use tower_api_key::{KeyManager, MemoryStore, Pepper};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
/// let account = "acme".parse()?;
/// manager.create(&account).await?;
/// assert_eq!(manager.list(&account).await?.len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    by_id: HashMap<KeyId, KeyRecord>,
    /// Current and previous prefixes alike.
    by_prefix: HashMap<KeyPrefix, KeyId>,
    /// Each account's key ids, oldest first.
    by_account: HashMap<AccountId, Vec<KeyId>>,
    /// Hourly counts (accepted, rate limited, refused) per account, hour and key; kept for
    /// deleted keys.
    usage: HashMap<AccountId, BTreeMap<(Hour, KeyId), [i64; 3]>>,
    /// Each account's audit trail, oldest first.
    audit: HashMap<AccountId, Vec<AuditEvent>>,
    /// The number of the last audit entry written.
    last_audit: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        // No method can leave the records half-changed, so a poisoned lock is still sound.
        lock(&self.records)
    }
}

impl Records {
    fn owned_mut(&mut self, account: &AccountId, id: KeyId) -> Option<&mut KeyRecord> {
        self.by_id
            .get_mut(&id)
            .filter(|record| record.account_id == *account)
    }

    /// `changed` as it is, after writing `audit`'s entry for it (if there is one).
    fn audited(&mut self, changed: Option<KeyRecord>, audit: &AuditNote) -> Option<KeyRecord> {
        if let Some(record) = &changed {
            self.audit(record.audit_entry(audit));
        }
        changed
    }

    /// Appends `entry` to its account's trail, numbered after every entry so far.
    fn audit(&mut self, entry: AuditEntry) {
        self.last_audit += 1;
        let event = AuditEvent::new(AuditId::new(self.last_audit), entry);
        self.audit
            .entry(event.entry.account.clone())
            .or_default()
            .push(event);
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn insert_within_limit(
        &self,
        record: KeyRecord,
        limit: usize,
        audit: &AuditNote,
    ) -> Result<(), StoreError> {
        let mut records = self.records();
        let held = records
            .by_account
            .get(&record.account_id)
            .map_or(0, Vec::len);
        if held >= limit {
            return Err(StoreError::LimitReached { limit });
        }
        let prefixes =
            std::iter::once(record.prefix).chain(record.previous.as_ref().map(|p| p.prefix));
        if prefixes
            .clone()
            .any(|prefix| records.by_prefix.contains_key(&prefix))
        {
            return Err(StoreError::PrefixTaken);
        }
        for prefix in prefixes {
            records.by_prefix.insert(prefix, record.id);
        }
        records
            .by_account
            .entry(record.account_id.clone())
            .or_default()
            .push(record.id);
        records.audit(record.audit_entry(audit));
        records.by_id.insert(record.id, record);
        Ok(())
    }

    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        let records = self.records();
        Ok(records
            .by_prefix
            .get(prefix)
            .and_then(|id| records.by_id.get(id))
            .cloned())
    }

    async fn get(&self, account: &AccountId, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.records().owned_mut(account, id).map(|r| r.clone()))
    }

    async fn list(&self, account: &AccountId) -> Result<Vec<KeyRecord>, StoreError> {
        let records = self.records();
        let ids = records
            .by_account
            .get(account)
            .map_or(&[][..], Vec::as_slice);
        Ok(ids
            .iter()
            .filter_map(|id| records.by_id.get(id).cloned())
            .collect())
    }

    async fn set_status(
        &self,
        account: &AccountId,
        id: KeyId,
        status: KeyStatus,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut records = self.records();
        let changed = records.owned_mut(account, id).map(|record| {
            record.status = status;
            record.clone()
        });
        Ok(records.audited(changed, audit))
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
        let mut records = self.records();
        let Some(before) = records.owned_mut(account, id).map(|r| r.clone()) else {
            return Ok(None);
        };
        if records.by_prefix.contains_key(&prefix) {
            return Err(StoreError::PrefixTaken);
        }
        if let Some(previous) = &before.previous {
            records.by_prefix.remove(&previous.prefix);
        }
        let previous = match grace_until {
            Some(expires_at) => Some(PreviousKey {
                prefix: before.prefix,
                digest: before.digest,
                expires_at,
            }),
            None => {
                records.by_prefix.remove(&before.prefix);
                None
            }
        };
        records.by_prefix.insert(prefix, id);
        let after = KeyRecord {
            prefix,
            digest,
            last_used_at: None,
            previous,
            ..before.clone()
        };
        records.by_id.insert(id, after.clone());
        records.audit(after.audit_entry(audit));
        Ok(Some(Rotated { before, after }))
    }

    async fn update_policy(
        &self,
        account: &AccountId,
        id: KeyId,
        update: &PolicyUpdate,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut records = self.records();
        let changed = records.owned_mut(account, id).map(|record| {
            if let Some(name) = &update.name {
                record.name.clone_from(name);
            }
            if let Some(scopes) = &update.scopes {
                record.scopes.clone_from(scopes);
            }
            if let Some(expires_at) = update.expires_at {
                record.expires_at = expires_at;
            }
            if let Some(rate_limit) = update.rate_limit {
                record.rate_limit = rate_limit;
            }
            if let Some(quota) = update.quota {
                record.quota = quota;
            }
            if let Some(allowed_ips) = &update.allowed_ips {
                record.allowed_ips.clone_from(allowed_ips);
            }
            if let Some(metadata) = &update.metadata {
                record.metadata.clone_from(metadata);
            }
            record.clone()
        });
        Ok(records.audited(changed, audit))
    }

    async fn delete(
        &self,
        account: &AccountId,
        id: KeyId,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut records = self.records();
        if records.owned_mut(account, id).is_none() {
            return Ok(None);
        }
        let removed = records.by_id.remove(&id);
        if let Some(record) = &removed {
            records.by_prefix.remove(&record.prefix);
            if let Some(previous) = &record.previous {
                records.by_prefix.remove(&previous.prefix);
            }
            if let Some(ids) = records.by_account.get_mut(account) {
                ids.retain(|kept| *kept != id);
                if ids.is_empty() {
                    records.by_account.remove(account);
                }
            }
        }
        Ok(records.audited(removed, audit))
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.records().audit(entry.clone());
        Ok(())
    }

    async fn audit_trail(
        &self,
        account: &AccountId,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let records = self.records();
        let trail = records.audit.get(account).map_or(&[][..], Vec::as_slice);
        Ok(trail
            .iter()
            .rev()
            .filter(|event| query.admits(event))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn prune_audit(&self, before: SystemTime) -> Result<u64, StoreError> {
        let mut records = self.records();
        let mut pruned = 0;
        records.audit.retain(|_, trail| {
            let held = trail.len();
            trail.retain(|event| event.entry.at >= before);
            pruned += (held - trail.len()) as u64;
            !trail.is_empty()
        });
        Ok(pruned)
    }

    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        let mut records = self.records();
        for delta in &batch.counts {
            let sums = records
                .usage
                .entry(delta.account_id.clone())
                .or_default()
                .entry((delta.hour, delta.key_id))
                .or_default();
            for (sum, add) in
                sums.iter_mut()
                    .zip([delta.accepted, delta.rate_limited, delta.refused])
            {
                *sum = sum.saturating_add(add);
            }
        }
        for key_use in &batch.last_used {
            if let Some(record) = records.by_id.get_mut(&key_use.id) {
                if record.prefix == key_use.prefix
                    && record.last_used_at.is_none_or(|last| last < key_use.at)
                {
                    record.last_used_at = Some(key_use.at);
                }
            }
        }
        Ok(())
    }

    async fn usage(
        &self,
        account: &AccountId,
        key: Option<KeyId>,
        from: Hour,
        to: Hour,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let records = self.records();
        let Some(hours) = records.usage.get(account) else {
            return Ok(Vec::new());
        };
        if from >= to {
            return Ok(Vec::new());
        }
        let first = (from, KeyId::from_uuid(uuid::Uuid::nil()));
        Ok(hours
            .range(first..)
            .take_while(|((hour, _), _)| *hour < to)
            .filter(|((_, id), _)| key.is_none_or(|key| key == *id))
            .map(|(&(hour, id), sums)| UsageRow::from_sums(id, hour, sums[0], sums[1], sums[2]))
            .collect())
    }

    async fn prune_usage(&self, before: Hour) -> Result<u64, StoreError> {
        let mut records = self.records();
        let mut pruned = 0;
        records.usage.retain(|_, hours| {
            let kept = hours.split_off(&(before, KeyId::from_uuid(uuid::Uuid::nil())));
            pruned += hours.len() as u64;
            *hours = kept;
            !hours.is_empty()
        });
        Ok(pruned)
    }
}
