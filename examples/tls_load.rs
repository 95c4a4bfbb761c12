//! Load generator for `scripts/bench-tls` (not part of warren).
//!
//!   tls_load sink --listen ADDR
//!       accepts TCP connections and discards what they send
//!   tls_load bulk --target ADDR --ca FILE [--conns 4] [--secs 10]
//!       TLS connections that send an AMQP protocol header and then 128 KiB AMQP
//!       body frames as fast as they can; prints `bytes_per_sec N`
//!   tls_load handshakes --target ADDR --ca FILE [--conns 16] [--secs 10]
//!       loops of connect, full TLS handshake (no resumption), the 8-byte AMQP
//!       header, close; prints `handshakes_per_sec N`
//!
//! The server certificate must be valid for `localhost`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
    Bulk {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, default_value_t = 4)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    Handshakes {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, default_value_t = 16)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
}

const HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
const FRAME_PAYLOAD: usize = 128 * 1024 - 8;

fn connector(ca: &PathBuf) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA certificate")).expect("usable CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every handshake a full one, for warren and HAProxy alike.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn body_frame() -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_PAYLOAD + 8);
    f.push(3);
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&(FRAME_PAYLOAD as u32).to_be_bytes());
    f.extend(std::iter::repeat_n(0x5a, FRAME_PAYLOAD));
    f.push(0xCE);
    f
}

async fn sink(listen: SocketAddr) {
    let l = TcpListener::bind(listen).await.expect("bind");
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
    }
}

async fn bulk(target: SocketAddr, ca: PathBuf, conns: usize, secs: u64) {
    let connector = connector(&ca);
    let sent = Arc::new(AtomicU64::new(0));
    let frame = Arc::new(body_frame());
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..conns {
        let (connector, sent, frame) = (connector.clone(), sent.clone(), frame.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(target).await.expect("connect");
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from("localhost").expect("name");
            let mut tls = connector.connect(name, tcp).await.expect("handshake");
            tls.write_all(HEADER).await.expect("header");
            while Instant::now() < until {
                tls.write_all(&frame).await.expect("write");
                sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
            }
            let _ = tls.shutdown().await;
        }));
    }
    for t in tasks {
        t.await.expect("bulk task");
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "bytes_per_sec {:.0}",
        sent.load(Ordering::Relaxed) as f64 / took
    );
}

async fn handshakes(target: SocketAddr, ca: PathBuf, conns: usize, secs: u64) {
    let connector = connector(&ca);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (connector, done, failed) = (connector.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let ok = async {
                    let tcp = TcpStream::connect(target).await.ok()?;
                    let _ = tcp.set_nodelay(true);
                    let name = ServerName::try_from("localhost").ok()?;
                    let mut tls = connector.connect(name, tcp).await.ok()?;
                    tls.write_all(HEADER).await.ok()?;
                    tls.shutdown().await.ok()
                }
                .await;
                match ok {
                    Some(()) => done.fetch_add(1, Ordering::Relaxed),
                    None => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.expect("handshake task");
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "handshakes_per_sec {:.0} failed {}",
        done.load(Ordering::Relaxed) as f64 / took,
        failed.load(Ordering::Relaxed)
    );
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Sink { listen } => sink(listen).await,
            Cmd::Bulk {
                target,
                ca,
                conns,
                secs,
            } => bulk(target, ca, conns, secs).await,
            Cmd::Handshakes {
                target,
                ca,
                conns,
                secs,
            } => handshakes(target, ca, conns, secs).await,
        }
    });
}
