//! Static address pool: FIRST-LAST/PREFIX, sticky per sid (a sid gets its old address back
//! when it is free), persisted by the caller through `PoolHistory`.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::sid::Sid;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub prefix_len: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("pool {0:?} is malformed: expected FIRST-LAST/PREFIX, e.g. 10.0.0.100-10.0.0.199/24")]
    Malformed(String),
    #[error("pool {0:?} is empty: the first address {1} comes after the last {2}")]
    Empty(String, Ipv4Addr, Ipv4Addr),
    #[error("pool {0:?}: {1} and {2} are not in the same /{3} network")]
    NotOneSubnet(String, Ipv4Addr, Ipv4Addr, u8),
    #[error("pool {0:?} includes the network or broadcast address of its /{1}")]
    IncludesNetworkOrBroadcast(String, u8),
    #[error("gateway {gateway} is not inside the pool's network {net}")]
    GatewayOutside { gateway: Ipv4Addr, net: Ipv4Net },
    #[error("gateway {gateway} conflicts with the pool range {first}-{last}")]
    GatewayInRange { gateway: Ipv4Addr, first: Ipv4Addr, last: Ipv4Addr },
    #[error("address pool {first}-{last} is exhausted ({size} addresses, all in use)")]
    Exhausted { first: Ipv4Addr, last: Ipv4Addr, size: u32 },
}

impl FromStr for Pool {
    type Err = PoolError;
    fn from_str(s: &str) -> Result<Pool, PoolError> {
        let bad = || PoolError::Malformed(s.to_string());
        let (range, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let (first, last) = range.split_once('-').ok_or_else(bad)?;
        let first: Ipv4Addr = first.trim().parse().map_err(|_| bad())?;
        let last: Ipv4Addr = last.trim().parse().map_err(|_| bad())?;
        let prefix_len: u8 = prefix.trim().parse().map_err(|_| bad())?;
        if !(1..=30).contains(&prefix_len) {
            return Err(bad());
        }
        if u32::from(first) > u32::from(last) {
            return Err(PoolError::Empty(s.to_string(), first, last));
        }
        let net = Ipv4Net::new(first, prefix_len).map_err(|_| bad())?.trunc();
        if !net.contains(&last) {
            return Err(PoolError::NotOneSubnet(s.to_string(), first, last, prefix_len));
        }
        if first == net.network() || last == net.broadcast() {
            return Err(PoolError::IncludesNetworkOrBroadcast(s.to_string(), prefix_len));
        }
        Ok(Pool { first, last, prefix_len })
    }
}

/// Which address each sid last had, so it gets it back. Persisted as JSON in the state dir.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolHistory {
    pub last_address: BTreeMap<u32, Ipv4Addr>,
}

/// Pool addresses another host was found using (RFC 5227 probe or defence), skipped by
/// allocation for a while. Not persisted: a probe finds them again, and a host that left
/// gives its address back after `MEMORY_MS`.
#[derive(Clone, Debug, Default)]
pub struct Conflicts {
    seen: BTreeMap<Ipv4Addr, u64>,
}

impl Conflicts {
    /// How long a conflicting address is skipped without probing it again.
    pub const MEMORY_MS: u64 = 600_000;

    pub fn note(&mut self, address: Ipv4Addr, now_ms: u64) {
        self.seen.insert(address, now_ms);
    }

    /// The addresses to skip at `now_ms`.
    pub fn current(&self, now_ms: u64) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.seen.iter().filter(move |(_, at)| now_ms.saturating_sub(**at) < Self::MEMORY_MS).map(|(a, _)| *a)
    }
}

impl Pool {
    pub fn network(&self) -> Ipv4Net {
        Ipv4Net::new(self.first, self.prefix_len).expect("validated prefix").trunc()
    }

    pub fn size(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(a))
    }

    /// The gateway must be on the pool's network but not one of the addresses handed out.
    pub fn check_gateway(&self, gateway: Ipv4Addr) -> Result<(), PoolError> {
        let net = self.network();
        if !net.contains(&gateway) || gateway == net.network() || gateway == net.broadcast() {
            return Err(PoolError::GatewayOutside { gateway, net });
        }
        if self.contains(gateway) {
            return Err(PoolError::GatewayInRange { gateway, first: self.first, last: self.last });
        }
        Ok(())
    }

    /// Picks an address for `sid` given the addresses live sessions hold.
    /// Order: the sid's previous address if free; else the lowest address nobody remembers;
    /// else the lowest free one (taking over another sid's old, unused address).
    pub fn allocate(&self, sid: Sid, in_use: &BTreeSet<Ipv4Addr>, history: &PoolHistory) -> Result<Ipv4Addr, PoolError> {
        if let Some(prev) = history.last_address.get(&sid.get())
            && self.contains(*prev)
            && !in_use.contains(prev)
        {
            return Ok(*prev);
        }
        let remembered: BTreeSet<Ipv4Addr> = history.last_address.values().copied().collect();
        let free = || (u32::from(self.first)..=u32::from(self.last)).map(Ipv4Addr::from).filter(|a| !in_use.contains(a));
        free().find(|a| !remembered.contains(a)).or_else(|| free().next()).ok_or(PoolError::Exhausted { first: self.first, last: self.last, size: self.size() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn sid(n: u64) -> Sid {
        Sid::new(n).unwrap()
    }

    #[test]
    fn parses_and_rejects() {
        let p = pool("10.0.0.100-10.0.0.199/24");
        assert_eq!(p.size(), 100);
        assert_eq!(p.network().to_string(), "10.0.0.0/24");
        for bad in ["", "10.0.0.1", "10.0.0.1-10.0.0.5", "10.0.0.1/24", "x-y/24", "10.0.0.1-10.0.0.5/33", "10.0.0.1-10.0.0.5/0", "10.0.0.1-10.0.0.300/24"] {
            assert!(matches!(bad.parse::<Pool>(), Err(PoolError::Malformed(_))), "{bad}");
        }
        assert!(matches!("10.0.0.9-10.0.0.5/24".parse::<Pool>(), Err(PoolError::Empty(..))));
        assert!(matches!("10.0.0.9-10.0.1.5/24".parse::<Pool>(), Err(PoolError::NotOneSubnet(..))));
        assert!(matches!("10.0.0.0-10.0.0.5/24".parse::<Pool>(), Err(PoolError::IncludesNetworkOrBroadcast(..))));
        assert!(matches!("10.0.0.9-10.0.0.255/24".parse::<Pool>(), Err(PoolError::IncludesNetworkOrBroadcast(..))));
    }

    #[test]
    fn gateway_checks() {
        let p = pool("10.0.0.100-10.0.0.199/24");
        assert!(p.check_gateway(ip("10.0.0.1")).is_ok());
        assert!(matches!(p.check_gateway(ip("10.0.1.1")), Err(PoolError::GatewayOutside { .. })));
        assert!(matches!(p.check_gateway(ip("10.0.0.0")), Err(PoolError::GatewayOutside { .. })));
        assert!(matches!(p.check_gateway(ip("10.0.0.150")), Err(PoolError::GatewayInRange { .. })));
    }

    #[test]
    fn allocation_is_sticky_and_exhausts() {
        let p = pool("10.0.0.10-10.0.0.12/24");
        let mut h = PoolHistory::default();
        let mut used = BTreeSet::new();
        let a1 = p.allocate(sid(1), &used, &h).unwrap();
        assert_eq!(a1, ip("10.0.0.10"));
        h.last_address.insert(1, a1);
        used.insert(a1);
        let a2 = p.allocate(sid(2), &used, &h).unwrap();
        assert_eq!(a2, ip("10.0.0.11"));
        h.last_address.insert(2, a2);
        // sid 1 stops; sid 3 must not take sid 1's remembered address while another is free
        used.remove(&a1);
        used.insert(a2);
        let a3 = p.allocate(sid(3), &used, &h).unwrap();
        assert_eq!(a3, ip("10.0.0.12"));
        h.last_address.insert(3, a3);
        used.insert(a3);
        // sid 1 comes back: same address
        assert_eq!(p.allocate(sid(1), &used, &h).unwrap(), a1);
        used.insert(a1);
        // full
        assert!(matches!(p.allocate(sid(4), &used, &h), Err(PoolError::Exhausted { size: 3, .. })));
        // sid 4 takes over a remembered but unused address once one frees up
        used.remove(&a2);
        assert_eq!(p.allocate(sid(4), &used, &h).unwrap(), a2);
    }

    #[test]
    fn conflicting_addresses_are_skipped_for_a_while() {
        let p = pool("10.0.0.10-10.0.0.12/24");
        let mut h = PoolHistory::default();
        h.last_address.insert(1, ip("10.0.0.10"));
        let mut c = Conflicts::default();
        c.note(ip("10.0.0.10"), 1_000);
        let skip = |c: &Conflicts, now| -> BTreeSet<Ipv4Addr> { c.current(now).collect() };
        // the sid's own previous address is in use by another host: the next one
        assert_eq!(p.allocate(sid(1), &skip(&c, 2_000), &h).unwrap(), ip("10.0.0.11"));
        // forgotten after MEMORY_MS (a probe finds it again if it is still taken)
        assert_eq!(p.allocate(sid(1), &skip(&c, 1_000 + Conflicts::MEMORY_MS), &h).unwrap(), ip("10.0.0.10"));
        c.note(ip("10.0.0.11"), 1_000);
        c.note(ip("10.0.0.12"), 1_000);
        assert!(matches!(p.allocate(sid(1), &skip(&c, 2_000), &h), Err(PoolError::Exhausted { .. })));
    }

    #[test]
    fn history_outside_pool_is_ignored() {
        let p = pool("10.0.0.10-10.0.0.12/24");
        let mut h = PoolHistory::default();
        h.last_address.insert(1, ip("192.168.1.5"));
        assert_eq!(p.allocate(sid(1), &BTreeSet::new(), &h).unwrap(), ip("10.0.0.10"));
    }
}
