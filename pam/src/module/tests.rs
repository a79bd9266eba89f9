//! open/close against a fake daemon on a temporary socket and a fake PAM handle.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sessiond_client::loopback::loopback_for;
use sessiond_client::proto::{ErrorKind, Request, Response};
use sessiond_client::record::{SessionRecord, SessionState};
use sessiond_client::sid::Sid;
use sessiond_client::{Addressing, LinkKind};

use super::*;

#[derive(Default)]
struct Fake {
    user: Option<String>,
    users: BTreeMap<String, (u32, Vec<String>)>,
    /// NSS that matches names whatever their case (sssd's case_sensitive = false, winbind).
    case_insensitive: bool,
    /// logind's session files: id -> contents.
    logind: BTreeMap<String, String>,
    env: RefCell<BTreeMap<String, String>>,
    logs: RefCell<Vec<(Level, String)>>,
    told: RefCell<Vec<String>>,
    sid: RefCell<Option<u32>>,
    entered: RefCell<Vec<String>>,
    enter_fails: bool,
    /// The cgroups joined (programs mode).
    joined: RefCell<Vec<String>>,
    join_fails: bool,
    /// Each `leave`, with whether the daemon still had session 1 at that moment.
    left: RefCell<Vec<bool>>,
    daemon: Option<Daemon>,
}

impl Fake {
    fn new(user: &str) -> Fake {
        let mut users = BTreeMap::new();
        users.insert("alice".into(), (1000, vec!["alice".into()]));
        users.insert("bob".into(), (1001, vec!["bob".into(), "remote".into()]));
        users.insert("admin".into(), (1002, vec!["admin".into(), "sudo".into()]));
        users.insert("root".into(), (0, vec!["root".into()]));
        Fake { user: Some(user.into()), users, ..Default::default() }
    }
    fn with_env(self, k: &str, v: &str) -> Fake {
        self.env.borrow_mut().insert(k.into(), v.into());
        self
    }
    /// A login whose XDG_SESSION_ID is `id`, as pam_systemd sets it: logind's file for it
    /// names the user's uid.
    fn in_logind_session(mut self, id: &str) -> Fake {
        let uid = self.entry(self.user.as_deref().unwrap()).unwrap().0;
        self.logind.insert(id.into(), format!("# This is private data. Do not parse.\nUID={uid}\nUSER=x\nACTIVE=1\n"));
        self.with_env("XDG_SESSION_ID", id)
    }
    fn entry(&self, name: &str) -> Option<(u32, Vec<String>)> {
        let name = if self.case_insensitive { name.to_lowercase() } else { name.to_string() };
        self.users.get(&name).cloned()
    }
    fn var(&self, k: &str) -> Option<String> {
        self.env.borrow().get(k).cloned()
    }
    fn logged(&self, needle: &str) -> bool {
        self.logs.borrow().iter().any(|(_, m)| m.contains(needle))
    }
}

impl Env for Fake {
    fn user(&self) -> Option<String> {
        self.user.clone()
    }
    fn lookup_user(&self, name: &str) -> Result<Option<(u32, Vec<String>)>, String> {
        Ok(self.entry(name))
    }
    fn uid_of(&self, name: &str) -> Result<Option<u32>, String> {
        Ok(self.entry(name).map(|(uid, _)| uid))
    }
    fn logind_session(&self, id: &str) -> Option<String> {
        self.logind.get(id).cloned()
    }
    fn getenv(&self, name: &str) -> Option<String> {
        self.var(name)
    }
    fn putenv(&self, name: &str, value: &str) -> Result<(), String> {
        self.env.borrow_mut().insert(name.into(), value.into());
        Ok(())
    }
    fn log(&self, level: Level, msg: &str) {
        self.logs.borrow_mut().push((level, msg.into()));
    }
    fn tell(&self, _error: bool, msg: &str) {
        self.told.borrow_mut().push(msg.into());
    }
    fn set_sid(&self, sid: Option<u32>) -> Result<(), String> {
        *self.sid.borrow_mut() = sid;
        Ok(())
    }
    fn sid(&self) -> Option<u32> {
        *self.sid.borrow()
    }
    fn enter(&self, netns: &str) -> Result<(), String> {
        if self.enter_fails {
            return Err(format!("entering netns {netns}: setns: EPERM"));
        }
        self.entered.borrow_mut().push(netns.into());
        Ok(())
    }
    fn join_cgroup(&self, dir: &str) -> Result<(), String> {
        if self.join_fails {
            return Err(format!("joining cgroup {dir}: Permission denied"));
        }
        self.joined.borrow_mut().push(dir.into());
        Ok(())
    }
    fn leave(&self) -> Result<(), String> {
        let running = self.daemon.as_ref().is_some_and(|d| d.has(1));
        self.left.borrow_mut().push(running);
        Ok(())
    }
}

/// A daemon that keeps sessions in a map and answers like the real one.
#[derive(Clone, Default)]
struct Daemon {
    sessions: Arc<Mutex<BTreeMap<u32, SessionRecord>>>,
    requests: Arc<Mutex<Vec<Request>>>,
    /// Refuse every start, like a daemon whose pool is exhausted.
    refuse: Arc<Mutex<bool>>,
    /// Shapes each new session's record (what the daemon's configuration would make of it).
    shape: Arc<Mutex<Option<Shape>>>,
    /// Put programs-mode hooks on the requester's logind scope, as the daemon does for a login
    /// that pam_systemd put in one.
    on_scope: Arc<Mutex<bool>>,
}

type Shape = fn(&mut SessionRecord);

fn record(sid: Sid, owner: Option<u32>) -> SessionRecord {
    SessionRecord {
        session: sid,
        netns: sid.netns_name(),
        interface: "eth0".into(),
        mac: "02:00:00:00:00:01".into(),
        address: Some(format!("10.77.0.{}/24", 99 + sid.get()).parse().unwrap()),
        gateway: Some("10.77.0.1".parse().unwrap()),
        dns: vec![],
        loopback: loopback_for(sid),
        addressing: Addressing::Static,
        state: SessionState::Up,
        link: LinkKind::Macvlan,
        host_link: None,
        owner_uid: owner,
        lease: None,
        fault: None,
        holding: None,
        programs: None,
        ipv6: None,
        addresses6: vec![],
        addresses6_detail: vec![],
        dhcp6_state: None,
    }
}

impl Daemon {
    fn answer(&self, req: Request) -> Response {
        self.requests.lock().unwrap().push(req.clone());
        let mut s = self.sessions.lock().unwrap();
        match req {
            Request::Start { .. } if *self.refuse.lock().unwrap() => Response::error(ErrorKind::Failed, "session 1 not started: the pool is exhausted"),
            Request::Start { session, owner_uid, mode, .. } => {
                let sid = session.unwrap_or_else(|| Sid::new((1..).find(|n| !s.contains_key(n)).unwrap() as u64).unwrap());
                let shape = *self.shape.lock().unwrap();
                let mut rec = s
                    .entry(sid.get())
                    .or_insert_with(|| {
                        let mut r = record(sid, owner_uid);
                        if let Some(f) = shape {
                            f(&mut r);
                        }
                        r
                    })
                    .clone();
                if mode == Some(sessiond_client::Mode::Programs) {
                    rec.netns = String::new();
                    let on_scope = *self.on_scope.lock().unwrap();
                    rec.programs = Some(sessiond_client::record::ProgramsInfo {
                        cgroup: if on_scope {
                            format!("/sys/fs/cgroup/user.slice/user-{}.slice/session-4.scope", owner_uid.unwrap())
                        } else {
                            format!("/sys/fs/cgroup/sessiond-{sid}")
                        },
                        programs: vec!["python3".into()],
                        virtualize: vec![sessiond_client::Virtualize::Loopback],
                        attached: vec![],
                        rewritten: 0,
                        cgroup_owner: if on_scope { CgroupOwner::Logind } else { CgroupOwner::Sessiond },
                    });
                    s.insert(sid.get(), rec.clone());
                }
                // as manager::start_locked: a running session is only returned to its owner
                if rec.owner_uid != owner_uid {
                    return Response::error(
                        ErrorKind::OtherOwner,
                        format!("session {sid} is running for another user (uid {:?}, not uid {owner_uid:?})", rec.owner_uid),
                    );
                }
                Response::Sessions { sessions: vec![rec] }
            }
            Request::Status { session: Some(sid) } => match s.get(&sid.get()) {
                Some(r) => Response::Sessions { sessions: vec![r.clone()] },
                None => Response::error(ErrorKind::NotFound, format!("session {sid} is not running")),
            },
            Request::Stop { session } => {
                let was = s.remove(&session.get()).is_some();
                Response::Stopped { sessions: if was { vec![session] } else { vec![] }, absent: !was }
            }
            _ => Response::error(ErrorKind::BadRequest, "not in the fake"),
        }
    }
    fn has(&self, sid: u32) -> bool {
        self.sessions.lock().unwrap().contains_key(&sid)
    }
    fn count(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    daemon: Daemon,
    args: Args,
}

/// `answer`: false makes a daemon that accepts but never replies.
fn rig_with(answer: bool, extra: &[&str]) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let daemon = Daemon::default();
    let l = UnixListener::bind(&sock).unwrap();
    let d = daemon.clone();
    std::thread::spawn(move || {
        let mut idle = Vec::new();
        for s in l.incoming().flatten() {
            if !answer {
                idle.push(s);
                continue;
            }
            let mut line = String::new();
            let mut r = BufReader::new(&s);
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let resp = d.answer(sessiond_client::proto::parse_request(&line).unwrap());
            let mut out = serde_json::to_vec(&resp).unwrap();
            out.push(b'\n');
            let _ = (&s).write_all(&out);
        }
    });
    let mut argv = vec![format!("socket={}", sock.display()), format!("refdir={}", dir.path().join("pam").display())];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args = Args::parse(&argv).unwrap();
    Rig { _dir: dir, daemon, args }
}

fn rig(extra: &[&str]) -> Rig {
    rig_with(true, extra)
}

/// How many holders the holder file of `sid` lists (one line each), if there is one.
fn refcount(r: &Rig, sid: u32) -> Option<String> {
    std::fs::read_to_string(r.args.refdir.join(sid.to_string())).ok().map(|s| s.lines().count().to_string())
}

#[test]
fn open_enters_and_exports_close_stops() {
    let r = rig(&[]);
    let f = Fake::new("alice");
    assert_eq!(open_session(&f, &r.args), PAM_SUCCESS);
    assert_eq!(*f.entered.borrow(), vec!["sessiond-1".to_string()]);
    assert_eq!(f.var("SESSIOND_SESSION").as_deref(), Some("1"));
    assert_eq!(f.var("SESSIOND_ADDRESS").as_deref(), Some("10.77.0.100"), "no prefix length");
    assert_eq!(f.var("SESSIOND_LOOPBACK").as_deref(), Some("127.0.0.2"));
    assert_eq!(r.daemon.requests.lock().unwrap()[0], Request::Start { session: None, owner_uid: Some(1000), hold: true, mode: None });
    assert_eq!(refcount(&r, 1).as_deref(), Some("1"));
    assert_eq!(close_session(&f, &r.args), PAM_SUCCESS);
    assert!(!r.daemon.has(1));
    assert_eq!(refcount(&r, 1), None);
    assert_eq!(close_session(&f, &r.args), PAM_IGNORE, "a second close does nothing");
}

/// The daemon answers a start with the session's IPv6 facts when it waited for them
/// (`wait_for` ipv6 or both): the login gets SESSIOND_ADDRESS6 (the stable SLAAC address, not
/// the temporary or link-local one), and an IPv6-only session (`addressing = "none"`) no
/// SESSIOND_ADDRESS.
#[test]
fn open_exports_the_ipv6_address_of_the_answer() {
    use sessiond_client::Ipv6State;
    use sessiond_client::record::{Address6, Address6Origin};
    fn with_ipv6(r: &mut SessionRecord) {
        let a =
            |address: &str, origin| Address6 { address: address.parse().unwrap(), origin, valid_secs: Some(600), preferred_secs: Some(300), tentative: false };
        r.set_ipv6(
            Ipv6State::Slaac,
            vec![a("fe80::1/64", Address6Origin::LinkLocal), a("2001:db8:77::9/64", Address6Origin::Temporary), a("2001:db8:77::5/64", Address6Origin::Slaac)],
        );
    }
    let r = rig(&[]);
    *r.daemon.shape.lock().unwrap() = Some(with_ipv6);
    let f = Fake::new("alice");
    assert_eq!(open_session(&f, &r.args), PAM_SUCCESS);
    assert_eq!(f.var("SESSIOND_ADDRESS6").as_deref(), Some("2001:db8:77::5"), "the stable address, no prefix length");
    assert_eq!(f.var("SESSIOND_ADDRESS").as_deref(), Some("10.77.0.100"));
    assert!(f.logged("address 10.77.0.100 address6 2001:db8:77::5 loopback"), "{:?}", f.logs.borrow());
    assert_eq!(close_session(&f, &r.args), PAM_SUCCESS);

    *r.daemon.shape.lock().unwrap() = Some(|r| {
        with_ipv6(r);
        (r.address, r.gateway, r.addressing) = (None, None, Addressing::None);
    });
    let f = Fake::new("bob");
    assert_eq!(open_session(&f, &r.args), PAM_SUCCESS);
    assert_eq!((f.var("SESSIOND_ADDRESS"), f.var("SESSIOND_ADDRESS6").as_deref()), (None, Some("2001:db8:77::5")), "IPv6-only");
    assert_eq!(close_session(&f, &r.args), PAM_SUCCESS);

    // an answer without IPv6 facts (wait_for ipv4: IPv6 completes after it) sets none
    *r.daemon.shape.lock().unwrap() = None;
    let f = Fake::new("alice");
    assert_eq!(open_session(&f, &r.args), PAM_SUCCESS);
    assert_eq!(f.var("SESSIOND_ADDRESS6"), None);
    assert_eq!(close_session(&f, &r.args), PAM_SUCCESS);
}

#[test]
fn close_leaves_the_namespace_before_stopping_the_session() {
    let r = rig(&[]);
    let f = Fake { daemon: Some(r.daemon.clone()), ..Fake::new("alice") };
    assert_eq!(open_session(&f, &r.args), PAM_SUCCESS);
    assert_eq!(close_session(&f, &r.args), PAM_SUCCESS);
    assert_eq!(*f.left.borrow(), vec![true], "left once, while the session was still running");
    assert!(!r.daemon.has(1));
}

#[test]
fn excluded_users_are_ignored_without_asking_the_daemon() {
    let r = rig(&["exclude_users=bob"]);
    for user in ["root", "admin", "bob"] {
        let f = Fake::new(user);
        assert_eq!(open_session(&f, &r.args), PAM_IGNORE, "{user}");
        assert!(f.entered.borrow().is_empty() && f.var("SESSIOND_SESSION").is_none());
        assert_eq!(close_session(&f, &r.args), PAM_IGNORE);
    }
    assert!(r.daemon.requests.lock().unwrap().is_empty());
    let r = rig(&["groups=remote"]);
    assert_eq!(open_session(&Fake::new("alice"), &r.args), PAM_IGNORE);
    assert_eq!(open_session(&Fake::new("bob"), &r.args), PAM_SUCCESS);
}

#[test]
fn unknown_user_is_refused() {
    let r = rig(&[]);
    assert_eq!(open_session(&Fake::new("nobody-here"), &r.args), PAM_SESSION_ERR);
    let mut f = Fake::new("alice");
    f.user = None;
    assert_eq!(open_session(&f, &r.args), PAM_SESSION_ERR);
}

#[test]
fn fail_open_and_closed_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let base = [format!("socket={}", dir.path().join("absent.sock").display()), format!("refdir={}", dir.path().join("pam").display())];
    let closed = Args::parse(&base).unwrap();
    let f = Fake::new("alice");
    assert_eq!(open_session(&f, &closed), PAM_SESSION_ERR);
    assert!(f.logged("refusing the session (fail=closed)"), "{:?}", f.logs.borrow());
    assert!(f.entered.borrow().is_empty());

    let mut open = base.to_vec();
    open.push("fail=open".into());
    let open = Args::parse(&open).unwrap();
    let f = Fake::new("alice");
    assert_eq!(open_session(&f, &open), PAM_SUCCESS);
    assert!(f.logged("WITHOUT network isolation"));
    assert!(f.told.borrow()[0].contains("NOT network-isolated"));
    assert!(f.entered.borrow().is_empty() && f.var("SESSIOND_SESSION").is_none());
    assert_eq!(close_session(&f, &open), PAM_IGNORE);
}

#[test]
fn a_silent_daemon_times_out_within_the_limit() {
    let r = rig_with(false, &["timeout=0.3"]);
    let f = Fake::new("alice");
    let t = Instant::now();
    assert_eq!(open_session(&f, &r.args), PAM_SESSION_ERR);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(f.logged("did not answer"), "{:?}", f.logs.borrow());
}

#[test]
fn xdg_session_id_is_used_and_shared_holders_are_counted() {
    let r = rig(&[]);
    let a = Fake::new("alice").in_logind_session("42");
    let b = Fake::new("alice").in_logind_session("42");
    assert_eq!(open_session(&a, &r.args), PAM_SUCCESS);
    assert_eq!(open_session(&b, &r.args), PAM_SUCCESS);
    assert_eq!(*b.entered.borrow(), vec!["sessiond-42".to_string()]);
    assert_eq!(refcount(&r, 42).as_deref(), Some("2"));
    assert_eq!(close_session(&a, &r.args), PAM_SUCCESS);
    assert!(r.daemon.has(42), "one holder left");
    assert_eq!(close_session(&b, &r.args), PAM_SUCCESS);
    assert!(!r.daemon.has(42));
    // Non-numeric ids (logind's "c1") and 0 fall back to the daemon's pick.
    for v in ["c1", "0", ""] {
        let f = Fake::new("alice").with_env("XDG_SESSION_ID", v);
        assert_eq!(open_session(&f, &r.args), PAM_SUCCESS);
        assert_eq!(f.var("SESSIOND_SESSION").as_deref(), Some("1"), "{v:?}");
        assert_eq!(close_session(&f, &r.args), PAM_SUCCESS);
    }
}

#[test]
fn a_login_killed_before_close_session_does_not_keep_the_session_from_stopping() {
    let r = rig(&[]);
    // Login A (another process) opened session 42, then was killed (no close_session): its
    // line stays in the holder file, and the daemon reaps nothing while B holds it.
    let mut a = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let ha = Holder::of(a.id()).unwrap();
    std::fs::create_dir_all(&r.args.refdir).unwrap();
    std::fs::set_permissions(&r.args.refdir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(r.args.refdir.join("42"), format!("{} {}\n", ha.pid, ha.start_time)).unwrap();
    r.daemon.sessions.lock().unwrap().insert(42, record(Sid::new(42).unwrap(), Some(1000)));
    let b = Fake::new("alice").in_logind_session("42");
    assert_eq!(open_session(&b, &r.args), PAM_SUCCESS);
    assert_eq!(b.var("SESSIOND_SESSION").as_deref(), Some("42"), "joined A's session");
    assert_eq!(refcount(&r, 42).as_deref(), Some("2"));
    a.kill().unwrap();
    a.wait().unwrap();
    // B is the last live holder: its close stops the session at once.
    assert_eq!(close_session(&b, &r.args), PAM_SUCCESS);
    assert!(!r.daemon.has(42), "stopped by the last live holder");
    assert_eq!(refcount(&r, 42), None);
}

#[test]
fn sid_modes_are_forced() {
    let r = rig(&["sid=auto"]);
    let f = Fake::new("alice").in_logind_session("42");
    assert_eq!(open_session(&f, &r.args), PAM_SUCCESS);
    assert_eq!(f.var("SESSIOND_SESSION").as_deref(), Some("1"));
    let r = rig(&["sid=xdg", "fail=open"]);
    let f = Fake::new("alice");
    assert_eq!(open_session(&f, &r.args), PAM_SESSION_ERR, "no XDG_SESSION_ID: refused even with fail=open");
    assert!(f.logged("XDG_SESSION_ID is not set"));
    assert_eq!(r.daemon.count(), 0);
}

#[test]
fn never_joins_another_users_or_a_foreign_session() {
    let r = rig(&[]);
    let bob = Fake::new("bob").in_logind_session("5");
    assert_eq!(open_session(&bob, &r.args), PAM_SUCCESS);
    // alice's login with the same XDG id (e.g. su inside bob's session) gets her own.
    let alice = Fake::new("alice").with_env("XDG_SESSION_ID", "5");
    let mut alice = alice;
    alice.logind = bob.logind.clone();
    assert_eq!(open_session(&alice, &r.args), PAM_SUCCESS);
    assert_eq!(alice.var("SESSIOND_SESSION").as_deref(), Some("1"));
    assert!(alice.logged("logind's session of uid 1001, not of uid 1000"), "{:?}", alice.logs.borrow());
    assert_eq!(refcount(&r, 5).as_deref(), Some("1"));
    // A session made outside PAM (sessiond start --session 7) is not joined, nor stopped,
    // and the look at its holder count leaves no file behind.
    r.daemon.sessions.lock().unwrap().insert(7, record(Sid::new(7).unwrap(), Some(1000)));
    let again = Fake::new("alice").in_logind_session("7");
    assert_eq!(open_session(&again, &r.args), PAM_SUCCESS);
    assert_eq!(again.var("SESSIOND_SESSION").as_deref(), Some("2"));
    assert_eq!(refcount(&r, 7), None, "no empty holder file for the session it did not join");
    assert_eq!(close_session(&again, &r.args), PAM_SUCCESS);
    assert!(r.daemon.has(7) && !r.daemon.has(2));
}

#[test]
fn a_session_of_another_owner_falls_back_to_a_fresh_sid() {
    // bob's login holds session 5; alice's login asks for 5 too (logind says 5 is hers: say,
    // an id logind reused while bob's sessiond session lived on). The daemon refuses to hand
    // her bob's session, as the real one does; the module must then let the daemon pick.
    for fail in ["fail=closed", "fail=open"] {
        let r = rig(&[fail]);
        let bob = Fake::new("bob").in_logind_session("5");
        assert_eq!(open_session(&bob, &r.args), PAM_SUCCESS);
        let alice = Fake::new("alice").in_logind_session("5");
        assert_eq!(open_session(&alice, &r.args), PAM_SUCCESS, "{fail}: {:?}", alice.logs.borrow());
        assert_eq!(*alice.entered.borrow(), vec!["sessiond-1".to_string()], "{fail}: isolated, in a session of her own");
        assert!(alice.logged("running for another user"), "{:?}", alice.logs.borrow());
        assert_eq!(r.daemon.sessions.lock().unwrap()[&5].owner_uid, Some(1001), "bob's session untouched");
        assert_eq!((refcount(&r, 5).as_deref(), refcount(&r, 1).as_deref()), (Some("1"), Some("1")));
        assert_eq!(close_session(&alice, &r.args), PAM_SUCCESS);
        assert!(r.daemon.has(5) && !r.daemon.has(1));
    }
}

#[test]
fn xdg_session_id_is_trusted_only_when_logind_made_it_for_this_user() {
    let r = rig(&[]);
    // set from ~/.pam_environment: no logind session 9, or another user's, or a file without UID
    let forged = Fake::new("alice").with_env("XDG_SESSION_ID", "9");
    let mut others = Fake::new("alice").with_env("XDG_SESSION_ID", "9");
    others.logind.insert("9".into(), "UID=1001\n".into());
    let mut no_uid = Fake::new("alice").with_env("XDG_SESSION_ID", "9");
    no_uid.logind.insert("9".into(), "USER=alice\n".into());
    for (f, why) in [(&forged, "is not a logind session"), (&others, "of uid 1001"), (&no_uid, "names no UID")] {
        assert_eq!(open_session(f, &r.args), PAM_SUCCESS);
        assert_eq!(f.var("SESSIOND_SESSION").as_deref(), Some("1"), "{why}: the daemon picks");
        assert!(f.logged(why) && f.logged("letting sessiond pick"), "{:?}", f.logs.borrow());
        assert_eq!(close_session(f, &r.args), PAM_SUCCESS);
    }
    assert!(!r.daemon.requests.lock().unwrap().iter().any(|q| matches!(q, Request::Start { session: Some(_), .. })), "never asked for sid 9");
    // sid=xdg insists on a trusted id: refused
    let r = rig(&["sid=xdg", "fail=open"]);
    assert_eq!(open_session(&forged, &r.args), PAM_SESSION_ERR);
    assert_eq!(r.daemon.count(), 0);
    let real = Fake::new("alice").in_logind_session("9");
    assert_eq!(open_session(&real, &r.args), PAM_SUCCESS);
    assert_eq!(real.var("SESSIOND_SESSION").as_deref(), Some("9"));
}

#[test]
fn users_lists_match_by_uid_not_by_the_typed_name() {
    // case-insensitive NSS: "ALICE" logs in as alice (uid 1000)
    let r = rig(&["users=alice", "exclude_groups="]);
    let f = Fake { case_insensitive: true, ..Fake::new("ALICE") };
    assert_eq!(open_session(&f, &r.args), PAM_SUCCESS);
    assert_eq!(*f.entered.borrow(), vec!["sessiond-1".to_string()], "ALICE did not escape users=alice");
    assert_eq!(close_session(&f, &r.args), PAM_SUCCESS);
    let r = rig(&["exclude_users=bob"]);
    let f = Fake { case_insensitive: true, ..Fake::new("BOB") };
    assert_eq!(open_session(&f, &r.args), PAM_IGNORE, "BOB is the excluded bob");
    assert!(r.daemon.requests.lock().unwrap().is_empty());
}

#[test]
fn a_refused_start_leaves_no_holder_file() {
    let r = rig(&[]);
    *r.daemon.refuse.lock().unwrap() = true;
    let f = Fake::new("alice").in_logind_session("42");
    assert_eq!(open_session(&f, &r.args), PAM_SESSION_ERR);
    assert_eq!(refcount(&r, 42), None, "no empty holder file after the failed acquire");
    assert_eq!(std::fs::read_dir(&r.args.refdir).unwrap().count(), 0);
}

#[test]
fn failing_to_enter_refuses_and_stops_the_session() {
    let r = rig(&["fail=open"]);
    let mut f = Fake::new("alice");
    f.enter_fails = true;
    assert_eq!(open_session(&f, &r.args), PAM_SESSION_ERR);
    assert_eq!(r.daemon.count(), 0);
    assert_eq!(refcount(&r, 1), None);
    assert_eq!(f.sid(), None);
    assert!(f.var("SESSIOND_SESSION").is_none());
}

#[test]
fn daemon_refusals_follow_the_fail_mode() {
    let r = rig(&[]);
    *r.daemon.refuse.lock().unwrap() = true;
    let f = Fake::new("alice");
    assert_eq!(open_session(&f, &r.args), PAM_SESSION_ERR);
    assert!(f.logged("pool is exhausted"), "{:?}", f.logs.borrow());
    let r = rig(&["fail=open"]);
    *r.daemon.refuse.lock().unwrap() = true;
    let f = Fake::new("alice");
    assert_eq!(open_session(&f, &r.args), PAM_SUCCESS);
    assert!(f.entered.borrow().is_empty());
    assert_eq!(refcount(&r, 1), None);
}

#[test]
fn mode_programs_asks_for_a_programs_session_and_joins_its_cgroup() {
    let r = rig(&["mode=programs"]);
    let f = Fake::new("alice");
    assert_eq!(open_session(&f, &r.args), PAM_SUCCESS);
    assert!(matches!(r.daemon.requests.lock().unwrap()[0], Request::Start { mode: Some(sessiond_client::Mode::Programs), hold: true, .. }));
    assert_eq!(*f.joined.borrow(), vec!["/sys/fs/cgroup/sessiond-1".to_string()]);
    assert!(f.entered.borrow().is_empty(), "no namespace to enter");
    assert_eq!(f.var("SESSIOND_LOOPBACK").as_deref(), Some("127.0.0.2"));
    assert_eq!(close_session(&f, &r.args), PAM_SUCCESS);
    assert_eq!(r.daemon.count(), 0);
}

#[test]
fn a_login_whose_logind_scope_carries_the_hooks_stays_in_it() {
    let r = rig(&["mode=programs"]);
    *r.daemon.on_scope.lock().unwrap() = true;
    // (joining would fail: it must not be tried)
    let f = Fake { join_fails: true, ..Fake::new("alice") };
    assert_eq!(open_session(&f, &r.args), PAM_SUCCESS);
    assert!(f.joined.borrow().is_empty() && f.entered.borrow().is_empty(), "moved: {:?} {:?}", f.joined.borrow(), f.entered.borrow());
    assert!(f.logged("on its logind scope /sys/fs/cgroup/user.slice/user-1000.slice/session-4.scope"), "{:?}", f.logs.borrow());
    assert_eq!(f.var("SESSIOND_SESSION").as_deref(), Some("1"));
    assert_eq!(close_session(&f, &r.args), PAM_SUCCESS);
    assert_eq!(r.daemon.count(), 0);
}

#[test]
fn a_cgroup_that_cannot_be_joined_refuses_the_login_and_stops_the_session() {
    let r = rig(&["mode=programs"]);
    let f = Fake { join_fails: true, ..Fake::new("alice") };
    assert_eq!(open_session(&f, &r.args), PAM_SESSION_ERR);
    assert!(f.logged("joining cgroup /sys/fs/cgroup/sessiond-1"), "{:?}", f.logs.borrow());
    assert_eq!(r.daemon.count(), 0, "the session it started is stopped again");
    assert_eq!(f.sid(), None);
}

#[test]
fn a_bad_mode_argument_is_named() {
    let e = Args::parse(&["mode=container"]).unwrap_err();
    assert!(e.contains("container") && e.contains("programs"), "{e}");
    assert_eq!(Args::parse(&["mode=programs"]).unwrap().mode, Some(sessiond_client::Mode::Programs));
    assert_eq!(Args::parse::<&str>(&[]).unwrap().mode, None);
}
