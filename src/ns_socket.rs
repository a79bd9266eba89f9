//! Sockets made inside a session's namespace, fast enough for a connection's path. A socket
//! belongs to the namespace of the thread that creates it, and keeps it wherever it is used
//! from; `ns::run_in_netns` (a new thread per call), or a helper thread, costs thread wake-ups
//! that the loopback bridge would pay on every connection's path (see docs/performance.md,
//! "Loopback bridge").
//!
//! So the calling thread enters the namespace for the one `socket()` call and goes back to the
//! daemon's own before returning: nothing else runs on it in between (no await), so no task
//! ever runs in a session's namespace. If it cannot go back, the daemon aborts rather than run
//! on in the wrong namespace (setns to a namespace it holds open fails only without memory).
use std::fs::File;
use std::io;
use std::sync::Arc;

use sessiond_client::ns::enter_netns;
use socket2::{Domain, Socket, Type};
use tracing::error;

#[derive(Clone)]
pub struct SocketMaker {
    /// The daemon's namespace (the host's), to go back to.
    home: Arc<File>,
}

impl SocketMaker {
    /// The namespace to go back to is the caller's.
    pub fn new() -> io::Result<SocketMaker> {
        Ok(SocketMaker { home: Arc::new(File::open("/proc/thread-self/ns/net")?) })
    }

    /// A new socket (close-on-exec, blocking: the caller sets what it needs) in the namespace `ns`.
    pub fn socket(&self, ns: &File, domain: Domain, ty: Type) -> io::Result<Socket> {
        enter_netns(ns)?;
        let made = Socket::new(domain, ty, None);
        if let Err(e) = enter_netns(&*self.home) {
            error!("cannot return to the daemon's network namespace after making a session socket ({e}); aborting");
            std::process::abort();
        }
        made
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_made_in_the_given_namespace_and_the_thread_goes_home() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: entering a namespace needs root");
            return;
        }
        // A namespace of our own: a thread that unshares and keeps it open via its fd.
        let other = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap();
        let maker = SocketMaker::new().unwrap();
        // A listener made there is not reachable from here, and one made at home is.
        let reachable_from_here = |s: Socket| {
            s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
            s.listen(1).unwrap();
            let at = s.local_addr().unwrap().as_socket().unwrap();
            std::net::TcpStream::connect(at).is_ok()
        };
        let there = maker.socket(&other, Domain::IPV4, Type::STREAM).unwrap();
        assert!(!reachable_from_here(there), "made in the other namespace");
        let home = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(std::net::TcpStream::connect(home.local_addr().unwrap()).is_ok(), "this thread went home");
        let again = maker.socket(&File::open("/proc/self/ns/net").unwrap(), Domain::IPV4, Type::STREAM).unwrap();
        assert!(reachable_from_here(again));
    }
}
