//! The host -> session loopback bridge (issue 12 items 1 and 2): from the host namespace,
//! 127.0.0.(sid+1):P reaches whatever session sid listens on at TCP or UDP port P, as loopback
//! virtualization does on a Windows terminal server.
//!
//! Nothing is discovered or bound per port. One nftables TPROXY rule per protocol (`nft`)
//! sends every connection and datagram the host sends to a running session's loopback to one
//! transparent listener of the daemon on 127.0.0.1 (TCP, and UDP with IP_RECVORIGDSTADDR); the
//! original destination (the accepted socket's own address, or the datagram's cmsg) names the
//! session and the port. The daemon then connects inside that session's namespace to
//! 127.0.0.1:P, then 127.0.0.(sid+1):P, then [::1]:P, from 127.0.0.1 (the service sees a
//! loopback peer), and splices the two connections (`splice`). A connection nothing inside
//! takes is reset (the host client sees "connection reset", not "refused": its SYN was
//! answered by the listener). Each UDP peer gets a flow: a socket of its own inside, and a
//! transparent socket on the host at the session loopback that the replies come from, ended
//! after `UDP_IDLE` without traffic. Idle, the bridge costs nothing: no timer, no poll.
//!
//! Nothing listens on a non-loopback address, and no routing (route_localnet, forwarding)
//! changes. Who may connect: `LoopbackReach`, the peer's uid read with sock_diag from its
//! socket on the host. A session that stops takes its connections and flows with it.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::Socket as NlSocket;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, setsockopt, sockopt};
use rtnetlink::packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use sessiond_client::loopback::{loopback_for, sid_for_loopback};
use sessiond_client::ports::{Forwarded, Place, PortEntry, Proto, SessionBridge};
use socket2::{Domain, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{HostService, LoopbackReach};
use crate::manager::Manager;
use crate::metrics::{BridgeDirection, Metrics, RefusedReason};
use crate::nft::{self, Listeners, NftError};
use crate::ns_socket::SocketMaker;
use crate::platform::Platform;
use crate::sid::Sid;

/// A UDP flow (one host peer's socket inside the session) ends after this long without a
/// datagram either way.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// How long the set's update waits for more session changes after one: a new session's
/// loopback is diverted within this (plus one `nft` run) of its start.
const SETTLE: Duration = Duration::from_millis(50);
/// Datagrams of one flow that may wait while its sockets are being made.
const FLOW_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("loopback bridge: {what}: {source}")]
    Socket { what: &'static str, source: io::Error },
    #[error("loopback bridge: {0}")]
    Nft(#[from] NftError),
}

/// May a peer whose socket belongs to `peer_uid` connect to a session owned by `owner`?
pub fn allowed(reach: LoopbackReach, owner: Option<u32>, peer_uid: Option<u32>) -> bool {
    match reach {
        LoopbackReach::All => true,
        LoopbackReach::None => false,
        LoopbackReach::Owner => peer_uid.is_some_and(|u| u == 0 || Some(u) == owner),
    }
}

/// Where, inside session `sid`, a connection to the host's 127.0.0.(sid+1):`port` is tried, in
/// order: 127.0.0.1 (also what 0.0.0.0 and a dual-stack [::] listener take), the session's
/// own loopback, then ::1 (an IPv6-only [::] or ::1 listener).
pub fn targets(sid: Sid, port: u16) -> [SocketAddr; 3] {
    [SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port), SocketAddr::new(loopback_for(sid).into(), port), SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)]
}

/// The session and port a diverted connection or datagram was sent to (its original
/// destination), if that is a session loopback.
pub fn destination(original: SocketAddr) -> Option<(Sid, u16)> {
    match original.ip() {
        IpAddr::V4(v4) => sid_for_loopback(v4).map(|sid| (sid, original.port())),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().and_then(sid_for_loopback).map(|sid| (sid, original.port())),
    }
}

/// Whether a connection from the bridge (to 127.0.0.1, the session loopback, or ::1, as
/// `targets` tries them) reaches a listener bound at `local`.
pub fn reached(sid: Sid, local: IpAddr) -> bool {
    match local {
        IpAddr::V4(v4) => v4 == Ipv4Addr::LOCALHOST || v4.is_unspecified() || v4 == loopback_for(sid),
        IpAddr::V6(v6) => v6.is_unspecified() || v6 == Ipv6Addr::LOCALHOST,
    }
}

/// Session `sid`'s bridge for `status`, from the listening sockets `ports` lists (any places):
/// each protocol and port the host reaches, once, with the program listening. Sockets that no
/// process of the session holds are the daemon's own (its DHCP client, the host services'
/// listeners) and are left out.
pub fn view(sid: Sid, ports: &[PortEntry], host_services: &[HostService]) -> SessionBridge {
    let mut from_host: Vec<Forwarded> = Vec::new();
    for p in ports.iter().filter(|p| p.session == Place::Session(sid) && p.is_listening() && p.pid.is_some() && reached(sid, p.local.ip())) {
        if !from_host.iter().any(|f| f.proto == p.proto && f.port == p.local.port()) {
            from_host.push(Forwarded { proto: p.proto, port: p.local.port(), pid: p.pid, program: p.program.clone() });
        }
    }
    from_host.sort_by_key(|f| (f.proto, f.port));
    SessionBridge { session: sid, from_host, host_services: host_services.to_vec() }
}

/// A running session as the bridge sees it. Dropping it (the session stopped) ends its
/// connections and flows: they wait on `gone`.
struct Live {
    netns: String,
    /// Kept open while the session runs (closed as soon as it stops, long before the stop's
    /// "still held" check): a connection does not open it again.
    ns: Option<Arc<File>>,
    owner: Option<u32>,
    gone: watch::Sender<()>,
}

/// What a connection needs of its session, taken when it arrives.
struct Target {
    sid: Sid,
    netns: String,
    ns: Option<Arc<File>>,
    owner: Option<u32>,
    gone: watch::Receiver<()>,
}

struct Shared {
    metrics: Metrics,
    /// The host's sock_diag socket for the owner rule, made once (and again after an error).
    diag: Mutex<Diag>,
    reach: LoopbackReach,
    host_services: Vec<HostService>,
    sessions: Mutex<HashMap<Sid, Live>>,
    maker: SocketMaker,
    /// (session, uid, port) refusals already logged.
    refused: Mutex<HashSet<(Sid, u32, u16)>>,
}

impl Shared {
    fn target(&self, sid: Sid) -> Option<Target> {
        let s = self.sessions.lock().unwrap();
        s.get(&sid).map(|l| Target { sid, netns: l.netns.clone(), ns: l.ns.clone(), owner: l.owner, gone: l.gone.subscribe() })
    }

    /// Whether the host socket at `peer` (talking to `local`, a session loopback) may come in;
    /// a refusal is logged once per session, uid and port.
    fn admits(&self, t: &Target, proto: Proto, peer: SocketAddr, local: SocketAddr) -> bool {
        if self.reach == LoopbackReach::All {
            return true;
        }
        // One netlink request the kernel answers at once: cheaper than a hop to a thread.
        let uid = peer_uid(&self.diag, proto, peer, local);
        if allowed(self.reach, t.owner, uid) {
            return true;
        }
        self.metrics.bridge_refused(BridgeDirection::HostToSession, RefusedReason::NotAllowed);
        if self.refused.lock().unwrap().insert((t.sid, uid.unwrap_or(u32::MAX), local.port())) {
            warn!(session = %t.sid, %proto, port = local.port(), uid = ?uid, "loopback bridge: refused a connection (loopback_reach = {}; only root and the owner may connect)", self.reach);
        }
        false
    }

    async fn open_ns(&self, t: &Target) -> io::Result<Arc<File>> {
        match &t.ns {
            Some(ns) => Ok(ns.clone()),
            None => crate::ns::open_netns(&t.netns).map(Arc::new).map_err(io::Error::other),
        }
    }
}

/// The running bridge: its tasks, and the nftables table it owns.
pub struct Bridge {
    tasks: Vec<JoinHandle<()>>,
    /// Whether it installed the table.
    table: bool,
}

impl Bridge {
    /// Ends the bridge and removes its table (new connections to session loopbacks are then
    /// refused by the host; established ones end with the daemon).
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        if !self.table {
            return;
        }
        match nft::apply("remove table inet sessiond", &nft::remove()).await {
            Ok(()) => info!("loopback bridge: removed table inet {}", nft::TABLE),
            Err(e) => warn!("loopback bridge: {e}"),
        }
    }
}

/// Starts the bridge: with `reach` other than none, binds the transparent listeners and
/// installs the table with the running sessions' loopbacks; with host services, binds them in
/// every session; and keeps both in step with the sessions from then on. None when there is
/// nothing to do.
pub async fn start<P: Platform + 'static>(mgr: Arc<Manager<P>>, reach: LoopbackReach, host_services: Vec<HostService>) -> Result<Option<Bridge>, BridgeError> {
    let tproxy = reach != LoopbackReach::None;
    if !tproxy && host_services.is_empty() {
        return Ok(None);
    }
    let maker = SocketMaker::new().map_err(|source| BridgeError::Socket { what: "the daemon's own namespace", source })?;
    let shared = Arc::new(Shared {
        metrics: mgr.metrics().clone(),
        diag: Mutex::default(),
        reach,
        host_services,
        sessions: Mutex::new(HashMap::new()),
        maker,
        refused: Mutex::new(HashSet::new()),
    });
    // Subscribed before the first look at the sessions: no change falls in between.
    let (_, mut changes) = mgr.events().subscribe(crate::events::Viewer::Root);
    let mut members = sync_sessions(&mgr, &shared);
    let mut tasks = Vec::new();
    let to = if tproxy {
        let tcp = transparent_listener().map_err(|source| BridgeError::Socket { what: "transparent TCP listener on 127.0.0.1", source })?;
        let udp = transparent_udp().map_err(|source| BridgeError::Socket { what: "transparent UDP socket on 127.0.0.1", source })?;
        let to = Listeners {
            tcp: tcp.local_addr().map_err(|source| BridgeError::Socket { what: "TCP listener address", source })?.port(),
            udp: udp.local_addr().map_err(|source| BridgeError::Socket { what: "UDP socket address", source })?.port(),
        };
        nft::apply("install table inet sessiond", &nft::install(to, &members)).await?;
        info!(tcp = to.tcp, udp = to.udp, sessions = members.len(), %reach, "loopback bridge: table inet {} installed", nft::TABLE);
        tasks.push(tokio::spawn(serve_tcp(tcp, shared.clone())));
        tasks.push(tokio::spawn(serve_udp(udp, shared.clone())));
        Some(to)
    } else {
        None
    };
    tasks.push(tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
            // A burst of changes (a mass start) becomes one update: each `nft` run costs ~9 ms
            // of CPU, which 500 back-to-back starts would otherwise pay 500 times.
            tokio::time::sleep(SETTLE).await;
            while changes.try_recv().is_ok() {}
            let now = sync_sessions(&mgr, &shared);
            let Some(to) = to else { continue };
            if let Some(batch) = nft::update(&members, &now) {
                match nft::apply("update set sessions", &batch).await {
                    Ok(()) => members = now,
                    // Out of step with the kernel (someone edited the table): say so and put
                    // it back whole.
                    Err(e) => {
                        warn!("loopback bridge: {e}; installing the table again");
                        match nft::apply("install table inet sessiond", &nft::install(to, &now)).await {
                            Ok(()) => members = now,
                            Err(e) => warn!("loopback bridge: {e}"),
                        }
                    }
                }
            }
        }
    }));
    Ok(Some(Bridge { tasks, table: to.is_some() }))
}

/// Brings the bridge's view of the running sessions up to date (a session that is gone drops
/// its `Live`, which ends its connections); the loopbacks the set must hold.
fn sync_sessions<P: Platform>(mgr: &Manager<P>, shared: &Shared) -> BTreeSet<Ipv4Addr> {
    // A programs-mode session has no namespace: its loopback is on the host's own lo, where
    // the host reaches it natively, so the bridge must not divert it.
    let mut running = mgr.status(None).unwrap_or_default();
    running.retain(|r| r.mode() == crate::config::Mode::Namespace);
    let mut s = shared.sessions.lock().unwrap();
    s.retain(|sid, _| running.iter().any(|r| r.session == *sid));
    for r in &running {
        let live = s.entry(r.session).or_insert_with(|| {
            let ns = crate::ns::open_netns(&r.netns).ok().map(Arc::new);
            let live = Live { netns: r.netns.clone(), ns, owner: r.owner_uid, gone: watch::channel(()).0 };
            if !shared.host_services.is_empty() {
                match crate::ns::open_netns(&r.netns) {
                    Ok(ns) => drop(tokio::spawn(crate::host_services::expose(
                        shared.maker.clone(),
                        shared.metrics.clone(),
                        Arc::new(ns),
                        r.session,
                        shared.host_services.clone(),
                        live.gone.subscribe(),
                    ))),
                    Err(e) => warn!(session = %r.session, "host services: {e}"),
                }
            }
            live
        });
        live.owner = r.owner_uid;
    }
    running.iter().map(|r| r.loopback).collect()
}

fn transparent_listener() -> io::Result<TcpListener> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_ip_transparent_v4(true)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    TcpListener::from_std(s.into())
}

fn transparent_udp() -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    s.set_ip_transparent_v4(true)?;
    setsockopt(&s, sockopt::Ipv4OrigDstAddr, &true)?;
    s.bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// Closes `conn` with a reset: what a client of a port nobody listens on gets from the bridge.
fn reset(conn: TcpStream) {
    let _ = SockRef::from(&conn).set_linger(Some(Duration::ZERO));
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((conn, peer)) => drop(tokio::spawn(tcp_connection(conn, peer, shared.clone()))),
            Err(e) => {
                // Out of descriptors, say: wait instead of spinning.
                debug!("loopback bridge: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn tcp_connection(conn: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let Ok(local) = conn.local_addr() else { return };
    shared.metrics.bridge_connection(BridgeDirection::HostToSession);
    // Anything else reaching the listener (a direct connection to 127.0.0.1:its port) is no
    // session's.
    let Some((sid, port)) = destination(local) else { return reset(conn) };
    let Some(mut t) = shared.target(sid) else { return reset(conn) };
    if !shared.admits(&t, Proto::Tcp, peer, local) {
        return reset(conn);
    }
    let inside = match connect_inside(&shared, &t, port).await {
        Ok(s) => s,
        Err(e) => {
            debug!(session = %sid, port, "loopback bridge: nothing takes it inside: {e}");
            shared.metrics.bridge_refused(BridgeDirection::HostToSession, RefusedReason::NothingListening);
            return reset(conn);
        }
    };
    let _ = conn.set_nodelay(true);
    let _ = inside.set_nodelay(true);
    tokio::select! {
        r = crate::splice::relay(&conn, &inside) => if let Err(e) = r { debug!(session = %sid, port, "loopback bridge: {e}") },
        _ = t.gone.changed() => {}
    }
}

/// A connection inside the session to the first of `targets` that takes it.
async fn connect_inside(shared: &Shared, t: &Target, port: u16) -> io::Result<TcpStream> {
    let ns = shared.open_ns(t).await?;
    let mut last = None;
    for target in targets(t.sid, port) {
        let sock = shared.maker.socket(&ns, Domain::for_address(target), Type::STREAM)?;
        // From 127.0.0.1, which the kernel picks for 127.0.0.1 itself.
        if target.ip() != IpAddr::V4(Ipv4Addr::LOCALHOST) && target.is_ipv4() {
            sock.bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())?;
        }
        sock.set_nonblocking(true)?;
        match connect_loopback(sock, target).await {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::ConnectionRefused)))
}

/// A non-blocking connect over loopback. The kernel has usually finished the handshake (or the
/// refusal) by the time connect() returns EINPROGRESS, so the outcome is read at once; only
/// otherwise does it wait for the reactor (a turn of it is a wake-up on the connection's path).
async fn connect_loopback(sock: Socket, target: SocketAddr) -> io::Result<TcpStream> {
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    if sock.peer_addr().is_ok() {
        return TcpStream::from_std(sock.into());
    }
    let stream = TcpStream::from_std(sock.into())?;
    stream.writable().await?;
    match stream.take_error()? {
        Some(e) => Err(e),
        None => Ok(stream),
    }
}

/// One datagram from the transparent UDP socket: its length, its sender, and where it was sent.
fn recv_original(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::sockaddr_in);
    let msg = recvmsg::<SockaddrIn>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)?;
    let mut original = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv4OrigDstAddr(a) = c {
            original = Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port))));
        }
    }
    let peer = msg.address.map(SocketAddr::from).ok_or_else(|| io::Error::other("a datagram without a sender"))?;
    Ok((msg.bytes, peer, original))
}

type FlowKey = (SocketAddr, SocketAddr);
type Flows = Arc<Mutex<HashMap<FlowKey, mpsc::Sender<Vec<u8>>>>>;

/// The transparent UDP socket: the first datagram of each (peer, destination) starts a flow;
/// the flow's own host socket gets the ones after it (TPROXY finds that connected socket first),
/// and those that still come here are handed to it.
async fn serve_udp(sock: UdpSocket, shared: Arc<Shared>) {
    let flows: Flows = Default::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer, original) = match sock.async_io(Interest::READABLE, || recv_original(&sock, &mut buf)).await {
            Ok((n, peer, Some(original))) => (n, peer, original),
            Ok(_) => continue,
            Err(e) => {
                debug!("loopback bridge: udp receive: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let data = buf[..n].to_vec();
        let key = (peer, original);
        let mut f = flows.lock().unwrap();
        if let Some(tx) = f.get(&key) {
            // A flow that cannot keep up loses datagrams, as UDP may.
            let _ = tx.try_send(data);
            continue;
        }
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let _ = tx.try_send(data);
        f.insert(key, tx);
        drop(f);
        tokio::spawn(udp_flow(key, rx, shared.clone(), flows.clone()));
    }
}

/// One host peer's datagrams to one session port, and the replies, until `UDP_IDLE` passes
/// without either (a refused peer's are dropped for as long), or the session stops.
async fn udp_flow(key: FlowKey, mut queued: mpsc::Receiver<Vec<u8>>, shared: Arc<Shared>, flows: Flows) {
    let (peer, original) = key;
    shared.metrics.bridge_connection(BridgeDirection::HostToSession);
    if let Some((sid, port)) = destination(original)
        && let Some(mut t) = shared.target(sid)
    {
        if !shared.admits(&t, Proto::Udp, peer, original) {
            while let Ok(Some(_)) = tokio::time::timeout(UDP_IDLE, queued.recv()).await {}
        } else if let Err(e) = udp_relay(&shared, &mut t, port, peer, original, &mut queued).await {
            debug!(session = %sid, port, "loopback bridge: udp: {e}");
        }
    }
    flows.lock().unwrap().remove(&key);
}

async fn udp_relay(shared: &Shared, t: &mut Target, port: u16, peer: SocketAddr, original: SocketAddr, queued: &mut mpsc::Receiver<Vec<u8>>) -> io::Result<()> {
    // The host end: at the session loopback, so replies come from where the peer sent to.
    let host = {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
        s.set_ip_transparent_v4(true)?;
        s.set_reuse_address(true)?;
        s.bind(&original.into())?;
        s.connect(&peer.into())?;
        s.set_nonblocking(true)?;
        UdpSocket::from_std(s.into())?
    };
    let ns = shared.open_ns(t).await?;
    let targets = targets(t.sid, port);
    let mut at = 0;
    let mut inside = udp_inside(shared, &ns, targets[at]).await?;
    let mut last: Vec<u8> = Vec::new();
    let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
    loop {
        tokio::select! {
            d = queued.recv() => {
                let Some(d) = d else { return Ok(()) };
                let _ = inside.send(&d).await;
                last = d;
            }
            r = host.recv(&mut up) => {
                let n = r?;
                let _ = inside.send(&up[..n]).await;
                last = up[..n].to_vec();
            }
            r = inside.recv(&mut down) => match r {
                Ok(n) => { let _ = host.send(&down[..n]).await; }
                // Nothing bound there (ICMP port unreachable): the next place, with the
                // datagram again.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && at + 1 < targets.len() => {
                    at += 1;
                    inside = udp_inside(shared, &ns, targets[at]).await?;
                    let _ = inside.send(&last).await;
                }
                Err(e) => return Err(e),
            },
            _ = tokio::time::sleep(UDP_IDLE) => return Ok(()),
            _ = t.gone.changed() => return Ok(()),
        }
    }
}

/// A UDP socket made inside the session, from 127.0.0.1 for an IPv4 target, connected to it.
async fn udp_inside(shared: &Shared, ns: &Arc<File>, target: SocketAddr) -> io::Result<UdpSocket> {
    let sock = shared.maker.socket(ns, Domain::for_address(target), Type::DGRAM)?;
    if target.is_ipv4() {
        sock.bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())?;
    }
    sock.set_nonblocking(true)?;
    let s = UdpSocket::from_std(sock.into())?;
    s.connect(target).await?;
    Ok(s)
}

/// The uid that owns the host socket at `peer` that talks to our `local` (sock_diag, in the
/// host namespace, where this runs), if it is found. A TCP lookup names the socket by its
/// own address first; a UDP lookup names the socket a datagram from `local` to `peer` would
/// reach (the kernel looks each up as it would deliver a packet).
fn peer_uid(diag: &Mutex<Diag>, proto: Proto, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let mut d = diag.lock().unwrap();
    if d.sock.is_none() {
        d.sock = NlSocket::new(netlink_sys::protocols::NETLINK_SOCK_DIAG).ok();
    }
    d.seq = d.seq.wrapping_add(1);
    let seq = d.seq;
    let uid = ask_uid(d.sock.as_ref()?, seq, proto, peer, local);
    if uid.is_err() {
        d.sock = None; // made anew next time: no stale reply can be read as an answer
    }
    uid.ok().flatten()
}

/// The owner rule's sock_diag socket, and the sequence number of its last request.
#[derive(Default)]
struct Diag {
    sock: Option<NlSocket>,
    seq: u32,
}

/// One sock_diag request; Err when the socket failed (it is then made anew).
fn ask_uid(sock: &NlSocket, seq: u32, proto: Proto, peer: SocketAddr, local: SocketAddr) -> io::Result<Option<u32>> {
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
    let buf = crate::ports::encode_request(NLM_F_REQUEST, seq, req);
    sock.send_to(&buf, &netlink_sys::SocketAddr::new(0, 0), 0)?;
    // The kernel answers at once (the socket, or an error when there is none); an answer to an
    // earlier request (one whose reader gave up) is skipped.
    for _ in 0..4 {
        let (reply, _) = sock.recv_from_full()?;
        let Ok(msg) = NetlinkMessage::<SockDiagMessage>::deserialize(&reply) else { return Err(io::Error::other("unreadable sock_diag reply")) };
        if msg.header.sequence_number != seq {
            continue;
        }
        return Ok(match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => Some(r.header.uid),
            _ => None,
        });
    }
    Err(io::Error::other("no sock_diag answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_tried_at_127_0_0_1_then_its_loopback_then_ipv6() {
        let sid = Sid::new(7).unwrap();
        let want: Vec<SocketAddr> = ["127.0.0.1:8888", "127.0.0.8:8888", "[::1]:8888"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(targets(sid, 8888).to_vec(), want);
    }

    #[test]
    fn the_original_destination_names_the_session_and_port() {
        let sid = |n| Sid::new(n).unwrap();
        assert_eq!(destination("127.0.0.8:8888".parse().unwrap()), Some((sid(7), 8888)));
        assert_eq!(destination("127.0.1.0:53".parse().unwrap()), Some((sid(255), 53)));
        assert_eq!(destination("[::ffff:127.0.0.2]:80".parse().unwrap()), Some((sid(1), 80)));
        // the listener's own address (a direct connection), the host's, elsewhere: no session
        assert_eq!(destination("127.0.0.1:40000".parse().unwrap()), None);
        assert_eq!(destination("10.0.0.2:80".parse().unwrap()), None);
        assert_eq!(destination("[::1]:80".parse().unwrap()), None);
    }

    #[test]
    fn status_shows_what_the_host_reaches_once_per_port_with_its_program() {
        use sessiond_client::ports::SockState;
        let sid = Sid::new(7).unwrap();
        let entry = |local: &str, proto, state, pid: Option<u32>| PortEntry {
            session: Place::Session(sid),
            proto,
            local: local.parse().unwrap(),
            remote: None,
            state,
            pid,
            program: pid.map(|_| "python3".to_string()),
            uid: 1000,
            user: None,
            also_in: vec![],
            rewritten: false,
        };
        let ports = [
            entry("127.0.0.1:8888", Proto::Tcp, SockState::Listen, Some(10)),
            entry("[::]:8888", Proto::Tcp, SockState::Listen, Some(10)), // the same port again
            entry("127.0.0.8:8001", Proto::Tcp, SockState::Listen, Some(11)),
            entry("[::1]:8002", Proto::Tcp, SockState::Listen, Some(12)),
            entry("0.0.0.0:5353", Proto::Udp, SockState::Unconnected, Some(13)),
            entry("127.0.0.9:9001", Proto::Tcp, SockState::Listen, Some(14)), // session 8's loopback
            entry("10.0.0.5:9002", Proto::Tcp, SockState::Listen, Some(15)),  // the LAN address
            entry("127.0.0.1:9003", Proto::Tcp, SockState::Established, Some(16)),
            entry("127.0.0.1:631", Proto::Tcp, SockState::Listen, None), // the daemon's host service
            entry("0.0.0.0:68", Proto::Udp, SockState::Unconnected, None), // the daemon's DHCP client
            PortEntry { session: Place::Session(Sid::new(8).unwrap()), ..entry("127.0.0.1:7000", Proto::Tcp, SockState::Listen, Some(17)) },
        ];
        let services = vec!["tcp:631".parse().unwrap()];
        let v = view(sid, &ports, &services);
        let got: Vec<(Proto, u16, Option<u32>)> = v.from_host.iter().map(|f| (f.proto, f.port, f.pid)).collect();
        assert_eq!(got, vec![(Proto::Tcp, 8001, Some(11)), (Proto::Tcp, 8002, Some(12)), (Proto::Tcp, 8888, Some(10)), (Proto::Udp, 5353, Some(13))]);
        assert_eq!(v.from_host[0].program.as_deref(), Some("python3"));
        assert_eq!(v.host_services, services);
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
