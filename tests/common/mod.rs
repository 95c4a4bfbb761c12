//! Helpers shared by the end-to-end tests: the three real RabbitMQ nodes started by
//! `scripts/local-cluster`, an in-process warren in front of them, and small
//! management API and rabbitmqctl wrappers.
//!
//! The nodes are found through the same environment variables the script uses
//! (`WARREN_NODE_PREFIX`, `WARREN_AMQP_BASE`, `WARREN_MGMT_BASE`), so a second set
//! of nodes can serve a second checkout. Tests fail, never skip, when the nodes
//! are missing.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use warren::config::Config;

/// For the tests of a binary that read process-wide series (metrics, reloads):
/// one such test at a time.
pub fn serial() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// The nodes are shared by every test of a binary: tests that only use them run
/// side by side (read lock), tests that stop, freeze or alarm a node run alone
/// (write lock). Cargo runs the test binaries one after another.
fn node_lock() -> Arc<RwLock<()>> {
    static LOCK: OnceLock<Arc<RwLock<()>>> = OnceLock::new();
    LOCK.get_or_init(|| Arc::new(RwLock::new(()))).clone()
}

#[allow(dead_code)]
enum NodeGuard {
    Shared(OwnedRwLockReadGuard<()>),
    Exclusive(OwnedRwLockWriteGuard<()>),
}

/// The three nodes, with the right to use them for as long as it lives.
pub struct Cluster {
    nodes: Vec<Node>,
    _guard: NodeGuard,
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

    /// AMQP straight to the node, as guest, bypassing warren.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
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
    let guard = NodeGuard::Shared(node_lock().read_owned().await);
    Cluster {
        nodes: wait_nodes_up().await,
        _guard: guard,
    }
}

/// The nodes for a test that disturbs one (stops, freezes, alarms it): no other
/// test of this binary uses them meanwhile. The test restores what it disturbs.
pub async fn cluster_exclusive() -> Cluster {
    let guard = NodeGuard::Exclusive(node_lock().write_owned().await);
    Cluster {
        nodes: wait_nodes_up().await,
        _guard: guard,
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
/// this binary runs meanwhile (the same lock as [`cluster_exclusive`], so it never
/// overlaps the loopback chaos test either). Fails the test, never skips it, when
/// a node does not answer, the cluster is not whole, or the `ha-allqueue` policy
/// `warren bootstrap` applies is missing.
pub async fn netns_cluster_exclusive() -> Cluster {
    let guard = NodeGuard::Exclusive(node_lock().write_owned().await);
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
    Cluster {
        nodes,
        _guard: guard,
    }
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
    let ep = warren::mgmt::Endpoint::parse(&node.mgmt_url()).map_err(|e| e.to_string())?;
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
            let start = std::process::Command::new("rabbitmqctl")
                .args(["-n", &self.node.name, "start_app"])
                .output();
            let up = std::process::Command::new("rabbitmqctl")
                .args(["-n", &self.node.name, "await_startup", "--timeout", "60"])
                .output();
            if up.as_ref().is_ok_and(|o| o.status.success()) {
                return;
            }
            eprintln!(
                "restarting {} failed (attempt {attempt}): {:?} {:?}",
                self.node.name, start, up
            );
        }
    }
}

/// A warren config for the three nodes, listeners on ephemeral ports. `extra` is
/// YAML appended at the top level (for instance `balance: least-connections`).
pub fn config_yaml(nodes: &[Node], extra: &str) -> String {
    let mut y = String::from("listen: 127.0.0.1:0\n");
    if !extra.starts_with("admin:") && !extra.contains("\nadmin:") {
        y.push_str("admin:\n  listen: 127.0.0.1:0\n");
    }
    y.push_str(extra);
    if !extra.is_empty() && !extra.ends_with('\n') {
        y.push('\n');
    }
    if !extra.contains("\nbackends:") && !extra.starts_with("backends:") {
        y.push_str("backends:\n");
        for n in nodes {
            y.push_str(&n.backend_yaml(&n.backend));
        }
    }
    y
}

/// A warren running in this process.
pub struct Warren {
    pub app: Arc<warren::App>,
    /// The plain AMQP listener (the TLS listener when there is no plain one).
    pub amqp: SocketAddr,
    /// The TLS listener, when the config has one.
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Warren {
    pub async fn start(yaml: &str) -> Warren {
        init_logs();
        let path = PathBuf::from("test.yaml");
        let config = Config::from_yaml(yaml, &path).expect("test config is valid");
        Warren::run(config, path).await
    }

    /// Starts from a config file, so that a reload reads that file again.
    pub async fn start_file(path: &std::path::Path) -> Warren {
        init_logs();
        let config = Config::load(path).expect("test config is valid");
        Warren::run(config, path.to_path_buf()).await
    }

    /// Binds `config` (read from `path`) and runs it in a task of its own.
    async fn run(config: Config, path: PathBuf) -> Warren {
        let server = warren::Server::bind(config, path)
            .await
            .expect("warren binds");
        let (app, admin, tls) = (server.app.clone(), server.admin_addr, server.tls_addr);
        let amqp = server.amqp_addr.or(tls).expect("warren has a listener");
        let task = tokio::spawn(server.run());
        Warren {
            app,
            amqp,
            tls,
            admin,
            task,
        }
    }

    /// `GET /metrics`, checked to be a 200.
    pub async fn metrics(&self) -> Metrics {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        Metrics(body)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }

    /// GET on warren's admin API; (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        admin_request(self.admin, "GET", path).await
    }

    pub async fn admin_post(&self, path: &str) -> (u16, String) {
        admin_request(self.admin, "POST", path).await
    }

    /// `GET /api/backends/{name}` as JSON.
    pub async fn backend(&self, name: &str) -> serde_json::Value {
        let (status, body) = self.admin_get(&format!("/api/backends/{name}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("backend JSON")
    }

    /// Waits until `backend` reports `state`, up to `within`.
    pub async fn wait_state(&self, backend: &str, state: &str, within: Duration) -> Duration {
        let start = tokio::time::Instant::now();
        loop {
            let b = self.backend(backend).await;
            if b["state"] == state {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "backend {backend} not {state} within {within:?}: {b}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `backend` holds `n` active connections, up to `within`: a
    /// connection's task ends a moment after its client saw the close (warren still
    /// closes the broker side).
    pub async fn wait_active(&self, backend: &str, n: u64, within: Duration) {
        let start = tokio::time::Instant::now();
        loop {
            let b = self.backend(backend).await;
            if b["active_connections"] == n {
                return;
            }
            assert!(
                start.elapsed() < within,
                "backend {backend}: not {n} active connections within {within:?}: {b}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.app.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

/// A minimal HTTP/1.1 request to the admin API.
pub async fn admin_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin reachable");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: warren\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("request sent");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("answer read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// An AMQP connection through `url` with a real client library.
pub async fn amqp_connect(url: &str) -> Connection {
    amqp_connect_named(url, "warren-test").await
}

/// Same, with a connection name the management API shows (`client_properties`).
pub async fn amqp_connect_named(url: &str, name: &str) -> Connection {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(Duration::from_secs(20), Connection::connect(url, props))
        .await
        .expect("AMQP connect in time")
        .expect("AMQP connect")
}

/// A channel on `conn` in confirm mode, with `queue` declared with `options`.
pub async fn confirmed_queue(
    conn: &Connection,
    queue: &str,
    options: QueueDeclareOptions,
) -> Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    declare_queue(&ch, queue, options).await;
    ch
}

/// Declare options for a queue that lives and dies with its connection.
pub fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

/// Declare options for a queue that survives a broker restart.
pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declares `queue` with `options` and no arguments.
pub async fn declare_queue(ch: &Channel, queue: &str, options: QueueDeclareOptions) {
    ch.queue_declare(queue.into(), options, FieldTable::default())
        .await
        .expect("declare");
}

/// Deletes `queue`, whatever comes of it (clean-up at the end of a test).
pub async fn delete_queue(ch: &Channel, queue: &str) {
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

/// Publishes `body` to `queue` through the default exchange and waits for the
/// broker's confirm (the channel is in confirm mode).
pub async fn publish_confirmed(ch: &Channel, queue: &str, body: &[u8]) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

/// Publishes the numbers `0..n` (4 bytes, big-endian) in order, each confirmed.
pub async fn publish_numbered(ch: &Channel, queue: &str, n: u32) {
    for i in 0..n {
        publish_confirmed(ch, queue, &i.to_be_bytes()).await;
    }
}

/// The body of the next message of `queue`, taken with basic.get (no ack), polled
/// until one is there; fails the test after `within`.
pub async fn get_message(ch: &Channel, queue: &str, within: Duration) -> Vec<u8> {
    tokio::time::timeout(within, async {
        loop {
            if let Some(m) = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
            {
                return m.delivery.data;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("message back within {within:?}"))
}

/// Publishes `body` to `queue` with a confirm, then takes a message back from it
/// (within `within`); what came back, for the caller to compare.
pub async fn round_trip(ch: &Channel, queue: &str, body: &[u8], within: Duration) -> Vec<u8> {
    publish_confirmed(ch, queue, body).await;
    get_message(ch, queue, within).await
}

/// The first error a connection reports (for instance a broker's connection.close).
pub async fn next_error(conn: &Connection, within: Duration) -> Option<lapin::Error> {
    let mut events = conn.events_listener();
    tokio::time::timeout(within, async {
        while let Some(ev) = events.next().await {
            if let lapin::Event::Error(e) = ev {
                return Some(e);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// The AMQP reply code of a protocol error, if that is what `e` is.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// A name unique to this test run, for queues and connection names.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
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

/// A Prometheus text exposition, with a lookup by name and labels.
#[derive(Clone, Debug)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the series `name` carrying all of `labels` (`key="value"`
    /// pairs, in any order); `None` when absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.lines().find_map(|line| {
            if line.starts_with('#') {
                return None;
            }
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            if all {
                value.parse().ok()
            } else {
                None
            }
        })
    }

    /// Like [`Metrics::get`], 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// Runs `promtool check metrics` on an exposition; panics with its output on failure.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package `prometheus`; scripts/test installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}): {}{}\n--- metrics ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How a connection was closed by the other side, as the client library saw it.
#[derive(Clone, Debug)]
pub struct Closed {
    /// AMQP reply code (320 for CONNECTION_FORCED); `None` for a transport error.
    pub code: Option<u16>,
    pub text: String,
    pub at: tokio::time::Instant,
}

/// Watches a connection from now on and reports how it was closed: the
/// `connection.close` (broker's or warren's) if the client library saw one, else
/// the first I/O error such as a reset. A broker that closes the socket right after
/// its close frame makes lapin report an I/O error too, in either order, so errors
/// arriving within half a second of the first are all considered.
pub fn watch_close(conn: &Connection) -> tokio::task::JoinHandle<Option<Closed>> {
    let mut events = conn.events_listener();
    tokio::spawn(async move {
        let mut first: Option<Closed> = None;
        loop {
            let next = match &first {
                None => events.next().await,
                Some(_) => {
                    match tokio::time::timeout(Duration::from_millis(500), events.next()).await {
                        Ok(ev) => ev,
                        Err(_) => return first,
                    }
                }
            };
            let Some(ev) = next else {
                return first;
            };
            if let lapin::Event::Error(e) = ev {
                let at = tokio::time::Instant::now();
                match e.kind() {
                    lapin::ErrorKind::ProtocolError(amqp) => {
                        return Some(Closed {
                            code: Some(amqp.get_id()),
                            text: amqp.get_message().to_string(),
                            at: first.map_or(at, |f| f.at),
                        });
                    }
                    other => {
                        if first.is_none() {
                            first = Some(Closed {
                                code: None,
                                text: format!("{other:?}"),
                                at,
                            });
                        }
                    }
                }
            }
        }
    })
}

/// Awaits a `watch_close` result for at most `within`.
pub async fn closed_within(
    h: tokio::task::JoinHandle<Option<Closed>>,
    within: Duration,
) -> Option<Closed> {
    tokio::time::timeout(within, h)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten()
}

/// A new, empty directory under the system's temporary directory, its name
/// made unique from `prefix`.
pub fn fresh_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A free loopback port (bound and released; fine for tests on one machine).
/// Reads `s` until its peer closes it (EOF or error), up to `within`: what it
/// read, or `None` if it was still open.
pub async fn read_until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(got)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// warren run as its real binary, for what needs a process of its own (signals,
/// file-descriptor limits, memory).
pub struct WarrenProcess {
    pub child: std::process::Child,
    pub amqp: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl WarrenProcess {
    /// Starts `warren run` with `yaml`, whose `listen`/`admin.listen` are filled in
    /// here (the YAML must not set them), under `ulimit -n nofile`.
    pub async fn start(yaml_rest: &str, nofile: u32) -> WarrenProcess {
        let amqp = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = fresh_dir("warren-proc");
        let config = dir.join("warren.yaml");
        let log = dir.join("warren.log");
        std::fs::write(
            &config,
            format!("listen: {amqp}\nadmin:\n  listen: {admin}\n{yaml_rest}"),
        )
        .expect("config written");
        let script = format!(
            "ulimit -n {nofile} && exec {} run -c {}",
            env!("CARGO_BIN_EXE_warren"),
            config.display()
        );
        let child = std::process::Command::new("bash")
            .args(["-c", &script])
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(std::fs::File::create(dir.join("warren.err")).expect("log file"))
            .spawn()
            .expect("warren starts");
        let log = dir.join("warren.err");
        let p = WarrenProcess {
            child,
            amqp,
            admin,
            config,
            log,
        };
        let start = tokio::time::Instant::now();
        while tokio::net::TcpStream::connect(admin).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "warren did not start: {}",
                p.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (user + system CPU seconds, RSS bytes) from /proc.
    pub fn cpu_and_rss(&self) -> (f64, u64) {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of stat; here indices 11 and 12.
        let cpu = (ticks(11) + ticks(12)) / 100.0;
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let rss_kb = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        (cpu, rss_kb * 1024)
    }

    pub fn signal(&self, sig: &str) {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }
}

impl Drop for WarrenProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one whole AMQP frame; (type, channel, payload). Fails the test on a
/// frame that does not end with the frame-end octet.
pub async fn read_frame(s: &mut tokio::net::TcpStream) -> (u8, u16, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 7];
    s.read_exact(&mut head).await.expect("frame header");
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    s.read_exact(&mut payload).await.expect("frame payload");
    assert_eq!(
        payload.pop(),
        Some(warren::amqp::FRAME_END),
        "frame-end octet"
    );
    (head[0], u16::from_be_bytes([head[1], head[2]]), payload)
}

/// A raw AMQP client of `addr` that sends the protocol header, reads
/// connection.start (so that it stands at a frame boundary) and then says
/// nothing: it never answers connection.close.
pub async fn silent_client(addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(warren::amqp::PROTOCOL_HEADER)
        .await
        .expect("header");
    read_frame(&mut s).await;
    s
}

/// A small TCP server on an ephemeral loopback port: every connection (the health
/// checker's probes included) is served by `handler` in its own task.
pub async fn tcp_server<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(handler(s));
        }
    });
    addr
}

/// A backend that accepts every connection, reads and discards until EOF.
pub async fn sink_backend() -> SocketAddr {
    tcp_server(|mut s| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
}

/// A backend that reads until the client half-closes, then answers
/// `got <n> bytes` and closes: whether a half-close got through.
pub async fn counting_backend() -> SocketAddr {
    tcp_server(|mut s| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut got = Vec::new();
        if s.read_to_end(&mut got).await.is_ok() {
            let _ = s
                .write_all(format!("got {} bytes", got.len()).as_bytes())
                .await;
        }
        // Dropping closes our side.
    })
    .await
}

/// Sends the AMQP protocol header and `filler` more bytes on `s`, half-closes
/// it and reads the answer to the end (within 10 s): what a
/// [`counting_backend`] behind warren says.
pub async fn half_close_exchange<S>(s: &mut S, filler: usize) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(warren::amqp::PROTOCOL_HEADER)
        .await
        .expect("header");
    s.write_all(&vec![7u8; filler]).await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply))
        .await
        .expect("reply in time")
        .expect("read");
    reply
}

/// Opens `n` connections through `w` that all land on node `target` (the other
/// nodes disabled meanwhile, enabled again afterwards).
pub async fn connections_on(
    w: &Warren,
    nodes: &[Node],
    target: usize,
    n: usize,
    prefix: &str,
) -> Vec<Connection> {
    for (i, node) in nodes.iter().enumerate() {
        if i != target {
            w.admin_post(&format!("/api/backends/{}/disable", node.backend))
                .await;
        }
    }
    let mut conns = Vec::new();
    for i in 0..n {
        conns.push(amqp_connect_named(&w.url(), &format!("{prefix}-{i}")).await);
    }
    for (i, node) in nodes.iter().enumerate() {
        if i != target {
            w.admin_post(&format!("/api/backends/{}/enable", node.backend))
                .await;
        }
    }
    conns
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
