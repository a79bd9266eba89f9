//! The lease the client holds, its RFC 2131 timers, and the sanity rules every
//! lease must pass before it is applied (from the wire or from disk).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::Millis;
use super::reject::RejectReason;

/// Lease time meaning "infinite" (RFC 2131 §3.3).
pub const INFINITE: u32 = u32::MAX;
/// Default of [`super::ClientConfig::min_lease_secs`]: short enough for the 8 s leases of
/// test networks, long enough that a server cannot make a session renew more than every 2 s.
pub const DEFAULT_MIN_LEASE_SECS: u32 = 4;
/// The widest subnet a lease may put on-link: a /8 is the largest network ever run as one
/// LAN (10/8); anything wider (a /1 puts half the Internet on-link, bypassing the router) is
/// a rogue or broken server. /31 (RFC 3021) and /32 (cloud networks, with option 121) are fine.
pub const MIN_PREFIX_LEN: u8 = 8;

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
    /// Option 51 (required, non-zero), raised to the configured minimum; [`INFINITE`] = never expires.
    pub lease_secs: u32,
    /// Options 58/59, defaulting to 1/2 and 7/8 of the lease; clamped so
    /// t1 <= t2 <= lease, and no shorter than the renewal floor (see [`lease_times`]). Both
    /// are [`INFINITE`] for an infinite lease.
    pub t1_secs: u32,
    pub t2_secs: u32,
    /// When the first REQUEST of the exchange that got this ACK was sent. With
    /// retransmissions we cannot tell which copy was answered; the first is the
    /// conservative choice (RFC 2131 §4.4.1: times count from the request).
    pub acquired_at: Millis,
}

#[cfg(test)]
impl Lease {
    /// For tests: a /24 lease of `address` from 10.0.0.1, 120 s (T1 60 s, T2 105 s), no options.
    pub(crate) fn sample(address: Ipv4Addr, acquired_at: Millis) -> Lease {
        Lease {
            address,
            prefix_len: 24,
            server_id: Ipv4Addr::new(10, 0, 0, 1),
            routers: vec![],
            classless_routes: vec![],
            dns: vec![],
            domain: None,
            search: vec![],
            mtu: None,
            broadcast: None,
            lease_secs: 120,
            t1_secs: 60,
            t2_secs: 105,
            acquired_at,
        }
    }
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
        check_server_id(self.server_id)?;
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

/// The lease time, T1 and T2 to use, from the server's values (T1/T2 default to 1/2 and 7/8 of
/// the lease, RFC 2131 §4.4.5). Floors, so that no server (rogue or misconfigured: T1 = 0, a 1 s
/// lease) can make the client renew in a loop: a lease shorter than `min_lease` is used as if
/// it were that long (as dhcpcd does), and neither T1 nor T2 comes sooner than half of
/// `min_lease` (the default T1 of the shortest lease), never sooner than 1 s. Then
/// t1 <= t2 <= lease.
pub(crate) fn lease_times(lease: u32, t1: Option<u32>, t2: Option<u32>, min_lease: u32) -> (u32, u32, u32) {
    if lease == INFINITE {
        return (INFINITE, INFINITE, INFINITE);
    }
    let lease = lease.max(min_lease);
    let floor = renewal_floor_secs(min_lease).min(lease);
    let t2 = t2.unwrap_or((u64::from(lease) * 7 / 8) as u32).clamp(floor, lease);
    let t1 = t1.unwrap_or(lease / 2).clamp(floor, t2);
    (lease, t1, t2)
}

/// The shortest time from a lease's start to its renewal (see [`lease_times`]).
pub(crate) fn renewal_floor_secs(min_lease: u32) -> u32 {
    (min_lease / 2).max(1)
}

/// Classful default prefix for a server that omits option 1.
pub(crate) fn classful_prefix(addr: Ipv4Addr) -> u8 {
    match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// Why `addr` cannot be a host's own unicast address, if it cannot.
fn not_unicast(addr: Ipv4Addr) -> Option<&'static str> {
    let o = addr.octets();
    Some(match o[0] {
        0 => "in 0.0.0.0/8",
        127 => "loopback",
        _ if addr.is_multicast() => "multicast",
        _ if addr.is_broadcast() => "limited broadcast",
        240..=255 => "reserved class E",
        _ => return None,
    })
}

/// A server identifier (option 54) must be a unicast address: the client unicasts its
/// renewals and its RELEASE to it (RFC 2131 §4.4.5, §4.4.6).
pub(crate) fn check_server_id(addr: Ipv4Addr) -> Result<(), RejectReason> {
    match not_unicast(addr) {
        Some(why) => Err(RejectReason::InvalidServerId { addr, why }),
        None => Ok(()),
    }
}

/// An address we may configure as our own unicast address within `prefix_len`.
pub(crate) fn check_address(addr: Ipv4Addr, prefix_len: u8) -> Result<(), RejectReason> {
    let bad = |why| Err(RejectReason::InvalidAddress { addr, why });
    if let Some(why) = not_unicast(addr) {
        return bad(why);
    }
    if prefix_len == 0 || prefix_len > 32 {
        // Zero is "contiguous" but would put the whole Internet on-link.
        return Err(RejectReason::BadNetmask(prefix_mask(prefix_len)));
    }
    if prefix_len < MIN_PREFIX_LEN {
        return Err(RejectReason::NetmaskTooWide { mask: prefix_mask(prefix_len), prefix_len, min: MIN_PREFIX_LEN });
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
        let m = DEFAULT_MIN_LEASE_SECS;
        assert_eq!(lease_times(3600, None, None, m), (3600, 1800, 3150));
        assert_eq!(lease_times(u32::MAX - 1, None, None, m), (u32::MAX - 1, (u32::MAX - 1) / 2, 3_758_096_382));
        assert_eq!(lease_times(100, Some(90), Some(80), m), (100, 80, 80));
        assert_eq!(lease_times(100, Some(500), Some(500), m), (100, 100, 100));
        assert_eq!(lease_times(100, None, Some(30), m), (100, 30, 30));
        assert_eq!(lease_times(8, Some(2), Some(6), m), (8, 2, 6), "a short test-network lease is kept as is");
        assert_eq!(lease_times(INFINITE, Some(10), Some(20), m), (INFINITE, INFINITE, INFINITE));
    }

    #[test]
    fn floors_stop_a_renewal_loop() {
        // A 1 s lease (T1 and T2 would be 0): used as a 4 s lease, renewed after 2 s.
        assert_eq!(lease_times(1, None, None, 4), (4, 2, 3));
        // T1 = 0 (and T2 = 0) on a long lease: renewal no sooner than the floor.
        assert_eq!(lease_times(3600, Some(0), None, 4), (3600, 2, 3150));
        assert_eq!(lease_times(3600, Some(0), Some(0), 4), (3600, 2, 2));
        assert_eq!(lease_times(3600, Some(1), Some(1), 20), (3600, 10, 10));
        // The floor follows the configured minimum, and is never zero.
        assert_eq!(lease_times(30, Some(0), None, 20), (30, 10, 26));
        assert_eq!(lease_times(5, Some(0), Some(0), 60), (60, 30, 30));
        assert_eq!(lease_times(1, Some(0), Some(0), 1), (1, 1, 1));
        assert_eq!(lease_times(1, Some(0), Some(0), 0), (1, 1, 1));
        for (lease, t1, t2, min) in [(1, None, None, 2), (2, Some(0), Some(9), 3), (7, Some(7), Some(1), 8), (u32::MAX - 1, Some(0), Some(0), 86_400)] {
            let (l, a, b) = lease_times(lease, t1, t2, min);
            assert!(a >= 1 && a <= b && b <= l && l >= min.max(lease), "{lease} {t1:?} {t2:?} {min}: {l} {a} {b}");
        }
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
        assert_eq!(
            check_address(Ipv4Addr::new(10, 77, 0, 250), 1),
            Err(RejectReason::NetmaskTooWide { mask: Ipv4Addr::new(128, 0, 0, 0), prefix_len: 1, min: 8 })
        );
        assert!(!ok([10, 77, 0, 250], 7));
        assert!(ok([10, 77, 0, 250], 8));
    }

    #[test]
    fn server_id_rules() {
        for (a, why) in [
            ([255, 255, 255, 255], "limited broadcast"),
            ([0, 0, 0, 0], "in 0.0.0.0/8"),
            ([127, 0, 0, 1], "loopback"),
            ([127, 9, 9, 9], "loopback"),
            ([224, 0, 0, 1], "multicast"),
            ([240, 0, 0, 1], "reserved class E"),
        ] {
            let addr = Ipv4Addr::from(a);
            assert_eq!(check_server_id(addr), Err(RejectReason::InvalidServerId { addr, why }));
        }
        assert_eq!(check_server_id(Ipv4Addr::new(10, 77, 0, 1)), Ok(()));
        // A server id is an address, not a subnet's member: x.y.z.0 or .255 of some /24 is fine.
        assert_eq!(check_server_id(Ipv4Addr::new(10, 77, 1, 0)), Ok(()));
    }

    #[test]
    fn validate_catches_everything() {
        let l = sample(0);
        assert!(l.validate().is_ok());
        assert!(Lease { address: l.server_id, ..l.clone() }.validate().is_err());
        assert!(Lease { lease_secs: 0, t1_secs: 0, t2_secs: 0, ..l.clone() }.validate().is_err());
        assert!(Lease { t1_secs: 3200, ..l.clone() }.validate().is_err());
        assert!(Lease { t2_secs: 3601, ..l.clone() }.validate().is_err());
        assert!(Lease { server_id: Ipv4Addr::BROADCAST, ..l.clone() }.validate().is_err());
        assert!(Lease { prefix_len: 1, ..l.clone() }.validate().is_err());
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
