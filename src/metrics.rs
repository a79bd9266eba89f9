//! Prometheus metrics: what the daemon counts as it goes (starts, stops, DHCP messages, rejects,
//! renewals), the gauges computed from the session table at each scrape, and a tiny HTTP
//! responder that serves them as the Prometheus text format (0.0.4) at `GET /metrics`.
//!
//! Labels are closed enums, never a session id: a label per session would be unbounded
//! cardinality for the time-series database.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::dhcp::{RejectReason, State};
use crate::state::SessionState;

/// Declares a label enum: each variant's label value is written once, here.
macro_rules! label {
    ($(#[$meta:meta])* $ty:ident { $($variant:ident = $name:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $ty { $($variant),+ }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }

        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label! {
    /// `sessiond_sessions{state}`: the session states (`SessionState`).
    StateLabel { Starting = "starting", Up = "up", Stopping = "stopping" }
}

impl From<SessionState> for StateLabel {
    fn from(s: SessionState) -> StateLabel {
        match s {
            SessionState::Starting => StateLabel::Starting,
            SessionState::Up => StateLabel::Up,
            SessionState::Stopping => StateLabel::Stopping,
        }
    }
}

label! {
    /// `sessiond_session_starts_total{result}`: `started` made a session, `already_up` returned
    /// a running one unchanged, `failed` made nothing (pool exhausted, no DHCP answer, uplink
    /// down, a build step failed).
    StartResult { Started = "started", AlreadyUp = "already_up", Failed = "failed" }
}

label! {
    /// `sessiond_dhcp_messages_total{type}`: the DHCP message type (option 53, RFC 2132 §9.6);
    /// `invalid` for a received packet without a readable one.
    MessageType {
        Discover = "discover",
        Offer = "offer",
        Request = "request",
        Decline = "decline",
        Ack = "ack",
        Nak = "nak",
        Release = "release",
        Inform = "inform",
        Other = "other",
        Invalid = "invalid",
    }
}

impl MessageType {
    /// The type of a DHCP message as sent or received (a structurally invalid one is `Invalid`).
    pub fn of(bytes: &[u8]) -> MessageType {
        match crate::dhcp::message_type(bytes) {
            None => MessageType::Invalid,
            Some(1) => MessageType::Discover,
            Some(2) => MessageType::Offer,
            Some(3) => MessageType::Request,
            Some(4) => MessageType::Decline,
            Some(5) => MessageType::Ack,
            Some(6) => MessageType::Nak,
            Some(7) => MessageType::Release,
            Some(8) => MessageType::Inform,
            Some(_) => MessageType::Other,
        }
    }
}

label! {
    /// `sessiond_dhcp_messages_total{direction}`.
    Direction { Sent = "sent", Received = "received" }
}

label! {
    /// `sessiond_dhcp_renewals_total{result}`: how a renewal (RENEWING or REBINDING) ended:
    /// `renewed` (ACK), `nak` (back to INIT), `expired` (the lease ended unanswered).
    RenewalResult { Renewed = "renewed", Nak = "nak", Expired = "expired" }
}

impl RenewalResult {
    /// What a DHCP client's state change says about a renewal, if it ended one.
    pub fn of(from: State, to: State) -> Option<RenewalResult> {
        if !matches!(from, State::Renewing | State::Rebinding) {
            return None;
        }
        match to {
            State::Bound => Some(RenewalResult::Renewed),
            State::Init => Some(RenewalResult::Nak),
            State::Selecting => Some(RenewalResult::Expired),
            _ => None,
        }
    }
}

label! {
    /// `sessiond_dhcp_rejected_total{reason}`: one value per `RejectReason` variant.
    RejectLabel {
        Oversize = "oversize",
        Truncated = "truncated",
        Undecodable = "undecodable",
        NotBootReply = "not_bootreply",
        BadMagic = "bad_magic",
        MalformedOptions = "malformed_options",
        MissingMessageType = "missing_message_type",
        UnexpectedMessageType = "unexpected_message_type",
        NoTransaction = "no_transaction",
        XidMismatch = "xid_mismatch",
        ChaddrMismatch = "chaddr_mismatch",
        MissingServerId = "missing_server_id",
        ServerIdMismatch = "server_id_mismatch",
        InvalidAddress = "invalid_address",
        AddressIsServer = "address_is_server",
        BadNetmask = "bad_netmask",
        MissingLeaseTime = "missing_lease_time",
        ZeroLeaseTime = "zero_lease_time",
        BadTimers = "bad_timers",
        MalformedOption = "malformed_option",
        MalformedClasslessRoutes = "malformed_classless_routes",
        InvalidServerId = "invalid_server_id",
        NetmaskTooWide = "netmask_too_wide",
    }
}

impl From<&RejectReason> for RejectLabel {
    /// Exhaustive on purpose: a new reason must be given a label value here.
    fn from(r: &RejectReason) -> RejectLabel {
        match r {
            RejectReason::Oversize { .. } => RejectLabel::Oversize,
            RejectReason::Truncated { .. } => RejectLabel::Truncated,
            RejectReason::Undecodable(_) => RejectLabel::Undecodable,
            RejectReason::NotBootReply(_) => RejectLabel::NotBootReply,
            RejectReason::BadMagic => RejectLabel::BadMagic,
            RejectReason::MalformedOptions { .. } => RejectLabel::MalformedOptions,
            RejectReason::MissingMessageType => RejectLabel::MissingMessageType,
            RejectReason::UnexpectedMessageType { .. } => RejectLabel::UnexpectedMessageType,
            RejectReason::NoTransaction(_) => RejectLabel::NoTransaction,
            RejectReason::XidMismatch { .. } => RejectLabel::XidMismatch,
            RejectReason::ChaddrMismatch => RejectLabel::ChaddrMismatch,
            RejectReason::MissingServerId => RejectLabel::MissingServerId,
            RejectReason::ServerIdMismatch { .. } => RejectLabel::ServerIdMismatch,
            RejectReason::InvalidAddress { .. } => RejectLabel::InvalidAddress,
            RejectReason::AddressIsServer(_) => RejectLabel::AddressIsServer,
            RejectReason::BadNetmask(_) => RejectLabel::BadNetmask,
            RejectReason::MissingLeaseTime => RejectLabel::MissingLeaseTime,
            RejectReason::ZeroLeaseTime => RejectLabel::ZeroLeaseTime,
            RejectReason::BadTimers { .. } => RejectLabel::BadTimers,
            RejectReason::MalformedOption { .. } => RejectLabel::MalformedOption,
            RejectReason::MalformedClasslessRoutes(_) => RejectLabel::MalformedClasslessRoutes,
            RejectReason::InvalidServerId { .. } => RejectLabel::InvalidServerId,
            RejectReason::NetmaskTooWide { .. } => RejectLabel::NetmaskTooWide,
        }
    }
}

label! {
    /// `sessiond_bridge_*{direction}`: host -> session (a session's loopback), or session ->
    /// host (a host service).
    BridgeDirection { HostToSession = "host_to_session", SessionToHost = "session_to_host" }
}

label! {
    /// `sessiond_bridge_refused_total{reason}`: `not_allowed` (loopback_reach), or
    /// `nothing_listening` (the connection was reset: nothing took it on the other side).
    RefusedReason { NotAllowed = "not_allowed", NothingListening = "nothing_listening" }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BridgeLabels {
    direction: BridgeDirection,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusedLabels {
    direction: BridgeDirection,
    reason: RefusedReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: StateLabel,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StartLabels {
    result: StartResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MessageLabels {
    r#type: MessageType,
    direction: Direction,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectLabels {
    reason: RejectLabel,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RenewalLabels {
    result: RenewalResult,
}

/// What the session table holds now, for the gauges (counted at each scrape).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub starting: i64,
    pub up: i64,
    pub stopping: i64,
    /// Sessions whose record shows a fault (the uplink went away or could not be restored).
    pub faults: i64,
}

impl Census {
    pub fn count(&mut self, state: SessionState, fault: bool) {
        match state {
            SessionState::Starting => self.starting += 1,
            SessionState::Up => self.up += 1,
            SessionState::Stopping => self.stopping += 1,
        }
        self.faults += i64::from(fault);
    }

    fn in_state(&self, s: StateLabel) -> i64 {
        match s {
            StateLabel::Starting => self.starting,
            StateLabel::Up => self.up,
            StateLabel::Stopping => self.stopping,
        }
    }
}

/// The daemon's metrics; cheap to clone (every clone counts into the same registry).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Serialises scrapes: the gauges are set from the census, then the registry encoded.
    registry: Mutex<Registry>,
    sessions: Family<StateLabels, Gauge>,
    uplink_faults: Gauge,
    starts: Family<StartLabels, Counter>,
    stops: Counter,
    start_duration: Histogram,
    dhcp_messages: Family<MessageLabels, Counter>,
    dhcp_rejected: Family<RejectLabels, Counter>,
    dhcp_renewals: Family<RenewalLabels, Counter>,
    bridge_connections: Family<BridgeLabels, Counter>,
    bridge_refused: Family<RefusedLabels, Counter>,
}

/// Upper bounds (s) of the start-duration buckets: a static start takes milliseconds, a DHCP
/// one a round trip or a few retransmissions (seconds), the default DHCP timeout is 30 s.
const START_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let inner = Inner {
            registry: Mutex::new(Registry::default()),
            sessions: Family::default(),
            uplink_faults: Gauge::default(),
            starts: Family::default(),
            stops: Counter::default(),
            start_duration: Histogram::new(START_BUCKETS),
            dhcp_messages: Family::default(),
            dhcp_rejected: Family::default(),
            dhcp_renewals: Family::default(),
            bridge_connections: Family::default(),
            bridge_refused: Family::default(),
        };
        {
            // Counters are registered without `_total`: the encoder adds it.
            let mut r = inner.registry.lock().unwrap();
            r.register("sessiond_sessions", "Sessions in the daemon's table, by state", inner.sessions.clone());
            r.register("sessiond_uplink_faults", "Sessions whose uplink is faulted (gone, down, or not restored)", inner.uplink_faults.clone());
            r.register("sessiond_session_starts", "Session start requests, by result", inner.starts.clone());
            r.register("sessiond_session_stops", "Sessions stopped", inner.stops.clone());
            r.register("sessiond_start_duration_seconds", "Time to start a session (starts that made one)", inner.start_duration.clone());
            r.register("sessiond_dhcp_messages", "DHCP messages sent and received by the sessions' clients", inner.dhcp_messages.clone());
            r.register("sessiond_dhcp_rejected", "Received DHCP packets the sessions' clients ignored, by reason", inner.dhcp_rejected.clone());
            r.register("sessiond_dhcp_renewals", "Lease renewals (RENEWING or REBINDING) ended, by result", inner.dhcp_renewals.clone());
            r.register(
                "sessiond_bridge_connections",
                "Loopback bridge connections (TCP) and flows (UDP) that arrived, by direction",
                inner.bridge_connections.clone(),
            );
            r.register("sessiond_bridge_refused", "Loopback bridge connections and flows refused, by direction and reason", inner.bridge_refused.clone());
        }
        // Every label value of the small, fixed families from the first scrape on: a series that
        // appears only once it is non-zero defeats rate() and alert rules.
        for r in StartResult::ALL {
            let _ = inner.starts.get_or_create(&StartLabels { result: *r });
        }
        for r in RenewalResult::ALL {
            let _ = inner.dhcp_renewals.get_or_create(&RenewalLabels { result: *r });
        }
        for direction in BridgeDirection::ALL {
            let _ = inner.bridge_connections.get_or_create(&BridgeLabels { direction: *direction });
            for reason in RefusedReason::ALL {
                let _ = inner.bridge_refused.get_or_create(&RefusedLabels { direction: *direction, reason: *reason });
            }
        }
        for r in RejectLabel::ALL {
            let _ = inner.dhcp_rejected.get_or_create(&RejectLabels { reason: *r });
        }
        // The messages a client exchanges (others appear when seen).
        for (t, direction) in [
            (MessageType::Discover, Direction::Sent),
            (MessageType::Request, Direction::Sent),
            (MessageType::Release, Direction::Sent),
            (MessageType::Offer, Direction::Received),
            (MessageType::Ack, Direction::Received),
            (MessageType::Nak, Direction::Received),
        ] {
            let _ = inner.dhcp_messages.get_or_create(&MessageLabels { r#type: t, direction });
        }
        Metrics { inner: Arc::new(inner) }
    }

    /// A connection or UDP flow arrived at the loopback bridge.
    pub fn bridge_connection(&self, direction: BridgeDirection) {
        self.inner.bridge_connections.get_or_create(&BridgeLabels { direction }).inc();
    }

    /// The loopback bridge refused one.
    pub fn bridge_refused(&self, direction: BridgeDirection, reason: RefusedReason) {
        self.inner.bridge_refused.get_or_create(&RefusedLabels { direction, reason }).inc();
    }

    /// A start request ended; `elapsed` counts only for a start that made a session.
    pub fn start_finished(&self, result: StartResult, elapsed: Duration) {
        self.inner.starts.get_or_create(&StartLabels { result }).inc();
        if result == StartResult::Started {
            self.inner.start_duration.observe(elapsed.as_secs_f64());
        }
    }

    pub fn session_stopped(&self) {
        self.inner.stops.inc();
    }

    pub fn dhcp_message(&self, direction: Direction, bytes: &[u8]) {
        self.inner.dhcp_messages.get_or_create(&MessageLabels { r#type: MessageType::of(bytes), direction }).inc();
    }

    pub fn dhcp_rejected(&self, reason: &RejectReason) {
        self.inner.dhcp_rejected.get_or_create(&RejectLabels { reason: reason.into() }).inc();
    }

    /// A session's DHCP client changed state (a renewal may have ended).
    pub fn dhcp_state_changed(&self, from: State, to: State) {
        if let Some(result) = RenewalResult::of(from, to) {
            self.inner.dhcp_renewals.get_or_create(&RenewalLabels { result }).inc();
        }
    }

    /// The Prometheus text format of everything, with the gauges set from `census`.
    pub fn render(&self, census: &Census) -> String {
        let registry = self.inner.registry.lock().unwrap();
        for s in StateLabel::ALL {
            self.inner.sessions.get_or_create(&StateLabels { state: *s }).set(census.in_state(*s));
        }
        self.inner.uplink_faults.set(census.faults);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

// ------------------------------------------------------------------ the HTTP responder

/// The longest request head read; a scraper's is a few hundred bytes.
pub const MAX_REQUEST: usize = 8 * 1024;
/// A client must send its request head, and take the response, within this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more connections wait for a slot (each slot is bounded by
/// `IO_TIMEOUT`, so a flood of idle connections cannot hold them for long).
pub const MAX_SCRAPES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics_listen {addr}: cannot listen: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` (and `HEAD`) with what `scrape` returns; 404 for any other path,
/// 405 for another method, 400 for what is not an HTTP request, 431 for a head longer than
/// `MAX_REQUEST`. One request per connection.
pub async fn serve(listener: TcpListener, scrape: Arc<dyn Fn() -> String + Send + Sync>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(IO_TIMEOUT * 2, answer(stream, &*scrape)).await {
                tracing::debug!(%peer, "metrics: request timed out: {e}");
            }
            drop(slot);
        });
    }
}

async fn answer(mut stream: TcpStream, scrape: &(dyn Fn() -> String + Send + Sync)) {
    let response = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => return, // said nothing in time: just close
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::TooLong)) => reply(431, "Request Header Fields Too Large", "request head too long\n", false),
        Ok(Ok(head)) => respond(&head, scrape),
    };
    let _ = tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

enum HeadError {
    Closed,
    TooLong,
}

/// Reads up to the blank line that ends an HTTP request head.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return if head.is_empty() { Err(HeadError::Closed) } else { Ok(head) };
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() > MAX_REQUEST {
            return Err(HeadError::TooLong);
        }
    }
}

/// The response to a request head (pure, for the tests).
fn respond(head: &[u8], scrape: &(dyn Fn() -> String + Send + Sync)) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).unwrap_or("").trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return reply(400, "Bad Request", "not an HTTP request\n", false);
    };
    if !version.starts_with("HTTP/1.") {
        return reply(400, "Bad Request", "not an HTTP/1.x request\n", false);
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return reply(404, "Not Found", "only /metrics is served here\n", method == "HEAD");
    }
    match method {
        "GET" => reply(200, "OK", &scrape(), false),
        "HEAD" => reply(200, "OK", &scrape(), true),
        _ => reply(405, "Method Not Allowed", "only GET and HEAD\n", false),
    }
}

fn reply(code: u16, reason: &str, body: &str, head_only: bool) -> Vec<u8> {
    let content_type = if code == 200 { prometheus_client::encoding::prometheus_text::CONTENT_TYPE } else { "text/plain; charset=utf-8" };
    let allow = if code == 405 { "Allow: GET, HEAD\r\n" } else { "" };
    let mut out =
        format!("HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n", body.len()).into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one sample line (`name{labels} value`), as the text format writes it.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.parse().unwrap()))
    }

    fn dhcp_bytes(msg_type: u8) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = 2;
        b[1] = 1;
        b[2] = 6;
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(&[53, 1, msg_type, 255]);
        b
    }

    #[test]
    fn names_types_and_labels_are_the_documented_ones() {
        let m = Metrics::new();
        m.start_finished(StartResult::Started, Duration::from_millis(30));
        m.start_finished(StartResult::Failed, Duration::from_secs(10));
        m.start_finished(StartResult::Started, Duration::from_millis(3));
        m.session_stopped();
        m.dhcp_message(Direction::Sent, &dhcp_bytes(1));
        m.dhcp_message(Direction::Received, &dhcp_bytes(2));
        m.dhcp_message(Direction::Received, &dhcp_bytes(2));
        m.dhcp_message(Direction::Received, b"garbage");
        m.dhcp_rejected(&RejectReason::XidMismatch { got: 1, expected: 2 });
        m.dhcp_rejected(&RejectReason::BadNetmask("255.0.255.0".parse().unwrap()));
        m.dhcp_state_changed(State::Bound, State::Renewing);
        m.dhcp_state_changed(State::Renewing, State::Bound);
        m.dhcp_state_changed(State::Rebinding, State::Selecting);
        m.dhcp_state_changed(State::Requesting, State::Bound); // a first lease, not a renewal
        let text = m.render(&Census { starting: 1, up: 2, stopping: 0, faults: 2 });
        println!("{text}");
        for (series, want) in [
            ("sessiond_sessions{state=\"starting\"}", 1.0),
            ("sessiond_sessions{state=\"up\"}", 2.0),
            ("sessiond_sessions{state=\"stopping\"}", 0.0),
            ("sessiond_uplink_faults", 2.0),
            ("sessiond_session_starts_total{result=\"started\"}", 2.0),
            ("sessiond_session_starts_total{result=\"already_up\"}", 0.0),
            ("sessiond_session_starts_total{result=\"failed\"}", 1.0),
            ("sessiond_session_stops_total", 1.0),
            ("sessiond_start_duration_seconds_count", 2.0),
            ("sessiond_start_duration_seconds_sum", 0.033),
            ("sessiond_start_duration_seconds_bucket{le=\"0.005\"}", 1.0),
            ("sessiond_start_duration_seconds_bucket{le=\"0.025\"}", 1.0),
            ("sessiond_start_duration_seconds_bucket{le=\"0.05\"}", 2.0),
            ("sessiond_start_duration_seconds_bucket{le=\"+Inf\"}", 2.0),
            ("sessiond_dhcp_messages_total{type=\"discover\",direction=\"sent\"}", 1.0),
            ("sessiond_dhcp_messages_total{type=\"offer\",direction=\"received\"}", 2.0),
            ("sessiond_dhcp_messages_total{type=\"invalid\",direction=\"received\"}", 1.0),
            ("sessiond_dhcp_rejected_total{reason=\"xid_mismatch\"}", 1.0),
            ("sessiond_dhcp_rejected_total{reason=\"bad_netmask\"}", 1.0),
            ("sessiond_dhcp_renewals_total{result=\"renewed\"}", 1.0),
            ("sessiond_dhcp_renewals_total{result=\"expired\"}", 1.0),
            ("sessiond_dhcp_renewals_total{result=\"nak\"}", 0.0),
        ] {
            let got = sample(&text, series).unwrap_or_else(|| panic!("no sample {series}"));
            assert!((got - want).abs() < 1e-9, "{series}: {got} != {want}");
        }
        for (name, kind) in [
            ("sessiond_sessions", "gauge"),
            ("sessiond_uplink_faults", "gauge"),
            ("sessiond_session_starts_total", "counter"),
            ("sessiond_session_stops_total", "counter"),
            ("sessiond_start_duration_seconds", "histogram"),
            ("sessiond_dhcp_messages_total", "counter"),
            ("sessiond_dhcp_rejected_total", "counter"),
            ("sessiond_dhcp_renewals_total", "counter"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name} is a {kind}");
        }
        assert!(!text.contains("# EOF"), "the Prometheus text format, not OpenMetrics");
    }

    #[test]
    fn bridge_connections_and_refusals_are_counted_by_direction_and_reason() {
        let m = Metrics::new();
        let fresh = m.render(&Census::default());
        assert_eq!(
            sample(&fresh, "sessiond_bridge_refused_total{direction=\"session_to_host\",reason=\"nothing_listening\"}"),
            Some(0.0),
            "there from the start"
        );
        m.bridge_connection(BridgeDirection::HostToSession);
        m.bridge_connection(BridgeDirection::HostToSession);
        m.bridge_connection(BridgeDirection::SessionToHost);
        m.bridge_refused(BridgeDirection::HostToSession, RefusedReason::NotAllowed);
        let text = m.render(&Census::default());
        assert!(text.contains("# TYPE sessiond_bridge_connections_total counter\n") && text.contains("# TYPE sessiond_bridge_refused_total counter\n"));
        for (series, want) in [
            ("sessiond_bridge_connections_total{direction=\"host_to_session\"}", 2.0),
            ("sessiond_bridge_connections_total{direction=\"session_to_host\"}", 1.0),
            ("sessiond_bridge_refused_total{direction=\"host_to_session\",reason=\"not_allowed\"}", 1.0),
            ("sessiond_bridge_refused_total{direction=\"host_to_session\",reason=\"nothing_listening\"}", 0.0),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series}");
        }
    }

    #[test]
    fn the_gauges_are_what_the_census_says_at_each_scrape() {
        let m = Metrics::new();
        // Before anything happened: every series an alert rule needs is there, at zero.
        let fresh = m.render(&Census::default());
        for series in [
            "sessiond_session_starts_total{result=\"failed\"}",
            "sessiond_dhcp_rejected_total{reason=\"bad_netmask\"}",
            "sessiond_dhcp_renewals_total{result=\"expired\"}",
            "sessiond_dhcp_messages_total{type=\"nak\",direction=\"received\"}",
            "sessiond_start_duration_seconds_count",
        ] {
            assert_eq!(sample(&fresh, series), Some(0.0), "{series}");
        }
        let first = m.render(&Census { up: 5, faults: 5, ..Default::default() });
        assert_eq!(sample(&first, "sessiond_sessions{state=\"up\"}"), Some(5.0));
        let second = m.render(&Census::default());
        assert_eq!(sample(&second, "sessiond_sessions{state=\"up\"}"), Some(0.0));
        assert_eq!(sample(&second, "sessiond_uplink_faults"), Some(0.0));
    }

    #[tokio::test]
    async fn the_manager_counts_its_starts_and_stops_and_its_table_is_the_census() {
        use crate::config::{Addressing, FileConfig, Settings};
        use crate::fake::FakePlatform;
        use crate::manager::Manager;
        use crate::sid::Sid;
        let d = tempfile::tempdir().unwrap();
        let settings = Settings::merge(
            FileConfig {
                uplink: Some("br-lan".into()),
                addressing: Some(Addressing::Static),
                pool: Some("10.0.0.100-10.0.0.101/24".into()),
                gateway: Some("10.0.0.1".parse().unwrap()),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap();
        let m = Manager::new(FakePlatform::new(), settings, crate::state::StateDir::open(d.path()).unwrap(), "m".into(), "h".into()).unwrap();
        let sid = |n| Sid::new(n).unwrap();
        m.start(Some(sid(1)), None).await.unwrap();
        m.start(Some(sid(1)), None).await.unwrap();
        m.start(Some(sid(2)), None).await.unwrap();
        m.start(Some(sid(3)), None).await.unwrap_err(); // the pool has two addresses
        m.stop(sid(2)).await.unwrap();
        m.stop(sid(2)).await.unwrap(); // was absent: not a stop
        let text = m.metrics().render(&m.census());
        for (series, want) in [
            ("sessiond_session_starts_total{result=\"started\"}", 2.0),
            ("sessiond_session_starts_total{result=\"already_up\"}", 1.0),
            ("sessiond_session_starts_total{result=\"failed\"}", 1.0),
            ("sessiond_session_stops_total", 1.0),
            ("sessiond_start_duration_seconds_count", 2.0),
            ("sessiond_sessions{state=\"up\"}", 1.0),
            ("sessiond_sessions{state=\"starting\"}", 0.0),
            ("sessiond_uplink_faults", 0.0),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
        }
    }

    #[test]
    fn every_reject_reason_has_its_own_label() {
        let labels: std::collections::HashSet<_> = RejectLabel::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(labels.len(), RejectLabel::ALL.len());
        assert!(labels.iter().all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        assert_eq!(RejectLabel::from(&RejectReason::ChaddrMismatch).as_str(), "chaddr_mismatch");
    }

    #[test]
    fn http_answers_only_get_metrics() {
        let scrape = || "sessiond_x 1\n".to_string();
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        let ok = text(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &scrape));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 13\r\n") && ok.ends_with("\r\n\r\nsessiond_x 1\n"), "{ok}");
        assert!(text(respond(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", &scrape)).starts_with("HTTP/1.1 200"));
        let head = text(respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &scrape));
        assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(text(respond(b"GET / HTTP/1.1\r\n\r\n", &scrape)).starts_with("HTTP/1.1 404"));
        assert!(text(respond(b"GET /metricsx HTTP/1.1\r\n\r\n", &scrape)).starts_with("HTTP/1.1 404"));
        let post = text(respond(b"POST /metrics HTTP/1.1\r\n\r\n", &scrape));
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"), "{post}");
        assert!(text(respond(b"\x16\x03\x01 hello\r\n\r\n", &scrape)).starts_with("HTTP/1.1 400"));
        assert!(text(respond(b"GET /metrics SSH-2.0\r\n\r\n", &scrape)).starts_with("HTTP/1.1 400"));
    }

    #[tokio::test]
    async fn the_server_bounds_what_it_reads_and_keeps_serving() {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, Arc::new(|| "sessiond_x 1\n".to_string())));
        async fn ask(addr: SocketAddr, bytes: &[u8]) -> String {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(bytes).await;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            out
        }
        let huge = vec![b'a'; MAX_REQUEST + 2048];
        assert!(ask(addr, &huge).await.starts_with("HTTP/1.1 431"));
        // a client that goes away without a word does not hold anything up
        drop(TcpStream::connect(addr).await.unwrap());
        let ok = ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(ok.ends_with("sessiond_x 1\n"), "{ok}");
        assert!(ask(addr, b"GET /nope HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
    }
}
