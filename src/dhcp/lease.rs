//! The lease the client holds, its RFC 2131 timers, and the sanity rules every
//! lease must pass before it is applied (from the wire or from disk).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::Millis;
use super::reject::RejectReason;

/// Lease time meaning "infinite" (RFC 2131 §3.3).
pub const INFINITE: u32 = u32::MAX;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    /// From option 1 (must be contiguous, non-zero). If the server omits it,
    /// the classful default is used (/8, /16, /24), as systemd-networkd does.
    pub prefix_len: u8,
    /// Option 54 (required).
    pub server_id: Ipv4Addr,
    /// Option 3. Per RFC 3442 ignore these when `classless_routes` is non-empty;
    /// [`Lease::routes`] does that.
    pub routers: Vec<Ipv4Addr>,
    /// Option 121 decoded (destination host bits cleared); empty if absent.
    /// A gateway of 0.0.0.0 means an on-link route.
    pub classless_routes: Vec<(Ipv4Net, Ipv4Addr)>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub mtu: Option<u16>,
    pub broadcast: Option<Ipv4Addr>,
    /// Option 51 (required, non-zero); [`INFINITE`] = never expires.
    pub lease_secs: u32,
    /// Options 58/59, defaulting to 1/2 and 7/8 of the lease; clamped so
    /// t1 <= t2 <= lease. Both are [`INFINITE`] for an infinite lease.
    pub t1_secs: u32,
    pub t2_secs: u32,
    /// When the first REQUEST of the exchange that got this ACK was sent. With
    /// retransmissions we cannot tell which copy was answered; the first is the
    /// conservative choice (RFC 2131 §4.4.1: times count from the request).
    pub acquired_at: Millis,
}

impl Lease {
    pub fn is_infinite(&self) -> bool {
        self.lease_secs == INFINITE
    }

    pub fn expires_at(&self) -> Option<Millis> {
        self.at(self.lease_secs)
    }

    /// Whether the lease is over at `now` (an infinite one never is).
    pub fn has_ended(&self, now: Millis) -> bool {
        self.expires_at().is_some_and(|e| e <= now)
    }

    /// Whether a lease from disk (or one a dead daemon left) can still be used at `now`.
    pub fn is_usable_at(&self, now: Millis) -> bool {
        self.validate().is_ok() && !self.has_ended(now)
    }

    pub fn renew_at(&self) -> Option<Millis> {
        self.at(self.t1_secs)
    }

    pub fn rebind_at(&self) -> Option<Millis> {
        self.at(self.t2_secs)
    }

    fn at(&self, secs: u32) -> Option<Millis> {
        (!self.is_infinite()).then(|| self.acquired_at.saturating_add(u64::from(secs) * 1000))
    }

    /// The interface network (address with prefix).
    pub fn network(&self) -> Ipv4Net {
        // prefix_len is validated <= 32 before any lease leaves the machine.
        Ipv4Net::new(self.address, self.prefix_len.min(32)).unwrap_or_else(|_| Ipv4Net::from(self.address))
    }

    /// Routes to install: option 121 if present (RFC 3442: it overrides option 3),
    /// else a default route via the first router, else none.
    pub fn routes(&self) -> Vec<(Ipv4Net, Ipv4Addr)> {
        if !self.classless_routes.is_empty() {
            return self.classless_routes.clone();
        }
        self.routers.first().map(|gw| (Ipv4Net::default(), *gw)).into_iter().collect()
    }

    /// Checks everything a lease must satisfy to be applied.
    pub fn validate(&self) -> Result<(), RejectReason> {
        check_address(self.address, self.prefix_len)?;
        if self.address == self.server_id {
            return Err(RejectReason::AddressIsServer(self.address));
        }
        if self.lease_secs == 0 {
            return Err(RejectReason::ZeroLeaseTime);
        }
        if !(self.t1_secs <= self.t2_secs && self.t2_secs <= self.lease_secs) {
            return Err(RejectReason::BadTimers { t1: self.t1_secs, t2: self.t2_secs, lease: self.lease_secs });
        }
        Ok(())
    }
}

/// T1/T2 from the server's values or the RFC 2131 defaults, clamped to t1 <= t2 <= lease.
pub(crate) fn timers(lease: u32, t1: Option<u32>, t2: Option<u32>) -> (u32, u32) {
    if lease == INFINITE {
        return (INFINITE, INFINITE);
    }
    let t2 = t2.unwrap_or((u64::from(lease) * 7 / 8) as u32).min(lease);
    let t1 = t1.unwrap_or(lease / 2).min(t2);
    (t1, t2)
}

/// Classful default prefix for a server that omits option 1.
pub(crate) fn classful_prefix(addr: Ipv4Addr) -> u8 {
    match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// An address we may configure as our own unicast address within `prefix_len`.
pub(crate) fn check_address(addr: Ipv4Addr, prefix_len: u8) -> Result<(), RejectReason> {
    let bad = |why| Err(RejectReason::InvalidAddress { addr, why });
    let o = addr.octets();
    if o[0] == 0 {
        return bad("in 0.0.0.0/8");
    }
    if o[0] == 127 {
        return bad("loopback");
    }
    if addr.is_multicast() {
        return bad("multicast");
    }
    if addr.is_broadcast() {
        return bad("limited broadcast");
    }
    if o[0] >= 240 {
        return bad("reserved class E");
    }
    if prefix_len == 0 || prefix_len > 32 {
        // Zero is "contiguous" but would put the whole Internet on-link.
        return Err(RejectReason::BadNetmask(prefix_mask(prefix_len)));
    }
    if prefix_len <= 30 {
        let host = u32::from(addr) & !u32::from(prefix_mask(prefix_len));
        if host == 0 {
            return bad("network address of its subnet");
        }
        if host == !u32::from(prefix_mask(prefix_len)) {
            return bad("broadcast address of its subnet");
        }
    }
    Ok(())
}

fn prefix_mask(prefix_len: u8) -> Ipv4Addr {
    let p = u32::from(prefix_len.min(32));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - p).unwrap_or(0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(acquired_at: Millis) -> Lease {
        Lease {
            address: Ipv4Addr::new(192, 168, 1, 50),
            prefix_len: 24,
            server_id: Ipv4Addr::new(192, 168, 1, 1),
            routers: vec![Ipv4Addr::new(192, 168, 1, 1)],
            classless_routes: vec![],
            dns: vec![Ipv4Addr::new(192, 168, 1, 1)],
            domain: Some("lan".into()),
            search: vec!["lan".into()],
            mtu: Some(1500),
            broadcast: Some(Ipv4Addr::new(192, 168, 1, 255)),
            lease_secs: 3600,
            t1_secs: 1800,
            t2_secs: 3150,
            acquired_at,
        }
    }

    #[test]
    fn deadlines_are_exact_millis() {
        let l = sample(1_000_000);
        assert_eq!(l.renew_at(), Some(1_000_000 + 1_800_000));
        assert_eq!(l.rebind_at(), Some(1_000_000 + 3_150_000));
        assert_eq!(l.expires_at(), Some(1_000_000 + 3_600_000));
        let inf = Lease { lease_secs: INFINITE, t1_secs: INFINITE, t2_secs: INFINITE, ..l };
        assert_eq!((inf.renew_at(), inf.rebind_at(), inf.expires_at()), (None, None, None));
        assert!(inf.validate().is_ok());
    }

    #[test]
    fn timer_defaults_and_clamps() {
        assert_eq!(timers(3600, None, None), (1800, 3150));
        assert_eq!(timers(1, None, None), (0, 0));
        assert_eq!(timers(u32::MAX - 1, None, None), ((u32::MAX - 1) / 2, 3_758_096_382));
        assert_eq!(timers(100, Some(90), Some(80)), (80, 80));
        assert_eq!(timers(100, Some(500), Some(500)), (100, 100));
        assert_eq!(timers(100, None, Some(30)), (30, 30));
        assert_eq!(timers(INFINITE, Some(10), Some(20)), (INFINITE, INFINITE));
    }

    #[test]
    fn address_rules() {
        let ok = |a: [u8; 4], p| check_address(Ipv4Addr::from(a), p).is_ok();
        assert!(ok([10, 1, 2, 3], 8));
        assert!(ok([192, 168, 0, 255], 23));
        assert!(!ok([192, 168, 1, 255], 23));
        assert!(ok([10, 0, 0, 0], 31));
        assert!(ok([10, 0, 0, 255], 32));
        for a in [[0, 0, 0, 0], [0, 1, 2, 3], [127, 0, 0, 1], [224, 0, 0, 1], [239, 1, 1, 1], [240, 0, 0, 1], [255, 255, 255, 255]] {
            assert!(!ok(a, 24), "{a:?}");
        }
        assert!(!ok([192, 168, 1, 0], 24));
        assert!(!ok([192, 168, 1, 255], 24));
        assert!(!ok([192, 168, 1, 5], 0));
        assert!(!ok([192, 168, 1, 5], 33));
    }

    #[test]
    fn validate_catches_everything() {
        let l = sample(0);
        assert!(l.validate().is_ok());
        assert!(Lease { address: l.server_id, ..l.clone() }.validate().is_err());
        assert!(Lease { lease_secs: 0, t1_secs: 0, t2_secs: 0, ..l.clone() }.validate().is_err());
        assert!(Lease { t1_secs: 3200, ..l.clone() }.validate().is_err());
        assert!(Lease { t2_secs: 3601, ..l.clone() }.validate().is_err());
    }

    #[test]
    fn routes_prefer_classless() {
        let mut l = sample(0);
        assert_eq!(l.routes(), vec![(Ipv4Net::default(), Ipv4Addr::new(192, 168, 1, 1))]);
        l.classless_routes = vec![("10.0.0.0/8".parse().unwrap(), Ipv4Addr::new(192, 168, 1, 2))];
        assert_eq!(l.routes(), l.classless_routes);
        l.classless_routes.clear();
        l.routers.clear();
        assert!(l.routes().is_empty());
        assert_eq!(l.network(), "192.168.1.50/24".parse().unwrap());
    }

    #[test]
    fn serde_roundtrip() {
        let mut l = sample(123);
        l.classless_routes = vec![("10.0.0.0/8".parse().unwrap(), Ipv4Addr::new(192, 168, 1, 2))];
        let s = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<Lease>(&s).unwrap(), l);
    }

    #[test]
    fn classful() {
        assert_eq!(classful_prefix(Ipv4Addr::new(10, 0, 0, 1)), 8);
        assert_eq!(classful_prefix(Ipv4Addr::new(172, 16, 0, 1)), 16);
        assert_eq!(classful_prefix(Ipv4Addr::new(192, 168, 0, 1)), 24);
    }
}
