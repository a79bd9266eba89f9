//! Named network namespaces, compatible with `ip netns` (a bind mount under /run/netns),
//! and the one place that calls `setns`: `run_in_netns`, on a throwaway thread.
//!
//! Why a throwaway thread: setns changes only the calling thread, and a socket stays in the
//! netns it was created in. Doing it on a fresh thread that then exits means no tokio worker
//! or pooled thread is ever left in a session's namespace, and the daemon never forks.
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

pub const NETNS_DIR: &str = "/run/netns";
const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("netns {name}: {op}: {source}")]
    Sys { name: String, op: &'static str, source: nix::Error },
    #[error("netns {name}: {op}: {source}")]
    Io { name: String, op: &'static str, source: std::io::Error },
    #[error("netns {0} does not exist")]
    Missing(String),
    #[error("the namespace helper thread panicked")]
    ThreadPanicked,
}

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

pub fn netns_exists(name: &str) -> bool {
    is_ns_mount(&netns_path(name))
}

/// Names under /run/netns (whatever made them).
pub fn list_netns() -> Vec<String> {
    std::fs::read_dir(netns_dir()).into_iter().flatten().flatten().filter_map(|e| e.file_name().into_string().ok()).collect()
}

pub fn open_netns(name: &str) -> Result<File, NsError> {
    let p = netns_path(name);
    if !is_ns_mount(&p) {
        return Err(NsError::Missing(name.to_string()));
    }
    File::open(&p).map_err(|source| NsError::Io { name: name.into(), op: "open", source })
}

/// Runs `f` on a new thread that has entered `ns`, and waits for it.
/// Blocking: from async code use `run_in_netns_async`.
pub fn run_in_netns<T, F>(ns: &File, f: F) -> Result<T, NsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let fd = ns.try_clone().map_err(|source| NsError::Io { name: "(fd)".into(), op: "dup", source })?;
    std::thread::spawn(move || {
        setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NsError::Sys { name: "(fd)".into(), op: "setns", source })?;
        Ok(f())
    })
    .join()
    .map_err(|_| NsError::ThreadPanicked)?
}

/// As `run_in_netns`, but awaits the thread without blocking the async worker.
pub async fn run_in_netns_async<T, F>(ns: &File, f: F) -> Result<T, NsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let fd = ns.try_clone().map_err(|source| NsError::Io { name: "(fd)".into(), op: "dup", source })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map(|_| f()).map_err(|source| NsError::Sys { name: "(fd)".into(), op: "setns", source });
        let _ = tx.send(r);
    });
    rx.await.map_err(|_| NsError::ThreadPanicked)?
}

/// Makes /run/netns a shared mount point, as iproute2 does, so namespace mounts made here
/// propagate to mount namespaces created later (e.g. a login's private one).
fn ensure_netns_dir() -> Result<(), NsError> {
    // Once per process: a mount call takes the mount namespace's lock, which every start
    // (bind mount) and stop (unmount) also needs.
    static SHARED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SHARED.load(std::sync::atomic::Ordering::Relaxed) && netns_dir().is_dir() {
        return Ok(());
    }
    make_netns_dir_shared()?;
    SHARED.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

fn make_netns_dir_shared() -> Result<(), NsError> {
    let dir = netns_dir();
    let err = |op, source| NsError::Sys { name: NETNS_DIR.into(), op, source };
    std::fs::create_dir_all(&dir).map_err(|source| NsError::Io { name: NETNS_DIR.into(), op: "mkdir", source })?;
    match mount(None::<&str>, &dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>) {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(Some(&dir), &dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(|e| err("bind /run/netns", e))?;
            mount(None::<&str>, &dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>).map_err(|e| err("make /run/netns shared", e))
        }
        Err(e) => Err(err("make /run/netns shared", e)),
    }
}

/// Creates the named netns, or does nothing if it already exists (idempotent), and sets the
/// given sysctls (`/proc/sys` keys with dots) in a new one. One throwaway thread does it all
/// (unshare, bind mount, sysctls) while the caller awaits without blocking its worker.
pub async fn create_netns(name: &str, sysctls: &[(&str, &str)]) -> Result<(), NsError> {
    let path = netns_path(name);
    if is_ns_mount(&path) {
        return Ok(());
    }
    ensure_netns_dir()?;
    // A plain file left by a crash between create and mount is replaced.
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(|source| NsError::Io {
        name: name.into(),
        op: "create mount point",
        source,
    })?;
    let target = path.clone();
    let owned = name.to_string();
    let sysctls: Vec<(PathBuf, String)> = sysctls.iter().map(|(k, v)| (sysctl_path(k), v.to_string())).collect();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let made = (|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NsError::Sys { name: owned.clone(), op: "unshare", source })?;
            mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|source| NsError::Sys {
                name: owned.clone(),
                op: "bind mount",
                source,
            })?;
            // /proc/sys/net shows the namespace of the thread that opens it: this one.
            for (key, value) in &sysctls {
                std::fs::write(key, value).map_err(|source| NsError::Io { name: owned.clone(), op: "set sysctl", source })?;
            }
            Ok(())
        })();
        let _ = tx.send(made);
    });
    let made = rx.await.map_err(|_| NsError::ThreadPanicked)?;
    if made.is_err() {
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
    }
    made
}

/// The /proc/sys file of a sysctl key given with dots (`net.ipv4.conf.all.forwarding`).
pub fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Removes the named netns mount and its file; absent is fine (idempotent).
/// The namespace itself dies once no process or fd holds it.
pub fn delete_netns(name: &str) -> Result<(), NsError> {
    let path = netns_path(name);
    if is_ns_mount(&path) {
        umount2(&path, MntFlags::MNT_DETACH).map_err(|source| NsError::Sys { name: name.into(), op: "unmount", source })?;
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NsError::Io { name: name.into(), op: "remove", source: e }),
        _ => Ok(()),
    }
}
