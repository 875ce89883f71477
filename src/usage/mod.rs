//! Usage: each key's `last_used_at`, and its requests counted per hour.
//!
//! The layer counts every request it decides for a key the resolver knew (one that resolved
//! to a record) against that key, by [`UseOutcome`]: accepted, rate limited, or refused (403
//! for a scope the key lacks, 401 for its expiry). Unknown and malformed keys can't be
//! attributed to a key; they stay in the process-wide [`metrics`](crate::metrics).
//!
//! Nothing of this is written on the request path. A request stamps and counts into atomics
//! that belong to its cached identity; a [`UsageRecorder`] collects them, and its flusher
//! writes one [`UsageBatch`] per interval: the latest use of each key and the counts to add to
//! each key's hours, in one store call ([`KeyStore::record_usage`](crate::KeyStore::record_usage)).
//! Counts are kept per key per UTC [`Hour`]; the flusher deletes hours older than the
//! recorder's [`retention`](UsageRecorder::retention) (90 days by default). Several processes
//! on one database add up.
//!
//! Quotas count what usage counts: a key's accepted requests in its quota's period are the
//! store's hourly counts plus what this process has not written yet ([`QuotaVerdict`]); with
//! the `redis` feature, a recorder that [shares its quotas](UsageRecorder) through
//! `RedisQuotas` counts them exactly across every process using the same Redis.
//!
//! Reading them back is [`KeyManager::usage`](crate::KeyManager::usage): a [`UsageSeries`] of
//! hourly or daily buckets over a [`UsageRange`], zeros included.

mod quota;
mod recorder;
#[cfg(feature = "redis")]
mod redis_quotas;
mod series;

pub use self::quota::{PendingQuotaVerdict, QuotaCheck, QuotaVerdict};
pub(crate) use self::quota::{QuotaLedger, QuotaTally};
pub(crate) use self::recorder::UsageCell;
pub use self::recorder::{
    DEFAULT_MAX_PENDING, DEFAULT_RETENTION, FlushTask, MAX_HOURS_KEPT, UsageRecorder,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis_quotas::{
    DEFAULT_QUOTA_NAMESPACE, MAX_REFUNDS_IN_FLIGHT, RedisQuotas, RedisQuotasBuilder,
};
pub use self::series::{
    Granularity, InvalidUsageRange, MAX_BUCKETS, UsageBucket, UsageRange, UsageSeries,
};

pub use crate::store::counts::{Hour, UsageBatch, UsageCounts, UsageDelta, UsageRow};

/// What the layer decided for a request made with a key the resolver knew; the argument of
/// [`Account::record_use`](crate::Account::record_use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UseOutcome {
    /// Let in: the inner service was called. Also moves `last_used_at`.
    Accepted,
    /// Refused with 429: over its rate limit.
    RateLimited,
    /// Refused by the key layer for the key's own policy (its expiry).
    Refused,
    /// Let in by the key layer, then refused by [`RequireScopeLayer`](crate::RequireScopeLayer)
    /// (403): the request counts as refused instead of accepted.
    RefusedForScope,
}
