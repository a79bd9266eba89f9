//! Sans-IO DHCPv4 client (RFC 2131) for a session's macvlan `eth0`.
//!
//! [`Client`] is a pure state machine: the driver feeds it [`Event`]s with the
//! current wall-clock time and executes the returned [`Action`]s in order. It
//! opens no sockets, reads no clock and draws randomness only from its seed.
//!
//! Driver contract:
//! - Execute actions in order (a RELEASE `Send` precedes its `RemoveLease`;
//!   `ApplyLease` precedes `PersistLease`).
//! - One timer: each `SetTimer` replaces the previous deadline; send `Timer` when
//!   it passes, then forget it (the machine emits a new `SetTimer` whenever
//!   something is still pending). Early or stale `Timer` events are harmless (an
//!   early one re-emits the same `SetTimer`). The deadline also covers the end of
//!   an unconfirmed persisted lease, whose address the machine then removes.
//! - `Dest::Broadcast` is 255.255.255.255:67, `Dest::Unicast(ip)` is ip:67, from
//!   a UDP socket on 0.0.0.0:68 bound to the session's `eth0`, created before
//!   `Start`. `broadcast_flag` is already set in the bytes; it is true exactly
//!   while we have no configured address, so the server's replies are
//!   broadcast and reach that socket.
//! - `ApplyLease.previous` and `RemoveLease` may name an address that is not
//!   configured (an unconfirmed persisted lease): treat removal of a missing
//!   address or route as success.
//! - `Reject` is routine on a shared LAN (other clients' broadcast replies):
//!   log [`RejectReason::is_routine`] ones at debug level, rate-limit the rest.
//! - Seed [`ClientConfig::seed`] from the OS RNG: the xid is what stops
//!   off-path spoofed replies.
//! - With [`Client::with_address_check`], answer every `CheckAddress` with
//!   `Event::AddressFree` or `Event::AddressInUse` (an RFC 5227 probe, `crate::acd`),
//!   and report a held address that another host took with `Event::AddressInUse`.
//!   After `GiveUp` the client makes no further attempt.

mod backoff;
mod client_id;
mod decode;
mod encode;
mod lease;
mod machine;
mod options;
mod reject;
mod rng;

#[cfg(test)]
mod tests;

/// Wall-clock milliseconds since the UNIX epoch, injected by the caller.
pub type Millis = u64;

pub use backoff::{INITIAL_RETRY_MS, JITTER_MS, MAX_RETRY_MS, MIN_LEASE_RETRY_MS};
pub use client_id::{client_identifier, duid};
pub use decode::{MAX_PACKET, message_type};
pub use encode::{MAX_MESSAGE_SIZE, PARAMETER_REQUEST_LIST};
pub use lease::{DEFAULT_MIN_LEASE_SECS, INFINITE, Lease, MIN_PREFIX_LEN};
pub use machine::{Action, Client, ClientConfig, DECLINE_WAIT_MS, Dest, Event, MAX_REBOOT_REQUESTS, MAX_SELECTING_REQUESTS, State};
pub use reject::RejectReason;
/// The machine's seeded PRNG, shared with `acd` and `dhcp6` (same sans-IO rule: randomness from a seed).
pub(crate) use rng::SplitMix64;

#[cfg(test)]
pub(crate) mod tests_support {
    use super::{Action, Client, ClientConfig, Event};

    /// The first DISCOVER of a client named "ts1-s7", with or without the FQDN option.
    pub fn discover_bytes(fqdn: bool) -> Vec<u8> {
        let cfg = ClientConfig {
            mac: [2, 0, 0, 0, 0, 7],
            client_id: vec![255, 0, 0, 0, 7],
            hostname: Some("ts1-s7".into()),
            fqdn,
            seed: 1,
            min_lease_secs: super::DEFAULT_MIN_LEASE_SECS,
        };
        let actions = Client::new(cfg).on_event(Event::Start, 1_700_000_000_000);
        actions.into_iter().find_map(|a| if let Action::Send { bytes, .. } = a { Some(bytes) } else { None }).expect("a DISCOVER")
    }
}
