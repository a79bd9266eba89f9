//! Session -> host (issue 12 item 3): in every session, 127.0.0.1:P of each `host_services`
//! entry reaches the host's 127.0.0.1:P. The daemon binds 127.0.0.1:P inside the session (so
//! the port is reserved there: a session app that binds it gets EADDRINUSE) and joins each
//! connection, or each UDP peer's datagrams, to one it makes on the host from the session's
//! loopback 127.0.0.(sid+1), which the host service sees as the peer (as a license server on a
//! Windows terminal server sees each session's loopback).
//!
//! The replies come back to a session loopback, which the bridge's TPROXY rule diverts only to
//! transparent sockets: these host sockets are not, so the kernel delivers to them as usual.
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use sessiond_client::loopback::loopback_for;
use sessiond_client::ports::{HostService, Proto};
use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::bridge::UDP_IDLE;
use crate::metrics::{BridgeDirection, Metrics, RefusedReason};
use crate::ns_socket::SocketMaker;
use crate::sid::Sid;

/// Binds every service's port at 127.0.0.1 inside session `sid` and serves it until `gone`
/// closes (the session stopped, or the daemon ends). A port that cannot be bound (an app of
/// the session took it first) is logged and skipped.
pub async fn expose(maker: SocketMaker, metrics: Metrics, ns: Arc<File>, sid: Sid, services: Vec<HostService>, gone: watch::Receiver<()>) {
    for svc in services {
        match bind_inside(&maker, &ns, svc).await {
            Ok(Inside::Tcp(l)) => drop(tokio::spawn(serve_tcp(l, sid, svc.port, metrics.clone(), gone.clone()))),
            Ok(Inside::Udp(s)) => drop(tokio::spawn(serve_udp(Arc::new(s), sid, svc.port, metrics.clone(), gone.clone()))),
            Err(e) => warn!(session = %sid, service = %svc, "host service: cannot bind 127.0.0.1:{} in the session: {e}", svc.port),
        }
    }
    debug!(session = %sid, "host services exposed");
}

enum Inside {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

async fn bind_inside(maker: &SocketMaker, ns: &Arc<File>, svc: HostService) -> io::Result<Inside> {
    let at: SocketAddr = (Ipv4Addr::LOCALHOST, svc.port).into();
    let ty = match svc.proto {
        Proto::Tcp => Type::STREAM,
        Proto::Udp => Type::DGRAM,
    };
    let s = maker.socket(ns, Domain::IPV4, ty)?;
    s.set_nonblocking(true)?;
    match svc.proto {
        Proto::Tcp => {
            s.set_reuse_address(true)?;
            s.bind(&at.into())?;
            s.listen(1024)?;
            Ok(Inside::Tcp(TcpListener::from_std(s.into())?))
        }
        Proto::Udp => {
            s.bind(&at.into())?;
            Ok(Inside::Udp(UdpSocket::from_std(s.into())?))
        }
    }
}

/// A socket on the host, from the session's loopback (any port), for one inside peer.
fn host_socket(sid: Sid, ty: Type) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, ty, None)?;
    s.bind(&SocketAddr::from((loopback_for(sid), 0)).into())?;
    s.set_nonblocking(true)?;
    Ok(s)
}

async fn serve_tcp(listener: TcpListener, sid: Sid, port: u16, metrics: Metrics, mut gone: watch::Receiver<()>) {
    loop {
        let conn = tokio::select! {
            r = listener.accept() => match r {
                Ok((conn, _)) => conn,
                Err(e) => {
                    debug!(session = %sid, port, "host service: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = gone.changed() => return,
        };
        metrics.bridge_connection(BridgeDirection::SessionToHost);
        tokio::spawn(tcp_connection(conn, sid, port, metrics.clone(), gone.clone()));
    }
}

async fn tcp_connection(inside: TcpStream, sid: Sid, port: u16, metrics: Metrics, mut gone: watch::Receiver<()>) {
    let host: io::Result<TcpStream> = async {
        let s = host_socket(sid, Type::STREAM)?;
        TcpSocket::from_std_stream(s.into()).connect((Ipv4Addr::LOCALHOST, port).into()).await
    }
    .await;
    let host = match host {
        Ok(h) => h,
        Err(e) => {
            // Nothing listens on the host (or it refused): the session's client sees a reset.
            debug!(session = %sid, port, "host service: {e}");
            metrics.bridge_refused(BridgeDirection::SessionToHost, RefusedReason::NothingListening);
            let _ = SockRef::from(&inside).set_linger(Some(std::time::Duration::ZERO));
            return;
        }
    };
    let _ = inside.set_nodelay(true);
    let _ = host.set_nodelay(true);
    tokio::select! {
        r = crate::splice::relay(&inside, &host) => if let Err(e) = r { debug!(session = %sid, port, "host service: {e}") },
        _ = gone.changed() => {}
    }
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>;

/// Each session peer gets a host socket of its own (so the replies find it), ended after
/// `UDP_IDLE` without traffic.
async fn serve_udp(inside: Arc<UdpSocket>, sid: Sid, port: u16, metrics: Metrics, mut gone: watch::Receiver<()>) {
    let flows: Flows = Default::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = tokio::select! {
            r = inside.recv_from(&mut buf) => match r {
                Ok(r) => r,
                // An ICMP error for an earlier reply: not this socket's problem.
                Err(e) => { debug!(session = %sid, port, "host service: udp: {e}"); continue; }
            },
            _ = gone.changed() => return,
        };
        let known = flows.lock().unwrap().get(&peer).cloned();
        let host = match known {
            Some(h) => h,
            None => {
                let made: io::Result<UdpSocket> = async {
                    let s = UdpSocket::from_std(host_socket(sid, Type::DGRAM)?.into())?;
                    s.connect((Ipv4Addr::LOCALHOST, port)).await?;
                    Ok(s)
                }
                .await;
                let Ok(h) = made.inspect_err(|e| debug!(session = %sid, port, "host service: udp: {e}")) else { continue };
                let h = Arc::new(h);
                metrics.bridge_connection(BridgeDirection::SessionToHost);
                flows.lock().unwrap().insert(peer, h.clone());
                tokio::spawn(udp_replies(h.clone(), inside.clone(), peer, flows.clone(), gone.clone()));
                debug!(session = %sid, port, %peer, "host service: new udp flow");
                h
            }
        };
        let _ = host.send(&buf[..n]).await;
    }
}

async fn udp_replies(host: Arc<UdpSocket>, inside: Arc<UdpSocket>, peer: SocketAddr, flows: Flows, mut gone: watch::Receiver<()>) {
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            r = tokio::time::timeout(UDP_IDLE, host.recv(&mut buf)) => match r {
                Ok(Ok(n)) => { let _ = inside.send_to(&buf[..n], peer).await; }
                // Refused (nothing bound on the host yet) or failed: the next datagram may do
                // better; idle: the flow ends.
                Ok(Err(_)) => {}
                Err(_) => break,
            },
            _ = gone.changed() => break,
        }
    }
    flows.lock().unwrap().remove(&peer);
}
