//! The daemon's life: settings (the config file under the flags), the runtime, the bootstrap
//! (uplink check, control socket, state-dir lock, recovery), serving until SIGTERM or SIGINT,
//! and telling systemd it is ready. The socket server itself is `control`.
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::config::{ConfigError, DEFAULT_CONFIG, RawSettings, Settings};
use crate::manager::Manager;

/// Why the daemon did not run.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The settings (a usage error, unless the config file could not be read).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Runs the daemon (as root) until SIGTERM or SIGINT; sessions keep running after it.
pub fn run(flags: RawSettings, config: Option<&Path>) -> Result<(), BootError> {
    crate::logging::init(); // first: everything below may have something to say
    let settings = settings(flags, config)?;
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(live(settings))?;
    Ok(())
}

/// The config file (`--config`, else the default one if present) under the flags. The socket
/// also comes from $SESSIOND_SOCKET, as for the clients, so both sides agree.
pub fn settings(mut flags: RawSettings, config: Option<&Path>) -> Result<Settings, ConfigError> {
    let file = match config {
        Some(path) => RawSettings::load(path, true)?,
        None => RawSettings::load(Path::new(DEFAULT_CONFIG), false)?,
    };
    flags.socket = flags.socket.or_else(crate::client::socket_from_env);
    Settings::merge(flags, file)
}

async fn live(settings: Settings) -> anyhow::Result<()> {
    let platform = crate::platform::LinuxPlatform::new().context("opening netlink")?;
    let state = crate::state::StateDir::open(&settings.state_dir).context("opening the state dir")?;
    let state_dir = settings.state_dir.clone();
    let machine_id = crate::mac::read_machine_id().context("reading the machine-id")?;
    let hostname = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into());
    let socket = settings.socket.clone();
    let shim_mac = crate::shim::shim_mac(&machine_id);
    let mgr = Arc::new(Manager::new(platform, settings, state, machine_id, hostname)?);
    // The check every start makes: the uplink is up (and the bridge, for veth, exists).
    mgr.check_uplink().await?;
    let group = match mgr.settings().socket_group.as_deref() {
        Some(name) => Some(nix::unistd::Group::from_name(name)?.with_context(|| format!("socket group {name} does not exist"))?.gid),
        None => None,
    };
    // Bind before recovery: a second daemon must be refused before it touches any session.
    let listener = crate::control::bind(&socket)?;
    // One daemon per state dir, whatever its socket: a second one would "recover" (tear down)
    // the first one's sessions. The lock lives as long as the daemon.
    let _state_lock = match lock_state_dir(&state_dir) {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&socket); // ours: the bind above just made it
            return Err(e);
        }
    };
    // Before recovery too: a taken port is refused before the daemon touches any session.
    let metrics = match mgr.settings().metrics_listen {
        None => None,
        Some(addr) => match crate::metrics::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                return Err(e.into());
            }
        },
    };
    if let Some(gid) = group {
        nix::unistd::chown(&socket, None, Some(gid)).with_context(|| format!("chgrp of {}", socket.display()))?;
    }
    let report = mgr.recover().await;
    tracing::info!(adopted = report.adopted.len(), cleaned = report.cleaned.len(), errors = report.errors.len(), "recovered state");
    for e in &report.errors {
        tracing::warn!("recovery: {e}");
    }

    warn_if_neighbour_table_small();
    tracing::info!(socket = %socket.display(), "listening");
    let mut up = mgr.sessions_up();
    notify(&format!("READY=1\nSTATUS={}", status_line(*up.borrow_and_update())));
    // `systemctl status` shows the count as it changes (one datagram per change).
    tokio::spawn(async move {
        while up.changed().await.is_ok() {
            let line = status_line(*up.borrow_and_update());
            notify(&format!("STATUS={line}"));
        }
    });
    tokio::spawn(mgr.clone().watch_uplink(std::time::Duration::from_secs(1)));
    tokio::spawn(mgr.clone().reap_vanished());
    if let Some(listener) = metrics {
        serve_metrics(listener, mgr.clone());
    }
    tokio::spawn(mgr.clone().watch_conflicts());
    tokio::spawn(mgr.clone().defend_adopted());
    tokio::spawn(mgr.clone().start_ipv6_adopted());
    // The loopback bridge: without it (nft missing, say) the daemon still serves sessions.
    let (reach, host_services) = (mgr.settings().loopback_reach, mgr.settings().host_services.clone());
    // Started beside the control socket's server, not before it: a restart answers at once.
    let bridge = tokio::spawn({
        let mgr = mgr.clone();
        async move {
            crate::bridge::start(mgr, reach, host_services)
                .await
                .inspect_err(|e| tracing::error!("{e}; the host cannot reach sessions at their loopback, nor sessions the host services"))
                .ok()
                .flatten()
        }
    });
    // Host <-> session over the LAN address, for macvlan sessions (issue 12 item 8).
    let shim = crate::shim::start(mgr.clone(), shim_mac);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let running = mgr.sessions_up();
    tokio::select! {
        _ = crate::control::serve(listener, mgr.clone()) => {}
        _ = term.recv() => tracing::info!("SIGTERM: exiting; sessions keep running"),
        _ = int.recv() => tracing::info!("SIGINT: exiting; sessions keep running"),
    }
    notify(&format!("STOPPING=1\nSTATUS=exiting; {} keep running", sessions(*running.borrow())));
    if let Ok(Some(b)) = bridge.await {
        b.stop().await;
    }
    shim.stop(mgr.platform()).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Serves /metrics: the counters, and the gauges counted from the session table at each scrape.
fn serve_metrics<P: crate::platform::Platform>(listener: tokio::net::TcpListener, mgr: Arc<Manager<P>>) {
    match listener.local_addr() {
        Ok(addr) if addr.ip().is_loopback() => tracing::info!(%addr, "serving metrics at http://{addr}/metrics"),
        Ok(addr) => tracing::warn!(%addr, "serving metrics at http://{addr}/metrics to the network: no TLS, no authentication"),
        Err(_) => {}
    }
    tokio::spawn(crate::metrics::serve(listener, Arc::new(move || mgr.metrics().render(&mgr.census()))));
}

/// The kernel's one neighbour table for all namespaces has host-wide limits. The daemon's own
/// entries (each session's DHCP server and gateway) are exempt, but what users' sessions talk
/// to is not: past gc_thresh3 the kernel drops traffic with "neighbor table overflow".
fn warn_if_neighbour_table_small() {
    const SUGGESTED: u64 = 8192;
    let read = |k: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/neigh/default/{k}")).ok().and_then(|s| s.trim().parse::<u64>().ok());
    // Only the host's initial namespace has the limits (absent elsewhere: nothing to say).
    if let Some(t3) = read("gc_thresh3")
        && t3 < SUGGESTED
    {
        tracing::info!(
            gc_thresh3 = t3,
            "the kernel's neighbour table (shared by all sessions) holds at most {t3} entries; for more than a few hundred \
             sessions raise net.ipv4.neigh.default.gc_thresh1/2/3 (e.g. 2048/4096/8192, see README)"
        );
    }
}

fn lock_state_dir(dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let path = dir.join(".lock");
    // Held read-only: a file open for writing would stop an admin (or a test) remounting the
    // state dir read-only.
    if !path.exists() {
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("creating {}", path.display()))?;
    }
    let f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::Error::EWOULDBLOCK)) => bail!("another sessiond is already using the state dir {}", dir.display()),
        Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// Each client connection and each session's netlink and DHCP sockets take a descriptor;
/// the usual soft limit of 1024 is far too low for a terminal server.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
}

/// What `systemctl status` shows on its "Status:" line while the daemon serves.
fn status_line(up: usize) -> String {
    format!("{} up", sessions(up))
}

fn sessions(n: usize) -> String {
    match n {
        1 => "1 session".into(),
        n => format!("{n} sessions"),
    }
}

/// Sends `msg` (newline-separated `KEY=value` assignments: READY=1, STATUS=...) to systemd
/// (sd_notify), if it is listening (Type=notify sets $NOTIFY_SOCKET).
pub fn notify(msg: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        notify_to(&path, msg)
    }
}

/// `path`: a file name, or `@name` for an abstract socket.
fn notify_to(path: &std::ffi::OsStr, msg: &str) {
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return tracing::warn!("sd_notify: {e}"),
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), path)
    };
    match r {
        Ok(_) if msg.starts_with("READY=1") => tracing::info!("notified systemd: {}", msg.replace('\n', ", ")),
        Ok(_) => tracing::debug!("notified systemd: {}", msg.replace('\n', ", ")),
        Err(e) => tracing::warn!("sd_notify: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "Status:" line of `systemctl status sessiond`, and sd_notify's datagram, read back
    /// from a socket standing in for systemd's.
    #[test]
    fn notify_sends_the_status_line_to_notify_socket() {
        assert_eq!(status_line(0), "0 sessions up");
        assert_eq!(status_line(1), "1 session up");
        assert_eq!(status_line(12), "12 sessions up");
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), &format!("READY=1\nSTATUS={}", status_line(2)));
        let mut buf = [0u8; 256];
        let n = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=2 sessions up");
    }
}
