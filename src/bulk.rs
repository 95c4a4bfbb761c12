//! The bulk path of one direction of a proxied connection.
//!
//! Small frames are read into a per-thread buffer, followed by the frame tracker
//! and written straight on (see `proxy`). When what was read leaves a long
//! payload ahead (a large body frame, or a stream that turned out not to be
//! AMQP), that payload is moved with splice(2) through a pooled pipe instead:
//! the kernel hands pages from one socket to the other and warren never copies
//! them. Only the payload is spliced, never its frame-end octet, so the next
//! frame header is read and checked as usual and the frame boundaries a drain
//! relies on stay exact.
//!
//! While a connection moves bulk frames, reads are kept small ([`BULK_READ`]) so
//! that little of the next body is copied before its splice begins.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::amqp::FrameTracker;
use crate::splice::{Pipe, SpliceIn};

/// A payload at least this long (beyond what a read brought) is spliced.
pub const SPLICE_MIN: u64 = 16 * 1024;
/// Read size right after a splice: room for a frame-end, the small frames that
/// sit between two bodies (method, content header) and the next frame header.
pub const BULK_READ: usize = 1024;

/// Splice state of one direction.
#[derive(Default)]
pub struct Bulk {
    /// Holds bytes on their way to the destination; `None` while nothing moves.
    pipe: Option<Pipe>,
    /// Payload bytes still to splice from the source (the tracker is advanced as
    /// they move). Unbounded for a stream that is not AMQP.
    left: u64,
    /// The last read started a splice: read little next time.
    recent: bool,
    /// The source ended; the pipe is still to be emptied.
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
    /// True while a splice is under way (the caller must not read or write
    /// itself until it ends).
    pub fn active(&self) -> bool {
        self.left > 0 || self.eof || self.pipe.as_ref().is_some_and(|p| !p.is_empty())
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
    /// pipe and arms the splice; returns how many trailing bytes of `read` did
    /// not fit (to be written once the pipe is flushed). `None`: no splice, the
    /// caller writes `read` itself.
    pub fn start(&mut self, tracker: &FrameTracker, read: &[u8]) -> io::Result<Option<usize>> {
        let left = tracker.payload_left();
        self.recent = false;
        if left < SPLICE_MIN {
            return Ok(None);
        }
        let Some(mut pipe) = Pipe::take() else {
            return Ok(None);
        };
        let mut written = 0;
        while written < read.len() {
            match pipe.write(&read[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.pipe = Some(pipe);
        self.left = left;
        self.recent = true;
        Ok(Some(read.len() - written))
    }

    /// Moves what it can without waiting: out of the pipe first (making room),
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
        if let Some(pipe) = self.pipe.as_mut().filter(|p| !p.is_empty()) {
            match dst.try_io(Interest::WRITABLE, || pipe.splice_out(dst.as_raw_fd())) {
                Ok(_) => moved = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => write = true,
                Err(e) => return Err(e),
            }
        }
        let empty = self.pipe.as_ref().is_none_or(Pipe::is_empty);
        if self.eof {
            if empty {
                self.eof = false;
                self.pipe = None;
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
            if self.pipe.is_none() {
                self.pipe = Pipe::take();
            }
            let Some(pipe) = self.pipe.as_mut() else {
                // No pipe to be had: the caller copies the rest of the payload.
                self.left = 0;
                self.recent = false;
                return Ok(Moved::Some);
            };
            let max = usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .min(pipe.room());
            if max > 0 {
                match src.try_io(Interest::READABLE, || pipe.splice_in(src.as_raw_fd(), max)) {
                    Ok(SpliceIn::Moved(n)) => {
                        self.left -= n as u64;
                        tracker.skip(n as u64);
                        counted.fetch_add(n as u64, Ordering::Relaxed);
                        moved = true;
                    }
                    Ok(SpliceIn::Eof) => {
                        self.eof = true;
                        self.left = 0;
                        moved = true;
                    }
                    // The pipe is not empty, so the splice out above tried (and
                    // either moved bytes or is waiting for the destination).
                    Ok(SpliceIn::Full) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => read = true,
                    Err(e) => return Err(e),
                }
            }
        }
        // An empty pipe goes back to the pool while nothing moves (an idle or a
        // slow connection holds no descriptors) and once the payload is done.
        if self.pipe.as_ref().is_some_and(Pipe::is_empty) && (!moved || self.left == 0) {
            self.pipe = None;
        }
        if moved || !(read || write) {
            return Ok(Moved::Some);
        }
        Ok(Moved::Wait { read, write })
    }

    /// Splices out whatever the pipe holds, waiting for the destination as needed.
    pub fn poll_flush(&mut self, dst: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(pipe) = self.pipe.as_mut().filter(|p| !p.is_empty()) {
            ready!(dst.poll_write_ready(cx))?;
            match dst.try_io(Interest::WRITABLE, || pipe.splice_out(dst.as_raw_fd())) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}
