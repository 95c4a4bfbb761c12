//! The data path: everything a client connection goes through, from the
//! listening socket to the bytes both ways.
//!
//! `listener` accepts (on the sockets of `socket`) and spawns a task per
//! connection that runs `session`: the PROXY header from a load balancer where
//! the listener accepts one (`accept_proxy`), the protocol-header check, connecting a
//! backend (`upstream`: PROXY header, TLS), then a pump: `pump` when both sides
//! are plain TCP, `stream` when either is TLS. Both pumps ask `direction` what to
//! do with each read, following AMQP frames (`amqp`; AMQP 1.0's too, `amqp10`)
//! so that a close ordered by the control plane is sent the way a broker sends it; `bulk` and `buffer` move
//! long payloads. Each connection has a record (`conn_info`), which the frame
//! tracker feeds with the few connection methods `handshake` reads.
//!
//! What the data path shares across connections is a [`Proxy`]. It reports to
//! the rest of warren only through its backends (counters, connect failures) and
//! metrics; it never calls the control plane.

mod accept_proxy;
pub mod amqp;
pub mod amqp10;
pub mod buffer;
mod bulk;
pub mod conn_info;
mod direction;
pub mod handshake;
pub(crate) mod listener;
mod pipe;
pub(crate) mod proxy_protocol;
mod pump;
pub mod rmq_stream;
mod session;
pub mod socket;
mod stream;
mod stream_peers;
mod stream_route;
#[cfg(test)]
mod test_util;
mod upstream;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::balancer::Balancer;
use crate::config::Config;
use crate::proxy::conn_info::Clients;
use crate::proxy::socket::Named;
use crate::proxy::socket::{ListenerStats, Rebindable};
use crate::tls::Tls;

/// What the data path shares across connections. The config, backends and TLS
/// are the same objects the control plane swaps; the listening sockets are the
/// ones a reload rebinds.
pub struct Proxy {
    pub(crate) config: Arc<ArcSwap<Config>>,
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) tls: Arc<Tls>,
    /// Cancelled when warren stops accepting (shutdown).
    pub(crate) shutdown: CancellationToken,
    pub(crate) next_conn_id: AtomicU64,
    /// The AMQP listening socket (absent without `listen`).
    pub amqp_listener: Rebindable,
    /// The TLS listening socket (absent without `tls`).
    pub tls_listener: Rebindable,
    /// The listeners of `listeners:`, bound at start-up.
    pub listeners: Vec<Arc<Named>>,
    /// What each backend advertises to stream clients, as learned from the
    /// open responses that went by (`stream_route`).
    pub(crate) stream_peers: stream_peers::Peers,
    pub(crate) listener_stats: ListenerStats,
    /// The live connections (their records) and the counts of the limits.
    pub clients: Arc<Clients>,
}
