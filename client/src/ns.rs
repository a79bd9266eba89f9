//! Where named network namespaces live (`ip netns`: a bind mount under /run/netns), and the
//! one place anything calls `setns`: `enter_netns`. The daemon enters a namespace only through
//! `spawn_in_netns`, on a fresh thread, because setns changes only the calling thread and a
//! socket stays in the namespace it was made in: a thread that enters and then exits means no
//! tokio worker or pooled thread is ever left in a session's namespace, and nothing forks. The
//! one exception is the loopback bridge's `ns_socket`: the calling thread enters for a single
//! `socket()` call and goes straight back, with nothing else run in between.
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use nix::sched::{CloneFlags, setns};

pub const NETNS_DIR: &str = "/run/netns";
const NSFS_MAGIC: i64 = 0x6e73_6673;

pub fn netns_dir() -> PathBuf {
    PathBuf::from(NETNS_DIR)
}

pub fn netns_path(name: &str) -> PathBuf {
    netns_dir().join(name)
}

/// True when `path` is a live namespace bind mount (not just a leftover empty file).
pub fn is_ns_mount(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 == NSFS_MAGIC).unwrap_or(false)
}

/// Moves the calling thread into the network namespace `ns` (an open /run/netns/NAME or
/// /proc/PID/ns/net). In a single-threaded process (`sessiond exec`, the PAM module) that is
/// the whole process; in the daemon, use `spawn_in_netns`.
pub fn enter_netns(ns: impl AsFd) -> nix::Result<()> {
    setns(ns, CloneFlags::CLONE_NEWNET)
}

/// Runs `f` on a new thread that first enters `ns`; the thread ends with `f`. Its result is
/// `Err` (and `f` never runs) when entering fails; joining it fails if `f` panicked. The
/// caller's descriptor is duplicated, so it may be closed at once.
pub fn spawn_in_netns<T, F>(ns: &File, f: F) -> std::io::Result<JoinHandle<nix::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let fd = ns.try_clone()?;
    Ok(std::thread::spawn(move || {
        enter_netns(&fd)?;
        drop(fd);
        Ok(f())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused_and_f_never_runs() {
        let f = File::open("/proc/self/status").unwrap();
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = ran.clone();
        let out = spawn_in_netns(&f, move || r.store(true, std::sync::atomic::Ordering::SeqCst)).unwrap().join().unwrap();
        assert_eq!(out, Err(nix::Error::EINVAL));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn an_empty_file_is_not_a_namespace_mount() {
        let t = std::env::temp_dir().join(format!("sessiond-ns-test-{}", std::process::id()));
        std::fs::write(&t, b"").unwrap();
        assert!(!is_ns_mount(&t));
        std::fs::remove_file(&t).unwrap();
        assert_eq!(netns_path("sessiond-3"), Path::new("/run/netns/sessiond-3"));
    }
}
