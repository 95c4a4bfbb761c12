//! The bulk path of one direction of a proxied connection.
//!
//! Small frames are read into a per-thread buffer, followed by the frame tracker
//! and written straight on (see `pump`). When what was read leaves a long
//! payload ahead (a large body frame, or a stream that turned out not to be
//! AMQP), that payload is moved through a 256 KiB [`Buffer`] taken from a pool
//! instead, in reads as large as the payload and the buffer allow, and the
//! tracker skips it by count. Only the payload goes that way, never its
//! frame-end octet, so the next frame header is read and checked as usual and
//! the frame boundaries a drain relies on stay exact.
//!
//! While a connection moves bulk frames, reads on the frame path are kept small
//! ([`BULK_READ`]) so that little of the next body is copied twice (into the
//! scratch buffer, then into the bulk buffer).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use tokio::net::TcpStream;

use crate::amqp::FrameTracker;
use crate::buffer::{Buffer, ReadIn};

/// A payload at least this long (beyond what a read brought) takes the bulk path.
pub const SPLICE_MIN: u64 = 16 * 1024;
/// Read size right after a bulk payload: room for a frame-end, the small frames that
/// sit between two bodies (method, content header) and the next frame header.
pub const BULK_READ: usize = 1024;

/// Bulk state of one direction.
#[derive(Default)]
pub struct Bulk {
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
pub enum Moved {
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
    /// True while a bulk payload is under way (the caller must not read or
    /// write itself until it ends).
    pub fn active(&self) -> bool {
        self.left > 0 || self.eof || self.buf.as_ref().is_some_and(|b| !b.is_empty())
    }

    /// How much the next read should take, `full` being the buffer's size.
    pub fn read_size(&self, full: usize) -> usize {
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
    pub fn start(&mut self, tracker: &FrameTracker, read: &[u8]) -> Option<usize> {
        let left = tracker.payload_left();
        self.recent = false;
        if left < SPLICE_MIN {
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
    /// then from the source into it. Bytes taken from the source are added to
    /// `counted`.
    pub fn step(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        tracker: &mut FrameTracker,
        counted: &AtomicU64,
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
        if self.left > 0 {
            let buf = self.buf.get_or_insert_with(Buffer::take);
            let max = usize::try_from(self.left).unwrap_or(usize::MAX);
            match buf.read_from(src, max) {
                Ok(ReadIn::Moved(n)) => {
                    self.left -= n as u64;
                    tracker.skip(n as u64);
                    counted.fetch_add(n as u64, Ordering::Relaxed);
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
    pub fn poll_flush(&mut self, dst: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
