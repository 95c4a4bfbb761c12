//! Listening sockets that can be replaced while running, and the AMQP accept loop.
//!
//! A [`Rebindable`] holds the current listening socket in a `watch` channel. A
//! reload binds the new address first (so a failure leaves everything as it was),
//! then swaps it in: the accept loop picks it up, takes what is already queued on
//! the old socket, and drops it. Accepted connections are sockets of their own and
//! never notice. On shutdown the socket is closed at once, so new clients are
//! refused instead of waiting in a backlog nobody reads.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::App;

/// A listening socket that a reload may replace.
#[derive(Debug)]
pub struct Rebindable {
    what: &'static str,
    current: watch::Sender<Option<Arc<TcpListener>>>,
}

impl Rebindable {
    pub fn new(what: &'static str, listener: TcpListener) -> Self {
        Rebindable {
            what,
            current: watch::Sender::new(Some(Arc::new(listener))),
        }
    }

    /// The bound address, `None` once closed.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.current
            .borrow()
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Replaces the listening socket (bound beforehand, so a bind failure changes
    /// nothing); the accept loop switches over.
    pub fn install(&self, listener: TcpListener) {
        let addr = listener.local_addr().ok();
        self.current.send_replace(Some(Arc::new(listener)));
        tracing::info!(listener = self.what, addr = ?addr, "listening on the new address");
    }

    /// Closes the listening socket for good (shutdown).
    pub fn close(&self) {
        self.current.send_replace(None);
    }

    fn subscribe(&self) -> watch::Receiver<Option<Arc<TcpListener>>> {
        self.current.subscribe()
    }
}

/// Follows a [`Rebindable`]: yields accepted connections from whichever socket is
/// current, handing over the old socket's queue when it changes.
pub struct Acceptor {
    rx: watch::Receiver<Option<Arc<TcpListener>>>,
    listener: Option<Arc<TcpListener>>,
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

    /// The next connection; `None` when the socket was closed for good.
    pub async fn accept(&mut self) -> Option<io::Result<(TcpStream, SocketAddr)>> {
        loop {
            if let Some(c) = self.handed_over.pop() {
                return Some(Ok(c));
            }
            let listener = self.listener.clone()?;
            tokio::select! {
                changed = self.rx.changed() => {
                    let next = match changed {
                        Ok(()) => self.rx.borrow_and_update().clone(),
                        Err(_) => None,
                    };
                    self.switch(next);
                }
                r = listener.accept() => return Some(r),
            }
        }
    }

    fn switch(&mut self, next: Option<Arc<TcpListener>>) {
        let old = std::mem::replace(&mut self.listener, next);
        let (Some(old), Some(_)) = (old, &self.listener) else {
            // Closed: whatever is still queued is refused with the socket.
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

/// Live numbers of the AMQP listener (`metrics` reads them at scrape time).
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Client connections open now; compared with `max_connections` on accept.
    pub active: AtomicUsize,
}

/// Decrements the active count when the connection's task ends.
struct ActiveSlot(Arc<App>);

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.0.listener_stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts until shutdown. Over `max_connections` (read live, so a reload changes
/// it), a new connection is closed at once: the client sees a quick close, not a
/// hang. Accept errors such as EMFILE back off exponentially instead of spinning.
pub async fn run(app: Arc<App>) {
    let mut acceptor = Acceptor::new(&app.amqp_listener);
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
            crate::metrics::listener_accept(false);
            tracing::warn!(%peer, "connection limit reached, refusing");
            drop(stream);
            continue;
        }
        crate::metrics::listener_accept(true);
        let slot = ActiveSlot(Arc::clone(&app));
        let id = app.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            crate::proxy::serve(app, stream, peer, id).await;
            drop(slot);
        });
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

    async fn bound() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        (l, a)
    }

    #[tokio::test]
    async fn rebind_takes_over_the_old_queue_then_closes_the_old_socket() {
        let (old, old_addr) = bound().await;
        let slot = Rebindable::new("test", old);
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
}
