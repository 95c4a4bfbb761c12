//! The Python clients of the other protocols (tests/it/stream_client.py,
//! mqtt_client.py, stomp_client.py), run in the virtual environment
//! scripts/test makes (`WARREN_CLIENTS_PYTHON`, with rstream, paho-mqtt and
//! stomp.py): one process each, its standard output read line by line.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The Python with rstream, paho-mqtt and stomp.py: `WARREN_CLIENTS_PYTHON`,
/// else the virtual environment scripts/test makes. `None` (said loudly) when
/// it is missing outside CI; under CI=true a missing client fails the test.
pub fn clients_python() -> Option<String> {
    venv_python(
        "WARREN_CLIENTS_PYTHON",
        "/var/cache/warren/venv-clients",
        "import rstream, paho.mqtt.client, stomp",
        "the stream/MQTT/STOMP clients are",
    )
}

/// The Python in `$env`, else in the virtual environment `venv` scripts/test
/// makes, when it runs `imports`. `None` (said loudly) when it does not
/// outside CI; under CI=true a missing client fails the test. `what` names
/// the clients in the message.
pub fn venv_python(env: &str, venv: &str, imports: &str, what: &str) -> Option<String> {
    let python = std::env::var(env).unwrap_or_else(|_| format!("{venv}/bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", imports])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} missing ({python}): scripts/test installs them"
    );
    eprintln!("SKIPPED: {what} missing ({python}); scripts/test installs them");
    None
}

/// One client process (`tests/it/SCRIPT ARGS...`) and the lines it printed so far.
pub struct PyClient {
    pub tag: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl PyClient {
    /// Starts `tests/it/{script}` with `args`; its lines are kept, and echoed to
    /// the test's output as `TAG: line` unless they start with one of `quiet`
    /// (the per-message lines).
    pub fn start(python: &str, script: &str, args: &[&str], tag: &str, quiet: &[&str]) -> PyClient {
        let path = format!("{}/tests/it/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(python)
            .arg(&path)
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{script} runs: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let sink = Arc::clone(&lines);
        let quiet: Vec<String> = quiet.iter().map(|q| q.to_string()).collect();
        let echo = tag.to_string();
        let reader = tokio::spawn(async move {
            while let Ok(Some(l)) = out.next_line().await {
                if !quiet.iter().any(|q| l.starts_with(q.as_str())) {
                    eprintln!("{echo}: {l}");
                }
                sink.lock().expect("lines").push(l);
            }
        });
        PyClient {
            tag: tag.to_string(),
            child,
            lines,
            reader,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// How many lines start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// Waits until `n` lines start with `prefix`.
    pub async fn wait_for(&self, prefix: &str, n: usize, within: Duration) {
        let start = tokio::time::Instant::now();
        while self.count(prefix) < n {
            assert!(
                start.elapsed() < within,
                "{}: no {n} `{prefix}` lines within {within:?}: {:?}",
                self.tag,
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to end by itself, successfully; its lines.
    pub async fn finish(mut self, within: Duration) -> Vec<String> {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not end within {within:?}", self.tag))
            .expect("wait");
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        assert!(status.success(), "{} failed: {:?}", self.tag, self.lines());
        self.lines()
    }
}

/// The numbers N of the lines `PREFIX N` (`confirm 7`, `got 7`).
pub fn numbers(lines: &[String], prefix: &str) -> BTreeSet<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .collect()
}

/// The (local, peer) addresses of the `connected LOCAL PEER` lines, in order.
pub fn connections(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut w = l.strip_prefix("connected ")?.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}
