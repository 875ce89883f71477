//! The resolver cache: moka-backed positive and negative entries keyed by digest, coalesced
//! misses, and invalidation without stale entries.
//!
//! moka is the record; a hit on an accepted key is served by the per-thread front or the read
//! index in front of it (`index`), synchronously: no future, no allocation, one shard's read
//! lock. One lookup in sixteen past the front also reads moka, and that read may run moka's
//! housekeeping (its evictions, and their notices to the index) on the request's thread.
//! A miss starts one resolver call per key, however many requests wait for it; its answer is
//! cached only if no invalidation happened while it ran, so a lookup that raced a revoke can
//! never put the revoked key back (see [`CachedResolver`]).

mod front;
mod index;
mod known;

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::front::Behind;
use self::index::ReadIndex;
use self::known::KnownKeys;
use crate::feed::Trust;
use crate::hashing::DigestHasher;
use crate::invalidation::{Invalidation, InvalidationBus, InvalidationListener};
use crate::key::{ApiKey, KeyDigest, KeyPrefix};
use crate::metrics::Metrics;
use crate::resolver::Resolver;
use crate::sync::{lock, read, write};

// ===== CacheConfig =====

/// Sizes and lifetimes of the resolver cache.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::cache::CacheConfig;
///
/// let config = CacheConfig::default()
///     .positive_ttl(Duration::from_secs(60))
///     .negative_ttl(Duration::from_secs(2))
///     .lookup_timeout(Some(Duration::from_millis(500)));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct CacheConfig {
    positive_ttl: Duration,
    negative_ttl: Duration,
    positive_capacity: u64,
    negative_capacity: u64,
    lookup_timeout: Option<Duration>,
    max_concurrent_lookups: Option<usize>,
    known_key_lookups: usize,
    known_key_window: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            positive_ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            positive_capacity: 100_000,
            negative_capacity: 100_000,
            lookup_timeout: Some(Duration::from_secs(5)),
            max_concurrent_lookups: Some(1024),
            known_key_lookups: 64,
            known_key_window: Duration::from_secs(600),
        }
    }
}

impl CacheConfig {
    /// How long an accepted key stays cached (default 30 s). Changes made through
    /// [`KeyManager`](crate::KeyManager) invalidate at once; this bounds staleness only for
    /// changes made behind its back.
    #[must_use]
    pub fn positive_ttl(mut self, ttl: Duration) -> Self {
        self.positive_ttl = ttl;
        self
    }

    /// How long a refused key stays cached (default 5 s). This bounds how often one unknown
    /// key reaches the resolver.
    #[must_use]
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Most accepted keys cached at once (default 100,000).
    #[must_use]
    pub fn positive_capacity(mut self, entries: u64) -> Self {
        self.positive_capacity = entries;
        self
    }

    /// Most refused keys cached at once (default 100,000). Kept apart from accepted keys, so
    /// a flood of unknown keys can't evict valid ones.
    #[must_use]
    pub fn negative_capacity(mut self, entries: u64) -> Self {
        self.negative_capacity = entries;
        self
    }

    /// How long one resolver call may take before the request is answered 503 (default
    /// 5 s; `None` waits forever).
    #[must_use]
    pub fn lookup_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// Most resolver calls running at once (default 1,024; `None` for no limit). A cache miss
    /// that would start one more is answered 503 at once instead of queueing, so a flood of
    /// unknown keys can't pile up on the store. Requests joining a call already running for
    /// their key don't count. Keys accepted recently are never shed: see
    /// [`known_key_lookups`](Self::known_key_lookups).
    #[must_use]
    pub fn max_concurrent_lookups(mut self, limit: Option<usize>) -> Self {
        self.max_concurrent_lookups = limit;
        self
    }

    /// Resolver calls kept apart for keys accepted within the last `window` (defaults 64 and
    /// 10 minutes), so that a flood of guessed keys can't lock real users out.
    ///
    /// Anyone can mint well-formed keys, and each distinct one costs a resolver call. When
    /// [`max_concurrent_lookups`](Self::max_concurrent_lookups) are all taken, a miss for a
    /// key this cache accepted within `window` (its entry expired, or a change feed is down)
    /// waits for one of these `calls` instead of being answered 503; it still gives up after
    /// the [`lookup_timeout`](Self::lookup_timeout). A key never accepted, or not for longer
    /// than `window`, has no such claim. With no limit on lookups this changes nothing.
    #[must_use]
    pub fn known_key_lookups(mut self, calls: usize, window: Duration) -> Self {
        self.known_key_lookups = calls;
        self.known_key_window = window;
        self
    }
}

// ===== outcomes =====

/// A cached answer.
pub(crate) enum Cached<A> {
    Valid(Arc<A>),
    Refused,
}

/// The answer of one resolver call, shared by every request that waited for it.
#[derive(Debug)]
pub(crate) enum Resolution<A> {
    Found(Arc<A>),
    Refused,
    Failed(ResolveFailure),
}

impl<A> Clone for Resolution<A> {
    fn clone(&self) -> Self {
        match self {
            Self::Found(account) => Self::Found(Arc::clone(account)),
            Self::Refused => Self::Refused,
            Self::Failed(failure) => Self::Failed(*failure),
        }
    }
}

/// Why a resolver call gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResolveFailure {
    Error,
    TimedOut,
    Panicked,
}

/// A resolver call in progress; cloning it joins the call.
pub(crate) type PendingResolution<A> = Shared<BoxFuture<'static, Resolution<A>>>;

// ===== CachedResolver =====

/// A [`Resolver`] behind a cache. Usually built by
/// [`ApiKeyLayer`](crate::ApiKeyLayer); cloning shares the cache.
///
/// **Concurrent requests with one uncached key** share one resolver call; the call runs as
/// its own task, so it finishes (and is cached) even if every waiting request is dropped.
///
/// **Errors, timeouts and panics** of the resolver are answered 503 to every waiting
/// request and never cached: the next request calls the resolver again.
///
/// **Invalidations** ([`Invalidation`]) remove the key's positive and negative entries and
/// detach any call in progress for it before `invalidate` returns. Every call remembers the
/// invalidation epoch it started in and caches its answer only if the epoch is unchanged,
/// checked and inserted under one lock, so an answer read before a revoke can't be cached
/// after it. Entries carry the epoch they were cached in, and [`Invalidation::All`] retires
/// every older one at once.
///
/// **While a change feed of a subscribed bus is not trusted** (lost, or overdue with its
/// heartbeat, see [`feed`](crate::feed)), nothing is served from the cache or cached: every
/// request is resolved.
pub struct CachedResolver<R: Resolver> {
    shared: Arc<CacheShared<R>>,
}

struct CacheShared<R: Resolver> {
    resolver: R,
    /// Distinguishes this cache's slots in the per-thread front.
    id: usize,
    /// Accepted keys: the record (size, eviction, TTL).
    positive: moka::sync::Cache<KeyDigest, Positive<R::Account>, DigestHasher>,
    /// What `positive` holds, in shards of plain maps, for hits (see `index`).
    index: Arc<ReadIndex<R::Account>>,
    positive_ttl: Duration,
    /// Refused keys, with when their entry expires.
    negative: moka::sync::Cache<KeyDigest, Negative, DigestHasher>,
    negative_ttl: Duration,
    in_flight: Mutex<HashMap<KeyDigest, InFlight<R::Account>, DigestHasher>>,
    /// Bumped by every invalidation; the write lock is held while entries are removed.
    epoch: RwLock<u64>,
    /// The epoch, published after an invalidation's removals (for the lock-free front).
    published_epoch: AtomicU64,
    /// The epoch of the last [`Invalidation::All`]: entries cached in an older epoch are
    /// ignored, whatever moka's `invalidate_all` kept of them.
    cleared_epoch: AtomicU64,
    /// The trust state of every bus the cache listens to: while any is untrusted, nothing is
    /// cached or served from the cache.
    trust: Vec<Arc<Trust>>,
    lookup_timeout: Option<Duration>,
    /// Resolver calls anyone may start; `None` for no limit.
    lookup_permits: Option<Arc<Semaphore>>,
    /// Resolver calls kept for known keys when `lookup_permits` are all taken.
    known_key_permits: Arc<Semaphore>,
    /// Keys accepted within the known-key window (plus the positive TTL, during which their
    /// uses were cache hits): those may wait for `known_key_permits`.
    known_keys: KnownKeys,
    metrics: Arc<Metrics>,
    /// Tests: let moka apply its pending work between a call's two inserts.
    #[cfg(test)]
    settle_between_inserts: std::sync::atomic::AtomicBool,
}

/// An accepted key's cache entry, in moka and in the read index alike: the account (one
/// allocation, shared by both), when the entry expires, and the epoch it was cached in.
struct Positive<A> {
    account: Arc<A>,
    fresh_until: Instant,
    epoch: u64,
}

impl<A> Clone for Positive<A> {
    fn clone(&self) -> Self {
        Self {
            account: Arc::clone(&self.account),
            fresh_until: self.fresh_until,
            epoch: self.epoch,
        }
    }
}

/// A refused key's cache entry: when it expires, and the epoch it was cached in.
#[derive(Clone, Copy)]
struct Negative {
    fresh_until: Instant,
    epoch: u64,
}

struct InFlight<A> {
    ticket: u64,
    lookup: PendingResolution<A>,
}

impl<R: Resolver> Clone for CachedResolver<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R: Resolver> CachedResolver<R> {
    /// Wraps `resolver` in a cache sized by `config`, counting into `metrics`, and subscribes
    /// it to every bus in `buses` for as long as it lives.
    pub(crate) fn new(
        resolver: R,
        config: &CacheConfig,
        metrics: Arc<Metrics>,
        buses: &[InvalidationBus],
    ) -> Self {
        let index = Arc::new(ReadIndex::new());
        let listening = Arc::clone(&index);
        let positive = moka::sync::Cache::builder()
            .max_capacity(config.positive_capacity)
            .time_to_live(config.positive_ttl)
            // Whatever moka drops leaves the index with it (if the index still holds that very
            // entry, not a newer one).
            .eviction_listener(
                move |digest: Arc<KeyDigest>, dropped: Positive<_>, _cause| {
                    listening.remove_if_holds(&digest, &dropped.account);
                },
            )
            .build_with_hasher(DigestHasher::default());
        let negative = moka::sync::Cache::builder()
            .max_capacity(config.negative_capacity)
            .time_to_live(config.negative_ttl)
            .build_with_hasher(DigestHasher::default());
        let known_keys = KnownKeys::new(
            config.known_key_window.saturating_add(config.positive_ttl),
            usize::try_from(config.positive_capacity).unwrap_or(usize::MAX),
        );
        let cache = Self {
            shared: Arc::new(CacheShared {
                resolver,
                id: next_id(),
                positive,
                index,
                positive_ttl: config.positive_ttl,
                negative_ttl: config.negative_ttl,
                negative,
                in_flight: Mutex::new(HashMap::with_hasher(DigestHasher::default())),
                epoch: RwLock::new(0),
                published_epoch: AtomicU64::new(0),
                cleared_epoch: AtomicU64::new(0),
                trust: buses.iter().map(InvalidationBus::trust).collect(),
                lookup_timeout: config.lookup_timeout,
                lookup_permits: config
                    .max_concurrent_lookups
                    .map(|limit| Arc::new(Semaphore::new(limit))),
                known_key_permits: Arc::new(Semaphore::new(config.known_key_lookups)),
                known_keys,
                metrics,
                #[cfg(test)]
                settle_between_inserts: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        for bus in buses {
            bus.subscribe(&cache.shared);
        }
        cache
    }

    /// The cached answer for `digest` at `now`, if any: synchronous, allocation-free.
    #[inline(always)]
    pub(crate) fn cached(&self, digest: &KeyDigest, now: Instant) -> Option<Cached<R::Account>> {
        let shared = &self.shared;
        if !shared.trusted() {
            return None;
        }
        // Read before the lookups: whatever they find is tagged with an epoch no newer than
        // itself, so the invalidation that removes an entry also retires its front copies.
        let at = (shared.published_epoch.load(Ordering::Acquire), now);
        if let Some(answer) = front::get(shared.id, digest, at) {
            return Some(answer);
        }
        let report = front::report_this_one();
        let held = shared.held(digest, now);
        if report || held.is_none() {
            // For moka's frequency sketch and access order only (the index answers): every
            // miss, so that a newly asked-for key is admitted as soon as moka alone would
            // admit it, and one in sixteen of the index's hits, so that the keys it holds
            // still rank as hot. The only reads of moka's positive cache.
            let _ = shared.positive.get(digest);
        }
        let held = held?;
        front::remember(shared.id, digest, at, &held, report);
        Some(held.answer)
    }

    /// Joins the resolver call for `digest`, starting one if none is running.
    ///
    /// # Errors
    ///
    /// [`Overloaded`] if a new call is needed and `max_concurrent_lookups` are running.
    pub(crate) fn resolve(
        &self,
        key: &ApiKey,
        digest: KeyDigest,
    ) -> Result<PendingResolution<R::Account>, Overloaded> {
        self.join(digest, || Lookup::Key(key.clone()))
    }

    /// As [`resolve`](Self::resolve), for a key known by its prefix and digest only (an open
    /// response's, checked again after a change): a new call asks
    /// [`Resolver::resolve_again`].
    pub(crate) fn resolve_again(
        &self,
        prefix: KeyPrefix,
        digest: KeyDigest,
    ) -> Result<PendingResolution<R::Account>, Overloaded> {
        self.join(digest, || Lookup::Again(prefix))
    }

    /// The wrapped resolver.
    pub(crate) fn resolver_ref(&self) -> &R {
        &self.shared.resolver
    }

    fn join(
        &self,
        digest: KeyDigest,
        lookup: impl FnOnce() -> Lookup,
    ) -> Result<PendingResolution<R::Account>, Overloaded> {
        let shared = &self.shared;
        // Lock order everywhere: epoch, then in_flight.
        let epoch = read(&shared.epoch);
        let mut in_flight = lock(&shared.in_flight);
        if let Some(running) = in_flight.get(&digest) {
            shared.metrics.coalesced();
            return Ok(running.lookup.clone());
        }
        // A call for this key may have finished since the caller missed the cache: it cached
        // its answer before leaving the in-flight table, so look once more under the lock.
        if shared.trusted() {
            if let Some(held) = shared.held(&digest, Instant::now()) {
                shared.metrics.coalesced();
                return Ok(known_answer(held.answer));
            }
        }
        let permit = match &shared.lookup_permits {
            None => LookupPermit::Unlimited,
            Some(permits) => match Arc::clone(permits).try_acquire_owned() {
                Ok(permit) => LookupPermit::Held(permit),
                Err(_) if shared.known_keys.contains(&digest) => {
                    LookupPermit::Queued(Arc::clone(&shared.known_key_permits))
                }
                Err(_) => return Err(Overloaded),
            },
        };
        let started_in = *epoch;
        let ticket = next_ticket();
        let lookup = start_lookup(
            Arc::clone(shared),
            lookup(),
            digest,
            started_in,
            ticket,
            permit,
        );
        in_flight.insert(
            digest,
            InFlight {
                ticket,
                lookup: lookup.clone(),
            },
        );
        Ok(lookup)
    }

    /// Forgets everything cached for `digest` (see [`InvalidationListener`]).
    pub fn invalidate(&self, invalidation: &Invalidation) {
        self.shared.invalidate(invalidation);
    }

    /// Accepted keys in the read index now, fresh or not: after
    /// [`run_pending_tasks`](Self::run_pending_tasks), as many as moka holds, except entries
    /// an [`Invalidation::All`] retired (moka may keep those a while; they are never served).
    ///
    /// For tests (feature `test-util`): not part of the stable API.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn indexed_count(&self) -> usize {
        self.shared.index.len()
    }

    /// Lets moka apply its pending writes, evictions and expiries now (and tell the index).
    ///
    /// For tests (feature `test-util`): not part of the stable API.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn run_pending_tasks(&self) {
        self.shared.positive.run_pending_tasks();
        self.shared.negative.run_pending_tasks();
    }

    /// Entries cached now: `(accepted keys, refused keys)`. Approximate while writes are
    /// pending inside moka.
    ///
    /// For tests (feature `test-util`): not part of the stable API.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn entry_counts(&self) -> (u64, u64) {
        (
            self.shared.positive.entry_count(),
            self.shared.negative.entry_count(),
        )
    }
}

impl<R: Resolver> fmt::Debug for CachedResolver<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedResolver")
            .field("positive_entries", &self.shared.positive.entry_count())
            .field("negative_entries", &self.shared.negative.entry_count())
            .field("lookup_timeout", &self.shared.lookup_timeout)
            .finish_non_exhaustive()
    }
}

impl<R: Resolver> InvalidationListener for CacheShared<R> {
    fn invalidate(&self, invalidation: &Invalidation) {
        let mut epoch = write(&self.epoch);
        *epoch += 1;
        match invalidation {
            Invalidation::Key(digest) => {
                self.index.remove(digest);
                self.positive.invalidate(digest);
                self.negative.invalidate(digest);
                lock(&self.in_flight).remove(digest);
            }
            Invalidation::All => {
                self.cleared_epoch.store(*epoch, Ordering::Release);
                self.forget_everything();
            }
        }
        // Published only after the removals: see `cached`.
        self.published_epoch.store(*epoch, Ordering::Release);
        drop(epoch);
        self.metrics.invalidated();
    }
}

/// Too many resolver calls are running to start another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overloaded;

/// A resolver call's right to run.
enum LookupPermit {
    /// No limit is configured.
    Unlimited,
    /// One of `max_concurrent_lookups`, held until the call ends.
    Held(OwnedSemaphorePermit),
    /// A known key's call, waiting for one of the known-key permits.
    Queued(Arc<Semaphore>),
}

/// What a resolver call looks up: a whole key (a request's), or a key by its prefix and the
/// digest (an open response's, which keeps no plaintext).
enum Lookup {
    Key(ApiKey),
    Again(KeyPrefix),
}

impl Lookup {
    fn prefix(&self) -> KeyPrefix {
        match self {
            Self::Key(key) => key.prefix(),
            Self::Again(prefix) => *prefix,
        }
    }
}

fn start_lookup<R: Resolver>(
    shared: Arc<CacheShared<R>>,
    lookup: Lookup,
    digest: KeyDigest,
    started_in: u64,
    ticket: u64,
    permit: LookupPermit,
) -> PendingResolution<R::Account> {
    shared.metrics.resolver_called();
    let runtime = tokio::runtime::Handle::try_current().ok();
    // A timeout needs tokio's timer; without a runtime the call runs inline and unbounded.
    let timeout = runtime.as_ref().and(shared.lookup_timeout);
    let call = async move {
        // A panicking resolver must still finish its call, or its key would stay "in flight" forever.
        let resolved = AssertUnwindSafe(async {
            // The wait for a known-key permit counts towards the lookup timeout.
            let _permit = match permit {
                LookupPermit::Queued(permits) => permits.acquire_owned().await.ok(),
                LookupPermit::Held(permit) => Some(permit),
                LookupPermit::Unlimited => None,
            };
            match &lookup {
                Lookup::Key(key) => shared.resolver.resolve(key, &digest).await,
                Lookup::Again(prefix) => shared.resolver.resolve_again(prefix, &digest).await,
            }
        })
        .catch_unwind();
        let prefix = lookup.prefix();
        let answer = match timeout {
            Some(limit) => tokio::time::timeout(limit, resolved).await.ok(),
            None => Some(resolved.await),
        };
        let resolution = match answer {
            Some(Ok(Ok(Some(account)))) => Resolution::Found(Arc::new(account)),
            Some(Ok(Ok(None))) => Resolution::Refused,
            Some(Ok(Err(err))) => {
                tracing::warn!(%prefix, error = %err, "api key lookup failed");
                Resolution::Failed(ResolveFailure::Error)
            }
            Some(Err(_panic)) => {
                tracing::error!(%prefix, "api key resolver panicked");
                Resolution::Failed(ResolveFailure::Panicked)
            }
            None => {
                tracing::warn!(%prefix, "api key lookup timed out");
                Resolution::Failed(ResolveFailure::TimedOut)
            }
        };
        shared.finish_call(digest, started_in, ticket, &resolution);
        resolution
    };
    // Run the call as its own task so that it completes, and leaves the in-flight table,
    // even when every request waiting for it goes away.
    let joined: BoxFuture<'static, Resolution<R::Account>> = match runtime {
        Some(runtime) => {
            let task = runtime.spawn(call);
            async move {
                // Only a runtime shutting down cancels the task.
                task.await
                    .unwrap_or(Resolution::Failed(ResolveFailure::Panicked))
            }
            .boxed()
        }
        None => call.boxed(),
    };
    joined.shared()
}

impl<R: Resolver> CacheShared<R> {
    /// Whether every bus the cache listens to may be trusted now.
    #[inline]
    fn trusted(&self) -> bool {
        self.trust.iter().all(|trust| trust.trusted())
    }

    /// What the cache holds for `digest` at `now` and when it expires: an accepted key from
    /// the index (which holds every accepted key moka holds and may serve), a refused one from
    /// moka; neither if it was cached before the last [`Invalidation::All`].
    #[inline(always)]
    fn held(&self, digest: &KeyDigest, now: Instant) -> Option<Behind<R::Account>> {
        let cleared = self.cleared_epoch.load(Ordering::Acquire);
        if let Some((account, fresh_until)) = self.index.get(digest, cleared, now) {
            return Some(Behind {
                answer: Cached::Valid(account),
                fresh_until,
            });
        }
        // `get`, not `contains_key`: only reads teach moka's admission policy that a refused
        // key comes back, so a retried key keeps its entry while a flood of one-off keys churns.
        let entry = self.negative.get(digest)?;
        (entry.epoch >= cleared && now < entry.fresh_until).then_some(Behind {
            answer: Cached::Refused,
            fresh_until: entry.fresh_until,
        })
    }

    /// Tests: what moka would do if its housekeeping ran right between a call's two inserts
    /// (the index's and its own), as another thread's may.
    #[cfg(test)]
    fn between_inserts(&self) {
        if self.settle_between_inserts.load(Ordering::SeqCst) {
            self.positive.run_pending_tasks();
        }
    }

    /// Drops every entry and detaches every call in progress. Called with the epoch's write
    /// lock held.
    fn forget_everything(&self) {
        self.index.clear();
        self.positive.invalidate_all();
        self.negative.invalidate_all();
        lock(&self.in_flight).clear();
    }

    /// Caches a finished call's answer unless an invalidation happened since it started (or a
    /// channel is down), and removes the call from the in-flight table.
    fn finish_call(
        &self,
        digest: KeyDigest,
        started_in: u64,
        ticket: u64,
        lookup: &Resolution<R::Account>,
    ) {
        if let Resolution::Found(_) = lookup {
            // A claim on the known-key lookups, not an answer: kept whatever happened since.
            self.known_keys.insert(&digest);
        }
        let epoch = read(&self.epoch);
        if *epoch == started_in && self.trusted() {
            match lookup {
                // At capacity 0 moka holds nothing (and tells nothing of what it drops): so
                // neither does the index.
                Resolution::Found(_) if self.positive.policy().max_capacity() == Some(0) => {}
                Resolution::Found(account) => {
                    let entry = Positive {
                        account: Arc::clone(account),
                        fresh_until: Instant::now() + self.positive_ttl,
                        epoch: started_in,
                    };
                    // The index first: moka may drop its entry as soon as it has it (a refused
                    // admission, an eviction), and the listener must then find it to remove.
                    self.index.insert(digest, entry.clone());
                    #[cfg(test)]
                    self.between_inserts();
                    self.positive.insert(digest, entry);
                }
                Resolution::Refused => self.negative.insert(
                    digest,
                    Negative {
                        fresh_until: Instant::now() + self.negative_ttl,
                        epoch: started_in,
                    },
                ),
                Resolution::Failed(_) => self.metrics.resolver_failed(),
            }
        } else if let Resolution::Failed(_) = lookup {
            self.metrics.resolver_failed();
        }
        let mut in_flight = lock(&self.in_flight);
        if in_flight
            .get(&digest)
            .is_some_and(|entry| entry.ticket == ticket)
        {
            in_flight.remove(&digest);
        }
    }
}

/// An answer already known, in the shape of a call in progress.
fn known_answer<A: Send + Sync + 'static>(answer: Cached<A>) -> PendingResolution<A> {
    let lookup = match answer {
        Cached::Valid(account) => Resolution::Found(account),
        Cached::Refused => Resolution::Refused,
    };
    let ready: BoxFuture<'static, Resolution<A>> = std::future::ready(lookup).boxed();
    ready.shared()
}

fn next_id() -> usize {
    static IDS: AtomicUsize = AtomicUsize::new(0);
    IDS.fetch_add(1, Ordering::Relaxed)
}

fn next_ticket() -> u64 {
    static TICKETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    TICKETS.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::resolver::ResolveError;

    /// Refuses every key and counts its calls.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    /// The account `Counting` never finds.
    struct Nobody;

    impl crate::Account for Nobody {}

    #[async_trait]
    impl Resolver for Counting {
        type Account = Nobody;

        async fn resolve(&self, _: &ApiKey, _: &KeyDigest) -> Result<Option<Nobody>, ResolveError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        }
    }

    /// Accepts every key, as a new account each time.
    struct Accepting;

    /// The account `Accepting` finds.
    struct Somebody;

    impl crate::Account for Somebody {}

    #[async_trait]
    impl Resolver for Accepting {
        type Account = Somebody;

        async fn resolve(
            &self,
            _: &ApiKey,
            _: &KeyDigest,
        ) -> Result<Option<Somebody>, ResolveError> {
            Ok(Some(Somebody))
        }
    }

    fn accepting(capacity: u64) -> CachedResolver<Accepting> {
        let metrics = Arc::new(Metrics::default());
        let config = CacheConfig::default()
            .positive_capacity(capacity)
            .max_concurrent_lookups(None);
        CachedResolver::new(Accepting, &config, metrics, &[])
    }

    /// The index holds exactly what moka holds, entry for entry (the same account), once moka
    /// has applied its pending work.
    fn assert_index_mirrors_moka(cache: &CachedResolver<Accepting>) {
        let shared = &cache.shared;
        shared.positive.run_pending_tasks();
        let indexed = shared.index.entries();
        for (digest, account) in &indexed {
            let record = shared.positive.get(digest);
            assert!(
                record.is_some_and(|record| Arc::ptr_eq(&record.account, account)),
                "the index holds an entry moka doesn't"
            );
        }
        let recorded = shared.positive.iter().count();
        assert_eq!(indexed.len(), recorded, "indexed vs recorded entries");
    }

    /// A cache of `capacity` accepted keys, after one key's call.
    async fn with_one_accepted(capacity: u64) -> (CachedResolver<Accepting>, ApiKey, KeyDigest) {
        let cache = accepting(capacity);
        let (key, digest) = key();
        cache.resolve(&key, digest).expect("permit").await;
        (cache, key, digest)
    }

    /// A cache of one accepted key, holding one that moka has seen asked for `asked` times.
    async fn holding_one_key(asked: usize) -> (CachedResolver<Accepting>, KeyDigest) {
        let cache = accepting(1);
        let (key, digest) = key();
        cache.resolve(&key, digest).expect("permit").await;
        for _ in 0..asked {
            let _ = cache.shared.positive.get(&digest);
        }
        cache.shared.positive.run_pending_tasks();
        (cache, digest)
    }

    fn cache() -> CachedResolver<Counting> {
        let metrics = Arc::new(Metrics::default());
        CachedResolver::new(Counting::default(), &CacheConfig::default(), metrics, &[])
    }

    fn key() -> (ApiKey, KeyDigest) {
        let key = ApiKey::generate().expect("randomness");
        let digest = crate::key::Pepper::from_bytes([7; 32]).digest(&key);
        (key, digest)
    }

    #[tokio::test]
    async fn a_request_that_missed_just_before_a_call_finished_joins_its_answer() {
        let cache = cache();
        let (key, digest) = key();
        // The first request misses and starts the call, which finishes (caches its answer and
        // leaves the in-flight table).
        assert!(cache.cached(&digest, Instant::now()).is_none());
        let first = cache.resolve(&key, digest).expect("permit").await;
        assert!(matches!(first, Resolution::Refused));
        // A second request had missed the cache before that, and only now asks for a call.
        let second = cache.resolve(&key, digest).expect("permit").await;
        assert!(matches!(second, Resolution::Refused));
        assert_eq!(cache.resolver_ref().0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_accepted_key_is_indexed_and_a_refused_one_is_not() {
        let accepted = accepting(100);
        let (key, digest) = key();
        accepted.resolve(&key, digest).expect("permit").await;
        assert_eq!(accepted.shared.index.len(), 1);
        assert!(matches!(
            accepted.cached(&digest, Instant::now()),
            Some(Cached::Valid(_))
        ));
        assert_index_mirrors_moka(&accepted);

        let refused = cache();
        let (key, digest) = self::key();
        refused.resolve(&key, digest).expect("permit").await;
        assert!(matches!(
            refused.cached(&digest, Instant::now()),
            Some(Cached::Refused)
        ));
        assert_eq!(
            refused.shared.index.len(),
            0,
            "a refused key is never indexed"
        );
    }

    #[tokio::test]
    async fn whatever_moka_evicts_leaves_the_index_with_it() {
        let cache = accepting(8);
        for n in 0..300 {
            let (key, digest) = key();
            cache.resolve(&key, digest).expect("permit").await;
            // Every few keys, ask for some of the earlier ones again so that moka's admission
            // has frequencies to compare (and refuses some newcomers).
            if n % 3 == 0 {
                let _ = cache.cached(&digest, Instant::now());
            }
            assert_index_mirrors_moka(&cache);
        }
        assert!(cache.shared.index.len() <= 8);
    }

    #[tokio::test]
    async fn an_index_entry_past_its_ttl_is_not_served_even_if_moka_still_has_it() {
        let (cache, _, digest) = with_one_accepted(100).await;
        let later = Instant::now() + CacheConfig::default().positive_ttl;
        assert!(cache.cached(&digest, later).is_none());
        assert!(cache.cached(&digest, Instant::now()).is_some());
    }

    #[tokio::test]
    async fn an_invalidated_key_leaves_moka_and_the_index_at_once() {
        let cache = accepting(100);
        let (key, digest) = key();
        let (other_key, other) = self::key();
        cache.resolve(&key, digest).expect("permit").await;
        cache.resolve(&other_key, other).expect("permit").await;
        assert!(cache.cached(&digest, Instant::now()).is_some());
        cache.invalidate(&Invalidation::Key(digest));
        // Not after moka's housekeeping: before `invalidate` returned.
        assert!(cache.cached(&digest, Instant::now()).is_none());
        assert!(cache.shared.index.get(&digest, 0, Instant::now()).is_none());
        assert!(
            cache.cached(&other, Instant::now()).is_some(),
            "others stay"
        );
        assert_index_mirrors_moka(&cache);
    }

    #[tokio::test]
    async fn an_index_entry_cached_before_invalidate_all_is_never_served_after_it() {
        let (cache, _, digest) = with_one_accepted(100).await;
        let Some(Cached::Valid(account)) = cache.cached(&digest, Instant::now()) else {
            panic!("accepted");
        };
        cache.invalidate(&Invalidation::All);
        assert_eq!(cache.shared.index.len(), 0);
        // Put back what a reader racing the `All` could have left: an entry of the epoch
        // before it, in the index and in moka alike.
        let shared = &cache.shared;
        let before = *read(&shared.epoch) - 1;
        let fresh_until = Instant::now() + Duration::from_secs(60);
        shared.positive.insert(
            digest,
            Positive {
                account: Arc::clone(&account),
                fresh_until,
                epoch: before,
            },
        );
        // Planted after moka's insert: that insert's notice (for the pre-`All` entry, which
        // holds this same allocation) would otherwise remove it, and the check below would
        // pass whether or not the index honours `cleared_epoch`.
        shared.index.insert(
            digest,
            Positive {
                account,
                fresh_until,
                epoch: before,
            },
        );
        assert_eq!(shared.index.len(), 1, "the planted survivor is indexed");
        assert!(cache.cached(&digest, Instant::now()).is_none());
    }

    #[tokio::test]
    async fn moka_dropping_an_entry_between_the_two_inserts_leaves_nothing_in_the_index() {
        // A cache of one, holding a key moka has seen asked for: it refuses a newcomer nobody
        // asked it for as soon as its housekeeping runs, and here that runs between the two
        // inserts of the newcomer's call, as another thread's may.
        let (cache, _) = holding_one_key(3).await;
        cache
            .shared
            .settle_between_inserts
            .store(true, Ordering::SeqCst);
        let (key, digest) = key();
        cache.resolve(&key, digest).expect("permit").await;
        cache.shared.positive.run_pending_tasks();
        assert!(
            !cache.shared.positive.contains_key(&digest),
            "moka refused it"
        );
        assert!(
            cache.shared.index.get(&digest, 0, Instant::now()).is_none(),
            "the index kept an entry moka refused"
        );
        assert_index_mirrors_moka(&cache);
    }

    #[tokio::test]
    async fn a_cache_of_no_accepted_keys_indexes_none() {
        let (cache, _, digest) = with_one_accepted(0).await;
        assert_eq!(cache.shared.index.len(), 0);
        assert!(cache.cached(&digest, Instant::now()).is_none());
    }

    #[tokio::test]
    async fn a_late_notice_for_an_old_entry_leaves_the_new_one_indexed() {
        let (cache, key, digest) = with_one_accepted(100).await;
        // The `All` empties the index at once; moka drops its old entry later, and tells.
        cache.invalidate(&Invalidation::All);
        cache.resolve(&key, digest).expect("permit").await;
        cache.shared.positive.run_pending_tasks();
        assert_eq!(cache.shared.index.len(), 1, "the new entry stays indexed");
        assert!(matches!(
            cache.cached(&digest, Instant::now()),
            Some(Cached::Valid(_))
        ));
        assert_index_mirrors_moka(&cache);
    }

    #[tokio::test]
    async fn hits_served_by_the_index_still_teach_moka_which_key_is_hot() {
        // Capacity 1: moka admits a newcomer only if it has seen it asked for more often than
        // the key it holds. The newcomer was asked for twice; the held key 160 times, each an
        // index hit (the front is retired before each by an unrelated invalidation), of which
        // only the sampled reports reach moka: they must be enough for moka to keep it.
        let (cache, hot) = holding_one_key(0).await;
        let (_, unrelated) = self::key();
        for _ in 0..front::REPORT_ONE_IN * 10 {
            cache.invalidate(&Invalidation::Key(unrelated));
            assert!(cache.cached(&hot, Instant::now()).is_some());
        }
        let (newcomer_key, newcomer) = self::key();
        for _ in 0..2 {
            let _ = cache.shared.positive.get(&newcomer);
        }
        cache.shared.positive.run_pending_tasks();
        cache
            .resolve(&newcomer_key, newcomer)
            .expect("permit")
            .await;
        cache.shared.positive.run_pending_tasks();
        assert!(
            cache.cached(&hot, Instant::now()).is_some(),
            "moka let a newcomer evict the hot key"
        );
        assert!(
            cache
                .shared
                .index
                .get(&newcomer, 0, Instant::now())
                .is_none()
        );
    }

    #[tokio::test]
    async fn every_miss_reaches_moka_so_a_newly_wanted_key_is_admitted_as_it_would_be() {
        // Capacity 1, holding a key nobody asked for since. A newcomer asked for twice (two
        // misses) outranks it in moka's sketch only if both misses reached moka, sampled or not.
        let (cache, _) = holding_one_key(0).await;
        let (newcomer_key, newcomer) = key();
        for _ in 0..2 {
            assert!(cache.cached(&newcomer, Instant::now()).is_none());
        }
        cache.shared.positive.run_pending_tasks();
        cache
            .resolve(&newcomer_key, newcomer)
            .expect("permit")
            .await;
        cache.shared.positive.run_pending_tasks();
        assert!(
            cache.cached(&newcomer, Instant::now()).is_some(),
            "moka refused a key asked for more often than the one it held"
        );
        assert_index_mirrors_moka(&cache);
    }

    #[tokio::test]
    async fn a_refused_entry_past_its_ttl_is_not_served_even_if_moka_still_has_it() {
        let cache = cache();
        let (key, digest) = key();
        cache.resolve(&key, digest).expect("permit").await;
        let later = Instant::now() + CacheConfig::default().negative_ttl;
        assert!(cache.cached(&digest, later).is_none());
        assert!(cache.cached(&digest, Instant::now()).is_some());
    }

    #[test]
    fn index_insertions_racing_moka_evictions_leave_no_entry_moka_does_not_hold() {
        // Four threads cache new keys as fast as they can into a cache of 16 while a fifth
        // keeps moka's housekeeping (evictions, refused admissions, their notices) running.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let cache = accepting(16);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let housekeeper = {
            let cache = cache.clone();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    cache.shared.positive.run_pending_tasks();
                }
            })
        };
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let cache = cache.clone();
                let handle = runtime.handle().clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let (key, digest) = key();
                        let lookup = cache.resolve(&key, digest).expect("no limit");
                        handle.block_on(lookup);
                        let _ = cache.cached(&digest, Instant::now());
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        done.store(true, Ordering::Relaxed);
        housekeeper.join().expect("housekeeper");
        assert_index_mirrors_moka(&cache);
        assert!(cache.shared.index.len() <= 16);
    }

    #[tokio::test]
    async fn an_entry_cached_before_invalidate_all_is_never_served_after_it() {
        let cache = cache();
        let (key, digest) = key();
        let (_, other) = self::key();
        cache.resolve(&key, digest).expect("permit").await;
        assert!(matches!(
            cache.cached(&digest, Instant::now()),
            Some(Cached::Refused)
        ));
        cache.invalidate(&Invalidation::All);
        // moka's `invalidate_all` keeps an entry written in the same clock tick as itself:
        // put one back as such a survivor would be, tagged with the epoch before the `All`.
        let shared = &cache.shared;
        let before = *read(&shared.epoch) - 1;
        let survivor = Negative {
            fresh_until: Instant::now() + Duration::from_secs(60),
            epoch: before,
        };
        shared.negative.insert(digest, survivor);
        shared.negative.insert(other, survivor);
        assert!(cache.cached(&digest, Instant::now()).is_none());
        assert!(cache.cached(&other, Instant::now()).is_none());
    }
}
