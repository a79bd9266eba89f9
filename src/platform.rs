//! Everything a session is built from that touches the system, behind one small trait so the
//! build/teardown order can be unit-tested with a recording fake (after youki).
use std::future::Future;
use std::path::PathBuf;

use crate::netlink::{NetError, NetOps, RtNet};

pub trait Platform: Send + Sync + 'static {
    type Net: NetOps + Clone + 'static;
    type Arp: ArpIo;
    /// Netlink in the daemon's own (host) namespace.
    fn host(&self) -> &Self::Net;
    /// Netlink inside the named session namespace.
    fn inside(&self, netns: &str) -> impl Future<Output = Result<Self::Net, NetError>> + Send;
    /// Creates the named namespace with `sysctls` set in it (a no-op if it exists).
    fn create_netns(&self, name: &str, sysctls: &[(&str, &str)]) -> impl Future<Output = Result<(), NetError>> + Send;
    fn delete_netns(&self, name: &str) -> Result<(), NetError>;
    /// The host namespace's id for the named namespace (see `NetOps::peer_netns_id`).
    fn netns_id(&self, name: &str) -> impl Future<Output = Result<i32, NetError>> + Send;
    fn netns_exists(&self, name: &str) -> bool;
    fn list_netns(&self) -> Vec<String>;
    /// Writes /etc/netns/NETNS/FILE (creating the folder).
    fn write_netns_file(&self, netns: &str, file: &str, contents: &str) -> Result<(), NetError>;
    /// Names under /etc/netns (whatever made them).
    fn list_netns_files(&self) -> Vec<String>;
    /// Removes /etc/netns/NETNS and what is in it; absent is fine.
    fn remove_netns_files(&self, netns: &str) -> Result<(), NetError>;
    /// The DHCP client socket inside the session namespace (port 68 on its interface).
    fn dhcp_socket(&self, netns: &str, mac: [u8; 6]) -> impl Future<Output = Result<tokio::net::UdpSocket, NetError>> + Send;
    /// The DHCPv6 client socket inside the session namespace ([::]:546 on its interface).
    fn dhcp6_socket(&self, netns: &str) -> impl Future<Output = Result<tokio::net::UdpSocket, NetError>> + Send;
    /// The session's ARP socket (address conflict detection), on its interface, made inside the
    /// namespace; it receives nothing until `ArpIo::watch`.
    fn arp_socket(&self, netns: &str) -> impl Future<Output = Result<Self::Arp, NetError>> + Send;
    /// An ARP socket on the host's own `uplink` (in the daemon's namespace), receiving nothing
    /// until `ArpIo::watch`, and the uplink's MAC (a new macvlan session's clone check, see
    /// `acd_driver`).
    fn uplink_arp_socket(&self, uplink: &str) -> impl Future<Output = Result<(Self::Arp, [u8; 6]), NetError>> + Send;
    /// A writer for /etc/netns files that the DHCP task can keep.
    fn file_writer(&self) -> FileWriter;
    /// What the DHCPv6 tasks use to merge their DNS, search list and address into the
    /// session's files (`files::MergedFiles`).
    fn ipv6_names_writer(&self) -> Ipv6NamesWriter;
    /// Programs mode: the DHCP client socket in the host namespace, on a session's own `link`
    /// (port 68, bound to that link before the bind, so that sessions and the host's own
    /// DHCP client do not collide).
    fn host_dhcp_socket(&self, link: &str, mac: [u8; 6]) -> impl Future<Output = Result<tokio::net::UdpSocket, NetError>> + Send;
    /// Sets /proc/sys/KEY inside the namespace.
    fn set_sysctl(&self, netns: &str, key: &str, value: &str) -> Result<(), NetError>;
    /// An open handle on the namespace, so it outlives an accidental `ip netns delete`.
    fn hold_netns(&self, name: &str) -> Option<std::fs::File>;
}

/// A session's ARP socket (RFC 5227 conflict detection): whole Ethernet frames on its
/// interface. A kernel filter lets only ARP about the watched address through, so a session
/// never wakes up for the rest of the LAN's ARP traffic.
pub trait ArpIo: Send + Sync + 'static {
    /// From now on only ARP packets about `address` are received (any ARP from it, and probes
    /// for it); `None`: nothing.
    fn watch(&self, address: Option<std::net::Ipv4Addr>) -> Result<(), NetError>;
    /// Sends one frame as it is.
    fn send(&self, frame: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Receives one frame (Ethernet header included) into `buf`; returns its length.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = std::io::Result<usize>> + Send;
}

pub type FileWriter = std::sync::Arc<dyn Fn(&str, &str, &str) -> Result<(), NetError> + Send + Sync>;
/// (netns, what IPv6 adds to its files).
pub type Ipv6NamesWriter = std::sync::Arc<dyn Fn(&str, crate::files::Ipv6Names) -> Result<(), NetError> + Send + Sync>;

/// Writes /etc/netns/NETNS/FILE atomically. The folder is made under `run_dir` (tmpfs) and
/// reached through a symlink /etc/netns/NETNS, which `ip netns exec` and bind mounts follow;
/// an existing real folder there (made by an older version) is used as it is.
pub fn write_netns_file_in(etc_netns: &std::path::Path, run_dir: &std::path::Path, netns: &str, file: &str, contents: &str) -> Result<(), NetError> {
    let link = etc_netns.join(netns);
    let meta = std::fs::symlink_metadata(&link).ok();
    let dir = match meta {
        Some(m) if m.is_dir() => link,
        Some(m) if m.file_type().is_symlink() => {
            // Ours; after a reboot its folder under /run is gone: make it again.
            let target = std::fs::read_link(&link).map_err(io_err(format!("read {}", link.display())))?;
            let target = etc_netns.join(target);
            std::fs::create_dir_all(&target).map_err(io_err(format!("create {}", target.display())))?;
            target
        }
        other => {
            if other.is_some() {
                std::fs::remove_file(&link).map_err(io_err(format!("replace {}", link.display())))?;
            }
            let target = run_dir.join(netns);
            std::fs::create_dir_all(&target).map_err(io_err(format!("create {}", target.display())))?;
            std::fs::create_dir_all(etc_netns).map_err(io_err(format!("create {}", etc_netns.display())))?;
            match std::os::unix::fs::symlink(&target, &link) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_err(format!("link {}", link.display()))(e)),
                _ => {}
            }
            target
        }
    };
    // Atomic (a reader never sees half a file) but not fsynced: these files are derived from the
    // session record and the lease, and rewritten whenever the daemon re-adopts the session.
    crate::state::write_atomic_unsynced(&dir.join(file), contents.as_bytes(), crate::state::Readers::Everyone).map_err(|e| NetError::Other(e.to_string()))
}

/// Removes /etc/netns/NETNS (symlink or folder) and the folder under `run_dir`; absent is fine.
pub fn remove_netns_files_in(etc_netns: &std::path::Path, run_dir: &std::path::Path, netns: &str) -> Result<(), NetError> {
    let mut first_err = None;
    for path in [etc_netns.join(netns), run_dir.join(netns)] {
        let r = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(_) => Ok(()),
        };
        if let Err(e) = r
            && e.kind() != std::io::ErrorKind::NotFound
        {
            first_err.get_or_insert(io_err(format!("remove {}", path.display()))(e));
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The real thing: rtnetlink, bind-mounted namespaces, files under /etc/netns.
pub struct LinuxPlatform {
    host: RtNet,
    etc_netns: PathBuf,
    run_dir: PathBuf,
    /// Every write of a session's resolv.conf and hosts goes through it (IPv4 and IPv6 parts).
    merged: std::sync::Arc<std::sync::Mutex<crate::files::MergedFiles>>,
}

impl LinuxPlatform {
    /// Must be called on the runtime, in the host namespace.
    pub fn new() -> Result<LinuxPlatform, NetError> {
        Ok(LinuxPlatform {
            host: RtNet::connect_here()?,
            etc_netns: PathBuf::from(crate::files::ETC_NETNS),
            run_dir: PathBuf::from(crate::files::RUN_NETNS_ETC),
            merged: Default::default(),
        })
    }
}

fn io_err(op: String) -> impl FnOnce(std::io::Error) -> NetError {
    move |source| NetError::Io { op, source }
}

impl Platform for LinuxPlatform {
    type Net = RtNet;
    type Arp = LinuxArp;

    async fn arp_socket(&self, netns: &str) -> Result<LinuxArp, NetError> {
        arp_socket_in(netns).await
    }

    async fn uplink_arp_socket(&self, uplink: &str) -> Result<(LinuxArp, [u8; 6]), NetError> {
        let name = uplink.to_string();
        // getifaddrs and socket(2) block briefly: not on an async worker. The daemon's own
        // threads are in the host's namespace.
        let (sock, link) = tokio::task::spawn_blocking(move || arp_socket_on(&name))
            .await
            .map_err(|e| NetError::Other(format!("ARP socket on {uplink}: {e}")))?
            .map_err(io_err(format!("ARP socket on {uplink}")))?;
        let mac = link.addr().ok_or_else(|| NetError::Other(format!("{uplink} has no Ethernet address")))?;
        let sock = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(sock)).map_err(io_err("register ARP socket".into()))?;
        Ok((LinuxArp { sock: Some(sock), link }, mac))
    }

    fn host(&self) -> &RtNet {
        &self.host
    }

    async fn inside(&self, netns: &str) -> Result<RtNet, NetError> {
        RtNet::connect_in(netns).await
    }

    async fn create_netns(&self, name: &str, sysctls: &[(&str, &str)]) -> Result<(), NetError> {
        Ok(crate::ns::create_netns(name, sysctls).await?)
    }

    fn delete_netns(&self, name: &str) -> Result<(), NetError> {
        Ok(crate::ns::delete_netns(name)?)
    }

    async fn netns_id(&self, name: &str) -> Result<i32, NetError> {
        use std::os::fd::AsRawFd;
        let ns = crate::ns::open_netns(name)?;
        self.host.peer_netns_id(ns.as_raw_fd()).await
    }

    fn netns_exists(&self, name: &str) -> bool {
        crate::ns::netns_exists(name)
    }

    fn list_netns(&self) -> Vec<String> {
        crate::ns::list_netns()
    }

    fn write_netns_file(&self, netns: &str, file: &str, contents: &str) -> Result<(), NetError> {
        let contents = self.merged.lock().unwrap().write_v4(netns, file, contents);
        write_netns_file_in(&self.etc_netns, &self.run_dir, netns, file, &contents)
    }

    async fn dhcp_socket(&self, netns: &str, mac: [u8; 6]) -> Result<tokio::net::UdpSocket, NetError> {
        dhcp_client_socket(netns, mac).await
    }

    async fn dhcp6_socket(&self, netns: &str) -> Result<tokio::net::UdpSocket, NetError> {
        dhcp6_client_socket(netns).await
    }

    async fn host_dhcp_socket(&self, link: &str, mac: [u8; 6]) -> Result<tokio::net::UdpSocket, NetError> {
        // The daemon's own threads are in the host namespace: no setns.
        let sock = dhcp_socket_on(link, mac).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => NetError::Io {
                op: format!(
                    "DHCP socket on {link}: UDP port 68 is taken in the host namespace by a socket bound to no interface \
                     without SO_REUSEADDR (the host's own DHCP client?); programs-mode DHCP needs port 68 on {link}"
                ),
                source: e,
            },
            _ => io_err(format!("DHCP socket on {link}"))(e),
        })?;
        tokio::net::UdpSocket::from_std(sock).map_err(io_err("register DHCP socket".into()))
    }

    fn set_sysctl(&self, netns: &str, key: &str, value: &str) -> Result<(), NetError> {
        let ns = crate::ns::open_netns(netns)?;
        let path = crate::ns::sysctl_path(key);
        let value = value.to_string();
        // /proc/sys/net shows the netns of the thread that opens it: open it in there.
        crate::ns::run_in_netns(&ns, move || std::fs::write(&path, value))?.map_err(io_err(format!("sysctl {key} in {netns}")))
    }

    fn hold_netns(&self, name: &str) -> Option<std::fs::File> {
        crate::ns::open_netns(name).ok()
    }

    fn file_writer(&self) -> FileWriter {
        let (etc, run, merged) = (self.etc_netns.clone(), self.run_dir.clone(), self.merged.clone());
        std::sync::Arc::new(move |netns: &str, file: &str, contents: &str| {
            let contents = merged.lock().unwrap().write_v4(netns, file, contents);
            write_netns_file_in(&etc, &run, netns, file, &contents)
        })
    }

    fn ipv6_names_writer(&self) -> Ipv6NamesWriter {
        let (etc, run, merged) = (self.etc_netns.clone(), self.run_dir.clone(), self.merged.clone());
        std::sync::Arc::new(move |netns: &str, names: crate::files::Ipv6Names| {
            let rewrites = merged.lock().unwrap().set_v6(netns, names);
            rewrites.iter().try_for_each(|(file, contents)| write_netns_file_in(&etc, &run, netns, file, contents))
        })
    }

    fn list_netns_files(&self) -> Vec<String> {
        std::fs::read_dir(&self.etc_netns).into_iter().flatten().flatten().filter_map(|e| e.file_name().into_string().ok()).collect()
    }

    fn remove_netns_files(&self, netns: &str) -> Result<(), NetError> {
        self.merged.lock().unwrap().forget(netns);
        remove_netns_files_in(&self.etc_netns, &self.run_dir, netns)
    }
}

/// Makes the DHCP client socket inside `netns`: port 68, bound to the session interface,
/// broadcast allowed, filtered to this session's replies. Created on a throwaway thread in the
/// namespace; usable from any thread.
async fn dhcp_client_socket(netns: &str, mac: [u8; 6]) -> Result<tokio::net::UdpSocket, NetError> {
    let ns = crate::ns::open_netns(netns)?;
    let sock = crate::ns::run_in_netns_async(&ns, move || dhcp_socket_on(crate::session::SESSION_IF, mac))
        .await?
        .map_err(io_err(format!("DHCP socket in {netns}")))?;
    tokio::net::UdpSocket::from_std(sock).map_err(io_err("register DHCP socket".into()))
}

/// The DHCP client socket on interface `link` of the calling thread's namespace: port 68,
/// bound to the interface before the bind (the device is part of the port's identity then:
/// one socket per session link, next to any other's), broadcast allowed, filtered to this
/// session's replies.
fn dhcp_socket_on(link: &str, mac: [u8; 6]) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::{Ipv4Addr, SocketAddrV4};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(link.as_bytes()))?;
    s.attach_filter(&dhcp_reply_filter(mac))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Makes the DHCPv6 client socket inside `netns`: UDP [::]:546 bound to the session
/// interface (servers answer to its link-local address). Made on a throwaway thread in the
/// namespace; usable from any thread.
async fn dhcp6_client_socket(netns: &str) -> Result<tokio::net::UdpSocket, NetError> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::{Ipv6Addr, SocketAddrV6};
    let ns = crate::ns::open_netns(netns)?;
    let sock = crate::ns::run_in_netns_async(&ns, move || -> std::io::Result<std::net::UdpSocket> {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(true)?;
        s.set_reuse_address(true)?;
        s.bind_device(Some(crate::session::SESSION_IF.as_bytes()))?;
        s.bind(&SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 546, 0, 0).into())?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    })
    .await?
    .map_err(io_err(format!("DHCPv6 socket in {netns}")))?;
    tokio::net::UdpSocket::from_std(sock).map_err(io_err("register DHCPv6 socket".into()))
}

/// A classic BPF socket filter that keeps only BOOTREPLYs whose chaddr is this session's MAC.
/// On a macvlan bridge every broadcast reply reaches every session; without the filter each
/// of N sessions wakes up for every other session's OFFER/ACK (N² work at scale). The
/// machine still validates everything it receives; this only sheds the certain rejects.
fn dhcp_reply_filter(mac: [u8; 6]) -> [socket2::SockFilter; 8] {
    use socket2::SockFilter;
    // For a UDP socket the filter sees the packet from the UDP header: payload at offset 8.
    const OP: u32 = 8; // BOOTP op (2 = BOOTREPLY)
    const CHADDR: u32 = 8 + 28; // client hardware address
    let hi = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let lo = u32::from(u16::from_be_bytes([mac[4], mac[5]]));
    let (ld_b, ld_h, ld_w) = (
        (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16,
        (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16,
        (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
    );
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    [
        SockFilter::new(ld_b, 0, 0, OP),
        SockFilter::new(jeq, 0, 5, 2),
        SockFilter::new(ld_w, 0, 0, CHADDR),
        SockFilter::new(jeq, 0, 3, hi),
        SockFilter::new(ld_h, 0, 0, CHADDR + 4),
        SockFilter::new(jeq, 0, 1, lo),
        SockFilter::new(ret, 0, 0, u32::MAX), // accept the whole packet
        SockFilter::new(ret, 0, 0, 0),        // drop
    ]
}

/// A packet socket for ARP on the session's interface (see `ArpIo`). Held as a tokio
/// `UdpSocket`: that is only a datagram fd for readiness and recv(2), and tokio offers no safe
/// registration for other sockets.
pub struct LinuxArp {
    /// Always `Some` until dropped.
    sock: Option<tokio::net::UdpSocket>,
    /// The session interface's link address (its index; protocol 0: taken from the frame).
    link: nix::sys::socket::LinkAddr,
}

impl LinuxArp {
    fn sock(&self) -> &tokio::net::UdpSocket {
        self.sock.as_ref().expect("present until dropped")
    }
}

impl ArpIo for LinuxArp {
    fn watch(&self, address: Option<std::net::Ipv4Addr>) -> Result<(), NetError> {
        let filter = arp_filter(self.link.ifindex() as u32, address);
        socket2::SockRef::from(self.sock()).attach_filter(&filter).map_err(io_err("ARP socket filter".into()))
    }

    async fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.sock().as_raw_fd();
        let send = || nix::sys::socket::sendto(fd, frame, &self.link, nix::sys::socket::MsgFlags::empty()).map_err(std::io::Error::from);
        self.sock().async_io(tokio::io::Interest::WRITABLE, send).await.map(|_| ())
    }

    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock().recv(buf).await
    }
}

/// Closing a packet socket waits out an RCU grace period in the kernel (`packet_release`
/// calls `synchronize_net`): ~10 ms that would block an async worker, and that stops of many
/// sessions would queue behind. The socket is closed on the blocking pool instead.
impl Drop for LinuxArp {
    fn drop(&mut self) {
        let Some(sock) = self.sock.take() else { return };
        // Without a runtime it is closed here.
        if let (Ok(std), Ok(rt)) = (sock.into_std(), tokio::runtime::Handle::try_current()) {
            drop(rt.spawn_blocking(move || drop(std)));
        }
    }
}

/// Makes the ARP socket inside `netns`: an AF_PACKET socket for ARP frames, filtered to
/// nothing until `watch`. It is not bound: binding a socket that already receives (one made
/// with a protocol) waits out an RCU grace period in the kernel (~15 ms, which 500 re-adopted
/// sessions paid one after the other); the filter keeps to the session interface instead, and
/// frames go out with sendto to its link address (from getifaddrs in the namespace).
async fn arp_socket_in(netns: &str) -> Result<LinuxArp, NetError> {
    let ns = crate::ns::open_netns(netns)?;
    let (sock, link) =
        crate::ns::run_in_netns_async(&ns, || arp_socket_on(crate::session::SESSION_IF)).await?.map_err(io_err(format!("ARP socket in {netns}")))?;
    let sock = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(sock)).map_err(io_err("register ARP socket".into()))?;
    Ok(LinuxArp { sock: Some(sock), link })
}

/// An unbound AF_PACKET socket for ARP frames in the calling thread's namespace, filtered to
/// nothing (see `arp_socket_in`), and the link address of interface `ifname` there.
fn arp_socket_on(ifname: &str) -> std::io::Result<(socket2::Socket, nix::sys::socket::LinkAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let link = nix::ifaddrs::getifaddrs()?
        .filter(|i| i.interface_name == ifname)
        .find_map(|i| i.address.and_then(|a| a.as_link_addr().copied()))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no link address for {ifname}")))?;
    let eth_p_arp = i32::from((libc::ETH_P_ARP as u16).to_be());
    let s = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(eth_p_arp)))?;
    s.attach_filter(&arp_filter(link.ifindex() as u32, None))?;
    s.set_nonblocking(true)?;
    Ok((s, link))
}

/// A classic BPF filter for the ARP socket (frames from the Ethernet header): accept ARP
/// received on interface `ifindex` whose sender IP is `address` (a reply, announcement or
/// request from it) and probes (sender IP 0) for it; drop the rest, all of it for `None`. With
/// 1000 sessions on a macvlan every ARP broadcast on the LAN reaches every session's interface:
/// this keeps them from waking up.
fn arp_filter(ifindex: u32, address: Option<std::net::Ipv4Addr>) -> Vec<socket2::SockFilter> {
    use socket2::SockFilter;
    const IFINDEX: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_IFINDEX) as u32; // ancillary: the receiving interface
    const ETHERTYPE: u32 = 12;
    const OP: u32 = 14 + 6;
    const SENDER_IP: u32 = 14 + 14;
    const TARGET_IP: u32 = 14 + 24;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let Some(addr) = address else { return vec![SockFilter::new(ret, 0, 0, 0)] };
    let addr = u32::from(addr);
    let (ld_h, ld_w) = ((libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16, (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16);
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    vec![
        SockFilter::new(ld_w, 0, 0, IFINDEX),   // 0
        SockFilter::new(jeq, 0, 10, ifindex),   // 1: another interface -> drop
        SockFilter::new(ld_h, 0, 0, ETHERTYPE), // 2
        SockFilter::new(jeq, 0, 8, 0x0806),     // 3: not ARP -> drop
        SockFilter::new(ld_w, 0, 0, SENDER_IP), // 4
        SockFilter::new(jeq, 5, 0, addr),       // 5: from the address -> accept
        SockFilter::new(jeq, 0, 5, 0),          // 6: from another address -> drop
        SockFilter::new(ld_w, 0, 0, TARGET_IP), // 7: a probe: for which address?
        SockFilter::new(jeq, 0, 3, addr),       // 8: another one -> drop
        SockFilter::new(ld_h, 0, 0, OP),        // 9
        SockFilter::new(jeq, 0, 1, 1),          // 10: a request (probe) -> accept, else drop
        SockFilter::new(ret, 0, 0, u32::MAX),   // 11: accept
        SockFilter::new(ret, 0, 0, 0),          // 12: drop
    ]
}

#[cfg(test)]
mod netns_file_tests {
    use super::*;

    #[test]
    fn files_live_under_run_behind_a_symlink_and_go_with_it() {
        let t = tempfile::tempdir().unwrap();
        let (etc, run) = (t.path().join("etc-netns"), t.path().join("run"));
        write_netns_file_in(&etc, &run, "sessiond-4", "resolv.conf", "nameserver 10.0.0.1\n").unwrap();
        write_netns_file_in(&etc, &run, "sessiond-4", "hosts", "127.0.0.1 localhost\n").unwrap();
        let link = etc.join("sessiond-4");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(link.join("resolv.conf")).unwrap(), "nameserver 10.0.0.1\n");
        assert!(run.join("sessiond-4/hosts").is_file());
        remove_netns_files_in(&etc, &run, "sessiond-4").unwrap();
        assert!(std::fs::symlink_metadata(&link).is_err() && !run.join("sessiond-4").exists());
        remove_netns_files_in(&etc, &run, "sessiond-4").unwrap(); // absent is fine
    }

    #[test]
    fn a_real_folder_is_used_and_a_dangling_link_is_mended() {
        let t = tempfile::tempdir().unwrap();
        let (etc, run) = (t.path().join("etc-netns"), t.path().join("run"));
        std::fs::create_dir_all(etc.join("sessiond-5")).unwrap();
        write_netns_file_in(&etc, &run, "sessiond-5", "hosts", "x\n").unwrap();
        assert!(etc.join("sessiond-5/hosts").is_file() && !run.join("sessiond-5").exists());
        // after a reboot: the link is there, its folder under /run is not
        write_netns_file_in(&etc, &run, "sessiond-6", "hosts", "y\n").unwrap();
        std::fs::remove_dir_all(run.join("sessiond-6")).unwrap();
        write_netns_file_in(&etc, &run, "sessiond-6", "hosts", "z\n").unwrap();
        assert_eq!(std::fs::read_to_string(etc.join("sessiond-6/hosts")).unwrap(), "z\n");
        remove_netns_files_in(&etc, &run, "sessiond-5").unwrap();
        assert!(!etc.join("sessiond-5").exists());
    }
}
