//! One client connection: choose a backend, connect (trying the next one on
//! failure), then carry bytes both ways until either side is done, following AMQP
//! frame boundaries so the connection can be closed the way a broker closes it.
//!
//! Plain TCP on both sides is carried by `pump::Pump`; TLS on either side by
//! `stream::pump`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use crate::amqp;
use crate::balancer::Backend;
use crate::config::Protocol;
use crate::direction::Shared;
use crate::pump::Pump;
use crate::stream::Stream;
use crate::upstream::ClientAddrs;
use crate::App;

/// Serves one accepted client connection to its end. (Not an `async fn`: one
/// would hold its arguments beside the inner future's copies of them.)
pub fn serve(
    app: Arc<App>,
    client: TcpStream,
    peer: SocketAddr,
    id: u64,
) -> impl Future<Output = ()> {
    let span = tracing::info_span!("conn", id, %peer, backend = tracing::field::Empty);
    async move {
        let _ = client.set_nodelay(true);
        set_keepalive(&client);
        let (handshake, protocol) = {
            let c = app.config.load();
            (c.timeouts.handshake.get(), c.protocol)
        };
        if protocol == Protocol::Tcp {
            return carry(&app, Stream::Plain(client), Vec::new(), peer, id).await;
        }
        if let Err(why) = await_protocol_header(&client, handshake).await {
            tracing::debug!(reason = why, "client rejected before connecting upstream");
            crate::metrics::handshake_rejected(why);
            return;
        }
        carry(&app, Stream::Plain(client), Vec::new(), peer, id).await
    }
    .instrument(span)
}

/// Serves one connection accepted on the TLS listener: the TLS handshake and the
/// AMQP protocol header, both within `timeouts.handshake`, then the same as [`serve`].
pub async fn serve_tls(app: Arc<App>, client: TcpStream, peer: SocketAddr, id: u64) {
    let span = tracing::info_span!("conn", id, %peer, tls = true, backend = tracing::field::Empty);
    async move {
        let _ = client.set_nodelay(true);
        set_keepalive(&client);
        let handshake = app.config.load().timeouts.handshake.get();
        let deadline = Instant::now() + handshake;
        let Some(mut client) = app.tls.accept(client, peer, handshake).await else {
            return;
        };
        if app.config.load().protocol == Protocol::Tcp {
            return carry(&app, Stream::from(client), Vec::new(), peer, id).await;
        }
        // A TLS stream cannot be peeked: the first bytes are read here and sent
        // upstream ahead of the rest.
        let mut head = [0u8; 8];
        let n = match tokio::time::timeout_at(deadline, client.read(&mut head)).await {
            Err(_) => Err("timeout"),
            Ok(Err(_)) | Ok(Ok(0)) => Err("closed"),
            Ok(Ok(n)) if head[..n.min(4)] == amqp::PROTOCOL_HEADER[..n.min(4)] => Ok(n),
            Ok(Ok(_)) => Err("not_amqp"),
        };
        let n = match n {
            Ok(n) => n,
            Err(why) => {
                tracing::debug!(reason = why, "client rejected before connecting upstream");
                crate::metrics::handshake_rejected(why);
                return;
            }
        };
        carry(&app, Stream::from(client), head[..n].to_vec(), peer, id).await
    }
    .instrument(span)
    .await
}

/// AMQP clients speak first: waits (bounded) for the client's first bytes and
/// checks they can start the protocol header, so silent or non-AMQP clients are
/// turned away without costing a backend connection.
async fn await_protocol_header(client: &TcpStream, within: Duration) -> Result<(), &'static str> {
    let mut head = [0u8; 8];
    let n = match tokio::time::timeout(within, client.peek(&mut head)).await {
        Err(_) => return Err("timeout"),
        Ok(Err(_)) | Ok(Ok(0)) => return Err("closed"),
        Ok(Ok(n)) => n,
    };
    let k = n.min(4);
    if head[..k] == amqp::PROTOCOL_HEADER[..k] {
        Ok(())
    } else {
        Err("not_amqp")
    }
}

/// Connects a backend and carries the connection to its end: plain TCP on both
/// sides takes [`pump`]; TLS on either side takes [`crate::stream::pump`].
/// `head`: client bytes already read (TLS clients), to be sent upstream first.
async fn carry(app: &Arc<App>, client: Stream, head: Vec<u8>, peer: SocketAddr, id: u64) {
    // Boxed, like the TLS pump below: a future is as large as its largest await
    // point, and connecting (TLS handshake included) is over before the pump
    // starts; inline it would grow every idle connection by its size.
    let Some((backend, server)) = Box::pin(connect(app, client.tcp(), peer)).await else {
        tracing::warn!("no backend reachable, closing client");
        return;
    };
    tracing::Span::current().record("backend", backend.name());
    tracing::debug!("connected");
    let _active = backend.connection_guard();
    let orders = backend.conns.register(id);
    let limits = {
        let c = app.config.load();
        Limits {
            close: c.drain.close_timeout.get(),
            idle: c.timeouts.idle.map(|d| d.get()),
            amqp: c.protocol == Protocol::Amqp,
        }
    };
    let meters = Meters {
        up: &backend.bytes_in,
        down: &backend.bytes_out,
    };
    let result = match (&client, &server) {
        (Stream::Plain(client), Stream::Plain(server)) => {
            let shared = Shared::new();
            Pump::new(client, server, &shared, orders, limits, meters).await
        }
        _ => {
            Box::pin(crate::stream::pump(
                client, server, &head, orders, limits, meters,
            ))
            .await
        }
    };
    // Only closes warren asked for count as graceful or forced (not idle timeouts).
    if backend.conns.unregister(id).is_some_and(|o| o.told()) {
        match &result {
            Ok(End::Graceful) => crate::metrics::close_ended(backend.name(), true),
            Ok(End::Hard) => crate::metrics::close_ended(backend.name(), false),
            _ => {}
        }
    }
    match result {
        Ok(end) => tracing::debug!(?end, "closed"),
        Err(e) => tracing::debug!(error = %e, "closed with error"),
    }
}

/// Connects to the first reachable candidate backend (bounded by `retries`),
/// sending the PROXY header and running TLS where the backend asks for them.
async fn connect(
    app: &Arc<App>,
    client: &TcpStream,
    peer: SocketAddr,
) -> Option<(Arc<Backend>, Stream)> {
    let config = app.config.load();
    let timeout = config.timeouts.connect.get();
    for backend in app.balancer.candidates(config.retries + 1) {
        let addr = backend.config.address.as_str();
        let err = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(server)) => {
                let _ = server.set_nodelay(true);
                set_keepalive(&server);
                if !crate::upstream::needs_preparing(&backend) {
                    return Some((backend, Stream::Plain(server)));
                }
                // The address the client connected to, for the PROXY header; asked
                // for only here, to spare the plain path a syscall.
                let local = match client.local_addr() {
                    Ok(local) => local,
                    Err(e) => {
                        tracing::debug!(error = %e, "client socket gone");
                        return None;
                    }
                };
                let addrs = ClientAddrs { peer, local };
                match crate::upstream::prepare(app, &backend, server, addrs, timeout).await {
                    Ok(server) => return Some((backend, server)),
                    Err(e) => {
                        crate::metrics::connect_error(backend.name(), e.kind());
                        e.to_string()
                    }
                }
            }
            Ok(Err(e)) => {
                crate::metrics::connect_error(backend.name(), error_kind(&e));
                if !blames_backend(&e) {
                    // Out of file descriptors or ports here: not the node's fault,
                    // and no other node would do better.
                    tracing::warn!(backend = backend.name(), error = %e, "cannot connect: local resource exhausted");
                    return None;
                }
                e.to_string()
            }
            Err(_) => {
                crate::metrics::connect_error(backend.name(), "timeout");
                format!("connect timed out after {timeout:?}")
            }
        };
        tracing::warn!(backend = backend.name(), error = %err, "backend connect failed, trying the next");
        crate::health::passive_failure(app, &backend, &err);
    }
    None
}

/// Connect errors that say something about the backend (as opposed to this host).
fn blames_backend(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NotFound
    ) || e.raw_os_error().is_none()
}

fn error_kind(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::ConnectionReset => "reset",
        io::ErrorKind::TimedOut => "timeout",
        _ => "other",
    }
}

/// TCP keepalive finds peers that vanished without a FIN long before the OS
/// default of two hours; AMQP heartbeats remain the primary liveness check.
fn set_keepalive(s: &TcpStream) {
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let _ = SockRef::from(s).set_tcp_keepalive(&ka);
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed.
    Closed,
    /// Closed with `connection.close` after a drain command.
    Graceful,
    /// Closed hard (command, or the graceful close timed out).
    Hard,
}

/// Time limits of one connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a graceful close may take before it turns hard.
    pub close: Duration,
    /// Close when neither direction carried a byte for this long.
    pub idle: Option<Duration>,
    /// Follow AMQP frames (false for `protocol: tcp`: a close is a hard close).
    pub amqp: bool,
}

/// Where a connection counts the bytes it forwards: one relaxed add per read, on
/// counters of its backend that the metrics read at scrape time.
#[derive(Clone, Copy, Debug)]
pub struct Meters<'a> {
    /// Client to broker.
    pub up: &'a AtomicU64,
    /// Broker to client.
    pub down: &'a AtomicU64,
}
