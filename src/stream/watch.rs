//! [`StreamWatch`]: a layer's register of the open responses waiting on their inner body,
//! woken by the invalidations that name their key and by one shared timer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::hashing::DigestHasher;
use crate::invalidation::{Invalidation, InvalidationListener};
use crate::key::KeyDigest;
use crate::sync::lock;

/// One open response in the register: told that its key may have changed, and woken.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    changed: AtomicBool,
    waker: AtomicWaker,
}

impl Waiting {
    /// Whether its key may have changed since the last call (and forgets it).
    pub(crate) fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// The waker to wake on a change: the latest task that polled the response.
    pub(crate) fn set_waker(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    fn notify(&self) {
        self.changed.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// Where a response stands in the register, so that dropping it removes exactly its entries.
#[derive(Debug)]
pub(crate) struct Registration {
    watch: Arc<StreamWatch>,
    digest: KeyDigest,
    waiting: Arc<Waiting>,
    /// Its slot in the timer, if it asked to be woken at some time.
    alarm: Option<(SystemTime, u64)>,
}

impl Registration {
    /// The response's flag and waker.
    pub(crate) fn waiting(&self) -> &Waiting {
        &self.waiting
    }

    /// Wakes the response at `at` (replacing an earlier alarm), from the watch's one timer.
    pub(crate) fn wake_at(&mut self, at: SystemTime) {
        if self.alarm.is_some_and(|(set, _)| set == at) {
            return;
        }
        self.clear_alarm();
        let slot = self.watch.next_alarm.fetch_add(1, Ordering::Relaxed);
        self.alarm = Some((at, slot));
        self.watch
            .timer
            .set((at, slot), Arc::downgrade(&self.waiting));
    }

    /// Removes the alarm, if any.
    pub(crate) fn clear_alarm(&mut self) {
        if let Some(alarm) = self.alarm.take() {
            self.watch.timer.clear(alarm);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.clear_alarm();
        self.watch.remove(&self.digest, &self.waiting);
    }
}

/// The open responses of one layer that are waiting on their inner body, by key digest.
///
/// An invalidation wakes the responses of the key it names (every response, for
/// [`Invalidation::All`]); the response then checks its key again itself. It listens on the
/// layer's buses *after* the layer's cache, so the cache has forgotten the key by the time a
/// response looks it up. Responses that must end at a time (an expiry, the end of a grace
/// period) share one timer task per watch; no response has a timer of its own.
pub(crate) struct StreamWatch {
    waiting: Mutex<HashMap<KeyDigest, Vec<Arc<Waiting>>, DigestHasher>>,
    timer: Timer,
    next_alarm: AtomicU64,
}

impl StreamWatch {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            waiting: Mutex::new(HashMap::with_hasher(DigestHasher::default())),
            timer: Timer::default(),
            next_alarm: AtomicU64::new(0),
        })
    }

    /// Puts a response of the key `digest` in the register until the registration is dropped.
    pub(crate) fn register(self: &Arc<Self>, digest: KeyDigest) -> Registration {
        let waiting = Arc::new(Waiting::default());
        lock(&self.waiting)
            .entry(digest)
            .or_default()
            .push(Arc::clone(&waiting));
        Registration {
            watch: Arc::clone(self),
            digest,
            waiting,
            alarm: None,
        }
    }

    /// How many responses are in the register.
    pub(crate) fn len(&self) -> usize {
        lock(&self.waiting).values().map(Vec::len).sum()
    }

    fn remove(&self, digest: &KeyDigest, waiting: &Arc<Waiting>) {
        let mut register = lock(&self.waiting);
        if let Some(entries) = register.get_mut(digest) {
            entries.retain(|entry| !Arc::ptr_eq(entry, waiting));
            if entries.is_empty() {
                register.remove(digest);
            }
        }
    }
}

impl InvalidationListener for StreamWatch {
    fn invalidate(&self, invalidation: &Invalidation) {
        // Woken outside the lock: a waker may run its task at once, which may leave the
        // register.
        let woken: Vec<Arc<Waiting>> = {
            let register = lock(&self.waiting);
            match invalidation {
                Invalidation::Key(digest) => register
                    .get(digest)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect(),
                Invalidation::All => register.values().flatten().cloned().collect(),
            }
        };
        for waiting in woken {
            waiting.notify();
        }
    }
}

impl fmt::Debug for StreamWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWatch")
            .field("waiting", &self.len())
            .finish_non_exhaustive()
    }
}

// ===== the timer =====

/// Alarms of every response of one watch, served by one task that sleeps until the earliest.
#[derive(Default)]
struct Timer {
    alarms: Arc<Mutex<Alarms>>,
    /// Tells the task that an earlier alarm was set.
    earlier: Arc<Notify>,
}

#[derive(Default)]
struct Alarms {
    due: BTreeMap<(SystemTime, u64), Weak<Waiting>>,
    /// Whether the task runs.
    running: bool,
}

impl Timer {
    fn set(&self, alarm: (SystemTime, u64), waiting: Weak<Waiting>) {
        let mut alarms = lock(&self.alarms);
        let earliest = alarms
            .due
            .first_key_value()
            .is_none_or(|(first, _)| alarm < *first);
        alarms.due.insert(alarm, waiting);
        if !alarms.running {
            // Only a response being polled sets an alarm, so a tokio runtime is usually
            // there; a body polled outside one notices its key's expiry at the key's next
            // invalidation instead.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                alarms.running = true;
                runtime.spawn(run_timer(
                    Arc::downgrade(&self.alarms),
                    Arc::clone(&self.earlier),
                ));
            }
        } else if earliest {
            self.earlier.notify_one();
        }
    }

    fn clear(&self, alarm: (SystemTime, u64)) {
        lock(&self.alarms).due.remove(&alarm);
    }
}

/// Wakes every response whose alarm is due, then sleeps until the next one (at most a
/// minute, so a clock that jumps is noticed), until the watch is gone or no alarm is left.
async fn run_timer(alarms: Weak<Mutex<Alarms>>, earlier: Arc<Notify>) {
    const LONGEST_SLEEP: Duration = Duration::from_secs(60);
    // However the task ends (its runtime shutting down included), the next alarm starts one.
    let mut running = Running(alarms.clone(), true);
    loop {
        let sleep = {
            let Some(alarms) = alarms.upgrade() else {
                return;
            };
            let mut alarms = lock(&alarms);
            let now = SystemTime::now();
            let mut due = Vec::new();
            while let Some(entry) = alarms.due.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.extend(entry.remove().upgrade());
            }
            if !due.is_empty() {
                // Outside the lock, as for invalidations.
                drop(alarms);
                for waiting in due {
                    waiting.notify();
                }
                continue;
            }
            match alarms.due.first_key_value() {
                Some(((at, _), _)) => at
                    .duration_since(now)
                    .unwrap_or_default()
                    .min(LONGEST_SLEEP),
                None => {
                    // Under the lock: an alarm set from now on starts a new task.
                    alarms.running = false;
                    running.1 = false;
                    return;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = earlier.notified() => {}
        }
    }
}

/// Marks the timer task stopped if it ends without saying so itself (dropped with its
/// runtime).
struct Running(Weak<Mutex<Alarms>>, bool);

impl Drop for Running {
    fn drop(&mut self) {
        if let (true, Some(alarms)) = (self.1, self.0.upgrade()) {
            lock(&alarms).running = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Wake, Waker};

    use super::*;

    #[derive(Default)]
    struct CountingWaker(AtomicU64);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn digest(byte: u8) -> KeyDigest {
        KeyDigest::from_bytes([byte; 32])
    }

    #[test]
    fn an_invalidation_wakes_the_responses_of_its_key_only() {
        let watch = StreamWatch::new();
        let (a, b) = (watch.register(digest(1)), watch.register(digest(2)));
        let wakes = Arc::new(CountingWaker::default());
        let waker = Waker::from(Arc::clone(&wakes));
        a.waiting().set_waker(&waker);
        b.waiting().set_waker(&waker);

        watch.invalidate(&Invalidation::Key(digest(1)));
        assert!(a.waiting().take_changed());
        assert!(!a.waiting().take_changed(), "taken once");
        assert!(!b.waiting().take_changed());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);

        watch.invalidate(&Invalidation::All);
        assert!(a.waiting().take_changed());
        assert!(b.waiting().take_changed());
    }

    #[test]
    fn a_dropped_registration_leaves_the_register() {
        let watch = StreamWatch::new();
        let a = watch.register(digest(1));
        let b = watch.register(digest(1));
        assert_eq!(watch.len(), 2);
        drop(a);
        assert_eq!(watch.len(), 1);
        drop(b);
        assert_eq!(watch.len(), 0);
        assert!(lock(&watch.waiting).is_empty());
    }

    #[tokio::test]
    async fn one_timer_wakes_each_response_at_its_time_and_stops_when_none_is_left() {
        let watch = StreamWatch::new();
        let mut soon = watch.register(digest(1));
        let mut later = watch.register(digest(2));
        let now = SystemTime::now();
        later.wake_at(now + Duration::from_secs(3600));
        soon.wake_at(now + Duration::from_millis(20));
        assert_eq!(lock(&watch.timer.alarms).due.len(), 2);

        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !soon.waiting().take_changed() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the alarm never rang"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!later.waiting().take_changed());
        assert_eq!(lock(&watch.timer.alarms).due.len(), 1);

        drop(later);
        assert!(lock(&watch.timer.alarms).due.is_empty());
    }
}
