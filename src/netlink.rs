//! The narrow netlink facade the rest of sessiond calls (after netavark's): one `NetOps` per
//! namespace, each operation one netlink request. Deleting something absent and adding
//! something present are not errors, so every create and teardown step is idempotent.
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::{StreamExt, TryStreamExt};
use ipnet::{Ipv4Net, Ipv6Net};
use netlink_packet_route::address::{AddressAttribute, AddressScope, CacheInfo};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkFlags, MacVlanMode};
use netlink_packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{op}: {source}")]
    Netlink { op: String, source: rtnetlink::Error },
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
    #[error("interface {0} does not exist")]
    NoSuchLink(String),
    #[error("{0}")]
    Ns(#[from] crate::ns::NsError),
    #[error("{0}")]
    Other(String),
}

impl NetError {
    /// The errno of a netlink error reply, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Netlink { source, .. } => errno(source),
            _ => None,
        }
    }
}

/// Address lifetimes; `None` means forever (static addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub valid_secs: u32,
    pub preferred_secs: u32,
}

/// A neighbour (ARP) entry. `pinned`: marked externally learned, which the kernel's garbage
/// collector leaves alone (it still validates the entry: a stale one is re-checked by unicast
/// on use) and which does not count toward the table's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: Vec<u8>,
    /// Reachable, stale, delay or probe: the MAC is known.
    pub resolved: bool,
    pub reachable: bool,
    pub pinned: bool,
}

/// An IPv6 address of a link, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr6 {
    pub net: Ipv6Net,
    /// Made by the kernel from a router advertisement's prefix (IFA_PROTO kernel_ra).
    pub from_ra: bool,
    /// An RFC 8981 temporary address (IFA_F_TEMPORARY).
    pub temporary: bool,
    /// Duplicate address detection is running and the address is not optimistic: not usable yet.
    pub tentative: bool,
    pub dad_failed: bool,
    /// Put there by sessiond's DHCPv6 client (IFA_PROTO `DHCPV6_PROTO`).
    pub from_dhcpv6: bool,
    /// Seconds left; None: forever.
    pub valid_secs: Option<u32>,
    pub preferred_secs: Option<u32>,
}

/// The IFA_PROTO sessiond marks its DHCPv6 addresses with (RTPROT_DHCP's number): `status`
/// tells them from the kernel's SLAAC ones by it, with no other record.
pub const DHCPV6_PROTO: u8 = 16;

/// What the last router advertisement on a link said about DHCPv6 (RFC 4861 M and O flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RaFlags {
    /// M: addresses come from DHCPv6.
    pub managed: bool,
    /// O: other configuration (DNS) comes from DHCPv6.
    pub other: bool,
}

/// Link operations in one network namespace.
pub trait NetOps: Send + Sync {
    fn link_index(&self, name: &str) -> impl Future<Output = Result<Option<u32>, NetError>> + Send;
    /// `None` when the link does not exist.
    fn link_is_up(&self, name: &str) -> impl Future<Output = Result<Option<bool>, NetError>> + Send;
    /// A bridge-mode macvlan on `parent`, created directly inside netns `target_ns`.
    fn create_macvlan(&self, parent: &str, name: &str, mac: [u8; 6], target_ns: &str) -> impl Future<Output = Result<(), NetError>> + Send;
    /// A veth pair: `host` here, enslaved to `bridge` and up; `peer` created inside `target_ns`.
    fn create_veth(&self, host: &str, bridge: &str, peer: &str, peer_mac: [u8; 6], target_ns: &str) -> impl Future<Output = Result<(), NetError>> + Send;
    fn set_up(&self, name: &str) -> impl Future<Output = Result<(), NetError>> + Send;
    fn set_mtu(&self, name: &str, mtu: u32) -> impl Future<Output = Result<(), NetError>> + Send;
    /// The link's MTU; `None` when the link does not exist.
    fn link_mtu(&self, name: &str) -> impl Future<Output = Result<Option<u32>, NetError>> + Send;
    fn add_addr(&self, name: &str, addr: Ipv4Net, host_scope: bool, life: Option<Lifetimes>) -> impl Future<Output = Result<(), NetError>> + Send;
    fn del_addr(&self, name: &str, addr: Ipv4Net) -> impl Future<Output = Result<(), NetError>> + Send;
    fn addrs(&self, name: &str) -> impl Future<Output = Result<Vec<Ipv4Net>, NetError>> + Send;
    /// `name`'s IPv6 addresses (none when IPv6 is off on it).
    fn addrs6(&self, name: &str) -> impl Future<Output = Result<Vec<Addr6>, NetError>> + Send;
    /// Adds (or refreshes) `addr`/128 on `name`, marked as sessiond's DHCPv6 address.
    fn add_addr6(&self, name: &str, addr: Ipv6Addr, life: Lifetimes) -> impl Future<Output = Result<(), NetError>> + Send;
    fn del_addr6(&self, name: &str, addr: Ipv6Addr) -> impl Future<Output = Result<(), NetError>> + Send;
    /// The M and O flags of the last router advertisement `name` received; None before any.
    fn ra_flags(&self, name: &str) -> impl Future<Output = Result<Option<RaFlags>, NetError>> + Send;
    /// `gateway` None: an on-link route. Replaces an existing route to `dest`.
    fn add_route(&self, name: &str, dest: Ipv4Net, gateway: Option<Ipv4Addr>) -> impl Future<Output = Result<(), NetError>> + Send;
    fn del_route(&self, name: &str, dest: Ipv4Net, gateway: Option<Ipv4Addr>) -> impl Future<Output = Result<(), NetError>> + Send;
    fn del_link(&self, name: &str) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Enslaves `name` to `bridge` (idempotent).
    fn set_master(&self, name: &str, bridge: &str) -> impl Future<Output = Result<(), NetError>> + Send;
    /// The kernel's neighbour entry for `ip` on `name`, if it has one.
    fn neighbour(&self, name: &str, ip: Ipv4Addr) -> impl Future<Output = Result<Option<Neighbour>, NetError>> + Send;
    /// Sets the entry for `ip` on `name` to `mac`, externally learned (see `Neighbour`).
    fn pin_neighbour(&self, name: &str, ip: Ipv4Addr, mac: &[u8], reachable: bool) -> impl Future<Output = Result<(), NetError>> + Send;
    /// This namespace's id for the namespace open at `netns_fd`, assigned if it had none. An
    /// id is the kernel's weak reference to a namespace: it does not keep it alive, and it
    /// stops resolving once the namespace is dying.
    fn peer_netns_id(&self, netns_fd: std::os::fd::RawFd) -> impl Future<Output = Result<i32, NetError>> + Send;
    /// The MAC address of link `name` in the peer namespace `nsid`; `None` when that namespace
    /// is gone (or dying) or has no such link.
    fn peer_link_mac(&self, nsid: i32, name: &str) -> impl Future<Output = Result<Option<Vec<u8>>, NetError>> + Send;
    /// Deletes link `name` in the peer namespace `nsid` (absent is fine).
    fn del_peer_link(&self, nsid: i32, name: &str) -> impl Future<Output = Result<(), NetError>> + Send;
    /// The host-side shim (`shim`): a bridge-mode macvlan `name` on `parent` in this
    /// namespace, with `mac`, ARP off (IFF_NOARP) and no IPv6 address (address generation
    /// none), then up. It sends nothing by itself.
    fn create_shim(&self, parent: &str, name: &str, mac: [u8; 6]) -> impl Future<Output = Result<(), NetError>> + Send;
    /// An on-link route to `dest` via `name` whose source is `src` (replaces one to `dest`).
    fn add_route_from(&self, name: &str, dest: Ipv4Net, src: Ipv4Addr) -> impl Future<Output = Result<(), NetError>> + Send;
    /// A permanent (static, never resolved nor changed by ARP) neighbour entry `ip` -> `mac` on
    /// `name` (replaces one).
    fn set_static_neighbour(&self, name: &str, ip: Ipv4Addr, mac: [u8; 6]) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Deletes the neighbour entry for `ip` on `name` (absent, or no such link, is fine).
    fn del_neighbour(&self, name: &str, ip: Ipv4Addr) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Programs mode (a session's own link in the host namespace): `addr` on `name` with no
    /// prefix route (IFA_F_NOPREFIXROUTE), so that none of the host's own traffic moves to
    /// it; what leaves from it is routed by the session's own table (`add_table_route`).
    fn add_addr_without_prefix_route(&self, name: &str, addr: Ipv4Net, life: Option<Lifetimes>) -> impl Future<Output = Result<(), NetError>> + Send;
    /// A route in routing table `table` out of `name`, preferring source `src` (`gateway`
    /// None: on-link). Replaces one to `dest` there.
    fn add_table_route(
        &self,
        name: &str,
        table: u32,
        dest: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        src: Ipv4Addr,
    ) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Removes the route to `dest` in `table` out of `name` (absent is fine).
    fn del_table_route(&self, name: &str, table: u32, dest: Ipv4Net) -> impl Future<Output = Result<(), NetError>> + Send;
    /// The rule `from src lookup table` at `priority` (present is fine).
    fn add_source_rule(&self, src: Ipv4Addr, table: u32, priority: u32) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Removes the rules at `priority` that look up `table`: from `src` only, or (None)
    /// whatever their source (absent is fine).
    fn del_table_rules(&self, table: u32, priority: u32, src: Option<Ipv4Addr>) -> impl Future<Output = Result<(), NetError>> + Send;
}

/// The positive errno of a netlink error reply, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |source| NetError::Netlink { op, source }
}

const NETLINK_RCVBUF: usize = 8 << 20;

/// IFLA_TARGET_NETNSID: a link request about the peer namespace with this id.
fn target_netnsid(nsid: i32) -> netlink_packet_route::link::LinkAttribute {
    const IFLA_TARGET_NETNSID: u16 = 46;
    let nla = rtnetlink::packet_core::DefaultNla::new(IFLA_TARGET_NETNSID, nsid.to_ne_bytes().to_vec());
    netlink_packet_route::link::LinkAttribute::Other(nla)
}

/// Real netlink, over an rtnetlink connection opened in the namespace it serves.
#[derive(Clone)]
pub struct RtNet {
    handle: Handle,
    /// Link indexes by name, for the operations a renewal repeats (see `with_index`).
    indexes: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
}

impl RtNet {
    /// Opens a connection in the calling thread's current namespace; needs a tokio runtime
    /// (entered or current) to drive it.
    pub fn connect_here() -> Result<RtNet, NetError> {
        use netlink_sys::AsyncSocket;
        use nix::sys::socket::{setsockopt, sockopt};
        let (mut conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io { op: "open netlink socket".into(), source })?;
        // Many sessions starting at once share the host connection; with the default receive
        // buffer (~200 KiB) the replies overrun it and requests hang. Root may force more.
        let sock = conn.socket_mut().socket_mut();
        if setsockopt(&*sock, sockopt::RcvBufForce, &NETLINK_RCVBUF).is_err() {
            let _ = setsockopt(&*sock, sockopt::RcvBuf, &NETLINK_RCVBUF);
        }
        tokio::spawn(conn);
        Ok(RtNet { handle, indexes: Default::default() })
    }

    /// Opens a connection inside the named netns (the socket is made on a throwaway thread
    /// that entered it; the connection task then runs on the runtime like any other).
    pub async fn connect_in(netns: &str) -> Result<RtNet, NetError> {
        let ns = crate::ns::open_netns(netns)?;
        let rt = tokio::runtime::Handle::current();
        crate::ns::run_in_netns_async(&ns, move || {
            let _guard = rt.enter();
            RtNet::connect_here()
        })
        .await?
    }

    async fn index_or_err(&self, name: &str) -> Result<u32, NetError> {
        self.link_index(name).await?.ok_or_else(|| NetError::NoSuchLink(name.to_string()))
    }

    /// Runs `op` with `name`'s index, taken from a cache (a link lookup returns the whole
    /// link, stats and all: the biggest part of a renewal's netlink work). If the link is gone
    /// (ENODEV: it was re-created since), looks the index up again and retries once.
    async fn with_index<T, Fut>(&self, name: &str, op: impl Fn(u32) -> Fut) -> Result<T, NetError>
    where
        Fut: Future<Output = Result<T, NetError>>,
    {
        let cached = self.indexes.lock().unwrap().get(name).copied();
        if let Some(idx) = cached {
            match op(idx).await {
                Err(e) if e.errno() == Some(libc::ENODEV) => {
                    self.indexes.lock().unwrap().remove(name);
                }
                r => return r,
            }
        }
        let idx = self.index_or_err(name).await?;
        self.indexes.lock().unwrap().insert(name.to_string(), idx);
        op(idx).await
    }
}

impl RtNet {
    /// One request the rtnetlink crate has no builder for: returns the inner messages of the
    /// reply; an error reply fails it, except `tolerated` (an errno the caller expects).
    async fn exchange(&self, msg: RouteNetlinkMessage, flags: u16, op: &str, tolerated: Option<i32>) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut replies = handle.request(req).map_err(nl(op))?;
        let mut out = Vec::new();
        while let Some(m) = replies.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Error(e) if e.code.is_some() && Some(-e.raw_code()) != tolerated => {
                    return Err(nl(op)(rtnetlink::Error::NetlinkError(e)));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// RTM_GETNEIGH for one entry by key (a hash lookup), not a dump: the table is shared by
    /// every namespace, and a dump walks all of it.
    async fn neighbour_at(&self, idx: u32, name: &str, ip: Ipv4Addr) -> Result<Option<Neighbour>, NetError> {
        use netlink_packet_route::AddressFamily;
        use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState};
        use rtnetlink::packet_core::NLM_F_REQUEST;
        let mut get = NeighbourMessage::default();
        get.header.family = AddressFamily::Inet;
        get.header.ifindex = idx;
        get.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        let replies =
            self.exchange(RouteNetlinkMessage::GetNeighbour(get), NLM_F_REQUEST, &format!("look up neighbour {ip} on {name}"), Some(libc::ENOENT)).await?;
        let entry = replies.into_iter().find_map(|m| if let RouteNetlinkMessage::NewNeighbour(m) = m { Some(m) } else { None });
        Ok(entry.map(|m| Neighbour {
            mac: m.attributes.iter().find_map(|a| if let NeighbourAttribute::LinkLayerAddress(mac) = a { Some(mac.clone()) } else { None }).unwrap_or_default(),
            resolved: matches!(m.header.state, NeighbourState::Reachable | NeighbourState::Stale | NeighbourState::Delay | NeighbourState::Probe),
            reachable: m.header.state == NeighbourState::Reachable,
            pinned: m.header.flags.contains(NeighbourFlags::ExtLearned),
        }))
    }

    /// Link `name` in the peer namespace `nsid`; `None` when that namespace is gone (or dying:
    /// the id no longer resolves, EINVAL) or has no such link.
    async fn peer_link(&self, nsid: i32, name: &str) -> Result<Option<netlink_packet_route::link::LinkMessage>, NetError> {
        let mut req = self.handle.link().get().match_name(name.to_string());
        req.message_mut().attributes.push(target_netnsid(nsid));
        match req.execute().try_next().await {
            Err(e) if peer_gone(&e) => Ok(None),
            r => r.map_err(nl(format!("look up link {name} in namespace id {nsid}"))),
        }
    }
}

/// The error a request about a peer namespace's link gets once that link or namespace is gone.
fn peer_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(libc::ENODEV | libc::EINVAL | libc::ENOENT))
}

fn ns_fd(target_ns: &str) -> Result<std::fs::File, NetError> {
    Ok(crate::ns::open_netns(target_ns)?)
}

impl NetOps for RtNet {
    async fn link_index(&self, name: &str) -> Result<Option<u32>, NetError> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(format!("look up link {name}"))(e)),
        }
    }

    async fn link_is_up(&self, name: &str) -> Result<Option<bool>, NetError> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.flags.contains(LinkFlags::Up))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(format!("look up link {name}"))(e)),
        }
    }

    async fn create_macvlan(&self, parent: &str, name: &str, mac: [u8; 6], target_ns: &str) -> Result<(), NetError> {
        use std::os::fd::AsRawFd;
        let fd = ns_fd(target_ns)?;
        self.with_index(parent, |parent_idx| {
            let msg = LinkMacVlan::new(name, parent_idx, MacVlanMode::Bridge).address(mac.to_vec()).setns_by_fd(fd.as_raw_fd()).build();
            async move { self.handle.link().add(msg).execute().await.map_err(nl(format!("create macvlan {name} on {parent} in {target_ns}"))) }
        })
        .await
    }

    async fn create_veth(&self, host: &str, bridge: &str, peer: &str, peer_mac: [u8; 6], target_ns: &str) -> Result<(), NetError> {
        use std::os::fd::AsRawFd;
        let bridge_idx = self.index_or_err(bridge).await?;
        let fd = ns_fd(target_ns)?;
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string()).address(peer_mac.to_vec()).setns_by_fd(fd.as_raw_fd()).build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .controller(bridge_idx)
            .up()
            .build();
        self.handle.link().add(msg).execute().await.map_err(nl(format!("create veth {host} (peer {peer} in {target_ns}) on bridge {bridge}")))
    }

    async fn set_up(&self, name: &str) -> Result<(), NetError> {
        self.with_index(name, |idx| async move {
            let msg = LinkUnspec::new_with_index(idx).up().build();
            self.handle.link().set(msg).execute().await.map_err(nl(format!("set {name} up")))
        })
        .await
    }

    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetError> {
        self.with_index(name, |idx| async move {
            let msg = LinkUnspec::new_with_index(idx).mtu(mtu).build();
            self.handle.link().set(msg).execute().await.map_err(nl(format!("set {name} mtu {mtu}")))
        })
        .await
    }

    async fn link_mtu(&self, name: &str) -> Result<Option<u32>, NetError> {
        use netlink_packet_route::link::LinkAttribute;
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(m.attributes.into_iter().find_map(|a| if let LinkAttribute::Mtu(mtu) = a { Some(mtu) } else { None })),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(format!("look up link {name}"))(e)),
        }
    }

    async fn add_addr(&self, name: &str, addr: Ipv4Net, host_scope: bool, life: Option<Lifetimes>) -> Result<(), NetError> {
        self.with_index(name, |idx| async move {
            let mut req = self.handle.address().add(idx, IpAddr::V4(addr.addr()), addr.prefix_len()).replace();
            if host_scope {
                req.message_mut().header.scope = AddressScope::Host;
            }
            if let Some(l) = life {
                let mut ci = CacheInfo::default();
                ci.ifa_preferred = l.preferred_secs;
                ci.ifa_valid = l.valid_secs;
                req.message_mut().attributes.push(AddressAttribute::CacheInfo(ci));
            }
            req.execute().await.map_err(nl(format!("add address {addr} to {name}")))
        })
        .await
    }

    async fn del_addr(&self, name: &str, addr: Ipv4Net) -> Result<(), NetError> {
        let Some(idx) = self.link_index(name).await? else { return Ok(()) };
        let mut s = self.handle.address().get().set_link_index_filter(idx).execute();
        while let Some(m) = s.try_next().await.map_err(nl(format!("list addresses of {name}")))? {
            let matches = m.header.prefix_len == addr.prefix_len()
                && m.attributes.iter().any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(a)) if *a == addr.addr()));
            if matches {
                return match self.handle.address().del(m).execute().await {
                    Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
                    r => r.map_err(nl(format!("delete address {addr} from {name}"))),
                };
            }
        }
        Ok(())
    }

    async fn addrs(&self, name: &str) -> Result<Vec<Ipv4Net>, NetError> {
        let idx = self.index_or_err(name).await?;
        let mut out = Vec::new();
        let mut s = self.handle.address().get().set_link_index_filter(idx).execute();
        while let Some(m) = s.try_next().await.map_err(nl(format!("list addresses of {name}")))? {
            for a in &m.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = a
                    && let Ok(net) = Ipv4Net::new(*ip, m.header.prefix_len)
                {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    async fn addrs6(&self, name: &str) -> Result<Vec<Addr6>, NetError> {
        use netlink_packet_route::AddressFamily;
        use netlink_packet_route::address::{AddressFlags, AddressProtocol};
        const FOREVER: u32 = u32::MAX;
        let idx = self.index_or_err(name).await?;
        let mut out = Vec::new();
        let mut req = self.handle.address().get().set_link_index_filter(idx);
        req.message_mut().header.family = AddressFamily::Inet6;
        let mut s = req.execute();
        while let Some(m) = s.try_next().await.map_err(nl(format!("list IPv6 addresses of {name}")))? {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(ip)) | AddressAttribute::Local(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            });
            let Some(net) = ip.and_then(|ip: Ipv6Addr| Ipv6Net::new(ip, m.header.prefix_len).ok()) else { continue };
            // The 32-bit IFA_FLAGS, when present, supersedes the header's 8 bits.
            let flags = m
                .attributes
                .iter()
                .find_map(|a| if let AddressAttribute::Flags(f) = a { Some(f.bits()) } else { None })
                .unwrap_or(u32::from(m.header.flags.bits()));
            let has = |f: AddressFlags| flags & f.bits() != 0;
            let cache = m.attributes.iter().find_map(|a| if let AddressAttribute::CacheInfo(c) = a { Some(*c) } else { None });
            let life = |secs: u32| (secs != FOREVER).then_some(secs);
            out.push(Addr6 {
                net,
                from_ra: m.attributes.iter().any(|a| matches!(a, AddressAttribute::Protocol(AddressProtocol::RouterAnnouncement))),
                // IFA_F_TEMPORARY is IFA_F_SECONDARY's bit, named for IPv6.
                temporary: has(AddressFlags::Secondary),
                tentative: has(AddressFlags::Tentative) && !has(AddressFlags::Optimistic),
                dad_failed: has(AddressFlags::Dadfailed),
                from_dhcpv6: m.attributes.iter().any(|a| matches!(a, AddressAttribute::Protocol(AddressProtocol::Other(p)) if *p == DHCPV6_PROTO)),
                valid_secs: cache.and_then(|c| life(c.ifa_valid)),
                preferred_secs: cache.and_then(|c| life(c.ifa_preferred)),
            });
        }
        Ok(out)
    }

    async fn add_addr6(&self, name: &str, addr: Ipv6Addr, life: Lifetimes) -> Result<(), NetError> {
        use netlink_packet_route::address::AddressProtocol;
        // (a refresh with the same flags keeps the address as it is)
        self.with_index(name, |idx| async move {
            let mut req = self.handle.address().add(idx, IpAddr::V6(addr), 128).replace();
            let mut ci = CacheInfo::default();
            ci.ifa_preferred = life.preferred_secs;
            ci.ifa_valid = life.valid_secs;
            req.message_mut().attributes.push(AddressAttribute::CacheInfo(ci));
            req.message_mut().attributes.push(AddressAttribute::Protocol(AddressProtocol::Other(DHCPV6_PROTO)));
            // Usable during its DAD (RFC 4429) where the namespace has optimistic DAD on.
            req.message_mut().attributes.push(AddressAttribute::Flags(netlink_packet_route::address::AddressFlags::Optimistic));
            req.execute().await.map_err(nl(format!("add address {addr}/128 to {name}")))
        })
        .await
    }

    async fn del_addr6(&self, name: &str, addr: Ipv6Addr) -> Result<(), NetError> {
        use netlink_packet_route::AddressFamily;
        let Some(idx) = self.link_index(name).await? else { return Ok(()) };
        let mut req = self.handle.address().get().set_link_index_filter(idx);
        req.message_mut().header.family = AddressFamily::Inet6;
        let mut s = req.execute();
        while let Some(m) = s.try_next().await.map_err(nl(format!("list IPv6 addresses of {name}")))? {
            if m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V6(a)) if *a == addr)) {
                return match self.handle.address().del(m).execute().await {
                    Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENODEV)) => Ok(()),
                    r => r.map_err(nl(format!("delete address {addr} from {name}"))),
                };
            }
        }
        Ok(())
    }

    async fn ra_flags(&self, name: &str) -> Result<Option<RaFlags>, NetError> {
        use netlink_packet_route::link::{AfSpecInet6, AfSpecUnspec, Inet6IfaceFlags, LinkAttribute};
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        let link = match s.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(NetError::NoSuchLink(name.to_string())),
            Err(e) if errno(&e) == Some(libc::ENODEV) => return Err(NetError::NoSuchLink(name.to_string())),
            Err(e) => return Err(nl(format!("look up link {name}"))(e)),
        };
        let flags = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::AfSpecUnspec(specs) => specs.iter().find_map(|s| match s {
                AfSpecUnspec::Inet6(v) => v.iter().find_map(|i| if let AfSpecInet6::Flags(f) = i { Some(*f) } else { None }),
                _ => None,
            }),
            _ => None,
        });
        Ok(flags
            .filter(|f| f.contains(Inet6IfaceFlags::RaRcvd))
            .map(|f| RaFlags { managed: f.contains(Inet6IfaceFlags::RaManaged), other: f.contains(Inet6IfaceFlags::Otherconf) }))
    }

    async fn add_route(&self, name: &str, dest: Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<(), NetError> {
        self.with_index(name, |idx| async move {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dest.network(), dest.prefix_len())
                .output_interface(idx)
                .protocol(RouteProtocol::Static);
            b = match gateway {
                Some(gw) => b.gateway(gw),
                None => b.scope(RouteScope::Link),
            };
            let via = gateway.map_or_else(|| "on-link".to_string(), |g| format!("via {g}"));
            self.handle.route().add(b.build()).replace().execute().await.map_err(nl(format!("add route {dest} {via} dev {name}")))
        })
        .await
    }

    async fn del_route(&self, name: &str, dest: Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<(), NetError> {
        let Some(idx) = self.link_index(name).await? else { return Ok(()) };
        // Scope "nowhere" matches a route of any scope: the builder's default (universe) would
        // miss an on-link route (scope link), and the kernel answers ESRCH, taken for "absent".
        let mut b =
            RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dest.network(), dest.prefix_len()).output_interface(idx).scope(RouteScope::NoWhere);
        if let Some(gw) = gateway {
            b = b.gateway(gw);
        }
        match self.handle.route().del(b.build()).execute().await {
            Err(e) if errno(&e) == Some(libc::ESRCH) || errno(&e) == Some(libc::ENODEV) => Ok(()),
            r => r.map_err(nl(format!("delete route {dest} dev {name}"))),
        }
    }

    async fn set_master(&self, name: &str, bridge: &str) -> Result<(), NetError> {
        let idx = self.index_or_err(name).await?;
        let br = self.index_or_err(bridge).await?;
        let msg = LinkUnspec::new_with_index(idx).controller(br).build();
        self.handle.link().set(msg).execute().await.map_err(nl(format!("enslave {name} to {bridge}")))
    }

    async fn neighbour(&self, name: &str, ip: Ipv4Addr) -> Result<Option<Neighbour>, NetError> {
        match self.with_index(name, |idx| self.neighbour_at(idx, name, ip)).await {
            Err(NetError::NoSuchLink(_)) => Ok(None),
            r => r,
        }
    }

    async fn pin_neighbour(&self, name: &str, ip: Ipv4Addr, mac: &[u8], reachable: bool) -> Result<(), NetError> {
        use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
        let state = if reachable { NeighbourState::Reachable } else { NeighbourState::Stale };
        self.with_index(name, |idx| async move {
            let req = self.handle.neighbours().add(idx, IpAddr::V4(ip)).link_layer_address(mac).state(state).flags(NeighbourFlags::ExtLearned).replace();
            req.execute().await.map_err(nl(format!("pin neighbour {ip} on {name}")))
        })
        .await
    }

    async fn peer_netns_id(&self, netns_fd: std::os::fd::RawFd) -> Result<i32, NetError> {
        use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
        use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST};
        let fd = u32::try_from(netns_fd).map_err(|_| NetError::Other(format!("bad namespace fd {netns_fd}")))?;
        // Assign an id (EEXIST: it has one already), then read it.
        let mut new = NsidMessage::default();
        new.attributes = vec![NsidAttribute::Fd(fd), NsidAttribute::Id(-1)];
        self.exchange(RouteNetlinkMessage::NewNsId(new), NLM_F_REQUEST | NLM_F_ACK, "assign a namespace id", Some(libc::EEXIST)).await?;
        let mut get = NsidMessage::default();
        get.attributes = vec![NsidAttribute::Fd(fd)];
        let replies = self.exchange(RouteNetlinkMessage::GetNsId(get), NLM_F_REQUEST, "read a namespace id", None).await?;
        replies
            .into_iter()
            .filter_map(|m| if let RouteNetlinkMessage::NewNsId(m) = m { Some(m) } else { None })
            .flat_map(|m| m.attributes)
            .find_map(|a| if let NsidAttribute::Id(id) = a { Some(id) } else { None })
            .filter(|id| *id >= 0)
            .ok_or_else(|| NetError::Other("the kernel assigned no namespace id".into()))
    }

    async fn peer_link_mac(&self, nsid: i32, name: &str) -> Result<Option<Vec<u8>>, NetError> {
        use netlink_packet_route::link::LinkAttribute;
        let link = self.peer_link(nsid, name).await?;
        Ok(link.and_then(|m| m.attributes.into_iter().find_map(|a| if let LinkAttribute::Address(mac) = a { Some(mac) } else { None })))
    }

    async fn del_peer_link(&self, nsid: i32, name: &str) -> Result<(), NetError> {
        let Some(link) = self.peer_link(nsid, name).await? else { return Ok(()) };
        let mut del = self.handle.link().del(link.header.index);
        del.message_mut().attributes.push(target_netnsid(nsid));
        match del.execute().await {
            Err(e) if peer_gone(&e) => Ok(()),
            r => r.map_err(nl(format!("delete link {name} in namespace id {nsid}"))),
        }
    }

    async fn del_link(&self, name: &str) -> Result<(), NetError> {
        let Some(idx) = self.link_index(name).await? else { return Ok(()) };
        match self.handle.link().del(idx).execute().await {
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            r => r.map_err(nl(format!("delete link {name}"))),
        }
    }

    async fn create_shim(&self, parent: &str, name: &str, mac: [u8; 6]) -> Result<(), NetError> {
        use netlink_packet_route::link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute};
        let parent_idx = self.index_or_err(parent).await?;
        let msg = LinkMacVlan::new(name, parent_idx, MacVlanMode::Bridge).address(mac.to_vec()).arp(false).build();
        self.handle.link().add(msg).execute().await.map_err(nl(format!("create macvlan {name} on {parent}")))?;
        // Before it is up: an IPv6 link-local address would send DAD, router solicitations and
        // MLD reports to the LAN from the shim's MAC.
        let idx = self.index_or_err(name).await?;
        let no_ipv6 = LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)])]);
        let msg = LinkUnspec::new_with_index(idx).append_extra_attribute(no_ipv6).build();
        self.handle.link().set(msg).execute().await.map_err(nl(format!("turn IPv6 address generation off on {name}")))?;
        let msg = LinkUnspec::new_with_index(idx).up().build();
        self.handle.link().set(msg).execute().await.map_err(nl(format!("set {name} up")))
    }

    async fn add_route_from(&self, name: &str, dest: Ipv4Net, src: Ipv4Addr) -> Result<(), NetError> {
        self.with_index(name, |idx| async move {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dest.network(), dest.prefix_len())
                .output_interface(idx)
                .pref_source(src)
                .scope(RouteScope::Link)
                .protocol(RouteProtocol::Static)
                .build();
            self.handle.route().add(msg).replace().execute().await.map_err(nl(format!("add route {dest} dev {name} src {src}")))
        })
        .await
    }

    async fn add_addr_without_prefix_route(&self, name: &str, addr: Ipv4Net, life: Option<Lifetimes>) -> Result<(), NetError> {
        use netlink_packet_route::address::AddressFlags;
        self.with_index(name, |idx| async move {
            let mut req = self.handle.address().add(idx, IpAddr::V4(addr.addr()), addr.prefix_len()).replace();
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
            if let Some(l) = life {
                let mut ci = CacheInfo::default();
                ci.ifa_preferred = l.preferred_secs;
                ci.ifa_valid = l.valid_secs;
                req.message_mut().attributes.push(AddressAttribute::CacheInfo(ci));
            }
            req.execute().await.map_err(nl(format!("add address {addr} (no prefix route) to {name}")))
        })
        .await
    }

    async fn add_table_route(&self, name: &str, table: u32, dest: Ipv4Net, gateway: Option<Ipv4Addr>, src: Ipv4Addr) -> Result<(), NetError> {
        self.with_index(name, |idx| async move {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dest.network(), dest.prefix_len())
                .output_interface(idx)
                .pref_source(src)
                .protocol(RouteProtocol::Static)
                .table_id(table);
            b = match gateway {
                Some(gw) => b.gateway(gw),
                None => b.scope(RouteScope::Link),
            };
            let via = gateway.map_or_else(|| "on-link".to_string(), |g| format!("via {g}"));
            self.handle.route().add(b.build()).replace().execute().await.map_err(nl(format!("add route {dest} {via} dev {name} to table {table}")))
        })
        .await
    }

    async fn set_static_neighbour(&self, name: &str, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetError> {
        use netlink_packet_route::neighbour::NeighbourState;
        self.with_index(name, |idx| async move {
            let req = self.handle.neighbours().add(idx, IpAddr::V4(ip)).link_layer_address(&mac).state(NeighbourState::Permanent).replace();
            req.execute().await.map_err(nl(format!("add neighbour {ip} lladdr {} dev {name}", crate::mac::format_mac(&mac))))
        })
        .await
    }

    async fn del_neighbour(&self, name: &str, ip: Ipv4Addr) -> Result<(), NetError> {
        use netlink_packet_route::AddressFamily;
        use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
        use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST};
        let Some(idx) = self.link_index(name).await? else { return Ok(()) };
        let mut del = NeighbourMessage::default();
        del.header.family = AddressFamily::Inet;
        del.header.ifindex = idx;
        del.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        let op = format!("delete neighbour {ip} dev {name}");
        match self.exchange(RouteNetlinkMessage::DelNeighbour(del), NLM_F_REQUEST | NLM_F_ACK, &op, Some(libc::ENOENT)).await {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            r => r.map(|_| ()),
        }
    }
    async fn del_table_route(&self, name: &str, table: u32, dest: Ipv4Net) -> Result<(), NetError> {
        let Some(idx) = self.link_index(name).await? else { return Ok(()) };
        let b = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dest.network(), dest.prefix_len()).output_interface(idx).table_id(table);
        match self.handle.route().del(b.build()).execute().await {
            Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENODEV)) => Ok(()),
            r => r.map_err(nl(format!("delete route {dest} dev {name} from table {table}"))),
        }
    }

    async fn add_source_rule(&self, src: Ipv4Addr, table: u32, priority: u32) -> Result<(), NetError> {
        use netlink_packet_route::rule::RuleAction;
        // The action must be said: a rule without one (FR_ACT_UNSPEC) fails every lookup (EINVAL).
        let req = self.handle.rule().add().v4().source_prefix(src, 32).table_id(table).action(RuleAction::ToTable).priority(priority);
        match req.execute().await {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            r => r.map_err(nl(format!("add rule from {src} lookup {table}"))),
        }
    }

    async fn del_table_rules(&self, table: u32, priority: u32, src: Option<Ipv4Addr>) -> Result<(), NetError> {
        use netlink_packet_route::rule::RuleAction;
        // One rule per request; a session has one (two for a moment while its address
        // changes): bounded.
        for _ in 0..8 {
            let mut req = self.handle.rule().add().v4().table_id(table).action(RuleAction::ToTable).priority(priority);
            if let Some(a) = src {
                req = req.source_prefix(a, 32);
            }
            let msg = req.message_mut().clone();
            match self.handle.rule().del(msg).execute().await {
                Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::ESRCH)) => return Ok(()),
                Err(e) => return Err(nl(format!("delete the rules to table {table}"))(e)),
                Ok(()) => {}
            }
        }
        Ok(())
    }
}
