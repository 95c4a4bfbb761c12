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
//!
//! With splicing on (`data_path.splice`), a payload moves through a
//! kernel pipe instead (`pipe`): exactly the payload's bytes are spliced, never
//! read on past its end (bytes in a pipe cannot be followed), and the frame
//! path reads what lies between two payloads. A connection that gets no pipe
//! (out of descriptors) copies through a buffer as above.

use std::io;
use std::task::{ready, Context, Poll};

use tokio::net::TcpStream;

use crate::proxy::amqp::FrameTracker;
use crate::proxy::buffer::{Buffer, ReadIn};
use crate::proxy::direction::Direction;
use crate::proxy::pipe::{In, Pipe};

/// A payload at least this long (beyond what a read brought) takes the bulk path.
pub(crate) const BULK_MIN: u64 = 16 * 1024;
/// Read size right after a bulk payload: room for a frame-end, the small frames that
/// sit between two bodies (method, content header) and the next frame header.
pub(crate) const BULK_READ: usize = 1024;

/// Bulk state of one direction.
#[derive(Default)]
pub(crate) struct Bulk {
    /// Payloads go through a pipe (`data_path.splice`).
    splice: bool,
    /// Holds bytes on their way to the destination; `None` while nothing moves.
    buf: Option<Buffer>,
    /// The same, spliced (at most one of `buf` and `pipe` is held); boxed, so
    /// that an idle connection's task grows by a pointer, not a pipe.
    pipe: Option<Box<Pipe>>,
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
    /// Idle; payloads will be spliced when `splice`.
    pub(crate) fn new(splice: bool) -> Bulk {
        Bulk {
            splice,
            ..Bulk::default()
        }
    }

    /// Drops what is under way (its buffer or pipe goes back, or is closed
    /// when it holds bytes); the choice of path stays.
    pub(crate) fn reset(&mut self) {
        *self = Bulk::new(self.splice);
    }

    /// True while a bulk payload is under way or the buffer holds bytes (read
    /// on past a payload, or not yet taken by the destination): the caller must
    /// not read or write itself until it ends.
    pub(crate) fn active(&self) -> bool {
        self.left > 0
            || self.eof
            || self.buf.as_ref().is_some_and(|b| !b.is_empty())
            || self.pipe.as_ref().is_some_and(|p| !p.is_empty())
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
        self.left = left;
        self.recent = true;
        if self.splice {
            if let Ok(mut pipe) = Pipe::take() {
                // A fresh pipe takes a scratch buffer's worth; if it cannot,
                // the buffer path takes over.
                if let Ok(put) = pipe.put(read) {
                    self.pipe = Some(Box::new(pipe));
                    return Some(read.len() - put);
                }
            }
        }
        let mut buf = Buffer::take();
        let put = buf.put(read);
        self.buf = Some(buf);
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
        // A payload resumed after an idle spell takes a pipe again.
        if self.splice && self.pipe.is_none() && self.buf.is_none() && self.left > 0 && !self.eof {
            self.pipe = Pipe::take().ok().map(Box::new);
        }
        if self.pipe.is_some() {
            return self.step_pipe(src, dst, d);
        }
        let mut moved = false;
        let mut write = false;
        if let Some(buf) = self.buf.as_mut().filter(|b| !b.is_empty()) {
            match buf.write_to(dst) {
                Ok(_) => moved = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => write = true,
                Err(e) => return Err(e),
            }
        }
        if self.eof {
            let empty = self.buf.as_ref().is_none_or(Buffer::is_empty);
            return Ok(self.after_eof(empty, moved, write));
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
                    self.took_payload(d, n);
                    moved = true;
                }
                Ok(ReadIn::Eof) => {
                    self.source_ended();
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
        Ok(outcome(moved, read, write))
    }

    /// [`Bulk::step`] through the pipe: splices out what it holds, then in up
    /// to the payload's end, never past it.
    fn step_pipe(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        d: &mut Direction,
    ) -> io::Result<Moved> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(Moved::Some);
        };
        let mut moved = false;
        let mut write = false;
        if !pipe.is_empty() {
            match pipe.splice_to(dst) {
                Ok(n) => moved = n > 0,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => write = true,
                Err(e) => return Err(e),
            }
        }
        if self.eof {
            let empty = pipe.is_empty();
            return Ok(self.after_eof(empty, moved, write));
        }
        let mut read = false;
        if self.left > 0 {
            let max = usize::try_from(self.left).unwrap_or(usize::MAX);
            let spliced = pipe.splice_from(src, max)?;
            match spliced {
                In::Moved(n) => {
                    self.took_payload(d, n);
                    moved = true;
                }
                In::Eof => {
                    self.source_ended();
                    moved = true;
                }
                In::SourceEmpty => read = true,
                // It holds bytes the destination has not taken: the write
                // above is waiting for it, or moved some and steps again.
                In::PipeFull => {}
            }
        }
        // An empty pipe goes back to the pool while nothing moves and once the
        // payload is done.
        if self.pipe.as_ref().is_some_and(|p| p.is_empty()) && (!moved || self.left == 0) {
            self.pipe = None;
        }
        Ok(outcome(moved, read, write))
    }

    /// `n` payload bytes passed on unread: the tracker skips them, the meters
    /// count them.
    fn took_payload(&mut self, d: &mut Direction, n: usize) {
        self.left -= n as u64;
        d.tracker.skip(n as u64);
        d.count(n as u64);
    }

    /// The source ended; what is held is still to go out.
    fn source_ended(&mut self) {
        self.eof = true;
        self.left = 0;
    }

    /// A step after the source ended: `Eof` once what was held (`empty`) is
    /// out, its buffer or pipe going back; else waiting for the destination.
    fn after_eof(&mut self, empty: bool, moved: bool, write: bool) -> Moved {
        if empty {
            self.eof = false;
            self.buf = None;
            self.pipe = None;
            return Moved::Eof;
        }
        if moved {
            Moved::Some
        } else {
            Moved::Wait { read: false, write }
        }
    }

    /// Writes out whatever the buffer holds, waiting for the destination as needed.
    pub(crate) fn poll_flush(
        &mut self,
        dst: &TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while let Some(pipe) = self.pipe.as_mut().filter(|p| !p.is_empty()) {
            ready!(dst.poll_write_ready(cx))?;
            match pipe.splice_to(dst) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
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

/// What a step that `moved` bytes, or waits to `read` / `write`, reports.
fn outcome(moved: bool, read: bool, write: bool) -> Moved {
    if moved || !(read || write) {
        Moved::Some
    } else {
        Moved::Wait { read, write }
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
