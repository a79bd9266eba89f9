//! Sans-IO DHCPv6 client (RFC 8415) for a session's `eth0`, in the style of `crate::dhcp`.
//!
//! [`Client`] is a pure state machine: the driver feeds it [`Event`]s with the current
//! wall-clock time and executes the returned [`Action`]s in order. It opens no sockets,
//! reads no clock and draws randomness only from its seed. Modules are named after the RFC's
//! sections: `reliability` (§15, retransmission), `validation` (§16), `client_messages`
//! (§18.2, what each message carries), `machine` (§18, the exchanges).
//!
//! Driver contract:
//! - Execute actions in order (`ApplyLease` precedes `PersistLease`; a Release's `Send`
//!   precedes its `RemoveLease`).
//! - One timer: each `SetTimer` replaces the previous deadline; send `Timer` when it passes.
//!   Early or stale `Timer` events are harmless.
//! - `Send` goes to ff02::1:2 port 547 from a UDP socket on port 546 bound to the session's
//!   `eth0` (its link-local address), created before `Start`.
//! - `ApplyLease.previous` may name an address that is not configured: removing a missing
//!   address is success. The address is a /128 (on-link prefixes come from RAs).
//! - Seed [`ClientConfig::seed`] from the OS RNG: the transaction id is what stops off-path
//!   spoofed replies.
//! - Not done here: Confirm (a restarted client Rebinds its persisted lease instead, which
//!   also extends it), Decline after DAD, Reconfigure, prefix delegation (out of scope).

mod client_messages;
mod lease;
mod machine;
mod reject;
mod reliability;
mod validation;

#[cfg(test)]
mod tests;

pub use client_messages::REQUESTED;
pub use lease::{INFINITY, IRT_DEFAULT_SECS, IRT_MINIMUM_SECS, Info, Lease};
pub use machine::{Action, Client, ClientConfig, Event, State};
pub use reject::RejectReason;
pub use reliability::{Exchange, INFORMATION_REQUEST, Params, REBIND, RELEASE, RENEW, REQUEST, SOLICIT};
pub use validation::MAX_MESSAGE;
