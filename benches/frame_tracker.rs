//! What following AMQP frames costs the proxy: feeds the frame tracker the byte
//! streams a broker sends to its clients, in the proxy's read size (64 KiB), and
//! prints the tracker's rate and its CPU time per GB moved, to set against the
//! proxy's whole CPU time per GB from `scripts/bench` (docs/performance.md).
//!
//!   cargo bench --bench frame_tracker
//!
//! Three streams: deliveries of 200-byte messages (the worst case: one method,
//! one header and one body frame per 200 bytes), 4 KiB messages, and 128 KiB
//! bodies split into frame_max-sized (128 KiB) frames.

use std::time::{Duration, Instant};

use warren::proxy::amqp::FrameTracker;

/// One frame: type, channel, size, payload, frame-end.
fn frame(kind: u8, channel: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(0xCE);
}

/// A basic.deliver (60, 60) with its content header and body frames.
fn delivery(body: usize, frame_max: usize, out: &mut Vec<u8>) {
    let mut method = Vec::new();
    method.extend_from_slice(&60u16.to_be_bytes());
    method.extend_from_slice(&60u16.to_be_bytes());
    method.push(11);
    method.extend_from_slice(b"ctag-000001");
    method.extend_from_slice(&42u64.to_be_bytes());
    method.push(0);
    method.push(0);
    method.push(5);
    method.extend_from_slice(b"queue");
    frame(1, 1, &method, out);
    let mut header = Vec::new();
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&(body as u64).to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    frame(2, 1, &header, out);
    let payload = vec![0x5au8; body];
    for chunk in payload.chunks(frame_max - 8) {
        frame(3, 1, chunk, out);
    }
}

fn main() {
    const READ: usize = 64 * 1024;
    const TARGET: usize = 256 * 1024 * 1024;
    println!("| stream | tracker GB/s | tracker CPU ms per GB | frames per 64 KiB read |");
    println!("|---|---|---|---|");
    for (name, body) in [
        ("deliveries of 200 B", 200),
        ("deliveries of 4 KiB", 4096),
        ("deliveries of 128 KiB", 128 * 1024),
    ] {
        let mut one = Vec::new();
        delivery(body, 128 * 1024, &mut one);
        let per = one.len();
        let mut stream = Vec::with_capacity(TARGET + per);
        let mut frames = 0usize;
        while stream.len() < TARGET {
            stream.extend_from_slice(&one);
            frames += 2 + body.div_ceil(128 * 1024 - 8);
        }
        // Best of five passes: the machine is shared, the minimum is the cost.
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let mut t = FrameTracker::server_to_client();
            let start = Instant::now();
            for chunk in stream.chunks(READ) {
                let k = t.feed(std::hint::black_box(chunk), false);
                assert_eq!(k, chunk.len());
                assert!(t.take_seen().is_none());
            }
            assert!(!t.is_lost(), "{name}: the tracker lost the frames");
            best = best.min(start.elapsed());
        }
        let gb = stream.len() as f64 / 1e9;
        println!(
            "| {name} | {:.1} | {:.2} | {:.0} |",
            gb / best.as_secs_f64(),
            best.as_secs_f64() * 1e3 / gb,
            frames as f64 * READ as f64 / stream.len() as f64,
        );
    }
}
