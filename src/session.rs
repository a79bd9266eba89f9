//! Building and tearing down one session's network: the order of operations, nothing else.
//! Every step is idempotent; teardown runs in reverse and keeps going past errors.
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use tracing::{debug, warn};

use crate::config::LinkKind;
use crate::netlink::{Lifetimes, NetError, NetOps};
use crate::platform::Platform;
use crate::sid::Sid;

/// The name of the session's uplink inside its namespace.
pub const SESSION_IF: &str = "eth0";

/// What to build for one session.
#[derive(Clone, Debug)]
pub struct SessionPlan {
    pub sid: Sid,
    pub link: LinkKind,
    pub uplink: String,
    pub bridge: Option<String>,
    pub mac: [u8; 6],
    pub loopback: Ipv4Addr,
    /// Static sessions know their address up front; DHCP sessions apply it later.
    pub address: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub resolv_conf: String,
    pub hosts: String,
    /// Set in the new namespace before its uplink exists (`ipv6::sysctls`).
    pub ipv6_sysctls: Vec<(&'static str, String)>,
}

/// What to remove; derivable from the sid alone so a crash leaves nothing untraceable.
#[derive(Clone, Debug)]
pub struct TeardownSpec {
    pub netns: String,
    pub host_link: Option<String>,
    pub address: Option<Ipv4Net>,
}

impl TeardownSpec {
    pub fn for_sid(sid: Sid, link: Option<LinkKind>, address: Option<Ipv4Net>) -> TeardownSpec {
        TeardownSpec {
            netns: sid.netns_name(),
            // Unknown link kind (orphan): try the veth name too; deleting an absent link is a no-op.
            host_link: if link == Some(LinkKind::Macvlan) { None } else { Some(sid.veth_host_name()) },
            address,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct StepError {
    pub step: &'static str,
    #[source]
    pub source: NetError,
}

fn step<T>(step: &'static str, r: Result<T, NetError>) -> Result<T, StepError> {
    r.map_err(|source| StepError { step, source })
}

impl SessionPlan {
    pub fn netns(&self) -> String {
        self.sid.netns_name()
    }

    pub fn teardown_spec(&self) -> TeardownSpec {
        TeardownSpec::for_sid(self.sid, Some(self.link), self.address)
    }
}

/// A DHCP address change adds the new address (a secondary in the same subnet) before removing
/// the old primary; without promotion the kernel would delete both.
pub fn enable_promote_secondaries<P: Platform>(p: &P, netns: &str) -> Result<(), NetError> {
    p.set_sysctl(netns, PROMOTE_SECONDARIES.0, PROMOTE_SECONDARIES.1)
}

const PROMOTE_SECONDARIES: (&str, &str) = ("net.ipv4.conf.all.promote_secondaries", "1");

/// Builds the session and returns the netlink connection inside it (for the DHCP task, so it
/// need not open another). On failure everything made so far is torn down again.
pub async fn build<P: Platform>(p: &P, plan: &SessionPlan) -> Result<P::Net, StepError> {
    match build_steps(p, plan).await {
        Ok(inside) => Ok(inside),
        Err(e) => {
            for err in teardown(p, &plan.teardown_spec()).await {
                warn!(sid = %plan.sid, step = err.step, "rollback: {err}");
            }
            Err(e)
        }
    }
}

async fn build_steps<P: Platform>(p: &P, plan: &SessionPlan) -> Result<P::Net, StepError> {
    let netns = plan.netns();
    let sysctls: Vec<(&str, &str)> = std::iter::once(PROMOTE_SECONDARIES).chain(plan.ipv6_sysctls.iter().map(|(k, v)| (*k, v.as_str()))).collect();
    step("create network namespace", p.create_netns(&netns, &sysctls).await)?;
    match plan.link {
        // Created directly inside the namespace: moving a link afterwards costs ~40x more.
        LinkKind::Macvlan => step("create macvlan", p.host().create_macvlan(&plan.uplink, SESSION_IF, plan.mac, &netns).await)?,
        LinkKind::Veth => {
            let bridge = plan.bridge.as_deref().ok_or(StepError { step: "create veth", source: NetError::Other("no bridge configured".into()) })?;
            step("create veth", p.host().create_veth(&plan.sid.veth_host_name(), bridge, SESSION_IF, plan.mac, &netns).await)?
        }
    }
    let inside = step("open netlink in the session namespace", p.inside(&netns).await)?;
    step("bring lo up", inside.set_up("lo").await)?;
    step("add 127.0.0.1/8 to lo", inside.add_addr("lo", Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).unwrap(), true, None).await)?;
    step("add the session loopback", inside.add_addr("lo", Ipv4Net::new(plan.loopback, 32).unwrap(), true, None).await)?;
    step("bring the uplink up", set_uplink_up(&inside).await)?;
    if let Some(addr) = plan.address {
        apply_address(&inside, addr, plan.gateway, None).await?;
    }
    // A DHCP session's files are written once, by its DHCP task, from the lease (writing
    // placeholders here cost two more files per start, each a new inode on the state's disk).
    if plan.address.is_some() {
        step("write resolv.conf", p.write_netns_file(&netns, "resolv.conf", &plan.resolv_conf))?;
        step("write hosts", p.write_netns_file(&netns, "hosts", &plan.hosts))?;
    }
    debug!(sid = %plan.sid, "session built");
    Ok(inside)
}

/// Brings the session's uplink back after the host NIC returned (the kernel deletes a macvlan
/// together with its parent; a veth's host end loses its bridge). Idempotent.
pub async fn restore_uplink<P: Platform>(p: &P, plan: &SessionPlan) -> Result<(), StepError> {
    let netns = plan.netns();
    let inside = step("open netlink in the session namespace", p.inside(&netns).await)?;
    let present = matches!(inside.link_index(SESSION_IF).await, Ok(Some(_)));
    let _ = enable_promote_secondaries(p, &netns);
    match plan.link {
        LinkKind::Macvlan if !present => step("re-create macvlan", p.host().create_macvlan(&plan.uplink, SESSION_IF, plan.mac, &netns).await)?,
        LinkKind::Macvlan => {}
        LinkKind::Veth => {
            let bridge = plan.bridge.as_deref().unwrap_or(&plan.uplink);
            let host = plan.sid.veth_host_name();
            if present {
                step("re-attach the veth to the bridge", p.host().set_master(&host, bridge).await)?;
            } else {
                step("remove the stale veth end", p.host().del_link(&host).await)?;
                step("re-create veth", p.host().create_veth(&host, bridge, SESSION_IF, plan.mac, &netns).await)?;
            }
        }
    }
    step("bring the uplink up", set_uplink_up(&inside).await)?;
    if let Some(addr) = plan.address {
        apply_address(&inside, addr, plan.gateway, None).await?;
    }
    Ok(())
}

/// Brings the session interface up. A macvlan will not come up while another one with the same
/// MAC is up on the parent: the previous instance of this sid, whose namespace the kernel may
/// still be freeing right after a stop. That takes milliseconds, so wait a bounded while.
async fn set_uplink_up<N: NetOps>(inside: &N) -> Result<(), NetError> {
    for _ in 0..UPLINK_UP_TRIES {
        match inside.set_up(SESSION_IF).await {
            Err(e) if e.errno() == Some(libc::EADDRINUSE) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            r => return r,
        }
    }
    inside.set_up(SESSION_IF).await.map_err(|e| match e.errno() {
        Some(libc::EADDRINUSE) => {
            NetError::Other(format!("{e} (its MAC is still up elsewhere on the parent: a previous instance of this session, kept by a process still in it?)"))
        }
        _ => e,
    })
}

const UPLINK_UP_TRIES: u32 = 100;

/// Puts an address and its default route on the session interface (idempotent).
pub async fn apply_address<N: NetOps>(inside: &N, addr: Ipv4Net, gateway: Option<Ipv4Addr>, life: Option<Lifetimes>) -> Result<(), StepError> {
    step("add the session address", inside.add_addr(SESSION_IF, addr, false, life).await)?;
    if let Some(gw) = gateway {
        step("add the default route", inside.add_route(SESSION_IF, "0.0.0.0/0".parse().unwrap(), Some(gw)).await)?;
    }
    Ok(())
}

/// Tears a session down in reverse order: address, links, namespace, files.
/// Keeps going past errors and returns all of them; absent pieces are not errors.
pub async fn teardown<P: Platform>(p: &P, spec: &TeardownSpec) -> Vec<StepError> {
    teardown_steps(p, spec).await
}

/// As `teardown`, but a macvlan session's interface (and the address on it) is left to the
/// kernel, which frees it with the namespace (why: docs/performance.md, "Design notes: stop
/// leaves the macvlan to the kernel"). Returns the namespace's id so the caller can check,
/// after answering, that it did go (see `reap_link`).
pub async fn teardown_leaving_link<P: Platform>(p: &P, spec: &TeardownSpec) -> (Vec<StepError>, Option<i32>) {
    if spec.host_link.is_some() || !p.netns_exists(&spec.netns) {
        return (teardown(p, spec).await, None);
    }
    let nsid = match p.netns_id(&spec.netns).await {
        Ok(id) => id,
        Err(e) => {
            warn!("no id for {} ({e}): deleting its interface now", spec.netns);
            return (teardown(p, spec).await, None);
        }
    };
    let mut errors = Vec::new();
    if let Err(e) = step("delete the network namespace", p.delete_netns(&spec.netns)) {
        errors.push(e);
    }
    if let Err(e) = step("remove /etc/netns files", p.remove_netns_files(&spec.netns)) {
        errors.push(e);
    }
    (errors, Some(nsid))
}

/// After `teardown_leaving_link` and once the daemon dropped its own handles on the namespace:
/// waits (bounded) for the namespace to go; if something still holds it, deletes the session
/// interface in it, so the held namespace keeps no address and the MAC is free for the sid.
pub async fn reap_link<N: NetOps>(host: &N, nsid: i32, mac: [u8; 6]) {
    // The daemon's sockets in the namespace are freed after an RCU grace period, so the
    // namespace outlives the stop by a few milliseconds even when nothing else holds it.
    let mut wait = std::time::Duration::from_millis(5);
    let mut waited = std::time::Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        waited += wait;
        match host.peer_link_mac(nsid, SESSION_IF).await {
            // Gone, or the id already names a newer namespace: ours is gone.
            Ok(None) => return,
            Ok(Some(m)) if m != mac => return,
            Ok(Some(_)) if waited < REAP_PATIENCE => wait *= 2,
            Ok(Some(_)) => {
                warn!("the namespace is still in use {} ms after stop (a process left in it?): deleting its interface", waited.as_millis());
                if let Err(e) = host.del_peer_link(nsid, SESSION_IF).await {
                    warn!("deleting the session interface: {e}");
                }
                return;
            }
            Err(e) => {
                warn!("checking that the namespace went: {e}");
                return;
            }
        }
    }
}

/// How long a stopped session's namespace may take to go before it counts as held.
const REAP_PATIENCE: std::time::Duration = std::time::Duration::from_millis(600);

async fn teardown_steps<P: Platform>(p: &P, spec: &TeardownSpec) -> Vec<StepError> {
    let mut errors = Vec::new();
    let mut keep = |r: Result<(), StepError>| {
        if let Err(e) = r {
            errors.push(e)
        }
    };
    if p.netns_exists(&spec.netns) {
        match p.inside(&spec.netns).await {
            Ok(inside) => {
                if let Some(addr) = spec.address {
                    keep(step("remove the session address", inside.del_addr(SESSION_IF, addr).await));
                }
                keep(step("delete the session interface", inside.del_link(SESSION_IF).await));
            }
            Err(e) => keep(Err(StepError { step: "open netlink in the session namespace", source: e })),
        }
    }
    if let Some(h) = &spec.host_link {
        keep(step("delete the host end of the veth", p.host().del_link(h).await));
    }
    keep(step("delete the network namespace", p.delete_netns(&spec.netns)));
    keep(step("remove /etc/netns files", p.remove_netns_files(&spec.netns)));
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakePlatform;

    fn plan(link: LinkKind) -> SessionPlan {
        let sid = Sid::new(3).unwrap();
        SessionPlan {
            sid,
            link,
            uplink: "br-lan".into(),
            bridge: Some("br-lan".into()),
            mac: [2, 0, 0, 0, 0, 3],
            loopback: crate::loopback::loopback_for(sid),
            address: Some("10.0.0.100/24".parse().unwrap()),
            gateway: Some("10.0.0.1".parse().unwrap()),
            resolv_conf: "nameserver 10.0.0.1\n".into(),
            hosts: "127.0.0.1 localhost\n".into(),
            ipv6_sysctls: crate::ipv6::sysctls(crate::config::Ipv6Mode::Auto, false, "fd00::3".parse().unwrap(), false),
        }
    }

    #[tokio::test]
    async fn builds_in_order_and_tears_down_in_reverse() {
        let p = FakePlatform::new();
        build(&p, &plan(LinkKind::Macvlan)).await.unwrap();
        assert_eq!(
            p.log(),
            vec![
                "netns add sessiond-3",
                "sessiond-3: sysctl net.ipv4.conf.all.promote_secondaries=1",
                "sessiond-3: sysctl net.ipv6.conf.default.stable_secret=fd00::3",
                "sessiond-3: sysctl net.ipv6.conf.default.addr_gen_mode=2",
                "sessiond-3: sysctl net.ipv6.conf.default.accept_ra=1",
                "sessiond-3: sysctl net.ipv6.conf.default.autoconf=1",
                "sessiond-3: sysctl net.ipv6.conf.default.use_tempaddr=0",
                "host: macvlan eth0 on br-lan mac 02:00:00:00:00:03 in sessiond-3",
                "sessiond-3: up lo",
                "sessiond-3: addr add 127.0.0.1/8 dev lo scope host",
                "sessiond-3: addr add 127.0.0.4/32 dev lo scope host",
                "sessiond-3: up eth0",
                "sessiond-3: addr add 10.0.0.100/24 dev eth0",
                "sessiond-3: route 0.0.0.0/0 via 10.0.0.1 dev eth0",
                "write sessiond-3/resolv.conf",
                "write sessiond-3/hosts",
            ]
        );
        p.clear_log();
        let errs = teardown(&p, &plan(LinkKind::Macvlan).teardown_spec()).await;
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(p.log(), vec!["sessiond-3: addr del 10.0.0.100/24 dev eth0", "sessiond-3: link del eth0", "netns del sessiond-3", "rm sessiond-3 files",]);
        assert!(p.is_empty(), "fake still holds {:?}", p.objects());
    }

    #[tokio::test]
    async fn veth_host_end_joins_the_bridge_and_is_removed() {
        let p = FakePlatform::new();
        build(&p, &plan(LinkKind::Veth)).await.unwrap();
        assert!(p.log().contains(&"host: veth sdv3 on bridge br-lan peer eth0 mac 02:00:00:00:00:03 in sessiond-3".to_string()));
        p.clear_log();
        teardown(&p, &plan(LinkKind::Veth).teardown_spec()).await;
        assert!(p.log().contains(&"host: link del sdv3".to_string()));
        assert!(p.is_empty());
    }

    #[tokio::test]
    async fn failure_midway_rolls_everything_back() {
        for failing in ["sessiond-3: up eth0", "host: macvlan", "write sessiond-3/hosts", "sessiond-3: route"] {
            let p = FakePlatform::new();
            p.fail_on(failing);
            let e = build(&p, &plan(LinkKind::Macvlan)).await.unwrap_err();
            assert!(p.is_empty(), "after failing at {failing}: left {:?}", p.objects());
            assert!(!e.step.is_empty());
        }
    }

    #[tokio::test]
    async fn teardown_keeps_going_past_errors_and_reports_all() {
        let p = FakePlatform::new();
        build(&p, &plan(LinkKind::Veth)).await.unwrap();
        p.fail_on("sessiond-3: link del");
        p.fail_on("rm sessiond-3 files");
        let errs = teardown(&p, &plan(LinkKind::Veth).teardown_spec()).await;
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].step, "delete the session interface");
        assert_eq!(errs[1].step, "remove /etc/netns files");
        // the steps after the failures still ran
        assert!(p.log().contains(&"netns del sessiond-3".to_string()));
        assert!(p.log().contains(&"host: link del sdv3".to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn macvlan_stop_leaves_the_interface_to_the_kernel() {
        let p = FakePlatform::new();
        let mv = plan(LinkKind::Macvlan);
        build(&p, &mv).await.unwrap();
        p.clear_log();
        let (errs, nsid) = teardown_leaving_link(&p, &mv.teardown_spec()).await;
        assert!(errs.is_empty(), "{errs:?}");
        // No address or link deletion (each an RTNL-held grace period): the namespace takes them.
        assert_eq!(p.log(), vec!["netns id sessiond-3", "netns del sessiond-3", "rm sessiond-3 files"]);
        assert!(p.is_empty(), "{:?}", p.objects());
        reap_link(p.host(), nsid.expect("an id to check on"), mv.mac).await;
        assert!(!p.log().iter().any(|l| l.contains("link del")), "{:?}", p.log());
        // veth: its host end must be gone when stop returns, so the full teardown runs
        let p = FakePlatform::new();
        build(&p, &plan(LinkKind::Veth)).await.unwrap();
        let (_, nsid) = teardown_leaving_link(&p, &plan(LinkKind::Veth).teardown_spec()).await;
        assert!(nsid.is_none());
        assert!(p.is_empty());
    }

    /// A macvlan session stopped while something outside the daemon holds its namespace.
    async fn stopped_while_held() -> (FakePlatform, SessionPlan, i32) {
        let p = FakePlatform::new();
        let plan = plan(LinkKind::Macvlan);
        p.hold_outside(&plan.netns());
        build(&p, &plan).await.unwrap();
        let (errs, nsid) = teardown_leaving_link(&p, &plan.teardown_spec()).await;
        assert!(errs.is_empty(), "{errs:?}");
        assert!(p.objects().contains("link:sessiond-3/eth0"), "still there while held");
        (p, plan, nsid.expect("an id to check on"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_namespace_something_still_holds_loses_its_interface() {
        let (p, plan, nsid) = stopped_while_held().await;
        let t0 = tokio::time::Instant::now();
        reap_link(p.host(), nsid, plan.mac).await;
        assert!(t0.elapsed() >= REAP_PATIENCE, "waited {:?} before deciding it is held", t0.elapsed());
        assert!(p.log().contains(&"host: link del eth0 in nsid 0".to_string()), "{:?}", p.log());
        assert!(!p.objects().iter().any(|o| o.starts_with("link:sessiond-3/") || o.starts_with("addr:sessiond-3/eth0")), "{:?}", p.objects());
    }

    #[tokio::test(start_paused = true)]
    async fn reaping_never_touches_another_sessions_interface() {
        // The id now names a namespace whose eth0 has another MAC: ours is gone, leave it be.
        let (p, _, nsid) = stopped_while_held().await;
        let other_mac = [0x02, 0, 0, 0, 0, 0x99];
        reap_link(p.host(), nsid, other_mac).await;
        assert!(!p.log().iter().any(|l| l.contains("link del")));
        assert!(p.objects().contains("link:sessiond-3/eth0"));
    }

    #[tokio::test]
    async fn teardown_of_absent_session_is_a_quiet_no_op() {
        let p = FakePlatform::new();
        let spec = TeardownSpec::for_sid(Sid::new(9).unwrap(), None, None);
        assert!(teardown(&p, &spec).await.is_empty());
        assert!(teardown(&p, &spec).await.is_empty());
    }
}
