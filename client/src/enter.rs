//! Entering a session from a single-threaded process (the `exec` command, the PAM module):
//! its netns, plus a private mount namespace where /etc/netns/NAME/* cover /etc/*, as
//! `ip netns exec` does. Must not be used from the multithreaded daemon.
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use crate::ns::{enter_netns, is_ns_mount, netns_path};

/// Per-session files (resolv.conf, hosts) that cover /etc's inside the session.
pub const ETC_NETNS: &str = "/etc/netns";

pub fn netns_etc_dir(netns: &str) -> PathBuf {
    Path::new(ETC_NETNS).join(netns)
}

#[derive(Debug, thiserror::Error)]
#[error("entering netns {netns}: {op}: {source}")]
pub struct EnterError {
    pub netns: String,
    pub op: String,
    pub source: nix::Error,
}

pub fn enter_session(netns: &str) -> Result<(), EnterError> {
    let err = |op: &str| {
        let op = op.to_string();
        move |source| EnterError { netns: netns.into(), op, source }
    };
    let path = netns_path(netns);
    if !is_ns_mount(&path) {
        return Err(err("open")(nix::Error::ENOENT));
    }
    let f = File::open(&path).map_err(|e| err("open")(e.raw_os_error().map_or(nix::Error::ENOENT, nix::Error::from_raw)))?;
    enter_netns(&f).map_err(err("setns"))?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(err("unshare mount namespace"))?;
    // Keep host mounts visible but stop ours leaking back.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>).map_err(err("make / a slave mount"))?;
    let dir = netns_etc_dir(netns);
    for ent in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let target = Path::new("/etc").join(ent.file_name());
        if target.exists() {
            mount(Some(&ent.path()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(err(&format!("bind {}", target.display())))?;
        }
    }
    // /sys shows the netns that mounted it: remount it so `ip link`, etc. see the session's.
    if umount2("/sys", MntFlags::MNT_DETACH).is_ok() {
        let _ = mount(Some("sysfs"), "/sys", Some("sysfs"), MsFlags::empty(), None::<&str>);
    }
    Ok(())
}
