//! Address virtualization on the host's own stack: a session's address lives on a macvlan of
//! its own in the host namespace (on the uplink, with the session's stable MAC), added without
//! a prefix route, so that nothing of the host's own traffic moves to it. A rule sends what
//! leaves from that address to a table of the session's, whose routes go out through that
//! macvlan. ARP on those links answers only for their own address and announces only it
//! (arp_ignore 1, arp_announce 2, arp_filter 1): several addresses on one LAN without ARP flux.
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_route::link::MacVlanMode;
use rtnetlink::LinkMacVlan;

use super::lease::HostLink;
use crate::netlink::{NetError, NetOps, RtNet};
use crate::sid::Sid;

/// What to build for a session's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressPlan {
    pub uplink: String,
    pub link: String,
    pub mac: [u8; 6],
    /// A pool address; None: the link only, for DHCP to lease one on (`programs::lease`).
    pub address: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub table: u32,
}

/// What to remove: derivable from the sid (the rules go by their table, whatever address
/// they are from, so a lease that a crash left needs no record of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressTeardown {
    pub link: String,
    pub table: u32,
}

impl AddressPlan {
    pub fn teardown_spec(&self) -> AddressTeardown {
        AddressTeardown { link: self.link.clone(), table: self.table }
    }
}

/// The session's macvlan in the host namespace.
pub fn link_name(sid: Sid) -> String {
    format!("sdp{sid}")
}

/// The session's routing table: above the ids that iproute2 and most tools use.
pub fn table(sid: Sid) -> u32 {
    TABLE_BASE + sid.get()
}
const TABLE_BASE: u32 = 0x1000_0000;
/// Before the main table's rule (32766), after the local one (0).
pub(crate) const RULE_PRIORITY: u32 = 1000;

/// sysctls of the session's link: answer ARP only for its own address, announce only it,
/// and answer only where the route back goes out of it. No reverse-path filtering on it (a
/// new link inherits `default`, 2 under systemd): the DHCP server's replies arrive on the
/// link while the route back to the server is the host's uplink, and before the link has an
/// address the kernel drops them under either filter (see `check_rp_filter`).
const LINK_SYSCTLS: [(&str, &str); 4] = [("arp_ignore", "1"), ("arp_announce", "2"), ("arp_filter", "1"), ("rp_filter", "0")];

const RP_FILTER_ALL: &str = "/proc/sys/net/ipv4/conf/all/rp_filter";

/// A DHCP lease on a session link needs `net.ipv4.conf.all.rp_filter` 0: the kernel filters
/// with the higher of `all` and the link's own value, and under either filter it drops a
/// packet that arrives on a link with no address yet when the route back to its sender goes
/// out of another one (the DHCP server's OFFER and ACK, whose sender the host reaches through
/// its uplink). Links keep their own settings (the uplink's filter stays).
pub fn check_rp_filter() -> Result<(), NetError> {
    let v = std::fs::read_to_string(RP_FILTER_ALL).map_err(|source| NetError::Io { op: format!("read {RP_FILTER_ALL}"), source })?;
    match v.trim() {
        "0" => Ok(()),
        v => Err(NetError::Other(format!(
            "net.ipv4.conf.all.rp_filter is {v}: the kernel would drop the DHCP server's replies on the session's own link before it has an address \
             (the route back to the server is the uplink's); programs-mode DHCP needs it 0 (each link keeps its own rp_filter, the uplink's too), \
             or use addressing = \"static\""
        ))),
    }
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |source| NetError::Netlink { op, source }
}

/// Builds it all; idempotent (what exists is kept), so a retry or a rollback is safe.
pub async fn build(plan: &AddressPlan) -> Result<(), NetError> {
    let net = RtNet::connect_here()?;
    let parent = net.link_index(&plan.uplink).await?.ok_or_else(|| NetError::NoSuchLink(plan.uplink.clone()))?;
    if net.link_index(&plan.link).await?.is_none() {
        // (NetOps::create_macvlan makes one inside a session namespace; this one stays here)
        let (conn, h, _) = rtnetlink::new_connection().map_err(|source| NetError::Io { op: "open netlink socket".into(), source })?;
        tokio::spawn(conn);
        let msg = LinkMacVlan::new(&plan.link, parent, MacVlanMode::Bridge).address(plan.mac.to_vec()).build();
        h.link().add(msg).execute().await.map_err(nl(format!("create macvlan {} on {}", plan.link, plan.uplink)))?;
    }
    for (key, value) in LINK_SYSCTLS {
        let path = format!("/proc/sys/net/ipv4/conf/{}/{key}", plan.link);
        std::fs::write(&path, value).map_err(|source| NetError::Io { op: format!("write {path}"), source })?;
    }
    net.set_up(&plan.link).await?;
    let Some(address) = plan.address else { return Ok(()) };
    let at = HostLink { link: plan.link.clone(), table: plan.table };
    at.put_address(&net, address, None).await?;
    match plan.gateway {
        Some(gw) => net.add_table_route(&plan.link, plan.table, Ipv4Net::default(), Some(gw), address.addr()).await,
        None => Ok(()),
    }
}

/// Removes the session table's rules (from whatever address) and the link (its addresses,
/// its table's routes and its neighbour entries go with it). What is already gone is fine.
pub async fn teardown(spec: &AddressTeardown) -> Vec<NetError> {
    let net = match RtNet::connect_here() {
        Ok(n) => n,
        Err(e) => return vec![e],
    };
    let mut errors = Vec::new();
    if let Err(e) = net.del_table_rules(spec.table, RULE_PRIORITY, None).await {
        errors.push(e);
    }
    if let Err(e) = net.del_link(&spec.link).await {
        errors.push(e);
    }
    errors
}
