//! Why a received message was ignored. Rendered into `Action::Reject { reason }`.

use std::net::Ipv6Addr;

use dhcproto::v6::Status;

use super::State;

/// Every reason the client ignores a message; a rejected message never changes the machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("oversize message: {len} bytes > {max}")]
    Oversize { len: usize, max: usize },
    #[error("undecodable message: {0}")]
    Undecodable(String),
    #[error("malformed option {code}: {why}")]
    MalformedOption { code: u16, why: &'static str },
    #[error("a {0:?} is not a message for a client")]
    NotForClient(dhcproto::v6::MessageType),
    #[error("unexpected {got:?} in state {state}")]
    UnexpectedMessage { got: dhcproto::v6::MessageType, state: State },
    #[error("no exchange in progress in state {0}")]
    NoTransaction(State),
    #[error("transaction id mismatch: got {got:#08x}, expected {expected:#08x}")]
    XidMismatch { got: u32, expected: u32 },
    #[error("no client identifier (RFC 8415 §16.3)")]
    MissingClientId,
    #[error("client identifier is another client's")]
    ClientIdMismatch,
    #[error("no server identifier (RFC 8415 §16.3)")]
    MissingServerId,
    #[error("server identifier of {len} bytes: a DUID has 3 to 130")]
    BadServerId { len: usize },
    #[error("reply from another server than the one asked")]
    ServerIdMismatch,
    #[error("server says {status:?}: {message:?}")]
    Status { status: Status, message: String },
    #[error("server says {status:?} for the address: {message:?}")]
    IaStatus { status: Status, message: String },
    #[error("no IA_NA for our IAID {0}")]
    MissingIa(u32),
    #[error("IA_NA T1 {t1} > T2 {t2} (RFC 8415 §21.4)")]
    BadIaTimers { t1: u32, t2: u32 },
    #[error("no usable address in the IA_NA")]
    NoAddress,
    #[error("invalid address {addr}: {why}")]
    BadAddress { addr: Ipv6Addr, why: &'static str },
    #[error("address {addr}: preferred lifetime {preferred} > valid lifetime {valid} (RFC 8415 §21.6)")]
    BadLifetimes { addr: Ipv6Addr, preferred: u32, valid: u32 },
    #[error("a Reply to a Solicit without Rapid Commit")]
    NoRapidCommit,
}

impl RejectReason {
    /// A reply meant for another client or for an exchange that is over: not worth a warning.
    /// Everything else is a broken or rogue server, logged as a (rate-limited) warning.
    pub fn is_routine(&self) -> bool {
        matches!(self, RejectReason::XidMismatch { .. } | RejectReason::ClientIdMismatch | RejectReason::NoTransaction(_))
    }
}
