//! warren: an AMQP-aware TCP load balancer for RabbitMQ clusters.
//!
//! # Layout
//! One folder per concern; imports only go down this list (ARCHITECTURE.md has
//! the table, `scripts/check-layers` enforces it):
//! - `admin`: the HTTP API, the status page and `/metrics`; asks `control` to act.
//! - `control`: the one place that acts on a backend (drain, disable, enable,
//!   a health flip, retire on reload), the check loops, rebalance, reload, shutdown.
//! - `proxy`: the data path (listeners, a connection's session, the pumps,
//!   AMQP frames); reports to the rest only through its backends and metrics.
//! - `health`: probes and the rise/fall state machine; returns verdict flips.
//! - `bootstrap`: `warren bootstrap`, forming the RabbitMQ cluster.
//! - `balancer`: backends, their state, the choice of one, each connection's orders.
//! - `tls`, `mgmt`: rustls configs; the management API client.
//! - `telemetry`, `config`: metric names and logging; the validated config (leaves).
//!
//! This file only wires them: [`Server::bind`] builds the shared state,
//! [`Server::run`] starts the tasks.

// Only what main, the tests, benches and fuzz targets use is `pub`; the rest
// is `pub(crate)`.
#![warn(unreachable_pub)]

mod admin;
pub mod balancer;
pub mod bootstrap;
pub mod config;
pub mod control;
#[doc(hidden)]
pub mod fuzz_checks;
mod health;
pub mod mgmt;
pub mod operate;
pub mod proxy;
pub mod telemetry;
mod tls;

pub use admin::healthcheck;

pub use control::App;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::balancer::{Backend, Balancer, Policy};
use crate::config::Config;
use crate::proxy::socket::{ListenerStats, Rebindable};
use crate::proxy::Proxy;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: key `{key}`: {source}", key = .source.key())]
    Tls {
        #[from]
        source: tls::TlsError,
    },
}

/// The bound listeners of a server, so callers (tests) can learn the ports.
pub struct Server {
    pub app: Arc<App>,
    /// The plain AMQP listener's address, if there is one.
    pub amqp_addr: Option<SocketAddr>,
    /// The TLS listener's address, if there is one.
    pub tls_addr: Option<SocketAddr>,
    /// The addresses of the listeners of `listeners:`, by name (a `stream`
    /// listener's port per node as `NAME/BACKEND`).
    pub listener_addrs: Vec<(String, SocketAddr)>,
    pub admin_addr: SocketAddr,
}

impl Server {
    /// Binds the listeners and builds the shared state; nothing runs yet.
    pub async fn bind(config: Config, config_path: PathBuf) -> Result<Server, RunError> {
        let bind = |what: &'static str, addr: SocketAddr| async move {
            proxy::socket::bind(addr).map_err(|source| RunError::Bind { what, addr, source })
        };
        // The recorder first: loading the certificates records their expiry.
        let metrics = telemetry::metrics::install();
        let tls_state = tls::Tls::load(&config)?;
        let amqp = match config.listen {
            Some(addr) => Some((bind("amqp", addr).await?, addr)),
            None => None,
        };
        let tls_socket = match &config.tls {
            Some(t) => Some((bind("amqps", t.listen).await?, t.listen)),
            None => None,
        };
        let admin = bind("admin", config.admin.listen).await?;
        let mut listeners = Vec::new();
        let mut listener_addrs = Vec::new();
        for l in &config.listeners {
            // Leaked once per listener: metrics labels are static strings.
            let name: &'static str = Box::leak(l.name.clone().into_boxed_str());
            let socket = bind(name, l.listen).await?;
            listener_addrs.push((l.name.clone(), socket.local_addr().unwrap_or(l.listen)));
            let mut nodes = Vec::new();
            for b in &config.backends {
                if let Some(addr) = l.node_address(&b.name) {
                    let s = bind(name, addr).await?;
                    listener_addrs.push((format!("{}/{}", l.name, b.name), addr));
                    nodes.push((
                        Arc::<str>::from(b.name.as_str()),
                        Rebindable::new(name, Some(s)),
                    ));
                }
            }
            listeners.push(Arc::new(proxy::socket::Named {
                name,
                protocol: l.protocol,
                socket: Rebindable::new(name, Some(socket)),
                nodes,
                active: Default::default(),
                counts: Default::default(),
            }));
            telemetry::metrics::listener_zero(name);
        }
        let amqp_addr = amqp.as_ref().map(|(l, a)| l.local_addr().unwrap_or(*a));
        let tls_addr = tls_socket
            .as_ref()
            .map(|(l, a)| l.local_addr().unwrap_or(*a));
        let admin_addr = admin.local_addr().unwrap_or(config.admin.listen);
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .cloned()
            .map(|b| Arc::new(Backend::new(b)))
            .collect();
        let policy = Policy {
            balance: config.balance,
            slowstart: config.health.slowstart.get(),
        };
        let config = Arc::new(ArcSwap::from_pointee(config));
        let balancer = Arc::new(Balancer::new(policy, backends));
        let tls = Arc::new(tls_state);
        let shutdown = CancellationToken::new();
        let proxy = Arc::new(Proxy {
            config: Arc::clone(&config),
            balancer: Arc::clone(&balancer),
            tls: Arc::clone(&tls),
            shutdown: shutdown.clone(),
            next_conn_id: AtomicU64::new(1),
            amqp_listener: Rebindable::new("amqp", amqp.map(|(l, _)| l)),
            tls_listener: Rebindable::new("amqps", tls_socket.map(|(l, _)| l)),
            listeners,
            stream_peers: Default::default(),
            listener_stats: ListenerStats::default(),
            clients: Arc::new(proxy::conn_info::Clients::new(Arc::clone(&config))),
        });
        let app = Arc::new(App {
            config,
            config_path,
            balancer,
            shutdown,
            metrics,
            tls,
            proxy,
            rebalance: Mutex::new(None),
            admin_listener: Rebindable::new("admin", Some(admin)),
            reloader: control::Reloader::default(),
            events: Arc::default(),
            maintenance: Default::default(),
            shared: Default::default(),
            started: crate::balancer::unix_now(),
        });
        Ok(Server {
            app,
            amqp_addr,
            tls_addr,
            listener_addrs,
            admin_addr,
        })
    }

    /// Runs until `app.shutdown` is cancelled, then closes client connections
    /// gracefully within `shutdown.grace`.
    pub async fn run(self) {
        let app = self.app;
        // The bound addresses (a configured port 0 shows the port the OS chose).
        tracing::info!(
            // Absent listeners leave their field out.
            listen = self.amqp_addr.map(tracing::field::display),
            tls_listen = self.tls_addr.map(tracing::field::display),
            admin = %self.admin_addr,
            backends = app.balancer.backends().len(),
            "warren started"
        );
        for b in app.balancer.backends().iter() {
            b.record_state();
            control::spawn_checks(Arc::clone(&app), Arc::clone(b));
        }
        // Operator intents other instances recorded apply before any client comes.
        control::shared_state::startup(&app).await;
        control::shared_state::spawn(Arc::clone(&app));
        let admin_task = tokio::spawn(admin::run(Arc::clone(&app)));
        control::reload::spawn_watcher(Arc::clone(&app));
        // On a worker thread, not this one (the runtime's `block_on` in main):
        // a connection's task is then spawned onto the accepting worker's own
        // queue instead of being handed across threads with a wake-up each.
        if let Err(e) = tokio::spawn(proxy::listener::run(Arc::clone(&app.proxy))).await {
            tracing::error!(error = %e, "the accept loops failed; shutting down");
        }
        // Stop accepting at once: new clients are refused, not left in the backlog.
        app.proxy.amqp_listener.close();
        app.proxy.tls_listener.close();
        for l in &app.proxy.listeners {
            l.sockets().for_each(|s| s.close());
        }
        control::shutdown::close_connections(&app).await;
        admin_task.abort();
    }
}
