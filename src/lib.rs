//! sessiond: a network identity (netns, uplink, address, loopback) per login session.
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dhcp;
pub mod dhcp_session;
pub mod enter;
#[cfg(test)]
pub mod fake;
pub mod files;
pub mod identity;
pub mod lease_driver;
pub mod logging;
pub mod loopback;
pub mod mac;
pub mod manager;
pub mod netlink;
pub mod ns;
pub mod platform;
pub mod pool;
pub mod proto;
pub mod session;
pub mod sid;
pub mod state;
