//! Recording `last_used_at` off the hot path.
//!
//! An authenticated request only stamps an atomic cell that belongs to its cached identity
//! (and queues the cell once per flush interval). A background task writes the queued uses to
//! the store in one batch per interval, so a key used 10,000 times in an interval costs one
//! row in one write. [`FlushTask::shutdown`] writes whatever is still pending.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower_api_key::last_used::LastUsedRecorder;
//! use tower_api_key::resolver::StoreResolver;
//! use tower_api_key::{KeyStore, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
//! let recorder = LastUsedRecorder::new(store.clone());
//! let flusher = recorder.spawn_flusher(Duration::from_secs(1));
//! let resolver = StoreResolver::new(store).record_last_used(recorder);
//! // ... serve requests through a layer built with `resolver` ...
//! # drop(resolver);
//! flusher.shutdown().await?; // on graceful shutdown: nothing pending is lost
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::key::KeyPrefix;
use crate::store::{KeyId, KeyStore, KeyUse, StoreError};

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
/// [`StoreResolver::record_last_used`](crate::resolver::StoreResolver::record_last_used) and
/// run [`spawn_flusher`](Self::spawn_flusher) (or call [`flush`](Self::flush) yourself).
#[derive(Clone)]
pub struct LastUsedRecorder {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn KeyStore>,
    pending: Mutex<Vec<Arc<UsageCell>>>,
}

impl LastUsedRecorder {
    /// A recorder writing to `store`.
    pub fn new(store: Arc<dyn KeyStore>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                pending: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Stamps a use now. Lock-free unless the cell is not yet queued for the next flush.
    pub(crate) fn record(&self, cell: &Arc<UsageCell>) {
        let now = millis_since_epoch(SystemTime::now());
        // Write only when the millisecond changed: a hot key doesn't bounce its cache line.
        if cell.last_used_ms.load(Ordering::Relaxed) < now {
            cell.last_used_ms.fetch_max(now, Ordering::SeqCst);
        }
        // SeqCst pairs with `flush`: either it sees this stamp, or we see `queued == false`.
        if !cell.queued.load(Ordering::SeqCst) && !cell.queued.swap(true, Ordering::SeqCst) {
            self.pending().push(Arc::clone(cell));
        }
    }

    /// How many identities have uses waiting for the next flush.
    pub fn pending_count(&self) -> usize {
        self.pending().len()
    }

    /// Writes every pending use to the store in one batch and returns how many keys it
    /// updated. Uses of one key *with one prefix* are merged into their latest: a late use of a
    /// rotated-away prefix must not hide the new prefix's use (the store drops the former).
    ///
    /// # Errors
    ///
    /// The store's error; the uses stay queued and the next flush tries them again.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let cells = std::mem::take(&mut *self.pending());
        if cells.is_empty() {
            return Ok(0);
        }
        let mut latest: HashMap<(KeyId, KeyPrefix), KeyUse> = HashMap::with_capacity(cells.len());
        for cell in &cells {
            cell.queued.store(false, Ordering::SeqCst);
            let at = UNIX_EPOCH + Duration::from_millis(cell.last_used_ms.load(Ordering::SeqCst));
            let key_use = KeyUse {
                id: cell.id,
                prefix: cell.prefix,
                at,
            };
            latest
                .entry((cell.id, cell.prefix))
                .and_modify(|kept| {
                    if kept.at < at {
                        *kept = key_use;
                    }
                })
                .or_insert(key_use);
        }
        let uses: Vec<KeyUse> = latest.into_values().collect();
        match self.shared.store.record_last_used(&uses).await {
            Ok(()) => Ok(uses.len()),
            Err(err) => {
                let mut pending = self.pending();
                for cell in cells {
                    if !cell.queued.swap(true, Ordering::SeqCst) {
                        pending.push(cell);
                    }
                }
                Err(err)
            }
        }
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
            let mut ticks = tokio::time::interval(interval);
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

    fn pending(&self) -> MutexGuard<'_, Vec<Arc<UsageCell>>> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for LastUsedRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastUsedRecorder")
            .field("pending", &self.pending_count())
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

fn millis_since_epoch(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    since.as_millis().try_into().unwrap_or(u64::MAX)
}
