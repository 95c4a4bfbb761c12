//! One client connection: choose a backend, connect (trying the next one on
//! failure), then carry bytes both ways until either side is done, following AMQP
//! frame boundaries so the connection can be closed the way a broker closes it.
//!
//! The data path reads into a per-thread scratch buffer and writes straight on, so
//! an idle connection holds no buffer at all; only bytes a slow peer has not taken
//! yet are copied into a buffer owned by the connection. Long payloads (large
//! body frames, or a stream that is not AMQP) are spliced instead (`bulk`).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tracing::Instrument;

use crate::amqp::{self, FrameTracker};
use crate::balancer::Backend;
use crate::bulk::{Bulk, Moved};
use crate::drain::{Command, CommandReceiver};
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
        let Some((backend, server)) = connect(&app).await else {
            tracing::warn!("no backend reachable, closing client");
            return;
        };
        tracing::Span::current().record("backend", backend.name());
        tracing::debug!("connected");
        let _active = backend.connection_guard();
        crate::metrics::backend_connection(backend.name(), 1.0);
        let cmd = backend.conns.register(id);
        let close_timeout = app.config.load().drain.close_timeout.get();
        let result = pump(&client, &server, cmd, close_timeout).await;
        backend.conns.unregister(id);
        crate::metrics::backend_connection(backend.name(), -1.0);
        match result {
            Ok(end) => tracing::debug!(?end, "closed"),
            Err(e) => tracing::debug!(error = %e, "closed with error"),
        }
    }
    .instrument(span)
    .await
}

/// Connects to the first reachable candidate backend (bounded by `retries`).
async fn connect(app: &App) -> Option<(Arc<Backend>, TcpStream)> {
    let config = app.config.load();
    let timeout = config.timeouts.connect.get();
    for backend in app.balancer.candidates(config.retries + 1) {
        let addr = backend.config.address.as_str();
        let err = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(server)) => {
                let _ = server.set_nodelay(true);
                set_keepalive(&server);
                return Some((backend, server));
            }
            Ok(Err(e)) => {
                crate::metrics::connect_error(backend.name(), error_kind(&e));
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// Client to broker.
    Up,
    /// Broker to client.
    Down,
}

/// Carries bytes both ways until both directions are done or a command ends them.
pub async fn pump(
    client: &TcpStream,
    server: &TcpStream,
    cmd: CommandReceiver,
    close_timeout: Duration,
) -> io::Result<End> {
    let shared = Shared::default();
    // A hard end of either direction ends both: it travels as an error through try_join.
    let stop_on_hard = |r: io::Result<End>| match r {
        Ok(End::Hard) => Err(None),
        Ok(end) => Ok(end),
        Err(e) => Err(Some(e)),
    };
    // The branches are built inside the joined future so that no second copy of
    // them lives in this function's state.
    let joined = async {
        tokio::try_join!(
            async {
                stop_on_hard(
                    forward(client, server, Dir::Up, cmd.clone(), close_timeout, &shared).await,
                )
            },
            async {
                stop_on_hard(
                    forward(
                        server,
                        client,
                        Dir::Down,
                        cmd.clone(),
                        close_timeout,
                        &shared,
                    )
                    .await,
                )
            },
        )
    };
    tokio::pin!(joined);
    // The task registers for commands each time it is polled, before the
    // directions run; each direction then sees a command through `has_changed`
    // (see `wait`), so neither keeps a future of its own for it while idle.
    let joined = std::future::poll_fn(|cx| {
        cmd.register(cx.waker());
        joined.as_mut().poll(cx)
    })
    .await;
    match joined {
        Ok((End::Graceful, _)) | Ok((_, End::Graceful)) => Ok(End::Graceful),
        Ok(_) => Ok(End::Closed),
        Err(None) => Ok(End::Hard),
        Err(Some(e)) => Err(e),
    }
}

/// What the two directions of one connection tell each other while closing.
/// Both run in one task, which is polled again after every flag set here (see
/// [`tell`]).
#[derive(Default)]
struct Shared {
    /// The client has been sent `connection.close`.
    client_told: AtomicBool,
    /// The broker-to-client direction has ended.
    down_done: AtomicBool,
}

/// Sets `flag` and yields, so that the task polls the other direction again
/// (try_join polls every unfinished branch on each wake-up).
async fn tell(flag: &AtomicBool) {
    flag.store(true, Ordering::Release);
    tokio::task::yield_now().await;
}

/// What one read did.
enum Step {
    Eof,
    Again,
    /// Bytes that could not be written at once, still to write.
    Pending(Vec<u8>),
    /// The awaited close-ok arrived.
    Finished,
}

/// One direction. In normal operation it copies (or splices, see [`Bulk`]) and
/// tracks frames. On [`Command::Close`] it stops forwarding at the next frame
/// boundary and sends its own `connection.close` (320 towards the client first;
/// then 200 towards the broker, so the broker's close-ok can never reach a
/// client that was not told), then discards what follows until the peer's
/// `close-ok`, all within `close_timeout`.
async fn forward(
    src: &TcpStream,
    dst: &TcpStream,
    dir: Dir,
    mut cmd: CommandReceiver,
    close_timeout: Duration,
    shared: &Shared,
) -> io::Result<End> {
    let end = forward_inner(src, dst, dir, &mut cmd, close_timeout, shared).await;
    if dir == Dir::Down {
        tell(&shared.down_done).await;
    }
    end
}

async fn forward_inner(
    src: &TcpStream,
    dst: &TcpStream,
    dir: Dir,
    cmd: &mut CommandReceiver,
    close_timeout: Duration,
    shared: &Shared,
) -> io::Result<End> {
    let mut tracker = match dir {
        Dir::Up => FrameTracker::client_to_server(),
        Dir::Down => FrameTracker::server_to_client(),
    };
    let mut bulk = Bulk::default();
    // Boxed, and only while closing: a timer inline would make every idle
    // connection's task bigger.
    let mut deadline: Option<Pin<Box<Sleep>>> = None;
    let mut reason: Option<Arc<str>> = None;
    // `cut`: forwarding stopped at a frame boundary; `sent_close`: our close went out.
    let mut cut = false;
    let mut sent_close = false;
    loop {
        match cmd.borrow_and_update() {
            Command::Run => {}
            Command::Hard => return Ok(End::Hard),
            Command::Close(text) => {
                if deadline.is_none() {
                    deadline = Some(Box::pin(tokio::time::sleep(close_timeout)));
                    reason = Some(text);
                }
            }
        }
        if bulk.active() {
            // Mid-frame (or a stream that is not AMQP): move bytes by splice(2).
            // A close waits for the frame to end, so its boundary stays exact.
            if reason.is_some() && tracker.is_lost() {
                return Ok(End::Hard);
            }
            match bulk.step(src, dst, &mut tracker)? {
                Moved::Some => tokio::task::consume_budget().await,
                Moved::Eof => return Ok(on_eof(dst, sent_close, reason.is_some())),
                Moved::Wait { read, write } => {
                    let woke = wait(
                        read.then_some(src),
                        write.then_some(dst),
                        cmd,
                        None,
                        &mut deadline,
                    )
                    .await?;
                    if woke == Woke::Deadline {
                        return Ok(End::Hard);
                    }
                }
            }
            continue;
        }
        let mut wait_for_client_told = false;
        if let (Some(text), false) = (&reason, sent_close) {
            if tracker.is_lost() {
                // Not AMQP: nothing graceful is possible.
                return Ok(End::Hard);
            }
            let turn = match dir {
                Dir::Down => true,
                Dir::Up => shared.client_told.load(Ordering::Acquire),
            };
            if dir == Dir::Up && !turn && shared.down_done.load(Ordering::Acquire) {
                // The broker already closed its side; the client cannot be told.
                return Ok(End::Hard);
            }
            if turn && (cut || tracker.at_boundary()) {
                write_all(dst, &close_frame(dir, text)).await?;
                sent_close = true;
                if dir == Dir::Down {
                    tell(&shared.client_told).await;
                }
            }
            wait_for_client_told = !turn;
        }
        let told = wait_for_client_told.then_some(shared);
        match wait(Some(src), None, cmd, told, &mut deadline).await? {
            Woke::Ready => {}
            Woke::Command | Woke::Told => continue,
            Woke::Deadline => return Ok(End::Hard),
        }
        let closing = reason.is_some();
        let step = SCRATCH.with(|scratch| -> io::Result<Step> {
            let mut scratch = scratch.borrow_mut();
            let buf = &mut scratch[..bulk.read_size(SCRATCH_SIZE)];
            let n = match src.try_read(buf) {
                Ok(0) => return Ok(Step::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Again),
                Err(e) => return Err(e),
            };
            let data = &buf[..n];
            if sent_close || cut {
                // Past the cut nothing is forwarded; the tracker keeps following the
                // stream to recognise the peer's close-ok.
                tracker.feed(data, false);
                let seen = tracker.take_seen();
                return Ok(if sent_close && seen.is_some() {
                    Step::Finished
                } else {
                    Step::Again
                });
            }
            // While closing, forward only up to the next frame boundary.
            let k = if !closing {
                tracker.feed(data, false)
            } else if tracker.at_boundary() {
                0
            } else {
                tracker.feed(data, true)
            };
            if k < n {
                cut = true;
                tracker.feed(&data[k..], false);
                let _ = tracker.take_seen();
            }
            let mut out = &data[..k];
            if !closing {
                // A long payload follows: what was read goes into a pipe, ahead of
                // the payload that will be spliced after it.
                if let Some(rest) = bulk.start(&tracker, out)? {
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
            Step::Finished => return Ok(End::Graceful),
            Step::Eof => return Ok(on_eof(dst, sent_close, closing)),
        }
    }
}

/// What ended a [`wait`].
#[derive(Debug, PartialEq, Eq)]
enum Woke {
    /// The source is readable or the destination writable.
    Ready,
    /// A command arrived.
    Command,
    /// The other direction has told the client.
    Told,
    /// The close timeout is over.
    Deadline,
}

/// Waits for readiness (`read` on the source, `write` on the destination), a
/// command, the other direction's notice (`told`), or the close deadline.
/// Everything is polled in place, with no future kept for any of it: an idle
/// connection's task stays small. Each socket's read and write interest belongs
/// to exactly one direction of the one task, so the single waker slot that
/// `poll_*_ready` keeps is enough; commands wake the task through `pump`'s
/// watcher.
fn wait<'a>(
    read: Option<&'a TcpStream>,
    write: Option<&'a TcpStream>,
    cmd: &'a CommandReceiver,
    told: Option<&'a Shared>,
    deadline: &'a mut Option<Pin<Box<Sleep>>>,
) -> impl Future<Output = io::Result<Woke>> + 'a {
    std::future::poll_fn(move |cx| {
        if cmd.has_changed() {
            return Poll::Ready(Ok(Woke::Command));
        }
        if let Some(shared) = told {
            if shared.client_told.load(Ordering::Acquire)
                || shared.down_done.load(Ordering::Acquire)
            {
                return Poll::Ready(Ok(Woke::Told));
            }
        }
        if let Some(sleep) = deadline.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Woke::Deadline));
            }
        }
        if let Some(s) = read {
            if let Poll::Ready(r) = s.poll_read_ready(cx) {
                return Poll::Ready(r.map(|()| Woke::Ready));
            }
        }
        if let Some(s) = write {
            if let Poll::Ready(r) = s.poll_write_ready(cx) {
                return Poll::Ready(r.map(|()| Woke::Ready));
            }
        }
        Poll::Pending
    })
}

/// The source ended: how the direction ends.
fn on_eof(dst: &TcpStream, sent_close: bool, closing: bool) -> End {
    if sent_close {
        return End::Graceful;
    }
    if closing {
        return End::Hard;
    }
    // Half-close: the peer is done sending; tell the other side, keep reading it.
    let _ = SockRef::from(dst).shutdown(std::net::Shutdown::Write);
    End::Closed
}

fn close_frame(dir: Dir, reason: &str) -> Vec<u8> {
    match dir {
        Dir::Down => amqp::connection_close(amqp::CONNECTION_FORCED, reason),
        Dir::Up => amqp::connection_close(amqp::REPLY_SUCCESS, reason),
    }
}

async fn write_all(dst: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        std::future::poll_fn(|cx| dst.poll_write_ready(cx)).await?;
        match dst.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
