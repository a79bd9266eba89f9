//! Everything a session slot is called, derived once from (machine-id, sid): the same slot has
//! the same names, MAC and DHCP client id on every start, daemon restart and reboot.
use std::net::Ipv4Addr;

use crate::config::LinkKind;
use crate::loopback::loopback_for;
use crate::mac::{format_mac, stable_mac};
use crate::sid::Sid;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub sid: Sid,
    /// The network namespace under /run/netns.
    pub netns: String,
    pub mac: [u8; 6],
    /// DHCP option 61 (RFC 4361: the machine's DUID plus a per-sid IAID).
    pub client_id: Vec<u8>,
    /// 127.0.0.(sid+1), on the session's `lo`.
    pub loopback: Ipv4Addr,
    /// The host end of the session's veth pair, when it has one.
    pub veth_host: String,
}

impl Identity {
    pub fn new(machine_id: &str, sid: Sid) -> Identity {
        Identity {
            sid,
            netns: sid.netns_name(),
            mac: stable_mac(machine_id, sid),
            client_id: crate::dhcp::client_identifier(machine_id, sid.get()),
            loopback: loopback_for(sid),
            veth_host: sid.veth_host_name(),
        }
    }

    pub fn mac_text(&self) -> String {
        format_mac(&self.mac)
    }

    /// The link the session has in the host namespace (a veth's host end; a macvlan has none).
    pub fn host_link(&self, link: LinkKind) -> Option<String> {
        (link == LinkKind::Veth).then(|| self.veth_host.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_one_identity_and_slots_differ() {
        let s = |n| Sid::new(n).unwrap();
        let a = Identity::new("mid", s(4));
        assert_eq!(a, Identity::new("mid", s(4)));
        assert_eq!((a.netns.as_str(), a.loopback, a.veth_host.as_str()), ("sessiond-4", Ipv4Addr::new(127, 0, 0, 5), "sdv4"));
        assert_eq!(a.host_link(LinkKind::Veth).as_deref(), Some("sdv4"));
        assert_eq!(a.host_link(LinkKind::Macvlan), None);
        let b = Identity::new("mid", s(5));
        assert_ne!((a.mac, &a.client_id), (b.mac, &b.client_id));
        assert_ne!(a.mac, Identity::new("other-host", s(4)).mac, "the machine-id keys it");
    }
}
