//! Stores that misbehave on purpose: a [`StoreHooks`] type says what it changes about a
//! [`MemoryStore`], and [`hooked_key_store!`] makes it a `KeyStore`.

use tower_api_key::usage::{Hour, UsageBatch, UsageRow};
use tower_api_key::{
    AccountId, KeyId, KeyPrefix, KeyRecord, KeyStore as _, MemoryStore, StoreError,
};

/// What a test store changes about a [`MemoryStore`]; everything not overridden passes
/// straight through. Implement it, then `hooked_key_store!(YourStore)` for the `KeyStore`.
pub(crate) trait StoreHooks: Send + Sync + 'static {
    /// The records behind the store.
    fn records(&self) -> &MemoryStore;

    /// Runs before every change (insert, set status, replace key, delete, last used).
    fn before_write(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Runs after a change (insert, set status, replace key, delete) was applied, before the
    /// store answers: a store that commits and then stalls or fails to reply.
    async fn after_write(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Runs before every read (get, list, and the default `find_by_prefix`).
    fn before_read(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The lookup the layer makes on a cache miss.
    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        self.before_read()?;
        self.records().find_by_prefix(prefix).await
    }

    /// A flush of usage: last-used times and hourly counts.
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        self.before_write()?;
        self.records().record_usage(batch).await
    }

    /// A read of hourly counts.
    async fn usage(
        &self,
        account: &AccountId,
        key: Option<KeyId>,
        from: Hour,
        to: Hour,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.before_read()?;
        self.records().usage(account, key, from, to).await
    }
}

/// Implements `KeyStore` for a [`StoreHooks`] type.
macro_rules! hooked_key_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl tower_api_key::KeyStore for $store {
            async fn insert_within_limit(
                &self,
                record: tower_api_key::KeyRecord,
                limit: usize,
                audit: &tower_api_key::audit::AuditNote,
            ) -> Result<(), tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::before_write(self)?;
                let applied = tower_api_key::KeyStore::insert_within_limit(
                    $crate::support::hooks::StoreHooks::records(self),
                    record,
                    limit,
                    audit,
                )
                .await;
                $crate::support::hooks::StoreHooks::after_write(self).await?;
                applied
            }
            async fn find_by_prefix(
                &self,
                prefix: &tower_api_key::KeyPrefix,
            ) -> Result<Option<tower_api_key::KeyRecord>, tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::find_by_prefix(self, prefix).await
            }
            async fn get(
                &self,
                account: &tower_api_key::AccountId,
                id: tower_api_key::KeyId,
            ) -> Result<Option<tower_api_key::KeyRecord>, tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::before_read(self)?;
                tower_api_key::KeyStore::get(
                    $crate::support::hooks::StoreHooks::records(self),
                    account,
                    id,
                )
                .await
            }
            async fn list(
                &self,
                account: &tower_api_key::AccountId,
            ) -> Result<Vec<tower_api_key::KeyRecord>, tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::before_read(self)?;
                tower_api_key::KeyStore::list(
                    $crate::support::hooks::StoreHooks::records(self),
                    account,
                )
                .await
            }
            async fn set_status(
                &self,
                account: &tower_api_key::AccountId,
                id: tower_api_key::KeyId,
                status: tower_api_key::KeyStatus,
                audit: &tower_api_key::audit::AuditNote,
            ) -> Result<Option<tower_api_key::KeyRecord>, tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::before_write(self)?;
                let applied = tower_api_key::KeyStore::set_status(
                    $crate::support::hooks::StoreHooks::records(self),
                    account,
                    id,
                    status,
                    audit,
                )
                .await;
                $crate::support::hooks::StoreHooks::after_write(self).await?;
                applied
            }
            async fn replace_key(
                &self,
                account: &tower_api_key::AccountId,
                id: tower_api_key::KeyId,
                prefix: tower_api_key::KeyPrefix,
                digest: tower_api_key::KeyDigest,
                grace_until: Option<std::time::SystemTime>,
                audit: &tower_api_key::audit::AuditNote,
            ) -> Result<Option<tower_api_key::store::Rotated>, tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::before_write(self)?;
                let applied = tower_api_key::KeyStore::replace_key(
                    $crate::support::hooks::StoreHooks::records(self),
                    account,
                    id,
                    prefix,
                    digest,
                    grace_until,
                    audit,
                )
                .await;
                $crate::support::hooks::StoreHooks::after_write(self).await?;
                applied
            }
            async fn update_policy(
                &self,
                account: &tower_api_key::AccountId,
                id: tower_api_key::KeyId,
                update: &tower_api_key::PolicyUpdate,
                audit: &tower_api_key::audit::AuditNote,
            ) -> Result<Option<tower_api_key::KeyRecord>, tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::before_write(self)?;
                let applied = tower_api_key::KeyStore::update_policy(
                    $crate::support::hooks::StoreHooks::records(self),
                    account,
                    id,
                    update,
                    audit,
                )
                .await;
                $crate::support::hooks::StoreHooks::after_write(self).await?;
                applied
            }
            async fn delete(
                &self,
                account: &tower_api_key::AccountId,
                id: tower_api_key::KeyId,
                audit: &tower_api_key::audit::AuditNote,
            ) -> Result<Option<tower_api_key::KeyRecord>, tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::before_write(self)?;
                let applied = tower_api_key::KeyStore::delete(
                    $crate::support::hooks::StoreHooks::records(self),
                    account,
                    id,
                    audit,
                )
                .await;
                $crate::support::hooks::StoreHooks::after_write(self).await?;
                applied
            }
            async fn append_audit(
                &self,
                entry: &tower_api_key::audit::AuditEntry,
            ) -> Result<(), tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::before_write(self)?;
                tower_api_key::KeyStore::append_audit(
                    $crate::support::hooks::StoreHooks::records(self),
                    entry,
                )
                .await
            }
            async fn audit_trail(
                &self,
                account: &tower_api_key::AccountId,
                query: &tower_api_key::audit::AuditQuery,
            ) -> Result<Vec<tower_api_key::audit::AuditEvent>, tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::before_read(self)?;
                tower_api_key::KeyStore::audit_trail(
                    $crate::support::hooks::StoreHooks::records(self),
                    account,
                    query,
                )
                .await
            }
            async fn prune_audit(
                &self,
                before: std::time::SystemTime,
            ) -> Result<u64, tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::before_write(self)?;
                tower_api_key::KeyStore::prune_audit(
                    $crate::support::hooks::StoreHooks::records(self),
                    before,
                )
                .await
            }
            async fn record_usage(
                &self,
                batch: &tower_api_key::usage::UsageBatch,
            ) -> Result<(), tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::record_usage(self, batch).await
            }
            async fn usage(
                &self,
                account: &tower_api_key::AccountId,
                key: Option<tower_api_key::KeyId>,
                from: tower_api_key::usage::Hour,
                to: tower_api_key::usage::Hour,
            ) -> Result<Vec<tower_api_key::usage::UsageRow>, tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::usage(self, account, key, from, to).await
            }
            async fn prune_usage(
                &self,
                before: tower_api_key::usage::Hour,
            ) -> Result<u64, tower_api_key::StoreError> {
                $crate::support::hooks::StoreHooks::before_write(self)?;
                tower_api_key::KeyStore::prune_usage(
                    $crate::support::hooks::StoreHooks::records(self),
                    before,
                )
                .await
            }
        }
    };
}
pub(crate) use hooked_key_store;
