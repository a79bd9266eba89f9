//! The async driver of one session's address conflict detection: the sans-IO `acd` machine on
//! the session's ARP socket. It decides nothing: it sends what the machine says, arms its
//! timer, feeds it the frames the socket lets through, and hands the outcome (the address is
//! free, or taken) to its owner: the DHCP task (`lease_driver`) or the manager (static).
//!
//! A new macvlan session's link also holds an ARP socket on the uplink, in the host's
//! namespace, until its first address is found free: the machine probes from there too, which
//! is what catches a clone of this machine on a macvlan LAN (see `acd`; on a veth/bridge
//! uplink the session's own probe already hears the clone, and a probe from the bridge would
//! reach this host's own sessions).
use std::net::Ipv4Addr;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::acd::{Acd, Action, ArpPacket, Conflict};
use crate::config::LinkKind;
use crate::dhcp::Millis;
use crate::identity::Identity;
use crate::lease_driver::now_ms;
use crate::mac::format_mac;
use crate::netlink::NetError;
use crate::platform::{ArpIo, Platform};

/// The ACD link of a session being started: its own ARP socket and, on a macvlan uplink, the
/// uplink's (see the module doc).
pub async fn new_session_link<P: Platform>(p: &P, id: &Identity, probe_ms: Millis, link: LinkKind, uplink: &str) -> Result<AcdLink<P::Arp>, NetError> {
    let session = AcdLink::new(p.arp_socket(&id.netns).await?, id.mac, probe_ms);
    Ok(match link {
        LinkKind::Macvlan => {
            let (arp, mac) = p.uplink_arp_socket(uplink).await?;
            session.with_uplink(arp, mac)
        }
        LinkKind::Veth => session,
    })
}

/// What the machine concluded about its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The probe found no other user: the address may be configured.
    Free(Ipv4Addr),
    /// The address is not (or no longer) ours.
    Conflict(Ipv4Addr, Conflict),
}

/// What woke the link up (see `AcdLink::wait`).
pub enum Input {
    Frame(Vec<u8>),
    /// A frame on the uplink's socket.
    UplinkFrame(Vec<u8>),
    Timer,
    Failed(std::io::Error),
}

/// One session's ARP socket and the machine watching its address (if any).
pub struct AcdLink<A: ArpIo> {
    arp: A,
    mac: [u8; 6],
    probe_ms: Millis,
    machine: Option<Acd>,
    deadline: Option<Millis>,
    /// The uplink's ARP socket and MAC, until a first address is found free (see the module doc).
    uplink: Option<(A, [u8; 6])>,
}

impl<A: ArpIo> AcdLink<A> {
    /// `probe_ms`: the probe's length (> 0; see `acd`).
    pub fn new(arp: A, mac: [u8; 6], probe_ms: Millis) -> AcdLink<A> {
        AcdLink { arp, mac, probe_ms, machine: None, deadline: None, uplink: None }
    }

    /// Also probes from the uplink (`arp`, a socket on it in the host's namespace; `mac`, its
    /// MAC) until an address is found free: a macvlan session's clone check.
    pub fn with_uplink(mut self, arp: A, mac: [u8; 6]) -> AcdLink<A> {
        self.uplink = Some((arp, mac));
        self
    }

    /// The address being probed or defended.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.machine.as_ref().map(Acd::address)
    }

    /// Starts probing `address` (replacing whatever was watched).
    pub async fn probe(&mut self, address: Ipv4Addr) {
        self.watch(Some(address));
        let seed = crate::lease_driver::seed();
        let (acd, actions) = match &self.uplink {
            Some((arp, uplink_mac)) => {
                if let Err(e) = arp.watch(Some(address)) {
                    warn!("ARP socket on the uplink: {e}");
                }
                Acd::probe_from_both(self.mac, *uplink_mac, address, self.probe_ms, seed, now_ms())
            }
            None => Acd::probe(self.mac, address, self.probe_ms, seed, now_ms()),
        };
        self.machine = Some(acd);
        self.deadline = None;
        debug!(%address, probe_ms = self.probe_ms, from_uplink = self.uplink.is_some(), "probing the address (RFC 5227)");
        self.execute(actions).await;
    }

    /// Defends `address` from now on; nothing changes if it is already probed or defended.
    pub fn defend(&mut self, address: Ipv4Addr) {
        if self.address() == Some(address) {
            return;
        }
        self.watch(Some(address));
        self.machine = Some(Acd::defend(self.mac, address, crate::lease_driver::seed()));
        self.deadline = None;
    }

    /// Stops watching (`address`: only if it is that one).
    pub fn stop(&mut self, address: Option<Ipv4Addr>) {
        if address.is_none() || address == self.address() {
            self.watch(None);
            if let Some((arp, _)) = &self.uplink
                && let Err(e) = arp.watch(None)
            {
                warn!("ARP socket on the uplink: {e}");
            }
            self.machine = None;
            self.deadline = None;
        }
    }

    fn watch(&self, address: Option<Ipv4Addr>) {
        if let Err(e) = self.arp.watch(address) {
            warn!("ARP socket: {e}");
        }
    }

    /// Waits for a frame or the machine's timer; pending for ever when nothing is watched.
    /// Cancel-safe (nothing is lost if another branch of a `select!` wins).
    pub async fn wait(&self, buf: &mut [u8]) -> Input {
        if self.machine.is_none() {
            return std::future::pending().await;
        }
        let sleep = async {
            match self.deadline {
                Some(t) => tokio::time::sleep(Duration::from_millis(t.saturating_sub(now_ms()))).await,
                None => std::future::pending().await,
            }
        };
        let mut uplink_buf = [0u8; 128]; // an ARP frame is 60 bytes; more is not ARP
        let uplink = async {
            match &self.uplink {
                Some((arp, _)) => arp.recv(&mut uplink_buf).await.map(|n| uplink_buf[..n].to_vec()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = self.arp.recv(buf) => match r {
                Ok(n) => Input::Frame(buf[..n].to_vec()),
                Err(e) => Input::Failed(e),
            },
            r = uplink => match r {
                Ok(f) => Input::UplinkFrame(f),
                Err(e) => Input::Failed(e),
            },
            _ = sleep => Input::Timer,
        }
    }

    /// Runs the machine until it concludes (after `probe`, or while defending).
    pub async fn outcome(&mut self) -> Outcome {
        let mut buf = vec![0u8; 1536];
        loop {
            let input = self.wait(&mut buf).await;
            if let Some(o) = self.handle(input).await {
                return o;
            }
        }
    }

    /// Feeds what `wait` returned to the machine and does what it says.
    pub async fn handle(&mut self, input: Input) -> Option<Outcome> {
        let now = now_ms();
        let m = self.machine.as_mut()?;
        let actions = match input {
            Input::Frame(f) => match ArpPacket::parse_frame(&f) {
                Some(p) => m.on_packet(&p, now),
                None => return None,
            },
            Input::UplinkFrame(f) => match ArpPacket::parse_frame(&f) {
                Some(p) => m.on_uplink_packet(&p),
                None => return None,
            },
            Input::Timer => {
                self.deadline = None;
                m.on_timer(now)
            }
            Input::Failed(e) => {
                warn!("ARP socket: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return None;
            }
        };
        self.execute(actions).await
    }

    async fn execute(&mut self, actions: Vec<Action>) -> Option<Outcome> {
        let address = self.address()?;
        let mut outcome = None;
        for a in actions {
            match a {
                Action::Send(p) => {
                    if let Err(e) = self.arp.send(&p.frame()).await {
                        warn!(%address, "sending ARP: {e}");
                    }
                }
                Action::SendFromUplink(p) => {
                    if let Some((arp, _)) = &self.uplink
                        && let Err(e) = arp.send(&p.frame()).await
                    {
                        warn!(%address, "sending ARP on the uplink: {e}");
                    }
                }
                Action::SetTimer(t) => self.deadline = Some(t),
                Action::Ready => {
                    // Found free: the clone check is done; the uplink's socket is not kept
                    // for the session's life (one per session on the uplink would cost every
                    // ARP frame there a filter run per session).
                    self.uplink = None;
                    outcome = Some(Outcome::Free(address));
                }
                Action::Defended { by } => {
                    info!(%address, by = %format_mac(&by), "defended the address against another host claiming it (RFC 5227 §2.4)")
                }
                Action::Conflict(c) => {
                    self.stop(None);
                    if matches!(c, Conflict::SameMac { .. }) {
                        self.uplink = None; // the end of this session's start
                    }
                    outcome = Some(Outcome::Conflict(address, c));
                }
            }
        }
        outcome
    }
}
