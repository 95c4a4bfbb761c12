//! Prometheus metrics: every name in one place, recorded through the `metrics`
//! facade and rendered by `metrics-exporter-prometheus` on the admin listener.
//!
//! Two kinds of recording:
//! - events (a connection opened, a connect failed, a probe finished, a reload)
//!   are counted or observed where they happen;
//! - gauges (state, active connections) and byte counts are taken from the live
//!   state at every scrape (`admin::scrape`), through the recorders here.
//!
//! Labels are bounded: backend names come from the config, every other label
//! value is one of a fixed set. Client addresses are never labels.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Unit, Unit::Bytes, Unit::Count, Unit::Seconds};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

pub const BUILD_INFO: &str = "warren_build_info";
pub const BACKEND_UP: &str = "warren_backend_up";
pub const BACKEND_STATE: &str = "warren_backend_state";
pub const BACKEND_ALARM: &str = "warren_backend_alarm";
pub const BACKEND_ACTIVE: &str = "warren_backend_active_connections";
pub const BACKEND_CONNECTIONS: &str = "warren_backend_connections_total";
pub const BACKEND_CONNECT_ERRORS: &str = "warren_backend_connect_errors_total";
pub const BACKEND_SENT_BYTES: &str = "warren_backend_sent_bytes_total";
pub const BACKEND_RECEIVED_BYTES: &str = "warren_backend_received_bytes_total";
pub const BACKEND_DRAINS: &str = "warren_backend_drains_total";
pub const BACKEND_GRACEFUL_CLOSES: &str = "warren_backend_graceful_closes_total";
pub const BACKEND_FORCED_CLOSES: &str = "warren_backend_forced_closes_total";
pub const REBALANCE_CLOSES: &str = "warren_rebalance_closes_total";
pub const HEALTH_CHECK_DURATION: &str = "warren_health_check_duration_seconds";
pub const HEALTH_CHECK_FAILURES: &str = "warren_health_check_failures_total";
pub const LISTENER_ACCEPTED: &str = "warren_listener_accepted_connections_total";
pub const LISTENER_REJECTED: &str = "warren_listener_rejected_connections_total";
pub const LISTENER_ACTIVE: &str = "warren_listener_active_connections";
pub const CONFIG_RELOADS: &str = "warren_config_reloads_total";
pub const CONFIG_LAST_RELOAD_OK: &str = "warren_config_last_reload_successful";
pub const CONFIG_LAST_RELOAD_TIME: &str = "warren_config_last_reload_success_timestamp_seconds";
pub const SHARED_STATE_UP: &str = "warren_shared_state_up";
pub const SHARED_STATE_LAST_READ: &str = "warren_shared_state_last_read_timestamp_seconds";

pub const HANDSHAKE_REJECTED: &str = "warren_listener_handshake_rejected_total";
pub const PROXY_HEADER_REJECTED: &str = "warren_proxy_header_rejected_total";
pub const TLS_HANDSHAKES: &str = "warren_tls_handshakes_total";
pub const TLS_CERTIFICATE_EXPIRY: &str = "warren_tls_certificate_expiry_seconds";
pub const ADMIN_REFUSED: &str = "warren_admin_requests_refused_total";
/// Label values of [`BACKEND_CONNECT_ERRORS`].
pub const CONNECT_ERROR_KINDS: [&str; 6] = [
    "refused",
    "reset",
    "timeout",
    "other",
    "tls",
    "proxy_header",
];
/// Label values of [`HEALTH_CHECK_FAILURES`].
pub const FAILURE_REASONS: [&str; 5] = ["timeout", "tcp", "unauthorized", "http_status", "other"];
/// Label values of [`BACKEND_DRAINS`].
pub const DRAIN_TRIGGERS: [&str; 4] = ["operator", "alarm", "reload", "maintenance"];
/// Label values of [`BACKEND_STATE`].
pub const BACKEND_STATES: [&str; 5] = ["up", "down", "draining", "disabled", "maintenance"];
/// Label values of [`CONFIG_RELOADS`]' trigger: SIGHUP, `POST /api/reload`, the watched file.
pub const RELOAD_TRIGGERS: [&str; 3] = ["signal", "api", "watch"];
/// Label values of [`ADMIN_REFUSED`] (see `admin::guard::Refusal`).
pub const ADMIN_REFUSAL_REASONS: [&str; 7] = [
    "bad_host",
    "wrong_host",
    "cross_origin",
    "cross_site",
    "form_content_type",
    "unauthorized",
    "token_unavailable",
];
/// The plain AMQP listener's label value.
/// Label values `reason` of [`PROXY_HEADER_REJECTED`].
pub const PROXY_HEADER_REASONS: [&str; 5] =
    ["untrusted", "missing", "malformed", "timeout", "closed"];
pub const LISTENER_PLAIN: &str = "amqp";
/// The TLS listener's label value.
pub const LISTENER_TLS: &str = "amqps";
/// Label values of the listener series.
pub const LISTENERS: [&str; 2] = [LISTENER_PLAIN, LISTENER_TLS];

/// Gauges not refreshed for this long are dropped (a removed backend's).
const GAUGE_IDLE: Duration = Duration::from_secs(10);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once; later calls reuse it (tests start many servers).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                .set_buckets_for_metric(
                    Matcher::Full(HEALTH_CHECK_DURATION.to_string()),
                    &[
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ],
                );
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); then ours stays local.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            for trigger in RELOAD_TRIGGERS {
                for result in ["success", "failure"] {
                    counter!(CONFIG_RELOADS, "result" => result, "trigger" => trigger).increment(0);
                }
            }
            for listener in LISTENERS {
                counter!(LISTENER_ACCEPTED, "listener" => listener).increment(0);
                counter!(LISTENER_REJECTED, "listener" => listener).increment(0);
            }
            for reason in ADMIN_REFUSAL_REASONS {
                counter!(ADMIN_REFUSED, "reason" => reason).increment(0);
            }
            handle
        })
        .clone()
}

fn describe() {
    let g = |name: &'static str, unit: Unit, help: &'static str| describe_gauge!(name, unit, help);
    let c =
        |name: &'static str, unit: Unit, help: &'static str| describe_counter!(name, unit, help);
    g(
        BUILD_INFO,
        Count,
        "Always 1; the version label tells which warren runs.",
    );
    g(
        BACKEND_UP,
        Count,
        "1 when the backend may take new connections (up, enabled, no alarm), else 0.",
    );
    g(
        BACKEND_STATE,
        Count,
        "1 for the backend's current state (up, down, draining, disabled, maintenance), 0 for the others.",
    );
    g(
        BACKEND_ALARM,
        Count,
        "1 while the node reports a memory or disk alarm (local-alarms check).",
    );
    g(
        BACKEND_ACTIVE,
        Count,
        "Client connections currently proxied to the backend.",
    );
    c(
        BACKEND_CONNECTIONS,
        Count,
        "Client connections proxied to the backend since start.",
    );
    c(
        BACKEND_CONNECT_ERRORS,
        Count,
        "Failed connects to the backend's AMQP port, by kind (refused, reset, timeout, other, tls, proxy_header).",
    );
    c(
        BACKEND_SENT_BYTES,
        Bytes,
        "Bytes forwarded from clients to the backend.",
    );
    c(
        BACKEND_RECEIVED_BYTES,
        Bytes,
        "Bytes forwarded from the backend to clients.",
    );
    c(
        BACKEND_DRAINS,
        Count,
        "Drains started on the backend, by trigger (operator, alarm, reload, maintenance).",
    );
    c(
        BACKEND_GRACEFUL_CLOSES,
        Count,
        "Connections warren closed with AMQP connection.close (drain, node down, shutdown).",
    );
    c(
        BACKEND_FORCED_CLOSES,
        Count,
        "Connections warren had to close without a completed AMQP close (grace or close timeout over).",
    );
    c(
        REBALANCE_CLOSES,
        Count,
        "Connections on the backend closed (connection.close 320) to even out the spread after a node returned.",
    );
    describe_histogram!(
        HEALTH_CHECK_DURATION,
        Seconds,
        "Time one health probe of the backend took (TCP connect plus management checks)."
    );
    c(
        HEALTH_CHECK_FAILURES,
        Count,
        "Failed health probes, by reason (timeout, tcp, unauthorized, http_status, other).",
    );
    c(
        LISTENER_ACCEPTED,
        Count,
        "Client connections accepted by the listener.",
    );
    c(
        LISTENER_REJECTED,
        Count,
        "Client connections refused because max_connections were open.",
    );
    g(
        LISTENER_ACTIVE,
        Count,
        "Client connections currently open on the listener.",
    );
    c(
        CONFIG_RELOADS,
        Count,
        "Config reloads, by result (success, failure) and trigger (signal, api, watch).",
    );
    g(
        CONFIG_LAST_RELOAD_OK,
        Count,
        "1 when the last reload succeeded (or none was tried), 0 when it failed.",
    );
    g(
        CONFIG_LAST_RELOAD_TIME,
        Seconds,
        "Unix time of the last successful config load (start or reload).",
    );
    g(
        SHARED_STATE_UP,
        Count,
        "1 when the last read of the shared operator state succeeded, 0 when it failed (the last known state stays in force).",
    );
    g(
        SHARED_STATE_LAST_READ,
        Seconds,
        "Unix time of the last successful read of the shared operator state (0: never).",
    );
    c(
        HANDSHAKE_REJECTED,
        Count,
        "Clients turned away before reaching a backend, by reason (timeout, closed, not_amqp).",
    );
    c(
        PROXY_HEADER_REJECTED,
        Count,
        "Connections closed at the PROXY step of a listener with accept_proxy, by listener and reason (untrusted, missing, malformed, timeout, closed).",
    );
    c(
        TLS_HANDSHAKES,
        Count,
        "TLS handshakes, by side (client: on the TLS listener, backend: to a node) and result.",
    );
    g(
        TLS_CERTIFICATE_EXPIRY,
        Seconds,
        "Seconds until the certificate's notAfter (negative once expired), by certificate.",
    );
    c(
        ADMIN_REFUSED,
        Count,
        "Admin API requests refused, by reason (bad_host, wrong_host, cross_origin, cross_site, form_content_type, unauthorized, token_unavailable).",
    );
}

/// Series that exist from the start at 0, so `rate()` and alerts see the first event.
pub fn ensure_backend_counters(backend: &str) {
    let name = || backend.to_string();
    counter!(BACKEND_CONNECTIONS, "backend" => name()).increment(0);
    counter!(BACKEND_SENT_BYTES, "backend" => name()).increment(0);
    counter!(BACKEND_RECEIVED_BYTES, "backend" => name()).increment(0);
    counter!(BACKEND_GRACEFUL_CLOSES, "backend" => name()).increment(0);
    counter!(BACKEND_FORCED_CLOSES, "backend" => name()).increment(0);
    counter!(REBALANCE_CLOSES, "backend" => name()).increment(0);
    for kind in CONNECT_ERROR_KINDS {
        counter!(BACKEND_CONNECT_ERRORS, "backend" => name(), "kind" => kind).increment(0);
    }
    for reason in FAILURE_REASONS {
        counter!(HEALTH_CHECK_FAILURES, "backend" => name(), "reason" => reason).increment(0);
    }
    for trigger in DRAIN_TRIGGERS {
        counter!(BACKEND_DRAINS, "backend" => name(), "trigger" => trigger).increment(0);
    }
}

/// Adds connections and bytes counted by the data path since the last flush.
pub fn backend_traffic(backend: &str, connections: u64, sent: u64, received: u64) {
    if connections > 0 {
        counter!(BACKEND_CONNECTIONS, "backend" => backend.to_string()).increment(connections);
    }
    if sent > 0 {
        counter!(BACKEND_SENT_BYTES, "backend" => backend.to_string()).increment(sent);
    }
    if received > 0 {
        counter!(BACKEND_RECEIVED_BYTES, "backend" => backend.to_string()).increment(received);
    }
}

/// Open connections of `backend`.
pub fn backend_active(backend: &str, n: usize) {
    gauge!(BACKEND_ACTIVE, "backend" => backend.to_string()).set(n as f64);
}

/// The gauges that hold no backend: build info, open connections per listener,
/// the last reload.
pub fn process_gauges(plain_active: u64, tls_active: u64, last_reload: (bool, f64)) {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(LISTENER_ACTIVE, "listener" => LISTENER_PLAIN).set(plain_active as f64);
    gauge!(LISTENER_ACTIVE, "listener" => LISTENER_TLS).set(tls_active as f64);
    let (ok, at) = last_reload;
    gauge!(CONFIG_LAST_RELOAD_OK).set(if ok { 1.0 } else { 0.0 });
    gauge!(CONFIG_LAST_RELOAD_TIME).set(at);
}

/// The shared operator state: (read last time, unix time of the last good read).
pub fn shared_state(reachable: bool, last_read: f64) {
    gauge!(SHARED_STATE_UP).set(if reachable { 1.0 } else { 0.0 });
    gauge!(SHARED_STATE_LAST_READ).set(last_read);
}

/// One probe finished; `failure` is its reason when it failed.
pub fn health_check(backend: &str, took: Duration, failure: Option<&str>) {
    histogram!(HEALTH_CHECK_DURATION, "backend" => backend.to_string()).record(took.as_secs_f64());
    if let Some(reason) = failure {
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

/// The backend's state changed (or was first seen, or a scrape refreshes it);
/// `state` is one of [`BACKEND_STATES`].
pub fn backend_state(backend: &str, state: &str, usable: bool, alarm: bool) {
    let name = backend.to_string();
    gauge!(BACKEND_UP, "backend" => name.clone()).set(if usable { 1.0 } else { 0.0 });
    gauge!(BACKEND_ALARM, "backend" => name.clone()).set(if alarm { 1.0 } else { 0.0 });
    for s in BACKEND_STATES {
        gauge!(BACKEND_STATE, "backend" => name.clone(), "state" => s).set(if s == state {
            1.0
        } else {
            0.0
        });
    }
}

/// A connection warren told to close ended: gracefully or not.
pub fn close_ended(backend: &str, graceful: bool) {
    let name = if graceful {
        BACKEND_GRACEFUL_CLOSES
    } else {
        BACKEND_FORCED_CLOSES
    };
    counter!(name, "backend" => backend.to_string()).increment(1);
}

/// Connecting to `backend` failed; `kind` is one of [`CONNECT_ERROR_KINDS`].
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

/// A connection was closed at the PROXY step of `listener` (one of
/// [`LISTENERS`]); `reason` is one of [`PROXY_HEADER_REASONS`].
pub fn proxy_header_rejected(listener: &'static str, reason: &'static str) {
    counter!(PROXY_HEADER_REJECTED, "listener" => listener, "reason" => reason).increment(1);
}

/// A drain of `backend` started; `trigger` is one of [`DRAIN_TRIGGERS`].
pub fn drain_started(backend: &str, trigger: &'static str) {
    counter!(BACKEND_DRAINS, "backend" => backend.to_string(), "trigger" => trigger).increment(1);
}

/// A client connection was accepted (`true`) or refused over the cap, on the
/// listener labelled `listener` (one of [`LISTENERS`]).
pub fn listener_accept(listener: &'static str, accepted: bool) {
    let name = if accepted {
        LISTENER_ACCEPTED
    } else {
        LISTENER_REJECTED
    };
    counter!(name, "listener" => listener).increment(1);
}

/// The admin API refused a request; `reason` is one of [`ADMIN_REFUSAL_REASONS`].
pub fn admin_refused(reason: &'static str) {
    counter!(ADMIN_REFUSED, "reason" => reason).increment(1);
}

/// A reload finished.
pub fn reload(trigger: &'static str, ok: bool) {
    let result = if ok { "success" } else { "failure" };
    counter!(CONFIG_RELOADS, "result" => result, "trigger" => trigger).increment(1);
}

/// A TLS handshake ended: `result` is `ok` or a bounded failure reason
/// (see `tls::classify`).
/// `side` is `client` (on the TLS listener) or `backend` (to a node).
pub fn tls_handshake(side: &'static str, result: &'static str) {
    counter!(TLS_HANDSHAKES, "side" => side, "result" => result).increment(1);
}

/// Seconds until a certificate's notAfter (negative once expired): the TLS
/// listener's (`backend` None) or the client certificate warren shows `backend`.
pub fn tls_certificate_expiry(backend: Option<&str>, seconds: f64) {
    match backend {
        None => gauge!(TLS_CERTIFICATE_EXPIRY, "certificate" => "listener").set(seconds),
        Some(name) => gauge!(
            TLS_CERTIFICATE_EXPIRY,
            "certificate" => "backend_client",
            "backend" => name.to_string()
        )
        .set(seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_map_to_bounded_labels() {
        for (reason, kind) in [
            ("check timed out after 1s", "timeout"),
            ("amqp port 127.0.0.1:1: refused", "tcp"),
            ("connect: refused", "tcp"),
            ("local-alarms: HTTP 401: Unauthorized", "unauthorized"),
            ("virtual-hosts: HTTP 503: failed", "http_status"),
            ("something else", "other"),
        ] {
            assert_eq!(failure_kind(reason), kind, "{reason}");
            assert!(FAILURE_REASONS.contains(&kind));
        }
    }
}
