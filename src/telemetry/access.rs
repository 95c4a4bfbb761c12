//! The end of one client connection: its access-log line (`log.access`) and
//! its duration histogram. The data path builds one [`Record`] per connection,
//! whatever ended it, and hands it to [`finished`].

use std::net::SocketAddr;
use std::time::Duration;

use crate::telemetry::metrics;

/// The log target of access lines: `RUST_LOG=warren::access=off` or a
/// `log.level` such as `info,warren::access=off` silences them.
pub const TARGET: &str = "warren::access";

/// One client connection as it ended.
#[derive(Clone, Debug)]
pub struct Record<'a> {
    /// The client: the TCP peer, or what a trusted PROXY header said.
    pub client: SocketAddr,
    /// `amqp` or `amqps` (see [`metrics::LISTENERS`]).
    pub listener: &'static str,
    /// The backend that carried it, if one was reached.
    pub backend: Option<&'a str>,
    /// Bytes forwarded from the client to the backend.
    pub sent: u64,
    /// Bytes forwarded from the backend to the client.
    pub received: u64,
    /// From the accept to the end.
    pub duration: Duration,
    /// From the backend connect to the end (`None`: no backend reached).
    pub carried: Option<Duration>,
    /// How it ended: one of [`ENDS`].
    pub end: &'static str,
}

/// The values of [`Record::end`]: closed by the peers (`closed`); closed by
/// warren with `connection.close` 320 and the client's close-ok (`warren_close`);
/// cut by warren (`cut`: a close not answered in time, a hard drain, an idle
/// timeout); reset by a peer (`reset`: also what a client that closes its socket
/// with bytes unread after close-ok causes); another I/O error (`error`); turned
/// away before any backend (`rejected`: not AMQP, silent or gone at the
/// handshake; `no_backend`).
pub const ENDS: [&str; 7] = [
    "closed",
    "warren_close",
    "cut",
    "reset",
    "error",
    "rejected",
    "no_backend",
];

/// Records the connection's duration on its backend and, when `log` (the
/// config's `log.access`), writes its access line.
pub fn finished(r: &Record<'_>, log: bool) {
    if let (Some(backend), Some(carried)) = (r.backend, r.carried) {
        metrics::backend_connection_ended(backend, carried);
    }
    if log {
        tracing::info!(
            target: TARGET,
            client = %r.client,
            listener = r.listener,
            backend = r.backend.unwrap_or(""),
            bytes_sent = r.sent,
            bytes_received = r.received,
            duration_ms = r.duration.as_millis() as u64,
            end = r.end,
            "connection ended"
        );
    }
}
