//! Per-sid holder counts: `<refdir>/<sid>` holds the number of open PAM sessions using that
//! sessiond session, updated under an exclusive flock. The last holder to close stops it.
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

pub struct Held {
    file: Flock<File>,
    path: PathBuf,
    /// `set(0)` removed the file.
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

impl Held {
    pub fn count(&mut self) -> std::io::Result<u32> {
        let mut s = String::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_string(&mut s)?;
        let s = s.trim();
        if s.is_empty() {
            return Ok(0);
        }
        s.parse().map_err(|_| std::io::Error::other(format!("{}: not a count: {s:?}", self.path.display())))
    }

    /// Stores `n`; zero removes the file (the lock is released on drop).
    pub fn set(&mut self, n: u32) -> std::io::Result<()> {
        if n == 0 {
            std::fs::remove_file(&self.path)?;
            self.removed = true;
            return Ok(());
        }
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(format!("{n}\n").as_bytes())?;
        self.file.sync_data()
    }
}

impl Drop for Held {
    /// A count never stored leaves no empty file behind (removed under the lock, as `set(0)`
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
        let mut h = lock(&dir, 7, Duration::from_secs(1)).unwrap();
        assert_eq!(h.count().unwrap(), 0);
        h.set(1).unwrap();
        drop(h);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let mut h = lock(&dir, 7, Duration::from_secs(1)).unwrap();
        assert_eq!(h.count().unwrap(), 1);
        h.set(2).unwrap();
        h.set(1).unwrap();
        assert_eq!(h.count().unwrap(), 1);
        h.set(0).unwrap();
        drop(h);
        assert!(!dir.join("7").exists());
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
                    for _ in 0..50 {
                        let mut h = lock(&dir, 1, Duration::from_secs(10)).unwrap();
                        let n = h.count().unwrap();
                        h.set(n + 1).unwrap();
                        drop(h);
                        let mut h = lock(&dir, 1, Duration::from_secs(10)).unwrap();
                        let n = h.count().unwrap();
                        assert!(n >= 1);
                        h.set(n - 1).unwrap();
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
        lock(&dir, 9, Duration::from_secs(1)).unwrap().set(1).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("9")).unwrap(), "1\n");
        let mut h = lock(&dir, 9, Duration::from_secs(1)).unwrap();
        h.set(0).unwrap();
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
