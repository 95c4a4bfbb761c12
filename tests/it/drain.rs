//! Draining against the real nodes: an operator drain closes a node's clients with
//! AMQP connection.close 320 at a frame boundary, spread over the window; the
//! clients reconnect onto the other nodes; enable brings the node back.

use std::time::Duration;

use crate::common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_drain_closes_thirty_connections_paced_and_clients_reconnect_elsewhere() {
    let nodes = cluster_exclusive().await;
    let w = Warren::start(&config_yaml(
        &nodes,
        "drain:\n  window: 3s\n  grace: 10s\nhealth:\n  slowstart: 0s\n  password: guest\n",
    ))
    .await;
    let prefix = unique("drain");
    let conns = connections_on(&w, &nodes, 0, 30, &prefix).await;
    let seen = wait_named(&nodes[0], &prefix, 30).await;
    assert_eq!(per_node(&nodes, &seen), vec![30, 0, 0]);
    // Busy connections too: a publisher in the middle of its traffic is closed at a
    // frame boundary, which the client library would reject otherwise.
    let busy = conns[0].create_channel().await.expect("channel");
    let watchers: Vec<_> = conns.iter().map(watch_close).collect();
    let publisher = tokio::spawn(async move {
        let body = vec![0u8; 300_000]; // several frames per message
        loop {
            if busy
                .basic_publish(
                    "".into(),
                    "nowhere".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    });

    let started = tokio::time::Instant::now();
    let (status, body) = w
        .admin_post(&format!("/api/backends/{}/drain", nodes[0].backend))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"draining\""), "{body}");

    let mut closes = Vec::new();
    for h in watchers {
        let c = closed_within(h, Duration::from_secs(15))
            .await
            .expect("every client is closed");
        assert_eq!(c.code, Some(320), "not a CONNECTION_FORCED close: {c:?}");
        assert!(
            c.text.contains("warren") && c.text.contains("draining"),
            "{c:?}"
        );
        closes.push(c.at.duration_since(started));
    }
    closes.sort();
    let spread = closes[29] - closes[0];
    assert!(
        spread >= Duration::from_millis(2000),
        "closes not spread over the 3 s window: first {:?}, last {:?}",
        closes[0],
        closes[29]
    );
    let _ = publisher.await;
    w.wait_active(&nodes[0].backend, 0, Duration::from_secs(5))
        .await;

    // The clients reconnect: they land on the other two nodes only.
    let again = unique("drain-again");
    let mut reconnected = Vec::new();
    for i in 0..10 {
        reconnected.push(amqp_connect_named(&w.url(), &format!("{again}-{i}")).await);
    }
    let seen = wait_named(&nodes[1], &again, 10).await;
    let counts = per_node(&nodes, &seen);
    assert_eq!(counts[0], 0, "{seen:?}");
    assert_eq!(counts[1] + counts[2], 10);

    // The events feed, newest first: the operator's drain with where it came
    // from, the paced drain started with its 30 connections, then finished.
    let name = nodes[0].backend.as_str();
    let mut events = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, body) = w.admin_get("/api/events").await;
        events = serde_json::from_str(&body).expect("events JSON");
        let finished = events.as_array().is_some_and(|a| {
            a.iter().any(|e| {
                e["backend"] == name
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("drain finished"))
            })
        });
        if finished {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mine: Vec<&serde_json::Value> = events
        .as_array()
        .expect("a list")
        .iter()
        .filter(|e| e["backend"] == name)
        .collect();
    let messages: Vec<&str> = mine.iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(
        messages.len() >= 3
            && messages[0].starts_with("drain finished")
            && messages[0].contains("30 of 30 connections closed gracefully, 0 closed hard")
            && messages[1].starts_with("drain started: 30 connections")
            && messages[2] == "drain",
        "{messages:?}"
    );
    assert_eq!(mine[2]["kind"], "operator");
    assert!(
        mine[2]["by"]
            .as_str()
            .is_some_and(|b| b.starts_with("admin API from 127.0.0.1:")),
        "{}",
        mine[2]
    );

    // Enable brings it back.
    let (status, _) = w
        .admin_post(&format!("/api/backends/{}/enable", nodes[0].backend))
        .await;
    assert_eq!(status, 200);
    w.wait_state(&nodes[0].backend, "up", Duration::from_secs(1))
        .await;
    let back = unique("drain-back");
    let mut more = Vec::new();
    for i in 0..3 {
        more.push(amqp_connect_named(&w.url(), &format!("{back}-{i}")).await);
    }
    let seen = wait_named(&nodes[0], &back, 3).await;
    assert_eq!(per_node(&nodes, &seen), vec![1, 1, 1], "{seen:?}");
    for c in reconnected.into_iter().chain(more) {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_keeps_existing_connections_and_takes_no_new_ones() {
    let nodes = cluster_exclusive().await;
    let w = Warren::start(&config_yaml(
        &nodes,
        "health:\n  slowstart: 0s\n  password: guest\n",
    ))
    .await;
    let prefix = unique("disable");
    let conns = connections_on(&w, &nodes, 2, 3, &prefix).await;
    let watchers: Vec<_> = conns.iter().map(watch_close).collect();
    let (status, body) = w
        .admin_post(&format!("/api/backends/{}/disable", nodes[2].backend))
        .await;
    assert_eq!(status, 200);
    assert!(body.contains("\"disabled\""), "{body}");
    let newer = unique("disable-new");
    let mut more = Vec::new();
    for i in 0..6 {
        more.push(amqp_connect_named(&w.url(), &format!("{newer}-{i}")).await);
    }
    let seen = wait_named(&nodes[0], &newer, 6).await;
    assert_eq!(per_node(&nodes, &seen), vec![3, 3, 0], "{seen:?}");
    // The old ones still work.
    for c in &conns {
        let ch = c
            .create_channel()
            .await
            .expect("existing connection still open");
        ch.queue_declare(
            unique("q-dis").as_str().into(),
            exclusive(),
            FieldTable::default(),
        )
        .await
        .expect("declare on a disabled node's connection");
    }
    for h in watchers {
        assert!(closed_within(h, Duration::from_millis(200)).await.is_none());
    }
    for c in conns.into_iter().chain(more) {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_grace_closes_hard_what_does_not_answer() {
    // A raw client that completes the AMQP handshake through warren but never
    // answers connection.close: after the close timeout, it is cut.
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(
        &nodes,
        "drain:\n  window: 0s\n  grace: 2s\n  close_timeout: 1s\n",
    ))
    .await;
    use tokio::io::AsyncReadExt;
    let mut s = silent_client(w.amqp).await;
    let backend = loop {
        let list: serde_json::Value =
            serde_json::from_str(&w.admin_get("/api/backends").await.1).expect("json");
        if let Some(b) = list
            .as_array()
            .and_then(|a| a.iter().find(|b| b["active_connections"] == 1))
        {
            break b["name"].as_str().expect("name").to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let started = tokio::time::Instant::now();
    w.admin_post(&format!("/api/backends/{backend}/drain"))
        .await;
    // First warren's connection.close 320 arrives...
    let (_, _, payload) = read_frame(&mut s).await;
    assert_eq!(&payload[..4], &[0, 10, 0, 50], "connection.close");
    assert_eq!(u16::from_be_bytes([payload[4], payload[5]]), 320);
    // ...then, unanswered, the socket is closed after the close timeout.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed within 5 s");
    assert!(matches!(n, Ok(0) | Err(_)), "expected EOF, got {n:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed before the close timeout: {took:?}"
    );
    w.stop().await;
}

/// Clients that reconnect whenever they are closed, like real applications
/// (a close can also come while a client is still opening its connection: it
/// then tries again).
fn reconnecting_clients(
    url: String,
    n: usize,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..n)
        .map(|_| {
            let url = url.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut reconnects = 0;
                loop {
                    let conn = match try_amqp_connect_named(&url, "warren-test").await {
                        Ok(conn) => conn,
                        Err(_) if stop.is_cancelled() => return reconnects,
                        Err(_) => {
                            reconnects += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let closed = watch_close(&conn);
                    tokio::select! {
                        _ = stop.cancelled() => {
                            let _ = conn.close(200, "bye".into()).await;
                            return reconnects;
                        }
                        _ = closed => reconnects += 1,
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_evens_out_connections_after_a_node_returns() {
    let nodes = cluster_exclusive().await;
    let w = Warren::start(&config_yaml(
        &nodes,
        "health:\n  slowstart: 0s\n  password: guest\nrebalance:\n  enabled: true\n  tolerance: 0.2\n  window: 2s\n  max_fraction: 0.5\n",
    ))
    .await;
    // n3 out of service while 30 clients connect: 15/15/0.
    w.admin_post(&format!("/api/backends/{}/disable", nodes[2].backend))
        .await;
    let stop = tokio_util::sync::CancellationToken::new();
    let clients = reconnecting_clients(w.url(), 30, stop.clone());
    let active = |v: &serde_json::Value| v["active_connections"].as_u64().unwrap_or(0);
    let counts = || async {
        let mut c = Vec::new();
        for n in nodes.iter() {
            c.push(active(&w.backend(&n.backend).await));
        }
        c
    };
    let start = tokio::time::Instant::now();
    while counts().await != vec![15, 15, 0] {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "clients never settled: {:?}",
            counts().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The node returns: connections move to it, paced, until the spread is even.
    w.admin_post(&format!("/api/backends/{}/enable", nodes[2].backend))
        .await;
    let start = tokio::time::Instant::now();
    let settled = loop {
        let c = counts().await;
        let (min, max) = (*c.iter().min().unwrap_or(&0), *c.iter().max().unwrap_or(&0));
        if c.iter().sum::<u64>() == 30 && max - min <= 2 {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not rebalanced: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("rebalanced to {settled:?} in {:?}", start.elapsed());
    stop.cancel();
    let mut moved = 0;
    for c in clients {
        moved += c.await.expect("client task");
    }
    // Only a bounded share was moved: not every client was disturbed.
    assert!((8..30).contains(&moved), "{moved} reconnects");
    w.stop().await;
}
