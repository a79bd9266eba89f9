//! The session's cgroup v2 directory of sessiond's own (where the login is in no logind scope:
//! `scope.rs`): found under the unified hierarchy (hybrid or pure), made, and removed again.
//! The hooks are attached to it and the login joins it; it is never the root cgroup.
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::sid::Sid;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 (unified) hierarchy is mounted: programs mode attaches its hooks to one")]
    NoUnified,
    #[error("cannot tell this process's cgroup v2 from /proc/self/cgroup")]
    NoOwnCgroup,
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0} still holds processes that could not be moved out")]
    Busy(PathBuf),
    #[error("{0} is the root cgroup: programs mode attaches only to a session's own cgroup")]
    Root(PathBuf),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a pure system,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn unified_root() -> Result<PathBuf, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(io("read", Path::new("/proc/self/mountinfo")))?;
    unified_root_in(&text).ok_or(CgroupError::NoUnified)
}

/// mountinfo(5): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`.
fn unified_root_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        if tail.split(' ').next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape(head.split(' ').nth(4)?)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok()) {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out + rest
}

/// This process's cgroup in the v2 hierarchy (`0::/PATH` in /proc/self/cgroup).
pub fn own_cgroup() -> Result<String, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(io("read", Path::new("/proc/self/cgroup")))?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string).ok_or(CgroupError::NoOwnCgroup)
}

/// The session's cgroup: `sessiond-N` beside the daemon's own processes, in the daemon's
/// cgroup (a unit's must allow it: `Delegate=yes`).
pub fn session_dir(root: &Path, daemon_cgroup: &str, sid: Sid) -> PathBuf {
    root.join(daemon_cgroup.trim_start_matches('/')).join(sid.netns_name())
}

/// Makes `dir`; one that exists is fine (a retry).
pub fn create(dir: &Path) -> Result<(), CgroupError> {
    if dir.parent().is_none_or(|p| p.as_os_str().is_empty()) {
        return Err(CgroupError::Root(dir.to_path_buf()));
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        r => r.map_err(io("create", dir)),
    }
}

/// How often the processes left in a cgroup are moved out before giving up (each round
/// catches what forked during the last).
const MOVE_ROUNDS: usize = 10;

/// Moves what is left in `dir` to its parent (a process the session left running goes on,
/// as in namespace mode) and removes it. An absent cgroup is fine.
pub fn remove(dir: &Path) -> Result<(), CgroupError> {
    let parent = dir.parent().ok_or_else(|| CgroupError::Root(dir.to_path_buf()))?;
    for _ in 0..MOVE_ROUNDS {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(io("remove", dir)(e)),
        }
        let procs = dir.join("cgroup.procs");
        let pids = match std::fs::read_to_string(&procs) {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("read", &procs)(e)),
        };
        let into = parent.join("cgroup.procs");
        for pid in pids.split_whitespace() {
            // One write per pid (the kernel takes one at a time); a process that exited
            // meanwhile (ESRCH) is gone anyway.
            match std::fs::write(&into, pid) {
                Err(e) if e.raw_os_error() != Some(libc::ESRCH) => return Err(io("move a process out of", dir)(e)),
                _ => {}
            }
        }
    }
    Err(CgroupError::Busy(dir.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_hierarchy_is_found_in_hybrid_and_pure_layouts() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:24 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd\n";
        assert_eq!(unified_root_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let pure = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(unified_root_in(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let odd = "30 23 0:26 / /mnt/cg\\040two rw - cgroup2 none rw\n";
        assert_eq!(unified_root_in(odd), Some(PathBuf::from("/mnt/cg two")));
        let v1_only = "27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(unified_root_in(v1_only), None);
    }

    #[test]
    fn the_session_cgroup_sits_in_the_daemons_own() {
        let sid = Sid::new(7).unwrap();
        assert_eq!(
            session_dir(Path::new("/sys/fs/cgroup"), "/system.slice/sessiond.service", sid),
            PathBuf::from("/sys/fs/cgroup/system.slice/sessiond.service/sessiond-7")
        );
        assert_eq!(session_dir(Path::new("/sys/fs/cgroup/unified"), "/", sid), PathBuf::from("/sys/fs/cgroup/unified/sessiond-7"));
    }

    #[test]
    fn removing_an_absent_cgroup_is_fine_and_the_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(remove(&dir.path().join("sessiond-3")).is_ok());
        assert!(matches!(create(Path::new("/")), Err(CgroupError::Root(_))));
    }
}
