//! The async driver of one session's sans-IO DHCP client: a tokio task (no thread per session)
//! that feeds the machine packets, timer expiries and the release command, and does what the
//! machine says (send, configure the interface through netlink, write files, persist the lease).
//! It decides nothing about the protocol itself.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::acd::Conflict;
use crate::acd_driver::{AcdLink, Outcome};
use crate::dhcp::{Action, Client, ClientConfig, Dest, Event, Lease, Millis, RejectReason, State};
use crate::dhcp_session::{lifetimes, next_hop};
use crate::metrics::Direction;
use crate::netlink::{NetError, NetOps};
use crate::platform::ArpIo;
use crate::session::SESSION_IF;
use crate::sid::Sid;
use crate::state::StateDir;

pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the driver last knew; `status` shows it and `start` waits on it.
#[derive(Clone, Debug)]
pub struct LeaseStatus {
    pub state: State,
    pub lease: Option<Lease>,
    pub discovers: u32,
    /// Set when the socket failed (the task keeps trying).
    pub failed: Option<String>,
    /// Why the last lease could not be fully put on the interface (an address, route, MTU or
    /// file step failed); `None` once one was. A session must not be reported up meanwhile.
    pub unapplied: Option<String>,
    /// Why the last address was declined or given up (address conflict); cleared once bound.
    pub lost: Option<String>,
    /// Why the client stopped trying for good (a persistent conflict, a cloned machine).
    pub stopped: Option<Stopped>,
    /// When the held lease is renewed: its T1 with the client's fuzz (RFC 2131 §4.4.5).
    pub next_renewal: Option<crate::dhcp::Millis>,
    /// When the held lease is rebound: its T2 with the client's fuzz.
    pub next_rebinding: Option<crate::dhcp::Millis>,
}

/// Why a DHCP client stopped trying for good.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    #[error(
        "gave up after {declined} offered addresses in a row were in use by other hosts (the last, {address}, by {}): \
         a persistent address conflict on the LAN (RFC 5227 MAX_CONFLICTS)",
        crate::mac::format_mac(by)
    )]
    GaveUp { declined: u32, address: Ipv4Addr, by: [u8; 6] },
    /// The offered address is held by a copy of this machine (`Conflict::SameMac`): taking it
    /// would share it, declining it would take it from the copy.
    #[error("address {address} {conflict}")]
    Clone { address: Ipv4Addr, conflict: Conflict },
}

impl Default for LeaseStatus {
    fn default() -> Self {
        LeaseStatus {
            state: State::Init,
            lease: None,
            discovers: 0,
            failed: None,
            unapplied: None,
            lost: None,
            stopped: None,
            next_renewal: None,
            next_rebinding: None,
        }
    }
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

/// What the task needs from the session: where to configure leases and write what it learns.
pub struct DriverContext<N: NetOps> {
    pub sid: Sid,
    pub netns: String,
    pub inside: N,
    pub state: StateDir,
    pub hostname: String,
    pub loopback: Ipv4Addr,
    pub write_file: crate::platform::FileWriter,
    pub lan_neighbours: LanNeighbours,
    /// The uplink's MTU: a lease's MTU (option 26) above it is clamped to it (a macvlan
    /// cannot be larger than its parent, and frames larger than the uplink's would be dropped).
    pub uplink_mtu: Option<u32>,
    /// Told each lease status (watchers see address changes); counts messages and renewals.
    pub events: crate::events::Events,
    pub metrics: crate::metrics::Metrics,
    /// Where the lease goes (`inside` is that namespace's netlink).
    pub target: LeaseTarget,
}

/// Where a session's lease goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseTarget {
    /// `eth0` in the session's namespace, with resolv.conf and hosts under /etc/netns.
    Namespace,
    /// A programs-mode session's own link in the host namespace (`programs::lease`).
    HostLink(crate::programs::lease::HostLink),
}

impl<N: NetOps> DriverContext<N> {
    /// The link the lease goes on.
    fn link(&self) -> &str {
        match &self.target {
            LeaseTarget::Namespace => SESSION_IF,
            LeaseTarget::HostLink(at) => &at.link,
        }
    }

    async fn add_address(&self, lease: &Lease) -> Result<(), NetError> {
        match &self.target {
            LeaseTarget::Namespace => self.inside.add_addr(SESSION_IF, lease.network(), false, lifetimes(lease)).await,
            LeaseTarget::HostLink(at) => at.add_address(&self.inside, lease).await,
        }
    }

    async fn del_address(&self, lease: &Lease) -> Result<(), NetError> {
        match &self.target {
            LeaseTarget::Namespace => self.inside.del_addr(SESSION_IF, lease.network()).await,
            LeaseTarget::HostLink(at) => at.del_address(&self.inside, lease).await,
        }
    }

    async fn add_route(&self, lease: &Lease, dest: Ipv4Net, gw: Ipv4Addr) -> Result<(), NetError> {
        match &self.target {
            LeaseTarget::Namespace => self.inside.add_route(SESSION_IF, dest, next_hop(gw)).await,
            LeaseTarget::HostLink(at) => at.add_route(&self.inside, lease, dest, next_hop(gw)).await,
        }
    }

    async fn del_route(&self, dest: Ipv4Net, gw: Ipv4Addr) -> Result<(), NetError> {
        match &self.target {
            LeaseTarget::Namespace => self.inside.del_route(SESSION_IF, dest, next_hop(gw)).await,
            LeaseTarget::HostLink(at) => at.del_route(&self.inside, dest).await,
        }
    }
}

/// The task's memory of what it already did, so that a renewal that changes nothing costs
/// almost nothing.
#[derive(Default)]
struct Done {
    /// What was last written to resolv.conf and hosts: a renewal that changes nothing
    /// rewrites (and fsyncs) nothing.
    written: (String, String),
    /// The address and server of the lease last persisted durably: a renewal of the same
    /// lease is persisted without fsync (a crash loses only its new expiry, and INIT-REBOOT
    /// asks the server again anyway).
    persisted: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Neighbours whose entry this task has pinned or seeded.
    pinned: std::collections::HashSet<Ipv4Addr>,
    /// Why the last ApplyLease failed part-way (see `LeaseStatus::unapplied`): the next one
    /// then takes the full path, whatever changed.
    unapplied: Option<String>,
}

/// A session's context plus what its task has done: everything `execute` touches.
struct Task<N: NetOps> {
    ctx: DriverContext<N>,
    done: Done,
    rejects: RejectLog,
    renewals: RenewLog,
}

pub fn lease_file(sid: Sid) -> String {
    format!("leases/{sid}.json")
}

/// A seed from the OS RNG (for the DHCP and ACD machines).
pub(crate) fn seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
        return now_ms() ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}

fn seeded(mut cfg: ClientConfig) -> Client {
    cfg.seed = seed();
    Client::new(cfg)
}

impl LeaseDriver {
    /// Starts the task with `first` (`Event::Start`, or `Event::StartWithLease` for INIT-REBOOT).
    /// With `acd`, each new address is probed before use and the held one defended.
    pub fn spawn<N: NetOps + 'static, A: ArpIo>(
        ctx: DriverContext<N>,
        socket: UdpSocket,
        acd: Option<AcdLink<A>>,
        cfg: ClientConfig,
        first: Event,
    ) -> LeaseDriver {
        let (tx, rx) = mpsc::channel(4);
        let (status_tx, status_rx) = watch::channel(LeaseStatus::default());
        // A root span: the task outlives the request that started it.
        let span = info_span!(parent: None, "dhcp", sid = %ctx.sid);
        let task = Task { ctx, done: Done::default(), rejects: RejectLog::default(), renewals: RenewLog::default() };
        let client = seeded(cfg).with_address_check(acd.is_some());
        let task = tokio::spawn(run(task, socket, acd, client, first, rx, status_tx).instrument(span));
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

    /// Waits until bound with the lease fully applied, the socket fails, the lease cannot be
    /// applied, the client stops trying (a persistent conflict), or `timeout` passes.
    pub async fn wait_bound(&mut self, timeout: Duration) -> Result<Lease, WaitError> {
        let seen = tokio::time::timeout(timeout, self.status.wait_for(|s| bound_outcome(s).is_some())).await.map(|w| w.map(|s| bound_outcome(&s)));
        match seen {
            Ok(Ok(outcome)) => outcome.expect("waited for an outcome"),
            Ok(Err(_)) => Err(WaitError::Ended),
            Err(_) => {
                let s = self.status.borrow();
                match &s.lost {
                    Some(why) => Err(WaitError::Declined(why.clone())),
                    None => Err(WaitError::Unanswered(s.discovers)),
                }
            }
        }
    }
}

/// What a start waiting on the task learns from one status, if it is an outcome: a bound
/// lease counts only once it is fully on the interface (a half-applied one is not "up").
fn bound_outcome(s: &LeaseStatus) -> Option<Result<Lease, WaitError>> {
    if let Some(why) = &s.stopped {
        return Some(Err(WaitError::Stopped(why.clone())));
    }
    if let Some(f) = &s.failed {
        return Some(Err(WaitError::Failed(f.clone())));
    }
    if s.state != State::Bound {
        return None;
    }
    Some(match (&s.unapplied, &s.lease) {
        (Some(why), _) => Err(WaitError::NotApplied(why.clone())),
        (None, Some(l)) => Ok(l.clone()),
        (None, None) => Err(WaitError::NoLease),
    })
}

/// Why a start got no lease.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WaitError {
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Stopped(Stopped),
    #[error("no lease")]
    NoLease,
    #[error("the DHCP task ended")]
    Ended,
    #[error("{0} DISCOVERs went unanswered")]
    Unanswered(u32),
    #[error("{0}")]
    NotApplied(String),
    #[error("the last address offered was in use: {0}")]
    Declined(String),
}

/// Releases a lease that no task holds (a daemon that died left it): runs one machine for
/// `Event::ReleaseOrphan` and does what it says. The lease's address must be on the
/// interface, so the kernel can send from it. Returns whether a DHCPRELEASE went out.
pub async fn release_orphan<N: NetOps>(ctx: DriverContext<N>, socket: &UdpSocket, cfg: ClientConfig, lease: Lease) -> Result<bool, std::io::Error> {
    let mut task = Task { ctx, done: Done::default(), rejects: RejectLog::default(), renewals: RenewLog::default() };
    let mut sent = false;
    for a in seeded(cfg).on_event(Event::ReleaseOrphan(lease), now_ms()) {
        sent |= matches!(a, Action::Send { .. });
        task.execute(socket, a).await?;
    }
    Ok(sent)
}

async fn run<N: NetOps, A: ArpIo>(
    mut task: Task<N>,
    sock: UdpSocket,
    mut acd: Option<AcdLink<A>>,
    mut client: Client,
    first: Event,
    mut rx: mpsc::Receiver<Command>,
    status: watch::Sender<LeaseStatus>,
) {
    let mut actions = client.on_event(first, now_ms());
    let mut deadline: Option<Millis> = None;
    let mut buf = vec![0u8; 4096];
    let mut arp_buf = vec![0u8; 1536];
    let mut last_state = client.state();
    let mut failed = None;
    let (mut lost, mut stopped) = (None, None);
    info!(state = last_state.as_str(), "DHCP client started");
    loop {
        while !actions.is_empty() {
            let mut answers = Vec::new();
            for a in std::mem::take(&mut actions) {
                match a {
                    Action::SetTimer(at) => deadline = Some(at),
                    Action::CheckAddress(addr) => match acd.as_mut() {
                        Some(l) => l.probe(addr).await,
                        None => answers.push(Event::AddressFree),
                    },
                    Action::GiveUp { declined, address, by } => {
                        let why = Stopped::GaveUp { declined, address, by };
                        warn!("{why}");
                        stopped = Some(why);
                    }
                    a => {
                        let applied = match &a {
                            Action::ApplyLease { lease, .. } => Some(lease.address),
                            _ => None,
                        };
                        let removed = match &a {
                            Action::RemoveLease(l) => Some(l.address),
                            _ => None,
                        };
                        if let Err(e) = task.execute(&sock, a).await {
                            warn!("DHCP send: {e}");
                        }
                        if let Some(l) = acd.as_mut() {
                            if let Some(addr) = removed {
                                l.stop(Some(addr));
                            }
                            if let Some(addr) = applied {
                                l.defend(addr);
                            }
                        }
                    }
                }
            }
            for ev in answers {
                actions.extend(client.on_event(ev, now_ms()));
            }
        }
        if client.state() != last_state {
            task.log_transition(last_state, client.state());
            task.ctx.metrics.dhcp_state_changed(last_state, client.state());
            last_state = client.state();
        }
        if client.state() == State::Bound {
            lost = None;
        }
        task.report(
            &status,
            LeaseStatus {
                state: client.state(),
                lease: client.lease().cloned(),
                discovers: client.discovers_sent(),
                failed: failed.take(),
                unapplied: task.done.unapplied.clone(),
                lost: lost.clone(),
                stopped: stopped.clone(),
                next_renewal: client.lease_deadlines().map(|(renew, ..)| renew),
                next_rebinding: client.lease_deadlines().map(|(_, rebind, _)| rebind),
            },
        );
        if client.state() == State::Released {
            return;
        }
        let wake = deadline.map(|t| tokio::time::Instant::now() + Duration::from_millis(t.saturating_sub(now_ms())));
        let arp_input = async {
            match acd.as_ref() {
                Some(l) => l.wait(&mut arp_buf).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            input = arp_input => {
                let Some(l) = acd.as_mut() else { continue };
                match l.handle(input).await {
                    None => {}
                    Some(Outcome::Free(_)) => actions = client.on_event(Event::AddressFree, now_ms()),
                    Some(Outcome::Conflict(address, conflict @ Conflict::SameMac { .. })) => {
                        // Neither DECLINE nor RELEASE: the server's lease is the copy's too.
                        let why = Stopped::Clone { address, conflict };
                        warn!("{why}");
                        stopped = Some(why);
                    }
                    Some(Outcome::Conflict(addr, c @ (Conflict::InUse { by } | Conflict::Lost { by }))) => {
                        let why = format!("address {addr} {c}: sent DHCPDECLINE, asking for another one");
                        warn!("{why}");
                        lost = Some(why);
                        actions = client.on_event(Event::AddressInUse { by }, now_ms());
                    }
                }
            },
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    debug!(%from, bytes = n, "DHCP packet");
                    task.ctx.metrics.dhcp_message(Direction::Received, &buf[..n]);
                    actions = client.on_event(Event::Packet { bytes: buf[..n].to_vec() }, now_ms());
                }
                Err(e) => {
                    warn!("DHCP socket: {e}");
                    failed = Some(format!("DHCP socket: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                deadline = None;
                actions = client.on_event(Event::Timer, now_ms());
            }
            cmd = rx.recv() => {
                let (remove_address, done) = match cmd {
                    Some(Command::Release { remove_address, done }) => (remove_address, Some(done)),
                    None => (true, None),
                };
                for a in client.on_event(Event::Release, now_ms()) {
                    if matches!(a, Action::RemoveLease(_)) && !remove_address {
                        continue; // the namespace takes the address with it
                    }
                    if let Err(e) = task.execute(&sock, a).await {
                        warn!("DHCP send: {e}");
                    }
                }
                task.report(&status, LeaseStatus { state: State::Released, ..LeaseStatus::default() });
                if let Some(d) = done {
                    let _ = d.send(());
                }
                return;
            }
        }
    }
}

/// A per-minute budget of log lines: a hostile or chatty LAN, or a server with short lease
/// times, must not flood the journal from every session. Past the budget, lines go to debug
/// and are counted; the count is said once when the next minute begins.
struct LogBudget {
    per_minute: u32,
    window_start: Millis,
    shown: u32,
    suppressed: u32,
}

const MINUTE_MS: Millis = 60_000;

impl LogBudget {
    const fn new(per_minute: u32) -> LogBudget {
        LogBudget { per_minute, window_start: 0, shown: 0, suppressed: 0 }
    }

    /// Whether one more line fits at `now`; `dropped` hears how many the previous minute
    /// suppressed, when a new one begins.
    fn admit(&mut self, now: Millis, dropped: impl FnOnce(u32)) -> bool {
        if now.saturating_sub(self.window_start) >= MINUTE_MS {
            if self.suppressed > 0 {
                dropped(self.suppressed);
            }
            (self.window_start, self.shown, self.suppressed) = (now, 0, 0);
        }
        let fits = self.shown < self.per_minute;
        if fits {
            self.shown += 1;
        } else {
            self.suppressed += 1;
        }
        fits
    }
}

/// Rejected packets: warnings within a budget; replies meant for other clients are only ever
/// logged at debug.
struct RejectLog(LogBudget);

impl Default for RejectLog {
    fn default() -> Self {
        RejectLog(LogBudget::new(10))
    }
}

impl RejectLog {
    fn log(&mut self, reason: &RejectReason) {
        if reason.is_routine() {
            debug!("ignored a DHCP packet: {reason}");
        } else if self.0.admit(now_ms(), |n| warn!("{n} more DHCP packets were ignored in the last minute (not logged)")) {
            warn!("ignored a DHCP packet: {reason}");
        } else {
            debug!("ignored a DHCP packet: {reason}");
        }
    }
}

/// Routine renewals (bound -> renewing -> bound, and the lease applied by it): the first few
/// of each minute are logged, the rest at debug. State changes that are not a routine renewal
/// (rebinding, NAK, expiry) are always logged.
struct RenewLog {
    /// Every renewal of a lease of 24 s or more fits.
    budget: LogBudget,
    /// The renewal under way is one of the suppressed.
    quiet: bool,
}

impl Default for RenewLog {
    fn default() -> Self {
        RenewLog { budget: LogBudget::new(5), quiet: false }
    }
}

impl RenewLog {
    /// A renewal begins at `now`: whether its lines are logged.
    fn begin(&mut self, now: Millis) -> bool {
        self.quiet = !self.budget.admit(now, |n| info!("{n} more lease renewals in the last minute (not logged)"));
        !self.quiet
    }
}

impl<N: NetOps> Task<N> {
    /// Logs a change of the machine's state; routine renewals through `RenewLog`.
    fn log_transition(&mut self, from: State, to: State) {
        if (from, to) == (State::Bound, State::Renewing) {
            self.renewals.begin(now_ms());
        }
        if self.renewals.quiet && matches!((from, to), (State::Bound, State::Renewing) | (State::Renewing, State::Bound)) {
            debug!("DHCP state {from} -> {to}");
        } else {
            info!("DHCP state {from} -> {to}");
        }
        if from == State::Renewing {
            self.renewals.quiet = false;
        }
    }

    /// The one place a task's lease status changes: for `status` and `start` (the watch
    /// channel) and for watchers (the events hub).
    fn report(&self, status: &watch::Sender<LeaseStatus>, s: LeaseStatus) {
        self.ctx.events.lease(self.ctx.sid, crate::dhcp_session::LeaseView::of(&s));
        let _ = status.send(s);
    }

    /// Does one action; only a failed send is returned (everything else is logged here).
    async fn execute(&mut self, sock: &UdpSocket, a: Action) -> std::io::Result<()> {
        let ctx = &self.ctx;
        match a {
            Action::Send { bytes, dest, .. } => {
                let to = match dest {
                    Dest::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
                    Dest::Unicast(ip) => {
                        // The first renewal of a session would otherwise broadcast an ARP request
                        // (copied into every session): seed the entry if another session knows it.
                        if !self.done.pinned.contains(&ip) {
                            keep_neighbour(ctx, &mut self.done.pinned, ip).await;
                        }
                        SocketAddrV4::new(ip, 67)
                    }
                };
                sock.send_to(&bytes, to).await.map(|_| ()).map_err(|e| std::io::Error::new(e.kind(), format!("to {to}: {e}")))?;
                ctx.metrics.dhcp_message(Direction::Sent, &bytes);
            }
            Action::ApplyLease { lease, previous } => match apply(ctx, &mut self.done, &lease, previous.as_ref()).await {
                Err(e) => {
                    warn!(address = %lease.address, "applying lease: {e}");
                    self.done.unapplied = Some(format!("the lease of {} from {} could not be applied: {e}", lease.network(), lease.server_id));
                }
                Ok(()) => {
                    self.done.unapplied = None;
                    if self.renewals.quiet {
                        debug!(address = %lease.address, prefix_len = lease.prefix_len, server = %lease.server_id, lease_secs = lease.lease_secs, "lease applied");
                    } else {
                        info!(address = %lease.address, prefix_len = lease.prefix_len, server = %lease.server_id, lease_secs = lease.lease_secs, "lease applied");
                    }
                }
            },
            Action::RemoveLease(lease) => {
                for (dest, gw) in lease.routes() {
                    let _ = ctx.del_route(dest, gw).await;
                }
                if let Err(e) = ctx.del_address(&lease).await {
                    warn!("removing address {}: {e}", lease.address);
                }
                info!(address = %lease.address, "lease removed");
            }
            Action::PersistLease(l) => {
                let name = lease_file(ctx.sid);
                let persisted = &mut self.done.persisted;
                let r = match l {
                    Some(l) if *persisted == Some((l.address, l.server_id)) => ctx.state.save_blob_unsynced(&name, &l),
                    Some(l) => ctx
                        .state
                        .save_blob(&name, &l)
                        // The slot's memory of its address, which outlives the lease (`stop`):
                        // its next start asks for it again.
                        .and_then(|_| match ctx.state.load_last_address(ctx.sid) {
                            Some(a) if a == l.address => Ok(()),
                            _ => ctx.state.save_last_address(ctx.sid, l.address),
                        })
                        .inspect(|_| *persisted = Some((l.address, l.server_id))),
                    None => ctx.state.remove_blob(&name).inspect(|_| *persisted = None),
                };
                if let Err(e) = r {
                    warn!("persisting lease: {e}");
                }
            }
            // the run loop keeps the deadline, probes and gives up
            Action::SetTimer(_) | Action::CheckAddress(_) | Action::GiveUp { .. } => {}
            Action::Reject { reason } => {
                ctx.metrics.dhcp_rejected(&reason);
                self.rejects.log(&reason)
            }
        }
        Ok(())
    }
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
/// garbage collection, and seeds them from other sessions, so renewals need no broadcast ARP
/// (why: docs/performance.md, "Design notes: pinned neighbour entries").
async fn keep_neighbours<N: NetOps>(ctx: &DriverContext<N>, pinned: &mut std::collections::HashSet<Ipv4Addr>, lease: &Lease) {
    for ip in lease_neighbours(lease) {
        keep_neighbour(ctx, pinned, ip).await;
    }
}

/// `keep_neighbours` for one address: pins the kernel's entry if resolved (and remembers its
/// MAC for other sessions), else seeds it from what other sessions resolved.
async fn keep_neighbour<N: NetOps>(ctx: &DriverContext<N>, pinned: &mut std::collections::HashSet<Ipv4Addr>, ip: Ipv4Addr) {
    let entry = ctx.inside.neighbour(ctx.link(), ip).await;
    debug!(%ip, ?entry, "neighbour entry");
    let r = match entry {
        Ok(Some(n)) if n.resolved => {
            ctx.lan_neighbours.lock().unwrap().insert(ip, n.mac.clone());
            if n.pinned { Ok(true) } else { ctx.inside.pin_neighbour(ctx.link(), ip, &n.mac, n.reachable).await.map(|_| true) }
        }
        Ok(_) => {
            let known = ctx.lan_neighbours.lock().unwrap().get(&ip).cloned();
            match known {
                Some(mac) => ctx.inside.pin_neighbour(ctx.link(), ip, &mac, false).await.map(|_| true),
                None => Ok(false),
            }
        }
        Err(e) => Err(e),
    };
    match r {
        Ok(true) => {
            pinned.insert(ip);
        }
        Ok(false) => {}
        Err(e) => debug!(%ip, "keeping the neighbour entry: {e}"),
    }
}

/// Applies a lease: the new address first (so a changed address never leaves a gap), routes,
/// MTU, then the old address goes, then resolv.conf and hosts.
async fn apply<N: NetOps>(ctx: &DriverContext<N>, done: &mut Done, lease: &Lease, previous: Option<&Lease>) -> Result<(), NetError> {
    ctx.add_address(lease).await?;
    if done.unapplied.is_none() && previous.is_some_and(|p| same_configuration(p, lease)) {
        // A renewal that changed nothing but the times: the new lifetimes are all the
        // interface needs (routes, MTU and files are as the previous lease left them).
        keep_neighbours(ctx, &mut done.pinned, lease).await;
        return Ok(());
    }
    if let Some(mtu) = lease.mtu
        && mtu >= 576
    {
        let mtu = match ctx.uplink_mtu {
            Some(max) if u32::from(mtu) > max => {
                warn!(address = %lease.address, "the server's MTU {mtu} is above the uplink's {max}: using {max}");
                max
            }
            _ => u32::from(mtu),
        };
        ctx.inside.set_mtu(ctx.link(), mtu).await?;
    }
    let routes = lease.routes();
    for (dest, gw) in &routes {
        ctx.add_route(lease, *dest, *gw).await?;
    }
    if let Some(prev) = previous {
        for (dest, gw) in prev.routes() {
            if !routes.contains(&(dest, gw)) {
                let _ = ctx.del_route(dest, gw).await;
            }
        }
        if prev.address != lease.address {
            ctx.del_address(prev).await?;
            // Sessions built before promote_secondaries was set lose the new address with the
            // old one (and a host link's subnet route is the old one's too): put it and its
            // routes back (both idempotent).
            ctx.add_address(lease).await?;
            for (dest, gw) in &routes {
                ctx.add_route(lease, *dest, *gw).await?;
            }
        }
    }
    keep_neighbours(ctx, &mut done.pinned, lease).await;
    if ctx.target != LeaseTarget::Namespace {
        return Ok(()); // the host's files stay (see `programs::lease`)
    }
    let resolv = crate::files::resolv_conf(&lease.dns, lease.domain.as_deref(), &lease.search);
    let hosts = crate::files::hosts(&ctx.hostname, Some(lease.address), ctx.loopback);
    let written = &mut done.written;
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
        Lease { server_id: SERVER, routers: vec![SERVER], dns: vec![SERVER], ..Lease::sample(Ipv4Addr::from(addr), now) }
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
            lan_neighbours: lan.clone(),
            uplink_mtu: Some(1500),
            events: Default::default(),
            metrics: Default::default(),
            target: LeaseTarget::Namespace,
        }
    }

    #[tokio::test]
    async fn neighbours_are_pinned_once_resolved_and_seeded_into_other_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let lan = LanNeighbours::default();
        let a = context(&p, 1, dir.path(), &lan).await;
        let b = context(&p, 2, dir.path(), &lan).await;
        let (mut da, mut db) = (Done::default(), Done::default());
        let l = lease([10, 0, 0, 10], now_ms());
        // Nothing resolved yet, nothing known: nothing to pin (no guessing).
        apply(&a, &mut da, &l, None).await.unwrap();
        assert!(p.neighbour_entry("sessiond-1", SESSION_IF, SERVER).is_none());
        // Session 1's kernel resolves the server (its first unicast renewal): pinned as is.
        p.learn_neighbour("sessiond-1", SESSION_IF, SERVER, &SERVER_MAC);
        apply(&a, &mut da, &l, Some(&l)).await.unwrap();
        let n = p.neighbour_entry("sessiond-1", SESSION_IF, SERVER).unwrap();
        assert!(n.pinned && n.mac == SERVER_MAC && n.reachable, "{n:?}");
        // Session 2 binds later: seeded from session 1's answer, stale so its kernel confirms it.
        apply(&b, &mut db, &lease([10, 0, 0, 11], now_ms()), None).await.unwrap();
        let n = p.neighbour_entry("sessiond-2", SESSION_IF, SERVER).expect("seeded");
        assert!(n.pinned && n.mac == SERVER_MAC && !n.reachable, "{n:?}");
        // A pinned entry is not rewritten on every renewal.
        p.clear_log();
        apply(&a, &mut da, &l, Some(&l)).await.unwrap();
        assert!(!p.log().iter().any(|l| l.contains("neigh pin")), "{:?}", p.log());
    }

    #[tokio::test]
    async fn a_renewal_that_changes_nothing_only_refreshes_the_lifetimes() {
        let dir = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let a = context(&p, 1, dir.path(), &LanNeighbours::default()).await;
        let mut da = Done::default();
        let first = lease([10, 0, 0, 10], now_ms());
        apply(&a, &mut da, &first, None).await.unwrap();
        p.clear_log();
        let renewed = lease([10, 0, 0, 10], now_ms() + 60_000);
        apply(&a, &mut da, &renewed, Some(&first)).await.unwrap();
        assert_eq!(p.log(), vec!["sessiond-1: addr add 10.0.0.10/24 dev eth0 valid 180 preferred 180"]);
        // A changed option takes the full path (routes, files).
        p.clear_log();
        let mut moved = renewed.clone();
        moved.dns = vec![Ipv4Addr::new(10, 0, 0, 53)];
        apply(&a, &mut da, &moved, Some(&renewed)).await.unwrap();
        assert!(p.log().iter().any(|l| l.contains("route")) && p.log().iter().any(|l| l.contains("resolv.conf")), "{:?}", p.log());
    }

    #[tokio::test]
    async fn a_programs_mode_lease_goes_on_the_session_link_in_the_host_namespace_and_writes_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        p.add_host_link("sdp3");
        let mut ctx = context(&p, 3, dir.path(), &LanNeighbours::default()).await;
        ctx.inside = p.host().clone();
        ctx.target = LeaseTarget::HostLink(crate::programs::lease::HostLink::of(ctx.sid));
        let mut t = task(ctx);
        let sock = socket().await;
        p.clear_log();
        let first = lease([10, 0, 0, 57], now_ms());
        t.execute(&sock, Action::ApplyLease { lease: first.clone(), previous: None }).await.unwrap();
        assert_eq!(t.done.unapplied, None);
        let log = p.log();
        assert_eq!(
            log,
            [
                "host: addr add 10.0.0.57/24 dev sdp3 noprefixroute valid 120 preferred 120",
                "host: route 10.0.0.0/24 dev sdp3 src 10.0.0.57 table 268435459",
                "host: rule add from 10.0.0.57 lookup 268435459 pref 1000",
                "host: route 0.0.0.0/0 via 10.0.0.1 dev sdp3 src 10.0.0.57 table 268435459",
            ],
            "nothing in the main table, nothing under /etc/netns: {log:?}"
        );
        // A new address: the old one's rule goes, the new one has its own; then all of it goes.
        let moved = lease([10, 0, 0, 58], now_ms());
        t.execute(&sock, Action::ApplyLease { lease: moved.clone(), previous: Some(first) }).await.unwrap();
        assert!(p.objects().contains("rule:host/1000/268435459/10.0.0.58") && !p.objects().contains("rule:host/1000/268435459/10.0.0.57"), "{:?}", p.objects());
        t.execute(&sock, Action::RemoveLease(moved)).await.unwrap();
        assert!(p.objects().iter().all(|o| !o.contains("sdp3/") && !o.starts_with("rule:")), "{:?}", p.objects());
    }

    fn task(ctx: DriverContext<crate::fake::FakeNet>) -> Task<crate::fake::FakeNet> {
        Task { ctx, done: Done::default(), rejects: RejectLog::default(), renewals: RenewLog::default() }
    }

    async fn socket() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    #[tokio::test]
    async fn an_mtu_above_the_uplinks_is_clamped_and_the_lease_fully_applied() {
        let dir = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let mut t = task(context(&p, 1, dir.path(), &LanNeighbours::default()).await);
        let l = Lease { mtu: Some(9000), ..lease([10, 0, 0, 10], now_ms()) };
        t.execute(&socket().await, Action::ApplyLease { lease: l.clone(), previous: None }).await.unwrap();
        let log = p.log();
        assert!(log.contains(&"sessiond-1: mtu eth0 1500".to_string()), "{log:?}");
        assert!(log.iter().any(|x| x.contains("route 0.0.0.0/0 via 10.0.0.1")) && log.iter().any(|x| x.contains("resolv.conf")), "{log:?}");
        assert_eq!(t.done.unapplied, None);
        // Below the uplink's: as given.
        p.clear_log();
        let l = Lease { mtu: Some(1400), dns: vec![], ..l };
        t.execute(&socket().await, Action::ApplyLease { lease: l.clone(), previous: None }).await.unwrap();
        assert!(p.log().contains(&"sessiond-1: mtu eth0 1400".to_string()), "{:?}", p.log());
    }

    #[tokio::test]
    async fn a_half_applied_lease_is_never_bound_and_is_applied_whole_next_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let mut t = task(context(&p, 1, dir.path(), &LanNeighbours::default()).await);
        let sock = socket().await;
        let l = lease([10, 0, 0, 10], now_ms());
        p.fail_on("sessiond-1: route 0.0.0.0/0");
        t.execute(&sock, Action::ApplyLease { lease: l.clone(), previous: None }).await.unwrap();
        let why = t.done.unapplied.clone().expect("the failure is remembered");
        assert!(why.contains("10.0.0.10/24") && why.contains("injected failure"), "{why}");
        assert!(!p.log().iter().any(|x| x.contains("resolv.conf")), "stopped at the failed step: {:?}", p.log());
        // What a waiting start sees: bound, but not applied, so not "up".
        let st = |unapplied: Option<String>| LeaseStatus {
            state: State::Bound,
            lease: Some(l.clone()),
            discovers: 0,
            failed: None,
            unapplied,
            ..LeaseStatus::default()
        };
        assert!(matches!(bound_outcome(&st(Some(why.clone()))), Some(Err(WaitError::NotApplied(w))) if w == why));
        // A renewal of the same lease retries the whole of it (not only the lifetimes), and
        // once that works the lease counts as applied.
        p.clear_log();
        t.execute(&sock, Action::ApplyLease { lease: l.clone(), previous: Some(l.clone()) }).await.unwrap();
        assert!(t.done.unapplied.is_some(), "still failing");
        assert!(p.log().iter().any(|x| x.contains("route 0.0.0.0/0")), "retried: {:?}", p.log());
        let p2 = FakePlatform::new();
        let mut t2 = task(context(&p2, 1, dir.path(), &LanNeighbours::default()).await);
        t2.done.unapplied = Some(why);
        t2.execute(&sock, Action::ApplyLease { lease: l.clone(), previous: Some(l.clone()) }).await.unwrap();
        assert_eq!(t2.done.unapplied, None);
        assert!(p2.log().iter().any(|x| x.contains("route 0.0.0.0/0")) && p2.log().iter().any(|x| x.contains("resolv.conf")), "{:?}", p2.log());
        assert!(matches!(bound_outcome(&st(None)), Some(Ok(x)) if x == l));
    }

    #[test]
    fn what_a_waiting_start_sees() {
        let l = lease([10, 0, 0, 10], 0);
        let st = |state, lease: Option<Lease>, failed: Option<&str>, unapplied: Option<&str>| LeaseStatus {
            state,
            lease,
            discovers: 3,
            failed: failed.map(String::from),
            unapplied: unapplied.map(String::from),
            ..LeaseStatus::default()
        };
        assert!(bound_outcome(&st(State::Selecting, None, None, None)).is_none());
        assert!(bound_outcome(&st(State::Renewing, Some(l.clone()), None, None)).is_none());
        assert!(matches!(bound_outcome(&st(State::Selecting, None, Some("socket"), None)), Some(Err(WaitError::Failed(_)))));
        assert!(matches!(bound_outcome(&st(State::Bound, Some(l.clone()), None, Some("x"))), Some(Err(WaitError::NotApplied(_)))));
        assert!(matches!(bound_outcome(&st(State::Bound, Some(l.clone()), None, None)), Some(Ok(_))));
    }

    #[tokio::test]
    async fn the_slots_address_is_remembered_past_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let ctx = context(&p, 4, dir.path(), &LanNeighbours::default()).await;
        let state = ctx.state.clone();
        let sid = ctx.sid;
        let mut t = task(ctx);
        let sock = socket().await;
        let l = lease([10, 0, 0, 44], now_ms());
        t.execute(&sock, Action::PersistLease(Some(l.clone()))).await.unwrap();
        assert_eq!(state.load_last_address(sid), Some(l.address));
        t.execute(&sock, Action::PersistLease(None)).await.unwrap();
        assert_eq!(state.load_blob::<Option<Lease>>(&lease_file(sid)).unwrap(), None);
        assert_eq!(state.load_last_address(sid), Some(l.address), "outlives the lease (stop, release)");
        // A new address replaces it.
        t.execute(&sock, Action::PersistLease(Some(lease([10, 0, 0, 45], now_ms())))).await.unwrap();
        assert_eq!(state.load_last_address(sid), Some(Ipv4Addr::new(10, 0, 0, 45)));
    }

    #[test]
    fn renewal_lines_are_rate_limited_per_window() {
        let mut r = RenewLog::default();
        let t0 = 1_000_000;
        let shown: Vec<bool> = (0..8).map(|i| r.begin(t0 + i * 2_000)).collect();
        assert_eq!(shown, [true, true, true, true, true, false, false, false]);
        assert!(r.quiet);
        assert_eq!(r.budget.suppressed, 3);
        // A new window logs again.
        assert!(r.begin(t0 + MINUTE_MS));
        assert_eq!((r.budget.shown, r.budget.suppressed, r.quiet), (1, 0, false));
    }
}
