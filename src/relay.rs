//! The supervising half of `sessiond exec --user`: waits for the user's program, passes on the
//! signals the caller sends it, and, when the caller is on a terminal, relays between that
//! terminal (in raw mode, so ^C, ^Z and friends reach the program as bytes) and the program's
//! own pty, window size included, as ssh and `machinectl shell` do. The program never holds a
//! descriptor of the caller's terminal.
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, ExitStatus};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{op}: {source}")]
    Sys { op: &'static str, source: Errno },
    #[error("waiting for the command: {0}")]
    Wait(std::io::Error),
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> RelayError {
    move |source| RelayError::Sys { op, source }
}

/// Signals passed on to the program (a caller's `kill`, ^C on a terminal that is not in raw
/// mode, a hang-up), the window size changing, and the program ending.
const FORWARDED: [Signal; 4] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT];

/// The signals this process handles, blocked and read from a signalfd.
pub struct Signals(SignalFd);

impl Signals {
    /// Blocks them (this process is single-threaded: the thread's mask is the process's).
    /// The child inherits the mask; `exec::become_user` clears it before the user's program.
    pub fn block() -> Result<Signals, RelayError> {
        let mut set = SigSet::empty();
        for s in FORWARDED.into_iter().chain([Signal::SIGCHLD, Signal::SIGWINCH]) {
            set.add(s);
        }
        set.thread_block().map_err(sys("blocking signals"))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(sys("signalfd"))?;
        Ok(Signals(fd))
    }

    /// Handles what arrived: forwards FORWARDED to `child`; true when the window size changed.
    fn handle(&self, child: Pid) -> Result<bool, RelayError> {
        let mut resized = false;
        while let Some(info) = self.0.read_signal().map_err(sys("reading signals"))? {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGWINCH) => resized = true,
                Ok(s) if FORWARDED.contains(&s) => {
                    let _ = kill(child, s);
                }
                _ => {} // SIGCHLD: the caller checks the child
            }
        }
        Ok(resized)
    }
}

/// A pty for the program, set up like the caller's terminal (modes and window size).
pub struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    pub fn open_like(term: &impl AsFd) -> Result<Pty, RelayError> {
        let modes = tcgetattr(term).map_err(sys("reading the terminal's modes"))?;
        let p = nix::pty::openpty(None, &modes).map_err(sys("openpty"))?;
        for fd in [&p.master, &p.slave] {
            // neither may leak into the program beyond its stdin/stdout/stderr
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(sys("close-on-exec on the pty"))?;
        }
        fcntl(&p.master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(sys("non-blocking pty"))?;
        let pty = Pty { master: p.master, slave: p.slave };
        copy_window_size(term.as_fd(), pty.master.as_fd());
        Ok(pty)
    }

    /// A descriptor of the program's side, for one of its stdin/stdout/stderr.
    pub fn slave_fd(&self) -> Result<OwnedFd, RelayError> {
        self.slave.try_clone().map_err(|e| RelayError::Sys { op: "dup of the pty", source: Errno::from_raw(e.raw_os_error().unwrap_or(0)) })
    }
}

fn copy_window_size(from: BorrowedFd, to: BorrowedFd) {
    if let Ok(ws) = rustix::termios::tcgetwinsize(from) {
        let _ = rustix::termios::tcsetwinsize(to, ws);
    }
}

/// The caller's terminal in raw mode for as long as this lives.
struct RawMode<'a> {
    term: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> RawMode<'a> {
    fn enter(term: BorrowedFd<'a>) -> Result<RawMode<'a>, RelayError> {
        let saved = tcgetattr(term).map_err(sys("reading the terminal's modes"))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(term, SetArg::TCSADRAIN, &raw).map_err(sys("raw mode"))?;
        Ok(RawMode { term, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        let _ = tcsetattr(self.term, SetArg::TCSADRAIN, &self.saved);
    }
}

/// Waits for `child` (no terminal: it has stdin/stdout/stderr of its own), passing signals on.
pub fn wait(mut child: Child, signals: Signals) -> Result<ExitStatus, RelayError> {
    let pid = Pid::from_raw(child.id() as i32);
    loop {
        if let Some(status) = child.try_wait().map_err(RelayError::Wait)? {
            return Ok(status);
        }
        let mut fds = [PollFd::new(signals.0.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(sys("poll")(e)),
        }
        signals.handle(pid)?;
    }
}

/// Bytes read from the caller's terminal not yet written to the pty; past this, stop reading
/// (the program is not reading its input).
const MAX_PENDING: usize = 64 * 1024;

/// Relays between the caller's terminal `term` and `child`'s pty until the child ends (then
/// passes on what output is left), passing signals and window-size changes on.
pub fn relay(mut child: Child, pty: Pty, term: &impl AsFd, signals: Signals) -> Result<ExitStatus, RelayError> {
    let pid = Pid::from_raw(child.id() as i32);
    let Pty { master, slave } = pty;
    drop(slave); // the child's copies only: reading the master then ends (EIO) when they close
    let term = term.as_fd();
    let _raw = RawMode::enter(term)?;
    let mut out = Output::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut term_open = true;
    let mut master_open = true;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(status) = child.try_wait().map_err(RelayError::Wait)? {
            // What the program wrote last is still in the pty; anything that outlives it and
            // keeps the pty open (a background job) is not waited for.
            while master_open {
                match nix::unistd::read(&master, &mut buf) {
                    Ok(n) if n > 0 => out.write(&buf[..n]),
                    _ => master_open = false,
                }
            }
            return Ok(status);
        }
        // Only descriptors with something to wait for: a hung-up one would report POLLHUP
        // at once, for ever.
        let mut fds = vec![PollFd::new(signals.0.as_fd(), PollFlags::POLLIN)];
        let master_at = master_open.then(|| {
            let events = if pending.is_empty() { PollFlags::POLLIN } else { PollFlags::POLLIN | PollFlags::POLLOUT };
            fds.push(PollFd::new(master.as_fd(), events));
            fds.len() - 1
        });
        let read_term = term_open && pending.len() < MAX_PENDING;
        let term_at = read_term.then(|| {
            fds.push(PollFd::new(term, PollFlags::POLLIN));
            fds.len() - 1
        });
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(sys("poll")(e)),
        }
        let ready = |at: Option<usize>| at.and_then(|i| fds[i].revents()).unwrap_or(PollFlags::empty());
        let (sig, from_master, from_term) = (ready(Some(0)), ready(master_at), ready(term_at));
        if !sig.is_empty() && signals.handle(pid)? {
            copy_window_size(term, master.as_fd());
        }
        if from_master.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(&master, &mut buf) {
                Ok(n) if n > 0 => out.write(&buf[..n]),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                // EIO: every descriptor of the program's side is closed
                _ => master_open = false,
            }
        }
        if from_master.contains(PollFlags::POLLOUT) && !pending.is_empty() {
            match nix::unistd::write(&master, &pending) {
                Ok(n) => drop(pending.drain(..n)),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(_) => pending.clear(),
            }
        }
        if from_term.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(term, &mut buf) {
                Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                // the caller's terminal hung up: the program gets SIGHUP when its pty goes
                _ => term_open = false,
            }
        }
    }
}

/// The caller's stdout; once a write fails, output is read and dropped (so the program does
/// not block on a full pty).
#[derive(Default)]
struct Output {
    broken: bool,
}

impl Output {
    fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        if self.broken {
            return;
        }
        let mut o = std::io::stdout().lock();
        if o.write_all(bytes).and_then(|()| o.flush()).is_err() {
            self.broken = true;
        }
    }
}
