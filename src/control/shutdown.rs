//! Graceful shutdown: on SIGTERM/SIGINT stop accepting, close client connections
//! the AMQP way within `shutdown.grace`; a second signal exits at once.

use std::sync::Arc;
use std::time::Duration;

use crate::balancer::Command;
use crate::control::app::App;

/// Cancels `app.shutdown` on the first SIGTERM/SIGINT; exits on the second.
pub fn watch_signals(app: Arc<App>) {
    tokio::spawn(async move {
        if wait_for_signal().await.is_err() {
            return;
        }
        tracing::info!("signal received, shutting down gracefully (signal again to exit now)");
        app.shutdown.cancel();
        if wait_for_signal().await.is_ok() {
            tracing::warn!("second signal, exiting now");
            std::process::exit(1);
        }
    });
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Includes backends removed by a reload whose connections are still closing.
fn open_connections(app: &App) -> usize {
    app.balancer.all().iter().map(|b| b.conns.len()).sum()
}

/// Tells every connection to close (connection.close 320), waits for them up to
/// `shutdown.grace`, then closes what is left hard.
pub async fn close_connections(app: &App) {
    let grace = app.config.load().shutdown.grace.get();
    let open = open_connections(app);
    if open == 0 {
        return;
    }
    tracing::info!(
        connections = open,
        grace = crate::telemetry::logging::duration(grace),
        "closing client connections"
    );
    let reason: Arc<str> = "warren: shutting down, reconnect".into();
    for b in app.balancer.all() {
        b.conns.broadcast(Command::Close(reason.clone()));
    }
    let deadline = tokio::time::Instant::now() + grace;
    while open_connections(app) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = open_connections(app);
    if left > 0 {
        tracing::warn!(connections = left, "shutdown grace over, closing hard");
        for b in app.balancer.all() {
            b.conns.broadcast(Command::Hard);
        }
        // Give the tasks a moment to drop their sockets.
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while open_connections(app) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
