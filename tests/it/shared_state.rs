//! The shared operator state with three real warren processes in front of the
//! real nodes: a drain sent to one is applied by the others within the poll
//! interval; with the first killed the others keep it; a restarted instance
//! starts with it; an instance that cannot read the store keeps its last known
//! state and says so in `/api/backends` and `/metrics`.

use std::time::Duration;

use crate::common::*;
use hyper::Method;

fn yaml(nodes: &[Node], parameter: &str, password: &str) -> String {
    let mut y = format!(
        "health:\n  interval: 1s\n  password: {password}\noperations:\n  shared_state:\n    parameter: {parameter}\n    interval: 1s\nbackends:\n"
    );
    for n in nodes {
        y.push_str(&n.backend_yaml(&n.backend));
    }
    y
}

async fn backend_of(admin: std::net::SocketAddr, name: &str) -> serde_json::Value {
    let (status, body) = admin_request(admin, "GET", &format!("/api/backends/{name}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Waits until `admin` shows `mode` for `name`; how long it took.
async fn wait_mode(
    admin: std::net::SocketAddr,
    name: &str,
    mode: &str,
    within: Duration,
) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        let b = backend_of(admin, name).await;
        if b["mode"] == mode {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{name} not {mode} within {within:?}: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes the test's parameter when dropped.
struct Parameter(Node, String);

impl Drop for Parameter {
    fn drop(&mut self) {
        let (node, name) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let target = warren::mgmt::Target::new(&node.mgmt_url(), &Default::default())
                        .expect("management URL");
                    let path = format!("/api/global-parameters/{name}");
                    let _ = warren::mgmt::request(
                        &target,
                        &guest(),
                        Method::DELETE,
                        &path,
                        None,
                        Duration::from_secs(5),
                    )
                    .await;
                });
            }
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_sent_to_one_warren_reaches_all_and_survives_kills_restarts_and_an_unreachable_store(
) {
    let nodes = cluster().await;
    let parameter = unique("warren-test-state");
    let _cleanup = Parameter(nodes[0].clone(), parameter.clone());
    let config = yaml(&nodes, &parameter, "guest");
    let mut w1 = WarrenProcess::start(&config, 1024).await;
    let w2 = WarrenProcess::start(&config, 1024).await;
    let w3 = WarrenProcess::start(&config, 1024).await;
    let name = nodes[0].backend.as_str();
    for w in [&w1, &w2, &w3] {
        let b = backend_of(w.admin, name).await;
        assert_eq!(b["mode"], "enabled", "{b}");
        assert_eq!(b["shared_state"]["reachable"], true, "{b}");
    }

    // A drain sent to the first is applied by all three.
    let (status, body) =
        admin_request(w1.admin, "POST", &format!("/api/backends/{name}/drain")).await;
    assert_eq!(status, 200, "{body}");
    let b: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(b["shared_state"]["entry"]["intent"], "drain", "{b}");
    for w in [&w2, &w3] {
        let took = wait_mode(w.admin, name, "draining", Duration::from_secs(10)).await;
        eprintln!("drain seen by another instance after {took:?} (interval 1s)");
        let b = backend_of(w.admin, name).await;
        assert!(
            b["shared_state"]["entry"]["by"]
                .as_str()
                .is_some_and(|s| s.contains(&w1.admin.to_string())),
            "{b}"
        );
    }
    // No client of the others goes to the drained node.
    let prefix = unique("shared");
    let mut conns = Vec::new();
    for i in 0..6 {
        conns.push(amqp_connect_named(&w2.url(), &format!("{prefix}-{i}")).await);
    }
    let counts = per_node(&nodes, &wait_named(&nodes[1], &prefix, 6).await);
    assert_eq!(counts[0], 0, "{counts:?}");

    // The first is killed: the others keep the state.
    w1.signal("KILL");
    assert!(w1.wait_exit(Duration::from_secs(5)).is_some());
    tokio::time::sleep(Duration::from_secs(3)).await;
    for w in [&w2, &w3] {
        assert_eq!(backend_of(w.admin, name).await["mode"], "draining");
    }

    // A restarted instance comes up with it, before its first poll.
    let w4 = WarrenProcess::start(&config, 1024).await;
    let b = backend_of(w4.admin, name).await;
    assert_eq!(
        b["mode"], "draining",
        "a new instance accepted before applying the state: {b}"
    );

    // The second loses the store (its credentials no longer work): it keeps
    // the drain and says the store is unreachable.
    let written = std::fs::read_to_string(w2.config()).expect("config");
    let broken = written.replace("password: guest", "password: not-the-password");
    std::fs::write(w2.config(), broken).expect("config");
    let (status, body) = admin_request(w2.admin, "POST", "/api/reload").await;
    assert_eq!(status, 200, "{body}");
    let start = tokio::time::Instant::now();
    loop {
        let b = backend_of(w2.admin, name).await;
        if b["shared_state"]["reachable"] == false {
            assert_eq!(b["mode"], "draining", "{b}");
            assert!(
                b["shared_state"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("401")),
                "{b}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, text) = admin_request(w2.admin, "GET", "/metrics").await;
    assert!(
        text.lines().any(|l| l == "warren_shared_state_up 0"),
        "{text}"
    );
    let (_, text) = admin_request(w3.admin, "GET", "/metrics").await;
    assert!(
        text.lines().any(|l| l == "warren_shared_state_up 1"),
        "{text}"
    );

    // Enable sent to the third: the restarted one follows; the cut-off one
    // keeps its last known state.
    let (status, body) =
        admin_request(w3.admin, "POST", &format!("/api/backends/{name}/enable")).await;
    assert_eq!(status, 200, "{body}");
    wait_mode(w4.admin, name, "enabled", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(backend_of(w2.admin, name).await["mode"], "draining");

    // Two writers at once, on two backends: both entries survive (read,
    // write, read back, write again when overwritten) and both apply everywhere.
    let (a, b) = (nodes[1].backend.as_str(), nodes[2].backend.as_str());
    let (pa, pb) = (
        format!("/api/backends/{a}/disable"),
        format!("/api/backends/{b}/disable"),
    );
    let (ra, rb) = tokio::join!(
        admin_request(w3.admin, "POST", &pa),
        admin_request(w4.admin, "POST", &pb),
    );
    assert_eq!((ra.0, rb.0), (200, 200), "{ra:?} {rb:?}");
    let start = tokio::time::Instant::now();
    loop {
        let stored = mgmt_get(&nodes[0], &format!("/api/global-parameters/{parameter}"))
            .await
            .expect("the parameter");
        if [a, b]
            .iter()
            .all(|n| stored["value"]["backends"][n]["intent"] == "disable")
        {
            eprintln!("both concurrent writes stored after {:?}", start.elapsed());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a concurrent write was lost: {stored}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in [&w3, &w4] {
        for n in [a, b] {
            wait_mode(w.admin, n, "disabled", Duration::from_secs(10)).await;
        }
    }
    for n in [a, b] {
        let (status, body) =
            admin_request(w3.admin, "POST", &format!("/api/backends/{n}/enable")).await;
        assert_eq!(status, 200, "{body}");
    }
    for c in conns {
        let _ = c.close(200, "bye".into()).await;
    }
}
