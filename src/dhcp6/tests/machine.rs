//! The exchanges of RFC 8415 §18 against the fake server, and §16's validation.

use dhcproto::v6::{DhcpOption, MessageType, OptionCode, Status};

use super::fake_server::{self as srv, Answer};
use crate::dhcp::Millis;
use crate::dhcp6::*;

const T0: Millis = 1_700_000_000_000;
const IAID: u32 = 7;

fn duid() -> Vec<u8> {
    crate::dhcp::duid("0123456789abcdef0123456789abcdef")
}

fn client(rapid_commit: bool) -> Client {
    Client::new(ClientConfig { duid: duid(), iaid: IAID, seed: 0xdead_beef, min_renew_secs: 2, rapid_commit })
}

fn sends(actions: &[Action]) -> Vec<Vec<u8>> {
    actions.iter().filter_map(|a| if let Action::Send { bytes } = a { Some(bytes.clone()) } else { None }).collect()
}

fn one_send(actions: &[Action]) -> Vec<u8> {
    let s = sends(actions);
    assert_eq!(s.len(), 1, "one send expected in {actions:?}");
    s[0].clone()
}

fn timer(actions: &[Action]) -> Millis {
    let t: Vec<_> = actions.iter().filter_map(|a| if let Action::SetTimer(t) = a { Some(*t) } else { None }).collect();
    assert_eq!(t.len(), 1, "one SetTimer expected in {actions:?}");
    t[0]
}

fn rejected(actions: &[Action]) -> Option<RejectReason> {
    actions.iter().find_map(|a| if let Action::Reject { reason } = a { Some(reason.clone()) } else { None })
}

fn kind(bytes: &[u8]) -> MessageType {
    srv::decode(bytes).msg_type()
}

fn elapsed(bytes: &[u8]) -> u16 {
    match srv::decode(bytes).opts().get(OptionCode::ElapsedTime) {
        Some(DhcpOption::ElapsedTime(e)) => *e,
        _ => panic!("no elapsed time"),
    }
}

/// Drives a client to Bound: Solicit, Advertise, (collection ends) Request, Reply.
/// Returns the client, the time, and the Request it sent.
fn bound(a: &Answer) -> (Client, Millis, Vec<u8>) {
    let mut c = client(false);
    let solicit = one_send(&c.on_event(Event::Start, T0));
    let acts = c.on_event(Event::Packet { bytes: srv::answer(&solicit, MessageType::Advertise, a) }, T0 + 5);
    assert_eq!(rejected(&acts), None);
    let t = timer(&acts);
    let request = one_send(&c.on_event(Event::Timer, t));
    assert_eq!(c.state(), State::Requesting);
    let acts = c.on_event(Event::Packet { bytes: srv::answer(&request, MessageType::Reply, a) }, t + 5);
    assert_eq!(rejected(&acts), None, "{acts:?}");
    assert_eq!(c.state(), State::Bound);
    (c, t + 5, request)
}

#[test]
fn solicit_carries_our_duid_iaid_elapsed_time_and_asks_for_dns() {
    let mut c = client(true);
    let acts = c.on_event(Event::Start, T0);
    let s = srv::decode(&one_send(&acts));
    assert_eq!(s.msg_type(), MessageType::Solicit);
    assert_eq!(srv::client_id(&s), duid());
    assert_eq!(srv::ia(&s), Some((IAID, None)));
    assert_eq!(srv::server_id(&s), None);
    assert!(s.opts().get(OptionCode::RapidCommit).is_some());
    match s.opts().get(OptionCode::ORO) {
        Some(DhcpOption::ORO(oro)) => assert!(oro.opts.contains(&OptionCode::DomainNameServers) && oro.opts.contains(&OptionCode::DomainSearchList)),
        other => panic!("no ORO: {other:?}"),
    }
    assert_eq!(elapsed(&one_send(&acts)), 0);
    let t = timer(&acts);
    assert!(t > T0 + 1_000 && t <= T0 + 1_100, "the first RT is above SOL_TIMEOUT: {}", t - T0);
}

#[test]
fn solicit_retransmits_with_the_same_xid_and_a_growing_rt() {
    let mut c = client(false);
    let first = one_send(&c.on_event(Event::Start, T0));
    let xid = srv::decode(&first).xid_num();
    let mut now = T0;
    let mut last_gap = 0;
    let mut t = c.timer().unwrap();
    for n in 0..8 {
        let gap = t - now;
        assert!(gap > last_gap || gap >= 3_240_000, "RT {gap} after {last_gap}");
        last_gap = gap;
        now = t;
        let acts = c.on_event(Event::Timer, now);
        let m = one_send(&acts);
        assert_eq!(srv::decode(&m).xid_num(), xid, "retransmission {n} keeps the xid");
        assert_eq!(u64::from(elapsed(&m)), (now - T0) / 10);
        t = timer(&acts);
    }
    // Early and stale timers do nothing but re-arm.
    let acts = c.on_event(Event::Timer, t - 1);
    assert!(sends(&acts).is_empty() && timer(&acts) == t);
}

#[test]
fn four_message_exchange_binds_and_arms_t1() {
    let a = Answer::default();
    let mut c = client(false);
    let solicit = one_send(&c.on_event(Event::Start, T0));
    let acts = c.on_event(Event::Packet { bytes: srv::answer(&solicit, MessageType::Advertise, &a) }, T0 + 5);
    assert!(sends(&acts).is_empty(), "waits out the first RT for better Advertises");
    let t = timer(&acts);
    let req = srv::decode(&one_send(&c.on_event(Event::Timer, t)));
    assert_eq!(req.msg_type(), MessageType::Request);
    assert_eq!(srv::server_id(&req), Some(srv::SERVER_DUID.to_vec()));
    assert_eq!(srv::ia(&req), Some((IAID, Some(a.address))));
    let mut bytes = Vec::new();
    dhcproto::Encodable::encode(&req, &mut dhcproto::Encoder::new(&mut bytes)).unwrap();
    let acts = c.on_event(Event::Packet { bytes: srv::answer(&bytes, MessageType::Reply, &a) }, t + 3);
    let lease = c.lease().unwrap().clone();
    assert_eq!(acts[..2], [Action::ApplyLease { lease: lease.clone(), previous: None }, Action::PersistLease(Some(lease.clone()))]);
    assert_eq!((lease.address, lease.preferred_secs, lease.valid_secs, lease.t1_secs, lease.t2_secs), (a.address, 300, 600, 150, 240));
    assert_eq!((lease.dns.clone(), lease.search.clone()), (vec![srv::DNS], vec!["lan.example".to_string()]));
    assert_eq!(lease.acquired_at, t, "lifetimes count from the Request");
    assert_eq!(timer(&acts), t + 150_000, "T1");
}

#[test]
fn the_best_advertise_wins_and_preference_255_is_taken_at_once() {
    let mut c = client(false);
    let solicit = one_send(&c.on_event(Event::Start, T0));
    let low = Answer { preference: Some(10), ..Answer::default() };
    let high = Answer {
        preference: Some(200),
        server_id: Some(vec![0, 3, 0, 1, 9, 9, 9, 9, 9, 9]),
        address: "2001:db8:77::2:2".parse().unwrap(),
        ..Answer::default()
    };
    c.on_event(Event::Packet { bytes: srv::answer(&solicit, MessageType::Advertise, &low) }, T0 + 1);
    let t = timer(&c.on_event(Event::Packet { bytes: srv::answer(&solicit, MessageType::Advertise, &high) }, T0 + 2));
    let req = srv::decode(&one_send(&c.on_event(Event::Timer, t)));
    assert_eq!(srv::server_id(&req), high.server_id);

    let mut c = client(false);
    let solicit = one_send(&c.on_event(Event::Start, T0));
    let now = srv::answer(&solicit, MessageType::Advertise, &Answer { preference: Some(255), ..Answer::default() });
    let req = one_send(&c.on_event(Event::Packet { bytes: now }, T0 + 1));
    assert_eq!((kind(&req), c.state()), (MessageType::Request, State::Requesting));
}

#[test]
fn rapid_commit_binds_on_the_reply_to_the_solicit() {
    let mut c = client(true);
    let solicit = one_send(&c.on_event(Event::Start, T0));
    let plain = srv::answer(&solicit, MessageType::Reply, &Answer::default());
    assert_eq!(rejected(&c.on_event(Event::Packet { bytes: plain }, T0 + 1)), Some(RejectReason::NoRapidCommit));
    let rc = srv::answer(&solicit, MessageType::Reply, &Answer { rapid_commit: true, ..Answer::default() });
    let acts = c.on_event(Event::Packet { bytes: rc.clone() }, T0 + 2);
    assert_eq!(c.state(), State::Bound, "{acts:?}");
    // Without asking for it, such a Reply is refused.
    let mut c = client(false);
    let solicit = one_send(&c.on_event(Event::Start, T0));
    let rc = srv::answer(&solicit, MessageType::Reply, &Answer { rapid_commit: true, ..Answer::default() });
    assert_eq!(rejected(&c.on_event(Event::Packet { bytes: rc }, T0 + 1)), Some(RejectReason::NoRapidCommit));
}

#[test]
fn renew_at_t1_rebind_at_t2_and_expiry_starts_over() {
    let a = Answer::default();
    let (mut c, _, _) = bound(&a);
    let lease = c.lease().unwrap().clone();
    let t1 = lease.renew_at().unwrap();
    let renew = one_send(&c.on_event(Event::Timer, t1));
    let m = srv::decode(&renew);
    assert_eq!((m.msg_type(), srv::server_id(&m), srv::ia(&m)), (MessageType::Renew, Some(srv::SERVER_DUID.to_vec()), Some((IAID, Some(a.address)))));
    // REN_TIMEOUT 10 s.
    let acts = c.on_event(Event::Timer, t1 + 5);
    assert!(sends(&acts).is_empty());
    let again = c.on_event(Event::Timer, timer(&acts));
    assert_eq!(kind(&one_send(&again)), MessageType::Renew);
    // No answer until T2: Rebind, to any server (no server id).
    let t2 = lease.rebind_at().unwrap();
    let mut now = timer(&again);
    let mut rebind = None;
    for _ in 0..10 {
        let acts = c.on_event(Event::Timer, now);
        if c.state() == State::Rebinding {
            rebind = Some(one_send(&acts));
            break;
        }
        now = timer(&acts);
    }
    assert!(now <= t2, "rebinding no later than T2");
    let m = srv::decode(&rebind.expect("rebinding"));
    assert_eq!((m.msg_type(), srv::server_id(&m)), (MessageType::Rebind, None));
    // Nothing until the valid lifetime ends: the address goes and the client Solicits again.
    let mut now = c.timer().unwrap();
    let mut gone = None;
    for _ in 0..20 {
        let acts = c.on_event(Event::Timer, now);
        if acts.iter().any(|a| matches!(a, Action::RemoveLease(_))) {
            gone = Some(acts);
            break;
        }
        now = timer(&acts);
    }
    let acts = gone.expect("expiry");
    assert_eq!(now, lease.expires_at().unwrap());
    assert!(acts.contains(&Action::RemoveLease(lease.clone())) && acts.contains(&Action::PersistLease(None)));
    assert_eq!((c.state(), kind(&one_send(&acts))), (State::Soliciting, MessageType::Solicit));
}

#[test]
fn a_renewal_reply_extends_the_lease_from_the_renew() {
    let a = Answer::default();
    let (mut c, _, _) = bound(&a);
    let old = c.lease().unwrap().clone();
    let t1 = old.renew_at().unwrap();
    let renew = one_send(&c.on_event(Event::Timer, t1));
    let acts = c.on_event(Event::Packet { bytes: srv::answer(&renew, MessageType::Reply, &a) }, t1 + 4);
    let new = c.lease().unwrap().clone();
    assert_eq!(new.acquired_at, t1);
    assert_eq!(acts[0], Action::ApplyLease { lease: new.clone(), previous: Some(old) });
    assert_eq!(timer(&acts), t1 + 150_000);
}

#[test]
fn no_binding_on_renew_asks_that_server_with_a_request() {
    let (mut c, _, _) = bound(&Answer::default());
    let t1 = c.lease().unwrap().renew_at().unwrap();
    let renew = one_send(&c.on_event(Event::Timer, t1));
    let nb = srv::answer(&renew, MessageType::Reply, &Answer { ia_status: Some(Status::NoBinding), ..Answer::default() });
    let req = srv::decode(&one_send(&c.on_event(Event::Packet { bytes: nb }, t1 + 1)));
    assert_eq!((req.msg_type(), srv::server_id(&req)), (MessageType::Request, Some(srv::SERVER_DUID.to_vec())));
    assert!(c.lease().is_some(), "the address stays meanwhile");
}

#[test]
fn request_gives_up_after_req_max_rc_and_solicits_again() {
    let mut c = client(false);
    let solicit = one_send(&c.on_event(Event::Start, T0));
    let t = timer(&c.on_event(Event::Packet { bytes: srv::answer(&solicit, MessageType::Advertise, &Answer::default()) }, T0 + 1));
    let mut acts = c.on_event(Event::Timer, t);
    let mut requests = 1;
    while c.state() == State::Requesting {
        acts = c.on_event(Event::Timer, timer(&acts));
        requests += sends(&acts).iter().filter(|m| kind(m) == MessageType::Request).count();
    }
    assert_eq!(requests, 10, "REQ_MAX_RC");
    assert_eq!((c.state(), kind(&one_send(&acts))), (State::Soliciting, MessageType::Solicit));
}

#[test]
fn release_drops_the_address_and_ends_on_a_reply_or_after_four_tries() {
    let (mut c, now, _) = bound(&Answer::default());
    let lease = c.lease().unwrap().clone();
    let acts = c.on_event(Event::Release, now + 10);
    let m = srv::decode(&sends(&acts)[0]);
    assert_eq!((m.msg_type(), srv::server_id(&m), srv::ia(&m)), (MessageType::Release, Some(srv::SERVER_DUID.to_vec()), Some((IAID, Some(lease.address)))));
    assert!(acts.contains(&Action::RemoveLease(lease.clone())) && acts.contains(&Action::PersistLease(None)));
    let mut bytes = Vec::new();
    dhcproto::Encodable::encode(&m, &mut dhcproto::Encoder::new(&mut bytes)).unwrap();
    let acts = c.on_event(Event::Packet { bytes: srv::answer(&bytes, MessageType::Reply, &Answer { no_ia: true, ..Answer::default() }) }, now + 20);
    assert_eq!((c.state(), c.timer()), (State::Released, None), "{acts:?}");

    let (mut c, now, _) = bound(&Answer::default());
    let mut acts = c.on_event(Event::Release, now);
    let mut releases = 1;
    while c.state() == State::Releasing {
        acts = c.on_event(Event::Timer, timer(&acts));
        releases += sends(&acts).len();
    }
    assert_eq!((releases, c.state()), (4, State::Released), "REL_MAX_RC");
    assert!(c.lease().is_none());
}

#[test]
fn a_persisted_lease_is_rebound_after_a_restart_and_an_expired_one_dropped() {
    let (c0, now, _) = bound(&Answer::default());
    let persisted = c0.lease().unwrap().clone();
    let mut c = client(false);
    let acts = c.on_event(Event::StartWithLease(persisted.clone()), now + 1_000);
    let m = srv::decode(&one_send(&acts));
    assert_eq!((m.msg_type(), srv::ia(&m), srv::server_id(&m)), (MessageType::Rebind, Some((IAID, Some(persisted.address))), None));
    assert!(!acts.iter().any(|a| matches!(a, Action::RemoveLease(_))), "the address stays while it is rebound");
    let mut bytes = Vec::new();
    dhcproto::Encodable::encode(&m, &mut dhcproto::Encoder::new(&mut bytes)).unwrap();
    let acts = c.on_event(Event::Packet { bytes: srv::answer(&bytes, MessageType::Reply, &Answer::default()) }, now + 1_010);
    assert_eq!(c.state(), State::Bound);
    assert!(matches!(&acts[0], Action::ApplyLease { previous: Some(p), .. } if *p == persisted));

    let mut c = client(false);
    let acts = c.on_event(Event::StartWithLease(persisted.clone()), persisted.expires_at().unwrap());
    assert_eq!(acts[0], Action::PersistLease(None));
    assert_eq!(kind(&one_send(&acts)), MessageType::Solicit);
    let mut c = client(false);
    let other_slot = Lease { iaid: IAID + 1, ..persisted };
    assert_eq!(kind(&one_send(&c.on_event(Event::StartWithLease(other_slot), now))), MessageType::Solicit, "another IAID's lease is not ours");
}

#[test]
fn information_request_applies_dns_and_refreshes_no_sooner_than_irt_minimum() {
    let mut c = client(true);
    let acts = c.on_event(Event::StartInformation, T0);
    let m = srv::decode(&one_send(&acts));
    assert_eq!((m.msg_type(), srv::ia(&m)), (MessageType::InformationRequest, None));
    assert!(m.opts().get(OptionCode::RapidCommit).is_none());
    let mut bytes = Vec::new();
    dhcproto::Encodable::encode(&m, &mut dhcproto::Encoder::new(&mut bytes)).unwrap();
    let acts = c.on_event(Event::Packet { bytes: srv::answer(&bytes, MessageType::Reply, &Answer { refresh: Some(10), ..Answer::default() }) }, T0 + 3);
    assert_eq!(acts[0], Action::ApplyInfo(Info { dns: vec![srv::DNS], search: vec!["lan.example".into()], refresh_secs: IRT_MINIMUM_SECS }));
    assert_eq!((c.state(), timer(&acts)), (State::Informed, T0 + 3 + 600_000));
    let again = one_send(&c.on_event(Event::Timer, T0 + 3 + 600_000));
    assert_eq!(kind(&again), MessageType::InformationRequest);
}

#[test]
fn every_reply_is_validated_and_rejects_change_nothing() {
    let good = Answer::default();
    type Expect = fn(&RejectReason) -> bool;
    let cases: Vec<(Answer, Expect)> = vec![
        (Answer { xid_delta: 1, ..good.clone() }, |r| matches!(r, RejectReason::XidMismatch { .. })),
        (Answer { client_id: Some(vec![0, 4, 1, 2, 3]), ..good.clone() }, |r| *r == RejectReason::ClientIdMismatch),
        (Answer { server_id: None, ..good.clone() }, |r| *r == RejectReason::MissingServerId),
        (Answer { server_id: Some(vec![1]), ..good.clone() }, |r| *r == RejectReason::BadServerId { len: 1 }),
        (Answer { status: Some(Status::UnspecFail), ..good.clone() }, |r| matches!(r, RejectReason::Status { status: Status::UnspecFail, .. })),
        (Answer { ia_status: Some(Status::NoAddrsAvail), ..good.clone() }, |r| matches!(r, RejectReason::IaStatus { status: Status::NoAddrsAvail, .. })),
        (Answer { iaid_delta: 1, ..good.clone() }, |r| *r == RejectReason::MissingIa(IAID)),
        (Answer { t1: 300, t2: 100, ..good.clone() }, |r| *r == RejectReason::BadIaTimers { t1: 300, t2: 100 }),
        (Answer { address: "fe80::1".parse().unwrap(), ..good.clone() }, |r| matches!(r, RejectReason::BadAddress { why: "link-local", .. })),
        (Answer { address: "ff02::1".parse().unwrap(), ..good.clone() }, |r| matches!(r, RejectReason::BadAddress { why: "multicast", .. })),
        (Answer { preferred: 700, ..good.clone() }, |r| matches!(r, RejectReason::BadLifetimes { preferred: 700, valid: 600, .. })),
        (Answer { valid: 0, preferred: 0, ..good.clone() }, |r| *r == RejectReason::NoAddress),
    ];
    for (i, (answer, want)) in cases.iter().enumerate() {
        let mut c = client(false);
        let solicit = one_send(&c.on_event(Event::Start, T0));
        let before = c.clone();
        let acts = c.on_event(Event::Packet { bytes: srv::answer(&solicit, MessageType::Advertise, answer) }, T0 + 1);
        let r = rejected(&acts).unwrap_or_else(|| panic!("case {i} accepted: {answer:?}"));
        assert!(want(&r), "case {i}: {r}");
        assert_eq!((c.state(), c.timer()), (before.state(), before.timer()), "case {i} changed the machine");
        // and the client goes on to bind with a good server
        let t = timer(&c.on_event(Event::Packet { bytes: srv::answer(&solicit, MessageType::Advertise, &good) }, T0 + 2));
        assert_eq!(kind(&one_send(&c.on_event(Event::Timer, t))), MessageType::Request, "case {i}");
    }
    // Structural and out-of-exchange rejects.
    let mut c = client(false);
    let solicit = one_send(&c.on_event(Event::Start, T0));
    assert!(matches!(rejected(&c.on_event(Event::Packet { bytes: solicit.clone() }, T0 + 1)), Some(RejectReason::NotForClient(MessageType::Solicit))));
    assert!(matches!(rejected(&c.on_event(Event::Packet { bytes: vec![7, 1] }, T0 + 1)), Some(RejectReason::Undecodable(_))));
    // A Status Code (13) of length 0 followed by more bytes: dhcproto would read its code from
    // what follows and then compute 0 - 2 (a panic in debug builds). Also nested in an IA_NA.
    let short_status = [7, 1, 2, 3, 0, 13, 0, 0, 0, 1, 0, 2, 0, 0];
    assert!(matches!(rejected(&c.on_event(Event::Packet { bytes: short_status.to_vec() }, T0 + 1)), Some(RejectReason::MalformedOption { code: 13, .. })));
    let mut nested = vec![7, 1, 2, 3, 0, 3, 0, 16, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0];
    nested.extend_from_slice(&[0, 1, 0, 0]);
    assert!(matches!(rejected(&c.on_event(Event::Packet { bytes: nested }, T0 + 1)), Some(RejectReason::MalformedOption { code: 17, .. })));
    let overrun = [7, 1, 2, 3, 0, 1, 0, 9, 1];
    assert!(matches!(rejected(&c.on_event(Event::Packet { bytes: overrun.to_vec() }, T0 + 1)), Some(RejectReason::MalformedOption { code: 1, .. })));
    assert!(matches!(rejected(&c.on_event(Event::Packet { bytes: vec![7; 2000] }, T0 + 1)), Some(RejectReason::Oversize { len: 2000, .. })));
    let (mut b, now, request) = bound(&good);
    let late = srv::answer(&request, MessageType::Reply, &good);
    assert_eq!(rejected(&b.on_event(Event::Packet { bytes: late }, now + 1)), Some(RejectReason::NoTransaction(State::Bound)));
    // In RENEWING, only the lease's server may answer.
    let t1 = b.lease().unwrap().renew_at().unwrap();
    let renew = one_send(&b.on_event(Event::Timer, t1));
    let other = srv::answer(&renew, MessageType::Reply, &Answer { server_id: Some(vec![0, 3, 0, 1, 7, 7, 7, 7, 7, 7]), ..good.clone() });
    assert_eq!(rejected(&b.on_event(Event::Packet { bytes: other }, t1 + 1)), Some(RejectReason::ServerIdMismatch));
    assert_eq!(b.state(), State::Renewing);
    assert!(RejectReason::XidMismatch { got: 1, expected: 2 }.is_routine() && !RejectReason::ServerIdMismatch.is_routine());
}
