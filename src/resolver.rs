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
//! use tower_api_key::Account;
//!
//! #[derive(Debug)]
//! struct Customer {
//!     name: String,
//!     plan: &'static str,
//! }
//!
//! // What the layer reads from a customer: here, only its name, for the request's span.
//! impl Account for Customer {
//!     fn label(&self) -> Option<&str> {
//!         Some(&self.name)
//!     }
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
use std::time::{Instant, SystemTime};

use async_trait::async_trait;

use crate::account::Account;
use crate::key::{ApiKey, KeyDigest, KeyPrefix};
use crate::policy::{AllowedIps, Metadata, Quota, RateLimit, Scoped, Scopes};
use crate::rate_limit::BudgetKey;
use crate::store::{AccountId, KeyId, KeyStatus, KeyStore};
use crate::usage::{QuotaCheck, QuotaLedger, QuotaTally, UsageCell, UsageRecorder, UseOutcome};

/// Resolves a well-formed key to the account it authenticates.
///
/// Return `Ok(None)` for every key that must be refused (unknown, inactive, wrong secret):
/// the layer answers all of them with the same 401 and caches the answer briefly. Return
/// `Err` only for faults (the database is down): the layer answers 503 and caches nothing.
///
/// ```
/// use std::collections::HashMap;
/// use async_trait::async_trait;
/// use tower_api_key::resolver::ResolveError;
/// use tower_api_key::{Account, ApiKey, KeyDigest, KeyPrefix, Resolver};
///
/// /// A team, found by its key's prefix; the table holds digests, never keys.
/// #[derive(Clone)]
/// struct Team(String);
///
/// // Named in the request's span; never expires, not rate limited (the defaults).
/// impl Account for Team {
///     fn label(&self) -> Option<&str> {
///         Some(&self.0)
///     }
/// }
///
/// struct Teams(HashMap<KeyPrefix, (KeyDigest, Team)>);
///
/// #[async_trait]
/// impl Resolver for Teams {
///     type Account = Team;
///
///     async fn resolve(&self, key: &ApiKey, digest: &KeyDigest) -> Result<Option<Team>, ResolveError> {
///         Ok(self
///             .0
///             .get(&key.prefix())
///             .filter(|(stored, _)| stored.ct_eq(digest)) // constant time
///             .map(|(_, team)| team.clone()))
///     }
/// }
/// # let _ = Teams(HashMap::new());
/// ```
#[async_trait]
pub trait Resolver: Send + Sync + 'static {
    /// What an authenticated request carries into the inner service, as
    /// [`Authenticated<Self::Account>`](crate::Authenticated). What the layer reads from it
    /// (expiry, rate limit, uses) is its [`Account`] implementation.
    type Account: Account + Send + Sync + 'static;

    /// Looks a key up. `digest` is the key's keyed digest under the layer's pepper.
    ///
    /// Concurrent requests with the same key share one call; a call that is still running
    /// when the key is invalidated is not cached.
    async fn resolve(
        &self,
        key: &ApiKey,
        digest: &KeyDigest,
    ) -> Result<Option<Self::Account>, ResolveError>;

    /// The prefix and digest of the key `account` was resolved from, for a resolver that can
    /// look a key up again by them ([`resolve_again`](Self::resolve_again)). The layer asks
    /// it for a response that stays open (a stream), so that a change of the key can end the
    /// response (see [`stream`](crate::stream)); the default, `None`, leaves such responses
    /// checked once, when they start.
    fn key_of(&self, account: &Self::Account) -> Option<(KeyPrefix, KeyDigest)> {
        let _ = account;
        None
    }

    /// Looks up again the key with this prefix and digest, as [`resolve`](Self::resolve)
    /// looks up a whole key: called, for a key [`key_of`](Self::key_of) named, after a change
    /// of that key, while a response let in with it is open. The layer keeps no plaintext
    /// key for that time, so this gets the prefix and the digest only. The default fails:
    /// implement it together with `key_of`.
    async fn resolve_again(
        &self,
        prefix: &KeyPrefix,
        digest: &KeyDigest,
    ) -> Result<Option<Self::Account>, ResolveError> {
        let _ = (prefix, digest);
        Err(ResolveError::new(
            "this resolver can't look a key up by its digest",
        ))
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

    fn key_of(&self, account: &Self::Account) -> Option<(KeyPrefix, KeyDigest)> {
        (**self).key_of(account)
    }

    async fn resolve_again(
        &self,
        prefix: &KeyPrefix,
        digest: &KeyDigest,
    ) -> Result<Option<Self::Account>, ResolveError> {
        (**self).resolve_again(prefix, digest).await
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
/// `Authenticated<KeyIdentity>`. To unit-test a handler without a layer, build one with
/// [`new`](Self::new):
///
/// ```
/// use tower_api_key::policy::Scopes;
/// use tower_api_key::{Authenticated, KeyIdentity, KeyId};
///
/// let identity = KeyIdentity::new("acme".parse()?, KeyId::random(), "k3v9x0qa".parse()?)
///     .with_scopes(Some(Scopes::new(["read"])?));
/// let who = Authenticated::new(identity); // what a handler would extract
/// assert_eq!(who.account_id().as_str(), "acme");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct KeyIdentity {
    account_id: AccountId,
    key_id: KeyId,
    prefix: KeyPrefix,
    scopes: Option<Scopes>,
    expires_at: Option<SystemTime>,
    rate_limit: Option<RateLimit>,
    allowed_ips: Option<AllowedIps>,
    metadata: Option<Metadata>,
    /// The key's quota and its count, shared by every identity of the key.
    quota: Option<(Quota, Arc<QuotaTally>)>,
    grace: bool,
    /// The digest it was resolved by (none for one built with [`KeyIdentity::new`]).
    digest: Option<KeyDigest>,
    usage: Arc<UsageCell>,
    /// Where uses are recorded, if they are.
    recorder: Option<UsageRecorder>,
}

impl KeyIdentity {
    /// An identity for an unrestricted, never-expiring key: for tests and for middleware that
    /// authenticates by itself.
    pub fn new(account_id: AccountId, key_id: KeyId, prefix: KeyPrefix) -> Self {
        Self {
            usage: Arc::new(UsageCell::new(account_id.clone(), key_id, prefix)),
            account_id,
            key_id,
            prefix,
            scopes: None,
            expires_at: None,
            rate_limit: None,
            allowed_ips: None,
            metadata: None,
            quota: None,
            grace: false,
            digest: None,
            recorder: None,
        }
    }

    /// With the addresses the key may be used from (`None`: anywhere).
    #[must_use]
    pub fn with_allowed_ips(mut self, allowed_ips: Option<AllowedIps>) -> Self {
        self.allowed_ips = allowed_ips;
        self
    }

    /// With the key's metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Option<Metadata>) -> Self {
        self.metadata = metadata;
        self
    }

    /// With the scopes the key is restricted to (`None`: unrestricted).
    #[must_use]
    pub fn with_scopes(mut self, scopes: Option<Scopes>) -> Self {
        self.scopes = scopes;
        self
    }

    /// With the instant the key stops authenticating.
    #[must_use]
    pub fn with_expires_at(mut self, expires_at: Option<SystemTime>) -> Self {
        self.expires_at = expires_at;
        self
    }

    /// With the key's own rate limit (`None`: the layer's default, if any).
    #[must_use]
    pub fn with_rate_limit(mut self, rate_limit: Option<RateLimit>) -> Self {
        self.rate_limit = rate_limit;
        self
    }

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

    /// The scopes the key is restricted to; `None` is unrestricted.
    pub fn scopes(&self) -> Option<&Scopes> {
        self.scopes.as_ref()
    }

    /// When the key stops authenticating: its expiry or, for the old key of a rotation in its
    /// grace period, the end of the grace period if that comes first.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The key's own rate limit; `None` leaves it to the layer's default, if any.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit
    }

    /// The addresses the key may be used from; `None` is anywhere.
    pub fn allowed_ips(&self) -> Option<&AllowedIps> {
        self.allowed_ips.as_ref()
    }

    /// The facts stored with the key, read with the key itself (no second lookup).
    ///
    /// ```
    /// use tower_api_key::policy::Metadata;
    /// use tower_api_key::{KeyId, KeyIdentity};
    ///
    /// let identity = KeyIdentity::new("acme".parse()?, KeyId::random(), "k3v9x0qa".parse()?)
    ///     .with_metadata(Some(Metadata::from_json(r#"{"plan":"pro"}"#)?));
    /// let plan = identity.metadata().and_then(|m| m.get("plan")).and_then(|p| p.as_str());
    /// assert_eq!(plan, Some("pro"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// The key's quota, if it has one.
    pub fn quota(&self) -> Option<Quota> {
        self.quota.as_ref().map(|(quota, _)| *quota)
    }

    /// Whether the request used the old key of a rotation, in its grace period.
    pub fn is_grace_key(&self) -> bool {
        self.grace
    }
}

impl Account for KeyIdentity {
    fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    fn label(&self) -> Option<&str> {
        Some(self.account_id.as_str())
    }

    /// The key's id: each key has a budget of its own, kept across rotations.
    fn budget_key(&self) -> Option<BudgetKey> {
        Some(self.key_id.into())
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit
    }

    #[inline]
    fn allowed_ips(&self) -> Option<&AllowedIps> {
        self.allowed_ips.as_ref()
    }

    /// Counted in this process against the store's count of the period (see
    /// [`usage`](crate::usage)), [`QuotaCheck::Ready`]; or, if the recorder shares quotas
    /// through Redis ([`UsageRecorder::share_quotas`](crate::usage::UsageRecorder)), counted
    /// there, [`QuotaCheck::Pending`].
    // Inline: a key without a quota pays one `Option` read, not a call.
    #[inline]
    fn spend_quota(&self, at: Instant) -> Option<QuotaCheck> {
        let (quota, tally) = self.quota.as_ref()?;
        Some(self.spend_from(tally, *quota, at))
    }

    #[inline]
    fn record_use(&self, at: Instant, outcome: UseOutcome) {
        if let Some(recorder) = &self.recorder {
            recorder.record(&self.usage, at, outcome);
        }
        if outcome == UseOutcome::RefusedForScope {
            self.refund_quota(at);
        }
    }
}

impl KeyIdentity {
    /// Spends one request of `quota` from `tally`: through the recorder (in Redis if it
    /// shares quotas), or in this process.
    #[inline(never)]
    fn spend_from(&self, tally: &Arc<QuotaTally>, quota: Quota, at: Instant) -> QuotaCheck {
        match &self.recorder {
            Some(recorder) => recorder.spend_quota(tally, quota, at),
            None => QuotaCheck::Ready(tally.spend(quota, SystemTime::now())),
        }
    }

    /// Gives back the quota a request refused for its scope had spent.
    #[cold]
    fn refund_quota(&self, at: Instant) {
        if let Some((quota, tally)) = &self.quota {
            match &self.recorder {
                Some(recorder) => recorder.refund_quota(tally, *quota, at),
                None => tally.refund(),
            }
        }
    }
}

impl Scoped for KeyIdentity {
    fn has_scope(&self, scope: &str) -> bool {
        self.scopes.has_scope(scope)
    }
}

impl fmt::Debug for KeyIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyIdentity")
            .field("account_id", &self.account_id)
            .field("key_id", &self.key_id)
            .field("prefix", &self.prefix)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .field("rate_limit", &self.rate_limit)
            .field("allowed_ips", &self.allowed_ips)
            .field("metadata", &self.metadata)
            .field("quota", &self.quota())
            .field("grace", &self.grace)
            .finish()
    }
}

impl PartialEq for KeyIdentity {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.account_id,
            self.key_id,
            self.prefix,
            &self.scopes,
            self.expires_at,
            self.rate_limit,
            &self.allowed_ips,
            &self.metadata,
            self.quota(),
            self.grace,
        ) == (
            &other.account_id,
            other.key_id,
            other.prefix,
            &other.scopes,
            other.expires_at,
            other.rate_limit,
            &other.allowed_ips,
            &other.metadata,
            other.quota(),
            other.grace,
        )
    }
}

impl Eq for KeyIdentity {}

// ===== StoreResolver =====

/// Resolves keys against a [`KeyStore`]: find the record by prefix, compare digests in
/// constant time, accept only active keys. The old key of a rotation with a grace period is
/// found by its prefix too; its identity expires when the grace period ends. Expired keys are
/// resolved with their expiry, and the layer answers them `expired API key`.
///
/// With [`ApiKeyLayerBuilder::record_usage`](crate::ApiKeyLayerBuilder::record_usage),
/// successful authentications update the keys' `last_used_at`, and every request decided for
/// a key is counted in its hourly usage, in coalesced batches.
#[derive(Clone)]
pub struct StoreResolver {
    store: Arc<dyn KeyStore>,
    usage: Option<UsageRecorder>,
    /// The recorder's quota counts, or this resolver's own without one.
    quotas: Arc<QuotaLedger>,
}

/// Compared against when a prefix is unknown, so that both refusals do the same work.
const NO_DIGEST: KeyDigest = KeyDigest::from_bytes([0; 32]);

impl StoreResolver {
    /// A resolver over `store` that does not record uses.
    pub fn new(store: Arc<dyn KeyStore>) -> Self {
        Self {
            store,
            usage: None,
            quotas: Arc::default(),
        }
    }

    /// Records every successful authentication with `recorder`; set through
    /// [`ApiKeyLayerBuilder::record_usage`](crate::ApiKeyLayerBuilder::record_usage),
    /// the one way to turn recording on.
    #[must_use]
    pub(crate) fn record_usage(mut self, recorder: UsageRecorder) -> Self {
        self.quotas = Arc::clone(recorder.quotas());
        self.usage = Some(recorder);
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
        self.resolve_again(&key.prefix(), digest).await
    }

    fn key_of(&self, identity: &KeyIdentity) -> Option<(KeyPrefix, KeyDigest)> {
        Some((identity.prefix, identity.digest?))
    }

    /// All a lookup needs is the prefix (to find the record) and the digest (to compare with
    /// the stored one): [`resolve`](Resolver::resolve) is this too.
    async fn resolve_again(
        &self,
        prefix: &KeyPrefix,
        digest: &KeyDigest,
    ) -> Result<Option<KeyIdentity>, ResolveError> {
        let prefix = *prefix;
        let record = self
            .store
            .find_by_prefix(&prefix)
            .await
            .map_err(ResolveError::new)?;
        // Which of the record's keys the prefix names: the current one, or the old one of a
        // rotation with a grace period (with the earlier of the two deadlines).
        let (stored, expires_at, grace) = match &record {
            Some(record) if record.prefix == prefix => (&record.digest, record.expires_at, false),
            Some(record) => match &record.previous {
                Some(previous) if previous.prefix == prefix => {
                    let ends = record
                        .expires_at
                        .map_or(previous.expires_at, |at| at.min(previous.expires_at));
                    (&previous.digest, Some(ends), true)
                }
                _ => (&NO_DIGEST, None, false),
            },
            None => (&NO_DIGEST, None, false),
        };
        let matches = stored.ct_eq(digest);
        let Some(record) = record.filter(|record| matches && record.status == KeyStatus::Active)
        else {
            return Ok(None);
        };
        // A quota's count is read from the store here, on the miss, so that hits never wait.
        let quota = match record.quota {
            Some(quota) => {
                let tally = self
                    .quotas
                    .tally(
                        &*self.store,
                        &record.account_id,
                        record.id,
                        quota,
                        SystemTime::now(),
                        |hours| {
                            let recorder = self.usage.as_ref()?;
                            Some(recorder.unwritten_accepted(record.id, hours))
                        },
                    )
                    .await
                    .map_err(ResolveError::new)?;
                Some((quota, tally))
            }
            None => None,
        };
        Ok(Some(KeyIdentity {
            usage: Arc::new(UsageCell::new(record.account_id.clone(), record.id, prefix)),
            account_id: record.account_id,
            key_id: record.id,
            prefix,
            scopes: record.scopes,
            expires_at,
            rate_limit: record.rate_limit,
            allowed_ips: record.allowed_ips,
            metadata: record.metadata,
            quota,
            grace,
            digest: Some(*digest),
            recorder: self.usage.clone(),
        }))
    }
}

impl fmt::Debug for StoreResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreResolver")
            .field("records_usage", &self.usage.is_some())
            .finish_non_exhaustive()
    }
}
