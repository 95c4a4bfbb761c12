//! The `cluster:` section: the RabbitMQ cluster `warren bootstrap` builds.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The policy `cluster.replication` manages (quorum policy keys on 4.x,
/// mirroring on 3.x).
pub const REPLICATION_POLICY: &str = "warren-replication";

/// The RabbitMQ cluster `warren bootstrap` builds.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Local Erlang cookie, used to check the nodes share it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erlang_cookie_file: Option<PathBuf>,
    /// The `rabbitmqctl` command (distributions wrap it differently).
    pub rabbitmqctl: String,
    /// The first disc node is the seed the others join (at least one: validated).
    pub nodes: Vec<ClusterNode>,
    pub policies: Vec<PolicyConfig>,
    /// Replicated queues, as an intent: bootstrap applies each version's way
    /// (a mirroring policy before 4.0, quorum queues as the vhost's default from 4.0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationConfig>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            erlang_cookie_file: None,
            rabbitmqctl: "rabbitmqctl".to_string(),
            nodes: Vec::new(),
            policies: Vec::new(),
            replication: None,
        }
    }
}

/// `cluster.replication`: every queue of these vhosts replicated to all nodes.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    pub vhosts: Vec<String>,
    /// RabbitMQ 4.x only: policy keys for the quorum queues (`delivery-limit`,
    /// `queue-leader-locator`, ...), applied as the policy `warren-replication`.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub quorum_policy: serde_json::Map<String, serde_json::Value>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            vhosts: vec![default_vhost()],
            quorum_policy: serde_json::Map::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    /// The `backends` entry this node is.
    pub backend: String,
    /// Its Erlang node name, `name@host`.
    pub node: String,
    #[serde(rename = "type", default)]
    pub node_type: NodeType,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    #[default]
    Disc,
    Ram,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    #[serde(default = "default_vhost")]
    pub vhost: String,
    pub pattern: String,
    #[serde(default)]
    pub apply_to: ApplyTo,
    #[serde(default)]
    pub priority: i64,
    pub definition: serde_json::Map<String, serde_json::Value>,
}

/// A policy's vhost when none is given (a field default: a policy's other keys
/// are required, so the struct has no `Default`).
fn default_vhost() -> String {
    "/".to_string()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyTo {
    #[default]
    Queues,
    Exchanges,
    All,
}

impl ClusterConfig {
    /// Checks what the types cannot say; an error is the key and what was expected.
    pub(crate) fn validate(&self, backends: &[&str]) -> Result<(), (String, String)> {
        let c = self;
        let invalid = |key: String, message: String| (key, message);
        if c.nodes.is_empty() {
            return Err(invalid(
                "cluster.nodes".into(),
                "expected at least one node".into(),
            ));
        }
        if !c.nodes.iter().any(|n| n.node_type == NodeType::Disc) {
            return Err(invalid(
                "cluster.nodes".into(),
                "expected at least one node of type `disc` (a cluster must keep one)".into(),
            ));
        }
        if c.rabbitmqctl.split_whitespace().next().is_none() {
            return Err(invalid(
                "cluster.rabbitmqctl".into(),
                "expected a command such as `rabbitmqctl` or `sudo -u rabbitmq rabbitmqctl`".into(),
            ));
        }
        let mut seen_nodes = HashSet::new();
        let mut seen_backends = HashSet::new();
        for (i, n) in c.nodes.iter().enumerate() {
            if !backends.contains(&n.backend.as_str()) {
                return Err(invalid(
                    format!("cluster.nodes[{i}].backend"),
                    format!(
                        "expected the name of a `backends` entry, got `{}`",
                        n.backend
                    ),
                ));
            }
            if !seen_backends.insert(n.backend.as_str()) {
                return Err(invalid(
                    format!("cluster.nodes[{i}].backend"),
                    format!("backend `{}` is listed twice", n.backend),
                ));
            }
            if !valid_node_name(&n.node) {
                return Err(invalid(
                    format!("cluster.nodes[{i}].node"),
                    format!(
                        "expected an Erlang node name such as `rabbit@node1`, got `{}`",
                        n.node
                    ),
                ));
            }
            if !seen_nodes.insert(n.node.as_str()) {
                return Err(invalid(
                    format!("cluster.nodes[{i}].node"),
                    format!("node `{}` is listed twice", n.node),
                ));
            }
        }
        for (i, p) in c.policies.iter().enumerate() {
            if p.name.is_empty() {
                return Err(invalid(
                    format!("cluster.policies[{i}].name"),
                    "expected a non-empty policy name".into(),
                ));
            }
            if p.definition.is_empty() {
                return Err(invalid(
                    format!("cluster.policies[{i}].definition"),
                    "expected at least one key".into(),
                ));
            }
        }
        if let Some(r) = &c.replication {
            if r.vhosts.is_empty() {
                return Err(invalid(
                    "cluster.replication.vhosts".into(),
                    "expected at least one vhost (the default is [/])".into(),
                ));
            }
            let mut seen = HashSet::new();
            for (i, v) in r.vhosts.iter().enumerate() {
                if v.is_empty() || !seen.insert(v.as_str()) {
                    return Err(invalid(
                        format!("cluster.replication.vhosts[{i}]"),
                        format!("expected a vhost name listed once, got `{v}`"),
                    ));
                }
            }
            if let Some(k) = r.quorum_policy.keys().find(|k| k.starts_with("ha-")) {
                return Err(invalid(
                    format!("cluster.replication.quorum_policy.{k}"),
                    "expected quorum queue policy keys (delivery-limit, queue-leader-locator, \
                     ...): ha-* keys are classic mirroring, which cluster.replication already \
                     applies on RabbitMQ 3.x by itself"
                        .into(),
                ));
            }
            for (i, p) in c.policies.iter().enumerate() {
                if p.name == REPLICATION_POLICY && r.vhosts.contains(&p.vhost) {
                    return Err(invalid(
                        format!("cluster.policies[{i}].name"),
                        format!(
                            "`{REPLICATION_POLICY}` is the policy cluster.replication manages \
                             in vhost `{}`: choose another name",
                            p.vhost
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `name@host`: both parts non-empty, no spaces, one `@`.
fn valid_node_name(s: &str) -> bool {
    let mut parts = s.split('@');
    let (Some(name), Some(host), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ok(name) && ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(valid_node_name("rabbit@node1"));
        assert!(!valid_node_name("rabbit"));
        assert!(!valid_node_name("a@b@c"));
        assert!(!valid_node_name("@b"));
    }
}
