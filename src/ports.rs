//! `sessiond ports`: the sockets of each session's namespace (and the host's), read with
//! NETLINK_SOCK_DIAG from a socket opened inside that namespace (not /proc/net/*, which shows
//! only the reader's own namespace), with the process that holds each one and the ports bound
//! in more than one place marked. Blocking: the daemon runs it on a blocking thread.
//!
//! Sockets are matched to processes through the namespace's own processes: one pass over
//! /proc stats each process's /proc/PID/ns/net (one stat per process, no descriptor read) and
//! keeps those whose namespace is one being shown; only their /proc/PID/fd is read. sessiond
//! makes no cgroup per session, and the owner's processes alone would miss what root (or
//! another user, through `sessiond exec --user`) runs in the session.
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NlAddr};
use rtnetlink::packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use sessiond_client::ports::{Place, PortEntry, Proto, SockState};

#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    #[error("session {place}: {source}")]
    Ns { place: Place, source: crate::ns::NsError },
    #[error("session {place}: sock_diag {op}: {source}")]
    Io { place: Place, op: &'static str, source: std::io::Error },
    #[error("session {place}: sock_diag reply: {message}")]
    Reply { place: Place, message: String },
}

/// One socket as sock_diag reports it, before it is matched to a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub proto: Proto,
    pub local: SocketAddr,
    pub remote: Option<SocketAddr>,
    pub state: SockState,
    pub uid: u32,
    pub inode: u32,
    /// The interface the socket is bound to (SO_BINDTODEVICE); None: any.
    pub interface: Option<u32>,
    /// The id of the cgroup v2 the socket was made in (INET_DIAG_CGROUP_ID, Linux >= 5.7):
    /// the inode number of its directory.
    pub cgroup: Option<u64>,
}

/// Where one place to be listed is: its place and the namespace file (/run/netns/NAME, or
/// /proc/self/ns/net for the host); for a programs-mode session, which has no namespace,
/// how to tell its sockets among the host's.
#[derive(Clone, Debug)]
pub struct Target {
    pub place: Place,
    pub netns: PathBuf,
    pub programs: Option<ProgramsSession>,
}

/// A programs-mode session's sockets are the host namespace's that were made in its cgroup
/// or that are bound to its loopback or address; those bound there were put there by its
/// hooks (`rewritten`).
#[derive(Clone, Debug)]
pub struct ProgramsSession {
    pub cgroup: PathBuf,
    pub loopback: Ipv4Addr,
    pub address: Option<Ipv4Addr>,
}

impl ProgramsSession {
    /// Whether a socket bound at `ip` sits on one of the session's own addresses.
    fn owns_address(&self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if v4 == self.loopback || Some(v4) == self.address)
    }
}

impl Target {
    pub fn namespace(place: Place, netns: PathBuf) -> Target {
        Target { place, netns, programs: None }
    }

    pub fn programs(sid: sessiond_client::sid::Sid, cgroup: PathBuf, loopback: Ipv4Addr, address: Option<Ipv4Addr>) -> Target {
        Target { place: Place::Session(sid), netns: PathBuf::from(HOST_NETNS), programs: Some(ProgramsSession { cgroup, loopback, address }) }
    }
}

/// INET_DIAG_CGROUP_ID: the attribute netlink-packet-sock-diag does not name.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// The daemon's own namespace: the host.
pub const HOST_NETNS: &str = "/proc/self/ns/net";

/// Every TCP and UDP socket (v4 and v6) of each target, the processes of `shown` places
/// matched to them, and collisions marked among all targets. Only the sockets of `shown`
/// places are returned (all targets count for collisions: the caller may see them all).
pub fn list(targets: &[Target], shown: impl Fn(Place) -> bool, listening_only: bool, proc: &Path) -> Result<Vec<PortEntry>, PortsError> {
    let mut per_place = Vec::new();
    let mut inodes = HashMap::new();
    for t in targets.iter().filter(|t| t.programs.is_none()) {
        // A session that stopped since the caller listed it has no namespace left to read.
        if !crate::ns::is_ns_mount(&t.netns) {
            continue;
        }
        let ns = File::open(&t.netns).map_err(|source| PortsError::Io { place: t.place, op: "open namespace", source })?;
        let ns_inode = ns.metadata().map_err(|source| PortsError::Io { place: t.place, op: "stat namespace", source })?.ino();
        let sock = open_in(&ns, t.place)?;
        let sockets = dump_all(&sock, t.place)?;
        if shown(t.place) {
            inodes.insert(ns_inode, t.place);
        }
        per_place.push((t.place, sockets));
    }
    // Programs-mode sessions: their sockets are taken out of the host's (read here if the
    // host is not listed itself); their processes are the host namespace's.
    let programs: Vec<(Place, ProgramsSession, Option<u64>)> = targets
        .iter()
        .filter_map(|t| Some((t.place, t.programs.clone()?)))
        .map(|(place, p)| {
            // A session that stopped since has no cgroup: its addresses still tell.
            let id = std::fs::metadata(&p.cgroup).ok().map(|m| m.ino());
            (place, p, id)
        })
        .collect();
    if !programs.is_empty() {
        let host = match per_place.iter().position(|(place, _)| *place == Place::Host) {
            Some(i) => per_place.remove(i).1,
            None => dump_all(
                &open_in(&File::open(HOST_NETNS).map_err(|source| PortsError::Io { place: Place::Host, op: "open namespace", source })?, Place::Host)?,
                Place::Host,
            )?,
        };
        let host_listed = targets.iter().any(|t| t.place == Place::Host);
        let (claimed, rest) = claim_programs_sockets(host, &programs);
        per_place.extend(claimed);
        if host_listed {
            per_place.push((Place::Host, rest));
        }
        if programs.iter().any(|(place, ..)| shown(*place)) {
            let host_ns = std::fs::metadata(HOST_NETNS).map_err(|source| PortsError::Io { place: Place::Host, op: "stat namespace", source })?.ino();
            inodes.insert(host_ns, Place::Host);
        }
    }
    let holders = holders_by_place(proc, &inodes);
    let on_host: BTreeSet<Place> = programs.iter().map(|(place, ..)| *place).collect();
    let mut users = HashMap::new();
    let mut out = Vec::new();
    for (place, sockets) in per_place {
        let session = programs.iter().find(|(p, ..)| *p == place).map(|(_, s, _)| s);
        for s in sockets {
            // A programs-mode session's processes are the host namespace's.
            let holder = holders.get(&(if on_host.contains(&place) { Place::Host } else { place }, s.inode));
            let rewritten = session.is_some_and(|p| p.owns_address(s.local.ip()));
            let user = users.entry(s.uid).or_insert_with(|| nix::unistd::User::from_uid(s.uid.into()).ok().flatten().map(|u| u.name)).clone();
            out.push(PortEntry {
                session: place,
                proto: s.proto,
                local: s.local,
                remote: s.remote,
                state: s.state,
                pid: holder.map(|h| h.0),
                program: holder.map(|h| h.1.clone()),
                uid: s.uid,
                user,
                also_in: vec![],
                rewritten,
            });
        }
    }
    mark_collisions(&mut out);
    out.retain(|e| shown(e.session) && (!listening_only || e.is_listening()));
    out.sort_by_key(|e| (e.session, e.proto, e.local.port(), e.local));
    Ok(out)
}

/// Splits the host namespace's sockets: those of each programs-mode session (made in its
/// cgroup, `id`, or bound to its loopback or address), and the rest, the host's own.
fn claim_programs_sockets(host: Vec<DiagSocket>, programs: &[(Place, ProgramsSession, Option<u64>)]) -> (Vec<(Place, Vec<DiagSocket>)>, Vec<DiagSocket>) {
    let mut claimed: Vec<(Place, Vec<DiagSocket>)> = programs.iter().map(|(place, ..)| (*place, Vec::new())).collect();
    let mut rest = Vec::new();
    for s in host {
        let by_address = programs.iter().position(|(_, p, _)| p.owns_address(s.local.ip()));
        let by_cgroup = || programs.iter().position(|(_, _, id)| id.is_some() && *id == s.cgroup);
        match by_address.or_else(by_cgroup) {
            Some(i) => claimed[i].1.push(s),
            None => rest.push(s),
        }
    }
    (claimed, rest)
}

/// A sock_diag socket made inside `ns` (on a throwaway thread that entered it): a netlink
/// socket answers for the namespace it was made in, wherever it is used from.
pub fn open_in(ns: &File, place: Place) -> Result<Socket, PortsError> {
    crate::ns::run_in_netns(ns, || {
        let mut s = Socket::new(NETLINK_SOCK_DIAG)?;
        s.bind_auto()?;
        s.connect(&NlAddr::new(0, 0))?;
        Ok(s)
    })
    .map_err(|source| PortsError::Ns { place, source })?
    .map_err(|source| PortsError::Io { place, op: "open", source })
}

fn dump_all(sock: &Socket, place: Place) -> Result<Vec<DiagSocket>, PortsError> {
    dump(sock, place, &[Proto::Tcp, Proto::Udp], StateFlags::all())
}

/// Every socket of `protos` (v4 and v6) in one of `states`, in the namespace of `sock`.
pub fn dump(sock: &Socket, place: Place, protos: &[Proto], states: StateFlags) -> Result<Vec<DiagSocket>, PortsError> {
    let mut out = Vec::new();
    for &proto in protos {
        let protocol = match proto {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        };
        for family in [AF_INET, AF_INET6] {
            sock.send(&dump_request(family, protocol, states.clone()), 0).map_err(|source| PortsError::Io { place, op: "send", source })?;
            loop {
                let (reply, _) = sock.recv_from_full().map_err(|source| PortsError::Io { place, op: "receive", source })?;
                let done = parse_replies(&reply, proto, &mut out).map_err(|message| PortsError::Reply { place, message })?;
                if done {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// A dump request for the sockets of one family and protocol in one of `states`.
pub fn dump_request(family: u8, protocol: u8, states: StateFlags) -> Vec<u8> {
    let socket_id = if family == AF_INET6 { SocketId::new_v6() } else { SocketId::new_v4() };
    let req = InetRequest { family, protocol, extensions: ExtensionFlags::empty(), states, socket_id };
    encode_request(NLM_F_REQUEST | NLM_F_DUMP, 0, req)
}

/// One sock_diag request as the bytes to send, with these header flags and sequence number.
pub fn encode_request(flags: u16, sequence_number: u32, req: InetRequest) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence_number;
    let mut msg = NetlinkMessage::new(header, SockDiagMessage::InetRequest(req).into());
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Parses one datagram of the replies to a dump of `proto` into `out` (a reply does not say
/// its protocol); true once the dump is done. An error reply, or a message that does not
/// parse, is named.
pub fn parse_replies(mut buf: &[u8], proto: Proto, out: &mut Vec<DiagSocket>) -> Result<bool, String> {
    while !buf.is_empty() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(buf).map_err(|e| e.to_string())?;
        let len = msg.header.length as usize;
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(format!("error reply: {}", e.to_io())),
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                let h = &r.header;
                let state = SockState::from_kernel(h.state).ok_or_else(|| format!("unknown socket state {}", h.state))?;
                let id = &h.socket_id;
                let remote = SocketAddr::new(id.destination_address, id.destination_port);
                let unset = id.destination_port == 0 && id.destination_address.is_unspecified();
                out.push(DiagSocket {
                    proto,
                    local: SocketAddr::new(unmap(id.source_address), id.source_port),
                    remote: (!unset).then_some(SocketAddr::new(unmap(remote.ip()), remote.port())),
                    state,
                    uid: h.uid,
                    inode: h.inode,
                    interface: (id.interface_id != 0).then_some(id.interface_id),
                    cgroup: r.nlas.iter().find_map(cgroup_id),
                });
            }
            _ => {}
        }
        if len == 0 || len > buf.len() {
            break;
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(false)
}

/// The value of an INET_DIAG_CGROUP_ID attribute.
fn cgroup_id(nla: &netlink_packet_sock_diag::inet::nlas::Nla) -> Option<u64> {
    use rtnetlink::packet_core::Nla as _;
    let netlink_packet_sock_diag::inet::nlas::Nla::Other(o) = nla else { return None };
    if o.kind() != INET_DIAG_CGROUP_ID || o.value_len() != 8 {
        return None;
    }
    let mut v = [0u8; 8];
    o.emit_value(&mut v);
    Some(u64::from_ne_bytes(v))
}

/// `::ffff:a.b.c.d` (a v4 peer of a dual-stack socket) as the v4 address it is.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// (place, socket inode) -> (lowest pid holding it, its program), for the processes whose
/// network namespace is one of `inodes` (namespace inode -> place).
fn holders_by_place(proc: &Path, inodes: &HashMap<u64, Place>) -> HashMap<(Place, u32), (u32, String)> {
    let mut out: HashMap<(Place, u32), (u32, String)> = HashMap::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(dir) = std::fs::read_dir(proc) else { return out };
    let mut pids: Vec<u32> = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    for pid in pids {
        let base = proc.join(pid.to_string());
        // A process that has exited since the listing, or one we may not look at, is skipped.
        let Some(place) = std::fs::metadata(base.join("ns/net")).ok().and_then(|m| inodes.get(&m.ino()).copied()) else { continue };
        let Ok(fds) = std::fs::read_dir(base.join("fd")) else { continue };
        let program = std::fs::read_to_string(base.join("comm")).map(|c| c.trim_end().to_string()).unwrap_or_default();
        for fd in fds.flatten() {
            if let Some(inode) = std::fs::read_link(fd.path()).ok().and_then(|t| socket_inode(&t)) {
                out.entry((place, inode)).or_insert_with(|| (pid, program.clone()));
            }
        }
    }
    out
}

fn is_session_loopback(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if sessiond_client::loopback::sid_for_loopback(v4).is_some())
}

/// The inode of a descriptor link `socket:[12345]`.
pub fn socket_inode(target: &Path) -> Option<u32> {
    target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Fills `also_in` of each listening socket with the other places that listen on (TCP) or
/// bind unconnected (UDP) the same protocol and port. A host socket on a session's loopback
/// is the loopback bridge forwarding to that session, not a collision.
pub fn mark_collisions(entries: &mut [PortEntry]) {
    let counts = |e: &PortEntry| e.is_listening() && !(e.session == Place::Host && is_session_loopback(e.local.ip()));
    let mut bound: HashMap<(Proto, u16), BTreeSet<Place>> = HashMap::new();
    for e in entries.iter().filter(|e| counts(e)) {
        bound.entry((e.proto, e.local.port())).or_default().insert(e.session);
    }
    for e in entries.iter_mut().filter(|e| counts(e)) {
        let places = &bound[&(e.proto, e.local.port())];
        e.also_in = places.iter().copied().filter(|p| *p != e.session).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_sock_diag::inet::{InetResponse, InetResponseHeader, nlas::Nla};
    use rtnetlink::packet_core::DoneMessage;
    use sessiond_client::sid::Sid;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn response(state: u8, src: SocketAddr, dst: SocketAddr, uid: u32, inode: u32) -> Vec<u8> {
        let family = if src.is_ipv4() { AF_INET } else { AF_INET6 };
        let socket_id = SocketId {
            source_port: src.port(),
            destination_port: dst.port(),
            source_address: src.ip(),
            destination_address: dst.ip(),
            interface_id: 0,
            cookie: [0; 8],
        };
        let header = InetResponseHeader { family, state, timer: None, socket_id, recv_queue: 0, send_queue: 0, uid, inode };
        let r = InetResponse { header, nlas: [Nla::Mark(0)].into_iter().collect() };
        let mut h = NetlinkHeader::default();
        h.message_type = netlink_packet_sock_diag::SOCK_DIAG_BY_FAMILY;
        let mut msg = NetlinkMessage::new(h, SockDiagMessage::InetResponse(Box::new(r)).into());
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    fn done() -> Vec<u8> {
        let mut msg = NetlinkMessage::<SockDiagMessage>::new(NetlinkHeader::default(), NetlinkPayload::Done(DoneMessage::default()));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_dump_datagram_parses_into_sockets_until_done() {
        let mut dgram = response(10, sa("127.0.0.1:8080"), sa("0.0.0.0:0"), 1000, 4242);
        dgram.extend(response(1, sa("[::ffff:127.0.0.1]:8080"), sa("[::ffff:127.0.0.1]:51000"), 0, 4243));
        let mut out = vec![];
        assert_eq!(parse_replies(&dgram, Proto::Tcp, &mut out), Ok(false));
        assert_eq!(parse_replies(&response(7, sa("[::]:5353"), sa("[::]:0"), 1001, 4244), Proto::Udp, &mut out), Ok(false));
        assert_eq!(
            out,
            vec![
                DiagSocket {
                    proto: Proto::Tcp,
                    local: sa("127.0.0.1:8080"),
                    remote: None,
                    state: SockState::Listen,
                    uid: 1000,
                    inode: 4242,
                    interface: None,
                    cgroup: None
                },
                DiagSocket {
                    proto: Proto::Tcp,
                    local: sa("127.0.0.1:8080"),
                    remote: Some(sa("127.0.0.1:51000")),
                    state: SockState::Established,
                    uid: 0,
                    inode: 4243,
                    interface: None,
                    cgroup: None
                },
                DiagSocket {
                    proto: Proto::Udp,
                    local: SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 5353),
                    remote: None,
                    state: SockState::Unconnected,
                    uid: 1001,
                    inode: 4244,
                    interface: None,
                    cgroup: None
                },
            ]
        );
        let mut out = vec![];
        let mut last = response(10, SocketAddr::new(Ipv4Addr::new(127, 0, 0, 4).into(), 22), sa("0.0.0.0:0"), 0, 1);
        last.extend(done());
        assert_eq!(parse_replies(&last, Proto::Tcp, &mut out), Ok(true));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn the_cgroup_a_socket_was_made_in_is_read() {
        let id: u64 = 0x1_0000_0042;
        let mut with = response(10, sa("127.0.0.3:8080"), sa("0.0.0.0:0"), 1000, 7);
        // The same reply with the kernel's INET_DIAG_CGROUP_ID attribute (and an unrelated one).
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&with).unwrap();
        let NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(mut r)) = msg.payload else { panic!() };
        r.nlas.push(Nla::Other(rtnetlink::packet_core::DefaultNla::new(INET_DIAG_CGROUP_ID, id.to_ne_bytes().to_vec())));
        let mut m = NetlinkMessage::new(msg.header, SockDiagMessage::InetResponse(r).into());
        m.finalize();
        with = vec![0; m.buffer_len()];
        m.serialize(&mut with);
        let mut out = vec![];
        parse_replies(&with, Proto::Tcp, &mut out).unwrap();
        parse_replies(&response(10, sa("127.0.0.1:22"), sa("0.0.0.0:0"), 0, 8), Proto::Tcp, &mut out).unwrap();
        assert_eq!(out.iter().map(|s| s.cgroup).collect::<Vec<_>>(), [Some(id), None]);
    }

    fn diag(local: &str, cgroup: u64) -> DiagSocket {
        DiagSocket { proto: Proto::Tcp, local: sa(local), remote: None, state: SockState::Listen, uid: 0, inode: 1, interface: None, cgroup: Some(cgroup) }
    }

    #[test]
    fn programs_mode_sessions_get_the_host_sockets_of_their_cgroup_and_addresses() {
        let s = |n| Place::Session(Sid::new(n).unwrap());
        let session = |lb: [u8; 4], addr: Option<[u8; 4]>| ProgramsSession {
            cgroup: PathBuf::from("/cg"),
            loopback: Ipv4Addr::from(lb),
            address: addr.map(Ipv4Addr::from),
        };
        let programs = [(s(2), session([127, 0, 0, 3], Some([10, 0, 0, 57])), Some(77)), (s(3), session([127, 0, 0, 4], None), Some(78))];
        let host = vec![
            diag("127.0.0.3:8080", 77), // session 2's listed program, rewritten from 127.0.0.1
            diag("10.0.0.57:9000", 77), // ... and from 0.0.0.0
            diag("127.0.0.1:5000", 77), // an unlisted program of session 2: its cgroup's, not rewritten
            diag("127.0.0.4:8080", 1),  // session 3's loopback, from a process that left its cgroup
            diag("0.0.0.0:22", 1),      // the host's own
            diag("127.0.0.2:8080", 1),  // another session's loopback (the bridge's host end): the host's
        ];
        let (claimed, rest) = claim_programs_sockets(host, &programs);
        let locals = |v: &[DiagSocket]| v.iter().map(|d| d.local.to_string()).collect::<Vec<_>>();
        assert_eq!(claimed[0].0, s(2));
        assert_eq!(locals(&claimed[0].1), ["127.0.0.3:8080", "10.0.0.57:9000", "127.0.0.1:5000"]);
        assert_eq!(locals(&claimed[1].1), ["127.0.0.4:8080"]);
        assert_eq!(locals(&rest), ["0.0.0.0:22", "127.0.0.2:8080"]);
        let rewritten: Vec<bool> = claimed[0].1.iter().map(|d| programs[0].1.owns_address(d.local.ip())).collect();
        assert_eq!(rewritten, [true, true, false]);
    }

    #[test]
    fn a_reply_that_is_not_a_socket_is_named() {
        let mut out = vec![];
        assert!(parse_replies(&[1, 2, 3], Proto::Tcp, &mut out).is_err());
        let bad_state = response(99, sa("127.0.0.1:1"), sa("0.0.0.0:0"), 0, 1);
        assert_eq!(parse_replies(&bad_state, Proto::Tcp, &mut out), Err("unknown socket state 99".into()));
        assert!(out.is_empty());
    }

    #[test]
    fn dump_requests_ask_for_every_state_of_one_family() {
        let req = dump_request(AF_INET6, IPPROTO_UDP, StateFlags::all());
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&req);
        // A request does not parse as a response: check the raw inet_diag_req_v2 fields.
        assert!(msg.is_err() || matches!(msg.unwrap().payload, NetlinkPayload::InnerMessage(_)));
        assert_eq!(req[16], AF_INET6);
        assert_eq!(req[17], IPPROTO_UDP);
        assert_eq!(u32::from_ne_bytes(req[20..24].try_into().unwrap()), StateFlags::all().bits());
        assert_eq!(u16::from_ne_bytes(req[6..8].try_into().unwrap()), NLM_F_REQUEST | NLM_F_DUMP);
    }

    #[test]
    fn descriptor_links_name_socket_inodes() {
        assert_eq!(socket_inode(Path::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(Path::new("pipe:[12345]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
        assert_eq!(socket_inode(Path::new("socket:[x]")), None);
    }

    fn entry(place: Place, proto: Proto, local: &str, state: SockState) -> PortEntry {
        PortEntry {
            session: place,
            proto,
            local: sa(local),
            remote: None,
            state,
            pid: None,
            program: None,
            uid: 0,
            user: None,
            also_in: vec![],
            rewritten: false,
        }
    }

    #[test]
    fn ports_bound_in_more_than_one_place_are_marked() {
        let s = |n| Place::Session(Sid::new(n).unwrap());
        let mut e = vec![
            entry(s(1), Proto::Tcp, "127.0.0.1:8080", SockState::Listen),
            entry(s(2), Proto::Tcp, "[::]:8080", SockState::Listen),
            entry(Place::Host, Proto::Tcp, "0.0.0.0:8080", SockState::Listen),
            // Same port, other protocol: no collision with the TCP ones.
            entry(s(3), Proto::Udp, "127.0.0.1:8080", SockState::Unconnected),
            // Twice in one session (v4 and v6): not a collision by itself.
            entry(s(3), Proto::Tcp, "127.0.0.1:9000", SockState::Listen),
            entry(s(3), Proto::Tcp, "[::1]:9000", SockState::Listen),
            // A connection is not a binding.
            entry(s(4), Proto::Tcp, "127.0.0.1:9000", SockState::Established),
            entry(s(4), Proto::Udp, "0.0.0.0:8080", SockState::Unconnected),
            // the loopback bridge's host end for session 1: not a collision
            entry(Place::Host, Proto::Tcp, "127.0.0.2:8080", SockState::Listen),
        ];
        mark_collisions(&mut e);
        let also: Vec<Vec<Place>> = e.iter().map(|e| e.also_in.clone()).collect();
        assert_eq!(also, vec![vec![Place::Host, s(2)], vec![Place::Host, s(1)], vec![s(1), s(2)], vec![s(4)], vec![], vec![], vec![], vec![s(3)], vec![]]);
    }
}
