//! Everything a session is built from that touches the system, behind one small trait so the
//! build/teardown order can be unit-tested with a recording fake (after youki).
use std::future::Future;
use std::path::PathBuf;

use crate::netlink::{NetError, NetOps, RtNet};

pub trait Platform: Send + Sync + 'static {
    type Net: NetOps + Clone + 'static;
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
    /// Removes /etc/netns/NETNS and what is in it; absent is fine.
    fn remove_netns_files(&self, netns: &str) -> Result<(), NetError>;
    /// The DHCP client socket inside the session namespace (port 68 on its interface).
    fn dhcp_socket(&self, netns: &str, mac: [u8; 6]) -> impl Future<Output = Result<tokio::net::UdpSocket, NetError>> + Send;
    /// A writer for /etc/netns files that the DHCP task can keep.
    fn file_writer(&self) -> FileWriter;
    /// Sets /proc/sys/KEY inside the namespace.
    fn set_sysctl(&self, netns: &str, key: &str, value: &str) -> Result<(), NetError>;
    /// An open handle on the namespace, so it outlives an accidental `ip netns delete`.
    fn hold_netns(&self, name: &str) -> Option<std::fs::File>;
}

pub type FileWriter = std::sync::Arc<dyn Fn(&str, &str, &str) -> Result<(), NetError> + Send + Sync>;

/// Writes /etc/netns/NETNS/FILE atomically under `etc_netns`.
pub fn write_netns_file_in(etc_netns: &std::path::Path, netns: &str, file: &str, contents: &str) -> Result<(), NetError> {
    let dir = etc_netns.join(netns);
    std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    // Atomic (a reader never sees half a file) but not fsynced: these files are derived from the
    // session record and the lease, and rewritten whenever the daemon re-adopts the session.
    crate::state::write_atomic_unsynced(&dir.join(file), contents.as_bytes()).map_err(|e| NetError::Other(e.to_string()))
}

/// The real thing: rtnetlink, bind-mounted namespaces, files under /etc/netns.
pub struct LinuxPlatform {
    host: RtNet,
    etc_netns: PathBuf,
}

impl LinuxPlatform {
    /// Must be called on the runtime, in the host namespace.
    pub fn new() -> Result<LinuxPlatform, NetError> {
        Ok(LinuxPlatform { host: RtNet::connect_here()?, etc_netns: PathBuf::from(crate::files::ETC_NETNS) })
    }
}

fn io_err(op: String) -> impl FnOnce(std::io::Error) -> NetError {
    move |source| NetError::Io { op, source }
}

impl Platform for LinuxPlatform {
    type Net = RtNet;

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
        write_netns_file_in(&self.etc_netns, netns, file, contents)
    }

    async fn dhcp_socket(&self, netns: &str, mac: [u8; 6]) -> Result<tokio::net::UdpSocket, NetError> {
        crate::lease_driver::client_socket(netns, mac).await
    }

    fn set_sysctl(&self, netns: &str, key: &str, value: &str) -> Result<(), NetError> {
        let ns = crate::ns::open_netns(netns)?;
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        // /proc/sys/net shows the netns of the thread that opens it: open it in there.
        crate::ns::run_in_netns(&ns, move || std::fs::write(&path, value))?.map_err(io_err(format!("sysctl {key} in {netns}")))
    }

    fn hold_netns(&self, name: &str) -> Option<std::fs::File> {
        crate::ns::open_netns(name).ok()
    }

    fn file_writer(&self) -> FileWriter {
        let dir = self.etc_netns.clone();
        std::sync::Arc::new(move |netns: &str, file: &str, contents: &str| write_netns_file_in(&dir, netns, file, contents))
    }

    fn remove_netns_files(&self, netns: &str) -> Result<(), NetError> {
        let dir = self.etc_netns.join(netns);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(format!("remove {}", dir.display()))(e)),
            _ => Ok(()),
        }
    }
}
