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

/// Atomic replace: a reader sees the old file or the new one, never a torn one; durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    write_atomic_with(path, bytes, true)
}

/// Atomic replace without fsync, for files that are derived and rewritten on restart.
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    write_atomic_with(path, bytes, false)
}

fn write_atomic_with(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StateError> {
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
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp, "create"))?;
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

/// One `addresses/<sid>` file: the address as text.
fn read_address(path: &Path) -> Option<Ipv4Addr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl StateDir {
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        for sub in ["sessions", "leases"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d).map_err(io(&d, "create"))?;
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
        std::fs::create_dir_all(&dir).map_err(io(&dir, "create"))?;
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
        write_atomic_unsynced(&self.root.join(name), &serde_json::to_vec_pretty(value).expect("serializes"))
    }

    /// Removes temp files an interrupted write left behind.
    pub fn sweep_temp_files(&self) {
        for dir in [self.root.clone(), self.root.join("sessions"), self.root.join("addresses"), self.root.join("leases")] {
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
    fn unwritable_dir_is_a_clear_error() {
        let e = write_atomic(Path::new("/nonexistent-dir/x.json"), b"{}").unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir"), "{e}");
    }
}
