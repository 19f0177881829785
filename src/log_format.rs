//! How a log line looks where it goes: its body (logfmt `key=value` pairs, built by
//! [`Line`](crate::log::Line)) stamped with the time it is written and the writing process, as
//! logfmt (`ts=... portfwd[PID]: key=value ...`) or as one JSON object (`--log-format json`:
//! `{"ts":"...","pid":N,"key":"value",...}`, the same keys), and for syslog behind an RFC 3164
//! header (`<30>Mmm dd hh:mm:ss portfwd[PID]: `). Both processes: no allocation, no lock, stack
//! buffers only.

use crate::log::Buf;

/// The rendered line: a body of 512 bytes at most, doubled at worst by JSON's quotes, plus the
/// headers.
pub(crate) type Out = Buf<1536>;

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[repr(u8)]
pub enum Format {
    /// `ts=... portfwd[PID]: key=value ...`
    Logfmt = 0,
    /// One JSON object per line, the same keys.
    Json = 1,
}

/// syslog's facility `daemon` (3) and severity `info` (6): `<3 * 8 + 6>`.
const SYSLOG_PRI: &[u8] = b"<30>";

/// Renders `body` written at `now_ms` (wall clock, ms since the epoch) by process `pid`. With
/// `syslog`, the local time's offset from UTC in seconds, the line gets a syslog header and no
/// newline (it goes as one datagram).
pub(crate) fn render(out: &mut Out, body: &[u8], format: Format, syslog: Option<i64>, now_ms: u64, pid: i32) {
    if let Some(offset) = syslog {
        out.push(SYSLOG_PRI);
        rfc3164_time(out, (now_ms / 1000) as i64 + offset);
        out.push(b" portfwd[").num(pid as u64).push(b"]: ");
    }
    match format {
        Format::Logfmt => {
            out.push(b"ts=").timestamp(now_ms);
            if syslog.is_none() {
                out.push(b" portfwd[").num(pid as u64).push(b"]:");
            }
            if !body.is_empty() {
                out.push(b" ").push(body);
            }
        }
        Format::Json => {
            out.push(b"{\"ts\":\"")
                .timestamp(now_ms)
                .push(b"\",\"pid\":")
                .num(pid as u64);
            json_pairs(out, body);
            out.push(b"}");
        }
    }
    if syslog.is_none() {
        out.push(b"\n");
    }
}

/// `Mmm dd hh:mm:ss` (the day padded with a space), of `secs` since the epoch in local time.
fn rfc3164_time(out: &mut Out, secs: i64) {
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
    ];
    let secs = secs.max(0) as u64;
    let (_, m, d) = crate::log::civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    out.push(MONTHS[(m - 1) as usize])
        .push(if d < 10 { b"  " } else { b" " })
        .num(d as u64);
    out.push(b" ").padded(sod / 3600, 2).push(b":").padded(sod / 60 % 60, 2);
    out.push(b":").padded(sod % 60, 2);
}

/// The body's `key=value` pairs as `,"key":value` JSON members: a quoted logfmt value is already
/// a JSON string (the escapes are the same); a bare one is a number when it is one, else a string.
/// A word without `=` becomes a `msg` member. A `pid` pair is left out: the object starts with the
/// writing process's pid, and the one line with a `pid=` (start-up's) names the same process.
fn json_pairs(out: &mut Out, body: &[u8]) {
    let mut rest = body;
    loop {
        while let [b' ', tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            return;
        }
        let word_end = rest.iter().position(|&b| b == b' ' || b == b'=').unwrap_or(rest.len());
        let (key, value_start) = match rest.get(word_end) {
            Some(b'=') => (&rest[..word_end], word_end + 1),
            _ => (&b"msg"[..], 0),
        };
        let skipped = key == b"pid";
        let mark = *out;
        out.push(b",\"").escaped(key).push(b"\":");
        rest = &rest[value_start..];
        if let [b'"', quoted @ ..] = rest {
            // Up to the closing quote (one not escaped), or the end of a line that was cut.
            let mut i = 0;
            let mut closed = false;
            while i < quoted.len() {
                match quoted[i] {
                    b'\\' => i += 2,
                    b'"' => {
                        closed = true;
                        break;
                    }
                    _ => i += 1,
                }
            }
            // An escape cut in half by the end of the line is left out.
            let i = if i > quoted.len() { quoted.len() - 1 } else { i };
            out.push(b"\"").push(&quoted[..i]).push(b"\"");
            rest = if closed { &quoted[i + 1..] } else { &[] };
        } else {
            let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
            let value = &rest[..end];
            let number =
                !value.is_empty() && value.iter().all(u8::is_ascii_digit) && (value.len() == 1 || value[0] != b'0');
            if number {
                out.push(value);
            } else {
                out.push(b"\"").escaped(value).push(b"\"");
            }
            rest = &rest[end..];
        }
        if skipped {
            *out = mark;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_083_853_123; // 2025-11-25T15:17:33.123Z

    fn rendered(body: &[u8], format: Format, syslog: Option<i64>) -> String {
        let mut out = Out::new();
        render(&mut out, body, format, syslog, NOW, 42);
        String::from_utf8(out.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn logfmt_is_stamped_with_the_time_and_the_process() {
        assert_eq!(
            rendered(b"client=1.2.3.4:5 ms=7", Format::Logfmt, None),
            "ts=2025-11-25T15:17:33.123Z portfwd[42]: client=1.2.3.4:5 ms=7\n"
        );
    }

    #[test]
    fn syslog_gets_an_rfc3164_header_in_local_time_and_no_newline() {
        assert_eq!(
            rendered(b"event=stats live=0", Format::Logfmt, Some(3600)),
            "<30>Nov 25 16:17:33 portfwd[42]: ts=2025-11-25T15:17:33.123Z event=stats live=0"
        );
        let mut out = Out::new();
        render(&mut out, b"", Format::Logfmt, Some(0), 951_782_400_000, 7);
        assert!(out.as_bytes().starts_with(b"<30>Feb 29 00:00:00 portfwd[7]: "));
        let mut out = Out::new();
        render(&mut out, b"", Format::Logfmt, Some(0), 952_041_600_000, 7);
        assert!(
            out.as_bytes().starts_with(b"<30>Mar  3 00:00:00 portfwd[7]: "),
            "a space-padded day"
        );
    }

    #[test]
    fn json_has_the_same_keys_numbers_as_numbers() {
        let line = rendered(
            br#"client=[::1]:5 c2s=10 s2c=0 port=007 pid=42 outcome=reset error="a \"b\" \\ c" stray"#,
            Format::Json,
            None,
        );
        assert_eq!(
            line,
            "{\"ts\":\"2025-11-25T15:17:33.123Z\",\"pid\":42,\"client\":\"[::1]:5\",\"c2s\":10,\"s2c\":0,\
             \"port\":\"007\",\"outcome\":\"reset\",\"error\":\"a \\\"b\\\" \\\\ c\",\"msg\":\"stray\"}\n"
        );
    }

    #[test]
    fn json_closes_a_value_cut_short_and_escapes_bare_bytes() {
        assert_eq!(
            rendered(b"error=\"cut here", Format::Json, None),
            "{\"ts\":\"2025-11-25T15:17:33.123Z\",\"pid\":42,\"error\":\"cut here\"}\n"
        );
        assert_eq!(
            rendered(b"error=\"ends in a backslash\\", Format::Json, None),
            "{\"ts\":\"2025-11-25T15:17:33.123Z\",\"pid\":42,\"error\":\"ends in a backslash\"}\n",
            "an escape cut in half is left out"
        );
    }
}
