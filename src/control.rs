//! The control-socket server: newline-delimited JSON (`proto`), one task per connection,
//! caller identified by SO_PEERCRED; root may do everything, others read their own sessions.
//! Bad input gets an error reply and never affects other clients; no user can take the
//! connections others need (a cap per user and for all users; idle and unread connections
//! are closed). Root's connections are never refused.
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::config::MAX_USER_CONNECTIONS;
use crate::holders;
use crate::manager::{Manager, ManagerError, Stopped};
use crate::platform::Platform;
use crate::ports::Target;
use crate::proto::{ErrorKind, MAX_LINE, Request, Response, encode_line, parse_request};
use crate::state::{SessionRecord, SessionState};
use sessiond_client::ports::Place;

/// A non-root connection idle this long is closed.
pub const USER_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// A connection whose client does not take its reply within this long is closed: a client
/// that pipelines requests and never reads the replies cannot keep its connection forever.
pub const REPLY_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another sessiond is already listening at {0}")]
    AlreadyRunning(PathBuf),
    #[error("control socket {path}: {op}: {source}")]
    Socket { path: PathBuf, op: &'static str, source: std::io::Error },
}

/// Binds the socket (mode 0660), replacing a stale one but never a live daemon's.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |op| move |source| ControlError::Socket { path: path.to_path_buf(), op, source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err("create directory"))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err("remove stale socket"))?;
    }
    let l = UnixListener::bind(path).map_err(err("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err("chmod 0660"))?;
    Ok(l)
}

/// Who may open another connection: root always; another user while they have fewer than
/// `per_user` open and all non-root users together fewer than MAX_USER_CONNECTIONS, so one
/// user cannot take the connections the others need.
pub struct Admission {
    per_user: usize,
    open: Mutex<HashMap<u32, usize>>,
    all: Arc<tokio::sync::Semaphore>,
}

/// Why a connection was refused (its one reply).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many connections for uid {uid} (at most {max} at once); try again")]
    TooManyForUser { uid: u32, max: usize },
    #[error("too many connections; try again")]
    TooMany,
}

/// A non-root connection's place, given back when dropped.
pub struct Admitted {
    admission: Arc<Admission>,
    uid: u32,
    _all: tokio::sync::OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(per_user: usize) -> Arc<Admission> {
        Arc::new(Admission { per_user, open: Mutex::new(HashMap::new()), all: Arc::new(tokio::sync::Semaphore::new(MAX_USER_CONNECTIONS)) })
    }

    /// Ok(None) for root (not counted).
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Option<Admitted>, Refusal> {
        if uid == 0 {
            return Ok(None);
        }
        let mut open = self.open.lock().unwrap();
        let mine = open.entry(uid).or_default();
        if *mine >= self.per_user {
            return Err(Refusal::TooManyForUser { uid, max: self.per_user });
        }
        let all = self.all.clone().try_acquire_owned().map_err(|_| Refusal::TooMany)?;
        *mine += 1;
        Ok(Some(Admitted { admission: self.clone(), uid, _all: all }))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

pub async fn serve<P: Platform>(listener: UnixListener, mgr: Arc<Manager<P>>) {
    let admission = Admission::new(mgr.settings().max_connections_per_user);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let mgr = mgr.clone();
        let uid = match stream.peer_cred() {
            Ok(c) => c.uid(),
            Err(e) => {
                warn!("cannot read peer credentials, closing: {e}");
                continue;
            }
        };
        match admission.admit(uid) {
            Ok(place) => {
                tokio::spawn(async move {
                    connection(stream, mgr, uid).await;
                    drop(place);
                });
            }
            Err(refusal) => {
                debug!(uid, "refusing a connection: {refusal}");
                tokio::spawn(async move {
                    let mut s = stream;
                    let _ = send(&mut s, &Response::error(ErrorKind::Failed, refusal.to_string())).await;
                });
            }
        }
    }
}

/// Writes a reply, giving up after REPLY_WRITE_TIMEOUT.
async fn send(w: &mut (impl AsyncWrite + Unpin), r: &Response) -> std::io::Result<()> {
    match tokio::time::timeout(REPLY_WRITE_TIMEOUT, w.write_all(&encode_line(r))).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client does not read its replies")),
    }
}

async fn connection<P: Platform>(stream: UnixStream, mgr: Arc<Manager<P>>, uid: u32) {
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::new(rd);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Read at most MAX_LINE+1 bytes so an endless line cannot grow memory.
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        let read = limited.read_until(b'\n', &mut buf);
        let read = if uid == 0 {
            read.await
        } else {
            match tokio::time::timeout(USER_IDLE_TIMEOUT, read).await {
                Ok(r) => r,
                Err(_) => return, // idle non-root client: free its slot
            }
        };
        let n = match read {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                debug!("client read: {e}");
                return;
            }
        };
        if buf.last() != Some(&b'\n') {
            let msg = if n > MAX_LINE { format!("request line longer than {MAX_LINE} bytes") } else { "request line not terminated by a newline".to_string() };
            let _ = send(&mut wr, &Response::error(ErrorKind::BadRequest, msg)).await;
            return; // cannot find the next request boundary reliably
        }
        let resp = match std::str::from_utf8(&buf) {
            Err(_) => Response::error(ErrorKind::BadRequest, "request is not UTF-8"),
            Ok(text) => match parse_request(text.trim_end()) {
                Err(e) => Response::error(ErrorKind::BadRequest, e),
                // The connection becomes the watcher's stream (see `events`).
                Ok(Request::Watch) => return crate::events::stream(&mgr.events(), crate::events::Viewer::from_uid(uid), reader, wr).await,
                Ok(req) => answer(&mgr, req, uid, Some(reader.get_ref().as_ref())).await,
            },
        };
        if let Err(e) = send(&mut wr, &resp).await {
            debug!(uid, "closing the connection: {e}");
            return; // gone, or not reading: its request was answered or rolled back regardless
        }
    }
}

fn from_manager(e: ManagerError) -> Response {
    Response::error(e.kind(), e.to_string())
}

/// Root may do everything; others may only read the status of their own sessions.
pub async fn handle<P: Platform>(mgr: &Manager<P>, req: Request, uid: u32) -> Response {
    answer(mgr, req, uid, None).await
}

/// `handle` for a request that came on `conn`: a holding start names the process at its
/// other end as the holder, and a start whose client hangs up before the answer is undone.
async fn answer<P: Platform>(mgr: &Manager<P>, req: Request, uid: u32, conn: Option<&UnixStream>) -> Response {
    if uid != 0 {
        return match req {
            Request::Status { session } => match mgr.status_live(session).await {
                Ok(list) => {
                    let viewer = crate::events::Viewer::from_uid(uid);
                    let mine: Vec<_> = list.into_iter().filter(|r| viewer.may_see(r.owner_uid)).collect();
                    if let Some(s) = session
                        && mine.is_empty()
                    {
                        Response::error(ErrorKind::PermissionDenied, format!("permission denied: session {s} does not belong to uid {uid}"))
                    } else {
                        Response::Sessions { sessions: mine }
                    }
                }
                Err(ManagerError::NotFound(s)) => {
                    Response::error(ErrorKind::PermissionDenied, format!("permission denied: session {s} does not belong to uid {uid}"))
                }
                Err(e) => from_manager(e),
            },
            Request::Ports { session, listening } => ports(mgr, uid, session, listening).await,
            Request::Bridge { session } => bridge(mgr, uid, session).await,
            other => Response::error(ErrorKind::PermissionDenied, format!("permission denied: {} needs root (caller uid {uid})", op_name(&other))),
        };
    }
    match req {
        Request::Start { session, owner_uid, hold, mode } => {
            let holder = match conn.filter(|_| hold).map(holders::peer).transpose() {
                Ok(h) => h,
                Err(e) => return Response::error(ErrorKind::Failed, format!("session not started: {e}")),
            };
            let gone = || conn.is_some_and(holders::hung_up);
            match mgr.start_in_mode(session, owner_uid, holder, &gone, mode).await {
                Ok(r) => Response::Sessions { sessions: vec![r] },
                Err(e) => from_manager(e),
            }
        }
        Request::Status { session } => match mgr.status_live(session).await {
            Ok(sessions) => Response::Sessions { sessions },
            Err(e) => from_manager(e),
        },
        Request::Stop { session } => match mgr.stop(session).await {
            Ok(Stopped::Stopped) => Response::Stopped { sessions: vec![session], absent: false },
            Ok(Stopped::WasAbsent) => Response::Stopped { sessions: vec![], absent: true },
            Err(e) => from_manager(e),
        },
        Request::StopAll => match mgr.stop_all().await {
            Ok(sessions) => Response::Stopped { absent: sessions.is_empty(), sessions },
            Err(e) => from_manager(e),
        },
        Request::Watch => Response::error(ErrorKind::BadRequest, "watch is answered by a stream, on a connection of its own"),
        Request::Ports { session, listening } => ports(mgr, uid, session, listening).await,
        Request::Bridge { session } => bridge(mgr, uid, session).await,
    }
}

/// `bridge`: for each session `uid` may see (or the one asked for), the ports the host reaches
/// through the loopback bridge, with their programs (read as `ports` reads them, on a blocking
/// thread), and the host services.
async fn bridge<P: Platform>(mgr: &Manager<P>, uid: u32, session: Option<crate::sid::Sid>) -> Response {
    let viewer = crate::events::Viewer::from_uid(uid);
    let records: Vec<SessionRecord> = match mgr.status(session) {
        Ok(r) => r.into_iter().filter(|r| viewer.may_see(r.owner_uid)).collect(),
        Err(e) => return from_manager(e),
    };
    if let Some(s) = session
        && records.is_empty()
    {
        return Response::error(ErrorKind::PermissionDenied, format!("permission denied: session {s} does not belong to uid {uid}"));
    }
    let (reach, services) = (mgr.settings().loopback_reach, mgr.settings().host_services.clone());
    let targets: Vec<Target> = records.iter().map(|r| Target::namespace(Place::Session(r.session), crate::ns::netns_path(&r.netns))).collect();
    let listening = if reach == crate::config::LoopbackReach::None || targets.is_empty() {
        Ok(vec![])
    } else {
        match tokio::task::spawn_blocking(move || crate::ports::list(&targets, |_| true, true, Path::new("/proc"))).await {
            Ok(r) => r,
            Err(e) => return Response::error(ErrorKind::Failed, format!("bridge: the reading thread failed: {e}")),
        }
    };
    match listening {
        Ok(ports) => Response::Bridge { sessions: records.iter().map(|r| crate::bridge::view(r.session, &ports, &services)).collect() },
        Err(e) => Response::error(ErrorKind::Failed, format!("bridge: {e}")),
    }
}

/// `ports`: the sockets of the namespaces `uid` may see (read on a blocking thread).
async fn ports<P: Platform>(mgr: &Manager<P>, uid: u32, scope: Option<Place>, listening: bool) -> Response {
    let records = match mgr.status(None) {
        Ok(r) => r,
        Err(e) => return from_manager(e),
    };
    let targets = match ports_targets(&records, uid, scope) {
        Ok(t) => t,
        Err(refusal) => return refusal,
    };
    let shown = move |p: Place| scope.is_none_or(|s| s == p);
    match tokio::task::spawn_blocking(move || crate::ports::list(&targets, shown, listening, Path::new("/proc"))).await {
        Ok(Ok(ports)) => Response::Ports { ports },
        Ok(Err(e)) => Response::error(ErrorKind::Failed, format!("ports: {e}")),
        Err(e) => Response::error(ErrorKind::Failed, format!("ports: the reading thread failed: {e}")),
    }
}

/// The namespaces `ports` reads for `uid`: root, the host and every session that is up;
/// anyone else, only the sessions they own (never the host). `scope` narrows what is shown,
/// not what is read: collisions count every place the caller may see.
pub fn ports_targets(records: &[SessionRecord], uid: u32, scope: Option<Place>) -> Result<Vec<Target>, Response> {
    let denied = |what: String| Err(Response::error(ErrorKind::PermissionDenied, format!("permission denied: {what}")));
    let mut targets = Vec::new();
    if uid == 0 {
        targets.push(Target::namespace(Place::Host, PathBuf::from(crate::ports::HOST_NETNS)));
    } else if scope == Some(Place::Host) {
        return denied(format!("the host's sockets (session 0) are shown to root only (caller uid {uid})"));
    }
    let viewer = crate::events::Viewer::from_uid(uid);
    let visible = records.iter().filter(|r| r.state == SessionState::Up && viewer.may_see(r.owner_uid));
    targets.extend(visible.map(|r| match &r.programs {
        // No namespace: the session's sockets are the host's that its cgroup made or that
        // sit on its addresses (`ports::ProgramsSession`).
        Some(p) => Target::programs(r.session, p.cgroup.clone().into(), r.loopback, r.address.map(|a| a.addr())),
        None => Target::namespace(Place::Session(r.session), crate::ns::netns_path(&r.netns)),
    }));
    match scope {
        Some(place) if !targets.iter().any(|t| t.place == place) => {
            if uid == 0 {
                Err(Response::error(ErrorKind::NotFound, format!("session {place} is not running")))
            } else {
                denied(format!("session {place} does not belong to uid {uid}"))
            }
        }
        _ => Ok(targets),
    }
}

fn op_name(r: &Request) -> &'static str {
    match r {
        Request::Start { .. } => "start",
        Request::Status { .. } => "status",
        Request::Stop { .. } => "stop",
        Request::StopAll => "stop --all",
        Request::Watch => "watch",
        Request::Ports { .. } => "ports",
        Request::Bridge { .. } => "bridge",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Addressing, FileConfig, Settings};
    use crate::fake::FakePlatform;
    use crate::sid::Sid;
    use crate::state::StateDir;

    fn mgr(dir: &Path) -> Manager<FakePlatform> {
        let s = Settings::merge(
            FileConfig {
                uplink: Some("br-lan".into()),
                addressing: Some(Addressing::Static),
                pool: Some("10.0.0.100-10.0.0.199/24".into()),
                gateway: Some("10.0.0.1".parse().unwrap()),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap();
        Manager::new(FakePlatform::new(), s, StateDir::open(dir).unwrap(), "m".into(), "h".into()).unwrap()
    }

    #[tokio::test]
    async fn ports_reads_what_the_caller_may_see() {
        let d = tempfile::tempdir().unwrap();
        let m = mgr(d.path());
        let (s1, s2) = (Sid::new(1).unwrap(), Sid::new(2).unwrap());
        handle(&m, Request::Start { session: Some(s1), owner_uid: Some(1000), hold: false, mode: None }, 0).await;
        handle(&m, Request::Start { session: Some(s2), owner_uid: Some(1001), hold: false, mode: None }, 0).await;
        let records = m.status(None).unwrap();
        let places = |uid, scope| ports_targets(&records, uid, scope).map(|t| t.into_iter().map(|t| (t.place, t.netns)).collect::<Vec<_>>());
        let ns = |n: u32| crate::ns::netns_path(&format!("sessiond-{n}"));
        // root: the host and every session, whatever is shown
        let all = vec![(Place::Host, PathBuf::from(crate::ports::HOST_NETNS)), (Place::Session(s1), ns(1)), (Place::Session(s2), ns(2))];
        assert_eq!(places(0, None).unwrap(), all);
        assert_eq!(places(0, Some(Place::Session(s2))).unwrap(), all);
        assert_eq!(places(0, Some(Place::Host)).unwrap(), all);
        // a user: their own sessions only, never the host
        assert_eq!(places(1000, None).unwrap(), vec![(Place::Session(s1), ns(1))]);
        assert_eq!(places(1002, None).unwrap(), vec![]);
        let refused = |uid, scope| match ports_targets(&records, uid, scope) {
            Err(Response::Error { kind, message }) => (kind, message),
            other => panic!("not refused: {other:?}"),
        };
        let (kind, msg) = refused(1000, Some(Place::Session(s2)));
        assert_eq!((kind, msg.as_str()), (ErrorKind::PermissionDenied, "permission denied: session 2 does not belong to uid 1000"));
        let (kind, msg) = refused(1000, Some(Place::Host));
        assert_eq!(kind, ErrorKind::PermissionDenied);
        assert!(msg.contains("root only"), "{msg}");
        let (kind, msg) = refused(0, Some(Place::Session(Sid::new(77).unwrap())));
        assert_eq!((kind, msg.as_str()), (ErrorKind::NotFound, "session 77 is not running"));
        // and through the request, a user asking for another's session is refused the same way
        assert!(matches!(
            handle(&m, Request::Ports { session: Some(Place::Session(s2)), listening: false }, 1000).await,
            Response::Error { kind: ErrorKind::PermissionDenied, .. }
        ));
    }

    #[tokio::test]
    async fn non_root_sees_only_own_sessions_and_cannot_act() {
        let d = tempfile::tempdir().unwrap();
        let m = mgr(d.path());
        let s1 = Sid::new(1).unwrap();
        let s2 = Sid::new(2).unwrap();
        handle(&m, Request::Start { session: Some(s1), owner_uid: Some(1000), hold: false, mode: None }, 0).await;
        handle(&m, Request::Start { session: Some(s2), owner_uid: Some(1001), hold: false, mode: None }, 0).await;
        match handle(&m, Request::Status { session: None }, 1000).await {
            Response::Sessions { sessions } => assert_eq!(sessions.iter().map(|r| r.session).collect::<Vec<_>>(), vec![s1]),
            r => panic!("{r:?}"),
        }
        for req in [
            Request::Status { session: Some(s2) },
            Request::Status { session: Some(Sid::new(77).unwrap()) },
            Request::Stop { session: s1 },
            Request::Start { session: None, owner_uid: Some(1000), hold: false, mode: None },
            Request::StopAll,
        ] {
            match handle(&m, req.clone(), 1000).await {
                Response::Error { kind: ErrorKind::PermissionDenied, message } => assert!(message.contains("permission denied"), "{message}"),
                r => panic!("{req:?} -> {r:?}"),
            }
        }
        assert_eq!(m.status(None).unwrap().len(), 2, "nothing was stopped");
    }

    #[test]
    fn one_user_cannot_take_the_connections_others_need() {
        let a = Admission::new(3);
        let mut mine: Vec<_> = (0..3).map(|_| a.admit(1000).unwrap().expect("counted")).collect();
        let e = a.admit(1000).err().expect("a fourth is refused");
        assert_eq!(e, Refusal::TooManyForUser { uid: 1000, max: 3 });
        assert_eq!(e.to_string(), "too many connections for uid 1000 (at most 3 at once); try again");
        let theirs = a.admit(1001).unwrap();
        assert!(theirs.is_some(), "another user is still let in");
        assert!(a.admit(0).unwrap().is_none(), "root: never refused, never counted");
        mine.pop();
        assert!(a.admit(1000).unwrap().is_some(), "a closed connection gives its place back");
        // and all users together
        let a = Admission::new(MAX_USER_CONNECTIONS);
        let _all: Vec<_> = (0..MAX_USER_CONNECTIONS as u32).map(|i| a.admit(1000 + i % 3).unwrap()).collect();
        assert_eq!(a.admit(2000).err(), Some(Refusal::TooMany));
        assert!(a.admit(0).is_ok());
    }

    /// A client pipelining requests and never reading the replies: the daemon's reply write
    /// blocks; it gives up after REPLY_WRITE_TIMEOUT and closes, freeing the connection.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_its_replies_is_closed() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("s.sock");
        let l = bind(&sock).unwrap();
        tokio::spawn(serve(l, Arc::new(mgr(&d.path().join("state")))));
        let mut s = UnixStream::connect(&sock).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let line = encode_line(&Request::Status { session: None });
        let pipelining = async {
            loop {
                if let Err(e) = s.write_all(&line).await {
                    return e;
                }
            }
        };
        let e = tokio::time::timeout(std::time::Duration::from_secs(600), pipelining).await.expect("the daemon closes the connection");
        assert!(matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset), "{e}");
        let took = t0.elapsed();
        assert!(took >= REPLY_WRITE_TIMEOUT && took < REPLY_WRITE_TIMEOUT * 2, "{took:?}");
    }

    #[tokio::test]
    async fn socket_survives_garbage_and_oversized_lines() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("s.sock");
        let l = bind(&sock).unwrap();
        assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o660);
        assert!(matches!(bind(&sock), Err(ControlError::AlreadyRunning(_))));
        let m = Arc::new(mgr(&d.path().join("state")));
        tokio::spawn(serve(l, m));
        async fn ask(sock: &Path, bytes: &[u8]) -> String {
            let mut s = UnixStream::connect(sock).await.unwrap();
            s.write_all(bytes).await.unwrap();
            let mut out = String::new();
            let mut r = BufReader::new(s);
            r.read_line(&mut out).await.unwrap();
            out
        }
        assert!(ask(&sock, b"{nope\n").await.contains("malformed"));
        assert!(ask(&sock, b"{\"op\":\"explode\"}\n").await.contains("explode"));
        let big = vec![b'x'; MAX_LINE + 10];
        assert!(ask(&sock, &big).await.contains("longer than"));
        // a client that goes away mid-request does not hurt anyone
        drop(UnixStream::connect(&sock).await.unwrap());
        let ok = ask(&sock, b"{\"op\":\"status\",\"session\":null}\n").await;
        assert!(ok.contains("\"sessions\""), "{ok}");
    }
}
