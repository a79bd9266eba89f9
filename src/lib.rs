//! sessiond: a network identity (netns, uplink, address, loopback) per login session.
pub mod dhcp;
