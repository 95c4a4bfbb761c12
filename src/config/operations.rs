//! The `operations:` section: what `warren maintenance`, `warren rolling-restart`
//! and the shared operator state need to know about the nodes.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::config::values::{HumanDuration, PositiveDuration};

/// Maintenance mode, rolling restarts and the shared operator state.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperationsConfig {
    /// The `rabbitmq-upgrade` command (split on whitespace; a wrapper such as
    /// `ssh host sudo rabbitmq-upgrade` works), run with `-n NODE drain|revive`.
    pub rabbitmq_upgrade: String,
    /// Time a command (`rabbitmq-upgrade`, a node's `restart`) may take.
    pub command_timeout: PositiveDuration,
    /// `maintenance off` and `rolling-restart`: how long a node may take to pass
    /// its health checks again, and the replicas to catch up.
    pub ready_timeout: PositiveDuration,
    /// `maintenance off`: spread queue leaders over the nodes afterwards
    /// (`POST /api/rebalance/queues`).
    pub rebalance_leaders: bool,
    /// The nodes, in the order `rolling-restart` takes them.
    pub nodes: Vec<OperationsNode>,
    /// Operator intents kept in the cluster (off when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_state: Option<SharedStateConfig>,
}

impl Default for OperationsConfig {
    fn default() -> Self {
        OperationsConfig {
            rabbitmq_upgrade: "rabbitmq-upgrade".to_string(),
            command_timeout: PositiveDuration::secs(300),
            ready_timeout: PositiveDuration::secs(300),
            rebalance_leaders: false,
            nodes: Vec::new(),
            shared_state: None,
        }
    }
}

/// One backend as an Erlang node, and how to restart it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OperationsNode {
    /// The `backends` entry this node is.
    pub backend: String,
    /// Its Erlang node name, `name@host`.
    pub node: String,
    /// Shell command (`sh -c`) that restarts the node, for `rolling-restart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
}

/// `operations.shared_state`: operator intents stored as a global runtime
/// parameter of the cluster, read by every warren in front of it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedStateConfig {
    /// The global parameter's name.
    pub parameter: String,
    /// How often it is read.
    pub interval: PositiveDuration,
    /// At start-up, how long to try to read it before accepting clients
    /// (then warren starts with what it has and keeps trying).
    pub startup_wait: HumanDuration,
}

impl Default for SharedStateConfig {
    fn default() -> Self {
        SharedStateConfig {
            parameter: "warren-operator-state".to_string(),
            interval: PositiveDuration::secs(2),
            startup_wait: HumanDuration::secs(5),
        }
    }
}

impl OperationsConfig {
    /// The node of backend `name`, if the section names it.
    pub fn node(&self, backend: &str) -> Option<&OperationsNode> {
        self.nodes.iter().find(|n| n.backend == backend)
    }

    /// Checks what the types cannot say; an error is the key and what was expected.
    pub(crate) fn validate(&self, backends: &[&str]) -> Result<(), (String, String)> {
        if self.rabbitmq_upgrade.split_whitespace().next().is_none() {
            return Err((
                "operations.rabbitmq_upgrade".into(),
                "expected a command, got an empty string".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !backends.contains(&n.backend.as_str()) {
                return Err((
                    format!("operations.nodes[{i}].backend"),
                    format!(
                        "expected the name of a `backends` entry, got `{}`",
                        n.backend
                    ),
                ));
            }
            if !seen.insert(n.backend.as_str()) {
                return Err((
                    format!("operations.nodes[{i}].backend"),
                    format!("`{}` is listed twice", n.backend),
                ));
            }
            let valid = n
                .node
                .split_once('@')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty());
            if !valid {
                return Err((
                    format!("operations.nodes[{i}].node"),
                    format!("expected an Erlang node name `name@host`, got `{}`", n.node),
                ));
            }
            if n.restart.as_deref().is_some_and(|r| r.trim().is_empty()) {
                return Err((
                    format!("operations.nodes[{i}].restart"),
                    "expected a command, got an empty string".into(),
                ));
            }
        }
        if let Some(s) = &self.shared_state {
            let ok = !s.parameter.is_empty()
                && s.parameter
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
            if !ok {
                return Err((
                    "operations.shared_state.parameter".into(),
                    format!(
                        "expected a parameter name of letters, digits, `-`, `_` or `.`, got `{}`",
                        s.parameter
                    ),
                ));
            }
        }
        Ok(())
    }
}
