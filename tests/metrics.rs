//! Metrics end to end: the /metrics output moves as real AMQP clients connect,
//! move bytes and leave, as a node stops, as connections are refused or drained,
//! and it passes `promtool check metrics` throughout.
//!
//! Every test names its backends uniquely (the metrics registry is global to the
//! process) and runs alone (`cluster_exclusive`), because the listener and reload
//! series have no backend label.

// The helpers of tests/it (this binary uses some of them). A binary of its own:
// its `promtool` checks read the process's whole registry, which must hold only
// the series of these tests.
#[allow(dead_code, unused_imports)]
#[path = "it/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use lapin::options::*;
use tokio::io::AsyncReadExt;
use warren::telemetry::metrics as m;

/// A config for `nodes` whose backends are named `{tag}-{i}`; returns the names too.
fn yaml_named(nodes: &[Node], tag: &str, extra: &str) -> (String, Vec<String>) {
    let names: Vec<String> = nodes.iter().map(|n| format!("{tag}-{}", n.index)).collect();
    let mut y = format!("{extra}backends:\n");
    for (n, name) in nodes.iter().zip(&names) {
        y.push_str(&n.backend_yaml(name));
    }
    (config_yaml(nodes, &y), names)
}

/// Polls /metrics until `ok` holds (up to 30 s); the last exposition.
async fn wait_metrics(w: &Warren, what: &str, ok: impl Fn(&Metrics) -> bool) -> Metrics {
    let start = tokio::time::Instant::now();
    loop {
        let got = w.metrics().await;
        if ok(&got) {
            return got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "metrics never showed {what}:\n{}",
            got.0
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn b(name: &str) -> [(&'static str, &str); 1] {
    [("backend", name)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_an_amqp_session_and_pass_promtool() {
    let nodes = cluster_exclusive().await;
    let tag = unique("ms");
    let (yaml, names) = yaml_named(&nodes, &tag, "health:\n  password: guest\n");
    let w = Warren::start(&yaml).await;

    // The node and cluster names come with the first read of the management
    // API, beside the first probe. Each node answers its own cluster name (while
    // none was set, 3.10 says its own node name; so does rabbitmq_identity_info).
    let mut cluster_names = Vec::new();
    for node in nodes.iter() {
        let name = mgmt_get(node, "/api/cluster-name")
            .await
            .expect("GET /api/cluster-name")["name"]
            .as_str()
            .expect("a cluster name")
            .to_string();
        cluster_names.push(name);
    }
    let first = wait_metrics(&w, "backend_info of every backend", |x| {
        nodes
            .iter()
            .zip(&names)
            .zip(&cluster_names)
            .all(|((node, n), cluster)| {
                x.get(
                    m::BACKEND_INFO,
                    &[
                        ("backend", n),
                        ("rabbitmq_node", &node.name),
                        ("rabbitmq_cluster", cluster),
                    ],
                ) == Some(1.0)
            })
    })
    .await;
    promtool_check(&first.0);
    assert_eq!(
        first.get(
            m::BUILD_INFO,
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", m::REVISION)
            ]
        ),
        Some(1.0)
    );
    assert_eq!(first.get(m::MAX_CONNECTIONS, &[]), Some(10_000.0));
    // Present from the start (other tests of this process may have counted some).
    for listener in m::LISTENERS {
        for reason in m::NO_BACKEND_REASONS {
            let series = [("listener", listener), ("reason", reason)];
            let got = first.get(m::LISTENER_NO_BACKEND, &series);
            assert!(got.is_some(), "{listener} {reason}");
        }
    }
    for reason in m::HANDSHAKE_REASONS {
        let got = first.get(m::HANDSHAKE_REJECTED, &[("reason", reason)]);
        assert!(got.is_some(), "{reason}");
    }
    // The process series, read from /proc.
    assert!(first.value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(first.value("process_open_fds", &[]) >= 3.0);
    assert!(first.value("process_max_fds", &[]) >= first.value("process_open_fds", &[]));
    assert!(first.value("process_cpu_seconds_total", &[]) > 0.0);
    let start = first.value("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        start > now - 86400.0 * 30.0 && start <= now + 1.0,
        "{start}"
    );
    for n in &names {
        assert_eq!(first.get(m::BACKEND_UP, &b(n)), Some(1.0), "{}", first.0);
        assert_eq!(first.get(m::BACKEND_ACTIVE, &b(n)), Some(0.0));
        assert_eq!(
            first.get(
                m::BACKEND_CONNECT_ERRORS,
                &[("backend", n), ("kind", "refused")]
            ),
            Some(0.0),
            "counters exist from the start"
        );
        for h in [m::BACKEND_CONNECT_DURATION, m::BACKEND_CONNECTION_DURATION] {
            assert_eq!(
                first.get(&format!("{h}_count"), &b(n)),
                Some(0.0),
                "histograms exist from the start: {h}"
            );
        }
    }
    let accepted0 = first.value(m::LISTENER_ACCEPTED, &[("listener", "amqp")]);

    // Round robin: one client per backend.
    let mut conns = Vec::new();
    for i in 0..3 {
        conns.push(amqp_connect_named(&w.url(), &format!("{tag}-c{i}")).await);
    }
    let during = wait_metrics(&w, "3 active connections", |x| {
        names
            .iter()
            .all(|n| x.value(m::BACKEND_ACTIVE, &b(n)) == 1.0)
    })
    .await;
    for n in &names {
        assert_eq!(during.value(m::BACKEND_CONNECTIONS, &b(n)), 1.0, "{n}");
        let connect = format!("{}_count", m::BACKEND_CONNECT_DURATION);
        assert_eq!(during.value(&connect, &b(n)), 1.0, "{n}");
        let took = during.value(&format!("{}_sum", m::BACKEND_CONNECT_DURATION), &b(n));
        assert!(took > 0.0 && took < 5.0, "{n} connected in {took} s");
    }
    assert_eq!(
        during.value(m::LISTENER_ACTIVE, &[("listener", "amqp")]),
        3.0
    );
    assert_eq!(
        during.value(m::LISTENER_ACCEPTED, &[("listener", "amqp")]) - accepted0,
        3.0
    );
    // What the handshakes said: one connection per backend into `/`, three of
    // lapin's.
    for n in &names {
        assert_eq!(
            during.value(m::AMQP_CONNECTIONS, &[("backend", n), ("vhost", "/")]),
            1.0,
            "{}",
            during.0
        );
    }
    assert_eq!(
        during.value(m::AMQP_CLIENT_CONNECTIONS, &[("product", "lapin")]),
        3.0
    );

    // 256 KiB out and back through the first connection.
    let queue = unique("q-metrics");
    let ch = confirmed_queue(&conns[0], &queue, QueueDeclareOptions::default()).await;
    let payload = vec![7u8; 256 * 1024];
    let got = round_trip(&ch, &queue, &payload, Duration::from_secs(60)).await;
    assert_eq!(got.len(), payload.len());
    delete_queue(&ch, &queue).await;
    let moved = w.metrics().await;
    let sent: f64 = names
        .iter()
        .map(|n| moved.value(m::BACKEND_SENT_BYTES, &b(n)))
        .sum();
    let received: f64 = names
        .iter()
        .map(|n| moved.value(m::BACKEND_RECEIVED_BYTES, &b(n)))
        .sum();
    assert!(sent >= payload.len() as f64, "sent {sent} bytes");
    assert!(
        received >= payload.len() as f64,
        "received {received} bytes"
    );
    for n in &names {
        assert!(
            moved.value("warren_health_check_duration_seconds_count", &b(n.as_str())) >= 1.0,
            "probes of {n} are timed:\n{}",
            moved.0
        );
    }
    promtool_check(&moved.0);

    for c in conns {
        let _ = c.close(200, "bye".into()).await;
    }
    let after = wait_metrics(&w, "no active connection", |x| {
        names
            .iter()
            .all(|n| x.value(m::BACKEND_ACTIVE, &b(n)) == 0.0)
            && x.value(m::LISTENER_ACTIVE, &[("listener", "amqp")]) == 0.0
    })
    .await;
    // Counters never go back.
    for n in &names {
        assert_eq!(after.value(m::BACKEND_CONNECTIONS, &b(n)), 1.0);
        let lasted = format!("{}_count", m::BACKEND_CONNECTION_DURATION);
        assert_eq!(
            after.value(&lasted, &b(n)),
            1.0,
            "{n}: one connection ended"
        );
    }
    // Each client closed its connection itself; the gauges went back to 0.
    let after = wait_metrics(&w, "three client closes", |x| {
        names.iter().all(|n| {
            x.value(
                m::AMQP_CLOSES,
                &[("backend", n), ("side", "client"), ("code", "200")],
            ) == 1.0
        })
    })
    .await;
    for n in &names {
        assert_eq!(
            after.value(m::AMQP_CONNECTIONS, &[("backend", n), ("vhost", "/")]),
            0.0
        );
    }
    promtool_check(&after.0);
    assert!(
        names
            .iter()
            .map(|n| after.value(m::BACKEND_SENT_BYTES, &b(n)))
            .sum::<f64>()
            >= sent
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_up_drops_to_zero_after_stop_app() {
    let nodes = cluster_exclusive().await;
    let tag = unique("mu");
    let (yaml, names) = yaml_named(
        &nodes,
        &tag,
        "health:\n  password: guest\n  interval: 300ms\n  fast_interval: 200ms\n  down_interval: 300ms\n  fall: 2\n  rise: 1\n",
    );
    let w = Warren::start(&yaml).await;
    wait_metrics(&w, "all backends up", |x| {
        names
            .iter()
            .all(|n| x.get(m::BACKEND_UP, &b(n)) == Some(1.0))
    })
    .await;
    let stopped = StoppedApp::stop(&nodes[1]);
    let down = wait_metrics(&w, "backend_up 0 for the stopped node", |x| {
        x.get(m::BACKEND_UP, &b(&names[1])) == Some(0.0)
    })
    .await;
    assert_eq!(
        down.get(
            m::BACKEND_STATE,
            &[("backend", &names[1]), ("state", "down")]
        ),
        Some(1.0)
    );
    assert_eq!(
        down.get(m::BACKEND_STATE, &[("backend", &names[1]), ("state", "up")]),
        Some(0.0)
    );
    // The `fall` failures that took it down are counted by reason: the refused
    // AMQP port as `tcp`. While stop_app is under way the management listener
    // may go first (seen on 4.3): that probe counts as `other`.
    let failures = |reason| {
        down.value(
            m::HEALTH_CHECK_FAILURES,
            &[("backend", &names[1]), ("reason", reason)],
        )
    };
    assert!(
        failures("tcp") >= 1.0 && failures("tcp") + failures("other") >= 2.0,
        "{}",
        down.0
    );
    assert_eq!(down.get(m::BACKEND_UP, &b(&names[0])), Some(1.0));
    assert_eq!(down.get(m::BACKEND_UP, &b(&names[2])), Some(1.0));
    promtool_check(&down.0);
    drop(stopped);
    wait_nodes_up().await;
    wait_metrics(&w, "backend_up 1 again", |x| {
        x.get(m::BACKEND_UP, &b(&names[1])) == Some(1.0)
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_counted_as_rejected() {
    let nodes = cluster_exclusive().await;
    let tag = unique("mc");
    let (yaml, _) = yaml_named(&nodes, &tag, "max_connections: 1\n");
    let w = Warren::start(&yaml).await;
    let before = w.metrics().await;
    let rejected0 = before.value(m::LISTENER_REJECTED, &[("listener", "amqp")]);
    let conn = amqp_connect(&w.url()).await;
    let mut extra = tokio::net::TcpStream::connect(w.amqp)
        .await
        .expect("TCP connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("closed at once, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "a connection over the cap is closed");
    let after = wait_metrics(&w, "one rejected connection", |x| {
        x.value(m::LISTENER_REJECTED, &[("listener", "amqp")]) - rejected0 == 1.0
    })
    .await;
    assert_eq!(
        after.value(m::LISTENER_ACTIVE, &[("listener", "amqp")]),
        1.0
    );
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_counts_graceful_and_forced_closes() {
    let nodes = cluster_exclusive().await;
    let tag = unique("md");
    let (yaml, names) = yaml_named(
        &nodes[..1],
        &tag,
        "drain:\n  window: 100ms\n  grace: 5s\n  close_timeout: 500ms\n",
    );
    let w = Warren::start(&yaml).await;
    let name = &names[0];
    // A real client answers connection.close with close-ok ...
    let good = amqp_connect(&w.url()).await;
    // ... a silent one never does.
    let _silent = silent_client(w.amqp).await;
    wait_metrics(&w, "two active connections", |x| {
        x.value(m::BACKEND_ACTIVE, &b(name)) == 2.0
    })
    .await;
    let good_closed = watch_close(&good);
    let (status, body) = w.admin_post(&format!("/api/backends/{name}/drain")).await;
    assert_eq!(status, 200, "{body}");
    let closed = tokio::time::timeout(Duration::from_secs(10), good_closed)
        .await
        .expect("closed within 10 s")
        .expect("watcher")
        .expect("the client is told to close");
    assert_eq!(closed.code, Some(320), "{closed:?}");
    let after = wait_metrics(&w, "both closes counted", |x| {
        x.value(m::BACKEND_ACTIVE, &b(name)) == 0.0
            && x.value(m::BACKEND_GRACEFUL_CLOSES, &b(name)) == 1.0
            && x.value(m::BACKEND_FORCED_CLOSES, &b(name)) == 1.0
    })
    .await;
    assert_eq!(
        after.value(
            m::BACKEND_DRAINS,
            &[("backend", name), ("trigger", "operator")]
        ),
        1.0
    );
    assert_eq!(
        after.get(
            m::BACKEND_STATE,
            &[("backend", name), ("state", "draining")]
        ),
        Some(1.0)
    );
    assert_eq!(after.get(m::BACKEND_UP, &b(name)), Some(0.0));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_turned_away_for_want_of_a_backend_are_counted() {
    // Alone: the listener series have no backend label.
    let _cluster = cluster_exclusive().await;
    let tag = unique("mn");
    // Nothing listens on port 1: every connect is refused.
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nhealth:\n  interval: 1h\n\
         backends:\n  - name: {tag}-dead\n    address: 127.0.0.1:1\n"
    );
    let w = Warren::start(&yaml).await;
    let count = |x: &Metrics, reason| {
        x.value(
            m::LISTENER_NO_BACKEND,
            &[("listener", "amqp"), ("reason", reason)],
        )
    };
    let before = w.metrics().await;
    // A real client: its connect through warren fails.
    assert!(
        lapin::Connection::connect(&w.url(), lapin::ConnectionProperties::default())
            .await
            .is_err(),
        "no backend can take it"
    );
    let x = wait_metrics(&w, "the client turned away after failed connects", |x| {
        count(x, "connect_failed") - count(&before, "connect_failed") == 1.0
    })
    .await;
    assert_eq!(count(&x, "none_usable"), count(&before, "none_usable"));
    // Taken out by the operator: nothing is even tried.
    let (status, body) = w
        .admin_post(&format!("/api/backends/{tag}-dead/disable"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        lapin::Connection::connect(&w.url(), lapin::ConnectionProperties::default())
            .await
            .is_err(),
        "no backend is usable"
    );
    let y = wait_metrics(&w, "the client turned away with no usable backend", |x| {
        count(x, "none_usable") - count(&before, "none_usable") == 1.0
    })
    .await;
    assert_eq!(
        count(&y, "connect_failed") - count(&before, "connect_failed"),
        1.0
    );
    promtool_check(&y.0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_are_counted_by_kind() {
    let nodes = cluster_exclusive().await;
    let tag = unique("me");
    // Nothing listens on port 1: connects are refused. Round robin tries it first.
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nhealth:\n  interval: 1h\n\
         backends:\n  - name: {tag}-dead\n    address: 127.0.0.1:1\n  - name: {tag}-ok\n    address: {}\n",
        nodes[0].amqp
    );
    let w = Warren::start(&yaml).await;
    let conn = amqp_connect(&w.url()).await;
    let dead = format!("{tag}-dead");
    let ok = format!("{tag}-ok");
    let x = wait_metrics(&w, "the refused connect", |x| {
        x.value(
            m::BACKEND_CONNECT_ERRORS,
            &[("backend", &dead), ("kind", "refused")],
        ) == 1.0
    })
    .await;
    assert_eq!(x.value(m::BACKEND_CONNECTIONS, &b(&ok)), 1.0);
    assert_eq!(x.value(m::BACKEND_CONNECTIONS, &b(&dead)), 0.0);
    assert!(
        x.value(
            m::HEALTH_CHECK_FAILURES,
            &[("backend", &dead), ("reason", "tcp")]
        ) >= 1.0,
        "{}",
        x.0
    );
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}
