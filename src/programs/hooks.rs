//! The eBPF hooks of one programs-mode session (`bpf/sock_addr.bpf.c`, compiled by build.rs):
//! loaded with aya, configured through their maps, attached to the session's cgroup with
//! multi-attach (so that systemd's own programs there stay), detached again.
//!
//! Each session loads its own copy: its maps hold that session's loopback, address and
//! program list, and nothing has to tell sessions apart at run time.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, PerCpuArray};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, cgroup_sock_addr::CgroupSockAddrLinkId};
use aya::{Ebpf, EbpfLoader, include_bytes_aligned};

use super::{HookConfig, Virtualize};

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_addr.bpf.o"));

/// One loader for every session's copy. Without kernel BTF: the hooks use no CO-RE
/// relocation, and aya's `EbpfLoader::new` parses /sys/kernel/btf/vmlinux (megabytes), which
/// `Ebpf::load` does twice per load; kept, the parse happens once per daemon.
static LOADER: std::sync::LazyLock<std::sync::Mutex<EbpfLoader<'static>>> = std::sync::LazyLock::new(|| {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    std::sync::Mutex::new(loader)
});

/// The attach points, by the names of their programs in the object (and in `status`).
pub const HOOKS: [&str; 6] = ["bind4", "connect4", "sendmsg4", "recvmsg4", "getsockname4", "getpeername4"];

/// config.flags in the object.
const VIRT_LOOPBACK: u32 = 1;
const VIRT_ADDRESS: u32 = 2;
const ALL_PROGRAMS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot load the eBPF object: {}", chain(.0))]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("{what}: {source}")]
    Map { what: &'static str, source: aya::maps::MapError },
    #[error("{hook}: {}", chain(source))]
    Program { hook: &'static str, source: aya::programs::ProgramError },
    #[error("open cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: std::io::Error },
}

/// An error with its causes ("`bpf_link_create` failed: Invalid argument"): aya's errors keep
/// the system error in their source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s = format!("{s}: {c}");
        cause = c.source();
    }
    s
}

/// One session's loaded and attached hooks. Dropping it detaches them (the links are file
/// descriptors of this process).
pub struct Hooks {
    ebpf: Ebpf,
    links: Vec<(&'static str, CgroupSockAddrLinkId)>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").field("attached", &self.attached()).finish()
    }
}

/// The `config` map's value: struct config { u32 loopback, address, flags } with the
/// addresses in network order, as the hooks compare them.
fn config_value(c: &HookConfig) -> [u8; 12] {
    let mut flags = 0;
    if c.virtualize.contains(&Virtualize::Loopback) {
        flags |= VIRT_LOOPBACK;
    }
    if c.virtualize.contains(&Virtualize::Address) {
        flags |= VIRT_ADDRESS;
    }
    if c.programs.is_empty() {
        flags |= ALL_PROGRAMS;
    }
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&c.loopback.octets());
    v[4..8].copy_from_slice(&c.address.unwrap_or(Ipv4Addr::UNSPECIFIED).octets());
    v[8..12].copy_from_slice(&flags.to_ne_bytes());
    v
}

impl Hooks {
    /// Loads a copy of the hooks configured for one session and attaches every one of them
    /// to `cgroup`; on error what was attached is detached again (dropped).
    pub fn attach(cgroup: &Path, config: &HookConfig) -> Result<Hooks, HookError> {
        let mut ebpf = LOADER.lock().unwrap_or_else(|p| p.into_inner()).load(OBJECT).map_err(HookError::Load)?;
        let mut cfg: Array<_, [u8; 12]> =
            Array::try_from(ebpf.map_mut("config").ok_or(HookError::Missing("config map"))?).map_err(|source| HookError::Map { what: "config map", source })?;
        cfg.set(0, config_value(config), 0).map_err(|source| HookError::Map { what: "write the config", source })?;
        let mut names: HashMap<_, [u8; 16], u8> = HashMap::try_from(ebpf.map_mut("programs").ok_or(HookError::Missing("programs map"))?)
            .map_err(|source| HookError::Map { what: "programs map", source })?;
        for p in &config.programs {
            names.insert(p.comm_key(), 1, 0).map_err(|source| HookError::Map { what: "write the program list", source })?;
        }
        let dir = std::fs::File::open(cgroup).map_err(|source| HookError::Cgroup { path: cgroup.to_path_buf(), source })?;
        let mut hooks = Hooks { ebpf, links: Vec::new() };
        for hook in HOOKS {
            let program: &mut CgroupSockAddr =
                hooks.ebpf.program_mut(hook).ok_or(HookError::Missing(hook))?.try_into().map_err(|source| HookError::Program { hook, source })?;
            program.load().map_err(|source| HookError::Program { hook, source })?;
            // A bpf_link (aya makes one on Linux >= 5.7, and programs mode needs 5.8) is always
            // attached as with BPF_F_ALLOW_MULTI: other programs on the cgroup (systemd's)
            // stay and run too. The kernel takes no flags with it (EINVAL), hence `Single`,
            // which is aya's name for no flags.
            let link = program.attach(&dir, CgroupAttachMode::Single).map_err(|source| HookError::Program { hook, source })?;
            hooks.links.push((hook, link));
        }
        Ok(hooks)
    }

    /// The attached hooks' names.
    pub fn attached(&self) -> Vec<String> {
        self.links.iter().map(|(h, _)| h.to_string()).collect()
    }

    /// How many socket addresses the hooks rewrote (every CPU's counters added up).
    pub fn rewritten(&self) -> u64 {
        let Some(map) = self.ebpf.map("counters") else { return 0 };
        let Ok(counters) = PerCpuArray::<_, u64>::try_from(map) else { return 0 };
        (0..counters.len()).filter_map(|i| counters.get(&i, 0).ok()).map(|per_cpu| per_cpu.iter().sum::<u64>()).sum()
    }

    /// Detaches every hook, going on past errors; the programs are unloaded with `self`.
    pub fn detach(mut self) -> Vec<HookError> {
        let mut errors = Vec::new();
        for (hook, link) in std::mem::take(&mut self.links) {
            let detached = match self.ebpf.program_mut(hook).map(<&mut CgroupSockAddr>::try_from) {
                Some(Ok(p)) => p.detach(link),
                Some(Err(e)) => Err(e),
                None => Ok(()),
            };
            if let Err(source) = detached {
                errors.push(HookError::Program { hook, source });
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_value_is_laid_out_as_the_hooks_read_it() {
        let c = HookConfig {
            loopback: Ipv4Addr::new(127, 0, 0, 3),
            address: Some(Ipv4Addr::new(10, 77, 0, 100)),
            programs: vec!["python3".parse().unwrap()],
            virtualize: vec![Virtualize::Loopback],
        };
        let v = config_value(&c);
        assert_eq!(&v[0..4], &[127, 0, 0, 3]);
        assert_eq!(&v[4..8], &[10, 77, 0, 100]);
        assert_eq!(u32::from_ne_bytes(v[8..12].try_into().unwrap()), VIRT_LOOPBACK);
        let all = HookConfig { programs: vec![], virtualize: vec![Virtualize::Address, Virtualize::Loopback], address: None, ..c };
        let v = config_value(&all);
        assert_eq!(&v[4..8], &[0, 0, 0, 0], "no address yet");
        assert_eq!(u32::from_ne_bytes(v[8..12].try_into().unwrap()), VIRT_LOOPBACK | VIRT_ADDRESS | ALL_PROGRAMS);
    }

    #[test]
    fn the_object_holds_every_hook() {
        let obj = aya_obj::Object::parse(OBJECT).expect("build.rs made a valid object");
        for h in HOOKS {
            assert!(obj.programs.contains_key(h), "{h} missing");
        }
        for m in ["config", "programs", "counters"] {
            assert!(obj.maps.contains_key(m), "{m} missing");
        }
    }
}
