//! warren's listeners besides AMQP (issue 18), against the real nodes, with real
//! clients: MQTT (paho-mqtt, `mqtt_client.py`) and STOMP (stomp.py,
//! `stomp_client.py`) through warren's `mqtt` and `stomp` listeners go round
//! robin over the nodes (as their management API sees them); the management UI
//! through the `http` listener answers from each node in turn; a drain of one
//! backend closes its MQTT connections over `drain.window` and they come back
//! on the other nodes. scripts/local-cluster gives every node the plugins
//! (rabbitmq_mqtt, rabbitmq_stomp) and its ports; warren's backends carry them
//! (`ports:`, see [`config_yaml_listeners`]). The stream listener has a file of
//! its own, tests/it/streams.rs.

use std::time::Duration;

use crate::common::*;

/// `guest:guest` for the management API through warren.
const BASIC_GUEST: &str = "Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=";

/// The node of each connection the management API lists whose `protocol`
/// starts with `protocol` (`MQTT`, `STOMP`) and that `keep` accepts.
async fn nodes_of(
    via: &Node,
    protocol: &str,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<String> {
    let v = mgmt_get(
        via,
        "/api/connections?columns=node,protocol,client_properties",
    )
    .await
    .expect("GET /api/connections");
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|c| {
                    c["protocol"]
                        .as_str()
                        .is_some_and(|p| p.starts_with(protocol))
                })
                .filter(|c| keep(c))
                .filter_map(|c| c["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// MQTT connections whose client id (`TOPIC-PID`, mqtt_client.py) starts with `prefix`.
async fn mqtt_nodes(via: &Node, prefix: &str) -> Vec<String> {
    nodes_of(via, "MQTT", |c| {
        c["client_properties"]["client_id"]
            .as_str()
            .is_some_and(|id| id.starts_with(prefix))
    })
    .await
}

/// Waits until the management API lists `n` connections `list` finds.
async fn wait_listed<F, Fut>(list: F, n: usize, within: Duration) -> Vec<String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let start = tokio::time::Instant::now();
    loop {
        let found = list().await;
        if found.len() == n || start.elapsed() > within {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_clients_through_warren_go_round_robin_over_the_nodes() {
    let nodes = cluster().await;
    let Some(python) = clients_python() else {
        return;
    };
    let (yaml, l) = config_yaml_listeners(&nodes, "health:\n  slowstart: 0s\n  password: guest\n");
    let w = Warren::start(&yaml).await;
    let topic = unique("mqtt-rr");
    let (host, port) = (l.mqtt.ip().to_string(), l.mqtt.port().to_string());
    // One after the other, each holding its connection, so round robin places them.
    let mut clients = Vec::new();
    for i in 0..6 {
        let c = PyClient::start(
            &python,
            "mqtt_client.py",
            &[&host, &port, &topic, "10", "20"],
            &format!("mqtt {i}"),
            &[],
        );
        c.wait_for("ok 10", 1, Duration::from_secs(30)).await;
        clients.push(c);
    }
    let seen = wait_listed(|| mqtt_nodes(&nodes[0], &topic), 6, Duration::from_secs(30)).await;
    assert_eq!(per_node(&nodes, &seen), vec![2, 2, 2], "{seen:?}");
    // Each went through warren: the peer it saw is the mqtt listener.
    for c in &clients {
        let peers: Vec<String> = connections(&c.lines())
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(peers, vec![l.mqtt.to_string()], "{:?}", c.lines());
    }
    for c in clients {
        c.finish(Duration::from_secs(60)).await;
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_clients_through_warren_go_round_robin_over_the_nodes() {
    let nodes = cluster().await;
    let Some(python) = clients_python() else {
        return;
    };
    let (yaml, l) = config_yaml_listeners(&nodes, "health:\n  slowstart: 0s\n  password: guest\n");
    let w = Warren::start(&yaml).await;
    let (host, port) = (l.stomp.ip().to_string(), l.stomp.port().to_string());
    // STOMP connections carry no name the management API shows: this test
    // counts every STOMP connection (no other test makes any), before and while.
    let before = per_node(&nodes, &nodes_of(&nodes[0], "STOMP", |_| true).await);
    let mut clients = Vec::new();
    for i in 0..6 {
        let queue = unique("stomp-rr");
        let c = PyClient::start(
            &python,
            "stomp_client.py",
            &[&host, &port, &queue, "10", "20"],
            &format!("stomp {i}"),
            &[],
        );
        c.wait_for("ok 10", 1, Duration::from_secs(30)).await;
        clients.push(c);
    }
    let total: usize = before.iter().sum::<usize>() + 6;
    let seen = wait_listed(
        || nodes_of(&nodes[0], "STOMP", |_| true),
        total,
        Duration::from_secs(30),
    )
    .await;
    let now = per_node(&nodes, &seen);
    let added: Vec<usize> = now.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(added, vec![2, 2, 2], "before {before:?}, now {now:?}");
    for c in &clients {
        let peers: Vec<String> = connections(&c.lines())
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(peers, vec![l.stomp.to_string()], "{:?}", c.lines());
    }
    for c in clients {
        c.finish(Duration::from_secs(60)).await;
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_ui_through_warren_answers_from_each_node_in_turn() {
    let nodes = cluster().await;
    let (yaml, l) = config_yaml_listeners(&nodes, "health:\n  slowstart: 0s\n  password: guest\n");
    let w = Warren::start(&yaml).await;
    // One TCP connection per request (Connection: close): each is balanced.
    let mut answered = Vec::new();
    for _ in 0..6 {
        let (status, body) =
            admin_request_with(l.http, "GET", "/api/overview", &[BASIC_GUEST], "").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("overview JSON");
        answered.push(v["node"].as_str().expect("node").to_string());
    }
    assert_eq!(per_node(&nodes, &answered), vec![2, 2, 2], "{answered:?}");
    // In turn: no node twice in a row.
    for pair in answered.windows(2) {
        assert_ne!(pair[0], pair[1], "{answered:?}");
    }
    // The UI itself (a static page) comes through too.
    let (status, body) = admin_request_with(l.http, "GET", "/", &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("RabbitMQ"), "{body}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_the_nodes_mqtt_connections_over_the_window_and_they_reconnect_elsewhere() {
    let nodes = cluster().await;
    let Some(python) = clients_python() else {
        return;
    };
    let (yaml, l) = config_yaml_listeners(
        &nodes,
        "drain:\n  window: 3s\n  grace: 10s\nhealth:\n  slowstart: 0s\n  password: guest\n",
    );
    let w = Warren::start(&yaml).await;
    let topic = unique("mqtt-drain");
    let (host, port) = (l.mqtt.ip().to_string(), l.mqtt.port().to_string());
    let mut clients = Vec::new();
    for i in 0..6 {
        let c = PyClient::start(
            &python,
            "mqtt_client.py",
            &[&host, &port, &topic, "5", "40"],
            &format!("mqtt {i}"),
            &[],
        );
        c.wait_for("ok 5", 1, Duration::from_secs(30)).await;
        clients.push(c);
    }
    let seen = wait_listed(|| mqtt_nodes(&nodes[0], &topic), 6, Duration::from_secs(30)).await;
    assert_eq!(per_node(&nodes, &seen), vec![2, 2, 2], "{seen:?}");

    let started = tokio::time::Instant::now();
    let (status, body) = w
        .admin_post(&format!("/api/backends/{}/drain", nodes[0].backend))
        .await;
    assert_eq!(status, 200, "{body}");
    // Two clients were on nodes[0]: both are closed (within the window, plus
    // the health and scheduling slack) and reconnect, through warren, elsewhere.
    let start = tokio::time::Instant::now();
    loop {
        let moved = clients.iter().filter(|c| c.count("roundtrip") >= 1).count();
        if moved == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not 2 clients reconnected after the drain: {:?}",
            clients.iter().map(|c| c.lines()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed_after = started.elapsed();
    assert!(
        closed_after < Duration::from_secs(3 + 8),
        "the drained clients came back only after {closed_after:?}"
    );
    // Only the two drained ones were disturbed.
    let disturbed = clients
        .iter()
        .filter(|c| c.count("disconnected") > 0)
        .count();
    assert_eq!(disturbed, 2);
    let seen = wait_listed(
        || async {
            let s = mqtt_nodes(&nodes[0], &topic).await;
            if per_node(&nodes, &s)[0] == 0 {
                s
            } else {
                Vec::new()
            }
        },
        6,
        Duration::from_secs(30),
    )
    .await;
    let spread = per_node(&nodes, &seen);
    assert_eq!(spread[0], 0, "{seen:?}");
    assert_eq!(spread.iter().sum::<usize>(), 6, "{seen:?}");
    w.wait_active(&nodes[0].backend, 0, Duration::from_secs(10))
        .await;

    w.admin_post(&format!("/api/backends/{}/enable", nodes[0].backend))
        .await;
    for c in clients {
        c.finish(Duration::from_secs(90)).await;
    }
    w.stop().await;
}

/// Starts the node's MQTT application again when dropped, so a failing test
/// leaves the node whole.
struct MqttStopped<'a>(&'a Node);

impl<'a> MqttStopped<'a> {
    fn stop(node: &'a Node) -> MqttStopped<'a> {
        ctl(node, &["eval", "application:stop(rabbitmq_mqtt)."]).expect("stop rabbitmq_mqtt");
        MqttStopped(node)
    }
}

impl Drop for MqttStopped<'_> {
    fn drop(&mut self) {
        if let Err(e) = ctl(self.0, &["eval", "application:start(rabbitmq_mqtt)."]) {
            eprintln!("starting rabbitmq_mqtt on {} again: {e}", self.0.name);
        }
    }
}

/// The backend's view for listener `name` in `GET /api/backends/NAME`.
async fn backend_listener(w: &Warren, backend: &str, name: &str) -> serde_json::Value {
    let b = w.backend(backend).await;
    b["listeners"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["listener"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("listener {name} in {b}"))
}

/// Waits until `backend` is out (or back) for listener `name`.
async fn wait_protocol_out(w: &Warren, backend: &str, name: &str, out: bool) -> serde_json::Value {
    let start = tokio::time::Instant::now();
    loop {
        let l = backend_listener(w, backend, name).await;
        if l["protocol_out"] == out {
            return l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{backend} never {} for {name}: {l}",
            if out { "out" } else { "back" }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node whose MQTT listener goes away (its MQTT application stopped) is out
/// for the `mqtt` listener only: after `health.fall` failed listener checks new
/// MQTT clients go to the other nodes, its STOMP and AMQP keep taking clients;
/// once the listener is back and passes `health.rise` checks, it takes MQTT
/// clients again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_its_mqtt_listener_is_out_for_mqtt_only() {
    let nodes = cluster_exclusive().await;
    let Some(python) = clients_python() else {
        return;
    };
    let (yaml, l) = config_yaml_listeners(
        &nodes,
        "health:\n  interval: 1s\n  fall: 2\n  rise: 2\n  slowstart: 0s\n  password: guest\n",
    );
    let w = Warren::start(&yaml).await;
    let out_node = &nodes[2];
    // Set by the first listener check.
    let start = tokio::time::Instant::now();
    loop {
        let m = w.metrics().await;
        let up = m.get(
            "warren_backend_protocol_up",
            &[("backend", &out_node.backend), ("protocol", "mqtt")],
        );
        if up == Some(1.0) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{up:?}: {}", m.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stopped = MqttStopped::stop(out_node);
    let view = wait_protocol_out(&w, &out_node.backend, "mqtt", true).await;
    assert_eq!(view["usable"], false, "{view}");
    let stomp = backend_listener(&w, &out_node.backend, "stomp").await;
    assert_eq!(stomp["usable"], true, "{stomp}");
    assert_eq!(w.backend(&out_node.backend).await["state"], "up");
    let m = w.metrics().await;
    assert_eq!(
        m.get(
            "warren_backend_protocol_up",
            &[("backend", &out_node.backend), ("protocol", "mqtt")]
        ),
        Some(0.0)
    );
    let (host, port) = (l.mqtt.ip().to_string(), l.mqtt.port().to_string());
    let topic = unique("mqtt-out");
    let mut clients = Vec::new();
    for i in 0..4 {
        let c = PyClient::start(
            &python,
            "mqtt_client.py",
            &[&host, &port, &topic, "5", "15"],
            &format!("mqtt {i}"),
            &[],
        );
        c.wait_for("ok 5", 1, Duration::from_secs(30)).await;
        clients.push(c);
    }
    let seen = wait_listed(|| mqtt_nodes(&nodes[0], &topic), 4, Duration::from_secs(30)).await;
    assert_eq!(per_node(&nodes, &seen), vec![2, 2, 0], "{seen:?}");
    // AMQP to the same node is not affected.
    let amqp = amqp_connect(&format!("amqp://guest:guest@{}/%2f", w.amqp)).await;
    let ch = amqp.create_channel().await.expect("channel");
    let _ = ch.close(200, "ok".into()).await;
    let _ = amqp.close(200, "ok".into()).await;
    drop(stopped);
    wait_protocol_out(&w, &out_node.backend, "mqtt", false).await;
    let events = w.admin_get("/api/events").await.1;
    assert!(
        events.contains("out for mqtt listeners") && events.contains("back for mqtt listeners"),
        "{events}"
    );
    for c in clients {
        c.finish(Duration::from_secs(60)).await;
    }
    w.stop().await;
}

/// Connect failures on another protocol's port do not count against the node
/// (passive detection is the AMQP port's): a node whose MQTT port refuses
/// stays up for AMQP, and is out for `mqtt` by its listener check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_to_an_mqtt_port_leave_the_node_up() {
    let nodes = cluster().await;
    let node = &nodes[0];
    let (mqtt, dead) = (free_port(), free_port());
    let w = Warren::start(&format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nretries: 0\nlisteners:\n  \
         - {{name: mqtt, listen: '127.0.0.1:{mqtt}', protocol: mqtt}}\n\
         health:\n  interval: 1s\n  fall: 2\n  rise: 2\n  slowstart: 0s\n  password: guest\n\
         backends:\n  - name: {}\n    address: {}\n    management: {}\n    ports: {{mqtt: {dead}}}\n",
        node.backend,
        node.amqp,
        node.mgmt_url()
    ))
    .await;
    w.wait_state(&node.backend, "up", Duration::from_secs(20))
        .await;
    // Until the listener check has said so, clients are sent there and refused.
    for _ in 0..6 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", mqtt))
            .await
            .expect("connect");
        let _ = read_until_closed(&mut s, Duration::from_secs(10)).await;
    }
    wait_protocol_out(&w, &node.backend, "mqtt", true).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = w.backend(&node.backend).await;
    assert_eq!(b["state"], "up", "{b}");
    assert_eq!(b["consecutive_failures"], 0, "{b}");
    let conn = amqp_connect(&format!("amqp://guest:guest@{}/%2f", w.amqp)).await;
    let _ = conn.close(200, "ok".into()).await;
    w.stop().await;
}
