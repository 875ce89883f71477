//! Cross-process change feeds: how key changes made by *other* processes reach this process's
//! caches, failing closed whenever they might not.
//!
//! [`KeyManager`](crate::KeyManager) publishes its own changes on its
//! [`InvalidationBus`] before it returns. When several processes share one store, each one
//! also needs to hear about the others' changes. A [`ChangeFeed`] is the backend-specific part
//! of that (PostgreSQL `LISTEN`/`NOTIFY` in `PgChangeFeed`, feature `postgres`; a Redis or
//! NATS subscription would be another), and [`spawn`] runs any feed with the same protocol:
//!
//! 1. When the feed is spawned, [`Invalidation::ChannelLost`] is published at once, before
//!    [`spawn`] returns: until the first subscription is in place, caches serve nothing from
//!    memory and store nothing (every request is resolved from the store). The bus remembers
//!    lost channels, so this holds for caches subscribed after the feed was spawned too.
//! 2. Once [`ChangeFeed::subscribe`] succeeds, [`Invalidation::ChannelRestored`] is published:
//!    caches forget everything once more (covering whatever changed before the subscription)
//!    and cache again.
//! 3. Every change the feed receives is published as it arrives.
//! 4. If receiving fails, or a heartbeat ([`ChangeFeed::ping`]) fails or takes longer than
//!    the heartbeat timeout ([`FeedConfig::heartbeat`]), `ChannelLost` is published before anything else
//!    happens, and the task subscribes again with exponential backoff, back to step 2.
//!
//! A cache never trusts a positive entry while changes could be missed: "401 at once" holds in
//! every process as soon as the change's notification arrives, and while the channel is down
//! requests are answered from the store (or 503 if the store is down too), never stale-open.
//!
//! With PostgreSQL, `PgChangeFeed` is the feed (see its docs). Another bus takes a few lines;
//! here an in-memory broadcast channel stands in for Redis pub/sub or NATS:
//!
//! ```
//! use std::time::Duration;
//!
//! use async_trait::async_trait;
//! use tokio::sync::broadcast;
//! use tower_api_key::feed::{self, ChangeFeed, FeedConfig, FeedError};
//! use tower_api_key::invalidation::{Invalidation, InvalidationBus};
//! use tower_api_key::key::KeyDigest;
//!
//! /// Digests of changed keys, as other processes publish them.
//! struct BroadcastFeed {
//!     sender: broadcast::Sender<KeyDigest>,
//!     receiver: Option<broadcast::Receiver<KeyDigest>>,
//! }
//!
//! #[async_trait]
//! impl ChangeFeed for BroadcastFeed {
//!     async fn subscribe(&mut self) -> Result<(), FeedError> {
//!         self.receiver = Some(self.sender.subscribe());
//!         Ok(())
//!     }
//!
//!     async fn recv(&mut self) -> Result<Vec<Invalidation>, FeedError> {
//!         let receiver = self.receiver.as_mut().ok_or_else(|| FeedError::new("not subscribed"))?;
//!         // `recv` is cancel-safe. Lagging behind means changes were dropped: an error, so
//!         // the runner reports the channel lost and subscribes again.
//!         match receiver.recv().await {
//!             Ok(digest) => Ok(vec![Invalidation::Key(digest)]),
//!             Err(err) => Err(FeedError::new(err)),
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (sender, _) = broadcast::channel(1024);
//! let bus = InvalidationBus::new(); // in a server: `manager.invalidations()`
//! let feed = BroadcastFeed { sender: sender.clone(), receiver: None };
//! let task = feed::spawn(feed, &bus, FeedConfig::default());
//! assert!(task.wait_subscribed(Duration::from_secs(1)).await);
//! sender.send(KeyDigest::from_bytes([1; 32])).unwrap(); // another process revoked a key
//! task.shutdown().await;
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::invalidation::{Invalidation, InvalidationBus};

// ===== ChangeFeed =====

/// The backend-specific part of a cross-process change channel; run it with [`spawn`].
///
/// The runner calls [`subscribe`](Self::subscribe) first and after every failure, then
/// [`recv`](Self::recv) in a loop, interleaved with [`ping`](Self::ping) heartbeats.
#[async_trait]
pub trait ChangeFeed: Send + 'static {
    /// Connects (again) and subscribes, dropping whatever an earlier subscription left.
    ///
    /// When this returns `Ok`, every change committed from then on must be delivered by
    /// [`recv`](Self::recv); changes before it may be lost (the runner clears caches then).
    async fn subscribe(&mut self) -> Result<(), FeedError>;

    /// Waits for the next changes made by any process.
    ///
    /// Only [`Invalidation::Key`] and [`Invalidation::All`] are meaningful here: the runner
    /// publishes the channel's own state, and treats anything else as `All`.
    ///
    /// Must be cancel-safe: the runner drops a pending `recv` when a heartbeat is due or the
    /// feed is shut down, and calls it again afterwards without losing a change.
    ///
    /// # Errors
    ///
    /// Any error means changes may have been missed: the runner reports the channel lost and
    /// subscribes again.
    async fn recv(&mut self) -> Result<Vec<Invalidation>, FeedError>;

    /// Proves that the subscription is still alive, e.g. with a round trip on the connection
    /// that receives the changes, so that a silently dead connection is noticed. The default
    /// does nothing, for feeds whose `recv` notices every loss by itself.
    async fn ping(&mut self) -> Result<(), FeedError> {
        Ok(())
    }
}

/// Why a [`ChangeFeed`] could not subscribe or lost its subscription.
#[derive(Debug)]
pub struct FeedError(Box<dyn std::error::Error + Send + Sync>);

impl FeedError {
    /// Wraps the underlying failure.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(source.into())
    }
}

impl fmt::Display for FeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "change feed failed: {}", self.0)
    }
}

impl std::error::Error for FeedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

// ===== FeedConfig =====

/// Timing of a feed's runner: heartbeats, subscription timeout and reconnection backoff.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::feed::FeedConfig;
///
/// let config = FeedConfig::default()
///     .heartbeat(Duration::from_millis(500), Duration::from_secs(1))
///     .backoff(Duration::from_millis(10), Duration::from_secs(2));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct FeedConfig {
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    subscribe_timeout: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(2),
            subscribe_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl FeedConfig {
    /// How often the subscription is proven alive, and how long a proof may take before the
    /// channel counts as lost (defaults 1 s and 2 s). Their sum bounds how long a connection
    /// that died silently (no reset, no end of stream) goes unnoticed.
    #[must_use]
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval.max(Duration::from_millis(1));
        self.heartbeat_timeout = timeout;
        self
    }

    /// How long one subscription attempt may take (default 5 s).
    #[must_use]
    pub fn subscribe_timeout(mut self, timeout: Duration) -> Self {
        self.subscribe_timeout = timeout;
        self
    }

    /// The wait before the second attempt to subscribe again, and the most it grows to by
    /// doubling (defaults 25 ms and 1 s). The first attempt after a loss is immediate.
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }
}

// ===== the runner =====

/// What a running feed is doing, as seen through [`FeedTask::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FeedStatus {
    /// Whether the feed is subscribed (caches may trust their entries).
    pub subscribed: bool,
    /// How many times a subscription was lost since the feed was spawned.
    pub outages: u64,
    /// How many subscriptions succeeded since the feed was spawned.
    pub subscriptions: u64,
}

/// Runs `feed` on the current tokio runtime, publishing into `bus`, with the protocol
/// described in the [module docs](self).
///
/// [`Invalidation::ChannelLost`] is published before this returns, so a cache subscribed to
/// `bus` fails closed until the first subscription is in place.
///
/// # Panics
///
/// Outside a tokio runtime, like [`tokio::spawn`].
pub fn spawn<F: ChangeFeed>(feed: F, bus: &InvalidationBus, config: FeedConfig) -> FeedTask {
    bus.publish(Invalidation::ChannelLost);
    let (status_tx, status) = watch::channel(FeedStatus::default());
    let (stop, stopped) = oneshot::channel();
    let runner = Runner {
        feed,
        bus: bus.clone(),
        config,
        status: status_tx,
    };
    let handle = tokio::spawn(runner.run(stopped));
    FeedTask {
        status,
        stop: Some(stop),
        handle: Some(handle),
    }
}

/// A feed running in the background, started by [`spawn`].
///
/// Dropping it stops the feed, like [`shutdown`](Self::shutdown) without waiting. A stopped
/// feed leaves its channel reported lost: caches on its bus stop trusting their entries,
/// since changes from other processes can no longer reach them.
#[derive(Debug)]
pub struct FeedTask {
    status: watch::Receiver<FeedStatus>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl FeedTask {
    /// What the feed is doing now.
    pub fn status(&self) -> FeedStatus {
        *self.status.borrow()
    }

    /// Waits until the feed is subscribed (at once if it is); `false` if `within` passed
    /// first or the feed stopped.
    pub async fn wait_subscribed(&self, within: Duration) -> bool {
        self.wait_for(within, |status| status.subscribed).await
    }

    /// Waits until `condition` holds for the feed's status; `false` if `within` passed first
    /// or the feed stopped.
    pub async fn wait_for(
        &self,
        within: Duration,
        mut condition: impl FnMut(&FeedStatus) -> bool,
    ) -> bool {
        let mut status = self.status.clone();
        matches!(
            tokio::time::timeout(within, status.wait_for(|s| condition(s))).await,
            Ok(Ok(_))
        )
    }

    /// Stops the feed and waits for it to finish; the channel is left reported lost.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for FeedTask {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct Runner<F> {
    feed: F,
    bus: InvalidationBus,
    config: FeedConfig,
    status: watch::Sender<FeedStatus>,
}

impl<F: ChangeFeed> Runner<F> {
    /// Subscribes, relays, and on every loss reports it and subscribes again, until stopped.
    /// The channel is reported lost on entry (by [`spawn`]) and whenever this returns.
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) {
        let mut backoff = None::<Duration>;
        loop {
            if let Some(wait) = backoff {
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            let subscribed = tokio::select! {
                _ = &mut stopped => return,
                subscribed = tokio::time::timeout(
                    self.config.subscribe_timeout,
                    self.feed.subscribe(),
                ) => subscribed,
            };
            match subscribed {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    backoff = Some(self.next_backoff(backoff));
                    tracing::warn!(error = %err, retry_in = ?backoff, "change feed: subscribe failed");
                    continue;
                }
                Err(_) => {
                    backoff = Some(self.next_backoff(backoff));
                    tracing::warn!(
                        timeout = ?self.config.subscribe_timeout,
                        retry_in = ?backoff,
                        "change feed: subscribe timed out"
                    );
                    continue;
                }
            }
            self.bus.publish(Invalidation::ChannelRestored);
            self.status.send_modify(|status| {
                status.subscribed = true;
                status.subscriptions += 1;
            });
            tracing::info!("change feed: subscribed");

            let outcome = self.relay(&mut stopped).await;
            // Report the loss before anything else, so that no cache trusts an entry a missed
            // change could have made stale. A stopped feed is lost for good.
            self.bus.publish(Invalidation::ChannelLost);
            self.status.send_modify(|status| {
                status.subscribed = false;
                status.outages += u64::from(outcome.is_some());
            });
            match outcome {
                Some(err) => {
                    tracing::warn!(error = %err, "change feed: lost; failing closed until resubscribed");
                    // The first attempt is immediate: most losses are a dropped connection.
                    backoff = None;
                }
                None => return,
            }
        }
    }

    /// Publishes changes until the subscription fails (`Some(why)`) or the feed is stopped
    /// (`None`).
    async fn relay(&mut self, stopped: &mut oneshot::Receiver<()>) -> Option<FeedError> {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            tokio::select! {
                biased;
                _ = &mut *stopped => return None,
                received = self.feed.recv() => match received {
                    Ok(changes) => {
                        for change in changes {
                            self.bus.publish(relayed(change));
                        }
                    }
                    Err(err) => return Some(err),
                },
                _ = heartbeat.tick() => {
                    match tokio::time::timeout(self.config.heartbeat_timeout, self.feed.ping()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => return Some(err),
                        Err(_) => return Some(FeedError::new(format!(
                            "no heartbeat answer within {:?}",
                            self.config.heartbeat_timeout
                        ))),
                    }
                }
            }
        }
    }

    fn next_backoff(&self, last: Option<Duration>) -> Duration {
        match last {
            None => self.config.min_backoff,
            Some(last) => (last * 2).min(self.config.max_backoff),
        }
    }
}

/// A feed reports changes only; its channel's state is the runner's to publish.
fn relayed(change: Invalidation) -> Invalidation {
    match change {
        Invalidation::Key(digest) => Invalidation::Key(digest),
        _ => Invalidation::All,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::mpsc;

    use super::*;
    use crate::invalidation::InvalidationListener;
    use crate::key::KeyDigest;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Invalidation>>);

    impl InvalidationListener for Recorder {
        fn invalidate(&self, invalidation: &Invalidation) {
            self.0.lock().expect("lock").push(*invalidation);
        }
    }

    impl Recorder {
        fn seen(&self) -> Vec<Invalidation> {
            self.0.lock().expect("lock").clone()
        }
    }

    /// A feed driven by the test: each `Ok` is a batch of changes, each `Err` a loss.
    struct Scripted {
        events: mpsc::UnboundedReceiver<Result<Vec<Invalidation>, String>>,
        refuse_subscriptions: Arc<Mutex<usize>>,
    }

    #[async_trait]
    impl ChangeFeed for Scripted {
        async fn subscribe(&mut self) -> Result<(), FeedError> {
            let mut refuse = self.refuse_subscriptions.lock().expect("lock");
            if *refuse > 0 {
                *refuse -= 1;
                return Err(FeedError::new("refused"));
            }
            Ok(())
        }

        async fn recv(&mut self) -> Result<Vec<Invalidation>, FeedError> {
            match self.events.recv().await {
                Some(Ok(changes)) => Ok(changes),
                Some(Err(why)) => Err(FeedError::new(why)),
                None => std::future::pending().await,
            }
        }
    }

    fn digest(byte: u8) -> KeyDigest {
        KeyDigest::from_bytes([byte; 32])
    }

    #[tokio::test]
    async fn lost_until_subscribed_then_relays_and_fails_closed_on_loss() {
        let bus = InvalidationBus::new();
        let recorder = Arc::new(Recorder::default());
        bus.subscribe(&recorder);
        let (events, rx) = mpsc::unbounded_channel();
        let refuse = Arc::new(Mutex::new(2));
        let config =
            FeedConfig::default().backoff(Duration::from_millis(1), Duration::from_millis(2));
        let task = spawn(
            Scripted {
                events: rx,
                refuse_subscriptions: Arc::clone(&refuse),
            },
            &bus,
            config,
        );
        // Fail closed before the first subscription, synchronously.
        assert_eq!(recorder.seen(), [Invalidation::ChannelLost]);
        assert!(task.wait_subscribed(Duration::from_secs(5)).await);
        assert_eq!(
            recorder.seen(),
            [Invalidation::ChannelLost, Invalidation::ChannelRestored]
        );

        events
            .send(Ok(vec![
                Invalidation::Key(digest(1)),
                Invalidation::ChannelRestored,
            ]))
            .expect("send");
        events.send(Err("connection reset".into())).expect("send");
        assert!(
            task.wait_for(Duration::from_secs(5), |s| s.outages == 1 && s.subscribed)
                .await
        );
        assert_eq!(
            recorder.seen(),
            [
                Invalidation::ChannelLost,
                Invalidation::ChannelRestored,
                Invalidation::Key(digest(1)),
                // A feed can't restore a channel by itself: anything but a key is "all".
                Invalidation::All,
                Invalidation::ChannelLost,
                Invalidation::ChannelRestored,
            ]
        );

        task.shutdown().await;
        assert_eq!(recorder.seen().last(), Some(&Invalidation::ChannelLost));
    }

    struct Silent;

    #[async_trait]
    impl ChangeFeed for Silent {
        async fn subscribe(&mut self) -> Result<(), FeedError> {
            Ok(())
        }
        async fn recv(&mut self) -> Result<Vec<Invalidation>, FeedError> {
            std::future::pending().await
        }
        async fn ping(&mut self) -> Result<(), FeedError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn an_unanswered_heartbeat_counts_as_a_loss() {
        let bus = InvalidationBus::new();
        let config = FeedConfig::default()
            .heartbeat(Duration::from_millis(5), Duration::from_millis(5))
            .backoff(Duration::from_millis(1), Duration::from_millis(1));
        let task = spawn(Silent, &bus, config);
        assert!(
            task.wait_for(Duration::from_secs(5), |s| s.outages >= 2)
                .await
        );
    }
}
