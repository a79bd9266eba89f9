//! Module arguments (`session required pam_sessiond.so ARG...`) and who gets a session.
use std::path::PathBuf;
use std::time::Duration;

/// Groups whose members are left on the host unless `exclude_groups=` says otherwise:
/// administrators keep the host's own identity so they can manage it.
pub const DEFAULT_EXCLUDE_GROUPS: &[&str] = &["sudo", "wheel", "adm"];
/// Longer than the daemon's default DHCP timeout plus a start's other work: a login that gave
/// up on a slow but working DHCP server would be refused (and its start rolled back).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(sessiond_client::DEFAULT_DHCP_TIMEOUT_SECS + sessiond_client::START_MARGIN_SECS);
/// `timeout=` bounds: below the minimum no daemon answers and every login would fail; above
/// the maximum a hung daemon would hold logins for longer than any client waits.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_REFDIR: &str = "/run/sessiond/pam";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidMode {
    /// `XDG_SESSION_ID` when it is a valid sid, else let the daemon pick.
    Default,
    /// Always `XDG_SESSION_ID`; refuse the session without one.
    Xdg,
    /// Always let the daemon pick the lowest free sid.
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    /// Daemon unreachable or refusing: log loudly, let the login through on the host's network.
    Open,
    /// Daemon unreachable or refusing: refuse the session (PAM_SESSION_ERR).
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// `users=a,b`: only these users (or members of `groups=`) are virtualized.
    pub users: Option<Vec<String>>,
    /// `groups=g1,g2`: only members of these groups (or `users=`) are virtualized.
    pub groups: Option<Vec<String>>,
    /// `exclude_users=x,y`: never virtualized.
    pub exclude_users: Vec<String>,
    /// `exclude_groups=...`: members never virtualized (default sudo,wheel,adm; empty: none).
    pub exclude_groups: Vec<String>,
    /// `include_root`: virtualize uid 0 too (excluded by default).
    pub include_root: bool,
    pub sid: SidMode,
    pub timeout: Duration,
    pub fail: Fail,
    pub socket: PathBuf,
    /// `refdir=`: where the per-sid holder counts live (default /run/sessiond/pam).
    pub refdir: PathBuf,
    /// `debug`: also log to stderr, and log skipped users.
    pub debug: bool,
    /// `mode=namespace|programs`: how this stack's sessions are built; None: the daemon's
    /// `mode`.
    pub mode: Option<sessiond_client::Mode>,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            users: None,
            groups: None,
            exclude_users: Vec::new(),
            exclude_groups: DEFAULT_EXCLUDE_GROUPS.iter().map(|s| s.to_string()).collect(),
            include_root: false,
            sid: SidMode::Default,
            timeout: DEFAULT_TIMEOUT,
            fail: Fail::Closed,
            socket: PathBuf::from(sessiond_client::DEFAULT_SOCKET),
            refdir: PathBuf::from(DEFAULT_REFDIR),
            debug: false,
            mode: None,
        }
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// `timeout=SECONDS`: a finite number within MIN_TIMEOUT..=MAX_TIMEOUT (1e-10 is not "no
/// wait", and inf is not "wait for ever").
fn parse_timeout(t: &str) -> Result<Duration, String> {
    let secs: f64 = t.parse().map_err(|_| format!("timeout={t}: expected a number of seconds, such as 10 or 2.5"))?;
    let (min, max) = (MIN_TIMEOUT.as_secs_f64(), MAX_TIMEOUT.as_secs_f64());
    if !secs.is_finite() {
        Err(format!("timeout={t}: not a finite number of seconds"))
    } else if secs <= 0.0 {
        Err(format!("timeout={t}: must be more than zero seconds"))
    } else if secs < min {
        Err(format!("timeout={t}: below the minimum of {min} s"))
    } else if secs > max {
        Err(format!("timeout={t}: above the maximum of {max} s"))
    } else {
        Ok(Duration::from_secs_f64(secs))
    }
}

impl Args {
    /// Parses the module arguments. Unknown or malformed ones are errors: a mistyped policy
    /// argument must not silently widen or narrow who is isolated.
    pub fn parse<S: AsRef<str>>(argv: &[S]) -> Result<Args, String> {
        let mut a = Args::default();
        for arg in argv {
            let arg = arg.as_ref();
            let (k, v) = match arg.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (arg, None),
            };
            let need = || v.ok_or_else(|| format!("argument {k} needs a value ({k}=...)"));
            match k {
                "users" => a.users = Some(list(need()?)),
                "groups" => a.groups = Some(list(need()?)),
                "exclude_users" => a.exclude_users = list(need()?),
                "exclude_groups" => a.exclude_groups = list(need()?),
                "include_root" if v.is_none() => a.include_root = true,
                "debug" if v.is_none() => a.debug = true,
                "sid" => {
                    a.sid = match need()? {
                        "xdg" => SidMode::Xdg,
                        "auto" => SidMode::Auto,
                        o => return Err(format!("sid={o}: expected sid=xdg or sid=auto")),
                    }
                }
                "fail" => {
                    a.fail = match need()? {
                        "open" => Fail::Open,
                        "closed" => Fail::Closed,
                        o => return Err(format!("fail={o}: expected fail=open or fail=closed")),
                    }
                }
                "timeout" => a.timeout = parse_timeout(need()?)?,
                "mode" => a.mode = Some(need()?.parse().map_err(|e| format!("mode: {e}"))?),
                "socket" => {
                    let p = need()?;
                    if !p.starts_with('/') {
                        return Err(format!("socket={p}: expected an absolute path"));
                    }
                    a.socket = PathBuf::from(p);
                }
                "refdir" => {
                    let p = need()?;
                    if !p.starts_with('/') {
                        return Err(format!("refdir={p}: expected an absolute path"));
                    }
                    a.refdir = PathBuf::from(p);
                }
                _ => return Err(format!("unknown argument {arg:?}")),
            }
        }
        Ok(a)
    }

    /// None: virtualize. Some(reason): leave this user on the host.
    /// Exclusions win over `users=`/`groups=`. `users=` and `exclude_users=` match by uid
    /// (`uid_of` resolves the names listed), not by the name the user typed: with
    /// case-insensitive NSS "ALICE" is alice, and must not escape `users=alice`.
    pub fn skip_reason(&self, name: &str, uid: u32, groups: &[String], uid_of: impl Fn(&str) -> Option<u32>) -> Option<String> {
        if uid == 0 && !self.include_root {
            return Some("root is not virtualized (add include_root to change that)".into());
        }
        let listed = |names: &[String]| names.iter().any(|n| uid_of(n) == Some(uid));
        if listed(&self.exclude_users) {
            return Some(format!("user {name} (uid {uid}) is in exclude_users"));
        }
        if let Some(g) = groups.iter().find(|g| self.exclude_groups.contains(g)) {
            return Some(format!("user {name} is in excluded group {g}"));
        }
        if self.users.is_none() && self.groups.is_none() {
            return None;
        }
        let by_user = self.users.as_deref().is_some_and(listed);
        let by_group = self.groups.as_ref().is_some_and(|gs| groups.iter().any(|g| gs.contains(g)));
        if by_user || by_group { None } else { Some(format!("user {name} is not selected by users=/groups=")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Case-insensitive NSS, as sssd or winbind can be configured.
    fn uid_of(name: &str) -> Option<u32> {
        [("root", 0), ("alice", 1000), ("bob", 1001), ("admin", 1006), ("dave", 1004), ("erin", 1005), ("ops", 1002), ("log", 1003)]
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, u)| u)
    }

    #[test]
    fn defaults() {
        let a = Args::parse::<&str>(&[]).unwrap();
        assert_eq!(a, Args::default());
        assert_eq!(a.fail, Fail::Closed);
        assert_eq!(a.timeout, Duration::from_secs(45));
        assert_eq!(a.socket, PathBuf::from("/run/sessiond/sessiond.sock"));
        assert_eq!(a.exclude_groups, g(&["sudo", "wheel", "adm"]));
    }

    #[test]
    fn parses_every_argument() {
        let a = Args::parse(&[
            "users=alice, bob",
            "groups=remote",
            "exclude_users=carol",
            "exclude_groups=",
            "include_root",
            "sid=auto",
            "fail=open",
            "timeout=2.5",
            "socket=/run/x.sock",
            "refdir=/run/refs",
            "debug",
        ])
        .unwrap();
        assert_eq!(a.users, Some(g(&["alice", "bob"])));
        assert_eq!(a.groups, Some(g(&["remote"])));
        assert_eq!(a.exclude_users, g(&["carol"]));
        assert!(a.exclude_groups.is_empty());
        assert!(a.include_root && a.debug);
        assert_eq!((a.sid, a.fail), (SidMode::Auto, Fail::Open));
        assert_eq!(a.timeout, Duration::from_millis(2500));
        assert_eq!(a.socket, PathBuf::from("/run/x.sock"));
        assert_eq!(a.refdir, PathBuf::from("/run/refs"));
        assert_eq!(Args::parse(&["sid=xdg"]).unwrap().sid, SidMode::Xdg);
    }

    #[test]
    fn rejects_bad_arguments() {
        for bad in ["fail=opne", "sid=7", "timeout=0", "timeout=x", "socket=rel.sock", "users", "debug=1", "exclude_user=x", "nonsense"] {
            assert!(Args::parse(&[bad]).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn timeouts_are_finite_positive_and_sane() {
        for (bad, why) in [
            ("timeout=1e-10", "below the minimum"),
            ("timeout=0.05", "below the minimum"),
            ("timeout=0", "more than zero"),
            ("timeout=-0", "more than zero"),
            ("timeout=-3", "more than zero"),
            ("timeout=NaN", "finite"),
            ("timeout=inf", "finite"),
            ("timeout=-inf", "finite"),
            ("timeout=1e300", "above the maximum"),
            ("timeout=3601", "above the maximum"),
            ("timeout=", "expected a number"),
        ] {
            let e = Args::parse(&[bad]).unwrap_err();
            assert!(e.contains(why) && e.starts_with(bad), "{bad}: {e}");
        }
        assert_eq!(Args::parse(&["timeout=0.1"]).unwrap().timeout, MIN_TIMEOUT);
        assert_eq!(Args::parse(&["timeout=3600"]).unwrap().timeout, MAX_TIMEOUT);
    }

    #[test]
    fn who_is_virtualized() {
        let a = Args::default();
        assert!(a.skip_reason("alice", 1000, &g(&["alice"]), uid_of).is_none());
        assert!(a.skip_reason("root", 0, &g(&["root"]), uid_of).unwrap().contains("root"));
        assert!(a.skip_reason("admin", 1001, &g(&["admin", "sudo"]), uid_of).unwrap().contains("sudo"));
        assert!(a.skip_reason("ops", 1002, &g(&["wheel"]), uid_of).is_some());
        assert!(a.skip_reason("log", 1003, &g(&["adm"]), uid_of).is_some());

        let a = Args::parse(&["users=alice", "groups=remote", "exclude_users=bob", "exclude_groups=staff", "include_root"]).unwrap();
        assert!(a.skip_reason("alice", 1000, &[], uid_of).is_none());
        assert!(a.skip_reason("dave", 1004, &g(&["remote"]), uid_of).is_none());
        assert!(a.skip_reason("erin", 1005, &g(&["users"]), uid_of).unwrap().contains("not selected"));
        assert!(a.skip_reason("bob", 1001, &g(&["remote"]), uid_of).unwrap().contains("exclude_users"), "exclusions win");
        assert!(a.skip_reason("alice", 1000, &g(&["staff"]), uid_of).is_some(), "exclusions win over users=");
        assert!(a.skip_reason("admin", 1006, &g(&["sudo", "remote"]), uid_of).is_none(), "sudo no longer excluded");
        assert!(a.skip_reason("root", 0, &g(&["remote"]), uid_of).is_none(), "include_root");
    }

    #[test]
    fn users_lists_match_by_uid_whatever_the_spelling() {
        let a = Args::parse(&["users=alice", "exclude_users=Bob"]).unwrap();
        // the login typed "ALICE"; case-insensitive NSS made it uid 1000
        assert!(a.skip_reason("ALICE", 1000, &[], uid_of).is_none(), "ALICE is alice: selected");
        assert!(a.skip_reason("BOB", 1001, &g(&["remote"]), uid_of).unwrap().contains("exclude_users"), "BOB is excluded bob");
        assert!(a.skip_reason("erin", 1005, &[], uid_of).unwrap().contains("not selected"));
        // a listed name that no longer resolves selects and excludes no one
        let a = Args::parse(&["users=gone", "exclude_users=gone"]).unwrap();
        assert!(a.skip_reason("gone", 4242, &[], uid_of).unwrap().contains("not selected"));
    }
}
