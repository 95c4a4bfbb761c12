//! Runs the RabbitMQ CLI (`cluster.rabbitmqctl`) against one node.
//!
//! Clustering has no HTTP API: joining needs `rabbitmqctl`, which speaks Erlang
//! distribution and so needs the node's Erlang cookie, epmd (4369) and the node's
//! distribution port. Its failures are sorted here into what an operator can act
//! on: node down, cookie rejected, app stopped, or the command's own error.

use std::process::Stdio;
use std::time::Duration;

use crate::config::NodeType;

use super::cluster::ClusterStatus;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "cannot run `{program}`: {source} (install the RabbitMQ CLI tools or set cluster.rabbitmqctl)"
    )]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("the Erlang VM of {node} is not running ({detail})")]
    NodeDown { node: String, detail: String },
    #[error("cannot reach {node} ({detail})")]
    Unreachable { node: String, detail: String },
    #[error("{node} did not accept rabbitmqctl's Erlang cookie ({detail})")]
    Cookie { node: String, detail: String },
    #[error("the RabbitMQ app on {node} is stopped (its Erlang VM answers); start it with `rabbitmqctl -n {node} start_app`")]
    AppStopped { node: String },
    #[error("rabbitmqctl could not start its own Erlang distribution (is epmd running on this machine?): {detail}")]
    CliDistribution { detail: String },
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    #[error("`{command}`: unexpected output: {detail}")]
    Output { command: String, detail: String },
}

/// Tries for a CLI that cannot start its own distribution.
const CLI_ATTEMPTS: u32 = 3;

/// Output longer than this is cut in error messages.
const MAX_ERROR_OUTPUT: usize = 1500;

/// The CLI command, split on whitespace (`sudo -u rabbitmq rabbitmqctl` works;
/// shell quoting does not).
#[derive(Clone, Debug)]
pub struct Rabbitmqctl {
    argv: Vec<String>,
    timeout: Duration,
}

impl Rabbitmqctl {
    pub fn new(command: &str, timeout: Duration) -> Rabbitmqctl {
        Rabbitmqctl {
            argv: command.split_whitespace().map(str::to_string).collect(),
            timeout,
        }
    }

    fn program(&self) -> &str {
        self.argv
            .first()
            .map(String::as_str)
            .unwrap_or("rabbitmqctl")
    }

    /// How a command is shown in the report: `rabbitmqctl -n NODE args...`.
    pub fn display(&self, node: &str, args: &[&str]) -> String {
        let mut s = self.argv.join(" ");
        s.push_str(" -n ");
        s.push_str(node);
        for a in args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }

    /// Runs `rabbitmqctl -n NODE -q ARGS...`; its stdout when it succeeds.
    ///
    /// A CLI that could not start its own Erlang distribution never reached the
    /// node, so that (seen on a busy machine with many CLI calls at once) is
    /// retried a few times; nothing else is.
    pub async fn run(&self, node: &str, args: &[&str]) -> Result<String, CtlError> {
        let mut attempt = 1;
        loop {
            match self.run_once(node, args).await {
                Err(CtlError::CliDistribution { .. }) if attempt < CLI_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => return other,
            }
        }
    }

    async fn run_once(&self, node: &str, args: &[&str]) -> Result<String, CtlError> {
        let command = self.display(node, args);
        let mut cmd = tokio::process::Command::new(self.program());
        cmd.args(self.argv.iter().skip(1))
            .args(["-n", node, "-q"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the terminal interrupts bootstrap
            // between steps, and never kills a `start_app` halfway.
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| CtlError::Spawn {
            program: self.program().to_string(),
            source,
        })?;
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| CtlError::Timeout {
                command: command.clone(),
                timeout: self.timeout,
            })?
            .map_err(|source| CtlError::Spawn {
                program: self.program().to_string(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let text = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let status = match out.status.code() {
            Some(c) => format!("exit {c}"),
            None => "killed by a signal".to_string(),
        };
        Err(classify(node, command, status, &text))
    }

    /// `cluster_status --formatter json`, parsed.
    pub async fn cluster_status(&self, node: &str) -> Result<ClusterStatus, CtlError> {
        let args = ["cluster_status", "--formatter", "json"];
        let out = self.run(node, &args).await?;
        let bad = |detail: String| CtlError::Output {
            command: self.display(node, &args),
            detail,
        };
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).map_err(|e| bad(format!("not JSON: {e}")))?;
        ClusterStatus::from_json(&v)
            .ok_or_else(|| bad("no running_nodes/disk_nodes lists of node names".into()))
    }

    pub async fn stop_app(&self, node: &str) -> Result<(), CtlError> {
        self.run(node, &["stop_app"]).await.map(drop)
    }

    pub async fn start_app(&self, node: &str) -> Result<(), CtlError> {
        self.run(node, &["start_app"]).await.map(drop)
    }

    pub async fn reset(&self, node: &str) -> Result<(), CtlError> {
        self.run(node, &["reset"]).await.map(drop)
    }

    pub async fn join_cluster(
        &self,
        node: &str,
        seed: &str,
        node_type: NodeType,
    ) -> Result<(), CtlError> {
        self.run(node, &join_args(seed, node_type)).await.map(drop)
    }

    pub async fn change_cluster_node_type(
        &self,
        node: &str,
        node_type: NodeType,
    ) -> Result<(), CtlError> {
        self.run(node, &["change_cluster_node_type", type_arg(node_type)])
            .await
            .map(drop)
    }

    /// The Erlang cookie the node runs with. Never printed: only compared.
    pub async fn cookie(&self, node: &str) -> Result<String, CtlError> {
        let out = self.run(node, &["eval", "erlang:get_cookie()."]).await?;
        Ok(unquote_atom(out.trim()).to_string())
    }
}

/// Arguments of `join_cluster` for a node type.
pub fn join_args(seed: &str, node_type: NodeType) -> Vec<&str> {
    match node_type {
        NodeType::Disc => vec!["join_cluster", seed],
        NodeType::Ram => vec!["join_cluster", "--ram", seed],
    }
}

fn type_arg(t: NodeType) -> &'static str {
    match t {
        NodeType::Disc => "disc",
        NodeType::Ram => "ram",
    }
}

/// An Erlang atom as printed (`'ABC'` or `abc`) without its quotes.
fn unquote_atom(s: &str) -> &str {
    s.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or(s)
}

/// Sorts a failed CLI run by what the operator has to fix, from the CLI's own
/// diagnostics (verified against 3.10.8's wording).
fn classify(node: &str, command: String, status: String, text: &str) -> CtlError {
    let node = node.to_string();
    let detail = diagnostics(text);
    if text.contains("nodistribution") {
        // The CLI's own node did not start (its name taken in epmd, or epmd
        // too slow to answer): the command never reached `node`.
        return CtlError::CliDistribution {
            detail: trim_output(text),
        };
    }
    if text.contains("Erlang distribution failed") {
        // epmd answered and the TCP connection to the node's distribution port
        // worked, then the handshake failed: the cookie (or, rarely, inconsistent
        // host names or TLS distribution).
        return CtlError::Cookie { node, detail };
    }
    if text.contains("not running at all") {
        return CtlError::NodeDown { node, detail };
    }
    if text.contains("unable to connect to epmd") || text.contains("nodedown") {
        return CtlError::Unreachable { node, detail };
    }
    if text.contains("requires the 'rabbit' app to be running") {
        return CtlError::AppStopped { node };
    }
    let mut output = trim_output(text);
    if text.contains(":undef") {
        // Seen with the 3.10 CLI against 4.3 nodes: `{:undef, [{:rabbit_mnesia, :status, ...`.
        output.push_str(
            " (a function the CLI calls does not exist on the node: is cluster.rabbitmqctl the \
             CLI of the nodes' RabbitMQ version?)",
        );
    }
    CtlError::Failed {
        command,
        status,
        output,
    }
}

/// The `* ...` lines of the CLI's DIAGNOSTICS block, joined; the whole (trimmed)
/// output when there is none.
fn diagnostics(text: &str) -> String {
    let Some(start) = text.find("DIAGNOSTICS") else {
        return trim_output(text);
    };
    let block = &text[start..];
    let block = block
        .find("Current node details")
        .map_or(block, |end| &block[..end]);
    let lines: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("* "))
        .filter(|l| !l.starts_with("suggestion: see the CLI"))
        .collect();
    if lines.is_empty() {
        trim_output(text)
    } else {
        lines.join("; ")
    }
}

/// Output without the CLI's log noise (`12:00:00.000 [warning] ...`), blank lines
/// and usage text, cut to a readable length.
fn trim_output(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .take_while(|l| !l.contains("Usage"))
        .filter(|l| !l.trim().is_empty() && !is_log_line(l))
        .collect();
    let mut s = lines.join(" | ");
    if s.len() > MAX_ERROR_OUTPUT {
        let mut cut = MAX_ERROR_OUTPUT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" ...");
    }
    if s.is_empty() {
        s.push_str("(no output)");
    }
    s
}

fn is_log_line(l: &str) -> bool {
    let b = l.as_bytes();
    b.len() > 13 && b[2] == b':' && b[5] == b':' && b[8] == b'.' && l.contains(" [")
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOKIE_FAILURE: &str = "Error: unable to perform an operation on node 'b3@vm'. Please see diagnostics information and suggestions below.

DIAGNOSTICS
===========

attempted to contact: [b3@vm]

b3@vm:
  * connected to epmd (port 4369) on vm
  * epmd reports node 'b3' uses port 25693 for inter-node and CLI tool traffic 
  * TCP connection succeeded but Erlang distribution failed 
  * suggestion: check if the Erlang cookie is identical for all server nodes and CLI tools
   * suggestion: see the CLI, clustering and networking guides on https://rabbitmq.com/documentation.html to learn more


Current node details:
 * node name: 'rabbitmqcli-632-rabbit@vm'
 * Erlang cookie hash: TGjR7ZSf2+8XJldY4RYesA==
";

    const DOWN: &str = "Error: unable to perform an operation on node 'b9@vm'.
DIAGNOSTICS
===========

b9@vm:
  * connected to epmd (port 4369) on vm
  * epmd reports: node 'b9' not running at all
                  other nodes on vm: [n1,n2]
  * suggestion: start the node

Current node details:
 * node name: 'rabbitmqcli-217-rabbit@vm'
";

    #[test]
    fn sorts_cli_failures() {
        let e = classify("b3@vm", "x".into(), "exit 69".into(), COOKIE_FAILURE);
        match e {
            CtlError::Cookie { node, detail } => {
                assert_eq!(node, "b3@vm");
                assert!(detail.contains("Erlang distribution failed"), "{detail}");
                assert!(!detail.contains("cookie hash"), "{detail}");
            }
            other => panic!("expected a cookie error, got {other:?}"),
        }
        assert!(matches!(
            classify(
                "b1@vm",
                "x".into(),
                "exit 1".into(),
                "Distribution failed: {{:shutdown, {:failed_to_start_child, :net_kernel, {:EXIT, :nodistribution}}}, {:child, :undefined}}"
            ),
            CtlError::CliDistribution { .. }
        ));
        assert!(matches!(
            classify("b9@vm", "x".into(), "exit 69".into(), DOWN),
            CtlError::NodeDown { .. }
        ));
        assert!(matches!(
            classify(
                "b2@vm",
                "x".into(),
                "exit 69".into(),
                "Error: this command requires the 'rabbit' app to be running on the target node."
            ),
            CtlError::AppStopped { .. }
        ));
        match classify(
            "b2@vm",
            "rabbitmqctl -n b2@vm join_cluster b1@vm".into(),
            "exit 69".into(),
            "11:55:56.708 [error] Node b1@vm thinks it's clustered\n\nError:\n{:inconsistent_cluster, 'x'}\n",
        ) {
            CtlError::Failed { output, .. } => {
                assert_eq!(output, "Error: | {:inconsistent_cluster, 'x'}")
            }
            other => panic!("expected a plain failure, got {other:?}"),
        }
    }

    #[test]
    fn a_cli_of_another_version_is_named() {
        // The 3.10.8 CLI's cluster_status against a 4.3.6 node.
        match classify(
            "c1@vm",
            "rabbitmqctl -n c1@vm cluster_status".into(),
            "exit 0".into(),
            "Error:\n{:undef, [{:rabbit_mnesia, :status, [], []}]}\n",
        ) {
            CtlError::Failed { output, .. } => {
                assert!(output.contains("rabbit_mnesia"), "{output}");
                assert!(output.contains("cluster.rabbitmqctl"), "{output}");
            }
            other => panic!("expected a plain failure, got {other:?}"),
        }
    }

    #[test]
    fn join_arguments() {
        assert_eq!(
            join_args("rabbit@a", NodeType::Disc),
            ["join_cluster", "rabbit@a"]
        );
        assert_eq!(
            join_args("rabbit@a", NodeType::Ram),
            ["join_cluster", "--ram", "rabbit@a"]
        );
    }

    #[test]
    fn command_is_split_on_whitespace() {
        let c = Rabbitmqctl::new("sudo -u rabbitmq  rabbitmqctl", Duration::from_secs(1));
        assert_eq!(c.program(), "sudo");
        assert_eq!(
            c.display("b1@h", &["stop_app"]),
            "sudo -u rabbitmq rabbitmqctl -n b1@h stop_app"
        );
    }

    #[test]
    fn atoms_unquoted() {
        assert_eq!(unquote_atom("'ABC'"), "ABC");
        assert_eq!(unquote_atom("abc"), "abc");
    }
}
