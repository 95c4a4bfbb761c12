//! What the RabbitMQ version of the nodes means for the config.
//!
//! Classic queue mirroring (the `ha-*` policy keys) is deprecated in 3.13 and
//! removed in 4.0; RAM nodes (`ram_node_type`) are a deprecated feature too. The
//! version comes from `GET /api/overview` (`rabbitmq_version`).

use crate::config::PolicyConfig;
pub use crate::mgmt::Version;

pub const MIRRORING_DEPRECATED: Version = Version::new(3, 13, 0);
/// First release without classic mirroring (refuse `ha-*`).
pub const MIRRORING_REMOVED: Version = Version::new(4, 0, 0);

/// What to do with one policy on the cluster's (newest) version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Apply,
    /// Apply, and print this warning.
    Warn(String),
    /// Do not apply; this explains why and what to do instead.
    Refuse(String),
}

/// The `ha-*` keys of a policy definition, sorted.
pub fn ha_keys(p: &PolicyConfig) -> Vec<&str> {
    p.definition
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("ha-"))
        .collect()
}

/// Decides for `cluster.policies[index]`. `newest` is the newest version among
/// the nodes (the most restrictive one); `None` when no node told its version.
pub fn policy_verdict(p: &PolicyConfig, index: usize, newest: Option<Version>) -> Verdict {
    let keys = ha_keys(p);
    let Some(first) = keys.first() else {
        return Verdict::Apply;
    };
    let key = format!("cluster.policies[{index}].definition.{first}");
    let keys = keys.join(", ");
    match newest {
        Some(v) if v >= MIRRORING_REMOVED => Verdict::Refuse(format!(
            "key `{key}`: uses classic queue mirroring ({keys}), which was removed in 4.0 (this \
             cluster runs {v}): such a policy is rejected or has no effect, queues would not be \
             replicated. The 4.x equivalent is quorum queues: put the vhost in \
             `cluster.replication.vhosts` (bootstrap then makes quorum the vhost's default \
             queue type: {}), or declare queues with the argument `x-queue-type: quorum`; then \
             remove the ha-* keys from cluster.policies",
            quorum_advice(&p.vhost)
        )),
        Some(v) if v >= MIRRORING_DEPRECATED => Verdict::Warn(format!(
            "key `{key}`: uses classic queue mirroring ({keys}), deprecated since RabbitMQ 3.13 \
             and removed in 4.0 (this cluster runs {v}): plan the move to quorum queues \
             (`cluster.replication` does it per version: {})",
            quorum_advice(&p.vhost)
        )),
        Some(_) => Verdict::Apply,
        None => Verdict::Warn(format!(
            "key `{key}`: uses classic queue mirroring ({keys}) but the RabbitMQ version is \
             unknown; mirroring exists only before 4.0, the policy is read back to see whether \
             it took"
        )),
    }
}

/// How `cluster.replication` replicates queues on a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// Before 4.0: the policy `warren-replication` with [`mirroring_definition`].
    Mirroring,
    /// From 4.0: quorum as the vhost's default queue type, and the policy
    /// `warren-replication` with `cluster.replication.quorum_policy` if it has keys.
    Quorum,
}

/// The way `cluster.replication` takes on the cluster's newest version, with a
/// warning to print; `Err` (a refusal) when the version is unknown.
pub fn replication_way(newest: Option<Version>) -> Result<(Replication, Option<String>), String> {
    match newest {
        Some(v) if v >= MIRRORING_REMOVED => Ok((Replication::Quorum, None)),
        Some(v) if v >= MIRRORING_DEPRECATED => Ok((
            Replication::Mirroring,
            Some(format!(
                "RabbitMQ {v}: replicated with classic queue mirroring (policy `{}`), deprecated \
                 since 3.13 and removed in 4.0; after the upgrade to 4.x, bootstrap makes quorum \
                 the vhosts' default queue type instead",
                crate::config::REPLICATION_POLICY
            )),
        )),
        Some(_) => Ok((Replication::Mirroring, None)),
        None => Err(
            "key `cluster.replication`: no node told its RabbitMQ version (GET \
             /api/overview, `rabbitmq_version`), and replication differs per version (a \
             mirroring policy before 4.0, quorum queues from 4.0)"
                .into(),
        ),
    }
}

/// The mirroring policy definition that replicates a queue to every node (3.x).
pub fn mirroring_definition() -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("ha-mode".into(), "all".into());
    m.insert("ha-sync-mode".into(), "automatic".into());
    m
}

/// The refusal for `cluster.nodes[index]` of type `ram` on a node whose cluster
/// has no RAM nodes (Khepri, RabbitMQ 4.x).
pub fn ram_node_refusal(index: usize, node: &str, version: Option<Version>) -> String {
    let runs = version.map_or_else(
        || "a RabbitMQ version".to_string(),
        |v| format!("RabbitMQ {v}"),
    );
    format!(
        "key `cluster.nodes[{index}].type`: `ram`, but {node} runs {runs} without RAM nodes (its \
         cluster_status lists no `ram_nodes`, or its metadata store is Khepri, the only one from \
         4.3 on), so `join_cluster --ram` does not exist there. The 4.x equivalent is `type: \
         disc` (the default): every node keeps the cluster's metadata, and a majority of the \
         nodes must be up"
    )
}

/// What the CLI's version means for nodes of `node` version: the CLI speaks to
/// the nodes' internals, so it must come from the same release series.
pub fn cli_verdict(cli: Option<Version>, node: Version, command: &str) -> Verdict {
    let fix = "set `cluster.rabbitmqctl` to the CLI of the nodes' own version (a wrapper \
        script works, e.g. one that runs `chroot /srv/rabbitmq-4 rabbitmqctl \"$@\"` or `docker \
        exec NODE rabbitmqctl \"$@\"`)";
    match cli {
        Some(c) if c.major != node.major => Verdict::Refuse(format!(
            "key `cluster.rabbitmqctl`: `{command}` is the RabbitMQ {c} CLI and the nodes run \
             {node}: a CLI of another major version fails on them (a 3.x CLI's cluster_status \
             on 4.x answers `undef rabbit_mnesia:status`); {fix}"
        )),
        Some(c) if c.minor != node.minor => Verdict::Warn(format!(
            "`{command}` is the RabbitMQ {c} CLI and a node runs {node}: RabbitMQ supports CLI \
             tools of the nodes' own release series only; {fix}"
        )),
        Some(_) => Verdict::Apply,
        None => Verdict::Warn(format!(
            "`{command} version` gave no version I can read: cannot check that the CLI matches \
             the nodes' RabbitMQ {node}"
        )),
    }
}

/// How to make quorum queues the default of a vhost, by CLI and by HTTP.
pub fn quorum_advice(vhost: &str) -> String {
    format!(
        "`rabbitmqctl update_vhost_metadata {vhost} --default-queue-type quorum` or \
         `PUT /api/vhosts/{}` with {{\"default_queue_type\":\"quorum\"}}",
        crate::mgmt::encode_segment(vhost)
    )
}

/// A warning for RAM nodes on versions that deprecate them, if any.
pub fn ram_node_warning(newest: Option<Version>) -> Option<String> {
    match newest {
        Some(v) if v >= MIRRORING_DEPRECATED => Some(format!(
            "RAM nodes are a deprecated RabbitMQ feature (`ram_node_type`) and RabbitMQ {v} may \
             refuse them; prefer `type: disc`"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(def: &str) -> PolicyConfig {
        PolicyConfig {
            name: "p".into(),
            vhost: "/".into(),
            pattern: "^".into(),
            apply_to: Default::default(),
            priority: 0,
            definition: serde_json::from_str(def).expect("test JSON"),
        }
    }

    #[test]
    fn parses_versions() {
        assert_eq!(Version::parse("3.10.8"), Some(Version::new(3, 10, 8)));
        assert_eq!(Version::parse("3.13.0-rc.2"), Some(Version::new(3, 13, 0)));
        assert_eq!(Version::parse("4.1"), Some(Version::new(4, 1, 0)));
        assert_eq!(
            Version::parse("3.13.7+1.g0123abc"),
            Some(Version::new(3, 13, 7))
        );
        assert_eq!(Version::parse(" 4.0.5\n"), Some(Version::new(4, 0, 5)));
        assert_eq!(Version::parse(""), None);
        assert_eq!(Version::parse("four"), None);
        assert_eq!(Version::parse("4"), None);
        assert_eq!(Version::parse("1.2.3.4"), None);
        assert!(Version::new(3, 9, 29) < Version::new(3, 13, 0));
        assert!(Version::new(3, 13, 7) < Version::new(4, 0, 0));
    }

    #[test]
    fn mirroring_applies_before_3_13() {
        let p = policy(r#"{"ha-mode":"all","ha-sync-mode":"automatic"}"#);
        assert_eq!(
            policy_verdict(&p, 0, Version::parse("3.10.8")),
            Verdict::Apply
        );
        assert_eq!(
            policy_verdict(&p, 0, Version::parse("3.12.14")),
            Verdict::Apply
        );
    }

    #[test]
    fn mirroring_warns_on_3_13() {
        let p = policy(r#"{"ha-mode":"all"}"#);
        match policy_verdict(&p, 0, Version::parse("3.13.7")) {
            Verdict::Warn(w) => {
                assert!(w.contains("deprecated"), "{w}");
                assert!(w.contains("ha-mode"), "{w}");
                assert!(w.contains("quorum"), "{w}");
            }
            v => panic!("expected a warning, got {v:?}"),
        }
    }

    #[test]
    fn mirroring_refused_on_4() {
        let p = policy(r#"{"ha-mode":"all","ha-sync-mode":"automatic","max-length":10}"#);
        for v in ["4.0.0", "4.0.5", "4.1.0-rc.1", "5.0.0"] {
            match policy_verdict(&p, 0, Version::parse(v)) {
                Verdict::Refuse(r) => {
                    assert!(r.contains("removed in 4.0"), "{r}");
                    assert!(r.contains("ha-mode, ha-sync-mode"), "{r}");
                    assert!(r.contains("x-queue-type: quorum"), "{r}");
                    assert!(r.contains("--default-queue-type quorum"), "{r}");
                    assert!(r.contains("/api/vhosts/%2F"), "{r}");
                }
                other => panic!("{v}: expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn other_policies_apply_everywhere() {
        let p = policy(r#"{"max-length":10,"queue-mode":"lazy"}"#);
        for v in ["3.10.8", "3.13.0", "4.0.0"] {
            assert_eq!(
                policy_verdict(&p, 0, Version::parse(v)),
                Verdict::Apply,
                "{v}"
            );
        }
        assert_eq!(policy_verdict(&p, 0, None), Verdict::Apply);
    }

    #[test]
    fn unknown_version_warns_and_relies_on_read_back() {
        let p = policy(r#"{"ha-mode":"all"}"#);
        assert!(matches!(policy_verdict(&p, 0, None), Verdict::Warn(_)));
    }

    #[test]
    fn ha_refusal_names_the_key_and_the_4x_equivalent() {
        let p = policy(r#"{"ha-mode":"all"}"#);
        match policy_verdict(&p, 2, Version::parse("4.3.6")) {
            Verdict::Refuse(r) => {
                assert!(
                    r.contains("key `cluster.policies[2].definition.ha-mode`"),
                    "{r}"
                );
                assert!(r.contains("cluster.replication.vhosts"), "{r}");
                assert!(r.contains("4.3.6"), "{r}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn replication_takes_each_versions_way() {
        for v in ["3.8.0", "3.10.8", "3.12.14"] {
            assert_eq!(
                replication_way(Version::parse(v)),
                Ok((Replication::Mirroring, None)),
                "{v}"
            );
        }
        match replication_way(Version::parse("3.13.7")) {
            Ok((Replication::Mirroring, Some(w))) => assert!(w.contains("deprecated"), "{w}"),
            other => panic!("3.13: {other:?}"),
        }
        for v in ["4.0.5", "4.3.6", "5.0.0"] {
            assert_eq!(
                replication_way(Version::parse(v)),
                Ok((Replication::Quorum, None)),
                "{v}"
            );
        }
        let e = replication_way(None).expect_err("unknown version refused");
        assert!(e.contains("key `cluster.replication`"), "{e}");
        assert_eq!(mirroring_definition()["ha-mode"], "all");
        assert_eq!(mirroring_definition()["ha-sync-mode"], "automatic");
    }

    #[test]
    fn ram_refusal_names_the_key_and_the_4x_equivalent() {
        let r = ram_node_refusal(2, "c3@vm", Version::parse("4.3.6"));
        assert!(r.contains("key `cluster.nodes[2].type`"), "{r}");
        assert!(r.contains("c3@vm runs RabbitMQ 4.3.6"), "{r}");
        assert!(r.contains("`type: disc`"), "{r}");
    }

    #[test]
    fn the_cli_must_match_the_nodes_major_version() {
        let node = Version::new(4, 3, 6);
        assert_eq!(
            cli_verdict(Version::parse("4.3.6"), node, "rabbitmqctl"),
            Verdict::Apply
        );
        match cli_verdict(Version::parse("3.10.8"), node, "rabbitmqctl") {
            Verdict::Refuse(r) => {
                assert!(r.contains("key `cluster.rabbitmqctl`"), "{r}");
                assert!(r.contains("RabbitMQ 3.10.8 CLI"), "{r}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(matches!(
            cli_verdict(Version::parse("4.0.5"), node, "rabbitmqctl"),
            Verdict::Warn(_)
        ));
        assert!(matches!(
            cli_verdict(None, node, "rabbitmqctl"),
            Verdict::Warn(_)
        ));
    }

    #[test]
    fn ram_nodes_warned_from_3_13() {
        assert_eq!(ram_node_warning(Version::parse("3.10.8")), None);
        assert!(ram_node_warning(Version::parse("3.13.1")).is_some());
        assert!(ram_node_warning(Version::parse("4.0.2")).is_some());
        assert_eq!(ram_node_warning(None), None);
    }
}
