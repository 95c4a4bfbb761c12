//! A minimal TCP proxy for measuring data-path candidates side by side with
//! warren and HAProxy (`BENCH_CANDIDATES` of scripts/bench, docs/performance.md): a
//! thread per direction, blocking calls, nothing else.
//!
//! ```text
//! minproxy LISTEN BACKEND copy SIZE           read/write through a SIZE-byte buffer
//! minproxy LISTEN BACKEND splice SIZE         splice(2) through a SIZE-byte pipe
//! minproxy LISTEN BACKEND splice-framed SIZE  the same, each AMQP body payload spliced
//!                                             on its own and the bytes between two
//!                                             payloads read and followed frame by
//!                                             frame, as warren must (a stream that
//!                                             is not AMQP is spliced whole)
//! ```
//!
//! Linux only; splice(2) and the pipe through rustix's safe wrappers.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{fcntl_setpipe_size, pipe, splice, SpliceFlags};

const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Bytes read between two body payloads (frame-end, method, content header,
/// next frame header), as warren's frame path reads after a bulk payload.
const SMALL_READ: usize = 1024;
/// A payload at least this long is spliced.
const SPLICE_MIN: u64 = 16 * 1024;

#[derive(Clone, Copy)]
enum Mode {
    Copy,
    Splice,
    Framed,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("minproxy: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`: nothing to run then.
    if args.iter().any(|a| a == "--bench") {
        return Ok(());
    }
    let [listen, backend, mode, size] = &args[..] else {
        return Err("usage: minproxy LISTEN BACKEND copy|splice|splice-framed SIZE".into());
    };
    let mode = match mode.as_str() {
        "copy" => Mode::Copy,
        "splice" => Mode::Splice,
        "splice-framed" => Mode::Framed,
        m => return Err(format!("unknown mode {m}")),
    };
    let size: usize = size.parse().map_err(|e| format!("size: {e}"))?;
    let l = TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    for c in l.incoming() {
        let Ok(c) = c else { continue };
        let Ok(b) = TcpStream::connect(backend) else {
            continue;
        };
        let (Ok(c2), Ok(b2)) = (c.try_clone(), b.try_clone()) else {
            continue;
        };
        for s in [&c, &b] {
            let _ = s.set_nodelay(true);
        }
        std::thread::spawn(move || forward(c, b, mode, size, true));
        std::thread::spawn(move || forward(b2, c2, mode, size, false));
    }
    Ok(())
}

fn forward(src: TcpStream, dst: TcpStream, mode: Mode, size: usize, upstream: bool) {
    let _ = match mode {
        Mode::Copy => copy(&src, &dst, size),
        Mode::Splice => Pipe::new(size).and_then(|mut p| p.splice_all(&src, &dst)),
        Mode::Framed => Pipe::new(size).and_then(|p| framed(&src, &dst, p, upstream)),
    };
    let _ = dst.shutdown(Shutdown::Write);
}

fn copy(mut src: &TcpStream, mut dst: &TcpStream, size: usize) -> io::Result<()> {
    let mut buf = vec![0u8; size];
    loop {
        match src.read(&mut buf)? {
            0 => return Ok(()),
            n => dst.write_all(&buf[..n])?,
        }
    }
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// Bytes in the pipe, not yet spliced out.
    held: usize,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) = pipe()?;
        let capacity = fcntl_setpipe_size(&write, size).unwrap_or(64 * 1024);
        Ok(Pipe {
            read,
            write,
            capacity,
            held: 0,
        })
    }

    /// Up to `max` bytes from `src` into the pipe; 0 at EOF.
    fn splice_in(&mut self, src: &TcpStream, max: usize) -> io::Result<usize> {
        let room = self.capacity - self.held;
        let n = splice(
            src.as_fd(),
            None,
            &self.write,
            None,
            max.min(room),
            SpliceFlags::MOVE,
        )?;
        self.held += n;
        Ok(n)
    }

    /// Copies `bytes` into the pipe, behind what it holds.
    fn put(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = rustix::io::write(&self.write, bytes)?;
            self.held += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    fn flush(&mut self, dst: &TcpStream) -> io::Result<()> {
        while self.held > 0 {
            let n = splice(
                &self.read,
                None,
                dst.as_fd(),
                None,
                self.held,
                SpliceFlags::MOVE,
            )?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.held -= n;
        }
        Ok(())
    }

    fn splice_all(&mut self, src: &TcpStream, dst: &TcpStream) -> io::Result<()> {
        loop {
            if self.splice_in(src, usize::MAX)? == 0 {
                return self.flush(dst);
            }
            self.flush(dst)?;
        }
    }
}

/// Where a direction stands in the AMQP frame stream.
#[derive(Default)]
struct Frames {
    /// Bytes of the current frame header seen (0..7).
    header: [u8; 7],
    have: usize,
    /// Payload bytes still to come, then the frame-end octet.
    payload: u64,
    end: bool,
}

impl Frames {
    /// Follows `bytes`; after it, `payload` is what the stream still owes of
    /// the frame under way.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload > 0 {
                let n = (self.payload.min(bytes.len() as u64)) as usize;
                self.payload -= n as u64;
                bytes = &bytes[n..];
            } else if self.end {
                self.end = false;
                bytes = &bytes[1..];
            } else {
                let n = (7 - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 7 {
                    self.have = 0;
                    let h = self.header;
                    self.payload = u64::from(u32::from_be_bytes([h[3], h[4], h[5], h[6]]));
                    self.end = true;
                }
            }
        }
    }
}

fn framed(src: &TcpStream, dst: &TcpStream, mut pipe: Pipe, upstream: bool) -> io::Result<()> {
    let mut f = Frames::default();
    let mut small = [0u8; SMALL_READ];
    let mut src_r = src;
    if upstream {
        let mut h = [0u8; 8];
        src_r.read_exact(&mut h)?;
        pipe.put(&h)?;
        pipe.flush(dst)?;
        if &h != PROTOCOL_HEADER {
            return pipe.splice_all(src, dst);
        }
    }
    loop {
        if f.payload >= SPLICE_MIN {
            // A body payload: spliced.
            let max = usize::try_from(f.payload).unwrap_or(usize::MAX);
            let n = pipe.splice_in(src, max)?;
            if n == 0 {
                return pipe.flush(dst);
            }
            f.payload -= n as u64;
            // Out at once, as warren does: the peer may wait for these bytes
            // before it sends the rest.
            pipe.flush(dst)?;
        } else {
            let n = src_r.read(&mut small)?;
            if n == 0 {
                return pipe.flush(dst);
            }
            f.feed(&small[..n]);
            pipe.put(&small[..n])?;
            pipe.flush(dst)?;
        }
    }
}
