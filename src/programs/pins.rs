//! Where a programs-mode session's hooks are pinned in bpffs (`/sys/fs/bpf/sessiond/<sid>/`):
//! a bpf_link lives while a file descriptor or a pin holds it, so pinned hooks outlive the
//! daemon that attached them (a restart or an upgrade does not cut the session's programs off)
//! and the next daemon finds them there again.
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use aya::programs::links::PinnedLink;

use super::hooks::{HOOKS, HookError};
use crate::sid::Sid;

/// Where bpffs is mounted by convention (systemd mounts it there).
pub const BPFFS: &str = "/sys/fs/bpf";

/// BPF_FS_MAGIC (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The session's pin directory.
pub fn session_dir(sid: Sid) -> PathBuf {
    Path::new(BPFFS).join("sessiond").join(sid.get().to_string())
}

/// The pin of one hook's link.
pub fn link_pin(dir: &Path, hook: &str) -> PathBuf {
    dir.join(hook)
}

/// A symlink to the cgroup the hooks are attached to: the pins say where they hang, and a next
/// daemon adopts them only for that cgroup. (bpffs takes symlinks; aya's link info has no
/// cgroup id to ask the kernel with.)
pub fn cgroup_link(dir: &Path) -> PathBuf {
    dir.join("cgroup")
}

/// Records in `dir` that its hooks are attached to `cgroup`.
pub fn record_cgroup(dir: &Path, cgroup: &Path) -> Result<(), HookError> {
    let link = cgroup_link(dir);
    std::os::unix::fs::symlink(cgroup, &link).map_err(io("record the cgroup in", &link))
}

/// The cgroup the hooks pinned in `dir` are attached to; None for pins of a daemon from
/// before this record.
pub fn recorded_cgroup(dir: &Path) -> Result<Option<PathBuf>, HookError> {
    let link = cgroup_link(dir);
    match std::fs::read_link(&link) {
        Ok(target) => Ok(Some(target)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &link)(e)),
    }
}

/// The pin of the counters map (which `status` reads).
pub fn counters_pin(dir: &Path) -> PathBuf {
    dir.join("counters")
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HookError {
    let path = path.to_path_buf();
    move |source| HookError::Pin { op, path, source }
}

/// Mounts bpffs at /sys/fs/bpf unless one is there already (a host's systemd mounts it; a
/// fresh sysfs, as in a private mount namespace, has none).
pub fn ensure_bpffs() -> Result<(), HookError> {
    let at = Path::new(BPFFS);
    let mounted = nix::sys::statfs::statfs(at).map_err(|e| io("look at", at)(e.into()))?.filesystem_type().0 as i64 == BPF_FS_MAGIC;
    if !mounted {
        nix::mount::mount(Some("bpf"), at, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>).map_err(|e| io("mount bpffs on", at)(e.into()))?;
    }
    Ok(())
}

/// Makes the session's pin directory, empty: pins of an earlier session with this sid (whose
/// record was lost; the sid is not running) are removed first.
pub fn prepare(dir: &Path) -> Result<(), HookError> {
    ensure_bpffs()?;
    if let Some(e) = remove(dir).into_iter().next() {
        return Err(e);
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))
}

/// Removes the session's pins in reverse order and then its directory, going on past errors;
/// what is absent is fine. A link whose pin goes and that no one else holds is detached; the
/// pin is removed while a descriptor of ours holds the link, so that closing that descriptor
/// detaches it at once (a pin's last reference is dropped later, from a kernel work queue).
pub fn remove(dir: &Path) -> Vec<HookError> {
    let mut errors = Vec::new();
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    for hook in HOOKS.iter().rev() {
        let pin = link_pin(dir, hook);
        let removed = match PinnedLink::from_pin(&pin) {
            Ok(link) => link.unpin().map(drop),
            Err(_) => std::fs::remove_file(&pin),
        };
        if let Err(e) = gone(removed) {
            errors.push(io("unpin", &pin)(e));
        }
    }
    for file in [counters_pin(dir), cgroup_link(dir)] {
        if let Err(e) = gone(std::fs::remove_file(&file)) {
            errors.push(io("unpin", &file)(e));
        }
    }
    if let Err(e) = gone(std::fs::remove_dir(dir)) {
        errors.push(io("remove", dir)(e));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_pins_under_its_sid() {
        assert_eq!(session_dir(Sid::new(7).unwrap()), Path::new("/sys/fs/bpf/sessiond/7"));
    }

    #[test]
    fn remove_takes_every_pin_and_the_directory_and_is_idempotent() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("3");
        std::fs::create_dir(&dir).unwrap();
        // Not bpffs: each pin is a plain file here, which `remove` deletes as it is.
        for hook in HOOKS {
            std::fs::write(link_pin(&dir, hook), b"").unwrap();
        }
        std::fs::write(counters_pin(&dir), b"").unwrap();
        record_cgroup(&dir, Path::new("/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope")).unwrap();
        assert_eq!(recorded_cgroup(&dir).unwrap().unwrap(), Path::new("/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope"));
        let errors = remove(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!dir.exists());
        assert!(remove(&dir).is_empty(), "a second remove finds nothing and is fine");
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(recorded_cgroup(&dir).unwrap(), None, "pins from before the record");
    }

    #[test]
    fn remove_goes_on_past_an_error_and_names_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("4");
        std::fs::create_dir_all(link_pin(&dir, "connect4")).unwrap(); // a directory: cannot be unlinked
        std::fs::write(link_pin(&dir, "bind4"), b"").unwrap();
        std::fs::write(counters_pin(&dir), b"").unwrap();
        let errors: Vec<String> = remove(&dir).iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("unpin ") && errors[0].contains("connect4"), "{errors:?}");
        assert!(errors[1].starts_with("remove ") && errors[1].ends_with(&format!("{}: Directory not empty (os error 39)", dir.display())), "{errors:?}");
        assert!(!link_pin(&dir, "bind4").exists() && !counters_pin(&dir).exists(), "the other pins still went");
    }
}
