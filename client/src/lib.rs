//! What the sessiond command line, the daemon and the PAM module share, with nothing heavy:
//! the control-socket protocol and a blocking client, session ids and loopbacks, the session
//! record the protocol carries, and entering a session's namespace. std threads only (no
//! tokio, netlink or clap): pam_sessiond.so links this into sshd.
#![forbid(unsafe_code)]

pub mod client;
pub mod enter;
pub mod holder;
pub mod loopback;
pub mod ns;
pub mod ports;
pub mod proto;
pub mod record;
pub mod sid;

pub use record::{Addressing, CgroupOwner, DhcpState, Ipv6Mode, Ipv6State, LinkKind, LoopbackReach, Mode, Virtualize, WaitFor};

/// The daemon's control socket, unless `--socket` or $SESSIOND_SOCKET says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/sessiond/sessiond.sock";
/// Names the control socket for the daemon and its clients alike.
pub const SOCKET_ENV: &str = "SESSIOND_SOCKET";
/// How long the daemon waits for a DHCP lease at start unless `dhcp_timeout_secs` says.
pub const DEFAULT_DHCP_TIMEOUT_SECS: u64 = 30;
/// What a start may take besides waiting for DHCP (the namespace, links, state, an address
/// probe). A requester must wait longer than the DHCP timeout + this: one that gives up
/// earlier has its start rolled back, so it never gets a session.
pub const START_MARGIN_SECS: u64 = 15;
