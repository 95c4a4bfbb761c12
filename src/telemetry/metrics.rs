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
pub const BACKEND_REBALANCE_CLOSES: &str = "warren_backend_rebalance_closes_total";
pub const BACKEND_INFO: &str = "warren_backend_info";
pub const BACKEND_CONNECT_DURATION: &str = "warren_backend_connect_duration_seconds";
pub const BACKEND_CONNECTION_DURATION: &str = "warren_backend_connection_duration_seconds";
pub const HEALTH_CHECK_DURATION: &str = "warren_health_check_duration_seconds";
pub const HEALTH_CHECK_FAILURES: &str = "warren_health_check_failures_total";
pub const LISTENER_ACCEPTED: &str = "warren_listener_accepted_connections_total";
pub const LISTENER_REJECTED: &str = "warren_listener_rejected_connections_total";
pub const LISTENER_ACTIVE: &str = "warren_listener_active_connections";
pub const LISTENER_NO_BACKEND: &str = "warren_listener_no_backend_total";
pub const MAX_CONNECTIONS: &str = "warren_max_connections";
pub const CONFIG_RELOADS: &str = "warren_config_reloads_total";
pub const CONFIG_LAST_RELOAD_OK: &str = "warren_config_last_reload_successful";
pub const CONFIG_LAST_RELOAD_TIME: &str = "warren_config_last_reload_success_timestamp_seconds";
pub const SHARED_STATE_UP: &str = "warren_shared_state_up";
pub const SHARED_STATE_LAST_READ: &str = "warren_shared_state_last_read_timestamp_seconds";

pub const HANDSHAKE_REJECTED: &str = "warren_listener_handshake_rejected_total";
pub const LISTENER_PROTOCOL: &str = "warren_listener_protocol_connections_total";
pub const PROXY_HEADER_REJECTED: &str = "warren_proxy_header_rejected_total";
pub const TLS_HANDSHAKES: &str = "warren_tls_handshakes_total";
pub const STREAM_UNMAPPED: &str = "warren_stream_unmapped_brokers_total";
pub const SPLICE_FALLBACKS: &str = "warren_splice_fallbacks_total";
pub const BACKEND_PROTOCOL_UP: &str = "warren_backend_protocol_up";
pub const TLS_CERTIFICATE_EXPIRY: &str = "warren_tls_certificate_expiry_seconds";
pub const ADMIN_REFUSED: &str = "warren_admin_requests_refused_total";

pub const AMQP_CONNECTIONS: &str = "warren_amqp_connections";
pub const AMQP_USER_CONNECTIONS: &str = "warren_amqp_user_connections";
pub const AMQP_CLIENT_CONNECTIONS: &str = "warren_amqp_client_connections";
pub const AMQP_BLOCKED: &str = "warren_amqp_blocked_connections";
pub const AMQP_BLOCKED_SECONDS: &str = "warren_amqp_blocked_seconds_total";
pub const AMQP_CLOSES: &str = "warren_amqp_closes_total";
pub const AMQP_HEARTBEAT_GAPS: &str = "warren_amqp_heartbeat_gaps_total";
pub const AMQP_LIMIT_REFUSALS: &str = "warren_amqp_limit_refusals_total";
/// Label values `side` of [`AMQP_CLOSES`]: who sent the connection's first
/// `connection.close`, or `none` (the TCP connection ended without one).
pub const CLOSE_SIDES: [&str; 4] = ["client", "broker", "warren", "none"];
/// Reply codes of AMQP 0-9-1 that [`AMQP_CLOSES`] labels by number; any
/// other is `other` (the code comes from the network).
pub const REPLY_CODES: [u16; 19] = [
    200, 311, 312, 313, 320, 402, 403, 404, 405, 406, 501, 502, 503, 504, 505, 506, 530, 540, 541,
];
/// Label values `side` of [`AMQP_HEARTBEAT_GAPS`]: whose silence.
pub const GAP_SIDES: [&str; 2] = ["client", "broker"];
/// Label values `scope` and `limit` of [`AMQP_LIMIT_REFUSALS`].
pub const LIMIT_SCOPES: [&str; 3] = ["vhost", "user", "network"];
pub const LIMIT_KINDS: [&str; 2] = ["connections", "rate"];
/// Label values of [`BACKEND_CONNECT_ERRORS`].
pub const CONNECT_ERROR_KINDS: [&str; 6] = [
    "refused",
    "reset",
    "timeout",
    "other",
    "tls",
    "proxy_header",
];
/// Label values `reason` of [`LISTENER_NO_BACKEND`]: no backend was usable, every
/// one tried failed to connect, or this host ran out of sockets or ports.
pub const NO_BACKEND_REASONS: [&str; 3] = ["none_usable", "connect_failed", "local_error"];
/// Label values `reason` of [`HANDSHAKE_REJECTED`].
pub const HANDSHAKE_REASONS: [&str; 3] = ["timeout", "closed", "not_amqp"];
/// Label values `protocol` of [`LISTENER_PROTOCOL`].
pub const PROTOCOLS: [&str; 2] = ["amqp091", "amqp10"];
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
/// Label values `reason` of [`PROXY_HEADER_REJECTED`].
pub const PROXY_HEADER_REASONS: [&str; 5] =
    ["untrusted", "missing", "malformed", "timeout", "closed"];
/// The plain AMQP listener's label value.
pub const LISTENER_PLAIN: &str = "amqp";
/// The TLS listener's label value.
pub const LISTENER_TLS: &str = "amqps";
/// Label values of the listener series.
pub const LISTENERS: [&str; 2] = [LISTENER_PLAIN, LISTENER_TLS];

/// The git revision warren was built from (set by build.rs where git is there).
pub const REVISION: &str = match option_env!("WARREN_GIT_REVISION") {
    Some(r) => r,
    None => "unknown",
};

/// Buckets of [`BACKEND_CONNECT_DURATION`]: a LAN connect is well under 1 ms, a
/// TLS handshake a few, `timeouts.connect` bounds the rest.
const CONNECT_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];
/// Buckets of [`BACKEND_CONNECTION_DURATION`]: AMQP connections are meant to
/// live long; short ones (a client per request) show in the first buckets.
const LIFETIME_BUCKETS: [f64; 10] = [
    0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0, 604800.0,
];

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
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(BACKEND_CONNECT_DURATION.to_string()),
                        &CONNECT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(BACKEND_CONNECTION_DURATION.to_string()),
                        &LIFETIME_BUCKETS,
                    )
                });
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
                listener_zero(listener);
            }
            for reason in HANDSHAKE_REASONS {
                counter!(HANDSHAKE_REJECTED, "reason" => reason).increment(0);
            }
            for reason in ADMIN_REFUSAL_REASONS {
                counter!(ADMIN_REFUSED, "reason" => reason).increment(0);
            }
            for scope in LIMIT_SCOPES {
                for limit in LIMIT_KINDS {
                    counter!(AMQP_LIMIT_REFUSALS, "scope" => scope, "limit" => limit).increment(0);
                }
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
        "Always 1; the version and revision labels tell which warren runs.",
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
    g(
        BACKEND_INFO,
        Count,
        "Always 1; the RabbitMQ node and cluster names the backend's management API reported (joins rabbitmq_identity_info).",
    );
    describe_histogram!(
        BACKEND_CONNECT_DURATION,
        Seconds,
        "Time a successful connect to the backend took (TCP, then PROXY header and TLS where configured)."
    );
    describe_histogram!(
        BACKEND_CONNECTION_DURATION,
        Seconds,
        "How long client connections proxied to the backend lasted, from the backend connect to their end."
    );
    c(
        BACKEND_REBALANCE_CLOSES,
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
    c(
        SPLICE_FALLBACKS,
        Count,
        "Long payloads copied instead of spliced because no pipe could be made, by reason (descriptors, error).",
    );
    c(
        STREAM_UNMAPPED,
        Count,
        "Brokers in stream metadata responses that matched no backend, left as the broker advertised them.",
    );
    g(
        BACKEND_PROTOCOL_UP,
        Count,
        "1 while the node's listener for the protocol passes its protocol-listener check, 0 while the backend is out for that protocol's listeners.",
    );
    c(
        LISTENER_NO_BACKEND,
        Count,
        "Clients turned away because no backend could take them, by listener and reason (none_usable, connect_failed, local_error).",
    );
    g(
        MAX_CONNECTIONS,
        Count,
        "The max_connections limit in force (both listeners together).",
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
        LISTENER_PROTOCOL,
        Count,
        "Client connections by listener and the protocol their header said (amqp091, amqp10), counted once the header is read.",
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
    g(
        AMQP_CONNECTIONS,
        Count,
        "Client connections past connection.open, by backend and vhost (vhosts listed in clients.metrics.vhosts and the top N; the rest as other).",
    );
    g(
        AMQP_USER_CONNECTIONS,
        Count,
        "Client connections whose start-ok named a user, by user (users listed in clients.metrics.users and the top N; the rest as other).",
    );
    g(
        AMQP_CLIENT_CONNECTIONS,
        Count,
        "Client connections by client library: product and version from start-ok's client_properties (the top N pairs; the rest as other).",
    );
    g(
        AMQP_BLOCKED,
        Count,
        "Client connections the broker has blocked (connection.blocked: a memory or disk alarm) and not yet unblocked.",
    );
    c(
        AMQP_BLOCKED_SECONDS,
        Seconds,
        "Time client connections spent blocked by the broker, summed over connections.",
    );
    c(
        AMQP_CLOSES,
        Count,
        "Ended client connections by their first connection.close: side (client, broker, warren, none: no close at all) and reply code (e.g. 320 forced, 403 access refused, 530 not allowed, 541 internal error; other, none).",
    );
    c(
        AMQP_HEARTBEAT_GAPS,
        Count,
        "Silences longer than the negotiated heartbeat interval, by whose silence (client, broker).",
    );
    c(
        AMQP_LIMIT_REFUSALS,
        Count,
        "Connections refused at connection.open with 530 by a clients.limits entry, by scope (vhost, user, network) and limit (connections, rate).",
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
    counter!(BACKEND_REBALANCE_CLOSES, "backend" => name()).increment(0);
    // Registered without a sample: rendered with every bucket at 0.
    let _ = histogram!(BACKEND_CONNECT_DURATION, "backend" => name());
    let _ = histogram!(BACKEND_CONNECTION_DURATION, "backend" => name());
    for kind in CONNECT_ERROR_KINDS {
        counter!(BACKEND_CONNECT_ERRORS, "backend" => name(), "kind" => kind).increment(0);
    }
    for reason in FAILURE_REASONS {
        counter!(HEALTH_CHECK_FAILURES, "backend" => name(), "reason" => reason).increment(0);
    }
    for trigger in DRAIN_TRIGGERS {
        counter!(BACKEND_DRAINS, "backend" => name(), "trigger" => trigger).increment(0);
    }
    counter!(AMQP_BLOCKED_SECONDS, "backend" => name()).increment(0);
    for side in GAP_SIDES {
        counter!(AMQP_HEARTBEAT_GAPS, "backend" => name(), "side" => side).increment(0);
    }
}

/// The label of an AMQP reply code: its number when it is one of
/// [`REPLY_CODES`], else `other`.
pub fn reply_code_label(code: u16) -> String {
    if REPLY_CODES.contains(&code) {
        code.to_string()
    } else {
        "other".to_string()
    }
}

/// A connection of `backend` ended; its first `connection.close` came from
/// `side` (one of [`CLOSE_SIDES`]) with `code`.
pub fn amqp_close(backend: &str, side: &'static str, code: u16) {
    counter!(AMQP_CLOSES, "backend" => backend.to_string(), "side" => side, "code" => reply_code_label(code))
        .increment(1);
}

/// A connection of `backend` ended without any `connection.close`.
pub fn amqp_close_none(backend: &str) {
    counter!(AMQP_CLOSES, "backend" => backend.to_string(), "side" => "none", "code" => "none")
        .increment(1);
}

/// A silence longer than the heartbeat on a connection of `backend`, from
/// `side` (one of [`GAP_SIDES`]).
pub fn heartbeat_gap(backend: &str, side: &'static str) {
    counter!(AMQP_HEARTBEAT_GAPS, "backend" => backend.to_string(), "side" => side).increment(1);
}

/// Time connections of `backend` spent blocked since the last report. The
/// counter counts whole seconds (the `metrics` counters are integers); the
/// fractions are carried to the next report.
pub fn blocked_seconds(backend: &str, seconds: f64) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CARRY: Mutex<Option<HashMap<String, f64>>> = Mutex::new(None);
    if seconds <= 0.0 {
        return;
    }
    let whole = {
        let mut carry = CARRY.lock().unwrap_or_else(|p| p.into_inner());
        let t = carry
            .get_or_insert_with(HashMap::new)
            .entry(backend.to_string())
            .or_default();
        *t += seconds;
        let whole = t.floor();
        *t -= whole;
        whole as u64
    };
    if whole > 0 {
        counter!(AMQP_BLOCKED_SECONDS, "backend" => backend.to_string()).increment(whole);
    }
}

/// A connection refused by a limit; `scope` is one of [`LIMIT_SCOPES`],
/// `limit` one of [`LIMIT_KINDS`].
pub fn limit_refusal(scope: &'static str, limit: &'static str) {
    counter!(AMQP_LIMIT_REFUSALS, "scope" => scope, "limit" => limit).increment(1);
}

/// Label sets of gauge series set by [`set_gauges`], per family: what one
/// warren emitted at its last scrape.
pub type GaugeMemory =
    std::collections::HashMap<&'static str, std::collections::HashSet<Vec<(&'static str, String)>>>;

/// Sets the gauges of family `name` to `rows` (labels, value); series of the
/// family that `memory` holds from the previous call and that are absent now
/// are set to 0 once, then left to expire.
pub fn set_gauges(
    memory: &mut GaugeMemory,
    name: &'static str,
    rows: Vec<(Vec<(&'static str, String)>, f64)>,
) {
    let before = memory.remove(name).unwrap_or_default();
    let mut now = std::collections::HashSet::new();
    for (labels, value) in rows {
        gauge_with(name, &labels).set(value);
        now.insert(labels);
    }
    for gone in before.difference(&now) {
        gauge_with(name, gone).set(0.0);
    }
    memory.insert(name, now);
}

fn gauge_with(name: &'static str, labels: &[(&'static str, String)]) -> metrics::Gauge {
    let labels: Vec<metrics::Label> = labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, v.clone()))
        .collect();
    metrics::gauge!(name, labels)
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

/// The names a backend's node reported: its Erlang node name and cluster name.
pub fn backend_info(backend: &str, node: &str, cluster: &str) {
    gauge!(
        BACKEND_INFO,
        "backend" => backend.to_string(),
        "rabbitmq_node" => node.to_string(),
        "rabbitmq_cluster" => cluster.to_string()
    )
    .set(1.0);
}

/// A connect to `backend` succeeded after `took`.
pub fn backend_connected(backend: &str, took: Duration) {
    histogram!(BACKEND_CONNECT_DURATION, "backend" => backend.to_string())
        .record(took.as_secs_f64());
}

/// A client connection carried by `backend` ended after `lasted`.
pub fn backend_connection_ended(backend: &str, lasted: Duration) {
    histogram!(BACKEND_CONNECTION_DURATION, "backend" => backend.to_string())
        .record(lasted.as_secs_f64());
}

/// A client on `listener` was turned away: no backend could take it
/// (`reason`: one of [`NO_BACKEND_REASONS`]).
/// The counters of a listener, at zero.
pub fn listener_zero(listener: &'static str) {
    counter!(LISTENER_ACCEPTED, "listener" => listener).increment(0);
    counter!(LISTENER_REJECTED, "listener" => listener).increment(0);
    for reason in NO_BACKEND_REASONS {
        counter!(LISTENER_NO_BACKEND, "listener" => listener, "reason" => reason).increment(0);
    }
    for protocol in PROTOCOLS {
        counter!(LISTENER_PROTOCOL, "listener" => listener, "protocol" => protocol).increment(0);
    }
}

/// Client connections open now on a listener of `listeners:`.
pub fn listener_active(listener: &'static str, n: u64) {
    gauge!(LISTENER_ACTIVE, "listener" => listener).set(n as f64);
}

/// Brokers of stream metadata responses that matched no backend (left as the
/// broker advertised them).
pub fn stream_unmapped(n: u64) {
    counter!(STREAM_UNMAPPED).increment(n);
}

/// A long payload copied because no pipe could be made (`reason`:
/// `descriptors` or `error`).
pub fn splice_fallback(reason: &'static str) {
    counter!(SPLICE_FALLBACKS, "reason" => reason).increment(1);
}

/// Whether a backend's listener for `protocol` passes its check.
pub fn backend_protocol_up(backend: &str, protocol: &'static str, up: bool) {
    gauge!(BACKEND_PROTOCOL_UP, "backend" => backend.to_string(), "protocol" => protocol)
        .set(if up { 1.0 } else { 0.0 });
}

pub fn no_backend(listener: &'static str, reason: &'static str) {
    counter!(LISTENER_NO_BACKEND, "listener" => listener, "reason" => reason).increment(1);
}

/// The gauges that hold no backend: build info, the connection cap, open
/// connections per listener, the last reload.
pub fn process_gauges(
    max_connections: usize,
    plain_active: u64,
    tls_active: u64,
    last_reload: (bool, f64),
) {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "revision" => REVISION).set(1.0);
    gauge!(MAX_CONNECTIONS).set(max_connections as f64);
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
    counter!(BACKEND_REBALANCE_CLOSES, "backend" => backend.to_string()).increment(1);
}

/// A client connection's protocol header said `protocol` (one of
/// [`PROTOCOLS`]) on `listener` (one of [`LISTENERS`]).
pub fn protocol_connection(listener: &'static str, protocol: &'static str) {
    counter!(LISTENER_PROTOCOL, "listener" => listener, "protocol" => protocol).increment(1);
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
