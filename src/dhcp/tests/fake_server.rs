//! A fake DHCP server: decodes the client's messages and builds replies with dhcproto.

use std::net::Ipv4Addr;

use dhcproto::{Decodable, Decoder, Encodable, Encoder, v4};

/// Everything a reply may carry; `None`/empty fields are omitted.
#[derive(Clone, Debug)]
pub struct ServerParams {
    pub server_id: Option<Ipv4Addr>,
    pub yiaddr: Ipv4Addr,
    pub mask: Option<Ipv4Addr>,
    pub lease_secs: Option<u32>,
    pub t1: Option<u32>,
    pub t2: Option<u32>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub mtu: Option<u16>,
    pub broadcast: Option<Ipv4Addr>,
    /// Raw option 121 payload.
    pub classless: Option<Vec<u8>>,
    /// Raw options added last (overriding typed ones with the same code).
    pub raw: Vec<(u8, Vec<u8>)>,
}

pub const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
pub const ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 50);

impl Default for ServerParams {
    fn default() -> Self {
        Self {
            server_id: Some(SERVER),
            yiaddr: ADDR,
            mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            lease_secs: Some(3600),
            t1: None,
            t2: None,
            routers: vec![SERVER],
            dns: vec![Ipv4Addr::new(192, 168, 1, 2), Ipv4Addr::new(192, 168, 1, 3)],
            domain: Some("lan".into()),
            search: vec!["eng.example.com".into(), "example.com".into()],
            mtu: Some(1500),
            broadcast: Some(Ipv4Addr::new(192, 168, 1, 255)),
            classless: None,
            raw: vec![],
        }
    }
}

pub fn decode(bytes: &[u8]) -> v4::Message {
    v4::Message::decode(&mut Decoder::new(bytes)).expect("client sent an undecodable message")
}

pub fn encode(msg: &v4::Message) -> Vec<u8> {
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

/// A reply to `request` (same xid and chaddr) of message type `kind`.
pub fn reply_msg(request: &[u8], kind: v4::MessageType, p: &ServerParams) -> v4::Message {
    let req = decode(request);
    let mut m = v4::Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        if kind == v4::MessageType::Nak { Ipv4Addr::UNSPECIFIED } else { p.yiaddr },
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.chaddr(),
    );
    m.set_opcode(v4::Opcode::BootReply).set_flags(req.flags());
    let o = m.opts_mut();
    o.insert(v4::DhcpOption::MessageType(kind));
    if let Some(s) = p.server_id {
        o.insert(v4::DhcpOption::ServerIdentifier(s));
    }
    if kind != v4::MessageType::Nak {
        if let Some(x) = p.mask {
            o.insert(v4::DhcpOption::SubnetMask(x));
        }
        if let Some(x) = p.lease_secs {
            o.insert(v4::DhcpOption::AddressLeaseTime(x));
        }
        if let Some(x) = p.t1 {
            o.insert(v4::DhcpOption::Renewal(x));
        }
        if let Some(x) = p.t2 {
            o.insert(v4::DhcpOption::Rebinding(x));
        }
        if !p.routers.is_empty() {
            o.insert(v4::DhcpOption::Router(p.routers.clone()));
        }
        if !p.dns.is_empty() {
            o.insert(v4::DhcpOption::DomainNameServer(p.dns.clone()));
        }
        if let Some(x) = &p.domain {
            o.insert(v4::DhcpOption::DomainName(x.clone()));
        }
        if !p.search.is_empty() {
            let names = p.search.iter().map(|s| format!("{s}.").parse::<dhcproto::Name>().unwrap()).collect();
            o.insert(v4::DhcpOption::DomainSearch(names));
        }
        if let Some(x) = p.mtu {
            o.insert(v4::DhcpOption::InterfaceMtu(x));
        }
        if let Some(x) = p.broadcast {
            o.insert(v4::DhcpOption::BroadcastAddr(x));
        }
        if let Some(x) = &p.classless {
            o.insert(raw(121, x.clone()));
        }
    }
    for (code, data) in &p.raw {
        o.insert(raw(*code, data.clone()));
    }
    m
}

fn raw(code: u8, data: Vec<u8>) -> v4::DhcpOption {
    v4::DhcpOption::Unknown(v4::UnknownOption::new(v4::OptionCode::from(code), data))
}

pub fn offer(request: &[u8], p: &ServerParams) -> Vec<u8> {
    encode(&reply_msg(request, v4::MessageType::Offer, p))
}

pub fn ack(request: &[u8], p: &ServerParams) -> Vec<u8> {
    encode(&reply_msg(request, v4::MessageType::Ack, p))
}

pub fn nak(request: &[u8], p: &ServerParams) -> Vec<u8> {
    encode(&reply_msg(request, v4::MessageType::Nak, p))
}

#[test]
fn fake_server_roundtrip() {
    // Sanity check of the helper itself against a hand-made request.
    let mut req = v4::Message::new_with_id(7, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, &[1, 2, 3, 4, 5, 6]);
    req.opts_mut().insert(v4::DhcpOption::MessageType(v4::MessageType::Discover));
    let o = decode(&offer(&encode(&req), &ServerParams { classless: Some(vec![8, 10, 1, 2, 3, 4]), ..Default::default() }));
    assert_eq!(o.opcode(), v4::Opcode::BootReply);
    assert_eq!(o.xid(), 7);
    assert_eq!(o.chaddr(), &[1, 2, 3, 4, 5, 6]);
    assert_eq!(o.opts().msg_type(), Some(v4::MessageType::Offer));
    assert_eq!(
        o.opts().get(v4::OptionCode::ClasslessStaticRoute),
        Some(&v4::DhcpOption::ClasslessStaticRoute(vec![("10.0.0.0/8".parse().unwrap(), Ipv4Addr::new(1, 2, 3, 4))]))
    );
}
