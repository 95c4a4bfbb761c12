//! PROXY protocol headers from a load balancer in front of warren
//! (`accept_proxy` on a listener), read before anything else on the connection,
//! the TLS handshake included.
//!
//! A peer in one of the trusted networks must send a header within the
//! timeout; it is read exactly (peeked, then only its own bytes consumed), so
//! the client's first bytes stay in the socket for the protocol check. A peer
//! from anywhere else must not send one: its first bytes are peeked at, never
//! consumed. Every refusal is logged (warn) and counted
//! (`warren_proxy_header_rejected_total`); nothing reaches a backend.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::AcceptProxyConfig;
use crate::proxy::proxy_protocol::{self, Received, Scan};

/// The client as warren sees it after the PROXY step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The client: the header's source address, or the TCP peer.
    pub peer: SocketAddr,
    /// The address the client connected to, when a header said so (on the
    /// load balancer, which is then the TCP peer); `None`: warren's own end of
    /// the connection. Boxed: every connection's task holds an `Origin`
    /// (a 16-byte cost, measured), and most have no header.
    pub local: Option<Box<SocketAddr>>,
}

impl Origin {
    /// A connection without a header: the TCP peer is the client.
    pub(crate) fn direct(peer: SocketAddr) -> Origin {
        Origin { peer, local: None }
    }
}

/// Why a connection was turned away at the PROXY step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Rejected {
    #[error("PROXY header from an address outside accept_proxy.from")]
    Untrusted,
    #[error("no PROXY header from an address in accept_proxy.from (the connection starts with other bytes)")]
    Missing,
    #[error(transparent)]
    Malformed(#[from] proxy_protocol::HeaderError),
    #[error("PROXY v1 header without CRLF within 107 bytes")]
    TooLong,
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("closed before the PROXY header was complete")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[source] io::Error),
}

impl Rejected {
    /// The `reason` label of the metric (one of `metrics::PROXY_HEADER_REASONS`).
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Rejected::Untrusted => "untrusted",
            Rejected::Missing => "missing",
            Rejected::Malformed(_) | Rejected::TooLong => "malformed",
            Rejected::Timeout(_) => "timeout",
            Rejected::Closed | Rejected::Io(_) => "closed",
        }
    }
}

/// The PROXY step of a listener with `accept_proxy`: who the client is, or
/// `None` when the connection must be closed (already logged and counted on
/// `listener`).
pub(crate) async fn admit(
    stream: &mut TcpStream,
    peer: SocketAddr,
    config: &AcceptProxyConfig,
    listener: &'static str,
) -> Option<Origin> {
    let deadline = Instant::now() + config.timeout.get();
    let result = if config.from.contains(peer.ip()) {
        read_header(stream, deadline, config.timeout.get())
            .await
            .map(|received| match received {
                Received::Proxied { src, dst } => Origin {
                    peer: src,
                    local: Some(Box::new(dst)),
                },
                Received::Local => Origin::direct(peer),
            })
    } else {
        refuse_header(stream, deadline)
            .await
            .map(|()| Origin::direct(peer))
    };
    match result {
        Ok(origin) => {
            if origin.local.is_some() {
                tracing::debug!(client = %origin.peer, via = %peer, listener, "PROXY header accepted");
            }
            Some(origin)
        }
        Err(why) => {
            tracing::warn!(%peer, listener, reason = why.reason(), error = %why, "PROXY header rejected, closing");
            crate::telemetry::metrics::proxy_header_rejected(listener, why.reason());
            None
        }
    }
}

/// Reads the header a trusted peer must send, by `deadline`: peeks, then
/// consumes only the bytes [`proxy_protocol::scan`] counts as the header's.
async fn read_header(
    stream: &mut TcpStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<Received, Rejected> {
    let mut header = Vec::with_capacity(proxy_protocol::V1_MAX);
    let mut scratch = [0u8; 256];
    loop {
        let want = match proxy_protocol::scan(&header) {
            Scan::Partial(n) => n.min(scratch.len()),
            // Only `Partial` loops again (see below).
            _ => return Err(Rejected::Missing),
        };
        let peeked =
            match tokio::time::timeout_at(deadline, stream.peek(&mut scratch[..want])).await {
                Err(_) => return Err(Rejected::Timeout(timeout)),
                Ok(Err(e)) => return Err(Rejected::Io(e)),
                Ok(Ok(0)) => return Err(Rejected::Closed),
                Ok(Ok(n)) => n,
            };
        let before = header.len();
        header.extend_from_slice(&scratch[..peeked]);
        let (take, complete) = match proxy_protocol::scan(&header) {
            Scan::NotProxy => return Err(Rejected::Missing),
            Scan::TooLong => return Err(Rejected::TooLong),
            Scan::Complete(len) => (len, true),
            Scan::Partial(_) => (header.len(), false),
        };
        header.truncate(take);
        // These bytes are in the socket's buffer (just peeked): no wait.
        if let Err(e) = stream.read_exact(&mut scratch[..take - before]).await {
            return Err(Rejected::Io(e));
        }
        if complete {
            return Ok(proxy_protocol::parse(&header)?);
        }
    }
}

/// How long to wait before peeking again at a peer whose first bytes are too
/// few to tell whether they begin a header.
const PEEK_AGAIN: Duration = Duration::from_millis(10);

/// Turns away an untrusted peer whose first bytes begin a PROXY header; any
/// other peer passes, its bytes untouched. A peer silent until `deadline`
/// passes too: the listener's own checks deal with it.
async fn refuse_header(stream: &TcpStream, deadline: Instant) -> Result<(), Rejected> {
    let mut first = [0u8; 12];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 => n,
            // Silent, closed or failed: nothing forwarded yet, the next step sees it.
            _ => return Ok(()),
        };
        match proxy_protocol::starts_header(&first[..n]) {
            Some(false) => return Ok(()),
            Some(true) => return Err(Rejected::Untrusted),
            None if Instant::now() + PEEK_AGAIN >= deadline => return Err(Rejected::Untrusted),
            None => tokio::time::sleep(PEEK_AGAIN).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Network, ProxyVersion};
    use crate::proxy::test_util::pair;
    use tokio::io::AsyncWriteExt;

    fn config(from: &str, timeout_ms: u64) -> AcceptProxyConfig {
        let from: Vec<_> = from
            .split(',')
            .map(|s| Network::parse(s).expect("net").to_string())
            .collect();
        let yaml = format!("{{from: [{}], timeout: {timeout_ms}ms}}", from.join(", "));
        serde_saphyr::from_str(&yaml).expect("accept_proxy")
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    const AMQP: &[u8] = b"AMQP\x00\x00\x09\x01";

    /// Sends `bytes` from a client whose TCP address is `peer`, runs the PROXY
    /// step on warren's end; its result and what is left to read after it.
    async fn step(bytes: &[u8], peer: &str, from: &str) -> (Option<Origin>, Vec<u8>) {
        let (mut client, mut server) = pair().await;
        client.write_all(bytes).await.expect("write");
        client.shutdown().await.expect("half-close");
        let cfg = config(from, 500);
        let origin = admit(&mut server, a(peer), &cfg, "amqp").await;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("read the rest");
        (origin, rest)
    }

    #[tokio::test]
    async fn trusted_v1_and_v2_carry_the_client_and_leave_its_bytes() {
        let (src, dst) = (a("203.0.113.7:40000"), a("198.51.100.1:5672"));
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            let mut bytes = proxy_protocol::header(version, src, dst);
            bytes.extend_from_slice(AMQP);
            let (origin, rest) = step(&bytes, "127.0.0.1:9", "127.0.0.0/8").await;
            assert_eq!(
                origin,
                Some(Origin {
                    peer: src,
                    local: Some(Box::new(dst))
                }),
                "{version:?}"
            );
            assert_eq!(rest, AMQP, "{version:?}");
        }
    }

    #[tokio::test]
    async fn trusted_local_and_unknown_keep_the_real_peer() {
        let mut local = proxy_protocol::V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        for header in [&b"PROXY UNKNOWN\r\n"[..], &local] {
            let bytes = [header, AMQP].concat();
            let (origin, rest) = step(&bytes, "10.1.1.1:9", "10.0.0.0/8").await;
            assert_eq!(origin, Some(Origin::direct(a("10.1.1.1:9"))));
            assert_eq!(rest, AMQP);
        }
    }

    #[tokio::test]
    async fn trusted_peers_without_a_valid_header_are_refused() {
        for bytes in [
            AMQP,
            b"PROXY TCP4 300.1.1.1 10.0.0.1 1 2\r\nAMQP",
            b"PROXY TCP4 10.0.0.1",
            b"",
        ] {
            let (origin, _) = step(bytes, "10.1.1.1:9", "10.0.0.0/8").await;
            assert_eq!(origin, None, "{bytes:?}");
        }
        let long = [&b"PROXY "[..], &[b'1'; 200]].concat();
        assert_eq!(step(&long, "10.1.1.1:9", "10.0.0.0/8").await.0, None);
    }

    #[tokio::test]
    async fn untrusted_peers_must_not_send_one_and_keep_their_bytes() {
        let header = proxy_protocol::header(ProxyVersion::V2, a("1.2.3.4:5"), a("5.6.7.8:9"));
        for bytes in [&header[..], b"PROXY TCP4 1.2.3.4 5.6.7.8 5 9\r\n", b"PROX"] {
            let (origin, _) = step(bytes, "192.0.2.1:9", "10.0.0.0/8").await;
            assert_eq!(origin, None, "{bytes:?}");
        }
        let (origin, rest) = step(AMQP, "192.0.2.1:9", "10.0.0.0/8").await;
        assert_eq!(origin, Some(Origin::direct(a("192.0.2.1:9"))));
        assert_eq!(rest, AMQP, "peeked, not consumed");
    }

    #[tokio::test]
    async fn a_slow_header_times_out() {
        let (mut client, mut server) = pair().await;
        client
            .write_all(b"PROXY TCP4 10.0.0.1 ")
            .await
            .expect("write");
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let r = read_header(&mut server, started + timeout, timeout).await;
        assert!(matches!(r, Err(Rejected::Timeout(_))), "{r:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // A header that comes in pieces, in time, is read whole.
        let (mut client, mut server) = pair().await;
        let bytes = [&b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"[..], AMQP].concat();
        let writer = tokio::spawn(async move {
            for b in bytes.chunks(5) {
                client.write_all(b).await.expect("write");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client
        });
        let started = Instant::now();
        let r = read_header(
            &mut server,
            started + Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            r.expect("in pieces"),
            Received::Proxied {
                src: a("10.0.0.1:1"),
                dst: a("10.0.0.2:2")
            }
        );
        let _client = writer.await.expect("writer");
        let mut rest = [0u8; 8];
        server.read_exact(&mut rest).await.expect("the AMQP header");
        assert_eq!(&rest, AMQP);
    }
}
