//! `/metrics`: the gauges and byte counts taken from the live state at each
//! scrape, then the Prometheus text of every series (events are recorded where
//! they happen, through `telemetry::metrics`).
//!
//! The data path only adds to two relaxed atomics of its backend per read; a
//! scrape moves the difference into the counters. A removed backend's gauges
//! disappear once its last connection is gone (they are no longer refreshed and
//! expire); counters keep their final value, as counters do.

use std::sync::atomic::Ordering;

use crate::balancer::Backend;
use crate::control::App;
use crate::telemetry::metrics;

/// Refreshes the gauges and byte counters from the live state and renders the
/// Prometheus text format, the process metrics (`/proc`) last.
pub(crate) fn render(app: &App) -> String {
    refresh(app);
    let mut text = app.metrics.render();
    text.push_str(&crate::telemetry::process::render());
    text
}

fn refresh(app: &App) {
    let stats = &app.proxy.listener_stats;
    let all = stats.active.load(Ordering::Relaxed);
    let tls = stats.tls_active.load(Ordering::Relaxed);
    let mut named = 0;
    for l in &app.proxy.listeners {
        let n = l.active.load(Ordering::Relaxed);
        named += n;
        metrics::listener_active(l.name, n as u64);
    }
    metrics::process_gauges(
        app.config.load().max_connections,
        all.saturating_sub(tls + named) as u64,
        tls as u64,
        app.reloader.last(),
    );
    if crate::control::shared_state::enabled(app) {
        let (reachable, last) = app.shared.status();
        metrics::shared_state(reachable, last);
    }
    // Seconds-until-expiry of the certificates, computed at scrape time.
    app.tls.record_expiry();
    // Removed backends still draining are shown too, unless a current backend
    // has their name (a changed backend): then the current one's state wins and
    // connections and bytes add up.
    let current = app.balancer.backends();
    for b in current.iter() {
        b.record_state();
        metrics::ensure_backend_counters(b.name());
        record_info(b);
    }
    let mut active: Vec<(String, usize)> = current
        .iter()
        .map(|b| (b.name().to_string(), b.active_connections()))
        .collect();
    for b in app.balancer.retired() {
        match active.iter_mut().find(|(n, _)| n == b.name()) {
            Some((_, n)) => *n += b.active_connections(),
            None => {
                b.record_state();
                active.push((b.name().to_string(), b.active_connections()));
            }
        }
        flush_traffic(&b);
    }
    for (name, n) in active {
        metrics::backend_active(&name, n);
    }
    for b in current.iter() {
        flush_traffic(b);
    }
    for b in app.balancer.prune_retired() {
        flush_traffic(&b);
    }
    crate::admin::connections::refresh_metrics(app);
}

/// Moves the connections and bytes counted by the data path since the last
/// flush into the counters.
fn flush_traffic(b: &Backend) {
    let connections = b.take_unreported_connections();
    let (sent, received) = b.take_unreported_bytes();
    metrics::backend_traffic(b.name(), connections, sent, received);
}

/// `warren_backend_info` once the node's management API told its node and
/// cluster names (absent before).
fn record_info(b: &Backend) {
    let Ok(st) = b.check.lock() else { return };
    if let (Some(node), Some(cluster)) = (&st.node, &st.rabbitmq_cluster) {
        metrics::backend_info(b.name(), node, cluster);
    }
}
