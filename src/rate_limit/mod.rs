//! Per-key rate limits: how many requests each key may make, checked by the layer right after
//! it authenticates a request, from the cached record (no store round trip).
//!
//! A key's own [`RateLimit`] (set with [`KeyOptions::rate_limit`](crate::policy::KeyOptions::rate_limit)
//! or [`PolicyUpdate::rate_limit`](crate::policy::PolicyUpdate::rate_limit)) applies; a key
//! without one gets the layer's
//! [`default_rate_limit`](crate::ApiKeyLayerBuilder::default_rate_limit), if any; with neither
//! the key is not limited. Budgets are counted per key id, so a rotated key keeps its budget
//! and two keys of one account don't share one.
//!
//! The limit is a generic cell rate algorithm (GCRA): a key may spend its whole budget of
//! `requests` at once, and the budget refills continuously, one request every
//! `per_seconds / requests`, so over any long stretch of time a key averages at most
//! `requests` per `per_seconds`. A request over the limit is answered 429 (gRPC status 8,
//! `RESOURCE_EXHAUSTED`) by the layer, never reaches the inner service and is not recorded as
//! a use of the key.
//!
//! Every answer to a limited key, allowed or refused, carries the budget (when the limiter
//! could tell it: not while it is unavailable) in the header fields
//! of the IETF draft *RateLimit header fields for HTTP*
//! (draft-ietf-httpapi-ratelimit-headers-10):
//!
//! ```text
//! RateLimit-Policy: "api-key";q=5;w=2     5 requests per 2 seconds
//! RateLimit: "api-key";r=3;t=1            3 left; full again in 1 second
//! Retry-After: 1                          (on a 429 only) seconds until the next request fits
//! ```
//!
//! Where the budgets are kept is a [`RateLimiter`]: [`LocalLimiter`] (the default) keeps them
//! in this process; with the `redis` feature,
//! `redis::RedisLimiter` shares them between every process
//! using the same Redis.
//!
//! ```
//! use tower_api_key::policy::RateLimit;
//! use tower_api_key::rate_limit::LocalLimiter;
//! use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};
//! # use std::sync::Arc;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
//! let layer = ApiKeyLayer::for_manager(&manager)
//!     .rate_limiter(LocalLimiter::new())
//!     // Keys created without a limit of their own get 100 requests a minute.
//!     .default_rate_limit(RateLimit::new(100, 60)?)
//!     .build();
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```

mod gcra;
mod headers;
mod local;
#[cfg(feature = "redis")]
pub mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use self::headers::{insert_budget, insert_retry_after};
pub use self::local::LocalLimiter;
use crate::account::Account;
use crate::policy::RateLimit;
use crate::store::KeyId;

// ===== BudgetKey =====

/// Whose budget a request spends: a key's permanent id, or any other stable 128-bit id a
/// custom [`Account`] chooses (an account's, to limit all its keys
/// together).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BudgetKey(u128);

impl std::hash::Hash for BudgetKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.mixed());
    }
}

impl BudgetKey {
    /// A budget named by `id`.
    pub const fn new(id: u128) -> Self {
        Self(id)
    }

    /// The id.
    pub const fn get(self) -> u128 {
        self.0
    }

    /// Which of `count` shards holds this budget: middle bits of [`mixed`](Self::mixed),
    /// since a hash map takes its buckets from the low ones and its control tags from the top.
    pub(crate) fn shard(self, count: usize) -> usize {
        (self.mixed() >> 32) as usize % count
    }

    /// The id's 128 bits folded into 64 well-spread ones, also for small sequential ids.
    pub(crate) fn mixed(self) -> u64 {
        let folded = (self.0 as u64) ^ ((self.0 >> 64) as u64);
        (folded ^ (folded >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

impl From<KeyId> for BudgetKey {
    fn from(id: KeyId) -> Self {
        Self(id.as_uuid().as_u128())
    }
}

impl fmt::Debug for BudgetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BudgetKey({:032x})", self.0)
    }
}

// ===== Budget and Verdict =====

/// What is left of a key's budget after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    limit: RateLimit,
    remaining: u32,
    // Milliseconds, rounded up (at most a day each): the budget rides along with every
    // allowed response, so it is kept small.
    reset_ms: u32,
    retry_after_ms: u32,
}

impl Budget {
    /// A budget under `limit` with `remaining` requests left, full again after `reset`; a
    /// refused request may be retried after `retry_after` (zero for an allowed one). Both
    /// are kept to the millisecond, rounded up.
    pub fn new(limit: RateLimit, remaining: u32, reset: Duration, retry_after: Duration) -> Self {
        Self {
            limit,
            remaining: remaining.min(limit.requests()),
            reset_ms: millis_up(reset),
            retry_after_ms: millis_up(retry_after),
        }
    }

    /// The limit the budget is counted under.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Requests the key may still make at once.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// How long until the whole budget is available again.
    pub fn reset(&self) -> Duration {
        Duration::from_millis(u64::from(self.reset_ms))
    }

    /// For a refused request, how long until one request fits again; zero otherwise.
    pub fn retry_after(&self) -> Duration {
        Duration::from_millis(u64::from(self.retry_after_ms))
    }
}

/// `duration` in whole milliseconds, rounded up and capped at `u32::MAX` (49 days).
fn millis_up(duration: Duration) -> u32 {
    let millis = duration.as_millis() + u128::from(duration.subsec_nanos() % 1_000_000 > 0);
    u32::try_from(millis).unwrap_or(u32::MAX)
}

/// A [`RateLimiter`]'s answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The request fits: it spent one request of the budget.
    Allowed(Budget),
    /// The request is over the limit: nothing was spent.
    Limited(Budget),
    /// The limiter could not decide (its backend is unreachable or too slow); the layer
    /// applies its [`LimiterFailure`] policy.
    Unavailable,
}

/// A verdict still being worked out (a round trip to a shared backend).
pub type PendingVerdict = Pin<Box<dyn Future<Output = Verdict> + Send + 'static>>;

/// A [`RateLimiter`]'s answer: at once, or later.
pub enum Acquire {
    /// Decided without waiting (the usual case: budgets kept in memory).
    Ready(Verdict),
    /// Decided by a future the layer awaits before calling the inner service.
    Pending(PendingVerdict),
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(verdict) => f.debug_tuple("Ready").field(verdict).finish(),
            Self::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// What the layer does with a request when its [`RateLimiter`] answers
/// [`Verdict::Unavailable`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimiterFailure {
    /// Let the request through, unlimited, and count the failure in the metrics
    /// (`api_key_rate_limiter_failures_total`): an outage of the limiter must not become an
    /// outage of the API. The default.
    #[default]
    Allow,
    /// Answer 503 (gRPC 14) with `Retry-After`, and count the failure.
    Refuse,
}

// ===== RateLimiter =====

/// Where budgets are kept and spent.
///
/// [`LocalLimiter`] keeps them in this process; implement this trait to keep them elsewhere.
/// `acquire` runs on the request path after every successful authentication of a limited
/// key: when it can answer without waiting it should return [`Acquire::Ready`].
pub trait RateLimiter: Send + Sync + 'static {
    /// Spends one request of `key`'s budget under `limit`, if it fits.
    fn acquire(&self, key: BudgetKey, limit: RateLimit) -> Acquire;
}

// ===== Limits =====

/// A layer's rate-limit settings: where budgets are kept, the limit of keys without one of
/// their own, and what a failure of the limiter means.
#[derive(Clone)]
pub(crate) struct Limits {
    pub(crate) limiter: Arc<dyn RateLimiter>,
    pub(crate) default: Option<RateLimit>,
    pub(crate) on_failure: LimiterFailure,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            limiter: Arc::new(LocalLimiter::new()),
            default: None,
            on_failure: LimiterFailure::Allow,
        }
    }
}

impl Limits {
    /// Spends one request of `account`'s budget; `None` if its requests are not limited.
    #[inline]
    pub(crate) fn acquire(&self, account: &impl Account) -> Option<Acquire> {
        let limit = account.rate_limit().or(self.default)?;
        let key = account.budget_key()?;
        Some(self.limiter.acquire(key, limit))
    }
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("default", &self.default)
            .field("on_failure", &self.on_failure)
            .finish_non_exhaustive()
    }
}

impl<L: RateLimiter + ?Sized> RateLimiter for Arc<L> {
    fn acquire(&self, key: BudgetKey, limit: RateLimit) -> Acquire {
        (**self).acquire(key, limit)
    }
}
