//! `sessiond exec`: run a command inside a session, as root or, with `--user`, as a user who
//! gets what a login gives (`su -l`, `machinectl shell`): their groups, a clean login
//! environment, their home as the working directory, and no hold on root's terminal.
//!
//! The process that entered the session stays root and supervises; the user's program runs in
//! a child that first becomes the user. With no `unsafe` (so no `pre_exec`), that child is
//! this binary again (the hidden `__exec-as-user` command, `become_user`): it leaves root's
//! session (`setsid`), takes the new pty as its controlling terminal, sets the user's groups
//! (initgroups), gid and uid, changes to the home directory and execs the command. Root's
//! terminal is never open in it: when stdin is a terminal the child gets a fresh pty that
//! `relay` connects to it; otherwise it inherits stdin/stdout/stderr, but in a session of its
//! own, so the terminal they may name is not its controlling one (TIOCSTI needs that).
use std::ffi::{CString, OsString};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::unistd::{Gid, Uid};

use crate::relay::{self, RelayError};
use crate::state::SessionRecord;

/// The `sessiond` binary, run again for the last step (whatever name it was started by).
const SELF_EXE: &str = "/proc/self/exe";
/// The hidden command that does the last step.
pub const AS_USER_CMD: &str = "__exec-as-user";

/// Debian's login.defs ENV_PATH and ENV_SUPATH, what `su -l` and login give.
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games";
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("--preserve-env: {0}")]
    Preserve(String),
    #[error(transparent)]
    Enter(#[from] sessiond_client::enter::EnterError),
    #[error("cannot start {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error("{step}: {source}")]
    Become { step: String, source: nix::Error },
    #[error("cannot run {cmd}: {source}")]
    Run { cmd: String, source: std::io::Error },
    #[error("joining the session's cgroup {cgroup}: {source}")]
    JoinCgroup { cgroup: String, source: std::io::Error },
}

/// Puts this process into the session: its namespace, or a programs-mode session's cgroup
/// (whose hooks then apply to it and to the command).
fn enter(rec: &SessionRecord) -> Result<(), ExecError> {
    match &rec.programs {
        Some(p) => std::fs::write(std::path::Path::new(&p.cgroup).join("cgroup.procs"), std::process::id().to_string())
            .map_err(|source| ExecError::JoinCgroup { cgroup: p.cgroup.clone(), source }),
        None => Ok(sessiond_client::enter::enter_session(&rec.netns)?),
    }
}

impl ExecError {
    /// A bad `--preserve-env` list is a usage error.
    pub fn is_usage(&self) -> bool {
        matches!(self, ExecError::Preserve(_))
    }
}

/// Who the command runs as: the parts of the passwd entry a login uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl From<nix::unistd::User> for Account {
    fn from(u: nix::unistd::User) -> Account {
        Account { name: u.name, uid: u.uid, gid: u.gid, home: u.dir, shell: u.shell }
    }
}

/// The variables a command in the session gets from it.
pub fn session_vars(rec: &SessionRecord) -> Vec<(&'static str, String)> {
    let mut v = vec![("SESSIOND_SESSION", rec.session.to_string()), ("SESSIOND_LOOPBACK", rec.loopback.to_string())];
    if let Some(a) = rec.address {
        v.push(("SESSIOND_ADDRESS", a.addr().to_string()));
    }
    if let Some(a) = rec.address6() {
        v.push(("SESSIOND_ADDRESS6", a.to_string()));
    }
    v
}

/// The variables that say who the user is: taken from the account, never from the caller.
fn is_identity(name: &str) -> bool {
    matches!(name, "HOME" | "USER" | "LOGNAME" | "SHELL") || name.starts_with("SESSIOND_")
}

/// What the user's program starts with: the login variables (HOME, USER, LOGNAME, SHELL, PATH,
/// and TERM when the caller has one), the session's, and the caller's variables named in
/// `preserve` (when set; PATH and TERM among them replace the login's). Nothing else of root's
/// environment.
pub fn login_env(
    acct: &Account,
    session: &[(&'static str, String)],
    caller: impl Fn(&str) -> Option<OsString>,
    preserve: &[String],
) -> Result<Vec<(String, OsString)>, ExecError> {
    for name in preserve {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(ExecError::Preserve(format!("{name:?} is not a variable name")));
        }
        if is_identity(name) {
            return Err(ExecError::Preserve(format!("{name} comes from the user's account or the session; it cannot be preserved")));
        }
    }
    let shell = if acct.shell.as_os_str().is_empty() { PathBuf::from("/bin/sh") } else { acct.shell.clone() };
    let path = if acct.uid.is_root() { ROOT_PATH } else { USER_PATH };
    let mut env: Vec<(String, OsString)> = vec![
        ("HOME".into(), acct.home.clone().into_os_string()),
        ("USER".into(), acct.name.clone().into()),
        ("LOGNAME".into(), acct.name.clone().into()),
        ("SHELL".into(), shell.into_os_string()),
        ("PATH".into(), path.into()),
    ];
    if let Some(term) = caller("TERM") {
        env.push(("TERM".into(), term));
    }
    env.extend(session.iter().map(|(k, v)| (k.to_string(), OsString::from(v))));
    for name in preserve {
        if let Some(v) = caller(name) {
            env.retain(|(k, _)| k != name);
            env.push((name.clone(), v));
        }
    }
    Ok(env)
}

/// Runs `cmd` in the session `rec` (already looked up; the caller is root): as root in place
/// (the process becomes the command), or as `user` under this process's supervision. Returns
/// the exit status to give: the command's, or 128 + the signal that ended it.
pub fn run(rec: &SessionRecord, user: Option<Account>, preserve: &[String], cmd: &[String]) -> Result<i32, ExecError> {
    let Some(acct) = user else {
        enter(rec)?;
        let e = Command::new(&cmd[0]).args(&cmd[1..]).envs(session_vars(rec)).exec();
        return Err(ExecError::Run { cmd: cmd[0].clone(), source: e });
    };
    let env = login_env(&acct, &session_vars(rec), |k| std::env::var_os(k), preserve)?;
    enter(rec)?;
    let stdin = std::io::stdin();
    let terminal = nix::unistd::isatty(&stdin).unwrap_or(false);
    let mut child = Command::new(SELF_EXE);
    child
        .arg(AS_USER_CMD)
        .args(["--user", &acct.name, "--uid", &acct.uid.to_string(), "--gid", &acct.gid.to_string()])
        .arg("--home")
        .arg(&acct.home)
        .args(terminal.then_some("--ctty"))
        .arg("--")
        .args(cmd)
        .env_clear()
        .envs(env)
        // root's working directory is none of the user's business (the child moves on to home)
        .current_dir("/");
    // Signals this process relays are held from before the child exists, so none is missed
    // (the child clears the mask it inherits).
    let signals = relay::Signals::block()?;
    let status = if terminal {
        let pty = relay::Pty::open_like(&stdin)?;
        child.stdin(Stdio::from(pty.slave_fd()?)).stdout(Stdio::from(pty.slave_fd()?)).stderr(Stdio::from(pty.slave_fd()?));
        let spawned = child.spawn().map_err(|source| ExecError::Spawn { what: cmd[0].clone(), source })?;
        relay::relay(spawned, pty, &stdin, signals)?
    } else {
        let spawned = child.spawn().map_err(|source| ExecError::Spawn { what: cmd[0].clone(), source })?;
        relay::wait(spawned, signals)?
    };
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// What `__exec-as-user` is told by the supervising `exec`.
#[derive(clap::Args, Debug)]
pub struct AsUser {
    /// User name (for initgroups)
    #[arg(long)]
    pub user: String,
    /// uid to become
    #[arg(long)]
    pub uid: u32,
    /// gid to become
    #[arg(long)]
    pub gid: u32,
    /// Working directory (the user's home)
    #[arg(long)]
    pub home: PathBuf,
    /// Make stdin (a fresh pty) the controlling terminal
    #[arg(long)]
    pub ctty: bool,
    /// The command and its arguments (after --)
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

/// The child's steps, as root, in this order: a session of its own (off root's terminal), the
/// pty as controlling terminal, the user's groups, gid, uid (for good: real, effective and
/// saved), the home directory (as the user, like login: a home root may enter but the user
/// may not is no home), an empty signal mask, then the command, with the environment the
/// parent set. Returns only on failure.
pub fn become_user(a: &AsUser) -> ExecError {
    let step = |step: &str| {
        let step = step.to_string();
        move |source| ExecError::Become { step, source }
    };
    let r = (|| {
        nix::unistd::setsid().map_err(step("setsid"))?;
        if a.ctty {
            rustix::process::ioctl_tiocsctty(std::io::stdin())
                .map_err(|e| step("make the pty the controlling terminal")(nix::Error::from_raw(e.raw_os_error())))?;
        }
        let name = CString::new(a.user.clone()).map_err(|_| step("initgroups")(nix::Error::EINVAL))?;
        nix::unistd::initgroups(&name, Gid::from_raw(a.gid)).map_err(step(&format!("initgroups for {}", a.user)))?;
        nix::unistd::setgid(Gid::from_raw(a.gid)).map_err(step("setgid"))?;
        nix::unistd::setuid(Uid::from_raw(a.uid)).map_err(step("setuid"))?;
        if let Err(e) = std::env::set_current_dir(&a.home) {
            eprintln!("sessiond: warning: cannot change to the home directory {}: {e}; using /", a.home.display());
            nix::unistd::chdir("/").map_err(step("chdir /"))?;
        }
        Ok::<(), ExecError>(())
    })();
    if let Err(e) = r {
        return e;
    }
    // The supervisor blocks the signals it relays, and a spawned child inherits its mask: the
    // user's program must start with none blocked (else ^C would not stop anything). std's
    // exec restores SIGPIPE, which Rust ignores.
    if let Err(e) = nix::sys::signal::SigSet::empty().thread_set_mask() {
        return ExecError::Become { step: "clearing the signal mask".into(), source: e };
    }
    let e = Command::new(&a.cmd[0]).args(&a.cmd[1..]).exec();
    ExecError::Run { cmd: a.cmd[0].clone(), source: e }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn alice() -> Account {
        Account { name: "alice".into(), uid: Uid::from_raw(1000), gid: Gid::from_raw(1000), home: "/home/alice".into(), shell: "/bin/bash".into() }
    }

    fn caller(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).map(OsString::from)
    }

    fn as_map(env: Vec<(String, OsString)>) -> BTreeMap<String, String> {
        env.into_iter().map(|(k, v)| (k, v.into_string().unwrap())).collect()
    }

    #[test]
    fn the_user_gets_a_login_environment_and_nothing_of_roots() {
        let root = caller(&[
            ("HOME", "/root"),
            ("USER", "root"),
            ("PATH", "/root/bin:/usr/sbin"),
            ("TERM", "xterm-256color"),
            ("AWS_SECRET", "s3cr3t"),
            ("LD_PRELOAD", "/x.so"),
        ]);
        let session = vec![("SESSIOND_SESSION", "3".to_string()), ("SESSIOND_LOOPBACK", "127.0.0.4".to_string())];
        let env = as_map(login_env(&alice(), &session, &root, &[]).unwrap());
        let want: BTreeMap<String, String> = [
            ("HOME", "/home/alice"),
            ("USER", "alice"),
            ("LOGNAME", "alice"),
            ("SHELL", "/bin/bash"),
            ("PATH", USER_PATH),
            ("TERM", "xterm-256color"),
            ("SESSIOND_SESSION", "3"),
            ("SESSIOND_LOOPBACK", "127.0.0.4"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, want);
        // no TERM without one; an empty shell is /bin/sh
        let acct = Account { shell: PathBuf::new(), ..alice() };
        let env = as_map(login_env(&acct, &[], caller(&[]), &[]).unwrap());
        assert!(!env.contains_key("TERM"));
        assert_eq!(env["SHELL"], "/bin/sh");
    }

    #[test]
    fn preserve_env_keeps_what_it_names_and_never_the_identity() {
        let root = caller(&[("PATH", "/opt/bin"), ("LANG", "C.UTF-8"), ("HOME", "/root")]);
        let env = as_map(login_env(&alice(), &[], &root, &["LANG".into(), "PATH".into(), "UNSET_ONE".into()]).unwrap());
        assert_eq!((env["LANG"].as_str(), env["PATH"].as_str()), ("C.UTF-8", "/opt/bin"));
        assert!(!env.contains_key("UNSET_ONE"));
        assert_eq!(env.len(), 6, "{env:?}");
        for bad in ["HOME", "USER", "LOGNAME", "SHELL", "SESSIOND_SESSION", "", "A=B"] {
            let e = login_env(&alice(), &[], &root, &[bad.to_string()]).unwrap_err();
            assert!(e.is_usage() && e.to_string().starts_with("--preserve-env"), "{bad}: {e}");
        }
    }

    #[test]
    fn root_gets_roots_path() {
        let acct = Account { name: "root".into(), uid: Uid::from_raw(0), gid: Gid::from_raw(0), home: "/root".into(), shell: "/bin/bash".into() };
        assert_eq!(as_map(login_env(&acct, &[], caller(&[]), &[]).unwrap())["PATH"], ROOT_PATH);
    }
}
