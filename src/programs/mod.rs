//! Programs mode: a session on the host's own network stack. No namespace: eBPF hooks on the
//! login's cgroup (cgroup sock_addr programs) rewrite the socket addresses of the programs an
//! admin listed, so that they bind the session's loopback 127.0.0.(sid+1) instead of
//! 127.0.0.1 and reach their own session's listeners first (preferred loopback).
//!
//! This module builds and tears down one programs-mode session, in order, as `session.rs`
//! does for a namespace; `scope.rs` finds the login's logind scope, `cgroup.rs` makes a cgroup
//! of sessiond's own where there is none, `hooks.rs` loads and attaches the hooks
//! (`bpf/sock_addr.bpf.c`), `kernel.rs` says whether the kernel can.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use tracing::{debug, warn};

use crate::netlink::{NetError, NetOps};
use crate::sid::Sid;
pub use sessiond_client::{CgroupOwner, Mode, Virtualize};

pub mod address;
pub mod cgroup;
pub mod hooks;
pub mod kernel;
pub mod lease;
pub mod pins;
pub mod scope;

/// A process name as the kernel keeps it (`comm`: at most 15 bytes), which is what the hooks
/// compare. Longer names are refused rather than cut, so that what the admin wrote is what
/// matches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProgramName(String);

/// The kernel's TASK_COMM_LEN less its NUL.
pub const MAX_PROGRAM_NAME: usize = 15;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadProgramName {
    #[error("empty program name")]
    Empty,
    #[error("program name {0:?} is longer than the kernel's {MAX_PROGRAM_NAME} bytes of process name (it would match as {1:?})")]
    TooLong(String, String),
    #[error("program name {0:?} contains '/' or a NUL: give the process name, not a path")]
    NotAName(String),
}

impl std::str::FromStr for ProgramName {
    type Err = BadProgramName;
    fn from_str(s: &str) -> Result<ProgramName, BadProgramName> {
        if s.is_empty() {
            return Err(BadProgramName::Empty);
        }
        if s.contains(['/', '\0']) {
            return Err(BadProgramName::NotAName(s.into()));
        }
        if s.len() > MAX_PROGRAM_NAME {
            let mut cut = MAX_PROGRAM_NAME;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            return Err(BadProgramName::TooLong(s.into(), s[..cut].into()));
        }
        Ok(ProgramName(s.into()))
    }
}

impl<'de> serde::Deserialize<'de> for ProgramName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ProgramName, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for ProgramName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl ProgramName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key the hooks look up: the name, zero-padded as bpf_get_current_comm() fills it.
    pub fn comm_key(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..self.0.len()].copy_from_slice(self.0.as_bytes());
        k
    }
}

/// What one programs-mode session gets from the hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookConfig {
    pub loopback: Ipv4Addr,
    /// The session's own address, once it has one (address virtualization).
    pub address: Option<Ipv4Addr>,
    /// Empty: every program of the session.
    pub programs: Vec<ProgramName>,
    pub virtualize: Vec<Virtualize>,
}

/// What to build for one programs-mode session.
#[derive(Clone, Debug)]
pub struct ProgramsPlan {
    pub sid: Sid,
    /// The cgroup v2 directory the hooks go on.
    pub cgroup: PathBuf,
    /// Sessiond: the build makes `cgroup` and the teardown removes it. Logind: the login's
    /// scope, which is systemd's: only the hooks go on and come off.
    pub cgroup_owner: CgroupOwner,
    /// The bpffs directory the hooks are pinned in (`pins::session_dir`).
    pub pins: PathBuf,
    pub hooks: HookConfig,
    /// Address virtualization: the session's macvlan, address, table and rule.
    pub address: Option<address::AddressPlan>,
}

impl ProgramsPlan {
    pub fn teardown_spec(&self) -> ProgramsTeardown {
        ProgramsTeardown {
            cgroup: self.cgroup.clone(),
            cgroup_owner: self.cgroup_owner,
            pins: self.pins.clone(),
            loopback: self.hooks.loopback,
            address: self.address.as_ref().map(|a| a.teardown_spec()),
        }
    }
}

/// What to remove; derivable from the sid and the daemon's cgroup, so a crash leaves nothing
/// untraceable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramsTeardown {
    pub cgroup: PathBuf,
    pub cgroup_owner: CgroupOwner,
    pub pins: PathBuf,
    pub loopback: Ipv4Addr,
    pub address: Option<address::AddressTeardown>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProgramsError {
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Hooks(#[from] hooks::HookError),
    #[error(transparent)]
    Net(#[from] NetError),
}

#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct ProgramsStepError {
    pub step: &'static str,
    #[source]
    pub source: ProgramsError,
}

fn step<T, E: Into<ProgramsError>>(step: &'static str, r: Result<T, E>) -> Result<T, ProgramsStepError> {
    r.map_err(|e| ProgramsStepError { step, source: e.into() })
}

/// The kernel side of programs mode (cgroups and hooks), behind a trait so that the build
/// order and the teardown can be tested without a kernel.
pub trait ProgramsKernel: Send + Sync {
    /// The attached hooks of one session; detached when dropped.
    type Attached: Send + Sync;
    fn check_kernel(&self) -> Result<(), kernel::KernelError>;
    fn create_cgroup(&self, dir: &Path) -> Result<(), cgroup::CgroupError>;
    /// Moves what is left in the cgroup to its parent and removes it; absent is fine.
    fn remove_cgroup(&self, dir: &Path) -> Result<(), cgroup::CgroupError>;
    /// Attaches the hooks to the cgroup `dir` and pins them in `pins`.
    fn attach(&self, dir: &Path, config: &HookConfig, pins: &Path) -> Result<Self::Attached, hooks::HookError>;
    /// Detaches every hook, going on past errors.
    fn detach(&self, attached: Self::Attached) -> Vec<hooks::HookError>;
    /// Removes the pins in `pins` and the directory, going on past errors; absent is fine.
    fn unpin(&self, pins: &Path) -> Vec<hooks::HookError>;
    /// The session's address on its own link (idempotent).
    fn add_address(&self, plan: &address::AddressPlan) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Removes it all again, going on past errors; what is gone is fine.
    fn remove_address(&self, spec: &address::AddressTeardown) -> impl Future<Output = Vec<NetError>> + Send;
}

/// The real kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel;

impl ProgramsKernel for Kernel {
    type Attached = hooks::Hooks;
    fn check_kernel(&self) -> Result<(), kernel::KernelError> {
        kernel::check()
    }
    fn create_cgroup(&self, dir: &Path) -> Result<(), cgroup::CgroupError> {
        cgroup::create(dir)
    }
    fn remove_cgroup(&self, dir: &Path) -> Result<(), cgroup::CgroupError> {
        cgroup::remove(dir)
    }
    fn attach(&self, dir: &Path, config: &HookConfig, pins: &Path) -> Result<hooks::Hooks, hooks::HookError> {
        hooks::Hooks::attach(dir, config, pins)
    }
    fn detach(&self, attached: hooks::Hooks) -> Vec<hooks::HookError> {
        attached.detach()
    }
    fn unpin(&self, pins: &Path) -> Vec<hooks::HookError> {
        pins::remove(pins)
    }
    async fn add_address(&self, plan: &address::AddressPlan) -> Result<(), NetError> {
        address::build(plan).await
    }
    async fn remove_address(&self, spec: &address::AddressTeardown) -> Vec<NetError> {
        address::teardown(spec).await
    }
}

fn loopback_net(a: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(a, 32).expect("/32 is a valid prefix")
}

/// Serialises programs-mode changes of the host's `lo`: every session's go through the one host
/// netlink connection, and removing an address lists lo's first, a dump, of which the kernel
/// runs one per socket at a time (a second one gets EBUSY: `stop --all` stops in parallel).
static HOST_LO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `op` on the host's lo, under HOST_LO, retried a few times if a dump of someone else's on the
/// same connection still runs (EBUSY).
async fn on_host_lo<F: Future<Output = Result<(), NetError>>>(op: impl Fn() -> F) -> Result<(), NetError> {
    let _held = HOST_LO.lock().await;
    let mut tries = 0;
    loop {
        match op().await {
            Err(e) if e.errno() == Some(libc::EBUSY) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            r => return r,
        }
    }
}

/// Builds the session: its cgroup, its loopback on the host's `lo`, the hooks on the cgroup.
/// On failure everything made so far is torn down again.
pub async fn build<K: ProgramsKernel, N: NetOps>(kernel: &K, host: &N, plan: &ProgramsPlan) -> Result<K::Attached, ProgramsStepError> {
    build_before_hooks(kernel, host, plan).await?;
    match attach_hooks(kernel, plan) {
        Ok(attached) => Ok(attached),
        Err(e) => {
            roll_back(kernel, host, plan).await;
            Err(e)
        }
    }
}

/// `build` without its last step, the hooks: for a session whose address is leased on its
/// link (`lease`) before the hooks, configured with it, go on (`attach_hooks`). On failure
/// everything made so far is torn down again.
pub async fn build_before_hooks<K: ProgramsKernel, N: NetOps>(kernel: &K, host: &N, plan: &ProgramsPlan) -> Result<(), ProgramsStepError> {
    let r = build_steps(kernel, host, plan).await;
    if r.is_err() {
        roll_back(kernel, host, plan).await;
    }
    r
}

/// The last step of `build`. On failure nothing is torn down: the caller gives back what it
/// holds (a lease) first, then tears the session down.
pub fn attach_hooks<K: ProgramsKernel>(kernel: &K, plan: &ProgramsPlan) -> Result<K::Attached, ProgramsStepError> {
    let attached = step("attach the hooks", kernel.attach(&plan.cgroup, &plan.hooks, &plan.pins))?;
    debug!(sid = %plan.sid, cgroup = %plan.cgroup.display(), owner = %plan.cgroup_owner, "programs-mode session built");
    Ok(attached)
}

async fn roll_back<K: ProgramsKernel, N: NetOps>(kernel: &K, host: &N, plan: &ProgramsPlan) {
    for err in teardown(kernel, host, &plan.teardown_spec(), None).await {
        warn!(sid = %plan.sid, step = err.step, "rollback: {err}");
    }
}

async fn build_steps<K: ProgramsKernel, N: NetOps>(kernel: &K, host: &N, plan: &ProgramsPlan) -> Result<(), ProgramsStepError> {
    step("check the kernel", kernel.check_kernel())?;
    if plan.cgroup_owner == CgroupOwner::Sessiond {
        step("create the session cgroup", kernel.create_cgroup(&plan.cgroup))?;
    }
    // 127/8 is local on the host's lo already; the address makes the session's loopback show
    // (and go) with the session, as in namespace mode.
    step("add the session loopback to lo", on_host_lo(|| host.add_addr("lo", loopback_net(plan.hooks.loopback), true, None)).await)?;
    if let Some(a) = &plan.address {
        let what = if a.address.is_some() { "put the session address on its own link" } else { "make the session's own link (for DHCP)" };
        step(what, kernel.add_address(a).await)?;
    }
    Ok(())
}

/// Tears the session down in reverse order, going on past errors, and returns them all.
/// Idempotent: what is already gone is not an error. `attached`: the hooks, when this daemon
/// holds them; their pins (which keep them attached without the daemon) go in any case.
pub async fn teardown<K: ProgramsKernel, N: NetOps>(kernel: &K, host: &N, spec: &ProgramsTeardown, attached: Option<K::Attached>) -> Vec<ProgramsStepError> {
    let mut errors = Vec::new();
    if let Some(a) = attached {
        errors.extend(kernel.detach(a).into_iter().map(|e| ProgramsStepError { step: "detach the hooks", source: e.into() }));
    }
    errors.extend(kernel.unpin(&spec.pins).into_iter().map(|e| ProgramsStepError { step: "unpin the hooks", source: e.into() }));
    if let Some(a) = &spec.address {
        errors.extend(
            kernel.remove_address(a).await.into_iter().map(|e| ProgramsStepError { step: "remove the session address and its link", source: e.into() }),
        );
    }
    if let Err(e) = step("remove the session loopback from lo", on_host_lo(|| host.del_addr("lo", loopback_net(spec.loopback))).await) {
        errors.push(e);
    }
    // A logind scope is systemd's: it goes when its login's processes are gone.
    if spec.cgroup_owner == CgroupOwner::Sessiond
        && let Err(e) = step("remove the session cgroup", kernel.remove_cgroup(&spec.cgroup))
    {
        errors.push(e);
    }
    errors
}

#[cfg(test)]
mod tests;
