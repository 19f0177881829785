//! Host name patterns of `when=tls:PATTERN` and `when=http:PATTERN`, and the host names they are
//! matched against (a TLS SNI name, an HTTP `Host`).
//!
//! A pattern is an exact name (`intranet.example.com`), a wildcard (`*.example.com`, one or more
//! leading labels) or, for HTTP only, a bracketed IPv6 literal (`[::1]`). Names are ASCII: an
//! internationalised name is written in its `xn--` form, as it appears on the wire.

use std::fmt;
use std::net::Ipv6Addr;

/// Longest host name (RFC 1035), without a trailing dot.
const MAX_NAME: usize = 253;
/// Longest label (RFC 1035).
const MAX_LABEL: usize = 63;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// This name exactly (stored lower-cased).
    Exact(String),
    /// Any name ending in `.` + this suffix (stored lower-cased, without the leading `*.`).
    Wildcard(String),
    /// This IPv6 address, written `[addr]` (an HTTP `Host` may carry one; an SNI never does).
    Ipv6(Ipv6Addr),
}

impl HostPattern {
    /// Parses `name`, `*.suffix` or `[ipv6]`; the error says what is wrong with the text.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        if text.is_empty() {
            return Err("empty pattern".into());
        }
        if let Some(inner) = text.strip_prefix('[') {
            let addr = inner
                .strip_suffix(']')
                .and_then(|a| a.parse::<Ipv6Addr>().ok())
                .ok_or_else(|| format!("'{text}' is not a bracketed IPv6 address"))?;
            return Ok(HostPattern::Ipv6(addr));
        }
        let suffix = text.strip_prefix("*.");
        if suffix.unwrap_or(text).contains('*') {
            return Err(format!(
                "'{text}': a wildcard is only allowed as a whole first label ('*.example.com')"
            ));
        }
        if let Some(suffix) = suffix {
            check_name(suffix).map_err(|e| format!("'{text}': {e}"))?;
            return Ok(HostPattern::Wildcard(suffix.to_ascii_lowercase()));
        }
        check_name(text).map_err(|e| format!("'{text}': {e}"))?;
        Ok(HostPattern::Exact(text.to_ascii_lowercase()))
    }

    /// Does the host name `host` (as sent: any case, possibly one trailing dot, or `[ipv6]`) match?
    /// A host that is not a well-formed name never matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Ipv6(addr) => host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse::<Ipv6Addr>().ok())
                .is_some_and(|h| h == *addr),
            HostPattern::Exact(name) => normalise(host).is_some_and(|h| h == *name),
            HostPattern::Wildcard(suffix) => normalise(host).is_some_and(|h| {
                h.len() > suffix.len() + 1
                    && h.ends_with(suffix.as_str())
                    && h.as_bytes()[h.len() - suffix.len() - 1] == b'.'
            }),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
            HostPattern::Ipv6(addr) => write!(f, "[{addr}]"),
        }
    }
}

/// `host` lower-cased without one trailing dot, if it is a well-formed name; else `None`.
pub fn normalise(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    check_name(host).ok()?;
    Some(host.to_ascii_lowercase())
}

/// Checks a host name: labels of letters, digits, `-` and `_` (found in internal names), none
/// empty, at most 63 bytes each and 253 in all.
fn check_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME {
        return Err(format!("longer than {MAX_NAME} characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > MAX_LABEL {
            return Err(format!("label longer than {MAX_LABEL} characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(if c.is_ascii() {
                format!("character {c:?} is not allowed in a host name")
            } else {
                format!("character {c:?} is not ASCII (write the name in its xn-- form)")
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> HostPattern {
        HostPattern::parse(text).unwrap()
    }

    #[test]
    fn exact_is_case_insensitive_and_ignores_one_trailing_dot() {
        let pat = p("Intranet.Example.COM");
        assert_eq!(pat, HostPattern::Exact("intranet.example.com".into()));
        assert!(pat.matches("intranet.example.com"));
        assert!(pat.matches("INTRANET.example.com"));
        assert!(pat.matches("intranet.example.com."));
        assert!(!pat.matches("intranet.example.com.."));
        assert!(!pat.matches("x.intranet.example.com"));
        assert!(!pat.matches("intranet.example.co"));
        assert!(!pat.matches(""));
    }

    #[test]
    fn wildcard_needs_one_or_more_leading_labels() {
        let pat = p("*.Example.com");
        assert_eq!(pat.to_string(), "*.example.com");
        assert!(pat.matches("www.example.com"));
        assert!(pat.matches("a.b.EXAMPLE.com"));
        assert!(!pat.matches("example.com"));
        assert!(!pat.matches(".example.com"));
        assert!(!pat.matches("wwwexample.com"));
        assert!(!pat.matches("www.example.com.evil"));
        assert!(!pat.matches("a..example.com"));
        assert!(!pat.matches("a b.example.com"));
    }

    #[test]
    fn ipv6_literal_compares_addresses() {
        let pat = p("[::1]");
        assert_eq!(pat.to_string(), "[::1]");
        assert!(pat.matches("[0:0::1]"));
        assert!(!pat.matches("::1"));
        assert!(!pat.matches("[::2]"));
        assert!(!p("localhost").matches("[::1]"));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (text, want) in [
            ("", "empty pattern"),
            ("a..b", "empty label"),
            ("a.b.", "empty label"),
            ("*.", "empty label"),
            ("*", "wildcard is only allowed"),
            ("a.*.b", "wildcard is only allowed"),
            ("*a.b", "wildcard is only allowed"),
            ("*.*.b", "wildcard is only allowed"),
            ("a b", "character ' ' is not allowed"),
            ("a:80", "character ':' is not allowed"),
            ("bücher.de", "not ASCII"),
            ("[::1", "not a bracketed IPv6 address"),
            ("[1.2.3.4]", "not a bracketed IPv6 address"),
        ] {
            let err = HostPattern::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert!(
            HostPattern::parse(&"a".repeat(64))
                .unwrap_err()
                .contains("label longer")
        );
        let long = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(63)].join(".");
        assert!(HostPattern::parse(&long).unwrap_err().contains("longer than 253"));
    }

    #[test]
    fn display_parses_back() {
        for text in [
            "a.example.com",
            "*.example.com",
            "xn--bcher-kva.de",
            "10.0.0.1",
            "[2001:db8::1]",
            "_srv.x",
        ] {
            let pat = p(text);
            assert_eq!(HostPattern::parse(&pat.to_string()).unwrap(), pat);
        }
    }
}
