//! The Debian package that scripts/package builds, installed on this machine with
//! dpkg as an operator would: its files, the `warren` system user, `warren check`
//! on the shipped config, then the unit's ExecStart run as that user (there is no
//! systemd as PID 1 here) against the local nodes, an AMQP client through it, a
//! clean SIGTERM, and `dpkg --purge`.
//!
//! Needs root and target/debian/warren_VERSION-1_ARCH.deb (scripts/test builds it
//! before the tests). Without them the test says so and passes, except under
//! CI=true, where it fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::BasicProperties;

use crate::common::*;

const PACKAGE: &str = "warren";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"))
}

/// `program args` must succeed; returns its standard output.
fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The .deb of this version, or why this machine cannot run the test.
fn package() -> Result<PathBuf, String> {
    if ok("id", &["-u"]).trim() != "0" {
        return Err("not root: dpkg cannot install".into());
    }
    let arch = ok("dpkg", &["--print-architecture"]);
    let deb = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "target/debian/{PACKAGE}_{}-1_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.trim()
    ));
    if deb.is_file() {
        Ok(deb)
    } else {
        Err(format!("{} is missing: run scripts/package", deb.display()))
    }
}

/// Purges the package when the test ends, passed or not.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file("/etc/warren/mgmt-password");
        let _ = run("dpkg", &["--purge", PACKAGE]);
    }
}

/// The installed warren, killed (by its own handle) if the test fails before
/// stopping it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The value of `key=` in the unit file.
fn unit_line<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

#[tokio::test]
async fn deb_installs_checks_serves_and_purges() {
    let deb = match package() {
        Ok(deb) => deb,
        Err(why) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("WARNING: package test not run: {why}");
            return;
        }
        Err(why) => panic!("{why}"),
    };
    let cluster = cluster().await;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));

    let _installed = Installed;
    ok("dpkg", &["-i", &deb.to_string_lossy()]);

    // The files, as the repository has them.
    let same = |installed: &str, source: &str| {
        let a = std::fs::read(installed).unwrap_or_else(|e| panic!("{installed}: {e}"));
        let b = std::fs::read(repo.join(source)).expect("source file");
        assert!(a == b, "{installed} differs from {source}");
    };
    same("/etc/warren/warren.yaml", "config/warren.yaml");
    same(
        "/usr/lib/systemd/system/warren.service",
        "deploy/systemd/warren.service",
    );
    let conffiles = ok("dpkg-query", &["--showformat=${Conffiles}", "-W", PACKAGE]);
    assert!(conffiles.contains("/etc/warren/warren.yaml"), "{conffiles}");
    for f in [
        "/usr/share/bash-completion/completions/warren",
        "/usr/share/zsh/vendor-completions/_warren",
        "/usr/share/fish/vendor_completions.d/warren.fish",
        "/usr/share/man/man1/warren.1.gz",
        "/usr/share/man/man1/warren-run.1.gz",
        "/usr/share/doc/warren/copyright",
    ] {
        assert!(Path::new(f).is_file(), "{f} not installed");
    }
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/warren")
        .expect("completion");
    assert!(bash.contains("healthcheck") && bash.contains("--config"));
    let man = ok("sh", &["-c", "zcat /usr/share/man/man1/warren.1.gz"]);
    assert!(man.contains(".TH warren 1"), "{man}");
    let copyright = std::fs::read_to_string("/usr/share/doc/warren/copyright").expect("copyright");
    assert!(copyright.contains("Apache License"), "{copyright}");

    // The version names the revision this tree was built from.
    let version = ok("/usr/bin/warren", &["--version"]);
    assert_eq!(
        version.trim(),
        format!(
            "warren {} ({})",
            env!("CARGO_PKG_VERSION"),
            env!("WARREN_GIT_REVISION")
        )
    );

    // A system user with no login, and its group.
    let passwd = ok("getent", &["passwd", PACKAGE]);
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "not a system user: {passwd}");
    assert!(fields[6].ends_with("nologin"), "{passwd}");
    ok("getent", &["group", PACKAGE]);

    let unit = std::fs::read_to_string("/usr/lib/systemd/system/warren.service").expect("unit");
    assert_eq!(unit_line(&unit, "User"), PACKAGE);
    // systemd's own checks of the unit (the binary it names exists, the keys are
    // known); offline, no systemd running needed.
    ok(
        "systemd-analyze",
        &["verify", "/usr/lib/systemd/system/warren.service"],
    );

    let as_warren = |args: &[&str]| -> Output {
        let mut all = vec!["--reuid=warren", "--regid=warren", "--init-groups", "--"];
        all.extend_from_slice(args);
        run("setpriv", &all)
    };
    let check = as_warren(&[
        "/usr/bin/warren",
        "check",
        "--config",
        "/etc/warren/warren.yaml",
    ]);
    assert!(
        check.status.success(),
        "warren check on the shipped config: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    // The operator's edit: the local nodes, the password in a file of group warren.
    let amqp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut yaml = format!("listen: {amqp}\nadmin:\n  listen: {admin}\nbackends:\n");
    for n in &cluster {
        yaml.push_str(&n.backend_yaml(&n.backend));
    }
    yaml.push_str("health:\n  username: guest\n  password_file: /etc/warren/mgmt-password\n");
    std::fs::write("/etc/warren/warren.yaml", &yaml).expect("config written");
    std::fs::write("/etc/warren/mgmt-password", "guest\n").expect("password written");
    ok("chown", &["root:warren", "/etc/warren/mgmt-password"]);
    ok("chmod", &["0640", "/etc/warren/mgmt-password"]);

    // The unit's ExecStart, as its user.
    let exec_start: Vec<&str> = unit_line(&unit, "ExecStart").split_whitespace().collect();
    let dir = fresh_dir("warren-deb");
    let mut child = Running(
        Command::new("setpriv")
            .args(["--reuid=warren", "--regid=warren", "--init-groups", "--"])
            .args(&exec_start)
            .stdout(std::fs::File::create(dir.join("out")).expect("log file"))
            .stderr(std::fs::File::create(dir.join("err")).expect("log file"))
            .spawn()
            .expect("setpriv starts"),
    );
    let child = &mut child.0;
    let logs = || std::fs::read_to_string(dir.join("err")).unwrap_or_default();
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(admin).await.is_ok()
            && admin_request(admin, "GET", "/readyz").await.0 == 200
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the installed warren exited ({status}): {}", logs());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the installed warren not ready within 30 s: {}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("proc");
    let process_uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .expect("Uid line");
    assert_eq!(process_uid, uid.to_string(), "runs as the warren user");

    // Its management checks pass with the password from the file: every node up.
    let start = Instant::now();
    loop {
        let (code, body) = admin_request(admin, "GET", "/api/backends").await;
        assert_eq!(code, 200, "{body}");
        let backends: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let up = backends
            .as_array()
            .expect("a list")
            .iter()
            .filter(|b| b["state"] == "up")
            .count();
        if up == cluster.into_iter().count() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not every node up: {body}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A real client through it: publish, then get the message back.
    let conn = amqp_connect(&format!("amqp://guest:guest@{amqp}/%2f")).await;
    let ch = confirmed_queue(&conn, "warren-deb", exclusive()).await;
    ch.basic_publish(
        "".into(),
        "warren-deb".into(),
        BasicPublishOptions::default(),
        b"through the package",
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let got = ch
        .basic_get("warren-deb".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the message");
    assert_eq!(got.delivery.data, b"through the package");

    // SIGTERM, as `systemctl stop` sends (KillSignal=): exit 0 within the grace.
    assert_eq!(unit_line(&unit, "KillSignal"), "SIGTERM");
    ok("kill", &["-TERM", &child.id().to_string()]);
    let start = Instant::now();
    let exit = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit {exit}: {}", logs());
    drop(conn);

    // Purge: the binary and /etc/warren go; the system user stays (Debian's way).
    std::fs::remove_file("/etc/warren/mgmt-password").expect("password file");
    ok("dpkg", &["--purge", PACKAGE]);
    for gone in [
        "/usr/bin/warren",
        "/etc/warren",
        "/usr/lib/systemd/system/warren.service",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
    ok("getent", &["passwd", PACKAGE]);
}
