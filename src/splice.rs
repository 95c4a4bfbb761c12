//! Zero-copy forwarding with splice(2) through pipes taken from a pool.
//!
//! The only module allowed `unsafe`: four system calls (pipe2, fcntl, splice,
//! write) on descriptors this module owns or borrows for the length of one call.
//! A pipe is taken from a per-thread pool when a connection starts moving bulk
//! data and goes back as soon as it is empty, so idle connections hold no pipe
//! (no descriptors, no kernel buffers). When no pipe can be made (EMFILE),
//! [`Pipe::take`] returns `None` and the caller copies instead. Linux only.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Pipe size asked for: 16 pages of a default pipe are too few for loopback
/// rates (more system calls per byte); 1 MiB is Linux's default ceiling for
/// unprivileged processes (`fs.pipe-max-size`).
const PIPE_SIZE: usize = 1024 * 1024;
/// Empty pipes kept per thread.
const POOL_MAX: usize = 32;

/// Bytes spliced out since start (tests and diagnostics).
static SPLICED: AtomicU64 = AtomicU64::new(0);

/// Bytes warren has spliced from one socket to another since it started.
pub fn bytes_spliced() -> u64 {
    SPLICED.load(Ordering::Relaxed)
}

thread_local! {
    static POOL: RefCell<Vec<Fds>> = const { RefCell::new(Vec::new()) };
}

/// The two ends of a pipe and its capacity in bytes.
struct Fds {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

/// A pipe holding `len` bytes in flight from one socket to another. Dropped
/// empty it returns to the pool; dropped with bytes in it, it is closed (those
/// bytes belong to a connection that is going away).
pub struct Pipe {
    fds: Option<Fds>,
    len: usize,
}

impl Pipe {
    /// An empty pipe from the pool, or a new one; `None` if none can be made.
    pub fn take() -> Option<Pipe> {
        let fds = POOL
            .try_with(|p| p.borrow_mut().pop())
            .ok()
            .flatten()
            .or_else(|| Fds::new().ok())?;
        Some(Pipe {
            fds: Some(fds),
            len: 0,
        })
    }

    /// Bytes in the pipe, not yet spliced out.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left, in bytes (the kernel may still refuse earlier when its page
    /// slots run out; [`splice_in`](Self::splice_in) reports that as `Full`).
    pub fn room(&self) -> usize {
        self.fds
            .as_ref()
            .map_or(0, |f| f.capacity.saturating_sub(self.len))
    }

    /// Copies `data` into the pipe (ahead of what will be spliced after it);
    /// returns how much fitted.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(fds) = &self.fds else {
            return Ok(0);
        };
        // SAFETY: the descriptor is owned by `fds` and open for this call; the
        // pointer and length describe the live `data` slice, which write(2)
        // only reads.
        let n = unsafe {
            libc::write(
                fds.write.as_raw_fd(),
                data.as_ptr().cast::<libc::c_void>(),
                data.len(),
            )
        };
        let n = cvt(n)?;
        self.len += n;
        Ok(n)
    }

    /// Moves up to `max` bytes from socket `src` into the pipe.
    pub fn splice_in(&mut self, src: RawFd, max: usize) -> io::Result<SpliceIn> {
        let Some(fds) = &self.fds else {
            return Ok(SpliceIn::Full);
        };
        match splice(src, fds.write.as_raw_fd(), max) {
            Ok(0) => Ok(SpliceIn::Eof),
            Ok(n) => {
                self.len += n;
                Ok(SpliceIn::Moved(n))
            }
            // With bytes already in the pipe, EAGAIN may mean a full pipe rather
            // than an empty socket: the caller must not take it as "not readable".
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.len > 0 => Ok(SpliceIn::Full),
            Err(e) => Err(e),
        }
    }

    /// Moves what the pipe holds (as much as `dst` takes) into socket `dst`.
    pub fn splice_out(&mut self, dst: RawFd) -> io::Result<usize> {
        let Some(fds) = &self.fds else {
            return Ok(0);
        };
        let n = splice(fds.read.as_raw_fd(), dst, self.len)?;
        self.len -= n.min(self.len);
        SPLICED.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// What one [`Pipe::splice_in`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum SpliceIn {
    Moved(usize),
    /// The socket's peer closed its side.
    Eof,
    /// The pipe cannot take more until it is spliced out.
    Full,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if let Some(fds) = self.fds.take() {
            if self.len == 0 {
                let _ = POOL.try_with(|p| {
                    let mut p = p.borrow_mut();
                    if p.len() < POOL_MAX {
                        p.push(fds);
                    }
                });
            }
        }
    }
}

impl Fds {
    fn new() -> io::Result<Fds> {
        let mut ends = [0 as libc::c_int; 2];
        // SAFETY: `ends` is a valid, writable array of two ints, as pipe2 requires.
        cvt(
            unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } as isize,
        )?;
        // SAFETY: pipe2 succeeded, so both are new descriptors that nothing else owns.
        let (read, write) =
            unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int argument.
        let set = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        let capacity = if set > 0 {
            set as usize
        } else {
            // SAFETY: fcntl on a descriptor we own; F_GETPIPE_SZ takes no argument.
            let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
            if got > 0 {
                got as usize
            } else {
                64 * 1024
            }
        };
        Ok(Fds {
            read,
            write,
            capacity,
        })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed
    // from live sockets and pipes); null offsets are required for pipes and
    // sockets; no memory of this process is touched.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    cvt(n)
}

fn cvt(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn moves_bytes_between_sockets_in_order() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        let l2 = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l2.local_addr().expect("addr")).expect("connect");
        let (mut d, _) = l2.accept().expect("accept");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            d.read_to_end(&mut got).expect("read");
            got
        });
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        a.write_all(&payload).expect("write");
        drop(a);
        let mut pipe = Pipe::take().expect("a pipe");
        assert!(pipe.room() >= 64 * 1024);
        assert_eq!(pipe.write(b"head").expect("write"), 4);
        let mut moved = 0;
        loop {
            match pipe.splice_in(b.as_raw_fd(), pipe.room()) {
                Ok(SpliceIn::Moved(n)) => moved += n,
                Ok(SpliceIn::Eof) => break,
                Ok(SpliceIn::Full) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("splice in: {e}"),
            }
            while !pipe.is_empty() {
                pipe.splice_out(c.as_raw_fd()).expect("splice out");
            }
        }
        assert_eq!(moved, payload.len());
        drop(c);
        let got = reader.join().expect("reader");
        assert_eq!(&got[..4], b"head");
        assert!(got[4..] == payload[..]);
        // Empty, it goes back to the pool and comes out again.
        drop(pipe);
        assert!(POOL.with(|p| p.borrow().len()) >= 1);
        assert!(Pipe::take().is_some());
    }
}
