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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::amqp::{self, FrameTracker};
use crate::drain::Command;
use crate::proxy::End;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// Client to broker.
    Up,
    /// Broker to client.
    Down,
}

/// What the two directions tell each other while closing (as in `proxy`).
#[derive(Default)]
struct Shared {
    /// The client has been sent `connection.close`.
    client_told: AtomicBool,
    /// The broker-to-client direction has ended.
    down_done: AtomicBool,
    notify: Notify,
}

impl Shared {
    fn set(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Carries bytes both ways until both directions are done or a command ends them.
pub async fn pump(
    client: Stream,
    server: Stream,
    cmd: watch::Receiver<Command>,
    close_timeout: Duration,
) -> io::Result<End> {
    // Both halves of each stream are driven from this one task (try_join), so the
    // lock inside `split` is never contended and one waker serves both directions.
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut server_rx, mut server_tx) = tokio::io::split(server);
    let shared = Shared::default();
    let (mut up_cmd, mut down_cmd) = (cmd.clone(), cmd);
    let stop_on_hard = |r: io::Result<End>| match r {
        Ok(End::Hard) => Err(None),
        Ok(end) => Ok(end),
        Err(e) => Err(Some(e)),
    };
    let joined = {
        let up = async {
            stop_on_hard(
                forward(
                    &mut client_rx,
                    &mut server_tx,
                    Dir::Up,
                    &mut up_cmd,
                    close_timeout,
                    &shared,
                )
                .await,
            )
        };
        let down = async {
            stop_on_hard(
                forward(
                    &mut server_rx,
                    &mut client_tx,
                    Dir::Down,
                    &mut down_cmd,
                    close_timeout,
                    &shared,
                )
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

async fn forward<R, W>(
    src: &mut R,
    dst: &mut W,
    dir: Dir,
    cmd: &mut watch::Receiver<Command>,
    close_timeout: Duration,
    shared: &Shared,
) -> io::Result<End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let end = forward_inner(src, dst, dir, cmd, close_timeout, shared).await;
    if dir == Dir::Down {
        shared.set(&shared.down_done);
    }
    end
}

/// One direction; the same states as `proxy::forward`: copying while tracking
/// frames, then on [`Command::Close`] cut at the next frame boundary, send our
/// own `connection.close` (towards the client first) and discard what follows
/// until the peer's `close-ok`, all within `close_timeout`.
async fn forward_inner<R, W>(
    src: &mut R,
    dst: &mut W,
    dir: Dir,
    cmd: &mut watch::Receiver<Command>,
    close_timeout: Duration,
    shared: &Shared,
) -> io::Result<End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
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
    loop {
        if cmd_open {
            match &*cmd.borrow_and_update() {
                Command::Run => {}
                Command::Hard => return Ok(End::Hard),
                Command::Close(text) => {
                    if deadline.is_none() {
                        deadline = Some(Instant::now() + close_timeout);
                        reason = Some(text.clone());
                    }
                }
            }
        }
        // Created before the flag is read, so a notification in between is not lost.
        let told = shared.notify.notified();
        tokio::pin!(told);
        let mut wait_for_client_told = false;
        if let (Some(text), false) = (reason.clone(), sent_close) {
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
        let n = tokio::select! {
            r = src.read(&mut buf) => match r {
                Ok(n) => n,
                // A TLS peer that closes TCP without close_notify: an ordinary end here.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
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
        };
        if n == 0 {
            if sent_close {
                return Ok(End::Graceful);
            }
            if reason.is_some() {
                return Ok(End::Hard);
            }
            // Half-close: the peer is done sending; tell the other side, keep reading it.
            let _ = guarded(dst.shutdown(), cmd, &mut cmd_open, deadline).await;
            return Ok(End::Closed);
        }
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
        let k = if reason.is_none() {
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
        if k > 0 && !guarded(write_flush(dst, &buf[..k]), cmd, &mut cmd_open, deadline).await? {
            return Ok(End::Hard);
        }
        if n == buf.len() && buf.len() < BUF_MAX {
            buf.resize(buf.len() * 2, 0);
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

fn close_frame(dir: Dir, reason: &str) -> Vec<u8> {
    match dir {
        Dir::Down => amqp::connection_close(amqp::CONNECTION_FORCED, reason),
        Dir::Up => amqp::connection_close(amqp::REPLY_SUCCESS, reason),
    }
}
