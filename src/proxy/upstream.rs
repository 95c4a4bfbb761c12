//! Getting a connected backend socket ready for AMQP: the PROXY protocol header
//! first (`send_proxy`), then the TLS handshake (`tls`), as the backend's config
//! says. The order is the one RabbitMQ expects: its listener reads the PROXY
//! header from the raw socket before the TLS handshake.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::balancer::Backend;
use crate::proxy::stream::Stream;
use crate::proxy::Proxy;

/// Why a connected backend could not be made ready.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("sending the PROXY header: {0}")]
    ProxyHeader(std::io::Error),
    #[error("TLS handshake ({reason}): {detail}")]
    Tls {
        reason: &'static str,
        detail: String,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl UpstreamError {
    /// Bounded label for the connect-error metric.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            UpstreamError::ProxyHeader(_) => "proxy_header",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::Timeout(_) => "timeout",
        }
    }
}

/// The addresses of a client connection, as the PROXY header reports them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientAddrs {
    /// The client.
    pub peer: SocketAddr,
    /// The address the client connected to, on warren.
    pub local: SocketAddr,
}

/// True when `backend` needs more than a TCP connect.
pub(crate) fn needs_preparing(backend: &Backend) -> bool {
    backend.config.send_proxy.is_some() || backend.config.tls.is_some()
}

/// Sends the PROXY header and runs the TLS handshake on a fresh connection to
/// `backend`, within `timeout`.
pub(crate) async fn prepare(
    proxy: &Proxy,
    backend: &Backend,
    mut tcp: TcpStream,
    client: ClientAddrs,
    timeout: Duration,
) -> Result<Stream, UpstreamError> {
    let deadline = tokio::time::Instant::now() + timeout;
    if let Some(version) = backend.config.send_proxy {
        let header = crate::proxy::proxy_protocol::header(version, client.peer, client.local);
        match tokio::time::timeout_at(deadline, tcp.write_all(&header)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(UpstreamError::ProxyHeader(e)),
            Err(_) => return Err(UpstreamError::Timeout(timeout)),
        }
    }
    if backend.config.tls.is_none() {
        return Ok(Stream::Plain(tcp));
    }
    // Never fall back to plain TCP for a backend configured for TLS.
    let Some(origin) = proxy.tls.origin(backend.name()) else {
        return Err(UpstreamError::Tls {
            reason: "not_loaded",
            detail: "no TLS settings loaded for this backend".into(),
        });
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    crate::tls::connect(&origin, tcp, left)
        .await
        .map(Stream::from)
        .map_err(|f| UpstreamError::Tls {
            reason: f.reason,
            detail: f.detail,
        })
}
