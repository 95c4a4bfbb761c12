//! Cluster membership: what each node's `cluster_status` says, what must change
//! for it to match the config, and what still differs afterwards. Pure functions,
//! so every case is unit-tested without nodes.

use std::collections::BTreeSet;

use crate::config::NodeType;

/// The parts of `rabbitmqctl cluster_status --formatter json` bootstrap uses.
///
/// The JSON differs per version (captured from real nodes in `testdata/`): 3.10
/// and 4.0 (Mnesia) list `ram_nodes`; 4.3 (Khepri, the only metadata store) has
/// no such key, since it has no RAM nodes, and adds `maintenance_status`,
/// `cpu_cores` and `feature_flags`. A missing `ram_nodes` means none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    pub running: BTreeSet<String>,
    pub disc: BTreeSet<String>,
    pub ram: BTreeSet<String>,
    /// Whether the node can have RAM nodes in its cluster: its answer lists
    /// `ram_nodes` and its metadata store is not Khepri (feature flag `khepri_db`
    /// not enabled).
    pub ram_nodes_supported: bool,
}

impl ClusterStatus {
    /// `None` when `running_nodes` or `disk_nodes` is missing or not a list of
    /// names, or `ram_nodes` is there but not a list of names.
    pub fn from_json(v: &serde_json::Value) -> Option<ClusterStatus> {
        let set = |key: &str| -> Option<Option<BTreeSet<String>>> {
            let Some(list) = v.get(key) else {
                return Some(None);
            };
            list.as_array()?
                .iter()
                .map(|n| n.as_str().map(str::to_string))
                .collect::<Option<BTreeSet<String>>>()
                .map(Some)
        };
        let ram = set("ram_nodes")?;
        let khepri = v
            .get("feature_flags")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|flags| {
                flags
                    .iter()
                    .any(|f| f["name"] == "khepri_db" && f["state"] == "enabled")
            });
        Some(ClusterStatus {
            running: set("running_nodes")??,
            disc: set("disk_nodes")??,
            ram_nodes_supported: ram.is_some() && !khepri,
            ram: ram.unwrap_or_default(),
        })
    }

    /// Every member, disc and RAM.
    pub fn members(&self) -> BTreeSet<String> {
        self.disc.union(&self.ram).cloned().collect()
    }

    pub fn type_of(&self, node: &str) -> Option<NodeType> {
        if self.ram.contains(node) {
            Some(NodeType::Ram)
        } else if self.disc.contains(node) {
            Some(NodeType::Disc)
        } else {
            None
        }
    }
}

/// One node as the config wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted<'a> {
    pub node: &'a str,
    pub node_type: NodeType,
}

/// What has to happen to one node, judged from its own `cluster_status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Already as the config wants it.
    AlreadySo,
    /// Standalone: `stop_app`, `join_cluster [--ram] SEED`, `start_app`.
    Join,
    /// Member of the seed's cluster with the other type: `stop_app`,
    /// `change_cluster_node_type`, `start_app`.
    ChangeType { from: NodeType },
    /// Clustered with nodes that are not the seed's cluster (for the seed: with
    /// nodes the config does not list). Only `--force-reset` may change it:
    /// `reset` deletes the node's data, then it joins (or, for the seed, stays
    /// standalone for the others to join).
    Foreign { others: Vec<String> },
}

/// Decides for `want` from its own view `own`. `seed` is the first disc node;
/// `config_nodes` every node of the config.
pub fn decide(
    want: &Wanted<'_>,
    seed: &str,
    config_nodes: &BTreeSet<String>,
    own: &ClusterStatus,
) -> Decision {
    let members = own.members();
    let others: Vec<String> = members
        .iter()
        .filter(|m| m.as_str() != want.node)
        .cloned()
        .collect();
    let in_seed_cluster = if want.node == seed {
        // The seed's cluster may only hold nodes of the config.
        others.iter().all(|m| config_nodes.contains(m))
    } else {
        members.contains(seed)
    };
    if !in_seed_cluster {
        if others.is_empty() {
            return Decision::Join;
        }
        let others = if want.node == seed {
            others
                .into_iter()
                .filter(|m| !config_nodes.contains(m))
                .collect()
        } else {
            others
        };
        return Decision::Foreign { others };
    }
    match own.type_of(want.node) {
        Some(t) if t != want.node_type => Decision::ChangeType { from: t },
        _ => Decision::AlreadySo,
    }
}

/// How the seed's view differs from the config: empty when it matches.
pub fn differences(wanted: &[Wanted<'_>], seen: &ClusterStatus) -> Vec<String> {
    let all: BTreeSet<String> = wanted.iter().map(|w| w.node.to_string()).collect();
    let of_type = |t: NodeType| -> BTreeSet<String> {
        wanted
            .iter()
            .filter(|w| w.node_type == t)
            .map(|w| w.node.to_string())
            .collect()
    };
    let mut out = Vec::new();
    for (key, want, got) in [
        ("running_nodes", all, &seen.running),
        ("disk_nodes", of_type(NodeType::Disc), &seen.disc),
        ("ram_nodes", of_type(NodeType::Ram), &seen.ram),
    ] {
        if &want != got {
            out.push(format!(
                "{key} is {}, the config wants {}",
                list(got),
                list(&want)
            ));
        }
    }
    out
}

/// `[a, b]`.
pub fn list<'a>(nodes: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<&str> = nodes.into_iter().map(String::as_str).collect();
    format!("[{}]", v.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|s| s.to_string()).collect()
    }

    fn status(running: &[&str], disc: &[&str], ram: &[&str]) -> ClusterStatus {
        ClusterStatus {
            running: set(running),
            disc: set(disc),
            ram: set(ram),
            ram_nodes_supported: true,
        }
    }

    fn want(node: &str, t: NodeType) -> Wanted<'_> {
        Wanted { node, node_type: t }
    }

    const SEED: &str = "b1@h";

    fn config() -> BTreeSet<String> {
        set(&["b1@h", "b2@h", "b3@h"])
    }

    #[test]
    fn parses_cluster_status_json() {
        let v = serde_json::json!({
            "running_nodes": ["b3@h", "b2@h", "b1@h"],
            "disk_nodes": ["b1@h", "b2@h"],
            "ram_nodes": ["b3@h"],
            "alarms": []
        });
        let s = ClusterStatus::from_json(&v).expect("parses");
        assert_eq!(
            s,
            status(&["b1@h", "b2@h", "b3@h"], &["b1@h", "b2@h"], &["b3@h"])
        );
        assert_eq!(s.type_of("b3@h"), Some(NodeType::Ram));
        assert_eq!(s.type_of("b1@h"), Some(NodeType::Disc));
        assert_eq!(s.type_of("x@h"), None);
        assert!(ClusterStatus::from_json(&serde_json::json!({"running_nodes": []})).is_none());
        assert!(ClusterStatus::from_json(&serde_json::json!({
            "running_nodes": [1], "disk_nodes": [], "ram_nodes": []
        }))
        .is_none());
    }

    fn captured(json: &str) -> ClusterStatus {
        let v: serde_json::Value = serde_json::from_str(json).expect("captured JSON");
        ClusterStatus::from_json(&v).expect("captured cluster_status parses")
    }

    /// `rabbitmqctl cluster_status --formatter json` as real nodes answered it
    /// (testdata/, captured with each version's own CLI).
    #[test]
    fn parses_cluster_status_of_each_version() {
        // 3.10.8: b2 a disc node, b3 joined with --ram.
        let s = captured(include_str!("testdata/cluster_status-3.10.8-ram.json"));
        assert_eq!(
            s,
            ClusterStatus {
                running: set(&["b1@vm", "b2@vm", "b3@vm"]),
                disc: set(&["b1@vm", "b2@vm"]),
                ram: set(&["b3@vm"]),
                ram_nodes_supported: true,
            }
        );
        // 4.0.5 (Mnesia): still lists ram_nodes.
        let s = captured(include_str!("testdata/cluster_status-4.0.5.json"));
        assert!(s.ram_nodes_supported, "{s:?}");
        assert_eq!(s.members(), set(&["c1@vm", "c2@vm", "c3@vm"]));
        assert_eq!(s.type_of("c3@vm"), Some(NodeType::Ram));
        // 4.3.6 (Khepri): no ram_nodes key, which means none; every member is disc.
        let s = captured(include_str!("testdata/cluster_status-4.3.6.json"));
        assert_eq!(
            s,
            ClusterStatus {
                running: set(&["c1@vm", "c2@vm", "c3@vm"]),
                disc: set(&["c1@vm", "c2@vm", "c3@vm"]),
                ram: BTreeSet::new(),
                ram_nodes_supported: false,
            }
        );
        let s = captured(include_str!(
            "testdata/cluster_status-4.3.6-standalone.json"
        ));
        assert_eq!(s.members(), set(&["c1@vm"]));
        assert_eq!(s.running, set(&["c1@vm"]));
        assert!(!s.ram_nodes_supported);
        // Khepri enabled with a ram_nodes key still means no RAM nodes.
        let v = serde_json::json!({
            "running_nodes": ["a@h"], "disk_nodes": ["a@h"], "ram_nodes": [],
            "feature_flags": [{"name": "khepri_db", "state": "enabled"}]
        });
        let s = ClusterStatus::from_json(&v).expect("parses");
        assert!(!s.ram_nodes_supported);
        // ram_nodes present but not a list of names is refused, as before.
        assert!(ClusterStatus::from_json(&serde_json::json!({
            "running_nodes": [], "disk_nodes": [], "ram_nodes": "b3@h"
        }))
        .is_none());
    }

    #[test]
    fn standalone_seed_is_already_so_and_others_join() {
        let c = config();
        let alone = |n: &str| status(&[n], &[n], &[]);
        assert_eq!(
            decide(&want(SEED, NodeType::Disc), SEED, &c, &alone(SEED)),
            Decision::AlreadySo
        );
        assert_eq!(
            decide(&want("b2@h", NodeType::Disc), SEED, &c, &alone("b2@h")),
            Decision::Join
        );
        assert_eq!(
            decide(&want("b3@h", NodeType::Ram), SEED, &c, &alone("b3@h")),
            Decision::Join
        );
    }

    #[test]
    fn members_are_already_so_or_change_type() {
        let c = config();
        let s = status(&["b1@h", "b2@h", "b3@h"], &["b1@h", "b2@h", "b3@h"], &[]);
        assert_eq!(
            decide(&want(SEED, NodeType::Disc), SEED, &c, &s),
            Decision::AlreadySo
        );
        assert_eq!(
            decide(&want("b2@h", NodeType::Disc), SEED, &c, &s),
            Decision::AlreadySo
        );
        assert_eq!(
            decide(&want("b3@h", NodeType::Ram), SEED, &c, &s),
            Decision::ChangeType {
                from: NodeType::Disc
            }
        );
    }

    #[test]
    fn a_node_in_another_cluster_is_foreign() {
        let c = config();
        // b2 and b3 clustered with each other, without the seed.
        let s = status(&["b2@h", "b3@h"], &["b2@h"], &["b3@h"]);
        assert_eq!(
            decide(&want("b2@h", NodeType::Disc), SEED, &c, &s),
            Decision::Foreign {
                others: vec!["b3@h".into()]
            }
        );
        // The seed clustered with a node the config does not list.
        let s = status(&["b1@h", "x@h"], &["b1@h", "x@h"], &[]);
        assert_eq!(
            decide(&want(SEED, NodeType::Disc), SEED, &c, &s),
            Decision::Foreign {
                others: vec!["x@h".into()]
            }
        );
        // The seed clustered with config nodes only is fine.
        let s = status(&["b1@h", "b2@h"], &["b1@h", "b2@h"], &[]);
        assert_eq!(
            decide(&want(SEED, NodeType::Disc), SEED, &c, &s),
            Decision::AlreadySo
        );
    }

    #[test]
    fn differences_name_each_list() {
        let w = [
            want("b1@h", NodeType::Disc),
            want("b2@h", NodeType::Disc),
            want("b3@h", NodeType::Ram),
        ];
        let good = status(&["b1@h", "b2@h", "b3@h"], &["b1@h", "b2@h"], &["b3@h"]);
        assert!(differences(&w, &good).is_empty());
        let alone = status(&["b1@h"], &["b1@h"], &[]);
        let d = differences(&w, &alone);
        assert_eq!(
            d,
            vec![
                "running_nodes is [b1@h], the config wants [b1@h, b2@h, b3@h]".to_string(),
                "disk_nodes is [b1@h], the config wants [b1@h, b2@h]".to_string(),
                "ram_nodes is [], the config wants [b3@h]".to_string(),
            ]
        );
        // A member that is down shows only in running_nodes.
        let down = status(&["b1@h", "b3@h"], &["b1@h", "b2@h"], &["b3@h"]);
        assert_eq!(differences(&w, &down).len(), 1);
    }
}
