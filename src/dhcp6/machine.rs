//! RFC 8415 §18, "DHCP Configuration Exchanges", for a client with one IA_NA (or none, for
//! Information-Request): events in, actions out; no I/O, no clock, no hidden randomness.

use std::net::Ipv6Addr;

use dhcproto::v6::{MessageType, Status};

use super::client_messages::{Outgoing, encode};
use super::lease::{INFINITY, IRT_DEFAULT_SECS, IRT_MINIMUM_SECS, Info, Lease, check_address, timers};
use super::reject::RejectReason;
use super::reliability::{self as rel, Exchange, Params, RAND_SPAN};
use super::validation::{self, Incoming, Kind};
use crate::dhcp::{Millis, SplitMix64};

/// The client's state; the same enum `status` carries.
pub use sessiond_client::record::Dhcp6State as State;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The host's DUID (`crate::dhcp::duid`): one per machine.
    pub duid: Vec<u8>,
    /// The session's IAID: its sid, so that it is unique per session.
    pub iaid: u32,
    /// Seeds transaction ids and RAND. Seed it from the OS RNG: transaction ids are what
    /// stops off-path spoofed replies.
    pub seed: u64,
    /// T1 and T2 come no sooner than this many seconds (a server cannot make a session
    /// renew in a loop); `crate::dhcp::DEFAULT_MIN_LEASE_SECS` halved, as for IPv4.
    pub min_renew_secs: u32,
    /// Ask for Rapid Commit (§18.2.1): a Reply to the Solicit binds at once.
    pub rapid_commit: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Stateful configuration: Solicit an IA_NA address (the RA's M flag, or `ipv6 =
    /// "dhcpv6"`). Ignored while a lease is held.
    Start,
    /// Stateless configuration: Information-Request for DNS servers and the search list
    /// (the RA's O flag without M).
    StartInformation,
    /// After a daemon restart: Rebind the persisted lease (§18.2.5) while its address stays;
    /// an expired or invalid one is dropped (`PersistLease(None)`) and the client Solicits.
    StartWithLease(Lease),
    /// A UDP payload received on port 546.
    Packet { bytes: Vec<u8> },
    /// The last `SetTimer` deadline has passed; early or stale calls are harmless.
    Timer,
    /// Stop: Release a held lease (§18.2.7), then `Released`.
    Release,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// To All_DHCP_Relay_Agents_and_Servers (ff02::1:2) port 547, from the session's
    /// link-local address, port 546.
    Send { bytes: Vec<u8> },
    /// Configure `lease` (address and lifetimes; DNS into resolv.conf). `previous` may be
    /// configured now: if its address differs, add the new one before removing it.
    ApplyLease { lease: Lease, previous: Option<Lease> },
    /// Drop the lease's address.
    RemoveLease(Lease),
    /// Save (`Some`) or delete (`None`) the persisted lease.
    PersistLease(Option<Lease>),
    /// Stateless configuration (DNS servers, search list) to merge into resolv.conf.
    ApplyInfo(Info),
    /// Absolute deadline, never before `now`; replaces any earlier one.
    SetTimer(Millis),
    /// A received message was ignored ([`RejectReason::is_routine`] ones at debug level).
    Reject { reason: RejectReason },
}

/// The server a Request goes to, and the address it offered.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Offer {
    server_id: Vec<u8>,
    preference: u8,
    address: Option<Ipv6Addr>,
}

/// Sans-IO DHCPv6 client. Feed it events with the current time and execute the returned
/// actions in order.
#[derive(Debug, Clone)]
pub struct Client {
    cfg: ClientConfig,
    rng: SplitMix64,
    state: State,
    /// Transaction whose replies are accepted; None when no exchange is in flight.
    xid: Option<u32>,
    exchange: Option<Exchange>,
    /// Soliciting: the best Advertise so far. Requesting: the server asked.
    offer: Option<Offer>,
    /// The applied lease (Bound, Renewing, Rebinding).
    lease: Option<Lease>,
    /// A persisted lease being rebound after a restart, possibly still configured.
    unconfirmed: Option<Lease>,
    /// The lease being released (its address is already gone).
    releasing: Option<Lease>,
    /// Stateless configuration and when to refresh it.
    info: Option<(Info, Millis)>,
    timer: Option<Millis>,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Client {
        let rng = SplitMix64::new(cfg.seed);
        Client {
            cfg,
            rng,
            state: State::Init,
            xid: None,
            exchange: None,
            offer: None,
            lease: None,
            unconfirmed: None,
            releasing: None,
            info: None,
            timer: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    pub fn info(&self) -> Option<&Info> {
        self.info.as_ref().map(|(i, _)| i)
    }

    /// The armed deadline, if any.
    pub fn timer(&self) -> Option<Millis> {
        self.timer
    }

    pub fn on_event(&mut self, ev: Event, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        match ev {
            Event::Start if self.held().is_none() && !matches!(self.state, State::Soliciting | State::Requesting) => self.solicit(now, &mut out),
            Event::Start => {}
            Event::StartInformation if self.held().is_none() => self.inform(now, &mut out),
            Event::StartInformation => {}
            Event::StartWithLease(l) => {
                if self.held().is_some() {
                } else if l.validate().is_err() || l.is_expired(now) || l.iaid != self.cfg.iaid {
                    out.push(Action::PersistLease(None));
                    self.solicit(now, &mut out);
                } else {
                    self.unconfirmed = Some(l);
                    self.rebind(now, &mut out);
                }
            }
            Event::Packet { bytes } => {
                if let Err(reason) = self.on_packet(&bytes, now, &mut out) {
                    out.push(Action::Reject { reason });
                }
            }
            Event::Timer => self.on_timer(now, &mut out),
            Event::Release => self.release(now, &mut out),
        }
        self.arm(now, &mut out);
        out
    }

    /// The lease whose address may be configured now: the applied one, or a persisted one
    /// being rebound.
    fn held(&self) -> Option<&Lease> {
        self.lease.as_ref().or(self.unconfirmed.as_ref())
    }

    fn rand(&mut self) -> i64 {
        self.rng.jitter(RAND_SPAN as u64)
    }

    /// Begins an exchange in `state` and sends its first message.
    fn begin(&mut self, state: State, params: Params, deadline: Option<Millis>, now: Millis, out: &mut Vec<Action>) {
        self.state = state;
        self.xid = Some(self.rng.next_u32() & 0x00ff_ffff);
        let rand = self.rand();
        self.exchange = Some(Exchange::begin(params, now, rand, state == State::Soliciting, deadline));
        self.send(now, out);
    }

    /// Sends the current exchange's message (first transmission or retransmission).
    fn send(&mut self, now: Millis, out: &mut Vec<Action>) {
        let (Some(xid), Some(ex)) = (self.xid, &self.exchange) else { return };
        let held = self.held().map(|l| (l.address, l.server_id.clone()));
        let offered = self.offer.as_ref().map(|o| (o.address, o.server_id.clone()));
        let (kind, address, server_id) = match self.state {
            State::Soliciting => (MessageType::Solicit, None, None),
            State::Requesting => {
                let (address, server) = offered.unwrap_or_default();
                (MessageType::Request, address, Some(server))
            }
            State::Renewing => (MessageType::Renew, held.as_ref().map(|h| h.0), held.map(|h| h.1)),
            State::Rebinding => (MessageType::Rebind, held.map(|h| h.0), None),
            State::Releasing => {
                let r = self.releasing.as_ref();
                (MessageType::Release, r.map(|l| l.address), r.map(|l| l.server_id.clone()))
            }
            State::Informing => (MessageType::InformationRequest, None, None),
            State::Init | State::Bound | State::Informed | State::Released => return,
        };
        let ia = (kind != MessageType::InformationRequest).then_some((self.cfg.iaid, address));
        let bytes = encode(&Outgoing {
            kind,
            xid,
            duid: &self.cfg.duid,
            elapsed: ex.elapsed_centis(now),
            ia,
            server_id: server_id.as_deref(),
            rapid_commit: kind == MessageType::Solicit && self.cfg.rapid_commit,
        });
        out.push(Action::Send { bytes });
    }

    fn solicit(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.offer = None;
        self.begin(State::Soliciting, rel::SOLICIT, None, now, out);
    }

    fn request(&mut self, offer: Offer, now: Millis, out: &mut Vec<Action>) {
        self.offer = Some(offer);
        self.begin(State::Requesting, rel::REQUEST, None, now, out);
    }

    fn renew(&mut self, now: Millis, out: &mut Vec<Action>) {
        let until = self.lease.as_ref().and_then(Lease::rebind_at);
        self.begin(State::Renewing, rel::RENEW, until, now, out);
    }

    fn rebind(&mut self, now: Millis, out: &mut Vec<Action>) {
        let until = self.held().and_then(Lease::expires_at);
        self.begin(State::Rebinding, rel::REBIND, until, now, out);
    }

    fn inform(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.begin(State::Informing, rel::INFORMATION_REQUEST, None, now, out);
    }

    /// §18.2.7: Release the held lease (its address goes at once), then `Released` once the
    /// server answers or REL_MAX_RC transmissions went unanswered.
    fn release(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.info = None;
        if self.state == State::Releasing {
            return;
        }
        match self.lease.take().or(self.unconfirmed.take()) {
            Some(l) => {
                self.offer = None;
                self.releasing = Some(l.clone());
                self.begin(State::Releasing, rel::RELEASE, None, now, out);
                out.push(Action::RemoveLease(l));
                out.push(Action::PersistLease(None));
            }
            None => self.finish_release(),
        }
    }

    fn finish_release(&mut self) {
        self.state = State::Released;
        (self.xid, self.exchange, self.offer, self.lease, self.unconfirmed, self.releasing) = (None, None, None, None, None, None);
    }

    /// The held lease ran out: drop it and Solicit again.
    fn expire(&mut self, now: Millis, out: &mut Vec<Action>) {
        if let Some(l) = self.lease.take().or(self.unconfirmed.take()) {
            out.push(Action::RemoveLease(l));
        }
        out.push(Action::PersistLease(None));
        self.solicit(now, out);
    }

    fn on_timer(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.timer.is_none_or(|t| now < t) {
            return; // early or stale: `arm` re-emits the deadline
        }
        if self.held().is_some_and(|l| l.is_expired(now)) && self.state != State::Releasing {
            return self.expire(now, out);
        }
        let over = self.exchange.as_ref().is_some_and(|e| e.is_over(now));
        match self.state {
            // The Advertise collection ends with the first RT: ask the best server.
            State::Soliciting if self.offer.is_some() => {
                let offer = self.offer.take().expect("checked");
                self.request(offer, now, out)
            }
            State::Requesting if over => self.solicit(now, out),
            State::Renewing if over => self.rebind(now, out),
            State::Releasing if over => self.finish_release(),
            State::Soliciting | State::Requesting | State::Renewing | State::Rebinding | State::Releasing | State::Informing => {
                let rand = self.rand();
                if let Some(e) = self.exchange.as_mut() {
                    e.retransmitted(now, rand);
                }
                self.send(now, out);
            }
            State::Bound => {
                let l = self.lease.as_ref().expect("bound has a lease");
                if l.rebind_at().is_some_and(|t| now >= t) {
                    self.rebind(now, out)
                } else if l.renew_at().is_some_and(|t| now >= t) {
                    self.renew(now, out)
                }
            }
            State::Informed => self.inform(now, out),
            State::Init | State::Released => {}
        }
    }

    /// Arms the timer for what is pending (or disarms it) and tells the driver.
    fn arm(&mut self, now: Millis, out: &mut Vec<Action>) {
        let expiry = self.held().and_then(Lease::expires_at);
        let next = match self.state {
            State::Soliciting | State::Requesting | State::Renewing | State::Rebinding | State::Releasing | State::Informing => {
                self.exchange.as_ref().map(Exchange::deadline)
            }
            State::Bound => self.lease.as_ref().and_then(Lease::renew_at),
            State::Informed => self.info.as_ref().map(|(_, at)| *at),
            State::Init | State::Released => None,
        };
        // The valid lifetime's end interrupts whatever else is pending (not a Release).
        let next = match (next, expiry) {
            (Some(n), Some(e)) if self.state != State::Releasing => Some(n.min(e)),
            (None, Some(e)) if self.state != State::Releasing && self.state != State::Released => Some(e),
            (n, _) => n,
        };
        self.timer = next.map(|t| t.max(now));
        if let Some(t) = self.timer {
            out.push(Action::SetTimer(t));
        }
    }

    /// §16: the checks every Advertise and Reply must pass for this exchange.
    fn check(&self, m: &Incoming) -> Result<Vec<u8>, RejectReason> {
        let expected = self.xid.ok_or(RejectReason::NoTransaction(self.state))?;
        if m.xid != expected {
            return Err(RejectReason::XidMismatch { got: m.xid, expected });
        }
        match &m.client_id {
            None => return Err(RejectReason::MissingClientId),
            Some(c) if *c != self.cfg.duid => return Err(RejectReason::ClientIdMismatch),
            Some(_) => {}
        }
        let server = m.server_id.clone().ok_or(RejectReason::MissingServerId)?;
        if !(3..=130).contains(&server.len()) {
            return Err(RejectReason::BadServerId { len: server.len() });
        }
        Ok(server)
    }

    fn on_packet(&mut self, bytes: &[u8], now: Millis, out: &mut Vec<Action>) -> Result<(), RejectReason> {
        let m = validation::parse(bytes)?;
        let server = self.check(&m)?;
        let failed_status = |s: &Option<(Status, String)>| match s {
            Some((status, message)) if *status != Status::Success => Some(RejectReason::Status { status: *status, message: message.clone() }),
            _ => None,
        };
        match (self.state, m.kind) {
            (State::Soliciting, Kind::Advertise) => {
                if let Some(e) = failed_status(&m.status) {
                    return Err(e);
                }
                let address = self.ia_address(&m)?.0.addr;
                let offer = Offer { server_id: server, preference: m.preference, address: Some(address) };
                // §18.2.9: 255 is "use me now"; else the best by preference, the first on a tie.
                if offer.preference == u8::MAX {
                    self.request(offer, now, out);
                } else if self.offer.as_ref().is_none_or(|o| offer.preference > o.preference) {
                    self.offer = Some(offer);
                }
                Ok(())
            }
            (State::Soliciting, Kind::Reply) if !(self.cfg.rapid_commit && m.rapid_commit) => Err(RejectReason::NoRapidCommit),
            (State::Soliciting | State::Requesting | State::Renewing | State::Rebinding, Kind::Reply) => {
                let asked = match self.state {
                    State::Requesting => self.offer.as_ref().map(|o| &o.server_id),
                    State::Renewing => self.lease.as_ref().map(|l| &l.server_id),
                    _ => None,
                };
                if asked.is_some_and(|a| *a != server) {
                    return Err(RejectReason::ServerIdMismatch);
                }
                if let Some(e) = failed_status(&m.status) {
                    return Err(e); // UnspecFail, UseMulticast...: retransmit as scheduled
                }
                match self.ia_address(&m) {
                    Ok((address, ia)) => self.bind(&m, server, address, ia, out),
                    Err(RejectReason::IaStatus { status: Status::NoBinding, .. }) if self.held().is_some() => {
                        // §18.2.10.1: the server lost our binding: Request it from that server.
                        let address = self.held().map(|l| l.address);
                        self.request(Offer { server_id: server, preference: 0, address }, now, out);
                        Ok(())
                    }
                    Err(RejectReason::IaStatus { status: Status::NotOnLink | Status::NoAddrsAvail, .. }) if self.state == State::Requesting => {
                        // §18.2.10.1: this server will not give us an address: Solicit again.
                        self.solicit(now, out);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            (State::Informing, Kind::Reply) => {
                if let Some(e) = failed_status(&m.status) {
                    return Err(e);
                }
                let refresh = m.refresh_secs.unwrap_or(IRT_DEFAULT_SECS).max(IRT_MINIMUM_SECS);
                let info = Info { dns: m.dns, search: m.search, refresh_secs: refresh };
                self.state = State::Informed;
                (self.xid, self.exchange) = (None, None);
                let at = if refresh == INFINITY { Millis::MAX } else { now.saturating_add(u64::from(refresh) * 1000) };
                self.info = Some((info.clone(), at));
                out.push(Action::ApplyInfo(info));
                Ok(())
            }
            // §18.2.10.2: any Reply ends the Release.
            (State::Releasing, Kind::Reply) => {
                self.finish_release();
                Ok(())
            }
            (state, kind) => {
                Err(RejectReason::UnexpectedMessage { got: if kind == Kind::Advertise { MessageType::Advertise } else { MessageType::Reply }, state })
            }
        }
    }

    /// The usable address of our IA_NA in `m` (§21.4, §21.6), with the IA's (T1, T2).
    fn ia_address(&self, m: &Incoming) -> Result<(super::validation::IaAddress, (u32, u32)), RejectReason> {
        let ia = m.ia_na.iter().find(|ia| ia.iaid == self.cfg.iaid).ok_or(RejectReason::MissingIa(self.cfg.iaid))?;
        if let Some((status, message)) = &ia.status
            && *status != Status::Success
        {
            return Err(RejectReason::IaStatus { status: *status, message: message.clone() });
        }
        if ia.t1 != 0 && ia.t2 != 0 && ia.t1 > ia.t2 {
            return Err(RejectReason::BadIaTimers { t1: ia.t1, t2: ia.t2 });
        }
        let mut first_error = None;
        for a in &ia.addresses {
            let problem = if let Err(why) = check_address(a.addr) {
                Some(RejectReason::BadAddress { addr: a.addr, why })
            } else if a.preferred > a.valid {
                Some(RejectReason::BadLifetimes { addr: a.addr, preferred: a.preferred, valid: a.valid })
            } else if a.valid == 0 {
                None // withdrawn (§18.2.10.1): not an error, not usable either
            } else {
                return Ok((a.clone(), (ia.t1, ia.t2)));
            };
            first_error = first_error.or(problem);
        }
        Err(first_error.unwrap_or(RejectReason::NoAddress))
    }

    fn bind(
        &mut self,
        m: &Incoming,
        server_id: Vec<u8>,
        a: super::validation::IaAddress,
        (t1, t2): (u32, u32),
        out: &mut Vec<Action>,
    ) -> Result<(), RejectReason> {
        let started = self.exchange.as_ref().map_or(0, |e| e.started);
        let (t1_secs, t2_secs) = timers(t1, t2, a.preferred, a.valid, self.cfg.min_renew_secs);
        let lease = Lease {
            address: a.addr,
            preferred_secs: a.preferred,
            valid_secs: a.valid,
            t1_secs,
            t2_secs,
            iaid: self.cfg.iaid,
            server_id,
            dns: m.dns.clone(),
            search: m.search.clone(),
            acquired_at: started,
        };
        if let Err(why) = lease.validate() {
            return Err(RejectReason::BadAddress { addr: a.addr, why });
        }
        let previous = self.lease.take().or(self.unconfirmed.take());
        self.state = State::Bound;
        (self.xid, self.exchange, self.offer) = (None, None, None);
        self.lease = Some(lease.clone());
        out.push(Action::ApplyLease { lease: lease.clone(), previous });
        out.push(Action::PersistLease(Some(lease)));
        Ok(())
    }
}
