//! Recording `last_used_at` off the hot path.
//!
//! An authenticated request only stamps an atomic cell that belongs to its cached identity
//! (and queues the cell once per flush interval). A background task writes the queued uses to
//! the store in one batch per interval, so a key used 10,000 times in an interval costs one
//! row in one write. [`FlushTask::shutdown`] writes whatever is still pending.
//!
//! When the store refuses the writes (a read-only replica, lock timeouts), a failed flush gives
//! back one use per key and prefix, the latest, and the queue never holds more than
//! [`max_pending`](LastUsedRecorder::max_pending) entries: memory stays bounded however long
//! the store refuses.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower_api_key::last_used::LastUsedRecorder;
//! use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
//! let recorder = LastUsedRecorder::new(Arc::clone(manager.store()));
//! let flusher = recorder.spawn_flusher(Duration::from_secs(1));
//! let layer = ApiKeyLayer::for_manager(&manager)
//!     .record_last_used(recorder)
//!     .build();
//! // ... serve requests through `layer` ...
//! # drop(layer);
//! flusher.shutdown().await?; // on graceful shutdown: nothing pending is lost
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::key::KeyPrefix;
use crate::metrics::Metrics;
use crate::store::{KeyId, KeyStore, KeyUse, StoreError};
use crate::sync::lock;

/// The last use of one cached identity, stamped lock-free by requests.
pub(crate) struct UsageCell {
    id: KeyId,
    prefix: KeyPrefix,
    /// Milliseconds since the Unix epoch of the latest use; 0 before the first.
    last_used_ms: AtomicU64,
    /// Whether the cell waits in the recorder's queue.
    queued: AtomicBool,
}

impl UsageCell {
    pub(crate) fn new(id: KeyId, prefix: KeyPrefix) -> Self {
        Self {
            id,
            prefix,
            last_used_ms: AtomicU64::new(0),
            queued: AtomicBool::new(false),
        }
    }
}

/// Collects key uses and writes them to a [`KeyStore`] in batches.
///
/// Cloning gives another handle to the same queue. Hand a clone to
/// [`ApiKeyLayerBuilder::record_last_used`](crate::ApiKeyLayerBuilder::record_last_used) and
/// run [`spawn_flusher`](Self::spawn_flusher) (or call [`flush`](Self::flush) yourself).
///
/// The queue holds at most [`max_pending`](Self::max_pending) entries (default
/// [`DEFAULT_MAX_PENDING`]). When it is full, the *newest* uses are dropped: a key that is not
/// queued yet is not recorded, while the keys already queued keep merging their new uses. A
/// key still in use is recorded by its next use once the store takes writes again, whereas
/// dropping the oldest entries would lose keys that may never be used again. Drops are counted
/// in the metrics of the first [`ApiKeyLayer`](crate::ApiKeyLayer) built with the recorder
/// ([`MetricsSnapshot::last_used_dropped`](crate::metrics::MetricsSnapshot::last_used_dropped)).
#[derive(Clone)]
pub struct LastUsedRecorder {
    shared: Arc<Shared>,
}

/// The default of [`LastUsedRecorder::max_pending`]: as many keys as the layer's cache holds
/// by default, so that a healthy store sees drops only past 100,000 keys used in one flush
/// interval; at under 100 bytes an entry, a full queue takes a few megabytes.
pub const DEFAULT_MAX_PENDING: usize = 100_000;

struct Shared {
    store: Arc<dyn KeyStore>,
    clock: WallClock,
    queue: Mutex<Queue>,
    max_pending: AtomicUsize,
    /// Where drops are counted: the first layer built with this recorder.
    metrics: OnceLock<Arc<Metrics>>,
}

/// Uses waiting to be written.
#[derive(Default)]
struct Queue {
    /// Cells stamped since they were last flushed, each once; their stamps are read when
    /// flushed, so that uses made meanwhile cost no lock.
    cells: Vec<Arc<UsageCell>>,
    /// The latest use (milliseconds) per key and prefix that failed flushes gave back.
    given_back: HashMap<(KeyId, KeyPrefix), u64>,
    /// Entries a running flush took: they keep their room until it ends, so a slow failing
    /// write can't let the queue outgrow the cap.
    in_flight: usize,
}

impl Queue {
    fn len(&self) -> usize {
        self.cells.len() + self.given_back.len() + self.in_flight
    }
}

impl LastUsedRecorder {
    /// A recorder writing to `store`.
    pub fn new(store: Arc<dyn KeyStore>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                clock: WallClock::new(),
                queue: Mutex::new(Queue::default()),
                max_pending: AtomicUsize::new(DEFAULT_MAX_PENDING),
                metrics: OnceLock::new(),
            }),
        }
    }

    /// Caps the queue at `entries` (default [`DEFAULT_MAX_PENDING`]); every clone shares the
    /// cap. An entry is one key, or one cached identity of a key, with uses waiting (or being
    /// written); when the queue is full the newest uses are dropped (see the type's docs).
    /// With 0, nothing is recorded.
    #[must_use]
    pub fn max_pending(self, entries: usize) -> Self {
        self.shared.max_pending.store(entries, Ordering::Relaxed);
        self
    }

    /// Counts drops in `metrics`, unless a layer built earlier already does.
    pub(crate) fn count_drops_in(&self, metrics: &Arc<Metrics>) {
        let _ = self.shared.metrics.set(Arc::clone(metrics));
    }

    /// Stamps a use made at `at`. Lock-free unless the cell is not yet queued for the next
    /// flush.
    pub(crate) fn record(&self, cell: &Arc<UsageCell>, at: Instant) {
        let now = self.shared.clock.millis(at);
        // Write only when the millisecond changed: a hot key doesn't bounce its cache line.
        if cell.last_used_ms.load(Ordering::Relaxed) < now {
            cell.last_used_ms.fetch_max(now, Ordering::SeqCst);
        }
        // SeqCst pairs with `flush`: either it sees this stamp, or we see `queued == false`.
        if !cell.queued.load(Ordering::SeqCst) && !cell.queued.swap(true, Ordering::SeqCst) {
            self.enqueue(cell);
        }
    }

    fn enqueue(&self, cell: &Arc<UsageCell>) {
        let mut queue = self.queue();
        if let Some(at) = queue.given_back.remove(&(cell.id, cell.prefix)) {
            // The cell takes the given-back use over: still one entry for the key.
            cell.last_used_ms.fetch_max(at, Ordering::SeqCst);
            queue.cells.push(Arc::clone(cell));
        } else if queue.len() < self.shared.max_pending.load(Ordering::Relaxed) {
            queue.cells.push(Arc::clone(cell));
        } else {
            drop(queue);
            // Unqueued, the cell tries again on its next use: a key still in use is recorded
            // once there is room.
            cell.queued.store(false, Ordering::SeqCst);
            if let Some(metrics) = self.shared.metrics.get() {
                metrics.last_used_dropped();
            }
        }
    }

    /// How many identities have uses waiting for the next flush.
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

    /// Writes every pending use to the store in one batch and returns how many keys it
    /// updated. Uses of one key *with one prefix* are merged into their latest: a late use of a
    /// rotated-away prefix must not hide the new prefix's use (the store drops the former).
    ///
    /// # Errors
    ///
    /// The store's error. The merged uses (one per key and prefix, the latest) go back to the
    /// queue, merged with any use made meanwhile, and the next flush tries them again; the
    /// same happens if this future is dropped before the store answers.
    pub async fn flush(&self) -> Result<usize, StoreError> {
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
            latest: given_back,
        };
        if batch.taken == 0 {
            return Ok(0);
        }
        for cell in &cells {
            cell.queued.store(false, Ordering::SeqCst);
            let at = cell.last_used_ms.load(Ordering::SeqCst);
            merge_latest(&mut batch.latest, (cell.id, cell.prefix), at);
        }
        let uses: Vec<KeyUse> = batch
            .latest
            .iter()
            .map(|(&(id, prefix), &at)| KeyUse {
                id,
                prefix,
                at: UNIX_EPOCH + Duration::from_millis(at),
            })
            .collect();
        self.shared.store.record_last_used(&uses).await?;
        batch.latest.clear(); // written: nothing to give back
        Ok(uses.len())
    }

    /// Spawns a task on the current tokio runtime that flushes every `interval`.
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
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {
                        if let Err(err) = recorder.flush().await {
                            tracing::warn!(error = %err, "last-used flush failed; will retry");
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
/// flush was cancelled), it gives its uses back to the queue.
struct FlushBatch<'a> {
    recorder: &'a LastUsedRecorder,
    taken: usize,
    latest: HashMap<(KeyId, KeyPrefix), u64>,
}

impl Drop for FlushBatch<'_> {
    fn drop(&mut self) {
        let mut queue = self.recorder.queue();
        queue.in_flight -= self.taken;
        // A key whose cell was queued again meanwhile keeps one entry: the cell takes the use.
        for cell in &queue.cells {
            if let Some(at) = self.latest.remove(&(cell.id, cell.prefix)) {
                cell.last_used_ms.fetch_max(at, Ordering::SeqCst);
            }
        }
        for (key, at) in self.latest.drain() {
            merge_latest(&mut queue.given_back, key, at);
        }
    }
}

/// Keeps the later of `at` and the use already kept for `key`: times only move forward.
fn merge_latest(latest: &mut HashMap<(KeyId, KeyPrefix), u64>, key: (KeyId, KeyPrefix), at: u64) {
    let kept = latest.entry(key).or_insert(at);
    *kept = (*kept).max(at);
}

impl fmt::Debug for LastUsedRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastUsedRecorder")
            .field("pending", &self.pending())
            .field(
                "max_pending",
                &self.shared.max_pending.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

/// The background flusher started by [`LastUsedRecorder::spawn_flusher`].
///
/// Dropping it stops the task without a final flush; call [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct FlushTask {
    recorder: LastUsedRecorder,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

impl FlushTask {
    /// Stops the periodic flushes and writes every pending use; returns how many keys the
    /// final flush updated.
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
