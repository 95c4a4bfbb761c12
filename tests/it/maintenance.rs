//! Maintenance mode led by warren, against the real nodes: `on` refuses a
//! quorum-critical node, otherwise closes warren's clients of the node paced,
//! routes no new one to it and puts the node into RabbitMQ's maintenance mode
//! (its listener suspended); `off` revives it and brings it back. Each test
//! revives the node it touched, whatever happens.

use std::time::Duration;

use crate::common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};

/// `rabbitmq-upgrade` beside the CLI the tests use (`WARREN_RABBITMQCTL`).
pub fn rabbitmq_upgrade() -> String {
    rabbitmq_cli().replace("rabbitmqctl", "rabbitmq-upgrade")
}

/// The `operations:` section naming the three nodes; `restart` per node when given.
pub fn operations_yaml(nodes: &[Node], restart: Option<&dyn Fn(&Node) -> String>) -> String {
    let mut y = format!(
        "operations:\n  rabbitmq_upgrade: {}\n  ready_timeout: 90s\n  command_timeout: 120s\n  nodes:\n",
        rabbitmq_upgrade()
    );
    for n in nodes {
        y.push_str(&format!(
            "    - backend: {}\n      node: {}\n",
            n.backend, n.name
        ));
        if let Some(r) = restart {
            y.push_str(&format!("      restart: {:?}\n", r(n)));
        }
    }
    y
}

/// Revives a node on drop (a no-op on a node that is not drained).
pub struct Revive(pub Node);

impl Drop for Revive {
    fn drop(&mut self) {
        let cli = rabbitmq_upgrade();
        let mut argv = cli.split_whitespace();
        let _ = std::process::Command::new(argv.next().unwrap_or("rabbitmq-upgrade"))
            .args(argv)
            .args(["-n", &self.0.name, "revive"])
            .output();
    }
}

fn steps(report: &serde_json::Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["step"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_on_drains_paced_suspends_the_node_and_off_brings_it_back() {
    let nodes = cluster_exclusive().await;
    let _revive = Revive(nodes[0].clone());
    let extra = format!(
        "drain:\n  window: 2s\n  grace: 10s\nhealth:\n  interval: 500ms\n  slowstart: 0s\n  password: guest\n{}",
        operations_yaml(&nodes, None)
    );
    let w = Warren::start(&config_yaml(&nodes, &extra)).await;
    let prefix = unique("maint");
    let conns = connections_on(&w, &nodes, 0, 8, &prefix).await;
    assert_eq!(
        per_node(&nodes, &wait_named(&nodes[0], &prefix, 8).await),
        vec![8, 0, 0]
    );
    let watchers: Vec<_> = conns.iter().map(watch_close).collect();

    let started = tokio::time::Instant::now();
    let (status, body) = w
        .admin_post(&format!(
            "/api/backends/{}/maintenance/on",
            nodes[0].backend
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON report");
    assert_eq!(
        steps(&report),
        [
            "safety checks",
            "drain warren's clients",
            "rabbitmq-upgrade drain"
        ],
        "{body}"
    );
    // Every client was closed the AMQP way, spread over the window.
    let mut closes = Vec::new();
    for h in watchers {
        let c = closed_within(h, Duration::from_secs(15))
            .await
            .expect("every client is closed");
        assert_eq!(c.code, Some(320), "{c:?}");
        closes.push(c.at.duration_since(started));
    }
    closes.sort();
    assert!(
        closes[7] - closes[0] >= Duration::from_millis(1200),
        "closes not paced over the 2 s window: {closes:?}"
    );
    // RabbitMQ's maintenance mode: the node's AMQP listener is suspended.
    assert!(
        tokio::net::TcpStream::connect(nodes[0].amqp).await.is_err(),
        "the drained node still accepts AMQP connections"
    );
    // No new connection goes to it.
    let again = unique("maint-again");
    let mut kept = Vec::new();
    for i in 0..6 {
        kept.push(amqp_connect_named(&w.url(), &format!("{again}-{i}")).await);
    }
    let counts = per_node(&nodes, &wait_named(&nodes[1], &again, 6).await);
    assert_eq!((counts[0], counts[1] + counts[2]), (0, 6), "{counts:?}");
    let b = w.backend(&nodes[0].backend).await;
    assert_eq!(b["mode"], "draining", "{b}");

    // Off: revived, checked, back in rotation.
    let (status, body) = w
        .admin_post(&format!(
            "/api/backends/{}/maintenance/off",
            nodes[0].backend
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON report");
    assert_eq!(
        steps(&report),
        [
            "rabbitmq-upgrade revive",
            "health checks",
            "back in rotation"
        ],
        "{body}"
    );
    assert!(tokio::net::TcpStream::connect(nodes[0].amqp).await.is_ok());
    let b = w.backend(&nodes[0].backend).await;
    assert_eq!(
        (&b["mode"], &b["state"]),
        (&"enabled".into(), &"up".into()),
        "{b}"
    );
    let third = unique("maint-back");
    let mut back = Vec::new();
    for i in 0..9 {
        back.push(amqp_connect_named(&w.url(), &format!("{third}-{i}")).await);
    }
    let counts = per_node(&nodes, &wait_named(&nodes[1], &third, 9).await);
    assert!(
        counts[0] > 0,
        "nothing routed to the revived node: {counts:?}"
    );
    for c in kept.into_iter().chain(back) {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_on_refuses_a_quorum_critical_node_and_changes_nothing() {
    let nodes = cluster_exclusive().await;
    let _revive = Revive(nodes[0].clone());
    let extra = format!(
        "health:\n  interval: 500ms\n  password: guest\n{}",
        operations_yaml(&nodes, None)
    );
    let w = Warren::start(&config_yaml(&nodes, &extra)).await;
    // A quorum queue on all three nodes; with a third node stopped, the first
    // holds the last majority.
    let queue = unique("q-critical");
    let conn = amqp_connect(&nodes[0].url()).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .expect("quorum queue");
    {
        let _stopped = StoppedApp::stop(&nodes[2]);
        let (status, body) = w
            .admin_post(&format!(
                "/api/backends/{}/maintenance/on",
                nodes[0].backend
            ))
            .await;
        assert_eq!(status, 409, "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).expect("JSON report");
        assert_eq!(report["outcome"], "refused", "{body}");
        assert!(
            report["error"]
                .as_str()
                .is_some_and(|e| e.contains("node-is-quorum-critical")),
            "{body}"
        );
        // Nothing changed: still routed to, still accepting.
        let b = w.backend(&nodes[0].backend).await;
        assert_eq!(b["mode"], "enabled", "{b}");
        assert!(tokio::net::TcpStream::connect(nodes[0].amqp).await.is_ok());
    }
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}
