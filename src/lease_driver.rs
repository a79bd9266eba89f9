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
    /// Release the lease (if any), then end.
    Release(oneshot::Sender<()>),
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

    /// Sends DHCPRELEASE (if bound), removes the address, and waits for the task to end.
    pub async fn release(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Command::Release(done_tx)).await.is_ok() {
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
                let done = cmd.map(|Command::Release(done)| done);
                actions = client.on_event(Event::Release, now_ms());
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
                Dest::Unicast(ip) => SocketAddrV4::new(ip, 67),
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
            let r = match l {
                Some(l) => ctx.state.save_blob(&name, &l),
                None => ctx.state.remove_blob(&name),
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

/// Applies a lease: the new address first (so a changed address never leaves a gap), routes,
/// MTU, then the old address goes, then resolv.conf and hosts.
async fn apply<N: NetOps>(ctx: &DriverContext<N>, lease: &Lease, previous: Option<&Lease>) -> Result<(), NetError> {
    let net: Ipv4Net = lease.network();
    ctx.inside.add_addr(SESSION_IF, net, false, lifetimes(lease)).await?;
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
