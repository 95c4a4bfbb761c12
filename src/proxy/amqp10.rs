//! Just enough AMQP 1.0 to close a connection the 1.0 way.
//!
//! RabbitMQ serves AMQP 1.0 on its AMQP port beside 0-9-1 (natively from 4.0,
//! through the `rabbitmq_amqp1_0` plugin on 3.x). A 1.0 client opens with a
//! protocol header of its own (`AMQP 3 1 0 0` for the SASL layer, `AMQP 0 1 0 0`
//! after it or without it, `AMQP 2 1 0 0` for TLS negotiated in the stream);
//! its frames are `size` (u32, the whole frame), `doff` (data offset in 4-byte
//! words), `type` (0 AMQP, 1 SASL) and `channel`, then the extended header and
//! the body. The frame tracker (`amqp::FrameTracker`) follows them; this file
//! holds the constants, the two `close` frames warren writes, and a bounded
//! reader for the first fields of a client's `open` (container-id, hostname).
//!
//! Performatives are described lists: `0x00`, a descriptor (`0x53 code`, a
//! small ulong, as every client and RabbitMQ write it, or `0x80` and 8 bytes),
//! then a list. warren writes the two it sends by hand; it reads only
//! descriptors, and the `open` fields above.

/// `AMQP 3 1 0 0`: the SASL layer comes first.
pub const HEADER_SASL: &[u8; 8] = b"AMQP\x03\x01\x00\x00";
/// `AMQP 0 1 0 0`: AMQP frames (after SASL, or without it).
pub const HEADER_AMQP: &[u8; 8] = b"AMQP\x00\x01\x00\x00";
/// `AMQP 2 1 0 0`: TLS negotiated inside the stream.
pub const HEADER_TLS: &[u8; 8] = b"AMQP\x02\x01\x00\x00";

/// Protocol ids of the header's fifth byte.
pub const PROTO_AMQP: u8 = 0;
pub const PROTO_TLS: u8 = 2;
pub const PROTO_SASL: u8 = 3;

/// Frame types.
pub const FRAME_AMQP: u8 = 0;
pub const FRAME_SASL: u8 = 1;

/// Descriptor codes of the performatives warren recognises.
pub const OPEN: u64 = 0x10;
pub const CLOSE: u64 = 0x18;
/// Descriptor code of the `error` type.
const ERROR: u64 = 0x1d;

/// The error condition of an operator close.
pub const CONNECTION_FORCED: &str = "amqp:connection:forced";

/// The method id under which the frame tracker keeps the list of a client's
/// `open` (beside the 0-9-1 connection method ids, all below 64).
pub const KEPT_OPEN: u16 = 0x8000 | OPEN as u16;

/// Longest description warren writes into its `close` (bytes, cut at a
/// character boundary): the frame stays within one list8.
const MAX_DESCRIPTION: usize = 200;

/// A `close` with no error: how warren closes the broker's side (a clean close,
/// as 0-9-1's 200).
pub fn close() -> Vec<u8> {
    frame(&[0x00, 0x53, CLOSE as u8, 0x45])
}

/// A `close` whose error is `amqp:connection:forced` with `description`: how
/// warren closes a 1.0 client (as 0-9-1's 320 CONNECTION_FORCED).
pub fn close_forced(description: &str) -> Vec<u8> {
    let mut end = description.len().min(MAX_DESCRIPTION);
    while !description.is_char_boundary(end) {
        end -= 1;
    }
    let text = &description.as_bytes()[..end];
    let cond = CONNECTION_FORCED.as_bytes();
    // error: list8 of [condition: sym8, description: str8]
    let error_fields = 2 + cond.len() + 2 + text.len();
    let error_len = 3 + 2 + 1 + error_fields;
    let mut body = Vec::with_capacity(3 + 3 + error_len);
    body.extend_from_slice(&[0x00, 0x53, CLOSE as u8]);
    // close: list8 of [error]
    body.extend_from_slice(&[0xc0, (1 + error_len) as u8, 1]);
    body.extend_from_slice(&[0x00, 0x53, ERROR as u8]);
    body.extend_from_slice(&[0xc0, (1 + error_fields) as u8, 2]);
    body.extend_from_slice(&[0xa3, cond.len() as u8]);
    body.extend_from_slice(cond);
    body.extend_from_slice(&[0xa1, text.len() as u8]);
    body.extend_from_slice(text);
    frame(&body)
}

/// An AMQP frame on channel 0, no extended header, with this body.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(8 + body.len() as u32).to_be_bytes());
    f.extend_from_slice(&[2, FRAME_AMQP, 0, 0]);
    f.extend_from_slice(body);
    f
}

/// What a client's `open` says about it: the first two fields of its list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Open {
    pub container_id: Option<String>,
    pub hostname: Option<String>,
}

/// Reads container-id and hostname from the list of an `open` (the bytes after
/// its descriptor), as far as they are there and strings. Bounded by its
/// input; never recurses.
pub fn open_fields(list: &[u8]) -> Open {
    let mut open = Open::default();
    let Some((&code, rest)) = list.split_first() else {
        return open;
    };
    // list0, list8 (size, count: u8), list32 (size, count: u32).
    let (count, mut rest) = match code {
        0x45 => return open,
        0xc0 => match rest {
            [_, count, rest @ ..] => (u32::from(*count), rest),
            _ => return open,
        },
        0xd0 => match rest {
            [_, _, _, _, c0, c1, c2, c3, rest @ ..] => {
                (u32::from_be_bytes([*c0, *c1, *c2, *c3]), rest)
            }
            _ => return open,
        },
        _ => return open,
    };
    for slot in [&mut open.container_id, &mut open.hostname]
        .into_iter()
        .take(count.min(2) as usize)
    {
        let Some((value, after)) = string(rest) else {
            break;
        };
        *slot = value;
        rest = after;
    }
    open
}

/// A string (`str8`, `str32`) or null at the start of `data`: its text (cut
/// as [`crate::proxy::handshake::text`] cuts) and what follows it. `None` for
/// anything else.
fn string(data: &[u8]) -> Option<(Option<String>, &[u8])> {
    let (&code, rest) = data.split_first()?;
    let (len, rest) = match code {
        0x40 => return Some((None, rest)),
        0xa1 => {
            let (&len, rest) = rest.split_first()?;
            (usize::from(len), rest)
        }
        0xb1 => {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
            (usize::try_from(len).ok()?, &rest[4..])
        }
        _ => return None,
    };
    let value = rest.get(..len)?;
    Some((Some(crate::proxy::handshake::text(value)), &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forced_close_is_a_described_list_with_the_error() {
        let f = close_forced("warren: draining node n1, reconnect");
        let size = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
        assert_eq!(size, f.len());
        assert_eq!(&f[4..8], &[2, 0, 0, 0]);
        assert_eq!(&f[8..11], &[0x00, 0x53, 0x18]);
        // list8 whose size covers the rest of the frame, one field.
        assert_eq!((f[11], f[12] as usize, f[13]), (0xc0, f.len() - 13, 1));
        assert_eq!(&f[14..17], &[0x00, 0x53, 0x1d]);
        assert_eq!((f[17], f[18] as usize, f[19]), (0xc0, f.len() - 19, 2));
        assert_eq!(f[20], 0xa3);
        let cond_end = 22 + f[21] as usize;
        assert_eq!(&f[22..cond_end], b"amqp:connection:forced");
        assert_eq!(f[cond_end], 0xa1);
        assert_eq!(&f[cond_end + 2..], b"warren: draining node n1, reconnect");
        // A long description is cut, within one list8, at a character boundary.
        let long = "é".repeat(300);
        let f = close_forced(&long);
        assert!(f.len() < 8 + 255);
        assert!(std::str::from_utf8(&f[f.len() - 200..]).is_ok());
        assert_eq!(close(), [0, 0, 0, 12, 2, 0, 0, 0, 0x00, 0x53, 0x18, 0x45]);
    }

    #[test]
    fn open_fields_read_as_far_as_there_are_strings() {
        let mut list = vec![0xc0, 0, 3, 0xa1, 3];
        list.extend_from_slice(b"app");
        list.extend_from_slice(&[0xa1, 8]);
        list.extend_from_slice(b"vhost:/x");
        list.extend_from_slice(&[0x70, 0, 1, 0, 0]);
        assert_eq!(
            open_fields(&list),
            Open {
                container_id: Some("app".into()),
                hostname: Some("vhost:/x".into()),
            }
        );
        let mut list32 = vec![0xd0, 0, 0, 0, 0, 0, 0, 0, 2, 0xb1, 0, 0, 0, 2];
        list32.extend_from_slice(b"id");
        list32.push(0x40);
        assert_eq!(
            open_fields(&list32),
            Open {
                container_id: Some("id".into()),
                hostname: None,
            }
        );
        for bad in [
            &[][..],
            &[0x45],
            &[0xc0],
            &[0xc0, 9, 2, 0xa1, 200, b'x'],
            &[0xd0, 0, 0],
            &[0xc0, 5, 1, 0x71, 0, 0, 0, 1],
            &[0xc0, 5, 1, 0xb1, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert_eq!(open_fields(bad), Open::default(), "{bad:?}");
        }
    }
}
