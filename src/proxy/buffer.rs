//! Buffers for the bulk path, taken from a per-thread pool.
//!
//! A buffer is taken when a connection starts moving a long payload and goes
//! back as soon as it is empty, so idle connections hold none. Payloads take
//! these when `data_path.splice` is off or no pipe could be made (`pipe`).

use std::cell::RefCell;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes a buffer holds: large enough that a bulk transfer moves in few system
/// calls (the size was measured: docs/performance.md).
pub const BUFFER_SIZE: usize = 256 * 1024;
/// Empty buffers kept per thread (at most 2 MiB).
const POOL_MAX: usize = 8;

/// Bytes written out of bulk buffers since start (tests and diagnostics).
static MOVED: AtomicU64 = AtomicU64::new(0);

/// Bytes warren has moved on the bulk path since it started, copied or spliced.
pub fn bytes_moved() -> u64 {
    MOVED.load(Ordering::Relaxed)
}

/// Counts `n` bytes moved on the bulk path.
pub(crate) fn count_moved(n: usize) {
    MOVED.fetch_add(n as u64, Ordering::Relaxed);
}

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// Bytes in flight from one socket to another: `data[start..end]`. Dropped
/// empty it returns to the pool.
pub struct Buffer {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

/// What one [`Buffer::read_from`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadIn {
    Moved(usize),
    /// The socket's peer closed its side.
    Eof,
    /// The buffer cannot take more until it is written out.
    Full,
}

impl Buffer {
    /// An empty buffer from the pool, or a new one.
    pub fn take() -> Buffer {
        let data = POOL
            .try_with(|p| p.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| vec![0; BUFFER_SIZE].into_boxed_slice());
        Buffer {
            data,
            start: 0,
            end: 0,
        }
    }

    /// Bytes held, not yet written out.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Room left to read into, in bytes.
    fn room(&self) -> usize {
        self.data.len() - self.end
    }

    /// Copies as much of `bytes` as fits (ahead of what will be read after it);
    /// returns how much.
    pub fn put(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.data[self.end..self.end + n].copy_from_slice(&bytes[..n]);
        self.end += n;
        n
    }

    /// Reads up to `max` bytes from `src` (`WouldBlock` when it has none).
    pub fn read_from(&mut self, src: &TcpStream, max: usize) -> io::Result<ReadIn> {
        if self.start >= self.data.len() / 2 {
            // Half has been written out since the buffer was last empty: move
            // the rest to the front (at most as many bytes as were written), so
            // a slow destination does not leave only a sliver to read into.
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let max = max.min(self.room());
        if max == 0 {
            return Ok(ReadIn::Full);
        }
        match try_read(src, &mut self.data[self.end..self.end + max])? {
            0 => Ok(ReadIn::Eof),
            n => {
                self.end += n;
                Ok(ReadIn::Moved(n))
            }
        }
    }

    /// The last `n` bytes put or read in.
    pub fn last(&self, n: usize) -> &[u8] {
        &self.data[self.end - n.min(self.len())..self.end]
    }

    /// Writes what the buffer holds (as much as `dst` takes) to `dst`.
    pub fn write_to(&mut self, dst: &TcpStream) -> io::Result<usize> {
        let n = dst.try_write(&self.data[self.start..self.end])?;
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        count_moved(n);
        Ok(n)
    }
}

/// `TcpStream::try_read`, except that a read shorter than `buf` also clears
/// the socket's read readiness, as tokio's own `poll_read` does: the next
/// `poll_read_ready` then waits for the kernel to say more came instead of
/// costing a read that finds nothing. On Linux a short TCP read means the
/// receive queue was empty, except at an urgent (`MSG_OOB`) mark, where
/// tokio's `poll_read` is wrong the same way: that direction waits for the
/// peer's next bytes. Nothing is cleared if any event for the socket came in
/// after the readiness was looked at, just before the read (tokio's readiness
/// ticks): at worst one read too many, never one too few. A peer's close is
/// never cleared.
pub(crate) fn try_read(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut short = None;
    let read = src.try_io(Interest::READABLE, || {
        let n = (&*SockRef::from(src)).read(buf)?;
        if n > 0 && n < buf.len() {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => read,
    }
}

/// Puts `item` into a per-thread pool unless it holds `max` already (or the
/// thread is ending).
pub(crate) fn give_back<T>(
    pool: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    item: T,
    max: usize,
) {
    let _ = pool.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < max {
            p.push(item);
        }
    });
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // With bytes in it, it belongs to a connection that is going away.
        if self.is_empty() {
            give_back(&POOL, std::mem::take(&mut self.data), POOL_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_util::pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn moves_bytes_between_sockets_in_order() {
        relay(false).await;
    }

    /// A destination that takes a little at a time: partial writes, and the
    /// rest moved to the front of the buffer before reading on.
    #[tokio::test]
    async fn moves_bytes_in_order_to_a_slow_destination() {
        relay(true).await;
    }

    async fn relay(slow: bool) {
        let (mut a, b) = pair().await;
        let (c, mut d) = pair().await;
        if slow {
            let sock = socket2::SockRef::from(&c);
            sock.set_send_buffer_size(32 * 1024).expect("sndbuf");
            socket2::SockRef::from(&d)
                .set_recv_buffer_size(32 * 1024)
                .expect("rcvbuf");
        }
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            d.read_to_end(&mut got).await.expect("read");
            got
        });
        let payload: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let payload = payload.clone();
            tokio::spawn(async move { a.write_all(&payload).await.expect("write") })
        };
        let before = bytes_moved();
        let mut buf = Buffer::take();
        assert_eq!(buf.put(b"head"), 4);
        let mut read = 0;
        let mut eof = false;
        // As the bulk path does: write what the destination takes, then read
        // what fits, and wait only when neither moved.
        while !(eof && buf.is_empty()) {
            let mut moved = false;
            if !buf.is_empty() {
                match buf.write_to(&c) {
                    Ok(_) => moved = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
            if !eof {
                match buf.read_from(&b, usize::MAX) {
                    Ok(ReadIn::Moved(n)) => {
                        read += n;
                        moved = true;
                    }
                    // Progress too: with the buffer empty, nothing is left to wait for.
                    Ok(ReadIn::Eof) => {
                        eof = true;
                        moved = true;
                    }
                    Ok(ReadIn::Full) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("read: {e}"),
                }
            }
            if !moved {
                tokio::select! {
                    r = c.writable(), if !buf.is_empty() => r.expect("writable"),
                    r = b.readable(), if !eof && buf.room() > 0 => r.expect("readable"),
                }
            }
        }
        writer.await.expect("writer");
        assert_eq!(read, payload.len());
        assert!(bytes_moved() - before >= payload.len() as u64 + 4);
        drop(c);
        let got = reader.await.expect("reader");
        assert_eq!(&got[..4], b"head");
        assert!(got[4..] == payload[..]);
    }

    /// A short read leaves the socket not ready until more comes (no read that
    /// finds nothing), a full one leaves it ready; more data and the peer's
    /// close still wake the reader.
    #[tokio::test]
    async fn a_short_read_waits_for_more_and_more_still_wakes() {
        use futures_util::FutureExt;
        use std::time::Duration;
        let (mut a, b) = pair().await;
        let wait = Duration::from_secs(5);
        let mut buf = [0u8; 64];
        a.write_all(b"hello").await.expect("write");
        b.readable().await.expect("readable");
        assert_eq!(try_read(&b, &mut buf).expect("read"), 5);
        assert!(
            b.readable().now_or_never().is_none(),
            "still ready after a short read"
        );

        a.write_all(&[1; 64]).await.expect("write");
        tokio::time::timeout(wait, b.readable())
            .await
            .expect("more data woke no one")
            .expect("readable");
        assert_eq!(try_read(&b, &mut buf).expect("read"), 64);
        assert!(
            b.readable().now_or_never().is_some(),
            "a full read must read again"
        );
        let again = try_read(&b, &mut buf).expect_err("nothing left");
        assert_eq!(again.kind(), io::ErrorKind::WouldBlock);

        // The close comes after a short read, and again with the data.
        a.write_all(b"bye").await.expect("write");
        b.readable().await.expect("readable");
        assert_eq!(try_read(&b, &mut buf).expect("read"), 3);
        drop(a);
        tokio::time::timeout(wait, b.readable())
            .await
            .expect("the close woke no one")
            .expect("readable");
        assert_eq!(try_read(&b, &mut buf).expect("read"), 0);

        let (mut a, b) = pair().await;
        a.write_all(b"last words").await.expect("write");
        a.shutdown().await.expect("shutdown");
        tokio::time::timeout(wait, b.readable())
            .await
            .expect("data and close woke no one")
            .expect("readable");
        assert_eq!(try_read(&b, &mut buf).expect("read"), 10);
        tokio::time::timeout(wait, b.readable())
            .await
            .expect("a close that came with the data was lost")
            .expect("readable");
        assert_eq!(try_read(&b, &mut buf).expect("read"), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_buffer_says_so_and_only_empty_ones_are_pooled() {
        let (_a, b) = pair().await;
        let mut buf = Buffer::take();
        assert_eq!(buf.put(&vec![7; BUFFER_SIZE + 10]), BUFFER_SIZE);
        assert_eq!(buf.read_from(&b, 100).expect("read"), ReadIn::Full);
        let pooled = POOL.with(|p| p.borrow().len());
        drop(buf);
        assert_eq!(
            POOL.with(|p| p.borrow().len()),
            pooled,
            "a full one went back"
        );
        drop(Buffer::take());
        assert_eq!(POOL.with(|p| p.borrow().len()), pooled.max(1));
    }
}
