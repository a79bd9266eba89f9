//! The host <-> session path over the LAN address in macvlan mode (issue 12 item 8).
//!
//! The kernel passes no frame between a macvlan and its parent, so with macvlan sessions the
//! host cannot reach a session's address and a session cannot reach the host's own address
//! on the uplink. The usual cure is a host-side macvlan "shim" on the same parent, in bridge
//! mode like the sessions' (the kernel then switches frames between it and them), with a /32
//! route to each session's address. This one is built so that the LAN never sees it:
//!
//! - **No ARP, no IPv6 on the shim** (IFF_NOARP, IPv6 address generation off) and no address:
//!   it never asks, never answers (so no second answer for the host's address, no ARP flux on
//!   the LAN's neighbour tables) and sends nothing by itself. Every frame it sends is unicast
//!   to a session's MAC, which the macvlan switches locally: its MAC never reaches the wire.
//! - **Static neighbour entries both ways**, so no ARP is needed: on the shim, each session's
//!   address -> the session's MAC; in each session, the host's uplink addresses (those in the
//!   session's subnet) -> the shim's MAC. The shim's MAC is stable per machine-id, so the
//!   entries in the sessions stay right across daemon restarts.
//! - **Host -> session:** `SESSION/32 dev sd-shim src HOST`: the host speaks from its own
//!   uplink address, which the session answers through its static entry, i.e. the shim.
//! - **Session -> host:** the session's static entry sends to the shim, the host accepts it
//!   (its address is local whatever the interface), and its reply follows the /32 route back.
//!   rp_filter, strict or loose, passes: the reverse route to the session is the shim.
//!
//! Nothing routes or forwards (no route_localnet, no ip_forward). The shim exists while at least
//! one such session runs; it is made by the first and removed after the last (and at the
//! daemon's exit), and a leftover of a crashed daemon is replaced the first time it is needed.
//! The entries inside the sessions go with their namespaces (and are left at the daemon's exit:
//! they name the shim's stable MAC, which the next daemon's shim has again).
//!
//! Served: running namespace-mode macvlan sessions whose address is in a subnet of the host's
//! uplink (not veth sessions, which reach the host through their bridge; not programs mode,
//! which has no namespace). A host without an IPv4 address on the uplink gets no shim.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{LinkKind, Mode};
pub use crate::mac::shim_mac;
use crate::manager::Manager;
use crate::netlink::{NetError, NetOps};
use crate::platform::Platform;
use crate::session::{SESSION_IF, StepError};
use crate::sid::Sid;
use crate::state::{SessionRecord, SessionState};

/// The shim's name in the host namespace ("sd" like the sessions' veth ends `sdvN`).
pub const SHIM_IF: &str = "sd-shim";

/// What the shim gives one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub netns: String,
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    /// The host's uplink addresses in the session's subnet: the first is the source of the
    /// route to the session; each gets a static entry inside the session.
    pub host: Vec<Ipv4Addr>,
}

/// The sessions the shim serves, from the session table and the addresses of the host's uplink.
pub fn served(records: &[SessionRecord], host: &[Ipv4Net]) -> BTreeMap<Sid, Served> {
    let mut out = BTreeMap::new();
    for r in records {
        if r.state != SessionState::Up || r.link != LinkKind::Macvlan || r.mode() != Mode::Namespace {
            continue;
        }
        let (Some(addr), Some(mac)) = (r.address, parse_mac(&r.mac)) else { continue };
        let mine: Vec<Ipv4Addr> = host.iter().map(|h| h.addr()).filter(|h| addr.contains(h) && *h != addr.addr()).collect();
        if mine.is_empty() {
            continue;
        }
        out.insert(r.session, Served { netns: r.netns.clone(), address: addr.addr(), mac, host: mine });
    }
    out
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn step(step: &'static str, r: Result<(), NetError>) -> Result<(), StepError> {
    r.map_err(|source| StepError { step, source })
}

/// Where the shim stands, as this daemon knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not looked at yet: a `sd-shim` there is a leftover (a crashed daemon's), replaced.
    Unchecked,
    Absent,
    Made,
}

/// The shim and what it gives, as this daemon made them.
pub struct Shim {
    uplink: String,
    mac: [u8; 6],
    state: State,
    given: BTreeMap<Sid, Served>,
}

impl Shim {
    pub fn new(uplink: &str, mac: [u8; 6]) -> Shim {
        Shim { uplink: uplink.to_string(), mac, state: State::Unchecked, given: BTreeMap::new() }
    }

    /// The sessions it serves now.
    pub fn serving(&self) -> impl Iterator<Item = (&Sid, &Served)> {
        self.given.iter()
    }

    /// Brings the shim in line with `want`: made (or replaced) when there is something to
    /// serve, each session's entries and route added, changed or withdrawn, and the shim
    /// removed once nothing is left. Keeps going past errors and returns all of them; what
    /// failed is tried again on the next call.
    pub async fn sync<P: Platform>(&mut self, p: &P, want: BTreeMap<Sid, Served>) -> Vec<StepError> {
        if want.is_empty() {
            return match self.state {
                State::Absent => Vec::new(),
                State::Unchecked | State::Made => self.remove(p, true).await,
            };
        }
        let mut errors = Vec::new();
        // The kernel deletes a macvlan with its parent (and the sessions' with theirs, their
        // entries too): then everything is given again.
        if self.state == State::Made && !matches!(p.host().link_index(SHIM_IF).await, Ok(Some(_))) {
            warn!("shim {SHIM_IF} is gone (with the uplink?): making it again");
            self.state = State::Absent;
        }
        if self.state != State::Made {
            self.given.clear();
            // A leftover (a crashed daemon's, or one on another parent) is replaced whole.
            if let Err(e) = step("delete a leftover shim", p.host().del_link(SHIM_IF).await) {
                errors.push(e);
            }
            if let Err(e) = step("create the shim", p.host().create_shim(&self.uplink, SHIM_IF, self.mac).await) {
                errors.push(e);
                return errors;
            }
            info!(uplink = %self.uplink, "shim {SHIM_IF} made: the host and its macvlan sessions reach each other at their LAN addresses");
            self.state = State::Made;
        }
        let stale: Vec<Sid> = self.given.iter().filter(|(sid, s)| want.get(sid) != Some(s)).map(|(sid, _)| *sid).collect();
        for sid in stale {
            let old = self.given.remove(&sid).expect("listed above");
            let keep_inside: &[Ipv4Addr] = want.get(&sid).map_or(&[], |w| &w.host);
            errors.extend(withdraw(p, sid, &old, keep_inside).await);
        }
        for (sid, s) in want {
            if self.given.contains_key(&sid) {
                continue;
            }
            match give(p, self.mac, sid, &s).await {
                Ok(()) => drop(self.given.insert(sid, s)),
                Err(e) => {
                    // Nothing half-given stays (tried again on the next change).
                    errors.push(e);
                    errors.extend(withdraw(p, sid, &s, &[]).await);
                }
            }
        }
        errors
    }

    /// Removes the shim (the kernel removes its routes and neighbour entries with it). With
    /// `inside`, first withdraws each session's route and entries in reverse order (in the
    /// sessions still running, too); without (the daemon's exit), the entries inside the
    /// sessions stay: they name the shim's stable MAC, which the next daemon's shim has again.
    pub async fn remove<P: Platform>(&mut self, p: &P, inside: bool) -> Vec<StepError> {
        let mut errors = Vec::new();
        let given = std::mem::take(&mut self.given);
        if inside {
            for (sid, s) in given.iter().rev() {
                errors.extend(withdraw(p, *sid, s, &[]).await);
            }
        }
        match step("delete the shim", p.host().del_link(SHIM_IF).await) {
            Ok(()) => {
                if self.state == State::Made {
                    info!("shim {SHIM_IF} removed");
                }
                self.state = State::Absent;
            }
            Err(e) => errors.push(e),
        }
        errors
    }
}

/// The session's entries and route, in this order: the host's entry for the session (so the
/// route never sends an ARP request, which the LAN would see), the route, then the session's
/// entries for the host.
async fn give<P: Platform>(p: &P, shim_mac: [u8; 6], sid: Sid, s: &Served) -> Result<(), StepError> {
    let host = p.host();
    let dest = Ipv4Net::new(s.address, 32).expect("/32");
    step("add the shim's entry for the session", host.set_static_neighbour(SHIM_IF, s.address, s.mac).await)?;
    step("add the route to the session via the shim", host.add_route_from(SHIM_IF, dest, s.host[0]).await)?;
    let inside = p.inside(&s.netns).await.map_err(|source| StepError { step: "open netlink in the session namespace", source })?;
    for h in &s.host {
        step("add the session's entry for the host", inside.set_static_neighbour(SESSION_IF, *h, shim_mac).await)?;
    }
    debug!(session = %sid, address = %s.address, "shim: serving");
    Ok(())
}

/// `give` undone in reverse, past errors: the session's entries for the host (but those in
/// `keep_inside`, and none when its namespace is gone), the route, the shim's entry.
async fn withdraw<P: Platform>(p: &P, sid: Sid, s: &Served, keep_inside: &[Ipv4Addr]) -> Vec<StepError> {
    let mut errors = Vec::new();
    let mut keep = |r: Result<(), StepError>| {
        if let Err(e) = r {
            errors.push(e)
        }
    };
    if p.netns_exists(&s.netns) && s.host.iter().any(|h| !keep_inside.contains(h)) {
        match p.inside(&s.netns).await {
            Ok(inside) => {
                for h in s.host.iter().rev().filter(|h| !keep_inside.contains(h)) {
                    keep(step("delete the session's entry for the host", inside.del_neighbour(SESSION_IF, *h).await));
                }
            }
            Err(source) => keep(Err(StepError { step: "open netlink in the session namespace", source })),
        }
    }
    let host = p.host();
    keep(step("delete the route to the session via the shim", host.del_route(SHIM_IF, Ipv4Net::new(s.address, 32).expect("/32"), None).await));
    keep(step("delete the shim's entry for the session", host.del_neighbour(SHIM_IF, s.address).await));
    debug!(session = %sid, address = %s.address, "shim: withdrawn");
    errors
}

/// The daemon's shim: a task that follows the sessions, and the shim it keeps.
pub struct ShimTask {
    task: JoinHandle<()>,
    shim: Arc<tokio::sync::Mutex<Shim>>,
}

impl ShimTask {
    /// Ends the task and removes the shim (the daemon's exit; sessions keep running).
    pub async fn stop<P: Platform>(self, p: &P) {
        self.task.abort();
        let _ = self.task.await;
        for e in self.shim.lock().await.remove(p, false).await {
            warn!("shim: {e}");
        }
    }
}

/// Starts following the sessions and the host: after every change in the session table, every
/// change of the host's IPv4 addresses (one the uplink gets after the sessions started, by
/// DHCP at boot, say) and the shim's deletion, the shim is brought in line with the running
/// sessions and the uplink's addresses (read each time: one dump of one link's addresses).
pub fn start<P: Platform + 'static>(mgr: Arc<Manager<P>>, mac: [u8; 6]) -> ShimTask {
    let uplink = mgr.settings().uplink.clone();
    let shim = Arc::new(tokio::sync::Mutex::new(Shim::new(&uplink, mac)));
    // Subscribed before the first look at the sessions: no change falls in between.
    let (_, mut changes) = mgr.events().subscribe(crate::events::Viewer::Root);
    let mut host = match host_changes() {
        Ok(h) => {
            debug!("shim: following the host's link and address changes");
            Some(h)
        }
        Err(e) => {
            warn!("shim: cannot follow the host's address changes ({e}): it follows the sessions only");
            None
        }
    };
    let task = tokio::spawn({
        let shim = shim.clone();
        async move {
            loop {
                let addrs = match mgr.platform().host().addrs(&uplink).await {
                    Ok(a) => a,
                    Err(e) => {
                        debug!("shim: the uplink's addresses: {e}");
                        Vec::new()
                    }
                };
                let want = served(&mgr.status(None).unwrap_or_default(), &addrs);
                for e in shim.lock().await.sync(mgr.platform(), want).await {
                    warn!("shim: {e}");
                }
                loop {
                    tokio::select! {
                        r = changes.recv() => match r {
                            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                        Some((m, _)) = next_change(&mut host) => if concerns_the_shim(&m.payload) { break },
                    }
                }
                // A burst of changes (a mass start) becomes one pass.
                while changes.try_recv().is_ok() {}
                if let Some(h) = &mut host {
                    while h.1.try_recv().is_ok() {}
                }
            }
        }
    });
    ShimTask { task, shim }
}

type HostChanges = (rtnetlink::Handle, futures::channel::mpsc::UnboundedReceiver<(NlMessage, netlink_sys::SocketAddr)>);
type NlMessage = rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>;

/// A netlink connection in the host namespace that receives the kernel's link and IPv4
/// address notifications (RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR). The handle keeps it open.
fn host_changes() -> std::io::Result<HostChanges> {
    use netlink_sys::AsyncSocket;
    const RTNLGRP_LINK: u32 = 1;
    const RTNLGRP_IPV4_IFADDR: u32 = 5;
    let (mut conn, handle, messages) = rtnetlink::new_connection()?;
    let sock = conn.socket_mut().socket_mut();
    // Bound first: the kernel skips, in a broadcast, the sockets whose port id is the sender's,
    // and an unbound socket's is 0, the kernel's own.
    sock.bind_auto()?;
    sock.add_membership(RTNLGRP_LINK)?;
    sock.add_membership(RTNLGRP_IPV4_IFADDR)?;
    tokio::spawn(conn);
    Ok((handle, messages))
}

async fn next_change(host: &mut Option<HostChanges>) -> Option<(NlMessage, netlink_sys::SocketAddr)> {
    use futures::StreamExt;
    match host {
        Some((_, messages)) => match messages.next().await {
            Some(m) => Some(m),
            None => {
                warn!("shim: the host's change notifications ended: it follows the sessions only");
                *host = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// An IPv4 address added or removed (on any link: cheap to check, and rare), or the shim deleted
/// (by hand, say). The uplink's own comings and goings reach the shim through the sessions'
/// faults and repairs; its other link changes (one per macvlan made on it) are left out.
fn concerns_the_shim(payload: &rtnetlink::packet_core::NetlinkPayload<rtnetlink::packet_route::RouteNetlinkMessage>) -> bool {
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::link::LinkAttribute;
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::RouteNetlinkMessage as M;
    match payload {
        NetlinkPayload::InnerMessage(M::NewAddress(a) | M::DelAddress(a)) => a.header.family == AddressFamily::Inet,
        NetlinkPayload::InnerMessage(M::DelLink(l)) => l.attributes.iter().any(|a| matches!(a, LinkAttribute::IfName(n) if n == SHIM_IF)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakePlatform;
    use crate::mac::format_mac;
    use crate::state::sample_record;

    const HOST: &str = "10.0.0.2/24";
    const MAC: [u8; 6] = [0x02, 0x5d, 0, 0, 0, 0x01];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// A running macvlan session `n` at 10.0.0.(99+n) with MAC 02:00:00:00:00:0n, as `start` makes it.
    async fn session(p: &FakePlatform, n: u64) -> SessionRecord {
        let mut r = sample_record(n);
        r.address = Some(format!("10.0.0.{}/24", 99 + n).parse().unwrap());
        r.mac = format!("02:00:00:00:00:{n:02x}");
        p.create_netns(&r.netns, &[]).await.unwrap();
        p.host().create_macvlan("br-lan", SESSION_IF, parse_mac(&r.mac).unwrap(), &r.netns).await.unwrap();
        r
    }

    fn host() -> Vec<Ipv4Net> {
        vec![HOST.parse().unwrap()]
    }

    /// What is left but the sessions' namespaces and interfaces and the host's address.
    fn leftovers(p: &FakePlatform) -> Vec<String> {
        p.objects().into_iter().filter(|o| !o.starts_with("netns:") && !o.ends_with("/eth0") && !o.starts_with("addr:host/br-lan/")).collect()
    }

    #[test]
    fn serves_running_macvlan_sessions_on_the_hosts_subnet_only() {
        let mut up = sample_record(1);
        up.mac = "02:00:00:00:00:01".into();
        let mut veth = sample_record(2);
        veth.link = LinkKind::Veth;
        let mut starting = sample_record(3);
        starting.state = SessionState::Starting;
        let mut elsewhere = sample_record(4);
        elsewhere.address = Some("192.168.1.5/24".parse().unwrap());
        let mut programs = sample_record(5);
        programs.programs = Some(sessiond_client::record::ProgramsInfo {
            cgroup: "/sys/fs/cgroup/x".into(),
            programs: vec![],
            virtualize: vec![],
            attached: vec![],
            rewritten: 0,
            cgroup_owner: Default::default(),
        });
        let mut no_address = sample_record(6);
        no_address.address = None;
        let records = [up, veth, starting, elsewhere, programs, no_address];
        let s = served(&records, &host());
        assert_eq!(s.keys().map(|k| k.get()).collect::<Vec<_>>(), vec![1]);
        let one = &s[&Sid::new(1).unwrap()];
        assert_eq!((one.address, one.mac, one.host.clone(), one.netns.as_str()), (ip("10.0.0.100"), [2, 0, 0, 0, 0, 1], vec![ip("10.0.0.2")], "sessiond-1"));
        // no IPv4 address on the uplink: nothing to serve
        assert!(served(&records, &[]).is_empty());
        // a session holding the host's own address is not routed to
        assert!(served(&records, &["10.0.0.100/24".parse().unwrap()]).is_empty());
    }

    #[test]
    fn the_shims_mac_is_stable_local_unicast_and_not_a_sessions() {
        let m = shim_mac("3d1219c7c4c5404aaa1f6d2a48adfda4");
        assert_eq!(m, shim_mac("3d1219c7c4c5404aaa1f6d2a48adfda4\n"));
        assert_ne!(m, shim_mac("00000000000000000000000000000000"));
        assert_eq!(m[0] & 0x03, 0x02);
        assert!((1..5000).all(|n| crate::mac::stable_mac("3d1219c7c4c5404aaa1f6d2a48adfda4", Sid::new(n).unwrap()) != m));
    }

    #[tokio::test]
    async fn made_with_the_first_session_given_in_order_and_removed_in_reverse_after_the_last() {
        let p = FakePlatform::new();
        p.host().add_addr("br-lan", HOST.parse().unwrap(), false, None).await.unwrap();
        let (r1, r2) = (session(&p, 1).await, session(&p, 2).await);
        let mut shim = Shim::new("br-lan", MAC);
        p.clear_log();
        let errs = shim.sync(&p, served(std::slice::from_ref(&r1), &host())).await;
        assert!(errs.is_empty(), "{errs:?}");
        let m = format_mac(&MAC);
        assert_eq!(
            p.log(),
            vec![
                "host: link del sd-shim".to_string(),
                format!("host: shim sd-shim on br-lan mac {m} noarp no-ipv6 up"),
                "host: neigh static 10.0.0.100 lladdr 02:00:00:00:00:01 dev sd-shim".into(),
                "host: route 10.0.0.100/32 dev sd-shim src 10.0.0.2".into(),
                format!("sessiond-1: neigh static 10.0.0.2 lladdr {m} dev eth0"),
            ]
        );
        // idempotent: the same table again changes nothing (one look that the shim is there)
        p.clear_log();
        assert!(shim.sync(&p, served(std::slice::from_ref(&r1), &host())).await.is_empty());
        assert!(p.log().is_empty(), "{:?}", p.log());
        // a second session: only its own entries and route
        p.clear_log();
        assert!(shim.sync(&p, served(&[r1.clone(), r2.clone()], &host())).await.is_empty());
        assert_eq!(p.log().len(), 3, "{:?}", p.log());
        // session 1 stops (its namespace goes first): its route and the shim's entry go
        p.delete_netns("sessiond-1").unwrap();
        p.clear_log();
        assert!(shim.sync(&p, served(std::slice::from_ref(&r2), &host())).await.is_empty());
        assert_eq!(p.log(), vec!["host: route del 10.0.0.100/32 dev sd-shim", "host: neigh del 10.0.0.100 dev sd-shim"]);
        // the last one stops: everything in reverse, then the shim
        p.delete_netns("sessiond-2").unwrap();
        p.clear_log();
        assert!(shim.sync(&p, BTreeMap::new()).await.is_empty());
        assert_eq!(p.log(), vec!["host: route del 10.0.0.101/32 dev sd-shim", "host: neigh del 10.0.0.101 dev sd-shim", "host: link del sd-shim"]);
        assert!(leftovers(&p).is_empty(), "{:?}", leftovers(&p));
        // and nothing more while there is nothing to serve
        p.clear_log();
        assert!(shim.sync(&p, BTreeMap::new()).await.is_empty());
        assert!(p.log().is_empty(), "{:?}", p.log());
    }

    #[tokio::test]
    async fn a_leftover_is_replaced_or_removed_at_the_first_look() {
        let p = FakePlatform::new();
        p.host().create_shim("br-lan", SHIM_IF, [2, 9, 9, 9, 9, 9]).await.unwrap();
        let mut shim = Shim::new("br-lan", MAC);
        assert!(shim.sync(&p, BTreeMap::new()).await.is_empty());
        assert!(p.objects().is_empty(), "{:?}", p.objects());
        p.host().create_shim("br-lan", SHIM_IF, [2, 9, 9, 9, 9, 9]).await.unwrap();
        p.host().add_addr("br-lan", HOST.parse().unwrap(), false, None).await.unwrap();
        let r1 = session(&p, 1).await;
        let mut shim = Shim::new("br-lan", MAC);
        p.clear_log();
        assert!(shim.sync(&p, served(&[r1], &host())).await.is_empty());
        assert_eq!(p.log()[..2], ["host: link del sd-shim".to_string(), format!("host: shim sd-shim on br-lan mac {} noarp no-ipv6 up", format_mac(&MAC))]);
    }

    #[tokio::test]
    async fn a_failed_step_leaves_nothing_half_given_and_the_others_are_served() {
        let p = FakePlatform::new();
        p.host().add_addr("br-lan", HOST.parse().unwrap(), false, None).await.unwrap();
        let (r1, r2) = (session(&p, 1).await, session(&p, 2).await);
        p.fail_on("sessiond-1: neigh static");
        let mut shim = Shim::new("br-lan", MAC);
        let errs = shim.sync(&p, served(&[r1, r2], &host())).await;
        assert_eq!(errs.iter().map(|e| e.step).collect::<Vec<_>>(), vec!["add the session's entry for the host"]);
        assert_eq!(shim.serving().map(|(s, _)| s.get()).collect::<Vec<_>>(), vec![2]);
        let o = p.objects();
        assert!(!o.iter().any(|o| o.contains("10.0.0.100")), "half-given session 1: {o:?}");
        assert!(o.contains("route:host/sd-shim/10.0.0.101/32") && o.contains("neigh:sessiond-2/eth0/10.0.0.2"), "{o:?}");
        // the daemon's exit: the shim goes (its routes and entries with it); the sessions keep theirs
        assert!(shim.remove(&p, false).await.is_empty());
        assert_eq!(leftovers(&p), vec!["neigh:sessiond-2/eth0/10.0.0.2"]);
    }

    #[tokio::test]
    async fn teardown_keeps_going_past_errors() {
        let p = FakePlatform::new();
        p.host().add_addr("br-lan", HOST.parse().unwrap(), false, None).await.unwrap();
        let r1 = session(&p, 1).await;
        let mut shim = Shim::new("br-lan", MAC);
        assert!(shim.sync(&p, served(&[r1], &host())).await.is_empty());
        p.fail_on("host: route del");
        let errs = shim.sync(&p, BTreeMap::new()).await;
        assert_eq!(errs.iter().map(|e| e.step).collect::<Vec<_>>(), vec!["delete the route to the session via the shim"]);
        // the steps after it still ran
        assert!(p.log().ends_with(&["host: neigh del 10.0.0.100 dev sd-shim".to_string(), "host: link del sd-shim".into()]), "{:?}", p.log());
        assert!(leftovers(&p).is_empty(), "{:?}", leftovers(&p));
    }

    #[tokio::test]
    async fn an_address_change_moves_the_route_and_keeps_the_sessions_entry() {
        let p = FakePlatform::new();
        p.host().add_addr("br-lan", HOST.parse().unwrap(), false, None).await.unwrap();
        let mut r1 = session(&p, 1).await;
        let mut shim = Shim::new("br-lan", MAC);
        assert!(shim.sync(&p, served(std::slice::from_ref(&r1), &host())).await.is_empty());
        r1.address = Some("10.0.0.150/24".parse().unwrap());
        p.clear_log();
        assert!(shim.sync(&p, served(std::slice::from_ref(&r1), &host())).await.is_empty());
        let log = p.log();
        assert_eq!(log[..2], ["host: route del 10.0.0.100/32 dev sd-shim".to_string(), "host: neigh del 10.0.0.100 dev sd-shim".into()]);
        assert!(!log.iter().any(|l| l.contains("sessiond-1: neigh del")), "{log:?}");
        assert!(p.objects().contains("route:host/sd-shim/10.0.0.150/32"));
    }

    #[tokio::test]
    async fn after_the_uplink_came_back_the_shim_and_every_entry_are_made_again() {
        let p = FakePlatform::new();
        p.host().add_addr("br-lan", HOST.parse().unwrap(), false, None).await.unwrap();
        let r1 = session(&p, 1).await;
        let mut shim = Shim::new("br-lan", MAC);
        assert!(shim.sync(&p, served(std::slice::from_ref(&r1), &host())).await.is_empty());
        // the kernel deletes the macvlans (the shim and the session's) with their parent
        p.remove_host_link("br-lan");
        assert!(!p.objects().iter().any(|o| o.contains("sd-shim")), "{:?}", p.objects());
        p.add_host_link("br-lan");
        p.host().create_macvlan("br-lan", SESSION_IF, [2, 0, 0, 0, 0, 1], "sessiond-1").await.unwrap(); // the repair
        assert!(shim.sync(&p, served(std::slice::from_ref(&r1), &host())).await.is_empty());
        let o = p.objects();
        assert!(o.contains("link:host/sd-shim") && o.contains("route:host/sd-shim/10.0.0.100/32") && o.contains("neigh:sessiond-1/eth0/10.0.0.2"), "{o:?}");
    }
}
