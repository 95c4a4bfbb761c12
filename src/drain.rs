//! Taking connections off a backend: the registry of a backend's open client
//! connections, and the paced drain that closes them the AMQP way.
//!
//! A drain sends each connection a [`Command::Close`]; the connection's own task
//! (see `proxy`) then injects `connection.close` 320 at the next frame boundary.
//! Closes are spread evenly over `drain.window` so that reconnecting clients reach
//! the other nodes gradually; whatever is still open after `drain.grace` gets
//! [`Command::Hard`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::balancer::Backend;

/// What a connection's task is told to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Carry bytes.
    Run,
    /// Close gracefully: `connection.close` 320 with this reply-text to the client at
    /// a frame boundary, a clean close towards the broker, bounded by the close timeout.
    Close(Arc<str>),
    /// Drop both sockets now.
    Hard,
}

/// The open connections of one backend.
#[derive(Debug, Default)]
pub struct ConnRegistry {
    conns: Mutex<HashMap<u64, watch::Sender<Command>>>,
    /// The drain in progress, if any, so `enable` can stop it.
    drain: Mutex<Option<CancellationToken>>,
}

impl ConnRegistry {
    /// Registers connection `id`; its task listens on the returned receiver.
    pub fn register(&self, id: u64) -> watch::Receiver<Command> {
        let (tx, rx) = watch::channel(Command::Run);
        if let Ok(mut m) = self.conns.lock() {
            m.insert(id, tx);
        }
        rx
    }

    pub fn unregister(&self, id: u64) {
        if let Ok(mut m) = self.conns.lock() {
            m.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.conns.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connection ids, oldest first.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .conns
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// Sends `cmd` to connection `id`; false if it is gone.
    pub fn send(&self, id: u64, cmd: Command) -> bool {
        let Ok(m) = self.conns.lock() else {
            return false;
        };
        match m.get(&id) {
            Some(tx) => {
                // Never downgrade a hard close to a graceful one.
                tx.send_if_modified(|c| {
                    if *c == Command::Hard || *c == cmd {
                        false
                    } else {
                        *c = cmd.clone();
                        true
                    }
                });
                true
            }
            None => false,
        }
    }

    /// Sends `cmd` to every connection.
    pub fn broadcast(&self, cmd: Command) {
        for id in self.ids() {
            self.send(id, cmd.clone());
        }
    }

    /// Stops a drain in progress (connections already told to close still close).
    pub fn cancel_drain(&self) {
        if let Ok(mut d) = self.drain.lock() {
            if let Some(t) = d.take() {
                t.cancel();
            }
        }
    }
}

/// Pacing of one drain.
#[derive(Clone, Debug)]
pub struct DrainPlan {
    pub window: Duration,
    pub grace: Duration,
    pub reason: Arc<str>,
}

/// Starts draining `backend` in the background: paced graceful closes over the
/// window, hard closes after the grace. A drain already running is replaced.
/// The task ends by itself, on `shutdown`, or when the drain is cancelled.
pub fn start(backend: Arc<Backend>, plan: DrainPlan, shutdown: &CancellationToken) {
    let token = shutdown.child_token();
    if let Ok(mut d) = backend.conns.drain.lock() {
        if let Some(old) = d.replace(token.clone()) {
            old.cancel();
        }
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = token.cancelled() => {}
            _ = run(&backend, &plan) => {}
        }
    });
}

async fn run(backend: &Backend, plan: &DrainPlan) {
    let started = tokio::time::Instant::now();
    let ids = backend.conns.ids();
    tracing::info!(
        backend = backend.name(),
        connections = ids.len(),
        window = ?plan.window,
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
