//! A change feed's say in its bus's trust, held by the feed's runner. Opening one marks the
//! bus untrusted until the feed subscribes, and dropping one leaves it untrusted for good.

use std::fmt;
use std::sync::Arc;

use super::trust::{ChannelState, Trust};
use crate::invalidation::{Invalidation, InvalidationBus};

/// One change feed's say in its bus's trust, held by the feed's runner.
///
/// Dropping it (the runner stopped, panicked or was aborted) leaves the channel lost for good:
/// changes from other processes can no longer arrive, so caches must not trust their entries.
pub(super) struct Channel {
    bus: InvalidationBus,
    /// The bus's trust state.
    trust: Arc<Trust>,
    index: usize,
}

impl Channel {
    /// A new cross-process channel publishing into `bus`, lost until the feed behind it
    /// subscribes. Only the feed runner opens channels, so only it can restore trust.
    pub(super) fn open(bus: &InvalidationBus) -> Self {
        let trust = bus.trust();
        let index = trust.open();
        bus.publish(Invalidation::All);
        Self {
            bus: bus.clone(),
            trust,
            index,
        }
    }

    /// Changes may be missed from now on: stop trusting, then forget everything.
    pub(super) fn lost(&self) {
        self.trust.set(self.index, ChannelState::Lost);
        self.bus.publish(Invalidation::All);
    }

    /// Subscribed again: forget everything (what changed while lost was missed), then trust
    /// entries until `deadline` (a [`clock`](super::trust::clock) value).
    pub(super) fn restored(&self, deadline: u64) {
        self.bus.publish(Invalidation::All);
        self.trust
            .set(self.index, ChannelState::TrustedUntil(deadline));
    }

    /// The channel proved that every change up to a recent moment has been delivered: trust
    /// entries until `deadline`. Does nothing while the channel is lost.
    pub(super) fn extend(&self, deadline: u64) {
        self.trust.extend(self.index, deadline);
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
    use super::*;
    use crate::feed::tests::Recorder;
    use crate::feed::trust::clock;

    /// A deadline no test reaches.
    const FAR: u64 = u64::MAX - 1;

    #[test]
    fn a_channel_is_lost_until_restored_and_trusted_only_until_its_deadline() {
        let bus = InvalidationBus::new();
        let seen = Arc::new(Recorder::default());
        bus.subscribe(&seen);
        let channel = Channel::open(&bus);
        assert!(!bus.trusted(), "lost until the feed subscribes");
        channel.restored(clock() + 60_000_000_000);
        assert!(bus.trusted());
        channel.lost();
        assert!(!bus.trusted());
        channel.extend(FAR);
        assert!(!bus.trusted(), "a heartbeat can't end a loss");
        channel.restored(clock());
        assert!(!bus.trusted(), "the deadline has passed");
        channel.extend(clock() + 60_000_000_000);
        assert!(bus.trusted());
        // Opened, restored, lost, restored: each forgot everything.
        assert_eq!(seen.seen(), [Invalidation::All; 4]);
    }

    #[test]
    fn every_channel_must_be_trusted_and_a_dropped_one_stays_lost() {
        let bus = InvalidationBus::new();
        let (a, b) = (Channel::open(&bus), Channel::open(&bus));
        a.restored(FAR);
        assert!(!bus.trusted(), "b is still lost");
        b.restored(FAR);
        assert!(bus.trusted());
        drop(b);
        assert!(!bus.trusted(), "a dropped channel's runner is gone");
    }
}
