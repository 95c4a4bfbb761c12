//! PROXY protocol headers (HAProxy's spec, v1 text and v2 binary): the ones
//! sent to a backend before anything else so that the broker records the
//! client's address and port instead of warren's ([`header`]), and the ones a
//! load balancer in front of warren sends ([`scan`] finds where one ends,
//! [`parse`] reads it with the `ppp` crate).
//!
//! Only the PROXY command with real TCP addresses is ever produced. RabbitMQ
//! 3.10.8 crashes the connection process on a v2 `LOCAL` header and on a v1
//! `PROXY UNKNOWN` header (see ../shared/RABBITMQ.md), so neither is offered;
//! both are accepted from a load balancer (its health checks send them).

use std::net::{IpAddr, SocketAddr};

use ppp::v1::Addresses as V1Addresses;
use ppp::v2::{Addresses as V2Addresses, Command, Protocol};

use crate::config::ProxyVersion;

/// The 12-byte signature that starts every v2 header.
pub(crate) const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\x00\r\nQUIT\n";

/// The header for a TCP connection from `src` (the client) to `dst` (the address
/// the client connected to, on warren).
pub(crate) fn header(version: ProxyVersion, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    match version {
        ProxyVersion::V1 => v1(src, dst),
        ProxyVersion::V2 => v2(src, dst),
    }
}

/// Both addresses as IPv6 when their families differ (IPv4 as v4-mapped), since
/// a header carries a single family.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = Vec::with_capacity(16 + 36);
    h.extend_from_slice(&V2_SIGNATURE);
    h.push(0x21); // version 2, command PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11); // AF_INET, STREAM
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(ip) => ip.octets(),
                IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
            };
            h.push(0x21); // AF_INET6, STREAM
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(s));
            h.extend_from_slice(&v6(d));
        }
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// What a v1 header starts with.
pub(crate) const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (the spec's 107 bytes).
pub(crate) const V1_MAX: usize = 107;
/// A v2 header's fixed part: signature, version and command, family and
/// transport, and the length of what follows.
pub(crate) const V2_FIXED: usize = 16;

/// Where the bytes at the start of a connection stand as a PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// A header so far, not yet complete: look at up to this many more bytes.
    /// (For v2 they all belong to the header; for v1 the line may end sooner,
    /// which [`scan`] finds once they are in.)
    Partial(usize),
    /// The header is the first this many bytes; what follows is the client's.
    Complete(usize),
    /// Not a PROXY header.
    NotProxy,
    /// A v1 header with no CRLF within [`V1_MAX`] bytes.
    TooLong,
}

/// Where `bytes`, the first ones of a connection, stand as a PROXY header:
/// the end of a v1 line (the first CR, then one byte that must be its LF), or
/// a v2 header's 16 bytes plus the length they give. Never looks past the end
/// of a header, so what follows it is left for the client's protocol.
pub(crate) fn scan(bytes: &[u8]) -> Scan {
    let Some(&first) = bytes.first() else {
        return Scan::Partial(V2_FIXED);
    };
    if first == V1_PREFIX[0] {
        let k = bytes.len().min(V1_PREFIX.len());
        if bytes[..k] != V1_PREFIX[..k] {
            return Scan::NotProxy;
        }
        return match bytes.iter().position(|&b| b == b'\r') {
            Some(cr) if cr + 2 > V1_MAX => Scan::TooLong,
            Some(cr) if bytes.len() >= cr + 2 => Scan::Complete(cr + 2),
            Some(_) => Scan::Partial(1),
            None if bytes.len() >= V1_MAX - 1 => Scan::TooLong,
            None => Scan::Partial(V1_MAX - bytes.len()),
        };
    }
    let k = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..k] != V2_SIGNATURE[..k] {
        return Scan::NotProxy;
    }
    if bytes.len() < V2_FIXED {
        return Scan::Partial(V2_FIXED - bytes.len());
    }
    let total = V2_FIXED + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if bytes.len() >= total {
        Scan::Complete(total)
    } else {
        Scan::Partial(total - bytes.len())
    }
}

/// Whether the first bytes of a connection begin a PROXY header: `None` while
/// too few have come to tell (none, or a prefix of a signature).
pub(crate) fn starts_header(bytes: &[u8]) -> Option<bool> {
    if bytes.is_empty() {
        return None;
    }
    for signature in [V1_PREFIX, &V2_SIGNATURE[..]] {
        let k = bytes.len().min(signature.len());
        if k > 0 && bytes[..k] == signature[..k] {
            return (k == signature.len()).then_some(true);
        }
    }
    Some(false)
}

/// What a received header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// A TCP connection from `src` (the client) to `dst` (the address the
    /// client connected to, on the load balancer).
    Proxied { src: SocketAddr, dst: SocketAddr },
    /// No client addresses to use: a v2 `LOCAL` (the load balancer's own health
    /// check), a v1 `UNKNOWN`, or a v2 `PROXY` for a family or transport other
    /// than TCP over IPv4/IPv6. The connection's own addresses stand, as the
    /// spec asks.
    Local,
}

/// A header that [`scan`] delimited but that is not a valid one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum HeaderError {
    #[error("invalid PROXY v1 header: {0}")]
    V1(String),
    #[error("invalid PROXY v2 header: {0}")]
    V2(String),
}

/// Reads `header`, exactly the bytes [`scan`] found complete, with `ppp`.
pub(crate) fn parse(header: &[u8]) -> Result<Received, HeaderError> {
    if header.first() == Some(&V1_PREFIX[0]) {
        let h = ppp::v1::Header::try_from(header).map_err(|e| HeaderError::V1(e.to_string()))?;
        if h.header.len() != header.len() {
            return Err(HeaderError::V1("bytes after the CRLF".into()));
        }
        return Ok(match h.addresses {
            V1Addresses::Tcp4(a) => Received::Proxied {
                src: SocketAddr::from((a.source_address, a.source_port)),
                dst: SocketAddr::from((a.destination_address, a.destination_port)),
            },
            V1Addresses::Tcp6(a) => Received::Proxied {
                src: SocketAddr::from((a.source_address, a.source_port)),
                dst: SocketAddr::from((a.destination_address, a.destination_port)),
            },
            V1Addresses::Unknown => Received::Local,
        });
    }
    let h = ppp::v2::Header::try_from(header).map_err(|e| HeaderError::V2(e.to_string()))?;
    if h.as_bytes().len() != header.len() {
        return Err(HeaderError::V2(
            "length field disagrees with the header".into(),
        ));
    }
    if h.command == Command::Local || h.protocol != Protocol::Stream {
        return Ok(Received::Local);
    }
    Ok(match h.addresses {
        V2Addresses::IPv4(a) => Received::Proxied {
            src: SocketAddr::from((a.source_address, a.source_port)),
            dst: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        V2Addresses::IPv6(a) => Received::Proxied {
            src: SocketAddr::from((a.source_address, a.source_port)),
            dst: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        V2Addresses::Unix(_) | V2Addresses::Unspecified => Received::Local,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn v1_tcp4() {
        let h = header(ProxyVersion::V1, a("10.1.2.3:4444"), a("127.0.0.1:5672"));
        assert_eq!(h, b"PROXY TCP4 10.1.2.3 127.0.0.1 4444 5672\r\n");
    }

    #[test]
    fn v1_tcp6() {
        let h = header(ProxyVersion::V1, a("[2001:db8::1]:4444"), a("[::1]:5672"));
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 4444 5672\r\n");
    }

    #[test]
    fn v1_mixed_families_become_v6() {
        let h = header(ProxyVersion::V1, a("10.1.2.3:1"), a("[::1]:2"));
        assert_eq!(h, b"PROXY TCP6 ::ffff:10.1.2.3 ::1 1 2\r\n");
    }

    #[test]
    fn v2_tcp4_layout() {
        let h = header(ProxyVersion::V2, a("10.1.2.3:4444"), a("127.0.0.1:5672"));
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(&h[14..16], &12u16.to_be_bytes());
        assert_eq!(&h[16..20], &[10, 1, 2, 3]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(&h[24..26], &4444u16.to_be_bytes());
        assert_eq!(&h[26..28], &5672u16.to_be_bytes());
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn v2_tcp6_layout() {
        let h = header(ProxyVersion::V2, a("[2001:db8::1]:1"), a("[::1]:2"));
        assert_eq!(h[13], 0x21);
        assert_eq!(&h[14..16], &36u16.to_be_bytes());
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(h[16], 0x20); // 2001:db8::1, first byte
        assert_eq!(h[31], 1); // its last byte
        assert_eq!(h[47], 1); // ::1, last byte
        assert_eq!(&h[48..50], &1u16.to_be_bytes());
        assert_eq!(&h[50..52], &2u16.to_be_bytes());
    }

    /// The header `bytes` starts with, as `scan` delimits it and `parse` reads it.
    fn received(bytes: &[u8]) -> (usize, Result<Received, HeaderError>) {
        match scan(bytes) {
            Scan::Complete(n) => (n, parse(&bytes[..n])),
            other => panic!("{other:?} for {bytes:?}"),
        }
    }

    fn v2_local() -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0, 0]);
        h
    }

    #[test]
    fn what_warren_sends_it_accepts_and_the_client_bytes_stay() {
        let (src, dst) = (a("203.0.113.7:40000"), a("198.51.100.1:5672"));
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            for (src, dst) in [(src, dst), (a("[2001:db8::7]:1"), a("[2001:db8::1]:2"))] {
                let mut bytes = header(version, src, dst);
                let len = bytes.len();
                bytes.extend_from_slice(b"AMQP\x00\x00\x09\x01");
                let (n, r) = received(&bytes);
                assert_eq!(
                    n, len,
                    "{version:?}: the AMQP bytes after it are not the header's"
                );
                assert_eq!(r, Ok(Received::Proxied { src, dst }), "{version:?}");
            }
        }
    }

    #[test]
    fn local_and_unknown_keep_the_connection_addresses() {
        assert_eq!(
            received(b"PROXY UNKNOWN\r\nAMQP"),
            (15, Ok(Received::Local))
        );
        let mut local = v2_local();
        local.extend_from_slice(b"AMQP");
        assert_eq!(received(&local), (16, Ok(Received::Local)));
        // LOCAL with addresses (and a TLV) still means: use the real ones.
        let mut h = header(ProxyVersion::V2, a("10.0.0.1:1"), a("10.0.0.2:2"));
        h[12] = 0x20;
        h[15] += 3;
        h.extend_from_slice(&[0x04, 0, 0]); // a NOOP TLV, empty
        assert_eq!(received(&h), (h.len(), Ok(Received::Local)));
        // UNIX sockets: not an address warren can pass on.
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[0u8; 216]);
        assert_eq!(received(&unix), (232, Ok(Received::Local)));
    }

    #[test]
    fn malformed_headers_are_errors() {
        for bad in [
            &b"PROXY TCP4 300.0.0.1 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 10.0.0.1 10.0.0.1 1\r\n",
            b"PROXY TCP5 10.0.0.1 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.1 1 2\rX",
            b"PROXY TCP4 10.0.0.1 10.0.0.1 01 2\r\n",
        ] {
            let (_, r) = received(bad);
            assert!(matches!(r, Err(HeaderError::V1(_))), "{bad:?}: {r:?}");
        }
        let good = header(ProxyVersion::V2, a("10.0.0.1:1"), a("10.0.0.2:2"));
        for (at, value) in [(12, 0x11), (12, 0x23), (13, 0x41), (15, 4)] {
            let mut bad = good.clone();
            bad[at] = value;
            bad.truncate(V2_FIXED + usize::from(bad[15]));
            let (_, r) = received(&bad);
            assert!(
                matches!(r, Err(HeaderError::V2(_))),
                "byte {at} = {value:#x}: {r:?}"
            );
        }
    }

    #[test]
    fn truncated_headers_ask_for_more_and_never_past_their_end() {
        let v1 = header(ProxyVersion::V1, a("10.0.0.1:1"), a("10.0.0.2:2"));
        let v2 = header(ProxyVersion::V2, a("10.0.0.1:1"), a("10.0.0.2:2"));
        for h in [&v1, &v2] {
            for cut in 0..h.len() {
                match scan(&h[..cut]) {
                    Scan::Partial(n) if h == &v2 => assert!(cut + n <= h.len(), "{cut} + {n}"),
                    Scan::Partial(_) => {}
                    other => panic!("{cut} bytes: {other:?}"),
                }
            }
        }
        assert_eq!(scan(b"PROXY TCP4 1.2.3.4\r"), Scan::Partial(1));
    }

    #[test]
    fn not_a_header_or_too_long() {
        assert_eq!(scan(b"AMQP\x00\x00\x09\x01"), Scan::NotProxy);
        assert_eq!(scan(b"PROXZ"), Scan::NotProxy);
        assert_eq!(scan(b"\x16\x03\x01"), Scan::NotProxy);
        assert_eq!(scan(b"\r\n\r\nX"), Scan::NotProxy);
        let long = [&b"PROXY "[..], &[b'1'; 100]].concat();
        assert_eq!(scan(&long), Scan::TooLong);
        let mut line = [&b"PROXY "[..], &[b' '; 99]].concat();
        line.extend_from_slice(b"\r\n");
        assert_eq!(line.len(), V1_MAX);
        assert_eq!(scan(&line), Scan::Complete(V1_MAX));
        line.insert(7, b' ');
        assert_eq!(scan(&line), Scan::TooLong);
    }

    #[test]
    fn the_start_of_a_header_is_told_apart() {
        assert_eq!(starts_header(b"PROXY TCP4"), Some(true));
        assert_eq!(starts_header(b"PROX"), None);
        assert_eq!(starts_header(b"POST /"), Some(false));
        assert_eq!(starts_header(b"AMQP"), Some(false));
        assert_eq!(starts_header(&V2_SIGNATURE), Some(true));
        assert_eq!(starts_header(&V2_SIGNATURE[..5]), None);
        assert_eq!(starts_header(b"\x16\x03\x01"), Some(false));
        assert_eq!(starts_header(b""), None);
    }
}
