//! A DHCP lease of a programs-mode session, on its own link in the host namespace (the
//! macvlan `sdpN` that `address.rs` makes): the same client as a namespace session's
//! (`lease_driver`, `dhcp_session`), whose lease goes where `address.rs` puts a pool address.
//! The address goes on the link without a prefix route (the host's own traffic never moves
//! to it), the subnet and the lease's routes go into the session's table, and a rule sends
//! what leaves from the address to that table. No files: a programs-mode login shares the
//! host's resolv.conf and hosts (the lease's DNS servers show in `status`, nothing uses them).
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::address;
use crate::dhcp::Lease;
use crate::dhcp_session::lifetimes;
use crate::netlink::{Lifetimes, NetError, NetOps};
use crate::sid::Sid;

/// Where a programs-mode session's lease goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLink {
    /// The session's macvlan in the host namespace (`address::link_name`).
    pub link: String,
    /// The session's routing table (`address::table`).
    pub table: u32,
}

impl HostLink {
    pub fn of(sid: Sid) -> HostLink {
        HostLink { link: address::link_name(sid), table: address::table(sid) }
    }

    /// The lease's address (with its lifetimes), its subnet on-link in the session's table,
    /// and the rule from the address to that table; idempotent, so a renewal refreshes it.
    pub async fn add_address<N: NetOps>(&self, net: &N, lease: &Lease) -> Result<(), NetError> {
        self.put_address(net, lease.network(), lifetimes(lease)).await
    }

    /// `addr` on the link (no prefix route), its subnet on-link in the session's table, and
    /// the rule from it to that table: a lease's (`add_address`) or a pool address
    /// (`address::build`).
    pub async fn put_address<N: NetOps>(&self, net: &N, addr: Ipv4Net, life: Option<Lifetimes>) -> Result<(), NetError> {
        net.add_addr_without_prefix_route(&self.link, addr, life).await?;
        // Before any route via a gateway: the kernel checks a gateway against the table.
        net.add_table_route(&self.link, self.table, subnet(addr), None, addr.addr()).await?;
        net.add_source_rule(addr.addr(), self.table, address::RULE_PRIORITY).await
    }

    /// One of the lease's routes (`gateway` None: on-link), from its address.
    pub async fn add_route<N: NetOps>(&self, net: &N, lease: &Lease, dest: Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<(), NetError> {
        net.add_table_route(&self.link, self.table, dest, gateway, lease.address).await
    }

    pub async fn del_route<N: NetOps>(&self, net: &N, dest: Ipv4Net) -> Result<(), NetError> {
        net.del_table_route(&self.link, self.table, dest).await
    }

    /// The lease's rule, subnet route and address go (its other routes first, by the
    /// caller); what is gone already is fine. Goes on past errors and returns the first.
    pub async fn del_address<N: NetOps>(&self, net: &N, lease: &Lease) -> Result<(), NetError> {
        let addr = lease.network();
        let rule = net.del_table_rules(self.table, address::RULE_PRIORITY, Some(lease.address)).await;
        let route = net.del_table_route(&self.link, self.table, subnet(addr)).await;
        let address = net.del_addr(&self.link, addr).await;
        rule.and(route).and(address)
    }
}

fn subnet(addr: Ipv4Net) -> Ipv4Net {
    addr.trunc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakePlatform;
    use crate::lease_driver::now_ms;
    use crate::platform::Platform;

    fn lease(addr: [u8; 4]) -> Lease {
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        Lease { server_id: gw, routers: vec![gw], dns: vec![gw], ..Lease::sample(Ipv4Addr::from(addr), now_ms()) }
    }

    #[tokio::test]
    async fn a_lease_goes_on_the_session_link_without_a_prefix_route_and_comes_off_whole() {
        let p = FakePlatform::new();
        p.add_host_link("sdp3");
        let at = HostLink::of(Sid::new(3).unwrap());
        assert_eq!(at, HostLink { link: "sdp3".into(), table: 0x1000_0003 });
        let l = lease([10, 0, 0, 57]);
        at.add_address(p.host(), &l).await.unwrap();
        at.add_route(p.host(), &l, Ipv4Net::default(), Some(Ipv4Addr::new(10, 0, 0, 1))).await.unwrap();
        let log = p.log();
        assert_eq!(
            log[..3],
            [
                "host: addr add 10.0.0.57/24 dev sdp3 noprefixroute valid 120 preferred 120".to_string(),
                "host: route 10.0.0.0/24 dev sdp3 src 10.0.0.57 table 268435459".into(),
                "host: rule add from 10.0.0.57 lookup 268435459 pref 1000".into(),
            ],
            "{log:?}"
        );
        assert_eq!(log[3], "host: route 0.0.0.0/0 via 10.0.0.1 dev sdp3 src 10.0.0.57 table 268435459");
        // Off again: the rule, the routes and the address; nothing of it stays.
        at.del_route(p.host(), Ipv4Net::default()).await.unwrap();
        at.del_address(p.host(), &l).await.unwrap();
        assert!(p.objects().iter().all(|o| !o.contains("sdp3") && !o.starts_with("rule:")), "{:?}", p.objects());
        // Idempotent: again is fine.
        at.del_address(p.host(), &l).await.unwrap();
    }

    #[tokio::test]
    async fn removing_goes_on_past_a_failed_step() {
        let p = FakePlatform::new();
        p.add_host_link("sdp3");
        let at = HostLink::of(Sid::new(3).unwrap());
        let l = lease([10, 0, 0, 57]);
        at.add_address(p.host(), &l).await.unwrap();
        p.fail_on("host: rule del");
        let e = at.del_address(p.host(), &l).await.unwrap_err();
        assert!(e.to_string().contains("rule del from 10.0.0.57"), "{e}");
        assert!(p.objects().iter().all(|o| !o.contains("sdp3")), "the route and address still went: {:?}", p.objects());
    }
}
