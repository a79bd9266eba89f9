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

/// RFC 2131 §4.4.5: "Times T1 and T2 SHOULD be chosen with some random fuzz around a fixed
/// value, to avoid synchronization of client reallocation." Without it every session bound in
/// one log-in storm renews in the same second of every T1 (issue 16's farm: 1000 of them against
/// one HA pair). Each deadline moves either way by up to this fraction of the shorter of the two
/// phases it separates: T1 of (bound..T1, T1..T2), T2 of (T1..T2, T2..expiry). That keeps
/// bound <= T1 <= T2 <= expiry, and a deadline the server set close to the next one close to it.
pub const LEASE_FUZZ_DIVISOR: u64 = 8;

/// The random part of one lease's T1 and T2 (see [`LEASE_FUZZ_DIVISOR`]), drawn once per bound
/// lease: parts per thousand of each deadline's span, in -1000..=1000.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseFuzz {
    renew: i64,
    rebind: i64,
}

impl LeaseFuzz {
    /// No fuzz: the server's T1 and T2 exactly.
    pub const NONE: LeaseFuzz = LeaseFuzz { renew: 0, rebind: 0 };

    pub fn draw(rng: &mut SplitMix64) -> Self {
        Self { renew: rng.jitter(1000), rebind: rng.jitter(1000) }
    }

    /// (renew, rebind): a lease's T1 and T2 deadlines (absolute) moved by this fuzz, given when
    /// it was `bound` and its `expiry`: bound <= renew <= rebind <= expiry, and each is before
    /// the next one if it was.
    pub fn apply(self, bound: Millis, renew: Millis, rebind: Millis, expiry: Millis) -> (Millis, Millis) {
        let held = renew.saturating_sub(bound);
        let renewing = rebind.saturating_sub(renew);
        let rebinding = expiry.saturating_sub(rebind);
        let renew_span = held.min(renewing) / LEASE_FUZZ_DIVISOR;
        let rebind_span = renewing.min(rebinding) / LEASE_FUZZ_DIVISOR;
        (shift(renew, renew_span, self.renew), shift(rebind, rebind_span, self.rebind))
    }
}

/// `t` moved by `permille` thousandths of `span`.
fn shift(t: Millis, span: Millis, permille: i64) -> Millis {
    let by = i128::from(span) * i128::from(permille) / 1000;
    (i128::from(t) + by).clamp(0, i128::from(Millis::MAX)) as Millis
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_fuzz_stays_in_its_phase_and_spreads() {
        // A 60 s lease bound at 0, T1 15 s, T2 30 s (the farm's --t2 50).
        let (t1, t2, exp) = (15_000, 30_000, 60_000);
        assert_eq!(LeaseFuzz::NONE.apply(0, t1, t2, exp), (t1, t2));
        let mut rng = SplitMix64::new(9);
        let mut renews = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let (r, b) = LeaseFuzz::draw(&mut rng).apply(0, t1, t2, exp);
            assert!((13_125..=16_875).contains(&r), "T1 {r}");
            assert!((28_125..=31_875).contains(&b), "T2 {b}");
            renews.insert(r / 100);
        }
        // 1000 leases bound in one second renew over ~3.75 s, not in one instant.
        assert!(renews.len() > 30, "{renews:?}");
        // An hour's lease with the default T1 (30 min) and T2 (52.5 min): T1 +- 2.8 min, T2 +- 56 s.
        let (r, b) = LeaseFuzz { renew: 1000, rebind: -1000 }.apply(0, 1_800_000, 3_150_000, 3_600_000);
        assert_eq!((r, b), (1_968_750, 3_093_750));
        // A T1 the server set close to the start moves by little (not by an eighth of T1..T2).
        assert_eq!(LeaseFuzz { renew: 1000, rebind: 0 }.apply(0, 2_000, 3_150_000, 3_600_000).0, 2_250);
        // Extremes keep the order, whatever the phases: bound <= T1 <= T2 <= expiry, strictly
        // where it was strict.
        for (t0, t1, t2, exp) in
            [(0, 0, 0, 1), (5, 1_000, 1_000, 1_000), (0, 10, 20, 20), (0, 1_800_000, 3_150_000, 3_600_000), (0, 0, 1, u64::MAX), (7, 9, 11, 13)]
        {
            for (r, b) in [(-1000, 1000), (1000, -1000), (1000, 1000), (-1000, -1000)] {
                let (fr, fb) = LeaseFuzz { renew: r, rebind: b }.apply(t0, t1, t2, exp);
                assert!(t0 <= fr && fr <= fb && fb <= exp, "{t0} {t1} {t2} {exp} {r} {b}: {fr} {fb}");
                assert!((t0 == t1 || t0 < fr) && (t1 == t2 || fr < fb) && (t2 == exp || fb < exp), "{t0} {t1} {t2} {exp} {r} {b}: {fr} {fb}");
            }
        }
    }

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
