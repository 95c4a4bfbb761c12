//! AMQP 1.0 through warren, against the real nodes (RabbitMQ 4.x natively,
//! 3.x with the `rabbitmq_amqp1_0` plugin that scripts/local-cluster enables
//! there), with a real client: python-qpid-proton (`amqp10_client.py`), in the
//! virtual environment scripts/test makes (`WARREN_PROTON_PYTHON`). A drain,
//! a stopped node and warren's shutdown close a 1.0 client with a 1.0 `close`
//! (`amqp:connection:forced`), never 0-9-1 bytes; the client reconnects
//! through warren and no message the broker accepted is lost (a quorum queue).
//! A 0-9-1 client beside them still gets 320.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::*;

/// The Python with python-qpid-proton: `WARREN_PROTON_PYTHON`, else the
/// virtual environment scripts/test makes.
fn proton_python() -> Option<String> {
    venv_python(
        "WARREN_PROTON_PYTHON",
        "/var/cache/warren/venv-proton",
        "import proton",
        "python-qpid-proton is",
    )
}

/// One `amqp10_client.py` process and the lines it printed so far.
struct Client {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Client {
    fn start(python: &str, mode: &str, w: &Warren, address: &str, seconds: f64) -> Client {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/amqp10_client.py");
        let url = format!("amqp://guest:guest@{}", w.amqp);
        let mut child = Command::new(python)
            .arg(script)
            .args([mode, &url, address, &seconds.to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the AMQP 1.0 client runs");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let sink = Arc::clone(&lines);
        let tag = mode.to_string();
        let reader = tokio::spawn(async move {
            while let Ok(Some(l)) = out.next_line().await {
                if !l.starts_with("accepted") && !l.starts_with("received") {
                    eprintln!("amqp10 {tag}: {l}");
                }
                sink.lock().expect("lines").push(l);
            }
        });
        Client {
            child,
            lines,
            reader,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// Waits until `n` lines start with `prefix`.
    async fn wait_for(&self, prefix: &str, n: usize, within: Duration) {
        let start = tokio::time::Instant::now();
        while self.count(prefix) < n {
            assert!(
                start.elapsed() < within,
                "no {n} `{prefix}` lines within {within:?}: {:?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to end by itself; its lines.
    async fn finish(mut self, within: Duration) -> Vec<String> {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the client ends in time")
            .expect("wait");
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        assert!(status.success(), "client failed: {:?}", self.lines());
        self.lines()
    }

    /// The numbers of the lines `prefix N`.
    fn numbers(lines: &[String], prefix: &str) -> BTreeSet<u64> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
            .collect()
    }
}

/// A durable quorum queue, declared on `node` directly.
async fn quorum_queue(node: &Node, name: &str) {
    let conn = amqp_connect(&node.url()).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(name.into(), durable, args)
        .await
        .expect("quorum queue");
    let _ = conn.close(200, "bye".into()).await;
}

/// The address of queue `name`: RabbitMQ 4.x's `/queues/NAME` (address v2),
/// the 3.x plugin's `/amq/queue/NAME`.
fn address(name: &str) -> String {
    if rabbitmq_version().starts_with("3.") {
        format!("/amq/queue/{name}")
    } else {
        format!("/queues/{name}")
    }
}

fn config(nodes: &[Node]) -> String {
    config_yaml(
        nodes,
        "drain:\n  window: 0s\n  grace: 10s\n  close_timeout: 5s\nhealth:\n  interval: 500ms\n  slowstart: 0s\n  password: guest\nshutdown:\n  grace: 5s\n",
    )
}

/// Disables every backend but `nodes[target]`'s (or enables them again).
async fn only(w: &Warren, nodes: &[Node], target: usize, on: bool) {
    for (i, n) in nodes.iter().enumerate() {
        if i != target {
            let action = if on { "disable" } else { "enable" };
            w.admin_post(&format!("/api/backends/{}/{action}", n.backend))
                .await;
        }
    }
}

/// Every `closed` line of a client says amqp:connection:forced, or (`lost`
/// allowed) that the connection was lost; none is a framing error.
fn closes(lines: &[String]) -> Vec<&String> {
    let closed: Vec<&String> = lines.iter().filter(|l| l.starts_with("closed")).collect();
    for l in &closed {
        assert!(!l.contains("framing-error"), "a framing error: {lines:?}");
    }
    closed
}

/// A sender and a receiver on one node through warren; the node is drained:
/// both get `amqp:connection:forced`, reconnect elsewhere, and every accepted
/// message arrives. A 0-9-1 client on the same node gets 320.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_amqp10_clients_with_a_forced_close_and_nothing_accepted_is_lost() {
    let Some(python) = proton_python() else {
        return;
    };
    let nodes = cluster_exclusive().await;
    let w = Warren::start(&config(&nodes)).await;
    let queue = unique("q-amqp10-drain");
    quorum_queue(&nodes[0], &queue).await;
    only(&w, &nodes, 0, true).await;
    let sender = Client::start(&python, "send", &w, &address(&queue), 12.0);
    let receiver = Client::start(&python, "receive", &w, &address(&queue), 12.0);
    let lapin = amqp_connect_named(&w.url(), &unique("amqp091-beside")).await;
    let lapin_closed = watch_close(&lapin);
    sender
        .wait_for("accepted", 20, Duration::from_secs(30))
        .await;
    receiver
        .wait_for("received", 10, Duration::from_secs(30))
        .await;
    only(&w, &nodes, 0, false).await;
    // The connections: protocol and the open's container-id in warren's record.
    let (_, body) = w.admin_get("/api/connections").await;
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let conns = list["connections"].as_array().expect("connections");
    let amqp10 = conns.iter().filter(|c| c["protocol"] == "amqp10").count();
    assert_eq!(amqp10, 2, "{body}");
    assert!(
        conns
            .iter()
            .filter(|c| c["protocol"] == "amqp10")
            .all(|c| c["container_id"].is_string()),
        "{body}"
    );
    assert_eq!(
        conns.iter().filter(|c| c["protocol"] == "amqp091").count(),
        1,
        "{body}"
    );

    let (status, body) = w
        .admin_post(&format!("/api/backends/{}/drain", nodes[0].backend))
        .await;
    assert_eq!(status, 200, "{body}");
    let c = closed_within(lapin_closed, Duration::from_secs(15))
        .await
        .expect("the 0-9-1 client is closed");
    assert_eq!(c.code, Some(320), "{c:?}");
    sender.wait_for("closed", 1, Duration::from_secs(15)).await;
    receiver
        .wait_for("closed", 1, Duration::from_secs(15))
        .await;
    // Both reconnect, onto the other nodes, and go on.
    sender
        .wait_for("connected", 2, Duration::from_secs(15))
        .await;
    receiver
        .wait_for("connected", 2, Duration::from_secs(15))
        .await;
    let sent = sender.finish(Duration::from_secs(60)).await;
    let got = receiver.finish(Duration::from_secs(90)).await;
    for lines in [&sent, &got] {
        let closed = closes(lines);
        assert!(
            closed.first().is_some_and(
                |l| l.starts_with("closed amqp:connection:forced") && l.contains("draining")
            ),
            "{lines:?}"
        );
    }
    let accepted = Client::numbers(&sent, "accepted");
    let received = Client::numbers(&got, "received");
    let lost: Vec<&u64> = accepted.difference(&received).collect();
    eprintln!(
        "amqp10 drain: {} accepted, {} received, {} lost",
        accepted.len(),
        received.len(),
        lost.len()
    );
    assert!(accepted.len() > 40, "{sent:?}");
    assert!(lost.is_empty(), "accepted but never received: {lost:?}");
    // warren's closes ended gracefully: each client answered its close and
    // the broker answered warren's.
    let m = w.metrics().await;
    let backend = [("backend", nodes[0].backend.as_str())];
    let graceful = m.sum("warren_backend_graceful_closes_total", &backend);
    let forced = m.sum("warren_backend_forced_closes_total", &backend);
    assert_eq!((graceful, forced), (3.0, 0.0), "graceful, forced");
    let _ = lapin.close(200, "bye".into()).await;
    w.stop().await;
}

/// A node stopped under a sender and a receiver: they reconnect through
/// warren, nothing accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_s_amqp10_clients_reconnect_through_warren_and_nothing_accepted_is_lost() {
    let Some(python) = proton_python() else {
        return;
    };
    let nodes = cluster_exclusive().await;
    let w = Warren::start(&config(&nodes)).await;
    let queue = unique("q-amqp10-stop");
    // The queue's leader on another node than the one stopped.
    quorum_queue(&nodes[1], &queue).await;
    only(&w, &nodes, 0, true).await;
    let sender = Client::start(&python, "send", &w, &address(&queue), 15.0);
    let receiver = Client::start(&python, "receive", &w, &address(&queue), 15.0);
    sender
        .wait_for("accepted", 20, Duration::from_secs(30))
        .await;
    receiver
        .wait_for("received", 10, Duration::from_secs(30))
        .await;
    only(&w, &nodes, 0, false).await;
    let _restart = Restart(nodes[0].clone());
    script(
        "local-cluster",
        &["down"],
        &[("WARREN_NODES", &nodes[0].index.to_string())],
    )
    .expect("node stopped");
    sender.wait_for("closed", 1, Duration::from_secs(30)).await;
    receiver
        .wait_for("closed", 1, Duration::from_secs(30))
        .await;
    sender
        .wait_for("connected", 2, Duration::from_secs(30))
        .await;
    receiver
        .wait_for("connected", 2, Duration::from_secs(30))
        .await;
    let sent = sender.finish(Duration::from_secs(60)).await;
    let got = receiver.finish(Duration::from_secs(90)).await;
    closes(&sent);
    closes(&got);
    let accepted = Client::numbers(&sent, "accepted");
    let received = Client::numbers(&got, "received");
    let lost: Vec<&u64> = accepted.difference(&received).collect();
    eprintln!(
        "amqp10 stopped node: {} accepted, {} received, {} lost; sender {:?}, receiver {:?}",
        accepted.len(),
        received.len(),
        lost.len(),
        closes(&sent),
        closes(&got)
    );
    assert!(accepted.len() > 40, "{sent:?}");
    assert!(lost.is_empty(), "accepted but never received: {lost:?}");
    w.stop().await;
}

/// Starts a stopped node again when dropped.
struct Restart(Node);

impl Drop for Restart {
    fn drop(&mut self) {
        let i = self.0.index.to_string();
        if let Err(e) = script("local-cluster", &["start"], &[("WARREN_NODES", &i)]) {
            eprintln!("restarting {} failed: {e}", self.0.name);
        }
    }
}

/// warren's shutdown closes a 1.0 client with `amqp:connection:forced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_amqp10_clients_with_a_forced_close() {
    let Some(python) = proton_python() else {
        return;
    };
    let nodes = cluster().await;
    let w = Warren::start(&config(&nodes)).await;
    let queue = unique("q-amqp10-shutdown");
    quorum_queue(&nodes[0], &queue).await;
    let receiver = Client::start(&python, "receive", &w, &address(&queue), 3.0);
    receiver
        .wait_for("connected", 1, Duration::from_secs(30))
        .await;
    // Its link attached: the connection is open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.stop().await;
    receiver
        .wait_for("closed", 1, Duration::from_secs(15))
        .await;
    let first = receiver
        .lines()
        .into_iter()
        .find(|l| l.starts_with("closed"))
        .expect("closed");
    assert!(
        first.starts_with("closed amqp:connection:forced"),
        "{:?}",
        receiver.lines()
    );
}
