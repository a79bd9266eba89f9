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
    remount_sys().map_err(|(op, e)| err(&op)(e))
}

/// Where the session's sysfs is mounted while the mounts on /sys move onto it. Any directory
/// would do: the mount over it lasts a few syscalls, in this process's private mount namespace.
const SCRATCH: &str = "/tmp";

/// /sys shows the netns that mounted it: mount a sysfs for the session's so `ip link` etc. see
/// its links. The mounts on the host's /sys (cgroupfs on /sys/fs/cgroup, fuse, bpf, ...) are
/// moved onto the new one rather than detached with the old: cgroup tools, `systemd-run` and
/// anything reading /sys/fs/cgroup/<own cgroup> keep working inside the session.
fn remount_sys() -> Result<(), (String, nix::Error)> {
    let submounts = std::fs::read_to_string("/proc/self/mountinfo").map(|t| sys_submounts(&t)).unwrap_or_default();
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("sysfs"), SCRATCH, Some("sysfs"), flags, None::<&str>).map_err(|e| (format!("mount a sysfs on {SCRATCH}"), e))?;
    let mut moved = Ok(());
    for sub in &submounts {
        let Ok(rel) = sub.strip_prefix("/sys") else { continue };
        let r = mount(Some(sub), &Path::new(SCRATCH).join(rel), None::<&str>, MsFlags::MS_MOVE, None::<&str>);
        // Only cgroupfs is a must; a mount whose directory the new sysfs lacks stays behind.
        if let Err(e) = r
            && rel == Path::new("fs/cgroup")
        {
            moved = Err((format!("move {} onto the session's sysfs", sub.display()), e));
            break;
        }
    }
    let placed = moved.and_then(|()| {
        // The old /sys goes (a failure only leaves it under the new one).
        let _ = umount2("/sys", MntFlags::MNT_DETACH);
        mount(Some(SCRATCH), "/sys", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|e| ("move the session's sysfs onto /sys".to_string(), e))
    });
    if placed.is_err() {
        let _ = umount2(SCRATCH, MntFlags::MNT_DETACH);
    }
    placed
}

/// The mount points directly on the topmost /sys mount (their own submounts move with them),
/// from /proc/self/mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT ...", octal escapes in paths.
fn sys_submounts(mountinfo: &str) -> Vec<PathBuf> {
    let entries: Vec<(&str, &str, PathBuf)> = mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (id, parent, point) = (f.next()?, f.next()?, f.nth(2)?);
            Some((id, parent, PathBuf::from(unescape(point))))
        })
        .collect();
    let sys = Path::new("/sys");
    // Several mounts may be stacked on /sys: the topmost is no other /sys mount's parent.
    let Some(top) = entries.iter().filter(|(_, _, p)| p == sys).map(|(id, _, _)| *id).find(|id| !entries.iter().any(|(_, parent, p)| p == sys && parent == id))
    else {
        return Vec::new();
    };
    entries.into_iter().filter(|(_, parent, p)| *parent == top && p != sys).map(|(_, _, p)| p).collect()
}

/// mountinfo's `\040`-style escapes (space, tab, newline, backslash) undone.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_submounts_of_the_topmost_sys_are_found() {
        // The sandbox's layout: a sysfs stacked on the host's /sys (whose submounts were moved
        // onto it), cgroup v1 controllers under a tmpfs, a path with a space.
        let mi = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 22 0:6 / /sys/kernel/security rw - securityfs securityfs rw
90 22 0:50 / /sys rw,nosuid,nodev,noexec - sysfs sbx-sysfs rw
31 90 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
44 90 0:40 / /sys/fs/fuse/connections rw - fusectl fusectl rw
45 1 0:41 / /sys2 rw - tmpfs tmpfs rw
46 90 0:42 / /sys/kernel/odd\\040name rw - tmpfs tmpfs rw
";
        assert_eq!(sys_submounts(mi), vec![PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/sys/fs/fuse/connections"), PathBuf::from("/sys/kernel/odd name")]);
        assert!(sys_submounts("25 1 0:3 / /proc rw - proc proc rw\n").is_empty(), "no /sys: nothing to move");
        assert_eq!(unescape("a\\040b\\134c\\0"), "a b\\c\\0");
    }
}
