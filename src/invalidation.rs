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
use std::sync::{Arc, RwLock, Weak};

use crate::feed::Trust;
use crate::key::KeyDigest;
use crate::sync::{read, write};

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

    /// The bus's trust state: caches read it on every lookup, and only a feed's channel (see
    /// [`feed`](crate::feed)) changes it.
    pub(crate) fn trust(&self) -> Arc<Trust> {
        Arc::clone(&self.trust)
    }

    /// How many listeners are subscribed and alive.
    ///
    /// For tests (feature `test-util`): not part of the stable API.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn listener_count(&self) -> usize {
        self.live_listeners()
    }

    fn live_listeners(&self) -> usize {
        read(&self.listeners)
            .iter()
            .filter(|listener| listener.strong_count() > 0)
            .count()
    }
}

impl fmt::Debug for InvalidationBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidationBus")
            .field("listeners", &self.live_listeners())
            .field("trusted", &self.trusted())
            .finish()
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
