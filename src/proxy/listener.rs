//! Listening sockets that can be replaced while running, and the accept loops of
//! the AMQP listeners (plain and TLS).
//!
//! A [`Rebindable`] holds the current listening socket in a `watch` channel. A
//! reload binds the new address first (so a failure leaves everything as it was),
//! then swaps it in: the accept loop picks it up, takes what is already queued on
//! the old socket, and drops it. Accepted connections are sockets of their own and
//! never notice. A listener may also be absent (`listen` or `tls` not configured)
//! and be added or removed by a reload. On shutdown the socket is closed at once,
//! so new clients are refused instead of waiting in a backlog nobody reads.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::App;

/// Backlog of the listening sockets. The usual default (128) overflows when many
/// clients reconnect at once (a node restart), and every SYN dropped then costs
/// its client a 1 s retransmit; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// Binds a listening socket with [`BACKLOG`] and the options every accepted
/// socket inherits (`proxy::set_socket_options`: no system calls for them per
/// connection).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    crate::proxy::set_socket_options(socket2::SockRef::from(&socket));
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// What a [`Rebindable`] holds now.
#[derive(Clone, Debug)]
enum Slot {
    Open(Arc<TcpListener>),
    /// Not configured (for now): a reload may install a socket.
    Absent,
    /// Closed for good (shutdown).
    Closed,
}

/// A listening socket that a reload may replace, add or remove.
#[derive(Debug)]
pub struct Rebindable {
    what: &'static str,
    current: watch::Sender<Slot>,
}

impl Rebindable {
    /// `None`: the listener is not configured; [`Rebindable::install`] may add it.
    pub fn new(what: &'static str, listener: Option<TcpListener>) -> Self {
        let slot = match listener {
            Some(l) => Slot::Open(Arc::new(l)),
            None => Slot::Absent,
        };
        Rebindable {
            what,
            current: watch::Sender::new(slot),
        }
    }

    /// The bound address, `None` when absent or closed.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &*self.current.borrow() {
            Slot::Open(l) => l.local_addr().ok(),
            Slot::Absent | Slot::Closed => None,
        }
    }

    /// Replaces the listening socket (bound beforehand, so a bind failure changes
    /// nothing); the accept loop switches over.
    pub fn install(&self, listener: TcpListener) {
        let addr = listener.local_addr().ok();
        self.current.send_replace(Slot::Open(Arc::new(listener)));
        tracing::info!(listener = self.what, addr = ?addr, "listening on the new address");
    }

    /// Stops listening until a later [`Rebindable::install`] (the key was removed
    /// by a reload); connections still queued are refused with the socket.
    pub fn remove(&self) {
        self.current.send_replace(Slot::Absent);
        tracing::info!(listener = self.what, "listener removed");
    }

    /// Closes the listening socket for good (shutdown).
    pub fn close(&self) {
        self.current.send_replace(Slot::Closed);
    }

    fn subscribe(&self) -> watch::Receiver<Slot> {
        self.current.subscribe()
    }
}

/// Follows a [`Rebindable`]: yields accepted connections from whichever socket is
/// current, handing over the old socket's queue when it changes.
pub struct Acceptor {
    rx: watch::Receiver<Slot>,
    listener: Slot,
    /// Connections taken from a replaced socket's queue, served before new ones.
    handed_over: Vec<(TcpStream, SocketAddr)>,
}

impl Acceptor {
    pub fn new(slot: &Rebindable) -> Self {
        let mut rx = slot.subscribe();
        let listener = rx.borrow_and_update().clone();
        Acceptor {
            rx,
            listener,
            handed_over: Vec::new(),
        }
    }

    /// The next connection; `None` when the socket was closed for good. While
    /// the listener is absent it waits for a reload to install one.
    pub async fn accept(&mut self) -> Option<io::Result<(TcpStream, SocketAddr)>> {
        loop {
            if let Some(c) = self.handed_over.pop() {
                return Some(Ok(c));
            }
            let listener = match &self.listener {
                Slot::Open(l) => Some(Arc::clone(l)),
                Slot::Absent => None,
                Slot::Closed => return None,
            };
            let accept = async {
                match &listener {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.rx.changed() => {
                    let next = match changed {
                        Ok(()) => self.rx.borrow_and_update().clone(),
                        Err(_) => Slot::Closed,
                    };
                    self.switch(next);
                }
                r = accept => return Some(r),
            }
        }
    }

    fn switch(&mut self, next: Slot) {
        let old = std::mem::replace(&mut self.listener, next);
        let (Slot::Open(old), Slot::Open(_)) = (old, &self.listener) else {
            // Closed or removed: whatever is still queued is refused with the socket.
            return;
        };
        // Clients whose handshake already completed on the old socket are served,
        // not reset. Polling once with a zero timeout is a non-blocking accept.
        let mut queued = Vec::new();
        while let Some(Ok(c)) = poll_accept_now(&old) {
            queued.push(c);
        }
        queued.reverse();
        self.handed_over = queued;
    }
}

fn poll_accept_now(l: &TcpListener) -> Option<io::Result<(TcpStream, SocketAddr)>> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut fut = std::pin::pin!(l.accept());
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

/// Live numbers of the AMQP listeners (`metrics` reads them at scrape time).
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Client connections open now on both listeners; compared with
    /// `max_connections` on accept.
    pub active: AtomicUsize,
    /// The part of `active` that came in on the TLS listener.
    pub tls_active: AtomicUsize,
}

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    /// TLS termination: the connection's task runs the handshake first.
    Tls,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Plain => crate::telemetry::metrics::LISTENER_PLAIN,
            Kind::Tls => crate::telemetry::metrics::LISTENER_TLS,
        }
    }
}

/// Decrements the active counts when the connection's task ends.
struct ActiveSlot(Arc<App>, Kind);

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        let stats = &self.0.listener_stats;
        stats.active.fetch_sub(1, Ordering::Relaxed);
        if self.1 == Kind::Tls {
            stats.tls_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Accepts on the plain and the TLS listener (either may be absent, and a reload
/// may add, move or remove either) until shutdown.
pub async fn run(app: Arc<App>) {
    tokio::join!(
        accept_loop(Arc::clone(&app), Kind::Plain),
        accept_loop(Arc::clone(&app), Kind::Tls)
    );
}

/// Accepts until shutdown. Over `max_connections` (read live, so a reload changes
/// it; both listeners together), a new connection is closed at once: the client
/// sees a quick close, not a hang. Accept errors such as EMFILE back off
/// exponentially instead of spinning.
async fn accept_loop(app: Arc<App>, kind: Kind) {
    let slot = match kind {
        Kind::Plain => &app.amqp_listener,
        Kind::Tls => &app.tls_listener,
    };
    let mut acceptor = Acceptor::new(slot);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            r = acceptor.accept() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                if is_transient(&e) {
                    continue;
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "accept failed, backing off");
                tokio::select! {
                    _ = app.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let stats = &app.listener_stats;
        let cap = app.config.load().max_connections;
        if stats.active.fetch_add(1, Ordering::Relaxed) >= cap {
            stats.active.fetch_sub(1, Ordering::Relaxed);
            crate::telemetry::metrics::listener_accept(kind.label(), false);
            tracing::warn!(%peer, listener = kind.label(), "connection limit reached, refusing");
            drop(stream);
            continue;
        }
        if kind == Kind::Tls {
            stats.tls_active.fetch_add(1, Ordering::Relaxed);
        }
        crate::telemetry::metrics::listener_accept(kind.label(), true);
        let id = app.next_conn_id.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(
            ActiveSlot(Arc::clone(&app), kind),
            stream,
            peer,
            id,
        ));
    }
}

/// The task of one accepted connection. Every open connection is one such
/// future, idle ones included, so its size is most of what a connection costs
/// (docs/performance.md): the TLS side is boxed, or its handshake state would
/// enlarge every plain connection as well.
async fn connection(slot: ActiveSlot, stream: TcpStream, peer: SocketAddr, id: u64) {
    let app = Arc::clone(&slot.0);
    match slot.1 {
        Kind::Plain => crate::proxy::serve(app, stream, peer, id).await,
        Kind::Tls => Box::pin(crate::proxy::serve_tls(app, stream, peer, id)).await,
    }
}

/// Errors about one connection only (it was reset before we took it).
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn taking four arguments returns.
    fn future_size<F, A, B, C, D, Fut>(_: &F) -> usize
    where
        F: Fn(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every open connection is one such future, idle ones included: it is
    /// most of what a connection costs (docs/performance.md). The TLS side and
    /// connecting are boxed, the plain data path is a state machine polled by
    /// hand (`pump`); this catches a change that undoes one of those.
    #[test]
    fn a_connection_task_stays_small() {
        let size = future_size(&connection);
        assert!(size <= 1280, "a connection's task grew to {size} bytes");
    }

    async fn bound() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        (l, a)
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let l = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let _c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        let s = socket2::SockRef::from(&s);
        assert!(s.tcp_nodelay().expect("nodelay"));
        assert!(s.keepalive().expect("keepalive"));
        assert_eq!(
            s.tcp_keepalive_time().expect("idle"),
            Duration::from_secs(60)
        );
        assert_eq!(
            s.tcp_keepalive_interval().expect("interval"),
            Duration::from_secs(10)
        );
        assert_eq!(s.tcp_keepalive_retries().expect("retries"), 6);
    }

    #[tokio::test]
    async fn rebind_takes_over_the_old_queue_then_closes_the_old_socket() {
        let (old, old_addr) = bound().await;
        let slot = Rebindable::new("test", Some(old));
        let mut acceptor = Acceptor::new(&slot);
        // Completes its handshake in the old socket's queue; nobody has accepted it.
        let queued = TcpStream::connect(old_addr).await.expect("connect");
        let (new, new_addr) = bound().await;
        slot.install(new);
        let (_s, peer) = acceptor.accept().await.expect("open").expect("accepted");
        assert_eq!(peer, queued.local_addr().expect("addr"));
        let fresh = TcpStream::connect(new_addr).await.expect("connect");
        let (_s, peer) = acceptor.accept().await.expect("open").expect("accepted");
        assert_eq!(peer, fresh.local_addr().expect("addr"));
        assert!(
            TcpStream::connect(old_addr).await.is_err(),
            "old socket closed"
        );
        assert_eq!(slot.local_addr(), Some(new_addr));
        slot.close();
        assert!(acceptor.accept().await.is_none());
        assert!(TcpStream::connect(new_addr).await.is_err());
    }

    #[tokio::test]
    async fn an_absent_listener_can_be_added_and_removed() {
        let slot = Rebindable::new("test", None);
        assert_eq!(slot.local_addr(), None);
        let mut acceptor = Acceptor::new(&slot);
        let (l, addr) = bound().await;
        let waiting = tokio::spawn(async move {
            let r = acceptor.accept().await.map(|r| r.map(|(_, p)| p));
            (acceptor, r)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        slot.install(l);
        let client = TcpStream::connect(addr).await.expect("connect");
        let (mut acceptor, r) = waiting.await.expect("task");
        let peer = r.expect("open").expect("accepted");
        assert_eq!(peer, client.local_addr().expect("addr"));
        slot.remove();
        assert_eq!(slot.local_addr(), None);
        let waiting = tokio::spawn(async move { acceptor.accept().await.is_none() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "removed socket closed"
        );
        slot.close();
        assert!(waiting.await.expect("task"), "closed for good");
    }
}
