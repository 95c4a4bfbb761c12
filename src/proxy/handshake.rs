//! The arguments of the few connection-class methods warren reads: what a
//! client says about itself in `connection.start-ok` (user, client properties),
//! the heartbeat it agrees to in `tune-ok`, the vhost of `open`, and the reply
//! code of a `close` or the reason of a `blocked` from either side.
//!
//! These bytes come from the network, before any authentication: every reader
//! here is bounded by its input, allocates only the strings it returns (each cut
//! to [`MAX_TEXT`] characters), and never recurses. A field table is walked at
//! its top level only; nested tables and arrays are skipped by their length,
//! never descended. (amq-protocol's parser, which lapin uses, descends nested
//! tables by recursion: a 2 KiB start-ok of nested arrays overflows a 2 MiB
//! stack in a debug build, 15 KiB in a release build; a client must not be
//! able to crash warren that way.) The `handshake` fuzz target runs these
//! readers on arbitrary bytes.
//!
//! The password is never kept: of a PLAIN response (`\0user\0password`) only
//! the user is read; of an AMQPLAIN response only `LOGIN`.

/// Longest string kept from a client or a broker (characters); longer ones are
/// cut, with `…` at the end.
pub const MAX_TEXT: usize = 128;

/// What `connection.start-ok` says about the client. Strings are lossy UTF-8,
/// control characters replaced, cut to [`MAX_TEXT`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartOk {
    /// The SASL mechanism (`PLAIN`, `AMQPLAIN`, `EXTERNAL`, ...).
    pub mechanism: String,
    /// The user the client authenticates as (PLAIN's authcid, AMQPLAIN's
    /// `LOGIN`); `None` for other mechanisms.
    pub user: Option<String>,
    /// `client_properties`: `product`, `version`, `platform`, `connection_name`.
    pub product: Option<String>,
    pub version: Option<String>,
    pub platform: Option<String>,
    pub connection_name: Option<String>,
}

/// A `connection.close` from either side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub text: String,
}

/// Reads the arguments of `connection.start-ok`: client-properties (table),
/// mechanism (shortstr), response (longstr), locale (shortstr). `None` when
/// they are malformed before the response is reached.
pub fn start_ok(args: &[u8]) -> Option<StartOk> {
    let mut r = Reader(args);
    let props = r.long_bytes()?;
    let mechanism = r.short_bytes()?;
    let response = r.long_bytes()?;
    let mut s = StartOk {
        mechanism: text(mechanism),
        ..StartOk::default()
    };
    for (key, value) in entries(props) {
        let slot = match key {
            b"product" => &mut s.product,
            b"version" => &mut s.version,
            b"platform" => &mut s.platform,
            b"connection_name" => &mut s.connection_name,
            _ => continue,
        };
        if let Value::Str(v) = value {
            *slot = Some(text(v));
        }
    }
    s.user = match mechanism {
        b"PLAIN" => plain_user(response).map(text),
        b"AMQPLAIN" => entries(response).find_map(|(k, v)| match (k, v) {
            (b"LOGIN", Value::Str(v)) => Some(text(v)),
            _ => None,
        }),
        _ => None,
    };
    Some(s)
}

/// The authcid of a SASL PLAIN response, `[authzid] NUL authcid NUL passwd`;
/// nothing after the second NUL is looked at.
fn plain_user(response: &[u8]) -> Option<&[u8]> {
    let mut parts = response.splitn(3, |b| *b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    // Only a well-formed response names a user: the password part must follow.
    parts.next()?;
    Some(user)
}

/// The heartbeat (seconds; 0 for none) of `connection.tune-ok`:
/// channel-max (u16), frame-max (u32), heartbeat (u16).
pub fn tune_ok_heartbeat(args: &[u8]) -> Option<u16> {
    let mut r = Reader(args);
    r.take(6)?;
    r.u16()
}

/// The vhost of `connection.open`: virtual-host (shortstr), then fields warren
/// does not need.
pub fn open_vhost(args: &[u8]) -> Option<String> {
    Reader(args).short_bytes().map(text)
}

/// `connection.close`: reply-code (u16), reply-text (shortstr), class-id and
/// method-id (not needed).
pub fn close(args: &[u8]) -> Option<Close> {
    let mut r = Reader(args);
    let code = r.u16()?;
    let reply = r.short_bytes().map(text).unwrap_or_default();
    Some(Close { code, text: reply })
}

/// The reason (shortstr) of `connection.blocked`.
pub fn blocked_reason(args: &[u8]) -> Option<String> {
    Reader(args).short_bytes().map(text)
}

/// Bytes read front to back; every read checks what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn short_bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n as usize)
    }

    fn long_bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()?;
        self.take(usize::try_from(n).ok()?)
    }
}

/// A field-table value as warren sees it: a long string, or anything else
/// (skipped by its size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value<'a> {
    Str(&'a [u8]),
    Other,
}

/// The top-level entries of a field table's body (its length prefix already
/// read), in order, until the body ends or an entry is malformed (an unknown
/// type or a length past the end): what came before it is still returned.
/// Nested tables and arrays are skipped by their length, never descended.
fn entries(body: &[u8]) -> impl Iterator<Item = (&[u8], Value<'_>)> {
    let mut r = Reader(body);
    std::iter::from_fn(move || {
        let key = r.short_bytes()?;
        let value = match r.u8()? {
            b'S' => Value::Str(r.long_bytes()?),
            // Lengths as RabbitMQ reads them ('s' is a short int there).
            kind => {
                let size = match kind {
                    b'V' => 0,
                    b't' | b'b' | b'B' => 1,
                    b's' | b'u' | b'U' => 2,
                    b'I' | b'i' | b'f' => 4,
                    b'D' => 5,
                    b'l' | b'L' | b'd' | b'T' => 8,
                    b'A' | b'F' | b'x' => usize::try_from(r.u32()?).ok()?,
                    _ => return None,
                };
                r.take(size)?;
                Value::Other
            }
        };
        Some((key, value))
    })
}

/// Bytes from the network as text to keep: lossy UTF-8, control characters
/// replaced, at most [`MAX_TEXT`] characters (longer ones end in `…`).
pub fn text(bytes: &[u8]) -> String {
    // No more bytes than the longest text can use (4 per character).
    let bytes = &bytes[..bytes.len().min(MAX_TEXT * 4 + 4)];
    let s = String::from_utf8_lossy(bytes);
    let mut out: String = s
        .chars()
        .take(MAX_TEXT)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if s.chars().nth(MAX_TEXT).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A field-table body entry with a long-string value.
    pub(crate) fn str_entry(key: &str, value: &[u8]) -> Vec<u8> {
        let mut e = vec![key.len() as u8];
        e.extend_from_slice(key.as_bytes());
        e.push(b'S');
        e.extend_from_slice(&(value.len() as u32).to_be_bytes());
        e.extend_from_slice(value);
        e
    }

    fn long(bytes: &[u8]) -> Vec<u8> {
        let mut v = (bytes.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(bytes);
        v
    }

    fn short(bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    /// The arguments of a start-ok with these properties, mechanism and response.
    pub(crate) fn start_ok_args(props: &[u8], mechanism: &str, response: &[u8]) -> Vec<u8> {
        let mut a = long(props);
        a.extend(short(mechanism.as_bytes()));
        a.extend(long(response));
        a.extend(short(b"en_US"));
        a
    }

    #[test]
    fn reads_what_a_client_says_about_itself_and_not_its_password() {
        let mut props = str_entry("product", b"Pika Python Client Library");
        // A nested table (capabilities) and other types before the next string.
        props.extend_from_slice(b"\x0ccapabilitiesF\x00\x00\x00\x0a\x07blockedt\x01");
        props.extend_from_slice(b"\x01nl\x00\x00\x00\x00\x00\x00\x00\x07");
        props.extend(str_entry("version", b"1.4.4"));
        props.extend(str_entry("connection_name", b"orders-api"));
        let s = start_ok(&start_ok_args(&props, "PLAIN", b"\0alice\0s3cret")).expect("parses");
        assert_eq!(s.user.as_deref(), Some("alice"));
        assert_eq!(s.product.as_deref(), Some("Pika Python Client Library"));
        assert_eq!(s.version.as_deref(), Some("1.4.4"));
        assert_eq!(s.connection_name.as_deref(), Some("orders-api"));
        assert_eq!(s.platform, None);
        assert!(!format!("{s:?}").contains("s3cret"));

        let mut amqplain = str_entry("LOGIN", b"bob");
        amqplain.extend(str_entry("PASSWORD", b"hunter2"));
        let s = start_ok(&start_ok_args(&[], "AMQPLAIN", &amqplain)).expect("parses");
        assert_eq!(s.user.as_deref(), Some("bob"));
        assert!(!format!("{s:?}").contains("hunter2"));

        let s = start_ok(&start_ok_args(&[], "EXTERNAL", b"")).expect("parses");
        assert_eq!((s.mechanism.as_str(), s.user), ("EXTERNAL", None));
        // A PLAIN response without its password part names no user.
        let s = start_ok(&start_ok_args(&[], "PLAIN", b"\0alice")).expect("parses");
        assert_eq!(s.user, None);
    }

    #[test]
    fn a_malformed_table_keeps_what_came_before_it() {
        let mut props = str_entry("product", b"lapin");
        props.extend_from_slice(b"\x01k?junk");
        let s = start_ok(&start_ok_args(&props, "PLAIN", b"\0u\0p")).expect("parses");
        assert_eq!(s.product.as_deref(), Some("lapin"));
        assert_eq!(s.user.as_deref(), Some("u"));
        // Lengths past the end stop the walk, never panic.
        for bad in [
            &b"\x01kS\xff\xff\xff\xff"[..],
            b"\x01kF\x00\x00\x10\x00",
            b"\x05",
        ] {
            assert_eq!(entries(bad).count(), 0);
        }
        assert_eq!(start_ok(b"\x00\x00\x00\x05ab"), None);
    }

    #[test]
    fn deep_nesting_is_skipped_not_descended() {
        // 100,000 nested arrays: a recursive parser would overflow its stack.
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..100_000 {
            let mut v = vec![b'A'];
            v.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            v.extend_from_slice(&inner);
            inner = v;
        }
        let mut props = b"\x01a".to_vec();
        props.extend_from_slice(&inner);
        props.extend(str_entry("product", b"deep"));
        let s = start_ok(&start_ok_args(&props, "PLAIN", b"\0u\0p")).expect("parses");
        assert_eq!(s.product.as_deref(), Some("deep"));
    }

    #[test]
    fn texts_are_bounded_and_printable() {
        assert_eq!(text(b"ok"), "ok");
        assert_eq!(text(b"a\nb\x00"), "a\u{FFFD}b\u{FFFD}");
        let long = text(&[b'x'; 1000]);
        assert_eq!(long.chars().count(), MAX_TEXT);
        assert!(long.ends_with('…'));
        assert_eq!(text(&[b'y'; MAX_TEXT]).chars().count(), MAX_TEXT);
        assert!(!text(&[b'y'; MAX_TEXT]).ends_with('…'));
    }

    #[test]
    fn small_methods() {
        let tune_ok = [0x07, 0xff, 0x00, 0x02, 0x00, 0x00, 0x00, 0x3c];
        assert_eq!(tune_ok_heartbeat(&tune_ok), Some(60));
        assert_eq!(tune_ok_heartbeat(&tune_ok[..7]), None);
        assert_eq!(open_vhost(b"\x06orders\x00\x00").as_deref(), Some("orders"));
        let close_args = [&[0x01, 0x93][..], b"\x0eACCESS_REFUSED\x00\x0a\x00\x0b"].concat();
        assert_eq!(
            close(&close_args),
            Some(Close {
                code: 403,
                text: "ACCESS_REFUSED".into()
            })
        );
        assert_eq!(
            blocked_reason(b"\x0dlow on memory").as_deref(),
            Some("low on memory")
        );
    }
}
