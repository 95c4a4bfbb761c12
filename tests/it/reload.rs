//! Hot reload end to end, against the real nodes: backends added and removed with
//! an open AMQP connection untouched, an invalid file that changes nothing, a
//! changed listen address, and the file watch. The reload series are global to
//! the process: every test runs alone (`cluster_exclusive`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use lapin::options::*;
use lapin::BasicProperties;
use tokio::io::AsyncReadExt;
use warren::telemetry::metrics as m;

/// Replaces the file the way editors and config managers do (write, rename).
fn write_config(path: &Path, yaml: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// Writes `yaml` to a config file of its own and starts warren from that file.
async fn start_from_file(yaml: &str) -> (Warren, PathBuf) {
    let path = fresh_dir("warren-reload").join("warren.yaml");
    write_config(&path, yaml);
    (Warren::start_file(&path).await, path)
}

/// The reloads counted with this `result` and `trigger`.
fn reloads(x: &Metrics, result: &str, trigger: &str) -> f64 {
    x.value(
        m::CONFIG_RELOADS,
        &[("result", result), ("trigger", trigger)],
    )
}

async fn reload(w: &Warren) -> (u16, serde_json::Value) {
    let (status, body) = w.admin_post("/api/reload").await;
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON answer: {body}"));
    (status, v)
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_backends_with_an_open_connection_untouched() {
    let nodes = cluster_exclusive().await;
    let tag = unique("ra");
    let (a, b, c) = (format!("{tag}-a"), format!("{tag}-b"), format!("{tag}-c"));
    let head = "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n\
                health:\n  password: guest\n  slowstart: 0s\n\
                drain:\n  window: 100ms\n  grace: 5s\n  close_timeout: 2s\nbackends:\n";
    let (w, path) = start_from_file(&format!(
        "{head}{}{}",
        nodes[0].backend_yaml(&a),
        nodes[1].backend_yaml(&b)
    ))
    .await;
    // Round robin from the first backend: `keep` lands on a, `gone` on b.
    let keep = amqp_connect_named(&w.url(), &format!("{tag}-keep")).await;
    let gone = amqp_connect_named(&w.url(), &format!("{tag}-gone")).await;
    assert_eq!(w.backend(&a).await["active_connections"], 1);
    assert_eq!(w.backend(&b).await["active_connections"], 1);
    let a_before = w.app.balancer.get(&a).expect("a exists");

    // Messages keep flowing on `keep` while the reload happens.
    let queue = unique("q-reload");
    let ch = confirmed_queue(&keep, &queue, QueueDeclareOptions::default()).await;
    let confirmed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (ch, queue) = (ch.clone(), queue.clone());
        let (confirmed, stop) = (confirmed.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    b"tick",
                    BasicProperties::default(),
                )
                .await
                .expect("publish across the reload")
                .await
                .expect("confirm across the reload");
                confirmed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Listening before the reload: the close can come before the answer does.
    let gone_closed = watch_close(&gone);
    write_config(
        &path,
        &format!(
            "{head}{}{}",
            nodes[0].backend_yaml(&a),
            nodes[2].backend_yaml(&c)
        ),
    );
    let (status, summary) = reload(&w).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(names(&summary["added"]), [c.as_str()]);
    assert_eq!(names(&summary["removed"]), [b.as_str()]);
    assert_eq!(names(&summary["unchanged"]), [a.as_str()]);
    let at_reload = confirmed.load(Ordering::Relaxed);

    // The removed backend's client is closed the AMQP way.
    let closed = tokio::time::timeout(Duration::from_secs(10), gone_closed)
        .await
        .expect("closed within 10 s")
        .expect("watcher")
        .expect("the removed backend's client is told to close");
    assert_eq!(closed.code, Some(320), "{closed:?}");

    // The unchanged backend is the same object, with its connection and counters.
    let a_after = w.app.balancer.get(&a).expect("a still exists");
    assert!(Arc::ptr_eq(&a_before, &a_after), "a was replaced");
    let av = w.backend(&a).await;
    assert_eq!(av["active_connections"], 1, "{av}");
    assert_eq!(av["total_connections"], 1, "{av}");
    assert!(keep.status().connected());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher ran without error");
    assert!(
        confirmed.load(Ordering::Relaxed) >= at_reload + 5,
        "publishing went on after the reload ({at_reload} then {})",
        confirmed.load(Ordering::Relaxed)
    );

    // The new set: a and c, and c takes new connections.
    let (_, list) = w.admin_get("/api/backends").await;
    let list: serde_json::Value = serde_json::from_str(&list).expect("JSON");
    let listed: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert_eq!(listed, [a.as_str(), c.as_str()]);
    let n1 = amqp_connect(&w.url()).await;
    let n2 = amqp_connect(&w.url()).await;
    assert_eq!(w.backend(&c).await["active_connections"], 1);
    let x = w.metrics().await;
    assert_eq!(
        x.value(m::BACKEND_DRAINS, &[("backend", &b), ("trigger", "reload")]),
        1.0
    );
    assert_eq!(x.value(m::BACKEND_GRACEFUL_CLOSES, &[("backend", &b)]), 1.0);
    delete_queue(&ch, &queue).await;
    for conn in [keep, n1, n2] {
        let _ = conn.close(200, "bye".into()).await;
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_the_running_config_and_is_counted() {
    let nodes = cluster_exclusive().await;
    let tag = unique("ri");
    let a = format!("{tag}-a");
    let good = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nbackends:\n{}",
        nodes[0].backend_yaml(&a)
    );
    let (w, path) = start_from_file(&good).await;
    let failures0 = reloads(&w.metrics().await, "failure", "api");
    let conn = amqp_connect(&w.url()).await;

    write_config(
        &path,
        &format!("listen: 127.0.0.1:0\nbackends:\n  - name: {tag}-x\n    address: no-port-here\n"),
    );
    let (status, answer) = reload(&w).await;
    assert_eq!(status, 400, "{answer}");
    let error = answer["error"].as_str().expect("error text");
    assert!(
        error.contains(&path.display().to_string()),
        "names the file: {error}"
    );
    assert!(
        error.contains("backends[0].address"),
        "names the key: {error}"
    );

    let x = w.metrics().await;
    assert_eq!(reloads(&x, "failure", "api") - failures0, 1.0);
    assert_eq!(x.get(m::CONFIG_LAST_RELOAD_OK, &[]), Some(0.0));
    // Still serving with the old backends, old connection alive.
    assert_eq!(w.backend(&a).await["state"], "up");
    assert_eq!(w.admin_get(&format!("/api/backends/{tag}-x")).await.0, 404);
    let second = amqp_connect(&w.url()).await;
    assert!(conn.status().connected());

    // A valid file again: applied, and other settings change live (the cap).
    write_config(
        &path,
        &good.replace("backends:", "max_connections: 2\nbackends:"),
    );
    let (status, answer) = reload(&w).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(names(&answer["unchanged"]), [a.as_str()]);
    assert_eq!(
        w.metrics().await.get(m::CONFIG_LAST_RELOAD_OK, &[]),
        Some(1.0)
    );
    let mut third = tokio::net::TcpStream::connect(w.amqp)
        .await
        .expect("TCP connect");
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("refused at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "the new max_connections (2) applies");
    for c in [conn, second] {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_listen_rebinds_without_dropping_connections() {
    let nodes = cluster_exclusive().await;
    let tag = unique("rl");
    let (p1, p2, admin1, admin2) = (free_port(), free_port(), free_port(), free_port());
    let yaml = |amqp: u16, admin: u16| {
        format!(
            "listen: 127.0.0.1:{amqp}\nadmin:\n  listen: 127.0.0.1:{admin}\nbackends:\n{}",
            nodes[0].backend_yaml(&format!("{tag}-a"))
        )
    };
    let (w, path) = start_from_file(&yaml(p1, admin1)).await;
    let old_url = format!("amqp://guest:guest@127.0.0.1:{p1}/%2f");
    let keep = amqp_connect(&old_url).await;
    let queue = unique("q-rebind");
    let ch = confirmed_queue(&keep, &queue, QueueDeclareOptions::default()).await;
    let got = round_trip(&ch, &queue, b"before", Duration::from_secs(10)).await;
    assert_eq!(got, b"before");

    write_config(&path, &yaml(p2, admin2));
    let (status, summary) = reload(&w).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["listen"], format!("127.0.0.1:{p2}"));
    assert_eq!(summary["admin_listen"], format!("127.0.0.1:{admin2}"));

    // The old addresses are closed (by their accept tasks, a moment after the
    // reload answered), the new ones serve.
    for old in [p1, admin1] {
        let start = tokio::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", old))
            .await
            .is_ok()
        {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "old address 127.0.0.1:{old} still accepts"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let admin_now = format!("127.0.0.1:{admin2}").parse().expect("addr");
    assert_eq!(admin_request(admin_now, "GET", "/healthz").await.0, 200);
    let fresh = amqp_connect(&format!("amqp://guest:guest@127.0.0.1:{p2}/%2f")).await;
    assert_eq!(
        w.app.proxy.amqp_listener.local_addr(),
        Some(format!("127.0.0.1:{p2}").parse().expect("addr"))
    );
    // The connection made on the old address still carries messages.
    let got = round_trip(&ch, &queue, b"after", Duration::from_secs(10)).await;
    assert_eq!(got, b"after");
    delete_queue(&ch, &queue).await;
    for c in [keep, fresh] {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_file_reloads_on_change_and_reports_a_bad_file_once() {
    let nodes = cluster_exclusive().await;
    let tag = unique("rw");
    let head = "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n\
                reload:\n  watch: true\n  watch_interval: 100ms\nbackends:\n";
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    let (w, path) = start_from_file(&format!("{head}{}", nodes[0].backend_yaml(&a))).await;
    let before = w.metrics().await;
    let ok0 = reloads(&before, "success", "watch");
    let failed0 = reloads(&before, "failure", "watch");
    // Let the watcher take its first look before the file changes.
    tokio::time::sleep(Duration::from_millis(300)).await;

    write_config(
        &path,
        &format!(
            "{head}{}{}",
            nodes[0].backend_yaml(&a),
            nodes[1].backend_yaml(&b)
        ),
    );
    let start = tokio::time::Instant::now();
    while w.admin_get(&format!("/api/backends/{b}")).await.0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the watcher did not add {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let x = w.metrics().await;
    assert_eq!(reloads(&x, "success", "watch") - ok0, 1.0);

    write_config(&path, "listen: [this is not an address\n");
    // Ten watch intervals: one failure, not ten.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let x = w.metrics().await;
    assert_eq!(reloads(&x, "failure", "watch") - failed0, 1.0, "{}", x.0);
    assert_eq!(w.backend(&b).await["state"], "up");
    let conn = amqp_connect(&w.url()).await;
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}
