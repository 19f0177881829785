//! Just enough HTTP/1.x for a scrape: recognise a request head, answer it, close.
//!
//! One request per connection (`Connection: close`), no body read, no keep-alive: Prometheus
//! scrapes work that way and the server stays a few states small.

use std::fmt::Write as _;

/// The most a request head may take; a longer one is answered 400.
pub const MAX_HEAD: usize = 8 * 1024;

/// What a complete (or hopeless) request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics` (a query string is ignored).
    Metrics,
    NotFound,
    MethodNotAllowed,
    /// Not a request head HTTP/1.x allows, or longer than [`MAX_HEAD`].
    Malformed,
}

/// Looks at the bytes read so far: `None` while the head is incomplete and may still fit.
pub fn parse(head: &[u8]) -> Option<Request> {
    let Some(end) = head_end(head) else {
        return (head.len() >= MAX_HEAD).then_some(Request::Malformed);
    };
    if end > MAX_HEAD {
        return Some(Request::Malformed);
    }
    Some(classify(&head[..end]))
}

/// The length of the head including its blank line (CRLF CRLF, or LF LF from a lax client).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn classify(head: &[u8]) -> Request {
    let Ok(head) = std::str::from_utf8(head) else {
        return Request::Malformed;
    };
    let line = head.split('\n').next().unwrap_or("");
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Malformed;
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !target.starts_with('/') || !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Request::Malformed;
    }
    let well_formed_headers = head
        .split('\n')
        .skip(1)
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty())
        .all(|l| l.split_once(':').is_some_and(|(name, _)| token_name(name)));
    if !well_formed_headers {
        return Request::Malformed;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match (method, path) {
        ("GET", "/metrics") => Request::Metrics,
        (_, "/metrics") => Request::MethodNotAllowed,
        _ => Request::NotFound,
    }
}

fn token_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Writes the whole response for `request` into `out` (cleared first); `body` is the rendered
/// metrics, used only for [`Request::Metrics`].
pub fn respond(request: &Request, body: &str, content_type: &str, out: &mut Vec<u8>) {
    let (status, extra, ctype, body) = match request {
        Request::Metrics => ("200 OK", "", content_type, body),
        Request::NotFound => ("404 Not Found", "", TEXT, "not found: try /metrics\n"),
        Request::MethodNotAllowed => ("405 Method Not Allowed", "Allow: GET\r\n", TEXT, "method not allowed\n"),
        Request::Malformed => ("400 Bad Request", "", TEXT, "bad request\n"),
    };
    let mut head = String::with_capacity(160);
    let _ = write!(
        head,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    out.clear();
    out.reserve(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
}

const TEXT: &str = "text/plain; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified() {
        let p = |s: &str| parse(s.as_bytes());
        assert_eq!(p("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(Request::Metrics));
        assert_eq!(p("GET /metrics?x=1 HTTP/1.0\n\n"), Some(Request::Metrics));
        assert_eq!(p("GET / HTTP/1.1\r\n\r\n"), Some(Request::NotFound));
        assert_eq!(p("GET /metricsx HTTP/1.1\r\n\r\n"), Some(Request::NotFound));
        assert_eq!(p("POST /metrics HTTP/1.1\r\n\r\n"), Some(Request::MethodNotAllowed));
        assert_eq!(p("GET /metrics\r\n\r\n"), Some(Request::Malformed));
        assert_eq!(p("GET /metrics HTTP/2.0\r\n\r\n"), Some(Request::Malformed));
        assert_eq!(p("GET metrics HTTP/1.1\r\n\r\n"), Some(Request::Malformed));
        assert_eq!(p("GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"), Some(Request::Malformed));
        assert_eq!(p("\u{1}\r\n\r\n"), Some(Request::Malformed));
    }

    #[test]
    fn an_incomplete_head_waits_until_it_cannot_fit() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD - 1, b'a');
        assert_eq!(parse(&long), None);
        long.push(b'a');
        assert_eq!(parse(&long), Some(Request::Malformed));
    }

    #[test]
    fn responses_carry_their_length() {
        let mut out = Vec::new();
        respond(&Request::Metrics, "a 1\n", "text/x", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/x\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Length: 4\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\na 1\n"), "{text}");
    }
}
