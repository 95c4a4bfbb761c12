//! The real RabbitMQ nodes: where they are, the lock that keeps the tests which
//! disturb them apart, their management API, `rabbitmqctl` and the scripts that
//! start and stop them.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// One lock for the whole test binary. Tests that use the nodes, or run warren in
/// this process, hold it shared and run side by side; a test that stops, freezes
/// or alarms a node, or reads a series that is global to the process (the
/// listener and reload series have no backend label), holds it exclusively and
/// runs alone. A test takes its turn once, first thing: a second shared hold
/// could wait forever behind an exclusive one queued in between.
fn test_lock() -> Arc<RwLock<()>> {
    static LOCK: OnceLock<Arc<RwLock<()>>> = OnceLock::new();
    LOCK.get_or_init(|| Arc::new(RwLock::new(()))).clone()
}

/// A test's turn on [`test_lock`], shared or exclusive, for as long as it lives.
pub struct Turn {
    _shared: Option<OwnedRwLockReadGuard<()>>,
    _exclusive: Option<OwnedRwLockWriteGuard<()>>,
}

impl Turn {
    async fn shared() -> Turn {
        Turn {
            _shared: Some(test_lock().read_owned().await),
            _exclusive: None,
        }
    }

    async fn exclusive() -> Turn {
        Turn {
            _shared: None,
            _exclusive: Some(test_lock().write_owned().await),
        }
    }
}

/// A shared turn for a test that needs no node but runs warren in this process
/// (its listener series count in the process-wide totals) or loads the machine:
/// it never runs beside an exclusive test.
pub async fn sharing() -> Turn {
    Turn::shared().await
}

/// The three nodes, with the right to use them for as long as it lives.
pub struct Cluster {
    nodes: Vec<Node>,
    _turn: Turn,
}

impl<'a> IntoIterator for &'a Cluster {
    type Item = &'a Node;
    type IntoIter = std::slice::Iter<'a, Node>;
    fn into_iter(self) -> Self::IntoIter {
        self.nodes.iter()
    }
}

impl std::ops::Deref for Cluster {
    type Target = [Node];
    fn deref(&self) -> &[Node] {
        &self.nodes
    }
}

/// A port number from the environment variable `name`, `default` when unset or
/// not a number.
pub fn env_u16(name: &str, default: u16) -> u16 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One of the three local nodes.
#[derive(Clone, Debug)]
pub struct Node {
    pub index: usize,
    /// Erlang node name, e.g. `n1@host`.
    pub name: String,
    /// Backend name used in warren's config (`n1`).
    pub backend: String,
    pub amqp: SocketAddr,
    pub mgmt: SocketAddr,
}

impl Node {
    pub fn mgmt_url(&self) -> String {
        format!("http://{}", self.mgmt)
    }

    /// This node as an entry of warren's `backends:` list, named `name`.
    pub fn backend_yaml(&self, name: &str) -> String {
        format!(
            "  - name: {name}\n    address: {}\n    management: {}\n",
            self.amqp,
            self.mgmt_url()
        )
    }

    /// The process id of this node's Erlang VM, from the pid file that
    /// `scripts/local-cluster` keeps under `WARREN_CLUSTER_DIR`.
    pub fn pid(&self) -> u32 {
        let dir = std::env::var("WARREN_CLUSTER_DIR")
            .unwrap_or_else(|_| "/var/tmp/warren-cluster".into());
        let short = self.name.split('@').next().expect("node name");
        std::fs::read_to_string(format!("{dir}/{short}/pid"))
            .expect("node pid file")
            .trim()
            .parse()
            .expect("pid")
    }

    /// AMQP straight to the node, as guest, bypassing warren.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }

    /// This node's listener for `protocol` (`stream`, `mqtt` or `stomp`), as
    /// `scripts/local-cluster` places it: the base `WARREN_STREAM_BASE`,
    /// `WARREN_MQTT_BASE` or `WARREN_STOMP_BASE`, by default the AMQP base plus
    /// 1000, 2000 or 3000, plus the node's index. (Loopback nodes only: the
    /// namespace nodes of [`netns_nodes`] have none of these.)
    pub fn protocol_addr(&self, protocol: &str) -> SocketAddr {
        let (var, offset) = match protocol {
            "stream" => ("WARREN_STREAM_BASE", 1000),
            "mqtt" => ("WARREN_MQTT_BASE", 2000),
            "stomp" => ("WARREN_STOMP_BASE", 3000),
            other => panic!("no {other} listener on the nodes"),
        };
        let amqp_base = self.amqp.port() - self.index as u16;
        let base = env_u16(var, amqp_base + offset);
        SocketAddr::from(([127, 0, 0, 1], base + self.index as u16))
    }

    /// This node as an entry of warren's `backends:` list, named `name`, with
    /// its stream, MQTT and STOMP ports (`ports:`; http is the management URL's).
    pub fn backend_yaml_with_ports(&self, name: &str) -> String {
        format!(
            "{}    ports: {{stream: {}, mqtt: {}, stomp: {}}}\n",
            self.backend_yaml(name),
            self.protocol_addr("stream").port(),
            self.protocol_addr("mqtt").port(),
            self.protocol_addr("stomp").port()
        )
    }
}

pub fn hostname() -> String {
    let out = std::process::Command::new("hostname")
        .arg("-s")
        .output()
        .expect("the `hostname` command runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The three nodes; panics (fails the test) when any of them is not answering.
pub fn nodes() -> Vec<Node> {
    let prefix = std::env::var("WARREN_NODE_PREFIX").unwrap_or_else(|_| "n".into());
    let amqp_base = env_u16("WARREN_AMQP_BASE", 5680);
    let mgmt_base = env_u16("WARREN_MGMT_BASE", 15680);
    let host = hostname();
    (1..=3)
        .map(|i| Node {
            index: i,
            name: format!("{prefix}{i}@{host}"),
            backend: format!("{prefix}{i}"),
            amqp: SocketAddr::from(([127, 0, 0, 1], amqp_base + i as u16)),
            mgmt: SocketAddr::from(([127, 0, 0, 1], mgmt_base + i as u16)),
        })
        .collect()
}

/// The nodes, shared with other tests, once every one answers.
pub async fn cluster() -> Cluster {
    let turn = Turn::shared().await;
    Cluster {
        nodes: wait_nodes_up().await,
        _turn: turn,
    }
}

/// The nodes for a test that disturbs one (stops, freezes, alarms it) or reads a
/// series global to the process: no other test of this binary runs meanwhile
/// (see [`test_lock`]). The test restores what it disturbs.
pub async fn cluster_exclusive() -> Cluster {
    let turn = Turn::exclusive().await;
    Cluster {
        nodes: wait_nodes_up().await,
        _turn: turn,
    }
}

/// The nodes, after checking that every one answers on AMQP and management;
/// fails the test when one does not.
pub async fn wait_nodes_up() -> Vec<Node> {
    let nodes = nodes();
    for n in &nodes {
        assert!(
            node_answers(n, Duration::from_secs(90)).await,
            "RabbitMQ node {} (amqp {}, management {}) is not running: start the nodes with \
             `scripts/local-cluster up` or run the suite with `scripts/test`",
            n.name,
            n.amqp,
            n.mgmt
        );
    }
    nodes
}

/// The three nodes of `scripts/netns-cluster`: each in its own network namespace
/// (`warren-c1..3`) at 10.251.0.11..13, AMQP 5672, management 15672, Erlang names
/// `rabbit@10.251.0.1i` (long names), backends `c1..c3`.
pub fn netns_nodes() -> Vec<Node> {
    (1..=3u8)
        .map(|i| Node {
            index: i as usize,
            name: format!("rabbit@10.251.0.1{i}"),
            backend: format!("c{i}"),
            amqp: SocketAddr::from(([10, 251, 0, 10 + i], 5672)),
            mgmt: SocketAddr::from(([10, 251, 0, 10 + i], 15672)),
        })
        .collect()
}

/// The namespace cluster for a test that cuts its nodes' links: no other test of
/// this binary runs meanwhile (the same turn as [`cluster_exclusive`], so it never
/// overlaps the loopback chaos test either). Fails the test, never skips it, when
/// a node does not answer, the cluster is not whole, or the `ha-allqueue` policy
/// `warren bootstrap` applies is missing.
pub async fn netns_cluster_exclusive() -> Cluster {
    let turn = Turn::exclusive().await;
    let nodes = netns_nodes();
    let hint =
        "start it with `scripts/netns-cluster up` (root) or run the suite with `scripts/test`";
    for n in &nodes {
        assert!(
            node_answers(n, Duration::from_secs(30)).await,
            "namespace cluster node {} (amqp {}, management {}) is not running: {hint}",
            n.name,
            n.amqp,
            n.mgmt
        );
    }
    let listed = mgmt_get(&nodes[0], "/api/nodes?columns=name,running")
        .await
        .expect("GET /api/nodes");
    let mut running: Vec<String> = listed
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n["running"] == true)
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    running.sort();
    let want: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(running, want, "namespace cluster not whole: {hint}");
    let policy = mgmt_get(&nodes[0], "/api/policies/%2F/ha-allqueue")
        .await
        .unwrap_or_else(|e| panic!("policy ha-allqueue missing ({e}): {hint}"));
    assert_eq!(policy["definition"]["ha-mode"], "all", "{policy}");
    Cluster { nodes, _turn: turn }
}

/// Whether `n` answers, on management and on AMQP, within `within`.
pub async fn node_answers(n: &Node, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        loop {
            if mgmt_get(n, "/api/health/checks/virtual-hosts")
                .await
                .is_ok()
                && tokio::net::TcpStream::connect(n.amqp).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .is_ok()
}

/// GET on a node's management API as guest; the JSON answer.
pub async fn mgmt_get(node: &Node, path: &str) -> Result<serde_json::Value, String> {
    let ep = warren::mgmt::Target::new(&node.mgmt_url(), &Default::default())
        .map_err(|e| e.to_string())?;
    let r = warren::mgmt::request(
        &ep,
        &guest(),
        hyper::Method::GET,
        path,
        None,
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| e.to_string())?;
    if !r.status.is_success() {
        return Err(format!("HTTP {}", r.status));
    }
    r.json().ok_or_else(|| "not JSON".to_string())
}

pub fn guest() -> warren::mgmt::Credentials {
    warren::mgmt::Credentials {
        username: "guest".into(),
        password: warren::config::Secret("guest".into()),
    }
}

/// Runs `rabbitmqctl -n <node> args...`; panics with its output when it fails.
pub fn rabbitmqctl(node: &Node, args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .arg("-n")
        .arg(&node.name)
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "rabbitmqctl -n {} {:?} failed: {text}",
        node.name,
        args
    );
    text
}

/// `rabbitmqctl -n NODE -q ARGS`: stdout, or the error output. Retried when the
/// CLI could not start its own Erlang distribution (a busy machine), which means
/// the command never reached the node.
pub fn ctl(node: &Node, args: &[&str]) -> Result<String, String> {
    let mut result = ctl_once(node, args);
    for _ in 0..2 {
        match &result {
            Err(e) if e.contains("nodistribution") => {
                std::thread::sleep(Duration::from_secs(1));
                result = ctl_once(node, args);
            }
            _ => break,
        }
    }
    result
}

/// The CLI for the nodes under test: `WARREN_RABBITMQCTL` (split on spaces),
/// else `rabbitmqctl` from PATH (`scripts/test` puts the version's first).
pub fn rabbitmq_cli() -> String {
    std::env::var("WARREN_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into())
}

fn ctl_once(node: &Node, args: &[&str]) -> Result<String, String> {
    let cli = rabbitmq_cli();
    let mut argv = cli.split_whitespace();
    let out = std::process::Command::new(argv.next().unwrap_or("rabbitmqctl"))
        .args(argv)
        .args(["-n", &node.name, "-q"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `scripts/NAME ARGS` with this process's environment plus `env`: its standard
/// error (where the scripts log) when it succeeds, its whole output when not.
pub fn script(name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let out = std::process::Command::new(format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| format!("scripts/{name} does not run: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stderr)
    } else {
        Err(format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// Stops the RabbitMQ app on a node and starts it again when dropped, so a failing
/// test never leaves the cluster short of a node.
pub struct StoppedApp {
    node: Node,
}

impl StoppedApp {
    pub fn stop(node: &Node) -> StoppedApp {
        rabbitmqctl(node, &["stop_app"]);
        StoppedApp { node: node.clone() }
    }
}

impl Drop for StoppedApp {
    fn drop(&mut self) {
        for attempt in 1..=3 {
            let start = ctl(&self.node, &["start_app"]);
            let up = ctl(&self.node, &["await_startup", "--timeout", "60"]);
            if up.is_ok() {
                return;
            }
            eprintln!(
                "restarting {} failed (attempt {attempt}): {:?} {:?}",
                self.node.name, start, up
            );
        }
    }
}

/// Freezes a node's Erlang VM (SIGSTOP) and thaws it on drop: the node still
/// completes TCP handshakes (kernel backlog) but answers nothing.
pub struct Frozen(u32);

impl Frozen {
    pub fn freeze(node: &Node) -> Frozen {
        let pid = node.pid();
        let ok = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// Nodes of the broker connections whose connection name starts with `prefix`.
pub async fn nodes_of_named(via: &Node, prefix: &str) -> Vec<String> {
    let v = mgmt_get(via, "/api/connections?columns=node,client_properties")
        .await
        .expect("GET /api/connections");
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|c| {
                    c["client_properties"]["connection_name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .filter_map(|c| c["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the management API lists `n` connections named `prefix*` (its
/// connection list lags a little behind the sockets).
pub async fn wait_named(via: &Node, prefix: &str, n: usize) -> Vec<String> {
    let start = tokio::time::Instant::now();
    loop {
        let found = nodes_of_named(via, prefix).await;
        if found.len() == n || start.elapsed() > Duration::from_secs(30) {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// How many of `nodes_list` are each node, in node order.
pub fn per_node(nodes: &[Node], nodes_list: &[String]) -> Vec<usize> {
    nodes
        .iter()
        .map(|n| nodes_list.iter().filter(|x| **x == n.name).count())
        .collect()
}

/// The RabbitMQ version the nodes run, as `scripts/local-cluster` was given it
/// (`WARREN_RABBITMQ`: 3.10, 4.0 or 4.3; 3.10 when unset).
pub fn rabbitmq_version() -> String {
    std::env::var("WARREN_RABBITMQ").unwrap_or_else(|_| "3.10".into())
}

/// Whether the nodes have classic mirrored queues (`ha-mode` policies): 3.x only,
/// removed in 4.0 (quorum queues replace them).
pub fn classic_mirroring() -> bool {
    rabbitmq_version().starts_with("3.")
}
