//! A blocking control-socket client (no tokio): used by the CLI and the PAM module.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::{Request, Response, WatchEvent, encode_line};
use crate::{DEFAULT_SOCKET, SOCKET_ENV};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach sessiond at {path}: {source} (is the daemon running?)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("talking to sessiond at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("sessiond at {path} sent a reply this client does not understand: {message}")]
    BadReply { path: PathBuf, message: String },
    /// The daemon answered a stream request with an error.
    #[error("{0}")]
    Refused(String),
}

/// $SESSIOND_SOCKET, when set and not empty.
pub fn socket_from_env() -> Option<PathBuf> {
    std::env::var_os(SOCKET_ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// `--socket`, else $SESSIOND_SOCKET, else the default path.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf).or_else(socket_from_env).unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Sends one request and waits (up to `timeout`) for its reply.
pub fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut s = UnixStream::connect(path).map_err(|source| ClientError::Connect { path: path.into(), source })?;
    let io = |source| ClientError::Io { path: path.into(), source };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(&encode_line(req)).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).map_err(io)?;
    serde_json::from_str(&reply)
        .map_err(|e| ClientError::BadReply { path: path.into(), message: format!("{e}: {:?}", reply.chars().take(200).collect::<String>()) })
}

/// An open `watch` stream: each item is one line as the daemon sent it and its meaning.
pub struct Watch {
    path: PathBuf,
    lines: std::io::Lines<BufReader<UnixStream>>,
}

/// Sends `watch` and returns the stream (it blocks until the daemon sends the next line; the
/// daemon ends it only when it exits).
pub fn watch(path: &Path, timeout: Duration) -> Result<Watch, ClientError> {
    let mut s = UnixStream::connect(path).map_err(|source| ClientError::Connect { path: path.into(), source })?;
    let io = |source| ClientError::Io { path: path.into(), source };
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(&encode_line(&Request::Watch)).map_err(io)?;
    Ok(Watch { path: path.into(), lines: BufReader::new(s).lines() })
}

impl Iterator for Watch {
    /// The line (for printing as it came) and the event; an error reply ends the stream.
    type Item = Result<(String, WatchEvent), ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = match self.lines.next()? {
            Ok(l) => l,
            Err(source) => return Some(Err(ClientError::Io { path: self.path.clone(), source })),
        };
        let bad = |message: String| ClientError::BadReply { path: self.path.clone(), message };
        Some(match serde_json::from_str::<WatchEvent>(&line) {
            Ok(ev) => Ok((line, ev)),
            Err(e) => match serde_json::from_str::<Response>(&line) {
                Ok(Response::Error { message, .. }) => Err(ClientError::Refused(message)),
                _ => Err(bad(format!("{e}: {:?}", line.chars().take(200).collect::<String>()))),
            },
        })
    }
}
