//! sessiond: a network identity (netns, uplink, address, loopback) per login session.
#![forbid(unsafe_code)]

// The pieces the CLI shares with the PAM module live in the small `sessiond-client` crate;
// they keep their old paths here.
pub use sessiond_client::{client, loopback, proto, sid};

pub mod acd;
pub mod acd_driver;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dhcp;
pub mod dhcp_session;
#[cfg(test)]
pub mod fake;
pub mod files;
pub mod identity;
pub mod lease_driver;
pub mod logging;
pub mod mac;
pub mod manager;
pub mod netlink;
pub mod ns;
pub mod platform;
pub mod pool;
pub mod session;
pub mod state;
