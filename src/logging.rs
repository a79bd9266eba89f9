//! tracing to the journal under systemd, else to stderr; `SESSIOND_LOG` or `RUST_LOG` set the
//! filter.
//!
//! Under systemd (`JOURNAL_STREAM` names our stderr) every event goes to journald over its
//! native protocol with its fields and its spans' fields as journal fields, prefixed
//! `SESSIOND_`: the session spans carry `sid`, so `journalctl SESSIOND_SID=7` shows one
//! session's life; `SESSIOND_ADDRESS` and a failure's `SESSIOND_STEP` come the same way.
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The prefix of every field sessiond adds to a journal entry.
pub const JOURNAL_FIELD_PREFIX: &str = "SESSIOND";

pub fn init() {
    let filter = || {
        let f = std::env::var("SESSIOND_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "info".into());
        tracing_subscriber::EnvFilter::new(f)
    };
    if stderr_is_the_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal.with_field_prefix(Some(JOURNAL_FIELD_PREFIX.into())).with_syslog_identifier("sessiond".into());
                let _ = tracing_subscriber::registry().with(filter()).with(journal).try_init();
                return;
            }
            Err(e) => eprintln!("sessiond: cannot log to the journal ({e}); logging to stderr"),
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// systemd sets `JOURNAL_STREAM=DEVICE:INODE` of the stream it connects to stderr; it is ours
/// only if stderr is still that stream (a child whose stderr was redirected inherits the
/// variable too), as systemd.exec(5) prescribes.
fn stderr_is_the_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else { return false };
    value.to_str().and_then(parse_journal_stream) == Some((st.st_dev, st.st_ino))
}

fn parse_journal_stream(v: &str) -> Option<(u64, u64)> {
    let (dev, ino) = v.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:1234"), Some((8, 1234)));
        for bad in ["", "8", "8:", ":5", "a:b", "8:5:1", "-1:5"] {
            assert_eq!(parse_journal_stream(bad), None, "{bad}");
        }
    }
}
