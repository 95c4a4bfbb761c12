//! A minimal HTTP/1.1 client for warren's own admin API (plain HTTP, one
//! request per connection, the configured admin token as a bearer token).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;

/// Answers larger than this are cut (reports are a few KiB).
const MAX_ANSWER: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("admin token: {0}")]
    Token(String),
    #[error("warren's admin API at {addr}: {message}")]
    Io { addr: SocketAddr, message: String },
    #[error("warren's admin API at {addr}: no answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

/// warren's admin API, as `admin.listen` and the token of a config name it.
pub struct AdminClient {
    addr: SocketAddr,
    token: Option<String>,
}

impl AdminClient {
    pub fn from_config(config: &Config) -> Result<AdminClient, ClientError> {
        let mut addr = config.admin.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let token = config
            .admin
            .resolve_token()
            .map_err(ClientError::Token)?
            .map(|s| s.0);
        Ok(AdminClient { addr, token })
    }

    pub fn new(addr: SocketAddr, token: Option<String>) -> AdminClient {
        AdminClient { addr, token }
    }

    /// `POST path` with an empty body: (status, body), within `timeout`.
    pub async fn post(&self, path: &str, timeout: Duration) -> Result<(u16, String), ClientError> {
        self.request("POST", path, timeout).await
    }

    /// `GET path`: (status, body), within `timeout`.
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<(u16, String), ClientError> {
        self.request("GET", path, timeout).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, String), ClientError> {
        let addr = self.addr;
        tokio::time::timeout(timeout, self.exchange(method, path))
            .await
            .map_err(|_| ClientError::Timeout { addr, timeout })?
            .map_err(|e| ClientError::Io {
                addr,
                message: e.to_string(),
            })
    }

    async fn exchange(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(self.addr).await?;
        let auth = match &self.token {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.take(MAX_ANSWER).read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
        Ok((status, body.to_string()))
    }
}
