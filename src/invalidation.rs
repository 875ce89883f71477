//! The invalidation bus: how key changes reach every cache before the change returns.
//!
//! [`KeyManager`](crate::manager::KeyManager) publishes an [`Invalidation`] after every
//! change it makes to a key, synchronously, before its method returns. Caches subscribe as
//! [`InvalidationListener`]s. Change feeds from other processes (for example a database's
//! notifications, see [`feed`](crate::feed)) publish into the same bus, and the bus also
//! carries whether those feeds can be trusted: while one is down, or has not proven itself
//! recently, caches on the bus serve nothing from memory (fail closed). Only a running feed
//! can change that state; [`publish`](InvalidationBus::publish) can only make caches forget.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use tower_api_key::invalidation::{Invalidation, InvalidationBus, InvalidationListener};
//!
//! #[derive(Default)]
//! struct Recorder(Mutex<Vec<Invalidation>>);
//!
//! impl InvalidationListener for Recorder {
//!     fn invalidate(&self, invalidation: &Invalidation) {
//!         self.0.lock().unwrap().push(*invalidation);
//!     }
//! }
//!
//! let bus = InvalidationBus::new();
//! let recorder = Arc::new(Recorder::default());
//! bus.subscribe(&recorder);
//! bus.publish(Invalidation::All);
//! assert_eq!(*recorder.0.lock().unwrap(), [Invalidation::All]);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::Instant;

use crate::key::KeyDigest;
use crate::sync::{lock, read, write};

/// What a cache must forget.
///
/// Publishing can only make caches forget. Whether they may trust what they cache again after
/// a change feed was lost is the feed runner's to say, and no variant here can say it:
///
/// ```compile_fail
/// use tower_api_key::invalidation::{Invalidation, InvalidationBus};
/// InvalidationBus::new().publish(Invalidation::ChannelRestored);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// Everything cached for the key with this digest, positive or negative.
    Key(KeyDigest),
    /// Everything: changes may have been missed.
    All,
}

/// Something that caches key lookups and must hear about key changes.
pub trait InvalidationListener: Send + Sync + 'static {
    /// Forgets what `invalidation` names. Called synchronously by the publisher: once this
    /// returns, no lookup that starts afterwards may see the forgotten entry.
    fn invalidate(&self, invalidation: &Invalidation);
}

/// Fans invalidations out to every subscribed listener, and tells caches whether the change
/// feeds publishing into it can be trusted.
///
/// Cloning gives another handle to the same bus. Listeners are held weakly: dropping a cache
/// unsubscribes it.
#[derive(Clone, Default)]
pub struct InvalidationBus {
    listeners: Arc<RwLock<Vec<Weak<dyn InvalidationListener>>>>,
    trust: Arc<Trust>,
}

impl InvalidationBus {
    /// A bus with no listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes `listener` until it is dropped.
    pub fn subscribe<L: InvalidationListener>(&self, listener: &Arc<L>) {
        let weak: Weak<L> = Arc::downgrade(listener);
        write(&self.listeners).push(weak);
    }

    /// Delivers `invalidation` to every live listener before returning.
    pub fn publish(&self, invalidation: Invalidation) {
        let mut dead = false;
        for listener in read(&self.listeners).iter() {
            match listener.upgrade() {
                Some(listener) => listener.invalidate(&invalidation),
                None => dead = true,
            }
        }
        if dead {
            write(&self.listeners).retain(|listener| listener.strong_count() > 0);
        }
    }

    /// Whether caches on this bus may serve their entries now: every change feed publishing
    /// into it is subscribed and proved itself within its heartbeat bound. Always `true` on
    /// a bus that no feed publishes into.
    pub fn trusted(&self) -> bool {
        self.trust.trusted()
    }

    /// The bus's trust state, for caches to read on every lookup.
    pub(crate) fn trust(&self) -> Arc<Trust> {
        Arc::clone(&self.trust)
    }

    /// A new cross-process channel publishing into this bus, lost until the feed behind it
    /// subscribes. Only the feed runner opens channels, so only it can restore trust.
    pub(crate) fn open_channel(&self) -> Channel {
        let index = {
            let mut states = self.trust.states();
            states.push(ChannelState::Lost);
            self.trust.recompute(&states);
            states.len() - 1
        };
        self.publish(Invalidation::All);
        Channel {
            bus: self.clone(),
            index,
        }
    }

    /// How many listeners are subscribed and alive.
    #[doc(hidden)]
    pub fn listener_count(&self) -> usize {
        read(&self.listeners)
            .iter()
            .filter(|listener| listener.strong_count() > 0)
            .count()
    }
}

impl fmt::Debug for InvalidationBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidationBus")
            .field("listeners", &self.listener_count())
            .field("trusted", &self.trusted())
            .finish()
    }
}

// ===== Trust =====

/// Whether the channels feeding one bus can be trusted, readable with one atomic load.
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
enum ChannelState {
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

    fn set(&self, index: usize, state: ChannelState) {
        let mut states = self.states();
        states[index] = state;
        self.recompute(&states);
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
pub(crate) fn clock() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos())
        .unwrap_or(FOREVER - 1)
        .saturating_add(1)
}

// ===== Channel =====

/// One change feed's say in its bus's trust, held by the feed's runner.
///
/// Dropping it (the runner stopped, panicked or was aborted) leaves the channel lost for good:
/// changes from other processes can no longer arrive, so caches must not trust their entries.
pub(crate) struct Channel {
    bus: InvalidationBus,
    index: usize,
}

impl Channel {
    /// Changes may be missed from now on: stop trusting, then forget everything.
    pub(crate) fn lost(&self) {
        self.bus.trust.set(self.index, ChannelState::Lost);
        self.bus.publish(Invalidation::All);
    }

    /// Subscribed again: forget everything (what changed while lost was missed), then trust
    /// entries until `deadline` (a [`clock`] value).
    pub(crate) fn restored(&self, deadline: u64) {
        self.bus.publish(Invalidation::All);
        self.bus
            .trust
            .set(self.index, ChannelState::TrustedUntil(deadline));
    }

    /// The channel proved that every change up to a recent moment has been delivered: trust
    /// entries until `deadline`. Does nothing while the channel is lost.
    pub(crate) fn extend(&self, deadline: u64) {
        let mut states = self.bus.trust.states();
        if let ChannelState::TrustedUntil(until) = &mut states[self.index] {
            *until = (*until).max(deadline);
            self.bus.trust.recompute(&states);
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.lost();
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<Invalidation>>);

    impl InvalidationListener for Seen {
        fn invalidate(&self, invalidation: &Invalidation) {
            self.0.lock().expect("lock").push(*invalidation);
        }
    }

    impl Seen {
        fn count(&self) -> usize {
            self.0.lock().expect("lock").len()
        }
    }

    #[test]
    fn every_listener_hears_every_invalidation() {
        let bus = InvalidationBus::new();
        let (a, b) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
        bus.subscribe(&a);
        bus.clone().subscribe(&b);
        bus.publish(Invalidation::All);
        bus.publish(Invalidation::All);
        assert_eq!(a.count(), 2);
        assert_eq!(b.count(), 2);
    }

    #[test]
    fn a_bus_without_channels_is_trusted() {
        assert!(InvalidationBus::new().trusted());
    }

    #[test]
    fn a_channel_is_lost_until_restored_and_trusted_only_until_its_deadline() {
        let bus = InvalidationBus::new();
        let seen = Arc::new(Seen::default());
        bus.subscribe(&seen);
        let channel = bus.open_channel();
        assert!(!bus.trusted(), "lost until the feed subscribes");
        channel.restored(clock() + 60_000_000_000);
        assert!(bus.trusted());
        channel.lost();
        assert!(!bus.trusted());
        channel.extend(FOREVER - 1);
        assert!(!bus.trusted(), "a heartbeat can't end a loss");
        channel.restored(clock());
        assert!(!bus.trusted(), "the deadline has passed");
        channel.extend(clock() + 60_000_000_000);
        assert!(bus.trusted());
        // Opened, restored, lost, restored: each forgot everything.
        assert_eq!(*seen.0.lock().expect("lock"), [Invalidation::All; 4]);
    }

    #[test]
    fn every_channel_must_be_trusted_and_a_dropped_one_stays_lost() {
        let bus = InvalidationBus::new();
        let (a, b) = (bus.open_channel(), bus.open_channel());
        a.restored(FOREVER - 1);
        assert!(!bus.trusted(), "b is still lost");
        b.restored(FOREVER - 1);
        assert!(bus.trusted());
        drop(b);
        assert!(!bus.trusted(), "a dropped channel's runner is gone");
    }

    #[test]
    fn dropped_listeners_are_unsubscribed() {
        let bus = InvalidationBus::new();
        let a = Arc::new(Seen::default());
        bus.subscribe(&a);
        assert_eq!(bus.listener_count(), 1);
        drop(a);
        bus.publish(Invalidation::All);
        assert_eq!(bus.listener_count(), 0);
    }
}
