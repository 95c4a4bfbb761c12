//! What warren tells about its clients (docs/clients.md), against the real
//! nodes with real client libraries: lapin in this process, pika in a Python
//! process of its own (`pika_client.py`), which a test can freeze with SIGSTOP.
//! Each test makes its own vhosts and users with `rabbitmqctl` and removes them,
//! and names its backends uniquely, so the series it reads are its own.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::common::*;

const PASSWORD: &str = "warren-test-password";

/// Two vhosts and two users (user i may use vhost i) on the nodes, made for one
/// test and removed when dropped.
struct Tenants {
    node: Node,
    vhosts: [String; 2],
    users: [String; 2],
}

impl Tenants {
    fn create(node: &Node, tag: &str) -> Tenants {
        let t = Tenants {
            node: node.clone(),
            vhosts: [unique(&format!("{tag}-va")), unique(&format!("{tag}-vb"))],
            users: [unique(&format!("{tag}-ua")), unique(&format!("{tag}-ub"))],
        };
        for (v, u) in t.vhosts.iter().zip(&t.users) {
            ctl(node, &["add_vhost", v]).expect("add_vhost");
            ctl(node, &["add_user", u, PASSWORD]).expect("add_user");
            ctl(node, &["set_permissions", "-p", v, u, ".*", ".*", ".*"]).expect("permissions");
        }
        t
    }
}

impl Drop for Tenants {
    fn drop(&mut self) {
        for (v, u) in self.vhosts.iter().zip(&self.users) {
            let _ = ctl(&self.node, &["delete_user", u]);
            let _ = ctl(&self.node, &["delete_vhost", v]);
        }
    }
}

/// warren's config for the three nodes, backends named `{tag}-1..3` (series of
/// this test only), with `extra` appended.
fn config(nodes: &[Node], tag: &str, extra: &str) -> String {
    let mut backends = String::from("backends:\n");
    for n in nodes {
        backends.push_str(&n.backend_yaml(&format!("{tag}-{}", n.index)));
    }
    config_yaml(nodes, &format!("{extra}{backends}"))
}

/// A short tag for backend names.
fn tag(prefix: &str) -> String {
    let u = unique(prefix);
    let (_, n) = u.rsplit_once('-').expect("unique name");
    format!("{prefix}{}{n}", std::process::id() % 1000)
}

/// Debian's Python, where scripts/test installs python3-pika (a `python3` first
/// on PATH, e.g. pyenv's, may not have it).
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// `pika_client.py` running one connection through warren.
struct Pika {
    child: Child,
    out: Lines<BufReader<ChildStdout>>,
}

impl Pika {
    /// Runs `pika_client.py MODE` through `w` as `user` into `vhost`.
    #[allow(clippy::too_many_arguments)]
    fn start(
        mode: &str,
        w: &Warren,
        vhost: &str,
        user: &str,
        password: &str,
        heartbeat: u32,
        name: &str,
        seconds: f64,
    ) -> Pika {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/pika_client.py");
        let mut child = Command::new(DEBIAN_PYTHON)
            .arg(script)
            .args([
                mode,
                "127.0.0.1",
                &w.amqp.port().to_string(),
                vhost,
                user,
                password,
            ])
            .args([heartbeat.to_string(), name.to_string(), seconds.to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("/usr/bin/python3 runs (pika: apt-get install python3-pika)");
        let out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Pika { child, out }
    }

    /// The next line the client prints, within `within`.
    async fn line(&mut self, within: Duration) -> String {
        match tokio::time::timeout(within, self.out.next_line()).await {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => panic!("pika client ended without a word (is pika installed?)"),
            Ok(Err(e)) => panic!("pika client output: {e}"),
            Err(_) => panic!("pika client said nothing within {within:?}"),
        }
    }

    /// Reads lines until one starts with `prefix`; that line.
    async fn expect(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line(Duration::from_secs(30)).await;
            if l.starts_with(prefix) || l.starts_with("error") {
                assert!(
                    l.starts_with(prefix),
                    "pika: expected `{prefix}`, got `{l}`"
                );
                return l;
            }
        }
    }

    /// SIGSTOP or SIGCONT to the client process.
    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running");
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }
}

/// `GET /api/connections?query`.
async fn connections(w: &Warren, query: &str) -> Value {
    let (status, body) = w.admin_get(&format!("/api/connections?{query}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The connection named `name` in a `/api/connections` answer.
fn named<'a>(page: &'a Value, name: &str) -> &'a Value {
    page["connections"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["connection_name"] == name))
        .unwrap_or_else(|| panic!("no connection named {name}: {page}"))
}

/// Polls `f` every 100 ms until it returns `Some`, failing after `within`.
async fn until<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// lapin and pika, each as its own user into its own vhost: warren names the
/// vhost, user and client library of each, filters and pages them, labels
/// them in its metrics, and counts how each connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhosts_users_and_client_libraries_are_seen() {
    let nodes = cluster().await;
    let t = Tenants::create(&nodes[0], "who");
    let tag = tag("who");
    let w = Warren::start(&config(
        &nodes,
        &tag,
        &format!(
            "clients:\n  metrics: {{vhosts: ['{}'], top: 5}}\n",
            t.vhosts[0]
        ),
    ))
    .await;
    let url = format!(
        "amqp://{}:{PASSWORD}@{}/{}",
        t.users[0], w.amqp, t.vhosts[0]
    );
    let lapin = amqp_connect_named(&url, "who-lapin").await;
    let mut pika = Pika::start(
        "hold",
        &w,
        &t.vhosts[1],
        &t.users[1],
        PASSWORD,
        30,
        "who-pika",
        120.0,
    );
    pika.expect("connected").await;

    let all = connections(&w, "").await;
    assert_eq!(all["total"], 2, "{all}");
    let l = named(&all, "who-lapin");
    assert_eq!(l["product"], "lapin", "{l}");
    assert_eq!(
        (&l["user"], &l["vhost"]),
        (
            &Value::from(t.users[0].clone()),
            &Value::from(t.vhosts[0].clone())
        )
    );
    assert_eq!(
        (&l["mechanism"], &l["opened"], &l["blocked"]),
        (&"PLAIN".into(), &true.into(), &false.into())
    );
    let p = named(&all, "who-pika");
    assert_eq!(p["product"], "Pika Python Client Library", "{p}");
    assert!(p["version"].as_str().is_some_and(|v| !v.is_empty()), "{p}");
    assert_eq!(
        (&p["user"], &p["vhost"]),
        (
            &Value::from(t.users[1].clone()),
            &Value::from(t.vhosts[1].clone())
        )
    );
    assert_eq!(p["heartbeat_seconds"], 30, "{p}");
    assert!(
        p["client_silent_seconds"]
            .as_f64()
            .is_some_and(|s| s < 30.0),
        "{p}"
    );
    assert!(
        p["bytes_in"].as_u64() > Some(100) && p["bytes_out"].as_u64() > Some(100),
        "{p}"
    );
    assert!(
        !all.to_string().contains(PASSWORD),
        "a password in the API: {all}"
    );

    // Filters (a vhost, a user, a backend) and pages.
    let by_vhost = connections(&w, &format!("vhost={}", t.vhosts[1])).await;
    assert_eq!(by_vhost["total"], 1);
    named(&by_vhost, "who-pika");
    let by_user = connections(&w, &format!("user={}", t.users[0])).await;
    assert_eq!(by_user["total"], 1);
    named(&by_user, "who-lapin");
    let backend = p["backend"].as_str().expect("backend");
    let by_backend = connections(&w, &format!("backend={backend}")).await;
    named(&by_backend, "who-pika");
    let first = connections(&w, "limit=1").await;
    let second = connections(&w, "limit=1&offset=1").await;
    assert_eq!(
        (
            &first["total"],
            first["connections"].as_array().map(Vec::len)
        ),
        (&2.into(), Some(1))
    );
    assert_ne!(
        first["connections"][0]["id"],
        second["connections"][0]["id"]
    );

    // Metrics: the listed vhost and, in the top 5, the other; users likewise.
    let m = w.metrics().await;
    for v in &t.vhosts {
        assert_eq!(
            m.sum("warren_amqp_connections", &[("vhost", v)]),
            1.0,
            "{v}: {}",
            m.0
        );
    }
    for u in &t.users {
        assert_eq!(
            m.value("warren_amqp_user_connections", &[("user", u)]),
            1.0,
            "{u}"
        );
    }

    // How they end: each closes itself (200 from the client).
    let lapin_backend = l["backend"].as_str().expect("backend").to_string();
    lapin.close(200, "bye".into()).await.expect("close");
    drop(pika); // killed: no close at all
    until(Duration::from_secs(10), "both connections gone", || async {
        (connections(&w, "").await["total"] == 0).then_some(())
    })
    .await;
    let m = w.metrics().await;
    let closes = |side: &str, code: &str, backend: &str| {
        m.value(
            "warren_amqp_closes_total",
            &[("backend", backend), ("side", side), ("code", code)],
        )
    };
    assert_eq!(closes("client", "200", &lapin_backend), 1.0, "{}", m.0);
    assert_eq!(closes("none", "none", backend), 1.0, "{}", m.0);
    for v in &t.vhosts {
        assert_eq!(
            m.sum("warren_amqp_connections", &[("vhost", v)]),
            0.0,
            "{v}"
        );
    }
    w.stop().await;
}

/// A vhost limit refuses the next connection with 530 and a text each client
/// library shows; a reload raises it; a wrong password is the broker's 403; a
/// frozen client's silence is a heartbeat gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refusals_and_heartbeat_gaps() {
    let nodes = cluster().await;
    let t = Tenants::create(&nodes[0], "lim");
    let tag = tag("lim");
    let dir = fresh_dir("clients-limits");
    let file = dir.join("warren.yaml");
    let limited = |max: usize| {
        config(
            &nodes,
            &tag,
            &format!(
                "clients:\n  limits:\n    vhosts:\n      '{}': {{max_connections: {max}}}\n",
                t.vhosts[0]
            ),
        )
    };
    std::fs::write(&file, limited(1)).expect("config");
    let w = Warren::start_file(&file).await;
    let before = w.metrics().await;
    let refusals = |m: &Metrics| {
        m.value(
            "warren_amqp_limit_refusals_total",
            &[("scope", "vhost"), ("limit", "connections")],
        )
    };
    let url = format!(
        "amqp://{}:{PASSWORD}@{}/{}",
        t.users[0], w.amqp, t.vhosts[0]
    );
    let _first = amqp_connect_named(&url, "lim-first").await;

    // The next one is refused, the AMQP way: each library reports 530 and the text.
    let text = format!(
        "warren: connection limit for vhost {} reached (1)",
        t.vhosts[0]
    );
    let Err(e) = try_amqp_connect_named(&url, "lim-second").await else {
        panic!("lapin: admitted over the limit");
    };
    assert!(e.contains(&text), "lapin: {e}");
    let mut pika = Pika::start(
        "connect",
        &w,
        &t.vhosts[0],
        &t.users[0],
        PASSWORD,
        0,
        "lim-pika",
        0.0,
    );
    let said = pika.line(Duration::from_secs(30)).await;
    assert_eq!(said, format!("error 530 {text}"));
    let m = w.metrics().await;
    assert!(refusals(&m) - refusals(&before) >= 2.0, "{}", m.0);
    until(
        Duration::from_secs(10),
        "two 530 closes counted",
        || async {
            let m = w.metrics().await;
            (m.sum(
                "warren_amqp_closes_total",
                &[("side", "warren"), ("code", "530")],
            ) - before.sum(
                "warren_amqp_closes_total",
                &[("side", "warren"), ("code", "530")],
            ) == 2.0)
                .then_some(())
        },
    )
    .await;
    // Only the admitted connection counts.
    assert_eq!(
        connections(&w, &format!("vhost={}", t.vhosts[0])).await["total"],
        1
    );

    // A reload raises the limit: the same client gets in.
    std::fs::write(&file, limited(2)).expect("config");
    let (status, body) = w.admin_post("/api/reload").await;
    assert_eq!(status, 200, "{body}");
    let mut pika = Pika::start(
        "connect",
        &w,
        &t.vhosts[0],
        &t.users[0],
        PASSWORD,
        0,
        "lim-pika2",
        0.0,
    );
    assert_eq!(pika.line(Duration::from_secs(30)).await, "connected");

    // A wrong password: the broker's 403, counted as the broker's close.
    let mut pika = Pika::start(
        "connect",
        &w,
        &t.vhosts[1],
        &t.users[1],
        "wrong",
        0,
        "lim-wrong",
        0.0,
    );
    let said = pika.line(Duration::from_secs(30)).await;
    assert!(said.starts_with("error 403 ACCESS_REFUSED"), "{said}");
    until(
        Duration::from_secs(15),
        "a 403 close from the broker",
        || async {
            let m = w.metrics().await;
            (m.sum(
                "warren_amqp_closes_total",
                &[("side", "broker"), ("code", "403")],
            ) == 1.0)
                .then_some(())
        },
    )
    .await;

    // A client frozen longer than its heartbeat (3 s): the silence shows while
    // it lasts and counts as a gap once it ends (resumed before the broker
    // gives up on it, after two missed heartbeats).
    let mut pika = Pika::start(
        "hold",
        &w,
        &t.vhosts[1],
        &t.users[1],
        PASSWORD,
        3,
        "lim-frozen",
        120.0,
    );
    pika.expect("connected").await;
    let query = format!("user={}", t.users[1]);
    let gaps = |m: &Metrics| m.sum("warren_amqp_heartbeat_gaps_total", &[("side", "client")]);
    let gaps_before = gaps(&w.metrics().await);
    pika.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(4300)).await;
    let frozen = connections(&w, &query).await;
    let c = named(&frozen, "lim-frozen");
    assert_eq!(c["heartbeat_seconds"], 3, "{c}");
    assert!(
        c["client_silent_seconds"].as_f64().is_some_and(|s| s > 3.0),
        "{c}"
    );
    assert_eq!(c["client_heartbeat_gaps"], 0, "{c}");
    pika.signal("-CONT");
    until(
        Duration::from_secs(10),
        "a client heartbeat gap counted",
        || async { (gaps(&w.metrics().await) - gaps_before >= 1.0).then_some(()) },
    )
    .await;
    let c = connections(&w, &query).await;
    let c = named(&c, "lim-frozen");
    assert!(c["client_heartbeat_gaps"].as_u64() >= Some(1), "{c}");
    assert!(
        c["client_silent_seconds"].as_f64().is_some_and(|s| s < 3.0),
        "{c}"
    );
    assert_eq!(c["broker_heartbeat_gaps"], 0, "{c}");
    w.stop().await;
}

/// Resets a node's memory watermark when dropped, so a failing test never
/// leaves the alarm on.
struct Watermark(Node);

impl Drop for Watermark {
    fn drop(&mut self) {
        let _ = ctl(&self.0, &["set_vm_memory_high_watermark", "0.4"]);
    }
}

/// A memory alarm: the publisher's connection shows as blocked (with the
/// broker's reason) and then unblocked, its blocked time counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_blocks_publishers_then_unblocks_them() {
    let nodes = cluster_exclusive().await;
    let tag = tag("alarm");
    let w = Warren::start(&config(&nodes, &tag, "")).await;
    let mut pika = Pika::start(
        "publish",
        &w,
        "/",
        "guest",
        "guest",
        0,
        "alarm-publisher",
        25.0,
    );
    pika.expect("published 2").await;
    let c = connections(&w, "").await;
    let c = named(&c, "alarm-publisher");
    let backend = c["backend"].as_str().expect("backend").to_string();
    let node = nodes
        .iter()
        .find(|n| backend == format!("{tag}-{}", n.index))
        .expect("the backend's node")
        .clone();
    let m = w.metrics().await;
    assert_eq!(
        m.value(
            "warren_amqp_client_connections",
            &[("product", "Pika Python Client Library")]
        ),
        1.0,
        "{}",
        m.0
    );

    let watermark = Watermark(node.clone());
    ctl(&node, &["set_vm_memory_high_watermark", "absolute", "1MB"]).expect("alarm on");
    let since = until(Duration::from_secs(20), "the publisher blocked", || async {
        let page = connections(&w, "").await;
        let c = named(&page, "alarm-publisher").clone();
        (c["blocked"] == true).then_some(c)
    })
    .await;
    assert_eq!(since["blocked_reason"], "low on memory", "{since}");
    let m = w.metrics().await;
    assert_eq!(
        m.value("warren_amqp_blocked_connections", &[("backend", &backend)]),
        1.0
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    drop(watermark);
    until(
        Duration::from_secs(30),
        "the publisher unblocked",
        || async {
            let page = connections(&w, "").await;
            (named(&page, "alarm-publisher")["blocked"] == false).then_some(())
        },
    )
    .await;
    let m = w.metrics().await;
    assert_eq!(
        m.value("warren_amqp_blocked_connections", &[("backend", &backend)]),
        0.0
    );
    assert!(
        m.value(
            "warren_amqp_blocked_seconds_total",
            &[("backend", &backend)]
        ) >= 1.0,
        "{}",
        m.0
    );
    // It publishes again, and ends the normal way.
    pika.expect("closed").await;
    w.stop().await;
}
