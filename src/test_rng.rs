//! A seeded random number generator for unit tests: the same numbers on
//! every run, without a dependency.

/// Marsaglia's xorshift64 (shifts 13, 7, 17) from a nonzero seed.
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
