//! Health checks against the real nodes: stop_app, a memory alarm, a frozen node;
//! and a fake management API for what a real node cannot do on demand.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use lapin::types::FieldTable;

/// interval 1s, timeout 1s, fall 2, rise 2: down within fall x interval + timeout = 3 s.
const FAST_CHECKS: &str = "health:\n  interval: 1s\n  timeout: 1s\n  fall: 2\n  rise: 2\n  slowstart: 0s\n  password: guest\n";
const DOWN_BOUND: Duration = Duration::from_secs(3);
/// Slack for a shared, noisy machine on top of the configured bound.
const SLACK: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_app_marks_node_down_clients_get_320_and_it_returns_after_rise() {
    let nodes = cluster_exclusive().await;
    let w = Warren::start(&config_yaml(&nodes, FAST_CHECKS)).await;
    w.wait_state(&nodes[1].backend, "up", Duration::from_secs(5))
        .await;
    let prefix = unique("stopapp");
    let conns = connections_on(&w, &nodes, 1, 3, &prefix).await;
    let watchers: Vec<_> = conns.iter().map(watch_close).collect();

    let stopped = StoppedApp::stop(&nodes[1]);
    let took = w
        .wait_state(&nodes[1].backend, "down", DOWN_BOUND + SLACK)
        .await;
    eprintln!("marked down {took:?} after stop_app returned (bound {DOWN_BOUND:?})");
    let b = w.backend(&nodes[1].backend).await;
    assert!(
        b["last_failure"].as_str().is_some_and(|r| !r.is_empty()),
        "{b}"
    );
    assert!(b["consecutive_failures"].as_u64().unwrap_or(0) >= 2, "{b}");
    for h in watchers {
        let c = closed_within(h, Duration::from_secs(10))
            .await
            .expect("client told");
        assert_eq!(
            c.code,
            Some(320),
            "a connection.close 320, not a reset: {c:?}"
        );
    }
    // New connections go to the others.
    let after = unique("stopapp-new");
    let mut more = Vec::new();
    for i in 0..6 {
        more.push(amqp_connect_named(&w.url(), &format!("{after}-{i}")).await);
    }
    let seen = wait_named(&nodes[0], &after, 6).await;
    assert_eq!(per_node(&nodes, &seen), vec![3, 0, 3], "{seen:?}");

    drop(stopped); // start_app
    let took = w
        .wait_state(&nodes[1].backend, "up", Duration::from_secs(60))
        .await;
    eprintln!("back up {took:?} after start_app");
    assert!(
        w.backend(&nodes[1].backend).await["consecutive_successes"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    );
    for c in more {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}

/// Sets a memory alarm on a node and clears it on drop.
struct MemoryAlarm(Node);

impl MemoryAlarm {
    fn raise(node: &Node) -> MemoryAlarm {
        rabbitmqctl(node, &["set_vm_memory_high_watermark", "absolute", "1MB"]);
        MemoryAlarm(node.clone())
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let _ = ctl(&self.0, &["set_vm_memory_high_watermark", "0.4"]);
    }
}

async fn wait_alarm(w: &Warren, backend: &str, on: bool) {
    let start = tokio::time::Instant::now();
    loop {
        let b = w.backend(backend).await;
        if b["alarm"] == on {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "alarm never became {on}: {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_affects_only_that_node_per_on_alarm() {
    let nodes = cluster_exclusive().await;

    // stop-new: no new connections to the alarmed node, its clients stay connected.
    let w = Warren::start(&config_yaml(
        &nodes,
        &format!("{FAST_CHECKS}  on_alarm: stop-new\n"),
    ))
    .await;
    let prefix = unique("alarm-keep");
    let kept = connections_on(&w, &nodes, 1, 2, &prefix).await;
    let kept_watch: Vec<_> = kept.iter().map(watch_close).collect();
    let alarm = MemoryAlarm::raise(&nodes[1]);
    wait_alarm(&w, &nodes[1].backend, true).await;
    for other in [&nodes[0], &nodes[2]] {
        let b = w.backend(&other.backend).await;
        assert_eq!(b["alarm"], false, "{b}");
        assert_eq!(b["state"], "up", "{b}");
    }
    let b = w.backend(&nodes[1].backend).await;
    assert!(
        b["last_failure"]
            .as_str()
            .is_some_and(|r| r.contains("local-alarms")),
        "{b}"
    );
    let newer = unique("alarm-new");
    let mut more = Vec::new();
    for i in 0..4 {
        more.push(amqp_connect_named(&w.url(), &format!("{newer}-{i}")).await);
    }
    let seen = wait_named(&nodes[0], &newer, 4).await;
    assert_eq!(per_node(&nodes, &seen), vec![2, 0, 2], "{seen:?}");
    for c in &kept {
        // Consumers keep working on the alarmed node.
        let ch = c.create_channel().await.expect("still open");
        ch.queue_declare(
            unique("q-alarm").as_str().into(),
            exclusive(),
            FieldTable::default(),
        )
        .await
        .expect("declare on the alarmed node");
    }
    for h in kept_watch {
        assert!(closed_within(h, Duration::from_millis(100)).await.is_none());
    }
    drop(alarm);
    wait_alarm(&w, &nodes[1].backend, false).await;
    for c in kept.into_iter().chain(more) {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;

    // drain: the alarmed node's clients get connection.close 320 from warren.
    let w = Warren::start(&config_yaml(
        &nodes,
        &format!("{FAST_CHECKS}  on_alarm: drain\ndrain:\n  window: 1s\n"),
    ))
    .await;
    let prefix = unique("alarm-drain");
    let conns = connections_on(&w, &nodes, 1, 2, &prefix).await;
    let watchers: Vec<_> = conns.iter().map(watch_close).collect();
    let alarm = MemoryAlarm::raise(&nodes[1]);
    for h in watchers {
        let c = closed_within(h, Duration::from_secs(20))
            .await
            .expect("closed on alarm");
        assert_eq!(c.code, Some(320), "{c:?}");
        assert!(c.text.contains("alarm"), "{c:?}");
    }
    drop(alarm);
    wait_alarm(&w, &nodes[1].backend, false).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_node_is_detected_and_its_clients_closed_by_warren() {
    let nodes = cluster_exclusive().await;
    let w = Warren::start(&config_yaml(
        &nodes,
        &format!("{FAST_CHECKS}drain:\n  close_timeout: 2s\n"),
    ))
    .await;
    let prefix = unique("frozen");
    let conns = connections_on(&w, &nodes, 2, 3, &prefix).await;
    let watchers: Vec<_> = conns.iter().map(watch_close).collect();
    let frozen = Frozen::freeze(&nodes[2]);
    let took = w
        .wait_state(&nodes[2].backend, "down", DOWN_BOUND + SLACK)
        .await;
    eprintln!("frozen node marked down after {took:?} (bound {DOWN_BOUND:?})");
    let b = w.backend(&nodes[2].backend).await;
    assert!(
        b["last_failure"]
            .as_str()
            .is_some_and(|r| r.contains("timed out")),
        "{b}"
    );
    // The broker can't close them: warren does, the AMQP way, promptly.
    for h in watchers {
        let c = closed_within(h, Duration::from_secs(5))
            .await
            .expect("client told promptly");
        assert_eq!(c.code, Some(320), "{c:?}");
        assert!(c.text.contains("is down"), "{c:?}");
    }
    // New connections avoid it (a TCP-only check would have let a third of them hang).
    let after = unique("frozen-new");
    let mut more = Vec::new();
    for i in 0..4 {
        more.push(amqp_connect_named(&w.url(), &format!("{after}-{i}")).await);
    }
    drop(frozen);
    w.wait_state(&nodes[2].backend, "up", Duration::from_secs(30))
        .await;
    for c in more {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_management_apis_fail_checks_with_reasons_without_stalling_others() {
    let nodes = cluster().await;
    let cases: [(&str, &'static str, &str); 5] = [
        ("unauth", "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", "HTTP 401"),
        ("err500", "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!", "HTTP 500"),
        ("garbage", "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{not-json", "HTTP 503"),
        ("hang", "hang", "timed out"),
        ("huge", "huge", "body larger"),
    ];
    let mut yaml = String::from(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nhealth:\n  interval: 500ms\n  timeout: 1s\n  fall: 2\n  password: guest\n  checks: [virtual-hosts]\nbackends:\n",
    );
    yaml.push_str(&format!(
        "  - name: real\n    address: {}\n    management: {}\n",
        nodes[0].amqp,
        nodes[0].mgmt_url()
    ));
    for (name, answer, _) in &cases {
        let amqp = sink_backend().await;
        let mgmt = fake_management_answering(answer).await;
        yaml.push_str(&format!(
            "  - name: {name}\n    address: {amqp}\n    management: http://{mgmt}\n"
        ));
    }
    let w = Warren::start(&yaml).await;
    for (name, _, reason) in &cases {
        w.wait_state(name, "down", Duration::from_secs(10)).await;
        let b = w.backend(name).await;
        let got = b["last_failure"].as_str().unwrap_or_default().to_string();
        assert!(
            got.contains(reason),
            "{name}: last_failure `{got}` lacks `{reason}`"
        );
    }
    // The real node kept being checked at its own pace meanwhile.
    let before = w.backend("real").await["consecutive_successes"]
        .as_u64()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = w.backend("real").await;
    assert_eq!(after["state"], "up", "{after}");
    assert!(
        after["consecutive_successes"].as_u64().unwrap_or(0) >= before + 2,
        "{after}"
    );
    // Credentials never show in the API.
    let (_, all) = w.admin_get("/api/backends").await;
    assert!(
        !all.contains("guest:guest") && !all.contains("Basic "),
        "{all}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_failure_with_reason_on_a_real_node() {
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(
        &nodes,
        "health:\n  interval: 500ms\n  fall: 1\n  password: wrong-password\n",
    ))
    .await;
    w.wait_state(&nodes[0].backend, "down", Duration::from_secs(10))
        .await;
    let b = w.backend(&nodes[0].backend).await;
    assert!(
        b["last_failure"]
            .as_str()
            .is_some_and(|r| r.contains("HTTP 401")),
        "{b}"
    );
    let (_, all) = w.admin_get("/api/backends").await;
    assert!(!all.contains("wrong-password"));
    w.stop().await;
}

/// A password file that disappears while warren runs fails the management
/// checks with the reason; it never leaves a TCP-only check that passes. The
/// file back, the node comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_gone_at_run_time_fails_the_checks_with_the_reason() {
    let nodes = cluster().await;
    let dir = std::env::temp_dir().join(unique("warren-password"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("password");
    std::fs::write(&file, "guest\n").expect("password file");
    let w = Warren::start(&config_yaml(
        &nodes,
        &format!(
            "health:\n  interval: 500ms\n  timeout: 500ms\n  fall: 1\n  rise: 1\n  password_file: '{}'\n",
            file.display()
        ),
    ))
    .await;
    w.wait_state(&nodes[0].backend, "up", Duration::from_secs(10))
        .await;
    std::fs::remove_file(&file).expect("remove");
    w.wait_state(&nodes[0].backend, "down", Duration::from_secs(10))
        .await;
    let b = w.backend(&nodes[0].backend).await;
    let reason = b["last_failure"].as_str().unwrap_or_default();
    assert!(
        reason.contains("management checks: no password: cannot read")
            && reason.contains(&file.display().to_string()),
        "{b}"
    );
    let (_, body) = w.admin_get("/api/events?limit=50").await;
    let events: serde_json::Value = serde_json::from_str(&body).expect("events JSON");
    assert!(
        events
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["kind"] == "health"
                && e["backend"] == nodes[0].backend.as_str()
                && e["message"].as_str().is_some_and(
                    |m| m.starts_with("down: management checks: no password: cannot read")
                ))),
        "{body}"
    );
    std::fs::write(&file, "guest\n").expect("password file back");
    w.wait_state(&nodes[0].backend, "up", Duration::from_secs(10))
        .await;
    w.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checks `health.checks: auto` runs on this version's nodes (`WARREN_RABBITMQ`).
fn auto_checks_here() -> Vec<&'static str> {
    match rabbitmq_version().as_str() {
        "4.0" => vec!["local-alarms", "virtual-hosts"],
        v if v.starts_with("3.") => vec!["local-alarms", "protocol-listener/amqp", "virtual-hosts"],
        _ => vec![
            "local-alarms",
            "is-in-service",
            "ready-to-serve-clients",
            "virtual-hosts",
        ],
    }
}

/// Whether this version has `is-in-service` (4.1.1 on; 3.10 and 4.0 answer 404).
fn has_maintenance_checks() -> bool {
    !rabbitmq_version().starts_with("3.") && rabbitmq_version() != "4.0"
}

/// Waits until `backend` shows the RabbitMQ version warren read from it.
async fn wait_version(w: &Warren, backend: &str) -> serde_json::Value {
    let start = tokio::time::Instant::now();
    loop {
        let b = w.backend(backend).await;
        if b["rabbitmq_version"].is_string() && !b["checks"].as_array().is_none_or(Vec::is_empty) {
            return b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no version read: {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_checks_follow_the_node_version() {
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(&nodes, FAST_CHECKS)).await;
    let want = auto_checks_here();
    for n in &nodes {
        let b = wait_version(&w, &n.backend).await;
        let version = b["rabbitmq_version"].as_str().unwrap_or_default();
        assert!(
            version.starts_with(&format!("{}.", rabbitmq_version())),
            "nodes run {version}, WARREN_RABBITMQ says {}",
            rabbitmq_version()
        );
        // The list of the probe after the version was read.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let b = w.backend(&n.backend).await;
        assert_eq!(b["checks"], serde_json::json!(want), "{b}");
        assert_eq!(b["skipped_checks"], serde_json::json!([]), "{b}");
        assert_eq!(b["state"], "up", "{b}");
        assert_eq!(b["maintenance"], false, "{b}");
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_checks_a_version_lacks_are_skipped_but_never_all() {
    let nodes = cluster().await;
    let some = "health:\n  interval: 500ms\n  fall: 1\n  rise: 1\n  password: guest\n  checks: [is-in-service, virtual-hosts]\n";
    let w = Warren::start(&config_yaml(&nodes[..1], some)).await;
    let name = &nodes[0].backend;
    wait_version(&w, name).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = w.backend(name).await;
    assert_eq!(b["state"], "up", "{b}");
    let skipped = if has_maintenance_checks() {
        serde_json::json!([])
    } else {
        serde_json::json!(["is-in-service"])
    };
    assert_eq!(b["skipped_checks"], skipped, "{b}");
    w.stop().await;

    let none = "health:\n  interval: 500ms\n  fall: 1\n  rise: 1\n  password: guest\n  checks: [ready-to-serve-clients]\n";
    let w = Warren::start(&config_yaml(&nodes[..1], none)).await;
    if has_maintenance_checks() {
        wait_version(&w, name).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = w.backend(name).await;
        assert_eq!(b["state"], "up", "{b}");
    } else {
        w.wait_state(name, "down", Duration::from_secs(10)).await;
        let b = w.backend(name).await;
        assert!(
            b["last_failure"]
                .as_str()
                .is_some_and(|r| r.contains("none of the health checks exists")),
            "{b}"
        );
    }
    w.stop().await;
}

/// Runs `rabbitmq-upgrade -n NODE args` (the version's CLI must be first on PATH,
/// as `scripts/test` and `PATH=$(scripts/rabbitmq bin V):$PATH` arrange).
fn rabbitmq_upgrade(node: &Node, args: &[&str]) -> std::process::Output {
    std::process::Command::new("rabbitmq-upgrade")
        .arg("-n")
        .arg(&node.name)
        .args(args)
        .output()
        .expect("rabbitmq-upgrade runs")
}

/// A node put in maintenance (`rabbitmq-upgrade drain`), revived on drop.
struct Drained(Node);

impl Drained {
    fn drain(node: &Node) -> Drained {
        let out = rabbitmq_upgrade(node, &["drain"]);
        assert!(out.status.success(), "drain: {out:?}");
        Drained(node.clone())
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        let out = rabbitmq_upgrade(&self.0, &["revive"]);
        if !out.status.success() {
            eprintln!("revive {} failed: {out:?}", self.0.name);
        }
    }
}

/// Waits until `addr` refuses connections (the node suspended its listeners).
async fn wait_refused(addr: SocketAddr, within: Duration) -> tokio::time::Instant {
    let start = tokio::time::Instant::now();
    loop {
        if let Err(e) = tokio::net::TcpStream::connect(addr).await {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                return tokio::time::Instant::now();
            }
        }
        assert!(start.elapsed() < within, "{addr} never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// interval 1s, timeout 1s: a drained node is out of rotation within one
/// interval plus the probe (the peer's answer), 2 s, from the moment it closes
/// its listeners (`rabbitmq-upgrade` itself takes seconds to start).
const MAINTENANCE_BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_node_leaves_rotation_its_clients_reconnect_elsewhere_and_revive_returns_it() {
    let nodes = cluster_exclusive().await;
    let w = Warren::start(&config_yaml(
        &nodes,
        &format!("{FAST_CHECKS}drain:\n  window: 1s\n"),
    ))
    .await;
    for n in &nodes {
        wait_version(&w, &n.backend).await;
    }
    let prefix = unique("maint");
    let conns = connections_on(&w, &nodes, 1, 3, &prefix).await;
    let watchers: Vec<_> = conns.iter().map(watch_close).collect();

    let node = nodes[1].clone();
    let drain = tokio::task::spawn_blocking(move || Drained::drain(&node));
    let closed_at = wait_refused(nodes[1].amqp, Duration::from_secs(60)).await;
    // 4.1.1 on: maintenance, a state of its own; before: the listeners are
    // closed, so the node is down (3.10's behaviour, unchanged).
    let expected = if has_maintenance_checks() {
        "maintenance"
    } else {
        "down"
    };
    w.wait_state(&nodes[1].backend, expected, Duration::from_secs(15))
        .await;
    let took = closed_at.elapsed();
    eprintln!(
        "RabbitMQ {}: {expected} {took:?} after the node closed its listeners",
        rabbitmq_version()
    );
    if has_maintenance_checks() {
        assert!(took <= MAINTENANCE_BOUND + SLACK, "{took:?}");
        let b = w.backend(&nodes[1].backend).await;
        assert_eq!(b["maintenance"], true, "{b}");
        assert!(
            b["last_failure"]
                .as_str()
                .is_some_and(|r| r.contains("maintenance")),
            "{b}"
        );
        let m = w.metrics().await;
        let labels = [
            ("backend", nodes[1].backend.as_str()),
            ("state", "maintenance"),
        ];
        assert_eq!(m.value("warren_backend_state", &labels), 1.0, "{}", m.0);
        assert_eq!(
            m.value(
                "warren_backend_up",
                &[("backend", nodes[1].backend.as_str())]
            ),
            0.0
        );
    }
    // Its clients were told the AMQP way (the broker's close or warren's).
    for h in watchers {
        let c = closed_within(h, Duration::from_secs(10))
            .await
            .expect("client told");
        assert_eq!(c.code, Some(320), "{c:?}");
    }
    // They, and new clients, reconnect to the others.
    let after = unique("maint-new");
    let mut more = Vec::new();
    for i in 0..6 {
        more.push(amqp_connect_named(&w.url(), &format!("{after}-{i}")).await);
    }
    let seen = wait_named(&nodes[0], &after, 6).await;
    assert_eq!(per_node(&nodes, &seen), vec![3, 0, 3], "{seen:?}");

    let drained = drain.await.expect("drain ran");
    let revive = tokio::task::spawn_blocking(move || drop(drained));
    let took = w
        .wait_state(&nodes[1].backend, "up", Duration::from_secs(60))
        .await;
    revive.await.expect("revive ran");
    eprintln!("back up {took:?} after revive started");
    assert_eq!(w.backend(&nodes[1].backend).await["maintenance"], false);
    for c in more {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}
