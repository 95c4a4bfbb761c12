//! warren: an AMQP-aware TCP load balancer for RabbitMQ clusters.
//!
//! The path of a connection: `listener` accepts it, `balancer` picks a backend,
//! `proxy` connects and carries bytes while following AMQP frames (`amqp`), so
//! that `drain` (operator, alarm, shutdown) or `health` (node down) can close it
//! the way a broker would. `admin` serves the HTTP API and `metrics`.

pub mod admin;
pub mod balancer;
pub mod bootstrap;
pub mod config;
pub mod control;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod health;
pub mod mgmt;
pub mod proxy;
pub mod telemetry;
pub mod tls;

// Old paths kept while the tests move to the new ones.
pub use control::{reload, shutdown};
pub use proxy::{amqp, buffer};
pub use telemetry::{logging, metrics};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::balancer::{Backend, Balancer, Policy};
use crate::config::Config;

/// State shared by every task of a running warren.
pub struct App {
    pub config: ArcSwap<Config>,
    pub config_path: PathBuf,
    pub balancer: Balancer,
    /// Cancelled when warren stops accepting (shutdown); every task watches it.
    pub shutdown: CancellationToken,
    pub next_conn_id: AtomicU64,
    pub metrics: PrometheusHandle,
    /// Certificates and rustls configs; [`tls::Tls::reload`] re-reads them.
    pub tls: tls::Tls,
    /// The rebalance in progress, if any.
    pub rebalance: std::sync::Mutex<Option<CancellationToken>>,
    /// The AMQP listening socket (absent without `listen`); a reload may rebind it.
    pub amqp_listener: proxy::listener::Rebindable,
    /// The TLS listening socket (absent without `tls`); a reload may rebind it.
    pub tls_listener: proxy::listener::Rebindable,
    /// The admin listening socket; a reload may rebind it.
    pub admin_listener: proxy::listener::Rebindable,
    pub listener_stats: proxy::listener::ListenerStats,
    /// Serialises reloads and keeps their outcome for metrics.
    pub reloader: control::reload::Reloader,
}

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
    pub admin_addr: SocketAddr,
}

impl Server {
    /// Binds the listeners and builds the shared state; nothing runs yet.
    pub async fn bind(config: Config, config_path: PathBuf) -> Result<Server, RunError> {
        let bind = |what: &'static str, addr: SocketAddr| async move {
            proxy::listener::bind(addr).map_err(|source| RunError::Bind { what, addr, source })
        };
        // The recorder first: loading the certificates records their expiry.
        let metrics = telemetry::metrics::install();
        let tls_state = tls::Tls::load(&config)?;
        let amqp = match config.listen {
            Some(addr) => Some((bind("amqp", addr).await?, addr)),
            None => None,
        };
        let tls = match &config.tls {
            Some(t) => Some((bind("amqps", t.listen).await?, t.listen)),
            None => None,
        };
        let admin = bind("admin", config.admin.listen).await?;
        let amqp_addr = amqp.as_ref().map(|(l, a)| l.local_addr().unwrap_or(*a));
        let tls_addr = tls.as_ref().map(|(l, a)| l.local_addr().unwrap_or(*a));
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
        let app = Arc::new(App {
            balancer: Balancer::new(policy, backends),
            config: ArcSwap::from_pointee(config),
            config_path,
            shutdown: CancellationToken::new(),
            next_conn_id: AtomicU64::new(1),
            metrics,
            tls: tls_state,
            rebalance: control::rebalance::slot(),
            amqp_listener: proxy::listener::Rebindable::new("amqp", amqp.map(|(l, _)| l)),
            tls_listener: proxy::listener::Rebindable::new("amqps", tls.map(|(l, _)| l)),
            admin_listener: proxy::listener::Rebindable::new("admin", Some(admin)),
            listener_stats: proxy::listener::ListenerStats::default(),
            reloader: control::reload::Reloader::default(),
        });
        Ok(Server {
            app,
            amqp_addr,
            tls_addr,
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
            telemetry::metrics::backend_state(b);
            health::spawn(Arc::clone(&app), Arc::clone(b));
        }
        let admin_task = tokio::spawn(admin::run(Arc::clone(&app)));
        control::reload::spawn_watcher(Arc::clone(&app));
        // On a worker thread, not this one (the runtime's `block_on` in main):
        // a connection's task is then spawned onto the accepting worker's own
        // queue instead of being handed across threads with a wake-up each.
        if let Err(e) = tokio::spawn(proxy::listener::run(Arc::clone(&app))).await {
            tracing::error!(error = %e, "the accept loops failed; shutting down");
        }
        // Stop accepting at once: new clients are refused, not left in the backlog.
        app.amqp_listener.close();
        app.tls_listener.close();
        control::shutdown::close_connections(&app).await;
        admin_task.abort();
    }
}
