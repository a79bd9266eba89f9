//! Shared helpers: a configured client and action inspection.

use std::net::Ipv4Addr;

use dhcproto::v4;

use super::fake_server::{self as srv, ServerParams};
use crate::dhcp::*;

pub const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x07];
pub const T0: Millis = 1_700_000_000_000;
pub const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

pub fn cfg() -> ClientConfig {
    ClientConfig {
        mac: MAC,
        client_id: client_identifier(MACHINE_ID, 7),
        hostname: Some("session7".into()),
        fqdn: false,
        seed: 0xdead_beef,
        min_lease_secs: DEFAULT_MIN_LEASE_SECS,
    }
}

/// A client without T1/T2 fuzz: these tests check the schedule to the millisecond (the fuzz
/// has its own tests).
pub fn client() -> Client {
    Client::new(cfg()).with_timer_fuzz(false)
}

/// The sends in `actions`, decoded.
pub fn sends(actions: &[Action]) -> Vec<(v4::Message, Vec<u8>, Dest, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { bytes, dest, broadcast_flag } => Some((srv::decode(bytes), bytes.clone(), *dest, *broadcast_flag)),
            _ => None,
        })
        .collect()
}

/// The single send in `actions`.
pub fn one_send(actions: &[Action]) -> (v4::Message, Vec<u8>, Dest, bool) {
    let mut s = sends(actions);
    assert_eq!(s.len(), 1, "expected exactly one send in {actions:?}");
    s.remove(0)
}

pub fn timer_of(actions: &[Action]) -> Millis {
    let t: Vec<_> = actions.iter().filter_map(|a| if let Action::SetTimer(t) = a { Some(*t) } else { None }).collect();
    assert_eq!(t.len(), 1, "expected exactly one SetTimer in {actions:?}");
    t[0]
}

pub fn msg_type(m: &v4::Message) -> v4::MessageType {
    m.opts().msg_type().expect("message type")
}

pub fn opt_ip(m: &v4::Message, code: v4::OptionCode) -> Option<Ipv4Addr> {
    match m.opts().get(code) {
        Some(v4::DhcpOption::RequestedIpAddress(a)) | Some(v4::DhcpOption::ServerIdentifier(a)) => Some(*a),
        None => None,
        other => panic!("unexpected option {other:?}"),
    }
}

/// A client that has sent its first DISCOVER at `T0`; returns the DISCOVER bytes.
pub fn selecting() -> (Client, Vec<u8>) {
    let mut c = client();
    let a = c.on_event(Event::Start, T0);
    let (_, bytes, _, _) = one_send(&a);
    (c, bytes)
}

/// A client in REQUESTING (offer received at `T0 + 100`); returns the REQUEST bytes.
pub fn requesting(p: &ServerParams) -> (Client, Vec<u8>) {
    let (mut c, discover) = selecting();
    let a = c.on_event(Event::Packet { bytes: srv::offer(&discover, p) }, T0 + 100);
    let (_, bytes, _, _) = one_send(&a);
    assert_eq!(c.state(), State::Requesting);
    (c, bytes)
}

/// A BOUND client (ACK at `T0 + 200`, REQUEST sent at `T0 + 100`).
pub fn bound(p: &ServerParams) -> (Client, Lease) {
    let (mut c, request) = requesting(p);
    c.on_event(Event::Packet { bytes: srv::ack(&request, p) }, T0 + 200);
    assert_eq!(c.state(), State::Bound);
    let l = c.lease().unwrap().clone();
    assert_eq!(l.acquired_at, T0 + 100);
    (c, l)
}

/// Fires the timer at exactly its deadline.
pub fn fire(c: &mut Client) -> (Millis, Vec<Action>) {
    let t = c.next_timer().expect("timer armed");
    (t, c.on_event(Event::Timer, t))
}

/// The lease the default fake server hands out, acquired at `at`.
pub fn expected_lease(at: Millis) -> Lease {
    Lease {
        address: srv::ADDR,
        prefix_len: 24,
        server_id: srv::SERVER,
        routers: vec![srv::SERVER],
        classless_routes: vec![],
        dns: vec![Ipv4Addr::new(192, 168, 1, 2), Ipv4Addr::new(192, 168, 1, 3)],
        domain: Some("lan".into()),
        search: vec!["eng.example.com".into(), "example.com".into()],
        mtu: Some(1500),
        broadcast: Some(Ipv4Addr::new(192, 168, 1, 255)),
        lease_secs: 3600,
        t1_secs: 1800,
        t2_secs: 3150,
        acquired_at: at,
    }
}
