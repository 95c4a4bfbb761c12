//! The AMQP listeners (plain and TLS): accept, cap, hand each connection to `proxy`.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::App;

/// Accepts until shutdown. Over `max_connections`, a new connection is closed at
/// once (the client sees a quick close, not a hang). Accept errors such as EMFILE
/// back off exponentially instead of spinning.
pub async fn run(app: Arc<App>, listener: TcpListener) {
    run_all(app, Some(listener), None).await
}

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    /// TLS termination: the connection's task runs the handshake first.
    Tls,
}

/// Accepts on the plain and the TLS listener (either may be absent) until
/// shutdown; `max_connections` caps both together.
pub async fn run_all(app: Arc<App>, plain: Option<TcpListener>, tls: Option<TcpListener>) {
    let limit = Arc::new(Semaphore::new(app.config.load().max_connections));
    let plain = async {
        if let Some(l) = plain {
            accept_loop(&app, l, &limit, Kind::Plain).await;
        }
    };
    let tls = async {
        if let Some(l) = tls {
            accept_loop(&app, l, &limit, Kind::Tls).await;
        }
    };
    tokio::join!(plain, tls);
}

async fn accept_loop(app: &Arc<App>, listener: TcpListener, limit: &Arc<Semaphore>, kind: Kind) {
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
        let Ok(permit) = Arc::clone(limit).try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached, refusing");
            drop(stream);
            continue;
        };
        let id = app.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let app = Arc::clone(app);
        tokio::spawn(async move {
            match kind {
                Kind::Plain => crate::proxy::serve(app, stream, peer, id).await,
                Kind::Tls => crate::proxy::serve_tls(app, stream, peer, id).await,
            }
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
