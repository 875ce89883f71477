//! [`StreamWatch`]: a layer's register of the open responses waiting on their inner body,
//! woken by the invalidations that name their key and by one shared timer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, SystemTime};

use futures_util::task::AtomicWaker;

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
    /// When the timer wakes it, if it asked to be woken at some time.
    alarm: Option<SystemTime>,
}

impl Registration {
    /// The response's flag and waker.
    pub(crate) fn waiting(&self) -> &Waiting {
        &self.waiting
    }

    /// Wakes the response at `at` (replacing an earlier alarm), from the watch's one timer.
    pub(crate) fn wake_at(&mut self, at: SystemTime) {
        self.clear_alarm();
        self.alarm = Some(at);
        self.watch
            .timer
            .set((at, self.slot()), Arc::downgrade(&self.waiting));
    }

    /// Removes the alarm, if any.
    pub(crate) fn clear_alarm(&mut self) {
        if let Some(at) = self.alarm.take() {
            self.watch.timer.clear((at, self.slot()));
        }
    }

    /// What tells its alarm from others due at the same time: the address of its flag, which
    /// no other live registration shares.
    fn slot(&self) -> usize {
        Arc::as_ptr(&self.waiting).addr()
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
/// period) share one timer thread per watch; no response has a timer of its own.
pub(crate) struct StreamWatch {
    waiting: Mutex<HashMap<KeyDigest, Vec<Arc<Waiting>>, DigestHasher>>,
    timer: Timer,
}

impl StreamWatch {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            waiting: Mutex::new(HashMap::with_hasher(DigestHasher::default())),
            timer: Timer::default(),
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

/// Alarms of every response of one watch, served by one thread that sleeps until the
/// earliest. A thread, not a task: alarms are set from whatever runtime polls a response,
/// and must ring even when that runtime has shut down since.
#[derive(Default)]
struct Timer {
    shared: Arc<TimerShared>,
}

#[derive(Default)]
struct TimerShared {
    alarms: Mutex<Alarms>,
    /// Tells the thread that an earlier alarm was set.
    earlier: Condvar,
}

#[derive(Default)]
struct Alarms {
    due: BTreeMap<(SystemTime, usize), Weak<Waiting>>,
    /// Whether the thread runs.
    running: bool,
}

impl Timer {
    fn set(&self, alarm: (SystemTime, usize), waiting: Weak<Waiting>) {
        let mut alarms = lock(&self.shared.alarms);
        let earliest = alarms
            .due
            .first_key_value()
            .is_none_or(|(first, _)| alarm < *first);
        alarms.due.insert(alarm, waiting);
        if alarms.running {
            if earliest {
                self.shared.earlier.notify_one();
            }
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        let started = std::thread::Builder::new()
            .name("tower-api-key alarms".to_owned())
            .spawn(move || run_timer(&shared));
        match started {
            Ok(_) => alarms.running = true,
            // Left for the next alarm to try again; the response still ends at its key's
            // next change.
            Err(err) => tracing::warn!(error = %err, "stream alarms: could not start a thread"),
        }
    }

    fn clear(&self, alarm: (SystemTime, usize)) {
        lock(&self.shared.alarms).due.remove(&alarm);
    }
}

/// Wakes every response whose alarm is due, then sleeps until the next one (at most a
/// minute, so a clock that jumps is noticed), until the watch is gone or no alarm is left.
fn run_timer(shared: &Weak<TimerShared>) {
    const LONGEST_SLEEP: Duration = Duration::from_secs(60);
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut alarms = lock(&shared.alarms);
        let now = SystemTime::now();
        let mut due = Vec::new();
        while let Some(entry) = alarms.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.extend(entry.remove().upgrade());
        }
        if !due.is_empty() {
            // Woken outside the lock, as for invalidations.
            drop(alarms);
            for waiting in due {
                waiting.notify();
            }
            continue;
        }
        let Some(((next, _), _)) = alarms.due.first_key_value() else {
            // Under the lock: an alarm set from now on starts a new thread.
            alarms.running = false;
            return;
        };
        let sleep = next
            .duration_since(now)
            .unwrap_or_default()
            .min(LONGEST_SLEEP);
        // Woken early by an earlier alarm (or spuriously): the loop looks again.
        drop(
            shared
                .earlier
                .wait_timeout(alarms, sleep)
                .map_err(|poisoned| poisoned.into_inner()),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
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
        assert_eq!(lock(&watch.timer.shared.alarms).due.len(), 2);

        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !soon.waiting().take_changed() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the alarm never rang"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!later.waiting().take_changed());
        assert_eq!(lock(&watch.timer.shared.alarms).due.len(), 1);

        drop(later);
        assert!(lock(&watch.timer.shared.alarms).due.is_empty());
    }

    /// Whether `registration`'s alarm rings within 30 s (polled every 10 ms).
    fn rings(registration: &Registration) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if registration.waiting().take_changed() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Alarms are set from whatever runtime polls a response; one set while another runtime
    /// (the first to set one) shuts down still rings.
    #[test]
    fn an_alarm_rings_after_the_runtime_that_set_the_first_one_shut_down() {
        let watch = StreamWatch::new();
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let second = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut far = watch.register(digest(1));
        first.block_on(async {
            far.wake_at(SystemTime::now() + Duration::from_secs(3600));
            // Let the first alarm's timer start and go to sleep.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        let mut soon = watch.register(digest(2));
        second.block_on(async {
            soon.wake_at(SystemTime::now() + Duration::from_millis(300));
        });
        drop(first);
        assert!(rings(&soon), "the alarm was lost with the first runtime");
        drop(second);
    }

    /// A runtime that shuts down right after setting an alarm leaves the timer working.
    #[test]
    fn a_runtime_gone_right_after_its_alarm_leaves_the_timer_working() {
        let watch = StreamWatch::new();
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut a = watch.register(digest(1));
        {
            let _entered = first.enter();
            a.wake_at(SystemTime::now() + Duration::from_secs(3600));
        }
        drop(first);
        let second = tokio::runtime::Runtime::new().unwrap();
        let mut soon = watch.register(digest(2));
        second.block_on(async {
            soon.wake_at(SystemTime::now() + Duration::from_millis(50));
        });
        assert!(rings(&soon), "no timer runs any more");
    }
}
