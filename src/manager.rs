//! The daemon's session table: start, stop, status and crash recovery, over any `Platform`.
//! Each sid is serialised by its own lock, so different sessions start in parallel.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{Addressing, Settings};
use crate::dhcp::{ClientConfig, Lease};
use crate::lease_driver::{DriverContext, LeaseDriver, lease_file};
use crate::loopback::loopback_for;
use crate::mac::{format_mac, stable_mac};
use crate::netlink::NetOps;
use crate::platform::Platform;
use crate::pool::PoolHistory;
use crate::session::{self, SESSION_IF, SessionPlan, TeardownSpec};
use crate::sid::{MAX_SID, Sid};
use crate::state::LeaseInfo;
use crate::state::{SessionRecord, SessionState, StateDir};

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("session {0} is not running")]
    NotFound(Sid),
    #[error("{0}")]
    Failed(String),
}

struct Table {
    sessions: BTreeMap<Sid, SessionRecord>,
    /// sids whose start is under way (so automatic allocation skips them).
    reserved: BTreeSet<Sid>,
    history: PoolHistory,
}

pub struct Manager<P: Platform> {
    platform: P,
    settings: Settings,
    state: StateDir,
    machine_id: String,
    hostname: String,
    table: Mutex<Table>,
    sid_locks: Mutex<HashMap<Sid, Arc<tokio::sync::Mutex<()>>>>,
    /// The DHCP task of each bound DHCP session.
    drivers: Mutex<HashMap<Sid, LeaseDriver>>,
    /// Each live session's namespace, held open by fd.
    held: Mutex<HashMap<Sid, std::fs::File>>,
    /// MACs of the DHCP servers and gateways, shared by all sessions' DHCP tasks.
    lan_neighbours: crate::lease_driver::LanNeighbours,
}

/// What `stop` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    Stopped,
    WasAbsent,
}

impl<P: Platform> Manager<P> {
    pub fn new(platform: P, settings: Settings, state: StateDir, machine_id: String, hostname: String) -> Result<Self, ManagerError> {
        let history = state.load_last_addresses();
        Ok(Manager {
            platform,
            settings,
            state,
            machine_id,
            hostname,
            table: Mutex::new(Table { sessions: BTreeMap::new(), reserved: BTreeSet::new(), history }),
            sid_locks: Mutex::new(HashMap::new()),
            drivers: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            lan_neighbours: Default::default(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn sid_lock(&self, sid: Sid) -> Arc<tokio::sync::Mutex<()>> {
        self.sid_locks.lock().unwrap().entry(sid).or_default().clone()
    }

    /// Lowest sid neither running nor being started.
    fn pick_free_sid(&self) -> Result<Sid, ManagerError> {
        let mut t = self.table.lock().unwrap();
        let n = (1..=MAX_SID)
            .find(|n| {
                let s = Sid::new(u64::from(*n)).unwrap();
                !t.sessions.contains_key(&s) && !t.reserved.contains(&s)
            })
            .ok_or_else(|| ManagerError::Failed("no free session id".into()))?;
        let sid = Sid::new(u64::from(n)).unwrap();
        t.reserved.insert(sid);
        Ok(sid)
    }

    pub async fn start(&self, sid: Option<Sid>, owner_uid: Option<u32>) -> Result<SessionRecord, ManagerError> {
        let sid = match sid {
            Some(s) => {
                self.table.lock().unwrap().reserved.insert(s);
                s
            }
            None => self.pick_free_sid()?,
        };
        let lock = self.sid_lock(sid);
        let result = async {
            let _held = lock.lock().await;
            self.start_locked(sid, owner_uid).await
        }
        .instrument(info_span!("start", session = %sid))
        .await;
        self.table.lock().unwrap().reserved.remove(&sid);
        result
    }

    async fn start_locked(&self, sid: Sid, owner_uid: Option<u32>) -> Result<SessionRecord, ManagerError> {
        if let Some(rec) = self.table.lock().unwrap().sessions.get(&sid)
            && rec.state == SessionState::Up
        {
            // Idempotent, but never hands one user's running session to another.
            if let (Some(want), Some(have)) = (owner_uid, rec.owner_uid)
                && want != have
            {
                return Err(ManagerError::Failed(format!("session {sid} is running for another user (uid {have})")));
            }
            return Ok(rec.clone());
        }
        self.check_uplink().await?;
        let rec = match self.settings.addressing {
            Addressing::Static => self.reserve_static(sid, owner_uid)?,
            Addressing::Dhcp => self.reserve_dhcp(sid, owner_uid),
        };
        // The intent is on disk before anything is made, so a crash can be cleaned up.
        if let Err(e) = self.persist_new(&rec) {
            self.forget(sid);
            return Err(ManagerError::Failed(format!("session {sid} not started: cannot record its state: {e}")));
        }
        let plan = self.plan_for(&rec);
        let inside = match session::build(&self.platform, &plan).await {
            Ok(inside) => inside,
            Err(e) => {
                self.forget(sid);
                let _ = self.state.remove(sid);
                return Err(ManagerError::Failed(format!("session {sid} not started: {e}")));
            }
        };
        let mut up = rec;
        if up.addressing == Addressing::Dhcp {
            match self.lease_session(&up, None, Some(inside)).await {
                Ok((driver, lease)) => {
                    fill_from_lease(&mut up, &lease);
                    self.drivers.lock().unwrap().insert(sid, driver);
                }
                Err(e) => {
                    self.abandon(sid, &plan.teardown_spec()).await;
                    return Err(ManagerError::Failed(format!("session {sid} not started: {e}")));
                }
            }
        }
        up.state = SessionState::Up;
        if let Err(e) = self.state.save(&up) {
            let driver = self.drivers.lock().unwrap().remove(&sid);
            if let Some(d) = driver {
                d.release(true).await;
            }
            self.abandon(sid, &plan.teardown_spec()).await;
            return Err(ManagerError::Failed(format!("session {sid} not started: cannot record its state: {e}")));
        }
        self.hold(sid, &up.netns);
        self.table.lock().unwrap().sessions.insert(sid, up.clone());
        info!(session = %sid, address = ?up.address, "session up");
        Ok(up)
    }

    pub async fn check_uplink(&self) -> Result<(), ManagerError> {
        let name = &self.settings.uplink;
        match self.platform.host().link_is_up(name).await {
            Ok(Some(true)) => {}
            Ok(Some(false)) => return Err(ManagerError::Failed(format!("uplink {name} is down"))),
            Ok(None) => return Err(ManagerError::Failed(format!("uplink {name} does not exist"))),
            Err(e) => return Err(ManagerError::Failed(format!("cannot check uplink {name}: {e}"))),
        }
        if let Some(br) = &self.settings.bridge
            && self.settings.link == crate::config::LinkKind::Veth
            && !matches!(self.platform.host().link_index(br).await, Ok(Some(_)))
        {
            return Err(ManagerError::Failed(format!("bridge {br} does not exist")));
        }
        Ok(())
    }

    /// Allocates the address and enters a `Starting` record in the table, atomically.
    fn reserve_static(&self, sid: Sid, owner_uid: Option<u32>) -> Result<SessionRecord, ManagerError> {
        let pool = self.settings.pool.as_ref().expect("static addressing has a pool (checked at config time)");
        let mut t = self.table.lock().unwrap();
        let in_use: BTreeSet<Ipv4Addr> = t.sessions.values().filter_map(|r| r.address.map(|a| a.addr())).collect();
        let addr = pool.allocate(sid, &in_use, &t.history).map_err(|e| ManagerError::Failed(format!("session {sid} not started: {e}")))?;
        t.history.last_address.insert(sid.get(), addr);
        let rec = SessionRecord {
            session: sid,
            netns: sid.netns_name(),
            interface: SESSION_IF.into(),
            mac: format_mac(&stable_mac(&self.machine_id, sid)),
            address: Some(Ipv4Net::new(addr, pool.prefix_len).expect("valid prefix")),
            gateway: self.settings.gateway,
            dns: self.settings.dns.clone(),
            loopback: loopback_for(sid),
            addressing: Addressing::Static,
            state: SessionState::Starting,
            link: self.settings.link,
            host_link: (self.settings.link == crate::config::LinkKind::Veth).then(|| sid.veth_host_name()),
            owner_uid,
            lease: None,
            fault: None,
        };
        t.sessions.insert(sid, rec.clone());
        Ok(rec)
    }

    fn reserve_dhcp(&self, sid: Sid, owner_uid: Option<u32>) -> SessionRecord {
        let rec = SessionRecord {
            session: sid,
            netns: sid.netns_name(),
            interface: SESSION_IF.into(),
            mac: format_mac(&stable_mac(&self.machine_id, sid)),
            address: None,
            gateway: None,
            dns: Vec::new(),
            loopback: loopback_for(sid),
            addressing: Addressing::Dhcp,
            state: SessionState::Starting,
            link: self.settings.link,
            host_link: (self.settings.link == crate::config::LinkKind::Veth).then(|| sid.veth_host_name()),
            owner_uid,
            lease: None,
            fault: None,
        };
        self.table.lock().unwrap().sessions.insert(sid, rec.clone());
        rec
    }

    fn dhcp_config(&self, sid: Sid) -> ClientConfig {
        let short = self.hostname.split('.').next().unwrap_or(&self.hostname);
        let hostname = self.settings.hostname_template.replace("{hostname}", short).replace("{sid}", &sid.to_string());
        ClientConfig {
            mac: stable_mac(&self.machine_id, sid),
            client_id: crate::dhcp::client_identifier(&self.machine_id, sid.get()),
            hostname: Some(hostname),
            fqdn: self.settings.dhcp_fqdn,
            request_timeout_ms: self.settings.dhcp_timeout_secs * 1000,
            seed: 0, // the driver seeds it from the OS
        }
    }

    /// Starts the session's DHCP task. With `wait`, returns once bound (or fails after the
    /// configured timeout); `persisted` asks for that lease again first (INIT-REBOOT).
    /// `inside`: a netlink connection in the session's namespace, if the caller has one.
    async fn spawn_driver(&self, rec: &SessionRecord, persisted: Option<Lease>, inside: Option<P::Net>) -> Result<LeaseDriver, String> {
        let socket = self.platform.dhcp_socket(&rec.netns, stable_mac(&self.machine_id, rec.session)).await.map_err(|e| e.to_string())?;
        let inside = match inside {
            Some(n) => n,
            None => self.platform.inside(&rec.netns).await.map_err(|e| e.to_string())?,
        };
        let ctx = DriverContext {
            sid: rec.session,
            netns: rec.netns.clone(),
            inside,
            state: self.state.clone(),
            hostname: self.hostname.clone(),
            loopback: rec.loopback,
            write_file: self.platform.file_writer(),
            written: Default::default(),
            persisted: Default::default(),
            lan_neighbours: self.lan_neighbours.clone(),
            pinned: Default::default(),
        };
        Ok(LeaseDriver::spawn(ctx, socket, (self.dhcp_config(rec.session), persisted)))
    }

    /// The lease on disk for `sid`, if any (unreadable counts as none: DHCP starts afresh).
    fn persisted_lease(&self, sid: Sid) -> Option<Lease> {
        self.state.load_blob::<Option<Lease>>(&lease_file(sid)).ok().flatten()
    }

    /// Puts a lease's address (with its remaining lifetime) and routes on the session interface.
    async fn put_lease_on_link(&self, rec: &SessionRecord, lease: &Lease) -> Result<(), String> {
        let inside = self.platform.inside(&rec.netns).await.map_err(|e| e.to_string())?;
        inside.set_up(SESSION_IF).await.map_err(|e| e.to_string())?;
        inside.add_addr(SESSION_IF, lease.network(), false, crate::lease_driver::lifetimes(lease)).await.map_err(|e| e.to_string())?;
        for (dest, gw) in lease.routes() {
            inside.add_route(SESSION_IF, dest, crate::lease_driver::next_hop(gw)).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// A crash left a half-made or half-stopped DHCP session whose lease is on disk: release it
    /// as `stop` would, so the server does not hold the address until it expires.
    async fn release_orphan_lease(&self, rec: &SessionRecord) -> Result<bool, String> {
        let Some(lease) = self.state.load_blob::<Option<Lease>>(&lease_file(rec.session)).map_err(|e| e.to_string())? else { return Ok(false) };
        if lease.expires_at().is_some_and(|e| e <= crate::lease_driver::now_ms()) || !self.is_live(rec).await {
            return Ok(false);
        }
        self.put_lease_on_link(rec, &lease).await?;
        let sock = self.platform.dhcp_socket(&rec.netns, stable_mac(&self.machine_id, rec.session)).await.map_err(|e| e.to_string())?;
        let xid = crate::lease_driver::now_ms() as u32 ^ rec.session.get().rotate_left(16);
        let bytes = crate::dhcp::release_packet(&self.dhcp_config(rec.session), &lease, xid);
        sock.send_to(&bytes, (lease.server_id, 67)).await.map_err(|e| format!("sending DHCPRELEASE to {}: {e}", lease.server_id))?;
        Ok(true)
    }

    async fn lease_session(&self, rec: &SessionRecord, persisted: Option<Lease>, inside: Option<P::Net>) -> Result<(LeaseDriver, Lease), String> {
        let mut driver = self.spawn_driver(rec, persisted, inside).await?;
        let timeout = std::time::Duration::from_secs(self.settings.dhcp_timeout_secs);
        match driver.wait_bound(timeout).await {
            Ok(lease) => Ok((driver, lease)),
            Err(why) => {
                driver.abandon();
                Err(format!("no DHCP lease on uplink {} within {} s: {why}", self.settings.uplink, self.settings.dhcp_timeout_secs))
            }
        }
    }

    fn persist_new(&self, rec: &SessionRecord) -> Result<(), crate::state::StateError> {
        if let Some(a) = rec.address {
            self.state.save_last_address(rec.session, a.addr())?;
        }
        self.state.save(rec)
    }

    fn forget(&self, sid: Sid) {
        self.table.lock().unwrap().sessions.remove(&sid);
        self.held.lock().unwrap().remove(&sid);
    }

    fn hold(&self, sid: Sid, netns: &str) {
        if let Some(f) = self.platform.hold_netns(netns) {
            self.held.lock().unwrap().insert(sid, f);
        }
    }

    /// Rolls a half-made session back completely.
    async fn abandon(&self, sid: Sid, spec: &TeardownSpec) {
        for e in session::teardown(&self.platform, spec).await {
            warn!(session = %sid, "cleanup: {e}");
        }
        self.forget(sid);
        if let Err(e) = self.state.remove(sid) {
            warn!(session = %sid, "cleanup: {e}");
        }
    }

    fn plan_for(&self, rec: &SessionRecord) -> SessionPlan {
        let addr = rec.address.map(|a| a.addr());
        SessionPlan {
            sid: rec.session,
            link: rec.link,
            uplink: self.settings.uplink.clone(),
            bridge: self.settings.bridge.clone(),
            mac: stable_mac(&self.machine_id, rec.session),
            loopback: rec.loopback,
            address: rec.address,
            gateway: rec.gateway,
            resolv_conf: crate::files::resolv_conf(&rec.dns, None, &[]),
            hosts: crate::files::hosts(&self.hostname, addr, rec.loopback),
        }
    }

    pub async fn stop(&self, sid: Sid) -> Result<Stopped, ManagerError> {
        let held = self.sid_lock(sid).lock_owned().await;
        let span = info_span!("stop", session = %sid);
        let (result, pending) = match self.stop_inner(sid).instrument(span.clone()).await {
            Ok((s, pending)) => (Ok(s), pending),
            Err(e) => (Err(e), None),
        };
        if let Some(nsid) = pending {
            // After answering: make sure the namespace went. The sid stays locked until then,
            // so a new start of the same slot cannot meet the old MAC on the parent.
            let host = self.platform.host().clone();
            let mac = stable_mac(&self.machine_id, sid);
            tokio::spawn(
                async move {
                    session::reap_link(&host, nsid, mac).await;
                    drop(held);
                }
                .instrument(span),
            );
        }
        result
    }

    /// Returns, for a macvlan session, the id of its namespace, which the kernel is left to free.
    async fn stop_inner(&self, sid: Sid) -> Result<(Stopped, Option<i32>), ManagerError> {
        let rec = self.table.lock().unwrap().sessions.get(&sid).cloned();
        let Some(mut rec) = rec else {
            // Nothing recorded; still sweep anything a crash may have left under this sid.
            if self.platform.netns_exists(&sid.netns_name()) {
                self.abandon(sid, &TeardownSpec::for_sid(sid, None, None)).await;
            }
            return Ok((Stopped::WasAbsent, None));
        };
        rec.state = SessionState::Stopping;
        if let Err(e) = self.state.save(&rec) {
            warn!(session = %sid, "cannot record stopping state (tearing down anyway): {e}");
        }
        self.table.lock().unwrap().sessions.insert(sid, rec.clone());
        let spec = TeardownSpec::for_sid(sid, Some(rec.link), rec.address);
        let leave_link = spec.host_link.is_none();
        let driver = self.drivers.lock().unwrap().remove(&sid);
        if let Some(d) = driver {
            // DHCPRELEASE from the bound address, before anything goes. The address itself goes
            // with the namespace when the kernel frees the interface.
            d.release(!leave_link).await;
        }
        let (errors, pending) =
            if leave_link { session::teardown_leaving_link(&self.platform, &spec).await } else { (session::teardown(&self.platform, &spec).await, None) };
        if let Err(e) = self.state.remove_blob(&lease_file(sid)) {
            warn!(session = %sid, "removing lease file: {e}");
        }
        // Our own handle must go for the namespace to go.
        self.held.lock().unwrap().remove(&sid);
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            return Err(ManagerError::Failed(format!("session {sid} stop incomplete ({} errors; run stop again): {}", list.len(), list.join("; "))));
        }
        self.forget(sid);
        if let Err(e) = self.state.remove(sid) {
            return Err(ManagerError::Failed(format!("session {sid} torn down, but its state file remains: {e}")));
        }
        info!(session = %sid, "session stopped");
        Ok((Stopped::Stopped, pending))
    }

    /// Stops every session; reports each failure.
    pub async fn stop_all(&self) -> Result<Vec<Sid>, ManagerError> {
        let sids: Vec<Sid> = self.table.lock().unwrap().sessions.keys().copied().collect();
        let results = futures::future::join_all(sids.iter().map(|s| self.stop(*s))).await;
        let mut stopped = Vec::new();
        let mut errors = Vec::new();
        for (sid, r) in sids.into_iter().zip(results) {
            match r {
                Ok(_) => stopped.push(sid),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() { Ok(stopped) } else { Err(ManagerError::Failed(errors.join("; "))) }
    }

    pub fn status(&self, sid: Option<Sid>) -> Result<Vec<SessionRecord>, ManagerError> {
        let mut list: Vec<SessionRecord> = {
            let t = self.table.lock().unwrap();
            match sid {
                Some(s) => t.sessions.get(&s).filter(|r| r.state == SessionState::Up).map(|r| vec![r.clone()]).ok_or(ManagerError::NotFound(s))?,
                None => t.sessions.values().filter(|r| r.state == SessionState::Up).cloned().collect(),
            }
        };
        // DHCP sessions: what the lease task knows now (renewals may have changed it).
        let drivers = self.drivers.lock().unwrap();
        for r in &mut list {
            if let Some(d) = drivers.get(&r.session) {
                let st = d.status.borrow().clone();
                match &st.lease {
                    Some(l) => fill_from_lease(r, l),
                    None => {
                        r.address = None;
                        r.lease = None;
                    }
                }
                if let Some(info) = &mut r.lease {
                    info.dhcp_state = st.state.clone();
                } else {
                    r.lease =
                        Some(LeaseInfo { server: Ipv4Addr::UNSPECIFIED, lease_start: 0, expires: None, next_renewal: None, dhcp_state: st.state.clone() });
                }
            }
        }
        Ok(list)
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
                    let faulted: Vec<Sid> = self.table.lock().unwrap().sessions.values().filter(|r| r.fault.is_some()).map(|r| r.session).collect();
                    for sid in faulted {
                        self.repair(sid).await;
                    }
                }
            }
        }
    }

    fn mark_fault(&self, why: &str) {
        let mut t = self.table.lock().unwrap();
        for r in t.sessions.values_mut().filter(|r| r.state == SessionState::Up && r.fault.is_none()) {
            warn!(session = %r.session, "fault: {why}");
            r.fault = Some(why.to_string());
        }
    }

    async fn repair(&self, sid: Sid) {
        let lock = self.sid_lock(sid);
        let _held = lock.lock().await;
        let Some(rec) = self.table.lock().unwrap().sessions.get(&sid).filter(|r| r.fault.is_some() && r.state == SessionState::Up).cloned() else {
            return;
        };
        let span = info_span!("repair", session = %sid);
        async {
            let old = self.drivers.lock().unwrap().remove(&sid);
            if let Some(d) = old {
                d.abandon(); // keep the lease: the new task asks for it again
            }
            let mut plan = self.plan_for(&rec);
            if rec.addressing == Addressing::Dhcp {
                plan.address = None; // the lease, not the record, says what the address is
            }
            let result = match session::restore_uplink(&self.platform, &plan).await {
                Err(e) => Err(format!("uplink is back but the session could not be restored: {e}")),
                Ok(()) if rec.addressing == Addressing::Dhcp => {
                    let persisted = self.persisted_lease(sid);
                    // Keep using a still-valid lease while INIT-REBOOT confirms it; the kernel
                    // drops the address at the lease's end if nobody does.
                    if let Some(l) = persisted.as_ref().filter(|l| l.expires_at().is_none_or(|e| e > crate::lease_driver::now_ms()))
                        && let Err(e) = self.put_lease_on_link(&rec, l).await
                    {
                        warn!("re-applying the lease after the uplink came back: {e}");
                    }
                    match self.spawn_driver(&rec, persisted, None).await {
                        Ok(d) => {
                            self.drivers.lock().unwrap().insert(sid, d);
                            Ok(())
                        }
                        Err(e) => Err(format!("uplink is back but DHCP could not restart: {e}")),
                    }
                }
                Ok(()) => Ok(()),
            };
            if let Some(r) = self.table.lock().unwrap().sessions.get_mut(&sid) {
                match result {
                    Ok(()) => {
                        info!("uplink back: session restored");
                        r.fault = None;
                    }
                    Err(e) => {
                        warn!("{e}");
                        r.fault = Some(e);
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// After a (re)start: adopt what is live, finish what a crash interrupted, remove orphans.
    pub async fn recover(&self) -> RecoveryReport {
        let mut report = RecoveryReport::default();
        self.state.sweep_temp_files();
        let (records, errors) = self.state.load_all();
        for e in errors {
            warn!("state: {e}");
            report.errors.push(e.to_string());
        }
        let mut known = BTreeSet::new();
        for rec in records {
            let sid = rec.session;
            known.insert(sid);
            let span = info_span!("recover", session = %sid);
            async {
                if rec.state == SessionState::Up && self.is_live(&rec).await {
                    if rec.addressing == Addressing::Static {
                        // Re-apply the idempotent parts, so a half-lost address or file comes back.
                        // (DHCP sessions are left alone: the lease task's INIT-REBOOT owns their
                        // address, lifetimes and files; the record may be older than the lease.)
                        let plan = self.plan_for(&rec);
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
                    if rec.addressing == Addressing::Dhcp {
                        // Sessions built by an older daemon may lack it (see session::build).
                        let _ = session::enable_promote_secondaries(&self.platform, &rec.netns);
                        // INIT-REBOOT: ask for the same lease again; the address stays meanwhile.
                        let persisted = self.persisted_lease(sid);
                        match self.spawn_driver(&rec, persisted, None).await {
                            Ok(d) => {
                                self.drivers.lock().unwrap().insert(sid, d);
                            }
                            Err(e) => report.errors.push(format!("session {sid}: restarting DHCP: {e}")),
                        }
                    }
                    self.hold(sid, &rec.netns);
                    self.table.lock().unwrap().sessions.insert(sid, rec);
                    report.adopted.push(sid);
                } else {
                    info!(state = ?rec.state, "cleaning up a session the last run left unfinished or dead");
                    if rec.addressing == Addressing::Dhcp {
                        match self.release_orphan_lease(&rec).await {
                            Ok(true) => info!("released its lease"),
                            Ok(false) => {}
                            Err(e) => warn!("could not release its lease: {e}"),
                        }
                    }
                    let spec = TeardownSpec::for_sid(sid, Some(rec.link), rec.address);
                    let errs = session::teardown(&self.platform, &spec).await;
                    let _ = self.state.remove_blob(&lease_file(sid));
                    if errs.is_empty() {
                        let _ = self.state.remove(sid);
                        report.cleaned.push(sid);
                    } else {
                        for e in &errs {
                            report.errors.push(format!("session {sid}: {e}"));
                        }
                        // keep the record so the next stop or restart tries again
                        let mut r = rec;
                        r.state = SessionState::Stopping;
                        self.table.lock().unwrap().sessions.insert(sid, r);
                    }
                }
            }
            .instrument(span)
            .await;
        }
        for name in self.platform.list_netns() {
            if let Some(sid) = Sid::from_netns_name(&name)
                && !known.contains(&sid)
            {
                info!(session = %sid, "removing an orphan namespace with no state");
                let errs = session::teardown(&self.platform, &TeardownSpec::for_sid(sid, None, None)).await;
                report.errors.extend(errs.iter().map(|e| format!("orphan {name}: {e}")));
                report.cleaned.push(sid);
            }
        }
        // /etc/netns outlives a reboot, the namespaces and their files under /run do not.
        for name in self.platform.list_netns_files() {
            if let Some(sid) = Sid::from_netns_name(&name)
                && !known.contains(&sid)
                && !self.platform.netns_exists(&name)
            {
                info!(session = %sid, "removing /etc/netns/{name}: no such session");
                if let Err(e) = self.platform.remove_netns_files(&name) {
                    report.errors.push(format!("orphan files {name}: {e}"));
                }
            }
        }
        report
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

/// Copies what a lease says into the session record.
fn fill_from_lease(r: &mut SessionRecord, l: &Lease) {
    r.address = Some(l.network());
    r.gateway = l.routes().into_iter().find(|(d, _)| d.prefix_len() == 0).map(|(_, g)| g);
    r.dns = l.dns.clone();
    r.lease =
        Some(LeaseInfo { server: l.server_id, lease_start: l.acquired_at, expires: l.expires_at(), next_renewal: l.renew_at(), dhcp_state: "bound".into() });
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
        let again = m.start(Some(sid(1)), None).await.unwrap();
        assert_eq!(a, again);
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

    #[test]
    fn veth_records_name_the_host_end() {
        let d = tempfile::tempdir().unwrap();
        let mut s = settings("10.0.0.100-10.0.0.110/24");
        s.link = LinkKind::Veth;
        s.bridge = Some("br-lan".into());
        let m = Manager::new(FakePlatform::new(), s, StateDir::open(d.path()).unwrap(), "mid".into(), "h".into()).unwrap();
        let r = m.reserve_static(sid(4), None).unwrap();
        assert_eq!(r.host_link.as_deref(), Some("sdv4"));
    }
}
