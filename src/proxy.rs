//! One client connection: choose a backend, connect (trying the next one on
//! failure), then carry bytes both ways until either side is done, following AMQP
//! frame boundaries so the connection can be closed the way a broker closes it.
//!
//! The data path reads into a per-thread scratch buffer and writes straight on, so
//! an idle connection holds no buffer at all; only bytes a slow peer has not taken
//! yet are copied into a buffer owned by the connection. Long payloads of plain
//! TCP connections (large body frames, or a stream that is not AMQP) are spliced
//! instead (`bulk`).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::amqp;
use crate::balancer::Backend;
use crate::bulk::{Bulk, Moved};
use crate::config::Protocol;
use crate::direction::{Chunk, Dir, Direction, Next, Shared, Timer, DISCARD_PAUSE};
use crate::drain::Command;
use crate::stream::Stream;
use crate::upstream::ClientAddrs;
use crate::App;

/// Bytes moved per read; large enough for bulk transfers.
const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_SIZE]);
}

/// Serves one accepted client connection to its end.
pub async fn serve(app: Arc<App>, client: TcpStream, peer: SocketAddr, id: u64) {
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
    .await
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
    let cmd = backend.conns.register(id);
    let told = cmd.clone();
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
    let result = match (client, server) {
        (Stream::Plain(client), Stream::Plain(server)) => {
            pump(&client, &server, cmd, limits, meters).await
        }
        (client, server) => {
            Box::pin(crate::stream::pump(
                client, server, &head, cmd, limits, meters,
            ))
            .await
        }
    };
    backend.conns.unregister(id);
    // Only closes warren asked for count as graceful or forced (not idle timeouts).
    if *told.borrow() != Command::Run {
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

/// Carries bytes both ways until both directions are done or a command ends them.
pub async fn pump(
    client: &TcpStream,
    server: &TcpStream,
    cmd: watch::Receiver<Command>,
    limits: Limits,
    meters: Meters<'_>,
) -> io::Result<End> {
    let shared = Shared::new();
    // Pinned in place and polled through references: a future moved into another
    // (an `async` block, a function argument) is stored again at each level, and
    // this one lives as long as the connection.
    let up = pin!(forward(
        Direction::new(Dir::Up, limits, &shared, meters.up),
        client,
        server,
        cmd.clone(),
    ));
    let down = pin!(forward(
        Direction::new(Dir::Down, limits, &shared, meters.down),
        server,
        client,
        cmd,
    ));
    both(up, down).await
}

/// Runs the two directions of a connection (in this one task) until both are
/// done: graceful if either closed gracefully. A hard end or an error of either
/// ends both at once.
pub(crate) async fn both(
    mut up: Pin<&mut impl Future<Output = io::Result<End>>>,
    mut down: Pin<&mut impl Future<Output = io::Result<End>>>,
) -> io::Result<End> {
    let mut ends: [Option<End>; 2] = [None, None];
    std::future::poll_fn(|cx| {
        for (i, dir) in [
            up.as_mut() as Pin<&mut dyn Future<Output = _>>,
            down.as_mut(),
        ]
        .into_iter()
        .enumerate()
        {
            if ends[i].is_some() {
                continue;
            }
            match dir.poll(cx) {
                Poll::Ready(Ok(End::Hard)) => return Poll::Ready(Ok(End::Hard)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(end)) => ends[i] = Some(end),
                Poll::Pending => {}
            }
        }
        match &ends {
            [Some(End::Graceful), Some(_)] | [Some(_), Some(End::Graceful)] => {
                Poll::Ready(Ok(End::Graceful))
            }
            [Some(_), Some(_)] => Poll::Ready(Ok(End::Closed)),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Waits until `s` is readable. Unlike `TcpStream::readable`, the future keeps no
/// waiter of its own (tokio's per-socket slot serves the one task of the
/// connection), so idle connections stay small.
fn readable(s: &TcpStream) -> impl Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| s.poll_read_ready(cx))
}

/// Waits until `s` is writable; see [`readable`].
fn writable(s: &TcpStream) -> impl Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| s.poll_write_ready(cx))
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

/// What one read did.
enum Step {
    Eof,
    Again,
    /// Bytes that could not be written at once, still to write.
    Pending(Vec<u8>),
    /// Read past the cut and dropped (see [`DISCARD_PAUSE`]).
    Discarded,
    /// The awaited close-ok arrived.
    Finished,
}

/// One direction: copies and tracks frames; closes the AMQP way on
/// [`Command::Close`] (see [`Direction`]). Long payloads are spliced (`bulk`).
async fn forward(
    mut d: Direction<'_>,
    src: &TcpStream,
    dst: &TcpStream,
    mut cmd: watch::Receiver<Command>,
) -> io::Result<End> {
    let (shared, moved) = (d.shared, d.moved);
    let mut bulk = Bulk::default();
    let mut cmd_open = true;
    let mut timer = Timer::default();
    loop {
        if cmd_open {
            if let Some(end) = d.follow(&cmd.borrow_and_update()) {
                return Ok(end);
            }
        }
        if bulk.active() {
            // Mid-frame (or a stream that is not AMQP): move bytes by splice(2).
            // A close waits for the frame to end, so its boundary stays exact.
            if d.deadline().is_some() && d.tracker.is_lost() {
                return Ok(End::Hard);
            }
            let (read, write) = match bulk.step(src, dst, &mut d.tracker, moved) {
                Ok(Moved::Some) => {
                    if d.close_due() {
                        // A payload still flowing when the close is due: give up.
                        return Ok(End::Hard);
                    }
                    d.touch();
                    tokio::task::consume_budget().await;
                    continue;
                }
                Ok(Moved::Eof) => return Ok(Box::pin(on_eof(dst, &d)).await),
                Ok(Moved::Wait { read, write }) => (read, write),
                // The same ends of a normal close as on the copying path below.
                Err(_) if d.ends_on_error() => return Ok(Box::pin(on_eof(dst, &d)).await),
                Err(_) if d.drops_on_error() => {
                    // What was read is dropped, as the copying path drops it.
                    bulk = Bulk::default();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let wake_at = d.wake_at();
            tokio::select! {
                r = readable(src), if read => r?,
                r = writable(dst), if write => r?,
                changed = cmd.changed(), if cmd_open => {
                    if changed.is_err() {
                        cmd_open = false;
                    }
                }
                _ = timer.at(wake_at), if wake_at.is_some() => {
                    if d.time_up() {
                        return Ok(End::Hard);
                    }
                }
            }
            continue;
        }
        let wait_for_client_told = match d.next() {
            Next::Read {
                wait_for_client_told,
            } => wait_for_client_told,
            Next::SendClose(frame) => {
                write_all(dst, &frame).await?;
                d.close_sent();
                false
            }
            Next::Hard => return Ok(End::Hard),
        };
        let wake_at = d.wake_at();
        tokio::select! {
            r = readable(src) => r?,
            changed = cmd.changed(), if cmd_open => {
                if changed.is_err() {
                    cmd_open = false;
                }
                continue;
            }
            _ = shared.notify.notified(), if wait_for_client_told => continue,
            _ = timer.at(wake_at), if wake_at.is_some() => {
                if d.time_up() {
                    return Ok(End::Hard);
                }
                continue;
            }
        }
        d.touch();
        // A close already under way between client and broker is left to finish.
        let closing = d.closing();
        let step = SCRATCH.with(|scratch| -> io::Result<Step> {
            let mut scratch = scratch.borrow_mut();
            let buf = &mut scratch[..bulk.read_size(SCRATCH_SIZE)];
            let n = match src.try_read(buf) {
                Ok(0) => return Ok(Step::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Again),
                Err(_) if d.ends_on_error() => return Ok(Step::Eof),
                Err(e) => return Err(e),
            };
            let data = &buf[..n];
            let k = match d.on_read(data) {
                Chunk::Forward(k) => k,
                Chunk::Discarded => return Ok(Step::Discarded),
                Chunk::Finished => return Ok(Step::Finished),
            };
            let mut out = &data[..k];
            if !closing && !shared.peer_closing.load(Ordering::Acquire) {
                // A long payload follows: what was read goes into a pipe, ahead of
                // the payload that will be spliced after it.
                if let Some(rest) = bulk.start(&d.tracker, out)? {
                    out = &out[out.len() - rest..];
                    if rest > 0 {
                        return Ok(Step::Pending(out.to_vec()));
                    }
                }
            }
            while !out.is_empty() {
                match dst.try_write(out) {
                    Ok(w) => out = &out[w..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Step::Pending(out.to_vec()));
                    }
                    Err(_) if d.drops_on_error() => return Ok(Step::Again),
                    Err(e) => return Err(e),
                }
            }
            Ok(Step::Again)
        })?;
        match step {
            Step::Again => {}
            Step::Pending(bytes) => {
                // Whatever sits in the pipe was read before these bytes.
                bulk.flush(dst).await?;
                write_all(dst, &bytes).await?;
            }
            Step::Discarded => {
                // Past the cut reads are full-size again (not the short reads
                // between splices), and paced. Boxed: a rare path, kept out of
                // the connection's future.
                bulk = Bulk::default();
                Box::pin(tokio::time::sleep(DISCARD_PAUSE)).await
            }
            Step::Finished => return Ok(End::Graceful),
            Step::Eof => return Ok(Box::pin(on_eof(dst, &d)).await),
        }
    }
}

/// The source ended: ends the direction as [`Direction::at_eof`] says, with a
/// half-close where the peer is simply done sending.
async fn on_eof(dst: &TcpStream, d: &Direction<'_>) -> End {
    let end = d.at_eof().await;
    if end == End::Closed {
        let _ = SockRef::from(dst).shutdown(std::net::Shutdown::Write);
    }
    end
}

async fn write_all(dst: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        writable(dst).await?;
        match dst.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The size of the future an async fn taking four arguments returns.
    fn future_size<F, A, B, C, D, Fut>(_: &F) -> usize
    where
        F: Fn(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every idle plain connection is one such future: it is most of what a
    /// connection costs (docs/performance.md). Connecting and the TLS pump are
    /// boxed, the two directions pinned in place, readiness polled without
    /// waiters of its own, the timer on the heap only while set; this catches a
    /// change that undoes one of those.
    #[test]
    fn a_plain_connection_future_stays_small() {
        let size = future_size(&super::serve);
        assert!(size <= 2560, "proxy::serve's future grew to {size} bytes");
    }
}
