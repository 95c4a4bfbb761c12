//! The bulk path (large payloads through pooled buffers, or spliced through
//! pipes with `data_path.splice`; `src/proxy/bulk.rs`) under a drain: the
//! client must still get whole frames, then `connection.close` 320 exactly at
//! a frame boundary; and the spliced path's fallback to copying.

use std::time::Duration;

use crate::common::*;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warren::proxy::amqp::{self, FrameTracker, Seen};

const BODY: usize = 1024 * 1024;

fn body_frame(n: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(BODY + 8);
    f.push(3);
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&(BODY as u32).to_be_bytes());
    f.extend((0..BODY as u32).map(|i| (i.wrapping_add(n) % 251) as u8));
    f.push(amqp::FRAME_END);
    f
}

/// A stand-in broker that streams 1 MiB body frames until it is sent
/// `connection.close`, then answers `close-ok` at its next frame boundary.
async fn streaming_backend(l: TcpListener) {
    while let Ok((s, _)) = l.accept().await {
        tokio::spawn(async move {
            let (mut rd, mut wr) = s.into_split();
            let mut header = [0u8; 8];
            // The health checker's probe connects and closes without a byte.
            if rd.read_exact(&mut header).await.is_err() {
                return;
            }
            let (close_tx, mut close_rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let mut t = FrameTracker::client_to_server();
                t.feed(&header, false);
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    t.feed(&buf[..n], false);
                    if t.take_seen() == Some(Seen::ConnectionClose) {
                        let _ = close_tx.send(());
                        return;
                    }
                }
            });
            let mut n = 0u32;
            loop {
                if close_rx.try_recv().is_ok() {
                    let _ = wr.write_all(&amqp::connection_close_ok()).await;
                    return;
                }
                if wr.write_all(&body_frame(n)).await.is_err() {
                    return;
                }
                n = n.wrapping_add(1);
            }
        });
    }
}

/// Copied (the default) and spliced (`data_path.splice`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_during_bulk_body_frames_closes_at_a_boundary() {
    let _turn = sharing().await;
    for splice in [false, true] {
        drain_during_bulk_body_frames(splice).await;
    }
}

async fn drain_during_bulk_body_frames(splice: bool) {
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let baddr = backend.local_addr().expect("addr");
    tokio::spawn(streaming_backend(backend));
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nhealth:\n  interval: 1h\n\
         drain:\n  window: 0s\ndata_path:\n  splice: {splice}\n\
         backends:\n  - name: stream\n    address: {baddr}\n"
    );
    let w = Warren::start(&yaml).await;
    let bulk_before = warren::proxy::buffer::bytes_moved();
    let mut c = TcpStream::connect(w.amqp).await.expect("connect");
    c.write_all(amqp::PROTOCOL_HEADER).await.expect("header");
    // The client's `connection.open` (vhost "/"): until warren has seen it
    // admitted, it follows every byte without reading ahead (clients.handshake).
    let open = [0, 10, 0, 40, 1, b'/', 0, 0];
    let mut frame = vec![amqp::FRAME_METHOD, 0, 0];
    frame.extend_from_slice(&(open.len() as u32).to_be_bytes());
    frame.extend_from_slice(&open);
    frame.push(amqp::FRAME_END);
    c.write_all(&frame).await.expect("connection.open");
    let mut bodies = 0u32;
    let close = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (ftype, channel, payload) = read_frame(&mut c).await;
            if ftype == 3 {
                assert_eq!(payload.len(), BODY);
                // Every byte of every body arrives in place.
                let first = payload[0] as u32;
                assert!(
                    payload
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b as u32 == (i as u32 + first) % 251),
                    "body {bodies} changed on the way"
                );
                bodies += 1;
                if bodies == 8 {
                    let (status, body) = w.admin_post("/api/backends/stream/drain").await;
                    assert_eq!(status, 200, "{body}");
                }
                continue;
            }
            return (ftype, channel, payload);
        }
    })
    .await
    .expect("connection.close within 60 s");
    let (ftype, channel, payload) = close;
    assert_eq!((ftype, channel), (amqp::FRAME_METHOD, 0), "{payload:?}");
    assert_eq!(&payload[..4], &[0, 10, 0, 50], "connection.close");
    assert_eq!(&payload[4..6], &amqp::CONNECTION_FORCED.to_be_bytes());
    assert!(bodies >= 8);
    // The bodies took the bulk path, not the frame-by-frame one.
    assert!(
        warren::proxy::buffer::bytes_moved() - bulk_before >= 4 * BODY as u64,
        "the body frames did not take the bulk path"
    );
    c.write_all(&amqp::connection_close_ok())
        .await
        .expect("close-ok");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest))
        .await
        .expect("warren closes after close-ok")
        .expect("clean close");
    assert!(rest.is_empty(), "nothing after connection.close: {rest:?}");
    w.stop().await;
}

/// Copied (the default) and spliced (`data_path.splice`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_of_large_messages_gets_320_on_drain() {
    for splice in [false, true] {
        consumer_of_large_messages_on_drain(splice).await;
    }
}

async fn consumer_of_large_messages_on_drain(splice: bool) {
    let nodes = cluster().await;
    let queue = unique("q-bulk-drain");
    // Fill the queue directly on the first node.
    let direct = amqp_connect(&nodes[0].url()).await;
    let pch = confirmed_queue(&direct, &queue, QueueDeclareOptions::default()).await;
    let big = vec![0x42u8; 512 * 1024];
    for _ in 0..40 {
        publish_confirmed(&pch, &queue, &big).await;
    }
    // The consumer goes through warren to the same node.
    let w = Warren::start(&config_yaml(
        &nodes[..1],
        &format!("health:\n  interval: 1h\ndrain:\n  window: 0s\ndata_path:\n  splice: {splice}\n"),
    ))
    .await;
    let conn = amqp_connect(&w.url()).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(4, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut deliveries = ch
        .basic_consume(
            queue.as_str().into(),
            "bulk".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let first = deliveries
        .next()
        .await
        .expect("stream open")
        .expect("delivery");
    assert_eq!(first.data.len(), big.len());
    first.ack(BasicAckOptions::default()).await.expect("ack");
    // Listen for the error before the drain starts, so it cannot be missed.
    let drain_path = format!("/api/backends/{}/drain", nodes[0].backend);
    let (err, (status, body)) = tokio::join!(
        next_error(&conn, Duration::from_secs(20)),
        w.admin_post(&drain_path)
    );
    assert_eq!(status, 200, "{body}");
    let err = err.expect("the connection is closed by the drain");
    assert_eq!(reply_code(&err), Some(320), "{err:?}");
    delete_queue(&pch, &queue).await;
    w.stop().await;
}

/// The limit on descriptors that leaves process `pid` exactly `free` of them:
/// the number of the `free + 1`th unused descriptor.
fn nofile_leaving(pid: u32, free: usize) -> u64 {
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's descriptors")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..)
        .filter(|fd| !open.contains(fd))
        .nth(free)
        .expect("a free descriptor")
}

fn set_nofile(pid: u32, soft: u64) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:1024")])
        .status()
        .expect("prlimit runs");
    assert!(status.success(), "prlimit: {status}");
}

/// Spliced payloads (`data_path.splice`) fall back to copying, on a real
/// node: a warren left with descriptors for a client's two sockets and none
/// for a pipe copies the 128 KiB body frames of a 1 MiB message instead, logs
/// that once and counts it; the message arrives whole. With descriptors back
/// the payloads are spliced again: the count stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_descriptor_for_a_pipe_payloads_are_copied_and_counted() {
    let nodes = cluster().await;
    let node = &nodes[0];
    let p = WarrenProcess::start(
        &format!(
            "health:\n  interval: 1h\ndata_path:\n  splice: true\nbackends:\n  - {{name: {}, address: '{}'}}\n",
            node.backend, node.amqp
        ),
        1024,
    )
    .await;
    let queue = unique("q-splice-fallback");
    let direct = amqp_connect(&node.url()).await;
    let check = direct.create_channel().await.expect("channel");
    declare_queue(&check, &queue, QueueDeclareOptions::default()).await;
    // Settled: the first health check has come and gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_nofile(p.pid(), nofile_leaving(p.pid(), 2));
    let conn = amqp_connect(&p.url()).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let body = |seed: u8| -> Vec<u8> {
        (0..1024 * 1024u32)
            .map(|i| (i % 251) as u8 ^ seed)
            .collect()
    };
    publish_confirmed(&ch, &queue, &body(1)).await;
    set_nofile(p.pid(), 1024);
    let fallbacks = || async {
        let (status, text) = admin_request(p.admin, "GET", "/metrics").await;
        assert_eq!(status, 200, "{text}");
        Metrics(text).value(
            "warren_splice_fallbacks_total",
            &[("reason", "descriptors")],
        )
    };
    let copied = fallbacks().await;
    assert!(copied >= 1.0, "no fallback counted: {}", p.logs());
    assert_eq!(
        p.logs().matches("no pipe for splice").count(),
        1,
        "{}",
        p.logs()
    );
    publish_confirmed(&ch, &queue, &body(2)).await;
    assert_eq!(
        fallbacks().await,
        copied,
        "copied again with descriptors free"
    );
    for seed in [1, 2] {
        let got = check
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
            .expect("a message");
        assert!(got.delivery.data == body(seed), "message {seed} changed");
    }
    eprintln!("splice fallback: {copied} payloads copied for want of a pipe");
    delete_queue(&check, &queue).await;
}
