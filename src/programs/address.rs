//! Address virtualization on the host's own stack: a session's address lives on a macvlan of
//! its own in the host namespace (on the uplink, with the session's stable MAC), added without
//! a prefix route, so that nothing of the host's own traffic moves to it. A rule sends what
//! leaves from that address to a table of the session's, whose routes go out through that
//! macvlan. ARP on those links answers only for their own address and announces only it
//! (arp_ignore 1, arp_announce 2, arp_filter 1): several addresses on one LAN without ARP flux.
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::MacVlanMode;
use netlink_packet_route::route::{RouteProtocol, RouteScope};
use netlink_packet_route::rule::RuleAction;
use rtnetlink::{Handle, LinkMacVlan, RouteMessageBuilder};

use crate::netlink::{NetError, NetOps, RtNet, errno};
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

async fn index(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("look up {name}"))(e)),
    }
}

fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io { op: "open netlink socket".into(), source })?;
    tokio::spawn(conn);
    Ok(handle)
}

fn rule(h: &Handle, address: Ipv4Addr, table: u32) -> rtnetlink::RuleAddRequest<Ipv4Addr> {
    // The action must be said: a rule without one (FR_ACT_UNSPEC) fails every lookup (EINVAL).
    h.rule().add().v4().source_prefix(address, 32).table_id(table).action(RuleAction::ToTable).priority(RULE_PRIORITY)
}

/// Builds it all; idempotent (what exists is kept), so a retry or a rollback is safe.
pub async fn build(plan: &AddressPlan) -> Result<(), NetError> {
    let h = connect()?;
    let parent = index(&h, &plan.uplink).await?.ok_or_else(|| NetError::NoSuchLink(plan.uplink.clone()))?;
    if index(&h, &plan.link).await?.is_none() {
        let msg = LinkMacVlan::new(&plan.link, parent, MacVlanMode::Bridge).address(plan.mac.to_vec()).build();
        h.link().add(msg).execute().await.map_err(nl(format!("create macvlan {} on {}", plan.link, plan.uplink)))?;
    }
    for (key, value) in LINK_SYSCTLS {
        let path = format!("/proc/sys/net/ipv4/conf/{}/{key}", plan.link);
        std::fs::write(&path, value).map_err(|source| NetError::Io { op: format!("write {path}"), source })?;
    }
    let idx = index(&h, &plan.link).await?.ok_or_else(|| NetError::NoSuchLink(plan.link.clone()))?;
    if let Some(address) = plan.address {
        let mut add = h.address().add(idx, address.addr().into(), address.prefix_len()).replace();
        add.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
        add.execute().await.map_err(nl(format!("add {address} to {}", plan.link)))?;
    }
    let up = rtnetlink::LinkUnspec::new_with_index(idx).up().build();
    h.link().set(up).execute().await.map_err(nl(format!("set {} up", plan.link)))?;
    let Some(address) = plan.address else { return Ok(()) };
    let subnet = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(address.network(), address.prefix_len())
        .output_interface(idx)
        .pref_source(address.addr())
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Static)
        .table_id(plan.table)
        .build();
    h.route().add(subnet).replace().execute().await.map_err(nl(format!("add the subnet route to table {}", plan.table)))?;
    if let Some(gw) = plan.gateway {
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(idx)
            .gateway(gw)
            .pref_source(address.addr())
            .protocol(RouteProtocol::Static)
            .table_id(plan.table)
            .build();
        h.route().add(default).replace().execute().await.map_err(nl(format!("add the default route via {gw} to table {}", plan.table)))?;
    }
    match rule(&h, address.addr(), plan.table).execute().await {
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        r => r.map_err(nl(format!("add rule from {} lookup {}", address.addr(), plan.table))),
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
