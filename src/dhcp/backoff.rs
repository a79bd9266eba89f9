//! Retransmission schedules (RFC 2131 §4.1 and §4.4.5), pure functions of time and jitter.

use super::Millis;
use super::rng::SplitMix64;

/// First retransmission base delay: short because sessiond runs on a LAN.
pub const INITIAL_RETRY_MS: u64 = 1_000;
/// Backoff ceiling (RFC 2131 §4.1).
pub const MAX_RETRY_MS: u64 = 64_000;
/// Random jitter applied to every backoff step (RFC 2131 §4.1: "±1 second").
pub const JITTER_MS: u64 = 1_000;
/// RENEWING/REBINDING retransmission floor (RFC 2131 §4.4.5).
pub const MIN_LEASE_RETRY_MS: u64 = 60_000;

/// Delay before the retransmission that follows send number `attempt` (0-based).
///
/// Base is 1 s, 2 s, 4 s, … capped at 64 s, plus ±1 s jitter. The result never
/// drops below half the base so a retry is never immediate (no busy loop).
pub fn retransmit_delay(attempt: u32, rng: &mut SplitMix64) -> u64 {
    let base = if attempt >= 7 { MAX_RETRY_MS } else { (INITIAL_RETRY_MS << attempt).min(MAX_RETRY_MS) };
    let jittered = base as i64 + rng.jitter(JITTER_MS);
    (jittered.max((base / 2) as i64)) as u64
}

/// Next RENEWING/REBINDING retransmission: half the time left until `deadline`
/// (T2 or expiry), at least 60 s, but never past `deadline`.
pub fn lease_retry_at(now: Millis, deadline: Millis) -> Millis {
    let remaining = deadline.saturating_sub(now);
    let wait = (remaining / 2).max(MIN_LEASE_RETRY_MS);
    now.saturating_add(wait).min(deadline).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut rng = SplitMix64::new(42);
        for seed_round in 0..200 {
            let _ = seed_round;
            let d0 = retransmit_delay(0, &mut rng);
            assert!((500..=2_000).contains(&d0), "first retry {d0}");
            for (attempt, base) in [(1u32, 2_000u64), (2, 4_000), (3, 8_000), (4, 16_000), (5, 32_000), (6, 64_000)] {
                let d = retransmit_delay(attempt, &mut rng);
                assert!(d >= base - 1_000 && d <= base + 1_000, "attempt {attempt}: {d}");
            }
            for attempt in [7u32, 10, 31, 32, 63, 64, u32::MAX] {
                let d = retransmit_delay(attempt, &mut rng);
                assert!((63_000..=65_000).contains(&d), "attempt {attempt}: {d}");
            }
        }
    }

    #[test]
    fn lease_retry_halves_with_floor_and_deadline() {
        // 1000 s left: retry after 500 s.
        assert_eq!(lease_retry_at(0, 1_000_000), 500_000);
        // 100 s left: half is 50 s < floor 60 s.
        assert_eq!(lease_retry_at(0, 100_000), 60_000);
        // 30 s left: floor would overshoot, clamp to deadline.
        assert_eq!(lease_retry_at(0, 30_000), 30_000);
        // Past deadline: never in the past.
        assert_eq!(lease_retry_at(50, 10), 50);
    }
}
