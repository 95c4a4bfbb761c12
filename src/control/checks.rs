//! One health-check task per backend (a hung node never delays the others'
//! checks): probe, let `health` say whether the verdict or the alarm flipped,
//! act on the flip. Connect failures the data path reports on the backend count
//! as failed probes as soon as they come (passive detection).

use std::sync::Arc;

use crate::balancer::{Backend, Health};
use crate::control::act::{act, Action};
use crate::control::app::App;
use crate::health::{self, Outcome};
use crate::mgmt::Credentials;
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
        let probe = health::probe(backend, &cfg, creds.as_ref());
        tokio::pin!(probe);
        let outcome = loop {
            tokio::select! {
                outcome = &mut probe => break outcome,
                _ = backend.connect_failure_reported() => connect_failures(app, backend),
            }
        };
        let failure = match &outcome {
            Outcome::Fail(reason) => Some(reason.as_str()),
            _ => None,
        };
        metrics::health_check(backend.name(), started.elapsed(), failure);
        apply(app, backend, &outcome);
        // A reload may have changed the intervals: start over with the new ones.
        let next = tokio::time::Instant::now() + health::next_interval(backend, &cfg);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break,
                _ = app.reloader.changed.notified() => break,
                _ = backend.connect_failure_reported() => connect_failures(app, backend),
            }
        }
    }
}

/// Counts each connect failure the data path reported as a failed probe.
fn connect_failures(app: &Arc<App>, backend: &Arc<Backend>) {
    let (n, reason) = backend.take_connect_failures();
    let outcome = Outcome::Fail(format!("connect: {reason}"));
    for _ in 0..n {
        apply(app, backend, &outcome);
    }
}

/// Applies one outcome to the verdict and acts on what flipped.
fn apply(app: &Arc<App>, backend: &Arc<Backend>, outcome: &Outcome) {
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
}
