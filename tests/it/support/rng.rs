//! A cheap deterministic generator (no `rand` dependency).

/// Xorshift64: varied enough for delays, picks and garbage; the same run every time.
pub(crate) struct XorShift(u64);

impl XorShift {
    /// The `n`th of a family of well-spread, never-zero seeds.
    pub(crate) fn seeded(n: u64) -> Self {
        Self(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
