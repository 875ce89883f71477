//! [`RedisQuotas`]: quota counts kept in Redis, exact across every process that shares the
//! Redis and the namespace (feature `redis`).
//!
//! See the type's documentation.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::redis::Script;
use ::redis::aio::ConnectionManager;
use tokio::sync::Semaphore;

use super::quota::{PendingQuotaVerdict, QuotaTally, QuotaVerdict};
use crate::policy::{Period, Quota, QuotaPeriod};
use crate::rate_limit::redis::RedisLimiterError;
use crate::rate_limit::redis::breaker::Breaker;
use crate::rate_limit::redis::connection::{RedisClient, RedisSettings};
use crate::store::KeyId;

#[cfg(doc)]
use super::UsageRecorder;

/// The namespace of quota counts unless [`RedisQuotasBuilder::namespace`] sets another.
pub const DEFAULT_QUOTA_NAMESPACE: &str = "tower-api-key:quota";

/// The most refunds (requests given back after a scope refusal) waiting for Redis at once;
/// a refund beyond them is made in this process only.
pub const MAX_REFUNDS_IN_FLIGHT: usize = 1024;

/// How long a count outlives its period: a Redis clock behind this process's can't drop it
/// while the period still runs here.
const EXPIRY_MARGIN_SECS: u64 = 86_400;

/// Spends one request of a quota, atomically.
///
/// KEYS[1]: the count. ARGV: the quota, the count to start from if there is none, and when
/// the count expires (Unix seconds). Answers {1 if counted else 0, the count}.
const SPEND: &str = r"
local quota = tonumber(ARGV[1])
local stored = redis.call('GET', KEYS[1])
local count
if stored then
  count = tonumber(stored)
else
  count = tonumber(ARGV[2])
  redis.call('SET', KEYS[1], count)
  redis.call('EXPIREAT', KEYS[1], ARGV[3])
end
if count >= quota then
  return {0, count}
end
-- INCR keeps the expiry set when the count was created (the key names its period).
return {1, redis.call('INCR', KEYS[1])}
";

/// Gives one request back: decrements the count if it is there and positive (a count that
/// expired or was deleted stays missing, to be started again from the store).
const REFUND: &str = r"
local count = tonumber(redis.call('GET', KEYS[1]))
if count and count > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
";

// ===== builder =====

/// Settings of a [`RedisQuotas`], from [`RedisQuotas::builder`].
#[derive(Clone)]
pub struct RedisQuotasBuilder {
    settings: RedisSettings,
}

impl RedisQuotasBuilder {
    /// Counts are named `<namespace>:<key id>:<period kind>:<period start>` (default
    /// [`DEFAULT_QUOTA_NAMESPACE`]). Processes share counts when they share the Redis database
    /// and the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.settings.namespace = namespace.into();
        self
    }

    /// The longest a request waits for Redis, connection included (default
    /// [`DEFAULT_TIMEOUT`](crate::rate_limit::redis::DEFAULT_TIMEOUT), 100 ms); after it, the request is decided by this process's count.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// The longest [`connect`](Self::connect) waits for the first connection (default
    /// [`DEFAULT_CONNECT_TIMEOUT`](crate::rate_limit::redis::DEFAULT_CONNECT_TIMEOUT)).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// Connects, loads the scripts and returns the counter.
    ///
    /// # Errors
    ///
    /// [`RedisLimiterError::InvalidUrl`] for a URL redis-rs doesn't accept;
    /// [`RedisLimiterError::Connect`] if Redis refuses the connection, the credentials or the
    /// scripts; [`RedisLimiterError::Timeout`] if it doesn't answer within the connect
    /// timeout. The counter never fails after this: while Redis is away, each process counts
    /// alone. To start while Redis is down, use [`connect_lazy`](Self::connect_lazy).
    pub async fn connect(self) -> Result<RedisQuotas, RedisLimiterError> {
        let (spend, refund) = (Script::new(SPEND), Script::new(REFUND));
        let connection = self.settings.connect(&[&spend, &refund]).await?;
        Ok(self.finish(connection, spend, refund))
    }

    /// Returns the counter without waiting for Redis: it connects on its first request, and
    /// each process counts alone until Redis answers. Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`RedisLimiterError::InvalidUrl`] for a URL redis-rs doesn't accept;
    /// [`RedisLimiterError::NoRuntime`] outside a Tokio runtime.
    pub fn connect_lazy(self) -> Result<RedisQuotas, RedisLimiterError> {
        let connection = self.settings.connect_lazy()?;
        Ok(self.finish(connection, Script::new(SPEND), Script::new(REFUND)))
    }

    fn finish(self, connection: ConnectionManager, spend: Script, refund: Script) -> RedisQuotas {
        RedisQuotas {
            inner: Arc::new(Inner {
                redis: self.settings.client(
                    connection,
                    Breaker::new(
                        "redis quota counter",
                        "each process counts quotas alone until it answers",
                    ),
                ),
                spend,
                refund,
                namespace: self.settings.namespace,
                refunds: Arc::new(Semaphore::new(MAX_REFUNDS_IN_FLIGHT)),
            }),
        }
    }
}

impl fmt::Debug for RedisQuotasBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RedisQuotasBuilder");
        self.settings.describe(&mut debug);
        debug.finish()
    }
}

// ===== RedisQuotas =====

/// Quota counts kept in Redis, shared by every process using the same Redis and namespace.
///
/// A recorder given one with [`UsageRecorder::share_quotas`] (and given to the layer with
/// [`record_usage`](crate::ApiKeyLayerBuilder::record_usage)) spends the quotas of the keys it
/// records in Redis: each request with a quota is one Lua script call, run atomically, on
/// the count `<namespace>:<key id as 32 hex digits>:<day|month>:<period start, Unix
/// seconds>`. The script compares the count with the request's quota (so a changed quota
/// applies at once): under it, the count goes up by one and the request is let in; at or
/// over it, nothing is counted and the request is answered 429 `quota exceeded`. The count
/// expires a day after its period ends (the margin keeps a Redis whose clock is behind from
/// dropping it early), so Redis holds one count per key and period in use. A missing count (a
/// new period, a Redis restart, a Redis configured mid-period) starts from this process's
/// estimate: the store's usage plus what the process has not written yet, as without Redis.
/// Requests let in are counted in the process too, so that estimate stays right. (A request
/// whose client goes away while Redis answers may be counted in Redis without being served.)
///
/// A request refused for its scope after it was let in
/// ([`UseOutcome::RefusedForScope`](super::UseOutcome::RefusedForScope)) gives its request back: the count is
/// decremented by a task spawned off the request path (at most [`MAX_REFUNDS_IN_FLIGHT`] at a
/// time; a refund beyond that is not made in Redis), so the next request may still see it for
/// the round trip's time.
///
/// Every call is bounded by [`RedisQuotasBuilder::timeout`] (100 ms by default). When Redis
/// fails or doesn't answer in time, the request is decided by this process's count, as without
/// Redis (and counted there): never refused for Redis's sake, never a 5xx. The fleet's
/// count is then only as exact as the processes' estimates (the store's usage one flush
/// late), and requests let in meanwhile are not in Redis's count when it answers again. As
/// the rate limiter does, after 3 failures in a row the counter stops asking Redis for
/// 250 ms, then tries one call; the connection reconnects by itself. Failures are logged at
/// `warn` at most once per 10 seconds (the others at `debug`), naming the server's
/// `host:port`, never the URL.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower_api_key::usage::{RedisQuotas, UsageRecorder};
/// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
/// let quotas = RedisQuotas::builder("redis://127.0.0.1:6379")
///     .namespace("my-api:quota")
///     .connect()
///     .await?;
/// let recorder = UsageRecorder::new(Arc::clone(manager.store())).share_quotas(quotas);
/// let flusher = recorder.spawn_flusher(Duration::from_secs(1));
/// let layer = ApiKeyLayer::for_manager(&manager)
///     .record_usage(recorder)
///     .build();
/// // ... serve requests through `layer` ...
/// # drop(layer);
/// flusher.shutdown().await?;
/// # Ok(())
/// # }
/// ```
///
/// Clones share the connection.
#[derive(Clone)]
pub struct RedisQuotas {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server, called within the timeout, asked nothing while it doesn't answer.
    redis: RedisClient,
    spend: Script,
    refund: Script,
    namespace: String,
    /// Bounds the refunds waiting for Redis.
    refunds: Arc<Semaphore>,
}

impl RedisQuotas {
    /// Settings for a counter on the Redis at `url` (`redis://[user:password@]host[:port][/db]`
    /// or `redis+unix:///path`), with the defaults: namespace [`DEFAULT_QUOTA_NAMESPACE`],
    /// timeout [`DEFAULT_TIMEOUT`](crate::rate_limit::redis::DEFAULT_TIMEOUT).
    pub fn builder(url: impl Into<String>) -> RedisQuotasBuilder {
        RedisQuotasBuilder {
            settings: RedisSettings::new(url.into(), DEFAULT_QUOTA_NAMESPACE),
        }
    }

    /// A counter with the default settings, connected to `url`.
    ///
    /// # Errors
    ///
    /// As [`RedisQuotasBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Self, RedisLimiterError> {
        Self::builder(url).connect().await
    }

    /// The Redis key holding the count of key `key_id` for the period of kind `period` that
    /// holds `at`.
    pub fn redis_key(&self, key_id: KeyId, period: QuotaPeriod, at: SystemTime) -> String {
        self.inner.redis_key(key_id, period, period.containing(at))
    }

    /// Spends one request of `quota`, made at `at`, in Redis: see the module docs.
    pub(crate) fn spend(
        &self,
        tally: &Arc<QuotaTally>,
        quota: Quota,
        at: SystemTime,
    ) -> PendingQuotaVerdict {
        // Read now, on the request path: the period (the tally's, unless it ended) and what
        // Redis starts from if it has no count.
        let (period, seed) = tally.seed(quota, at);
        let key = self.inner.redis_key(tally.key_id(), quota.period(), period);
        let inner = Arc::clone(&self.inner);
        let tally = Arc::clone(tally);
        Box::pin(async move {
            let mut invocation = inner.spend.key(key);
            invocation
                .arg(quota.requests())
                .arg(seed)
                .arg(period.end_secs().saturating_add(EXPIRY_MARGIN_SECS));
            match inner.redis.invoke::<(i64, i64)>(&invocation).await {
                Some((1, _)) => {
                    // Counted locally too, so that the store-based estimate stays right.
                    tally.count(quota, at);
                    QuotaVerdict::Allowed
                }
                Some(_) => QuotaVerdict::Exceeded {
                    retry_after: Duration::from_secs(period.seconds_left(at)),
                },
                // Best effort: this process's count decides.
                None => tally.spend(quota, at),
            }
        })
    }

    /// Gives back one request of `quota` made at `at`: at once in this process, and in Redis
    /// by a spawned task (if a Tokio runtime runs and fewer than [`MAX_REFUNDS_IN_FLIGHT`]
    /// wait).
    pub(crate) fn refund(&self, tally: &QuotaTally, quota: Quota, at: SystemTime) {
        tally.refund();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(permit) = Arc::clone(&self.inner.refunds).try_acquire_owned() else {
            tracing::debug!(redis = %self.inner.redis.endpoint(), "too many quota refunds waiting; one made locally only");
            return;
        };
        let key = self.inner.redis_key(
            tally.key_id(),
            quota.period(),
            quota.period().containing(at),
        );
        let inner = Arc::clone(&self.inner);
        runtime.spawn(async move {
            let _ = inner.redis.invoke::<i64>(&inner.refund.key(key)).await;
            drop(permit);
        });
    }
}

impl Inner {
    fn redis_key(&self, key_id: KeyId, kind: QuotaPeriod, period: Period) -> String {
        format!(
            "{}:{}:{}:{}",
            self.namespace,
            key_id.as_uuid().simple(),
            kind.as_str(),
            period.start_secs()
        )
    }
}

impl fmt::Debug for RedisQuotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQuotas")
            .field("redis", &self.inner.redis.endpoint())
            .field("namespace", &self.inner.namespace)
            .field("timeout", &self.inner.redis.timeout())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[tokio::test]
    async fn counts_are_named_by_key_period_kind_and_start_and_the_url_is_never_printed() {
        let builder =
            RedisQuotas::builder("redis://user:hunter2@cache.internal:6380/2").namespace("api:q");
        let printed = format!("{builder:?}");
        assert!(printed.contains("cache.internal:6380"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        let quotas = builder.connect_lazy().expect("lazy");
        let printed = format!("{quotas:?}");
        assert!(printed.contains("cache.internal:6380"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");

        let id: KeyId = "0b1c2d3e-4f50-4617-8283-949596979899"
            .parse()
            .expect("uuid");
        let noon = UNIX_EPOCH + Duration::from_secs(1_796_472_000); // 2026-12-05T12:00:00Z
        assert_eq!(
            quotas.redis_key(id, QuotaPeriod::Day, noon),
            "api:q:0b1c2d3e4f5046178283949596979899:day:1796428800"
        );
        assert_eq!(
            quotas.redis_key(id, QuotaPeriod::Month, noon),
            "api:q:0b1c2d3e4f5046178283949596979899:month:1796083200"
        );
    }
}
