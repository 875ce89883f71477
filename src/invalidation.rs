//! The invalidation bus: how key changes reach every cache before the change returns.
//!
//! [`KeyManager`](crate::manager::KeyManager) publishes an [`Invalidation`] after every
//! change it makes to a key, synchronously, before its method returns. Caches subscribe as
//! [`InvalidationListener`]s. Channels from other processes (for example a database's
//! notifications) publish into the same bus, and report their own outages with
//! [`Invalidation::ChannelLost`] / [`Invalidation::ChannelRestored`] so that caches fail
//! closed while changes could be missed.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};

use crate::key::KeyDigest;

/// What a cache must forget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// Everything cached for the key with this digest, positive or negative.
    Key(KeyDigest),
    /// Everything: changes may have been missed.
    All,
    /// A channel that carries changes from other processes went down: until it is restored,
    /// changes may be missed, so caches forget everything and stop caching (every request is
    /// resolved from the store: fail closed, never stale-open).
    ChannelLost,
    /// A channel reported lost is back: caches forget everything once more (to cover what
    /// was missed while it was down) and cache again once no channel is lost.
    ChannelRestored,
}

/// Something that caches key lookups and must hear about key changes.
pub trait InvalidationListener: Send + Sync + 'static {
    /// Forgets what `invalidation` names. Called synchronously by the publisher: once this
    /// returns, no lookup that starts afterwards may see the forgotten entry.
    fn invalidate(&self, invalidation: &Invalidation);
}

/// Fans invalidations out to every subscribed listener.
///
/// Cloning gives another handle to the same bus. Listeners are held weakly: dropping a cache
/// unsubscribes it.
///
/// The bus remembers how many channels are lost (published [`Invalidation::ChannelLost`] and
/// not yet [`Invalidation::ChannelRestored`]), and a listener that subscribes meanwhile hears
/// those losses first: a cache built after a change feed was started fails closed too.
#[derive(Clone, Default)]
pub struct InvalidationBus {
    listeners: Arc<RwLock<Vec<Weak<dyn InvalidationListener>>>>,
    /// Channels lost and not restored; changed only under the listeners' write lock, so a
    /// new listener hears every loss exactly once, either replayed or published.
    channels_lost: Arc<AtomicUsize>,
}

impl InvalidationBus {
    /// A bus with no listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes `listener` until it is dropped.
    pub fn subscribe<L: InvalidationListener>(&self, listener: &Arc<L>) {
        let weak: Weak<L> = Arc::downgrade(listener);
        let mut listeners = self
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for _ in 0..self.channels_lost.load(Ordering::Acquire) {
            listener.invalidate(&Invalidation::ChannelLost);
        }
        listeners.push(weak);
    }

    /// Delivers `invalidation` to every live listener before returning.
    pub fn publish(&self, invalidation: Invalidation) {
        if matches!(
            invalidation,
            Invalidation::ChannelLost | Invalidation::ChannelRestored
        ) {
            return self.publish_channel_state(invalidation);
        }
        let mut dead = false;
        for listener in self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            match listener.upgrade() {
                Some(listener) => listener.invalidate(&invalidation),
                None => dead = true,
            }
        }
        if dead {
            self.listeners
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|listener| listener.strong_count() > 0);
        }
    }

    /// A channel's loss or return: rare, so delivered under the write lock, which keeps the
    /// count and the listeners that heard it in step with [`subscribe`](Self::subscribe).
    fn publish_channel_state(&self, invalidation: Invalidation) {
        let mut listeners = self
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if invalidation == Invalidation::ChannelLost {
            self.channels_lost.fetch_add(1, Ordering::AcqRel);
        } else {
            // Saturating, as the caches count: a restore without a loss changes nothing.
            let _ = self
                .channels_lost
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
        listeners.retain(|listener| match listener.upgrade() {
            Some(listener) => {
                listener.invalidate(&invalidation);
                true
            }
            None => false,
        });
    }

    /// How many listeners are subscribed and alive.
    pub fn listener_count(&self) -> usize {
        self.listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|listener| listener.strong_count() > 0)
            .count()
    }
}

impl fmt::Debug for InvalidationBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidationBus")
            .field("listeners", &self.listener_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Count(Mutex<usize>);

    impl InvalidationListener for Count {
        fn invalidate(&self, _: &Invalidation) {
            *self.0.lock().expect("lock") += 1;
        }
    }

    #[test]
    fn every_listener_hears_every_invalidation() {
        let bus = InvalidationBus::new();
        let (a, b) = (Arc::new(Count::default()), Arc::new(Count::default()));
        bus.subscribe(&a);
        bus.clone().subscribe(&b);
        bus.publish(Invalidation::All);
        bus.publish(Invalidation::All);
        assert_eq!(*a.0.lock().expect("lock"), 2);
        assert_eq!(*b.0.lock().expect("lock"), 2);
    }

    #[derive(Default)]
    struct Seen(Mutex<Vec<Invalidation>>);

    impl InvalidationListener for Seen {
        fn invalidate(&self, invalidation: &Invalidation) {
            self.0.lock().expect("lock").push(*invalidation);
        }
    }

    #[test]
    fn a_late_listener_hears_the_channels_still_lost() {
        let bus = InvalidationBus::new();
        bus.publish(Invalidation::ChannelLost);
        bus.publish(Invalidation::ChannelLost);
        bus.publish(Invalidation::ChannelRestored);
        let late = Arc::new(Seen::default());
        bus.subscribe(&late);
        assert_eq!(*late.0.lock().expect("lock"), [Invalidation::ChannelLost]);
        bus.publish(Invalidation::ChannelRestored);
        bus.publish(Invalidation::ChannelRestored);
        let later = Arc::new(Seen::default());
        bus.subscribe(&later);
        assert!(later.0.lock().expect("lock").is_empty());
        assert_eq!(
            *late.0.lock().expect("lock"),
            [
                Invalidation::ChannelLost,
                Invalidation::ChannelRestored,
                Invalidation::ChannelRestored
            ]
        );
    }

    #[test]
    fn dropped_listeners_are_unsubscribed() {
        let bus = InvalidationBus::new();
        let a = Arc::new(Count::default());
        bus.subscribe(&a);
        assert_eq!(bus.listener_count(), 1);
        drop(a);
        bus.publish(Invalidation::All);
        assert_eq!(bus.listener_count(), 0);
    }
}
