//! RFC 8415 §15, "Reliability of Client-Initiated Message Exchanges": the retransmission
//! schedule of one exchange, with the transmission parameters of §7.6. Pure: the caller passes
//! the time and the randomisation (RAND, uniform in [-0.1, +0.1], as thousandths).

use crate::dhcp::Millis;

/// One message type's parameters (§7.6), in milliseconds; `mrc`/`mrd` 0: no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Initial retransmission time.
    pub irt_ms: u64,
    /// Maximum retransmission time (0: none).
    pub mrt_ms: u64,
    /// Maximum retransmission count, the first transmission included (0: none).
    pub mrc: u32,
    /// Maximum retransmission duration (0: none; Renew and Rebind set it from T2 / the
    /// valid lifetime instead, see `Exchange::until`).
    pub mrd_ms: u64,
}

/// §7.6: SOL_TIMEOUT 1 s, SOL_MAX_RT 3600 s.
pub const SOLICIT: Params = Params { irt_ms: 1_000, mrt_ms: 3_600_000, mrc: 0, mrd_ms: 0 };
/// REQ_TIMEOUT 1 s, REQ_MAX_RT 30 s, REQ_MAX_RC 10.
pub const REQUEST: Params = Params { irt_ms: 1_000, mrt_ms: 30_000, mrc: 10, mrd_ms: 0 };
/// REN_TIMEOUT 10 s, REN_MAX_RT 600 s (MRD: until T2).
pub const RENEW: Params = Params { irt_ms: 10_000, mrt_ms: 600_000, mrc: 0, mrd_ms: 0 };
/// REB_TIMEOUT 10 s, REB_MAX_RT 600 s (MRD: until the valid lifetimes end).
pub const REBIND: Params = Params { irt_ms: 10_000, mrt_ms: 600_000, mrc: 0, mrd_ms: 0 };
/// INF_TIMEOUT 1 s, INF_MAX_RT 3600 s.
pub const INFORMATION_REQUEST: Params = Params { irt_ms: 1_000, mrt_ms: 3_600_000, mrc: 0, mrd_ms: 0 };
/// REL_TIMEOUT 1 s, REL_MAX_RC 4.
pub const RELEASE: Params = Params { irt_ms: 1_000, mrt_ms: 0, mrc: 4, mrd_ms: 0 };

/// RAND's bound, in thousandths (±0.1).
pub const RAND_SPAN: i64 = 100;

/// `base` + RAND × `base` (RAND in thousandths, clamped to ±0.1).
fn randomised(base: u64, rand: i64) -> u64 {
    let rand = rand.clamp(-RAND_SPAN, RAND_SPAN);
    let delta = (base as i128 * rand as i128 / 1000) as i64;
    (base as i64).saturating_add(delta).max(1) as u64
}

/// The first RT: IRT + RAND×IRT; for Solicit RAND is made positive, so the first RT is
/// strictly greater than IRT (§15: the client waits out its Advertise collection).
pub fn initial_rt(p: &Params, rand: i64, solicit: bool) -> u64 {
    let rand = if solicit { rand.unsigned_abs().max(1) as i64 } else { rand };
    randomised(p.irt_ms, rand)
}

/// The RT after `prev`: 2×RTprev + RAND×RTprev, or MRT + RAND×MRT past MRT.
pub fn next_rt(p: &Params, prev: u64, rand: i64) -> u64 {
    let rand = rand.clamp(-RAND_SPAN, RAND_SPAN);
    let rt = (prev.saturating_mul(2).min(i64::MAX as u64) as i64).saturating_add((prev as i128 * rand as i128 / 1000) as i64).max(1) as u64;
    if p.mrt_ms != 0 && rt > p.mrt_ms { randomised(p.mrt_ms, rand) } else { rt }
}

/// One exchange: when it began, how often it sent, its current RT, and when it must end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub params: Params,
    pub started: Millis,
    /// Transmissions so far (the first included).
    pub sent: u32,
    /// The current retransmission timeout.
    pub rt_ms: u64,
    /// When the next transmission is due.
    pub next_at: Millis,
    /// Hard end: MRD from `params`, or the caller's deadline (T2 for Renew, the end of the
    /// valid lifetimes for Rebind), whichever is sooner.
    pub until: Option<Millis>,
}

impl Exchange {
    /// An exchange whose first message goes out `now`.
    pub fn begin(params: Params, now: Millis, rand: i64, solicit: bool, deadline: Option<Millis>) -> Exchange {
        let mrd = (params.mrd_ms != 0).then(|| now.saturating_add(params.mrd_ms));
        let until = match (mrd, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let rt_ms = initial_rt(&params, rand, solicit);
        Exchange { params, started: now, sent: 1, rt_ms, next_at: now.saturating_add(rt_ms), until }
    }

    /// The deadline the machine's timer should have: the next transmission, or the end.
    pub fn deadline(&self) -> Millis {
        match self.until {
            Some(u) => self.next_at.min(u),
            None => self.next_at,
        }
    }

    /// Whether the exchange is over at `now` (§15: MRC reached, or MRD passed).
    pub fn is_over(&self, now: Millis) -> bool {
        self.until.is_some_and(|u| now >= u) || (self.params.mrc != 0 && self.sent >= self.params.mrc && now >= self.next_at)
    }

    /// Records a retransmission at `now` and schedules the next one.
    pub fn retransmitted(&mut self, now: Millis, rand: i64) {
        self.sent = self.sent.saturating_add(1);
        self.rt_ms = next_rt(&self.params, self.rt_ms, rand);
        self.next_at = now.saturating_add(self.rt_ms);
    }

    /// The Elapsed Time option's value (§21.9): hundredths of a second since the exchange
    /// began, 0xffff past that.
    pub fn elapsed_centis(&self, now: Millis) -> u16 {
        u16::try_from(now.saturating_sub(self.started) / 10).unwrap_or(u16::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rt_is_irt_randomised_and_solicit_waits_longer_than_irt() {
        assert_eq!(initial_rt(&REQUEST, 0, false), 1_000);
        assert_eq!(initial_rt(&REQUEST, -100, false), 900);
        assert_eq!(initial_rt(&REQUEST, 100, false), 1_100);
        assert_eq!(initial_rt(&REQUEST, 5_000, false), 1_100, "RAND is clamped to +-0.1");
        for rand in [-100, -1, 0, 1, 100] {
            assert!(initial_rt(&SOLICIT, rand, true) > SOLICIT.irt_ms, "rand {rand}");
        }
        assert_eq!(initial_rt(&RENEW, 0, false), 10_000);
    }

    #[test]
    fn rt_doubles_then_stays_near_mrt() {
        assert_eq!(next_rt(&REQUEST, 1_000, 0), 2_000);
        assert_eq!(next_rt(&REQUEST, 1_000, 100), 2_100);
        assert_eq!(next_rt(&REQUEST, 1_000, -100), 1_900);
        assert_eq!(next_rt(&REQUEST, 20_000, 0), 30_000, "capped at REQ_MAX_RT");
        assert_eq!(next_rt(&REQUEST, 20_000, -100), 27_000, "MRT + RAND*MRT");
        let mut rt = SOLICIT.irt_ms;
        for _ in 0..40 {
            rt = next_rt(&SOLICIT, rt, 100);
            assert!(rt <= 3_960_000, "{rt}");
        }
        assert!(rt >= 3_240_000);
        assert_eq!(next_rt(&RELEASE, 1_000, 0), 2_000, "no MRT: only MRC ends it");
    }

    #[test]
    fn exchanges_end_at_mrc_or_at_their_deadline() {
        let mut e = Exchange::begin(RELEASE, 0, 0, false, None);
        assert_eq!((e.sent, e.deadline()), (1, 1_000));
        for n in 2..=4 {
            let now = e.next_at;
            assert!(!e.is_over(now));
            e.retransmitted(now, 0);
            assert_eq!(e.sent, n);
        }
        assert!(!e.is_over(e.next_at - 1), "the last one still waits for its reply");
        assert!(e.is_over(e.next_at), "REL_MAX_RC 4");

        let r = Exchange::begin(RENEW, 0, 0, false, Some(5_000));
        assert_eq!(r.deadline(), 5_000, "T2 comes before the first retransmission");
        assert!(r.is_over(5_000) && !r.is_over(4_999));
        assert_eq!(r.elapsed_centis(1_234), 123);
        assert_eq!(r.elapsed_centis(10_000_000), u16::MAX);
    }
}
