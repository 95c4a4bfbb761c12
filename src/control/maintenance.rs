//! Maintenance mode led by warren: `warren maintenance on|off NODE` and
//! `POST /api/backends/NAME/maintenance/{on,off}`.
//!
//! `on`: refuse when the node is quorum- or mirror-sync-critical (the node's
//! own health checks say so); stop routing to it and close warren's clients of
//! it the AMQP way, paced over `drain.window` (an operator drain through
//! [`act`]); once they are gone (at most `drain.grace`), `rabbitmq-upgrade
//! drain` moves its queue leaders away and suspends its listeners for clients
//! that do not come through warren.
//! `off`: `rabbitmq-upgrade revive`, wait until the node passes its checks
//! (the AMQP port answers, its management checks pass, warren's own verdict is
//! up), then back in rotation with slow start, and optionally rebalance queue
//! leaders. One operation per backend at a time.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio::time::Instant;

use crate::balancer::{Backend, Health};
use crate::control::act::{act_as, Action};
use crate::control::app::App;
use crate::control::operator_state::Intent;
use crate::control::shared_state;
use crate::mgmt::{self, Credentials, Target};

/// The health checks that say taking the node out would lose data or
/// availability (`node-is-mirror-sync-critical` exists on 3.x only: a 404 skips it).
pub const SAFETY_CHECKS: [&str; 2] = ["node-is-quorum-critical", "node-is-mirror-sync-critical"];

/// Checks that must pass before a revived node takes clients again.
const READY_CHECKS: [&str; 2] = ["protocol-listener/amqp", "virtual-hosts"];

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("no backend named `{0}`")]
    UnknownBackend(String),
    #[error("backend `{0}` has no entry in `operations.nodes` (its Erlang node name)")]
    NoNode(String),
    /// Taking the node out now would lose a majority or an unsynchronised mirror.
    #[error("refused: {0}")]
    Refused(String),
    #[error("another maintenance operation on `{0}` is running")]
    Busy(String),
    /// A step failed; the steps before it stay done (the report says which).
    #[error("{step} failed: {reason}")]
    Failed { step: &'static str, reason: String },
}

/// One step done, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub seconds: f64,
    pub detail: String,
}

/// What an operation did: its steps, and the error that stopped it, if any.
#[derive(Debug, Serialize)]
pub struct Report {
    pub backend: String,
    pub operation: &'static str,
    pub steps: Vec<Step>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `refused`, `failed`, `busy`, `unknown` or absent (done).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
}

impl Report {
    fn new(backend: &str, operation: &'static str) -> Report {
        Report {
            backend: backend.to_string(),
            operation,
            steps: Vec::new(),
            error: None,
            outcome: None,
        }
    }

    fn fail(mut self, e: &MaintenanceError) -> Report {
        self.outcome = Some(match e {
            MaintenanceError::UnknownBackend(_) | MaintenanceError::NoNode(_) => "unknown",
            MaintenanceError::Refused(_) => "refused",
            MaintenanceError::Busy(_) => "busy",
            MaintenanceError::Failed { .. } => "failed",
        });
        self.error = Some(e.to_string());
        self
    }

    /// The HTTP status that goes with the outcome.
    pub fn status(&self) -> StatusCode {
        match self.outcome {
            None => StatusCode::OK,
            Some("unknown") => StatusCode::NOT_FOUND,
            Some("refused") | Some("busy") => StatusCode::CONFLICT,
            Some(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Runs `on` (true) or `off` for backend `name` in a task of its own (a client
/// that goes away does not stop it halfway) and returns its report.
pub async fn run(app: &Arc<App>, name: &str, on: bool, by: &str) -> Report {
    let op = if on { "on" } else { "off" };
    let (app2, name2, by2) = (Arc::clone(app), name.to_string(), by.to_string());
    let task = tokio::spawn(async move {
        let mut report = Report::new(&name2, op);
        let result = match app2.maintenance.take(&name2) {
            None => Err(MaintenanceError::Busy(name2.clone())),
            Some(_slot) => {
                let r = if on {
                    enter(&app2, &name2, &by2, &mut report.steps).await
                } else {
                    leave(&app2, &name2, &by2, &mut report.steps).await
                };
                r
            }
        };
        match result {
            Ok(()) => report,
            Err(e) => {
                tracing::warn!(backend = %name2, operation = op, error = %e, "maintenance");
                report.fail(&e)
            }
        }
    });
    match task.await {
        Ok(r) => r,
        Err(e) => Report::new(name, op).fail(&MaintenanceError::Failed {
            step: "maintenance",
            reason: e.to_string(),
        }),
    }
}

/// The management API of `b` and the credentials, if it has one.
fn management(app: &App, b: &Backend) -> Option<(Target, Credentials)> {
    let cfg = app.config.load();
    let i = cfg.backends.iter().position(|c| c.name == b.name())?;
    let target = Target::for_backend(&cfg, i)?.ok()?;
    let password = cfg.health.resolve_password().ok()?;
    Some((
        target,
        Credentials {
            username: cfg.health.username.clone(),
            password,
        },
    ))
}

fn lookup(app: &App, name: &str) -> Result<(Arc<Backend>, String), MaintenanceError> {
    let b = app
        .balancer
        .get(name)
        .ok_or_else(|| MaintenanceError::UnknownBackend(name.to_string()))?;
    let node = app
        .config
        .load()
        .operations
        .node(name)
        .map(|n| n.node.clone())
        .ok_or_else(|| MaintenanceError::NoNode(name.to_string()))?;
    Ok((b, node))
}

fn done(steps: &mut Vec<Step>, step: &'static str, started: Instant, detail: String) {
    tracing::info!(step, detail, "maintenance step");
    steps.push(Step {
        step,
        seconds: started.elapsed().as_secs_f64(),
        detail,
    });
}

async fn enter(
    app: &Arc<App>,
    name: &str,
    by: &str,
    steps: &mut Vec<Step>,
) -> Result<(), MaintenanceError> {
    let (b, node) = lookup(app, name)?;
    let t = Instant::now();
    let detail = safe_to_stop(app, &b).await?;
    done(steps, "safety checks", t, detail);

    let t = Instant::now();
    let n = b.active_connections();
    let by_on = format!("maintenance on ({by})");
    act_as(app, &b, Action::Drain, Some(&by_on));
    if let Err(e) = shared_state::publish(app, name, Intent::Maintenance, &by_on).await {
        tracing::warn!(backend = name, error = %e, "maintenance not shared");
    }
    let cfg = app.config.load_full();
    let deadline = t + cfg.drain.grace.get().max(cfg.drain.window.get()) + Duration::from_secs(1);
    while !b.conns.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done(
        steps,
        "drain warren's clients",
        t,
        format!(
            "{n} connection(s) closed, paced over {:?}; no new ones routed",
            cfg.drain.window.get()
        ),
    );

    let t = Instant::now();
    let out = rabbitmq_upgrade(app, &node, "drain").await?;
    done(steps, "rabbitmq-upgrade drain", t, out);
    app.events.push(
        crate::control::events::Kind::Maintenance,
        Some(name),
        format!("warren put node {node} into maintenance mode"),
        Some(by),
    );
    Ok(())
}

async fn leave(
    app: &Arc<App>,
    name: &str,
    by: &str,
    steps: &mut Vec<Step>,
) -> Result<(), MaintenanceError> {
    let (b, node) = lookup(app, name)?;
    let t = Instant::now();
    let out = rabbitmq_upgrade(app, &node, "revive").await?;
    done(steps, "rabbitmq-upgrade revive", t, out);

    let t = Instant::now();
    let timeout = app.config.load().operations.ready_timeout.get();
    wait_ready(app, &b, timeout).await?;
    done(
        steps,
        "health checks",
        t,
        "the node passes its checks".into(),
    );

    let t = Instant::now();
    let by_off = format!("maintenance off ({by})");
    act_as(app, &b, Action::Revive, Some(&by_off));
    if let Err(e) = shared_state::publish(app, name, Intent::Enable, &by_off).await {
        tracing::warn!(backend = name, error = %e, "end of maintenance not shared");
    }
    let slowstart = app.config.load().health.slowstart.get();
    done(
        steps,
        "back in rotation",
        t,
        format!("slow start over {slowstart:?}"),
    );

    if app.config.load().operations.rebalance_leaders {
        let t = Instant::now();
        let detail = rebalance_leaders(app, &b).await?;
        done(steps, "rebalance queue leaders", t, detail);
    }
    Ok(())
}

/// Asks the node whether stopping it is safe (`SAFETY_CHECKS`). A check its
/// version lacks (404) is skipped; anything else that is not a 200 refuses.
pub(crate) async fn safe_to_stop(app: &App, b: &Backend) -> Result<String, MaintenanceError> {
    let Some((target, creds)) = management(app, b) else {
        return Err(MaintenanceError::Refused(format!(
            "backend `{}` has no usable management API, so its replicas cannot be checked",
            b.name()
        )));
    };
    let timeout = app
        .config
        .load()
        .health
        .timeout
        .get()
        .max(Duration::from_secs(5));
    let mut passed = Vec::new();
    for check in SAFETY_CHECKS {
        let path = format!("/api/health/checks/{check}");
        match mgmt::request(&target, &creds, Method::GET, &path, None, timeout).await {
            Ok(r) if r.status == StatusCode::OK => passed.push(check),
            Ok(r) if r.status == StatusCode::NOT_FOUND => {}
            Ok(r) => {
                let reason = r
                    .json()
                    .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
                    .unwrap_or_else(|| format!("HTTP {}", r.status.as_u16()));
                return Err(MaintenanceError::Refused(format!("{check}: {reason}")));
            }
            Err(e) => {
                return Err(MaintenanceError::Refused(format!(
                    "{check}: cannot ask the node: {e}"
                )))
            }
        }
    }
    if passed.is_empty() {
        return Err(MaintenanceError::Refused(
            "the node answers none of the safety checks".into(),
        ));
    }
    Ok(format!("passed: {}", passed.join(", ")))
}

/// Waits until the node's AMQP port answers, its management checks pass and
/// warren's own verdict is up (so the check loop routes to it again).
async fn wait_ready(app: &App, b: &Backend, timeout: Duration) -> Result<(), MaintenanceError> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match ready(app, b).await {
            Ok(()) if b.health() == Health::Up && !b.maintenance() => return Ok(()),
            Ok(()) => "warren's checks do not yet pass".to_string(),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(MaintenanceError::Failed {
                step: "health checks",
                reason: format!("not ready within {timeout:?}: {last}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn ready(app: &App, b: &Backend) -> Result<(), String> {
    let step = Duration::from_secs(2);
    match tokio::time::timeout(step, tokio::net::TcpStream::connect(&b.config.address)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("amqp port: {e}")),
        Err(_) => return Err("amqp port: timed out".into()),
    }
    let Some((target, creds)) = management(app, b) else {
        return Ok(());
    };
    for check in READY_CHECKS {
        let path = format!("/api/health/checks/{check}");
        match mgmt::request(&target, &creds, Method::GET, &path, None, step).await {
            Ok(r) if r.status == StatusCode::OK => {}
            Ok(r) => return Err(format!("{check}: HTTP {}", r.status.as_u16())),
            Err(e) => return Err(format!("{check}: {e}")),
        }
    }
    Ok(())
}

async fn rebalance_leaders(app: &App, b: &Backend) -> Result<String, MaintenanceError> {
    let fail = |reason: String| MaintenanceError::Failed {
        step: "rebalance queue leaders",
        reason,
    };
    let (target, creds) =
        management(app, b).ok_or_else(|| fail("no usable management API".into()))?;
    let timeout = Duration::from_secs(10);
    match mgmt::request(
        &target,
        &creds,
        Method::POST,
        "/api/rebalance/queues",
        None,
        timeout,
    )
    .await
    {
        Ok(r) if r.status.is_success() => {
            Ok("requested (RabbitMQ moves them in the background)".into())
        }
        Ok(r) => Err(fail(format!("HTTP {}", r.status.as_u16()))),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Runs `rabbitmq-upgrade -n NODE verb` within `operations.command_timeout`.
async fn rabbitmq_upgrade(app: &App, node: &str, verb: &str) -> Result<String, MaintenanceError> {
    let step = if verb == "drain" {
        "rabbitmq-upgrade drain"
    } else {
        "rabbitmq-upgrade revive"
    };
    let ops = app.config.load().operations.clone();
    let mut words = ops.rabbitmq_upgrade.split_whitespace();
    let program = words.next().unwrap_or("rabbitmq-upgrade");
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(words).args(["-n", node, verb]);
    run_command(cmd, ops.command_timeout.get())
        .await
        .map_err(|reason| MaintenanceError::Failed { step, reason })
}

/// Runs `cmd` (stdin closed, killed when it outlives `timeout`); Ok with the
/// last line of its output on success, Err with its status and output otherwise.
pub async fn run_command(
    mut cmd: tokio::process::Command,
    timeout: Duration,
) -> Result<String, String> {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let shown = format!("{:?}", cmd.as_std());
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => return Err(format!("{shown}: no answer within {timeout:?}")),
        Ok(Err(e)) => return Err(format!("{shown}: {e}")),
        Ok(Ok(o)) => o,
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .chars()
        .take(300)
        .collect::<String>();
    if out.status.success() {
        Ok(last)
    } else {
        Err(format!("{shown}: {}: {last}", out.status))
    }
}
