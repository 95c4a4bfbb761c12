//! Active and passive health checking.
//!
//! One task per backend (a hung node never delays the others' checks). A probe is a
//! TCP connect to the AMQP port plus the node's own management API checks
//! (`GET /api/health/checks/<name>`), the whole probe bounded by `health.timeout`.
//! Consecutive results move the verdict with HAProxy's rise/fall semantics; failed
//! connects from the proxy count as failures too (passive detection). A verdict
//! flip is logged once; probes that agree with the current verdict log at debug.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::{Method, StatusCode};
use tokio::net::TcpStream;

use crate::balancer::Command;
use crate::balancer::{Backend, Health, Mode};
use crate::config::{HealthConfig, OnAlarm};
use crate::control::drain::{self, DrainPlan};
use crate::mgmt::{self, Credentials, Endpoint};
use crate::App;

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// The node is reachable and serving, but has a resource alarm.
    Alarm(String),
    Fail(String),
}

/// Runs the checks of `backend` until it is removed or warren shuts down.
pub fn spawn(app: Arc<App>, backend: Arc<Backend>) {
    tokio::spawn(async move {
        let stop = backend.tasks.clone();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = app.shutdown.cancelled() => {}
            _ = run(&app, &backend) => {}
        }
    });
}

async fn run(app: &Arc<App>, backend: &Arc<Backend>) {
    loop {
        let cfg = app.config.load().health.clone();
        let creds = match cfg.resolve_password() {
            Ok(password) => Some(Credentials {
                username: cfg.username.clone(),
                password,
            }),
            Err(e) => {
                tracing::error!(backend = backend.name(), error = %e, "no management password; management checks skipped");
                None
            }
        };
        let started = tokio::time::Instant::now();
        let outcome = probe(backend, &cfg, creds.as_ref()).await;
        let took = started.elapsed();
        crate::telemetry::metrics::health_check(backend.name(), took, &outcome);
        record(app, backend, &outcome);
        // A reload may have changed the intervals: start over with the new ones.
        tokio::select! {
            _ = tokio::time::sleep(next_interval(backend, &cfg)) => {}
            _ = app.reloader.changed.notified() => {}
        }
    }
}

/// Fast while the verdict is changing, slow while down, normal otherwise.
fn next_interval(backend: &Backend, cfg: &HealthConfig) -> Duration {
    let (succ, fail) = backend
        .check
        .lock()
        .map(|c| (c.consecutive_successes, c.consecutive_failures))
        .unwrap_or((0, 0));
    match backend.health() {
        Health::Up if fail > 0 => cfg.fast_interval.get(),
        Health::Down if succ > 0 => cfg.fast_interval.get(),
        Health::Down => cfg.down_interval.get(),
        Health::Up => cfg.interval.get(),
    }
}

/// One probe, bounded by `health.timeout`.
pub async fn probe(backend: &Backend, cfg: &HealthConfig, creds: Option<&Credentials>) -> Outcome {
    let timeout = cfg.timeout.get();
    match tokio::time::timeout(timeout, probe_inner(backend, cfg, creds, timeout)).await {
        Ok(o) => o,
        Err(_) => Outcome::Fail(format!("check timed out after {timeout:?}")),
    }
}

async fn probe_inner(
    backend: &Backend,
    cfg: &HealthConfig,
    creds: Option<&Credentials>,
    timeout: Duration,
) -> Outcome {
    // The AMQP port: a connect and an immediate close. It sends no bytes, so a
    // listener expecting a PROXY header is not disturbed (RabbitMQ 3.10.8 logs
    // nothing for it), and it runs no TLS handshake on AMQPS ports (a handshake
    // then a close makes RabbitMQ log a warning per probe). See docs/tls.md.
    if let Err(e) = TcpStream::connect(&backend.config.address).await {
        return Outcome::Fail(format!("amqp port {}: {e}", backend.config.address));
    }
    let (Some(url), Some(creds)) = (&backend.config.management, creds) else {
        return Outcome::Pass;
    };
    let ep = match Endpoint::parse(url) {
        Ok(ep) => ep,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let mut alarm = None;
    for check in &cfg.checks {
        let path = format!("/api/health/checks/{check}");
        match mgmt::request(&ep, creds, Method::GET, &path, None, timeout).await {
            Ok(resp) if resp.status == StatusCode::OK => {}
            Ok(resp) => {
                let reason = resp
                    .json()
                    .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
                    .unwrap_or_else(|| {
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned()
                    });
                let text = format!("{check}: HTTP {}: {reason}", resp.status.as_u16());
                if check == "local-alarms" && resp.status == StatusCode::SERVICE_UNAVAILABLE {
                    alarm = Some(text);
                } else {
                    return Outcome::Fail(text);
                }
            }
            Err(e) => return Outcome::Fail(format!("{check}: {e}")),
        }
    }
    match alarm {
        Some(a) => Outcome::Alarm(a),
        None => Outcome::Pass,
    }
}

/// A connect failure seen by the proxy counts like a failed probe.
pub fn passive_failure(app: &Arc<App>, backend: &Arc<Backend>, reason: &str) {
    record(app, backend, &Outcome::Fail(format!("connect: {reason}")));
}

/// Applies one outcome to the rise/fall counters and acts on a verdict flip.
pub fn record(app: &Arc<App>, backend: &Arc<Backend>, outcome: &Outcome) {
    let cfg = app.config.load();
    let hc = &cfg.health;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    // Alarm handling: an alarmed node is reachable; what it means is configured.
    let alarm = match outcome {
        Outcome::Alarm(a) if hc.on_alarm != OnAlarm::Ignore => Some(a.clone()),
        _ => None,
    };
    let passed = matches!(outcome, Outcome::Pass | Outcome::Alarm(_));
    let flip = {
        let Ok(mut st) = backend.check.lock() else {
            return;
        };
        st.last_check = Some(now);
        if passed {
            st.consecutive_successes = st.consecutive_successes.saturating_add(1);
            st.consecutive_failures = 0;
        } else {
            st.consecutive_failures = st.consecutive_failures.saturating_add(1);
            st.consecutive_successes = 0;
        }
        if let Outcome::Fail(r) | Outcome::Alarm(r) = outcome {
            st.last_failure = Some(r.clone());
        }
        match backend.health() {
            Health::Up if st.consecutive_failures >= hc.fall => Some(Health::Down),
            Health::Down if st.consecutive_successes >= hc.rise => Some(Health::Up),
            _ => None,
        }
    };
    set_alarm(app, backend, alarm);
    match flip {
        Some(Health::Down) => {
            backend.set_health(Health::Down);
            let reason = match outcome {
                Outcome::Fail(r) | Outcome::Alarm(r) => r.as_str(),
                Outcome::Pass => "",
            };
            tracing::warn!(backend = backend.name(), reason, "backend down");
            crate::telemetry::metrics::backend_state(backend);
            if backend.mode() == Mode::Enabled {
                // Its clients would otherwise hang until TCP or their heartbeat gives up.
                let text: Arc<str> =
                    format!("warren: node {} is down, reconnect", backend.name()).into();
                backend.conns.broadcast(Command::Close(text));
            }
        }
        Some(Health::Up) => {
            backend.set_health(Health::Up);
            tracing::info!(backend = backend.name(), "backend up");
            crate::telemetry::metrics::backend_state(backend);
            crate::control::rebalance::trigger(app, &format!("{} came back", backend.name()));
        }
        None => {
            tracing::debug!(backend = backend.name(), ?outcome, "check");
        }
    }
}

/// Acts on an alarm appearing or clearing (only on the change).
fn set_alarm(app: &App, backend: &Arc<Backend>, alarm: Option<String>) {
    let was = backend.set_alarm(alarm.is_some());
    match (&alarm, was) {
        (Some(reason), false) => {
            let cfg = app.config.load();
            tracing::warn!(backend = backend.name(), reason = reason.as_str(), on_alarm = ?cfg.health.on_alarm, "resource alarm");
            if cfg.health.on_alarm == OnAlarm::Drain && backend.mode() == Mode::Enabled {
                crate::telemetry::metrics::drain_started(backend.name(), "alarm");
                drain::start(
                    Arc::clone(backend),
                    DrainPlan {
                        window: cfg.drain.window.get(),
                        grace: cfg.drain.grace.get(),
                        reason: format!(
                            "warren: node {} has a resource alarm, reconnect",
                            backend.name()
                        )
                        .into(),
                    },
                    &app.shutdown,
                );
            }
            crate::telemetry::metrics::backend_state(backend);
        }
        (None, true) => {
            tracing::info!(backend = backend.name(), "resource alarm cleared");
            backend.conns.cancel_drain();
            crate::telemetry::metrics::backend_state(backend);
        }
        _ => {}
    }
}
