//! The live view's source (`{"op":"watch"}`): every change of a session as watchers see it.
//!
//! Two places change what a session looks like, and each tells this hub: the manager's session
//! table (whenever a session is entered, changed or removed: `manager::Table`) and a DHCP
//! session's lease task (whenever its lease status changes: `lease_driver`). The hub keeps
//! the last view it published of each session (the record, and the lease it was last told), so it
//! can say what changed (state, address, fault, gone) and give a new watcher a snapshot that is
//! consistent with the changes that follow it: both are taken under the hub's one lock.
//!
//! Changes go out on a tokio broadcast channel, so no watcher can ever block the daemon. A
//! watcher that falls more than `BACKLOG` changes behind is resynced: it gets a fresh snapshot
//! (`resync: true`) in place of the changes it missed. A watcher whose socket does not take a
//! line within `WRITE_TIMEOUT` is dropped (its connection closed).
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast;

use crate::dhcp_session::LeaseView;
use crate::proto::{WatchEvent, encode_line};
use crate::sid::Sid;
use crate::state::SessionRecord;

/// Changes a watcher may fall behind before it is resynced.
pub const BACKLOG: usize = 1024;
/// A watcher's socket must take each line within this, or the watcher is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is asking: root sees every session, a user only those that belong to them. The one rule
/// for `status` and for watchers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Viewer {
    Root,
    User(u32),
}

impl Viewer {
    pub fn from_uid(uid: u32) -> Viewer {
        if uid == 0 { Viewer::Root } else { Viewer::User(uid) }
    }

    pub fn may_see(self, owner_uid: Option<u32>) -> bool {
        match self {
            Viewer::Root => true,
            Viewer::User(uid) => owner_uid == Some(uid),
        }
    }
}

/// One change, encoded once for every watcher, with the owner it is shown to.
#[derive(Debug)]
pub struct Published {
    owner_uid: Option<u32>,
    line: Vec<u8>,
}

/// The hub; cheap to clone (every clone is the same hub).
#[derive(Clone)]
pub struct Events {
    inner: Arc<Mutex<Hub>>,
}

struct Hub {
    sessions: BTreeMap<Sid, Entry>,
    tx: broadcast::Sender<Arc<Published>>,
}

#[derive(Default)]
struct Entry {
    /// The record as the manager's table last had it (None: only its lease task spoke yet).
    record: Option<SessionRecord>,
    /// Whether the table holds the session's lease task (only then does the lease show, as in
    /// `status`).
    has_lease: bool,
    lease: Option<LeaseView>,
}

impl Entry {
    fn view(&self) -> Option<SessionRecord> {
        let mut r = self.record.clone()?;
        if self.has_lease
            && let Some(l) = &self.lease
        {
            l.fill(&mut r);
        }
        Some(r)
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    pub fn new() -> Events {
        let (tx, _) = broadcast::channel(BACKLOG);
        Events { inner: Arc::new(Mutex::new(Hub { sessions: BTreeMap::new(), tx })) }
    }

    /// The manager's table entered or changed a session (`has_lease`: it holds a lease task).
    pub fn record(&self, record: &SessionRecord, has_lease: bool) {
        let mut hub = self.inner.lock().unwrap();
        let watched = hub.watched();
        let entry = hub.sessions.entry(record.session).or_default();
        if entry.record.as_ref() == Some(record) && entry.has_lease == has_lease {
            return; // the common case: touched, not changed
        }
        let before = if watched { entry.view() } else { None };
        entry.record = Some(record.clone());
        entry.has_lease = has_lease;
        if watched {
            let after = entry.view();
            hub.publish(before, after);
        }
    }

    /// A session's lease task changed its lease status.
    pub fn lease(&self, sid: Sid, lease: LeaseView) {
        let mut hub = self.inner.lock().unwrap();
        let watched = hub.watched();
        let entry = hub.sessions.entry(sid).or_default();
        let before = if watched { entry.view() } else { None };
        entry.lease = Some(lease);
        if watched {
            let after = entry.view();
            hub.publish(before, after);
        }
    }

    /// The manager's table no longer holds the session.
    pub fn gone(&self, sid: Sid) {
        let mut hub = self.inner.lock().unwrap();
        if let Some(entry) = hub.sessions.remove(&sid)
            && hub.watched()
        {
            hub.publish(entry.view(), None);
        }
    }

    /// What `viewer` may see now, and the changes from then on (nothing lost, nothing twice).
    pub fn subscribe(&self, viewer: Viewer) -> (Vec<SessionRecord>, broadcast::Receiver<Arc<Published>>) {
        let hub = self.inner.lock().unwrap();
        let snapshot = hub.sessions.values().filter_map(Entry::view).filter(|r| viewer.may_see(r.owner_uid)).collect();
        (snapshot, hub.tx.subscribe())
    }
}

impl Hub {
    /// Whether anyone watches: without watchers the hub only keeps each session's latest
    /// record and lease for the next snapshot, and works out no changes.
    fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn publish(&self, before: Option<SessionRecord>, after: Option<SessionRecord>) {
        let owner_uid = after.as_ref().or(before.as_ref()).and_then(|r| r.owner_uid);
        for event in changes(before, after) {
            // A send fails only when nobody listens: nothing to do then.
            let _ = self.tx.send(Arc::new(Published { owner_uid, line: encode_line(&event) }));
        }
    }
}

/// What a watcher is told when a session's view goes from `before` to `after` (None: absent):
/// its state, address and fault, each as its own event, in that order. Other fields (lease
/// times, the DHCP state) change quietly: they show in the next snapshot.
pub fn changes(before: Option<SessionRecord>, after: Option<SessionRecord>) -> Vec<WatchEvent> {
    let (before, after) = match (before, after) {
        (None, None) => return vec![],
        (Some(b), None) => return vec![WatchEvent::Gone { session: b.session }],
        (None, Some(a)) => return vec![WatchEvent::State { session: a.session, from: None, to: a.state, record: a }],
        (Some(b), Some(a)) => (b, a),
    };
    let session = after.session;
    let mut out = Vec::new();
    if before.state != after.state {
        out.push(WatchEvent::State { session, from: Some(before.state), to: after.state, record: after.clone() });
    }
    if before.address != after.address {
        out.push(WatchEvent::Address { session, from: before.address, to: after.address, record: after.clone() });
    }
    if before.fault != after.fault {
        out.push(WatchEvent::Fault { session, fault: after.fault.clone(), record: after });
    }
    out
}

/// Serves a `watch` connection until the client goes away, its socket stops taking lines, or
/// the daemon exits. `input` is the rest of the connection: anything the client sends is
/// ignored, its end closes the stream.
pub async fn stream(events: &Events, viewer: Viewer, mut input: impl AsyncRead + Unpin, mut output: impl AsyncWrite + Unpin) {
    let (snapshot, mut rx) = events.subscribe(viewer);
    if !write(&mut output, &encode_line(&WatchEvent::Snapshot { sessions: snapshot, resync: false })).await {
        return;
    }
    let mut scratch = [0u8; 512];
    loop {
        tokio::select! {
            received = rx.recv() => match received {
                Ok(p) => {
                    if viewer.may_see(p.owner_uid) && !write(&mut output, &p.line).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(?viewer, missed, "watcher fell behind: resyncing it");
                    let (snapshot, fresh) = events.subscribe(viewer);
                    rx = fresh;
                    if !write(&mut output, &encode_line(&WatchEvent::Snapshot { sessions: snapshot, resync: true })).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            read = input.read(&mut scratch) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

/// Writes one line within `WRITE_TIMEOUT`; false: the watcher is gone or stuck.
async fn write(output: &mut (impl AsyncWrite + Unpin), line: &[u8]) -> bool {
    match tokio::time::timeout(WRITE_TIMEOUT, output.write_all(line)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::info!("dropped a watcher that took no line for {} s", WRITE_TIMEOUT.as_secs());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Addressing;
    use crate::dhcp::State;
    use crate::state::SessionState;

    fn record(sid: u64, owner: Option<u32>, state: SessionState) -> SessionRecord {
        let base = crate::state::sample_record(sid);
        SessionRecord { address: None, gateway: None, dns: vec![], addressing: Addressing::Dhcp, state, owner_uid: owner, ..base }
    }

    fn lease(addr: [u8; 4]) -> crate::dhcp::Lease {
        crate::dhcp::Lease::sample(addr.into(), 1)
    }

    fn drain(rx: &mut broadcast::Receiver<Arc<Published>>, viewer: Viewer) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        while let Ok(p) = rx.try_recv() {
            if viewer.may_see(p.owner_uid) {
                out.push(serde_json::from_slice(&p.line).unwrap());
            }
        }
        out
    }

    fn kinds(events: &[WatchEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                WatchEvent::Snapshot { sessions, .. } => format!("snapshot {}", sessions.len()),
                WatchEvent::State { session, from, to, .. } => format!("{session} state {from:?}->{to:?}"),
                WatchEvent::Address { session, from, to, .. } => format!("{session} address {from:?}->{to:?}"),
                WatchEvent::Fault { session, fault, .. } => format!("{session} fault {fault:?}"),
                WatchEvent::Gone { session } => format!("{session} gone"),
            })
            .collect()
    }

    #[test]
    fn a_dhcp_session_s_life_is_told_in_order_and_only_what_changed() {
        let ev = Events::new();
        let (snap, mut rx) = ev.subscribe(Viewer::Root);
        assert!(snap.is_empty());
        let starting = record(7, Some(1000), SessionState::Starting);
        ev.record(&starting, false);
        ev.record(&starting, false); // touched, not changed: nothing
        // the lease task binds while the session is still starting: not shown until the table
        // holds the task (as `status` would)
        ev.lease(
            starting.session,
            LeaseView { state: State::Bound, lease: Some(lease([10, 0, 0, 50])), unapplied: None, trouble: None, next_renewal: None, next_rebinding: None },
        );
        let mut up = starting.clone();
        up.state = SessionState::Up;
        ev.record(&up, true);
        // a renewal that keeps the address: quiet
        ev.lease(
            up.session,
            LeaseView { state: State::Renewing, lease: Some(lease([10, 0, 0, 50])), unapplied: None, trouble: None, next_renewal: None, next_rebinding: None },
        );
        ev.lease(
            up.session,
            LeaseView { state: State::Bound, lease: Some(lease([10, 0, 0, 51])), unapplied: None, trouble: None, next_renewal: None, next_rebinding: None },
        );
        let mut faulted = up.clone();
        faulted.fault = Some("uplink br-lan is down".into());
        ev.record(&faulted, true);
        ev.record(&up, true);
        let mut stopping = up.clone();
        stopping.state = SessionState::Stopping;
        ev.record(&stopping, false);
        ev.gone(up.session);
        ev.gone(up.session); // already gone: nothing
        assert_eq!(
            kinds(&drain(&mut rx, Viewer::Root)),
            [
                "7 state None->Starting",
                "7 state Some(Starting)->Up",
                "7 address None->Some(10.0.0.50/24)",
                "7 address Some(10.0.0.50/24)->Some(10.0.0.51/24)",
                "7 fault Some(\"uplink br-lan is down\")",
                "7 fault None",
                "7 state Some(Up)->Stopping",
                "7 address Some(10.0.0.51/24)->None",
                "7 gone",
            ]
        );
    }

    #[test]
    fn the_up_event_carries_the_lease_address_and_a_snapshot_shows_all_states() {
        let ev = Events::new();
        let starting = record(3, None, SessionState::Starting);
        ev.record(&starting, false);
        ev.lease(
            starting.session,
            LeaseView { state: State::Bound, lease: Some(lease([10, 0, 0, 9])), unapplied: None, trouble: None, next_renewal: None, next_rebinding: None },
        );
        let (snap, mut rx) = ev.subscribe(Viewer::Root);
        assert_eq!(snap, vec![starting.clone()], "a starting session shows, without the lease its table does not hold yet");
        let mut up = starting;
        up.state = SessionState::Up;
        ev.record(&up, true);
        let events = drain(&mut rx, Viewer::Root);
        let [WatchEvent::State { record, .. }, WatchEvent::Address { to, .. }] = &events[..] else { panic!("{events:?}") };
        assert_eq!(record.address.unwrap().to_string(), "10.0.0.9/24");
        assert_eq!(*to, record.address);
        assert_eq!(record.lease.as_ref().unwrap().dhcp_state, State::Bound);
    }

    #[test]
    fn a_user_sees_only_their_own_sessions() {
        let ev = Events::new();
        ev.record(&record(1, Some(1000), SessionState::Up), false);
        ev.record(&record(2, Some(1001), SessionState::Up), false);
        ev.record(&record(3, None, SessionState::Up), false);
        let (mine, mut rx) = ev.subscribe(Viewer::User(1000));
        assert_eq!(mine.iter().map(|r| r.session.get()).collect::<Vec<_>>(), [1]);
        let (all, mut rx_root) = ev.subscribe(Viewer::Root);
        assert_eq!(all.len(), 3);
        for sid in [1, 2, 3] {
            ev.gone(Sid::new(sid).unwrap());
        }
        assert_eq!(kinds(&drain(&mut rx, Viewer::User(1000))), ["1 gone"]);
        assert_eq!(kinds(&drain(&mut rx_root, Viewer::Root)), ["1 gone", "2 gone", "3 gone"]);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_resynced_and_a_stuck_one_never_blocks_the_daemon() {
        let ev = Events::new();
        // A client that reads nothing: its socket buffer fills up and stays full.
        let (client, server) = tokio::io::duplex(256);
        let (srd, swr) = tokio::io::split(server);
        let task = tokio::spawn({
            let ev = ev.clone();
            async move { stream(&ev, Viewer::Root, srd, swr).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Far more changes than the backlog: publishing never waits for the watcher.
        let t0 = std::time::Instant::now();
        for n in 1..=(BACKLOG as u64 * 3) {
            ev.record(&record(n, None, SessionState::Starting), false);
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "publishing took {:?}", t0.elapsed());
        // Now the client reads: the snapshot, whatever fit in the pipe, then a resync snapshot
        // holding every session.
        let mut lines = tokio::io::BufReader::new(client);
        let mut resynced = None;
        let mut line = String::new();
        for _ in 0..(BACKLOG * 4) {
            line.clear();
            use tokio::io::AsyncBufReadExt;
            let n = tokio::time::timeout(Duration::from_secs(5), lines.read_line(&mut line)).await.unwrap().unwrap();
            assert!(n > 0);
            if let WatchEvent::Snapshot { sessions, resync: true } = serde_json::from_str(&line).unwrap() {
                resynced = Some(sessions.len());
                break;
            }
        }
        assert_eq!(resynced, Some(BACKLOG * 3));
        drop(lines);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the stream ends with its client").unwrap();
    }

    #[tokio::test]
    async fn the_manager_s_table_tells_every_change_of_a_session() {
        use crate::config::{FileConfig, Settings};
        use crate::fake::FakePlatform;
        use crate::manager::Manager;
        let d = tempfile::tempdir().unwrap();
        let settings = Settings::merge(
            FileConfig {
                uplink: Some("br-lan".into()),
                addressing: Some(Addressing::Static),
                pool: Some("10.0.0.100-10.0.0.110/24".into()),
                gateway: Some("10.0.0.1".parse().unwrap()),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap();
        let p = FakePlatform::new();
        let m = Arc::new(Manager::new(p.clone(), settings, crate::state::StateDir::open(d.path()).unwrap(), "m".into(), "h".into()).unwrap());
        let (snap, mut rx) = m.events().subscribe(Viewer::Root);
        assert!(snap.is_empty());
        let s1 = Sid::new(1).unwrap();
        m.start(Some(s1), Some(1000)).await.unwrap();
        m.start(Some(s1), Some(1000)).await.unwrap(); // unchanged: nothing to tell
        tokio::spawn(m.clone().watch_uplink(Duration::from_millis(5)));
        p.remove_host_link("br-lan");
        tokio::time::sleep(Duration::from_millis(50)).await;
        p.add_host_link("br-lan");
        tokio::time::sleep(Duration::from_millis(50)).await;
        m.stop(s1).await.unwrap();
        let events = drain(&mut rx, Viewer::Root);
        assert_eq!(
            kinds(&events),
            [
                "1 state None->Starting",
                "1 state Some(Starting)->Up",
                "1 fault Some(\"uplink br-lan does not exist\")",
                "1 fault None",
                "1 state Some(Up)->Stopping",
                "1 gone",
            ]
        );
        // each change carries the record as `status` showed it then
        let WatchEvent::State { record, .. } = &events[1] else { panic!() };
        assert_eq!(record.address.unwrap().to_string(), "10.0.0.100/24");
        assert_eq!(record.owner_uid, Some(1000));
        let (snap, _) = m.events().subscribe(Viewer::Root);
        assert!(snap.is_empty(), "a stopped session is gone from the snapshot too");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watcher_whose_socket_takes_nothing_is_dropped() {
        let ev = Events::new();
        let (client, server) = tokio::io::duplex(64);
        let (srd, swr) = tokio::io::split(server);
        let task = tokio::spawn({
            let ev = ev.clone();
            async move { stream(&ev, Viewer::Root, srd, swr).await }
        });
        ev.record(&record(1, None, SessionState::Up), false);
        tokio::time::sleep(WRITE_TIMEOUT + Duration::from_secs(1)).await;
        assert!(task.is_finished(), "dropped after {WRITE_TIMEOUT:?} without progress");
        drop(client);
    }

    #[tokio::test]
    async fn the_stream_starts_with_a_snapshot_and_ends_with_its_client() {
        let ev = Events::new();
        ev.record(&record(1, Some(1000), SessionState::Up), false);
        ev.record(&record(2, Some(1001), SessionState::Up), false);
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (srd, swr) = tokio::io::split(server);
        let task = tokio::spawn({
            let ev = ev.clone();
            async move { stream(&ev, Viewer::User(1001), srd, swr).await }
        });
        let (crd, cwr) = tokio::io::split(client);
        let mut lines = tokio::io::BufReader::new(crd);
        let mut next = async || {
            use tokio::io::AsyncBufReadExt;
            let mut l = String::new();
            tokio::time::timeout(Duration::from_secs(5), lines.read_line(&mut l)).await.unwrap().unwrap();
            serde_json::from_str::<WatchEvent>(&l).unwrap()
        };
        let WatchEvent::Snapshot { sessions, resync: false } = next().await else { panic!() };
        assert_eq!(sessions.iter().map(|r| r.session.get()).collect::<Vec<_>>(), [2]);
        ev.gone(Sid::new(1).unwrap()); // not theirs: not told
        ev.gone(Sid::new(2).unwrap());
        assert_eq!(next().await, WatchEvent::Gone { session: Sid::new(2).unwrap() });
        let mut cwr = cwr;
        cwr.shutdown().await.unwrap(); // the client hangs up
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the stream ends when its client hangs up").unwrap();
    }
}
