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
use std::task::Waker;
use std::time::Duration;

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

/// The command slot of one connection. Every idle connection keeps one, so it
/// is a mutex around the command, a version and the waker of the connection's
/// task (about 80 bytes; a `watch` channel costs several hundred).
#[derive(Debug)]
struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Debug)]
struct SlotState {
    cmd: Command,
    version: u64,
    waker: Option<Waker>,
}

impl Slot {
    /// Sets `cmd` and wakes the task; never downgrades a hard close.
    fn send(&self, cmd: Command) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.cmd == Command::Hard || st.cmd == cmd {
            return;
        }
        st.cmd = cmd;
        st.version += 1;
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A connection's end of its command slot. Clones share the slot and each
/// keeps its own idea of what it has seen.
#[derive(Clone, Debug)]
pub struct CommandReceiver {
    slot: Arc<Slot>,
    seen: u64,
}

impl CommandReceiver {
    /// A receiver that nothing will ever send to (tests, tools).
    pub fn detached() -> Self {
        CommandReceiver {
            slot: Arc::new(Slot {
                state: Mutex::new(SlotState {
                    cmd: Command::Run,
                    version: 0,
                    waker: None,
                }),
            }),
            seen: 0,
        }
    }

    /// True when a command arrived since this receiver last looked.
    pub fn has_changed(&self) -> bool {
        self.slot
            .state
            .lock()
            .map(|st| st.version != self.seen)
            .unwrap_or(false)
    }

    /// The current command, marked as seen.
    pub fn borrow_and_update(&mut self) -> Command {
        match self.slot.state.lock() {
            Ok(st) => {
                self.seen = st.version;
                st.cmd.clone()
            }
            Err(_) => Command::Hard,
        }
    }

    /// Makes the next command wake `waker` (one waker per slot: the task that
    /// carries the connection registers it each time it is polled).
    pub fn register(&self, waker: &Waker) {
        if let Ok(mut st) = self.slot.state.lock() {
            if !st.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                st.waker = Some(waker.clone());
            }
        }
    }
}

/// The open connections of one backend.
#[derive(Debug, Default)]
pub struct ConnRegistry {
    conns: Mutex<HashMap<u64, Arc<Slot>>>,
    /// The drain in progress, if any, so `enable` can stop it.
    drain: Mutex<Option<CancellationToken>>,
}

impl ConnRegistry {
    /// Registers connection `id`; its task listens on the returned receiver.
    pub fn register(&self, id: u64) -> CommandReceiver {
        let rx = CommandReceiver::detached();
        if let Ok(mut m) = self.conns.lock() {
            m.insert(id, Arc::clone(&rx.slot));
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
            Some(slot) => {
                slot.send(cmd);
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
