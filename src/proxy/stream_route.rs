//! Connections of a `stream` listener (RabbitMQ streams). A stream client asks
//! any node for a stream's `metadata` and then connects to the host and port
//! the broker advertises for its leader (to publish) or a replica (to
//! consume). warren gives each backend a port of its own (`node_ports`) and
//! rewrites what brokers advertise, in the two frames that carry it
//! (`rmq_stream`): the open response's `advertised_host`/`advertised_port`
//! become warren's host and the port of the connection's backend, and each
//! broker of a metadata response becomes warren's host and that broker's
//! port. So a stock client reaches the node the broker chose, through warren.
//! docs/protocols.md has the picture.
//!
//! Which backend a broker of a metadata response is: the one whose open
//! response advertised that host and port (learned as connections go by,
//! `stream_peers`), else among the backends whose stream port is that port
//! the one whose RabbitMQ node name's host matches (what a node advertises
//! unless `stream.advertised_host` is set), else the one whose address's
//! host matches, else the only one (nodes sharing a host).
//!
//! A broker whose node takes no new connections through warren (drained,
//! down, ...) is taken out of each stream's replicas, so that consumers go to
//! a replica they can reach (or the leader) rather than retry one warren
//! turns away; leaders stay as the broker said.
//!
//! Client to broker, bytes are copied as they come; broker to client, frames
//! are followed (size, key) and only those two are read whole. A close that
//! warren orders (drain, node down, shutdown) is a TCP close.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use crate::balancer::Backend;
use crate::balancer::{Command, OrdersRx};
use crate::config::ListenerConfig;
use crate::proxy::accept_proxy::Origin;
use crate::proxy::amqp::Dir;
use crate::proxy::conn_info::ConnInfo;
use crate::proxy::direction::{End, Limits, Meters};
use crate::proxy::rmq_stream;
use crate::proxy::stream::Stream;
use crate::proxy::Proxy;

/// What one connection advertises in place of the brokers.
pub(crate) struct Advertise {
    proxy: Arc<Proxy>,
    /// The host clients are told: `advertised_host`, else the address this
    /// client reached warren on.
    host: String,
    /// The connection's backend.
    backend: String,
    listener: Option<ListenerConfig>,
}

impl Advertise {
    pub(crate) fn new(
        proxy: &Arc<Proxy>,
        listener: Option<&ListenerConfig>,
        origin: &Origin,
        client: &Stream,
        backend: &Backend,
    ) -> Advertise {
        let host = match listener.and_then(|l| l.advertised_host.clone()) {
            Some(h) => h,
            None => {
                let local = origin
                    .local
                    .as_deref()
                    .copied()
                    .or_else(|| client.tcp().local_addr().ok());
                local.map_or_else(String::new, |a| host_text(a.ip()))
            }
        };
        Advertise {
            proxy: Arc::clone(proxy),
            host,
            backend: backend.name().to_string(),
            listener: listener.cloned(),
        }
    }

    /// warren's port for backend `name`.
    fn port_of(&self, name: &str) -> Option<u32> {
        let l = self.listener.as_ref()?;
        l.node_ports.get(name).map(|p| u32::from(*p))
    }

    /// The backend a broker of a metadata response is.
    fn backend_of(&self, host: &str, port: u32) -> Option<String> {
        if let Some(b) = self.proxy.stream_peers.backend_of(host, port) {
            return Some(b);
        }
        let l = self.listener.as_ref()?;
        let on_port: Vec<_> = self
            .proxy
            .balancer
            .all()
            .into_iter()
            .filter(|b| l.backend_port(&b.config).map(u32::from) == Some(port))
            .collect();
        // The host a node advertises by default: its node name's, else the
        // host of its address.
        let named_host = |b: &Backend| {
            let check = b.check.lock().unwrap_or_else(|p| p.into_inner());
            let node_host = check.node.as_deref().and_then(|n| n.split_once('@'));
            node_host.is_some_and(|(_, h)| h.eq_ignore_ascii_case(host))
        };
        let address_host = |b: &Backend| {
            crate::config::split_host_port(&b.config.address)
                .is_some_and(|(h, _)| h.eq_ignore_ascii_case(host))
        };
        let found = on_port
            .iter()
            .find(|b| named_host(b))
            .or_else(|| on_port.iter().find(|b| address_host(b)))
            // Nodes on one host (ports of their own): the port alone says.
            .or_else(|| (on_port.len() == 1).then(|| &on_port[0]));
        found.map(|b| b.name().to_string())
    }

    /// A broker whose node takes no new stream connections through warren
    /// (down, drained, disabled, in maintenance, or its stream listener
    /// failing): offered to clients as a replica, it would only turn them
    /// away, so it is taken out of the replicas (`rewrite_metadata_avoiding`).
    fn avoided(&self, host: &str, port: u32) -> bool {
        let bit = crate::config::ListenerProtocol::Stream.bit();
        self.backend_of(host, port)
            .and_then(|b| self.proxy.balancer.get(&b))
            .is_some_and(|b| !b.usable_for(bit))
    }

    /// A frame from the broker that carries what it advertises, rewritten;
    /// `None`: forwarded as it is.
    fn rewrite(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let head = rmq_stream::parse_head(frame)?;
        match head.key {
            rmq_stream::KEY_OPEN_RESPONSE => {
                let (host, port) = rmq_stream::open_advertised(frame)?;
                self.proxy.stream_peers.learn(&self.backend, host, port);
                let own = self.port_of(&self.backend)?;
                rmq_stream::rewrite_open(frame, &self.host, own)
            }
            rmq_stream::KEY_METADATA_RESPONSE => {
                let mut unknown = Vec::new();
                let out = rmq_stream::rewrite_metadata_avoiding(
                    frame,
                    &mut |host, port| {
                        let to = self.backend_of(host, port).and_then(|b| self.port_of(&b));
                        if to.is_none() {
                            unknown.push(format!("{host}:{port}"));
                        }
                        Some((self.host.clone(), to?))
                    },
                    &mut |host, port| self.avoided(host, port),
                );
                if !unknown.is_empty() {
                    tracing::warn!(
                        brokers = unknown.join(", "),
                        "stream metadata names brokers that match no backend; left as the broker said"
                    );
                    crate::telemetry::metrics::stream_unmapped(unknown.len() as u64);
                }
                out
            }
            _ => None,
        }
    }
}

/// An address as a stream client takes a host: without brackets.
fn host_text(ip: IpAddr) -> String {
    ip.to_string()
}

/// [`pump`], boxed: its state stays out of the task of every connection.
pub(crate) fn boxed<'a>(
    client: Stream,
    server: Stream,
    orders: OrdersRx,
    limits: Limits,
    meters: Meters<'a>,
    info: Arc<ConnInfo>,
    advertise: Advertise,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<End>> + Send + 'a>> {
    Box::pin(pump(
        client, server, orders, limits, meters, info, advertise,
    ))
}

/// Carries one stream connection to its end.
async fn pump(
    client: Stream,
    server: Stream,
    mut orders: OrdersRx,
    limits: Limits,
    meters: Meters<'_>,
    info: Arc<ConnInfo>,
    advertise: Advertise,
) -> io::Result<End> {
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (server_rd, mut server_wr) = tokio::io::split(server);
    let heard = Heard::new();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_rd.read(&mut buf).await?;
            if n == 0 {
                server_wr.shutdown().await?;
                return Ok::<(), io::Error>(());
            }
            heard.now();
            server_wr.write_all(&buf[..n]).await?;
            meters.up.fetch_add(n as u64, Ordering::Relaxed);
            info.count(Dir::Up, n as u64);
        }
    };
    let down = async {
        let mut rd = BufReader::with_capacity(64 * 1024, server_rd);
        loop {
            let n = frame(&mut rd, &mut client_wr, &advertise, &heard).await?;
            if n == 0 {
                client_wr.shutdown().await?;
                return Ok::<(), io::Error>(());
            }
            meters.down.fetch_add(n as u64, Ordering::Relaxed);
            info.count(Dir::Down, n as u64);
        }
    };
    let both = async { tokio::try_join!(up, down).map(|_| End::Closed) };
    let idle = async {
        let Some(idle) = limits.idle else {
            return std::future::pending().await;
        };
        loop {
            let quiet = heard.since();
            if quiet >= idle {
                tracing::debug!("idle timeout");
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    tokio::select! {
        r = both => r,
        cmd = orders_close(&mut orders) => Ok(cmd),
        () = idle => Ok(End::Closed),
    }
    // Dropping both halves of both sockets closes them (FIN, or RST where
    // bytes were left unread).
}

/// Waits until warren orders this connection closed: a graceful close is a
/// TCP close here (the stream protocol's close is the broker's to send).
async fn orders_close(orders: &mut OrdersRx) -> End {
    loop {
        match orders.changed().await {
            Command::Run => continue,
            Command::Close(reason) => {
                tracing::debug!(reason = &*reason, "closing stream connection");
                return End::Graceful;
            }
            Command::Hard => return End::Hard,
        }
    }
}

/// When either side was last heard from.
struct Heard {
    start: Instant,
    ms: std::sync::atomic::AtomicU64,
}

impl Heard {
    fn new() -> Heard {
        Heard {
            start: Instant::now(),
            ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.ms.store(ms, Ordering::Relaxed);
    }

    fn since(&self) -> Duration {
        let at = Duration::from_millis(self.ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(at)
    }
}

/// Forwards one frame from the broker (rewritten where it advertises);
/// returns the bytes written, 0 at the broker's end of stream between frames.
async fn frame<R, W>(
    rd: &mut BufReader<R>,
    wr: &mut W,
    advertise: &Advertise,
    heard: &Heard,
) -> io::Result<usize>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut head = [0u8; rmq_stream::HEAD_LEN];
    // The size first: an end of stream here is a clean one.
    let first = rd.fill_buf().await?;
    if first.is_empty() {
        return Ok(0);
    }
    heard.now();
    rd.read_exact(&mut head[..4]).await?;
    let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if size < 4 {
        // Not a frame the protocol allows; passed on as it is.
        wr.write_all(&head[..4]).await?;
        return copy_exact(rd, wr, size, heard).await.map(|n| n + 4);
    }
    rd.read_exact(&mut head[4..]).await?;
    let key = u16::from_be_bytes([head[4], head[5]]);
    let total = size + 4;
    if rmq_stream::rewritten(key) && total <= rmq_stream::MAX_REWRITTEN {
        let mut whole = Vec::with_capacity(total);
        whole.extend_from_slice(&head);
        whole.resize(total, 0);
        rd.read_exact(&mut whole[rmq_stream::HEAD_LEN..]).await?;
        let out = advertise.rewrite(&whole).unwrap_or(whole);
        wr.write_all(&out).await?;
        return Ok(out.len());
    }
    wr.write_all(&head).await?;
    copy_exact(rd, wr, total - rmq_stream::HEAD_LEN, heard)
        .await
        .map(|n| n + rmq_stream::HEAD_LEN)
}

/// Copies exactly `n` bytes from `rd` to `wr`.
async fn copy_exact<R, W>(
    rd: &mut BufReader<R>,
    wr: &mut W,
    n: usize,
    heard: &Heard,
) -> io::Result<usize>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut left = n;
    while left > 0 {
        let buf = rd.fill_buf().await?;
        if buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        heard.now();
        let k = buf.len().min(left);
        wr.write_all(&buf[..k]).await?;
        rd.consume(k);
        left -= k;
    }
    Ok(n)
}
