//! RFC 8415 §16, "Message Validation", the part that needs no state: size, decoding, the
//! message type, and the options a client reads out of an Advertise or a Reply. What depends
//! on the exchange (transaction id, client and server identifiers, status codes) is checked
//! by the machine.

use std::net::Ipv6Addr;

use dhcproto::v6::{self, DhcpOption, MessageType, OptionCode, Status};
use dhcproto::{Decodable, Decoder};

use super::reject::RejectReason;

/// Largest message accepted: the minimum IPv6 MTU less the IPv6 and UDP headers. A server's
/// reply to one client with one address and a few options is far smaller.
pub const MAX_MESSAGE: usize = 1280 - 40 - 8;

/// Advertise or Reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Advertise,
    Reply,
}

/// One IA Address option (§21.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IaAddress {
    pub addr: Ipv6Addr,
    pub preferred: u32,
    pub valid: u32,
}

/// One IA_NA option (§21.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IaNa {
    pub iaid: u32,
    pub t1: u32,
    pub t2: u32,
    pub status: Option<(Status, String)>,
    pub addresses: Vec<IaAddress>,
}

/// A structurally valid Advertise or Reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub kind: Kind,
    pub xid: u32,
    pub client_id: Option<Vec<u8>>,
    pub server_id: Option<Vec<u8>>,
    /// §21.8; 0 when absent.
    pub preference: u8,
    pub rapid_commit: bool,
    /// The message's own Status Code (§21.13), if any.
    pub status: Option<(Status, String)>,
    pub ia_na: Vec<IaNa>,
    pub dns: Vec<Ipv6Addr>,
    pub search: Vec<String>,
    pub refresh_secs: Option<u32>,
}

fn status_of(opts: &v6::DhcpOptions) -> Option<(Status, String)> {
    opts.iter().find_map(|o| if let DhcpOption::StatusCode(s) = o { Some((s.status, s.msg.clone())) } else { None })
}

/// The options in `area` (RFC 8415 §21.1: code, length, data), and those nested in them, are
/// well formed: each within its parent, each at least as long as its fixed part. dhcproto
/// reads a Status Code's, a Vendor Class's and Vendor Options' fixed part from the message
/// rather than the option and then subtracts it from the option's length: a short one would
/// make it panic (debug) or read past the option. Relay messages are refused: a server
/// never sends one to a client.
fn well_formed(area: &[u8], depth: u8) -> Result<(), RejectReason> {
    let mut rest = area;
    while !rest.is_empty() {
        let bad = |code: u16, why| RejectReason::MalformedOption { code, why };
        if rest.len() < 4 {
            return Err(bad(0, "truncated option header"));
        }
        let code = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let data = rest.get(4..4 + len).ok_or(bad(code, "overruns its container"))?;
        // (fixed part, whether options follow it)
        let (fixed, nested) = match code {
            3 | 25 => (12, true), // IA_NA, IA_PD
            4 => (4, true),       // IA_TA
            5 => (24, true),      // IA Address
            26 => (25, true),     // IA Prefix
            17 => (4, true),      // Vendor Options
            13 => (2, false),     // Status Code
            16 => (4, false),     // Vendor Class
            9 => return Err(bad(code, "a relay message in a reply to a client")),
            _ => (0, false),
        };
        if len < fixed {
            return Err(bad(code, "shorter than its fixed part"));
        }
        if nested {
            if depth >= 4 {
                return Err(bad(code, "nested too deep"));
            }
            well_formed(&data[fixed..], depth + 1)?;
        }
        rest = &rest[4 + len..];
    }
    Ok(())
}

/// Decodes `bytes`: an Advertise or a Reply, or why not.
pub fn parse(bytes: &[u8]) -> Result<Incoming, RejectReason> {
    if bytes.len() > MAX_MESSAGE {
        return Err(RejectReason::Oversize { len: bytes.len(), max: MAX_MESSAGE });
    }
    if bytes.len() < 4 {
        return Err(RejectReason::Undecodable(format!("{} bytes: shorter than a message header", bytes.len())));
    }
    well_formed(&bytes[4..], 0)?;
    let msg = v6::Message::decode(&mut Decoder::new(bytes)).map_err(|e| RejectReason::Undecodable(e.to_string()))?;
    let kind = match msg.msg_type() {
        MessageType::Advertise => Kind::Advertise,
        MessageType::Reply => Kind::Reply,
        other => return Err(RejectReason::NotForClient(other)),
    };
    let opts = msg.opts();
    let bytes_of = |code| match opts.get(code) {
        Some(DhcpOption::ClientId(b)) | Some(DhcpOption::ServerId(b)) => Some(b.clone()),
        _ => None,
    };
    let ia_na = opts
        .iter()
        .filter_map(|o| if let DhcpOption::IANA(ia) = o { Some(ia) } else { None })
        .map(|ia| IaNa {
            iaid: ia.id,
            t1: ia.t1,
            t2: ia.t2,
            status: status_of(&ia.opts),
            addresses: ia
                .opts
                .iter()
                .filter_map(|o| {
                    if let DhcpOption::IAAddr(a) = o { Some(IaAddress { addr: a.addr, preferred: a.preferred_life, valid: a.valid_life }) } else { None }
                })
                .collect(),
        })
        .collect();
    Ok(Incoming {
        kind,
        xid: msg.xid_num(),
        client_id: bytes_of(OptionCode::ClientId),
        server_id: bytes_of(OptionCode::ServerId),
        preference: match opts.get(OptionCode::Preference) {
            Some(DhcpOption::Preference(p)) => *p,
            _ => 0,
        },
        rapid_commit: opts.get(OptionCode::RapidCommit).is_some(),
        status: status_of(opts),
        ia_na,
        dns: match opts.get(OptionCode::DomainNameServers) {
            Some(DhcpOption::DomainNameServers(d)) => d.iter().copied().filter(|a| !a.is_unspecified() && !a.is_multicast()).collect(),
            _ => vec![],
        },
        search: match opts.get(OptionCode::DomainSearchList) {
            Some(DhcpOption::DomainSearchList(names)) => {
                names.iter().map(|n| n.to_utf8().trim_end_matches('.').to_string()).filter(|n| !n.is_empty()).collect()
            }
            _ => vec![],
        },
        // dhcproto encodes option 32 but decodes it as unknown: read its 4 bytes here.
        refresh_secs: opts.iter().find_map(|o| match o {
            DhcpOption::InformationRefreshTime(t) => Some(*t),
            DhcpOption::Unknown(u) if u.code() == OptionCode::InformationRefreshTime => <[u8; 4]>::try_from(u.data()).ok().map(u32::from_be_bytes),
            _ => None,
        }),
    })
}
