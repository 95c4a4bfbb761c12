//! Kernel pipes for the spliced bulk path.
//!
//! splice(2) moves a long payload from the source socket into a pipe and from
//! the pipe to the destination socket: the bytes stay in the kernel (pages
//! handed over, not copied through warren's memory). Only payload bytes are
//! spliced, whose length the frame tracker knows; everything between two
//! payloads is read and followed as on the frame path, so frame boundaries
//! stay exact whatever the path.
//!
//! A pipe is taken when a payload starts and goes back to a per-thread pool
//! once empty (an idle connection holds none); a pipe that is dropped holding
//! bytes (a connection that failed) is closed instead. Every call is
//! non-blocking (`O_NONBLOCK` pipes, `SPLICE_F_NONBLOCK`), and a socket's
//! readiness is cleared only when the socket itself had nothing to give or
//! take (tokio's `try_io`), never because the pipe was full.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::pipe::{
    fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags,
};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Size asked for each pipe: several 128 KiB body frames (RabbitMQ's default
/// `frame_max`) per pair of system calls. Linux caps it at
/// `/proc/sys/fs/pipe-max-size` (1 MiB by default); a pipe that cannot grow
/// keeps the default 64 KiB.
pub(crate) const PIPE_SIZE: usize = 1 << 20;
/// Empty pipes kept per thread for reuse (2 descriptors each).
const POOL_MAX: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Fds>> = const { RefCell::new(Vec::new()) };
}
/// Set once a pipe could not be made; the one log line is written then.
static FAILED: AtomicBool = AtomicBool::new(false);

struct Fds {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

/// One pipe and the bytes it holds.
pub(crate) struct Pipe {
    /// `None` only while being dropped.
    fds: Option<Fds>,
    /// Bytes in the pipe, not yet spliced out: exact, counted both ways.
    held: usize,
}

/// Why a splice into the pipe moved nothing: the socket was drained (its
/// readiness is cleared), or the pipe could not take more though it holds
/// bytes (splice fills pipe slots with partial pages, so a pipe can be full
/// below its size): write out first.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum In {
    Moved(usize),
    Eof,
    SourceEmpty,
    PipeFull,
}

impl Pipe {
    /// An empty pipe from the pool, or a new one. `Err`: none can be made
    /// (out of descriptors, or pipes refused): the caller copies instead. The
    /// first failure is logged and each is counted.
    pub(crate) fn take() -> io::Result<Pipe> {
        let pooled = POOL.try_with(|p| p.borrow_mut().pop()).ok().flatten();
        let fds = match pooled {
            Some(fds) => fds,
            None => match Fds::new() {
                Ok(fds) => fds,
                Err(e) => {
                    let reason = if e.raw_os_error()
                        == Some(rustix::io::Errno::MFILE.raw_os_error())
                        || e.raw_os_error() == Some(rustix::io::Errno::NFILE.raw_os_error())
                    {
                        "descriptors"
                    } else {
                        "error"
                    };
                    if !FAILED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "no pipe for splice: long payloads are copied instead (logged once; warren_splice_fallbacks_total counts each)");
                    }
                    crate::telemetry::metrics::splice_fallback(reason);
                    return Err(e);
                }
            },
        };
        Ok(Pipe {
            fds: Some(fds),
            held: 0,
        })
    }

    /// The descriptors (`None` only inside `drop`).
    fn fds(&self) -> io::Result<&Fds> {
        self.fds
            .as_ref()
            .ok_or_else(|| io::Error::other("the pipe is closed"))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Copies as much of `bytes` as the pipe takes, behind what it holds.
    pub(crate) fn put(&mut self, mut bytes: &[u8]) -> io::Result<usize> {
        let mut put = 0;
        while !bytes.is_empty() {
            let fds = self.fds()?;
            match rustix::io::write(&fds.write, bytes) {
                Ok(n) => {
                    self.held += n;
                    put += n;
                    bytes = &bytes[n..];
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(put)
    }

    /// Up to `max` bytes from `src` into the pipe, without waiting.
    pub(crate) fn splice_from(&mut self, src: &TcpStream, max: usize) -> io::Result<In> {
        let fds = self.fds()?;
        let room = fds.capacity.saturating_sub(self.held);
        if room == 0 {
            return Ok(In::PipeFull);
        }
        let len = max.min(room);
        let held = self.held;
        let r = src.try_io(Interest::READABLE, || {
            match splice(src.as_fd(), None, &fds.write, None, len, flags()) {
                Ok(n) => Ok(Some(n)),
                // With bytes in the pipe, EAGAIN may be the pipe's: keep the
                // socket's readiness.
                Err(rustix::io::Errno::AGAIN) if held > 0 => Ok(None),
                Err(e) => Err(io::Error::from(e)),
            }
        });
        match r {
            Ok(Some(0)) => Ok(In::Eof),
            Ok(Some(n)) => {
                self.held += n;
                Ok(In::Moved(n))
            }
            Ok(None) => Ok(In::PipeFull),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(In::SourceEmpty),
            Err(e) => Err(e),
        }
    }

    /// Splices what the pipe holds to `dst` until it is empty or `dst` takes no
    /// more (`WouldBlock`, its readiness cleared). Returns the bytes moved.
    pub(crate) fn splice_to(&mut self, dst: &TcpStream) -> io::Result<usize> {
        let mut moved = 0;
        while self.held > 0 {
            let fds = self.fds()?;
            let held = self.held;
            let r = dst.try_io(Interest::WRITABLE, || {
                splice(&fds.read, None, dst.as_fd(), None, held, flags()).map_err(io::Error::from)
            });
            match r {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.held -= n;
                    moved += n;
                    crate::proxy::buffer::count_moved(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && moved > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(moved)
    }
}

fn flags() -> SpliceFlags {
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}

impl Fds {
    fn new() -> io::Result<Fds> {
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        let capacity = match fcntl_setpipe_size(&write, PIPE_SIZE) {
            Ok(n) => n,
            Err(_) => fcntl_getpipe_size(&write)?,
        };
        Ok(Fds {
            read,
            write,
            capacity,
        })
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // A pipe holding bytes is closed (they belonged to a failed connection).
        if let Some(fds) = self.fds.take().filter(|_| self.held == 0) {
            crate::proxy::buffer::give_back(&POOL, fds, POOL_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_util::pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes put in, then 16 MiB spliced from one socket to another, come out
    /// in order; the reader takes them slowly, so the destination pushes back
    /// (more than loopback's socket buffers hold); the empty pipe goes back to
    /// the pool.
    #[tokio::test]
    async fn bytes_put_and_spliced_come_out_in_order() {
        let (mut writer, src) = pair().await;
        let (dst, mut reader) = pair().await;
        const N: usize = 16 << 20;
        let data: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
        let mut expected = b"head".to_vec();
        expected.extend_from_slice(&data);
        let sending = tokio::spawn(async move {
            writer.write_all(&data).await.expect("write");
            writer
        });
        let receiving = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            for chunk in got.chunks_mut(1 << 20) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                reader.read_exact(chunk).await.expect("read");
            }
            assert!(got == expected, "bytes changed or out of order");
            reader
        });
        let mut pipe = Pipe::take().expect("a pipe");
        assert_eq!(pipe.put(b"head").expect("put"), 4);
        let mut left = N;
        let mut waits = (0, 0);
        while left > 0 || !pipe.is_empty() {
            if !pipe.is_empty() {
                match pipe.splice_to(&dst) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        waits.1 += 1;
                        dst.writable().await.expect("writable");
                    }
                    Err(e) => panic!("splice out: {e}"),
                }
            }
            if left > 0 {
                match pipe.splice_from(&src, left).expect("splice in") {
                    In::Moved(n) => left -= n,
                    In::SourceEmpty => {
                        waits.0 += 1;
                        if pipe.is_empty() {
                            src.readable().await.expect("readable");
                        }
                    }
                    In::PipeFull => {}
                    In::Eof => panic!("the source ended early"),
                }
            }
        }
        let _ = sending.await.expect("writer");
        let _ = receiving.await.expect("reader");
        assert!(waits.1 > 0, "the slow reader never pushed back: {waits:?}");
        drop(pipe);
        assert_eq!(
            POOL.with(|p| p.borrow().len()),
            1,
            "the empty pipe is pooled"
        );
        let again = Pipe::take().expect("a pipe");
        assert_eq!(POOL.with(|p| p.borrow().len()), 0, "taken from the pool");
        drop(again);
    }

    /// A pipe dropped with bytes in it is closed, not pooled; an empty one is.
    #[tokio::test]
    async fn a_pipe_holding_bytes_is_not_pooled() {
        let pooled = || POOL.with(|p| p.borrow().len());
        let base = pooled();
        drop(Pipe::take().expect("a pipe"));
        assert_eq!(pooled(), base + 1);
        let mut pipe = Pipe::take().expect("a pipe");
        assert_eq!(pooled(), base);
        assert_eq!(pipe.put(b"left behind").expect("put"), 11);
        drop(pipe);
        assert_eq!(pooled(), base);
    }
}
