//! Daemon settings: /etc/sessiond/sessiond.toml merged under command-line flags, then validated.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pool::{Pool, PoolError};
/// Shared with the clients (the session record names them; they find the socket by them).
pub use sessiond_client::{Addressing, DEFAULT_SOCKET, LinkKind, SOCKET_ENV};

pub const DEFAULT_CONFIG: &str = "/etc/sessiond/sessiond.toml";
/// Runtime state, like systemd-networkd's leases under /run: the session records and leases
/// describe namespaces and links that do not survive a reboot, so neither should they. It
/// survives daemon restarts and crashes, which is what recovery needs.
pub const DEFAULT_STATE_DIR: &str = "/run/sessiond/state";
/// The default before it moved under /run.
pub const OLD_STATE_DIR: &str = "/var/lib/sessiond";

/// Every key the config file may hold; all optional, unknown keys rejected by name.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub uplink: Option<String>,
    pub link: Option<LinkKind>,
    pub bridge: Option<String>,
    pub addressing: Option<Addressing>,
    pub pool: Option<String>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Option<Vec<Ipv4Addr>>,
    pub socket: Option<PathBuf>,
    /// Group that may connect to the control socket (to read its own sessions' status).
    pub socket_group: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub dhcp_timeout_secs: Option<u64>,
    pub hostname_template: Option<String>,
    /// Send the DHCP host name as option 81 (FQDN) instead of option 12.
    pub dhcp_fqdn: Option<bool>,
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
}

impl ConfigError {
    /// Usage errors (exit 2) versus environment failures (exit 1).
    pub fn is_usage(&self) -> bool {
        !matches!(self, ConfigError::Read { .. })
    }
}

impl FileConfig {
    /// Reads `path`; a missing default file is fine (all defaults), a missing explicit one is not.
    pub fn load(path: &Path, explicit: bool) -> Result<FileConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => FileConfig::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(FileConfig::default()),
            Err(source) => Err(ConfigError::Read { path: path.to_path_buf(), source }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim().replace('\n', " ") })
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
}

/// The default state dir, except right after an upgrade from a build that kept it under the
/// old default while sessions still run: their records must be found, or the new daemon would
/// take their namespaces for orphans and remove them.
pub fn default_state_dir_in(new: &Path, old: &Path) -> PathBuf {
    if !has_session_records(new) && has_session_records(old) {
        tracing::warn!(
            "session records found under {}, the old default state dir: using it (the default is now {}; --state-dir chooses)",
            old.display(),
            new.display()
        );
        return old.to_path_buf();
    }
    new.to_path_buf()
}

fn has_session_records(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("sessions")).into_iter().flatten().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".json"))
}

pub fn check_ifname(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty() && name.len() < 16 && name != "." && name != ".." && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok { Ok(()) } else { Err(ConfigError::BadIfName(name.to_string())) }
}

impl Settings {
    /// `flags` wins over `file`; the result is checked as a whole.
    pub fn merge(flags: FileConfig, file: FileConfig) -> Result<Settings, ConfigError> {
        let uplink = flags.uplink.or(file.uplink).ok_or(ConfigError::NoUplink)?;
        check_ifname(&uplink)?;
        let link = flags.link.or(file.link).unwrap_or(LinkKind::Macvlan);
        let bridge = flags.bridge.or(file.bridge);
        if let Some(b) = &bridge {
            check_ifname(b)?;
        }
        if link == LinkKind::Veth && bridge.is_none() {
            return Err(ConfigError::VethWithoutBridge);
        }
        let addressing = flags.addressing.or(file.addressing).unwrap_or(Addressing::Dhcp);
        let pool = match flags.pool.or(file.pool) {
            Some(p) => Some(p.parse::<Pool>()?),
            None => None,
        };
        let gateway = flags.gateway.or(file.gateway);
        if addressing == Addressing::Static {
            let pool = pool.as_ref().ok_or(ConfigError::StaticWithoutPool)?;
            let gw = gateway.ok_or(ConfigError::StaticWithoutGateway)?;
            pool.check_gateway(gw)?;
        }
        // Static sessions without an explicit DNS list ask the gateway, the usual LAN resolver.
        let dns = flags.dns.or(file.dns).unwrap_or_else(|| gateway.into_iter().collect());
        let dhcp_timeout_secs = flags.dhcp_timeout_secs.or(file.dhcp_timeout_secs).unwrap_or(30);
        if !(1..=3600).contains(&dhcp_timeout_secs) {
            return Err(ConfigError::BadTimeout(dhcp_timeout_secs));
        }
        Ok(Settings {
            uplink,
            link,
            bridge,
            addressing,
            pool,
            gateway,
            dns,
            socket: flags.socket.or(file.socket).unwrap_or_else(|| DEFAULT_SOCKET.into()),
            socket_group: flags.socket_group.or(file.socket_group),
            state_dir: flags.state_dir.or(file.state_dir).unwrap_or_else(|| default_state_dir_in(Path::new(DEFAULT_STATE_DIR), Path::new(OLD_STATE_DIR))),
            dhcp_timeout_secs,
            hostname_template: flags.hostname_template.or(file.hostname_template).unwrap_or_else(|| "{hostname}-s{sid}".into()),
            dhcp_fqdn: flags.dhcp_fqdn.or(file.dhcp_fqdn).unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_state_dir_is_used_only_while_it_has_the_only_records() {
        let t = tempfile::tempdir().unwrap();
        let (new, old) = (t.path().join("run"), t.path().join("varlib"));
        assert_eq!(default_state_dir_in(&new, &old), new, "nothing anywhere: the new default");
        std::fs::create_dir_all(old.join("sessions")).unwrap();
        assert_eq!(default_state_dir_in(&new, &old), new, "an empty old dir does not count");
        std::fs::write(old.join("sessions/3.json"), "{}").unwrap();
        assert_eq!(default_state_dir_in(&new, &old), old, "sessions still recorded there");
        std::fs::create_dir_all(new.join("sessions")).unwrap();
        std::fs::write(new.join("sessions/4.json"), "{}").unwrap();
        assert_eq!(default_state_dir_in(&new, &old), new, "the new dir has records: it wins");
    }

    fn parse(t: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(t, Path::new("test.toml"))
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
        let s = Settings::merge(FileConfig::default(), f).unwrap();
        assert_eq!(s.link, LinkKind::Veth);
        assert_eq!(s.dns, vec!["10.1.0.53".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(s.pool.unwrap().size(), 11);
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
        let flags = FileConfig { uplink: Some("br1".into()), ..Default::default() };
        let s = Settings::merge(flags, file).unwrap();
        assert_eq!(s.uplink, "br1");
        assert_eq!(s.dns, vec!["10.1.0.1".parse::<Ipv4Addr>().unwrap()], "gateway is the default DNS");
        assert_eq!(s.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn invalid_combinations() {
        let base = || FileConfig { uplink: Some("br0".into()), ..Default::default() };
        assert!(matches!(Settings::merge(FileConfig::default(), FileConfig::default()), Err(ConfigError::NoUplink)));
        let veth = FileConfig { link: Some(LinkKind::Veth), ..base() };
        assert!(matches!(Settings::merge(veth, FileConfig::default()), Err(ConfigError::VethWithoutBridge)));
        let st = FileConfig { addressing: Some(Addressing::Static), ..base() };
        assert!(matches!(Settings::merge(st.clone(), FileConfig::default()), Err(ConfigError::StaticWithoutPool)));
        let st2 = FileConfig { pool: Some("10.0.0.5-10.0.0.9/24".into()), ..st.clone() };
        assert!(matches!(Settings::merge(st2.clone(), FileConfig::default()), Err(ConfigError::StaticWithoutGateway)));
        let st3 = FileConfig { gateway: Some("10.0.0.6".parse().unwrap()), ..st2 };
        assert!(matches!(Settings::merge(st3, FileConfig::default()), Err(ConfigError::Pool(PoolError::GatewayInRange { .. }))));
        let badif = FileConfig { uplink: Some("a/b".into()), ..Default::default() };
        assert!(matches!(Settings::merge(badif, FileConfig::default()), Err(ConfigError::BadIfName(_))));
    }

    #[test]
    fn missing_default_file_is_fine_but_explicit_is_not() {
        let p = Path::new("/nonexistent/sessiond.toml");
        assert_eq!(FileConfig::load(p, false).unwrap(), FileConfig::default());
        assert!(matches!(FileConfig::load(p, true), Err(ConfigError::Read { .. })));
    }
}
