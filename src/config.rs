//! Daemon settings: /etc/sessiond/sessiond.toml merged under command-line flags, then validated.
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pool::{Pool, PoolError};
pub use sessiond_client::ports::HostService;
/// Shared with the clients (the session record names them; they find the socket by them).
pub use sessiond_client::{
    Addressing, DEFAULT_DHCP_TIMEOUT_SECS, DEFAULT_SOCKET, Ipv6Mode, Ipv6State, LinkKind, LoopbackReach, Mode, SOCKET_ENV, Virtualize, WaitFor,
};

use crate::programs::ProgramName;

pub const DEFAULT_CONFIG: &str = "/etc/sessiond/sessiond.toml";
/// A login's session is stopped this long after its last login process vanished.
pub const DEFAULT_REAP_AFTER_SECS: u64 = 30;
pub const MAX_REAP_AFTER_SECS: u64 = 86_400;
/// Control-socket connections one non-root user may hold at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 32;
/// All non-root users' connections together (root's are never refused).
pub const MAX_USER_CONNECTIONS: usize = 1024;
/// The longest `dhcp_timeout_secs` allowed (the CLI's `start` waits that long, and more).
pub const MAX_DHCP_TIMEOUT_SECS: u64 = 3600;
/// Runtime state, like systemd-networkd's leases under /run: the session records and leases
/// describe namespaces and links that do not survive a reboot, so neither should they. It
/// survives daemon restarts and crashes, which is what recovery needs.
pub const DEFAULT_STATE_DIR: &str = "/run/sessiond/state";

/// One layer of daemon settings as given: the command-line flags, or the config file. Each
/// setting is declared once, here, for both: the flag is `--KEY` with dashes (`--dhcp-timeout`
/// for `dhcp_timeout_secs`), the doc comment its help; every field is optional and unknown
/// file keys are rejected by name. `Settings::merge` lays the flags over the file and checks
/// the result.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// Host NIC the sessions' uplinks attach to
    #[arg(long)]
    pub uplink: Option<String>,
    /// How each session's interface reaches the uplink (default macvlan)
    #[arg(long, value_parser = one_of::<LinkKind>(LinkKind::NAMES))]
    pub link: Option<LinkKind>,
    /// Bridge the host end of each veth joins (--link veth)
    #[arg(long)]
    pub bridge: Option<String>,
    /// Where sessions' addresses come from (default dhcp)
    #[arg(long, value_parser = one_of::<Addressing>(Addressing::NAMES))]
    pub addressing: Option<Addressing>,
    /// Static pool FIRST-LAST/PREFIX
    #[arg(long)]
    pub pool: Option<String>,
    /// Gateway for static sessions
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
    /// DNS server for static sessions (repeatable; default: the gateway)
    #[arg(long)]
    pub dns: Option<Vec<Ipv4Addr>>,
    /// Control socket (default: $SESSIOND_SOCKET, else /run/sessiond/sessiond.sock)
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Group allowed to connect to the control socket (users read their own sessions)
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Session records and leases (default /run/sessiond/state: runtime state, gone at reboot
    /// like the sessions it describes)
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Give up a DHCP start after this many seconds (default 30; PAM's timeout= must be longer)
    #[arg(long = "dhcp-timeout", value_name = "DHCP_TIMEOUT")]
    pub dhcp_timeout_secs: Option<u64>,
    /// DHCP host name (option 12) template: {hostname} and {sid} (default {hostname}-s{sid})
    #[arg(long)]
    pub hostname_template: Option<String>,
    /// Send the DHCP host name as option 81 (client FQDN) instead of option 12
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub dhcp_fqdn: Option<bool>,
    /// Stop a login's session this many seconds after all of its login processes vanished
    /// without logging out (killed, OOM) (default 30)
    #[arg(long = "reap-after", value_name = "REAP_AFTER")]
    pub reap_after_secs: Option<u64>,
    /// Most control-socket connections one non-root user may have open (default 32; root:
    /// no limit)
    #[arg(long)]
    pub max_connections_per_user: Option<usize>,
    /// Shortest DHCP lease used as given, in seconds (default 4): a shorter one is used as if
    /// this long, and no renewal comes sooner than half of it (a server cannot make sessions
    /// renew in a loop)
    #[arg(long = "dhcp-min-lease", value_name = "DHCP_MIN_LEASE")]
    pub dhcp_min_lease_secs: Option<u32>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (default: off). No TLS, no
    /// authentication: keep it on loopback or a management network
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Probe each address with ARP for this many ms before using it, and defend it (RFC 5227;
    /// default 200; 0: off; 7000: the RFC's own timing)
    #[arg(long = "acd-probe-ms", value_name = "MS")]
    pub acd_probe_ms: Option<u64>,
    /// Who on the host may connect to 127.0.0.(sid+1):P, forwarded to what session sid listens
    /// on at P (default owner: root and the session's owner; all; none: no bridge)
    #[arg(long, value_parser = one_of::<LoopbackReach>(LoopbackReach::NAMES))]
    pub loopback_reach: Option<LoopbackReach>,
    /// How sessions get their network identity: namespace (their own network namespace; the
    /// default) or programs (the host's stack, eBPF hooks on the login's cgroup)
    #[arg(long, value_parser = one_of::<Mode>(Mode::NAMES))]
    pub mode: Option<Mode>,
    /// Programs mode: the process names whose sockets are virtualized (comma-separated or
    /// repeated; default: every program of the session)
    #[arg(long, value_delimiter = ',')]
    pub programs: Option<Vec<ProgramName>>,
    /// Programs mode: what the listed programs get: loopback, address (the session's own pool
    /// address; needs --addressing static) or both (comma-separated; default loopback)
    #[arg(long, value_delimiter = ',', value_parser = one_of::<Virtualize>(Virtualize::NAMES))]
    pub virtualize: Option<Vec<Virtualize>>,
    /// How sessions get IPv6 addresses (default auto: the router advertisement decides; off:
    /// no IPv6 on the session's uplink)
    #[arg(long, value_parser = one_of::<Ipv6Mode>(Ipv6Mode::NAMES))]
    pub ipv6: Option<Ipv6Mode>,
    /// Also form RFC 8981 temporary IPv6 addresses (and prefer them for outgoing connections)
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub ipv6_privacy: Option<bool>,
    /// What start waits for before it answers: ipv4 (default: IPv6 completes in the
    /// background), ipv6 or both (also a usable global IPv6 address, within the DHCP timeout)
    #[arg(long, value_parser = one_of::<WaitFor>(WaitFor::NAMES))]
    pub wait_for: Option<WaitFor>,
    /// A host service every session reaches at its own 127.0.0.1:PORT (the host's
    /// 127.0.0.1:PORT, connected from the session's loopback); the port is reserved in
    /// sessions (repeatable; e.g. tcp:631, udp:1947)
    #[arg(long = "host-service", value_name = "PROTO:PORT")]
    pub host_services: Option<Vec<HostService>>,
}

/// The config file is one layer of `RawSettings` (the name the tests know it by).
pub type FileConfig = RawSettings;

/// A flag value out of `names` (listed in `--help` and in the usage error), parsed by `FromStr`.
fn one_of<T: std::str::FromStr + Clone + Send + Sync + 'static>(names: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names).map(|s| s.parse::<T>().unwrap_or_else(|_| unreachable!("{s} is one of the possible values")))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no uplink given: pass --uplink IFACE or set `uplink` in the config file")]
    NoUplink,
    #[error("--link veth needs --bridge BR (the bridge the host end of each pair joins)")]
    VethWithoutBridge,
    #[error("--addressing static needs --pool FIRST-LAST/PREFIX")]
    StaticWithoutPool,
    #[error("--addressing static needs --gateway IP")]
    StaticWithoutGateway,
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("invalid interface name {0:?}: 1-15 characters, no '/', ':' or whitespace")]
    BadIfName(String),
    #[error("DHCP timeout must be between 1 and 3600 seconds, got {0}")]
    BadTimeout(u64),
    #[error("reap_after_secs must be between 0 and {MAX_REAP_AFTER_SECS} seconds, got {0}")]
    BadReapAfter(u64),
    #[error("max_connections_per_user must be between 1 and {MAX_USER_CONNECTIONS} (all non-root connections), got {0}")]
    BadConnectionLimit(usize),
    #[error("DHCP minimum lease must be between {lo} and {hi} seconds, got {0}", lo = MIN_LEASE_RANGE.start(), hi = MIN_LEASE_RANGE.end())]
    BadMinLease(u32),
    #[error("acd_probe_ms must be 0 (no address conflict detection) to 7000 (RFC 5227's own timing), got {0}")]
    BadAcdProbe(u64),
    #[error("virtualize is empty: give address, loopback or both")]
    NothingToVirtualize,
    #[error("wait_for = \"{0}\" waits for an IPv6 address, but ipv6 = \"off\" gives none")]
    WaitForIpv6Off(WaitFor),
}

impl ConfigError {
    /// Usage errors (exit 2) versus environment failures (exit 1).
    pub fn is_usage(&self) -> bool {
        !matches!(self, ConfigError::Read { .. })
    }
}

impl RawSettings {
    /// Reads `path`; a missing default file is fine (all defaults), a missing explicit one is not.
    pub fn load(path: &Path, explicit: bool) -> Result<RawSettings, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => RawSettings::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(RawSettings::default()),
            Err(source) => Err(ConfigError::Read { path: path.to_path_buf(), source }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<RawSettings, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim().replace('\n', " ") })
    }

    /// `self` laid over `under`, field by field: what `self` gives wins.
    pub fn over(self, under: RawSettings) -> RawSettings {
        RawSettings {
            uplink: self.uplink.or(under.uplink),
            link: self.link.or(under.link),
            bridge: self.bridge.or(under.bridge),
            addressing: self.addressing.or(under.addressing),
            pool: self.pool.or(under.pool),
            gateway: self.gateway.or(under.gateway),
            dns: self.dns.or(under.dns),
            socket: self.socket.or(under.socket),
            socket_group: self.socket_group.or(under.socket_group),
            state_dir: self.state_dir.or(under.state_dir),
            dhcp_timeout_secs: self.dhcp_timeout_secs.or(under.dhcp_timeout_secs),
            hostname_template: self.hostname_template.or(under.hostname_template),
            dhcp_fqdn: self.dhcp_fqdn.or(under.dhcp_fqdn),
            reap_after_secs: self.reap_after_secs.or(under.reap_after_secs),
            max_connections_per_user: self.max_connections_per_user.or(under.max_connections_per_user),
            dhcp_min_lease_secs: self.dhcp_min_lease_secs.or(under.dhcp_min_lease_secs),
            metrics_listen: self.metrics_listen.or(under.metrics_listen),
            acd_probe_ms: self.acd_probe_ms.or(under.acd_probe_ms),
            loopback_reach: self.loopback_reach.or(under.loopback_reach),
            mode: self.mode.or(under.mode),
            programs: self.programs.or(under.programs),
            virtualize: self.virtualize.or(under.virtualize),
            ipv6: self.ipv6.or(under.ipv6),
            ipv6_privacy: self.ipv6_privacy.or(under.ipv6_privacy),
            wait_for: self.wait_for.or(under.wait_for),
            host_services: self.host_services.or(under.host_services),
        }
    }
}

/// Validated daemon settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub uplink: String,
    pub link: LinkKind,
    pub bridge: Option<String>,
    pub addressing: Addressing,
    pub pool: Option<Pool>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    pub state_dir: PathBuf,
    pub dhcp_timeout_secs: u64,
    pub hostname_template: String,
    pub dhcp_fqdn: bool,
    pub reap_after_secs: u64,
    pub max_connections_per_user: usize,
    pub dhcp_min_lease_secs: u32,
    pub metrics_listen: Option<SocketAddr>,
    /// Length of the RFC 5227 probe before an address is used; 0: no conflict detection.
    pub acd_probe_ms: u64,
    pub loopback_reach: LoopbackReach,
    pub mode: Mode,
    /// Programs mode's listed process names, sorted, each once; empty: every program.
    pub programs: Vec<ProgramName>,
    /// What programs mode virtualizes, sorted, each once (never empty).
    pub virtualize: Vec<Virtualize>,
    pub ipv6: Ipv6Mode,
    /// RFC 8981 temporary addresses beside the stable one.
    pub ipv6_privacy: bool,
    pub wait_for: WaitFor,
    /// Sorted, each once.
    pub host_services: Vec<HostService>,
}

/// Allowed `dhcp_min_lease_secs`: at least 2 s, so the renewal floor (half of it) is at least
/// 1 s; at most a day.
pub const MIN_LEASE_RANGE: std::ops::RangeInclusive<u32> = 2..=86_400;

/// Default probe length: NetworkManager's default DAD timeout. An ARP reply on a LAN comes
/// within a millisecond or two; the scaled RFC schedule (three probes, then 57 ms of waiting
/// for late replies) leaves a slow host tens of ms to answer, and a start costs ~160 ms on
/// average (docs/performance.md, "Design notes: address conflict detection").
pub const DEFAULT_ACD_PROBE_MS: u64 = 200;

pub fn check_ifname(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty() && name.len() < 16 && name != "." && name != ".." && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok { Ok(()) } else { Err(ConfigError::BadIfName(name.to_string())) }
}

impl Settings {
    /// `flags` wins over `file`; the result is checked as a whole.
    pub fn merge(flags: RawSettings, file: RawSettings) -> Result<Settings, ConfigError> {
        // Destructured: a new setting cannot be forgotten here.
        let RawSettings {
            uplink,
            link,
            bridge,
            addressing,
            pool,
            gateway,
            dns,
            socket,
            socket_group,
            state_dir,
            dhcp_timeout_secs,
            hostname_template,
            dhcp_fqdn,
            reap_after_secs,
            max_connections_per_user,
            dhcp_min_lease_secs,
            metrics_listen,
            acd_probe_ms,
            loopback_reach,
            mode,
            programs,
            virtualize,
            ipv6,
            ipv6_privacy,
            wait_for,
            host_services,
        } = flags.over(file);
        let uplink = uplink.ok_or(ConfigError::NoUplink)?;
        check_ifname(&uplink)?;
        let link = link.unwrap_or(LinkKind::Macvlan);
        if let Some(b) = &bridge {
            check_ifname(b)?;
        }
        if link == LinkKind::Veth && bridge.is_none() {
            return Err(ConfigError::VethWithoutBridge);
        }
        let addressing = addressing.unwrap_or(Addressing::Dhcp);
        let pool = match pool {
            Some(p) => Some(p.parse::<Pool>()?),
            None => None,
        };
        if addressing == Addressing::Static {
            let pool = pool.as_ref().ok_or(ConfigError::StaticWithoutPool)?;
            let gw = gateway.ok_or(ConfigError::StaticWithoutGateway)?;
            pool.check_gateway(gw)?;
        }
        // Static sessions without an explicit DNS list ask the gateway, the usual LAN resolver.
        let dns = dns.unwrap_or_else(|| gateway.into_iter().collect());
        let reap_after_secs = reap_after_secs.unwrap_or(DEFAULT_REAP_AFTER_SECS);
        if reap_after_secs > MAX_REAP_AFTER_SECS {
            return Err(ConfigError::BadReapAfter(reap_after_secs));
        }
        let max_connections_per_user = max_connections_per_user.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_USER);
        if !(1..=MAX_USER_CONNECTIONS).contains(&max_connections_per_user) {
            return Err(ConfigError::BadConnectionLimit(max_connections_per_user));
        }
        let dhcp_timeout_secs = dhcp_timeout_secs.unwrap_or(DEFAULT_DHCP_TIMEOUT_SECS);
        if !(1..=MAX_DHCP_TIMEOUT_SECS).contains(&dhcp_timeout_secs) {
            return Err(ConfigError::BadTimeout(dhcp_timeout_secs));
        }
        let dhcp_min_lease_secs = dhcp_min_lease_secs.unwrap_or(crate::dhcp::DEFAULT_MIN_LEASE_SECS);
        if !MIN_LEASE_RANGE.contains(&dhcp_min_lease_secs) {
            return Err(ConfigError::BadMinLease(dhcp_min_lease_secs));
        }
        let ipv6 = ipv6.unwrap_or(Ipv6Mode::Auto);
        let wait_for = wait_for.unwrap_or(WaitFor::Ipv4);
        if wait_for != WaitFor::Ipv4 && ipv6 == Ipv6Mode::Off {
            return Err(ConfigError::WaitForIpv6Off(wait_for));
        }
        let acd_probe_ms = acd_probe_ms.unwrap_or(DEFAULT_ACD_PROBE_MS);
        if acd_probe_ms > crate::acd::RFC_PROBE_MS {
            return Err(ConfigError::BadAcdProbe(acd_probe_ms));
        }
        let mut programs = programs.unwrap_or_default();
        programs.sort();
        programs.dedup();
        let mut virtualize = virtualize.unwrap_or_else(|| vec![Virtualize::Loopback]);
        virtualize.sort_by_key(|v| v.as_str());
        virtualize.dedup();
        if virtualize.is_empty() {
            return Err(ConfigError::NothingToVirtualize);
        }
        Ok(Settings {
            uplink,
            link,
            bridge,
            addressing,
            pool,
            gateway,
            dns,
            socket: socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
            socket_group,
            state_dir: state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            dhcp_timeout_secs,
            hostname_template: hostname_template.unwrap_or_else(|| "{hostname}-s{sid}".into()),
            dhcp_fqdn: dhcp_fqdn.unwrap_or(false),
            reap_after_secs,
            max_connections_per_user,
            dhcp_min_lease_secs,
            metrics_listen,
            acd_probe_ms,
            loopback_reach: loopback_reach.unwrap_or(LoopbackReach::Owner),
            mode: mode.unwrap_or(Mode::Namespace),
            programs,
            virtualize,
            ipv6,
            ipv6_privacy: ipv6_privacy.unwrap_or(false),
            wait_for,
            host_services: host_services.unwrap_or_default().into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<RawSettings, ConfigError> {
        RawSettings::parse(t, Path::new("test.toml"))
    }

    #[test]
    fn parses_full_file() {
        let f = parse(
            r#"uplink = "br0"
link = "veth"
bridge = "br0"
addressing = "static"
pool = "10.1.0.10-10.1.0.20/24"
gateway = "10.1.0.1"
dns = ["10.1.0.53"]
socket = "/tmp/s.sock"
state_dir = "/tmp/state"
"#,
        )
        .unwrap();
        let s = Settings::merge(RawSettings::default(), f).unwrap();
        assert_eq!(s.link, LinkKind::Veth);
        assert_eq!(s.dns, vec!["10.1.0.53".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(s.pool.unwrap().size(), 11);
    }

    #[test]
    fn metrics_listen_is_off_unless_given_and_must_be_an_address_and_port() {
        let s = Settings::merge(RawSettings { uplink: Some("br0".into()), ..Default::default() }, RawSettings::default()).unwrap();
        assert_eq!(s.metrics_listen, None);
        let f = parse("uplink = \"br0\"\nmetrics_listen = \"127.0.0.1:9737\"\n").unwrap();
        assert_eq!(Settings::merge(RawSettings::default(), f).unwrap().metrics_listen, Some("127.0.0.1:9737".parse().unwrap()));
        let e = parse("metrics_listen = \"localhost\"\n").unwrap_err().to_string();
        assert!(e.contains("metrics_listen") && e.contains("socket address"), "{e}");
    }

    #[test]
    fn host_services_come_from_the_file_or_the_flags_sorted_once_each_and_bad_ones_are_named() {
        use sessiond_client::ports::Proto;
        let f = parse("uplink = \"br0\"\nhost_services = [\"udp:1947\", \"tcp:631\", \"tcp:631\"]\n").unwrap();
        let s = Settings::merge(RawSettings::default(), f.clone()).unwrap();
        assert_eq!(s.host_services, vec![HostService { proto: Proto::Tcp, port: 631 }, HostService { proto: Proto::Udp, port: 1947 }]);
        let flags = RawSettings { host_services: Some(vec!["tcp:27000".parse().unwrap()]), ..Default::default() };
        assert_eq!(Settings::merge(flags, f).unwrap().host_services, vec![HostService { proto: Proto::Tcp, port: 27000 }]);
        let none = Settings::merge(RawSettings { uplink: Some("br0".into()), ..Default::default() }, RawSettings::default()).unwrap();
        assert!(none.host_services.is_empty());
        let e = parse("host_services = [\"tcp:70000\"]\n").unwrap_err().to_string();
        assert!(e.contains("tcp:70000") && e.contains("from 1 to 65535") && e.contains("test.toml"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("uplink = \"br0\"\nuplnk = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("uplnk"), "{e}");
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn syntax_error_is_reported() {
        let e = parse("uplink = \n").unwrap_err().to_string();
        assert!(e.contains("test.toml"), "{e}");
        let e = parse("link = \"wifi\"\n").unwrap_err().to_string();
        assert!(e.contains("wifi"), "{e}");
    }

    #[test]
    fn flags_override_file() {
        let file = parse("uplink = \"br0\"\naddressing = \"static\"\npool = \"10.1.0.10-10.1.0.20/24\"\ngateway = \"10.1.0.1\"\n").unwrap();
        let flags = RawSettings { uplink: Some("br1".into()), ..Default::default() };
        let s = Settings::merge(flags, file).unwrap();
        assert_eq!(s.uplink, "br1");
        assert_eq!(s.dns, vec!["10.1.0.1".parse::<Ipv4Addr>().unwrap()], "gateway is the default DNS");
        assert_eq!(s.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn invalid_combinations() {
        let base = || RawSettings { uplink: Some("br0".into()), ..Default::default() };
        assert!(matches!(Settings::merge(RawSettings::default(), RawSettings::default()), Err(ConfigError::NoUplink)));
        let veth = RawSettings { link: Some(LinkKind::Veth), ..base() };
        assert!(matches!(Settings::merge(veth, RawSettings::default()), Err(ConfigError::VethWithoutBridge)));
        let st = RawSettings { addressing: Some(Addressing::Static), ..base() };
        assert!(matches!(Settings::merge(st.clone(), RawSettings::default()), Err(ConfigError::StaticWithoutPool)));
        let st2 = RawSettings { pool: Some("10.0.0.5-10.0.0.9/24".into()), ..st.clone() };
        assert!(matches!(Settings::merge(st2.clone(), RawSettings::default()), Err(ConfigError::StaticWithoutGateway)));
        let st3 = RawSettings { gateway: Some("10.0.0.6".parse().unwrap()), ..st2 };
        assert!(matches!(Settings::merge(st3, RawSettings::default()), Err(ConfigError::Pool(PoolError::GatewayInRange { .. }))));
        let badif = RawSettings { uplink: Some("a/b".into()), ..Default::default() };
        assert!(matches!(Settings::merge(badif, RawSettings::default()), Err(ConfigError::BadIfName(_))));
        for bad in [0, 1, 86_401] {
            let e = Settings::merge(RawSettings { dhcp_min_lease_secs: Some(bad), ..base() }, RawSettings::default()).unwrap_err();
            assert!(matches!(e, ConfigError::BadMinLease(b) if b == bad), "{e}");
            assert!(e.to_string().contains("between 2 and 86400 seconds"), "{e}");
        }
    }

    #[test]
    fn min_lease_from_file_flag_or_default() {
        let base = || RawSettings { uplink: Some("br0".into()), ..Default::default() };
        assert_eq!(Settings::merge(base(), RawSettings::default()).unwrap().dhcp_min_lease_secs, crate::dhcp::DEFAULT_MIN_LEASE_SECS);
        let file = parse("dhcp_min_lease_secs = 20\n").unwrap();
        assert_eq!(Settings::merge(base(), file.clone()).unwrap().dhcp_min_lease_secs, 20);
        let flags = RawSettings { dhcp_min_lease_secs: Some(60), ..base() };
        assert_eq!(Settings::merge(flags, file).unwrap().dhcp_min_lease_secs, 60);
    }

    #[test]
    fn reaping_and_connection_limits() {
        let base = || RawSettings { uplink: Some("br0".into()), ..Default::default() };
        let s = Settings::merge(base(), RawSettings::default()).unwrap();
        assert_eq!((s.reap_after_secs, s.max_connections_per_user), (30, 32));
        let f = parse("uplink = \"br0\"\nreap_after_secs = 0\nmax_connections_per_user = 4\n").unwrap();
        let s = Settings::merge(RawSettings::default(), f).unwrap();
        assert_eq!((s.reap_after_secs, s.max_connections_per_user), (0, 4));
        let e = Settings::merge(RawSettings { reap_after_secs: Some(86_401), ..base() }, RawSettings::default()).unwrap_err().to_string();
        assert!(e.contains("reap_after_secs") && e.contains("86401"), "{e}");
        for n in [0, MAX_USER_CONNECTIONS + 1] {
            let e = Settings::merge(RawSettings { max_connections_per_user: Some(n), ..base() }, RawSettings::default()).unwrap_err().to_string();
            assert!(e.contains("max_connections_per_user"), "{e}");
        }
    }

    #[test]
    fn acd_probe_defaults_on_and_is_bounded() {
        let base = || RawSettings { uplink: Some("br0".into()), ..Default::default() };
        assert_eq!(Settings::merge(base(), RawSettings::default()).unwrap().acd_probe_ms, DEFAULT_ACD_PROBE_MS);
        let off = parse("acd_probe_ms = 0\n").unwrap();
        assert_eq!(Settings::merge(base(), off).unwrap().acd_probe_ms, 0);
        let rfc = RawSettings { acd_probe_ms: Some(7000), ..base() };
        assert_eq!(Settings::merge(rfc, RawSettings::default()).unwrap().acd_probe_ms, 7000);
        let e = Settings::merge(RawSettings { acd_probe_ms: Some(7001), ..base() }, RawSettings::default()).unwrap_err();
        assert!(matches!(e, ConfigError::BadAcdProbe(7001)) && e.to_string().contains("acd_probe_ms"), "{e}");
        assert!(parse("acd_probe_ms = -1\n").is_err());
    }

    #[test]
    fn programs_mode_settings_from_file_and_flags() {
        let base = || RawSettings { uplink: Some("br0".into()), ..Default::default() };
        let s = Settings::merge(base(), RawSettings::default()).unwrap();
        assert_eq!((s.mode, s.programs.len(), s.virtualize.as_slice()), (Mode::Namespace, 0, &[Virtualize::Loopback][..]));
        let f = parse("mode = \"programs\"\nprograms = [\"python3\", \"crmclient\", \"python3\"]\nvirtualize = [\"loopback\"]\n").unwrap();
        let s = Settings::merge(base(), f.clone()).unwrap();
        assert_eq!(s.mode, Mode::Programs);
        assert_eq!(s.programs.iter().map(|p| p.as_str()).collect::<Vec<_>>(), ["crmclient", "python3"]);
        let flags = RawSettings { mode: Some(Mode::Namespace), ..base() };
        assert_eq!(Settings::merge(flags, f).unwrap().mode, Mode::Namespace, "the flag wins");
        let e = parse("programs = [\"/usr/bin/python3\"]\n").unwrap_err().to_string();
        assert!(e.contains("/usr/bin/python3") && e.contains("process name"), "{e}");
        let e = parse("mode = \"container\"\n").unwrap_err().to_string();
        assert!(e.contains("container") && e.contains("programs"), "{e}");
        let e = Settings::merge(RawSettings { virtualize: Some(vec![]), ..base() }, RawSettings::default()).unwrap_err();
        assert!(matches!(e, ConfigError::NothingToVirtualize), "{e}");
        // Address virtualization with DHCP (the default addressing): a lease on the session's own link.
        let s = Settings::merge(RawSettings { virtualize: Some(vec![Virtualize::Address]), ..base() }, RawSettings::default()).unwrap();
        assert_eq!((s.addressing, s.virtualize.as_slice()), (Addressing::Dhcp, &[Virtualize::Address][..]));
        let st = RawSettings {
            virtualize: Some(vec![Virtualize::Loopback, Virtualize::Address]),
            addressing: Some(Addressing::Static),
            pool: Some("10.0.0.5-10.0.0.9/24".into()),
            gateway: Some("10.0.0.1".parse().unwrap()),
            ..base()
        };
        assert_eq!(Settings::merge(st, RawSettings::default()).unwrap().virtualize, [Virtualize::Address, Virtualize::Loopback]);
    }

    #[test]
    fn ipv6_defaults_to_auto_without_privacy_and_takes_its_names() {
        let base = || RawSettings { uplink: Some("br0".into()), ..Default::default() };
        let s = Settings::merge(base(), RawSettings::default()).unwrap();
        assert_eq!((s.ipv6, s.ipv6_privacy), (Ipv6Mode::Auto, false));
        let f = parse("ipv6 = \"off\"\nipv6_privacy = true\n").unwrap();
        let s = Settings::merge(base(), f.clone()).unwrap();
        assert_eq!((s.ipv6, s.ipv6_privacy), (Ipv6Mode::Off, true));
        let flags = RawSettings { ipv6: Some(Ipv6Mode::Slaac), ..base() };
        assert_eq!(Settings::merge(flags, f).unwrap().ipv6, Ipv6Mode::Slaac, "the flag wins");
        let e = parse("ipv6 = \"on\"\n").unwrap_err().to_string();
        assert!(e.contains("on") && e.contains("test.toml"), "{e}");
        assert!(parse("ipv6_privacy = \"yes\"\n").is_err());
    }

    #[test]
    fn wait_for_defaults_to_ipv4_and_ipv6_needs_ipv6_on() {
        let base = || RawSettings { uplink: Some("br0".into()), ..Default::default() };
        assert_eq!(Settings::merge(base(), RawSettings::default()).unwrap().wait_for, WaitFor::Ipv4);
        let f = parse("wait_for = \"both\"\n").unwrap();
        assert_eq!(Settings::merge(base(), f.clone()).unwrap().wait_for, WaitFor::Both);
        let off = RawSettings { ipv6: Some(Ipv6Mode::Off), ..base() };
        let e = Settings::merge(off, f).unwrap_err();
        assert!(matches!(e, ConfigError::WaitForIpv6Off(WaitFor::Both)) && e.to_string().contains("ipv6 = \"off\""), "{e}");
        assert!(parse("wait_for = \"ipv5\"\n").unwrap_err().to_string().contains("ipv5"));
    }

    #[test]
    fn missing_default_file_is_fine_but_explicit_is_not() {
        let p = Path::new("/nonexistent/sessiond.toml");
        assert_eq!(RawSettings::load(p, false).unwrap(), RawSettings::default());
        assert!(matches!(RawSettings::load(p, true), Err(ConfigError::Read { .. })));
    }
}
