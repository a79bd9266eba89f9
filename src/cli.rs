//! Command line: `sessiond daemon|start|status|exec|stop|loopback`. Exit status 2 for usage
//! errors, 1 for refusals and failures.
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::client::{self, ClientError};
use crate::config::{self, Addressing, FileConfig, LinkKind, Settings};
use crate::proto::{ErrorKind, Request, Response};
use crate::sid::Sid;
use crate::state::SessionRecord;

#[derive(Parser, Debug)]
#[command(name = "sessiond", version, about = "A network identity (netns, uplink, address, loopback) per login session")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
pub struct SocketArg {
    /// Control socket (default: $SESSIOND_SOCKET, else /run/sessiond/sessiond.sock)
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
}

fn parse_sid(s: &str) -> Result<Sid, String> {
    s.parse::<Sid>().map_err(|e| e.to_string())
}

/// A value out of `names` (listed in `--help` and in the usage error), parsed by `FromStr`.
fn one_of<T: std::str::FromStr + Clone + Send + Sync + 'static>(names: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names).map(|s| s.parse::<T>().unwrap_or_else(|_| unreachable!("{s} is one of the possible values")))
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon (as root)
    Daemon(DaemonArgs),
    /// Start a session (or return it if running) and print it
    Start {
        /// Session id; omitted: the lowest free one
        #[arg(long, value_parser = parse_sid, allow_hyphen_values = true)]
        session: Option<Sid>,
        /// User the session belongs to (may read its status)
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Show all sessions, or one
    Status {
        #[arg(long, value_parser = parse_sid, allow_hyphen_values = true)]
        session: Option<Sid>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Run a command inside a session's namespace
    Exec {
        #[arg(long, value_parser = parse_sid, allow_hyphen_values = true)]
        session: Sid,
        /// Run as this user
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Stop a session (or all of them)
    Stop {
        #[arg(long, value_parser = parse_sid, allow_hyphen_values = true, required_unless_present = "all", conflicts_with = "all")]
        session: Option<Sid>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Print a session's loopback address (pure; needs no daemon)
    Loopback {
        #[arg(long, value_parser = parse_sid, allow_hyphen_values = true)]
        session: Sid,
    },
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Host NIC the sessions' uplinks attach to
    #[arg(long)]
    pub uplink: Option<String>,
    #[arg(long, value_parser = one_of::<LinkKind>(LinkKind::NAMES))]
    pub link: Option<LinkKind>,
    /// Bridge the host end of each veth joins (--link veth)
    #[arg(long)]
    pub bridge: Option<String>,
    #[arg(long, value_parser = one_of::<Addressing>(Addressing::NAMES))]
    pub addressing: Option<Addressing>,
    /// Static pool FIRST-LAST/PREFIX
    #[arg(long)]
    pub pool: Option<String>,
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
    /// DNS server for static sessions (repeatable; default: the gateway)
    #[arg(long)]
    pub dns: Vec<Ipv4Addr>,
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Group allowed to connect to the control socket (users read their own sessions)
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Session records and leases (default /run/sessiond/state: runtime state, gone at reboot
    /// like the sessions it describes)
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Give up a DHCP start after this many seconds (default 30)
    #[arg(long)]
    pub dhcp_timeout: Option<u64>,
    /// DHCP host name (option 12) template: {hostname} and {sid} (default {hostname}-s{sid})
    #[arg(long)]
    pub hostname_template: Option<String>,
    /// Send the DHCP host name as option 81 (client FQDN) instead of option 12
    #[arg(long)]
    pub dhcp_fqdn: bool,
    /// Config file (default /etc/sessiond/sessiond.toml, if present)
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// An error with the exit status it should give.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub error: anyhow::Error,
}

fn usage(e: impl Into<anyhow::Error>) -> Exit {
    Exit { code: 2, error: e.into() }
}
fn failed(e: impl Into<anyhow::Error>) -> Exit {
    Exit { code: 1, error: e.into() }
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(Exit { code, error }) => {
            // Print the cause chain, skipping causes already spelled out by their parent.
            let mut msg = error.to_string();
            for cause in error.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("sessiond: {msg}");
            code
        }
    }
}

fn run(cli: Cli) -> Result<(), Exit> {
    match cli.cmd {
        Cmd::Daemon(args) => run_daemon(args),
        Cmd::Loopback { session } => {
            println!("{}", crate::loopback::loopback_for(session));
            Ok(())
        }
        Cmd::Start { session, owner, json, socket } => {
            let owner_uid = owner.as_deref().map(lookup_user).transpose()?.map(|u| u.uid.as_raw());
            let sessions = expect_sessions(call(&socket, &Request::Start { session, owner_uid }, Duration::from_secs(120))?)?;
            print_sessions(&sessions, json, true);
            Ok(())
        }
        Cmd::Status { session, json, socket } => {
            let sessions = expect_sessions(call(&socket, &Request::Status { session }, Duration::from_secs(30))?)?;
            print_sessions(&sessions, json, session.is_some());
            Ok(())
        }
        Cmd::Stop { session, all, socket } => {
            let req = if all { Request::StopAll } else { Request::Stop { session: session.expect("clap requires it") } };
            match call(&socket, &req, Duration::from_secs(120))? {
                Response::Stopped { absent: true, .. } if all => println!("no sessions were running"),
                Response::Stopped { absent: true, .. } => println!("session {} was not running", session.unwrap()),
                Response::Stopped { sessions, .. } => {
                    for s in sessions {
                        println!("session {s} stopped");
                    }
                }
                other => return Err(reply_error(other)),
            }
            Ok(())
        }
        Cmd::Exec { session, user, socket, cmd } => exec(session, user, &socket, cmd),
    }
}

fn call(socket: &SocketArg, req: &Request, timeout: Duration) -> Result<Response, Exit> {
    let path = client::socket_path(socket.socket.as_deref());
    client::call(&path, req, timeout).map_err(|e| match e {
        ClientError::Connect { .. } => failed(e),
        other => failed(other),
    })
}

fn reply_error(r: Response) -> Exit {
    match r {
        Response::Error { kind: ErrorKind::BadRequest, message } => usage(anyhow::anyhow!(message)),
        Response::Error { message, .. } => failed(anyhow::anyhow!(message)),
        other => failed(anyhow::anyhow!("unexpected reply: {other:?}")),
    }
}

fn expect_sessions(r: Response) -> Result<Vec<SessionRecord>, Exit> {
    match r {
        Response::Sessions { sessions } => Ok(sessions),
        other => Err(reply_error(other)),
    }
}

fn print_sessions(sessions: &[SessionRecord], json: bool, single: bool) {
    if json {
        let text = if single && sessions.len() == 1 { serde_json::to_string_pretty(&sessions[0]) } else { serde_json::to_string_pretty(sessions) };
        println!("{}", text.expect("records serialize"));
        return;
    }
    println!("{:<8} {:<18} {:<6} {:<18} {:<18} {:<15} {:<10} {:<10} LEASE", "SESSION", "NETNS", "IFACE", "MAC", "ADDRESS", "LOOPBACK", "ADDRESSING", "STATE");
    let now = crate::lease_driver::now_ms();
    for r in sessions {
        let addr = r.address.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        let state = match &r.fault {
            Some(f) => format!("{:?} (fault: {f})", r.state).to_lowercase(),
            None => format!("{:?}", r.state).to_lowercase(),
        };
        println!(
            "{:<8} {:<18} {:<6} {:<18} {:<18} {:<15} {:<10} {:<10} {}",
            r.session,
            r.netns,
            r.interface,
            r.mac,
            addr,
            r.loopback,
            r.addressing,
            state,
            lease_summary(r, now)
        );
    }
}

/// "bound, server 10.0.0.1, renew in 290 s, expires in 590 s" (or "-" for static sessions).
fn lease_summary(r: &SessionRecord, now: u64) -> String {
    let Some(l) = &r.lease else { return "-".into() };
    let secs = |t: Option<u64>| match t {
        Some(t) => format!("{} s", t.saturating_sub(now) / 1000),
        None => "never".into(),
    };
    match &l.held {
        None => l.dhcp_state.to_string(),
        Some(h) => format!("{}, server {}, renew in {}, expires in {}", l.dhcp_state, h.server, secs(h.next_renewal), secs(h.expires)),
    }
}

/// A user by name: an unknown name is a usage error, a lookup failure a failure.
fn lookup_user(name: &str) -> Result<nix::unistd::User, Exit> {
    nix::unistd::User::from_name(name)
        .map_err(|e| failed(anyhow::anyhow!("looking up user {name}: {e}")))?
        .ok_or_else(|| usage(anyhow::anyhow!("no such user: {name}")))
}

fn exec(session: Sid, user: Option<String>, socket: &SocketArg, cmd: Vec<String>) -> Result<(), Exit> {
    use std::os::unix::process::CommandExt;
    let rec = expect_sessions(call(socket, &Request::Status { session: Some(session) }, Duration::from_secs(30))?)?
        .into_iter()
        .next()
        .ok_or_else(|| failed(anyhow::anyhow!("session {session} is not running")))?;
    let target = user.as_deref().map(lookup_user).transpose()?;
    if !nix::unistd::geteuid().is_root() {
        return Err(failed(anyhow::anyhow!("permission denied: exec into a session needs root")));
    }
    sessiond_client::enter::enter_session(&rec.netns).map_err(failed)?;
    let mut c = std::process::Command::new(&cmd[0]);
    c.args(&cmd[1..]).env("SESSIOND_SESSION", session.to_string()).env("SESSIOND_LOOPBACK", rec.loopback.to_string());
    if let Some(a) = rec.address {
        c.env("SESSIOND_ADDRESS", a.addr().to_string());
    }
    if let Some(u) = target {
        let cname = std::ffi::CString::new(u.name.clone()).map_err(|e| usage(anyhow::anyhow!("bad user name: {e}")))?;
        nix::unistd::initgroups(&cname, u.gid).map_err(|e| failed(anyhow::anyhow!("initgroups for {}: {e}", u.name)))?;
        c.uid(u.uid.as_raw()).gid(u.gid.as_raw()).env("HOME", &u.dir).env("USER", &u.name).env("LOGNAME", &u.name);
    }
    let e = c.exec();
    Err(failed(anyhow::anyhow!("cannot run {}: {e}", cmd[0])))
}

fn run_daemon(args: DaemonArgs) -> Result<(), Exit> {
    crate::logging::init(); // first: resolving the settings may already have something to say
    let (cfg_path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG), false),
    };
    let file = FileConfig::load(&cfg_path, explicit).map_err(|e| if e.is_usage() { usage(e) } else { failed(e) })?;
    let flags = FileConfig {
        uplink: args.uplink,
        link: args.link,
        bridge: args.bridge,
        addressing: args.addressing,
        pool: args.pool,
        gateway: args.gateway,
        dns: (!args.dns.is_empty()).then_some(args.dns),
        // The daemon honours $SESSIOND_SOCKET like the clients, so both sides agree.
        socket: args.socket.or_else(client::socket_from_env),
        state_dir: args.state_dir,
        socket_group: args.socket_group,
        dhcp_timeout_secs: args.dhcp_timeout,
        hostname_template: args.hostname_template,
        dhcp_fqdn: args.dhcp_fqdn.then_some(true),
    };
    let settings = Settings::merge(flags, file).map_err(usage)?;
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime").map_err(failed)?;
    rt.block_on(daemon_main(settings)).map_err(failed)
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

fn lock_state_dir(dir: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
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

async fn daemon_main(settings: Settings) -> anyhow::Result<()> {
    use crate::netlink::NetOps;
    use crate::platform::Platform;
    let platform = crate::platform::LinuxPlatform::new().context("opening netlink")?;
    match platform.host().link_is_up(&settings.uplink).await.context("checking the uplink")? {
        Some(true) => {}
        Some(false) => bail!("uplink {} is down", settings.uplink),
        None => bail!("uplink {} does not exist", settings.uplink),
    }
    if settings.link == LinkKind::Veth {
        let br = settings.bridge.as_deref().unwrap_or_default();
        if platform.host().link_index(br).await?.is_none() {
            bail!("bridge {br} does not exist");
        }
    }
    let state = crate::state::StateDir::open(&settings.state_dir).context("opening the state dir")?;
    let state_dir = settings.state_dir.clone();
    let machine_id = crate::mac::read_machine_id().context("reading the machine-id")?;
    let hostname = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into());
    let socket = settings.socket.clone();
    let mgr = Arc::new(crate::manager::Manager::new(platform, settings, state, machine_id, hostname)?);
    let group = match mgr.settings().socket_group.as_deref() {
        Some(name) => Some(nix::unistd::Group::from_name(name)?.with_context(|| format!("socket group {name} does not exist"))?.gid),
        None => None,
    };
    // Bind before recovery: a second daemon must be refused before it touches any session.
    let listener = crate::daemon::bind(&socket)?;
    // One daemon per state dir, whatever its socket: a second one would "recover" (tear down)
    // the first one's sessions. The lock lives as long as the daemon.
    let _state_lock = match lock_state_dir(&state_dir) {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&socket); // ours: the bind above just made it
            return Err(e);
        }
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
    crate::daemon::notify_ready();
    tokio::spawn(mgr.clone().watch_uplink(std::time::Duration::from_secs(1)));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = crate::daemon::serve(listener, mgr) => {}
        _ = term.recv() => tracing::info!("SIGTERM: exiting; sessions keep running"),
        _ = int.recv() => tracing::info!("SIGINT: exiting; sessions keep running"),
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
