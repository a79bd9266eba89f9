//! One DHCP session's life, as the manager sees it: start (wait until bound), resume after a
//! daemon restart or the uplink's return (INIT-REBOOT with the persisted lease), release of a
//! lease that a dead daemon left behind, and the view `status` shows. The protocol is the
//! machine's (`dhcp`), the doing is the task's (`lease_driver`); this module wires them to a
//! session.
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::acd_driver::AcdLink;
use crate::config::{LinkKind, Settings};
use crate::dhcp::{ClientConfig, Event, Lease, State};
use crate::events::Events;
use crate::identity::Identity;
use crate::lease_driver::{DriverContext, LanNeighbours, LeaseDriver, LeaseTarget, Stopped, WaitError, lease_file, now_ms};
use crate::metrics::Metrics;
use crate::netlink::{Lifetimes, NetError, NetOps};
use crate::platform::Platform;
use crate::programs::lease::HostLink;
use crate::session::SESSION_IF;
use crate::sid::Sid;
use crate::state::{HeldLease, LeaseInfo, SessionRecord, StateDir, StateError};

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("no DHCP lease on uplink {uplink} within {secs} s: {why}")]
    NoLease { uplink: String, secs: u64, why: WaitError },
    /// The client stopped trying for good (a cloned machine, a persistent conflict).
    #[error(transparent)]
    Stopped(Stopped),
    /// The server granted a lease the session could not put on its interface; it was released.
    #[error("{0}")]
    NotApplied(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("sending DHCPRELEASE: {0}")]
    Release(std::io::Error),
}

/// What every session's DHCP needs from the daemon, fixed at start-up.
pub struct Dhcp {
    state: StateDir,
    /// The host's own name: /etc/hosts in the session, and the DHCP host name's template.
    hostname: String,
    name_template: String,
    fqdn: bool,
    timeout_secs: u64,
    min_lease_secs: u32,
    uplink: String,
    /// The RFC 5227 probe's length; 0: no conflict detection.
    acd_probe_ms: u64,
    /// Macvlan sessions also probe from the uplink at their start (clone check, `acd_driver`).
    link: LinkKind,
    /// MACs of the DHCP servers and gateways, shared by all sessions' DHCP tasks.
    lan_neighbours: LanNeighbours,
    /// Where the tasks report lease changes (watchers) and count messages (metrics).
    events: Events,
    metrics: Metrics,
}

/// A session's running DHCP task.
pub struct DhcpSession {
    driver: LeaseDriver,
}

impl Dhcp {
    pub fn new(settings: &Settings, state: StateDir, hostname: String, events: Events, metrics: Metrics) -> Dhcp {
        Dhcp {
            state,
            hostname,
            name_template: settings.hostname_template.clone(),
            fqdn: settings.dhcp_fqdn,
            timeout_secs: settings.dhcp_timeout_secs,
            min_lease_secs: settings.dhcp_min_lease_secs,
            uplink: settings.uplink.clone(),
            acd_probe_ms: settings.acd_probe_ms,
            link: settings.link,
            lan_neighbours: Default::default(),
            events,
            metrics,
        }
    }

    fn client_config(&self, id: &Identity) -> ClientConfig {
        let short = self.hostname.split('.').next().unwrap_or(&self.hostname);
        let name = self.name_template.replace("{hostname}", short).replace("{sid}", &id.sid.to_string());
        ClientConfig { mac: id.mac, client_id: id.client_id.clone(), hostname: Some(name), fqdn: self.fqdn, seed: 0, min_lease_secs: self.min_lease_secs }
    }

    async fn context<N: NetOps>(&self, p: &impl Platform, id: &Identity, inside: N, target: LeaseTarget) -> DriverContext<N> {
        // Read once per task: a changed uplink MTU is seen when the uplink comes back (restore).
        let uplink_mtu = p.host().link_mtu(&self.uplink).await.ok().flatten();
        DriverContext {
            sid: id.sid,
            netns: id.netns.clone(),
            inside,
            state: self.state.clone(),
            hostname: self.hostname.clone(),
            loopback: id.loopback,
            write_file: p.file_writer(),
            lan_neighbours: self.lan_neighbours.clone(),
            uplink_mtu,
            events: self.events.clone(),
            metrics: self.metrics.clone(),
            target,
        }
    }

    /// `inside`: a netlink connection in the session's namespace, if the caller has one.
    /// `new`: a new session (not one resumed), whose first address gets the clone check.
    async fn spawn<P: Platform>(&self, p: &P, id: &Identity, first: Event, inside: Option<P::Net>, new: bool) -> Result<DhcpSession, DhcpError> {
        let socket = p.dhcp_socket(&id.netns, id.mac).await?;
        let acd = match self.acd_probe_ms {
            0 => None,
            ms if new => Some(crate::acd_driver::new_session_link(p, id, ms, self.link, &self.uplink).await?),
            ms => Some(AcdLink::new(p.arp_socket(&id.netns).await?, id.mac, ms)),
        };
        let inside = match inside {
            Some(n) => n,
            None => p.inside(&id.netns).await?,
        };
        Ok(DhcpSession { driver: LeaseDriver::spawn(self.context(p, id, inside, LeaseTarget::Namespace).await, socket, acd, self.client_config(id), first) })
    }

    /// Programs mode: the task on the session's own link in the host namespace (`at`), with
    /// the same client (MAC, client id, host name) as a namespace session of the sid.
    async fn spawn_on_host<P: Platform>(&self, p: &P, id: &Identity, at: &HostLink, first: Event, new: bool) -> Result<DhcpSession, DhcpError> {
        let socket = p.host_dhcp_socket(&at.link, id.mac).await?;
        let acd = match self.acd_probe_ms {
            0 => None,
            ms => {
                let (arp, _) = p.uplink_arp_socket(&at.link).await?;
                let link = AcdLink::new(arp, id.mac, ms);
                if new {
                    // The link is a macvlan on the uplink: the clone check, as for a namespace
                    // session's (see `acd_driver`).
                    let (arp, mac) = p.uplink_arp_socket(&self.uplink).await?;
                    Some(link.with_uplink(arp, mac))
                } else {
                    Some(link)
                }
            }
        };
        let ctx = self.context(p, id, p.host().clone(), LeaseTarget::HostLink(at.clone())).await;
        Ok(DhcpSession { driver: LeaseDriver::spawn(ctx, socket, acd, self.client_config(id), first) })
    }

    /// A new programs-mode session: as `start`, on its link `at` in the host namespace.
    pub async fn start_on_host<P: Platform>(&self, p: &P, id: &Identity, at: &HostLink) -> Result<DhcpSession, DhcpError> {
        let s = self.spawn_on_host(p, id, at, self.fresh_start(id.sid), true).await?;
        self.until_bound(s).await
    }

    /// A live programs-mode session the daemon re-adopts: as `resume`, on its link `at`.
    pub async fn resume_on_host<P: Platform>(&self, p: &P, id: &Identity, at: &HostLink) -> Result<DhcpSession, DhcpError> {
        let first = match self.persisted(id.sid) {
            Some(l) => Event::StartWithLease(l),
            None => self.fresh_start(id.sid),
        };
        self.spawn_on_host(p, id, at, first, false).await
    }

    /// The first event of a session with no lease to INIT-REBOOT: DISCOVER, asking for the
    /// address the slot last had (remembered past `stop`, with the static pool's memory).
    fn fresh_start(&self, sid: Sid) -> Event {
        match self.state.load_last_address(sid) {
            Some(addr) => Event::StartRequesting(addr),
            None => Event::Start,
        }
    }

    /// A new session: DHCP from INIT, waiting until bound (with the lease on the interface) or
    /// the configured timeout (then the task is ended and nothing is left running).
    pub async fn start<P: Platform>(&self, p: &P, id: &Identity, inside: P::Net) -> Result<DhcpSession, DhcpError> {
        let s = self.spawn(p, id, self.fresh_start(id.sid), Some(inside), true).await?;
        self.until_bound(s).await
    }

    /// Waits until the new session's task is bound (with the lease on the interface) or the
    /// configured timeout (then the task is ended and nothing is left running).
    async fn until_bound(&self, mut s: DhcpSession) -> Result<DhcpSession, DhcpError> {
        match s.driver.wait_bound(Duration::from_secs(self.timeout_secs)).await {
            Ok(_) => Ok(s),
            Err(WaitError::NotApplied(why)) => {
                // Never "up" with half a lease: give it back, so it is not held for nothing.
                s.driver.release(true).await;
                Err(DhcpError::NotApplied(why))
            }
            Err(WaitError::Stopped(why)) => {
                s.driver.abandon();
                Err(DhcpError::Stopped(why))
            }
            Err(why) => {
                s.driver.abandon();
                Err(DhcpError::NoLease { uplink: self.uplink.clone(), secs: self.timeout_secs, why })
            }
        }
    }

    /// A live session the daemon re-adopts after a restart: INIT-REBOOT with the persisted
    /// lease, whose address stays on the interface meanwhile. Does not wait.
    pub async fn resume<P: Platform>(&self, p: &P, id: &Identity) -> Result<DhcpSession, DhcpError> {
        self.resume_with(p, id, self.persisted(id.sid), None).await
    }

    /// After the uplink came back the session's interface is new and bare: a still-valid
    /// persisted lease goes back on it (the machine removes it at its end if no server
    /// confirms it), then as `resume`.
    pub async fn restore<P: Platform>(&self, p: &P, id: &Identity) -> Result<DhcpSession, DhcpError> {
        let persisted = self.persisted(id.sid);
        let inside = p.inside(&id.netns).await?;
        if let Some(l) = persisted.as_ref().filter(|l| !l.has_ended(now_ms()))
            && let Err(e) = put_on_link(&inside, l).await
        {
            tracing::warn!("re-applying the lease after the uplink came back: {e}");
        }
        self.resume_with(p, id, persisted, Some(inside)).await
    }

    async fn resume_with<P: Platform>(&self, p: &P, id: &Identity, persisted: Option<Lease>, inside: Option<P::Net>) -> Result<DhcpSession, DhcpError> {
        let first = match persisted {
            Some(l) => Event::StartWithLease(l),
            None => self.fresh_start(id.sid),
        };
        self.spawn(p, id, first, inside, false).await
    }

    /// A crash left a half-made or half-stopped session whose lease is on disk: release it as
    /// `stop` would, so the server does not hold the address until it expires. The session's
    /// namespace and interface must still exist. Returns whether a DHCPRELEASE went out.
    pub async fn release_orphan<P: Platform>(&self, p: &P, id: &Identity) -> Result<bool, DhcpError> {
        let Some(lease) = self.state.load_blob::<Option<Lease>>(&lease_file(id.sid))? else { return Ok(false) };
        let inside = p.inside(&id.netns).await?;
        // The kernel sends the unicast RELEASE from the lease's address (an expired lease
        // is only forgotten by the machine, so it needs none).
        if !lease.has_ended(now_ms()) {
            put_on_link(&inside, &lease).await?;
        }
        let socket = p.dhcp_socket(&id.netns, id.mac).await?;
        crate::lease_driver::release_orphan(self.context(p, id, inside, LeaseTarget::Namespace).await, &socket, self.client_config(id), lease)
            .await
            .map_err(DhcpError::Release)
    }

    /// `release_orphan` for a programs-mode session, on its link `at` in the host namespace;
    /// none goes out if the link is gone (a crash before it was made).
    pub async fn release_orphan_on_host<P: Platform>(&self, p: &P, id: &Identity, at: &HostLink) -> Result<bool, DhcpError> {
        let Some(lease) = self.state.load_blob::<Option<Lease>>(&lease_file(id.sid))? else { return Ok(false) };
        if p.host().link_index(&at.link).await?.is_none() {
            return Ok(false);
        }
        if !lease.has_ended(now_ms()) {
            at.add_address(p.host(), &lease).await?;
        }
        let socket = p.host_dhcp_socket(&at.link, id.mac).await?;
        let ctx = self.context(p, id, p.host().clone(), LeaseTarget::HostLink(at.clone())).await;
        crate::lease_driver::release_orphan(ctx, &socket, self.client_config(id), lease).await.map_err(DhcpError::Release)
    }

    /// Forgets the session's persisted lease (after it was released or the session is gone).
    pub fn forget(&self, sid: Sid) -> Result<(), StateError> {
        self.state.remove_blob(&lease_file(sid))
    }

    fn persisted(&self, sid: Sid) -> Option<Lease> {
        // Unreadable counts as none: DHCP starts afresh.
        self.state.load_blob::<Option<Lease>>(&lease_file(sid)).ok().flatten()
    }
}

/// Puts a lease's address (with its remaining lifetime) and routes on the session interface.
async fn put_on_link<N: NetOps>(inside: &N, lease: &Lease) -> Result<(), NetError> {
    inside.set_up(SESSION_IF).await?;
    inside.add_addr(SESSION_IF, lease.network(), false, lifetimes(lease)).await?;
    for (dest, gw) in lease.routes() {
        inside.add_route(SESSION_IF, dest, next_hop(gw)).await?;
    }
    Ok(())
}

/// A lease route's gateway; 0.0.0.0 (RFC 3442) means on-link, i.e. no gateway.
pub fn next_hop(gw: Ipv4Addr) -> Option<Ipv4Addr> {
    Some(gw).filter(|g| !g.is_unspecified())
}

/// The address lifetimes of a lease, counted from now.
pub fn lifetimes(lease: &Lease) -> Option<Lifetimes> {
    let exp = lease.expires_at()?;
    // Rounded up: the kernel must never drop the address before the lease ends (the task
    // removes it at expiry itself); the kernel's copy only matters if the daemon is dead.
    let secs = exp.saturating_sub(now_ms()).div_ceil(1000).clamp(1, u64::from(u32::MAX - 1)) as u32;
    Some(Lifetimes { valid_secs: secs, preferred_secs: secs })
}

impl DhcpSession {
    /// What the task knows now (renewals may have changed it since the start).
    pub fn view(&self) -> LeaseView {
        let s = self.driver.status.borrow();
        LeaseView::of(&s)
    }

    /// DHCPRELEASE (if bound), the address off the interface if asked, and the task ends.
    pub async fn release(self, remove_address: bool) {
        self.driver.release(remove_address).await
    }

    /// Ends the task and keeps the lease (on the server and on disk) for the next one.
    pub fn abandon(self) {
        self.driver.abandon()
    }
}

/// A DHCP session's live lease, as `status` shows it.
#[derive(Clone, Debug)]
pub struct LeaseView {
    pub state: State,
    pub lease: Option<Lease>,
    /// Why the lease is not fully on the interface (a renewal's change failed to apply).
    pub unapplied: Option<String>,
    /// Why the client has no address (a conflict), if that is why.
    pub trouble: Option<String>,
    /// The fuzzed T1 the client renews at (`None`: the lease's own T1).
    pub next_renewal: Option<crate::dhcp::Millis>,
    /// The fuzzed T2 the client rebinds at (`None`: the lease's own T2).
    pub next_rebinding: Option<crate::dhcp::Millis>,
}

impl LeaseView {
    /// What a lease task's status says of the session's lease.
    pub fn of(s: &crate::lease_driver::LeaseStatus) -> LeaseView {
        LeaseView {
            state: s.state,
            lease: s.lease.clone(),
            unapplied: s.unapplied.clone(),
            trouble: s.stopped.as_ref().map(ToString::to_string).or_else(|| s.lost.clone()),
            next_renewal: s.next_renewal,
            next_rebinding: s.next_rebinding,
        }
    }

    /// Fills the lease's facts into a session's status record.
    pub fn fill(&self, r: &mut SessionRecord) {
        let dhcp_state = self.state;
        if let Some(why) = self.unapplied.as_ref().or(self.trouble.as_ref()) {
            r.fault.get_or_insert_with(|| why.clone());
        }
        let Some(l) = &self.lease else {
            r.address = None;
            r.lease = Some(LeaseInfo { held: None, dhcp_state });
            return;
        };
        r.address = Some(l.network());
        r.gateway = l.routes().into_iter().find(|(d, _)| d.prefix_len() == 0).map(|(_, g)| g);
        r.dns = l.dns.clone();
        let held = HeldLease {
            server: l.server_id,
            lease_start: l.acquired_at,
            expires: l.expires_at(),
            next_renewal: self.next_renewal.or_else(|| l.renew_at()),
            next_rebinding: self.next_rebinding.or_else(|| l.rebind_at()),
        };
        r.lease = Some(LeaseInfo { held: Some(held), dhcp_state });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_a_lease_that_is_not_fully_applied() {
        let lease = Lease::sample(Ipv4Addr::new(10, 0, 0, 10), 0);
        let why = "the lease of 10.0.0.10/24 from 10.0.0.1 could not be applied: add route".to_string();
        let mut r = crate::state::sample_record(1);
        r.fault = None;
        LeaseView { state: State::Bound, lease: Some(lease.clone()), unapplied: Some(why.clone()), trouble: None, next_renewal: None, next_rebinding: None }
            .fill(&mut r);
        assert_eq!(r.fault, Some(why));
        // An uplink fault is not hidden by it; a fully applied lease adds none.
        let mut r = crate::state::sample_record(1);
        r.fault = Some("uplink br-lan does not exist".into());
        LeaseView { state: State::Bound, lease: Some(lease.clone()), unapplied: Some("x".into()), trouble: None, next_renewal: None, next_rebinding: None }
            .fill(&mut r);
        assert_eq!(r.fault.as_deref(), Some("uplink br-lan does not exist"));
        let mut r = crate::state::sample_record(1);
        r.fault = None;
        LeaseView { state: State::Bound, lease: Some(lease.clone()), unapplied: None, trouble: None, next_renewal: None, next_rebinding: None }.fill(&mut r);
        assert_eq!(r.fault, None);
        // The renewal time shown is the client's (T1 with its fuzz), else the lease's T1.
        assert_eq!(r.lease.as_ref().and_then(|l| l.held.as_ref()).and_then(|h| h.next_renewal), lease.renew_at());
        assert_eq!(r.lease.as_ref().and_then(|l| l.held.as_ref()).and_then(|h| h.next_rebinding), lease.rebind_at());
        LeaseView { state: State::Bound, lease: Some(lease.clone()), unapplied: None, trouble: None, next_renewal: Some(59_000), next_rebinding: None }
            .fill(&mut r);
        assert_eq!(r.lease.as_ref().and_then(|l| l.held.as_ref()).and_then(|h| h.next_renewal), Some(59_000));
    }
}
