//! The per-session loopback address, as RDS loopback virtualization does it:
//! sid N gets 127.0.0.0 + (N + 1), so the host (sid 0) keeps 127.0.0.1.
use std::net::Ipv4Addr;

use crate::sid::Sid;

const LOOPBACK_BASE: u32 = 0x7f00_0000; // 127.0.0.0

/// The session's own loopback address.
pub fn loopback_for(sid: Sid) -> Ipv4Addr {
    Ipv4Addr::from(LOOPBACK_BASE + sid.get() + 1)
}

/// The inverse of `loopback_for`: which session owns this loopback address, if any.
pub fn sid_for_loopback(addr: Ipv4Addr) -> Option<Sid> {
    let n = u32::from(addr);
    if n & 0xff00_0000 != LOOPBACK_BASE {
        return None;
    }
    let offset = n - LOOPBACK_BASE;
    // 127.0.0.0 is not an address; 127.0.0.1 is the host's (sid 0).
    if offset < 2 {
        return None;
    }
    Sid::new(u64::from(offset - 1)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(n: u64) -> Sid {
        Sid::new(n).unwrap()
    }

    #[test]
    fn documented_edges() {
        assert_eq!(loopback_for(sid(1)), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(loopback_for(sid(7)), Ipv4Addr::new(127, 0, 0, 8));
        assert_eq!(loopback_for(sid(254)), Ipv4Addr::new(127, 0, 0, 255));
        assert_eq!(loopback_for(sid(255)), Ipv4Addr::new(127, 0, 1, 0));
        assert_eq!(loopback_for(sid(65535)), Ipv4Addr::new(127, 1, 0, 0));
        assert_eq!(loopback_for(sid(16_777_214)), Ipv4Addr::new(127, 255, 255, 255));
    }

    #[test]
    fn inverse_rejects_non_session_addresses() {
        assert_eq!(sid_for_loopback(Ipv4Addr::new(127, 0, 0, 0)), None);
        assert_eq!(sid_for_loopback(Ipv4Addr::new(127, 0, 0, 1)), None);
        assert_eq!(sid_for_loopback(Ipv4Addr::new(10, 0, 0, 2)), None);
        assert_eq!(sid_for_loopback(Ipv4Addr::new(128, 0, 0, 2)), None);
        assert_eq!(sid_for_loopback(Ipv4Addr::new(126, 255, 255, 255)), None);
        assert_eq!(sid_for_loopback(Ipv4Addr::new(127, 0, 0, 2)), Some(sid(1)));
        assert_eq!(sid_for_loopback(Ipv4Addr::new(127, 255, 255, 255)), Some(sid(16_777_214)));
    }

    #[test]
    fn round_trip_is_exhaustive() {
        // Every valid sid maps into 127/8 and back to itself (16.7 M cases, ~0.1 s in release).
        let step = if cfg!(debug_assertions) { 7 } else { 1 };
        let mut n = 1u64;
        while n <= crate::sid::MAX_SID as u64 {
            let s = sid(n);
            let a = loopback_for(s);
            assert_eq!(a.octets()[0], 127);
            assert_eq!(sid_for_loopback(a), Some(s));
            n += step;
        }
        // the last one explicitly, whatever the step
        assert_eq!(sid_for_loopback(loopback_for(sid(16_777_214))), Some(sid(16_777_214)));
    }
}
