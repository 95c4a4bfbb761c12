//! One health-check task per backend (a hung node never delays the others'
//! checks): probe, let `health` say whether the verdict or the alarm flipped,
//! act on the flip. Connect failures the data path reports on the backend count
//! as failed probes as soon as they come (passive detection).

use std::sync::Arc;

use crate::balancer::{Backend, Health};
use crate::config::{Config, ListenerProtocol};
use crate::control::act::{act, Action};
use crate::control::app::App;
use crate::health::{self, NodeCache, Outcome};
use crate::mgmt::{Credentials, Target};
use crate::telemetry::{logging, metrics};

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
    let mut protocols = Protocols::default();
    let mut targets: Option<Targets> = None;
    loop {
        let config = app.config.load_full();
        let targets = match targets.take() {
            Some(t) if Arc::ptr_eq(&t.config, &config) => targets.insert(t),
            _ => targets.insert(Targets::build(config, backend)),
        };
        let cfg = targets.config.health.clone();
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
        let node_name = node.info().and_then(|i| i.node.clone());
        let ctx = health::Context {
            plan: &plan,
            node: node_name.as_deref(),
            management: targets
                .own
                .as_ref()
                .map(|t| t.as_ref().map_err(String::as_str)),
            peers: &targets.peers,
        };
        let read_due = node.due(tokio::time::Instant::now());
        let started = tokio::time::Instant::now();
        // The version is read beside the probe, never inside it: the read may
        // wait on a frozen member of the cluster, the probe must not.
        let own = targets.own.as_ref().and_then(|t| t.as_ref().ok());
        let mgmt = own.zip(creds.as_ref());
        let read = async {
            match mgmt {
                Some((target, creds)) if read_due => {
                    Some(health::read_node(target, creds, cfg.timeout.get()).await)
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
                    version = node.info().map(|i| i.version.as_str()),
                    "health check unknown to this node (HTTP 404), skipped"
                );
            }
            st.skipped_checks = report.skipped;
            st.checks = plan.checks.clone();
            st.rabbitmq_version = node.info().map(|i| i.version.clone());
            st.node = node.info().and_then(|i| i.node.clone());
            st.rabbitmq_cluster = node.info().and_then(|i| i.cluster.clone());
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
        if matches!(outcome, Outcome::Pass | Outcome::Alarm(_)) {
            protocols
                .probe(app, backend, &targets.config, mgmt, cfg.timeout.get())
                .await;
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

/// The listeners of protocols a node serves on ports of their own (stream,
/// MQTT, STOMP): consecutive passes and failures of each, as for the node
/// itself (`health.rise`, `health.fall`); the backend is out for a protocol
/// (`Backend::out_for`) from `fall` failures to `rise` passes.
#[derive(Default)]
struct Protocols {
    counts: std::collections::HashMap<ListenerProtocol, (u32, u32)>,
}

impl Protocols {
    async fn probe(
        &mut self,
        app: &Arc<App>,
        backend: &Arc<Backend>,
        config: &Config,
        mgmt: Option<(&Target, &Credentials)>,
        timeout: std::time::Duration,
    ) {
        let mut seen = Vec::new();
        for l in &config.listeners {
            let Some(check) = l.protocol.listener_check() else {
                continue;
            };
            if seen.contains(&l.protocol) {
                continue;
            }
            seen.push(l.protocol);
            let Some(address) = l.backend_address(&backend.config) else {
                continue;
            };
            let result = health::probe_protocol(&address, check, mgmt, timeout).await;
            let (passes, fails) = self.counts.entry(l.protocol).or_default();
            match &result {
                Ok(()) => {
                    *passes += 1;
                    *fails = 0;
                }
                Err(_) => {
                    *fails += 1;
                    *passes = 0;
                }
            }
            let out = backend.out_for(l.protocol.bit());
            let flip = match &result {
                Ok(()) if out && *passes >= config.health.rise.get() => Some(false),
                Err(_) if !out && *fails >= config.health.fall.get() => Some(true),
                _ => None,
            };
            metrics::backend_protocol_up(backend.name(), check, !out);
            let Some(now_out) = flip else {
                continue;
            };
            backend.set_out_for(l.protocol.bit(), now_out);
            metrics::backend_protocol_up(backend.name(), check, !now_out);
            let message = match &result {
                Err(reason) => {
                    tracing::warn!(backend = backend.name(), protocol = check, reason = %reason, "backend out for the protocol's listeners");
                    format!("out for {check} listeners: {reason}")
                }
                Ok(()) => {
                    tracing::info!(
                        backend = backend.name(),
                        protocol = check,
                        "backend back for the protocol's listeners"
                    );
                    format!("back for {check} listeners")
                }
            };
            app.events.push(
                crate::control::events::Kind::Health,
                Some(backend.name()),
                message,
                None,
            );
        }
        // A protocol no longer listened for: the backend is not out for it.
        for p in ListenerProtocol::ALL {
            if !seen.contains(&p) && backend.set_out_for(p.bit(), false) {
                self.counts.remove(&p);
            }
        }
    }
}

/// The management APIs one backend's probes use, built from one config: the
/// TLS files of `https://` URLs are read when warren starts and on each reload
/// (the config is then another), not on every probe.
struct Targets {
    config: Arc<Config>,
    /// The backend's own; `Err` holds why its TLS settings are not usable.
    own: Option<Result<Target, String>>,
    /// The other backends'.
    peers: Vec<Target>,
}

impl Targets {
    fn build(config: Arc<Config>, backend: &Backend) -> Targets {
        let mut own = None;
        let mut peers = Vec::new();
        for (i, b) in config.backends.iter().enumerate() {
            let Some(target) = Target::for_backend(&config, i) else {
                continue;
            };
            match target {
                Ok(t) if b.name == backend.name() => own = Some(Ok(t)),
                Ok(t) => peers.push(t),
                Err(e) if b.name == backend.name() => {
                    tracing::error!(backend = backend.name(), error = %e, "management API not usable; its checks fail");
                    own = Some(Err(e.to_string()));
                }
                Err(e) => {
                    tracing::debug!(backend = backend.name(), peer = %b.name, error = %e, "peer's management API not usable");
                }
            }
        }
        Targets { config, own, peers }
    }
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
                    auto_checks = logging::list(&plan.checks),
                    maintenance_mode = plan.maintenance,
                    "RabbitMQ version"
                );
            }
        }
        Err(e) => {
            tracing::debug!(backend = backend.name(), error = %e, retry = logging::duration(NodeCache::RETRY), "version not read");
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
        None => tracing::debug!(backend = backend.name(), reason = outcome.reason(), "check"),
    }
    let back = verdict.flip == Some(Health::Up) || verdict.maintenance == Some(None);
    match verdict.maintenance {
        Some(Some(reason)) => act(app, backend, Action::Maintenance(reason)),
        Some(None) => act(app, backend, Action::MaintenanceOver),
        None => {}
    }
    back
}
