//! A DHCPv6 lease of one IA_NA address (RFC 8415 §21.4, §21.6) and the stateless
//! configuration of an Information-Request (§18.2.6), with their timers.

use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

use crate::dhcp::Millis;

/// A lifetime or timer of 0xffffffff: infinity (§7.7).
pub const INFINITY: u32 = u32::MAX;
/// §7.6 IRT_DEFAULT: refresh stateless configuration after a day unless told otherwise.
pub const IRT_DEFAULT_SECS: u32 = 86_400;
/// §7.6 IRT_MINIMUM: no sooner than 10 minutes.
pub const IRT_MINIMUM_SECS: u32 = 600;

/// One leased address, as applied and persisted. Times are seconds from `acquired_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub address: Ipv6Addr,
    pub preferred_secs: u32,
    pub valid_secs: u32,
    /// When to Renew and Rebind: the server's T1/T2, or the client's choice when it sent 0
    /// (§21.4: 0.5 and 0.8 of the preferred lifetime), never sooner than the floor.
    pub t1_secs: u32,
    pub t2_secs: u32,
    pub iaid: u32,
    /// The server's DUID: Renew and Release go to it.
    pub server_id: Vec<u8>,
    pub dns: Vec<Ipv6Addr>,
    pub search: Vec<String>,
    /// When the exchange that got it began (its lifetimes count from then, §18.2.10.1).
    pub acquired_at: Millis,
}

fn at(start: Millis, secs: u32) -> Option<Millis> {
    (secs != INFINITY).then(|| start.saturating_add(u64::from(secs) * 1000))
}

impl Lease {
    pub fn renew_at(&self) -> Option<Millis> {
        at(self.acquired_at, self.t1_secs)
    }
    pub fn rebind_at(&self) -> Option<Millis> {
        at(self.acquired_at, self.t2_secs)
    }
    /// When the valid lifetime ends (None: never).
    pub fn expires_at(&self) -> Option<Millis> {
        at(self.acquired_at, self.valid_secs)
    }
    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires_at().is_some_and(|e| now >= e)
    }

    /// The (valid, preferred) lifetimes left at `now`, for the kernel; None: forever.
    pub fn remaining(&self, now: Millis) -> (Option<u32>, Option<u32>) {
        let left = |secs: u32| at(self.acquired_at, secs).map(|end| u32::try_from(end.saturating_sub(now) / 1000).unwrap_or(INFINITY - 1));
        (left(self.valid_secs), left(self.preferred_secs))
    }

    /// The invariants every applied lease keeps (checked by the tests and the fuzz target).
    pub fn validate(&self) -> Result<(), &'static str> {
        check_address(self.address)?;
        if self.preferred_secs > self.valid_secs {
            return Err("preferred lifetime > valid lifetime");
        }
        if self.valid_secs == 0 {
            return Err("zero valid lifetime");
        }
        if self.t1_secs > self.t2_secs {
            return Err("T1 > T2");
        }
        if !(3..=130).contains(&self.server_id.len()) {
            return Err("server id is not a DUID");
        }
        Ok(())
    }
}

/// The address an IA may lease: global or unique-local unicast, not one of the special ones.
pub fn check_address(a: Ipv6Addr) -> Result<(), &'static str> {
    let s = a.segments();
    if a.is_unspecified() {
        Err("unspecified")
    } else if a.is_loopback() {
        Err("loopback")
    } else if a.is_multicast() {
        Err("multicast")
    } else if s[0] & 0xffc0 == 0xfe80 {
        Err("link-local")
    } else if a.to_ipv4_mapped().is_some() {
        Err("IPv4-mapped")
    } else {
        Ok(())
    }
}

/// T1 and T2 for a lease (§21.4): the server's when it gave both (T1 <= T2 was checked);
/// else 0.5 and 0.8 of the preferred lifetime. Never sooner than `floor_secs` (a server must
/// not make a session renew in a loop), never past the valid lifetime's end.
pub fn timers(t1: u32, t2: u32, preferred: u32, valid: u32, floor_secs: u32) -> (u32, u32) {
    let (t1, t2) = if t1 == 0 || t2 == 0 {
        if preferred == INFINITY { (INFINITY, INFINITY) } else { (preferred / 2, (u64::from(preferred) * 4 / 5) as u32) }
    } else {
        (t1, t2)
    };
    let clamp = |t: u32| if t == INFINITY { t } else { t.max(floor_secs).min(valid) };
    let (t1, t2) = (clamp(t1), clamp(t2));
    (t1.min(t2), t2)
}

/// Stateless configuration from a Reply to an Information-Request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub dns: Vec<Ipv6Addr>,
    pub search: Vec<String>,
    /// When to ask again (§21.23, at least IRT_MINIMUM).
    pub refresh_secs: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_follow_the_server_or_default_to_half_and_four_fifths_of_preferred() {
        assert_eq!(timers(100, 160, 200, 300, 2), (100, 160));
        assert_eq!(timers(0, 0, 200, 300, 2), (100, 160));
        assert_eq!(timers(0, 0, INFINITY, INFINITY, 2), (INFINITY, INFINITY));
        assert_eq!(timers(INFINITY, INFINITY, INFINITY, INFINITY, 2), (INFINITY, INFINITY));
        assert_eq!(timers(0, 0, 2, 4, 2), (2, 2), "floored");
        assert_eq!(timers(1, 1, 4, 4, 2), (2, 2), "a server cannot make it renew every second");
        assert_eq!(timers(500, 900, 200, 300, 2), (300, 300), "never past the valid lifetime");
    }

    #[test]
    fn remaining_lifetimes_and_deadlines() {
        let l = Lease {
            address: "2001:db8::5".parse().unwrap(),
            preferred_secs: 100,
            valid_secs: 200,
            t1_secs: 50,
            t2_secs: 80,
            iaid: 7,
            server_id: vec![0, 4, 1, 2, 3],
            dns: vec![],
            search: vec![],
            acquired_at: 10_000,
        };
        assert!(l.validate().is_ok());
        assert_eq!((l.renew_at(), l.rebind_at(), l.expires_at()), (Some(60_000), Some(90_000), Some(210_000)));
        assert_eq!(l.remaining(20_000), (Some(190), Some(90)));
        assert_eq!(l.remaining(500_000), (Some(0), Some(0)));
        assert!(l.is_expired(210_000) && !l.is_expired(209_999));
        let forever = Lease { valid_secs: INFINITY, preferred_secs: INFINITY, t1_secs: INFINITY, t2_secs: INFINITY, ..l.clone() };
        assert_eq!((forever.remaining(20_000), forever.expires_at()), ((None, None), None));
        for (bad, why) in [
            (Lease { address: "fe80::1".parse().unwrap(), ..l.clone() }, "link-local"),
            (Lease { preferred_secs: 300, ..l.clone() }, "preferred lifetime > valid lifetime"),
            (Lease { t1_secs: 90, ..l.clone() }, "T1 > T2"),
            (Lease { server_id: vec![], ..l.clone() }, "server id is not a DUID"),
        ] {
            assert_eq!(bad.validate(), Err(why));
        }
    }
}
