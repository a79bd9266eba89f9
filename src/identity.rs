//! Everything a session slot is called, derived once from (machine-id, sid): the same slot has
//! the same names, MAC, DHCP client id and IPv6 stable secret on every start, daemon restart
//! and reboot.
use std::net::{Ipv4Addr, Ipv6Addr};

use sha2::{Digest, Sha256};

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
    /// The namespace's RFC 7217 `stable_secret`: the key of its stable IPv6 interface ids.
    pub stable_secret: Ipv6Addr,
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
            stable_secret: stable_secret(machine_id, sid),
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

/// The slot's RFC 7217 secret: SHA-256 keyed by the machine-id (which stays on the host and
/// is not derivable from anything the LAN sees), over a label and the sid. The kernel hashes it
/// with the prefix and the MAC into the interface id, so the LAN never learns the secret, the
/// slot keeps its address, and two slots (or two hosts) never share one.
pub fn stable_secret(machine_id: &str, sid: Sid) -> Ipv6Addr {
    let mut h = Sha256::new();
    h.update(b"sessiond-ipv6-stable-secret\0");
    h.update(machine_id.trim().as_bytes());
    h.update(b"\0");
    h.update(sid.get().to_be_bytes());
    let d = h.finalize();
    let mut secret = [0u8; 16];
    secret.copy_from_slice(&d[..16]);
    Ipv6Addr::from(secret)
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

    #[test]
    fn stable_secret_is_per_slot_and_keyed_by_the_machine() {
        let s = |n| Sid::new(n).unwrap();
        let a = stable_secret("3d1219c7c4c5404aaa1f6d2a48adfda4", s(4));
        assert_eq!(a, stable_secret("3d1219c7c4c5404aaa1f6d2a48adfda4\n", s(4)), "same slot, same secret");
        assert_eq!(a, Identity::new("3d1219c7c4c5404aaa1f6d2a48adfda4", s(4)).stable_secret);
        assert_ne!(a, stable_secret("00000000000000000000000000000000", s(4)), "the machine-id keys it");
        let all: std::collections::HashSet<Ipv6Addr> = (1..5000).map(|n| stable_secret("mid", s(n))).collect();
        assert_eq!(all.len(), 4999, "two sids never share a secret");
    }
}
