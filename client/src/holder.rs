//! The processes that hold a session: a login's process (sshd's privileged per-connection
//! process, which runs the PAM module). The daemon watches them to stop a session whose
//! logins vanished without `close_session` (kill -9, OOM); the PAM module counts them in its
//! holder files. Both name a holder the same way: its pid and its start time, since a pid
//! alone may name another process once the first has exited.
use std::io;

use serde::{Deserialize, Serialize};

/// One process, by pid and start time (a pid is reused; the pair is not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    /// When the process started: clock ticks after boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
}

impl Holder {
    /// The process that has `pid` now; NotFound if there is none.
    pub fn of(pid: u32) -> io::Result<Holder> {
        Ok(Holder { pid, start_time: start_time(pid)? })
    }

    /// The calling process.
    pub fn me() -> io::Result<Holder> {
        Holder::of(std::process::id())
    }

    /// Whether this process still runs (has not exited; a zombie has exited). A pid now used
    /// by another process is not this one.
    pub fn is_alive(&self) -> bool {
        start_time(self.pid).is_ok_and(|t| t == self.start_time)
    }
}

/// A process's start time from /proc/PID/stat; NotFound for no such process, and for a
/// zombie (it has exited; only its parent has yet to reap it).
pub fn start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat)
        .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/stat: {why}")))?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("process {pid} has exited")))
}

/// (state, start time) of a /proc/PID/stat line; None for a zombie or dead process.
fn parse_stat(stat: &str) -> Result<Option<u64>, &'static str> {
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses, so split after the
    // last ')'. STATE is field 3, start time field 22.
    let rest = stat.rsplit_once(')').ok_or("no ')' after the command name")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = *fields.first().ok_or("no state field")?;
    let start: u64 = fields.get(22 - 3).ok_or("no start time field")?.parse().map_err(|_| "start time is not a number")?;
    Ok((!matches!(state, "Z" | "X" | "x")).then_some(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_even_with_odd_command_names() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 1 2 3";
        assert_eq!(parse_stat(line), Ok(Some(987654)));
        assert_eq!(parse_stat(&line.replace(") S ", ") Z ")), Ok(None), "a zombie has exited");
        assert!(parse_stat("4242 (x) S 1").is_err());
        assert!(parse_stat("no paren").is_err());
    }

    #[test]
    fn names_a_live_process_and_not_an_exited_one() {
        let me = Holder::me().unwrap();
        assert!(me.is_alive());
        assert!(!Holder { start_time: me.start_time + 1, ..me }.is_alive(), "same pid, another process");
        let mut child = std::process::Command::new("sleep").arg("10").spawn().unwrap();
        let h = Holder::of(child.id()).unwrap();
        assert!(h.is_alive());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!h.is_alive());
        assert_eq!(start_time(child.id()).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
