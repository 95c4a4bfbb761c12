//! Active and passive health checking: probes and the rise/fall state machine.
//!
//! A probe is a TCP connect to the AMQP port plus the node's own management API
//! checks (`GET /api/health/checks/<name>`), the whole probe bounded by
//! `health.timeout`. Which checks run on a node follows its RabbitMQ version
//! ([`plan`]), read from `GET /api/overview` ([`read_node`]) and kept in a
//! [`NodeCache`]. Consecutive results move the verdict with HAProxy's rise/fall
//! semantics ([`observe`]); a node in maintenance (`rabbitmq-upgrade drain`) is a
//! distinct outcome, not a failure. Nothing here acts: `control` does.

use std::time::Duration;

use hyper::{Method, StatusCode};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::balancer::{unix_now, Backend, Health};
use crate::config::{Checks, HealthConfig, OnAlarm};
use crate::mgmt::{self, Credentials, Target, Version};

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pass,
    /// The node is reachable and serving, but has a resource alarm.
    Alarm(String),
    /// The node is in maintenance mode (`rabbitmq-upgrade drain`): out of
    /// rotation until it is revived. Not a failure.
    Maintenance(String),
    Fail(String),
}

/// `is-in-service` and `ready-to-serve-clients` exist from here on (404 before,
/// measured on 3.10.8 and 4.0.5), and with them a visible maintenance mode.
pub(crate) const MAINTENANCE_CHECKS_SINCE: Version = Version::new(4, 1, 1);
/// The first 4.x: `protocol-listener/amqp` hangs on 4.0.5 while another member
/// of the cluster is frozen, so `auto` leaves it out from here on.
const V4: Version = Version::new(4, 0, 0);

/// The checks that work on every version from 3.8.10 on, per node and without
/// waiting on other members: what `auto` uses while a node's version is unknown.
const COMMON: [&str; 2] = ["local-alarms", "virtual-hosts"];

/// What to probe on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Management checks, in order.
    pub checks: Vec<String>,
    /// The node's version has a maintenance mode warren can see: a drained node
    /// is `Outcome::Maintenance`, not a failure.
    pub maintenance: bool,
}

/// The checks for a node of `version` (`None`: not known yet) under `checks`.
/// `auto`:
/// - 3.x: `local-alarms`, `protocol-listener/amqp`, `virtual-hosts` (as always);
/// - 4.0.0 up to 4.1.0: `local-alarms`, `virtual-hosts`;
/// - 4.1.1 on: `local-alarms`, `is-in-service`, `ready-to-serve-clients`,
///   `virtual-hosts`;
/// - unknown: `local-alarms`, `virtual-hosts` (they work everywhere).
///
/// A list is used as written, whatever the version; `none` is no check.
pub(crate) fn plan(checks: &Checks, version: Option<Version>) -> Plan {
    let maintenance = version.is_some_and(|v| v >= MAINTENANCE_CHECKS_SINCE);
    let names: Vec<&str> = match (checks, version) {
        (Checks::List(l), _) => {
            return Plan {
                checks: l.clone(),
                maintenance,
            }
        }
        (Checks::None, _) => Vec::new(),
        (Checks::Auto, None) => COMMON.to_vec(),
        (Checks::Auto, Some(v)) if v < V4 => {
            vec!["local-alarms", "protocol-listener/amqp", "virtual-hosts"]
        }
        (Checks::Auto, Some(v)) if v < MAINTENANCE_CHECKS_SINCE => COMMON.to_vec(),
        (Checks::Auto, Some(_)) => vec![
            "local-alarms",
            "is-in-service",
            "ready-to-serve-clients",
            "virtual-hosts",
        ],
    };
    Plan {
        checks: names.into_iter().map(str::to_string).collect(),
        maintenance,
    }
}

/// What `GET /api/overview` says about the node that answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    /// `rabbitmq_version` as the node reports it.
    pub version: String,
    /// Its Erlang node name (`node`), to ask other members about it.
    pub node: Option<String>,
    /// The name of its cluster (`cluster_name`), for `warren_backend_info`.
    pub cluster: Option<String>,
}

impl NodeInfo {
    pub(crate) fn parsed(&self) -> Option<Version> {
        Version::parse(&self.version)
    }
}

/// Reads the node's version, name and cluster name. `GET /api/overview` waits on every
/// member of the cluster (it hangs while one is frozen, on 4.0 and 4.3), so it
/// is never part of a verdict: the caller runs it beside the probe.
pub(crate) async fn read_node(
    target: &Target,
    creds: &Credentials,
    timeout: Duration,
) -> Result<NodeInfo, String> {
    let path = "/api/overview?columns=rabbitmq_version,node,cluster_name";
    let resp = mgmt::request(target, creds, Method::GET, path, None, timeout)
        .await
        .map_err(|e| format!("GET /api/overview: {e}"))?;
    if resp.status != StatusCode::OK {
        return Err(format!("GET /api/overview: HTTP {}", resp.status.as_u16()));
    }
    let json = resp
        .json()
        .ok_or_else(|| "GET /api/overview: not JSON".to_string())?;
    let version = json
        .get("rabbitmq_version")
        .and_then(|v| v.as_str())
        .ok_or_else(|| "GET /api/overview: no rabbitmq_version".to_string())?;
    Ok(NodeInfo {
        version: version.to_string(),
        node: json
            .get("node")
            .and_then(|n| n.as_str())
            .map(str::to_string),
        cluster: json
            .get("cluster_name")
            .and_then(|n| n.as_str())
            .map(str::to_string),
    })
}

/// A node's version as last read, and when to read it again: after a failed
/// probe and when the node comes back (it may have been upgraded meanwhile),
/// at most every [`NodeCache::RETRY`] while reads fail. The last value read is
/// kept meanwhile.
#[derive(Clone, Debug)]
pub(crate) struct NodeCache {
    info: Option<NodeInfo>,
    stale: bool,
    next_read: Option<Instant>,
}

impl Default for NodeCache {
    fn default() -> Self {
        NodeCache {
            info: None,
            stale: true,
            next_read: None,
        }
    }
}

impl NodeCache {
    /// Time between two reads that fail.
    pub(crate) const RETRY: Duration = Duration::from_secs(30);

    pub(crate) fn info(&self) -> Option<&NodeInfo> {
        self.info.as_ref()
    }

    pub(crate) fn version(&self) -> Option<Version> {
        self.info.as_ref().and_then(NodeInfo::parsed)
    }

    /// Whether a read is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.stale && self.next_read.is_none_or(|t| now >= t)
    }

    /// Takes the result of a read; true when the version changed (or was
    /// learned).
    pub(crate) fn record(&mut self, read: Result<NodeInfo, String>, now: Instant) -> bool {
        match read {
            Ok(info) => {
                let changed = self.info.as_ref().map(|i| &i.version) != Some(&info.version);
                self.info = Some(info);
                self.stale = false;
                self.next_read = None;
                changed
            }
            Err(_) => {
                self.next_read = Some(now + Self::RETRY);
                false
            }
        }
    }

    /// The node failed or came back: read its version again when next due.
    pub(crate) fn mark_stale(&mut self) {
        self.stale = true;
    }
}

/// Fast while the verdict is changing, slow while down, normal otherwise.
pub(crate) fn next_interval(backend: &Backend, cfg: &HealthConfig) -> Duration {
    let (succ, fail) = backend
        .check
        .lock()
        .map(|c| (c.consecutive_successes, c.consecutive_failures))
        .unwrap_or((0, 0));
    match backend.health() {
        Health::Up if fail > 0 => cfg.fast_interval.get(),
        Health::Down if succ > 0 => cfg.fast_interval.get(),
        Health::Down => cfg.down_interval.get(),
        Health::Up => cfg.interval.get(),
    }
}

/// What one probe needs besides the backend and the config.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Context<'a> {
    pub plan: &'a Plan,
    /// The node's Erlang name, when known.
    pub node: Option<&'a str>,
    /// The node's management API: `None` without a `management` URL (the
    /// probe is the TCP connect alone), `Err` when its TLS settings could not
    /// be loaded (the probe fails with that reason).
    pub management: Option<Result<&'a Target, &'a str>>,
    /// The other backends' management APIs: asked whether the node is being
    /// drained when its own listeners are closed.
    pub peers: &'a [Target],
}

/// The outcome of one probe, and the listed checks the node does not know
/// (HTTP 404: they came with a later version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Report {
    pub outcome: Outcome,
    pub skipped: Vec<String>,
}

/// One probe, bounded by `health.timeout`.
pub(crate) async fn probe(
    backend: &Backend,
    cfg: &HealthConfig,
    creds: Option<&Credentials>,
    ctx: Context<'_>,
) -> Report {
    let timeout = cfg.timeout.get();
    match tokio::time::timeout(timeout, probe_inner(backend, creds, ctx, timeout)).await {
        Ok(r) => r,
        Err(_) => Report {
            outcome: Outcome::Fail(format!("check timed out after {timeout:?}")),
            skipped: Vec::new(),
        },
    }
}

async fn probe_inner(
    backend: &Backend,
    creds: Option<&Credentials>,
    ctx: Context<'_>,
    timeout: Duration,
) -> Report {
    let report = |outcome| Report {
        outcome,
        skipped: Vec::new(),
    };
    // The AMQP port: a connect and an immediate close. It sends no bytes, so a
    // listener expecting a PROXY header is not disturbed (RabbitMQ logs nothing
    // for it, where a protocol header then a close logs a warning per probe on
    // 3.10, 4.0 and 4.3), and it runs no TLS handshake on AMQPS ports (a
    // handshake then a close makes RabbitMQ log a warning per probe). See docs/tls.md.
    if let Err(e) = TcpStream::connect(&backend.config.address).await {
        let refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
        if let (true, true, Some(node), Some(creds)) =
            (refused, ctx.plan.maintenance, ctx.node, creds)
        {
            // A drained node suspends its AMQP and HTTP listeners (4.3.6): only
            // the other members can tell maintenance from a failure.
            if let Some(peer) = drained_per_peers(ctx.peers, creds, node, timeout).await {
                return report(Outcome::Maintenance(format!(
                    "amqp port {}: {e}; {peer} reports node {node} in maintenance (being drained)",
                    backend.config.address
                )));
            }
        }
        return report(Outcome::Fail(format!(
            "amqp port {}: {e}",
            backend.config.address
        )));
    }
    let (Some(target), Some(creds)) = (ctx.management, creds) else {
        return report(Outcome::Pass);
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return report(Outcome::Fail(e.to_string())),
    };
    let mut alarm = None;
    let mut skipped = Vec::new();
    for check in &ctx.plan.checks {
        let path = format!("/api/health/checks/{check}");
        let outcome = match mgmt::request(target, creds, Method::GET, &path, None, timeout).await {
            Ok(resp) if resp.status == StatusCode::OK => continue,
            Ok(resp) if resp.status == StatusCode::NOT_FOUND => {
                // Not in this version: the others still decide.
                skipped.push(check.clone());
                continue;
            }
            Ok(resp) => {
                let reason = resp
                    .json()
                    .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
                    .unwrap_or_else(|| {
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned()
                    });
                let text = format!("{check}: HTTP {}: {reason}", resp.status.as_u16());
                let unavailable = resp.status == StatusCode::SERVICE_UNAVAILABLE;
                match check.as_str() {
                    "local-alarms" if unavailable => {
                        alarm = Some(text);
                        continue;
                    }
                    "is-in-service" if unavailable => {
                        Outcome::Maintenance(format!("node in maintenance ({text})"))
                    }
                    _ => Outcome::Fail(text),
                }
            }
            Err(e) => Outcome::Fail(format!("{check}: {e}")),
        };
        return Report { outcome, skipped };
    }
    let outcome = if !skipped.is_empty() && skipped.len() == ctx.plan.checks.len() {
        // Never pass on nothing: a wrong management URL answers 404 everywhere too.
        Outcome::Fail(format!(
            "none of the health checks exists on this node (HTTP 404): {}",
            skipped.join(", ")
        ))
    } else if let Some(a) = alarm {
        Outcome::Alarm(a)
    } else {
        Outcome::Pass
    };
    Report { outcome, skipped }
}

/// Probes a node's listener for one protocol of `listeners:`: a TCP connect
/// to `address` (its port for the protocol), then, where the management API
/// is known, RabbitMQ's `protocol-listener/<check>`. Bounded by `timeout`.
pub(crate) async fn probe_protocol(
    address: &str,
    check: &str,
    management: Option<(&Target, &Credentials)>,
    timeout: Duration,
) -> Result<(), String> {
    let run = async {
        TcpStream::connect(address)
            .await
            .map_err(|e| format!("{check} port {address}: {e}"))?;
        let Some((target, creds)) = management else {
            return Ok(());
        };
        let path = format!("/api/health/checks/protocol-listener/{check}");
        match mgmt::request(target, creds, Method::GET, &path, None, timeout).await {
            Ok(resp) if resp.status == StatusCode::OK => Ok(()),
            Ok(resp) => Err(format!(
                "protocol-listener/{check}: HTTP {}: {}",
                resp.status.as_u16(),
                resp.json()
                    .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
                    .unwrap_or_default()
            )),
            Err(e) => Err(format!("protocol-listener/{check}: {e}")),
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("{check} check timed out after {timeout:?}")),
    }
}

/// Asks the other members at once whether `node` is being drained: the peer
/// of the first clear answer when it is yes; `None` when it is no or none
/// answers. Each request gets half of `timeout`, so one frozen peer cannot
/// spend the probe's whole budget (the refused connect took next to nothing).
async fn drained_per_peers(
    peers: &[Target],
    creds: &Credentials,
    node: &str,
    timeout: Duration,
) -> Option<String> {
    let path = format!(
        "/api/nodes/{}?columns=name,being_drained",
        mgmt::encode_segment(node)
    );
    // Dropping the set (on the first clear answer) aborts the other requests.
    let mut answers = tokio::task::JoinSet::new();
    for peer in peers {
        let (peer, creds, path) = (peer.clone(), creds.clone(), path.clone());
        answers.spawn(async move {
            let resp = mgmt::request(&peer, &creds, Method::GET, &path, None, timeout / 2).await;
            let drained = match resp {
                Ok(r) if r.status == StatusCode::OK => r
                    .json()
                    .and_then(|v| v.get("being_drained").and_then(|d| d.as_bool())),
                _ => None,
            };
            (peer.endpoint.authority, drained)
        });
    }
    while let Some(answer) = answers.join_next().await {
        match answer {
            Ok((peer, Some(true))) => return Some(peer),
            Ok((_, Some(false))) => return None,
            _ => continue,
        }
    }
    None
}

/// What one outcome changed; the control plane acts on it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The verdict flipped to this health.
    pub flip: Option<Health>,
    /// The node's alarm appeared (with its reason) or cleared, as warren
    /// counts alarms (`health.on_alarm: ignore` never raises one).
    pub alarm: Option<Option<String>>,
    /// The node entered (with the reason) or left maintenance mode.
    pub maintenance: Option<Option<String>>,
}

/// Applies one outcome to the backend's rise/fall counters (`backend.check`)
/// and says whether the verdict, the alarm or maintenance changed. Changes
/// nothing else.
///
/// Maintenance is the node's own statement, so it counts at once (no `fall`)
/// and leaves the counters alone; any other answer ends it. A pass puts the
/// node back as it was; a failure ends it down, so the node must pass `rise`
/// probes first.
pub(crate) fn observe(backend: &Backend, hc: &HealthConfig, outcome: &Outcome) -> Verdict {
    let now = unix_now();
    let Ok(mut st) = backend.check.lock() else {
        return Verdict::default();
    };
    st.last_check = Some(now);
    if let Outcome::Maintenance(r) = outcome {
        st.last_failure = Some(r.clone());
        return Verdict {
            maintenance: (!backend.maintenance()).then(|| Some(r.clone())),
            ..Verdict::default()
        };
    }
    let maintenance = backend.maintenance().then_some(None);
    // Alarm handling: an alarmed node is reachable; what it means is configured.
    let alarm = match outcome {
        Outcome::Alarm(a) if hc.on_alarm != OnAlarm::Ignore => Some(a.clone()),
        _ => None,
    };
    let passed = matches!(outcome, Outcome::Pass | Outcome::Alarm(_));
    if passed {
        st.consecutive_successes = st.consecutive_successes.saturating_add(1);
        st.consecutive_failures = 0;
    } else {
        st.consecutive_failures = st.consecutive_failures.saturating_add(1);
        st.consecutive_successes = 0;
    }
    if let Outcome::Fail(r) | Outcome::Alarm(r) = outcome {
        st.last_failure = Some(r.clone());
    }
    let flip = match backend.health() {
        Health::Up if !passed && maintenance.is_some() => Some(Health::Down),
        Health::Up if st.consecutive_failures >= hc.fall.get() => Some(Health::Down),
        Health::Down if st.consecutive_successes >= hc.rise.get() => Some(Health::Up),
        _ => None,
    };
    let alarm = (alarm.is_some() != backend.alarm()).then_some(alarm);
    Verdict {
        flip,
        alarm,
        maintenance,
    }
}

impl Outcome {
    /// The reason of a failed or alarmed probe.
    pub(crate) fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Pass => None,
            Outcome::Fail(r) | Outcome::Alarm(r) | Outcome::Maintenance(r) => Some(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, Checks};

    fn backend() -> Backend {
        Backend::new(BackendConfig {
            name: "n1".into(),
            address: "127.0.0.1:1".into(),
            management: None,
            management_tls: None,
            tls: None,
            send_proxy: None,
            ports: Default::default(),
        })
    }

    fn fail() -> Outcome {
        Outcome::Fail("amqp port: refused".into())
    }

    #[test]
    fn fall_failures_flip_down_and_rise_passes_flip_up() {
        let b = backend();
        let hc = HealthConfig::default();
        for _ in 1..hc.fall.get() {
            assert_eq!(observe(&b, &hc, &fail()), Verdict::default());
        }
        let v = observe(&b, &hc, &fail());
        assert_eq!(v.flip, Some(Health::Down));
        // The flip is the control plane's to apply; until then it is repeated.
        b.set_health(Health::Down);
        assert_eq!(observe(&b, &hc, &fail()).flip, None);
        for _ in 1..hc.rise.get() {
            assert_eq!(observe(&b, &hc, &Outcome::Pass).flip, None);
        }
        assert_eq!(observe(&b, &hc, &Outcome::Pass).flip, Some(Health::Up));
        let st = b.check.lock().expect("check state");
        assert_eq!(st.consecutive_successes, hc.rise.get());
        assert_eq!(st.last_failure.as_deref(), Some("amqp port: refused"));
    }

    #[test]
    fn a_pass_between_failures_starts_the_count_over() {
        let b = backend();
        let hc = HealthConfig::default();
        for _ in 0..hc.fall.get() * 3 {
            for _ in 1..hc.fall.get() {
                assert_eq!(observe(&b, &hc, &fail()).flip, None);
            }
            assert_eq!(observe(&b, &hc, &Outcome::Pass).flip, None);
        }
    }

    #[test]
    fn an_alarm_is_reported_on_its_changes_only_and_counts_as_reachable() {
        let b = backend();
        let hc = HealthConfig::default();
        let alarm = Outcome::Alarm("local-alarms: HTTP 503: memory".into());
        let v = observe(&b, &hc, &alarm);
        assert_eq!(v.flip, None);
        assert_eq!(v.alarm, Some(Some("local-alarms: HTTP 503: memory".into())));
        b.set_alarm(true);
        assert_eq!(observe(&b, &hc, &alarm), Verdict::default());
        assert_eq!(observe(&b, &hc, &Outcome::Pass).alarm, Some(None));
        // `on_alarm: ignore`: an alarm raised before is cleared, none is raised.
        let ignore = HealthConfig {
            on_alarm: OnAlarm::Ignore,
            ..HealthConfig::default()
        };
        assert_eq!(observe(&b, &ignore, &alarm).alarm, Some(None));
        b.set_alarm(false);
        assert_eq!(observe(&b, &ignore, &alarm).alarm, None);
    }

    fn v(s: &str) -> Option<Version> {
        Version::parse(s)
    }

    #[test]
    fn versions_parse_from_what_overview_reports() {
        assert_eq!(v("3.10.8"), Some(Version::new(3, 10, 8)));
        assert_eq!(v("4.3.6"), Some(Version::new(4, 3, 6)));
        assert_eq!(v("4.1.0-rc.1"), Some(Version::new(4, 1, 0)));
        assert_eq!(v("4.2"), Some(Version::new(4, 2, 0)));
        assert_eq!(v("4.0.5+deb13u2"), Some(Version::new(4, 0, 5)));
        assert_eq!(v(""), None);
        assert_eq!(v("four"), None);
        assert!(Version::new(3, 10, 8) < Version::new(4, 0, 0));
        assert!(Version::new(4, 1, 0) < MAINTENANCE_CHECKS_SINCE);
    }

    #[test]
    fn auto_checks_follow_the_version() {
        let names = |version: &str| plan(&Checks::Auto, v(version)).checks;
        let three = ["local-alarms", "protocol-listener/amqp", "virtual-hosts"];
        let four_zero = ["local-alarms", "virtual-hosts"];
        let later = [
            "local-alarms",
            "is-in-service",
            "ready-to-serve-clients",
            "virtual-hosts",
        ];
        for version in ["3.8.10", "3.10.8", "3.13.7"] {
            assert_eq!(names(version), three, "{version}");
            assert!(!plan(&Checks::Auto, v(version)).maintenance);
        }
        // protocol-listener/amqp hangs on 4.0.5 while a member is frozen;
        // is-in-service and ready-to-serve-clients answer 404 there.
        for version in ["4.0.0", "4.0.5", "4.1.0"] {
            assert_eq!(names(version), four_zero, "{version}");
            assert!(!plan(&Checks::Auto, v(version)).maintenance);
        }
        for version in ["4.1.1", "4.2.0", "4.3.6", "5.0.0"] {
            assert_eq!(names(version), later, "{version}");
            assert!(plan(&Checks::Auto, v(version)).maintenance);
        }
        // Unknown: what works everywhere, never nothing.
        assert_eq!(plan(&Checks::Auto, None).checks, four_zero);
        assert!(!plan(&Checks::Auto, None).maintenance);
    }

    #[test]
    fn a_list_is_used_as_written_on_every_version() {
        let list = Checks::List(vec!["is-in-service".into(), "virtual-hosts".into()]);
        for version in [None, v("3.10.8"), v("4.0.5"), v("4.3.6")] {
            assert_eq!(
                plan(&list, version).checks,
                ["is-in-service", "virtual-hosts"]
            );
        }
        assert!(plan(&list, v("4.3.6")).maintenance);
        assert!(!plan(&list, v("3.10.8")).maintenance);
        assert!(plan(&Checks::None, v("4.3.6")).checks.is_empty());
    }

    #[test]
    fn the_version_is_read_again_after_a_failure_and_retried_slowly() {
        let info = |version: &str| NodeInfo {
            version: version.into(),
            node: Some("n1@h".into()),
            cluster: None,
        };
        let t0 = Instant::now();
        let mut c = NodeCache::default();
        assert!(c.due(t0));
        assert!(!c.record(Err("timed out".into()), t0));
        assert!(!c.due(t0 + Duration::from_secs(1)));
        assert!(c.due(t0 + NodeCache::RETRY));
        assert!(c.record(Ok(info("4.0.5")), t0));
        assert!(!c.due(t0 + NodeCache::RETRY * 10));
        assert_eq!(c.version(), v("4.0.5"));
        // A failed probe: read again at once; the last value is kept meanwhile.
        c.mark_stale();
        assert!(c.due(t0));
        assert!(!c.record(Err("refused".into()), t0));
        assert_eq!(c.version(), v("4.0.5"));
        assert!(!c.due(t0));
        // Upgraded while down.
        c.mark_stale();
        assert!(c.record(Ok(info("4.3.6")), t0 + NodeCache::RETRY));
        assert_eq!(c.version(), v("4.3.6"));
        assert!(!c.record(Ok(info("4.3.6")), t0 + NodeCache::RETRY));
    }

    #[test]
    fn maintenance_is_at_once_leaves_the_counters_and_a_failure_ends_it_down() {
        let b = backend();
        let hc = HealthConfig::default();
        observe(&b, &hc, &Outcome::Pass);
        let m = Outcome::Maintenance("is-in-service: HTTP 503".into());
        let v = observe(&b, &hc, &m);
        assert_eq!(v.maintenance, Some(Some("is-in-service: HTTP 503".into())));
        assert_eq!(v.flip, None);
        b.set_maintenance(true);
        assert_eq!(observe(&b, &hc, &m), Verdict::default());
        assert_eq!(b.check.lock().expect("check").consecutive_successes, 1);
        // Revived: back as it was, at once.
        let v = observe(&b, &hc, &Outcome::Pass);
        assert_eq!((v.maintenance, v.flip), (Some(None), None));
        b.set_maintenance(false);
        // Left maintenance failing: down, so `rise` passes must follow.
        b.set_maintenance(true);
        let v = observe(&b, &hc, &fail());
        assert_eq!((v.maintenance, v.flip), (Some(None), Some(Health::Down)));
    }
}
