//! What open_session and close_session do, behind a small trait so it can be tested
//! without libpam, root or a real daemon.
use std::ffi::c_int;

use sessiond_client::CgroupOwner;
use sessiond_client::client::{self, ClientError};
use sessiond_client::holder::Holder;
use sessiond_client::proto::{ErrorKind, Request, Response};
use sessiond_client::record::SessionRecord;
use sessiond_client::sid::Sid;

use crate::args::{Args, Fail, SidMode};
use crate::ffi::{PAM_IGNORE, PAM_SESSION_ERR, PAM_SUCCESS};
use crate::refcount;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Err,
    Warning,
    Notice,
    Debug,
}

impl Level {
    pub fn syslog(self) -> c_int {
        match self {
            Level::Err => libc::LOG_ERR,
            Level::Warning => libc::LOG_WARNING,
            Level::Notice => libc::LOG_NOTICE,
            Level::Debug => libc::LOG_DEBUG,
        }
    }
}

/// Everything the module needs from libpam and the system.
pub trait Env {
    fn user(&self) -> Option<String>;
    /// uid and the names of all groups (primary and supplementary) of `name`.
    fn lookup_user(&self, name: &str) -> Result<Option<(u32, Vec<String>)>, String>;
    /// The uid of user `name` (for `users=` / `exclude_users=`), as NSS resolves it.
    fn uid_of(&self, name: &str) -> Result<Option<u32>, String>;
    /// What systemd-logind wrote about its session `id` (`/run/systemd/sessions/ID`, with a
    /// `UID=` line), or None when there is no such file.
    fn logind_session(&self, id: &str) -> Option<String>;
    fn getenv(&self, name: &str) -> Option<String>;
    fn putenv(&self, name: &str, value: &str) -> Result<(), String>;
    fn log(&self, level: Level, msg: &str);
    /// A message for the user (the application's conversation).
    fn tell(&self, error: bool, msg: &str);
    fn set_sid(&self, sid: Option<u32>) -> Result<(), String>;
    fn sid(&self) -> Option<u32>;
    /// Moves the calling process into the session (netns + private mount ns).
    fn enter(&self, netns: &str) -> Result<(), String>;
    /// Moves the calling process back to the network namespace it had before `enter` (nothing
    /// to do if it did not enter).
    fn leave(&self) -> Result<(), String>;
    /// Moves the calling process into a programs-mode session's cgroup (its hooks then apply
    /// to it and to everything it starts).
    fn join_cgroup(&self, dir: &str) -> Result<(), String>;
}

/// Why a session could not be had.
enum Trouble {
    /// The daemon: unreachable, timed out, or said no. Handled per `fail=`.
    Daemon(String),
    /// The sid asked for runs for another owner (or none): ask for a fresh one instead.
    OtherOwner(String),
    /// Something here (the holder count, a bad XDG_SESSION_ID with sid=xdg): always refused.
    Local(String),
}

fn call(args: &Args, req: &Request) -> Result<Response, Trouble> {
    client::call(&args.socket, req, args.timeout).map_err(|e| {
        Trouble::Daemon(match e {
            ClientError::Io { source, .. } if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                format!("sessiond at {} did not answer within {:?}", args.socket.display(), args.timeout)
            }
            other => other.to_string(),
        })
    })
}

fn start(args: &Args, session: Option<Sid>, uid: u32) -> Result<SessionRecord, Trouble> {
    // This process holds the session: if it dies without close_session the daemon stops it.
    match call(args, &Request::Start { session, owner_uid: Some(uid), hold: true, mode: args.mode })? {
        Response::Sessions { sessions } if sessions.len() == 1 => Ok(sessions.into_iter().next().unwrap()),
        Response::Error { kind: ErrorKind::OtherOwner, message } => Err(Trouble::OtherOwner(message)),
        Response::Error { message, .. } => Err(Trouble::Daemon(format!("sessiond refused to start the session: {message}"))),
        other => Err(Trouble::Daemon(format!("unexpected reply from sessiond: {other:?}"))),
    }
}

/// Whether the daemon has session `sid` (of anyone).
fn exists(args: &Args, sid: Sid) -> Result<bool, Trouble> {
    match call(args, &Request::Status { session: Some(sid) })? {
        Response::Sessions { sessions } => Ok(sessions.iter().any(|r| r.session == sid)),
        Response::Error { kind: ErrorKind::NotFound, .. } => Ok(false),
        Response::Error { message, .. } => Err(Trouble::Daemon(format!("sessiond status: {message}"))),
        other => Err(Trouble::Daemon(format!("unexpected reply from sessiond: {other:?}"))),
    }
}

fn stop(args: &Args, sid: Sid) -> Result<(), String> {
    match call(args, &Request::Stop { session: sid }) {
        Ok(Response::Stopped { .. }) => Ok(()),
        Ok(Response::Error { message, .. }) => Err(message),
        Ok(other) => Err(format!("unexpected reply from sessiond: {other:?}")),
        Err(Trouble::Daemon(m) | Trouble::OtherOwner(m) | Trouble::Local(m)) => Err(m),
    }
}

fn local(what: &str) -> impl FnOnce(std::io::Error) -> Trouble + '_ {
    move |e| Trouble::Local(format!("{what}: {e}"))
}

/// Starts (or joins) the session and counts this handle as one of its holders.
fn acquire(env: &dyn Env, args: &Args, wanted: Option<Sid>, uid: u32) -> Result<SessionRecord, Trouble> {
    if let Some(sid) = wanted {
        let mut held = refcount::lock(&args.refdir, sid.get(), args.timeout).map_err(local("locking the holder count"))?;
        let count = held.count().map_err(local("reading the holder count"))?;
        // Join only sessions that PAM logins of the same user hold; anything else with this
        // sid (made by `sessiond start`, a unit, or another user's login) is not ours.
        if count == 0 && exists(args, sid)? {
            env.log(Level::Notice, &format!("session {sid} already exists and is not held by a PAM login; letting sessiond pick a free sid"));
            drop(held);
            return acquire(env, args, None, uid);
        }
        let rec = match start(args, Some(sid), uid) {
            Err(Trouble::OtherOwner(why)) => {
                env.log(Level::Notice, &format!("{why}; letting sessiond pick a free sid"));
                drop(held);
                return acquire(env, args, None, uid);
            }
            other => other?,
        };
        if rec.owner_uid != Some(uid) {
            env.log(Level::Notice, &format!("session {sid} belongs to uid {:?}, not {uid}; letting sessiond pick a free sid", rec.owner_uid));
            drop(held);
            return acquire(env, args, None, uid);
        }
        if let Err(e) = Holder::me().and_then(|me| held.add(me)) {
            if count == 0 {
                let _ = stop(args, sid);
            }
            return Err(Trouble::Local(format!("recording the holder count: {e}")));
        }
        return Ok(rec);
    }
    let rec = match start(args, None, uid) {
        // a sid the daemon picked is free: another owner there is the daemon's fault
        Err(Trouble::OtherOwner(why)) => return Err(Trouble::Daemon(why)),
        other => other?,
    };
    let sid = rec.session;
    let counted = refcount::lock(&args.refdir, sid.get(), args.timeout).and_then(|mut h| h.add(Holder::me()?));
    if let Err(e) = counted {
        let _ = stop(args, sid);
        return Err(Trouble::Local(format!("recording the holder count of session {sid}: {e}")));
    }
    Ok(rec)
}

/// Drops this handle's hold on `sid`; the last holder stops the session.
fn release(env: &dyn Env, args: &Args, sid: Sid) -> Result<(), String> {
    let mut held = refcount::lock(&args.refdir, sid.get(), args.timeout).map_err(|e| format!("locking the holder count of session {sid}: {e}"))?;
    let count = held.count().map_err(|e| e.to_string())?;
    if count > 1 {
        env.log(Level::Debug, &format!("session {sid}: {} holder(s) left", count - 1));
        return Holder::me().and_then(|me| held.remove(me)).map_err(|e| e.to_string());
    }
    let stopped = stop(args, sid);
    // Not a holder any more either way; a failed stop leaves the session to the admin.
    held.clear().map_err(|e| e.to_string())?;
    stopped.map_err(|e| format!("stopping session {sid} (left running): {e}"))
}

/// Where systemd-logind keeps a state file per session.
pub const LOGIND_SESSIONS: &str = "/run/systemd/sessions";

/// The sid to ask for: `XDG_SESSION_ID` when numeric (and allowed) and logind confirms it is
/// this login's session, else the daemon's pick. The PAM environment alone proves nothing:
/// pam_env (`user_readenv`) lets a user set it from `~/.pam_environment`, and with it squat
/// other users' ids. pam_systemd sets it from the session logind made (and wrote to
/// `/run/systemd/sessions/ID`, `UID=` its user) before this module runs, when the stack lists
/// pam_systemd first.
fn wanted_sid(env: &dyn Env, mode: SidMode, uid: u32) -> Result<Option<Sid>, String> {
    if mode == SidMode::Auto {
        return Ok(None);
    }
    let xdg = env.getenv("XDG_SESSION_ID");
    let checked = match xdg.as_deref().map(|v| (v, v.parse::<Sid>())) {
        None => Err("XDG_SESSION_ID is not set (is pam_systemd.so before pam_sessiond.so?)".to_string()),
        Some((v, Err(_))) => Err(format!("XDG_SESSION_ID={v:?} is not a valid session id")),
        Some((v, Ok(sid))) => match env.logind_session(v).as_deref().map(logind_uid) {
            Some(Some(owner)) if owner == uid => Ok(sid),
            Some(Some(owner)) => Err(format!("XDG_SESSION_ID={v} is logind's session of uid {owner}, not of uid {uid}")),
            Some(None) => Err(format!("XDG_SESSION_ID={v}: {LOGIND_SESSIONS}/{v} names no UID")),
            None => {
                Err(format!("XDG_SESSION_ID={v} is not a logind session ({LOGIND_SESSIONS}/{v} does not exist; is pam_systemd.so before pam_sessiond.so?)"))
            }
        },
    };
    match (mode, checked) {
        (_, Ok(sid)) => Ok(Some(sid)),
        (SidMode::Xdg, Err(why)) => Err(format!("sid=xdg, but {why}")),
        (_, Err(why)) => {
            // (a non-numeric id, like logind's "c1", is no sid: nothing to say)
            if xdg.as_deref().is_some_and(|v| v.parse::<Sid>().is_ok()) {
                env.log(Level::Notice, &format!("{why}; letting sessiond pick a free sid"));
            }
            Ok(None)
        }
    }
}

/// The `UID=` of a logind session file.
fn logind_uid(text: &str) -> Option<u32> {
    text.lines().find_map(|l| l.strip_prefix("UID=")).and_then(|v| v.trim().parse().ok())
}

pub fn open_session(env: &dyn Env, args: &Args) -> c_int {
    let Some(user) = env.user() else {
        env.log(Level::Err, "no PAM_USER: refusing the session");
        return PAM_SESSION_ERR;
    };
    let (uid, groups) = match env.lookup_user(&user) {
        Ok(Some(u)) => u,
        Ok(None) => {
            env.log(Level::Err, &format!("no such user {user:?}: refusing the session"));
            return PAM_SESSION_ERR;
        }
        Err(e) => {
            env.log(Level::Err, &format!("looking up user {user:?}: {e}: refusing the session"));
            return PAM_SESSION_ERR;
        }
    };
    // users= / exclude_users= name users; compare uids, which is what NSS makes of any spelling.
    let uid_of = |name: &str| match env.uid_of(name) {
        Ok(u) => u,
        Err(e) => {
            env.log(Level::Warning, &format!("looking up user {name:?} (from users=/exclude_users=): {e}"));
            None
        }
    };
    if let Some(reason) = args.skip_reason(&user, uid, &groups, uid_of) {
        if args.debug {
            env.log(Level::Debug, &format!("not isolating: {reason}"));
        }
        return PAM_IGNORE;
    }
    let wanted = match wanted_sid(env, args.sid, uid) {
        Ok(w) => w,
        Err(e) => {
            env.log(Level::Err, &format!("user {user}: {e}: refusing the session"));
            env.tell(true, "sessiond: cannot set up this session's network; the login is refused.");
            return PAM_SESSION_ERR;
        }
    };
    let rec = match acquire(env, args, wanted, uid) {
        Ok(r) => r,
        Err(Trouble::Daemon(e)) if args.fail == Fail::Open => {
            env.log(
                Level::Err,
                &format!("user {user}: {e}; fail=open: allowing the login WITHOUT network isolation (it shares the host's address and loopback)"),
            );
            env.tell(true, "sessiond: WARNING: this session is NOT network-isolated (the session daemon is unavailable).");
            return PAM_SUCCESS;
        }
        Err(Trouble::Daemon(e) | Trouble::OtherOwner(e) | Trouble::Local(e)) => {
            env.log(Level::Err, &format!("user {user}: {e}; refusing the session (fail=closed)"));
            env.tell(true, "sessiond: cannot set up this session's network; the login is refused.");
            return PAM_SESSION_ERR;
        }
    };
    let sid = rec.session;
    // Remember the hold before entering: if this fails nothing has changed in this process yet.
    if let Err(e) = env.set_sid(Some(sid.get())) {
        let _ = release(env, args, sid);
        env.log(Level::Err, &format!("user {user}: session {sid}: {e}; refusing the session"));
        return PAM_SESSION_ERR;
    }
    // Programs mode: no namespace to enter; the login joins the session's cgroup, unless the
    // hooks are on its logind scope, which the daemon found this very process in.
    let entered = match &rec.programs {
        Some(p) if p.cgroup_owner == CgroupOwner::Logind => Ok(()),
        Some(p) => env.join_cgroup(&p.cgroup),
        None => env.enter(&rec.netns),
    };
    if let Err(e) = entered {
        // A half-entered process must not go on to run the user's shell: always refuse.
        let _ = env.set_sid(None);
        if let Err(r) = release(env, args, sid) {
            env.log(Level::Err, &r);
        }
        env.log(Level::Err, &format!("user {user}: session {sid}: {e}; refusing the session"));
        env.tell(true, "sessiond: cannot enter this session's network; the login is refused.");
        return PAM_SESSION_ERR;
    }
    let mut vars = vec![("SESSIOND_SESSION", sid.to_string()), ("SESSIOND_LOOPBACK", rec.loopback.to_string())];
    if let Some(a) = rec.address {
        vars.push(("SESSIOND_ADDRESS", a.addr().to_string()));
    }
    // The start's answer has the IPv6 facts when the daemon waited for them (wait_for ipv6
    // or both) or the session was up already; otherwise IPv6 completes after the answer.
    let address6 = rec.address6();
    if let Some(a) = address6 {
        vars.push(("SESSIOND_ADDRESS6", a.to_string()));
    }
    for (k, v) in vars {
        if let Err(e) = env.putenv(k, &v) {
            env.log(Level::Warning, &format!("session {sid}: {e}"));
        }
    }
    let addr = rec.address.map(|a| a.addr().to_string()).unwrap_or_else(|| "-".into());
    let place = match &rec.programs {
        Some(p) if p.cgroup_owner == CgroupOwner::Logind => format!("programs mode, on its logind scope {}", p.cgroup),
        Some(p) => format!("programs mode, cgroup {}", p.cgroup),
        None => format!("netns {}", rec.netns),
    };
    let addr6 = address6.map(|a| format!(" address6 {a}")).unwrap_or_default();
    env.log(Level::Notice, &format!("user {user} (uid {uid}): session {sid} {place} address {addr}{addr6} loopback {}", rec.loopback));
    PAM_SUCCESS
}

pub fn close_session(env: &dyn Env, args: &Args) -> c_int {
    let Some(n) = env.sid() else { return PAM_IGNORE };
    let _ = env.set_sid(None); // a second close_session on this handle must not count twice
    let Ok(sid) = Sid::new(u64::from(n)) else { return PAM_SESSION_ERR };
    // sshd calls this from the process that entered the session: out of its namespace first,
    // so that the stop does not find the namespace still held (it would then have to delete
    // the session's interface itself instead of leaving it to the kernel).
    if let Err(e) = env.leave() {
        env.log(Level::Warning, &format!("session {sid}: leaving its network namespace: {e}"));
    }
    match release(env, args, sid) {
        Ok(()) => {
            if args.debug {
                env.log(Level::Debug, &format!("session {sid}: released"));
            }
            PAM_SUCCESS
        }
        Err(e) => {
            env.log(Level::Err, &e);
            PAM_SESSION_ERR
        }
    }
}

#[cfg(test)]
mod tests;
