//! Recording uses off the hot path: `last_used_at` and the hourly counts.
//!
//! A request only stamps and counts into atomics that belong to its cached identity (and
//! queues the identity once per flush interval). A background task writes what is queued to
//! the store in one batch per interval, so a key used 10,000 times in an interval costs one
//! `last_used_at` update and one count per hour in one write. [`FlushTask::shutdown`] writes
//! whatever is still pending.
//!
//! When the store refuses the writes (a read-only replica, lock timeouts), a failed flush gives
//! back one entry per key and prefix: the latest use, and the counts of at most
//! [`MAX_HOURS_KEPT`] hours. The queue never holds more than
//! [`max_pending`](UsageRecorder::max_pending) entries: memory stays bounded however long the
//! store refuses.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower_api_key::usage::UsageRecorder;
//! use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
//! let recorder = UsageRecorder::new(Arc::clone(manager.store()));
//! let flusher = recorder.spawn_flusher(Duration::from_secs(1));
//! let layer = ApiKeyLayer::for_manager(&manager)
//!     .record_usage(recorder)
//!     .build();
//! // ... serve requests through `layer` ...
//! # drop(layer);
//! flusher.shutdown().await?; // on graceful shutdown: nothing pending is lost
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[cfg(feature = "redis")]
use super::RedisQuotas;
use super::{Hour, QuotaCheck, QuotaLedger, QuotaTally, UsageBatch, UsageDelta, UseOutcome};
use crate::key::KeyPrefix;
use crate::metrics::Metrics;
use crate::policy::Quota;
use crate::store::{AccountId, KeyId, KeyStore, KeyUse, StoreError};
use crate::sync::lock;

/// Signed counts of one hour: accepted, rate limited, refused.
type Counts = [i64; 3];

/// The uses of one cached identity, stamped and counted lock-free by requests.
pub(crate) struct UsageCell {
    account_id: AccountId,
    id: KeyId,
    prefix: KeyPrefix,
    /// Milliseconds since the Unix epoch of the latest accepted use; 0 before the first.
    last_used_ms: AtomicU64,
    /// Whether the cell waits in the recorder's queue.
    queued: AtomicBool,
    /// The hour `counts` belong to (0 before the first count).
    hour: AtomicU32,
    /// Accepted, rate-limited and refused requests in `hour`, as two's-complement `u64`s: a
    /// refusal for scope takes one back from accepted, which a flush may already have taken.
    counts: [AtomicU64; 3],
    /// Counts of hours the cell moved past before a flush took them. Also the lock that
    /// moving to a new hour, and a flush reading the counts, take.
    earlier: Mutex<Vec<(Hour, Counts)>>,
}

impl UsageCell {
    pub(crate) fn new(account_id: AccountId, id: KeyId, prefix: KeyPrefix) -> Self {
        Self {
            account_id,
            id,
            prefix,
            last_used_ms: AtomicU64::new(0),
            queued: AtomicBool::new(false),
            hour: AtomicU32::new(0),
            counts: Default::default(),
            earlier: Mutex::new(Vec::new()),
        }
    }

    /// Counts one request of `hour`. The first count of a later hour moves the counts so far
    /// to `earlier` (under the lock, once per hour); a request racing that move may count in
    /// the later hour, never nowhere.
    #[inline]
    fn count(&self, hour: Hour, outcome: UseOutcome) {
        let counter = match outcome {
            UseOutcome::Accepted => 0,
            UseOutcome::RateLimited => 1,
            UseOutcome::Refused => 2,
            UseOutcome::RefusedForScope => return self.refuse_accepted(hour),
        };
        if hour.index() > self.hour.load(Ordering::Relaxed) {
            self.move_to(hour);
        }
        // SeqCst pairs with `flush`: either it sees this count, or we see `queued == false`.
        self.counts[counter].fetch_add(1, Ordering::SeqCst);
    }

    /// A refusal for scope of a request this cell counted as accepted, in its current hour
    /// (the acceptance's, unless a request of a later hour came in between): the request
    /// moves there from accepted to refused, whatever hour the refusal itself falls in, so an
    /// hour turning in between can't count it in both. `hour` serves only a cell that has
    /// counted nothing yet.
    #[cold]
    fn refuse_accepted(&self, hour: Hour) {
        if self.hour.load(Ordering::Relaxed) == 0 {
            self.move_to(hour);
        }
        self.counts[0].fetch_sub(1, Ordering::SeqCst);
        self.counts[2].fetch_add(1, Ordering::SeqCst);
    }

    #[cold]
    fn move_to(&self, hour: Hour) {
        let mut earlier = lock(&self.earlier);
        let current = self.hour.load(Ordering::SeqCst);
        if hour.index() <= current {
            return; // another request moved it first
        }
        let counts = self.take_counts();
        if counts != [0; 3] {
            earlier.push((Hour::from_index(current), counts));
        }
        self.hour.store(hour.index(), Ordering::SeqCst);
    }

    /// Takes the counts of the current hour. Called with `earlier` locked.
    fn take_counts(&self) -> Counts {
        // The wrapping `u64` read back as the signed count it stands for.
        self.counts
            .each_ref()
            .map(|count| count.swap(0, Ordering::SeqCst) as i64)
    }

    /// Takes over counts a failed flush gave back.
    fn give_back(&self, counts: impl IntoIterator<Item = (Hour, Counts)>) {
        lock(&self.earlier).extend(counts);
    }

    /// Accepted requests in `hours` that no flush has taken yet.
    fn accepted_in(&self, hours: &Range<Hour>) -> i64 {
        // Under the lock an hour's move takes: the current hour and its count agree.
        let earlier = lock(&self.earlier);
        let mut sum: i64 = earlier
            .iter()
            .filter(|(hour, _)| hours.contains(hour))
            .map(|(_, counts)| counts[0])
            .sum();
        if hours.contains(&Hour::from_index(self.hour.load(Ordering::SeqCst))) {
            // The wrapping `u64` read back as the signed count it stands for.
            sum += self.counts[0].load(Ordering::SeqCst) as i64;
        }
        sum
    }

    /// Takes every count not yet flushed, by hour.
    fn take_all(&self) -> Vec<(Hour, Counts)> {
        let mut earlier = lock(&self.earlier);
        let mut all = std::mem::take(&mut *earlier);
        let counts = self.take_counts();
        if counts != [0; 3] {
            all.push((Hour::from_index(self.hour.load(Ordering::SeqCst)), counts));
        }
        all
    }
}

/// Collects key uses and request counts and writes them to a [`KeyStore`] in batches.
///
/// Cloning gives another handle to the same queue. Hand a clone to
/// [`ApiKeyLayerBuilder::record_usage`](crate::ApiKeyLayerBuilder::record_usage) and
/// run [`spawn_flusher`](Self::spawn_flusher) (or call [`flush`](Self::flush) and
/// [`prune`](Self::prune) yourself).
///
/// The queue holds at most [`max_pending`](Self::max_pending) entries (default
/// [`DEFAULT_MAX_PENDING`]). When it is full, the *newest* uses are dropped: a key that is not
/// queued yet is not recorded, while the keys already queued keep merging their new uses. A
/// key still in use is recorded by its next use once the store takes writes again (its counts
/// wait in its cached identity meanwhile), whereas dropping the oldest entries would lose keys
/// that may never be used again. An entry given back by failed flushes keeps the counts of its
/// [`MAX_HOURS_KEPT`] latest hours. Drops are counted in the metrics of the first [`ApiKeyLayer`](crate::ApiKeyLayer)
/// built with the recorder
/// ([`MetricsSnapshot::usage_dropped`](crate::metrics::MetricsSnapshot::usage_dropped)).
#[derive(Clone)]
pub struct UsageRecorder {
    shared: Arc<Shared>,
}

/// The default of [`UsageRecorder::max_pending`]: as many keys as the layer's cache holds
/// by default, so that a healthy store sees drops only past 100,000 keys used in one flush
/// interval; at under 100 bytes an entry, a full queue takes a few megabytes.
pub const DEFAULT_MAX_PENDING: usize = 100_000;

/// The default of [`UsageRecorder::retention`]: 90 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// How often the flusher deletes counts older than the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

struct Shared {
    store: Arc<dyn KeyStore>,
    clock: WallClock,
    queue: Mutex<Queue>,
    /// The quota counts kept in step with the flushes.
    quotas: Arc<QuotaLedger>,
    /// Where quotas are spent across processes, if anywhere.
    #[cfg(feature = "redis")]
    shared_quotas: OnceLock<RedisQuotas>,
    max_pending: AtomicUsize,
    /// Seconds counts are kept.
    retention_secs: AtomicU64,
    /// Where drops are counted: the first layer built with this recorder.
    metrics: OnceLock<Arc<Metrics>>,
}

/// Uses waiting to be written.
#[derive(Default)]
struct Queue {
    /// Cells used since they were last flushed, each once; their stamps and counts are read
    /// when flushed, so that uses made meanwhile cost no lock.
    cells: Vec<Arc<UsageCell>>,
    /// What failed flushes gave back, per key and prefix.
    given_back: HashMap<(KeyId, KeyPrefix), Pending>,
    /// Entries a running flush took: they keep their room until it ends, so a slow failing
    /// write can't let the queue outgrow the cap.
    in_flight: usize,
}

impl Queue {
    fn len(&self) -> usize {
        self.cells.len() + self.given_back.len() + self.in_flight
    }
}

/// The most hours of counts one given-back entry keeps: a store that refuses writes for
/// longer loses the oldest hours' counts (counted as drops), so an entry stays small.
pub const MAX_HOURS_KEPT: usize = 48;

/// The uses of one key and prefix not yet written: its latest use, and its counts by hour.
struct Pending {
    account_id: AccountId,
    /// Unix milliseconds of the latest accepted use; 0 for none.
    last_used_ms: u64,
    counts: HashMap<Hour, Counts>,
}

impl Pending {
    fn new(account_id: AccountId) -> Self {
        Self {
            account_id,
            last_used_ms: 0,
            counts: HashMap::new(),
        }
    }

    /// Adds `counts` to those of `hour`.
    fn add(&mut self, hour: Hour, counts: Counts) {
        let kept = self.counts.entry(hour).or_insert([0; 3]);
        for (kept, add) in kept.iter_mut().zip(counts) {
            *kept = kept.saturating_add(add);
        }
    }

    /// Merges `other` into this entry: the later use, the counts added up.
    fn merge(&mut self, other: Pending) {
        self.last_used_ms = self.last_used_ms.max(other.last_used_ms);
        for (hour, counts) in other.counts {
            self.add(hour, counts);
        }
    }

    /// Keeps the [`MAX_HOURS_KEPT`] latest hours; returns how many went.
    fn trim(&mut self) -> usize {
        let excess = self.counts.len().saturating_sub(MAX_HOURS_KEPT);
        if excess > 0 {
            let mut hours: Vec<Hour> = self.counts.keys().copied().collect();
            hours.sort_unstable();
            for hour in &hours[..excess] {
                self.counts.remove(hour);
            }
        }
        excess
    }
}

impl UsageRecorder {
    /// A recorder writing to `store`.
    pub fn new(store: Arc<dyn KeyStore>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                clock: WallClock::new(),
                queue: Mutex::new(Queue::default()),
                quotas: Arc::default(),
                #[cfg(feature = "redis")]
                shared_quotas: OnceLock::new(),
                max_pending: AtomicUsize::new(DEFAULT_MAX_PENDING),
                retention_secs: AtomicU64::new(DEFAULT_RETENTION.as_secs()),
                metrics: OnceLock::new(),
            }),
        }
    }

    /// Caps the queue at `entries` (default [`DEFAULT_MAX_PENDING`]); every clone shares the
    /// cap. An entry is one key, or one cached identity of a key, with uses waiting (or being
    /// written), or one key's counts of one hour given back by a failed flush; when the queue
    /// is full the newest uses are dropped (see the type's docs). With 0, nothing is recorded.
    #[must_use]
    pub fn max_pending(self, entries: usize) -> Self {
        self.shared.max_pending.store(entries, Ordering::Relaxed);
        self
    }

    /// Keeps hourly counts for `retention` (default [`DEFAULT_RETENTION`], 90 days; at least
    /// one hour); [`prune`](Self::prune) deletes older ones. Every clone shares it.
    #[must_use]
    pub fn retention(self, retention: Duration) -> Self {
        let secs = retention.as_secs().max(3600);
        self.shared.retention_secs.store(secs, Ordering::Relaxed);
        self
    }

    /// Spends the quotas of the keys this recorder records in Redis, exactly across every
    /// process sharing `quotas`'s Redis and namespace (see [`RedisQuotas`]), instead of
    /// counting them in this process from the store's usage. Every clone shares it; only the
    /// first call counts (a later one is ignored, with a warning).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    #[must_use]
    pub fn share_quotas(self, quotas: RedisQuotas) -> Self {
        if self.shared.shared_quotas.set(quotas).is_err() {
            tracing::warn!("UsageRecorder::share_quotas called twice: the first counter stays");
        }
        self
    }

    /// The quota counts this recorder's flushes keep in step with the store.
    pub(crate) fn quotas(&self) -> &Arc<QuotaLedger> {
        &self.shared.quotas
    }

    /// Spends one request of `quota`, made at `at`, from `tally`: in Redis if the quotas are
    /// shared, else at once in this process.
    pub(crate) fn spend_quota(
        &self,
        tally: &Arc<QuotaTally>,
        quota: Quota,
        at: Instant,
    ) -> QuotaCheck {
        let now = self.wall_time(at);
        #[cfg(feature = "redis")]
        if let Some(shared) = self.shared.shared_quotas.get() {
            return QuotaCheck::Pending(shared.spend(tally, quota, now));
        }
        QuotaCheck::Ready(tally.spend(quota, now))
    }

    /// Gives back one request of `quota`, refused for its scope at `at` after it was let in.
    pub(crate) fn refund_quota(&self, tally: &QuotaTally, quota: Quota, at: Instant) {
        #[cfg(feature = "redis")]
        if let Some(shared) = self.shared.shared_quotas.get() {
            return shared.refund(tally, quota, self.wall_time(at));
        }
        let _ = (quota, at);
        tally.refund();
    }

    /// Accepted requests of key `id` in `hours` that this recorder holds and has not written
    /// (a flush running now has taken its own): where a quota the key just got, or whose
    /// period changed, starts besides the store's count.
    pub(crate) fn unwritten_accepted(&self, id: KeyId, hours: Range<Hour>) -> i64 {
        let queue = self.queue();
        let queued: i64 = queue
            .cells
            .iter()
            .filter(|cell| cell.id == id)
            .map(|cell| cell.accepted_in(&hours))
            .sum();
        let given_back: i64 = queue
            .given_back
            .iter()
            .filter(|((key, _), _)| *key == id)
            .flat_map(|(_, pending)| &pending.counts)
            .filter(|(hour, _)| hours.contains(hour))
            .map(|(_, counts)| counts[0])
            .sum();
        queued + given_back
    }

    /// The wall-clock time of `at`, on the clock uses are stamped with (so that a request's
    /// quota period and its usage hour agree).
    pub(crate) fn wall_time(&self, at: Instant) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.shared.clock.millis(at))
    }

    /// Counts drops in `metrics`, unless a layer built earlier already does.
    pub(crate) fn count_drops_in(&self, metrics: &Arc<Metrics>) {
        let _ = self.shared.metrics.set(Arc::clone(metrics));
    }

    /// Records a request made at `at`. Lock-free unless the cell is not yet queued for the
    /// next flush, or it is the cell's first request of an hour.
    #[inline]
    pub(crate) fn record(&self, cell: &Arc<UsageCell>, at: Instant, outcome: UseOutcome) {
        let now = self.shared.clock.millis(at);
        // Write only when the millisecond changed: a hot key doesn't bounce its cache line.
        if outcome == UseOutcome::Accepted && cell.last_used_ms.load(Ordering::Relaxed) < now {
            cell.last_used_ms.fetch_max(now, Ordering::SeqCst);
        }
        cell.count(Hour::of_millis(now), outcome);
        // SeqCst pairs with `flush`: either it sees this stamp, or we see `queued == false`.
        if !cell.queued.load(Ordering::SeqCst) && !cell.queued.swap(true, Ordering::SeqCst) {
            self.enqueue(cell);
        }
    }

    fn enqueue(&self, cell: &Arc<UsageCell>) {
        let mut queue = self.queue();
        if let Some(pending) = queue.given_back.remove(&(cell.id, cell.prefix)) {
            // The cell takes the given-back entry over: still one entry for the key.
            cell.last_used_ms
                .fetch_max(pending.last_used_ms, Ordering::SeqCst);
            cell.give_back(pending.counts);
            queue.cells.push(Arc::clone(cell));
        } else if queue.len() < self.shared.max_pending.load(Ordering::Relaxed) {
            queue.cells.push(Arc::clone(cell));
        } else {
            drop(queue);
            // Unqueued, the cell tries again on its next use (keeping its counts meanwhile):
            // a key still in use is recorded once there is room.
            cell.queued.store(false, Ordering::SeqCst);
            self.dropped(1);
        }
    }

    fn dropped(&self, entries: u64) {
        if let Some(metrics) = self.shared.metrics.get() {
            for _ in 0..entries {
                metrics.usage_dropped();
            }
        }
    }

    /// How many entries wait for the next flush: one per key and prefix (or cached identity)
    /// with uses.
    ///
    /// For tests (feature `test-util`): not part of the stable API.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn pending_count(&self) -> usize {
        self.pending()
    }

    fn pending(&self) -> usize {
        let queue = self.queue();
        queue.cells.len() + queue.given_back.len()
    }

    /// Writes every pending use and count to the store in one batch
    /// ([`KeyStore::record_usage`]) and returns how many keys it updated (a key used with
    /// two prefixes, in a rotation's grace period, counts twice). Uses of one key
    /// *with one prefix* are merged into their latest: a late use of a rotated-away prefix
    /// must not hide the new prefix's use (the store drops the former). Counts are added up
    /// per key and hour.
    ///
    /// # Errors
    ///
    /// The store's error. The merged uses and counts go back to the queue, merged with any
    /// made meanwhile, and the next flush tries them again; the same happens if this future
    /// is dropped before the store answers. So counts are written at least once: a write that
    /// committed but whose answer was lost (the connection dropped after the commit) is
    /// counted again by the next flush. Last-used times are unaffected (they only move
    /// forward).
    ///
    /// Then it reads the current period's count of every key with a quota used in this
    /// process from the store again (one read per account and period), so that the quota
    /// counts what other processes wrote; a failure of these reads is the error if the write
    /// succeeded.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let written = self.write_pending().await?;
        self.shared.quotas.refresh(&*self.shared.store).await?;
        Ok(written)
    }

    /// The write of [`flush`](Self::flush).
    async fn write_pending(&self) -> Result<usize, StoreError> {
        self.shared.clock.resync();
        let (cells, given_back) = {
            let mut queue = self.queue();
            let cells = std::mem::take(&mut queue.cells);
            let given_back = std::mem::take(&mut queue.given_back);
            queue.in_flight += cells.len() + given_back.len();
            (cells, given_back)
        };
        let mut batch = FlushBatch {
            recorder: self,
            taken: cells.len() + given_back.len(),
            pending: given_back,
        };
        if batch.taken == 0 {
            return Ok(0);
        }
        for cell in &cells {
            cell.queued.store(false, Ordering::SeqCst);
            let mut taken = Pending::new(cell.account_id.clone());
            taken.last_used_ms = cell.last_used_ms.load(Ordering::SeqCst);
            for (hour, counts) in cell.take_all() {
                taken.add(hour, counts);
            }
            match batch.pending.entry((cell.id, cell.prefix)) {
                Entry::Occupied(mut kept) => kept.get_mut().merge(taken),
                Entry::Vacant(slot) => {
                    slot.insert(taken);
                }
            }
        }
        // Counts of one key and hour from several prefixes or identities add up.
        let mut counts: HashMap<(KeyId, Hour), (&AccountId, Counts)> = HashMap::new();
        for (&(id, _), pending) in &batch.pending {
            for (&hour, add) in &pending.counts {
                let (_, kept) = counts
                    .entry((id, hour))
                    .or_insert((&pending.account_id, [0; 3]));
                for (kept, add) in kept.iter_mut().zip(add) {
                    *kept = kept.saturating_add(*add);
                }
            }
        }
        let write = UsageBatch {
            last_used: batch
                .pending
                .iter()
                .filter(|(_, pending)| pending.last_used_ms > 0)
                .map(|(&(id, prefix), pending)| KeyUse {
                    id,
                    prefix,
                    at: UNIX_EPOCH + Duration::from_millis(pending.last_used_ms),
                })
                .collect(),
            counts: counts
                .into_iter()
                .filter(|(_, (_, counts))| *counts != [0; 3])
                .map(|((key_id, hour), (account_id, counts))| UsageDelta {
                    account_id: account_id.clone(),
                    key_id,
                    hour,
                    accepted: counts[0],
                    rate_limited: counts[1],
                    refused: counts[2],
                })
                .collect(),
        };
        if write.is_empty() {
            batch.clear();
            return Ok(0);
        }
        self.shared.store.record_usage(&write).await?;
        self.shared.quotas.written(&write);
        let written = batch.pending.len();
        batch.clear(); // written: nothing to give back
        Ok(written)
    }

    /// Deletes the counts of hours that ended more than the
    /// [`retention`](Self::retention) ago and returns how many rows went. The flusher calls
    /// it once an hour.
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let retention = Duration::from_secs(self.shared.retention_secs.load(Ordering::Relaxed));
        let cutoff = SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(UNIX_EPOCH);
        self.shared
            .store
            .prune_usage(Hour::containing(cutoff))
            .await
    }

    /// Spawns a task on the current tokio runtime that flushes every `interval`, and prunes
    /// counts past the retention at its first flush and then once an hour.
    ///
    /// Call [`FlushTask::shutdown`] on graceful shutdown to write the remaining uses.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like [`tokio::spawn`].
    pub fn spawn_flusher(&self, interval: Duration) -> FlushTask {
        let (stop, mut stopped) = oneshot::channel();
        let recorder = self.clone();
        let handle = tokio::spawn(async move {
            // The first flush one interval from now: nothing can be pending yet, and a flush
            // at start could race the first uses instead of batching them.
            let start = tokio::time::Instant::now() + interval;
            let mut ticks = tokio::time::interval_at(start, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pruned: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {
                        if let Err(err) = recorder.flush().await {
                            tracing::warn!(error = %err, "usage flush failed; will retry");
                        }
                        if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                            match recorder.prune().await {
                                Ok(_) => pruned = Some(Instant::now()),
                                Err(err) => tracing::warn!(error = %err, "usage pruning failed; will retry"),
                            }
                        }
                    }
                }
            }
        });
        FlushTask {
            recorder: self.clone(),
            stop,
            handle,
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        lock(&self.shared.queue)
    }
}

/// The batch of a running flush. Dropped without being cleared (the store failed, or the
/// flush was cancelled), it gives its uses and counts back to the queue.
struct FlushBatch<'a> {
    recorder: &'a UsageRecorder,
    taken: usize,
    pending: HashMap<(KeyId, KeyPrefix), Pending>,
}

impl FlushBatch<'_> {
    fn clear(&mut self) {
        self.pending.clear();
    }
}

impl Drop for FlushBatch<'_> {
    fn drop(&mut self) {
        let mut queue = self.recorder.queue();
        queue.in_flight -= self.taken;
        let mut dropped = 0;
        // A key whose cell was queued again meanwhile keeps one entry: the cell takes it over.
        for cell in &queue.cells {
            if let Some(mut pending) = self.pending.remove(&(cell.id, cell.prefix)) {
                dropped += pending.trim();
                cell.last_used_ms
                    .fetch_max(pending.last_used_ms, Ordering::SeqCst);
                cell.give_back(pending.counts);
            }
        }
        for (key, mut pending) in self.pending.drain() {
            dropped += pending.trim();
            match queue.given_back.entry(key) {
                Entry::Occupied(mut kept) => kept.get_mut().merge(pending),
                Entry::Vacant(slot) => {
                    slot.insert(pending);
                }
            }
        }
        drop(queue);
        if dropped > 0 {
            self.recorder.dropped(dropped as u64);
        }
    }
}

impl fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRecorder")
            .field("pending", &self.pending())
            .field(
                "max_pending",
                &self.shared.max_pending.load(Ordering::Relaxed),
            )
            .field(
                "retention",
                &Duration::from_secs(self.shared.retention_secs.load(Ordering::Relaxed)),
            )
            .finish_non_exhaustive()
    }
}

/// The background flusher started by [`UsageRecorder::spawn_flusher`].
///
/// Dropping it stops the task without a final flush; call [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct FlushTask {
    recorder: UsageRecorder,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

impl FlushTask {
    /// Stops the periodic flushes and writes every pending use and count; returns how many
    /// keys the final flush updated.
    ///
    /// # Errors
    ///
    /// The store's error from the final flush.
    pub async fn shutdown(self) -> Result<usize, StoreError> {
        let _ = self.stop.send(());
        let _ = self.handle.await;
        self.recorder.flush().await
    }
}

/// Turns the instants uses are made at into Unix milliseconds without reading the wall clock
/// per use: it keeps the wall-clock time of one fixed instant, read again at every flush, so
/// that a change of the system clock reaches the stamps within a flush interval.
struct WallClock {
    origin: Instant,
    /// Unix nanoseconds at `origin`, as of the last resync (a `u64` lasts until 2554).
    origin_ns: AtomicU64,
}

impl WallClock {
    fn new() -> Self {
        let clock = Self {
            origin: Instant::now(),
            origin_ns: AtomicU64::new(0),
        };
        clock.resync();
        clock
    }

    /// Unix milliseconds at `at` (at least 1: 0 means "never used").
    #[inline]
    fn millis(&self, at: Instant) -> u64 {
        let since = nanos(at.saturating_duration_since(self.origin));
        let unix_ns = self.origin_ns.load(Ordering::Relaxed).saturating_add(since);
        (unix_ns / 1_000_000).max(1)
    }

    /// Reads the wall clock again.
    fn resync(&self) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let since = nanos(now.saturating_duration_since(self.origin));
        let wall_ns = nanos(wall.duration_since(UNIX_EPOCH).unwrap_or_default());
        self.origin_ns
            .store(wall_ns.saturating_sub(since), Ordering::Relaxed);
    }
}

/// `duration` in nanoseconds, saturating; whole `u64` arithmetic (`as_nanos` goes through
/// `u128`, and this runs on every accepted request).
#[inline]
fn nanos(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(duration.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_millis() -> u64 {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970");
        u64::try_from(since.as_millis()).expect("fits")
    }

    #[test]
    fn a_cell_counts_each_hour_apart_and_a_scope_refusal_moves_a_request() {
        let cell = UsageCell::new(
            "acme".parse().expect("account"),
            KeyId::random(),
            "k3v9x0qa".parse().expect("prefix"),
        );
        let (first, second) = (Hour::from_index(500_000), Hour::from_index(500_001));
        cell.count(first, UseOutcome::Accepted);
        cell.count(first, UseOutcome::Accepted);
        cell.count(first, UseOutcome::RateLimited);
        cell.count(second, UseOutcome::Accepted);
        cell.count(second, UseOutcome::RefusedForScope);
        // A request of the earlier hour that arrives late counts in the current one.
        cell.count(first, UseOutcome::Refused);
        assert_eq!(
            cell.take_all(),
            vec![(first, [2, 1, 0]), (second, [0, 0, 2])]
        );
        assert_eq!(cell.take_all(), vec![], "taken");
        // A scope refusal whose acceptance an earlier flush took: -1 accepted, +1 refused.
        cell.count(second, UseOutcome::RefusedForScope);
        assert_eq!(cell.take_all(), vec![(second, [-1, 0, 1])]);
        // The hour turns between an acceptance and its scope refusal: both in the first.
        let third = second.next();
        cell.count(second, UseOutcome::Accepted);
        cell.count(third, UseOutcome::RefusedForScope);
        assert_eq!(cell.take_all(), vec![(second, [0, 0, 1])]);
        cell.count(third, UseOutcome::Accepted);
        assert_eq!(cell.take_all(), vec![(third, [1, 0, 0])]);
    }

    #[test]
    fn the_wall_clock_turns_instants_into_unix_milliseconds() {
        let clock = WallClock::new();
        let before = unix_millis();
        let stamp = clock.millis(Instant::now());
        let after = unix_millis();
        // Within a millisecond either way: the clock reads the two clocks one after the other.
        assert!(
            (before - 1..=after + 1).contains(&stamp),
            "{before} <= {stamp} <= {after}"
        );
        // Later instants give later stamps; an instant before the clock existed gives its
        // origin, never less.
        let later = clock.millis(Instant::now() + Duration::from_secs(2));
        assert!(later >= stamp + 1_999);
        let earlier = Instant::now()
            .checked_sub(Duration::from_secs(3600))
            .unwrap_or_else(Instant::now);
        assert!(clock.millis(earlier) <= stamp);
    }
}
