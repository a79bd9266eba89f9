//! A scriptable DHCPv6 server: the Advertise or Reply it would send to a client message.

use std::net::Ipv6Addr;

use dhcproto::v6::{self, DhcpOption, IAAddr, IANA, MessageType, OptionCode, Status, StatusCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder, Name};

pub const SERVER_DUID: [u8; 10] = [0, 3, 0, 1, 2, 0, 0, 0, 0, 0x53];
pub const DNS: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53);

/// What the server puts in its answer; `Default` is a well-behaved server.
#[derive(Clone, Debug)]
pub struct Answer {
    pub address: Ipv6Addr,
    pub preferred: u32,
    pub valid: u32,
    pub t1: u32,
    pub t2: u32,
    pub server_id: Option<Vec<u8>>,
    /// None: echo the client's.
    pub client_id: Option<Vec<u8>>,
    pub xid_delta: u32,
    pub iaid_delta: u32,
    pub status: Option<Status>,
    pub ia_status: Option<Status>,
    pub preference: Option<u8>,
    pub rapid_commit: bool,
    pub refresh: Option<u32>,
    pub no_ia: bool,
}

impl Default for Answer {
    fn default() -> Answer {
        Answer {
            address: "2001:db8:77::1:5".parse().unwrap(),
            preferred: 300,
            valid: 600,
            t1: 150,
            t2: 240,
            server_id: Some(SERVER_DUID.to_vec()),
            client_id: None,
            xid_delta: 0,
            iaid_delta: 0,
            status: None,
            ia_status: None,
            preference: None,
            rapid_commit: false,
            refresh: None,
            no_ia: false,
        }
    }
}

pub fn decode(bytes: &[u8]) -> v6::Message {
    v6::Message::decode(&mut Decoder::new(bytes)).expect("a client message decodes")
}

pub fn client_id(m: &v6::Message) -> Vec<u8> {
    match m.opts().get(OptionCode::ClientId) {
        Some(DhcpOption::ClientId(c)) => c.clone(),
        _ => panic!("no client id in {m:?}"),
    }
}

pub fn server_id(m: &v6::Message) -> Option<Vec<u8>> {
    match m.opts().get(OptionCode::ServerId) {
        Some(DhcpOption::ServerId(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The IA_NA of a client message: (iaid, its address if any).
pub fn ia(m: &v6::Message) -> Option<(u32, Option<Ipv6Addr>)> {
    match m.opts().get(OptionCode::IANA) {
        Some(DhcpOption::IANA(ia)) => Some((ia.id, ia.opts.iter().find_map(|o| if let DhcpOption::IAAddr(a) = o { Some(a.addr) } else { None }))),
        _ => None,
    }
}

/// The server's answer of `kind` to the client message `request`.
pub fn answer(request: &[u8], kind: MessageType, a: &Answer) -> Vec<u8> {
    let req = decode(request);
    let mut m = v6::Message::new_with_id(kind, [0; 3]);
    m.set_xid_num(req.xid_num().wrapping_add(a.xid_delta) & 0x00ff_ffff);
    let o = m.opts_mut();
    o.insert(DhcpOption::ClientId(a.client_id.clone().unwrap_or_else(|| client_id(&req))));
    if let Some(s) = &a.server_id {
        o.insert(DhcpOption::ServerId(s.clone()));
    }
    if let Some(s) = a.status {
        o.insert(DhcpOption::StatusCode(StatusCode { status: s, msg: "top".into() }));
    }
    if let (Some((iaid, _)), false) = (ia(&req), a.no_ia) {
        let mut opts = v6::DhcpOptions::new();
        if let Some(s) = a.ia_status {
            opts.insert(DhcpOption::StatusCode(StatusCode { status: s, msg: "ia".into() }));
        } else {
            opts.insert(DhcpOption::IAAddr(IAAddr { addr: a.address, preferred_life: a.preferred, valid_life: a.valid, opts: v6::DhcpOptions::new() }));
        }
        o.insert(DhcpOption::IANA(IANA { id: iaid.wrapping_add(a.iaid_delta), t1: a.t1, t2: a.t2, opts }));
    }
    if let Some(p) = a.preference {
        o.insert(DhcpOption::Preference(p));
    }
    if a.rapid_commit {
        o.insert(DhcpOption::RapidCommit);
    }
    if let Some(r) = a.refresh {
        o.insert(DhcpOption::InformationRefreshTime(r));
    }
    o.insert(DhcpOption::DomainNameServers(vec![DNS]));
    o.insert(DhcpOption::DomainSearchList(vec!["lan.example.".parse::<Name>().unwrap()]));
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).expect("encode");
    buf
}
