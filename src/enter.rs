//! Entering a session from a single-threaded process (the `exec` command, the PAM module):
//! its netns, plus a private mount namespace where /etc/netns/NAME/* cover /etc/*, as
//! `ip netns exec` does. Must not be used from the multithreaded daemon.
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::files::netns_etc_dir;

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
    let f = crate::ns::open_netns(netns).map_err(|_| EnterError { netns: netns.into(), op: "open".into(), source: nix::Error::ENOENT })?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(err("setns"))?;
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
