//! warren: an AMQP-aware TCP load balancer for RabbitMQ clusters.
//!
//! The path of a connection: `listener` accepts it, `balancer` picks a backend,
//! `proxy` connects and carries bytes while following AMQP frames (`amqp`), so
//! that `drain` (operator, alarm, shutdown) or `health` (node down) can close it
//! the way a broker would. `admin` serves the HTTP API and `metrics`.

pub mod admin;
pub mod amqp;
pub mod balancer;
pub mod config;
pub mod drain;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod health;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod mgmt;
pub mod proxy;
pub mod rebalance;
pub mod shutdown;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
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
    /// The rebalance in progress, if any.
    pub rebalance: std::sync::Mutex<Option<CancellationToken>>,
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
}

/// The bound listeners of a server, so callers (tests) can learn the ports.
pub struct Server {
    pub app: Arc<App>,
    pub amqp_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    amqp: TcpListener,
    admin: TcpListener,
}

impl Server {
    /// Binds the listeners and builds the shared state; nothing runs yet.
    pub async fn bind(config: Config, config_path: PathBuf) -> Result<Server, RunError> {
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Bind { what, addr, source })
        };
        let amqp = bind("amqp", config.listen).await?;
        let admin = bind("admin", config.admin.listen).await?;
        let amqp_addr = amqp.local_addr().unwrap_or(config.listen);
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
            metrics: metrics::install(),
            rebalance: rebalance::slot(),
        });
        Ok(Server {
            app,
            amqp_addr,
            admin_addr,
            amqp,
            admin,
        })
    }

    /// Runs until `app.shutdown` is cancelled, then closes client connections
    /// gracefully within `shutdown.grace`.
    pub async fn run(self) {
        let Server {
            app, amqp, admin, ..
        } = self;
        tracing::info!(
            listen = %app.config.load().listen,
            admin = %app.config.load().admin.listen,
            backends = app.balancer.backends().len(),
            "warren started"
        );
        for b in app.balancer.backends().iter() {
            metrics::backend_state(b);
            health::spawn(Arc::clone(&app), Arc::clone(b));
        }
        let admin_task = tokio::spawn(admin::run(Arc::clone(&app), admin));
        listener::run(Arc::clone(&app), amqp).await;
        shutdown::close_connections(&app).await;
        admin_task.abort();
    }
}
