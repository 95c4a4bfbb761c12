//! Property checks shared by the fuzz targets (`fuzz/fuzz_targets/`) and the
//! corpus replay test (`tests/fuzz_corpus.rs`), so CI replays exactly what the
//! fuzzer ran without needing its toolchain.
//!
//! Each check takes raw fuzzer bytes and panics when a property does not hold;
//! a panic is the finding. See docs/security.md.

#![forbid(unsafe_code)]

use std::path::Path;

use crate::config::{Config, ProxyVersion};
use crate::proxy::amqp::{
    FrameTracker, Seen, CLASS_CONNECTION, FRAME_METHOD, MAX_CAPTURE, METHOD_CLOSE, METHOD_CLOSE_OK,
};
use crate::proxy::amqp10;
use crate::proxy::handshake;
use crate::proxy::proxy_protocol::{self, Received, Scan};
use crate::proxy::rmq_stream::{self, MAX_REWRITTEN};

/// The readers of `proxy::handshake` on arbitrary bytes (what a client or a
/// broker may send as a method's arguments), and the same bytes as a stream
/// through a tracker that keeps every connection method's arguments.
///
/// The readers return (never panic); what they keep is text of at most
/// [`handshake::MAX_TEXT`] characters without control characters; a PLAIN
/// user is exactly the response's authcid, never anything after it (the
/// password). The tracker finds the same boundaries as the reference, stops
/// early only right after a kept frame, which lies in the stream as it says
/// (a channel-0 method frame of class 10, at most [`MAX_CAPTURE`] long, its
/// arguments as kept).
pub fn handshake(data: &[u8]) {
    let mut r = Reader(data);
    let flags = r.u8();
    let args = r.0;
    if let Some(s) = handshake::start_ok(args) {
        let texts = [
            Some(&s.mechanism),
            s.user.as_ref(),
            s.product.as_ref(),
            s.version.as_ref(),
            s.platform.as_ref(),
            s.connection_name.as_ref(),
        ];
        texts.into_iter().flatten().for_each(|t| check_text(t));
        if s.mechanism == "PLAIN" {
            // The response is the third field: properties (long), mechanism (short).
            let mut rest = args;
            let props = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            rest = &rest[4 + props..];
            let mech = usize::from(rest[0]);
            rest = &rest[1 + mech..];
            let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let response = &rest[4..4 + len];
            let parts: Vec<&[u8]> = response.splitn(3, |b| *b == 0).collect();
            let expected = (parts.len() == 3).then(|| handshake::text(parts[1]));
            assert_eq!(s.user, expected, "the PLAIN user is the authcid");
        }
    }
    let _ = handshake::tune_ok_heartbeat(args);
    for t in [
        handshake::open_vhost(args),
        handshake::close(args).map(|c| c.text),
        handshake::blocked_reason(args),
    ]
    .into_iter()
    .flatten()
    {
        check_text(&t);
    }

    // The same bytes as a stream, through a tracker keeping every method.
    let client = flags & 1 == 1;
    let stream = args;
    let init = if client {
        FrameTracker::client_to_server()
    } else {
        FrameTracker::server_to_client()
    };
    let all: Vec<u16> = (0..64).collect();
    let mut t = init.capture(&all);
    let expected = reference(client, stream);
    let step = usize::from(flags >> 1).max(1);
    let mut pos = 0;
    while pos < stream.len() {
        let end = (pos + step).min(stream.len());
        let n = t.feed(&stream[pos..end], false);
        assert!(n > 0 && n <= end - pos, "consumed {n} at {pos}");
        pos += n;
        let kept = t.take_captured();
        if pos < end {
            assert!(
                kept.is_some(),
                "stopped early at {pos} without a kept frame"
            );
        }
        if let Some(c) = kept {
            assert!(t.at_boundary(), "a kept frame ends at {pos}, no boundary");
            assert!(expected.boundaries.contains(&pos), "kept frame end {pos}");
            let len = usize::try_from(c.frame_len).expect("small");
            assert!(
                len <= MAX_CAPTURE as usize + 8 && len <= pos,
                "frame length {len}"
            );
            let f = &stream[pos - len..pos];
            if c.method == amqp10::KEPT_OPEN {
                // An AMQP 1.0 open: its list, up to the frame's end.
                assert_eq!(f, &c.args[..], "the open's list as kept");
                let _ = amqp10::open_fields(&c.args);
                continue;
            }
            assert_eq!(
                (f[0], &f[1..3]),
                (FRAME_METHOD, &[0u8, 0][..]),
                "a channel-0 method"
            );
            assert_eq!(u16::from_be_bytes([f[7], f[8]]), CLASS_CONNECTION);
            assert_eq!(u16::from_be_bytes([f[9], f[10]]), c.method);
            assert_eq!(&f[11..len - 1], &c.args[..], "the arguments as kept");
        }
    }
}

/// A text a handshake reader kept: bounded, printable.
fn check_text(t: &str) {
    assert!(t.chars().count() <= handshake::MAX_TEXT, "{t:?} too long");
    assert!(
        !t.chars().any(char::is_control),
        "{t:?} has control characters"
    );
}

/// Streams built by [`frame_stream`] stop growing past this many bytes, so one
/// input stays fast to check byte by byte.
const MAX_STREAM: usize = 64 * 1024;

/// `Config::from_yaml` returns (never panics) on any text, and an accepted
/// config prints (`to_yaml`, what `warren check` shows) to YAML that parses
/// again to the same effective config.
pub fn config_from_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.yaml");
    let Ok(config) = Config::from_yaml(text, path) else {
        return;
    };
    let printed = config.to_yaml();
    let again = Config::from_yaml(&printed, path).unwrap_or_else(|e| {
        panic!("the effective config does not parse again: {e}\n--- input\n{text}\n--- printed\n{printed}")
    });
    assert_eq!(
        printed,
        again.to_yaml(),
        "the effective config changes when printed twice"
    );
}

/// Arbitrary bytes through a [`FrameTracker`]: the first byte picks the
/// direction, the next ones how the stream is cut into reads; see [`check_stream`].
pub fn frame_tracker(data: &[u8]) {
    let mut r = Reader(data);
    let flags = r.u8();
    let spec_len = usize::from(r.u8() % 16);
    let chunks = r.take(spec_len).to_vec();
    check_stream(flags & 1 == 1, r.0, &chunks);
}

/// A stream of well-formed frames (described by the fuzzer's bytes) is never
/// lost, has a boundary at exactly each frame end (and after the protocol
/// header), and reports every `connection.close`/`close-ok` on channel 0.
pub fn frame_stream(data: &[u8]) {
    let mut r = Reader(data);
    let flags = r.u8();
    let spec_len = usize::from(r.u8() % 16);
    let chunks = r.take(spec_len).to_vec();
    let client = flags & 1 == 1;
    let mut stream = Vec::new();
    let mut boundaries = Vec::new();
    let mut events = Vec::new();
    if client || flags & 2 == 2 {
        stream.extend_from_slice(crate::proxy::amqp::PROTOCOL_HEADER);
        boundaries.push(stream.len());
    }
    while !r.0.is_empty() && stream.len() < MAX_STREAM {
        let (ftype, channel, payload) = match r.u8() % 8 {
            0 => (8, 0, Vec::new()),
            1 => {
                let text = "x".repeat(usize::from(r.u8() % 64));
                let f = crate::proxy::amqp::connection_close(r.u16(), &text);
                (f[0], 0, f[7..f.len() - 1].to_vec())
            }
            2 => {
                let f = crate::proxy::amqp::connection_close_ok();
                (f[0], 0, f[7..f.len() - 1].to_vec())
            }
            3 => {
                let mut p = Vec::new();
                p.extend_from_slice(&[r.u8() % 12, r.u8()]);
                p.extend_from_slice(&[0, 49 + r.u8() % 4]);
                p.resize(4 + usize::from(r.u8()), 0);
                (1, 0, p)
            }
            4 => {
                let channel = r.u16() % 3;
                let len = usize::from(r.u8() % 16);
                let mut p = r.take(len).to_vec();
                p.resize(len, 0xCE);
                (1, channel, p)
            }
            5 => (2, r.u16(), vec![0; usize::from(r.u8())]),
            6 => {
                // Body bytes that look like frame ends and headers.
                let len = usize::from(r.u16()) % 8192;
                (
                    3,
                    r.u16(),
                    [0xCE, 1, 0, 0].repeat(len / 4 + 1)[..len].to_vec(),
                )
            }
            _ => (4, r.u16(), vec![0xCE; usize::from(r.u8() % 8)]),
        };
        if ftype == 1 && channel == 0 && payload.len() >= 4 {
            let class = u16::from_be_bytes([payload[0], payload[1]]);
            let method = u16::from_be_bytes([payload[2], payload[3]]);
            let seen = match (class, method) {
                (CLASS_CONNECTION, METHOD_CLOSE) => Some(Seen::ConnectionClose),
                (CLASS_CONNECTION, METHOD_CLOSE_OK) => Some(Seen::ConnectionCloseOk),
                _ => None,
            };
            if let Some(s) = seen {
                events.push((stream.len() + 11, s));
            }
        }
        stream.push(ftype);
        stream.extend_from_slice(&channel.to_be_bytes());
        let size = u32::try_from(payload.len()).expect("payloads here are small");
        stream.extend_from_slice(&size.to_be_bytes());
        stream.extend_from_slice(&payload);
        stream.push(crate::proxy::amqp::FRAME_END);
        boundaries.push(stream.len());
    }
    let trace = check_stream(client, &stream, &chunks);
    assert!(!trace.lost[stream.len()], "a valid stream was lost");
    let found: Vec<usize> = (1..=stream.len()).filter(|&p| trace.boundary[p]).collect();
    assert_eq!(found, boundaries, "boundaries differ from frame ends");
    assert_eq!(trace.events, events, "close/close-ok events differ");
}

/// A stream of well-formed AMQP 1.0 frames (described by the fuzzer's bytes),
/// with or without the SASL layer before the second header, is never lost,
/// has a boundary at exactly each frame end (and after each protocol header),
/// and reports every `close`; the tail of the input, read as an `open`'s list,
/// gives bounded, printable text.
pub fn amqp10_stream(data: &[u8]) {
    let mut r = Reader(data);
    let flags = r.u8();
    let spec_len = usize::from(r.u8() % 16);
    let chunks = r.take(spec_len).to_vec();
    let client = flags & 1 == 1;
    let mut stream = Vec::new();
    let mut boundaries = Vec::new();
    let mut events = Vec::new();
    if flags & 2 == 2 {
        stream.extend_from_slice(amqp10::HEADER_SASL);
        boundaries.push(stream.len());
        for _ in 0..r.u8() % 4 {
            // A SASL frame: small (its size never starts with `A`).
            let len = usize::from(r.u8() % 64);
            let body = r.take(len).to_vec();
            stream.extend(frame10(1, 2, &body));
            boundaries.push(stream.len());
        }
    }
    stream.extend_from_slice(amqp10::HEADER_AMQP);
    boundaries.push(stream.len());
    while !r.0.is_empty() && stream.len() < MAX_STREAM {
        let doff = 2 + r.u8() % 4;
        let body_at = stream.len() + usize::from(doff) * 4;
        let (ftype, body) = match r.u8() % 8 {
            0 => (0, Vec::new()),
            1 => {
                let text = "é".repeat(usize::from(r.u8()));
                let f = amqp10::close_forced(&text);
                events.push((body_at + 3, Seen::ConnectionClose));
                (0, f[8..].to_vec())
            }
            2 => {
                // A close with an 8-byte descriptor.
                let mut b = vec![0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x18, 0x45];
                b.truncate(10 + usize::from(r.u8() % 2));
                events.push((body_at + 10, Seen::ConnectionClose));
                (0, b)
            }
            3 => {
                let mut b = vec![0x00, 0x53, 0x10];
                let len = usize::from(r.u8());
                b.extend_from_slice(r.take(len));
                (0, b)
            }
            4 => {
                // A transfer whose payload looks like frame headers.
                let len = usize::from(r.u16()) % 8192;
                let mut b = vec![0x00, 0x53, 0x14, 0x45];
                b.extend_from_slice(&[0, 0, 0, 8, 2, 0, 0x41, 0x18].repeat(len / 8 + 1)[..len]);
                (0, b)
            }
            5 => {
                // Any body that is no described type.
                let len = usize::from(r.u8() % 16);
                let mut b = r.take(len).to_vec();
                if let Some(first @ 0) = b.first_mut() {
                    *first = 0x45;
                }
                (r.u8() % 2, b)
            }
            // Descriptors cut short or not read.
            6 => (0, vec![0x00, 0x53][..usize::from(r.u8() % 3)].to_vec()),
            _ => (0, vec![0x00, 0xa3, 0x18, 0x45]),
        };
        let mut f = frame10(ftype, doff, &body);
        f[6..8].copy_from_slice(&r.u16().to_be_bytes());
        stream.extend(f);
        boundaries.push(stream.len());
    }
    let trace = check_stream(client, &stream, &chunks);
    assert!(!trace.lost[stream.len()], "a valid 1.0 stream was lost");
    let found: Vec<usize> = (1..=stream.len()).filter(|&p| trace.boundary[p]).collect();
    assert_eq!(found, boundaries, "boundaries differ from frame ends");
    assert_eq!(trace.events, events, "close events differ");
    let open = amqp10::open_fields(r.0);
    for t in [open.container_id, open.hostname].iter().flatten() {
        check_text(t);
    }
}

/// An AMQP 1.0 frame: `doff` words of header (the extended header zeros),
/// channel 0, then `body`.
fn frame10(ftype: u8, doff: u8, body: &[u8]) -> Vec<u8> {
    let size = usize::from(doff) * 4 + body.len();
    let mut f = u32::try_from(size)
        .expect("frames here are small")
        .to_be_bytes()
        .to_vec();
    f.extend_from_slice(&[doff, ftype, 0, 0]);
    f.resize(usize::from(doff) * 4, 0);
    f.extend_from_slice(body);
    f
}

/// Arbitrary bytes as a stream-protocol frame from a broker, after one byte
/// that picks the address written into it (and, bit 0x40, whether the frame's
/// size prefix is first set to its length, so that mutations stay whole
/// frames). Nothing panics; an open response is rewritten exactly when its
/// advertised address is read, a metadata response exactly when the identity
/// map accepts it, which returns it unchanged (as does a map that keeps every
/// broker); a rewritten frame's size prefix is its length - 4, its head
/// parses again with the same key, it carries the new address where the
/// original had one, and rewriting it again to the same address changes
/// nothing; taking every broker out of the replicas keeps the brokers and
/// holds still when done twice.
pub fn stream_rewrite(data: &[u8]) {
    let mut r = Reader(data);
    let pick = r.u8();
    let mut frame = r.0.to_vec();
    if pick & 0x40 != 0 && frame.len() >= 4 {
        let size = u32::try_from(frame.len() - 4).unwrap_or(u32::MAX);
        frame[..4].copy_from_slice(&size.to_be_bytes());
    }
    let frame = &frame[..];
    let mut host = "w".repeat(usize::from(pick % 16));
    if pick & 0x80 != 0 {
        host.push('é');
    }
    let port = u32::from_be_bytes([pick, pick.rotate_left(3), 0, pick]);
    // Each property or broker is at least 4 bytes; a rewrite adds at most the
    // host and 10 digits to it: inputs this short never outgrow the bound.
    let small = frame.len() <= MAX_REWRITTEN / 8;

    let head = rmq_stream::parse_head(frame);
    match head {
        Some(h) => {
            assert!(h.size >= 4, "a head of size {}", h.size);
            assert_eq!(frame[..4], h.size.to_be_bytes());
            assert_eq!(frame[4..6], h.key.to_be_bytes());
            assert_eq!(frame[6..8], h.version.to_be_bytes());
        }
        None => assert!(frame.len() < 8 || frame[..4] < [0, 0, 0, 4][..]),
    }
    let key = head.map(|h| h.key);

    let advertised = rmq_stream::open_advertised(frame);
    let rewritten = rmq_stream::rewrite_open(frame, &host, port);
    if advertised.is_some() {
        assert_eq!(key, Some(rmq_stream::KEY_OPEN_RESPONSE));
        assert!(rewritten.is_some() || !small, "advertised, not rewritten");
    }
    if let Some(out) = rewritten {
        assert!(advertised.is_some(), "rewritten, yet nothing advertised");
        check_stream_frame(&out, rmq_stream::KEY_OPEN_RESPONSE);
        assert_eq!(
            rmq_stream::open_advertised(&out),
            Some((host.clone(), port))
        );
        assert_eq!(
            rmq_stream::rewrite_open(&out, &host, port).as_ref(),
            Some(&out)
        );
    }

    // The (host, port) of each broker a map is asked about, and the frame
    // with each mapped by `f`.
    let seen = |frame: &[u8], f: &mut rmq_stream::MapBroker<'_>| {
        let mut seen = Vec::new();
        let out = rmq_stream::rewrite_metadata(frame, &mut |h, p| {
            seen.push((h.to_owned(), p));
            f(h, p)
        });
        out.map(|o| (o, seen))
    };
    let identity = seen(frame, &mut |h, p| Some((h.to_owned(), p)));
    if let Some((out, _)) = &identity {
        assert_eq!(key, Some(rmq_stream::KEY_METADATA_RESPONSE));
        assert_eq!(out, frame, "the identity map changed the frame");
    }
    let kept = seen(frame, &mut |_, _| None);
    assert_eq!(
        kept.as_ref().map(|k| &k.0[..]),
        identity.as_ref().map(|_| frame)
    );
    let mapped = seen(frame, &mut |_, _| Some((host.clone(), port)));
    if small {
        assert_eq!(
            mapped.is_some(),
            identity.is_some(),
            "mapped and identity differ"
        );
    }
    if let (Some((out, asked)), Some((_, before))) = (mapped, &identity) {
        assert_eq!(&asked, before, "the map was asked about other brokers");
        check_stream_frame(&out, rmq_stream::KEY_METADATA_RESPONSE);
        let (again, after) =
            seen(&out, &mut |h, p| Some((h.to_owned(), p))).expect("rewritten frame reads");
        assert_eq!(again, out);
        assert_eq!(after.len(), before.len(), "brokers read before and after");
        assert!(
            after.iter().all(|b| *b == (host.clone(), port)),
            "{after:?}"
        );
    }
    // Avoiding every broker only drops replica references: it reads exactly
    // what the identity map reads, never grows the frame, keeps its brokers,
    // and doing it again changes nothing.
    let avoiding = |f: &[u8]| {
        rmq_stream::rewrite_metadata_avoiding(
            f,
            &mut |h, p| Some((h.to_owned(), p)),
            &mut |_, _| true,
        )
    };
    let pruned = avoiding(frame);
    assert_eq!(
        pruned.is_some(),
        identity.is_some(),
        "avoiding and identity differ"
    );
    if let (Some(out), Some((_, before))) = (&pruned, &identity) {
        assert!(out.len() <= frame.len());
        check_stream_frame(out, rmq_stream::KEY_METADATA_RESPONSE);
        let (_, after) = seen(out, &mut |_, _| None).expect("a pruned frame reads");
        assert_eq!(&after, before, "brokers changed");
        assert_eq!(avoiding(out).as_ref(), Some(out));
    }
    if key.is_some_and(|k| !rmq_stream::rewritten(k)) {
        assert!(advertised.is_none() && kept.is_none());
    }
}

/// A frame a rewrite returned: its size prefix is its length - 4, and its head
/// parses again with `key`.
fn check_stream_frame(frame: &[u8], key: u16) {
    let head = rmq_stream::parse_head(frame).expect("a rewritten frame has a head");
    assert_eq!(head.size as usize, frame.len() - 4, "size prefix");
    assert_eq!(head.key, key);
    assert!(frame.len() <= MAX_REWRITTEN, "{} bytes", frame.len());
}

/// The first bytes of a connection through the PROXY step of a trusted peer
/// (`proxy::accept_proxy`): the first input byte sets how many bytes each peek
/// returns, the rest is what the peer sent. Read the way the listener reads
/// (peek at most what [`proxy_protocol::scan`] asks for, consume only the
/// header's bytes), the outcome is the one `scan` gives on the whole input; a
/// header's bytes are never more than the spec allows, and nothing after them
/// is consumed; `ppp` on the whole input finds the same header; `parse` never
/// panics, and an address it finds survives warren's own `send_proxy` header
/// (v1 and v2) unchanged.
pub fn proxy_header(data: &[u8]) {
    let mut r = Reader(data);
    let per_peek = usize::from(r.u8() % 32) + 1;
    let sent = r.0;
    let whole = proxy_protocol::scan(sent);
    // The reader: `header` is what it consumed.
    let mut header: Vec<u8> = Vec::new();
    let outcome = loop {
        let want = match proxy_protocol::scan(&header) {
            Scan::Partial(n) => n,
            other => panic!("the reader looped on {other:?}"),
        };
        assert!(want > 0, "a partial header asks for nothing");
        let available = &sent[header.len()..];
        let peeked = &available[..want.min(per_peek).min(available.len())];
        if peeked.is_empty() {
            break Scan::Partial(0);
        }
        let before = header.len();
        header.extend_from_slice(peeked);
        match proxy_protocol::scan(&header) {
            Scan::Partial(_) => {}
            Scan::Complete(len) => {
                assert!(len > before, "a header complete before this peek");
                header.truncate(len);
                break Scan::Complete(len);
            }
            other => break other,
        }
    };
    match (whole, outcome) {
        (Scan::Partial(_), Scan::Partial(_)) => {}
        (w, o) => assert_eq!(w, o, "read by peeks, the input gives another outcome"),
    }
    assert_eq!(
        proxy_protocol::starts_header(sent) == Some(false),
        whole == Scan::NotProxy,
        "starts_header and scan disagree on {sent:?}"
    );
    let Scan::Complete(len) = whole else {
        return;
    };
    let header = &sent[..len];
    if header[0] == b'P' {
        assert!(len <= proxy_protocol::V1_MAX, "a v1 header of {len} bytes");
    } else {
        assert!(
            len >= proxy_protocol::V2_FIXED,
            "a v2 header of {len} bytes"
        );
    }
    let parsed = proxy_protocol::parse(header);
    if parsed.is_ok() {
        let ppp_len = match ppp::HeaderResult::parse(sent) {
            ppp::HeaderResult::V1(Ok(h)) => h.header.len(),
            ppp::HeaderResult::V2(Ok(h)) => h.as_bytes().len(),
            other => panic!("parse accepted {header:?}, ppp on the whole input: {other:?}"),
        };
        assert_eq!(ppp_len, len, "ppp delimits another header");
    }
    if let Ok(Received::Proxied { src, dst }) = parsed {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "one header, one family");
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            let again = proxy_protocol::header(version, src, dst);
            assert_eq!(
                proxy_protocol::scan(&again),
                Scan::Complete(again.len()),
                "{version:?}"
            );
            assert_eq!(
                proxy_protocol::parse(&again),
                Ok(Received::Proxied { src, dst }),
                "{version:?} header for {src} -> {dst}"
            );
        }
    }
}

/// What a tracker shows after each prefix of a stream, fed one byte at a time.
pub struct Trace {
    /// `boundary[n]`: `at_boundary()` after `n` bytes.
    pub boundary: Vec<bool>,
    /// `lost[n]`: `is_lost()` after `n` bytes.
    pub lost: Vec<bool>,
    /// `(n, seen)`: `take_seen()` returned `seen` after `n` bytes.
    pub events: Vec<(usize, Seen)>,
}

/// Feeds `stream` to a tracker (client-to-server direction when `client`) byte
/// by byte, checks what it shows against [`reference`], then feeds it again in
/// the reads `chunks` describes, with and without `stop_at_boundary`, and checks
/// that every way agrees: same boundaries, same lost state, same events; `feed`
/// consumes everything without `stop_at_boundary`, and with it consumes at
/// least one byte of non-empty data and stops early only at a boundary.
pub fn check_stream(client: bool, stream: &[u8], chunks: &[u8]) -> Trace {
    let init = if client {
        FrameTracker::client_to_server()
    } else {
        FrameTracker::server_to_client()
    };
    let mut t = init.clone();
    let mut trace = Trace {
        boundary: vec![t.at_boundary()],
        lost: vec![t.is_lost()],
        events: Vec::new(),
    };
    assert_eq!(t.feed(&[], false), 0, "an empty feed consumed bytes");
    assert_eq!(t.feed(&[], true), 0, "an empty feed consumed bytes");
    for (i, b) in stream.iter().enumerate() {
        assert_eq!(t.feed(std::slice::from_ref(b), false), 1, "byte {i}");
        trace.boundary.push(t.at_boundary());
        trace.lost.push(t.is_lost());
        if t.is_lost() {
            assert!(!t.at_boundary(), "lost, yet at a boundary after {i} bytes");
        }
        if let Some(s) = t.take_seen() {
            trace.events.push((i + 1, s));
        }
    }
    let expected = reference(client, stream);
    let boundaries: Vec<usize> = (0..=stream.len()).filter(|&p| trace.boundary[p]).collect();
    assert_eq!(
        boundaries, expected.boundaries,
        "boundaries differ from the reference"
    );
    let lost_at = trace.lost.iter().position(|&l| l);
    assert_eq!(
        lost_at, expected.lost_at,
        "lost at another byte than the reference"
    );
    if let Some(at) = lost_at {
        assert!(
            trace.lost[at..].iter().all(|&l| l),
            "lost, then found again"
        );
    }
    assert_eq!(
        trace.events, expected.events,
        "events differ from the reference"
    );
    for stop in [false, true] {
        let mut t = init.clone();
        let mut pos = 0;
        let mut last = 0;
        for size in chunk_sizes(chunks, stream.len()) {
            let end = pos + size;
            if size == 0 {
                assert_eq!(t.feed(&[], stop), 0, "an empty feed consumed bytes");
                continue;
            }
            while pos < end {
                let n = t.feed(&stream[pos..end], stop);
                assert!(n <= end - pos, "consumed {n} of {} bytes", end - pos);
                assert!(n > 0, "consumed nothing at {pos} (stop: {stop})");
                if !stop {
                    assert_eq!(n, end - pos, "stopped early at {pos} without stop");
                }
                pos += n;
                let at = t.at_boundary();
                assert_eq!(at, trace.boundary[pos], "boundary at {pos} (stop: {stop})");
                assert_eq!(t.is_lost(), trace.lost[pos], "lost at {pos} (stop: {stop})");
                if pos < end {
                    assert!(at, "stopped at {pos}, which is no boundary");
                }
                let expected: Vec<Seen> = trace
                    .events
                    .iter()
                    .filter(|(p, _)| *p > last && *p <= pos)
                    .map(|(_, s)| *s)
                    .collect();
                if stop {
                    // Every frame end is a stop, so at most one event per feed.
                    assert!(expected.len() <= 1, "two events between stops at {pos}");
                }
                assert_eq!(t.take_seen(), expected.last().copied(), "event at {pos}");
                last = pos;
            }
        }
        assert_eq!(pos, stream.len());
    }
    // With stop_at_boundary every boundary is a stop: compare the stop positions.
    let mut t = init.clone();
    let mut pos = 0;
    let mut stops = Vec::new();
    while pos < stream.len() {
        pos += t.feed(&stream[pos..], true);
        if t.at_boundary() {
            stops.push(pos);
        }
    }
    let after_start: Vec<usize> = boundaries.into_iter().filter(|&p| p > 0).collect();
    assert_eq!(
        stops, after_start,
        "stops differ from byte-by-byte boundaries"
    );
    trace
}

/// What a tracker must find in a stream, worked out the simple way: the whole
/// stream at once, frame by frame.
pub struct Expected {
    /// Stream offsets where a frame may be injected (0 for a broker's stream).
    pub boundaries: Vec<usize>,
    /// How many bytes it takes to see that the stream is not AMQP.
    pub lost_at: Option<usize>,
    /// `connection.close`/`close-ok` on channel 0, at the offset where its
    /// class and method ids are complete.
    pub events: Vec<(usize, Seen)>,
}

/// An independent reading of `stream` (the client's direction when `client`):
/// an optional 8-byte protocol header (always for a client; for a broker when
/// its first byte is `A`), then frames: after an AMQP 1.0 header (`AMQP`,
/// protocol id 0 or 3, major version 1), 1.0 frames (see [`reference10`]);
/// after another 1.0 header (TLS) nothing more; after any other header, frames
/// of type 1, 2, 3, 4 or 8, each `size + 8` bytes long and ending in 0xCE.
pub fn reference(client: bool, stream: &[u8]) -> Expected {
    let mut e = Expected {
        boundaries: Vec::new(),
        lost_at: None,
        events: Vec::new(),
    };
    let mut pos = 0;
    if !client {
        e.boundaries.push(0);
    }
    if client || stream.first() == Some(&b'A') {
        if stream.len() < 8 {
            return e;
        }
        pos = 8;
        if let Some(sasl) = header10(&stream[..8]) {
            match sasl {
                Some(sasl) => {
                    e.boundaries.push(pos);
                    reference10(stream, pos, sasl, &mut e);
                }
                None => e.lost_at = Some(pos),
            }
            return e;
        }
        e.boundaries.push(pos);
    }
    reference091(stream, pos, &mut e);
    e
}

/// Whether an 8-byte protocol header is AMQP 1.0's: `Some(Some(sasl))` for
/// the SASL (`true`) and the plain header, `Some(None)` for another 1.0
/// protocol id (TLS), `None` for any other header.
fn header10(h: &[u8]) -> Option<Option<bool>> {
    if h[..4] != *b"AMQP" || h[5] != 1 {
        return None;
    }
    Some(match h[4] {
        3 => Some(true),
        0 => Some(false),
        _ => None,
    })
}

/// 0-9-1 frames from `pos` on (see [`reference`]).
fn reference091(stream: &[u8], mut pos: usize, e: &mut Expected) {
    while stream.len() >= pos + 7 {
        let h = &stream[pos..pos + 7];
        if !matches!(h[0], 1 | 2 | 3 | 4 | 8) {
            e.lost_at = Some(pos + 7);
            return;
        }
        let channel = u16::from_be_bytes([h[1], h[2]]);
        let size = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
        if h[0] == 1 && channel == 0 && size >= 4 && stream.len() >= pos + 11 {
            let class = u16::from_be_bytes([stream[pos + 7], stream[pos + 8]]);
            let method = u16::from_be_bytes([stream[pos + 9], stream[pos + 10]]);
            let seen = match (class, method) {
                (CLASS_CONNECTION, METHOD_CLOSE) => Some(Seen::ConnectionClose),
                (CLASS_CONNECTION, METHOD_CLOSE_OK) => Some(Seen::ConnectionCloseOk),
                _ => None,
            };
            e.events.extend(seen.map(|s| (pos + 11, s)));
        }
        let end = pos + 7 + size + 1;
        if stream.len() < end {
            return;
        }
        if stream[end - 1] != crate::proxy::amqp::FRAME_END {
            e.lost_at = Some(end);
            return;
        }
        e.boundaries.push(end);
        pos = end;
    }
}

/// AMQP 1.0 frames from `pos` on: each `size` bytes long in all (at least 8),
/// data offset `doff` words (at least 2, within the frame), type 0 or 1. In
/// the SASL layer (`sasl`) an `A` where a frame would start begins the next
/// protocol header. A `close` (descriptor 0x18, as `0x00 0x53 0x18` or
/// `0x00 0x80` and 8 bytes) at the start of a type-0 body is an event where its
/// descriptor is complete.
fn reference10(stream: &[u8], mut pos: usize, mut sasl: bool, e: &mut Expected) {
    loop {
        if sasl && stream.get(pos) == Some(&b'A') {
            if stream.len() < pos + 8 {
                return;
            }
            let h = &stream[pos..pos + 8];
            pos += 8;
            match header10(h) {
                Some(Some(s)) => {
                    sasl = s;
                    e.boundaries.push(pos);
                }
                Some(None) => {
                    e.lost_at = Some(pos);
                    return;
                }
                None => {
                    e.boundaries.push(pos);
                    return reference091(stream, pos, e);
                }
            }
            continue;
        }
        if stream.len() < pos + 8 {
            return;
        }
        let h = &stream[pos..pos + 8];
        let size = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let (doff, ftype) = (usize::from(h[4]) * 4, h[5]);
        if size < 8 || doff < 8 || doff > size || ftype > 1 {
            e.lost_at = Some(pos + 8);
            return;
        }
        let body = &stream[(pos + doff).min(stream.len())..(pos + size).min(stream.len())];
        if ftype == 0 {
            let code = match body {
                [0x00, 0x53, code, ..] => Some((3, u64::from(*code))),
                [0x00, 0x80, c @ ..] if c.len() >= 8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&c[..8]);
                    Some((10, u64::from_be_bytes(b)))
                }
                _ => None,
            };
            if let Some((len, 0x18)) = code {
                e.events.push((pos + doff + len, Seen::ConnectionClose));
            }
        }
        let end = pos + size;
        if stream.len() < end {
            return;
        }
        e.boundaries.push(end);
        pos = end;
    }
}

/// Read sizes from the fuzzer's description: each byte is one read (0 is an
/// empty read, 0xF0.. are large reads), repeated until `len` bytes are covered.
fn chunk_sizes(spec: &[u8], len: usize) -> Vec<usize> {
    let spec: &[u8] = if spec.iter().any(|&b| b != 0) {
        spec
    } else {
        &[0xFF]
    };
    let mut sizes = Vec::new();
    let mut covered = 0;
    for &b in spec.iter().cycle() {
        if covered >= len {
            break;
        }
        let size = if b >= 0xF0 {
            usize::from(b - 0xEF) * 4096
        } else {
            usize::from(b)
        };
        let size = size.min(len - covered);
        covered += size;
        sizes.push(size);
    }
    sizes
}

/// Takes bytes from the front of the fuzzer's input, zeros once it runs out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_accept_simple_inputs() {
        config_from_yaml(b"listen: 127.0.0.1:5672\nbackends:\n  - {name: a, address: 'h:1'}\n");
        config_from_yaml(b"\xff");
        frame_tracker(b"");
        frame_tracker(b"\x01\x02\x03\x05AMQP\x00\x00\x09\x01\x08\x00\x00\x00\x00\x00\x00\xce");
        frame_stream(b"");
        frame_stream(b"\x00\x01\x07\x01\x01\x02\x06\x10\x00\x00\x01\x00\x00");
        handshake(b"");
        handshake(b"\x01\x00\x00\x00\x00\x05PLAIN\x00\x00\x00\x06\x00u\x00pw\x05en_US");
        proxy_header(b"");
        proxy_header(b"\x03PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\nAMQP");
        proxy_header(b"\x00PROXY UNKNOWN\r\n");
        proxy_header(b"\x07\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x0a\x00\x00\x01\x0a\x00\x00\x02\x00\x01\x00\x02AMQP");
        stream_rewrite(b"");
        stream_rewrite(b"\x40\0\0\0\0\x80\x15\0\x01");
        stream_rewrite(b"\x05\0\0\0\x0a\x80\x15\0\x01\0\0\0\x07\0\x0c");
        let open = rmq_stream::encode::open_response(
            1,
            1,
            Some(&[("advertised_host", "h"), ("advertised_port", "5552")]),
        );
        let metadata =
            rmq_stream::encode::metadata_response(1, &[(0, "h", 5552), (1, "i", 5553)], &[]);
        for pick in [0x00, 0x07, 0x40, 0x8f, 0xff] {
            for frame in [&open, &metadata] {
                stream_rewrite(&[&[pick][..], frame].concat());
            }
        }
    }

    #[test]
    fn chunk_sizes_cover_the_stream() {
        assert_eq!(chunk_sizes(&[], 3), vec![3]);
        assert_eq!(chunk_sizes(&[0, 2], 5), vec![0, 2, 0, 2, 0, 1]);
        assert_eq!(chunk_sizes(&[0xF0], 5000), vec![4096, 904]);
    }
}
