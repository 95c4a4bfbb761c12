//! The real `warren` binary as operators run it: SIGTERM with open AMQP clients,
//! a second signal, SIGHUP, the `healthcheck` command, JSON logs and their levels,
//! and secrets that never reach a log line.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine as _;

const BIN: &str = env!("CARGO_BIN_EXE_warren");

fn healthcheck(args: &[&str]) -> Option<i32> {
    Command::new(BIN)
        .arg("healthcheck")
        .args(args)
        .output()
        .expect("healthcheck runs")
        .status
        .code()
}

fn base_yaml(nodes: &[Node], extra: &str) -> String {
    let mut y = config_yaml(nodes, &format!("log:\n  format: json\n{extra}"));
    if !y.contains("password") {
        y.push_str("health:\n  password: guest\n");
    }
    y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_amqp_clients_with_320_and_exits_0_within_the_grace() {
    let nodes = cluster().await;
    let grace = Duration::from_secs(5);
    let mut p = WarrenProcess::start_logged(&base_yaml(&nodes, "shutdown:\n  grace: 5s\n"), &[]);
    let mut conns = Vec::new();
    for i in 0..3 {
        conns.push(amqp_connect_named(&p.url(), &format!("{}-{i}", unique("term"))).await);
    }
    // Listening on every client before the signal.
    let watchers: Vec<_> = conns.iter().map(watch_close).collect();
    let sent = Instant::now();
    p.signal("TERM");
    let status = tokio::task::block_in_place(|| p.wait_exit(grace + Duration::from_secs(5)))
        .unwrap_or_else(|| panic!("warren still running: {}", p.logs()));
    let took = sent.elapsed();
    for w in watchers {
        let closed = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("the watcher ends")
            .expect("watcher")
            .expect("every client is told to close");
        assert_eq!(closed.code, Some(320), "{closed:?}");
    }
    assert_eq!(status.code(), Some(0), "{}", p.logs());
    assert!(took < grace, "exit took {took:?}, grace is {grace:?}");
    let log = p.lines();
    let closing = log
        .iter()
        .find(|l| l["message"] == "closing client connections")
        .unwrap_or_else(|| panic!("{}", p.logs()));
    assert_eq!(closing["connections"], 3);
    assert!(log.iter().any(|l| l["message"] == "warren stopped"));
    eprintln!("SIGTERM to exit with 3 AMQP clients: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let nodes = cluster().await;
    let mut p = WarrenProcess::start_logged(
        &base_yaml(
            &nodes,
            "shutdown:\n  grace: 60s\ndrain:\n  close_timeout: 60s\n",
        ),
        &[],
    );
    // A client that never answers connection.close keeps the first shutdown waiting.
    let _silent = silent_client(p.amqp).await;
    p.signal("TERM");
    p.wait_log("closing client connections", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        matches!(p.child.try_wait(), Ok(None)),
        "still waiting for the silent client"
    );
    // Stopped accepting: the listening socket is closed; the admin API still
    // answers, and says "not ready" so load balancers and Kubernetes look elsewhere.
    assert!(tokio::net::TcpStream::connect(p.amqp).await.is_err());
    assert_eq!(admin_request(p.admin, "GET", "/readyz").await.0, 503);
    assert_eq!(admin_request(p.admin, "GET", "/healthz").await.0, 200);
    let sent = Instant::now();
    p.signal("TERM");
    let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(5)))
        .unwrap_or_else(|| panic!("a second signal must exit at once: {}", p.logs()));
    assert_eq!(status.code(), Some(1));
    eprintln!("second SIGTERM to exit: {:?}", sent.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_healthcheck_follows_the_admin_api() {
    let nodes = cluster().await;
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let tag = unique("hup");
    let yaml = |backends: &[&Node]| {
        let mut y = format!(
            "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:{admin_port}\nlog:\n  format: json\nbackends:\n"
        );
        for n in backends {
            y.push_str(&format!(
                "  - name: {tag}-{}\n    address: {}\n",
                n.index, n.amqp
            ));
        }
        y
    };
    let mut p = WarrenProcess::start_logged(&yaml(&[&nodes[0]]), &[]);
    let config = p.config();
    let config_arg = config.to_str().expect("utf-8 path");
    assert_eq!(healthcheck(&["-c", config_arg]), Some(0));
    let admin = p.admin.to_string();
    assert_eq!(
        healthcheck(&["--admin", &admin, "--path", "/readyz"]),
        Some(0)
    );
    assert_eq!(
        healthcheck(&["--admin", &admin, "--path", "/nope"]),
        Some(1)
    );

    std::fs::write(&config, yaml(&[&nodes[0], &nodes[1]])).expect("rewrite");
    p.signal("HUP");
    let added = format!("/api/backends/{tag}-2");
    let start = Instant::now();
    while admin_request(p.admin, "GET", &added).await.0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "SIGHUP did not reload: {}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reloaded = p
        .lines()
        .into_iter()
        .find(|l| l["message"] == "config reloaded")
        .expect("reload logged");
    assert_eq!(reloaded["trigger"], "signal");
    p.signal("TERM");
    let status =
        tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10))).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert_eq!(healthcheck(&["-c", config_arg]), Some(1));
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Removes the test's RabbitMQ user again.
struct TempUser<'a>(&'a Node, String);

impl Drop for TempUser<'_> {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.0.name, "delete_user", &self.1])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_never_show_passwords() {
    let nodes = cluster().await;
    // A user of its own, so its password is a string found nowhere else.
    let user = unique("logtest");
    let secret = format!("Pw-{}", unique("s3cret"));
    let wrong = format!("Wrong-{}", unique("s3cret"));
    let in_bad_file = format!("Bad-{}", unique("s3cret"));
    rabbitmqctl(&nodes[0], &["add_user", &user, &secret]);
    let _cleanup = TempUser(&nodes[0], user.clone());
    rabbitmqctl(&nodes[0], &["set_user_tags", &user, "monitoring"]);
    rabbitmqctl(
        &nodes[0],
        &["set_permissions", "-p", "/", &user, ".*", ".*", ".*"],
    );

    let with_password = |pw: &str| {
        config_yaml(
            &nodes,
            &format!(
                "log:\n  format: json\nhealth:\n  username: {user}\n  password: {pw}\n  \
                 interval: 200ms\n  fast_interval: 100ms\n  fall: 1\n"
            ),
        )
    };
    // RUST_LOG=trace: the most any dependency would ever say.
    let mut p = WarrenProcess::start_logged(&with_password(&secret), &[("RUST_LOG", "trace")]);
    let config = p.config();
    // The password travels through warren in connection.start-ok.
    let url = format!("amqp://{user}:{secret}@{}/%2f", p.amqp);
    let conn = amqp_connect(&url).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.close(200, "bye".into()).await.expect("close channel");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A wrong management password: checks fail with 401, the reason is logged.
    std::fs::write(&config, with_password(&wrong)).expect("rewrite");
    p.signal("HUP");
    p.wait_log("backend down", Duration::from_secs(10)).await;
    // A broken file that holds a password: the error is logged, the file is not.
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nhealth:\n  password: {in_bad_file}\n  rise: many\nbackends: []\n"
        ),
    )
    .expect("rewrite");
    p.signal("HUP");
    p.wait_log(
        "reload failed, the running config stays",
        Duration::from_secs(10),
    )
    .await;
    let _ = conn.close(200, "bye".into()).await;
    p.signal("TERM");
    let status =
        tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(15))).expect("exits");
    assert_eq!(status.code(), Some(0));

    let text = p.logs();
    let lines = p.lines();
    assert!(lines.len() > 20, "trace logging is busy: {text}");
    for l in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(l.get(key).is_some(), "`{key}` missing: {l}");
        }
    }
    let down = lines
        .iter()
        .find(|l| l["message"] == "backend down")
        .expect("down line");
    assert!(
        down["reason"].as_str().is_some_and(|r| r.contains("401")),
        "{down}"
    );
    let failed = lines
        .iter()
        .find(|l| l["message"] == "reload failed, the running config stays")
        .expect("failure line");
    let error = failed["error"].as_str().expect("error text");
    assert!(
        error.starts_with(&format!("{}:4:", config.display())),
        "{error}"
    );
    let b64 = |pw: &str| base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
    for s in [
        secret.clone(),
        wrong.clone(),
        in_bad_file.clone(),
        b64(&secret),
        b64(&wrong),
    ] {
        assert!(!text.contains(&s), "`{s}` appears in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_comes_from_the_config_and_rust_log_overrides_it() {
    let nodes = cluster().await;
    let debug = base_yaml(&nodes, "").replace(
        "log:\n  format: json\n",
        "log:\n  format: json\n  level: debug\n",
    );
    let mut p = WarrenProcess::start_logged(&debug, &[]);
    p.wait_log("check", Duration::from_secs(10)).await;
    assert!(p.lines().iter().any(|l| l["level"] == "DEBUG"));
    p.signal("TERM");
    tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10))).expect("exits");

    // RUST_LOG=warn wins over `level: debug`: not even the start line.
    let dir = fresh_dir("warren-level");
    let port = free_port();
    let path = dir.join("warren.yaml");
    std::fs::write(
        &path,
        debug.replace(
            "admin:\n  listen: 127.0.0.1:0",
            &format!("admin:\n  listen: 127.0.0.1:{port}"),
        ),
    )
    .expect("config");
    let log = dir.join("warren.log");
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["run", "-c"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("starts"),
    );
    let admin: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let start = Instant::now();
    while healthcheck(&["--admin", &admin.to_string()]) != Some(0) {
        assert!(start.elapsed() < Duration::from_secs(10), "never healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = child.0.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("\"INFO\"") && !text.contains("\"DEBUG\""),
        "RUST_LOG=warn must silence info and debug: {text}"
    );
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

/// The access log (`log.access`): one JSON line per connection at its end with
/// the client, listener, backend, bytes each way, duration and how it ended,
/// for a real client and for one turned away; a reload switches it off. No
/// line, the reload's included, carries Rust's `Debug` text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_follow_each_connection_and_a_reload_switches_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nodes = cluster().await;
    let yaml =
        |access: bool, backends: &[Node]| base_yaml(backends, &format!("  access: {access}\n"));
    let mut p = WarrenProcess::start_logged(&yaml(true, &nodes), &[]);
    let access = |p: &WarrenProcess| -> Vec<serde_json::Value> {
        p.lines()
            .into_iter()
            .filter(|l| l["target"] == "warren::access")
            .collect()
    };

    let conn = amqp_connect(&p.url()).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.close(200, "bye".into()).await.expect("close channel");
    conn.close(200, "bye".into()).await.expect("close");
    p.wait_log("connection ended", Duration::from_secs(10))
        .await;
    let lines = access(&p);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    let client: SocketAddr = l["client"]
        .as_str()
        .expect("client")
        .parse()
        .expect("an address");
    assert!(client.ip().is_loopback(), "{l}");
    assert_eq!(l["listener"], "amqp", "{l}");
    assert!(
        nodes.iter().any(|n| l["backend"] == n.backend.as_str()),
        "{l}"
    );
    // The protocol header, start-ok, tune-ok, open, the channel and the closes.
    assert!(l["bytes_sent"].as_u64().is_some_and(|b| b > 100), "{l}");
    assert!(l["bytes_received"].as_u64().is_some_and(|b| b > 100), "{l}");
    assert!(l["duration_ms"].as_u64().is_some(), "{l}");
    // A client that closes its socket with bytes unread after close-ok (lapin
    // does) resets it: the end is then `reset`, not `closed`.
    assert!(l["end"] == "closed" || l["end"] == "reset", "{l}");

    // Not AMQP: turned away before any backend, and logged too.
    let mut raw = tokio::net::TcpStream::connect(p.amqp)
        .await
        .expect("connect");
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await;
    let start = Instant::now();
    while access(&p).len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", p.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let l = &access(&p)[1];
    assert_eq!(l["end"], "rejected", "{l}");
    assert_eq!(l["backend"], "", "{l}");
    assert_eq!(l["bytes_sent"], 0, "{l}");

    // Off by a reload, which also removes a backend.
    std::fs::write(p.config(), yaml(false, &nodes[..2])).expect("rewrite");
    p.signal("HUP");
    p.wait_log("config reloaded", Duration::from_secs(10)).await;
    let reloaded = p
        .lines()
        .into_iter()
        .find(|l| l["message"] == "config reloaded")
        .expect("reload line");
    assert_eq!(reloaded["removed"], nodes[2].backend.as_str(), "{reloaded}");
    for absent in ["added", "changed", "listen", "tls_listen", "admin_listen"] {
        assert!(reloaded.get(absent).is_none(), "{absent}: {reloaded}");
    }
    let conn = amqp_connect(&p.url()).await;
    conn.close(200, "bye".into()).await.expect("close");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(access(&p).len(), 2, "access log off: {}", p.logs());

    p.signal("TERM");
    let status =
        tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(15))).expect("exits");
    assert_eq!(status.code(), Some(0));
    fn debug_text(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => {
                s == "[]" || s == "None" || s.starts_with("Some(") || s.starts_with('[')
            }
            serde_json::Value::Object(o) => o.values().any(debug_text),
            serde_json::Value::Array(a) => a.iter().any(debug_text),
            _ => false,
        }
    }
    for l in p.lines() {
        assert!(!debug_text(&l), "Rust debug text in a log line: {l}");
    }
}
