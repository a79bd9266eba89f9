//! Watching the processes that hold sessions (logins, through the PAM module). A holder is the
//! process that sent a holding `start` (the control connection's peer); the daemon keeps a
//! pidfd of it, which becomes readable when the process exits, however it ends (kill -9, OOM,
//! a crash): exact, with no polling of /proc. What is done about an exit is the manager's.
use std::os::fd::{AsFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;

pub use sessiond_client::holder::Holder;

#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    #[error("cannot identify the requesting process: {0}")]
    Peer(std::io::Error),
    #[error("cannot watch process {pid}: {source}")]
    Pidfd { pid: u32, source: std::io::Error },
    #[error("process {0} exited before it could be watched")]
    Exited(u32),
}

/// A holder and a pidfd that names it.
#[derive(Debug)]
pub struct Watched {
    pub holder: Holder,
    pidfd: OwnedFd,
}

/// The peer of a control connection, as a holder. Its pidfd comes from the socket itself
/// (SO_PEERPIDFD, Linux 6.5) where it can, so it names the very process that connected; on
/// older kernels from pidfd_open of SO_PEERCRED's pid, which is exact unless that process
/// exited and its pid was reused in the moment between its request and this call.
pub fn peer(stream: &UnixStream) -> Result<Watched, HolderError> {
    let cred = stream.peer_cred().map_err(HolderError::Peer)?;
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0).ok_or_else(|| HolderError::Peer(std::io::Error::other("no peer pid")))?;
    let pidfd = match nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerPidfd) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOPROTOOPT | nix::errno::Errno::EINVAL) => pidfd_open(pid)?,
        Err(e) => return Err(HolderError::Pidfd { pid, source: e.into() }),
    };
    named(pid, pidfd)?.ok_or(HolderError::Exited(pid))
}

/// A holder recorded by an earlier daemon: its pidfd if that process still runs, None if it
/// has exited (also when its pid now names another process).
pub fn reopen(h: Holder) -> Result<Option<Watched>, HolderError> {
    let pidfd = match pidfd_open(h.pid) {
        Ok(fd) => fd,
        Err(HolderError::Pidfd { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(named(h.pid, pidfd)?.filter(|w| w.holder == h))
}

fn pidfd_open(pid: u32) -> Result<OwnedFd, HolderError> {
    let raw = rustix::process::Pid::from_raw(pid as i32).ok_or(HolderError::Pidfd { pid, source: std::io::Error::other("pid 0") })?;
    rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).map_err(|e| HolderError::Pidfd { pid, source: e.into() })
}

/// `pidfd` with the start time of `pid`, read while the pidfd's process still runs: a pid
/// is not reused before its process has exited, so the two then name the same process.
/// None if it has exited.
fn named(pid: u32, pidfd: OwnedFd) -> Result<Option<Watched>, HolderError> {
    let holder = match Holder::of(pid) {
        Ok(h) => h,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(HolderError::Pidfd { pid, source }),
    };
    if has_exited(&pidfd).map_err(|source| HolderError::Pidfd { pid, source })? {
        return Ok(None);
    }
    Ok(Some(Watched { holder, pidfd }))
}

/// A pidfd polls readable once its process has exited.
fn has_exited(pidfd: &impl AsFd) -> std::io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 }))?;
    Ok(fds[0].revents().contains(PollFlags::IN))
}

impl Watched {
    /// Resolves when the process has exited.
    pub async fn exited(self) -> std::io::Result<Holder> {
        // Deprecated for types whose `as_raw_fd` could lie; an OwnedFd's cannot, and the
        // replacement (`register`) is `unsafe`, which src/ forbids.
        #[allow(deprecated)]
        let fd = AsyncFd::new(self.pidfd)?;
        let _exited = fd.readable().await?;
        Ok(self.holder)
    }

    /// Watches the process from a task of its own, which calls `on_exit` when it exits.
    pub fn watch(self, on_exit: impl FnOnce(Holder) + Send + 'static) -> Watch {
        let holder = self.holder;
        let task = tokio::spawn(async move {
            match self.exited().await {
                Ok(h) => on_exit(h),
                // Unwatchable: the session is then never reaped for it (the safe side).
                Err(e) => tracing::warn!(pid = holder.pid, "cannot wait for a holder to exit: {e}"),
            }
        });
        Watch { holder, task: task.abort_handle() }
    }
}

/// A holder being watched; dropping it (its session went) ends the watch.
#[derive(Debug)]
pub struct Watch {
    pub holder: Holder,
    task: tokio::task::AbortHandle,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a control connection's peer has closed its end of it (it cannot read a reply any
/// more): the socket polls HUP. A peer that only shut down its writing half still waits for
/// the reply, and that is not a hang-up (it polls RDHUP, not HUP).
pub fn hung_up(stream: &impl AsFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(stream, PollFlags::OUT)];
    poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })).is_ok() && fds[0].revents().contains(PollFlags::HUP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_is_watched_until_it_exits() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        // a separate process connects and stays until killed
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(60)", path.to_str().unwrap()])
            .spawn()
            .unwrap();
        let (stream, _) = l.accept().await.unwrap();
        let w = peer(&stream).unwrap();
        assert_eq!(w.holder.pid, child.id());
        assert!(w.holder.is_alive());
        assert!(!hung_up(&stream));
        let again = reopen(w.holder).unwrap().expect("still running");
        assert_eq!(again.holder, w.holder);
        assert!(reopen(Holder { start_time: w.holder.start_time + 1, ..w.holder }).unwrap().is_none(), "same pid, another process");
        let exited = tokio::spawn(w.exited());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!exited.is_finished(), "reported only at exit");
        child.kill().unwrap();
        let h = tokio::time::timeout(std::time::Duration::from_secs(5), exited).await.expect("exit seen").unwrap().unwrap();
        assert_eq!(h.pid, child.id());
        // (a zombie, not yet reaped by its parent, has exited)
        assert!(reopen(h).unwrap().is_none());
        assert!(hung_up(&stream), "its end of the socket went with it");
        child.wait().unwrap();
        assert!(reopen(h).unwrap().is_none());
    }
}
