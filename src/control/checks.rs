//! One health-check task per backend (a hung node never delays the others'
//! checks): probe, let `health` say whether the verdict or the alarm flipped,
//! act on the flip. Connect failures the data path reports on the backend count
//! as failed probes as soon as they come (passive detection).

use std::sync::Arc;

use crate::balancer::{Backend, Health};
use crate::control::act::{act, Action};
use crate::control::app::App;
use crate::health::{self, NodeCache, Outcome};
use crate::mgmt::{Credentials, Endpoint};
use crate::telemetry::metrics;

/// Runs the checks of `backend` until it is removed or warren shuts down.
pub(crate) fn spawn(app: Arc<App>, backend: Arc<Backend>) {
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
    let mut node = NodeCache::default();
    loop {
        let cfg = app.config.load().health.clone();
        // Read before each probe, so a rotated file is taken up. A password
        // that cannot be read fails the probe: the checks are never quietly
        // reduced to the TCP connect.
        let password = cfg.resolve_password();
        let creds = password.as_ref().ok().map(|password| Credentials {
            username: cfg.username.clone(),
            password: password.clone(),
        });
        let plan = health::plan(&cfg.checks, node.version());
        let no_password = match &password {
            Err(e) if backend.config.management.is_some() && !plan.checks.is_empty() => {
                Some(format!("management checks: no password: {e}"))
            }
            _ => None,
        };
        let peers = peers(app, backend);
        let node_name = node.info().and_then(|i| i.node.clone());
        let ctx = health::Context {
            plan: &plan,
            node: node_name.as_deref(),
            peers: &peers,
        };
        let read_due = node.due(tokio::time::Instant::now());
        let started = tokio::time::Instant::now();
        // The version is read beside the probe, never inside it: the read may
        // wait on a frozen member of the cluster, the probe must not.
        let mgmt = management(backend).zip(creds.as_ref());
        let read = async {
            match mgmt {
                Some((ep, creds)) if read_due => {
                    Some(health::read_node(&ep, creds, cfg.timeout.get()).await)
                }
                _ => None,
            }
        };
        tokio::pin!(read);
        let mut reading = read_due;
        let probe = async {
            let report = match no_password {
                Some(reason) => health::Report {
                    outcome: Outcome::Fail(reason),
                    skipped: Vec::new(),
                },
                None => health::probe(backend, &cfg, creds.as_ref(), ctx).await,
            };
            (report, started.elapsed())
        };
        let (report, took) = {
            tokio::pin!(probe);
            loop {
                tokio::select! {
                    done = &mut probe => break done,
                    r = &mut read, if reading => {
                        reading = false;
                        if let Some(r) = r {
                            learn(backend, &mut node, r);
                        }
                    }
                    _ = backend.connect_failure_reported() => connect_failures(app, backend),
                }
            }
        };
        let outcome = report.outcome;
        let failure = match &outcome {
            Outcome::Fail(reason) => Some(reason.as_str()),
            _ => None,
        };
        metrics::health_check(backend.name(), took, failure);
        if let Ok(mut st) = backend.check.lock() {
            for name in report
                .skipped
                .iter()
                .filter(|n| !st.skipped_checks.contains(n))
            {
                tracing::warn!(
                    backend = backend.name(),
                    check = %name,
                    version = ?node.info().map(|i| &i.version),
                    "health check unknown to this node (HTTP 404), skipped"
                );
            }
            st.skipped_checks = report.skipped;
            st.checks = plan.checks.clone();
            st.rabbitmq_version = node.info().map(|i| i.version.clone());
            st.node = node.info().and_then(|i| i.node.clone());
            st.last_check_seconds = Some(took.as_secs_f64());
        }
        if failure.is_some() {
            node.mark_stale();
        }
        // Back up, or out of maintenance (perhaps upgraded meanwhile): read
        // the version again.
        if apply(app, backend, &outcome) {
            node.mark_stale();
        }
        // A reload may have changed the intervals: start over with the new ones.
        let next = tokio::time::Instant::now() + health::next_interval(backend, &cfg);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break,
                _ = app.reloader.changed.notified() => break,
                _ = backend.connect_failure_reported() => connect_failures(app, backend),
                // A version read still under way goes on beside the wait; the
                // verdict above never waited for it.
                r = &mut read, if reading => {
                    reading = false;
                    if let Some(r) = r {
                        learn(backend, &mut node, r);
                    }
                }
            }
        }
    }
}

fn management(backend: &Backend) -> Option<Endpoint> {
    Endpoint::parse(backend.config.management.as_deref()?).ok()
}

/// The management APIs of the other backends.
fn peers(app: &App, backend: &Arc<Backend>) -> Vec<Endpoint> {
    app.balancer
        .backends()
        .iter()
        .filter(|b| !Arc::ptr_eq(b, backend))
        .filter_map(|b| management(b))
        .collect()
}

/// Keeps what a version read found; logs a version learned or changed.
fn learn(backend: &Backend, node: &mut NodeCache, read: Result<health::NodeInfo, String>) {
    let now = tokio::time::Instant::now();
    match read {
        Ok(info) => {
            let version = info.version.clone();
            if node.record(Ok(info), now) {
                let plan = health::plan(&crate::config::Checks::Auto, node.version());
                tracing::info!(
                    backend = backend.name(),
                    version,
                    auto_checks = ?plan.checks,
                    maintenance_mode = plan.maintenance,
                    "RabbitMQ version"
                );
            }
        }
        Err(e) => {
            tracing::debug!(backend = backend.name(), error = %e, retry = ?NodeCache::RETRY, "version not read");
            node.record(Err(e), now);
        }
    }
}

/// Counts each connect failure the data path reported as a failed probe. A
/// node in maintenance refuses connections on purpose: not counted then.
fn connect_failures(app: &Arc<App>, backend: &Arc<Backend>) {
    let (n, reason) = backend.take_connect_failures();
    if backend.maintenance() {
        return;
    }
    let outcome = Outcome::Fail(format!("connect: {reason}"));
    for _ in 0..n {
        apply(app, backend, &outcome);
    }
}

/// Applies one outcome to the verdict and acts on what changed; true when the
/// node came back (up again, or out of maintenance).
fn apply(app: &Arc<App>, backend: &Arc<Backend>, outcome: &Outcome) -> bool {
    let cfg = app.config.load();
    let verdict = health::observe(backend, &cfg.health, outcome);
    match verdict.alarm {
        Some(Some(reason)) => act(app, backend, Action::Alarm(reason)),
        Some(None) => act(app, backend, Action::AlarmCleared),
        None => {}
    }
    match verdict.flip {
        Some(Health::Down) => {
            let reason = outcome.reason().unwrap_or_default().to_string();
            act(app, backend, Action::Down(reason));
        }
        Some(Health::Up) => act(app, backend, Action::Up),
        None => tracing::debug!(backend = backend.name(), ?outcome, "check"),
    }
    let back = verdict.flip == Some(Health::Up) || verdict.maintenance == Some(None);
    match verdict.maintenance {
        Some(Some(reason)) => act(app, backend, Action::Maintenance(reason)),
        Some(None) => act(app, backend, Action::MaintenanceOver),
        None => {}
    }
    back
}
