//! One direction of a proxied connection, as both data paths follow it: the
//! plain TCP pump (`pump`) and the TLS pump (`stream`) do their own I/O and
//! share what is kept here: the AMQP close rules, how a connection ends
//! ([`End`], [`joined`]), its time limits and byte meters.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::balancer::Command;
use crate::proxy::amqp::{self, Dir, FrameTracker, Protocol, Seen};
use crate::proxy::amqp10;
use crate::proxy::conn_info::{ConnInfo, Side};

/// What the two directions of one connection tell each other.
pub(crate) struct Shared {
    pub(crate) epoch: Instant,
    /// Milliseconds since `epoch` at the last byte read in either direction
    /// (kept only when an idle timeout is set).
    pub(crate) last_active: AtomicU64,
    /// The client has been sent `connection.close`.
    pub(crate) client_told: AtomicBool,
    /// The broker-to-client direction has ended.
    pub(crate) down_done: AtomicBool,
    /// Client or broker already sent `connection.close` on its own: the connection
    /// is closing the normal way, so warren only forwards (within its deadline).
    pub(crate) peer_closing: AtomicBool,
    /// The broker sent `connection.close` (RabbitMQ closes its socket right after
    /// it on shutdown, without waiting for close-ok).
    pub(crate) broker_closed: AtomicBool,
    /// The client answered a close with `close-ok` (or, refused by a limit,
    /// is done).
    pub(crate) client_acked: AtomicBool,
    /// A limit refused the connection at its `connection.open` (see
    /// [`Direction::refuse`]).
    pub(crate) refused: AtomicBool,
    /// The client's protocol header said AMQP 1.0: warren closes the 1.0 way.
    pub(crate) amqp10: AtomicBool,
    /// AMQP 1.0: the client's `open` went to the broker.
    pub(crate) client_opened: AtomicBool,
    pub(crate) notify: Notify,
    /// The connection's record, where warren keeps one.
    pub(crate) info: Option<Arc<ConnInfo>>,
}

impl Shared {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Shared::with_info(None)
    }

    pub(crate) fn with_info(info: Option<Arc<ConnInfo>>) -> Self {
        Shared {
            epoch: Instant::now(),
            last_active: AtomicU64::new(0),
            client_told: AtomicBool::new(false),
            down_done: AtomicBool::new(false),
            peer_closing: AtomicBool::new(false),
            broker_closed: AtomicBool::new(false),
            client_acked: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            amqp10: AtomicBool::new(false),
            client_opened: AtomicBool::new(false),
            notify: Notify::new(),
            info,
        }
    }

    pub(crate) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active.store(ms, Ordering::Relaxed);
    }

    /// When the connection becomes idle, given the last activity seen.
    pub(crate) fn idle_deadline(&self, idle: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.last_active.load(Ordering::Relaxed)) + idle
    }

    pub(crate) fn set(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// All the flags at once: a pump that drives both directions itself polls
    /// them again while a pass over them changed this.
    pub(crate) fn flags(&self) -> [bool; 6] {
        [
            &self.client_told,
            &self.down_done,
            &self.peer_closing,
            &self.broker_closed,
            &self.client_acked,
            &self.refused,
        ]
        .map(|f| f.load(Ordering::Acquire))
    }
}

/// How the ends of a connection's two directions make the connection's: once
/// both are over, graceful if either closed gracefully. (A hard end or an
/// error of either ends both at once, before this is asked.)
pub(crate) fn joined(ends: &[Option<End>; 2]) -> Option<End> {
    match ends {
        [Some(End::Graceful), Some(_)] | [Some(_), Some(End::Graceful)] => Some(End::Graceful),
        [Some(_), Some(_)] => Some(End::Closed),
        _ => None,
    }
}

/// Far enough ahead to stand for "never" in a `select!` branch that is disabled.
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// The one timer of a direction (close deadline or idle limit, whichever is
/// first), on the heap and only while one is set: an idle connection without an
/// idle limit holds none, and a `Sleep` inline in every `select!` would grow
/// every connection's future by its size.
#[derive(Default)]
pub(crate) struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    /// Completes at `at`; never when `None`.
    pub(crate) fn at(&mut self, at: Option<Instant>) -> impl Future<Output = ()> + '_ {
        self.set(at);
        std::future::poll_fn(move |cx| self.poll(cx))
    }

    /// Ready once `at` has come (`None`: never; the timer is dropped).
    pub(crate) fn poll_at(&mut self, cx: &mut Context<'_>, at: Option<Instant>) -> Poll<()> {
        self.set(at);
        self.poll(cx)
    }

    fn set(&mut self, at: Option<Instant>) {
        match (at, &mut self.0) {
            (None, slot) => *slot = None,
            (Some(t), Some(sleep)) => {
                if sleep.deadline() != t {
                    sleep.as_mut().reset(t);
                }
            }
            (Some(t), slot) => *slot = Some(Box::pin(tokio::time::sleep_until(t))),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// The `connection.close` warren sends in direction `dir`: 320 (forced) to the
/// client, 200 to the broker.
#[cfg(test)]
pub(crate) fn close_frame(dir: Dir, reason: &str) -> Vec<u8> {
    amqp::connection_close(close_code(dir), reason)
}

/// The reply code of warren's own close in direction `dir` (a drain's).
fn close_code(dir: Dir) -> u16 {
    match dir {
        Dir::Down => amqp::CONNECTION_FORCED,
        Dir::Up => amqp::REPLY_SUCCESS,
    }
}

/// One direction of a connection: its frame tracker, the state of warren's own
/// close, and what it shares with the other direction. The pumps ask it, read
/// by read, what the close rules want; it does no I/O itself.
///
/// In normal operation everything is forwarded and tracked. On
/// [`Command::Close`] forwarding stops at the next frame boundary and warren's
/// own `connection.close` goes out (320 towards the client first; then 200
/// towards the broker, so the broker's close-ok can never reach a client that
/// was not told); what follows is discarded until the peer's `close-ok`, all
/// within the close timeout. A close the client or the broker started itself is
/// left to finish.
///
/// A connection a limit refuses at its `connection.open` ([`Direction::refuse`])
/// closes the same way towards the client, with 530 NOT_ALLOWED: the open
/// frame is not forwarded, the client gets `connection.close` and its close-ok
/// ends the connection; the broker, which never saw the open, gets no frame of
/// warren's, only the end of the TCP connection.
pub(crate) struct Direction<'a> {
    pub(crate) dir: Dir,
    pub(crate) limits: Limits,
    pub(crate) shared: &'a Shared,
    /// Counts the bytes this direction forwards (the backend's total).
    pub(crate) moved: &'a AtomicU64,
    pub(crate) tracker: FrameTracker,
    /// Set by [`Command::Close`]: when the close turns hard, and its reason.
    deadline: Option<Instant>,
    reason: Option<Arc<str>>,
    /// The reply code of warren's close in this direction (a drain's, or
    /// 530 for a refusal).
    code: u16,
    /// The connection was refused by a limit (see [`Direction::refuse`]).
    refusing: bool,
    /// Forwarding stopped at a frame boundary.
    cut: bool,
    /// Our `connection.close` went out.
    sent_close: bool,
    /// Client to broker: what of the client's stream has been noted in
    /// [`Shared`] and the record (see [`Direction::note`]).
    noted: Noted,
}

/// What the client-to-broker direction has noted of the client's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Noted {
    Nothing,
    /// The protocol (AMQP 1.0: `open` still to come).
    Protocol,
    /// All there is to note.
    Done,
}

/// What a direction does before its next read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Read; with `wait_for_client_told` also wake when the client has been
    /// sent its close (the broker's close waits for it).
    Read { wait_for_client_told: bool },
    /// Write this `connection.close` first, then call [`Direction::close_sent`].
    SendClose(Vec<u8>),
    /// End hard: nothing graceful is possible.
    Hard,
}

/// Pause after each read that is discarded while a peer owes warren its
/// close-ok. Discarding at full speed would keep that peer's socket always
/// writable, and a client whose I/O loop writes for as long as it can (lapin
/// does, while its publishers keep queueing) would then never read warren's
/// `connection.close`, and be reset at `drain.close_timeout`. Paced, its socket
/// buffers fill within milliseconds, it reads the close and answers.
pub(crate) const DISCARD_PAUSE: Duration = Duration::from_millis(1);

/// What to do with the bytes of one read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Forward the first this many bytes (counted in `moved` already); any
    /// after them lie past the cut.
    Forward(usize),
    /// Past the cut: nothing is forwarded; the tracker follows the stream to
    /// recognise the peer's close-ok.
    Discarded,
    /// The peer's close-ok arrived: the direction ends gracefully.
    Finished,
}

impl<'a> Direction<'a> {
    pub(crate) fn new(dir: Dir, limits: Limits, shared: &'a Shared, moved: &'a AtomicU64) -> Self {
        let mut tracker = match dir {
            _ if !limits.amqp => FrameTracker::not_amqp(),
            Dir::Up => FrameTracker::client_to_server(),
            Dir::Down => FrameTracker::server_to_client(),
        };
        if let Some(info) = &shared.info {
            tracker = tracker.capture(info.wanted(dir));
        }
        Direction {
            dir,
            limits,
            shared,
            moved,
            tracker,
            deadline: None,
            reason: None,
            code: close_code(dir),
            refusing: false,
            cut: false,
            sent_close: false,
            noted: Noted::Nothing,
        }
    }

    /// The connection speaks AMQP 1.0 (the client's header said so).
    fn amqp10(&self) -> bool {
        self.shared.amqp10.load(Ordering::Acquire)
    }

    /// AMQP 1.0: warren may send its `close` in this direction: the client's
    /// `open` went to the broker and (towards the client) the broker's `open`
    /// came back. Before that a 1.0 connection is ended without a frame.
    fn open10(&self) -> bool {
        match self.dir {
            Dir::Up => self.tracker.opened(),
            Dir::Down => self.tracker.opened() && self.shared.client_opened.load(Ordering::Acquire),
        }
    }

    /// Client to broker: notes in [`Shared`] and the record what the tracker
    /// learnt of the client's stream: its protocol, and for AMQP 1.0 its `open`.
    fn note(&mut self) {
        if self.dir != Dir::Up || self.noted == Noted::Done {
            return;
        }
        if self.noted == Noted::Nothing {
            let Some(protocol) = self.tracker.protocol() else {
                return;
            };
            if let Some(info) = &self.shared.info {
                info.set_protocol(protocol);
            }
            if protocol != Protocol::Amqp10 {
                self.noted = Noted::Done;
                return;
            }
            self.shared.amqp10.store(true, Ordering::Release);
            self.noted = Noted::Protocol;
        }
        if self.tracker.opened() {
            self.shared.set(&self.shared.client_opened);
            self.noted = Noted::Done;
        }
    }

    /// The close warren sends in this direction: 0-9-1's `connection.close`
    /// with this direction's code, or 1.0's `close` (forced towards the client,
    /// plain towards the broker).
    fn close_frame(&self, text: &str) -> Vec<u8> {
        match (self.amqp10(), self.dir) {
            (false, _) => amqp::connection_close(self.code, text),
            (true, Dir::Down) => amqp10::close_forced(text),
            (true, Dir::Up) => amqp10::close(),
        }
    }

    /// Takes in the connection's command: the first [`Command::Close`] starts
    /// the close timeout. `Some`: the direction ends so at once.
    pub(crate) fn follow(&mut self, cmd: &Command) -> Option<End> {
        match cmd {
            Command::Run => {}
            Command::Hard => return Some(End::Hard),
            Command::Close(text) => {
                if self.deadline.is_none() {
                    self.deadline = Some(Instant::now() + self.limits.close);
                    self.reason = Some(text.clone());
                }
            }
        }
        None
    }

    /// When the close turns hard, once a close was commanded.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The close timeout has run out.
    pub(crate) fn close_due(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// When to look at the clock next: the close deadline or the end of the
    /// idle limit, whichever comes first (`None`: neither applies).
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        let idle_at = self.limits.idle.map(|idle| self.shared.idle_deadline(idle));
        match (self.deadline, idle_at) {
            (Some(close), Some(idle)) => Some(close.min(idle)),
            (close, idle) => close.or(idle),
        }
    }

    /// At [`wake_at`](Self::wake_at): true when the direction must end hard, the
    /// close being due or the connection idle. The other direction may have
    /// been busy meanwhile: then it is false, look again.
    pub(crate) fn time_up(&self) -> bool {
        if self.close_due() {
            return true;
        }
        if let Some(idle) = self.limits.idle {
            if Instant::now() >= self.shared.idle_deadline(idle) {
                tracing::debug!(
                    idle = crate::telemetry::logging::duration(idle),
                    "idle timeout"
                );
                return true;
            }
        }
        false
    }

    /// A read brought bytes: the connection is not idle, and its peer was
    /// heard (for heartbeat gaps).
    pub(crate) fn touch(&self) {
        if self.limits.idle.is_some() {
            self.shared.touch();
        }
        if let Some(info) = &self.shared.info {
            info.heard(self.dir);
        }
    }

    /// Counts `n` forwarded bytes, on the backend and the connection.
    pub(crate) fn count(&self, n: u64) {
        self.moved.fetch_add(n, Ordering::Relaxed);
        if let Some(info) = &self.shared.info {
            info.count(self.dir, n);
        }
    }

    /// An I/O error ends this direction as EOF would: the broker-to-client one,
    /// after the broker's own `connection.close` (RabbitMQ resets its socket
    /// right after it when the client's close-ok comes late).
    pub(crate) fn ends_on_error(&self) -> bool {
        self.dir == Dir::Down && self.shared.broker_closed.load(Ordering::Acquire)
    }

    /// An I/O error drops what was to be written and the direction goes on: the
    /// client-to-broker one, after the broker's own `connection.close` (what
    /// the client still sends, its close-ok, has nowhere to go and need not).
    pub(crate) fn drops_on_error(&self) -> bool {
        self.dir == Dir::Up && self.shared.broker_closed.load(Ordering::Acquire)
    }

    /// Warren is closing the connection and neither peer has started a close of
    /// its own (one already under way is left to finish).
    pub(crate) fn closing(&self) -> bool {
        self.reason.is_some() && !self.shared.peer_closing.load(Ordering::Acquire)
    }

    /// Whether warren's own close is due before the next read.
    pub(crate) fn next(&mut self) -> Next {
        if self.dir == Dir::Down && self.shared.refused.load(Ordering::Acquire) {
            if !self.refusing {
                // The client-to-broker direction refused the connection: the
                // client is told here, with 530 and the refusal's text.
                let text = self.shared.info.as_ref().and_then(|i| i.refusal());
                self.refuse_with(text.unwrap_or_default());
            } else if self.sent_close && self.shared.client_acked.load(Ordering::Acquire) {
                // The client answered (or left): the broker leg, which never
                // saw the open, is simply closed.
                return Next::Hard;
            }
        }
        let peer_closing = self.shared.peer_closing.load(Ordering::Acquire);
        let (Some(text), false, false) = (&self.reason, self.sent_close, peer_closing) else {
            return Next::Read {
                // Until the open is admitted, the direction to the client is
                // also woken by a refusal, and then by the client being done.
                wait_for_client_told: self.dir == Dir::Down && !self.past_open(),
            };
        };
        if self.tracker.is_lost() || (self.amqp10() && !self.open10()) {
            // Not AMQP, or AMQP 1.0 before both `open`s: no close to send.
            return Next::Hard;
        }
        let turn = match self.dir {
            Dir::Down => true,
            Dir::Up => self.shared.client_told.load(Ordering::Acquire),
        };
        if self.dir == Dir::Up && !turn && self.shared.down_done.load(Ordering::Acquire) {
            // The broker already closed its side; the client cannot be told.
            return Next::Hard;
        }
        if turn && (self.cut || self.tracker.at_boundary()) {
            return Next::SendClose(self.close_frame(text));
        }
        Next::Read {
            wait_for_client_told: !turn,
        }
    }

    /// The close of [`Next::SendClose`] has been written.
    pub(crate) fn close_sent(&mut self) {
        self.sent_close = true;
        if self.dir == Dir::Down {
            if let (Some(info), Some(text)) = (&self.shared.info, &self.reason) {
                info.closed(Side::Warren, self.code, text);
            }
            self.shared.set(&self.shared.client_told);
        }
    }

    /// A limit refused the connection at the client's `connection.open`, which
    /// is not forwarded: this direction (client to broker) is past its cut and
    /// owes the broker nothing (it never saw the open); the client's close-ok
    /// ends it, or the close timeout. The other direction tells the client.
    fn refuse(&mut self) {
        self.refuse_with(String::new());
        self.cut = true;
        self.sent_close = true;
        self.shared.set(&self.shared.refused);
    }

    /// Closing because of a refusal: 530 with `text` (towards the client),
    /// within the close timeout.
    fn refuse_with(&mut self, text: String) {
        self.refusing = true;
        self.code = amqp::NOT_ALLOWED;
        self.reason = Some(text.into());
        self.deadline = Some(Instant::now() + self.limits.close);
    }

    /// Follows one read (`data`, not empty) and says how much of it to forward:
    /// all of it normally, up to the next frame boundary while closing. Notes a
    /// close or close-ok of the peers in [`Shared`].
    pub(crate) fn on_read(&mut self, data: &[u8]) -> Chunk {
        if self.sent_close || self.cut {
            let seen = self.skim(data);
            return if self.sent_close && seen {
                Chunk::Finished
            } else {
                Chunk::Discarded
            };
        }
        let k = if !self.closing() {
            // Forwarded whole, unless a limit refuses the connection at its
            // open (then up to that frame, and the rest is followed already).
            self.track(data)
        } else {
            let k = if self.tracker.at_boundary() {
                0
            } else {
                self.feed(data, true).0
            };
            if k < data.len() {
                self.cut = true;
                self.skim(&data[k..]);
            }
            k
        };
        if k > 0 {
            self.count(k as u64);
        }
        Chunk::Forward(k)
    }

    /// Feeds `data` to the tracker, all of it or (`stop`) up to the first
    /// frame boundary, handing each connection method it kept to the
    /// connection's record. Returns the bytes consumed and, when the record
    /// refused the connection at a `connection.open`, where that frame began
    /// in `data` (0 when it began in an earlier read).
    fn feed(&mut self, data: &[u8], stop: bool) -> (usize, Option<usize>) {
        let mut k = 0;
        let mut refused_at = None;
        loop {
            k += self.tracker.feed(&data[k..], stop);
            self.note();
            let Some(c) = self.tracker.take_captured() else {
                return (k, refused_at);
            };
            if let Some(info) = &self.shared.info {
                if info.on_method(self.dir, &c).is_some() && refused_at.is_none() {
                    let len = usize::try_from(c.frame_len).unwrap_or(usize::MAX);
                    refused_at = Some(k.saturating_sub(len));
                }
            }
            if stop || k == data.len() {
                return (k, refused_at);
            }
        }
    }

    /// Follows bytes that are not forwarded; true when they held a
    /// `connection.close` or `close-ok`.
    fn skim(&mut self, data: &[u8]) -> bool {
        self.feed(data, false);
        self.tracker.take_seen().is_some()
    }

    /// Follows the frames of bytes that are all forwarded (warren is not
    /// closing), noting a peer's `connection.close` or `close-ok`. Returns how
    /// many to forward: all of them, unless a limit refused the connection at
    /// its `connection.open` (then the bytes before that frame).
    fn track(&mut self, data: &[u8]) -> usize {
        let shared = self.shared;
        let (k, refused_at) = self.feed(data, false);
        if let Some(at) = refused_at {
            self.refuse();
            let _ = self.tracker.take_seen();
            return at;
        }
        match (self.tracker.take_seen(), self.dir) {
            (Some(Seen::ConnectionClose), dir) => {
                if dir == Dir::Down {
                    shared.broker_closed.store(true, Ordering::Release);
                } else if self.amqp10() && shared.broker_closed.load(Ordering::Acquire) {
                    // AMQP 1.0 answers a close with a close.
                    shared.set(&shared.client_acked);
                }
                shared.peer_closing.store(true, Ordering::Release);
            }
            (Some(Seen::ConnectionCloseOk), Dir::Up) => shared.set(&shared.client_acked),
            _ => {}
        }
        k
    }

    /// Nothing is closing: no order, no close of either peer under way. Then
    /// every byte read is forwarded, so the bulk path may read on past a
    /// payload's end ([`on_read_ahead`](Self::on_read_ahead)).
    pub(crate) fn plain(&self) -> bool {
        self.reason.is_none()
            && !self.shared.peer_closing.load(Ordering::Acquire)
            && self.past_open()
    }

    /// No limit can refuse the connection any more: its `connection.open` was
    /// admitted, the handshake is not read, or the client speaks AMQP 1.0. Until then every byte from the
    /// client is followed before it is forwarded, so that a refusal can hold
    /// the open back (the bulk path does not read ahead).
    fn past_open(&self) -> bool {
        // No limit applies to AMQP 1.0 (its `open` is not 0-9-1's).
        self.amqp10()
            || self
                .shared
                .info
                .as_ref()
                .is_none_or(|i| !i.handshake || i.opened())
    }

    /// Bytes the bulk path read on past a payload while [`plain`](Self::plain):
    /// followed and counted like any read, all forwarded.
    pub(crate) fn on_read_ahead(&mut self, data: &[u8]) {
        debug_assert!(self.plain(), "read ahead while closing");
        let k = self.track(data);
        self.count(k as u64);
    }

    /// The source ended: how the direction ends. On [`End::Closed`] the caller
    /// half-closes the destination (the peer is done sending; tell the other
    /// side, keep reading it).
    pub(crate) fn at_eof(&self) -> AtEof {
        if self.sent_close {
            return AtEof::End(End::Graceful);
        }
        if self.closing() {
            return AtEof::End(End::Hard);
        }
        if self.dir == Dir::Down && self.shared.broker_closed.load(Ordering::Acquire) {
            // The broker closed right after its connection.close: give the
            // client time to read it and answer before it sees EOF, so it
            // reports a broker close rather than a broken connection.
            return AtEof::AwaitAck(Instant::now() + self.limits.close);
        }
        AtEof::End(End::Closed)
    }

    /// [`at_eof`](Self::at_eof), waiting for the client's close-ok where it says so.
    pub(crate) async fn eof(&self) -> End {
        let until = match self.at_eof() {
            AtEof::End(end) => return end,
            AtEof::AwaitAck(until) => until,
        };
        let shared = self.shared;
        let wait = async {
            while !shared.client_acked.load(Ordering::Acquire) {
                let notified = shared.notify.notified();
                if shared.client_acked.load(Ordering::Acquire) {
                    break;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout_at(until, wait).await;
        End::Closed
    }

    /// The direction is over (the pump that keeps its state until both are
    /// done says so here; dropping it says so too).
    pub(crate) fn finish(&self) {
        if self.dir == Dir::Down && !self.shared.down_done.load(Ordering::Acquire) {
            self.shared.set(&self.shared.down_done);
        }
        if self.dir == Dir::Up && self.refusing && !self.shared.client_acked.load(Ordering::Acquire)
        {
            // The refused client is done (close-ok, EOF or time up).
            self.shared.set(&self.shared.client_acked);
        }
    }
}

/// How a direction whose source ended ends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AtEof {
    End(End),
    /// [`End::Closed`], once the client's close-ok came or at this instant.
    AwaitAck(Instant),
}

impl Drop for Direction<'_> {
    /// However the broker-to-client direction ends, the other one learns it
    /// ([`Shared::down_done`]).
    fn drop(&mut self) {
        self.finish();
    }
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides closed.
    Closed,
    /// Closed with `connection.close` after a drain command.
    Graceful,
    /// Closed hard (command, or the graceful close timed out).
    Hard,
}

/// Time limits of one connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// How long a graceful close may take before it turns hard.
    pub close: Duration,
    /// Close when neither direction carried a byte for this long.
    pub idle: Option<Duration>,
    /// Follow AMQP frames (false for `protocol: tcp`: a close is a hard close).
    pub amqp: bool,
    /// Long payloads through kernel pipes (`data_path.splice`).
    pub splice: bool,
}

/// Where a connection counts the bytes it forwards: relaxed adds per read, on
/// counters of its backend that the metrics read at scrape time, and on the
/// connection's own (client to broker, broker to client) for its access log.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meters<'a> {
    /// Client to broker.
    pub up: &'a AtomicU64,
    /// Broker to client.
    pub down: &'a AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heartbeat frame: the smallest frame there is.
    const HEARTBEAT: [u8; 8] = [8, 0, 0, 0, 0, 0, 0, 0xCE];

    /// A 5 s close timeout, no idle limit.
    const CLOSE_5S: Limits = Limits {
        close: Duration::from_secs(5),
        idle: None,
        amqp: true,
        splice: true,
    };

    fn limits(close: Duration, idle: Option<Duration>) -> Limits {
        Limits {
            close,
            idle,
            amqp: true,
            splice: true,
        }
    }

    fn close(text: &str) -> Command {
        Command::Close(text.into())
    }

    fn flag(f: &AtomicBool) -> bool {
        f.load(Ordering::Acquire)
    }

    #[test]
    fn a_close_cuts_at_the_next_boundary_then_waits_for_close_ok() {
        let (shared, moved) = (Shared::new(), AtomicU64::new(0));
        let mut d = Direction::new(Dir::Down, CLOSE_5S, &shared, &moved);
        assert_eq!(d.on_read(&HEARTBEAT[..3]), Chunk::Forward(3));
        assert_eq!(d.follow(&close("bye")), None);
        assert!(d.closing());
        // Mid-frame: not yet.
        let wait = Next::Read {
            wait_for_client_told: false,
        };
        assert_eq!(d.next(), wait);
        // The rest of the frame goes on; the next one is held back.
        let mut data = HEARTBEAT[3..].to_vec();
        data.extend_from_slice(&HEARTBEAT[..4]);
        assert_eq!(d.on_read(&data), Chunk::Forward(5));
        assert_eq!(moved.load(Ordering::Relaxed), 8);
        assert_eq!(d.next(), Next::SendClose(close_frame(Dir::Down, "bye")));
        d.close_sent();
        assert!(flag(&shared.client_told));
        // Past the cut nothing is forwarded, until the close-ok ends the direction.
        assert_eq!(d.on_read(&HEARTBEAT[4..]), Chunk::Discarded);
        assert_eq!(d.on_read(&amqp::connection_close_ok()), Chunk::Finished);
        assert_eq!(moved.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn the_broker_is_told_after_the_client() {
        let (shared, moved) = (Shared::new(), AtomicU64::new(0));
        let mut d = Direction::new(Dir::Up, CLOSE_5S, &shared, &moved);
        let header = amqp::PROTOCOL_HEADER;
        assert_eq!(d.on_read(header), Chunk::Forward(header.len()));
        assert_eq!(d.follow(&close("bye")), None);
        assert_eq!(
            d.next(),
            Next::Read {
                wait_for_client_told: true
            }
        );
        shared.set(&shared.client_told);
        assert_eq!(d.next(), Next::SendClose(close_frame(Dir::Up, "bye")));
        assert_eq!(
            close_frame(Dir::Up, "bye"),
            amqp::connection_close(amqp::REPLY_SUCCESS, "bye")
        );
        assert_eq!(
            close_frame(Dir::Down, "bye"),
            amqp::connection_close(amqp::CONNECTION_FORCED, "bye")
        );
    }

    #[test]
    fn no_graceful_close_without_a_client_to_tell_or_without_frames() {
        let (shared, moved) = (Shared::new(), AtomicU64::new(0));
        let l = CLOSE_5S;
        let mut up = Direction::new(Dir::Up, l, &shared, &moved);
        up.on_read(amqp::PROTOCOL_HEADER);
        up.follow(&close("bye"));
        drop(Direction::new(Dir::Down, l, &shared, &moved));
        assert!(flag(&shared.down_done), "a dropped Down direction is done");
        assert_eq!(up.next(), Next::Hard);

        let shared = Shared::new();
        let mut down = Direction::new(Dir::Down, l, &shared, &moved);
        // A frame type AMQP does not have: not AMQP.
        assert_eq!(down.on_read(b"HTTP/1.1 200 OK\r\n"), Chunk::Forward(17));
        down.follow(&close("bye"));
        assert_eq!(down.next(), Next::Hard);
        assert_eq!(down.follow(&Command::Hard), Some(End::Hard));
    }

    #[test]
    fn a_close_the_peers_started_is_left_to_finish() {
        let (shared, moved) = (Shared::new(), AtomicU64::new(0));
        let l = CLOSE_5S;
        let mut down = Direction::new(Dir::Down, l, &shared, &moved);
        let broker_close = amqp::connection_close(amqp::CONNECTION_FORCED, "shutdown");
        assert_eq!(
            down.on_read(&broker_close),
            Chunk::Forward(broker_close.len())
        );
        assert!(flag(&shared.broker_closed) && flag(&shared.peer_closing));
        // RabbitMQ may reset its socket now: that ends this direction like EOF.
        assert!(down.ends_on_error() && !down.drops_on_error());
        down.follow(&close("bye"));
        assert!(!down.closing());
        let read = Next::Read {
            wait_for_client_told: false,
        };
        assert_eq!(down.next(), read);
        assert_eq!(down.on_read(&HEARTBEAT), Chunk::Forward(8));

        let mut up = Direction::new(Dir::Up, l, &shared, &moved);
        up.on_read(amqp::PROTOCOL_HEADER);
        let close_ok = amqp::connection_close_ok();
        assert_eq!(up.on_read(&close_ok), Chunk::Forward(close_ok.len()));
        assert!(flag(&shared.client_acked));
        assert!(up.drops_on_error() && !up.ends_on_error());
    }

    /// The start of a 1.0 connection from each side, up to its `open`.
    fn amqp10_start(client: bool) -> Vec<u8> {
        let mut s = amqp10::HEADER_SASL.to_vec();
        // A SASL frame (sasl-init or sasl-outcome), its body left empty.
        s.extend_from_slice(&[0, 0, 0, 8, 2, 1, 0, 0]);
        s.extend_from_slice(amqp10::HEADER_AMQP);
        if client {
            // open, container-id "c"
            s.extend_from_slice(&[
                0, 0, 0, 17, 2, 0, 0, 0, 0, 0x53, 0x10, 0xc0, 4, 1, 0xa1, 1, b'c',
            ]);
        } else {
            s.extend_from_slice(&[0, 0, 0, 12, 2, 0, 0, 0, 0, 0x53, 0x10, 0x45]);
        }
        s
    }

    #[test]
    fn an_amqp10_connection_is_closed_with_amqp10_closes() {
        let (shared, moved) = (Shared::new(), AtomicU64::new(0));
        let mut up = Direction::new(Dir::Up, CLOSE_5S, &shared, &moved);
        let mut down = Direction::new(Dir::Down, CLOSE_5S, &shared, &moved);
        let client = amqp10_start(true);
        // Before the client's open: the TCP connection just ends.
        assert_eq!(up.on_read(&client[..16]), Chunk::Forward(16));
        assert!(flag(&shared.amqp10));
        let mut early = Direction::new(Dir::Down, CLOSE_5S, &shared, &moved);
        early.follow(&close("bye"));
        assert_eq!(early.next(), Next::Hard);
        drop(early);
        shared.down_done.store(false, Ordering::Release);
        assert_eq!(up.on_read(&client[16..]), Chunk::Forward(client.len() - 16));
        assert!(flag(&shared.client_opened));
        let broker = amqp10_start(false);
        assert_eq!(down.on_read(&broker), Chunk::Forward(broker.len()));
        assert!(
            down.plain() && up.plain(),
            "no limit holds a 1.0 client back"
        );
        up.follow(&close("drain"));
        down.follow(&close("drain"));
        assert_eq!(down.next(), Next::SendClose(amqp10::close_forced("drain")));
        down.close_sent();
        assert_eq!(up.next(), Next::SendClose(amqp10::close()));
        up.close_sent();
        // Each side answers with its own close; what comes before it is dropped.
        let empty = [0, 0, 0, 8, 2, 0, 0, 0];
        assert_eq!(down.on_read(&empty), Chunk::Discarded);
        assert_eq!(down.on_read(&amqp10::close()), Chunk::Finished);
        assert_eq!(up.on_read(&amqp10::close()), Chunk::Finished);
    }

    #[test]
    fn an_amqp10_brokers_own_close_is_answered_by_the_clients() {
        let (shared, moved) = (Shared::new(), AtomicU64::new(0));
        let mut up = Direction::new(Dir::Up, CLOSE_5S, &shared, &moved);
        let mut down = Direction::new(Dir::Down, CLOSE_5S, &shared, &moved);
        up.on_read(&amqp10_start(true));
        down.on_read(&amqp10_start(false));
        let forced = amqp10::close_forced("shutdown");
        assert_eq!(down.on_read(&forced), Chunk::Forward(forced.len()));
        assert!(flag(&shared.broker_closed) && flag(&shared.peer_closing));
        assert!(!flag(&shared.client_acked));
        let answer = amqp10::close();
        assert_eq!(up.on_read(&answer), Chunk::Forward(answer.len()));
        assert!(flag(&shared.client_acked));
    }

    #[tokio::test]
    async fn eof_ends_by_the_state_of_the_close() {
        let (shared, moved) = (Shared::new(), AtomicU64::new(0));
        let hour = Duration::from_secs(3600);
        let l = limits(hour, None);
        assert_eq!(
            Direction::new(Dir::Down, l, &shared, &moved).eof().await,
            End::Closed
        );
        let mut d = Direction::new(Dir::Down, l, &shared, &moved);
        d.follow(&close("bye"));
        assert_eq!(d.eof().await, End::Hard);
        d.close_sent();
        assert_eq!(d.eof().await, End::Graceful);

        // After the broker's own close, the EOF waits for the client's close-ok.
        let shared = Shared::new();
        let mut d = Direction::new(Dir::Down, l, &shared, &moved);
        d.on_read(&amqp::connection_close(amqp::CONNECTION_FORCED, "shutdown"));
        let acked = async {
            tokio::task::yield_now().await;
            shared.set(&shared.client_acked);
        };
        let (end, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(d.eof(), acked)
        })
        .await
        .expect("the close-ok ends the wait");
        assert_eq!(end, End::Closed);
        // Without it, the wait is bounded by the close timeout.
        let short = limits(Duration::from_millis(10), None);
        let d = Direction::new(Dir::Down, short, &shared, &moved);
        shared.client_acked.store(false, Ordering::Release);
        assert_eq!(d.eof().await, End::Closed);
    }

    #[tokio::test]
    async fn the_timer_is_the_first_of_close_deadline_and_idle_limit() {
        let (shared, moved) = (Shared::new(), AtomicU64::new(0));
        let hour = Duration::from_secs(3600);
        let mut d = Direction::new(Dir::Up, limits(hour, None), &shared, &moved);
        assert_eq!(d.wake_at(), None);
        d.follow(&close("bye"));
        assert_eq!(d.wake_at(), d.deadline());
        assert!(!d.time_up());

        let idle = Duration::from_millis(20);
        let d = Direction::new(Dir::Up, limits(hour, Some(idle)), &shared, &moved);
        assert_eq!(d.wake_at(), Some(shared.idle_deadline(idle)));
        assert!(!d.time_up());
        tokio::time::sleep_until(d.wake_at().expect("idle limit")).await;
        assert!(d.time_up());
        // Activity in either direction pushes the idle limit back.
        let before = d.wake_at();
        d.touch();
        assert!(d.wake_at() > before);

        let mut d = Direction::new(Dir::Up, limits(idle, Some(hour)), &shared, &moved);
        d.follow(&close("bye"));
        assert_eq!(d.wake_at(), d.deadline());
        tokio::time::sleep_until(d.wake_at().expect("close deadline")).await;
        assert!(d.close_due() && d.time_up());
    }
}
