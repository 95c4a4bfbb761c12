//! The AMQP listener: accept, cap, hand each connection to `proxy`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

use crate::App;

/// Backlog of the listening sockets. The usual default (128) overflows when many
/// clients reconnect at once (a node restart), and every SYN dropped then costs
/// its client a 1 s retransmit; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// Binds a listening socket with [`BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts until shutdown. Over `max_connections`, a new connection is closed at
/// once (the client sees a quick close, not a hang). Accept errors such as EMFILE
/// back off exponentially instead of spinning.
pub async fn run(app: Arc<App>, listener: TcpListener) {
    let limit = Arc::new(Semaphore::new(app.config.load().max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            r = listener.accept() => r,
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
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached, refusing");
            drop(stream);
            continue;
        };
        let id = app.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            crate::proxy::serve(app, stream, peer, id).await;
            drop(permit);
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
