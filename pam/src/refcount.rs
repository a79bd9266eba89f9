//! Per-sid holders: `<refdir>/<sid>` lists the open PAM sessions using that sessiond session,
//! one line `PID START_TIME` per open (the process that opened it: sshd's per-connection
//! process), updated under an exclusive flock. The last holder to close stops it.
//!
//! A holder whose process is gone (killed before close_session could run) no longer counts:
//! the daemon names holders the same way, and stops a session once all of its holders have
//! exited (its reaper), so the two agree on who holds a session.
//!
//! The file is removed when its count reaches zero. Removing a locked file races with a
//! process that opened the old inode and waits for its lock, so `lock` re-checks after
//! getting the lock that the path still names the inode it locked, and retries otherwise.
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sessiond_client::holder::Holder;

pub struct Held {
    file: Flock<File>,
    path: PathBuf,
}

fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent() {
        // /run/sessiond is also the daemon's socket dir: keep it traversable.
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }?;
    let md = std::fs::symlink_metadata(dir)?;
    if !md.is_dir() {
        return Err(std::io::Error::other(format!("{} is not a directory", dir.display())));
    }
    if md.permissions().mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!("{} is group- or world-writable; refusing to use it", dir.display())));
    }
    Ok(())
}

/// Locks the count for `sid`, waiting at most `timeout` for another holder to let go.
pub fn lock(dir: &Path, sid: u32, timeout: Duration) -> std::io::Result<Held> {
    ensure_dir(dir)?;
    let path = dir.join(sid.to_string());
    let deadline = Instant::now() + timeout;
    loop {
        let mut file = OpenOptions::new().read(true).write(true).create(true).mode(0o600).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&path)?;
        let file = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => break locked,
                Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => file = f,
                Err((_, e)) => return Err(e.into()),
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("timed out waiting for the lock on {}", path.display())));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mine = file.metadata()?;
        match std::fs::symlink_metadata(&path) {
            Ok(now) if now.ino() == mine.ino() && now.dev() == mine.dev() => return Ok(Held { file, path }),
            // Removed (or replaced) by the holder we waited for: lock the new one.
            _ if Instant::now() < deadline => continue,
            _ => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{} keeps changing", path.display()))),
        }
    }
}

impl Held {
    /// The holders whose processes still run (one entry per open).
    pub fn holders(&mut self) -> std::io::Result<Vec<Holder>> {
        let mut s = String::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_string(&mut s)?;
        let mut live = Vec::new();
        for line in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let h = line
                .split_once(' ')
                .and_then(|(pid, start)| Some(Holder { pid: pid.parse().ok()?, start_time: start.trim().parse().ok()? }))
                .ok_or_else(|| std::io::Error::other(format!("{}: not a holder line (PID START_TIME): {line:?}", self.path.display())))?;
            if h.is_alive() {
                live.push(h);
            }
        }
        Ok(live)
    }

    /// How many live holders there are.
    pub fn count(&mut self) -> std::io::Result<u32> {
        Ok(self.holders()?.len() as u32)
    }

    /// Adds one hold by `h`.
    pub fn add(&mut self, h: Holder) -> std::io::Result<()> {
        let mut all = self.holders()?;
        all.push(h);
        self.store(&all)
    }

    /// Drops one hold by `h`, or, if `h` holds none (close_session ran in another process than
    /// open_session), one of the others: each close ends one open.
    pub fn remove(&mut self, h: Holder) -> std::io::Result<()> {
        let mut all = self.holders()?;
        if let Some(i) = all.iter().position(|x| *x == h).or((!all.is_empty()).then_some(0)) {
            all.remove(i);
        }
        self.store(&all)
    }

    /// Stores `holders`; none removes the file (the lock is released on drop).
    fn store(&mut self, holders: &[Holder]) -> std::io::Result<()> {
        self.file.set_len(0)?;
        if holders.is_empty() {
            return self.clear();
        }
        let text: String = holders.iter().map(|h| format!("{} {}\n", h.pid, h.start_time)).collect();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }

    /// Forgets every holder: removes the file.
    pub fn clear(&mut self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_and_down_and_removes_at_zero() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pam");
        let me = Holder::me().unwrap();
        let mut h = lock(&dir, 7, Duration::from_secs(1)).unwrap();
        assert_eq!(h.count().unwrap(), 0);
        h.add(me).unwrap();
        drop(h);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_to_string(dir.join("7")).unwrap(), format!("{} {}\n", me.pid, me.start_time));
        let mut h = lock(&dir, 7, Duration::from_secs(1)).unwrap();
        assert_eq!(h.count().unwrap(), 1);
        h.add(me).unwrap();
        assert_eq!(h.count().unwrap(), 2, "one entry per open, even from one process");
        h.remove(me).unwrap();
        assert_eq!(h.count().unwrap(), 1);
        h.remove(me).unwrap();
        drop(h);
        assert!(!dir.join("7").exists());
    }

    #[test]
    fn a_holder_whose_process_is_gone_does_not_count() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pam");
        let mut child = std::process::Command::new("sleep").arg("10").spawn().unwrap();
        let dead = Holder::of(child.id()).unwrap();
        let me = Holder::me().unwrap();
        let mut h = lock(&dir, 2, Duration::from_secs(1)).unwrap();
        h.add(dead).unwrap();
        h.add(me).unwrap();
        assert_eq!(h.count().unwrap(), 2);
        child.kill().unwrap();
        child.wait().unwrap();
        // killed before its close_session: only the live one is left
        assert_eq!(h.holders().unwrap(), vec![me]);
        // a close from a process that holds nothing still ends one open
        h.remove(Holder { pid: me.pid, start_time: me.start_time + 1 }).unwrap();
        assert_eq!(h.count().unwrap(), 0);
        assert!(!dir.join("2").exists());
        std::fs::write(dir.join("3"), "12\n").unwrap();
        let e = lock(&dir, 3, Duration::from_secs(1)).unwrap().count().unwrap_err().to_string();
        assert!(e.contains("not a holder line"), "{e}");
    }

    #[test]
    fn lock_wait_is_bounded() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pam");
        let _held = lock(&dir, 3, Duration::from_secs(1)).unwrap();
        // flock locks belong to the open file description: a second open contends.
        let start = Instant::now();
        let e = lock(&dir, 3, Duration::from_millis(200)).err().expect("second lock must time out");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn concurrent_holders_never_lose_a_count() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pam");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let me = Holder::me().unwrap();
                    for _ in 0..50 {
                        lock(&dir, 1, Duration::from_secs(10)).unwrap().add(me).unwrap();
                        let mut h = lock(&dir, 1, Duration::from_secs(10)).unwrap();
                        assert!(h.count().unwrap() >= 1);
                        h.remove(me).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(!dir.join("1").exists(), "every increment was matched, so the file is gone");
    }

    #[test]
    fn refuses_a_world_writable_dir() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pam");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(lock(&dir, 1, Duration::from_secs(1)).is_err());
    }
}
