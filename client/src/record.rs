//! One session as the daemon records it and the protocol carries it (`status --json`), and
//! the names it carries: how the session is linked to the uplink and addressed, and its DHCP state.
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
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
    /// Where a session's IPv4 address comes from.
    pub enum Addressing {
        Dhcp = "dhcp",
        Static = "static",
        /// No IPv4 address at all: an IPv6-only session (its loopbacks stay).
        None = "none",
    }
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

named! {
    /// How a session gets its network identity.
    pub enum Mode {
        /// A network namespace of its own (the default).
        Namespace = "namespace",
        /// The host's own stack: eBPF hooks on the login's cgroup rewrite the addresses of the
        /// listed programs' sockets.
        Programs = "programs",
    }
}

named! {
    /// How a session gets its IPv6 addresses (`ipv6` in the config, `--ipv6`).
    pub enum Ipv6Mode {
        /// The router advertisement decides (SLAAC from autonomous prefixes).
        Auto = "auto",
        Slaac = "slaac",
        Dhcpv6 = "dhcpv6",
        /// No IPv6 on the session's uplink (its loopback keeps ::1).
        Off = "off",
    }
}

named! {
    /// What programs mode gives the listed programs (either or both, as Windows allows).
    pub enum Virtualize {
        /// The session's own address for what they bind to 0.0.0.0 and connect from.
        Address = "address",
        /// The session's loopback 127.0.0.(sid+1) for what they bind to 127.0.0.1, and their
        /// own session's listener first when they connect to 127.0.0.1 (preferred loopback).
        Loopback = "loopback",
    }
}

named! {
    /// Whose cgroup a programs-mode session's hooks are attached to.
    pub enum CgroupOwner {
        /// `sessiond-N`, which sessiond makes in its own cgroup and removes at stop; the login
        /// joins it.
        Sessiond = "sessiond",
        /// The login's own `session-N.scope` (pam_systemd's, made by logind): the login is in it
        /// already, and it stays systemd's (never removed, only our hooks come off it).
        Logind = "logind",
    }
}

impl Default for CgroupOwner {
    /// Records from before the scope: sessiond's own cgroup.
    fn default() -> CgroupOwner {
        CgroupOwner::Sessiond
    }
}

/// What `status` shows of a programs-mode session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramsInfo {
    /// The cgroup v2 directory the hooks are attached to; a login joins it.
    pub cgroup: String,
    /// The listed process names; empty: every program of the session.
    pub programs: Vec<String>,
    pub virtualize: Vec<Virtualize>,
    /// The attached hooks, by attach point (`connect4`, ...).
    pub attached: Vec<String>,
    /// Socket addresses the hooks rewrote so far (read when `status` asks).
    #[serde(default)]
    pub rewritten: u64,
    /// Whose cgroup `cgroup` is: sessiond's own, or logind's scope of the login.
    #[serde(default)]
    pub cgroup_owner: CgroupOwner,
}

named! {
    /// What `start` waits for before it answers (`wait_for`).
    pub enum WaitFor {
        /// The IPv4 address (IPv6 completes in the background).
        Ipv4 = "ipv4",
        /// A usable global IPv6 address: with `addressing = "none"` (IPv6-only sessions) the
        /// only address; otherwise the IPv4 one is still required, as with `both`.
        Ipv6 = "ipv6",
        Both = "both",
    }
}

named! {
    /// Where the session stands with IPv6, as `status` reads it from the namespace.
    pub enum Ipv6State {
        /// `ipv6 = "off"`: IPv6 is disabled on the uplink.
        Off = "off",
        /// No usable global address yet (no router advertisement, or DAD still running).
        Waiting = "waiting",
        /// A global address formed from a router advertisement's prefix.
        Slaac = "slaac",
        /// A global address leased by DHCPv6 (with or without SLAAC ones beside it).
        Dhcpv6 = "dhcpv6",
    }
}

named! {
    /// A DHCPv6 client's state (RFC 8415 §18), shared by the daemon's sans-IO client
    /// (`sessiond::dhcp6::State`) and `status`.
    pub enum Dhcp6State {
        Init = "init",
        /// Solicit sent, collecting Advertises.
        Soliciting = "soliciting",
        Requesting = "requesting",
        Bound = "bound",
        Renewing = "renewing",
        Rebinding = "rebinding",
        /// Information-Request sent (stateless: DNS only).
        Informing = "informing",
        /// Stateless configuration received; refreshed after its refresh time.
        Informed = "informed",
        Releasing = "releasing",
        Released = "released",
    }
}

named! {
    /// Where one IPv6 address on the session's uplink came from.
    pub enum Address6Origin {
        LinkLocal = "link-local",
        /// Stable (RFC 7217) address from a router advertisement's prefix.
        Slaac = "slaac",
        /// RFC 8981 temporary address (`ipv6_privacy`).
        Temporary = "temporary",
        /// Leased by sessiond's DHCPv6 client.
        Dhcpv6 = "dhcpv6",
        /// Put there by hand (not by the kernel from an RA, nor by sessiond).
        Other = "other",
    }
}

/// One IPv6 address of the session's uplink with its origin and lifetimes (`status`'s text
/// view shows them; `addresses6` lists the same addresses as plain strings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address6 {
    pub address: Ipv6Net,
    pub origin: Address6Origin,
    /// Seconds left; None: forever.
    pub valid_secs: Option<u32>,
    /// Seconds left; None: forever.
    pub preferred_secs: Option<u32>,
    /// Duplicate address detection is still running: not usable yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tentative: bool,
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
    /// When it is rebound (T2, fuzzed like T1). None: an infinite lease, or a daemon from
    /// before this field.
    #[serde(default)]
    pub next_rebinding: Option<u64>,
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
    /// Programs mode's hooks; None: a namespace-mode session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programs: Option<ProgramsInfo>,
    /// The session's IPv6 state, read live from its namespace by `status` (None in the
    /// persisted record and in records from before IPv6).
    #[serde(default)]
    pub ipv6: Option<Ipv6State>,
    /// The IPv6 addresses of the uplink, "addr/prefix", read live by `status`.
    #[serde(default)]
    pub addresses6: Vec<Ipv6Net>,
    /// The same addresses with their origin and lifetimes.
    #[serde(default)]
    pub addresses6_detail: Vec<Address6>,
    /// The session's DHCPv6 client's state, while one runs (the RA asked for DHCPv6, or
    /// `ipv6 = "dhcpv6"`).
    #[serde(default)]
    pub dhcp6_state: Option<Dhcp6State>,
}

impl SessionRecord {
    pub fn mode(&self) -> Mode {
        if self.programs.is_some() { Mode::Programs } else { Mode::Namespace }
    }

    /// Sets the live IPv6 facts: `addresses6` and its detail come from the one list.
    pub fn set_ipv6(&mut self, state: Ipv6State, addresses: Vec<Address6>) {
        self.ipv6 = Some(state);
        self.addresses6 = addresses.iter().map(|a| a.address).collect();
        self.addresses6_detail = addresses;
    }

    /// The session's IPv6 address for `SESSIOND_ADDRESS6`: the DHCPv6 lease's, else the
    /// stable SLAAC one (never a temporary or link-local one, nor one still in DAD).
    pub fn address6(&self) -> Option<Ipv6Addr> {
        let usable = |origin: Address6Origin| self.addresses6_detail.iter().find(|a| a.origin == origin && !a.tentative).map(|a| a.address.addr());
        usable(Address6Origin::Dhcpv6).or_else(|| usable(Address6Origin::Slaac))
    }
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
        assert_eq!(Addressing::NAMES, ["dhcp", "static", "none"]);
    }

    #[test]
    fn a_lease_is_there_or_absent_never_a_placeholder() {
        let looking = LeaseInfo { held: None, dhcp_state: DhcpState::Selecting };
        assert_eq!(serde_json::to_string(&looking).unwrap(), r#"{"dhcp_state":"selecting"}"#);
        let held = LeaseInfo {
            held: Some(HeldLease { server: Ipv4Addr::new(10, 0, 0, 1), lease_start: 5, expires: Some(9), next_renewal: None, next_rebinding: None }),
            dhcp_state: DhcpState::InitReboot,
        };
        let text = serde_json::to_string(&held).unwrap();
        assert_eq!(text, r#"{"server":"10.0.0.1","lease_start":5,"expires":9,"next_renewal":null,"next_rebinding":null,"dhcp_state":"init-reboot"}"#);
        for l in [looking, held] {
            assert_eq!(serde_json::from_str::<LeaseInfo>(&serde_json::to_string(&l).unwrap()).unwrap(), l);
        }
    }

    #[test]
    fn address6_prefers_the_lease_then_the_stable_slaac_address() {
        let a = |address: &str, origin, tentative| Address6 { address: address.parse().unwrap(), origin, valid_secs: None, preferred_secs: None, tentative };
        let mut r: SessionRecord = serde_json::from_str(
            r#"{"session":1,"netns":"sessiond-1","interface":"eth0","mac":"02:00:00:00:00:01","address":null,"gateway":null,"dns":[],
                "loopback":"127.0.0.2","addressing":"dhcp","state":"up","link":"macvlan","host_link":null,"owner_uid":null}"#,
        )
        .unwrap();
        assert_eq!(r.address6(), None, "a record from before IPv6 has none");
        r.set_ipv6(Ipv6State::Slaac, vec![a("fe80::1/64", Address6Origin::LinkLocal, false), a("2001:db8::9/64", Address6Origin::Temporary, false)]);
        assert_eq!(r.address6(), None, "not a temporary or link-local one");
        r.set_ipv6(Ipv6State::Slaac, vec![a("2001:db8::9/64", Address6Origin::Temporary, false), a("2001:db8::5/64", Address6Origin::Slaac, false)]);
        assert_eq!(r.address6(), Some("2001:db8::5".parse().unwrap()));
        assert_eq!(r.addresses6, vec!["2001:db8::9/64".parse::<Ipv6Net>().unwrap(), "2001:db8::5/64".parse().unwrap()], "one list, two views");
        r.set_ipv6(Ipv6State::Dhcpv6, vec![a("2001:db8::5/64", Address6Origin::Slaac, false), a("2001:db8::1:7/128", Address6Origin::Dhcpv6, true)]);
        assert_eq!(r.address6(), Some("2001:db8::5".parse().unwrap()), "a lease still in DAD is not used yet");
        r.set_ipv6(Ipv6State::Dhcpv6, vec![a("2001:db8::5/64", Address6Origin::Slaac, false), a("2001:db8::1:7/128", Address6Origin::Dhcpv6, false)]);
        assert_eq!(r.address6(), Some("2001:db8::1:7".parse().unwrap()));
    }

    #[test]
    fn a_bad_name_lists_the_good_ones() {
        let e = "wifi".parse::<LinkKind>().unwrap_err().to_string();
        assert_eq!(e, r#"invalid value "wifi" (possible values: macvlan, veth)"#);
        assert!("DHCP".parse::<Addressing>().is_err(), "names are lowercase, as in the config file");
    }
}
