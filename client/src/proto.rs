//! The control-socket protocol: one JSON object per line each way.
use serde::{Deserialize, Serialize};

use ipnet::Ipv4Net;

use crate::ports::{Place, PortEntry, SessionBridge};
use crate::record::{SessionRecord, SessionState};
use crate::sid::Sid;

/// Longest request line the daemon reads; longer ones are refused without buffering them.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// `session` None: the daemon picks the lowest free sid.
    Start {
        session: Option<Sid>,
        #[serde(default)]
        owner_uid: Option<u32>,
        /// The process sending this request holds the session (the PAM module, from the
        /// login's process): once every holder has exited the daemon stops the session.
        /// Without it (`sessiond start`, units) the session lives until `stop`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hold: bool,
        /// How to build the session (the PAM module's `mode=`); None: the daemon's `mode`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<crate::record::Mode>,
    },
    Status {
        session: Option<Sid>,
    },
    Stop {
        session: Sid,
    },
    StopAll,
    /// Turns the connection into a stream of `WatchEvent` lines: a snapshot of the sessions
    /// the caller may see, then one line per change, until either side closes it.
    Watch,
    /// The sockets of the sessions (and the host, `Place::Host`) the caller may see, or of
    /// one; `listening`: only listeners and unconnected UDP sockets.
    Ports {
        session: Option<Place>,
        #[serde(default)]
        listening: bool,
    },
    /// The loopback bridge of the sessions the caller may see (or of one): what the host
    /// reaches in each, and the host services each reaches (`status` shows it).
    Bridge {
        session: Option<Sid>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    PermissionDenied,
    NotFound,
    /// `start` of a running session that belongs to another owner (or to none, or the request
    /// names none): the caller may pick another session.
    OtherOwner,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Sessions {
        sessions: Vec<SessionRecord>,
    },
    /// `stop`: what was stopped, and whether there was anything to stop.
    Stopped {
        sessions: Vec<Sid>,
        absent: bool,
    },
    Ports {
        ports: Vec<PortEntry>,
    },
    Bridge {
        sessions: Vec<SessionBridge>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error { kind, message: message.into() }
    }
}

/// One line of a `watch` stream. Every change carries the session's whole record as it is now,
/// so a viewer can replace its row; a new session is a `state` change from `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum WatchEvent {
    /// Every session the caller may see (in any state), first; again with `resync` after the
    /// watcher fell too far behind to be sent each change it missed.
    Snapshot {
        sessions: Vec<SessionRecord>,
        #[serde(default)]
        resync: bool,
    },
    State {
        session: Sid,
        from: Option<SessionState>,
        to: SessionState,
        record: SessionRecord,
    },
    Address {
        session: Sid,
        from: Option<Ipv4Net>,
        to: Option<Ipv4Net>,
        record: SessionRecord,
    },
    /// A fault was set (`fault` names it) or cleared (`fault` null).
    Fault {
        session: Sid,
        fault: Option<String>,
        record: SessionRecord,
    },
    Gone {
        session: Sid,
    },
}

/// One message as a line on the wire: compact JSON (which never holds a raw newline) and `\n`.
/// Requests and responses alike.
pub fn encode_line(message: &impl Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("protocol messages serialize");
    line.push(b'\n');
    line
}

/// Parses one request line, naming what was wrong.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("malformed request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Start { session: Some(Sid::new(3).unwrap()), owner_uid: Some(1000), hold: true, mode: None },
            Request::Start { session: None, owner_uid: None, hold: false, mode: None },
            Request::Status { session: None },
            Request::Stop { session: Sid::new(9).unwrap() },
            Request::StopAll,
            Request::Watch,
            Request::Ports { session: Some(Place::Host), listening: true },
            Request::Ports { session: None, listening: false },
        ] {
            let line = String::from_utf8(encode_line(&r)).unwrap();
            let (body, end) = line.split_at(line.len() - 1);
            assert_eq!(end, "\n");
            assert!(!body.contains('\n'));
            assert_eq!(parse_request(body).unwrap(), r);
        }
        assert_eq!(parse_request(r#"{"op":"watch"}"#).unwrap(), Request::Watch);
        assert_eq!(
            parse_request(r#"{"op":"start","session":4}"#).unwrap(),
            Request::Start { session: Some(Sid::new(4).unwrap()), owner_uid: None, hold: false, mode: None }
        );
        // Only a holding start says so: the CLI's requests are what they always were.
        assert_eq!(
            encode_line(&Request::Start { session: None, owner_uid: None, hold: false, mode: None }),
            b"{\"op\":\"start\",\"session\":null,\"owner_uid\":null}\n"
        );
    }

    #[test]
    fn bad_requests_are_named() {
        assert!(parse_request("{").unwrap_err().contains("malformed"));
        assert!(parse_request(r#"{"op":"reboot"}"#).unwrap_err().contains("reboot"));
        assert!(parse_request(r#"{"op":"stop","session":0}"#).unwrap_err().contains("session id 0"));
        assert!(parse_request(r#"{"op":"stop","session":-1}"#).is_err());
        assert!(parse_request(r#"{"op":"status","session":null,"x":1}"#).unwrap_err().contains('x'));
    }
}
