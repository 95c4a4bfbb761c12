//! warren under test: in this process ([`Warren`]) or as its real binary
//! ([`WarrenProcess`]); its config, its admin API and the log it writes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lapin::Connection;
use warren::config::Config;

use super::{amqp_connect_named, free_port, fresh_dir, Metrics, Node};

/// A warren config for the three nodes, listeners on ephemeral ports. `extra` is
/// YAML appended at the top level (for instance `balance: least-connections`).
pub fn config_yaml(nodes: &[Node], extra: &str) -> String {
    let mut y = String::from("listen: 127.0.0.1:0\n");
    if !extra.starts_with("admin:") && !extra.contains("\nadmin:") {
        y.push_str("admin:\n  listen: 127.0.0.1:0\n");
    }
    y.push_str(extra);
    if !extra.is_empty() && !extra.ends_with('\n') {
        y.push('\n');
    }
    if !extra.contains("\nbackends:") && !extra.starts_with("backends:") {
        y.push_str("backends:\n");
        for n in nodes {
            y.push_str(&n.backend_yaml(&n.backend));
        }
    }
    y
}

/// warren's listeners besides AMQP (issue 18): stream, MQTT, STOMP and the
/// management UI (http), each on a free loopback port chosen here, so that a
/// test knows where they are (the server reports only the AMQP, TLS and admin
/// addresses).
#[derive(Clone, Debug)]
pub struct Listeners {
    /// The stream listener a client connects to first (its locator connection).
    pub stream: SocketAddr,
    /// The stream listener's port for each node, in node order (`node_ports`):
    /// the metadata warren passes on sends a client there for that node.
    pub stream_nodes: Vec<SocketAddr>,
    pub mqtt: SocketAddr,
    pub stomp: SocketAddr,
    /// The management UI and HTTP API (`protocol: http`).
    pub http: SocketAddr,
}

impl Listeners {
    /// Free ports for every listener (bound and released, like [`free_port`]).
    pub fn pick(nodes: &[Node]) -> Listeners {
        let local = |p| SocketAddr::from(([127, 0, 0, 1], p));
        Listeners {
            stream: local(free_port()),
            stream_nodes: nodes.iter().map(|_| local(free_port())).collect(),
            mqtt: local(free_port()),
            stomp: local(free_port()),
            http: local(free_port()),
        }
    }

    /// The stream listener's address for `node`.
    pub fn stream_of(&self, nodes: &[Node], node_name: &str) -> Option<SocketAddr> {
        nodes
            .iter()
            .position(|n| n.name == node_name)
            .map(|i| self.stream_nodes[i])
    }

    /// The `listeners:` section for these addresses.
    pub fn yaml(&self, nodes: &[Node]) -> String {
        let node_ports: Vec<String> = nodes
            .iter()
            .zip(&self.stream_nodes)
            .map(|(n, a)| format!("{}: {}", n.backend, a.port()))
            .collect();
        format!(
            "listeners:\n  - name: streams\n    listen: {}\n    protocol: stream\n    \
             node_ports: {{{}}}\n    advertised_host: 127.0.0.1\n  \
             - {{name: mqtt, listen: '{}', protocol: mqtt}}\n  \
             - {{name: stomp, listen: '{}', protocol: stomp}}\n  \
             - {{name: management, listen: '{}', protocol: http}}\n",
            self.stream,
            node_ports.join(", "),
            self.mqtt,
            self.stomp,
            self.http
        )
    }
}

/// [`config_yaml`] with every listener of [`Listeners`] (on ports picked here)
/// and the nodes as backends with their stream, MQTT and STOMP ports. `extra`
/// must not have `backends:` or `listeners:` of its own.
pub fn config_yaml_listeners(nodes: &[Node], extra: &str) -> (String, Listeners) {
    let listeners = Listeners::pick(nodes);
    let mut y = listeners.yaml(nodes);
    y.push_str(extra);
    if !extra.is_empty() && !extra.ends_with('\n') {
        y.push('\n');
    }
    y.push_str("backends:\n");
    for n in nodes {
        y.push_str(&n.backend_yaml_with_ports(&n.backend));
    }
    (config_yaml(nodes, &y), listeners)
}

/// A warren running in this process.
pub struct Warren {
    pub app: Arc<warren::App>,
    /// The plain AMQP listener (the TLS listener when there is no plain one).
    pub amqp: SocketAddr,
    /// The TLS listener, when the config has one.
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Warren {
    pub async fn start(yaml: &str) -> Warren {
        init_logs();
        let path = PathBuf::from("test.yaml");
        let config = Config::from_yaml(yaml, &path).expect("test config is valid");
        Warren::run(config, path).await
    }

    /// Starts from a config file, so that a reload reads that file again.
    pub async fn start_file(path: &std::path::Path) -> Warren {
        init_logs();
        let config = Config::load(path).expect("test config is valid");
        Warren::run(config, path.to_path_buf()).await
    }

    /// Binds `config` (read from `path`) and runs it in a task of its own.
    async fn run(config: Config, path: PathBuf) -> Warren {
        let server = warren::Server::bind(config, path)
            .await
            .expect("warren binds");
        let (app, admin, tls) = (server.app.clone(), server.admin_addr, server.tls_addr);
        let amqp = server.amqp_addr.or(tls).expect("warren has a listener");
        let task = tokio::spawn(server.run());
        Warren {
            app,
            amqp,
            tls,
            admin,
            task,
        }
    }

    /// `GET /metrics`, checked to be a 200.
    pub async fn metrics(&self) -> Metrics {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        Metrics(body)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }

    /// GET on warren's admin API; (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        admin_request(self.admin, "GET", path).await
    }

    pub async fn admin_post(&self, path: &str) -> (u16, String) {
        admin_request(self.admin, "POST", path).await
    }

    /// `GET /api/backends/{name}` as JSON.
    pub async fn backend(&self, name: &str) -> serde_json::Value {
        let (status, body) = self.admin_get(&format!("/api/backends/{name}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("backend JSON")
    }

    /// Waits until `backend` reports `state`, up to `within`.
    pub async fn wait_state(&self, backend: &str, state: &str, within: Duration) -> Duration {
        let start = tokio::time::Instant::now();
        loop {
            let b = self.backend(backend).await;
            if b["state"] == state {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "backend {backend} not {state} within {within:?}: {b}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `backend` holds `n` active connections, up to `within`: a
    /// connection's task ends a moment after its client saw the close (warren still
    /// closes the broker side).
    pub async fn wait_active(&self, backend: &str, n: u64, within: Duration) {
        let start = tokio::time::Instant::now();
        loop {
            let b = self.backend(backend).await;
            if b["active_connections"] == n {
                return;
            }
            assert!(
                start.elapsed() < within,
                "backend {backend}: not {n} active connections within {within:?}: {b}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.app.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

/// A minimal HTTP/1.1 request to the admin API, as curl sends it (`Host` is
/// the address connected to).
pub async fn admin_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    admin_request_with(addr, method, path, &[], "").await
}

/// [`admin_request`] with more header lines (`Name: value`) and a body; a
/// `Host` among them replaces the default one.
pub async fn admin_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin reachable");
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).await.expect("request sent");
    let mut buf = Vec::new();
    // A reset after the answer (a refused request's body left unread) keeps
    // what was read.
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The log subscriber of this binary, installed once: warren's lines (warn and
/// above unless `RUST_LOG` says otherwise) go to the test's output and into the
/// buffer that [`log_text`] reads.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_ansi(false)
            .with_writer(move || Capture(Arc::clone(&sink)))
            .try_init();
        buf
    })
    .clone()
}

fn init_logs() {
    logs();
}

/// Writes to the test's output and keeps a copy.
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        eprint!("{}", String::from_utf8_lossy(b));
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything the warrens of this process have logged so far (every test's).
pub fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().expect("log buffer")).into_owned()
}

/// warren run as its real binary, for what needs a process of its own (signals,
/// exit codes, file-descriptor limits, memory, its own log).
pub struct WarrenProcess {
    pub child: std::process::Child,
    pub amqp: SocketAddr,
    pub admin: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

impl WarrenProcess {
    /// Starts `warren run` with `yaml`, whose `listen`/`admin.listen` are filled in
    /// here (the YAML must not set them), under `ulimit -n nofile`.
    pub async fn start(yaml_rest: &str, nofile: u32) -> WarrenProcess {
        let amqp = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = fresh_dir("warren-proc");
        let config = dir.join("warren.yaml");
        std::fs::write(
            &config,
            format!("listen: {amqp}\nadmin:\n  listen: {admin}\n{yaml_rest}"),
        )
        .expect("config written");
        let script = format!(
            "ulimit -n {nofile} && exec {} run -c {}",
            env!("CARGO_BIN_EXE_warren"),
            config.display()
        );
        let child = std::process::Command::new("bash")
            .args(["-c", &script])
            .stdout(std::fs::File::create(dir.join("warren.log")).expect("log file"))
            .stderr(std::fs::File::create(dir.join("warren.err")).expect("log file"))
            .spawn()
            .expect("warren starts");
        let log = dir.join("warren.err");
        let p = WarrenProcess {
            child,
            amqp,
            admin,
            dir,
            log,
        };
        let start = tokio::time::Instant::now();
        while tokio::net::TcpStream::connect(admin).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "warren did not start: {}",
                p.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p
    }

    /// Writes `yaml` (complete, JSON logs) to a fresh directory and runs warren on
    /// it with `env` added and `RUST_LOG` removed; waits for the "warren started"
    /// line (which carries the bound ports).
    pub fn start_logged(yaml: &str, env: &[(&str, &str)]) -> WarrenProcess {
        let dir = fresh_dir("warren-proc");
        let config = dir.join("warren.yaml");
        std::fs::write(&config, yaml).expect("config written");
        let log = dir.join("warren.log");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_warren"));
        cmd.args(["run", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("warren starts");
        let mut p = WarrenProcess {
            child,
            dir,
            log,
            amqp: "127.0.0.1:0".parse().expect("addr"),
            admin: "127.0.0.1:0".parse().expect("addr"),
        };
        let start = std::time::Instant::now();
        loop {
            if let Some(l) = p.lines().iter().find(|l| l["message"] == "warren started") {
                p.amqp = l["listen"].as_str().expect("listen").parse().expect("addr");
                p.admin = l["admin"].as_str().expect("admin").parse().expect("addr");
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("warren exited at start ({status}): {}", p.logs());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no start line: {}",
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file it runs on.
    pub fn config(&self) -> PathBuf {
        self.dir.join("warren.yaml")
    }

    /// Its log (standard error) so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every log line, each of which must be a JSON object.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Waits until a log line has this `message`, up to `within`.
    pub async fn wait_log(&self, message: &str, within: Duration) {
        let start = std::time::Instant::now();
        while !self.lines().iter().any(|l| l["message"] == message) {
            assert!(
                start.elapsed() < within,
                "no `{message}` in the log: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// (user + system CPU seconds, RSS bytes) from /proc.
    pub fn cpu_and_rss(&self) -> (f64, u64) {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of stat; here indices 11 and 12.
        let cpu = (ticks(11) + ticks(12)) / 100.0;
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let rss_kb = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        (cpu, rss_kb * 1024)
    }

    /// Sends `sig` (`TERM`, `HUP`, ...) to the process; fails the test when `kill` does.
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, up to `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }
}

impl Drop for WarrenProcess {
    fn drop(&mut self) {
        // Our own child only, by its handle.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Opens `n` connections through `w` that all land on node `target` (the other
/// nodes disabled meanwhile, enabled again afterwards).
pub async fn connections_on(
    w: &Warren,
    nodes: &[Node],
    target: usize,
    n: usize,
    prefix: &str,
) -> Vec<Connection> {
    for (i, node) in nodes.iter().enumerate() {
        if i != target {
            w.admin_post(&format!("/api/backends/{}/disable", node.backend))
                .await;
        }
    }
    let mut conns = Vec::new();
    for i in 0..n {
        conns.push(amqp_connect_named(&w.url(), &format!("{prefix}-{i}")).await);
    }
    for (i, node) in nodes.iter().enumerate() {
        if i != target {
            w.admin_post(&format!("/api/backends/{}/enable", node.backend))
                .await;
        }
    }
    conns
}
