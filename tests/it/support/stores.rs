//! [`TestStore`]: the memory store most tests use, which can be made slow or down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tower_api_key::usage::UsageBatch;
use tower_api_key::{KeyPrefix, KeyRecord, KeyStore, MemoryStore, StoreError};

use super::hooks::{StoreHooks, hooked_key_store};
use super::rng::XorShift;

/// A memory store that can be made slow, made to fail, and counts its lookups and writes.
#[derive(Default)]
pub(crate) struct TestStore {
    pub(crate) inner: MemoryStore,
    pub(crate) down: AtomicBool,
    /// Upper bound of a pseudo-random delay added to every `find_by_prefix`, in microseconds.
    pub(crate) max_delay_us: AtomicU64,
    pub(crate) lookups: AtomicUsize,
    pub(crate) last_used_writes: AtomicUsize,
    pub(crate) last_used_rows: AtomicUsize,
    delays: AtomicU64,
}

impl TestStore {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes every call fail as unavailable (`true`), as a database that went away, or work
    /// again.
    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::unavailable("connection refused"))
        } else {
            Ok(())
        }
    }

    async fn maybe_delay(&self) {
        let max = self.max_delay_us.load(Ordering::Relaxed);
        if max > 0 {
            let mut rng = XorShift::seeded(self.delays.fetch_add(1, Ordering::Relaxed));
            let delay = rng.below(max as usize) as u64;
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
    }
}

impl StoreHooks for TestStore {
    fn records(&self) -> &MemoryStore {
        &self.inner
    }
    fn before_write(&self) -> Result<(), StoreError> {
        self.check()
    }
    fn before_read(&self) -> Result<(), StoreError> {
        self.check()
    }
    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        // Read first, then wait: the answer is as stale as it can be when it arrives.
        let found = self.inner.find_by_prefix(prefix).await;
        self.maybe_delay().await;
        found
    }
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        self.check()?;
        self.last_used_writes.fetch_add(1, Ordering::SeqCst);
        self.last_used_rows
            .fetch_add(batch.last_used.len(), Ordering::SeqCst);
        self.inner.record_usage(batch).await
    }
}

hooked_key_store!(TestStore);
