//! sessiond: a network identity (netns, uplink, address, loopback) per login session.
#![forbid(unsafe_code)]

// The pieces the CLI shares with the PAM module live in the small `sessiond-client` crate;
// they keep their old paths here.
pub use sessiond_client::{client, loopback, proto, sid};

pub mod acd;
pub mod acd_driver;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dhcp;
pub mod dhcp6;
pub mod dhcp6_driver;
pub mod dhcp_session;
pub mod events;
pub mod exec;
#[cfg(test)]
pub mod fake;
pub mod files;
pub mod holders;
pub mod host_services;
pub mod identity;
pub mod ipv6;
pub mod lease_driver;
pub mod live;
pub mod logging;
pub mod mac;
pub mod manager;
pub mod metrics;
pub mod netlink;
pub mod nft;
pub mod ns;
pub mod ns_socket;
pub mod platform;
pub mod pool;
pub mod ports;
pub mod programs;
pub mod relay;
pub mod session;
pub mod shim;
pub mod splice;
pub mod state;
