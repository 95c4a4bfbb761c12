//! Just enough of the RabbitMQ stream protocol (port 5552) to rewrite the
//! addresses a broker advertises.
//!
//! A stream client connects to one node, then asks it (`metadata`) which node
//! leads each stream and which hold replicas, and connects to those by the
//! host and port they advertise. Two server-to-client frames carry addresses:
//! the `open` response (connection properties `advertised_host` and
//! `advertised_port`, the port as decimal text) and the `metadata` response
//! (a broker array of reference, host, port). warren puts each node behind a
//! port of its own and rewrites both, so that clients come back through it.
//!
//! Wire format (`deps/rabbitmq_stream/docs/PROTOCOL.adoc` in rabbitmq-server;
//! encoded by `rabbit_stream_core:frame/1`): a frame is `size` (u32, big-endian,
//! not counting itself), `key` (u16; the top bit set on responses), `version`
//! (u16), then the body. A string is an i16 length (-1: null) and UTF-8
//! bytes; an array an i32 count and its elements.
//!
//! ```text
//! OpenResponse     0x8015 v1: CorrelationId u32, ResponseCode u16,
//!                  [ConnectionProperty: Key string, Value string]
//! MetadataResponse 0x800f v1: CorrelationId u32,
//!                  [Broker: Reference u16, Host string, Port u32],
//!                  [StreamMetadata: Name string, ResponseCode u16,
//!                   LeaderReference u16, [ReplicaReference u16]]
//! ```
//!
//! The broker writes no property array at all (not even its count) when there
//! are no properties, as in every open response that is not OK. Everything
//! here is pure and bounded by its input: no I/O, no recursion, no allocation
//! beyond [`MAX_REWRITTEN`], no panic on any bytes.

/// A frame's first 8 bytes: u32 size (big-endian, not counting itself), u16
/// key, u16 version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub size: u32,
    pub key: u16,
    pub version: u16,
}

/// Length of a [`FrameHead`] on the wire.
pub const HEAD_LEN: usize = 8;

/// Key of the response to `open` (0x0015).
pub const KEY_OPEN_RESPONSE: u16 = 0x8015;
/// Key of the response to `metadata` (0x000f).
pub const KEY_METADATA_RESPONSE: u16 = 0x800f;

/// The largest frame warren reads whole and rewrites, size prefix included:
/// the stream plugin's default `frame_max` (1 MiB). A metadata response lists
/// each node once and each stream asked for in ~270 bytes at most (a 255-byte
/// name, its leader and replicas), so a few thousand streams fit. Bigger
/// frames pass unchanged; no rewritten frame grows past it either.
pub const MAX_REWRITTEN: usize = 1 << 20;

/// The only version of both responses.
const VERSION_1: u16 = 1;
/// `ResponseCode` OK.
const RESPONSE_CODE_OK: u16 = 1;
/// The longest string the i16 length holds.
const MAX_STRING: usize = i16::MAX as usize;

/// The connection properties warren rewrites in an open response.
const ADVERTISED_HOST: &[u8] = b"advertised_host";
const ADVERTISED_PORT: &[u8] = b"advertised_port";

/// Reads the head from the first 8 bytes (None: fewer than 8 bytes, or size < 4).
pub fn parse_head(buf: &[u8]) -> Option<FrameHead> {
    let mut r = Reader(buf);
    let head = FrameHead {
        size: r.u32()?,
        key: r.u16()?,
        version: r.u16()?,
    };
    (head.size >= 4).then_some(head)
}

/// Whether a frame with this key is one warren reads whole and rewrites.
pub fn rewritten(key: u16) -> bool {
    key == KEY_OPEN_RESPONSE || key == KEY_METADATA_RESPONSE
}

/// The advertised_host / advertised_port an OK open response carries in its
/// connection properties (`frame` is the whole frame, size prefix included).
/// None: not OK, absent, malformed (a port that is not decimal text, a host
/// that is not UTF-8, a frame that is not one whole version-1 open response).
/// Should a property appear twice, the last one counts, as in the broker's
/// own client parser.
pub fn open_advertised(frame: &[u8]) -> Option<(String, u32)> {
    let (_, count, mut r) = open_parts(frame)?;
    let (mut host, mut port) = (None, None);
    for _ in 0..count {
        let p = property(&mut r)?;
        match p.key {
            Some(ADVERTISED_HOST) => host = Some(p.value?),
            Some(ADVERTISED_PORT) => port = Some(p.value?),
            _ => {}
        }
    }
    if !r.0.is_empty() {
        return None;
    }
    let host = std::str::from_utf8(host?).ok()?.to_owned();
    Some((host, decimal(port?)?))
}

/// The open response with advertised_host and advertised_port replaced (port
/// written as decimal text, as the broker does), every other property as it
/// was. None when malformed/not OK (exactly when [`open_advertised`] is None),
/// or when `host` is longer than a string holds or the frame would outgrow
/// [`MAX_REWRITTEN`]; then the caller forwards it unchanged. The size prefix
/// of the returned frame is right.
pub fn rewrite_open(frame: &[u8], host: &str, port: u32) -> Option<Vec<u8>> {
    open_advertised(frame)?;
    let port = port.to_string();
    let (head, count, mut r) = open_parts(frame)?;
    let mut out = Vec::with_capacity(frame.len() + host.len() + port.len());
    out.extend_from_slice(head);
    for _ in 0..count {
        let p = property(&mut r)?;
        let value = match p.key {
            Some(ADVERTISED_HOST) => host.as_bytes(),
            Some(ADVERTISED_PORT) => port.as_bytes(),
            _ => {
                out.extend_from_slice(p.raw);
                continue;
            }
        };
        push_string(&mut out, p.key)?;
        push_string(&mut out, Some(value))?;
        if out.len() > MAX_REWRITTEN {
            return None;
        }
    }
    finish(out)
}

/// What [`rewrite_metadata`] asks of each broker: its new (host, port) from
/// its (host, port), or None to leave it as it was.
pub type MapBroker<'a> = dyn FnMut(&str, u32) -> Option<(String, u32)> + 'a;

/// What [`rewrite_metadata_avoiding`] asks of each broker, by its (host,
/// port) as the broker wrote it: true to take it out of every stream's
/// replicas.
pub type AvoidBroker<'a> = dyn FnMut(&str, u32) -> bool + 'a;

/// The metadata response with each broker's (host, port) replaced by
/// `map(host, port)`; a broker `map` returns None for is left as it was, and
/// so is one whose host is null or not UTF-8 (`map` is not asked). The stream
/// metadata after the broker array is copied byte for byte. None when
/// malformed (the whole frame is checked before `map` is first called), or
/// when a new host is longer than a string holds or the frame would outgrow
/// [`MAX_REWRITTEN`].
pub fn rewrite_metadata(frame: &[u8], map: &mut MapBroker<'_>) -> Option<Vec<u8>> {
    rewrite_metadata_avoiding(frame, map, &mut |_, _| false)
}

/// [`rewrite_metadata`], and each stream's replicas without the brokers
/// `avoid` names (a broker whose host is null or not UTF-8 is not asked and
/// stays). A stream left without replicas is read from its leader by
/// clients; leaders are never changed (publishers have nowhere else to go).
/// When no broker is avoided the stream metadata is copied byte for byte.
pub fn rewrite_metadata_avoiding(
    frame: &[u8],
    map: &mut MapBroker<'_>,
    avoid: &mut AvoidBroker<'_>,
) -> Option<Vec<u8>> {
    let (head, count, r) = metadata_parts(frame)?;
    let mut check = Reader(r.0);
    for _ in 0..count {
        broker(&mut check)?;
    }
    let tail = check.0;
    stream_metadata(&mut check)?;
    if !check.0.is_empty() {
        return None;
    }

    let mut r = r;
    let mut out = Vec::with_capacity(frame.len() + 64);
    let mut avoided = Vec::new();
    out.extend_from_slice(head);
    for _ in 0..count {
        let b = broker(&mut r)?;
        let host = b.host.and_then(|h| std::str::from_utf8(h).ok());
        if host.is_some_and(|h| avoid(h, b.port)) {
            avoided.push(b.reference);
        }
        match host.and_then(|h| map(h, b.port)) {
            Some((host, port)) => {
                out.extend_from_slice(&b.reference.to_be_bytes());
                push_string(&mut out, Some(host.as_bytes()))?;
                out.extend_from_slice(&port.to_be_bytes());
            }
            None => out.extend_from_slice(b.raw),
        }
        if out.len() > MAX_REWRITTEN {
            return None;
        }
    }
    if avoided.is_empty() {
        out.extend_from_slice(tail);
    } else {
        replicas_without(&mut out, Reader(tail), &avoided)?;
    }
    finish(out)
}

/// Appends the stream array `r` reads, each stream's replicas without the
/// references in `avoided`. The array was checked by [`stream_metadata`].
fn replicas_without(out: &mut Vec<u8>, mut r: Reader<'_>, avoided: &[u16]) -> Option<()> {
    let count = r.count()?;
    out.extend_from_slice(&u32::try_from(count).ok()?.to_be_bytes());
    for _ in 0..count {
        let start = r.0;
        r.string()?;
        r.u16()?; // response code
        r.u16()?; // leader reference
        out.extend_from_slice(start.get(..start.len() - r.0.len())?);
        let mut kept = Vec::new();
        for _ in 0..r.count()? {
            let reference = r.u16()?;
            if !avoided.contains(&reference) {
                kept.push(reference);
            }
        }
        out.extend_from_slice(&u32::try_from(kept.len()).ok()?.to_be_bytes());
        for reference in kept {
            out.extend_from_slice(&reference.to_be_bytes());
        }
    }
    Some(())
}

/// The body of a whole version-1 frame with this key, at most
/// [`MAX_REWRITTEN`] long, whose size prefix is its length - 4.
fn body(frame: &[u8], key: u16) -> Option<&[u8]> {
    if frame.len() > MAX_REWRITTEN {
        return None;
    }
    let head = parse_head(frame)?;
    let whole = usize::try_from(head.size).ok()?.checked_add(4)? == frame.len();
    if !whole || head.key != key || head.version != VERSION_1 {
        return None;
    }
    frame.get(HEAD_LEN..)
}

/// An OK open response split at its properties: the frame through their
/// count, the count, and a reader at the first one. None without the count
/// (no properties) or when not OK.
fn open_parts(frame: &[u8]) -> Option<(&[u8], usize, Reader<'_>)> {
    let mut r = Reader(body(frame, KEY_OPEN_RESPONSE)?);
    r.u32()?; // correlation id
    if r.u16()? != RESPONSE_CODE_OK {
        return None;
    }
    let count = r.count()?;
    Some((frame.get(..frame.len() - r.0.len())?, count, r))
}

/// A metadata response split at its brokers: the frame through their count,
/// the count, and a reader at the first one.
fn metadata_parts(frame: &[u8]) -> Option<(&[u8], usize, Reader<'_>)> {
    let mut r = Reader(body(frame, KEY_METADATA_RESPONSE)?);
    r.u32()?; // correlation id
    let count = r.count()?;
    Some((frame.get(..frame.len() - r.0.len())?, count, r))
}

/// One connection property: key and value (None: null), and its bytes.
struct Property<'a> {
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    raw: &'a [u8],
}

fn property<'a>(r: &mut Reader<'a>) -> Option<Property<'a>> {
    let start = r.0;
    let key = r.string()?;
    let value = r.string()?;
    Some(Property {
        key,
        value,
        raw: start.get(..start.len() - r.0.len())?,
    })
}

/// One entry of a metadata response's broker array, and its bytes.
struct Broker<'a> {
    reference: u16,
    host: Option<&'a [u8]>,
    port: u32,
    raw: &'a [u8],
}

fn broker<'a>(r: &mut Reader<'a>) -> Option<Broker<'a>> {
    let start = r.0;
    let reference = r.u16()?;
    let host = r.string()?;
    let port = r.u32()?;
    Some(Broker {
        reference,
        host,
        port,
        raw: start.get(..start.len() - r.0.len())?,
    })
}

/// Reads past a metadata response's stream array (name, code, leader,
/// replicas), checking its shape only.
fn stream_metadata(r: &mut Reader<'_>) -> Option<()> {
    for _ in 0..r.count()? {
        r.string()?;
        r.u16()?; // response code
        r.u16()?; // leader reference (0xffff: none)
        let replicas = r.count()?;
        r.take(replicas.checked_mul(2)?)?;
    }
    Some(())
}

/// A port as the broker writes it: 1 to 10 ASCII digits that fit a u32.
fn decimal(text: &[u8]) -> Option<u32> {
    if text.is_empty() || text.len() > 10 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Appends a string (i16 length, then the bytes; -1 for null). None when it
/// is too long for the length.
fn push_string(out: &mut Vec<u8>, s: Option<&[u8]>) -> Option<()> {
    match s {
        None => out.extend_from_slice(&(-1i16).to_be_bytes()),
        Some(s) if s.len() <= MAX_STRING => {
            out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_be_bytes());
            out.extend_from_slice(s);
        }
        Some(_) => return None,
    }
    Some(())
}

/// Writes the size prefix of a frame built whole in `out`.
fn finish(mut out: Vec<u8>) -> Option<Vec<u8>> {
    if out.len() > MAX_REWRITTEN {
        return None;
    }
    let size = u32::try_from(out.len().checked_sub(4)?).ok()?;
    out.get_mut(..4)?.copy_from_slice(&size.to_be_bytes());
    Some(out)
}

/// Reads big-endian fields from the front of a slice; a read past its end is
/// None.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    /// An array's i32 count; negative is malformed.
    fn count(&mut self) -> Option<usize> {
        let n = i32::from_be_bytes(self.take(4)?.try_into().ok()?);
        usize::try_from(n).ok()
    }
    /// A string: `Some(None)` for null (length -1); None when truncated or
    /// its length is below -1.
    fn string(&mut self) -> Option<Option<&'a [u8]>> {
        let len = i16::from_be_bytes(self.take(2)?.try_into().ok()?);
        if len == -1 {
            return Some(None);
        }
        self.take(usize::try_from(len).ok()?).map(Some)
    }
}

/// Frames as the broker writes them, for tests and fuzz seeds.
pub mod encode {
    use super::{push_string, KEY_METADATA_RESPONSE, KEY_OPEN_RESPONSE, VERSION_1};

    /// An open response; `props` None writes no property array (as the
    /// broker does when it has none).
    pub fn open_response(correlation: u32, code: u16, props: Option<&[(&str, &str)]>) -> Vec<u8> {
        let mut f = head(KEY_OPEN_RESPONSE, correlation);
        f.extend_from_slice(&code.to_be_bytes());
        if let Some(props) = props {
            f.extend_from_slice(&len32(props.len()));
            for (k, v) in props {
                string(&mut f, k);
                string(&mut f, v);
            }
        }
        sized(f)
    }

    /// A stream's entry in a metadata response: name, response code,
    /// leader reference, replica references.
    pub struct Stream<'a> {
        pub name: &'a str,
        pub code: u16,
        pub leader: u16,
        pub replicas: &'a [u16],
    }

    /// A metadata response: brokers (reference, host, port), then streams.
    pub fn metadata_response(
        correlation: u32,
        brokers: &[(u16, &str, u32)],
        streams: &[Stream<'_>],
    ) -> Vec<u8> {
        let mut f = head(KEY_METADATA_RESPONSE, correlation);
        f.extend_from_slice(&len32(brokers.len()));
        for (reference, host, port) in brokers {
            f.extend_from_slice(&reference.to_be_bytes());
            string(&mut f, host);
            f.extend_from_slice(&port.to_be_bytes());
        }
        f.extend_from_slice(&len32(streams.len()));
        for s in streams {
            string(&mut f, s.name);
            f.extend_from_slice(&s.code.to_be_bytes());
            f.extend_from_slice(&s.leader.to_be_bytes());
            f.extend_from_slice(&len32(s.replicas.len()));
            for r in s.replicas {
                f.extend_from_slice(&r.to_be_bytes());
            }
        }
        sized(f)
    }

    fn head(key: u16, correlation: u32) -> Vec<u8> {
        let mut f = vec![0; 4];
        f.extend_from_slice(&key.to_be_bytes());
        f.extend_from_slice(&VERSION_1.to_be_bytes());
        f.extend_from_slice(&correlation.to_be_bytes());
        f
    }

    fn string(f: &mut Vec<u8>, s: &str) {
        push_string(f, Some(s.as_bytes())).expect("test strings fit an i16 length");
    }

    fn len32(n: usize) -> [u8; 4] {
        u32::try_from(n)
            .expect("test arrays are small")
            .to_be_bytes()
    }

    fn sized(mut f: Vec<u8>) -> Vec<u8> {
        let size = u32::try_from(f.len() - 4).expect("test frames are small");
        f[..4].copy_from_slice(&size.to_be_bytes());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::encode::{metadata_response, open_response, Stream};
    use super::*;

    const PROPS: &[(&str, &str)] = &[
        ("advertised_host", "rabbit-1.internal"),
        ("cluster_hint", "x"),
        ("advertised_port", "5552"),
    ];

    fn ok_open() -> Vec<u8> {
        open_response(7, RESPONSE_CODE_OK, Some(PROPS))
    }

    fn size_of(f: &[u8]) -> usize {
        u32::from_be_bytes(f[..4].try_into().expect("4 bytes")) as usize
    }

    /// The frame with its size prefix set to its length - 4.
    fn resized(mut f: Vec<u8>) -> Vec<u8> {
        let size = (f.len() - 4) as u32;
        f[..4].copy_from_slice(&size.to_be_bytes());
        f
    }

    fn streams() -> [Stream<'static>; 2] {
        [
            Stream {
                name: "orders",
                code: 1,
                leader: 1,
                replicas: &[0, 2],
            },
            Stream {
                name: "gone",
                code: 2,
                leader: 0xffff,
                replicas: &[],
            },
        ]
    }

    fn metadata() -> Vec<u8> {
        metadata_response(
            9,
            &[
                (0, "rabbit-1.internal", 5552),
                (1, "rabbit-2.internal", 5552),
                (2, "rabbit-3.internal", 5553),
            ],
            &streams(),
        )
    }

    /// What `rewrite_metadata` shows `map` of a frame, the frame unchanged.
    fn brokers_seen(frame: &[u8]) -> Option<Vec<(String, u32)>> {
        let mut seen = Vec::new();
        let out = rewrite_metadata(frame, &mut |h, p| {
            seen.push((h.to_owned(), p));
            None
        })?;
        assert_eq!(out, frame);
        Some(seen)
    }

    /// Frames a RabbitMQ node (stream port 6791, host `vm`) sent a raw client,
    /// the same bytes from 3.10.8 and 4.3.6: the open response to vhost `/`,
    /// to a vhost that does not exist, and the metadata response for streams
    /// `i18-a`, `i18-b` (both led by the one node, no replicas) and
    /// `i18-missing`.
    const REAL_OPEN: &[u8] = b"\x00\x00\x00:\x80\x15\x00\x01\x00\x00\x00\x04\x00\x01\x00\x00\x00\x02\x00\x0fadvertised_port\x00\x046791\x00\x0fadvertised_host\x00\x02vm";
    const REAL_REFUSED: &[u8] = b"\x00\x00\x00\x0a\x80\x15\x00\x01\x00\x00\x00\x04\x00\x0c";
    const REAL_METADATA: &[u8] = b"\x00\x00\x00M\x80\x0f\x00\x01\x00\x00\x00\x06\x00\x00\x00\x01\x00\x00\x00\x02vm\x00\x00\x1a\x87\x00\x00\x00\x03\x00\x0bi18-missing\x00\x02\xff\xff\x00\x00\x00\x00\x00\x05i18-b\x00\x01\x00\x00\x00\x00\x00\x00\x00\x05i18-a\x00\x01\x00\x00\x00\x00\x00\x00";

    #[test]
    fn frames_from_a_real_broker() {
        assert_eq!(open_advertised(REAL_OPEN), Some(("vm".to_owned(), 6791)));
        let out = rewrite_open(REAL_OPEN, "warren.local", 15552).expect("rewritten");
        let expected = open_response(
            4,
            RESPONSE_CODE_OK,
            Some(&[
                ("advertised_port", "15552"),
                ("advertised_host", "warren.local"),
            ]),
        );
        assert_eq!(out, expected);
        assert_eq!(open_advertised(REAL_REFUSED), None);
        assert_eq!(rewrite_open(REAL_REFUSED, "w", 1), None);

        assert_eq!(
            brokers_seen(REAL_METADATA),
            Some(vec![("vm".to_owned(), 6791)])
        );
        let out = rewrite_metadata(REAL_METADATA, &mut |_, _| {
            Some(("warren.local".into(), 15552))
        })
        .expect("rewritten");
        let expected = metadata_response(
            6,
            &[(0, "warren.local", 15552)],
            &[
                Stream {
                    name: "i18-missing",
                    code: 2,
                    leader: 0xffff,
                    replicas: &[],
                },
                Stream {
                    name: "i18-b",
                    code: 1,
                    leader: 0,
                    replicas: &[],
                },
                Stream {
                    name: "i18-a",
                    code: 1,
                    leader: 0,
                    replicas: &[],
                },
            ],
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn the_head_is_size_key_version() {
        let f = ok_open();
        assert_eq!(
            parse_head(&f),
            Some(FrameHead {
                size: (f.len() - 4) as u32,
                key: 0x8015,
                version: 1,
            })
        );
        assert_eq!(parse_head(&f[..7]), None);
        assert_eq!(parse_head(&[0, 0, 0, 3, 0x80, 0x15, 0, 1]), None);
        assert_eq!(
            parse_head(&[0, 0, 0, 4, 0, 0x17, 0, 1]).map(|h| h.key),
            Some(0x0017)
        );
        assert!(rewritten(KEY_OPEN_RESPONSE) && rewritten(KEY_METADATA_RESPONSE));
        assert!(!rewritten(0x0015) && !rewritten(0x8011) && !rewritten(0x0008));
    }

    #[test]
    fn an_ok_open_gives_its_advertised_address_and_is_rewritten_in_place() {
        let f = ok_open();
        assert_eq!(
            open_advertised(&f),
            Some(("rabbit-1.internal".to_owned(), 5552))
        );
        let out = rewrite_open(&f, "warren.example", 15552).expect("rewritten");
        assert_eq!(size_of(&out), out.len() - 4);
        let expected = open_response(
            7,
            RESPONSE_CODE_OK,
            Some(&[
                ("advertised_host", "warren.example"),
                ("cluster_hint", "x"),
                ("advertised_port", "15552"),
            ]),
        );
        assert_eq!(out, expected);
        assert_eq!(
            open_advertised(&out),
            Some(("warren.example".to_owned(), 15552))
        );
        // The same address again changes nothing.
        assert_eq!(rewrite_open(&f, "rabbit-1.internal", 5552), Some(f));
    }

    #[test]
    fn an_open_that_is_not_ok_or_lacks_an_address_is_not_rewritten() {
        // As the broker refuses a vhost: code 0x0c and no property array.
        let refused = open_response(7, 0x0c, None);
        assert_eq!(refused.len(), 14);
        // Even with properties, only an OK open is read.
        let odd = open_response(7, 0x0c, Some(PROPS));
        let no_port = open_response(7, 1, Some(&PROPS[..2]));
        let no_props = open_response(7, 1, None);
        let empty = open_response(7, 1, Some(&[]));
        let bad_port = open_response(
            7,
            1,
            Some(&[("advertised_host", "h"), ("advertised_port", "+5552")]),
        );
        let big_port = open_response(
            7,
            1,
            Some(&[("advertised_host", "h"), ("advertised_port", "4294967296")]),
        );
        for f in [refused, odd, no_port, no_props, empty, bad_port, big_port] {
            assert_eq!(open_advertised(&f), None, "{f:?}");
            assert_eq!(rewrite_open(&f, "w", 1), None, "{f:?}");
        }
        // Another key or version.
        let mut f = ok_open();
        f[7] = 2;
        assert_eq!(open_advertised(&f), None);
        let mut f = ok_open();
        f[5] = 0x0f;
        assert_eq!(open_advertised(&f), None);
        // A host too long for a string.
        assert_eq!(rewrite_open(&ok_open(), &"h".repeat(32768), 1), None);
        assert!(rewrite_open(&ok_open(), &"h".repeat(32767), 1).is_some());
    }

    #[test]
    fn null_and_repeated_properties() {
        // A null value elsewhere is copied; the last of two hosts counts,
        // and both are rewritten.
        let mut f = open_response(1, 1, Some(&[("advertised_host", "a")]));
        f[14..18].copy_from_slice(&4u32.to_be_bytes());
        f.extend_from_slice(&[0, 1, b'k', 0xff, 0xff]);
        f.extend_from_slice(&[0, 15]);
        f.extend_from_slice(b"advertised_host");
        f.extend_from_slice(&[0, 1, b'b']);
        f.extend_from_slice(&[0, 15]);
        f.extend_from_slice(b"advertised_port");
        f.extend_from_slice(&[0, 2, b'4', b'2']);
        let f = resized(f);
        assert_eq!(open_advertised(&f), Some(("b".to_owned(), 42)));
        let out = rewrite_open(&f, "w", 7).expect("rewritten");
        assert_eq!(
            out.windows(5).filter(|w| w == b"\0\x01k\xff\xff").count(),
            1
        );
        assert_eq!(
            out.windows(18)
                .filter(|w| w == b"advertised_host\0\x01w")
                .count(),
            2
        );
        assert_eq!(open_advertised(&out), Some(("w".to_owned(), 7)));
        // A null advertised host is malformed.
        let mut f = open_response(1, 1, Some(&[("advertised_port", "1")]));
        f[14..18].copy_from_slice(&2u32.to_be_bytes());
        f.extend_from_slice(&[0, 15]);
        f.extend_from_slice(b"advertised_host");
        f.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(open_advertised(&resized(f)), None);
    }

    #[test]
    fn metadata_brokers_are_mapped_and_the_streams_copied() {
        let f = metadata();
        assert_eq!(
            brokers_seen(&f),
            Some(vec![
                ("rabbit-1.internal".to_owned(), 5552),
                ("rabbit-2.internal".to_owned(), 5552),
                ("rabbit-3.internal".to_owned(), 5553),
            ])
        );
        let out = rewrite_metadata(&f, &mut |h, p| match h {
            "rabbit-2.internal" => None,
            _ => Some((format!("warren-{}", &h[7..8]), p + 10000)),
        })
        .expect("rewritten");
        let expected = metadata_response(
            9,
            &[
                (0, "warren-1", 15552),
                (1, "rabbit-2.internal", 5552),
                (2, "warren-3", 15553),
            ],
            &streams(),
        );
        assert_eq!(out, expected);
        assert_eq!(size_of(&out), out.len() - 4);
        // The stream metadata is the same bytes.
        let tail = |f: &[u8]| f[f.len() - 38..].to_vec();
        assert_eq!(tail(&out), tail(&f));
        assert_eq!(&tail(&f)[..4], &2u32.to_be_bytes());
        // Identity changes nothing.
        let same = rewrite_metadata(&f, &mut |h, p| Some((h.to_owned(), p)));
        assert_eq!(same, Some(f));
        // No brokers, no streams.
        let empty = metadata_response(1, &[], &[]);
        assert_eq!(brokers_seen(&empty), Some(vec![]));
    }

    #[test]
    fn avoided_brokers_leave_the_replicas_and_never_the_leader() {
        let f = metadata();
        let brokers = [
            (0, "warren", 15552),
            (1, "warren", 15553),
            (2, "warren", 15554),
        ];
        let mut port = 15551;
        let mut to_warren = |_: &str, _: u32| {
            port += 1;
            Some(("warren".to_owned(), port))
        };
        // rabbit-3 (reference 2) out: orders keeps replica 0.
        let mut asked = Vec::new();
        let out = rewrite_metadata_avoiding(&f, &mut to_warren, &mut |h, p| {
            asked.push((h.to_owned(), p));
            h == "rabbit-3.internal"
        });
        let [orders, gone] = streams();
        let one = Stream {
            replicas: &[0],
            ..orders
        };
        assert_eq!(out, Some(metadata_response(9, &brokers, &[one, gone])));
        assert_eq!(asked.len(), 3, "{asked:?}");
        // Every replica out: none left (clients read from the leader); the
        // leader (reference 1) stays even when avoided.
        let mut port = 15551;
        let out = rewrite_metadata_avoiding(
            &f,
            &mut |_, _| {
                port += 1;
                Some(("warren".to_owned(), port))
            },
            &mut |_, _| true,
        );
        let [orders, gone] = streams();
        let none = Stream {
            replicas: &[],
            ..orders
        };
        let expected = metadata_response(9, &brokers, &[none, gone]);
        assert_eq!(out.as_ref(), Some(&expected));
        assert_eq!(size_of(&expected), expected.len() - 4);
        // Nothing avoided: the same bytes as rewrite_metadata's.
        let plain = rewrite_metadata(&f, &mut |h, p| Some((h.to_owned(), p)));
        let kept =
            rewrite_metadata_avoiding(&f, &mut |h, p| Some((h.to_owned(), p)), &mut |_, _| false);
        assert_eq!(plain, kept);
        assert_eq!(kept, Some(f));
    }

    #[test]
    fn a_null_or_binary_host_is_left_alone() {
        let mut f = metadata_response(1, &[(0, "h", 1)], &[]);
        // [ref 1, null, port 2], [ref 2, 0xff 0xfe, port 3], then no streams.
        f[12..16].copy_from_slice(&3u32.to_be_bytes());
        f.truncate(f.len() - 4);
        f.extend_from_slice(&[0, 1, 0xff, 0xff, 0, 0, 0, 2]);
        f.extend_from_slice(&[0, 2, 0, 2, 0xff, 0xfe, 0, 0, 0, 3]);
        f.extend_from_slice(&[0, 0, 0, 0]);
        let f = resized(f);
        assert_eq!(brokers_seen(&f), Some(vec![("h".to_owned(), 1)]));
        let out = rewrite_metadata(&f, &mut |_, _| Some(("w".to_owned(), 9)));
        let mut expected = f.clone();
        expected[21..25].copy_from_slice(&9u32.to_be_bytes());
        expected[20] = b'w';
        assert_eq!(out, Some(expected));
    }

    #[test]
    fn malformed_metadata_calls_map_for_nothing() {
        let f = metadata();
        let mut called = false;
        let mut fail = |f: &[u8]| {
            rewrite_metadata(f, &mut |_, _| {
                called = true;
                None
            })
        };
        // Trailing bytes, a negative count, a replica array past the end.
        let mut extra = f.clone();
        extra.push(0);
        assert_eq!(fail(&resized(extra)), None);
        let mut negative = f.clone();
        negative[12..16].copy_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(fail(&negative), None);
        let mut replicas = f.clone();
        let at = f.len() - 4;
        replicas[at..].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(fail(&replicas), None);
        assert!(!called);
    }

    #[test]
    fn truncated_frames_are_refused_at_every_length() {
        for f in [ok_open(), metadata()] {
            for len in 0..f.len() {
                let cut = &f[..len];
                // As cut, the size prefix says more; resized, the body ends early.
                let mut whole = cut.to_vec();
                if len >= 4 {
                    whole = resized(whole);
                }
                for g in [cut, &whole[..]] {
                    assert_eq!(open_advertised(g), None, "{len}");
                    assert_eq!(rewrite_open(g, "w", 1), None, "{len}");
                    assert_eq!(rewrite_metadata(g, &mut |_, _| None), None, "{len}");
                }
            }
        }
    }

    #[test]
    fn a_wrong_size_prefix_is_refused() {
        for f in [ok_open(), metadata()] {
            let size = size_of(&f) as u32;
            for wrong in [size - 1, size + 1, 3, 0, u32::MAX] {
                let mut g = f.clone();
                g[..4].copy_from_slice(&wrong.to_be_bytes());
                assert_eq!(open_advertised(&g), None);
                assert_eq!(rewrite_open(&g, "w", 1), None);
                assert_eq!(rewrite_metadata(&g, &mut |_, _| None), None);
            }
        }
    }

    #[test]
    fn huge_lengths_and_counts_are_refused() {
        // The first host's length, then the first property key's.
        let mut m = metadata();
        for len in [0x7fff_u16, 0x8000, 0xfffe] {
            m[18..20].copy_from_slice(&len.to_be_bytes());
            assert_eq!(rewrite_metadata(&m, &mut |_, _| None), None, "{len:#x}");
        }
        let mut o = ok_open();
        for len in [0x7fff_u16, 0x8000, 0xfffe] {
            o[18..20].copy_from_slice(&len.to_be_bytes());
            assert_eq!(open_advertised(&o), None, "{len:#x}");
        }
        let mut m = metadata();
        m[12..16].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(rewrite_metadata(&m, &mut |_, _| None), None);
        let mut o = ok_open();
        o[14..18].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(open_advertised(&o), None);
    }

    #[test]
    fn frames_past_the_bound_pass_unchanged() {
        let name = "s".repeat(255);
        let many: Vec<Stream<'_>> = (0..4200)
            .map(|_| Stream {
                name: &name,
                code: 1,
                leader: 0,
                replicas: &[0],
            })
            .collect();
        let f = metadata_response(1, &[(0, "h", 1)], &many);
        assert!(f.len() > MAX_REWRITTEN);
        assert_eq!(
            rewrite_metadata(&f, &mut |_, _| Some(("w".into(), 2))),
            None
        );
        // Just under it, a rewrite that would grow past it is refused too.
        let f = metadata_response(1, &[(0, "h", 1)], &many[..3900]);
        let room = MAX_REWRITTEN - f.len();
        assert!(room < 10_000, "{room}");
        let grow = |n| rewrite_metadata(&f, &mut |_, _| Some(("w".repeat(n), 2))).map(|o| o.len());
        assert_eq!(grow(1 + room), Some(MAX_REWRITTEN));
        assert_eq!(grow(2 + room), None);
    }
}
