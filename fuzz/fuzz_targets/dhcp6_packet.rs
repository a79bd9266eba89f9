//! Feeds arbitrary bytes to a DHCPv6 `Client` driven into each state.
//!
//! Input: byte 0 picks the state (low 3 bits) and whether to patch the message with the live
//! transaction id (bit 3) so the fuzzer gets past the transaction check into the identifier,
//! status, IA and lifetime validation. The rest is the message.

#![no_main]

use dhcproto::v6::{self, DhcpOption, IAAddr, IANA, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use libfuzzer_sys::fuzz_target;
use sessiond::dhcp6::{Action, Client, ClientConfig, Event, Lease, State};

const T0: u64 = 1_700_000_000_000;
const SERVER: [u8; 10] = [0, 3, 0, 1, 2, 0, 0, 0, 0, 0x53];

fn duid() -> Vec<u8> {
    sessiond::dhcp::duid("0123456789abcdef0123456789abcdef")
}

fn reply(request: &[u8], kind: MessageType) -> Vec<u8> {
    let req = v6::Message::decode(&mut Decoder::new(request)).expect("client message decodes");
    let mut m = v6::Message::new_with_id(kind, req.xid());
    let o = m.opts_mut();
    o.insert(DhcpOption::ClientId(duid()));
    o.insert(DhcpOption::ServerId(SERVER.to_vec()));
    if let Some(DhcpOption::IANA(ia)) = req.opts().get(OptionCode::IANA) {
        let mut opts = v6::DhcpOptions::new();
        opts.insert(DhcpOption::IAAddr(IAAddr { addr: "2001:db8::5".parse().unwrap(), preferred_life: 300, valid_life: 600, opts: v6::DhcpOptions::new() }));
        o.insert(DhcpOption::IANA(IANA { id: ia.id, t1: 150, t2: 240, opts }));
    }
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).expect("encode");
    buf
}

fn last_send(actions: &[Action]) -> Option<Vec<u8>> {
    actions.iter().rev().find_map(|a| if let Action::Send { bytes } = a { Some(bytes.clone()) } else { None })
}

/// Returns the client, the time to use, and its last outgoing message.
fn drive(state: u8) -> (Client, u64, Vec<u8>) {
    let mut c = Client::new(ClientConfig { duid: duid(), iaid: 1, seed: 1, min_renew_secs: 2, rapid_commit: true });
    let mut now = T0;
    if state == 5 {
        let lease = Lease {
            address: "2001:db8::5".parse().unwrap(),
            preferred_secs: 300,
            valid_secs: 600,
            t1_secs: 150,
            t2_secs: 240,
            iaid: 1,
            server_id: SERVER.to_vec(),
            dns: vec![],
            search: vec![],
            acquired_at: T0,
        };
        let a = c.on_event(Event::StartWithLease(lease), now);
        return (c, now, last_send(&a).unwrap_or_default());
    }
    if state == 6 {
        let a = c.on_event(Event::StartInformation, now);
        return (c, now, last_send(&a).unwrap_or_default());
    }
    let mut sent = last_send(&c.on_event(Event::Start, now)).unwrap_or_default();
    if state >= 1 {
        now += 10;
        c.on_event(Event::Packet { bytes: reply(&sent, MessageType::Advertise) }, now);
        now = c.timer().expect("collecting Advertises");
        sent = last_send(&c.on_event(Event::Timer, now)).unwrap_or_default();
    }
    if state >= 2 {
        now += 10;
        c.on_event(Event::Packet { bytes: reply(&sent, MessageType::Reply) }, now);
        assert_eq!(c.state(), State::Bound);
    }
    if state >= 3 {
        // 3: Renewing at T1, 4: Rebinding at T2.
        let lease = c.lease().expect("bound").clone();
        now = if state == 3 { lease.renew_at() } else { lease.rebind_at() }.expect("finite lease");
        if state == 4 {
            c.on_event(Event::Timer, lease.renew_at().unwrap());
        }
        sent = last_send(&c.on_event(Event::Timer, now)).unwrap_or(sent);
    }
    (c, now, sent)
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, packet)) = data.split_first() else { return };
    let (mut c, now, sent) = drive((ctl & 7) % 7);
    let mut packet = packet.to_vec();
    if ctl & 8 != 0 && packet.len() >= 4 && sent.len() >= 4 {
        packet[1..4].copy_from_slice(&sent[1..4]); // transaction id
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
