//! Hostile traffic and a hostile network: nothing a client or a backend sends may
//! take warren down, stall it, or make it spin.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until EOF or error; how long it took.
async fn time_to_close(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    read_until_closed(s, within).await?;
    Some(start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_silent_clients_never_reach_a_backend() {
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(&nodes, "timeouts:\n  handshake: 1s\n")).await;
    let total = || async {
        let v: serde_json::Value =
            serde_json::from_str(&w.admin_get("/api/backends").await.1).expect("json");
        v.as_array()
            .expect("array")
            .iter()
            .map(|b| b["total_connections"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let before = total().await;
    // Garbage: an HTTP request, a TLS ClientHello, random bytes.
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x02, 0x00][..],
        &[0xff; 64][..],
    ] {
        let mut s = TcpStream::connect(w.amqp).await.expect("connect");
        s.write_all(garbage).await.expect("write");
        let t = time_to_close(&mut s, Duration::from_secs(5))
            .await
            .expect("garbage client closed");
        assert!(
            t < Duration::from_secs(1),
            "garbage not refused at once: {t:?}"
        );
    }
    // Silent: closed after the handshake timeout.
    let mut silent = TcpStream::connect(w.amqp).await.expect("connect");
    let t = time_to_close(&mut silent, Duration::from_secs(5))
        .await
        .expect("silent client closed");
    assert!(
        t >= Duration::from_millis(900) && t < Duration::from_secs(3),
        "{t:?}"
    );
    assert_eq!(
        total().await,
        before,
        "no backend connection was made for them"
    );
    let (_, metrics) = w.admin_get("/metrics").await;
    assert!(
        metrics.contains("warren_listener_handshake_rejected_total"),
        "{metrics}"
    );
    // And real clients still work.
    let c = amqp_connect(&w.url()).await;
    c.create_channel().await.expect("channel");
    let _ = c.close(200, "bye".into()).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_stream_are_cleaned_up() {
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(&nodes, "")).await;
    for _ in 0..20 {
        let mut s = TcpStream::connect(w.amqp).await.expect("connect");
        s.write_all(warren::proxy::amqp::PROTOCOL_HEADER)
            .await
            .expect("header");
        // Half a frame, then a reset.
        s.write_all(&[1, 0, 0, 0, 0, 0, 100, 0, 10])
            .await
            .expect("partial frame");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(s);
    }
    let start = tokio::time::Instant::now();
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&w.admin_get("/api/backends").await.1).expect("json");
        let active: u64 = v
            .as_array()
            .expect("array")
            .iter()
            .map(|b| b["active_connections"].as_u64().unwrap_or(0))
            .sum();
        if active == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "connections not cleaned up: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = amqp_connect(&w.url()).await;
    c.create_channel().await.expect("still serving");
    let _ = c.close(200, "bye".into()).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_resetting_mid_stream_closes_only_that_client() {
    let _turn = sharing().await;
    // A backend that answers part of a frame and then resets the connection.
    let addr = tcp_server(|mut s| async move {
        let mut head = [0u8; 8];
        if s.read_exact(&mut head).await.is_ok() {
            let _ = s.write_all(&[1, 0, 0, 0, 0, 1, 0, 0, 10]).await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    })
    .await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nhealth:\n  interval: 1h\nbackends:\n  - {{name: resetter, address: '{addr}'}}\n"
    );
    let w = Warren::start(&yaml).await;
    for _ in 0..10 {
        let mut s = TcpStream::connect(w.amqp).await.expect("connect");
        s.write_all(warren::proxy::amqp::PROTOCOL_HEADER)
            .await
            .expect("header");
        time_to_close(&mut s, Duration::from_secs(5))
            .await
            .expect("client closed after the backend reset");
    }
    // The client sees its close a moment before the task that served it ends.
    w.wait_active("resetter", 0, Duration::from_secs(5)).await;
    assert_eq!(w.admin_get("/healthz").await.0, 200);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_real_clients_are_refused_quickly() {
    let nodes = cluster().await;
    let w = Warren::start(&config_yaml(&nodes, "max_connections: 10\n")).await;
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(amqp_connect(&w.url()).await);
    }
    let start = tokio::time::Instant::now();
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect(&w.url(), lapin::ConnectionProperties::default()),
    )
    .await
    .expect("refused, not left hanging");
    assert!(refused.is_err(), "the 11th connection must be refused");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(w.admin_get("/readyz").await.0, 200);
    let c = conns.pop().expect("one");
    let _ = c.close(200, "bye".into()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    conns.push(amqp_connect(&w.url()).await);
    for c in conns {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}

/// A sink backend in a process of its own (this one's descriptors go to clients).
struct PySink {
    child: std::process::Child,
    addr: SocketAddr,
}

impl PySink {
    async fn start() -> PySink {
        let port = free_port();
        let code = format!(
            "import asyncio\n\
             async def h(r, w):\n\
             \x20   while await r.read(4096): pass\n\
             \x20   w.close()\n\
             async def main():\n\
             \x20   s = await asyncio.start_server(h, '127.0.0.1', {port}, backlog=4096)\n\
             \x20   await s.serve_forever()\n\
             asyncio.run(main())\n"
        );
        let child = std::process::Command::new("python3")
            .args(["-c", &code])
            .spawn()
            .expect("python3 runs");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = tokio::time::Instant::now();
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sink did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        PySink { child, addr }
    }
}

impl Drop for PySink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 20,000 connection attempts against a cap of 8,000: the cap holds, the rest are
/// refused at once, memory stays bounded and the admin API keeps answering.
/// (Descriptor limits here are 20,000 per process, so this process keeps at most
/// the accepted connections plus one batch open.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_connections_stay_bounded_and_admin_answers() {
    let _turn = sharing().await;
    let sink = PySink::start().await;
    let cap = 8_000;
    let p = WarrenProcess::start(
        &format!(
            "max_connections: {cap}\nhealth:\n  interval: 1h\nbackends:\n  - {{name: sink, address: '{}'}}\n",
            sink.addr
        ),
        20_000,
    )
    .await;
    let (_, rss_before) = p.cpu_and_rss();
    let mut held: Vec<TcpStream> = Vec::with_capacity(cap + 1000);
    let mut refused = 0usize;
    let mut buf = [0u8; 16];
    for batch in 0..20 {
        let mut fresh = Vec::with_capacity(1000);
        for _ in 0..1000 {
            if let Ok(mut s) = TcpStream::connect(p.amqp).await {
                let _ = s.write_all(warren::proxy::amqp::PROTOCOL_HEADER).await;
                fresh.push(s);
            } else {
                refused += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Keep the ones warren kept; count and drop the ones it refused.
        for s in fresh {
            match s.try_read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held.push(s),
                _ => refused += 1,
            }
        }
        if batch % 5 == 4 {
            let t = tokio::time::Instant::now();
            let (status, _) = admin_request(p.admin, "GET", "/healthz").await;
            assert_eq!(status, 200);
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "admin stalled: {:?}",
                t.elapsed()
            );
        }
    }
    let (_, rss_after) = p.cpu_and_rss();
    eprintln!(
        "20000 attempts: {} held, {refused} refused, warren RSS {} -> {} MB",
        held.len(),
        rss_before / 1_000_000,
        rss_after / 1_000_000
    );
    assert_eq!(held.len(), cap, "exactly max_connections stay open");
    assert_eq!(refused, 20_000 - cap);
    assert!(
        rss_after < rss_before + 200_000_000,
        "memory not bounded: {rss_after}"
    );
    let (status, _) = admin_request(p.admin, "GET", "/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_descriptor_exhaustion_backs_off_instead_of_spinning() {
    let backend = sink_backend().await;
    // 64 descriptors: a few for the runtime, the listeners and the logs; the rest
    // go quickly, and accept(2) then fails with EMFILE.
    let p = WarrenProcess::start(
        &format!("health:\n  interval: 1h\nbackends:\n  - {{name: sink, address: '{backend}'}}\n"),
        64,
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..80 {
        if let Ok(mut s) = TcpStream::connect(p.amqp).await {
            let _ = s.write_all(warren::proxy::amqp::PROTOCOL_HEADER).await;
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu0, _) = p.cpu_and_rss();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu1, _) = p.cpu_and_rss();
    let busy = (cpu1 - cpu0) / 3.0;
    eprintln!(
        "CPU while out of descriptors: {:.1}% of a core",
        busy * 100.0
    );
    assert!(busy < 0.3, "accept loop spins at {:.0}% CPU", busy * 100.0);
    assert!(
        p.logs().contains("accept failed"),
        "EMFILE not reported: {}",
        p.logs()
    );
    // Once descriptors are free again, it accepts again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut s = TcpStream::connect(p.amqp).await.expect("connect");
    s.write_all(warren::proxy::amqp::PROTOCOL_HEADER)
        .await
        .expect("header");
    assert!(
        time_to_close(&mut s, Duration::from_millis(500))
            .await
            .is_none(),
        "not served again: {}",
        p.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_mutations_and_oversized_bodies_are_refused() {
    let nodes = cluster().await;
    let token_file = std::env::temp_dir().join(unique("token"));
    std::fs::write(&token_file, "s3cret-token-0123456789\n").expect("token file");
    let w = Warren::start(&config_yaml(
        &nodes,
        &format!(
            "admin:\n  listen: 127.0.0.1:0\n  token_file: {}\n",
            token_file.display()
        ),
    ))
    .await;
    let b = &nodes[0].backend;
    assert_eq!(
        w.admin_post(&format!("/api/backends/{b}/disable")).await.0,
        401
    );
    assert_eq!(
        w.backend(b).await["state"],
        "up",
        "nothing changed without the token"
    );
    assert_eq!(
        w.admin_get("/api/backends").await.0,
        200,
        "reads need no token"
    );
    let with = |t: &str| {
        format!("POST /api/backends/{b}/disable HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {t}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", w.admin)
    };
    let raw = |req: String| async move {
        let mut s = TcpStream::connect(w.admin).await.expect("connect");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    };
    assert!(raw(with("wrong-token-0123456789"))
        .await
        .starts_with("HTTP/1.1 401"));
    assert!(raw(with("s3cret-token-0123456789"))
        .await
        .starts_with("HTTP/1.1 200"));
    assert_eq!(w.backend(b).await["state"], "disabled");
    // Refused for its size even with the token (without it, 401 comes first).
    let big = format!("POST /api/backends/x/enable HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer s3cret-token-0123456789\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n", w.admin);
    assert!(raw(big).await.starts_with("HTTP/1.1 413"));
    let (_, all) = w.admin_get("/api/backends").await;
    let (_, metrics) = w.admin_get("/metrics").await;
    for text in [&all, &metrics] {
        assert!(!text.contains("s3cret"), "token leaked");
    }
    w.stop().await;
}
