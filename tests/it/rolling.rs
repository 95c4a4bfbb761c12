//! `warren rolling-restart` with the real binary against the real nodes, each
//! restarted by `scripts/local-cluster` (WARREN_NODES=i): under a confirmed
//! publisher and a consumer that go through warren the whole time, no confirmed
//! message is lost, and every node ends revived, running and clustered. A
//! restart command that fails stops the run there with exit code 70.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use crate::maintenance::{operations_yaml, Revive};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

/// The restart command of node `n`: down and up again with the node scripts
/// (the WARREN_* variables of the test's environment pass through).
fn restart_of(n: &Node) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    format!(
        "WARREN_NODES={i} {root}/scripts/local-cluster down && WARREN_NODES={i} {root}/scripts/local-cluster start",
        i = n.index
    )
}

fn config(nodes: &[Node], restart: &dyn Fn(&Node) -> String) -> String {
    let mut y = format!(
        "drain:\n  window: 2s\n  grace: 10s\nhealth:\n  interval: 500ms\n  slowstart: 1s\n  password: guest\n{}backends:\n",
        operations_yaml(nodes, Some(restart))
    );
    for n in nodes {
        y.push_str(&n.backend_yaml(&n.backend));
    }
    y
}

/// Runs `warren ARGS -c CONFIG`: (exit code, stdout, stderr).
async fn warren_cli(args: &[&str], config: &std::path::Path) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.args(args).arg("-c").arg(config);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("warren runs"))
        .await
        .expect("joined");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn connect_retrying(url: &str, stop: &AtomicBool) -> Option<lapin::Connection> {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(c) = try_amqp_connect_named(url, &unique("rolling-client")).await {
            return Some(c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Publishes numbered messages one at a time, each confirmed, reconnecting
/// through warren whenever its connection goes; the confirmed numbers.
async fn publisher(url: String, queue: String, stop: Arc<AtomicBool>) -> BTreeSet<u32> {
    let mut confirmed = BTreeSet::new();
    let mut next = 0u32;
    while let Some(conn) = connect_retrying(&url, &stop).await {
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        if ch
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
        {
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
            let sent = ch
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &next.to_be_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await;
            let Ok(pending) = sent else { break };
            match pending.await {
                Ok(c) if c.is_ack() => {
                    confirmed.insert(next);
                }
                Ok(_) => {}
                Err(_) => break,
            }
            next += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    confirmed
}

/// Takes messages with basic.get and acks them, reconnecting through warren.
async fn consumer(
    url: String,
    queue: String,
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<BTreeSet<u32>>>,
) {
    while let Some(conn) = connect_retrying(&url, &stop).await {
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            match ch
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(m)) => {
                    if let Ok(b) = <[u8; 4]>::try_from(m.delivery.data.as_slice()) {
                        got.lock().expect("lock").insert(u32::from_be_bytes(b));
                    }
                    if m.delivery.ack(BasicAckOptions::default()).await.is_err() {
                        break;
                    }
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => break,
            }
        }
        let _ = conn.close(200, "bye".into()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_confirmed_load_loses_nothing() {
    let nodes = cluster_exclusive().await;
    let _revive: Vec<Revive> = nodes.iter().cloned().map(Revive).collect();
    let w = WarrenProcess::start(&config(&nodes, &restart_of), 4096).await;
    let queue = unique("q-rolling");
    {
        let conn = amqp_connect(&nodes[0].url()).await;
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
        ch.queue_declare(queue.as_str().into(), durable, args)
            .await
            .expect("quorum queue");
        let _ = conn.close(200, "bye".into()).await;
    }
    let stop_pub = Arc::new(AtomicBool::new(false));
    let stop_con = Arc::new(AtomicBool::new(false));
    let got = Arc::new(Mutex::new(BTreeSet::new()));
    let publisher = tokio::spawn(publisher(w.url(), queue.clone(), Arc::clone(&stop_pub)));
    let consumer = tokio::spawn(consumer(
        w.url(),
        queue.clone(),
        Arc::clone(&stop_con),
        Arc::clone(&got),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (code, out, err) = warren_cli(&["rolling-restart"], &w.config()).await;
    eprintln!("{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    for n in &nodes {
        assert!(
            out.contains(&format!("{} ({})", n.backend, n.name)),
            "{out}"
        );
    }
    assert_eq!(out.matches("rabbitmq-upgrade drain").count(), 3, "{out}");
    assert_eq!(out.matches("back in rotation").count(), 3, "{out}");
    assert!(out.contains("rolling restart done"), "{out}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_pub.store(true, Ordering::Relaxed);
    let confirmed = publisher.await.expect("publisher");
    assert!(
        confirmed.len() > 100,
        "the publisher hardly ran: {}",
        confirmed.len()
    );
    let start = tokio::time::Instant::now();
    let lost = loop {
        let lost: Vec<u32> = {
            let g = got.lock().expect("lock");
            confirmed
                .iter()
                .filter(|i| !g.contains(i))
                .copied()
                .collect()
        };
        if lost.is_empty() || start.elapsed() > Duration::from_secs(30) {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop_con.store(true, Ordering::Relaxed);
    let _ = consumer.await;
    eprintln!(
        "confirmed {}, consumed {}, lost {}",
        confirmed.len(),
        got.lock().expect("lock").len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} confirmed messages lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );

    // Every node is back: running, clustered, out of maintenance.
    let nodes = wait_nodes_up().await;
    let running = mgmt_get(&nodes[0], "/api/nodes").await.expect("nodes");
    let up = running
        .as_array()
        .map(|a| a.iter().filter(|n| n["running"] == true).count());
    assert_eq!(up, Some(3), "{running}");
    if let Ok(conn) = try_amqp_connect_named(&nodes[0].url(), "cleanup").await {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_restart_command_stops_the_run_with_70_and_maintenance_off_recovers() {
    let nodes = cluster_exclusive().await;
    let _revive: Vec<Revive> = nodes.iter().cloned().map(Revive).collect();
    let w = WarrenProcess::start(
        &config(&nodes, &|_| "echo no such host >&2; exit 3".into()),
        1024,
    )
    .await;
    // A dry run names every node and its command, in order, and changes nothing.
    let (code, out, err) = warren_cli(&["rolling-restart", "--dry-run"], &w.config()).await;
    assert_eq!(code, 0, "{out}{err}");
    let at: Vec<usize> = nodes
        .iter()
        .map(|n| {
            out.find(&n.name)
                .unwrap_or_else(|| panic!("{} missing: {out}", n.name))
        })
        .collect();
    assert!(at.windows(2).all(|p| p[0] < p[1]), "not in order: {out}");
    assert_eq!(out.matches("no such host").count(), nodes.len(), "{out}");
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    let (status, body) = admin_request(w.admin, "GET", "/api/backends").await;
    assert_eq!(status, 200, "{body}");
    let backends: serde_json::Value = serde_json::from_str(&body).expect("json");
    for b in backends.as_array().expect("a list") {
        assert_eq!(b["mode"], "enabled", "a dry run changed a backend: {b}");
    }
    assert!(tokio::net::TcpStream::connect(nodes[0].amqp).await.is_ok());
    let (code, out, err) = warren_cli(&["rolling-restart"], &w.config()).await;
    assert_eq!(code, 70, "{out}{err}");
    let first = &nodes[0];
    assert!(
        err.contains(&format!("stopped at {}", first.backend)),
        "{err}"
    );
    assert!(err.contains("no such host"), "{err}");
    assert!(
        !out.contains(&nodes[1].name),
        "a node after the failure was touched: {out}"
    );
    // The first node is in maintenance: warren routes nothing to it, RabbitMQ
    // suspended its listener.
    assert!(tokio::net::TcpStream::connect(first.amqp).await.is_err());
    let (code, out, err) = warren_cli(&["maintenance", "off", &first.backend], &w.config()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("back in rotation"), "{out}");
    assert!(tokio::net::TcpStream::connect(first.amqp).await.is_ok());
}
