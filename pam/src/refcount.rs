//! Per-sid holders: `<refdir>/<sid>` lists the open PAM sessions using that sessiond session,
//! one line `PID START_TIME` per open (the process that opened it: sshd's per-connection
//! process), updated under an exclusive flock. The last holder to close stops it.
//!
//! A holder whose process is gone (killed before close_session could run) no longer counts:
//! the daemon names holders the same way, and stops a session once all of its holders have
//! exited (its reaper), so the two agree on who holds a session. A bare count (the format of
//! older modules, found after an upgrade with logins open) stands for that many holds whose
//! processes are unknown: they count until closed.
//!
//! The file is removed when its count reaches zero. Removing a locked file races with a
//! process that opened the old inode and waits for its lock, so `lock` re-checks after
//! getting the lock that the path still names the inode it locked, and retries otherwise.
//! A lock that never stored a count (a failed or abandoned acquire) removes the empty file it
//! made when it is dropped.
//!
//! The directory must be root's (the module's effective uid) and writable by it alone: whoever
//! can write there can forge or remove counts, and so stop other users' sessions or keep them.
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
    /// `clear` removed the file.
    removed: bool,
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
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me {
        return Err(std::io::Error::other(format!("{} is owned by uid {}, not by uid {me} (root); refusing to use it", dir.display(), md.uid())));
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
            Ok(now) if now.ino() == mine.ino() && now.dev() == mine.dev() => return Ok(Held { file, path, removed: false }),
            // Removed (or replaced) by the holder we waited for: lock the new one.
            _ if Instant::now() < deadline => continue,
            _ => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{} keeps changing", path.display()))),
        }
    }
}

/// What a holder file says.
#[derive(Default)]
struct Entries {
    /// Holds counted by an older module, which wrote a bare count: their processes are not
    /// known, so they count until closed.
    unknown: u32,
    /// The holders whose processes still run (one entry per open).
    live: Vec<Holder>,
}

impl Held {
    fn read(&mut self) -> std::io::Result<Entries> {
        let mut s = String::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_string(&mut s)?;
        let mut e = Entries::default();
        for line in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Ok(n) = line.parse::<u32>() {
                e.unknown += n;
                continue;
            }
            let h = line
                .split_once(' ')
                .and_then(|(pid, start)| Some(Holder { pid: pid.parse().ok()?, start_time: start.trim().parse().ok()? }))
                .ok_or_else(|| std::io::Error::other(format!("{}: not a holder line (PID START_TIME): {line:?}", self.path.display())))?;
            if h.is_alive() {
                e.live.push(h);
            }
        }
        Ok(e)
    }

    /// The holders whose processes still run (one entry per open).
    pub fn holders(&mut self) -> std::io::Result<Vec<Holder>> {
        Ok(self.read()?.live)
    }

    /// How many holders there are (those of exited processes do not count).
    pub fn count(&mut self) -> std::io::Result<u32> {
        let e = self.read()?;
        Ok(e.unknown + e.live.len() as u32)
    }

    /// Adds one hold by `h`.
    pub fn add(&mut self, h: Holder) -> std::io::Result<()> {
        let mut e = self.read()?;
        e.live.push(h);
        self.store(&e)
    }

    /// Drops one hold by `h`, or, if `h` holds none (close_session ran in another process than
    /// open_session, or an older module counted it), one of the others: each close ends one
    /// open.
    pub fn remove(&mut self, h: Holder) -> std::io::Result<()> {
        let mut e = self.read()?;
        if let Some(i) = e.live.iter().position(|x| *x == h) {
            e.live.remove(i);
        } else if e.unknown > 0 {
            e.unknown -= 1;
        } else if !e.live.is_empty() {
            e.live.remove(0);
        }
        self.store(&e)
    }

    /// Stores `e`; no holder removes the file (the lock is released on drop).
    fn store(&mut self, e: &Entries) -> std::io::Result<()> {
        self.file.set_len(0)?;
        if e.unknown == 0 && e.live.is_empty() {
            return self.clear();
        }
        let unknown = (e.unknown > 0).then(|| format!("{}\n", e.unknown));
        let text: String = unknown.into_iter().chain(e.live.iter().map(|h| format!("{} {}\n", h.pid, h.start_time))).collect();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }

    /// Forgets every holder: removes the file.
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.removed = true;
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for Held {
    /// A count never stored leaves no empty file behind (removed under the lock, as `clear`
    /// does: a waiter re-checks the path and makes a new one).
    fn drop(&mut self) {
        if !self.removed && self.file.metadata().is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(&self.path);
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
        std::fs::write(dir.join("3"), "12 x\n").unwrap();
        let e = lock(&dir, 3, Duration::from_secs(1)).unwrap().count().unwrap_err().to_string();
        assert!(e.contains("not a holder line"), "{e}");
    }

    #[test]
    fn counts_written_by_an_older_module_still_count() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pam");
        let me = Holder::me().unwrap();
        lock(&dir, 4, Duration::from_secs(1)).unwrap().count().unwrap();
        std::fs::write(dir.join("4"), "2\n").unwrap(); // two logins from before an upgrade
        let mut h = lock(&dir, 4, Duration::from_secs(1)).unwrap();
        assert_eq!(h.count().unwrap(), 2);
        h.add(me).unwrap();
        assert_eq!(h.count().unwrap(), 3);
        assert_eq!(std::fs::read_to_string(dir.join("4")).unwrap(), format!("2\n{} {}\n", me.pid, me.start_time));
        // their closes (from other processes) end the old holds first
        let other = Holder { pid: me.pid, start_time: me.start_time + 1 };
        h.remove(other).unwrap();
        h.remove(other).unwrap();
        assert_eq!(h.holders().unwrap(), vec![me]);
        assert_eq!(h.count().unwrap(), 1);
        h.remove(me).unwrap();
        assert!(!dir.join("4").exists());
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
    fn a_lock_that_never_counted_leaves_no_file() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pam");
        let mut h = lock(&dir, 9, Duration::from_secs(1)).unwrap();
        assert_eq!(h.count().unwrap(), 0);
        assert!(dir.join("9").exists(), "made by the lock");
        drop(h);
        assert!(!dir.join("9").exists(), "an acquire that failed leaves no empty holder file");
        // a stored count stays
        let me = Holder::me().unwrap();
        lock(&dir, 9, Duration::from_secs(1)).unwrap().add(me).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("9")).unwrap(), format!("{} {}\n", me.pid, me.start_time));
        let mut h = lock(&dir, 9, Duration::from_secs(1)).unwrap();
        h.remove(me).unwrap();
        drop(h);
        assert!(!dir.join("9").exists());
    }

    #[test]
    fn refuses_a_dir_owned_by_someone_else() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pam");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        if nix::unistd::geteuid().is_root() {
            // a user who owns the refdir could forge the holder counts
            nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let e = lock(&dir, 1, Duration::from_secs(1)).err().expect("refused");
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
            assert!(!dir.join("1").exists());
        } else {
            // not root: root's own /etc (0755) stands in for a dir of someone else
            let e = lock(Path::new("/etc"), 1, Duration::from_secs(1)).err().expect("refused");
            assert!(e.to_string().contains("owned by uid 0"), "{e}");
        }
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
