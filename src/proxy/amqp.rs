//! Just enough AMQP 0-9-1 to close a connection the way a broker does, and
//! the frame tracker that also follows AMQP 1.0 (`amqp10`).
//!
//! warren never parses payloads on the hot path. [`FrameTracker`] follows frame
//! boundaries by reading each 7-byte frame header and skipping `size + 1` bytes by
//! count: O(1) work per frame, whatever its size. At a boundary warren may inject
//! `connection.close` (320 CONNECTION_FORCED) towards the client, and it can tell a
//! `connection.close-ok` from any other frame when it waits for one.
//!
//! Where the connection's record wants them (`clients.handshake`), the tracker
//! also keeps the arguments of a few channel-0 connection methods ([`Capture`]:
//! start-ok, tune-ok, open, close, blocked, unblocked), bounded in size; every
//! other frame is still skipped by count.
//!
//! A stream whose protocol header says AMQP 1.0 is followed as 1.0 frames
//! (8-byte headers: size of the whole frame, data offset, type, channel),
//! through the SASL layer and the second header after it. Of each AMQP frame
//! with a body the tracker reads the performative's descriptor only, to see an
//! `open` or a `close`; the rest is skipped by count.

/// The protocol header a client sends first.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;

use crate::proxy::amqp10;

pub const CLASS_CONNECTION: u16 = 10;
pub const METHOD_START_OK: u16 = 11;
pub const METHOD_TUNE_OK: u16 = 31;
pub const METHOD_OPEN: u16 = 40;
pub const METHOD_CLOSE: u16 = 50;
pub const METHOD_CLOSE_OK: u16 = 51;
pub const METHOD_BLOCKED: u16 = 60;
pub const METHOD_UNBLOCKED: u16 = 61;

/// Reply code a broker uses when an operator closes a connection.
pub const CONNECTION_FORCED: u16 = 320;
/// Reply code of a normal, client-initiated close.
pub const REPLY_SUCCESS: u16 = 200;
/// Reply code for a connection refused by a limit (warren's `clients.limits`).
pub const NOT_ALLOWED: u16 = 530;

/// Largest method frame payload whose arguments are kept: RabbitMQ takes no
/// larger frame before `tune-ok` (its `frame_max` starts at the protocol's
/// minimum, 4096, frame header and end included), and the methods read after
/// it are small.
pub const MAX_CAPTURE: u32 = 4096 - 8;

/// A direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Client to broker.
    Up,
    /// Broker to client.
    Down,
}

/// A frame the tracker saw end, as far as warren cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// `connection.close` on channel 0.
    ConnectionClose,
    /// `connection.close-ok` on channel 0.
    ConnectionCloseOk,
}

/// The protocol of a stream, as its protocol header said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// AMQP 0-9-1 (or an older 0-x header, followed the same way).
    Amqp091,
    /// AMQP 1.0 (SASL, plain or TLS header).
    Amqp10,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Amqp091 => "amqp091",
            Protocol::Amqp10 => "amqp10",
        }
    }
}

/// Follows frame boundaries in one direction of an AMQP connection.
#[derive(Clone, Debug)]
pub struct FrameTracker {
    state: State,
    /// Header bytes of the current frame (7) plus the method's class and method ids (4).
    head: [u8; 11],
    head_len: u8,
    /// Bytes of the current frame still to skip (payload plus frame-end).
    remaining: u64,
    /// Method frames on channel 0 whose ids we are collecting.
    want_ids: bool,
    last_seen: Option<Seen>,
    /// The current frame's arguments are being kept (see [`Capture`]).
    capturing: bool,
    /// The connection methods (class 10) whose arguments to keep, as bits
    /// (every connection method id is below 64); none unless asked for.
    wanted: u64,
    /// The frame being kept, or kept and not yet taken: on the heap only
    /// meanwhile, so an idle connection holds none.
    capture: Option<Box<Capture>>,
    /// The protocol header said AMQP 1.0.
    amqp10: bool,
    /// AMQP 1.0: an `open` went by.
    opened: bool,
    /// AMQP 1.0: bytes of the current frame's extended header still to skip
    /// before its body.
    ext_left: u16,
}

/// A connection method frame being kept, or kept. A frame is kept only when it
/// is at most [`MAX_CAPTURE`] long.
#[derive(Clone, Debug, Default)]
struct Capture {
    /// The method being kept and its arguments so far.
    method: u16,
    args: Vec<u8>,
    /// The kept frame, once it ended, until taken.
    done: Option<Captured>,
}

/// The arguments of a connection method that ended, as kept by [`Capture`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    /// Method id (class 10).
    pub method: u16,
    /// The arguments: the payload after class and method ids.
    pub args: Vec<u8>,
    /// The whole frame's length (header, payload, frame-end), so a caller can
    /// tell where it began.
    pub frame_len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting the 8-byte protocol header; counts how many are left.
    ProtocolHeader(u8),
    /// Expecting the first byte of a stream that may start with a protocol header
    /// (a broker answers a bad header with its own) or a frame.
    Start,
    /// Inside frames (at a boundary when `head_len == 0 && remaining == 0`).
    Frames,
    /// AMQP 1.0 frames of the SASL layer: at a boundary, an `A` starts the
    /// next protocol header (a SASL frame is far smaller than the 1 GiB its
    /// size would mean).
    Sasl10,
    /// AMQP 1.0 frames (at a boundary when `head_len == 0 && remaining == 0`
    /// and no descriptor is being read).
    Frames10,
    /// The stream is not AMQP (bad frame-end); no more boundaries will be found.
    Lost,
}

impl FrameTracker {
    /// For the client-to-broker direction: a protocol header, then frames.
    pub fn client_to_server() -> Self {
        Self::with_state(State::ProtocolHeader(8))
    }

    /// For the broker-to-client direction: frames (or a protocol header if the
    /// broker rejects the client's version).
    pub fn server_to_client() -> Self {
        Self::with_state(State::Start)
    }

    /// For a stream that is not AMQP (`protocol: tcp`): nothing to follow, no
    /// boundary to close at.
    pub fn not_amqp() -> Self {
        Self::with_state(State::Lost)
    }

    fn with_state(state: State) -> Self {
        FrameTracker {
            state,
            head: [0; 11],
            head_len: 0,
            remaining: 0,
            want_ids: false,
            last_seen: None,
            capturing: false,
            wanted: 0,
            capture: None,
            amqp10: false,
            opened: false,
            ext_left: 0,
        }
    }

    /// The protocol the stream's header said, once it was read (`None`
    /// before, and for a stream that starts with frames).
    pub fn protocol(&self) -> Option<Protocol> {
        match self.state {
            _ if self.amqp10 => Some(Protocol::Amqp10),
            State::Frames => Some(Protocol::Amqp091),
            _ => None,
        }
    }

    /// AMQP 1.0: an `open` performative went by.
    pub fn opened(&self) -> bool {
        self.opened
    }

    /// Keeps the arguments of these connection methods (ids of class 10, each
    /// below 64) from now on: [`feed`](Self::feed) then stops right after each
    /// such frame, for the caller to [`take_captured`](Self::take_captured) it.
    pub fn capture(mut self, methods: &[u16]) -> Self {
        if !self.is_lost() {
            self.wanted = methods
                .iter()
                .filter(|m| **m < 64)
                .fold(0u64, |bits, m| bits | 1 << m);
        }
        self
    }

    /// The arguments of the last kept method frame, once it ended; taken once.
    pub fn take_captured(&mut self) -> Option<Captured> {
        if self.capturing {
            return None;
        }
        self.capture.take().and_then(|c| c.done)
    }

    /// True between two frames, where a frame may be injected.
    pub fn at_boundary(&self) -> bool {
        match self.state {
            State::Start => true,
            State::Frames | State::Sasl10 | State::Frames10 => {
                self.head_len == 0 && self.remaining == 0 && !self.want_ids
            }
            State::ProtocolHeader(_) | State::Lost => false,
        }
    }

    /// True once the stream turned out not to be AMQP.
    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Bytes ahead that [`skip`](Self::skip) may pass over without looking at
    /// them: the rest of the current frame's payload, but never its frame-end
    /// octet, which [`feed`](Self::feed) must see to keep the stream verified.
    /// Unbounded once the stream is lost (it has no boundaries left to keep).
    pub fn payload_left(&self) -> u64 {
        match self.state {
            State::Lost => u64::MAX,
            State::Frames if !self.want_ids && self.head_len == 0 => {
                self.remaining.saturating_sub(1)
            }
            // No frame-end octet in 1.0: the rest of the body may be skipped.
            State::Sasl10 | State::Frames10
                if !self.want_ids
                    && !self.capturing
                    && self.head_len == 0
                    && self.ext_left == 0 =>
            {
                self.remaining
            }
            _ => 0,
        }
    }

    /// Accounts for `n` bytes moved without being fed (the bulk path); `n` must not
    /// exceed [`payload_left`](Self::payload_left).
    pub fn skip(&mut self, n: u64) {
        debug_assert!(n <= self.payload_left(), "skip past the payload");
        match self.state {
            State::Frames => self.remaining -= n.min(self.remaining.saturating_sub(1)),
            State::Sasl10 | State::Frames10 => self.remaining -= n.min(self.remaining),
            _ => {}
        }
    }

    /// The last `connection.close`/`close-ok` seen; taken once.
    pub fn take_seen(&mut self) -> Option<Seen> {
        self.last_seen.take()
    }

    /// Consumes `data`, stopping early right after the first frame that ends in it
    /// when `stop_at_boundary` is set, and right after a frame whose arguments
    /// were kept ([`capture`](Self::capture)). Returns how many bytes were consumed.
    pub fn feed(&mut self, data: &[u8], stop_at_boundary: bool) -> usize {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Lost => return data.len(),
                State::Start => {
                    self.state = if data[i] == b'A' {
                        State::ProtocolHeader(8)
                    } else {
                        State::Frames
                    };
                }
                State::ProtocolHeader(left) => {
                    let take = (left as usize).min(data.len() - i);
                    let at = 8 - left as usize;
                    self.head[at..at + take].copy_from_slice(&data[i..i + take]);
                    i += take;
                    let left = left - take as u8;
                    self.state = if left == 0 {
                        self.after_header()
                    } else {
                        State::ProtocolHeader(left)
                    };
                    if left == 0 && stop_at_boundary && self.state != State::Lost {
                        return i;
                    }
                }
                State::Sasl10 | State::Frames10 => match self.step10(data, i, stop_at_boundary) {
                    Flow::Go(j) => i = j,
                    Flow::Return(j) => return j,
                },
                State::Frames => {
                    if self.remaining > 0 && !self.want_ids {
                        // Skip payload by count: the hot path for bulk data.
                        let take = self.remaining.min((data.len() - i) as u64);
                        i += take as usize;
                        self.remaining -= take;
                        if self.remaining == 0 {
                            // The last byte skipped was the frame-end octet.
                            if data[i - 1] != FRAME_END {
                                self.state = State::Lost;
                                self.capturing = false;
                                return data.len();
                            }
                            if self.capturing {
                                self.captured();
                                return i;
                            }
                            if stop_at_boundary {
                                return i;
                            }
                        }
                        continue;
                    }
                    if self.capturing {
                        // Keeping the arguments, up to the frame-end octet, which
                        // the branch above checks.
                        let take = (self.remaining - 1).min((data.len() - i) as u64) as usize;
                        if let Some(c) = self.capture.as_mut() {
                            c.args.extend_from_slice(&data[i..i + take]);
                        }
                        i += take;
                        self.remaining -= take as u64;
                        if self.remaining == 1 {
                            self.want_ids = false;
                        }
                        continue;
                    }
                    if self.want_ids {
                        // Collecting class/method ids of a channel-0 method frame.
                        let need = 11 - self.head_len as usize;
                        let take = need.min(data.len() - i);
                        self.head[self.head_len as usize..self.head_len as usize + take]
                            .copy_from_slice(&data[i..i + take]);
                        self.head_len += take as u8;
                        self.remaining -= take as u64;
                        i += take;
                        if self.head_len == 11 {
                            let class = u16::from_be_bytes([self.head[7], self.head[8]]);
                            let method = u16::from_be_bytes([self.head[9], self.head[10]]);
                            if class == CLASS_CONNECTION {
                                if method == METHOD_CLOSE {
                                    self.last_seen = Some(Seen::ConnectionClose);
                                } else if method == METHOD_CLOSE_OK {
                                    self.last_seen = Some(Seen::ConnectionCloseOk);
                                }
                                self.start_capture(method);
                            }
                            // remaining >= 1 here: the frame-end octet is still ahead.
                            // While capturing, the arguments are read (want_ids
                            // stays set) up to it.
                            self.want_ids = self.capturing && self.remaining > 1;
                            self.head_len = 0;
                        }
                        continue;
                    }
                    // Reading a 7-byte frame header.
                    let need = 7 - self.head_len as usize;
                    let take = need.min(data.len() - i);
                    self.head[self.head_len as usize..self.head_len as usize + take]
                        .copy_from_slice(&data[i..i + take]);
                    self.head_len += take as u8;
                    i += take;
                    if self.head_len == 7 {
                        let ftype = self.head[0];
                        let channel = u16::from_be_bytes([self.head[1], self.head[2]]);
                        let size = u32::from_be_bytes([
                            self.head[3],
                            self.head[4],
                            self.head[5],
                            self.head[6],
                        ]);
                        if !matches!(ftype, 1 | 2 | 3 | 4 | 8) {
                            self.state = State::Lost;
                            return data.len();
                        }
                        self.remaining = size as u64 + 1;
                        if ftype == FRAME_METHOD && channel == 0 && size >= 4 {
                            self.want_ids = true;
                        } else {
                            self.head_len = 0;
                        }
                    }
                }
            }
        }
        i
    }
}

/// What one step over AMQP 1.0 bytes leaves [`FrameTracker::feed`] to do.
enum Flow {
    /// Go on from this offset.
    Go(usize),
    /// Return: this many bytes were consumed.
    Return(usize),
}

impl FrameTracker {
    /// The protocol header (in `head[..8]`) was read: what follows it.
    fn after_header(&mut self) -> State {
        let h = &self.head;
        if h[..4] != *b"AMQP" || h[5] != 1 {
            return State::Frames;
        }
        self.amqp10 = true;
        match h[4] {
            amqp10::PROTO_SASL => State::Sasl10,
            amqp10::PROTO_AMQP => State::Frames10,
            // TLS negotiated in the stream (or a protocol id 1.0 does not
            // have): no frames to follow.
            _ => State::Lost,
        }
    }

    /// One step over AMQP 1.0 frames from `data[i]` (not past its end): a
    /// frame header, extended header, descriptor or body bytes, or the start
    /// of the protocol header that ends the SASL layer.
    fn step10(&mut self, data: &[u8], mut i: usize, stop: bool) -> Flow {
        let avail = data.len() - i;
        if self.remaining == 0 && !self.want_ids {
            if self.head_len == 0 && self.state == State::Sasl10 && data[i] == b'A' {
                self.state = State::ProtocolHeader(8);
                return Flow::Go(i);
            }
            // The 8-byte frame header.
            let at = self.head_len as usize;
            let take = (8 - at).min(avail);
            self.head[at..at + take].copy_from_slice(&data[i..i + take]);
            self.head_len += take as u8;
            i += take;
            if self.head_len < 8 {
                return Flow::Go(i);
            }
            self.head_len = 0;
            let h = &self.head;
            let size = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            let (doff, ftype) = (u32::from(h[4]), h[5]);
            if size < 8 || doff < 2 || doff * 4 > size || ftype > amqp10::FRAME_SASL {
                self.state = State::Lost;
                self.capturing = false;
                return Flow::Return(data.len());
            }
            self.remaining = u64::from(size - 8);
            self.ext_left = (doff * 4 - 8) as u16;
            self.want_ids = ftype == amqp10::FRAME_AMQP && size > doff * 4;
            return self.frame_went10(i, stop);
        }
        if self.ext_left > 0 {
            let take = u64::from(self.ext_left).min(avail as u64);
            self.ext_left -= take as u16;
            self.remaining -= take;
            i += take as usize;
            return self.frame_went10(i, stop);
        }
        if self.want_ids {
            // The performative's descriptor: 0x00, then 0x53 and a byte, or
            // 0x80 and 8 bytes; read a stage at a time.
            let (need, have) = (self.descriptor_len(), self.head_len as usize);
            if need > have {
                let take = (need - have).min(avail).min(self.remaining as usize);
                self.head[have..have + take].copy_from_slice(&data[i..i + take]);
                self.head_len += take as u8;
                self.remaining -= take as u64;
                i += take;
            }
            let (need, have) = (self.descriptor_len(), self.head_len as usize);
            if need <= have || self.remaining == 0 {
                // Complete, not a descriptor warren reads, or cut short by
                // the end of the frame.
                self.want_ids = false;
                self.head_len = 0;
                if need > 2 && need == have {
                    let code = match need {
                        3 => u64::from(self.head[2]),
                        _ => u64::from_be_bytes([
                            self.head[2],
                            self.head[3],
                            self.head[4],
                            self.head[5],
                            self.head[6],
                            self.head[7],
                            self.head[8],
                            self.head[9],
                        ]),
                    };
                    self.performative10(code);
                }
            }
            return self.frame_went10(i, stop);
        }
        let take = self.remaining.min(avail as u64) as usize;
        if self.capturing {
            if let Some(c) = self.capture.as_mut() {
                c.args.extend_from_slice(&data[i..i + take]);
            }
        }
        self.remaining -= take as u64;
        i += take;
        if self.remaining == 0 && self.capturing {
            self.captured();
            return Flow::Return(i);
        }
        self.frame_went10(i, stop)
    }

    /// How many bytes the descriptor read so far (`head[..head_len]`) takes in
    /// all, as far as they tell; 0 when it is not one warren reads.
    fn descriptor_len(&self) -> usize {
        match (self.head_len, self.head[0], self.head[1]) {
            (0, ..) => 1,
            (1, 0x00, _) => 2,
            (_, 0x00, 0x53) => 3,
            (_, 0x00, 0x80) => 10,
            _ => 0,
        }
    }

    /// After a step over 1.0 bytes: at the frame's end (nothing of it left, not
    /// even a descriptor to look at), stop there when asked to.
    fn frame_went10(&mut self, i: usize, stop: bool) -> Flow {
        if stop && self.remaining == 0 && !self.want_ids && self.head_len == 0 {
            Flow::Return(i)
        } else {
            Flow::Go(i)
        }
    }

    /// An AMQP 1.0 performative's descriptor code was read.
    fn performative10(&mut self, code: u64) {
        match code {
            amqp10::OPEN => {
                self.opened = true;
                let wanted = self.wanted & (1 << METHOD_OPEN) != 0;
                if wanted && self.remaining <= u64::from(MAX_CAPTURE) && self.remaining > 0 {
                    self.capture = Some(Box::new(Capture {
                        method: amqp10::KEPT_OPEN,
                        args: Vec::with_capacity(self.remaining as usize),
                        done: None,
                    }));
                    self.capturing = true;
                }
            }
            amqp10::CLOSE => self.last_seen = Some(Seen::ConnectionClose),
            _ => {}
        }
    }
}

impl FrameTracker {
    /// At the class and method ids of a channel-0 connection method: starts
    /// keeping its arguments if they are wanted and the frame is small enough.
    fn start_capture(&mut self, method: u16) {
        // `remaining` is the arguments plus the frame-end octet; the payload is
        // those arguments and the 4 bytes of ids.
        let wanted = method < 64 && self.wanted & (1 << method) != 0;
        if wanted && self.remaining + 3 <= u64::from(MAX_CAPTURE) {
            // A kept frame not taken is replaced by this one.
            self.capture = Some(Box::new(Capture {
                method,
                args: Vec::with_capacity((self.remaining - 1) as usize),
                done: None,
            }));
            self.capturing = true;
        }
    }

    /// The kept frame ended (its frame-end checked).
    fn captured(&mut self) {
        self.capturing = false;
        if let Some(c) = self.capture.as_mut() {
            let args = std::mem::take(&mut c.args);
            // The frame's whole length: 0-9-1's header, ids and frame-end
            // around the arguments; 1.0's are not needed (no limit reads them).
            let frame_len = if c.method == amqp10::KEPT_OPEN {
                args.len() as u64
            } else {
                7 + 4 + args.len() as u64 + 1
            };
            c.done = Some(Captured {
                method: c.method,
                frame_len,
                args,
            });
        }
    }
}

/// A `connection.close` method frame on channel 0.
pub fn connection_close(reply_code: u16, reply_text: &str) -> Vec<u8> {
    // A shortstr: at most 255 bytes, cut at a character boundary.
    let mut end = reply_text.len().min(255);
    while !reply_text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &reply_text.as_bytes()[..end];
    let mut payload = Vec::with_capacity(4 + 2 + 1 + text.len() + 4);
    payload.extend_from_slice(&CLASS_CONNECTION.to_be_bytes());
    payload.extend_from_slice(&METHOD_CLOSE.to_be_bytes());
    payload.extend_from_slice(&reply_code.to_be_bytes());
    payload.push(text.len() as u8);
    payload.extend_from_slice(text);
    payload.extend_from_slice(&0u16.to_be_bytes()); // class-id: not caused by a method
    payload.extend_from_slice(&0u16.to_be_bytes()); // method-id
    frame(FRAME_METHOD, 0, &payload)
}

/// A `connection.close-ok` method frame on channel 0.
pub fn connection_close_ok() -> Vec<u8> {
    let mut payload = Vec::with_capacity(4);
    payload.extend_from_slice(&CLASS_CONNECTION.to_be_bytes());
    payload.extend_from_slice(&METHOD_CLOSE_OK.to_be_bytes());
    frame(FRAME_METHOD, 0, &payload)
}

fn frame(ftype: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(7 + payload.len() + 1);
    f.push(ftype);
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(FRAME_END);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> Vec<u8> {
        vec![8, 0, 0, 0, 0, 0, 0, FRAME_END]
    }

    fn body(channel: u16, n: usize) -> Vec<u8> {
        frame(3, channel, &vec![0xAB; n])
    }

    #[test]
    fn follows_frames_byte_by_byte() {
        let mut stream = Vec::new();
        stream.extend(body(1, 1000));
        stream.extend(heartbeat());
        stream.extend(connection_close(320, "bye"));
        let mut t = FrameTracker::server_to_client();
        let mut boundaries = Vec::new();
        for (i, b) in stream.iter().enumerate() {
            assert_eq!(t.feed(std::slice::from_ref(b), false), 1);
            if t.at_boundary() {
                boundaries.push(i + 1);
            }
        }
        assert_eq!(boundaries, vec![1008, 1016, stream.len()]);
        assert_eq!(t.take_seen(), Some(Seen::ConnectionClose));
    }

    #[test]
    fn stops_at_first_boundary() {
        let mut stream = body(1, 10);
        stream.extend(body(1, 20));
        let mut t = FrameTracker::server_to_client();
        let n = t.feed(&stream, true);
        assert_eq!(n, 18);
        assert!(t.at_boundary());
        let m = t.feed(&stream[n..], false);
        assert_eq!(m, stream.len() - n);
        assert!(t.at_boundary());
    }

    #[test]
    fn client_direction_skips_protocol_header() {
        let mut stream = PROTOCOL_HEADER.to_vec();
        stream.extend(connection_close_ok());
        let mut t = FrameTracker::client_to_server();
        assert!(!t.at_boundary());
        assert_eq!(t.feed(&stream, true), 8);
        assert!(t.at_boundary());
        t.feed(&stream[8..], false);
        assert!(t.at_boundary());
        assert_eq!(t.take_seen(), Some(Seen::ConnectionCloseOk));
    }

    #[test]
    fn skipping_payload_keeps_boundaries_exact() {
        let mut stream = body(1, 100_000);
        stream.extend(connection_close(320, "bye"));
        let mut t = FrameTracker::server_to_client();
        assert_eq!(t.feed(&stream[..10], false), 10);
        let left = t.payload_left();
        assert_eq!(left, 100_000 - 3);
        t.skip(left - 5);
        t.skip(5);
        assert_eq!(t.payload_left(), 0);
        assert!(!t.at_boundary());
        // The frame-end octet and the next frame go through feed again.
        let rest = &stream[10 + left as usize..];
        assert_eq!(t.feed(rest, true), 1);
        assert!(t.at_boundary());
        t.feed(&rest[1..], false);
        assert_eq!(t.take_seen(), Some(Seen::ConnectionClose));
        assert!(t.at_boundary());
    }

    #[test]
    fn nothing_to_skip_inside_headers_or_after_a_bad_frame_end() {
        let mut t = FrameTracker::server_to_client();
        assert_eq!(t.payload_left(), 0);
        t.feed(&[3, 0, 1], false);
        assert_eq!(t.payload_left(), 0);
        let mut t = FrameTracker::server_to_client();
        t.feed(&[3, 0, 1, 0, 0, 0, 2, 9, 9, 0x00], false);
        assert!(t.is_lost());
        assert_eq!(t.payload_left(), u64::MAX);
    }

    #[test]
    fn garbage_loses_track() {
        let mut t = FrameTracker::server_to_client();
        t.feed(b"\x42garbage-garbage", false);
        assert!(t.is_lost());
        assert!(!t.at_boundary());
    }

    /// A channel-0 connection method frame with these arguments.
    fn method(method: u16, args: &[u8]) -> Vec<u8> {
        let mut payload = CLASS_CONNECTION.to_be_bytes().to_vec();
        payload.extend_from_slice(&method.to_be_bytes());
        payload.extend_from_slice(args);
        frame(FRAME_METHOD, 0, &payload)
    }

    #[test]
    fn kept_methods_stop_the_feed_right_after_them() {
        let tune_ok = method(METHOD_TUNE_OK, &[0, 0, 0, 0, 0, 0, 0, 60]);
        let open = method(METHOD_OPEN, b"\x01/\x00\x00");
        let mut stream = PROTOCOL_HEADER.to_vec();
        stream.extend(body(1, 50_000));
        stream.extend(&tune_ok);
        stream.extend(heartbeat());
        stream.extend(&open);
        stream.extend(method(METHOD_UNBLOCKED, &[]));
        let mut t = FrameTracker::client_to_server().capture(&[METHOD_TUNE_OK, METHOD_OPEN]);
        // Byte by byte and all at once, the same frames are kept, each ending a feed.
        for step in [1, stream.len()] {
            let mut t2 = t.clone();
            let (mut pos, mut kept) = (0, Vec::new());
            while pos < stream.len() {
                let end = (pos + step).min(stream.len());
                pos += t2.feed(&stream[pos..end], false);
                if let Some(c) = t2.take_captured() {
                    assert!(t2.at_boundary());
                    kept.push((c.method, c.args, c.frame_len, pos));
                }
            }
            let tune_end = 8 + 50_008 + tune_ok.len();
            let open_end = tune_end + 8 + open.len();
            assert_eq!(
                kept,
                vec![
                    (
                        METHOD_TUNE_OK,
                        vec![0, 0, 0, 0, 0, 0, 0, 60],
                        tune_ok.len() as u64,
                        tune_end
                    ),
                    (
                        METHOD_OPEN,
                        b"\x01/\x00\x00".to_vec(),
                        open.len() as u64,
                        open_end
                    ),
                ],
                "step {step}"
            );
            assert!(t2.at_boundary());
        }
        // The body is still skipped by count, not kept.
        t.feed(&stream[..8 + 10], false);
        assert_eq!(t.payload_left(), 50_000 - 3);
    }

    #[test]
    fn oversized_or_unwanted_methods_are_not_kept() {
        let big = method(METHOD_START_OK, &vec![0; MAX_CAPTURE as usize]);
        let fits = method(METHOD_START_OK, &vec![0; MAX_CAPTURE as usize - 4]);
        let mut t = FrameTracker::client_to_server().capture(&[METHOD_START_OK]);
        t.feed(PROTOCOL_HEADER, false);
        assert_eq!(t.feed(&big, false), big.len());
        assert_eq!(t.take_captured(), None);
        assert_eq!(t.feed(&fits, false), fits.len());
        assert_eq!(
            t.take_captured().map(|c| c.args.len()),
            Some(MAX_CAPTURE as usize - 4)
        );
        let mut t = FrameTracker::server_to_client().capture(&[METHOD_BLOCKED]);
        let close = connection_close(320, "bye");
        assert_eq!(t.feed(&close, false), close.len());
        assert_eq!(t.take_captured(), None);
        assert_eq!(t.take_seen(), Some(Seen::ConnectionClose));
        // A kept frame with a bad frame-end loses the stream, keeps nothing.
        let mut bad = method(METHOD_BLOCKED, b"\x01x");
        *bad.last_mut().expect("frame") = 0;
        assert_eq!(t.feed(&bad, false), bad.len());
        assert!(t.is_lost() && t.take_captured().is_none());
    }

    /// An AMQP 1.0 frame: `doff` words of header (extended header zeros), body.
    fn frame10(ftype: u8, doff: u8, body: &[u8]) -> Vec<u8> {
        let size = doff as usize * 4 + body.len();
        let mut f = (size as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&[doff, ftype, 0, 0]);
        f.resize(doff as usize * 4, 0);
        f.extend_from_slice(body);
        f
    }

    /// A performative with a small-ulong descriptor and `list` after it.
    fn perf(code: u8, list: &[u8]) -> Vec<u8> {
        let mut b = vec![0x00, 0x53, code];
        b.extend_from_slice(list);
        frame10(0, 2, &b)
    }

    /// What a 1.0 client sends: SASL header, sasl-init, the second header,
    /// open, begin, a long transfer, an empty frame, close. With the offsets
    /// of the frame boundaries after the second header.
    fn client10() -> (Vec<u8>, Vec<usize>) {
        let mut s = amqp10::HEADER_SASL.to_vec();
        s.extend(frame10(
            1,
            2,
            &[0x00, 0x53, 0x41, 0xc0, 0x03, 0x01, 0xa3, 0x00],
        ));
        s.extend_from_slice(amqp10::HEADER_AMQP);
        let mut ends = Vec::new();
        let mut open = vec![0xc0, 7, 2, 0xa1, 2];
        open.extend_from_slice(b"id");
        open.extend_from_slice(&[0xa1, 1, b'h']);
        for f in [
            perf(0x10, &open),
            perf(0x11, &[0x45]),
            perf(0x14, &vec![0x77; 100_000]),
            frame10(0, 2, &[]),
            // An extended header of one word before the body.
            frame10(0, 3, &[0x00, 0x53, 0x13, 0x45]),
            amqp10::close(),
        ] {
            s.extend(f);
            ends.push(s.len());
        }
        (s, ends)
    }

    #[test]
    fn follows_amqp10_through_sasl_and_the_second_header_at_any_split() {
        let (stream, ends) = client10();
        // Byte by byte: the boundaries past the second header are the frames' ends.
        let mut t = FrameTracker::client_to_server();
        let mut boundaries = Vec::new();
        let mut closes = 0;
        for (i, b) in stream.iter().enumerate() {
            assert_eq!(t.feed(std::slice::from_ref(b), false), 1);
            if t.at_boundary() {
                boundaries.push(i + 1);
            }
            closes += usize::from(t.take_seen() == Some(Seen::ConnectionClose));
        }
        boundaries.retain(|b| *b >= ends[0]);
        assert_eq!(boundaries, ends);
        assert_eq!(closes, 1);
        assert!(t.opened());
        assert_eq!(t.protocol(), Some(Protocol::Amqp10));
        // Split in two at every byte, stopping at each boundary: the same.
        for cut in 0..stream.len() {
            let mut t = FrameTracker::client_to_server();
            let (mut pos, mut stops) = (0, Vec::new());
            for part in [&stream[..cut], &stream[cut..]] {
                let mut k = 0;
                while k < part.len() {
                    k += t.feed(&part[k..], true);
                    if t.at_boundary() {
                        stops.push(pos + k);
                    }
                }
                pos += part.len();
            }
            stops.retain(|b| *b >= ends[0]);
            stops.dedup();
            assert_eq!(stops, ends, "cut at {cut}");
            assert!(t.opened() && !t.is_lost(), "cut at {cut}");
        }
    }

    #[test]
    fn the_brokers_amqp10_stream_and_the_close_it_answers() {
        let mut s = amqp10::HEADER_SASL.to_vec();
        s.extend(frame10(1, 2, &[0x00, 0x53, 0x40, 0xc0, 0x03, 0x01, 0x45]));
        s.extend(frame10(
            1,
            2,
            &[0x00, 0x53, 0x44, 0xc0, 0x03, 0x01, 0x50, 0x00],
        ));
        s.extend_from_slice(amqp10::HEADER_AMQP);
        s.extend(perf(0x10, &[0xc0, 0x01, 0x00]));
        let mut t = FrameTracker::server_to_client();
        assert_eq!(t.feed(&s, false), s.len());
        assert!(t.opened() && t.at_boundary());
        assert_eq!(t.take_seen(), None);
        let close = amqp10::close_forced("bye");
        assert_eq!(t.feed(&close, false), close.len());
        assert_eq!(t.take_seen(), Some(Seen::ConnectionClose));
        // A frame with an 8-byte ulong descriptor is read too.
        let mut long = vec![0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x18];
        long.push(0x45);
        let f = frame10(0, 2, &long);
        assert_eq!(t.feed(&f, false), f.len());
        assert_eq!(t.take_seen(), Some(Seen::ConnectionClose));
        assert!(t.at_boundary());
    }

    #[test]
    fn bad_amqp10_frame_headers_lose_the_stream() {
        for bad in [
            &[0, 0, 0, 7, 2, 0, 0, 0][..],
            &[0, 0, 0, 8, 1, 0, 0, 0],
            &[0, 0, 0, 8, 3, 0, 0, 0],
            &[0, 0, 0, 16, 2, 9, 0, 0],
            &[0, 0, 0, 16, 5, 0, 0, 0],
        ] {
            let mut t = FrameTracker::client_to_server();
            t.feed(amqp10::HEADER_AMQP, false);
            assert!(t.at_boundary());
            assert_eq!(t.feed(bad, false), bad.len());
            assert!(t.is_lost(), "{bad:?}");
            assert_eq!(t.protocol(), Some(Protocol::Amqp10));
        }
        // TLS inside the stream: nothing to follow after the header.
        let mut t = FrameTracker::client_to_server();
        t.feed(amqp10::HEADER_TLS, false);
        assert!(t.is_lost() && t.protocol() == Some(Protocol::Amqp10));
        // A 0-9-1 header is 0-9-1.
        let mut t = FrameTracker::client_to_server();
        t.feed(PROTOCOL_HEADER, false);
        assert_eq!(t.protocol(), Some(Protocol::Amqp091));
        // Bodies shorter than their descriptor, or not described: no performative.
        let mut t = FrameTracker::client_to_server();
        t.feed(amqp10::HEADER_AMQP, false);
        for body in [
            &[0x00][..],
            &[0x00, 0x53],
            &[0x45, 0x00],
            &[0x00, 0xa3, 0x10],
        ] {
            let f = frame10(0, 2, body);
            assert_eq!(t.feed(&f, true), f.len());
            assert!(t.at_boundary() && !t.opened(), "{body:?}");
        }
    }

    #[test]
    fn amqp10_bodies_are_skipped_by_count_and_the_open_is_kept() {
        let (stream, ends) = client10();
        let mut t = FrameTracker::client_to_server().capture(&[METHOD_OPEN]);
        // Up to the open's end: it is kept.
        let n = t.feed(&stream[..ends[0]], false);
        assert_eq!(n, ends[0]);
        let kept = t.take_captured().expect("the open is kept");
        assert_eq!(kept.method, amqp10::KEPT_OPEN);
        assert_eq!(
            amqp10::open_fields(&kept.args),
            amqp10::Open {
                container_id: Some("id".into()),
                hostname: Some("h".into()),
            }
        );
        // Into the transfer: its body (less what was read) may be skipped.
        t.feed(&stream[ends[0]..ends[1] + 20], false);
        let left = t.payload_left();
        assert_eq!(left, (ends[2] - ends[1] - 20) as u64);
        t.skip(left);
        assert!(t.at_boundary());
        t.feed(&stream[ends[2]..], false);
        assert!(t.at_boundary());
        assert_eq!(t.take_seen(), Some(Seen::ConnectionClose));
    }

    #[test]
    fn close_frame_layout() {
        let f = connection_close(320, "x");
        assert_eq!(&f[..7], &[1, 0, 0, 0, 0, 0, 12]);
        assert_eq!(&f[7..11], &[0, 10, 0, 50]);
        assert_eq!(&f[11..13], &320u16.to_be_bytes());
        assert_eq!(*f.last().expect("non-empty"), FRAME_END);
    }
}
