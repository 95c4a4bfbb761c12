//! `warren bootstrap`: forms the RabbitMQ cluster that the `cluster:` section of
//! the config describes and applies its policies, idempotently, printing each step.
//!
//! 1. Preflight, read-only: each node's management API (`GET /api/overview`: the
//!    node's name and RabbitMQ version) and `rabbitmqctl cluster_status` (cookie
//!    accepted, membership); the cookie file; what the version means for the
//!    policies; what each node needs. Any problem stops the run here, before
//!    anything changed.
//! 2. Membership: per node, join / change type / (with `--force-reset`) reset,
//!    each between `stop_app` and a `start_app` that runs whatever happened.
//! 3. Verify `cluster_status` on the seed against the config.
//! 4. Replication (`cluster.replication`), the way of the nodes' version: a
//!    mirroring policy before 4.0; quorum as the vhosts' default queue type
//!    (`PUT /api/vhosts/{vhost}`) and the quorum policy keys from 4.0.
//! 5. Policies through the seed's management API: compare, `PUT`, read back.
//!
//! `--dry-run` and `--check` run the read-only parts only. The library prints
//! nothing itself: every step goes to a [`Report`].

pub mod cluster;
pub mod policy;
pub mod rabbitmqctl;
pub mod version;
pub mod vhost;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use hyper::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::config::{
    ApplyTo, ClusterConfig, ClusterNode, Config, NodeType, PolicyConfig, REPLICATION_POLICY,
};
use crate::mgmt::{Credentials, MgmtError, Target};
use cluster::{ClusterStatus, Decision, Wanted};
use policy::Api;
use rabbitmqctl::{CtlError, Rabbitmqctl};
use version::{Replication, Verdict, Version};

/// Exit codes of `warren bootstrap` (documented in docs/bootstrap.md).
pub mod exit {
    /// Done; or nothing to change; or `--check` found the cluster as configured.
    pub const OK: u8 = 0;
    /// `--check`: the cluster differs from the config (the differences are printed).
    pub const DIFFERENCES: u8 = 1;
    /// The config file is invalid, has no `cluster:` section, or names an unreadable cookie file.
    pub const CONFIG: u8 = 64;
    /// Refused, nothing changed: a node is in another cluster (without
    /// `--force-reset`), `ha-*` policies on RabbitMQ 4.x, or a management URL that
    /// belongs to another node than the config says.
    pub const REFUSED: u8 = 65;
    /// A node (its management API or rabbitmqctl) is not reachable, or its app is
    /// stopped; nothing changed.
    pub const UNREACHABLE: u8 = 69;
    /// A change failed (join, type change, reset, policy not read back equal, or
    /// the cluster did not match after the changes); every node's app was started again.
    pub const FAILED: u8 = 70;
    /// A node answered rabbitmqctl with something bootstrap cannot read (for
    /// instance a CLI of another RabbitMQ version); nothing changed.
    pub const PROTOCOL: u8 = 76;
    /// Authentication: a node rejected rabbitmqctl's Erlang cookie, runs with
    /// another cookie than `cluster.erlang_cookie_file`, or the management API
    /// refused `health.username`.
    pub const AUTH: u8 = 77;
    /// Interrupted (SIGINT/SIGTERM) between two steps; no node was left stopped.
    pub const INTERRUPTED: u8 = 130;
}

/// How long one rabbitmqctl command may take (`start_app` on a big node is slow).
const CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one management API request may take.
const MGMT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restarted node's management API, or the cluster view after the
/// changes, may take to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Change what differs.
    Apply,
    /// Print what would change; change nothing.
    DryRun,
    /// Compare only; differences make the exit code 1.
    Check,
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub mode: Mode,
    /// Allow `rabbitmqctl reset` on a node that is in another cluster.
    pub force_reset: bool,
}

/// The kind of a reported step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// Something was checked and is fine.
    Check,
    /// Already as the config wants it.
    Same,
    /// Something was changed.
    Change,
    /// `--dry-run`: what would be changed.
    Plan,
    /// `--check`: a difference from the config.
    Differ,
    Warn,
    Error,
}

impl Tag {
    pub fn label(self) -> &'static str {
        match self {
            Tag::Check => "check",
            Tag::Same => "ok",
            Tag::Change => "change",
            Tag::Plan => "plan",
            Tag::Differ => "differs",
            Tag::Warn => "warning",
            Tag::Error => "error",
        }
    }
}

/// Receives each step as it happens.
pub trait Report {
    fn step(&mut self, tag: Tag, subject: &str, message: &str);
}

/// What a finished run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Changes made (a join, a type change, a reset, a policy set).
    pub changes: usize,
    /// `--dry-run`: changes that would be made.
    pub planned: usize,
    /// `--check`: differences found.
    pub differences: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{0}")]
    Config(String),
    #[error("{node} is not reachable: {detail}")]
    Unreachable { node: String, detail: String },
    #[error("{node}: rabbitmqctl answered, but not as expected: {detail}")]
    Protocol { node: String, detail: String },
    #[error("{node}: Erlang cookie mismatch: {detail}")]
    Cookie { node: String, detail: String },
    #[error("{node}: the management API refused user `{user}` (HTTP 401): check health.username and the password settings")]
    Credentials { node: String, user: String },
    #[error("{subject}: {reason}")]
    Refused { subject: String, reason: String },
    #[error("{subject}: {detail}")]
    Failed { subject: String, detail: String },
    #[error("interrupted")]
    Interrupted,
}

impl BootstrapError {
    pub fn exit_code(&self) -> u8 {
        match self {
            BootstrapError::Config(_) => exit::CONFIG,
            BootstrapError::Unreachable { .. } => exit::UNREACHABLE,
            BootstrapError::Protocol { .. } => exit::PROTOCOL,
            BootstrapError::Cookie { .. } | BootstrapError::Credentials { .. } => exit::AUTH,
            BootstrapError::Refused { .. } => exit::REFUSED,
            BootstrapError::Failed { .. } => exit::FAILED,
            BootstrapError::Interrupted => exit::INTERRUPTED,
        }
    }
}

/// A failed run: the error and how many changes were made before it.
#[derive(Debug)]
pub struct Failure {
    pub error: BootstrapError,
    pub changes: usize,
}

/// The fix for a cookie mismatch, as printed.
pub const COOKIE_FIX: &str = "give every node, and the user that runs rabbitmqctl, the same \
    .erlang.cookie (owned by the rabbitmq user, mode 400; /var/lib/rabbitmq/.erlang.cookie on \
    Debian) and restart the nodes whose cookie changed";

/// Runs bootstrap for `config` (loaded from `file`). Cancelling `interrupt` stops
/// the run between two steps, never between a node's `stop_app` and `start_app`.
pub async fn run(
    config: &Config,
    file: &Path,
    opts: Options,
    interrupt: &CancellationToken,
    report: &mut dyn Report,
) -> Result<Outcome, Failure> {
    let mut r = match Run::new(config, file, opts, interrupt, report) {
        Ok(r) => r,
        Err(error) => return Err(Failure { error, changes: 0 }),
    };
    match r.run().await {
        Ok(()) => Ok(r.outcome),
        Err(error) => Err(Failure {
            error,
            changes: r.outcome.changes,
        }),
    }
}

/// One node of the config with the ways to reach it.
struct Node<'a> {
    cfg: &'a ClusterNode,
    index: usize,
    url: String,
    api: Api,
}

impl<'a> Node<'a> {
    fn name(&self) -> &'a str {
        let cfg: &'a ClusterNode = self.cfg;
        &cfg.node
    }
    fn want(&self) -> Wanted<'a> {
        Wanted {
            node: self.name(),
            node_type: self.cfg.node_type,
        }
    }
}

/// What preflight learned about one node.
struct Seen {
    version: Option<Version>,
    status: ClusterStatus,
}

/// What one node's probe found: its version when its management API answered,
/// its cluster_status when the CLI reached it, and the problems.
struct Probed {
    steps: Vec<(Tag, String)>,
    version: Option<Version>,
    status: Option<ClusterStatus>,
    errors: Vec<BootstrapError>,
}

struct Run<'a> {
    cluster: &'a ClusterConfig,
    nodes: Vec<Node<'a>>,
    /// Index into `nodes` of the seed (the first disc node).
    seed: usize,
    config_nodes: BTreeSet<String>,
    ctl: Rabbitmqctl,
    opts: Options,
    interrupt: &'a CancellationToken,
    report: &'a mut dyn Report,
    outcome: Outcome,
    /// Nodes whose app was restarted, so their management API is awaited.
    restarted: Vec<usize>,
}

impl<'a> Run<'a> {
    fn new(
        config: &'a Config,
        file: &Path,
        opts: Options,
        interrupt: &'a CancellationToken,
        report: &'a mut dyn Report,
    ) -> Result<Run<'a>, BootstrapError> {
        let file = file.display();
        let cluster = config.cluster.as_ref().ok_or_else(|| {
            BootstrapError::Config(format!(
                "{file}: no `cluster:` section: bootstrap needs cluster.nodes (and optionally cluster.policies)"
            ))
        })?;
        let password = config.health.resolve_password().map_err(|e| {
            let key = if config.health.password_file.is_some() {
                "health.password_file"
            } else {
                "health.password_env"
            };
            BootstrapError::Config(format!("{file}: key `{key}`: {e}"))
        })?;
        let credentials = Credentials {
            username: config.health.username.clone(),
            password,
        };
        let mut nodes = Vec::with_capacity(cluster.nodes.len());
        for (index, n) in cluster.nodes.iter().enumerate() {
            let backend = config.backends.iter().position(|b| b.name == n.backend);
            let no_url = || {
                BootstrapError::Config(format!(
                    "{file}: key `cluster.nodes[{index}].backend`: backend `{}` has no \
                     `management` URL; bootstrap needs it for the version and the policies",
                    n.backend
                ))
            };
            let url = backend
                .and_then(|i| config.backends[i].management.clone())
                .ok_or_else(no_url)?;
            let target = backend
                .and_then(|i| Target::for_backend(config, i))
                .ok_or_else(no_url)?
                .map_err(|e| match e {
                    MgmtError::TlsConfig { key, message } => {
                        BootstrapError::Config(format!("{file}: key `{key}`: {message}"))
                    }
                    e => BootstrapError::Config(format!("{file}: backend `{}`: {e}", n.backend)),
                })?;
            nodes.push(Node {
                cfg: n,
                index,
                url,
                api: Api {
                    target,
                    credentials: credentials.clone(),
                    timeout: MGMT_TIMEOUT,
                },
            });
        }
        let seed = nodes
            .iter()
            .position(|n| n.cfg.node_type == NodeType::Disc)
            .ok_or_else(|| {
                BootstrapError::Config(format!(
                    "{file}: key `cluster.nodes`: expected at least one node of type `disc`"
                ))
            })?;
        let config_nodes = cluster.nodes.iter().map(|n| n.node.clone()).collect();
        Ok(Run {
            cluster,
            nodes,
            seed,
            config_nodes,
            ctl: Rabbitmqctl::new(&cluster.rabbitmqctl, CLI_TIMEOUT),
            opts,
            interrupt,
            report,
            outcome: Outcome::default(),
            restarted: Vec::new(),
        })
    }

    fn step(&mut self, tag: Tag, subject: &str, message: &str) {
        self.report.step(tag, subject, message);
    }

    fn seed_name(&self) -> &'a str {
        self.nodes[self.seed].name()
    }

    /// The nodes in the order they are worked on: the seed first, then config order.
    fn order(&self) -> Vec<usize> {
        std::iter::once(self.seed)
            .chain((0..self.nodes.len()).filter(|i| *i != self.seed))
            .collect()
    }

    fn check_interrupt(&self) -> Result<(), BootstrapError> {
        if self.interrupt.is_cancelled() {
            Err(BootstrapError::Interrupted)
        } else {
            Ok(())
        }
    }

    async fn run(&mut self) -> Result<(), BootstrapError> {
        let seen = self.preflight().await?;
        let decisions = self.plan(&seen)?;
        self.converge(decisions).await?;
        self.verify().await?;
        self.replication(&seen).await?;
        self.policies().await
    }

    // ---- 1. preflight -------------------------------------------------------

    async fn preflight(&mut self) -> Result<Vec<Seen>, BootstrapError> {
        let cookie = self.cookie_file()?;
        // The nodes are probed at once (each is a few CLI calls of a second or so);
        // their steps are printed in config order.
        let probes: Vec<_> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let probe = Probe {
                    name: n.name().to_string(),
                    url: n.url.clone(),
                    backend: n.cfg.backend.clone(),
                    index: n.index,
                    is_seed: i == self.seed,
                    api: n.api.clone(),
                    ctl: self.ctl.clone(),
                    steps: Vec::new(),
                };
                tokio::spawn(probe.run(cookie.clone()))
            })
            .collect();
        // The CLI's own version (`rabbitmqctl version` does not contact the node).
        let cli = {
            let ctl = self.ctl.clone();
            let seed = self.seed_name().to_string();
            tokio::spawn(async move { ctl.run(&seed, &["version"]).await })
        };
        let mut probed = Vec::with_capacity(self.nodes.len());
        for (i, probe) in probes.into_iter().enumerate() {
            let name = self.nodes[i].name();
            let p = probe.await.map_err(|e| BootstrapError::Failed {
                subject: name.to_string(),
                detail: format!("probe task failed: {e}"),
            })?;
            probed.push(p);
        }
        let cli = cli.await.map_err(|e| BootstrapError::Failed {
            subject: "rabbitmqctl".into(),
            detail: format!("version task failed: {e}"),
        })?;
        let mut first: Option<BootstrapError> = self.judge_cli(cli, &probed);
        let mut seen = Vec::with_capacity(self.nodes.len());
        for (i, p) in probed.into_iter().enumerate() {
            let name = self.nodes[i].name();
            for (tag, message) in p.steps {
                self.step(tag, name, &message);
            }
            for e in p.errors {
                self.step(Tag::Error, name, &problem_text(&e));
                first.get_or_insert(e);
            }
            if let Some(status) = p.status {
                seen.push(Seen {
                    version: p.version,
                    status,
                });
            }
        }
        if let Some(e) = first {
            return Err(e);
        }
        self.judge_versions(&seen)?;
        self.check_vhosts().await?;
        Ok(seen)
    }

    /// The CLI's version against the nodes' versions: a refusal when it is of
    /// another major version (it then fails on the nodes in ways that look like
    /// anything but the version).
    fn judge_cli(
        &mut self,
        cli: Result<String, CtlError>,
        probed: &[Probed],
    ) -> Option<BootstrapError> {
        let command = self.cluster.rabbitmqctl.clone();
        let cli = match cli {
            Ok(out) => Version::parse(out.trim()),
            Err(e) => {
                // Spawn failures show in every node's cluster_status too.
                self.step(
                    Tag::Warn,
                    "rabbitmqctl",
                    &format!("`{command} version` failed: {e}"),
                );
                return None;
            }
        };
        let versions: BTreeSet<Version> = probed.iter().filter_map(|p| p.version).collect();
        let mut verdicts: Vec<Verdict> = versions
            .iter()
            .map(|v| version::cli_verdict(cli, *v, &command))
            .collect();
        verdicts.dedup();
        if verdicts.iter().all(|v| *v == Verdict::Apply) {
            if let Some(c) = cli {
                self.step(
                    Tag::Check,
                    "rabbitmqctl",
                    &format!("`{command}` is the RabbitMQ {c} CLI, of the nodes' release series"),
                );
            }
            return None;
        }
        let mut refused = None;
        for v in verdicts {
            match v {
                Verdict::Apply => {}
                Verdict::Warn(w) => self.step(Tag::Warn, "rabbitmqctl", &w),
                Verdict::Refuse(reason) => {
                    self.step(Tag::Error, "rabbitmqctl", &format!("refused: {reason}"));
                    refused.get_or_insert(BootstrapError::Refused {
                        subject: "rabbitmqctl".into(),
                        reason,
                    });
                }
            }
        }
        refused
    }

    /// Every vhost of `cluster.replication` exists on the seed (bootstrap does
    /// not create vhosts).
    async fn check_vhosts(&mut self) -> Result<(), BootstrapError> {
        let Some(r) = &self.cluster.replication else {
            return Ok(());
        };
        let api = self.nodes[self.seed].api.clone();
        let seed = self.seed_name();
        let mut first = None;
        for (i, v) in r.vhosts.iter().enumerate() {
            let subject = format!("vhost {v}");
            match api.get_vhost(v).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let reason = format!(
                        "key `cluster.replication.vhosts[{i}]`: vhost `{v}` does not exist on \
                         {seed}; bootstrap does not create vhosts: create it with \
                         `rabbitmqctl add_vhost {v}` (on 4.x with `--default-queue-type \
                         quorum`)"
                    );
                    self.step(Tag::Error, &subject, &format!("refused: {reason}"));
                    first.get_or_insert(BootstrapError::Refused { subject, reason });
                }
                Err(e) => {
                    let e = BootstrapError::Unreachable {
                        node: seed.to_string(),
                        detail: format!("management API: {e}"),
                    };
                    self.step(Tag::Error, &subject, &problem_text(&e));
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Reads `cluster.erlang_cookie_file` when set: its content, never printed.
    fn cookie_file(&mut self) -> Result<Option<(String, String)>, BootstrapError> {
        let Some(path) = &self.cluster.erlang_cookie_file else {
            return Ok(None);
        };
        let shown = path.display().to_string();
        let bad = |what: String| {
            BootstrapError::Config(format!("key `cluster.erlang_cookie_file`: {shown}: {what}"))
        };
        let text = crate::config::read_limited_to_string(path, crate::config::MAX_SECRET_FILE)
            .map_err(|e| bad(format!("cannot read: {e}")))?;
        let cookie = text.trim();
        if cookie.is_empty() {
            return Err(bad("expected an Erlang cookie, the file is empty".into()));
        }
        let mode = std::fs::metadata(path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .map_err(|e| bad(format!("cannot read: {e}")))?;
        if mode & 0o077 != 0 {
            self.step(
                Tag::Warn,
                "cookie",
                &format!(
                    "{shown} has mode {mode:o}: Erlang refuses a cookie file that other users \
                     can read; make it mode 400, owned by the rabbitmq user"
                ),
            );
        } else {
            self.step(
                Tag::Check,
                "cookie",
                &format!(
                    "{shown} is readable, mode {mode:o}; each node's cookie is compared with it"
                ),
            );
        }
        Ok(Some((shown, cookie.to_string())))
    }

    /// Warnings and refusals that follow from the nodes' versions.
    fn judge_versions(&mut self, seen: &[Seen]) -> Result<(), BootstrapError> {
        let versions: BTreeSet<Version> = seen.iter().filter_map(|s| s.version).collect();
        if versions.len() > 1 {
            let list: Vec<String> = versions.iter().map(Version::to_string).collect();
            self.step(
                Tag::Warn,
                "versions",
                &format!(
                    "the nodes run different RabbitMQ versions ({}); the newest decides",
                    list.join(", ")
                ),
            );
        }
        let newest = versions.iter().next_back().copied();
        let mut first = None;
        let cluster: &'a ClusterConfig = self.cluster;
        // A RAM node needs RAM nodes on its own version and on the seed's (the
        // cluster it joins).
        let seed_ram = seen[self.seed].status.ram_nodes_supported;
        let mut ram_ok = false;
        for (i, n) in cluster.nodes.iter().enumerate() {
            if n.node_type != NodeType::Ram {
                continue;
            }
            let lacking = if !seen[i].status.ram_nodes_supported {
                Some(i)
            } else if !seed_ram {
                Some(self.seed)
            } else {
                None
            };
            match lacking {
                None => ram_ok = true,
                Some(j) => {
                    let reason =
                        version::ram_node_refusal(i, self.nodes[j].name(), seen[j].version);
                    self.step(Tag::Error, &n.node, &format!("refused: {reason}"));
                    first.get_or_insert(BootstrapError::Refused {
                        subject: n.node.clone(),
                        reason,
                    });
                }
            }
        }
        if ram_ok {
            if let Some(w) = version::ram_node_warning(newest) {
                self.step(Tag::Warn, "cluster", &w);
            }
        }
        if let Some(r) = &cluster.replication {
            match version::replication_way(newest) {
                Ok((way, warning)) => {
                    if let Some(w) = warning {
                        self.step(Tag::Warn, "replication", &w);
                    }
                    if way == Replication::Mirroring && !r.quorum_policy.is_empty() {
                        self.step(
                            Tag::Warn,
                            "replication",
                            "key `cluster.replication.quorum_policy`: not applied before \
                             RabbitMQ 4.0, where queues are replicated by mirroring (one policy \
                             per queue applies, and it is the mirroring one)",
                        );
                    }
                    let how = match way {
                        Replication::Mirroring => format!(
                            "classic queue mirroring, policy `{REPLICATION_POLICY}` \
                             {{ha-mode: all, ha-sync-mode: automatic}}"
                        ),
                        Replication::Quorum => {
                            format!(
                                "quorum queues as the default queue type{}",
                                if r.quorum_policy.is_empty() {
                                    String::new()
                                } else {
                                    format!(", policy `{REPLICATION_POLICY}` with the quorum_policy keys")
                                }
                            )
                        }
                    };
                    let on = newest.map(|v| v.to_string()).unwrap_or_default();
                    self.step(
                        Tag::Check,
                        "replication",
                        &format!(
                            "RabbitMQ {on}: vhosts {} replicated by {how}",
                            r.vhosts.join(", ")
                        ),
                    );
                }
                Err(reason) => {
                    self.step(Tag::Error, "replication", &format!("refused: {reason}"));
                    first.get_or_insert(BootstrapError::Refused {
                        subject: "replication".into(),
                        reason,
                    });
                }
            }
        }
        for (i, p) in cluster.policies.iter().enumerate() {
            let subject = policy_subject(p);
            match version::policy_verdict(p, i, newest) {
                Verdict::Apply => {}
                Verdict::Warn(w) => self.step(Tag::Warn, &subject, &w),
                Verdict::Refuse(reason) => {
                    self.step(Tag::Error, &subject, &format!("refused: {reason}"));
                    first.get_or_insert(BootstrapError::Refused { subject, reason });
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Decides per node; prints what is already so, and (by mode) the plan, the
    /// differences or the refusals.
    fn plan(&mut self, seen: &[Seen]) -> Result<Vec<Decision>, BootstrapError> {
        let seed = self.seed_name();
        let mut decisions = Vec::with_capacity(self.nodes.len());
        let mut refused = None;
        for i in self.order() {
            let d = cluster::decide(
                &self.nodes[i].want(),
                seed,
                &self.config_nodes,
                &seen[i].status,
            );
            let name = self.nodes[i].name().to_string();
            let t = type_name(self.nodes[i].cfg.node_type);
            let is_seed = i == self.seed;
            match (&d, self.opts.mode) {
                (Decision::AlreadySo, _) => {
                    let what = if is_seed {
                        format!("seed, {t} node")
                    } else {
                        format!("already in the cluster of {seed} as a {t} node")
                    };
                    self.step(Tag::Same, &name, &what);
                }
                (Decision::Join, Mode::Check) => {
                    self.outcome.differences += 1;
                    self.step(
                        Tag::Differ,
                        &name,
                        &format!("not in the cluster of {seed} (standalone)"),
                    );
                }
                (Decision::Join, _) => {
                    self.outcome.planned += 1;
                    self.step(
                        Tag::Plan,
                        &name,
                        &format!(
                            "join {seed} as a {t} node: stop_app, {}, start_app (joining \
                             replaces {name}'s own data with the cluster's)",
                            rabbitmqctl::join_args(seed, self.nodes[i].cfg.node_type).join(" ")
                        ),
                    );
                }
                (Decision::ChangeType { from }, mode) => {
                    let text = format!("is a {} node, the config wants {t}", type_name(*from));
                    if mode == Mode::Check {
                        self.outcome.differences += 1;
                        self.step(Tag::Differ, &name, &text);
                    } else {
                        self.outcome.planned += 1;
                        self.step(
                            Tag::Plan,
                            &name,
                            &format!("{text}: stop_app, change_cluster_node_type {t}, start_app"),
                        );
                    }
                }
                (Decision::Foreign { others }, mode) => {
                    let text = if is_seed {
                        format!(
                            "the seed is clustered with nodes the config does not list: {}",
                            cluster::list(others)
                        )
                    } else {
                        format!(
                            "in another cluster (with {}), not in the cluster of {seed}",
                            cluster::list(others)
                        )
                    };
                    if mode == Mode::Check {
                        self.outcome.differences += 1;
                        self.step(Tag::Differ, &name, &text);
                    } else if self.opts.force_reset {
                        self.outcome.planned += 1;
                        self.step(
                            Tag::Warn,
                            &name,
                            &format!(
                                "{text}; --force-reset: `rabbitmqctl reset` deletes ALL data of \
                                 {name} (queues, messages, users, vhosts, policies) and takes it \
                                 out of that cluster"
                            ),
                        );
                        let then = if is_seed {
                            "start_app (standalone, the others join it)".to_string()
                        } else {
                            format!(
                                "{}, start_app",
                                rabbitmqctl::join_args(seed, self.nodes[i].cfg.node_type).join(" ")
                            )
                        };
                        self.step(Tag::Plan, &name, &format!("stop_app, reset, {then}"));
                    } else {
                        let reason = format!(
                            "{text}: refusing to change it, because that needs `rabbitmqctl \
                             reset`, which deletes the node's data. Rerun with --force-reset to \
                             allow it{}",
                            if is_seed {
                                ", or remove those nodes (`rabbitmqctl forget_cluster_node`)"
                            } else {
                                ""
                            }
                        );
                        self.step(Tag::Error, &name, &reason);
                        refused.get_or_insert(BootstrapError::Refused {
                            subject: name.clone(),
                            reason,
                        });
                    }
                }
            }
            decisions.push((i, d));
        }
        if let Some(e) = refused {
            return Err(e);
        }
        decisions.sort_by_key(|(i, _)| *i);
        Ok(decisions.into_iter().map(|(_, d)| d).collect())
    }

    // ---- 2. membership ------------------------------------------------------

    async fn converge(&mut self, decisions: Vec<Decision>) -> Result<(), BootstrapError> {
        if self.opts.mode != Mode::Apply {
            return Ok(());
        }
        let seed = self.seed_name();
        let mut was_reset = false;
        for i in self.order() {
            let mut d = decisions[i].clone();
            if d == Decision::AlreadySo && !was_reset {
                continue;
            }
            self.check_interrupt()?;
            let name = self.nodes[i].name().to_string();
            if was_reset {
                // A reset changed the membership other nodes saw during preflight
                // (a node that was in the seed's cluster may be in the rest of it).
                let status = self
                    .ctl
                    .cluster_status(&name)
                    .await
                    .map_err(|e| cli_error(&name, e, true))?;
                d = cluster::decide(&self.nodes[i].want(), seed, &self.config_nodes, &status);
                if d == Decision::AlreadySo {
                    self.step(
                        Tag::Same,
                        &name,
                        "still as the config wants it after the reset",
                    );
                    continue;
                }
                if d != decisions[i] {
                    let now = match &d {
                        Decision::Foreign { others } => format!(
                            "after the reset, in a cluster with {}: `rabbitmqctl reset` \
                             (--force-reset) deletes ALL data of {name}, then it joins {seed}",
                            cluster::list(others)
                        ),
                        Decision::Join => format!("after the reset, standalone: joins {seed}"),
                        Decision::ChangeType { from } => {
                            format!("after the reset, a {} node: changes type", type_name(*from))
                        }
                        Decision::AlreadySo => String::new(),
                    };
                    self.step(Tag::Warn, &name, &now);
                }
            }
            let node_type = self.nodes[i].cfg.node_type;
            let join = rabbitmqctl::join_args(seed, node_type);
            let type_arg = type_name(node_type);
            let commands: Vec<Vec<&str>> = match &d {
                Decision::AlreadySo => continue,
                Decision::Join => vec![join],
                Decision::ChangeType { .. } => vec![vec!["change_cluster_node_type", type_arg]],
                Decision::Foreign { .. } if !self.opts.force_reset => {
                    // Preflight refuses this; membership changed since.
                    return Err(BootstrapError::Refused {
                        subject: name,
                        reason: "joined another cluster during the run; rerun bootstrap".into(),
                    });
                }
                Decision::Foreign { .. } if i == self.seed => vec![vec!["reset"]],
                Decision::Foreign { .. } => vec![vec!["reset"], join],
            };
            if commands.iter().any(|c| c.first() == Some(&"reset")) {
                was_reset = true;
            }
            self.with_app_stopped(i, &commands).await?;
            self.outcome.changes += 1;
        }
        Ok(())
    }

    /// `stop_app`, the commands, then `start_app` whatever happened: a failed
    /// step never leaves the node's app stopped.
    async fn with_app_stopped(
        &mut self,
        i: usize,
        commands: &[Vec<&str>],
    ) -> Result<(), BootstrapError> {
        let name = self.nodes[i].name().to_string();
        self.restarted.push(i);
        let mut failure = match self.ctl.stop_app(&name).await {
            Ok(()) => {
                self.step(Tag::Change, &name, "stop_app");
                None
            }
            Err(e) => Some(("stop_app".to_string(), e)),
        };
        if failure.is_none() {
            for c in commands {
                match self.ctl.run(&name, c).await {
                    Ok(_) => self.step(Tag::Change, &name, &c.join(" ")),
                    Err(e) => {
                        failure = Some((c.join(" "), e));
                        break;
                    }
                }
            }
        }
        if let Some((what, e)) = &failure {
            self.step(
                Tag::Error,
                &name,
                &format!("{what} failed: {e}; starting the app again"),
            );
        }
        let started = match self.ctl.start_app(&name).await {
            Ok(()) => Ok(()),
            Err(_) => {
                // One retry: start_app right after a failed join can race the
                // node's own cleanup.
                tokio::time::sleep(Duration::from_secs(2)).await;
                self.ctl.start_app(&name).await
            }
        };
        match started {
            Ok(()) => self.step(Tag::Change, &name, "start_app"),
            Err(e) => {
                let detail = format!(
                    "start_app failed: {e}. The RabbitMQ app of {name} is STOPPED: start it with \
                     `{}`",
                    self.ctl.display(&name, &["start_app"])
                );
                self.step(Tag::Error, &name, &detail);
                return Err(BootstrapError::Failed {
                    subject: name,
                    detail,
                });
            }
        }
        match failure {
            None => Ok(()),
            Some((what, e)) => Err(BootstrapError::Failed {
                subject: name,
                detail: format!("{what} failed: {e}; the node's app was started again"),
            }),
        }
    }

    // ---- 3. verify ----------------------------------------------------------

    async fn verify(&mut self) -> Result<(), BootstrapError> {
        let seed = self.seed_name();
        let wanted: Vec<Wanted<'a>> = self.nodes.iter().map(Node::want).collect();
        if self.opts.mode == Mode::DryRun && self.outcome.planned > 0 {
            self.step(
                Tag::Plan,
                "cluster",
                &format!("verify cluster_status on {seed} against the config"),
            );
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let status = self
                .ctl
                .cluster_status(seed)
                .await
                .map_err(|e| cli_error(seed, e, true))?;
            let diffs = cluster::differences(&wanted, &status);
            if diffs.is_empty() {
                let ram = if status.ram_nodes_supported {
                    format!(", ram_nodes {}", cluster::list(&status.ram))
                } else {
                    String::new()
                };
                self.step(
                    Tag::Check,
                    "cluster",
                    &format!(
                        "cluster_status on {seed}: running_nodes {}, disk_nodes {}{ram}: as the config wants",
                        cluster::list(&status.running),
                        cluster::list(&status.disc),
                    ),
                );
                break;
            }
            if self.opts.mode != Mode::Apply || tokio::time::Instant::now() >= deadline {
                if self.opts.mode == Mode::Apply {
                    let detail = format!(
                        "after the changes, cluster_status on {seed} still differs: {}",
                        diffs.join("; ")
                    );
                    self.step(Tag::Error, "cluster", &detail);
                    return Err(BootstrapError::Failed {
                        subject: "cluster".into(),
                        detail,
                    });
                }
                for d in &diffs {
                    self.outcome.differences += 1;
                    self.step(
                        Tag::Differ,
                        "cluster",
                        &format!("cluster_status on {seed}: {d}"),
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Restarted nodes serve clients (and warren's health checks) only once
        // their management API is back.
        let restarted = std::mem::take(&mut self.restarted);
        for i in restarted {
            self.await_management(i).await?;
        }
        Ok(())
    }

    async fn await_management(&mut self, i: usize) -> Result<(), BootstrapError> {
        let name = self.nodes[i].name().to_string();
        let url = self.nodes[i].url.clone();
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let r = self.nodes[i]
                .api
                .request(Method::GET, "/api/overview", None)
                .await;
            match r {
                Ok(r) if r.status.is_success() => {
                    self.step(
                        Tag::Check,
                        &name,
                        &format!("management API {url} answers again"),
                    );
                    return Ok(());
                }
                r if tokio::time::Instant::now() >= deadline => {
                    let why = match r {
                        Ok(r) => format!("HTTP {}", r.status),
                        Err(e) => e.to_string(),
                    };
                    return Err(BootstrapError::Failed {
                        subject: name,
                        detail: format!(
                            "the app was started again but its management API {url} did not \
                             answer within {SETTLE_TIMEOUT:?}: {why}"
                        ),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    // ---- 4. replication ------------------------------------------------------

    async fn replication(&mut self, seen: &[Seen]) -> Result<(), BootstrapError> {
        let cluster: &'a ClusterConfig = self.cluster;
        let Some(r) = &cluster.replication else {
            return Ok(());
        };
        let newest = seen.iter().filter_map(|s| s.version).max();
        // Preflight refused an unknown version.
        let Ok((way, _)) = version::replication_way(newest) else {
            return Ok(());
        };
        for v in &r.vhosts {
            self.check_interrupt()?;
            let policy = |definition| PolicyConfig {
                name: REPLICATION_POLICY.into(),
                vhost: v.clone(),
                pattern: "^".into(),
                apply_to: ApplyTo::Queues,
                priority: 0,
                definition,
            };
            match way {
                Replication::Mirroring => {
                    self.ensure_policy(&policy(version::mirroring_definition()))
                        .await?
                }
                Replication::Quorum => {
                    self.ensure_quorum_default(v).await?;
                    if !r.quorum_policy.is_empty() {
                        self.ensure_policy(&policy(r.quorum_policy.clone())).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Quorum as the default queue type of `vhost`: compare, `PUT`, read back;
    /// then a warning for the classic queues that stay as they are.
    async fn ensure_quorum_default(&mut self, vhost: &str) -> Result<(), BootstrapError> {
        let api = self.nodes[self.seed].api.clone();
        let subject = format!("vhost {vhost}");
        let failed = |detail: String| BootstrapError::Failed {
            subject: subject.clone(),
            detail,
        };
        let path = vhost::path(vhost);
        let current = api
            .get_vhost(vhost)
            .await
            .map_err(|e| failed(e.to_string()))?
            .ok_or_else(|| failed(format!("GET {path}: the vhost does not exist (any more)")))?;
        let was = vhost::default_queue_type(&current).to_string();
        if was == vhost::QUORUM {
            self.step(
                Tag::Same,
                &subject,
                "default queue type is already quorum: queues declared without x-queue-type \
                 are quorum queues",
            );
        } else {
            let diff = format!(
                "default queue type is {was}, the config (cluster.replication) wants quorum"
            );
            match self.opts.mode {
                Mode::Check => {
                    self.outcome.differences += 1;
                    self.step(Tag::Differ, &subject, &diff);
                }
                Mode::DryRun => {
                    self.outcome.planned += 1;
                    self.step(
                        Tag::Plan,
                        &subject,
                        &format!(
                            "{diff}: PUT {path} {{\"default_queue_type\":\"quorum\"}} (keeping \
                             its description and tags), then read it back"
                        ),
                    );
                }
                Mode::Apply => {
                    let status = match api
                        .put_vhost(vhost, vhost::put_body(&current, vhost::QUORUM))
                        .await
                    {
                        Ok(s) => s,
                        Err(e) => {
                            let detail = format!("default queue type not set: {e}");
                            self.step(Tag::Error, &subject, &detail);
                            return Err(failed(detail));
                        }
                    };
                    let back = api.get_vhost(vhost).await.map_err(|e| {
                        failed(format!(
                            "PUT answered {status} but reading it back failed: {e}"
                        ))
                    })?;
                    let now = back.as_ref().map_or("absent", vhost::default_queue_type);
                    if now != vhost::QUORUM {
                        let detail = format!(
                            "default queue type not set: PUT {path} answered {status}, but \
                             reading it back shows {now}"
                        );
                        self.step(Tag::Error, &subject, &detail);
                        return Err(failed(detail));
                    }
                    self.outcome.changes += 1;
                    self.step(
                        Tag::Change,
                        &subject,
                        &format!(
                            "default queue type {was} -> quorum (PUT {path}: HTTP {status}), read \
                             back equal: queues declared without x-queue-type are quorum queues"
                        ),
                    );
                }
            }
        }
        if was == vhost::QUORUM {
            return Ok(());
        }
        // Existing queues keep their type: say which stay unreplicated (once, when
        // the default changes; later classic queues were asked for).
        match api.classic_queues(vhost).await {
            Ok(q) if q.is_empty() => {}
            Ok(q) => {
                let shown: Vec<&str> = q.iter().take(5).map(String::as_str).collect();
                let more = if q.len() > shown.len() { ", ..." } else { "" };
                self.step(
                    Tag::Warn,
                    &subject,
                    &format!(
                        "{} classic queue(s) ({}{more}) keep their type and are not replicated \
                         (a queue's type is fixed when it is declared), and a client declaring \
                         one again without x-queue-type gets an inequivalent-argument error \
                         (406) once the default is quorum: after draining them, delete them for \
                         the application to declare them again as quorum queues, move their \
                         messages with a shovel, or declare them with x-queue-type: classic \
                         (see docs/bootstrap.md)",
                        q.len(),
                        shown.join(", ")
                    ),
                );
            }
            Err(e) => self.step(
                Tag::Warn,
                &subject,
                &format!("cannot list its queues to find classic ones: {e}"),
            ),
        }
        Ok(())
    }

    // ---- 5. policies --------------------------------------------------------

    async fn policies(&mut self) -> Result<(), BootstrapError> {
        let cluster: &'a ClusterConfig = self.cluster;
        for p in &cluster.policies {
            self.check_interrupt()?;
            self.ensure_policy(p).await?;
        }
        Ok(())
    }

    /// One policy through the seed's management API: compare, `PUT`, read back.
    async fn ensure_policy(&mut self, p: &PolicyConfig) -> Result<(), BootstrapError> {
        let api = self.nodes[self.seed].api.clone();
        let subject = policy_subject(p);
        let failed = |detail: String| BootstrapError::Failed {
            subject: subject.clone(),
            detail,
        };
        let actual = api.get_policy(p).await.map_err(|e| failed(e.to_string()))?;
        let diffs = match &actual {
            None => vec!["absent".to_string()],
            Some(a) => policy::differences(p, a),
        };
        if diffs.is_empty() {
            self.step(Tag::Same, &subject, "already set as the config wants");
            return Ok(());
        }
        match self.opts.mode {
            Mode::Check => {
                for d in &diffs {
                    self.outcome.differences += 1;
                    self.step(Tag::Differ, &subject, d);
                }
            }
            Mode::DryRun => {
                self.outcome.planned += 1;
                self.step(
                    Tag::Plan,
                    &subject,
                    &format!(
                        "PUT {} ({}), then read it back",
                        policy::path(p),
                        diffs.join("; ")
                    ),
                );
            }
            Mode::Apply => {
                let status = match api.put_policy(p).await {
                    Ok(s) => s,
                    Err(e) => {
                        let detail = format!("not applied: {e}");
                        self.step(Tag::Error, &subject, &detail);
                        return Err(failed(detail));
                    }
                };
                let back = api.get_policy(p).await.map_err(|e| {
                    failed(format!(
                        "PUT answered {status} but reading it back failed: {e}"
                    ))
                })?;
                let left = match &back {
                    None => vec!["absent".to_string()],
                    Some(b) => policy::differences(p, b),
                };
                if !left.is_empty() {
                    let detail = format!(
                        "not applied: PUT answered {status}, but reading it back shows: {}",
                        left.join("; ")
                    );
                    self.step(Tag::Error, &subject, &detail);
                    return Err(failed(detail));
                }
                let was = if actual.is_none() {
                    "created"
                } else {
                    "updated"
                };
                self.outcome.changes += 1;
                self.step(
                    Tag::Change,
                    &subject,
                    &format!(
                        "{was} (PUT {}: HTTP {status}), read back equal",
                        policy::path(p)
                    ),
                );
            }
        }
        Ok(())
    }
}

/// The read-only checks of one node, run on their own task; the steps are
/// kept to be printed in order.
struct Probe {
    name: String,
    url: String,
    backend: String,
    index: usize,
    is_seed: bool,
    api: Api,
    ctl: Rabbitmqctl,
    steps: Vec<(Tag, String)>,
}

impl Probe {
    fn step(&mut self, tag: Tag, message: String) {
        self.steps.push((tag, message));
    }

    async fn run(mut self, cookie: Option<(String, String)>) -> Probed {
        let mgmt = self.check_management().await;
        let cli = self.check_cli(mgmt.is_ok(), cookie.as_ref()).await;
        let mut errors = Vec::new();
        let version = match mgmt {
            Ok(v) => v,
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let status = match cli {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        Probed {
            steps: self.steps,
            version,
            status,
            errors,
        }
    }

    /// `GET /api/overview`: reachable, the right node, its version.
    async fn check_management(&mut self) -> Result<Option<Version>, BootstrapError> {
        let (name, url) = (self.name.clone(), self.url.clone());
        let r = self
            .api
            .request(Method::GET, "/api/overview", None)
            .await
            .map_err(|e| BootstrapError::Unreachable {
                node: name.clone(),
                detail: format!("management API {url}: {e}"),
            })?;
        if r.status == StatusCode::UNAUTHORIZED {
            return Err(BootstrapError::Credentials {
                node: name,
                user: self.api.credentials.username.clone(),
            });
        }
        if !r.status.is_success() {
            return Err(BootstrapError::Unreachable {
                node: name,
                detail: format!(
                    "management API {url}: GET /api/overview answered HTTP {}",
                    r.status
                ),
            });
        }
        let overview = r.json().unwrap_or_default();
        let actual = overview["node"].as_str().unwrap_or("");
        if actual != name {
            return Err(BootstrapError::Refused {
                subject: name.clone(),
                reason: format!(
                    "the management API {url} (backend `{}`) belongs to node `{actual}`, not \
                     to `{name}`: check cluster.nodes[{}] and the backend's management URL",
                    self.backend, self.index
                ),
            });
        }
        let raw = overview["rabbitmq_version"].as_str().unwrap_or("");
        let version = Version::parse(raw);
        let erlang = overview["erlang_version"].as_str().unwrap_or("?");
        match version {
            Some(_) => self.step(
                Tag::Check,
                format!("management API {url} answers: RabbitMQ {raw}, Erlang {erlang}"),
            ),
            None => self.step(
                Tag::Warn,
                format!(
                    "management API {url} answers but gives no RabbitMQ version I can read \
                     (`{raw}`); version checks are skipped for it"
                ),
            ),
        }
        Ok(version)
    }

    /// `rabbitmqctl cluster_status`: the CLI reaches the node (so the cookie is
    /// accepted) and what the node thinks its cluster is.
    async fn check_cli(
        &mut self,
        management_ok: bool,
        cookie: Option<&(String, String)>,
    ) -> Result<ClusterStatus, BootstrapError> {
        let name = self.name.clone();
        let status = self
            .ctl
            .cluster_status(&name)
            .await
            .map_err(|e| cli_error(&name, e, management_ok))?;
        let role = if self.is_seed { "seed, " } else { "" };
        self.step(
            Tag::Check,
            format!(
                "rabbitmqctl reaches it ({role}cookie accepted): cluster members {}, running {}",
                cluster::list(&status.members()),
                cluster::list(&status.running)
            ),
        );
        if let Some((file, want)) = cookie {
            let have = self
                .ctl
                .cookie(&name)
                .await
                .map_err(|e| cli_error(&name, e, management_ok))?;
            if &have != want {
                return Err(BootstrapError::Cookie {
                    node: name,
                    detail: format!(
                        "the node runs with another Erlang cookie than {file} \
                         (cluster.erlang_cookie_file); rabbitmqctl reached it with the node's \
                         own cookie, so rabbitmqctl does not use that file either. Fix: \
                         {COOKIE_FIX}"
                    ),
                });
            }
            self.step(Tag::Check, format!("runs with the cookie in {file}"));
        }
        Ok(status)
    }
}

fn type_name(t: NodeType) -> &'static str {
    match t {
        NodeType::Disc => "disc",
        NodeType::Ram => "ram",
    }
}

fn policy_subject(p: &PolicyConfig) -> String {
    format!("policy {} (vhost {})", p.name, p.vhost)
}

/// An error's text for a report line, without the node name its subject already shows.
fn problem_text(e: &BootstrapError) -> String {
    match e {
        BootstrapError::Unreachable { detail, .. } => format!("not reachable: {detail}"),
        BootstrapError::Cookie { detail, .. } => format!("Erlang cookie mismatch: {detail}"),
        BootstrapError::Protocol { detail, .. } => {
            format!("rabbitmqctl answered, but not as expected: {detail}")
        }
        BootstrapError::Refused { reason, .. } => format!("refused: {reason}"),
        other => other.to_string(),
    }
}

/// A rabbitmqctl failure during a read-only step, as a bootstrap error.
fn cli_error(node: &str, e: CtlError, management_ok: bool) -> BootstrapError {
    let node = node.to_string();
    match e {
        CtlError::Cookie { detail, .. } => {
            let up = if management_ok {
                "the node is up (its management API answers) but "
            } else {
                ""
            };
            BootstrapError::Cookie {
                detail: format!(
                    "{up}it rejected rabbitmqctl's Erlang cookie ({detail}). Fix: {COOKIE_FIX}"
                ),
                node,
            }
        }
        // The node answered: what it said is not what bootstrap expects (a CLI of
        // another version, output it cannot parse). Not "unreachable".
        e @ (CtlError::Failed { .. } | CtlError::Output { .. }) => BootstrapError::Protocol {
            detail: format!("rabbitmqctl: {e}"),
            node,
        },
        e => BootstrapError::Unreachable {
            detail: format!("rabbitmqctl: {e}"),
            node,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Steps;

    impl Report for Steps {
        fn step(&mut self, _: Tag, _: &str, _: &str) {}
    }

    #[tokio::test]
    async fn an_oversized_cookie_file_is_refused_by_name() {
        let cookie = std::env::temp_dir().join(format!(
            "warren-bootstrap-unit-cookie-{}",
            std::process::id()
        ));
        let len = crate::config::MAX_SECRET_FILE as usize + 1;
        std::fs::write(&cookie, "x".repeat(len)).expect("write cookie file");
        // Nothing listens on port 1 and /bin/false fails: the run must stop at the cookie.
        let config = Config::from_yaml(
            &format!(
                "listen: 127.0.0.1:5672
backends: [{{name: a, address: '127.0.0.1:1', management: 'http://127.0.0.1:1'}}]
cluster:
  erlang_cookie_file: '{}'
  rabbitmqctl: /bin/false
  nodes: [{{backend: a, node: rabbit@a}}]
",
                cookie.display()
            ),
            Path::new("test.yaml"),
        )
        .expect("valid config");
        let opts = Options {
            mode: Mode::Check,
            force_reset: false,
        };
        let result = run(
            &config,
            Path::new("test.yaml"),
            opts,
            &CancellationToken::new(),
            &mut Steps,
        )
        .await;
        let _ = std::fs::remove_file(&cookie);
        let e = result.expect_err("an oversized cookie file").error;
        let text = e.to_string();
        assert!(matches!(e, BootstrapError::Config(_)), "{text}");
        assert!(
            text.contains("key `cluster.erlang_cookie_file`")
                && text.contains(&cookie.display().to_string())
                && text.contains("larger than"),
            "{text}"
        );
        assert!(!text.contains("xxxx"), "{text}");
    }
}
