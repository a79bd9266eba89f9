//! One session as the daemon records it and the protocol carries it (`status --json`), and
//! the names it carries: how the session is linked to the uplink and addressed, and its DHCP state.
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::holder::Holder;
use crate::sid::Sid;

/// `"wifi"` is not one of `expected`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value {value:?} (possible values: {})", expected.join(", "))]
pub struct BadValue {
    pub value: String,
    pub expected: &'static [&'static str],
}

/// Declares an enum whose variants each have one name, used by the config file, the flags,
/// serde (`status`) and the logs alike: one table per enum.
macro_rules! named {
    ($(#[$meta:meta])* pub enum $ty:ident { $($(#[$vmeta:meta])* $variant:ident = $name:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $ty {
            $($(#[$vmeta])* #[serde(rename = $name)] $variant),+
        }

        impl $ty {
            /// Every variant, in the order `--help` lists them.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            /// Their names, in the same order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = BadValue;
            fn from_str(s: &str) -> Result<$ty, BadValue> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(BadValue { value: s.to_string(), expected: $ty::NAMES }),
                }
            }
        }
    };
}

named! {
    /// How a session's interface reaches the uplink.
    pub enum LinkKind { Macvlan = "macvlan", Veth = "veth" }
}

named! {
    /// Who on the host may connect to a session's loopback 127.0.0.(sid+1):P, which the
    /// loopback bridge forwards to what the session listens on at P.
    pub enum LoopbackReach {
        /// Root and the session's owner (the default).
        Owner = "owner",
        /// Anyone on the host (as on a Windows terminal server).
        All = "all",
        /// Nobody: no bridge.
        None = "none",
    }
}

named! {
    /// Where a session's address comes from.
    pub enum Addressing { Dhcp = "dhcp", Static = "static" }
}

named! {
    /// A DHCP client's state (RFC 2131 §4.4), by the RFC's name: the daemon's sans-IO client
    /// (`sessiond::dhcp::State`) and `status` share it.
    pub enum DhcpState {
        /// Not started, or waiting out the short delay after a DHCPNAK.
        Init = "init",
        Selecting = "selecting",
        Requesting = "requesting",
        Bound = "bound",
        Renewing = "renewing",
        Rebinding = "rebinding",
        /// Transient: `StartWithLease` passes straight through to `Rebooting`.
        InitReboot = "init-reboot",
        Rebooting = "rebooting",
        Released = "released",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Being built; a record left in this state after a crash is torn down on restart.
    Starting,
    Up,
    /// Being torn down; finished on restart if the daemon died meanwhile.
    Stopping,
}

/// What `status` shows of a DHCP session (absent for static sessions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The lease the client holds; none while it looks for one (its fields are then absent).
    #[serde(flatten)]
    pub held: Option<HeldLease>,
    pub dhcp_state: DhcpState,
}

/// A held DHCP lease; times are milliseconds since the UNIX epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLease {
    pub server: Ipv4Addr,
    pub lease_start: u64,
    /// None: an infinite lease.
    pub expires: Option<u64>,
    /// None: an infinite lease.
    pub next_renewal: Option<u64>,
}

/// The logins holding a session that the PAM module started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// The holder processes that live, each once.
    pub holders: Vec<Holder>,
    /// When the last holder exited, in milliseconds since the UNIX epoch: the daemon stops
    /// the session `reap_after_secs` later, unless a login holds it again first. None while
    /// it is held.
    pub unheld_since: Option<u64>,
}

/// One session: the `status --json` object and the persisted record are the same thing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session: Sid,
    pub netns: String,
    pub interface: String,
    pub mac: String,
    pub address: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub loopback: Ipv4Addr,
    pub addressing: Addressing,
    pub state: SessionState,
    pub link: LinkKind,
    /// The host end of a veth pair (None for macvlan, which lives wholly inside the netns).
    pub host_link: Option<String>,
    pub owner_uid: Option<u32>,
    #[serde(default)]
    pub lease: Option<LeaseInfo>,
    /// Set when the daemon notices a fault (e.g. the uplink went away).
    #[serde(default)]
    pub fault: Option<String>,
    /// Who holds it, for a session started by a login (the PAM module): it is stopped once
    /// every holder has exited. None: it lives until `stop` (`sessiond start`, a unit).
    #[serde(default)]
    pub holding: Option<Holding>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for k in LinkKind::ALL {
            assert_eq!(k.to_string().parse::<LinkKind>(), Ok(*k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        for a in Addressing::ALL {
            assert_eq!(a.to_string().parse::<Addressing>(), Ok(*a));
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
        for d in DhcpState::ALL {
            assert_eq!(d.to_string().parse::<DhcpState>(), Ok(*d));
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str(), "serde and the name table agree");
        }
        assert_eq!(LinkKind::NAMES, ["macvlan", "veth"]);
        assert_eq!(Addressing::NAMES, ["dhcp", "static"]);
    }

    #[test]
    fn a_lease_is_there_or_absent_never_a_placeholder() {
        let looking = LeaseInfo { held: None, dhcp_state: DhcpState::Selecting };
        assert_eq!(serde_json::to_string(&looking).unwrap(), r#"{"dhcp_state":"selecting"}"#);
        let held = LeaseInfo {
            held: Some(HeldLease { server: Ipv4Addr::new(10, 0, 0, 1), lease_start: 5, expires: Some(9), next_renewal: None }),
            dhcp_state: DhcpState::InitReboot,
        };
        let text = serde_json::to_string(&held).unwrap();
        assert_eq!(text, r#"{"server":"10.0.0.1","lease_start":5,"expires":9,"next_renewal":null,"dhcp_state":"init-reboot"}"#);
        for l in [looking, held] {
            assert_eq!(serde_json::from_str::<LeaseInfo>(&serde_json::to_string(&l).unwrap()).unwrap(), l);
        }
    }

    #[test]
    fn a_bad_name_lists_the_good_ones() {
        let e = "wifi".parse::<LinkKind>().unwrap_err().to_string();
        assert_eq!(e, r#"invalid value "wifi" (possible values: macvlan, veth)"#);
        assert!("DHCP".parse::<Addressing>().is_err(), "names are lowercase, as in the config file");
    }
}
