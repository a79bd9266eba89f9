//! The eBPF hooks of one programs-mode session (`bpf/sock_addr.bpf.c`, compiled by build.rs):
//! loaded with aya, configured through their maps, attached to the session's cgroup with
//! multi-attach (so that systemd's own programs there stay), detached again.
//!
//! Each session loads its own copy: its maps hold that session's loopback, address and
//! program list, and nothing has to tell sessions apart at run time.
//!
//! The links and the counters map are pinned in the session's bpffs directory (`pins.rs`), so
//! the hooks outlive the daemon, and a next daemon adopts them from there.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, LinkError, LinkType, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{EbpfLoader, include_bytes_aligned};

use super::{HookConfig, Virtualize, pins};

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
    #[error("{op} {path}: {source}")]
    Pin { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("pin {what}: {}", chain(source))]
    PinObject { what: &'static str, source: aya::pin::PinError },
    #[error("{what} {path}: {}", chain(source))]
    Adopt { what: &'static str, path: PathBuf, source: LinkError },
    #[error("{0} is not a cgroup link")]
    NotAHook(PathBuf),
    #[error("the hooks pinned in {pins} are attached to {recorded}, not to the session's cgroup {expected}")]
    OtherCgroup { pins: PathBuf, recorded: PathBuf, expected: PathBuf },
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

/// One session's attached hooks: the daemon's descriptors of their pinned links and of the
/// counters map. Dropping it closes them; the pins keep the hooks attached.
pub struct Hooks {
    pins: PathBuf,
    links: Vec<(&'static str, FdLink)>,
    counters: PerCpuArray<MapData, u64>,
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
    /// Loads a copy of the hooks configured for one session, attaches every one of them to
    /// `cgroup` and pins them in `pins`. On error what was attached and pinned stays pinned:
    /// the build's rollback removes `pins` (`pins::remove`).
    pub fn attach(cgroup: &Path, config: &HookConfig, pins: &Path) -> Result<Hooks, HookError> {
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
        pins::prepare(pins)?;
        pins::record_cgroup(pins, cgroup)?;
        // Taken out of `ebpf` (its descriptor stays open, which the programs' load below needs).
        let counters = ebpf.take_map("counters").ok_or(HookError::Missing("counters map"))?;
        counters.pin(pins::counters_pin(pins)).map_err(|source| HookError::PinObject { what: "the counters map", source })?;
        let counters = PerCpuArray::try_from(counters).map_err(|source| HookError::Map { what: "counters map", source })?;
        let mut hooks = Hooks { pins: pins.to_path_buf(), links: Vec::new(), counters };
        for hook in HOOKS {
            let program: &mut CgroupSockAddr =
                ebpf.program_mut(hook).ok_or(HookError::Missing(hook))?.try_into().map_err(|source| HookError::Program { hook, source })?;
            program.load().map_err(|source| HookError::Program { hook, source })?;
            // A bpf_link (aya makes one on Linux >= 5.7, and programs mode needs 5.8) is always
            // attached as with BPF_F_ALLOW_MULTI: other programs on the cgroup (systemd's)
            // stay and run too. The kernel takes no flags with it (EINVAL), hence `Single`,
            // which is aya's name for no flags.
            let id = program.attach(&dir, CgroupAttachMode::Single).map_err(|source| HookError::Program { hook, source })?;
            let link = program.take_link(id).map_err(|source| HookError::Program { hook, source })?;
            let link = FdLink::try_from(link).map_err(|source| HookError::Adopt { what: "take the link of", path: pins::link_pin(pins, hook), source })?;
            let pinned = link.pin(pins::link_pin(pins, hook)).map_err(|source| HookError::PinObject { what: hook, source })?;
            hooks.links.push((hook, pinned.into()));
        }
        Ok(hooks)
    }

    /// The hooks a previous daemon attached to `cgroup` and pinned in `pins`: every link and
    /// the counters map must be there, the links cgroup links, and the pins must say they are
    /// `cgroup`'s (pins from before that record are taken as the session record says).
    pub fn adopt(cgroup: &Path, pins: &Path) -> Result<Hooks, HookError> {
        if !cgroup.is_dir() {
            return Err(HookError::Cgroup { path: cgroup.to_path_buf(), source: std::io::ErrorKind::NotFound.into() });
        }
        if let Some(recorded) = pins::recorded_cgroup(pins)?
            && recorded != cgroup
        {
            return Err(HookError::OtherCgroup { pins: pins.to_path_buf(), recorded, expected: cgroup.to_path_buf() });
        }
        let mut links = Vec::new();
        for hook in HOOKS {
            let path = pins::link_pin(pins, hook);
            let link: FdLink =
                PinnedLink::from_pin(&path).map_err(|source| HookError::Adopt { what: "open the pinned link", path: path.clone(), source })?.into();
            if !matches!(link.info().and_then(|i| i.link_type()), Ok(LinkType::Cgroup)) {
                return Err(HookError::NotAHook(path));
            }
            links.push((hook, link));
        }
        let path = pins::counters_pin(pins);
        let counters = MapData::from_pin(&path)
            .and_then(Map::from_map_data)
            .and_then(PerCpuArray::try_from)
            .map_err(|source| HookError::Map { what: "the pinned counters map", source })?;
        Ok(Hooks { pins: pins.to_path_buf(), links, counters })
    }

    /// The attached hooks' names.
    pub fn attached(&self) -> Vec<String> {
        self.links.iter().map(|(h, _)| h.to_string()).collect()
    }

    /// How many socket addresses the hooks rewrote (every CPU's counters added up).
    pub fn rewritten(&self) -> u64 {
        let counters = &self.counters;
        (0..counters.len()).filter_map(|i| counters.get(&i, 0).ok()).map(|per_cpu| per_cpu.iter().sum::<u64>()).sum()
    }

    /// Detaches every hook: unpins them (`pins::remove`, going on past errors), then closes
    /// the daemon's descriptors, the last references; the programs are unloaded with them.
    pub fn detach(self) -> Vec<HookError> {
        let errors = pins::remove(&self.pins);
        drop(self);
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
    fn pins_that_name_another_cgroup_are_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let (cgroup, other, pins) = (dir.path().join("session-3.scope"), dir.path().join("session-4.scope"), dir.path().join("pins"));
        for d in [&cgroup, &other, &pins] {
            std::fs::create_dir(d).unwrap();
        }
        pins::record_cgroup(&pins, &other).unwrap();
        let e = Hooks::adopt(&cgroup, &pins).unwrap_err();
        assert!(matches!(&e, HookError::OtherCgroup { recorded, .. } if recorded == &other), "{e}");
        assert!(e.to_string().contains("session-4.scope") && e.to_string().contains("session-3.scope"), "{e}");
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
