//! The configuration file: parsed once into validated types.
//!
//! Every struct rejects unknown keys, every default is stated here (and in
//! `config/warren.yaml`), and every error names the file, the key and what was
//! expected, so `warren check` can exit 64 with a useful message.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod accept_proxy;
pub mod address;
pub mod clients;
pub mod cluster;
mod error;
mod health_checks;
pub mod listeners;
mod locate;
pub mod log;
pub mod management;
pub mod operations;
pub mod values;

pub use accept_proxy::{AcceptProxyConfig, Network, TrustedNetworks};
pub use address::{split_host_port, Authority, Endpoint, HostName};
pub use clients::{ClientMetrics, ClientsConfig, Limit, LimitsConfig, NetworkLimit, Rate};
pub use cluster::{
    ApplyTo, ClusterConfig, ClusterNode, NodeType, PolicyConfig, ReplicationConfig,
    REPLICATION_POLICY,
};
pub use error::{did_you_mean, ConfigError};
pub use listeners::{ListenerConfig, ListenerProtocol, ListenerTls};
pub use locate::Spot;
pub use management::{ManagementTls, ManagementTlsConfig};
pub use operations::{OperationsConfig, OperationsNode, SharedStateConfig};
use values::{non_zero, opt_socket_addr, socket_addr};
pub use values::{
    read_limited, read_limited_to_string, HumanDuration, PositiveDuration, Secret, MAX_CONFIG_FILE,
    MAX_SECRET_FILE,
};

/// The whole file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where AMQP clients connect (plain TCP). Optional when `tls` has a listener.
    #[serde(
        deserialize_with = "opt_socket_addr",
        skip_serializing_if = "Option::is_none"
    )]
    pub listen: Option<SocketAddr>,
    /// PROXY protocol headers accepted on `listen` (docs/tls.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_proxy: Option<AcceptProxyConfig>,
    /// Where AMQPS clients connect: TLS termination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsListenConfig>,
    /// More listeners, each with a name and a protocol (docs/protocols.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerConfig>,
    pub admin: AdminConfig,
    pub balance: Balance,
    /// What clients speak: `amqp` (checked before a backend is chosen) or `tcp`.
    pub protocol: Protocol,
    /// Cap on concurrent client connections; beyond it new ones are refused at once.
    pub max_connections: usize,
    /// How many other backends to try when connecting to one fails.
    pub retries: usize,
    pub timeouts: Timeouts,
    pub backends: Vec<BackendConfig>,
    pub health: HealthConfig,
    pub drain: DrainConfig,
    pub rebalance: RebalanceConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    pub reload: ReloadConfig,
    /// What warren reads of each AMQP connection, and its limits (docs/clients.md).
    pub clients: ClientsConfig,
    /// Maintenance mode, rolling restarts, the shared operator state.
    pub operations: OperationsConfig,
    /// How long payloads move (docs/performance.md).
    pub data_path: DataPathConfig,
}

impl Default for Config {
    /// Every default; no listener and no backend (which validation requires).
    fn default() -> Self {
        Config {
            listen: None,
            accept_proxy: None,
            tls: None,
            listeners: Vec::new(),
            admin: AdminConfig::default(),
            balance: Balance::default(),
            protocol: Protocol::default(),
            max_connections: 10_000,
            retries: 2,
            timeouts: Timeouts::default(),
            backends: Vec::new(),
            health: HealthConfig::default(),
            drain: DrainConfig::default(),
            rebalance: RebalanceConfig::default(),
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
            cluster: None,
            reload: ReloadConfig::default(),
            clients: ClientsConfig::default(),
            operations: OperationsConfig::default(),
            data_path: DataPathConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin HTTP listener: /healthz /readyz /metrics /api/...
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// When set, every mutating request (POST) must carry
    /// `Authorization: Bearer <token>`; the token is read from this file...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// ...or from this environment variable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Names (`host` or `host:port`) the API answers to in the `Host` header,
    /// besides its own address (see `admin::guard`); no port means any port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<Authority>,
}

impl AdminConfig {
    /// The bearer token for mutating requests, if one is configured.
    pub fn resolve_token(&self) -> Result<Option<Secret>, String> {
        let token = if let Some(f) = &self.token_file {
            read_limited_to_string(f, MAX_SECRET_FILE)
                .map_err(|e| format!("cannot read {}: {e}", f.display()))?
                .trim()
                .to_string()
        } else if let Some(var) = &self.token_env {
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
        } else {
            return Ok(None);
        };
        if token.len() < 16 {
            return Err("expected a token of at least 16 characters".to_string());
        }
        Ok(Some(Secret(token)))
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8404)),
            token_file: None,
            token_env: None,
            allowed_hosts: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
}

/// What the client listeners carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// AMQP 0-9-1: a client must start with the protocol header within
    /// `timeouts.handshake`; drains close at a frame boundary with 320.
    #[default]
    Amqp,
    /// Any TCP protocol (RabbitMQ's stream, MQTT or STOMP ports; a benchmark's
    /// iperf3): no header check; a drain closes such connections hard (no
    /// frames to follow), still paced over `drain.window`, as HAProxy's `mode tcp`.
    Tcp,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Connecting to one backend (HAProxy `timeout connect`).
    pub connect: HumanDuration,
    /// Idle time after which a client connection is closed; off by default because
    /// AMQP heartbeats already detect dead peers and an idle timeout shorter than the
    /// heartbeat kills healthy connections (HAProxy `timeout client`/`timeout server`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<HumanDuration>,
    /// A client must send its first bytes (the AMQP protocol header) within this
    /// time, or it is closed before any backend is involved (RabbitMQ's own
    /// `handshake_timeout` is 10 s).
    pub handshake: PositiveDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: HumanDuration::secs(5),
            idle: None,
            handshake: PositiveDuration::secs(10),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Unique name, used in logs, metrics and the admin API.
    pub name: String,
    /// The node's AMQP port, `host:port`.
    pub address: String,
    /// The node's management API base URL, e.g. `http://127.0.0.1:15672` or
    /// `https://node1:15671`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management: Option<String>,
    /// TLS for an `https://` `management` URL, key by key over
    /// `health.management_tls` (config/management.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management_tls: Option<ManagementTlsConfig>,
    /// Connect to the node with TLS (for nodes that listen only on AMQPS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTlsConfig>,
    /// Send a PROXY protocol header first, so the node (with `proxy_protocol = true`)
    /// sees the client's address instead of warren's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_proxy: Option<ProxyVersion>,
    /// The node's port for each protocol or listener of `listeners:` (`stream:
    /// 5552`, `mqtt: 1883`, `stomp: 61613`, `http`: the management URL's port
    /// are the defaults; `tls` and `send_proxy` apply to AMQP only).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ports: std::collections::BTreeMap<String, u16>,
}

/// TLS termination: a listener for AMQPS clients.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenConfig {
    /// Where AMQPS clients connect, e.g. `0.0.0.0:5671`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Certificate chain, PEM, the server's certificate first.
    pub cert: PathBuf,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates, PEM: when set, clients must present a certificate that
    /// chains to one of them (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// PROXY protocol headers accepted on this listener, before the TLS handshake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_proxy: Option<AcceptProxyConfig>,
}

/// TLS origination: how warren connects to a node over TLS.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendTlsConfig {
    /// CA certificates, PEM, that the node's certificate must chain to.
    /// Required while `verify` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The name the node's certificate must carry; defaults to the host part of
    /// `address`. Also sent as SNI (unless it is an IP address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Verify the node's certificate against `ca` and `server_name`.
    pub verify: bool,
    /// A client certificate chain, PEM, for nodes that require one
    /// (`ssl_options.fail_if_no_peer_cert = true`); `key` must come with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl Default for BackendTlsConfig {
    fn default() -> Self {
        BackendTlsConfig {
            ca: None,
            server_name: None,
            verify: true,
            cert: None,
            key: None,
        }
    }
}

/// PROXY protocol version: `v1` (text) or `v2` (binary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    V1,
    V2,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between two checks of a backend (HAProxy `inter`).
    pub interval: PositiveDuration,
    /// Time one check may take (HAProxy `timeout check`).
    pub timeout: PositiveDuration,
    /// Consecutive successes that bring a down backend up (HAProxy `rise`).
    #[serde(deserialize_with = "non_zero")]
    pub rise: NonZeroU32,
    /// Consecutive failures that take an up backend down (HAProxy `fall`).
    #[serde(deserialize_with = "non_zero")]
    pub fall: NonZeroU32,
    /// Management API user for health checks.
    pub username: String,
    /// Management API password. Prefer `password_file` or `password_env`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Management API checks, each `GET /api/health/checks/<name>`: `auto` (the
    /// list that fits each node's RabbitMQ version, docs/health-checks.md), a
    /// list, honoured as written, or `none` (the TCP connect only). Per-node checks only: the cluster-wide `alarms`
    /// check fails on every node when one node has an alarm, so it would take the
    /// whole cluster out.
    pub checks: Checks,
    /// What a memory or disk alarm on a node (the `local-alarms` check) does:
    /// `stop-new` (no new connections, existing ones kept so consumers keep
    /// draining it), `drain` (also close existing ones, paced), `ignore`.
    pub on_alarm: OnAlarm,
    /// TLS for every `https://` management URL (health checks and bootstrap);
    /// a backend's `management_tls` overrides it key by key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management_tls: Option<ManagementTlsConfig>,
    /// Probe interval while a backend's state is changing (HAProxy `fastinter`).
    pub fast_interval: PositiveDuration,
    /// Probe interval while a backend is down (HAProxy `downinter`).
    pub down_interval: PositiveDuration,
    /// A backend that comes back receives new connections gradually over this
    /// time (HAProxy `slowstart`); `0s` turns it off.
    pub slowstart: HumanDuration,
}

/// `health.checks`: chosen per node from its version, or the operator's list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Checks {
    /// The list that fits each node's RabbitMQ version (`health::plan`).
    #[default]
    Auto,
    /// No management check: the TCP connect to the AMQP port only. Written
    /// `none`; never the result of missing credentials.
    None,
    /// These checks on every node, in this order.
    List(Vec<String>),
}

impl Serialize for Checks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Checks::Auto => s.serialize_str("auto"),
            Checks::None => s.serialize_str("none"),
            Checks::List(l) => l.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Checks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected `auto`, `none` or a list of check names")
        })? {
            Raw::Word(w) if w == "auto" => Ok(Checks::Auto),
            Raw::Word(w) if w == "none" => Ok(Checks::None),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "expected `auto`, `none` (TCP connect only) or a list of check names, got `{w}`"
            ))),
            Raw::List(l) => Ok(Checks::List(l)),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnAlarm {
    #[default]
    StopNew,
    Drain,
    Ignore,
}

impl OnAlarm {
    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnAlarm::StopNew => "stop-new",
            OnAlarm::Drain => "drain",
            OnAlarm::Ignore => "ignore",
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: PositiveDuration::secs(2),
            timeout: PositiveDuration::secs(1),
            rise: NonZeroU32::MIN.saturating_add(1),
            fall: NonZeroU32::MIN.saturating_add(2),
            username: "guest".to_string(),
            password: None,
            password_file: None,
            password_env: None,
            checks: Checks::Auto,
            on_alarm: OnAlarm::default(),
            management_tls: None,
            fast_interval: PositiveDuration::millis(500),
            down_interval: PositiveDuration::secs(5),
            slowstart: HumanDuration::secs(10),
        }
    }
}

impl HealthConfig {
    /// The management API password, from wherever the config says it lives.
    /// Defaults to `guest` when none is given (RabbitMQ's default user).
    pub fn resolve_password(&self) -> Result<Secret, String> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        if let Some(f) = &self.password_file {
            return read_limited_to_string(f, MAX_SECRET_FILE)
                .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|e| format!("cannot read {}: {e}", f.display()));
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map(Secret)
                .map_err(|_| format!("environment variable {var} is not set"));
        }
        Ok(Secret("guest".to_string()))
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// Graceful closes of a drained backend's connections are spread over this window.
    pub window: HumanDuration,
    /// After this, connections still open on a drained backend are closed hard.
    pub grace: HumanDuration,
    /// How long one connection may take to answer `connection.close` with `close-ok`.
    pub close_timeout: HumanDuration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            window: HumanDuration::secs(10),
            grace: HumanDuration::secs(30),
            close_timeout: HumanDuration::secs(5),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebalanceConfig {
    /// Move connections onto a node that returns (closing them, paced, on the
    /// most loaded nodes). Off by default: only clients that reconnect after a
    /// broker close can take it.
    pub enabled: bool,
    /// Accepted spread: max - min <= tolerance x mean connections per node.
    pub tolerance: f64,
    /// Closes of one round are spread over this window.
    pub window: HumanDuration,
    /// At most this share of all connections is closed per round.
    pub max_fraction: f64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            enabled: false,
            tolerance: 0.2,
            window: HumanDuration::secs(30),
            max_fraction: 0.25,
        }
    }
}

/// How long payloads (AMQP bodies of 16 KiB and more, any stream that is not
/// AMQP) move between the sockets.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataPathConfig {
    /// Through kernel pipes with splice(2) (the bytes stay in the kernel,
    /// warren's own CPU per GB falls, its peers' rises); `false`, the default:
    /// copied through pooled buffers, which on loopback moves as much or more
    /// for less CPU of the whole machine (docs/performance.md). A connection
    /// that gets no pipe copies (logged once, counted in
    /// `warren_splice_fallbacks_total`). TLS connections always copy. Read
    /// when a connection starts.
    pub splice: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM, open connections get `connection.close` and this long to finish.
    pub grace: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: HumanDuration::secs(10),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human-readable) or `json`.
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `warren=debug`); `RUST_LOG` overrides it.
    pub level: String,
    /// One line per client connection at its end (target `warren::access`, at
    /// `info`); read at each connection's end, so a reload switches it.
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: "info".to_string(),
            access: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Hot reload (SIGHUP and `POST /api/reload` always work; this adds a file watch).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when the config file's content changes (checked by polling).
    pub watch: bool,
    /// How often the watched file is read and compared.
    pub watch_interval: PositiveDuration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: false,
            watch_interval: PositiveDuration::secs(2),
        }
    }
}

/// The name of the policy `cluster.replication` manages in each of its vhosts.
/// How the YAML parser reads a config file.
///
/// No source snippet in errors: the lines around a mistake may hold a password,
/// and these messages reach logs and the admin API (line and column remain).
///
/// Limits sized for a config file: serde-saphyr's defaults suit big documents
/// (250,000 nodes, 64 MiB of text, 1,000,000 events replayed from aliases), so a
/// 1 KiB alias bomb in a free-form value (`cluster.policies[].definition`) could
/// expand to 60 MB or take seconds to be refused. A real config has a few
/// hundred nodes and a handful of anchors (a `tls` block shared by backends).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_nodes: YAML_MAX_NODES,
            max_events: 2 * YAML_MAX_NODES + 5_000,
            max_depth: YAML_MAX_DEPTH,
            max_anchors: YAML_MAX_ALIASES,
            max_aliases: YAML_MAX_ALIASES,
            max_recorded_anchor_events: YAML_MAX_REPLAYED,
            max_recorded_anchor_bytes: MAX_CONFIG_FILE as usize,
            max_total_scalar_bytes: MAX_CONFIG_FILE as usize,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: YAML_MAX_REPLAYED,
            max_replay_stack_depth: YAML_MAX_DEPTH,
        },
    }
}

const YAML_MAX_NODES: usize = 10_000;
const YAML_MAX_DEPTH: usize = 16;
const YAML_MAX_ALIASES: usize = 100;
/// Events copied from anchors for their aliases, in all.
const YAML_MAX_REPLAYED: usize = 2_000;

/// Whether a parse error is one of the limits of [`yaml_options`].
fn over_yaml_limits(e: &serde_saphyr::Error) -> bool {
    use serde_saphyr::Error as E;
    matches!(
        error::innermost(e),
        E::Budget { .. }
            | E::AliasReplayLimitExceeded { .. }
            | E::AliasExpansionLimitExceeded { .. }
            | E::AliasReplayStackDepthExceeded { .. }
    )
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            read_limited_to_string(path, MAX_CONFIG_FILE).map_err(|source| ConfigError::Read {
                file: path.to_path_buf(),
                source,
            })?;
        Config::from_yaml(&text, path)
    }

    /// Parses and validates YAML text; `path` only names the file in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        if text.len() as u64 > MAX_CONFIG_FILE {
            return Err(ConfigError::Parse {
                file: path.to_path_buf(),
                at: None,
                message: format!("the file is larger than {MAX_CONFIG_FILE} bytes"),
            });
        }
        // The key a value was refused at, for the error (the parser's message
        // ends with the line and column).
        let mut key = None;
        let parsed =
            serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(), |de| {
                serde_path_to_error::deserialize(de).map_err(|e| {
                    key = Some(e.path().to_string());
                    e.into_inner()
                })
            });
        let config: Config = parsed.map_err(|e| {
            let message = if over_yaml_limits(&e) {
                format!(
                    "{} (a config file may hold at most {YAML_MAX_NODES} YAML nodes, \
                     nested at most {YAML_MAX_DEPTH} deep, {YAML_MAX_ALIASES} anchors \
                     and {YAML_MAX_ALIASES} aliases, and its aliases may repeat at most \
                     {YAML_MAX_REPLAYED} YAML events in all)",
                    error::wording(&e)
                )
            } else {
                error::wording(&e)
            };
            let at = e.location().and_then(Spot::of);
            // A key set twice fails in the parser, before serde knows its path.
            let key = match error::innermost(&e) {
                serde_saphyr::Error::DuplicateMappingKey { .. } => {
                    at.and_then(|at| locate::Locator::new(text)?.key_at(at))
                }
                _ => key,
            };
            match key.filter(|k| k != "." && !k.contains('?')) {
                Some(key) => ConfigError::Invalid {
                    file: path.to_path_buf(),
                    at,
                    key,
                    message,
                },
                None => ConfigError::Parse {
                    file: path.to_path_buf(),
                    at,
                    message,
                },
            }
        })?;
        config.validate(path).map_err(|e| e.located(text))?;
        Ok(config)
    }

    /// The effective config, every default filled in, as YAML.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::invalid(file, key, message);
        if self.backends.is_empty() {
            return Err(invalid(
                "backends".into(),
                "expected at least one backend".into(),
            ));
        }
        if self.listen.is_none() && self.accept_proxy.is_some() {
            return Err(invalid(
                "accept_proxy".into(),
                "the plain listener's PROXY settings, but there is no `listen`: set \
                 `listen`, or move them to `tls.accept_proxy`"
                    .into(),
            ));
        }
        if self.listen.is_none() && self.tls.is_none() && self.listeners.is_empty() {
            return Err(invalid(
                "listen".into(),
                "expected a listener: `listen`, `tls.listen` or `listeners`".into(),
            ));
        }
        if let (Some(plain), Some(t)) = (self.listen, &self.tls) {
            if plain == t.listen && plain.port() != 0 {
                return Err(invalid(
                    "tls.listen".into(),
                    format!("expected an address other than `listen` ({plain})"),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid(
                "max_connections".into(),
                "expected a number greater than 0".into(),
            ));
        }
        if self.timeouts.connect.get().is_zero() {
            return Err(invalid(
                "timeouts.connect".into(),
                "expected a duration greater than 0".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut addresses = std::collections::HashMap::new();
        for (i, b) in self.backends.iter().enumerate() {
            if !valid_name(&b.name) {
                return Err(invalid(
                    format!("backends[{i}].name"),
                    format!(
                        "expected a non-empty name of letters, digits, `-`, `_` or `.`, got `{}`",
                        b.name
                    ),
                ));
            }
            if !names.insert(b.name.as_str()) {
                return Err(invalid(
                    format!("backends[{i}].name"),
                    format!("backend name `{}` is used twice", b.name),
                ));
            }
            let Some((host, port)) = split_host_port(&b.address) else {
                return Err(invalid(
                    format!("backends[{i}].address"),
                    format!("expected `host:port`, got `{}`", b.address),
                ));
            };
            let at = (host.to_ascii_lowercase(), port);
            if let Some(first) = addresses.insert(at, i) {
                return Err(invalid(
                    format!("backends[{i}].address"),
                    format!(
                        "`{}` is also the address of backend `{}` (backends[{first}]): \
                         one node listed twice gets twice its share of connections",
                        b.address, self.backends[first].name
                    ),
                ));
            }
            if let Some(m) = &b.management {
                if let Err(e) = Endpoint::parse(m) {
                    return Err(invalid(format!("backends[{i}].management"), e.to_string()));
                }
            }
        }
        management::validate(self.health.management_tls.as_ref(), &self.backends)
            .map_err(|(key, message)| invalid(key, message))?;
        if self.admin.token_file.is_some() && self.admin.token_env.is_some() {
            return Err(invalid(
                "admin.token_file".into(),
                "expected only one of `token_file`, `token_env`".into(),
            ));
        }
        let h = &self.health;
        let listed: &[String] = match &h.checks {
            Checks::Auto | Checks::None => &[],
            Checks::List(l) => l,
        };
        if matches!(&h.checks, Checks::List(l) if l.is_empty()) {
            return Err(invalid(
                "health.checks".into(),
                "expected at least one check; for the TCP connect check only, write \
                 `checks: none`"
                    .into(),
            ));
        }
        for (i, c) in listed.iter().enumerate() {
            if let Err(e) = health_checks::validate(c) {
                return Err(invalid(format!("health.checks[{i}]"), e));
            }
        }
        let r = &self.rebalance;
        if !(r.tolerance >= 0.0 && r.tolerance.is_finite()) {
            return Err(invalid(
                "rebalance.tolerance".into(),
                format!("expected a number >= 0, got {}", r.tolerance),
            ));
        }
        if !(r.max_fraction > 0.0 && r.max_fraction <= 1.0) {
            return Err(invalid(
                "rebalance.max_fraction".into(),
                format!("expected a number in (0, 1], got {}", r.max_fraction),
            ));
        }
        let sources = [
            h.password.is_some(),
            h.password_file.is_some(),
            h.password_env.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(invalid(
                "health.password".into(),
                "expected only one of `password`, `password_file`, `password_env`".into(),
            ));
        }
        if let Err(e) = log::filter(&self.log.level) {
            return Err(invalid(
                "log.level".into(),
                format!("expected a tracing filter such as `info` or `warren=debug`: {e}"),
            ));
        }
        log::lint(&self.log.level).map_err(|e| invalid("log.level".into(), e))?;
        self.validate_listeners()
            .map_err(|(key, message)| invalid(key, message))?;
        self.clients
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        if self.protocol == Protocol::Tcp && !self.clients.limits.is_empty() {
            return Err(invalid(
                "clients.limits".into(),
                "limits apply at AMQP's connection.open, and `protocol: tcp` follows no AMQP"
                    .into(),
            ));
        }
        if let Some(c) = &self.cluster {
            let backends: Vec<&str> = self.backends.iter().map(|b| b.name.as_str()).collect();
            c.validate(&backends)
                .map_err(|(key, message)| invalid(key, message))?;
        }
        let backends: Vec<&str> = self.backends.iter().map(|b| b.name.as_str()).collect();
        self.operations
            .validate(&backends)
            .map_err(|(key, message)| invalid(key, message))?;
        Ok(())
    }
}

impl Config {
    /// The listeners bind distinct addresses (port 0, "any free port", aside).
    fn validate_listeners(&self) -> Result<(), (String, String)> {
        let admin = self.admin.listen;
        let clash = [
            ("listen", self.listen),
            ("tls.listen", self.tls.as_ref().map(|t| t.listen)),
        ]
        .into_iter()
        .find(|(_, a)| admin.port() != 0 && *a == Some(admin));
        if let Some((key, _)) = clash {
            return Err((
                "admin.listen".into(),
                format!("`{admin}` is also `{key}`: each listener needs an address of its own"),
            ));
        }
        let taken: Vec<(String, SocketAddr)> = [
            ("admin.listen", Some(admin)),
            ("listen", self.listen),
            ("tls.listen", self.tls.as_ref().map(|t| t.listen)),
        ]
        .into_iter()
        .filter_map(|(k, a)| Some((k.to_string(), a?)))
        .collect();
        listeners::validate(&self.listeners, &self.backends, &taken)
    }

    /// Settings that parse and run but contradict each other: `warren check`
    /// prints them, start-up and reload log them. Each is a key and a message.
    pub fn warnings(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let admin = &self.admin;
        if !admin.listen.ip().is_loopback()
            && admin.token_file.is_none()
            && admin.token_env.is_none()
        {
            out.push((
                "admin.listen".into(),
                format!(
                    "`{}` is reachable beyond loopback and no admin token is set: anyone \
                     who reaches it can drain, disable and enable backends and reload the \
                     config; set `admin.token_file` or `admin.token_env` (docs/security.md, \
                     \"Admin API threat model\")",
                    admin.listen
                ),
            ));
        }
        let h = &self.health;
        if h.timeout.get() > h.interval.get() {
            out.push((
                "health.timeout".into(),
                format!(
                    "`{}` is longer than `health.interval` ({}): a probe of a hung node \
                     takes the whole timeout, so such a node is probed every {} at best, \
                     not every {}",
                    h.timeout,
                    h.interval,
                    HumanDuration(h.timeout.get() + h.interval.get()),
                    h.interval
                ),
            ));
        }
        let d = &self.drain;
        if d.window > d.grace {
            out.push((
                "drain.window".into(),
                format!(
                    "`{}` is longer than `drain.grace` ({}): the graceful closes planned \
                     after the grace become hard closes",
                    d.window, d.grace
                ),
            ));
        }
        if d.close_timeout > d.grace {
            out.push((
                "drain.close_timeout".into(),
                format!(
                    "`{}` is longer than `drain.grace` ({}): a client never gets the \
                     whole close timeout before the hard close",
                    d.close_timeout, d.grace
                ),
            ));
        }
        out
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
pub(crate) mod test_util;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_util::TempFile;
    use std::time::Duration;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(s, Path::new("test.yaml"))
    }

    #[test]
    fn health_checks_are_auto_or_a_list() {
        let parse = |checks: &str| {
            Config::from_yaml(
                &format!("listen: 127.0.0.1:5672\nhealth: {{checks: {checks}}}\nbackends:\n  - {{name: a, address: 'h:1'}}\n"),
                Path::new("t.yaml"),
            )
        };
        assert_eq!(HealthConfig::default().checks, Checks::Auto);
        assert_eq!(parse("auto").expect("auto").health.checks, Checks::Auto);
        assert_eq!(
            parse("[is-in-service]").expect("list").health.checks,
            Checks::List(vec!["is-in-service".into()])
        );
        assert_eq!(parse("none").expect("none").health.checks, Checks::None);
        let e = parse("[]").expect_err("an empty list").to_string();
        assert!(e.contains("write `checks: none`"), "{e}");
        let e = parse("sometimes")
            .expect_err("a word other than auto")
            .to_string();
        assert!(e.contains("health.checks") && e.contains("`auto`"), "{e}");
        let e = parse("['../x']").expect_err("a path").to_string();
        assert!(e.contains("health.checks[0]"), "{e}");
        // The default shows as `auto` (warren check prints the config).
        let shown = serde_json::to_value(HealthConfig::default()).expect("json");
        assert_eq!(shown["checks"], "auto");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("listen: 127.0.0.1:5672\nbackends:\n  - {name: a, address: 'h:5672'}\n")
            .expect("valid");
        assert_eq!(c.balance, Balance::RoundRobin);
        assert_eq!(c.timeouts.connect.get(), Duration::from_secs(5));
        assert_eq!(c.health.fall.get(), 3);
        assert_eq!(c.admin.listen.port(), 8404);
    }

    #[test]
    fn effective_config_round_trips() {
        let c = parse("listen: 127.0.0.1:5672\nbackends:\n  - {name: a, address: 'h:5672'}\n")
            .expect("valid");
        let again = parse(&c.to_yaml()).expect("effective config parses again");
        assert_eq!(again.backends, c.backends);
        assert_eq!(again.health.interval, c.health.interval);
    }

    #[test]
    fn secrets_are_redacted() {
        let c = parse(
            "listen: 127.0.0.1:5672\nhealth: {password: hunter2}\nbackends:\n  - {name: a, address: 'h:1'}\n",
        )
        .expect("valid");
        assert!(!c.to_yaml().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn parse_errors_do_not_quote_the_file() {
        for text in [
            "listen: 127.0.0.1:5672\nhealth: {password: hunter2, bogus: 1}\nbackends: []\n",
            "listen: 127.0.0.1:5672\nhealth:\n  password: hunter2\n  rise: x\nbackends: []\n",
        ] {
            let e = parse(text).expect_err("invalid").to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.starts_with("test.yaml:") && e.contains("health."), "{e}");
        }
    }

    #[test]
    fn management_credentials_are_refused_without_echoing_them() {
        let e = parse(
            "listen: 127.0.0.1:5672\nbackends:\n  - {name: a, address: 'h:1', management: 'http://admin:hunter2@h:15672'}\n",
        )
        .expect_err("credentials in a management URL");
        let text = e.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("key `backends[0].management`")
                && text.contains("http://admin:***@h:15672"),
            "{text}"
        );
    }

    /// A file of `len` bytes of `x` in the temp directory, removed on drop.
    #[test]
    fn an_oversized_password_file_is_refused_by_name() {
        let f = TempFile::new("password", MAX_SECRET_FILE as usize + 1);
        let health = HealthConfig {
            password_file: Some(f.0.clone()),
            ..HealthConfig::default()
        };
        let e = health
            .resolve_password()
            .expect_err("a password file over the limit");
        assert!(
            e.contains(&f.0.display().to_string()) && e.contains("larger than"),
            "{e}"
        );
        assert!(!e.contains("xxxx"), "{e}");
    }

    /// A "billion laughs" in `cluster.policies[0].definition`, a free-form value:
    /// `levels` lists of `fan` aliases of the list below, over `leaf`, so
    /// `fan^levels` copies of `leaf` from a few hundred bytes of YAML.
    fn alias_bomb(levels: usize, fan: usize, leaf: &str) -> String {
        let mut s = String::from(
            "listen: 127.0.0.1:5672
backends: [{name: a, address: 'h:5672'}]
cluster:
  nodes: [{backend: a, node: r@h}]
  policies:
    - name: p
      pattern: '^'
      definition:
",
        );
        s.push_str(&format!("        s: &l0 {leaf}\n"));
        for i in 1..=levels {
            let refs = vec![format!("*l{}", i - 1); fan].join(",");
            s.push_str(&format!("        l{i}: &l{i} [{refs}]\n"));
        }
        s
    }

    #[test]
    fn alias_bombs_are_refused() {
        let long = format!("'{}'", "y".repeat(600));
        for (what, bomb) in [
            // The classic: 9^9 copies of `lol`, refused by serde-saphyr's default
            // budget (250,000 nodes) but only after expanding that far.
            ("9^9 lols", alias_bomb(9, 9, "lol")),
            // 10^5 copies of 600 bytes: within the default budget, so accepted
            // before warren set its own, as a 60 MB value (a 70 MB `warren check`
            // output) from 1 KiB of YAML. Also in the fuzz corpus, as
            // regression-alias-bomb-policy-definition.yaml.
            ("10^5 long strings", alias_bomb(5, 10, &long)),
        ] {
            let started = std::time::Instant::now();
            let result = parse(&bomb);
            let took = started.elapsed();
            // Not `expect_err`: its message would print the whole expanded config.
            let Err(e) = result else {
                panic!("{what}: accepted after {took:?}");
            };
            let text = e.to_string();
            // Measured, not asserted: the time depends on the machine.
            eprintln!(
                "alias bomb ({what}, {} bytes): refused in {took:?}: {text}",
                bomb.len()
            );
            assert!(text.starts_with("test.yaml:"), "{what}: {text}");
            assert!(
                text.contains("too large or too complex")
                    && text.contains("at most 10000 YAML nodes"),
                "{what}: {text}"
            );
        }
    }

    #[test]
    fn deep_or_huge_values_are_refused() {
        let policy = |definition: &str| {
            format!(
                "listen: 127.0.0.1:5672
backends: [{{name: a, address: 'h:5672'}}]
cluster:
  nodes: [{{backend: a, node: r@h}}]
  policies: [{{name: p, pattern: '^', definition: {{k: {definition}}}}}]
"
            )
        };
        let deep = format!("{}x{}", "[".repeat(20), "]".repeat(20));
        let wide = format!("[{}]", vec!["x"; YAML_MAX_NODES].join(","));
        for (what, text) in [("20 deep", policy(&deep)), ("10000 wide", policy(&wide))] {
            let Err(e) = parse(&text) else {
                panic!("{what}: accepted");
            };
            let e = e.to_string();
            assert!(
                e.starts_with("test.yaml:") && e.contains("too large or too complex"),
                "{what}: {e}"
            );
        }
        // Within the limits, the same shapes parse.
        let shallow = format!("{}x{}", "[".repeat(8), "]".repeat(8));
        parse(&policy(&shallow)).expect("8 deep");
        let narrow = format!("[{}]", vec!["x"; 1000].join(","));
        parse(&policy(&narrow)).expect("1000 wide");
    }

    #[test]
    fn anchors_for_repeated_settings_still_work() {
        let c = parse(
            "listen: 127.0.0.1:5672
backends:
  - {name: a, address: 'a:5671', tls: &tls {verify: false, server_name: mq}}
  - {name: b, address: 'b:5671', tls: *tls}
",
        )
        .expect("valid");
        assert_eq!(c.backends[0].tls, c.backends[1].tls);
    }

    #[test]
    fn an_oversized_config_is_refused_before_parsing() {
        let mut text =
            "listen: 127.0.0.1:5672\nbackends:\n  - {name: a, address: 'h:1'}\n".to_string();
        text.push_str(&"# padding\n".repeat(MAX_CONFIG_FILE as usize / 10 + 1));
        let Err(e) = parse(&text) else {
            panic!("a config over the limit: accepted");
        };
        let e = e.to_string();
        assert!(
            e.starts_with("test.yaml: ") && e.contains("larger than"),
            "{e}"
        );
        let f = TempFile::new("config", MAX_CONFIG_FILE as usize + 1);
        let e = Config::load(&f.0)
            .expect_err("a file over the limit")
            .to_string();
        assert!(
            e.starts_with(&f.0.display().to_string()) && e.contains("larger than"),
            "{e}"
        );
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("a:1"), Some(("a", 1)));
        assert_eq!(split_host_port("[::1]:5672"), Some(("::1", 5672)));
        assert_eq!(split_host_port("a"), None);
        assert_eq!(split_host_port("a:0"), None);
        assert_eq!(split_host_port(":5"), None);
    }

    #[test]
    fn cluster_section_as_in_the_docs() {
        let c = parse(
            "listen: 127.0.0.1:5672
backends:
  - {name: node1, address: 'node1:5672', management: 'http://node1:15672'}
  - {name: node2, address: 'node2:5672', management: 'http://node2:15672'}
  - {name: node3, address: 'node3:5672', management: 'http://node3:15672'}
cluster:
  erlang_cookie_file: /var/lib/rabbitmq/.erlang.cookie
  nodes:
    - {backend: node1, node: rabbit@node1, type: disc}
    - {backend: node2, node: rabbit@node2, type: disc}
    - {backend: node3, node: rabbit@node3, type: ram}
  policies:
    - name: ha-allqueue
      vhost: /
      pattern: '^'
      apply_to: queues
      priority: 0
      definition: {ha-mode: all, ha-sync-mode: automatic}
",
        )
        .expect("valid");
        let cl = c.cluster.expect("cluster section");
        assert_eq!(cl.rabbitmqctl, "rabbitmqctl");
        assert_eq!(cl.nodes[2].node_type, NodeType::Ram);
        assert_eq!(cl.policies[0].definition["ha-mode"], "all");
        assert_eq!(cl.policies[0].apply_to, ApplyTo::Queues);
    }

    #[test]
    fn cluster_section_errors_name_the_key() {
        let base = "listen: 127.0.0.1:5672\nbackends:\n  - {name: a, address: 'h:1'}\n";
        for (cluster, key) in [
            ("cluster: {nodes: []}", "cluster.nodes"),
            (
                "cluster: {nodes: [{backend: a, node: r@h, type: ram}]}",
                "cluster.nodes",
            ),
            (
                "cluster: {nodes: [{backend: b, node: r@h}]}",
                "cluster.nodes[0].backend",
            ),
            (
                "cluster: {nodes: [{backend: a, node: rabbit}]}",
                "cluster.nodes[0].node",
            ),
            (
                "cluster: {rabbitmqctl: ' ', nodes: [{backend: a, node: r@h}]}",
                "cluster.rabbitmqctl",
            ),
        ] {
            match parse(&format!("{base}{cluster}\n")) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{cluster}"),
                other => panic!("{cluster}: expected an error for {key}, got {other:?}"),
            }
        }
        // An unknown key is refused by the parser, which names where it is.
        match parse(&format!(
            "{base}cluster: {{nodes: [{{backend: a, node: r@h, typ: disc}}]}}\n"
        )) {
            Err(ConfigError::Invalid {
                key, message, at, ..
            }) => {
                assert_eq!(key, "cluster.nodes[0].typ");
                assert!(
                    message.contains("unknown key `typ`; did you mean `type`?"),
                    "{message}"
                );
                assert_eq!(at.map(|a| a.line), Some(4));
            }
            other => panic!("expected an error naming the key, got {other:?}"),
        }
    }

    #[test]
    fn cluster_replication_states_the_intent() {
        let base = "listen: 127.0.0.1:5672\nbackends:\n  - {name: a, address: 'h:1'}\n\
                    cluster:\n  nodes: [{backend: a, node: r@h}]\n";
        let c = parse(&format!("{base}  replication: {{}}\n")).expect("valid");
        let r = c.cluster.and_then(|c| c.replication).expect("replication");
        assert_eq!(r.vhosts, ["/"]);
        assert!(r.quorum_policy.is_empty());
        let c = parse(&format!(
            "{base}  replication:\n    vhosts: [/, orders]\n    quorum_policy: {{queue-leader-locator: balanced, delivery-limit: 20}}\n"
        ))
        .expect("valid");
        let r = c.cluster.and_then(|c| c.replication).expect("replication");
        assert_eq!(r.vhosts, ["/", "orders"]);
        assert_eq!(r.quorum_policy["delivery-limit"], 20);
        for (extra, key) in [
            ("  replication: {vhosts: []}\n", "cluster.replication.vhosts"),
            ("  replication: {vhosts: [/, /]}\n", "cluster.replication.vhosts[1]"),
            (
                "  replication: {quorum_policy: {ha-mode: all}}\n",
                "cluster.replication.quorum_policy.ha-mode",
            ),
            (
                "  replication: {}\n  policies: [{name: warren-replication, pattern: x, definition: {max-length: 1}}]\n",
                "cluster.policies[0].name",
            ),
        ] {
            match parse(&format!("{base}{extra}")) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{extra}"),
                other => panic!("{extra}: expected an error for {key}, got {other:?}"),
            }
        }
        // An unknown key is refused by the parser, naming it.
        match parse(&format!("{base}  replication: {{mode: all}}\n")) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "cluster.replication.mode"),
            other => panic!("expected an error naming the key, got {other:?}"),
        }
    }

    #[test]
    fn a_listener_is_required() {
        let e = parse("backends:\n  - {name: a, address: 'h:5672'}\n").expect_err("no listener");
        assert!(e.to_string().contains("`listen`"), "{e}");
    }

    #[test]
    fn backend_tls_and_send_proxy_parse() {
        let c = parse(
            "listen: 127.0.0.1:5672\nbackends:\n  - {name: a, address: 'h:5671', send_proxy: v2, tls: {verify: false}}\n",
        )
        .expect("valid");
        assert_eq!(c.backends[0].send_proxy, Some(ProxyVersion::V2));
        assert!(!c.backends[0].tls.as_ref().expect("tls").verify);
        let e = parse(
            "listen: 127.0.0.1:5672\nbackends:\n  - {name: a, address: 'h:5671', send_proxy: v3}\n",
        )
        .expect_err("v3 is no PROXY version");
        assert!(e.to_string().contains("v3"), "{e}");
    }

    #[test]
    fn log_level_with_spaces_and_non_ascii_does_not_panic() {
        // Found by the `config` fuzz target: tracing-subscriber panicked on it.
        let c = parse(
            "listen: 127.0.0.1:5672\nlog: {level: 'info, é=debug'}\nbackends:\n  - {name: a, address: 'h:1'}\n",
        )
        .expect("valid");
        assert_eq!(c.log.level, "info, é=debug");
    }
}
