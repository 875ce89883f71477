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
#[derive(Clone, Default)]
pub struct InvalidationBus {
    listeners: Arc<RwLock<Vec<Weak<dyn InvalidationListener>>>>,
}

impl InvalidationBus {
    /// A bus with no listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes `listener` until it is dropped.
    pub fn subscribe<L: InvalidationListener>(&self, listener: &Arc<L>) {
        let weak: Weak<L> = Arc::downgrade(listener);
        self.listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(weak);
    }

    /// Delivers `invalidation` to every live listener before returning.
    pub fn publish(&self, invalidation: Invalidation) {
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
