//! The messages the client sends (RFC 8415 §18.2: what each carries).

use std::net::Ipv6Addr;

use dhcproto::v6::{self, DhcpOption, IAAddr, IANA, MessageType, ORO, OptionCode};
use dhcproto::{Encodable, Encoder};

/// Options every message asks for (§21.7): DNS servers (23) and the search list (24).
pub const REQUESTED: [OptionCode; 2] = [OptionCode::DomainNameServers, OptionCode::DomainSearchList];

/// What goes into one message.
#[derive(Clone, Debug)]
pub struct Outgoing<'a> {
    pub kind: MessageType,
    pub xid: u32,
    pub duid: &'a [u8],
    /// Hundredths of a second since the exchange began (§21.9).
    pub elapsed: u16,
    /// The IA_NA to carry (none in an Information-Request), with the address held, if any.
    pub ia: Option<(u32, Option<Ipv6Addr>)>,
    /// The server asked (Request, Renew, Release).
    pub server_id: Option<&'a [u8]>,
    pub rapid_commit: bool,
}

pub fn encode(m: &Outgoing<'_>) -> Vec<u8> {
    let mut msg = v6::Message::new_with_id(m.kind, [0; 3]);
    msg.set_xid_num(m.xid & 0x00ff_ffff);
    let o = msg.opts_mut();
    o.insert(DhcpOption::ClientId(m.duid.to_vec()));
    if let Some(s) = m.server_id {
        o.insert(DhcpOption::ServerId(s.to_vec()));
    }
    o.insert(DhcpOption::ElapsedTime(m.elapsed));
    if let Some((iaid, addr)) = m.ia {
        let mut opts = v6::DhcpOptions::new();
        if let Some(addr) = addr {
            // §18.2: lifetimes and T1/T2 are 0 in what the client sends; the server decides.
            opts.insert(DhcpOption::IAAddr(IAAddr { addr, preferred_life: 0, valid_life: 0, opts: v6::DhcpOptions::new() }));
        }
        o.insert(DhcpOption::IANA(IANA { id: iaid, t1: 0, t2: 0, opts }));
    }
    if m.rapid_commit {
        o.insert(DhcpOption::RapidCommit);
    }
    let mut wanted = REQUESTED.to_vec();
    if m.kind == MessageType::InformationRequest {
        wanted.push(OptionCode::InformationRefreshTime);
    }
    // Release carries no ORO (§18.2.7).
    if m.kind != MessageType::Release {
        o.insert(DhcpOption::ORO(ORO { opts: wanted }));
    }
    let mut buf = Vec::with_capacity(128);
    msg.encode(&mut Encoder::new(&mut buf)).expect("a client message always encodes");
    buf
}
