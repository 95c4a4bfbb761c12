//! A small client for the RabbitMQ management HTTP API.
//!
//! Used by the health checker and by `warren bootstrap`. One HTTP/1.1 request per
//! connection (checks are seconds apart; a pool would only hide a dead node), with
//! a deadline on the whole exchange (connect, TLS handshake, request, answer) and a
//! cap on the body size, so a hostile or broken management API can never stall the
//! caller or eat its memory. `https://` URLs are reached with rustls, as the
//! config's `management_tls` says ([`Target`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use crate::config::address::{Endpoint, EndpointError};
use crate::config::{Config, ManagementTls, Secret};
use crate::tls::{Origin, TlsError};

/// Bodies larger than this are refused (health answers are tiny; overview is a few KiB).
pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    #[error(transparent)]
    Url(#[from] EndpointError),
    /// The TLS settings of an `https://` URL (a file, a name) are not usable.
    #[error("key `{key}`: {message}")]
    TlsConfig { key: String, message: String },
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed: the node's certificate was refused (by name,
    /// issuer, dates), or the node refused warren's, or it does not speak TLS.
    #[error("TLS handshake with {addr}: {detail}")]
    Handshake { addr: String, detail: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("bad request: {0}")]
    Request(String),
}

/// `major.minor.patch` of a RabbitMQ release, as `rabbitmq_version` in
/// `GET /api/overview` spells it; suffixes (`-rc.1`, `+1.gabc`, `+deb13u2`) ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Parses `3.10.8`, `3.13.0-rc.2`, `4.1` and the like; `None` for anything else.
    pub fn parse(s: &str) -> Option<Version> {
        let core = s.trim().split(['-', '+', ' ']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version::new(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// First release where classic mirroring is deprecated (warn).
/// Credentials for basic auth.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    fn header(&self) -> HeaderValue {
        let raw = format!("{}:{}", self.username, self.password.0);
        let enc = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut v = HeaderValue::from_str(&format!("Basic {enc}"))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        v.set_sensitive(true);
        v
    }
}

/// One answer: status and (bounded) body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Percent-encodes one path segment (vhost `/` becomes `%2F`).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One management API: its URL and, for `https://`, the TLS client config built
/// from `management_tls` (files read when the target is made).
#[derive(Clone)]
pub struct Target {
    pub endpoint: Endpoint,
    tls: Option<Arc<Origin>>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.endpoint.fmt(f)
    }
}

impl Target {
    /// `url` reached with `tls` (unused for `http://`; `ManagementTls::default()`
    /// is the system's trust store and the URL's host).
    pub fn new(url: &str, tls: &ManagementTls) -> Result<Target, MgmtError> {
        Target::build(url, tls, "management")
    }

    /// The management API of `config.backends[i]`, with the TLS settings in
    /// force for it; `None` when it has no `management` URL.
    pub fn for_backend(config: &Config, i: usize) -> Option<Result<Target, MgmtError>> {
        let b = config.backends.get(i)?;
        let url = b.management.as_deref()?;
        let tls = ManagementTls::resolve(
            config.health.management_tls.as_ref(),
            b.management_tls.as_ref(),
            i,
        )
        .map_err(|(key, message)| MgmtError::TlsConfig { key, message });
        Some(tls.and_then(|t| Target::build(url, &t, &format!("backends[{i}].management"))))
    }

    fn build(url: &str, tls: &ManagementTls, url_key: &str) -> Result<Target, MgmtError> {
        let endpoint = Endpoint::parse(url)?;
        let tls = match endpoint.tls {
            true => Some(Arc::new(
                crate::tls::management(&endpoint, tls, url_key).map_err(tls_config)?,
            )),
            false => None,
        };
        Ok(Target { endpoint, tls })
    }
}

fn tls_config(e: TlsError) -> MgmtError {
    MgmtError::TlsConfig {
        key: e.key().to_string(),
        message: e.to_string(),
    }
}

/// Sends one request and reads the answer, all within `timeout` (the TLS
/// handshake included).
pub async fn request(
    target: &Target,
    creds: &Credentials,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    timeout: Duration,
) -> Result<Response, MgmtError> {
    tokio::time::timeout(timeout, request_inner(target, creds, method, path, body))
        .await
        .map_err(|_| MgmtError::Timeout(timeout))?
}

async fn request_inner(
    target: &Target,
    creds: &Credentials,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Response, MgmtError> {
    let ep = &target.endpoint;
    let stream = TcpStream::connect(&ep.authority)
        .await
        .map_err(|source| MgmtError::Connect {
            addr: ep.authority.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    match &target.tls {
        None => exchange(stream, ep, creds, method, path, body).await,
        Some(origin) => {
            let stream = origin
                .connector
                .connect(origin.server_name.clone(), stream)
                .await
                .map_err(|e| MgmtError::Handshake {
                    addr: ep.authority.clone(),
                    detail: crate::tls::classify(&e).detail,
                })?;
            exchange(stream, ep, creds, method, path, body).await
        }
    }
}

/// One request and its answer over a connected (and, for https, handshaken) stream.
async fn exchange<S>(
    stream: S,
    ep: &Endpoint,
    creds: &Credentials,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Response, MgmtError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection future drives the socket; it ends with this request.
    let mut driver = tokio::spawn(conn);
    let uri = format!("{}{}", ep.prefix, path);
    let payload = match &body {
        Some(v) => {
            Bytes::from(serde_json::to_vec(v).map_err(|e| MgmtError::Request(e.to_string()))?)
        }
        None => Bytes::new(),
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(payload))
        .map_err(|e| MgmtError::Request(e.to_string()))?;
    let headers = req.headers_mut();
    headers.insert(
        HOST,
        HeaderValue::from_str(&ep.authority)
            .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
    );
    headers.insert(AUTHORIZATION, creds.header());
    if body.is_some() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let result = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(h) => MgmtError::Http(*h),
                Err(_) => MgmtError::BodyTooLarge,
            })?
            .to_bytes();
        Ok(Response { status, body })
    }
    .await;
    let result = match result {
        Err(MgmtError::Http(e)) => {
            // The connection's own error says why, e.g. the alert of a node that
            // refused warren's certificate after a TLS 1.3 handshake (the
            // handshake itself ended before the node checked it).
            let ended = tokio::time::timeout(Duration::from_millis(100), &mut driver).await;
            let conn_error = match ended {
                Ok(Ok(Err(c))) => Some(c),
                _ => None,
            };
            match conn_error
                .as_ref()
                .and_then(tls_cause)
                .or_else(|| tls_cause(&e))
            {
                Some(detail) => Err(MgmtError::Handshake {
                    addr: ep.authority.clone(),
                    detail,
                }),
                None => Err(MgmtError::Http(e)),
            }
        }
        other => other,
    };
    driver.abort();
    result
}

/// The TLS error (a rustls alert or certificate error) behind a connection error.
fn tls_cause(e: &hyper::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(tls) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_vhost() {
        assert_eq!(encode_segment("/"), "%2F");
        assert_eq!(encode_segment("ha-all"), "ha-all");
    }
}
