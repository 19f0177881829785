//! One direction of a connection: bytes from one socket to the other, in a process of its own.
//! Runs in a connection process after fork: raw syscalls through `sys`, a stack buffer, no heap.
//!
//! The data moves with `splice(2)` through a pipe, so it never enters user space; where the kernel
//! refuses splice for these descriptors (`EINVAL`), a small stack buffer and read/write take over.
//! The pipe is made only when the first byte is ready, so an idle connection costs no pipe.
//!
//! A pump never decides alone how a connection ends; it reports [`End`] and the caller (see
//! `directions`) passes a FIN on as a FIN and an error as a reset.

use crate::sys::{self, SysResult};
use nix::errno::Errno;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// Capacity asked for each pump's pipe: how much one pair of splice calls can move. A larger pipe
/// costs the kernel more per active direction and did not move a single stream faster (bench/run.sh;
/// see docs/benchmarks.md).
const PIPE_SIZE: libc::c_int = 256 << 10;
/// Fallback copy buffer, on the stack: pumps keep no heap.
const COPY_BUF: usize = 16 * 1024;

/// How a pump's direction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The source sent a FIN and every byte before it was delivered.
    Eof,
    /// Reading the source failed (a reset, usually).
    ReadFailed(Errno),
    /// Writing the destination failed (the far side reset or closed).
    WriteFailed(Errno),
    /// The other pump asked this one to stop (it saw an abort).
    Stopped,
}

/// Copies `src` to `dst` until EOF, an error, or `stop()` turns true when a blocking call returns
/// early (`EINTR`, or `EAGAIN` from a socket timeout). Adds each delivered chunk to `moved` and
/// stamps `last` with the time of the last delivery. With `pace` > 0, keeps to that many bytes a
/// second by itself (see [`Pace`]).
pub(super) fn run(
    src: RawFd,
    dst: RawFd,
    moved: &AtomicU64,
    last: &AtomicU64,
    pace: u64,
    stop: &dyn Fn() -> bool,
) -> End {
    let meter = Meter {
        moved,
        last,
        pace: (pace > 0).then(|| Pace::new(pace, sys::monotonic_ms())),
    };
    // Wait for the first byte (or EOF) before paying for a pipe.
    loop {
        match sys::peek(src) {
            Ok(0) => return if stop() { End::Stopped } else { End::Eof },
            Ok(_) => break,
            Err(Errno::EINTR | Errno::EAGAIN) if stop() => return End::Stopped,
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(e) => return End::ReadFailed(e),
        }
    }
    match sys::pipe(PIPE_SIZE) {
        Ok((r, w)) => {
            let end = splice_loop(src, dst, r, w, &meter, stop);
            sys::close(r);
            sys::close(w);
            match end {
                Some(end) => end,
                None => copy_loop(src, dst, &meter, stop),
            }
        }
        // Out of descriptors for a pipe: copying through the stack still works.
        Err(_) => copy_loop(src, dst, &meter, stop),
    }
}

/// Returns `None` when the kernel refuses to splice these descriptors before any byte moved.
fn splice_loop(
    src: RawFd,
    dst: RawFd,
    pr: RawFd,
    pw: RawFd,
    meter: &Meter<'_>,
    stop: &dyn Fn() -> bool,
) -> Option<End> {
    let mut first = true;
    loop {
        match sys::splice(src, pw, PIPE_SIZE as usize, libc::SPLICE_F_MOVE) {
            Ok(0) => return Some(if stop() { End::Stopped } else { End::Eof }),
            Ok(n) => {
                first = false;
                if let Err(end) = drain(pr, dst, n, meter, stop) {
                    return Some(end);
                }
            }
            Err(Errno::EINVAL) if first => return None,
            Err(Errno::EINTR | Errno::EAGAIN) => {
                if stop() {
                    return Some(End::Stopped);
                }
            }
            Err(e) => return Some(End::ReadFailed(e)),
        }
    }
}

/// Moves exactly `len` bytes from the pipe to `dst`.
fn drain(pr: RawFd, dst: RawFd, len: usize, meter: &Meter<'_>, stop: &dyn Fn() -> bool) -> Result<(), End> {
    deliver(len, meter, stop, |left| sys::splice(pr, dst, left, libc::SPLICE_F_MOVE))
}

/// Delivers `len` bytes with `send` (given how many are left, it returns how many it moved),
/// through partial writes and interruptions.
fn deliver(
    mut len: usize,
    meter: &Meter<'_>,
    stop: &dyn Fn() -> bool,
    mut send: impl FnMut(usize) -> SysResult<usize>,
) -> Result<(), End> {
    while len > 0 {
        match send(len) {
            Ok(n) => {
                len -= n;
                meter.add(n);
            }
            Err(Errno::EINTR | Errno::EAGAIN) => {
                if stop() {
                    return Err(End::Stopped);
                }
            }
            Err(e) => return Err(End::WriteFailed(e)),
        }
    }
    Ok(())
}

// Cold and out of line: its 16 KiB buffer must not enlarge (and, through stack probes, dirty) the
// frame of every pump, only of the rare one whose descriptors refuse splice.
#[cold]
#[inline(never)]
fn copy_loop(src: RawFd, dst: RawFd, meter: &Meter<'_>, stop: &dyn Fn() -> bool) -> End {
    let mut buf = [0u8; COPY_BUF];
    loop {
        let n = match sys::read(src, &mut buf) {
            Ok(0) => return if stop() { End::Stopped } else { End::Eof },
            Ok(n) => n,
            Err(Errno::EINTR | Errno::EAGAIN) if stop() => return End::Stopped,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e) => return End::ReadFailed(e),
        };
        if let Err(end) = write_all(dst, &buf[..n], meter, stop) {
            return end;
        }
    }
}

fn write_all(dst: RawFd, data: &[u8], meter: &Meter<'_>, stop: &dyn Fn() -> bool) -> Result<(), End> {
    deliver(data.len(), meter, stop, |left| {
        sys::write(dst, &data[data.len() - left..])
    })
}

/// Where a pump records its progress: bytes delivered and when the last of them went.
struct Meter<'a> {
    moved: &'a AtomicU64,
    last: &'a AtomicU64,
    pace: Option<Pace>,
}

impl Meter<'_> {
    fn add(&self, n: usize) {
        let moved = self.moved.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let now = sys::monotonic_ms();
        self.last.store(now, Ordering::Relaxed);
        if let Some(pace) = &self.pace {
            // Interrupted early (the other pump's end): the caller's loop looks at `stop` next.
            sys::sleep_ms(pace.ahead_ms(moved, now));
        }
    }
}

/// A pump's own pacing, where the kernel does not pace the socket (`SO_MAX_PACING_RATE`
/// refused): after each chunk, the pump sleeps for as long as it is ahead of `rate` bytes a second
/// counted from its first byte. The bytes still move by splice; a chunk is at most the pipe's
/// size, so the bursts are bounded.
struct Pace {
    rate: u64,
    start_ms: u64,
}

impl Pace {
    fn new(rate: u64, start_ms: u64) -> Pace {
        Pace { rate, start_ms }
    }

    /// How long to wait, at `now`, after `moved` bytes in all.
    fn ahead_ms(&self, moved: u64, now: u64) -> u64 {
        let due = (u128::from(moved) * 1000 / u128::from(self.rate)).min(u128::from(u64::MAX)) as u64;
        due.saturating_sub(now.saturating_sub(self.start_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// Runs the copy fallback from `src` to `dst` with a fresh meter: how it ended, the bytes it
    /// counted, and the time it stamped last.
    fn copy(src: &UnixStream, dst: &UnixStream) -> (End, u64, u64) {
        let (moved, last) = (AtomicU64::new(0), AtomicU64::new(0));
        let meter = Meter {
            moved: &moved,
            last: &last,
            pace: None,
        };
        let end = copy_loop(src.as_raw_fd(), dst.as_raw_fd(), &meter, &|| false);
        (end, moved.into_inner(), last.into_inner())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// The read/write fallback, which TCP sockets never take (they always splice): every byte in
    /// order, through partial writes into a full socket buffer, then the end.
    #[test]
    fn the_copy_fallback_delivers_everything_then_reports_the_end() {
        let len = 3 * 1024 * 1024 + 17;
        let data = pattern(len);
        let (mut feed, src) = UnixStream::pair().unwrap();
        let (dst, mut sink) = UnixStream::pair().unwrap();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || {
                feed.write_all(&data).unwrap();
                feed.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            sink.read_to_end(&mut got).unwrap();
            got
        });
        let (end, moved, last) = copy(&src, &dst);
        drop(dst);
        writer.join().unwrap();
        assert_eq!(end, End::Eof);
        assert_eq!(moved, len as u64);
        assert!(last > 0);
        assert!(reader.join().unwrap() == data, "bytes differ");
    }

    #[test]
    fn pacing_waits_for_as_long_as_a_pump_is_ahead() {
        let pace = Pace::new(2_000_000, 1_000);
        assert_eq!(pace.ahead_ms(0, 1_000), 0);
        assert_eq!(pace.ahead_ms(2_000_000, 1_000), 1_000, "a second's worth at once");
        assert_eq!(pace.ahead_ms(2_000_000, 1_400), 600);
        assert_eq!(pace.ahead_ms(2_000_000, 2_500), 0, "behind: no wait");
        assert!(pace.ahead_ms(u64::MAX, 0) > 0, "no overflow");
    }

    /// A write that fails (the destination's reader is gone) ends the copy as a write failure.
    #[test]
    fn the_copy_fallback_reports_a_failed_write() {
        let (mut feed, src) = UnixStream::pair().unwrap();
        let (dst, sink) = UnixStream::pair().unwrap();
        drop(sink);
        feed.write_all(b"nobody reads this").unwrap();
        let (end, moved, _) = copy(&src, &dst);
        assert_eq!(end, End::WriteFailed(Errno::EPIPE));
        assert_eq!(moved, 0);
    }
}
