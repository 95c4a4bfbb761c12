//! Load generator and test servers for `scripts/bench` (not a test: it measures,
//! prints and asserts nothing). Run `loadgen help` for the modes.
//!
//! Every client mode speaks the shape of AMQP 0-9-1 (the 8-byte protocol header,
//! then frames) so that warren follows frames as it does for real clients; the
//! servers are small stand-ins that a real node cannot replace at these rates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
const USAGE: &str = "\
loadgen serve --sink ADDR... --echo ADDR [--broker ADDR] [--broker-sink ADDR]
                                          sink (read to EOF) and echo servers; a broker
                                          stand-in that answers the AMQP handshake
                                          (start, tune, open-ok), then echoes (--broker)
                                          or reads to EOF (--broker-sink)
loadgen idle ADDR N HOLD_SECS             N connections that send the AMQP header and idle;
                                          prints `ready` once all are open
loadgen latency SAMPLES SIZE ADDR...      ping-pong of SIZE-byte frames, the addresses taking
                                          turns; prints `p50_us p99_us` per address
loadgen connrate SECS WORKERS ADDR...     connect, send the AMQP header, close; the addresses
                                          take turns in 250 ms slices; prints conns/s per
                                          address (from 127.0.0.2-254 in turn, so that
                                          TIME_WAIT sockets never exhaust local ports)
loadgen handshakes SECS WORKERS ADDR...   connect, the whole AMQP handshake (start-ok with a
                                          client's properties, tune-ok, open), close; the
                                          addresses take turns in 250 ms slices; prints
                                          handshakes/s per address (needs --broker behind)
loadgen latency-amqp SAMPLES SIZE ADDR... `latency` after the whole handshake
loadgen bulk ADDR SECS STREAMS FRAME      the whole AMQP handshake, then body frames of FRAME
                                          bytes (needs --broker-sink behind); prints bytes/s, bytes
loadgen confirms SECS SIZE WINDOW URL...  lapin publishers with confirms, the URLs taking turns
                                          in 500 ms slices; prints msgs/s per URL
loadgen report FILE                       medians and ratios from `figure<TAB>path<TAB>value` lines";

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("loadgen: {e}\n{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

type Res<T> = Result<T, String>;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Res<T> {
    args.get(i)
        .ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| format!("bad {what}: {}", args[i]))
}

fn runtime(threads: usize) -> Res<tokio::runtime::Runtime> {
    let mut b = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().map_err(|e| e.to_string())
}

fn run(args: &[String]) -> Res<()> {
    let mode = args.first().map(String::as_str).unwrap_or("help");
    match mode {
        "serve" => {
            let mut sink = Vec::new();
            let mut echo = None;
            let mut broker = None;
            let mut broker_sink = None;
            let mut i = 1;
            while i + 1 < args.len() {
                match args[i].as_str() {
                    "--sink" => sink.push(arg::<SocketAddr>(args, i + 1, "sink address")?),
                    "--echo" => echo = Some(arg::<SocketAddr>(args, i + 1, "echo address")?),
                    "--broker" => broker = Some(arg::<SocketAddr>(args, i + 1, "broker address")?),
                    "--broker-sink" => {
                        broker_sink = Some(arg::<SocketAddr>(args, i + 1, "broker sink address")?)
                    }
                    other => return Err(format!("unknown option {other}")),
                }
                i += 2;
            }
            runtime(2)?.block_on(serve(sink, echo, broker, broker_sink))
        }
        "idle" => {
            let addr: SocketAddr = arg(args, 1, "address")?;
            let n: usize = arg(args, 2, "connection count")?;
            let hold: u64 = arg(args, 3, "hold seconds")?;
            runtime(1)?.block_on(idle(addr, n, Duration::from_secs(hold)))
        }
        "latency" | "latency-amqp" => {
            let samples: usize = arg(args, 1, "samples")?;
            let size: usize = arg(args, 2, "size")?;
            let addrs = (3..args.len())
                .map(|i| arg::<SocketAddr>(args, i, "address"))
                .collect::<Res<Vec<_>>>()?;
            let handshake = mode == "latency-amqp";
            runtime(1)?.block_on(latency(&addrs, samples, size, handshake))
        }
        "handshakes" => {
            let secs: f64 = arg(args, 1, "seconds")?;
            let workers: usize = arg(args, 2, "workers")?;
            let addrs = (3..args.len())
                .map(|i| arg::<SocketAddr>(args, i, "address"))
                .collect::<Res<Vec<_>>>()?;
            if addrs.is_empty() {
                return Err("missing address".into());
            }
            runtime(1)?.block_on(rate(
                &addrs,
                Duration::from_secs_f64(secs),
                workers,
                Visit::Handshake,
            ))
        }
        "connrate" => {
            let secs: f64 = arg(args, 1, "seconds")?;
            let workers: usize = arg(args, 2, "workers")?;
            let addrs = (3..args.len())
                .map(|i| arg::<SocketAddr>(args, i, "address"))
                .collect::<Res<Vec<_>>>()?;
            if addrs.is_empty() {
                return Err("missing address".into());
            }
            runtime(1)?.block_on(rate(
                &addrs,
                Duration::from_secs_f64(secs),
                workers,
                Visit::Header,
            ))
        }
        "bulk" => {
            let addr: SocketAddr = arg(args, 1, "address")?;
            let secs: f64 = arg(args, 2, "seconds")?;
            let streams: usize = arg(args, 3, "streams")?;
            let frame: usize = arg(args, 4, "frame size")?;
            runtime(1)?.block_on(bulk(addr, Duration::from_secs_f64(secs), streams, frame))
        }
        "confirms" => {
            let secs: f64 = arg(args, 1, "seconds")?;
            let size: usize = arg(args, 2, "size")?;
            let window: usize = arg(args, 3, "window")?;
            let urls = args.get(4..).unwrap_or_default().to_vec();
            if urls.is_empty() {
                return Err("missing url".into());
            }
            runtime(2)?.block_on(confirms(urls, Duration::from_secs_f64(secs), size, window))
        }
        "report" => report(args.get(1).ok_or("missing file")?),
        _ => {
            println!("{USAGE}");
            Ok(())
        }
    }
}

async fn serve(
    sink: Vec<SocketAddr>,
    echo: Option<SocketAddr>,
    broker: Option<SocketAddr>,
    broker_sink: Option<SocketAddr>,
) -> Res<()> {
    let mut tasks = Vec::new();
    for addr in sink {
        let l = listen(addr).map_err(|e| format!("{addr}: {e}"))?;
        tasks.push(tokio::spawn(accept_loop(l, Server::Sink)));
    }
    if let Some(addr) = echo {
        let l = listen(addr).map_err(|e| format!("{addr}: {e}"))?;
        tasks.push(tokio::spawn(accept_loop(l, Server::Echo)));
    }
    if let Some(addr) = broker {
        let l = listen(addr).map_err(|e| format!("{addr}: {e}"))?;
        tasks.push(tokio::spawn(accept_loop(l, Server::Broker)));
    }
    if let Some(addr) = broker_sink {
        let l = listen(addr).map_err(|e| format!("{addr}: {e}"))?;
        tasks.push(tokio::spawn(accept_loop(l, Server::BrokerSink)));
    }
    println!("serving");
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// A listener with a backlog deep enough for connection storms (the default of
/// 128 drops SYNs, and every dropped SYN costs its client a 1 s retransmit).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(4096)
}

#[derive(Clone, Copy)]
enum Server {
    Sink,
    Echo,
    /// The AMQP handshake of a broker, then echo.
    Broker,
    /// The AMQP handshake of a broker, then read to EOF.
    BrokerSink,
}

async fn accept_loop(l: TcpListener, server: Server) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        match server {
            Server::Sink => tokio::spawn(sink_conn(s)),
            Server::Echo => tokio::spawn(echo_conn(s)),
            Server::Broker => tokio::spawn(async move {
                if let Ok(s) = broker_handshake(s).await {
                    echo_conn(s).await;
                }
            }),
            Server::BrokerSink => tokio::spawn(async move {
                if let Ok(s) = broker_handshake(s).await {
                    sink_conn(s).await;
                }
            }),
        };
    }
}

/// A channel-0 method frame of the connection class.
fn method_frame(method: u16, args: &[u8]) -> Vec<u8> {
    let mut f = vec![1, 0, 0];
    f.extend_from_slice(&(4 + args.len() as u32).to_be_bytes());
    f.extend_from_slice(&10u16.to_be_bytes());
    f.extend_from_slice(&method.to_be_bytes());
    f.extend_from_slice(args);
    f.push(0xCE);
    f
}

/// Reads frames until a connection method `method` (class 10) arrives.
async fn read_method(s: &mut TcpStream, method: u16) -> std::io::Result<()> {
    let mut head = [0u8; 7];
    let mut payload = Vec::new();
    loop {
        s.read_exact(&mut head).await?;
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        payload.resize(size + 1, 0);
        s.read_exact(&mut payload).await?;
        if head[0] == 1 && size >= 4 && payload[..4] == [0, 10, (method >> 8) as u8, method as u8] {
            return Ok(());
        }
    }
}

/// The broker's side of the handshake: header, start, start-ok, tune, tune-ok,
/// open, open-ok.
async fn broker_handshake(mut s: TcpStream) -> std::io::Result<TcpStream> {
    let mut header = [0u8; 8];
    s.read_exact(&mut header).await?;
    let mut start = vec![0, 9, 0, 0, 0, 0];
    start.extend_from_slice(&5u32.to_be_bytes());
    start.extend_from_slice(b"PLAIN");
    start.extend_from_slice(&5u32.to_be_bytes());
    start.extend_from_slice(b"en_US");
    s.write_all(&method_frame(10, &start)).await?;
    read_method(&mut s, 11).await?;
    let tune = [0x07, 0xff, 0x00, 0x02, 0x00, 0x00, 0x00, 0x3c];
    s.write_all(&method_frame(30, &tune)).await?;
    read_method(&mut s, 40).await?;
    s.write_all(&method_frame(41, &[0])).await?;
    Ok(s)
}

/// The client's side of the handshake, with client properties the size of
/// pika's: header, start-ok, tune-ok, open, then waits for open-ok.
async fn client_handshake(s: &mut TcpStream) -> std::io::Result<()> {
    fn long(v: &mut Vec<u8>, b: &[u8]) {
        v.extend_from_slice(&(b.len() as u32).to_be_bytes());
        v.extend_from_slice(b);
    }
    fn string(v: &mut Vec<u8>, key: &str, value: &str) {
        v.push(key.len() as u8);
        v.extend_from_slice(key.as_bytes());
        v.push(b'S');
        long(v, value.as_bytes());
    }
    s.write_all(PROTOCOL_HEADER).await?;
    read_method(s, 10).await?;
    let mut props = Vec::new();
    string(&mut props, "product", "Pika Python Client Library");
    string(&mut props, "version", "1.4.4");
    string(&mut props, "platform", "Python 3.11.7");
    string(&mut props, "information", "See https://pika.readthedocs.io");
    let mut caps = Vec::new();
    for cap in [
        "authentication_failure_close",
        "basic.nack",
        "connection.blocked",
        "consumer_cancel_notify",
        "publisher_confirms",
    ] {
        caps.push(cap.len() as u8);
        caps.extend_from_slice(cap.as_bytes());
        caps.extend_from_slice(b"t\x01");
    }
    props.push(12);
    props.extend_from_slice(b"capabilitiesF");
    long(&mut props, &caps);
    string(&mut props, "connection_name", "loadgen");
    let mut start_ok = Vec::new();
    long(&mut start_ok, &props);
    start_ok.push(5);
    start_ok.extend_from_slice(b"PLAIN");
    long(&mut start_ok, b"\0guest\0guest");
    start_ok.push(5);
    start_ok.extend_from_slice(b"en_US");
    s.write_all(&method_frame(11, &start_ok)).await?;
    read_method(s, 30).await?;
    let mut next = method_frame(31, &[0x07, 0xff, 0x00, 0x02, 0x00, 0x00, 0x00, 0x3c]);
    next.extend(method_frame(40, b"\x01/\x00\x00"));
    s.write_all(&next).await?;
    read_method(s, 41).await
}

async fn echo_conn(mut s: TcpStream) {
    let mut buf = vec![0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
}

thread_local! {
    static SINK: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 256 * 1024]);
}

/// Reads to EOF into a per-thread buffer, so 10,000 idle sink connections cost
/// no buffers.
async fn sink_conn(s: TcpStream) {
    loop {
        if s.readable().await.is_err() {
            return;
        }
        let r = SINK.with(|b| s.try_read(&mut b.borrow_mut()));
        match r {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

async fn idle(addr: SocketAddr, n: usize, hold: Duration) -> Res<()> {
    let mut conns = Vec::with_capacity(n);
    let mut pending = FuturesUnordered::new();
    let mut started = 0;
    while conns.len() < n {
        while started < n && pending.len() < 256 {
            started += 1;
            pending.push(async move {
                let mut s = TcpStream::connect(addr).await?;
                s.write_all(PROTOCOL_HEADER).await?;
                Ok::<_, std::io::Error>(s)
            });
        }
        match pending.next().await {
            Some(Ok(s)) => conns.push(s),
            Some(Err(e)) => return Err(format!("connection {} to {addr}: {e}", conns.len())),
            None => break,
        }
    }
    // Let the proxy finish its side (backend connects) before it is measured.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!("ready {}", conns.len());
    tokio::time::sleep(hold).await;
    drop(conns);
    Ok(())
}

/// A method frame on channel 1 of `size` bytes in all.
fn frame(ftype: u8, size: usize) -> Vec<u8> {
    let payload = size.saturating_sub(8);
    let mut f = Vec::with_capacity(payload + 8);
    f.push(ftype);
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&(payload as u32).to_be_bytes());
    f.extend((0..payload).map(|i| (i % 251) as u8));
    f.push(0xCE);
    f
}

/// Ping-pong on one connection per address, the addresses taking turns sample
/// by sample, so that a noisy machine disturbs every path alike.
async fn latency(addrs: &[SocketAddr], samples: usize, size: usize, handshake: bool) -> Res<()> {
    let req = frame(1, size);
    let mut back = vec![0u8; req.len().max(8)];
    let mut conns = Vec::new();
    for addr in addrs {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        if handshake {
            client_handshake(&mut s)
                .await
                .map_err(|e| format!("{addr}: handshake: {e}"))?;
        } else {
            s.write_all(PROTOCOL_HEADER)
                .await
                .map_err(|e| e.to_string())?;
            s.read_exact(&mut back[..8])
                .await
                .map_err(|e| e.to_string())?;
        }
        conns.push(s);
    }
    let warmup = samples / 10;
    let mut rtts = vec![Vec::with_capacity(samples); conns.len()];
    for i in 0..warmup + samples {
        for (s, rtt) in conns.iter_mut().zip(rtts.iter_mut()) {
            let t = Instant::now();
            s.write_all(&req).await.map_err(|e| e.to_string())?;
            s.read_exact(&mut back[..req.len()])
                .await
                .map_err(|e| e.to_string())?;
            if i >= warmup {
                rtt.push(t.elapsed().as_nanos() as f64 / 1000.0);
            }
        }
    }
    for mut r in rtts {
        r.sort_by(f64::total_cmp);
        println!("{:.2} {:.2}", pct(&r, 0.50), pct(&r, 0.99));
    }
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The order of `n` paths in round `round`: each takes each place in turn. A
/// path's rate depends on which one ran just before it (measured: of two
/// proxies in a row the second lost up to a quarter of its connection rate;
/// four direct paths in a row showed no such effect), so a fixed order would
/// favour some paths.
fn turns(round: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |j| (round + j) % n)
}

/// What one visit of [`rate`] does on a new connection.
#[derive(Clone, Copy)]
enum Visit {
    /// Sends the protocol header and closes.
    Header,
    /// The whole handshake ([`client_handshake`]), then closes.
    Handshake,
}

/// Connection (or handshake) rate per address, the addresses taking turns in
/// slices of a quarter second (so that a noisy machine disturbs every path alike).
async fn rate(addrs: &[SocketAddr], secs: Duration, workers: usize, visit: Visit) -> Res<()> {
    const SLICE: Duration = Duration::from_millis(250);
    let mut done = vec![0u64; addrs.len()];
    let mut spent = vec![Duration::ZERO; addrs.len()];
    let mut errors = 0u64;
    let mut source = 0usize;
    let mut round = 0;
    while spent.iter().any(|s| *s < secs) {
        for k in turns(round, addrs.len()) {
            let addr = &addrs[k];
            let (n, e, took) = connect_burst(*addr, SLICE, workers, source, visit).await;
            source += n as usize + e as usize;
            done[k] += n;
            errors += e;
            spent[k] += took;
        }
        round += 1;
    }
    if errors > 0 {
        eprintln!("loadgen connrate: {errors} failed connections");
    }
    for (n, t) in done.iter().zip(&spent) {
        println!("{:.0}", *n as f64 / t.as_secs_f64());
    }
    Ok(())
}

/// `workers` loops of connect, the visit, close for `len`; (done, failed, time).
async fn connect_burst(
    addr: SocketAddr,
    len: Duration,
    workers: usize,
    first_source: usize,
    visit: Visit,
) -> (u64, u64, Duration) {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + len;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (done, errors) = (done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = first_source + w;
            while Instant::now() < end {
                i += workers;
                let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % 253) as u8);
                let ok = async {
                    let sock = tokio::net::TcpSocket::new_v4()?;
                    sock.bind(SocketAddr::from((source, 0)))?;
                    let mut s = sock.connect(addr).await?;
                    match visit {
                        Visit::Header => s.write_all(PROTOCOL_HEADER).await?,
                        Visit::Handshake => client_handshake(&mut s).await?,
                    }
                    Ok::<_, std::io::Error>(())
                }
                .await;
                match ok {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        start.elapsed(),
    )
}

async fn bulk(addr: SocketAddr, secs: Duration, streams: usize, frame_size: usize) -> Res<()> {
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + secs;
    let mut tasks = Vec::new();
    // Many frames per write, as a client library's buffered writer does.
    let one = frame(3, frame_size);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4).collect();
    let batch = Arc::new(batch);
    for _ in 0..streams {
        let (sent, batch) = (sent.clone(), batch.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            // A publisher's connection is open before it publishes; until its
            // `connection.open`, warren follows every byte before passing it on.
            client_handshake(&mut s).await?;
            while Instant::now() < end {
                s.write_all(&batch).await?;
                sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Ok::<_, std::io::Error>(())
        }));
    }
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("bulk stream: {e}")),
            Err(e) => return Err(e.to_string()),
        }
    }
    let el = start.elapsed().as_secs_f64();
    let total = sent.load(Ordering::Relaxed);
    println!("{:.0} {total}", total as f64 / el);
    Ok(())
}

/// One publisher per URL, taking turns in half-second slices (each slice ends
/// when its confirms are in), so that a noisy machine disturbs every path alike.
async fn confirms(urls: Vec<String>, secs: Duration, size: usize, window: usize) -> Res<()> {
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    const SLICE: Duration = Duration::from_millis(500);
    let mut pubs = Vec::new();
    for url in &urls {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut args = FieldTable::default();
        // Bounded, so a long run cannot fill the node's memory.
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(10_000));
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .map_err(|e| e.to_string())?;
        pubs.push((conn, ch, q.name().as_str().to_string()));
    }
    let body = vec![0x5au8; size];
    let mut confirmed = vec![0u64; pubs.len()];
    let mut spent = vec![Duration::ZERO; pubs.len()];
    let mut round = 0;
    while spent.iter().any(|s| *s < secs) {
        for k in turns(round, pubs.len()) {
            let (_, ch, queue) = &pubs[k];
            let start = Instant::now();
            let end = start + SLICE;
            let mut inflight = FuturesUnordered::new();
            while Instant::now() < end || !inflight.is_empty() {
                while Instant::now() < end && inflight.len() < window {
                    let c = ch
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            BasicProperties::default(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    inflight.push(c);
                }
                if let Some(r) = inflight.next().await {
                    r.map_err(|e| e.to_string())?;
                    confirmed[k] += 1;
                }
            }
            spent[k] += start.elapsed();
        }
        round += 1;
    }
    for (conn, _, _) in pubs {
        let _ = conn.close(200, "bench done".into()).await;
    }
    for (n, t) in confirmed.iter().zip(&spent) {
        println!("{:.0}", *n as f64 / t.as_secs_f64());
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Figures, in print order: (key, label, unit, higher is better).
const FIGURES: &[(&str, &str, &str, bool)] = &[
    ("tput_gbit", "iperf3 4 streams", "Gbit/s", true),
    ("cpu_ms_per_gb", "proxy CPU per GB (iperf3)", "ms", false),
    (
        "machine_cpu_ms_per_gb",
        "whole machine's CPU per GB (iperf3, /proc/stat)",
        "ms",
        false,
    ),
    (
        "added_machine_cpu_ms_per_gb",
        "whole machine's CPU per GB added (iperf3, minus direct's)",
        "ms",
        false,
    ),
    (
        "instructions_per_gb",
        "proxy instructions per GB (iperf3, perf stat)",
        "G",
        false,
    ),
    (
        "amqp_bulk_gbit",
        "AMQP body frames 128 KiB, 4 streams",
        "Gbit/s",
        true,
    ),
    (
        "amqp_bulk_cpu_ms_per_gb",
        "proxy CPU per GB (AMQP frames)",
        "ms",
        false,
    ),
    (
        "amqp_bulk_machine_cpu_ms_per_gb",
        "whole machine's CPU per GB (AMQP frames, /proc/stat)",
        "ms",
        false,
    ),
    (
        "amqp_bulk_added_machine_cpu_ms_per_gb",
        "whole machine's CPU per GB added (AMQP frames, minus direct's)",
        "ms",
        false,
    ),
    (
        "amqp_bulk_instructions_per_gb",
        "proxy instructions per GB (AMQP frames, perf stat)",
        "G",
        false,
    ),
    (
        "idle_rss_mb",
        "RSS of 10,000 idle connections above baseline",
        "MB",
        false,
    ),
    (
        "idle_fds_per_conn",
        "fds per connection beyond its 2 sockets",
        "",
        false,
    ),
    ("lat_p50_us", "round trip 200 B, p50", "us", false),
    ("lat_p99_us", "round trip 200 B, p99", "us", false),
    ("added_p50_us", "added latency p50", "us", false),
    ("added_p99_us", "added latency p99", "us", false),
    (
        "conn_per_s",
        "new connections (connect, header, close)",
        "/s",
        true,
    ),
    (
        "confirms_per_s",
        "publish with confirms, 3-node cluster",
        "msg/s",
        true,
    ),
    (
        "health_cpu_pct",
        "health checks of 3 nodes every 2 s, idle proxy",
        "% of a core",
        false,
    ),
    (
        "health_page_cpu_pct",
        "the same, one status page open (headless Chromium)",
        "% of a core",
        false,
    ),
];

/// Figures of warren with `clients.handshake` on and off (paths `on` and
/// `off`, one value each per repetition, in the same order).
const ON_OFF: &[(&str, &str, &str)] = &[
    (
        "hs_per_s",
        "whole AMQP handshakes (start-ok .. open-ok), then close",
        "handshakes/s",
    ),
    (
        "hs_lat_p50_us",
        "round trip of a 200-byte frame after the handshake, p50",
        "us",
    ),
    (
        "hs_lat_p99_us",
        "round trip of a 200-byte frame after the handshake, p99",
        "us",
    ),
];

/// The on/off table: medians, and min / median / max of the ratio on/off of
/// each repetition (the two ran in turns within it).
fn on_off(values: &HashMap<(String, String), Vec<f64>>) {
    let rows: Vec<_> = ON_OFF
        .iter()
        .filter_map(|(key, label, unit)| {
            let on = values.get(&(key.to_string(), "on".to_string()))?;
            let off = values.get(&(key.to_string(), "off".to_string()))?;
            Some((label, unit, on.clone(), off.clone()))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    println!();
    println!("warren reading the handshake (`clients.handshake: true`) or not (`false`):");
    println!();
    println!("| figure | unit | on | off | on/off (median of each) | on/off per repetition: min / median / max | runs |");
    println!("|---|---|---|---|---|---|---|");
    for (label, unit, mut on, mut off) in rows {
        let mut ratios: Vec<f64> = on
            .iter()
            .zip(&off)
            .filter(|(_, b)| **b != 0.0)
            .map(|(a, b)| a / b)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let runs = ratios.len();
        let (mon, moff) = (median(&mut on), median(&mut off));
        let spread = if ratios.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{:.3} / {:.3} / {:.3}",
                ratios[0],
                median(&mut ratios.clone()),
                ratios[runs - 1]
            )
        };
        println!(
            "| {label} | {unit} | {mon:.1} | {moff:.1} | {:.3} | {spread} | {runs} |",
            if moff != 0.0 { mon / moff } else { f64::NAN }
        );
    }
}

/// min / median / max of `a[i] / b[i]`, each pair from one repetition (the
/// paths take turns within it); `None` unless both have the same number of
/// values (one per repetition).
fn spread(a: Option<&Vec<f64>>, b: Option<&Vec<f64>>) -> Option<(f64, f64, f64, usize)> {
    let (a, b) = (a?, b?);
    if a.is_empty() || a.len() != b.len() {
        return None;
    }
    let mut r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, y)| **y != 0.0)
        .map(|(x, y)| x / y)
        .collect();
    let n = r.len();
    if n == 0 {
        return None;
    }
    let m = median(&mut r);
    Some((r[0], m, r[n - 1], n))
}

/// Per repetition, warren against direct and against HAProxy: the spread that
/// a decision taken on these figures must exceed.
fn per_repetition(values: &HashMap<(String, String), Vec<f64>>) {
    let get = |k: &str, p: &str| values.get(&(k.to_string(), p.to_string()));
    let show = |x: Option<(f64, f64, f64, usize)>| match x {
        Some((lo, m, hi, _)) => format!("{lo:.2} / {m:.2} / {hi:.2}"),
        None => "-".to_string(),
    };
    let rows: Vec<_> = FIGURES
        .iter()
        // The added latencies are one value per run, not per repetition.
        .filter(|(key, ..)| !key.starts_with("added_p"))
        .filter_map(|(key, label, ..)| {
            let wd = spread(get(key, "warren"), get(key, "direct"));
            let wh = spread(get(key, "warren"), get(key, "haproxy"));
            let runs = wd.or(wh)?.3;
            Some((label, wd, wh, runs))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    println!();
    println!("Ratios within each repetition, min / median / max:");
    println!();
    println!("| figure | warren/direct | warren/haproxy | runs |");
    println!("|---|---|---|---|");
    for (label, wd, wh, runs) in rows {
        println!("| {label} | {} | {} | {runs} |", show(wd), show(wh));
    }
}

/// The data-path candidates of `BENCH_CANDIDATES` (every path other than
/// direct, HAProxy and warren): each figure's median, and its ratios to
/// direct, HAProxy and warren within each repetition, min / median / max.
fn candidates(values: &HashMap<(String, String), Vec<f64>>) {
    let mut names: Vec<&str> = values
        .keys()
        .map(|(_, p)| p.as_str())
        .filter(|p| !["direct", "haproxy", "warren"].contains(p))
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return;
    }
    let get = |k: &str, p: &str| values.get(&(k.to_string(), p.to_string()));
    let show = |x: Option<(f64, f64, f64, usize)>| match x {
        Some((lo, m, hi, _)) => format!("{lo:.2} / {m:.2} / {hi:.2}"),
        None => "-".to_string(),
    };
    println!();
    println!("Candidates (BENCH_CANDIDATES), ratios within each repetition, min / median / max:");
    println!();
    println!("| figure | candidate | median | x direct | x haproxy | x warren | runs |");
    println!("|---|---|---|---|---|---|---|");
    for (key, label, ..) in FIGURES {
        for name in &names {
            let Some(v) = get(key, name) else { continue };
            let mut m = v.clone();
            let n = m.len();
            let m = median(&mut m);
            println!(
                "| {label} | {name} | {m:.1} | {} | {} | {} | {n} |",
                show(spread(Some(v), get(key, "direct"))),
                show(spread(Some(v), get(key, "haproxy"))),
                show(spread(Some(v), get(key, "warren"))),
            );
        }
    }
}

fn report(file: &str) -> Res<()> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let mut values: HashMap<(String, String), Vec<f64>> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 3 {
            continue;
        }
        if let Ok(v) = f[2].trim().parse::<f64>() {
            values
                .entry((f[0].to_string(), f[1].to_string()))
                .or_default()
                .push(v);
        }
    }
    // Added latency: a proxy's round trip minus the direct one (medians of each).
    for (lat, added) in [
        ("lat_p50_us", "added_p50_us"),
        ("lat_p99_us", "added_p99_us"),
    ] {
        let Some(mut d) = values
            .get(&(lat.to_string(), "direct".to_string()))
            .cloned()
        else {
            continue;
        };
        let direct = median(&mut d);
        for path in ["haproxy", "warren"] {
            if let Some(mut v) = values.get(&(lat.to_string(), path.to_string())).cloned() {
                let n = v.len();
                let m = median(&mut v) - direct;
                values.insert((added.to_string(), path.to_string()), vec![m; n]);
            }
        }
    }
    let med = |fig: &str, path: &str| -> Option<(f64, usize)> {
        let mut v = values.get(&(fig.to_string(), path.to_string()))?.clone();
        let n = v.len();
        Some((median(&mut v), n))
    };
    let show = |x: Option<(f64, usize)>| match x {
        Some((v, _)) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some((v, _)) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some((v, _)) => format!("{v:.2}"),
        None => "-".to_string(),
    };
    let ratio = |a: Option<(f64, usize)>, b: Option<(f64, usize)>| match (a, b) {
        (Some((a, _)), Some((b, _))) if b != 0.0 => format!("{:.2}", a / b),
        _ => "-".to_string(),
    };
    println!(
        "| figure | unit | direct | haproxy-splice | warren | warren/direct | warren/haproxy | runs |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (key, label, unit, _) in FIGURES {
        let (d, h, w) = (med(key, "direct"), med(key, "haproxy"), med(key, "warren"));
        if d.is_none() && h.is_none() && w.is_none() {
            continue;
        }
        let runs = [d, h, w]
            .iter()
            .filter_map(|x| x.map(|(_, n)| n))
            .max()
            .unwrap_or(0);
        println!(
            "| {label} | {unit} | {} | {} | {} | {} | {} | {runs} |",
            show(d),
            show(h),
            show(w),
            ratio(w, d),
            ratio(w, h),
        );
    }
    per_repetition(&values);
    candidates(&values);
    on_off(&values);
    println!();
    println!("Targets (PERF.md), from the medians above:");
    let get = |k: &str, p: &str| med(k, p).map(|x| x.0);
    let check = |name: &str, ok: Option<bool>, detail: String| {
        let verdict = match ok {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        println!("  {verdict:>12}  {name}: {detail}");
    };
    let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    };
    let fmt = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    let wd = r(get("tput_gbit", "warren"), get("tput_gbit", "direct"));
    let wh = r(get("tput_gbit", "warren"), get("tput_gbit", "haproxy"));
    check(
        "throughput >= 0.85x direct and >= 1.15x haproxy",
        wd.zip(wh).map(|(a, b)| a >= 0.85 && b >= 1.15),
        format!("{}x direct, {}x haproxy", fmt(wd), fmt(wh)),
    );
    let cpu = r(
        get("cpu_ms_per_gb", "warren"),
        get("cpu_ms_per_gb", "haproxy"),
    );
    check(
        "CPU per GB <= 0.7x haproxy",
        cpu.map(|c| c <= 0.7),
        format!("{}x", fmt(cpu)),
    );
    let added = r(
        get("added_machine_cpu_ms_per_gb", "warren"),
        get("added_machine_cpu_ms_per_gb", "haproxy"),
    );
    check(
        "whole machine's CPU per GB added <= 0.7x haproxy's",
        added.map(|c| c <= 0.7),
        format!("{}x", fmt(added)),
    );
    let rss = get("idle_rss_mb", "warren");
    let fds = get("idle_fds_per_conn", "warren");
    check(
        "idle: <= 35 MB above baseline, <= 2 extra fds per connection",
        rss.zip(fds).map(|(m, f)| m <= 35.0 && f <= 2.0),
        format!("{} MB, {} fds", fmt(rss), fmt(fds)),
    );
    let (w50, h50) = (
        get("added_p50_us", "warren"),
        get("added_p50_us", "haproxy"),
    );
    let (w99, h99) = (
        get("added_p99_us", "warren"),
        get("added_p99_us", "haproxy"),
    );
    check(
        "added latency p50 and p99 no worse than haproxy",
        match (w50, h50, w99, h99) {
            (Some(a), Some(b), Some(c), Some(d)) => Some(a <= b && c <= d),
            _ => None,
        },
        format!(
            "p50 {} vs {} us, p99 {} vs {} us",
            fmt(w50),
            fmt(h50),
            fmt(w99),
            fmt(h99)
        ),
    );
    let cr = r(get("conn_per_s", "warren"), get("conn_per_s", "haproxy"));
    check(
        "connections/s >= haproxy",
        cr.map(|c| c >= 1.0),
        format!("{}x", fmt(cr)),
    );
    let cf = r(
        get("confirms_per_s", "warren"),
        get("confirms_per_s", "direct"),
    );
    check(
        "confirms >= 0.95x direct",
        cf.map(|c| c >= 0.95),
        format!("{}x", fmt(cf)),
    );
    let hc = get("health_cpu_pct", "warren");
    check(
        "health checking 3 nodes every 2 s < 1% of one core",
        hc.map(|c| c < 1.0),
        format!("{}%", fmt(hc)),
    );
    let page = get("health_page_cpu_pct", "warren");
    check(
        "one open status page adds < 1% of one core",
        hc.zip(page).map(|(h, p)| p - h < 1.0),
        format!("{}% with, {}% without", fmt(page), fmt(hc)),
    );
    Ok(())
}
