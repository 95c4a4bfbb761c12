//! `warren bootstrap` end to end: the compiled binary against three real RabbitMQ
//! nodes that start standalone.
//!
//! These tests wipe, reset and re-cluster their nodes, so they never run on the
//! default set (n1..n3) that the other tests share: they are `#[ignore]`d and
//! `scripts/test` runs them with `--ignored` on a set of their own (b1..b3, see
//! docs/bootstrap.md). Each test first resets the three nodes to standalone,
//! empty nodes itself. The tests without nodes (config errors, RabbitMQ 4.x and
//! 3.13 answers from a fake management API) run everywhere.
//!
//! The nodes' RabbitMQ version is given by `WARREN_RABBITMQ` (`3.10` when unset,
//! `4.0`, `4.3`), and the CLI of that version by `WARREN_RABBITMQCTL` (a command
//! split on whitespace, `rabbitmqctl` when unset; for nodes run from a chroot
//! tree, a wrapper script); each test asserts that version's outcome.

// The helpers of tests/it (this binary uses a few of them).
#[allow(dead_code, unused_imports)]
#[path = "it/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::bootstrap::cluster::ClusterStatus;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// What one run of the binary printed.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Report lines with this label (`change`, `error`, ...).
    fn lines(&self, label: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(label))
            .collect()
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `warren bootstrap -c FILE ARGS...`.
fn bootstrap(config: &PathBuf, args: &[&str]) -> Ran {
    let out = Command::new(WARREN)
        .arg("bootstrap")
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("the warren binary runs");
    let ran = Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!("$ warren bootstrap {args:?}\n{ran}");
    ran
}

/// The node tests reset all three nodes, so they run one at a time.
async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// The nodes of this test binary; refuses the shared default set.
fn own_nodes() -> Vec<Node> {
    let prefix = std::env::var("WARREN_NODE_PREFIX").unwrap_or_default();
    assert!(
        !prefix.is_empty() && prefix != "n" && std::env::var("WARREN_CLUSTER_DIR").is_ok(),
        "tests/bootstrap.rs wipes, resets and re-clusters its nodes, so it refuses the shared \
         default set n1..n3: run it with `scripts/test` (which gives it b1..b3), or export \
         WARREN_CLUSTER_DIR, WARREN_NODE_PREFIX, WARREN_AMQP_BASE, WARREN_MGMT_BASE and \
         WARREN_DIST_BASE for a node set of your own"
    );
    nodes()
}

/// `scripts/local-cluster ARGS` with this process's environment plus `env`.
fn script(args: &[&str], env: &[(&str, &str)]) {
    if let Err(e) = common::script("local-cluster", args, env) {
        panic!("scripts/local-cluster {args:?} {env:?} failed: {e}");
    }
}

/// The node's own `cluster_status`. A read, so retried a few times: on this
/// busy machine a CLI call occasionally fails on its own.
fn status(node: &Node) -> ClusterStatus {
    let mut out = ctl(node, &["cluster_status", "--formatter", "json"]);
    for _ in 0..4 {
        let Err(e) = &out else { break };
        eprintln!("cluster_status on {} failed, retrying: {e}", node.name);
        std::thread::sleep(Duration::from_secs(2));
        out = ctl(node, &["cluster_status", "--formatter", "json"]);
    }
    let out = out.unwrap_or_else(|e| panic!("cluster_status on {}: {e}", node.name));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("cluster_status JSON");
    ClusterStatus::from_json(&v).expect("cluster_status lists")
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Runs one rabbitmqctl command on every node at once; true when all succeeded.
fn on_all(nodes: &[Node], args: &'static [&'static str]) -> bool {
    let runs: Vec<_> = nodes
        .iter()
        .cloned()
        .map(|n| std::thread::spawn(move || ctl(&n, args).is_ok()))
        .collect();
    runs.into_iter().all(|r| r.join().unwrap_or(false))
}

/// Resets the three nodes to standalone, empty nodes: `force_reset` on all of
/// them at once when they all answer (about 10 s), else wipe and start them with
/// the harness script (about 30 s).
async fn standalone_nodes() -> Vec<Node> {
    let nodes = own_nodes();
    let fast = nodes.iter().all(|n| ctl(n, &["ping"]).is_ok())
        && if rabbitmq_4x() {
            // Khepri has no force_reset: `reset` one node at a time, the last one
            // alone (about 25 s on 4.3).
            nodes.iter().rev().all(|n| {
                ctl(n, &["stop_app"]).is_ok()
                    && ctl(n, &["reset"]).is_ok()
                    && ctl(n, &["start_app"]).is_ok()
            })
        } else {
            on_all(&nodes, &["stop_app"])
                && on_all(&nodes, &["force_reset"])
                && on_all(&nodes, &["start_app"])
        };
    if !fast {
        script(&["wipe"], &[]);
        script(&["start"], &[]);
    }
    let nodes = wait_nodes_up().await;
    for n in &nodes {
        assert_eq!(
            status(n).members(),
            set(&[&n.name]),
            "{} is not standalone after the reset",
            n.name
        );
    }
    nodes
}

const HA_POLICY: &str = "  policies:
    - name: ha-allqueue
      vhost: /
      pattern: \"^\"
      apply_to: queues
      priority: 0
      definition: {ha-mode: all, ha-sync-mode: automatic}
";

/// A config for the three nodes (the third a RAM node) with the mirroring
/// policy; `cluster_extra` goes into the `cluster:` section.
fn config_file(nodes: &[Node], cluster_extra: &str) -> TempFile {
    config_file_typed(nodes, &["disc", "disc", "ram"], cluster_extra)
}

/// The same with the node types given, one per node.
fn config_file_typed(nodes: &[Node], types: &[&str], cluster_extra: &str) -> TempFile {
    let mut y = config_yaml(nodes, "");
    y.push_str("cluster:\n");
    y.push_str(cluster_extra);
    y.push_str("  nodes:\n");
    for (n, t) in nodes.iter().zip(types) {
        y.push_str(&format!(
            "    - {{backend: {}, node: {}, type: {t}}}\n",
            n.backend, n.name
        ));
    }
    y.push_str(HA_POLICY);
    write_temp("yaml", &y)
}

/// A file in the temp directory, deleted when dropped.
struct TempFile(PathBuf);

impl std::ops::Deref for TempFile {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempFile {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_temp(ext: &str, text: &str) -> TempFile {
    let p = std::env::temp_dir().join(format!("{}.{ext}", unique("warren-bootstrap")));
    std::fs::write(&p, text).expect("temp file written");
    TempFile(p)
}

/// `GET /api/policies/%2F/ha-allqueue`: the policy, or None on 404.
async fn ha_policy(node: &Node) -> Option<serde_json::Value> {
    mgmt_get(node, "/api/policies/%2F/ha-allqueue").await.ok()
}

async fn mgmt(node: &Node, method: hyper::Method, path: &str) -> u16 {
    let ep = warren::mgmt::Target::new(&node.mgmt_url(), &Default::default()).expect("endpoint");
    warren::mgmt::request(&ep, &guest(), method, path, None, Duration::from_secs(10))
        .await
        .expect("management API answers")
        .status
        .as_u16()
}

/// Nothing changed on standalone nodes: each still alone, no policy.
async fn assert_untouched(nodes: &[Node]) {
    for n in nodes {
        assert_eq!(status(n).members(), set(&[&n.name]), "{} changed", n.name);
        assert!(ha_policy(n).await.is_none(), "{} has the policy", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "resets its nodes: run by scripts/test on the b-node set"]
async fn forms_the_cluster_mirrors_queues_and_a_second_run_changes_nothing() {
    if only_3x("forms_the_cluster_mirrors_queues_and_a_second_run_changes_nothing") {
        return;
    }
    let _g = exclusive().await;
    let nodes = standalone_nodes().await;
    let (b1, b2, b3) = (&nodes[0].name, &nodes[1].name, &nodes[2].name);
    let cfg = config_file(
        &nodes,
        "  erlang_cookie_file: /var/lib/rabbitmq/.erlang.cookie\n",
    );

    // --check on standalone nodes: the differences, exit 1.
    let r = bootstrap(&cfg, &["--check"]);
    assert_eq!(r.code, 1, "{r}");
    let differs = r.lines("differs").join("\n");
    assert!(
        differs.contains(&format!("{b2}: not in the cluster of {b1}")),
        "{r}"
    );
    assert!(
        differs.contains(&format!("{b3}: not in the cluster of {b1}")),
        "{r}"
    );
    assert!(
        differs.contains("policy ha-allqueue (vhost /): absent"),
        "{r}"
    );
    assert!(r.lines("change").is_empty(), "{r}");

    // --dry-run: the plan, nothing changed.
    let r = bootstrap(&cfg, &["--dry-run"]);
    assert_eq!(r.code, 0, "{r}");
    let plan = r.lines("plan").join("\n");
    assert!(plan.contains(&format!("join_cluster {b1}")), "{r}");
    assert!(plan.contains(&format!("join_cluster --ram {b1}")), "{r}");
    assert!(plan.contains("PUT /api/policies/%2F/ha-allqueue"), "{r}");
    assert!(r.lines("change").is_empty(), "{r}");
    assert!(r.stdout.contains("nothing was changed"), "{r}");
    assert_untouched(&nodes).await;

    // The real run.
    let r = bootstrap(&cfg, &[]);
    assert_eq!(r.code, 0, "{r}");
    let changes = r.lines("change").join("\n");
    for c in [
        format!("{b2}: stop_app"),
        format!("{b2}: join_cluster {b1}"),
        format!("{b2}: start_app"),
        format!("{b3}: join_cluster --ram {b1}"),
        format!("{b3}: start_app"),
        "policy ha-allqueue (vhost /): created".to_string(),
    ] {
        assert!(changes.contains(&c), "missing `{c}`: {r}");
    }
    assert!(r.stdout.contains("3 change(s) made"), "{r}");

    // cluster_status, seen from the seed and from the RAM node.
    for n in [&nodes[0], &nodes[2]] {
        let s = status(n);
        assert_eq!(s.running, set(&[b1, b2, b3]), "from {}", n.name);
        assert_eq!(s.disc, set(&[b1, b2]), "from {}", n.name);
        assert_eq!(s.ram, set(&[b3]), "from {}", n.name);
    }
    let p = ha_policy(&nodes[1])
        .await
        .expect("policy visible on every node");
    assert_eq!(
        p["definition"],
        serde_json::json!({"ha-mode": "all", "ha-sync-mode": "automatic"})
    );
    assert_eq!(p["apply-to"], "queues");

    // A queue declared afterwards, by a real client, is mirrored to the two others.
    let queue = unique("q-mirrored");
    let conn = amqp_connect(&nodes[0].url()).await;
    let ch = conn.create_channel().await.expect("channel");
    declare_queue(&ch, &queue, durable()).await;
    let path = format!("/api/queues/%2F/{queue}");
    let mirrors = set(&[b2, b3]);
    let mut q = serde_json::Value::Null;
    // The management API's queue stats refresh every few seconds.
    for _ in 0..60 {
        q = mgmt_get(&nodes[0], &path).await.expect("GET the queue");
        let of = |key: &str| -> BTreeSet<String> {
            q[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        // 3.10's management API names the mirrors' nodes `slave_nodes` and
        // `synchronised_slave_nodes`; the pids are in `rabbitmqctl list_queues`.
        if q["policy"] == "ha-allqueue"
            && of("slave_nodes") == mirrors
            && of("synchronised_slave_nodes") == mirrors
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(q["policy"], "ha-allqueue", "{q}");
    assert_eq!(q["node"], b1.as_str(), "{q}");
    let listed = ctl(
        &nodes[0],
        &[
            "list_queues",
            "name",
            "slave_pids",
            "synchronised_slave_pids",
            "--formatter",
            "json",
        ],
    )
    .expect("list_queues");
    let listed: serde_json::Value = serde_json::from_str(listed.trim()).expect("JSON");
    let row = listed
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == queue.as_str()))
        .unwrap_or_else(|| panic!("{queue} not listed: {listed}"))
        .clone();
    for key in ["slave_pids", "synchronised_slave_pids"] {
        let pids = row[key].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(pids, 2, "{key} of {queue}: {row} (management API: {q})");
    }
    let _ = conn.close(200, "bye".into()).await;

    // A second run changes nothing, and says so.
    let r = bootstrap(&cfg, &[]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.lines("change").is_empty(), "{r}");
    assert!(r.lines("plan").is_empty(), "{r}");
    assert!(r.stdout.contains("no change"), "{r}");
    assert!(
        r.stdout.contains(&format!(
            "ok       {b3}: already in the cluster of {b1} as a ram node"
        )),
        "{r}"
    );
    assert!(
        r.stdout
            .contains("ok       policy ha-allqueue (vhost /): already set"),
        "{r}"
    );

    // --check passes on the matching cluster...
    let r = bootstrap(&cfg, &["--check"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("check: the cluster matches"), "{r}");

    // ...and fails, naming it, when the policy is gone; a run puts it back.
    policy_drift_is_found_and_fixed(&cfg, &nodes[0], "ha-allqueue").await;
    assert!(ha_policy(&nodes[0]).await.is_some());
}

/// Deletes policy `name` (vhost /) behind bootstrap's back: `--check` exits 1
/// naming it, and a run puts it back with one change.
async fn policy_drift_is_found_and_fixed(cfg: &PathBuf, node: &Node, name: &str) {
    let path = format!("/api/policies/%2F/{name}");
    assert_eq!(mgmt(node, hyper::Method::DELETE, &path).await, 204);
    let r = bootstrap(cfg, &["--check"]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(
        r.lines("differs"),
        vec![format!("differs  policy {name} (vhost /): absent")],
        "{r}"
    );
    let r = bootstrap(cfg, &[]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.lines("change").len(), 1, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "resets its nodes: run by scripts/test on the b-node set"]
async fn a_node_that_is_down_stops_bootstrap_before_anything_changes() {
    if only_3x("a_node_that_is_down_stops_bootstrap_before_anything_changes") {
        return;
    }
    let _g = exclusive().await;
    let nodes = standalone_nodes().await;
    let cfg = config_file(&nodes, "");
    let down = &nodes[1];
    ctl(down, &["stop"]).expect("stop b2's VM");

    let r = bootstrap(&cfg, &[]);
    assert_eq!(r.code, 69, "{r}");
    assert!(
        r.stderr
            .contains(&format!("{} is not reachable", down.name)),
        "{r}"
    );
    assert!(r.stderr.contains("nothing was changed"), "{r}");
    let errors = r.lines("error").join("\n");
    assert!(
        errors.contains(&format!("{}: not reachable: management API", down.name)),
        "{r}"
    );
    assert!(
        errors.contains(&format!("the Erlang VM of {} is not running", down.name)),
        "{r}"
    );
    assert!(r.lines("change").is_empty(), "{r}");
    // --check says the same.
    assert_eq!(bootstrap(&cfg, &["--check"]).code, 69);

    // The others run on, untouched.
    for n in [&nodes[0], &nodes[2]] {
        assert_eq!(status(n).running, set(&[&n.name]), "{}", n.name);
        assert_eq!(
            mgmt(n, hyper::Method::GET, "/api/overview").await,
            200,
            "{}",
            n.name
        );
    }
    assert_untouched(&[nodes[0].clone(), nodes[2].clone()]).await;
    script(&["start"], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "resets its nodes: run by scripts/test on the b-node set"]
async fn a_node_with_another_cookie_gives_the_cookie_error() {
    if only_3x("a_node_with_another_cookie_gives_the_cookie_error") {
        return;
    }
    let _g = exclusive().await;
    let nodes = standalone_nodes().await;

    // A cookie file that no node uses.
    let wrong = write_temp("cookie", "NOTTHECOOKIEOFTHESENODES\n");
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o400))
        .expect("chmod");
    let cfg = config_file(
        &nodes,
        &format!("  erlang_cookie_file: {}\n", wrong.display()),
    );
    let r = bootstrap(&cfg, &[]);
    assert_eq!(r.code, 77, "{r}");
    assert!(
        r.stdout.contains(&format!(
            "runs with another Erlang cookie than {}",
            wrong.display()
        )),
        "{r}"
    );
    assert!(r.lines("change").is_empty(), "{r}");

    // b3 restarted with another cookie: rabbitmqctl cannot talk to it.
    let odd = &nodes[2];
    ctl(odd, &["stop"]).expect("stop b3's VM");
    let other = [("WARREN_NODES", "3"), ("WARREN_NODE_COOKIE", "othercookie")];
    script(&["start"], &other);
    let cfg = config_file(&nodes, "");
    let r = bootstrap(&cfg, &[]);
    assert_eq!(r.code, 77, "{r}");
    let errors = r.lines("error").join("\n");
    assert!(
        errors.contains(&format!("{}: Erlang cookie mismatch", odd.name)),
        "{r}"
    );
    assert!(
        errors.contains("the node is up (its management API answers)"),
        "{r}"
    );
    assert!(r.stderr.contains(&odd.name), "{r}");
    assert!(
        r.stderr
            .contains(".erlang.cookie (owned by the rabbitmq user, mode 400"),
        "{r}"
    );
    assert!(r.lines("change").is_empty(), "{r}");
    assert_untouched(&nodes[..2]).await;

    script(&["down"], &other);
    script(&["start"], &[("WARREN_NODES", "3")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "resets its nodes: run by scripts/test on the b-node set"]
async fn a_node_in_another_cluster_is_refused_unless_force_reset() {
    if only_3x("a_node_in_another_cluster_is_refused_unless_force_reset") {
        return;
    }
    let _g = exclusive().await;
    let nodes = standalone_nodes().await;
    let (b1, b2, b3) = (&nodes[0].name, &nodes[1].name, &nodes[2].name);
    // b2 and b3 form a cluster of their own.
    ctl(&nodes[2], &["stop_app"]).expect("stop_app");
    ctl(&nodes[2], &["join_cluster", b2]).expect("join b2");
    ctl(&nodes[2], &["start_app"]).expect("start_app");
    let cfg = config_file(&nodes, "");

    let r = bootstrap(&cfg, &[]);
    assert_eq!(r.code, 65, "{r}");
    let errors = r.lines("error").join("\n");
    assert!(
        errors.contains(&format!("{b2}: in another cluster (with [{b3}])")),
        "{r}"
    );
    assert!(errors.contains("--force-reset"), "{r}");
    assert!(r.lines("change").is_empty(), "{r}");
    assert_eq!(status(&nodes[1]).members(), set(&[b2, b3]));
    assert_eq!(status(&nodes[0]).members(), set(&[b1]));

    // --check lists it as a difference.
    let r = bootstrap(&cfg, &["--check"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.lines("differs")
            .join("\n")
            .contains(&format!("{b2}: in another cluster")),
        "{r}"
    );

    // --force-reset warns, resets, joins.
    let r = bootstrap(&cfg, &["--force-reset"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("deletes ALL data"), "{r}");
    let changes = r.lines("change").join("\n");
    assert!(changes.contains(&format!("{b2}: reset")), "{r}");
    assert!(changes.contains(&format!("{b2}: join_cluster {b1}")), "{r}");
    assert!(
        changes.contains(&format!("{b3}: join_cluster --ram {b1}")),
        "{r}"
    );
    let s = status(&nodes[0]);
    assert_eq!(s.running, set(&[b1, b2, b3]));
    assert_eq!(s.ram, set(&[b3]));

    // A config that wants b3 as a disc node changes its type.
    let all_disc = config_file_typed(&nodes, &["disc", "disc", "disc"], "");
    let r = bootstrap(&all_disc, &[]);
    assert_eq!(r.code, 0, "{r}");
    let changes = r.lines("change").join("\n");
    assert!(
        changes.contains(&format!("{b3}: change_cluster_node_type disc")),
        "{r}"
    );
    assert_eq!(status(&nodes[0]).disc, set(&[b1, b2, b3]));

    // A config without b3: the seed is clustered with a node it does not list.
    let two = config_file(&nodes[..2], "");
    let r = bootstrap(&two, &[]);
    assert_eq!(r.code, 65, "{r}");
    assert!(
        r.lines("error").join("\n").contains(&format!(
            "{b1}: the seed is clustered with nodes the config does not list: [{b3}]"
        )),
        "{r}"
    );
    assert!(r.lines("change").is_empty(), "{r}");
    // --force-reset resets the seed; b2, then left in a cluster with b3 only, is
    // reset and joins the seed.
    let r = bootstrap(&two, &["--force-reset"]);
    assert_eq!(r.code, 0, "{r}");
    let changes = r.lines("change").join("\n");
    for c in [
        format!("{b1}: reset"),
        format!("{b2}: reset"),
        format!("{b2}: join_cluster {b1}"),
    ] {
        assert!(changes.contains(&c), "missing `{c}`: {r}");
    }
    let s = status(&nodes[0]);
    assert_eq!(s.running, set(&[b1, b2]));
    assert_eq!(s.disc, set(&[b1, b2]));
    assert_eq!(status(&nodes[2]).members(), set(&[b3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "resets its nodes: run by scripts/test on the b-node set"]
async fn a_failed_join_starts_the_app_again() {
    if only_3x("a_failed_join_starts_the_app_again") {
        return;
    }
    let _g = exclusive().await;
    let nodes = standalone_nodes().await;
    // cluster.rabbitmqctl pointing at a wrapper whose join_cluster fails; every
    // other command reaches the real node.
    let wrapper = write_temp(
        "sh",
        "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = join_cluster ]; then\n    \
         echo 'Error: simulated join failure' >&2; exit 69\n  fi\ndone\nexec rabbitmqctl \"$@\"\n",
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let cfg = config_file(&nodes, &format!("  rabbitmqctl: {}\n", wrapper.display()));
    let b2 = &nodes[1].name;

    let r = bootstrap(&cfg, &[]);
    assert_eq!(r.code, 70, "{r}");
    assert_eq!(
        r.lines("change"),
        vec![
            format!("change   {b2}: stop_app").as_str(),
            format!("change   {b2}: start_app").as_str()
        ],
        "{r}"
    );
    assert!(
        r.lines("error")
            .join("\n")
            .contains("simulated join failure; starting the app again"),
        "{r}"
    );
    assert!(r.stderr.contains("the node's app was started again"), "{r}");
    // b2's app runs (and serves its management API); b3 was never touched.
    assert_eq!(status(&nodes[1]).running, set(&[b2]));
    assert_eq!(
        mgmt(&nodes[1], hyper::Method::GET, "/api/overview").await,
        200
    );
    assert_untouched(&nodes).await;
}

// ---- without nodes ----------------------------------------------------------

#[test]
fn config_errors_exit_64() {
    let base = "listen: 127.0.0.1:0\nbackends:\n  - {name: a, address: '127.0.0.1:1', management: 'http://127.0.0.1:1'}\n  - {name: b, address: '127.0.0.1:2'}\n";
    for (extra, want) in [
        ("", "no `cluster:` section"),
        (
            "cluster: {nodes: [{backend: a, node: r@h, type: ram}]}\n",
            "type `disc`",
        ),
        (
            "cluster: {nodes: [{backend: b, node: r@h}]}\n",
            "has no `management` URL",
        ),
        (
            "cluster: {erlang_cookie_file: /nonexistent/cookie, nodes: [{backend: a, node: r@h}]}\n",
            "cluster.erlang_cookie_file",
        ),
    ] {
        let cfg = write_temp("yaml", &format!("{base}{extra}"));
        let r = bootstrap(&cfg, &[]);
        assert_eq!(r.code, 64, "{extra}: {r}");
        assert!(r.stderr.contains(want), "{extra}: {r}");
    }
}

/// A management API that answers `/api/overview` as `node` on `version`,
/// accepts policy PUTs (201) but never has the policy (404): an edge case a real
/// node does not produce.
async fn fake_management(node: &str, version: &str) -> std::net::SocketAddr {
    let overview = serde_json::json!({
        "node": node, "rabbitmq_version": version, "erlang_version": "26.2"
    })
    .to_string();
    tcp_server(move |mut s| {
        let overview = overview.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + length {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let (status, body) = if head.starts_with("get /api/overview ") {
                ("200 OK", overview)
            } else if head.starts_with("put /api/policies/") {
                ("201 Created", String::new())
            } else {
                (
                    "404 Not Found",
                    r#"{"error":"Object Not Found","reason":"Not Found"}"#.into(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    })
    .await
}

/// A config for one fake node whose rabbitmqctl (the second file) always
/// reports it standalone.
fn fake_config(mgmt: std::net::SocketAddr) -> (TempFile, TempFile) {
    let ctl = write_temp(
        "sh",
        "#!/bin/sh\nnode=\nwhile [ $# -gt 0 ]; do\n  case \"$1\" in -n) node=$2; shift 2 ;; *) shift ;; esac\ndone\n\
         printf '{\"running_nodes\":[\"%s\"],\"disk_nodes\":[\"%s\"],\"ram_nodes\":[]}\\n' \"$node\" \"$node\"\n",
    );
    std::fs::set_permissions(&ctl, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let config = write_temp(
        "yaml",
        &format!(
            "listen: 127.0.0.1:0\nbackends:\n  - {{name: x1, address: '127.0.0.1:1', management: 'http://{mgmt}'}}\n\
             cluster:\n  rabbitmqctl: {}\n  nodes:\n    - {{backend: x1, node: x1@fake}}\n{HA_POLICY}",
            ctl.display()
        ),
    );
    (config, ctl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_policies_are_refused_on_rabbitmq_4_with_the_quorum_alternative() {
    let addr = fake_management("x1@fake", "4.0.5").await;
    let (cfg, _ctl) = fake_config(addr);
    let r = tokio::task::spawn_blocking(move || bootstrap(&cfg, &[]))
        .await
        .expect("runs");
    assert_eq!(r.code, 65, "{r}");
    let errors = r.lines("error").join("\n");
    assert!(
        errors.contains("policy ha-allqueue (vhost /): refused"),
        "{r}"
    );
    assert!(errors.contains("removed in 4.0"), "{r}");
    assert!(errors.contains("x-queue-type: quorum"), "{r}");
    assert!(
        errors.contains("rabbitmqctl update_vhost_metadata / --default-queue-type quorum"),
        "{r}"
    );
    assert!(r.stderr.contains("nothing was changed"), "{r}");
    assert!(r.lines("change").is_empty(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_3_13_mirroring_warns_and_a_policy_not_read_back_is_not_reported_applied() {
    let addr = fake_management("x1@fake", "3.13.7").await;
    let (cfg, _ctl) = fake_config(addr);
    let r = tokio::task::spawn_blocking(move || bootstrap(&cfg, &[]))
        .await
        .expect("runs");
    assert_eq!(r.code, 70, "{r}");
    assert!(
        r.lines("warning")
            .join("\n")
            .contains("deprecated since RabbitMQ 3.13"),
        "{r}"
    );
    assert!(
        r.lines("error")
            .join("\n")
            .contains("not applied: PUT answered 201 Created, but reading it back shows: absent"),
        "{r}"
    );
    assert!(r.lines("change").is_empty(), "{r}");
}

// ---- RabbitMQ 3.x and 4.x: the version under test decides ---------------------

/// The nodes' RabbitMQ version, `major.minor`, from `WARREN_RABBITMQ` (3.10 when unset).
fn rabbitmq() -> (u32, u32) {
    let v = std::env::var("WARREN_RABBITMQ").unwrap_or_else(|_| "3.10".into());
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("WARREN_RABBITMQ={v}: expected a version such as 3.10 or 4.3"),
    }
}

fn rabbitmq_4x() -> bool {
    rabbitmq().0 >= 4
}

/// True (and says so) when the test is one of 3.x's only (RAM nodes, ha-* policies,
/// `force_reset`, the rabbitmq user's cookie) and the nodes run 4.x.
fn only_3x(test: &str) -> bool {
    if rabbitmq_4x() {
        eprintln!(
            "{test}: written for RabbitMQ 3.x, not run on RabbitMQ {:?}",
            rabbitmq()
        );
        return true;
    }
    false
}

/// Fails the test when the nodes do not run the version `WARREN_RABBITMQ` says.
async fn assert_version(nodes: &[Node]) {
    let (major, minor) = rabbitmq();
    for n in nodes {
        let o = mgmt_get(n, "/api/overview")
            .await
            .expect("GET /api/overview");
        let v = o["rabbitmq_version"].as_str().unwrap_or("");
        assert!(
            v.starts_with(&format!("{major}.{minor}.")),
            "{} runs RabbitMQ {v}, WARREN_RABBITMQ says {major}.{minor}",
            n.name
        );
    }
}

/// A config for the three nodes, all disc, with `cluster.replication` and the
/// CLI of the nodes' version; `extra` goes at the end of the `cluster:` section.
fn replication_config(nodes: &[Node], types: &[&str], extra: &str) -> TempFile {
    let mut y = config_yaml(nodes, "");
    y.push_str(&format!(
        "cluster:\n  rabbitmqctl: {}\n  nodes:\n",
        rabbitmq_cli()
    ));
    for (n, t) in nodes.iter().zip(types) {
        y.push_str(&format!(
            "    - {{backend: {}, node: {}, type: {t}}}\n",
            n.backend, n.name
        ));
    }
    y.push_str(
        "  replication:\n    vhosts: [/]\n    quorum_policy: {queue-leader-locator: balanced, delivery-limit: 20}\n",
    );
    y.push_str(extra);
    write_temp("yaml", &y)
}

/// `default_queue_type` of vhost `/` as the node's management API shows it.
async fn default_queue_type(node: &Node) -> String {
    let v = mgmt_get(node, "/api/vhosts/%2F").await.expect("GET vhost");
    let t = [
        &v["default_queue_type"],
        &v["metadata"]["default_queue_type"],
    ]
    .into_iter()
    .filter_map(|t| t.as_str())
    .find(|t| *t != "undefined")
    .unwrap_or("classic")
    .to_string();
    t
}

/// A list of node names in a queue's JSON, as a set.
fn names(q: &serde_json::Value, key: &str) -> BTreeSet<String> {
    q[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Standalone nodes unchanged: each alone; on 4.x classic as the default queue
/// type; no `warren-replication` policy.
async fn assert_replication_untouched(nodes: &[Node]) {
    for n in nodes {
        assert_eq!(status(n).members(), set(&[&n.name]), "{} changed", n.name);
        assert!(
            mgmt_get(n, "/api/policies/%2F/warren-replication")
                .await
                .is_err(),
            "{} has the policy",
            n.name
        );
        if rabbitmq_4x() {
            assert_eq!(default_queue_type(n).await, "classic", "{}", n.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "resets its nodes: run by scripts/test on the b-node set"]
async fn replication_is_applied_the_versions_way() {
    let _g = exclusive().await;
    let nodes = standalone_nodes().await;
    assert_version(&nodes).await;
    let v4 = rabbitmq_4x();
    let (n1, n2, n3) = (&nodes[0].name, &nodes[1].name, &nodes[2].name);
    let cfg = replication_config(&nodes, &["disc", "disc", "disc"], "");

    // --check on standalone nodes: the differences, exit 1, nothing changed.
    let r = bootstrap(&cfg, &["--check"]);
    assert_eq!(r.code, 1, "{r}");
    let differs = r.lines("differs").join("\n");
    assert!(
        differs.contains(&format!("{n2}: not in the cluster of {n1}")),
        "{r}"
    );
    if v4 {
        assert!(
            differs.contains(
                "vhost /: default queue type is classic, the config (cluster.replication) wants quorum"
            ),
            "{r}"
        );
    }
    assert!(
        differs.contains("policy warren-replication (vhost /): absent"),
        "{r}"
    );
    assert!(r.lines("change").is_empty(), "{r}");

    // --dry-run: the plan, nothing changed.
    let r = bootstrap(&cfg, &["--dry-run"]);
    assert_eq!(r.code, 0, "{r}");
    let plan = r.lines("plan").join("\n");
    assert!(
        plan.contains(&format!("{n3}: join {n1} as a disc node")),
        "{r}"
    );
    assert!(!plan.contains("--ram"), "{r}");
    assert_eq!(plan.contains("PUT /api/vhosts/%2F"), v4, "{r}");
    assert!(
        plan.contains("PUT /api/policies/%2F/warren-replication"),
        "{r}"
    );
    assert!(r.lines("change").is_empty(), "{r}");
    assert_replication_untouched(&nodes).await;

    // A durable queue on the seed from before: classic, whatever the version.
    let before = unique("q-before");
    assert_eq!(
        mgmt_put(
            &nodes[0],
            &format!("/api/queues/%2F/{before}"),
            serde_json::json!({"durable": true})
        )
        .await,
        201
    );

    // The real run.
    let r = bootstrap(&cfg, &[]);
    assert_eq!(r.code, 0, "{r}");
    // 4.x: the queue from before stays classic, and the run says so.
    assert_eq!(
        r.lines("warning").join("\n").contains(&format!(
            "vhost /: 1 classic queue(s) ({before}) keep their type"
        )),
        v4,
        "{r}"
    );
    let changes = r.lines("change").join("\n");
    for c in [
        format!("{n2}: join_cluster {n1}"),
        format!("{n3}: join_cluster {n1}"),
        "policy warren-replication (vhost /): created".to_string(),
    ] {
        assert!(changes.contains(&c), "missing `{c}`: {r}");
    }
    assert_eq!(
        changes.contains("vhost /: default queue type classic -> quorum"),
        v4,
        "{r}"
    );
    let warnings = r.lines("warning").join("\n");
    assert_eq!(
        warnings.contains("cluster.replication.quorum_policy`: not applied before RabbitMQ 4.0"),
        !v4,
        "{r}"
    );
    let s = status(&nodes[0]);
    assert_eq!(s.running, set(&[n1, n2, n3]));
    assert_eq!(s.disc, set(&[n1, n2, n3]));
    assert!(s.ram.is_empty());

    let p = mgmt_get(&nodes[1], "/api/policies/%2F/warren-replication")
        .await
        .expect("policy visible on every node");
    let want = if v4 {
        serde_json::json!({"queue-leader-locator": "balanced", "delivery-limit": 20})
    } else {
        serde_json::json!({"ha-mode": "all", "ha-sync-mode": "automatic"})
    };
    assert_eq!(p["definition"], want, "{p}");
    if v4 {
        for n in &nodes {
            assert_eq!(default_queue_type(n).await, "quorum", "{}", n.name);
        }
    }

    // A queue a client declares afterwards without x-queue-type is replicated
    // to all three nodes: a quorum queue with three members on 4.x, a mirrored
    // classic queue on 3.x.
    let queue = unique("q-replicated");
    let conn = amqp_connect(&nodes[0].url()).await;
    let ch = conn.create_channel().await.expect("channel");
    declare_queue(&ch, &queue, durable()).await;
    let path = format!("/api/queues/%2F/{queue}");
    let all = set(&[n1, n2, n3]);
    let mirrors = set(&[n2, n3]);
    let replicated = |q: &serde_json::Value| {
        q["policy"] == "warren-replication"
            && if v4 {
                q["type"] == "quorum" && names(q, "members") == all
            } else {
                names(q, "slave_nodes") == mirrors
                    && names(q, "synchronised_slave_nodes") == mirrors
            }
    };
    let mut q = serde_json::Value::Null;
    // The management API's queue stats refresh every few seconds.
    for _ in 0..60 {
        q = mgmt_get(&nodes[0], &path).await.expect("GET the queue");
        if replicated(&q) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        replicated(&q),
        "{queue} not replicated as RabbitMQ {:?} does: {q}",
        rabbitmq()
    );
    if v4 {
        assert_eq!(q["type"], "quorum", "{q}");
        // The client sent no x-queue-type: the broker records the vhost's default.
        assert_eq!(q["arguments"]["x-queue-type"], "quorum", "{q}");
        assert_eq!(
            q["effective_policy_definition"]["delivery-limit"], 20,
            "{q}"
        );
    }
    let _ = conn.close(200, "bye".into()).await;

    // A second run changes nothing, and says so; --check passes.
    let r = bootstrap(&cfg, &[]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.lines("change").is_empty(), "{r}");
    assert!(r.lines("plan").is_empty(), "{r}");
    assert!(r.stdout.contains("no change"), "{r}");
    if v4 {
        assert!(
            r.stdout
                .contains("ok       vhost /: default queue type is already quorum"),
            "{r}"
        );
    }
    let r = bootstrap(&cfg, &["--check"]);
    assert_eq!(r.code, 0, "{r}");

    // Drift: --check fails naming it, a run puts it back.
    if v4 {
        let body = serde_json::json!({"description": "Default virtual host", "default_queue_type": "classic"});
        assert_eq!(mgmt_put(&nodes[1], "/api/vhosts/%2F", body).await, 204);
        let r = bootstrap(&cfg, &["--check"]);
        assert_eq!(r.code, 1, "{r}");
        assert_eq!(
            r.lines("differs"),
            vec!["differs  vhost /: default queue type is classic, the config (cluster.replication) wants quorum"],
            "{r}"
        );
        let r = bootstrap(&cfg, &["--dry-run"]);
        assert_eq!(r.code, 0, "{r}");
        assert_eq!(default_queue_type(&nodes[0]).await, "classic");
        let r = bootstrap(&cfg, &[]);
        assert_eq!(r.code, 0, "{r}");
        assert_eq!(r.lines("change").len(), 1, "{r}");
    } else {
        policy_drift_is_found_and_fixed(&cfg, &nodes[0], "warren-replication").await;
    }
    assert_eq!(bootstrap(&cfg, &["--check"]).code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "resets its nodes: run by scripts/test on the b-node set"]
async fn ha_policies_and_ram_nodes_are_judged_by_the_nodes_version() {
    let _g = exclusive().await;
    let nodes = standalone_nodes().await;
    assert_version(&nodes).await;
    let (major, minor) = rabbitmq();
    let n3 = &nodes[2].name;
    // The mirroring policy of 3.x configs and a RAM node.
    let cfg = replication_config(&nodes, &["disc", "disc", "ram"], HA_POLICY);
    if major < 4 {
        // Both are fine on 3.x (the RAM node with a warning from 3.13).
        let r = bootstrap(&cfg, &["--dry-run"]);
        assert_eq!(r.code, 0, "{r}");
        let plan = r.lines("plan").join("\n");
        assert!(plan.contains(&format!("{n3}: join")), "{r}");
        assert!(plan.contains("join_cluster --ram"), "{r}");
        assert!(plan.contains("PUT /api/policies/%2F/ha-allqueue"), "{r}");
        return;
    }
    // 4.x: refused before any change, naming the key and the 4.x equivalent.
    let r = bootstrap(&cfg, &[]);
    assert_eq!(r.code, 65, "{r}");
    let errors = r.lines("error").join("\n");
    assert!(
        errors.contains(
            "policy ha-allqueue (vhost /): refused: key `cluster.policies[0].definition.ha-mode`"
        ),
        "{r}"
    );
    assert!(errors.contains("cluster.replication.vhosts"), "{r}");
    assert!(errors.contains("x-queue-type: quorum"), "{r}");
    // 4.0 (Mnesia) still has RAM nodes; 4.3 (Khepri) has none.
    let ram_refused = errors.contains("key `cluster.nodes[2].type`: `ram`");
    assert_eq!(ram_refused, (major, minor) >= (4, 3), "{r}");
    if ram_refused {
        assert!(errors.contains("The 4.x equivalent is `type: disc`"), "{r}");
    }
    assert!(r.stderr.contains("nothing was changed"), "{r}");
    assert!(r.lines("change").is_empty(), "{r}");
    let r = bootstrap(&cfg, &["--dry-run"]);
    assert_eq!(r.code, 65, "{r}");
    assert!(r.lines("plan").is_empty(), "{r}");
    let r = bootstrap(&cfg, &["--check"]);
    assert_eq!(r.code, 65, "{r}");
    assert_replication_untouched(&nodes).await;
}

/// A fake 4.3.6 node: its management API and a rabbitmqctl that answers
/// `version` and a 4.3-style `cluster_status` (no `ram_nodes` key).
async fn fake_43_node(name: &str) -> (std::net::SocketAddr, TempFile) {
    let addr = fake_management(name, "4.3.6").await;
    let ctl = write_temp(
        "sh",
        "#!/bin/sh\nnode=\nwhile [ $# -gt 0 ]; do\n  case \"$1\" in -n) node=$2; shift 2 ;; version) echo 4.3.6; exit 0 ;; *) shift ;; esac\ndone\n\
         printf '{\"running_nodes\":[\"%s\"],\"disk_nodes\":[\"%s\"],\"maintenance_status\":{\"%s\":\"not under maintenance\"},\"feature_flags\":[{\"name\":\"khepri_db\",\"state\":\"enabled\"}]}\\n' \"$node\" \"$node\" \"$node\"\n",
    );
    std::fs::set_permissions(&ctl, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    (addr, ctl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_3_node_is_reachable_and_a_ram_node_is_refused_by_key() {
    let (a1, ctl) = fake_43_node("x1@fake").await;
    let (a2, _ctl2) = fake_43_node("x2@fake").await;
    let cfg = write_temp(
        "yaml",
        &format!(
            "listen: 127.0.0.1:0\nbackends:\n  - {{name: x1, address: '127.0.0.1:1', management: 'http://{a1}'}}\n  \
             - {{name: x2, address: '127.0.0.1:2', management: 'http://{a2}'}}\n\
             cluster:\n  rabbitmqctl: {}\n  nodes:\n    - {{backend: x1, node: x1@fake}}\n    - {{backend: x2, node: x2@fake, type: ram}}\n",
            ctl.display()
        ),
    );
    let r = tokio::task::spawn_blocking(move || bootstrap(&cfg, &["--dry-run"]))
        .await
        .expect("runs");
    assert_eq!(r.code, 65, "{r}");
    assert!(!r.stdout.contains("not reachable"), "{r}");
    assert!(
        r.stdout
            .contains("x2@fake: rabbitmqctl reaches it (cookie accepted)"),
        "{r}"
    );
    let errors = r.lines("error").join("\n");
    assert!(
        errors.contains(
            "x2@fake: refused: key `cluster.nodes[1].type`: `ram`, but x2@fake runs RabbitMQ 4.3.6"
        ),
        "{r}"
    );
    assert!(errors.contains("`type: disc`"), "{r}");
    assert!(r.lines("plan").is_empty(), "{r}");
}

/// PUT on a node's management API as guest; the HTTP status.
async fn mgmt_put(node: &Node, path: &str, body: serde_json::Value) -> u16 {
    let ep = warren::mgmt::Target::new(&node.mgmt_url(), &Default::default()).expect("endpoint");
    warren::mgmt::request(
        &ep,
        &guest(),
        hyper::Method::PUT,
        path,
        Some(body),
        Duration::from_secs(10),
    )
    .await
    .expect("management API answers")
    .status
    .as_u16()
}
