//! PROXY protocol headers (HAProxy's spec, v1 text and v2 binary), sent to a
//! backend before anything else so that the broker records the client's address
//! and port instead of warren's.
//!
//! Only the PROXY command with real TCP addresses is ever produced. RabbitMQ
//! 3.10.8 crashes the connection process on a v2 `LOCAL` header and on a v1
//! `PROXY UNKNOWN` header (see ../shared/RABBITMQ.md), so neither is offered.

use std::net::{IpAddr, SocketAddr};

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
}
