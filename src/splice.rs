//! Joins two TCP connections with splice(2): each direction moves bytes from one socket into
//! a pipe and from the pipe into the other socket inside the kernel, with no copy through the
//! daemon's memory (pasta's path; copy_bidirectional's read/write pair copied every byte twice
//! through userspace and bounded the bridge at ~0.4x loopback, see docs/performance.md).
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call: the pipe's default capacity (16 pages). A 1 MiB pipe
/// (F_SETPIPE_SZ) measured no better on the 2-core test VM (docs/performance.md).
const CHUNK: usize = 64 * 1024;

/// Moves bytes both ways until both sides have finished sending (each end-of-stream is passed
/// on as a shutdown of the other side's sending half), or either fails. The bytes each way.
pub async fn relay(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b), one_way(b, a))
}

async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pipe_out, pipe_in): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
        let n = optimistic(from, Interest::READABLE, || splice(from, None, &pipe_in, None, CHUNK, flags)).await?;
        if n == 0 {
            // The peer finished sending: so do we, on the other side (ENOTCONN: it is gone).
            match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
                Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => return Err(e),
                _ => return Ok(total),
            }
        }
        let mut in_pipe = n;
        while in_pipe > 0 {
            in_pipe -= optimistic(to, Interest::WRITABLE, || splice(&pipe_out, None, to, None, in_pipe, flags)).await?;
        }
        total += n as u64;
    }
}

/// Runs `op` at once, and waits for `interest` on `sock` only when it would block: the data of
/// a request is usually there already when its connection is joined, and waiting for the
/// reactor's first report first would cost a turn of it (a wake-up) per direction.
async fn optimistic(sock: &TcpStream, interest: Interest, mut op: impl FnMut() -> nix::Result<usize>) -> io::Result<usize> {
    let mut cleared = false;
    loop {
        match op() {
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EAGAIN) if !cleared => {
                // Tell tokio the readiness it may hold is used up, then try once more: what
                // arrived before the clearing is read now, what arrives after it is reported.
                let _ = sock.try_io(interest, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
                cleared = true;
            }
            Err(nix::errno::Errno::EAGAIN) => {
                sock.ready(interest).await?;
                cleared = false;
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_each_end_of_stream_is_passed_on() {
        // client <-> (a, b spliced) <-> server
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let relay = tokio::spawn(async move { relay(&a, &b).await });
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), big.len());
        assert!(got == big, "the bytes arrive unchanged and in order");
        server.write_all(b"thanks").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"thanks");
        assert_eq!(relay.await.unwrap().unwrap(), (3_000_000, 6));
    }
}
