//! The admin API against browsers and DNS rebinding (`admin::guard`): what a web
//! page in an operator's browser can send is refused and changes nothing, while
//! curl-like requests and token-bearing ones keep working. warren runs in front
//! of the real nodes (in this process, and as its binary for the start-up and
//! reload warnings).

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `warren_admin_requests_refused_total{reason}` now (the series are global to
/// the process: tests compare before and after, at least).
async fn refused(w: &Warren, reason: &str) -> f64 {
    w.metrics().await.value(
        warren::telemetry::metrics::ADMIN_REFUSED,
        &[("reason", reason)],
    )
}

/// The backend's `state` and `mode` as `GET /api/backends` shows them.
async fn state_and_mode(w: &Warren, backend: &str) -> (String, String) {
    let (status, body) = w.admin_get("/api/backends").await;
    assert_eq!(status, 200, "{body}");
    let all: serde_json::Value = serde_json::from_str(&body).expect("json");
    let b = all
        .as_array()
        .expect("array")
        .iter()
        .find(|b| b["name"] == backend)
        .unwrap_or_else(|| panic!("no backend {backend} in {body}"));
    (
        b["state"].as_str().unwrap_or("").to_string(),
        b["mode"].as_str().unwrap_or("").to_string(),
    )
}

/// Sends `request` as it is; the status of the answer (0 when none).
async fn raw(addr: SocketAddr, request: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("send");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

const EVIL_ORIGIN: &str = "Origin: http://evil.example";
const FORM: &str = "Content-Type: application/x-www-form-urlencoded";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_form_cannot_drain_a_backend_but_curl_can() {
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(&nodes, "")).await;
    let b = &nodes[0].backend;
    let drain = format!("/api/backends/{b}/drain");
    let before = [
        refused(&w, "cross_origin").await,
        refused(&w, "cross_site").await,
        refused(&w, "form_content_type").await,
    ];

    // What a page on another site can make a browser send without a preflight.
    let (status, body) =
        admin_request_with(w.admin, "POST", &drain, &[EVIL_ORIGIN, FORM], "x=1").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("cross-origin"), "{body}");
    let fetch = ["Sec-Fetch-Site: cross-site"];
    assert_eq!(
        admin_request_with(w.admin, "POST", &drain, &fetch, "")
            .await
            .0,
        403
    );
    for form in [
        FORM,
        "Content-Type: text/plain;charset=UTF-8",
        "Content-Type: multipart/form-data; boundary=x",
    ] {
        let (status, body) = admin_request_with(w.admin, "POST", &drain, &[form], "x=1").await;
        assert_eq!(status, 403, "{form}: {body}");
        assert!(body.contains("form content type"), "{body}");
    }
    let reload = admin_request_with(w.admin, "POST", "/api/reload", &[EVIL_ORIGIN], "").await;
    assert_eq!(reload.0, 403, "{}", reload.1);
    assert_eq!(
        state_and_mode(&w, b).await,
        ("up".to_string(), "enabled".to_string()),
        "nothing changed on a refused request"
    );
    let after = [
        refused(&w, "cross_origin").await,
        refused(&w, "cross_site").await,
        refused(&w, "form_content_type").await,
    ];
    for (i, at_least) in [2.0, 1.0, 3.0].into_iter().enumerate() {
        assert!(after[i] - before[i] >= at_least, "{before:?} -> {after:?}");
    }
    let log = log_text();
    assert!(
        log.contains("admin request refused") && log.contains("cross_origin"),
        "{log}"
    );

    // curl: no Origin, no body (or JSON); the API's own origin (devtools) too.
    let (status, body) = w.admin_post(&drain).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_and_mode(&w, b).await.1, "draining");
    let json = ["Content-Type: application/json"];
    let enable = format!("/api/backends/{b}/enable");
    let (status, body) = admin_request_with(w.admin, "POST", &enable, &json, "{}").await;
    assert_eq!(status, 200, "{body}");
    let own = format!("Origin: http://{}", w.admin);
    let disable = format!("/api/backends/{b}/disable");
    let (status, body) = admin_request_with(
        w.admin,
        "POST",
        &disable,
        &[&own, "Sec-Fetch-Site: same-origin"],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_and_mode(&w, b).await.1, "disabled");
    assert_eq!(w.admin_post(&enable).await.0, 200);
    assert_eq!(state_and_mode(&w, b).await.1, "enabled");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_is_refused_even_for_reads() {
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(&nodes, "")).await;
    let b = &nodes[0].backend;
    let port = w.admin.port();
    let wrong0 = refused(&w, "wrong_host").await;
    let bad0 = refused(&w, "bad_host").await;

    // DNS rebinding: the page's own name, resolved to 127.0.0.1.
    let evil = format!("Host: evil.example:{port}");
    for path in ["/api/backends", "/metrics", "/healthz", "/readyz"] {
        let (status, body) = admin_request_with(w.admin, "GET", path, &[&evil], "").await;
        assert_eq!(status, 421, "GET {path}: {body}");
        assert!(body.contains("admin.allowed_hosts"), "{body}");
    }
    let drain = format!("/api/backends/{b}/drain");
    assert_eq!(
        admin_request_with(w.admin, "POST", &drain, &[&evil], "")
            .await
            .0,
        421
    );
    assert_eq!(
        state_and_mode(&w, b).await,
        ("up".to_string(), "enabled".to_string())
    );
    // Another port of the same address is another origin too.
    let other_port = format!("Host: 127.0.0.1:{}", port.wrapping_add(1));
    assert_eq!(
        admin_request_with(w.admin, "GET", "/healthz", &[&other_port], "")
            .await
            .0,
        421
    );
    // No Host, or two.
    assert_eq!(
        raw(
            w.admin,
            "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        .await,
        400
    );
    let two = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        w.admin
    );
    assert_eq!(raw(w.admin, &two).await, 400);

    // The listener's own names: its address (what curl sends) and localhost.
    assert_eq!(w.admin_get("/api/backends").await.0, 200);
    let localhost = format!("Host: localhost:{port}");
    assert_eq!(
        admin_request_with(w.admin, "GET", "/metrics", &[&localhost], "")
            .await
            .0,
        200
    );
    assert!(refused(&w, "wrong_host").await - wrong0 >= 6.0);
    assert!(refused(&w, "bad_host").await - bad0 >= 2.0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_and_the_token_let_named_and_browser_requests_through() {
    let nodes = cluster().await;
    let token = "s3cret-token-0123456789";
    let token_file = std::env::temp_dir().join(unique("admin-token"));
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let w = Warren::start(&config_yaml(
        &nodes,
        &format!(
            "admin:\n  listen: 127.0.0.1:0\n  token_file: {}\n  allowed_hosts: [warren.test]\n",
            token_file.display()
        ),
    ))
    .await;
    let b = &nodes[0].backend;
    let named = "Host: warren.test";
    let (status, body) = admin_request_with(w.admin, "GET", "/api/backends", &[named], "").await;
    assert_eq!(status, 200, "{body}");

    // The browser's headers without the token: 401, nothing changes.
    let disable = format!("/api/backends/{b}/disable");
    let browser = [named, EVIL_ORIGIN, FORM, "Sec-Fetch-Site: cross-site"];
    let (status, body) = admin_request_with(w.admin, "POST", &disable, &browser, "x=1").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(state_and_mode(&w, b).await.1, "enabled");

    // With the token they are fine: a page cannot know it.
    let bearer = format!("Authorization: Bearer {token}");
    let with_token = [
        named,
        EVIL_ORIGIN,
        FORM,
        "Sec-Fetch-Site: cross-site",
        &bearer,
    ];
    let (status, body) = admin_request_with(w.admin, "POST", &disable, &with_token, "x=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_and_mode(&w, b).await.1, "disabled");
    // The Host is checked with the token too.
    let evil = [EVIL_ORIGIN, "Host: evil.example", &bearer];
    let enable = format!("/api/backends/{b}/enable");
    assert_eq!(
        admin_request_with(w.admin, "POST", &enable, &evil, "")
            .await
            .0,
        421
    );
    assert_eq!(state_and_mode(&w, b).await.1, "disabled");
    let (status, body) = admin_request_with(w.admin, "POST", &enable, &[&bearer], "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_and_mode(&w, b).await.1, "enabled");
    let log = log_text();
    assert!(!log.contains(token), "the token was logged");
    w.stop().await;
    let _ = std::fs::remove_file(&token_file);
}

/// A wildcard listener without a token: warned about at start-up, on reload and
/// by `warren check`; it answers any address (probes by pod IP) but no name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_admin_listener_is_warned_about_and_still_guarded() {
    let nodes = cluster().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 0.0.0.0:0\nhealth:\n  interval: 1h\nlog:\n  format: json\nbackends:\n{}",
        nodes[0].backend_yaml("open-1")
    );
    let p = WarrenProcess::start_logged(&yaml, &[]);
    let warned = |p: &WarrenProcess| {
        p.lines()
            .iter()
            .filter(|l| {
                l["level"] == "WARN"
                    && l["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("no admin token is set"))
            })
            .count()
    };
    assert_eq!(warned(&p), 1, "{}", p.logs());
    let port = p.admin.port();
    let admin = SocketAddr::from(([127, 0, 0, 1], port));

    // Any address with any port (a pod IP, a published port), localhost; no name.
    for host in [
        format!("Host: 127.0.0.1:{port}"),
        format!("Host: 10.9.8.7:{port}"),
        "Host: 127.0.0.1:18404".to_string(),
        format!("Host: localhost:{port}"),
    ] {
        let (status, body) = admin_request_with(admin, "GET", "/readyz", &[&host], "").await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    let evil = format!("Host: evil.example:{port}");
    assert_eq!(
        admin_request_with(admin, "GET", "/api/backends", &[&evil], "")
            .await
            .0,
        421
    );
    let drain = "/api/backends/open-1/drain";
    let (status, body) =
        admin_request_with(admin, "POST", drain, &[EVIL_ORIGIN, FORM], "x=1").await;
    assert_eq!(status, 403, "{body}");
    let (_, all) = admin_request(admin, "GET", "/api/backends").await;
    assert!(
        all.contains("\"enabled\"") && !all.contains("\"draining\""),
        "{all}"
    );
    assert!(p.logs().contains("admin request refused"), "{}", p.logs());

    p.signal("HUP");
    let start = std::time::Instant::now();
    while warned(&p) < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", p.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["check", "-c"])
        .arg(p.config())
        .output()
        .expect("warren check runs");
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("no admin token"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning"));
}
