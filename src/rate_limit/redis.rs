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

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Script};
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared as SharedFuture};

use super::{Acquire, Budget, BudgetKey, RateLimit, RateLimiter, Verdict};
use crate::hashing::DigestHasher;
use crate::sync::lock;

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

/// Failures are logged at `warn` at most this often (the others at `debug`).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// After this many failed calls in a row, verdicts are Unavailable at once (no wait)...
const FAIL_FAST_AFTER: u32 = 3;
/// ... for this long; then one call tries Redis again, and the first success ends it.
const FAIL_FAST_FOR: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Local-first lease shards.
const SHARDS: usize = 16;
/// A shard is swept of finished leases when it grows past this many (and then past twice
/// what the sweep left).
const FIRST_SWEEP: usize = 256;

/// The GCRA of `gcra.rs` in microseconds on Redis's clock. Spends `cost` requests, or as many
/// as fit if fewer do (at least one, else none).
///
/// KEYS[1]: the budget, a string `"<TAT µs> <interval µs>"` (the interval the TAT was counted
/// in, so a changed limit counts the requests already spent one for one).
/// ARGV: window (µs), requests per window, cost.
/// Answers {granted, remaining, reset (µs), retry after (µs)}; granted 0 means refused. A
/// refusal writes nothing: what is stored only ever moves by requests allowed.
/// Lua numbers are doubles: every value stays far below 2^53 (now is ~2^51 µs). The interval
/// is the exact quotient, not rounded to a microsecond (a million a second would otherwise
/// refill at a whole microsecond each); `EPSILON` absorbs the quotient's last-bit error when a
/// count is taken from it.
const SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local EPSILON = 1e-6
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local capacity = tonumber(ARGV[1])
local interval = capacity / tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local stored = redis.call('GET', KEYS[1])
local tat, counted = 0, 0
if stored then
  local at, per = string.match(stored, '^(%S+) (%S+)$')
  tat, counted = tonumber(at) or 0, tonumber(per) or 0
end
local start = tat
if counted ~= interval and counted > 0 and tat > now then
  -- Counted under another limit: the requests spent, one interval each under this one.
  start = now + math.ceil((tat - now) / counted - EPSILON) * interval
end
-- No more than the whole budget can have been spent, whatever the limit was.
start = math.min(math.max(start, now), now + capacity)
local fits = math.floor((capacity - (start - now)) / interval + EPSILON)
if fits >= 1 then
  local granted = math.min(cost, fits)
  local ahead = start + interval * granted - now
  redis.call('SET', KEYS[1], string.format('%.17g %.17g', now + ahead, interval),
    'PX', math.max(1, math.ceil(ahead / 1000)))
  return {granted, fits - granted, math.ceil(ahead), 0}
end
return {0, 0, math.ceil(start - now), math.ceil(math.max(1, start + interval - now - capacity))}
";

// ===== errors =====

/// Why a [`RedisLimiter`] could not be built.
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
    /// [`RedisLimiterBuilder::connect_lazy`] was called outside a Tokio runtime.
    NoRuntime,
}

impl fmt::Display for RedisLimiterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl(source) => write!(f, "invalid Redis URL: {source}"),
            Self::Connect(source) => write!(f, "could not connect to Redis: {source}"),
            Self::Timeout => f.write_str("timed out connecting to Redis"),
            Self::NoRuntime => f.write_str("a lazy Redis limiter needs a Tokio runtime"),
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
    /// May hold a password: never printed.
    url: String,
    namespace: String,
    timeout: Duration,
    connect_timeout: Duration,
    max_lease: Option<u32>,
}

impl RedisLimiterBuilder {
    /// Budget keys are named `<namespace>:<budget key as 32 hex digits>` (default
    /// [`DEFAULT_NAMESPACE`]). Processes share budgets when they share the Redis database and
    /// the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The longest a verdict may take, connection included (default [`DEFAULT_TIMEOUT`]);
    /// after it, the verdict is [`Verdict::Unavailable`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest [`connect`](Self::connect) waits for the first connection (default
    /// [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
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
        let (client, config) = self.client()?;
        let script = Script::new(SCRIPT);
        let connect_timeout = self.connect_timeout;
        let connecting = async {
            // One plain attempt first, so that a refused connection or bad credentials are
            // reported at once (the manager would retry them until the timeout), and the
            // script is loaded.
            let mut first = client.get_multiplexed_async_connection().await?;
            script.load_async(&mut first).await?;
            ConnectionManager::new_with_config(client, config).await
        };
        let connection = tokio::time::timeout(connect_timeout, connecting)
            .await
            .map_err(|_| RedisLimiterError::Timeout)?
            .map_err(|error| RedisLimiterError::Connect(error.into()))?;
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
        let (client, config) = self.client()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RedisLimiterError::NoRuntime);
        }
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| RedisLimiterError::Connect(error.into()))?;
        Ok(self.finish(connection, Script::new(SCRIPT)))
    }

    fn client(&self) -> Result<(Client, ConnectionManagerConfig), RedisLimiterError> {
        let client = Client::open(self.url.as_str())
            .map_err(|error| RedisLimiterError::InvalidUrl(error.into()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout.min(Duration::from_secs(1))))
            .set_max_delay(MAX_RECONNECT_DELAY);
        Ok((client, config))
    }

    fn finish(self, connection: ConnectionManager, script: Script) -> RedisLimiter {
        RedisLimiter {
            inner: Arc::new(Inner {
                connection,
                script,
                endpoint: endpoint(&self.url),
                namespace: self.namespace,
                timeout: self.timeout,
                leases: self.max_lease.map(Leases::new),
                last_warning: Mutex::new(None),
                failures: AtomicU32::new(0),
                retry_at: AtomicU64::new(0),
                origin: Instant::now(),
            }),
        }
    }
}

impl fmt::Debug for RedisLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiterBuilder")
            .field("redis", &endpoint(&self.url))
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("local_first", &self.max_lease)
            .finish()
    }
}

/// Where `url` points, without credentials: `host:port` (or the socket path), or `?` if it
/// doesn't parse.
fn endpoint(url: &str) -> String {
    Client::open(url).map_or_else(
        |_| "?".to_owned(),
        |client| client.get_connection_info().addr().to_string(),
    )
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
    connection: ConnectionManager,
    script: Script,
    /// `host:port`, for logs: the URL itself may hold a password.
    endpoint: String,
    namespace: String,
    timeout: Duration,
    /// Local-first mode's leases; `None` in exact mode.
    leases: Option<Leases>,
    last_warning: Mutex<Option<Instant>>,
    /// Failed calls in a row.
    failures: AtomicU32,
    /// While failing fast: until when, in nanoseconds since `origin` (0: not failing fast).
    retry_at: AtomicU64,
    origin: Instant,
}

impl RedisLimiter {
    /// Settings for a limiter on the Redis at `url` (`redis://[user:password@]host[:port][/db]`
    /// or `redis+unix:///path`), with the defaults: exact mode, namespace
    /// [`DEFAULT_NAMESPACE`], timeout [`DEFAULT_TIMEOUT`].
    pub fn builder(url: impl Into<String>) -> RedisLimiterBuilder {
        RedisLimiterBuilder {
            url: url.into(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
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
                            tokio::time::timeout(inner.timeout, wait)
                                .await
                                .unwrap_or_else(|_| {
                                    // The lease request counts its own failure, if it fails.
                                    tracing::debug!(redis = %inner.endpoint, "timed out waiting for a lease");
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
            .field("redis", &self.inner.endpoint)
            .field("namespace", &self.inner.namespace)
            .field("timeout", &self.inner.timeout)
            .field(
                "local_first",
                &self.inner.leases.as_ref().map(|leases| leases.max_lease),
            )
            .finish()
    }
}

/// The script's answer.
#[derive(Debug, Clone, Copy)]
struct Spent {
    /// Requests spent: 0 if refused.
    granted: u32,
    remaining: u32,
    reset: Duration,
    retry_after: Duration,
}

impl Spent {
    fn verdict(self, limit: RateLimit) -> Verdict {
        let budget = Budget::new(limit, self.remaining, self.reset, self.retry_after);
        if self.granted > 0 {
            Verdict::Allowed(budget)
        } else {
            Verdict::Limited(budget)
        }
    }
}

/// Why a script call gave no answer.
enum Failure {
    Timeout,
    Redis(RedisError),
}

impl Failure {
    /// Whether the failure says Redis can't be reached (rather than refusing one call).
    fn is_outage(&self) -> bool {
        match self {
            Self::Timeout => true,
            Self::Redis(error) => {
                error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
            }
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::Redis(error) => error.fmt(f),
        }
    }
}

impl Inner {
    /// Spends up to `cost` requests of `key`'s budget in Redis; `None` (logged) if Redis
    /// didn't answer in time.
    async fn spend(&self, key: BudgetKey, limit: RateLimit, cost: u32) -> Option<Spent> {
        if !self.may_call() {
            return None;
        }
        let window_us = u64::from(limit.per_seconds()) * 1_000_000;
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(self.redis_key(key));
        invocation
            .arg(window_us)
            .arg(limit.requests())
            .arg(cost.max(1));
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut connection);
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                self.failed(&Failure::Redis(error));
                return None;
            }
            Err(_) => {
                self.failed(&Failure::Timeout);
                return None;
            }
        };
        self.succeeded();
        let (granted, remaining, reset, retry_after) = answer;
        let count = |value: i64| u32::try_from(value.max(0)).unwrap_or(u32::MAX);
        let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
        Some(Spent {
            granted: count(granted),
            remaining: count(remaining),
            reset: micros(reset),
            retry_after: micros(retry_after),
        })
    }

    fn redis_key(&self, key: BudgetKey) -> String {
        format!("{}:{:032x}", self.namespace, key.get())
    }

    fn nanos(&self) -> u64 {
        // + 1: zero means "not failing fast".
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Whether to call Redis: not while failing fast, except for one call (the probe) once
    /// the pause is over, which pushes the pause on by one timeout while it runs.
    fn may_call(&self) -> bool {
        let retry_at = self.retry_at.load(Ordering::Acquire);
        if retry_at == 0 {
            return true;
        }
        let now = self.nanos();
        if now < retry_at {
            return false;
        }
        let probe_until =
            now.saturating_add(u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX));
        self.retry_at
            .compare_exchange(retry_at, probe_until, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            if self.retry_at.swap(0, Ordering::AcqRel) != 0 {
                tracing::info!(redis = %self.endpoint, "redis rate limiter answers again");
            }
        }
    }

    /// Counts a failed call (failing fast after [`FAIL_FAST_AFTER`] in a row) and logs it: at
    /// `warn` once per [`WARN_EVERY`], else at `debug`.
    fn failed(&self, failure: &Failure) {
        // Only an unreachable Redis counts towards failing fast: an error about one key (a
        // value of the wrong type under the namespace) must not stop the others.
        if failure.is_outage()
            && self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= FAIL_FAST_AFTER
        {
            let pause = u64::try_from(FAIL_FAST_FOR.as_nanos()).unwrap_or(u64::MAX);
            self.retry_at
                .store(self.nanos().saturating_add(pause), Ordering::Release);
        }
        let warn = {
            let mut last = lock(&self.last_warning);
            let due = last.is_none_or(|at| at.elapsed() >= WARN_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if warn {
            tracing::warn!(
                redis = %self.endpoint,
                error = %failure,
                "redis rate limiter unavailable: verdicts are Unavailable until it answers"
            );
        } else {
            tracing::debug!(redis = %self.endpoint, error = %failure, "redis rate limiter call failed");
        }
    }
}

/// A request waiting for a lease, counted in its key's entry while it waits.
struct Waiter {
    inner: Arc<Inner>,
    key: BudgetKey,
}

impl Waiter {
    /// Waits for `fetch`, then spends from the lease it left (fetching again if other
    /// requests spent it first). The caller bounds it with the limiter's timeout.
    async fn wait(self, limit: RateLimit, mut fetch: Fetch) -> Verdict {
        let Some(leases) = &self.inner.leases else {
            return Verdict::Unavailable;
        };
        loop {
            if fetch.await == Fetched::Failed {
                return Verdict::Unavailable;
            }
            match leases.take(&self.inner, self.key, limit, Instant::now(), true) {
                Local::Decided(verdict) => return verdict,
                Local::Wait(next) => fetch = next,
            }
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(leases) = &self.inner.leases {
            if let Some(entry) = leases.shard(self.key).entries.get_mut(&self.key) {
                entry.waiting = entry.waiting.saturating_sub(1);
            }
        }
    }
}

// ===== local-first leases =====

/// A lease request in flight, shared by every request waiting for it.
type Fetch = SharedFuture<BoxFuture<'static, Fetched>>;

/// How a lease request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
    /// Redis answered; the lease (or refusal) is in place.
    Done,
    /// Redis didn't answer in time.
    Failed,
}

/// What [`Leases::take`] could do without Redis.
enum Local {
    Decided(Verdict),
    Wait(Fetch),
}

struct Leases {
    max_lease: u32,
    shards: Box<[Mutex<Shard>]>,
}

struct Shard {
    entries: HashMap<BudgetKey, Entry, DigestHasher>,
    sweep_at: usize,
}

/// One key's local state.
struct Entry {
    /// The limit the state is for; a request under another limit starts afresh.
    limit: RateLimit,
    state: State,
    /// The lease request in flight, with its number.
    fetching: Option<(u64, Fetch)>,
    /// The number of the next lease request.
    next_fetch: u64,
    /// Requests waiting for a lease: the next lease request asks for at least as many.
    waiting: u32,
}

enum State {
    Empty,
    /// Requests leased from Redis, spendable until `expires`.
    Leased {
        tokens: u32,
        expires: Instant,
        /// When Redis answered, and what it said was left after the lease.
        at: Instant,
        remaining: u32,
        reset: Duration,
    },
    /// Redis refused: no request fits before `until`.
    Refused {
        until: Instant,
        at: Instant,
        reset: Duration,
    },
}

impl Entry {
    fn idle(&self, now: Instant) -> bool {
        self.fetching.is_none()
            && self.waiting == 0
            && match self.state {
                State::Empty => true,
                State::Leased {
                    tokens, expires, ..
                } => tokens == 0 || expires <= now,
                State::Refused { until, .. } => until <= now,
            }
    }
}

impl Leases {
    fn new(max_lease: u32) -> Self {
        Self {
            max_lease,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::with_hasher(DigestHasher::default()),
                        sweep_at: FIRST_SWEEP,
                    })
                })
                .collect(),
        }
    }

    fn lease_size(&self, limit: RateLimit) -> u32 {
        (limit.requests() / 10).min(self.max_lease).max(1)
    }

    /// How long a lease of `size` may be spent: the time Redis takes to refill it, at least a
    /// second, at most the window.
    fn lifetime(limit: RateLimit, size: u32) -> Duration {
        let window = limit.window();
        (window / limit.requests() * size).clamp(Duration::from_secs(1), window)
    }

    fn shard(&self, key: BudgetKey) -> MutexGuard<'_, Shard> {
        lock(&self.shards[key.shard(SHARDS)])
    }

    /// Spends one request of `key`'s lease, or refuses it as Redis last said; else returns
    /// the lease request to wait for (starting one if none is in flight), counting the caller
    /// as waiting unless it already is (`waiter`).
    fn take(
        &self,
        inner: &Arc<Inner>,
        key: BudgetKey,
        limit: RateLimit,
        now: Instant,
        waiter: bool,
    ) -> Local {
        let mut shard = self.shard(key);
        if !shard.entries.contains_key(&key) && shard.entries.len() >= shard.sweep_at {
            shard.entries.retain(|_, entry| !entry.idle(now));
            shard.sweep_at = (shard.entries.len() * 2).max(FIRST_SWEEP);
        }
        let entry = shard.entries.entry(key).or_insert_with(|| Entry {
            limit,
            state: State::Empty,
            fetching: None,
            next_fetch: 0,
            waiting: 0,
        });
        if entry.limit != limit {
            entry.limit = limit;
            entry.state = State::Empty;
            entry.fetching = None;
        }
        match &mut entry.state {
            State::Leased {
                tokens,
                expires,
                at,
                remaining,
                reset,
            } if *tokens > 0 && now < *expires => {
                *tokens -= 1;
                let budget = Budget::new(
                    limit,
                    remaining.saturating_add(*tokens),
                    reset.saturating_sub(now - *at),
                    Duration::ZERO,
                );
                return Local::Decided(Verdict::Allowed(budget));
            }
            State::Refused { until, at, reset } if now < *until => {
                let budget = Budget::new(limit, 0, reset.saturating_sub(now - *at), *until - now);
                return Local::Decided(Verdict::Limited(budget));
            }
            _ => entry.state = State::Empty,
        }
        if !waiter {
            entry.waiting = entry.waiting.saturating_add(1);
        }
        if let Some((_, fetch)) = &entry.fetching {
            return Local::Wait(fetch.clone());
        }
        let number = entry.next_fetch;
        entry.next_fetch += 1;
        // Enough for every request waiting now (they spend it at once), and a lease.
        let cost = self
            .lease_size(limit)
            .max(entry.waiting)
            .min(limit.requests());
        let fetch = Arc::clone(inner)
            .fetch(key, limit, cost, number)
            .boxed()
            .shared();
        entry.fetching = Some((number, fetch.clone()));
        // Run it to the end even if every request waiting for it goes away.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(fetch.clone());
        }
        Local::Wait(fetch)
    }
}

impl Inner {
    /// Lease request number `number`: leases `cost` requests (or what is left) of `key`'s
    /// budget and puts the lease, or the refusal, in place.
    async fn fetch(
        self: Arc<Self>,
        key: BudgetKey,
        limit: RateLimit,
        cost: u32,
        number: u64,
    ) -> Fetched {
        let spent = self.spend(key, limit, cost).await;
        let Some(leases) = &self.leases else {
            return Fetched::Failed;
        };
        let now = Instant::now();
        let mut shard = leases.shard(key);
        let Some(entry) = shard.entries.get_mut(&key) else {
            return Fetched::Done;
        };
        if !matches!(entry.fetching, Some((current, _)) if current == number) {
            // Superseded (the key's limit changed meanwhile): its answer is for another limit.
            return Fetched::Done;
        }
        entry.fetching = None;
        let Some(spent) = spent else {
            return Fetched::Failed;
        };
        entry.state = if spent.granted > 0 {
            State::Leased {
                tokens: spent.granted,
                expires: now + Leases::lifetime(limit, leases.lease_size(limit)),
                at: now,
                remaining: spent.remaining,
                reset: spent.reset,
            }
        } else {
            State::Refused {
                until: now + spent.retry_after,
                at: now,
                reset: spent.reset,
            }
        };
        Fetched::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, per_seconds: u32) -> RateLimit {
        RateLimit::new(requests, per_seconds).unwrap()
    }

    #[test]
    fn a_lease_is_a_tenth_of_the_limit_at_most_and_one_at_least() {
        let leases = Leases::new(DEFAULT_MAX_LEASE);
        assert_eq!(leases.lease_size(limit(5, 2)), 1);
        assert_eq!(leases.lease_size(limit(50, 60)), 5);
        assert_eq!(leases.lease_size(limit(100, 60)), 10);
        assert_eq!(leases.lease_size(limit(100_000, 1)), 10);
        assert_eq!(Leases::new(1).lease_size(limit(100_000, 1)), 1);
    }

    #[test]
    fn a_lease_lives_as_long_as_its_refill_within_a_second_and_the_window() {
        // 100 per minute: 0.6 s a request, 6 s for ten.
        assert_eq!(Leases::lifetime(limit(100, 60), 10), Duration::from_secs(6));
        assert_eq!(Leases::lifetime(limit(1000, 1), 10), Duration::from_secs(1));
        assert_eq!(Leases::lifetime(limit(10, 60), 10), Duration::from_secs(60));
    }

    #[test]
    fn debug_output_names_the_server_but_never_the_password() {
        let builder = RedisLimiter::builder("redis://user:hunter2@cache.internal:6380/2");
        let printed = format!("{builder:?}");
        assert!(printed.contains("cache.internal:6380"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(endpoint("not a url"), "?");
    }
}
