//! Transitions, timers and outgoing message contents.

use std::net::Ipv4Addr;

use dhcproto::v4::{self, OptionCode};

use super::fake_server::{self as srv, ServerParams};
use super::harness::*;
use crate::dhcp::*;

fn assert_common_options(m: &v4::Message, with_prl: bool) {
    assert_eq!(m.opcode(), v4::Opcode::BootRequest);
    assert_eq!(m.htype(), v4::HType::Eth);
    assert_eq!(m.chaddr(), &MAC);
    assert_eq!(m.opts().get(OptionCode::ClientIdentifier), Some(&v4::DhcpOption::ClientIdentifier(cfg().client_id)));
    if with_prl {
        assert_eq!(m.opts().get(OptionCode::Hostname), Some(&v4::DhcpOption::Hostname("session7".into())));
        assert_eq!(m.opts().get(OptionCode::MaxMessageSize), Some(&v4::DhcpOption::MaxMessageSize(1500)));
        let Some(v4::DhcpOption::ParameterRequestList(prl)) = m.opts().get(OptionCode::ParameterRequestList) else { panic!("no PRL") };
        for code in [1u8, 3, 6, 15, 26, 28, 51, 54, 58, 59, 119, 121] {
            assert!(prl.contains(&OptionCode::from(code)), "PRL lacks {code}");
        }
    }
}

#[test]
fn start_broadcasts_discover() {
    let mut c = client();
    assert_eq!(c.state(), State::Init);
    assert_eq!(c.next_timer(), None);
    let a = c.on_event(Event::Start, T0);
    assert_eq!(a.len(), 2);
    let (m, bytes, dest, flag) = one_send(&a);
    assert_eq!((dest, flag), (Dest::Broadcast, true));
    assert!(bytes.len() >= 300);
    assert_eq!(msg_type(&m), v4::MessageType::Discover);
    assert!(m.flags().broadcast());
    assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.secs(), 0);
    assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), None);
    assert_eq!(opt_ip(&m, OptionCode::ServerIdentifier), None);
    assert_common_options(&m, true);
    let t = timer_of(&a);
    assert!((T0 + 500..=T0 + 2_000).contains(&t), "first retry at +{}", t - T0);
    assert_eq!(c.next_timer(), Some(t));
    assert_eq!(c.state(), State::Selecting);
    assert_eq!(c.discovers_sent(), 1);
    assert_eq!(c.server(), None);
    assert_eq!(c.lease(), None);
}

#[test]
fn no_hostname_no_option_12() {
    let mut c = Client::new(ClientConfig { hostname: None, ..cfg() });
    let (m, ..) = one_send(&c.on_event(Event::Start, T0));
    assert!(m.opts().get(OptionCode::Hostname).is_none());
}

#[test]
fn discover_backoff_grows_caps_and_keeps_xid() {
    let (mut c, first) = selecting();
    let xid = srv::decode(&first).xid();
    let mut prev = T0;
    let mut deadline = c.next_timer().unwrap();
    let bases = [1_000u64, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 64_000, 64_000, 64_000];
    for (i, base) in bases.iter().enumerate() {
        let gap = deadline - prev;
        if i == 0 {
            assert!((500..=2_000).contains(&gap), "retry {i}: {gap}");
        } else {
            assert!(gap >= base - 1_000 && gap <= base + 1_000, "retry {i}: {gap} vs base {base}");
        }
        let a = c.on_event(Event::Timer, deadline);
        let (m, _, dest, flag) = one_send(&a);
        assert_eq!((dest, flag), (Dest::Broadcast, true));
        assert_eq!(msg_type(&m), v4::MessageType::Discover);
        assert_eq!(m.xid(), xid, "retransmissions reuse the xid");
        assert_eq!(u64::from(m.secs()), (deadline - T0) / 1000);
        assert_eq!(c.discovers_sent(), i as u32 + 2);
        prev = deadline;
        deadline = timer_of(&a);
        assert!(deadline > prev);
    }
    assert_eq!(c.state(), State::Selecting);
}

#[test]
fn jitter_depends_on_seed() {
    let t = |seed| Client::new(ClientConfig { seed, ..cfg() }).on_event(Event::Start, T0);
    let timers: std::collections::BTreeSet<_> = (0..20).map(|s| timer_of(&t(s))).collect();
    assert!(timers.len() > 5, "jitter should vary with the seed");
    assert_eq!(t(3), t(3), "same seed, same actions");
}

#[test]
fn spurious_timers_are_harmless() {
    let mut c = client();
    assert!(c.on_event(Event::Timer, T0).is_empty(), "nothing armed");
    c.on_event(Event::Start, T0);
    let deadline = c.next_timer().unwrap();
    let a = c.on_event(Event::Timer, deadline - 1);
    assert_eq!(a, vec![Action::SetTimer(deadline)]);
    assert_eq!(c.state(), State::Selecting);
    assert_eq!(c.discovers_sent(), 1);
}

#[test]
fn offer_leads_to_broadcast_request() {
    let (mut c, discover) = selecting();
    let xid = srv::decode(&discover).xid();
    let a = c.on_event(Event::Packet { bytes: srv::offer(&discover, &ServerParams::default()) }, T0 + 100);
    assert_eq!(a.len(), 2);
    let (m, _, dest, flag) = one_send(&a);
    assert_eq!((dest, flag), (Dest::Broadcast, true));
    assert_eq!(msg_type(&m), v4::MessageType::Request);
    assert_eq!(m.xid(), xid);
    assert!(m.flags().broadcast());
    assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), Some(srv::ADDR));
    assert_eq!(opt_ip(&m, OptionCode::ServerIdentifier), Some(srv::SERVER));
    assert_common_options(&m, true);
    let t = timer_of(&a);
    assert!((T0 + 600..=T0 + 2_100).contains(&t));
    assert_eq!(c.state(), State::Requesting);
    assert_eq!(c.server(), Some(srv::SERVER));
    assert_eq!(c.discovers_sent(), 0, "the DISCOVER was answered");
}

#[test]
fn ack_binds_with_exact_lease_and_t1_timer() {
    let p = ServerParams::default();
    let (mut c, request) = requesting(&p);
    let a = c.on_event(Event::Packet { bytes: srv::ack(&request, &p) }, T0 + 200);
    let lease = expected_lease(T0 + 100);
    assert_eq!(
        a,
        vec![Action::ApplyLease { lease: lease.clone(), previous: None }, Action::PersistLease(Some(lease.clone())), Action::SetTimer(T0 + 100 + 1_800_000),]
    );
    assert_eq!(c.state(), State::Bound);
    assert_eq!(c.lease(), Some(&lease));
    assert_eq!(c.server(), Some(srv::SERVER));
    assert_eq!(c.next_timer(), Some(T0 + 100 + 1_800_000));
}

#[test]
fn ack_with_all_optional_data() {
    let p = ServerParams {
        mask: None,
        yiaddr: Ipv4Addr::new(10, 9, 8, 7),
        t1: Some(100),
        t2: Some(200),
        lease_secs: Some(300),
        classless: Some(vec![0, 10, 0, 0, 1, 24, 192, 168, 7, 0, 0, 0, 0]),
        mtu: None,
        domain: None,
        search: vec![],
        broadcast: None,
        ..Default::default()
    };
    let (_, l) = bound(&p);
    assert_eq!(l.address, Ipv4Addr::new(10, 9, 8, 7));
    assert_eq!(l.prefix_len, 8, "classful default without option 1");
    assert_eq!((l.t1_secs, l.t2_secs, l.lease_secs), (100, 200, 300));
    assert_eq!(
        l.classless_routes,
        vec![("0.0.0.0/0".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 1)), ("192.168.7.0/24".parse().unwrap(), Ipv4Addr::UNSPECIFIED)]
    );
    assert_eq!(l.routes(), l.classless_routes, "option 121 overrides routers");
    assert_eq!((l.mtu, l.domain.clone(), l.search.len(), l.broadcast), (None, None, 0, None));
}

#[test]
fn server_timers_are_clamped() {
    let p = ServerParams { t1: Some(5000), t2: Some(4000), ..Default::default() };
    let (_, l) = bound(&p);
    assert_eq!((l.t1_secs, l.t2_secs, l.lease_secs), (3600, 3600, 3600));
    let p = ServerParams { t1: Some(3000), t2: None, ..Default::default() };
    let (_, l) = bound(&p);
    assert_eq!((l.t1_secs, l.t2_secs), (3000, 3150));
}

#[test]
fn acquired_at_is_first_request_even_if_retransmitted() {
    let p = ServerParams::default();
    let (mut c, _) = requesting(&p);
    let (t1, a) = fire(&mut c);
    let (m, bytes, dest, _) = one_send(&a);
    assert_eq!((msg_type(&m), dest), (v4::MessageType::Request, Dest::Broadcast));
    assert_eq!(opt_ip(&m, OptionCode::ServerIdentifier), Some(srv::SERVER));
    c.on_event(Event::Packet { bytes: srv::ack(&bytes, &p) }, t1 + 50);
    assert_eq!(c.lease().unwrap().acquired_at, T0 + 100);
}

#[test]
fn unanswered_requests_fall_back_to_init() {
    let (mut c, first) = requesting(&ServerParams::default());
    let xid = srv::decode(&first).xid();
    let mut last = T0 + 100;
    for i in 1..MAX_SELECTING_REQUESTS {
        let (t, a) = fire(&mut c);
        let base = 1_000u64 << (i - 1);
        let gap = t - last;
        assert!(gap >= base / 2 && gap <= base + 1_000, "request retry {i}: gap {gap}");
        let (m, ..) = one_send(&a);
        assert_eq!((msg_type(&m), m.xid()), (v4::MessageType::Request, xid));
        assert_eq!(c.state(), State::Requesting);
        last = t;
    }
    let (_, a) = fire(&mut c);
    let (m, _, dest, flag) = one_send(&a);
    assert_eq!((msg_type(&m), dest, flag), (v4::MessageType::Discover, Dest::Broadcast, true));
    assert_ne!(m.xid(), xid, "new exchange, new xid");
    assert_eq!(c.state(), State::Selecting);
    assert_eq!(c.discovers_sent(), 1);
}

#[test]
fn nak_while_requesting_goes_to_init_then_rediscovers() {
    let p = ServerParams::default();
    let (mut c, request) = requesting(&p);
    let old_xid = srv::decode(&request).xid();
    let now = T0 + 300;
    let a = c.on_event(Event::Packet { bytes: srv::nak(&request, &p) }, now);
    assert_eq!(a.len(), 1);
    let t = timer_of(&a);
    assert!((now + 500..=now + 2_000).contains(&t));
    assert_eq!(c.state(), State::Init);
    assert_eq!(c.lease(), None);
    // A late ACK for the old exchange is no longer accepted.
    let a = c.on_event(Event::Packet { bytes: srv::ack(&request, &p) }, now + 1);
    assert!(matches!(&a[..], [Action::Reject { .. }]));
    let (_, a) = fire(&mut c);
    let (m, ..) = one_send(&a);
    assert_eq!(msg_type(&m), v4::MessageType::Discover);
    assert_ne!(m.xid(), old_xid);
    assert_eq!(c.state(), State::Selecting);
}

#[test]
fn repeated_naks_back_off() {
    let p = ServerParams::default();
    let (mut c, mut discover) = selecting();
    let mut now = T0;
    let mut gaps = vec![];
    for _ in 0..6 {
        now += 10;
        let a = c.on_event(Event::Packet { bytes: srv::offer(&discover, &p) }, now);
        let req = one_send(&a).1;
        now += 10;
        let a = c.on_event(Event::Packet { bytes: srv::nak(&req, &p) }, now);
        let t = timer_of(&a);
        gaps.push(t - now);
        now = t;
        discover = one_send(&c.on_event(Event::Timer, t)).1;
    }
    assert!((500..=2_000).contains(&gaps[0]), "{gaps:?}");
    assert!((31_000..=33_000).contains(&gaps[5]), "{gaps:?}");
}

#[test]
fn renewing_at_exact_t1_then_rebinding_then_expiry() {
    let (mut c, lease) = bound(&ServerParams::default());
    let (t1, t2, exp) = (lease.renew_at().unwrap(), lease.rebind_at().unwrap(), lease.expires_at().unwrap());
    assert_eq!((t1, t2, exp), (T0 + 100 + 1_800_000, T0 + 100 + 3_150_000, T0 + 100 + 3_600_000));

    // One millisecond early: nothing happens.
    assert_eq!(c.on_event(Event::Timer, t1 - 1), vec![Action::SetTimer(t1)]);
    assert_eq!(c.state(), State::Bound);

    let a = c.on_event(Event::Timer, t1);
    assert_eq!(c.state(), State::Renewing);
    let (m, _, dest, flag) = one_send(&a);
    assert_eq!((dest, flag), (Dest::Unicast(srv::SERVER), false));
    assert_eq!(msg_type(&m), v4::MessageType::Request);
    assert!(!m.flags().broadcast());
    assert_eq!(m.ciaddr(), srv::ADDR);
    assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), None);
    assert_eq!(opt_ip(&m, OptionCode::ServerIdentifier), None);
    assert_common_options(&m, true);
    let renew_xid = m.xid();
    // Half of the 1350 s left to T2.
    assert_eq!(timer_of(&a), t1 + 675_000);

    // Renewing retransmissions: half the time to T2, floor 60 s, capped at T2.
    let expected = [
        t1 + 675_000 + 337_500,
        t1 + 675_000 + 337_500 + 168_750,
        t1 + 675_000 + 337_500 + 168_750 + 84_375,
        t1 + 675_000 + 337_500 + 168_750 + 84_375 + 60_000,
        t2,
    ];
    for want in expected {
        let (_, a) = fire(&mut c);
        let (m, _, dest, _) = one_send(&a);
        assert_eq!((dest, m.xid()), (Dest::Unicast(srv::SERVER), renew_xid));
        assert_eq!(timer_of(&a), want);
        assert_eq!(c.state(), State::Renewing);
    }

    // Exactly T2: REBINDING, broadcast, ciaddr kept, no broadcast flag.
    let (t, a) = fire(&mut c);
    assert_eq!(t, t2);
    assert_eq!(c.state(), State::Rebinding);
    let (m, _, dest, flag) = one_send(&a);
    assert_eq!((dest, flag), (Dest::Broadcast, false));
    assert_eq!(m.ciaddr(), srv::ADDR);
    assert_eq!(m.xid(), renew_xid);
    assert_eq!(opt_ip(&m, OptionCode::ServerIdentifier), None);
    assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), None);
    assert_eq!(timer_of(&a), t2 + 225_000);

    for want in [t2 + 225_000 + 112_500, t2 + 225_000 + 112_500 + 60_000, exp] {
        let (_, a) = fire(&mut c);
        assert_eq!(one_send(&a).2, Dest::Broadcast);
        assert_eq!(timer_of(&a), want);
    }

    // Exactly at expiry: drop everything and DISCOVER at once.
    let (t, a) = fire(&mut c);
    assert_eq!(t, exp);
    assert_eq!(a[0], Action::RemoveLease(lease.clone()));
    assert_eq!(a[1], Action::PersistLease(None));
    let (m, _, dest, flag) = one_send(&a);
    assert_eq!((msg_type(&m), dest, flag), (v4::MessageType::Discover, Dest::Broadcast, true));
    assert_eq!(a.len(), 4);
    assert_eq!(c.state(), State::Selecting);
    assert_eq!(c.lease(), None);
    assert_eq!(c.discovers_sent(), 1);
}

#[test]
fn clock_jump_past_expiry_expires_directly() {
    let (mut c, lease) = bound(&ServerParams::default());
    let a = c.on_event(Event::Timer, lease.expires_at().unwrap() + 5_000_000);
    assert_eq!(a[0], Action::RemoveLease(lease));
    assert_eq!(c.state(), State::Selecting);
}

#[test]
fn clock_jump_past_t2_rebinds_directly() {
    let (mut c, lease) = bound(&ServerParams::default());
    let now = lease.rebind_at().unwrap() + 1;
    let a = c.on_event(Event::Timer, now);
    assert_eq!(c.state(), State::Rebinding);
    assert_eq!(one_send(&a).2, Dest::Broadcast);
    // The ACK's lease counts from this first REBINDING request.
    let req = one_send(&a).1;
    c.on_event(Event::Packet { bytes: srv::ack(&req, &ServerParams::default()) }, now + 10);
    assert_eq!(c.lease().unwrap().acquired_at, now);
}

fn renewing() -> (Client, Lease, Vec<u8>, Millis) {
    let (mut c, lease) = bound(&ServerParams::default());
    let (t, a) = fire(&mut c);
    assert_eq!(c.state(), State::Renewing);
    (c, lease, one_send(&a).1, t)
}

#[test]
fn renew_ack_rebinds_with_previous_and_new_timers() {
    let (mut c, old, req, t1) = renewing();
    let a = c.on_event(Event::Packet { bytes: srv::ack(&req, &ServerParams::default()) }, t1 + 20);
    let new = expected_lease(t1);
    assert_eq!(
        a,
        vec![Action::ApplyLease { lease: new.clone(), previous: Some(old) }, Action::PersistLease(Some(new.clone())), Action::SetTimer(t1 + 1_800_000),]
    );
    assert_eq!(c.state(), State::Bound);
}

#[test]
fn renew_ack_with_new_address() {
    let (mut c, old, req, t1) = renewing();
    let p = ServerParams { yiaddr: Ipv4Addr::new(192, 168, 1, 77), ..Default::default() };
    let a = c.on_event(Event::Packet { bytes: srv::ack(&req, &p) }, t1 + 20);
    let Action::ApplyLease { lease, previous } = &a[0] else { panic!("{a:?}") };
    assert_eq!(lease.address, Ipv4Addr::new(192, 168, 1, 77));
    assert_eq!(previous.as_ref(), Some(&old));
    assert!(!a.iter().any(|x| matches!(x, Action::RemoveLease(_))), "driver swaps atomically");
    assert_eq!(c.lease().unwrap().address, Ipv4Addr::new(192, 168, 1, 77));
}

#[test]
fn late_renew_ack_accepted_while_rebinding() {
    let (mut c, old, req, _) = renewing();
    let t2 = old.rebind_at().unwrap();
    while c.state() == State::Renewing {
        fire(&mut c);
    }
    assert_eq!(c.state(), State::Rebinding);
    let a = c.on_event(Event::Packet { bytes: srv::ack(&req, &ServerParams::default()) }, t2 + 5);
    assert!(matches!(&a[0], Action::ApplyLease { previous: Some(p), .. } if *p == old));
    assert_eq!(c.state(), State::Bound);
}

#[test]
fn nak_while_renewing_and_rebinding_drops_lease() {
    for rebinding in [false, true] {
        let (mut c, old, mut req, _) = renewing();
        if rebinding {
            let t2 = old.rebind_at().unwrap();
            let a = c.on_event(Event::Timer, t2);
            req = one_send(&a).1;
            assert_eq!(c.state(), State::Rebinding);
        }
        let now = old.rebind_at().unwrap() + 10;
        let a = c.on_event(Event::Packet { bytes: srv::nak(&req, &ServerParams::default()) }, now);
        assert_eq!(a[..2], [Action::RemoveLease(old.clone()), Action::PersistLease(None)]);
        assert_eq!(a.len(), 3);
        assert!(timer_of(&a) >= now + 500);
        assert_eq!(c.state(), State::Init);
        assert_eq!(c.lease(), None);
    }
}

#[test]
fn infinite_lease_has_no_timer() {
    let p = ServerParams { lease_secs: Some(u32::MAX), t1: Some(100), ..Default::default() };
    let (mut c, request) = requesting(&p);
    let a = c.on_event(Event::Packet { bytes: srv::ack(&request, &p) }, T0 + 200);
    assert_eq!(a.len(), 2);
    assert!(!a.iter().any(|x| matches!(x, Action::SetTimer(_))));
    let l = c.lease().unwrap();
    assert_eq!((l.lease_secs, l.t1_secs, l.t2_secs), (u32::MAX, u32::MAX, u32::MAX));
    assert_eq!((l.renew_at(), l.rebind_at(), l.expires_at()), (None, None, None));
    assert_eq!(c.next_timer(), None);
    // A stale driver timer does nothing, even years later.
    assert!(c.on_event(Event::Timer, T0 + 100 * 365 * 86_400_000).is_empty());
    assert_eq!(c.state(), State::Bound);
}

#[test]
fn init_reboot_success() {
    let persisted = expected_lease(T0 - 600_000);
    let mut c = client();
    let a = c.on_event(Event::StartWithLease(persisted.clone()), T0);
    assert_eq!(c.state(), State::Rebooting);
    assert_eq!(c.lease(), None);
    assert_eq!(c.server(), Some(srv::SERVER));
    let (m, bytes, dest, flag) = one_send(&a);
    assert_eq!((dest, flag), (Dest::Broadcast, true));
    assert_eq!(msg_type(&m), v4::MessageType::Request);
    assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), Some(persisted.address));
    assert_eq!(opt_ip(&m, OptionCode::ServerIdentifier), None);
    assert_common_options(&m, true);
    assert!((T0 + 500..=T0 + 2_000).contains(&timer_of(&a)));

    let a = c.on_event(Event::Packet { bytes: srv::ack(&bytes, &ServerParams::default()) }, T0 + 30);
    let new = expected_lease(T0);
    assert_eq!(
        a,
        vec![Action::ApplyLease { lease: new.clone(), previous: Some(persisted) }, Action::PersistLease(Some(new)), Action::SetTimer(T0 + 1_800_000),]
    );
    assert_eq!(c.state(), State::Bound);
}

#[test]
fn init_reboot_nak() {
    let persisted = expected_lease(T0 - 600_000);
    let mut c = client();
    let a = c.on_event(Event::StartWithLease(persisted.clone()), T0);
    let req = one_send(&a).1;
    let a = c.on_event(Event::Packet { bytes: srv::nak(&req, &ServerParams::default()) }, T0 + 10);
    assert_eq!(a.len(), 2);
    assert_eq!(a[0], Action::PersistLease(None));
    assert!(!a.iter().any(|x| matches!(x, Action::RemoveLease(_))), "never applied by us");
    assert_eq!(c.state(), State::Init);
    // The re-DISCOVER carries no hint; the next ApplyLease names the dead lease
    // as previous so a leftover address gets swapped out.
    let (_, a) = fire(&mut c);
    let (m, discover, ..) = one_send(&a);
    assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), None);
    let p = ServerParams { yiaddr: Ipv4Addr::new(192, 168, 1, 99), ..Default::default() };
    let now = c.next_timer().unwrap() - 100;
    let a = c.on_event(Event::Packet { bytes: srv::offer(&discover, &p) }, now);
    let a = c.on_event(Event::Packet { bytes: srv::ack(&one_send(&a).1, &p) }, now + 1);
    assert!(matches!(&a[0], Action::ApplyLease { lease, previous: Some(prev) }
        if lease.address == Ipv4Addr::new(192, 168, 1, 99) && *prev == persisted));
}

#[test]
fn init_reboot_timeout_falls_back_to_discover_with_hint() {
    let persisted = expected_lease(T0 - 600_000);
    let mut c = client();
    let a = c.on_event(Event::StartWithLease(persisted.clone()), T0);
    let xid = one_send(&a).0.xid();
    for _ in 1..MAX_REBOOT_REQUESTS {
        let (_, a) = fire(&mut c);
        let (m, ..) = one_send(&a);
        assert_eq!((msg_type(&m), m.xid()), (v4::MessageType::Request, xid));
        assert_eq!(c.state(), State::Rebooting);
    }
    let (t, a) = fire(&mut c);
    assert!(t < T0 + 10_000, "gives up quickly on a LAN");
    assert_eq!(a.len(), 2, "no RemoveLease/PersistLease: {a:?}");
    let (m, ..) = one_send(&a);
    assert_eq!(msg_type(&m), v4::MessageType::Discover);
    assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), Some(persisted.address));
    assert_ne!(m.xid(), xid);
    assert_eq!(c.state(), State::Selecting);
}

#[test]
fn start_with_expired_or_invalid_lease_discovers() {
    let expired = expected_lease(T0 - 3_600_000);
    assert_eq!(expired.expires_at(), Some(T0));
    let bad = Lease { address: Ipv4Addr::new(127, 0, 0, 1), ..expected_lease(T0) };
    let bad_timers = Lease { t1_secs: 4000, ..expected_lease(T0) };
    for l in [expired, bad, bad_timers] {
        let mut c = client();
        let a = c.on_event(Event::StartWithLease(l), T0);
        assert_eq!(a[0], Action::PersistLease(None));
        assert_eq!(msg_type(&one_send(&a).0), v4::MessageType::Discover);
        assert_eq!(c.state(), State::Selecting);
    }
}

#[test]
fn release_from_each_lease_state() {
    for step in 0..3 {
        let (mut c, lease) = bound(&ServerParams::default());
        for _ in 0..step {
            let t = if c.state() == State::Bound { lease.renew_at() } else { lease.rebind_at() };
            c.on_event(Event::Timer, t.unwrap());
        }
        let state = c.state();
        let a = c.on_event(Event::Release, lease.renew_at().unwrap() + 1_500_000);
        assert_eq!(a.len(), 3, "{state:?}: {a:?}");
        let (m, bytes, dest, flag) = one_send(&a);
        assert_eq!((dest, flag), (Dest::Unicast(srv::SERVER), false), "{state:?}");
        assert_eq!(bytes[242], 7, "option 53 value is the first option: DHCPRELEASE");
        assert_eq!(msg_type(&m), v4::MessageType::Release);
        assert_eq!(m.ciaddr(), srv::ADDR);
        assert!(!m.flags().broadcast());
        assert_eq!(opt_ip(&m, OptionCode::ServerIdentifier), Some(srv::SERVER));
        assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), None);
        assert_common_options(&m, false);
        for absent in [OptionCode::ParameterRequestList, OptionCode::MaxMessageSize, OptionCode::Hostname] {
            assert!(m.opts().get(absent).is_none(), "RELEASE must not carry {absent:?}");
        }
        assert_eq!(a[1..], [Action::RemoveLease(lease.clone()), Action::PersistLease(None)]);
        assert_eq!(c.state(), State::Released);
        assert_eq!((c.lease(), c.next_timer(), c.server()), (None, None, None));
    }
}

#[test]
fn release_without_lease_sends_nothing() {
    let (mut c, _) = selecting();
    assert!(c.on_event(Event::Release, T0 + 1).is_empty());
    assert_eq!(c.state(), State::Released);
    assert_eq!(c.next_timer(), None);
    assert!(c.on_event(Event::Timer, T0 + 10_000_000).is_empty());

    let (mut c, _) = requesting(&ServerParams::default());
    assert!(c.on_event(Event::Release, T0 + 1).is_empty());
    assert_eq!(c.state(), State::Released);

    let mut c = client();
    c.on_event(Event::StartWithLease(expected_lease(T0)), T0);
    assert!(c.on_event(Event::Release, T0 + 1).is_empty());
    assert_eq!(c.state(), State::Released);
}

#[test]
fn start_is_ignored_while_holding_a_lease_and_restarts_after_release() {
    let (mut c, _) = bound(&ServerParams::default());
    assert!(c.on_event(Event::Start, T0 + 300).is_empty());
    assert!(c.on_event(Event::StartWithLease(expected_lease(T0)), T0 + 300).is_empty());
    assert_eq!(c.state(), State::Bound);
    c.on_event(Event::Release, T0 + 400);
    let a = c.on_event(Event::Start, T0 + 500);
    assert_eq!(msg_type(&one_send(&a).0), v4::MessageType::Discover);
    assert_eq!(c.state(), State::Selecting);
    assert_eq!(c.discovers_sent(), 1);
}

#[test]
fn second_offer_is_ignored_first_one_wins() {
    let (mut c, discover) = selecting();
    c.on_event(Event::Packet { bytes: srv::offer(&discover, &ServerParams::default()) }, T0 + 100);
    let other = ServerParams { server_id: Some(Ipv4Addr::new(192, 168, 1, 254)), ..Default::default() };
    let a = c.on_event(Event::Packet { bytes: srv::offer(&discover, &other) }, T0 + 101);
    assert_eq!(a, vec![Action::Reject { reason: RejectReason::UnexpectedMessageType { got: 2, state: State::Requesting } }]);
    assert_eq!(c.server(), Some(srv::SERVER));
}

#[test]
fn an_unconfirmed_persisted_lease_is_removed_when_it_ends() {
    // Persisted 59 s before its end; no server answers INIT-REBOOT nor the DISCOVERs after it.
    let persisted = expected_lease(T0 - 3_600_000 + 59_000);
    let end = persisted.expires_at().unwrap();
    let mut c = client();
    c.on_event(Event::StartWithLease(persisted.clone()), T0);
    let mut removed = None;
    for _ in 0..100 {
        let t = c.next_timer().expect("a timer while an exchange or the lease is pending");
        assert!(t <= end, "the wake-up never passes the lease's end ({t} > {end})");
        let a = c.on_event(Event::Timer, t);
        if a.contains(&Action::RemoveLease(persisted.clone())) {
            assert_eq!(t, end, "removed exactly at its end");
            assert!(a.contains(&Action::PersistLease(None)), "{a:?}");
            removed = Some(c.state());
            break;
        }
        assert!(!a.iter().any(|x| matches!(x, Action::RemoveLease(_) | Action::PersistLease(None))), "too early: {a:?}");
    }
    assert_eq!(removed, Some(State::Selecting), "still looking for a lease afterwards");
    // and once gone, a later lease names no previous one
    let (_, a) = fire(&mut c);
    assert!(!a.iter().any(|x| matches!(x, Action::RemoveLease(_))));
}

#[test]
fn an_orphaned_lease_is_released_to_its_server_and_forgotten() {
    let lease = expected_lease(T0 - 60_000);
    let mut c = client();
    let a = c.on_event(Event::ReleaseOrphan(lease.clone()), T0);
    let (m, _, dest, flag) = one_send(&a);
    assert_eq!((dest, flag), (Dest::Unicast(srv::SERVER), false));
    assert_eq!(msg_type(&m), v4::MessageType::Release);
    assert_eq!(m.ciaddr(), lease.address);
    assert_eq!(opt_ip(&m, OptionCode::ServerIdentifier), Some(srv::SERVER));
    assert_eq!(a.last(), Some(&Action::PersistLease(None)));
    assert!(!a.iter().any(|x| matches!(x, Action::RemoveLease(_) | Action::SetTimer(_))), "{a:?}");
    assert_eq!((c.state(), c.next_timer()), (State::Released, None));
    // An expired one is only forgotten: the server has freed it already.
    let mut c = client();
    let a = c.on_event(Event::ReleaseOrphan(lease.clone()), lease.expires_at().unwrap());
    assert_eq!(a, vec![Action::PersistLease(None)]);
    // Two releases draw two xids.
    let mut c = client();
    let x1 = one_send(&c.on_event(Event::ReleaseOrphan(lease.clone()), T0)).0.xid();
    let x2 = one_send(&c.on_event(Event::ReleaseOrphan(lease), T0)).0.xid();
    assert_ne!(x1, x2);
}

#[test]
fn discover_asks_for_the_slots_last_address() {
    let last = Ipv4Addr::new(192, 168, 1, 61);
    let mut c = client();
    let a = c.on_event(Event::StartRequesting(last), T0);
    let (m, discover, dest, _) = one_send(&a);
    assert_eq!((msg_type(&m), dest), (v4::MessageType::Discover, Dest::Broadcast));
    assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), Some(last), "option 50 in DISCOVER (RFC 2131 §4.4.1)");
    assert_eq!(opt_ip(&m, OptionCode::ServerIdentifier), None);
    assert_eq!(c.state(), State::Selecting);
    // Retransmissions keep asking for it.
    let (_, a) = fire(&mut c);
    assert_eq!(opt_ip(&one_send(&a).0, OptionCode::RequestedIpAddress), Some(last));
    // A server that cannot give it offers another one, which is taken.
    let other = ServerParams { yiaddr: Ipv4Addr::new(192, 168, 1, 62), ..Default::default() };
    let now = c.next_timer().unwrap() - 10;
    let a = c.on_event(Event::Packet { bytes: srv::offer(&discover, &other) }, now);
    let (req, ..) = one_send(&a);
    assert_eq!(opt_ip(&req, OptionCode::RequestedIpAddress), Some(other.yiaddr));
    c.on_event(Event::Packet { bytes: srv::ack(&srv::encode(&req), &other) }, now + 1);
    assert_eq!(c.lease().unwrap().address, other.yiaddr);
    // Bound: the hint is spent; after a release a plain start asks for nothing.
    assert!(c.on_event(Event::StartRequesting(last), now + 2).is_empty(), "ignored while a lease is held");
    c.on_event(Event::Release, now + 3);
    let (m, ..) = one_send(&c.on_event(Event::Start, now + 4));
    assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), None);
}

/// Drives a client bound by a server that answers every renewal at once with `p`, for `secs`
/// of simulated time; returns the renewal REQUESTs sent and, for each ACK, the time from it to
/// the next renewal.
fn renewals_against(p: &ServerParams, cfg: ClientConfig, secs: u64) -> (usize, Vec<Millis>) {
    let mut c = Client::new(cfg);
    let mut now = T0;
    let mut sent = one_send(&c.on_event(Event::Start, now)).1;
    let mut requests = 0;
    let mut gaps = vec![];
    for _ in 0..100_000 {
        let answer = match msg_type(&srv::decode(&sent)) {
            v4::MessageType::Discover => srv::offer(&sent, p),
            _ => srv::ack(&sent, p),
        };
        now += 1; // the server answers within 1 ms
        let a = c.on_event(Event::Packet { bytes: answer }, now);
        if a.iter().any(|x| matches!(x, Action::ApplyLease { .. })) {
            gaps.push(timer_of(&a) - now);
        }
        if let Some((_, b, ..)) = sends(&a).into_iter().next() {
            sent = b; // the REQUEST after the OFFER
            continue;
        }
        let t = c.next_timer().expect("a bound finite lease has a timer");
        if t > T0 + secs * 1000 {
            break;
        }
        now = t;
        let a = c.on_event(Event::Timer, now);
        sent = one_send(&a).1;
        requests += 1;
    }
    (requests, gaps)
}

#[test]
fn a_server_cannot_make_the_client_renew_in_a_loop() {
    // T1 = 0 on an hour's lease, T1 = T2 = 0, and a 1 s lease (T1 = T2 = 0 by default): each
    // renewal is answered at once; over 60 s the client renews at most every 2 s (the floor
    // for the default 4 s minimum lease), never with a zero gap.
    for p in [
        ServerParams { t1: Some(0), ..Default::default() },
        ServerParams { t1: Some(0), t2: Some(0), ..Default::default() },
        ServerParams { lease_secs: Some(1), ..Default::default() },
    ] {
        let (requests, gaps) = renewals_against(&p, cfg(), 60);
        assert!((25..=30).contains(&requests), "{p:?}: {requests} renewals in 60 s");
        assert!(gaps.iter().all(|g| *g >= 2_000), "{p:?}: gaps {gaps:?}");
    }
    // The 1 s lease is used as a 4 s one (renewed after 2 s, rebinding after 3 s).
    let (_, l) = bound(&ServerParams { lease_secs: Some(1), ..Default::default() });
    assert_eq!((l.lease_secs, l.t1_secs, l.t2_secs), (4, 2, 3));
    // A larger configured minimum raises the floor: 20 s -> renewals every 10 s.
    let (requests, gaps) = renewals_against(&ServerParams { t1: Some(0), ..Default::default() }, ClientConfig { min_lease_secs: 20, ..cfg() }, 60);
    assert!((5..=6).contains(&requests), "{requests}");
    assert!(gaps.iter().all(|g| *g >= 10_000), "{gaps:?}");
    // Legitimate short test-network leases are used as given.
    let (_, l) = bound(&ServerParams { lease_secs: Some(8), t1: Some(2), t2: Some(6), ..Default::default() });
    assert_eq!((l.lease_secs, l.t1_secs, l.t2_secs), (8, 2, 6));
}

#[test]
fn a_late_ack_does_not_start_the_next_renewal_at_once() {
    // T1 is 2 s, counted from the REQUEST; the ACK comes 5 s after it: the next renewal is
    // still 2 s away, not due at once.
    let p = ServerParams { lease_secs: Some(60), t1: Some(2), t2: Some(50), ..Default::default() };
    let (mut c, request) = requesting(&p);
    let late = T0 + 100 + 5_000;
    let a = c.on_event(Event::Packet { bytes: srv::ack(&request, &p) }, late);
    assert_eq!(c.lease().unwrap().renew_at(), Some(T0 + 100 + 2_000));
    assert_eq!(timer_of(&a), late + 2_000);
}

#[test]
fn renewing_rejects_an_ack_from_another_server_and_releases_to_its_own() {
    let (mut c, lease, req, t1) = renewing();
    let rogue = Ipv4Addr::new(192, 168, 1, 66);
    // A valid ACK for our own address, from a server that was not asked (a rogue sniffing the
    // unicast renewal): rejected, nothing changes.
    let hijack = ServerParams { server_id: Some(rogue), routers: vec![rogue], ..Default::default() };
    let timer = c.next_timer();
    for bytes in [srv::ack(&req, &hijack), srv::nak(&req, &hijack)] {
        let a = c.on_event(Event::Packet { bytes }, t1 + 5);
        assert_eq!(a, vec![Action::Reject { reason: RejectReason::ServerIdMismatch { got: rogue, expected: srv::SERVER } }]);
        assert_eq!((c.state(), c.lease(), c.server(), c.next_timer()), (State::Renewing, Some(&lease), Some(srv::SERVER), timer));
    }
    // The RELEASE still goes to the lease's server.
    let a = c.on_event(Event::Release, t1 + 10);
    let (m, _, dest, _) = one_send(&a);
    assert_eq!((msg_type(&m), dest), (v4::MessageType::Release, Dest::Unicast(srv::SERVER)));
    assert_eq!(opt_ip(&m, OptionCode::ServerIdentifier), Some(srv::SERVER));

    // The real server's ACK is taken, and so (RFC 2131 §4.4.5) is another server's while
    // REBINDING: a broadcast REQUEST may be answered by any server.
    let (mut c, _, req, t1) = renewing();
    c.on_event(Event::Packet { bytes: srv::ack(&req, &ServerParams::default()) }, t1 + 5);
    assert_eq!(c.state(), State::Bound);
    let (mut c, lease, _, _) = renewing();
    let a = c.on_event(Event::Timer, lease.rebind_at().unwrap());
    assert_eq!(c.state(), State::Rebinding);
    c.on_event(Event::Packet { bytes: srv::ack(&one_send(&a).1, &hijack) }, lease.rebind_at().unwrap() + 5);
    assert_eq!((c.state(), c.server()), (State::Bound, Some(rogue)));
}

/// A short lease (60 s, T2 at the default 87.5 %, in whole seconds) has 8 s from T2 to expiry: RFC 2131's 60 s
/// floor alone sent one REBINDING broadcast in it, and a session lost its address when that one
/// went unanswered (an HA standby still taking over, issue 16). Now each phase is retried.
#[test]
fn a_short_leases_renewal_and_rebinding_are_retried_before_expiry() {
    let (mut c, lease) = bound(&ServerParams { lease_secs: Some(60), ..ServerParams::default() });
    let (t1, t2, exp) = (lease.renew_at().unwrap(), lease.rebind_at().unwrap(), lease.expires_at().unwrap());
    assert_eq!((t2 - t1, exp - t2), (22_000, 8_000));
    let (mut renewing, mut rebinding) = (vec![], vec![]);
    loop {
        let (t, a) = fire(&mut c);
        if t >= exp {
            break;
        }
        let (_, _, dest, _) = one_send(&a);
        match c.state() {
            State::Renewing => renewing.push((t - t1, dest)),
            State::Rebinding => rebinding.push((t - t2, dest)),
            s => panic!("{s:?} at {t}"),
        }
    }
    let at = |v: &[(Millis, Dest)]| v.iter().map(|(t, _)| *t).collect::<Vec<_>>();
    assert_eq!(at(&renewing), vec![0, 11_000, 16_500], "unicast to the server, three times before T2");
    assert!(renewing.iter().all(|(_, d)| *d == Dest::Unicast(srv::SERVER)));
    assert_eq!(at(&rebinding), vec![0, 4_000, 6_000], "broadcast, three times before expiry");
    assert!(rebinding.iter().all(|(_, d)| *d == Dest::Broadcast));
}

/// Drives a client through an unanswered REQUESTING exchange back to DISCOVER; returns it, the
/// abandoned exchange's REQUEST and the new DISCOVER.
fn gave_up_requesting(p: &ServerParams) -> (Client, Vec<u8>, Vec<u8>, Millis) {
    let (mut c, request) = requesting(p);
    for _ in 1..MAX_SELECTING_REQUESTS {
        fire(&mut c);
    }
    let (t, a) = fire(&mut c);
    let (_, discover, _, _) = one_send(&a);
    assert_eq!(c.state(), State::Selecting);
    (c, request, discover, t)
}

/// A server slower than the REQUEST retransmissions (a log-in storm against Kea in hot-standby:
/// ACKs 15-20 s late in issue 16's farm) ACKs the exchange the client has given up on: that ACK
/// grants this client the lease, and binds it, whether the new exchange is still selecting or
/// already requesting; its lease counts from the abandoned exchange's first REQUEST.
#[test]
fn a_late_ack_of_the_abandoned_request_exchange_binds() {
    let p = ServerParams::default();
    for requesting_again in [false, true] {
        let (mut c, old_request, discover, t) = gave_up_requesting(&p);
        if requesting_again {
            let a = c.on_event(Event::Packet { bytes: srv::offer(&discover, &p) }, t + 10);
            assert_eq!(c.state(), State::Requesting, "{a:?}");
        }
        let a = c.on_event(Event::Packet { bytes: srv::ack(&old_request, &p) }, t + 20);
        assert_eq!(c.state(), State::Bound, "{a:?}");
        assert_eq!(c.lease(), Some(&expected_lease(T0 + 100)), "acquired when the abandoned exchange began");
        assert!(a.iter().any(|a| matches!(a, Action::ApplyLease { .. })));
        // Later replies to either exchange: no transaction any more.
        let a = c.on_event(Event::Packet { bytes: srv::ack(&old_request, &p) }, t + 30);
        assert!(matches!(&a[..], [Action::Reject { .. }]), "{a:?}");
    }
    // With the address check on, it is checked first, as any ACK.
    let (c, old_request, _, t) = gave_up_requesting(&p);
    let mut c = c.with_address_check(true);
    let a = c.on_event(Event::Packet { bytes: srv::ack(&old_request, &p) }, t + 20);
    assert_eq!(a, vec![Action::CheckAddress(srv::ADDR)]);
}

#[test]
fn what_a_late_reply_of_the_abandoned_exchange_does_not_do() {
    let p = ServerParams::default();
    // A NAK, an OFFER, or an ACK from another server than the one the exchange asked.
    let other = ServerParams { server_id: Some(Ipv4Addr::new(10, 0, 0, 66)), ..ServerParams::default() };
    type Reply = fn(&[u8], &ServerParams) -> Vec<u8>;
    let replies: [(Reply, &ServerParams); 3] = [(srv::nak, &p), (srv::offer, &p), (srv::ack, &other)];
    for (reply, from) in replies {
        let (mut c, old_request, _, t) = gave_up_requesting(&p);
        let a = c.on_event(Event::Packet { bytes: reply(&old_request, from) }, t + 20);
        assert!(matches!(&a[..], [Action::Reject { .. }]), "{a:?}");
        assert_eq!(c.state(), State::Selecting);
    }
    // Only the exchange given up last, and not after a NAK of the new one.
    let (mut c, old_request, discover, t) = gave_up_requesting(&p);
    c.on_event(Event::Packet { bytes: srv::offer(&discover, &p) }, t + 10);
    let (_, a) = fire(&mut c);
    let (_, new_request, _, _) = one_send(&a);
    c.on_event(Event::Packet { bytes: srv::nak(&new_request, &p) }, t + 1_500);
    let a = c.on_event(Event::Packet { bytes: srv::ack(&old_request, &p) }, t + 1_600);
    assert!(matches!(&a[..], [Action::Reject { .. }]), "{a:?}");
    assert_eq!(c.state(), State::Init);
}

/// Binds a client with timer fuzz on (seed `seed`) to the default server's hour lease.
fn bound_fuzzed(seed: u64) -> (Client, Lease) {
    let p = ServerParams::default();
    let mut c = Client::new(ClientConfig { seed, ..cfg() });
    let discover = one_send(&c.on_event(Event::Start, T0)).1;
    let request = one_send(&c.on_event(Event::Packet { bytes: srv::offer(&discover, &p) }, T0 + 100)).1;
    c.on_event(Event::Packet { bytes: srv::ack(&request, &p) }, T0 + 200);
    assert_eq!(c.state(), State::Bound);
    let l = c.lease().unwrap().clone();
    (c, l)
}

#[test]
fn t1_and_t2_are_fuzzed_per_lease_and_the_phases_follow_them() {
    // RFC 2131 §4.4.5: clients bound together do not renew together. An hour's lease (T1 30 min,
    // T2 52.5 min): each client's T1 within +- 2.8 min (an eighth of T1..T2), T2 within +- 56 s.
    let mut renews = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let (mut c, lease) = bound_fuzzed(seed);
        let (t1, t2, exp) = c.lease_deadlines().unwrap();
        assert_eq!(exp, lease.expires_at().unwrap());
        let (n1, n2) = (lease.renew_at().unwrap(), lease.rebind_at().unwrap());
        assert!(t1.abs_diff(n1) <= 168_750 && t2.abs_diff(n2) <= 56_250, "{seed}: {} {}", t1 as i64 - n1 as i64, t2 as i64 - n2 as i64);
        assert_eq!(c.next_timer(), Some(t1));
        renews.insert(t1);
        // Nothing before this lease's own T1, then RENEWING; REBINDING from its own T2.
        assert_eq!(c.on_event(Event::Timer, t1 - 1), vec![Action::SetTimer(t1)]);
        assert_eq!(c.state(), State::Bound);
        let a = c.on_event(Event::Timer, t1);
        assert_eq!((c.state(), one_send(&a).2), (State::Renewing, Dest::Unicast(srv::SERVER)));
        assert!(c.next_timer().unwrap() <= t2);
        c.on_event(Event::Timer, t2 - 1);
        assert_eq!(c.state(), State::Renewing, "{seed}");
        let a = c.on_event(Event::Timer, t2);
        assert_eq!((c.state(), one_send(&a).2), (State::Rebinding, Dest::Broadcast));
        assert!(c.next_timer().unwrap() <= exp);
    }
    assert!(renews.len() > 150, "{} distinct T1s of 200", renews.len()); // 2001 steps: some coincide
    // A renewal draws a new fuzz for the renewed lease.
    let offset = |c: &Client| c.lease_deadlines().unwrap().0 as i64 - c.lease().unwrap().renew_at().unwrap() as i64;
    let (mut c, _) = bound_fuzzed(3);
    let first = offset(&c);
    let (t1, a) = fire(&mut c);
    c.on_event(Event::Packet { bytes: srv::ack(&one_send(&a).1, &ServerParams::default()) }, t1 + 10);
    assert_eq!(c.state(), State::Bound);
    assert_ne!(offset(&c), first, "the renewed lease's fuzz is drawn anew");
    // Off: the server's T1 and T2 exactly.
    let (c, lease) = bound(&ServerParams::default());
    assert_eq!(c.lease_deadlines(), Some((lease.renew_at().unwrap(), lease.rebind_at().unwrap(), lease.expires_at().unwrap())));
}
