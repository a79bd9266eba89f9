//! The RFC 2131 client state machine: events in, actions out; no I/O, no clock,
//! no hidden randomness.

use std::net::Ipv4Addr;

use super::Millis;
use super::backoff::{LeaseFuzz, lease_retry_at, retransmit_delay};
use super::decode::{self, ACK, NAK, OFFER, Reply};
use super::encode::{self, Kind, Outgoing};
use super::lease::{Lease, renewal_floor_secs};
use super::reject::RejectReason;
use super::rng::SplitMix64;

/// REQUESTs sent in REQUESTING before falling back to INIT.
pub const MAX_SELECTING_REQUESTS: u32 = 4;
/// REQUESTs sent in REBOOTING before falling back to INIT.
pub const MAX_REBOOT_REQUESTS: u32 = 3;
/// Pause after a DHCPDECLINE before DISCOVER again: RFC 2131 §3.1 step 5 ("SHOULD wait a
/// minimum of ten seconds ... to avoid excessive network traffic in case of looping"). Fixed,
/// and the declines in a row are bounded by `acd::MAX_CONFLICTS`.
pub const DECLINE_WAIT_MS: Millis = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    pub mac: [u8; 6],
    /// Option 61 payload (see [`super::client_identifier`]); omitted if shorter than 2 bytes.
    pub client_id: Vec<u8>,
    /// Option 12; omitted if `None` or empty.
    pub hostname: Option<String>,
    /// Send the name as option 81 (client FQDN, RFC 4702) instead of option 12 (never both).
    pub fqdn: bool,
    /// Seeds xids and jitter. Seed it from the OS RNG: xids are the only
    /// defence against off-path spoofed replies.
    pub seed: u64,
    /// The shortest lease used as given (a shorter one is used as if this long), and twice
    /// the shortest time to a renewal: see [`super::DEFAULT_MIN_LEASE_SECS`].
    pub min_lease_secs: u32,
}

/// The client's state; the same enum `status` carries (one list of states, one name each).
pub use sessiond_client::DhcpState as State;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Begin from INIT (fresh DISCOVER). Ignored while a lease is held.
    Start,
    /// `Start`, asking for this address in the DISCOVER (option 50, RFC 2131 §4.4.1): the one
    /// the session slot last had, so that every server (not only those that keep affinity to
    /// a released lease) hands it out again when it is free.
    StartRequesting(Ipv4Addr),
    /// INIT-REBOOT with a persisted lease. An expired or invalid lease is
    /// deleted (`PersistLease(None)`) and the client starts from INIT.
    StartWithLease(Lease),
    /// A UDP payload received on port 68.
    Packet { bytes: Vec<u8> },
    /// The last `SetTimer` deadline has passed; early or stale calls are harmless.
    Timer,
    /// Stop: release a held lease, then `Released`.
    Release,
    /// Release a lease this client does not hold: one that a daemon which died left behind
    /// (RFC 2131 §4.4.6), so the server frees it now instead of at its expiry. Then `Released`.
    /// An expired lease is only forgotten.
    ReleaseOrphan(Lease),
    /// The address of `Action::CheckAddress` is free (RFC 5227 probe): bind it.
    AddressFree,
    /// Another host (MAC `by`) uses the address being checked, or the held one (after a
    /// defence failed, RFC 5227 §2.4): DHCPDECLINE it (RFC 2131 §4.4.1), drop it, and start
    /// over from INIT after `DECLINE_WAIT_MS`. Ignored when neither is the case.
    AddressInUse { by: [u8; 6] },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// 255.255.255.255:67
    Broadcast,
    /// The server's address, port 67.
    Unicast(Ipv4Addr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send to UDP port 67. `broadcast_flag` mirrors the BOOTP flag in `bytes`:
    /// when true the server will broadcast its reply because we have no address.
    Send { bytes: Vec<u8>, dest: Dest, broadcast_flag: bool },
    /// Configure `lease`. `previous` is a lease that may currently be configured
    /// (the one being renewed, or an unconfirmed persisted one); if its address
    /// differs, add the new address before removing the old one.
    ApplyLease { lease: Lease, previous: Option<Lease> },
    /// Drop the lease's address and routes.
    RemoveLease(Lease),
    /// Save (`Some`) or delete (`None`) the persisted lease.
    PersistLease(Option<Lease>),
    /// Absolute deadline, never before `now`; replaces any earlier one.
    SetTimer(Millis),
    /// A received packet was ignored; the driver logs `reason`
    /// ([`RejectReason::is_routine`] ones at debug level).
    Reject { reason: RejectReason },
    /// Check that no other host uses this address before it is applied (only with
    /// [`Client::with_address_check`]): answer `Event::AddressFree` or `Event::AddressInUse`.
    /// The machine waits meanwhile (no timer of its own for it).
    CheckAddress(Ipv4Addr),
    /// `declined` addresses in a row were in use (the last, `address`, by MAC `by`): the client
    /// stops trying (INIT, no timer) so that a persistent conflict ends with an error.
    GiveUp { declined: u32, address: Ipv4Addr, by: [u8; 6] },
}

/// Sans-IO DHCPv4 client. Feed it events with the current time and execute the
/// returned actions in order.
#[derive(Debug, Clone)]
pub struct Client {
    cfg: ClientConfig,
    rng: SplitMix64,
    state: State,
    /// Transaction whose replies we accept; `None` when none is in flight.
    xid: Option<u32>,
    /// When the current exchange began (for the `secs` field).
    exchange_start: Millis,
    /// When its first REQUEST went out (becomes `Lease::acquired_at`).
    first_request_at: Millis,
    /// Messages sent in the current exchange.
    attempts: u32,
    /// (address, server id) chosen from the first valid OFFER.
    offer: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The applied lease (BOUND, RENEWING, REBINDING).
    lease: Option<Lease>,
    /// A persisted lease that was never confirmed (INIT-REBOOT). Possibly still
    /// configured by an earlier daemon, so it becomes `previous` of the next
    /// `ApplyLease` instead of being removed behind the driver's back.
    unconfirmed: Option<Lease>,
    /// Option 50 hint for DISCOVER after an unanswered INIT-REBOOT.
    hint: Option<Ipv4Addr>,
    timer: Option<Millis>,
    discovers: u32,
    naks: u32,
    /// Check each newly offered address before applying it (`Action::CheckAddress`).
    check_addresses: bool,
    /// An ACKed lease waiting for the outcome of its address check.
    checking: Option<Lease>,
    /// DHCPDECLINEs in a row (reset by a bound lease whose check passed).
    declines: u32,
    /// The REQUESTING exchange given up last (back to DISCOVER), whose late ACK still binds.
    abandoned: Option<Abandoned>,
    /// Fuzz T1 and T2 of each bound lease (RFC 2131 §4.4.5); on unless turned off.
    timer_fuzz: bool,
    /// The held lease's fuzz, drawn when it was bound.
    fuzz: LeaseFuzz,
}

/// A REQUESTING exchange the client gave up on after MAX_SELECTING_REQUESTS unanswered
/// REQUESTs. A server that is slower than that (a log-in storm: Kea in hot-standby answered
/// 15-20 s late in issue 16's farm) still ACKs it, and that ACK grants this client the lease:
/// taking it, instead of rejecting its xid, saves a second exchange that the loaded server
/// would also answer late (the farm lost starts that way, with the ACK on the wire).
#[derive(Debug, Clone, Copy)]
struct Abandoned {
    xid: u32,
    server_id: Ipv4Addr,
    first_request_at: Millis,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Self {
        let rng = SplitMix64::new(cfg.seed);
        Self {
            cfg,
            rng,
            state: State::Init,
            xid: None,
            exchange_start: 0,
            first_request_at: 0,
            attempts: 0,
            offer: None,
            lease: None,
            unconfirmed: None,
            hint: None,
            timer: None,
            discovers: 0,
            naks: 0,
            check_addresses: false,
            checking: None,
            declines: 0,
            abandoned: None,
            timer_fuzz: true,
            fuzz: LeaseFuzz::NONE,
        }
    }

    /// Renew and rebind at the server's exact T1 and T2 instead of RFC 2131 §4.4.5's fuzzed
    /// ones (`false`; for tests that check the schedule to the millisecond).
    pub fn with_timer_fuzz(mut self, on: bool) -> Self {
        self.timer_fuzz = on;
        self
    }

    /// When the held lease is renewed, rebound and ends: (T1, T2, expiry) as absolute times,
    /// T1 and T2 with this lease's fuzz; `None` without a lease or for an infinite one.
    pub fn lease_deadlines(&self) -> Option<(Millis, Millis, Millis)> {
        let lease = self.lease.as_ref()?;
        let (renew, rebind, expiry) = (lease.renew_at()?, lease.rebind_at()?, lease.expires_at()?);
        let (renew, rebind) = self.fuzz.apply(lease.acquired_at, renew, rebind, expiry);
        Some((renew, rebind, expiry))
    }

    /// Probe each newly offered address before applying it (RFC 2131 §4.4.1, RFC 5227): an
    /// ACK in REQUESTING becomes `Action::CheckAddress`, and a conflict a DHCPDECLINE. Off by
    /// default.
    pub fn with_address_check(mut self, on: bool) -> Self {
        self.check_addresses = on;
        self
    }

    /// DHCPDECLINEs sent in a row (reset once a checked address is bound).
    pub fn declines(&self) -> u32 {
        self.declines
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The applied lease, if any (not an unconfirmed one being INIT-REBOOTed).
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// The server we are talking to: the chosen one while REQUESTING, the
    /// lease's while holding one, the persisted one while REBOOTING.
    pub fn server(&self) -> Option<Ipv4Addr> {
        match self.state {
            State::Requesting => self.offer.map(|(_, s)| s),
            State::Rebooting => self.unconfirmed.as_ref().map(|l| l.server_id),
            _ => self.lease.as_ref().map(|l| l.server_id),
        }
    }

    /// Consecutive DISCOVERs not answered by a usable OFFER: reset by `Start`,
    /// `StartWithLease`, an accepted OFFER and a bound lease.
    pub fn discovers_sent(&self) -> u32 {
        self.discovers
    }

    /// When the driver must next send `Timer`: the protocol deadline, or earlier the end of
    /// an unconfirmed persisted lease (its address must go then, RFC 2131 §4.4.5).
    pub fn next_timer(&self) -> Option<Millis> {
        let unconfirmed_end = self.unconfirmed.as_ref().and_then(Lease::expires_at);
        [self.timer, unconfirmed_end].into_iter().flatten().min()
    }

    pub fn on_event(&mut self, ev: Event, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        match ev {
            Event::Start => self.start(now, &mut out),
            Event::StartRequesting(addr) => {
                if !self.holds_lease() {
                    self.hint = Some(addr);
                }
                self.start(now, &mut out)
            }
            Event::StartWithLease(lease) => self.start_with_lease(lease, now, &mut out),
            Event::Packet { bytes } => {
                if let Err(r) = self.on_packet(&bytes, now, &mut out) {
                    out.push(Action::Reject { reason: r });
                }
            }
            Event::Timer => self.on_timer(now, &mut out),
            Event::Release => self.release(&mut out),
            Event::ReleaseOrphan(lease) => self.release_orphan(lease, now, &mut out),
            Event::AddressFree => {
                if let Some(lease) = self.checking.take() {
                    self.declines = 0;
                    self.bind(lease, now, &mut out);
                }
            }
            Event::AddressInUse { by } => self.address_in_use(by, now, &mut out),
        }
        out
    }

    fn holds_lease(&self) -> bool {
        matches!(self.state, State::Bound | State::Renewing | State::Rebinding)
    }

    fn start(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.holds_lease() {
            return;
        }
        self.discovers = 0;
        self.naks = 0;
        self.begin_discover(now, out);
    }

    fn start_with_lease(&mut self, lease: Lease, now: Millis, out: &mut Vec<Action>) {
        if self.holds_lease() {
            return;
        }
        self.discovers = 0;
        self.naks = 0;
        self.hint = None;
        if !lease.is_usable_at(now) {
            self.unconfirmed = None;
            out.push(Action::PersistLease(None));
            self.begin_discover(now, out);
            return;
        }
        self.state = State::InitReboot;
        self.unconfirmed = Some(lease);
        self.new_exchange(now);
        self.state = State::Rebooting;
        self.send_request(now, out);
        self.arm_backoff(now, out);
    }

    fn new_exchange(&mut self, now: Millis) {
        self.xid = Some(self.rng.next_u32());
        self.exchange_start = now;
        self.attempts = 0;
    }

    fn begin_discover(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.state = State::Selecting;
        self.offer = None;
        self.new_exchange(now);
        self.send_discover(now, out);
    }

    fn send_discover(&mut self, now: Millis, out: &mut Vec<Action>) {
        let msg = Outgoing {
            kind: Kind::Discover,
            xid: self.xid.unwrap_or_default(),
            secs: self.secs(now),
            ciaddr: Ipv4Addr::UNSPECIFIED,
            broadcast_flag: true,
            requested: self.hint,
            server_id: None,
        };
        out.push(Action::Send { bytes: encode::encode(&msg, &self.cfg), dest: Dest::Broadcast, broadcast_flag: true });
        self.discovers = self.discovers.saturating_add(1);
        self.attempts = self.attempts.saturating_add(1);
        self.arm_backoff(now, out);
    }

    /// REQUEST shaped per RFC 2131 table 4 for the current state.
    fn send_request(&mut self, now: Millis, out: &mut Vec<Action>) {
        let zero = Ipv4Addr::UNSPECIFIED;
        let held = self.lease.as_ref().map(|l| (l.address, l.server_id));
        let (ciaddr, requested, server_id, dest, flag) = match (self.state, held) {
            (State::Requesting, _) => {
                let (addr, server) = self.offer.unwrap_or((zero, zero));
                (zero, Some(addr), Some(server), Dest::Broadcast, true)
            }
            (State::Rebooting, _) => {
                let addr = self.unconfirmed.as_ref().map_or(zero, |l| l.address);
                (zero, Some(addr), None, Dest::Broadcast, true)
            }
            (State::Renewing, Some((addr, server))) => (addr, None, None, Dest::Unicast(server), false),
            (State::Rebinding, Some((addr, _))) => (addr, None, None, Dest::Broadcast, false),
            _ => return,
        };
        if self.attempts == 0 {
            self.first_request_at = now;
        }
        let msg = Outgoing { kind: Kind::Request, xid: self.xid.unwrap_or_default(), secs: self.secs(now), ciaddr, broadcast_flag: flag, requested, server_id };
        out.push(Action::Send { bytes: encode::encode(&msg, &self.cfg), dest, broadcast_flag: flag });
        self.attempts = self.attempts.saturating_add(1);
    }

    fn secs(&self, now: Millis) -> u16 {
        (now.saturating_sub(self.exchange_start) / 1000).min(u64::from(u16::MAX)) as u16
    }

    fn arm(&mut self, at: Millis, now: Millis, out: &mut Vec<Action>) {
        self.timer = Some(at.max(now));
        self.push_timer(now, out);
    }

    /// Tells the driver the next wake-up (see [`Client::next_timer`]).
    fn push_timer(&self, now: Millis, out: &mut Vec<Action>) {
        if let Some(at) = self.next_timer() {
            out.push(Action::SetTimer(at.max(now)));
        }
    }

    fn arm_backoff(&mut self, now: Millis, out: &mut Vec<Action>) {
        let delay = retransmit_delay(self.attempts.saturating_sub(1), &mut self.rng);
        self.arm(now.saturating_add(delay), now, out);
    }

    fn on_timer(&mut self, now: Millis, out: &mut Vec<Action>) {
        if let Some(l) = self.unconfirmed.take_if(|l| l.has_ended(now)) {
            // Nobody confirmed the persisted lease before it ended: its address goes.
            out.push(Action::RemoveLease(l));
            out.push(Action::PersistLease(None));
        }
        let Some(deadline) = self.timer else { return };
        if now < deadline {
            // Early wake-up (or wall-clock step back): re-arm the same deadline.
            self.push_timer(now, out);
            return;
        }
        self.timer = None;
        match self.state {
            State::Init => self.begin_discover(now, out),
            State::Selecting => self.send_discover(now, out),
            State::Requesting if self.attempts >= MAX_SELECTING_REQUESTS => {
                if let (Some(xid), Some((_, server_id))) = (self.xid, self.offer) {
                    self.abandoned = Some(Abandoned { xid, server_id, first_request_at: self.first_request_at });
                }
                self.begin_discover(now, out)
            }
            State::Rebooting if self.attempts >= MAX_REBOOT_REQUESTS => {
                // Unanswered INIT-REBOOT: fall back to INIT, asking for the same
                // address. The lease stays persisted and is not removed: it was
                // never applied by us (see `unconfirmed`).
                self.hint = self.unconfirmed.as_ref().map(|l| l.address);
                self.begin_discover(now, out);
            }
            State::Requesting | State::Rebooting => {
                self.send_request(now, out);
                self.arm_backoff(now, out);
            }
            State::Bound | State::Renewing | State::Rebinding => self.lease_timer(now, out),
            State::InitReboot | State::Released => {}
        }
    }

    /// T1/T2/expiry handling; works out the phase from `now` so a wall-clock
    /// jump past several deadlines lands in the right state.
    fn lease_timer(&mut self, now: Millis, out: &mut Vec<Action>) {
        let Some((renew, rebind, expiry)) = self.lease_deadlines() else {
            return; // no lease, or an infinite one: nothing to do
        };
        if now >= expiry {
            self.expire(now, out);
        } else if now >= rebind {
            if self.state != State::Rebinding {
                // Keep the RENEWING xid so a late unicast ACK is still accepted.
                if self.state != State::Renewing {
                    self.new_exchange(now);
                }
                self.state = State::Rebinding;
            }
            self.send_request(now, out);
            self.arm(lease_retry_at(now, rebind, expiry), now, out);
        } else if now >= renew {
            if self.state != State::Renewing {
                self.new_exchange(now);
                self.state = State::Renewing;
            }
            self.send_request(now, out);
            self.arm(lease_retry_at(now, renew, rebind), now, out);
        } else {
            self.arm(renew, now, out);
        }
    }

    fn expire(&mut self, now: Millis, out: &mut Vec<Action>) {
        if let Some(old) = self.lease.take() {
            out.push(Action::RemoveLease(old));
            out.push(Action::PersistLease(None));
        }
        self.discovers = 0;
        self.begin_discover(now, out);
    }

    fn on_packet(&mut self, bytes: &[u8], now: Millis, out: &mut Vec<Action>) -> Result<(), RejectReason> {
        let reply = decode::parse(bytes)?;
        let expected = self.xid.ok_or(RejectReason::NoTransaction(self.state))?;
        if let Some(late) = self.abandoned.filter(|a| a.xid == reply.xid && a.xid != expected) {
            return self.on_late_ack(&reply, late, now, out);
        }
        if reply.xid != expected {
            return Err(RejectReason::XidMismatch { got: reply.xid, expected });
        }
        if !reply.chaddr_is(&self.cfg.mac) {
            return Err(RejectReason::ChaddrMismatch);
        }
        let expected_type = matches!(
            (self.state, reply.msg_type),
            (State::Selecting, OFFER) | (State::Requesting | State::Rebooting | State::Renewing | State::Rebinding, ACK | NAK)
        );
        if !expected_type {
            return Err(RejectReason::UnexpectedMessageType { got: reply.msg_type, state: self.state });
        }
        let server_id = reply.server_id()?;
        // A REQUEST that names its server (REQUESTING) or is unicast to it (RENEWING) is
        // answered by that server only: a reply from another is a rogue's (or a confused
        // server's), and accepting it would move the lease, its renewals and its RELEASE there.
        let asked = match self.state {
            State::Requesting => self.offer.map(|(_, s)| s),
            State::Renewing => self.lease.as_ref().map(|l| l.server_id),
            _ => None,
        };
        if let Some(expected) = asked
            && server_id != expected
        {
            return Err(RejectReason::ServerIdMismatch { got: server_id, expected });
        }
        match (self.state, reply.msg_type) {
            (State::Selecting, OFFER) => self.on_offer(&reply, server_id, now, out),
            (State::Requesting, ACK) if self.check_addresses => {
                let lease = decode::lease_from_reply(&reply, self.first_request_at, self.cfg.min_lease_secs)?;
                self.check_address(lease, now, out);
                Ok(())
            }
            (State::Requesting | State::Rebooting | State::Renewing | State::Rebinding, ACK) => {
                let lease = decode::lease_from_reply(&reply, self.first_request_at, self.cfg.min_lease_secs)?;
                self.bind(lease, now, out);
                Ok(())
            }
            (State::Requesting | State::Rebooting | State::Renewing | State::Rebinding, NAK) => {
                self.on_nak(now, out);
                Ok(())
            }
            _ => Err(RejectReason::UnexpectedMessageType { got: reply.msg_type, state: self.state }),
        }
    }

    /// A reply to the abandoned REQUESTING exchange `late` (see `Abandoned`), while a new one
    /// runs (SELECTING or REQUESTING): an ACK from the server that exchange asked binds as if
    /// it had come in time; anything else is rejected as a reply to another exchange.
    fn on_late_ack(&mut self, reply: &Reply, late: Abandoned, now: Millis, out: &mut Vec<Action>) -> Result<(), RejectReason> {
        let expected = self.xid.unwrap_or_default();
        if !matches!(self.state, State::Selecting | State::Requesting) || reply.msg_type != ACK {
            return Err(RejectReason::XidMismatch { got: reply.xid, expected });
        }
        if !reply.chaddr_is(&self.cfg.mac) {
            return Err(RejectReason::ChaddrMismatch);
        }
        let server_id = reply.server_id()?;
        if server_id != late.server_id {
            return Err(RejectReason::ServerIdMismatch { got: server_id, expected: late.server_id });
        }
        let lease = decode::lease_from_reply(reply, late.first_request_at, self.cfg.min_lease_secs)?;
        self.abandoned = None;
        self.state = State::Requesting;
        self.offer = Some((lease.address, server_id));
        if self.check_addresses {
            self.check_address(lease, now, out);
        } else {
            self.bind(lease, now, out);
        }
        Ok(())
    }

    fn on_offer(&mut self, reply: &Reply, server_id: Ipv4Addr, now: Millis, out: &mut Vec<Action>) -> Result<(), RejectReason> {
        // Validate the whole lease now so we never REQUEST an unusable offer.
        let offered = decode::lease_from_reply(reply, now, self.cfg.min_lease_secs)?;
        self.offer = Some((offered.address, server_id));
        self.discovers = 0;
        self.state = State::Requesting;
        self.attempts = 0;
        self.send_request(now, out);
        self.arm_backoff(now, out);
        Ok(())
    }

    fn bind(&mut self, lease: Lease, now: Millis, out: &mut Vec<Action>) {
        let previous = self.lease.take().or_else(|| self.unconfirmed.take());
        self.abandoned = None;
        self.unconfirmed = None;
        self.hint = None;
        self.offer = None;
        self.xid = None;
        self.discovers = 0;
        self.naks = 0;
        self.state = State::Bound;
        out.push(Action::ApplyLease { lease: lease.clone(), previous });
        out.push(Action::PersistLease(Some(lease.clone())));
        self.fuzz = if self.timer_fuzz { LeaseFuzz::draw(&mut self.rng) } else { LeaseFuzz::NONE };
        self.lease = Some(lease);
        // Never a zero gap: an ACK that came later than T1 after its request (a slow server,
        // a clock step) would otherwise start the next renewal at once.
        let floor_ms = u64::from(renewal_floor_secs(self.cfg.min_lease_secs)) * 1000;
        match self.lease_deadlines() {
            Some((renew, ..)) => self.arm(renew.max(now.saturating_add(floor_ms)), now, out),
            None => self.timer = None,
        }
    }

    /// RFC 2131 §4.4.1: the client SHOULD check the offered address before using it. Later
    /// replies of this exchange are ignored (no xid) and no retransmission is pending while
    /// the driver probes.
    fn check_address(&mut self, lease: Lease, now: Millis, out: &mut Vec<Action>) {
        out.push(Action::CheckAddress(lease.address));
        self.checking = Some(lease);
        self.xid = None;
        self.timer = None;
        self.push_timer(now, out);
    }

    fn address_in_use(&mut self, by: [u8; 6], now: Millis, out: &mut Vec<Action>) {
        self.abandoned = None; // its late ACK would be for the declined address too
        let declined = match self.checking.take() {
            Some(l) => l,
            None if self.holds_lease() => match self.lease.take() {
                Some(l) => {
                    out.push(Action::RemoveLease(l.clone()));
                    out.push(Action::PersistLease(None));
                    l
                }
                None => return,
            },
            None => return,
        };
        // A persisted lease of the same address that an earlier daemon left configured goes too.
        if let Some(u) = self.unconfirmed.take_if(|u| u.address == declined.address) {
            out.push(Action::RemoveLease(u));
            out.push(Action::PersistLease(None));
        }
        // RFC 2131 table 5: no ciaddr; requested address and server id MUST be present.
        let msg = Outgoing {
            kind: Kind::Decline,
            xid: self.rng.next_u32(),
            secs: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            broadcast_flag: false,
            requested: Some(declined.address),
            server_id: Some(declined.server_id),
        };
        // §4.4.4: the client broadcasts DHCPDECLINE (it has no usable address).
        out.push(Action::Send { bytes: encode::encode(&msg, &self.cfg), dest: Dest::Broadcast, broadcast_flag: false });
        self.declines = self.declines.saturating_add(1);
        self.state = State::Init;
        self.offer = None;
        self.hint = None;
        self.xid = None;
        self.discovers = 0;
        if self.declines >= crate::acd::MAX_CONFLICTS {
            self.timer = None;
            out.push(Action::GiveUp { declined: self.declines, address: declined.address, by });
            self.push_timer(now, out);
        } else {
            self.arm(now.saturating_add(DECLINE_WAIT_MS), now, out);
        }
    }

    fn on_nak(&mut self, now: Millis, out: &mut Vec<Action>) {
        if let Some(old) = self.lease.take() {
            out.push(Action::RemoveLease(old));
            out.push(Action::PersistLease(None));
        } else if self.state == State::Rebooting {
            // The persisted lease is dead; keep it only as `previous` for the
            // next ApplyLease in case an earlier daemon left it configured.
            out.push(Action::PersistLease(None));
        }
        self.hint = None;
        self.offer = None;
        self.xid = None;
        self.abandoned = None; // the server said no: a late ACK of an older exchange is stale
        self.state = State::Init;
        // Short, growing pause so a NAK-happy server cannot make us spin.
        let delay = retransmit_delay(self.naks, &mut self.rng);
        self.naks = self.naks.saturating_add(1);
        self.arm(now.saturating_add(delay), now, out);
    }

    fn release(&mut self, out: &mut Vec<Action>) {
        if self.holds_lease()
            && let Some(lease) = self.lease.take()
        {
            self.send_release(&lease, out);
            out.push(Action::RemoveLease(lease));
            out.push(Action::PersistLease(None));
        }
        self.forget_all();
    }

    fn release_orphan(&mut self, lease: Lease, now: Millis, out: &mut Vec<Action>) {
        if self.holds_lease() {
            return; // a live lease is released with `Release`
        }
        if lease.is_usable_at(now) {
            self.send_release(&lease, out);
        }
        out.push(Action::PersistLease(None));
        self.forget_all();
    }

    fn send_release(&mut self, lease: &Lease, out: &mut Vec<Action>) {
        let msg = Outgoing {
            kind: Kind::Release,
            xid: self.rng.next_u32(),
            secs: 0,
            ciaddr: lease.address,
            broadcast_flag: false,
            requested: None,
            server_id: Some(lease.server_id),
        };
        out.push(Action::Send { bytes: encode::encode(&msg, &self.cfg), dest: Dest::Unicast(lease.server_id), broadcast_flag: false });
    }

    fn forget_all(&mut self) {
        self.state = State::Released;
        self.checking = None;
        self.xid = None;
        self.offer = None;
        self.unconfirmed = None;
        self.hint = None;
        self.timer = None;
    }
}
