//! One direction of a proxied connection, as both data paths follow it: the
//! plain TCP pump (`proxy`) and the TLS pump (`stream`) do their own I/O and
//! share the AMQP close rules kept here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::amqp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Client to broker.
    Up,
    /// Broker to client.
    Down,
}

/// What the two directions of one connection tell each other.
pub(crate) struct Shared {
    pub(crate) epoch: Instant,
    /// Milliseconds since `epoch` at the last byte read in either direction
    /// (kept only when an idle timeout is set).
    pub(crate) last_active: AtomicU64,
    /// The client has been sent `connection.close`.
    pub(crate) client_told: AtomicBool,
    /// The broker-to-client direction has ended.
    pub(crate) down_done: AtomicBool,
    /// Client or broker already sent `connection.close` on its own: the connection
    /// is closing the normal way, so warren only forwards (within its deadline).
    pub(crate) peer_closing: AtomicBool,
    /// The broker sent `connection.close` (RabbitMQ closes its socket right after
    /// it on shutdown, without waiting for close-ok).
    pub(crate) broker_closed: AtomicBool,
    /// The client answered a close with `close-ok`.
    pub(crate) client_acked: AtomicBool,
    pub(crate) notify: Notify,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Shared {
            epoch: Instant::now(),
            last_active: AtomicU64::new(0),
            client_told: AtomicBool::new(false),
            down_done: AtomicBool::new(false),
            peer_closing: AtomicBool::new(false),
            broker_closed: AtomicBool::new(false),
            client_acked: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    pub(crate) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active.store(ms, Ordering::Relaxed);
    }

    /// When the connection becomes idle, given the last activity seen.
    pub(crate) fn idle_deadline(&self, idle: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.last_active.load(Ordering::Relaxed)) + idle
    }

    pub(crate) fn set(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// The `connection.close` warren sends in direction `dir`: 320 (forced) to the
/// client, 200 to the broker.
pub(crate) fn close_frame(dir: Dir, reason: &str) -> Vec<u8> {
    match dir {
        Dir::Down => amqp::connection_close(amqp::CONNECTION_FORCED, reason),
        Dir::Up => amqp::connection_close(amqp::REPLY_SUCCESS, reason),
    }
}
