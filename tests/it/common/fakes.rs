//! Small servers standing in for a backend or a management API, on ephemeral
//! loopback ports.

use std::net::SocketAddr;
use std::time::Duration;

/// A small TCP server on an ephemeral loopback port: every connection (the health
/// checker's probes included) is served by `handler` in its own task.
pub async fn tcp_server<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(handler(s));
        }
    });
    addr
}

/// A backend that accepts every connection, reads and discards until EOF.
pub async fn sink_backend() -> SocketAddr {
    tcp_server(|mut s| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
}

/// A backend that reads until the client half-closes, then answers
/// `got <n> bytes` and closes: whether a half-close got through.
pub async fn counting_backend() -> SocketAddr {
    tcp_server(|mut s| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut got = Vec::new();
        if s.read_to_end(&mut got).await.is_ok() {
            let _ = s
                .write_all(format!("got {} bytes", got.len()).as_bytes())
                .await;
        }
        // Dropping closes our side.
    })
    .await
}

/// A management API that answers every request with `answer`, the raw HTTP
/// response, or as told: `hang` (never answers) or `huge` (a 100 MiB body).
pub async fn fake_management_answering(answer: &'static str) -> SocketAddr {
    tcp_server(move |mut s| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        match answer {
            "hang" => tokio::time::sleep(Duration::from_secs(3600)).await,
            "huge" => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
                    .await;
                let chunk = vec![b' '; 65536];
                for _ in 0..1600 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            }
            other => {
                let _ = s.write_all(other.as_bytes()).await;
            }
        }
    })
    .await
}
