//! Whether the caches on one bus may trust their entries: the state the bus and its caches
//! read with one atomic load. Only the feed's [`Channel`](super::channel::Channel)s change
//! it, since what it grants is a feed's word that no change is being missed.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use crate::sync::lock;

/// Whether the channels feeding one bus can be trusted, readable with one atomic load.
///
/// The bus holds it and caches read it ([`trusted`](Self::trusted)); everything that grants or
/// withdraws trust is private to the `feed` module.
pub(crate) struct Trust {
    channels: Mutex<Vec<ChannelState>>,
    /// Ticks of [`clock`] until which every channel is trusted: [`LOST`] while any channel is
    /// lost, [`FOREVER`] while none has a deadline (no feed at all). Written under `channels`.
    until: AtomicU64,
}

impl Default for Trust {
    fn default() -> Self {
        Self {
            channels: Mutex::new(Vec::new()),
            until: AtomicU64::new(FOREVER),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChannelState {
    Lost,
    TrustedUntil(u64),
}

const LOST: u64 = 0;
const FOREVER: u64 = u64::MAX;

impl Trust {
    /// Whether entries may be served now. One atomic load when no feed runs.
    #[inline]
    pub(crate) fn trusted(&self) -> bool {
        match self.until.load(Ordering::Acquire) {
            FOREVER => true,
            LOST => false,
            until => clock() < until,
        }
    }

    /// Adds a channel, lost, and returns its index.
    pub(super) fn open(&self) -> usize {
        let mut states = self.states();
        states.push(ChannelState::Lost);
        self.recompute(&states);
        states.len() - 1
    }

    /// Sets channel `index`'s state.
    pub(super) fn set(&self, index: usize, state: ChannelState) {
        let mut states = self.states();
        states[index] = state;
        self.recompute(&states);
    }

    /// Moves channel `index`'s deadline on to `deadline` if it is trusted; does nothing while
    /// it is lost.
    pub(super) fn extend(&self, index: usize, deadline: u64) {
        let mut states = self.states();
        if let ChannelState::TrustedUntil(until) = &mut states[index] {
            *until = (*until).max(deadline);
            self.recompute(&states);
        }
    }

    fn states(&self) -> MutexGuard<'_, Vec<ChannelState>> {
        lock(&self.channels)
    }

    fn recompute(&self, states: &[ChannelState]) {
        let until = states.iter().try_fold(FOREVER, |until, state| match state {
            ChannelState::Lost => None,
            ChannelState::TrustedUntil(deadline) => Some(until.min(*deadline)),
        });
        self.until.store(until.unwrap_or(LOST), Ordering::Release);
    }
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("trusted", &self.trusted())
            .finish_non_exhaustive()
    }
}

/// Now, in nanoseconds since the first call: a monotonic clock that fits an atomic. Never
/// [`LOST`] (it starts at 1).
pub(super) fn clock() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos())
        .unwrap_or(FOREVER - 1)
        .saturating_add(1)
}
