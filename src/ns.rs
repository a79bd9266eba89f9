//! Named network namespaces, compatible with `ip netns` (a bind mount under /run/netns).
//! Entering one goes through the small crate's `ns::spawn_in_netns` (the one `setns`, on a
//! throwaway thread: no tokio worker or pooled thread is ever left in a session's namespace,
//! and the daemon never forks); the functions here wrap it for blocking and async callers.
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use sessiond_client::ns::spawn_in_netns;
pub use sessiond_client::ns::{NETNS_DIR, is_ns_mount, netns_dir, netns_path};

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

fn dup_failed(source: std::io::Error) -> NsError {
    NsError::Io { name: "(fd)".into(), op: "dup", source }
}

fn setns_failed(source: nix::Error) -> NsError {
    NsError::Sys { name: "(fd)".into(), op: "setns", source }
}

/// Runs `f` on a new thread that has entered `ns`, and waits for it.
/// Blocking: from async code use `run_in_netns_async`.
pub fn run_in_netns<T, F>(ns: &File, f: F) -> Result<T, NsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    spawn_in_netns(ns, f).map_err(dup_failed)?.join().map_err(|_| NsError::ThreadPanicked)?.map_err(setns_failed)
}

/// As `run_in_netns`, but awaits the thread without blocking the async worker.
pub async fn run_in_netns_async<T, F>(ns: &File, f: F) -> Result<T, NsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = spawn_in_netns(ns, move || {
        let _ = tx.send(f());
    })
    .map_err(dup_failed)?;
    match rx.await {
        Ok(v) => Ok(v),
        // Nothing sent: entering failed (`f` never ran) or `f` panicked. The thread has ended
        // or is ending; its result says which (joined off the worker all the same).
        Err(_) => match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(Err(e))) => Err(setns_failed(e)),
            _ => Err(NsError::ThreadPanicked),
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_that_is_not_a_namespace_is_a_setns_error() {
        let f = File::open("/proc/self/status").unwrap();
        let e = run_in_netns_async(&f, || ()).await.unwrap_err();
        assert!(matches!(e, NsError::Sys { op: "setns", source: nix::Error::EINVAL, .. }), "{e}");
        let e = run_in_netns(&f, || ()).unwrap_err();
        assert!(matches!(e, NsError::Sys { op: "setns", source: nix::Error::EINVAL, .. }), "{e}");
    }

    #[tokio::test]
    async fn results_and_panics_come_back_from_the_thread() {
        if !nix::unistd::geteuid().is_root() {
            return; // entering even our own namespace needs CAP_SYS_ADMIN
        }
        let own = File::open("/proc/self/ns/net").unwrap();
        assert_eq!(run_in_netns(&own, || 7).unwrap(), 7);
        assert_eq!(run_in_netns_async(&own, || 8).await.unwrap(), 8);
        assert!(matches!(run_in_netns_async(&own, || panic!("boom")).await, Err(NsError::ThreadPanicked)));
        assert!(matches!(run_in_netns(&own, || panic!("boom")), Err(NsError::ThreadPanicked)));
    }
}
