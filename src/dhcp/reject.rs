//! Why a received packet was ignored. Rendered into `Action::Reject { reason }`.

use std::net::Ipv4Addr;

use super::State;

/// Every reason the client ignores a packet (or a persisted lease). The machine's
/// state is never changed by a rejected packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("oversize packet: {len} bytes > {max}")]
    Oversize { len: usize, max: usize },
    #[error("truncated packet: {len} bytes, need at least {min}")]
    Truncated { len: usize, min: usize },
    #[error("undecodable packet: {0}")]
    Undecodable(String),
    #[error("not a BOOTREPLY (op {0})")]
    NotBootReply(u8),
    #[error("bad magic cookie")]
    BadMagic,
    #[error("malformed options area at offset {offset}: option overruns the packet")]
    MalformedOptions { offset: usize },
    #[error("missing DHCP message type (option 53)")]
    MissingMessageType,
    #[error("unexpected DHCP message type {got} in state {state:?}")]
    UnexpectedMessageType { got: u8, state: State },
    #[error("no transaction in progress in state {0:?}")]
    NoTransaction(State),
    #[error("xid mismatch: got {got:#010x}, expected {expected:#010x}")]
    XidMismatch { got: u32, expected: u32 },
    #[error("chaddr mismatch: reply is for another client")]
    ChaddrMismatch,
    #[error("missing server identifier (option 54)")]
    MissingServerId,
    #[error("server identifier mismatch: got {got}, expected {expected}")]
    ServerIdMismatch { got: Ipv4Addr, expected: Ipv4Addr },
    #[error("invalid server identifier {addr}: {why}")]
    InvalidServerId { addr: Ipv4Addr, why: &'static str },
    #[error("invalid offered address {addr}: {why}")]
    InvalidAddress { addr: Ipv4Addr, why: &'static str },
    #[error("offered address {0} equals the server identifier")]
    AddressIsServer(Ipv4Addr),
    #[error("invalid netmask {0}: not contiguous or zero")]
    BadNetmask(Ipv4Addr),
    #[error("netmask {mask} (/{prefix_len}) is wider than /{min}: it would put more than one /{min} on-link")]
    NetmaskTooWide { mask: Ipv4Addr, prefix_len: u8, min: u8 },
    #[error("missing lease time (option 51)")]
    MissingLeaseTime,
    #[error("lease time is zero")]
    ZeroLeaseTime,
    #[error("invalid lease timers: t1 {t1} t2 {t2} lease {lease}")]
    BadTimers { t1: u32, t2: u32, lease: u32 },
    #[error("malformed option {code}: {why}")]
    MalformedOption { code: u8, why: &'static str },
    #[error("malformed classless static routes (option 121): {0}")]
    MalformedClasslessRoutes(&'static str),
}

impl RejectReason {
    /// A reply meant for another client (or for an exchange that is over): routine on a LAN
    /// where every session sees every broadcast reply, so not worth a warning. Everything else
    /// (a bad server id, a reply from another server than the one asked, a netmask wider than
    /// a LAN, ...) is a broken or rogue server, logged as a (rate-limited) warning.
    pub fn is_routine(&self) -> bool {
        matches!(self, RejectReason::XidMismatch { .. } | RejectReason::ChaddrMismatch | RejectReason::NoTransaction(_))
    }
}
