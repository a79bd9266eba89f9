//! The manager's side of programs mode: start, stop and recovery of a session that lives on
//! the host's own stack (`crate::programs` builds and tears it down). It shares the session
//! table, the per-sid locks, the state dir and the holders with namespace mode; what it
//! builds is its own.
use std::path::Path;

use tracing::{debug, info, warn};

use super::{Manager, ManagerError, RecoveryReport, Session, StartError, Started, Stopped};
use crate::config::Addressing;
use crate::dhcp_session::DhcpSession;
use crate::platform::Platform;
use crate::programs::lease::HostLink;
use crate::programs::{self, CgroupOwner, HookConfig, Kernel, ProgramsPlan, ProgramsStepError, ProgramsTeardown, Virtualize, address, cgroup, pins};
use crate::sid::Sid;
use crate::state::{Holding, SessionRecord, SessionState};
use sessiond_client::record::ProgramsInfo;

impl<P: Platform> Manager<P> {
    /// Starts `sid` in programs mode (its lock held, not running yet).
    pub(super) async fn start_programs(&self, sid: Sid, owner_uid: Option<u32>, holder: Option<crate::holders::Holder>) -> Result<Started, ManagerError> {
        let not_started = |source: StartError| ManagerError::NotStarted { sid, source };
        let no_cgroup =
            |e: cgroup::CgroupError| not_started(StartError::Programs(ProgramsStepError { step: "find the cgroup v2 hierarchy", source: e.into() }));
        let root = cgroup::unified_root().map_err(no_cgroup)?;
        // The login's logind scope if it is in one, read from /proc by the requester's pid;
        // else (or if another session's hooks are on it) a cgroup of sessiond's own.
        let scope = programs::scope::of_requester(&root, holder, owner_uid);
        let identity = self.identity(sid);
        let virtualize_address = self.settings.virtualize.contains(&Virtualize::Address);
        // A leased address comes once the session's link is there (`start_programs_leased`).
        let leased = virtualize_address && self.settings.addressing == Addressing::Dhcp;
        // The address is taken from the pool and the session entered in the table at once, so
        // that no concurrent start takes the same address.
        let (plan, record) = {
            let mut t = self.table.lock().unwrap();
            let scope = scope.and_then(|dir| match t.sessions().find(|o| o.record.programs.as_ref().is_some_and(|p| Path::new(&p.cgroup) == dir)) {
                Some(other) => Err(programs::scope::NotAScope::Taken(dir, other.record.session)),
                None => Ok(dir),
            });
            let (dir, cgroup_owner) = match scope {
                Ok(dir) => (dir, CgroupOwner::Logind),
                Err(why) => {
                    match why {
                        programs::scope::NotAScope::NoRequester | programs::scope::NotAScope::NoOwner => debug!("no logind scope: {why}"),
                        _ => info!("not attaching to a logind scope ({why}): using a cgroup of sessiond's own"),
                    }
                    (cgroup::session_dir(&root, &cgroup::own_cgroup().map_err(no_cgroup)?, sid), CgroupOwner::Sessiond)
                }
            };
            let address = if virtualize_address && !leased {
                let pool = self.settings.pool.as_ref().expect("address virtualization has a pool (checked at config time)");
                let mut in_use: std::collections::BTreeSet<_> = t.sessions().filter_map(|s| s.record.address.map(|a| a.addr())).collect();
                in_use.extend(t.conflicts.current(crate::lease_driver::now_ms()));
                let addr = pool.allocate(sid, &in_use, &t.history).map_err(|e| not_started(e.into()))?;
                t.history.last_address.insert(sid.get(), addr);
                Some(ipnet::Ipv4Net::new(addr, pool.prefix_len).expect("valid prefix"))
            } else {
                None
            };
            let plan = ProgramsPlan {
                sid,
                cgroup: dir.clone(),
                cgroup_owner,
                pins: pins::session_dir(sid),
                hooks: HookConfig {
                    loopback: identity.loopback,
                    address: address.map(|a| a.addr()),
                    programs: self.settings.programs.clone(),
                    virtualize: self.settings.virtualize.clone(),
                },
                address: virtualize_address.then(|| address::AddressPlan {
                    uplink: self.settings.uplink.clone(),
                    link: address::link_name(sid),
                    mac: identity.mac,
                    address,
                    gateway: self.settings.gateway,
                    table: address::table(sid),
                }),
            };
            let record = SessionRecord {
                session: sid,
                // No namespace: the session is on the host's stack.
                netns: String::new(),
                interface: if virtualize_address { address::link_name(sid) } else { "lo".into() },
                mac: identity.mac_text(),
                address,
                gateway: address.and(self.settings.gateway),
                dns: if address.is_some() { self.settings.dns.clone() } else { Vec::new() },
                loopback: identity.loopback,
                addressing: self.settings.addressing,
                state: SessionState::Starting,
                link: self.settings.link,
                host_link: None,
                owner_uid,
                lease: None,
                fault: None,
                holding: holder.map(|h| Holding { holders: vec![h], unheld_since: None }),
                programs: Some(ProgramsInfo {
                    cgroup: dir.display().to_string(),
                    programs: plan.hooks.programs.iter().map(|p| p.to_string()).collect(),
                    virtualize: plan.hooks.virtualize.clone(),
                    attached: Vec::new(),
                    rewritten: 0,
                    cgroup_owner,
                }),
                ipv6: None,
                addresses6: vec![],
                addresses6_detail: vec![],
                dhcp6_state: None,
            };
            t.insert(Session::bare(record.clone(), identity.clone()));
            (plan, record)
        };
        // The intent is on disk before anything is made, so a crash can be cleaned up.
        if let Err(e) = self.persist_new(&record) {
            self.forget(sid);
            return Err(not_started(StartError::Record(e)));
        }
        let (hooks, lease) = if leased {
            self.start_programs_leased(&identity, plan.clone()).await.map(|(hooks, lease)| (hooks, Some(lease))).map_err(not_started)?
        } else {
            match programs::build(&Kernel, self.platform.host(), &plan).await {
                Ok(h) => (h, None),
                Err(e) => {
                    self.forget(sid);
                    let _ = self.state.remove(sid);
                    return Err(not_started(StartError::Programs(e)));
                }
            }
        };
        let mut up = record;
        up.state = SessionState::Up;
        if let Some(p) = &mut up.programs {
            p.attached = hooks.attached();
        }
        if let Err(e) = self.state.save(&up) {
            if let Some(l) = lease {
                l.release(true).await;
            }
            let _ = self.dhcp.forget(sid);
            self.programs_abandon(sid, &plan.teardown_spec(), Some(hooks)).await;
            return Err(not_started(StartError::Record(e)));
        }
        let mut t = self.table.lock().unwrap();
        let mut s = t.session_mut(sid).expect("a starting session stays in the table (its sid is locked)");
        (s.record, s.hooks, s.lease) = (up, Some(hooks), lease);
        let view = s.view();
        match view.address {
            Some(a) => info!(cgroup = %plan.cgroup.display(), owner = %plan.cgroup_owner, address = %a.addr(), "programs-mode session up"),
            None => info!(cgroup = %plan.cgroup.display(), owner = %plan.cgroup_owner, "programs-mode session up"),
        }
        Ok(Started::New(view))
    }

    /// The build of a programs-mode session with a DHCP lease: its link first, then the lease
    /// on it (the same client as a namespace session of the sid: `dhcp_session`), then the
    /// hooks, configured with the leased address. On failure the lease is given back and the
    /// session torn down, its record gone.
    async fn start_programs_leased(&self, id: &crate::identity::Identity, mut plan: ProgramsPlan) -> Result<(programs::hooks::Hooks, DhcpSession), StartError> {
        let sid = id.sid;
        let undo = |e: StartError| {
            self.forget(sid);
            let _ = self.state.remove(sid);
            e
        };
        let rp_filter = address::check_rp_filter().map_err(|e| ProgramsStepError { step: "check the host's reverse-path filter", source: e.into() });
        rp_filter.map_err(|e| undo(StartError::Programs(e)))?;
        programs::build_before_hooks(&Kernel, self.platform.host(), &plan).await.map_err(|e| undo(StartError::Programs(e)))?;
        let lease = match self.dhcp.start_on_host(&self.platform, id, &HostLink::of(sid)).await {
            Ok(l) => l,
            Err(e) => {
                programs::teardown(&Kernel, self.platform.host(), &plan.teardown_spec(), None).await.iter().for_each(|e| warn!(step = e.step, "rollback: {e}"));
                return Err(undo(e.into()));
            }
        };
        plan.hooks.address = lease.view().lease.map(|l| l.address);
        match programs::attach_hooks(&Kernel, &plan) {
            Ok(hooks) => Ok((hooks, lease)),
            Err(e) => {
                lease.release(true).await;
                let _ = self.dhcp.forget(sid);
                programs::teardown(&Kernel, self.platform.host(), &plan.teardown_spec(), None).await.iter().for_each(|e| warn!(step = e.step, "rollback: {e}"));
                Err(undo(StartError::Programs(e)))
            }
        }
    }

    /// Whether the sid's session (if any) is a programs-mode one.
    pub(super) fn is_programs(&self, sid: Sid) -> bool {
        self.table.lock().unwrap().session(sid).is_some_and(|s| s.record.programs.is_some())
    }

    /// Stops a programs-mode session: hooks off, loopback and cgroup gone.
    pub(super) async fn stop_programs(&self, sid: Sid) -> Result<Stopped, ManagerError> {
        let taken = self.table.lock().unwrap().session_mut(sid).map(|mut s| {
            s.record.state = SessionState::Stopping;
            (s.record.clone(), s.hooks.take(), s.lease.take())
        });
        let Some((rec, hooks, lease)) = taken else { return Ok(Stopped::WasAbsent) };
        if let Err(e) = self.state.save(&rec) {
            warn!("cannot record stopping state (tearing down anyway): {e}");
        }
        if let Some(l) = lease {
            // DHCPRELEASE from the leased address, before its link goes.
            l.release(true).await;
        }
        if let Err(e) = self.dhcp.forget(sid) {
            warn!("removing lease file: {e}");
        }
        let errors = programs::teardown(&Kernel, self.platform.host(), &teardown_spec(&rec), hooks).await;
        if !errors.is_empty() {
            return Err(ManagerError::ProgramsStopIncomplete { sid, errors });
        }
        self.forget(sid);
        self.state.remove(sid).map_err(|source| ManagerError::StateRemains { sid, source })?;
        info!("session stopped");
        self.metrics.session_stopped();
        Ok(Stopped::Stopped)
    }

    /// A programs-mode session from the last run: one that was up, whose cgroup is there and
    /// whose hooks are still pinned (so still attached: they worked on while no daemon ran)
    /// is adopted; any other is torn down.
    pub(super) async fn recover_programs(&self, rec: SessionRecord, report: &mut RecoveryReport) {
        let sid = rec.session;
        if rec.state != SessionState::Up {
            return self.undo_programs(rec, report).await;
        }
        let spec = teardown_spec(&rec);
        let hooks = match programs::hooks::Hooks::adopt(&spec.cgroup, &spec.pins) {
            Ok(h) => h,
            Err(e) => {
                warn!("cannot adopt the programs-mode session of the last run: {e}");
                return self.undo_programs(rec, report).await;
            }
        };
        info!(cgroup = %spec.cgroup.display(), "adopting the programs-mode session of the last run (its hooks stayed pinned)");
        if let Some(a) = rec.address {
            self.table.lock().unwrap().history.last_address.insert(sid.get(), a.addr());
        }
        let identity = self.identity(sid);
        // A leased address: its task again, INIT-REBOOT with the persisted lease (which
        // stays on the link meanwhile), as for a namespace session.
        let mut lease = None;
        if is_leased(&rec) {
            match self.dhcp.resume_on_host(&self.platform, &identity, &HostLink::of(sid)).await {
                Ok(l) => lease = Some(l),
                Err(e) => report.errors.push(format!("session {sid}: restarting DHCP: {e}")),
            }
        }
        let mut rec = rec;
        let watches = self.rewatch(&mut rec);
        self.table.lock().unwrap().insert(Session { record: rec, identity, lease, netns: None, watches, defence: None, claiming: false, hooks: Some(hooks) });
        report.adopted.push(sid);
    }

    /// A programs-mode session from the last run that cannot be adopted: torn down, pins and
    /// all (a login that still runs goes on without the hooks); on errors it is kept as
    /// `Stopping` for a next try.
    async fn undo_programs(&self, rec: SessionRecord, report: &mut RecoveryReport) {
        let sid = rec.session;
        info!(state = ?rec.state, "removing a programs-mode session of the last run");
        if is_leased(&rec) {
            // Its lease, if it got one, is given back as `stop` would, before its link goes.
            match self.dhcp.release_orphan_on_host(&self.platform, &self.identity(sid), &HostLink::of(sid)).await {
                Ok(true) => info!("released its lease"),
                Ok(false) => {}
                Err(e) => warn!("could not release its lease: {e}"),
            }
        }
        let errors = programs::teardown(&Kernel, self.platform.host(), &teardown_spec(&rec), None).await;
        let _ = self.dhcp.forget(sid);
        if errors.is_empty() {
            let _ = self.state.remove(sid);
            report.cleaned.push(sid);
            return;
        }
        report.errors.extend(errors.iter().map(|e| format!("session {sid}: {e}")));
        let mut record = rec;
        record.state = SessionState::Stopping;
        let identity = self.identity(sid);
        self.table.lock().unwrap().insert(Session::bare(record, identity));
    }

    /// The uplink is back (its sid locked by the caller): a session with its own address gets
    /// its link, address, routes and rule again (what is still there is kept; a re-created
    /// uplink took the macvlan with it), and the fault clears.
    pub(super) async fn repair_programs(&self, sid: Sid) {
        let taken = self
            .table
            .lock()
            .unwrap()
            .session(sid)
            .filter(|s| s.record.fault.is_some() && s.record.state == SessionState::Up)
            .map(|s| (s.record.clone(), s.identity.mac));
        let Some((rec, mac)) = taken else { return };
        let leased = is_leased(&rec);
        let plan = match (&rec.programs, rec.address) {
            (Some(p), address) if p.virtualize.contains(&Virtualize::Address) && (address.is_some() || leased) => Some(address::AddressPlan {
                uplink: self.settings.uplink.clone(),
                link: address::link_name(sid),
                mac,
                address,
                gateway: rec.gateway,
                table: address::table(sid),
            }),
            _ => None,
        };
        let result = match &plan {
            Some(p) => address::build(p).await.map_err(|e| format!("uplink is back but the session's address could not be restored: {e}")),
            None => Ok(()),
        };
        // A leased address: the link is new and bare; a new task asks for the lease again
        // (INIT-REBOOT), as a namespace session's does.
        let mut lease = None;
        if leased && result.is_ok() {
            let (old, identity) = match self.table.lock().unwrap().session_mut(sid) {
                Some(mut s) => (s.lease.take(), s.identity.clone()),
                None => return,
            };
            if let Some(l) = old {
                l.abandon(); // keep the lease: the new task asks for it again
            }
            match self.dhcp.resume_on_host(&self.platform, &identity, &HostLink::of(sid)).await {
                Ok(l) => lease = Some(l),
                Err(e) => warn!(sid = %sid, "restarting DHCP after the uplink came back: {e}"),
            }
        }
        if let Some(mut s) = self.table.lock().unwrap().session_mut(sid) {
            if lease.is_some() {
                s.lease = lease;
            }
            match result {
                Ok(()) => {
                    info!(sid = %sid, "uplink back: programs-mode session restored");
                    s.record.fault = None;
                }
                Err(e) => {
                    warn!(sid = %sid, "{e}");
                    s.record.fault = Some(e);
                }
            }
        }
    }

    async fn programs_abandon(&self, sid: Sid, spec: &ProgramsTeardown, hooks: Option<programs::hooks::Hooks>) {
        for e in programs::teardown(&Kernel, self.platform.host(), spec, hooks).await {
            warn!(sid = %sid, step = e.step, "cleanup: {e}");
        }
        self.forget(sid);
        if let Err(e) = self.state.remove(sid) {
            warn!(sid = %sid, "cleanup: {e}");
        }
    }
}

/// Whether a programs-mode session's address is leased (DHCP on its own link).
fn is_leased(rec: &SessionRecord) -> bool {
    rec.addressing == Addressing::Dhcp && rec.programs.as_ref().is_some_and(|p| p.virtualize.contains(&Virtualize::Address))
}

/// What a programs-mode record says to remove.
fn teardown_spec(rec: &SessionRecord) -> ProgramsTeardown {
    let cgroup = rec.programs.as_ref().map(|p| p.cgroup.clone()).unwrap_or_default();
    let cgroup_owner = rec.programs.as_ref().map(|p| p.cgroup_owner).unwrap_or_default();
    let address = match &rec.programs {
        Some(p) if p.virtualize.contains(&Virtualize::Address) => {
            Some(address::AddressTeardown { link: address::link_name(rec.session), table: address::table(rec.session) })
        }
        _ => None,
    };
    ProgramsTeardown { cgroup: cgroup.into(), cgroup_owner, pins: pins::session_dir(rec.session), loopback: rec.loopback, address }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Mode, Settings};
    use crate::fake::FakePlatform;
    use crate::state::StateDir;

    #[tokio::test]
    async fn a_running_session_is_not_handed_to_a_start_in_the_other_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = FileConfig {
            uplink: Some("br-lan".into()),
            addressing: Some(Addressing::Static),
            pool: Some("10.0.0.100-10.0.0.110/24".into()),
            gateway: Some("10.0.0.1".parse().unwrap()),
            ..Default::default()
        };
        let settings = Settings::merge(file, FileConfig::default()).unwrap();
        let m = Manager::new(FakePlatform::new(), settings, StateDir::open(dir.path()).unwrap(), "mid".into(), "host1".into()).unwrap();
        let sid = Sid::new(1).unwrap();
        m.start(Some(sid), Some(1000)).await.unwrap();
        let e = m.start_in_mode(Some(sid), Some(1000), None, &|| false, Some(Mode::Programs)).await.unwrap_err();
        assert!(matches!(e, ManagerError::OtherMode { running: Mode::Namespace, wanted: Mode::Programs, .. }), "{e}");
        assert_eq!(e.to_string(), "session 1 runs in namespace mode, not programs mode");
        // The daemon's own mode (namespace here) and an explicit one both get it back.
        for mode in [None, Some(Mode::Namespace)] {
            assert_eq!(m.start_in_mode(Some(sid), Some(1000), None, &|| false, mode).await.unwrap().session, sid);
        }
    }
}
