//! Turning a parsed key into an account: the pluggable [`Resolver`] trait and the built-in
//! [`StoreResolver`].
//!
//! The layer calls a resolver only on a cache miss; its answers (found or not) are cached,
//! its errors never are. Implement [`Resolver`] to authenticate against your own account
//! table:
//!
//! ```
//! use async_trait::async_trait;
//! use tower_api_key::key::{ApiKey, KeyDigest};
//! use tower_api_key::resolver::{ResolveError, Resolver};
//!
//! #[derive(Debug)]
//! struct Customer {
//!     name: String,
//!     plan: &'static str,
//! }
//!
//! struct Customers; // for example a database pool
//!
//! #[async_trait]
//! impl Resolver for Customers {
//!     type Account = Customer;
//!
//!     async fn resolve(
//!         &self,
//!         key: &ApiKey,
//!         digest: &KeyDigest,
//!     ) -> Result<Option<Customer>, ResolveError> {
//!         // Look the key up by `key.prefix()`, then compare the stored digest with
//!         // `digest.ct_eq(..)`. Here every key with prefix "acme0000" belongs to acme.
//!         let _ = digest;
//!         Ok((key.prefix().as_str() == "acme0000").then(|| Customer {
//!             name: "acme".into(),
//!             plan: "pro",
//!         }))
//!     }
//! }
//!
//! # let _ = tower_api_key::ApiKeyLayer::builder(Customers, tower_api_key::Pepper::from_bytes([0; 32]));
//! # let c = Customer { name: String::new(), plan: "" };
//! # let _ = (c.name, c.plan);
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::key::{ApiKey, KeyDigest, KeyPrefix};
use crate::last_used::{LastUsedRecorder, UsageCell};
use crate::store::{AccountId, KeyId, KeyStatus, KeyStore};

/// Resolves a well-formed key to the account it authenticates.
///
/// Return `Ok(None)` for every key that must be refused (unknown, inactive, wrong secret):
/// the layer answers all of them with the same 401 and caches the answer briefly. Return
/// `Err` only for faults (the database is down): the layer answers 503 and caches nothing.
#[async_trait]
pub trait Resolver: Send + Sync + 'static {
    /// What an authenticated request carries into the inner service, as
    /// [`Authenticated<Self::Account>`](crate::Authenticated).
    type Account: Send + Sync + 'static;

    /// Looks a key up. `digest` is the key's keyed digest under the layer's pepper.
    ///
    /// Concurrent requests with the same key share one call; a call that is still running
    /// when the key is invalidated is not cached.
    async fn resolve(
        &self,
        key: &ApiKey,
        digest: &KeyDigest,
    ) -> Result<Option<Self::Account>, ResolveError>;

    /// Called on the request path after every successful authentication, cached or not.
    /// It must be cheap and must not block; the default does nothing.
    fn record_use(&self, account: &Self::Account) {
        let _ = account;
    }
}

#[async_trait]
impl<R: Resolver + ?Sized> Resolver for Arc<R> {
    type Account = R::Account;

    async fn resolve(
        &self,
        key: &ApiKey,
        digest: &KeyDigest,
    ) -> Result<Option<Self::Account>, ResolveError> {
        (**self).resolve(key, digest).await
    }

    fn record_use(&self, account: &Self::Account) {
        (**self).record_use(account);
    }
}

/// A resolver could not decide (its backend failed). Never caused by a bad key.
#[derive(Debug)]
pub struct ResolveError(Box<dyn std::error::Error + Send + Sync>);

impl ResolveError {
    /// Wraps the underlying failure.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(source.into())
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key lookup failed: {}", self.0)
    }
}

impl std::error::Error for ResolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

// ===== KeyIdentity =====

/// Who a request authenticated as, when keys are kept in a [`KeyStore`].
///
/// This is the account type of [`StoreResolver`]; handlers receive it as
/// `Authenticated<KeyIdentity>`.
#[derive(Clone)]
pub struct KeyIdentity {
    account_id: AccountId,
    key_id: KeyId,
    prefix: KeyPrefix,
    usage: Arc<UsageCell>,
}

impl KeyIdentity {
    /// The account the key belongs to.
    pub fn account_id(&self) -> &AccountId {
        &self.account_id
    }

    /// The key's permanent id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The prefix the request used.
    pub fn prefix(&self) -> KeyPrefix {
        self.prefix
    }
}

impl fmt::Debug for KeyIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyIdentity")
            .field("account_id", &self.account_id)
            .field("key_id", &self.key_id)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl PartialEq for KeyIdentity {
    fn eq(&self, other: &Self) -> bool {
        (&self.account_id, self.key_id, self.prefix)
            == (&other.account_id, other.key_id, other.prefix)
    }
}

impl Eq for KeyIdentity {}

// ===== StoreResolver =====

/// Resolves keys against a [`KeyStore`]: find the record by prefix, compare digests in
/// constant time, accept only active keys.
///
/// With [`ApiKeyLayerBuilder::record_last_used`](crate::ApiKeyLayerBuilder::record_last_used),
/// successful authentications update the keys' `last_used_at` in coalesced batches.
#[derive(Clone)]
pub struct StoreResolver {
    store: Arc<dyn KeyStore>,
    last_used: Option<LastUsedRecorder>,
}

/// Compared against when a prefix is unknown, so that both refusals do the same work.
const NO_DIGEST: KeyDigest = KeyDigest::from_bytes([0; 32]);

impl StoreResolver {
    /// A resolver over `store` that does not record uses.
    pub fn new(store: Arc<dyn KeyStore>) -> Self {
        Self {
            store,
            last_used: None,
        }
    }

    /// Records every successful authentication with `recorder`; set through
    /// [`ApiKeyLayerBuilder::record_last_used`](crate::ApiKeyLayerBuilder::record_last_used),
    /// the one way to turn recording on.
    #[must_use]
    pub(crate) fn record_last_used(mut self, recorder: LastUsedRecorder) -> Self {
        self.last_used = Some(recorder);
        self
    }
}

#[async_trait]
impl Resolver for StoreResolver {
    type Account = KeyIdentity;

    async fn resolve(
        &self,
        key: &ApiKey,
        digest: &KeyDigest,
    ) -> Result<Option<KeyIdentity>, ResolveError> {
        let record = self
            .store
            .find_by_prefix(&key.prefix())
            .await
            .map_err(ResolveError::new)?;
        let stored = record.as_ref().map_or(&NO_DIGEST, |record| &record.digest);
        let matches = stored.ct_eq(digest);
        Ok(record
            .filter(|record| matches && record.status == KeyStatus::Active)
            .map(|record| KeyIdentity {
                usage: Arc::new(UsageCell::new(record.id, record.prefix)),
                account_id: record.account_id,
                key_id: record.id,
                prefix: record.prefix,
            }))
    }

    fn record_use(&self, identity: &KeyIdentity) {
        if let Some(recorder) = &self.last_used {
            recorder.record(&identity.usage);
        }
    }
}

impl fmt::Debug for StoreResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreResolver")
            .field("records_last_used", &self.last_used.is_some())
            .finish_non_exhaustive()
    }
}
