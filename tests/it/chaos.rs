//! The chaos suite: publishers with publisher confirms and consumers with manual
//! acks, all through warren, on the real cluster with a replicated queue (a classic
//! mirrored queue with `ha-mode: all` on RabbitMQ 3.x, a quorum queue on 4.x, where
//! classic mirroring is gone), while each node in turn is killed (`kill -9`), stopped
//! (`stop_app`), frozen (SIGSTOP: it stops answering without sending a reset)
//! and drained by the operator. It counts lost confirmed messages (must be 0),
//! reconnect times, and the longest time a client was without a connection.
//!
//! CI runs it on one node (the queue's master); `scripts/chaos` runs all three
//! (`WARREN_CHAOS_NODES=3`) and prints the figures docs/reliability.md reports.
//!
//! The second test runs the same traffic on the cluster of `scripts/netns-cluster`,
//! formed by `warren bootstrap` with its `ha-allqueue` policy, whose nodes are
//! separate hosts (one network namespace each): each node in turn has its link
//! taken down for a few seconds (packets dropped, no reset: the way a dead host
//! or a pulled cable looks) and brought back.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// fall x interval + drain grace, with the config below.
const STUCK_BOUND: Duration = Duration::from_secs(2 + 5);
/// Rebalancing on, so clients move back to each node after it recovers and the
/// next fault on it hits them again.
const CONFIG: &str = "health:\n  interval: 1s\n  timeout: 1s\n  fall: 2\n  rise: 2\n  slowstart: 1s\n  password: guest\ndrain:\n  window: 2s\n  grace: 5s\n  close_timeout: 2s\nrebalance:\n  enabled: true\n  tolerance: 0.5\n  window: 2s\n  max_fraction: 0.5\n";
const PUBLISHERS: usize = 6;
const CONSUMERS: usize = 4;

#[derive(Default)]
struct Tally {
    confirmed: Mutex<HashSet<u64>>,
    consumed: Mutex<HashSet<u64>>,
    /// Time from losing a connection to having a working one again.
    reconnects: Mutex<Vec<Duration>>,
    /// The longest a publisher waited for a confirm (a stalled queue, not a
    /// disconnection: the client keeps its connection meanwhile).
    slowest_confirm: Mutex<Duration>,
}

impl Tally {
    fn reconnected(&self, since: Option<Instant>) {
        if let (Some(t), Ok(mut r)) = (since, self.reconnects.lock()) {
            r.push(t.elapsed());
        }
    }
}

/// Connects (retrying every 100 ms) until it works or `stop`.
async fn connect_retrying(url: &str, stop: &CancellationToken) -> Option<Connection> {
    loop {
        if stop.is_cancelled() {
            return None;
        }
        let attempt = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(url, lapin::ConnectionProperties::default()),
        )
        .await;
        if let Ok(Ok(c)) = attempt {
            return Some(c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn publisher(
    url: String,
    queue: String,
    next: Arc<AtomicU64>,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut lost_at: Option<Instant> = None;
    'outer: while !stop.is_cancelled() {
        let Some(conn) = connect_retrying(&url, &stop).await else {
            break;
        };
        let Ok(ch) = conn.create_channel().await else {
            lost_at.get_or_insert_with(Instant::now);
            continue;
        };
        if ch
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
        {
            lost_at.get_or_insert_with(Instant::now);
            continue;
        }
        tally.reconnected(lost_at.take());
        while !stop.is_cancelled() {
            let id = next.fetch_add(1, Ordering::Relaxed);
            let sent_at = Instant::now();
            let props = BasicProperties::default().with_delivery_mode(2);
            let sent = ch
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &id.to_be_bytes(),
                    props,
                )
                .await;
            let confirm = match sent {
                Ok(c) => tokio::time::timeout(Duration::from_secs(30), c).await,
                Err(_) => {
                    lost_at = Some(Instant::now());
                    continue 'outer;
                }
            };
            match confirm {
                Ok(Ok(Confirmation::Ack(_))) => {
                    if let Ok(mut c) = tally.confirmed.lock() {
                        c.insert(id);
                    }
                    if let Ok(mut slowest) = tally.slowest_confirm.lock() {
                        *slowest = (*slowest).max(sent_at.elapsed());
                    }
                }
                _ => {
                    lost_at = Some(Instant::now());
                    let _ = conn.close(200, "retry".into()).await;
                    continue 'outer;
                }
            }
        }
        let _ = conn.close(200, "done".into()).await;
    }
}

async fn consumer(url: String, queue: String, tally: Arc<Tally>, stop: CancellationToken) {
    let mut lost_at: Option<Instant> = None;
    while !stop.is_cancelled() {
        let Some(conn) = connect_retrying(&url, &stop).await else {
            break;
        };
        let closed = watch_close(&conn);
        let setup = async {
            let ch = conn.create_channel().await?;
            ch.basic_qos(100, BasicQosOptions::default()).await?;
            let c = ch
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>(c)
        };
        let Ok(mut deliveries) = setup.await else {
            lost_at.get_or_insert_with(Instant::now);
            continue;
        };
        tally.reconnected(lost_at.take());
        let run = async {
            while let Some(Ok(d)) = deliveries.next().await {
                if let Ok(b) = <[u8; 8]>::try_from(&d.data[..]) {
                    if let Ok(mut c) = tally.consumed.lock() {
                        c.insert(u64::from_be_bytes(b));
                    }
                }
                if d.ack(BasicAckOptions::default()).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = conn.close(200, "done".into()).await;
                return;
            }
            _ = run => {}
            _ = closed => {}
        }
        lost_at = Some(Instant::now());
    }
}

/// Waits until the node is back in service and the rebalance moved clients onto it.
async fn settle(w: &Warren, node: &Node) {
    w.wait_state(&node.backend, "up", Duration::from_secs(60))
        .await;
    let start = Instant::now();
    while w.backend(&node.backend).await["active_connections"]
        .as_u64()
        .unwrap_or(0)
        == 0
        && start.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the queue has `n` synchronised mirrors (after a node came back); for
/// a quorum queue, until `n` members besides the leader are online.
async fn wait_synchronised(via: &Node, queue: &str, n: usize) {
    let start = Instant::now();
    loop {
        if let Ok(q) = mgmt_get(via, &format!("/api/queues/%2F/{queue}")).await {
            let count = |key: &str| q[key].as_array().map_or(0, |a| a.len());
            let replicas = if q["type"] == "quorum" {
                count("online").saturating_sub(1)
            } else {
                count("synchronised_slave_nodes")
            };
            if replicas >= n {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "queue {queue} never resynchronised"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Declares the durable queue on `nodes[0]` directly, so that its master (or, for a
/// quorum queue, its leader) is there, and waits until both other nodes hold
/// synchronised mirrors (members).
async fn declare_mirrored(nodes: &[Node], queue: &str, quorum: bool) {
    let direct = amqp_connect(&nodes[0].url()).await;
    let ch = direct.create_channel().await.expect("channel");
    if quorum {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(queue.into(), durable(), args)
            .await
            .expect("declare quorum queue");
    } else {
        declare_queue(&ch, queue, durable()).await;
    }
    let _ = direct.close(200, "bye".into()).await;
    wait_synchronised(&nodes[1], queue, 2).await;
}

/// The traffic of a chaos run: warren in front of the nodes, publishers and
/// consumers on `queue` through it.
struct Workload {
    w: Warren,
    queue: String,
    stop: CancellationToken,
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    async fn start(nodes: &[Node], queue: &str) -> Workload {
        let w = Warren::start(&config_yaml(nodes, CONFIG)).await;
        let stop = CancellationToken::new();
        let tally = Arc::new(Tally::default());
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..PUBLISHERS {
            tasks.push(tokio::spawn(publisher(
                w.url(),
                queue.to_string(),
                next.clone(),
                tally.clone(),
                stop.clone(),
            )));
        }
        for _ in 0..CONSUMERS {
            tasks.push(tokio::spawn(consumer(
                w.url(),
                queue.to_string(),
                tally.clone(),
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        Workload {
            w,
            queue: queue.to_string(),
            stop,
            tally,
            tasks,
        }
    }

    /// Stops publishing, empties the queue, prints the figures (`what` says which
    /// faults ran, in `chaos_time`) and checks them: nothing confirmed lost, some
    /// reconnections, no client without a connection for longer than the bound.
    async fn finish(self, what: &str, chaos_time: Duration) {
        let Workload {
            w,
            queue,
            stop,
            tally,
            tasks,
        } = self;
        // Stop publishing, let the consumers take everything that is left.
        stop.cancel();
        for t in tasks {
            let _ = t.await;
        }
        // Drain what remains with a fresh consumer.
        let conn = amqp_connect(&w.url()).await;
        let ch = conn.create_channel().await.expect("channel");
        while let Some(m) = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            if let Ok(b) = <[u8; 8]>::try_from(&m.delivery.data[..]) {
                tally
                    .consumed
                    .lock()
                    .expect("lock")
                    .insert(u64::from_be_bytes(b));
            }
        }
        delete_queue(&ch, &queue).await;
        let _ = conn.close(200, "bye".into()).await;

        let confirmed = tally.confirmed.lock().expect("lock").clone();
        let consumed = tally.consumed.lock().expect("lock").clone();
        let lost: Vec<u64> = confirmed.difference(&consumed).copied().collect();
        let mut reconnects = tally.reconnects.lock().expect("lock").clone();
        reconnects.sort();
        let worst = reconnects.last().copied().unwrap_or_default();
        let slowest_confirm = *tally.slowest_confirm.lock().expect("lock");
        eprintln!(
            "chaos result: {what} in {chaos_time:.0?}; {} confirmed, {} consumed, {} lost; \
             {} reconnects, p50 {:?}, p99 {:?}, max {:?} (bound {:?}); longest wait for a confirm {:.1?}",
            confirmed.len(),
            consumed.len(),
            lost.len(),
            reconnects.len(),
            percentile(&reconnects, 0.5),
            percentile(&reconnects, 0.99),
            worst,
            STUCK_BOUND,
            slowest_confirm
        );
        assert!(
            confirmed.len() > 1000,
            "too little traffic to mean anything: {}",
            confirmed.len()
        );
        assert!(
            lost.is_empty(),
            "{} confirmed messages lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        assert!(
            !reconnects.is_empty(),
            "no client was ever disconnected: the faults did nothing"
        );
        assert!(
            worst <= STUCK_BOUND + Duration::from_secs(3),
            "a client stayed without a connection for {worst:?}"
        );
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_confirmed_message_is_lost_when_nodes_fail() {
    let nodes = cluster_exclusive().await;
    let rounds: usize = std::env::var("WARREN_CHAOS_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, 3);
    let overview = mgmt_get(&nodes[0], "/api/overview")
        .await
        .expect("overview");
    let running = overview["rabbitmq_version"].as_str().unwrap_or_default();
    assert!(
        running.starts_with(&format!("{}.", rabbitmq_version())),
        "the nodes run RabbitMQ {running}, WARREN_RABBITMQ says {}",
        rabbitmq_version()
    );
    // The mirroring policy, as `warren bootstrap` applies it (for this test's queues);
    // on 4.x the queue is declared as a quorum queue instead.
    let quorum = !classic_mirroring();
    if !quorum {
        let ep = warren::mgmt::Target::new(&nodes[0].mgmt_url(), &Default::default()).expect("url");
        let policy = serde_json::json!({"pattern": "^chaos\\.", "definition": {"ha-mode": "all", "ha-sync-mode": "automatic"}, "priority": 1, "apply-to": "queues"});
        let r = warren::mgmt::request(
            &ep,
            &guest(),
            hyper::Method::PUT,
            "/api/policies/%2F/chaos-ha",
            Some(policy),
            Duration::from_secs(10),
        )
        .await
        .expect("policy");
        assert!(r.status.is_success(), "policy: {}", r.status);
    }

    // The queue's master (leader) on n1 (declared there directly), replicated on n2 and n3.
    let queue = unique("chaos.q").replace('-', "_");
    declare_mirrored(&nodes, &queue, quorum).await;
    let load = Workload::start(&nodes, &queue).await;
    let w = &load.w;

    let started = Instant::now();
    for node in nodes.iter().take(rounds) {
        eprintln!("chaos: kill -9 {}", node.name);
        signal(node.pid(), "-KILL");
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Err(e) = script("local-cluster", &["start"], &[]) {
            panic!("local-cluster start: {e}");
        }
        wait_synchronised(&nodes[(node.index) % 3], &queue, 2).await;
        settle(w, node).await;

        eprintln!("chaos: stop_app {}", node.name);
        let stopped = StoppedApp::stop(node);
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(stopped);
        wait_synchronised(&nodes[(node.index) % 3], &queue, 2).await;
        settle(w, node).await;

        eprintln!("chaos: freeze {}", node.name);
        let pid = node.pid();
        signal(pid, "-STOP");
        tokio::time::sleep(Duration::from_secs(5)).await;
        signal(pid, "-CONT");
        settle(w, node).await;

        eprintln!("chaos: operator drain {}", node.name);
        w.admin_post(&format!("/api/backends/{}/drain", node.backend))
            .await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        w.admin_post(&format!("/api/backends/{}/enable", node.backend))
            .await;
        wait_synchronised(&nodes[(node.index) % 3], &queue, 2).await;
    }
    let chaos_time = started.elapsed();
    load.finish(&format!("{rounds} node(s) x 4 faults"), chaos_time)
        .await;
}

/// How long each node's link stays down: long enough for warren to mark the node
/// down (fall x interval + timeout = 3 s) and move its clients, far below Erlang's
/// net_ticktime (60 s), so the cluster does not partition.
const CUT: Duration = Duration::from_secs(6);

/// `scripts/netns-cluster ARGS`, without blocking the runtime; its stderr (where it
/// says, for instance, that it healed a partition), as the error on failure.
async fn netns_cluster(args: &[&str]) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        script("netns-cluster", &args, &[])
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A node's link taken down; brought back on drop if the test fails meanwhile.
struct LinkCut(Option<usize>);

impl LinkCut {
    async fn new(node: &Node) -> LinkCut {
        let n = node.index.to_string();
        if let Err(e) = netns_cluster(&["cut", &n]).await {
            panic!("scripts/netns-cluster cut {n}: {e}");
        }
        LinkCut(Some(node.index))
    }

    /// Link up, and the cluster whole again (the script heals a partition).
    async fn restore(mut self) {
        let n = self.0.take().expect("cut").to_string();
        match netns_cluster(&["restore", &n]).await {
            Ok(said) => said.lines().for_each(|l| eprintln!("chaos: {l}")),
            Err(e) => panic!("scripts/netns-cluster restore {n}: {e}"),
        }
    }
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        if let Some(n) = self.0 {
            let _ = script("netns-cluster", &["restore", &n.to_string()], &[]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_confirmed_message_is_lost_when_node_links_are_cut() {
    let nodes = netns_cluster_exclusive().await;
    // Mirrored by the cluster's own ha-allqueue policy; master on c1.
    let queue = unique("chaos.netns").replace('-', "_");
    declare_mirrored(&nodes, &queue, false).await;
    let load = Workload::start(&nodes, &queue).await;
    let w = &load.w;

    let started = Instant::now();
    for node in nodes.iter() {
        eprintln!("chaos: cut the link of {} ({CUT:?})", node.name);
        let cut_at = Instant::now();
        let cut = LinkCut::new(node).await;
        let noticed = w.wait_state(&node.backend, "down", CUT).await;
        let reason = w.backend(&node.backend).await["last_failure"].clone();
        tokio::time::sleep_until(cut_at + CUT).await;
        cut.restore().await;
        eprintln!(
            "chaos: {} marked down after {noticed:.1?} ({reason}); link up and cluster checked whole in {:.1?}",
            node.backend,
            cut_at.elapsed() - CUT
        );
        wait_synchronised(&nodes[node.index % 3], &queue, 2).await;
        settle(w, node).await;
    }
    let chaos_time = started.elapsed();
    load.finish("3 node(s) x link cut (namespace cluster)", chaos_time)
        .await;
}
