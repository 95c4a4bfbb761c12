//! The data path for connections with TLS on either side.
//!
//! Plain TCP on both sides stays on `proxy`'s fast path (readiness plus
//! `try_read`/`try_write` into a per-thread scratch buffer). A TLS stream cannot be
//! driven that way: rustls keeps plaintext and records of its own, so bytes are
//! only available through `AsyncRead`/`AsyncWrite`. This pump follows the same
//! rules as `proxy::pump`, with the same [`FrameTracker`], so a drain or a
//! shutdown closes a TLS connection exactly like a plain one: `connection.close`
//! 320 to the client at a server-to-client frame boundary, 200 to the broker once
//! the client has been told, each side's `close-ok` awaited within the close
//! timeout, [`Command::Hard`] ends both at once.
//!
//! Each direction owns a read buffer that starts at 8 KiB and doubles up to
//! 64 KiB while reads keep filling it (bulk transfers), so idle TLS connections
//! stay small.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::amqp::{FrameTracker, Seen};
use crate::direction::{close_frame, Dir, Shared};
use crate::drain::Command;
use crate::proxy::{End, Limits, Meters};

const BUF_START: usize = 8 * 1024;
const BUF_MAX: usize = 64 * 1024;

/// One side of a proxied connection: plain TCP or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for Stream {
    fn from(s: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(s)))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for Stream {
    fn from(s: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(s)))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Carries bytes both ways until both directions are done or a command ends them.
/// `head`: bytes already read from the client (the start of its protocol
/// header), sent to the broker first. Forwarded AMQP bytes (plaintext, not TLS
/// records; warren's own close frames excluded) are added to `meters`, as on the
/// plain path.
pub async fn pump(
    client: Stream,
    server: Stream,
    head: &[u8],
    cmd: watch::Receiver<Command>,
    limits: Limits,
    meters: Meters<'_>,
) -> io::Result<End> {
    // Both halves of each stream are driven from this one task (try_join), so the
    // lock inside `split` is never contended and one waker serves both directions.
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut server_rx, mut server_tx) = tokio::io::split(server);
    let shared = Shared::new();
    let (mut up_cmd, mut down_cmd) = (cmd.clone(), cmd);
    let stop_on_hard = |r: io::Result<End>| match r {
        Ok(End::Hard) => Err(None),
        Ok(end) => Ok(end),
        Err(e) => Err(Some(e)),
    };
    let joined = {
        let up = async {
            let dirn = Direction {
                dir: Dir::Up,
                limits,
                shared: &shared,
                moved: meters.up,
            };
            stop_on_hard(
                dirn.forward(&mut client_rx, &mut server_tx, head, &mut up_cmd)
                    .await,
            )
        };
        let down = async {
            let dirn = Direction {
                dir: Dir::Down,
                limits,
                shared: &shared,
                moved: meters.down,
            };
            stop_on_hard(
                dirn.forward(&mut server_rx, &mut client_tx, &[], &mut down_cmd)
                    .await,
            )
        };
        tokio::try_join!(up, down)
    };
    let end = match joined {
        Ok((End::Graceful, _)) | Ok((_, End::Graceful)) => End::Graceful,
        Ok(_) => End::Closed,
        Err(None) => End::Hard,
        Err(Some(e)) => return Err(e),
    };
    if end == End::Graceful {
        // The AMQP close is complete; end the TLS sessions properly (close_notify),
        // briefly: a peer that stopped reading is not waited for.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = client_tx.shutdown().await;
            let _ = server_tx.shutdown().await;
        })
        .await;
    }
    Ok(end)
}

/// One direction of a connection and what it shares with the other.
struct Direction<'a> {
    dir: Dir,
    limits: Limits,
    shared: &'a Shared,
    /// Counts the bytes this direction forwards.
    moved: &'a AtomicU64,
}

impl Direction<'_> {
    async fn forward<R, W>(
        &self,
        src: &mut R,
        dst: &mut W,
        head: &[u8],
        cmd: &mut watch::Receiver<Command>,
    ) -> io::Result<End>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let end = self.forward_inner(src, dst, head, cmd).await;
        if self.dir == Dir::Down {
            self.shared.set(&self.shared.down_done);
        }
        end
    }

    /// The same states as `proxy::forward_inner`: copying while tracking frames;
    /// on [`Command::Close`] cut at the next frame boundary, send our own
    /// `connection.close` (towards the client first) and discard what follows
    /// until the peer's `close-ok`, all within the close timeout. A close the
    /// client or the broker started itself is left to finish.
    async fn forward_inner<R, W>(
        &self,
        src: &mut R,
        dst: &mut W,
        head: &[u8],
        cmd: &mut watch::Receiver<Command>,
    ) -> io::Result<End>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (dir, limits, shared) = (self.dir, self.limits, self.shared);
        let mut tracker = match dir {
            Dir::Up => FrameTracker::client_to_server(),
            Dir::Down => FrameTracker::server_to_client(),
        };
        let mut buf = vec![0u8; BUF_START];
        let mut cmd_open = true;
        let mut deadline: Option<Instant> = None;
        let mut reason: Option<Arc<str>> = None;
        // `cut`: forwarding stopped at a frame boundary; `sent_close`: our close went out.
        let mut cut = false;
        let mut sent_close = false;
        if !head.is_empty() {
            tracker.feed(head, false);
            self.moved.fetch_add(head.len() as u64, Ordering::Relaxed);
            if !guarded(write_flush(dst, head), cmd, &mut cmd_open, deadline).await? {
                return Ok(End::Hard);
            }
        }
        loop {
            if cmd_open {
                match &*cmd.borrow_and_update() {
                    Command::Run => {}
                    Command::Hard => return Ok(End::Hard),
                    Command::Close(text) => {
                        if deadline.is_none() {
                            deadline = Some(Instant::now() + limits.close);
                            reason = Some(text.clone());
                        }
                    }
                }
            }
            // Created before the flags are read, so a notification in between is not lost.
            let told = shared.notify.notified();
            tokio::pin!(told);
            let mut wait_for_client_told = false;
            let peer_closing = shared.peer_closing.load(Ordering::Acquire);
            if let (Some(text), false, false) = (reason.clone(), sent_close, peer_closing) {
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
                    let frame = close_frame(dir, &text);
                    if !guarded(write_flush(dst, &frame), cmd, &mut cmd_open, deadline).await? {
                        return Ok(End::Hard);
                    }
                    sent_close = true;
                    if dir == Dir::Down {
                        shared.set(&shared.client_told);
                    }
                }
                wait_for_client_told = !turn;
            }
            let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
            let idle_at = limits.idle.map_or(far_future, |i| shared.idle_deadline(i));
            let n = tokio::select! {
                r = src.read(&mut buf) => match r {
                    Ok(n) => n,
                    // A TLS peer that closes TCP without close_notify: an ordinary end here.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                    // RabbitMQ resets the socket right after its own connection.close
                    // when the client's close-ok arrives late: the end of a normal close.
                    Err(_) if dir == Dir::Down && shared.broker_closed.load(Ordering::Acquire) => 0,
                    Err(e) => return Err(e),
                },
                changed = cmd.changed(), if cmd_open => {
                    if changed.is_err() {
                        cmd_open = false;
                    }
                    continue;
                }
                _ = &mut told, if wait_for_client_told => continue,
                _ = tokio::time::sleep_until(deadline.unwrap_or(far_future)), if deadline.is_some() => {
                    return Ok(End::Hard);
                }
                _ = tokio::time::sleep_until(idle_at), if limits.idle.is_some() => {
                    // The other direction may have been busy meanwhile: look again.
                    if let Some(idle) = limits.idle {
                        if Instant::now() >= shared.idle_deadline(idle) {
                            tracing::debug!(?idle, "idle timeout");
                            return Ok(End::Hard);
                        }
                    }
                    continue;
                }
            };
            if limits.idle.is_some() {
                shared.touch();
            }
            if n == 0 {
                if sent_close {
                    return Ok(End::Graceful);
                }
                // A close already under way between client and broker is left to finish.
                if reason.is_some() && !shared.peer_closing.load(Ordering::Acquire) {
                    return Ok(End::Hard);
                }
                if dir == Dir::Down && shared.broker_closed.load(Ordering::Acquire) {
                    // The broker closed right after its connection.close: give the
                    // client time to read it and answer before it sees EOF.
                    let wait = async {
                        while !shared.client_acked.load(Ordering::Acquire) {
                            let notified = shared.notify.notified();
                            if shared.client_acked.load(Ordering::Acquire) {
                                break;
                            }
                            notified.await;
                        }
                    };
                    let _ = tokio::time::timeout(limits.close, wait).await;
                }
                // Half-close: the peer is done sending; tell the other side, keep reading it.
                let _ = guarded(dst.shutdown(), cmd, &mut cmd_open, deadline).await;
                return Ok(End::Closed);
            }
            let closing = reason.is_some() && !shared.peer_closing.load(Ordering::Acquire);
            let data = &buf[..n];
            if sent_close || cut {
                // Past the cut nothing is forwarded; the tracker keeps following the
                // stream to recognise the peer's close-ok.
                tracker.feed(data, false);
                if tracker.take_seen().is_some() && sent_close {
                    return Ok(End::Graceful);
                }
                continue;
            }
            // While closing, forward only up to the next frame boundary.
            let k = if !closing {
                let k = tracker.feed(data, false);
                match (tracker.take_seen(), dir) {
                    (Some(Seen::ConnectionClose), _) => {
                        if dir == Dir::Down {
                            shared.broker_closed.store(true, Ordering::Release);
                        }
                        shared.peer_closing.store(true, Ordering::Release);
                    }
                    (Some(Seen::ConnectionCloseOk), Dir::Up) => shared.set(&shared.client_acked),
                    _ => {}
                }
                k
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
            if k > 0 {
                self.moved.fetch_add(k as u64, Ordering::Relaxed);
                match guarded(write_flush(dst, &buf[..k]), cmd, &mut cmd_open, deadline).await {
                    Ok(true) => {}
                    Ok(false) => return Ok(End::Hard),
                    // The broker closed after its connection.close: what the client
                    // still sends (its close-ok) has nowhere to go and need not.
                    Err(_) if dir == Dir::Up && shared.broker_closed.load(Ordering::Acquire) => {}
                    Err(e) => return Err(e),
                }
            }
            if n == buf.len() && buf.len() < BUF_MAX {
                buf.resize(buf.len() * 2, 0);
            }
        }
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(dst: &mut W, data: &[u8]) -> io::Result<()> {
    dst.write_all(data).await?;
    // TLS keeps records it could not send yet; flushing pushes them out.
    dst.flush().await
}

/// Runs `io` unless a hard close or the close deadline comes first (`Ok(false)`).
async fn guarded<F>(
    io: F,
    cmd: &mut watch::Receiver<Command>,
    cmd_open: &mut bool,
    deadline: Option<Instant>,
) -> io::Result<bool>
where
    F: Future<Output = io::Result<()>>,
{
    tokio::pin!(io);
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        tokio::select! {
            r = &mut io => return r.map(|()| true),
            changed = cmd.changed(), if *cmd_open => {
                if changed.is_err() {
                    *cmd_open = false;
                } else if *cmd.borrow() == Command::Hard {
                    return Ok(false);
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far_future)), if deadline.is_some() => {
                return Ok(false);
            }
        }
    }
}
