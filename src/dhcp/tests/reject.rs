//! Every rejection reason: exact reason, no state change, no timer change.

use std::net::Ipv4Addr;

use dhcproto::v4;

use super::fake_server::{self as srv, ServerParams};
use super::harness::*;
use crate::dhcp::*;

/// Feeds `bytes` and checks it is rejected with exactly `want`, changing nothing.
fn assert_rejected(c: &mut Client, bytes: Vec<u8>, want: RejectReason) {
    let (state, timer, lease, server) = (c.state(), c.next_timer(), c.lease().cloned(), c.server());
    let a = c.on_event(Event::Packet { bytes }, T0 + 150);
    assert_eq!(a, vec![Action::Reject { reason: want }]);
    assert_eq!((c.state(), c.next_timer(), c.lease().cloned(), c.server()), (state, timer, lease, server));
}

/// A SELECTING client and an OFFER built from `p`, passed through `edit`.
fn offer_with(p: ServerParams, edit: impl FnOnce(&mut v4::Message)) -> (Client, Vec<u8>) {
    let (c, discover) = selecting();
    let mut m = srv::reply_msg(&discover, v4::MessageType::Offer, &p);
    edit(&mut m);
    (c, srv::encode(&m))
}

fn check_offer(p: ServerParams, want: RejectReason) {
    let (mut c, bytes) = offer_with(p, |_| {});
    assert_rejected(&mut c, bytes, want);
}

#[test]
fn oversize() {
    let (mut c, mut bytes) = offer_with(ServerParams::default(), |_| {});
    bytes.resize(1501, 0);
    assert_rejected(&mut c, bytes, RejectReason::Oversize { len: 1501, max: 1500 });
    // Exactly 1500 bytes (padding after END) is fine.
    let (mut c, mut bytes) = offer_with(ServerParams::default(), |_| {});
    bytes.resize(1500, 0);
    c.on_event(Event::Packet { bytes }, T0 + 1);
    assert_eq!(c.state(), State::Requesting);
}

#[test]
fn truncated_and_empty() {
    let (mut c, bytes) = offer_with(ServerParams::default(), |_| {});
    for len in [0, 1, 100, 239] {
        assert_rejected(&mut c, bytes[..len].to_vec(), RejectReason::Truncated { len, min: 240 });
    }
    // Header and cookie intact, options cut mid-option.
    let cut = bytes[..250].to_vec();
    let r = c.on_event(Event::Packet { bytes: cut }, T0 + 1);
    assert!(
        matches!(&r[..], [Action::Reject { reason }] if reason.to_string().contains("malformed options") || reason.to_string().contains("missing")),
        "{r:?}"
    );
    assert_eq!(c.state(), State::Selecting);
}

#[test]
fn not_a_bootreply() {
    let (mut c, mut bytes) = offer_with(ServerParams::default(), |_| {});
    bytes[0] = 1;
    assert_rejected(&mut c, bytes, RejectReason::NotBootReply(1));
}

#[test]
fn bad_magic() {
    let (mut c, mut bytes) = offer_with(ServerParams::default(), |_| {});
    bytes[236] = 0;
    assert_rejected(&mut c, bytes, RejectReason::BadMagic);
}

#[test]
fn malformed_options_area() {
    let (mut c, bytes) = offer_with(ServerParams::default(), |_| {});
    let mut b = bytes[..240].to_vec();
    b.extend_from_slice(&[53, 1, 2, 54, 200, 1, 2]);
    assert_rejected(&mut c, b, RejectReason::MalformedOptions { offset: 243 });
}

#[test]
fn missing_message_type() {
    let (mut c, bytes) = offer_with(ServerParams::default(), |m| {
        m.opts_mut().remove(v4::OptionCode::MessageType);
    });
    assert_rejected(&mut c, bytes, RejectReason::MissingMessageType);
}

#[test]
fn malformed_message_type() {
    check_offer(ServerParams { raw: vec![(53, vec![2, 2])], ..Default::default() }, RejectReason::MalformedOption { code: 53, why: "wrong length" });
}

#[test]
fn unexpected_message_types() {
    // ACK / NAK / DISCOVER-typed reply while SELECTING.
    for (kind, code) in [(v4::MessageType::Ack, 5u8), (v4::MessageType::Nak, 6), (v4::MessageType::Discover, 1)] {
        let (mut c, bytes) = offer_with(ServerParams::default(), |m| {
            m.opts_mut().insert(v4::DhcpOption::MessageType(kind));
        });
        assert_rejected(&mut c, bytes, RejectReason::UnexpectedMessageType { got: code, state: State::Selecting });
    }
    // OFFER while REBOOTING.
    let mut c = client();
    let req = one_send(&c.on_event(Event::StartWithLease(expected_lease(T0)), T0)).1;
    assert_rejected(&mut c, srv::offer(&req, &ServerParams::default()), RejectReason::UnexpectedMessageType { got: 2, state: State::Rebooting });
}

#[test]
fn no_transaction_when_idle_bound_or_released() {
    let (_, discover) = selecting();
    let offer = srv::offer(&discover, &ServerParams::default());
    let mut c = client();
    assert_rejected(&mut c, offer.clone(), RejectReason::NoTransaction(State::Init));
    let (mut c, _) = bound(&ServerParams::default());
    assert_rejected(&mut c, offer.clone(), RejectReason::NoTransaction(State::Bound));
    c.on_event(Event::Release, T0 + 1000);
    assert_rejected(&mut c, offer, RejectReason::NoTransaction(State::Released));
}

#[test]
fn xid_mismatch() {
    let (c, discover) = selecting();
    let xid = srv::decode(&discover).xid();
    let (_, bytes) = offer_with(ServerParams::default(), |m| {
        m.set_xid(xid.wrapping_add(1));
    });
    let mut c = c;
    assert_rejected(&mut c, bytes, RejectReason::XidMismatch { got: xid.wrapping_add(1), expected: xid });
}

#[test]
fn chaddr_mismatch() {
    let (mut c, bytes) = offer_with(ServerParams::default(), |m| {
        m.set_chaddr(&[0x02, 0x42, 0xac, 0x11, 0x00, 0x08]);
    });
    assert_rejected(&mut c, bytes, RejectReason::ChaddrMismatch);
    // Right bytes, wrong hlen; and an absurd hlen must not panic.
    for hlen in [7u8, 16, 17, 255] {
        let (mut c, mut bytes) = offer_with(ServerParams::default(), |_| {});
        bytes[2] = hlen;
        assert_rejected(&mut c, bytes, RejectReason::ChaddrMismatch);
    }
}

#[test]
fn missing_server_id() {
    check_offer(ServerParams { server_id: None, ..Default::default() }, RejectReason::MissingServerId);
}

#[test]
fn bad_yiaddr() {
    let cases: [([u8; 4], &str); 7] = [
        ([0, 0, 0, 0], "in 0.0.0.0/8"),
        ([127, 0, 0, 1], "loopback"),
        ([224, 0, 0, 5], "multicast"),
        ([239, 255, 255, 250], "multicast"),
        ([255, 255, 255, 255], "limited broadcast"),
        ([240, 0, 0, 1], "reserved class E"),
        ([192, 168, 1, 0], "network address of its subnet"),
    ];
    for (a, why) in cases {
        let addr = Ipv4Addr::from(a);
        let mask = if a[0] == 192 { Some(Ipv4Addr::new(255, 255, 255, 0)) } else { None };
        check_offer(ServerParams { yiaddr: addr, mask, ..Default::default() }, RejectReason::InvalidAddress { addr, why });
    }
    check_offer(
        ServerParams { yiaddr: Ipv4Addr::new(192, 168, 1, 255), ..Default::default() },
        RejectReason::InvalidAddress { addr: Ipv4Addr::new(192, 168, 1, 255), why: "broadcast address of its subnet" },
    );
    check_offer(ServerParams { yiaddr: srv::SERVER, ..Default::default() }, RejectReason::AddressIsServer(srv::SERVER));
}

#[test]
fn bad_netmask() {
    for m in [[255, 0, 255, 0], [0, 0, 0, 0], [255, 255, 255, 1]] {
        let mask = Ipv4Addr::from(m);
        check_offer(ServerParams { mask: Some(mask), ..Default::default() }, RejectReason::BadNetmask(mask));
    }
}

#[test]
fn netmask_wider_than_a_lan() {
    for (m, prefix_len) in [([128, 0, 0, 0], 1), ([254, 0, 0, 0], 7)] {
        let mask = Ipv4Addr::from(m);
        check_offer(
            ServerParams { yiaddr: Ipv4Addr::new(10, 77, 0, 250), mask: Some(mask), ..Default::default() },
            RejectReason::NetmaskTooWide { mask, prefix_len, min: MIN_PREFIX_LEN },
        );
    }
    // /8 is the widest accepted; /31 and /32 (point-to-point, cloud networks) are fine.
    for m in [[255, 0, 0, 0], [255, 255, 255, 254], [255, 255, 255, 255]] {
        let (mut c, bytes) = offer_with(ServerParams { yiaddr: Ipv4Addr::new(10, 77, 0, 250), mask: Some(Ipv4Addr::from(m)), ..Default::default() }, |_| {});
        c.on_event(Event::Packet { bytes }, T0 + 1);
        assert_eq!(c.state(), State::Requesting, "{m:?}");
    }
}

#[test]
fn server_id_must_be_unicast() {
    for (a, why) in [
        ([255, 255, 255, 255], "limited broadcast"),
        ([0, 0, 0, 0], "in 0.0.0.0/8"),
        ([127, 0, 0, 1], "loopback"),
        ([224, 0, 0, 1], "multicast"),
        ([240, 0, 0, 9], "reserved class E"),
    ] {
        let addr = Ipv4Addr::from(a);
        let bad = ServerParams { server_id: Some(addr), ..Default::default() };
        check_offer(bad.clone(), RejectReason::InvalidServerId { addr, why });
        // In every state that takes an ACK or NAK.
        let (mut c, req) = requesting(&ServerParams::default());
        assert_rejected(&mut c, srv::ack(&req, &bad), RejectReason::InvalidServerId { addr, why });
        assert_rejected(&mut c, srv::nak(&req, &bad), RejectReason::InvalidServerId { addr, why });
        let (mut c, lease) = bound(&ServerParams::default());
        let req = one_send(&c.on_event(Event::Timer, lease.rebind_at().unwrap())).1;
        assert_eq!(c.state(), State::Rebinding);
        assert_rejected(&mut c, srv::ack(&req, &bad), RejectReason::InvalidServerId { addr, why });
        let mut c = client();
        let req = one_send(&c.on_event(Event::StartWithLease(expected_lease(T0)), T0)).1;
        assert_rejected(&mut c, srv::ack(&req, &bad), RejectReason::InvalidServerId { addr, why });
    }
}

#[test]
fn only_replies_for_other_clients_are_routine() {
    let routine = [RejectReason::XidMismatch { got: 1, expected: 2 }, RejectReason::ChaddrMismatch, RejectReason::NoTransaction(State::Bound)];
    assert!(routine.iter().all(RejectReason::is_routine));
    let a = Ipv4Addr::new(10, 0, 0, 1);
    let not = [
        RejectReason::InvalidServerId { addr: Ipv4Addr::BROADCAST, why: "limited broadcast" },
        RejectReason::ServerIdMismatch { got: a, expected: a },
        RejectReason::NetmaskTooWide { mask: Ipv4Addr::new(128, 0, 0, 0), prefix_len: 1, min: 8 },
        RejectReason::BadNetmask(a),
        RejectReason::ZeroLeaseTime,
        RejectReason::MissingServerId,
    ];
    assert!(!not.iter().any(RejectReason::is_routine));
}

#[test]
fn lease_time_missing_or_zero() {
    check_offer(ServerParams { lease_secs: None, ..Default::default() }, RejectReason::MissingLeaseTime);
    check_offer(ServerParams { lease_secs: Some(0), ..Default::default() }, RejectReason::ZeroLeaseTime);
}

#[test]
fn malformed_typed_options() {
    let bad =
        |code: u8, data: Vec<u8>, why| check_offer(ServerParams { raw: vec![(code, data)], ..Default::default() }, RejectReason::MalformedOption { code, why });
    bad(1, vec![255, 255, 255], "wrong length");
    bad(51, vec![0, 0, 1], "wrong length");
    bad(54, vec![192, 168, 1, 1, 0], "wrong length");
    bad(58, vec![1], "wrong length");
    bad(26, vec![5, 220, 0], "wrong length");
    bad(26, vec![0, 67], "MTU below 68");
    bad(28, vec![1, 2], "wrong length");
    bad(3, vec![1, 2, 3, 4, 5], "length is not a positive multiple of 4");
    bad(6, vec![1, 2, 3], "length is not a positive multiple of 4");
    bad(15, vec![0xff, 0xfe], "not valid UTF-8");
}

/// dhcproto cannot encode a zero-length option, so splice one in by hand.
/// (An empty occurrence plus a normal one would be concatenated per RFC 3396.)
fn check_empty_option(code: u8, p: ServerParams, want: RejectReason) {
    let (mut c, bytes) = offer_with(p, |_| {});
    let mut b = bytes[..240].to_vec();
    b.extend_from_slice(&[code, 0]);
    b.extend_from_slice(&bytes[240..]);
    assert_rejected(&mut c, b, want);
}

#[test]
fn empty_options() {
    check_empty_option(121, ServerParams::default(), RejectReason::MalformedClasslessRoutes("empty"));
    let no_routers = ServerParams { routers: vec![], ..Default::default() };
    check_empty_option(3, no_routers, RejectReason::MalformedOption { code: 3, why: "length is not a positive multiple of 4" });
    let no_sid = ServerParams { server_id: None, ..Default::default() };
    check_empty_option(54, no_sid, RejectReason::MalformedOption { code: 54, why: "wrong length" });
    // Split server id (RFC 3396): 2 + 2 bytes concatenate to a valid option.
    let (mut c, bytes) = offer_with(ServerParams { server_id: None, ..Default::default() }, |_| {});
    let mut b = bytes[..240].to_vec();
    b.extend_from_slice(&[54, 2, 192, 168, 54, 2, 1, 1]);
    b.extend_from_slice(&bytes[240..]);
    c.on_event(Event::Packet { bytes: b }, T0 + 1);
    assert_eq!((c.state(), c.server()), (State::Requesting, Some(srv::SERVER)));
}

#[test]
fn malformed_classless_routes() {
    let bad = |data: Vec<u8>, why| check_offer(ServerParams { classless: Some(data), ..Default::default() }, RejectReason::MalformedClasslessRoutes(why));
    bad(vec![33, 10, 0, 0, 0, 0, 1, 2, 3, 4], "prefix length > 32");
    bad(vec![24, 10, 0, 0, 1, 2, 3], "truncated route");
    bad(vec![0, 10, 0, 0, 1, 8], "truncated route");
}

#[test]
fn reply_to_requesting_from_other_server() {
    let p = ServerParams::default();
    let (mut c, req) = requesting(&p);
    let other = Ipv4Addr::new(192, 168, 1, 254);
    let q = ServerParams { server_id: Some(other), ..Default::default() };
    assert_rejected(&mut c, srv::ack(&req, &q), RejectReason::ServerIdMismatch { got: other, expected: srv::SERVER });
    assert_rejected(&mut c, srv::nak(&req, &q), RejectReason::ServerIdMismatch { got: other, expected: srv::SERVER });
    assert_rejected(&mut c, srv::nak(&req, &ServerParams { server_id: None, ..Default::default() }), RejectReason::MissingServerId);
}

#[test]
fn invalid_ack_keeps_requesting_and_renewing() {
    let p = ServerParams::default();
    let (mut c, req) = requesting(&p);
    assert_rejected(&mut c, srv::ack(&req, &ServerParams { lease_secs: None, ..Default::default() }), RejectReason::MissingLeaseTime);
    assert_eq!(c.state(), State::Requesting);

    let (mut c, lease) = bound(&p);
    let req = one_send(&c.on_event(Event::Timer, lease.renew_at().unwrap())).1;
    let bad = ServerParams { yiaddr: Ipv4Addr::new(127, 0, 0, 1), ..Default::default() };
    let a = c.on_event(Event::Packet { bytes: srv::ack(&req, &bad) }, lease.renew_at().unwrap() + 5);
    assert!(matches!(&a[..], [Action::Reject { reason }] if reason.to_string().contains("loopback")));
    assert_eq!((c.state(), c.lease()), (State::Renewing, Some(&lease)));
}

#[test]
fn garbage_never_changes_anything() {
    let (mut c, _) = selecting();
    for len in [240usize, 300, 576, 1500] {
        let mut junk: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        junk[0] = 2;
        let a = c.on_event(Event::Packet { bytes: junk }, T0 + 5);
        assert!(matches!(&a[..], [Action::Reject { .. }]), "{a:?}");
    }
    assert_eq!(c.state(), State::Selecting);
}
