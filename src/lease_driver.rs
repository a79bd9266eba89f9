//! The thin async driver around the sans-IO DHCP client: one tokio task per session (no thread
//! per session), a UDP socket made inside the session's namespace, netlink to apply leases.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::dhcp::{Action, Client, ClientConfig, Dest, Event, Lease, Millis, State};
use crate::netlink::{Lifetimes, NetError, NetOps};
use crate::session::SESSION_IF;
use crate::sid::Sid;
use crate::state::StateDir;

pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the driver last knew; `status` shows it and `start` waits on it.
#[derive(Clone, Debug, Default)]
pub struct LeaseStatus {
    pub state: String,
    pub lease: Option<Lease>,
    pub discovers: u32,
    /// Set when the task ended on its own (socket error).
    pub failed: Option<String>,
}

enum Command {
    /// Release the lease (if any), then end; `remove_address`: also take the address off the
    /// interface (not worth it when the namespace is about to go with it).
    Release { remove_address: bool, done: oneshot::Sender<()> },
}

/// Handle to a running session's DHCP task.
pub struct LeaseDriver {
    tx: mpsc::Sender<Command>,
    pub status: watch::Receiver<LeaseStatus>,
    task: tokio::task::JoinHandle<()>,
}

/// Where the driver writes what it learns: files for the session and its persisted lease.
pub struct DriverContext<N: NetOps> {
    pub sid: Sid,
    pub netns: String,
    pub inside: N,
    pub state: StateDir,
    pub hostname: String,
    pub loopback: Ipv4Addr,
    pub write_file: crate::platform::FileWriter,
    /// What this task last wrote to resolv.conf and hosts: a renewal that changes nothing
    /// rewrites (and fsyncs) nothing.
    pub written: std::sync::Mutex<(String, String)>,
    /// The address and server of the lease last persisted durably: a renewal of the same
    /// lease is persisted without fsync (a crash loses only its new expiry, and INIT-REBOOT
    /// asks the server again anyway).
    pub persisted: std::sync::Mutex<Option<(Ipv4Addr, Ipv4Addr)>>,
    pub lan_neighbours: LanNeighbours,
    /// Neighbours whose entry this task has pinned or seeded.
    pub pinned: std::sync::Mutex<std::collections::HashSet<Ipv4Addr>>,
}

pub fn lease_file(sid: Sid) -> String {
    format!("leases/{sid}.json")
}

/// Makes the DHCP client socket inside `netns`: port 68, bound to the session interface,
/// broadcast allowed. Created on a throwaway thread in the namespace; usable from any thread.
pub async fn client_socket(netns: &str, mac: [u8; 6]) -> Result<UdpSocket, NetError> {
    let ns = crate::ns::open_netns(netns)?;
    let sock = crate::ns::run_in_netns_async(&ns, move || -> std::io::Result<std::net::UdpSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_broadcast(true)?;
        s.bind_device(Some(SESSION_IF.as_bytes()))?;
        attach_reply_filter(&s, mac)?;
        s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    })
    .await?
    .map_err(|source| NetError::Io { op: format!("DHCP socket in {netns}"), source })?;
    UdpSocket::from_std(sock).map_err(|source| NetError::Io { op: "register DHCP socket".into(), source })
}

/// A classic BPF socket filter that keeps only BOOTREPLYs whose chaddr is this session's MAC.
/// On a macvlan bridge every broadcast reply reaches every session; without the filter each
/// of N sessions wakes up for every other session's OFFER/ACK (N² work at scale). The
/// machine still validates everything it receives; this only sheds the certain rejects.
fn attach_reply_filter(s: &socket2::Socket, mac: [u8; 6]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // For a UDP socket the filter sees the packet from the UDP header: payload at offset 8.
    const OP: u32 = 8; // BOOTP op (2 = BOOTREPLY)
    const CHADDR: u32 = 8 + 28; // client hardware address
    let hi = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let lo = u32::from(u16::from_be_bytes([mac[4], mac[5]]));
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let (ld_b, ld_h, ld_w) = (
        (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16,
        (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16,
        (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
    );
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let mut prog = [
        ins(ld_b, 0, 0, OP),
        ins(jeq, 0, 5, 2),
        ins(ld_w, 0, 0, CHADDR),
        ins(jeq, 0, 3, hi),
        ins(ld_h, 0, 0, CHADDR + 4),
        ins(jeq, 0, 1, lo),
        ins(ret, 0, 0, u32::MAX), // accept the whole packet
        ins(ret, 0, 0, 0),        // drop
    ];
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY: fprog points at `prog`, which outlives the call; the kernel copies the program.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
        return now_ms() ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}

impl LeaseDriver {
    /// Starts the task: INIT-REBOOT with `persisted` if given, else INIT.
    pub fn spawn<N: NetOps + 'static>(ctx: DriverContext<N>, socket: UdpSocket, cfg_base: (ClientConfig, Option<Lease>)) -> LeaseDriver {
        let (mut cfg, persisted) = cfg_base;
        cfg.seed = seed();
        let (tx, rx) = mpsc::channel(4);
        let (status_tx, status_rx) = watch::channel(LeaseStatus { state: "init".into(), ..Default::default() });
        // A root span: the task outlives the request that started it.
        let span = info_span!(parent: None, "dhcp", session = %ctx.sid);
        let task = tokio::spawn(run(ctx, socket, Client::new(cfg), persisted, rx, status_tx).instrument(span));
        LeaseDriver { tx, status: status_rx, task }
    }

    /// Sends DHCPRELEASE (if bound), removes the address if asked to, and waits for the task
    /// to end.
    pub async fn release(self, remove_address: bool) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Command::Release { remove_address, done: done_tx }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
        }
        self.task.abort();
    }

    /// Ends the task without releasing (the lease stays valid on the server and on disk).
    pub fn abandon(self) {
        self.task.abort();
    }

    /// Waits until bound, the task fails, or `timeout` passes.
    pub async fn wait_bound(&mut self, timeout: Duration) -> Result<Lease, String> {
        let r = tokio::time::timeout(timeout, self.status.wait_for(|s| s.lease.is_some() && s.state == "bound" || s.failed.is_some()))
            .await
            .map(|w| w.map(|s| (s.lease.clone(), s.failed.clone())));
        match r {
            Ok(Ok((_, Some(f)))) => Err(f),
            Ok(Ok((Some(l), None))) => Ok(l),
            Ok(Ok((None, None))) => Err("no lease".into()),
            Ok(Err(_)) => Err("the DHCP task ended".into()),
            Err(_) => Err(format!("{} DISCOVERs went unanswered", self.status.borrow().discovers)),
        }
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Init => "init",
        State::Selecting => "selecting",
        State::Requesting => "requesting",
        State::Bound => "bound",
        State::Renewing => "renewing",
        State::Rebinding => "rebinding",
        State::InitReboot => "init-reboot",
        State::Rebooting => "rebooting",
        State::Released => "released",
    }
}

async fn run<N: NetOps>(
    ctx: DriverContext<N>,
    sock: UdpSocket,
    mut client: Client,
    persisted: Option<Lease>,
    mut rx: mpsc::Receiver<Command>,
    status: watch::Sender<LeaseStatus>,
) {
    // A persisted lease that INIT-REBOOT has not confirmed yet may still be on the interface:
    // if no server confirms it, its address must go when the lease ends (RFC 2131 §4.4.5).
    let mut unconfirmed = persisted.clone();
    let mut rejects = RejectLog::default();
    let first = match persisted {
        Some(l) => Event::StartWithLease(l),
        None => Event::Start,
    };
    let mut actions = client.on_event(first, now_ms());
    let mut buf = vec![0u8; 4096];
    let mut last_state = client.state();
    info!(state = state_name(last_state), "DHCP client started");
    loop {
        let mut release_done = None;
        for a in actions.drain(..) {
            execute(&ctx, &sock, a, &mut rejects).await;
        }
        if client.lease().is_some() {
            unconfirmed = None;
        }
        if client.state() != last_state {
            info!("DHCP state {} -> {}", state_name(last_state), state_name(client.state()));
            last_state = client.state();
        }
        let _ = status.send(LeaseStatus {
            state: state_name(client.state()).into(),
            lease: client.lease().cloned(),
            discovers: client.discovers_sent(),
            failed: None,
        });
        let machine_at = client.next_timer();
        let wake = [machine_at, unconfirmed.as_ref().and_then(Lease::expires_at)].into_iter().flatten().min();
        let sleep_for = wake.map(|t| Duration::from_millis(t.saturating_sub(now_ms()))).unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    debug!(%from, bytes = n, "DHCP packet");
                    actions = client.on_event(Event::Packet { bytes: buf[..n].to_vec() }, now_ms());
                }
                Err(e) => {
                    warn!("DHCP socket: {e}");
                    let _ = status.send(LeaseStatus { failed: Some(format!("DHCP socket: {e}")), ..status.borrow().clone() });
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    actions = Vec::new();
                }
            },
            _ = tokio::time::sleep(sleep_for) => {
                let now = now_ms();
                actions = Vec::new();
                if let Some(l) = unconfirmed.take_if(|l| l.expires_at().is_some_and(|e| e <= now)) {
                    info!(address = %l.address, "the persisted lease expired unconfirmed: removing its address");
                    actions.push(Action::RemoveLease(l));
                    actions.push(Action::PersistLease(None));
                }
                if machine_at.is_some_and(|t| t <= now) || actions.is_empty() {
                    actions.extend(client.on_event(Event::Timer, now));
                }
            }
            cmd = rx.recv() => {
                let (remove_address, done) = match cmd {
                    Some(Command::Release { remove_address, done }) => (remove_address, Some(done)),
                    None => (true, None),
                };
                actions = client.on_event(Event::Release, now_ms());
                if !remove_address {
                    actions.retain(|a| !matches!(a, Action::RemoveLease(_)));
                }
                release_done = Some(done);
            }
        }
        if let Some(done) = release_done {
            for a in actions.drain(..) {
                execute(&ctx, &sock, a, &mut rejects).await;
            }
            let _ = status.send(LeaseStatus { state: "released".into(), ..Default::default() });
            if let Some(d) = done {
                let _ = d.send(());
            }
            return;
        }
    }
}

/// Rate limit for rejected-packet warnings: a hostile or chatty LAN must not flood the journal
/// from every session. Replies meant for other clients are only ever logged at debug.
#[derive(Default)]
struct RejectLog {
    window_start: Millis,
    shown: u32,
    suppressed: u32,
}

const REJECT_WINDOW_MS: Millis = 60_000;
const REJECTS_PER_WINDOW: u32 = 10;

impl RejectLog {
    fn log(&mut self, reason: &str) {
        if reason.starts_with("xid") || reason.starts_with("chaddr") || reason.starts_with("no transaction") {
            debug!("ignored a DHCP packet: {reason}");
            return;
        }
        let now = now_ms();
        if now.saturating_sub(self.window_start) >= REJECT_WINDOW_MS {
            if self.suppressed > 0 {
                warn!("{} more DHCP packets were ignored in the last minute (not logged)", self.suppressed);
            }
            *self = RejectLog { window_start: now, shown: 0, suppressed: 0 };
        }
        if self.shown < REJECTS_PER_WINDOW {
            self.shown += 1;
            warn!("ignored a DHCP packet: {reason}");
        } else {
            self.suppressed += 1;
            debug!("ignored a DHCP packet: {reason}");
        }
    }
}

async fn execute<N: NetOps>(ctx: &DriverContext<N>, sock: &UdpSocket, a: Action, rejects: &mut RejectLog) {
    match a {
        Action::Send { bytes, dest, .. } => {
            let to = match dest {
                Dest::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
                Dest::Unicast(ip) => {
                    // The first renewal of a session would otherwise broadcast an ARP request
                    // (copied into every session): seed the entry if another session knows it.
                    if !ctx.pinned.lock().unwrap().contains(&ip) {
                        keep_neighbour(ctx, ip).await;
                    }
                    SocketAddrV4::new(ip, 67)
                }
            };
            if let Err(e) = sock.send_to(&bytes, to).await {
                warn!(%to, "DHCP send: {e}");
            }
        }
        Action::ApplyLease { lease, previous } => {
            if let Err(e) = apply(ctx, &lease, previous.as_ref()).await {
                warn!(address = %lease.address, "applying lease: {e}");
            } else {
                info!(address = %lease.network(), server = %lease.server_id, lease_secs = lease.lease_secs, "lease applied");
            }
        }
        Action::RemoveLease(lease) => {
            for (dest, gw) in lease.routes() {
                let _ = ctx.inside.del_route(SESSION_IF, dest, next_hop(gw)).await;
            }
            if let Err(e) = ctx.inside.del_addr(SESSION_IF, lease.network()).await {
                warn!("removing address {}: {e}", lease.address);
            }
            info!(address = %lease.address, "lease removed");
        }
        Action::PersistLease(l) => {
            let name = lease_file(ctx.sid);
            let mut persisted = ctx.persisted.lock().unwrap();
            let r = match l {
                Some(l) if *persisted == Some((l.address, l.server_id)) => ctx.state.save_blob_unsynced(&name, &l),
                Some(l) => ctx.state.save_blob(&name, &l).inspect(|_| *persisted = Some((l.address, l.server_id))),
                None => ctx.state.remove_blob(&name).inspect(|_| *persisted = None),
            };
            if let Err(e) = r {
                warn!("persisting lease: {e}");
            }
        }
        Action::SetTimer(_) => {}
        Action::Reject { reason } => rejects.log(&reason),
    }
}

/// A lease route's gateway; 0.0.0.0 (RFC 3442) means on-link, i.e. no gateway.
pub fn next_hop(gw: Ipv4Addr) -> Option<Ipv4Addr> {
    Some(gw).filter(|g| !g.is_unspecified())
}

pub fn lifetimes(lease: &Lease) -> Option<Lifetimes> {
    let exp = lease.expires_at()?;
    // Rounded up: the kernel must never drop the address before the lease ends (the task
    // removes it at expiry itself); the kernel's copy only matters if the daemon is dead.
    let secs = exp.saturating_sub(now_ms()).div_ceil(1000).clamp(1, u64::from(u32::MAX - 1)) as u32;
    Some(Lifetimes { valid_secs: secs, preferred_secs: secs })
}

/// Whether two leases configure the interface the same way (they may differ in times).
fn same_configuration(a: &Lease, b: &Lease) -> bool {
    a.network() == b.network() && a.routes() == b.routes() && a.mtu == b.mtu && a.dns == b.dns && a.domain == b.domain && a.search == b.search
}

/// The neighbours the session talks to on its own: the DHCP server (renewals are unicast to
/// it) and the gateways of its routes, where they are on-link.
fn lease_neighbours(lease: &Lease) -> Vec<std::net::Ipv4Addr> {
    let mut ips = vec![lease.server_id];
    ips.extend(lease.routes().into_iter().filter_map(|(_, gw)| next_hop(gw)));
    ips.sort();
    ips.dedup();
    ips
}

/// MACs of the LAN neighbours sessions talk to (DHCP server, gateways), as some session's
/// kernel resolved them. All sessions share one uplink, so one session's answer serves all.
pub type LanNeighbours = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Ipv4Addr, Vec<u8>>>>;

/// Keeps the session's entries for its server and gateways out of the kernel's neighbour
/// garbage collection, and seeds them from other sessions so that most sessions never
/// broadcast an ARP request for them. The table is one for all namespaces; with hundreds of
/// sessions it is past its thresholds and idle entries are collected, so every renewal (a
/// unicast) had to broadcast an ARP request, which a bridge-mode macvlan copies into every
/// session's namespace: N² work, charged to the daemon. A seeded entry starts stale, so the
/// kernel confirms it by unicast on first use, and a wrong one fails over to a broadcast.
async fn keep_neighbours<N: NetOps>(ctx: &DriverContext<N>, lease: &Lease) {
    for ip in lease_neighbours(lease) {
        keep_neighbour(ctx, ip).await;
    }
}

/// `keep_neighbours` for one address: pins the kernel's entry if resolved (and remembers its
/// MAC for other sessions), else seeds it from what other sessions resolved.
async fn keep_neighbour<N: NetOps>(ctx: &DriverContext<N>, ip: Ipv4Addr) {
    let entry = ctx.inside.neighbour(SESSION_IF, ip).await;
    debug!(%ip, ?entry, "neighbour entry");
    let r = match entry {
        Ok(Some(n)) if n.resolved => {
            ctx.lan_neighbours.lock().unwrap().insert(ip, n.mac.clone());
            if n.pinned { Ok(true) } else { ctx.inside.pin_neighbour(SESSION_IF, ip, &n.mac, n.reachable).await.map(|_| true) }
        }
        Ok(_) => {
            let known = ctx.lan_neighbours.lock().unwrap().get(&ip).cloned();
            match known {
                Some(mac) => ctx.inside.pin_neighbour(SESSION_IF, ip, &mac, false).await.map(|_| true),
                None => Ok(false),
            }
        }
        Err(e) => Err(e),
    };
    match r {
        Ok(true) => {
            ctx.pinned.lock().unwrap().insert(ip);
        }
        Ok(false) => {}
        Err(e) => debug!(%ip, "keeping the neighbour entry: {e}"),
    }
}

/// Applies a lease: the new address first (so a changed address never leaves a gap), routes,
/// MTU, then the old address goes, then resolv.conf and hosts.
async fn apply<N: NetOps>(ctx: &DriverContext<N>, lease: &Lease, previous: Option<&Lease>) -> Result<(), NetError> {
    let net: Ipv4Net = lease.network();
    ctx.inside.add_addr(SESSION_IF, net, false, lifetimes(lease)).await?;
    if previous.is_some_and(|p| same_configuration(p, lease)) {
        // A renewal that changed nothing but the times: the new lifetimes are all the
        // interface needs (routes, MTU and files are as the previous lease left them).
        keep_neighbours(ctx, lease).await;
        return Ok(());
    }
    if let Some(mtu) = lease.mtu
        && mtu >= 576
    {
        ctx.inside.set_mtu(SESSION_IF, u32::from(mtu)).await?;
    }
    let routes = lease.routes();
    for (dest, gw) in &routes {
        ctx.inside.add_route(SESSION_IF, *dest, next_hop(*gw)).await?;
    }
    if let Some(prev) = previous {
        for (dest, gw) in prev.routes() {
            if !routes.contains(&(dest, gw)) {
                let _ = ctx.inside.del_route(SESSION_IF, dest, next_hop(gw)).await;
            }
        }
        if prev.address != lease.address {
            ctx.inside.del_addr(SESSION_IF, prev.network()).await?;
            // Sessions built before promote_secondaries was set lose the new address with the
            // old one: put it and its routes back (both idempotent).
            ctx.inside.add_addr(SESSION_IF, net, false, lifetimes(lease)).await?;
            for (dest, gw) in &routes {
                ctx.inside.add_route(SESSION_IF, *dest, next_hop(*gw)).await?;
            }
        }
    }
    keep_neighbours(ctx, lease).await;
    let resolv = crate::files::resolv_conf(&lease.dns, lease.domain.as_deref(), &lease.search);
    let hosts = crate::files::hosts(&ctx.hostname, Some(lease.address), ctx.loopback);
    let mut written = ctx.written.lock().unwrap();
    if written.0 != resolv {
        (ctx.write_file)(&ctx.netns, "resolv.conf", &resolv)?;
        written.0 = resolv;
    }
    if written.1 != hosts {
        (ctx.write_file)(&ctx.netns, "hosts", &hosts)?;
        written.1 = hosts;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakePlatform;
    use crate::platform::Platform;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const SERVER_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];

    fn lease(addr: [u8; 4], now: Millis) -> Lease {
        Lease {
            address: Ipv4Addr::from(addr),
            prefix_len: 24,
            server_id: SERVER,
            routers: vec![SERVER],
            classless_routes: vec![],
            dns: vec![SERVER],
            domain: None,
            search: vec![],
            mtu: None,
            broadcast: None,
            lease_secs: 120,
            t1_secs: 60,
            t2_secs: 105,
            acquired_at: now,
        }
    }

    async fn context(p: &FakePlatform, sid: u64, dir: &std::path::Path, lan: &LanNeighbours) -> DriverContext<crate::fake::FakeNet> {
        let sid = Sid::new(sid).unwrap();
        let netns = sid.netns_name();
        p.create_netns(&netns, &[]).await.unwrap();
        p.host().create_macvlan("br-lan", SESSION_IF, [2, 0, 0, 0, 0, sid.get() as u8], &netns).await.unwrap();
        DriverContext {
            sid,
            netns: netns.clone(),
            inside: p.inside(&netns).await.unwrap(),
            state: StateDir::open(dir).unwrap(),
            hostname: "host".into(),
            loopback: Ipv4Addr::new(127, 0, 0, 2),
            write_file: p.file_writer(),
            written: Default::default(),
            persisted: Default::default(),
            lan_neighbours: lan.clone(),
            pinned: Default::default(),
        }
    }

    #[tokio::test]
    async fn neighbours_are_pinned_once_resolved_and_seeded_into_other_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let lan = LanNeighbours::default();
        let a = context(&p, 1, dir.path(), &lan).await;
        let b = context(&p, 2, dir.path(), &lan).await;
        let l = lease([10, 0, 0, 10], now_ms());
        // Nothing resolved yet, nothing known: nothing to pin (no guessing).
        apply(&a, &l, None).await.unwrap();
        assert!(p.neighbour_entry("sessiond-1", SESSION_IF, SERVER).is_none());
        // Session 1's kernel resolves the server (its first unicast renewal): pinned as is.
        p.learn_neighbour("sessiond-1", SESSION_IF, SERVER, &SERVER_MAC);
        apply(&a, &l, Some(&l)).await.unwrap();
        let n = p.neighbour_entry("sessiond-1", SESSION_IF, SERVER).unwrap();
        assert!(n.pinned && n.mac == SERVER_MAC && n.reachable, "{n:?}");
        // Session 2 binds later: seeded from session 1's answer, stale so its kernel confirms it.
        apply(&b, &lease([10, 0, 0, 11], now_ms()), None).await.unwrap();
        let n = p.neighbour_entry("sessiond-2", SESSION_IF, SERVER).expect("seeded");
        assert!(n.pinned && n.mac == SERVER_MAC && !n.reachable, "{n:?}");
        // A pinned entry is not rewritten on every renewal.
        p.clear_log();
        apply(&a, &l, Some(&l)).await.unwrap();
        assert!(!p.log().iter().any(|l| l.contains("neigh pin")), "{:?}", p.log());
    }

    #[tokio::test]
    async fn a_renewal_that_changes_nothing_only_refreshes_the_lifetimes() {
        let dir = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let a = context(&p, 1, dir.path(), &LanNeighbours::default()).await;
        let first = lease([10, 0, 0, 10], now_ms());
        apply(&a, &first, None).await.unwrap();
        p.clear_log();
        let renewed = lease([10, 0, 0, 10], now_ms() + 60_000);
        apply(&a, &renewed, Some(&first)).await.unwrap();
        assert_eq!(p.log(), vec!["sessiond-1: addr add 10.0.0.10/24 dev eth0 valid 180 preferred 180"]);
        // A changed option takes the full path (routes, files).
        p.clear_log();
        let mut moved = renewed.clone();
        moved.dns = vec![Ipv4Addr::new(10, 0, 0, 53)];
        apply(&a, &moved, Some(&renewed)).await.unwrap();
        assert!(p.log().iter().any(|l| l.contains("route")) && p.log().iter().any(|l| l.contains("resolv.conf")), "{:?}", p.log());
    }
}
