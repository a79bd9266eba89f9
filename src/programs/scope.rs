//! pam_systemd's `session-N.scope`: the cgroup logind put a login in. A programs-mode session
//! whose login is in one attaches its hooks there (next to systemd's own programs: bpf links
//! always stack) instead of making a cgroup of its own for the login to join, so the login
//! stays in its scope, where logind and `loginctl` expect it.
//!
//! No path is taken from the client. The daemon reads the cgroup of the process that asked
//! (its pid from SO_PEERCRED: `holders::peer`) from /proc itself, and takes it only when it is
//! exactly `/user.slice/user-UID.slice/session-ID.scope` with UID the session's owner, a
//! directory under the unified hierarchy's root. Anything else is no scope to attach to: the
//! session gets sessiond's own cgroup (`cgroup.rs`), and the caller logs why.
use std::path::{Path, PathBuf};

use crate::holders::Holder;
use crate::sid::Sid;

/// Why the requester's cgroup is not a logind scope the session may use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotAScope {
    #[error("the session has no owner uid")]
    NoOwner,
    #[error("no process asked (not a holding start)")]
    NoRequester,
    #[error("cannot read the requester's cgroup: {0}")]
    Unreadable(String),
    #[error("the requester exited before its cgroup was read")]
    Exited,
    #[error("the requester has no cgroup v2 entry in /proc/PID/cgroup")]
    NoUnified,
    #[error("the requester's cgroup {0} is not a logind session scope (/user.slice/user-UID.slice/session-ID.scope)")]
    NotAScope(String),
    #[error("the requester's cgroup {path} is the scope of uid {uid}, not of the session's owner (uid {owner})")]
    OtherUser { path: String, uid: u32, owner: u32 },
    #[error("the requester's scope {0} is not a directory under the cgroup v2 root")]
    Missing(PathBuf),
    #[error("the requester's scope {0} already carries session {1}'s hooks")]
    Taken(PathBuf, Sid),
}

/// The logind scope in `proc_cgroup` (the text of /proc/PID/cgroup), as a path relative to
/// the cgroup v2 root, if it is `owner`'s: `user.slice/user-UID.slice/session-ID.scope`.
pub fn scope_in(proc_cgroup: &str, owner: u32) -> Result<String, NotAScope> {
    let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).ok_or(NotAScope::NoUnified)?;
    let not = || NotAScope::NotAScope(path.to_string());
    // Exactly three plain components: never the root, never `..`, never anything else above
    // or below the scope (a cgroup a user made in their delegated user@UID.service is not one).
    let parts: Vec<&str> = path.strip_prefix('/').ok_or_else(not)?.split('/').collect();
    let [slice, user, session] = parts[..] else { return Err(not()) };
    let id = session.strip_prefix("session-").and_then(|s| s.strip_suffix(".scope")).ok_or_else(not)?;
    if slice != "user.slice" || id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(not());
    }
    let digits = user.strip_prefix("user-").and_then(|s| s.strip_suffix(".slice")).ok_or_else(not)?;
    // (u32::from_str takes a leading '+': the digits alone are a uid as systemd writes it)
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not());
    }
    let uid: u32 = digits.parse().map_err(|_| not())?;
    if uid != owner {
        return Err(NotAScope::OtherUser { path: path.to_string(), uid, owner });
    }
    Ok(format!("{slice}/{user}/{session}"))
}

/// The logind scope `requester` is in, under the cgroup v2 hierarchy at `root`, if it is
/// `owner`'s scope. The start time of `requester` is checked after the read, so the cgroup
/// read is that very process's, not that of another that took its pid.
pub fn of_requester(root: &Path, requester: Option<Holder>, owner: Option<u32>) -> Result<PathBuf, NotAScope> {
    let owner = owner.ok_or(NotAScope::NoOwner)?;
    let requester = requester.ok_or(NotAScope::NoRequester)?;
    let text = std::fs::read_to_string(format!("/proc/{}/cgroup", requester.pid)).map_err(|e| NotAScope::Unreadable(e.to_string()))?;
    if !requester.is_alive() {
        return Err(NotAScope::Exited);
    }
    let dir = root.join(scope_in(&text, owner)?);
    if !dir.is_dir() {
        return Err(NotAScope::Missing(dir));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owners_session_scope_is_taken() {
        let ok = |t: &str| scope_in(t, 1000);
        assert_eq!(ok("0::/user.slice/user-1000.slice/session-3.scope\n").as_deref(), Ok("user.slice/user-1000.slice/session-3.scope"));
        // hybrid: the v1 lines come first
        let hybrid = "12:pids:/user.slice/user-1000.slice/session-c2.scope\n1:name=systemd:/user.slice/user-1000.slice/session-c2.scope\n0::/user.slice/user-1000.slice/session-c2.scope\n";
        assert_eq!(ok(hybrid).as_deref(), Ok("user.slice/user-1000.slice/session-c2.scope"));
        assert_eq!(
            ok("0::/user.slice/user-1001.slice/session-4.scope"),
            Err(NotAScope::OtherUser { path: "/user.slice/user-1001.slice/session-4.scope".into(), uid: 1001, owner: 1000 })
        );
        assert_eq!(ok("1:name=systemd:/user.slice/user-1000.slice/session-3.scope\n"), Err(NotAScope::NoUnified));
        for not in [
            "0::/",
            "0::/system.slice/ssh.service",
            "0::/system.slice/sessiond.service/sessiond-3",
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope",
            // a cgroup the user made under their delegated user@UID.service, named like a scope
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/user-1000.slice/session-9.scope",
            "0::/user.slice/user-1000.slice/session-3.scope/sub",
            "0::/user.slice/user-1000.slice/../user-1000.slice/session-3.scope",
            "0::/user.slice/user-1000.slice/session-.scope",
            "0::/user.slice/user-1000.slice/session-3.scope (deleted)",
            "0::/user.slice/user-+1000.slice/session-3.scope",
            "0::/user.slice/user-.slice/session-3.scope",
            "0::/machine.slice/user.slice/user-1000.slice/session-3.scope",
            "0::user.slice/user-1000.slice/session-3.scope",
            "0::/user.slice/user-1000.slice/session-3.service",
        ] {
            assert!(matches!(ok(not), Err(NotAScope::NotAScope(_))), "{not}: {:?}", ok(not));
        }
        let e = ok("0::/system.slice/ssh.service").unwrap_err().to_string();
        assert!(e.contains("/system.slice/ssh.service") && e.contains("session-ID.scope"), "{e}");
    }

    #[test]
    fn the_requester_must_be_there_and_its_scope_a_directory() {
        let root = tempfile::tempdir().unwrap();
        let me = Holder::me().unwrap();
        assert_eq!(of_requester(root.path(), Some(me), None), Err(NotAScope::NoOwner));
        assert_eq!(of_requester(root.path(), None, Some(0)), Err(NotAScope::NoRequester));
        // A holder whose start time is not its pid's: that process has exited.
        let gone = Holder { start_time: me.start_time + 1, ..me };
        assert_eq!(of_requester(root.path(), Some(gone), Some(0)), Err(NotAScope::Exited));
        // This test process is not in a logind scope of uid 4242, whatever runs it.
        assert!(of_requester(root.path(), Some(me), Some(4242)).is_err());
    }
}
