//! A blocking control-socket client (no tokio): used by the CLI and the PAM module.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::{Request, Response, encode_line};
use crate::{DEFAULT_SOCKET, SOCKET_ENV};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach sessiond at {path}: {source} (is the daemon running?)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("talking to sessiond at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("sessiond at {path} sent a reply this client does not understand: {message}")]
    BadReply { path: PathBuf, message: String },
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
