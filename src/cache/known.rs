//! Keys the cache accepted recently, remembered by a 64-bit fingerprint of their digest: the
//! claim that lets such a key wait for the lookups kept for known keys during a flood.
//!
//! Two generations of fingerprints, each covering one `lifetime`: inserts go to the current
//! one, and when it is `lifetime` old it becomes the previous one (the previous is dropped).
//! A key is known from its acceptance for at least `lifetime` and at most twice that, for
//! about 20 bytes a key instead of a cache entry of its own. Fingerprints are the first 64 bits of
//! a digest keyed by the secret pepper, so nobody outside can mint a key that collides with
//! a known one on purpose; by chance, among 10^6 known keys, one guessed key in 2^44 does.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::hashing::DigestHasher;
use crate::key::KeyDigest;
use crate::sync::lock;

pub(super) struct KnownKeys {
    lifetime: Duration,
    /// Most fingerprints in one generation; a full generation is retired early.
    capacity: usize,
    generations: Mutex<Generations>,
}

struct Generations {
    current: HashSet<u64, DigestHasher>,
    previous: HashSet<u64, DigestHasher>,
    /// When `current` began.
    started: Instant,
}

impl KnownKeys {
    /// Keys are known for at least `lifetime` after they were last accepted; each generation
    /// holds at most `capacity` of them (at least one).
    pub(super) fn new(lifetime: Duration, capacity: usize) -> Self {
        Self {
            lifetime,
            capacity: capacity.max(1),
            generations: Mutex::new(Generations {
                current: HashSet::with_hasher(DigestHasher::default()),
                previous: HashSet::with_hasher(DigestHasher::default()),
                started: Instant::now(),
            }),
        }
    }

    /// Remembers `digest` as accepted now.
    pub(super) fn insert(&self, digest: &KeyDigest) {
        let now = Instant::now();
        let mut generations = lock(&self.generations);
        generations.age(now, self.lifetime);
        if generations.current.len() >= self.capacity {
            generations.retire(now);
        }
        generations.current.insert(digest.hash_u64());
    }

    /// Whether `digest` was accepted within the lifetime (or a little longer; see the module).
    pub(super) fn contains(&self, digest: &KeyDigest) -> bool {
        let mut generations = lock(&self.generations);
        generations.age(Instant::now(), self.lifetime);
        let fingerprint = digest.hash_u64();
        generations.current.contains(&fingerprint) || generations.previous.contains(&fingerprint)
    }

    /// Fingerprints held now, in both generations.
    #[cfg(test)]
    fn len(&self) -> usize {
        let generations = lock(&self.generations);
        generations.current.len() + generations.previous.len()
    }
}

impl Generations {
    /// Retires generations that are too old at `now`.
    fn age(&mut self, now: Instant, lifetime: Duration) {
        let age = now.saturating_duration_since(self.started);
        if age >= lifetime.saturating_mul(2) {
            self.current.clear();
            self.previous.clear();
            self.started = now;
        } else if age >= lifetime {
            self.retire(now);
        }
    }

    /// Makes the current generation the previous one and starts an empty one at `now`.
    fn retire(&mut self, now: Instant) {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
        self.started = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> KeyDigest {
        KeyDigest::from_bytes([n; 32])
    }

    #[test]
    fn an_accepted_key_is_known_and_others_are_not() {
        let known = KnownKeys::new(Duration::from_secs(600), 10);
        known.insert(&digest(1));
        assert!(known.contains(&digest(1)));
        assert!(!known.contains(&digest(2)));
    }

    #[test]
    fn a_key_is_forgotten_two_lifetimes_after_its_acceptance_and_not_before_one() {
        let lifetime = Duration::from_secs(600);
        let known = KnownKeys::new(lifetime, 10);
        known.insert(&digest(1));
        let mut generations = lock(&known.generations);
        let start = generations.started;
        generations.age(start + lifetime - Duration::from_secs(1), lifetime);
        assert!(generations.current.contains(&digest(1).hash_u64()));
        generations.age(start + lifetime, lifetime);
        assert!(generations.previous.contains(&digest(1).hash_u64()));
        generations.age(start + lifetime * 2, lifetime);
        assert!(generations.current.is_empty() && generations.previous.is_empty());
    }

    #[test]
    fn memory_stays_within_two_generations_of_capacity() {
        let known = KnownKeys::new(Duration::from_secs(600), 4);
        for n in 0..20 {
            known.insert(&digest(n));
        }
        assert!(known.len() <= 8, "{} fingerprints held", known.len());
        // The latest keys are still known: a full generation retires the oldest first.
        assert!(known.contains(&digest(19)) && known.contains(&digest(16)));
        assert!(!known.contains(&digest(0)));
    }
}
