//! IPv4 Address Conflict Detection (RFC 5227), sans-IO, in the style of `dhcp`: the driver
//! feeds an [`Acd`] the ARP packets it receives and the expiries of the one timer, with the
//! current time, and does what the returned [`Action`]s say. It opens no socket, reads no
//! clock, and draws randomness only from its seed.
//!
//! One machine watches one address on one interface:
//! - [`Acd::probe`] (§2.1): wait a random while (PROBE_WAIT), send PROBE_NUM probes spaced
//!   PROBE_MIN..PROBE_MAX apart, wait ANNOUNCE_WAIT; a conflicting packet meanwhile ends it with
//!   [`Action::Conflict`]; else [`Action::Ready`] (the address may be used), then ANNOUNCE_NUM
//!   announcements ANNOUNCE_INTERVAL apart (§2.3), then it defends (§2.4).
//! - [`Acd::defend`]: an address already in use (a session re-adopted after a daemon restart,
//!   an address a renewal kept): defends only.
//! - [`Acd::probe_from_both`]: as `probe`, and each probe is also sent from the uplink's own
//!   MAC (the host side of a macvlan session); an answer to it that claims the address with
//!   the session's MAC is a clone of this machine ([`Conflict::SameMac`]). Why a second
//!   vantage point: a clone's answer to the session's own probe is addressed to a MAC the
//!   clone's macvlan owns, so it never leaves the clone; its answer to the uplink's MAC does.
//!
//! Defence (§2.4 (b)): on a conflicting packet the machine announces once; another conflict
//! within DEFEND_INTERVAL of that defence gives the address up ([`Conflict::Lost`]).
//!
//! The probe's timing is the RFC's scaled by `probe_ms / RFC_PROBE_MS` (the RFC's worst case,
//! 7 s, becomes `probe_ms`); `probe_ms = RFC_PROBE_MS` is the RFC's own timing. Announcements
//! come after the address is in use, so they keep the RFC's interval whatever the scale.
//!
//! Driver contract: execute actions in order; each `SetTimer` replaces the previous deadline
//! (send `Timer` when it passes; early or stale ones are harmless); `Send` is one broadcast
//! Ethernet frame ([`ArpPacket::frame`]) on the interface. Packets may be any ARP seen on the
//! interface: the machine checks everything; a kernel filter only saves wake-ups.

use std::fmt;
use std::net::Ipv4Addr;

use crate::dhcp::{Millis, SplitMix64};

/// RFC 5227 §1.1: initial random delay before the first probe.
pub const PROBE_WAIT_MS: Millis = 1_000;
/// Number of probe packets.
pub const PROBE_NUM: u32 = 3;
/// Minimum delay until the next probe.
pub const PROBE_MIN_MS: Millis = 1_000;
/// Maximum delay until the next probe.
pub const PROBE_MAX_MS: Millis = 2_000;
/// Delay after the last probe before the address counts as free (and the first announcement).
pub const ANNOUNCE_WAIT_MS: Millis = 2_000;
/// Number of announcement packets.
pub const ANNOUNCE_NUM: u32 = 2;
/// Time between announcement packets.
pub const ANNOUNCE_INTERVAL_MS: Millis = 2_000;
/// Conflicts in a row after which a host stops taking new addresses at full speed (§2.1.1);
/// sessiond stops and reports an error instead (a persistent conflict is an operator's problem).
pub const MAX_CONFLICTS: u32 = 10;
/// Delay between successive attempts once MAX_CONFLICTS is reached.
pub const RATE_LIMIT_INTERVAL_MS: Millis = 60_000;
/// Minimum interval between defensive announcements (§2.4).
pub const DEFEND_INTERVAL_MS: Millis = 10_000;
/// The longest probe with the RFC's own timing: PROBE_WAIT, then PROBE_NUM probes at most
/// PROBE_MAX apart, then ANNOUNCE_WAIT (1 + 2 × 2 + 2 = 7 s).
pub const RFC_PROBE_MS: Millis = PROBE_WAIT_MS + (PROBE_NUM as Millis - 1) * PROBE_MAX_MS + ANNOUNCE_WAIT_MS;

const ETH_HEADER: usize = 14;
const ETHERTYPE_ARP: u16 = 0x0806;
/// Minimum Ethernet payload: short frames are padded (802.3).
const MIN_FRAME: usize = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
}

/// An Ethernet/IPv4 ARP packet (RFC 826).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpPacket {
    pub op: ArpOp,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

impl ArpPacket {
    /// Length of an Ethernet/IPv4 ARP packet.
    pub const LEN: usize = 28;

    /// RFC 5227 §2.1.1: "who has `address`", from no address (sender IP 0) so that no host's
    /// cache learns a mapping for an address that may turn out to be taken.
    pub fn probe(mac: [u8; 6], address: Ipv4Addr) -> ArpPacket {
        ArpPacket { op: ArpOp::Request, sender_mac: mac, sender_ip: Ipv4Addr::UNSPECIFIED, target_mac: [0; 6], target_ip: address }
    }

    /// RFC 5227 §2.3: a request with sender and target IP both `address`.
    pub fn announcement(mac: [u8; 6], address: Ipv4Addr) -> ArpPacket {
        ArpPacket { op: ArpOp::Request, sender_mac: mac, sender_ip: address, target_mac: [0; 6], target_ip: address }
    }

    /// Whether this is a probe (a request from no address).
    pub fn is_probe(&self) -> bool {
        self.op == ArpOp::Request && self.sender_ip.is_unspecified()
    }

    /// An ARP packet (from its first byte); None unless it is Ethernet/IPv4 request or reply.
    pub fn parse(b: &[u8]) -> Option<ArpPacket> {
        if b.len() < Self::LEN || b[0..2] != [0, 1] || b[2..4] != [0x08, 0x00] || b[4] != 6 || b[5] != 4 {
            return None;
        }
        let op = match u16::from_be_bytes([b[6], b[7]]) {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            _ => return None,
        };
        let mac = |at: usize| -> [u8; 6] { b[at..at + 6].try_into().expect("6 bytes") };
        let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        Some(ArpPacket { op, sender_mac: mac(8), sender_ip: ip(14), target_mac: mac(18), target_ip: ip(24) })
    }

    /// An Ethernet frame carrying ARP; None for anything else.
    pub fn parse_frame(frame: &[u8]) -> Option<ArpPacket> {
        if frame.len() < ETH_HEADER || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_ARP {
            return None;
        }
        Self::parse(&frame[ETH_HEADER..])
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, if self.op == ArpOp::Request { 1 } else { 2 }]);
        b[8..14].copy_from_slice(&self.sender_mac);
        b[14..18].copy_from_slice(&self.sender_ip.octets());
        b[18..24].copy_from_slice(&self.target_mac);
        b[24..28].copy_from_slice(&self.target_ip.octets());
        b
    }

    /// The packet as a broadcast Ethernet frame from its sender's MAC, padded to 60 bytes.
    pub fn frame(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(MIN_FRAME);
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&self.sender_mac);
        f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        f.extend_from_slice(&self.encode());
        f.resize(MIN_FRAME, 0);
        f
    }
}

/// Why the address cannot be (or stay) this interface's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// While probing, another host answered for the address, claimed it, or probed for it too.
    InUse { by: [u8; 6] },
    /// While probing, a packet claimed the address with this interface's own MAC, which this
    /// interface never sent: another host has the same MAC, i.e. a copy of this machine (MACs
    /// and DHCP client ids derive from /etc/machine-id). `mac` is that MAC, ours.
    SameMac { mac: [u8; 6] },
    /// While holding the address, another host kept claiming it within DEFEND_INTERVAL of our
    /// defence: the address is given up.
    Lost { by: [u8; 6] },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mac = |m: &[u8; 6]| crate::mac::format_mac(m);
        match self {
            Conflict::InUse { by } => write!(f, "in use by another host ({})", mac(by)),
            Conflict::SameMac { mac: m } => write!(
                f,
                "claimed by another host with this session's own MAC {}: a copy of this machine with the same /etc/machine-id \
                 (a cloned VM or image?) runs sessiond on this LAN; give each machine its own machine-id \
                 (systemd-machine-id-setup after emptying /etc/machine-id)",
                mac(m)
            ),
            Conflict::Lost { by } => {
                write!(f, "taken by another host ({}), which kept claiming it after it was defended (RFC 5227 §2.4)", mac(by))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Broadcast this packet on the interface.
    Send(ArpPacket),
    /// Broadcast this packet on the uplink, in the host's namespace (see `Acd::probe_from_both`).
    SendFromUplink(ArpPacket),
    /// Absolute deadline, never before `now`; replaces any earlier one.
    SetTimer(Millis),
    /// The probe found no other user: the address may be configured now.
    Ready,
    /// A conflicting packet was answered with an announcement (logged by the driver).
    Defended { by: [u8; 6] },
    /// The address is not (or no longer) ours; the machine is done.
    Conflict(Conflict),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `sent` probes are out (0: waiting out PROBE_WAIT).
    Probing {
        sent: u32,
    },
    /// The address is ours; `sent` announcements are out.
    Announcing {
        sent: u32,
    },
    Defending,
    /// A conflict ended it.
    Done,
}

/// One address's conflict detection on one interface.
#[derive(Clone, Debug)]
pub struct Acd {
    mac: [u8; 6],
    /// The uplink's MAC, when each probe also goes out from there (`probe_from_both`).
    uplink_mac: Option<[u8; 6]>,
    address: Ipv4Addr,
    probe_ms: Millis,
    rng: SplitMix64,
    phase: Phase,
    timer: Option<Millis>,
    last_defence: Option<Millis>,
}

impl Acd {
    /// Probes `address` before use, the whole probe taking at most `probe_ms` (> 0; see the
    /// module doc).
    pub fn probe(mac: [u8; 6], address: Ipv4Addr, probe_ms: Millis, seed: u64, now: Millis) -> (Acd, Vec<Action>) {
        Acd::probe_from(mac, None, address, probe_ms, seed, now)
    }

    /// `probe`, with each probe also sent from the uplink's MAC `uplink_mac`, whose answers
    /// the driver feeds to [`Acd::on_uplink_packet`] (see the module doc).
    pub fn probe_from_both(mac: [u8; 6], uplink_mac: [u8; 6], address: Ipv4Addr, probe_ms: Millis, seed: u64, now: Millis) -> (Acd, Vec<Action>) {
        Acd::probe_from(mac, Some(uplink_mac), address, probe_ms, seed, now)
    }

    fn probe_from(mac: [u8; 6], uplink_mac: Option<[u8; 6]>, address: Ipv4Addr, probe_ms: Millis, seed: u64, now: Millis) -> (Acd, Vec<Action>) {
        let mut acd = Acd::new(mac, address, probe_ms.max(1), seed, Phase::Probing { sent: 0 });
        acd.uplink_mac = uplink_mac;
        let wait = acd.random(0, acd.scaled(PROBE_WAIT_MS));
        let mut out = Vec::new();
        acd.arm(now + wait, now, &mut out);
        (acd, out)
    }

    /// Defends `address`, which is already in use.
    pub fn defend(mac: [u8; 6], address: Ipv4Addr, seed: u64) -> Acd {
        Acd::new(mac, address, RFC_PROBE_MS, seed, Phase::Defending)
    }

    fn new(mac: [u8; 6], address: Ipv4Addr, probe_ms: Millis, seed: u64, phase: Phase) -> Acd {
        Acd { mac, uplink_mac: None, address, probe_ms, rng: SplitMix64::new(seed), phase, timer: None, last_defence: None }
    }

    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn next_timer(&self) -> Option<Millis> {
        self.timer
    }

    /// An RFC interval scaled to the configured probe length.
    fn scaled(&self, rfc_ms: Millis) -> Millis {
        rfc_ms * self.probe_ms / RFC_PROBE_MS
    }

    fn random(&mut self, lo: Millis, hi: Millis) -> Millis {
        lo + self.rng.next_u64() % (hi.saturating_sub(lo) + 1)
    }

    fn arm(&mut self, at: Millis, now: Millis, out: &mut Vec<Action>) {
        let at = at.max(now);
        self.timer = Some(at);
        out.push(Action::SetTimer(at));
    }

    pub fn on_timer(&mut self, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(deadline) = self.timer else { return out };
        if now < deadline {
            out.push(Action::SetTimer(deadline)); // early wake-up: the same deadline again
            return out;
        }
        self.timer = None;
        match self.phase {
            Phase::Probing { sent } if sent < PROBE_NUM => {
                out.push(Action::Send(ArpPacket::probe(self.mac, self.address)));
                if let Some(uplink) = self.uplink_mac {
                    out.push(Action::SendFromUplink(ArpPacket::probe(uplink, self.address)));
                }
                let sent = sent + 1;
                self.phase = Phase::Probing { sent };
                let next = if sent == PROBE_NUM {
                    self.scaled(ANNOUNCE_WAIT_MS)
                } else {
                    let (lo, hi) = (self.scaled(PROBE_MIN_MS), self.scaled(PROBE_MAX_MS));
                    self.random(lo, hi)
                };
                self.arm(now + next, now, &mut out);
            }
            Phase::Probing { .. } => {
                out.push(Action::Ready);
                self.announce(0, now, &mut out);
            }
            Phase::Announcing { sent } => self.announce(sent, now, &mut out),
            Phase::Defending | Phase::Done => {}
        }
        out
    }

    fn announce(&mut self, sent: u32, now: Millis, out: &mut Vec<Action>) {
        out.push(Action::Send(ArpPacket::announcement(self.mac, self.address)));
        let sent = sent + 1;
        if sent < ANNOUNCE_NUM {
            self.phase = Phase::Announcing { sent };
            self.arm(now + ANNOUNCE_INTERVAL_MS, now, out);
        } else {
            self.phase = Phase::Defending;
        }
    }

    pub fn on_packet(&mut self, p: &ArpPacket, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        let own = p.sender_mac == self.mac;
        let claims = p.sender_ip == self.address;
        match self.phase {
            Phase::Probing { .. } => {
                // §2.1.1: any ARP from the address is a conflict; so is another host's probe
                // for it. Our own probes (sender IP 0) may come back on some bridges; a packet
                // with our MAC that *claims* the address we never sent while probing.
                let conflict = match (claims, own) {
                    (true, true) => Some(Conflict::SameMac { mac: self.mac }),
                    (true, false) => Some(Conflict::InUse { by: p.sender_mac }),
                    (false, false) if p.is_probe() && p.target_ip == self.address => Some(Conflict::InUse { by: p.sender_mac }),
                    _ => None,
                };
                if let Some(c) = conflict {
                    self.finish(c, &mut out);
                }
            }
            // §2.4: a packet from another host claiming our address. Our own announcements
            // may come back; another host's probe for our address is answered by the kernel.
            Phase::Announcing { .. } | Phase::Defending if claims && !own => {
                let defended_lately = self.last_defence.is_some_and(|t| now.saturating_sub(t) < DEFEND_INTERVAL_MS);
                if defended_lately {
                    self.finish(Conflict::Lost { by: p.sender_mac }, &mut out);
                } else {
                    self.last_defence = Some(now);
                    out.push(Action::Send(ArpPacket::announcement(self.mac, self.address)));
                    out.push(Action::Defended { by: p.sender_mac });
                }
            }
            Phase::Announcing { .. } | Phase::Defending | Phase::Done => {}
        }
        out
    }

    /// A packet received on the uplink while `probe_from_both` probes. Only one thing seen
    /// there is this machine's business: the address claimed with the session's own MAC (the
    /// answer of a clone's session to our uplink's probe), which the session never sent (it
    /// does not hold the address yet, and a macvlan's frames never reach its own lower
    /// device). Any other host's claim reaches the session's interface too and is judged
    /// there (`on_packet`); after the probe, the uplink is not listened to.
    pub fn on_uplink_packet(&mut self, p: &ArpPacket) -> Vec<Action> {
        let mut out = Vec::new();
        let probing = matches!(self.phase, Phase::Probing { .. }) && self.uplink_mac.is_some();
        if probing && p.sender_ip == self.address && p.sender_mac == self.mac {
            self.finish(Conflict::SameMac { mac: self.mac }, &mut out);
        }
        out
    }

    fn finish(&mut self, c: Conflict, out: &mut Vec<Action>) {
        self.phase = Phase::Done;
        self.timer = None;
        out.push(Action::Conflict(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 7];
    const OTHER: [u8; 6] = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc];
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
    const T0: Millis = 1_700_000_000_000;

    fn timer(a: &[Action]) -> Millis {
        let t: Vec<_> = a.iter().filter_map(|a| if let Action::SetTimer(t) = a { Some(*t) } else { None }).collect();
        assert_eq!(t.len(), 1, "one SetTimer in {a:?}");
        t[0]
    }

    fn sent(a: &[Action]) -> Vec<ArpPacket> {
        a.iter().filter_map(|a| if let Action::Send(p) = a { Some(*p) } else { None }).collect()
    }

    /// Runs a probe with no other host on the link: returns each send's time and packet, the
    /// time `Ready` came, and the machine (then defending).
    fn quiet_probe(probe_ms: Millis, seed: u64) -> (Vec<(Millis, ArpPacket)>, Millis, Acd) {
        let (mut acd, a) = Acd::probe(MAC, ADDR, probe_ms, seed, T0);
        let mut at = timer(&a);
        let mut sends = Vec::new();
        let mut ready = None;
        for _ in 0..10 {
            let a = acd.on_timer(at);
            sends.extend(sent(&a).into_iter().map(|p| (at, p)));
            if a.contains(&Action::Ready) {
                ready = Some(at);
            }
            match acd.next_timer() {
                Some(t) => at = t,
                None => break,
            }
        }
        (sends, ready.expect("Ready"), acd)
    }

    #[test]
    fn rfc_constants_and_worst_case() {
        assert_eq!((PROBE_WAIT_MS, PROBE_NUM, PROBE_MIN_MS, PROBE_MAX_MS), (1_000, 3, 1_000, 2_000));
        assert_eq!((ANNOUNCE_WAIT_MS, ANNOUNCE_NUM, ANNOUNCE_INTERVAL_MS), (2_000, 2, 2_000));
        assert_eq!((MAX_CONFLICTS, RATE_LIMIT_INTERVAL_MS, DEFEND_INTERVAL_MS), (10, 60_000, 10_000));
        assert_eq!(RFC_PROBE_MS, 7_000);
    }

    #[test]
    fn rfc_timing_three_probes_then_ready_then_two_announcements() {
        for seed in 0..200 {
            let (sends, ready, acd) = quiet_probe(RFC_PROBE_MS, seed);
            assert_eq!(sends.len(), 5, "{sends:?}");
            for (_, p) in &sends[..3] {
                assert_eq!(*p, ArpPacket::probe(MAC, ADDR));
            }
            for (_, p) in &sends[3..] {
                assert_eq!(*p, ArpPacket::announcement(MAC, ADDR));
            }
            let t: Vec<Millis> = sends.iter().map(|(t, _)| t - T0).collect();
            assert!(t[0] <= PROBE_WAIT_MS, "first probe at {}", t[0]);
            for w in t[..3].windows(2) {
                assert!((PROBE_MIN_MS..=PROBE_MAX_MS).contains(&(w[1] - w[0])), "probe gap {t:?}");
            }
            assert_eq!(ready - T0, t[2] + ANNOUNCE_WAIT_MS, "ready ANNOUNCE_WAIT after the last probe");
            assert_eq!(t[3], ready - T0, "first announcement when ready");
            assert_eq!(t[4] - t[3], ANNOUNCE_INTERVAL_MS);
            assert!(ready - T0 <= RFC_PROBE_MS);
            assert_eq!((acd.phase(), acd.next_timer()), (Phase::Defending, None), "defending needs no timer");
        }
    }

    #[test]
    fn a_short_probe_scales_the_rfc_timing_into_its_budget() {
        let mut totals = Vec::new();
        for seed in 0..500 {
            let (sends, ready, _) = quiet_probe(200, seed);
            let t: Vec<Millis> = sends.iter().map(|(t, _)| t - T0).collect();
            assert!(t[0] <= 28, "PROBE_WAIT scaled to 200/7000: {}", t[0]);
            for w in t[..3].windows(2) {
                assert!((28..=57).contains(&(w[1] - w[0])), "probe gap scaled: {t:?}");
            }
            assert_eq!(ready - T0 - t[2], 57, "ANNOUNCE_WAIT scaled");
            assert!(ready - T0 <= 200, "never longer than the budget: {}", ready - T0);
            assert_eq!(t[4] - t[3], ANNOUNCE_INTERVAL_MS, "announcements keep the RFC interval");
            totals.push(ready - T0);
        }
        // The random parts do vary (PROBE_WAIT and the gaps), seeded.
        assert!(totals.iter().min() < totals.iter().max());
        assert_eq!(quiet_probe(200, 9).1, quiet_probe(200, 9).1, "same seed, same schedule");
        // The smallest budget still sends three probes and never fires before its deadline.
        let (sends, ready, _) = quiet_probe(1, 3);
        assert_eq!(sends.len(), 5);
        assert!(ready - T0 <= 1);
    }

    #[test]
    fn early_and_stale_timers_are_harmless() {
        let (mut acd, a) = Acd::probe(MAC, ADDR, RFC_PROBE_MS, 1, T0);
        let t = timer(&a);
        if t > T0 {
            assert_eq!(acd.on_timer(t - 1), vec![Action::SetTimer(t)], "early: same deadline again");
        }
        let a = acd.on_timer(t);
        assert_eq!(sent(&a).len(), 1);
        // a second Timer for a passed deadline before the next one: nothing sent
        let next = timer(&a);
        assert_eq!(acd.on_timer(t), vec![Action::SetTimer(next)]);
        let mut d = Acd::defend(MAC, ADDR, 1);
        assert!(d.on_timer(T0).is_empty(), "no timer, nothing to do");
    }

    fn reply_from(mac: [u8; 6], ip: Ipv4Addr) -> ArpPacket {
        ArpPacket { op: ArpOp::Reply, sender_mac: mac, sender_ip: ip, target_mac: MAC, target_ip: Ipv4Addr::UNSPECIFIED }
    }

    #[test]
    fn while_probing_any_claim_of_the_address_is_a_conflict() {
        let other_probe = ArpPacket::probe(OTHER, ADDR);
        let cases = [
            (reply_from(OTHER, ADDR), Some(Conflict::InUse { by: OTHER })),
            (ArpPacket::announcement(OTHER, ADDR), Some(Conflict::InUse { by: OTHER })),
            // an ordinary request from the address, for anyone
            (ArpPacket { target_ip: Ipv4Addr::new(10, 77, 0, 1), ..ArpPacket::announcement(OTHER, ADDR) }, Some(Conflict::InUse { by: OTHER })),
            // another host probing for the same address at the same time (§2.1.1)
            (other_probe, Some(Conflict::InUse { by: OTHER })),
            // the address claimed with our own MAC, which we never sent: a clone of this host
            (reply_from(MAC, ADDR), Some(Conflict::SameMac { mac: MAC })),
            (ArpPacket::announcement(MAC, ADDR), Some(Conflict::SameMac { mac: MAC })),
            // our own probe coming back (a hairpin bridge): not a conflict
            (ArpPacket::probe(MAC, ADDR), None),
            // other addresses, other probes, replies to others: not ours
            (reply_from(OTHER, Ipv4Addr::new(10, 77, 0, 101)), None),
            (ArpPacket::probe(OTHER, Ipv4Addr::new(10, 77, 0, 101)), None),
            (ArpPacket { op: ArpOp::Reply, ..other_probe }, None),
            (ArpPacket::announcement(OTHER, Ipv4Addr::new(10, 77, 0, 1)), None),
        ];
        for (when, sends_before) in [("waiting out PROBE_WAIT", 0), ("after one probe", 1), ("in the last wait", 3)] {
            for (p, want) in cases {
                let (mut acd, a) = Acd::probe(MAC, ADDR, RFC_PROBE_MS, 5, T0);
                let mut at = timer(&a);
                for _ in 0..sends_before {
                    acd.on_timer(at);
                    at = acd.next_timer().unwrap();
                }
                let got = acd.on_packet(&p, at - 1);
                match want {
                    Some(c) => {
                        assert_eq!(got, vec![Action::Conflict(c)], "{when}: {p:?}");
                        assert_eq!((acd.phase(), acd.next_timer()), (Phase::Done, None));
                        assert!(acd.on_timer(at).is_empty() && acd.on_packet(&p, at).is_empty(), "done is final");
                    }
                    None => {
                        assert!(got.is_empty(), "{when}: {p:?} gave {got:?}");
                        assert!(matches!(acd.phase(), Phase::Probing { .. }));
                    }
                }
            }
        }
    }

    const UPLINK: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x01];

    fn sent_from_uplink(a: &[Action]) -> Vec<ArpPacket> {
        a.iter().filter_map(|a| if let Action::SendFromUplink(p) = a { Some(*p) } else { None }).collect()
    }

    #[test]
    fn probing_from_both_sends_each_probe_from_the_uplink_too_and_nothing_after() {
        for seed in 0..50 {
            let (mut acd, a) = Acd::probe_from_both(MAC, UPLINK, ADDR, 200, seed, T0);
            let mut at = timer(&a);
            let (mut session, mut uplink, mut ready) = (Vec::new(), Vec::new(), None);
            for _ in 0..10 {
                let a = acd.on_timer(at);
                session.extend(sent(&a));
                uplink.extend(sent_from_uplink(&a).into_iter().map(|p| (at, p)));
                if a.contains(&Action::Ready) {
                    ready = Some(at);
                }
                match acd.next_timer() {
                    Some(t) => at = t,
                    None => break,
                }
            }
            assert_eq!(uplink.len(), PROBE_NUM as usize, "{uplink:?}");
            assert!(uplink.iter().all(|(_, p)| *p == ArpPacket::probe(UPLINK, ADDR)), "RFC 5227 probes from the uplink's MAC: {uplink:?}");
            assert!(uplink.iter().all(|(t, _)| *t < ready.unwrap()), "all before the address is used");
            assert_eq!(session.len(), 5, "the session's own probes and announcements as ever");
        }
        // a plain probe sends nothing from the uplink
        let (mut acd, a) = Acd::probe(MAC, ADDR, 200, 1, T0);
        assert!(sent_from_uplink(&acd.on_timer(timer(&a))).is_empty());
    }

    #[test]
    fn on_the_uplink_only_the_address_claimed_with_the_sessions_own_mac_is_a_clone() {
        let cases = [
            // the clone's session answering our uplink's probe, or announcing
            (ArpPacket { op: ArpOp::Reply, sender_mac: MAC, sender_ip: ADDR, target_mac: UPLINK, target_ip: Ipv4Addr::UNSPECIFIED }, true),
            (ArpPacket::announcement(MAC, ADDR), true),
            // another host holding the address: the session's own probe hears it (`on_packet`)
            (ArpPacket { op: ArpOp::Reply, sender_mac: OTHER, sender_ip: ADDR, target_mac: UPLINK, target_ip: Ipv4Addr::UNSPECIFIED }, false),
            // probes for it (ours from either MAC, or another host's): not claims
            (ArpPacket::probe(UPLINK, ADDR), false),
            (ArpPacket::probe(MAC, ADDR), false),
            (ArpPacket::probe(OTHER, ADDR), false),
            // our MAC for another address (the clone's other sessions have other MACs anyway)
            (ArpPacket::announcement(MAC, Ipv4Addr::new(10, 77, 0, 9)), false),
        ];
        for (p, clone) in cases {
            let (mut acd, a) = Acd::probe_from_both(MAC, UPLINK, ADDR, 200, 3, T0);
            acd.on_timer(timer(&a));
            let got = acd.on_uplink_packet(&p);
            if clone {
                assert_eq!(got, vec![Action::Conflict(Conflict::SameMac { mac: MAC })], "{p:?}");
                assert_eq!((acd.phase(), acd.next_timer()), (Phase::Done, None));
            } else {
                assert!(got.is_empty(), "{p:?} gave {got:?}");
                assert!(matches!(acd.phase(), Phase::Probing { .. }));
            }
        }
        // Not listened to outside such a probe: a plain probe, or once the address is in use.
        let clone = ArpPacket::announcement(MAC, ADDR);
        let (mut plain, _) = Acd::probe(MAC, ADDR, 200, 3, T0);
        assert!(plain.on_uplink_packet(&clone).is_empty());
        let (mut acd, a) = Acd::probe_from_both(MAC, UPLINK, ADDR, 200, 3, T0);
        let mut at = timer(&a);
        while matches!(acd.phase(), Phase::Probing { .. }) {
            acd.on_timer(at);
            at = acd.next_timer().unwrap_or(at);
        }
        assert!(acd.on_uplink_packet(&clone).is_empty());
        assert!(!matches!(acd.phase(), Phase::Done));
    }

    #[test]
    fn a_held_address_is_defended_once_then_given_up() {
        let (_, _, mut acd) = quiet_probe(200, 1);
        let t = T0 + 60_000;
        let claim = ArpPacket::announcement(OTHER, ADDR);
        let a = acd.on_packet(&claim, t);
        assert_eq!(a, vec![Action::Send(ArpPacket::announcement(MAC, ADDR)), Action::Defended { by: OTHER }]);
        assert_eq!(acd.phase(), Phase::Defending);
        // within DEFEND_INTERVAL of the defence: given up
        let a = acd.on_packet(&reply_from(OTHER, ADDR), t + DEFEND_INTERVAL_MS - 1);
        assert_eq!(a, vec![Action::Conflict(Conflict::Lost { by: OTHER })]);
        assert_eq!(acd.phase(), Phase::Done);
        // a conflict after DEFEND_INTERVAL is defended again
        let mut d = Acd::defend(MAC, ADDR, 2);
        assert_eq!(sent(&d.on_packet(&claim, t)).len(), 1);
        assert_eq!(sent(&d.on_packet(&claim, t + DEFEND_INTERVAL_MS)).len(), 1);
        assert_eq!(sent(&d.on_packet(&claim, t + 2 * DEFEND_INTERVAL_MS + 5)).len(), 1);
        assert_eq!(d.phase(), Phase::Defending);
    }

    #[test]
    fn what_a_held_address_does_not_defend_against() {
        let mut d = Acd::defend(MAC, ADDR, 2);
        for p in [
            ArpPacket::probe(OTHER, ADDR),                  // the kernel answers probes for our address
            ArpPacket::announcement(MAC, ADDR),             // our own announcement, echoed
            reply_from(OTHER, Ipv4Addr::new(10, 77, 0, 9)), // someone else's address
        ] {
            assert!(d.on_packet(&p, T0).is_empty(), "{p:?}");
        }
        assert_eq!(d.phase(), Phase::Defending);
    }

    #[test]
    fn conflicts_while_announcing_are_defended_too() {
        let (mut acd, a) = Acd::probe(MAC, ADDR, 200, 4, T0);
        let mut at = timer(&a);
        while acd.phase() != (Phase::Announcing { sent: 1 }) {
            acd.on_timer(at);
            at = acd.next_timer().unwrap();
        }
        let a = acd.on_packet(&ArpPacket::announcement(OTHER, ADDR), at - 1);
        assert!(a.contains(&Action::Defended { by: OTHER }));
        let a = acd.on_packet(&ArpPacket::announcement(OTHER, ADDR), at);
        assert_eq!(a, vec![Action::Conflict(Conflict::Lost { by: OTHER })]);
    }

    #[test]
    fn packets_round_trip_and_frames_are_broadcast_arp() {
        let p = ArpPacket::probe(MAC, ADDR);
        assert_eq!(ArpPacket::parse(&p.encode()), Some(p));
        let f = ArpPacket::announcement(MAC, ADDR).frame();
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(ArpPacket::parse_frame(&f), Some(ArpPacket::announcement(MAC, ADDR)));
        let r = reply_from(OTHER, ADDR);
        assert_eq!(ArpPacket::parse_frame(&r.frame()), Some(r));
        // not Ethernet/IPv4 ARP, or too short: ignored
        let mut bad = p.encode();
        bad[7] = 3; // RARP request
        assert_eq!(ArpPacket::parse(&bad), None);
        let mut bad = p.encode();
        bad[4] = 8;
        assert_eq!(ArpPacket::parse(&bad), None);
        assert_eq!(ArpPacket::parse(&p.encode()[..27]), None);
        let mut ip = f.clone();
        ip[13] = 0x00;
        assert_eq!(ArpPacket::parse_frame(&ip), None);
        assert_eq!(ArpPacket::parse_frame(&f[..10]), None);
    }

    #[test]
    fn conflicts_say_what_happened() {
        assert!(Conflict::InUse { by: OTHER }.to_string().contains("52:54:00:aa:bb:cc"));
        let clone = Conflict::SameMac { mac: MAC }.to_string();
        assert!(clone.contains("/etc/machine-id") && clone.contains("02:00:00:00:00:07"), "{clone}");
        assert!(Conflict::Lost { by: OTHER }.to_string().contains("defended"));
    }
}
