//! Building the client's outgoing messages with dhcproto.

use std::net::Ipv4Addr;

use dhcproto::{Encodable, Encoder, v4};

use super::machine::ClientConfig;

/// Advertised in option 57; equals the largest reply we accept.
pub const MAX_MESSAGE_SIZE: u16 = 1500;
/// RFC 1542 §2.1: some relays/servers drop BOOTP messages shorter than 300 bytes.
const MIN_LEN: usize = 300;

/// Options requested in option 55.
pub const PARAMETER_REQUEST_LIST: [v4::OptionCode; 12] = [
    v4::OptionCode::SubnetMask,
    v4::OptionCode::Router,
    v4::OptionCode::DomainNameServer,
    v4::OptionCode::DomainName,
    v4::OptionCode::InterfaceMtu,
    v4::OptionCode::BroadcastAddr,
    v4::OptionCode::AddressLeaseTime,
    v4::OptionCode::ServerIdentifier,
    v4::OptionCode::Renewal,
    v4::OptionCode::Rebinding,
    v4::OptionCode::DomainSearch,
    v4::OptionCode::ClasslessStaticRoute,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Discover,
    Request,
    Release,
    Decline,
}

/// Fields that vary between the client's messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outgoing {
    pub kind: Kind,
    pub xid: u32,
    pub secs: u16,
    pub ciaddr: Ipv4Addr,
    pub broadcast_flag: bool,
    /// Option 50.
    pub requested: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
}

pub(crate) fn encode(o: &Outgoing, cfg: &ClientConfig) -> Vec<u8> {
    let mut msg = v4::Message::new_with_id(o.xid, o.ciaddr, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, &cfg.mac);
    msg.set_secs(o.secs);
    if o.broadcast_flag {
        msg.set_flags(v4::Flags::default().set_broadcast());
    }
    let opts = msg.opts_mut();
    opts.insert(v4::DhcpOption::MessageType(match o.kind {
        Kind::Discover => v4::MessageType::Discover,
        Kind::Request => v4::MessageType::Request,
        Kind::Release => v4::MessageType::Release,
        Kind::Decline => v4::MessageType::Decline,
    }));
    // RFC 4361 §6.1 / RFC 2132 §9.14: option 61 must be at least 2 bytes.
    if cfg.client_id.len() >= 2 {
        opts.insert(v4::DhcpOption::ClientIdentifier(cfg.client_id.clone()));
    }
    if let Some(ip) = o.requested {
        opts.insert(v4::DhcpOption::RequestedIpAddress(ip));
    }
    if let Some(ip) = o.server_id {
        opts.insert(v4::DhcpOption::ServerIdentifier(ip));
    }
    // RFC 2131 table 5: DHCPRELEASE and DHCPDECLINE carry no hostname, PRL or size options.
    if !matches!(o.kind, Kind::Release | Kind::Decline) {
        if let Some(h) = cfg.hostname.as_deref().filter(|h| !h.is_empty()) {
            match cfg.fqdn.then(|| <dhcproto::Name as std::str::FromStr>::from_str(h)) {
                // S: ask the server to register the A record; E: canonical wire encoding.
                Some(Ok(name)) => {
                    let flags = v4::fqdn::FqdnFlags::default().set_s(true).set_e(true);
                    opts.insert(v4::DhcpOption::ClientFQDN(v4::fqdn::ClientFQDN::new(flags, name)));
                }
                // Not a valid domain name: fall back to option 12, which takes any text.
                _ => {
                    opts.insert(v4::DhcpOption::Hostname(h.to_owned()));
                }
            }
        }
        opts.insert(v4::DhcpOption::ParameterRequestList(PARAMETER_REQUEST_LIST.to_vec()));
        opts.insert(v4::DhcpOption::MaxMessageSize(MAX_MESSAGE_SIZE));
    }
    let mut buf = Vec::with_capacity(MIN_LEN);
    msg.encode(&mut Encoder::new(&mut buf))
        // Only sname/fname overflow or name encoding can fail; none are used here.
        .expect("encoding a client message into a Vec cannot fail");
    if buf.len() < MIN_LEN {
        buf.resize(MIN_LEN, 0); // PAD options after END
    }
    buf
}

#[cfg(test)]
mod name_option_tests {
    use dhcproto::{Decodable, Decoder, v4};

    use crate::dhcp::tests_support::discover_bytes;

    #[test]
    fn hostname_or_fqdn_never_both() {
        let plain = v4::Message::decode(&mut Decoder::new(&discover_bytes(false))).unwrap();
        assert!(plain.opts().get(v4::OptionCode::Hostname).is_some());
        assert!(plain.opts().get(v4::OptionCode::ClientFQDN).is_none());
        let fqdn = v4::Message::decode(&mut Decoder::new(&discover_bytes(true))).unwrap();
        assert!(fqdn.opts().get(v4::OptionCode::Hostname).is_none());
        match fqdn.opts().get(v4::OptionCode::ClientFQDN) {
            Some(v4::DhcpOption::ClientFQDN(f)) => {
                assert_eq!(f.domain().to_string().trim_end_matches('.'), "ts1-s7");
                assert!(f.flags().s() && f.flags().e());
            }
            other => panic!("no option 81: {other:?}"),
        }
    }
}
