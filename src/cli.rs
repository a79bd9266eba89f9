//! Command line: `sessiond daemon|start|status|exec|stop|loopback`. Exit status 2 for usage
//! errors, 1 for refusals and failures.
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{self, ClientError};
use crate::config::RawSettings;
use crate::daemon::BootError;
use crate::proto::{ErrorKind, Request, Response};
use crate::sid::Sid;
use crate::state::SessionRecord;
use sessiond_client::ports::{Place, PortEntry, SessionBridge};

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

fn parse_place(s: &str) -> Result<Place, String> {
    s.parse::<Place>().map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon (as root)
    Daemon(Box<DaemonArgs>), // boxed: the daemon's settings dwarf the other commands' arguments
    /// Start a session (or return it if running) and print it
    Start {
        /// Session id; omitted: the lowest free one
        #[arg(long, value_parser = parse_sid, allow_hyphen_values = true)]
        session: Option<Sid>,
        /// User the session belongs to (may read its status)
        #[arg(long)]
        owner: Option<String>,
        /// Print the session record as JSON instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Show all sessions, or one
    Status {
        /// Only this session
        #[arg(long, value_parser = parse_sid, allow_hyphen_values = true)]
        session: Option<Sid>,
        /// Print JSON instead of a table (a list of records; one record with --session; with
        /// --watch, the daemon's event lines as they come)
        #[arg(long)]
        json: bool,
        /// Keep watching: a live table that refreshes as sessions change, and each change as it
        /// happens (until interrupted)
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Run a command inside a session's namespace
    Exec {
        /// The session to enter
        #[arg(long, value_parser = parse_sid, allow_hyphen_values = true)]
        session: Sid,
        /// Run as this user, as a login would: the user's groups, a login environment (HOME,
        /// USER, LOGNAME, SHELL, PATH, TERM, SESSIOND_*), the home directory, and, when stdin is
        /// a terminal, a new pty of its own
        #[arg(long)]
        user: Option<String>,
        /// With --user: also keep these variables of the caller's environment (comma-separated)
        #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "user")]
        preserve_env: Vec<String>,
        #[command(flatten)]
        socket: SocketArg,
        /// The command to run and its arguments (after --)
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Stop a session (or all of them)
    Stop {
        /// The session to stop
        #[arg(long, value_parser = parse_sid, allow_hyphen_values = true, required_unless_present = "all", conflicts_with = "all")]
        session: Option<Sid>,
        /// Stop every session
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// (internal: the last step of `exec --user`, run by it) become the user and run the command
    #[command(name = crate::exec::AS_USER_CMD, hide = true)]
    ExecAsUser(crate::exec::AsUser),
    /// List the sockets of each session (and of the host, session 0, for root): protocol,
    /// addresses, state, process and user; ports bound in more than one session are marked
    Ports {
        /// Only this session (0: the host)
        #[arg(long, value_parser = parse_place, allow_hyphen_values = true)]
        session: Option<Place>,
        /// Only listening TCP sockets and bound, unconnected UDP sockets
        #[arg(long)]
        listening: bool,
        /// Print JSON (a list of sockets) instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Print a session's loopback address (pure; needs no daemon)
    Loopback {
        /// Session id
        #[arg(long, value_parser = parse_sid, allow_hyphen_values = true)]
        session: Sid,
    },
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub settings: RawSettings,
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
        Ok(code) => code,
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

/// The exit status to give (0, or what `exec` ran gave), or an error.
fn run(cli: Cli) -> Result<i32, Exit> {
    let done = |r: Result<(), Exit>| r.map(|()| 0);
    done(match cli.cmd {
        Cmd::Daemon(args) => crate::daemon::run(args.settings, args.config.as_deref()).map_err(|e| match e {
            BootError::Config(e) if e.is_usage() => usage(e),
            BootError::Config(e) => failed(e),
            BootError::Failed(e) => failed(e),
        }),
        Cmd::Loopback { session } => {
            println!("{}", crate::loopback::loopback_for(session));
            Ok(())
        }
        Cmd::Start { session, owner, json, socket } => {
            let owner_uid = owner.as_deref().map(lookup_user).transpose()?.map(|u| u.uid.as_raw());
            // As long as the daemon's longest start: one that gave up earlier would be rolled back.
            let wait = Duration::from_secs(crate::config::MAX_DHCP_TIMEOUT_SECS + sessiond_client::START_MARGIN_SECS);
            let sessions = expect_sessions(call(&socket, &Request::Start { session, owner_uid, hold: false, mode: None }, wait)?)?;
            print_sessions(&sessions, json, true);
            Ok(())
        }
        Cmd::Status { session, json, watch: true, socket } => {
            let path = client::socket_path(socket.socket.as_deref());
            crate::live::run(&path, session, json).map_err(|e| match e {
                ClientError::Refused(m) => failed(anyhow::anyhow!(m)),
                other => failed(other),
            })
        }
        Cmd::Status { session, json, watch: false, socket } => {
            let sessions = expect_sessions(call(&socket, &Request::Status { session }, Duration::from_secs(30))?)?;
            // Each session's loopback bridge (the daemon reads the sessions' listeners for it);
            // without an answer, status shows the sessions alone.
            let bridges = match call(&socket, &Request::Bridge { session }, Duration::from_secs(30)) {
                Ok(Response::Bridge { sessions }) => sessions,
                _ => vec![],
            };
            print_status(&sessions, &bridges, json, session.is_some());
            Ok(())
        }
        Cmd::Ports { session, listening, json, socket } => match call(&socket, &Request::Ports { session, listening }, Duration::from_secs(30))? {
            Response::Ports { ports } if json => {
                println!("{}", serde_json::to_string_pretty(&ports).expect("sockets serialize"));
                Ok(())
            }
            Response::Ports { ports } => {
                print!("{}", ports_table(&ports));
                Ok(())
            }
            other => Err(reply_error(other)),
        },
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
        Cmd::Exec { session, user, preserve_env, socket, cmd } => return exec(session, user, &preserve_env, &socket, &cmd),
        Cmd::ExecAsUser(a) => {
            // Only returns on failure; as a shell: 127 for a command not found, else 126.
            let e = crate::exec::become_user(&a);
            let not_found = matches!(&e, crate::exec::ExecError::Run { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
            return Err(Exit { code: if not_found { 127 } else { 126 }, error: e.into() });
        }
    })
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
    print!("{}", table(sessions));
}

/// `status`: the sessions, each with its loopback bridge (JSON key `bridge`; in text, a line
/// per session under the table).
fn print_status(sessions: &[SessionRecord], bridges: &[SessionBridge], json: bool, single: bool) {
    let of = |sid| bridges.iter().find(|b| b.session == sid);
    if !json {
        print!("{}", table(sessions));
        print!("{}", bridge_lines(sessions, bridges));
        return;
    }
    let values: Vec<serde_json::Value> = sessions
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).expect("records serialize");
            if let (Some(obj), Some(b)) = (v.as_object_mut(), of(r.session)) {
                obj.insert("bridge".into(), serde_json::json!({ "from_host": b.from_host, "host_services": b.host_services }));
            }
            v
        })
        .collect();
    let text = if single && values.len() == 1 { serde_json::to_string_pretty(&values[0]) } else { serde_json::to_string_pretty(&values) };
    println!("{}", text.expect("records serialize"));
}

/// One line per session with a bridge to show: what the host reaches at its loopback (with the
/// program), and the host services it reaches at its 127.0.0.1.
pub(crate) fn bridge_lines(sessions: &[SessionRecord], bridges: &[SessionBridge]) -> String {
    let mut out = String::new();
    for r in sessions {
        let Some(b) = bridges.iter().find(|b| b.session == r.session) else { continue };
        if b.from_host.is_empty() && b.host_services.is_empty() {
            continue;
        }
        let from: Vec<String> = b.from_host.iter().map(|f| format!("{}:{} ({})", f.proto, f.port, f.program.as_deref().unwrap_or("-"))).collect();
        let to: Vec<String> = b.host_services.iter().map(|h| h.to_string()).collect();
        let none = || "-".to_string();
        out += &format!(
            "bridge {}: the host reaches {} at {}; it reaches the host's {}\n",
            r.session,
            if from.is_empty() { none() } else { from.join(", ") },
            r.loopback,
            if to.is_empty() { none() } else { to.join(", ") }
        );
    }
    out
}

/// The sockets as `ports` shows them, one line each under a header; COLLIDES names the other
/// sessions that bind the same port.
pub(crate) fn ports_table(ports: &[PortEntry]) -> String {
    use std::fmt::Write;
    let dash = || "-".to_string();
    // A REWRITTEN column only where a programs-mode session's hooks rewrote some socket.
    let rewritten = ports.iter().any(|p| p.rewritten);
    let mut rows = vec![["SESSION", "PROTO", "LOCAL", "REMOTE", "STATE", "PID", "PROGRAM", "USER", "COLLIDES"].map(String::from).to_vec()];
    if rewritten {
        rows[0].push("REWRITTEN".into());
    }
    for p in ports {
        let also: Vec<String> = p.also_in.iter().map(|s| s.to_string()).collect();
        let mut row = vec![
            p.session.to_string(),
            p.proto.to_string(),
            p.local.to_string(),
            p.remote.map_or_else(|| "*".to_string(), |r| r.to_string()),
            p.state.as_str().to_string(),
            p.pid.map_or_else(dash, |pid| pid.to_string()),
            p.program.clone().unwrap_or_else(dash),
            p.user.clone().unwrap_or_else(|| p.uid.to_string()),
            if also.is_empty() { dash() } else { format!("with {}", also.join(",")) },
        ];
        if rewritten {
            row.push(if p.rewritten { "yes".into() } else { dash() });
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// The sessions as `status` shows them, one line each under a header.
pub(crate) fn table(sessions: &[SessionRecord]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<18} {:<6} {:<18} {:<18} {:<15} {:<10} {:<10} {:<16} LEASE",
        "SESSION", "NETNS", "IFACE", "MAC", "ADDRESS", "LOOPBACK", "ADDRESSING", "STATE", "HOLDERS"
    );
    let now = crate::lease_driver::now_ms();
    for r in sessions {
        let addr = r.address.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        let state = match &r.fault {
            Some(f) => format!("{:?} (fault: {f})", r.state).to_lowercase(),
            None => format!("{:?}", r.state).to_lowercase(),
        };
        let _ = writeln!(
            out,
            "{:<8} {:<18} {:<6} {:<18} {:<18} {:<15} {:<10} {:<10} {:<16} {}",
            r.session,
            if r.netns.is_empty() { "-" } else { r.netns.as_str() },
            r.interface,
            r.mac,
            addr,
            r.loopback,
            r.addressing,
            state,
            holders_summary(r, now),
            match (&r.programs, &r.lease) {
                // A programs-mode session with a leased address: both.
                (Some(p), Some(_)) => format!("{}; {}", lease_summary(r, now), programs_summary(p)),
                (Some(p), None) => programs_summary(p),
                (None, _) => lease_summary(r, now),
            }
        );
        // IPv6 on lines of its own under the session's: "ipv6 slaac", then one per address.
        if let Some(state) = r.ipv6 {
            let dhcp6 = r.dhcp6_state.map(|s| format!(", DHCPv6 {s}")).unwrap_or_default();
            let _ = writeln!(out, "{:<8} ipv6 {state}{dhcp6}", "");
            for a in &r.addresses6_detail {
                let _ = writeln!(out, "{:<8}   {}", "", crate::ipv6::describe(a));
            }
        }
    }
    out
}

/// The pids of the logins holding the session ("pid 812,907"), "none for 12 s" once they are
/// all gone (the daemon stops it at the end of its grace period), "-" for a session that no
/// login holds (it lives until `stop`).
fn holders_summary(r: &SessionRecord, now: u64) -> String {
    let Some(h) = &r.holding else { return "-".into() };
    match h.unheld_since {
        Some(t) if h.holders.is_empty() => format!("none for {} s", now.saturating_sub(t) / 1000),
        _ => format!("pid {}", h.holders.iter().map(|x| x.pid.to_string()).collect::<Vec<_>>().join(",")),
    }
}

/// A programs-mode session: "programs mode (python3): 6 hooks on CGROUP, 12 addresses
/// rewritten" ("on CGROUP (logind's scope)" for a login's session-N.scope).
fn programs_summary(p: &sessiond_client::record::ProgramsInfo) -> String {
    let listed = if p.programs.is_empty() { "every program".to_string() } else { p.programs.join(",") };
    let whose = if p.cgroup_owner == sessiond_client::CgroupOwner::Logind { " (logind's scope)" } else { "" };
    format!("programs mode ({listed}): {} hooks on {}{whose}, {} addresses rewritten", p.attached.len(), p.cgroup, p.rewritten)
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

fn exec(session: Sid, user: Option<String>, preserve_env: &[String], socket: &SocketArg, cmd: &[String]) -> Result<i32, Exit> {
    let rec = expect_sessions(call(socket, &Request::Status { session: Some(session) }, Duration::from_secs(30))?)?
        .into_iter()
        .next()
        .ok_or_else(|| failed(anyhow::anyhow!("session {session} is not running")))?;
    let target = user.as_deref().map(lookup_user).transpose()?;
    if !nix::unistd::geteuid().is_root() {
        return Err(failed(anyhow::anyhow!("permission denied: exec into a session needs root")));
    }
    crate::exec::run(&rec, target.map(Into::into), preserve_env, cmd).map_err(|e| if e.is_usage() { usage(e) } else { failed(e) })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use clap::CommandFactory;

    use super::*;
    use crate::config::{Addressing, LinkKind};

    #[test]
    fn ports_shows_a_rewritten_column_only_when_some_socket_was_rewritten() {
        use sessiond_client::ports::{Place, Proto, SockState};
        let entry = |local: &str, rewritten| PortEntry {
            session: Place::Session(crate::sid::Sid::new(2).unwrap()),
            proto: Proto::Tcp,
            local: local.parse().unwrap(),
            remote: None,
            state: SockState::Listen,
            pid: Some(10),
            program: Some("python3".into()),
            uid: 0,
            user: Some("root".into()),
            also_in: vec![],
            rewritten,
        };
        let t = ports_table(&[entry("127.0.0.3:8080", true), entry("127.0.0.1:5000", false)]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("COLLIDES  REWRITTEN") && lines[1].ends_with("yes") && lines[2].ends_with("-"), "{t}");
        assert!(!ports_table(&[entry("127.0.0.1:5000", false)]).contains("REWRITTEN"));
    }

    fn daemon(args: &[&str]) -> Result<DaemonArgs, clap::Error> {
        let argv = ["sessiond", "daemon"].iter().chain(args);
        match Cli::try_parse_from(argv)?.cmd {
            Cmd::Daemon(a) => Ok(*a),
            other => panic!("{other:?}"),
        }
    }

    /// Every argument of every command, as `--help` shows them (built: the global `--socket`
    /// and the automatic `--help`/`--version` are in place), has a help line; so do the
    /// commands. The man page and the completions are generated from the same tree.
    fn missing_help(cmd: &clap::Command) -> Vec<String> {
        let name = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_string();
        let mut missing: Vec<String> =
            cmd.get_arguments().filter(|a| !a.is_hide_set() && a.get_help().is_none()).map(|a| format!("{name} {}", a.get_id())).collect();
        if cmd.get_about().is_none() {
            missing.push(format!("{name} (the command itself)"));
        }
        for sub in cmd.get_subcommands() {
            missing.extend(missing_help(sub));
        }
        missing
    }

    #[test]
    fn every_argument_of_every_command_has_help() {
        let mut cli = Cli::command();
        cli.build();
        assert_eq!(missing_help(&cli), Vec::<String>::new());
        // The walk reaches nested and global arguments: one without help is found.
        let mut bad = Cli::command().arg(clap::Arg::new("quiet").long("quiet").global(true).action(clap::ArgAction::SetTrue));
        bad.build();
        let missing = missing_help(&bad);
        assert!(missing.contains(&"sessiond quiet".to_string()) && missing.contains(&"sessiond exec quiet".to_string()), "{missing:?}");
    }

    #[test]
    fn daemon_flags_fill_the_same_fields_as_the_file() {
        let a = daemon(&[
            "--uplink",
            "br0",
            "--link",
            "veth",
            "--dns",
            "10.0.0.53",
            "--dns",
            "10.0.0.54",
            "--dhcp-timeout",
            "5",
            "--dhcp-fqdn",
            "--reap-after",
            "7",
            "--max-connections-per-user",
            "8",
            "--dhcp-min-lease",
            "20",
        ])
        .unwrap();
        let dns: Vec<Ipv4Addr> = vec!["10.0.0.53".parse().unwrap(), "10.0.0.54".parse().unwrap()];
        assert_eq!(
            a.settings,
            RawSettings {
                uplink: Some("br0".into()),
                link: Some(LinkKind::Veth),
                dns: Some(dns),
                dhcp_timeout_secs: Some(5),
                dhcp_fqdn: Some(true),
                reap_after_secs: Some(7),
                max_connections_per_user: Some(8),
                dhcp_min_lease_secs: Some(20),
                ..Default::default()
            }
        );
        assert_eq!(daemon(&[]).unwrap().settings, RawSettings::default(), "no flag: nothing overrides the file");
        let a = daemon(&["--addressing", "static", "--config", "/tmp/x.toml"]).unwrap();
        assert_eq!(a.settings.addressing, Some(Addressing::Static));
        assert_eq!(a.config, Some(PathBuf::from("/tmp/x.toml")));
    }

    #[test]
    fn the_holders_column_names_the_logins() {
        use crate::holders::Holder;
        use crate::state::Holding;
        let mut r = crate::state::sample_record(1);
        assert_eq!(holders_summary(&r, 0), "-", "not held by logins");
        let h = |pid| Holder { pid, start_time: 1 };
        r.holding = Some(Holding { holders: vec![h(812), h(907)], unheld_since: None });
        assert_eq!(holders_summary(&r, 0), "pid 812,907");
        r.holding = Some(Holding { holders: vec![], unheld_since: Some(1_000) });
        assert_eq!(holders_summary(&r, 13_500), "none for 12 s");
    }

    #[test]
    fn a_bad_choice_is_a_usage_error_naming_the_choices() {
        let e = daemon(&["--link", "wifi"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(e.use_stderr());
        let text = e.to_string();
        assert!(text.contains("'wifi'") && text.contains("macvlan, veth"), "{text}");
        assert!(daemon(&["--dhcp-fqdn", "yes"]).is_err(), "--dhcp-fqdn takes no value");
    }
}
