//! The data path of a plain TCP connection: both directions of one connection,
//! driven by hand from one task.
//!
//! Every open connection, idle ones included, is one such state machine, so it
//! is written as a plain struct polled by hand rather than as an `async fn`: an
//! `async fn` is as large as its largest await point together with every
//! argument and local it holds, and what an idle connection costs is mostly
//! that size (docs/performance.md). Here a direction is its [`Direction`] (the
//! AMQP close rules), its bulk state, its one timer and a small [`State`].
//!
//! Each direction waits for readiness itself (`poll_read_ready` /
//! `poll_write_ready`: no futures with waiters of their own), reads into a
//! per-thread scratch buffer and writes straight on, so an idle connection
//! holds no buffer; only bytes a slow peer has not taken yet are kept. Long
//! payloads are spliced through a pooled pipe, or copied through a pooled
//! bulk buffer (`bulk`).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{ready, Context, Poll};

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::balancer::OrdersRx;
use crate::proxy::amqp::Dir;
use crate::proxy::buffer::try_read;
use crate::proxy::bulk::{Bulk, Moved};
use crate::proxy::direction::{
    joined, AtEof, Chunk, Direction, End, Limits, Meters, Next, Shared, Timer, DISCARD_PAUSE,
};

/// Bytes moved per read; large enough for bulk transfers.
const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_SIZE]);
}

/// Carries bytes both ways until both directions are done or a command ends
/// them: graceful if either closed gracefully; a hard end or an error of either
/// ends both at once.
pub(crate) struct Pump<'a> {
    halves: [Half<'a>; 2],
    ends: [Option<End>; 2],
    orders: OrdersRx,
}

impl<'a> Pump<'a> {
    /// `head`: bytes already read from the client (the start of its protocol
    /// header), sent to the broker first.
    pub(crate) fn new(
        client: &'a TcpStream,
        server: &'a TcpStream,
        head: Vec<u8>,
        shared: &'a Shared,
        orders: OrdersRx,
        limits: Limits,
        meters: Meters<'a>,
    ) -> Self {
        let up = Direction::new(Dir::Up, limits, shared, meters.up);
        let down = Direction::new(Dir::Down, limits, shared, meters.down);
        let mut up = Half::new(up, client, server, limits.splice);
        if !head.is_empty() {
            // Tracked and counted like any read (nothing is being closed yet).
            up.d.on_read(&head);
            up.state = State::Write {
                buf: head,
                close: false,
            };
        }
        Pump {
            halves: [up, Half::new(down, server, client, limits.splice)],
            ends: [None, None],
            orders,
        }
    }
}

impl Future for Pump<'_> {
    type Output = io::Result<End>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Until it is pending, which leaves the task registered for the next
        // order (orders only rise, so this ends).
        while let Poll::Ready(cmd) = this.orders.poll_changed(cx) {
            for half in &mut this.halves {
                if let Some(end) = half.d.follow(&cmd) {
                    return Poll::Ready(Ok(end));
                }
            }
        }
        let shared = this.halves[0].d.shared;
        loop {
            let before = shared.flags();
            for (half, end) in this.halves.iter_mut().zip(&mut this.ends) {
                if end.is_some() {
                    continue;
                }
                match half.poll(cx) {
                    Poll::Ready(Ok(End::Hard)) => return Poll::Ready(Ok(End::Hard)),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(e)) => {
                        *end = Some(e);
                        half.finish();
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(end) = joined(&this.ends) {
                return Poll::Ready(Ok(end));
            }
            // One direction changed what the other waits for (the client was told,
            // the broker's side ended, a close-ok came): let it look again.
            if shared.flags() == before {
                return Poll::Pending;
            }
        }
    }
}

/// What a direction is doing besides reading.
enum State {
    /// Reading and forwarding (through the scratch buffer, or a bulk buffer for
    /// long payloads, as `bulk` says).
    Run,
    /// Bytes the destination has not taken yet, written after whatever the bulk
    /// buffer holds; `close`: they are warren's own `connection.close`.
    Write { buf: Vec<u8>, close: bool },
    /// Reads paused after a discarded one (see [`DISCARD_PAUSE`]).
    Pause(Instant),
    /// The source ended; the client's close-ok is awaited until then (see
    /// [`Direction::at_eof`]).
    AwaitAck(Instant),
}

/// One direction: copies and tracks frames; closes the AMQP way on
/// `Command::Close` (see [`Direction`]). Long payloads take the bulk path (`bulk`).
struct Half<'a> {
    d: Direction<'a>,
    src: &'a TcpStream,
    dst: &'a TcpStream,
    bulk: Bulk,
    timer: Timer,
    state: State,
}

/// What one read did.
enum Step {
    Eof,
    Again,
    /// Bytes that could not be written at once, still to write.
    Pending(Vec<u8>),
    /// Read past the cut and dropped (see [`DISCARD_PAUSE`]).
    Discarded,
    /// The awaited close-ok arrived.
    Finished,
}

impl<'a> Half<'a> {
    fn new(d: Direction<'a>, src: &'a TcpStream, dst: &'a TcpStream, splice: bool) -> Self {
        Half {
            d,
            src,
            dst,
            bulk: Bulk::new(splice),
            timer: Timer::default(),
            state: State::Run,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<End>> {
        loop {
            // The one timer: the close deadline or the idle limit (see
            // `Direction::wake_at`), or the end of a pause or of a wait.
            let wake_at = match self.state {
                State::Pause(t) | State::AwaitAck(t) => {
                    Some(self.d.wake_at().map_or(t, |w| w.min(t)))
                }
                _ => self.d.wake_at(),
            };
            if self.timer.poll_at(cx, wake_at).is_ready() {
                if self.d.time_up() {
                    return Poll::Ready(Ok(End::Hard));
                }
                let now = Instant::now();
                match self.state {
                    State::Pause(t) if now >= t => self.state = State::Run,
                    State::AwaitAck(t) if now >= t => return Poll::Ready(Ok(self.closed())),
                    // The other direction was busy meanwhile: look again.
                    _ => {}
                }
                continue;
            }
            match &mut self.state {
                State::Run => {}
                State::Pause(_) => return Poll::Pending,
                State::AwaitAck(_) => {
                    if self.d.shared.client_acked.load(Ordering::Acquire) {
                        return Poll::Ready(Ok(self.closed()));
                    }
                    return Poll::Pending;
                }
                State::Write { buf, close } => {
                    // Whatever sits in the bulk buffer was read before these bytes.
                    let written = match self.bulk.poll_flush(self.dst, cx) {
                        Poll::Ready(Ok(())) => poll_write_all(self.dst, buf, cx),
                        other => other,
                    };
                    match ready!(written) {
                        Ok(()) => {}
                        // What was read is dropped, as on the direct write below.
                        Err(_) if !*close && self.d.drops_on_error() => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    if *close {
                        self.d.close_sent();
                    }
                    self.state = State::Run;
                    continue;
                }
            }
            if self.bulk.active() {
                if let Some(end) = ready!(self.poll_bulk(cx))? {
                    return Poll::Ready(Ok(end));
                }
                continue;
            }
            match self.d.next() {
                // Woken for `wait_for_client_told` by the pump, which polls
                // again when the other direction changed a flag.
                Next::Read { .. } => {}
                Next::SendClose(frame) => {
                    self.state = State::Write {
                        buf: frame,
                        close: true,
                    };
                    continue;
                }
                Next::Hard => return Poll::Ready(Ok(End::Hard)),
            }
            ready!(self.src.poll_read_ready(cx))?;
            self.d.touch();
            match self.read()? {
                Step::Again => {}
                Step::Pending(buf) => self.state = State::Write { buf, close: false },
                Step::Discarded => {
                    // Past the cut reads are full-size again (not the short reads
                    // between bulk payloads), and paced.
                    self.bulk.reset();
                    self.state = State::Pause(Instant::now() + DISCARD_PAUSE);
                }
                Step::Finished => return Poll::Ready(Ok(End::Graceful)),
                Step::Eof => {
                    if let Some(end) = self.eof() {
                        return Poll::Ready(Ok(end));
                    }
                }
            }
        }
    }

    /// A long payload under way and what was read on past it (or a stream that
    /// is not AMQP): moves bytes on the bulk path. A close waits for the frame
    /// to end, so its boundary stays exact.
    /// `Some`: the direction ends so.
    fn poll_bulk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<End>>> {
        if self.d.deadline().is_some() && self.d.tracker.is_lost() {
            return Poll::Ready(Ok(Some(End::Hard)));
        }
        let (read, write) = match self.bulk.step(self.src, self.dst, &mut self.d) {
            Ok(Moved::Some) => {
                if self.d.close_due() {
                    // A payload still flowing when the close is due: give up.
                    return Poll::Ready(Ok(Some(End::Hard)));
                }
                self.d.touch();
                // `try_read`/`try_write` take nothing from tokio's budget, which
                // would make a busy connection yield now and then: do it here.
                ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
                return Poll::Ready(Ok(None));
            }
            Ok(Moved::Eof) => return Poll::Ready(Ok(self.eof())),
            Ok(Moved::Wait { read, write }) => (read, write),
            // The same ends of a normal close as on the copying path.
            Err(_) if self.d.ends_on_error() => return Poll::Ready(Ok(self.eof())),
            Err(_) if self.d.drops_on_error() => {
                // What was read is dropped, as the copying path drops it.
                self.bulk.reset();
                return Poll::Ready(Ok(None));
            }
            Err(e) => return Poll::Ready(Err(e)),
        };
        // Both registered before returning, so either wakes the task.
        let readable = read && self.src.poll_read_ready(cx)?.is_ready();
        let writable = write && self.dst.poll_write_ready(cx)?.is_ready();
        if readable || writable {
            Poll::Ready(Ok(None))
        } else {
            Poll::Pending
        }
    }

    /// One read on the copying path: tracked, then written straight on (or the
    /// start of a bulk payload).
    fn read(&mut self) -> io::Result<Step> {
        let (d, bulk, src, dst) = (&mut self.d, &mut self.bulk, self.src, self.dst);
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let buf = &mut scratch[..bulk.read_size(SCRATCH_SIZE)];
            let n = match try_read(src, buf) {
                Ok(0) => return Ok(Step::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Again),
                Err(_) if d.ends_on_error() => return Ok(Step::Eof),
                Err(e) => return Err(e),
            };
            let data = &buf[..n];
            let k = match d.on_read(data) {
                Chunk::Forward(k) => k,
                Chunk::Discarded => return Ok(Step::Discarded),
                Chunk::Finished => return Ok(Step::Finished),
            };
            let mut out = &data[..k];
            // Read after `on_read`, which notes a peer's close it just followed.
            if d.plain() {
                // A long payload follows: what was read goes into a bulk buffer, ahead of
                // the payload that will be read after it.
                if let Some(rest) = bulk.start(&d.tracker, out) {
                    out = &out[out.len() - rest..];
                    if rest > 0 {
                        return Ok(Step::Pending(out.to_vec()));
                    }
                }
            } else {
                // No bulk payload starts while closing: reads are full-size.
                bulk.read_full();
            }
            while !out.is_empty() {
                match dst.try_write(out) {
                    Ok(w) => out = &out[w..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Step::Pending(out.to_vec()));
                    }
                    Err(_) if d.drops_on_error() => return Ok(Step::Again),
                    Err(e) => return Err(e),
                }
            }
            Ok(Step::Again)
        })
    }

    /// The source ended: ends the direction as [`Direction::at_eof`] says
    /// (`None`: after the client's close-ok, see [`State::AwaitAck`]).
    fn eof(&mut self) -> Option<End> {
        match self.d.at_eof() {
            AtEof::End(End::Closed) => Some(self.closed()),
            AtEof::End(end) => Some(end),
            AtEof::AwaitAck(until) => {
                self.state = State::AwaitAck(until);
                None
            }
        }
    }

    /// Ends with a half-close: the peer is done sending; tell the other side,
    /// keep reading it.
    fn closed(&mut self) -> End {
        let _ = SockRef::from(self.dst).shutdown(std::net::Shutdown::Write);
        End::Closed
    }

    /// The direction is over: its bulk buffer goes back and the other one learns it.
    fn finish(&mut self) {
        self.bulk.reset();
        self.timer = Timer::default();
        self.d.finish();
    }
}

/// Writes all of `buf` (what is written is taken off its front).
fn poll_write_all(
    dst: &TcpStream,
    buf: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !buf.is_empty() {
        ready!(dst.poll_write_ready(cx))?;
        match dst.try_write(buf) {
            Ok(n) => {
                buf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::proxy::test_util::pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::balancer::{Command, ConnRegistry};
    use crate::proxy::amqp;

    const HEARTBEAT: [u8; 8] = [8, 0, 0, 0, 0, 0, 0, 0xCE];
    const WITHIN: Duration = Duration::from_secs(5);

    /// A client, a broker and the pump between them in a task of its own.
    type Rig = (
        TcpStream,
        TcpStream,
        Arc<ConnRegistry>,
        JoinHandle<io::Result<End>>,
    );

    /// A 2 s close timeout, `idle`, payloads spliced: see [`rig_with`].
    async fn rig(idle: Option<Duration>) -> Rig {
        rig_with(Duration::from_secs(2), idle, true).await
    }

    /// A client and a broker with a pump between them, in a task of its own,
    /// past the protocol header; `registry` sends it commands as connection 1.
    /// `splice`: long payloads through pipes, else copied.
    async fn rig_with(close: Duration, idle: Option<Duration>, splice: bool) -> Rig {
        let (mut client, near) = pair().await;
        let (far, mut broker) = pair().await;
        let registry = Arc::new(ConnRegistry::default());
        let orders = registry.register(1);
        let limits = Limits {
            close,
            idle,
            amqp: true,
            splice,
        };
        let pump = tokio::spawn(async move {
            let shared = Shared::new();
            let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
            let meters = Meters {
                up: &up,
                down: &down,
            };
            Pump::new(&near, &far, Vec::new(), &shared, orders, limits, meters).await
        });
        client
            .write_all(amqp::PROTOCOL_HEADER)
            .await
            .expect("header");
        assert_eq!(read_n(&mut broker, 8).await, amqp::PROTOCOL_HEADER);
        (client, broker, registry, pump)
    }

    async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(WITHIN, s.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        buf
    }

    /// Whether `s` reaches EOF within `within` (`None`: neither data nor EOF).
    async fn eof_within(s: &mut TcpStream, within: Duration) -> Option<bool> {
        let mut one = [0u8; 1];
        match tokio::time::timeout(within, s.read(&mut one)).await {
            Ok(Ok(0)) => Some(true),
            Ok(_) => Some(false),
            Err(_) => None,
        }
    }

    async fn ended(pump: JoinHandle<io::Result<End>>) -> End {
        tokio::time::timeout(WITHIN, pump)
            .await
            .expect("the pump ends")
            .expect("no panic")
            .expect("no error")
    }

    /// The broker closed and left: the client sees no EOF until it answers
    /// with its close-ok, then EOF, and the connection ends closed.
    async fn answers_the_brokers_close(mut client: TcpStream, pump: JoinHandle<io::Result<End>>) {
        let early = eof_within(&mut client, Duration::from_millis(200)).await;
        assert_eq!(early, None, "EOF before the close-ok");
        client
            .write_all(&amqp::connection_close_ok())
            .await
            .expect("close-ok");
        assert_eq!(eof_within(&mut client, WITHIN).await, Some(true));
        drop(client);
        assert_eq!(ended(pump).await, End::Closed);
    }

    #[tokio::test]
    async fn carries_both_ways_and_passes_half_closes_on() {
        let (mut client, mut broker, _registry, pump) = rig(None).await;
        broker.write_all(&HEARTBEAT).await.expect("write");
        assert_eq!(read_n(&mut client, 8).await, HEARTBEAT);
        client.write_all(&HEARTBEAT).await.expect("write");
        assert_eq!(read_n(&mut broker, 8).await, HEARTBEAT);
        // The client is done sending; the broker is not.
        client.shutdown().await.expect("shutdown");
        assert_eq!(eof_within(&mut broker, WITHIN).await, Some(true));
        broker.write_all(&HEARTBEAT).await.expect("write");
        assert_eq!(read_n(&mut client, 8).await, HEARTBEAT);
        drop(broker);
        assert_eq!(eof_within(&mut client, WITHIN).await, Some(true));
        assert_eq!(ended(pump).await, End::Closed);
    }

    #[tokio::test]
    async fn a_close_cuts_at_the_frame_boundary_and_ends_gracefully() {
        let (mut client, mut broker, registry, pump) = rig(None).await;
        // A frame and a half, then the close command, then the rest.
        broker.write_all(&HEARTBEAT).await.expect("write");
        broker.write_all(&HEARTBEAT[..3]).await.expect("write");
        assert_eq!(read_n(&mut client, 11).await[8..], HEARTBEAT[..3]);
        registry.send(1, Command::Close("draining".into()));
        broker.write_all(&HEARTBEAT[3..]).await.expect("write");
        broker.write_all(&HEARTBEAT).await.expect("write");
        // The frame under way is finished, then comes warren's close, and
        // nothing of the frame after it.
        assert_eq!(read_n(&mut client, 5).await, HEARTBEAT[3..]);
        let forced = amqp::connection_close(amqp::CONNECTION_FORCED, "draining");
        assert_eq!(read_n(&mut client, forced.len()).await, forced);
        // Once the client was told, the broker is closed cleanly too.
        let success = amqp::connection_close(amqp::REPLY_SUCCESS, "draining");
        assert_eq!(read_n(&mut broker, success.len()).await, success);
        let ok = amqp::connection_close_ok();
        client.write_all(&ok).await.expect("close-ok");
        broker.write_all(&ok).await.expect("close-ok");
        assert_eq!(ended(pump).await, End::Graceful);
    }

    /// A channel-0 connection method frame.
    fn method(method: u16, args: &[u8]) -> Vec<u8> {
        let mut f = vec![1, 0, 0];
        f.extend_from_slice(&(4 + args.len() as u32).to_be_bytes());
        f.extend_from_slice(&amqp::CLASS_CONNECTION.to_be_bytes());
        f.extend_from_slice(&method.to_be_bytes());
        f.extend_from_slice(args);
        f.push(amqp::FRAME_END);
        f
    }

    /// A limit refuses the connection at its open, on either pump: the broker
    /// gets start-ok and tune-ok but never the open, the client gets 530 with
    /// the text, and its close-ok ends the connection (the broker leg closes).
    #[tokio::test]
    async fn a_refused_open_is_not_forwarded_and_the_client_gets_530() {
        use crate::proxy::conn_info::{Clients, ConnInfo};
        for tls_pump in [false, true] {
            let config = crate::config::Config::from_yaml(
                "listen: 127.0.0.1:5672\nbackends: [{name: a, address: 'h:1'}]\n\
                 clients: {limits: {vhosts: {v: {max_connections: 0}}}}\n",
                std::path::Path::new("t.yaml"),
            )
            .expect("valid");
            let clients = Arc::new(Clients::new(Arc::new(arc_swap::ArcSwap::from_pointee(
                config,
            ))));
            let peer = "127.0.0.1:1".parse().expect("addr");
            let info = Arc::new(ConnInfo::new(
                &clients,
                1,
                peer,
                false,
                crate::telemetry::metrics::LISTENER_PLAIN,
                "a",
                true,
            ));
            let (mut client, near) = pair().await;
            let (far, mut broker) = pair().await;
            let registry = Arc::new(ConnRegistry::default());
            let orders = registry.register(1);
            let limits = Limits {
                close: Duration::from_secs(5),
                idle: None,
                amqp: true,
                splice: true,
            };
            let pump_info = Arc::clone(&info);
            let pump = tokio::spawn(async move {
                let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
                let meters = Meters {
                    up: &up,
                    down: &down,
                };
                if tls_pump {
                    use crate::proxy::stream::{pump, Stream};
                    let (c, s) = (Stream::Plain(near), Stream::Plain(far));
                    pump(c, s, &[], orders, limits, meters, Some(pump_info)).await
                } else {
                    let shared = Shared::with_info(Some(pump_info));
                    Pump::new(&near, &far, Vec::new(), &shared, orders, limits, meters).await
                }
            });
            let start_ok = method(
                amqp::METHOD_START_OK,
                &crate::proxy::handshake::tests::start_ok_args(&[], "PLAIN", b"\0u\0p"),
            );
            let tune_ok = method(amqp::METHOD_TUNE_OK, &[0, 0, 0, 2, 0, 0, 0, 60]);
            let open = method(amqp::METHOD_OPEN, b"\x01v\x00\x00");
            let mut sent = amqp::PROTOCOL_HEADER.to_vec();
            sent.extend(&start_ok);
            sent.extend(&tune_ok);
            let forwarded = sent.clone();
            sent.extend(&open);
            client.write_all(&sent).await.expect("write");
            assert_eq!(read_n(&mut broker, forwarded.len()).await, forwarded);
            let refusal = amqp::connection_close(
                amqp::NOT_ALLOWED,
                "warren: connection limit for vhost v reached (0)",
            );
            assert_eq!(read_n(&mut client, refusal.len()).await, refusal);
            client
                .write_all(&amqp::connection_close_ok())
                .await
                .expect("close-ok");
            assert_eq!(ended(pump).await, End::Hard, "tls pump: {tls_pump}");
            // The broker got nothing more: the TCP connection just ends.
            assert_eq!(eof_within(&mut broker, WITHIN).await, Some(true));
            let close = info.read(|d| d.close.clone()).expect("close recorded");
            assert_eq!((close.code, info.opened()), (530, false));
            assert_eq!(info.heartbeat(), 60);
        }
    }

    /// An AMQP 1.0 connection on either pump: a drain sends the client a
    /// `close` with `amqp:connection:forced`, the broker a plain `close`, at
    /// frame boundaries (a long transfer under way is finished first), and
    /// their answering closes end it gracefully.
    #[tokio::test]
    async fn an_amqp10_connection_is_closed_the_amqp10_way() {
        use crate::proxy::amqp10;
        let frame = |body: &[u8]| {
            let mut f = ((8 + body.len()) as u32).to_be_bytes().to_vec();
            f.extend_from_slice(&[2, 0, 0, 0]);
            f.extend_from_slice(body);
            f
        };
        let open = frame(&[0x00, 0x53, 0x10, 0xc0, 0x03, 0x01, 0xa1, 0x00]);
        let mut transfer = vec![0x00, 0x53, 0x14, 0x45];
        transfer.resize(300_000, 0x41);
        let transfer = frame(&transfer);
        for tls_pump in [false, true] {
            let (mut client, near) = pair().await;
            let (far, mut broker) = pair().await;
            let registry = Arc::new(ConnRegistry::default());
            let orders = registry.register(1);
            let limits = Limits {
                close: Duration::from_secs(5),
                idle: None,
                amqp: true,
                splice: true,
            };
            let pump = tokio::spawn(async move {
                let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
                let meters = Meters {
                    up: &up,
                    down: &down,
                };
                if tls_pump {
                    use crate::proxy::stream::{pump, Stream};
                    let (c, s) = (Stream::Plain(near), Stream::Plain(far));
                    pump(c, s, &[], orders, limits, meters, None).await
                } else {
                    let shared = Shared::new();
                    Pump::new(&near, &far, Vec::new(), &shared, orders, limits, meters).await
                }
            });
            let mut hello = amqp10::HEADER_SASL.to_vec();
            hello.extend_from_slice(&[0, 0, 0, 8, 2, 1, 0, 0]);
            hello.extend_from_slice(amqp10::HEADER_AMQP);
            hello.extend_from_slice(&open);
            client.write_all(&hello).await.expect("write");
            assert_eq!(read_n(&mut broker, hello.len()).await, hello);
            broker.write_all(&hello).await.expect("write");
            assert_eq!(read_n(&mut client, hello.len()).await, hello);
            // A transfer half sent when the drain comes: it is finished first.
            let (first, rest) = transfer.split_at(100_000);
            broker.write_all(first).await.expect("write");
            assert!(read_n(&mut client, first.len()).await == first);
            registry.send(1, Command::Close("draining".into()));
            tokio::time::sleep(Duration::from_millis(50)).await;
            broker.write_all(rest).await.expect("write");
            assert!(read_n(&mut client, rest.len()).await == rest);
            let forced = amqp10::close_forced("draining");
            assert_eq!(read_n(&mut client, forced.len()).await, forced);
            let plain = amqp10::close();
            assert_eq!(read_n(&mut broker, plain.len()).await, plain);
            client.write_all(&plain).await.expect("close");
            broker.write_all(&forced).await.expect("close");
            assert_eq!(ended(pump).await, End::Graceful, "tls pump: {tls_pump}");
        }
    }

    #[tokio::test]
    async fn a_hard_close_ends_at_once() {
        let (_client, _broker, registry, pump) = rig(None).await;
        registry.send(1, Command::Hard);
        assert_eq!(ended(pump).await, End::Hard);
    }

    #[tokio::test]
    async fn a_hard_close_after_a_graceful_one_is_not_left_for_the_close_timeout() {
        let (mut client, mut broker, registry, pump) =
            rig_with(Duration::from_secs(30), None, true).await;
        registry.send(1, Command::Close("draining".into()));
        let forced = amqp::connection_close(amqp::CONNECTION_FORCED, "draining");
        assert_eq!(read_n(&mut client, forced.len()).await, forced);
        let success = amqp::connection_close(amqp::REPLY_SUCCESS, "draining");
        assert_eq!(read_n(&mut broker, success.len()).await, success);
        // Neither answers; the grace is over.
        registry.send(1, Command::Hard);
        assert_eq!(ended(pump).await, End::Hard);
    }

    #[tokio::test]
    async fn after_the_brokers_own_close_the_client_answers_before_it_sees_eof() {
        let (mut client, mut broker, _registry, pump) = rig(None).await;
        let forced = amqp::connection_close(amqp::CONNECTION_FORCED, "shutdown");
        broker.write_all(&forced).await.expect("write");
        drop(broker);
        assert_eq!(read_n(&mut client, forced.len()).await, forced);
        // No EOF while the client has not answered.
        answers_the_brokers_close(client, pump).await;
    }

    /// A body frame of `len` bytes on channel 1, its bytes counting up.
    fn body_frame(len: usize) -> Vec<u8> {
        let mut f = vec![3, 0, 1];
        f.extend_from_slice(&(len as u32).to_be_bytes());
        f.extend((0..len).map(|i| (i % 251) as u8));
        f.push(0xCE);
        f
    }

    /// Long bodies take the bulk path, spliced or copied; copied, it reads on
    /// past each payload's end while nothing is closing: the frames between
    /// payloads are followed either way, so the broker's own close right
    /// behind them is seen.
    #[tokio::test]
    async fn frames_read_on_past_a_bulk_payload_are_followed() {
        for splice in [true, false] {
            frames_after_bulk_payloads_are_followed(splice).await;
        }
    }

    async fn frames_after_bulk_payloads_are_followed(splice: bool) {
        let (mut client, mut broker, _registry, pump) =
            rig_with(Duration::from_secs(2), None, splice).await;
        let moved_before = crate::proxy::buffer::bytes_moved();
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend(body_frame(300_000));
            stream.extend_from_slice(&HEARTBEAT);
        }
        let forced = amqp::connection_close(amqp::CONNECTION_FORCED, "shutdown");
        stream.extend_from_slice(&forced);
        let sent = stream.clone();
        let writer = tokio::spawn(async move {
            broker.write_all(&sent).await.expect("write");
            broker
        });
        assert!(read_n(&mut client, stream.len()).await == stream);
        let broker = writer.await.expect("writer");
        assert!(
            crate::proxy::buffer::bytes_moved() - moved_before >= 3 * 300_000,
            "the bodies did not take the bulk path"
        );
        drop(broker);
        // Seen as the broker's close: the client gets time to answer it.
        answers_the_brokers_close(client, pump).await;
    }

    /// A close ordered while long bodies stream, spliced or copied: the
    /// client gets whole frames, then warren's close and nothing after it; the
    /// broker gets its own close and, with both close-oks, the connection ends
    /// gracefully.
    #[tokio::test]
    async fn a_close_during_bulk_frames_cuts_at_a_boundary() {
        for splice in [true, false] {
            close_during_bulk_frames(splice).await;
        }
    }

    async fn close_during_bulk_frames(splice: bool) {
        let (mut client, broker, registry, pump) =
            rig_with(Duration::from_secs(2), None, splice).await;
        let (mut broker_rx, mut broker_tx) = broker.into_split();
        let frame = body_frame(200_000);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (frame, stop) = (frame.clone(), stop.clone());
            tokio::spawn(async move {
                // Whole frames until told to stop.
                while !stop.load(Ordering::Relaxed) {
                    broker_tx.write_all(&frame).await.expect("write");
                }
                broker_tx
            })
        };
        assert!(read_n(&mut client, frame.len()).await == frame);
        registry.send(1, Command::Close("draining".into()));
        let forced = amqp::connection_close(amqp::CONNECTION_FORCED, "draining");
        let mut frames = 1;
        loop {
            let head = read_n(&mut client, 7).await;
            if head[0] == 1 {
                let rest = read_n(&mut client, forced.len() - 7).await;
                assert_eq!([head, rest].concat(), forced);
                break;
            }
            let rest = read_n(&mut client, frame.len() - 7).await;
            assert!([head, rest].concat() == frame, "frame {frames} changed");
            frames += 1;
        }
        client
            .write_all(&amqp::connection_close_ok())
            .await
            .expect("close-ok");
        let success = amqp::connection_close(amqp::REPLY_SUCCESS, "draining");
        let mut got = vec![0u8; success.len()];
        tokio::time::timeout(WITHIN, broker_rx.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, success);
        stop.store(true, Ordering::Relaxed);
        let mut broker_tx = writer.await.expect("writer");
        broker_tx
            .write_all(&amqp::connection_close_ok())
            .await
            .expect("close-ok");
        assert_eq!(ended(pump).await, End::Graceful);
    }

    #[tokio::test]
    async fn an_idle_connection_is_cut_and_traffic_keeps_it() {
        let (mut client, mut broker, _registry, pump) = rig(Some(Duration::from_millis(300))).await;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            broker.write_all(&HEARTBEAT).await.expect("write");
            assert_eq!(read_n(&mut client, 8).await, HEARTBEAT);
        }
        assert!(!pump.is_finished(), "cut while busy");
        assert_eq!(ended(pump).await, End::Hard);
    }
}
