//! Feeds arbitrary bytes to a `Client` driven into each state.
//!
//! Input: byte 0 picks the state (low 3 bits) and whether to patch the packet
//! header with the live xid/chaddr/magic (bit 3) so the fuzzer gets past the
//! transaction checks into option and lease validation. The rest is the packet.

#![no_main]

use std::net::Ipv4Addr;

use dhcproto::{Decodable, Decoder, Encodable, Encoder, v4};
use libfuzzer_sys::fuzz_target;
use sessiond::dhcp::{Action, Client, ClientConfig, DEFAULT_MIN_LEASE_SECS, Event, Lease, State, client_identifier};

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const T0: u64 = 1_700_000_000_000;

fn reply(request: &[u8], kind: v4::MessageType) -> Vec<u8> {
    let req = v4::Message::decode(&mut Decoder::new(request)).expect("client message decodes");
    let mut m = v4::Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(10, 0, 0, 50),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &MAC,
    );
    m.set_opcode(v4::Opcode::BootReply);
    let o = m.opts_mut();
    o.insert(v4::DhcpOption::MessageType(kind));
    o.insert(v4::DhcpOption::ServerIdentifier(SERVER));
    o.insert(v4::DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    o.insert(v4::DhcpOption::AddressLeaseTime(600));
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).expect("encode");
    buf
}

fn last_send(actions: &[Action]) -> Option<Vec<u8>> {
    actions.iter().rev().find_map(|a| match a {
        Action::Send { bytes, .. } => Some(bytes.clone()),
        _ => None,
    })
}

/// Returns the client, the time to use, and its last outgoing message.
fn drive(state: u8) -> (Client, u64, Vec<u8>) {
    let cfg = ClientConfig {
        mac: MAC,
        client_id: client_identifier("0123456789abcdef0123456789abcdef", 1),
        hostname: Some("fuzz".into()),
        fqdn: false,
        seed: 1,
        min_lease_secs: DEFAULT_MIN_LEASE_SECS,
    };
    let mut c = Client::new(cfg);
    let mut now = T0;
    if state == 5 {
        let lease = Lease {
            address: Ipv4Addr::new(10, 0, 0, 50),
            prefix_len: 24,
            server_id: SERVER,
            routers: vec![],
            classless_routes: vec![],
            dns: vec![],
            domain: None,
            search: vec![],
            mtu: None,
            broadcast: None,
            lease_secs: 600,
            t1_secs: 300,
            t2_secs: 525,
            acquired_at: T0,
        };
        let a = c.on_event(Event::StartWithLease(lease), now);
        return (c, now, last_send(&a).unwrap_or_default());
    }
    let mut sent = last_send(&c.on_event(Event::Start, now)).unwrap_or_default();
    if state >= 1 {
        now += 10;
        sent = last_send(&c.on_event(Event::Packet { bytes: reply(&sent, v4::MessageType::Offer) }, now)).unwrap_or_default();
    }
    if state >= 2 {
        now += 10;
        c.on_event(Event::Packet { bytes: reply(&sent, v4::MessageType::Ack) }, now);
        assert_eq!(c.state(), State::Bound);
    }
    if state >= 3 {
        // 3: RENEWING at T1, 4: REBINDING at T2.
        let lease = c.lease().expect("bound").clone();
        now = if state == 3 { lease.renew_at() } else { lease.rebind_at() }.expect("finite lease");
        sent = last_send(&c.on_event(Event::Timer, now)).unwrap_or(sent);
        assert_eq!(c.state(), if state == 3 { State::Renewing } else { State::Rebinding });
    }
    (c, now, sent)
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, packet)) = data.split_first() else { return };
    let (mut c, now, sent) = drive((ctl & 7) % 6);
    let mut packet = packet.to_vec();
    if ctl & 8 != 0 && packet.len() >= 240 && sent.len() >= 44 {
        packet[0] = 2; // BOOTREPLY
        packet[2] = 6; // hlen
        packet[4..8].copy_from_slice(&sent[4..8]); // xid
        packet[28..34].copy_from_slice(&MAC);
        packet[236..240].copy_from_slice(&v4::MAGIC);
    }
    let now = now + 1;
    for ev in [Event::Packet { bytes: packet }, Event::Timer] {
        for a in c.on_event(ev, now) {
            match a {
                Action::SetTimer(t) => assert!(t >= now, "timer in the past"),
                Action::ApplyLease { lease, .. } => assert!(lease.validate().is_ok(), "applied invalid lease"),
                _ => {}
            }
        }
        if let Some(l) = c.lease() {
            assert!(l.validate().is_ok());
        }
    }
});
