//! Turning received bytes into a structurally valid reply, and a reply into a lease.
//! State-dependent checks (xid, server id, message type) live in the machine.

use std::net::Ipv4Addr;

use dhcproto::{Decodable, Decoder, v4};

use super::Millis;
use super::lease::{self, Lease};
use super::options::{self as opt, RawOptions};
use super::reject::RejectReason;

/// Largest packet accepted; matches the max message size we advertise (option 57).
pub const MAX_PACKET: usize = 1500;
/// Fixed BOOTP header (236) + magic cookie (4).
const HEADER_LEN: usize = 240;
const MAGIC_OFFSET: usize = 236;

pub(crate) const OFFER: u8 = 2;
pub(crate) const ACK: u8 = 5;
pub(crate) const NAK: u8 = 6;

#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub msg_type: u8,
    pub xid: u32,
    pub hlen: u8,
    /// Raw 16-byte field; dhcproto's `chaddr()` would panic on hlen > 16.
    pub chaddr: [u8; 16],
    pub yiaddr: Ipv4Addr,
    pub opts: RawOptions,
}

impl Reply {
    pub(crate) fn chaddr_is(&self, mac: &[u8; 6]) -> bool {
        self.hlen == 6 && self.chaddr[..6] == mac[..]
    }

    /// Option 54, which must be a unicast address (see [`lease::check_server_id`]).
    pub(crate) fn server_id(&self) -> Result<Ipv4Addr, RejectReason> {
        let id = self.opts.ipv4(opt::SERVER_ID)?.ok_or(RejectReason::MissingServerId)?;
        lease::check_server_id(id)?;
        Ok(id)
    }
}

/// Structural checks only: size, BOOTREPLY, magic, well-formed options, message type present.
pub(crate) fn parse(bytes: &[u8]) -> Result<Reply, RejectReason> {
    if bytes.len() > MAX_PACKET {
        return Err(RejectReason::Oversize { len: bytes.len(), max: MAX_PACKET });
    }
    if bytes.len() < HEADER_LEN {
        return Err(RejectReason::Truncated { len: bytes.len(), min: HEADER_LEN });
    }
    // Header only: options are read strictly by `RawOptions`, and this keeps
    // dhcproto's lenient option decoder off untrusted bytes.
    let msg = v4::Message::decode(&mut Decoder::new(&bytes[..HEADER_LEN])).map_err(|e| RejectReason::Undecodable(e.to_string()))?;
    if msg.opcode() != v4::Opcode::BootReply {
        return Err(RejectReason::NotBootReply(bytes[0]));
    }
    if bytes[MAGIC_OFFSET..HEADER_LEN] != v4::MAGIC {
        return Err(RejectReason::BadMagic);
    }
    let opts = RawOptions::scan(&bytes[HEADER_LEN..], HEADER_LEN)?;
    let msg_type = opts.u8(opt::MESSAGE_TYPE)?.ok_or(RejectReason::MissingMessageType)?;
    let mut chaddr = [0u8; 16];
    chaddr.copy_from_slice(&bytes[28..44]);
    Ok(Reply { msg_type, xid: msg.xid(), hlen: bytes[2], chaddr, yiaddr: msg.yiaddr(), opts })
}

/// The DHCP message type (option 53) of a message, sent or received, if it is structurally
/// readable: for counting messages; the machine's own checks are `parse`'s.
pub fn message_type(bytes: &[u8]) -> Option<u8> {
    if bytes.len() < HEADER_LEN || bytes.len() > MAX_PACKET || bytes[MAGIC_OFFSET..HEADER_LEN] != v4::MAGIC {
        return None;
    }
    RawOptions::scan(&bytes[HEADER_LEN..], HEADER_LEN).ok()?.u8(opt::MESSAGE_TYPE).ok()?
}

/// Builds and validates the lease carried by an OFFER or ACK; its times get the floors of
/// [`lease::lease_times`] for `min_lease` seconds.
pub(crate) fn lease_from_reply(r: &Reply, acquired_at: Millis, min_lease: u32) -> Result<Lease, RejectReason> {
    let o = &r.opts;
    let server_id = r.server_id()?;
    let address = r.yiaddr;
    let prefix_len = match o.ipv4(opt::SUBNET_MASK)? {
        Some(mask) => opt::mask_to_prefix(mask).ok_or(RejectReason::BadNetmask(mask))?,
        None => lease::classful_prefix(address),
    };
    lease::check_address(address, prefix_len)?;
    if address == server_id {
        return Err(RejectReason::AddressIsServer(address));
    }
    let lease_secs = o.u32(opt::LEASE_TIME)?.ok_or(RejectReason::MissingLeaseTime)?;
    if lease_secs == 0 {
        return Err(RejectReason::ZeroLeaseTime);
    }
    let (lease_secs, t1_secs, t2_secs) = lease::lease_times(lease_secs, o.u32(opt::RENEWAL)?, o.u32(opt::REBINDING)?, min_lease);
    let mtu = o.u16(opt::MTU)?;
    if mtu.is_some_and(|m| m < 68) {
        // RFC 2132 §5.1: 68 is the minimum legal MTU.
        return Err(RejectReason::MalformedOption { code: opt::MTU, why: "MTU below 68" });
    }
    let classless_routes = match o.get(opt::CLASSLESS_ROUTES) {
        Some(data) => opt::classless_routes(data)?,
        None => Vec::new(),
    };
    let lease = Lease {
        address,
        prefix_len,
        server_id,
        routers: o.ipv4_list(opt::ROUTER)?,
        classless_routes,
        dns: o.ipv4_list(opt::DNS)?,
        domain: o.string(opt::DOMAIN_NAME)?,
        search: o.get(opt::DOMAIN_SEARCH).map(opt::domain_search).unwrap_or_default(),
        mtu,
        broadcast: o.ipv4(opt::BROADCAST)?,
        lease_secs,
        t1_secs,
        t2_secs,
        acquired_at,
    };
    // Belt and braces: the same rules a persisted lease must pass.
    lease.validate()?;
    Ok(lease)
}
