//! RFC 4361 node-specific client identifier (DHCP option 61).

use sha2::{Digest, Sha256};

/// DUID type 4, DUID-UUID (RFC 6355).
const DUID_UUID: u16 = 4;
/// Domain separation so the DUID reveals nothing reusable about the machine-id
/// (systemd asks that machine-id not be exposed directly on the network).
const HASH_CONTEXT: &[u8] = b"sessiond dhcp duid v1\0";

/// The machine's DUID: DUID-UUID (RFC 6355), one per host, shared by the DHCPv4 client id
/// (RFC 4361) and the DHCPv6 client (RFC 8415 §11), as RFC 4361 intends. The UUID is the
/// first 16 bytes of SHA-256(context || trimmed, lower-cased machine-id) with RFC 9562
/// version 8 and variant bits set, so any string works and the result is stable.
pub fn duid(machine_id: &str) -> Vec<u8> {
    let digest = Sha256::new().chain_update(HASH_CONTEXT).chain_update(machine_id.trim().to_ascii_lowercase().as_bytes()).finalize();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x80; // version 8 (custom)
    uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122/9562 variant
    let mut id = Vec::with_capacity(2 + 16);
    id.extend_from_slice(&DUID_UUID.to_be_bytes());
    id.extend_from_slice(&uuid);
    id
}

/// Option 61 payload: `255 | IAID (sid, big-endian) | DUID-UUID`.
///
/// The DUID is shared by all sessions of a machine and the IAID tells sessions
/// apart, as RFC 4361 intends.
pub fn client_identifier(machine_id: &str, sid: u32) -> Vec<u8> {
    let mut id = Vec::with_capacity(1 + 4 + 2 + 16);
    id.push(255);
    id.extend_from_slice(&sid.to_be_bytes());
    id.extend_from_slice(&duid(machine_id));
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const MID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn layout() {
        let id = client_identifier(MID, 0x0102_0304);
        assert_eq!(id.len(), 23);
        assert_eq!(id[0], 255);
        assert_eq!(&id[1..5], &[1, 2, 3, 4]);
        assert_eq!(&id[5..7], &[0, 4]);
        assert_eq!(id[13] >> 4, 8, "version nibble");
        assert_eq!(id[15] >> 6, 0b10, "variant bits");
    }

    #[test]
    fn stable_per_machine_distinct_per_session() {
        let a = client_identifier(MID, 1);
        assert_eq!(a, client_identifier(&format!("{}\n", MID.to_uppercase()), 1));
        let b = client_identifier(MID, 2);
        assert_ne!(a, b);
        assert_eq!(a[5..], b[5..], "same DUID across sessions");
        let c = client_identifier("fedcba9876543210fedcba9876543210", 1);
        assert_ne!(a[5..], c[5..]);
        // Does not leak the machine-id bytes.
        assert!(!a.windows(4).any(|w| w == [0x01, 0x23, 0x45, 0x67]));
    }
}
