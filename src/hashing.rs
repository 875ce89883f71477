//! The hasher of the crate's hash maps, for keys that are already uniform 64-bit values: key
//! digests, rate-limit budget keys and known-key fingerprints. It takes the one `u64` such a
//! key writes instead of hashing it again.

use std::hash::{BuildHasher, Hasher};

/// Hashes a key by taking the `u64` its `Hash` writes: a [`KeyDigest`]'s is already uniform
/// and keyed by the secret pepper, a [`BudgetKey`]'s is mixed, and a fingerprint is a digest's
/// first 64 bits, so re-hashing them would only cost time.
///
/// [`KeyDigest`]: crate::key::KeyDigest
/// [`BudgetKey`]: crate::rate_limit::BudgetKey
#[derive(Clone, Copy, Default)]
pub(crate) struct DigestHasher {
    state: u64,
}

impl BuildHasher for DigestHasher {
    type Hasher = Self;

    fn build_hasher(&self) -> Self {
        Self::default()
    }
}

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for digests; fold anything else in so the hasher stays correct.
        for &byte in bytes {
            self.state = self.state.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.state ^= value;
    }
}
