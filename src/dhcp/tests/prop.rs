//! Property tests: random event sequences (timers at random times, valid and
//! invalid server replies, garbage) never yield an invalid bound lease, a timer
//! in the past, or a panic.

use std::net::Ipv4Addr;

use dhcproto::v4;
use proptest::prelude::*;

use super::fake_server::{self as srv, ServerParams};
use super::harness::*;
use crate::dhcp::*;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Offer,
    Ack,
    Nak,
}

#[derive(Debug, Clone)]
enum Op {
    Start,
    StartWithLease(Lease),
    Advance(u64),
    /// Jump to the armed deadline (plus `late` ms) and fire.
    FireTimer(u64),
    /// Fire whatever the deadline is (often early).
    TimerNow,
    Reply(Kind, ServerParams),
    /// The reply a cooperative server would send to the last message (OFFER to
    /// DISCOVER, ACK to REQUEST), with random lease parameters.
    Answer(ServerParams),
    /// A reply with some bytes overwritten.
    Mutated(Kind, ServerParams, Vec<(usize, u8)>),
    Garbage(Vec<u8>),
    Release,
}

fn addr() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        4 => (1u8..=254).prop_map(|h| Ipv4Addr::new(192, 168, 1, h)),
        1 => Just(Ipv4Addr::UNSPECIFIED),
        1 => Just(Ipv4Addr::new(127, 0, 0, 1)),
        1 => Just(Ipv4Addr::new(224, 0, 0, 1)),
        1 => Just(Ipv4Addr::BROADCAST),
        1 => Just(Ipv4Addr::new(240, 1, 2, 3)),
        1 => Just(srv::SERVER),
        2 => any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn secs() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(0)),
        3 => (1u32..100_000).prop_map(Some),
        1 => Just(Some(u32::MAX)),
        1 => any::<u32>().prop_map(Some),
    ]
}

fn params() -> impl Strategy<Value = ServerParams> {
    let mask = prop_oneof![
        3 => Just(Some(Ipv4Addr::new(255, 255, 255, 0))),
        1 => Just(None),
        2 => any::<u32>().prop_map(|m| Some(Ipv4Addr::from(m))),
        1 => (0u32..=32).prop_map(|p| Some(Ipv4Addr::from(u32::MAX.checked_shl(32 - p).unwrap_or(0)))),
    ];
    let server = prop_oneof![4 => Just(Some(srv::SERVER)), 1 => Just(None), 1 => addr().prop_map(Some)];
    let classless = prop_oneof![3 => Just(None), 1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Some)];
    let yiaddr = prop_oneof![6 => (1u8..=254).prop_map(|h| Ipv4Addr::new(192, 168, 1, h)), 4 => addr()];
    let lease = prop_oneof![4 => (1u32..20_000).prop_map(Some), 2 => secs()];
    (server, yiaddr, mask, lease, secs(), secs(), classless, proptest::collection::vec(addr(), 0..3), any::<Option<u16>>()).prop_map(
        |(server_id, yiaddr, mask, lease_secs, t1, t2, classless, routers, mtu)| ServerParams {
            server_id,
            yiaddr,
            mask,
            lease_secs,
            t1,
            t2,
            classless,
            routers,
            mtu,
            ..Default::default()
        },
    )
}

fn persisted() -> impl Strategy<Value = Lease> {
    (addr(), 0u8..=40, any::<u32>(), any::<u32>(), any::<u32>(), 0u64..20_000_000_000).prop_map(|(address, prefix_len, a, b, c, back)| {
        let mut t = [a, b, c];
        if a % 3 != 0 {
            t.sort(); // mostly consistent timers, sometimes not
        }
        Lease { address, prefix_len, lease_secs: t[2], t1_secs: t[0], t2_secs: t[1], acquired_at: T0.saturating_sub(back), ..expected_lease(T0) }
    })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Offer), Just(Kind::Ack), Just(Kind::Nak)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Start),
        1 => persisted().prop_map(Op::StartWithLease),
        2 => prop_oneof![0u64..3_000, 0u64..5_000_000_000].prop_map(Op::Advance),
        5 => prop_oneof![Just(0u64), 0u64..100_000, 0u64..10_000_000_000].prop_map(Op::FireTimer),
        1 => Just(Op::TimerNow),
        4 => (kind(), params()).prop_map(|(k, p)| Op::Reply(k, p)),
        10 => params().prop_map(Op::Answer),
        2 => (kind(), params(), proptest::collection::vec((0usize..400, any::<u8>()), 1..6))
            .prop_map(|(k, p, m)| Op::Mutated(k, p, m)),
        2 => proptest::collection::vec(any::<u8>(), 0..1600).prop_map(Op::Garbage),
        1 => Just(Op::Release),
        2 => Just(Op::Start),
    ]
}

fn check_lease(l: &Lease) -> Result<(), TestCaseError> {
    let o = l.address.octets();
    prop_assert!(o[0] != 0 && o[0] != 127 && o[0] < 224, "bad address {}", l.address);
    prop_assert_ne!(l.address, l.server_id);
    prop_assert!((MIN_PREFIX_LEN..=32).contains(&l.prefix_len));
    prop_assert!(crate::dhcp::lease::check_server_id(l.server_id).is_ok(), "server id {}", l.server_id);
    if l.prefix_len <= 30 {
        let host = u32::from(l.address) & (u32::MAX >> l.prefix_len);
        prop_assert!(host != 0 && host != u32::MAX >> l.prefix_len, "network/broadcast address {}", l.address);
    }
    prop_assert!(l.lease_secs >= DEFAULT_MIN_LEASE_SECS, "lease below the floor {l:?}");
    prop_assert!(l.t1_secs >= DEFAULT_MIN_LEASE_SECS / 2, "renewal below the floor {l:?}");
    prop_assert!(l.t1_secs <= l.t2_secs && l.t2_secs <= l.lease_secs, "timers {l:?}");
    Ok(())
}

fn reply_bytes(last_sent: &[u8], k: Kind, p: &ServerParams) -> Vec<u8> {
    match k {
        Kind::Offer => srv::offer(last_sent, p),
        Kind::Ack => srv::ack(last_sent, p),
        Kind::Nak => srv::nak(last_sent, p),
    }
}

fn run(ops: Vec<Op>, seed: u64) -> Result<(), TestCaseError> {
    let mut c = Client::new(ClientConfig { seed, ..cfg() });
    let mut now = T0;
    // Something decodable to answer before the client has sent anything.
    let mut last_sent = {
        let mut m = v4::Message::new_with_id(1, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, &MAC);
        m.opts_mut().insert(v4::DhcpOption::MessageType(v4::MessageType::Discover));
        srv::encode(&m)
    };
    for op in ops {
        let ev = match op {
            Op::Start => Event::Start,
            Op::StartWithLease(l) => Event::StartWithLease(l),
            Op::Advance(ms) => {
                now += ms;
                continue;
            }
            Op::FireTimer(late) => {
                if let Some(t) = c.next_timer() {
                    now = now.max(t.saturating_add(late));
                }
                Event::Timer
            }
            Op::TimerNow => Event::Timer,
            Op::Reply(k, p) => Event::Packet { bytes: reply_bytes(&last_sent, k, &p) },
            Op::Answer(p) => {
                let k = match srv::decode(&last_sent).opts().msg_type() {
                    Some(v4::MessageType::Discover) => Kind::Offer,
                    _ => Kind::Ack,
                };
                Event::Packet { bytes: reply_bytes(&last_sent, k, &p) }
            }
            Op::Mutated(k, p, edits) => {
                let mut b = reply_bytes(&last_sent, k, &p);
                for (i, v) in edits {
                    if let Some(x) = b.get_mut(i) {
                        *x = v;
                    }
                }
                Event::Packet { bytes: b }
            }
            Op::Garbage(b) => Event::Packet { bytes: b },
            Op::Release => Event::Release,
        };
        let actions = c.on_event(ev, now);
        for a in &actions {
            match a {
                Action::SetTimer(t) => prop_assert!(*t >= now, "SetTimer({t}) < now {now}"),
                Action::ApplyLease { lease, .. } => check_lease(lease)?,
                Action::PersistLease(Some(lease)) => check_lease(lease)?,
                Action::Send { bytes, dest, broadcast_flag } => {
                    let m = srv::decode(bytes);
                    prop_assert_eq!(m.opcode(), v4::Opcode::BootRequest);
                    prop_assert_eq!(m.chaddr(), &MAC[..]);
                    prop_assert_eq!(m.flags().broadcast(), *broadcast_flag);
                    prop_assert!(bytes.len() <= 576);
                    if *broadcast_flag {
                        prop_assert_eq!(*dest, Dest::Broadcast);
                    }
                    last_sent = bytes.clone();
                }
                _ => {}
            }
        }
        if actions.iter().any(|a| matches!(a, Action::Reject { .. })) {
            prop_assert_eq!(actions.len(), 1, "a reject comes alone");
        }
        let holds = matches!(c.state(), State::Bound | State::Renewing | State::Rebinding);
        prop_assert_eq!(holds, c.lease().is_some(), "state {:?}", c.state());
        if let Some(l) = c.lease() {
            check_lease(l)?;
            if c.state() == State::Bound {
                prop_assert_eq!(c.next_timer().is_none(), l.is_infinite());
            }
        }
        if matches!(c.state(), State::Selecting | State::Requesting | State::Rebooting | State::Renewing | State::Rebinding) {
            prop_assert!(c.next_timer().is_some(), "in-flight exchange without a timer");
        }
        prop_assert_ne!(c.state(), State::InitReboot);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_event_sequences(ops in proptest::collection::vec(op(), 1..60), seed in any::<u64>()) {
        run(ops, seed)?;
    }

    #[test]
    fn arbitrary_bytes_in_every_state(bytes in proptest::collection::vec(any::<u8>(), 0..1600), state in 0u8..6) {
        let p = ServerParams::default();
        let mut c = client();
        match state {
            0 => {}
            1 => { selecting_into(&mut c); }
            2 => { let d = selecting_into(&mut c); c.on_event(Event::Packet { bytes: srv::offer(&d, &p) }, T0 + 1); }
            3 => { let (b, _) = bound(&p); c = b; }
            4 => { let (b, l) = bound(&p); c = b; c.on_event(Event::Timer, l.renew_at().unwrap()); }
            _ => { c.on_event(Event::StartWithLease(expected_lease(T0)), T0); }
        }
        let before = (c.state(), c.next_timer(), c.lease().cloned());
        let a = c.on_event(Event::Packet { bytes }, T0 + 2);
        // Random bytes essentially never carry our xid and MAC.
        let rejected = matches!(&a[..], [Action::Reject { .. }]);
        prop_assert!(rejected, "{:?}", a);
        prop_assert_eq!(before, (c.state(), c.next_timer(), c.lease().cloned()));
    }

    /// Valid replies with random lease parameters: accepted only if the lease is valid.
    #[test]
    fn random_offers_and_acks(p in params()) {
        let (mut c, discover) = selecting();
        let a = c.on_event(Event::Packet { bytes: srv::offer(&discover, &p) }, T0 + 1);
        if c.state() == State::Requesting {
            let req = one_send(&a).1;
            let a = c.on_event(Event::Packet { bytes: srv::ack(&req, &p) }, T0 + 2);
            prop_assert_eq!(c.state(), State::Bound);
            let l = c.lease().unwrap().clone();
            check_lease(&l)?;
            prop_assert_eq!(l.address, p.yiaddr);
            if let Some(t) = l.renew_at() {
                let floor_ms = u64::from(DEFAULT_MIN_LEASE_SECS / 2) * 1000;
                prop_assert_eq!(a.last(), Some(&Action::SetTimer(t.max(T0 + 2 + floor_ms))));
            }
        } else {
            let rejected = matches!(&a[..], [Action::Reject { .. }]);
            prop_assert!(rejected, "{:?}", a);
        }
    }
}

fn selecting_into(c: &mut Client) -> Vec<u8> {
    one_send(&c.on_event(Event::Start, T0)).1
}
