//! Sockets made inside a session's namespace, fast enough for a connection's path: a socket
//! belongs to the namespace of the thread that creates it, so one dedicated thread enters the
//! session's namespace, makes the socket and goes back to the host's before taking the next
//! request. `ns::run_in_netns` (a new thread per call) costs tens of microseconds, which the
//! loopback bridge would pay on every connection.
//!
//! The thread is the daemon's own (never a tokio worker or a pooled thread), and it never keeps
//! a session's namespace: if it cannot go back to the host's, it stops serving (every request
//! then fails) rather than hold a namespace that is being stopped.
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::mpsc;

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Socket, Type};
use tokio::sync::oneshot;
use tracing::error;

struct Request {
    ns: Arc<File>,
    domain: Domain,
    ty: Type,
    reply: oneshot::Sender<io::Result<Socket>>,
}

#[derive(Clone)]
pub struct SocketMaker {
    tx: mpsc::Sender<Request>,
}

impl SocketMaker {
    /// Starts the thread; the namespace it returns to is the caller's.
    pub fn spawn() -> io::Result<SocketMaker> {
        let home = File::open("/proc/thread-self/ns/net")?;
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new().name("sessiond-nssock".into()).spawn(move || {
            for req in rx {
                let made = setns(&*req.ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from).and_then(|()| Socket::new(req.domain, req.ty, None));
                let back = setns(&home, CloneFlags::CLONE_NEWNET);
                let _ = req.reply.send(made);
                if let Err(e) = back {
                    error!("loopback bridge: cannot return to the host namespace ({e}); no more session sockets");
                    return;
                }
            }
        })?;
        Ok(SocketMaker { tx })
    }

    /// A new socket (close-on-exec, blocking: the caller sets what it needs) in the namespace `ns`.
    pub async fn socket(&self, ns: Arc<File>, domain: Domain, ty: Type) -> io::Result<Socket> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request { ns, domain, ty, reply }).map_err(|_| io::Error::other("the namespace socket thread has stopped"))?;
        rx.await.map_err(|_| io::Error::other("the namespace socket thread has stopped"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_is_made_in_the_given_namespace_and_the_thread_goes_home() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: entering a namespace needs root");
            return;
        }
        // A namespace of our own: a thread that unshares and keeps it open via its fd.
        let other = std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
            File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap();
        let maker = SocketMaker::spawn().unwrap();
        // A listener made there is not reachable from here, and one made at home is.
        let reachable_from_here = |s: Socket| {
            s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
            s.listen(1).unwrap();
            let at = s.local_addr().unwrap().as_socket().unwrap();
            std::net::TcpStream::connect(at).is_ok()
        };
        let there = maker.socket(Arc::new(other), Domain::IPV4, Type::STREAM).await.unwrap();
        assert!(!reachable_from_here(there), "made in the other namespace");
        let home = maker.socket(Arc::new(File::open("/proc/self/ns/net").unwrap()), Domain::IPV4, Type::STREAM).await.unwrap();
        assert!(reachable_from_here(home), "the thread went home in between");
    }
}
