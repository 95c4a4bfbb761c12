//! One client connection: check its first bytes, choose a backend, connect
//! (trying the next one on failure, reporting the failure to the backend's
//! checker), then hand both sockets to a pump: [`Pump`] when both sides are
//! plain TCP, [`crate::proxy::stream::pump`] when either side is TLS.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::io::Read as _;

use socket2::SockRef;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::Instrument;

use crate::balancer::Backend;
use crate::config::{AcceptProxyConfig, Config, ListenerConfig, ListenerProtocol, Protocol};
use crate::proxy::accept_proxy::Origin;
use crate::proxy::amqp;
use crate::proxy::conn_info::ConnInfo;
use crate::proxy::direction::{End, Limits, Meters, Shared};
use crate::proxy::pump::Pump;
use crate::proxy::socket::set_socket_options;
use crate::proxy::socket::Named;
use crate::proxy::stream::Stream;
use crate::proxy::upstream::ClientAddrs;
use crate::proxy::Proxy;
use crate::telemetry::access;
use crate::telemetry::metrics::{self, LISTENER_PLAIN, LISTENER_TLS};

/// Serves one accepted client connection to its end. (Not an `async fn`: one
/// would hold its arguments beside the inner future's copies of them.)
pub(crate) fn serve(
    proxy: Arc<Proxy>,
    client: TcpStream,
    peer: SocketAddr,
    id: u64,
) -> impl Future<Output = ()> {
    let span = tracing::info_span!("conn", id, peer = Empty, via = Empty, backend = Empty);
    async move {
        let started = Instant::now();
        let mut client = client;
        let Some(origin) = origin(&proxy, &mut client, peer, false).await else {
            return;
        };
        let (handshake, protocol) = {
            let c = proxy.config.load();
            (c.timeouts.handshake.get(), c.protocol)
        };
        let conn = Conn {
            origin: &origin,
            id,
            started,
        };
        if protocol == Protocol::Tcp {
            return carry(&proxy, Stream::Plain(client), Vec::new(), conn, &PLAIN).await;
        }
        match read_protocol_header(&mut client, handshake).await {
            Ok(head) => carry(&proxy, Stream::Plain(client), head, conn, &PLAIN).await,
            Err(why) => rejected(&proxy, why, conn, LISTENER_PLAIN),
        }
    }
    .instrument(span)
}

/// Serves one connection accepted on the TLS listener: the PROXY header where
/// `tls.accept_proxy` asks for one, the TLS handshake and the AMQP protocol
/// header, both within `timeouts.handshake`, then the same as [`serve`].
pub(crate) async fn serve_tls(proxy: Arc<Proxy>, client: TcpStream, peer: SocketAddr, id: u64) {
    let span = tracing::info_span!(
        "conn",
        id,
        peer = Empty,
        via = Empty,
        tls = true,
        backend = Empty
    );
    async move {
        let started = Instant::now();
        let mut client = client;
        let Some(origin) = origin(&proxy, &mut client, peer, true).await else {
            return;
        };
        let handshake = proxy.config.load().timeouts.handshake.get();
        let deadline = Instant::now() + handshake;
        let Some(client) = proxy.tls.accept(client, origin.peer, handshake).await else {
            return;
        };
        let conn = Conn {
            origin: &origin,
            id,
            started,
        };
        let mut client = Stream::from(client);
        if proxy.config.load().protocol == Protocol::Tcp {
            return carry(&proxy, client, Vec::new(), conn, &TLS).await;
        }
        match read_header_by(&mut client, deadline).await {
            Ok(head) => carry(&proxy, client, head, conn, &TLS).await,
            Err(why) => rejected(&proxy, why, conn, LISTENER_TLS),
        }
    }
    .instrument(span)
    .await
}

/// Serves one connection accepted on a listener of `listeners:` (`node`: the
/// backend its socket leads to, on a `stream` listener's port per node): the
/// PROXY header and TLS where the listener has them, the AMQP header on an
/// `amqp` listener, then the backend's port for the listener's protocol.
pub(crate) async fn serve_named(
    proxy: Arc<Proxy>,
    listener: Arc<Named>,
    node: Option<Arc<str>>,
    client: TcpStream,
    peer: SocketAddr,
    id: u64,
) {
    let span = tracing::info_span!(
        "conn",
        id,
        listener = listener.name,
        node = node.as_deref(),
        peer = Empty,
        via = Empty,
        backend = Empty
    );
    async move {
        let started = Instant::now();
        let mut client = client;
        let config = proxy.config.load_full();
        let Some(named) = config.listeners.iter().find(|l| l.name == listener.name) else {
            // Removed from the file by a reload (its socket stays until a restart).
            tracing::debug!("listener no longer configured, closing");
            return;
        };
        let origin = match &named.accept_proxy {
            None => direct(peer),
            Some(accept) => match admit(&mut client, peer, accept, listener.name).await {
                Some(origin) => origin,
                None => return,
            },
        };
        let conn = Conn {
            origin: &origin,
            id,
            started,
        };
        let route = Route {
            listener: listener.name,
            protocol: Some(listener.protocol),
            named: Some(named.clone()),
            node,
        };
        let handshake = config.timeouts.handshake.get();
        let deadline = Instant::now() + handshake;
        let mut client = match &named.tls {
            None => Stream::Plain(client),
            Some(_) => {
                let accepted =
                    proxy
                        .tls
                        .accept_named(listener.name, client, origin.peer, handshake);
                match accepted.await {
                    Some(s) => Stream::from(s),
                    None => return,
                }
            }
        };
        drop(config);
        if listener.protocol != ListenerProtocol::Amqp {
            return carry(&proxy, client, Vec::new(), conn, &route).await;
        }
        match read_header_by(&mut client, deadline).await {
            Ok(head) => carry(&proxy, client, head, conn, &route).await,
            Err(why) => rejected(&proxy, why, conn, listener.name),
        }
    }
    .instrument(span)
    .await
}

/// Reads the client's first bytes (TLS, or a listener of `listeners:`) by
/// `deadline` and checks they can start the AMQP protocol header.
async fn read_header_by(client: &mut Stream, deadline: Instant) -> Result<Vec<u8>, &'static str> {
    let mut head = [0u8; 8];
    match tokio::time::timeout_at(deadline, client.read(&mut head)).await {
        Err(_) => Err("timeout"),
        Ok(Err(_)) => Err("closed"),
        Ok(Ok(n)) => header_check(&head[..n]),
    }
}

/// Who the client is: the TCP peer, or, on a listener with `accept_proxy`,
/// what its PROXY header says (`None`: turned away, logged and counted).
/// Recorded in the connection's span: `peer` the client, `via` the load
/// balancer that sent the header.
async fn origin(
    proxy: &Proxy,
    client: &mut TcpStream,
    peer: SocketAddr,
    tls: bool,
) -> Option<Origin> {
    let config = {
        let c = proxy.config.load();
        if accept_proxy_of(&c, tls).is_none() {
            return Some(direct(peer));
        }
        Arc::clone(&c)
    };
    let accept = accept_proxy_of(&config, tls)?;
    let listener = if tls { LISTENER_TLS } else { LISTENER_PLAIN };
    admit(client, peer, accept, listener).await
}

/// A connection on a listener without `accept_proxy`: the TCP peer is the
/// client (recorded in the span).
fn direct(peer: SocketAddr) -> Origin {
    tracing::Span::current().record("peer", tracing::field::display(peer));
    Origin::direct(peer)
}

/// The PROXY step of a listener with `accept_proxy`, its client recorded in
/// the span. Boxed: only such listeners pay for its buffers, and only until
/// the header is read.
async fn admit(
    client: &mut TcpStream,
    peer: SocketAddr,
    accept: &AcceptProxyConfig,
    listener: &'static str,
) -> Option<Origin> {
    let origin = Box::pin(crate::proxy::accept_proxy::admit(
        client, peer, accept, listener,
    ))
    .await?;
    let span = tracing::Span::current();
    span.record("peer", tracing::field::display(origin.peer));
    if origin.local.is_some() {
        span.record("via", tracing::field::display(peer));
    }
    Some(origin)
}

/// The listener's `accept_proxy`: `tls.accept_proxy` or the plain listener's.
fn accept_proxy_of(c: &Config, tls: bool) -> Option<&AcceptProxyConfig> {
    if tls {
        c.tls.as_ref().and_then(|t| t.accept_proxy.as_ref())
    } else {
        c.accept_proxy.as_ref()
    }
}

/// AMQP clients speak first: reads (bounded) the client's first bytes and
/// checks they can start the protocol header, so silent or non-AMQP clients are
/// turned away without costing a backend connection. What was read is sent
/// upstream ahead of the rest.
async fn read_protocol_header(
    client: &mut TcpStream,
    within: Duration,
) -> Result<Vec<u8>, &'static str> {
    let mut head = [0u8; 8];
    // Most clients send it with their connect, so it is usually here already:
    // read straight from the socket, without waiting for tokio to learn that it
    // is readable (a trip through the event loop) and without arming a timer.
    let n = match (&*SockRef::from(&*client)).read(&mut head) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            match tokio::time::timeout(within, client.read(&mut head)).await {
                Err(_) => return Err("timeout"),
                Ok(Err(_)) => return Err("closed"),
                Ok(Ok(n)) => n,
            }
        }
        Err(_) => return Err("closed"),
    };
    header_check(&head[..n])
}

/// The first bytes a client sent, if they can start the AMQP protocol header.
fn header_check(head: &[u8]) -> Result<Vec<u8>, &'static str> {
    let k = head.len().min(4);
    match head.len() {
        0 => Err("closed"),
        _ if head[..k] == amqp::PROTOCOL_HEADER[..k] => Ok(head.to_vec()),
        _ => Err("not_amqp"),
    }
}

fn rejected(proxy: &Proxy, why: &'static str, conn: Conn<'_>, listener: &'static str) {
    tracing::debug!(reason = why, "client rejected before connecting upstream");
    metrics::handshake_rejected(why);
    ended(proxy, &conn, listener, "rejected");
}

/// Where a connection goes: the listener it came in on, what it carries,
/// and which port of which backends.
pub(crate) struct Route {
    listener: &'static str,
    /// `None`: the one-listener form, whose `protocol` (amqp or tcp) is read
    /// from the config in force.
    protocol: Option<ListenerProtocol>,
    /// The listener of `listeners:` (the backends' ports for it).
    named: Option<ListenerConfig>,
    /// The one backend this connection may go to (a `stream` port per node).
    node: Option<Arc<str>>,
}

impl Route {
    /// Carries AMQP (header checked, closed at a frame boundary).
    fn amqp(&self, c: &Config) -> bool {
        match self.protocol {
            None => c.protocol == Protocol::Amqp,
            Some(p) => p == ListenerProtocol::Amqp,
        }
    }

    /// `None`: the connection goes to the backend's AMQP address, with its
    /// `tls` and `send_proxy`; `Some`: to the port of the listener's protocol,
    /// plain TCP (validation makes sure every backend has one).
    fn other_port(&self, backend: &Backend) -> Option<String> {
        match (&self.named, self.protocol) {
            (Some(l), Some(p)) if p != ListenerProtocol::Amqp => {
                Some(l.backend_address(&backend.config).unwrap_or_default())
            }
            _ => None,
        }
    }
}

/// The routes of the one-listener form.
static PLAIN: Route = Route {
    listener: LISTENER_PLAIN,
    protocol: None,
    named: None,
    node: None,
};
static TLS: Route = Route {
    listener: LISTENER_TLS,
    protocol: None,
    named: None,
    node: None,
};

/// A client connection once its origin is known.
#[derive(Clone, Copy)]
struct Conn<'a> {
    origin: &'a Origin,
    id: u64,
    /// When it was accepted.
    started: Instant,
}

/// The end of a connection that reached no backend: its record (access log).
fn ended(proxy: &Proxy, conn: &Conn<'_>, listener: &'static str, end: &'static str) {
    let record = access::Record {
        client: conn.origin.peer,
        listener,
        backend: None,
        sent: 0,
        received: 0,
        duration: conn.started.elapsed(),
        carried: None,
        end,
    };
    access::finished(&record, proxy.config.load().log.access);
}

/// Connects a backend and carries the connection to its end: plain TCP on both
/// sides takes [`Pump`]; TLS on either side takes [`crate::proxy::stream::pump`].
/// `head`: client bytes already read (the start of the protocol header), to be
/// sent upstream first.
async fn carry(proxy: &Arc<Proxy>, client: Stream, head: Vec<u8>, conn: Conn<'_>, route: &Route) {
    // Boxed, like the TLS pump below: a future is as large as its largest await
    // point, and connecting (TLS handshake included) is over before the pump
    // starts; inline it would grow every idle connection by its size.
    let connecting = Box::pin(connect(proxy, client.tcp(), conn.origin, route));
    let (backend, server) = match connecting.await {
        Ok(connected) => connected,
        Err(reason) => {
            tracing::warn!(reason, "no backend reachable, closing client");
            metrics::no_backend(route.listener, reason);
            return ended(proxy, &conn, route.listener, "no_backend");
        }
    };
    tracing::Span::current().record("backend", backend.name());
    tracing::debug!("connected");
    let _active = backend.connection_guard();
    let orders = backend.conns.register(conn.id);
    let (limits, handshake) = {
        let c = proxy.config.load();
        let amqp = route.amqp(&c);
        let limits = Limits {
            close: c.drain.close_timeout.get(),
            idle: c.timeouts.idle.map(|d| d.get()),
            amqp,
            splice: c.data_path.splice,
        };
        (limits, amqp && c.clients.handshake)
    };
    let tls = !matches!(client, Stream::Plain(_));
    let info = Arc::new(
        ConnInfo::new(
            &proxy.clients,
            conn.id,
            conn.origin.peer,
            tls,
            route.listener,
            backend.name(),
            handshake,
        )
        .with_cert_name(client_cert_name(&client)),
    );
    // Out of the table when the connection ends, however it ends.
    let listed = proxy.clients.insert(info);
    let meters = Meters {
        up: &backend.bytes_in,
        down: &backend.bytes_out,
    };
    let result = match (&client, &server) {
        _ if route.protocol == Some(ListenerProtocol::Stream) => {
            let advertise = crate::proxy::stream_route::Advertise::new(
                proxy,
                route.named.as_ref(),
                conn.origin,
                &client,
                &backend,
            );
            crate::proxy::stream_route::boxed(
                client,
                server,
                orders,
                limits,
                meters,
                Arc::clone(listed.info()),
                advertise,
            )
            .await
        }
        (Stream::Plain(client), Stream::Plain(server)) => {
            let shared = Shared::with_info(Some(Arc::clone(listed.info())));
            Pump::new(client, server, head, &shared, orders, limits, meters).await
        }
        _ => {
            Box::pin(crate::proxy::stream::pump(
                client,
                server,
                &head,
                orders,
                limits,
                meters,
                Some(Arc::clone(listed.info())),
            ))
            .await
        }
    };
    // Only closes warren asked for count as graceful or forced (not idle timeouts).
    if backend.conns.unregister(conn.id).is_some_and(|o| o.told()) {
        match &result {
            Ok(End::Graceful) => metrics::close_ended(backend.name(), true),
            Ok(End::Hard) => metrics::close_ended(backend.name(), false),
            _ => {}
        }
    }
    let end = match &result {
        Ok(End::Closed) => "closed",
        Ok(End::Graceful) => "warren_close",
        Ok(End::Hard) => "cut",
        Err(e) if is_reset(e) => "reset",
        Err(_) => "error",
    };
    match result {
        Ok(_) => tracing::debug!(end, "closed"),
        Err(e) => tracing::debug!(error = %e, "closed with error"),
    }
    let record = access::Record {
        client: conn.origin.peer,
        listener: route.listener,
        backend: Some(backend.name()),
        sent: listed.info().bytes_up.load(Ordering::Relaxed),
        received: listed.info().bytes_down.load(Ordering::Relaxed),
        duration: conn.started.elapsed(),
        carried: Some(listed.info().started.elapsed()),
        end,
    };
    access::finished(&record, proxy.config.load().log.access);
}

/// The common name of the certificate a client showed on the TLS listener.
fn client_cert_name(client: &Stream) -> Option<String> {
    let Stream::Tls(s) = client else {
        return None;
    };
    let tokio_rustls::TlsStream::Server(s) = s.as_ref() else {
        return None;
    };
    let cert = s.get_ref().1.peer_certificates()?.first()?;
    crate::tls::common_name(cert)
}

/// Connects to the first reachable candidate backend (bounded by `retries`),
/// sending the PROXY header and running TLS where the backend asks for them;
/// a successful connect's time is recorded. `Err`: why none was connected, one
/// of `metrics::NO_BACKEND_REASONS`.
async fn connect(
    proxy: &Arc<Proxy>,
    client: &TcpStream,
    origin: &Origin,
    route: &Route,
) -> Result<(Arc<Backend>, Stream), &'static str> {
    let config = proxy.config.load();
    let timeout = config.timeouts.connect.get();
    let mut reason = "none_usable";
    let bit = route.protocol.map_or(0, |p| p.bit());
    let candidates = match &route.node {
        Some(node) => proxy
            .balancer
            .get(node)
            .filter(|b| b.usable_for(bit))
            .into_iter()
            .collect(),
        None => proxy.balancer.candidates_for(config.retries + 1, bit),
    };
    for backend in candidates {
        reason = "connect_failed";
        let other = route.other_port(&backend);
        let (addr, amqp_port) = match &other {
            Some(addr) => (addr.as_str(), false),
            None => (backend.config.address.as_str(), true),
        };
        let start = Instant::now();
        let err = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(server)) => {
                set_socket_options(SockRef::from(&server));
                if !amqp_port || !crate::proxy::upstream::needs_preparing(&backend) {
                    metrics::backend_connected(backend.name(), start.elapsed());
                    return Ok((backend, Stream::Plain(server)));
                }
                // The address the client connected to, for the PROXY header: the
                // one a received header gave, else warren's end, asked for only
                // here, to spare the plain path a syscall.
                let local = match origin
                    .local
                    .as_deref()
                    .map_or_else(|| client.local_addr(), |l| Ok(*l))
                {
                    Ok(local) => local,
                    Err(e) => {
                        tracing::debug!(error = %e, "client socket gone");
                        return Err("local_error");
                    }
                };
                let addrs = ClientAddrs {
                    peer: origin.peer,
                    local,
                };
                match crate::proxy::upstream::prepare(proxy, &backend, server, addrs, timeout).await
                {
                    Ok(server) => {
                        metrics::backend_connected(backend.name(), start.elapsed());
                        return Ok((backend, server));
                    }
                    Err(e) => {
                        metrics::connect_error(backend.name(), e.kind());
                        e.to_string()
                    }
                }
            }
            Ok(Err(e)) => {
                metrics::connect_error(backend.name(), error_kind(&e));
                if !blames_backend(&e) {
                    // Out of file descriptors or ports here: not the node's fault,
                    // and no other node would do better.
                    tracing::warn!(backend = backend.name(), error = %e, "cannot connect: local resource exhausted");
                    return Err("local_error");
                }
                e.to_string()
            }
            Err(_) => {
                metrics::connect_error(backend.name(), "timeout");
                format!("connect timed out after {timeout:?}")
            }
        };
        tracing::warn!(backend = backend.name(), address = addr, error = %err, "backend connect failed, trying the next");
        // The AMQP port's failures count against the node (passive detection);
        // another protocol's port has its own check (`protocol-listener`).
        if amqp_port {
            backend.report_connect_failure(&err);
        }
    }
    Err(reason)
}

/// A peer reset the connection (a client that closes its socket with bytes
/// unread after close-ok does).
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
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
