//! The accept loops: the AMQP listeners of the one-listener form (plain and
//! TLS) and those of `listeners:` (each with its ports per node); one
//! connection cap for all, back-off on accept errors, a task per accepted
//! connection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::proxy::session;
use crate::proxy::socket::{AcceptCounts, Acceptor, ListenerStats, Named};
use crate::proxy::Proxy;

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    /// TLS termination: the connection's task runs the handshake first.
    Tls,
    /// A listener of `listeners:` (its task is boxed, see [`named_connection`]).
    Named,
}

/// Where a loop accepts and what it spawns.
#[derive(Clone)]
enum Source {
    Plain,
    Tls,
    /// A listener of `listeners:`; `node`: the backend its socket leads to.
    Named(Arc<Named>, Option<Arc<str>>),
}

impl Source {
    fn kind(&self) -> Kind {
        match self {
            Source::Plain => Kind::Plain,
            Source::Tls => Kind::Tls,
            Source::Named(..) => Kind::Named,
        }
    }

    fn counts<'a>(&'a self, stats: &'a ListenerStats) -> &'a AcceptCounts {
        match self {
            Source::Plain => &stats.plain,
            Source::Tls => &stats.tls,
            Source::Named(l, _) => &l.counts,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Source::Plain => crate::telemetry::metrics::LISTENER_PLAIN,
            Source::Tls => crate::telemetry::metrics::LISTENER_TLS,
            Source::Named(l, _) => l.name,
        }
    }
}

/// Decrements the active counts when the connection's task ends.
struct ActiveSlot(Arc<Proxy>, Kind);

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
/// may add, move or remove either) and on those of `listeners:` until shutdown.
pub(crate) async fn run(proxy: Arc<Proxy>) {
    let mut named = tokio::task::JoinSet::new();
    for l in &proxy.listeners {
        named.spawn(accept_loop(
            Arc::clone(&proxy),
            Source::Named(Arc::clone(l), None),
        ));
        for (backend, _) in &l.nodes {
            named.spawn(accept_loop(
                Arc::clone(&proxy),
                Source::Named(Arc::clone(l), Some(Arc::clone(backend))),
            ));
        }
    }
    tokio::join!(
        accept_loop(Arc::clone(&proxy), Source::Plain),
        accept_loop(Arc::clone(&proxy), Source::Tls),
        async { while named.join_next().await.is_some() {} }
    );
}

/// Accepts until shutdown. Over `max_connections` (read live, so a reload changes
/// it; both listeners together), a new connection is closed at once: the client
/// sees a quick close, not a hang. Accept errors such as EMFILE back off
/// exponentially instead of spinning.
async fn accept_loop(proxy: Arc<Proxy>, source: Source) {
    let kind = source.kind();
    let slot = match &source {
        Source::Plain => &proxy.amqp_listener,
        Source::Tls => &proxy.tls_listener,
        Source::Named(l, None) => &l.socket,
        Source::Named(l, Some(node)) => match l.nodes.iter().find(|(n, _)| n == node) {
            Some((_, s)) => s,
            None => return,
        },
    };
    let mut acceptor = Acceptor::new(slot);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = proxy.shutdown.cancelled() => return,
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
                tracing::warn!(error = %e, retry_in = crate::telemetry::logging::duration(backoff), "accept failed, backing off");
                tokio::select! {
                    _ = proxy.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let stats = &proxy.listener_stats;
        let cap = proxy.config.load().max_connections;
        if stats.active.fetch_add(1, Ordering::Relaxed) >= cap {
            stats.active.fetch_sub(1, Ordering::Relaxed);
            source
                .counts(stats)
                .rejected
                .fetch_add(1, Ordering::Relaxed);
            crate::telemetry::metrics::listener_accept(source.label(), false);
            tracing::warn!(%peer, listener = source.label(), "connection limit reached, refusing");
            drop(stream);
            continue;
        }
        if kind == Kind::Tls {
            stats.tls_active.fetch_add(1, Ordering::Relaxed);
        }
        source
            .counts(stats)
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics::listener_accept(source.label(), true);
        let id = proxy.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let slot = ActiveSlot(Arc::clone(&proxy), kind);
        match &source {
            Source::Named(l, node) => {
                tokio::spawn(named_connection(
                    slot,
                    Arc::clone(l),
                    node.clone(),
                    stream,
                    peer,
                    id,
                ));
            }
            _ => {
                tokio::spawn(connection(slot, stream, peer, id));
            }
        }
    }
}

/// The task of one accepted connection. Every open connection is one such
/// future, idle ones included, so its size is most of what a connection costs
/// (docs/performance.md): the TLS side is boxed, or its handshake state would
/// enlarge every plain connection as well.
async fn connection(slot: ActiveSlot, stream: TcpStream, peer: SocketAddr, id: u64) {
    let proxy = Arc::clone(&slot.0);
    match slot.1 {
        Kind::Plain => session::serve(proxy, stream, peer, id).await,
        Kind::Tls => Box::pin(session::serve_tls(proxy, stream, peer, id)).await,
        // Spawned as `named_connection`.
        Kind::Named => {}
    }
}

/// The task of a connection accepted on a listener of `listeners:`, boxed so
/// that the plain AMQP listener's task keeps its size.
async fn named_connection(
    slot: ActiveSlot,
    listener: Arc<Named>,
    node: Option<Arc<str>>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
) {
    let proxy = Arc::clone(&slot.0);
    listener.active.fetch_add(1, Ordering::Relaxed);
    let counted = Arc::clone(&listener);
    Box::pin(session::serve_named(
        proxy, listener, node, stream, peer, id,
    ))
    .await;
    counted.active.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
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
    /// hand (`pump`); this catches a change that undoes one of those (each
    /// costs hundreds of bytes). The bound leaves no room beyond what is there:
    /// the connection's record (`Listed`), the access log's start time, the
    /// route (which listener, which protocol: `session::Route`) and each
    /// direction's pointer to a pipe (`bulk`).
    #[test]
    fn a_connection_task_stays_small() {
        let size = future_size(&connection);
        assert!(size <= 1320, "a connection's task grew to {size} bytes");
    }
}
