//! Operator commands that drive a running warren through its admin API:
//! `warren maintenance on|off` ([`maintenance`]) and `warren rolling-restart`
//! ([`rolling`]). They run where the operator runs them; the work on the
//! backend (drain, `rabbitmq-upgrade`) is done by the warren, in
//! `control::maintenance`, so that a client that goes away never stops it halfway.

pub mod client;
pub mod rolling;

use std::time::Duration;

use crate::config::Config;
use client::{AdminClient, ClientError};

/// Exit codes of `warren maintenance` and `warren rolling-restart`.
pub mod exit {
    /// The node's health checks refuse (it is quorum- or mirror-sync-critical),
    /// or an operation on it is already running.
    pub const REFUSED: u8 = 65;
    /// warren's admin API does not answer, or names no such backend.
    pub const UNAVAILABLE: u8 = 69;
    /// A step failed (the output says which and what state it left).
    pub const FAILED: u8 = 70;
}

/// One step as the warren reported it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Step {
    pub step: String,
    pub seconds: f64,
    pub detail: String,
}

/// The answer to `POST /api/backends/NAME/maintenance/{on,off}`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Report {
    pub steps: Vec<Step>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub outcome: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Unavailable(String),
}

impl OperateError {
    pub fn exit_code(&self) -> u8 {
        match self {
            OperateError::Refused(_) => exit::REFUSED,
            OperateError::Client(_) | OperateError::Unavailable(_) => exit::UNAVAILABLE,
            OperateError::Failed(_) => exit::FAILED,
        }
    }
}

/// `maintenance on` (true) or `off` for `backend` on the warren of `config`;
/// each step done is handed to `on_step`, also when a later one fails.
pub async fn maintenance(
    config: &Config,
    backend: &str,
    on: bool,
    on_step: &mut dyn FnMut(&Step),
) -> Result<(), OperateError> {
    let client = AdminClient::from_config(config)?;
    let op = if on { "on" } else { "off" };
    let path = format!("/api/backends/{backend}/maintenance/{op}");
    // The warren answers when the operation is over: drain grace, commands
    // and the wait for the checks, each bounded by the config.
    let ops = &config.operations;
    let limit = config.drain.grace.get().max(config.drain.window.get())
        + ops.command_timeout.get() * 2
        + ops.ready_timeout.get()
        + Duration::from_secs(60);
    let (status, body) = client.post(&path, limit).await?;
    let report: Report = serde_json::from_str(&body).map_err(|_| {
        OperateError::Unavailable(format!(
            "POST {path}: HTTP {status}: {}",
            body.trim().chars().take(300).collect::<String>()
        ))
    })?;
    for s in &report.steps {
        on_step(s);
    }
    let error = report.error.clone().unwrap_or_default();
    match report.outcome.as_deref() {
        None => Ok(()),
        Some("refused") | Some("busy") => Err(OperateError::Refused(error)),
        Some("unknown") => Err(OperateError::Unavailable(error)),
        Some(_) => Err(OperateError::Failed(error)),
    }
}
