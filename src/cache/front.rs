//! The cache's per-thread state: a front of the last few keys each worker thread saw answered
//! (accepted or refused), answered again without touching the index or moka (no shared cache
//! line but the account's), and the count of lookups since this thread last told moka of one.
//!
//! A slot is trusted only while its cache's invalidation epoch is the one it was filled in
//! and its entry's TTL has not run out, so it can never outlive an invalidation or the TTL. It
//! holds the same shared account as the cache's entry: no copy, no plaintext.

use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use super::Cached;
use crate::key::KeyDigest;

/// Slots per thread (direct-mapped).
const SLOTS: usize = 64;

/// One lookup in this many that passes the front is also reported to moka (see
/// [`report_this_one`]).
pub(super) const REPORT_ONE_IN: u32 = 16;

struct Slot {
    owner: usize,
    digest: KeyDigest,
    epoch: u64,
    fresh_until: Instant,
    /// `None` for a refused key.
    account: Option<Arc<dyn Any + Send + Sync>>,
}

struct Front {
    slots: Vec<Option<Slot>>,
    /// Lookups this thread passed on since it last reported one to moka.
    unreported: u32,
}

thread_local! {
    static FRONT: RefCell<Front> = const {
        RefCell::new(Front {
            slots: Vec::new(),
            unreported: 0,
        })
    };
}

/// What the cache found behind the front: the answer and when its entry expires.
pub(super) struct Behind<A> {
    pub(super) answer: Cached<A>,
    pub(super) fresh_until: Instant,
}

/// What this thread's front holds for `digest` of cache `owner`, if still valid in `epoch`
/// at `now`. The hit path: nothing else is touched.
#[inline]
pub(super) fn get<A: Send + Sync + 'static>(
    owner: usize,
    digest: &KeyDigest,
    (epoch, now): (u64, Instant),
) -> Option<Cached<A>> {
    FRONT
        .try_with(|front| {
            let front = front.try_borrow().ok()?;
            let slot = front.slots.get(index(owner, digest))?.as_ref()?;
            if !slot.live(owner, epoch, now) || slot.digest != *digest {
                return None;
            }
            match &slot.account {
                Some(account) => Arc::clone(account).downcast::<A>().ok().map(Cached::Valid),
                None => Some(Cached::Refused),
            }
        })
        .ok()
        .flatten()
}

/// Counts a lookup that passed this thread's front, and tells whether it is the one in
/// [`REPORT_ONE_IN`] that the cache also reports to moka (a `get` for its frequency sketch and
/// access order, since the index answers without it). Counted per thread: no shared write.
#[inline]
pub(super) fn report_this_one() -> bool {
    FRONT
        .try_with(|front| {
            let mut front = front.try_borrow_mut().ok()?;
            front.unreported += 1;
            let report = front.unreported >= REPORT_ONE_IN;
            if report {
                front.unreported = 0;
            }
            Some(report)
        })
        .ok()
        .flatten()
        // The thread is ending: report.
        .unwrap_or(true)
}

/// Remembers what the cache found behind the front for `digest` of cache `owner`, valid in
/// `epoch` (read at `now`), in its slot: if the slot holds nothing live, or if `take_live`
/// (the lookup was a reported one).
///
/// A slot holding another key's live answer is taken over only by a reported lookup. That
/// keeps the front cheap when it can't help (many keys, each seldom seen by one thread: no
/// slot changes, so no other account's count is touched), while a key hot on this thread
/// still gets in soon.
#[inline]
pub(super) fn remember<A: Send + Sync + 'static>(
    owner: usize,
    digest: &KeyDigest,
    (epoch, now): (u64, Instant),
    found: &Behind<A>,
    take_live: bool,
) {
    let _ = FRONT.try_with(|front| {
        let Ok(mut front) = front.try_borrow_mut() else {
            return;
        };
        if front.slots.is_empty() {
            front.slots.resize_with(SLOTS, || None);
        }
        let slot = &mut front.slots[index(owner, digest)];
        let taken = slot
            .as_ref()
            .is_some_and(|slot| slot.live(owner, epoch, now));
        if taken && !take_live {
            return;
        }
        let account = match &found.answer {
            Cached::Valid(account) => Some(Arc::clone(account) as Arc<dyn Any + Send + Sync>),
            Cached::Refused => None,
        };
        *slot = Some(Slot {
            owner,
            digest: *digest,
            epoch,
            fresh_until: found.fresh_until,
            account,
        });
    });
}

impl Slot {
    fn live(&self, owner: usize, epoch: u64, now: Instant) -> bool {
        self.owner == owner && self.epoch == epoch && now < self.fresh_until
    }
}

fn index(owner: usize, digest: &KeyDigest) -> usize {
    // Truncation is the point: any bits of the (uniform) digest pick a slot.
    (digest.hash_u64() as usize ^ owner) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> KeyDigest {
        KeyDigest::from_bytes([n; 32])
    }

    /// A lookup through the front, as the cache makes it.
    fn through<F: FnOnce(bool) -> Option<Behind<u8>>>(
        owner: usize,
        digest: &KeyDigest,
        at: (u64, Instant),
        behind: F,
    ) -> Option<Cached<u8>> {
        get(owner, digest, at).or_else(|| {
            let report = report_this_one();
            let found = behind(report)?;
            remember(owner, digest, at, &found, report);
            Some(found.answer)
        })
    }

    /// A lookup behind the front that accepts, counting itself and its reports.
    fn accept(
        calls: &std::cell::Cell<(u32, u32)>,
        fresh_until: Instant,
    ) -> impl FnOnce(bool) -> Option<Behind<u8>> + '_ {
        move |report| {
            let (looked, reported) = calls.get();
            calls.set((looked + 1, reported + u32::from(report)));
            Some(Behind {
                answer: Cached::Valid(Arc::new(7)),
                fresh_until,
            })
        }
    }

    #[test]
    fn one_lookup_in_the_sample_is_reported_to_moka() {
        // A thread of its own: the count is per thread. A new epoch each time, so that none
        // is a front hit.
        std::thread::spawn(|| {
            let calls = std::cell::Cell::new((0, 0));
            let fresh_until = Instant::now() + std::time::Duration::from_secs(60);
            for epoch in 0..REPORT_ONE_IN * 10 {
                let at = (u64::from(epoch), Instant::now());
                let _ = through(1, &digest(0), at, accept(&calls, fresh_until));
            }
            assert_eq!(calls.get(), (REPORT_ONE_IN * 10, 10));
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_slot_serves_its_key_only_in_its_epoch_and_before_its_deadline() {
        std::thread::spawn(|| {
            let calls = std::cell::Cell::new((0, 0));
            let now = Instant::now();
            let fresh_until = now + std::time::Duration::from_secs(60);
            let _ = through(1, &digest(1), (3, now), accept(&calls, fresh_until));
            let _ = through(1, &digest(1), (3, now), accept(&calls, fresh_until));
            assert_eq!(calls.get().0, 1, "the second lookup is the front's");
            let _ = through(1, &digest(1), (4, now), accept(&calls, fresh_until));
            assert_eq!(calls.get().0, 2, "another epoch");
            let _ = through(1, &digest(1), (4, fresh_until), accept(&calls, fresh_until));
            assert_eq!(calls.get().0, 3, "past the deadline");
            let _ = through(2, &digest(1), (4, now), accept(&calls, fresh_until));
            assert_eq!(calls.get().0, 4, "another cache");
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_live_slot_is_taken_over_only_by_a_reported_lookup() {
        std::thread::spawn(|| {
            let calls = std::cell::Cell::new((0, 0));
            let now = Instant::now();
            let fresh_until = now + std::time::Duration::from_secs(60);
            // Two keys in one slot: the first fills it, the second only looks behind it
            // until a reported lookup hands it the slot.
            let (first, second) = colliding();
            let _ = through(1, &first, (0, now), accept(&calls, fresh_until));
            let mut misses = 0;
            loop {
                let before = calls.get().1;
                let _ = through(1, &second, (0, now), accept(&calls, fresh_until));
                misses += 1;
                if calls.get().1 > before {
                    break;
                }
                assert!(
                    misses < REPORT_ONE_IN,
                    "a reported lookup comes within the sample"
                );
            }
            let looked = calls.get().0;
            let _ = through(1, &second, (0, now), accept(&calls, fresh_until));
            assert_eq!(calls.get().0, looked, "the reported lookup took the slot");
        })
        .join()
        .expect("thread");
    }

    /// Two digests that share a slot of cache 1.
    fn colliding() -> (KeyDigest, KeyDigest) {
        let first = digest(1);
        let mut bytes = [1; 32];
        bytes[0] = 1 + SLOTS as u8;
        let second = KeyDigest::from_bytes(bytes);
        assert_eq!(index(1, &first), index(1, &second));
        (first, second)
    }
}
