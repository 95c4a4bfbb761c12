//! Clients: AMQP through lapin (connections, queues, confirms, how a connection
//! was closed), and raw TCP clients that speak just enough AMQP.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// An AMQP connection through `url` with a real client library.
pub async fn amqp_connect(url: &str) -> Connection {
    amqp_connect_named(url, "warren-test").await
}

/// Same, with a connection name the management API shows (`client_properties`).
pub async fn amqp_connect_named(url: &str, name: &str) -> Connection {
    try_amqp_connect_named(url, name)
        .await
        .unwrap_or_else(|e| panic!("AMQP connect: {e}"))
}

/// An AMQP connection through `url`, or why there is none within 20 s.
pub async fn try_amqp_connect_named(url: &str, name: &str) -> Result<Connection, String> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(Duration::from_secs(20), Connection::connect(url, props)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no connection within 20 s".into()),
    }
}

/// A channel on `conn` in confirm mode, with `queue` declared with `options`.
pub async fn confirmed_queue(
    conn: &Connection,
    queue: &str,
    options: QueueDeclareOptions,
) -> Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    declare_queue(&ch, queue, options).await;
    ch
}

/// Declare options for a queue that lives and dies with its connection.
pub fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

/// Declare options for a queue that survives a broker restart.
pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declares `queue` with `options` and no arguments.
pub async fn declare_queue(ch: &Channel, queue: &str, options: QueueDeclareOptions) {
    ch.queue_declare(queue.into(), options, FieldTable::default())
        .await
        .expect("declare");
}

/// Deletes `queue`, whatever comes of it (clean-up at the end of a test).
pub async fn delete_queue(ch: &Channel, queue: &str) {
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

/// Publishes `body` to `queue` through the default exchange and waits for the
/// broker's confirm (the channel is in confirm mode).
pub async fn publish_confirmed(ch: &Channel, queue: &str, body: &[u8]) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

/// Publishes the numbers `0..n` (4 bytes, big-endian) in order, each confirmed.
pub async fn publish_numbered(ch: &Channel, queue: &str, n: u32) {
    for i in 0..n {
        publish_confirmed(ch, queue, &i.to_be_bytes()).await;
    }
}

/// The body of the next message of `queue`, taken with basic.get (no ack), polled
/// until one is there; fails the test after `within`.
pub async fn get_message(ch: &Channel, queue: &str, within: Duration) -> Vec<u8> {
    tokio::time::timeout(within, async {
        loop {
            if let Some(m) = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
            {
                return m.delivery.data;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("message back within {within:?}"))
}

/// Publishes `body` to `queue` with a confirm, then takes a message back from it
/// (within `within`); what came back, for the caller to compare.
pub async fn round_trip(ch: &Channel, queue: &str, body: &[u8], within: Duration) -> Vec<u8> {
    publish_confirmed(ch, queue, body).await;
    get_message(ch, queue, within).await
}

/// The first error a connection reports (for instance a broker's connection.close).
pub async fn next_error(conn: &Connection, within: Duration) -> Option<lapin::Error> {
    let mut events = conn.events_listener();
    tokio::time::timeout(within, async {
        while let Some(ev) = events.next().await {
            if let lapin::Event::Error(e) = ev {
                return Some(e);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// The AMQP reply code of a protocol error, if that is what `e` is.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// How a connection was closed by the other side, as the client library saw it.
#[derive(Clone, Debug)]
pub struct Closed {
    /// AMQP reply code (320 for CONNECTION_FORCED); `None` for a transport error.
    pub code: Option<u16>,
    pub text: String,
    pub at: tokio::time::Instant,
}

/// Watches a connection from now on and reports how it was closed: the
/// `connection.close` (broker's or warren's) if the client library saw one, else
/// the first I/O error such as a reset. A broker that closes the socket right after
/// its close frame makes lapin report an I/O error too, in either order, so errors
/// arriving within half a second of the first are all considered.
pub fn watch_close(conn: &Connection) -> tokio::task::JoinHandle<Option<Closed>> {
    let mut events = conn.events_listener();
    tokio::spawn(async move {
        let mut first: Option<Closed> = None;
        loop {
            let next = match &first {
                None => events.next().await,
                Some(_) => {
                    match tokio::time::timeout(Duration::from_millis(500), events.next()).await {
                        Ok(ev) => ev,
                        Err(_) => return first,
                    }
                }
            };
            let Some(ev) = next else {
                return first;
            };
            if let lapin::Event::Error(e) = ev {
                let at = tokio::time::Instant::now();
                match e.kind() {
                    lapin::ErrorKind::ProtocolError(amqp) => {
                        return Some(Closed {
                            code: Some(amqp.get_id()),
                            text: amqp.get_message().to_string(),
                            at: first.map_or(at, |f| f.at),
                        });
                    }
                    other => {
                        if first.is_none() {
                            first = Some(Closed {
                                code: None,
                                text: format!("{other:?}"),
                                at,
                            });
                        }
                    }
                }
            }
        }
    })
}

/// Awaits a `watch_close` result for at most `within`.
pub async fn closed_within(
    h: tokio::task::JoinHandle<Option<Closed>>,
    within: Duration,
) -> Option<Closed> {
    tokio::time::timeout(within, h)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten()
}

/// Reads `s` until its peer closes it (EOF or error), up to `within`: what it
/// read, or `None` if it was still open.
pub async fn read_until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(got)
}

/// Reads one whole AMQP frame; (type, channel, payload). Fails the test on a
/// frame that does not end with the frame-end octet.
pub async fn read_frame(s: &mut tokio::net::TcpStream) -> (u8, u16, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 7];
    s.read_exact(&mut head).await.expect("frame header");
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    s.read_exact(&mut payload).await.expect("frame payload");
    assert_eq!(
        payload.pop(),
        Some(warren::proxy::amqp::FRAME_END),
        "frame-end octet"
    );
    (head[0], u16::from_be_bytes([head[1], head[2]]), payload)
}

/// A raw AMQP client of `addr` that sends the protocol header, reads
/// connection.start (so that it stands at a frame boundary) and then says
/// nothing: it never answers connection.close.
pub async fn silent_client(addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(warren::proxy::amqp::PROTOCOL_HEADER)
        .await
        .expect("header");
    read_frame(&mut s).await;
    s
}

/// Sends the AMQP protocol header and `filler` more bytes on `s`, half-closes
/// it and reads the answer to the end (within 10 s): what a
/// [`counting_backend`] behind warren says.
pub async fn half_close_exchange<S>(s: &mut S, filler: usize) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(warren::proxy::amqp::PROTOCOL_HEADER)
        .await
        .expect("header");
    s.write_all(&vec![7u8; filler]).await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply))
        .await
        .expect("reply in time")
        .expect("read");
    reply
}
