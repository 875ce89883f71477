//! Cross-process change feeds: how key changes made by *other* processes reach this process's
//! caches, failing closed whenever they might not.
//!
//! [`KeyManager`](crate::KeyManager) publishes its own changes on its
//! [`InvalidationBus`] before it returns. When several processes share one store, each one
//! also needs to hear about the others' changes. A [`ChangeFeed`] is the backend-specific part
//! of that (PostgreSQL `LISTEN`/`NOTIFY` in `PgChangeFeed`, feature `postgres`; a Redis or
//! NATS subscription would be another), and [`spawn`] runs any feed with the same protocol:
//!
//! 1. When the feed is spawned, its channel is opened *lost*, before [`spawn`] returns: until
//!    the first subscription is in place, caches on the bus serve nothing from memory and
//!    store nothing (every request is resolved from the store).
//! 2. Once [`ChangeFeed::subscribe`] succeeds, caches forget everything (covering whatever
//!    changed before the subscription) and may trust what they cache from then on, until a
//!    deadline: one heartbeat interval plus one heartbeat timeout
//!    ([`FeedConfig::heartbeat`]).
//! 3. Every change the feed receives is published as it arrives.
//! 4. Every heartbeat interval the runner sends a random nonce *through the channel*
//!    ([`ChangeFeed::send_heartbeat`]) and waits for [`ChangeFeed::recv`] to hand it back.
//!    Changes are delivered in order, so the nonce's return proves that every change made
//!    before it was sent has been published: the trust deadline moves to the send time plus
//!    the interval plus the timeout. A connection that still answers queries but no longer
//!    delivers (a dropped `LISTEN`, a pooler that moved the session) fails this test. The
//!    nonce need only reach the process that sent it, as long as the channel delivers it in
//!    order with the changes: then N processes cost N heartbeat deliveries per interval, not
//!    N². Each round trip is recorded in a histogram ([`FeedTask::metrics`]): it bounds how
//!    long a change made elsewhere took to arrive.
//! 5. If receiving or sending fails, or the nonce is not back within the heartbeat timeout,
//!    the channel is reported lost before anything else happens, and the task subscribes
//!    again with exponential backoff, back to step 2.
//! 6. If the runner itself stops making progress (a starved or deadlocked task), nothing
//!    extends the deadline and caches stop trusting their entries when it passes; if the task
//!    ends for any reason (shut down, panicked, aborted), its channel stays lost.
//!
//! A cache never trusts a positive entry while changes could be missed: "401 at once" holds in
//! every process as soon as the change's notification arrives, a change that is never
//! delivered is honoured elsewhere for at most the heartbeat interval plus the timeout, and
//! while the channel is down requests are answered from the store (or 503 if the store is
//! down too), never stale-open. Nothing outside the runner can restore trust: the channel's
//! state is not something [`InvalidationBus::publish`] can send.
//!
//! With PostgreSQL, `PgChangeFeed` is the feed (see its docs). Another bus takes a few lines;
//! here an in-memory broadcast channel stands in for Redis pub/sub or NATS:
//!
//! ```
//! use std::time::Duration;
//!
//! use async_trait::async_trait;
//! use tokio::sync::broadcast;
//! use tower_api_key::feed::{self, ChangeFeed, FeedConfig, FeedError, FeedMessage};
//! use tower_api_key::invalidation::{Invalidation, InvalidationBus};
//! use tower_api_key::key::KeyDigest;
//!
//! /// What travels on the bus between processes.
//! #[derive(Debug, Clone)]
//! enum Message {
//!     Changed(KeyDigest),
//!     Heartbeat(u64),
//! }
//!
//! struct BroadcastFeed {
//!     sender: broadcast::Sender<Message>,
//!     receiver: Option<broadcast::Receiver<Message>>,
//! }
//!
//! #[async_trait]
//! impl ChangeFeed for BroadcastFeed {
//!     async fn subscribe(&mut self) -> Result<(), FeedError> {
//!         self.receiver = Some(self.sender.subscribe());
//!         Ok(())
//!     }
//!
//!     async fn recv(&mut self) -> Result<Vec<FeedMessage>, FeedError> {
//!         let receiver = self.receiver.as_mut().ok_or_else(|| FeedError::new("not subscribed"))?;
//!         // `recv` is cancel-safe. Lagging behind means changes were dropped: an error, so
//!         // the runner reports the channel lost and subscribes again.
//!         match receiver.recv().await {
//!             Ok(Message::Changed(digest)) => Ok(vec![FeedMessage::Changed(Invalidation::Key(digest))]),
//!             Ok(Message::Heartbeat(nonce)) => Ok(vec![FeedMessage::Heartbeat(nonce)]),
//!             Err(err) => Err(FeedError::new(err)),
//!         }
//!     }
//!
//!     async fn send_heartbeat(&mut self, nonce: u64) -> Result<(), FeedError> {
//!         // Through the same channel as the changes, so its return proves delivery. (Every
//!         // subscriber hears it here; a bus with a topic per subscriber, delivered in order
//!         // with the changes, would spare the others.)
//!         self.sender.send(Message::Heartbeat(nonce)).map(drop).map_err(FeedError::new)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (sender, _) = broadcast::channel(1024);
//! let bus = InvalidationBus::new(); // in a server: `manager.invalidation_bus()`
//! let feed = BroadcastFeed { sender: sender.clone(), receiver: None };
//! let task = feed::spawn(feed, &bus, FeedConfig::default());
//! assert!(task.wait_subscribed(Duration::from_secs(1)).await);
//! assert!(bus.trusted());
//! // Another process revoked a key:
//! sender.send(Message::Changed(KeyDigest::from_bytes([1; 32]))).unwrap();
//! // Its heartbeats' round trips, for a `/metrics` route:
//! let _text = task.metrics().to_prometheus();
//! task.shutdown().await;
//! # }
//! ```

mod channel;
mod delivery;
mod trust;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use self::channel::Channel;
use self::delivery::Delivery;
pub use self::delivery::{DELIVERY_BUCKETS, DeliveryHistogram, FeedMetrics};
pub(crate) use self::trust::Trust;
use self::trust::clock;
use crate::invalidation::{Invalidation, InvalidationBus};

// ===== ChangeFeed =====

/// The backend-specific part of a cross-process change channel; run it with [`spawn`].
///
/// The runner calls [`subscribe`](Self::subscribe) first and after every failure, then
/// [`recv`](Self::recv) in a loop, interleaved with [`send_heartbeat`](Self::send_heartbeat).
#[async_trait]
pub trait ChangeFeed: Send + 'static {
    /// Connects (again) and subscribes, dropping whatever an earlier subscription left.
    ///
    /// When this returns `Ok`, every change committed from then on must be delivered by
    /// [`recv`](Self::recv); changes before it may be lost (the runner clears caches then).
    async fn subscribe(&mut self) -> Result<(), FeedError>;

    /// Waits for the next changes made by any process, and heartbeats (this feed's, and any
    /// other process's it hears), in the order the channel delivers them.
    ///
    /// Must be cancel-safe: the runner drops a pending `recv` when a heartbeat is due or the
    /// feed is shut down, and calls it again afterwards without losing a message.
    ///
    /// # Errors
    ///
    /// Any error means changes may have been missed: the runner reports the channel lost and
    /// subscribes again.
    async fn recv(&mut self) -> Result<Vec<FeedMessage>, FeedError>;

    /// Sends `nonce` through the channel itself, the way changes travel, so that
    /// [`recv`](Self::recv) hands it back as [`FeedMessage::Heartbeat`] after every change
    /// sent before it. A heartbeat that only proves the connection (a `SELECT 1`) is not
    /// enough: a subscription can stop delivering while its connection still answers.
    ///
    /// Where the bus allows it, send it to this subscription alone, on a path the bus orders
    /// with the changes (`PgChangeFeed` uses a channel of its own on the listening
    /// connection): every process heartbeats, so a heartbeat that every subscriber receives
    /// costs N² deliveries across N processes instead of N. Runners ignore nonces they did not
    /// send (counted in [`FeedStatus::foreign_heartbeats`]).
    ///
    /// # Errors
    ///
    /// The channel could not take the message: the runner reports it lost.
    async fn send_heartbeat(&mut self, nonce: u64) -> Result<(), FeedError>;
}

/// What [`ChangeFeed::recv`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeedMessage {
    /// A change made by some process: caches forget what it names.
    Changed(Invalidation),
    /// A heartbeat nonce sent through the channel by some process.
    Heartbeat(u64),
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
    /// How often a heartbeat nonce is sent through the channel, and how long it may take to
    /// come back before the channel counts as lost (defaults 1 s and 2 s). Their sum bounds
    /// how long caches trust their entries without proof that changes still arrive: a
    /// subscription that died silently, or a runner that stopped running, is honoured for at
    /// most that long.
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
    /// How many of this feed's heartbeats came back through the channel.
    pub heartbeats: u64,
    /// How many heartbeats the feed received that it did not send: other processes' (a feed
    /// whose heartbeats reach only itself, as `PgChangeFeed`'s do, receives none from
    /// processes of its own release).
    pub foreign_heartbeats: u64,
}

/// Runs `feed` on the current tokio runtime, publishing into `bus`, with the protocol
/// described in the [module docs](self).
///
/// The feed's channel is opened lost before this returns, so caches on `bus` fail closed
/// until the first subscription is in place.
///
/// # Panics
///
/// Outside a tokio runtime, like [`tokio::spawn`].
pub fn spawn<F: ChangeFeed>(feed: F, bus: &InvalidationBus, config: FeedConfig) -> FeedTask {
    let channel = Channel::open(bus);
    let (status_tx, status) = watch::channel(FeedStatus::default());
    let (stop, stopped) = oneshot::channel();
    let delivery = Arc::new(Delivery::default());
    let runner = Runner {
        feed,
        bus: bus.clone(),
        channel,
        config,
        status: status_tx,
        delivery: Arc::clone(&delivery),
    };
    let handle = tokio::spawn(runner.run(stopped));
    FeedTask {
        monitor: FeedMonitor { status, delivery },
        stop: Some(stop),
        handle: Some(handle),
    }
}

/// A feed running in the background, started by [`spawn`].
///
/// Dropping it stops the feed, like [`shutdown`](Self::shutdown) without waiting. A stopped
/// feed leaves its channel lost: caches on its bus stop trusting their entries, since changes
/// from other processes can no longer reach them.
#[derive(Debug)]
pub struct FeedTask {
    monitor: FeedMonitor,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl FeedTask {
    /// What the feed is doing now.
    pub fn status(&self) -> FeedStatus {
        self.monitor.status()
    }

    /// The feed's status and the histogram of its heartbeats' round trips, for monitoring
    /// ([`FeedMetrics::to_prometheus`]). With the `metrics` feature the same series also go
    /// to the `metrics` facade as they change.
    pub fn metrics(&self) -> FeedMetrics {
        self.monitor.metrics()
    }

    /// A cloneable handle reading [`status`](Self::status) and [`metrics`](Self::metrics),
    /// for a `/metrics` route while the task itself is kept for shutdown.
    pub fn monitor(&self) -> FeedMonitor {
        self.monitor.clone()
    }

    /// Waits until the feed is subscribed (at once if it is); `false` if `within` passed
    /// first or the feed stopped.
    pub async fn wait_subscribed(&self, within: Duration) -> bool {
        self.wait_until(within, |status| status.subscribed).await
    }

    /// Waits until `condition` holds for the feed's status; `false` if `within` passed first
    /// or the feed stopped.
    ///
    /// For tests (feature `test-util`): not part of the stable API.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub async fn wait_for(
        &self,
        within: Duration,
        condition: impl FnMut(&FeedStatus) -> bool,
    ) -> bool {
        self.wait_until(within, condition).await
    }

    async fn wait_until(
        &self,
        within: Duration,
        mut condition: impl FnMut(&FeedStatus) -> bool,
    ) -> bool {
        let mut status = self.monitor.status.clone();
        matches!(
            tokio::time::timeout(within, status.wait_for(|s| condition(s))).await,
            Ok(Ok(_))
        )
    }

    /// Stops the feed and waits for it to finish; the channel is left lost.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }

    /// Ends the runner task abruptly, as a panic would, without the orderly shutdown.
    ///
    /// For tests (feature `test-util`): not part of the stable API.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn abort(&self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// Reads a running feed's status and metrics; from [`FeedTask::monitor`]. Once the feed has
/// stopped it reads what the feed last reported.
#[derive(Debug, Clone)]
pub struct FeedMonitor {
    status: watch::Receiver<FeedStatus>,
    delivery: Arc<Delivery>,
}

impl FeedMonitor {
    /// What the feed is doing now, as [`FeedTask::status`].
    pub fn status(&self) -> FeedStatus {
        *self.status.borrow()
    }

    /// The feed's status and delivery-delay histogram, as [`FeedTask::metrics`].
    pub fn metrics(&self) -> FeedMetrics {
        FeedMetrics {
            status: self.status(),
            delivery: self.delivery.snapshot(),
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
    /// This feed's say in the bus's trust; dropped with the runner, leaving it lost.
    channel: Channel,
    config: FeedConfig,
    status: watch::Sender<FeedStatus>,
    /// How long heartbeats take to come back.
    delivery: Arc<Delivery>,
}

/// A heartbeat sent and not yet back.
struct Outstanding {
    nonce: u64,
    /// When it was sent, on the trust clock.
    sent_at: u64,
    due: tokio::time::Instant,
}

impl<F: ChangeFeed> Runner<F> {
    /// Subscribes, relays, and on every loss reports it and subscribes again, until stopped.
    /// The channel is lost on entry (opened so by [`spawn`]) and whenever this returns.
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
            // Everything committed from now on will be delivered.
            self.channel.restored(self.trusted_until(clock()));
            self.update_status(|status| {
                status.subscribed = true;
                status.subscriptions += 1;
            });
            tracing::info!("change feed: subscribed");

            let outcome = self.relay(&mut stopped).await;
            // Report the loss before anything else, so that no cache trusts an entry a missed
            // change could have made stale. A stopped feed is lost for good.
            self.channel.lost();
            self.update_status(|status| {
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

    /// Publishes changes and keeps the heartbeat going until the subscription fails
    /// (`Some(why)`) or the feed is stopped (`None`).
    async fn relay(&mut self, stopped: &mut oneshot::Receiver<()>) -> Option<FeedError> {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let mut outstanding = None::<Outstanding>;
        loop {
            let due = outstanding.as_ref().map(|sent| sent.due);
            tokio::select! {
                biased;
                _ = &mut *stopped => return None,
                received = self.feed.recv() => match received {
                    Ok(messages) => {
                        for message in messages {
                            match message {
                                FeedMessage::Changed(invalidation) => self.bus.publish(invalidation),
                                FeedMessage::Heartbeat(nonce) => {
                                    if outstanding.as_ref().is_some_and(|sent| sent.nonce == nonce) {
                                        let sent_at = outstanding.take().map_or(0, |sent| sent.sent_at);
                                        self.channel.extend(self.trusted_until(sent_at));
                                        self.delivery.record(Duration::from_nanos(clock().saturating_sub(sent_at)));
                                        self.update_status(|status| status.heartbeats += 1);
                                    } else {
                                        // Another process's heartbeat: proves nothing here.
                                        self.update_status(|status| status.foreign_heartbeats += 1);
                                    }
                                }
                            }
                        }
                    }
                    Err(err) => return Some(err),
                },
                () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    return Some(FeedError::new(format!(
                        "heartbeat not delivered back within {:?}",
                        self.config.heartbeat_timeout
                    )));
                }
                _ = heartbeat.tick(), if outstanding.is_none() => {
                    let nonce = nonce();
                    let sent_at = clock();
                    let due = tokio::time::Instant::now() + self.config.heartbeat_timeout;
                    match tokio::time::timeout_at(due, self.feed.send_heartbeat(nonce)).await {
                        Ok(Ok(())) => outstanding = Some(Outstanding { nonce, sent_at, due }),
                        Ok(Err(err)) => return Some(err),
                        Err(_) => return Some(FeedError::new(format!(
                            "heartbeat not sent within {:?}",
                            self.config.heartbeat_timeout
                        ))),
                    }
                }
            }
        }
    }

    /// Changes the status [`FeedTask::status`] reads, and tells the `metrics` facade.
    fn update_status(&self, change: impl FnOnce(&mut FeedStatus)) {
        self.status.send_modify(|status| {
            let before = *status;
            change(status);
            self.delivery.status_changed(&before, status);
        });
    }

    /// How long entries may be trusted given that every change made before `proven_at` has
    /// been published: until the next heartbeat, sent one interval later, is overdue.
    fn trusted_until(&self, proven_at: u64) -> u64 {
        let bound = self.config.heartbeat_interval + self.config.heartbeat_timeout;
        proven_at.saturating_add(u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX))
    }

    fn next_backoff(&self, last: Option<Duration>) -> Duration {
        match last {
            None => self.config.min_backoff,
            Some(last) => (last * 2).min(self.config.max_backoff),
        }
    }
}

/// A fresh heartbeat nonce: random, so that other processes' runners never mistake it for
/// theirs.
pub(crate) fn nonce() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut bytes = [0u8; 8];
    // Without OS randomness, a counter mixed with the clock is still unique in this process.
    if getrandom::fill(&mut bytes).is_err() {
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return count.rotate_left(32) ^ clock();
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::sync::mpsc;

    use super::*;
    use crate::invalidation::InvalidationListener;
    use crate::key::KeyDigest;

    #[derive(Default)]
    pub(super) struct Recorder(Mutex<Vec<Invalidation>>);

    impl InvalidationListener for Recorder {
        fn invalidate(&self, invalidation: &Invalidation) {
            self.0.lock().expect("lock").push(*invalidation);
        }
    }

    impl Recorder {
        pub(super) fn seen(&self) -> Vec<Invalidation> {
            self.0.lock().expect("lock").clone()
        }
    }

    /// What a scripted feed does with its heartbeats.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Echo {
        /// Hands each nonce back, as a healthy channel does.
        Ours,
        /// Hands back only nonces of another process: the subscription stopped delivering
        /// ours while the connection still answers.
        Foreign,
    }

    /// A feed driven by the test: each `Ok` is a batch of messages, each `Err` a loss.
    struct Scripted {
        events: mpsc::UnboundedReceiver<Result<Vec<FeedMessage>, String>>,
        echo_sender: mpsc::UnboundedSender<Result<Vec<FeedMessage>, String>>,
        echo: Arc<Mutex<Echo>>,
        refuse_subscriptions: usize,
        /// Held by the test to freeze `recv` the way a starved or deadlocked task would be.
        gate: Arc<Mutex<()>>,
        frozen: Arc<AtomicBool>,
    }

    struct Script {
        events: mpsc::UnboundedSender<Result<Vec<FeedMessage>, String>>,
        echo: Arc<Mutex<Echo>>,
        gate: Arc<Mutex<()>>,
        frozen: Arc<AtomicBool>,
    }

    fn scripted(refuse_subscriptions: usize) -> (Scripted, Script) {
        let (events, rx) = mpsc::unbounded_channel();
        let echo = Arc::new(Mutex::new(Echo::Ours));
        let gate = Arc::new(Mutex::new(()));
        let frozen = Arc::new(AtomicBool::new(false));
        let feed = Scripted {
            events: rx,
            echo_sender: events.clone(),
            echo: Arc::clone(&echo),
            refuse_subscriptions,
            gate: Arc::clone(&gate),
            frozen: Arc::clone(&frozen),
        };
        (
            feed,
            Script {
                events,
                echo,
                gate,
                frozen,
            },
        )
    }

    #[async_trait]
    impl ChangeFeed for Scripted {
        async fn subscribe(&mut self) -> Result<(), FeedError> {
            if self.refuse_subscriptions > 0 {
                self.refuse_subscriptions -= 1;
                return Err(FeedError::new("refused"));
            }
            Ok(())
        }

        async fn recv(&mut self) -> Result<Vec<FeedMessage>, FeedError> {
            if self.frozen.load(Ordering::SeqCst) {
                // Blocks this worker thread until the test lets go: the runner stops running.
                drop(self.gate.lock().expect("gate"));
            }
            match self.events.recv().await {
                Some(Ok(messages)) => Ok(messages),
                Some(Err(why)) => Err(FeedError::new(why)),
                None => std::future::pending().await,
            }
        }

        async fn send_heartbeat(&mut self, nonce: u64) -> Result<(), FeedError> {
            let echoed = match *self.echo.lock().expect("lock") {
                Echo::Ours => nonce,
                Echo::Foreign => nonce.wrapping_add(1),
            };
            self.echo_sender
                .send(Ok(vec![FeedMessage::Heartbeat(echoed)]))
                .map_err(FeedError::new)
        }
    }

    fn digest(byte: u8) -> KeyDigest {
        KeyDigest::from_bytes([byte; 32])
    }

    /// Heartbeats every 5 ms, each allowed `timeout` to come back.
    fn fast(timeout: Duration) -> FeedConfig {
        FeedConfig::default()
            .heartbeat(Duration::from_millis(5), timeout)
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
    }

    /// Waits, with a generous bound, until `condition` holds.
    async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
        for _ in 0..2_000 {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    #[tokio::test]
    async fn lost_until_subscribed_then_relays_and_fails_closed_on_loss() {
        let bus = InvalidationBus::new();
        let recorder = Arc::new(Recorder::default());
        bus.subscribe(&recorder);
        let (feed, script) = scripted(2);
        let task = spawn(
            feed,
            &bus,
            FeedConfig::default().backoff(Duration::from_millis(1), Duration::from_millis(2)),
        );
        // Fail closed before the first subscription, synchronously.
        assert!(!bus.trusted());
        assert_eq!(recorder.seen(), [Invalidation::All]);
        assert!(task.wait_subscribed(Duration::from_secs(10)).await);
        assert!(bus.trusted());
        assert_eq!(recorder.seen(), [Invalidation::All, Invalidation::All]);

        script
            .events
            .send(Ok(vec![FeedMessage::Changed(Invalidation::Key(digest(1)))]))
            .expect("send");
        script
            .events
            .send(Err("connection reset".into()))
            .expect("send");
        assert!(
            task.wait_for(Duration::from_secs(10), |s| s.outages == 1 && s.subscribed)
                .await
        );
        assert_eq!(
            recorder.seen(),
            [
                Invalidation::All,
                Invalidation::All,
                Invalidation::Key(digest(1)),
                Invalidation::All,
                Invalidation::All,
            ]
        );
        assert!(bus.trusted());

        task.shutdown().await;
        assert!(!bus.trusted(), "a stopped feed leaves its channel lost");
    }

    #[tokio::test]
    async fn heartbeats_that_come_back_keep_the_channel_trusted() {
        let bus = InvalidationBus::new();
        let (feed, _script) = scripted(0);
        // A timeout no loaded machine reaches: a lost channel here would be a bug.
        let task = spawn(feed, &bus, fast(Duration::from_secs(30)));
        assert!(
            task.wait_for(Duration::from_secs(10), |s| s.heartbeats >= 20)
                .await
        );
        let status = task.status();
        assert_eq!(status.outages, 0);
        assert!(bus.trusted());
        task.shutdown().await;
    }

    #[tokio::test]
    async fn a_subscription_that_stops_delivering_heartbeats_is_lost() {
        let bus = InvalidationBus::new();
        let (feed, script) = scripted(0);
        let task = spawn(feed, &bus, fast(Duration::from_millis(200)));
        assert!(
            task.wait_for(Duration::from_secs(10), |s| s.heartbeats >= 1)
                .await
        );
        // The channel still takes messages and delivers other processes' heartbeats, but
        // not this runner's: the subscription is as good as gone.
        *script.echo.lock().expect("lock") = Echo::Foreign;
        assert!(
            task.wait_for(Duration::from_secs(10), |s| s.outages >= 1)
                .await
        );
        task.shutdown().await;
    }

    #[test]
    fn a_runner_that_stops_running_is_not_trusted_past_its_deadline() {
        let bus = InvalidationBus::new();
        let (feed, script) = scripted(0);
        // The runner gets a runtime of its own with one thread, which the test then freezes:
        // blocking a worker of the test's own runtime could stall the test's timers too.
        let (subscribed, heard) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let runner_bus = bus.clone();
        let runner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let task = spawn(feed, &runner_bus, fast(Duration::from_millis(200)));
                let heartbeat = task
                    .wait_for(Duration::from_secs(10), |s| s.heartbeats >= 1)
                    .await;
                subscribed.send(heartbeat).expect("test waits");
                let _ = stopped.await;
                task.shutdown().await;
            })
        });
        assert_eq!(heard.recv_timeout(Duration::from_secs(20)), Ok(true));

        let gate = script.gate.lock().expect("gate");
        script.frozen.store(true, Ordering::SeqCst);
        // Wake `recv`: its next call blocks the runner's only thread on the gate.
        script.events.send(Ok(Vec::new())).expect("send");
        // The frozen runner can report nothing; the deadline alone ends the trust.
        let lapsed = (0..2_000).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            !bus.trusted()
        });
        assert!(lapsed, "still trusted 10 s after the runner froze");

        script.frozen.store(false, Ordering::SeqCst);
        drop(gate);
        stop.send(()).expect("runner waits");
        runner.join().expect("runner thread");
    }

    #[tokio::test]
    async fn an_aborted_runner_leaves_its_channel_lost() {
        let bus = InvalidationBus::new();
        let (feed, _script) = scripted(0);
        let task = spawn(feed, &bus, FeedConfig::default());
        assert!(task.wait_subscribed(Duration::from_secs(10)).await);
        assert!(bus.trusted());
        task.abort();
        assert!(eventually(|| !bus.trusted()).await);
    }
}
