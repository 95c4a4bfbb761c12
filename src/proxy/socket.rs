//! The proxy's listening sockets: bound with the options every proxied socket
//! gets, replaceable while the accept loops run.
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
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::config::ListenerProtocol;

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
    set_socket_options(socket2::SockRef::from(&socket));
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
        tracing::info!(
            listener = self.what,
            addr = addr.map(tracing::field::display),
            "listening on the new address"
        );
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

/// A listener of `listeners:`, bound at start-up: its socket and, on a
/// `stream` listener, one socket per backend that leads to that backend only.
/// Its other settings (TLS, PROXY, advertised host) are read from the config
/// in force, by name.
#[derive(Debug)]
pub struct Named {
    /// The listener's name (leaked once at start-up: metrics labels are static).
    pub name: &'static str,
    pub protocol: ListenerProtocol,
    pub socket: Rebindable,
    /// `stream`: (backend name, its socket).
    pub nodes: Vec<(Arc<str>, Rebindable)>,
    /// Client connections open now on the listener (all its sockets).
    pub active: std::sync::atomic::AtomicUsize,
    pub counts: AcceptCounts,
}

impl Named {
    /// Every socket of the listener.
    pub fn sockets(&self) -> impl Iterator<Item = &Rebindable> {
        std::iter::once(&self.socket).chain(self.nodes.iter().map(|(_, s)| s))
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
    /// Connections accepted and refused since start, per listener (the same
    /// counts as the listener metrics, for the status page).
    pub plain: AcceptCounts,
    pub tls: AcceptCounts,
}

/// What one listener did with the connections it took from its socket.
#[derive(Debug, Default)]
pub struct AcceptCounts {
    /// Accepted and handed to a connection task.
    pub accepted: AtomicU64,
    /// Closed at once: over `max_connections`.
    pub rejected: AtomicU64,
}

/// The options of every proxied socket: `TCP_NODELAY` (AMQP is latency
/// sensitive), and TCP keepalive, which finds peers that vanished without a FIN
/// long before the OS default of two hours (AMQP heartbeats remain the primary
/// liveness check). Set on the listening sockets, whose accepted sockets
/// inherit them (Linux copies them over), and on each backend socket.
pub fn set_socket_options(s: SockRef<'_>) {
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let _ = s.set_tcp_nodelay(true);
    let _ = s.set_tcp_keepalive(&ka);
}

#[cfg(test)]
mod tests {
    use super::*;

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
