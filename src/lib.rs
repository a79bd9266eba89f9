//! sessiond: a network identity (netns, uplink, address, loopback) per login session.
pub mod config;
pub mod dhcp;
pub mod loopback;
pub mod mac;
pub mod netlink;
pub mod ns;
pub mod pool;
pub mod proto;
pub mod sid;
pub mod state;
pub mod files;
pub mod platform;
pub mod session;
#[cfg(test)]
pub mod fake;
pub mod manager;
pub mod daemon;
pub mod client;
pub mod enter;
pub mod cli;
pub mod logging;
pub mod lease_driver;
