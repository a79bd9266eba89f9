//! pam_sessiond.so: a PAM `session` module that gives each login session its own sessiond
//! network namespace (address, loopback, /etc/hosts and resolv.conf).
//!
//! open_session asks the daemon (blocking, over its Unix control socket; no tokio in the
//! host process) to start a session for the user, then moves the calling process into it:
//! sshd's privileged session process calls this before it forks the user's shell, so the
//! shell inherits the netns and the private mount namespace. close_session drops this
//! login's hold and stops the session when the last holder leaves.
//!
//! Every entry point catches panics and turns them into a PAM error: a bug here must
//! never take sshd down. The entry points and every other FFI step are in `ffi.rs`.
use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};

pub mod args;
pub mod ffi;
pub mod module;
pub mod refcount;

use args::Args;
use ffi::{Handle, PAM_SESSION_ERR};
use module::{Env, Level};

struct Real<'a> {
    h: &'a Handle,
    debug: bool,
}

impl Env for Real<'_> {
    fn user(&self) -> Option<String> {
        self.h.user()
    }
    fn lookup_user(&self, name: &str) -> Result<Option<(u32, Vec<String>)>, String> {
        use nix::unistd::{Group, User, getgrouplist};
        let Some(u) = User::from_name(name).map_err(|e| e.to_string())? else { return Ok(None) };
        let cname = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
        let gids = getgrouplist(&cname, u.gid).map_err(|e| format!("getgrouplist: {e}"))?;
        let mut names = Vec::new();
        for gid in gids {
            if let Ok(Some(g)) = Group::from_gid(gid) {
                names.push(g.name);
            }
        }
        Ok(Some((u.uid.as_raw(), names)))
    }
    fn uid_of(&self, name: &str) -> Result<Option<u32>, String> {
        Ok(nix::unistd::User::from_name(name).map_err(|e| e.to_string())?.map(|u| u.uid.as_raw()))
    }
    fn logind_session(&self, id: &str) -> Option<String> {
        // Only ever a number here (a sid), so never a path of its own.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        std::fs::read_to_string(std::path::Path::new(module::LOGIND_SESSIONS).join(id)).ok()
    }
    fn getenv(&self, name: &str) -> Option<String> {
        self.h.getenv(name)
    }
    fn putenv(&self, name: &str, value: &str) -> Result<(), String> {
        self.h.putenv(name, value)
    }
    fn log(&self, level: Level, msg: &str) {
        if level == Level::Debug && !self.debug {
            return;
        }
        self.h.syslog(level.syslog(), msg);
        if self.debug {
            eprintln!("pam_sessiond: {msg}");
        }
    }
    fn tell(&self, error: bool, msg: &str) {
        self.h.tell(error, msg)
    }
    fn set_sid(&self, sid: Option<u32>) -> Result<(), String> {
        self.h.set_sid(sid)
    }
    fn sid(&self) -> Option<u32> {
        self.h.sid()
    }
    fn enter(&self, netns: &str) -> Result<(), String> {
        // Close-on-exec (std's default): the user's shell, exec'd by a child, does not get it.
        let home = std::fs::File::open("/proc/self/ns/net").ok();
        sessiond_client::enter::enter_session(netns).map_err(|e| e.to_string())?;
        *HOME_NETNS.lock().unwrap_or_else(|p| p.into_inner()) = home;
        Ok(())
    }
    fn join_cgroup(&self, dir: &str) -> Result<(), String> {
        // The daemon names it; still, only ever an absolute cgroup.procs is written.
        if !dir.starts_with('/') {
            return Err(format!("joining cgroup {dir:?}: not an absolute path"));
        }
        let procs = std::path::Path::new(dir).join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string()).map_err(|e| format!("joining cgroup {dir}: {e}"))
    }
    fn leave(&self) -> Result<(), String> {
        let home = HOME_NETNS.lock().unwrap_or_else(|p| p.into_inner()).take();
        match home {
            Some(f) => sessiond_client::ns::enter_netns(&f).map_err(|e| format!("setns: {e}")),
            None => Ok(()),
        }
    }
}

/// The network namespace this process had before `enter` (one login per process: sshd's
/// session process opens and closes the same session).
static HOME_NETNS: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

/// What an entry point does: `module::open_session` or `module::close_session`.
pub type Entry = fn(&dyn Env, &Args) -> c_int;

/// Parses the arguments and runs `f`, turning a panic into PAM_SESSION_ERR. Called by the
/// entry points in `ffi` (which own every FFI step) with the handle and a way to read argv.
fn run(name: &str, h: &Handle, argv: impl FnOnce() -> Vec<String>, f: Entry) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| match Args::parse(&argv()) {
        Ok(a) => f(&Real { h, debug: a.debug }, &a),
        Err(e) => {
            h.syslog(libc::LOG_ERR, &format!("{name}: bad module arguments: {e}; refusing the session (service {:?})", h.service()));
            PAM_SESSION_ERR
        }
    }));
    match r {
        Ok(code) => code,
        Err(p) => {
            let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            let _ = catch_unwind(AssertUnwindSafe(|| h.syslog(libc::LOG_CRIT, &format!("{name}: internal error (panic: {what}); refusing"))));
            PAM_SESSION_ERR
        }
    }
}
