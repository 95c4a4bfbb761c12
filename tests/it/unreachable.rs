//! A node that becomes unreachable without a reset: a real RabbitMQ node on its own
//! test host (network namespace, `scripts/netns-node`), whose link is taken down so
//! packets are silently dropped. warren must notice within the health bound and
//! close that node's clients itself, the AMQP way, instead of letting them hang.

use std::time::Duration;

use crate::common::*;

fn netns_node(action: &str) {
    if let Err(e) = script("netns-node", &[action], &[]) {
        panic!("scripts/netns-node {action} failed (needs root and iproute2): {e}");
    }
}

/// Takes the node's link down; brings it back on drop.
struct Cut;

impl Cut {
    fn new() -> Cut {
        netns_node("cut");
        Cut
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = script("netns-node", &["restore"], &[]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node_is_marked_down_and_its_clients_closed() {
    let nodes = cluster_exclusive().await;
    netns_node("up");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n\
         health:\n  interval: 1s\n  timeout: 1s\n  fall: 2\n  rise: 2\n  slowstart: 0s\n  password: guest\n\
         drain:\n  close_timeout: 2s\n\
         backends:\n\
         \x20 - {{name: {}, address: '{}', management: '{}'}}\n\
         \x20 - {{name: {}, address: '{}', management: '{}'}}\n\
         \x20 - {{name: x1, address: '10.250.1.2:5672', management: 'http://10.250.1.2:15672'}}\n",
        nodes[0].backend,
        nodes[0].amqp,
        nodes[0].mgmt_url(),
        nodes[1].backend,
        nodes[1].amqp,
        nodes[1].mgmt_url()
    );
    let w = Warren::start(&yaml).await;
    w.wait_state("x1", "up", Duration::from_secs(10)).await;
    for n in &nodes[..2] {
        w.admin_post(&format!("/api/backends/{}/disable", n.backend))
            .await;
    }
    let mut conns = Vec::new();
    for i in 0..3 {
        conns.push(amqp_connect_named(&w.url(), &format!("{}-{i}", unique("netns"))).await);
    }
    for n in &nodes[..2] {
        w.admin_post(&format!("/api/backends/{}/enable", n.backend))
            .await;
    }
    assert_eq!(w.backend("x1").await["active_connections"], 3);
    let watchers: Vec<_> = conns.iter().map(watch_close).collect();

    let cut = Cut::new();
    // Bound: fall x interval + timeout = 3 s; plus slack for a noisy machine.
    let took = w.wait_state("x1", "down", Duration::from_secs(6)).await;
    eprintln!("unreachable node marked down after {took:?}");
    let b = w.backend("x1").await;
    // Silence shows as a check timeout, or as "no route" once ARP gives up.
    assert!(
        b["last_failure"]
            .as_str()
            .is_some_and(|r| r.contains("timed out") || r.contains("No route to host")),
        "{b}"
    );
    for h in watchers {
        let c = closed_within(h, Duration::from_secs(5))
            .await
            .expect("client closed promptly");
        assert_eq!(c.code, Some(320), "{c:?}");
        assert!(c.text.contains("x1 is down"), "{c:?}");
    }
    // Within close_timeout the broker side is given up too.
    w.wait_active("x1", 0, Duration::from_secs(5)).await;
    // New clients only reach the live nodes, without delay from the dead one.
    let prefix = unique("netns-after");
    let mut more = Vec::new();
    for i in 0..4 {
        more.push(amqp_connect_named(&w.url(), &format!("{prefix}-{i}")).await);
    }
    let seen = wait_named(&nodes[0], &prefix, 4).await;
    assert_eq!(per_node(&nodes, &seen), vec![2, 2, 0], "{seen:?}");

    drop(cut);
    w.wait_state("x1", "up", Duration::from_secs(30)).await;
    for c in more {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}
