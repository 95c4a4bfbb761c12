//! The Dockerfile and the examples in deploy/ agree with the real program: every
//! warren config in them is valid, every warren command line in them is accepted
//! by the CLI, and the Prometheus files pass promtool. There is no Docker engine
//! or Kubernetes here, so this is what keeps them from rotting.

use std::path::{Path, PathBuf};
use std::process::Command;

use warren::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_warren");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The block scalar under `key: |` in a YAML file, de-indented.
fn block_scalar(text: &str, key: &str) -> String {
    let mut lines = text.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines.next().unwrap_or_else(|| panic!("no `{key}: |`"));
    let outer = head.len() - head.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > outer)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `warren <args> --help`: clap accepts the subcommand and every option.
fn cli_accepts(args: &[String], origin: &str) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--help")
        .output()
        .expect("warren runs");
    assert!(
        out.status.success(),
        "{origin}: `warren {}` is not a valid command line: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON array after `marker` on a Dockerfile line, without the binary path.
fn exec_form(line: &str, marker: &str) -> Vec<String> {
    let json = &line[line.find(marker).expect("marker") + marker.len()..];
    let v: Vec<String> = serde_json::from_str(json.trim()).expect("exec form JSON array");
    v.into_iter()
        .filter(|a| a != "/usr/local/bin/warren")
        .collect()
}

#[test]
fn warren_configs_in_deploy_are_valid() {
    let docker = root().join("deploy/docker/warren.yaml");
    Config::load(&docker).unwrap_or_else(|e| panic!("{e}"));
    for file in ["warren-sidecar.yaml", "warren-standalone.yaml"] {
        let k8s = read(&format!("deploy/kubernetes/{file}"));
        let embedded = block_scalar(&k8s, "warren.yaml");
        let c = Config::from_yaml(&embedded, Path::new(&format!("{file} ConfigMap")))
            .unwrap_or_else(|e| panic!("{e}\n{embedded}"));
        assert_eq!(c.backends.len(), 3, "{file}");
        assert!(c.reload.watch, "{file}");
        // The files the config names are where the Secret is mounted.
        let secret_mount = "/run/secrets/warren";
        assert!(
            k8s.contains(&format!("mountPath: {secret_mount}")),
            "{file}"
        );
        let password = c.health.password_file.expect("password from the Secret");
        assert!(
            password.starts_with(secret_mount),
            "{file}: {}",
            password.display()
        );
    }
}

#[test]
fn dockerfile_builds_like_ci_and_runs_real_commands() {
    let text = read("Dockerfile");
    for needed in [
        "cargo build --release --locked",
        "EXPOSE 5672 8404",
        // Numeric, so Kubernetes' runAsNonRoot can check it (the manifests'
        // runAsUser and fsGroup are checked against it by scripts/check-deploy).
        "\nUSER 65532:65532\n",
        "/etc/warren/warren.yaml",
        "HEALTHCHECK",
    ] {
        assert!(text.contains(needed), "Dockerfile lacks `{needed}`");
    }
    let script = read("scripts/test");
    assert!(
        script.contains("cargo build --release --locked"),
        "CI must run the Dockerfile's build command"
    );
    let mut commands = 0;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.starts_with("CMD [") {
            cli_accepts(&exec_form(line, "CMD"), "Dockerfile CMD");
            commands += 1;
        } else if line.starts_with("HEALTHCHECK") {
            // The command is on the continuation line.
            let next = lines.next().expect("HEALTHCHECK continues").trim();
            cli_accepts(&exec_form(next, "CMD"), "Dockerfile HEALTHCHECK");
            commands += 1;
        }
    }
    assert_eq!(commands, 2, "one CMD and one HEALTHCHECK");
    assert!(text.contains("COPY deploy/docker/warren.yaml /etc/warren/warren.yaml"));
    let ignore = read(".dockerignore");
    for needed in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "deploy",
        "benches",
        "tests",
    ] {
        assert!(
            !ignore.lines().any(|l| l.trim() == needed),
            ".dockerignore must not exclude {needed}"
        );
    }
}

#[test]
fn systemd_unit_and_kubernetes_commands_are_real() {
    let unit = read("deploy/systemd/warren.service");
    let exec_start = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let args: Vec<String> = exec_start
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    cli_accepts(&args, "ExecStart");
    let reload = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecReload="))
        .expect("ExecReload");
    assert!(reload.contains("kill -HUP $MAINPID"), "{reload}");
    assert!(
        exec_start.starts_with("/usr/bin/warren "),
        "the package's path"
    );
    assert!(
        unit.contains("\nUser=warren\n"),
        "the package's system user"
    );
    let check = reload
        .split("/usr/bin/warren ")
        .nth(1)
        .and_then(|s| s.split(" >").next())
        .expect("warren check in ExecReload");
    let args: Vec<String> = check.split_whitespace().map(str::to_string).collect();
    assert_eq!(args[0], "check");
    cli_accepts(&args, "ExecReload");
    assert!(unit.contains("RestartPreventExitStatus=64"));

    for file in ["warren-sidecar.yaml", "warren-standalone.yaml"] {
        let k8s = read(&format!("deploy/kubernetes/{file}"));
        let args_line = k8s
            .lines()
            .find_map(|l| l.trim().strip_prefix("args: "))
            .expect("container args");
        let args: Vec<String> = serde_json::from_str(args_line).expect("args as a JSON-style list");
        cli_accepts(&args, &format!("{file} args"));
    }
}

#[test]
fn compose_passes_the_password_warren_expects() {
    let compose = read("deploy/compose/docker-compose.yml");
    let config = Config::load(&root().join("deploy/docker/warren.yaml")).expect("valid");
    let var = config
        .health
        .password_env
        .expect("the container config takes the password from the environment");
    assert!(
        compose.contains(&format!("{var}:")),
        "docker-compose.yml must set {var}"
    );
    for b in &config.backends {
        let host = b.address.split(':').next().expect("host");
        assert!(
            compose.contains(&format!("hostname: {host}")),
            "no compose service with hostname {host}"
        );
    }
    // The directory, so an edit saved by rename is seen by a reload; the file
    // warren reads is in it.
    assert!(compose.contains("- ../docker:/etc/warren:ro"));
    assert!(root().join("deploy/docker/warren.yaml").is_file());
}

#[test]
fn prometheus_examples_pass_promtool() {
    // The scrape config (and the rules it loads), then the rules' unit tests.
    let dir = root().join("deploy/prometheus");
    for args in [
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "warren-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs (Debian package `prometheus`; scripts/test installs it)");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn version_completions_and_man_pages_come_from_the_cli() {
    let run = |args: &[&str]| -> String {
        let out = Command::new(BIN).args(args).output().expect("warren runs");
        assert!(out.status.success(), "warren {}: {out:?}", args.join(" "));
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let revision = env!("WARREN_GIT_REVISION");
    assert_ne!(revision, "", "build.rs sets the revision");
    assert_eq!(
        run(&["--version"]).trim(),
        format!("warren {} ({revision})", env!("CARGO_PKG_VERSION"))
    );
    let commands = [
        "run",
        "check",
        "healthcheck",
        "bootstrap",
        "completions",
        "man",
    ];
    // Each shell spells the long option its own way.
    for (shell, config_option) in [
        ("bash", "--config"),
        ("zsh", "--config"),
        ("fish", "-l config"),
    ] {
        let script = run(&["completions", shell]);
        for c in commands {
            assert!(script.contains(c), "{shell} completion lacks `{c}`");
        }
        assert!(
            script.contains(config_option),
            "{shell} completion lacks --config"
        );
    }
    let dir = crate::common::fresh_dir("warren-man");
    run(&["man", "--out-dir", &dir.to_string_lossy()]);
    let main = std::fs::read_to_string(dir.join("warren.1")).expect("warren.1");
    assert!(
        main.starts_with(".ie") && main.contains(".TH warren 1"),
        "{main}"
    );
    for c in commands {
        let page = dir.join(format!("warren-{c}.1"));
        assert!(page.is_file(), "no {}", page.display());
    }
    assert_eq!(
        run(&["man"]),
        main,
        "stdout and --out-dir give the same page"
    );
}
