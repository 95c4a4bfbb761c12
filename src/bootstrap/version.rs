//! What the RabbitMQ version of the nodes means for the config.
//!
//! Classic queue mirroring (the `ha-*` policy keys) is deprecated in 3.13 and
//! removed in 4.0; RAM nodes (`ram_node_type`) are a deprecated feature too. The
//! version comes from `GET /api/overview` (`rabbitmq_version`).

use std::fmt;

use crate::config::PolicyConfig;

/// `major.minor.patch` of a RabbitMQ release; suffixes (`-rc.1`, `+1.gabc`) ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Parses `3.10.8`, `3.13.0-rc.2`, `4.1` and the like; `None` for anything else.
    pub fn parse(s: &str) -> Option<Version> {
        let core = s.trim().split(['-', '+', ' ']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version::new(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// First release where classic mirroring is deprecated (warn).
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

/// Decides for one policy. `newest` is the newest version among the nodes (the
/// most restrictive one); `None` when no node told its version.
pub fn policy_verdict(p: &PolicyConfig, newest: Option<Version>) -> Verdict {
    let keys = ha_keys(p);
    if keys.is_empty() {
        return Verdict::Apply;
    }
    let keys = keys.join(", ");
    match newest {
        Some(v) if v >= MIRRORING_REMOVED => Verdict::Refuse(format!(
            "uses classic queue mirroring ({keys}), which was removed in 4.0 (this cluster runs \
             {v}): such a policy is rejected or has no effect, queues would not be replicated. \
             Use quorum queues \
             instead: declare queues with the argument `x-queue-type: quorum`, or make quorum the \
             default for the vhost: {}; then remove the ha-* keys from cluster.policies",
            quorum_advice(&p.vhost)
        )),
        Some(v) if v >= MIRRORING_DEPRECATED => Verdict::Warn(format!(
            "uses classic queue mirroring ({keys}), deprecated since RabbitMQ 3.13 and removed \
             in 4.0 (this cluster runs {v}): plan the move to quorum queues ({})",
            quorum_advice(&p.vhost)
        )),
        Some(_) => Verdict::Apply,
        None => Verdict::Warn(format!(
            "uses classic queue mirroring ({keys}) but the RabbitMQ version is unknown; \
             mirroring exists only before 4.0, the policy is read back to see whether it took"
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
        assert_eq!(policy_verdict(&p, Version::parse("3.10.8")), Verdict::Apply);
        assert_eq!(
            policy_verdict(&p, Version::parse("3.12.14")),
            Verdict::Apply
        );
    }

    #[test]
    fn mirroring_warns_on_3_13() {
        let p = policy(r#"{"ha-mode":"all"}"#);
        match policy_verdict(&p, Version::parse("3.13.7")) {
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
            match policy_verdict(&p, Version::parse(v)) {
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
            assert_eq!(policy_verdict(&p, Version::parse(v)), Verdict::Apply, "{v}");
        }
        assert_eq!(policy_verdict(&p, None), Verdict::Apply);
    }

    #[test]
    fn unknown_version_warns_and_relies_on_read_back() {
        let p = policy(r#"{"ha-mode":"all"}"#);
        assert!(matches!(policy_verdict(&p, None), Verdict::Warn(_)));
    }

    #[test]
    fn ram_nodes_warned_from_3_13() {
        assert_eq!(ram_node_warning(Version::parse("3.10.8")), None);
        assert!(ram_node_warning(Version::parse("3.13.1")).is_some());
        assert!(ram_node_warning(Version::parse("4.0.2")).is_some());
        assert_eq!(ram_node_warning(None), None);
    }
}
