//! warren's stream listener (issue 18), against the real nodes, with a real
//! client: rstream (`stream_client.py`), stock (`load_balancer_mode=False`), so
//! after its first connection it goes where the metadata says: the leader for a
//! producer, a replica (at random; the leader when none) for a consumer. A node
//! advertises its own host and stream port; warren passes the metadata on with
//! each node's host:port replaced by warren's port for that node (`node_ports`),
//! where it connects the client to that node. So the producer's connection sits
//! on the stream's leader and the consumer's on a member, as the management API
//! shows (rabbitmq_stream_management, enabled by scripts/local-cluster); and when
//! the leader's VM is killed both come back through warren, with no confirmed
//! message missing at the consumer.

use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};

use crate::common::*;

const HEALTH: &str = "health:\n  interval: 1s\n  timeout: 1s\n  fall: 2\n  rise: 2\n  slowstart: 0s\n  password: guest\n";

/// A stream declared over AMQP on `node` directly: its leader is `node`
/// (`client-local`, said explicitly: 4.x could be configured otherwise).
async fn declare_stream(node: &Node, name: &str) {
    let conn = amqp_connect(&node.url()).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-queue-leader-locator".into(),
        AMQPValue::LongString("client-local".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(name.into(), durable, args)
        .await
        .expect("stream declared");
    let _ = conn.close(200, "declared".into()).await;
}

async fn delete_stream(node: &Node, name: &str) {
    if let Ok(conn) = try_amqp_connect_named(&node.url(), "warren-test").await {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(name.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "deleted".into()).await;
    }
}

/// The stream's leader and members, from the management API: the queue's
/// `leader` where the version gives one (4.x), else its `node` (3.10: `leader`
/// null). Waits until the members are listed (a new stream shows `members: null`
/// until its first statistics, a few seconds) and the leader is one of them.
async fn stream_placement(via: &Node, stream: &str) -> (String, Vec<String>) {
    let start = tokio::time::Instant::now();
    loop {
        let q = mgmt_get(via, &format!("/api/queues/%2F/{stream}"))
            .await
            .unwrap_or_default();
        let leader = q["leader"]
            .as_str()
            .or(q["node"].as_str())
            .map(str::to_string);
        let members: Vec<String> = q["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(leader) = leader {
            if members.contains(&leader) {
                return (leader, members);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stream {stream}: no leader among its members: {q}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The nodes of the connections that hold `stream`'s publishers (`kind`
/// `publishers`) or consumers (`consumers`), from /api/stream/{kind}.
async fn stream_client_nodes(via: &Node, kind: &str, stream: &str) -> Vec<String> {
    let v = mgmt_get(via, &format!("/api/stream/{kind}"))
        .await
        .unwrap_or_else(|e| panic!("GET /api/stream/{kind} ({e}): rabbitmq_stream_management?"));
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["queue"]["name"] == stream)
                .filter_map(|p| p["connection_details"]["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until /api/stream/{kind} lists one client on `stream`; its node.
async fn wait_stream_client(via: &Node, kind: &str, stream: &str) -> String {
    let start = tokio::time::Instant::now();
    loop {
        let found = stream_client_nodes(via, kind, stream).await;
        if found.len() == 1 {
            return found[0].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not one {kind} on {stream}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn stream_client(python: &str, mode: &str, l: &Listeners, stream: &str, secs: u32) -> PyClient {
    let quiet: &[&str] = if mode == "produce" {
        &["confirm "]
    } else {
        &["got "]
    };
    PyClient::start(
        python,
        "stream_client.py",
        &[
            mode,
            &l.stream.ip().to_string(),
            &l.stream.port().to_string(),
            stream,
            &secs.to_string(),
        ],
        &format!("stream {mode}"),
        quiet,
    )
}

/// Every confirmed number was received; (confirmed, received) counts.
fn check_no_loss(produced: &[String], consumed: &[String]) -> (usize, usize) {
    let confirmed = numbers(produced, "confirm ");
    let got = numbers(consumed, "got ");
    let missing: Vec<&u64> = confirmed.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "{} confirmed messages never reached the consumer: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(!confirmed.is_empty(), "nothing was confirmed");
    (confirmed.len(), got.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_sits_on_the_leader_and_a_consumer_on_a_member_through_warren() {
    let nodes = cluster().await;
    let Some(python) = clients_python() else {
        return;
    };
    let (yaml, l) = config_yaml_listeners(&nodes, HEALTH);
    let w = Warren::start(&yaml).await;
    // The producer creates the stream through warren (its leader: wherever that landed).
    let stream = unique("stream-place");
    let producer = stream_client(&python, "produce", &l, &stream, 15);
    producer
        .wait_for("confirm ", 10, Duration::from_secs(30))
        .await;
    let consumer = stream_client(&python, "consume", &l, &stream, 15);
    consumer.wait_for("got ", 10, Duration::from_secs(30)).await;

    let (leader, members) = stream_placement(&nodes[0], &stream).await;
    assert_eq!(members.len(), 3, "{members:?}");
    let on = wait_stream_client(&nodes[0], "publishers", &stream).await;
    assert_eq!(on, leader, "the producer is not on the leader");
    let consumer_on = wait_stream_client(&nodes[0], "consumers", &stream).await;
    assert!(
        members.contains(&consumer_on),
        "{consumer_on} holds no replica: {members:?}"
    );
    // They got there through warren's port for that node.
    let p = connections(&producer.lines());
    assert_eq!(
        p.last().map(|(_, peer)| peer.clone()),
        l.stream_of(&nodes, &leader).map(|a| a.to_string()),
        "{p:?}"
    );
    let c = connections(&consumer.lines());
    assert_eq!(
        c.last().map(|(_, peer)| peer.clone()),
        l.stream_of(&nodes, &consumer_on).map(|a| a.to_string()),
        "{c:?}"
    );

    let produced = producer.finish(Duration::from_secs(60)).await;
    let consumed = consumer.finish(Duration::from_secs(60)).await;
    let (confirmed, got) = check_no_loss(&produced, &consumed);
    eprintln!("stream: {confirmed} confirmed, {got} received");
    delete_stream(&nodes[0], &stream).await;
    w.stop().await;
}

/// Starts the node set again (`scripts/local-cluster start`, which starts only
/// the nodes that are down) when dropped, so a failing test leaves no node dead.
struct Revive;

impl Drop for Revive {
    fn drop(&mut self) {
        if let Err(e) = script("local-cluster", &["start"], &[]) {
            eprintln!("local-cluster start: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_clients_recover_through_warren_when_the_leader_is_killed() {
    let nodes = cluster_exclusive().await;
    let Some(python) = clients_python() else {
        return;
    };
    let (yaml, l) = config_yaml_listeners(&nodes, HEALTH);
    let w = Warren::start(&yaml).await;
    let stream = unique("stream-kill");
    declare_stream(&nodes[0], &stream).await;
    let (leader, _) = stream_placement(&nodes[1], &stream).await;
    assert_eq!(leader, nodes[0].name);

    let producer = stream_client(&python, "produce", &l, &stream, 50);
    let consumer = stream_client(&python, "consume", &l, &stream, 50);
    producer
        .wait_for("confirm ", 20, Duration::from_secs(30))
        .await;
    consumer.wait_for("got ", 20, Duration::from_secs(30)).await;
    assert_eq!(
        wait_stream_client(&nodes[1], "publishers", &stream).await,
        leader
    );

    eprintln!("streams: kill -9 {}", nodes[0].name);
    let revive = Revive;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &nodes[0].pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let confirmed_at_kill = producer.count("confirm ");
    let got_at_kill = consumer.count("got ");

    // The producer's connection to the leader is gone: it comes back (through
    // warren, on the new leader) and is confirmed again.
    producer
        .wait_for("closed", 1, Duration::from_secs(20))
        .await;
    producer
        .wait_for("connected", 2, Duration::from_secs(60))
        .await;
    producer
        .wait_for("confirm ", confirmed_at_kill + 20, Duration::from_secs(30))
        .await;
    consumer
        .wait_for("got ", got_at_kill + 20, Duration::from_secs(60))
        .await;
    let new_leader = {
        let start = tokio::time::Instant::now();
        loop {
            let (leader, _) = stream_placement(&nodes[1], &stream).await;
            if leader != nodes[0].name {
                break leader;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the management API still names the killed node as the leader"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    assert_eq!(
        wait_stream_client(&nodes[1], "publishers", &stream).await,
        new_leader
    );
    let p = connections(&producer.lines());
    assert_eq!(
        p.last().map(|(_, peer)| peer.clone()),
        l.stream_of(&nodes, &new_leader).map(|a| a.to_string()),
        "{p:?}"
    );
    // Every connection, before and after, went through warren.
    let through: Vec<String> = l.stream_nodes.iter().map(|a| a.to_string()).collect();
    for (_, peer) in p.iter().chain(connections(&consumer.lines()).iter()) {
        assert!(
            through.contains(peer),
            "a connection bypassed warren: {peer}"
        );
    }

    drop(revive);
    wait_nodes_up().await;
    let produced = producer.finish(Duration::from_secs(90)).await;
    let consumed = consumer.finish(Duration::from_secs(120)).await;
    let (confirmed, got) = check_no_loss(&produced, &consumed);
    eprintln!("stream after kill: {confirmed} confirmed, {got} received");
    delete_stream(&nodes[1], &stream).await;
    w.stop().await;
}

/// A drain of the node a stream consumer sits on closes its connection (a TCP
/// close: the stream protocol's close is the broker's) and keeps it off that
/// node's port, and warren's metadata responses no longer offer that node as
/// a replica: the consumer comes back at its first try on the other replica
/// through warren and misses nothing. warren's shutdown then closes the producer and the
/// consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_a_stream_consumer_to_another_replica_and_shutdown_closes_both() {
    let nodes = cluster_exclusive().await;
    let Some(python) = clients_python() else {
        return;
    };
    let (yaml, l) = config_yaml_listeners(
        &nodes,
        &format!("{HEALTH}drain:\n  window: 1s\n  grace: 5s\n"),
    );
    let w = Warren::start(&yaml).await;
    let stream = unique("stream-drain");
    declare_stream(&nodes[0], &stream).await;
    let (leader, members) = stream_placement(&nodes[1], &stream).await;
    assert_eq!(leader, nodes[0].name);
    let producer = stream_client(&python, "produce", &l, &stream, 40);
    producer
        .wait_for("confirm ", 10, Duration::from_secs(30))
        .await;
    let consumer = stream_client(&python, "consume", &l, &stream, 40);
    consumer.wait_for("got ", 10, Duration::from_secs(30)).await;
    let on = wait_stream_client(&nodes[1], "consumers", &stream).await;
    assert_ne!(on, leader, "the consumer is on the leader: {members:?}");
    let drained = nodes.iter().find(|n| n.name == on).expect("a node");
    let (status, body) = w
        .admin_post(&format!("/api/backends/{}/drain", drained.backend))
        .await;
    assert_eq!(status, 200, "{body}");
    // Closed, then back on the other replica, through its port.
    consumer
        .wait_for("closed ", 1, Duration::from_secs(15))
        .await;
    // What the consumer said besides its messages.
    let said = || {
        consumer
            .lines()
            .into_iter()
            .filter(|l| !l.starts_with("got "))
            .collect::<Vec<_>>()
    };
    let start = tokio::time::Instant::now();
    let moved = loop {
        let found = stream_client_nodes(&nodes[1], "consumers", &stream).await;
        if found.len() == 1 && found[0] != on {
            break found[0].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the consumer did not come back elsewhere: {found:?}; it said {:?}",
            said()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_ne!(moved, leader, "a replica is left: {members:?}");
    // warren took the drained node out of the replicas it tells clients of, so
    // the consumer's first try found the other replica (a try on the drained
    // node's port would have been turned away: a second close).
    assert_eq!(consumer.count("closed "), 1, "{:?}", said());
    let c = connections(&consumer.lines());
    assert_eq!(
        c.last().map(|(_, peer)| peer.clone()),
        l.stream_of(&nodes, &moved).map(|a| a.to_string()),
        "{c:?}"
    );
    // Shutdown closes both (then they find no warren until their time is up).
    let (p0, c0) = (producer.count("closed "), consumer.count("closed "));
    w.stop().await;
    producer
        .wait_for("closed ", p0 + 1, Duration::from_secs(15))
        .await;
    consumer
        .wait_for("closed ", c0 + 1, Duration::from_secs(15))
        .await;
    let produced = producer.finish(Duration::from_secs(60)).await;
    let consumed = consumer.finish(Duration::from_secs(60)).await;
    // Every message confirmed while the consumer ran reached it.
    let got = numbers(&consumed, "got ");
    let highest = got.iter().max().copied().unwrap_or(0);
    let confirmed: Vec<u64> = numbers(&produced, "confirm ")
        .into_iter()
        .filter(|n| *n <= highest)
        .collect();
    let missing: Vec<&u64> = confirmed.iter().filter(|n| !got.contains(n)).collect();
    assert!(missing.is_empty(), "missed {missing:?}");
    assert!(confirmed.len() > 10, "{confirmed:?}");
    eprintln!(
        "stream drain: consumer moved {on} -> {moved}, {} received",
        got.len()
    );
    delete_stream(&nodes[0], &stream).await;
}
