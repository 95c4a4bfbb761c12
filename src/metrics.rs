//! Prometheus metrics: every name in one place, recorded through the `metrics`
//! facade and rendered by `metrics-exporter-prometheus` on the admin listener.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::balancer::{Backend, State};
use crate::health::Outcome;

pub const BUILD_INFO: &str = "warren_build_info";
pub const BACKEND_UP: &str = "warren_backend_up";
pub const BACKEND_STATE: &str = "warren_backend_state";
pub const BACKEND_ACTIVE: &str = "warren_backend_active_connections";
pub const BACKEND_CONNECTIONS: &str = "warren_backend_connections_total";
pub const BACKEND_CONNECT_ERRORS: &str = "warren_backend_connect_errors_total";
pub const HEALTH_CHECK_DURATION: &str = "warren_health_check_duration_seconds";
pub const HEALTH_CHECK_FAILURES: &str = "warren_health_check_failures_total";

pub const HANDSHAKE_REJECTED: &str = "warren_listener_handshake_rejected_total";
pub const REBALANCE_CLOSES: &str = "warren_rebalance_closes_total";
pub const TLS_HANDSHAKES: &str = "warren_tls_handshakes_total";
pub const TLS_CERTIFICATE_EXPIRY: &str = "warren_tls_certificate_expiry_seconds";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once; later calls reuse it (tests start many servers).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(HEALTH_CHECK_DURATION.to_string()),
                    &[
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ],
                )
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); then ours stays local.
            let _ = metrics::set_global_recorder(recorder);
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// One probe finished.
pub fn health_check(backend: &str, took: Duration, outcome: &Outcome) {
    histogram!(HEALTH_CHECK_DURATION, "backend" => backend.to_string()).record(took.as_secs_f64());
    if let Outcome::Fail(reason) = outcome {
        counter!(HEALTH_CHECK_FAILURES, "backend" => backend.to_string(), "reason" => failure_kind(reason))
            .increment(1);
    }
}

/// Bounded label for a failure reason.
fn failure_kind(reason: &str) -> &'static str {
    if reason.contains("timed out") {
        "timeout"
    } else if reason.starts_with("amqp port") || reason.starts_with("connect:") {
        "tcp"
    } else if reason.contains("HTTP 401") {
        "unauthorized"
    } else if reason.contains("HTTP ") {
        "http_status"
    } else {
        "other"
    }
}

/// The backend's state changed (or was first seen).
pub fn backend_state(b: &Backend) {
    let state = b.state();
    let name = b.name().to_string();
    gauge!(BACKEND_UP, "backend" => name.clone()).set(if b.usable() { 1.0 } else { 0.0 });
    for s in [State::Up, State::Down, State::Draining, State::Disabled] {
        gauge!(BACKEND_STATE, "backend" => name.clone(), "state" => s.as_str())
            .set(if s == state { 1.0 } else { 0.0 });
    }
}

/// A client connection to `backend` opened (+1) or closed (-1).
pub fn backend_connection(backend: &str, delta: f64) {
    gauge!(BACKEND_ACTIVE, "backend" => backend.to_string()).increment(delta);
    if delta > 0.0 {
        counter!(BACKEND_CONNECTIONS, "backend" => backend.to_string()).increment(1);
    }
}

/// Connecting to `backend` failed.
pub fn connect_error(backend: &str, kind: &'static str) {
    counter!(BACKEND_CONNECT_ERRORS, "backend" => backend.to_string(), "kind" => kind).increment(1);
}

/// A connection on `backend` was closed to rebalance.
pub fn rebalance_close(backend: &str) {
    counter!(REBALANCE_CLOSES, "backend" => backend.to_string()).increment(1);
}

/// A client was turned away before its connection reached a backend
/// (`reason`: timeout, closed, not_amqp).
pub fn handshake_rejected(reason: &'static str) {
    counter!(HANDSHAKE_REJECTED, "reason" => reason).increment(1);
}

/// A TLS handshake ended: `result` is `ok` or a bounded failure reason
/// (see `tls::classify`).
pub fn tls_handshake(side: crate::tls::Side, result: &'static str) {
    counter!(TLS_HANDSHAKES, "side" => side.as_str(), "result" => result).increment(1);
}

/// Seconds until a certificate's notAfter (negative once expired).
pub fn tls_certificate_expiry(label: &crate::tls::ExpiryLabel, seconds: f64) {
    match label {
        crate::tls::ExpiryLabel::Listener => {
            gauge!(TLS_CERTIFICATE_EXPIRY, "certificate" => "listener").set(seconds)
        }
        crate::tls::ExpiryLabel::Backend(name) => gauge!(
            TLS_CERTIFICATE_EXPIRY,
            "certificate" => "backend_client",
            "backend" => name.clone()
        )
        .set(seconds),
    }
}
