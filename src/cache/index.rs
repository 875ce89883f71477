//! The read index: the accepted keys moka holds and may serve (not those an
//! `Invalidation::All` retired, which moka may keep a while), in shards of plain hash maps, so
//! that a hit costs one shard's read lock and one probe of an inline entry instead of moka's
//! chain of dependent reads (bucket, key, entry, entry info, value).
//!
//! moka stays the cache of record. An entry is put here just before moka takes it, and taken
//! out by moka's eviction listener when moka drops it for any reason (evicted, refused
//! admission, expired, replaced, invalidated). The listener removes an entry only if it holds
//! the same account allocation as the one moka dropped, so a late notice can't remove a newer
//! entry. Every entry also keeps its own copy of the TTL and the epoch it was cached in,
//! checked on every read: what the cache's consistency argument says of moka's entries holds
//! here word for word.
//!
//! Hits served here are hits moka doesn't see; the front (`front`) reports a sample of them
//! to moka, so its admission and eviction keep learning which keys are hot.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use super::Positive;
use crate::hashing::DigestHasher;
use crate::key::KeyDigest;
use crate::sync::{read, write};

/// Shards (a power of two). Picked by a digest byte the maps' hasher doesn't use, so each
/// shard's map still sees uniform hashes.
const SHARDS: usize = 64;

type Shard<A> = RwLock<HashMap<KeyDigest, Positive<A>, DigestHasher>>;

pub(super) struct ReadIndex<A> {
    shards: Box<[Shard<A>]>,
}

impl<A> ReadIndex<A> {
    pub(super) fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::with_hasher(DigestHasher::default())))
                .collect(),
        }
    }

    #[inline(always)]
    fn shard(&self, digest: &KeyDigest) -> &Shard<A> {
        // Byte 8: the maps hash a digest by its first eight bytes.
        &self.shards[usize::from(digest.as_bytes()[8]) % SHARDS]
    }

    /// The account indexed for `digest` and when its entry expires, if it was cached in epoch
    /// `cleared` or later and is still fresh at `now`.
    #[inline(always)]
    pub(super) fn get(
        &self,
        digest: &KeyDigest,
        cleared: u64,
        now: Instant,
    ) -> Option<(Arc<A>, Instant)> {
        let shard = read(self.shard(digest));
        let entry = shard.get(digest)?;
        if entry.epoch < cleared || now >= entry.fresh_until {
            return None;
        }
        Some((Arc::clone(&entry.account), entry.fresh_until))
    }

    /// Indexes `entry` for `digest`, replacing any older one. The cache calls it under the
    /// epoch's read lock, just before moka takes the same entry.
    pub(super) fn insert(&self, digest: KeyDigest, entry: Positive<A>) {
        write(self.shard(&digest)).insert(digest, entry);
    }

    /// Forgets `digest` (an invalidation).
    pub(super) fn remove(&self, digest: &KeyDigest) {
        write(self.shard(digest)).remove(digest);
    }

    /// Forgets `digest` if its entry holds `account`: moka dropped the entry that was indexed
    /// with it, not one cached since.
    pub(super) fn remove_if_holds(&self, digest: &KeyDigest, account: &Arc<A>) {
        let mut shard = write(self.shard(digest));
        if shard
            .get(digest)
            .is_some_and(|entry| Arc::ptr_eq(&entry.account, account))
        {
            shard.remove(digest);
        }
    }

    /// Forgets everything, and gives the memory back.
    pub(super) fn clear(&self) {
        for shard in &*self.shards {
            *write(shard) = HashMap::with_hasher(DigestHasher::default());
        }
    }

    /// Entries indexed now, fresh or not.
    #[cfg(any(test, feature = "test-util"))]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|shard| read(shard).len()).sum()
    }

    /// Every indexed digest with its account.
    #[cfg(test)]
    pub(super) fn entries(&self) -> Vec<(KeyDigest, Arc<A>)> {
        self.shards
            .iter()
            .flat_map(|shard| {
                read(shard)
                    .iter()
                    .map(|(digest, entry)| (*digest, Arc::clone(&entry.account)))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_notice_leaves_a_newer_entry_alone() {
        let index = ReadIndex::new();
        let digest = KeyDigest::from_bytes([3; 32]);
        let fresh_until = Instant::now() + std::time::Duration::from_secs(60);
        let (old, new) = (Arc::new(1), Arc::new(2));
        index.insert(
            digest,
            Positive {
                account: Arc::clone(&new),
                fresh_until,
                epoch: 0,
            },
        );
        index.remove_if_holds(&digest, &old);
        assert!(index.get(&digest, 0, Instant::now()).is_some());
        index.remove_if_holds(&digest, &new);
        assert!(index.get(&digest, 0, Instant::now()).is_none());
    }

    #[test]
    fn an_entry_is_served_only_while_fresh_and_not_cleared() {
        let index = ReadIndex::new();
        let digest = KeyDigest::from_bytes([5; 32]);
        let now = Instant::now();
        let fresh_until = now + std::time::Duration::from_secs(60);
        index.insert(
            digest,
            Positive {
                account: Arc::new(()),
                fresh_until,
                epoch: 4,
            },
        );
        assert!(index.get(&digest, 4, now).is_some());
        assert!(
            index.get(&digest, 5, now).is_none(),
            "cached before the last All"
        );
        assert!(
            index.get(&digest, 4, fresh_until).is_none(),
            "its TTL passed"
        );
        index.clear();
        assert_eq!(index.len(), 0);
    }
}
