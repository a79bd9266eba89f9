//! What the daemon knows about each session, persisted atomically (write, fsync, rename)
//! so that a restarted daemon can re-adopt live sessions and clean up half-made ones.
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sid::Sid;
/// The record the protocol carries is the one persisted (the types live with the protocol).
pub use sessiond_client::record::{DhcpState, HeldLease, Holding, LeaseInfo, SessionRecord, SessionState};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state dir {path}: {op}: {source}")]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("state file {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// The on-disk store: `<dir>/sessions/<sid>.json`, plus named JSON blobs like `pool.json`.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { path, op, source }
}

/// Who may read a file written by `write_atomic*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    /// The daemon's own records (owners, addresses, MACs, leases): 0600, like their dir.
    Root,
    /// Files users read inside their session (/etc/netns resolv.conf and hosts): 0644.
    Everyone,
}

impl Readers {
    fn mode(self) -> u32 {
        match self {
            Readers::Root => 0o600,
            Readers::Everyone => 0o644,
        }
    }
}

/// Atomic replace: a reader sees the old file or the new one, never a torn one; durable;
/// readable by root only.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    write_atomic_with(path, bytes, true, Readers::Root)
}

/// Atomic replace without fsync, for files that are derived and rewritten on restart.
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8], readers: Readers) -> Result<(), StateError> {
    write_atomic_with(path, bytes, false, readers)
}

fn write_atomic_with(path: &Path, bytes: &[u8], durable: bool, readers: Readers) -> Result<(), StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    // Unique per call: concurrent writers of the same file must not share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| {
        // A temp file of a dead daemon with our pid would keep its mode: start afresh.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(readers.mode()).open(&tmp).map_err(io(&tmp, "create"))?;
        f.write_all(bytes).map_err(io(&tmp, "write"))?;
        if durable {
            f.sync_all().map_err(io(&tmp, "fsync"))?;
        }
        std::fs::rename(&tmp, path).map_err(io(path, "rename"))?;
        if durable {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir, "fsync dir"))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The state dir and its subdirectories: root's alone. A dir made by an older daemon (0755
/// under umask 022) is tightened here, on every daemon start.
const DIR_MODE: u32 = 0o700;
const SUBDIRS: [&str; 4] = ["sessions", "leases", "addresses", "reaping"];

fn private_dir(d: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    // Parents keep the usual mode: /run/sessiond also holds the socket and the PAM holders.
    if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent, "create"))?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(d) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(d, "create")(e)),
        _ => {}
    }
    // (only when needed: a state dir on a read-only file system refuses even a no-op chmod)
    let md = std::fs::metadata(d).map_err(io(d, "stat"))?;
    if md.permissions().mode() & 0o7777 != DIR_MODE {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(DIR_MODE)).map_err(io(d, "chmod 0700"))?;
    }
    Ok(())
}

/// A stopped macvlan session whose namespace the kernel was left to free: the daemon checks
/// after a while that it went, and else deletes the interface that something holding it keeps
/// (`session::reap_link`). Persisted (`reaping/<sid>.json`) from the stop until that check is
/// done, so that a daemon stopped or killed meanwhile leaves the check to the next one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReap {
    pub session: Sid,
    /// The namespace's id in the daemon's (the host's) namespace: it names the namespace while
    /// that lives, whichever process asks; `mac` tells a later namespace that got the id.
    pub nsid: i32,
    pub mac: [u8; 6],
}

/// One `addresses/<sid>` file: the address as text.
fn read_address(path: &Path) -> Option<Ipv4Addr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl StateDir {
    /// Creates the dir (0700, as its subdirectories) or tightens an existing one to 0700, and
    /// the files an older daemon left readable to 0600.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        use std::os::unix::fs::PermissionsExt;
        let dirs: Vec<PathBuf> = std::iter::once(root.to_path_buf()).chain(SUBDIRS.iter().map(|s| root.join(s))).collect();
        for d in &dirs {
            private_dir(d)?;
        }
        for d in &dirs {
            for ent in std::fs::read_dir(d).map_err(io(d, "read"))?.flatten() {
                let p = ent.path();
                if let Ok(md) = std::fs::symlink_metadata(&p)
                    && md.is_file()
                    && md.permissions().mode() & 0o077 != 0
                {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(io(&p, "chmod 0600"))?;
                }
            }
        }
        Ok(StateDir { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn session_path(&self, sid: Sid) -> PathBuf {
        self.root.join("sessions").join(format!("{sid}.json"))
    }

    pub fn save(&self, rec: &SessionRecord) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(rec).expect("records serialize");
        write_atomic(&self.session_path(rec.session), &bytes)
    }

    /// Idempotent: removing an absent record is fine.
    pub fn remove(&self, sid: Sid) -> Result<(), StateError> {
        let p = self.session_path(sid);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&p, "remove")(e)),
            _ => Ok(()),
        }
    }

    /// All records, plus the files that could not be read (reported, not fatal).
    pub fn load_all(&self) -> (Vec<SessionRecord>, Vec<StateError>) {
        let dir = self.root.join("sessions");
        let mut recs = Vec::new();
        let mut errs = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => return (recs, vec![io(&dir, "read")(e)]),
        };
        for ent in entries.flatten() {
            let p = ent.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue; // temp files from an interrupted write
            }
            match std::fs::read(&p)
                .map_err(io(&p, "read"))
                .and_then(|b| serde_json::from_slice::<SessionRecord>(&b).map_err(|e| StateError::Corrupt { path: p.clone(), message: e.to_string() }))
            {
                Ok(r) => recs.push(r),
                Err(e) => errs.push(e),
            }
        }
        recs.sort_by_key(|r| r.session);
        (recs, errs)
    }

    /// Remembers the address a sid last had, static or leased (one file per sid: concurrent
    /// starts of different sids never overwrite each other's history). It outlives `stop`:
    /// the static pool gives the address back, DHCP asks the server for it.
    pub fn save_last_address(&self, sid: Sid, addr: Ipv4Addr) -> Result<(), StateError> {
        let dir = self.root.join("addresses");
        private_dir(&dir)?;
        write_atomic(&dir.join(sid.to_string()), addr.to_string().as_bytes())
    }

    /// The address `sid` last had, if remembered (an unreadable file counts as none).
    pub fn load_last_address(&self, sid: Sid) -> Option<Ipv4Addr> {
        read_address(&self.root.join("addresses").join(sid.to_string()))
    }

    pub fn load_last_addresses(&self) -> crate::pool::PoolHistory {
        let mut h = crate::pool::PoolHistory::default();
        for ent in std::fs::read_dir(self.root.join("addresses")).into_iter().flatten().flatten() {
            let sid = ent.file_name().to_str().and_then(|n| n.parse::<Sid>().ok());
            if let (Some(sid), Some(addr)) = (sid, read_address(&ent.path())) {
                h.last_address.insert(sid.get(), addr);
            }
        }
        h
    }

    pub fn load_blob<T: for<'de> Deserialize<'de> + Default>(&self, name: &str) -> Result<T, StateError> {
        let p = self.root.join(name);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StateError::Corrupt { path: p, message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(io(&p, "read")(e)),
        }
    }

    pub fn remove_blob(&self, name: &str) -> Result<(), StateError> {
        let p = self.root.join(name);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&p, "remove")(e)),
            _ => Ok(()),
        }
    }

    pub fn save_blob<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        write_atomic(&self.root.join(name), &serde_json::to_vec_pretty(value).expect("serializes"))
    }

    /// Like `save_blob`, atomic but not fsynced: for rewrites whose loss in a crash is harmless.
    pub fn save_blob_unsynced<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        write_atomic_unsynced(&self.root.join(name), &serde_json::to_vec_pretty(value).expect("serializes"), Readers::Root)
    }

    fn reap_path(&self, sid: Sid) -> PathBuf {
        self.root.join("reaping").join(format!("{sid}.json"))
    }

    pub fn save_reap(&self, reap: &PendingReap) -> Result<(), StateError> {
        write_atomic(&self.reap_path(reap.session), &serde_json::to_vec(reap).expect("serializes"))
    }

    /// Idempotent, as `remove`.
    pub fn remove_reap(&self, sid: Sid) -> Result<(), StateError> {
        let p = self.reap_path(sid);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&p, "remove")(e)),
            _ => Ok(()),
        }
    }

    /// The checks a previous daemon left pending, plus the files that could not be read.
    pub fn load_reaps(&self) -> (Vec<PendingReap>, Vec<StateError>) {
        let (mut reaps, mut errs) = (Vec::new(), Vec::new());
        for ent in std::fs::read_dir(self.root.join("reaping")).into_iter().flatten().flatten() {
            let p = ent.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&p)
                .map_err(io(&p, "read"))
                .and_then(|b| serde_json::from_slice::<PendingReap>(&b).map_err(|e| StateError::Corrupt { path: p.clone(), message: e.to_string() }))
            {
                Ok(r) => reaps.push(r),
                Err(e) => {
                    let _ = std::fs::remove_file(&p); // nothing to act on: do not report it at every start
                    errs.push(e)
                }
            }
        }
        reaps.sort_by_key(|r| r.session);
        (reaps, errs)
    }

    /// Removes temp files an interrupted write left behind.
    pub fn sweep_temp_files(&self) {
        for dir in std::iter::once(self.root.clone()).chain(SUBDIRS.iter().map(|s| self.root.join(s))) {
            for ent in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = ent.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.contains(".tmp") {
                    let _ = std::fs::remove_file(ent.path());
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) fn sample_record(n: u64) -> SessionRecord {
    let sid = Sid::new(n).unwrap();
    SessionRecord {
        session: sid,
        netns: sid.netns_name(),
        interface: "eth0".into(),
        mac: "02:00:00:00:00:01".into(),
        address: Some("10.0.0.100/24".parse().unwrap()),
        gateway: Some("10.0.0.1".parse().unwrap()),
        dns: vec!["10.0.0.1".parse().unwrap()],
        loopback: crate::loopback::loopback_for(sid),
        addressing: crate::config::Addressing::Static,
        state: SessionState::Up,
        link: crate::config::LinkKind::Macvlan,
        host_link: None,
        owner_uid: Some(1000),
        lease: None,
        fault: None,
        holding: None,
        programs: None,
        ipv6: None,
        addresses6: vec![],
        addresses6_detail: vec![],
        dhcp6_state: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_remove_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        s.save(&sample_record(2)).unwrap();
        s.save(&sample_record(1)).unwrap();
        std::fs::write(d.path().join("sessions/.3.json.tmp99"), b"{").unwrap();
        std::fs::write(d.path().join("sessions/4.json"), b"{not json").unwrap();
        let (recs, errs) = s.load_all();
        assert_eq!(recs.iter().map(|r| r.session.get()).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(recs[0], sample_record(1));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("4.json"));
        s.remove(Sid::new(1).unwrap()).unwrap();
        s.remove(Sid::new(1).unwrap()).unwrap(); // idempotent
        s.sweep_temp_files();
        assert!(!d.path().join("sessions/.3.json.tmp99").exists());
        assert_eq!(s.load_all().0.len(), 1);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v = serde_json::to_value(sample_record(7)).unwrap();
        for k in ["session", "netns", "interface", "mac", "address", "gateway", "dns", "loopback", "addressing", "state"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["loopback"], "127.0.0.8");
        assert_eq!(v["address"], "10.0.0.100/24");
        assert_eq!(v["state"], "up");
    }

    #[test]
    fn state_is_readable_by_root_only_and_an_old_dir_is_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let d = tempfile::tempdir().unwrap();
        // as an older daemon left it under umask 022
        for sub in ["", "sessions", "leases", "addresses"] {
            std::fs::create_dir_all(d.path().join(sub)).unwrap();
            std::fs::set_permissions(d.path().join(sub), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(d.path().join("sessions/1.json"), b"{}").unwrap();
        std::fs::set_permissions(d.path().join("sessions/1.json"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = StateDir::open(d.path()).unwrap();
        for sub in ["", "sessions", "leases", "addresses"] {
            assert_eq!(mode(&d.path().join(sub)), 0o700, "{sub:?}");
        }
        assert_eq!(mode(&d.path().join("sessions/1.json")), 0o600, "an old record is tightened too");
        s.save(&sample_record(3)).unwrap();
        s.save_last_address(Sid::new(3).unwrap(), "10.0.0.100".parse().unwrap()).unwrap();
        s.save_blob("leases/3.json", &1).unwrap();
        s.save_blob_unsynced("leases/4.json", &1).unwrap();
        for f in ["sessions/3.json", "addresses/3", "leases/3.json", "leases/4.json"] {
            assert_eq!(mode(&d.path().join(f)), 0o600, "{f}");
        }
        // what users read inside their session stays readable
        let public = d.path().join("resolv.conf");
        write_atomic_unsynced(&public, b"nameserver 10.0.0.1\n", Readers::Everyone).unwrap();
        assert_eq!(mode(&public), 0o644);
        // a fresh dir's parents keep the usual mode (/run/sessiond also holds the socket)
        let fresh = d.path().join("run/sessiond/state");
        StateDir::open(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        assert_ne!(mode(fresh.parent().unwrap()), 0o700);
    }

    #[test]
    fn last_address_outlives_the_session_and_serves_both_kinds() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let (one, two) = (Sid::new(1).unwrap(), Sid::new(2).unwrap());
        assert_eq!(s.load_last_address(one), None);
        s.save_last_address(one, "10.77.0.100".parse().unwrap()).unwrap();
        s.save_last_address(two, "10.77.0.101".parse().unwrap()).unwrap();
        s.save(&sample_record(1)).unwrap();
        s.remove(one).unwrap(); // stop
        assert_eq!(s.load_last_address(one), Some("10.77.0.100".parse().unwrap()));
        let h = s.load_last_addresses();
        assert_eq!(h.last_address.get(&2), Some(&"10.77.0.101".parse().unwrap()));
        std::fs::write(d.path().join("addresses/3"), b"not an address").unwrap();
        assert_eq!(s.load_last_address(Sid::new(3).unwrap()), None);
        assert_eq!(s.load_last_addresses().last_address.len(), 2);
    }

    #[test]
    fn pending_reaps_round_trip_and_a_corrupt_one_is_reported_once() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let r = PendingReap { session: Sid::new(7).unwrap(), nsid: 3, mac: [2, 0, 0, 0, 0, 7] };
        s.save_reap(&r).unwrap();
        std::fs::write(d.path().join("reaping/8.json"), b"{").unwrap();
        let (reaps, errs) = s.load_reaps();
        assert_eq!(reaps, vec![r.clone()]);
        assert!(errs.len() == 1 && errs[0].to_string().contains("8.json"), "{errs:?}");
        assert!(s.load_reaps().1.is_empty(), "the corrupt file went");
        s.remove_reap(r.session).unwrap();
        s.remove_reap(r.session).unwrap();
        let (reaps, errs) = s.load_reaps();
        assert!(reaps.is_empty() && errs.is_empty());
    }

    #[test]
    fn unwritable_dir_is_a_clear_error() {
        let e = write_atomic(Path::new("/nonexistent-dir/x.json"), b"{}").unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir"), "{e}");
    }
}
