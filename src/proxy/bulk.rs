//! The bulk path of one direction of a proxied connection.
//!
//! Small frames are read into a per-thread buffer, followed by the frame tracker
//! and written straight on (see `pump`). When what was read leaves a long
//! payload ahead (a large body frame, or a stream that turned out not to be
//! AMQP), the connection takes a 256 KiB [`Buffer`] from a pool and reads into
//! it as much as it takes, writing out as it goes. While nothing is closing,
//! reads go on past the payload's end (the frames between two bodies, the next
//! body) and the frame tracker follows every byte read, as on the frame path:
//! one read and one write per buffer-full instead of a short read and a write
//! of its own per frame. Once warren or a peer is closing
//! (`Direction::plain` no longer holds), reads stop at the end of the payload
//! under way (the tracker skips it by count), never taking its frame-end octet,
//! and the frame path takes over at the boundary: the frame boundaries a drain
//! relies on stay exact. An empty buffer goes back to the pool when a step
//! moved nothing, or when no payload is under way.
//!
//! When a connection comes back to the frame path right after a bulk payload,
//! its first read is small ([`BULK_READ`]) so that little of the next body is
//! copied twice (into the scratch buffer, then into the bulk buffer).

use std::io;
use std::task::{ready, Context, Poll};

use tokio::net::TcpStream;

use crate::proxy::amqp::FrameTracker;
use crate::proxy::buffer::{Buffer, ReadIn};
use crate::proxy::direction::Direction;

/// A payload at least this long (beyond what a read brought) takes the bulk path.
pub(crate) const BULK_MIN: u64 = 16 * 1024;
/// Read size right after a bulk payload: room for a frame-end, the small frames that
/// sit between two bodies (method, content header) and the next frame header.
pub(crate) const BULK_READ: usize = 1024;

/// Bulk state of one direction.
#[derive(Default)]
pub(crate) struct Bulk {
    /// Holds bytes on their way to the destination; `None` while nothing moves.
    buf: Option<Buffer>,
    /// Payload bytes still to read from the source (the tracker is advanced as
    /// they move). Unbounded for a stream that is not AMQP.
    left: u64,
    /// The last read started a bulk payload: read little next time.
    recent: bool,
    /// The source ended; the buffer is still to be emptied.
    eof: bool,
}

/// What one [`Bulk::step`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Moved {
    Some,
    /// The source ended and everything read from it has been passed on.
    Eof,
    /// Nothing could move: wait until the source is readable and/or the
    /// destination writable.
    Wait {
        read: bool,
        write: bool,
    },
}

impl Bulk {
    /// True while a bulk payload is under way or the buffer holds bytes (read
    /// on past a payload, or not yet taken by the destination): the caller must
    /// not read or write itself until it ends.
    pub(crate) fn active(&self) -> bool {
        self.left > 0 || self.eof || self.buf.as_ref().is_some_and(|b| !b.is_empty())
    }

    /// Reads on the frame path go back to full size (no bulk payload follows).
    pub(crate) fn read_full(&mut self) {
        self.recent = false;
    }

    /// How much the next read should take, `full` being the buffer's size.
    pub(crate) fn read_size(&self, full: usize) -> usize {
        if self.recent {
            BULK_READ.min(full)
        } else {
            full
        }
    }

    /// Called after a read that `tracker` has consumed, with the bytes `read`
    /// that are to be forwarded. If a long payload follows, puts `read` into a
    /// bulk buffer and arms the bulk path; returns how many trailing bytes of
    /// `read` did not fit (to be written once the buffer is flushed). `None`: no
    /// bulk path, the caller writes `read` itself.
    pub(crate) fn start(&mut self, tracker: &FrameTracker, read: &[u8]) -> Option<usize> {
        let left = tracker.payload_left();
        self.recent = false;
        if left < BULK_MIN {
            return None;
        }
        let mut buf = Buffer::take();
        let put = buf.put(read);
        self.buf = Some(buf);
        self.left = left;
        self.recent = true;
        Some(read.len() - put)
    }

    /// Moves what it can without waiting: out of the buffer first (making room),
    /// then from the source into it. Bytes taken from the source are followed
    /// and counted by `d`. While nothing is closing ([`Direction::plain`]) it
    /// reads on past the payload's end, as much as the buffer takes, and `d`
    /// follows those frames as the frame path would: one read and one write
    /// for a body and what lies between it and the next instead of a short read
    /// and a write of its own. While warren or a peer is closing, it reads only
    /// up to the payload's end and leaves the boundary to the frame path.
    pub(crate) fn step(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        d: &mut Direction,
    ) -> io::Result<Moved> {
        let mut moved = false;
        let mut write = false;
        if let Some(buf) = self.buf.as_mut().filter(|b| !b.is_empty()) {
            match buf.write_to(dst) {
                Ok(_) => moved = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => write = true,
                Err(e) => return Err(e),
            }
        }
        let empty = self.buf.as_ref().is_none_or(Buffer::is_empty);
        if self.eof {
            if empty {
                self.eof = false;
                self.buf = None;
                return Ok(Moved::Eof);
            }
            return Ok(if moved {
                Moved::Some
            } else {
                Moved::Wait { read: false, write }
            });
        }
        let mut read = false;
        let plain = d.plain();
        if self.left > 0 || (plain && self.buf.is_some()) {
            let buf = self.buf.get_or_insert_with(Buffer::take);
            let max = if plain {
                usize::MAX
            } else {
                usize::try_from(self.left).unwrap_or(usize::MAX)
            };
            match buf.read_from(src, max) {
                Ok(ReadIn::Moved(n)) if plain => {
                    d.on_read_ahead(buf.last(n));
                    self.left = d.tracker.payload_left();
                    moved = true;
                }
                Ok(ReadIn::Moved(n)) => {
                    self.left -= n as u64;
                    d.tracker.skip(n as u64);
                    d.count(n as u64);
                    moved = true;
                }
                Ok(ReadIn::Eof) => {
                    self.eof = true;
                    self.left = 0;
                    moved = true;
                }
                // The buffer is not empty, so the write above tried (and
                // either moved bytes or is waiting for the destination).
                Ok(ReadIn::Full) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => read = true,
                Err(e) => return Err(e),
            }
        }
        // An empty buffer goes back to the pool while nothing moves (an idle or
        // a slow connection holds none) and once the payload is done.
        if self.buf.as_ref().is_some_and(Buffer::is_empty) && (!moved || self.left == 0) {
            self.buf = None;
        }
        if moved || !(read || write) {
            return Ok(Moved::Some);
        }
        Ok(Moved::Wait { read, write })
    }

    /// Writes out whatever the buffer holds, waiting for the destination as needed.
    pub(crate) fn poll_flush(
        &mut self,
        dst: &TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while let Some(buf) = self.buf.as_mut().filter(|b| !b.is_empty()) {
            ready!(dst.poll_write_ready(cx))?;
            match buf.write_to(dst) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8-byte protocol header, then the start of a body frame of `size` bytes.
    fn tracker_before_body(size: u32) -> FrameTracker {
        let mut t = FrameTracker::client_to_server();
        let mut bytes = crate::proxy::amqp::PROTOCOL_HEADER.to_vec();
        bytes.extend_from_slice(&[3, 0, 1]);
        bytes.extend_from_slice(&size.to_be_bytes());
        bytes.extend_from_slice(&[0; 100]);
        assert_eq!(t.feed(&bytes, false), bytes.len());
        t
    }

    #[test]
    fn a_long_payload_starts_the_bulk_path_and_short_reads_follow_until_closing() {
        let t = tracker_before_body(1_000_000);
        let mut bulk = Bulk::default();
        assert_eq!(bulk.start(&t, b"ahead"), Some(0));
        assert!(bulk.active());
        assert_eq!(bulk.read_size(64 * 1024), BULK_READ);
        // Closing: no payload starts, and reads are full-size again.
        bulk.read_full();
        assert_eq!(bulk.read_size(64 * 1024), 64 * 1024);
        // A short payload does not start it.
        let mut idle = Bulk::default();
        assert_eq!(idle.start(&tracker_before_body(1000), b"x"), None);
        assert!(!idle.active());
    }
}
