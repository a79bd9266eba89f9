//! The daemon's session table: start, stop, status and crash recovery, over any `Platform`.
//! One entry per sid holds everything about that session; each sid is serialised by its own
//! lock, so different sessions start in parallel.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use tracing::{Instrument, info, info_span, warn};

use crate::acd::{Conflict, MAX_CONFLICTS};
use crate::acd_driver::{AcdLink, Outcome};
use crate::config::{Addressing, LinkKind, Settings};
use crate::dhcp_session::{Dhcp, DhcpError, DhcpSession};
use crate::events::Events;
use crate::holders::{Holder, Watch, Watched};
use crate::identity::Identity;
use crate::lease_driver::now_ms;
use crate::metrics::{Census, Metrics, StartResult};
use crate::netlink::{NetError, NetOps};
use crate::platform::Platform;
use crate::pool::{Conflicts, PoolError, PoolHistory};
use crate::proto::ErrorKind;
use crate::session::{self, SESSION_IF, SessionPlan, StepError, TeardownSpec};
use crate::sid::{MAX_SID, Sid};
use crate::state::{Holding, PendingReap, SessionRecord, SessionState, StateDir, StateError};

mod programs;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("session {0} is not running")]
    NotFound(Sid),
    #[error("no free session id")]
    NoFreeSid,
    /// A start whose owner is not the running session's: never hands one user's session to
    /// another, nor a user's session to an ownerless start (a unit) or the other way round.
    #[error("{}", other_owner(*sid, *owner, *wanted))]
    OtherOwner { sid: Sid, owner: Option<u32>, wanted: Option<u32> },
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error("session {sid} not started: {source}")]
    NotStarted { sid: Sid, source: StartError },
    #[error("session {sid} stop incomplete ({} errors; run stop again): {}", errors.len(), join(errors))]
    StopIncomplete { sid: Sid, errors: Vec<StepError> },
    #[error("session {sid} stop incomplete ({} errors; run stop again): {}", errors.len(), join(errors))]
    ProgramsStopIncomplete { sid: Sid, errors: Vec<crate::programs::ProgramsStepError> },
    #[error("session {sid} torn down, but its state file remains: {source}")]
    StateRemains { sid: Sid, source: StateError },
    #[error("session {sid} runs in {running} mode, not {wanted} mode")]
    OtherMode { sid: Sid, running: crate::config::Mode, wanted: crate::config::Mode },
    #[error("session {0} not started: the requester hung up before the answer (nothing of it is left)")]
    RequesterGone(Sid),
    /// `stop --all`: every session that could not be stopped.
    #[error("{}", join(.0))]
    Several(Vec<ManagerError>),
}

impl ManagerError {
    /// How the control socket classes it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ManagerError::NotFound(_) => ErrorKind::NotFound,
            ManagerError::OtherOwner { .. } => ErrorKind::OtherOwner,
            _ => ErrorKind::Failed,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink {0} is down")]
    Down(String),
    #[error("uplink {0} does not exist")]
    Missing(String),
    #[error("cannot check uplink {name}: {source}")]
    Check { name: String, source: NetError },
    #[error("bridge {0} does not exist")]
    NoBridge(String),
}

/// Why a start failed; everything it made is gone again.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot record its state: {0}")]
    Record(StateError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Build(#[from] StepError),
    #[error(transparent)]
    Dhcp(#[from] DhcpError),
    #[error("cannot probe the address: {0}")]
    Probe(NetError),
    #[error("address {address} {conflict}")]
    AddressConflict { address: std::net::Ipv4Addr, conflict: Conflict },
    #[error(
        "gave up after {count} pool addresses in a row were in use by other hosts (the last, {last}, by {by}): a persistent address conflict on the LAN (RFC 5227 MAX_CONFLICTS)"
    )]
    PersistentConflict { count: u32, last: std::net::Ipv4Addr, by: String },
    #[error(transparent)]
    Programs(crate::programs::ProgramsStepError),
    #[error("no usable global IPv6 address within {secs} s (wait_for = \"{wait_for}\"; is there an IPv6 router on the uplink?)")]
    NoIpv6 { secs: u64, wait_for: crate::config::WaitFor },
}

fn other_owner(sid: Sid, owner: Option<u32>, wanted: Option<u32>) -> String {
    match (owner, wanted) {
        (Some(o), None) => {
            format!("session {sid} is running for another user (uid {o}); a start without an owner does not join it (name its owner, or pick another session)")
        }
        (Some(o), Some(w)) => format!("session {sid} is running for another user (uid {o}, not uid {w})"),
        (None, Some(w)) => format!("session {sid} is running without an owner (started outside a log-in); it is not started for uid {w}"),
        (None, None) => format!("session {sid}: owner mismatch"),
    }
}

impl StartError {
    /// The step that failed, for the logs (journald's `SESSIOND_STEP`).
    pub fn step(&self) -> &'static str {
        match self {
            StartError::Record(_) => "record the session's state",
            StartError::Pool(_) => "allocate an address",
            StartError::Build(e) => e.step,
            StartError::Dhcp(_) => "lease an address by DHCP",
            StartError::Probe(_) | StartError::AddressConflict { .. } | StartError::PersistentConflict { .. } => "probe the address (RFC 5227)",
            StartError::Programs(e) => e.step,
            StartError::NoIpv6 { .. } => "get an IPv6 address",
        }
    }
}

impl ManagerError {
    /// The step of a start that failed in one.
    pub fn step(&self) -> Option<&'static str> {
        match self {
            ManagerError::NotStarted { source, .. } => Some(source.step()),
            ManagerError::Uplink(_) => Some("check the uplink"),
            _ => None,
        }
    }
}

/// What a start did (for the metrics: a start that made nothing new is not timed).
enum Started {
    New(SessionRecord),
    AlreadyUp(SessionRecord),
}

fn join<E: std::fmt::Display>(errors: &[E]) -> String {
    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

/// What `stop` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    Stopped,
    WasAbsent,
}

/// Everything the daemon holds for one sid.
#[derive(Default)]
struct Slot {
    /// Serialises start, stop and repair of this sid.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// A start is under way: automatic allocation skips the sid.
    reserved: bool,
    session: Option<Session>,
}

/// A session the daemon knows: being started, up, or being stopped.
struct Session {
    /// What is persisted, and what `status` shows (a DHCP session's lease facts are added
    /// from its task: the lease, not the record, says what its address is).
    record: SessionRecord,
    identity: Identity,
    /// The DHCP task of a bound DHCP session.
    lease: Option<DhcpSession>,
    /// The namespace, held open so it outlives an accidental `ip netns delete`.
    netns: Option<std::fs::File>,
    /// The holders' processes being watched (`record.holding`), one watch each.
    watches: Vec<Watch>,
    /// A static session's address defence (RFC 5227 §2.4); ends with the session.
    defence: Option<Defence>,
    /// A static session is probing a new address after losing its own: the record holds the
    /// candidate (so no other start takes it), which `status` must not show yet.
    claiming: bool,
    /// A programs-mode session's attached hooks (`record.programs` says what they are).
    hooks: Option<crate::programs::hooks::Hooks>,
}

impl Session {
    /// A session with only its record and identity: nothing running for it yet (a start's
    /// reservation), or nothing left (a teardown that failed, kept for the next try).
    fn bare(record: SessionRecord, identity: Identity) -> Session {
        Session { record, identity, lease: None, netns: None, watches: Vec::new(), defence: None, claiming: false, hooks: None }
    }
}

/// The task defending a static session's address; aborted when dropped.
struct Defence(tokio::task::JoinHandle<()>);

impl Drop for Defence {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A static session lost its address to another host: (sid, the address, why).
type Lost = (Sid, std::net::Ipv4Addr, Conflict);

impl Session {
    fn view(&self) -> SessionRecord {
        let mut r = self.record.clone();
        if self.claiming {
            r.address = None;
        }
        if let Some(l) = &self.lease {
            l.view().fill(&mut r);
        }
        if let (Some(p), Some(h)) = (&mut r.programs, &self.hooks) {
            p.rewritten = h.rewritten();
        }
        r
    }
}

struct Table {
    slots: BTreeMap<Sid, Slot>,
    history: PoolHistory,
    /// Told of every session entered, changed (through `Changing`) or removed: the table is
    /// the one place records change, so watchers see every change.
    events: Events,
    /// Static pool addresses another host was found using.
    conflicts: Conflicts,
}

impl Table {
    fn session(&self, sid: Sid) -> Option<&Session> {
        self.slots.get(&sid)?.session.as_ref()
    }

    fn session_mut(&mut self, sid: Sid) -> Option<Changing<'_>> {
        let Table { slots, events, .. } = self;
        slots.get_mut(&sid)?.session.as_mut().map(|session| Changing { session, events })
    }

    fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.slots.values().filter_map(|s| s.session.as_ref())
    }

    fn sessions_mut(&mut self) -> impl Iterator<Item = Changing<'_>> {
        let Table { slots, events, .. } = self;
        slots.values_mut().filter_map(|s| s.session.as_mut()).map(|session| Changing { session, events: &*events })
    }

    /// Enters a session into its sid's slot (replacing what was there).
    fn insert(&mut self, session: Session) {
        let sid = session.identity.sid;
        self.events.record(&session.record, session.lease.is_some());
        self.slots.entry(sid).or_default().session = Some(session);
    }

    /// Removes the sid's session (its namespace handle with it).
    fn remove(&mut self, sid: Sid) {
        if let Some(slot) = self.slots.get_mut(&sid)
            && slot.session.take().is_some()
        {
            self.events.gone(sid);
        }
    }
}

/// A session being changed in the table: when the change is done (dropped), watchers are told
/// what it changed.
struct Changing<'a> {
    session: &'a mut Session,
    events: &'a Events,
}

impl std::ops::Deref for Changing<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session
    }
}

impl std::ops::DerefMut for Changing<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.session
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.events.record(&self.session.record, self.session.lease.is_some());
    }
}

pub struct Manager<P: Platform> {
    platform: P,
    settings: Settings,
    state: StateDir,
    machine_id: String,
    hostname: String,
    dhcp: Dhcp,
    table: Mutex<Table>,
    metrics: Metrics,
    reaper: Reaper,
    /// Static sessions' defences report a lost address here; `watch_conflicts` handles it.
    lost_tx: tokio::sync::mpsc::UnboundedSender<Lost>,
    lost_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Lost>>>,
    /// How many sessions are up, for whoever reports it (the daemon's STATUS= to systemd).
    sessions_up: tokio::sync::watch::Sender<usize>,
    /// The sessions' DHCPv6 tasks (IPv6 completes beside `start`, never holding it up).
    dhcp6: crate::dhcp6_driver::Dhcp6Sessions,
}

/// Where the holder watches report exits, and the loop (`reap_vanished`) that reads them.
struct Reaper {
    exits: tokio::sync::mpsc::UnboundedSender<(Sid, Holder)>,
    reports: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(Sid, Holder)>>>,
    /// How long a session may stay without holders before it is stopped.
    grace: std::time::Duration,
}

impl<P: Platform> Manager<P> {
    pub fn new(platform: P, settings: Settings, state: StateDir, machine_id: String, hostname: String) -> Result<Self, ManagerError> {
        let history = state.load_last_addresses();
        let (exits, reports) = tokio::sync::mpsc::unbounded_channel();
        let reaper = Reaper { exits, reports: Mutex::new(Some(reports)), grace: std::time::Duration::from_secs(settings.reap_after_secs) };
        let (events, metrics) = (Events::new(), Metrics::new());
        let (lost_tx, lost_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Manager {
            reaper,
            lost_tx,
            lost_rx: Mutex::new(Some(lost_rx)),
            dhcp: Dhcp::new(&settings, state.clone(), hostname.clone(), events.clone(), metrics.clone()),
            dhcp6: crate::dhcp6_driver::Dhcp6Sessions::new(settings.ipv6, &machine_id, settings.dhcp_min_lease_secs, state.clone()),
            platform,
            settings,
            state,
            machine_id,
            hostname,
            table: Mutex::new(Table { slots: BTreeMap::new(), history, events, conflicts: Conflicts::default() }),
            metrics,
            sessions_up: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The number of sessions up, updated when a start, a stop or the recovery changed it.
    pub fn sessions_up(&self) -> tokio::sync::watch::Receiver<usize> {
        self.sessions_up.subscribe()
    }

    fn publish_sessions_up(&self) {
        let n = self.table.lock().unwrap().sessions().filter(|s| s.record.state == SessionState::Up).count();
        self.sessions_up.send_if_modified(|up| std::mem::replace(up, n) != n);
    }

    /// What the sessions are built with (the host-side shim, `shim`, uses it too).
    pub fn platform(&self) -> &P {
        &self.platform
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every change of a session, for watchers.
    pub fn events(&self) -> Events {
        self.table.lock().unwrap().events.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How many sessions are in each state, and how many show a fault, now.
    pub fn census(&self) -> Census {
        let t = self.table.lock().unwrap();
        let mut c = Census::default();
        for s in t.sessions() {
            c.count(s.record.state, s.record.fault.is_some());
        }
        c
    }

    /// The slot's names, derived once per session (at start, or when recovery finds it).
    fn identity(&self, sid: Sid) -> Identity {
        Identity::new(&self.machine_id, sid)
    }

    fn sid_lock(&self, sid: Sid) -> Arc<tokio::sync::Mutex<()>> {
        self.table.lock().unwrap().slots.entry(sid).or_default().lock.clone()
    }

    fn set_reserved(&self, sid: Sid, reserved: bool) {
        self.table.lock().unwrap().slots.entry(sid).or_default().reserved = reserved;
    }

    /// Lowest sid neither running nor being started, reserved for the caller.
    fn pick_free_sid(&self) -> Result<Sid, ManagerError> {
        let mut t = self.table.lock().unwrap();
        let sid = (1..=MAX_SID)
            .map(|n| Sid::new(u64::from(n)).unwrap())
            .find(|s| t.slots.get(s).is_none_or(|slot| slot.session.is_none() && !slot.reserved))
            .ok_or(ManagerError::NoFreeSid)?;
        t.slots.entry(sid).or_default().reserved = true;
        Ok(sid)
    }

    pub async fn start(&self, sid: Option<Sid>, owner_uid: Option<u32>) -> Result<SessionRecord, ManagerError> {
        self.start_for(sid, owner_uid, None, &|| false).await
    }

    /// `start` for a requester that may go away: `holder`, the requesting process if it holds
    /// the session (a login); `gone`, whether the requester has hung up. A start whose
    /// requester hung up before it was answered is not begun, or is rolled back (its lease
    /// released) before the sid is unlocked, so nobody else ever saw it: a concurrent request
    /// for the same sid, which waits on that lock, then starts the session itself. A
    /// requester hanging up never undoes a session that was already up.
    pub async fn start_for(
        &self,
        sid: Option<Sid>,
        owner_uid: Option<u32>,
        holder: Option<Watched>,
        gone: &(dyn Fn() -> bool + Sync),
    ) -> Result<SessionRecord, ManagerError> {
        self.start_in_mode(sid, owner_uid, holder, gone, None).await
    }

    /// `start_for` in a given mode (the PAM module's `mode=`); None: the daemon's `mode`.
    pub async fn start_in_mode(
        &self,
        sid: Option<Sid>,
        owner_uid: Option<u32>,
        holder: Option<Watched>,
        gone: &(dyn Fn() -> bool + Sync),
        mode: Option<crate::config::Mode>,
    ) -> Result<SessionRecord, ManagerError> {
        let mode = mode.unwrap_or(self.settings.mode);
        let sid = match sid {
            Some(s) => {
                self.set_reserved(s, true);
                s
            }
            None => self.pick_free_sid()?,
        };
        let lock = self.sid_lock(sid);
        let began = std::time::Instant::now();
        let span = info_span!("start", sid = %sid);
        let result = async {
            let held = lock.lock_owned().await;
            if gone() {
                info!("the requester hung up before the start began: not starting it");
                return Err(ManagerError::RequesterGone(sid));
            }
            let started = match self.start_locked(sid, owner_uid, holder.as_ref().map(|w| w.holder), mode).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(step = e.step(), "session not started: {e}");
                    return Err(e);
                }
            };
            if matches!(started, Started::New(_)) && gone() {
                info!("the requester hung up before the answer: rolling the start back");
                self.stop_with_lock(sid, held).await?;
                return Err(ManagerError::RequesterGone(sid));
            }
            Ok(match (holder, started) {
                (Some(w), Started::New(_)) if !gone() => Started::New(self.hold(sid, w)),
                (Some(w), Started::AlreadyUp(_)) if !gone() => Started::AlreadyUp(self.hold(sid, w)),
                (_, started) => started,
            })
        }
        .instrument(span)
        .await;
        self.set_reserved(sid, false);
        self.publish_sessions_up();
        let (outcome, result) = match result {
            Ok(Started::New(r)) => (StartResult::Started, Ok(r)),
            Ok(Started::AlreadyUp(r)) => (StartResult::AlreadyUp, Ok(r)),
            Err(e) => (StartResult::Failed, Err(e)),
        };
        self.metrics.start_finished(outcome, began.elapsed());
        result
    }

    async fn start_locked(&self, sid: Sid, owner_uid: Option<u32>, holder: Option<Holder>, mode: crate::config::Mode) -> Result<Started, ManagerError> {
        if let Some(s) = self.table.lock().unwrap().session(sid)
            && s.record.state == SessionState::Up
        {
            // Idempotent for the same owner (or none, for none); a running session is never
            // handed to a start that names another owner, or none.
            if owner_uid != s.record.owner_uid {
                return Err(ManagerError::OtherOwner { sid, owner: s.record.owner_uid, wanted: owner_uid });
            }
            if s.record.mode() != mode {
                return Err(ManagerError::OtherMode { sid, running: s.record.mode(), wanted: mode });
            }
            return Ok(Started::AlreadyUp(s.view()));
        }
        if mode == crate::config::Mode::Programs {
            return self.start_programs(sid, owner_uid, holder).await;
        }
        self.check_uplink().await?;
        let not_started = |source: StartError| ManagerError::NotStarted { sid, source };
        let identity = self.identity(sid);
        let rec = self.reserve(&identity, owner_uid, holder).map_err(not_started)?;
        // The intent is on disk before anything is made, so a crash can be cleaned up.
        if let Err(e) = self.persist_new(&rec) {
            self.forget(sid);
            return Err(not_started(StartError::Record(e)));
        }
        let mut plan = self.plan_for(&rec, &identity);
        let probe = rec.addressing == Addressing::Static && self.settings.acd_probe_ms > 0;
        if probe {
            plan.address = None; // probed first (RFC 5227), then put on the interface
        }
        let inside = match session::build(&self.platform, &plan).await {
            Ok(inside) => inside,
            Err(e) => {
                self.forget(sid);
                let _ = self.state.remove(sid);
                return Err(not_started(e.into()));
            }
        };
        let mut rec = rec;
        let mut defence = None;
        let lease = match rec.addressing {
            Addressing::Static if probe => match self.claim_static(&identity, &rec, &inside).await {
                Ok((address, link)) => {
                    rec.address = Some(address);
                    defence = Some(self.defend_static(&identity, link));
                    None
                }
                Err(e) => {
                    self.abandon(sid, &plan.teardown_spec()).await;
                    return Err(not_started(e));
                }
            },
            Addressing::Static => None,
            Addressing::Dhcp => match self.dhcp.start(&self.platform, &identity, inside).await {
                Ok(l) => Some(l),
                Err(e) => {
                    self.abandon(sid, &plan.teardown_spec()).await;
                    return Err(not_started(e.into()));
                }
            },
        };
        self.dhcp6.start(&self.platform, &identity).await;
        if self.settings.wait_for != crate::config::WaitFor::Ipv4
            && let Err(e) = self.wait_for_ipv6(&identity.netns).await
        {
            self.dhcp6.release(sid).await;
            if let Some(l) = lease {
                l.release(true).await;
            }
            self.abandon(sid, &plan.teardown_spec()).await;
            return Err(not_started(e));
        }
        let mut up = rec;
        up.state = SessionState::Up;
        if let Err(e) = self.state.save(&up) {
            self.dhcp6.release(sid).await;
            if let Some(l) = lease {
                l.release(true).await;
            }
            self.abandon(sid, &plan.teardown_spec()).await;
            return Err(not_started(StartError::Record(e)));
        }
        let netns = self.platform.hold_netns(&identity.netns);
        let mut t = self.table.lock().unwrap();
        let mut s = t.session_mut(sid).expect("a starting session stays in the table (its sid is locked)");
        (s.record, s.lease, s.netns, s.defence) = (up, lease, netns, defence);
        let view = s.view();
        match view.address {
            Some(a) => info!(address = %a.addr(), prefix_len = a.prefix_len(), "session up"),
            None => info!("session up"),
        }
        Ok(Started::New(view))
    }

    /// Probes a new static session's address (RFC 5227) and puts it on the interface; an
    /// address another host uses is skipped (remembered for a while) and the next one from
    /// the pool is probed, at most MAX_CONFLICTS in a row. Returns the address and the ARP
    /// link, whose machine goes on to announce and defend it.
    async fn claim_static(&self, id: &Identity, rec: &SessionRecord, inside: &P::Net) -> Result<(Ipv4Net, AcdLink<P::Arp>), StartError> {
        let (probe_ms, kind) = (self.settings.acd_probe_ms, self.settings.link);
        let mut link = crate::acd_driver::new_session_link(&self.platform, id, probe_ms, kind, &self.settings.uplink).await.map_err(StartError::Probe)?;
        let mut address = rec.address.expect("a static session has its address from reserve");
        let mut conflicts = 0;
        loop {
            link.probe(address.addr()).await;
            match link.outcome().await {
                Outcome::Free(_) => break,
                Outcome::Conflict(a, conflict @ Conflict::SameMac { .. }) => return Err(StartError::AddressConflict { address: a, conflict }),
                Outcome::Conflict(a, c @ (Conflict::InUse { by } | Conflict::Lost { by })) => {
                    warn!(address = %a, "static address {a} {c}: skipping it");
                    conflicts += 1;
                    if conflicts >= MAX_CONFLICTS {
                        return Err(StartError::PersistentConflict { count: conflicts, last: a, by: crate::mac::format_mac(&by) });
                    }
                    address = self.reallocate(id.sid, a)?;
                    info!(address = %address, "trying the next pool address");
                }
            }
        }
        let plan = self.plan_for(&SessionRecord { address: Some(address), ..rec.clone() }, id);
        session::apply_address(inside, address, plan.gateway, None).await?;
        self.platform.write_netns_file(&id.netns, "resolv.conf", &plan.resolv_conf).map_err(|source| StepError { step: "write resolv.conf", source })?;
        self.platform.write_netns_file(&id.netns, "hosts", &plan.hosts).map_err(|source| StepError { step: "write hosts", source })?;
        Ok((address, link))
    }

    /// Notes `conflicting` as used by another host and allocates the sid another address
    /// (entered in its record and the pool history, and persisted with them).
    fn reallocate(&self, sid: Sid, conflicting: std::net::Ipv4Addr) -> Result<Ipv4Net, StartError> {
        let pool = self.settings.pool.as_ref().expect("static addressing has a pool (checked at config time)");
        let now = crate::lease_driver::now_ms();
        let mut t = self.table.lock().unwrap();
        t.conflicts.note(conflicting, now);
        let mut in_use: BTreeSet<_> = t.sessions().filter_map(|s| s.record.address.map(|a| a.addr())).collect();
        in_use.extend(t.conflicts.current(now));
        let addr = pool.allocate(sid, &in_use, &t.history)?;
        t.history.last_address.insert(sid.get(), addr);
        let net = Ipv4Net::new(addr, pool.prefix_len).expect("valid prefix");
        if let Some(mut s) = t.session_mut(sid) {
            s.record.address = Some(net);
        }
        drop(t);
        if let Err(e) = self.state.save_last_address(sid, addr) {
            warn!("remembering the address: {e}");
        }
        Ok(net)
    }

    /// Runs a static session's address defence (the link's machine, after its probe) until
    /// the address is lost, which `watch_conflicts` then handles.
    fn defend_static(&self, id: &Identity, mut link: AcdLink<P::Arp>) -> Defence {
        let tx = self.lost_tx.clone();
        let sid = id.sid;
        let task = async move {
            if let Outcome::Conflict(a, c) = link.outcome().await {
                let _ = tx.send((sid, a, c));
            }
        };
        Defence(tokio::spawn(task.instrument(info_span!(parent: None, "acd", sid = %sid))))
    }

    /// `defend_static` for an address already in use (a re-adopted or repaired session).
    async fn defend_static_addr(&self, id: &Identity, address: std::net::Ipv4Addr) -> Option<Defence> {
        match self.platform.arp_socket(&id.netns).await {
            Ok(arp) => {
                let mut link = AcdLink::new(arp, id.mac, self.settings.acd_probe_ms);
                link.defend(address);
                Some(self.defend_static(id, link))
            }
            Err(e) => {
                warn!(sid = %id.sid, "cannot defend the address {address}: {e}");
                None
            }
        }
    }

    /// After recovery, while the daemon already serves: defends the addresses of the static
    /// sessions it adopted (an ARP socket each, made in their namespaces one after the other;
    /// recovery itself does not wait for them).
    /// Gives every re-adopted session its DHCPv6 task (a persisted lease is Rebound), after
    /// the daemon answers: made one at a time here, they would hold up recovery (a socket and
    /// a netlink connection made in each namespace).
    pub async fn start_ipv6_adopted(self: Arc<Self>) {
        let sids: Vec<Sid> = self.table.lock().unwrap().sessions().filter(|s| s.record.state == SessionState::Up).map(|s| s.record.session).collect();
        for sid in sids {
            let lock = self.sid_lock(sid);
            let _held = lock.lock().await;
            let id = self.table.lock().unwrap().session(sid).filter(|s| s.record.state == SessionState::Up).map(|s| s.identity.clone());
            if let Some(id) = id
                && !self.dhcp6.has(sid)
            {
                self.dhcp6.start(&self.platform, &id).instrument(info_span!("adopt", sid = %sid)).await;
            }
        }
    }

    pub async fn defend_adopted(self: Arc<Self>) {
        if self.settings.acd_probe_ms == 0 {
            return;
        }
        let sids: Vec<Sid> = self
            .table
            .lock()
            .unwrap()
            .sessions()
            .filter(|s| s.record.addressing == Addressing::Static && s.defence.is_none())
            .map(|s| s.record.session)
            .collect();
        for sid in sids {
            let lock = self.sid_lock(sid);
            let _held = lock.lock().await;
            let todo = self
                .table
                .lock()
                .unwrap()
                .session(sid)
                .filter(|s| s.record.state == SessionState::Up && s.defence.is_none() && !s.claiming)
                .and_then(|s| Some((s.identity.clone(), s.record.address?.addr())));
            let Some((id, address)) = todo else { continue };
            let defence = self.defend_static_addr(&id, address).await;
            if let Some(mut s) = self.table.lock().unwrap().session_mut(sid) {
                s.defence = defence;
            }
        }
    }

    /// Handles static sessions that lost their address to another host (RFC 5227 §2.4):
    /// each takes the next free pool address, probed first. Runs for the daemon's life.
    pub async fn watch_conflicts(self: Arc<Self>) {
        let Some(mut rx) = self.lost_rx.lock().unwrap().take() else { return };
        while let Some((sid, address, conflict)) = rx.recv().await {
            let me = self.clone();
            tokio::spawn(async move { me.readdress(sid, address, conflict).await }.instrument(info_span!("readdress", sid = %sid)));
        }
    }

    async fn readdress(&self, sid: Sid, lost: std::net::Ipv4Addr, conflict: Conflict) {
        let lock = self.sid_lock(sid);
        let _held = lock.lock().await;
        let taken =
            self.table.lock().unwrap().session_mut(sid).filter(|s| s.record.state == SessionState::Up && s.record.address.map(|a| a.addr()) == Some(lost)).map(
                |mut s| {
                    s.defence = None;
                    s.claiming = true;
                    (s.record.clone(), s.identity.clone())
                },
            );
        let Some((rec, id)) = taken else { return };
        warn!(address = %lost, "gave up the static address {lost}: {conflict}; taking another one from the pool");
        let result = async {
            let inside = self.platform.inside(&id.netns).await.map_err(StartError::Probe)?;
            let old = rec.address.expect("checked above");
            let _ = inside.del_addr(SESSION_IF, old).await;
            let next = self.reallocate(sid, lost)?;
            let (address, link) = self.claim_static(&id, &SessionRecord { address: Some(next), ..rec.clone() }, &inside).await?;
            Ok::<_, StartError>((address, link))
        }
        .await;
        let mut t = self.table.lock().unwrap();
        let Some(mut s) = t.session_mut(sid) else { return };
        s.claiming = false;
        match result {
            Ok((address, link)) => {
                info!(address = %address, "now using {address} (the previous address, {lost}, was taken by another host)");
                s.record.address = Some(address);
                s.defence = Some(self.defend_static(&id, link));
            }
            Err(e) => {
                warn!("the session has no address now: {e}");
                s.record.address = None;
            }
        }
        let record = s.record.clone();
        drop(s); // the change is told to watchers here, under the table's lock
        drop(t);
        if let Err(e) = self.state.save(&record) {
            warn!("recording the new address: {e}");
        }
    }

    /// Refuses a start (or reports a fault) while the uplink, or a veth's bridge, is missing.
    pub async fn check_uplink(&self) -> Result<(), UplinkError> {
        let name = &self.settings.uplink;
        match self.platform.host().link_is_up(name).await {
            Ok(Some(true)) => {}
            Ok(Some(false)) => return Err(UplinkError::Down(name.clone())),
            Ok(None) => return Err(UplinkError::Missing(name.clone())),
            Err(source) => return Err(UplinkError::Check { name: name.clone(), source }),
        }
        if let Some(br) = &self.settings.bridge
            && self.settings.link == LinkKind::Veth
            && !matches!(self.platform.host().link_index(br).await, Ok(Some(_)))
        {
            return Err(UplinkError::NoBridge(br.clone()));
        }
        Ok(())
    }

    /// The new session's record (with a static address allocated), entered in the table as
    /// `Starting`, atomically with the allocation. `holder`: the login holding it, if any.
    fn reserve(&self, id: &Identity, owner_uid: Option<u32>, holder: Option<Holder>) -> Result<SessionRecord, StartError> {
        let mut t = self.table.lock().unwrap();
        let (address, gateway, dns) = match self.settings.addressing {
            Addressing::Dhcp => (None, None, Vec::new()),
            Addressing::Static => {
                let pool = self.settings.pool.as_ref().expect("static addressing has a pool (checked at config time)");
                let mut in_use: BTreeSet<_> = t.sessions().filter_map(|s| s.record.address.map(|a| a.addr())).collect();
                in_use.extend(t.conflicts.current(crate::lease_driver::now_ms()));
                let addr = pool.allocate(id.sid, &in_use, &t.history)?;
                t.history.last_address.insert(id.sid.get(), addr);
                (Some(Ipv4Net::new(addr, pool.prefix_len).expect("valid prefix")), self.settings.gateway, self.settings.dns.clone())
            }
        };
        let record = SessionRecord {
            session: id.sid,
            netns: id.netns.clone(),
            interface: SESSION_IF.into(),
            mac: id.mac_text(),
            address,
            gateway,
            dns,
            loopback: id.loopback,
            addressing: self.settings.addressing,
            state: SessionState::Starting,
            link: self.settings.link,
            host_link: id.host_link(self.settings.link),
            owner_uid,
            lease: None,
            fault: None,
            holding: holder.map(|h| Holding { holders: vec![h], unheld_since: None }),
            ipv6: None,
            addresses6: vec![],
            addresses6_detail: vec![],
            dhcp6_state: None,
            programs: None,
        };
        let session = Session::bare(record.clone(), id.clone());
        t.insert(session);
        Ok(record)
    }

    fn persist_new(&self, rec: &SessionRecord) -> Result<(), StateError> {
        if let Some(a) = rec.address {
            self.state.save_last_address(rec.session, a.addr())?;
        }
        self.state.save(rec)
    }

    /// Drops the sid's session from the table (its namespace handle with it).
    fn forget(&self, sid: Sid) {
        self.table.lock().unwrap().remove(sid);
    }

    /// Rolls a half-made session back completely.
    async fn abandon(&self, sid: Sid, spec: &TeardownSpec) {
        for e in session::teardown(&self.platform, spec).await {
            warn!(sid = %sid, step = e.step, "cleanup: {e}");
        }
        self.forget(sid);
        if let Err(e) = self.state.remove(sid) {
            warn!(sid = %sid, "cleanup: {e}");
        }
    }

    fn plan_for(&self, rec: &SessionRecord, id: &Identity) -> SessionPlan {
        let addr = rec.address.map(|a| a.addr());
        SessionPlan {
            sid: rec.session,
            link: rec.link,
            uplink: self.settings.uplink.clone(),
            bridge: self.settings.bridge.clone(),
            mac: id.mac,
            loopback: rec.loopback,
            address: rec.address,
            gateway: rec.gateway,
            resolv_conf: crate::files::resolv_conf(&rec.dns, None, &[]),
            hosts: crate::files::hosts(&self.hostname, addr, rec.loopback),
            ipv6_sysctls: crate::ipv6::sysctls(self.settings.ipv6, self.settings.ipv6_privacy, id.stable_secret, crate::ipv6::kernel_has_optimistic_dad()),
        }
    }

    pub async fn stop(&self, sid: Sid) -> Result<Stopped, ManagerError> {
        let held = self.sid_lock(sid).lock_owned().await;
        self.stop_with_lock(sid, held).await
    }

    /// `stop`, with the sid's lock already held (it is let go once the session is gone).
    async fn stop_with_lock(&self, sid: Sid, held: tokio::sync::OwnedMutexGuard<()>) -> Result<Stopped, ManagerError> {
        let span = info_span!("stop", sid = %sid);
        let (result, pending) = match self.stop_locked(sid).instrument(span.clone()).await {
            Ok((s, pending)) => (Ok(s), pending),
            Err(e) => (Err(e), None),
        };
        self.publish_sessions_up();
        if let Some((nsid, mac)) = pending {
            // After answering: make sure the namespace went. The sid stays locked until then,
            // so a new start of the same slot cannot meet the old MAC on the parent.
            let reap = PendingReap { session: sid, nsid, mac };
            if let Err(e) = self.state.save_reap(&reap) {
                warn!(sid = %sid, "cannot record the pending check that its namespace went (a restart now would skip it): {e}");
            }
            self.check_namespace_went(reap, held, span);
        }
        result
    }

    /// Waits (bounded, in a task) for a stopped session's namespace to go, deleting its
    /// interface if something still holds it; then forgets the persisted check and frees the sid.
    fn check_namespace_went(&self, reap: PendingReap, held: tokio::sync::OwnedMutexGuard<()>, span: tracing::Span) {
        let host = self.platform.host().clone();
        let state = self.state.clone();
        tokio::spawn(
            async move {
                session::reap_link(&host, reap.nsid, reap.mac).await;
                if let Err(e) = state.remove_reap(reap.session) {
                    warn!("{e}");
                }
                drop(held);
            }
            .instrument(span),
        );
    }

    /// The checks a previous daemon stopped before finishing (it exited within the wait after
    /// a stop): done now, each holding its sid as the stop would have. A sid that has a
    /// session again has nothing to check (its namespace id may name the new session's).
    async fn resume_pending_reaps(&self, known: &BTreeSet<Sid>, report: &mut RecoveryReport) {
        let (reaps, errors) = self.state.load_reaps();
        report.errors.extend(errors.iter().map(|e| e.to_string()));
        for reap in reaps {
            let sid = reap.session;
            if known.contains(&sid) {
                let _ = self.state.remove_reap(sid);
                continue;
            }
            info!(sid = %sid, "checking that the namespace of a session stopped by the last run went");
            let held = self.sid_lock(sid).lock_owned().await;
            self.check_namespace_went(reap, held, info_span!("stop", sid = %sid));
        }
    }

    /// Returns, for a macvlan session, the id of its namespace, which the kernel is left to
    /// free, and the MAC of the interface in it.
    async fn stop_locked(&self, sid: Sid) -> Result<(Stopped, Option<(i32, [u8; 6])>), ManagerError> {
        if self.is_programs(sid) {
            return self.stop_programs(sid).await.map(|s| (s, None));
        }
        let taken = self.table.lock().unwrap().session_mut(sid).map(|mut s| {
            s.record.state = SessionState::Stopping;
            s.defence = None;
            (s.record.clone(), s.identity.mac, s.lease.take())
        });
        let Some((rec, mac, lease)) = taken else {
            // Nothing recorded; still sweep anything a crash may have left under this sid.
            if self.platform.netns_exists(&sid.netns_name()) {
                self.abandon(sid, &TeardownSpec::for_sid(sid, None, None)).await;
            }
            return Ok((Stopped::WasAbsent, None));
        };
        if let Err(e) = self.state.save(&rec) {
            warn!("cannot record stopping state (tearing down anyway): {e}");
        }
        let spec = TeardownSpec::for_sid(sid, Some(rec.link), rec.address);
        let leave_link = spec.host_link.is_none();
        self.dhcp6.release(sid).await;
        if let Some(l) = lease {
            // DHCPRELEASE from the bound address, before anything goes. The address itself goes
            // with the namespace when the kernel frees the interface.
            l.release(!leave_link).await;
        }
        let (errors, pending) =
            if leave_link { session::teardown_leaving_link(&self.platform, &spec).await } else { (session::teardown(&self.platform, &spec).await, None) };
        if let Err(e) = self.dhcp.forget(sid) {
            warn!("removing lease file: {e}");
        }
        // Our own handle must go for the namespace to go.
        if let Some(mut s) = self.table.lock().unwrap().session_mut(sid) {
            s.netns = None;
        }
        if !errors.is_empty() {
            return Err(ManagerError::StopIncomplete { sid, errors });
        }
        self.forget(sid);
        self.state.remove(sid).map_err(|source| ManagerError::StateRemains { sid, source })?;
        info!("session stopped");
        self.metrics.session_stopped();
        Ok((Stopped::Stopped, pending.map(|nsid| (nsid, mac))))
    }

    /// Stops every session; reports each failure.
    pub async fn stop_all(&self) -> Result<Vec<Sid>, ManagerError> {
        let sids: Vec<Sid> = self.table.lock().unwrap().sessions().map(|s| s.record.session).collect();
        let results = futures::future::join_all(sids.iter().map(|s| self.stop(*s))).await;
        let mut stopped = Vec::new();
        let mut errors = Vec::new();
        for (sid, r) in sids.into_iter().zip(results) {
            match r {
                Ok(_) => stopped.push(sid),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() { Ok(stopped) } else { Err(ManagerError::Several(errors)) }
    }

    /// The running sessions (or one), as they are now.
    pub fn status(&self, sid: Option<Sid>) -> Result<Vec<SessionRecord>, ManagerError> {
        let t = self.table.lock().unwrap();
        let up = |s: &&Session| s.record.state == SessionState::Up;
        match sid {
            Some(sid) => t.session(sid).filter(up).map(|s| vec![s.view()]).ok_or(ManagerError::NotFound(sid)),
            None => Ok(t.sessions().filter(up).map(Session::view).collect()),
        }
    }

    /// `status`, with each session's IPv6 state and addresses read live from its namespace
    /// (a session whose namespace cannot be read shows none, and the reason is logged).
    pub async fn status_live(&self, sid: Option<Sid>) -> Result<Vec<SessionRecord>, ManagerError> {
        let mut records = self.status(sid)?;
        self.fill_ipv6(&mut records).await;
        Ok(records)
    }

    /// `wait_for` ipv6/both: waits (within the DHCP timeout) until the session's uplink has a
    /// usable global IPv6 address, SLAAC or DHCPv6.
    async fn wait_for_ipv6(&self, netns: &str) -> Result<(), StartError> {
        let secs = self.settings.dhcp_timeout_secs;
        let no_ipv6 = || StartError::NoIpv6 { secs, wait_for: self.settings.wait_for };
        let inside = self.platform.inside(netns).await.map_err(|_| no_ipv6())?;
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Ok((crate::config::Ipv6State::Slaac | crate::config::Ipv6State::Dhcpv6, _)) =
                crate::ipv6::read(&inside, SESSION_IF, self.settings.ipv6).await
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(no_ipv6());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Sets the records' IPv6 facts, read from their namespaces.
    async fn fill_ipv6(&self, records: &mut [SessionRecord]) {
        let mode = self.settings.ipv6;
        // A programs-mode session has no namespace: its IPv6 is the host's.
        let reads = futures::future::join_all(records.iter().map(|r| async move {
            if r.mode() == crate::config::Mode::Programs {
                return None;
            }
            let inside = match self.platform.inside(&r.netns).await {
                Ok(inside) => inside,
                Err(e) => return Some(Err(e)),
            };
            Some(crate::ipv6::read(&inside, SESSION_IF, mode).await)
        }))
        .await;
        for (r, read) in records.iter_mut().zip(reads) {
            let Some(read) = read else { continue };
            match read {
                Ok((state, addresses)) => {
                    r.set_ipv6(state, addresses);
                    r.dhcp6_state = self.dhcp6.view(r.session).and_then(|v| v.state);
                }
                Err(e) => tracing::debug!(sid = %r.session, "reading IPv6 addresses: {e}"),
            }
        }
    }

    /// Watches the uplink: when it goes away or down, every session shows the fault in
    /// `status`; when it is back, each session's link is restored (DHCP sessions ask for their
    /// lease again) and the fault clears. Polling once a second costs one netlink request.
    pub async fn watch_uplink(self: Arc<Self>, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.check_uplink().await {
                Err(e) => self.mark_fault(&e.to_string()),
                Ok(()) => {
                    let faulted: Vec<Sid> = self.table.lock().unwrap().sessions().filter(|s| s.record.fault.is_some()).map(|s| s.record.session).collect();
                    for sid in faulted {
                        self.repair(sid).await;
                    }
                }
            }
        }
    }

    fn mark_fault(&self, why: &str) {
        let mut t = self.table.lock().unwrap();
        for mut s in t.sessions_mut() {
            let r = &mut s.record;
            if r.state == SessionState::Up && r.fault.is_none() {
                warn!(sid = %r.session, "fault: {why}");
                r.fault = Some(why.to_string());
            }
        }
    }

    async fn repair(&self, sid: Sid) {
        let lock = self.sid_lock(sid);
        let _held = lock.lock().await;
        if self.is_programs(sid) {
            return self.repair_programs(sid).await;
        }
        let taken = self.table.lock().unwrap().session_mut(sid).filter(|s| s.record.fault.is_some() && s.record.state == SessionState::Up).map(|mut s| {
            if let Some(l) = s.lease.take() {
                l.abandon(); // keep the lease: the new task asks for it again
            }
            (s.record.clone(), s.identity.clone())
        });
        let Some((rec, identity)) = taken else { return };
        let span = info_span!("repair", sid = %sid);
        async {
            let mut plan = self.plan_for(&rec, &identity);
            if rec.addressing == Addressing::Dhcp {
                plan.address = None; // the lease, not the record, says what the address is
            }
            let result = match session::restore_uplink(&self.platform, &plan).await {
                Err(e) => Err(format!("uplink is back but the session could not be restored: {e}")),
                Ok(()) if rec.addressing == Addressing::Dhcp => match self.dhcp.restore(&self.platform, &identity).await {
                    Ok(l) => Ok(Some(l)),
                    Err(e) => Err(format!("uplink is back but DHCP could not restart: {e}")),
                },
                Ok(()) => Ok(None),
            };
            // A re-created interface needs a new ARP socket.
            let defence = match (rec.addressing, rec.address) {
                (Addressing::Static, Some(a)) if result.is_ok() && self.settings.acd_probe_ms > 0 => self.defend_static_addr(&identity, a.addr()).await,
                _ => None,
            };
            if let Some(mut s) = self.table.lock().unwrap().session_mut(sid) {
                match result {
                    Ok(lease) => {
                        info!("uplink back: session restored");
                        s.record.fault = None;
                        s.lease = lease;
                        s.defence = defence;
                    }
                    Err(e) => {
                        warn!("{e}");
                        s.record.fault = Some(e);
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Watches `w`'s process for `sid`: its exit goes to `reap_vanished`.
    fn watch(&self, sid: Sid, w: Watched) -> Watch {
        let exits = self.reaper.exits.clone();
        w.watch(move |h| {
            let _ = exits.send((sid, h));
        })
    }

    /// Counts `w` (a login that asked for the session) as one of the session's holders.
    /// Sessions not held by logins (`sessiond start`, units) stay so: they are never reaped.
    fn hold(&self, sid: Sid, w: Watched) -> SessionRecord {
        let (view, changed) = {
            let mut t = self.table.lock().unwrap();
            let mut s = t.session_mut(sid).expect("a session that just started or was found stays in the table (its sid is locked)");
            let Some(h) = s.record.holding.as_mut() else {
                info!(pid = w.holder.pid, "the session is not held by logins (started outside PAM): not counting this one");
                return s.view();
            };
            let known = h.holders.contains(&w.holder);
            let changed = !known || h.unheld_since.is_some();
            if !known {
                h.holders.push(w.holder);
            }
            h.unheld_since = None;
            if !s.watches.iter().any(|x| x.holder == w.holder) {
                info!(pid = w.holder.pid, "watching a login holding the session");
                let watch = self.watch(sid, w);
                s.watches.push(watch);
            }
            (s.view(), changed.then(|| s.record.clone()))
        };
        if let Some(rec) = changed
            && let Err(e) = self.state.save(&rec)
        {
            warn!(sid = %sid, "recording the session's holders: {e}");
        }
        view
    }

    /// Watches again the holders a record names (after a restart); those that exited meanwhile
    /// are dropped, and a session left with none waits out its grace period from now.
    fn rewatch(&self, rec: &mut SessionRecord) -> Vec<Watch> {
        let sid = rec.session;
        let Some(h) = rec.holding.as_mut() else { return Vec::new() };
        let mut watches = Vec::new();
        let before = h.holders.len();
        h.holders.retain(|holder| match crate::holders::reopen(*holder) {
            Ok(Some(w)) => {
                watches.push(self.watch(sid, w));
                true
            }
            Ok(None) => {
                info!(pid = holder.pid, "a login holding the session exited while the daemon was down");
                false
            }
            Err(e) => {
                // Kept (never reaped for it) rather than stopping a session on a guess.
                warn!(pid = holder.pid, "{e}; keeping it as a holder");
                true
            }
        });
        if h.holders.is_empty() && h.unheld_since.is_none() {
            h.unheld_since = Some(now_ms());
        }
        if h.holders.len() != before
            && let Err(e) = self.state.save(rec)
        {
            warn!(sid = %sid, "recording the session's holders: {e}");
        }
        watches
    }

    /// Stops sessions whose logins all vanished without logging out (sshd's process killed,
    /// OOM): a holder's exit is reported by its watch; once a session has no holder left it
    /// is stopped `reap_after_secs` later, unless a login holds it again first (or it is
    /// stopped). Runs for the daemon's life, from after recovery.
    pub async fn reap_vanished(self: Arc<Self>) {
        let Some(mut exits) = self.reaper.reports.lock().unwrap().take() else { return };
        // Those whose holders all went while the daemon was down (or before a restart).
        let unheld: Vec<(Sid, u64)> = self
            .table
            .lock()
            .unwrap()
            .sessions()
            .filter_map(|s| s.record.holding.as_ref().filter(|h| h.holders.is_empty()).and_then(|h| h.unheld_since).map(|t| (s.record.session, t)))
            .collect();
        for (sid, since) in unheld {
            self.clone().reap_after_grace(sid, since);
        }
        while let Some((sid, holder)) = exits.recv().await {
            let m = self.clone();
            tokio::spawn(async move {
                if let Some(since) = m.holder_exited(sid, holder).await {
                    m.reap_after_grace(sid, since);
                }
            });
        }
    }

    /// Drops an exited holder; returns when the session was left without any, if it was.
    async fn holder_exited(&self, sid: Sid, holder: Holder) -> Option<u64> {
        let lock = self.sid_lock(sid);
        let _held = lock.lock().await;
        let rec = {
            let mut t = self.table.lock().unwrap();
            let mut s = t.session_mut(sid)?;
            s.watches.retain(|w| w.holder != holder);
            let h = s.record.holding.as_mut()?;
            let before = h.holders.len();
            h.holders.retain(|x| *x != holder);
            if h.holders.len() == before {
                return None;
            }
            if h.holders.is_empty() {
                h.unheld_since = Some(now_ms());
            }
            s.record.clone()
        };
        let h = rec.holding.as_ref().expect("set above");
        info!(sid = %sid, pid = holder.pid, left = h.holders.len(), "a login holding the session exited");
        if let Err(e) = self.state.save(&rec) {
            warn!(sid = %sid, "recording the session's holders: {e}");
        }
        h.unheld_since
    }

    /// Stops `sid` once the grace period after `since` is over, if it has had no holder since.
    fn reap_after_grace(self: Arc<Self>, sid: Sid, since: u64) {
        let grace = self.reaper.grace;
        let wait = std::time::Duration::from_millis((since + grace.as_millis() as u64).saturating_sub(now_ms()));
        let span = info_span!(parent: None, "reap", sid = %sid);
        tokio::spawn(
            async move {
                tokio::time::sleep(wait).await;
                let held = self.sid_lock(sid).lock_owned().await;
                let due = self
                    .table
                    .lock()
                    .unwrap()
                    .session(sid)
                    .and_then(|s| s.record.holding.as_ref())
                    .is_some_and(|h| h.holders.is_empty() && h.unheld_since == Some(since));
                if !due {
                    return; // held again, or stopped
                }
                info!("no login has held the session for {} s: stopping it", grace.as_secs());
                if let Err(e) = self.stop_with_lock(sid, held).await {
                    warn!("stopping a session no login holds: {e}");
                }
            }
            .instrument(span),
        );
    }

    /// After a (re)start: adopt the live sessions, undo the half-made (or half-stopped) ones,
    /// and sweep what has no record at all.
    pub async fn recover(&self) -> RecoveryReport {
        let mut report = RecoveryReport::default();
        self.state.sweep_temp_files();
        let (records, errors) = self.state.load_all();
        for e in errors {
            warn!("state: {e}");
            report.errors.push(e.to_string());
        }
        let known: BTreeSet<Sid> = records.iter().map(|r| r.session).collect();
        for rec in records {
            let span = info_span!("recover", sid = %rec.session);
            async {
                if rec.programs.is_some() {
                    self.recover_programs(rec, &mut report).await;
                } else if rec.state == SessionState::Up && self.is_live(&rec).await {
                    self.adopt(rec, &mut report).await;
                } else {
                    self.undo_half_made(rec, &mut report).await;
                }
            }
            .instrument(span)
            .await;
        }
        self.sweep_orphans(&known, &mut report).await;
        self.resume_pending_reaps(&known, &mut report).await;
        self.publish_sessions_up();
        report
    }

    /// A live session from the last run: re-apply what a static one is made of (so a half-lost
    /// address or file comes back); give a DHCP one its lease task again (INIT-REBOOT).
    async fn adopt(&self, rec: SessionRecord, report: &mut RecoveryReport) {
        let sid = rec.session;
        let identity = self.identity(sid);
        let mut lease = None;
        match rec.addressing {
            Addressing::Static => {
                let plan = self.plan_for(&rec, &identity);
                if let Ok(inside) = self.platform.inside(&rec.netns).await
                    && let Some(addr) = rec.address
                    && let Err(e) = session::apply_address(&inside, addr, rec.gateway, None).await
                {
                    warn!("re-apply address: {e}");
                }
                let _ = self.platform.write_netns_file(&rec.netns, "resolv.conf", &plan.resolv_conf);
                let _ = self.platform.write_netns_file(&rec.netns, "hosts", &plan.hosts);
                if let Some(a) = rec.address {
                    self.table.lock().unwrap().history.last_address.insert(sid.get(), a.addr());
                }
            }
            Addressing::Dhcp => {
                // Sessions built by an older daemon may lack it (see session::build).
                let _ = session::enable_promote_secondaries(&self.platform, &rec.netns);
                match self.dhcp.resume(&self.platform, &identity).await {
                    Ok(l) => lease = Some(l),
                    Err(e) => report.errors.push(format!("session {sid}: restarting DHCP: {e}")),
                }
            }
        }
        let netns = self.platform.hold_netns(&rec.netns);
        let mut rec = rec;
        let watches = self.rewatch(&mut rec);
        // Its DHCPv6 task starts once the daemon serves (`start_ipv6_adopted`).
        // A static session's defence is set up once the daemon serves (`defend_adopted`).
        self.table.lock().unwrap().insert(Session { record: rec, identity, lease, netns, watches, defence: None, claiming: false, hooks: None });
        report.adopted.push(sid);
    }

    /// A session the last run left unfinished (or whose namespace died): release its lease,
    /// tear down what is left, and forget it; on errors keep it as `Stopping` for a next try.
    async fn undo_half_made(&self, rec: SessionRecord, report: &mut RecoveryReport) {
        let sid = rec.session;
        info!(state = ?rec.state, "cleaning up a session the last run left unfinished or dead");
        let identity = self.identity(sid);
        if rec.addressing == Addressing::Dhcp && self.is_live(&rec).await {
            match self.dhcp.release_orphan(&self.platform, &identity).await {
                Ok(true) => info!("released its lease"),
                Ok(false) => {}
                Err(e) => warn!("could not release its lease: {e}"),
            }
        }
        let errs = session::teardown(&self.platform, &TeardownSpec::for_sid(sid, Some(rec.link), rec.address)).await;
        let _ = self.dhcp.forget(sid);
        if errs.is_empty() {
            let _ = self.state.remove(sid);
            report.cleaned.push(sid);
            return;
        }
        report.errors.extend(errs.iter().map(|e| format!("session {sid}: {e}")));
        // kept, so the next stop or restart tries again
        let mut record = rec;
        record.state = SessionState::Stopping;
        self.table.lock().unwrap().insert(Session::bare(record, identity));
    }

    /// Namespaces named like a session with no record, and /etc/netns entries of sessions that
    /// died with a reboot (/etc/netns outlives it, the namespaces and their files under /run
    /// do not). Other software's are left alone.
    async fn sweep_orphans(&self, known: &BTreeSet<Sid>, report: &mut RecoveryReport) {
        for name in self.platform.list_netns() {
            if let Some(sid) = Sid::from_netns_name(&name)
                && !known.contains(&sid)
            {
                info!(sid = %sid, "removing an orphan namespace with no state");
                let errs = session::teardown(&self.platform, &TeardownSpec::for_sid(sid, None, None)).await;
                report.errors.extend(errs.iter().map(|e| format!("orphan {name}: {e}")));
                report.cleaned.push(sid);
            }
        }
        for name in self.platform.list_netns_files() {
            if let Some(sid) = Sid::from_netns_name(&name)
                && !known.contains(&sid)
                && !self.platform.netns_exists(&name)
            {
                info!(sid = %sid, "removing /etc/netns/{name}: no such session");
                if let Err(e) = self.platform.remove_netns_files(&name) {
                    report.errors.push(format!("orphan files {name}: {e}"));
                }
            }
        }
    }

    /// A session is live when its namespace and its interface still exist.
    async fn is_live(&self, rec: &SessionRecord) -> bool {
        if !self.platform.netns_exists(&rec.netns) {
            return false;
        }
        match self.platform.inside(&rec.netns).await {
            Ok(inside) => matches!(inside.link_index(SESSION_IF).await, Ok(Some(_))),
            Err(_) => false,
        }
    }
}

#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub adopted: Vec<Sid>,
    pub cleaned: Vec<Sid>,
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, LinkKind};
    use crate::fake::FakePlatform;

    fn settings(pool: &str) -> Settings {
        Settings::merge(
            FileConfig {
                uplink: Some("br-lan".into()),
                addressing: Some(Addressing::Static),
                pool: Some(pool.into()),
                gateway: Some("10.0.0.1".parse().unwrap()),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap()
    }

    fn manager(p: FakePlatform, dir: &std::path::Path, pool: &str) -> Manager<FakePlatform> {
        Manager::new(p, settings(pool), StateDir::open(dir).unwrap(), "mid".into(), "host1".into()).unwrap()
    }

    fn sid(n: u64) -> Sid {
        Sid::new(n).unwrap()
    }

    #[tokio::test]
    async fn start_is_idempotent_and_stop_cleans_everything() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let m = manager(p.clone(), d.path(), "10.0.0.100-10.0.0.101/24");
        let a = m.start(Some(sid(1)), Some(1000)).await.unwrap();
        assert_eq!(a.address.unwrap().to_string(), "10.0.0.100/24");
        assert_eq!(a.loopback.to_string(), "127.0.0.2");
        assert_eq!(a.state, SessionState::Up);
        assert_eq!(m.start(Some(sid(1)), Some(1000)).await.unwrap(), a);
        let e = m.start(Some(sid(1)), Some(1001)).await.unwrap_err().to_string();
        assert!(e.contains("another user"), "{e}");
        assert_eq!(m.state.load_all().0, vec![a.clone()]);
        assert_eq!(m.stop(sid(1)).await.unwrap(), Stopped::Stopped);
        assert_eq!(m.stop(sid(1)).await.unwrap(), Stopped::WasAbsent);
        assert!(p.is_empty(), "{:?}", p.objects());
        assert!(m.state.load_all().0.is_empty());
    }

    #[tokio::test]
    async fn a_start_never_joins_a_session_of_another_owner() {
        let d = tempfile::tempdir().unwrap();
        let m = manager(FakePlatform::new(), d.path(), "10.0.0.100-10.0.0.110/24");
        let bob = m.start(Some(sid(5)), Some(1001)).await.unwrap();
        // root's `start --session 5` (the unit sessiond@5) must not land in bob's namespace
        let e = m.start(Some(sid(5)), None).await.unwrap_err();
        assert!(matches!(e, ManagerError::OtherOwner { owner: Some(1001), wanted: None, .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::OtherOwner);
        assert!(e.to_string().contains("uid 1001") && e.to_string().contains("without an owner"), "{e}");
        let e = m.start(Some(sid(5)), Some(1000)).await.unwrap_err();
        assert!(matches!(e, ManagerError::OtherOwner { owner: Some(1001), wanted: Some(1000), .. }), "{e}");
        assert_eq!(m.start(Some(sid(5)), Some(1001)).await.unwrap(), bob, "the same owner: idempotent");
        // an ownerless session is not handed to a user either, and stays idempotent for no owner
        let unit = m.start(Some(sid(6)), None).await.unwrap();
        assert_eq!(m.start(Some(sid(6)), None).await.unwrap(), unit);
        let e = m.start(Some(sid(6)), Some(1000)).await.unwrap_err();
        assert!(matches!(e, ManagerError::OtherOwner { owner: None, wanted: Some(1000), .. }), "{e}");
        assert_eq!(m.status(None).unwrap(), vec![bob, unit], "refusals changed nothing");
    }

    #[tokio::test]
    async fn automatic_sids_and_exhaustion_leave_nothing_half_made() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let m = manager(p.clone(), d.path(), "10.0.0.100-10.0.0.101/24");
        assert_eq!(m.start(None, None).await.unwrap().session, sid(1));
        assert_eq!(m.start(None, None).await.unwrap().session, sid(2));
        let objects_before = p.objects();
        let e = m.start(None, None).await.unwrap_err().to_string();
        assert!(e.contains("exhausted"), "{e}");
        assert_eq!(p.objects(), objects_before);
        assert_eq!(m.status(None).unwrap().len(), 2);
        assert_eq!(m.state.load_all().0.len(), 2);
    }

    #[tokio::test]
    async fn sid_gets_its_address_back() {
        let d = tempfile::tempdir().unwrap();
        let m = manager(FakePlatform::new(), d.path(), "10.0.0.100-10.0.0.110/24");
        let a5 = m.start(Some(sid(5)), None).await.unwrap().address;
        let a6 = m.start(Some(sid(6)), None).await.unwrap().address;
        m.stop(sid(5)).await.unwrap();
        m.start(Some(sid(7)), None).await.unwrap();
        assert_eq!(m.start(Some(sid(5)), None).await.unwrap().address, a5);
        assert_ne!(a5, a6);
        // and across a daemon restart (history is persisted)
        m.stop(sid(5)).await.unwrap();
        let m2 = manager(FakePlatform::new(), d.path(), "10.0.0.100-10.0.0.110/24");
        assert_eq!(m2.start(Some(sid(5)), None).await.unwrap().address, a5);
    }

    #[tokio::test]
    async fn failed_build_is_rolled_back_with_state() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        p.fail_on("sessiond-1: up eth0");
        let m = manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        let e = m.start(Some(sid(1)), None).await.unwrap_err().to_string();
        assert!(e.contains("bring the uplink up"), "{e}");
        assert!(p.is_empty(), "{:?}", p.objects());
        assert!(m.state.load_all().0.is_empty());
        assert!(m.status(None).unwrap().is_empty());
    }

    #[tokio::test]
    async fn missing_uplink_is_refused_before_anything_is_made() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        p.remove_host_link("br-lan");
        let m = manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        let e = m.start(Some(sid(1)), None).await.unwrap_err().to_string();
        assert!(e.contains("uplink br-lan does not exist"), "{e}");
        assert!(p.log().is_empty());
    }

    #[tokio::test]
    async fn unwritable_state_dir_fails_cleanly() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let m = manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        m.start(Some(sid(1)), None).await.unwrap();
        // make the sessions dir unusable: replace it with a file
        std::fs::remove_dir_all(d.path().join("sessions")).unwrap();
        std::fs::write(d.path().join("sessions"), b"").unwrap();
        let before = p.objects();
        let e = m.start(Some(sid(2)), None).await.unwrap_err().to_string();
        assert!(e.contains("cannot record its state"), "{e}");
        assert_eq!(p.objects(), before, "nothing new was made");
        assert_eq!(m.status(None).unwrap().len(), 1, "the running session is untouched");
    }

    #[tokio::test]
    async fn recovery_adopts_live_and_cleans_half_made_and_orphans() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let m = manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        let live = m.start(Some(sid(1)), None).await.unwrap();
        let dead = m.start(Some(sid(2)), None).await.unwrap();
        // session 2 crashed mid-start: record says Starting
        let mut starting = dead.clone();
        starting.state = SessionState::Starting;
        m.state.save(&starting).unwrap();
        // an orphan namespace with no record
        p.create_netns("sessiond-9", &[]).await.unwrap();
        // /etc/netns files of a session that died with a reboot (no namespace, no record),
        // and files that are not sessiond's
        p.write_netns_file("sessiond-7", "hosts", "x").unwrap();
        p.write_netns_file("blue", "hosts", "x").unwrap();
        let m2 = manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        let r = m2.recover().await;
        assert_eq!(r.adopted, vec![sid(1)]);
        assert_eq!(r.cleaned, vec![sid(2), sid(9)]);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(m2.status(None).unwrap(), vec![live]);
        assert_eq!(p.list_netns(), vec!["sessiond-1".to_string()]);
        assert_eq!(p.list_netns_files(), vec!["blue".to_string(), "sessiond-1".to_string()]);
        assert_eq!(m2.state.load_all().0.len(), 1);
    }

    #[tokio::test]
    async fn hundred_concurrent_starts_get_distinct_addresses() {
        let d = tempfile::tempdir().unwrap();
        let m = Arc::new(manager(FakePlatform::new(), d.path(), "10.0.0.10-10.0.0.250/24"));
        let tasks: Vec<_> = (1..=100)
            .map(|n| {
                let m = m.clone();
                tokio::spawn(async move { m.start(Some(sid(n)), None).await })
            })
            .collect();
        let mut addrs = BTreeSet::new();
        for t in tasks {
            addrs.insert(t.await.unwrap().unwrap().address.unwrap());
        }
        assert_eq!(addrs.len(), 100);
        assert_eq!(m.stop_all().await.unwrap().len(), 100);
    }

    #[tokio::test]
    async fn uplink_loss_is_reported_and_repaired() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let m = Arc::new(manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24"));
        m.start(Some(sid(1)), None).await.unwrap();
        tokio::spawn(m.clone().watch_uplink(std::time::Duration::from_millis(5)));
        p.remove_host_link("br-lan");
        assert!(!p.objects().contains("link:sessiond-1/eth0"), "the fake deletes the macvlan with its parent");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let st = m.status(None).unwrap();
        assert!(st[0].fault.as_deref().unwrap_or("").contains("uplink br-lan does not exist"), "{:?}", st[0].fault);
        p.clear_log();
        p.add_host_link("br-lan");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(m.status(None).unwrap()[0].fault, None);
        let log = p.log();
        assert!(log.iter().any(|l| l.starts_with("host: macvlan eth0 on br-lan") && l.ends_with("in sessiond-1")), "{log:?}");
        assert!(log.contains(&"sessiond-1: addr add 10.0.0.100/24 dev eth0".to_string()), "{log:?}");
        assert!(p.objects().contains("link:sessiond-1/eth0"));
    }

    /// A process that stands for a login (sshd's per-connection process), killed by the test.
    struct Login(std::process::Child);

    impl Login {
        fn new() -> Login {
            Login(std::process::Command::new("sleep").arg("60").spawn().unwrap())
        }
        fn holder(&self) -> Holder {
            Holder::of(self.0.id()).unwrap()
        }
        fn watched(&self) -> Watched {
            crate::holders::reopen(self.holder()).unwrap().expect("running")
        }
        fn kill(&mut self) {
            self.0.kill().unwrap();
            self.0.wait().unwrap();
        }
    }

    impl Drop for Login {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn reaping_manager(p: FakePlatform, dir: &std::path::Path, grace_secs: u64) -> Arc<Manager<FakePlatform>> {
        let mut s = settings("10.0.0.100-10.0.0.110/24");
        s.reap_after_secs = grace_secs;
        let m = Arc::new(Manager::new(p, s, StateDir::open(dir).unwrap(), "mid".into(), "h".into()).unwrap());
        tokio::spawn(m.clone().reap_vanished());
        m
    }

    fn running(m: &Manager<FakePlatform>, n: u64) -> Option<SessionRecord> {
        m.status(Some(sid(n))).ok().map(|mut v| v.remove(0))
    }

    fn holders_of(r: &SessionRecord) -> Vec<u32> {
        r.holding.as_ref().map(|h| h.holders.iter().map(|x| x.pid).collect()).unwrap_or_default()
    }

    fn unheld(r: &SessionRecord) -> bool {
        r.holding.as_ref().is_some_and(|h| h.holders.is_empty() && h.unheld_since.is_some())
    }

    /// Waits (real time: the watches wait on real processes) until `f` holds.
    async fn eventually(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
        let end = std::time::Instant::now() + within;
        while !f() {
            assert!(std::time::Instant::now() < end, "not within {within:?}: {what}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    const SEC: std::time::Duration = std::time::Duration::from_secs(1);

    #[tokio::test]
    async fn a_session_whose_logins_all_vanished_is_stopped_after_the_grace_period() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let m = reaping_manager(p.clone(), d.path(), 2);
        let (mut a, mut b) = (Login::new(), Login::new());
        let r = m.start_for(Some(sid(1)), Some(1000), Some(a.watched()), &|| false).await.unwrap();
        assert_eq!(holders_of(&r), vec![a.0.id()]);
        // a second login joins; a start without a holder (the CLI) changes nothing
        m.start_for(Some(sid(1)), Some(1000), Some(b.watched()), &|| false).await.unwrap();
        assert_eq!(holders_of(&m.start(Some(sid(1)), Some(1000)).await.unwrap()), vec![a.0.id(), b.0.id()]);
        // sessions no login holds are never reaped
        assert_eq!(m.start(Some(sid(2)), None).await.unwrap().holding, None);
        assert_eq!(m.state.load_all().0.iter().find(|r| r.session == sid(1)).map(holders_of), Some(vec![a.0.id(), b.0.id()]), "persisted");
        a.kill();
        eventually("a's exit seen", SEC, || running(&m, 1).is_some_and(|r| holders_of(&r) == vec![b.0.id()])).await;
        tokio::time::sleep(3 * SEC).await;
        assert!(running(&m, 1).is_some(), "b still holds it");
        b.kill();
        let killed = std::time::Instant::now();
        eventually("b's exit seen", SEC, || running(&m, 1).is_some_and(|r| unheld(&r))).await;
        tokio::time::sleep((2 * SEC).saturating_sub(killed.elapsed() + std::time::Duration::from_millis(300))).await;
        assert!(running(&m, 1).is_some(), "not before the grace period ends");
        eventually("reaped", 3 * SEC, || running(&m, 1).is_none()).await;
        assert!(killed.elapsed() >= 2 * SEC);
        assert_eq!(m.status(None).unwrap().iter().map(|r| r.session).collect::<Vec<_>>(), vec![sid(2)]);
        assert!(!p.objects().iter().any(|o| o.contains("sessiond-1")), "{:?}", p.objects());
        assert_eq!(m.state.load_all().0.len(), 1);
    }

    #[tokio::test]
    async fn a_new_login_or_a_stop_within_the_grace_period_cancels_the_reaping() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let m = reaping_manager(p.clone(), d.path(), 2);
        let (mut a, b) = (Login::new(), Login::new());
        m.start_for(Some(sid(1)), Some(1000), Some(a.watched()), &|| false).await.unwrap();
        a.kill();
        eventually("a's exit seen", SEC, || running(&m, 1).is_some_and(|r| unheld(&r))).await;
        let r = m.start_for(Some(sid(1)), Some(1000), Some(b.watched()), &|| false).await.unwrap();
        assert_eq!(r.holding.unwrap().unheld_since, None);
        tokio::time::sleep(3 * SEC).await;
        assert_eq!(holders_of(&running(&m, 1).expect("held again: kept")), vec![b.0.id()]);
        // stopped while unheld: the pending reap finds nothing, and a new session of the sid
        // started meanwhile is not touched by it
        let mut c = Login::new();
        m.start_for(Some(sid(3)), None, Some(c.watched()), &|| false).await.unwrap();
        c.kill();
        eventually("c's exit seen", SEC, || running(&m, 3).is_some_and(|r| unheld(&r))).await;
        m.stop(sid(3)).await.unwrap();
        m.start(Some(sid(3)), None).await.unwrap();
        tokio::time::sleep(3 * SEC).await;
        assert!(running(&m, 3).is_some());
    }

    #[tokio::test]
    async fn a_restarted_daemon_watches_the_holders_again() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let (mut a, mut b) = (Login::new(), Login::new());
        {
            let m1 = reaping_manager(p.clone(), d.path(), 2);
            m1.start_for(Some(sid(1)), None, Some(a.watched()), &|| false).await.unwrap();
            m1.start_for(Some(sid(2)), None, Some(b.watched()), &|| false).await.unwrap();
        }
        // b's login dies while no daemon runs; a's lives on
        b.kill();
        let m2 = {
            let mut s = settings("10.0.0.100-10.0.0.110/24");
            s.reap_after_secs = 2;
            Arc::new(Manager::new(p.clone(), s, StateDir::open(d.path()).unwrap(), "mid".into(), "h".into()).unwrap())
        };
        assert_eq!(m2.recover().await.adopted, vec![sid(1), sid(2)]);
        let restarted = std::time::Instant::now();
        tokio::spawn(m2.clone().reap_vanished());
        assert_eq!(holders_of(&running(&m2, 1).unwrap()), vec![a.0.id()]);
        assert!(unheld(&running(&m2, 2).unwrap()));
        eventually("2 reaped", 4 * SEC, || running(&m2, 2).is_none()).await;
        assert!(restarted.elapsed() >= 2 * SEC - std::time::Duration::from_millis(100), "its grace period started at the restart");
        assert!(running(&m2, 1).is_some());
        a.kill();
        eventually("1 reaped: the re-opened pidfd saw the exit", 4 * SEC, || running(&m2, 1).is_none()).await;
        assert!(p.is_empty(), "{:?}", p.objects());
    }

    #[tokio::test]
    async fn a_start_whose_requester_hung_up_is_rolled_back() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let m = manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        // hung up before the start began: nothing is made
        let e = m.start_for(Some(sid(1)), None, None, &|| true).await.unwrap_err();
        assert!(matches!(e, ManagerError::RequesterGone(_)), "{e}");
        assert!(p.log().is_empty(), "{:?}", p.log());
        // hung up while it was being made: made, then undone before anyone saw it
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let hangs_up_after_the_first_look = || asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0;
        let e = m.start_for(Some(sid(1)), None, None, &hangs_up_after_the_first_look).await.unwrap_err();
        assert!(matches!(e, ManagerError::RequesterGone(_)) && e.to_string().contains("hung up"), "{e}");
        assert!(p.log().iter().any(|l| l.contains("sessiond-1")), "it was built: {:?}", p.log());
        assert!(p.is_empty(), "{:?}", p.objects());
        assert!(m.state.load_all().0.is_empty());
        assert!(m.status(None).unwrap().is_empty());
        // a session already up is never undone by a requester hanging up
        m.start(Some(sid(2)), None).await.unwrap();
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let hangs_up_after_the_first_look = || asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0;
        m.start_for(Some(sid(2)), None, None, &hangs_up_after_the_first_look).await.unwrap();
        assert!(running(&m, 2).is_some());
    }

    #[tokio::test]
    async fn a_hung_up_start_does_not_undo_what_a_concurrent_request_waits_for() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let m = Arc::new(manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24"));
        for _ in 0..20 {
            let vanishing = {
                let m = m.clone();
                tokio::spawn(async move {
                    let asked = std::sync::atomic::AtomicUsize::new(0);
                    m.start_for(Some(sid(7)), None, None, &|| asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0).await
                })
            };
            let waiting = {
                let m = m.clone();
                tokio::spawn(async move { m.start(Some(sid(7)), None).await })
            };
            let (v, w) = (vanishing.await.unwrap(), waiting.await.unwrap());
            let up = w.expect("the waiting request gets its session");
            assert!(v.is_err() || v.unwrap() == up);
            assert_eq!(running(&m, 7), Some(up), "and keeps it");
            m.stop(sid(7)).await.unwrap();
        }
    }

    /// A manager whose static sessions probe for 7 ms (the fake LAN answers at once).
    fn probing_manager(p: FakePlatform, dir: &std::path::Path, pool: &str) -> Arc<Manager<FakePlatform>> {
        let mut s = settings(pool);
        s.acd_probe_ms = 7;
        let m = Arc::new(Manager::new(p, s, StateDir::open(dir).unwrap(), "mid".into(), "host1".into()).unwrap());
        tokio::spawn(m.clone().watch_conflicts());
        m
    }

    const SQUATTER: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn ip(s: &str) -> std::net::Ipv4Addr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_static_address_another_host_holds_is_skipped_before_it_is_used() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        p.add_lan_host(ip("10.0.0.100"), SQUATTER);
        let m = probing_manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        let a = m.start(Some(sid(1)), None).await.unwrap();
        assert_eq!(a.address.unwrap().to_string(), "10.0.0.101/24");
        let log = p.log();
        let at = |l: &str| log.iter().position(|x| x == l).unwrap_or_else(|| panic!("no {l:?} in {log:?}"));
        assert!(at("sessiond-1: arp probe 10.0.0.100") < at("sessiond-1: arp probe 10.0.0.101"));
        assert!(at("sessiond-1: arp probe 10.0.0.101") < at("sessiond-1: addr add 10.0.0.101/24 dev eth0"), "probed before use");
        assert!(!log.iter().any(|l| l.contains("addr add 10.0.0.100")), "the taken address never went on eth0: {log:?}");
        assert!(log.contains(&"sessiond-1: arp announce 10.0.0.101".to_string()), "announced once claimed");
        // recorded, and remembered for the sid
        assert_eq!(m.state.load_all().0[0].address, a.address);
        assert_eq!(m.state.load_last_addresses().last_address.get(&1), Some(&ip("10.0.0.101")));
        // the next session skips the taken address without probing it again
        p.clear_log();
        assert_eq!(m.start(Some(sid(2)), None).await.unwrap().address.unwrap().to_string(), "10.0.0.102/24");
        assert!(!p.log().iter().any(|l| l.contains("arp probe 10.0.0.100")), "{:?}", p.log());
    }

    /// A clone of this machine (same machine-id, so the same session MAC) holds 10.0.0.100 on
    /// a macvlan LAN: the session's own probe gets no answer (the clone's macvlan keeps it), the
    /// uplink's does, with the session's MAC.
    #[tokio::test]
    async fn a_host_with_the_sessions_own_mac_ends_the_start_with_the_likely_cause() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let mac = Identity::new("mid", sid(1)).mac;
        p.add_lan_host(ip("10.0.0.100"), mac);
        let m = probing_manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        let e = m.start(Some(sid(1)), None).await.unwrap_err().to_string();
        assert!(e.contains("10.0.0.100") && e.contains("own MAC") && e.contains(&crate::mac::format_mac(&mac)) && e.contains("/etc/machine-id"), "{e}");
        assert!(p.is_empty(), "nothing left: {:?}", p.objects());
        assert!(m.state.load_all().0.is_empty());
        let log = p.log();
        assert!(log.contains(&"host: arp probe 10.0.0.100".to_string()), "probed from the uplink: {log:?}");
        assert!(!log.iter().any(|l| l.contains("arp probe 10.0.0.101")), "no other address tried: {log:?}");
        // The uplink is probed only until an address is found free: the next start's session
        // probes from both, and once up, nothing more goes out from the uplink.
        p.clear_log();
        assert_eq!(m.start(Some(sid(2)), None).await.unwrap().address.unwrap().to_string(), "10.0.0.101/24");
        let log = p.log();
        assert!(log.contains(&"host: arp probe 10.0.0.101".to_string()), "{log:?}");
        assert_eq!(log.iter().filter(|l| l.starts_with("host: arp")).count(), crate::acd::PROBE_NUM as usize, "{log:?}");
    }

    /// The same clone behind a veth/bridge uplink: the session's own probe hears it (a probe from
    /// the bridge would reach this host's own sessions, so there is none).
    #[tokio::test]
    async fn on_a_veth_uplink_the_sessions_own_probe_catches_a_clone() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let mac = Identity::new("mid", sid(1)).mac;
        p.add_lan_host(ip("10.0.0.100"), mac);
        let mut s = settings("10.0.0.100-10.0.0.110/24");
        (s.acd_probe_ms, s.link, s.bridge) = (7, LinkKind::Veth, Some("br-lan".into()));
        let m = Manager::new(p.clone(), s, StateDir::open(d.path()).unwrap(), "mid".into(), "host1".into()).unwrap();
        let e = m.start(Some(sid(1)), None).await.unwrap_err().to_string();
        assert!(e.contains("10.0.0.100") && e.contains("own MAC") && e.contains("/etc/machine-id"), "{e}");
        assert!(!p.log().iter().any(|l| l.starts_with("host: arp")), "{:?}", p.log());
        assert!(p.is_empty(), "nothing left: {:?}", p.objects());
    }

    #[tokio::test]
    async fn a_persistent_conflict_ends_the_start_after_max_conflicts() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        for n in 100..120 {
            p.add_lan_host(ip(&format!("10.0.0.{n}")), SQUATTER);
        }
        let m = probing_manager(p.clone(), d.path(), "10.0.0.100-10.0.0.130/24");
        let e = m.start(Some(sid(1)), None).await.unwrap_err().to_string();
        assert!(e.contains(&format!("after {MAX_CONFLICTS} pool addresses")) && e.contains("10.0.0.109"), "{e}");
        assert_eq!(p.log().iter().filter(|l| l.starts_with("sessiond-1: arp probe")).count(), MAX_CONFLICTS as usize);
        assert!(p.is_empty(), "{:?}", p.objects());
    }

    #[tokio::test]
    async fn a_static_address_taken_while_up_is_defended_then_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let m = probing_manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        m.start(Some(sid(1)), None).await.unwrap();
        let claim = crate::acd::ArpPacket::announcement(SQUATTER, ip("10.0.0.100")).frame();
        p.clear_log();
        p.arp_inject("sessiond-1", &claim);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(p.log(), vec!["sessiond-1: arp announce 10.0.0.100"], "defended once");
        assert_eq!(m.status(None).unwrap()[0].address.unwrap().to_string(), "10.0.0.100/24");
        // claimed again within DEFEND_INTERVAL: given up, the next pool address probed and used
        p.add_lan_host(ip("10.0.0.100"), SQUATTER);
        p.arp_inject("sessiond-1", &claim);
        let added = "sessiond-1: addr add 10.0.0.101/24 dev eth0".to_string();
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if p.log().contains(&added) {
                break;
            }
        }
        let log = p.log();
        let at = |l: &str| log.iter().position(|x| x == l).unwrap_or_else(|| panic!("no {l:?} in {log:?}"));
        assert!(at("sessiond-1: arp probe 10.0.0.101") < at(&added), "probed before use");
        assert_eq!(m.status(None).unwrap()[0].address.unwrap().to_string(), "10.0.0.101/24");
        assert!(log.contains(&"sessiond-1: addr del 10.0.0.100/24 dev eth0".to_string()), "{log:?}");
        assert!(log.contains(&"sessiond-1: addr add 10.0.0.101/24 dev eth0".to_string()), "{log:?}");
        assert_eq!(m.state.load_all().0[0].address.unwrap().to_string(), "10.0.0.101/24", "recorded");
        // and the new address is defended in turn
        p.clear_log();
        p.arp_inject("sessiond-1", &crate::acd::ArpPacket::announcement(SQUATTER, ip("10.0.0.101")).frame());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(p.log(), vec!["sessiond-1: arp announce 10.0.0.101"]);
        assert!(m.stop(sid(1)).await.is_ok());
    }

    #[tokio::test]
    async fn a_re_adopted_static_session_is_defended_once_the_daemon_serves() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let mut settings = settings("10.0.0.100-10.0.0.110/24");
        settings.acd_probe_ms = 7;
        let m = Manager::new(p.clone(), settings, StateDir::open(d.path()).unwrap(), "mid".into(), "host1".into()).unwrap();
        m.start(Some(sid(1)), None).await.unwrap();
        drop(m); // the daemon dies: so does its defence
        let m2 = probing_manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        assert_eq!(m2.recover().await.adopted, vec![sid(1)]);
        m2.clone().defend_adopted().await;
        p.clear_log();
        p.arp_inject("sessiond-1", &crate::acd::ArpPacket::announcement(SQUATTER, ip("10.0.0.100")).frame());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(p.log(), vec!["sessiond-1: arp announce 10.0.0.100"], "defended, no probe (the address was in use)");
    }

    #[tokio::test]
    async fn with_acd_off_nothing_is_probed() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        p.add_lan_host(ip("10.0.0.100"), SQUATTER);
        let mut s = settings("10.0.0.100-10.0.0.110/24");
        s.acd_probe_ms = 0;
        let m = Manager::new(p.clone(), s, StateDir::open(d.path()).unwrap(), "mid".into(), "h".into()).unwrap();
        assert_eq!(m.start(Some(sid(1)), None).await.unwrap().address.unwrap().to_string(), "10.0.0.100/24");
        assert!(!p.log().iter().any(|l| l.contains("arp")));
    }

    #[test]
    fn veth_records_name_the_host_end() {
        let d = tempfile::tempdir().unwrap();
        let mut s = settings("10.0.0.100-10.0.0.110/24");
        s.link = LinkKind::Veth;
        s.bridge = Some("br-lan".into());
        let m = Manager::new(FakePlatform::new(), s, StateDir::open(d.path()).unwrap(), "mid".into(), "h".into()).unwrap();
        let r = m.reserve(&Identity::new("mid", sid(4)), None, None).unwrap();
        assert_eq!(r.host_link.as_deref(), Some("sdv4"));
    }

    #[tokio::test]
    async fn the_count_of_sessions_up_follows_starts_stops_and_recovery() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let m = manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        let mut up = m.sessions_up();
        assert_eq!(*up.borrow_and_update(), 0);
        m.start(Some(sid(1)), None).await.unwrap();
        m.start(Some(sid(2)), None).await.unwrap();
        assert_eq!(*up.borrow_and_update(), 2);
        m.start(Some(sid(1)), None).await.unwrap();
        assert!(!up.has_changed().unwrap(), "an idempotent start changes nothing");
        p.fail_on("netns add sessiond-3");
        m.start(Some(sid(3)), None).await.unwrap_err();
        assert!(!up.has_changed().unwrap(), "nor does a failed one");
        m.stop(sid(1)).await.unwrap();
        assert_eq!(*up.borrow_and_update(), 1);
        // the next daemon counts what it re-adopted
        let m2 = manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        m2.recover().await;
        assert_eq!(*m2.sessions_up().borrow(), 1);
    }

    /// Under systemd the daemon got SIGTERM 3 ms after a session's stop: the task that was to
    /// check, 0.6 s later, that the namespace went (and delete its interface where a process
    /// still holds it) died with it. The next daemon must do that check.
    #[test]
    fn a_pending_check_that_the_namespace_went_survives_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let pool = "10.0.0.100-10.0.0.110/24";
        let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        p.hold_outside("sessiond-7"); // a unit's NetworkNamespacePath= process, say
        let first = runtime();
        first.block_on(async {
            let m = manager(p.clone(), d.path(), pool);
            m.start(Some(sid(7)), None).await.unwrap();
            m.stop(sid(7)).await.unwrap();
        });
        drop(first); // the daemon exits at once, with its tasks
        assert!(p.objects().contains("link:sessiond-7/eth0"), "held, not yet checked: {:?}", p.objects());
        runtime().block_on(async {
            let m = manager(p.clone(), d.path(), pool);
            m.recover().await;
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            assert!(p.log().iter().any(|l| l.starts_with("host: link del eth0 in nsid")), "{:?}", p.log());
            assert!(!p.objects().iter().any(|o| o.starts_with("link:sessiond-7/") || o.starts_with("addr:sessiond-7/")), "{:?}", p.objects());
            assert!(m.state.load_reaps().0.is_empty(), "the check is done and forgotten");
            assert_eq!(m.start(Some(sid(7)), None).await.unwrap().state, SessionState::Up, "the sid is free again");
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_check_is_dropped_for_a_sid_that_has_a_session_again() {
        let d = tempfile::tempdir().unwrap();
        let p = FakePlatform::new();
        let m = manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        m.start(Some(sid(7)), None).await.unwrap();
        // left over from some earlier run: the namespace id may now name this session's
        let nsid = p.netns_id("sessiond-7").await.unwrap();
        let mac = Identity::new("mid", sid(7)).mac;
        m.state.save_reap(&PendingReap { session: sid(7), nsid, mac }).unwrap();
        let m2 = manager(p.clone(), d.path(), "10.0.0.100-10.0.0.110/24");
        m2.recover().await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        assert!(p.objects().contains("link:sessiond-7/eth0"), "{:?}", p.log());
        assert!(m2.state.load_reaps().0.is_empty());
    }
}
