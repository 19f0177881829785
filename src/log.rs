//! Log lines that never interleave: each line is built in a fixed buffer (its body, `key=value`
//! pairs in logfmt) and leaves in one system call when it is emitted, stamped then: the time in a
//! line is when it was written, so lines are in time order ([`log_sink`](crate::log_sink) says
//! where they go and how, [`log_format`](crate::log_format) how they look there). Used by both
//! processes: [`Line`] after fork too, [`log!`](crate::log!) and [`Throttle`] in the main process
//! only.
//!
//! [`Line`] does no allocation and takes no lock, so a forked child can use it: the start of a
//! connection's line is formatted by the main process before the fork, and the child appends the
//! numbers it learns (bytes, duration, outcome) with the integer formatting below.

use std::fmt;

const CAP: usize = 512;

/// A line's bytes under construction in a fixed buffer of `N` bytes (longer content is cut, never
/// overflowed; one byte is kept for the newline).
#[derive(Clone, Copy)]
pub struct Buf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

/// One log line's body under construction, at most 512 bytes.
pub type Line = Buf<CAP>;

impl<const N: usize> Default for Buf<N> {
    fn default() -> Self {
        Buf::new()
    }
}

impl<const N: usize> Buf<N> {
    pub const fn new() -> Self {
        Buf { buf: [0; N], len: 0 }
    }

    pub fn push(&mut self, bytes: &[u8]) -> &mut Self {
        let n = bytes.len().min(N - 1 - self.len);
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

    pub(crate) fn padded(&mut self, n: u64, width: usize) -> &mut Self {
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

    /// Appends `bytes` escaped for the inside of a quoted logfmt value: `"` and `\` escaped by a
    /// backslash, control characters as `\u00XX` (the escapes JSON has too, so such a value can be
    /// copied into a JSON string as it is).
    pub fn escaped(&mut self, bytes: &[u8]) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in bytes {
            match b {
                b'"' | b'\\' => self.push(&[b'\\', b]),
                0..0x20 | 0x7f => self.push(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]),
                _ => self.push(&[b]),
            };
        }
        self
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Line {
    /// Stamps the line with the time and the writing process, and sends it where the log goes, in
    /// one system call that never blocks (a line the reader is not ready for is dropped and
    /// counted: [`log_sink`](crate::log_sink)).
    pub fn emit(&self) {
        crate::log_sink::emit(self.as_bytes());
    }
}

impl<const N: usize> fmt::Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Days since 1970-01-01 to a (year, month, day) date, after Howard Hinnant's `civil_from_days`.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
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
    let mut line = Line::new();
    let _ = fmt::write(&mut line, args);
    line.emit();
}

/// A value written as a logfmt value: as it is when it is one word, else quoted (see
/// [`Buf::escaped`]); for text that may hold spaces, quotes or `=`, such as an error message or a
/// file's words. An empty value is `""`.
pub struct Quoted<T>(pub T);

impl<T: fmt::Display> fmt::Display for Quoted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        /// Finds whether the value needs quotes (a first pass that writes nothing).
        struct Plain(bool, bool);
        impl fmt::Write for Plain {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                self.1 |= !s.is_empty();
                self.0 &= !s.chars().any(|c| matches!(c, ' ' | '"' | '=' | '\\') || c.is_control());
                Ok(())
            }
        }
        /// Escapes what passes through it, as [`Buf::escaped`] does.
        struct Escape<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl fmt::Write for Escape<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for c in s.chars() {
                    match c {
                        '"' | '\\' => write!(self.0, "\\{c}")?,
                        '\0'..='\x1f' | '\x7f' => write!(self.0, "\\u{:04x}", c as u32)?,
                        _ => self.0.write_char(c)?,
                    }
                }
                Ok(())
            }
        }
        let mut plain = Plain(true, false);
        write!(plain, "{}", self.0)?;
        if plain.0 && plain.1 {
            return write!(f, "{}", self.0);
        }
        f.write_str("\"")?;
        write!(Escape(f), "{}", self.0)?;
        f.write_str("\"")
    }
}

/// `log!("...", args)`: one line (logfmt `key=value` pairs) in one write.
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
    fn quoted_values_only_where_needed() {
        let shown = |v: &str| Quoted(v).to_string();
        assert_eq!(shown("127.0.0.1:8005"), "127.0.0.1:8005");
        assert_eq!(shown(""), "\"\"");
        assert_eq!(shown("no such file"), "\"no such file\"");
        assert_eq!(shown("a=\"b\"\\\n"), "\"a=\\\"b\\\"\\\\\\u000a\"");
        let mut l = Line::new();
        l.escaped("é \"\x01".as_bytes());
        assert_eq!(l.as_bytes(), "é \\\"\\u0001".as_bytes());
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
