//! `warren rolling-restart`: for each node of `operations.nodes`, in order,
//! maintenance on (retried while the node is still critical: the replicas of
//! the previous one are catching up), its `restart` command, maintenance off
//! (which waits for its checks), then the next node. It stops at the first
//! failure and says what state the node was left in.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Config;
use crate::control::maintenance::run_command;
use crate::operate::{maintenance, OperateError, Step};

/// Time between two tries of `maintenance on` while the node is critical.
const RETRY: Duration = Duration::from_secs(2);

/// What happened, for the caller to print.
pub enum Event<'a> {
    /// A node is next: (index from 1, count, backend, node).
    Node(usize, usize, &'a str, &'a str),
    /// A step of the warren's maintenance operation.
    Step(&'a Step),
    /// A step run here: (name, seconds, detail).
    Local(&'a str, f64, &'a str),
    /// Waiting: why.
    Waiting(&'a str),
}

/// Checks that every node has a restart command; the list of (backend, node,
/// command) in order.
pub fn plan(config: &Config) -> Result<Vec<(String, String, String)>, String> {
    let nodes = &config.operations.nodes;
    if nodes.is_empty() {
        return Err("`operations.nodes` is empty: nothing to restart".into());
    }
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| match &n.restart {
            Some(r) => Ok((n.backend.clone(), n.node.clone(), r.clone())),
            None => Err(format!(
                "`operations.nodes[{i}].restart` is not set (backend `{}`)",
                n.backend
            )),
        })
        .collect()
}

/// Runs the rolling restart; `Err((backend, state, error))` at the first failure.
pub async fn run(
    config: &Config,
    report: &mut dyn FnMut(Event<'_>),
) -> Result<(), (String, &'static str, OperateError)> {
    let plan = plan(config).map_err(|e| (String::new(), "unchanged", OperateError::Failed(e)))?;
    let count = plan.len();
    for (i, (backend, node, restart)) in plan.iter().enumerate() {
        report(Event::Node(i + 1, count, backend, node));
        // On: retried while refused, within ready_timeout.
        let deadline = Instant::now() + config.operations.ready_timeout.get();
        loop {
            let mut step = |s: &Step| report(Event::Step(s));
            match maintenance(config, backend, true, &mut step).await {
                Ok(()) => break,
                Err(OperateError::Refused(why)) if Instant::now() < deadline => {
                    report(Event::Waiting(&why));
                    tokio::time::sleep(RETRY).await;
                }
                Err(e) => {
                    let state = match e {
                        OperateError::Refused(_) => "in rotation, untouched",
                        _ => "out of warren's rotation (drained); check RabbitMQ's maintenance status",
                    };
                    return Err((backend.clone(), state, e));
                }
            }
        }
        let t = Instant::now();
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", restart]);
        match run_command(cmd, config.operations.command_timeout.get()).await {
            Ok(out) => report(Event::Local("restart", t.elapsed().as_secs_f64(), &out)),
            Err(e) => {
                return Err((
                    backend.clone(),
                    "in maintenance (warren and RabbitMQ); the restart command failed",
                    OperateError::Failed(e),
                ))
            }
        }
        let mut step = |s: &Step| report(Event::Step(s));
        if let Err(e) = maintenance(config, backend, false, &mut step).await {
            return Err((
                backend.clone(),
                "restarted, still out of warren's rotation",
                e,
            ));
        }
    }
    Ok(())
}
