//! The Grafana dashboard (deploy/grafana/warren.json): every panel's query, its
//! template variables filled in, runs through a real Prometheus (Debian's
//! `prometheus`, installed by scripts/test) scraping a real warren that carries
//! real AMQP traffic to the real nodes, and must return data.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const DASHBOARD: &str = include_str!("../../deploy/grafana/warren.json");

/// A process of ours, killed when the test ends however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every `expr` of the dashboard's panels, with the panel's title.
fn queries() -> Vec<(String, String)> {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let mut out = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("a title").to_string();
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("an expr").to_string();
            out.push((title.clone(), expr));
        }
    }
    out
}

/// Grafana's variables as the dashboard would fill them for this warren.
fn substitute(expr: &str, instance: &str, rate_interval: &str) -> String {
    expr.replace("$instance", &regex_escape(instance))
        .replace("$__rate_interval", rate_interval)
}

/// An instance name as a literal PromQL regular expression.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '.' | '[' | ']' | '(' | ')' | '*' | '+' | '?' | '|' | '^' | '$' | '{' | '}' => {
                vec!['\\', '\\', c]
            }
            c => vec![c],
        })
        .collect()
}

/// `GET /api/v1/query` through curl; the parsed answer.
fn prom_query(port: u16, query: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--get", "--data-urlencode"])
        .arg(format!("query={query}"))
        .arg(format!("http://127.0.0.1:{port}/api/v1/query"))
        .output()
        .expect("curl runs");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Real clients, over and over until `stop`: each connects, publishes a
/// message and reads it back, then closes; one connection stays open meanwhile.
async fn traffic(url: String, stop: CancellationToken) {
    let steady = amqp_connect(&url).await;
    let queue = unique("q-dashboard");
    while !stop.is_cancelled() {
        let conn = amqp_connect(&url).await;
        let ch = confirmed_queue(&conn, &queue, QueueDeclareOptions::default()).await;
        let body = vec![1u8; 4096];
        round_trip(&ch, &queue, &body, Duration::from_secs(30)).await;
        let _ = conn.close(200, "bye".into()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ch = steady.create_channel().await.expect("channel");
    delete_queue(&ch, &queue).await;
    let _ = steady.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_scrape() {
    let queries = queries();
    assert!(queries.len() >= 10, "{} queries", queries.len());
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(
        &nodes,
        "health:\n  password: guest\n  interval: 1s\n",
    ))
    .await;
    let stop = CancellationToken::new();
    let load = tokio::spawn(traffic(w.url(), stop.clone()));

    let dir = fresh_dir("prometheus");
    let port = free_port();
    let instance = w.admin.to_string();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: warren\n    static_configs:\n      - targets: ['{instance}']\n"
        ),
    )
    .expect("prometheus config");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (Debian package `prometheus`; scripts/test installs it)"),
    );
    let logs = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();

    // Scraped, then 15 s of samples: every rate() window below has many.
    let start = tokio::time::Instant::now();
    loop {
        let up = prom_query(port, &format!("up{{instance=\"{instance}\"}}"));
        if up["data"]["result"][0]["value"][1] == "1" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Prometheus never scraped warren: {up}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(15)).await;

    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let q = substitute(expr, &instance, "15s");
        let answer = prom_query(port, &q);
        assert_eq!(answer["status"], "success", "{title}: {q}: {answer}");
        let result = answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // A number, not only NaN (a quantile of a histogram that saw nothing).
        let numbers = result
            .iter()
            .filter_map(|r| r["value"][1].as_str())
            .filter(|v| v.parse::<f64>().is_ok_and(|v| !v.is_nan()))
            .count();
        if numbers == 0 {
            empty.push(format!("{title}: {q}: {answer}"));
        }
    }
    stop.cancel();
    load.await.expect("traffic task");
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
    w.stop().await;
}

#[test]
fn variables_are_substituted_as_grafana_does() {
    let q = substitute(
        "rate(x{instance=~\"$instance\"}[$__rate_interval])",
        "127.0.0.1:8404",
        "15s",
    );
    assert_eq!(q, "rate(x{instance=~\"127\\\\.0\\\\.0\\\\.1:8404\"}[15s])");
    for (_, expr) in queries() {
        let left = substitute(&expr, "i", "1m");
        assert!(!left.contains('$'), "a variable left: {left}");
    }
}
