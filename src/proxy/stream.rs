//! The data path for connections with TLS on either side.
//!
//! Plain TCP on both sides stays on `pump`'s fast path (readiness plus
//! `try_read`/`try_write` into a per-thread scratch buffer, pooled bulk
//! buffers for long payloads). A TLS stream cannot be
//! driven that way: rustls keeps plaintext and records of its own, so bytes are
//! only available through `AsyncRead`/`AsyncWrite`. This pump asks the same
//! `direction::Direction` as `pump::Pump` what to do with each read, so a drain or a
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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::balancer::Command;
use crate::balancer::OrdersRx;
use crate::proxy::amqp::Dir;
use crate::proxy::conn_info::ConnInfo;
use crate::proxy::direction::{
    far_future, joined, Chunk, Direction, End, Limits, Meters, Next, Shared, Timer, DISCARD_PAUSE,
};

const BUF_START: usize = 8 * 1024;
const BUF_MAX: usize = 64 * 1024;

/// One side of a proxied connection: plain TCP or TLS over TCP.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
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
pub(crate) async fn pump(
    client: Stream,
    server: Stream,
    head: &[u8],
    cmd: OrdersRx,
    limits: Limits,
    meters: Meters<'_>,
    info: Option<Arc<ConnInfo>>,
) -> io::Result<End> {
    // Both halves of each stream are driven from this one task (try_join), so the
    // lock inside `split` is never contended and one waker serves both directions.
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut server_rx, mut server_tx) = tokio::io::split(server);
    let shared = Shared::with_info(info);
    let (mut up_cmd, mut down_cmd) = (cmd.clone(), cmd);
    let end = {
        let up = std::pin::pin!(forward(
            Direction::new(Dir::Up, limits, &shared, meters.up),
            &mut client_rx,
            &mut server_tx,
            head,
            &mut up_cmd,
        ));
        let down = std::pin::pin!(forward(
            Direction::new(Dir::Down, limits, &shared, meters.down),
            &mut server_rx,
            &mut client_tx,
            &[],
            &mut down_cmd,
        ));
        both(up, down).await?
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

/// Runs the two directions of a connection (in this one task) until both are
/// done: graceful if either closed gracefully. A hard end or an error of either
/// ends both at once.
async fn both(
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
        match joined(&ends) {
            Some(end) => Poll::Ready(Ok(end)),
            None => Poll::Pending,
        }
    })
    .await
}

/// One direction, by the same rules as `pump`'s (see [`Direction`]), over
/// `AsyncRead`/`AsyncWrite`.
async fn forward<R, W>(
    mut d: Direction<'_>,
    src: &mut R,
    dst: &mut W,
    head: &[u8],
    cmd: &mut OrdersRx,
) -> io::Result<End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let shared = d.shared;
    let mut buf = vec![0u8; BUF_START];
    let mut timer = Timer::default();
    if !head.is_empty() {
        // Tracked and counted like any read (nothing is being closed yet).
        d.on_read(head);
        if !guarded(write_flush(dst, head), cmd, d.deadline()).await? {
            return Ok(End::Hard);
        }
    }
    loop {
        if let Some(end) = d.follow(&cmd.current()) {
            return Ok(end);
        }
        let deadline = d.deadline();
        // Created before the flags are read, so a notification in between is not lost.
        let told = shared.notify.notified();
        tokio::pin!(told);
        let wait_for_client_told = match d.next() {
            Next::Read {
                wait_for_client_told,
            } => wait_for_client_told,
            Next::SendClose(frame) => {
                if !guarded(write_flush(dst, &frame), cmd, deadline).await? {
                    return Ok(End::Hard);
                }
                d.close_sent();
                // Asked again: what to wait for may have changed with it.
                continue;
            }
            Next::Hard => return Ok(End::Hard),
        };
        let wake_at = d.wake_at();
        let n = tokio::select! {
            r = src.read(&mut buf) => match r {
                Ok(n) => n,
                // A TLS peer that closes TCP without close_notify: an ordinary end here.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                Err(_) if d.ends_on_error() => 0,
                Err(e) => return Err(e),
            },
            _ = cmd.changed() => continue,
            _ = &mut told, if wait_for_client_told => continue,
            _ = timer.at(wake_at), if wake_at.is_some() => {
                if d.time_up() {
                    return Ok(End::Hard);
                }
                continue;
            }
        };
        d.touch();
        if n == 0 {
            let end = d.eof().await;
            if end == End::Closed {
                // Half-close: the peer is done sending; tell the other side, keep reading it.
                let _ = guarded(dst.shutdown(), cmd, deadline).await;
            }
            return Ok(end);
        }
        let k = match d.on_read(&buf[..n]) {
            Chunk::Forward(k) => k,
            Chunk::Discarded => {
                tokio::time::sleep(DISCARD_PAUSE).await;
                continue;
            }
            Chunk::Finished => return Ok(End::Graceful),
        };
        if k > 0 {
            match guarded(write_flush(dst, &buf[..k]), cmd, deadline).await {
                Ok(true) => {}
                Ok(false) => return Ok(End::Hard),
                Err(_) if d.drops_on_error() => {}
                Err(e) => return Err(e),
            }
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
async fn guarded<F>(io: F, cmd: &mut OrdersRx, deadline: Option<Instant>) -> io::Result<bool>
where
    F: Future<Output = io::Result<()>>,
{
    tokio::pin!(io);
    loop {
        tokio::select! {
            r = &mut io => return r.map(|()| true),
            cmd = cmd.changed() => {
                if cmd == Command::Hard {
                    return Ok(false);
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                return Ok(false);
            }
        }
    }
}
