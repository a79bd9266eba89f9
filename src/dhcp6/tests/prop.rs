//! Property tests: random event sequences (timers at random times, valid, broken and foreign
//! replies, garbage) never yield an invalid lease, a timer in the past, or a panic; and the
//! decoder never panics on arbitrary bytes.

use std::net::Ipv6Addr;

use dhcproto::v6::{MessageType, Status};
use proptest::prelude::*;

use super::fake_server::{self as srv, Answer};
use crate::dhcp6::*;

const T0: u64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    Start,
    StartInformation,
    Advance(u64),
    FireTimer(u64),
    TimerNow,
    Answer(bool, Answer),
    Mutated(bool, Answer, Vec<(usize, u8)>),
    Garbage(Vec<u8>),
    Release,
}

fn status() -> impl Strategy<Value = Option<Status>> {
    prop_oneof![
        6 => Just(None),
        1 => Just(Some(Status::Success)),
        1 => Just(Some(Status::NoBinding)),
        1 => Just(Some(Status::NoAddrsAvail)),
        1 => Just(Some(Status::NotOnLink)),
        1 => Just(Some(Status::UnspecFail)),
    ]
}

fn lifetime() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 1u32..5_000, 1 => Just(0u32), 1 => Just(u32::MAX), 1 => any::<u32>()]
}

fn answer() -> impl Strategy<Value = Answer> {
    let addr = prop_oneof![
        5 => (1u16..=0xffff).prop_map(|h| Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 1, h)),
        1 => Just("fe80::1".parse().unwrap()),
        1 => Just(Ipv6Addr::UNSPECIFIED),
        1 => any::<u128>().prop_map(Ipv6Addr::from),
    ];
    let server = prop_oneof![5 => Just(Some(srv::SERVER_DUID.to_vec())), 1 => Just(None), 1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(Some)];
    (
        addr,
        lifetime(),
        lifetime(),
        lifetime(),
        lifetime(),
        server,
        status(),
        status(),
        any::<Option<u8>>(),
        any::<bool>(),
        prop_oneof![6 => Just(0u32), 1 => any::<u32>()],
        any::<Option<u32>>(),
    )
        .prop_map(|(address, preferred, valid, t1, t2, server_id, status, ia_status, preference, rapid_commit, xid_delta, refresh)| Answer {
            address,
            preferred,
            valid,
            t1,
            t2,
            server_id,
            status,
            ia_status,
            preference,
            rapid_commit,
            xid_delta,
            refresh,
            ..Answer::default()
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Start),
        1 => Just(Op::StartInformation),
        2 => (0u64..700_000).prop_map(Op::Advance),
        4 => (0u64..3_000).prop_map(Op::FireTimer),
        1 => Just(Op::TimerNow),
        6 => (any::<bool>(), answer()).prop_map(|(a, x)| Op::Answer(a, x)),
        2 => (any::<bool>(), answer(), proptest::collection::vec((0usize..200, any::<u8>()), 1..6)).prop_map(|(a, x, m)| Op::Mutated(a, x, m)),
        1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Garbage),
        1 => Just(Op::Release),
    ]
}

fn last_send(actions: &[Action]) -> Option<Vec<u8>> {
    actions.iter().rev().find_map(|a| if let Action::Send { bytes } = a { Some(bytes.clone()) } else { None })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_invalid_lease_no_past_timer_no_panic(ops in proptest::collection::vec(op(), 1..40), rapid in any::<bool>()) {
        let mut c = Client::new(ClientConfig { duid: crate::dhcp::duid("m"), iaid: 3, seed: 9, min_renew_secs: 2, rapid_commit: rapid });
        let mut now = T0;
        let mut sent: Option<Vec<u8>> = None;
        for op in ops {
            let ev = match op {
                Op::Start => Some(Event::Start),
                Op::StartInformation => Some(Event::StartInformation),
                Op::Advance(ms) => { now += ms; None }
                Op::FireTimer(late) => { now = c.timer().map_or(now, |t| t.max(now) + late); Some(Event::Timer) }
                Op::TimerNow => Some(Event::Timer),
                Op::Answer(adv, a) => sent.as_ref().map(|s| Event::Packet { bytes: srv::answer(s, if adv { MessageType::Advertise } else { MessageType::Reply }, &a) }),
                Op::Mutated(adv, a, muts) => sent.as_ref().map(|s| {
                    let mut b = srv::answer(s, if adv { MessageType::Advertise } else { MessageType::Reply }, &a);
                    for (i, v) in muts { if !b.is_empty() { let n = b.len(); b[i % n] = v; } }
                    Event::Packet { bytes: b }
                }),
                Op::Garbage(b) => Some(Event::Packet { bytes: b }),
                Op::Release => Some(Event::Release),
            };
            let Some(ev) = ev else { continue };
            let acts = c.on_event(ev, now);
            for a in &acts {
                match a {
                    Action::SetTimer(t) => prop_assert!(*t >= now, "timer in the past"),
                    Action::ApplyLease { lease, .. } => prop_assert!(lease.validate().is_ok(), "applied invalid lease {lease:?}"),
                    Action::PersistLease(Some(lease)) => prop_assert!(lease.validate().is_ok()),
                    _ => {}
                }
            }
            if let Some(s) = last_send(&acts) { sent = Some(s); }
            if let Some(l) = c.lease() {
                prop_assert!(l.validate().is_ok());
                prop_assert!(matches!(c.state(), State::Bound | State::Renewing | State::Rebinding | State::Requesting));
            }
            if matches!(c.state(), State::Soliciting | State::Requesting | State::Renewing | State::Rebinding | State::Informing | State::Bound) {
                prop_assert!(c.timer().is_some() || c.lease().is_some_and(|l| l.renew_at().is_none()), "{:?} without a timer", c.state());
            }
        }
    }

    #[test]
    fn the_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
        let mut c = Client::new(ClientConfig { duid: crate::dhcp::duid("m"), iaid: 3, seed: 9, min_renew_secs: 2, rapid_commit: true });
        c.on_event(Event::Start, T0);
        let _ = c.on_event(Event::Packet { bytes }, T0 + 1);
    }
}
