//! The state every task of a running warren shares.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::balancer::unix_now;
use crate::balancer::Balancer;
use crate::config::Config;
use crate::control::events::Events;
use crate::proxy::socket::Rebindable;
use crate::proxy::Proxy;
use crate::tls::Tls;

/// State shared by every task of a running warren.
pub struct App {
    pub(crate) config: Arc<ArcSwap<Config>>,
    pub(crate) config_path: PathBuf,
    pub balancer: Arc<Balancer>,
    /// Cancelled when warren stops accepting (shutdown); every task watches it.
    pub shutdown: CancellationToken,
    pub(crate) metrics: PrometheusHandle,
    /// Certificates and rustls configs; [`Tls::reload`] re-reads them.
    pub(crate) tls: Arc<Tls>,
    /// The data path's shared state (the same config, backends and TLS), with
    /// its listening sockets, which a reload may rebind.
    pub proxy: Arc<Proxy>,
    /// The rebalance in progress, if any.
    pub(crate) rebalance: Mutex<Option<CancellationToken>>,
    /// The admin listening socket; a reload may rebind it.
    pub(crate) admin_listener: Rebindable,
    /// Serialises reloads and keeps their outcome for metrics.
    pub(crate) reloader: Reloader,
    /// The recent events, for `GET /api/events` and the status page.
    pub events: Arc<Events>,
    /// The backends with a maintenance operation running.
    pub(crate) maintenance: Running,
    /// The shared operator state as this instance knows it.
    pub(crate) shared: crate::control::operator_state::SharedState,
    /// Unix time (seconds) warren started, for its uptime.
    pub(crate) started: f64,
}

/// Reload bookkeeping of one running warren.
#[derive(Debug)]
pub(crate) struct Reloader {
    /// One reload at a time (signal, API and watcher may coincide).
    pub(super) lock: tokio::sync::Mutex<()>,
    pub(super) last_ok: AtomicBool,
    /// Unix time of the last successful load, as f64 bits.
    pub(super) last_success: AtomicU64,
    /// Fingerprint of the file content last read by a reload or the watcher.
    seen: Mutex<Option<u64>>,
    /// Woken after every successful reload, for tasks sleeping on config timings.
    pub changed: Notify,
}

impl Default for Reloader {
    fn default() -> Self {
        Reloader {
            lock: tokio::sync::Mutex::new(()),
            last_ok: AtomicBool::new(true),
            last_success: AtomicU64::new(unix_now().to_bits()),
            seen: Mutex::new(None),
            changed: Notify::new(),
        }
    }
}

impl Reloader {
    /// (last reload succeeded, unix time of the last successful load).
    pub(crate) fn last(&self) -> (bool, f64) {
        (
            self.last_ok.load(Ordering::Relaxed),
            f64::from_bits(self.last_success.load(Ordering::Relaxed)),
        )
    }

    pub(super) fn set_seen(&self, fp: u64) {
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(fp);
        }
    }

    pub(super) fn seen(&self) -> Option<u64> {
        self.seen.lock().ok().and_then(|s| *s)
    }
}

/// The backends with an operation running.
#[derive(Debug, Default)]
pub(crate) struct Running(Mutex<HashSet<String>>);

/// Holds a backend's slot while its operation runs.
pub(crate) struct Slot<'a>(&'a Running, String);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0 .0.lock() {
            s.remove(&self.1);
        }
    }
}

impl Running {
    pub(crate) fn take(&self, name: &str) -> Option<Slot<'_>> {
        let mut s = self.0.lock().ok()?;
        s.insert(name.to_string())
            .then(|| Slot(self, name.to_string()))
    }
}
