//! A per-thread front for the cache: the last few keys each worker thread saw answered
//! (accepted or refused), answered again without touching moka.
//!
//! A slot is trusted only while its cache's invalidation epoch is the one it was filled in
//! and its moka entry's TTL has not run out, so it can never outlive an invalidation or the
//! TTL. It holds the same shared account as the moka entry: no copy, no plaintext.

use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use super::Cached;
use crate::key::KeyDigest;

/// Slots per thread (direct-mapped).
const SLOTS: usize = 64;

struct Slot {
    owner: usize,
    digest: KeyDigest,
    epoch: u64,
    fresh_until: Instant,
    /// `None` for a refused key.
    account: Option<Arc<dyn Any + Send + Sync>>,
}

thread_local! {
    static FRONT: RefCell<Vec<Option<Slot>>> = const { RefCell::new(Vec::new()) };
}

fn index(owner: usize, digest: &KeyDigest) -> usize {
    // Truncation is the point: any bits of the (uniform) digest pick a slot.
    (digest.hash_u64() as usize ^ owner) % SLOTS
}

/// What this thread cached for `digest` of cache `owner`, if still valid in `epoch` at `now`.
pub(super) fn get<A: Send + Sync + 'static>(
    owner: usize,
    digest: &KeyDigest,
    epoch: u64,
    now: Instant,
) -> Option<Cached<A>> {
    FRONT
        .try_with(|front| {
            let front = front.try_borrow().ok()?;
            let slot = front.get(index(owner, digest))?.as_ref()?;
            if slot.owner != owner || slot.epoch != epoch || slot.digest != *digest {
                return None;
            }
            if now >= slot.fresh_until {
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

/// Remembers the answer for `digest` of cache `owner` (`None`: refused), valid in `epoch`
/// until `fresh_until`.
pub(super) fn put<A: Send + Sync + 'static>(
    owner: usize,
    digest: KeyDigest,
    epoch: u64,
    fresh_until: Instant,
    account: Option<&Arc<A>>,
) {
    let account = account.map(|account| Arc::clone(account) as Arc<dyn Any + Send + Sync>);
    let _ = FRONT.try_with(|front| {
        if let Ok(mut front) = front.try_borrow_mut() {
            if front.is_empty() {
                front.resize_with(SLOTS, || None);
            }
            front[index(owner, &digest)] = Some(Slot {
                owner,
                digest,
                epoch,
                fresh_until,
                account,
            });
        }
    });
}
