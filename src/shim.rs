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
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{LinkKind, Mode};
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

/// The shim's MAC: stable per machine (the sessions' static entries name it), locally
/// administered, unicast, and never a session's (another hash label than `mac::stable_mac`).
pub fn shim_mac(machine_id: &str) -> [u8; 6] {
    let mut h = Sha256::new();
    h.update(b"sessiond-shim\0");
    h.update(machine_id.trim().as_bytes());
    let d = h.finalize();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&d[..6]);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
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
                Err(e) => errors.push(e),
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

/// Starts following the sessions: after every change in the session table, the shim is brought
/// in line with the running sessions and the uplink's addresses (read each time: cheap, one
/// netlink dump of one link's addresses).
pub fn start<P: Platform + 'static>(mgr: Arc<Manager<P>>, mac: [u8; 6]) -> ShimTask {
    let shim = Arc::new(tokio::sync::Mutex::new(Shim::new(&mgr.settings().uplink, mac)));
    // Subscribed before the first look at the sessions: no change falls in between.
    let (_, mut changes) = mgr.events().subscribe(crate::events::Viewer::Root);
    let task = tokio::spawn({
        let shim = shim.clone();
        async move {
            loop {
                let host = match mgr.platform().host().addrs(&mgr.settings().uplink).await {
                    Ok(a) => a,
                    Err(e) => {
                        debug!("shim: the uplink's addresses: {e}");
                        Vec::new()
                    }
                };
                let want = served(&mgr.status(None).unwrap_or_default(), &host);
                for e in shim.lock().await.sync(mgr.platform(), want).await {
                    warn!("shim: {e}");
                }
                match changes.recv().await {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                // A burst of changes (a mass start) becomes one pass.
                while changes.try_recv().is_ok() {}
            }
        }
    });
    ShimTask { task, shim }
}
