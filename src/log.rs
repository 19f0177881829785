//! Log lines that never interleave: each line is built in a fixed buffer and leaves in one
//! `write(2)` on stderr (which `--log-file` points at an `O_APPEND` file). Used by both processes:
//! [`Line`] after fork too, [`log!`](crate::log!) and [`Throttle`] in the main process only.
//!
//! [`Line`] does no allocation and takes no lock, so a forked child can use it: the prefix of a
//! connection's line is formatted by the main process before the fork, and the child appends the
//! numbers it learns (bytes, duration, outcome) with the integer formatting below.

use crate::sys;
use std::fmt;

const CAP: usize = 512;

/// One log line under construction, at most 512 bytes (longer content is cut, never overflowed).
#[derive(Clone, Copy)]
pub struct Line {
    buf: [u8; CAP],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line::new()
    }
}

impl Line {
    pub const fn new() -> Self {
        Line { buf: [0; CAP], len: 0 }
    }

    /// Starts a line with the timestamp and the program name: `ts=... portfwd[PID]:`.
    pub fn stamped() -> Self {
        let mut line = Line::new();
        line.push(b"ts=");
        line.timestamp(sys::realtime_ms());
        line.push(b" portfwd[");
        line.num(sys::getpid() as u64);
        line.push(b"]:");
        line
    }

    pub fn push(&mut self, bytes: &[u8]) -> &mut Self {
        let n = bytes.len().min(CAP - 1 - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self
    }

    /// Appends ` key=`.
    pub fn key(&mut self, key: &str) -> &mut Self {
        self.push(b" ").push(key.as_bytes()).push(b"=")
    }

    /// Appends an unsigned decimal number.
    pub fn num(&mut self, mut n: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }

    fn padded(&mut self, n: u64, width: usize) -> &mut Self {
        let mut digits = [b'0'; 20];
        let mut v = n;
        for d in digits[20 - width..].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        self.push(&digits[20 - width..])
    }

    /// Appends a UTC timestamp like `2026-11-25T15:17:33.123Z` (pure arithmetic, no tz lookup).
    pub fn timestamp(&mut self, ms: u64) -> &mut Self {
        let secs = ms / 1000;
        let (y, m, d) = civil_from_days((secs / 86_400) as i64);
        let sod = secs % 86_400;
        self.num(y as u64)
            .push(b"-")
            .padded(m as u64, 2)
            .push(b"-")
            .padded(d as u64, 2);
        self.push(b"T")
            .padded(sod / 3600, 2)
            .push(b":")
            .padded(sod / 60 % 60, 2);
        self.push(b":")
            .padded(sod % 60, 2)
            .push(b".")
            .padded(ms % 1000, 3)
            .push(b"Z")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Ends the line and writes it to stderr in one `write(2)`.
    pub fn emit(&mut self) {
        self.buf[self.len] = b'\n';
        let _ = sys::write_all(2, &self.buf[..=self.len]);
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Days since 1970-01-01 to a (year, month, day) date, after Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Logs one line from the main process: `ts=... portfwd[PID]: <message>`.
pub fn info(args: fmt::Arguments<'_>) {
    let mut line = Line::stamped();
    line.push(b" ");
    let _ = fmt::write(&mut line, args);
    line.emit();
}

/// `log!("...", args)`: one line on stderr in one write.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::info(format_args!($($arg)*)) };
}

/// At most `per_second` lines of one kind each second (a flood of refused clients must not become
/// a flood of log lines): the lines past that are counted, and the count is reported once their
/// second is over.
pub struct Throttle {
    per_second: u32,
    second: u64,
    written: u32,
    left_out: u64,
}

impl Throttle {
    pub const fn new(per_second: u32) -> Throttle {
        Throttle {
            per_second,
            second: 0,
            written: 0,
            left_out: 0,
        }
    }

    /// Whether a line may be written at `now_ms`; if not, it is counted as left out. Call
    /// [`Throttle::take_left_out`] first, so that a count is reported before newer lines.
    pub fn admit(&mut self, now_ms: u64) -> bool {
        let second = now_ms / 1000;
        if second != self.second {
            self.second = second;
            self.written = 0;
        }
        if self.written < self.per_second {
            self.written += 1;
            true
        } else {
            self.left_out += 1;
            false
        }
    }

    /// The number of lines left out, once the second they belong to is over (and then only once).
    pub fn take_left_out(&mut self, now_ms: u64) -> Option<u64> {
        if self.left_out == 0 || now_ms / 1000 == self.second {
            return None;
        }
        Some(std::mem::take(&mut self.left_out))
    }

    /// When a count of left-out lines becomes due (`CLOCK_MONOTONIC` ms), if there is one.
    pub fn due_at(&self) -> Option<u64> {
        (self.left_out > 0).then_some((self.second + 1) * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_writes_so_many_a_second_and_counts_the_rest() {
        let mut t = Throttle::new(3);
        let written = (0..10).filter(|i| t.admit(5_000 + i * 10)).count();
        assert_eq!(written, 3);
        assert_eq!(t.due_at(), Some(6_000));
        assert_eq!(t.take_left_out(5_999), None, "not before its second is over");
        assert_eq!(t.take_left_out(6_000), Some(7));
        assert_eq!(t.take_left_out(6_001), None, "reported once");
        assert_eq!(t.due_at(), None);
        assert!(t.admit(6_002), "a new second writes again");
    }

    #[test]
    fn formats_numbers_and_dates() {
        let mut l = Line::new();
        l.num(0)
            .push(b" ")
            .num(18_446_744_073_709_551_615)
            .push(b" ")
            .timestamp(1_764_083_853_123);
        assert_eq!(l.as_bytes(), b"0 18446744073709551615 2025-11-25T15:17:33.123Z");
        let mut l = Line::new();
        l.timestamp(951_782_400_000); // 2000-02-29, a leap day
        assert_eq!(l.as_bytes(), b"2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn long_content_is_cut_not_overflowed() {
        let mut l = Line::new();
        for _ in 0..100 {
            l.push(b"0123456789");
        }
        assert_eq!(l.as_bytes().len(), CAP - 1);
        l.emit_to_nowhere();
    }

    impl Line {
        fn emit_to_nowhere(&mut self) {
            self.buf[self.len] = b'\n';
        }
    }
}
