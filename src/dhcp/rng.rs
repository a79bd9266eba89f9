//! Tiny deterministic PRNG so the machine stays sans-IO: all randomness comes from the seed.

/// SplitMix64 (Steele/Lea/Flood). Not cryptographic; xid unpredictability rests on
/// the caller seeding it from the OS RNG.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform-ish integer in `[-span, span]`; modulo bias is irrelevant for jitter.
    pub(crate) fn jitter(&mut self, span: u64) -> i64 {
        let width = span.saturating_mul(2).saturating_add(1);
        (self.next_u64() % width) as i64 - span as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_bounded() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            let j = a.jitter(1000);
            assert_eq!(j, b.jitter(1000));
            assert!((-1000..=1000).contains(&j));
        }
        assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
    }
}
