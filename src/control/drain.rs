//! The paced drain: closes a backend's connections the AMQP way.
//!
//! A drain sends each connection a [`Command::Close`]; the connection's own task
//! then injects `connection.close` 320 at the next frame boundary. Closes are
//! spread evenly over `drain.window` so that reconnecting clients reach the other
//! nodes gradually; whatever is still open after `drain.grace` gets
//! [`Command::Hard`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::balancer::{Backend, Command};
use crate::control::events::{Events, Kind};

/// Pacing of one drain.
#[derive(Clone, Debug)]
pub(crate) struct DrainPlan {
    pub window: Duration,
    pub grace: Duration,
    pub reason: Arc<str>,
}

/// Starts draining `backend` in the background: paced graceful closes over the
/// window, hard closes after the grace. A drain already running is replaced.
/// The task ends by itself, on `shutdown`, or when the drain is cancelled.
pub(crate) fn start(
    backend: Arc<Backend>,
    plan: DrainPlan,
    shutdown: &CancellationToken,
    events: Arc<Events>,
) {
    let token = shutdown.child_token();
    backend.conns.replace_drain(token.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = token.cancelled() => {}
            _ = run(&backend, &plan, &events) => {}
        }
    });
}

async fn run(backend: &Backend, plan: &DrainPlan, events: &Events) {
    let started = tokio::time::Instant::now();
    let ids = backend.conns.ids();
    events.push(
        Kind::Drain,
        Some(backend.name()),
        format!(
            "drain started: {} connections, closes paced over {:?}",
            ids.len(),
            plan.window
        ),
        None,
    );
    tracing::info!(
        backend = backend.name(),
        connections = ids.len(),
        window = crate::telemetry::logging::duration(plan.window),
        reason = %plan.reason,
        "draining"
    );
    if !ids.is_empty() {
        let step = plan.window / ids.len() as u32;
        for (i, id) in ids.iter().enumerate() {
            if i > 0 && !step.is_zero() {
                tokio::time::sleep(step).await;
            }
            backend.conns.send(*id, Command::Close(plan.reason.clone()));
        }
    }
    // Wait for the stragglers until the grace period ends, then close them hard.
    let deadline = started + plan.grace.max(plan.window);
    while !backend.conns.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A connection that chose this backend just before it stopped taking new
        // ones registers late: tell it too (already-told ones are left alone).
        backend.conns.broadcast(Command::Close(plan.reason.clone()));
    }
    let left = backend.conns.len();
    events.push(
        Kind::Drain,
        Some(backend.name()),
        format!(
            "drain finished in {:.1}s: {} of {} connections closed gracefully, {left} closed hard",
            started.elapsed().as_secs_f64(),
            ids.len().saturating_sub(left),
            ids.len(),
        ),
        None,
    );
    if left > 0 {
        tracing::warn!(
            backend = backend.name(),
            connections = left,
            "drain grace over, closing hard"
        );
        backend.conns.broadcast(Command::Hard);
    } else {
        tracing::info!(backend = backend.name(), "drained");
    }
}
