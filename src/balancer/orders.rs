//! What warren tells each open connection (run, close gracefully, close hard),
//! and the registry of a backend's open connections through which those orders
//! are sent.
//!
//! A connection's task polls its [`OrdersRx`]; on [`Command::Close`] it injects
//! `connection.close` 320 at the next frame boundary (see `proxy::direction`). Who sends the
//! orders (a paced drain, a node going down, shutdown) is the control plane's
//! business.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use tokio_util::sync::CancellationToken;

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

/// [`Orders::level`] of each [`Command`]: orders only ever rise.
const RUN: u8 = 0;
const CLOSE: u8 = 1;
const HARD: u8 = 2;

/// What warren has told one connection, and the waker of the task that serves
/// it. Every open connection holds one, idle ones included, so it is kept
/// small (about 70 bytes): a level that only
/// rises (run, close, hard: a hard close is never turned back into a graceful
/// one), the reply-text of the first close, one waker (both directions of a
/// connection are driven by one task).
#[derive(Debug, Default)]
pub struct Orders {
    level: AtomicU8,
    reason: OnceLock<Arc<str>>,
    waker: AtomicWaker,
}

impl Orders {
    /// Raises the order to `cmd` and wakes the connection if that changed it.
    pub fn send(&self, cmd: &Command) {
        let level = match cmd {
            Command::Run => return,
            Command::Close(text) => {
                let _ = self.reason.set(text.clone());
                CLOSE
            }
            Command::Hard => HARD,
        };
        if self.level.fetch_max(level, Ordering::AcqRel) < level {
            self.waker.wake();
        }
    }

    /// Whether the connection was ever told to close.
    pub fn told(&self) -> bool {
        self.level.load(Ordering::Acquire) != RUN
    }

    fn command(&self, level: u8) -> Command {
        match level {
            RUN => Command::Run,
            CLOSE => Command::Close(
                // Set before the level was raised (see `send`).
                self.reason
                    .get()
                    .cloned()
                    .unwrap_or_else(|| "warren: closing".into()),
            ),
            _ => Command::Hard,
        }
    }
}

/// A connection's end of its [`Orders`]: what it has taken in so far. Each
/// direction of a connection may hold its own (they share the task's waker).
#[derive(Clone, Debug)]
pub struct OrdersRx {
    orders: Arc<Orders>,
    seen: u8,
}

impl OrdersRx {
    /// Ready with the command when it changed since the last time it was taken;
    /// otherwise the task is woken when it changes. Only `Pending` registers
    /// the task: after `Ready`, poll again before waiting.
    pub fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<Command> {
        let mut level = self.orders.level.load(Ordering::Acquire);
        if level == self.seen {
            self.orders.waker.register(cx.waker());
            // A send between the load and the registration woke no one.
            level = self.orders.level.load(Ordering::Acquire);
            if level == self.seen {
                return Poll::Pending;
            }
        }
        self.seen = level;
        Poll::Ready(self.orders.command(level))
    }

    /// The next change of the command.
    pub async fn changed(&mut self) -> Command {
        poll_fn(|cx| self.poll_changed(cx)).await
    }

    /// The command now; what it was is taken in.
    pub fn current(&mut self) -> Command {
        self.seen = self.orders.level.load(Ordering::Acquire);
        self.orders.command(self.seen)
    }
}

/// The open connections of one backend.
#[derive(Debug, Default)]
pub struct ConnRegistry {
    conns: Mutex<HashMap<u64, Arc<Orders>>>,
    /// The drain in progress, if any, so `enable` can stop it.
    drain: Mutex<Option<CancellationToken>>,
}

impl ConnRegistry {
    /// Registers connection `id`; its task takes its orders from the returned end.
    pub fn register(&self, id: u64) -> OrdersRx {
        let orders = Arc::new(Orders::default());
        if let Ok(mut m) = self.conns.lock() {
            m.insert(id, Arc::clone(&orders));
        }
        OrdersRx { orders, seen: RUN }
    }

    /// Forgets connection `id`; returns its orders.
    pub fn unregister(&self, id: u64) -> Option<Arc<Orders>> {
        self.conns.lock().ok()?.remove(&id)
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

    /// Sends `cmd` to connection `id` (never downgrading a hard close to a
    /// graceful one); false if it is gone.
    pub fn send(&self, id: u64, cmd: Command) -> bool {
        let Ok(m) = self.conns.lock() else {
            return false;
        };
        match m.get(&id) {
            Some(orders) => {
                orders.send(&cmd);
                true
            }
            None => false,
        }
    }

    /// Sends `cmd` to every connection.
    pub fn broadcast(&self, cmd: Command) {
        if let Ok(m) = self.conns.lock() {
            for orders in m.values() {
                orders.send(&cmd);
            }
        }
    }

    /// Makes `token` the drain in progress, cancelling the one it replaces.
    pub fn replace_drain(&self, token: CancellationToken) {
        if let Ok(mut d) = self.drain.lock() {
            if let Some(old) = d.replace(token) {
                old.cancel();
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn woken(c: &Counter) -> usize {
        c.0.load(Ordering::SeqCst)
    }

    #[test]
    fn orders_rise_wake_once_per_change_and_keep_the_first_reason() {
        let registry = ConnRegistry::default();
        let mut rx = registry.register(7);
        let counter = Arc::new(Counter::default());
        let waker = std::task::Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_changed(&mut cx).is_pending());
        assert!(!rx.orders.told());

        assert!(registry.send(7, Command::Close("first".into())));
        assert_eq!(woken(&counter), 1);
        assert_eq!(
            rx.poll_changed(&mut cx),
            Poll::Ready(Command::Close("first".into()))
        );
        assert!(rx.poll_changed(&mut cx).is_pending());
        // The same level again is no change; the first reply-text stays.
        registry.broadcast(Command::Close("second".into()));
        assert_eq!(woken(&counter), 1);
        assert!(rx.poll_changed(&mut cx).is_pending());
        assert_eq!(rx.current(), Command::Close("first".into()));

        registry.broadcast(Command::Hard);
        assert_eq!(woken(&counter), 2);
        assert_eq!(rx.poll_changed(&mut cx), Poll::Ready(Command::Hard));
        // Never back down from a hard close.
        registry.send(7, Command::Close("late".into()));
        assert_eq!(rx.current(), Command::Hard);
        assert!(rx.orders.told());

        registry.unregister(7);
        assert!(!registry.send(7, Command::Hard));
        assert!(registry.is_empty());
    }

    #[test]
    fn a_hard_close_needs_no_close_before_it() {
        let registry = ConnRegistry::default();
        let mut rx = registry.register(1);
        let mut other = rx.clone();
        registry.send(1, Command::Hard);
        assert_eq!(rx.current(), Command::Hard);
        // Each end takes the change in for itself.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert_eq!(other.poll_changed(&mut cx), Poll::Ready(Command::Hard));
    }
}
