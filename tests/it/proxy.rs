//! End to end: clients with a real AMQP library, through warren, to the three real
//! RabbitMQ nodes.

use std::time::Duration;

use crate::common::*;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_connections_land_ten_per_node() {
    let nodes = cluster_exclusive().await;
    let w = Warren::start(&config_yaml(&nodes, "")).await;
    let prefix = unique("spread");
    let mut conns = Vec::new();
    for i in 0..30 {
        conns.push(amqp_connect_named(&w.url(), &format!("{prefix}-{i}")).await);
    }
    let seen = wait_named(&nodes[0], &prefix, 30).await;
    assert_eq!(
        per_node(&nodes, &seen),
        vec![10, 10, 10],
        "connections per node: {seen:?}"
    );
    for b in ["n1", "n2", "n3"] {
        let v = w
            .backend(&nodes[b.as_bytes()[1] as usize - b'1' as usize].backend)
            .await;
        assert_eq!(v["active_connections"], 10, "{v}");
    }
    for c in conns {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_messages_published_and_consumed() {
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(&nodes, "")).await;
    let queue = unique("q-thousand");
    let publisher = amqp_connect(&w.url()).await;
    let consumer = amqp_connect(&w.url()).await;
    let pch = confirmed_queue(&publisher, &queue, QueueDeclareOptions::default()).await;
    publish_numbered(&pch, &queue, 1000).await;
    let cch = consumer.create_channel().await.expect("channel");
    let mut deliveries = cch
        .basic_consume(
            queue.as_str().into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut seen = vec![false; 1000];
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        let mut n = 0;
        while n < 1000 {
            let d = deliveries
                .next()
                .await
                .expect("stream open")
                .expect("delivery");
            let i = u32::from_be_bytes(d.data[..4].try_into().expect("4 bytes")) as usize;
            if !seen[i] {
                seen[i] = true;
                n += 1;
            }
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        n
    })
    .await
    .expect("all messages within 60 s");
    assert_eq!(got, 1000);
    assert!(seen.iter().all(|s| *s));
    delete_queue(&cch, &queue).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_mib_message_round_trips_intact() {
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(&nodes, "")).await;
    let queue = unique("q-big");
    let conn = amqp_connect(&w.url()).await;
    let ch = confirmed_queue(&conn, &queue, QueueDeclareOptions::default()).await;
    // A pattern that shifts every byte, so a lost or duplicated chunk shows.
    let payload: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let got = round_trip(&ch, &queue, &payload, Duration::from_secs(60)).await;
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "16 MiB payload changed on the way");
    delete_queue(&ch, &queue).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_app_on_one_node_new_connections_all_succeed() {
    let nodes = cluster_exclusive().await;
    // Health checks slower than the test, so it is the proxy's retry that is tested.
    let w = Warren::start(&config_yaml(
        &nodes,
        "health:\n  interval: 1h\n  password: guest\n",
    ))
    .await;
    let stopped = StoppedApp::stop(&nodes[1]);
    let prefix = unique("after-stop");
    let mut conns = Vec::new();
    for i in 0..20 {
        conns.push(amqp_connect_named(&w.url(), &format!("{prefix}-{i}")).await);
    }
    let seen = wait_named(&nodes[0], &prefix, 20).await;
    let counts = per_node(&nodes, &seen);
    assert_eq!(counts[1], 0, "{seen:?}");
    assert_eq!(counts[0] + counts[2], 20, "{seen:?}");
    for c in conns {
        let _ = c.close(200, "bye".into()).await;
    }
    drop(stopped);
    wait_nodes_up().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_picks_the_least_loaded_node() {
    let nodes = cluster_exclusive().await;
    let w = Warren::start(&config_yaml(
        &nodes,
        "balance: least-connections\nhealth:\n  slowstart: 0s\n  password: guest\n",
    ))
    .await;
    // Load n1 with 6 connections while the others are disabled.
    w.admin_post(&format!("/api/backends/{}/disable", nodes[1].backend))
        .await;
    w.admin_post(&format!("/api/backends/{}/disable", nodes[2].backend))
        .await;
    let prefix = unique("lc");
    let mut conns = Vec::new();
    for i in 0..6 {
        conns.push(amqp_connect_named(&w.url(), &format!("{prefix}-{i}")).await);
    }
    w.admin_post(&format!("/api/backends/{}/enable", nodes[1].backend))
        .await;
    w.admin_post(&format!("/api/backends/{}/enable", nodes[2].backend))
        .await;
    // The next 12 must fill n2 and n3 up to n1's level before n1 gets any.
    for i in 6..18 {
        conns.push(amqp_connect_named(&w.url(), &format!("{prefix}-{i}")).await);
    }
    let seen = wait_named(&nodes[0], &prefix, 18).await;
    assert_eq!(per_node(&nodes, &seen), vec![6, 6, 6], "{seen:?}");
    for c in conns {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}

/// Half-close is TCP behaviour, tested against a small TCP backend that answers
/// only after the client has finished sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_propagated() {
    let _turn = sharing().await;
    let baddr = counting_backend().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nhealth:\n  interval: 1h\nbackends:\n  - name: echo\n    address: {baddr}\n"
    );
    let w = Warren::start(&yaml).await;
    let mut c = tokio::net::TcpStream::connect(w.amqp)
        .await
        .expect("connect");
    let reply = half_close_exchange(&mut c, 99_992).await;
    assert_eq!(reply, "got 100000 bytes");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_reports_backends_and_readiness() {
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(&nodes, "")).await;
    assert_eq!(w.admin_get("/healthz").await.0, 200);
    assert_eq!(w.admin_get("/readyz").await.0, 200);
    let (status, body) = w.admin_get("/api/backends").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let list = v.as_array().expect("array");
    assert_eq!(list.len(), 3);
    for (b, n) in list.iter().zip(&nodes) {
        assert_eq!(b["name"], n.backend.as_str());
        assert_eq!(b["address"], n.amqp.to_string());
        assert_eq!(b["state"], "up");
        assert!(
            b["active_connections"].is_u64() && b["total_connections"].is_u64(),
            "{b}"
        );
    }
    for n in nodes.iter() {
        w.admin_post(&format!("/api/backends/{}/disable", n.backend))
            .await;
    }
    assert_eq!(w.admin_get("/readyz").await.0, 503);
    assert_eq!(w.admin_get("/nope").await.0, 404);
    assert_eq!(w.admin_post("/healthz").await.0, 405);
    w.stop().await;
}

/// With an idle timeout longer than the AMQP heartbeat, heartbeats keep a quiet
/// connection alive; a TCP connection that carries nothing is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_spares_heartbeating_amqp_connections() {
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(&nodes, "timeouts:\n  idle: 3s\n")).await;
    let conn = amqp_connect(&format!("{}?heartbeat=1", w.url())).await;
    let ch = conn.create_channel().await.expect("channel");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Still usable after more than the idle timeout without application traffic.
    ch.queue_declare(
        unique("q-idle").as_str().into(),
        exclusive(),
        FieldTable::default(),
    )
    .await
    .expect("connection survived thanks to heartbeats");
    assert!(conn.status().connected());

    // A raw connection that sends nothing after the protocol header is cut.
    let mut raw = tokio::net::TcpStream::connect(w.amqp)
        .await
        .expect("connect");
    raw.write_all(warren::proxy::amqp::PROTOCOL_HEADER)
        .await
        .expect("header");
    let started = tokio::time::Instant::now();
    let closed = read_until_closed(&mut raw, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "idle connection not closed within 10 s");
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "closed too early: {:?}",
        started.elapsed()
    );
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}

/// `protocol: tcp` carries any TCP protocol, here the nodes' management HTTP API
/// (which the default `protocol: amqp` turns away before choosing a backend), and
/// a drain closes such connections (no frames to follow: a plain close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_protocol_carries_other_protocols_and_drains_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nodes = cluster().await;
    // A long close timeout: a drain that tried an AMQP close would wait for it.
    let mut extra =
        String::from("protocol: tcp\ndrain:\n  window: 0s\n  close_timeout: 30s\nbackends:\n");
    for n in &nodes {
        extra.push_str(&format!(
            "  - {{name: {}, address: '{}'}}\n",
            n.backend, n.mgmt
        ));
    }
    let w = Warren::start(&config_yaml(&nodes, &extra)).await;
    // guest:guest; `connection: close` so the body ends with the connection.
    let request = "GET /api/overview HTTP/1.1\r\nHost: warren\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n";
    let mut answered_by = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(w.amqp)
            .await
            .expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
            .await
            .expect("answered in time")
            .expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = &answer[answer.find("\r\n\r\n").expect("headers end") + 4..];
        let v: serde_json::Value = serde_json::from_str(body).expect("overview JSON");
        answered_by.push(v["node"].as_str().expect("node name").to_string());
    }
    answered_by.sort();
    let mut expected: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    expected.sort();
    assert_eq!(answered_by, expected, "round-robin over the three nodes");

    // A held connection is closed by a drain of its backend: one whose server has
    // sent nothing yet (half a request), so no reply could be taken for AMQP.
    let mut held = tokio::net::TcpStream::connect(w.amqp)
        .await
        .expect("connect");
    held.write_all(b"GET /api/overview HTTP/1.1\r\n")
        .await
        .expect("write");
    let mut owner = None;
    for _ in 0..100 {
        let v: serde_json::Value =
            serde_json::from_str(&w.admin_get("/api/backends").await.1).expect("json");
        owner = v.as_array().and_then(|a| {
            a.iter()
                .find(|b| b["active_connections"] == 1)
                .and_then(|b| b["name"].as_str().map(str::to_string))
        });
        if owner.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owner = owner.expect("one backend holds the connection");
    let (status, body) = w.admin_post(&format!("/api/backends/{owner}/drain")).await;
    assert_eq!(status, 200, "{body}");
    let closed = read_until_closed(&mut held, Duration::from_secs(10)).await;
    // Closed at once (not after the 30 s close timeout), and no AMQP
    // connection.close was written into the HTTP stream.
    let after = closed.expect("drained connection closed at once");
    assert!(
        !after.windows(6).any(|w| w == b"warren"),
        "an AMQP close was injected: {:?}",
        String::from_utf8_lossy(&after)
    );
    w.wait_active(&owner, 0, Duration::from_secs(5)).await;
    w.stop().await;

    // A stream that happens to look like AMQP frames (8 header-sized bytes, then
    // a heartbeat frame) to a server that has said nothing: still a plain close.
    let sink = sink_backend().await;
    let w = Warren::start(&config_yaml(
        &nodes,
        &format!(
            "protocol: tcp\ndrain:\n  window: 0s\n  close_timeout: 30s\nbackends:\n  - {{name: sink, address: '{sink}'}}\n"
        ),
    ))
    .await;
    let mut held = tokio::net::TcpStream::connect(w.amqp)
        .await
        .expect("connect");
    held.write_all(b"\x10\x0c\x00\x04MQTT\x08\x00\x00\x00\x00\x00\x00\xce")
        .await
        .expect("write");
    w.wait_active("sink", 1, Duration::from_secs(5)).await;
    let (status, body) = w.admin_post("/api/backends/sink/drain").await;
    assert_eq!(status, 200, "{body}");
    let after = read_until_closed(&mut held, Duration::from_secs(10))
        .await
        .expect("drained connection closed at once");
    assert!(after.is_empty(), "bytes injected: {after:?}");
    w.stop().await;
}
