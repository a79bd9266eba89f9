//! The address check after an ACK (RFC 2131 §4.4.1, RFC 5227) and the DHCPDECLINE path.

use std::net::Ipv4Addr;

use dhcproto::v4::{self, OptionCode};

use super::fake_server::{self as srv, ServerParams};
use super::harness::*;
use crate::dhcp::*;

const SQUATTER: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fn checking_client() -> Client {
    client().with_address_check(true)
}

/// Runs DISCOVER/OFFER/REQUEST/ACK with `p` from `t`; returns the ACK's actions.
fn to_ack(c: &mut Client, p: &ServerParams, t: Millis) -> Vec<Action> {
    let (_, discover, ..) = one_send(&c.on_event(Event::Start, t));
    let (_, request, ..) = one_send(&c.on_event(Event::Packet { bytes: srv::offer(&discover, p) }, t + 10));
    c.on_event(Event::Packet { bytes: srv::ack(&request, p) }, t + 20)
}

fn declines(a: &[Action]) -> Vec<v4::Message> {
    sends(a).into_iter().filter(|(m, ..)| msg_type(m) == v4::MessageType::Decline).map(|(m, ..)| m).collect()
}

#[test]
fn an_ack_in_requesting_is_checked_before_anything_is_applied() {
    let mut c = checking_client();
    let a = to_ack(&mut c, &ServerParams::default(), T0);
    assert_eq!(a, vec![Action::CheckAddress(srv::ADDR)], "nothing applied, persisted or timed before the check");
    assert_eq!(c.state(), State::Requesting);
    assert_eq!(c.lease(), None);
    assert_eq!(c.next_timer(), None, "no retransmission while the driver probes");
    // A duplicate ACK of the same exchange is ignored meanwhile.
    let a = c.on_event(Event::Timer, T0 + 5_000);
    assert!(sends(&a).is_empty(), "{a:?}");
    // Free: bound as without the check.
    let a = c.on_event(Event::AddressFree, T0 + 220);
    assert!(matches!(&a[0], Action::ApplyLease { lease, previous: None } if *lease == expected_lease(T0 + 10)), "{a:?}");
    assert_eq!(a[1], Action::PersistLease(Some(expected_lease(T0 + 10))));
    assert_eq!(c.state(), State::Bound);
    assert!(c.next_timer().is_some());
    // A stale answer changes nothing.
    assert!(c.on_event(Event::AddressFree, T0 + 300).is_empty());
}

#[test]
fn without_the_check_an_ack_binds_at_once() {
    let mut c = client();
    let a = to_ack(&mut c, &ServerParams::default(), T0);
    assert!(matches!(a[0], Action::ApplyLease { .. }), "{a:?}");
    assert!(!a.iter().any(|a| matches!(a, Action::CheckAddress(_))));
}

#[test]
fn an_address_in_use_is_declined_and_the_client_starts_over_after_the_wait() {
    let mut c = checking_client();
    to_ack(&mut c, &ServerParams::default(), T0);
    let t = T0 + 220;
    let a = c.on_event(Event::AddressInUse { by: SQUATTER }, t);
    let d = declines(&a);
    assert_eq!(d.len(), 1, "{a:?}");
    let (m, _, dest, flag) = one_send(&a);
    assert_eq!((dest, flag), (Dest::Broadcast, false), "RFC 2131 §4.4.4: broadcast");
    // RFC 2131 table 5: ciaddr 0; requested address and server id; no host name, PRL or size.
    assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), Some(srv::ADDR));
    assert_eq!(opt_ip(&m, OptionCode::ServerIdentifier), Some(srv::SERVER));
    assert_eq!(m.chaddr(), &MAC);
    assert!(m.opts().get(OptionCode::ClientIdentifier).is_some());
    for absent in [OptionCode::Hostname, OptionCode::ParameterRequestList, OptionCode::MaxMessageSize] {
        assert!(m.opts().get(absent).is_none(), "{absent:?} in a DECLINE");
    }
    // Nothing was applied, so nothing is removed; the next DISCOVER waits DECLINE_WAIT_MS.
    assert!(!a.iter().any(|a| matches!(a, Action::RemoveLease(_) | Action::ApplyLease { .. })));
    assert_eq!(c.state(), State::Init);
    assert_eq!(timer_of(&a), t + DECLINE_WAIT_MS);
    assert_eq!(DECLINE_WAIT_MS, 10_000, "RFC 2131 §3.1: at least ten seconds");
    assert_eq!(c.declines(), 1);
    let early = c.on_event(Event::Timer, t + DECLINE_WAIT_MS - 1);
    assert!(sends(&early).is_empty());
    let (_, a) = fire(&mut c);
    let (m, ..) = one_send(&a);
    assert_eq!(msg_type(&m), v4::MessageType::Discover);
    assert_eq!(opt_ip(&m, OptionCode::RequestedIpAddress), None, "the declined address is not asked for again");
    // The server hands out another address, which is free: bound, and the count starts over.
    let other = ServerParams { yiaddr: Ipv4Addr::new(192, 168, 1, 51), ..ServerParams::default() };
    let (_, request, ..) = one_send(&c.on_event(Event::Packet { bytes: srv::offer(&m_bytes(&a), &other) }, t + 10_100));
    assert_eq!(c.on_event(Event::Packet { bytes: srv::ack(&request, &other) }, t + 10_110), vec![Action::CheckAddress(other.yiaddr)]);
    c.on_event(Event::AddressFree, t + 10_300);
    assert_eq!((c.state(), c.lease().map(|l| l.address)), (State::Bound, Some(other.yiaddr)));
    assert_eq!(c.declines(), 0);
}

fn m_bytes(a: &[Action]) -> Vec<u8> {
    one_send(a).1
}

#[test]
fn a_persistent_conflict_gives_up_after_max_conflicts() {
    let mut c = checking_client();
    let p = ServerParams::default();
    let mut t = T0;
    for n in 1..=crate::acd::MAX_CONFLICTS {
        let a = if n == 1 {
            to_ack(&mut c, &p, t)
        } else {
            let (_, a) = fire(&mut c);
            let (_, request, ..) = one_send(&c.on_event(Event::Packet { bytes: srv::offer(&m_bytes(&a), &p) }, t + 10));
            c.on_event(Event::Packet { bytes: srv::ack(&request, &p) }, t + 20)
        };
        assert_eq!(a, vec![Action::CheckAddress(p.yiaddr)], "attempt {n}");
        let a = c.on_event(Event::AddressInUse { by: SQUATTER }, t + 30);
        assert_eq!(declines(&a).len(), 1, "attempt {n}");
        if n < crate::acd::MAX_CONFLICTS {
            assert_eq!(timer_of(&a), t + 30 + DECLINE_WAIT_MS);
            t += 30 + DECLINE_WAIT_MS;
        } else {
            assert!(a.contains(&Action::GiveUp { declined: n, address: p.yiaddr, by: SQUATTER }), "{a:?}");
            assert_eq!(c.next_timer(), None, "no further attempt");
            assert_eq!(c.state(), State::Init);
        }
    }
}

#[test]
fn a_held_lease_lost_to_another_host_is_declined_removed_and_replaced() {
    let (mut c, l) = bound(&ServerParams::default());
    let t = T0 + 60_000;
    let a = c.on_event(Event::AddressInUse { by: SQUATTER }, t);
    assert_eq!(a[0], Action::RemoveLease(l.clone()));
    assert_eq!(a[1], Action::PersistLease(None));
    let d = declines(&a);
    assert_eq!(d.len(), 1);
    assert_eq!(opt_ip(&d[0], OptionCode::RequestedIpAddress), Some(l.address));
    assert_eq!(d[0].ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!((c.state(), c.lease()), (State::Init, None));
    assert_eq!(timer_of(&a), t + DECLINE_WAIT_MS);
    let (_, a) = fire(&mut c);
    assert_eq!(msg_type(&one_send(&a).0), v4::MessageType::Discover);
}

#[test]
fn a_conflict_report_with_nothing_checked_or_held_is_ignored() {
    let (mut c, _) = selecting();
    assert!(c.on_event(Event::AddressInUse { by: SQUATTER }, T0 + 5).is_empty());
    assert_eq!(c.state(), State::Selecting);
    let mut r = checking_client();
    r.on_event(Event::Release, T0);
    assert!(r.on_event(Event::AddressInUse { by: SQUATTER }, T0 + 5).is_empty());
}

#[test]
fn an_unconfirmed_lease_of_the_declined_address_is_removed_too() {
    // INIT-REBOOT unanswered, then DISCOVER with the old address as hint; the server offers it
    // again and another host now has it: the address an earlier daemon left on the interface goes.
    let mut c = checking_client();
    let old = expected_lease(T0 - 1_000);
    c.on_event(Event::StartWithLease(old.clone()), T0);
    for _ in 0..MAX_REBOOT_REQUESTS {
        fire(&mut c);
    }
    assert_eq!(c.state(), State::Selecting);
    let a = c.on_event(Event::Timer, c.next_timer().unwrap());
    let discover = one_send(&a).1;
    let p = ServerParams::default();
    let (_, request, ..) = one_send(&c.on_event(Event::Packet { bytes: srv::offer(&discover, &p) }, T0 + 30_000));
    let a = c.on_event(Event::Packet { bytes: srv::ack(&request, &p) }, T0 + 30_010);
    // the check, and the end of the unconfirmed lease still timed
    assert_eq!(a, vec![Action::CheckAddress(p.yiaddr), Action::SetTimer(old.expires_at().unwrap())]);
    let a = c.on_event(Event::AddressInUse { by: SQUATTER }, T0 + 30_200);
    assert!(a.contains(&Action::RemoveLease(old)), "{a:?}");
    assert!(a.contains(&Action::PersistLease(None)));
    assert_eq!(declines(&a).len(), 1);
}
