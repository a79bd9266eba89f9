//! `sessiond status --watch`: the daemon's `watch` stream as a live view. On a terminal, the
//! table of sessions redrawn in place (ANSI) with the latest changes under it; otherwise the
//! table once, then one line per change as it happens. With `--json`, the stream's lines as
//! they come.
use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::client::{self, ClientError};
use crate::proto::WatchEvent;
use crate::sid::Sid;
use crate::state::{SessionRecord, SessionState};

/// Changes shown under the live table.
const RECENT: usize = 12;

pub fn run(socket: &Path, only: Option<Sid>, json: bool) -> Result<(), ClientError> {
    let stream = client::watch(socket, Duration::from_secs(10))?;
    let terminal = std::io::stdout().is_terminal();
    let mut view = View::new(only);
    let mut out = std::io::stdout().lock();
    let io = |source| ClientError::Io { path: socket.into(), source };
    for item in stream {
        let (line, event) = item?;
        let change = view.apply(&event);
        if json {
            if view.shows(&event) {
                writeln!(out, "{line}").map_err(io)?;
            }
        } else if terminal {
            write!(out, "{}", view.screen()).map_err(io)?;
        } else {
            match (&event, change) {
                (WatchEvent::Snapshot { resync, .. }, _) => {
                    if *resync {
                        writeln!(out, "{} resynced (this view fell behind)", clock(SystemTime::now())).map_err(io)?;
                    }
                    write!(out, "{}", crate::cli::table(&view.sessions())).map_err(io)?;
                }
                (_, Some(change)) => writeln!(out, "{change}").map_err(io)?,
                (_, None) => {}
            }
        }
        out.flush().map_err(io)?;
    }
    Err(ClientError::Io { path: socket.into(), source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the daemon ended the stream") })
}

/// What the live view knows: the sessions as the stream last told them, the latest changes.
pub struct View {
    only: Option<Sid>,
    sessions: BTreeMap<Sid, SessionRecord>,
    recent: VecDeque<String>,
    /// The address the last line about each session showed: an address change that line
    /// already told (a session coming up with its lease) is not told again.
    told_address: BTreeMap<Sid, Option<ipnet::Ipv4Net>>,
}

impl View {
    pub fn new(only: Option<Sid>) -> View {
        View { only, sessions: BTreeMap::new(), recent: VecDeque::new(), told_address: BTreeMap::new() }
    }

    pub fn sessions(&self) -> Vec<SessionRecord> {
        self.sessions.values().cloned().collect()
    }

    /// Whether the event is about a session this view shows (`--session`).
    fn shows(&self, event: &WatchEvent) -> bool {
        match (self.only, event) {
            (None, _) | (_, WatchEvent::Snapshot { .. }) => true,
            (
                Some(only),
                WatchEvent::State { session, .. } | WatchEvent::Address { session, .. } | WatchEvent::Fault { session, .. } | WatchEvent::Gone { session },
            ) => *session == only,
        }
    }

    /// Takes in one event; returns the line that tells a change (none for a snapshot).
    pub fn apply(&mut self, event: &WatchEvent) -> Option<String> {
        if !self.shows(event) {
            return None;
        }
        let text = match event {
            WatchEvent::Snapshot { sessions, .. } => {
                self.sessions = sessions.iter().filter(|r| self.only.is_none_or(|s| s == r.session)).map(|r| (r.session, r.clone())).collect();
                return None;
            }
            WatchEvent::State { session, from, to, record } => {
                self.sessions.insert(*session, record.clone());
                self.told_address.insert(*session, record.address);
                let addr = record.address.map(|a| format!(" ({a})")).unwrap_or_default();
                match from {
                    None => format!("session {session}: new, {}{addr}", state_name(*to)),
                    Some(f) => format!("session {session}: {} -> {}{addr}", state_name(*f), state_name(*to)),
                }
            }
            WatchEvent::Address { session, from, to, record } => {
                self.sessions.insert(*session, record.clone());
                if self.told_address.insert(*session, *to) == Some(*to) {
                    return None;
                }
                let name = |a: &Option<ipnet::Ipv4Net>| a.map(|a| a.to_string()).unwrap_or_else(|| "none".into());
                format!("session {session}: address {} -> {}", name(from), name(to))
            }
            WatchEvent::Fault { session, fault, record } => {
                self.sessions.insert(*session, record.clone());
                match fault {
                    Some(f) => format!("session {session}: fault: {f}"),
                    None => format!("session {session}: fault cleared"),
                }
            }
            WatchEvent::Gone { session } => {
                self.sessions.remove(session);
                self.told_address.remove(session);
                format!("session {session}: gone")
            }
        };
        let line = format!("{} {text}", clock(SystemTime::now()));
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(line.clone());
        Some(line)
    }

    /// The whole screen, drawn over the last one: cursor home, each line cleared to its end,
    /// and what is below the last line cleared (no flicker, unlike clearing the screen first).
    pub fn screen(&self) -> String {
        let mut text = format!("sessiond: {} session(s), live (Ctrl-C to quit)\n\n", self.sessions.len());
        text += &crate::cli::table(&self.sessions());
        text += "\nlatest changes:\n";
        for l in &self.recent {
            text += l;
            text.push('\n');
        }
        let mut screen = String::from("\x1b[H");
        for l in text.lines() {
            screen += l;
            screen += "\x1b[K\n";
        }
        screen += "\x1b[J";
        screen
    }
}

fn state_name(s: SessionState) -> &'static str {
    match s {
        SessionState::Starting => "starting",
        SessionState::Up => "up",
        SessionState::Stopping => "stopping",
    }
}

/// HH:MM:SS in UTC (no time-zone database needed), marked `Z`.
fn clock(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) % 86_400;
    format!("{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sid: u64, state: SessionState, addr: Option<&str>) -> SessionRecord {
        let base = crate::state::sample_record(sid);
        SessionRecord { address: addr.map(|a| a.parse().unwrap()), gateway: None, dns: vec![], state, owner_uid: None, ..base }
    }

    fn strip_clock(l: &str) -> &str {
        l.split_once("Z ").unwrap().1
    }

    #[test]
    fn changes_update_the_table_and_are_told_one_line_each() {
        let mut v = View::new(None);
        let s1 = Sid::new(1).unwrap();
        assert_eq!(v.apply(&WatchEvent::Snapshot { sessions: vec![record(1, SessionState::Up, Some("10.0.0.5/24"))], resync: false }), None);
        let r2 = record(2, SessionState::Starting, Some("10.0.0.6/24"));
        let l = v.apply(&WatchEvent::State { session: r2.session, from: None, to: SessionState::Starting, record: r2.clone() }).unwrap();
        assert_eq!(strip_clock(&l), "session 2: new, starting (10.0.0.6/24)");
        let mut up = r2.clone();
        up.state = SessionState::Up;
        let l = v.apply(&WatchEvent::State { session: up.session, from: Some(SessionState::Starting), to: SessionState::Up, record: up.clone() }).unwrap();
        assert_eq!(strip_clock(&l), "session 2: starting -> up (10.0.0.6/24)");
        // told with the state change already; a later change of address is told
        assert_eq!(v.apply(&WatchEvent::Address { session: up.session, from: None, to: up.address, record: up.clone() }), None);
        let mut moved = up.clone();
        moved.address = Some("10.0.0.7/24".parse().unwrap());
        let l = v.apply(&WatchEvent::Address { session: up.session, from: up.address, to: moved.address, record: moved }).unwrap();
        assert_eq!(strip_clock(&l), "session 2: address 10.0.0.6/24 -> 10.0.0.7/24");
        let mut f = record(1, SessionState::Up, Some("10.0.0.5/24"));
        f.fault = Some("uplink br-lan is down".into());
        let l = v.apply(&WatchEvent::Fault { session: s1, fault: f.fault.clone(), record: f }).unwrap();
        assert_eq!(strip_clock(&l), "session 1: fault: uplink br-lan is down");
        let screen = v.screen();
        assert!(screen.starts_with("\x1b[Hsessiond: 2 session(s), live"), "{screen:?}");
        assert!(screen.contains("up (fault: uplink br-lan is down)"), "{screen}");
        assert!(screen.ends_with("session 1: fault: uplink br-lan is down\x1b[K\n\x1b[J"), "{screen:?}");
        let l = v.apply(&WatchEvent::Gone { session: s1 }).unwrap();
        assert_eq!(strip_clock(&l), "session 1: gone");
        assert_eq!(v.sessions().iter().map(|r| r.session.get()).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn one_session_only_with_session() {
        let mut v = View::new(Some(Sid::new(2).unwrap()));
        v.apply(&WatchEvent::Snapshot { sessions: vec![record(1, SessionState::Up, None), record(2, SessionState::Up, None)], resync: false });
        assert_eq!(v.sessions().len(), 1);
        assert_eq!(v.apply(&WatchEvent::Gone { session: Sid::new(1).unwrap() }), None);
        assert!(v.apply(&WatchEvent::Gone { session: Sid::new(2).unwrap() }).is_some());
        assert!(v.sessions().is_empty());
    }

    #[test]
    fn the_clock_is_utc_hh_mm_ss() {
        assert_eq!(clock(UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 3600 * 13 + 60 * 5 + 9)), "13:05:09Z");
    }
}
