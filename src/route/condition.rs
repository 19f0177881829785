//! The text of `when=`: parsed into a [`Condition`], printed back in canonical form.

use super::PEEK_LIMIT;
use super::host::HostPattern;
use std::fmt;
use std::time::Duration;

/// Longest `timeout:` (the same bound as the other durations of the config: a year).
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 86_400);

/// What a route matches: the value of one `when=`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    /// `any` (also what a route without `when=` gets): at least one byte arrived, or an EOF.
    Any,
    /// `ssh`: the stream starts with `SSH-`, an SSH identification string.
    Ssh,
    /// `tls` or `tls:PATTERN`: a TLS ClientHello, with an SNI name matching PATTERN if given.
    Tls(Option<HostPattern>),
    /// `http` or `http:PATTERN`: an HTTP/1.x request, for a host matching PATTERN if given.
    Http(Option<HostPattern>),
    /// `prefix:TEXT`: the stream starts with these bytes (never empty).
    Prefix(Vec<u8>),
    /// `timeout:SECS`: the client sent nothing for this long. Never matches bytes; the event
    /// loop's timer takes this route.
    Timeout(Duration),
}

impl Condition {
    /// Parses the value of `when=`; errors are one line naming the bad part:
    /// `invalid when 'tls:': empty pattern`.
    pub fn parse(text: &str) -> Result<Condition, String> {
        parse_inner(text).map_err(|e| format!("invalid when '{text}': {e}"))
    }
}

fn parse_inner(text: &str) -> Result<Condition, String> {
    let (kind, arg) = match text.split_once(':') {
        Some((kind, arg)) => (kind, Some(arg)),
        None => (text, None),
    };
    let pattern = |arg: Option<&str>| arg.map(HostPattern::parse).transpose();
    match (kind, arg) {
        ("any", None) => Ok(Condition::Any),
        ("ssh", None) => Ok(Condition::Ssh),
        ("any" | "ssh", Some(_)) => Err(format!("'{kind}' takes no argument")),
        ("tls", arg) => match pattern(arg)? {
            Some(HostPattern::Ipv6(_)) => Err("a TLS server name is never an IP address".into()),
            p => Ok(Condition::Tls(p)),
        },
        ("http", arg) => Ok(Condition::Http(pattern(arg)?)),
        ("prefix", Some(arg)) => parse_prefix(arg).map(Condition::Prefix),
        ("timeout", Some(arg)) => parse_timeout(arg).map(Condition::Timeout),
        ("prefix" | "timeout", None) => Err(format!("'{kind}' needs an argument ('{kind}:...')")),
        _ => Err(format!(
            "unknown kind '{kind}' (expected any, ssh, tls, http, prefix or timeout)"
        )),
    }
}

/// `TEXT` with `\xNN` (two hex digits) and `\\` escapes; any other character stands for its UTF-8
/// bytes.
fn parse_prefix(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('\\') {
        out.extend_from_slice(&rest.as_bytes()[..i]);
        let esc = &rest[i..];
        if let Some(after) = esc.strip_prefix("\\\\") {
            out.push(b'\\');
            rest = after;
        } else if let Some(byte) = esc
            .get(2..4)
            .filter(|h| esc.starts_with("\\x") && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            rest = &esc[4..];
        } else {
            let shown: String = esc.chars().take(4).collect();
            return Err(format!("bad escape '{shown}' (use \\xNN with two hex digits, or \\\\)"));
        }
    }
    out.extend_from_slice(rest.as_bytes());
    if out.is_empty() {
        return Err("empty prefix".into());
    }
    if out.len() > PEEK_LIMIT {
        return Err(format!("prefix longer than the {PEEK_LIMIT} bytes that are looked at"));
    }
    Ok(out)
}

/// Seconds, with up to nine decimals (so that printing it back is exact), more than 0 and at
/// most a year.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let bad = || format!("'{text}' is not a number of seconds greater than 0 (at most a year)");
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 9 || text.ends_with('.') {
        return Err(bad());
    }
    let secs: u64 = whole.parse().map_err(|_| bad())?;
    let nanos: u32 = format!("{frac:0<9}").parse().map_err(|_| bad())?;
    let d = Duration::new(secs, nanos);
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(bad());
    }
    Ok(d)
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Any => f.write_str("any"),
            Condition::Ssh => f.write_str("ssh"),
            Condition::Tls(None) => f.write_str("tls"),
            Condition::Tls(Some(p)) => write!(f, "tls:{p}"),
            Condition::Http(None) => f.write_str("http"),
            Condition::Http(Some(p)) => write!(f, "http:{p}"),
            Condition::Prefix(bytes) => {
                f.write_str("prefix:")?;
                for &b in bytes {
                    // Printable ASCII as itself, except what the config line reads otherwise:
                    // `\` (escapes) and `#` (a comment); space is never printable here, since
                    // words of a config line are separated by it.
                    if b.is_ascii_graphic() && b != b'\\' && b != b'#' {
                        write!(f, "{}", b as char)?;
                    } else if b == b'\\' {
                        f.write_str("\\\\")?;
                    } else {
                        write!(f, "\\x{b:02x}")?;
                    }
                }
                Ok(())
            }
            Condition::Timeout(d) => {
                write!(f, "timeout:{}", d.as_secs())?;
                if d.subsec_nanos() != 0 {
                    let frac = format!("{:09}", d.subsec_nanos());
                    write!(f, ".{}", frac.trim_end_matches('0'))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Condition {
        Condition::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn pat(text: &str) -> Option<HostPattern> {
        Some(HostPattern::parse(text).unwrap())
    }

    #[test]
    fn the_issue_examples() {
        assert_eq!(ok("ssh"), Condition::Ssh);
        assert_eq!(ok("tls:*.example.com"), Condition::Tls(pat("*.example.com")));
        assert_eq!(ok("tls"), Condition::Tls(None));
        assert_eq!(
            ok("http:intranet.example.com"),
            Condition::Http(pat("intranet.example.com"))
        );
        assert_eq!(ok("http"), Condition::Http(None));
        assert_eq!(ok("timeout:3"), Condition::Timeout(Duration::from_secs(3)));
        assert_eq!(ok("any"), Condition::Any);
        assert_eq!(ok("http:[::1]"), Condition::Http(pat("[::1]")));
    }

    #[test]
    fn prefixes_with_escapes() {
        assert_eq!(ok("prefix:HELO"), Condition::Prefix(b"HELO".to_vec()));
        assert_eq!(
            ok(r"prefix:\x00\x01ab\xFF"),
            Condition::Prefix(vec![0, 1, b'a', b'b', 0xff])
        );
        assert_eq!(ok(r"prefix:a\\b"), Condition::Prefix(b"a\\b".to_vec()));
        assert_eq!(ok(r"prefix:\x20"), Condition::Prefix(b" ".to_vec()));
        assert_eq!(ok("prefix:é"), Condition::Prefix("é".as_bytes().to_vec()));
        assert_eq!(ok("prefix:a:b"), Condition::Prefix(b"a:b".to_vec()));
    }

    #[test]
    fn timeouts() {
        assert_eq!(ok("timeout:0.5"), Condition::Timeout(Duration::from_millis(500)));
        assert_eq!(ok("timeout:1.000000001"), Condition::Timeout(Duration::new(1, 1)));
        assert_eq!(ok("timeout:31536000"), Condition::Timeout(MAX_TIMEOUT));
        assert_eq!(ok("timeout:007"), Condition::Timeout(Duration::from_secs(7)));
    }

    #[test]
    fn errors_name_the_bad_part() {
        for (text, want) in [
            ("tls:", "invalid when 'tls:': empty pattern"),
            ("http:", "invalid when 'http:': empty pattern"),
            ("tls:a..b", "invalid when 'tls:a..b': 'a..b': empty label"),
            ("tls:[::1]", "never an IP address"),
            ("http:a b", "'a b': character ' ' is not allowed"),
            ("ssh:x", "invalid when 'ssh:x': 'ssh' takes no argument"),
            ("any:", "'any' takes no argument"),
            ("prefix", "'prefix' needs an argument"),
            ("prefix:", "invalid when 'prefix:': empty prefix"),
            (r"prefix:\x4", r"bad escape '\x4'"),
            (r"prefix:\xg0", r"bad escape '\xg0'"),
            (r"prefix:a\n", r"bad escape '\n'"),
            (r"prefix:\", r"bad escape '\'"),
            ("timeout", "'timeout' needs an argument"),
            ("timeout:0", "'0' is not a number of seconds greater than 0"),
            ("timeout:0.0", "'0.0' is not a number"),
            ("timeout:-1", "'-1' is not a number"),
            ("timeout:1.", "'1.' is not a number"),
            ("timeout:.5", "'.5' is not a number"),
            ("timeout:1e3", "'1e3' is not a number"),
            ("timeout:0.0000000001", "is not a number"),
            ("timeout:31536000.1", "is not a number"),
            ("timeout:99999999999999999999", "is not a number"),
            ("SSH", "unknown kind 'SSH'"),
            ("", "invalid when '': unknown kind ''"),
            ("smtp:x", "unknown kind 'smtp'"),
        ] {
            let err = Condition::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains('\n'));
        }
        let long = format!("prefix:{}", "a".repeat(PEEK_LIMIT + 1));
        assert!(Condition::parse(&long).unwrap_err().contains("prefix longer than"));
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        for (text, canonical) in [
            ("any", "any"),
            ("ssh", "ssh"),
            ("tls", "tls"),
            ("tls:*.Example.COM", "tls:*.example.com"),
            ("http:[0::1]", "http:[::1]"),
            (r"prefix:\x41B\x00 #\\", r"prefix:AB\x00\x20\x23\\"),
            ("prefix:é", r"prefix:\xc3\xa9"),
            ("timeout:3", "timeout:3"),
            ("timeout:2.50", "timeout:2.5"),
            ("timeout:0.000000001", "timeout:0.000000001"),
        ] {
            let c = ok(text);
            assert_eq!(c.to_string(), canonical);
            assert_eq!(ok(canonical), c);
        }
    }
}
