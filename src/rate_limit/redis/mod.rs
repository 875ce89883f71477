//! [`RedisLimiter`]: budgets kept in Redis, shared by every process that uses the same Redis
//! (feature `redis`).
//!
//! Each budget is one Redis string, `<namespace>:<budget key as 32 hex digits>`, holding the
//! budget's theoretical arrival time (TAT) and the interval it was counted in, in
//! microseconds on Redis's clock. A Lua script reads the clock (`TIME`), spends the request
//! with the same GCRA arithmetic as [`LocalLimiter`] (a changed limit counts the requests
//! already spent one for one) and stores the new TAT with a `PEXPIRE` of the time until the
//! budget is full again, so an idle key's budget vanishes from Redis by itself. The script runs atomically in Redis, so
//! processes never race on a budget, and only Redis's clock is read, so theirs don't matter.
//! It is loaded once and called by its SHA1 (`EVALSHA`), loaded again after a Redis restart.
//!
//! Two modes:
//!
//! - **Exact** (the default): every request is one script call ([`Acquire::Pending`]), so a
//!   fleet allows exactly what one process would.
//! - **Local-first** ([`RedisLimiterBuilder::local_first`]): the process leases a few requests
//!   of a key's budget in one script call and spends them without a round trip
//!   ([`Acquire::Ready`]); a key over its limit is refused locally until Redis said a request
//!   fits again. Fewer round trips, at the price of precision: see the builder method.
//!
//! Every call is bounded by [`RedisLimiterBuilder::timeout`] (100 ms by default). A call that
//! fails or times out answers [`Verdict::Unavailable`], and the layer applies its
//! [`LimiterFailure`](super::LimiterFailure) policy. After 3 failures in a row the limiter
//! fails fast: verdicts are `Unavailable` at once, without waiting for the timeout, for
//! 250 ms; then one call tries Redis again, and the first success ends it. The connection
//! (redis-rs's `ConnectionManager`, one multiplexed connection) reconnects by itself in the
//! background: when Redis is back, verdicts are too, without rebuilding anything. Failures
//! are logged at `warn` at most once per 10 seconds (the others at `debug`), naming the
//! server's `host:port`, never the URL (which may hold a password).
//!
//! ```no_run
//! use tower_api_key::policy::RateLimit;
//! use tower_api_key::rate_limit::LimiterFailure;
//! use tower_api_key::rate_limit::redis::RedisLimiter;
//! use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};
//! # use std::sync::Arc;
//! # use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
//! let limiter = RedisLimiter::builder("redis://127.0.0.1:6379")
//!     .namespace("my-api:rl")
//!     .timeout(Duration::from_millis(50))
//!     .connect()
//!     .await?;
//! let layer = ApiKeyLayer::for_manager(&manager)
//!     .rate_limiter(limiter)
//!     .default_rate_limit(RateLimit::new(100, 60)?)
//!     // While Redis is unreachable, answer 503 instead of letting requests through.
//!     .on_limiter_failure(LimiterFailure::Refuse)
//!     .build();
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```

pub(crate) mod breaker;
pub(crate) mod connection;
mod lease;
mod script;

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::Script;
use ::redis::aio::ConnectionManager;

use self::breaker::Breaker;
use self::connection::{RedisClient, RedisSettings};
use self::lease::{Leases, Local, Waiter};
use self::script::SCRIPT;
use super::{Acquire, BudgetKey, RateLimit, RateLimiter, Verdict};

#[cfg(doc)]
use super::LocalLimiter;

/// The namespace of budget keys unless [`RedisLimiterBuilder::namespace`] sets another.
pub const DEFAULT_NAMESPACE: &str = "tower-api-key:rl";
/// How long a verdict may take unless [`RedisLimiterBuilder::timeout`] sets another.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
/// How long the first connection may take unless [`RedisLimiterBuilder::connect_timeout`]
/// sets another.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest lease of local-first mode unless [`RedisLimiterBuilder::local_first`] is given
/// another.
pub const DEFAULT_MAX_LEASE: u32 = 10;

// ===== errors =====

/// Why a [`RedisLimiter`] (or a [`RedisQuotas`](crate::usage::RedisQuotas), which connects
/// the same way) could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum RedisLimiterError {
    /// The URL is not a Redis URL redis-rs understands.
    InvalidUrl(Box<dyn StdError + Send + Sync>),
    /// The first connection (or loading the script) failed: Redis is unreachable, refused the
    /// credentials, or doesn't allow scripts.
    Connect(Box<dyn StdError + Send + Sync>),
    /// The first connection took longer than the connect timeout.
    Timeout,
    /// [`RedisLimiterBuilder::connect_lazy`] (or its quota counterpart) was called outside a
    /// Tokio runtime.
    NoRuntime,
}

impl fmt::Display for RedisLimiterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl(source) => write!(f, "invalid Redis URL: {source}"),
            Self::Connect(source) => write!(f, "could not connect to Redis: {source}"),
            Self::Timeout => f.write_str("timed out connecting to Redis"),
            Self::NoRuntime => f.write_str("a lazy Redis connection needs a Tokio runtime"),
        }
    }
}

impl StdError for RedisLimiterError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::InvalidUrl(source) | Self::Connect(source) => Some(&**source),
            Self::Timeout | Self::NoRuntime => None,
        }
    }
}

// ===== builder =====

/// Settings of a [`RedisLimiter`], from [`RedisLimiter::builder`].
#[derive(Clone)]
pub struct RedisLimiterBuilder {
    settings: RedisSettings,
    max_lease: Option<u32>,
}

impl RedisLimiterBuilder {
    /// Budget keys are named `<namespace>:<budget key as 32 hex digits>` (default
    /// [`DEFAULT_NAMESPACE`]). Processes share budgets when they share the Redis database and
    /// the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.settings.namespace = namespace.into();
        self
    }

    /// The longest a verdict may take, connection included (default [`DEFAULT_TIMEOUT`]);
    /// after it, the verdict is [`Verdict::Unavailable`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// The longest [`connect`](Self::connect) waits for the first connection (default
    /// [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// Every request is one script call in Redis: the fleet's budget is exact. The default.
    pub fn exact(mut self) -> Self {
        self.max_lease = None;
        self
    }

    /// Local-first mode: lease up to `max_lease` requests of a key's budget at a time
    /// ([`DEFAULT_MAX_LEASE`] is a sensible value) and spend them without a round trip.
    ///
    /// A lease is `max_lease` requests or a tenth of the key's limit, whichever is smaller,
    /// and at least one; when fewer are left, the lease takes what is left. A process asks
    /// again when its lease is spent or older than the time Redis takes to refill a lease
    /// (at least one second, at most the window). Concurrent requests for a key share one
    /// request to Redis, which asks for at least as many requests as are waiting (they spend
    /// them at once), so a burst costs a round trip or two, not one per lease. A key Redis
    /// refused is refused locally until Redis said a request would fit.
    ///
    /// The trade-off: leased requests are counted in Redis when leased, not when spent. A
    /// process may hold up to one lease per key that others can't use (a lease that ages out
    /// unspent is lost, not returned), and requests leased in one window may be spent early
    /// in the next, so any window may let through up to one lease per process more than the
    /// limit. With the default (at most a tenth of the limit) and two processes hammering a
    /// key, the combined count stays within the limit over a long run and within a few
    /// leases of it in any window. For small limits (under 10 requests) a lease is one
    /// request, but a burst of waiting requests still leases as many as are waiting: if they
    /// give up (a client disconnects), what they leased stays with this process until the
    /// lease ages out.
    pub fn local_first(mut self, max_lease: u32) -> Self {
        self.max_lease = Some(max_lease.max(1));
        self
    }

    /// Connects, loads the script and returns the limiter.
    ///
    /// # Errors
    ///
    /// [`RedisLimiterError::InvalidUrl`] for a URL redis-rs doesn't accept;
    /// [`RedisLimiterError::Connect`] if Redis refuses the connection, the credentials or the
    /// script; [`RedisLimiterError::Timeout`] if it doesn't answer within the connect timeout.
    /// A limiter never fails after this: a Redis that goes away later makes verdicts
    /// [`Verdict::Unavailable`] until it is back. To start while Redis is down, use
    /// [`connect_lazy`](Self::connect_lazy).
    pub async fn connect(self) -> Result<RedisLimiter, RedisLimiterError> {
        let script = Script::new(SCRIPT);
        let connection = self.settings.connect(&[&script]).await?;
        Ok(self.finish(connection, script))
    }

    /// Returns the limiter without waiting for Redis: it connects on its first verdict, and
    /// verdicts are [`Verdict::Unavailable`] until Redis answers. Must be called inside a
    /// Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`RedisLimiterError::InvalidUrl`] for a URL redis-rs doesn't accept;
    /// [`RedisLimiterError::NoRuntime`] outside a Tokio runtime.
    pub fn connect_lazy(self) -> Result<RedisLimiter, RedisLimiterError> {
        let connection = self.settings.connect_lazy()?;
        Ok(self.finish(connection, Script::new(SCRIPT)))
    }

    fn finish(self, connection: ConnectionManager, script: Script) -> RedisLimiter {
        RedisLimiter {
            inner: Arc::new(Inner {
                redis: self.settings.client(
                    connection,
                    Breaker::new(
                        "redis rate limiter",
                        "verdicts are Unavailable until it answers",
                    ),
                ),
                script,
                namespace: self.settings.namespace,
                leases: self.max_lease.map(Leases::new),
            }),
        }
    }
}

impl fmt::Debug for RedisLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RedisLimiterBuilder");
        self.settings.describe(&mut debug);
        debug.field("local_first", &self.max_lease).finish()
    }
}

// ===== RedisLimiter =====

/// Budgets kept in Redis, shared by every process using the same Redis and namespace: see
/// the [module documentation](self).
///
/// Clones share the connection (and, in local-first mode, the leases).
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server, called within the timeout, failing fast while it can't be reached.
    redis: RedisClient,
    script: Script,
    namespace: String,
    /// Local-first mode's leases; `None` in exact mode.
    leases: Option<Leases>,
}

impl RedisLimiter {
    /// Settings for a limiter on the Redis at `url` (`redis://[user:password@]host[:port][/db]`
    /// or `redis+unix:///path`), with the defaults: exact mode, namespace
    /// [`DEFAULT_NAMESPACE`], timeout [`DEFAULT_TIMEOUT`].
    pub fn builder(url: impl Into<String>) -> RedisLimiterBuilder {
        RedisLimiterBuilder {
            settings: RedisSettings::new(url.into(), DEFAULT_NAMESPACE),
            max_lease: None,
        }
    }

    /// A limiter in exact mode with the default settings, connected to `url`.
    ///
    /// # Errors
    ///
    /// As [`RedisLimiterBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Self, RedisLimiterError> {
        Self::builder(url).connect().await
    }

    /// The Redis key holding `key`'s budget.
    pub fn redis_key(&self, key: BudgetKey) -> String {
        self.inner.redis_key(key)
    }
}

impl RateLimiter for RedisLimiter {
    fn acquire(&self, key: BudgetKey, limit: RateLimit) -> Acquire {
        match &self.inner.leases {
            None => {
                let inner = Arc::clone(&self.inner);
                Acquire::Pending(Box::pin(async move {
                    match inner.spend(key, limit, 1).await {
                        Some(spent) => spent.verdict(limit),
                        None => Verdict::Unavailable,
                    }
                }))
            }
            Some(leases) => {
                let now = Instant::now();
                match leases.take(&self.inner, key, limit, now, false) {
                    Local::Decided(verdict) => Acquire::Ready(verdict),
                    Local::Wait(fetch) => {
                        // Counted as waiting by `take`; uncounted when this is dropped.
                        let waiter = Waiter {
                            inner: Arc::clone(&self.inner),
                            key,
                        };
                        let inner = Arc::clone(&self.inner);
                        Acquire::Pending(Box::pin(async move {
                            let wait = waiter.wait(limit, fetch);
                            tokio::time::timeout(inner.redis.timeout(), wait)
                                .await
                                .unwrap_or_else(|_| {
                                    // The lease request counts its own failure, if it fails.
                                    tracing::debug!(redis = %inner.redis.endpoint(), "timed out waiting for a lease");
                                    Verdict::Unavailable
                                })
                        }))
                    }
                }
            }
        }
    }
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("redis", &self.inner.redis.endpoint())
            .field("namespace", &self.inner.namespace)
            .field("timeout", &self.inner.redis.timeout())
            .field(
                "local_first",
                &self.inner.leases.as_ref().map(|leases| leases.max_lease),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::connection::endpoint;
    use super::*;

    #[test]
    fn debug_output_names_the_server_but_never_the_password() {
        let builder = RedisLimiter::builder("redis://user:hunter2@cache.internal:6380/2");
        let printed = format!("{builder:?}");
        assert!(printed.contains("cache.internal:6380"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(endpoint("not a url"), "?");
    }
}
