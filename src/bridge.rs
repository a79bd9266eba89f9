//! The host -> session loopback bridge (issue 12 item 1): from the host namespace,
//! 127.0.0.(sid+1):P reaches whatever session sid listens on at TCP or UDP port P, as loopback
//! virtualization does on a Windows terminal server.
//!
//! Each session's TCP listeners and bound UDP sockets are read with sock_diag (a socket opened
//! once inside its namespace) every `POLL`; for each port one socket is bound on the host at
//! the session's loopback (127/8 is local on the host's lo, so no address is added). Each TCP
//! connection is joined to one made from a socket created inside the namespace; each UDP peer
//! gets a socket of its own inside (a flow, ended after `UDP_IDLE` without traffic). Nothing listens on a non-loopback address, and no routing
//! (route_localnet, forwarding) changes. Who may connect: `LoopbackReach`, the peer's uid
//! read with sock_diag from its socket on the host.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::Socket;
use rtnetlink::packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use sessiond_client::loopback::loopback_for;
use sessiond_client::ports::{Place, Proto, SockState};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::LoopbackReach;
use crate::manager::Manager;
use crate::platform::Platform;
use crate::ports::DiagSocket;
use crate::sid::Sid;

/// How often each session's listeners are read: a new one is reachable within this (plus a
/// bind), a closed one is let go within this.
pub const POLL: Duration = Duration::from_millis(500);
/// A UDP flow (one host peer's socket inside the session) ends after this long without a
/// datagram either way.
pub const UDP_IDLE: Duration = Duration::from_secs(60);

/// Where, inside session `sid`, traffic to the host's 127.0.0.(sid+1):P goes, for each TCP
/// port P the session listens on, and each UDP port it binds unconnected, at an address a
/// loopback peer reaches: 127.0.0.1, the session loopback, 0.0.0.0, or [::] (and not tied to
/// another interface, as the DHCP client's socket is). A port bound several ways goes to the
/// first of those that exists, in that order.
pub fn forwards(sid: Sid, listeners: &[DiagSocket]) -> BTreeMap<(Proto, u16), SocketAddr> {
    let own = loopback_for(sid);
    let rank = |ip: IpAddr| -> Option<(u8, IpAddr)> {
        match ip {
            IpAddr::V4(v4) if v4 == Ipv4Addr::LOCALHOST || v4.is_unspecified() => Some((0, Ipv4Addr::LOCALHOST.into())),
            IpAddr::V4(v4) if v4 == own => Some((1, own.into())),
            // Dual-stack unless IPV6_V6ONLY: reached at 127.0.0.1 (`join` falls back to ::1).
            IpAddr::V6(v6) if v6.is_unspecified() => Some((2, Ipv4Addr::LOCALHOST.into())),
            _ => None,
        }
    };
    const LO_IFINDEX: u32 = 1; // lo is interface 1 in every namespace
    let waiting = |l: &&DiagSocket| match l.proto {
        Proto::Tcp => l.state == SockState::Listen,
        Proto::Udp => l.state == SockState::Unconnected && l.local.port() != 0,
    };
    let mut best: BTreeMap<(Proto, u16), (u8, IpAddr)> = BTreeMap::new();
    for l in listeners.iter().filter(waiting).filter(|l| l.interface.is_none_or(|i| i == LO_IFINDEX)) {
        if let Some(r) = rank(l.local.ip()) {
            let key = (l.proto, l.local.port());
            if best.get(&key).is_none_or(|b| r.0 < b.0) {
                best.insert(key, r);
            }
        }
    }
    best.into_iter().map(|((proto, port), (_, ip))| ((proto, port), SocketAddr::new(ip, port))).collect()
}

/// May a peer whose socket belongs to `peer_uid` connect to a session owned by `owner`?
pub fn allowed(reach: LoopbackReach, owner: Option<u32>, peer_uid: Option<u32>) -> bool {
    match reach {
        LoopbackReach::All => true,
        LoopbackReach::None => false,
        LoopbackReach::Owner => peer_uid.is_some_and(|u| u == 0 || Some(u) == owner),
    }
}

/// One session's bridge: its namespace, the sock_diag socket made in it, and a task per
/// forwarded port (aborting it closes the host listener).
struct SessionBridge {
    ns: Arc<File>,
    diag: Arc<Socket>,
    ports: HashMap<(Proto, u16), (SocketAddr, JoinHandle<()>)>,
}

impl Drop for SessionBridge {
    fn drop(&mut self) {
        for (_, task) in self.ports.values() {
            task.abort();
        }
    }
}

/// Runs the bridge for every session that is up, until the daemon ends. `reach` None: the
/// daemon does not call this.
pub async fn run<P: Platform + 'static>(mgr: Arc<Manager<P>>, reach: LoopbackReach) {
    let mut bridges: HashMap<Sid, SessionBridge> = HashMap::new();
    let refused = Arc::new(std::sync::Mutex::new(HashSet::new()));
    loop {
        let sessions: HashMap<Sid, (String, Option<u32>)> =
            mgr.status(None).unwrap_or_default().into_iter().map(|r| (r.session, (r.netns, r.owner_uid))).collect();
        bridges.retain(|sid, _| sessions.contains_key(sid));
        for (&sid, (netns, _)) in &sessions {
            if bridges.contains_key(&sid) {
                continue;
            }
            let Ok(ns) = crate::ns::open_netns(netns) else { continue };
            let Ok(ns_for_diag) = ns.try_clone() else { continue };
            match tokio::task::spawn_blocking(move || crate::ports::open_in(&ns_for_diag, Place::Session(sid))).await {
                Ok(Ok(diag)) => {
                    bridges.insert(sid, SessionBridge { ns: Arc::new(ns), diag: Arc::new(diag), ports: HashMap::new() });
                }
                Ok(Err(e)) => warn!(session = %sid, "loopback bridge: {e}"),
                Err(_) => {}
            }
        }
        // Every session's listeners, read on one blocking thread (a few netlink dumps each).
        let diags: Vec<(Sid, Arc<Socket>)> = bridges.iter().map(|(sid, b)| (*sid, b.diag.clone())).collect();
        let read = tokio::task::spawn_blocking(move || {
            diags
                .into_iter()
                .map(|(sid, diag)| (sid, crate::ports::dump(&diag, Place::Session(sid), &[Proto::Tcp, Proto::Udp], StateFlags::LISTEN | StateFlags::CLOSE)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (sid, listeners) in read {
            let (Some(b), Some((_, owner))) = (bridges.get_mut(&sid), sessions.get(&sid)) else { continue };
            let owner = *owner;
            let want = match listeners {
                Ok(l) => forwards(sid, &l),
                Err(e) => {
                    debug!(session = %sid, "loopback bridge: {e}");
                    continue;
                }
            };
            b.ports.retain(|port, (target, task)| {
                let keep = want.get(port) == Some(target) && !task.is_finished();
                if !keep {
                    task.abort();
                }
                keep
            });
            for (key, target) in want {
                if b.ports.contains_key(&key) {
                    continue;
                }
                let (proto, port) = key;
                let host = SocketAddr::new(loopback_for(sid).into(), port);
                let gate = Gate { sid, owner, reach, port, refused: refused.clone() };
                let task = match proto {
                    Proto::Tcp => TcpListener::bind(host).await.map(|l| tokio::spawn(serve(l, gate, target, b.ns.clone()))),
                    Proto::Udp => UdpSocket::bind(host).await.map(|s| tokio::spawn(serve_udp(Arc::new(s), gate, target, b.ns.clone()))),
                };
                match task {
                    Ok(task) => {
                        info!(session = %sid, %proto, %host, %target, "loopback bridge: forwarding");
                        b.ports.insert(key, (target, task));
                    }
                    // Taken on the host (a host service on 0.0.0.0:P, say): tried again next poll.
                    Err(e) => debug!(session = %sid, %proto, %host, "loopback bridge: cannot bind: {e}"),
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Who may come in through one forwarded port, and the log of who was refused.
#[derive(Clone)]
struct Gate {
    sid: Sid,
    owner: Option<u32>,
    reach: LoopbackReach,
    port: u16,
    refused: Arc<std::sync::Mutex<HashSet<(Sid, u32, u16)>>>,
}

impl Gate {
    /// Whether the host socket at `peer` (talking to our `local`) may come in; a refusal is
    /// logged once per session, uid and port.
    async fn admits(&self, proto: Proto, peer: SocketAddr, local: SocketAddr) -> bool {
        if self.reach == LoopbackReach::All {
            return true;
        }
        let uid = tokio::task::spawn_blocking(move || peer_uid(proto, peer, local)).await.ok().flatten();
        if allowed(self.reach, self.owner, uid) {
            return true;
        }
        if self.refused.lock().unwrap().insert((self.sid, uid.unwrap_or(u32::MAX), self.port)) {
            warn!(session = %self.sid, %proto, port = self.port, uid = ?uid, "loopback bridge: refused a connection (loopback_reach = {}; only root and the owner may connect)", self.reach);
        }
        false
    }
}

async fn serve(listener: TcpListener, gate: Gate, target: SocketAddr, ns: Arc<File>) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: wait instead of spinning.
                debug!(session = %gate.sid, "loopback bridge: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(local) = conn.local_addr() else { continue };
        let (ns, gate) = (ns.clone(), gate.clone());
        tokio::spawn(async move {
            if !gate.admits(Proto::Tcp, peer, local).await {
                return;
            }
            if let Err(e) = join(conn, target, &ns).await {
                debug!(session = %gate.sid, %target, "loopback bridge: {e}");
            }
        });
    }
}

type Flows = Arc<std::sync::Mutex<HashMap<SocketAddr, Option<Arc<UdpSocket>>>>>;

/// One UDP port: each host peer gets a socket of its own inside the session (so replies find
/// their way back), made on its first datagram once the peer is admitted; a refused peer's
/// datagrams are dropped until it has been quiet for `UDP_IDLE`. The flows' tasks belong to
/// this one: aborting it ends them, and closes the host socket.
async fn serve_udp(host: Arc<UdpSocket>, gate: Gate, target: SocketAddr, ns: Arc<File>) {
    let Ok(local) = host.local_addr() else { return };
    let flows: Flows = Default::default();
    let mut replies = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        while replies.try_join_next().is_some() {}
        let (n, peer) = match host.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(session = %gate.sid, "loopback bridge: udp receive: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let known = flows.lock().unwrap().get(&peer).cloned();
        let inside = match known {
            Some(flow) => flow,
            None => {
                let flow = if gate.admits(Proto::Udp, peer, local).await {
                    match udp_inside(target, &ns).await {
                        Ok(s) => Some(Arc::new(s)),
                        Err(e) => {
                            debug!(session = %gate.sid, %target, "loopback bridge: udp: {e}");
                            continue;
                        }
                    }
                } else {
                    None
                };
                flows.lock().unwrap().insert(peer, flow.clone());
                replies.spawn(udp_replies(host.clone(), peer, flow.clone(), flows.clone()));
                flow
            }
        };
        if let Some(inside) = inside {
            let _ = inside.send(&buf[..n]).await;
        }
    }
}

/// Carries a flow's replies back to its host peer until it has been idle for `UDP_IDLE`, then
/// forgets the flow (a refused peer's entry, `None`, is forgotten after as long).
async fn udp_replies(host: Arc<UdpSocket>, peer: SocketAddr, inside: Option<Arc<UdpSocket>>, flows: Flows) {
    let mut buf = vec![0u8; 65536];
    if let Some(inside) = inside {
        while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, inside.recv(&mut buf)).await {
            let _ = host.send_to(&buf[..n], peer).await;
        }
    } else {
        tokio::time::sleep(UDP_IDLE).await;
    }
    flows.lock().unwrap().remove(&peer);
}

/// A UDP socket made inside the session, from 127.0.0.1 (for an IPv4 target), connected to
/// `target`.
async fn udp_inside(target: SocketAddr, ns: &File) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket as Sock2, Type};
    let sock = crate::ns::run_in_netns_async(ns, move || Sock2::new(Domain::for_address(target), Type::DGRAM, None)).await.map_err(std::io::Error::other)??;
    if target.is_ipv4() {
        sock.bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())?;
    }
    sock.set_nonblocking(true)?;
    let s = UdpSocket::from_std(std::net::UdpSocket::from(sock))?;
    s.connect(target).await?;
    Ok(s)
}

/// Connects to `target` from a socket made inside the session's namespace (from 127.0.0.1,
/// so the service sees a loopback peer of its own) and copies both ways until either side
/// closes. A refused 127.0.0.1 is tried again at ::1 (a [::] listener that is IPv6-only).
async fn join(mut conn: tokio::net::TcpStream, target: SocketAddr, ns: &File) -> std::io::Result<()> {
    let mut inside = match connect_inside(target, ns).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && target.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) => {
            connect_inside(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), target.port()), ns).await?
        }
        r => r?,
    };
    tokio::io::copy_bidirectional(&mut conn, &mut inside).await?;
    Ok(())
}

async fn connect_inside(target: SocketAddr, ns: &File) -> std::io::Result<tokio::net::TcpStream> {
    use socket2::{Domain, Socket as Sock2, Type};
    let sock =
        crate::ns::run_in_netns_async(ns, move || Sock2::new(Domain::for_address(target), Type::STREAM, None)).await.map_err(std::io::Error::other)??;
    if target.is_ipv4() {
        sock.bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())?;
    }
    sock.set_nonblocking(true)?;
    tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(sock)).connect(target).await
}

/// The uid that owns the host socket at `peer` that talks to our `local` (sock_diag, in the
/// host namespace, where this runs), if it is found. A TCP lookup names the socket by its
/// own address first; a UDP lookup names the socket a datagram from `local` to `peer` would
/// reach (the kernel looks each up as it would deliver a packet).
fn peer_uid(proto: Proto, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let sock = Socket::new(netlink_sys::protocols::NETLINK_SOCK_DIAG).ok()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let (src, dst, protocol) = match proto {
        Proto::Tcp => (peer, local, IPPROTO_TCP),
        Proto::Udp => (local, peer, IPPROTO_UDP),
    };
    let socket_id = SocketId {
        source_port: src.port(),
        destination_port: dst.port(),
        source_address: src.ip(),
        destination_address: dst.ip(),
        interface_id: 0,
        cookie: [0xff; 8], // INET_DIAG_NOCOOKIE: match by address
    };
    let family = if peer.is_ipv4() { AF_INET } else { netlink_packet_sock_diag::constants::AF_INET6 };
    let req = InetRequest { family, protocol, extensions: ExtensionFlags::empty(), states: StateFlags::all(), socket_id };
    let mut msg = NetlinkMessage::new(header, SockDiagMessage::InetRequest(req).into());
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send_to(&buf, &netlink_sys::SocketAddr::new(0, 0), 0).ok()?;
    let (reply, _) = sock.recv_from_full().ok()?;
    match NetlinkMessage::<SockDiagMessage>::deserialize(&reply).ok()?.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => Some(r.header.uid),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(local: &str) -> DiagSocket {
        DiagSocket { proto: Proto::Tcp, local: local.parse().unwrap(), remote: None, state: SockState::Listen, uid: 1000, inode: 1, interface: None }
    }

    fn bound_udp(local: &str, interface: Option<u32>) -> DiagSocket {
        DiagSocket { proto: Proto::Udp, state: SockState::Unconnected, interface, ..listen(local) }
    }

    fn tcp(port: u16) -> (Proto, u16) {
        (Proto::Tcp, port)
    }

    #[test]
    fn each_of_the_four_bind_addresses_is_forwarded_and_nothing_else() {
        let sid = Sid::new(7).unwrap();
        let l = [
            listen("127.0.0.1:8888"),
            listen("127.0.0.8:8001"),
            listen("0.0.0.0:8002"),
            listen("[::]:8003"),
            // not reached from the session's loopback: another session's loopback, the LAN
            // address, ::1 alone
            listen("127.0.0.9:9001"),
            listen("10.0.0.5:9002"),
            listen("[::1]:9003"),
        ];
        let f = forwards(sid, &l);
        let want: BTreeMap<(Proto, u16), SocketAddr> = [(8001, "127.0.0.8:8001"), (8002, "127.0.0.1:8002"), (8003, "127.0.0.1:8003"), (8888, "127.0.0.1:8888")]
            .into_iter()
            .map(|(p, a)| (tcp(p), a.parse().unwrap()))
            .collect();
        assert_eq!(f, want);
    }

    #[test]
    fn a_port_bound_several_ways_goes_to_127_0_0_1_first() {
        let sid = Sid::new(1).unwrap();
        let f = forwards(sid, &[listen("[::]:80"), listen("127.0.0.2:80"), listen("127.0.0.1:80")]);
        assert_eq!(f[&tcp(80)], "127.0.0.1:80".parse().unwrap());
        let f = forwards(sid, &[listen("[::]:80"), listen("127.0.0.2:80")]);
        assert_eq!(f[&tcp(80)], "127.0.0.2:80".parse().unwrap());
        let f = forwards(sid, &[listen("[::]:80")]);
        assert_eq!(f[&tcp(80)], "127.0.0.1:80".parse().unwrap());
        let mut not_listening = listen("127.0.0.1:81");
        not_listening.state = SockState::Established;
        assert!(forwards(sid, &[not_listening]).is_empty());
    }

    #[test]
    fn bound_udp_sockets_are_forwarded_but_not_one_tied_to_eth0() {
        let sid = Sid::new(1).unwrap();
        let mut connected = bound_udp("127.0.0.1:5001", None);
        connected.state = SockState::Established;
        let f = forwards(
            sid,
            &[
                bound_udp("0.0.0.0:5353", None),
                bound_udp("127.0.0.1:80", Some(1)), // bound to lo: reachable
                bound_udp("0.0.0.0:68", Some(2)),   // the DHCP client's, on eth0
                connected,
                listen("127.0.0.1:80"),
            ],
        );
        let keys: Vec<_> = f.keys().copied().collect();
        assert_eq!(keys, vec![tcp(80), (Proto::Udp, 80), (Proto::Udp, 5353)]);
        assert_eq!(f[&(Proto::Udp, 5353)], "127.0.0.1:5353".parse().unwrap());
    }

    #[test]
    fn the_owner_rule() {
        use LoopbackReach::{All, Owner};
        assert!(allowed(Owner, Some(1000), Some(0)));
        assert!(allowed(Owner, Some(1000), Some(1000)));
        assert!(!allowed(Owner, Some(1000), Some(1001)));
        assert!(!allowed(Owner, None, Some(1001)));
        assert!(!allowed(Owner, Some(1000), None), "an unknown peer is refused");
        assert!(allowed(All, Some(1000), Some(1001)));
        assert!(!allowed(LoopbackReach::None, Some(1000), Some(0)));
    }
}
