//! `when=http` and `when=http:PATTERN`: is the start of the stream an HTTP/1.x request, and which
//! host does it name?
//!
//! `http` decides on the request line (`METHOD SP target SP HTTP/1.x CRLF`); `http:PATTERN` reads
//! on to the blank line that ends the header section and takes the host the server will take
//! (RFC 9112 3.2.2): the authority of an absolute-form target (`GET http://host/ HTTP/1.1`), else
//! the `Host` header, port stripped, `[v6]` literals kept whole. A request with two `Host`
//! headers is malformed (a server must answer it 400), so it matches no pattern rather than one
//! chosen by the first header while the server might read another.
//!
//! The parse is strict where that lets it say "not HTTP" early (a first byte that no method can
//! start with, a control character, a folded header line) and accepts a bare LF as a line end,
//! as RFC 9112 2.2 allows.

use super::Scan;

/// Longer than any registered method (the longest, `UPDATEREDIRECTREF`, has 17 bytes): a longer
/// run of token characters is not a request line.
const MAX_METHOD: usize = 24;

/// What routing needs of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The host the request is for, without its port (`example.com`, `[::1]`), if it names one
    /// in a well-formed authority.
    pub host: Option<String>,
}

/// Reads the request line at the start of `bytes`; `Done` carries the target and the offset just
/// past the line's end.
pub fn request_line(bytes: &[u8]) -> Scan<(&[u8], usize)> {
    let len = bytes.len();
    let method = bytes.iter().take(MAX_METHOD + 1).take_while(|&&b| is_tchar(b)).count();
    if method > MAX_METHOD {
        return Scan::Invalid;
    }
    if method == len {
        return Scan::Partial;
    }
    if method == 0 || bytes[method] != b' ' {
        return Scan::Invalid;
    }
    let start = method + 1;
    let target = bytes[start..]
        .iter()
        .take_while(|&&b| (0x21..=0x7e).contains(&b))
        .count();
    let mut i = start + target;
    if i == len {
        return Scan::Partial;
    }
    if target == 0 || bytes[i] != b' ' {
        return Scan::Invalid;
    }
    i += 1;
    // `HTTP/1.` and a minor version digit.
    for (k, want) in b"HTTP/1.".iter().chain(b"0").enumerate() {
        let ok = match bytes.get(i) {
            None => return Scan::Partial,
            Some(b) if k == 7 => b.is_ascii_digit(),
            Some(b) => b == want,
        };
        if !ok {
            return Scan::Invalid;
        }
        i += 1;
    }
    match line_end(bytes, i) {
        Scan::Done(next) => Scan::Done((&bytes[start..start + target], next)),
        Scan::Partial => Scan::Partial,
        Scan::Invalid => Scan::Invalid,
    }
}

/// Reads the request line and the header section (to its blank line).
pub fn request(bytes: &[u8]) -> Scan<Request> {
    let (target, mut i) = match request_line(bytes) {
        Scan::Done(found) => found,
        Scan::Partial => return Scan::Partial,
        Scan::Invalid => return Scan::Invalid,
    };
    let mut hosts = Vec::new();
    loop {
        match bytes.get(i) {
            None => return Scan::Partial,
            Some(b'\r' | b'\n') => break,
            // A folded line (obs-fold), which a server may reject.
            Some(b' ' | b'\t') => return Scan::Invalid,
            Some(_) => {}
        }
        let name = bytes[i..].iter().take_while(|&&b| is_tchar(b)).count();
        let colon = i + name;
        match bytes.get(colon) {
            None => return Scan::Partial,
            Some(b':') if name > 0 => {}
            Some(_) => return Scan::Invalid,
        }
        let value = bytes[colon + 1..].iter().take_while(|&&b| is_field_char(b)).count();
        let end = colon + 1 + value;
        let next = match line_end(bytes, end) {
            Scan::Done(next) => next,
            Scan::Partial => return Scan::Partial,
            Scan::Invalid => return Scan::Invalid,
        };
        if bytes[i..colon].eq_ignore_ascii_case(b"host") {
            hosts.push(trim_ows(&bytes[colon + 1..end]));
        }
        i = next;
    }
    match line_end(bytes, i) {
        Scan::Done(_) => {}
        Scan::Partial => return Scan::Partial,
        Scan::Invalid => return Scan::Invalid,
    }
    if hosts.len() > 1 {
        return Scan::Invalid;
    }
    let authority = absolute_form_authority(target).or(hosts.first().copied());
    Scan::Done(Request {
        host: authority.and_then(host_of_authority),
    })
}

/// The line end at `i`: CRLF or a bare LF; `Done` carries the offset after it.
fn line_end(bytes: &[u8], i: usize) -> Scan<usize> {
    match (bytes.get(i), bytes.get(i + 1)) {
        (None, _) | (Some(b'\r'), None) => Scan::Partial,
        (Some(b'\n'), _) => Scan::Done(i + 1),
        (Some(b'\r'), Some(b'\n')) => Scan::Done(i + 2),
        _ => Scan::Invalid,
    }
}

/// The authority of an absolute-form target (`scheme://authority/path`), if it is one.
fn absolute_form_authority(target: &[u8]) -> Option<&[u8]> {
    let scheme = target
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        .count();
    if scheme == 0 || !target[0].is_ascii_alphabetic() {
        return None;
    }
    let rest = target[scheme..].strip_prefix(b"://")?;
    let end = rest.iter().position(|b| b"/?#".contains(b)).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `host[:port]` or `[v6][:port]` to its host; `None` if it is not of that form (a userinfo
/// `user@host` is not: it must not be sent, RFC 9110 4.2.4).
fn host_of_authority(authority: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(authority).ok()?;
    let (host, port) = if text.starts_with('[') {
        let close = text.find(']')?;
        (&text[..=close], &text[close + 1..])
    } else {
        text.split_at(text.find(':').unwrap_or(text.len()))
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    (!host.is_empty() && !host.contains('@') && port_ok).then(|| host.to_string())
}

/// A `token` character (RFC 9110 5.6.2): methods and header names.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A character of a header value: visible, space, tab, or obs-text.
fn is_field_char(b: u8) -> bool {
    b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(bytes: &[u8]) -> Scan<Option<String>> {
        request(bytes).map(|r| r.host)
    }

    fn done(host: &str) -> Scan<Option<String>> {
        Scan::Done(Some(host.into()))
    }

    #[test]
    fn request_lines() {
        assert_eq!(request_line(b"GET / HTTP/1.1\r\n"), Scan::Done((&b"/"[..], 16)));
        assert_eq!(request_line(b"GET / HTTP/1.0\n"), Scan::Done((&b"/"[..], 15)));
        assert_eq!(
            request_line(b"PROPFIND /a?b=c HTTP/1.1\r\nHost"),
            Scan::Done((&b"/a?b=c"[..], 26))
        );
        assert_eq!(
            request_line(b"CONNECT h:443 HTTP/1.1\r\n"),
            Scan::Done((&b"h:443"[..], 24))
        );
        assert_eq!(request_line(b"OPTIONS * HTTP/1.1\r\n"), Scan::Done((&b"*"[..], 20)));
        let line = b"GET /index.html HTTP/1.1\r\n";
        for n in 0..line.len() {
            assert_eq!(request_line(&line[..n]), Scan::Partial, "{n} bytes");
        }
    }

    #[test]
    fn not_http_is_seen_early() {
        for bytes in [
            &b" GET"[..],
            b"\x16\x03\x01",
            b"\0",
            b"GET\t/",
            b"GET  / HTTP/1.1",
            b"GET / HTTP/2",
            b"GET / HTTP/1.x",
            b"GET / http/1.1",
            b"GET / HTTP/1.1 ",
            b"GET / HTTP/1.1\r\r",
            b"GET /\r\n",
            b"GET /\xff HTTP/1.1",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        ] {
            assert_eq!(
                request_line(bytes),
                Scan::Invalid,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(request_line(b"ABCDEFGHIJKLMNOPQRSTUVWX"), Scan::Partial);
    }

    #[test]
    fn host_header() {
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            done("example.com")
        );
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nhOsT:Example.com:8080 \r\n\r\n"),
            done("Example.com")
        );
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: \t[::1]:80\r\nAccept: */*\r\n\r\n"),
            done("[::1]")
        );
        assert_eq!(host(b"GET / HTTP/1.1\nHost: a\n\n"), done("a"));
        assert_eq!(host(b"GET / HTTP/1.1\r\nHost: a.example:\r\n\r\n"), done("a.example"));
        assert_eq!(host(b"GET / HTTP/1.0\r\n\r\n"), Scan::Done(None));
        assert_eq!(host(b"GET / HTTP/1.0\r\nHostname: a\r\n\r\n"), Scan::Done(None));
        assert_eq!(host(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"), Scan::Done(None));
        for bad in [
            &b"Host: a:b"[..],
            b"Host: [::1",
            b"Host: [::1]x",
            b"Host: u@a",
            b"Host: a:80:90",
        ] {
            let mut req = b"GET / HTTP/1.1\r\n".to_vec();
            req.extend_from_slice(bad);
            req.extend_from_slice(b"\r\n\r\n");
            assert_eq!(host(&req), Scan::Done(None), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn absolute_form_target_names_the_host() {
        assert_eq!(
            host(b"GET http://a.example:81/x HTTP/1.1\r\nHost: b.example\r\n\r\n"),
            done("a.example")
        );
        assert_eq!(host(b"GET https://[::1]?q HTTP/1.1\r\n\r\n"), done("[::1]"));
        assert_eq!(host(b"GET /http://a.example/ HTTP/1.1\r\nHost: b\r\n\r\n"), done("b"));
    }

    #[test]
    fn host_waits_for_the_end_of_the_headers() {
        let req = b"GET / HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
        for n in 0..req.len() {
            assert_eq!(host(&req[..n]), Scan::Partial, "{n} bytes");
        }
        assert_eq!(host(req), done("example.com"));
    }

    #[test]
    fn malformed_headers() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\n: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\rx",
        ] {
            assert_eq!(host(bad), Scan::Invalid, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
