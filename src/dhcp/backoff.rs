//! Retransmission schedules (RFC 2131 §4.1 and §4.4.5), pure functions of time and jitter.

use super::Millis;
use super::rng::SplitMix64;

/// First retransmission base delay: short because sessiond runs on a LAN.
pub const INITIAL_RETRY_MS: u64 = 1_000;
/// Backoff ceiling (RFC 2131 §4.1).
pub const MAX_RETRY_MS: u64 = 64_000;
/// Random jitter applied to every backoff step (RFC 2131 §4.1: "±1 second").
pub const JITTER_MS: u64 = 1_000;
/// RENEWING/REBINDING retransmission floor (RFC 2131 §4.4.5), for phases of 4 minutes and more.
pub const MIN_LEASE_RETRY_MS: u64 = 60_000;
/// The floor for the shortest phases (see `lease_retry_at`).
pub const MIN_SHORT_LEASE_RETRY_MS: u64 = 1_000;

/// Delay before the retransmission that follows send number `attempt` (0-based).
///
/// Base is 1 s, 2 s, 4 s, … capped at 64 s, plus ±1 s jitter. The result never
/// drops below half the base so a retry is never immediate (no busy loop).
pub fn retransmit_delay(attempt: u32, rng: &mut SplitMix64) -> u64 {
    let base = if attempt >= 7 { MAX_RETRY_MS } else { (INITIAL_RETRY_MS << attempt).min(MAX_RETRY_MS) };
    let jittered = base as i64 + rng.jitter(JITTER_MS);
    (jittered.max((base / 2) as i64)) as u64
}

/// Next retransmission in the RENEWING or REBINDING phase that runs from `start` (T1 or T2) to
/// `deadline` (T2 or expiry): half the time left, never past `deadline`, and at least RFC 2131
/// §4.4.5's 60 s, or a quarter of the phase if that is less (at least 1 s). The RFC's floor
/// alone sends a phase shorter than 60 s once: a lease of a few minutes gets one REBINDING
/// broadcast from T2 to expiry, and loses its address if that one is dropped or comes while
/// an HA standby is still taking over (issue 16's farm). The quarter keeps at least three sends
/// in every phase; phases of 4 minutes and more keep the RFC's schedule.
pub fn lease_retry_at(now: Millis, start: Millis, deadline: Millis) -> Millis {
    let remaining = deadline.saturating_sub(now);
    let floor = (deadline.saturating_sub(start) / 4).clamp(MIN_SHORT_LEASE_RETRY_MS, MIN_LEASE_RETRY_MS);
    let wait = (remaining / 2).max(floor);
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
        // A phase of 1000 s (floor 60 s, the RFC's). 1000 s left: retry after 500 s.
        assert_eq!(lease_retry_at(0, 0, 1_000_000), 500_000);
        // 100 s left: half is 50 s < floor 60 s.
        assert_eq!(lease_retry_at(900_000, 0, 1_000_000), 960_000);
        // 30 s left: floor would overshoot, clamp to deadline.
        assert_eq!(lease_retry_at(970_000, 0, 1_000_000), 1_000_000);
        // Past deadline: never in the past.
        assert_eq!(lease_retry_at(50, 0, 10), 50);
    }

    /// Every send of a phase, from its start until the deadline.
    fn sends(start: Millis, deadline: Millis) -> Vec<Millis> {
        let (mut t, mut out) = (start, Vec::new());
        while t < deadline {
            out.push(t - start);
            t = lease_retry_at(t, start, deadline);
        }
        out
    }

    #[test]
    fn a_short_phase_is_retried_too() {
        // A 60 s lease's REBINDING phase (T2 at 87.5 %: 7.5 s): three broadcasts, not one.
        assert_eq!(sends(52_500, 60_000), vec![0, 3_750, 5_625]);
        // 16 s, T2 at 50 %: 8 s of it.
        assert_eq!(sends(8_000, 16_000), vec![0, 4_000, 6_000]);
        // The shortest phases: 1 s apart at least (no busy loop).
        assert_eq!(sends(0, 2_000), vec![0, 1_000]);
        assert_eq!(sends(0, 500), vec![0]);
        // A 1 h lease keeps RFC 2131's schedule: REBINDING (450 s) halves down to the 60 s floor.
        assert_eq!(sends(3_150_000, 3_600_000), vec![0, 225_000, 337_500, 397_500]);
        // Every phase, whatever its length, gets at least three sends once it is 2 s or longer.
        for len in [2_000u64, 3_000, 7_500, 59_000, 61_000, 239_000, 241_000, 1_350_000, 86_400_000] {
            let s = sends(1_000, 1_000 + len);
            assert!(s.len() >= 3 || len < 3_000, "{len}: {s:?}");
            assert!(s.windows(2).all(|w| w[1] - w[0] >= MIN_SHORT_LEASE_RETRY_MS.min(len / 4)), "{len}: {s:?}");
        }
    }
}
