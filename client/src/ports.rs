//! One socket as `sessiond ports` shows it (the protocol carries these), and where it lives:
//! the host (session 0, root only) or a session.
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::sid::{Sid, SidError};

/// The namespace a socket lives in. On the wire and on the command line the host is session 0,
/// as on a terminal server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u32")]
pub enum Place {
    Host,
    Session(Sid),
}

impl From<Place> for u32 {
    fn from(p: Place) -> u32 {
        match p {
            Place::Host => 0,
            Place::Session(s) => s.get(),
        }
    }
}

impl TryFrom<u64> for Place {
    type Error = SidError;
    fn try_from(n: u64) -> Result<Place, SidError> {
        match n {
            0 => Ok(Place::Host),
            n => Sid::new(n).map(Place::Session),
        }
    }
}

impl std::str::FromStr for Place {
    type Err = SidError;
    fn from_str(s: &str) -> Result<Place, SidError> {
        match s.trim() {
            "0" => Ok(Place::Host),
            other => other.parse::<Sid>().map(Place::Session),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", u32::from(*self))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A host service every session reaches at its own 127.0.0.1:`port` (`host_services`,
/// `--host-service PROTO:PORT`): written `tcp:631`, `udp:1947`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostService {
    pub proto: Proto,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostServiceError {
    #[error("host service {0:?}: expected PROTO:PORT, e.g. tcp:631 or udp:1947")]
    Form(String),
    #[error("host service {0:?}: unknown protocol (tcp or udp)")]
    Proto(String),
    #[error("host service {0:?}: the port must be a number from 1 to 65535")]
    Port(String),
}

impl std::str::FromStr for HostService {
    type Err = HostServiceError;
    fn from_str(s: &str) -> Result<HostService, HostServiceError> {
        let (proto, port) = s.split_once(':').ok_or_else(|| HostServiceError::Form(s.into()))?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(HostServiceError::Proto(s.into())),
        };
        // Digits only: `u16::from_str` would take "+1".
        match port.parse::<u16>() {
            Ok(n) if n != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(HostService { proto, port: n }),
            _ => Err(HostServiceError::Port(s.into())),
        }
    }
}

impl TryFrom<String> for HostService {
    type Error = HostServiceError;
    fn try_from(s: String) -> Result<HostService, HostServiceError> {
        s.parse()
    }
}

impl From<HostService> for String {
    fn from(h: HostService) -> String {
        h.to_string()
    }
}

impl fmt::Display for HostService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.proto, self.port)
    }
}

/// One session's loopback bridge, as `status` shows it (key `bridge`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionBridge {
    pub session: Sid,
    /// What the host reaches at the session's loopback: the session's TCP listeners and bound
    /// UDP sockets that a connection from the bridge reaches (on 127.0.0.1, the session
    /// loopback, 0.0.0.0 or [::]); empty when loopback_reach is none.
    pub from_host: Vec<Forwarded>,
    /// The host services the session reaches at its own 127.0.0.1.
    pub host_services: Vec<HostService>,
}

/// A port of a session the host reaches through the bridge, and the program listening on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    pub proto: Proto,
    pub port: u16,
    pub pid: Option<u32>,
    pub program: Option<String>,
}

/// The kernel's socket state (include/net/tcp_states.h). A UDP socket is `Unconnected`
/// (the kernel's TCP_CLOSE) or `Established` (connected).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SockState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Unconnected,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl SockState {
    /// From the kernel's number; `None` for one this does not know.
    pub fn from_kernel(n: u8) -> Option<SockState> {
        use SockState::*;
        Some(match n {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Unconnected,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            _ => return None,
        })
    }

    /// As `ss` prints it.
    pub fn as_str(self) -> &'static str {
        use SockState::*;
        match self {
            Established => "ESTAB",
            SynSent => "SYN-SENT",
            SynRecv => "SYN-RECV",
            FinWait1 => "FIN-WAIT-1",
            FinWait2 => "FIN-WAIT-2",
            TimeWait => "TIME-WAIT",
            Unconnected => "UNCONN",
            CloseWait => "CLOSE-WAIT",
            LastAck => "LAST-ACK",
            Listen => "LISTEN",
            Closing => "CLOSING",
            NewSynRecv => "NEW-SYN-RECV",
        }
    }
}

/// One socket of one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortEntry {
    pub session: Place,
    pub proto: Proto,
    pub local: SocketAddr,
    /// None for a socket with no peer (listening, or unconnected UDP).
    pub remote: Option<SocketAddr>,
    pub state: SockState,
    /// A process holding the socket (the lowest pid when several do); None when none of the
    /// namespace's processes holds it (a TIME-WAIT, or the process left the namespace).
    pub pid: Option<u32>,
    pub program: Option<String>,
    /// The socket's owner as the kernel records it (the creator's uid).
    pub uid: u32,
    pub user: Option<String>,
    /// The other places that bind the same protocol and port (listening or unconnected): the
    /// collisions that per-session namespaces prevented. Empty for a socket that is not bound
    /// that way, or bound nowhere else the caller may see.
    pub also_in: Vec<Place>,
    /// A programs-mode session's socket (on the host's stack) that its hooks rewrote: bound
    /// to the session's loopback or address where the program asked for 127.0.0.1 or any.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rewritten: bool,
}

impl PortEntry {
    /// A socket waiting for peers: a TCP listener or an unconnected, bound UDP socket.
    pub fn is_listening(&self) -> bool {
        match self.proto {
            Proto::Tcp => self.state == SockState::Listen,
            Proto::Udp => self.state == SockState::Unconnected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_session_zero_on_the_wire_and_the_command_line() {
        assert_eq!(serde_json::to_string(&Place::Host).unwrap(), "0");
        assert_eq!(serde_json::from_str::<Place>("0").unwrap(), Place::Host);
        let s3 = Place::Session(Sid::new(3).unwrap());
        assert_eq!(serde_json::to_string(&s3).unwrap(), "3");
        assert_eq!(serde_json::from_str::<Place>("3").unwrap(), s3);
        assert_eq!("0".parse::<Place>().unwrap(), Place::Host);
        assert_eq!("3".parse::<Place>().unwrap(), s3);
        assert!("16777215".parse::<Place>().is_err());
        assert!("x".parse::<Place>().unwrap_err().to_string().contains("not a number"));
        assert!(serde_json::from_str::<Place>("-1").is_err());
    }

    #[test]
    fn host_services_read_proto_colon_port_and_name_what_is_wrong() {
        let h: HostService = "tcp:631".parse().unwrap();
        assert_eq!(h, HostService { proto: Proto::Tcp, port: 631 });
        assert_eq!(h.to_string(), "tcp:631");
        assert_eq!(serde_json::to_string(&h).unwrap(), "\"tcp:631\"");
        assert_eq!(serde_json::from_str::<HostService>("\"udp:1947\"").unwrap(), HostService { proto: Proto::Udp, port: 1947 });
        assert_eq!("631".parse::<HostService>(), Err(HostServiceError::Form("631".into())));
        assert_eq!("sctp:631".parse::<HostService>(), Err(HostServiceError::Proto("sctp:631".into())));
        for bad in ["tcp:0", "tcp:65536", "tcp:", "tcp:x", "tcp:+1", "tcp: 1"] {
            assert_eq!(bad.parse::<HostService>(), Err(HostServiceError::Port(bad.into())), "{bad}");
        }
        let e = serde_json::from_str::<HostService>("\"tcp:0\"").unwrap_err().to_string();
        assert!(e.contains("from 1 to 65535"), "{e}");
    }

    #[test]
    fn states_come_from_the_kernel_numbers() {
        assert_eq!(SockState::from_kernel(10), Some(SockState::Listen));
        assert_eq!(SockState::from_kernel(7), Some(SockState::Unconnected));
        assert_eq!(SockState::from_kernel(0), None);
        assert_eq!(SockState::from_kernel(13), None);
        assert_eq!(serde_json::to_string(&SockState::TimeWait).unwrap(), "\"time_wait\"");
    }
}
