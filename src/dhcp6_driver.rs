//! Each session's DHCPv6 client (`crate::dhcp6`) on its interface: one tokio task per
//! session, started beside IPv4 without holding up `start`. In `auto` mode it waits for the
//! first router advertisement and runs only when it sets M (stateful: an IA_NA address) or O
//! (stateless: Information-Request for DNS); in `dhcpv6` mode it Solicits at once. The task
//! only does what the machine says: send to ff02::1:2, put the address on `eth0` with the
//! lease's lifetimes (marked `DHCPV6_PROTO`, so `status` tells it from SLAAC's), persist the
//! lease in the state dir (`leases/N.v6.json`, beside IPv4's), release at stop. It also puts
//! the session's IPv6 address (the lease's, else the stable SLAAC one) and DHCPv6's DNS into
//! the session's hosts and resolv.conf, merged with IPv4's (`files::MergedFiles`).
use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Ipv6Mode;
use crate::dhcp::Millis;
use crate::dhcp6::{Action, Client, ClientConfig, Event, Info, Lease, State};
use crate::files::Ipv6Names;
use crate::identity::Identity;
use crate::lease_driver::now_ms;
use crate::netlink::{Lifetimes, NetOps};
use crate::platform::{Ipv6NamesWriter, Platform};
use crate::session::SESSION_IF;
use crate::sid::Sid;
use crate::state::StateDir;

/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
const SERVER_PORT: u16 = 547;
/// How often the task looks for the first router advertisement: often while the kernel's
/// router solicitations run (3, 4 s apart: a router answers each within a second), then
/// rarely (routers advertise unsolicited every few minutes), so that a LAN without IPv6
/// routers costs 1000 sessions ~17 netlink requests a second.
const RA_POLL_SOLICITING: Duration = Duration::from_millis(200);
const RA_SOLICITING: Duration = Duration::from_secs(12);
const RA_POLL_LATER: Duration = Duration::from_secs(60);
/// How long `stop` waits for the Release to leave (the namespace goes right after).
const RELEASE_WAIT: Duration = Duration::from_millis(500);

pub fn lease6_file(sid: Sid) -> String {
    format!("leases/{sid}.v6.json")
}

/// What `status` shows of a session's DHCPv6.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dhcp6View {
    /// None while it waits for a router advertisement (or when none asked for DHCPv6).
    pub state: Option<State>,
    pub lease: Option<Lease>,
    pub info: Option<Info>,
}

struct Task {
    release: mpsc::Sender<oneshot::Sender<()>>,
    view: watch::Receiver<Dhcp6View>,
}

/// The sessions' DHCPv6 tasks.
pub struct Dhcp6Sessions {
    mode: Ipv6Mode,
    duid: Vec<u8>,
    min_renew_secs: u32,
    state: StateDir,
    tasks: Mutex<HashMap<Sid, Task>>,
}

impl Dhcp6Sessions {
    pub fn new(mode: Ipv6Mode, machine_id: &str, min_lease_secs: u32, state: StateDir) -> Dhcp6Sessions {
        Dhcp6Sessions { mode, duid: crate::dhcp::duid(machine_id), min_renew_secs: (min_lease_secs / 2).max(1), state, tasks: Mutex::new(HashMap::new()) }
    }

    /// Starts the session's DHCPv6 in the background, on `inside` (the session's netlink
    /// connection, shared with the manager's); with a persisted lease (a daemon restart) it
    /// Rebinds that one. In `slaac` mode the task only waits for the RA to put the SLAAC
    /// address into hosts; nothing in `off` mode. A failure is logged: IPv6 never fails a start.
    pub async fn start<P: Platform>(&self, p: &P, id: &Identity, inside: P::Net) {
        if self.mode == Ipv6Mode::Off {
            return;
        }
        let span = info_span!("dhcp6", sid = %id.sid);
        let sock = match p.dhcp6_socket(&id.netns).await {
            Ok(x) => x,
            Err(e) => {
                span.in_scope(|| warn!("DHCPv6 not started: {e}"));
                return;
            }
        };
        let persisted: Option<Lease> = self.state.load_blob::<Option<Lease>>(&lease6_file(id.sid)).unwrap_or_else(|e| {
            span.in_scope(|| warn!("ignoring the persisted DHCPv6 lease: {e}"));
            None
        });
        let cfg = ClientConfig {
            duid: self.duid.clone(),
            iaid: id.sid.get(),
            seed: crate::lease_driver::seed(),
            min_renew_secs: self.min_renew_secs,
            rapid_commit: true,
        };
        let (release, rx) = mpsc::channel(1);
        let (view_tx, view) = watch::channel(Dhcp6View::default());
        let ctx = Ctx { sid: id.sid, netns: id.netns.clone(), inside, state: self.state.clone(), mode: self.mode, names: p.ipv6_names_writer() };
        tokio::spawn(run(ctx, sock, Client::new(cfg), persisted, rx, view_tx).instrument(span));
        self.tasks.lock().unwrap().insert(id.sid, Task { release, view });
    }

    /// Stops the session's task: a held lease is Released (sent once; the namespace goes
    /// next), and its file removed.
    pub async fn release(&self, sid: Sid) {
        let task = self.tasks.lock().unwrap().remove(&sid);
        if let Some(t) = task {
            let (done, wait) = oneshot::channel();
            if t.release.send(done).await.is_ok() {
                let _ = tokio::time::timeout(RELEASE_WAIT, wait).await;
            }
        }
        if let Err(e) = self.state.remove_blob(&lease6_file(sid)) {
            warn!(sid = %sid, "removing the DHCPv6 lease file: {e}");
        }
    }

    /// Ends the session's task without a Release (the persisted lease stays for the next one).
    pub fn abandon(&self, sid: Sid) {
        self.tasks.lock().unwrap().remove(&sid);
    }

    /// Whether the session has a task (it may have ended: nothing asked for DHCPv6).
    pub fn has(&self, sid: Sid) -> bool {
        self.tasks.lock().unwrap().contains_key(&sid)
    }

    pub fn view(&self, sid: Sid) -> Option<Dhcp6View> {
        self.tasks.lock().unwrap().get(&sid).map(|t| t.view.borrow().clone())
    }
}

struct Ctx<N: NetOps> {
    sid: Sid,
    netns: String,
    inside: N,
    state: StateDir,
    mode: Ipv6Mode,
    names: Ipv6NamesWriter,
}

impl<N: NetOps> Ctx<N> {
    fn write_names(&self, names: &Ipv6Names) {
        if let Err(e) = (self.names)(&self.netns, names.clone()) {
            warn!("writing the session's IPv6 names: {e}");
        }
    }

    /// The stable SLAAC address, once usable (optimistic DAD makes it so at once).
    async fn slaac_address(&self) -> Option<Ipv6Addr> {
        let (_, addresses) = crate::ipv6::read(&self.inside, SESSION_IF, self.mode).await.ok()?;
        addresses.iter().find(|a| a.origin == sessiond_client::record::Address6Origin::Slaac && !a.tentative).map(|a| a.address.addr())
    }
}

/// Why the task does not (yet) run the machine.
enum Wait {
    /// An event to begin with.
    Begin(Event),
    /// Nothing to do (the RA asks for no DHCPv6, or none came), or stop asked meanwhile.
    Done(Option<oneshot::Sender<()>>),
}

/// The first event: the persisted lease's Rebind, a Solicit (`dhcpv6` mode, or M), an
/// Information-Request (O without M), or nothing.
async fn first_event<N: NetOps>(ctx: &Ctx<N>, persisted: Option<Lease>, rx: &mut mpsc::Receiver<oneshot::Sender<()>>, names: &mut Ipv6Names) -> Wait {
    if let Some(l) = persisted {
        return Wait::Begin(Event::StartWithLease(l));
    }
    if ctx.mode == Ipv6Mode::Dhcpv6 {
        return Wait::Begin(Event::Start);
    }
    let fast = (RA_SOLICITING.as_millis() / RA_POLL_SOLICITING.as_millis()) as u32;
    for poll in 0u32.. {
        let flags = ctx.inside.ra_flags(SESSION_IF).await;
        if let Ok(Some(_)) = flags {
            // The kernel formed the SLAAC addresses with the RA's flags: hosts gets one now.
            names.address = ctx.slaac_address().await;
            if names.address.is_some() {
                ctx.write_names(names);
            }
        }
        match flags {
            Ok(Some(_)) if ctx.mode == Ipv6Mode::Slaac => return Wait::Done(None),
            Ok(Some(f)) if f.managed => return Wait::Begin(Event::Start),
            Ok(Some(f)) if f.other => return Wait::Begin(Event::StartInformation),
            Ok(Some(_)) => {
                debug!("the router advertisement asks for no DHCPv6");
                return Wait::Done(None);
            }
            Ok(None) => {}
            Err(e) => {
                warn!("reading the router advertisement flags: {e}");
                return Wait::Done(None);
            }
        }
        let every = if poll < fast { RA_POLL_SOLICITING } else { RA_POLL_LATER };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            done = rx.recv() => return Wait::Done(done),
        }
    }
    Wait::Done(None)
}

async fn run<N: NetOps>(
    ctx: Ctx<N>,
    sock: UdpSocket,
    mut client: Client,
    persisted: Option<Lease>,
    mut rx: mpsc::Receiver<oneshot::Sender<()>>,
    view: watch::Sender<Dhcp6View>,
) {
    let mut names = Ipv6Names::default();
    let first = match first_event(&ctx, persisted, &mut rx, &mut names).await {
        Wait::Begin(ev) => ev,
        Wait::Done(done) => {
            if let Some(d) = done {
                let _ = d.send(());
            }
            return;
        }
    };
    let ifindex = match ctx.inside.link_index(SESSION_IF).await {
        Ok(Some(i)) => i,
        other => {
            warn!("DHCPv6 not started: no index for {SESSION_IF}: {other:?}");
            return;
        }
    };
    let dest = SocketAddrV6::new(ALL_SERVERS, SERVER_PORT, 0, ifindex);
    let mut actions = client.on_event(first, now_ms());
    let mut deadline: Option<Millis> = None;
    let mut last_state = client.state();
    let mut buf = vec![0u8; 2048];
    info!(state = last_state.as_str(), "DHCPv6 client started");
    loop {
        for a in std::mem::take(&mut actions) {
            match a {
                Action::SetTimer(t) => deadline = Some(t),
                a => {
                    if let Some(changed) = names_after(&names, &a) {
                        names = changed;
                        ctx.write_names(&names);
                    }
                    execute(&ctx, &sock, dest, a).await
                }
            }
        }
        if client.state() != last_state {
            info!("DHCPv6 state {} -> {}", last_state, client.state());
            last_state = client.state();
        }
        view.send_replace(Dhcp6View { state: Some(client.state()), lease: client.lease().cloned(), info: client.info().cloned() });
        let wake = deadline.map(|t| tokio::time::Instant::now() + Duration::from_millis(t.saturating_sub(now_ms())));
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    debug!(%from, bytes = n, "DHCPv6 message");
                    actions = client.on_event(Event::Packet { bytes: buf[..n].to_vec() }, now_ms());
                }
                Err(e) => {
                    warn!("DHCPv6 socket: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                deadline = None;
                actions = client.on_event(Event::Timer, now_ms());
            }
            done = rx.recv() => {
                // Only the Release goes out: the address and the file go with the session.
                for a in client.on_event(Event::Release, now_ms()) {
                    if let Action::Send { .. } = a {
                        execute(&ctx, &sock, dest, a).await;
                    }
                }
                info!("DHCPv6 released");
                if let Some(d) = done {
                    let _ = d.send(());
                }
                return;
            }
        }
    }
}

/// What the session's files say of IPv6 after `a`, if it changes that.
fn names_after(names: &Ipv6Names, a: &Action) -> Option<Ipv6Names> {
    let next = match a {
        Action::ApplyLease { lease, .. } => Ipv6Names { dns: lease.dns.clone(), search: lease.search.clone(), address: Some(lease.address) },
        Action::ApplyInfo(info) => Ipv6Names { dns: info.dns.clone(), search: info.search.clone(), address: names.address },
        Action::RemoveLease(_) => Ipv6Names { address: None, ..names.clone() },
        _ => return None,
    };
    (next != *names).then_some(next)
}

/// The kernel's lifetimes for `lease` now (u32::MAX: forever).
fn lifetimes(lease: &Lease, now: Millis) -> Lifetimes {
    let (valid, preferred) = lease.remaining(now);
    Lifetimes { valid_secs: valid.unwrap_or(u32::MAX), preferred_secs: preferred.unwrap_or(u32::MAX) }
}

async fn execute<N: NetOps>(ctx: &Ctx<N>, sock: &UdpSocket, dest: SocketAddrV6, a: Action) {
    match a {
        Action::Send { bytes } => {
            if let Err(e) = sock.send_to(&bytes, dest).await {
                // Before DAD of the link-local address ends, sending may fail: the machine's
                // retransmission tries again.
                debug!("DHCPv6 send: {e}");
            }
        }
        Action::ApplyLease { lease, previous } => {
            match ctx.inside.add_addr6(SESSION_IF, lease.address, lifetimes(&lease, now_ms())).await {
                Ok(()) => info!(address = %lease.address, valid_secs = lease.valid_secs, "DHCPv6 lease applied"),
                Err(e) => warn!("adding the DHCPv6 address: {e}"),
            }
            if let Some(p) = previous.filter(|p| p.address != lease.address)
                && let Err(e) = ctx.inside.del_addr6(SESSION_IF, p.address).await
            {
                warn!("removing the previous DHCPv6 address: {e}");
            }
        }
        Action::RemoveLease(l) => {
            if let Err(e) = ctx.inside.del_addr6(SESSION_IF, l.address).await {
                warn!("removing the DHCPv6 address: {e}");
            }
        }
        Action::PersistLease(l) => {
            let r = match &l {
                Some(l) => ctx.state.save_blob(&lease6_file(ctx.sid), &Some(l)),
                None => ctx.state.remove_blob(&lease6_file(ctx.sid)),
            };
            if let Err(e) = r {
                warn!("persisting the DHCPv6 lease: {e}");
            }
        }
        Action::ApplyInfo(info) => info!(dns = ?info.dns, "DHCPv6 information received"),
        Action::Reject { reason } if reason.is_routine() => debug!("DHCPv6 message ignored: {reason}"),
        Action::Reject { reason } => warn!("DHCPv6 message ignored: {reason}"),
        Action::SetTimer(_) => {}
    }
}
