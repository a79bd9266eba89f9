//! Stable per-slot MAC addresses: the same (machine-id, sid) always gets the same MAC,
//! so the LAN's DHCP server and ARP caches see one identity per session slot.
use sha2::{Digest, Sha256};

use crate::sid::Sid;

/// Locally administered (bit 1 of the first octet set), unicast (bit 0 clear).
pub fn stable_mac(machine_id: &str, sid: Sid) -> [u8; 6] {
    hashed_mac(b"sessiond-mac\0", machine_id, &sid.get().to_be_bytes())
}

/// The host-side shim's MAC (`shim`): stable per machine, and never a session's (another label).
pub fn shim_mac(machine_id: &str) -> [u8; 6] {
    hashed_mac(b"sessiond-shim\0", machine_id, &[])
}

/// SHA-256 of (label, machine-id, extra), made locally administered and unicast.
fn hashed_mac(label: &[u8], machine_id: &str, extra: &[u8]) -> [u8; 6] {
    let mut h = Sha256::new();
    h.update(label);
    h.update(machine_id.trim().as_bytes());
    h.update(extra);
    let d = h.finalize();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&d[..6]);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The machine-id (systemd's /etc/machine-id, else D-Bus's), which keys every stable identity.
pub fn read_machine_id() -> std::io::Result<String> {
    let id = std::fs::read_to_string("/etc/machine-id").or_else(|_| std::fs::read_to_string("/var/lib/dbus/machine-id"))?;
    let id = id.trim().to_string();
    if id.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "machine-id is empty"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_local_unicast_and_distinct() {
        let s1 = Sid::new(1).unwrap();
        let s2 = Sid::new(2).unwrap();
        let a = stable_mac("3d1219c7c4c5404aaa1f6d2a48adfda4", s1);
        assert_eq!(a, stable_mac("3d1219c7c4c5404aaa1f6d2a48adfda4\n", s1));
        assert_ne!(a, stable_mac("3d1219c7c4c5404aaa1f6d2a48adfda4", s2));
        assert_ne!(a, stable_mac("00000000000000000000000000000000", s1));
        for n in 1..2000u64 {
            let m = stable_mac("abc", Sid::new(n).unwrap());
            assert_eq!(m[0] & 0x01, 0, "multicast bit set for sid {n}");
            assert_eq!(m[0] & 0x02, 0x02, "not locally administered for sid {n}");
        }
        assert_eq!(format_mac(&[0x02, 0, 0xab, 1, 2, 0xff]), "02:00:ab:01:02:ff");
    }
}
