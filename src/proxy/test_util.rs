//! Helpers shared by the unit tests.

use tokio::net::{TcpListener, TcpStream};

/// Both ends of one loopback TCP connection.
pub(crate) async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (b, _) = l.accept().await.expect("accept");
    (a, b)
}
